import { createECDH, createPrivateKey, type X509Certificate } from "node:crypto";
import { derChildren, readDerElement } from "./der.js";

const ecPublicKeyOid = "2a8648ce3d0201";
/** Named-curve OIDs (content bytes) → OpenSSL curve names, for the curves SPIRE issues SVID keys on. */
const ecCurves: Record<string, string> = {
  "2a8648ce3d030107": "prime256v1",
  "2b81040022": "secp384r1",
  "2b81040023": "secp521r1",
};

const hex = (bytes: Uint8Array, element: { contentStart: number; end: number }) => Buffer.from(bytes.subarray(element.contentStart, element.end)).toString("hex");

/** The curve and private scalar of a PKCS#8 EC key; undefined for any other key type or shape. */
function ecPrivateScalar(pkcs8: Uint8Array): { curve: string; scalar: Uint8Array } | undefined {
  const top = readDerElement(pkcs8, 0);
  if (top.tag !== 0x30 || top.end !== pkcs8.length) return undefined;
  const [version, algorithm, privateKey] = derChildren(pkcs8, top);
  if (version?.tag !== 0x02 || algorithm?.tag !== 0x30 || privateKey?.tag !== 0x04) return undefined;
  const [oid, parameters] = derChildren(pkcs8, algorithm);
  if (oid?.tag !== 0x06 || hex(pkcs8, oid) !== ecPublicKeyOid || parameters?.tag !== 0x06) return undefined;
  const curve = ecCurves[hex(pkcs8, parameters)];
  const ecKey = readDerElement(pkcs8, privateKey.contentStart, privateKey.end);
  if (!curve || ecKey.tag !== 0x30 || ecKey.end !== privateKey.end) return undefined;
  const [ecVersion, scalar] = derChildren(pkcs8, ecKey);
  if (ecVersion?.tag !== 0x02 || scalar?.tag !== 0x04) return undefined;
  return { curve, scalar: pkcs8.subarray(scalar.contentStart, scalar.end) };
}

/** A certificate's uncompressed EC public point (SubjectPublicKeyInfo's BIT STRING); undefined otherwise. */
function ecPublicPoint(certificate: Uint8Array): Uint8Array | undefined {
  const top = readDerElement(certificate, 0);
  const tbs = derChildren(certificate, top)[0];
  if (top.tag !== 0x30 || tbs?.tag !== 0x30) return undefined;
  const fields = derChildren(certificate, tbs);
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo; after [0] version when present.
  const spki = fields[(fields[0]?.tag === 0xa0 ? 1 : 0) + 5];
  if (spki?.tag !== 0x30) return undefined;
  const bits = derChildren(certificate, spki)[1];
  if (bits?.tag !== 0x03 || certificate[bits.contentStart] !== 0 || certificate[bits.contentStart + 1] !== 0x04) return undefined;
  return certificate.subarray(bits.contentStart + 1, bits.end);
}

function parsedOrUndefined<T>(parse: () => T | undefined): T | undefined {
  try {
    return parse();
  } catch {
    return undefined;
  }
}

/**
 * Whether a PKCS#8 private key belongs to the certificate. For EC keys (SPIRE's default) the
 * public point is derived from the private scalar and compared with the certificate's, which
 * takes a tenth of the time of OpenSSL's PKCS#8 decoder and matters when hundreds of volumes
 * rotate at once; any other key goes through createPrivateKey and checkPrivateKey.
 */
export function keyMatchesCertificate(leaf: X509Certificate, leafDer: Uint8Array, keyPkcs8Der: Uint8Array): boolean {
  const ecKey = parsedOrUndefined(() => ecPrivateScalar(keyPkcs8Der));
  const point = parsedOrUndefined(() => ecPublicPoint(leafDer));
  if (ecKey && point) {
    const ecdh = createECDH(ecKey.curve);
    // Throws for a scalar that is not a valid private key on the curve.
    ecdh.setPrivateKey(ecKey.scalar);
    return Buffer.compare(ecdh.getPublicKey(), point) === 0;
  }
  const key = createPrivateKey({ key: Buffer.from(keyPkcs8Der), format: "der", type: "pkcs8" });
  return leaf.checkPrivateKey(key);
}
