/** The SVID a volume's files currently hold. */
export interface WrittenIdentity {
  spiffeId: string;
  serialNumber: string;
  /** Unix seconds. */
  expiresAt: number;
  writtenAt: number;
}

/**
 * Where a volume is in its life. Files on disk are only ever replaced by a complete newer
 * snapshot, so `degraded` still serves the last good identity.
 */
export type VolumeState =
  | { phase: "publishing"; since: number }
  | { phase: "adopting"; since: number }
  /** `identity` is undefined for bundle-only volumes. */
  | { phase: "live"; identity: WrittenIdentity | undefined }
  | { phase: "degraded"; cause: "agent" | "write"; problem: string; identity: WrittenIdentity | undefined }
  | { phase: "stopped" };

export type VolumePhase = VolumeState["phase"];
