/**
 * Issue 12 item 7 against a real SPIRE v1.15.3 agent: a publish flood of pods no entry matches,
 * each asking for 10 JWT audiences, with callers giving up after 1 s. Before the driver capped
 * its agent calls, such a flood put thousands of FetchJWTSVIDs in flight and deadlocked the agent
 * (health check hanging, no identity for any pod until it was killed). Now the agent must still
 * answer its health check after the flood, and a pod with an entry must get its identity.
 * The figures are printed as diagnostics (RELIABILITY.md "Lifecycle edges" quotes them).
 *
 *   node --import tsx --test test/e2e/agent-flood.test.ts
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { sample } from "../support/prometheus.js";
import { SpireFixture } from "../support/spire-fixture.js";

const floodPods = 300;
const audiences = Array.from({ length: 10 }, (_, index) => `https://aud-${index}.example.org`).join(",");
const webId = "spiffe://example.org/ns/demo/sa/web";

let spire: SpireFixture;
let node: DriverNode;
let metricsBase: string;

before(async () => {
  spire = await SpireFixture.start();
  await spire.registerDelegate();
  await spire.createEntry({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
  await spire.waitForEntryOnAgent({ spiffeId: webId, selectors: ["k8s:ns:demo", "k8s:sa:web"] });
  node = await startDriverNode(spire.adminSocket, { publishTimeout: "3s", logLevel: "info" });
  const line = await node.driver.waitForLog((entry) => entry.msg === "metrics and health endpoints listening");
  metricsBase = `http://${String(line.address)}`;
});

after(async () => {
  await node?.close();
  await spire?.stop();
});

test(`after two floods of ${floodPods} publishes × 10 JWT audiences for pods without entries, the agent is healthy and a pod with an entry gets its identity`, { timeout: 110_000 }, async (t) => {
  const scrape = async () => (await (await fetch(`${metricsBase}/metrics`, { signal: AbortSignal.timeout(5_000) })).text()).toString();
  let peakRss = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const rss = sample(await scrape().catch(() => ""), "process_resident_memory_bytes");
      if (rss !== undefined) peakRss = Math.max(peakRss, rss);
      await sleep(250);
    }
  })();
  const rssBefore = sample(await scrape(), "process_resident_memory_bytes") ?? 0;

  const flood = async (round: number) => {
    const outcomes = await Promise.all(
      Array.from({ length: floodPods }, (_, index) =>
        node.kubelet.tryPublish(
          { uid: `f100d00${round}-0000-4000-8000-${String(index).padStart(12, "0")}`, name: `flood-${index}`, namespace: "flood", serviceAccount: "nobody" },
          "spiffe",
          { "csi.spire.io/jwt-audiences": audiences },
          { maxAttempts: 1, callTimeoutMs: 1_000 },
        ),
      ),
    );
    // The callers gave up after 1 s; the driver's publishes run until --publish-timeout (3 s).
    await sleep(4_000);
    return outcomes;
  };
  const outcomes = await flood(1);
  const rssAfterFirst = sample(await scrape(), "process_resident_memory_bytes") ?? 0;
  // A second flood shows whether the memory kept after the first is reused or adds up.
  outcomes.push(...(await flood(2)));
  sampling = false;
  await sampler;

  const agentHealthy = await spire.agentHealthy(10_000);
  // The driver's readiness probe gets an answer from the real agent (5 s deadline, every 10 s).
  const readyz = (await fetch(`${metricsBase}/readyz`)).status;
  const servedStarted = performance.now();
  const served = await node.kubelet.tryPublish(
    { uid: "0b6f2c1e-8a4d-4c3b-9e1f-00000000f100", name: "web-0", namespace: "demo", serviceAccount: "web" },
    "spiffe",
    {},
    { maxAttempts: 1, callTimeoutMs: 15_000 },
  );
  const servedMs = Math.round(performance.now() - servedStarted);
  const metrics = await scrape();
  const rssAfter = sample(metrics, "process_resident_memory_bytes") ?? 0;
  const mb = (bytes: number) => `${Math.round(bytes / 1024 / 1024)} MB`;
  for (const figure of [
      `flood: 2 x ${floodPods} publishes x 10 audiences, no entries; ${outcomes.filter((outcome) => outcome.error).length} failed as expected`,
      `agent calls in flight at peak (driver metric): ${sample(metrics, "spire_csi_agent_calls_in_flight_peak") ?? "n/a"}`,
      `agent healthy after the flood: ${agentHealthy}; driver /readyz: ${readyz}`,
      `pod with an entry: ${served.error ? `failed (${served.error.message})` : `identity served in ${servedMs} ms`}`,
      `driver RSS: ${mb(rssBefore)} before, ${mb(rssAfterFirst)} after the first flood, ${mb(rssAfter)} after the second, ${mb(peakRss)} at peak`,
  ]) {
    t.diagnostic(figure);
  }

  assert.ok(outcomes.every((outcome) => outcome.error), "no entry matches the flood's pods");
  assert.equal(agentHealthy, true, "the agent answers its health check after the flood");
  assert.equal(readyz, 200, "the driver is ready: the agent answers its probe");
  assert.equal(served.error, undefined, "a pod with an entry gets its identity after the flood");
  assert.equal((await readVolumeIdentity(served.targetPath)).spiffeId, webId);
  const peak = sample(metrics, "spire_csi_agent_calls_in_flight_peak");
  assert.ok(peak !== undefined && peak <= 32, `agent calls in flight stayed within --max-agent-calls (32): ${peak}`);
  await node.kubelet.unpublish(served);
});
