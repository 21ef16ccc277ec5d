/**
 * SPIFFE trust domain names (SPIFFE-ID spec §2.1): lowercase letters, digits, dots, dashes and
 * underscores. The agent's names become file names in the volume (`<td>.trust-bundle.pem`,
 * `<td>.jwt-bundle.json`), so anything else — `/`, `..`, upper case, control characters — is
 * refused where it enters. Decided beyond the spec: at most 255 characters (a DNS name's limit,
 * which real trust domains are), and no leading dot, since `..`-prefixed names are the snapshot
 * writer's own (`..data`, `..snap-*`) and no DNS-style name starts with a dot.
 */
const trustDomainName = /^[a-z0-9_-][a-z0-9._-]{0,254}$/;

export function isTrustDomainName(name: string): boolean {
  return trustDomainName.test(name);
}

/** The trust domain of a "spiffe://<td>" key (the agent's bundle maps, federates_with), or undefined if it is not a valid one. */
export function trustDomainOfKey(key: string): string | undefined {
  const name = key.startsWith("spiffe://") ? key.slice("spiffe://".length) : key;
  return isTrustDomainName(name) ? name : undefined;
}
