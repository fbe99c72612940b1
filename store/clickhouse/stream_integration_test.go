//go:build integration

package clickhouse_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/aggregatetest"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/store/clickhouse"
)

// fakeTopic stands in for the events topic and its collectors: Write gives each event the next offset of the
// partition its key hashes to, as Kafka's key partitioner would, and the stored offsets are whatever was written
// (or, when held, what was written before hold).
type fakeTopic struct {
	mu         sync.Mutex
	partitions int
	next       map[int]int64
	held       map[int]int64 // when set, StoredOffsets answers this
}

func (f *fakeTopic) StoredOffsets(context.Context) (map[int]int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	src := f.next
	if f.held != nil {
		src = f.held
	}
	out := map[int]int64{}
	for p, o := range src {
		out[p] = o
	}
	return out, nil
}

func (f *fakeTopic) position(ev *ingest.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := fnv.New32a()
	_, _ = h.Write([]byte(ev.Source + "\x00" + ev.ID))
	p := int(h.Sum32() % uint32(f.partitions))
	ev.Stream = &ingest.StreamPos{Topic: "usage-events", Partition: p, Offset: f.next[p]}
	f.next[p]++
}

// streamFed is the store as collectors use it: every event written carries its Kafka position.
type streamFed struct {
	*clickhouse.Store
	topic *fakeTopic
}

func (s streamFed) Write(ctx context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	for _, ev := range events {
		s.topic.position(ev)
	}
	return s.Store.Write(ctx, events, rejected)
}

// TestConformanceStreamFed runs the golden hour-close scenario on a stream-fed store: the ingest sequence is the
// Kafka position and the close snapshots offsets per partition. The expected hours are the same as SQLite's.
func TestConformanceStreamFed(t *testing.T) {
	type db struct {
		cfg   clickhouse.Config
		topic *fakeTopic
	}
	dbs := map[string]db{}
	aggregatetest.Run(t, filepath.Join("..", "..", "aggregate", "testdata", "golden"), func(t *testing.T, dir string) aggregatetest.Store {
		d, ok := dbs[dir]
		if !ok {
			d = db{cfg: throwaway(t), topic: &fakeTopic{partitions: 3, next: map[int]int64{}}}
			dbs[dir] = d
		}
		st, err := clickhouse.Open(context.Background(), d.cfg, clickhouse.Options{Offsets: d.topic})
		if err != nil {
			t.Fatal(err)
		}
		return streamFed{Store: st, topic: d.topic}
	})
}

