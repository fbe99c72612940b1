package stream

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
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// testPKI is a throwaway CA that issued a server certificate (broker.test, localhost, 127.0.0.1) and a client
// certificate (CN meterd-client), and a second CA that issued nothing this test's server presents. The PEM files
// are in a temporary directory.
type testPKI struct {
	caFile, wrongCAFile   string
	clientCert, clientKey string
	server                tls.Certificate
	pool                  *x509.CertPool // the CA, for the server's check of client certificates
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, caKey, caPEM := newTestCA(t, "meterd test CA")
	_, _, wrongPEM := newTestCA(t, "some other CA")
	p := &testPKI{caFile: filepath.Join(dir, "ca.pem"), wrongCAFile: filepath.Join(dir, "wrong-ca.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem"), pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	writeTestFile(t, p.caFile, caPEM)
	writeTestFile(t, p.wrongCAFile, wrongPEM)
	serverCert, serverKey := issueTestCert(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "broker.test"},
		DNSNames: []string{"broker.test", "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	var err error
	if p.server, err = tls.X509KeyPair(serverCert, serverKey); err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey := issueTestCert(t, ca, caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "meterd-client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	writeTestFile(t, p.clientCert, clientCert)
	writeTestFile(t, p.clientKey, clientKey)
	return p
}

func newTestCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func issueTestCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// handshake is what the test server saw of one connection: the TLS state, or why the handshake failed.
type handshake struct {
	state tls.ConnectionState
	err   error
}

// startTLSServer listens on loopback with the server certificate, asks for a client certificate from the CA
// without requiring one, completes each handshake, records it and closes the connection: the Kafka or ClickHouse
// protocol after it then fails, which these tests do not look at. It returns the address and the handshakes.
func startTLSServer(t *testing.T, p *testPKI) (string, <-chan handshake) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{p.server},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: p.pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan handshake, 256)
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
				default: // the test has what it needs
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

// firstHandshake waits for the server's first handshake.
func firstHandshake(t *testing.T, seen <-chan handshake) handshake {
	t.Helper()
	select {
	case hs := <-seen:
		return hs
	case <-time.After(15 * time.Second):
		t.Fatal("no connection reached the server")
		return handshake{}
	}
}

// kafkaClients are every kafka-go client the package builds, each named with what carries its security, and run
// against cfg until ctx ends or the client gives up.
func kafkaClients(t *testing.T) []struct {
	name string
	run  func(ctx context.Context, cfg Config) error
} {
	return []struct {
		name string
		run  func(ctx context.Context, cfg Config) error
	}{
		{"producer (Writer, Transport)", func(ctx context.Context, cfg Config) error {
			p, err := NewProducer(cfg)
			if err != nil {
				return err
			}
			return errors.Join(p.Send(ctx, [][]byte{[]byte(`{"source":"s","id":"1"}`)}), p.Close())
		}},
		{"topics (Client, Transport)", EnsureTopics},
		{"control topic (Client, Transport)", func(ctx context.Context, cfg Config) error {
			return EnsureElectionTopic(ctx, ElectionConfig{Brokers: cfg.Brokers, Topic: "meterd-control", Security: cfg.Security})
		}},
		{"positions (Client, Transport)", func(ctx context.Context, cfg Config) error {
			return PositionsOf(cfg).Ping(ctx)
		}},
		{"positions' DialLeader (Dialer)", func(ctx context.Context, cfg Config) error {
			_, err := PositionsOf(cfg).appendTime(ctx, 0, 0)
			return err
		}},
		{"collector (Reader, Dialer)", func(ctx context.Context, cfg Config) error {
			c, err := NewCollector(cfg, CollectorOptions{Validator: testValidator(t), Sink: newFakeSink(),
				Metrics: NewMetrics(prometheus.NewRegistry())})
			if err != nil {
				return err
			}
			_, err = c.src.FetchMessage(ctx)
			return errors.Join(err, c.Close())
		}},
		{"collector's dead letters (Writer, Transport)", func(ctx context.Context, cfg Config) error {
			c, err := NewCollector(cfg, CollectorOptions{Validator: testValidator(t), Sink: newFakeSink(),
				Metrics: NewMetrics(prometheus.NewRegistry())})
			if err != nil {
				return err
			}
			err = c.dlq.WriteMessages(ctx, kafka.Message{Topic: cfg.DLQTopic, Value: []byte("{}")})
			return errors.Join(err, c.Close())
		}},
		{"election (ConsumerGroup, Dialer)", func(ctx context.Context, cfg Config) error {
			e, err := NewElection(ElectionConfig{Brokers: cfg.Brokers, Topic: "meterd-control", GroupID: "meterd-schedulers",
				Security: cfg.Security})
			if err != nil {
				return err
			}
			<-ctx.Done()
			return e.group.Close()
		}},
	}
}

// TestKafkaTLS runs every Kafka client of the package against a local TLS server and checks what the server saw:
// a verified handshake with the expected server name (and the client certificate with mutual TLS), a refused
// one with a CA that did not issue the server's certificate, and a first byte that is not TLS with TLS off.
func TestKafkaTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("dials a local TLS server")
	}
	t.Parallel()
	p := newTestPKI(t)
	scenarios := []struct {
		name     string
		loopback string // the broker's host; its port is the server's
		tls      TLS
		check    func(t *testing.T, hs handshake, clientErr error)
	}{
		{name: "mutual TLS with server_name", loopback: "127.0.0.1",
			tls: TLS{Enabled: true, CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKey, ServerName: "broker.test"},
			check: func(t *testing.T, hs handshake, _ error) {
				if hs.err != nil {
					t.Fatalf("handshake: %v", hs.err)
				}
				if hs.state.ServerName != "broker.test" {
					t.Errorf("server name %q, want broker.test", hs.state.ServerName)
				}
				if len(hs.state.PeerCertificates) == 0 || hs.state.PeerCertificates[0].Subject.CommonName != "meterd-client" {
					t.Errorf("client certificate %v, want CN meterd-client", hs.state.PeerCertificates)
				}
			}},
		{name: "server name from the broker address", loopback: "localhost",
			tls: TLS{Enabled: true, CAFile: p.caFile},
			check: func(t *testing.T, hs handshake, _ error) {
				if hs.err != nil {
					t.Fatalf("handshake: %v", hs.err)
				}
				if hs.state.ServerName != "localhost" {
					t.Errorf("server name %q, want localhost", hs.state.ServerName)
				}
				if len(hs.state.PeerCertificates) != 0 {
					t.Errorf("a client certificate was sent without cert_file")
				}
			}},
		{name: "wrong CA", loopback: "127.0.0.1", tls: TLS{Enabled: true, CAFile: p.wrongCAFile, ServerName: "broker.test"},
			check: func(t *testing.T, hs handshake, _ error) {
				// The client refuses the server's certificate and tells the server so (Go's client sends the
				// bad_certificate alert for every verification failure). TestKafkaTLSWrongCAClientError looks at
				// the client's side.
				if hs.err == nil || !strings.Contains(hs.err.Error(), "remote error: tls: bad certificate") {
					t.Errorf("server saw %v, want the client's bad certificate alert", hs.err)
				}
			}},
		{name: "TLS off", loopback: "127.0.0.1",
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
	for _, client := range kafkaClients(t) {
		for _, sc := range scenarios {
			t.Run(client.name+"/"+sc.name, func(t *testing.T) {
				t.Parallel()
				addr, seen := startTLSServer(t, p)
				_, port, _ := net.SplitHostPort(addr)
				cfg := validConfig()
				cfg.Brokers = []string{net.JoinHostPort(sc.loopback, port)}
				cfg.Security.TLS = sc.tls
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				errc := make(chan error, 1)
				go func() { errc <- client.run(ctx, cfg) }()
				hs := firstHandshake(t, seen)
				cancel()
				clientErr := <-errc
				sc.check(t, hs, clientErr)
			})
		}
	}
}

// TestKafkaTLSWrongCAClientError: where a client returns its error, a CA that did not issue the broker's
// certificate fails it with a certificate verification error, not a timeout.
func TestKafkaTLSWrongCAClientError(t *testing.T) {
	if testing.Short() {
		t.Skip("dials a local TLS server")
	}
	t.Parallel()
	p := newTestPKI(t)
	addr, _ := startTLSServer(t, p)
	cfg := validConfig()
	cfg.Brokers = []string{addr}
	cfg.Security.TLS = TLS{Enabled: true, CAFile: p.wrongCAFile}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pos := PositionsOf(cfg)
	for name, call := range map[string]func() error{
		"DialLeader": func() error { _, err := pos.appendTime(ctx, 0, 0); return err },
		"Client":     func() error { _, err := pos.partitions(ctx); return err },
	} {
		err := call()
		var verr *tls.CertificateVerificationError
		if !errors.As(err, &verr) {
			t.Errorf("%s: error %v (%T), want a *tls.CertificateVerificationError", name, err, err)
		}
	}
}
