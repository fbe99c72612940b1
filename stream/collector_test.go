package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/ingest"
)

// fakeLog is a consumer-group reader over an in-memory log: FetchMessage hands out messages in append order and
// blocks when there are none; CommitMessages records the next offset per partition.
type fakeLog struct {
	mu         sync.Mutex
	msgs       []kafka.Message
	next       int
	added      chan struct{} // closed and replaced on every append
	ends       map[int]int64 // next offset per partition
	committed  map[int]int64
	commits    int
	commitErr  error
	fetchErrs  []error // returned, in order, before any further message
	fetched    int
	rebalanced bool
}

func newFakeLog() *fakeLog {
	return &fakeLog{added: make(chan struct{}), ends: map[int]int64{}, committed: map[int]int64{}}
}

// add appends a message to partition p with the given timestamp.
func (l *fakeLog) add(p int, value []byte, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	off := l.ends[p]
	l.ends[p] = off + 1
	l.msgs = append(l.msgs, kafka.Message{Topic: "ev", Partition: p, Offset: off, HighWaterMark: off + 1, Value: value, Time: at})
	close(l.added)
	l.added = make(chan struct{})
}

func (l *fakeLog) FetchMessage(ctx context.Context) (kafka.Message, error) {
	for {
		l.mu.Lock()
		if len(l.fetchErrs) > 0 {
			err := l.fetchErrs[0]
			l.fetchErrs = l.fetchErrs[1:]
			l.mu.Unlock()
			return kafka.Message{}, err
		}
		if l.next < len(l.msgs) {
			m := l.msgs[l.next]
			m.HighWaterMark = l.ends[m.Partition]
			l.next++
			l.fetched++
			l.mu.Unlock()
			return m, nil
		}
		added := l.added
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return kafka.Message{}, ctx.Err()
		case <-added:
		}
	}
}

func (l *fakeLog) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.commitErr != nil {
		return l.commitErr
	}
	l.commits++
	for _, m := range msgs {
		l.committed[m.Partition] = max(l.committed[m.Partition], m.Offset+1)
	}
	return nil
}

func (l *fakeLog) Rebalanced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.rebalanced
	l.rebalanced = false
	return r
}

func (l *fakeLog) Close() error { return nil }

func (l *fakeLog) state() (fetched int, committed map[int]int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fetched, maps(l.committed)
}

func maps(m map[int]int64) map[int]int64 {
	out := make(map[int]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// fakeSink is a store deduplicating by (source, id); its first fails writes fail.
type fakeSink struct {
	mu       sync.Mutex
	calls    int
	fails    int // -1: always
	stored   map[dedupKey]*ingest.Event
	batches  [][]*ingest.Event
	rejected []*ingest.Rejection
}

func newFakeSink() *fakeSink { return &fakeSink{stored: map[dedupKey]*ingest.Event{}} }

var errStoreDown = errors.New("store down")

func (s *fakeSink) Write(_ context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fails < 0 || s.calls <= s.fails {
		return ingest.WriteResult{}, errStoreDown
	}
	res := ingest.WriteResult{Outcomes: make([]ingest.Outcome, len(events)), Existing: make([]json.RawMessage, len(events))}
	for i, ev := range events {
		k := dedupKey{ev.Source, ev.ID}
		switch first, ok := s.stored[k]; {
		case !ok:
			s.stored[k] = ev
			res.Outcomes[i] = ingest.Stored
		case first.Hash == ev.Hash:
			res.Outcomes[i] = ingest.Duplicate
		default:
			res.Outcomes[i] = ingest.Conflict
			res.Existing[i] = first.Raw
		}
	}
	s.batches = append(s.batches, events)
	s.rejected = append(s.rejected, rejected...)
	return res, nil
}

func (s *fakeSink) batchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, b := range s.batches {
		out = append(out, len(b))
	}
	return out
}

// rig is a collector over fakes, run in its own goroutine.
type rig struct {
	log     *fakeLog
	sink    *fakeSink
	dlq     *fakeWriter
	metrics *Metrics
	c       *Collector
	sleeps  []time.Duration
	cancel  context.CancelFunc
	done    chan error
}

func newRig(t *testing.T, batchSize int, batchWait time.Duration) *rig {
	r := &rig{log: newFakeLog(), sink: newFakeSink(), dlq: &fakeWriter{}, metrics: NewMetrics(prometheus.NewRegistry())}
	cfg := validConfig()
	cfg.DLQTopic, cfg.BatchSize, cfg.BatchWait = "ev-dlq", batchSize, batchWait
	var mu sync.Mutex
	r.c = newCollector(r.log, r.dlq, cfg, CollectorOptions{Validator: testValidator(t), Sink: r.sink, Metrics: r.metrics,
		RetryInitial: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		Sleep: func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			r.sleeps = append(r.sleeps, d)
			mu.Unlock()
			return sleepCtx(ctx, d)
		}})
	return r
}

