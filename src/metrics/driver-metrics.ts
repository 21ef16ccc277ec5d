import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { VolumeManager } from "../volume/volume-manager.js";
import type { AgentStreamName, VolumeObserver } from "../volume/volume-observer.js";
import type { VolumePhase } from "../volume/volume-state.js";

const phases: VolumePhase[] = ["publishing", "adopting", "live", "degraded"];

/** The driver's Prometheus series. Gauges read the live volume state at scrape time. */
export class DriverMetrics implements VolumeObserver {
  readonly registry = new Registry();
  private readonly publishDuration: Histogram<"outcome">;
  private readonly snapshotWrites: Counter<"result">;
  private readonly rotations: Counter;
  private readonly reconnects: Counter<"stream">;
  private readonly rejectedSvids: Counter;

  constructor(source: { volumes: () => VolumeManager | undefined; agentConnected: () => boolean }) {
    const registers = [this.registry];
    // prom-client samples event-loop delay with a native timer, every 10 ms by default: 100
    // wake-ups a second on an otherwise idle node agent. Once a second still records every delay.
    collectDefaultMetrics({ register: this.registry, prefix: "spire_csi_", eventLoopMonitoringPrecision: 1_000 });
    this.publishDuration = new Histogram({
      name: "spire_csi_publish_duration_seconds",
      help: "NodePublishVolume duration from request to files written, by outcome (ok or the error code)",
      labelNames: ["outcome"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.snapshotWrites = new Counter({
      name: "spire_csi_snapshot_writes_total",
      help: "Atomic snapshot writes into volumes, by result",
      labelNames: ["result"],
      registers,
    });
    this.rotations = new Counter({
      name: "spire_csi_rotations_total",
      help: "Snapshot writes that replaced an identity already on disk (rotations and bundle updates)",
      registers,
    });
    this.reconnects = new Counter({
      name: "spire_csi_agent_stream_reconnects_total",
      help: "Agent streams that failed and are being resubscribed, by stream",
      labelNames: ["stream"],
      registers,
    });
    this.rejectedSvids = new Counter({
      name: "spire_csi_rejected_svids_total",
      help: "SVIDs from the agent that failed validation and were not written",
      registers,
    });
    new Gauge({
      name: "spire_csi_volumes",
      help: "Published volumes by phase",
      labelNames: ["phase"],
      registers,
      collect() {
        const counts = source.volumes()?.phases() ?? new Map();
        for (const phase of phases) this.set({ phase }, counts.get(phase) ?? 0);
      },
    });
    new Gauge({
      name: "spire_csi_svid_expiry_seconds",
      help: "Seconds until the X.509-SVID in each volume's files expires (alert when it nears 0)",
      labelNames: ["volume_id", "pod_namespace", "pod_name"],
      registers,
      collect() {
        this.reset();
        const now = Date.now() / 1000;
        for (const volume of source.volumes()?.all() ?? []) {
          const state = volume.state;
          const identity = state.phase === "live" || state.phase === "degraded" ? state.identity : undefined;
          if (!identity) continue;
          const labels = { volume_id: volume.spec.volumeId, pod_namespace: volume.spec.pod.namespace, pod_name: volume.spec.pod.name };
          this.set(labels, identity.expiresAt - now);
        }
      },
    });
    new Gauge({
      name: "spire_csi_agent_connected",
      help: "1 while the trust bundle stream to the SPIRE agent is open, else 0",
      registers,
      collect() {
        this.set(source.agentConnected() ? 1 : 0);
      },
    });
  }

  publishFinished(outcome: string, seconds: number): void {
    this.publishDuration.observe({ outcome }, seconds);
  }

  snapshotWritten(first: boolean): void {
    this.snapshotWrites.inc({ result: "ok" });
    if (!first) this.rotations.inc();
  }

  snapshotFailed(): void {
    this.snapshotWrites.inc({ result: "error" });
  }

  svidRejected(): void {
    this.rejectedSvids.inc();
  }

  streamRetrying(stream: AgentStreamName): void {
    this.reconnects.inc({ stream });
  }
}
