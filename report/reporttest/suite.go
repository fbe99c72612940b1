// Package reporttest is the storage conformance suite of the push (DESIGN.md §4 steps 7-11): closed hours built
// into SDRs and pushed to the in-process KooGallery simulator (report/kgsim) through flaky networks, poisoned
// records, auth failures, outages, crashes, two schedulers, a stale scheduler, a colliding deployment and frozen
// instances, plus the ledger's own contract (lease, fencing, pauses, filters, step usage). Any report.Ledger must
// pass it: SQLite runs it in report's tests, ClickHouse in its integration tests.
package reporttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// Store is what a storage implementation must provide to run the suite.
type Store interface {
	ingest.Sink
	aggregate.Store
	aggregate.Instances
	instance.Store
	report.Ledger
	bill.Store
	Close() error
}

// Opener opens the store kept in dir, the same data each time it is called with the same dir (a restart), with now
// as the store's own clock.
type Opener func(t *testing.T, dir string, now func() time.Time) Store

// RunPushSuite runs every push scenario against the stores opened by open, each as a subtest with stores of its own.
func RunPushSuite(t *testing.T, open Opener) {
	for _, sc := range []struct {
		name string
		run  func(t *testing.T, open Opener)
	}{
		{"FlakyNetworkBillsEveryHourExactlyOnce", flakyNetworkBillsEveryHourExactlyOnce},
		{"PoisonedRecordDoesNotBlockTheBatch", poisonedRecordDoesNotBlockTheBatch},
		{"AuthFailureStopsAndKeepsRecords", authFailureStopsAndKeepsRecords},
		{"OutageThenCatchUpOldestFirst", outageThenCatchUpOldestFirst},
		{"TransientFailureEndsTheRun", transientFailureEndsTheRun},
		{"RebuildAfterCrashGivesIdenticalBytes", rebuildAfterCrashGivesIdenticalBytes},
		{"TwoSchedulersPushOnce", twoSchedulersPushOnce},
		{"StaleSchedulerIsFenced", staleSchedulerIsFenced},
		{"CollisionIsRejectedAndPaged", collisionIsRejectedAndPaged},
		{"FrozenRecordsDoNotStarveOthers", frozenRecordsDoNotStarveOthers},
		{"LeaseAndFencing", leaseAndFencing},
		{"LedgerContract", ledgerContract},
		{"BillImportSettlesAndReReports", billImportSettlesAndReReports},
	} {
		t.Run(sc.name, func(t *testing.T) { sc.run(t, open) })
	}
}

// TestKey is the seller key the suite signs with.
var TestKey = []byte("seller-interconnection-key-for-tests")

// h0 is the first hour of usage in these tests.
var h0 = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

// pushRig is a store with closed hours, a simulator and pushers on one controllable clock.
type pushRig struct {
	t       *testing.T
	opener  Opener
	now     time.Time
	dir     string
	cfg     *config.Config
	store   Store
	sim     *kgsim.Sim
	srv     *httptest.Server
	metrics *report.Metrics
	reg     *prometheus.Registry // where metrics is registered
}

func (r *pushRig) clock() time.Time { return r.now }

// storeDir is the directory the rig's store is kept in.
func (r *pushRig) storeDir() string { return filepath.Join(r.dir, "store") }

