package stream

import (
	"encoding/json"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/ingest"
)

// Origins of a dead letter: which side of the topic refused the event.
const (
	OriginAPI       = "api"       // refused by the HTTP ingest; never reached the events topic
	OriginCollector = "collector" // read from the events topic and refused by a collector (or a conflict in the store)
)

// DeadLetter is the value of a message on the dead-letter topic: the refused event with its reason.
type DeadLetter struct {
	Source     string          `json:"source"`
	ID         string          `json:"id"`
	Code       ingest.Code     `json:"code"`
	Reason     string          `json:"reason"`
	ReceivedAt time.Time       `json:"received_at"`
	Origin     string          `json:"origin"`
	Event      json.RawMessage `json:"event"`
	// Existing is the stored version a conflicting copy clashes with.
	Existing json.RawMessage `json:"existing,omitempty"`
	// Stream is where a collector read the event; absent for OriginAPI.
	Stream *ingest.StreamPos `json:"stream,omitempty"`
}

// deadLetterMessage builds the dead-letter topic's message for rej, keyed like the event so that the dead letters of
// one (source, id) stay in order on one partition.
func deadLetterMessage(topic, origin string, rej *ingest.Rejection, pos *ingest.StreamPos) kafka.Message {
	event := rej.Event
	if len(event) == 0 {
		event = json.RawMessage("null")
	}
	value, err := json.Marshal(DeadLetter{Source: rej.Source, ID: rej.ID, Code: rej.Code, Reason: rej.Reason,
		ReceivedAt: rej.ReceivedAt.UTC(), Origin: origin, Event: event, Existing: rej.Existing, Stream: pos})
	if err != nil {
		// Only an invalid RawMessage fails here, and ingest always keeps valid JSON (keepRaw); keep the dead letter
		// rather than lose it, with the event as a string.
		s, _ := json.Marshal(string(rej.Event))
		value, _ = json.Marshal(DeadLetter{Source: rej.Source, ID: rej.ID, Code: rej.Code, Reason: rej.Reason,
			ReceivedAt: rej.ReceivedAt.UTC(), Origin: origin, Event: s, Stream: pos})
	}
	return kafka.Message{Topic: topic, Key: eventKey(rej.Source, rej.ID), Value: value, Time: rej.ReceivedAt}
}

// eventKey is the message key of an event: its dedup key, so that every copy of an event lands on one partition
// (in order, and with one collector judging them).
func eventKey(source, id string) []byte {
	k := make([]byte, 0, len(source)+1+len(id))
	k = append(k, source...)
	k = append(k, 0)
	return append(k, id...)
}
