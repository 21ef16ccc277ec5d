import type { X509Identity } from "../spire/x509-identity.js";
import { certificatesToPem, toPem } from "./pem.js";
import type { SnapshotFile } from "./snapshot-file.js";

/** `tls.crt` (leaf + intermediates), `tls.key` (PKCS#8), `ca.crt` (the trust bundle). */
export function renderKubernetesTls(identity: X509Identity, bundle: readonly Uint8Array[]): SnapshotFile[] {
  return [
    { name: "tls.crt", content: certificatesToPem(identity.certChainDer), secret: false },
    { name: "tls.key", content: toPem("PRIVATE KEY", identity.keyPkcs8Der), secret: true },
    { name: "ca.crt", content: certificatesToPem(bundle), secret: false },
  ];
}
