import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";

/**
 * Finds key material, certificates and tokens in one line of output by decoding every byte string
 * the line could carry and parsing it, not by matching known prefixes: PEM of any label, DER (any
 * key type or certificate) as base64, base64url, hex, colon hex, and the JSON and inspect forms a
 * logged Buffer or Uint8Array takes (`{"type":"Buffer","data":[48,…]}`, `{"0":48,…}`,
 * `[48,130,…]`, `<Buffer 30 82 …>`), and JWTs whose header decodes to JSON with an `alg`.
 * Returns what it found, e.g. ["private key (DER as hex)"]; [] for a clean line.
 */
export function findSecrets(line: string): string[] {
  const found = new Set<string>();
  if (/-----BEGIN [A-Z0-9 ]+-----/.test(line)) found.add("PEM block");
  // A JSON-escaped multi-line value ("MIIB…\nMIIC…") is one run once its escapes are gone.
  const text = line.replace(/\\[nr]/g, "");
  for (const [encoding, bytes] of byteStrings(text)) {
    // The structure may start anywhere in the decoded bytes (a key glued to a word).
    for (let start = bytes.indexOf(0x30); start !== -1; start = bytes.indexOf(0x30, start + 1)) {
      const kind = derKind(bytes.subarray(start));
      if (kind) {
        found.add(`${kind} (DER as ${encoding})`);
        break;
      }
    }
  }
  for (const match of text.matchAll(/[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g)) {
    if (isJwtHeader(match[0].split(".")[0]!)) found.add("JWT");
  }
  return [...found];
}

/** Fewer bytes than this cannot be a key or certificate (Ed25519's public key SPKI is 44), while hashes and serial numbers (≤ 32) are. */
const minDerBytes = 40;

function* byteStrings(text: string): Generator<[string, Buffer]> {
  // Text glued in front of a key shifts its encoding, so every alignment is decoded.
  for (const [run] of text.matchAll(/[A-Za-z0-9+/]{54,}/g)) {
    for (let skip = 0; skip < 4; skip++) yield ["base64", Buffer.from(run.slice(skip), "base64")];
  }
  for (const [run] of text.matchAll(/[A-Za-z0-9_-]{54,}/g)) {
    for (let skip = 0; skip < 4; skip++) yield ["base64url", Buffer.from(run.slice(skip), "base64url")];
  }
  for (const [run] of text.matchAll(/[0-9a-fA-F]{80,}/g)) {
    for (let skip = 0; skip < 2; skip++) yield ["hex", Buffer.from(run.slice(skip, run.length - ((run.length - skip) % 2)), "hex")];
  }
  for (const [run] of text.matchAll(/(?:[0-9a-fA-F]{2}[: ]){39,}[0-9a-fA-F]{2}/g)) {
    yield ["separated hex", Buffer.from(run.replace(/[: ]/g, ""), "hex")];
  }
  for (const [run] of text.matchAll(/(?:\b\d{1,3}\s*,\s*){39,}\d{1,3}\b/g)) {
    const numbers = run.split(",").map((part) => Number(part.trim()));
    if (numbers.every((value) => value <= 255)) yield ["a byte array", Buffer.from(numbers)];
  }
  // JSON.stringify of a Uint8Array: {"0":48,"1":130,…}
  for (const [run] of text.matchAll(/(?:"\d+"\s*:\s*\d{1,3}\s*,\s*){39,}"\d+"\s*:\s*\d{1,3}/g)) {
    const numbers = [...run.matchAll(/"\d+"\s*:\s*(\d{1,3})/g)].map((match) => Number(match[1]));
    if (numbers.every((value) => value <= 255)) yield ["a typed array", Buffer.from(numbers)];
  }
}

/**
 * Names the DER structure the bytes hold: a private key, a public key or a certificate when
 * Node's parsers accept them, "ASN.1" when the bytes are well-formed DER (or a well-formed prefix
 * of it, e.g. a key cut off by a log line limit) that none of them takes. Undefined otherwise.
 */
function derKind(bytes: Buffer): string | undefined {
  if (bytes.length < minDerBytes || bytes[0] !== 0x30) return undefined;
  const extent = wellFormedExtent(bytes);
  if (!extent) return undefined;
  if (extent.truncated) return "ASN.1";
  const der = bytes.subarray(0, extent.length);
  for (const type of ["pkcs8", "sec1", "pkcs1"] as const) {
    try {
      createPrivateKey({ key: der, format: "der", type });
      return "private key";
    } catch {
      // Not this encoding.
    }
  }
  try {
    new X509Certificate(der);
    return "certificate";
  } catch {
    // Not a certificate.
  }
  for (const type of ["spki", "pkcs1"] as const) {
    try {
      createPublicKey({ key: der, format: "der", type });
      return "public key";
    } catch {
      // Not this encoding.
    }
  }
  return "ASN.1";
}

/**
 * Walks the TLVs from the start of the bytes. Returns how many bytes the outer SEQUENCE spans,
 * or that it is cut off, when every header read is well-formed and nested lengths fit their
 * parent; undefined as soon as one is not, which random bytes fail fast.
 */
function wellFormedExtent(bytes: Buffer): { length: number; truncated: boolean } | undefined {
  const outer = readHeader(bytes, 0);
  if (!outer || outer.tag !== 0x30) return undefined;
  const end = outer.contentStart + outer.length;
  if (end < minDerBytes) return undefined;
  const available = Math.min(end, bytes.length);
  if (!walk(bytes, outer.contentStart, available, end, 0)) return undefined;
  return { length: available, truncated: end > bytes.length };
}

const knownTags = new Set([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x30, 0x31, 0xa0, 0xa1, 0xa2, 0xa3, 0x80, 0x81, 0x82, 0x83, 0x86, 0x87, 0x88]);

function walk(bytes: Buffer, start: number, available: number, end: number, depth: number): boolean {
  let offset = start;
  while (offset < available) {
    const header = readHeader(bytes, offset);
    if (!header) return offset + 6 > bytes.length; // a header cut off by the end of the data
    if (!knownTags.has(header.tag)) return false;
    const childEnd = header.contentStart + header.length;
    if (childEnd > end) return false;
    const constructed = (header.tag & 0x20) !== 0;
    if (constructed && depth < 16 && !walk(bytes, header.contentStart, Math.min(childEnd, available), childEnd, depth + 1)) return false;
    offset = childEnd;
  }
  return true;
}

function readHeader(bytes: Buffer, offset: number): { tag: number; length: number; contentStart: number } | undefined {
  if (offset + 2 > bytes.length) return undefined;
  const tag = bytes[offset]!;
  const first = bytes[offset + 1]!;
  if (first < 0x80) return { tag, length: first, contentStart: offset + 2 };
  const lengthBytes = first & 0x7f;
  if (lengthBytes === 0 || lengthBytes > 3 || offset + 2 + lengthBytes > bytes.length) return undefined;
  let length = 0;
  for (let i = 0; i < lengthBytes; i++) length = length * 256 + bytes[offset + 2 + i]!;
  // DER uses the shortest length form.
  if (length < 0x80 || (lengthBytes > 1 && bytes[offset + 2] === 0)) return undefined;
  return { tag, length, contentStart: offset + 2 + lengthBytes };
}

function isJwtHeader(segment: string): boolean {
  try {
    const header = JSON.parse(Buffer.from(segment, "base64url").toString("utf8")) as unknown;
    return typeof header === "object" && header !== null && typeof (header as { alg?: unknown }).alg === "string";
  } catch {
    return false;
  }
}
