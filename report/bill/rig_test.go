package bill_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
	"github.com/meterd/meterd/store/sqlite"
)

// The rig is report/pusher_test.go's newPushRig, adapted: a real SQLite ledger with closed hours, pushed to the
// in-process simulator, on one controllable clock.

var testKey = []byte("seller-interconnection-key-for-tests")

// h0 is the first hour of usage in these tests.
var h0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

type rig struct {
	t     *testing.T
	now   time.Time
	dir   string
	db    string
	cfg   *config.Config
	store *sqlite.Store
	sim   *kgsim.Sim
	srv   *httptest.Server
}

func (r *rig) clock() time.Time { return r.now }

// rigConfig is the rig's config file: one SUM meter priced by a step plan (0.3 up to 100, then 0.2), with extra
// YAML appended.
const rigConfig = "meters:\n  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}\n" +
	"plans:\n  - {sku: TOK, meter: tokens, currency: CNY, mode: step, accumulation: month, timezone: Asia/Shanghai, brackets: [{up_to: \"100\", unit_price: \"0.3\"}, {unit_price: \"0.2\"}]}\n" +
	"schedule: {close_delay: 5m, deadline: 15m}\npush: {retry_initial: 2s, retry_max: 1m}\n"

// newRig ingests one event per instance-hour for `instances` instances over `hours` hours from h0, closes those
// hours and leaves the clock an hour after the last one. The usage of instance i in hour h is (1+i%7).(1234+h):
// four decimals, so that amounts (x 0.3) have five and rounding them shows.
func newRig(t *testing.T, instances, hours int, extraConfig string) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), now: h0}
	r.cfg = loadConfig(t, r.dir, rigConfig+extraConfig)
	r.db = filepath.Join(r.dir, "m.db")
	var err error
	if r.store, err = sqlite.Open(context.Background(), r.db, sqlite.Options{Now: r.clock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.store.Close() })
	ctx := context.Background()
	reg, err := instance.NewRegistry(r.store, instance.NewRefs(r.cfg.MeterSet(), r.cfg.Catalog(), nil), r.clock)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < instances; i++ {
		if _, err := reg.Apply(ctx, instance.Spec{InstanceID: instID(i), Subject: fmt.Sprintf("s%d", i), Meter: "tokens", SKU: "TOK",
			StartedAt: "2026-11-01T00:00:00Z"}); err != nil {
			t.Fatal(err)
		}
	}
	v := ingest.NewValidator(r.cfg.MeterSet(), 21*24*time.Hour, 5*time.Minute)
	closer, err := aggregate.NewCloser(aggregate.CloserConfig{Store: r.store, Instances: r.store, Meters: r.cfg.MeterSet(),
		Catalog: r.cfg.Catalog(), Watermark: aggregate.SyncWatermark{}, LatePolicy: aggregate.LateCarry, CloseDelay: 5 * time.Minute,
		ForceAfter: 10 * time.Minute, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	for h := 0; h < hours; h++ {
		hour := h0.Add(time.Duration(h) * time.Hour)
		r.now = hour.Add(50 * time.Minute)
		var evs []*ingest.Event
		for i := 0; i < instances; i++ {
			raw := fmt.Sprintf(`{"specversion":"1.0","id":"e-%d-%d","source":"t","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":"%d.%04d"}}`,
				h, i, i, hour.Add(10*time.Minute).Format(time.RFC3339), 1+i%7, 1234+h)
			ev, rej := v.Validate([]byte(raw), r.now)
			if rej != nil {
				t.Fatal(rej.Reason)
			}
			evs = append(evs, ev)
		}
		if _, err := r.store.Write(ctx, evs, nil); err != nil {
			t.Fatal(err)
		}
		r.now = hour.Add(65 * time.Minute)
		if _, err := closer.Close(ctx, hour); err != nil {
			t.Fatal(err)
		}
	}
	r.now = h0.Add(time.Duration(hours+1) * time.Hour)
	r.sim, r.srv = r.simulator()
	return r
}

func instID(i int) string { return fmt.Sprintf("inst-%04d", i) }

func loadConfig(t *testing.T, dir, text string) *config.Config {
	t.Helper()
	f, err := os.CreateTemp(dir, "config-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(f.Name(), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// simulator starts a simulator on the rig's clock.
func (r *rig) simulator() (*kgsim.Sim, *httptest.Server) {
	sim := kgsim.New(kgsim.Config{Key: testKey, Now: r.clock})
	srv := httptest.NewServer(sim)
	r.t.Cleanup(srv.Close)
	return sim, srv
}

// pusher returns a pusher to the simulator at url that sends usage_value as valueAs.
func (r *rig) pusher(url string, valueAs koogallery.ValueAs) *report.Pusher {
	r.t.Helper()
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: url, Key: func() ([]byte, error) { return testKey, nil },
		Timeout: 2 * time.Second, Now: r.clock})
	if err != nil {
		r.t.Fatal(err)
	}
	b := report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(),
		CloseDelay: 5 * time.Minute, Deadline: 15 * time.Minute, ValueAs: valueAs})
	p, err := report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: b, Instances: r.store, Client: client, Holder: "a",
		BatchSize: 1000, RetryInitial: 2 * time.Second, RetryMax: time.Minute, Now: r.clock,
		Metrics: report.NewMetrics(prometheus.NewRegistry()), LeaseTTL: 30 * time.Second})
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// push builds and pushes every SDR to the simulator at url until none is open, the usage_value sent as valueAs.
func (r *rig) push(url string, valueAs koogallery.ValueAs) {
	r.t.Helper()
	p := r.pusher(url, valueAs)
	for i := 0; i < 20; i++ {
		if _, err := p.RunOnce(context.Background(), report.RunOptions{}); err != nil {
			r.t.Fatalf("push round %d: %v", i, err)
		}
		if r.open() == 0 {
			return
		}
		r.now = r.now.Add(90 * time.Second)
	}
	r.t.Fatalf("%d SDRs still open after 20 rounds", r.open())
}

