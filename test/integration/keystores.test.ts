import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { pemBlocks, visibleFiles } from "../support/identity-files.js";
import { JavaClient, opensslPkcs12Info, opensslVerify } from "../support/real-clients.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const serverPod = { uid: "7a5a0000-0000-4000-8000-000000000001", name: "orders-0", namespace: "shop", serviceAccount: "orders" };
const clientPod = { uid: "7a5a0000-0000-4000-8000-000000000002", name: "billing-0", namespace: "shop", serviceAccount: "billing" };
const ordersId = "spiffe://example.org/ns/shop/sa/orders";
const billingId = "spiffe://example.org/ns/shop/sa/billing";
const leafSerial = async (dir: string) => new X509Certificate(pemBlocks(await readFile(join(dir, "tls.crt"), "utf8"))[0]!.der).serialNumber.replace(/^0+/, "");

describe("PKCS#12 keystores, accepted by Java (keytool, a TLS 1.3 mutual handshake) and OpenSSL 3", () => {
  let fx: DriverFixture;
  let java: JavaClient;
  before(async () => {
    [fx, java] = await Promise.all([
      startDriverFixture({ withIntermediate: true, driver: { volumeBacking: "tmpfs", extraArgs: ["--trust-domain", "example.org"] } }),
      JavaClient.compile(),
    ]);
    await fx.agent.federateWith("partner.example");
    for (const [id, spiffeId, sa] of [["orders", ordersId, "orders"], ["billing", billingId, "billing"]] as const) {
      await fx.agent.addEntry({ id, spiffeId, selectors: [{ type: "k8s", value: "ns:shop" }, { type: "k8s", value: `sa:${sa}` }], federatesWith: ["spiffe://partner.example"] });
    }
  });
  after(async () => {
    await fx?.close();
    await java?.dispose();
  });

  test("keystore.p12 (alias spiffe, key + chain) and truststore.p12 (own and federated roots as trusted entries); keytool and openssl read both", async () => {
    const volume = await fx.kubelet.publish(serverPod, "ks", { "csi.spire.io/keystore": "pkcs12" });
    assert.deepEqual(await visibleFiles(volume.targetPath), ["ca.crt", "keystore.p12", "partner.example.trust-bundle.pem", "tls.crt", "tls.key", "truststore.p12"]);
    assert.deepEqual(await JavaClient.keytoolList(join(volume.targetPath, "keystore.p12"), "changeit"), [{ alias: "spiffe", type: "PrivateKeyEntry" }]);
    assert.deepEqual(
      (await JavaClient.keytoolList(join(volume.targetPath, "truststore.p12"), "changeit")).sort((a, b) => a.alias.localeCompare(b.alias)),
      [{ alias: "example.org-0", type: "trustedCertEntry" }, { alias: "partner.example-0", type: "trustedCertEntry" }],
    );
    const info = await opensslPkcs12Info(join(volume.targetPath, "keystore.p12"), "changeit");
    assert.match(info, /MAC: sha256, Iteration 2048/);
    assert.match(info, /Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256/);
    assert.match(await opensslPkcs12Info(join(volume.targetPath, "truststore.p12"), "changeit"), /Certificate bag/);
    await assert.rejects(opensslPkcs12Info(join(volume.targetPath, "keystore.p12"), "wrong"), /mac verify failure|invalid password/i);
    assert.equal((await stat(join(volume.targetPath, "keystore.p12"))).mode & 0o777, 0o644, "same mode as tls.key");
    await fx.kubelet.unpublish(volume);
  });

  test("Java: TLS 1.3 mutual handshake between two volumes' keystores, and again with the rotated certificates", async () => {
    const server = await fx.kubelet.publish(serverPod, "tls", { "csi.spire.io/keystore": "pkcs12", "csi.spire.io/keystore-password": "orders pass" });
    const client = await fx.kubelet.publish(clientPod, "tls", { "csi.spire.io/keystore": "pkcs12" });
    const peers = [{ dir: server.targetPath, password: "orders pass" }, { dir: client.targetPath, password: "changeit" }] as const;
    const first = await java.mutualTls(...peers);
    assert.deepEqual(
      { protocol: first.protocol, reply: first.reply, serverGot: first.serverGot, serverSawClient: first.serverSawClient, clientSawServer: first.clientSawServer },
      { protocol: "TLSv1.3", reply: "pong", serverGot: "ping", serverSawClient: billingId, clientSawServer: ordersId },
    );
    assert.equal(first.serverSerial, (await leafSerial(server.targetPath)).toUpperCase(), "keystore.p12 holds the tls.crt of the same snapshot");

    const mark = fx.driver.logs.length;
    await fx.agent.rotate();
    for (const volume of [server, client]) {
      await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
    }
    const rotated = await java.mutualTls(...peers);
    assert.equal(rotated.serverSawClient, billingId);
    assert.notEqual(rotated.serverSerial, first.serverSerial, "the handshake used the rotated certificate");
    assert.equal(rotated.serverSerial, (await leafSerial(server.targetPath)).toUpperCase());
    for (const volume of [server, client]) await fx.kubelet.unpublish(volume);
  });

  test("OpenSSL 3 verifies each layout's chain against its own bundle file", async () => {
    const layouts: [string, Record<string, string>, (dir: string) => Promise<{ chain: string; bundle: string }>][] = [
      ["kubernetes-tls", {}, async (dir) => ({ chain: await readFile(join(dir, "tls.crt"), "utf8"), bundle: join(dir, "ca.crt") })],
      ["spiffe-helper", { "csi.spire.io/layout": "spiffe-helper" }, async (dir) => ({ chain: await readFile(join(dir, "svid.pem"), "utf8"), bundle: join(dir, "svid_bundle.pem") })],
      [
        "spiffe-fs",
        { "csi.spire.io/layout": "spiffe-fs" },
        async (dir) => {
          const credential = await readFile(join(dir, "credential-bundle.pem"), "utf8");
          return { chain: credential.slice(credential.indexOf("-----BEGIN CERTIFICATE-----")), bundle: join(dir, "example.org.trust-bundle.pem") };
        },
      ],
    ];
    for (const [name, attributes, files] of layouts) {
      const volume = await fx.kubelet.publish(serverPod, `v-${name}`, attributes);
      const { chain, bundle } = await files(volume.targetPath);
      assert.match(await opensslVerify(chain, bundle), /: OK/, name);
      await assert.rejects(opensslVerify(chain, join(volume.targetPath, "partner.example.trust-bundle.pem")), /unable to get local issuer certificate/, `${name}: the partner CA does not vouch for it`);
      await fx.kubelet.unpublish(volume);
    }
  });

  test("bundle-only with a keystore writes truststore.p12 only; keystore misuse is INVALID_ARGUMENT", async () => {
    const volume = await fx.kubelet.publish(clientPod, "trust", { "csi.spire.io/bundle-only": "true", "csi.spire.io/keystore": "pkcs12", "csi.spire.io/federated-bundles": "none" });
    assert.deepEqual(await visibleFiles(volume.targetPath), ["ca.crt", "truststore.p12"]);
    assert.deepEqual(await JavaClient.keytoolList(join(volume.targetPath, "truststore.p12"), "changeit"), [{ alias: "example.org-0", type: "trustedCertEntry" }]);
    await fx.kubelet.unpublish(volume);

    const cases: [Record<string, string>, RegExp][] = [
      [{ "csi.spire.io/keystore": "jks" }, /volume_context\[csi\.spire\.io\/keystore\]: must be pkcs12/],
      [{ "csi.spire.io/keystore-password": "secret" }, /volume_context\[csi\.spire\.io\/keystore-password\]: is only used with csi\.spire\.io\/keystore: pkcs12/],
      [{ "csi.spire.io/keystore": "pkcs12", "csi.spire.io/keystore-password": "pässword" }, /keystore-password\]: must be printable ASCII/],
      [{ "csi.spire.io/keystore": "pkcs12", "csi.spire.io/cert-file": "keystore.p12" }, /file names must differ/],
    ];
    for (const [attributes, message] of cases) {
      const outcome = await fx.kubelet.tryPublish(serverPod, "bad", attributes, { maxAttempts: 1 });
      assert.equal(outcome.error?.code, Code.InvalidArgument, JSON.stringify(attributes));
      assert.match(outcome.error?.rawMessage ?? "", message);
    }
  });
});
