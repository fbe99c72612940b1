package aggregate_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/store/sqlite"
)

const baseConfig = `
meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
plans:
  - {sku: TOK, meter: tokens, currency: CNY, mode: fixed, unit_price: "1"}
instances:
  - {instance_id: tok-a, subject: A, meter: tokens, sku: TOK, started_at: "2026-01-01T00:00:00Z"}
schedule: {late_policy: %s}
`

// rig is a store, registry, validator and closer on a controllable clock.
type rig struct {
	t        *testing.T
	now      time.Time
	store    *sqlite.Store
	registry *instance.Registry
	closer   *aggregate.Closer
	valid    *ingest.Validator
	metrics  *aggregate.Metrics
	wm       *fakeWatermark
	seq      int
}

type fakeWatermark struct{ lag time.Duration }

func (f *fakeWatermark) Watermark(_ context.Context, now time.Time) (time.Time, error) {
	return now.Add(-f.lag), nil
}

func newRig(t *testing.T, latePolicy string, start time.Time) *rig {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(baseConfig, latePolicy)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, now: start, wm: &fakeWatermark{}}
	clock := func() time.Time { return r.now }
	if r.store, err = sqlite.Open(context.Background(), filepath.Join(dir, "m.db"), sqlite.Options{Now: clock}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.store.Close() })
	if r.registry, err = instance.NewRegistry(r.store, instance.NewRefs(cfg.MeterSet(), cfg.Catalog(), nil), clock); err != nil {
		t.Fatal(err)
	}
	if _, err := r.registry.ApplyAll(context.Background(), cfg.Instances, "instances"); err != nil {
		t.Fatal(err)
	}
	r.metrics = aggregate.NewMetrics(prometheus.NewRegistry())
	r.closer, err = aggregate.NewCloser(aggregate.CloserConfig{Store: r.store, Instances: r.store, Meters: cfg.MeterSet(),
		Catalog: cfg.Catalog(), Watermark: r.wm, LatePolicy: aggregate.LatePolicy(latePolicy), CloseDelay: 5 * time.Minute,
		ForceAfter: 10 * time.Minute, Now: clock, Metrics: r.metrics})
	if err != nil {
		t.Fatal(err)
	}
	r.valid = ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration)
	return r
}

func (r *rig) ingest(subject string, at time.Time, tokens string) {
	r.t.Helper()
	r.seq++
	raw := fmt.Sprintf(`{"specversion":"1.0","id":"e%d","source":"t","type":"llm_request","subject":%q,"time":%q,"data":{"tokens":%q}}`,
		r.seq, subject, at.Format(time.RFC3339Nano), tokens)
	ev, rej := r.valid.Validate([]byte(raw), r.now)
	if rej != nil {
		r.t.Fatalf("event rejected: %s", rej.Reason)
	}
	if _, err := r.store.Write(context.Background(), []*ingest.Event{ev}, nil); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) close(hour time.Time) {
	r.t.Helper()
	if _, err := r.closer.Close(context.Background(), hour); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) rows() []aggregate.Row {
	r.t.Helper()
	rows, err := r.store.UsageRows(context.Background(), aggregate.UsageQuery{From: time.Unix(0, 0), To: r.now.Add(24 * time.Hour)})
	if err != nil {
		r.t.Fatal(err)
	}
	return rows
}

