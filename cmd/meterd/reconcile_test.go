package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/store/sqlite"
)

// runReport runs one command line as run does, with the report command wired even before root.go adds it.
func runReport(t *testing.T, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ran := false
	root := newRoot(strings.NewReader(""), &stdout, &stderr, &ran)
	if c, _, err := root.Find([]string{"report"}); err != nil || c == root {
		rc := newReportCmd()
		markRuns(rc, &ran)
		root.AddCommand(rc)
	}
	root.SetArgs(args)
	code := exitOK
	if err := root.ExecuteContext(t.Context()); err != nil {
		fmt.Fprintf(&stderr, "meterd: %v\n", err)
		var ue usageError
		code = exitRuntime
		if errors.As(err, &ue) || !ran {
			code = exitUsage
		}
	}
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// reconcileStore builds a store through the real commands: two instances' usage of hours that have ended, then
// `meterd push` closes them and pushes to an in-process KooGallery simulator.
func reconcileStore(t *testing.T) (cfgPath, dbPath string, first time.Time) {
	t.Helper()
	const key = "reconcile-test-key"
	sim := kgsim.New(kgsim.Config{Key: []byte(key)})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	dbPath = filepath.Join(dir, "meterd.db")
	cfgPath = writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: tier, brackets: [{up_to: "2", unit_price: "0.5"}, {unit_price: "0.25"}]}
koogallery: {endpoint: %q, timeout: 2s}
store: {sqlite: {path: %q}}
`, srv.URL, dbPath))
	t.Setenv("METERD_KOOGALLERY_KEY", key)
	cfg, _, err := config.Load(cfgPath, os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, dbPath, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := instance.NewRegistry(st, instance.NewRefs(cfg.MeterSet(), cfg.Catalog(), nil), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	first = time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	v := ingest.NewValidator(cfg.MeterSet(), 21*24*time.Hour, 5*time.Minute)
	var evs []*ingest.Event
	for i, id := range []string{"i-a", "i-b"} {
		if _, err := reg.Apply(ctx, instance.Spec{InstanceID: id, Meter: "calls", SKU: "CALLS", StartedAt: first.Add(-time.Hour).Format(time.RFC3339)}); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < 3+i; n++ {
			raw := fmt.Sprintf(`{"specversion":"1.0","id":"%s-%d","source":"t","type":"api_call","subject":%q,"time":%q}`, id, n, id,
				first.Add(time.Duration(n*25)*time.Minute).Format(time.RFC3339))
			ev, rej := v.Validate([]byte(raw), time.Now())
			if rej != nil {
				t.Fatal(rej.Reason)
			}
			evs = append(evs, ev)
		}
	}
	if _, err := st.Write(ctx, evs, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if res := runCLI(t, "push", "--config", cfgPath); res.code != 0 {
		t.Fatalf("push: %s", res)
	}
	return cfgPath, dbPath, first
}

// TestReportReconcileCLI: exit 0 with the report when the invariant holds, 1 with the violations on stderr when a
// corrupted ledger breaks it, 2 for usage errors; --out writes the file whole.
func TestReportReconcileCLI(t *testing.T) {
	cfgPath, dbPath, first := reconcileStore(t)
	from, to := first.Format("2006-01-02T15"), first.Add(3*time.Hour).Format(time.RFC3339)

	res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to)
	if res.code != 0 {
		t.Fatalf("csv: %s", res)
	}
	recs, err := csv.NewReader(strings.NewReader(res.stdout)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// i-a: events at :00, :25, :50 -> 3 in the first hour; i-b: 4 events -> 3 + 1.
	if len(recs) != 1+3 || recs[0][0] != "instance_id" {
		t.Fatalf("csv records %v", recs)
	}
	for _, rec := range recs[1:] {
		if rec[17] != "ACCEPTED" {
			t.Errorf("line %v", rec)
		}
	}

	out := filepath.Join(t.TempDir(), "reconcile.json")
	res = runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to, "--format", "json", "--out", out)
	if res.code != 0 || !strings.Contains(res.stdout, "invariant holds") {
		t.Fatalf("json: %s", res)
	}
	var doc struct {
		Lines     []json.RawMessage `json:"lines"`
		Invariant struct {
			Holds bool `json:"holds"`
		} `json:"invariant"`
		Totals struct {
			ByInstance []struct {
				InstanceID     string `json:"instance_id"`
				ExpectedAmount string `json:"expected_amount"`
			} `json:"by_instance"`
		} `json:"totals"`
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil || !doc.Invariant.Holds || len(doc.Lines) != 3 {
		t.Fatalf("%v %s", err, data)
	}
	// Tier: 3 calls -> 3 x 0.25 = 0.75 (i-a); 3 + 1 calls -> 0.75 + 0.5 = 1.25 (i-b).
	if tb := doc.Totals.ByInstance; len(tb) != 2 || tb[0].ExpectedAmount != "0.75" || tb[1].ExpectedAmount != "1.25" {
		t.Errorf("totals %+v", tb)
	}

	html := filepath.Join(t.TempDir(), "reconcile.html")
	if res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to, "--format", "html", "--out", html); res.code != 0 {
		t.Fatalf("html: %s", res)
	}
	if page, err := os.ReadFile(html); err != nil || !bytes.Contains(page, []byte("<svg")) {
		t.Fatalf("html page: %v", err)
	}

	// Usage errors: exit 2, nothing written.
	bad := filepath.Join(t.TempDir(), "bad.json")
	for _, args := range [][]string{
		{"--from", from},
		{"--from", from, "--to", to, "--format", "pdf"},
		{"--from", to, "--to", from},
		{"--from", "yesterday", "--to", to},
		{"--from", from, "--to", to, "--bill", filepath.Join(t.TempDir(), "missing.csv")},
		{"--from", from, "--to", to, "--unknown"},
	} {
		res := runReport(t, append([]string{"report", "reconcile", "--config", cfgPath, "--out", bad}, args...)...)
		if res.code != 2 {
			t.Errorf("%v: %s", args, res)
		}
	}
	missingStore := writeFile(t, t.TempDir(), "m.yaml", fmt.Sprintf("store: {sqlite: {path: %q}}\n", filepath.Join(t.TempDir(), "none.db")))
	if res := runReport(t, "report", "reconcile", "--config", missingStore, "--from", from, "--to", to); res.code != 2 {
		t.Errorf("missing store: %s", res)
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed run wrote %s", bad)
	}

	// A corrupted ledger: exit 1, each violation on stderr with where it is; the report is still written.
	db, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE sdrs SET usage_value = '7' WHERE instance_id = 'i-b' AND hour_ms = ?`, first.Add(time.Hour).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	res = runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to, "--format", "json", "--out", out)
	if res.code != 1 {
		t.Fatalf("corrupted: %s", res)
	}
	hour := first.Add(time.Hour).Format(time.RFC3339)
	if !strings.Contains(res.stderr, "meterd: invariant: i-b calls "+hour+": SDR usage_value differs from the closed hour's: want 1, got 7") ||
		!strings.Contains(res.stderr, "meterd: invariant: i-b calls: opening carry") || !strings.Contains(res.stderr, "invariant does not hold: 2 violations") {
		t.Errorf("stderr:\n%s", res.stderr)
	}
	if data, err := os.ReadFile(out); err != nil || !bytes.Contains(data, []byte(`"holds":false`)) {
		t.Errorf("report of a broken invariant not written: %v", err)
	}
}

