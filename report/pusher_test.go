package report_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
	"github.com/meterd/meterd/store/sqlite"
)

var testKey = []byte("seller-interconnection-key-for-tests")

// h0 is the first hour of usage in these tests.
var h0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

// pushRig is a store with closed hours, a simulator and pushers on one controllable clock.
type pushRig struct {
	t       *testing.T
	now     time.Time
	dir     string
	cfg     *config.Config
	store   *sqlite.Store
	sim     *kgsim.Sim
	srv     *httptest.Server
	metrics *report.Metrics
}

func (r *pushRig) clock() time.Time { return r.now }

// newPushRig ingests one event per instance-hour for `instances` instances over `hours` hours starting at h0 and
// closes those hours.
func newPushRig(t *testing.T, instances, hours int) *pushRig {
	t.Helper()
	r := &pushRig{t: t, dir: t.TempDir(), now: h0}
	cfgText := "meters:\n  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}\n" +
		"plans:\n  - {sku: TOK, meter: tokens, currency: CNY, mode: step, accumulation: month, timezone: Asia/Shanghai, brackets: [{up_to: \"100\", unit_price: \"0.3\"}, {unit_price: \"0.2\"}]}\n" +
		"schedule: {close_delay: 5m, deadline: 15m}\npush: {retry_initial: 2s, retry_max: 1m}\n"
	path := filepath.Join(r.dir, "c.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.cfg, _, err = config.Load(path, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatal(err)
	}
	if r.store, err = sqlite.Open(context.Background(), filepath.Join(r.dir, "m.db"), sqlite.Options{Now: r.clock}); err != nil {
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
			raw := fmt.Sprintf(`{"specversion":"1.0","id":"e-%d-%d","source":"t","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":"%d.5"}}`,
				h, i, i, hour.Add(10*time.Minute).Format(time.RFC3339), 1+i%7)
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
	r.sim = kgsim.New(kgsim.Config{Key: testKey, Now: r.clock})
	r.sim.Faults().Seed(7)
	r.srv = httptest.NewServer(r.sim)
	t.Cleanup(r.srv.Close)
	r.metrics = report.NewMetrics(prometheus.NewRegistry())
	return r
}

func instID(i int) string { return fmt.Sprintf("inst-%04d", i) }

// pusher returns a pusher named holder; key is the key it signs with.
func (r *pushRig) pusher(holder string, key []byte) *report.Pusher {
	r.t.Helper()
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: r.srv.URL, Key: func() ([]byte, error) { return key, nil },
		Timeout: 2 * time.Second, Now: r.clock})
	if err != nil {
		r.t.Fatal(err)
	}
	b := report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(),
		CloseDelay: 5 * time.Minute, Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
	p, err := report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: b, Instances: r.store, Client: client, Holder: holder,
		BatchSize: 1000, RetryInitial: 2 * time.Second, RetryMax: time.Minute, Now: r.clock, Metrics: r.metrics,
		LeaseTTL: 30 * time.Second})
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

// drain runs p until every SDR is final or rounds run out, advancing the clock past any backoff each round.
func (r *pushRig) drain(p *report.Pusher, rounds int) report.Summary {
	r.t.Helper()
	var total report.Summary
	for i := 0; i < rounds; i++ {
		sum, err := p.RunOnce(context.Background(), report.RunOptions{})
		if err != nil {
			r.t.Fatalf("round %d: %v", i, err)
		}
		total.Sent += sum.Sent
		total.Accepted += sum.Accepted
		total.Rejected += sum.Rejected
		if r.open() == 0 {
			return total
		}
		r.now = r.now.Add(90 * time.Second)
	}
	return total
}

// open counts SDRs still PENDING or SENT.
func (r *pushRig) open() int {
	counts, err := r.store.StateCounts(context.Background())
	if err != nil {
		r.t.Fatal(err)
	}
	return counts[report.Pending] + counts[report.Sent]
}

func (r *pushRig) sdrs() []report.SDR {
	r.t.Helper()
	all, err := r.store.ListSDRs(context.Background(), report.SDRFilter{From: h0.Add(-time.Hour), To: h0.Add(1000 * time.Hour)})
	if err != nil {
		r.t.Fatal(err)
	}
	return all
}

// billedOnce checks that the simulator billed every instance-hour exactly once and returns how many it billed.
func (r *pushRig) billedOnce() int {
	r.t.Helper()
	seen := map[string]int{}
	for _, b := range r.sim.Billed() {
		seen[b.InstanceID+"|"+b.BeginTime.Format(time.RFC3339)]++
	}
	for k, n := range seen {
		if n != 1 {
			r.t.Errorf("%s billed %d times", k, n)
		}
	}
	return len(seen)
}

