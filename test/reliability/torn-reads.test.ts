import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";
import { startTornReader, type TornReaderTarget } from "../support/torn-reader-process.js";

/** SOAK=1 multiplies the run for the figures in RELIABILITY.md. */
const scale = process.env.SOAK ? 10 : 1;
const minRotations = 1000 * scale;
const minReads = 100_000 * scale;
const pod = { uid: "7042ead0-0000-4000-8000-000000000001", name: "reader-0", namespace: "torn", serviceAccount: "reader" };

describe("torn-read checker", { timeout: 20 * 60_000 }, () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs" } });
    await fx.agent.addEntry({ id: "reader", spiffeId: "spiffe://example.org/ns/torn/sa/reader", selectors: [{ type: "k8s", value: "ns:torn" }] });
  });
  after(() => fx.close());

  test(`0 mismatches and 0 missing files over >= ${minReads} reads across >= ${minRotations} rotations`, async (t) => {
    const tls = await fx.kubelet.publish(pod, "tls");
    const fs = await fx.kubelet.publish(pod, "fs", { "csi.spire.io/layout": "spiffe-fs" });
    const sds = await fx.kubelet.publish(pod, "sds", { "csi.spire.io/envoy-sds": "true" });
    const targets: TornReaderTarget[] = [
      { kind: "snapshot", dir: tls.targetPath },
      { kind: "spiffe-fs", dir: fs.targetPath },
      { kind: "envoy-sds", dir: sds.targetPath },
      { kind: "naive", dir: tls.targetPath },
    ];
    const reader = startTornReader(targets);
    t.after(() => reader.kill());
    const started = performance.now();
    let rotations = 0;
    let written = 0;
    // Rotate until both targets are met; every rotation waits until the three volumes are rewritten.
    let scanned = 0;
    let swaps = 0;
    const countWrites = () => {
      const logs = fx.driver.logs;
      for (; scanned < logs.length; scanned++) if (logs[scanned]!.msg === "identity files rotated") swaps += 1;
      return swaps;
    };
    for (;;) {
      const before = countWrites();
      await fx.agent.rotate();
      rotations += 1;
      while (countWrites() < before + 3) await new Promise((resolve) => setTimeout(resolve, 1));
      written = countWrites();
      if (rotations >= minRotations && reader.readsSoFar >= minReads) break;
      // Still ~10 rotations a second, hundreds of times SPIRE's pace.
      await new Promise((resolve) => setTimeout(resolve, 80));
    }
    const counts = await reader.stop();
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `torn-read: ${counts.reads} consistent-path reads, ${rotations} rotations (${written} snapshot swaps) in ${seconds.toFixed(1)} s; ` +
        `mismatches ${counts.mismatches}, missing ${counts.missing}; naive multi-file reads ${counts.naiveReads}, torn ${counts.naiveTears}`,
    );
    assert.deepEqual(counts.errors, []);
    assert.equal(counts.mismatches, 0);
    assert.equal(counts.missing, 0);
    assert.ok(rotations >= minRotations, `${rotations} rotations`);
    assert.ok(counts.reads >= minReads, `only ${counts.reads} reads; the reader is slower than expected`);
  });
});
