// Command go-spiffe-checker reads a volume's files with go-spiffe v2, the way a Go workload that
// is handed SPIFFE files (instead of the Workload API) would, and prints what it found as JSON.
// Any rejection exits non-zero with go-spiffe's reason on stderr.
//
//	go-spiffe-checker svid <cert-file> <key-file>
//	go-spiffe-checker bundle <trust-domain> <bundle-file>
//	go-spiffe-checker verify <cert-file> <trust-domain>=<bundle-file>...
//	go-spiffe-checker mtls <server-dir-spec> <client-dir-spec>
//
// A dir spec is "<cert-file>,<key-file>,<authorized-peer-id>,<trust-domain>=<bundle-file>[,...]":
// mtls runs a TLS handshake over loopback with tlsconfig.MTLSServerConfig/MTLSClientConfig, each
// side authorizing exactly the given peer ID against its own bundle set.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: go-spiffe-checker svid|bundle|verify|mtls ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "svid":
		need(args, 2)
		svid, err := x509svid.Load(args[0], args[1])
		check(err, "x509svid.Load")
		print(map[string]any{"id": svid.ID.String(), "serial": fmt.Sprintf("%X", svid.Certificates[0].SerialNumber), "chainLength": len(svid.Certificates)})
	case "bundle":
		need(args, 2)
		td, err := spiffeid.TrustDomainFromString(args[0])
		check(err, "trust domain")
		bundle, err := x509bundle.Load(td, args[1])
		check(err, "x509bundle.Load")
		print(map[string]any{"trustDomain": bundle.TrustDomain().String(), "authorities": len(bundle.X509Authorities())})
	case "verify":
		if len(args) < 2 {
			fail("usage: verify <cert-file> <trust-domain>=<bundle-file>...")
		}
		chain := parseChain(args[0])
		id, _, err := x509svid.Verify(chain, bundleSet(args[1:]))
		check(err, "x509svid.Verify")
		print(map[string]any{"id": id.String()})
	case "mtls":
		need(args, 2)
		print(handshake(parseSpec(args[0]), parseSpec(args[1])))
	default:
		fail("unknown command %q", os.Args[1])
	}
}

type spec struct {
	svid    *x509svid.SVID
	peer    spiffeid.ID
	bundles *x509bundle.Set
}

func parseSpec(text string) spec {
	parts := strings.Split(text, ",")
	if len(parts) < 4 {
		fail("dir spec needs <cert>,<key>,<peer-id>,<td>=<bundle>...: %q", text)
	}
	svid, err := x509svid.Load(parts[0], parts[1])
	check(err, "x509svid.Load")
	peer, err := spiffeid.FromString(parts[2])
	check(err, "peer id")
	return spec{svid: svid, peer: peer, bundles: bundleSet(parts[3:])}
}

func handshake(server, client spec) map[string]any {
	listener, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server.svid, server.bundles, tlsconfig.AuthorizeID(server.peer)))
	check(err, "listen")
	defer listener.Close()
	serverSaw := make(chan string, 1)
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			serverSaw <- "accept: " + err.Error()
			return
		}
		defer conn.Close()
		tlsConn := conn.(*tls.Conn)
		if err := tlsConn.Handshake(); err != nil {
			serverSaw <- "server handshake: " + err.Error()
			return
		}
		id, err := x509svid.IDFromCert(tlsConn.ConnectionState().PeerCertificates[0])
		if err != nil {
			serverSaw <- "peer id: " + err.Error()
			return
		}
		_, _ = io.WriteString(conn, "pong\n")
		serverSaw <- id.String()
	}()
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsDialer := tls.Dialer{NetDialer: dialer, Config: tlsconfig.MTLSClientConfig(client.svid, client.bundles, tlsconfig.AuthorizeID(client.peer))}
	conn, err := tlsDialer.DialContext(ctx, "tcp", listener.Addr().String())
	check(err, "client handshake")
	defer conn.Close()
	reply := make([]byte, 5)
	_, err = io.ReadFull(conn, reply)
	seen := <-serverSaw
	check(err, "read reply (server side: "+seen+")")
	state := conn.(*tls.Conn).ConnectionState()
	serverID, err := x509svid.IDFromCert(state.PeerCertificates[0])
	check(err, "server id")
	return map[string]any{"serverSawClient": seen, "clientSawServer": serverID.String(), "tlsVersion": tls.VersionName(state.Version)}
}

func bundleSet(specs []string) *x509bundle.Set {
	set := x509bundle.NewSet()
	for _, entry := range specs {
		name, file, ok := strings.Cut(entry, "=")
		if !ok {
			fail("bundle spec must be <trust-domain>=<file>: %q", entry)
		}
		td, err := spiffeid.TrustDomainFromString(name)
		check(err, "trust domain")
		bundle, err := x509bundle.Load(td, file)
		check(err, "x509bundle.Load")
		set.Add(bundle)
	}
	return set
}

func parseChain(file string) []*x509.Certificate {
	data, err := os.ReadFile(file)
	check(err, "read")
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		check(err, "parse certificate")
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		fail("no certificate in %s", file)
	}
	return chain
}

func need(args []string, count int) {
	if len(args) != count {
		fail("expected %d arguments, got %d", count, len(args))
	}
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func print(value any) {
	out, _ := json.Marshal(value)
	fmt.Println(string(out))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go-spiffe-checker: "+format+"\n", args...)
	os.Exit(1)
}