var h0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// TestCarryOverThousandHoursIsExact: 0.00003 each hour cannot make an SDR alone; the carry must accumulate so
// that over 1,000 hours what is reported plus what is still carried is exactly 1,000 x 0.00003.
func TestCarryOverThousandHoursIsExact(t *testing.T) {
	r := newRig(t, "carry", h0)
	const hours = 1000
	for i := 0; i < hours; i++ {
		h := h0.Add(time.Duration(i) * time.Hour)
		r.now = h.Add(30 * time.Minute)
		r.ingest("A", h.Add(10*time.Minute), "0.00003")
		r.now = h.Add(time.Hour + 5*time.Minute)
		r.close(h)
	}
	rows := r.rows()
	if len(rows) != hours {
		t.Fatalf("%d rows, want %d", len(rows), hours)
	}
	// In units of 0.0001, n hours hold 0.3n: floor(0.3n) grows by exactly one unit in 300 of the 1,000 hours, so
	// exactly 300 hours report 0.0001 each, 0.03 in all, and nothing is left to carry.
	reported := decimal.Zero
	sdrs := 0
	unit := decimal.RequireFromString("0.0001")
	for _, row := range rows {
		reported = reported.Add(row.UsageValue)
		if !row.UsageValue.IsZero() {
			sdrs++
			if !row.UsageValue.Equal(unit) {
				t.Fatalf("%s reports %s, want 0.0001", row.Hour, row.UsageValue)
			}
		}
	}
	if last := rows[len(rows)-1].CarryOut; !reported.Equal(decimal.RequireFromString("0.03")) || !last.IsZero() || sdrs != 300 {
		t.Fatalf("reported %s in %d hours, final carry %s; want 0.03 in 300 hours, carry 0", reported, sdrs, last)
	}
	if err := aggregate.CheckCarries(rows, nil); err != nil {
		t.Fatal(err)
	}
}

func TestLatePolicyDropWritesOff(t *testing.T) {
	r := newRig(t, "drop", h0)
	r.now = h0.Add(50 * time.Minute)
	r.ingest("A", h0.Add(10*time.Minute), "2")
	r.now = h0.Add(65 * time.Minute)
	r.close(h0)
	r.ingest("A", h0.Add(20*time.Minute), "3") // stored after the snapshot: late
	r.ingest("A", h0.Add(70*time.Minute), "1")
	r.now = h0.Add(125 * time.Minute)
	r.close(h0.Add(time.Hour))
	rows := r.rows()
	if len(rows) != 2 || !rows[1].UsageValue.Equal(decimal.NewFromInt(1)) || rows[1].LateEvents != 0 {
		t.Fatalf("rows %+v", rows)
	}
	late, _ := r.store.ListLate(context.Background(), h0, h0.Add(24*time.Hour))
	wo, _ := r.store.ListWriteOffs(context.Background(), h0, h0.Add(24*time.Hour))
	if len(late) != 1 || late[0].Action != aggregate.LateDropped || !late[0].Quantity.Equal(decimal.NewFromInt(3)) {
		t.Fatalf("late %+v", late)
	}
	if len(wo) != 1 || wo[0].Kind != aggregate.WriteOffLateDropped || !wo[0].Usage.Equal(decimal.NewFromInt(3)) || !wo[0].OriginHour.Equal(h0) {
		t.Fatalf("write-offs %+v", wo)
	}
	if got := testutil.ToFloat64(r.metrics.LateCounter(aggregate.LateDropped)); got != 1 {
		t.Fatalf("late dropped metric %v", got)
	}
}

