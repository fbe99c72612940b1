package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/report"
)

func TestParseRole(t *testing.T) {
	for _, ok := range []string{"api", "collector", "scheduler", "all"} {
		if r, err := parseRole(ok); err != nil || string(r) != ok {
			t.Errorf("parseRole(%q) = %q, %v", ok, r, err)
		}
	}
	for _, bad := range []string{"", "API", "collectors", "both"} {
		_, err := parseRole(bad)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("parseRole(%q): %v, want a usage error", bad, err)
		}
	}
	if !roleAll.serves() || !roleAll.schedules() || !roleAll.collects() || !roleAPI.serves() || roleAPI.schedules() || roleAPI.collects() ||
		roleScheduler.serves() || !roleScheduler.schedules() || roleScheduler.collects() ||
		roleCollector.serves() || roleCollector.schedules() || !roleCollector.collects() {
		t.Error("role capabilities")
	}
}

// TestServeRoleFlagIsCheckedFirst: a bad --role is a usage error (exit 2) even with --validate, and so is the
// collector role on a config without Kafka.
func TestServeRoleFlagIsCheckedFirst(t *testing.T) {
	for _, tt := range []struct{ role, want string }{
		{"both", `--role: "both" must be api, collector, scheduler or all`},
		{"collector", "--role collector: needs kafka.brokers"},
	} {
		var stderr strings.Builder
		code := run(t.Context(), []string{"serve", "--role", tt.role, "--validate"}, strings.NewReader(""), io.Discard, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("--role %s: exit %d, stderr %q", tt.role, code, stderr.String())
		}
	}
}

func TestPushWatchLease(t *testing.T) {
	leader, standby := func() bool { return true }, func() bool { return false }
	var w pushWatch
	if ok, d := w.lease(standby); ok || !strings.Contains(d, "not checked yet") {
		t.Errorf("before any run: %v %q", ok, d)
	}
	if ok, d := w.lease(leader); !ok || d != "push lease held" {
		t.Errorf("first run holding the lease: %v %q", ok, d)
	}
	w.record(report.Summary{Leader: false}, nil)
	if ok, d := w.lease(standby); !ok || !strings.Contains(d, "another scheduler") {
		t.Errorf("standby: %v %q", ok, d)
	}
	w.record(report.Summary{}, errors.New("acquire push lease: disk I/O error"))
	if ok, d := w.lease(standby); ok || !strings.Contains(d, "disk I/O error") {
		t.Errorf("lease error: %v %q", ok, d)
	}
	w.record(report.Summary{Leader: true}, errors.New("push: KooGallery timeout"))
	if ok, _ := w.lease(standby); !ok {
		t.Error("a run that held the lease and then failed to push still holds the lease")
	}
}

func TestReadyHandlerPerRole(t *testing.T) {
	storeOK := func(context.Context) error { return nil }
	storeDown := func(context.Context) error { return errors.New("database is locked") }
	notLeader := func() bool { return false }
	fresh := &pushWatch{}
	failed := &pushWatch{}
	failed.record(report.Summary{}, errors.New("acquire push lease: database is locked"))
	for _, tc := range []struct {
		role  serveRole
		ping  func(context.Context) error
		watch *pushWatch
		code  int
		body  string
	}{
		{roleAPI, storeOK, fresh, 200, "role api: store ok"},
		{roleAPI, storeDown, fresh, 503, "store: database is locked"},
		{roleAll, storeOK, failed, 200, "push lease: acquire"}, // ingest stays in service; the push has its alerts
		{roleAll, storeDown, fresh, 503, "store:"},
		{roleScheduler, storeOK, fresh, 503, "not checked yet"},
		{roleScheduler, storeOK, failed, 503, "push lease: acquire"},
		{roleScheduler, storeDown, fresh, 503, "store:"},
	} {
		rec := httptest.NewRecorder()
		readyHandler(tc.role, tc.ping, tc.watch, notLeader)(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%s: %d %q, want %d containing %q", tc.role, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
	}
	rec := httptest.NewRecorder()
	readyHandler(roleScheduler, storeOK, fresh, func() bool { return true })(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "push lease held") {
		t.Errorf("scheduler holding the lease in its first run: %d %q", rec.Code, rec.Body.String())
	}
}

func TestGaugeValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_leader", Help: "h"})
	reg.MustRegister(g)
	if v, ok := gaugeValue(reg, "meterd_push_leader"); !ok || v != 0 {
		t.Errorf("%v %v", v, ok)
	}
	g.Set(1)
	if v, ok := gaugeValue(reg, "meterd_push_leader"); !ok || v != 1 {
		t.Errorf("%v %v", v, ok)
	}
	if _, ok := gaugeValue(reg, "meterd_absent"); ok {
		t.Error("absent gauge found")
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestServeRolesSplitTheWork runs an api process and then a scheduler process on the same store: the api takes
// usage of two hours ago and serves the read API but exports no close or push metrics; the scheduler refuses
// ingest, closes the hour and builds its SDRs at start (pushing is disabled here: they stay PENDING), holds the
// push lease and says so in /readyz; the records are then visible through the api process.
func TestServeRolesSplitTheWork(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two servers")
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: fixed, unit_price: "0.5"}
instances:
  - {instance_id: i-a, subject: a, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db"))), 0o600); err != nil {
		t.Fatal(err)
	}

	api := opsServeInProcess(t, cfgPath, nil, "api")
	at := time.Now().UTC().Add(-2 * time.Hour).Format(time.RFC3339)
	res, err := http.Post("http://"+api+"/v1/events", "application/cloudevents+json", strings.NewReader(
		`{"specversion":"1.0","id":"r1","source":"roles","type":"api_call","subject":"a","time":"`+at+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("api ingest: %s", res.Status)
	}
	m := scrape(t, api)
	for _, want := range []string{`meterd_role_info{role="api"} 1`, `meterd_ingest_events_total{outcome="accepted"} 1`, "meterd_store_disk_free_bytes"} {
		if !strings.Contains(m, want) {
			t.Errorf("api /metrics lacks %s", want)
		}
	}
	for _, absent := range []string{"meterd_push_", "meterd_aggregate_", "meterd_reconcile_"} {
		if strings.Contains(m, "\n"+absent) {
			t.Errorf("api /metrics exports %s* (it neither closes nor pushes)", absent)
		}
	}

	sched := opsServeInProcess(t, cfgPath, nil, "scheduler")
	res, err = http.Post("http://"+sched+"/v1/events", "application/cloudevents+json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("scheduler ingest: %s, want 404", res.Status)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		m = scrape(t, sched)
		if strings.Contains(m, "meterd_push_leader 1") && strings.Contains(m, `meterd_push_sdrs{state="PENDING"} 1`) &&
			strings.Contains(m, "meterd_push_sdrs_past_deadline 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler did not close, build and count the hour:\n%s", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{`meterd_role_info{role="scheduler"} 1`, "meterd_push_enabled 0", "meterd_schedule_deadline_seconds 900"} {
		if !strings.Contains(m, want) {
			t.Errorf("scheduler /metrics lacks %s", want)
		}
	}
	if strings.Contains(m, "\nmeterd_ingest_") {
		t.Error("scheduler /metrics exports ingest metrics")
	}
	res, err = http.Get("http://" + sched + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "push lease held") {
		t.Errorf("scheduler /readyz: %s %q", res.Status, body)
	}
	res, err = http.Get("http://" + api + "/v1/records?state=PENDING")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	_ = res.Body.Close()
	if !strings.Contains(string(body), `"instance_id":"i-a"`) {
		t.Errorf("records through the api: %s", body)
	}
}
