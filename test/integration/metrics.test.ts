import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { sample } from "../support/prometheus.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "ab12cd34-0000-4000-8000-0000000000aa", name: "api-0", namespace: "obs", serviceAccount: "api" };

async function waitForStatus(url: string, status: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 0;
  while (Date.now() < deadline) {
    last = (await fetch(url)).status;
    if (last === status) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(last, status, `${url} status`);
}

describe("metrics and health endpoints", () => {
  let fx: DriverFixture;
  let base: string;
  before(async () => {
    fx = await startDriverFixture();
    await fx.agent.addEntry({ id: "api", spiffeId: "spiffe://example.org/ns/obs/sa/api", selectors: [{ type: "k8s", value: "ns:obs" }] });
    const line = await fx.driver.waitForLog((entry) => entry.msg === "metrics and health endpoints listening");
    base = `http://${String(line.address)}`;
  });
  after(() => fx.close());

  test("series for volumes, publish latency, writes, rotations, reconnects, expiry and agent state", async () => {
    const volume = await fx.kubelet.publish(pod, "m");
    const failed = await fx.kubelet.tryPublish({ ...pod, uid: "ab12cd34-0000-4000-8000-0000000000ab", namespace: "nobody" }, "m", {}, { maxAttempts: 1 });
    assert.ok(failed.error);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated", 10_000, mark);
    const calls = fx.agent.subscribeCalls;
    fx.agent.dropStreams();
    await fx.agent.waitForSubscribeCalls(calls + 1);
    await waitForStatus(`${base}/readyz`, 200);

    const response = await fetch(`${base}/metrics`);
    assert.equal(response.status, 200);
    const text = await response.text();
    assert.equal(sample(text, "spire_csi_volumes", { phase: "live" }), 1);
    assert.equal(sample(text, "spire_csi_volumes", { phase: "publishing" }), 0);
    assert.equal(sample(text, "spire_csi_publish_duration_seconds_count", { outcome: "ok" }), 1);
    assert.equal(sample(text, "spire_csi_publish_duration_seconds_count", { outcome: "deadline-exceeded" }), 1);
    assert.ok((sample(text, "spire_csi_publish_duration_seconds_sum", { outcome: "ok" }) ?? 99) < 5, "publish took seconds, not minutes");
    assert.ok((sample(text, "spire_csi_snapshot_writes_total", { result: "ok" }) ?? 0) >= 2);
    assert.ok((sample(text, "spire_csi_rotations_total") ?? 0) >= 1);
    assert.ok((sample(text, "spire_csi_agent_stream_reconnects_total", { stream: "x509-svids" }) ?? 0) >= 1);
    const expiry = sample(text, "spire_csi_svid_expiry_seconds", { volume_id: volume.volumeId, pod_namespace: "obs", pod_name: "api-0" });
    assert.ok(expiry !== undefined && expiry > 3000 && expiry <= 3610, `expiry in about an hour (${expiry})`);
    assert.equal(sample(text, "spire_csi_agent_connected"), 1);
    assert.ok(sample(text, "spire_csi_process_resident_memory_bytes"));
    assert.ok(!text.includes("PRIVATE KEY"));
    await fx.kubelet.unpublish(volume);
  });

  test("/healthz answers while the process runs; /readyz follows the agent", async () => {
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    await waitForStatus(`${base}/readyz`, 200);
    await fx.agent.stop();
    await waitForStatus(`${base}/readyz`, 503);
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    assert.equal(sample(await (await fetch(`${base}/metrics`)).text(), "spire_csi_agent_connected"), 0);
    await fx.agent.start();
    await waitForStatus(`${base}/readyz`, 200);
  });
});
