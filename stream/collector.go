package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/ingest"
)

// source is the part of a consumer-group kafka.Reader that a collector uses. FetchMessage never commits;
// CommitMessages commits, per partition, the offset after the highest message given.
type source interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
	// Rebalanced reports whether the group was rebalanced since the last call: partitions may have moved to
	// other members, so their per-partition metrics are no longer this collector's to report.
	Rebalanced() bool
	Close() error
}

// CollectorOptions are what a collector needs besides its Config.
type CollectorOptions struct {
	Validator *ingest.Validator // the same validation as the HTTP ingest
	Sink      ingest.Sink       // the store
	Metrics   *Metrics
	Logger    *slog.Logger
	// Now is the clock of metrics and of messages without a usable timestamp; defaults to time.Now.
	Now func() time.Time
	// Sleep waits between retries and returns early with ctx.Err(); defaults to a timer.
	Sleep func(ctx context.Context, d time.Duration) error
	// RetryInitial is the first retry delay of a failed store write or Kafka call, doubled up to RetryMax.
	// Defaults: 100ms and 10s.
	RetryInitial, RetryMax time.Duration
}

// Collector is one member of the collectors' consumer group: it fetches messages, validates them, stores each
// batch through the Sink, and only then commits the batch's offsets.
//
// Guarantee: at least once into the store, never past an unstored message. An offset is committed only after
// the Sink returned nil for every message up to it, so a crash, a rebalance or a store outage redelivers what
// was not stored, and the Sink's dedup on (source, id) makes the redelivered copies harmless (counted as
// duplicates). While the Sink fails the same batch is retried with capped exponential backoff and nothing is
// fetched beyond the next batch, so memory stays bounded by two batches (plus the reader's prefetch queue) and
// the lag grows visibly in Kafka instead of in this process.
type Collector struct {
	src        source
	dlq        messageWriter
	dlqTopic   string
	validator  *ingest.Validator
	sink       ingest.Sink
	metrics    *Metrics
	log        *slog.Logger
	now        func() time.Time
	sleep      func(ctx context.Context, d time.Duration) error
	batchSize  int
	batchBytes int
	batchWait  time.Duration
	retryMin   time.Duration
	retryMax   time.Duration
	// partitions this collector has reported metrics for, forgotten at a rebalance and at the end of Run.
	partitions map[int]bool
}

// NewCollector joins cfg.GroupID on cfg.Topic. A group seen for the first time starts at the earliest offset, so
// nothing produced before the first collector started is skipped. Run it, then Close it.
func NewCollector(cfg Config, opts CollectorOptions) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return nil, err
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:     cfg.Brokers,
		Dialer:      sec.dialer(dialTimeout),
		GroupID:     cfg.GroupID,
		Topic:       cfg.Topic,
		StartOffset: kafka.FirstOffset,
		MinBytes:    1,
		MaxBytes:    10 << 20,
		// The longest a fetch waits at the broker for new messages. Leaving the group (Close, a rebalance) waits
		// for the fetches in flight, so kafka-go's 10 s default would hold every rebalance and stop that long.
		MaxWait: 500 * time.Millisecond,
		// Offsets are committed synchronously (CommitInterval 0) by CommitMessages, after the store write.
		CommitInterval: 0,
		// A killed collector's partitions move to the others once the group coordinator gives up on it: with
		// kafka-go's 30 s defaults, storage of those partitions stopped for about 30 s per kill (the SIGKILL
		// cycles). The same 10 s as the scheduler election; joins run in the reader's own goroutine, so a slow
		// store write does not hold a rebalance.
		SessionTimeout:    groupSessionTimeout,
		RebalanceTimeout:  groupSessionTimeout,
		HeartbeatInterval: groupSessionTimeout / 4,
		ErrorLogger:       kafka.LoggerFunc(errorLogger(opts.Logger)),
	})
	w := newWriter(cfg.Brokers, sec)
	return newCollector(&groupReader{Reader: r}, w, cfg, opts), nil
}

func checkOptions(opts CollectorOptions) error {
	if opts.Validator == nil || opts.Sink == nil || opts.Metrics == nil {
		return errors.New("stream collector: validator, sink and metrics are required")
	}
	if opts.RetryInitial < 0 || opts.RetryMax < 0 || (opts.RetryMax > 0 && opts.RetryMax < opts.RetryInitial) {
		return errors.New("stream collector: retry delays must be positive with RetryMax >= RetryInitial")
	}
	return nil
}

