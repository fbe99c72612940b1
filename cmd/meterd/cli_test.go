package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
)

// syncBuffer is a bytes.Buffer safe for the server goroutines that log into it while the test reads it.
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

type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs one meterd command line in-process, exactly as main does but with captured output.
func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, strings.NewReader(""), &stdout, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// writeFile writes a file under dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// storeConfig writes a config whose store lives under a fresh temporary directory, listening on listen.
func storeConfig(t *testing.T, listen string) (cfgPath, dbPath string) {
	t.Helper()
	dir := t.TempDir()
	dbPath = filepath.Join(dir, "data", "meterd.db")
	cfg := fmt.Sprintf(`meters:
  - {key: api_calls, event_type: api_call, aggregation: COUNT}
listen: %q
store: {driver: sqlite, sqlite: {path: %q}}
`, listen, dbPath)
	return writeFile(t, dir, "meterd.yaml", cfg), dbPath
}

// TestHelp: --help exits 0 and lists the commands.
func TestHelp(t *testing.T) {
	r := runCLI(t, "--help")
	if r.code != exitOK {
		t.Fatalf("--help: %v", r)
	}
	for _, c := range []string{"serve", "migrate", "price", "events", "version"} {
		if !regexp.MustCompile(`(?m)^\s+` + c + `\s`).MatchString(r.stdout) {
			t.Errorf("--help does not list %q:\n%s", c, r.stdout)
		}
	}
	if r := runCLI(t, "events", "--help"); r.code != exitOK || !strings.Contains(r.stdout, "send") || !strings.Contains(r.stdout, "gen") {
		t.Errorf("events --help: %v", r)
	}
}

func TestVersion(t *testing.T) {
	r := runCLI(t, "version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "meterd ") || !strings.Contains(r.stdout, "revision") {
		t.Errorf("version: %v", r)
	}
}

// TestUsageErrors: a command line the program cannot act on exits 2 with one line on stderr naming the problem.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"version", "--bogus"}, "unknown flag: --bogus"},
		{"unknown flag of a subcommand", []string{"serve", "--validate", "--confg", "x.yaml"}, "unknown flag: --confg"},
		{"extra argument", []string{"migrate", "extra"}, `unknown command "extra"`},
		{"missing config file", []string{"serve", "--validate", "--config", "testdata/no-such.yaml"}, "read config"},
		{"bad log level", []string{"serve", "--config", "testdata/price.yaml", "--log-level", "loud"}, "--log-level"},
		{"send without --to", []string{"events", "send", "--file", "x"}, `required flag(s) "to" not set`},
		{"send to a bad kafka URL", []string{"events", "send", "--to", "kafka://localhost/usage-events"}, "--to: kafka URL"},
		{"send to a non-URL", []string{"events", "send", "--to", "localhost:8080"}, "want the URL of POST /v1/events"},
		{"send a missing file", []string{"events", "send", "--to", "http://127.0.0.1:1/v1/events", "--file", "testdata/no-such.ndjson"}, "--file"},
		{"gen duplicate rate", []string{"events", "gen", "--duplicate-rate", "1"}, "--duplicate-rate"},
		{"gen count", []string{"events", "gen", "--count", "0"}, "must be positive"},
		{"gen bad start", []string{"events", "gen", "--start", "yesterday"}, "--start"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, tt.args...)
			if r.code != exitUsage {
				t.Fatalf("want exit 2: %v", r)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr lacks %q: %v", tt.want, r)
			}
			if !strings.HasPrefix(r.stderr, "meterd: ") {
				t.Errorf("stderr does not start with meterd: %q", r.stderr)
			}
		})
	}
}

