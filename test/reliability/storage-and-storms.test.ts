import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdir, readFile, readlink, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Code } from "@connectrpc/connect";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { readVolumeIdentity } from "../support/identity-files.js";
import { sample } from "../support/prometheus.js";
import { mountsUnder } from "../support/driver-node.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const run = promisify(execFile);
const podNumber = (i: number) => ({
  uid: `57075700-0000-4000-8000-${String(i).padStart(12, "0")}`,
  name: `storm-${i}`,
  namespace: "storm",
  serviceAccount: "storm",
});


describe("storage faults and kubelet retry storms (tmpfs backing)", { timeout: 5 * 60_000 }, () => {
  let fx: DriverFixture;
  let metricsUrl: string;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs", extraArgs: ["--tmpfs-size", "256k"] } });
    await fx.agent.addEntry({ id: "storm", spiffeId: "spiffe://example.org/ns/storm/sa/storm", selectors: [{ type: "k8s", value: "ns:storm" }] });
    metricsUrl = `http://${String((await fx.driver.waitForLog((line) => line.msg === "metrics and health endpoints listening")).address)}/metrics`;
  });
  after(() => fx.close());

  test("tmpfs full (ENOSPC): the error is logged and counted, the old files stay, the next update succeeds once space is back", async () => {
    const volume = await fx.kubelet.publish(podNumber(1), "full");
    const before = await readVolumeIdentity(volume.targetPath);
    const filler = join(volume.targetPath, "..filler");
    await run("dd", ["if=/dev/zero", `of=${filler}`, "bs=4k", "count=1000"]).catch(() => undefined);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    const failure = await fx.driver.waitForLog((line) => line.msg === "writing the volume snapshot failed; the previous files stay in place", 5000, mark);
    assert.equal(failure.reason, "ENOSPC");
    assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber, "old files intact");
    // The publish left exactly one snapshot and `..data` names it; a half-written one left behind would be a second.
    const snapshots = (await readdir(volume.targetPath)).filter((name) => name.startsWith("..snap-"));
    assert.deepEqual(snapshots, [await readlink(join(volume.targetPath, "..data"))], "the half-written snapshot was removed");
    const metrics = await (await fetch(metricsUrl)).text();
    assert.ok((sample(metrics, "spire_csi_snapshot_writes_total", { result: "error" }) ?? 0) >= 1);
    assert.equal(sample(metrics, "spire_csi_volumes", { phase: "degraded" }), 1);
    await rm(filler);
    const healed = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === volume.volumeId, 5000, healed);
    assert.notEqual((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber);
    await fx.kubelet.unpublish(volume);
  });

  test("read-only target (EROFS): old files stay readable, writes resume after remount", async () => {
    const volume = await fx.kubelet.publish(podNumber(2), "ro");
    const before = await readVolumeIdentity(volume.targetPath);
    await run("mount", ["-o", "remount,ro", volume.targetPath]);
    try {
      const mark = fx.driver.logs.length;
      await fx.agent.rotate();
      const failure = await fx.driver.waitForLog((line) => line.msg === "writing the volume snapshot failed; the previous files stay in place" && line.volumeId === volume.volumeId, 5000, mark);
      assert.equal(failure.reason, "EROFS");
      assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber);
    } finally {
      await run("mount", ["-o", "remount,rw", volume.targetPath]);
    }
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === volume.volumeId, 5000, mark);
    await fx.kubelet.unpublish(volume);
  });

  test("metadata dir read-only (EROFS): publish fails naming the record, leaves no mount and no record, works once writable", async () => {
    // A read-only bind of the metadata dir over itself: the record write fails at once, while the
    // target's tmpfs mount (started alongside it) is still in flight.
    await run("mount", ["--bind", fx.metadataDir, fx.metadataDir]);
    try {
      await run("mount", ["-o", "remount,bind,ro", fx.metadataDir]);
      for (let attempt = 0; attempt < 5; attempt++) {
        const outcome = await fx.kubelet.tryPublish(podNumber(40 + attempt), "rofs", {}, { maxAttempts: 1 });
        assert.equal(outcome.error?.code, Code.Internal, outcome.error?.message);
        assert.match(outcome.error?.rawMessage ?? "", /writing the record of csi-[0-9a-f]+ failed/);
        assert.equal(outcome.cleanupError, undefined, "kubelet could remove the target: nothing left mounted in it");
        assert.deepEqual(await mountsUnder(dirname(outcome.targetPath)), [], "no tmpfs left behind");
      }
    } finally {
      await run("umount", [fx.metadataDir]);
    }
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), []);
    const volume = await fx.kubelet.publish(podNumber(45), "rofs");
    await readVolumeIdentity(volume.targetPath);
    await fx.kubelet.unpublish(volume);
  });

  test("metadata dir full (ENOSPC): publish answers RESOURCE_EXHAUSTED naming the dir and the fix, leaves no mount and no torn record; live volumes rotate; publishes succeed once space returns", async () => {
    const live = await fx.kubelet.publish(podNumber(50), "live");
    // A tiny tmpfs over the metadata dir, filled: the record write hits ENOSPC. Records written
    // below it stay hidden until the unmount, so the live volume is unpublished only after it.
    await run("mount", ["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", fx.metadataDir]);
    try {
      await run("dd", ["if=/dev/zero", `of=${join(fx.metadataDir, "filler")}`, "bs=4k", "count=64"]).catch(() => undefined);
      for (let attempt = 0; attempt < 3; attempt++) {
        const outcome = await fx.kubelet.tryPublish(podNumber(51 + attempt), "full-meta", {}, { maxAttempts: 1 });
        assert.equal(outcome.error?.code, Code.ResourceExhausted, outcome.error?.message);
        assert.match(outcome.error?.rawMessage ?? "", new RegExp(`the metadata dir ${fx.metadataDir} is full \\(ENOSPC\\) .*: free space`), "names the dir and the fix");
        assert.deepEqual(await mountsUnder(dirname(outcome.targetPath)), [], "no tmpfs left behind");
        assert.deepEqual(await readdir(fx.metadataDir), ["filler"], "no record, no half-written temp file");
      }
      const mark = fx.driver.logs.length;
      await fx.agent.rotate();
      await fx.driver.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === live.volumeId, 5000, mark);
      await rm(join(fx.metadataDir, "filler"));
      const healed = await fx.kubelet.publish(podNumber(51), "full-meta");
      await readVolumeIdentity(healed.targetPath);
      assert.deepEqual(await readdir(fx.metadataDir), [`${healed.volumeId}.json`]);
      await fx.kubelet.unpublish(healed);
    } finally {
      await run("umount", [fx.metadataDir]);
    }
    await fx.kubelet.unpublish(live);
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), []);
  });

  test("a record that cannot be deleted at unpublish: an error kubelet retries, no re-adoption by a restart meanwhile, OK once it is deletable", async () => {
    const volume = await fx.kubelet.publish(podNumber(60), "stuck-record");
    const record = join(fx.metadataDir, `${volume.volumeId}.json`);
    // A bind mount over the record file itself: unlink(2) answers EBUSY for this one file only.
    await run("mount", ["--bind", record, record]);
    try {
      await assert.rejects(fx.kubelet.unpublish(volume), (error: unknown) => {
        const { code, rawMessage } = error as { code: Code; rawMessage: string };
        assert.equal(code, Code.Internal, rawMessage);
        assert.match(rawMessage, new RegExp(`volume ${volume.volumeId} is unmounted and its files are gone, but deleting its record in the metadata dir ${fx.metadataDir} failed: .*EBUSY.*; kubelet retries the unpublish`));
        return true;
      });
      assert.deepEqual(await mountsUnder(dirname(volume.targetPath)), [], "the tmpfs is gone");
      await assert.rejects(readdir(volume.targetPath), { code: "ENOENT" }, "and the target dir with it");
      // A restart while the record is stuck: its target is gone, so it is not re-adopted (no
      // tmpfs, no stream, nothing written into the dead pod's dir); the record waits.
      const streams = fx.agent.openX509Streams;
      await fx.driver.restart("SIGTERM");
      // The new process listens on a new ephemeral port; the later tests read its metrics.
      metricsUrl = `http://${String((await fx.driver.waitForLog((line) => line.msg === "metrics and health endpoints listening")).address)}/metrics`;
      const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes");
      assert.equal(adoption.adopted, 0);
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && /target is gone but its record could not be dropped/.test(line.msg));
      assert.deepEqual(await mountsUnder(dirname(volume.targetPath)), []);
      await assert.rejects(readdir(volume.targetPath), { code: "ENOENT" });
      assert.ok(fx.agent.openX509Streams <= streams, "no stream opened for the stuck record");
      await assert.rejects(fx.kubelet.unpublish(volume), /deleting its record/, "still failing while the record is stuck");
    } finally {
      await run("umount", [record]);
    }
    await fx.kubelet.unpublish(volume);
    await assert.rejects(readFile(record), { code: "ENOENT" }, "kubelet's retry deleted the record");
  });

  test("the same publish 20 times at once: all OK, one stream", async () => {
    const calls = fx.agent.subscribeCalls;
    const results = await Promise.all(Array.from({ length: 20 }, () => fx.kubelet.publish(podNumber(3), "same")));
    assert.equal(new Set(results.map((r) => r.volumeId)).size, 1);
    assert.equal(fx.agent.subscribeCalls, calls + 1);
    await fx.agent.waitForStreams(1);
    await fx.kubelet.unpublish(results[0]!);
    await fx.agent.waitForStreams(0);
  });

  test("publish racing unpublish of the same volume ends consistent every time", async () => {
    for (let round = 0; round < 15; round++) {
      const pod = podNumber(100 + round);
      const publishing = fx.kubelet.tryPublish(pod, "race", {}, { maxAttempts: 1 });
      const volumeId = (await import("../support/kubelet-sim.js")).ephemeralVolumeId(pod.uid, "race");
      const targetPath = (await import("../support/kubelet-sim.js")).targetPathFor(fx.kubeletRoot, pod.uid, "race");
      await fx.kubelet.node.nodeUnpublishVolume({ volumeId, targetPath });
      const outcome = await publishing;
      const record = await readFile(join(fx.metadataDir, `${volumeId}.json`), "utf8").catch(() => undefined);
      if (outcome.error === undefined && record) {
        await readVolumeIdentity(targetPath);
        await fx.kubelet.unpublish(outcome);
      } else {
        assert.equal(record, undefined, `round ${round}: no record for a volume that is not published`);
        assert.deepEqual((await readdir(targetPath).catch(() => [])).length, 0, `round ${round}: no files left`);
      }
    }
    await fx.agent.waitForStreams(0);
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), []);
  });

  test("250 volumes published and unpublished concurrently: streams == volumes, then nothing left", async () => {
    const pods = Array.from({ length: 250 }, (_, i) => podNumber(1000 + i));
    const volumes = await Promise.all(pods.map((pod) => fx.kubelet.publish(pod, "dense")));
    await fx.agent.waitForStreams(250);
    assert.equal((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")).length, 250);
    assert.equal((await mountsUnder(fx.kubeletRoot)).length, 250);
    const spot = await Promise.all(volumes.filter((_, i) => i % 25 === 0).map((volume) => readVolumeIdentity(volume.targetPath)));
    assert.ok(spot.every((identity) => identity.spiffeId === "spiffe://example.org/ns/storm/sa/storm"));
    await Promise.all(volumes.map((volume) => fx.kubelet.unpublish(volume)));
    await fx.agent.waitForStreams(0);
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), [], "no orphan records");
    assert.deepEqual(await mountsUnder(fx.kubeletRoot), [], "no leaked mounts");
    const metrics = await (await fetch(metricsUrl)).text();
    assert.equal(sample(metrics, "spire_csi_volumes", { phase: "live" }), 0);
  });
});
