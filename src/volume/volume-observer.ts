/**
 * What the volume lifecycle reports as it happens. The metrics module implements it; the
 * lifecycle does not know about Prometheus.
 */
export type AgentStreamName = "x509-svids" | "x509-bundles" | "jwt-svids" | "jwt-bundles";

export interface VolumeObserver {
  publishFinished(outcome: string, seconds: number): void;
  snapshotWritten(first: boolean): void;
  snapshotFailed(reason: string): void;
  svidRejected(reason: string): void;
  streamRetrying(stream: AgentStreamName): void;
}
