import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { findSecrets } from "../support/secret-detector.js";
import { startDriverFixture, type DriverFixture } from "../integration/driver-fixture.js";

const pod = { uid: "5ec2e750-0000-4000-8000-000000000001", name: "hush-0", namespace: "hush", serviceAccount: "hush" };

describe("secrets hygiene", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture();
    await fx.agent.addEntry({ id: "hush", spiffeId: "spiffe://example.org/hush", selectors: [{ type: "k8s", value: "ns:hush" }] });
  });
  after(() => fx.close());

  test("the detector recognises every kind of secret the driver handles", async () => {
    const volume = await fx.kubelet.publish(pod, "probe", { "csi.spire.io/jwt-audiences": "x", "csi.spire.io/layout": "spiffe-fs" });
    const credential = await readFile(join(volume.targetPath, "credential-bundle.pem"), "utf8");
    const token = await readFile(join(volume.targetPath, "jwt-x.token"), "utf8");
    assert.ok(findSecrets(JSON.stringify({ msg: credential })).includes("PEM block"));
    const keyBase64 = credential.split("\n").slice(1, 3).join("");
    assert.ok(findSecrets(keyBase64).length > 0, "a bare base64 key is caught");
    assert.ok(findSecrets(`token=${token}`).includes("JWT"));
    assert.deepEqual(findSecrets('{"msg":"identity files written","serialNumber":"4A3BF07C560F0380D2B19B51C5A42133"}'), []);
    await fx.kubelet.unpublish(volume);
  });

  test("debug-level logs of publish, rotation, JWT refresh, faults and unpublish carry no key, certificate or token", async () => {
    const volume = await fx.kubelet.publish(pod, "logs", { "csi.spire.io/jwt-audiences": "vault", "csi.spire.io/envoy-sds": "true" });
    await fx.agent.rotate();
    fx.agent.pushRaw({ x509Svids: [{ x509Svid: { certChain: [new Uint8Array([1, 2, 3])], id: { trustDomain: "example.org", path: "/hush" } }, x509SvidKey: new Uint8Array([4, 5]) }] });
    fx.agent.dropStreams();
    await fx.agent.waitForStreams(1);
    await fx.kubelet.unpublish(volume);
    assert.ok(fx.driver.rawOutput.length > 20, "there were logs to check");
    assert.deepEqual(fx.driver.secretLeaks, []);
    const log = await readFile(fx.driver.options.logFile, "utf8");
    assert.deepEqual(log.split("\n").flatMap(findSecrets), []);
  });

  test("metadata dir 0700, records 0600, plugin socket 0600", async () => {
    const volume = await fx.kubelet.publish(pod, "modes");
    assert.equal((await stat(fx.metadataDir)).mode & 0o777, 0o700);
    assert.equal((await stat(join(fx.metadataDir, `${volume.volumeId}.json`))).mode & 0o777, 0o600);
    assert.equal((await stat(fx.driver.options.pluginSocket)).mode & 0o777, 0o600);
    await fx.kubelet.unpublish(volume);
  });
});