// TestServeValidate: serve --validate checks a file without starting: exit 2 listing every problem, or
// "config ok" and exit 0.
func TestServeValidate(t *testing.T) {
	bad := runCLI(t, "serve", "--validate", "--config", "testdata/bad.yaml")
	if bad.code != exitUsage {
		t.Fatalf("bad config: %v", bad)
	}
	for _, want := range []string{
		"testdata/bad.yaml",
		"meters[0].value_property: COUNT meters count events and take no value",
		"plans[0].brackets[1].up_to: must be greater than 3",
		"koogallery.batch_size: 1001 must be from 1 to 1000",
		"schedule.deadline: 15m0s must be >= schedule.close_delay (20m0s)",
		`store.driver: "postgres" must be sqlite or clickhouse`,
	} {
		if !strings.Contains(bad.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, bad.stderr)
		}
	}
	if strings.Contains(bad.stdout, "config ok") {
		t.Errorf("bad config reported ok: %v", bad)
	}

	good := runCLI(t, "serve", "--validate", "--config", "testdata/price.yaml")
	if good.code != exitOK || good.stdout != "config ok\n" {
		t.Fatalf("good config: %v", good)
	}
	// Warnings are shown but do not fail validation.
	if !strings.Contains(good.stderr, "warning: koogallery.endpoint: not set") {
		t.Errorf("no pushing-disabled warning: %v", good)
	}
	// --validate must not open the store or listen: the default store path must not have been created.
	if _, err := os.Stat("meterd-data"); err == nil {
		t.Error("serve --validate created ./meterd-data")
	}
}

// priceJSON is `meterd price --output json` decoded with every contract decimal as a JSON string: decoding
// fails if any of them is a JSON number.
type priceJSON struct {
	SKU           string  `json:"sku"`
	Mode          string  `json:"mode"`
	Usage         string  `json:"usage"`
	Cumulative    string  `json:"cumulative"`
	Amount        string  `json:"amount"`
	Currency      string  `json:"currency"`
	AmountRounded string  `json:"amount_rounded"`
	Lines         []lineJ `json:"lines"`
}

type lineJ struct {
	From      string  `json:"from"`
	To        *string `json:"to"`
	Quantity  string  `json:"quantity"`
	UnitPrice string  `json:"unit_price"`
	Amount    string  `json:"amount"`
}

func strp(s string) *string { return &s }