func (r *rig) open() int {
	counts, err := r.store.StateCounts(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return counts[report.Pending] + counts[report.Sent]
}

func (r *rig) sdrs() []report.SDR {
	r.t.Helper()
	all, err := r.store.ListSDRs(context.Background(), report.SDRFilter{From: h0.Add(-time.Hour), To: h0.Add(1000 * time.Hour)})
	if err != nil {
		r.t.Fatal(err)
	}
	return all
}

func (r *rig) sdr(sn string) report.SDR {
	r.t.Helper()
	for _, d := range r.sdrs() {
		if d.MeteringSN == sn {
			return d
		}
	}
	r.t.Fatalf("no SDR %s", sn)
	return report.SDR{}
}

// dump returns the ledger and bill tables (all, or those named) as text, read through a connection of its own, to
// show that an operation changed nothing.
func (r *rig) dump(tables ...string) string {
	r.t.Helper()
	db, err := sql.Open("sqlite", "file:"+r.db+"?mode=ro")
	if err != nil {
		r.t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	if len(tables) == 0 {
		tables = []string{"sdrs", "sdr_attempts", "bill_imports", "sdr_bills", "push_lease"}
	}
	for _, table := range tables {
		rows, err := db.Query(`SELECT * FROM ` + table + ` ORDER BY 1`)
		if err != nil {
			r.t.Fatal(err)
		}
		cols, _ := rows.Columns()
		fmt.Fprintf(&b, "%s %v\n", table, cols)
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				r.t.Fatal(err)
			}
			for i, v := range vals {
				if bs, ok := v.([]byte); ok {
					vals[i] = string(bs)
				}
			}
			fmt.Fprintf(&b, "  %v\n", vals)
		}
		if err := rows.Close(); err != nil {
			r.t.Fatal(err)
		}
	}
	return b.String()
}

// writeFile writes a bill into the rig's directory and returns its path.
func (r *rig) writeFile(name, content string) string {
	r.t.Helper()
	path := filepath.Join(r.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return path
}
