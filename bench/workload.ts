import { randomUUID } from "node:crypto";
import type { DelegatedIdentityClient } from "../test/support/spire-fixture.js";
import type { PodSpec } from "../test/support/kubelet-sim.js";
import { podSelectors } from "../src/volume/selectors.js";

/** The node name the bench's driver runs with (DriverProcess's default --node-id). */
export const benchNodeName = "test-node";
/** The inline volume's name in every bench pod. */
export const volumeName = "spiffe";

export function makePods(count: number, namespace: string, serviceAccount: string): PodSpec[] {
  return Array.from({ length: count }, (_, index) => ({
    uid: randomUUID(),
    name: `${namespace}-${index}`,
    namespace,
    serviceAccount,
  }));
}

/** The SPIFFE ID the bench registers for a pod that has an entry of its own. */
export function podSpiffeId(trustDomain: string, pod: PodSpec): string {
  return `spiffe://${trustDomain}/${pod.namespace}/${pod.name}`;
}

/** Selectors of a per-pod entry: a subset of what the driver presents for the pod, as SPIRE matches entries. */
export function podEntrySelectors(pod: PodSpec): { type: string; value: string }[] {
  return [
    { type: "k8s", value: `ns:${pod.namespace}` },
    { type: "k8s", value: `pod-uid:${pod.uid}` },
  ];
}

export interface TimedCall {
  startedAt: number;
  ms: number;
}

/**
 * The bare-agent baseline: one Delegated Identity subscription with exactly the selectors the
 * driver presents for `pod`, timed from the call to the first non-empty SVID set.
 */
export async function firstSvidSet(client: DelegatedIdentityClient, pod: PodSpec, timeoutMs = 30_000): Promise<TimedCall> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  const startedAt = performance.now();
  try {
    const stream = client.subscribeToX509SVIDs({ selectors: podSelectors(pod, benchNodeName) }, { signal: abort.signal });
    for await (const message of stream) {
      if (message.x509Svids.length > 0) return { startedAt, ms: performance.now() - startedAt };
    }
    throw new Error(`the agent ended the stream for ${pod.name} without an SVID`);
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}
