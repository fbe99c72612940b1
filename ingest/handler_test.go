package ingest_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/store/sqlite"

	_ "modernc.org/sqlite"
)

// now is the fixed request time of these tests; event times are relative to it.
var now = time.Date(2026, 11, 22, 3, 30, 0, 0, time.UTC)

type env struct {
	t       *testing.T
	dbPath  string
	store   *sqlite.Store
	server  *httptest.Server
	metrics *ingest.Metrics
	reg     *prometheus.Registry
	tokens  ingest.Tokens
}

func testMeters(t *testing.T) *meter.Set {
	t.Helper()
	set, err := meter.NewSet([]meter.Spec{
		{Key: "api_calls", EventType: "api_call", Aggregation: "COUNT"},
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
		{Key: "peak", EventType: "llm_request", Aggregation: "MAX", ValueProperty: "$.tokens"},
		{Key: "users", EventType: "login", Aggregation: "UNIQUE_COUNT", ValueProperty: "$.user"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// newEnv starts the ingest handler over a real SQLite store in dir (a new one when dir is empty).
func newEnv(t *testing.T, dir string, tokens ingest.Tokens) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e := &env{t: t, dbPath: filepath.Join(dir, "meterd.db"), tokens: tokens}
	st, err := sqlite.Open(context.Background(), e.dbPath, sqlite.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	e.reg = prometheus.NewRegistry()
	e.metrics = ingest.NewMetrics(e.reg)
	h, err := ingest.NewHandler(ingest.HandlerConfig{
		Validator: ingest.NewValidator(testMeters(t), 21*24*time.Hour, 5*time.Minute),
		Sink:      st, Rejected: st, MaxBody: 64 << 10, Metrics: e.metrics,
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	e.server = httptest.NewServer(tokens.Wrap(mux))
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.server != nil {
		e.server.Close()
		e.server = nil
	}
	if e.store != nil {
		if err := e.store.Close(); err != nil {
			e.t.Error(err)
		}
		e.store = nil
	}
}

func (e *env) post(contentType string, body string, header map[string]string) (int, ingest.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.server.URL+"/v1/events", strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	var out ingest.Response
	if res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
			e.t.Fatalf("decode %q: %v", buf.String(), err)
		}
	}
	return res.StatusCode, out, buf.String()
}

// query reads the database file directly, as finance's SQL tools would.
func (e *env) query(q string, args ...any) [][]string {
	e.t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath+"?_pragma=query_only(1)")
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			e.t.Fatal(err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			row[i] = v.String
		}
		out = append(out, row)
	}
	return out
}

func ev(id, typ, subject string, at time.Time, data string) string {
	s := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"app","type":%q,"subject":%q,"time":%q`, id, typ, subject, at.Format(time.RFC3339Nano))
	if data != "" {
		s += `,"data":` + data
	}
	return s + "}"
}

func TestBodyForms(t *testing.T) {
	e := newEnv(t, "", ingest.Tokens{})
	at := now.Add(-10 * time.Minute)
	single := ev("s1", "llm_request", "t1", at, `{"tokens":"1.5"}`)
	array := "[" + ev("a1", "llm_request", "t1", at, `{"tokens":2}`) + "," + ev("a2", "api_call", "t1", at, "") + "]"
	ndjson := ev("n1", "llm_request", "t1", at, `{"tokens":"3"}`) + "\n\n" + ev("n2", "api_call", "t1", at, "") + "\n"
	cases := []struct {
		name, ct, body string
		header         map[string]string
		accepted       int
	}{
		{"single cloudevents+json", ingest.MediaCloudEvent, single, nil, 1},
		{"single application/json", ingest.MediaJSON + "; charset=utf-8", ev("s2", "api_call", "t1", at, ""), nil, 1},
		{"batch array", ingest.MediaBatch, array, nil, 2},
		{"ndjson", ingest.MediaNDJSON, ndjson, nil, 2},
		{"binary mode", "application/json", `{"tokens":"4.25"}`, map[string]string{
			"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "app", "ce-type": "llm_request",
			"ce-subject": "t%2D1", "ce-time": at.Format(time.RFC3339)}, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, resp, raw := e.post(c.ct, c.body, c.header)
			if status != http.StatusOK || resp.Accepted != c.accepted || resp.Duplicates != 0 || len(resp.Rejected) != 0 {
				t.Fatalf("status %d, answer %s; want 200 with %d accepted", status, raw, c.accepted)
			}
		})
	}
	// The binary-mode event is stored in structured form, its percent-encoded subject decoded.
	rows := e.query(`SELECT subject, raw FROM events WHERE id = 'b1'`)
	if len(rows) != 1 || rows[0][0] != "t-1" || !strings.Contains(rows[0][1], `"data":{"tokens":"4.25"}`) {
		t.Fatalf("binary event stored as %v", rows)
	}
	// SUM and MAX both fed by llm_request: one event feeds several meters.
	rows = e.query(`SELECT meter, value FROM event_values v JOIN events e USING (seq) WHERE e.id = 's1' ORDER BY meter`)
	if fmt.Sprint(rows) != "[[peak 1.5] [tokens 1.5]]" {
		t.Fatalf("meter values of s1: %v", rows)
	}
}

func TestDuplicatesWithinAcrossRequestsAndRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, ingest.Tokens{})
	at := now.Add(-time.Hour)
	one := ev("d1", "llm_request", "t1", at, `{"tokens":"1"}`)
	// The same event in structured form, data keys reordered and extra whitespace: still the same content.
	same := ev("d1", "llm_request", "t1", at, `{ "tokens" : "1" }`)
	_, resp, raw := e.post(ingest.MediaNDJSON, one+"\n"+same+"\n"+one, nil)
	if resp.Accepted != 1 || resp.Duplicates != 2 {
		t.Fatalf("within one request: %s", raw)
	}
	_, resp, raw = e.post(ingest.MediaCloudEvent, one, nil)
	if resp.Accepted != 0 || resp.Duplicates != 1 {
		t.Fatalf("across requests: %s", raw)
	}
	e.close()
	e2 := newEnv(t, dir, ingest.Tokens{}) // a restart: a new process on the same file
	_, resp, raw = e2.post(ingest.MediaCloudEvent, one, nil)
	if resp.Accepted != 0 || resp.Duplicates != 1 {
		t.Fatalf("after restart: %s", raw)
	}
	// Binary mode with the same attributes and data is the same event.
	_, resp, raw = e2.post("application/json", `{"tokens":"1"}`, map[string]string{"ce-specversion": "1.0", "ce-id": "d1",
		"ce-source": "app", "ce-type": "llm_request", "ce-subject": "t1", "ce-time": at.Format(time.RFC3339)})
	if resp.Duplicates != 1 {
		t.Fatalf("binary-mode copy: %s", raw)
	}
	if n := e2.query(`SELECT count(*) FROM events`)[0][0]; n != "1" {
		t.Fatalf("%s events stored, want 1", n)
	}
	if got := testutil.ToFloat64(e.metrics.EventsCounter("duplicate")); got != 3 {
		t.Fatalf("duplicate metric of the first process = %v, want 3", got)
	}
}

func TestConflictIsDeadLetteredWithBothVersions(t *testing.T) {
	e := newEnv(t, "", ingest.Tokens{})
	at := now.Add(-time.Hour)
	first := ev("c1", "llm_request", "t1", at, `{"tokens":"1"}`)
	second := ev("c1", "llm_request", "t1", at, `{"tokens":"100"}`)
	good := ev("c2", "llm_request", "t1", at, `{"tokens":"5"}`)
	_, resp, raw := e.post(ingest.MediaNDJSON, first+"\n"+second+"\n"+good, nil)
	if resp.Accepted != 2 || len(resp.Rejected) != 1 || resp.Rejected[0].Index != 1 || resp.Rejected[0].ID != "c1" ||
		!strings.HasPrefix(resp.Rejected[0].Reason, "conflict") {
		t.Fatalf("answer %s", raw)
	}
	// The first copy won: only its value is counted.
	if rows := e.query(`SELECT value FROM event_values v JOIN events e USING (seq) WHERE e.id = 'c1' AND meter = 'tokens'`); fmt.Sprint(rows) != "[[1]]" {
		t.Fatalf("stored value %v", rows)
	}
	res, err := http.Get(e.server.URL + "/v1/events/rejected?limit=5")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Rejected []struct {
			Source, ID, Reason string
			ReceivedAt         time.Time       `json:"received_at"`
			Event              json.RawMessage `json:"event"`
			Existing           json.RawMessage `json:"existing"`
		} `json:"rejected"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if len(list.Rejected) != 1 {
		t.Fatalf("dead letters %+v", list.Rejected)
	}
	d := list.Rejected[0]
	if d.Source != "app" || d.ID != "c1" || !strings.Contains(string(d.Event), `"100"`) || !strings.Contains(string(d.Existing), `"tokens":"1"`) ||
		!d.ReceivedAt.Equal(now) {
		t.Fatalf("dead letter %+v", d)
	}
	if got := testutil.ToFloat64(e.metrics.RejectedCounter(ingest.CodeConflict)); got != 1 {
		t.Fatalf("conflict metric %v", got)
	}
}

func TestBadEventsDoNotSinkTheBatch(t *testing.T) {
	e := newEnv(t, "", ingest.Tokens{})
	at := now.Add(-time.Hour)
	lines := []struct {
		body   string
		reason string // substring of the reason; empty = accepted
	}{
		{ev("g1", "llm_request", "t1", at, `{"tokens":"0.1"}`), ""},
		{`{"specversion":"1.0","id":"x1"`, "not valid JSON"},
		{`[1,2]`, "not a JSON object"},
		{ev("x2", "unknown", "t1", at, `{"tokens":"1"}`), `type: "unknown" feeds no configured meter`},
		{ev("x3", "llm_request", "t1", at, `{"tokens":"-1"}`), "must be >= 0"},
		{ev("x4", "llm_request", "t1", at, `{"tokens":"NaN"}`), "not a decimal number"},
		{ev("x5", "llm_request", "t1", at, `{"tokens":1e999999999}`), "exponent out of range"},
		{ev("x6", "llm_request", "t1", at, `{"tokens":"12345678901234567890123456789"}`), "more than 28 integer digits"},
		{ev("x7", "llm_request", "t1", at, `{"tokens":"0.12345678901"}`), "more than 10 fractional digits"},
		{ev("x8", "llm_request", "t1", now.Add(-22*24*time.Hour), `{"tokens":"1"}`), "older than the max event age"},
		{ev("x9", "llm_request", "t1", now.Add(6*time.Minute), `{"tokens":"1"}`), "in the future"},
		{ev("x10", "llm_request", strings.Repeat("s", 65), at, `{"tokens":"1"}`), "subject: 65 characters, at most 64"},
		{ev(strings.Repeat("i", 257), "llm_request", "t1", at, `{"tokens":"1"}`), "id: 257 characters"},
		{strings.Replace(ev("x11", "llm_request", "t1", at, `{"tokens":"1"}`), `"1.0"`, `"0.3"`, 1), "specversion"},
		{strings.Replace(ev("x12", "llm_request", "t1", at, `{"tokens":"1"}`), at.Format(time.RFC3339Nano), "yesterday", 1), "not an RFC 3339 time"},
		{ev("x13", "llm_request", "t1", at, `{"other":"1"}`), "value $.tokens missing"},
		{ev("x14", "llm_request", "t1", at, `{"tokens":true}`), "must be a decimal number"},
		{ev("x15", "login", "t1", at, `{"user":{"a":1}}`), "must be a JSON scalar"},
		{`{"specversion":"1.0","id":"x16","source":"app","type":"api_call","time":"` + at.Format(time.RFC3339) + `"}`, "subject: required"},
		{ev("g2", "llm_request", "t1", at, `{"tokens":"99999999999999999999.0000000001"}`), ""},
		{ev("g3", "login", "t1", at, `{"user":"alice"}`), ""},
	}
	var body strings.Builder
	for _, l := range lines {
		body.WriteString(l.body + "\n")
	}
	status, resp, raw := e.post(ingest.MediaNDJSON, body.String(), nil)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, raw)
	}
	byIndex := map[int]string{}
	for _, r := range resp.Rejected {
		byIndex[r.Index] = r.Reason
	}
	accepted := 0
	for i, l := range lines {
		got, rejected := byIndex[i]
		switch {
		case l.reason == "" && rejected:
			t.Errorf("line %d rejected: %s", i, got)
		case l.reason == "":
			accepted++
		case !rejected:
			t.Errorf("line %d accepted, want rejected with %q", i, l.reason)
		case !strings.Contains(got, l.reason):
			t.Errorf("line %d reason %q, want it to contain %q", i, got, l.reason)
		}
	}
	if resp.Accepted != accepted {
		t.Errorf("accepted %d, want %d", resp.Accepted, accepted)
	}
	// Every rejected event is dead-lettered; the good ones are stored with exact values.
	if n := e.query(`SELECT count(*) FROM dead_letters`)[0][0]; n != fmt.Sprint(len(lines)-accepted) {
		t.Errorf("%s dead letters, want %d", n, len(lines)-accepted)
	}
	if rows := e.query(`SELECT value FROM event_values v JOIN events e USING (seq) WHERE e.id = 'g2' AND meter = 'tokens'`); fmt.Sprint(rows) != "[[99999999999999999999.0000000001]]" {
		t.Errorf("g2 stored as %v", rows)
	}
	if rows := e.query(`SELECT value FROM event_values WHERE meter = 'users'`); fmt.Sprint(rows) != `[["alice"]]` {
		t.Errorf("unique key stored as %v", rows)
	}
	if got := testutil.ToFloat64(e.metrics.RejectedCounter(ingest.CodeBadValue)); got != 8 {
		t.Errorf("bad_value metric %v, want 8", got)
	}
}

