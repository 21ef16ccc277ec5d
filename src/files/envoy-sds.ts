const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const spiffeValidatorType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/** How Envoy checks peer certificates (csi.spire.io/envoy-validator). */
export type EnvoyValidator = "spiffe" | "trusted-ca";

/**
 * An xDS DiscoveryResponse (JSON) with two `envoy.extensions.transport_sockets.tls.v3.Secret`
 * resources, for Envoy's file-based SDS (`path_config_source` with `watched_directory` on the
 * volume dir: the `..data` rename is the move Envoy watches for).
 *
 * The validation context uses Envoy's SPIFFE certificate validator with one entry per trust
 * domain, as SPIRE's own SDS does: a peer's chain is checked only against the bundle of the trust
 * domain in its SPIFFE ID, so a federated CA cannot vouch for an ID of our own domain. A plain
 * `trusted_ca` (every bundle merged) stays available for Envoy builds or configs that need it.
 */
export function envoySdsResponse(options: {
  certSecret: string;
  caSecret: string;
  chainPem: string;
  keyPem: string;
  validator: EnvoyValidator;
  /** Own trust domain first, then the federated ones. */
  bundles: readonly { trustDomain: string; pem: string }[];
}): string {
  const validationContext =
    options.validator === "spiffe"
      ? {
          custom_validator_config: {
            name: "envoy.tls.cert_validator.spiffe",
            typed_config: {
              "@type": spiffeValidatorType,
              trust_domains: options.bundles.map(({ trustDomain, pem }) => ({ name: trustDomain, trust_bundle: { inline_string: pem } })),
            },
          },
        }
      : { trusted_ca: { inline_string: options.bundles.map(({ pem }) => pem).join("") } };
  const response = {
    resources: [
      {
        "@type": secretType,
        name: options.certSecret,
        tls_certificate: {
          certificate_chain: { inline_string: options.chainPem },
          private_key: { inline_string: options.keyPem },
        },
      },
      { "@type": secretType, name: options.caSecret, validation_context: validationContext },
    ],
  };
  return `${JSON.stringify(response, null, 2)}\n`;
}
