import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { readVolumeIdentity } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const outageMs = Number(process.env.OUTAGE_MS ?? (process.env.SOAK ? 180_000 : 8_000));

describe("agent down for a long time", { timeout: 10 * 60_000 }, () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { reconnectMin: "200ms", reconnectMax: "2s" } });
    await fx.agent.addEntry({ id: "out", spiffeId: "spiffe://example.org/out", selectors: [{ type: "k8s", value: "ns:outage" }] });
  });
  after(() => fx.close());

  test("files stay, backoff is bounded and resets after success (CPU while the agent is down: npm run bench)", async () => {
    const volumes = [];
    for (let i = 0; i < 20; i++) {
      volumes.push(await fx.kubelet.publish({ uid: `0a7a9e00-0000-4000-8000-${String(i).padStart(12, "0")}`, name: `o-${i}`, namespace: "outage", serviceAccount: "o" }, "v"));
    }
    const before = await Promise.all(volumes.map((volume) => readVolumeIdentity(volume.targetPath)));
    const mark = fx.driver.logs.length;
    await fx.agent.stop();
    await sleep(outageMs);
    const retries = fx.driver.logs.slice(mark).filter((line) => line.msg === "agent stream down, resubscribing");
    const delays = retries.map((line) => Number(line.delayMs));
    console.log(`agent-outage: ${outageMs} ms down, 21 streams, ${retries.length} resubscribe attempts, max delay ${Math.max(...delays)} ms`);
    // Without attempts, or without growth, the bound and the reset below would hold vacuously.
    assert.ok(delays.length >= volumes.length, `every stream retried (${delays.length} attempts)`);
    assert.ok(Math.max(...delays) >= 1000, `the backoff grew towards --reconnect-max (max ${Math.max(...delays)} ms)`);
    assert.ok(delays.every((delay) => delay <= 2000), "delays never exceed --reconnect-max");
    for (const [i, volume] of volumes.entries()) {
      assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before[i]!.serialNumber, "files stay while the agent is down");
    }

    await fx.agent.start();
    await fx.agent.waitForStreams(20, 10_000);
    // One good message resets the backoff: the next failure retries after about reconnect-min again.
    await sleep(300);
    const afterMark = fx.driver.logs.length;
    const calls = fx.agent.subscribeCalls;
    fx.agent.dropStreams();
    await fx.agent.waitForSubscribeCalls(calls + 20);
    await fx.agent.waitForStreams(20, 10_000);
    const fresh = fx.driver.logs.slice(afterMark).filter((line) => line.msg === "agent stream down, resubscribing").map((line) => Number(line.delayMs));
    assert.ok(fresh.length > 0 && fresh.every((delay) => delay <= 200), `backoff reset after success (delays ${fresh.slice(0, 5).join(",")})`);
    for (const volume of volumes) await fx.kubelet.unpublish(volume);
  });
});
