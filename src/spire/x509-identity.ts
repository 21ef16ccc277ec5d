import { X509Certificate } from "node:crypto";
import { isTrustDomainName, trustDomainOfKey } from "../config/trust-domain.js";
import { keyMatchesCertificate } from "./key-match.js";
import { SvidCheckCache, type SvidCheck } from "./svid-check-cache.js";
import type { SubscribeToX509SVIDsResponse } from "../gen/spire/api/agent/delegatedidentity/v1/delegatedidentity_pb.js";

/** One X.509-SVID from the agent that passed every check, ready to be written. */
export interface X509Identity {
  spiffeId: string;
  trustDomain: string;
  hint: string;
  /** DER certificates, leaf first. */
  certChainDer: Uint8Array[];
  keyPkcs8Der: Uint8Array;
  /** Unix seconds. */
  expiresAt: number;
  serialNumber: string;
}

export interface X509SvidSet {
  identities: X509Identity[];
  /** Federated trust domain names (without spiffe://), the valid ones only. */
  federatesWith: string[];
  /** How many federates_with entries were not valid trust domain names (dropped). */
  invalidFederations: number;
  /** SVIDs the agent sent that failed a check; they are never written. */
  rejected: { spiffeId: string; reason: string }[];
}

/** The URI SANs of a certificate; an X.509-SVID's leaf has exactly one, its SPIFFE ID. */
export function uriSubjectAltNames(cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? "")
    .split(", ")
    .filter((name) => name.startsWith("URI:"))
    .map((name) => name.slice(4));
}

/** One cache for the process: the same SVID on many volumes' streams is checked once. */
const sharedSvidChecks = new SvidCheckCache();

/** The checks that depend only on the SVID's bytes: the chain parses, the leaf names the SPIFFE ID, the key is the leaf's. */
function checkChainAndKey(spiffeId: string, certChain: readonly Uint8Array[], key: Uint8Array): SvidCheck {
  try {
    const leaf = new X509Certificate(certChain[0]!);
    for (const der of certChain.slice(1)) new X509Certificate(der);
    const uris = uriSubjectAltNames(leaf);
    if (uris.length !== 1 || uris[0] !== spiffeId) {
      return { ok: false, reason: `leaf URI SAN ${JSON.stringify(uris)} is not the SVID's SPIFFE ID` };
    }
    if (!keyMatchesCertificate(leaf, certChain[0]!, key)) return { ok: false, reason: "private key does not match the leaf certificate" };
    return { ok: true, serialNumber: leaf.serialNumber, notAfterMs: Date.parse(leaf.validTo), notAfter: leaf.validTo };
  } catch (error) {
    return { ok: false, reason: (error as Error).message };
  }
}

/**
 * Checks every SVID of a stream message: the chain parses, the leaf's URI SAN is the SVID's
 * SPIFFE ID, the key is PKCS#8 and belongs to the leaf, and the leaf has not expired. Data that
 * fails is rejected here so a volume keeps its last good snapshot instead of receiving it.
 */
export function parseX509SvidSet(response: SubscribeToX509SVIDsResponse, nowMs = Date.now(), checks = sharedSvidChecks): X509SvidSet {
  const identities: X509Identity[] = [];
  const rejected: X509SvidSet["rejected"] = [];
  for (const entry of response.x509Svids) {
    const svid = entry.x509Svid;
    const spiffeId = svid?.id ? `spiffe://${svid.id.trustDomain}${svid.id.path}` : "(no id)";
    try {
      if (!svid?.id) throw new Error("SVID has no SPIFFE ID");
      if (!isTrustDomainName(svid.id.trustDomain)) throw new Error("its trust domain is not a valid SPIFFE trust domain name");
      if (svid.certChain.length === 0) throw new Error("empty certificate chain");
      const checked = checks.check(spiffeId, svid.certChain, entry.x509SvidKey, () => checkChainAndKey(spiffeId, svid.certChain, entry.x509SvidKey));
      if (!checked.ok) throw new Error(checked.reason);
      if (checked.notAfterMs <= nowMs) throw new Error(`leaf expired at ${checked.notAfter}`);
      identities.push({
        spiffeId,
        trustDomain: svid.id.trustDomain,
        hint: svid.hint,
        certChainDer: svid.certChain,
        keyPkcs8Der: entry.x509SvidKey,
        expiresAt: Number(svid.expiresAt),
        serialNumber: checked.serialNumber,
      });
    } catch (error) {
      rejected.push({ spiffeId, reason: (error as Error).message });
    }
  }
  const federatesWith = response.federatesWith.map(trustDomainOfKey).filter((name): name is string => name !== undefined);
  const invalidFederations = response.federatesWith.length - federatesWith.length;
  return { identities, federatesWith, rejected, invalidFederations };
}