// TestFlakyNetworkBillsEveryHourExactlyOnce: 30% 5xx and 10% lost answers (processed, answer dropped) over
// 1,000 instance-hours end with every SDR billed once by KooGallery and ACCEPTED in the ledger.
func TestFlakyNetworkBillsEveryHourExactlyOnce(t *testing.T) {
	r := newPushRig(t, 100, 10)
	r.now = h0.Add(11 * time.Hour)
	r.sim.Faults().Rate5xx(0.3)
	r.sim.Faults().LostAnswerRate(0.1)
	p := r.pusher("a", testKey)
	r.drain(p, 200)
	if n := r.open(); n != 0 {
		t.Fatalf("%d SDRs still open", n)
	}
	for _, s := range r.sdrs() {
		if s.State != report.Accepted {
			t.Errorf("%s %s: %s (%s %s)", s.InstanceID, s.Hour, s.State, s.LastCode, s.Reason)
		}
	}
	if n := r.billedOnce(); n != 1000 {
		t.Fatalf("simulator billed %d instance-hours, want 1000", n)
	}
	if got := testutil.ToFloat64(r.metrics.CollisionsCounter()); got != 0 {
		t.Fatalf("%v collisions", got)
	}
}

// TestPoisonedRecordDoesNotBlockTheBatch: one record of a 1,000-record batch names an instance KooGallery does
// not know (call-level 9001): bisection isolates it, the other 999 are accepted.
func TestPoisonedRecordDoesNotBlockTheBatch(t *testing.T) {
	r := newPushRig(t, 1000, 1)
	r.now = h0.Add(2 * time.Hour)
	lives := map[string]kgsim.Life{}
	for i := 0; i < 1000; i++ {
		if i != 617 {
			lives[instID(i)] = kgsim.Life{}
		}
	}
	r.sim.SetInstances(lives)
	r.drain(r.pusher("a", testKey), 5)
	states := map[report.State]int{}
	for _, s := range r.sdrs() {
		states[s.State]++
		if s.InstanceID == instID(617) && (s.State != report.Rejected || s.LastCode != "9001") {
			t.Errorf("poisoned record: %s %s", s.State, s.LastCode)
		}
	}
	if states[report.Accepted] != 999 || states[report.Rejected] != 1 {
		t.Fatalf("states %v", states)
	}
	if n := r.billedOnce(); n != 999 {
		t.Fatalf("billed %d", n)
	}
}

// TestAuthFailureStopsAndKeepsRecords: a wrong key (0102) stops pushing; nothing is lost, and once the key is
// right the records go out.
func TestAuthFailureStopsAndKeepsRecords(t *testing.T) {
	r := newPushRig(t, 20, 1)
	r.now = h0.Add(2 * time.Hour)
	bad := r.pusher("a", []byte("wrong key"))
	sum, err := bad.RunOnce(context.Background(), report.RunOptions{})
	if err != nil || !sum.Halted {
		t.Fatalf("summary %+v, %v", sum, err)
	}
	// Halted: the next runs do not send at all.
	r.now = r.now.Add(10 * time.Second)
	if sum, _ := bad.RunOnce(context.Background(), report.RunOptions{}); sum.Sent != 0 || !sum.Halted {
		t.Fatalf("sent while halted: %+v", sum)
	}
	if n := r.open(); n != 20 || len(r.sim.Billed()) != 0 {
		t.Fatalf("%d open, %d billed", n, len(r.sim.Billed()))
	}
	if err := bad.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.now = r.now.Add(2 * time.Minute)
	r.drain(r.pusher("b", testKey), 5)
	if n := r.billedOnce(); n != 20 || r.open() != 0 {
		t.Fatalf("after the key is fixed: billed %d, open %d", n, r.open())
	}
}

