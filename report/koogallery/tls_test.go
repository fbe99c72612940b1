package koogallery_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/meterd/meterd/report/koogallery"
)

// TestClientVerifiesCertificates: the default client of a KooGallery endpoint verifies the server's certificate.
// Against a TLS server whose certificate no trusted CA signed (a man in the middle, a misconfigured proxy) the
// call fails with a *TransportError that says so, the signed body never reaches the server, and the error is
// marked Unsent, so that a later 005/010 answer is not mistaken for the confirmation of this attempt. The same
// server is reached once its certificate is trusted, and a server below TLS 1.2 is refused.
func TestClientVerifiesCertificates(t *testing.T) {
	var reached atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		reached.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"error_code":"MKT.0000","error_msg":"success"}`))
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.StartTLS()
	defer srv.Close()
	key := func() ([]byte, error) { return []byte("tls-test-key"), nil }

	c, err := koogallery.NewClient(koogallery.Config{Endpoint: srv.URL, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Push(context.Background(), []byte(`{"usage_infos":[]}`))
	var te *koogallery.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("untrusted certificate: answer %+v, error %v; want a *TransportError", resp, err)
	}
	if !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "tls-test-key") {
		t.Errorf("error %q should name the certificate problem and never the key", err)
	}
	if !te.Unsent {
		t.Errorf("a failed TLS handshake sent nothing, yet Unsent is false: a later 005 would be taken as a duplicate confirmed")
	}
	if got := koogallery.Classify(resp, err); got != koogallery.ClassRetry {
		t.Errorf("classified %s, want retry", got)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("the untrusted server received %d requests", n)
	}

	// Trusted (the test server's CA), the same call goes through.
	trusted, err := koogallery.NewClient(koogallery.Config{Endpoint: srv.URL, Key: key, HTTP: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := trusted.Push(context.Background(), []byte(`{"usage_infos":[]}`)); err != nil || resp.Code != "0000" {
		t.Fatalf("trusted: %+v %v", resp, err)
	}

	// A server that speaks only TLS 1.1 is refused by the default client (TLS 1.2 at least), certificate aside.
	old := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(100) }))
	old.TLS = &tls.Config{MaxVersion: tls.VersionTLS11}
	old.Config.ErrorLog = log.New(io.Discard, "", 0)
	old.StartTLS()
	defer old.Close()
	c11, err := koogallery.NewClient(koogallery.Config{Endpoint: old.URL, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c11.Push(context.Background(), []byte(`{}`)); !errors.As(err, &te) || reached.Load() != 1 {
		t.Fatalf("TLS 1.1 server: %v (reached %d)", err, reached.Load())
	}
}