func TestValuesFloatWouldCorruptAreStoredExactly(t *testing.T) {
	e := newEnv(t, "", ingest.Tokens{})
	at := now.Add(-time.Hour)
	values := []string{"0.1", "0.2", "123456789012345678", "0.3000000001", "1e-10", "2.50"}
	var body strings.Builder
	for i, v := range values {
		body.WriteString(ev(fmt.Sprintf("f%d", i), "llm_request", "t1", at, `{"tokens":`+v+`}`) + "\n")
	}
	if _, resp, raw := e.post(ingest.MediaNDJSON, body.String(), nil); resp.Accepted != len(values) {
		t.Fatalf("answer %s", raw)
	}
	rows := e.query(`SELECT value FROM event_values v JOIN events e USING (seq) WHERE meter = 'tokens' ORDER BY seq`)
	want := "[[0.1] [0.2] [123456789012345678] [0.3000000001] [0.0000000001] [2.5]]"
	if fmt.Sprint(rows) != want {
		t.Fatalf("stored %v, want %s", rows, want)
	}
}

func TestLimitsAndAuth(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokFile, []byte("# ops\nsecret-one\n\nsecret-two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := ingest.LoadTokens(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, dir, tokens)
	good := ev("l1", "api_call", "t1", now.Add(-time.Minute), "")
	cases := []struct {
		name   string
		ct     string
		body   string
		auth   string
		status int
	}{
		{"no token", ingest.MediaCloudEvent, good, "", http.StatusUnauthorized},
		{"wrong token", ingest.MediaCloudEvent, good, "Bearer secret-three", http.StatusUnauthorized},
		{"token prefix only", ingest.MediaCloudEvent, good, "Bearer secret-on", http.StatusUnauthorized},
		{"second token", ingest.MediaCloudEvent, good, "bearer secret-two", http.StatusOK},
		{"too large", ingest.MediaNDJSON, strings.Repeat(good+"\n", 1000), "Bearer secret-one", http.StatusRequestEntityTooLarge},
		{"broken array", ingest.MediaBatch, "[" + good + ",", "Bearer secret-one", http.StatusBadRequest},
		{"broken single", ingest.MediaCloudEvent, good[:20], "Bearer secret-one", http.StatusBadRequest},
		{"empty", ingest.MediaJSON, "", "Bearer secret-one", http.StatusBadRequest},
		{"batch not array", ingest.MediaBatch, good, "Bearer secret-one", http.StatusBadRequest},
		{"unsupported type", "text/plain", good, "Bearer secret-one", http.StatusUnsupportedMediaType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.auth != "" {
				hdr["Authorization"] = c.auth
			}
			status, _, raw := e.post(c.ct, c.body, hdr)
			if status != c.status {
				t.Fatalf("status %d (%s), want %d", status, raw, c.status)
			}
			if strings.Contains(raw, "secret") {
				t.Fatalf("answer leaks a token: %s", raw)
			}
		})
	}
	if got := testutil.ToFloat64(e.metrics.RequestsCounter(413)); got != 1 {
		t.Errorf("413 metric %v", got)
	}
}

func TestStoreUnavailableAnswers503(t *testing.T) {
	e := newEnv(t, "", ingest.Tokens{})
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	status, _, raw := e.post(ingest.MediaCloudEvent, ev("u1", "api_call", "t1", now, ""), nil)
	if status != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", status, raw)
	}
	e.store = nil
}