func newCollector(src source, dlq messageWriter, cfg Config, opts CollectorOptions) *Collector {
	c := &Collector{src: src, dlq: dlq, dlqTopic: cfg.DLQTopic, validator: opts.Validator, sink: opts.Sink,
		metrics: opts.Metrics, log: opts.Logger, now: opts.Now, sleep: opts.Sleep, batchSize: cfg.BatchSize,
		batchBytes: cfg.BatchBytes, batchWait: cfg.BatchWait, retryMin: opts.RetryInitial, retryMax: opts.RetryMax, partitions: map[int]bool{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.sleep == nil {
		c.sleep = sleepCtx
	}
	if c.retryMin == 0 {
		c.retryMin = 100 * time.Millisecond
	}
	if c.retryMax == 0 {
		c.retryMax = max(10*time.Second, c.retryMin)
	}
	return c
}

// prepared is a fetched and validated batch, ready to store. It keeps only what storing and committing need: the
// fetched messages themselves are dropped after validation (each event holds its own copy of the raw bytes), so a
// batch waiting for the store holds about half the memory.
type prepared struct {
	n           int             // messages fetched
	last        []kafka.Message // per partition, the highest message, without key, value or headers: what commit needs
	events      []*ingest.Event
	rejected    []*ingest.Rejection
	rejectedPos []*ingest.StreamPos
	fetchErr    error
}

// Run consumes until ctx is cancelled, then returns nil; a batch not yet stored is dropped uncommitted and will be
// redelivered. It returns an error only when it cannot go on (the reader was closed).
//
// Two stages overlap: while one batch is written to the store (which mostly waits on the database), the next is
// fetched and validated (which needs the CPU). At most one batch waits ready, so memory stays bounded by two
// batches, and offsets are still committed in order, each after its own batch is stored.
func (c *Collector) Run(ctx context.Context) error {
	defer c.forgetPartitions()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan prepared) // unbuffered: the one batch ready waits in the sender
	go func() {
		defer close(ready)
		// One buffer for every fetched batch: prepare keeps nothing of it, and a new slice of 50,000 messages
		// per batch was a quarter of a collector's allocations. Cleared after each batch, so that the message
		// values it held are the events' alone to keep.
		var buf []kafka.Message
		for ctx.Err() == nil {
			batch, fetchErr := c.fetchBatch(ctx, buf[:0])
			p := c.prepare(batch)
			p.fetchErr = fetchErr
			clear(batch)
			buf = batch
			select {
			case ready <- p:
			case <-ctx.Done():
				return
			}
			if fetchErr != nil && (errors.Is(fetchErr, io.EOF) || ctx.Err() != nil) {
				return
			}
		}
	}()
	retry := c.backoff()
	for p := range ready {
		if ctx.Err() != nil {
			return nil
		}
		fetchErr := p.fetchErr
		if p.n > 0 {
			if err := c.process(ctx, p); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		} else if c.src.Rebalanced() {
			c.forgetPartitions() // idle, maybe with no partition left: nothing else would drop their series
		}
		if fetchErr == nil {
			retry = c.backoff()
			continue
		}
		if errors.Is(fetchErr, io.EOF) {
			return errors.New("stream collector: the kafka reader was closed")
		}
		c.metrics.kafkaErrors.WithLabelValues(opFetch).Inc()
		d := retry()
		c.log.Warn("fetch from kafka", "err", fetchErr, "retry_in", d)
		if c.sleep(ctx, d) != nil {
			return nil
		}
	}
	return nil
}

// Close leaves the consumer group and closes the dead-letter writer.
func (c *Collector) Close() error {
	return errors.Join(c.src.Close(), c.dlq.Close())
}

// idleCheck is how long a collector waits for a first message before it returns an empty batch, so that one left
// without partitions by a rebalance still notices it and drops their series (forgetPartitions).
const idleCheck = 10 * time.Second

// fetchBatch appends to batch up to batchSize messages, and stops at the first that brings their values to
// batchBytes: it waits at most idleCheck for the first (returning none), then at most batchWait for the rest. A
// fetch error ends the batch early; the messages before it are returned with it.
func (c *Collector) fetchBatch(ctx context.Context, batch []kafka.Message) ([]kafka.Message, error) {
	fctx, cancelFirst := context.WithTimeout(ctx, idleCheck)
	first, err := c.src.FetchMessage(fctx)
	idle := fctx.Err() != nil && ctx.Err() == nil // read before cancelFirst, which sets fctx.Err
	cancelFirst()
	if err != nil {
		if idle {
			return batch, nil
		}
		return batch, err
	}
	batch = append(batch, first)
	size := len(first.Value)
	if c.batchSize == 1 || size >= c.batchBytes {
		return batch, nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.batchWait)
	defer cancel()
	for len(batch) < c.batchSize && size < c.batchBytes {
		// A cancelled FetchMessage leaves the message it did not return in the reader's queue: nothing is lost.
		m, err := c.src.FetchMessage(wctx)
		if err != nil {
			if wctx.Err() != nil && ctx.Err() == nil {
				return batch, nil // batch_wait is over
			}
			return batch, err
		}
		batch = append(batch, m)
		size += len(m.Value)
	}
	return batch, nil
}

// prepare validates a fetched batch.
func (c *Collector) prepare(batch []kafka.Message) prepared {
	p := prepared{n: len(batch), last: lastPerPartition(batch), events: make([]*ingest.Event, 0, len(batch))}
	now := c.now()
	for _, msg := range batch {
		pos := &ingest.StreamPos{Topic: msg.Topic, Partition: msg.Partition, Offset: msg.Offset}
		// The message's value is this collector's: the event keeps it instead of a copy.
		ev, rej := c.validator.ValidateOwned(msg.Value, ackTime(msg, now))
		if rej != nil {
			p.rejected = append(p.rejected, rej)
			p.rejectedPos = append(p.rejectedPos, pos)
			continue
		}
		ev.Stream = pos
		p.events = append(p.events, ev)
	}
	return p
}

// process stores, dead-letters and commits one prepared batch. It returns an error only when ctx ends first.
func (c *Collector) process(ctx context.Context, p prepared) error {
	m := c.metrics
	events, rejected, rejectedPos := p.events, p.rejected, p.rejectedPos
	m.consumed.Add(float64(p.n))
	if c.src.Rebalanced() {
		c.forgetPartitions()
	}

	res, err := c.store(ctx, events, rejected)
	if err != nil {
		return err
	}
	m.batchSize.Observe(float64(p.n))

	var letters []kafka.Message
	for i, rej := range rejected {
		m.deadLetters.WithLabelValues(string(rej.Code)).Inc()
		letters = append(letters, deadLetterMessage(c.dlqTopic, OriginCollector, rej, rejectedPos[i]))
	}
	for i, o := range res.Outcomes {
		if i >= len(events) {
			break
		}
		m.events.WithLabelValues(outcomeLabel(o)).Inc()
		if o != ingest.Conflict {
			continue
		}
		ev := events[i]
		var existing []byte
		if i < len(res.Existing) {
			existing = res.Existing[i]
		}
		m.deadLetters.WithLabelValues(string(ingest.CodeConflict)).Inc()
		letters = append(letters, deadLetterMessage(c.dlqTopic, OriginCollector, &ingest.Rejection{Source: ev.Source,
			ID: ev.ID, Reason: ingest.ConflictReason, Code: ingest.CodeConflict, ReceivedAt: ev.ReceivedAt,
			Event: ev.Raw, Existing: existing}, ev.Stream))
	}
	if err := c.produceDeadLetters(ctx, letters); err != nil {
		return err
	}
	c.commit(ctx, p.last)
	return nil
}

// ackTime is the time an event's age is judged against: its message timestamp, the moment it was acknowledged
// (stamped by the Producer with the time the API judged it). This collector's clock is used only to refuse a
// timestamp in its future, which would let a producer's skewed clock admit events older than the horizon, and
// for a message without one.
func ackTime(msg kafka.Message, now time.Time) time.Time {
	if msg.Time.IsZero() || msg.Time.After(now) {
		return now
	}
	return msg.Time
}

// store writes the batch, retrying with backoff until the Sink succeeds or ctx ends. Only the next batch is
// fetched meanwhile (Run).
func (c *Collector) store(ctx context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	retry := c.backoff()
	for {
		start := c.now()
		res, err := c.sink.Write(ctx, events, rejected)
		if err == nil {
			c.metrics.insertSeconds.Observe(c.now().Sub(start).Seconds())
			return res, nil
		}
		if ctx.Err() != nil {
			return ingest.WriteResult{}, ctx.Err()
		}
		c.metrics.insertErrors.Inc()
		d := retry()
		c.log.Error("store batch from kafka; retrying the same batch", "events", len(events), "rejected", len(rejected),
			"err", err, "retry_in", d)
		if err := c.sleep(ctx, d); err != nil {
			return ingest.WriteResult{}, err
		}
	}
}

// produceDeadLetters puts the batch's dead letters on the dead-letter topic, retrying until Kafka takes them or
// ctx ends; the offsets wait for them, so a dead letter is never lost to a commit either.
func (c *Collector) produceDeadLetters(ctx context.Context, letters []kafka.Message) error {
	if len(letters) == 0 {
		return nil
	}
	retry := c.backoff()
	for {
		err := c.dlq.WriteMessages(ctx, letters...)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.metrics.kafkaErrors.WithLabelValues(opDeadLetter).Inc()
		d := retry()
		c.log.Error("produce dead letters", "topic", c.dlqTopic, "count", len(letters), "err", err, "retry_in", d)
		if err := c.sleep(ctx, d); err != nil {
			return err
		}
	}
}

// lastPerPartition returns the highest message of each partition in batch, stripped of key, value and headers.
func lastPerPartition(batch []kafka.Message) []kafka.Message {
	var last []kafka.Message
next:
	for _, msg := range batch {
		msg.Key, msg.Value, msg.Headers = nil, nil, nil
		for i := range last {
			if last[i].Partition == msg.Partition {
				if msg.Offset > last[i].Offset {
					last[i] = msg
				}
				continue next
			}
		}
		last = append(last, msg)
	}
	return last
}

// commit commits the offset after each of msgs, the highest message of each partition of a stored batch. The batch
// is stored by now, so committing is worth finishing even while the collector stops; a commit that fails is not
// retried: the batch is redelivered later (after a rebalance or restart) and the store counts it as duplicates.
func (c *Collector) commit(ctx context.Context, msgs []kafka.Message) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := c.src.CommitMessages(cctx, msgs...); err != nil {
		c.metrics.kafkaErrors.WithLabelValues(opCommit).Inc()
		c.log.Warn("commit offsets; the stored batch will be redelivered and counted as duplicates", "err", err)
		return
	}
	m := c.metrics
	m.lastCommit.Set(float64(c.now().UnixNano()) / 1e9)
	for _, msg := range msgs {
		label := strconv.Itoa(msg.Partition)
		c.partitions[msg.Partition] = true
		if msg.HighWaterMark > 0 {
			m.lag.WithLabelValues(label).Set(float64(max(msg.HighWaterMark-msg.Offset-1, 0)))
		}
		if !msg.Time.IsZero() {
			m.committedTime.WithLabelValues(label).Set(float64(msg.Time.UnixNano()) / 1e9)
		}
	}
}