// TestPriceDocumentedExamples prices the KooGallery examples (brackets up to 3 at 0.3, beyond at 0.2) and checks
// the JSON contract: the fields, exact decimals as strings, the breakdown lines.
func TestPriceDocumentedExamples(t *testing.T) {
	tests := []struct {
		sku, usage, cumulative string
		wantAmount             string
		wantRounded            string
		wantLines              []lineJ
	}{
		{sku: "STEP-SKU", usage: "8", wantAmount: "1.9", wantRounded: "1.90", wantLines: []lineJ{
			{From: "0", To: strp("3"), Quantity: "3", UnitPrice: "0.3", Amount: "0.9"},
			{From: "3", To: strp("8"), Quantity: "5", UnitPrice: "0.2", Amount: "1"}, // a step line is the part of [c, c+u] in the bracket
		}},
		{sku: "STEP-SKU", usage: "2", cumulative: "2", wantAmount: "0.5", wantRounded: "0.50", wantLines: []lineJ{
			{From: "2", To: strp("3"), Quantity: "1", UnitPrice: "0.3", Amount: "0.3"},
			{From: "3", To: strp("4"), Quantity: "1", UnitPrice: "0.2", Amount: "0.2"},
		}},
		{sku: "STEP-SKU", usage: "2", wantAmount: "0.6", wantRounded: "0.60", wantLines: []lineJ{
			{From: "0", To: strp("2"), Quantity: "2", UnitPrice: "0.3", Amount: "0.6"},
		}},
		{sku: "TIER-SKU", usage: "2", wantAmount: "0.6", wantRounded: "0.60", wantLines: []lineJ{
			{From: "0", To: strp("3"), Quantity: "2", UnitPrice: "0.3", Amount: "0.6"},
		}},
		{sku: "TIER-SKU", usage: "8", wantAmount: "1.6", wantRounded: "1.60", wantLines: []lineJ{
			{From: "3", To: nil, Quantity: "8", UnitPrice: "0.2", Amount: "1.6"},
		}},
		{sku: "TIER-SKU", usage: "3", wantAmount: "0.9", wantRounded: "0.90", wantLines: []lineJ{
			{From: "0", To: strp("3"), Quantity: "3", UnitPrice: "0.3", Amount: "0.9"},
		}},
		// Tier is not monotone across a bound: KooGallery's rule.
		{sku: "TIER-SKU", usage: "3.0001", wantAmount: "0.60002", wantRounded: "0.60", wantLines: []lineJ{
			{From: "3", To: nil, Quantity: "3.0001", UnitPrice: "0.2", Amount: "0.60002"},
		}},
		// Tier ignores --cumulative.
		{sku: "TIER-SKU", usage: "2", cumulative: "100", wantAmount: "0.6", wantRounded: "0.60", wantLines: []lineJ{
			{From: "0", To: strp("3"), Quantity: "2", UnitPrice: "0.3", Amount: "0.6"},
		}},
		{sku: "FIXED-SKU", usage: "3", wantAmount: "1.5", wantRounded: "1.50", wantLines: []lineJ{
			{From: "0", To: nil, Quantity: "3", UnitPrice: "0.5", Amount: "1.5"},
		}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s usage %s cumulative %s", tt.sku, tt.usage, tt.cumulative), func(t *testing.T) {
			args := []string{"price", "--config", "testdata/price.yaml", "--sku", tt.sku, "--usage", tt.usage, "--output", "json"}
			if tt.cumulative != "" {
				args = append(args, "--cumulative", tt.cumulative)
			}
			r := runCLI(t, args...)
			if r.code != exitOK {
				t.Fatalf("%v", r)
			}
			var raw map[string]json.RawMessage
			if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, r.stdout)
			}
			for _, k := range []string{"sku", "mode", "usage", "cumulative", "amount", "currency", "lines"} {
				if _, ok := raw[k]; !ok {
					t.Errorf("output lacks %q: %s", k, r.stdout)
				}
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			var got priceJSON
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("decimals must be JSON strings: %v\n%s", err, r.stdout)
			}
			wantCum := tt.cumulative
			if wantCum == "" {
				wantCum = "0"
			}
			wantMode, wantCur := strings.ToLower(strings.TrimSuffix(tt.sku, "-SKU")), "CNY"
			if tt.sku == "FIXED-SKU" {
				wantCur = "USD"
			}
			if got.SKU != tt.sku || got.Mode != wantMode || got.Usage != tt.usage || got.Cumulative != wantCum ||
				got.Amount != tt.wantAmount || got.AmountRounded != tt.wantRounded || got.Currency != wantCur {
				t.Errorf("got %+v\nwant sku %s mode %s usage %s cumulative %s amount %s rounded %s currency %s",
					got, tt.sku, wantMode, tt.usage, wantCum, tt.wantAmount, tt.wantRounded, wantCur)
			}
			if !slices.EqualFunc(got.Lines, tt.wantLines, func(a, b lineJ) bool {
				return a.From == b.From && a.Quantity == b.Quantity && a.UnitPrice == b.UnitPrice && a.Amount == b.Amount &&
					(a.To == nil) == (b.To == nil) && (a.To == nil || *a.To == *b.To)
			}) {
				t.Errorf("lines %s, want %+v", raw["lines"], tt.wantLines)
			}
		})
	}
}

// TestPriceText: the default text output shows the exact and the rounded amount.
func TestPriceText(t *testing.T) {
	r := runCLI(t, "price", "--config", "testdata/price.yaml", "--sku", "STEP-SKU", "--usage", "8")
	if r.code != exitOK || !strings.Contains(r.stdout, "-> 1.9 CNY (1.90 rounded to 2 places)") {
		t.Errorf("%v", r)
	}
}

