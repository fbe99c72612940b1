package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/store/sqlite"
)

func TestProcessMetrics(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Store.SQLite.Path = filepath.Join(dir, "data", "meterd.db")
	reg := prometheus.NewRegistry()
	registerProcessMetrics(reg, &cfg, roleScheduler)

	// Before the store's directory exists the disk metrics are left out, without failing the scrape.
	if n, err := testutil.GatherAndCount(reg, "meterd_store_disk_free_bytes", "meterd_store_file_size_bytes"); err != nil || n != 0 {
		t.Errorf("disk metrics without a directory: %d %v", n, err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Store.SQLite.Path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Store.SQLite.Path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Store.SQLite.Path+"-wal", make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += fmt.Sprintf("{%s=%s}", l.GetName(), l.GetValue())
			}
			got[name] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"meterd_role_info{role=scheduler}":          1,
		"meterd_role_info{role=api}":                0,
		"meterd_role_info{role=all}":                0,
		"meterd_schedule_close_delay_seconds":       300,
		"meterd_schedule_deadline_seconds":          900,
		"meterd_schedule_force_close_after_seconds": 600,
		"meterd_store_file_size_bytes":              5096,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	free, size := got["meterd_store_disk_free_bytes"], got["meterd_store_disk_size_bytes"]
	if free <= 0 || size <= 0 || free > size {
		t.Errorf("disk free %v of %v", free, size)
	}
}

// TestStoreMonitor closes hours on a real store and checks what the monitor reads from it: the newest closed
// hour, the records of a frozen instance (waiting, past deadline, oldest begin), and the invariant over the last
// closed hours: violated while a closed hour has usage but no SDR, holding once the SDRs are built.
func TestStoreMonitor(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: fixed, unit_price: "0.5"}
instances:
  - {instance_id: i-a, subject: a, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
  - {instance_id: i-f, subject: f, meter: calls, sku: CALLS, status: FROZEN, started_at: "2026-01-01T00:00:00Z"}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db"))), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	store, err := sqlite.Open(ctx, cfg.Store.SQLite.Path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := startInstances(ctx, cfg, store, log, http.NewServeMux()); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	mon := newStoreMonitor(reg, store, cfg.Catalog(), log, nil)
	if err := mon.observe(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mon.checkInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(mon.lastClosed); v != 0 {
		t.Errorf("last closed before any close: %v", v)
	}
	if n := testutil.ToFloat64(mon.checks.WithLabelValues(checkHolds)) + testutil.ToFloat64(mon.checks.WithLabelValues(checkViolated)); n != 0 {
		t.Errorf("an invariant check ran with nothing closed")
	}

	now := time.Now().UTC()
	h1 := now.Truncate(time.Hour).Add(-3 * time.Hour)
	v := ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration)
	var events []*ingest.Event
	for i, subject := range []string{"a", "a", "f"} {
		ev, rej := v.Validate([]byte(fmt.Sprintf(`{"specversion":"1.0","id":"m%d","source":"monitor","type":"api_call","subject":%q,"time":%q}`,
			i, subject, h1.Add(time.Duration(10+i)*time.Minute).Format(time.RFC3339))), now)
		if rej != nil {
			t.Fatal(rej)
		}
		events = append(events, ev)
	}
	if _, err := store.Write(ctx, events, nil); err != nil {
		t.Fatal(err)
	}
	pipe, err := newPipeline(cfg, store, log, prometheus.NewRegistry(), "monitor-test", nil)
	if err != nil {
		t.Fatal(err)
	}
	closed, err := pipe.closer.CloseDue(ctx)
	if err != nil || len(closed) < 2 {
		t.Fatalf("closed %v %v", closed, err)
	}
	last := closed[len(closed)-1].Hour

	// Closed, no SDR built yet: the check finds the hour's usage without a record.
	if err := mon.checkInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(mon.violations); got < 1 || testutil.ToFloat64(mon.checks.WithLabelValues(checkViolated)) != 1 {
		t.Errorf("violations %v before the SDRs are built", got)
	}

	if _, err := pipe.pusher.RunOnce(ctx, report.RunOptions{}); err != nil { // no endpoint: builds, sends nothing
		t.Fatal(err)
	}
	if err := mon.checkInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(mon.violations); got != 0 || testutil.ToFloat64(mon.checks.WithLabelValues(checkHolds)) != 1 {
		t.Errorf("violations %v after the build", got)
	}
	if at := testutil.ToFloat64(mon.lastCheck); at < float64(now.Unix()) {
		t.Errorf("last check %v", at)
	}

	if err := mon.observe(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(mon.lastClosed); got != float64(last.Unix()) {
		t.Errorf("last closed %v, want %v", got, last.Unix())
	}
	if w, p, o := testutil.ToFloat64(mon.frozen), testutil.ToFloat64(mon.frozenPast), testutil.ToFloat64(mon.frozenExpiry); w != 1 || p != 1 || o != float64(h1.Add(21*24*time.Hour).Unix()) {
		t.Errorf("frozen waiting %v, past deadline %v, oldest expiry %v (want 1, 1, begin %s + 21 days)", w, p, o, h1)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series++
			for _, l := range m.GetLabel() {
				if l.GetName() != "result" {
					t.Errorf("%s has label %s: only closed sets, never an instance", mf.GetName(), l.GetName())
				}
			}
		}
	}
	if series != 9 {
		t.Errorf("store monitor series: %d, want 9", series)
	}
}
