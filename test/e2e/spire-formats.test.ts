/**
 * Delivery formats against real SPIRE v1.15.3: SPIFFE Filesystem Delivery with a federated trust
 * domain served by a second SPIRE server, JWT-SVID refresh, the Envoy SDS file after a rotation,
 * decoded with Envoy's own API types, and the files read by their real clients (Java, OpenSSL 3,
 * go-spiffe v2, the latter also across the federated domain).
 */
import assert from "node:assert/strict";
import { createPublicKey, createVerify } from "node:crypto";
import { readFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { promisify } from "node:util";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startDriverNode, type DriverNode } from "../support/driver-node.js";
import { checkEnvoySds } from "../support/envoy-sds-checker.js";
import { checkIdentity, pemBlocks } from "../support/identity-files.js";
import type { KubeletSimulator, PublishedVolume } from "../support/kubelet-sim.js";
import { goSpiffe, JavaClient, opensslPkcs12Info, opensslVerify } from "../support/real-clients.js";
import { SpireFixture } from "../support/spire-fixture.js";

const pod = { uid: "ee11ff22-0000-4000-8000-000000000001", name: "edge-0", namespace: "mesh", serviceAccount: "edge" };
const edgeId = "spiffe://example.org/ns/mesh/sa/edge";
const openssl = (args: string[]) => promisify(execFile)("openssl", args);
const peerPod = { uid: "ee11ff22-0000-4000-8000-000000000002", name: "peer-0", namespace: "mesh", serviceAccount: "peer" };
const peerId = "spiffe://example.org/ns/mesh/sa/peer";