func (r *rig) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan error, 1)
	go func() { r.done <- r.c.Run(ctx) }()
}

func (r *rig) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// TestCollectorBatchesThenCommits: batches close at batch_size or batch_wait after their first message; each is
// stored before its offsets are committed, and every event carries where it was read.
func TestCollectorBatchesThenCommits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 3, time.Second)
		now := time.Now()
		for i := range 7 {
			r.log.add(i%2, eventJSON("gw", "e"+string(rune('a'+i)), now, "1"), now)
		}
		r.start()
		synctest.Wait()
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{3, 3}) {
			t.Fatalf("batches %v before batch_wait, want [3 3]", got)
		}
		if _, committed := r.log.state(); committed[0] != 3 || committed[1] != 3 {
			t.Errorf("committed %v after 6 stored messages, want partition 0 and 1 at offset 3", committed)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{3, 3, 1}) {
			t.Fatalf("batches %v after batch_wait, want [3 3 1]", got)
		}
		if _, committed := r.log.state(); committed[0] != 4 || committed[1] != 3 {
			t.Errorf("committed %v, want everything", committed)
		}
		ev := r.sink.batches[2][0]
		if ev.Stream == nil || *ev.Stream != (ingest.StreamPos{Topic: "ev", Partition: 0, Offset: 3}) || !ev.ReceivedAt.Equal(now) {
			t.Errorf("last event read at %+v, received %v", ev.Stream, ev.ReceivedAt)
		}
		r.log.add(1, eventJSON("gw", "late", now, "1"), now)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{3, 3, 1, 1}) {
			t.Errorf("batches %v, want a fourth of one", got)
		}
		m := r.metrics
		if got := testutil.ToFloat64(m.consumed); got != 8 {
			t.Errorf("consumed %v", got)
		}
		if got := testutil.ToFloat64(m.EventsCounter(ingest.Stored)); got != 8 {
			t.Errorf("stored %v", got)
		}
		if got := testutil.ToFloat64(m.LagGauge(0)); got != 0 {
			t.Errorf("lag of partition 0 = %v", got)
		}
		// The last batch was committed batch_wait after "late" arrived.
		if got, want := testutil.ToFloat64(m.lastCommit), float64(now.Add(2*time.Second).Unix()); got != want {
			t.Errorf("last commit time %v, want %v", got, want)
		}
		r.stop(t)
		if n := testutil.CollectAndCount(m.lag); n != 0 {
			t.Errorf("%d lag series left after Run returned", n)
		}
	})
}

// TestCollectorBatchBytes: a batch also ends at the message that brings its values to batch_bytes, so large
// events make smaller batches and a collector's memory stays bounded whatever the events' size.
func TestCollectorBatchBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		now := time.Now()
		var size int
		for i := range 7 {
			ev := eventJSON("gw", fmt.Sprintf("e%d", i), now, "1")
			size = len(ev)
			r.log.add(0, ev, now)
		}
		r.c.batchBytes = 3*size - 1 // the third message reaches it
		r.start()
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{3, 3, 1}) {
			t.Errorf("batches %v, want [3 3 1]: ended by bytes, then by batch_wait", got)
		}
		if _, committed := r.log.state(); committed[0] != 7 {
			t.Errorf("committed %v, want everything", committed)
		}
		r.stop(t)
	})
}

