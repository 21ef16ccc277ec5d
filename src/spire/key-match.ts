import { createECDH, createPrivateKey, type X509Certificate } from "node:crypto";
import { derChildren, readDerElement, type DerElement } from "./der.js";

const ecPublicKeyOid = "2a8648ce3d0201";
/** Named-curve OIDs (content bytes) → OpenSSL curve names, for the curves SPIRE issues SVID keys on. */
const ecCurves: Record<string, string> = {
  "2a8648ce3d030107": "prime256v1",
  "2b81040022": "secp384r1",
  "2b81040023": "secp521r1",
};

const hex = (bytes: Uint8Array, element: DerElement) => Buffer.from(bytes.subarray(element.contentStart, element.end)).toString("hex");
const content = (bytes: Uint8Array, element: DerElement) => bytes.subarray(element.contentStart, element.end);

interface EcPrivateKey {
  curveOid: string;
  curve: string;
  scalar: Uint8Array;
  /** The public point the key carries itself ([1] publicKey), when it does. */
  embeddedPoint?: Uint8Array;
}

/**
 * The parts of a PKCS#8 EC key in exactly the shape SPIRE (Go's x509.MarshalPKCS8PrivateKey)
 * and OpenSSL write; undefined for anything else, which then goes through OpenSSL's decoder.
 */
function ecPrivateKey(pkcs8: Uint8Array): EcPrivateKey | undefined {
  const top = readDerElement(pkcs8, 0);
  if (top.tag !== 0x30 || top.end !== pkcs8.length) return undefined;
  const fields = derChildren(pkcs8, top);
  const [version, algorithm, privateKey, attributes] = fields;
  if (fields.length > 4 || (attributes && attributes.tag !== 0xa0)) return undefined;
  if (version?.tag !== 0x02 || hex(pkcs8, version) !== "00" || algorithm?.tag !== 0x30 || privateKey?.tag !== 0x04) return undefined;
  const algorithmFields = derChildren(pkcs8, algorithm);
  const [oid, parameters] = algorithmFields;
  if (algorithmFields.length !== 2 || oid?.tag !== 0x06 || hex(pkcs8, oid) !== ecPublicKeyOid || parameters?.tag !== 0x06) return undefined;
  const curveOid = hex(pkcs8, parameters);
  const curve = ecCurves[curveOid];
  const ecKey = readDerElement(pkcs8, privateKey.contentStart, privateKey.end);
  if (!curve || ecKey.tag !== 0x30 || ecKey.end !== privateKey.end) return undefined;
  const [ecVersion, scalar, ...optional] = derChildren(pkcs8, ecKey);
  if (ecVersion?.tag !== 0x02 || hex(pkcs8, ecVersion) !== "01" || scalar?.tag !== 0x04) return undefined;
  let embeddedPoint: Uint8Array | undefined;
  let lastTag = 0;
  for (const field of optional) {
    // [0] parameters, then [1] publicKey, each at most once and in that order.
    if (field.tag <= lastTag || (field.tag !== 0xa0 && field.tag !== 0xa1)) return undefined;
    lastTag = field.tag;
    const inner = derChildren(pkcs8, field);
    if (inner.length !== 1) return undefined;
    if (field.tag === 0xa0 && (inner[0]!.tag !== 0x06 || hex(pkcs8, inner[0]!) !== curveOid)) return undefined;
    if (field.tag === 0xa1) {
      embeddedPoint = bitStringBytes(pkcs8, inner[0]!);
      if (!embeddedPoint) return undefined;
    }
  }
  return { curveOid, curve, scalar: content(pkcs8, scalar), ...(embeddedPoint ? { embeddedPoint } : {}) };
}

/** The curve and uncompressed public point of a certificate's EC SubjectPublicKeyInfo; undefined otherwise. */
function ecPublicKey(certificate: Uint8Array): { curveOid: string; point: Uint8Array } | undefined {
  const top = readDerElement(certificate, 0);
  const tbs = derChildren(certificate, top)[0];
  if (top.tag !== 0x30 || tbs?.tag !== 0x30) return undefined;
  const fields = derChildren(certificate, tbs);
  // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo; after [0] version when present.
  const spki = fields[(fields[0]?.tag === 0xa0 ? 1 : 0) + 5];
  if (spki?.tag !== 0x30) return undefined;
  const spkiFields = derChildren(certificate, spki);
  const [algorithm, bits] = spkiFields;
  if (spkiFields.length !== 2 || algorithm?.tag !== 0x30 || bits?.tag !== 0x03) return undefined;
  const [oid, parameters] = derChildren(certificate, algorithm);
  if (oid?.tag !== 0x06 || hex(certificate, oid) !== ecPublicKeyOid || parameters?.tag !== 0x06) return undefined;
  const point = bitStringBytes(certificate, bits);
  return point ? { curveOid: hex(certificate, parameters), point } : undefined;
}

/** A BIT STRING's bytes when it has no unused bits and holds an uncompressed point (0x04 ...). */
function bitStringBytes(bytes: Uint8Array, element: DerElement): Uint8Array | undefined {
  if (element.tag !== 0x03 || bytes[element.contentStart] !== 0 || bytes[element.contentStart + 1] !== 0x04) return undefined;
  return bytes.subarray(element.contentStart + 1, element.end);
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
  const key = parsedOrUndefined(() => ecPrivateKey(keyPkcs8Der));
  const certificateKey = parsedOrUndefined(() => ecPublicKey(leafDer));
  if (key && certificateKey) {
    if (key.curveOid !== certificateKey.curveOid) return false;
    const ecdh = createECDH(key.curve);
    // Throws for a scalar that is not a valid private key on the curve.
    ecdh.setPrivateKey(key.scalar);
    const derived = ecdh.getPublicKey();
    // A key whose own public point is not its scalar's would be read differently by OpenSSL.
    if (key.embeddedPoint && Buffer.compare(derived, key.embeddedPoint) !== 0) return false;
    return Buffer.compare(derived, certificateKey.point) === 0;
  }
  const privateKey = createPrivateKey({ key: Buffer.from(keyPkcs8Der), format: "der", type: "pkcs8" });
  return leaf.checkPrivateKey(privateKey);
}
