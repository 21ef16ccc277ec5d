import "reflect-metadata";
import assert from "node:assert/strict";
import { createPrivateKey, X509Certificate, webcrypto } from "node:crypto";
import { test } from "node:test";
import * as x509 from "@peculiar/x509";
import { keyMatchesCertificate } from "../../src/spire/key-match.js";
import { derChildren, readDerElement, splitDerCertificates } from "../../src/spire/der.js";

type Algorithm = webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams;

const algorithms: Record<string, Algorithm & { hash: string }> = {
  "EC P-256": { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" },
  "EC P-384": { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" },
  "RSA 2048": { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
};

async function keyAndCert(algorithm: Algorithm & { hash: string }): Promise<{ certDer: Uint8Array; keyDer: Uint8Array }> {
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=key-match",
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    keys,
    signingAlgorithm: algorithm,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: "spiffe://example.org/w" }])],
  });
  return { certDer: new Uint8Array(cert.rawData), keyDer: new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)) };
}

for (const [name, algorithm] of Object.entries(algorithms)) {
  test(`${name}: a key matches its own certificate and no other`, async () => {
    const own = await keyAndCert(algorithm);
    const other = await keyAndCert(algorithm);
    const leaf = new X509Certificate(own.certDer);
    assert.equal(keyMatchesCertificate(leaf, own.certDer, own.keyDer), true);
    assert.equal(keyMatchesCertificate(leaf, own.certDer, other.keyDer), false);
  });
}

test("an EC key on another curve does not match", async () => {
  const p256 = await keyAndCert(algorithms["EC P-256"]!);
  const p384 = await keyAndCert(algorithms["EC P-384"]!);
  assert.equal(keyMatchesCertificate(new X509Certificate(p256.certDer), p256.certDer, p384.keyDer), false);
});

test("an RSA key against an EC certificate (and back) does not match", async () => {
  const ec = await keyAndCert(algorithms["EC P-256"]!);
  const rsa = await keyAndCert(algorithms["RSA 2048"]!);
  assert.equal(keyMatchesCertificate(new X509Certificate(ec.certDer), ec.certDer, rsa.keyDer), false);
  assert.equal(keyMatchesCertificate(new X509Certificate(rsa.certDer), rsa.certDer, ec.keyDer), false);
});

test("an EC key whose private scalar was altered no longer matches, and garbage throws", async () => {
  const { certDer, keyDer } = await keyAndCert(algorithms["EC P-256"]!);
  const leaf = new X509Certificate(certDer);
  // The scalar is the OCTET STRING inside ECPrivateKey; flip its last byte.
  const top = readDerElement(keyDer, 0);
  const tampered = Uint8Array.from(keyDer);
  const scalarAt = findScalarEnd(tampered, top.end);
  tampered[scalarAt - 1]! ^= 0x01;
  assert.equal(keyMatchesCertificate(leaf, certDer, tampered), false);
  assert.throws(() => keyMatchesCertificate(leaf, certDer, new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00])));
  assert.throws(() => keyMatchesCertificate(leaf, certDer, new Uint8Array(0)));
});

test("an EC key whose embedded public point is not its own does not match", async () => {
  const own = await keyAndCert(algorithms["EC P-256"]!);
  const other = await keyAndCert(algorithms["EC P-256"]!);
  const ownPoint = embeddedPoint(own.keyDer);
  const otherPoint = embeddedPoint(other.keyDer);
  const swapped = Uint8Array.from(own.keyDer);
  swapped.set(other.keyDer.subarray(otherPoint.start, otherPoint.end), ownPoint.start);
  assert.equal(keyMatchesCertificate(new X509Certificate(own.certDer), own.certDer, swapped), false);
});

test("the fast path never accepts a key that OpenSSL's own check rejects (every single-bit flip)", async () => {
  const { certDer, keyDer } = await keyAndCert(algorithms["EC P-256"]!);
  const leaf = new X509Certificate(certDer);
  const accepts = (check: () => boolean) => {
    try {
      return check();
    } catch {
      return false;
    }
  };
  const openSsl = (key: Uint8Array) => leaf.checkPrivateKey(createPrivateKey({ key: Buffer.from(key), format: "der", type: "pkcs8" }));
  for (let offset = 0; offset < keyDer.length; offset++) {
    for (let bit = 0; bit < 8; bit++) {
      const mutated = Uint8Array.from(keyDer);
      mutated[offset]! ^= 1 << bit;
      if (accepts(() => keyMatchesCertificate(leaf, certDer, mutated))) {
        assert.ok(accepts(() => openSsl(mutated)), `byte ${offset} bit ${bit}: accepted by the fast path, rejected by OpenSSL`);
      }
    }
  }
});

test("DER reading rejects truncated elements and splits certificate runs", async () => {
  const a = await keyAndCert(algorithms["EC P-256"]!);
  const b = await keyAndCert(algorithms["EC P-256"]!);
  const run = new Uint8Array([...a.certDer, ...b.certDer]);
  assert.deepEqual(splitDerCertificates(run).map((cert) => cert.length), [a.certDer.length, b.certDer.length]);
  assert.throws(() => splitDerCertificates(run.subarray(0, run.length - 1)), /runs past/);
  assert.throws(() => splitDerCertificates(new Uint8Array([0x04, 0x00])), /expected a DER SEQUENCE/);
  assert.throws(() => readDerElement(new Uint8Array([0x30]), 0), /truncated/);
});

/** End offset of the private scalar: PrivateKeyInfo → privateKey OCTET STRING → ECPrivateKey → 2nd field. */
function findScalarEnd(pkcs8: Uint8Array, end: number): number {
  const top = readDerElement(pkcs8, 0, end);
  let offset = top.contentStart;
  const version = readDerElement(pkcs8, offset, top.end);
  const algorithm = readDerElement(pkcs8, version.end, top.end);
  const privateKey = readDerElement(pkcs8, algorithm.end, top.end);
  const ecKey = readDerElement(pkcs8, privateKey.contentStart, privateKey.end);
  offset = ecKey.contentStart;
  const ecVersion = readDerElement(pkcs8, offset, ecKey.end);
  return readDerElement(pkcs8, ecVersion.end, ecKey.end).end;
}

/** The byte range of the uncompressed point in the key's [1] publicKey. */
function embeddedPoint(pkcs8: Uint8Array): { start: number; end: number } {
  const [, , privateKey] = derChildren(pkcs8, readDerElement(pkcs8, 0));
  const element = readDerElement(pkcs8, privateKey!.contentStart, privateKey!.end);
  const publicKey = derChildren(pkcs8, element).find((field) => field.tag === 0xa1);
  assert.ok(publicKey, "the key carries its public point");
  const bits = derChildren(pkcs8, publicKey)[0]!;
  return { start: bits.contentStart + 1, end: bits.end };
}
