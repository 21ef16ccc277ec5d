import assert from "node:assert/strict";
import { mkdir, readdir, readFile, readlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { isMountPoint } from "../../src/files/mount-table.js";
import type { CrashTestPoint } from "../../src/crash-test-pause.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { uncertainCodes, type PublishedVolume, type PublishOutcome } from "../support/kubelet-sim.js";
import { mountsUnder } from "../support/driver-node.js";
import { alive, childrenOf } from "../support/process-tree.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const iterations = Number(process.env.CHAOS_ITERATIONS ?? (process.env.SOAK ? 500 : 60));
const killsPerWindow = Number(process.env.CHAOS_WINDOW_KILLS ?? (process.env.SOAK ? 20 : 3));
const podNumber = (i: number) => ({ uid: `c4a05000-0000-4000-8000-${String(i).padStart(12, "0")}`, name: `chaos-${i}`, namespace: "chaos", serviceAccount: "chaos" });
const spiffeId = "spiffe://example.org/ns/chaos/sa/chaos";

/** A small deterministic PRNG so a failing run can be replayed with CHAOS_SEED. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/** How a publish that was in flight at the kill ended, as kubelet sees it. */
function classify(outcome: PublishOutcome): "published" | "not sent" | "interrupted" | "failed" {
  if (!outcome.error) return "published";
  if (outcome.failedAt === "capability-check") return "not sent";
  return uncertainCodes.has(outcome.error.code) ? "interrupted" : "failed";
}

describe("driver SIGKILLed inside each publish window and at random points of publish, rotation and unpublish", { timeout: 30 * 60_000 }, () => {
  let fx: DriverFixture;
  const published = new Map<string, PublishedVolume>();
  let next = 0;

  before(async () => {
    fx = await startDriverFixture({ driver: { publishTimeout: "5s" } });
    await fx.agent.addEntry({ id: "chaos", spiffeId, selectors: [{ type: "k8s", value: "ns:chaos" }] });
  });
  after(() => fx.close());

  /** SIGKILLs the driver and checks its mount shells die with it (they read their commands from its pipe). */
  async function kill(): Promise<number> {
    const shells = await childrenOf(fx.driver.pid!);
    await fx.driver.stop("SIGKILL");
    for (let wait = 0; wait < 100 && (await Promise.all(shells.map(alive))).some(Boolean); wait++) await sleep(50);
    const survivors = (await Promise.all(shells.map(async (pid) => ((await alive(pid)) ? pid : undefined)))).filter((pid) => pid !== undefined);
    assert.deepEqual(survivors, [], "no mount shell outlives the killed driver");
    return shells.length;
  }

  /** The invariants after every recovery: one record and one tmpfs per published volume, complete files, no leftovers, still rotating. */
  async function checkRecovered(label: string): Promise<void> {
    const records = (await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")).map((name) => name.slice(0, -5)).sort();
    assert.deepEqual(records, [...published.keys()].sort(), `${label}: records == published volumes`);
    const mounts = (await mountsUnder(fx.kubeletRoot)).sort();
    assert.deepEqual(mounts, [...published.values()].map((volume) => volume.targetPath).sort(), `${label}: mounts == published volumes`);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    for (const volume of published.values()) {
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
      assert.ok(await isMountPoint(volume.targetPath));
      assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, spiffeId, `${label}: ${volume.volumeId} complete`);
      const entries = await readdir(volume.targetPath);
      assert.ok(!entries.includes("..data_tmp"), `${label}: no ..data_tmp left in ${volume.volumeId}`);
      const current = await readlink(join(volume.targetPath, "..data"));
      assert.ok(entries.includes(current));
      assert.ok(entries.filter((name) => name.startsWith("..snap-")).length <= 6, `${label}: snapshots stay bounded`);
    }
  }

  for (const point of ["record-written", "mounted", "first-write"] satisfies CrashTestPoint[]) {
    test(`${killsPerWindow} kills at "${point}": the retried publish completes, the volume rotates, nothing is left over`, async () => {
      for (let round = 0; round < killsPerWindow; round++) {
        fx.driver.options.env = { SPIRE_CSI_CRASH_TEST_PAUSE: point };
        await fx.driver.restart();
        const pod = podNumber(next++);
        const mark = fx.driver.logs.length;
        const publishing = fx.kubelet.tryPublish(pod, "v", {}, { maxAttempts: 1 });
        const paused = await fx.driver.waitForLog((line) => line.msg === "crash-test pause point reached; waiting to be killed" && line.point === point, 10_000, mark);
        const targetPath = String(paused.target);
        const shells = await kill();
        if (point !== "record-written") assert.ok(shells > 0, "the driver had mount shells to leave behind");
        const outcome = await publishing;
        assert.equal(classify(outcome), "interrupted", `the call was in the driver when it died: ${outcome.error?.code}`);

        // What the window leaves on disk.
        await readFile(join(fx.metadataDir, `${outcome.volumeId}.json`));
        assert.equal(await isMountPoint(targetPath), point !== "record-written", "mounted only past record-written");
        const entries = await readdir(targetPath).catch((): string[] => []);
        assert.ok(!entries.includes("..data"), "no snapshot published yet");
        if (point === "first-write") {
          const snapshots = entries.filter((name) => name.startsWith("..snap-"));
          assert.equal(snapshots.length, 1);
          assert.equal((await readdir(join(targetPath, snapshots[0]!))).length, 1, "a half-written snapshot");
        }

        fx.driver.options.env = {};
        await fx.driver.start();
        const volume = await fx.kubelet.publish(pod, "v", {}, { maxAttempts: 10, maxDelayMs: 500 });
        published.set(volume.volumeId, volume);
        await checkRecovered(`${point} #${round}`);
      }
    });
  }

  test(`${iterations} kills at random points: no volume lost, no orphan record, no torn snapshot, no leaked mount, still rotating`, async () => {
    const seed = Number(process.env.CHAOS_SEED ?? Date.now() % 100_000);
    const random = prng(seed);
    const tally = { "not sent": 0, interrupted: 0, published: 0, failed: 0, unpublishInterrupted: 0, rotationsInFlight: 0 };
    const failures: string[] = [];
    for (let iteration = 0; iteration < iterations; iteration++) {
      // Start a few operations, kill the driver somewhere in the middle of them.
      const publishes = Array.from({ length: 1 + Math.floor(random() * 3) }, () => fx.kubelet.tryPublish(podNumber(next++), "v", {}, { maxAttempts: 1 }));
      const victims = [...published.values()].filter(() => random() < 0.3);
      const unpublishes = victims.map((volume) =>
        fx.kubelet.node.nodeUnpublishVolume({ volumeId: volume.volumeId, targetPath: volume.targetPath }).then(() => undefined, (error: unknown) => error),
      );
      if (random() < 0.5) {
        tally.rotationsInFlight += 1;
        void fx.agent.rotate();
      }
      await sleep(random() * 40);
      await kill();
      const publishOutcomes = await Promise.all(publishes);
      const unpublishOutcomes = await Promise.all(unpublishes);
      await fx.driver.start();

      // kubelet's reconciliation: a publish not sent, interrupted or failed is retried until OK;
      // an interrupted unpublish is retried until OK, then the target is removed.
      for (const outcome of publishOutcomes) {
        const kind = classify(outcome);
        tally[kind] += 1;
        if (kind === "failed") failures.push(`${outcome.error?.code}: ${outcome.error?.rawMessage}`);
        const volume = outcome.error ? await fx.kubelet.publish(outcome.pod, "v", {}, { maxAttempts: 10, maxDelayMs: 500, retryFinalErrors: true }) : outcome;
        published.set(volume.volumeId, volume);
      }
      for (const [i, volume] of victims.entries()) {
        if (unpublishOutcomes[i]) tally.unpublishInterrupted += 1;
        await fx.kubelet.unpublish(volume);
        published.delete(volume.volumeId);
      }
      await checkRecovered(`iteration ${iteration} (seed ${seed})`);
      // Keep the node small: retire old volumes now and then.
      if (published.size > 12) {
        for (const volume of [...published.values()].slice(0, 6)) {
          await fx.kubelet.unpublish(volume);
          published.delete(volume.volumeId);
        }
      }
    }
    // The driver answers a publish only with its outcome; a kill can cut the answer off, never turn it into a final error.
    assert.deepEqual(failures, [], "no publish in flight at a kill failed with a final error");
    console.log(
      `crash-chaos: ${iterations} random SIGKILLs (seed ${seed}); publishes in flight: ${tally.interrupted} interrupted inside the driver, ${tally["not sent"]} not sent yet, ${tally.published} answered OK before the kill; unpublishes interrupted ${tally.unpublishInterrupted}; rotations in flight ${tally.rotationsInFlight}; nothing lost`,
    );
  });

  test("what killed drivers left in the temp and metadata dirs (fstab dirs, write-file-atomic temps) is swept once stale", async () => {
    const tmpDir = fx.driver.options.tmpDir!;
    // Whether a kill left any depends on timing; one of each, shaped as the driver and
    // write-file-atomic name them, makes sure the sweep itself is exercised.
    await mkdir(join(tmpDir, "spire-csi-fstab-planted"));
    await writeFile(join(tmpDir, "spire-csi-fstab-planted", "fstab"), "");
    await writeFile(join(fx.metadataDir, `${[...published.keys()][0] ?? "csi-planted"}.json.123456789`), "{");
    const fstabDirs = (await readdir(tmpDir)).filter((name) => name.startsWith("spire-csi-fstab-"));
    const temps = (await readdir(fx.metadataDir)).filter((name) => /\.json\.\d+$/.test(name));
    // Age them past the driver's thresholds (a minute for both) instead of waiting.
    const old = new Date(Date.now() - 10 * 60_000);
    for (const path of [...fstabDirs.map((name) => join(tmpDir, name)), ...temps.map((name) => join(fx.metadataDir, name))]) await utimes(path, old, old);
    await fx.driver.restart();
    // Records are listed (temps swept) at start; fstab dirs are swept at the first mount.
    const fresh = await fx.kubelet.publish(podNumber(next++), "v");
    published.set(fresh.volumeId, fresh);
    for (let wait = 0; wait < 100 && (await readdir(tmpDir)).some((name) => name.startsWith("spire-csi-fstab-")); wait++) await sleep(50);
    assert.deepEqual((await readdir(tmpDir)).filter((name) => name.startsWith("spire-csi-fstab-")), [], `${fstabDirs.length} stale fstab dirs removed`);
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => /\.json\.\d+$/.test(name)), [], `${temps.length} stale record temps removed`);
    console.log(`crash-chaos: after all kills, ${fstabDirs.length - 1} fstab dirs and ${temps.length - 1} record temp files were left (plus one planted each); all swept on the next start`);

    // Past the snapshot grace period one more write leaves only the current and the previous snapshot.
    await sleep(5_100);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    for (const volume of published.values()) {
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
      const snapshots = (await readdir(volume.targetPath)).filter((name) => name.startsWith("..snap-"));
      assert.ok(snapshots.length <= 2 && snapshots.includes(await readlink(join(volume.targetPath, "..data"))), `${volume.volumeId}: ${snapshots.join(", ")}`);
    }
    for (const volume of published.values()) await fx.kubelet.unpublish(volume);
    published.clear();
    assert.deepEqual(await mountsUnder(fx.kubeletRoot), []);
    assert.deepEqual((await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")), []);
  });
});