describe("real SPIRE: formats, federation, JWT refresh, Envoy SDS", { timeout: 10 * 60_000 }, () => {
  let spire: SpireFixture;
  let partner: SpireFixture;
  let node: DriverNode;
  let kubelet: KubeletSimulator;
  let fs: PublishedVolume;
  let jwt: PublishedVolume;
  let envoy: PublishedVolume;
  let edgeKeystore: PublishedVolume;
  let peerKeystore: PublishedVolume;
  let helper: PublishedVolume;
  let java: JavaClient;
  let merged: PublishedVolume;
  /** Holds the partner server's upstream CA key, so the test can sign what the partner's CA could. */
  let upstreamDir: string;

  before(async () => {
    upstreamDir = await mkdtemp(join(tmpdir(), "partner-upstream-"));
    await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(upstreamDir, "ca.key"), "-out", join(upstreamDir, "ca.crt"),
      "-days", "2", "-subj", "/O=partner.test upstream CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    [spire, partner] = await Promise.all([
      SpireFixture.start(),
      SpireFixture.start({ trustDomain: "partner.test", agent: false, upstreamAuthority: { certFile: join(upstreamDir, "ca.crt"), keyFile: join(upstreamDir, "ca.key") } }),
    ]);
    await spire.bundleSet("partner.test", await partner.bundleShow());
    await spire.registerDelegate();
    await spire.createEntry({
      spiffeId: edgeId,
      selectors: ["k8s:ns:mesh", "k8s:sa:edge"],
      x509SvidTtl: 30,
      jwtSvidTtl: 20,
      federatesWith: ["spiffe://partner.test"],
    });
    await spire.createEntry({ spiffeId: peerId, selectors: ["k8s:ns:mesh", "k8s:sa:peer"], x509SvidTtl: 30, federatesWith: ["spiffe://partner.test"] });
    java = await JavaClient.compile();
    node = await startDriverNode(spire.adminSocket, { volumeBacking: "tmpfs", publishTimeout: "8s" });
    kubelet = node.kubelet;
    const retry = { maxAttempts: 20, maxDelayMs: 1000, retryFinalErrors: true };
    fs = await kubelet.publish(pod, "fs", { "csi.spire.io/layout": "spiffe-fs" }, retry);
    jwt = await kubelet.publish(pod, "jwt", { "csi.spire.io/jwt-audiences": "e2e" }, retry);
    envoy = await kubelet.publish(pod, "envoy", { "csi.spire.io/envoy-sds": "true" }, retry);
    edgeKeystore = await kubelet.publish(pod, "ks", { "csi.spire.io/keystore": "pkcs12" }, retry);
    peerKeystore = await kubelet.publish(peerPod, "ks", { "csi.spire.io/keystore": "pkcs12" }, retry);
    helper = await kubelet.publish(pod, "helper", { "csi.spire.io/layout": "spiffe-helper" }, retry);
    merged = await kubelet.publish(pod, "merged", { "csi.spire.io/federated-bundles": "merge" }, retry);
  });

  after(async () => {
    try {
      await node?.close();
    } finally {
      await Promise.all([spire?.stop(), partner?.stop(), java?.dispose(), upstreamDir && rm(upstreamDir, { recursive: true, force: true })]);
    }
  });

  test("SPIFFE Filesystem Delivery: credential bundle, own and federated trust bundles in separate files", async () => {
    const partnerBundle = await readFile(join(fs.targetPath, "partner.test.trust-bundle.pem"), "utf8");
    const ownBundle = await readFile(join(fs.targetPath, "example.org.trust-bundle.pem"), "utf8");
    const credential = await readFile(join(fs.targetPath, "credential-bundle.pem"), "utf8");
    assert.equal(pemBlocks(credential)[0]!.label, "PRIVATE KEY");
    const keyEnd = credential.indexOf("-----BEGIN CERTIFICATE-----");
    assert.equal(checkIdentity(credential.slice(keyEnd), credential.slice(0, keyEnd), ownBundle).spiffeId, edgeId);
    // The federated file holds exactly the partner server's CA, as its own bundle reports it.
    const partnerJwks = JSON.parse(await partner.bundleShow()) as { keys: { use: string; x5c?: string[] }[] };
    const partnerCas = partnerJwks.keys.filter((key) => key.use === "x509-svid").map((key) => key.x5c![0]);
    assert.deepEqual(pemBlocks(partnerBundle).map((block) => block.der.toString("base64")).sort(), partnerCas.sort());
    assert.throws(() => checkIdentity(credential.slice(keyEnd), credential.slice(0, keyEnd), partnerBundle), /does not verify/);
  });

  test("JWT-SVID: signed by the trust domain's JWKS, refreshed before it expires", async () => {
    const tokenFile = join(jwt.targetPath, "jwt-e2e.token");
    const first = await readFile(tokenFile, "utf8");
    const [header, payload, signature] = first.split(".");
    const claims = JSON.parse(Buffer.from(payload!, "base64url").toString()) as { sub: string; aud: string[]; exp: number; iat: number };
    assert.equal(claims.sub, edgeId);
    assert.deepEqual(claims.aud, ["e2e"]);
    const { kid, alg } = JSON.parse(Buffer.from(header!, "base64url").toString()) as { kid: string; alg: string };
    const jwks = JSON.parse(await readFile(join(jwt.targetPath, "example.org.jwt-bundle.json"), "utf8")) as { keys: { kid: string }[] };
    const jwk = jwks.keys.find((key) => key.kid === kid);
    assert.ok(jwk, "the token's key is in the JWT bundle file");
    const verifier = createVerify(alg.startsWith("ES") ? "SHA256" : alg === "RS256" ? "RSA-SHA256" : "SHA256");
    verifier.update(`${header}.${payload}`);
    const dsaEncoding = alg.startsWith("ES") ? "ieee-p1363" : undefined;
    assert.ok(verifier.verify({ key: createPublicKey({ key: jwk as never, format: "jwk" }), dsaEncoding } as never, Buffer.from(signature!, "base64url")), "signature verifies");
    let refreshed = first;
    while (refreshed === first && Date.now() < claims.exp * 1000) {
      await sleep(500);
      refreshed = await readFile(tokenFile, "utf8");
    }
    assert.notEqual(refreshed, first, "a new token before the first one expired");
  });

  test("Envoy SDS file after a rotation decodes with Envoy's API types and holds the new SVID", async () => {
    const sdsFile = join(envoy.targetPath, "envoy-sds.json");
    const before = await checkEnvoySds(sdsFile, "default", "ROOTCA");
    assert.deepEqual(before.leafUris, [edgeId]);
    assert.ok(before.keyMatchesLeaf);
    assert.equal(before.validator, "spiffe");
    assert.deepEqual(before.trustDomains, { "example.org": 1, "partner.test": 1 }, "one SPIFFE validator entry per trust domain, each with its own bundle");
    const deadline = Date.now() + 40_000;
    let after = before;
    while (after.leafSerial === before.leafSerial && Date.now() < deadline) {
      await sleep(500);
      after = await checkEnvoySds(sdsFile, "default", "ROOTCA");
    }
    assert.notEqual(after.leafSerial, before.leafSerial, "rotated within one TTL");
    assert.ok(after.keyMatchesLeaf);
    assert.deepEqual(after.trustDomains, before.trustDomains);
  });

  test("real clients accept the files of real SVIDs: Java (keytool, TLS 1.3 mutual handshake), OpenSSL 3 (pkcs12, verify per layout), go-spiffe (Load)", async () => {
    for (const volume of [edgeKeystore, peerKeystore]) {
      assert.deepEqual(await JavaClient.keytoolList(join(volume.targetPath, "keystore.p12"), "changeit"), [{ alias: "spiffe", type: "PrivateKeyEntry" }]);
      assert.deepEqual((await JavaClient.keytoolList(join(volume.targetPath, "truststore.p12"), "changeit")).map((entry) => entry.type), ["trustedCertEntry", "trustedCertEntry"]);
      assert.match(await opensslPkcs12Info(join(volume.targetPath, "keystore.p12"), "changeit"), /Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC/);
    }
    const handshake = await java.mutualTls({ dir: edgeKeystore.targetPath, password: "changeit" }, { dir: peerKeystore.targetPath, password: "changeit" });
    assert.deepEqual([handshake.protocol, handshake.serverSawClient, handshake.clientSawServer], ["TLSv1.3", peerId, edgeId]);

    const credential = await readFile(join(fs.targetPath, "credential-bundle.pem"), "utf8");
    const chains: [string, string][] = [
      [await readFile(join(edgeKeystore.targetPath, "tls.crt"), "utf8"), join(edgeKeystore.targetPath, "ca.crt")],
      [await readFile(join(helper.targetPath, "svid.pem"), "utf8"), join(helper.targetPath, "svid_bundle.pem")],
      [credential.slice(credential.indexOf("-----BEGIN CERTIFICATE-----")), join(fs.targetPath, "example.org.trust-bundle.pem")],
    ];
    for (const [chain, bundle] of chains) assert.match(await opensslVerify(chain, bundle), /: OK/, bundle);

    assert.equal((await goSpiffe.svid(join(edgeKeystore.targetPath, "tls.crt"), join(edgeKeystore.targetPath, "tls.key"))).id, edgeId);
    assert.equal((await goSpiffe.svid(join(helper.targetPath, "svid.pem"), join(helper.targetPath, "svid_key.pem"))).id, edgeId);
    for (const trustDomain of ["example.org", "partner.test"]) {
      assert.equal((await goSpiffe.bundle(trustDomain, join(fs.targetPath, `${trustDomain}.trust-bundle.pem`))).trustDomain, trustDomain);
    }
  });

  test("go-spiffe mTLS across the federated domain: the pod's files against an SVID minted by the partner server", async () => {
    const dir = await mkdtemp(join(tmpdir(), "partner-svid-"));
    try {
      const partnerId = "spiffe://partner.test/api";
      await partner.serverCli(["x509", "mint", "-spiffeID", partnerId, "-ttl", "5m", "-write", dir]);
      const result = await goSpiffe.mtls(
        {
          cert: join(fs.targetPath, "credential-bundle.pem"),
          key: join(fs.targetPath, "credential-bundle.pem"),
          authorize: partnerId,
          bundles: { "example.org": join(fs.targetPath, "example.org.trust-bundle.pem"), "partner.test": join(fs.targetPath, "partner.test.trust-bundle.pem") },
        },
        { cert: join(dir, "svid.pem"), key: join(dir, "key.pem"), authorize: edgeId, bundles: { "example.org": join(fs.targetPath, "example.org.trust-bundle.pem") } },
      );
      assert.deepEqual(result, { serverSawClient: partnerId, clientSawServer: edgeId, tlsVersion: "TLS 1.3" });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("per-trust-domain trust: a certificate from the partner domain's CA claiming our pod's ID is refused by go-spiffe with the per-domain files", async () => {
    // Signed with the partner server's own root key (its disk UpstreamAuthority), the root the
    // partner's federated bundle carries.
    const forgedKey = join(upstreamDir, "forged.key");
    const forgedCert = join(upstreamDir, "forged.crt");
    const extensions = join(upstreamDir, "forged.ext");
    await writeFile(extensions, `subjectAltName=URI:${edgeId}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n`);
    await openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", forgedKey, "-subj", "/O=SPIRE", "-out", join(upstreamDir, "forged.csr")]);
    await openssl(["x509", "-req", "-in", join(upstreamDir, "forged.csr"), "-CA", join(upstreamDir, "ca.crt"), "-CAkey", join(upstreamDir, "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", extensions, "-out", forgedCert]);
    const partnerBundle = await readFile(join(fs.targetPath, "partner.test.trust-bundle.pem"), "utf8");
    assert.ok(partnerBundle.includes((await readFile(join(upstreamDir, "ca.crt"), "utf8")).trim()), "the partner's federated bundle is the upstream CA the test holds");

    const perDomain = { "example.org": join(fs.targetPath, "example.org.trust-bundle.pem"), "partner.test": join(fs.targetPath, "partner.test.trust-bundle.pem") };
    await assert.rejects(goSpiffe.verify(forgedCert, perDomain), /x509svid\.Verify: .*unknown authority/);
    const credential = join(fs.targetPath, "credential-bundle.pem");
    const genuine = join(upstreamDir, "genuine.pem");
    const credentialText = await readFile(credential, "utf8");
    await writeFile(genuine, credentialText.slice(credentialText.indexOf("-----BEGIN CERTIFICATE-----")));
    assert.deepEqual(await goSpiffe.verify(genuine, perDomain), { id: edgeId });
    // The hazard the per-domain files (and Envoy's SPIFFE validator) avoid: one merged bundle.
    assert.deepEqual(await goSpiffe.verify(forgedCert, { "example.org": join(merged.targetPath, "ca.crt") }), { id: edgeId });
  });
});
