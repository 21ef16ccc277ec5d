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
  /** `target-lost`: the tmpfs or dir the volume was given is gone; nothing is written until unpublish. */
  | { phase: "degraded"; cause: "agent" | "write" | "target-lost"; problem: string; identity: WrittenIdentity | undefined }
  | { phase: "stopped" };

export type VolumePhase = VolumeState["phase"];

/**
 * The phase an operator sees (metrics). Two conditions are added to the held phases:
 * `expired` — the files hold an SVID past its expiry (the agent stopped issuing one, e.g. its
 * entry was deleted); it is a function of the state and the clock, read when asked, so no timer
 * per volume is needed to flip it. `adoption-failed` — a recorded volume the driver could not take
 * back after a restart (unusable record, target not preparable): its files no longer rotate.
 */
export type ReportedPhase = Exclude<VolumePhase, "stopped"> | "expired" | "adoption-failed";

export const reportedPhases: readonly ReportedPhase[] = ["publishing", "adopting", "live", "degraded", "expired", "adoption-failed"];

export function reportedPhase(state: VolumeState, nowSeconds: number): ReportedPhase | undefined {
  if (state.phase === "stopped") return undefined;
  if ((state.phase === "live" || state.phase === "degraded") && state.identity && state.identity.expiresAt <= nowSeconds) return "expired";
  return state.phase;
}