// TestPriceBadInput: each bad input exits 2 with a one-line reason and prints nothing on stdout.
func TestPriceBadInput(t *testing.T) {
	base := []string{"price", "--config", "testdata/price.yaml"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown sku", []string{"--sku", "NOPE", "--usage", "1"}, `--sku: sku "NOPE": no plan for this sku`},
		{"negative usage", []string{"--sku", "STEP-SKU", "--usage=-1"}, "--usage: -1 must be >= 0"},
		{"non-numeric usage", []string{"--sku", "STEP-SKU", "--usage", "abc"}, "--usage:"},
		{"NaN usage", []string{"--sku", "STEP-SKU", "--usage", "NaN"}, "--usage:"},
		{"negative cumulative", []string{"--sku", "STEP-SKU", "--usage", "1", "--cumulative=-2"}, "--cumulative: -2 must be >= 0"},
		{"missing sku", []string{"--usage", "1"}, `required flag(s) "sku" not set`},
		{"bad output", []string{"--sku", "STEP-SKU", "--usage", "1", "--output", "xml"}, `--output: "xml"`},
		{"bad places", []string{"--sku", "STEP-SKU", "--usage", "1", "--places", "11"}, "--places: 11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, append(slices.Clone(base), tt.args...)...)
			if r.code != exitUsage {
				t.Fatalf("want exit 2: %v", r)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr lacks %q: %v", tt.want, r)
			}
			if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.HasSuffix(r.stderr, "\n") {
				t.Errorf("want one line on stderr, got %d: %q", n, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout not empty: %q", r.stdout)
			}
		})
	}
	if r := runCLI(t, "price", "--sku", "STEP-SKU", "--usage", "1", "--config", "testdata/bad.yaml"); r.code != exitUsage ||
		!strings.Contains(r.stderr, "koogallery.batch_size") {
		t.Errorf("price with a bad config: %v", r)
	}
}

// TestMigrateTwice: migrate applies the pending migrations once; a second run applies nothing and succeeds.
func TestMigrateTwice(t *testing.T) {
	cfg, db := storeConfig(t, "127.0.0.1:8080")
	first := runCLI(t, "migrate", "--config", cfg)
	if first.code != exitOK {
		t.Fatalf("first migrate: %v", first)
	}
	appliedRe := regexp.MustCompile(`(?m)^applied \d{4}_\w+$`)
	summaryRe := regexp.MustCompile(`(?m)^store (.+) at schema version (\d+) \((\d+) applied now\)$`)
	applied := appliedRe.FindAllString(first.stdout, -1)
	m := summaryRe.FindStringSubmatch(first.stdout)
	if len(applied) == 0 || m == nil || m[1] != db || m[3] != fmt.Sprint(len(applied)) || m[2] == "0" {
		t.Fatalf("first migrate output:\n%s", first.stdout)
	}
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("store not created: %v", err)
	}
	second := runCLI(t, "migrate", "--config", cfg)
	if second.code != exitOK {
		t.Fatalf("second migrate: %v", second)
	}
	m2 := summaryRe.FindStringSubmatch(second.stdout)
	if appliedRe.MatchString(second.stdout) || m2 == nil || m2[3] != "0" || m2[2] != m[2] {
		t.Errorf("second migrate applied something:\n%s", second.stdout)
	}
}

