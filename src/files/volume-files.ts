import type { X509Identity } from "../spire/x509-identity.js";
import { envoySdsResponse, type EnvoyValidator } from "./envoy-sds.js";
import { bundleToPem, certificatesToPem, toPem } from "./pem.js";
import type { SnapshotFile } from "./snapshot-file.js";

/** Everything one snapshot is made from. */
export interface SnapshotInput {
  identity: X509Identity;
  allIdentities: readonly X509Identity[];
  /** X.509 trust bundles by trust domain name. */
  bundles: ReadonlyMap<string, readonly Uint8Array[]>;
  /** Federated trust domain names (without spiffe://) the workload may use. */
  federatesWith: readonly string[];
  /** JWT-SVID per audience. */
  jwtTokens: ReadonlyMap<string, string>;
  /** JWKS JSON by trust domain name. */
  jwtBundles: ReadonlyMap<string, string>;
  /** Needed (loadPkcs12Writers) when the volume asks for keystores. */
  pkcs12?: Pkcs12Writers;
}

/** The PKCS#12 keystore and truststore writers. */
export type Pkcs12Writers = Pick<typeof import("./pkcs12.js"), "pkcs12Keystore" | "pkcs12Truststore">;

let pkcs12Writers: Promise<Pkcs12Writers> | undefined;

/**
 * Loads the PKCS#12 writers on first use: they pull in the ASN.1 libraries (about 10 MB of RSS)
 * that only volumes with `csi.spire.io/keystore-password` need, so a driver without such volumes
 * never holds them.
 */
export function loadPkcs12Writers(): Promise<Pkcs12Writers> {
  pkcs12Writers ??= import("./pkcs12.js");
  return pkcs12Writers;
}

function requirePkcs12(writers: Pkcs12Writers | undefined): Pkcs12Writers {
  if (!writers) throw new Error("rendering keystores needs the PKCS#12 writers; load them with loadPkcs12Writers() first");
  return writers;
}

export type Layout = "kubernetes-tls" | "spiffe-helper" | "spiffe-fs";

/** What a volume asked for in its files (validated from its csi.spire.io/* attributes). */
export interface LayoutOptions {
  layout: Layout;
  files: { cert: string; key: string; bundle: string; credential: string };
  federatedBundles: "files" | "merge" | "none";
  bundleIntermediates: boolean;
  allSvids: boolean;
  /** One token file per audience. */
  jwt: { audience: string; file: string }[];
  envoySds: { file: string; certSecret: string; caSecret: string; validator: EnvoyValidator } | undefined;
  /** PKCS#12 keystore.p12 and truststore.p12 (for Java), with this password. */
  keystore: { password: string } | undefined;
  /** Only the trust bundles, for clients that verify SPIFFE peers but have no SVID of their own. */
  bundleOnly: boolean;
}

export const keystoreFileName = "keystore.p12";
export const truststoreFileName = "truststore.p12";

export function trustBundleFileName(trustDomain: string): string {
  return `${trustDomain}.trust-bundle.pem`;
}

interface FederatedBundle {
  trustDomain: string;
  certs: readonly Uint8Array[];
}

/**
 * The trust bundle files of a layout (and truststore.p12 when asked for): the own trust domain's certificates in the layout's bundle
 * file (spiffe-fs: one file per trust domain, never merged), the federated ones merged into it or
 * written each to its own file, as `federated-bundles` says.
 */
function trustBundleFiles(
  attributes: LayoutOptions,
  ownTrustDomain: string,
  own: readonly Uint8Array[],
  intermediates: readonly Uint8Array[],
  federated: readonly FederatedBundle[],
  pkcs12: Pkcs12Writers | undefined,
): SnapshotFile[] {
  const files: SnapshotFile[] = [];
  const ownPem = bundleToPem(own) + certificatesToPem(intermediates);
  if (attributes.layout === "spiffe-fs") {
    files.push({ name: trustBundleFileName(ownTrustDomain), content: ownPem, secret: false });
  } else {
    const merged = attributes.federatedBundles === "merge" ? federated.map((entry) => bundleToPem(entry.certs)).join("") : "";
    files.push({ name: attributes.files.bundle, content: ownPem + merged, secret: false });
  }
  if (attributes.federatedBundles === "files") {
    for (const entry of federated) files.push({ name: trustBundleFileName(entry.trustDomain), content: bundleToPem(entry.certs), secret: false });
  }
  if (attributes.keystore) {
    const trusted = attributes.federatedBundles === "none" ? [] : federated;
    files.push({ name: truststoreFileName, content: requirePkcs12(pkcs12).pkcs12Truststore([{ trustDomain: ownTrustDomain, certs: [...own, ...intermediates] }, ...trusted], attributes.keystore.password), secret: false });
  }
  return files;
}