// newPushRig ingests one event per instance-hour for `instances` instances over `hours` hours starting at h0 and
// closes those hours.
func newPushRig(t *testing.T, open Opener, instances, hours int) *pushRig {
	t.Helper()
	r := &pushRig{t: t, opener: open, dir: t.TempDir(), now: h0}
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
	if err := os.Mkdir(r.storeDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	r.store = open(t, r.storeDir(), r.clock)
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
	r.sim = kgsim.New(kgsim.Config{Key: TestKey, Now: r.clock})
	r.sim.Faults().Seed(7)
	r.srv = httptest.NewServer(r.sim)
	t.Cleanup(r.srv.Close)
	r.reg = prometheus.NewRegistry()
	r.metrics = report.NewMetrics(r.reg)
	return r
}

func instID(i int) string { return fmt.Sprintf("inst-%04d", i) }

func (r *pushRig) builder() *report.Builder {
	return report.NewBuilder(report.BuildConfig{Ledger: r.store, Instances: r.store, Catalog: r.cfg.Catalog(),
		CloseDelay: 5 * time.Minute, Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
}

// pusher returns a pusher named holder; key is the key it signs with.
func (r *pushRig) pusher(holder string, key []byte) *report.Pusher {
	r.t.Helper()
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: r.srv.URL, Key: func() ([]byte, error) { return key, nil },
		Timeout: 2 * time.Second, Now: r.clock})
	if err != nil {
		r.t.Fatal(err)
	}
	p, err := report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: r.builder(), Instances: r.store, Client: client, Holder: holder,
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
	r.t.Helper()
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

// gauge reads an unlabelled gauge of the rig's metrics.
func (r *pushRig) gauge(name string) float64 {
	r.t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	r.t.Fatalf("no gauge %s", name)
	return 0
}

// snapshot renders every SDR with every field, to show that an operation changed nothing.
func (r *pushRig) snapshot() string {
	r.t.Helper()
	var b strings.Builder
	for _, d := range r.sdrs() {
		fmt.Fprintf(&b, "%+v\n", d)
	}
	return b.String()
}

// flakyNetworkBillsEveryHourExactlyOnce: 30% 5xx and 10% lost answers (processed, answer dropped) over 1,000
// instance-hours end with every SDR billed once by KooGallery and ACCEPTED in the ledger.
func flakyNetworkBillsEveryHourExactlyOnce(t *testing.T, open Opener) {
	r := newPushRig(t, open, 100, 10)
	r.now = h0.Add(11 * time.Hour)
	r.sim.Faults().Rate5xx(0.3)
	r.sim.Faults().LostAnswerRate(0.1)
	p := r.pusher("a", TestKey)
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

// poisonedRecordDoesNotBlockTheBatch: one record of a 1,000-record batch names an instance KooGallery does not
// know (call-level 9001): bisection isolates it, the other 999 are accepted.
func poisonedRecordDoesNotBlockTheBatch(t *testing.T, open Opener) {
	r := newPushRig(t, open, 1000, 1)
	r.now = h0.Add(2 * time.Hour)
	lives := map[string]kgsim.Life{}
	for i := 0; i < 1000; i++ {
		if i != 617 {
			lives[instID(i)] = kgsim.Life{}
		}
	}
	r.sim.SetInstances(lives)
	r.drain(r.pusher("a", TestKey), 5)
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

// authFailureStopsAndKeepsRecords: a wrong key (0102) stops pushing; nothing is lost, and once the key is right
// the records go out.
func authFailureStopsAndKeepsRecords(t *testing.T, open Opener) {
	r := newPushRig(t, open, 20, 1)
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
	r.drain(r.pusher("b", TestKey), 5)
	if n := r.billedOnce(); n != 20 || r.open() != 0 {
		t.Fatalf("after the key is fixed: billed %d, open %d", n, r.open())
	}
}

// outageThenCatchUpOldestFirst: KooGallery unreachable for hours; afterwards every hour is pushed, the oldest
// first, and the SDRs past their deadline are counted meanwhile.
func outageThenCatchUpOldestFirst(t *testing.T, open Opener) {
	r := newPushRig(t, open, 5, 6)
	r.now = h0.Add(7 * time.Hour)
	r.sim.Faults().Rate5xx(1)
	p := r.pusher("a", TestKey)
	for i := 0; i < 10; i++ {
		if _, err := p.RunOnce(context.Background(), report.RunOptions{}); err != nil {
			t.Fatal(err)
		}
		r.now = r.now.Add(20 * time.Minute)
	}
	if r.open() != 30 || len(r.sim.Billed()) != 0 {
		t.Fatalf("during the outage: open %d, billed %d", r.open(), len(r.sim.Billed()))
	}
	due, past, err := r.store.OldestUnaccepted(context.Background(), r.now, nil)
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

// transientFailureEndsTheRun: KooGallery rate limits the first of two batches (0250). The run sends nothing more.
// A run inside the backoff sends the rest (a failed batch holds the others back for one run, not longer); the
// failed batch goes once its backoff is over. Every hour is billed once.
func transientFailureEndsTheRun(t *testing.T, open Opener) {
	r := newPushRig(t, open, 600, 2) // 1,200 SDRs: a batch of 1,000 and one of 200
	r.now = h0.Add(3 * time.Hour)
	r.sim.Faults().FailNext(1, "0250", 0)
	p := r.pusher("a", TestKey)
	sum, err := p.RunOnce(context.Background(), report.RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Sent != 1000 || sum.Retrying != 1000 || sum.Accepted != 0 || r.sim.Stats().Requests != 1 {
		t.Fatalf("first run: %+v, %d calls; want one batch of 1,000 sent and retrying, nothing else", sum, r.sim.Stats().Requests)
	}
	// Still inside the backoff (retry_initial 2s, jitter 0.5x to 1.5x): the failed batch is not due, the rest is.
	r.now = r.now.Add(500 * time.Millisecond)
	if sum, err = p.RunOnce(context.Background(), report.RunOptions{}); err != nil || sum.Accepted != 200 {
		t.Fatalf("run inside the backoff: %+v, %v; want the other 200 accepted", sum, err)
	}
	r.now = r.now.Add(3 * time.Second)
	if sum, err = p.RunOnce(context.Background(), report.RunOptions{}); err != nil || sum.Accepted != 1000 {
		t.Fatalf("run after the backoff: %+v, %v; want the 1,000 accepted", sum, err)
	}
	if n := r.billedOnce(); n != 1200 || r.open() != 0 {
		t.Fatalf("billed %d, open %d", n, r.open())
	}
}

// rebuildAfterCrashGivesIdenticalBytes: SDRs built, then the process dies before sending; the ledger is wiped of
// them and rebuilt: the same bytes, so a resend is the same record.
func rebuildAfterCrashGivesIdenticalBytes(t *testing.T, open Opener) {
	r := newPushRig(t, open, 3, 2)
	r.now = h0.Add(3 * time.Hour)
	b := r.builder()
	first, err := b.Preview(context.Background())
	if err != nil || len(first) != 6 {
		t.Fatalf("preview: %d %v", len(first), err)
	}
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
	r.store = r.opener(t, r.storeDir(), r.clock)
	stored := r.sdrs()
	if len(stored) != len(first) {
		t.Fatalf("stored %d SDRs, built %d", len(stored), len(first))
	}
	for i := range first {
		if !bytes.Equal(first[i].Body, stored[i].Body) || first[i].MeteringSN != stored[i].MeteringSN {
			t.Fatalf("rebuilt %s differs:\n%s\n%s", first[i].MeteringSN, first[i].Body, stored[i].Body)
		}
	}
	r.drain(r.pusher("b", TestKey), 5)
	if r.billedOnce() != 6 {
		t.Fatal("not all billed")
	}
}

// twoSchedulersPushOnce: two pushers on one store; only the lease holder pushes, and nothing is billed twice.
func twoSchedulersPushOnce(t *testing.T, open Opener) {
	r := newPushRig(t, open, 50, 2)
	r.now = h0.Add(3 * time.Hour)
	a, b := r.pusher("a", TestKey), r.pusher("b", TestKey)
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

// staleSchedulerIsFenced: scheduler "old" sends a batch whose answer is lost (KooGallery billed it), then loses its
// lease. "new" takes over and resends: KooGallery answers 005/010, which the write-ahead record of the unknown
// outcome turns into ACCEPTED (duplicate confirmed), not a collision. Every write of "old" is refused.
func staleSchedulerIsFenced(t *testing.T, open Opener) {
	r := newPushRig(t, open, 4, 1)
	r.now = h0.Add(2 * time.Hour)
	ctx := context.Background()
	old := r.pusher("old", TestKey)
	r.sim.Faults().LostAnswerRate(1)
	sum, err := old.RunOnce(ctx, report.RunOptions{})
	if err != nil || sum.Sent != 4 || len(r.sim.Billed()) != 4 {
		t.Fatalf("old run: %+v, %v, billed %d", sum, err, len(r.sim.Billed()))
	}
	oldEpoch := sum.Epoch
	r.sim.Faults().LostAnswerRate(0)

	r.now = r.now.Add(time.Minute) // the old lease (30s) expired
	r.drain(r.pusher("new", TestKey), 5)
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

// collisionIsRejectedAndPaged: KooGallery already has these records but no attempt of ours explains it (a store
// restored from an old backup, or a second deployment): REJECTED, counted as collisions, not ACCEPTED.
func collisionIsRejectedAndPaged(t *testing.T, open Opener) {
	r := newPushRig(t, open, 3, 1)
	r.now = h0.Add(2 * time.Hour)
	r.drain(r.pusher("a", TestKey), 3)
	if r.billedOnce() != 3 {
		t.Fatal("first deployment did not bill")
	}
	// A second deployment with its own store and the same data pushes the same instance-hours.
	r2 := newPushRig(t, open, 3, 1)
	r2.sim, r2.srv = r.sim, r.srv
	r2.now = r.now
	r2.drain(r2.pusher("b", TestKey), 3)
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
}

// frozenRecordsDoNotStarveOthers: the first records in push order belong to frozen instances and fill the whole
// window of due records; the active instance's record still goes out, and the frozen ones wait (not sent, not
// billed). The deadline gauges leave the frozen ones out: nothing else is open, so nothing is late or due.
func frozenRecordsDoNotStarveOthers(t *testing.T, open Opener) {
	r := newPushRig(t, open, 12, 1)
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
	client, err := koogallery.NewClient(koogallery.Config{Endpoint: r.srv.URL, Key: func() ([]byte, error) { return TestKey, nil }, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	p, err := report.NewPusher(report.PusherConfig{Ledger: r.store, Builder: r.builder(), Instances: r.store, Client: client, Holder: "a",
		BatchSize: 1, RetryInitial: time.Second, RetryMax: time.Minute, Now: r.clock, Metrics: r.metrics})
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
	if due, past := r.gauge("meterd_push_oldest_unaccepted_due_timestamp_seconds"), r.gauge("meterd_push_sdrs_past_deadline"); due != 0 || past != 0 {
		t.Errorf("deadline gauges with only frozen instances' records open: oldest due %v, past deadline %v; want 0, 0", due, past)
	}
	// The frozen instances' records are left out; the rest are counted.
	if due, past, err := r.store.OldestUnaccepted(ctx, r.now, nil); err != nil || !due.Equal(h0.Add(75*time.Minute)) || past != 11 {
		t.Errorf("oldest unaccepted of all: %s, %d past due, %v", due, past, err)
	}
	if due, past, err := r.store.OldestUnaccepted(ctx, r.now, []string{instID(0), instID(3)}); err != nil || !due.Equal(h0.Add(75*time.Minute)) || past != 9 {
		t.Errorf("oldest unaccepted without two: %s, %d past due, %v", due, past, err)
	}
}

// leaseAndFencing: the lease's rules as the SQLite store defines them. Renewing keeps the epoch, another holder is
// refused while it runs and takes over with the next epoch once it expired or was released, a release by anyone
// but the holder of that epoch does nothing, and every write under an old epoch is refused and writes nothing.
func leaseAndFencing(t *testing.T, open Opener) {
	r := newPushRig(t, open, 2, 1)
	ctx := context.Background()
	st := r.store
	now := h0.Add(2 * time.Hour)
	acquire := func(holder string, at time.Time, wantOK bool, wantHolder string, wantEpoch int64) report.Lease {
		t.Helper()
		l, ok, err := st.AcquireLease(ctx, holder, at, 30*time.Second)
		if err != nil || ok != wantOK || l.Holder != wantHolder || l.Epoch != wantEpoch {
			t.Fatalf("%s acquires at %s: %+v %v %v, want holder %s epoch %d ok %v", holder, at.Format(time.TimeOnly), l, ok, err,
				wantHolder, wantEpoch, wantOK)
		}
		return l
	}
	// Writes before any lease exists fail (there is no epoch to be current).
	if err := st.InsertSDRs(ctx, 1, nil); err == nil {
		t.Fatal("insert without a lease accepted")
	}
	l := acquire("a", now, true, "a", 1)
	if !l.Expires.Equal(now.Add(30 * time.Second)) {
		t.Fatalf("expires %s", l.Expires)
	}
	acquire("a", now.Add(10*time.Second), true, "a", 1)  // renewed
	acquire("b", now.Add(20*time.Second), false, "a", 1) // a's lease runs until +40s
	acquire("b", now.Add(40*time.Second), true, "b", 2)  // expired: taken over
	acquire("a", now.Add(41*time.Second), false, "b", 2)
	if err := st.ReleaseLease(ctx, "a", 2); err != nil { // not a's to release
		t.Fatal(err)
	}
	if err := st.ReleaseLease(ctx, "b", 1); err != nil { // not the current epoch
		t.Fatal(err)
	}
	acquire("a", now.Add(42*time.Second), false, "b", 2)
	if err := st.ReleaseLease(ctx, "b", 2); err != nil {
		t.Fatal(err)
	}
	acquire("a", now.Add(43*time.Second), true, "a", 3) // released: taken at once

	// Build under epoch 3, then check that writes under epoch 2 are refused and change nothing.
	if n, err := r.builder().Build(ctx, 3, now); err != nil || n != 2 {
		t.Fatalf("built %d, %v", n, err)
	}
	before := r.sdrs()
	sns := []string{before[0].MeteringSN, before[1].MeteringSN}
	stale := []error{
		st.InsertSDRs(ctx, 2, []report.SDR{{MeteringSN: "x"}}),
		st.MarkSending(ctx, 2, sns, now),
		st.RecordAttempt(ctx, 2, report.Attempt{At: now, BatchID: "b"}, sns, []report.Outcome{{MeteringSN: sns[0], State: report.Rejected, Definite: true}}),
		st.MarkSending(ctx, 4, sns, now), // a future epoch is not current either
	}
	for i, err := range stale {
		if !errors.Is(err, report.ErrStaleEpoch) {
			t.Errorf("stale write %d: %v", i, err)
		}
	}
	after := r.sdrs()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("stale writes changed the ledger:\n%v\n%v", before, after)
	}
	atts, err := st.Attempts(ctx, sns)
	if err != nil || len(atts) != 0 {
		t.Fatalf("stale attempts logged: %v %v", atts, err)
	}
	if after[0].Epoch != 3 {
		t.Fatalf("SDR epoch %d, want 3", after[0].Epoch)
	}
}

// ledgerContract: the ledger's writes and reads outside the push scenarios, with exact values.
func ledgerContract(t *testing.T, open Opener) {
	r := newPushRig(t, open, 3, 3)
	ctx := context.Background()
	st := r.store
	now := h0.Add(4 * time.Hour)
	lease, ok, err := st.AcquireLease(ctx, "a", now, time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	ep := lease.Epoch

	// Unbuilt rows: every closed instance-hour with usage, by hour then instance, resumable after a position.
	rows, err := st.UnbuiltRows(ctx, time.Time{}, "", 100)
	if err != nil || len(rows) != 9 {
		t.Fatalf("unbuilt rows: %d %v", len(rows), err)
	}
	if rows[0].Hour != h0 || rows[0].InstanceID != instID(0) || rows[3].Hour != h0.Add(time.Hour) || rows[4].InstanceID != instID(1) ||
		rows[1].UsageValue.String() != "2.5" {
		t.Fatalf("unbuilt rows order or values: %+v", rows[:5])
	}
	if page, err := st.UnbuiltRows(ctx, h0.Add(time.Hour), instID(0), 2); err != nil || len(page) != 2 ||
		page[0].InstanceID != instID(1) || page[1].InstanceID != instID(2) || !page[1].Hour.Equal(h0.Add(time.Hour)) {
		t.Fatalf("unbuilt page: %+v %v", page, err)
	}

	// Insert: idempotent, and the stored SDR reads back field for field.
	sdrs, err := r.builder().Preview(ctx)
	if err != nil || len(sdrs) != 9 {
		t.Fatalf("preview %d %v", len(sdrs), err)
	}
	sdrs[0].RelatePkgInstance = "pkg-1"
	sdrs[0].Reason = "why not"
	if err := st.InsertSDRs(ctx, ep, sdrs[:4]); err != nil {
		t.Fatal(err)
	}
	if err := st.InsertSDRs(ctx, ep, sdrs); err != nil {
		t.Fatal(err)
	}
	changed := sdrs[0]
	changed.Amount = decimal.RequireFromString("999")
	if err := st.InsertSDRs(ctx, ep, []report.SDR{changed}); err != nil {
		t.Fatal(err)
	}
	if rows, err := st.UnbuiltRows(ctx, time.Time{}, "", 100); err != nil || len(rows) != 0 {
		t.Fatalf("unbuilt after insert: %d %v", len(rows), err)
	}
	all := r.sdrs()
	if len(all) != 9 {
		t.Fatalf("%d SDRs", len(all))
	}
	got, want := all[0], sdrs[0]
	if got.MeteringSN != want.MeteringSN || got.InstanceID != want.InstanceID || !got.Hour.Equal(want.Hour) || got.Revision != 0 ||
		got.Meter != want.Meter || got.SKU != want.SKU || !got.RecordTime.Equal(want.RecordTime) || !got.Begin.Equal(want.Begin) ||
		!got.End.Equal(want.End) || !got.UsageValue.Equal(want.UsageValue) || !got.Amount.Equal(want.Amount) ||
		got.Currency != want.Currency || got.RelatePkgInstance != "pkg-1" || !bytes.Equal(got.Body, want.Body) ||
		got.State != report.Pending || got.Reason != "why not" || got.LastCode != "" || !got.Due.Equal(want.Due) ||
		got.UnknownAttempts != 0 || got.Attempts != 0 || !got.AcceptedAt.IsZero() || got.Epoch != ep {
		t.Fatalf("stored SDR\n got %+v\nwant %+v", got, want)
	}
	if all[1].RelatePkgInstance != "" {
		t.Fatalf("relate_pkg_instance %q", all[1].RelatePkgInstance)
	}

	// Filters: state, instance, hour range, limit; ordered by hour, instance, revision.
	list := func(f report.SDRFilter) []report.SDR {
		t.Helper()
		out, err := st.ListSDRs(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := list(report.SDRFilter{InstanceID: instID(1), From: h0, To: h0.Add(2 * time.Hour)}); len(got) != 2 ||
		got[0].InstanceID != instID(1) || !got[1].Hour.Equal(h0.Add(time.Hour)) {
		t.Fatalf("by instance and range: %+v", got)
	}
	if got := list(report.SDRFilter{From: h0.Add(time.Hour), To: h0.Add(3 * time.Hour), Limit: 4}); len(got) != 4 ||
		!got[0].Hour.Equal(h0.Add(time.Hour)) || got[3].InstanceID != instID(0) || !got[3].Hour.Equal(h0.Add(2*time.Hour)) {
		t.Fatalf("by range with limit: %+v", got)
	}

	// Push writes: pushable oldest first; MarkSending counts; outcomes apply once and a final state stays.
	due, err := st.Pushable(ctx, now, 100)
	if err != nil || len(due) != 9 || !due[0].Hour.Equal(h0) || due[0].InstanceID != instID(0) || !due[8].Hour.Equal(h0.Add(2*time.Hour)) {
		t.Fatalf("pushable: %d %v", len(due), err)
	}
	if page, err := st.Pushable(ctx, now, 2); err != nil || len(page) != 2 || page[1].InstanceID != instID(1) {
		t.Fatalf("pushable page: %d %v", len(page), err)
	}
	sns := []string{all[0].MeteringSN, all[1].MeteringSN, all[2].MeteringSN}
	if err := st.MarkSending(ctx, ep, sns, now); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkSending(ctx, ep, sns[:1], now); err != nil {
		t.Fatal(err)
	}
	acceptedAt := now.Add(time.Second)
	att := report.Attempt{At: now, BatchID: "batch-1", Records: 3, HTTPStatus: 200, Code: "0000", Class: "accepted",
		Latency: 1500 * time.Millisecond, Error: "e"}
	if err := st.RecordAttempt(ctx, ep, att, sns, []report.Outcome{
		{MeteringSN: sns[0], State: report.Accepted, Code: "0000", Definite: true, AcceptedAt: acceptedAt},
		{MeteringSN: sns[1], State: report.Rejected, Code: "0100", Reason: "bad", Definite: true},
		{MeteringSN: sns[2], State: report.Sent, Code: "0999", NextAttempt: now.Add(time.Minute)},
	}); err != nil {
		t.Fatal(err)
	}
	// A later outcome for a final SDR changes nothing; an attempt is still logged.
	att2 := att
	att2.At, att2.BatchID = now.Add(2*time.Second), "batch-2"
	if err := st.RecordAttempt(ctx, ep, att2, sns[:1], []report.Outcome{{MeteringSN: sns[0], State: report.Rejected, Code: "x", Definite: true}}); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkSending(ctx, ep, sns[:2], now); err != nil { // final SDRs are not marked either
		t.Fatal(err)
	}
	byID := map[string]report.SDR{}
	for _, d := range r.sdrs() {
		byID[d.MeteringSN] = d
	}
	a, rj, sent := byID[sns[0]], byID[sns[1]], byID[sns[2]]
	if a.State != report.Accepted || a.LastCode != "0000" || a.Attempts != 2 || a.UnknownAttempts != 1 || !a.AcceptedAt.Equal(acceptedAt.Truncate(time.Millisecond)) {
		t.Errorf("accepted: %+v", a)
	}
	if rj.State != report.Rejected || rj.LastCode != "0100" || rj.Reason != "bad" || rj.Attempts != 1 || rj.UnknownAttempts != 0 || !rj.AcceptedAt.IsZero() {
		t.Errorf("rejected: %+v", rj)
	}
	if sent.State != report.Sent || sent.Attempts != 1 || sent.UnknownAttempts != 1 || !sent.NextAttempt.Equal(now.Add(time.Minute)) {
		t.Errorf("sent: %+v", sent)
	}
	if due, err := st.Pushable(ctx, now, 100); err != nil || len(due) != 6 {
		t.Fatalf("pushable after the attempt: %d %v", len(due), err)
	}
	if due, err := st.Pushable(ctx, now.Add(time.Minute), 100); err != nil || len(due) != 7 || due[0].MeteringSN != sns[2] {
		t.Fatalf("pushable once the retry is due: %d %v", len(due), err)
	}
	counts, err := st.StateCounts(ctx)
	if err != nil || counts[report.Pending] != 6 || counts[report.Sent] != 1 || counts[report.Accepted] != 1 || counts[report.Rejected] != 1 {
		t.Fatalf("counts %v %v", counts, err)
	}
	if got := list(report.SDRFilter{State: report.Rejected, From: h0, To: h0.Add(10 * time.Hour)}); len(got) != 1 || got[0].MeteringSN != sns[1] {
		t.Fatalf("by state: %+v", got)
	}
	oldest, past, err := st.OldestUnaccepted(ctx, h0.Add(2*time.Hour), nil)
	if err != nil || !oldest.Equal(h0.Add(time.Hour+15*time.Minute)) || past != 1 {
		t.Fatalf("oldest unaccepted %s, past due %d, %v", oldest, past, err)
	}

	// Attempts: every attempt of each SDR, oldest first, with all fields.
	atts, err := st.Attempts(ctx, []string{sns[0], sns[1], "unknown"})
	if err != nil || len(atts) != 2 || len(atts[sns[0]]) != 2 || len(atts[sns[1]]) != 1 {
		t.Fatalf("attempts %v %v", atts, err)
	}
	if g := atts[sns[0]][0]; g.BatchID != "batch-1" || !g.At.Equal(now) || g.Records != 3 || g.HTTPStatus != 200 || g.Code != "0000" ||
		g.Class != "accepted" || g.Latency != 1500*time.Millisecond || g.Epoch != ep || g.Error != "e" || g.MeteringSN != sns[0] {
		t.Errorf("attempt %+v", g)
	}
	if atts[sns[0]][1].BatchID != "batch-2" {
		t.Errorf("attempt order %+v", atts[sns[0]])
	}

	// Step usage: the usage of the instance's SDRs in the range, REJECTED, EXPIRED and ASYNC_REJECTED left out.
	// instID(0) has 1.5 per hour; its hour-0 SDR is ACCEPTED. instID(1) (2.5 per hour) lost hour 0 to REJECTED.
	usage := func(id string, from, to time.Time) string {
		t.Helper()
		u, err := st.PeriodUsage(ctx, id, from, to)
		if err != nil {
			t.Fatal(err)
		}
		return u.String()
	}
	if got := usage(instID(0), h0, h0.Add(3*time.Hour)); got != "4.5" {
		t.Errorf("period usage of %s: %s", instID(0), got)
	}
	if got := usage(instID(1), h0, h0.Add(3*time.Hour)); got != "5" {
		t.Errorf("period usage of %s: %s", instID(1), got)
	}
	if got := usage(instID(0), h0.Add(time.Hour), h0.Add(2*time.Hour)); got != "1.5" {
		t.Errorf("period usage of one hour: %s", got)
	}
	if got := usage("nobody", h0, h0.Add(3*time.Hour)); got != "0" {
		t.Errorf("period usage of no SDR: %s", got)
	}

	// Pauses: global and per instance, resumed without losing anything.
	pauses := func() string {
		t.Helper()
		g, inst, err := st.Pauses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(g, inst)
	}
	if got := pauses(); got != "false map[]" {
		t.Fatalf("pauses %s", got)
	}
	for _, p := range []struct {
		id     string
		paused bool
	}{{"", true}, {instID(1), true}, {instID(2), true}, {instID(2), true}, {"", false}, {instID(2), false}} {
		if err := st.SetPause(ctx, p.id, p.paused, now); err != nil {
			t.Fatal(err)
		}
	}
	if got := pauses(); got != "false map["+instID(1)+":true]" {
		t.Fatalf("pauses %s", got)
	}
	if err := st.SetPause(ctx, "", true, now); err != nil {
		t.Fatal(err)
	}
	if got := pauses(); got != "true map["+instID(1)+":true]" {
		t.Fatalf("pauses %s", got)
	}
}

// billImportSettlesAndReReports: a bill of pushed SDRs moves them ACCEPTED -> BILLED, an ABNORMAL line moves its SDR
// to ASYNC_REJECTED with the next revision PENDING (same bytes but the number), a line without a number is
// matched by instance and period, the gaps either way are listed; importing the file again changes nothing, a
// change to another state is refused, and the push re-reports the next revision.
func billImportSettlesAndReReports(t *testing.T, open Opener) {
	r := newPushRig(t, open, 3, 2)
	ctx := context.Background()
	r.now = h0.Add(3 * time.Hour)
	r.drain(r.pusher("a", TestKey), 5)
	sdrs := r.sdrs()
	if len(sdrs) != 6 || r.open() != 0 {
		t.Fatalf("%d SDRs, %d open", len(sdrs), r.open())
	}
	kg := func(t time.Time) string { return t.UTC().Format(koogallery.TimeLayout) }
	var csv strings.Builder
	csv.WriteString("metering_sn,instance_id,begin_time,end_time,usage_value,amount,status\n")
	for i, d := range sdrs[:5] {
		sn, status, amount := d.MeteringSN, "SUCCESS", d.Amount.String()
		switch i {
		case 1:
			status, amount = "ABNORMAL", "0"
		case 2:
			sn = "" // matched by instance and period
		}
		fmt.Fprintf(&csv, "%s,%s,%s,%s,%s,%s,%s\n", sn, d.InstanceID, kg(d.Begin), kg(d.End), d.UsageValue, amount, status)
	}
	unknown := "m2026112000-r0-00000000000000000000000000000000"
	fmt.Fprintf(&csv, "%s,inst-9999,%s,%s,1,0.3,SUCCESS\n", unknown, kg(h0), kg(h0.Add(time.Hour)))
	path := filepath.Join(r.dir, "bill.csv")
	if err := os.WriteFile(path, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := bill.OptionsFromConfig(r.cfg, r.now)
	res, err := bill.Import(ctx, r.store, path, "bill.csv", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 6 || res.Matched != 5 || res.Billed != 4 || res.AsyncRejected != 1 || res.Rereported != 1 ||
		len(res.MissingInLedger) != 1 || res.MissingInLedger[0].MeteringSN != unknown || len(res.MissingInBill) != 1 ||
		res.MissingInBill[0].MeteringSN != sdrs[5].MeteringSN || len(res.AmountDiffs) != 0 {
		t.Fatalf("result %+v", res)
	}
	lease, ok, err := r.store.AcquireLease(ctx, "a", r.now, 30*time.Second)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	old := sdrs[1]
	nextSN := report.MeteringSN(old.InstanceID, old.Hour, 1)
	states := map[report.State]int{}
	var next report.SDR
	for _, d := range r.sdrs() {
		states[d.State]++
		switch d.MeteringSN {
		case old.MeteringSN:
			if d.State != report.AsyncRejected || d.Reason != `listed as "ABNORMAL" in bill.csv line 3; re-reported as `+nextSN ||
				d.Epoch != old.Epoch || d.LastCode != old.LastCode || !d.AcceptedAt.Equal(old.AcceptedAt) {
				t.Errorf("abnormal SDR %+v", d)
			}
		case sdrs[0].MeteringSN, sdrs[2].MeteringSN:
			if d.State != report.Billed || d.Reason != sdrs[0].Reason || d.Epoch != old.Epoch {
				t.Errorf("billed SDR %+v", d)
			}
		case nextSN:
			next = d
		}
	}
	if states[report.Billed] != 4 || states[report.AsyncRejected] != 1 || states[report.Accepted] != 1 || states[report.Pending] != 1 {
		t.Errorf("states %v", states)
	}
	if next.Revision != 1 || next.State != report.Pending || next.Epoch != lease.Epoch || !next.Begin.Equal(old.Begin) ||
		!next.End.Equal(old.End) || !next.UsageValue.Equal(old.UsageValue) || !next.Amount.Equal(old.Amount) || next.Attempts != 0 ||
		!bytes.Equal(next.Body, bytes.ReplaceAll(old.Body, []byte(old.MeteringSN), []byte(nextSN))) {
		t.Errorf("next revision %+v\nof %+v", next, old)
	}
	if got, err := r.store.SDRsByMeteringSN(ctx, []string{old.MeteringSN, unknown, nextSN}); err != nil || len(got) != 2 {
		t.Errorf("by metering_sn: %d %v", len(got), err)
	}
	if got, err := r.store.SDRsByPeriod(ctx, []bill.Period{{InstanceID: old.InstanceID, Begin: old.Begin, End: old.End},
		{InstanceID: old.InstanceID, Begin: old.Begin, End: old.End.Add(-time.Second)}}); err != nil || len(got) != 2 {
		t.Errorf("by period: every revision, exact period only: %d %v", len(got), err)
	}

	before := r.snapshot()
	again, err := bill.Import(ctx, r.store, path, "bill.csv", opts)
	if err != nil || again.Billed != 0 || again.AsyncRejected != 0 || again.Rereported != 0 || again.Matched != 5 {
		t.Fatalf("second import %+v %v", again, err)
	}
	if _, err := r.store.ApplyBill(ctx, bill.Source{SHA256: "x", Name: "bad", At: r.now},
		[]bill.Change{{MeteringSN: sdrs[5].MeteringSN, To: report.Rejected}}); err == nil {
		t.Error("a bill change to REJECTED was applied")
	}
	if after := r.snapshot(); after != before {
		t.Fatalf("second import changed the ledger:\n%s\n%s", before, after)
	}

	// The push re-reports revision 1 to a KooGallery that no longer holds the refused revision 0.
	sim2 := kgsim.New(kgsim.Config{Key: TestKey, Now: r.clock})
	srv2 := httptest.NewServer(sim2)
	t.Cleanup(srv2.Close)
	r.srv = srv2
	r.drain(r.pusher("a", TestKey), 5)
	if got := sim2.Billed(); len(got) != 1 || got[0].MeteringSN != nextSN {
		t.Fatalf("re-report billed %+v", got)
	}
}
