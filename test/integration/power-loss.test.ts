import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { access, readdir, readFile, rm, truncate, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { isMountPoint } from "../../src/files/mount-table.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { scrapeDriverMetrics, sample } from "../support/prometheus.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const run = promisify(execFile);
const spiffeId = "spiffe://example.org/ns/power/sa/app";
const pods = ["zero", "torn", "lost"].map((name, i) => ({
  uid: `9a8b7c6d-0000-4000-8000-00000000020${i}`,
  name: `app-${name}`,
  namespace: "power",
  serviceAccount: "app",
}));

/**
 * Records are written without fsync (see MetadataStore.put): a driver crash keeps them (page
 * cache), a power loss may not. These tests leave what a power loss can leave of the three
 * volumes' records (a zero-length file where the rename reached the disk before the data, a torn
 * one, none at all but write-file-atomic's temp file) and check that kubelet's publish after the
 * reboot makes every volume whole again, for both backings.
 */
for (const backing of ["tmpfs", "directory"] as const) {
  describe(`power loss before the records reached the disk (${backing} backing)`, () => {
    let fx: DriverFixture;
    before(async () => {
      fx = await startDriverFixture({ driver: { volumeBacking: backing } });
      await fx.agent.addEntry({ id: "app", spiffeId, selectors: [{ type: "k8s", value: "ns:power" }] });
    });
    after(() => fx.close());

    test("unusable records are quarantined, the temp file swept, and kubelet's publish after the reboot makes each volume whole", async () => {
      const volumes = [];
      for (const pod of pods) volumes.push(await fx.kubelet.publish(pod, "svid"));
      const [zero, torn, lost] = volumes.map((volume) => join(fx.metadataDir, `${volume.volumeId}.json`)) as [string, string, string];
      const lostContent = await readFile(lost, "utf8");
      await fx.driver.stop("SIGKILL");

      // What the reboot leaves: tmpfs contents are gone; on disk, the records as the filesystem
      // happened to persist them.
      if (backing === "tmpfs") for (const volume of volumes) await run("umount", [volume.targetPath]);
      await truncate(zero, 0);
      await writeFile(torn, (await readFile(torn, "utf8")).slice(0, 40));
      await rm(lost);
      const temp = `${lost}.3735928559`;
      await writeFile(temp, lostContent.slice(0, 20), { mode: 0o600 });
      const beforeTheCrash = new Date(Date.now() - 5 * 60_000);
      await utimes(temp, beforeTheCrash, beforeTheCrash);

      const mark = fx.driver.logs.length;
      await fx.driver.start();
      const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, mark);
      assert.deepEqual({ adopted: adoption.adopted, quarantined: adoption.quarantined }, { adopted: 0, quarantined: 2 });
      const quarantined = (await readdir(join(fx.metadataDir, "quarantine"))).map((name) => name.replace(/\.json\..*$/, ""));
      assert.deepEqual(quarantined.sort(), [volumes[0]!.volumeId, volumes[1]!.volumeId].sort());
      await assert.rejects(access(temp), { code: "ENOENT" }, "the temp file of the interrupted write is swept");
      assert.equal(sample(await scrapeDriverMetrics(fx.driver, mark), "spire_csi_volumes", { phase: "adoption-failed" }), 2);

      // kubelet publishes every volume of the pods it restarts after a reboot.
      for (const pod of pods) await fx.kubelet.publish(pod, "svid");
      for (const volume of volumes) {
        assert.equal(await isMountPoint(volume.targetPath), backing === "tmpfs");
        assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, spiffeId);
        const record = JSON.parse(await readFile(join(fx.metadataDir, `${volume.volumeId}.json`), "utf8")) as { targetPath: string };
        assert.equal(record.targetPath, volume.targetPath, "a whole record again");
      }
      assert.equal(sample(await scrapeDriverMetrics(fx.driver, mark), "spire_csi_volumes", { phase: "adoption-failed" }), 0);
      assert.equal(sample(await scrapeDriverMetrics(fx.driver, mark), "spire_csi_volumes", { phase: "live" }), 3);

      const rotated = fx.driver.logs.length;
      await fx.agent.rotate();
      for (const volume of volumes) {
        await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, rotated);
      }
      for (const volume of volumes) await fx.kubelet.unpublish(volume);
      assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), []);
    });
  });
}
