import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { certificatesToPem } from "../../src/files/pem.js";
import { goSpiffe } from "../support/real-clients.js";
import type { TestCa } from "../support/test-ca.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const serverPod = { uid: "90509000-0000-4000-8000-000000000001", name: "orders-0", namespace: "shop", serviceAccount: "orders" };
const clientPod = { uid: "90509000-0000-4000-8000-000000000002", name: "billing-0", namespace: "shop", serviceAccount: "billing" };
const ordersId = "spiffe://example.org/ns/shop/sa/orders";
const billingId = "spiffe://example.org/ns/shop/sa/billing";

describe("go-spiffe v2 reads the volumes' files", () => {
  let fx: DriverFixture;
  let partnerCa: TestCa;
  let scratch: string;
  before(async () => {
    fx = await startDriverFixture({ withIntermediate: true, driver: { volumeBacking: "tmpfs" } });
    partnerCa = await fx.agent.federateWith("partner.example");
    for (const [id, spiffeId, sa] of [["orders", ordersId, "orders"], ["billing", billingId, "billing"]] as const) {
      await fx.agent.addEntry({ id, spiffeId, selectors: [{ type: "k8s", value: "ns:shop" }, { type: "k8s", value: `sa:${sa}` }], federatesWith: ["spiffe://partner.example"] });
    }
    scratch = await mkdtemp(join(tmpdir(), "go-spiffe-"));
  });
  after(async () => {
    await fx?.close();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  test("x509svid.Load on the kubernetes-tls and spiffe-helper files, x509bundle.Load on each <td>.trust-bundle.pem", async () => {
    const k8s = await fx.kubelet.publish(serverPod, "k8s");
    const helper = await fx.kubelet.publish(serverPod, "helper", { "csi.spire.io/layout": "spiffe-helper" });
    const fs = await fx.kubelet.publish(serverPod, "fs", { "csi.spire.io/layout": "spiffe-fs" });
    const fromK8s = await goSpiffe.svid(join(k8s.targetPath, "tls.crt"), join(k8s.targetPath, "tls.key"));
    assert.deepEqual({ id: fromK8s.id, chainLength: fromK8s.chainLength }, { id: ordersId, chainLength: 2 });
    assert.equal((await goSpiffe.svid(join(helper.targetPath, "svid.pem"), join(helper.targetPath, "svid_key.pem"))).id, ordersId);
    // The credential bundle holds key and chain in one file; go-spiffe loads it as both.
    const credential = join(fs.targetPath, "credential-bundle.pem");
    assert.equal((await goSpiffe.svid(credential, credential)).id, ordersId);
    for (const trustDomain of ["example.org", "partner.example"]) {
      assert.deepEqual(await goSpiffe.bundle(trustDomain, join(fs.targetPath, `${trustDomain}.trust-bundle.pem`)), { trustDomain, authorities: 1 });
    }
    for (const volume of [k8s, helper, fs]) await fx.kubelet.unpublish(volume);
  });

  test("mTLS with tlsconfig.MTLSServerConfig/MTLSClientConfig and AuthorizeID between two pods' files; a wrong authorized ID is refused", async () => {
    const server = await fx.kubelet.publish(serverPod, "mtls", { "csi.spire.io/layout": "spiffe-fs" });
    const client = await fx.kubelet.publish(clientPod, "mtls", { "csi.spire.io/layout": "spiffe-fs" });
    const side = (dir: string, authorize: string) => ({
      cert: join(dir, "credential-bundle.pem"),
      key: join(dir, "credential-bundle.pem"),
      authorize,
      bundles: { "example.org": join(dir, "example.org.trust-bundle.pem"), "partner.example": join(dir, "partner.example.trust-bundle.pem") },
    });
    assert.deepEqual(await goSpiffe.mtls(side(server.targetPath, billingId), side(client.targetPath, ordersId)), {
      serverSawClient: billingId,
      clientSawServer: ordersId,
      tlsVersion: "TLS 1.3",
    });
    await assert.rejects(goSpiffe.mtls(side(server.targetPath, billingId), side(client.targetPath, "spiffe://example.org/ns/shop/sa/other")), /unexpected ID/);
    for (const volume of [server, client]) await fx.kubelet.unpublish(volume);
  });

  test("per-trust-domain trust: a certificate from the federated CA claiming an ID of our own domain is refused with the per-domain files, accepted with a merged bundle", async () => {
    const forged = await partnerCa.issueX509Svid({ spiffeId: ordersId });
    const forgedFile = join(scratch, "forged.pem");
    await writeFile(forgedFile, certificatesToPem(forged.certChainDer));
    const volume = await fx.kubelet.publish(clientPod, "trust", { "csi.spire.io/layout": "spiffe-fs" });
    const perDomain = { "example.org": join(volume.targetPath, "example.org.trust-bundle.pem"), "partner.example": join(volume.targetPath, "partner.example.trust-bundle.pem") };
    await assert.rejects(goSpiffe.verify(forgedFile, perDomain), /x509svid\.Verify: .*(unknown authority|certificate signed by unknown)/);
    const genuine = fx.agent.currentSvid("orders")!;
    const genuineFile = join(scratch, "genuine.pem");
    await writeFile(genuineFile, certificatesToPem(genuine.certChainDer));
    assert.deepEqual(await goSpiffe.verify(genuineFile, perDomain), { id: ordersId });

    // What the per-domain files prevent: with federated-bundles merge, the partner CA sits in the
    // own domain's bundle and vouches for the forged ID.
    const merged = await fx.kubelet.publish(clientPod, "merged", { "csi.spire.io/federated-bundles": "merge" });
    assert.deepEqual(await goSpiffe.verify(forgedFile, { "example.org": join(merged.targetPath, "ca.crt") }), { id: ordersId });
    for (const published of [volume, merged]) await fx.kubelet.unpublish(published);
  });
});
