package koogallery_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// t0 is the pushers' and the simulator's clock unless a test moves one: 03:10 UTC, SDRs of 02:00-03:00 due.
var t0 = time.Date(2026, 11, 22, 3, 10, 0, 0, time.UTC)

const testKey = "K3y-n3ver-l0gged-1f0c9a7e"

type env struct {
	sim     *kgsim.Sim
	srv     *httptest.Server
	client  *koogallery.Client
	reg     *prometheus.Registry
	metrics *koogallery.Metrics
	simLog  *syncBuffer
}

type envOpts struct {
	simKey    string
	simNow    time.Time
	clientNow time.Time
	instances map[string]kgsim.Life
	timeout   time.Duration
	transport func(http.RoundTripper) http.RoundTripper
}

// newEnv starts a simulator on loopback and a client pointed at it.
func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.simKey == "" {
		o.simKey = testKey
	}
	if o.simNow.IsZero() {
		o.simNow = t0
	}
	if o.clientNow.IsZero() {
		o.clientNow = t0
	}
	e := &env{reg: prometheus.NewRegistry(), simLog: &syncBuffer{}}
	simNow, clientNow := o.simNow, o.clientNow
	e.sim = kgsim.New(kgsim.Config{Key: []byte(o.simKey), Now: func() time.Time { return simNow },
		Instances: o.instances, Logger: slog.New(slog.NewTextHandler(e.simLog, nil))})
	e.srv = httptest.NewServer(e.sim)
	t.Cleanup(func() {
		e.sim.Close() // releases held requests, else the server's Close waits for them
		e.srv.Close()
	})
	hc := e.srv.Client()
	if o.transport != nil {
		hc.Transport = o.transport(hc.Transport)
	}
	e.metrics = koogallery.NewMetrics(e.reg)
	c, err := koogallery.NewClient(koogallery.Config{
		Endpoint: e.srv.URL + kgsim.DefaultPath,
		Key:      func() ([]byte, error) { return []byte(testKey), nil },
		HTTP:     hc,
		Timeout:  o.timeout,
		Now:      func() time.Time { return clientNow },
		Metrics:  e.metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// rec builds the record of instance id for the hour starting at h (the hour before t0 by default).
func rec(id, sn string, h time.Time, value string) koogallery.Record {
	return koogallery.Record{InstanceID: id, MeteringSN: sn, BeginTime: h, EndTime: h.Add(time.Hour),
		RecordTime: h.Add(time.Hour + 5*time.Minute), UsageValue: decimal.RequireFromString(value)}
}

var lastHour = t0.Truncate(time.Hour).Add(-time.Hour)

func body(t *testing.T, recs ...koogallery.Record) []byte {
	t.Helper()
	enc := make([][]byte, len(recs))
	for i, r := range recs {
		b, err := koogallery.EncodeRecord(r, koogallery.ValueAsNumber)
		if err != nil {
			t.Fatal(err)
		}
		enc[i] = b
	}
	return koogallery.Body(enc)
}

func TestPushAccepted(t *testing.T) {
	e := newEnv(t, envOpts{})
	b := body(t, rec("inst-a", "sn-a", lastHour, "12.5"), rec("inst-b", "sn-b", lastHour, "0.0001"),
		rec("inst-c", "sn-c", lastHour, "99999999.9999"))
	resp, err := e.client.Push(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	if resp.HTTPStatus != 200 || resp.Code != "0000" || len(resp.Abnormal) != 0 {
		t.Fatalf("answer: %+v", resp)
	}
	if c := koogallery.Classify(resp, err); c != koogallery.ClassAccepted {
		t.Errorf("class %s", c)
	}
	billed := e.sim.Billed()
	if len(billed) != 3 {
		t.Fatalf("billed %d", len(billed))
	}
	if b := billed[0]; b.InstanceID != "inst-a" || b.MeteringSN != "sn-a" || !b.BeginTime.Equal(lastHour) ||
		!b.UsageValue.Equal(decimal.RequireFromString("12.5")) {
		t.Errorf("billed[0]: %+v", b)
	}
	if !resp.ServerTime.Equal(t0) || resp.ClockSkew != 0 {
		t.Errorf("server time %s, skew %s", resp.ServerTime, resp.ClockSkew)
	}
	if got := testutil.ToFloat64(e.metrics.RequestsCounter("0000")); got != 1 {
		t.Errorf("requests{code=0000} = %v", got)
	}
}

// TestPushClasses drives every class through the simulator, with real refusals where the simulator can make
// them and with injected answers otherwise. Nothing of a refused call is billed.
func TestPushClasses(t *testing.T) {
	ok := rec("inst-a", "sn-ok", lastHour, "1")
	tooMany := make([]koogallery.Record, koogallery.MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = rec(fmt.Sprintf("inst-%d", i), fmt.Sprintf("sn-%d", i), lastHour, "1")
	}
	tests := []struct {
		name   string
		opts   envOpts
		fault  func(*kgsim.Faults)
		body   func(t *testing.T) []byte
		code   string
		status int
		class  koogallery.Class
		msg    string
	}{
		{name: "too many records", body: func(t *testing.T) []byte { return body(t, tooMany...) },
			code: "9003", status: 500, class: koogallery.ClassHalve},
		{name: "injected 9003", fault: func(f *kgsim.Faults) { f.FailNext(1, "9003", 0) },
			code: "9003", status: 500, class: koogallery.ClassHalve},
		{name: "bad record", body: func(t *testing.T) []byte {
			// EncodeRecord refuses 5 decimals; a broken encoder is what the simulator must catch.
			good, _ := koogallery.EncodeRecord(ok, koogallery.ValueAsNumber)
			bad := bytes.Replace(good, []byte(`"usage_value":1`), []byte(`"usage_value":1.23456`), 1)
			bad = bytes.Replace(bad, []byte("sn-ok"), []byte("sn-bad"), 1)
			return koogallery.Body([][]byte{good, bad})
		}, code: "0100", status: 400, class: koogallery.ClassIsolate, msg: "usage_records[1].usage_value"},
		{name: "unknown instance", opts: envOpts{instances: map[string]kgsim.Life{"inst-a": {}}},
			body: func(t *testing.T) []byte { return body(t, ok, rec("inst-gone", "sn-gone", lastHour, "1")) },
			code: "9001", status: 500, class: koogallery.ClassIsolate, msg: "inst-gone"},
		{name: "expired", body: func(t *testing.T) []byte {
			return body(t, ok, rec("inst-a", "sn-old", lastHour.Add(-22*24*time.Hour), "1"))
		}, code: "9004", status: 500, class: koogallery.ClassExpired},
		{name: "wrong key", opts: envOpts{simKey: "another-key"},
			code: "0102", status: 400, class: koogallery.ClassHalt, msg: "signature"},
		{name: "stale ts", opts: envOpts{clientNow: t0.Add(-10 * time.Minute)},
			code: "0154", status: 401, class: koogallery.ClassHalt, msg: "request expired"},
		{name: "future ts", opts: envOpts{clientNow: t0.Add(10 * time.Minute)},
			code: "0154", status: 401, class: koogallery.ClassHalt, msg: "request expired"},
		{name: "internal error", fault: func(f *kgsim.Faults) { f.Rate5xx(1) },
			code: "0999", status: 500, class: koogallery.ClassRetry},
		{name: "rate limit", fault: func(f *kgsim.Faults) { f.FailNext(1, "CBC.0250", 0) },
			code: "0250", status: 406, class: koogallery.ClassRetry},
		{name: "gateway without code", fault: func(f *kgsim.Faults) { f.FailNext(1, "", 502) },
			code: "", status: 502, class: koogallery.ClassRetry},
		{name: "not authorised", fault: func(f *kgsim.Faults) { f.FailNext(1, "MKT.0150", 0) },
			code: "0150", status: 401, class: koogallery.ClassHalt},
		{name: "unknown code", fault: func(f *kgsim.Faults) { f.FailNext(1, "7777", 0) },
			code: "7777", status: 500, class: koogallery.ClassUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.opts)
			if tt.fault != nil {
				tt.fault(e.sim.Faults())
			}
			b := body(t, ok)
			if tt.body != nil {
				b = tt.body(t)
			}
			resp, err := e.client.Push(t.Context(), b)
			if err != nil {
				t.Fatalf("err %v", err)
			}
			if resp.Code != tt.code || resp.HTTPStatus != tt.status {
				t.Errorf("answer %d %q %q, want %d %q", resp.HTTPStatus, resp.Code, resp.Message, tt.status, tt.code)
			}
			if c := koogallery.Classify(resp, err); c != tt.class {
				t.Errorf("class %s, want %s", c, tt.class)
			}
			if !strings.Contains(resp.Message, tt.msg) {
				t.Errorf("message %q lacks %q", resp.Message, tt.msg)
			}
			if n := len(e.sim.Billed()); n != 0 {
				t.Errorf("a refused call billed %d records", n)
			}
		})
	}
}

// replayTransport sends every request after the first with the first one's ts, nonce and signature: a replay.
type replayTransport struct {
	next  http.RoundTripper
	mu    sync.Mutex
	first http.Header
}

func (rt *replayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	if rt.first == nil {
		rt.first = req.Header.Clone()
	} else {
		req = req.Clone(req.Context())
		for _, h := range []string{"ts", "nonce", "signature"} {
			req.Header[h] = rt.first[h]
		}
	}
	rt.mu.Unlock()
	return rt.next.RoundTrip(req)
}

func TestPushReusedNonce(t *testing.T) {
	e := newEnv(t, envOpts{transport: func(next http.RoundTripper) http.RoundTripper { return &replayTransport{next: next} }})
	b := body(t, rec("inst-a", "sn-a", lastHour, "1"))
	first, err := e.client.Push(t.Context(), b)
	if err != nil || first.Code != "0000" {
		t.Fatalf("first: %+v %v", first, err)
	}
	again, err := e.client.Push(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	if again.Code != "0154" || again.HTTPStatus != 401 || !strings.Contains(again.Message, "nonce reused") {
		t.Errorf("replay: %+v", again)
	}
	if koogallery.Classify(again, nil) != koogallery.ClassHalt {
		t.Errorf("replay class %s", koogallery.Classify(again, nil))
	}
	if n := len(e.sim.Billed()); n != 1 {
		t.Errorf("billed %d, want 1", n)
	}
}

// TestPushSendsHeaders: the documented header names, in their documented lower case, and a fresh nonce per call.
func TestPushSendsHeaders(t *testing.T) {
	var mu sync.Mutex
	var seen []http.Header
	e := newEnv(t, envOpts{transport: func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			mu.Lock()
			seen = append(seen, req.Header.Clone())
			mu.Unlock()
			return next.RoundTrip(req)
		})
	}})
	for i := range 2 {
		if _, err := e.client.Push(t.Context(), body(t, rec("inst-a", fmt.Sprintf("sn-%d", i), lastHour.Add(-time.Duration(i)*time.Hour), "1"))); err != nil {
			t.Fatal(err)
		}
	}
	// The map is read raw: the client writes the names as the docs spell them, not canonicalised.
	raw := func(h http.Header, name string) string {
		if len(h[name]) != 1 {
			t.Fatalf("header %q not sent in lower case: %v", name, h)
		}
		return h[name][0]
	}
	for _, h := range seen {
		raw(h, "signature")
		if raw(h, "ts") != fmt.Sprint(t0.UnixMilli()) || len(raw(h, "nonce")) > 64 || h.Get("Content-Type") != "application/json" {
			t.Errorf("headers: %v", h)
		}
	}
	if raw(seen[0], "nonce") == raw(seen[1], "nonce") {
		t.Error("nonce reused across calls")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestPushLostAnswer: processed and billed, answer lost; the resend of the same body bills nothing twice and is
// answered 005 for every record, which the ledger reads as "duplicate confirmed".
func TestPushLostAnswer(t *testing.T) {
	e := newEnv(t, envOpts{})
	b := body(t, rec("inst-a", "sn-a", lastHour, "1"), rec("inst-b", "sn-b", lastHour, "2"))
	e.sim.Faults().LostAnswerRate(1)
	resp, err := e.client.Push(t.Context(), b)
	var te *koogallery.TransportError
	if !errors.As(err, &te) {
		t.Fatalf("want a transport error, got %+v, %v", resp, err)
	}
	if te.Unsent {
		t.Error("a lost answer is not unsent")
	}
	if koogallery.Classify(resp, err) != koogallery.ClassRetry {
		t.Errorf("class %s", koogallery.Classify(resp, err))
	}
	if n := len(e.sim.Billed()); n != 2 {
		t.Fatalf("billed %d, want 2 (processed before the answer was lost)", n)
	}
	if got := testutil.ToFloat64(e.metrics.RequestsCounter("transport")); got != 1 {
		t.Errorf("requests{code=transport} = %v", got)
	}

	e.sim.Faults().LostAnswerRate(0)
	resp, err = e.client.Push(t.Context(), b)
	if err != nil || resp.Code != "0000" || len(resp.Abnormal) != 2 {
		t.Fatalf("resend: %+v %v", resp, err)
	}
	for _, a := range resp.Abnormal {
		if a.Code != "005" {
			t.Errorf("resend entry %+v, want 005", a)
		}
	}
	if n := len(e.sim.Billed()); n != 2 {
		t.Errorf("billed %d after the resend, want still 2", n)
	}
	if got := testutil.ToFloat64(e.metrics.AbnormalCounter("005")); got != 2 {
		t.Errorf("abnormal{code=005} = %v", got)
	}
}

// TestPushTimeout: the simulator holds the call without processing it until the client gives up.
func TestPushTimeout(t *testing.T) {
	e := newEnv(t, envOpts{timeout: 150 * time.Millisecond})
	e.sim.Faults().TimeoutRate(1)
	resp, err := e.client.Push(t.Context(), body(t, rec("inst-a", "sn-a", lastHour, "1")))
	var te *koogallery.TransportError
	if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a timeout transport error, got %+v, %v", resp, err)
	}
	if koogallery.Classify(resp, err) != koogallery.ClassRetry {
		t.Errorf("class %s", koogallery.Classify(resp, err))
	}
	if n := len(e.sim.Billed()); n != 0 {
		t.Errorf("billed %d, want 0", n)
	}
	// A stall behaves the same and is released by Close.
	e.sim.Faults().TimeoutRate(0)
	e.sim.Faults().Stall(true)
	if _, err := e.client.Push(t.Context(), body(t, rec("inst-a", "sn-a", lastHour, "1"))); !errors.As(err, &te) {
		t.Errorf("stall: %v", err)
	}
	if n := len(e.sim.Billed()); n != 0 {
		t.Errorf("billed %d, want 0", n)
	}
}

