import { createCipheriv, createHash, createHmac, pbkdf2Sync } from "node:crypto";
import { ContentInfo } from "@peculiar/asn1-cms";
import { AuthenticatedSafe, CertBag, id_certBag, id_pkcs8ShroudedKeyBag, id_x509Certificate, MacData, PFX, PKCS12Attribute, SafeBag, SafeContents } from "@peculiar/asn1-pfx";
import { EncryptedData, EncryptedPrivateKeyInfo } from "@peculiar/asn1-pkcs8";
import { DigestInfo } from "@peculiar/asn1-rsa";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { AlgorithmIdentifier } from "@peculiar/asn1-x509";
import * as asn1js from "asn1js";

const oid = {
  data: "1.2.840.113549.1.7.1",
  pbes2: "1.2.840.113549.1.5.13",
  pbkdf2: "1.2.840.113549.1.5.12",
  hmacWithSha256: "1.2.840.113549.2.9",
  aes256Cbc: "2.16.840.1.101.3.4.1.42",
  sha256: "2.16.840.1.101.3.4.2.1",
  friendlyName: "1.2.840.113549.1.9.20",
  localKeyId: "1.2.840.113549.1.9.21",
  /** Java's marker of a trusted certificate entry (PKCS12KeyStore reads a cert bag without it as a chain member, not a trust anchor). */
  javaTrustedKeyUsage: "2.16.840.1.113894.746875.1.1",
  anyExtendedKeyUsage: "2.5.29.37.0",
} as const;

/**
 * PBKDF2 and MAC iterations. The password protects nothing (anyone who can read the volume reads
 * it too), so more rounds would only cost CPU at every rotation; 2048 is OpenSSL 3's default.
 */
const iterations = 2048;

/** The alias of the key entry in keystore.p12. */
export const keyAlias = "spiffe";

/**
 * `keystore.p12`: the private key (PKCS#8, encrypted with PBES2: PBKDF2-HMAC-SHA256 and
 * AES-256-CBC) under alias `spiffe`, and its certificate chain. The PFX carries an HMAC-SHA256
 * MAC, what JDK 11.0.12+ and OpenSSL 3 write by default.
 */
export function pkcs12Keystore(keyPkcs8Der: Uint8Array, chainDer: readonly Uint8Array[], password: string): Buffer {
  const leaf = chainDer[0]!;
  const localKeyId = createHash("sha1").update(leaf).digest();
  const keyAttributes = [friendlyName(keyAlias), attribute(oid.localKeyId, new asn1js.OctetString({ valueHex: localKeyId }))];
  const keyBag = new SafeBag({
    bagId: id_pkcs8ShroudedKeyBag,
    bagValue: AsnConvert.serialize(encryptPrivateKey(keyPkcs8Der, password, saltFor("key", leaf))),
    bagAttributes: keyAttributes,
  });
  const certBags = chainDer.map((der, index) => certBag(der, index === 0 ? keyAttributes : undefined));
  return pfx([new SafeContents([keyBag]), new SafeContents(certBags)], password);
}

/**
 * `truststore.p12`: every bundle certificate as a trusted-certificate entry that Java's
 * PKCS12KeyStore and OpenSSL accept, under alias `<trust-domain>-<n>`.
 */
export function pkcs12Truststore(bundles: readonly { trustDomain: string; certs: readonly Uint8Array[] }[], password: string): Buffer {
  const bags = bundles.flatMap(({ trustDomain, certs }) =>
    certs.map((der, index) =>
      certBag(der, [friendlyName(`${trustDomain}-${index}`), attribute(oid.javaTrustedKeyUsage, new asn1js.ObjectIdentifier({ value: oid.anyExtendedKeyUsage }))]),
    ),
  );
  return pfx([new SafeContents(bags)], password);
}

function certBag(der: Uint8Array, attributes: PKCS12Attribute[] | undefined): SafeBag {
  return new SafeBag({
    bagId: id_certBag,
    bagValue: AsnConvert.serialize(new CertBag({ certId: id_x509Certificate, certValue: new asn1js.OctetString({ valueHex: der }).toBER() })),
    ...(attributes ? { bagAttributes: attributes } : {}),
  });
}

/**
 * Certificates are public, so their SafeContents are plain Data (as the JDK writes them with
 * keystore.pkcs12.certProtectionAlgorithm=NONE); the key is encrypted inside its bag; the MAC
 * covers everything.
 */
