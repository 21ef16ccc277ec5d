/** PEM-encodes DER bytes under the given label ("CERTIFICATE", "PRIVATE KEY"). */
export function toPem(label: string, der: Uint8Array): string {
  const base64 = Buffer.from(der).toString("base64");
  const lines = base64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

export function certificatesToPem(ders: readonly Uint8Array[]): string {
  return ders.map((der) => toPem("CERTIFICATE", der)).join("");
}

/**
 * Keyed by the bundle's array itself: the bundle feed decodes every changed bundle into a new
 * array and never alters one it handed out, so an entry cannot outlive the bundle it renders.
 */
const bundlePems = new WeakMap<readonly Uint8Array[], string>();

/**
 * A trust bundle as PEM, encoded once per bundle however many volumes write it: a bundle
 * rotation or an SVID fan-out renders the same bundle into every volume of the trust domain.
 */
export function bundleToPem(bundle: readonly Uint8Array[]): string {
  let pem = bundlePems.get(bundle);
  if (pem === undefined) {
    pem = certificatesToPem(bundle);
    bundlePems.set(bundle, pem);
  }
  return pem;
}