// forgetPartitions removes the per-partition series this collector set: after a rebalance another member reports
// them, and a stale value here would hide its lag.
func (c *Collector) forgetPartitions() {
	for p := range c.partitions {
		label := strconv.Itoa(p)
		c.metrics.lag.DeleteLabelValues(label)
		c.metrics.committedTime.DeleteLabelValues(label)
		delete(c.partitions, p)
	}
}

// backoff returns a function giving the successive retry delays: retryMin, doubled each time, capped at retryMax.
func (c *Collector) backoff() func() time.Duration {
	next := c.retryMin
	return func() time.Duration {
		d := next
		next = min(next*2, c.retryMax)
		return d
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// groupReader adapts a consumer-group kafka.Reader to source.
type groupReader struct {
	*kafka.Reader
}

// Rebalanced reads the reader's rebalance count. Stats resets its counters on every call; only this method calls
// it, so each call sees the rebalances since the previous one.
func (g *groupReader) Rebalanced() bool {
	return g.Stats().Rebalances > 0
}

// errorLogger routes kafka-go's error log to slog.
func errorLogger(l *slog.Logger) func(string, ...any) {
	if l == nil {
		return func(string, ...any) {}
	}
	return func(format string, args ...any) {
		l.Warn("kafka reader", "msg", fmt.Sprintf(format, args...))
	}
}
