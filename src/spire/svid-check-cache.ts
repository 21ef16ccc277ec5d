import { createHash } from "node:crypto";

/** What checking one SVID's chain and key found, apart from expiry (which depends on the time). */
export type SvidCheck = { ok: true; serialNumber: string; notAfterMs: number; notAfter: string } | { ok: false; reason: string };

/**
 * Outcomes of the X.509 checks by SVID content, so an SVID the agent sends on many streams at
 * once (the replicas of one workload share an entry, so a rotation pushes the same SVID to each
 * of their volumes) is parsed and its key matched once. The key is a hash of everything the
 * checks read (SPIFFE ID, every certificate, the private key): a changed byte is a new entry,
 * never a stale answer. Holds no key material, and at most `capacity` entries, least recently
 * used dropped first.
 */
export class SvidCheckCache {
  private readonly entries = new Map<string, SvidCheck>();

  constructor(private readonly capacity = 2048) {}

  check(spiffeId: string, certChain: readonly Uint8Array[], key: Uint8Array, run: () => SvidCheck): SvidCheck {
    const hash = createHash("sha256").update(spiffeId).update("\0");
    // Lengths first, so the same bytes split differently between certificates never collide.
    hash.update(`${certChain.map((der) => der.length).join(",")}\0${key.length}\0`);
    for (const der of certChain) hash.update(der);
    const contentKey = hash.update(key).digest("base64");
    const known = this.entries.get(contentKey);
    if (known) {
      this.entries.delete(contentKey);
      this.entries.set(contentKey, known);
      return known;
    }
    const result = run();
    this.entries.set(contentKey, result);
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
    return result;
  }

  get size(): number {
    return this.entries.size;
  }
}