/**
 * The files of a bundle-only volume. With no SVID there is no federates_with list, so every
 * other trust domain the agent holds a bundle for counts as federated.
 */
export function renderBundleOnlyFiles(
  attributes: LayoutOptions,
  ownTrustDomain: string,
  bundles: ReadonlyMap<string, readonly Uint8Array[]>,
  pkcs12?: Pkcs12Writers,
): SnapshotFile[] {
  const federated = [...bundles]
    .filter(([trustDomain]) => trustDomain !== ownTrustDomain)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([trustDomain, certs]) => ({ trustDomain, certs }));
  return trustBundleFiles(attributes, ownTrustDomain, bundles.get(ownTrustDomain) ?? [], [], federated, pkcs12);
}

/**
 * Renders the files of one volume for its layout and options. All of them go into one atomic
 * snapshot, so a reader always finds a key, its certificate, the bundles, the JWTs and the Envoy
 * SDS file of the same moment.
 */
export function renderVolumeFiles(attributes: LayoutOptions, input: SnapshotInput): SnapshotFile[] {
  const { identity } = input;
  const own = input.bundles.get(identity.trustDomain) ?? [];
  const federated = input.federatesWith
    .filter((trustDomain) => trustDomain !== identity.trustDomain)
    .map((trustDomain) => ({ trustDomain, certs: input.bundles.get(trustDomain) }))
    .filter((entry): entry is FederatedBundle => entry.certs !== undefined);
  const intermediates = attributes.bundleIntermediates ? identity.certChainDer.slice(1) : [];
  const keyPem = toPem("PRIVATE KEY", identity.keyPkcs8Der);
  const chainPem = certificatesToPem(identity.certChainDer);
  const files: SnapshotFile[] = [];

  if (attributes.layout === "spiffe-fs") {
    // SPIFFE Filesystem Delivery: the key block first, then the chain leaf-to-root.
    files.push({ name: attributes.files.credential, content: keyPem + chainPem, secret: true });
  } else {
    files.push({ name: attributes.files.cert, content: chainPem, secret: false });
    files.push({ name: attributes.files.key, content: keyPem, secret: true });
  }
  files.push(...trustBundleFiles(attributes, identity.trustDomain, own, intermediates, federated, input.pkcs12));
  if (attributes.keystore) {
    files.push({ name: keystoreFileName, content: requirePkcs12(input.pkcs12).pkcs12Keystore(identity.keyPkcs8Der, identity.certChainDer, attributes.keystore.password), secret: true });
  }

  if (attributes.allSvids) {
    const index = input.allIdentities.map((svid, i) => {
      files.push({ name: `svid-${i}.crt`, content: certificatesToPem(svid.certChainDer), secret: false });
      files.push({ name: `svid-${i}.key`, content: toPem("PRIVATE KEY", svid.keyPkcs8Der), secret: true });
      return { spiffeId: svid.spiffeId, hint: svid.hint, expiresAt: svid.expiresAt, certFile: `svid-${i}.crt`, keyFile: `svid-${i}.key` };
    });
    files.push({ name: "svids.json", content: `${JSON.stringify({ svids: index }, null, 2)}\n`, secret: false });
  }

  for (const { audience, file } of attributes.jwt) {
    const token = input.jwtTokens.get(audience);
    if (token) files.push({ name: file, content: token, secret: true });
  }
  if (attributes.jwt.length > 0) {
    for (const [trustDomain, jwks] of input.jwtBundles) {
      if (trustDomain === identity.trustDomain || input.federatesWith.includes(trustDomain)) {
        files.push({ name: `${trustDomain}.jwt-bundle.json`, content: jwks, secret: false });
      }
    }
  }

  if (attributes.envoySds) {
    files.push({
      name: attributes.envoySds.file,
      content: envoySdsResponse({
        certSecret: attributes.envoySds.certSecret,
        caSecret: attributes.envoySds.caSecret,
        chainPem,
        keyPem,
        validator: attributes.envoySds.validator,
        bundles: [
          { trustDomain: identity.trustDomain, pem: bundleToPem(own) + certificatesToPem(intermediates) },
          ...federated.map(({ trustDomain, certs }) => ({ trustDomain, pem: bundleToPem(certs) })),
        ],
      }),
      secret: true,
    });
  }
  return files;
}
