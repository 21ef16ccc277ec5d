import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { checkEnvoySds } from "../support/envoy-sds-checker.js";
import { checkIdentity, pemBlocks, readVolumeIdentity, visibleFiles } from "../support/identity-files.js";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const pod = { uid: "c0ffee00-0000-4000-8000-000000000001", name: "edge-0", namespace: "mesh", serviceAccount: "edge" };
const edgeId = "spiffe://example.org/ns/mesh/sa/edge";

describe("file layouts and formats", () => {
  let fx: DriverFixture;
  before(async () => {
    fx = await startDriverFixture({ withIntermediate: true, jwtTtlSeconds: 4, driver: { volumeBacking: "tmpfs" } });
    await fx.agent.federateWith("partner.example");
    await fx.agent.addEntry({
      id: "edge",
      spiffeId: edgeId,
      selectors: [{ type: "k8s", value: "ns:mesh" }, { type: "k8s", value: "sa:edge" }],
      federatesWith: ["spiffe://partner.example"],
    });
  });
  after(() => fx.close());

  test("kubernetes-tls (default): chain with intermediate, own bundle in ca.crt, federated bundle as its own file", async () => {
    const volume = await fx.kubelet.publish(pod, "k8s");
    assert.deepEqual(await visibleFiles(volume.targetPath), ["ca.crt", "partner.example.trust-bundle.pem", "tls.crt", "tls.key"]);
    const identity = await readVolumeIdentity(volume.targetPath);
    assert.equal(identity.chainLength, 2, "leaf + intermediate");
    assert.equal(pemBlocks(await readFile(join(volume.targetPath, "ca.crt"), "utf8")).length, 1, "own root only");
    const partner = pemBlocks(await readFile(join(volume.targetPath, "partner.example.trust-bundle.pem"), "utf8"));
    assert.match(new X509Certificate(partner[0]!.der).subject, /partner\.example/);
    await fx.kubelet.unpublish(volume);
  });

  test("spiffe-helper layout with federated bundles merged and intermediates in the bundle", async () => {
    const volume = await fx.kubelet.publish(pod, "helper", {
      "csi.spire.io/layout": "spiffe-helper",
      "csi.spire.io/federated-bundles": "merge",
      "csi.spire.io/bundle-intermediates": "true",
    });
    assert.deepEqual(await visibleFiles(volume.targetPath), ["svid.pem", "svid_bundle.pem", "svid_key.pem"]);
    const bundle = pemBlocks(await readFile(join(volume.targetPath, "svid_bundle.pem"), "utf8")).map((block) => new X509Certificate(block.der).subject);
    assert.equal(bundle.length, 3, "own root, intermediate, partner root");
    assert.ok(bundle.some((subject) => subject.includes("intermediate")));
    assert.ok(bundle.some((subject) => subject.includes("partner.example")));
    await readVolumeIdentity(volume.targetPath, { cert: "svid.pem", key: "svid_key.pem", bundle: "svid_bundle.pem" });
    await fx.kubelet.unpublish(volume);
  });

  test("spiffe-fs (SPIFFE Filesystem Delivery): key block first, then the chain; one trust bundle file per trust domain", async () => {
    const volume = await fx.kubelet.publish(pod, "fs", { "csi.spire.io/layout": "spiffe-fs" });
    assert.deepEqual(await visibleFiles(volume.targetPath), ["credential-bundle.pem", "example.org.trust-bundle.pem", "partner.example.trust-bundle.pem"]);
    const credential = await readFile(join(volume.targetPath, "credential-bundle.pem"), "utf8");
    const blocks = pemBlocks(credential);
    assert.deepEqual(blocks.map((block) => block.label), ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"]);
    assert.ok(!/Proc-Type|DEK-Info|:/.test(credential.replace(/-----[A-Z ]+-----/g, "")), "no headers in the blocks");
    const keyPem = credential.slice(0, credential.indexOf("-----BEGIN CERTIFICATE-----"));
    const chainPem = credential.slice(keyPem.length);
    const own = await readFile(join(volume.targetPath, "example.org.trust-bundle.pem"), "utf8");
    assert.equal(checkIdentity(chainPem, keyPem, own).spiffeId, edgeId);
    const partner = await readFile(join(volume.targetPath, "partner.example.trust-bundle.pem"), "utf8");
    assert.equal(pemBlocks(own).length, 1, "never merged");
    assert.throws(() => checkIdentity(chainPem, keyPem, partner), /does not verify/, "the partner bundle is a different CA");
    await fx.kubelet.unpublish(volume);
  });

  test("fsGroup from the attribute: files root:<gid> 0640, dir 0750, nothing world-readable", async () => {
    const volume = await fx.kubelet.publish(pod, "grp", { "csi.spire.io/fs-group": "3456" });
    for (const name of ["tls.crt", "tls.key", "ca.crt"]) {
      const info = await stat(join(volume.targetPath, name));
      assert.equal(info.gid, 3456, `${name} group`);
      assert.equal(info.mode & 0o777, 0o640, `${name} mode`);
    }
    const dir = await stat(volume.targetPath);
    assert.equal(dir.gid, 3456);
    assert.equal(dir.mode & 0o007, 0, "the tmpfs root is not world-accessible");
    await fx.kubelet.unpublish(volume);
  });

  test("fsGroup from kubelet's volume_mount_group (VOLUME_MOUNT_GROUP advertised)", async () => {
    const volume = await fx.kubelet.publish({ ...pod, fsGroup: 2000 }, "mg");
    const key = await stat(join(volume.targetPath, "tls.key"));
    assert.equal(key.gid, 2000);
    assert.equal(key.mode & 0o777, 0o640);
    await fx.kubelet.unpublish(volume);
  });

  test("several matching SVIDs: smallest SPIFFE ID by default, spiffe-id or svid-hint choose, all-svids writes them all with an index", async () => {
    await fx.agent.addEntry({ id: "edge-admin", spiffeId: "spiffe://example.org/admin/edge", selectors: [{ type: "k8s", value: "ns:mesh" }], hint: "admin" });
    try {
      const byDefault = await fx.kubelet.publish(pod, "m1");
      assert.equal((await readVolumeIdentity(byDefault.targetPath)).spiffeId, "spiffe://example.org/admin/edge");
      const byId = await fx.kubelet.publish(pod, "m2", { "csi.spire.io/spiffe-id": edgeId });
      assert.equal((await readVolumeIdentity(byId.targetPath)).spiffeId, edgeId);
      const byHint = await fx.kubelet.publish(pod, "m3", { "csi.spire.io/svid-hint": "admin" });
      assert.equal((await readVolumeIdentity(byHint.targetPath)).spiffeId, "spiffe://example.org/admin/edge");
      const all = await fx.kubelet.publish(pod, "m4", { "csi.spire.io/all-svids": "true" });
      const index = JSON.parse(await readFile(join(all.targetPath, "svids.json"), "utf8")) as { svids: { spiffeId: string; certFile: string; keyFile: string }[] };
      assert.deepEqual(index.svids.map((svid) => svid.spiffeId).sort(), ["spiffe://example.org/admin/edge", edgeId]);
      for (const svid of index.svids) {
        const identity = await readVolumeIdentity(all.targetPath, { cert: svid.certFile, key: svid.keyFile, bundle: "ca.crt" });
        assert.equal(identity.spiffeId, svid.spiffeId);
      }
      const missing = await fx.kubelet.tryPublish(pod, "m5", { "csi.spire.io/spiffe-id": "spiffe://example.org/someone-else" }, { maxAttempts: 1 });
      assert.equal(missing.error?.code, Code.DeadlineExceeded);
      assert.match(missing.error?.rawMessage ?? "", /none matches the volume's csi\.spire\.io\/spiffe-id or svid-hint/);
      for (const volume of [byDefault, byId, byHint, all]) await fx.kubelet.unpublish(volume);
    } finally {
      fx.agent.removeEntry("edge-admin");
    }
  });

  test("JWT-SVIDs: one token file per audience, refreshed before half-life; JWKS per trust domain (own and federated)", async () => {
    const volume = await fx.kubelet.publish(pod, "jwt", { "csi.spire.io/jwt-audiences": "vault, https://api.example.com" });
    assert.deepEqual(await visibleFiles(volume.targetPath), [
      "ca.crt",
      "example.org.jwt-bundle.json",
      "jwt-https___api.example.com.token",
      "jwt-vault.token",
      "partner.example.jwt-bundle.json",
      "partner.example.trust-bundle.pem",
      "tls.crt",
      "tls.key",
    ]);
    const decode = (token: string) => JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { sub: string; aud: string[]; exp: number; iat: number };
    const first = await readFile(join(volume.targetPath, "jwt-vault.token"), "utf8");
    assert.equal(decode(first).sub, edgeId);
    assert.deepEqual(decode(first).aud, ["vault"]);
    assert.deepEqual(decode(await readFile(join(volume.targetPath, "jwt-https___api.example.com.token"), "utf8")).aud, ["https://api.example.com"]);
    assert.equal((await stat(join(volume.targetPath, "jwt-vault.token"))).mode & 0o777, 0o644);
    const jwks = JSON.parse(await readFile(join(volume.targetPath, "example.org.jwt-bundle.json"), "utf8")) as { keys: { kid: string }[] };
    assert.equal(jwks.keys.length, 1);
    // Tokens live 4 s here: a refresh must land before the first one expires.
    const deadline = decode(first).exp * 1000;
    let refreshed = first;
    while (refreshed === first && Date.now() < deadline) {
      await sleep(100);
      refreshed = await readFile(join(volume.targetPath, "jwt-vault.token"), "utf8");
    }
    assert.notEqual(refreshed, first, "refreshed before expiry");
    assert.ok(decode(refreshed).exp > decode(first).exp);
    await fx.kubelet.unpublish(volume);
  });

  test("Envoy SDS: tls_certificate and a SPIFFE-validator validation_context (one bundle per trust domain), valid for Envoy's API before and after a rotation", async () => {
    const volume = await fx.kubelet.publish(pod, "envoy", {
      "csi.spire.io/envoy-sds": "true",
      "csi.spire.io/envoy-cert-secret": "spiffe_svid",
      "csi.spire.io/envoy-ca-secret": "spiffe_validation",
    });
    type TrustDomain = { name: string; trust_bundle: { inline_string: string } };
    type Sds = {
      resources: {
        "@type": string;
        name: string;
        tls_certificate?: { certificate_chain: { inline_string: string }; private_key: { inline_string: string } };
        validation_context?: { custom_validator_config: { name: string; typed_config: { "@type": string; trust_domains: TrustDomain[] } } };
      }[];
    };
    const file = join(volume.targetPath, "envoy-sds.json");
    const read = async () => JSON.parse(await readFile(file, "utf8")) as Sds;
    const sds = await read();
    assert.deepEqual(sds.resources.map((r) => [r["@type"], r.name]), [
      ["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "spiffe_svid"],
      ["type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "spiffe_validation"],
    ]);
    const validator = sds.resources[1]!.validation_context!.custom_validator_config;
    assert.equal(validator.name, "envoy.tls.cert_validator.spiffe");
    assert.equal(validator.typed_config["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig");
    assert.deepEqual(validator.typed_config.trust_domains.map((domain) => domain.name), ["example.org", "partner.example"]);
    const [own, partner] = validator.typed_config.trust_domains.map((domain) => domain.trust_bundle.inline_string);
    const tls = sds.resources[0]!.tls_certificate!;
    const before = checkIdentity(tls.certificate_chain.inline_string, tls.private_key.inline_string, own!);
    assert.equal(before.spiffeId, edgeId);
    assert.throws(() => checkIdentity(tls.certificate_chain.inline_string, tls.private_key.inline_string, partner!), /does not verify/, "bundles are never merged");
    const checked = await checkEnvoySds(file, "spiffe_svid", "spiffe_validation");
    assert.deepEqual({ validator: checked.validator, trustDomains: checked.trustDomains, leafUris: checked.leafUris }, { validator: "spiffe", trustDomains: { "example.org": 1, "partner.example": 1 }, leafUris: [edgeId] });

    const mark = fx.driver.logs.length;
    await fx.agent.rotate("edge");
    await fx.driver.waitForLog((line) => line.volumeId === volume.volumeId && line.msg === "identity files rotated", 10_000, mark);
    const rotated = (await read()).resources[0]!.tls_certificate!;
    const after = checkIdentity(rotated.certificate_chain.inline_string, rotated.private_key.inline_string, own!);
    assert.notEqual(after.serialNumber, before.serialNumber);
    assert.equal(await readFile(join(volume.targetPath, "tls.crt"), "utf8"), rotated.certificate_chain.inline_string, "same snapshot as tls.crt");
    const checkedAfter = await checkEnvoySds(file, "spiffe_svid", "spiffe_validation");
    assert.notEqual(checkedAfter.leafSerial, checked.leafSerial);
    assert.deepEqual(checkedAfter.trustDomains, checked.trustDomains);
    await fx.kubelet.unpublish(volume);
  });

  test("Envoy SDS opt-out: envoy-validator trusted-ca writes one merged trusted_ca, also valid for Envoy's API", async () => {
    const volume = await fx.kubelet.publish(pod, "envoy-ca", { "csi.spire.io/envoy-sds": "true", "csi.spire.io/envoy-validator": "trusted-ca" });
    const sds = JSON.parse(await readFile(join(volume.targetPath, "envoy-sds.json"), "utf8")) as { resources: { validation_context?: Record<string, { inline_string: string }> }[] };
    assert.deepEqual(Object.keys(sds.resources[1]!.validation_context!), ["trusted_ca"]);
    const checked = await checkEnvoySds(join(volume.targetPath, "envoy-sds.json"), "default", "ROOTCA");
    assert.equal(checked.validator, "trusted-ca");
    assert.equal(checked.trustedCas, 2, "own and federated roots merged");
    await fx.kubelet.unpublish(volume);
  });

  test("malformed format attributes are INVALID_ARGUMENT naming the key and the rule", async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ "csi.spire.io/layout": "spiffe-fs", "csi.spire.io/cert-file": "a.pem" }, /volume_context\[csi\.spire\.io\/cert-file\]: is not used by layout spiffe-fs/],
      [{ "csi.spire.io/layout": "spiffe-fs", "csi.spire.io/federated-bundles": "merge" }, /volume_context\[csi\.spire\.io\/federated-bundles\]: layout spiffe-fs keeps one file per trust domain/],
      [{ "csi.spire.io/credential-file": "c.pem" }, /volume_context\[csi\.spire\.io\/credential-file\]: is only used by layout spiffe-fs/],
      [{ "csi.spire.io/federated-bundles": "some" }, /volume_context\[csi\.spire\.io\/federated-bundles\]: must be files, merge or none/],
      [{ "csi.spire.io/bundle-intermediates": "yes" }, /volume_context\[csi\.spire\.io\/bundle-intermediates\]: must be "true" or "false"/],
      [{ "csi.spire.io/jwt-audiences": "a,,b" }, /volume_context\[csi\.spire\.io\/jwt-audiences\]: must not contain an empty audience/],
      [{ "csi.spire.io/jwt-audiences": "a,a" }, /volume_context\[csi\.spire\.io\/jwt-audiences\]: audiences must not repeat/],
      [{ "csi.spire.io/jwt-audiences": "a/b,a:b" }, /volume_context\[csi\.spire\.io\/jwt-audiences\]: two audiences map to the same file name/],
      [{ "csi.spire.io/spiffe-id": "http://example.org/x" }, /volume_context\[csi\.spire\.io\/spiffe-id\]: must be a SPIFFE ID/],
      [{ "csi.spire.io/envoy-sds": "true", "csi.spire.io/envoy-cert-secret": "x", "csi.spire.io/envoy-ca-secret": "x" }, /volume_context\[csi\.spire\.io\/envoy-ca-secret\]: must differ/],
      [{ "csi.spire.io/envoy-sds": "true", "csi.spire.io/envoy-sds-file": "tls.crt" }, /file names must differ/],
      [{ "csi.spire.io/envoy-validator": "strict" }, /volume_context\[csi\.spire\.io\/envoy-validator\]: must be spiffe or trusted-ca/],
      [{ "csi.spire.io/envoy-sds-file": "sds/../x" }, /volume_context\[csi\.spire\.io\/envoy-sds-file\]: must use only the portable characters/],
      [{ "csi.spire.io/credential-file": "a\u0000b", "csi.spire.io/layout": "spiffe-fs" }, /volume_context\[csi\.spire\.io\/credential-file\]: must use only the portable characters/],
    ];
    for (const [attributes, message] of cases) {
      const outcome = await fx.kubelet.tryPublish(pod, "bad", attributes, { maxAttempts: 1 });
      assert.equal(outcome.error?.code, Code.InvalidArgument, JSON.stringify(attributes));
      assert.match(outcome.error?.rawMessage ?? "", message);
    }
  });
});
