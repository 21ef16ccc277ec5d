import assert from "node:assert/strict";
import { readdir, stat } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { readVolumeIdentity } from "../support/identity-files.js";
import { mountsUnder } from "../support/driver-node.js";
import { alive, childrenOf } from "../support/process-tree.js";
import { uncertainCodes, type PublishedVolume, type PublishOutcome } from "../support/kubelet-sim.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const podNumber = (i: number) => ({ uid: `5e9e0000-0000-4000-8000-${String(i).padStart(12, "0")}`, name: `term-${i}`, namespace: "term", serviceAccount: "term" });
const inFlightCount = 6;

describe("SIGTERM with publishes in flight", { timeout: 3 * 60_000 }, () => {
  let fx: DriverFixture;
  before(async () => {
    // A publish deadline far beyond the CSI server's own 5 s grace, as in the chart (30 s): the
    // driver may not sit on a waiting publish until it expires, nor drop it unanswered.
    fx = await startDriverFixture({ driver: { publishTimeout: "30s" } });
    await fx.agent.addEntry({ id: "term", spiffeId: "spiffe://example.org/ns/term/sa/term", selectors: [{ type: "k8s", value: "ns:term" }] });
  });
  after(() => fx.close());

  async function records(): Promise<string[]> {
    return (await readdir(fx.metadataDir)).filter((name) => name.endsWith(".json")).map((name) => name.slice(0, -5)).sort();
  }

  test("each in-flight publish ends fully published or answered with an error and nothing left; after the next start records == mounts == published", async () => {
    const published = new Map<string, PublishedVolume>();
    for (let i = 0; i < 3; i++) {
      const volume = await fx.kubelet.publish(podNumber(i), "svid");
      published.set(volume.volumeId, volume);
    }
    // New streams get nothing until released: these publishes wait for their first SVID.
    fx.agent.holdNewSvids(true);
    const streams = fx.agent.openX509Streams;
    const inFlight: Promise<PublishOutcome>[] = [];
    for (let i = 0; i < inFlightCount; i++) inFlight.push(fx.kubelet.tryPublish(podNumber(100 + i), "svid", {}, { maxAttempts: 1 }));
    await fx.agent.waitForStreams(streams + inFlightCount);
    const pid = fx.driver.pid!;
    const shells = await childrenOf(pid);
    const exit = await fx.driver.stop("SIGTERM");
    assert.deepEqual(exit, { code: 0, signal: null }, "a clean exit");
    const outcomes = await Promise.all(inFlight);

    for (let wait = 0; wait < 100 && (await Promise.all(shells.map(alive))).some(Boolean); wait++) await sleep(50);
    assert.deepEqual((await Promise.all(shells.map(async (shell) => ((await alive(shell)) ? shell : undefined)))).filter(Boolean), [], "no mount shell outlives the driver");
    assert.deepEqual(await childrenOf(pid), [], "no child of the driver left");

    let answeredWithError = 0;
    for (const outcome of outcomes) {
      if (outcome.error === undefined) {
        published.set(outcome.volumeId, outcome);
        await readVolumeIdentity(outcome.targetPath);
        continue;
      }
      answeredWithError += 1;
      // An answer, not a dropped call: kubelet treats UNAVAILABLE as uncertain and retries.
      assert.ok(uncertainCodes.has(outcome.error.code), outcome.error.message);
      assert.match(outcome.error.rawMessage, /shutting down/, "the driver answered the call itself");
      // kubelet leaves an uncertain volume's dir alone: whatever is there, the driver left.
      await assert.rejects(stat(outcome.targetPath), { code: "ENOENT" }, "nothing left at the target: no tmpfs, no files, no dir");
    }
    assert.equal(answeredWithError, inFlightCount, "publishes still waiting for their SVID are answered, not left to the deadline");
    assert.deepEqual(await records(), [...published.keys()].sort(), "records == published volumes while the driver is down");
    assert.deepEqual((await mountsUnder(fx.kubeletRoot)).sort(), [...published.values()].map((volume) => volume.targetPath).sort(), "mounts == published volumes while the driver is down");

    fx.agent.holdNewSvids(false);
    fx.driver.logs.length = 0;
    await fx.driver.start();
    // kubelet retries each uncertain publish against the new process.
    for (const [i, outcome] of outcomes.entries()) {
      if (outcome.error === undefined) continue;
      const volume = await fx.kubelet.publish(podNumber(100 + i), "svid");
      published.set(volume.volumeId, volume);
    }
    assert.deepEqual(await records(), [...published.keys()].sort(), "records == published volumes after the next start");
    assert.deepEqual((await mountsUnder(fx.kubeletRoot)).sort(), [...published.values()].map((volume) => volume.targetPath).sort(), "mounts == published volumes after the next start");
    for (const volume of published.values()) await readVolumeIdentity(volume.targetPath);
    await fx.kubelet.unpublishAll();
    assert.deepEqual(await records(), []);
    assert.deepEqual(await mountsUnder(fx.kubeletRoot), []);
  });
});