// TestCollectorBackpressure: while the store fails, the same batch is retried with capped exponential backoff,
// nothing is fetched beyond the next batch, nothing is committed; once it recovers, everything is stored once and
// committed.
func TestCollectorBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 2, time.Second)
		r.sink.fails = 4
		now := time.Now()
		for i := range 5 {
			r.log.add(0, eventJSON("gw", "e"+string(rune('a'+i)), now, "1"), now)
		}
		// Watch the fetches and commits at every retry. They are read when the retry delay ends, not when it
		// starts: the bubble's clock moves only once every goroutine is blocked, so by then the fetcher has gone
		// as far as it can. Read at the start, the fetcher may still be running (CI once saw [3 4 4 4]).
		var seen []int
		var commitsWhileFailing int
		sleep := r.c.sleep
		r.c.sleep = func(ctx context.Context, d time.Duration) error {
			err := sleep(ctx, d)
			fetched, committed := r.log.state()
			seen = append(seen, fetched)
			commitsWhileFailing += len(committed)
			return err
		}
		r.start()
		time.Sleep(time.Minute)
		synctest.Wait()
		if want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond}; !slices.Equal(r.sleeps, want) {
			t.Errorf("retry delays %v, want %v", r.sleeps, want)
		}
		// The batch being stored, and the next one fetched and validated while it is: nothing beyond.
		if !slices.Equal(seen, []int{4, 4, 4, 4}) || commitsWhileFailing != 0 {
			t.Errorf("fetched %v while the store failed (want the first two batches only), %d commits", seen, commitsWhileFailing)
		}
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{2, 2, 1}) {
			t.Errorf("stored batches %v", got)
		}
		if _, committed := r.log.state(); committed[0] != 5 {
			t.Errorf("committed %v, want offset 5", committed)
		}
		if got := testutil.ToFloat64(r.metrics.InsertErrorsCounter()); got != 4 {
			t.Errorf("insert errors %v", got)
		}
		if got := testutil.ToFloat64(r.metrics.EventsCounter(ingest.Stored)); got != 5 {
			t.Errorf("stored %v", got)
		}
		r.stop(t)
	})
}

// TestCollectorStopsWithoutCommitting: cancelled while the store fails, Run returns nil and commits nothing, so
// the batch is redelivered to whoever comes next.
func TestCollectorStopsWithoutCommitting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 10, time.Second)
		r.sink.fails = -1
		now := time.Now()
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now)
		r.log.add(1, eventJSON("gw", "e2", now, "1"), now)
		r.start()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		r.stop(t)
		if fetched, committed := r.log.state(); fetched != 2 || len(committed) != 0 {
			t.Errorf("fetched %d, committed %v; want 2 fetched, nothing committed", fetched, committed)
		}
		if r.sink.calls < 5 {
			t.Errorf("%d store attempts in 10s", r.sink.calls)
		}

		// Cancelled while a partial batch waits for batch_wait: not stored, not committed.
		r = newRig(t, 10, time.Minute)
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now)
		r.start()
		synctest.Wait()
		r.stop(t)
		if _, committed := r.log.state(); len(committed) != 0 || r.sink.calls != 0 {
			t.Errorf("partial batch: %d writes, committed %v", r.sink.calls, committed)
		}
	})
}

// TestCollectorDeadLetters: invalid messages and conflicts go to the store's dead letters (the Sink's rejected
// argument, for invalid ones) and to the dead-letter topic with their reason and position, and are committed with
// the rest.
func TestCollectorDeadLetters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		now := time.Now()
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now)
		r.log.add(0, []byte(`{"specversion":"1.0","id":"u1","source":"gw","type":"unknown","subject":"s","time":"2000-01-01T00:00:00Z"}`), now)
		r.log.add(1, []byte(`not json`), now)
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now) // duplicate
		r.log.add(0, eventJSON("gw", "e1", now, "7"), now) // conflict
		r.start()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		r.stop(t)

		if len(r.sink.rejected) != 2 || r.sink.rejected[0].Code != ingest.CodeUnknownType || r.sink.rejected[1].Code != ingest.CodeMalformed {
			t.Errorf("rejected passed to the store: %+v", r.sink.rejected)
		}
		letters := r.dlq.all()
		if len(letters) != 3 {
			t.Fatalf("%d dead letters on the topic, want 3", len(letters))
		}
		want := []struct {
			code ingest.Code
			pos  ingest.StreamPos
			key  string
		}{
			{ingest.CodeUnknownType, ingest.StreamPos{Topic: "ev", Partition: 0, Offset: 1}, "gw\x00u1"},
			{ingest.CodeMalformed, ingest.StreamPos{Topic: "ev", Partition: 1, Offset: 0}, "\x00"},
			{ingest.CodeConflict, ingest.StreamPos{Topic: "ev", Partition: 0, Offset: 3}, "gw\x00e1"},
		}
		for i, w := range want {
			var d DeadLetter
			if err := json.Unmarshal(letters[i].Value, &d); err != nil {
				t.Fatal(err)
			}
			if letters[i].Topic != "ev-dlq" || string(letters[i].Key) != w.key || d.Code != w.code || d.Origin != OriginCollector ||
				d.Stream == nil || *d.Stream != w.pos || d.Reason == "" || !d.ReceivedAt.Equal(now) {
				t.Errorf("dead letter %d: key %q %s", i, letters[i].Key, letters[i].Value)
			}
		}
		var conflict DeadLetter
		_ = json.Unmarshal(letters[2].Value, &conflict)
		if !json.Valid(conflict.Existing) || string(conflict.Existing) == string(conflict.Event) {
			t.Errorf("conflict dead letter lacks the stored version: %s", letters[2].Value)
		}
		if _, committed := r.log.state(); committed[0] != 4 || committed[1] != 1 {
			t.Errorf("committed %v, want all", committed)
		}
		m := r.metrics
		for _, c := range []struct {
			name string
			got  prometheus.Counter
			want float64
		}{
			{"stored", m.EventsCounter(ingest.Stored), 1},
			{"duplicate", m.EventsCounter(ingest.Duplicate), 1},
			{"conflict", m.EventsCounter(ingest.Conflict), 1},
			{"dead letters unknown_type", m.DeadLettersCounter(ingest.CodeUnknownType), 1},
			{"dead letters malformed", m.DeadLettersCounter(ingest.CodeMalformed), 1},
			{"dead letters conflict", m.DeadLettersCounter(ingest.CodeConflict), 1},
			{"dead letters too_old", m.DeadLettersCounter(ingest.CodeTooOld), 0},
			{"consumed", m.ConsumedCounter(), 5},
		} {
			if got := testutil.ToFloat64(c.got); got != c.want {
				t.Errorf("%s = %v, want %v", c.name, got, c.want)
			}
		}
	})
}

