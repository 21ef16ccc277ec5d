import assert from "node:assert/strict";
import { createPrivateKey, createPublicKey, verify, X509Certificate, type JsonWebKey } from "node:crypto";
import { describe, test } from "node:test";
import { createTestCa } from "../support/test-ca.js";

const spiffeId = "spiffe://example.org/ns/demo/sa/web";
const serverAuth = "1.3.6.1.5.5.7.3.1";
const clientAuth = "1.3.6.1.5.5.7.3.2";

/** Splits the agent's bundle encoding (DER certificates back to back) into certificates. */
function splitDer(concatenated: Uint8Array): X509Certificate[] {
  const certs: X509Certificate[] = [];
  let offset = 0;
  while (offset < concatenated.length) {
    // SEQUENCE with a long-form length: 0x30 0x82 <2 length bytes> (every test cert is 256..65535 bytes).
    assert.equal(concatenated[offset], 0x30);
    assert.equal(concatenated[offset + 1], 0x82);
    const length = 4 + ((concatenated[offset + 2]! << 8) | concatenated[offset + 3]!);
    certs.push(new X509Certificate(Buffer.from(concatenated.subarray(offset, offset + length))));
    offset += length;
  }
  return certs;
}

describe("test CA", () => {
  test("issues an X.509-SVID that node:crypto accepts: URI SAN, key pair, leaf profile, chain to the root", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const svid = await ca.issueX509Svid({ spiffeId, ttlSeconds: 600 });
    assert.equal(svid.certChainDer.length, 1, "no intermediate: the chain is the leaf alone");
    const leaf = new X509Certificate(Buffer.from(svid.certChainDer[0]!));
    const root = new X509Certificate(Buffer.from(ca.rootDer));

    assert.equal(leaf.subjectAltName, `URI:${spiffeId}`);
    assert.equal(leaf.ca, false);
    assert.deepEqual([...leaf.keyUsage].sort(), [serverAuth, clientAuth].sort(), "extended key usage: serverAuth + clientAuth");
    assert.ok(leaf.checkPrivateKey(createPrivateKey({ key: Buffer.from(svid.keyPkcs8Der), format: "der", type: "pkcs8" })));
    assert.ok(leaf.verify(root.publicKey), "leaf signed by the root");
    assert.ok(leaf.checkIssued(root));
    assert.equal(root.ca, true);
    assert.equal(leaf.serialNumber.toLowerCase(), svid.serialHex.toLowerCase());
    assert.equal(Math.floor(new Date(leaf.validTo).getTime() / 1000), svid.expiresAt, "expiresAt is the leaf's notAfter");
    assert.ok(Math.abs(svid.expiresAt - (Date.now() / 1000 + 600)) < 5);
    assert.equal(root.toString(), new X509Certificate(ca.rootPem).toString());
  });

  test("with an intermediate, the chain is leaf then intermediate and verifies up to the root", async () => {
    const ca = await createTestCa({ trustDomain: "example.org", withIntermediate: true });
    const svid = await ca.issueX509Svid({ spiffeId });
    assert.equal(svid.certChainDer.length, 2);
    const [leaf, intermediate] = svid.certChainDer.map((der) => new X509Certificate(Buffer.from(der)));
    const root = new X509Certificate(Buffer.from(ca.rootDer));
    assert.ok(leaf!.verify(intermediate!.publicKey));
    assert.ok(intermediate!.verify(root.publicKey));
    assert.equal(intermediate!.ca, true);
  });

  test("each SVID has a fresh key and serial; the CA keys are reused", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const started = performance.now();
    const [a, b] = await Promise.all([ca.issueX509Svid({ spiffeId }), ca.issueX509Svid({ spiffeId })]);
    assert.ok(performance.now() - started < 2_000, "issuing is fast");
    assert.notEqual(a!.serialHex, b!.serialHex);
    assert.notDeepEqual(a!.keyPkcs8Der, b!.keyPkcs8Der);
    const root = new X509Certificate(Buffer.from(ca.rootDer));
    assert.ok(new X509Certificate(Buffer.from(b!.certChainDer[0]!)).verify(root.publicKey));
  });

  test("an explicit notBefore sets the validity window (expired SVIDs for fault tests)", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const notBefore = new Date(Date.now() - 3_600_000);
    const svid = await ca.issueX509Svid({ spiffeId, ttlSeconds: 60, notBefore });
    const leaf = new X509Certificate(Buffer.from(svid.certChainDer[0]!));
    assert.ok(new Date(leaf.validTo).getTime() < Date.now(), "already expired");
    assert.equal(svid.expiresAt, Math.floor(notBefore.getTime() / 1000) + 60);
  });

  test("addRoot: the bundle holds both roots concatenated; new SVIDs chain to the new root", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const firstRoot = new X509Certificate(Buffer.from(ca.rootDer));
    assert.equal(splitDer(ca.bundleDer()).length, 1);
    await ca.addRoot();
    const roots = splitDer(ca.bundleDer());
    assert.equal(roots.length, 2);
    assert.equal(roots[0]!.fingerprint256, firstRoot.fingerprint256);
    const newRoot = new X509Certificate(Buffer.from(ca.rootDer));
    assert.equal(roots[1]!.fingerprint256, newRoot.fingerprint256);
    const leaf = new X509Certificate(Buffer.from((await ca.issueX509Svid({ spiffeId })).certChainDer[0]!));
    assert.ok(leaf.verify(newRoot.publicKey));
    assert.ok(!leaf.verify(firstRoot.publicKey));
  });

  test("signJwt makes an ES256 JWT-SVID that verifies with the key in jwks() by kid", async () => {
    const ca = await createTestCa({ trustDomain: "example.org" });
    const token = ca.signJwt({ spiffeId, audience: ["vault"], ttlSeconds: 120 });
    const [headerPart, payloadPart, signaturePart] = token.split(".");
    const header = JSON.parse(Buffer.from(headerPart!, "base64url").toString()) as { alg: string; kid: string };
    const payload = JSON.parse(Buffer.from(payloadPart!, "base64url").toString()) as { sub: string; aud: string[]; exp: number; iat: number };
    assert.equal(header.alg, "ES256");
    assert.equal(payload.sub, spiffeId);
    assert.deepEqual(payload.aud, ["vault"]);
    assert.equal(payload.exp - payload.iat, 120);
    const jwks = JSON.parse(ca.jwks()) as { keys: (JsonWebKey & { kid: string })[] };
    const jwk = jwks.keys.find((key) => key.kid === header.kid);
    assert.ok(jwk, "the JWKS holds the token's kid");
    const valid = verify(
      "sha256",
      Buffer.from(`${headerPart}.${payloadPart}`),
      { key: createPublicKey({ key: jwk, format: "jwk" }), dsaEncoding: "ieee-p1363" },
      Buffer.from(signaturePart!, "base64url"),
    );
    assert.ok(valid);
  });
});
