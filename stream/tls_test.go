package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/internal/tlstest"
)

// writeTestFile writes a file the test needs, failing the test when it cannot.
func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
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
	p := tlstest.NewPKI(t, "broker.test")
	scenarios := []struct {
		name     string
		loopback string // the broker's host; its port is the server's
		tls      TLS
		check    func(t *testing.T, hs tlstest.Handshake, clientErr error)
	}{
		{name: "mutual TLS with server_name", loopback: "127.0.0.1",
			tls: TLS{Enabled: true, CAFile: p.CAFile, CertFile: p.ClientCertFile, KeyFile: p.ClientKeyFile, ServerName: "broker.test"},
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if hs.Err != nil {
					t.Fatalf("handshake: %v", hs.Err)
				}
				if hs.ServerName != "broker.test" {
					t.Errorf("server name %q, want broker.test", hs.ServerName)
				}
				if len(hs.ClientCerts) == 0 || hs.ClientCerts[0].Subject.CommonName != "meterd-client" {
					t.Errorf("client certificate %v, want CN meterd-client", hs.ClientCerts)
				}
			}},
		{name: "server name from the broker address", loopback: "localhost",
			tls: TLS{Enabled: true, CAFile: p.CAFile},
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if hs.Err != nil {
					t.Fatalf("handshake: %v", hs.Err)
				}
				if hs.ServerName != "localhost" {
					t.Errorf("server name %q, want localhost", hs.ServerName)
				}
				if len(hs.ClientCerts) != 0 {
					t.Errorf("a client certificate was sent without cert_file")
				}
			}},
		{name: "wrong CA", loopback: "127.0.0.1", tls: TLS{Enabled: true, CAFile: p.WrongCAFile, ServerName: "broker.test"},
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				// The client refuses the server's certificate and tells the server so (Go's client sends the
				// bad_certificate alert for every verification failure). TestKafkaTLSWrongCAClientError looks at
				// the client's side.
				if hs.Err == nil || !strings.Contains(hs.Err.Error(), "remote error: tls: bad certificate") {
					t.Errorf("server saw %v, want the client's bad certificate alert", hs.Err)
				}
			}},
		{name: "TLS off", loopback: "127.0.0.1",
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if !hs.NotTLS {
					t.Errorf("server saw %v, want a first record that is not TLS", hs.Err)
				}
			}},
	}
	for _, client := range kafkaClients(t) {
		for _, sc := range scenarios {
			t.Run(client.name+"/"+sc.name, func(t *testing.T) {
				t.Parallel()
				srv := p.StartServer(t)
				cfg := validConfig()
				cfg.Brokers = []string{net.JoinHostPort(sc.loopback, srv.Port)}
				cfg.Security.TLS = sc.tls
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				errc := make(chan error, 1)
				go func() { errc <- client.run(ctx, cfg) }()
				hs, ok := srv.Next(15 * time.Second)
				cancel()
				if !ok {
					t.Fatal("no connection reached the server")
				}
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
	p := tlstest.NewPKI(t, "broker.test")
	cfg := validConfig()
	cfg.Brokers = []string{p.StartServer(t).Addr}
	cfg.Security.TLS = TLS{Enabled: true, CAFile: p.WrongCAFile}
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
