import assert from "node:assert/strict";
import { lstat, rm } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { registerLikeKubelet } from "../support/plugin-watcher.js";
import { sample } from "../support/prometheus.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

async function waitFor<T>(what: string, attempt: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await attempt();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(50);
  }
  throw new Error(`${what} did not happen within ${timeoutMs} ms${lastError ? `: ${String(lastError)}` : ""}`);
}

/** Tells two sockets at one path apart (inode numbers get reused at once). */
const inode = async (path: string) => {
  const stats = await lstat(path, { bigint: true });
  return `${stats.ino}:${stats.birthtimeNs}`;
};

describe("self-registration with kubelet (pluginregistration v1)", () => {
  let fx: DriverFixture;
  let registrationSocket: string;
  let pluginSocket: string;
  before(async () => {
    fx = await startDriverFixture();
    registrationSocket = join(fx.kubeletRoot, "plugins_registry", "csi.spire.io-reg.sock");
    pluginSocket = fx.driver.options.pluginSocket;
  });
  after(() => fx.close());

  test("the plugin watcher's GetInfo names the CSI driver and its socket; kubelet's status is logged and exported", async () => {
    const address = (await fx.driver.waitForLog((line) => line.msg === "metrics and health endpoints listening")).address;
    const registered = async () => sample(await (await fetch(`http://${String(address)}/metrics`)).text(), "spire_csi_kubelet_registered");
    assert.equal(await registered(), 0, "not registered before kubelet says so");
    assert.ok((await lstat(registrationSocket)).isSocket(), "socket in <kubelet-root>/plugins_registry/");
    assert.equal((await lstat(registrationSocket)).mode & 0o777, 0o600, "only root may connect");
    const info = await registerLikeKubelet(registrationSocket);
    assert.equal(info.type, "CSIPlugin");
    assert.equal(info.name, "csi.spire.io");
    assert.equal(info.endpoint, pluginSocket, "without --plugin-socket-host-path the endpoint is the socket itself");
    assert.deepEqual(info.supportedVersions, ["1.0.0"]);
    // What kubelet does next with the endpoint.
    assert.equal((await fx.kubelet.node.nodeGetInfo({})).nodeId, "test-node");
    await fx.driver.waitForLog((line) => line.msg === "kubelet registered the driver" && line.endpoint === pluginSocket);
    assert.equal(await registered(), 1);

    const mark = fx.driver.logs.length;
    await registerLikeKubelet(registrationSocket, { registered: false, error: "driver name csi.spire.io already registered" });
    const refused = await fx.driver.waitForLog((line) => line.msg === "kubelet refused to register the driver", 10_000, mark);
    assert.equal(refused.reason, "driver name csi.spire.io already registered");
    assert.equal(await registered(), 0, "a refusal is alertable");
  });

  test("kubelet restart: a new plugin watcher finds the same socket still served", async () => {
    const before = await inode(registrationSocket);
    for (let round = 0; round < 3; round += 1) assert.equal((await registerLikeKubelet(registrationSocket)).name, "csi.spire.io");
    assert.equal(await inode(registrationSocket), before, "the socket was not replaced");
  });

  test("a registration socket deleted under the running driver is recreated and answers", async () => {
    const before = await inode(registrationSocket);
    const mark = fx.driver.logs.length;
    await rm(registrationSocket);
    await fx.driver.waitForLog((line) => line.msg === "plugin registration socket was removed; recreating it so kubelet finds the driver", 20_000, mark);
    const info = await waitFor("GetInfo on the recreated socket", async () => {
      if ((await inode(registrationSocket)) === before) return undefined;
      return registerLikeKubelet(registrationSocket);
    });
    assert.equal(info.endpoint, pluginSocket);
    assert.ok(fx.driver.running);
  });

  test("a removed plugins_registry dir is made again with the socket in it, and a later deletion there is repaired too", async () => {
    const mark = fx.driver.logs.length;
    await rm(join(fx.kubeletRoot, "plugins_registry"), { recursive: true });
    await fx.driver.waitForLog((line) => line.msg === "plugin registration socket was removed; recreating it so kubelet finds the driver", 30_000, mark);
    const info = await waitFor("GetInfo on the socket in the recreated dir", () => registerLikeKubelet(registrationSocket), 30_000);
    assert.equal(info.name, "csi.spire.io");
    const before = await inode(registrationSocket);
    const again = fx.driver.logs.length;
    await rm(registrationSocket);
    await fx.driver.waitForLog((line) => line.msg === "plugin registration socket was removed; recreating it so kubelet finds the driver", 30_000, again);
    await waitFor("a new socket that answers", async () => ((await inode(registrationSocket)) === before ? undefined : registerLikeKubelet(registrationSocket)));
  });

  test("driver restart after SIGKILL: the stale socket is replaced by a new one that answers, with the host path as endpoint", async () => {
    const before = await inode(registrationSocket);
    fx.driver.options.extraArgs = ["--plugin-socket-host-path", "/var/lib/kubelet/plugins/csi.spire.io/csi.sock"];
    await fx.driver.restart("SIGKILL");
    const info = await registerLikeKubelet(registrationSocket);
    assert.notEqual(await inode(registrationSocket), before, "a new socket, which kubelet's watcher sees as a create event");
    assert.equal(info.endpoint, "/var/lib/kubelet/plugins/csi.spire.io/csi.sock");
  });

  test("a graceful stop removes the registration socket (kubelet deregisters), the next start serves it again", async () => {
    await fx.driver.stop("SIGTERM");
    await assert.rejects(lstat(registrationSocket), { code: "ENOENT" });
    await fx.driver.start();
    assert.equal((await registerLikeKubelet(registrationSocket)).name, "csi.spire.io");
  });
});
