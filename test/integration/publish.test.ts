import assert from "node:assert/strict";
import { readdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { readVolumeIdentity } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const web = { uid: "0b6f2c1e-8a4d-4c3b-9e1f-000000000001", name: "web-0", namespace: "demo", serviceAccount: "web" };
const api = { uid: "0b6f2c1e-8a4d-4c3b-9e1f-000000000002", name: "api-0", namespace: "demo", serviceAccount: "api" };

describe("publish, rotate, unpublish through the CSI socket", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture();
    await fx.agent.addEntry({ id: "web", spiffeId: "spiffe://example.org/ns/demo/sa/web", selectors: [{ type: "k8s", value: "ns:demo" }, { type: "k8s", value: "sa:web" }] });
    await fx.agent.addEntry({ id: "api", spiffeId: "spiffe://example.org/ns/demo/sa/api", selectors: [{ type: "k8s", value: "ns:demo" }, { type: "k8s", value: "sa:api" }] });
  });
  after(() => fx.close());

  test("each pod's volume holds its own SPIFFE ID; key matches cert; chain verifies against ca.crt", async () => {
    const webVolume = await fx.kubelet.publish(web, "spiffe");
    const apiVolume = await fx.kubelet.publish(api, "spiffe");
    const webIdentity = await readVolumeIdentity(webVolume.targetPath);
    const apiIdentity = await readVolumeIdentity(apiVolume.targetPath);
    assert.equal(webIdentity.spiffeId, "spiffe://example.org/ns/demo/sa/web");
    assert.equal(apiIdentity.spiffeId, "spiffe://example.org/ns/demo/sa/api");
    assert.deepEqual((await readdir(webVolume.targetPath)).filter((name) => !name.startsWith("..")).sort(), ["ca.crt", "tls.crt", "tls.key"]);
    assert.deepEqual(fx.agent.lastSelectors?.map((s) => `${s.type}:${s.value}`).sort(), [
      "k8s:node-name:test-node",
      `k8s:ns:demo`,
      `k8s:pod-name:${api.name}`,
      `k8s:pod-uid:${api.uid}`,
      "k8s:sa:api",
    ]);
    await fx.kubelet.unpublish(apiVolume);
    await fx.kubelet.unpublish(webVolume);
  });

  test("the record is written while published and removed on unpublish", async () => {
    const volume = await fx.kubelet.publish(web, "rec");
    const recordPath = join(fx.metadataDir, `${volume.volumeId}.json`);
    const record = JSON.parse(await readFile(recordPath, "utf8")) as Record<string, unknown>;
    assert.equal(record.targetPath, volume.targetPath);
    assert.equal(record.podUid, web.uid);
    assert.equal((await stat(recordPath)).mode & 0o777, 0o600);
    assert.equal((await stat(fx.metadataDir)).mode & 0o777, 0o700);
    assert.ok(!(await readFile(recordPath, "utf8")).includes("PRIVATE KEY"), "no key material in the record");
    await fx.kubelet.unpublish(volume);
    await assert.rejects(stat(recordPath), { code: "ENOENT" });
  });

  test("a rotation pushed by the agent replaces all files together", async () => {
    const volume = await fx.kubelet.publish(web, "rot");
    const before = await readVolumeIdentity(volume.targetPath);
    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    await fx.driver.waitForLog((line) => line.msg === "identity files rotated" && line.volumeId === volume.volumeId, 10_000, mark);
    const afterRotation = await readVolumeIdentity(volume.targetPath);
    assert.notEqual(afterRotation.serialNumber, before.serialNumber);
    assert.equal(afterRotation.spiffeId, before.spiffeId);
    await fx.kubelet.unpublish(volume);
  });

  test("one shared bundle stream: a trust bundle change reaches every volume's ca.crt", async () => {
    const volumes = [await fx.kubelet.publish(web, "b1"), await fx.kubelet.publish(api, "b2")];
    assert.equal(fx.agent.openBundleStreams, 1, "one SubscribeToX509Bundles stream however many volumes");
    await fx.agent.addRoot();
    for (const volume of volumes) {
      const deadline = Date.now() + 10_000;
      let roots = 0;
      while (roots !== 2 && Date.now() < deadline) {
        roots = ((await readFile(join(volume.targetPath, "ca.crt"), "utf8")).match(/BEGIN CERTIFICATE/g) ?? []).length;
        if (roots !== 2) await new Promise((resolve) => setTimeout(resolve, 25));
      }
      assert.equal(roots, 2, "ca.crt holds the old and the new root");
      await readVolumeIdentity(volume.targetPath);
    }
    for (const volume of volumes) await fx.kubelet.unpublish(volume);
  });

  test("unpublish stops the stream and removes the target dir it created (CSI spec), leaving kubelet's vol_data.json", async () => {
    const streamsBefore = fx.agent.openX509Streams;
    const volume = await fx.kubelet.publish(api, "gone");
    await fx.agent.waitForStreams(streamsBefore + 1);
    // The driver's own answer, before the simulator's teardown (kubelet's rmdir) could hide it.
    await fx.kubelet.node.nodeUnpublishVolume({ volumeId: volume.volumeId, targetPath: volume.targetPath });
    await assert.rejects(stat(volume.targetPath), { code: "ENOENT" }, "the driver removed the target");
    assert.deepEqual(await readdir(dirname(volume.targetPath)), ["vol_data.json"], "kubelet's file next to the target is kubelet's to remove");
    await fx.kubelet.unpublish(volume);
    await fx.agent.waitForStreams(streamsBefore);
  });

  test("unpublish of an unknown volume or a missing target is OK", async () => {
    await fx.kubelet.node.nodeUnpublishVolume({
      volumeId: "csi-0000000000000000000000000000000000000000000000000000000000000000",
      targetPath: join(fx.kubeletRoot, "pods", web.uid, "volumes", "kubernetes.io~csi", "nope", "mount"),
    });
  });

  test("a repeated identical publish is OK with no second stream; a different one is ALREADY_EXISTS", async () => {
    const volume = await fx.kubelet.publish(web, "idem");
    const calls = fx.agent.subscribeCalls;
    const again = await fx.kubelet.publish(web, "idem");
    assert.equal(again.volumeId, volume.volumeId);
    assert.equal(fx.agent.subscribeCalls, calls, "no second SubscribeToX509SVIDs");
    const conflict = await fx.kubelet.tryPublish(web, "idem", { "csi.spire.io/cert-file": "other.crt" });
    assert.equal(conflict.error?.code, Code.AlreadyExists);
    assert.match(conflict.error?.rawMessage ?? "", /already published with a different volume_context\[csi\.spire\.io\/cert-file\]/);
    assert.equal((await readVolumeIdentity(volume.targetPath)).spiffeId, "spiffe://example.org/ns/demo/sa/web", "files untouched");
    await fx.kubelet.unpublish(volume);
  });

  test("custom file names from volume attributes", async () => {
    const volume = await fx.kubelet.publish(web, "names", {
      "csi.spire.io/cert-file": "svid.pem",
      "csi.spire.io/key-file": "svid_key.pem",
      "csi.spire.io/bundle-file": "bundle.pem",
    });
    const identity = await readVolumeIdentity(volume.targetPath, { cert: "svid.pem", key: "svid_key.pem", bundle: "bundle.pem" });
    assert.equal(identity.spiffeId, "spiffe://example.org/ns/demo/sa/web");
    await fx.kubelet.unpublish(volume);
  });

  test("identity and node info for the registrar and kubelet", async () => {
    const info = await fx.kubelet.identity.getPluginInfo({});
    assert.equal(info.name, "csi.spire.io");
    const pkg = JSON.parse(await readFile(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
    assert.equal(info.vendorVersion, pkg.version);
    assert.deepEqual((await fx.kubelet.identity.getPluginCapabilities({})).capabilities, []);
    assert.equal((await fx.kubelet.identity.probe({})).ready, true);
    const nodeInfo = await fx.kubelet.node.nodeGetInfo({});
    assert.equal(nodeInfo.nodeId, "test-node");
    assert.equal(nodeInfo.maxVolumesPerNode, 0n);
    const rpcs = (await fx.kubelet.node.nodeGetCapabilities({})).capabilities.map((c) => (c.type.case === "rpc" ? c.type.value.type : -1));
    assert.deepEqual(rpcs, [6], "VOLUME_MOUNT_GROUP only");
  });

  test("stage, stats and expand answer UNIMPLEMENTED", async () => {
    for (const call of [
      () => fx.kubelet.node.nodeStageVolume({ volumeId: "x" }),
      () => fx.kubelet.node.nodeUnstageVolume({ volumeId: "x" }),
      () => fx.kubelet.node.nodeGetVolumeStats({ volumeId: "x" }),
      () => fx.kubelet.node.nodeExpandVolume({ volumeId: "x" }),
    ]) {
      await assert.rejects(call(), (error: unknown) => ConnectError.from(error).code === Code.Unimplemented);
    }
  });
});
