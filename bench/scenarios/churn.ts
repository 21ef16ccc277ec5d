import { readdir } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { mountsUnder, type DriverNode } from "../../test/support/driver-node.js";
import type { PodSpec } from "../../test/support/kubelet-sim.js";
import { sample } from "../../test/support/prometheus.js";
import type { SpireFixture } from "../../test/support/spire-fixture.js";
import { settledResidentBytes } from "../process-usage.js";
import { distribution, type Distribution } from "../stats.js";
import { firstSvidSet, makePods, volumeName } from "../workload.js";

/** What a node holds that a finished volume must give back, before and after the churn. */
export interface ChurnHoldings {
  /** The agent's open X.509-SVID subscriptions (pprof goroutines in SubscribeToX509SVIDs). */
  agentStreams: number;
  /** Volume records in the driver's metadata dir. */
  records: number;
  /** tmpfs mounts below the kubelet root. */
  mounts: number;
  /**
   * The driver's timers that keep its event loop alive (nodejs_active_resources{type="Timeout"}:
   * Node counts ref'd timers only, so an unref'd one left behind is not seen here).
   */
  timers: number;
  rssBytes: number;
}

export interface ChurnResult {
  publishesPerSecond: number;
  seconds: number;
  publishes: number;
  failures: number;
  /** NodePublishVolume call → OK. */
  publish: Distribution;
  /**
   * The baseline, before the driver's churn: a bare Delegated Identity client opening
   * subscriptions for pods of the same entry at the same rate for as long, each timed to its
   * first SVID set and closed then.
   */
  bareAgent: Distribution;
  before: ChurnHoldings;
  after: ChurnHoldings;
}

export interface ChurnOptions {
  spire: SpireFixture;
  node: DriverNode;
  publishesPerSecond: number;
  seconds: number;
  /** How long each pod keeps its volume before kubelet unpublishes it. */
  holdMs?: number;
  /** Quiet time before each reading, so GC and the grace-period cleanup of snapshots have run. */
  settleMs: number;
}

/**
 * Pods come and go at a steady rate against a real agent: each second `publishesPerSecond` new
 * pods publish and (after `holdMs`) as many unpublish. Afterwards every stream, record, mount and
 * timer a volume took must be given back, and the RSS must come back to where it started.
 */
export async function measureChurn(options: ChurnOptions): Promise<ChurnResult> {
  const { spire, node } = options;
  const holdMs = options.holdMs ?? 1_000;
  const namespace = "churn";
  // One entry for every churn pod, as the replicas of one workload share theirs.
  const spiffeId = `spiffe://${spire.trustDomain}/churn`;
  await spire.createEntry({ spiffeId, selectors: [`k8s:ns:${namespace}`] });
  await spire.waitForEntryOnAgent({ spiffeId, selectors: [`k8s:ns:${namespace}`] });
  const total = options.publishesPerSecond * options.seconds;
  const pods = makePods(total, namespace, "churn");
  // Warm the connection and the agent's cache with one volume, so the first second is not an outlier.
  const warm = await node.kubelet.publish(pods[0]!, volumeName);
  await node.kubelet.unpublish(warm);
  const before = await holdings(options);

  const bareLatencies: number[] = [];
  const bare = spire.client();
  await paced(makePods(total, namespace, "churn"), options.publishesPerSecond, async (pod) => {
    const call = await firstSvidSet(bare, pod);
    bareLatencies.push(call.ms);
  });

  const latencies: number[] = [];
  let failures = 0;
  await paced(pods.slice(1), options.publishesPerSecond, async (pod) => {
    const outcome = await node.kubelet.tryPublish(pod, volumeName);
    if (outcome.error) {
      failures += 1;
      return;
    }
    latencies.push(outcome.rpc.ms);
    await sleep(holdMs);
    await node.kubelet.unpublish(outcome);
  });
  const after = await holdings(options);
  return {
    publishesPerSecond: options.publishesPerSecond,
    seconds: options.seconds,
    publishes: latencies.length,
    failures,
    publish: distribution(latencies),
    bareAgent: distribution(bareLatencies),
    before,
    after,
  };
}

/** Starts `lifecycle` for each pod at `perSecond`, paced against the start so a slow call does not slow the rate; waits for all. */
async function paced(pods: readonly PodSpec[], perSecond: number, lifecycle: (pod: PodSpec) => Promise<void>): Promise<void> {
  const intervalMs = 1000 / perSecond;
  const started = performance.now();
  const running: Promise<void>[] = [];
  for (const [index, pod] of pods.entries()) {
    const wait = started + index * intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    running.push(lifecycle(pod));
  }
  await Promise.all(running);
}

async function holdings({ spire, node, settleMs }: ChurnOptions): Promise<ChurnHoldings> {
  const rssBytes = await settledResidentBytes(node.driver.pid!, settleMs);
  // The newest such line: the driver may have been restarted, on a new ephemeral port.
  const metricsLine = node.driver.logs.findLast((line) => line.msg === "metrics and health endpoints listening");
  if (!metricsLine) throw new Error("the driver logged no metrics address");
  const metrics = await (await fetch(`http://${String(metricsLine.address)}/metrics`)).text();
  const records = (await readdir(node.metadataDir, { withFileTypes: true })).filter((entry) => entry.isFile() && entry.name.endsWith(".json")).length;
  return {
    agentStreams: await spire.agentSubscriptions(),
    records,
    mounts: (await mountsUnder(node.kubeletRoot)).length,
    timers: sample(metrics, "nodejs_active_resources", { type: "Timeout" }) ?? 0,
    rssBytes,
  };
}
