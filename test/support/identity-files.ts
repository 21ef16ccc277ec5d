import { createPrivateKey, X509Certificate } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

export interface CheckedIdentity {
  spiffeId: string;
  serialNumber: string;
  chainLength: number;
  validTo: string;
}

/** Splits PEM text into its blocks; throws on text outside blocks. */
export function pemBlocks(text: string): { label: string; der: Buffer }[] {
  const blocks: { label: string; der: Buffer }[] = [];
  const pattern = /-----BEGIN ([A-Z ]+)-----\n([A-Za-z0-9+/=\n]+?)\n-----END \1-----\n/g;
  let consumed = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index !== consumed) throw new Error(`unexpected text before PEM block at ${consumed}`);
    blocks.push({ label: match[1]!, der: Buffer.from(match[2]!.replace(/\n/g, ""), "base64") });
    consumed = match.index + match[0].length;
  }
  if (consumed !== text.length) throw new Error(`unexpected text after the last PEM block at ${consumed}`);
  return blocks;
}

/**
 * Checks a cert/key/bundle triple the way a TLS peer would: the key is PKCS#8 and belongs to the
 * leaf, every certificate of the chain is signed by the next one, and the last one by a CA of the
 * bundle. Returns the leaf's SPIFFE ID and serial.
 */
export function checkIdentity(certPem: string, keyPem: string, bundlePem: string): CheckedIdentity {
  const certBlocks = pemBlocks(certPem);
  const keyBlocks = pemBlocks(keyPem);
  const bundleBlocks = pemBlocks(bundlePem);
  if (certBlocks.length === 0 || certBlocks.some((block) => block.label !== "CERTIFICATE")) throw new Error("cert file: expected CERTIFICATE blocks");
  if (keyBlocks.length !== 1 || keyBlocks[0]!.label !== "PRIVATE KEY") throw new Error("key file: expected one PRIVATE KEY block");
  if (bundleBlocks.length === 0 || bundleBlocks.some((block) => block.label !== "CERTIFICATE")) throw new Error("bundle file: expected CERTIFICATE blocks");
  const chain = certBlocks.map((block) => new X509Certificate(block.der));
  const leaf = chain[0]!;
  const key = createPrivateKey({ key: keyBlocks[0]!.der, format: "der", type: "pkcs8" });
  if (!leaf.checkPrivateKey(key)) throw new Error("key does not match the leaf certificate");
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!chain[i]!.verify(chain[i + 1]!.publicKey)) throw new Error(`chain[${i}] is not signed by chain[${i + 1}]`);
  }
  const roots = bundleBlocks.map((block) => new X509Certificate(block.der));
  const top = chain[chain.length - 1]!;
  if (!roots.some((root) => top.checkIssued(root) && top.verify(root.publicKey))) throw new Error("chain does not verify against the bundle");
  const uris = (leaf.subjectAltName ?? "").split(", ").filter((name) => name.startsWith("URI:"));
  if (uris.length !== 1) throw new Error(`leaf has ${uris.length} URI SANs`);
  return { spiffeId: uris[0]!.slice(4), serialNumber: leaf.serialNumber, chainLength: chain.length, validTo: leaf.validTo };
}

/** Reads the files of a kubernetes-tls volume and checks them. */
export async function readVolumeIdentity(
  targetPath: string,
  names = { cert: "tls.crt", key: "tls.key", bundle: "ca.crt" },
): Promise<CheckedIdentity> {
  const [cert, key, bundle] = await Promise.all([
    readFile(join(targetPath, names.cert), "utf8"),
    readFile(join(targetPath, names.key), "utf8"),
    readFile(join(targetPath, names.bundle), "utf8"),
  ]);
  return checkIdentity(cert, key, bundle);
}

/** The names a pod sees in a volume (the `..data` / `..snap-*` machinery left out), sorted. */
export async function visibleFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => !name.startsWith("..")).sort();
}
