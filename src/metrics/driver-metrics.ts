import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { AgentCallLimiter } from "../spire/agent-call-limiter.js";
import type { VolumeManager } from "../volume/volume-manager.js";
import type { AgentStreamName, SnapshotCause, VolumeObserver } from "../volume/volume-observer.js";
import { heldIdentity, reportedPhases } from "../volume/volume-state.js";

/** The driver's Prometheus series. Gauges read the live volume state at scrape time. */
export class DriverMetrics implements VolumeObserver {
  readonly registry = new Registry();
  private readonly publishDuration: Histogram<"outcome">;
  private readonly snapshotWrites: Counter<"result">;
  private readonly rotations: Counter;
  private readonly reconnects: Counter<"stream">;
  private readonly rejectedSvids: Counter;
  private readonly bundleUpdates: Counter<"bundle">;
  private readonly rejectedBundles: Counter<"bundle">;
  private readonly jwtFetches: Counter<"result">;

  constructor(source: {
    version: string;
    volumes: () => VolumeManager | undefined;
    agentConnected: () => boolean;
    kubeletRegistered: () => boolean;
    agentCalls: AgentCallLimiter;
  }) {
    const registers = [this.registry];
    // Without a prefix: the standard Node.js dashboards and alerts query process_* and nodejs_*.
    // prom-client samples event-loop delay with a native timer, every 10 ms by default: 100
    // wake-ups a second on an otherwise idle node agent. Once a second still records every delay.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 1_000 });
    new Gauge({
      name: "spire_csi_build_info",
      help: "Always 1; the labels name the driver version and the Node.js runtime it runs on",
      labelNames: ["version", "nodejs_version"],
      registers,
    }).set({ version: source.version, nodejs_version: process.version }, 1);
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
      help: "Snapshot writes that replaced the X.509-SVID already on disk with a new one",
      registers,
    });
    this.bundleUpdates = new Counter({
      name: "spire_csi_bundle_updates_total",
      help: "Trust bundle sets from the agent that changed the bundles volumes get, by bundle kind (x509 or jwt)",
      labelNames: ["bundle"],
      registers,
    });
    this.rejectedBundles = new Counter({
      name: "spire_csi_rejected_bundles_total",
      help: "Trust bundles from the agent that were not used (malformed, or keyed by an invalid trust domain name; the domain's previous bundle is kept), by bundle kind (x509 or jwt)",
      labelNames: ["bundle"],
      registers,
    });
    this.jwtFetches = new Counter({
      name: "spire_csi_jwt_svid_fetches_total",
      help: "FetchJWTSVIDs calls for volumes' audiences, by result (ok, or error: retried with backoff)",
      labelNames: ["result"],
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
      help: "Volumes by phase: publishing, adopting, live, degraded (agent or write trouble, old files kept), expired (the files hold an expired SVID), adoption-failed (recorded but not re-adopted after a restart: files no longer rotate)",
      labelNames: ["phase"],
      registers,
      collect() {
        const counts = source.volumes()?.phases(Date.now() / 1000) ?? new Map();
        for (const phase of reportedPhases) this.set({ phase }, counts.get(phase) ?? 0);
      },
    });
    new Gauge({
      name: "spire_csi_svid_expiration_timestamp_seconds",
      help: "Unix time at which the X.509-SVID in each volume's files expires (alert on time() approaching it)",
      labelNames: ["volume_id", "pod_namespace", "pod_name"],
      registers,
      collect() {
        this.reset();
        for (const volume of source.volumes()?.all() ?? []) {
          const identity = heldIdentity(volume.state);
          if (!identity) continue;
          const labels = { volume_id: volume.spec.volumeId, pod_namespace: volume.spec.pod.namespace, pod_name: volume.spec.pod.name };
          this.set(labels, identity.expiresAt);
        }
      },
    });
    new Gauge({
      name: "spire_csi_agent_calls_in_flight",
      help: "Agent calls in flight now (X.509 stream opens until the first answer, JWT-SVID fetches); at most --max-agent-calls",
      registers,
      collect() {
        this.set(source.agentCalls.inFlight);
      },
    });
    new Gauge({
      name: "spire_csi_agent_calls_in_flight_peak",
      help: "The most agent calls ever in flight at once since the driver started",
      registers,
      collect() {
        this.set(source.agentCalls.peak);
      },
    });
    new Gauge({
      name: "spire_csi_agent_calls_waiting",
      help: "Agent calls waiting for a slot under --max-agent-calls",
      registers,
      collect() {
        this.set(source.agentCalls.queued);
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
    new Gauge({
      name: "spire_csi_kubelet_registered",
      help: "1 once kubelet's plugin watcher reported the driver registered (NotifyRegistrationStatus); 0 before that, after a refusal, or without self-registration",
      registers,
      collect() {
        this.set(source.kubeletRegistered() ? 1 : 0);
      },
    });
  }

  publishFinished(outcome: string, seconds: number): void {
    this.publishDuration.observe({ outcome }, seconds);
  }

  snapshotWritten(cause: SnapshotCause): void {
    this.snapshotWrites.inc({ result: "ok" });
    if (cause === "rotation") this.rotations.inc();
  }

  bundlesChanged(bundle: "x509" | "jwt"): void {
    this.bundleUpdates.inc({ bundle });
  }

  bundleRejected(bundle: "x509" | "jwt"): void {
    this.rejectedBundles.inc({ bundle });
  }

  jwtFetchFinished(result: "ok" | "error"): void {
    this.jwtFetches.inc({ result });
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
