import "reflect-metadata";
import { createPrivateKey, createSign, randomBytes, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKeyPair = webcrypto.CryptoKeyPair;

const ecdsa = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

export interface IssuedX509Svid {
  spiffeId: string;
  /** DER certificates, leaf first, then the intermediate when the CA has one. */
  certChainDer: Uint8Array[];
  keyPkcs8Der: Uint8Array;
  serialHex: string;
  /** Unix seconds. */
  expiresAt: number;
}

export interface TestCa {
  readonly trustDomain: string;
  /** The newest root (the one issuing new SVIDs) as DER. */
  readonly rootDer: Uint8Array;
  /** The newest root as PEM. */
  readonly rootPem: string;
  /** The current roots as DER, concatenated like the agent's bundle encoding. */
  bundleDer(): Uint8Array;
  rootsPem(): string;
  /** Adds a second root (bundle rotation); new SVIDs are issued by the newest root. */
  addRoot(): Promise<void>;
  /**
   * Issues a leaf with a fresh key. `notBefore` defaults to 10 s ago (clock-skew slack, as SPIRE
   * backdates); the leaf expires `ttlSeconds` after `notBefore` when given, else after now.
   */
  issueX509Svid(options: { spiffeId: string; ttlSeconds?: number; notBefore?: Date }): Promise<IssuedX509Svid>;
  signJwt(options: { spiffeId: string; audience: string[]; ttlSeconds?: number }): string;
  jwks(): string;
}

interface Authority {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

/**
 * An in-memory SPIFFE CA: ECDSA P-256 roots (and optionally an intermediate) issuing
 * X.509-SVIDs with the SPIFFE ID as the only URI SAN, plus an ES256 JWT-SVID signing key.
 */
export async function createTestCa(options: { trustDomain: string; withIntermediate?: boolean }): Promise<TestCa> {
  const { trustDomain } = options;
  const roots: Authority[] = [];
  let issuer: Authority;

  const makeRoot = async (): Promise<Authority> => {
    const keys = (await webcrypto.subtle.generateKey(ecdsa, true, ["sign", "verify"])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomBytes(16).toString("hex").replace(/^[89a-f]/, "1"),
      name: `O=SPIFFE, CN=${trustDomain} test root ${roots.length + 1}`,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 7 * 24 * 3600_000),
      keys,
      signingAlgorithm: ecdsa,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        new x509.SubjectAlternativeNameExtension([{ type: "url", value: `spiffe://${trustDomain}` }]),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return { cert, keys };
  };

  const makeIntermediate = async (parent: Authority): Promise<Authority> => {
    const keys = (await webcrypto.subtle.generateKey(ecdsa, true, ["sign", "verify"])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomBytes(16).toString("hex").replace(/^[89a-f]/, "1"),
      subject: `O=SPIFFE, CN=${trustDomain} test intermediate`,
      issuer: parent.cert.subject,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 7 * 24 * 3600_000),
      publicKey: keys.publicKey,
      signingKey: parent.keys.privateKey,
      signingAlgorithm: ecdsa,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(parent.keys.publicKey),
      ],
    });
    return { cert, keys };
  };

  const useNewestRoot = async () => {
    const root = roots[roots.length - 1]!;
    issuer = options.withIntermediate ? await makeIntermediate(root) : root;
  };

  roots.push(await makeRoot());
  await useNewestRoot();

  const jwtKeys = (await webcrypto.subtle.generateKey(ecdsa, true, ["sign", "verify"])) as CryptoKeyPair;
  const jwtKid = randomBytes(8).toString("hex");
  const jwtPrivate = createPrivateKey({ key: Buffer.from(await webcrypto.subtle.exportKey("pkcs8", jwtKeys.privateKey)), format: "der", type: "pkcs8" });
  const jwtPublicJwk = await webcrypto.subtle.exportKey("jwk", jwtKeys.publicKey);

  const newestRoot = () => roots[roots.length - 1]!;

  return {
    trustDomain,
    get rootDer() {
      return new Uint8Array(newestRoot().cert.rawData);
    },
    get rootPem() {
      return newestRoot().cert.toString("pem") + "\n";
    },
    bundleDer: () => Buffer.concat(roots.map((root) => Buffer.from(root.cert.rawData))),
    rootsPem: () => roots.map((root) => root.cert.toString("pem")).join("\n") + "\n",
    async addRoot() {
      roots.push(await makeRoot());
      await useNewestRoot();
    },
    async issueX509Svid({ spiffeId, ttlSeconds = 3600, notBefore: requestedNotBefore }) {
      const keys = (await webcrypto.subtle.generateKey(ecdsa, true, ["sign", "verify"])) as CryptoKeyPair;
      const notBefore = requestedNotBefore ?? new Date(Date.now() - 10_000);
      // Whole seconds: expires_at on the wire is unix seconds and must equal the cert's notAfter.
      const notAfterMs = (requestedNotBefore?.getTime() ?? Date.now()) + ttlSeconds * 1000;
      const notAfter = new Date(Math.floor(notAfterMs / 1000) * 1000);
      const serialHex = randomBytes(16).toString("hex").replace(/^[89a-f]/, "1");
      const leaf = await x509.X509CertificateGenerator.create({
        serialNumber: serialHex,
        subject: "O=SPIRE",
        issuer: issuer.cert.subject,
        notBefore,
        notAfter,
        publicKey: keys.publicKey,
        signingKey: issuer.keys.privateKey,
        signingAlgorithm: ecdsa,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          // SPIRE's X.509-SVID template sets keyAgreement too; keep the leaf shaped like theirs.
          new x509.KeyUsagesExtension(
            x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment | x509.KeyUsageFlags.keyAgreement,
            true,
          ),
          new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
          new x509.SubjectAlternativeNameExtension([{ type: "url", value: spiffeId }]),
          await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
        ],
      });
      const chain = [new Uint8Array(leaf.rawData)];
      if (options.withIntermediate) chain.push(new Uint8Array(issuer.cert.rawData));
      return {
        spiffeId,
        certChainDer: chain,
        keyPkcs8Der: new Uint8Array(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey)),
        serialHex,
        expiresAt: Math.floor(notAfter.getTime() / 1000),
      };
    },
    signJwt({ spiffeId, audience, ttlSeconds = 300 }) {
      const now = Math.floor(Date.now() / 1000);
      const header = { alg: "ES256", kid: jwtKid, typ: "JWT" };
      const payload = { sub: spiffeId, aud: audience, iat: now, exp: now + ttlSeconds, jti: randomBytes(8).toString("hex") };
      const encode = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
      const signingInput = `${encode(header)}.${encode(payload)}`;
      const signature = createSign("SHA256").update(signingInput).sign({ key: jwtPrivate, dsaEncoding: "ieee-p1363" });
      return `${signingInput}.${signature.toString("base64url")}`;
    },
    jwks() {
      return JSON.stringify({ keys: [{ ...jwtPublicJwk, kid: jwtKid, use: "jwt-svid", alg: "ES256" }] });
    },
  };
}
