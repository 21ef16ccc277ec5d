const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/**
 * An xDS DiscoveryResponse (JSON) with two `envoy.extensions.transport_sockets.tls.v3.Secret`
 * resources, for Envoy's file-based SDS (`path_config_source` with `watched_directory` on the
 * volume dir: the `..data` rename is the move Envoy watches for).
 */
export function envoySdsResponse(options: {
  certSecret: string;
  caSecret: string;
  chainPem: string;
  keyPem: string;
  trustedCaPem: string;
}): string {
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
      {
        "@type": secretType,
        name: options.caSecret,
        validation_context: {
          trusted_ca: { inline_string: options.trustedCaPem },
        },
      },
    ],
  };
  return `${JSON.stringify(response, null, 2)}\n`;
}
