// Command sds-checker decodes an Envoy file-based SDS file with Envoy's own API definitions
// (go-control-plane), the way Envoy's path_config_source does, and prints what it found. It exits
// non-zero when the file is not a DiscoveryResponse of envoy.extensions.transport_sockets.tls.v3.Secret
// resources, or when the expected secrets are missing or empty.
//
// Usage: sds-checker <file> <cert-secret-name> <ca-secret-name>
//
//	sds-checker -transport-socket <yaml-file>
//
// The second form decodes a listener's transport_socket (YAML, as in the README) strictly into
// envoy.config.core.v3.TransportSocket with a DownstreamTlsContext, validates both, and prints the
// SDS secret names and files it reads.
package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

type report struct {
	CertSecret     string         `json:"certSecret"`
	CaSecret       string         `json:"caSecret"`
	LeafURIs       []string       `json:"leafUris"`
	LeafSerial     string         `json:"leafSerial"`
	ChainLength    int            `json:"chainLength"`
	Validator      string         `json:"validator"`
	TrustedCAs     int            `json:"trustedCas"`
	TrustDomains   map[string]int `json:"trustDomains,omitempty"`
	KeyMatchesLeaf bool           `json:"keyMatchesLeaf"`
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-transport-socket" {
		checkTransportSocket(os.Args[2])
		return
	}
	if len(os.Args) != 4 {
		fail("usage: sds-checker <file> <cert-secret-name> <ca-secret-name>")
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("read: %v", err)
	}
	var response discoveryv3.DiscoveryResponse
	// Unknown fields are errors, as in Envoy's strict proto validation of config files.
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(data, &response); err != nil {
		fail("not a DiscoveryResponse: %v", err)
	}
	secrets := map[string]*tlsv3.Secret{}
	for i, resource := range response.GetResources() {
		var secret tlsv3.Secret
		if err := resource.UnmarshalTo(&secret); err != nil {
			fail("resources[%d] (%s) is not a tls.v3.Secret: %v", i, resource.GetTypeUrl(), err)
		}
		if err := secret.ValidateAll(); err != nil {
			fail("resources[%d] fails Envoy's validation rules: %v", i, err)
		}
		secrets[secret.GetName()] = &secret
	}
	certSecret, ok := secrets[os.Args[2]]
	if !ok || certSecret.GetTlsCertificate() == nil {
		fail("no tls_certificate secret named %q", os.Args[2])
	}
	caSecret, ok := secrets[os.Args[3]]
	if !ok || caSecret.GetValidationContext() == nil {
		fail("no validation_context secret named %q", os.Args[3])
	}
	chain := parseCerts(certSecret.GetTlsCertificate().GetCertificateChain().GetInlineString())
	validator, trustDomains, cas := validation(caSecret.GetValidationContext())
	if len(chain) == 0 || cas == 0 {
		fail("empty certificate chain or trusted CA")
	}
	key := certSecret.GetTlsCertificate().GetPrivateKey().GetInlineString()
	block, _ := pem.Decode([]byte(key))
	if block == nil || block.Type != "PRIVATE KEY" {
		fail("private_key is not a PKCS#8 PEM block")
	}
	privateKey, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		fail("private_key: %v", err)
	}
	signer, ok := privateKey.(crypto.Signer)
	if !ok {
		fail("private_key is not a signing key")
	}
	matches := signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey)
	if !matches {
		fail("private_key does not belong to the leaf certificate")
	}
	uris := []string{}
	for _, uri := range chain[0].URIs {
		uris = append(uris, uri.String())
	}
	out, _ := json.Marshal(report{
		CertSecret:     certSecret.GetName(),
		CaSecret:       caSecret.GetName(),
		LeafURIs:       uris,
		LeafSerial:     fmt.Sprintf("%X", chain[0].SerialNumber),
		ChainLength:    len(chain),
		Validator:      validator,
		TrustedCAs:     cas,
		TrustDomains:   trustDomains,
		KeyMatchesLeaf: matches,
	})
	fmt.Println(string(out))
}