function pfx(safes: SafeContents[], password: string): Buffer {
  const authSafe = new AuthenticatedSafe(safes.map((safe) => dataContentInfo(AsnConvert.serialize(safe))));
  const authSafeDer = Buffer.from(AsnConvert.serialize(authSafe));
  const { salt: macSalt, key: macKey } = macKeyFor(password);
  const mac = createHmac("sha256", macKey).update(authSafeDer).digest();
  const result = new PFX({
    version: 3,
    authSafe: dataContentInfo(authSafeDer),
    macData: new MacData({
      mac: new DigestInfo({ digestAlgorithm: new AlgorithmIdentifier({ algorithm: oid.sha256, parameters: null }), digest: new OctetString(mac) }),
      macSalt: new OctetString(macSalt),
      iterations,
    }),
  });
  return Buffer.from(AsnConvert.serialize(result));
}

function dataContentInfo(content: ArrayBuffer | Uint8Array): ContentInfo {
  return new ContentInfo({ contentType: oid.data, content: AsnConvert.serialize(new OctetString(content)) });
}

function encryptPrivateKey(keyPkcs8Der: Uint8Array, password: string, salt: Buffer): EncryptedPrivateKeyInfo {
  const iv = saltFor("iv", salt);
  const key = pbkdf2Sync(Buffer.from(password, "utf8"), salt, iterations, 32, "sha256");
  const cipher = createCipheriv("aes-256-cbc", key, iv);
  const encrypted = Buffer.concat([cipher.update(keyPkcs8Der), cipher.final()]);
  const parameters = new asn1js.Sequence({
    value: [
      new asn1js.Sequence({
        value: [
          new asn1js.ObjectIdentifier({ value: oid.pbkdf2 }),
          new asn1js.Sequence({
            value: [
              new asn1js.OctetString({ valueHex: salt }),
              new asn1js.Integer({ value: iterations }),
              new asn1js.Sequence({ value: [new asn1js.ObjectIdentifier({ value: oid.hmacWithSha256 }), new asn1js.Null()] }),
            ],
          }),
        ],
      }),
      new asn1js.Sequence({ value: [new asn1js.ObjectIdentifier({ value: oid.aes256Cbc }), new asn1js.OctetString({ valueHex: iv })] }),
    ],
  });
  return new EncryptedPrivateKeyInfo({
    encryptionAlgorithm: new AlgorithmIdentifier({ algorithm: oid.pbes2, parameters: parameters.toBER() }),
    encryptedData: new EncryptedData(encrypted),
  });
}

const macKeys = new Map<string, { salt: Buffer; key: Buffer }>();

/**
 * The MAC key of a password. Its salt derives from the password, so the key (2048 rounds of the
 * PKCS#12 KDF, ~5 ms of event loop) is computed once per password instead of twice per volume and
 * snapshot; the password is public, so a per-file salt would protect nothing. Volumes use few
 * distinct passwords (most the default), so the cache stays small.
 */
function macKeyFor(password: string): { salt: Buffer; key: Buffer } {
  let entry = macKeys.get(password);
  if (!entry) {
    const salt = saltFor("mac", Buffer.from(password, "utf8"));
    entry = { salt, key: pkcs12Kdf(password, salt, 3, iterations) };
    if (macKeys.size >= 64) macKeys.clear();
    macKeys.set(password, entry);
  }
  return entry;
}

/**
 * Salts (16 bytes) derived from public content, so the same input always renders the same file
 * and a repeated agent message rewrites nothing. With a password that is not a secret, a random
 * salt would protect nothing either.
 */
function saltFor(purpose: string, content: Uint8Array): Buffer {
  return createHash("sha256").update(`csi.spire.io pkcs12 ${purpose}\0`).update(content).digest().subarray(0, 16);
}

function friendlyName(name: string): PKCS12Attribute {
  return attribute(oid.friendlyName, new asn1js.BmpString({ value: name }));
}

function attribute(attrId: string, value: asn1js.BaseBlock): PKCS12Attribute {
  // PKCS12Attribute's constructor drops its argument (asn1-pfx 2.11.1: `Object.assign(params)`).
  return Object.assign(new PKCS12Attribute(), { attrId, attrValues: [value.toBER()] });
}

/**
 * The PKCS#12 key derivation (RFC 7292 appendix B.2) with SHA-256, which the PFX MAC still uses
 * (id 3 = MAC key); node:crypto has no implementation of it. One 32-byte block is all HMAC-SHA256
 * needs.
 */
function pkcs12Kdf(password: string, salt: Buffer, id: number, rounds: number): Buffer {
  const v = 64;
  const fill = (bytes: Buffer) => {
    if (bytes.length === 0) return bytes;
    const out = Buffer.alloc(v * Math.ceil(bytes.length / v));
    for (let i = 0; i < out.length; i++) out[i] = bytes[i % bytes.length]!;
    return out;
  };
  // BMPString: UTF-16 big-endian with a two-byte terminator.
  const passwordBytes = Buffer.from(`${password}\0`, "utf16le").swap16();
  let block = Buffer.concat([Buffer.alloc(v, id), fill(salt), fill(passwordBytes)]);
  for (let round = 0; round < rounds; round++) block = createHash("sha256").update(block).digest();
  return block;
}
