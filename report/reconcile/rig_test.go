package reconcile_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
	"github.com/meterd/meterd/report/reconcile"
	"github.com/meterd/meterd/store/sqlite"
)

var _ reconcile.Source = (*sqlite.Store)(nil)

var testKey = []byte("seller-interconnection-key-for-tests")

// h0 is the first hour of usage in these tests.
var h0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func hour(n int) time.Time { return h0.Add(time.Duration(n) * time.Hour) }

// rigConfig prices three meters three ways: tokens (SUM, step by month, per 1000 tokens so that carries happen),
// calls (COUNT, fixed, in another currency) and peak (MAX, tier).
const rigConfig = `meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
  - {key: calls, event_type: api_call, aggregation: COUNT}
  - {key: peak, event_type: conn_sample, aggregation: MAX, value_property: $.conns}
plans:
  - {sku: TOK, meter: tokens, currency: CNY, unit_scale: "0.001", mode: step, accumulation: month, timezone: Asia/Shanghai,
     brackets: [{up_to: "5", unit_price: "0.3"}, {unit_price: "0.2"}]}
  - {sku: CALL, meter: calls, currency: USD, mode: fixed, unit_price: "0.01"}
  - {sku: PEAK, meter: peak, currency: CNY, mode: tier, brackets: [{up_to: "10", unit_price: "1"}, {unit_price: "2"}]}
schedule: {close_delay: 5m, deadline: 15m, late_policy: carry}
push: {retry_initial: 2s, retry_max: 1m}
`

// rig is a store fed through the real pipeline (validator, store, closer, builder, pusher) with the in-process
// KooGallery simulator, on one controllable clock.
type rig struct {
	t      *testing.T
	now    time.Time
	dir    string
	dbPath string
	cfg    *config.Config
	store  *sqlite.Store
	reg    *instance.Registry
	closer *aggregate.Closer
	valid  *ingest.Validator
	sim    *kgsim.Sim
	srv    *httptest.Server
	pusher *report.Pusher
	n      int
}

func (r *rig) clock() time.Time { return r.now }

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), now: h0}
	path := filepath.Join(r.dir, "meterd.yaml")
	if err := os.WriteFile(path, []byte(rigConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.cfg, _, err = config.Load(path, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatal(err)
	}
	r.dbPath = filepath.Join(r.dir, "meterd.db")
	if r.store, err = sqlite.Open(context.Background(), r.dbPath, sqlite.Options{Now: r.clock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.store.Close() })
	if r.reg, err = instance.NewRegistry(r.store, instance.NewRefs(r.cfg.MeterSet(), r.cfg.Catalog(), nil), r.clock); err != nil {
		t.Fatal(err)
	}
	r.valid = ingest.NewValidator(r.cfg.MeterSet(), 21*24*time.Hour, 5*time.Minute)
	if r.closer, err = aggregate.NewCloser(aggregate.CloserConfig{Store: r.store, Instances: r.store, Meters: r.cfg.MeterSet(),
		Catalog: r.cfg.Catalog(), Watermark: aggregate.SyncWatermark{}, LatePolicy: aggregate.LateCarry, CloseDelay: 5 * time.Minute,
		ForceAfter: 10 * time.Minute, Now: r.clock}); err != nil {
		t.Fatal(err)
	}
	r.sim = kgsim.New(kgsim.Config{Key: testKey, Now: r.clock})
	r.srv = httptest.NewServer(r.sim)
	t.Cleanup(r.srv.Close)
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: r.srv.URL, Key: func() ([]byte, error) { return testKey, nil },
		Timeout: 2 * time.Second, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	b := report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(),
		CloseDelay: 5 * time.Minute, Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
	if r.pusher, err = report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: b, Instances: r.store, Client: client,
		Holder: "test", BatchSize: 1000, RetryInitial: 2 * time.Second, RetryMax: time.Minute, Now: r.clock,
		Metrics: report.NewMetrics(prometheus.NewRegistry()), LeaseTTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) apply(spec instance.Spec) {
	r.t.Helper()
	if spec.StartedAt == "" {
		spec.StartedAt = "2026-11-01T00:00:00Z"
	}
	if _, err := r.reg.Apply(context.Background(), spec); err != nil {
		r.t.Fatalf("apply %s: %v", spec.InstanceID, err)
	}
}

// event stores one event of type typ for subject at time at, with data (a JSON object or "").
func (r *rig) event(typ, subject string, at time.Time, data string) {
	r.t.Helper()
	r.n++
	raw := fmt.Sprintf(`{"specversion":"1.0","id":"e-%d","source":"test","type":%q,"subject":%q,"time":%q`, r.n, typ, subject,
		at.Format(time.RFC3339))
	if data != "" {
		raw += `,"data":` + data
	}
	raw += "}"
	ev, rej := r.valid.Validate([]byte(raw), r.now)
	if rej != nil {
		r.t.Fatalf("event %s: %s", raw, rej.Reason)
	}
	if _, err := r.store.Write(context.Background(), []*ingest.Event{ev}, nil); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) close(h time.Time) {
	r.t.Helper()
	if _, err := r.closer.Close(context.Background(), h); err != nil {
		r.t.Fatalf("close %s: %v", h.Format(time.RFC3339), err)
	}
}

func (r *rig) push() report.Summary {
	r.t.Helper()
	sum, err := r.pusher.RunOnce(context.Background(), report.RunOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	return sum
}

// db opens a second, writable connection to the store's file, as an operator's SQL tool would.
func (r *rig) db() *sql.DB {
	r.t.Helper()
	db, err := sql.Open("sqlite", "file:"+r.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = db.Close() })
	return db
}

func (r *rig) exec(q string, args ...any) {
	r.t.Helper()
	res, err := r.db().Exec(q, args...)
	if err != nil {
		r.t.Fatalf("%s: %v", q, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		r.t.Fatalf("%s: %d rows affected, want 1", q, n)
	}
}

func (r *rig) build(from, to time.Time) *reconcile.Report {
	r.t.Helper()
	rep, err := reconcile.Build(context.Background(), r.store, r.cfg.Catalog(), reconcile.Options{From: from, To: to, Now: r.now})
	if err != nil {
		r.t.Fatal(err)
	}
	return rep
}
