/** One DER element: its tag, where its content starts, and where the element ends. */
export interface DerElement {
  tag: number;
  contentStart: number;
  end: number;
}

/** Reads the DER element at `offset` (single-byte tags, definite lengths); throws if it is truncated. */
export function readDerElement(bytes: Uint8Array, offset: number, limit = bytes.length): DerElement {
  const tag = bytes[offset];
  const first = bytes[offset + 1];
  if (tag === undefined || first === undefined || offset + 2 > limit) throw new Error(`byte ${offset}: truncated DER header`);
  let length: number;
  let header: number;
  if (first < 0x80) {
    length = first;
    header = 2;
  } else {
    const lengthBytes = first & 0x7f;
    if (lengthBytes === 0 || lengthBytes > 4) throw new Error(`byte ${offset}: unsupported DER length`);
    length = 0;
    for (let i = 0; i < lengthBytes; i++) {
      const byte = bytes[offset + 2 + i];
      if (byte === undefined) throw new Error(`byte ${offset}: truncated DER length`);
      length = length * 256 + byte;
    }
    header = 2 + lengthBytes;
  }
  const end = offset + header + length;
  if (end > limit) throw new Error(`byte ${offset}: DER element runs past its container`);
  return { tag, contentStart: offset + header, end };
}

/** The elements directly inside a constructed element (e.g. a SEQUENCE's fields). */
export function derChildren(bytes: Uint8Array, parent: DerElement): DerElement[] {
  const children: DerElement[] = [];
  for (let offset = parent.contentStart; offset < parent.end; ) {
    const child = readDerElement(bytes, offset, parent.end);
    children.push(child);
    offset = child.end;
  }
  return children;
}

/**
 * Splits concatenated DER certificates (the agent's bundle encoding) into single certificates by
 * reading each outer SEQUENCE header. Throws on anything that is not a well-formed sequence run.
 */
export function splitDerCertificates(bytes: Uint8Array): Uint8Array[] {
  const certificates: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const element = readDerElement(bytes, offset);
    if (element.tag !== 0x30) throw new Error(`bundle byte ${offset}: expected a DER SEQUENCE`);
    certificates.push(bytes.subarray(offset, element.end));
    offset = element.end;
  }
  return certificates;
}
