package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a fresh self-signed certificate for 127.0.0.1 and its key (PEM) under dir and returns the
// paths and a pool trusting it. Generated per test: no private key is kept in the repository.
func selfSigned(t *testing.T, dir, name string) (certPath, keyPath string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "meterd test " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath = writeFile(t, dir, name+".crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyPath = writeFile(t, dir, name+".key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certPath, keyPath, pool
}

// TestServeOverTLS: with tls.cert_file and tls.key_file (the cert from the environment here,
// METERD_TLS_CERT_FILE), serve answers HTTPS only: a client trusting the certificate ingests with its bearer
// token and reads /metrics; a client that does not trust it fails verification; plain HTTP on the port gets 400;
// TLS below 1.2 is refused. Configuration mistakes fail `serve --validate` with their key path, and TLS does not
// lift the rule that an address beyond loopback needs bearer tokens.
func TestServeOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	certPath, keyPath, pool := selfSigned(t, dir, "server")
	_, otherKey, _ := selfSigned(t, dir, "other")
	tokens := writeFile(t, dir, "tokens", "tls-test-token\n")
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
ingest: {tokens_file: %s}
tls: {key_file: %s}
store: {sqlite: {path: %s}}
`, tokens, keyPath, filepath.Join(dir, "meterd.db")))
	srv, base, logs := startServe(t, cfgPath, "METERD_TLS_CERT_FILE="+certPath)
	cleanupKill(t, srv)
	defer stopProc(t, srv, logs)
	if !strings.Contains(logs.String(), "tls=true") {
		t.Errorf("the listening line does not say tls=true:\n%s", logs)
	}
	url := strings.Replace(base, "http://", "https://", 1)

	trusting := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/events", strings.NewReader(
		`{"specversion":"1.0","id":"tls-1","source":"tls","type":"api_call","subject":"a","time":"`+time.Now().UTC().Format(time.RFC3339)+`"}`))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set("Authorization", "Bearer tls-test-token")
	res, err := trusting.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		Accepted int `json:"accepted"`
	}
	if err := decodeJSON(res, &ans); err != nil || ans.Accepted != 1 || res.TLS == nil || res.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("ingest over TLS: %+v %v", ans, err)
	}
	if v := metric(t, trusting, url, `meterd_ingest_events_total{outcome="accepted"}`); v != 1 {
		t.Errorf("/metrics over TLS: accepted %v", v)
	}

	if _, err := http.Get(url + "/healthz"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client that does not trust the certificate: %v, want a verification error", err)
	}
	if res, err := http.Get(base + "/healthz"); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port: %v %v, want 400", res, err)
	} else {
		res.Body.Close()
	}
	old := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}}}
	if _, err := old.Get(url + "/healthz"); err == nil {
		t.Error("a TLS 1.1 client was served")
	}

	for _, c := range []struct {
		name, yaml, want string
	}{
		{"key without cert", "tls: {key_file: " + keyPath + "}\n", "tls.cert_file: required with tls.key_file"},
		{"cert without key", "tls: {cert_file: " + certPath + "}\n", "tls.key_file: required with tls.cert_file"},
		{"pair mismatch", "tls: {cert_file: " + certPath + ", key_file: " + otherKey + "}\n", "tls: tls: private key does not match public key"},
		{"missing file", "tls: {cert_file: " + certPath + ", key_file: " + filepath.Join(dir, "nope.key") + "}\n", "no such file"},
		{"TLS beyond loopback still needs tokens", "listen: 0.0.0.0:8443\ntls: {cert_file: " + certPath + ", key_file: " + keyPath + "}\n",
			`listen: "0.0.0.0:8443" is reachable beyond loopback: set ingest.tokens_file`},
	} {
		p := writeFile(t, dir, "bad.yaml", c.yaml)
		code, out := runBin(t, nil, "serve", "--validate", "--config", p)
		if code != 2 || !strings.Contains(out, c.want) || strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("%s: exit %d, want 2 with %q:\n%s", c.name, code, c.want, out)
		}
	}
}
