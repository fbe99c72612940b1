package ingest

import (
	"crypto/sha256"
	"encoding/json"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
)

// Event is a validated usage event, ready to store.
type Event struct {
	Source  string
	ID      string
	Type    string
	Subject string
	Time    time.Time // UTC
	// ReceivedAt is when the event was acknowledged: the request time over HTTP, the Kafka message timestamp in
	// the collectors. Its age is judged against this, never a collector's clock.
	ReceivedAt time.Time
	// Values holds what the event contributes to each meter fed by its type, in meter order.
	Values []MeterValue
	// Raw is the event as structured-mode CloudEvents JSON, compacted: what was received, kept for audit and for
	// dead-lettering a later conflicting copy beside it. Binary-mode events are converted to this form.
	Raw json.RawMessage
	// Hash identifies the content for conflict detection: a repeat of (Source, ID) with another hash is a
	// conflict. It covers type, subject, time and the canonical data, so the same event sent in structured and in
	// binary mode, or with its data keys reordered, is a duplicate, not a conflict.
	Hash [sha256.Size]byte
	// Stream is where a Kafka collector read the event; nil for HTTP ingest. Stores may keep it to snapshot how far
	// each partition is stored (the hour close's membership, DESIGN.md §4 step 4).
	Stream *StreamPos
}

// StreamPos is the position of an event's message in Kafka.
type StreamPos struct {
	Topic     string
	Partition int
	Offset    int64
}

// MeterValue is the stored form of one meter's value: a plain decimal (SUM, MAX, COUNT) or a distinct key
// (UNIQUE_COUNT).
type MeterValue struct {
	Meter string
	Value string
}

// Rejection is a dead letter: an event refused at ingest, kept with its reason. Conflicts also carry the stored
// version they clash with.
type Rejection struct {
	Source     string          `json:"source"`
	ID         string          `json:"id"`
	Reason     string          `json:"reason"`
	Code       Code            `json:"-"`
	ReceivedAt time.Time       `json:"received_at"`
	Event      json.RawMessage `json:"event"`
	Existing   json.RawMessage `json:"existing,omitempty"`
}

// toValues converts extracted meter values to their stored form.
func toValues(meters []*meter.Meter, vals []meter.Value) []MeterValue {
	out := make([]MeterValue, len(vals))
	for i, v := range vals {
		out[i] = MeterValue{Meter: v.Meter, Value: v.Text(meters[i].Aggregation)}
	}
	return out
}
