/** PEM-encodes DER bytes under the given label ("CERTIFICATE", "PRIVATE KEY"). */
export function toPem(label: string, der: Uint8Array): string {
  const base64 = Buffer.from(der).toString("base64");
  const lines = base64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

export function certificatesToPem(ders: readonly Uint8Array[]): string {
  return ders.map((der) => toPem("CERTIFICATE", der)).join("");
}
