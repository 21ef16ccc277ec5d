import assert from "node:assert/strict";
import { lstat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { DriverProcess } from "../support/driver-process.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { registerLikeKubelet } from "../support/plugin-watcher.js";
import { aliveOf, childrenOf } from "../support/process-tree.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "5e7f0000-0000-4000-8000-00000000a001", name: "web-0", namespace: "solo", serviceAccount: "web" };

/** Tells two sockets at one path apart (inode numbers get reused at once). */
async function fileIdentity(path: string): Promise<string> {
  const stats = await lstat(path, { bigint: true });
  return `${stats.ino}:${stats.birthtimeNs}`;
}

describe("one driver per node", () => {
  let fx: DriverFixture;
  const extra: DriverProcess[] = [];
  before(async () => {
    fx = await startDriverFixture();
    await fx.agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/ns/solo/sa/web", selectors: [{ type: "k8s", value: "ns:solo" }] });
  });
  after(async () => {
    for (const driver of extra) await driver.dispose().catch(() => undefined);
    await fx.close();
  });

  test("a second driver on the same metadata dir waits for the lock without touching anything, then takes over when the first exits", async () => {
    const volume = await fx.kubelet.publish(pod, "creds");
    const first = fx.driver;
    const registrationSocket = join(fx.kubeletRoot, "plugins_registry", "csi.spire.io-reg.sock");
    const sockets = { csi: await fileIdentity(first.options.pluginSocket), registration: await fileIdentity(registrationSocket) };

    const second = new DriverProcess({ ...first.options, logFile: join(fx.dir, "second.log") });
    extra.push(second);
    const secondStarted = second.start();
    secondStarted.catch(() => undefined);
    const waiting = await second.waitForLog((line) => /another spire-csi-driver holds the lock/.test(line.msg));
    assert.equal(waiting.lock, join(fx.metadataDir, ".driver.lock"));
    const health = `http://${String((await second.waitForLog((line) => line.msg === "metrics and health endpoints listening")).address)}`;
    assert.equal((await fetch(`${health}/healthz`)).status, 200, "waiting is what it should do: alive");
    assert.equal((await fetch(`${health}/readyz`)).status, 503, "but not ready");

    // The first driver is untouched: same sockets, still serving, volume still its own.
    assert.equal(await fileIdentity(first.options.pluginSocket), sockets.csi);
    assert.equal(await fileIdentity(registrationSocket), sockets.registration);
    assert.equal((await registerLikeKubelet(registrationSocket)).name, "csi.spire.io");
    const other = await fx.kubelet.publish({ ...pod, uid: "5e7f0000-0000-4000-8000-00000000a002", name: "web-1" }, "creds");
    assert.ok(!second.logs.some((line) => line.msg === "re-adopted recorded volumes"), "the waiting driver adopted nothing");

    // The first exits (a rollout's old pod going away): the second takes over at once.
    await first.stop("SIGTERM");
    await secondStarted;
    const adopted = await second.waitForLog((line) => line.msg === "re-adopted recorded volumes");
    assert.equal(adopted.adopted, 2);
    assert.notEqual(await fileIdentity(first.options.pluginSocket), sockets.csi, "the second serves a socket of its own");
    assert.equal((await registerLikeKubelet(registrationSocket)).name, "csi.spire.io");
    assert.equal((await fx.kubelet.node.nodeGetInfo({})).nodeId, "test-node");
    const before = await readVolumeIdentity(volume.targetPath);
    const mark = second.logs.length;
    await fx.agent.rotate();
    await second.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === volume.volumeId, 10_000, mark);
    assert.notEqual((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber, "the volumes rotate under the second driver");
    await fx.kubelet.unpublish(other);
    await fx.kubelet.unpublish(volume);
  });

  test("a driver with another metadata dir never unlinks a CSI socket a live server answers on: it exits with a clear message", async () => {
    const socket = fx.driver.options.pluginSocket;
    const before = await fileIdentity(socket);
    const intruder = new DriverProcess({
      ...fx.driver.options,
      metadataDir: join(fx.dir, "other-meta"),
      logFile: join(fx.dir, "intruder.log"),
    });
    extra.push(intruder);
    await assert.rejects(intruder.start(), /driver exited during start/);
    assert.match(intruder.rawOutput.join("\n"), new RegExp(`a live server answers on ${socket.replace(/[.]/g, "\\.")}`));
    assert.equal(await fileIdentity(socket), before, "the live socket is still there");
    assert.equal((await fx.kubelet.node.nodeGetInfo({})).nodeId, "test-node");
  });

  test("a driver killed while it waits for the lock leaves no flock process behind for long", async () => {
    const waiter = new DriverProcess({ ...fx.driver.options, logFile: join(fx.dir, "waiter.log") });
    extra.push(waiter);
    waiter.start().catch(() => undefined);
    await waiter.waitForLog((line) => /another spire-csi-driver holds the lock/.test(line.msg));
    const flockPids = await childrenOf(waiter.pid!);
    assert.ok(flockPids.length > 0, "the waiting driver has a flock child");
    await waiter.stop("SIGKILL");
    const deadline = Date.now() + 20_000;
    while ((await aliveOf(flockPids)).length > 0 && Date.now() < deadline) await sleep(100);
    assert.deepEqual(await aliveOf(flockPids), [], "the orphaned flock gave up within its attempt bound");
  });
});