// TestStreamSnapshots: membership by offsets per partition. Events stored but not yet committed are outside the
// snapshot and belong to the next window; an unchanged position reuses the snapshot; offsets never go back; a
// redelivered batch (collector crash before its commit) counts once; the snapshot survives a reopen.
func TestStreamSnapshots(t *testing.T) {
	ctx := context.Background()
	cfg := throwaway(t)
	topic := &fakeTopic{partitions: 2, next: map[int]int64{}}
	st, err := clickhouse.Open(ctx, cfg, clickhouse.Options{Offsets: topic})
	if err != nil {
		t.Fatal(err)
	}
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	ev := func(id string, p int, off int64, v string) *ingest.Event {
		e := &ingest.Event{Source: "s", ID: id, Type: "t", Subject: "sub", Time: hour.Add(time.Minute), ReceivedAt: hour.Add(time.Minute),
			Values: []ingest.MeterValue{{Meter: "m", Value: v}}, Raw: []byte(`{"id":"` + id + `"}`),
			Stream: &ingest.StreamPos{Topic: "usage-events", Partition: p, Offset: off}}
		e.Hash[0] = byte(len(id))
		return e
	}
	batch := []*ingest.Event{ev("a", 0, 0, "1"), ev("b", 0, 1, "2"), ev("c", 1, 0, "4"), ev("d", 1, 1, "8"), ev("e", 0, 2, "16")}
	if _, err := st.Write(ctx, batch, nil); err != nil {
		t.Fatal(err)
	}
	sum := func(after, upto int64) decimal.Decimal {
		t.Helper()
		tot, err := st.Totals(ctx, aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"m"}, From: hour, To: hour.Add(time.Hour),
			SeqAfter: after, SeqUpTo: upto})
		if err != nil {
			t.Fatal(err)
		}
		var s decimal.Decimal
		for _, x := range tot {
			s = s.Add(x.Value)
		}
		return s
	}
	// Committed: partition 0 up to offset 2 (a, b), partition 1 up to 1 (c). d and e are stored, not committed.
	topic.held = map[int]int64{0: 2, 1: 1}
	s1, err := st.LastSeq(ctx)
	if err != nil || s1 <= 0 {
		t.Fatalf("first snapshot %d, %v", s1, err)
	}
	if got := sum(0, s1); !got.Equal(decimal.NewFromInt(7)) {
		t.Errorf("window (0, s1] = %s, want 7 (a, b, c)", got)
	}
	if again, err := st.LastSeq(ctx); err != nil || again != s1 {
		t.Errorf("unchanged offsets gave snapshot %d (%v), want %d", again, err, s1)
	}
	// The collector dies before committing and its successor redelivers d and e: duplicates, nothing added.
	res, err := st.Write(ctx, []*ingest.Event{ev("d", 1, 1, "8"), ev("e", 0, 2, "16")}, nil)
	if err != nil || res.Outcomes[0] != ingest.Duplicate || res.Outcomes[1] != ingest.Duplicate {
		t.Fatalf("redelivery: %+v %v", res, err)
	}
	topic.held = map[int]int64{0: 3, 1: 2}
	s2, err := st.LastSeq(ctx)
	if err != nil || s2 <= s1 {
		t.Fatalf("second snapshot %d, %v", s2, err)
	}
	if got := sum(s1, s2); !got.Equal(decimal.NewFromInt(24)) {
		t.Errorf("window (s1, s2] = %s, want 24 (d, e)", got)
	}
	if got := sum(0, s2); !got.Equal(decimal.NewFromInt(31)) {
		t.Errorf("window (0, s2] = %s, want 31", got)
	}
	topic.held = map[int]int64{0: 1, 1: 2}
	if _, err := st.LastSeq(ctx); err == nil {
		t.Error("offsets going back were accepted")
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	topic.held = map[int]int64{0: 3, 1: 2}
	st, err = clickhouse.Open(ctx, cfg, clickhouse.Options{Offsets: topic})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	if s, err := st.LastSeq(ctx); err != nil || s != s2 {
		t.Errorf("after reopen: snapshot %d (%v), want %d", s, err, s2)
	}
	if got := sum(s1, s2); !got.Equal(decimal.NewFromInt(24)) {
		t.Errorf("after reopen window (s1, s2] = %s, want 24", got)
	}
	// An event without a position is refused by a stream-fed store.
	bad := ev("z", 0, 9, "1")
	bad.Stream = nil
	if _, err := st.Write(ctx, []*ingest.Event{bad}, nil); err == nil {
		t.Error("an event without a Kafka position was stored")
	}
}

// TestStreamSnapshotsOfTwoProcesses: the scheduler and the API (previewing open hours) both take snapshots of
// one database; their numbers never collide, so each number still names exactly the offsets it was taken with.
func TestStreamSnapshotsOfTwoProcesses(t *testing.T) {
	ctx := context.Background()
	cfg := throwaway(t)
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	a := &fakeTopic{partitions: 1, next: map[int]int64{}, held: map[int]int64{0: 1}}
	b := &fakeTopic{partitions: 1, next: map[int]int64{}, held: map[int]int64{0: 2}}
	sa, err := clickhouse.Open(ctx, cfg, clickhouse.Options{Offsets: a})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sa.Close() }()
	sb, err := clickhouse.Open(ctx, cfg, clickhouse.Options{Offsets: b})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb.Close() }()
	var events []*ingest.Event
	for i, v := range []string{"1", "10"} {
		e := &ingest.Event{Source: "s", ID: fmt.Sprint(i), Type: "t", Subject: "sub", Time: hour, ReceivedAt: hour,
			Values: []ingest.MeterValue{{Meter: "m", Value: v}}, Raw: []byte(fmt.Sprintf(`{"id":"%d"}`, i)),
			Stream: &ingest.StreamPos{Topic: "usage-events", Partition: 0, Offset: int64(i)}}
		events = append(events, e)
	}
	if _, err := sa.Write(ctx, events, nil); err != nil {
		t.Fatal(err)
	}
	na, err := sa.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := sb.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if na == nb {
		t.Fatalf("both processes took snapshot %d", na)
	}
	for _, c := range []struct {
		n    int64
		want int64
	}{{na, 1}, {nb, 11}} {
		tot, err := sb.Totals(ctx, aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"m"}, From: hour, To: hour.Add(time.Hour), SeqUpTo: c.n})
		if err != nil {
			t.Fatal(err)
		}
		if len(tot) != 1 || !tot[0].Value.Equal(decimal.NewFromInt(c.want)) {
			t.Errorf("snapshot %d: totals %+v, want %d", c.n, tot, c.want)
		}
	}
}
