import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { pemBlocks, readVolumeIdentity, visibleFiles } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "b0d1e5a0-0000-4000-8000-000000000001", name: "api-0", namespace: "shop", serviceAccount: "api" };
/** A pod no registration entry matches: only a bundle-only volume can serve it. */
const stranger = { uid: "b0d1e5a0-0000-4000-8000-000000000002", name: "curl-0", namespace: "tools", serviceAccount: "curl" };
const modeOf = async (path: string) => (await stat(path)).mode & 0o777;

describe("bundle-only volumes and csi.spire.io/key-mode", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ driver: { volumeBacking: "tmpfs", extraArgs: ["--trust-domain", "example.org"] } });
    await fx.agent.federateWith("partner.example");
    await fx.agent.addEntry({ id: "api", spiffeId: "spiffe://example.org/ns/shop/sa/api", selectors: [{ type: "k8s", value: "ns:shop" }, { type: "k8s", value: "sa:api" }] });
  });
  after(() => fx.close());

  test("bundle-only: a pod without an entry gets the own bundle and each federated one, with no SVID stream; it follows bundle rotation", async () => {
    const streams = fx.agent.subscribeCalls;
    const volume = await fx.kubelet.publish(stranger, "trust", { "csi.spire.io/bundle-only": "true" });
    assert.equal(fx.agent.subscribeCalls, streams, "no SubscribeToX509SVIDs call");
    assert.deepEqual(await visibleFiles(volume.targetPath), ["ca.crt", "partner.example.trust-bundle.pem"]);
    const own = pemBlocks(await readFile(join(volume.targetPath, "ca.crt"), "utf8"));
    assert.equal(own.length, 1);
    assert.match(new X509Certificate(own[0]!.der).subject, /example\.org/);
    assert.doesNotMatch(new X509Certificate(own[0]!.der).subject, /partner/);

    const mark = fx.driver.logs.length;
    await fx.agent.addRoot();
    await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files updated (trust bundles or JWT-SVIDs)", 10_000, mark);
    assert.equal(pemBlocks(await readFile(join(volume.targetPath, "ca.crt"), "utf8")).length, 2, "old and new root after a bundle rotation");
    await fx.kubelet.unpublish(volume);
  });

  test("bundle-only with the spiffe-fs layout: one <td>.trust-bundle.pem per trust domain; federated-bundles none leaves only the own one", async () => {
    const fs = await fx.kubelet.publish(stranger, "fs", { "csi.spire.io/bundle-only": "true", "csi.spire.io/layout": "spiffe-fs" });
    assert.deepEqual(await visibleFiles(fs.targetPath), ["example.org.trust-bundle.pem", "partner.example.trust-bundle.pem"]);
    const ownOnly = await fx.kubelet.publish(stranger, "own", { "csi.spire.io/bundle-only": "true", "csi.spire.io/layout": "spiffe-helper", "csi.spire.io/federated-bundles": "none" });
    assert.deepEqual(await visibleFiles(ownOnly.targetPath), ["svid_bundle.pem"]);
    for (const volume of [fs, ownOnly]) await fx.kubelet.unpublish(volume);
  });

  test("key-mode sets the key's mode only; without fsGroup up to 0644, with fsGroup up to 0640", async () => {
    const plain = await fx.kubelet.publish(pod, "km1", { "csi.spire.io/key-mode": "0600" });
    assert.equal(await modeOf(join(plain.targetPath, "tls.key")), 0o600);
    assert.equal(await modeOf(join(plain.targetPath, "tls.crt")), 0o644, "certificates keep their mode");
    await readVolumeIdentity(plain.targetPath);
    const grouped = await fx.kubelet.publish({ ...pod, fsGroup: 2000 }, "km2", { "csi.spire.io/key-mode": "440" });
    const key = await stat(join(grouped.targetPath, "tls.key"));
    assert.equal(key.mode & 0o777, 0o440);
    assert.equal(key.gid, 2000);
    for (const volume of [plain, grouped]) await fx.kubelet.unpublish(volume);
  });

  test("key-mode and bundle-only misuse is INVALID_ARGUMENT naming the key and the rule", async () => {
    const cases: [typeof pod & { fsGroup?: number }, Record<string, string>, RegExp][] = [
      [pod, { "csi.spire.io/key-mode": "0666" }, /csi\.spire\.io\/key-mode\]: 0666 grants more than 0644, the most allowed without an fsGroup/],
      // kubelet's volume_mount_group counts as an fsGroup just like the attribute.
      [{ ...pod, fsGroup: 2000 }, { "csi.spire.io/key-mode": "0644" }, /csi\.spire\.io\/key-mode\]: 0644 grants more than 0640, the most allowed with an fsGroup/],
      [pod, { "csi.spire.io/fs-group": "2000", "csi.spire.io/key-mode": "0604" }, /key-mode\]: 0604 grants more than 0640/],
      [pod, { "csi.spire.io/key-mode": "0200" }, /key-mode\]: 0200 lets nobody read the key/],
      [pod, { "csi.spire.io/key-mode": "rw-------" }, /key-mode\]: must be an octal file mode/],
      [pod, { "csi.spire.io/key-mode": "01600" }, /key-mode\]: must be an octal file mode/],
      [pod, { "csi.spire.io/bundle-only": "true", "csi.spire.io/key-mode": "0600" }, /key-mode\]: is not used by a bundle-only volume/],
      [pod, { "csi.spire.io/bundle-only": "true", "csi.spire.io/envoy-sds": "true" }, /envoy-sds\]: is not used by a bundle-only volume/],
      [pod, { "csi.spire.io/bundle-only": "yes" }, /bundle-only\]: must be "true" or "false"/],
    ];
    for (const [who, attributes, message] of cases) {
      const outcome = await fx.kubelet.tryPublish(who, "bad", attributes, { maxAttempts: 1 });
      assert.equal(outcome.error?.code, Code.InvalidArgument, JSON.stringify(attributes));
      assert.match(outcome.error?.rawMessage ?? "", message);
    }
  });

  test("a record whose key-mode breaks the publish rules is quarantined, not re-adopted", async () => {
    const volume = await fx.kubelet.publish(pod, "km3", { "csi.spire.io/fs-group": "3000", "csi.spire.io/key-mode": "0640" });
    await fx.driver.stop("SIGTERM");
    const recordPath = join(fx.metadataDir, `${volume.volumeId}.json`);
    const record = JSON.parse(await readFile(recordPath, "utf8")) as { attributes: Record<string, string> };
    record.attributes["csi.spire.io/key-mode"] = "0644";
    await writeFile(recordPath, JSON.stringify(record), { mode: 0o600 });
    const mark = fx.driver.logs.length;
    await fx.driver.start();
    const refused = await fx.driver.waitForLog((line) => line.file === `${volume.volumeId}.json` && line.msg === "quarantined an unusable volume record", 10_000, mark);
    assert.match(String(refused.reason), /key-mode\]: 0644 grants more than 0640/);
    const adoption = await fx.driver.waitForLog((line) => line.msg === "re-adopted recorded volumes", 10_000, mark);
    assert.equal(adoption.adopted, 0);
    assert.equal(await modeOf(join(volume.targetPath, "tls.key")), 0o640, "the files on disk were not rewritten with the widened mode");
    await fx.kubelet.unpublish(volume);
  });
});

describe("bundle-only without the driver's --trust-domain", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture();
  });
  after(() => fx.close());

  test("is FAILED_PRECONDITION naming the flag", async () => {
    const outcome = await fx.kubelet.tryPublish(stranger, "trust", { "csi.spire.io/bundle-only": "true" }, { maxAttempts: 1 });
    assert.equal(outcome.error?.code, Code.FailedPrecondition);
    assert.match(outcome.error?.rawMessage ?? "", /csi\.spire\.io\/bundle-only\]: the driver does not know its trust domain; start it with --trust-domain/);
  });
});