// TestEventsGen: gen writes --count valid NDJSON events, the same bytes on every run with the same flags.
func TestEventsGen(t *testing.T) {
	start := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	args := []string{"events", "gen", "--count", "5", "--duplicate-rate", "0", "--start", start.Format(time.RFC3339)}
	r1, r2 := runCLI(t, args...), runCLI(t, args...)
	if r1.code != exitOK || r2.code != exitOK {
		t.Fatalf("gen: %v\n%v", r1, r2)
	}
	if r1.stdout != r2.stdout {
		t.Errorf("two runs differ:\n%s\n---\n%s", r1.stdout, r2.stdout)
	}
	meters, err := meter.NewSet([]meter.Spec{{Key: "api_calls", EventType: "api_call", Aggregation: "COUNT"}}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	v := ingest.NewValidator(meters, 21*24*time.Hour, 5*time.Minute)
	lines := strings.Split(strings.TrimSuffix(r1.stdout, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5:\n%s", len(lines), r1.stdout)
	}
	ids := map[string]bool{}
	for i, l := range lines {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i+1, err, l)
		}
		ev2, rej := v.Validate([]byte(l), time.Now())
		if rej != nil {
			t.Fatalf("line %d rejected by the ingest validator: %s: %s", i+1, rej.Reason, l)
		}
		if ev2.Type != "api_call" || ev2.Time.Before(start) || !ev2.Time.Before(start.Add(time.Hour)) {
			t.Errorf("line %d: type %s time %s", i+1, ev2.Type, ev2.Time)
		}
		ids[ev2.ID] = true
	}
	if len(ids) != 5 {
		t.Errorf("ids not distinct with --duplicate-rate 0: %v", ids)
	}

	// With a value property the events feed a SUM meter, with exact decimal values.
	r := runCLI(t, "events", "gen", "--count", "3", "--type", "llm_request", "--property", "tokens", "--start", start.Format(time.RFC3339))
	sum, err := meter.NewSet([]meter.Spec{{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"}}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	n := 0
	for sc.Scan() {
		if _, rej := ingest.NewValidator(sum, 21*24*time.Hour, 5*time.Minute).Validate(sc.Bytes(), time.Now()); rej != nil {
			t.Errorf("SUM event rejected: %s: %s", rej.Reason, sc.Text())
		}
		n++
	}
	if r.code != exitOK || n != 3 {
		t.Errorf("gen with --property: %d lines, %v", n, r)
	}
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// startInProcessServe runs `meterd serve` in-process until the returned stop is called; stop returns serve's exit code.
func startInProcessServe(t *testing.T) (addr string, stderr *syncBuffer, stop func() int) {
	t.Helper()
	addr = freeAddr(t)
	cfg, _ := storeConfig(t, addr)
	ctx, cancel := context.WithCancel(t.Context())
	stderr = &syncBuffer{}
	var stdout syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"serve", "--config", cfg}, strings.NewReader(""), &stdout, stderr) }()

	stopped := false
	code := -1
	stop = func() int {
		if stopped {
			return code
		}
		stopped = true
		cancel()
		select {
		case code = <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("serve did not stop within 30s; stderr:\n%s", stderr)
		}
		return code
	}
	t.Cleanup(func() { stop() })

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d before it was ready; stderr:\n%s", code, stderr)
		default:
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr, stderr, stop
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready at %s within 15s (last error %v); stderr:\n%s", addr, err, stderr)
		}
		time.Sleep(20 * time.Millisecond) // polling readiness, bounded by the deadline above
	}
}