// TestReportReconcileWithBill: --bill imports the export first, and the report shows it: matched SDRs are BILLED.
func TestReportReconcileWithBill(t *testing.T) {
	cfgPath, dbPath, first := reconcileStore(t)
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT metering_sn, usage_value, amount FROM sdrs ORDER BY hour_ms, instance_id`)
	if err != nil {
		t.Fatal(err)
	}
	var bill strings.Builder
	bill.WriteString("metering_sn,usage_value,amount,status\n")
	n := 0
	for rows.Next() {
		var sn, usage, amount string
		if err := rows.Scan(&sn, &usage, &amount); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			amount = "9.99" // a planted amount difference
		}
		fmt.Fprintf(&bill, "%s,%s,%s,NORMAL\n", sn, usage, amount)
		n++
	}
	rows.Close()
	bill.WriteString("m-unknown,1,0.5,NORMAL\n") // in the bill, not in the ledger
	billPath := writeFile(t, t.TempDir(), "bill.csv", bill.String())
	from, to := first.Format(time.RFC3339), first.Add(3*time.Hour).Format(time.RFC3339)
	res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to, "--format", "json", "--bill", billPath)
	if res.code != 0 {
		t.Fatalf("%s", res)
	}
	var doc struct {
		Lines []struct {
			State string `json:"state"`
		} `json:"lines"`
		Bill struct {
			Matched         int               `json:"matched"`
			Billed          int               `json:"billed"`
			MissingInLedger []json.RawMessage `json:"missing_in_ledger"`
			AmountDiffs     []struct {
				Bill string `json:"bill"`
			} `json:"amount_diffs"`
		} `json:"bill"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Bill.Matched != n || doc.Bill.Billed != n || len(doc.Bill.MissingInLedger) != 1 || len(doc.Bill.AmountDiffs) != 1 ||
		doc.Bill.AmountDiffs[0].Bill != "9.99" {
		t.Errorf("bill %+v", doc.Bill)
	}
	for _, l := range doc.Lines {
		if l.State != "BILLED" {
			t.Errorf("line state %s", l.State)
		}
	}
	bad := writeFile(t, t.TempDir(), "bad.csv", "metering_sn,usage_value,amount,status\nm-1,abc,1,NORMAL\n")
	if res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", from, "--to", to, "--bill", bad); res.code != 2 ||
		!strings.Contains(res.stderr, "line 2") {
		t.Errorf("malformed bill: %s", res)
	}
}
