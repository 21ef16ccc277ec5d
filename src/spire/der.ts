/**
 * Splits concatenated DER certificates (the agent's bundle encoding) into single certificates by
 * reading each outer SEQUENCE header. Throws on anything that is not a well-formed sequence run.
 */
export function splitDerCertificates(bytes: Uint8Array): Uint8Array[] {
  const certificates: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (bytes[offset] !== 0x30) throw new Error(`bundle byte ${offset}: expected a DER SEQUENCE`);
    const first = bytes[offset + 1];
    if (first === undefined) throw new Error(`bundle byte ${offset}: truncated length`);
    let length: number;
    let header: number;
    if (first < 0x80) {
      length = first;
      header = 2;
    } else {
      const lengthBytes = first & 0x7f;
      if (lengthBytes === 0 || lengthBytes > 4) throw new Error(`bundle byte ${offset}: unsupported DER length`);
      length = 0;
      for (let i = 0; i < lengthBytes; i++) {
        const byte = bytes[offset + 2 + i];
        if (byte === undefined) throw new Error(`bundle byte ${offset}: truncated length`);
        length = length * 256 + byte;
      }
      header = 2 + lengthBytes;
    }
    const end = offset + header + length;
    if (end > bytes.length) throw new Error(`bundle byte ${offset}: certificate runs past the end`);
    certificates.push(bytes.subarray(offset, end));
    offset = end;
  }
  return certificates;
}
