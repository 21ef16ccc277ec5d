/**
 * A registration entry deleted under a live volume, against real SPIRE v1.15.3: the agent stops
 * issuing the pod an SVID, the one on disk runs out, and an entry created again is picked up by
 * the same stream (RELIABILITY.md, "Agent-side changes" 1).
 */
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { sample, scrapeDriverMetrics } from "../support/prometheus.js";
import { SpireFixture } from "../support/spire-fixture.js";

const pod = { uid: "ee11bb22-0000-4000-8000-000000000001", name: "gone-0", namespace: "edge", serviceAccount: "gone" };
const spiffeId = "spiffe://example.org/ns/edge/sa/gone";
const selectors = ["k8s:ns:edge", "k8s:sa:gone"];
const ttlSeconds = 12;

describe("a registration entry deleted for a live volume (real SPIRE)", { timeout: 5 * 60_000 }, () => {
  let spire: SpireFixture;
  let node: DriverNode;

  before(async () => {
    spire = await SpireFixture.start();
    await spire.registerDelegate();
    node = await startDriverNode(spire.adminSocket, { publishTimeout: "8s" });
  });

  after(async () => {
    try {
      await node?.close();
    } finally {
      await spire?.stop();
    }
  });

  test("the last good files stay, the volume shows as expired, and a new entry is picked up by the same stream", async () => {
    const entryId = await spire.createEntry({ spiffeId, selectors, x509SvidTtl: ttlSeconds });
    const volume = await node.kubelet.publish(pod, "svid", {}, { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true });
    const metricsBefore = await scrapeDriverMetrics(node.driver);
    assert.equal(sample(metricsBefore, "spire_csi_volumes", { phase: "live" }), 1);
    const reconnectsBefore = sample(metricsBefore, "spire_csi_agent_stream_reconnects_total", { stream: "x509-svids" }) ?? 0;

    const mark = node.driver.logs.length;
    await spire.deleteEntry(entryId);
    await node.driver.waitForLog(
      (line) => line.volumeId === volume.volumeId && line.msg === "the agent no longer has an SVID for this pod; keeping the last one until it expires",
      30_000,
      mark,
    );
    // The agent may have rotated the SVID between publish and delete: the files hold the last one it issued.
    const kept = await readVolumeIdentity(volume.targetPath);
    const expiresAtMs = Date.parse(kept.validTo);
    while (Date.now() <= expiresAtMs) {
      assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, kept.serialNumber, "no file changes while no entry matches");
      await sleep(500);
    }
    const expiredLog = await node.driver.waitForLog(
      (line) => line.volumeId === volume.volumeId && line.msg.startsWith("the volume's SVID has expired and the agent issued no replacement"),
      10_000,
      mark,
    );
    assert.equal(expiredLog.level, "error");
    assert.equal(expiredLog.serialNumber, kept.serialNumber);
    const whileExpired = await scrapeDriverMetrics(node.driver);
    assert.equal(sample(whileExpired, "spire_csi_volumes", { phase: "expired" }), 1);
    assert.equal(sample(whileExpired, "spire_csi_volumes", { phase: "live" }), 0);
    assert.equal(sample(whileExpired, "spire_csi_svid_expiration_timestamp_seconds", { volume_id: volume.volumeId }), Math.floor(expiresAtMs / 1000));
    assert.equal(sample(whileExpired, "spire_csi_agent_stream_reconnects_total", { stream: "x509-svids" }) ?? 0, reconnectsBefore, "the stream stays open");
    // Expired but complete: what the pod had is still there, and still a matching key and certificate.
    const expired = await readVolumeIdentity(volume.targetPath);
    assert.equal(expired.serialNumber, kept.serialNumber);
    assert.ok(Date.parse(new X509Certificate(await readFile(join(volume.targetPath, "tls.crt"), "utf8")).validTo) < Date.now());

    const recreatedMark = node.driver.logs.length;
    await spire.createEntry({ spiffeId, selectors, x509SvidTtl: ttlSeconds });
    await node.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 30_000, recreatedMark);
    const renewed = await readVolumeIdentity(volume.targetPath);
    assert.equal(renewed.spiffeId, spiffeId);
    assert.notEqual(renewed.serialNumber, kept.serialNumber);
    const afterRenewal = await scrapeDriverMetrics(node.driver);
    assert.equal(sample(afterRenewal, "spire_csi_volumes", { phase: "live" }), 1);
    assert.equal(sample(afterRenewal, "spire_csi_volumes", { phase: "expired" }), 0);
    assert.equal(sample(afterRenewal, "spire_csi_agent_stream_reconnects_total", { stream: "x509-svids" }) ?? 0, reconnectsBefore, "picked up without resubscribing");
    await node.kubelet.unpublish(volume);
  });
});
