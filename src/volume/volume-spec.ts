import type { VolumeAttributes } from "./volume-attributes.js";

export interface PodInfo {
  uid: string;
  name: string;
  namespace: string;
  serviceAccount: string;
}

/** A validated publish request: everything the driver needs to serve one volume. */
export interface VolumeSpec {
  volumeId: string;
  targetPath: string;
  pod: PodInfo;
  /** The user's csi.spire.io/* attributes exactly as given (kept in the record). */
  rawAttributes: Record<string, string>;
  attributes: VolumeAttributes;
  /** Group that owns the files: the csi.spire.io/fs-group attribute or kubelet's volume_mount_group. */
  fsGroup: number | undefined;
  /**
   * The SELinux context kubelet asked the mount to carry (its `context=` mount flag), if any. Not
   * recorded: a re-adopted volume keeps its mount, and one that must be mounted again after a
   * restart gets the driver's --selinux-context.
   */
  seLinuxContext?: string | undefined;
}

/** The fields whose difference makes a second publish of the same volume a conflict. */
export function specDifference(a: VolumeSpec, b: VolumeSpec): string | undefined {
  if (a.targetPath !== b.targetPath) return "target_path";
  if (a.pod.uid !== b.pod.uid) return "volume_context[csi.storage.k8s.io/pod.uid]";
  if (a.pod.name !== b.pod.name) return "volume_context[csi.storage.k8s.io/pod.name]";
  if (a.pod.namespace !== b.pod.namespace) return "volume_context[csi.storage.k8s.io/pod.namespace]";
  if (a.pod.serviceAccount !== b.pod.serviceAccount) return "volume_context[csi.storage.k8s.io/serviceAccount.name]";
  if (a.fsGroup !== b.fsGroup) return "fsGroup";
  const keys = new Set([...Object.keys(a.rawAttributes), ...Object.keys(b.rawAttributes)]);
  for (const key of keys) {
    if (a.rawAttributes[key] !== b.rawAttributes[key]) return `volume_context[${key}]`;
  }
  return undefined;
}