// TestCollectorDeadLetterTopicDown: the offsets wait for the dead letters too; the store is not written twice.
func TestCollectorDeadLetterTopicDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		r.dlq.err, r.dlq.fails = errors.New("broker down"), 3
		now := time.Now()
		r.log.add(0, []byte(`{}`), now)
		r.start()
		time.Sleep(time.Second)
		synctest.Wait()
		if _, committed := r.log.state(); len(committed) != 0 {
			t.Errorf("committed %v before the dead letter was produced", committed)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		r.stop(t)
		if _, committed := r.log.state(); committed[0] != 1 || r.sink.calls != 1 || len(r.dlq.all()) != 1 {
			t.Errorf("committed %v, %d store writes, %d dead letters", committed, r.sink.calls, len(r.dlq.all()))
		}
		if got := testutil.ToFloat64(r.metrics.kafkaErrors.WithLabelValues(opDeadLetter)); got != 3 {
			t.Errorf("dead-letter errors %v", got)
		}
	})
}

// TestCollectorJudgesAgeByMessageTime: an event is as old as it was when Kafka took it, whatever the collector's
// clock says now; a message time in the collector's future does not make an old event young.
func TestCollectorJudgesAgeByMessageTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		now := time.Now()
		day := 24 * time.Hour
		eventTime := now.Add(-25 * day)
		r.log.add(0, eventJSON("gw", "acked-10-days-ago", eventTime, "1"), now.Add(-10*day)) // 15 days old when acked
		r.log.add(0, eventJSON("gw", "acked-now", eventTime, "1"), now)                      // 25 days old
		r.log.add(0, eventJSON("gw", "acked-in-future", eventTime, "1"), now.Add(10*day))    // clock skew
		r.log.add(0, eventJSON("gw", "no-timestamp", eventTime, "1"), time.Time{})
		r.start()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		r.stop(t)
		if len(r.sink.batches) != 1 || len(r.sink.batches[0]) != 1 || r.sink.batches[0][0].ID != "acked-10-days-ago" {
			t.Fatalf("stored %v, want only the event acknowledged 10 days ago", r.sink.batches)
		}
		if ev := r.sink.batches[0][0]; !ev.ReceivedAt.Equal(now.Add(-10 * day)) {
			t.Errorf("received at %v, want the message time", ev.ReceivedAt)
		}
		if len(r.sink.rejected) != 3 {
			t.Fatalf("rejected %d", len(r.sink.rejected))
		}
		for _, rej := range r.sink.rejected {
			if rej.Code != ingest.CodeTooOld {
				t.Errorf("%s: %s", rej.ID, rej.Reason)
			}
		}
	})
}

