/**
 * What the volume lifecycle reports as it happens. The metrics module implements it; the
 * lifecycle does not know about Prometheus.
 */
export type AgentStreamName = "x509-svids" | "x509-bundles" | "jwt-svids" | "jwt-bundles";

/** Why a snapshot was written: the volume's first files, a new SVID, or new bundles/JWTs beside the same SVID. */
export type SnapshotCause = "first" | "rotation" | "update";

export interface VolumeObserver {
  publishFinished(outcome: string, seconds: number): void;
  snapshotWritten(cause: SnapshotCause): void;
  snapshotFailed(reason: string): void;
  svidRejected(reason: string): void;
  streamRetrying(stream: AgentStreamName): void;
  jwtFetchFinished(result: "ok" | "error"): void;
}
