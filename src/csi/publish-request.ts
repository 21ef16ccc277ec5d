import { isAbsolute, normalize, relative, sep } from "node:path";
import { DriverError, invalidArgument } from "../errors.js";
import {
  VolumeCapability_AccessMode_Mode as AccessMode,
  type NodePublishVolumeRequest,
  type NodeUnpublishVolumeRequest,
} from "../gen/csi/v1/csi_pb.js";
import { seLinuxContextSchema } from "../config/selinux-context.js";
import { checkKeyMode, parseVolumeAttributes } from "../volume/volume-attributes.js";
import type { VolumeSpec } from "../volume/volume-spec.js";

const podInfoKeys = {
  name: "csi.storage.k8s.io/pod.name",
  namespace: "csi.storage.k8s.io/pod.namespace",
  uid: "csi.storage.k8s.io/pod.uid",
  serviceAccount: "csi.storage.k8s.io/serviceAccount.name",
  ephemeral: "csi.storage.k8s.io/ephemeral",
} as const;

const volumeIdPattern = /^[A-Za-z0-9._-]{1,128}$/;
// DNS-1123 labels/subdomains and UUIDs, as Kubernetes allows them for these fields.
const kubernetesName = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const podUidPattern = /^[A-Za-z0-9-]{1,64}$/;
const writableModes = new Set([AccessMode.SINGLE_NODE_WRITER, AccessMode.SINGLE_NODE_MULTI_WRITER, AccessMode.SINGLE_NODE_SINGLE_WRITER]);

/**
 * Turns kubelet's NodePublishVolume request into a VolumeSpec, or an INVALID_ARGUMENT error that
 * names the field and the rule. Only what kubelet sends for a CSI ephemeral inline volume of a
 * pod with `podInfoOnMount: true` is accepted.
 */
export function parsePublishRequest(request: NodePublishVolumeRequest, kubeletRoot: string): VolumeSpec {
  const volumeId = parseVolumeId(request.volumeId);
  const targetPath = parseTargetPath(request.targetPath, kubeletRoot);
  if (request.stagingTargetPath !== "") {
    throw invalidArgument("staging_target_path", "must be empty: csi.spire.io does not stage volumes");
  }
  const capability = request.volumeCapability;
  if (!capability) throw invalidArgument("volume_capability", "is required");
  if (capability.accessType.case !== "mount") {
    throw invalidArgument("volume_capability.access_type", "must be mount: csi.spire.io serves files, not block devices");
  }
  if (capability.accessType.value.fsType !== "") {
    throw invalidArgument("volume_capability.mount.fs_type", "must be empty: the driver chooses the filesystem");
  }
  const mode = capability.accessMode?.mode ?? AccessMode.UNKNOWN;
  if (!writableModes.has(mode) && mode !== AccessMode.SINGLE_NODE_READER_ONLY) {
    throw invalidArgument(
      "volume_capability.access_mode",
      `${AccessMode[mode]} is not supported; use SINGLE_NODE_WRITER (the mode kubelet sends for inline volumes)`,
    );
  }
  if (!request.readonly) {
    throw invalidArgument("readonly", "must be true: set readOnly: true on the pod's csi volume");
  }

  const context = request.volumeContext;
  if (context[podInfoKeys.ephemeral] !== "true") {
    throw invalidArgument(
      `volume_context[${podInfoKeys.ephemeral}]`,
      'must be "true": csi.spire.io serves CSI ephemeral inline volumes only, not PersistentVolumes',
    );
  }
  const pod = {
    name: requireContext(context, podInfoKeys.name, kubernetesName),
    namespace: requireContext(context, podInfoKeys.namespace, kubernetesName),
    uid: requireContext(context, podInfoKeys.uid, podUidPattern),
    serviceAccount: requireContext(context, podInfoKeys.serviceAccount, kubernetesName),
  };
  const expectedPrefix = `${normalize(kubeletRoot)}${sep}pods${sep}${pod.uid}${sep}`;
  if (!targetPath.startsWith(expectedPrefix)) {
    throw invalidArgument("target_path", `must lie under ${expectedPrefix} (the pod's own volume dir)`);
  }

  const { raw, attributes } = parseVolumeAttributes(context);
  const mountGroup = capability.accessType.value.volumeMountGroup;
  const fsGroup = attributes.fsGroup ?? parseMountGroup(mountGroup);
  checkKeyMode(attributes.keyMode, fsGroup);
  const seLinuxContext = parseSeLinuxMountFlag(capability.accessType.value.mountFlags);
  return { volumeId, targetPath, pod, rawAttributes: raw, attributes, fsGroup, seLinuxContext };
}