// TestOutageThenCatchUpOldestFirst: KooGallery unreachable for hours; afterwards every hour is pushed, the oldest
// first, and the SDRs past their deadline are counted meanwhile.
func TestOutageThenCatchUpOldestFirst(t *testing.T) {
	r := newPushRig(t, 5, 6)
	r.now = h0.Add(7 * time.Hour)
	r.sim.Faults().Rate5xx(1)
	p := r.pusher("a", testKey)
	for i := 0; i < 10; i++ {
		if _, err := p.RunOnce(context.Background(), report.RunOptions{}); err != nil {
			t.Fatal(err)
		}
		r.now = r.now.Add(20 * time.Minute)
	}
	if r.open() != 30 || len(r.sim.Billed()) != 0 {
		t.Fatalf("during the outage: open %d, billed %d", r.open(), len(r.sim.Billed()))
	}
	due, past, err := r.store.OldestUnaccepted(context.Background(), r.now)
	if err != nil || !due.Equal(h0.Add(time.Hour+15*time.Minute)) || past != 30 {
		t.Fatalf("oldest due %s, past due %d, %v", due, past, err)
	}
	r.sim.Faults().Rate5xx(0)
	r.drain(p, 20)
	billed := r.sim.Billed()
	if len(billed) != 30 || !sort.SliceIsSorted(billed, func(i, j int) bool { return billed[i].BeginTime.Before(billed[j].BeginTime) }) {
		t.Fatalf("catch-up order: %v", billed)
	}
}

// TestRebuildAfterCrashGivesIdenticalBytes: SDRs built, then the process dies before sending; the ledger is wiped
// of them and rebuilt: the same bytes, so a resend is the same record.
func TestRebuildAfterCrashGivesIdenticalBytes(t *testing.T) {
	r := newPushRig(t, 3, 2)
	r.now = h0.Add(3 * time.Hour)
	b := report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(),
		CloseDelay: 5 * time.Minute, Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
	first, err := b.Preview(context.Background())
	if err != nil || len(first) != 6 {
		t.Fatalf("preview: %d %v", len(first), err)
	}
	p := r.pusher("a", testKey)
	lease, ok, err := r.store.AcquireLease(context.Background(), "a", r.now, time.Minute)
	if err != nil || !ok {
		t.Fatal(err)
	}
	if _, err := b.Build(context.Background(), lease.Epoch, r.now); err != nil {
		t.Fatal(err)
	}
	// "Crash": a new process reopens the store and builds again: nothing new, and the stored bytes are the ones a
	// fresh build gives.
	if err := r.store.Close(); err != nil {
		t.Fatal(err)
	}
	if r.store, err = sqlite.Open(context.Background(), filepath.Join(r.dir, "m.db"), sqlite.Options{Now: r.clock}); err != nil {
		t.Fatal(err)
	}
	stored := r.sdrs()
	for i := range first {
		if !bytes.Equal(first[i].Body, stored[i].Body) || first[i].MeteringSN != stored[i].MeteringSN {
			t.Fatalf("rebuilt %s differs:\n%s\n%s", first[i].MeteringSN, first[i].Body, stored[i].Body)
		}
	}
	_ = p
	r.drain(r.pusher("b", testKey), 5)
	if r.billedOnce() != 6 {
		t.Fatal("not all billed")
	}
}

