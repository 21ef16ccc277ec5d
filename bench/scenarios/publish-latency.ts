import type { DriverNode } from "../../test/support/driver-node.js";
import type { PodSpec } from "../../test/support/kubelet-sim.js";
import type { DelegatedIdentityClient } from "../../test/support/spire-fixture.js";
import { distribution, median, type Distribution } from "../stats.js";
import { firstSvidSet, volumeName, type TimedCall } from "../workload.js";

export interface PublishLatencyOptions {
  node: DriverNode;
  /** A Delegated Identity client on the same agent, for the baseline. */
  baseline: DelegatedIdentityClient;
  /** Pods with an entry each; at least the largest concurrency. */
  pods: readonly PodSpec[];
  concurrencies: readonly number[];
  /** Sequential samples at concurrency 1. */
  sequentialSamples: number;
  /** Bursts per concurrency above 1. */
  bursts: number;
  /** Called after each burst while its volumes are still published (memory readings). */
  onPublished?: (concurrency: number) => Promise<void>;
  /** Leave the last burst's volumes published for the scenarios that follow. */
  keepLastBurst?: boolean;
}

export interface PublishLatencyResult {
  concurrency: number;
  driver: Distribution;
  baseline: Distribution;
  /** First call's start to last call's end, median over the bursts. */
  driverWallMs: number;
  baselineWallMs: number;
}

/**
 * NodePublishVolume (call → OK, files written) against the bare agent's time to a first
 * non-empty SVID set for the same selectors. Baseline and driver alternate, so both see the
 * same machine noise.
 */
export async function measurePublishLatency(options: PublishLatencyOptions): Promise<PublishLatencyResult[]> {
  const { node, baseline, pods } = options;
  // Both sides start with an established connection to the agent.
  await firstSvidSet(baseline, pods[0]!);
  const results: PublishLatencyResult[] = [];
  for (const [levelIndex, concurrency] of options.concurrencies.entries()) {
    if (concurrency > pods.length) throw new Error(`concurrency ${concurrency} needs ${concurrency} pods, have ${pods.length}`);
    const driverCalls: TimedCall[][] = [];
    const baselineCalls: TimedCall[][] = [];
    const rounds = concurrency === 1 ? options.sequentialSamples : options.bursts;
    for (let round = 0; round < rounds; round++) {
      const group = concurrency === 1 ? [pods[round % pods.length]!] : pods.slice(0, concurrency);
      baselineCalls.push(await Promise.all(group.map((pod) => firstSvidSet(baseline, pod))));
      driverCalls.push(await Promise.all(group.map(async (pod) => (await node.kubelet.publish(pod, volumeName)).rpc)));
      const lastRound = round === rounds - 1;
      if (lastRound && concurrency > 1) await options.onPublished?.(concurrency);
      const keep = lastRound && options.keepLastBurst === true && levelIndex === options.concurrencies.length - 1;
      if (!keep) await node.kubelet.unpublishAll();
    }
    results.push({
      concurrency,
      driver: distribution(driverCalls.flat().map((call) => call.ms)),
      baseline: distribution(baselineCalls.flat().map((call) => call.ms)),
      driverWallMs: median(driverCalls.map(wallMs)),
      baselineWallMs: median(baselineCalls.map(wallMs)),
    });
  }
  return results;
}

function wallMs(calls: readonly TimedCall[]): number {
  const start = Math.min(...calls.map((call) => call.startedAt));
  const end = Math.max(...calls.map((call) => call.startedAt + call.ms));
  return end - start;
}
