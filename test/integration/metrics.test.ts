import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { readVolumeIdentity } from "../support/identity-files.js";
import { sample } from "../support/prometheus.js";
import { waitForStatus } from "../support/http-status.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "ab12cd34-0000-4000-8000-0000000000aa", name: "api-0", namespace: "obs", serviceAccount: "api" };

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

  test("series for volumes, publish latency, writes, rotations, bundle updates, JWT fetches, reconnects, expiry and agent state", async () => {
    const volume = await fx.kubelet.publish(pod, "m", { "csi.spire.io/jwt-audiences": "vault" });
    const failed = await fx.kubelet.tryPublish({ ...pod, uid: "ab12cd34-0000-4000-8000-0000000000ab", namespace: "nobody" }, "m", {}, { maxAttempts: 1 });
    assert.ok(failed.error);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated", 10_000, mark);
    // A new root changes the bundles but not the SVID: an update, not a rotation.
    const bundleMark = fx.driver.logs.length;
    await fx.agent.addRoot();
    await fx.driver.waitForLog((line) => line.msg === "identity files updated (trust bundles or JWT-SVIDs)", 10_000, bundleMark);
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
    assert.equal(sample(text, "spire_csi_rotations_total"), 1, "the bundle update is not a rotation");
    assert.ok((sample(text, "spire_csi_bundle_updates_total", { bundle: "x509" }) ?? 0) >= 2, "the first bundle set and the new root");
    assert.ok((sample(text, "spire_csi_bundle_updates_total", { bundle: "jwt" }) ?? 0) >= 1);
    assert.ok((sample(text, "spire_csi_jwt_svid_fetches_total", { result: "ok" }) ?? 0) >= 1);
    assert.ok((sample(text, "spire_csi_agent_stream_reconnects_total", { stream: "x509-svids" }) ?? 0) >= 1);
    const expiresAt = sample(text, "spire_csi_svid_expiration_timestamp_seconds", { volume_id: volume.volumeId, pod_namespace: "obs", pod_name: "api-0" });
    const inSeconds = (expiresAt ?? 0) - Date.now() / 1000;
    assert.ok(inSeconds > 3000 && inSeconds <= 3610, `an absolute expiry about an hour ahead (${expiresAt})`);
    assert.equal(sample(text, "spire_csi_agent_connected"), 1);
    assert.equal(sample(text, "spire_csi_build_info", { version: "0.1.0", nodejs_version: process.version }), 1);
    assert.ok(sample(text, "process_resident_memory_bytes"), "default process metrics carry their standard names");
    assert.ok(sample(text, "nodejs_heap_size_used_bytes"));
    assert.ok(!text.includes("spire_csi_process_") && !text.includes("spire_csi_nodejs_"));
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

describe("volumes that stopped rotating stay visible", () => {
  let fx: DriverFixture;
  const metricsText = async (mark = 0) => {
    const line = await fx.driver.waitForLog((entry) => entry.msg === "metrics and health endpoints listening", 10_000, mark);
    return (await fetch(`http://${String(line.address)}/metrics`)).text();
  };
  const waitForSample = async (name: string, labels: Record<string, string>, value: number, mark = 0) => {
    let last: number | undefined;
    for (let i = 0; i < 200; i++) {
      last = sample(await metricsText(mark), name, labels);
      if (last === value) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(last, value, `${name} ${JSON.stringify(labels)}`);
  };
  before(async () => {
    fx = await startDriverFixture({ svidTtlSeconds: 3 });
  });
  after(() => fx.close());

  test("an SVID the agent stopped issuing shows up as expired once it expires", async () => {
    await fx.agent.addEntry({ id: "short", spiffeId: "spiffe://example.org/ns/obs/sa/short", selectors: [{ type: "k8s", value: "ns:obs" }] });
    const volume = await fx.kubelet.publish(pod, "short");
    assert.equal(sample(await metricsText(), "spire_csi_volumes", { phase: "live" }), 1);
    fx.agent.removeEntry("short");
    await waitForSample("spire_csi_volumes", { phase: "expired" }, 1);
    const text = await metricsText();
    assert.equal(sample(text, "spire_csi_volumes", { phase: "live" }), 0);
    assert.ok((sample(text, "spire_csi_svid_expiration_timestamp_seconds", { volume_id: volume.volumeId }) ?? Infinity) <= Date.now() / 1000);
    await fx.kubelet.unpublish(volume);
    assert.equal(sample(await metricsText(), "spire_csi_volumes", { phase: "expired" }), 0);
  });

  test("a recorded volume that could not be re-adopted counts as adoption-failed until kubelet unpublishes it", async () => {
    const brokenId = "csi-0000000000000000000000000000000000000000000000000000000000000bad";
    await writeFile(join(fx.metadataDir, `${brokenId}.json`), '{"schemaVersion":1,"volumeId":"csi-00', { mode: 0o600 });
    await fx.driver.stop("SIGKILL");
    const mark = fx.driver.logs.length;
    await fx.driver.start();
    await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, mark);
    assert.equal(sample(await metricsText(mark), "spire_csi_volumes", { phase: "adoption-failed" }), 1);
    await fx.kubelet.unpublish({ volumeId: brokenId, targetPath: join(fx.kubeletRoot, "pods", pod.uid, "volumes", "kubernetes.io~csi", "gone", "mount") });
    assert.equal(sample(await metricsText(mark), "spire_csi_volumes", { phase: "adoption-failed" }), 0);
  });

  test("a volume re-adopted while the agent issues it no SVID shows the expired SVID its files hold, and goes live once the agent issues again", async () => {
    const entry = { id: "revoked", spiffeId: "spiffe://example.org/ns/obs/sa/revoked", selectors: [{ type: "k8s", value: "ns:obs" }] };
    await fx.agent.addEntry(entry);
    const volume = await fx.kubelet.publish(pod, "revoked");
    const held = await readVolumeIdentity(volume.targetPath);
    const filesExpireAt = Date.parse(held.validTo) / 1000;
    fx.agent.removeEntry(entry.id);
    await fx.driver.stop("SIGKILL");
    // The driver is down while the SVID in the files runs out, so no live volume ever saw it expire.
    await sleep(Math.max(0, filesExpireAt * 1000 - Date.now()) + 100);
    const mark = fx.driver.logs.length;
    await fx.driver.start();
    const expiredLine = await fx.driver.waitForLog((line) => line.msg.startsWith("the volume's SVID has expired"), 10_000, mark);
    assert.equal(expiredLine.volumeId, volume.volumeId);
    assert.equal(expiredLine.serialNumber, held.serialNumber);
    assert.equal(expiredLine.spiffeId, entry.spiffeId);
    const text = await metricsText(mark);
    assert.equal(sample(text, "spire_csi_volumes", { phase: "expired" }), 1);
    assert.equal(sample(text, "spire_csi_volumes", { phase: "adopting" }), 0);
    assert.equal(sample(text, "spire_csi_svid_expiration_timestamp_seconds", { volume_id: volume.volumeId }), filesExpireAt);

    await fx.agent.addEntry(entry);
    await waitForSample("spire_csi_volumes", { phase: "live" }, 1, mark);
    assert.equal(sample(await metricsText(mark), "spire_csi_volumes", { phase: "expired" }), 0);
    assert.notEqual((await readVolumeIdentity(volume.targetPath)).serialNumber, held.serialNumber);
    await fx.kubelet.unpublish(volume);
  });
});