// TestTwoSchedulersPushOnce: two pushers on one store; only the lease holder pushes, and nothing is billed twice.
func TestTwoSchedulersPushOnce(t *testing.T) {
	r := newPushRig(t, 50, 2)
	r.now = h0.Add(3 * time.Hour)
	a, b := r.pusher("a", testKey), r.pusher("b", testKey)
	sa, err := a.RunOnce(context.Background(), report.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.RunOnce(context.Background(), report.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !sa.Leader || sb.Leader || sb.Sent != 0 {
		t.Fatalf("a %+v, b %+v", sa, sb)
	}
	if r.billedOnce() != 100 || r.open() != 0 {
		t.Fatalf("billed %d open %d", r.billedOnce(), r.open())
	}
}

// TestStaleSchedulerIsFenced: scheduler "old" sends a batch whose answer is lost (KooGallery billed it), then
// loses its lease. "new" takes over and resends: KooGallery answers 005/010, which the write-ahead record of the
// unknown outcome turns into ACCEPTED (duplicate confirmed), not a collision. Every write of "old" is refused.
func TestStaleSchedulerIsFenced(t *testing.T) {
	r := newPushRig(t, 4, 1)
	r.now = h0.Add(2 * time.Hour)
	ctx := context.Background()
	old := r.pusher("old", testKey)
	r.sim.Faults().LostAnswerRate(1)
	sum, err := old.RunOnce(ctx, report.RunOptions{})
	if err != nil || sum.Sent != 4 || len(r.sim.Billed()) != 4 {
		t.Fatalf("old run: %+v, %v, billed %d", sum, err, len(r.sim.Billed()))
	}
	oldEpoch := sum.Epoch
	r.sim.Faults().LostAnswerRate(0)

	r.now = r.now.Add(time.Minute) // the old lease (30s) expired
	r.drain(r.pusher("new", testKey), 5)
	for _, s := range r.sdrs() {
		if s.State != report.Accepted || s.LastCode != "005" && s.LastCode != "010" {
			t.Errorf("%s: %s %s %q", s.MeteringSN, s.State, s.LastCode, s.Reason)
		}
	}
	if r.billedOnce() != 4 || testutil.ToFloat64(r.metrics.CollisionsCounter()) != 0 {
		t.Fatal("billed twice or counted a collision")
	}
	if err := r.store.MarkSending(ctx, oldEpoch, []string{r.sdrs()[0].MeteringSN}, r.now); !errors.Is(err, report.ErrStaleEpoch) {
		t.Fatalf("stale write: %v", err)
	}
	if err := r.store.InsertSDRs(ctx, oldEpoch, nil); !errors.Is(err, report.ErrStaleEpoch) {
		t.Fatalf("stale insert: %v", err)
	}
	if sum, err := old.RunOnce(ctx, report.RunOptions{}); err != nil || sum.Leader || sum.Sent != 0 {
		t.Fatalf("old after takeover: %+v %v", sum, err)
	}
}

// TestCollisionIsRejectedAndPaged: KooGallery already has these records but no attempt of ours explains it (a
// store restored from an old backup, or a second deployment): REJECTED, counted as collisions, not ACCEPTED.
func TestCollisionIsRejectedAndPaged(t *testing.T) {
	r := newPushRig(t, 3, 1)
	r.now = h0.Add(2 * time.Hour)
	ctx := context.Background()
	r.drain(r.pusher("a", testKey), 3)
	if r.billedOnce() != 3 {
		t.Fatal("first deployment did not bill")
	}
	// A second deployment with its own store and the same data pushes the same instance-hours.
	r2 := newPushRig(t, 3, 1)
	r2.sim, r2.srv = r.sim, r.srv
	r2.now = r.now
	r2.drain(r2.pusher("b", testKey), 3)
	for _, s := range r2.sdrs() {
		if s.State != report.Rejected {
			t.Errorf("%s: %s %s", s.MeteringSN, s.State, s.LastCode)
		}
	}
	if got := testutil.ToFloat64(r2.metrics.CollisionsCounter()); got != 3 {
		t.Fatalf("collisions %v", got)
	}
	if r.billedOnce() != 3 {
		t.Fatal("billed twice")
	}
	_ = ctx
}

// TestFrozenRecordsDoNotStarveOthers: the first records in push order belong to frozen instances and fill the
// whole window of due records; the active instance's record still goes out, and the frozen ones wait (not sent,
// not billed).
func TestFrozenRecordsDoNotStarveOthers(t *testing.T) {
	r := newPushRig(t, 12, 1)
	ctx := context.Background()
	reg, err := instance.NewRegistry(r.store, instance.NewRefs(r.cfg.MeterSet(), r.cfg.Catalog(), nil), r.clock)
	if err != nil {
		t.Fatal(err)
	}
	r.now = h0.Add(2 * time.Hour)
	for i := 0; i < 11; i++ {
		if _, err := reg.Apply(ctx, instance.Spec{InstanceID: instID(i), Subject: fmt.Sprintf("s%d", i), Meter: "tokens", SKU: "TOK",
			Status: "FROZEN", StartedAt: "2026-11-01T00:00:00Z"}); err != nil {
			t.Fatal(err)
		}
	}
	// Batch size 1: the window of due records (10 x batch) holds only frozen instances' records.
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: r.srv.URL, Key: func() ([]byte, error) { return testKey, nil }, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	b := report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(), CloseDelay: 5 * time.Minute,
		Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
	p, err := report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: b, Instances: r.store, Client: client, Holder: "a",
		BatchSize: 1, RetryInitial: time.Second, RetryMax: time.Minute, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.RunOnce(ctx, report.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range r.sdrs() {
		frozen := s.InstanceID != instID(11)
		if frozen && (s.State != report.Pending || s.Attempts != 0) || !frozen && s.State != report.Accepted {
			t.Errorf("%s %s: %s after %d attempts", s.InstanceID, s.Hour, s.State, s.Attempts)
		}
	}
	if n := r.billedOnce(); n != 1 {
		t.Fatalf("billed %d, want the active instance's record", n)
	}
}
