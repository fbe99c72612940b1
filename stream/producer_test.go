package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
)

// fakeWriter records what is produced; err, when set, fails every write.
type fakeWriter struct {
	mu     sync.Mutex
	writes [][]kafka.Message
	err    error
	fails  int // the first fails writes fail with err
	closed bool
}

func (w *fakeWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil && (w.fails == 0 || len(w.writes) < w.fails) {
		w.writes = append(w.writes, nil)
		return w.err
	}
	w.writes = append(w.writes, slices.Clone(msgs))
	return nil
}

func (w *fakeWriter) Close() error { w.closed = true; return nil }

func (w *fakeWriter) all() []kafka.Message {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []kafka.Message
	for _, ms := range w.writes {
		out = append(out, ms...)
	}
	return out
}

func testValidator(t testing.TB) *ingest.Validator {
	t.Helper()
	ms, err := meter.NewSet([]meter.Spec{
		{Key: "api_calls", EventType: "api_call", Aggregation: "COUNT"},
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	return ingest.NewValidator(ms, 21*24*time.Hour, 5*time.Minute)
}

// eventJSON is a valid llm_request event at the given time.
func eventJSON(source, id string, at time.Time, tokens string) []byte {
	return fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":%q,"type":"llm_request","subject":"tenant-1","time":%q,"data":{"tokens":%q}}`,
		id, source, at.UTC().Format(time.RFC3339), tokens)
}

func mustEvent(t *testing.T, v *ingest.Validator, raw []byte, at time.Time) *ingest.Event {
	t.Helper()
	ev, rej := v.Validate(raw, at)
	if rej != nil {
		t.Fatalf("invalid test event: %s", rej.Reason)
	}
	return ev
}

func TestProducerWrite(t *testing.T) {
	v := testValidator(t)
	now := time.Date(2026, 11, 22, 3, 15, 0, 0, time.UTC)
	a := mustEvent(t, v, eventJSON("gw", "e1", now, "1.5"), now)
	b := mustEvent(t, v, eventJSON("gw", "e2", now, "2"), now)
	aAgain := mustEvent(t, v, eventJSON("gw", "e1", now, "1.5"), now)
	aOther := mustEvent(t, v, eventJSON("gw", "e1", now, "9"), now)
	_, rej := v.Validate([]byte(`{"specversion":"1.0","id":"bad","source":"gw","type":"nope","subject":"s","time":"2026-11-22T03:00:00Z"}`), now)

	w := &fakeWriter{}
	p := newProducer(w, "ev", "ev-dlq")
	res, err := p.Write(context.Background(), []*ingest.Event{a, b, aAgain, aOther}, []*ingest.Rejection{rej})
	if err != nil {
		t.Fatal(err)
	}
	want := []ingest.Outcome{ingest.Stored, ingest.Stored, ingest.Duplicate, ingest.Conflict}
	if !slices.Equal(res.Outcomes, want) {
		t.Errorf("outcomes %v, want %v", res.Outcomes, want)
	}
	if string(res.Existing[3]) != string(a.Raw) {
		t.Errorf("conflict's existing = %s, want the first copy", res.Existing[3])
	}
	if len(w.writes) != 1 {
		t.Fatalf("%d writes, want one call for events and dead letters together", len(w.writes))
	}
	msgs := w.writes[0]
	// The exact repeat is not produced; the conflicting copy is, after the first, for the store to dead-letter.
	if len(msgs) != 4 {
		t.Fatalf("%d messages, want 3 events and 1 dead letter", len(msgs))
	}
	for i, ev := range []*ingest.Event{a, b, aOther} {
		m := msgs[i]
		if m.Topic != "ev" || string(m.Key) != ev.Source+"\x00"+ev.ID || string(m.Value) != string(ev.Raw) || !m.Time.Equal(now) {
			t.Errorf("message %d = topic %q key %q value %s time %v", i, m.Topic, m.Key, m.Value, m.Time)
		}
	}
	dl := msgs[3]
	var d DeadLetter
	if err := json.Unmarshal(dl.Value, &d); err != nil {
		t.Fatal(err)
	}
	if dl.Topic != "ev-dlq" || string(dl.Key) != "gw\x00bad" || d.Code != ingest.CodeUnknownType || d.Reason != rej.Reason ||
		d.Origin != OriginAPI || d.Source != "gw" || d.ID != "bad" || !d.ReceivedAt.Equal(now) || d.Stream != nil || len(d.Event) == 0 {
		t.Errorf("dead letter %q: %s", dl.Key, dl.Value)
	}

	// Nothing to write: no call at all.
	if _, err := p.Write(context.Background(), nil, nil); err != nil || len(w.writes) != 1 {
		t.Errorf("empty write: %v, %d calls", err, len(w.writes))
	}
}

func TestProducerErrors(t *testing.T) {
	v := testValidator(t)
	now := time.Now()
	ev := mustEvent(t, v, eventJSON("gw", "e1", now, "1"), now)
	tests := []struct {
		name      string
		err       error
		retryable bool
	}{
		{"network", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{"not enough replicas", kafka.WriteErrors{kafka.NotEnoughReplicas}, true},
		{"leader moved", kafka.WriteErrors{nil, kafka.NotLeaderForPartition}, true},
		{"timeout", context.DeadlineExceeded, true},
		{"closed writer", io.ErrClosedPipe, true},
		{"too large", kafka.MessageTooLargeError{}, false},
		{"one message too large in a batch", kafka.WriteErrors{kafka.NotEnoughReplicas, kafka.MessageSizeTooLarge}, false},
		{"no permission", kafka.TopicAuthorizationFailed, false},
		{"cancelled", context.Canceled, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProducer(&fakeWriter{err: tt.err}, "ev", "ev-dlq")
			res, err := p.Write(context.Background(), []*ingest.Event{ev}, nil)
			if err == nil || res.Outcomes != nil {
				t.Fatalf("Write = %+v, %v; want an error and no outcome", res, err)
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not a *stream.Error", err)
			}
			var temp interface{ Temporary() bool }
			if !errors.As(err, &temp) || temp.Temporary() != tt.retryable {
				t.Errorf("Temporary() does not say %v", tt.retryable)
			}
			if IsRetryable(err) != tt.retryable || se.Retryable != tt.retryable {
				t.Errorf("retryable = %v, want %v (%v)", IsRetryable(err), tt.retryable, err)
			}
			if !reflect.DeepEqual(se.Err, tt.err) {
				t.Errorf("error %v does not wrap %v", err, tt.err)
			}
		})
	}
	if IsRetryable(errors.New("plain")) {
		t.Error("an error of another type is retryable")
	}
}

func TestProducerSend(t *testing.T) {
	w := &fakeWriter{}
	p := newProducer(w, "ev", "ev-dlq")
	raws := [][]byte{[]byte(`{ "id": "e1", "source": "gw", "x": 1 }`), []byte(`not json`), []byte(`{"id": 5, "source": "gw"}`)}
	if err := p.Send(context.Background(), raws); err != nil {
		t.Fatal(err)
	}
	msgs := w.all()
	if len(msgs) != 3 {
		t.Fatalf("%d messages", len(msgs))
	}
	if string(msgs[0].Value) != `{"id":"e1","source":"gw","x":1}` || string(msgs[0].Key) != "gw\x00e1" {
		t.Errorf("message 0: key %q value %s", msgs[0].Key, msgs[0].Value)
	}
	if string(msgs[1].Value) != "not json" || string(msgs[1].Key) != "\x00" {
		t.Errorf("message 1: key %q value %s", msgs[1].Key, msgs[1].Value)
	}
	if string(msgs[2].Key) != "gw\x00" {
		t.Errorf("message 2: key %q", msgs[2].Key)
	}
	for _, m := range msgs {
		if m.Topic != "ev" {
			t.Errorf("topic %q", m.Topic)
		}
	}
	if err := p.Close(); err != nil || !w.closed {
		t.Errorf("Close: %v, closed %v", err, w.closed)
	}
}
