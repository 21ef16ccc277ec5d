import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createTestCa } from "../support/test-ca.js";
import { readVolumeIdentity } from "../support/identity-files.js";
import { sample, scrapeDriverMetrics } from "../support/prometheus.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const pod = { uid: "bad0da7a-0000-4000-8000-000000000001", name: "victim-0", namespace: "faults", serviceAccount: "victim" };
const id = { trustDomain: "example.org", path: "/ns/faults/sa/victim" };

describe("malformed agent data never replaces the last good snapshot", () => {
  let fx: DriverFixture;
  let metricsUrl: string;
  before(async () => {
    fx = await startDriverFixture();
    await fx.agent.addEntry({ id: "victim", spiffeId: `spiffe://${id.trustDomain}${id.path}`, selectors: [{ type: "k8s", value: "ns:faults" }] });
    metricsUrl = `http://${String((await fx.driver.waitForLog((line) => line.msg === "metrics and health endpoints listening")).address)}/metrics`;
  });
  after(() => fx.close());

  test("empty chains, garbage DER, a key of another cert, a wrong SPIFFE ID and an expired cert are all rejected", async () => {
    const volume = await fx.kubelet.publish(pod, "v");
    const good = await readVolumeIdentity(volume.targetPath);
    const other = await fx.agent.ca.issueX509Svid({ spiffeId: `spiffe://${id.trustDomain}${id.path}` });
    const mine = await fx.agent.ca.issueX509Svid({ spiffeId: `spiffe://${id.trustDomain}${id.path}` });
    const foreign = await (await createTestCa({ trustDomain: "evil.example" })).issueX509Svid({ spiffeId: "spiffe://evil.example/x" });
    const expired = await fx.agent.ca.issueX509Svid({ spiffeId: `spiffe://${id.trustDomain}${id.path}`, ttlSeconds: 1, notBefore: new Date(Date.now() - 3_600_000) });
    const cases = [
      { name: "empty chain", svid: { certChain: [], id }, key: mine.keyPkcs8Der, reason: /empty certificate chain/ },
      { name: "garbage DER", svid: { certChain: [new Uint8Array([0x30, 0x03, 1, 2, 3])], id }, key: mine.keyPkcs8Der, reason: /./ },
      { name: "key of another cert", svid: { certChain: mine.certChainDer, id }, key: other.keyPkcs8Der, reason: /private key does not match/ },
      { name: "SPIFFE ID not in the cert", svid: { certChain: foreign.certChainDer, id }, key: foreign.keyPkcs8Der, reason: /is not the SVID's SPIFFE ID/ },
      { name: "expired", svid: { certChain: expired.certChainDer, id }, key: expired.keyPkcs8Der, reason: /expired/ },
      { name: "garbage key", svid: { certChain: mine.certChainDer, id }, key: new Uint8Array([1, 2, 3]), reason: /./ },
    ];
    for (const [i, bad] of cases.entries()) {
      const mark = fx.driver.logs.length;
      fx.agent.pushRaw({ x509Svids: [{ x509Svid: { ...bad.svid, expiresAt: 0n }, x509SvidKey: bad.key }] });
      const logged = await fx.driver.waitForLog((line) => line.msg === "rejected an SVID from the agent", 5000, mark);
      assert.match(String(logged.reason), bad.reason, bad.name);
      await sleep(50);
      assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, good.serialNumber, `${bad.name}: last good snapshot kept`);
      const rejected = sample(await (await fetch(metricsUrl)).text(), "spire_csi_rejected_svids_total");
      assert.equal(rejected, i + 1, `${bad.name}: counted`);
    }
    // A valid set after all that is written as usual.
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated", 5000, mark);
    assert.notEqual((await readVolumeIdentity(volume.targetPath)).serialNumber, good.serialNumber);
    await fx.kubelet.unpublish(volume);
  });

  test("a malformed trust bundle keeps the previous bundle", async () => {
    const volume = await fx.kubelet.publish(pod, "b");
    const before = await readVolumeIdentity(volume.targetPath);
    const mark = fx.driver.logs.length;
    fx.agent.pushRawBundles({ "spiffe://example.org": new Uint8Array([0x30, 0x82, 0xff, 0xff, 0x00]) });
    await fx.driver.waitForLog((line) => line.msg === "ignoring a malformed bundle from the agent", 5000, mark);
    assert.equal(sample(await scrapeDriverMetrics(fx.driver), "spire_csi_rejected_bundles_total", { bundle: "x509" }), 1);
    await sleep(100);
    assert.equal((await readVolumeIdentity(volume.targetPath)).serialNumber, before.serialNumber, "files still verify against the kept bundle");
    await fx.kubelet.unpublish(volume);
  });
});