func TestPushUnsent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := koogallery.NewClient(koogallery.Config{Endpoint: "http://" + addr + "/usage",
		Key: func() ([]byte, error) { return []byte(testKey), nil }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Push(t.Context(), []byte(`{"usage_records":[]}`))
	var te *koogallery.TransportError
	if !errors.As(err, &te) || !te.Unsent {
		t.Errorf("connection refused: %#v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.Push(ctx, []byte(`{}`)); !errors.As(err, &te) || !te.Unsent {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestPushClockSkew(t *testing.T) {
	e := newEnv(t, envOpts{simNow: t0.Add(30 * time.Second)})
	resp, err := e.client.Push(t.Context(), body(t, rec("inst-a", "sn-a", lastHour, "1")))
	if err != nil || resp.Code != "0000" {
		t.Fatalf("%+v %v", resp, err)
	}
	if resp.ClockSkew != 30*time.Second || !resp.ServerTime.Equal(t0.Add(30*time.Second)) {
		t.Errorf("skew %s, server time %s", resp.ClockSkew, resp.ServerTime)
	}
	if got := testutil.ToFloat64(e.metrics.ClockSkew()); got != 30 {
		t.Errorf("clock skew gauge = %v", got)
	}
}

// TestPushDoesNotFollowRedirects: a signed POST is not resent elsewhere; the redirect is the answer.
func TestPushDoesNotFollowRedirects(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	c, err := koogallery.NewClient(koogallery.Config{Endpoint: srv.URL, Key: func() ([]byte, error) { return []byte("k"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Push(t.Context(), []byte(`{}`))
	if err != nil || resp.HTTPStatus != http.StatusFound || koogallery.Classify(resp, err) != koogallery.ClassUnknown {
		t.Errorf("%+v %v", resp, err)
	}
}

func TestNewClientValidate(t *testing.T) {
	_, err := koogallery.NewClient(koogallery.Config{Endpoint: "mkt.myhuaweicloud.com/x", Timeout: -1})
	for _, want := range []string{"endpoint:", "key: required", "timeout:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

// TestKeyNeverLeaks pushes with a known key through every failure and searches every error, answer, metric and
// simulator log line for it.
func TestKeyNeverLeaks(t *testing.T) {
	var texts []string
	collect := func(resp koogallery.Response, err error) {
		texts = append(texts, fmt.Sprintf("%+v", resp), fmt.Sprintf("%#v", resp))
		if err != nil {
			texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
		}
	}
	b := func(t *testing.T) []byte { return body(t, rec("inst-a", "sn-a", lastHour, "1")) }

	e := newEnv(t, envOpts{simKey: "another-key", timeout: 150 * time.Millisecond}) // 0102
	collect(e.client.Push(t.Context(), b(t)))
	stale := newEnv(t, envOpts{clientNow: t0.Add(-time.Hour), timeout: 150 * time.Millisecond})
	collect(stale.client.Push(t.Context(), b(t)))
	for _, f := range []func(*kgsim.Faults){
		func(f *kgsim.Faults) { f.Rate5xx(1) },
		func(f *kgsim.Faults) { f.Rate5xx(0); f.LostAnswerRate(1) },
		func(f *kgsim.Faults) { f.LostAnswerRate(0); f.TimeoutRate(1) },
	} {
		f(stale.sim.Faults())
		collect(stale.client.Push(t.Context(), b(t)))
	}
	good := newEnv(t, envOpts{timeout: 150 * time.Millisecond})
	for _, f := range []func(*kgsim.Faults){
		func(f *kgsim.Faults) { f.Rate5xx(1) },
		func(f *kgsim.Faults) { f.Rate5xx(0); f.LostAnswerRate(1) },
		func(f *kgsim.Faults) { f.LostAnswerRate(0); f.TimeoutRate(1) },
		func(f *kgsim.Faults) { f.TimeoutRate(0) },
	} {
		f(good.sim.Faults())
		collect(good.client.Push(t.Context(), b(t)))
	}
	good.srv.Close()
	collect(good.client.Push(t.Context(), b(t))) // connection refused

	ks := koogallery.NewKeySource("/nonexistent/key", func(string) string { return "" })
	c, err := koogallery.NewClient(koogallery.Config{Endpoint: "http://127.0.0.1:1/", Key: ks.Key})
	if err != nil {
		t.Fatal(err)
	}
	collect(c.Push(t.Context(), b(t)))

	for _, x := range []*env{e, stale, good} {
		rec := httptest.NewRecorder()
		promhttp.HandlerFor(x.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		m, _ := io.ReadAll(rec.Body)
		if !strings.Contains(string(m), "meterd_push_requests_total") {
			t.Fatalf("no metrics gathered:\n%s", m)
		}
		texts = append(texts, string(m), x.simLog.String())
	}
	if len(texts) < 20 {
		t.Fatalf("collected only %d texts", len(texts))
	}
	for _, s := range texts {
		if strings.Contains(s, testKey) {
			t.Errorf("the key leaks into: %s", s)
		}
	}
}
