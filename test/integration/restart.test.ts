import assert from "node:assert/strict";
import { access, readFile, stat, writeFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { isMountPoint } from "../../src/files/mount-table.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const run = promisify(execFile);
const pods = [0, 1, 2].map((i) => ({
  uid: `5e6f7a8b-0000-4000-8000-00000000010${i}`,
  name: `app-${i}`,
  namespace: "shop",
  serviceAccount: "app",
}));

describe("restart safety (tmpfs backing, as in production)", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs" } });
    await fx.agent.addEntry({ id: "app", spiffeId: "spiffe://example.org/ns/shop/sa/app", selectors: [{ type: "k8s", value: "ns:shop" }, { type: "k8s", value: "sa:app" }] });
  });
  after(() => fx.close());

  test("each target is a tmpfs mount, unmounted on unpublish", async () => {
    const volume = await fx.kubelet.publish(pods[0]!, "tmp");
    assert.equal(await isMountPoint(volume.targetPath), true);
    const mountInfo = await readFile("/proc/self/mountinfo", "utf8");
    const line = mountInfo.split("\n").find((l) => l.split(" ")[4] === volume.targetPath) ?? "";
    assert.match(line, / - tmpfs tmpfs .*size=4096k/);
    await fx.kubelet.unpublish(volume);
    assert.equal(await isMountPoint(volume.targetPath), false);
  });

  test("SIGKILLed driver: on restart every volume is re-adopted and keeps rotating; a stale record is dropped", async () => {
    const volumes = [];
    for (const pod of pods) volumes.push(await fx.kubelet.publish(pod, "svid"));
    const before = await Promise.all(volumes.map((v) => readVolumeIdentity(v.targetPath)));

    // A record whose target kubelet already removed (the pod went away while the driver was down).
    const staleId = "csi-ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    await writeFile(
      join(fx.metadataDir, `${staleId}.json`),
      JSON.stringify({
        schemaVersion: 1,
        volumeId: staleId,
        targetPath: join(fx.kubeletRoot, "pods", "dead-pod", "volumes", "kubernetes.io~csi", "svid", "mount"),
        podUid: "dead-pod",
        podName: "dead",
        podNamespace: "shop",
        serviceAccount: "app",
        attributes: {},
        readOnly: true,
        createdAt: new Date().toISOString(),
      }),
      { mode: 0o600 },
    );

    // A torn record (as if written by a broken tool): quarantined, the others still adopted.
    await writeFile(join(fx.metadataDir, "csi-torn.json"), '{"schemaVersion":1,"volumeId":"csi-to', { mode: 0o600 });

    const killed = await fx.driver.stop("SIGKILL");
    assert.equal(killed.signal, "SIGKILL");
    for (const [i, volume] of volumes.entries()) {
      assert.equal(await isMountPoint(volume.targetPath), true, "the tmpfs outlives the driver");
      assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before[i]!.serialNumber, "files survive the crash");
    }
    await fx.agent.rotate();
    const startMark = fx.driver.logs.length;
    await fx.driver.start();
    const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, startMark);
    assert.equal(adoption.adopted, 3);
    assert.equal(adoption.removedStale, 1);
    assert.equal(adoption.quarantined, 1);
    await fx.driver.waitForLog((line) => line.msg === "quarantined an unusable volume record" && line.file === "csi-torn.json", 1000, startMark);
    await assert.rejects(access(join(fx.metadataDir, `${staleId}.json`)));

    for (const [i, volume] of volumes.entries()) {
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rewritten after restart", 10_000, startMark);
      const now = await readVolumeIdentity(volume.targetPath);
      assert.notEqual(now.serialNumber, before[i]!.serialNumber, "rewritten from the live stream after restart");
    }

    // Still rotating, and publish is idempotent against the adopted state.
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    for (const volume of volumes) {
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
    }
    const calls = fx.agent.subscribeCalls;
    await fx.kubelet.publish(pods[0]!, "svid");
    assert.equal(fx.agent.subscribeCalls, calls, "re-publish after restart opens no second stream");
    for (const volume of volumes) await fx.kubelet.unpublish(volume);
  });

  test("rollback: a record with a field a newer driver added is re-adopted and keeps rotating; a newer major version is quarantined", async () => {
    const extended = await fx.kubelet.publish(pods[0]!, "newer");
    const newerMajor = await fx.kubelet.publish(pods[1]!, "major");
    await fx.driver.stop("SIGKILL");
    // What a newer driver, rolled back to this one, leaves behind.
    const extendedRecord = join(fx.metadataDir, `${extended.volumeId}.json`);
    await writeFile(extendedRecord, JSON.stringify({ ...JSON.parse(await readFile(extendedRecord, "utf8")), rotationHint: { early: true } }), { mode: 0o600 });
    const newerMajorRecord = join(fx.metadataDir, `${newerMajor.volumeId}.json`);
    await writeFile(newerMajorRecord, JSON.stringify({ ...JSON.parse(await readFile(newerMajorRecord, "utf8")), schemaVersion: 2 }), { mode: 0o600 });

    const startMark = fx.driver.logs.length;
    await fx.driver.start();
    const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, startMark);
    assert.deepEqual({ adopted: adoption.adopted, quarantined: adoption.quarantined }, { adopted: 1, quarantined: 1 });
    const ignored = await fx.driver.waitForLog((line) => line.msg === "kept a volume record written by a newer driver; ignored the fields this driver does not know", 1000, startMark);
    assert.deepEqual({ file: ignored.file, ignoredFields: ignored.ignoredFields, level: ignored.level }, { file: `${extended.volumeId}.json`, ignoredFields: ["rotationHint"], level: "info" });
    const refused = await fx.driver.waitForLog((line) => line.msg === "quarantined an unusable volume record", 1000, startMark);
    assert.deepEqual({ file: refused.file, reason: refused.reason }, {
      file: `${newerMajor.volumeId}.json`,
      reason: "written by a newer driver (schemaVersion 2); roll forward, or kubelet republishes after the pod restarts",
    });

    await fx.driver.waitForLog((line) => line.volumeId === extended.volumeId && line.msg === "identity files rewritten after restart", 10_000, startMark);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.volumeId === extended.volumeId && line.msg === "identity files rotated", 10_000, mark);
    for (const volume of [extended, newerMajor]) {
      await fx.kubelet.unpublish(volume);
      assert.equal(await isMountPoint(volume.targetPath), false);
    }
    await assert.rejects(access(extendedRecord), { code: "ENOENT" });
  });

  test("SIGTERM: clean exit, socket removed, files stay", async () => {
    const volume = await fx.kubelet.publish(pods[1]!, "term");
    const result = await fx.driver.stop("SIGTERM");
    assert.equal(result.code, 0);
    await assert.rejects(stat(fx.driver.options.pluginSocket), { code: "ENOENT" });
    assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, "spiffe://example.org/ns/shop/sa/app");
    await fx.driver.start();
    await fx.kubelet.unpublish(volume);
  });

  test("a stale socket file left by a killed driver does not block the next start", async () => {
    await fx.driver.stop("SIGKILL");
    await access(fx.driver.options.pluginSocket);
    await fx.driver.start();
    assert.equal((await fx.kubelet.identity.getPluginInfo({})).name, "csi.spire.io");
  });

  test("node reboot: the tmpfs is gone, vol_data.json and the record stay, kubelet publishes again and the volume is whole", async () => {
    const volume = await fx.kubelet.publish(pods[2]!, "reboot");
    const record = join(fx.metadataDir, `${volume.volumeId}.json`);
    await fx.driver.stop("SIGKILL");
    // What a reboot leaves: an empty, unmounted target, kubelet's vol_data.json, the driver's record.
    await run("umount", [volume.targetPath]);
    assert.equal(await isMountPoint(volume.targetPath), false);
    await access(join(volume.targetPath, "..", "vol_data.json"));
    await access(record);
    const calls = fx.agent.subscribeCalls;
    await fx.driver.start();
    const again = await fx.kubelet.publish(pods[2]!, "reboot", {}, { maxAttempts: 10, maxDelayMs: 500 });
    assert.equal(again.volumeId, volume.volumeId);
    assert.equal(await isMountPoint(volume.targetPath), true, "a fresh tmpfs at the target");
    assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, "spiffe://example.org/ns/shop/sa/app");
    await access(record);
    await fx.agent.waitForStreams(1);
    assert.ok(fx.agent.subscribeCalls - calls <= 2, "one stream for the volume (at most one more from adoption, closed again)");
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
    await fx.kubelet.unpublish(volume);
    await assert.rejects(access(record));
  });

  test("teardown while the driver is down: kubelet's retries unpublish it once the driver is back", async () => {
    const volume = await fx.kubelet.publish(pods[0]!, "teardown");
    await fx.driver.stop("SIGKILL");
    const teardown = fx.kubelet.unpublish(volume, { maxAttempts: 20, maxDelayMs: 1000 });
    // The first attempts find no socket (Unavailable): kubelet keeps the volume and retries.
    await sleep(800);
    await fx.driver.start();
    const { attempts } = await teardown;
    assert.ok(attempts >= 2, `retried (${attempts} attempts)`);
    assert.equal(await isMountPoint(volume.targetPath), false);
    await assert.rejects(access(join(volume.targetPath, "..")), { code: "ENOENT" });
    await assert.rejects(access(join(fx.metadataDir, `${volume.volumeId}.json`)), { code: "ENOENT" });
  });
});
