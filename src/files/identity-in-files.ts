import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { uriSubjectAltNames } from "../spire/x509-identity.js";
import type { LayoutOptions } from "./volume-files.js";

/** The X.509-SVID a volume's files hold, as its leaf certificate tells. */
export interface IdentityInFiles {
  spiffeId: string;
  serialNumber: string;
  /** Unix seconds: the leaf's notAfter. */
  expiresAt: number;
}

const firstCertificatePem = /-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?\n-----END CERTIFICATE-----\n/;

/**
 * Reads the leaf certificate of the snapshot a previous driver process left in `targetDir`, through
 * the layout's own file names (spiffe-fs: the credential file, key block first; otherwise the
 * certificate file). Undefined for bundle-only volumes, which hold no SVID. Throws when the file is
 * missing or holds no parsable leaf with one URI SAN: then what the files hold is unknown.
 */
export async function readIdentityInFiles(targetDir: string, attributes: LayoutOptions): Promise<IdentityInFiles | undefined> {
  if (attributes.bundleOnly) return undefined;
  const fileName = attributes.layout === "spiffe-fs" ? attributes.files.credential : attributes.files.cert;
  const text = await readFile(join(targetDir, fileName), "utf8");
  const pem = firstCertificatePem.exec(text)?.[0];
  if (!pem) throw new Error(`${fileName} holds no CERTIFICATE block`);
  const leaf = new X509Certificate(pem);
  const uris = uriSubjectAltNames(leaf);
  if (uris.length !== 1) throw new Error(`${fileName}: the leaf certificate has ${uris.length} URI SANs, a SPIFFE ID needs exactly one`);
  return { spiffeId: uris[0]!, serialNumber: leaf.serialNumber, expiresAt: Date.parse(leaf.validTo) / 1000 };
}
