package clickhouse

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/internal/tlstest"
)

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
	p := tlstest.NewPKI(t, "clickhouse.test")
	tests := []struct {
		name  string
		host  string
		tls   config.ClientTLS
		check func(t *testing.T, hs tlstest.Handshake, connErr error)
	}{
		{name: "mutual TLS with server_name", host: "127.0.0.1",
			tls: config.ClientTLS{Enabled: true, CAFile: p.CAFile, CertFile: p.ClientCertFile, KeyFile: p.ClientKeyFile, ServerName: "clickhouse.test"},
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if hs.Err != nil {
					t.Fatalf("handshake: %v", hs.Err)
				}
				if hs.ServerName != "clickhouse.test" {
					t.Errorf("server name %q, want clickhouse.test", hs.ServerName)
				}
				if len(hs.ClientCerts) == 0 || hs.ClientCerts[0].Subject.CommonName != "meterd-client" {
					t.Errorf("client certificate %v, want CN meterd-client", hs.ClientCerts)
				}
			}},
		{name: "server name from addr", host: "localhost", tls: config.ClientTLS{Enabled: true, CAFile: p.CAFile},
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if hs.Err != nil {
					t.Fatalf("handshake: %v", hs.Err)
				}
				if hs.ServerName != "localhost" || len(hs.ClientCerts) != 0 {
					t.Errorf("server name %q, %d client certificates: want localhost and none", hs.ServerName,
						len(hs.ClientCerts))
				}
			}},
		{name: "wrong CA", host: "127.0.0.1", tls: config.ClientTLS{Enabled: true, CAFile: p.WrongCAFile},
			check: func(t *testing.T, hs tlstest.Handshake, connErr error) {
				if hs.Err == nil || !strings.Contains(hs.Err.Error(), "remote error: tls: bad certificate") {
					t.Errorf("server saw %v, want the client's bad certificate alert", hs.Err)
				}
				var verr *tls.CertificateVerificationError
				if !errors.As(connErr, &verr) {
					t.Errorf("connect error %v (%T), want a *tls.CertificateVerificationError", connErr, connErr)
				}
			}},
		{name: "TLS off", host: "127.0.0.1",
			check: func(t *testing.T, hs tlstest.Handshake, _ error) {
				if !hs.NotTLS {
					t.Errorf("server saw %v, want a first record that is not TLS", hs.Err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := p.StartServer(t)
			tc, err := tt.tls.Load("store.clickhouse.tls")
			if err != nil {
				t.Fatal(err)
			}
			cfg := Config{Addr: net.JoinHostPort(tt.host, srv.Port), Database: "meterd", Username: "meterd", Password: "pw", TLS: tc}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			conn, connErr := connect(ctx, cfg, "default")
			if connErr == nil {
				_ = conn.Close()
				t.Fatal("connected to a server that closes every connection after the handshake")
			}
			hs, ok := srv.Next(10 * time.Second)
			if !ok {
				t.Fatalf("no connection reached the server (connect: %v)", connErr)
			}
			tt.check(t, hs, connErr)
		})
	}
}

// TestConfigFormatHidesSecrets: the password and the TLS keys never print, whatever the verb.
func TestConfigFormatHidesSecrets(t *testing.T) {
	const secret = "PW-c1e2a9-clickhouse-secret"
	p := tlstest.NewPKI(t, "clickhouse.test")
	tc, err := config.ClientTLS{Enabled: true, CertFile: p.ClientCertFile, KeyFile: p.ClientKeyFile}.Load("store.clickhouse.tls")
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
