import { isAbsolute, join, normalize, relative, sep } from "node:path";
import { invalidArgument } from "../errors.js";
import type { PodInfo } from "./volume-spec.js";

/**
 * The rules every volume must meet, whether it comes from kubelet's NodePublishVolume or from a
 * record read back at start-up: a record the driver did not write (or a tampered one) must not
 * get a tmpfs or a key anywhere a publish request could not have pointed it, nor selectors built
 * from pod fields kubelet could never send. Errors name the CSI field.
 */
export const podInfoKeys = {
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

const podFieldPatterns: Record<keyof PodInfo, RegExp> = {
  name: kubernetesName,
  namespace: kubernetesName,
  uid: podUidPattern,
  serviceAccount: kubernetesName,
};

export function parseVolumeId(volumeId: string): string {
  if (volumeId === "") throw invalidArgument("volume_id", "is required");
  if (!volumeIdPattern.test(volumeId) || volumeId === "." || volumeId === "..") {
    throw invalidArgument("volume_id", "must be 1-128 characters of A-Z a-z 0-9 . _ -, not . or .. (kubelet sends csi-<sha256>)");
  }
  return volumeId;
}

/**
 * The target must be `<kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount`, written
 * without `.`/`..` components, so a request can never point the driver at another place.
 * `kubeletRoot` is already normalised by the config (no trailing slash).
 */
export function parseTargetPath(targetPath: string, kubeletRoot: string): string {
  if (targetPath === "") throw invalidArgument("target_path", "is required");
  if (!isAbsolute(targetPath)) throw invalidArgument("target_path", "must be an absolute path");
  if (targetPath.includes("\0")) throw invalidArgument("target_path", "must not contain NUL");
  if (normalize(targetPath) !== targetPath || targetPath.split(sep).some((part) => part === "." || part === "..")) {
    throw invalidArgument("target_path", "must be a normalised path without . or .. components");
  }
  const inside = relative(kubeletRoot, targetPath).split(sep);
  const shapeOk =
    inside.length === 6 &&
    inside[0] === "pods" &&
    inside[2] === "volumes" &&
    inside[3] === "kubernetes.io~csi" &&
    inside[5] === "mount" &&
    podUidPattern.test(inside[1] ?? "") &&
    (inside[4] ?? "") !== "";
  if (!shapeOk) {
    throw invalidArgument("target_path", `must be ${kubeletRoot}/pods/<pod-uid>/volumes/kubernetes.io~csi/<volume>/mount (kubelet root: --kubelet-root)`);
  }
  return targetPath;
}

/** One pod info field as kubelet sends it; `undefined` or empty means podInfoOnMount is off. */
export function parsePodField(field: keyof PodInfo, value: string | undefined): string {
  const key = podInfoKeys[field];
  if (value === undefined || value === "") {
    throw invalidArgument(`volume_context[${key}]`, "is missing: set podInfoOnMount: true on the csi.spire.io CSIDriver object");
  }
  if (!podFieldPatterns[field].test(value)) throw invalidArgument(`volume_context[${key}]`, `${JSON.stringify(value.slice(0, 80))} is not a valid value`);
  return value;
}

/** The target must be in the pod's own volume dir. */
export function checkTargetOfPod(targetPath: string, kubeletRoot: string, podUid: string): void {
  const expectedPrefix = join(kubeletRoot, "pods", podUid) + sep;
  if (!targetPath.startsWith(expectedPrefix)) {
    throw invalidArgument("target_path", `must lie under ${expectedPrefix} (the pod's own volume dir)`);
  }
}

/** Every rule of a publish request that a recorded volume can be held to. */
export function checkRecordedVolume(volume: { volumeId: string; targetPath: string; pod: PodInfo }, kubeletRoot: string): void {
  parseVolumeId(volume.volumeId);
  parseTargetPath(volume.targetPath, kubeletRoot);
  for (const field of Object.keys(podFieldPatterns) as (keyof PodInfo)[]) parsePodField(field, volume.pod[field]);
  checkTargetOfPod(volume.targetPath, kubeletRoot, volume.pod.uid);
}