// TestFreezeDoesNotStopMetering: a freeze is recorded with its time; usage during it still belongs to the
// instance (its SDRs wait for the unfreeze, DESIGN.md §4 step 11), so the close assigns it normally.
func TestFreezeDoesNotStopMetering(t *testing.T) {
	r := newRig(t, "carry", h0)
	r.now = h0.Add(20 * time.Minute)
	r.ingest("A", h0.Add(10*time.Minute), "1")
	r.now = h0.Add(30 * time.Minute)
	if _, err := r.registry.Apply(context.Background(), instance.Spec{InstanceID: "tok-a", Subject: "A", Meter: "tokens", SKU: "TOK",
		Status: "FROZEN", StartedAt: "2026-01-01T00:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	r.now = h0.Add(50 * time.Minute)
	r.ingest("A", h0.Add(40*time.Minute), "2")
	r.now = h0.Add(65 * time.Minute)
	r.close(h0)
	rows := r.rows()
	if len(rows) != 1 || !rows[0].UsageValue.Equal(decimal.NewFromInt(3)) || rows[0].Events != 2 {
		t.Fatalf("rows %+v", rows)
	}
	in, _, err := r.registry.Get(context.Background(), "tok-a")
	if err != nil || !in.FrozenAt(h0.Add(45*time.Minute)) || in.FrozenAt(h0.Add(15*time.Minute)) {
		t.Fatalf("frozen history of %+v: %v", in, err)
	}
}

// TestCloseDueWaitsForWatermarkThenForces: with the watermark behind, an hour waits past its close time and is
// closed, forced, at the force time; nothing is closed before it is due.
func TestCloseDueWaitsForWatermarkThenForces(t *testing.T) {
	r := newRig(t, "carry", h0)
	r.now = h0.Add(30 * time.Minute)
	r.ingest("A", h0.Add(10*time.Minute), "1")
	r.wm.lag = time.Hour
	ctx := context.Background()
	for _, at := range []time.Duration{59 * time.Minute, 66 * time.Minute, 69 * time.Minute} {
		r.now = h0.Add(at)
		done, err := r.closer.CloseDue(ctx)
		if err != nil || len(done) != 0 {
			t.Fatalf("at H+%s: closed %v, %v", at, done, err)
		}
	}
	r.now = h0.Add(70 * time.Minute)
	done, err := r.closer.CloseDue(ctx)
	if err != nil || len(done) != 1 || !done[0].Forced || !done[0].Hour.Equal(h0) {
		t.Fatalf("forced close: %+v, %v", done, err)
	}
	if got := testutil.ToFloat64(r.metrics.ClosedCounter(true)); got != 1 {
		t.Fatalf("forced metric %v", got)
	}
	// Caught up: with the watermark current, the next hour closes at its close time, not forced.
	r.wm.lag = 0
	r.now = h0.Add(125 * time.Minute)
	if done, err = r.closer.CloseDue(ctx); err != nil || len(done) != 1 || done[0].Forced {
		t.Fatalf("normal close: %+v, %v", done, err)
	}
}

func TestCloseRefusesOutOfOrderAndUnendedHours(t *testing.T) {
	r := newRig(t, "carry", h0)
	r.now = h0.Add(30 * time.Minute)
	if _, err := r.closer.Close(context.Background(), h0); err == nil {
		t.Fatal("closed an hour that has not ended")
	}
	r.now = h0.Add(3 * time.Hour)
	r.close(h0)
	if _, err := r.closer.Close(context.Background(), h0.Add(2*time.Hour)); err == nil {
		t.Fatal("closed an hour out of order")
	}
	if _, err := r.closer.Close(context.Background(), h0.Add(90*time.Minute)); err == nil {
		t.Fatal("closed a time that is not an hour")
	}
}

// TestUnmatchedWrittenOffAfter21Days: usage nobody claims is held, then written off with a reason once
// KooGallery could no longer accept it.
func TestUnmatchedWrittenOffAfter21Days(t *testing.T) {
	r := newRig(t, "carry", h0)
	r.now = h0.Add(30 * time.Minute)
	r.ingest("nobody", h0.Add(10*time.Minute), "7")
	ctx := context.Background()
	last := h0.Add(aggregate.UnmatchedHorizon)
	for h := h0; !h.After(last); h = h.Add(time.Hour) {
		r.now = h.Add(time.Hour + 5*time.Minute)
		r.close(h)
		held, err := r.store.HeldUnmatched(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := h.Before(last); (len(held) == 1) != want {
			t.Fatalf("after closing %s: %d held, want held=%v", h, len(held), want)
		}
	}
	all, _ := r.store.ListUnmatched(ctx, h0, last)
	if len(all) != 1 || all[0].State != aggregate.UnmatchedWrittenOff || all[0].Reason == "" || !all[0].Resolved.Equal(last) {
		t.Fatalf("unmatched %+v", all)
	}
}
