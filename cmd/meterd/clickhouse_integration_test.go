//go:build integration

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/report/kgsim"
)

// TestClickHouseEndToEnd runs the whole job on store.driver clickhouse with real processes: `meterd migrate`,
// `meterd serve` taking HTTP ingest straight into ClickHouse (with repeats and a conflicting copy), a restart,
// the close, the push to `meterd kgsim` with 5xx and lost answers injected, then `meterd report reconcile`.
// Every instance-hour is billed exactly once with the exact totals of the events sent, and the invariant holds.
func TestClickHouseEndToEnd(t *testing.T) {
	addr := services.ClickHouse(t)
	db := services.Database(t, addr)
	const key = "ch-e2e-interconnection-key"
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key, "--fail-rate", "0.3", "--lost-rate", "0.2", "--seed", "5")
	defer func() { _ = sim.Process.Signal(syscall.SIGTERM); _ = sim.Wait() }()

	const instances = 6
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
plans:
  - {sku: TOK, meter: tokens, currency: CNY, mode: tier, brackets: [{up_to: "100", unit_price: "0.3"}, {unit_price: "0.2"}]}
koogallery: {endpoint: %s%s, timeout: 2s}
push: {retry_initial: 100ms, retry_max: 500ms}
store: {driver: clickhouse, clickhouse: {addr: %q, database: %s}}
instances:
`, simURL, kgsim.DefaultPath, addr, db)
	for i := range instances {
		fmt.Fprintf(&cfg, "  - {instance_id: i-%d, subject: s%d, meter: tokens, sku: TOK, started_at: \"2026-01-01T00:00:00Z\"}\n", i, i)
	}
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := runCLI(t, "migrate", "--config", cfgPath); res.code != 0 || !strings.Contains(res.stdout, "store clickhouse") {
		t.Fatalf("migrate: %s", res)
	}

	// Three ended hours of usage: instance i, hour h, event k carries tokens i+h+k.5 (exact decimals).
	h1 := time.Now().UTC().Truncate(time.Hour).Add(-4 * time.Hour)
	want := map[string]decimal.Decimal{} // "i-N hour" -> usage
	var body strings.Builder
	n := 0
	for i := range instances {
		for h := range 3 {
			for k := range 40 {
				tokens := decimal.New(int64(10*(i+h+k))+5, -1)
				hour := h1.Add(time.Duration(h) * time.Hour)
				fmt.Fprintf(&body, `{"specversion":"1.0","id":"e-%d-%d-%d","source":"ch-e2e","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":%s}}`+"\n",
					i, h, k, i, hour.Add(time.Duration(k)*time.Minute).Format(time.RFC3339), tokens)
				want[fmt.Sprintf("i-%d %s", i, hour.Format(time.RFC3339))] = want[fmt.Sprintf("i-%d %s", i, hour.Format(time.RFC3339))].Add(tokens)
				n++
			}
		}
	}
	env := []string{"METERD_KOOGALLERY_KEY=" + key}
	srv, base, logs := startServe(t, cfgPath, env...)
	client := &ingest.Client{URL: base + "/v1/events"}
	if resp, err := client.PostNDJSON(t.Context(), []byte(body.String())); err != nil || resp.Accepted != n {
		t.Fatalf("ingest: %+v %v\n%s", resp, err, logs)
	}
	// The same batch again is all duplicates; a changed copy of one event is a conflict, never summed.
	if resp, err := client.PostNDJSON(t.Context(), []byte(body.String())); err != nil || resp.Duplicates != n {
		t.Fatalf("repeat: %+v %v", resp, err)
	}
	conflict := fmt.Sprintf(`{"specversion":"1.0","id":"e-0-0-0","source":"ch-e2e","type":"llm_request","subject":"s0","time":%q,"data":{"tokens":999}}`,
		h1.Format(time.RFC3339))
	if resp, err := client.PostNDJSON(t.Context(), []byte(conflict+"\n")); err != nil || len(resp.Rejected) != 1 || resp.Rejected[0].Reason != ingest.ConflictReason {
		t.Fatalf("conflict: %+v %v", resp, err)
	}
	// A restart in the middle: the close and push resume from what ClickHouse holds.
	_ = srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs)
	}
	srv, base, logs = startServe(t, cfgPath, env...)
	defer func() { _ = srv.Process.Signal(syscall.SIGTERM); _ = srv.Wait() }()

	records := waitAccepted(t, base, h1, len(want), 90*time.Second, func() string { return fmt.Sprintf("serve:\n%s\nkgsim:\n%s", logs, simLogs) })
	for _, r := range records {
		w, ok := want[r.InstanceID+" "+r.Hour]
		if got, err := decimal.NewFromString(r.UsageValue); !ok || err != nil || !got.Equal(w) {
			t.Errorf("record %+v, want usage %s", r, w)
		}
	}
	checkBilledExactly(t, simURL, want)
	_ = srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs)
	}

	// Finance's report over the same store: totals per instance equal the events sent, and the invariant holds.
	res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", h1.Format(time.RFC3339),
		"--to", h1.Add(3*time.Hour).Format(time.RFC3339), "--format", "json")
	if res.code != 0 {
		t.Fatalf("report: %s", res)
	}
	var rep struct {
		Totals struct {
			ByInstance []struct {
				InstanceID    string `json:"instance_id"`
				Events        int64  `json:"events"`
				Quantity      string `json:"quantity"`
				AcceptedUsage string `json:"accepted_usage"`
			} `json:"by_instance"`
		} `json:"totals"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("report JSON: %v\n%s", err, res.stdout)
	}
	if len(rep.Totals.ByInstance) != instances {
		t.Fatalf("report has %d instances, want %d:\n%s", len(rep.Totals.ByInstance), instances, res.stdout)
	}
	for _, it := range rep.Totals.ByInstance {
		var sum decimal.Decimal
		for h := range 3 {
			sum = sum.Add(want[it.InstanceID+" "+h1.Add(time.Duration(h)*time.Hour).Format(time.RFC3339)])
		}
		q, _ := decimal.NewFromString(it.Quantity)
		a, _ := decimal.NewFromString(it.AcceptedUsage)
		if it.Events != 120 || !q.Equal(sum) || !a.Equal(sum) {
			t.Errorf("report %+v, want 120 events, quantity and accepted %s", it, sum)
		}
	}
	if strings.Contains(logs.String(), key) || strings.Contains(simLogs.String(), key) || strings.Contains(res.stdout, key) {
		t.Error("the KooGallery key leaked into a log or the report")
	}
}

// checkBilledExactly reads what the simulator at simURL billed and checks it against want ("instance hour" -> usage,
// the hour in RFC 3339): every instance-hour billed exactly once, with its usage, and nothing else.
func checkBilledExactly(t *testing.T, simURL string, want map[string]decimal.Decimal) {
	t.Helper()
	billed, err := kgsim.FetchBilled(t.Context(), http.DefaultClient, simURL)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, b := range billed {
		k := b.InstanceID + " " + b.BeginTime.Format(time.RFC3339)
		seen[k]++
		if w, ok := want[k]; !ok || !b.UsageValue.Equal(w) {
			t.Errorf("billed %s usage %s, want %s", k, b.UsageValue, w)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("billed %d instance-hours, want %d", len(seen), len(want))
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("%s billed %d times", k, c)
		}
	}
}