// TestCollectorKafkaErrors: a failed fetch is retried after a pause, a failed commit is counted and not retried
// (the stored batch is redelivered later and counted as duplicates), a closed reader ends Run.
func TestCollectorKafkaErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		r.log.fetchErrs = []error{errors.New("coordinator moved"), errors.New("coordinator moved")}
		r.log.commitErr = errors.New("rebalance in progress")
		now := time.Now()
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now)
		r.start()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := r.sink.batchSizes(); !slices.Equal(got, []int{1}) {
			t.Errorf("batches %v", got)
		}
		if !slices.Equal(r.sleeps, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}) {
			t.Errorf("fetch retry delays %v", r.sleeps)
		}
		m := r.metrics
		if f, c := testutil.ToFloat64(m.kafkaErrors.WithLabelValues(opFetch)), testutil.ToFloat64(m.kafkaErrors.WithLabelValues(opCommit)); f != 2 || c != 1 {
			t.Errorf("fetch errors %v, commit errors %v", f, c)
		}
		if n := testutil.CollectAndCount(m.lag); n != 0 {
			t.Errorf("lag reported for an uncommitted partition")
		}

		r.log.mu.Lock()
		r.log.commitErr = nil
		r.log.fetchErrs = []error{io.EOF}
		r.log.mu.Unlock()
		r.log.add(0, eventJSON("gw", "e2", now, "1"), now)
		if err := <-r.done; err == nil {
			t.Error("Run went on after the reader was closed")
		}
	})
}

// TestCollectorRebalanceForgetsPartitions: after a rebalance the per-partition series this collector set are
// dropped, so that a partition now owned by another member is not reported twice, also when no batch follows.
func TestCollectorRebalanceForgetsPartitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, 100, time.Second)
		now := time.Now()
		r.log.add(0, eventJSON("gw", "e1", now, "1"), now)
		r.log.add(0, eventJSON("gw", "e2", now, "1"), now)
		r.log.add(1, eventJSON("gw", "e3", now, "1"), now)
		r.start()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := testutil.CollectAndCount(r.metrics.lag); n != 2 {
			t.Fatalf("%d lag series, want 2", n)
		}
		r.log.mu.Lock()
		r.log.rebalanced = true
		r.log.mu.Unlock()
		r.log.add(1, eventJSON("gw", "e4", now, "1"), now)
		r.log.add(1, eventJSON("gw", "e5", now, "1"), now)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := testutil.CollectAndCount(r.metrics.lag); n != 1 {
			t.Errorf("%d lag series after the rebalance, want partition 1 only", n)
		}
		if got := testutil.ToFloat64(r.metrics.committedTime.WithLabelValues("1")); got != float64(now.Unix()) {
			t.Errorf("committed message time %v", got)
		}
		// A rebalance that leaves this collector no partition: no batch comes, and the series still go once it
		// has waited idleCheck for a first message.
		r.log.mu.Lock()
		r.log.rebalanced = true
		r.log.mu.Unlock()
		time.Sleep(idleCheck + time.Second)
		synctest.Wait()
		if n, m := testutil.CollectAndCount(r.metrics.lag), testutil.CollectAndCount(r.metrics.committedTime); n != 0 || m != 0 {
			t.Errorf("%d lag and %d committed time series after a rebalance that left no partition, want none", n, m)
		}
		r.stop(t)
	})
}

func TestNewCollectorChecks(t *testing.T) {
	cfg := validConfig()
	if _, err := NewCollector(cfg, CollectorOptions{}); err == nil {
		t.Error("no sink, validator or metrics accepted")
	}
	cfg.BatchSize = 0
	if _, err := NewCollector(cfg, CollectorOptions{Validator: testValidator(t), Sink: newFakeSink(),
		Metrics: NewMetrics(prometheus.NewRegistry())}); err == nil {
		t.Error("batch_size 0 accepted")
	}
	cfg = validConfig()
	if _, err := NewCollector(cfg, CollectorOptions{Validator: testValidator(t), Sink: newFakeSink(),
		Metrics: NewMetrics(prometheus.NewRegistry()), RetryInitial: time.Second, RetryMax: time.Millisecond}); err == nil {
		t.Error("RetryMax below RetryInitial accepted")
	}
}

// TestCollectorGroupTimeouts: a dead collector's partitions move within the group session timeout, not kafka-go's
// default 30 s.
func TestCollectorGroupTimeouts(t *testing.T) {
	cfg := validConfig()
	cfg.Brokers = []string{"127.0.0.1:1"} // unreachable: this test reads nothing
	c, err := NewCollector(cfg, CollectorOptions{Validator: testValidator(t), Sink: newFakeSink(), Metrics: NewMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	rc := c.src.(*groupReader).Config()
	if rc.SessionTimeout != groupSessionTimeout || rc.RebalanceTimeout != groupSessionTimeout || rc.HeartbeatInterval != groupSessionTimeout/4 {
		t.Errorf("session %s, rebalance %s, heartbeat %s; want %s, %s, %s", rc.SessionTimeout, rc.RebalanceTimeout,
			rc.HeartbeatInterval, groupSessionTimeout, groupSessionTimeout, groupSessionTimeout/4)
	}
}
