package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/ingest"
)

// messageWriter is the part of a kafka.Writer that the producer and the collectors use.
type messageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
	Close() error
}

// writerBatchTimeout is how long the kafka-go writer waits to fill a batch before sending it. Its default of 1 s
// would add a second to every acknowledgement; a few milliseconds still groups concurrent requests.
const writerBatchTimeout = 2 * time.Millisecond

// newWriter returns the writer of both topics (each message names its topic), with sec. Every message is keyed by
// its dedup key and placed by hash of the key, so all copies of an event go to one partition.
func newWriter(brokers []string, sec secured) messageWriter {
	w := &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, // acknowledged means on every in-sync replica (DESIGN.md §4 step 2)
		BatchTimeout: writerBatchTimeout,
		BatchSize:    1000,
		MaxAttempts:  5,
		// Topics come from EnsureTopics with LogAppendTime and a long retention; an auto-created topic would have
		// the broker's defaults, so a missing topic is an error instead.
		AllowAutoTopicCreation: false,
	}
	if t := sec.transport(); t != nil {
		w.Transport = t
		return securedWriter{Writer: w, transport: t}
	}
	return w
}

// Producer is the ingest.Sink of scale-out ingest: it produces validated events to the events topic and
// rejections to the dead-letter topic, and returns once Kafka acknowledged all of them (acks=all).
//
// It does not deduplicate against what is stored: the collectors' Sink does, by (source, id). Producing is at
// least once (kafka-go has no idempotent producer, and a client retries a request whose answer it lost), so
// every event reported Stored here may still turn out a duplicate or a conflict in the store, which counts it in
// the collector metrics. Only repeats within one write are recognised here (DESIGN.md §2: in scale-out mode the
// answer's duplicates are the repeats within the request).
type Producer struct {
	w        messageWriter
	topic    string
	dlqTopic string
}

var _ ingest.Sink = (*Producer)(nil)

// NewProducer checks cfg, reads its Security files and returns a producer to cfg.Topic and cfg.DLQTopic. It does
// not contact Kafka: the first Write does. Close it when done.
func NewProducer(cfg Config) (*Producer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return nil, err
	}
	return newProducer(newWriter(cfg.Brokers, sec), cfg.Topic, cfg.DLQTopic), nil
}

func newProducer(w messageWriter, topic, dlqTopic string) *Producer {
	return &Producer{w: w, topic: topic, dlqTopic: dlqTopic}
}

type dedupKey struct{ source, id string }

// Write produces the events (their Raw, the compact structured-mode JSON) and the rejections (as DeadLetter JSON,
// origin "api") in one call, and returns when every message is acknowledged. On error nothing may be assumed
// written; the *Error says whether retrying may help (the HTTP handler answers 503 and the client retries, which
// is harmless since the store deduplicates).
func (p *Producer) Write(ctx context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	res := ingest.WriteResult{Outcomes: make([]ingest.Outcome, len(events))}
	msgs := make([]kafka.Message, 0, len(events)+len(rejected))
	var first map[dedupKey]int
	if len(events) > 1 {
		first = make(map[dedupKey]int, len(events))
	}
	for i, ev := range events {
		res.Outcomes[i] = ingest.Stored
		if first != nil {
			k := dedupKey{ev.Source, ev.ID}
			if j, seen := first[k]; seen {
				if events[j].Hash == ev.Hash {
					res.Outcomes[i] = ingest.Duplicate // the first copy is in this very write: nothing to add
					continue
				}
				// Still produced: it lands after the first copy on the same partition, so the store keeps the
				// first and dead-letters this one beside it, as for any conflict.
				res.Outcomes[i] = ingest.Conflict
				if res.Existing == nil {
					res.Existing = make([]json.RawMessage, len(events))
				}
				res.Existing[i] = events[j].Raw
			} else {
				first[k] = i
			}
		}
		// The message time is the time the API judged the event against. The topic's LogAppendTime is what the
		// broker indexes, but kafka-go's reader does not decode it (it returns this producer-set time), so
		// stamping the request time makes the collectors judge the event's age against the same instant as the API.
		msgs = append(msgs, kafka.Message{Topic: p.topic, Key: eventKey(ev.Source, ev.ID), Value: ev.Raw, Time: ev.ReceivedAt})
	}
	for _, rej := range rejected {
		msgs = append(msgs, deadLetterMessage(p.dlqTopic, OriginAPI, rej, nil))
	}
	if len(msgs) == 0 {
		return res, nil
	}
	if err := p.w.WriteMessages(ctx, msgs...); err != nil {
		return ingest.WriteResult{}, wrap(fmt.Sprintf("produce %d events and %d dead letters", len(msgs)-len(rejected), len(rejected)), err)
	}
	return res, nil
}

// Send produces raw events without validating them, keyed by the source and id they appear to have: what
// `meterd events send --to kafka://` does with a file, as the HTTP path sends it to the API. The collectors
// validate each one with the same code as the API and dead-letter the invalid ones.
func (p *Producer) Send(ctx context.Context, raws [][]byte) error {
	if len(raws) == 0 {
		return nil
	}
	msgs := make([]kafka.Message, len(raws))
	for i, raw := range raws {
		value := raw
		var buf bytes.Buffer
		if json.Compact(&buf, raw) == nil {
			value = buf.Bytes()
		}
		source, id := looseKey(raw)
		msgs[i] = kafka.Message{Topic: p.topic, Key: eventKey(source, id), Value: value}
	}
	return wrap(fmt.Sprintf("produce %d raw events", len(raws)), p.w.WriteMessages(ctx, msgs...))
}

// looseKey reads source and id from an event that may be invalid; empty when absent or not strings.
func looseKey(raw []byte) (source, id string) {
	var k struct {
		Source any `json:"source"`
		ID     any `json:"id"`
	}
	if json.Unmarshal(raw, &k) != nil {
		return "", ""
	}
	source, _ = k.Source.(string)
	id, _ = k.ID.(string)
	return source, id
}

// Close flushes and closes the writer.
func (p *Producer) Close() error {
	if err := p.w.Close(); err != nil {
		return fmt.Errorf("close kafka producer: %w", err)
	}
	return nil
}
