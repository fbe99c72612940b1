//go:build integration

package stream_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/store/sqlite"
	"github.com/meterd/meterd/stream"
)

const partitions = 4

// setup creates a random events topic and dead-letter topic with EnsureTopics, deleted when the test ends.
func setup(t *testing.T) stream.Config {
	t.Helper()
	cfg := stream.DefaultConfig()
	cfg.Brokers = []string{services.Kafka(t)}
	cfg.Topic = services.Name(t, "meterd-test-events-")
	cfg.DLQTopic = cfg.Topic + "-dlq"
	cfg.GroupID = services.Name(t, "meterd-test-group-")
	cfg.Partitions = partitions
	cfg.BatchSize = 50
	cfg.BatchWait = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stream.EnsureTopics(ctx, cfg); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	t.Cleanup(func() { deleteTopics(t, cfg.Brokers[0], cfg.Topic, cfg.DLQTopic) })
	return cfg
}

func deleteTopics(t *testing.T, broker string, topics ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(broker)}
	if _, err := c.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
		t.Logf("delete topics %v: %v", topics, err)
	}
}

func validator(t *testing.T) *ingest.Validator {
	t.Helper()
	ms, err := meter.NewSet([]meter.Spec{{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"}}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	return ingest.NewValidator(ms, 21*24*time.Hour, 5*time.Minute)
}

func rawEvent(id string, at time.Time) []byte {
	return fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"itest","type":"llm_request","subject":"tenant-1","time":%q,"data":{"tokens":"1.5"}}`,
		id, at.UTC().Format(time.RFC3339Nano))
}

// events validates n events e<from>..e<from+n-1> as the API would.
func events(t *testing.T, v *ingest.Validator, from, n int) []*ingest.Event {
	t.Helper()
	now := time.Now()
	out := make([]*ingest.Event, n)
	for i := range n {
		ev, rej := v.Validate(rawEvent("e"+strconv.Itoa(from+i), now), now)
		if rej != nil {
			t.Fatal(rej.Reason)
		}
		out[i] = ev
	}
	return out
}

func produce(t *testing.T, p *stream.Producer, evs []*ingest.Event, rejected []*ingest.Rejection) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := p.Write(ctx, evs, rejected)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	for i, o := range res.Outcomes {
		if o != ingest.Stored {
			t.Fatalf("outcome %d = %v, want Stored", i, o)
		}
	}
}

func newProducer(t *testing.T, cfg stream.Config) *stream.Producer {
	t.Helper()
	p, err := stream.NewProducer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func openStore(t *testing.T) (*sqlite.Store, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meterd.db")
	st, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := errors.Join(db.Close(), st.Close()); err != nil {
			t.Error(err)
		}
	})
	return st, db
}

func count(t *testing.T, db *sql.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// running is a collector running in its own goroutine.
type running struct {
	c       *stream.Collector
	metrics *stream.Metrics
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
}

func startCollector(t *testing.T, cfg stream.Config, sink ingest.Sink) *running {
	t.Helper()
	m := stream.NewMetrics(prometheus.NewRegistry())
	c, err := stream.NewCollector(cfg, stream.CollectorOptions{Validator: validator(t), Sink: sink, Metrics: m,
		RetryInitial: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, metrics: m, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run, waits for it and leaves the group.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return 15s after cancel")
		}
		if err := r.c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func (r *running) consumed() int { return int(testutil.ToFloat64(r.metrics.ConsumedCounter())) }

func (r *running) outcome(o ingest.Outcome) int {
	return int(testutil.ToFloat64(r.metrics.EventsCounter(o)))
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// committed returns the group's committed offset per partition (-1: none).
func committed(t *testing.T, cfg stream.Config) map[int]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...)}
	res, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: cfg.GroupID, Topics: map[string][]int{cfg.Topic: {0, 1, 2, 3}}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]int64{}
	for _, p := range res.Topics[cfg.Topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

func sum(m map[int]int64) int64 {
	var s int64
	for _, v := range m {
		s += max(v, 0)
	}
	return s
}

// deadLetters reads n messages of the dead-letter topic.
func deadLetters(t *testing.T, cfg stream.Config, n int) []stream.DeadLetter {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: cfg.Brokers, Topic: cfg.DLQTopic, GroupID: services.Name(t, "dlq-reader-"),
		StartOffset: kafka.FirstOffset, MaxWait: 500 * time.Millisecond})
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []stream.DeadLetter
	for len(out) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("read dead letters (%d of %d): %v", len(out), n, err)
		}
		var d stream.DeadLetter
		if err := json.Unmarshal(m.Value, &d); err != nil {
			t.Fatalf("dead letter %s: %v", m.Value, err)
		}
		out = append(out, d)
	}
	return out
}

// TestEndToEnd: N distinct events produced with repeats and invalid ones, collected into SQLite: each distinct
// event stored once, repeats counted as duplicates, invalid ones dead-lettered with their reason in the topic and
// the store.
func TestEndToEnd(t *testing.T) {
	cfg := setup(t)
	v := validator(t)
	p := newProducer(t, cfg)
	const n = 300
	evs := events(t, v, 0, n)

	// The acknowledgement must not wait for the writer's default 1 s batch timeout.
	start := time.Now()
	produce(t, p, evs[:1], nil)
	ack := time.Since(start)
	start = time.Now()
	produce(t, p, evs[1:2], nil)
	if ack2 := time.Since(start); ack2 > 500*time.Millisecond {
		t.Errorf("acknowledgement of one event took %s", ack2)
	} else {
		t.Logf("acknowledgement of one event: first %s (metadata), then %s", ack, ack2)
	}
	start = time.Now()
	produce(t, p, evs[2:], nil)
	t.Logf("acknowledgement of %d events in one write: %s", n-2, time.Since(start))

	// A client retrying requests whose answers it lost: 40 repeats.
	produce(t, p, evs[100:140], nil)
	// One event the API refused (origin api), one invalid event sent raw for a collector to refuse.
	_, apiRej := v.Validate([]byte(`{"specversion":"1.0","id":"bad-api","source":"itest","type":"llm_request","subject":"s","time":"2026-11-22T03:00:00Z"}`), time.Now())
	if apiRej == nil {
		t.Fatal("expected a rejection")
	}
	produce(t, p, nil, []*ingest.Rejection{apiRej})
	if err := p.Send(context.Background(), [][]byte{[]byte(`{"specversion":"1.0","id":"bad-raw","source":"itest","type":"nope","subject":"s","time":"2026-11-22T03:00:00Z"}`)}); err != nil {
		t.Fatal(err)
	}
	const messages = n + 40 + 1

	st, db := openStore(t)
	start = time.Now()
	c := startCollector(t, cfg, st)
	waitFor(t, 30*time.Second, "every message consumed", func() bool { return c.consumed() >= messages })
	t.Logf("collected %d messages into SQLite in %s (group join included)", messages, time.Since(start))
	waitFor(t, 10*time.Second, "offsets committed", func() bool { return sum(committed(t, cfg)) == messages })

	if got := count(t, db, "SELECT count(*) FROM events"); got != n {
		t.Errorf("%d events stored, want %d", got, n)
	}
	if got := count(t, db, "SELECT count(DISTINCT source || char(0) || id) FROM events"); got != n {
		t.Errorf("%d distinct events stored, want %d", got, n)
	}
	if s, d := c.outcome(ingest.Stored), c.outcome(ingest.Duplicate); s != n || d != 40 || c.consumed() != messages {
		t.Errorf("metrics: stored %d, duplicates %d, consumed %d; want %d, 40, %d", s, d, c.consumed(), n, messages)
	}
	if got := testutil.ToFloat64(c.metrics.DeadLettersCounter(ingest.CodeUnknownType)); got != 1 {
		t.Errorf("dead letters unknown_type = %v", got)
	}
	rejected, err := st.ListRejected(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[0].ID != "bad-raw" || !strings.Contains(rejected[0].Reason, "feeds no configured meter") {
		t.Errorf("store dead letters %+v", rejected)
	}

	letters := deadLetters(t, cfg, 2)
	byID := map[string]stream.DeadLetter{}
	for _, d := range letters {
		byID[d.ID] = d
	}
	if d := byID["bad-api"]; d.Origin != stream.OriginAPI || d.Code != apiRej.Code || d.Reason != apiRej.Reason {
		t.Errorf("api dead letter %+v", d)
	}
	if d := byID["bad-raw"]; d.Origin != stream.OriginCollector || d.Code != ingest.CodeUnknownType || d.Stream == nil || d.Stream.Topic != cfg.Topic {
		t.Errorf("collector dead letter %+v", d)
	}
	for p := range partitions {
		if lag := testutil.ToFloat64(c.metrics.LagGauge(p)); lag != 0 {
			t.Errorf("lag of partition %d = %v", p, lag)
		}
	}
}

// flakySink fails while down is set, counting its attempts.
type flakySink struct {
	ingest.Sink
	down     atomic.Bool
	attempts atomic.Int64
	delay    time.Duration
}

func (s *flakySink) Write(ctx context.Context, evs []*ingest.Event, rej []*ingest.Rejection) (ingest.WriteResult, error) {
	s.attempts.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	if s.down.Load() {
		return ingest.WriteResult{}, errors.New("store unavailable")
	}
	return s.Sink.Write(ctx, evs, rej)
}

// TestStoreOutage: while the store fails, nothing is committed and the collector retries; once it is back,
// everything is stored once and committed.
func TestStoreOutage(t *testing.T) {
	cfg := setup(t)
	p := newProducer(t, cfg)
	const n = 200
	produce(t, p, events(t, validator(t), 0, n), nil)

	st, db := openStore(t)
	sink := &flakySink{Sink: st}
	sink.down.Store(true)
	c := startCollector(t, cfg, sink)
	waitFor(t, 30*time.Second, "5 failed store attempts", func() bool { return sink.attempts.Load() >= 5 })
	time.Sleep(300 * time.Millisecond)
	if got := sum(committed(t, cfg)); got != 0 {
		t.Fatalf("%d offsets committed while the store was down", got)
	}
	if got := c.consumed(); got > cfg.BatchSize {
		t.Errorf("%d messages taken while the store was down, want one batch (at most %d)", got, cfg.BatchSize)
	}
	if got := testutil.ToFloat64(c.metrics.InsertErrorsCounter()); got < 5 {
		t.Errorf("insert errors %v", got)
	}
	sink.down.Store(false)
	waitFor(t, 30*time.Second, "all committed after recovery", func() bool { return sum(committed(t, cfg)) == n })
	if got := count(t, db, "SELECT count(*) FROM events"); got != n {
		t.Errorf("%d events stored, want %d", got, n)
	}
	if s := c.outcome(ingest.Stored); s != n {
		t.Errorf("stored metric %d, want %d", s, n)
	}
}

// TestTwoCollectors: two members of one group split the partitions; together they store every event once.
func TestTwoCollectors(t *testing.T) {
	cfg := setup(t)
	st, db := openStore(t)
	a := startCollector(t, cfg, st)
	b := startCollector(t, cfg, st)
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...)}
	waitFor(t, 40*time.Second, "both collectors assigned partitions", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{cfg.GroupID}})
		if err != nil || len(res.Groups) != 1 || res.Groups[0].GroupState != "Stable" || len(res.Groups[0].Members) != 2 {
			return false
		}
		for _, m := range res.Groups[0].Members {
			if len(m.MemberAssignments.Topics) == 0 || len(m.MemberAssignments.Topics[0].Partitions) == 0 {
				return false
			}
		}
		return true
	})

	p := newProducer(t, cfg)
	const n = 400
	evs := events(t, validator(t), 0, n)
	produce(t, p, evs, nil)
	produce(t, p, evs[:50], nil) // repeats
	const messages = n + 50
	waitFor(t, 30*time.Second, "all committed", func() bool { return sum(committed(t, cfg)) == messages })
	if got := count(t, db, "SELECT count(*) FROM events"); got != n {
		t.Errorf("%d events stored, want %d", got, n)
	}
	if a.consumed() == 0 || b.consumed() == 0 {
		t.Errorf("consumed %d and %d: the partitions were not shared", a.consumed(), b.consumed())
	}
	if got := a.consumed() + b.consumed(); got != messages {
		t.Errorf("consumed %d in all, want %d", got, messages)
	}
	if s, d := a.outcome(ingest.Stored)+b.outcome(ingest.Stored), a.outcome(ingest.Duplicate)+b.outcome(ingest.Duplicate); s != n || d != 50 {
		t.Errorf("stored %d, duplicates %d; want %d, 50", s, d, n)
	}
	t.Logf("collector a consumed %d, b %d", a.consumed(), b.consumed())
}

// TestRestart: a collector stopped mid-stream leaves its offsets at what it stored; the next one resumes there
// and nothing is lost.
func TestRestart(t *testing.T) {
	cfg := setup(t)
	cfg.BatchSize = 10
	p := newProducer(t, cfg)
	const n = 400
	evs := events(t, validator(t), 0, n)
	produce(t, p, evs[:300], nil)

	st, db := openStore(t)
	slow := &flakySink{Sink: st, delay: 20 * time.Millisecond}
	a := startCollector(t, cfg, slow)
	waitFor(t, 30*time.Second, "100 events stored", func() bool { return a.outcome(ingest.Stored) >= 100 })
	a.stop(t)
	storedA := count(t, db, "SELECT count(*) FROM events")
	done := sum(committed(t, cfg))
	if storedA >= 300 || done == 0 {
		t.Fatalf("stopped after %d stored, %d committed: not mid-stream", storedA, done)
	}
	if done > int64(storedA) {
		t.Fatalf("%d offsets committed but only %d events stored", done, storedA)
	}
	t.Logf("first collector stopped with %d stored, %d committed", storedA, done)

	produce(t, p, evs[300:], nil)
	b := startCollector(t, cfg, st)
	waitFor(t, 40*time.Second, "all committed", func() bool { return sum(committed(t, cfg)) == n })
	if got := count(t, db, "SELECT count(*) FROM events"); got != n {
		t.Errorf("%d events stored, want %d", got, n)
	}
	// The second collector started at the committed offsets, not at the beginning.
	if got, want := b.consumed(), n-int(done); got != want {
		t.Errorf("second collector consumed %d, want %d (the uncommitted rest)", got, want)
	}
	if got, want := b.outcome(ingest.Duplicate), storedA-int(done); got != want {
		t.Errorf("second collector found %d duplicates, want %d (stored but not committed by the first)", got, want)
	}
}

// TestEnsureTopicsBroker: EnsureTopics creates LogAppendTime topics with the configured retention, accepts them
// the second time, and refuses a topic created otherwise, naming the settings to change.
func TestEnsureTopicsBroker(t *testing.T) {
	cfg := setup(t) // created here
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stream.EnsureTopics(ctx, cfg); err != nil {
		t.Fatalf("second EnsureTopics: %v", err)
	}
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...)}
	res, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: cfg.Topic, ConfigNames: []string{"message.timestamp.type", "retention.ms"}},
		{ResourceType: kafka.ResourceTypeTopic, ResourceName: cfg.DLQTopic, ConfigNames: []string{"message.timestamp.type", "retention.ms"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Resources {
		got := map[string]string{}
		for _, e := range r.ConfigEntries {
			got[e.ConfigName] = e.ConfigValue
		}
		if got["message.timestamp.type"] != "LogAppendTime" || got["retention.ms"] != strconv.FormatInt(cfg.Retention.Milliseconds(), 10) {
			t.Errorf("topic %s: %v", r.ResourceName, got)
		}
	}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{cfg.Topic}})
	if err != nil || len(meta.Topics) != 1 || len(meta.Topics[0].Partitions) != partitions {
		t.Errorf("metadata %+v, %v; want %d partitions", meta, err, partitions)
	}

	// A topic made with the broker's defaults and a week's retention.
	other := cfg
	other.Topic = services.Name(t, "meterd-test-wrong-")
	other.DLQTopic = other.Topic + "-dlq"
	t.Cleanup(func() { deleteTopics(t, cfg.Brokers[0], other.Topic, other.DLQTopic) })
	cres, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: other.Topic,
		NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "message.timestamp.type", ConfigValue: "CreateTime"}, {ConfigName: "retention.ms", ConfigValue: "604800000"}}}}})
	if err != nil || cres.Errors[other.Topic] != nil {
		t.Fatalf("create %s: %v %v", other.Topic, err, cres)
	}
	err = stream.EnsureTopics(ctx, other)
	if err == nil {
		t.Fatal("a CreateTime topic with 7 days' retention was accepted")
	}
	for _, want := range []string{`message.timestamp.type is "CreateTime", want LogAppendTime`, "retention.ms is 604800000"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), other.DLQTopic) {
		t.Errorf("the dead-letter topic EnsureTopics just created is reported: %v", err)
	}
}