// validation reads either a plain trusted_ca or Envoy's SPIFFE certificate validator, whose
// typed_config must be a valid SPIFFECertValidatorConfig with one non-empty bundle per trust domain.
func validation(context *tlsv3.CertificateValidationContext) (string, map[string]int, int) {
	custom := context.GetCustomValidatorConfig()
	if custom == nil {
		return "trusted-ca", nil, len(parseCerts(context.GetTrustedCa().GetInlineString()))
	}
	if custom.GetName() != "envoy.tls.cert_validator.spiffe" {
		fail("custom_validator_config.name is %q, not envoy.tls.cert_validator.spiffe", custom.GetName())
	}
	if context.GetTrustedCa() != nil {
		fail("trusted_ca next to the SPIFFE validator (Envoy rejects the combination)")
	}
	var config tlsv3.SPIFFECertValidatorConfig
	if err := custom.GetTypedConfig().UnmarshalTo(&config); err != nil {
		fail("typed_config is not a SPIFFECertValidatorConfig: %v", err)
	}
	if err := config.ValidateAll(); err != nil {
		fail("SPIFFECertValidatorConfig fails Envoy's validation rules: %v", err)
	}
	trustDomains := map[string]int{}
	total := 0
	for _, domain := range config.GetTrustDomains() {
		if _, seen := trustDomains[domain.GetName()]; seen {
			fail("trust domain %q listed twice", domain.GetName())
		}
		certs := parseCerts(domain.GetTrustBundle().GetInlineString())
		if len(certs) == 0 {
			fail("trust domain %q has an empty bundle", domain.GetName())
		}
		trustDomains[domain.GetName()] = len(certs)
		total += len(certs)
	}
	return "spiffe", trustDomains, total
}

func parseCerts(text string) []*x509.Certificate {
	var certs []*x509.Certificate
	rest := []byte(text)
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return certs
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fail("bad certificate: %v", err)
		}
		certs = append(certs, cert)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sds-checker: "+format+"\n", args...)
	os.Exit(1)
}

type sdsReference struct {
	Name           string `json:"name"`
	Path           string `json:"path"`
	WatchedDirPath string `json:"watchedDirectory"`
}

func checkTransportSocket(file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		fail("read: %v", err)
	}
	jsonData, err := yaml.YAMLToJSON(data)
	if err != nil {
		fail("not YAML: %v", err)
	}
	var wrapper struct {
		TransportSocket json.RawMessage `json:"transport_socket"`
	}
	if err := json.Unmarshal(jsonData, &wrapper); err != nil || wrapper.TransportSocket == nil {
		fail("no transport_socket key: %v", err)
	}
	var socket corev3.TransportSocket
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(wrapper.TransportSocket, &socket); err != nil {
		fail("not a TransportSocket: %v", err)
	}
	if err := socket.ValidateAll(); err != nil {
		fail("transport_socket fails Envoy's validation rules: %v", err)
	}
	var context tlsv3.DownstreamTlsContext
	if err := socket.GetTypedConfig().UnmarshalTo(&context); err != nil {
		fail("typed_config is not a DownstreamTlsContext: %v", err)
	}
	if err := context.ValidateAll(); err != nil {
		fail("DownstreamTlsContext fails Envoy's validation rules: %v", err)
	}
	common := context.GetCommonTlsContext()
	reference := func(config *tlsv3.SdsSecretConfig) sdsReference {
		source := config.GetSdsConfig().GetPathConfigSource()
		if source == nil {
			fail("secret %q is not read through path_config_source", config.GetName())
		}
		return sdsReference{Name: config.GetName(), Path: source.GetPath(), WatchedDirPath: source.GetWatchedDirectory().GetPath()}
	}
	var certs []sdsReference
	for _, config := range common.GetTlsCertificateSdsSecretConfigs() {
		certs = append(certs, reference(config))
	}
	validation := common.GetValidationContextSdsSecretConfig()
	if validation == nil {
		fail("no validation_context_sds_secret_config")
	}
	out, _ := json.Marshal(map[string]any{
		"requireClientCertificate": context.GetRequireClientCertificate().GetValue(),
		"certificates":             certs,
		"validationContext":        reference(validation),
	})
	fmt.Println(string(out))
}
