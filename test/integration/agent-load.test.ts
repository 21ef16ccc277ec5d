import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { after, before, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { classifyAgentError } from "../../src/spire/agent-errors.js";
import { sample } from "../support/prometheus.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const audiences = Array.from({ length: 10 }, (_, index) => `aud-${index}`).join(",");
const podUid = (kind: number, index: number) => `5e0d${kind}a00-0000-4000-8000-${String(index).padStart(12, "0")}`;

let fx: DriverFixture;
let base: string;

before(async () => {
  fx = await startDriverFixture({ driver: { publishTimeout: "3s", extraArgs: ["--max-agent-calls", "4", "--agent-probe-timeout", "500ms"] } });
  await fx.agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/ns/demo/sa/web", selectors: [{ type: "k8s", value: "ns:demo" }] });
  const line = await fx.driver.waitForLog((entry) => entry.msg === "metrics and health endpoints listening");
  base = `http://${String(line.address)}`;
});
after(() => fx.close());

test("a publish flood with 10 JWT audiences each: no JWT fetch for pods without an entry, one fetch per pod at a time, at most --max-agent-calls in flight", async () => {
  // A slow agent, so that calls pile up if nothing holds them back.
  fx.agent.jwtFetchDelayMs = 50;
  const flood = Array.from({ length: 40 }, (_, index) =>
    fx.kubelet.tryPublish({ uid: podUid(1, index), name: `flood-${index}`, namespace: "flood", serviceAccount: "nobody" }, "spiffe", { "csi.spire.io/jwt-audiences": audiences }, { maxAttempts: 1, callTimeoutMs: 1_000 }),
  );
  const served = Array.from({ length: 6 }, (_, index) =>
    fx.kubelet.publish({ uid: podUid(2, index), name: `web-${index}`, namespace: "demo", serviceAccount: "web" }, "spiffe", { "csi.spire.io/jwt-audiences": audiences }),
  );
  for (const outcome of await Promise.all(flood)) assert.ok(outcome.error, "no entry matches the flood's pods");
  for (const volume of await Promise.all(served)) {
    const tokens = (await readdir(volume.targetPath)).filter((name) => name.endsWith(".token"));
    assert.equal(tokens.length, 10, "each served pod gets its 10 tokens");
  }

  const floodFetches = [...fx.agent.jwtFetchCallsByPod].filter(([pod]) => pod.includes(podUid(1, 0).slice(0, 8)));
  assert.deepEqual(floodFetches, [], "JWT-SVIDs are fetched only after the pod's X.509 SVID arrived");
  assert.equal(fx.agent.jwtFetchPeakPerPod, 1, "a volume's audiences are fetched one after another");
  // The readiness probe is the one call outside the cap.
  assert.ok(fx.agent.jwtFetchPeak <= 4 + 1, `at most 4 fetches (and the probe) at the agent at once, saw ${fx.agent.jwtFetchPeak}`);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  const peak = sample(metrics, "spire_csi_agent_calls_in_flight_peak");
  assert.ok(peak !== undefined && peak >= 1 && peak <= 4, `driver-side peak within the cap: ${peak}`);
  assert.equal(sample(metrics, "spire_csi_agent_calls_waiting"), 0);
  for (const volume of await Promise.all(served)) await fx.kubelet.unpublish(volume);
  // Every stream the flood opened is closed again, at the agent too.
  await fx.agent.waitForStreams(0);
});

test("readiness notices an agent that stops answering calls while its streams stay open, and recovers", { timeout: 60_000 }, async () => {
  const readyz = async () => (await fetch(`${base}/readyz`)).status;
  const until = async (status: number) => {
    while ((await readyz()) !== status) await new Promise((resolve) => setTimeout(resolve, 100));
  };
  await until(200);
  const streamsBefore = fx.agent.openBundleStreams;
  // Every call now takes longer than the probe's 500 ms deadline, as with a deadlocked agent.
  fx.agent.jwtFetchDelayMs = 3_000;
  await until(503);
  assert.equal(fx.agent.openBundleStreams, streamsBefore, "the bundle stream stayed open: only the probe saw the agent stop answering");
  await fx.driver.waitForLog((entry) => entry.msg === "the SPIRE agent did not answer a call within the deadline; reporting not ready");
  assert.equal((await fetch(`${base}/healthz`)).status, 200, "liveness is not affected");
  fx.agent.jwtFetchDelayMs = 0;
  await until(200);
});

test("the agent's 'no identity issued' on a JWT fetch reads as no entry for the pod; on a subscription, as the driver's authorization", () => {
  const problem = classifyAgentError(new ConnectError("no identity issued", Code.PermissionDenied), "/run/spire/admin.sock", "fetch-jwt");
  assert.equal(problem.kind, "no-entry");
  assert.match(problem.detail, /^no entry matches this pod/);
  assert.doesNotMatch(problem.detail, /authorized_delegates/);
  // The same text on a subscription: the driver itself has no entry (a pod without one gets an empty set).
  const unregistered = classifyAgentError(new ConnectError("no identity issued", Code.PermissionDenied), "/run/spire/admin.sock");
  assert.equal(unregistered.kind, "not-authorized");
  assert.match(unregistered.detail, /authorized_delegates/);
  const refused = classifyAgentError(new ConnectError("caller not configured as an authorized delegate", Code.PermissionDenied), "/run/spire/admin.sock", "fetch-jwt");
  assert.equal(refused.kind, "not-authorized");
  assert.match(refused.detail, /authorized_delegates/);
});