export function parseUnpublishRequest(request: NodeUnpublishVolumeRequest, kubeletRoot: string): { volumeId: string; targetPath: string } {
  return { volumeId: parseVolumeId(request.volumeId), targetPath: parseTargetPath(request.targetPath, kubeletRoot) };
}

function parseVolumeId(volumeId: string): string {
  if (volumeId === "") throw invalidArgument("volume_id", "is required");
  if (!volumeIdPattern.test(volumeId) || volumeId === "." || volumeId === "..") {
    throw invalidArgument("volume_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -, not . or .. (kubelet sends csi-<sha256>)");
  }
  return volumeId;
}

/**
 * The target must be `<kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`, written
 * without `.`/`..` components, so a request can never point the driver at another place.
 */
function parseTargetPath(targetPath: string, kubeletRoot: string): string {
  if (targetPath === "") throw invalidArgument("target_path", "is required");
  if (!isAbsolute(targetPath)) throw invalidArgument("target_path", "must be an absolute path");
  if (targetPath.includes("\0")) throw invalidArgument("target_path", "must not contain NUL");
  if (normalize(targetPath) !== targetPath || targetPath.split(sep).some((part) => part === "." || part === "..")) {
    throw invalidArgument("target_path", "must be a normalised path without . or .. components");
  }
  const inside = relative(normalize(kubeletRoot), targetPath).split(sep);
  const shapeOk =
    inside.length === 6 &&
    inside[0] === "pods" &&
    inside[2] === "volumes" &&
    inside[3] === "kubernetes.io~csi" &&
    inside[5] === "mount" &&
    podUidPattern.test(inside[1] ?? "") &&
    (inside[4] ?? "") !== "";
  if (!shapeOk) {
    throw invalidArgument(
      "target_path",
      `must be ${normalize(kubeletRoot)}/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume>/mount (kubelet root: --kubelet-root)`,
    );
  }
  return targetPath;
}

function requireContext(context: Record<string, string>, key: string, pattern: RegExp): string {
  const value = context[key];
  if (value === undefined || value === "") {
    throw invalidArgument(
      `volume_context[${key}]`,
      "is missing: set podInfoOnMount: true on the csi.spire.io CSIDriver object",
    );
  }
  if (!pattern.test(value)) throw invalidArgument(`volume_context[${key}]`, `${JSON.stringify(value.slice(0, 80))} is not a valid value`);
  return value;
}

/**
 * The pod's SELinux context, when kubelet mounts with labels (CSIDriver `seLinuxMount: true` and
 * an SELinux node): it adds `context="<label>"` to the mount flags and then skips relabelling
 * the volume. Other flags are not for a tmpfs of identity files and are ignored, as before.
 */
function parseSeLinuxMountFlag(flags: readonly string[]): string | undefined {
  const contexts = flags.filter((flag) => flag.startsWith("context="));
  if (contexts.length === 0) return undefined;
  if (contexts.length > 1) throw invalidArgument("volume_capability.mount.mount_flags", "must hold at most one context= flag");
  const value = contexts[0]!.slice("context=".length).replace(/^"(.*)"$/, "$1");
  const parsed = seLinuxContextSchema.safeParse(value);
  if (!parsed.success) {
    throw invalidArgument("volume_capability.mount.mount_flags", `context= ${parsed.error.issues[0]?.message ?? "is not an SELinux context"}`);
  }
  return parsed.data;
}

function parseMountGroup(group: string): number | undefined {
  if (group === "") return undefined;
  if (!/^[0-9]{1,10}$/.test(group) || Number(group) > 2_147_483_647) {
    throw new DriverError("invalid-argument", "volume_capability.mount.volume_mount_group: must be a numeric group id");
  }
  return Number(group);
}
