import type { IdentityInFiles } from "../files/identity-in-files.js";

/** The SVID a volume's files currently hold (written by this process, or found at re-adoption). */
export type WrittenIdentity = IdentityInFiles;

/**
 * Where a volume is in its life. Files on disk are only ever replaced by a complete newer
 * snapshot, so `degraded` still serves the last good identity.
 */
export type VolumeState =
  | { phase: "publishing"; since: number }
  /**
   * Re-adopted after a restart, no snapshot written by this process yet. `identity` is what the
   * previous process left in the files: undefined for bundle-only volumes and when the files are
   * missing or unparsable. It is all an operator can learn of a volume the agent issues no SVID.
   */
  | { phase: "adopting"; since: number; identity: WrittenIdentity | undefined }
  /** `identity` is undefined for bundle-only volumes. */
  | { phase: "live"; identity: WrittenIdentity | undefined }
  /** `target-lost`: the tmpfs or dir the volume was given is gone; nothing is written until unpublish. */
  | { phase: "degraded"; cause: "agent" | "write" | "target-lost"; problem: string; identity: WrittenIdentity | undefined }
  | { phase: "stopped" };

export type VolumePhase = VolumeState["phase"];

/** The SVID the volume's files hold in this state, when known. */
export function heldIdentity(state: VolumeState): WrittenIdentity | undefined {
  return state.phase === "adopting" || state.phase === "live" || state.phase === "degraded" ? state.identity : undefined;
}

/**
 * The phase an operator sees (metrics). Two conditions are added to the held phases:
 * `expired` — the files hold an SVID past its expiry (the agent stopped issuing one, e.g. its
 * entry was deleted, also while the driver was down); it is a function of the state and the clock,
 * read when asked, so no timer per volume is needed to flip it. `adoption-failed` — a recorded
 * volume the driver could not take back after a restart (unusable record, target not preparable):
 * its files no longer rotate.
 */
export type ReportedPhase = Exclude<VolumePhase, "stopped"> | "expired" | "adoption-failed";

export const reportedPhases: readonly ReportedPhase[] = ["publishing", "adopting", "live", "degraded", "expired", "adoption-failed"];

export function reportedPhase(state: VolumeState, nowSeconds: number): ReportedPhase | undefined {
  if (state.phase === "stopped") return undefined;
  const identity = heldIdentity(state);
  if (identity && identity.expiresAt <= nowSeconds) return "expired";
  return state.phase;
}
