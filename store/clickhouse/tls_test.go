package clickhouse

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
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/config"
)

// testPKI is a throwaway CA that issued a server certificate (clickhouse.test, localhost, 127.0.0.1) and a client
// certificate (CN meterd-client), and a second CA; the CAs and the client pair are PEM files, as the config file
// names them.
type testPKI struct {
	caFile, wrongCAFile   string
	clientCert, clientKey string
	server                tls.Certificate
	pool                  *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	newKey := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	sign := func(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, *x509.Certificate) {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert
	}
	newCA := func(serial int64, name string) ([]byte, *x509.Certificate, *ecdsa.PrivateKey) {
		key, _ := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, IsCA: true,
			BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		certPEM, cert := sign(tmpl, tmpl, &key.PublicKey, key)
		return certPEM, cert, key
	}
	caPEM, ca, caKey := newCA(1, "meterd test CA")
	wrongPEM, _, _ := newCA(2, "some other CA")
	p := &testPKI{caFile: write("ca.pem", caPEM), wrongCAFile: write("wrong-ca.pem", wrongPEM), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)

	serverKey, serverKeyPEM := newKey()
	serverPEM, _ := sign(&x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "clickhouse.test"},
		DNSNames: []string{"clickhouse.test", "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature},
		ca, &serverKey.PublicKey, caKey)
	var err error
	if p.server, err = tls.X509KeyPair(serverPEM, serverKeyPEM); err != nil {
		t.Fatal(err)
	}
	clientKey, clientKeyPEM := newKey()
	clientPEM, _ := sign(&x509.Certificate{SerialNumber: big.NewInt(4), Subject: pkix.Name{CommonName: "meterd-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature},
		ca, &clientKey.PublicKey, caKey)
	p.clientCert, p.clientKey = write("client.pem", clientPEM), write("client-key.pem", clientKeyPEM)
	return p
}

// handshake is what the test server saw of one connection.
type handshake struct {
	state tls.ConnectionState
	err   error
}

// startTLSServer listens on loopback, completes each TLS handshake (asking for a client certificate without
// requiring one), records it and closes the connection, so the ClickHouse protocol after it fails.
func startTLSServer(t *testing.T, p *testPKI) (string, <-chan handshake) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{p.server},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: p.pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan handshake, 64)
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
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				tc := conn.(*tls.Conn)
				hs := handshake{err: tc.HandshakeContext(ctx)}
				if hs.err == nil {
					hs.state = tc.ConnectionState()
				}
				select {
				case seen <- hs:
				default:
				}
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String(), seen
}

// TestConnectTLS connects to a local TLS server with the TLS that `store.clickhouse.tls` loads into (the same
// config.ClientTLS.Load that cmd/meterd uses) and checks what the server saw: a verified handshake with the
// expected server name, and the client certificate with mutual TLS; a refused one with a CA that did not issue
// the server's certificate, the client failing with a verification error; a first byte that is not TLS with TLS
// off.
func TestConnectTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("dials a local TLS server")
	}
	t.Parallel()
	p := newTestPKI(t)
	tests := []struct {
		name  string
		host  string
		tls   config.ClientTLS
		check func(t *testing.T, hs handshake, connErr error)
	}{
		{name: "mutual TLS with server_name", host: "127.0.0.1",
			tls: config.ClientTLS{Enabled: true, CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKey, ServerName: "clickhouse.test"},
			check: func(t *testing.T, hs handshake, _ error) {
				if hs.err != nil {
					t.Fatalf("handshake: %v", hs.err)
				}
				if hs.state.ServerName != "clickhouse.test" {
					t.Errorf("server name %q, want clickhouse.test", hs.state.ServerName)
				}
				if len(hs.state.PeerCertificates) == 0 || hs.state.PeerCertificates[0].Subject.CommonName != "meterd-client" {
					t.Errorf("client certificate %v, want CN meterd-client", hs.state.PeerCertificates)
				}
			}},
		{name: "server name from addr", host: "localhost", tls: config.ClientTLS{Enabled: true, CAFile: p.caFile},
			check: func(t *testing.T, hs handshake, _ error) {
				if hs.err != nil {
					t.Fatalf("handshake: %v", hs.err)
				}
				if hs.state.ServerName != "localhost" || len(hs.state.PeerCertificates) != 0 {
					t.Errorf("server name %q, %d client certificates: want localhost and none", hs.state.ServerName,
						len(hs.state.PeerCertificates))
				}
			}},
		{name: "wrong CA", host: "127.0.0.1", tls: config.ClientTLS{Enabled: true, CAFile: p.wrongCAFile},
			check: func(t *testing.T, hs handshake, connErr error) {
				if hs.err == nil || !strings.Contains(hs.err.Error(), "remote error: tls: bad certificate") {
					t.Errorf("server saw %v, want the client's bad certificate alert", hs.err)
				}
				var verr *tls.CertificateVerificationError
				if !errors.As(connErr, &verr) {
					t.Errorf("connect error %v (%T), want a *tls.CertificateVerificationError", connErr, connErr)
				}
			}},
		{name: "TLS off", host: "127.0.0.1",
			check: func(t *testing.T, hs handshake, _ error) {
				var rh tls.RecordHeaderError
				if !errors.As(hs.err, &rh) {
					t.Fatalf("server saw %v, want a first record that is not TLS", hs.err)
				}
				if rh.RecordHeader[0] == 0x16 {
					t.Errorf("first byte %#x is a TLS handshake record", rh.RecordHeader[0])
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr, seen := startTLSServer(t, p)
			_, port, _ := net.SplitHostPort(addr)
			tc, err := tt.tls.Load("store.clickhouse.tls")
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Addr: net.JoinHostPort(tt.host, port), Database: "meterd", Username: "meterd", Password: "pw", TLS: tc}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			conn, connErr := connect(ctx, cfg, "default")
			if connErr == nil {
				_ = conn.Close()
				t.Fatal("connected to a server that closes every connection after the handshake")
			}
			select {
			case hs := <-seen:
				tt.check(t, hs, connErr)
			case <-time.After(10 * time.Second):
				t.Fatalf("no connection reached the server (connect: %v)", connErr)
			}
		})
	}
}

// TestConfigFormatHidesSecrets: the password and the TLS keys never print, whatever the verb.
func TestConfigFormatHidesSecrets(t *testing.T) {
	const secret = "PW-c1e2a9-clickhouse-secret"
	p := newTestPKI(t)
	tc, err := config.ClientTLS{Enabled: true, CertFile: p.clientCert, KeyFile: p.clientKey}.Load("store.clickhouse.tls")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: "127.0.0.1:9440", Database: "meterd", Username: "meterd", Password: secret, TLS: tc}
	key, err := tc.Certificates[0].PrivateKey.(*ecdsa.PrivateKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{cfg, &cfg} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			out := fmt.Sprintf(verb, v)
			if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) ||
				strings.Contains(out, fmt.Sprintf("%x", key)) || strings.Contains(out, fmt.Sprint(key)) {
				t.Errorf("%s shows a secret: %s", verb, out)
			}
		}
	}
	if got, want := fmt.Sprint(cfg), "{Addr:127.0.0.1:9440 Database:meterd Username:meterd Password:(set) TLS:true}"; got != want {
		t.Errorf("prints %s, want %s", got, want)
	}
}
