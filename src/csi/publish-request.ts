import { DriverError, invalidArgument } from "../errors.js";
import {
  VolumeCapability_AccessMode_Mode as AccessMode,
  type NodePublishVolumeRequest,
  type NodeUnpublishVolumeRequest,
} from "../gen/csi/v1/csi_pb.js";
import { seLinuxContextSchema } from "../config/selinux-context.js";
import { checkKeyMode, parseVolumeAttributes } from "../volume/volume-attributes.js";
import type { VolumeSpec } from "../volume/volume-spec.js";
import { checkTargetOfPod, parsePodField, parseTargetPath, parseVolumeId, podInfoKeys } from "../volume/volume-rules.js";

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
    name: parsePodField("name", context[podInfoKeys.name]),
    namespace: parsePodField("namespace", context[podInfoKeys.namespace]),
    uid: parsePodField("uid", context[podInfoKeys.uid]),
    serviceAccount: parsePodField("serviceAccount", context[podInfoKeys.serviceAccount]),
  };
  checkTargetOfPod(targetPath, kubeletRoot, pod.uid);

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
