// Package tlstest is test support for the TLS of meterd's clients (config, stream, store/clickhouse): a throwaway
// PKI written as PEM files in the test's temporary directory, as a config file names them, and a loopback TLS
// server that completes each handshake and reports what it saw. Only tests import it; no key is kept in the
// repository.
package tlstest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ClientCN is the common name of the client certificate the PKI issues.
const ClientCN = "meterd-client"

// PKI is a CA that issued a server certificate (for the server name given to NewPKI, localhost and 127.0.0.1)
// and a client certificate (CN ClientCN), and a second CA that issued nothing. Every certificate and key is a PEM
// file in a temporary directory.
type PKI struct {
	CAFile         string // the CA that issued both certificates
	WrongCAFile    string // a CA that did not issue the server's certificate
	ServerCertFile string
	ServerKeyFile  string // also a key that does not match the client certificate
	ClientCertFile string
	ClientKeyFile  string

	server tls.Certificate
	pool   *x509.CertPool // the CA, for the server's check of client certificates
}

// NewPKI generates the PKI, its server certificate for serverName.
func NewPKI(t testing.TB, serverName string) *PKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca, caKey, caPEM := newCA(t, "meterd test CA")
	_, _, wrongPEM := newCA(t, "some other CA")
	p := &PKI{CAFile: write("ca.pem", caPEM), WrongCAFile: write("wrong-ca.pem", wrongPEM), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	serverPEM, serverKeyPEM := issue(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: serverName},
		DNSNames: []string{serverName, "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	var err error
	if p.server, err = tls.X509KeyPair(serverPEM, serverKeyPEM); err != nil {
		t.Fatal(err)
	}
	p.ServerCertFile, p.ServerKeyFile = write("server.pem", serverPEM), write("server-key.pem", serverKeyPEM)
	clientPEM, clientKeyPEM := issue(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: ClientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	p.ClientCertFile, p.ClientKeyFile = write("client.pem", clientPEM), write("client-key.pem", clientKeyPEM)
	return p
}

func newKey(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// sign completes tmpl (serial, an hour either side of now) and signs it with parent's key.
func sign(t testing.TB, tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, []byte) {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, _ := newKey(t)
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	cert, certPEM := sign(t, tmpl, tmpl, &key.PublicKey, key)
	return cert, key, certPEM
}

func issue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, keyPEM := newKey(t)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	_, certPEM = sign(t, tmpl, ca, &key.PublicKey, caKey)
	return certPEM, keyPEM
}

// Handshake is what the server saw of one connection.
type Handshake struct {
	ServerName  string              // the client's SNI, on a completed handshake
	ClientCerts []*x509.Certificate // the certificates the client presented (verified against the CA), if any
	NotTLS      bool                // the first record was not a TLS handshake record (a client with TLS off)
	Err         error               // why the handshake failed
}

// Server is a loopback TLS server with the PKI's server certificate. It asks for a client certificate from the
// CA without requiring one, completes each handshake, reports it on Handshakes and closes the connection: the
// protocol after it (Kafka, ClickHouse) then fails, which these tests do not look at.
type Server struct {
	Addr       string // 127.0.0.1:port
	Port       string
	Handshakes <-chan Handshake // one per connection; dropped when the test has not taken 256 of them
}

// StartServer starts a Server, stopped when the test ends.
func (p *PKI) StartServer(t testing.TB) *Server {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{p.server},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: p.pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan Handshake, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = conn.Close() }()
				select {
				case seen <- handshake(conn.(*tls.Conn)):
				default: // the test has what it needs
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	return &Server{Addr: addr, Port: port, Handshakes: seen}
}

func handshake(conn *tls.Conn) Handshake {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		var rh tls.RecordHeaderError
		return Handshake{Err: err, NotTLS: errors.As(err, &rh) && rh.RecordHeader[0] != 0x16}
	}
	state := conn.ConnectionState()
	return Handshake{ServerName: state.ServerName, ClientCerts: state.PeerCertificates}
}

// Next waits up to timeout for the next handshake; false when none came.
func (s *Server) Next(timeout time.Duration) (Handshake, bool) {
	select {
	case hs := <-s.Handshakes:
		return hs, true
	case <-time.After(timeout):
		return Handshake{}, false
	}
}