// TestEventsSendToServe drives the real server in-process: good lines are accepted, a blank line is skipped, a
// malformed line and an invalid event are rejected and named by their line in the FILE (not in the request), a
// repeat counts as a duplicate, the exit code is 1 because of the rejects, and serve stops cleanly with 0.
func TestEventsSendToServe(t *testing.T) {
	addr, serveErr, stop := startInProcessServe(t)
	url := "http://" + addr + "/v1/events"

	at := time.Now().UTC().Add(-10 * time.Minute).Format(time.RFC3339)
	event := func(id, typ string) string {
		return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"cli-test","type":%q,"subject":"tenant-1","time":%q}`, id, typ, at)
	}
	file := strings.Join([]string{
		event("e1", "api_call"),        // line 1
		event("e2", "api_call"),        // line 2
		"",                             // line 3: blank, skipped
		`{"specversion":"1.0","id":`,   // line 4: malformed
		event("e1", "api_call"),        // line 5: duplicate of line 1
		event("e-bad", "no_such_type"), // line 6: feeds no meter
		"   ",                          // line 7: blank
		event("e3", "api_call"),        // line 8
	}, "\n") + "\n"
	path := writeFile(t, t.TempDir(), "events.ndjson", file)

	// Batches of 2 spread the file over several requests, so line numbers must be mapped back per request,
	// and the duplicate arrives in a later request than its original.
	r := runCLI(t, "events", "send", "--to", url, "--file", path, "--batch", "2")
	if r.code != exitRuntime {
		t.Fatalf("want exit 1 because of the rejects: %v", r)
	}
	if r.stdout != "accepted 3, duplicates 1, rejected 2\n" {
		t.Errorf("summary %q, want accepted 3, duplicates 1, rejected 2", r.stdout)
	}
	rejectRe := regexp.MustCompile(`(?m)^line (\d+): rejected`)
	var rejectedLines []string
	for _, m := range rejectRe.FindAllStringSubmatch(r.stderr, -1) {
		rejectedLines = append(rejectedLines, m[1])
	}
	if !slices.Equal(rejectedLines, []string{"4", "6"}) {
		t.Errorf("rejected lines %v, want [4 6]; stderr:\n%s", rejectedLines, r.stderr)
	}
	if !strings.Contains(r.stderr, `line 6: rejected (id "e-bad"): `) || !strings.Contains(r.stderr, `"no_such_type" feeds no configured meter`) {
		t.Errorf("stderr does not explain line 6:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "not valid JSON") {
		t.Errorf("stderr does not explain line 4:\n%s", r.stderr)
	}

	// The same file again, in one request: everything stored is now a duplicate, the rejects are rejected again.
	again := runCLI(t, "events", "send", "--to", url, "--file", path)
	if again.code != exitRuntime || again.stdout != "accepted 0, duplicates 4, rejected 2\n" {
		t.Errorf("resend: %v", again)
	}

	// A file of good events only exits 0, read from stdin.
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"events", "send", "--to", url}, strings.NewReader(event("e4", "api_call")+"\n"), &stdout, &stderr)
	if code != exitOK || stdout.String() != "accepted 1, duplicates 0, rejected 0\n" {
		t.Errorf("clean send from stdin: exit %d stdout %q stderr %q", code, stdout.String(), stderr.String())
	}

	// The rejects are kept as dead letters.
	resp, err := http.Get("http://" + addr + "/v1/events/rejected?limit=100")
	if err != nil {
		t.Fatal(err)
	}
	var dead struct {
		Rejected []struct {
			ID     string `json:"id"`
			Reason string `json:"reason"`
		} `json:"rejected"`
	}
	err = json.NewDecoder(resp.Body).Decode(&dead)
	if cerr := resp.Body.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(dead.Rejected) != 4 { // two per send of the file
		t.Errorf("%d dead letters, want 4: %+v", len(dead.Rejected), dead.Rejected)
	}

	if code := stop(); code != exitOK {
		t.Errorf("serve exited %d after cancel, want 0; stderr:\n%s", code, serveErr)
	}
	if !strings.Contains(serveErr.String(), `msg=stopped`) {
		t.Errorf("serve did not log a clean stop:\n%s", serveErr)
	}
}

// TestEventsSendServerDown: a target that cannot be reached is a runtime failure (exit 1), not a usage error.
func TestEventsSendServerDown(t *testing.T) {
	addr := freeAddr(t)
	path := writeFile(t, t.TempDir(), "events.ndjson", `{"specversion":"1.0","id":"x"}`+"\n")
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"events", "send", "--to", "http://" + addr + "/v1/events", "--file", path}, strings.NewReader(""), &stdout, &stderr)
	if code != exitRuntime || !strings.Contains(stderr.String(), "send events of lines 1-1") {
		t.Errorf("exit %d stderr %q", code, stderr.String())
	}
}
