import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { waitForStatus } from "../support/http-status.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

function listening(fx: DriverFixture, msg: string): Promise<string> {
  return fx.driver.waitForLog((line) => line.msg === msg).then((line) => `http://${String(line.address)}`);
}

describe("liveness (/healthz, CSI Probe) vs readiness (/readyz)", () => {
  let fx: DriverFixture;
  let health: string;
  before(async () => {
    // Two addresses: the probes and /metrics on separate listeners, as in the chart.
    fx = await startDriverFixture({ driver: { metricsAddress: "127.0.0.1:0", healthAddress: "localhost:0" } });
    health = await listening(fx, "health endpoints listening");
  });
  after(() => fx.close());

  test("health and metrics listen apart when their addresses differ", async () => {
    const metrics = await listening(fx, "metrics endpoints listening");
    assert.notEqual(metrics, health);
    assert.equal((await fetch(`${health}/healthz`)).status, 200);
    assert.equal((await fetch(`${health}/metrics`)).status, 404);
    assert.equal((await fetch(`${metrics}/metrics`)).status, 200);
    assert.equal((await fetch(`${metrics}/healthz`)).status, 404);
  });

  test("an agent outage fails readiness only: /healthz stays 200 and Probe stays ready through repeated reconnect failures", async () => {
    await waitForStatus(`${health}/readyz`, 200);
    await fx.agent.stop();
    try {
      await waitForStatus(`${health}/readyz`, 503);
      // Several failed resubscribes in a row: the outage is ongoing, not a blip.
      for (let failures = 0; failures < 3; failures += 1) {
        const mark = fx.driver.logs.length;
        await fx.driver.waitForLog((line) => line.msg === "agent stream down, resubscribing", 10_000, mark);
        const live = await fetch(`${health}/healthz`);
        assert.equal(live.status, 200, await live.text());
        assert.equal((await fx.kubelet.identity.probe({})).ready, true, "CSI Probe means 'serves CSI', not 'agent reachable'");
        assert.equal((await fetch(`${health}/readyz`)).status, 503);
      }
      assert.match(await (await fetch(`${health}/readyz`)).text(), /SPIRE agent not reachable/);
    } finally {
      await fx.agent.start();
    }
    await waitForStatus(`${health}/readyz`, 200);
  });

  test("/healthz fails when the CSI server no longer answers on its socket path (kubelet could not reach it either)", async () => {
    await rm(fx.driver.options.pluginSocket);
    const response = await fetch(`${health}/healthz`);
    assert.equal(response.status, 503);
    assert.match(await response.text(), /did not answer GetPluginInfo/);
    await fx.driver.waitForLog((line) => line.msg === "liveness check failed");
    // A restart (what kubelet's liveness probe leads to) serves the socket again.
    await fx.driver.restart("SIGKILL");
    health = await listening(fx, "health endpoints listening");
    assert.equal((await fetch(`${health}/healthz`)).status, 200);
  });
});
