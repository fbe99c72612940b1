package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"mime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterd/meterd/aggregate/meter"
)

// Attribute limits of DESIGN.md §2.
const (
	MaxIDLen      = 256
	MaxSourceLen  = 256
	MaxTypeLen    = 256
	MaxSubjectLen = 64
)

// Validator turns one raw event into an Event or a Rejection. The HTTP API and the Kafka collectors share it, so
// an event is judged the same way whichever path it takes.
type Validator struct {
	meters    *meter.Set
	maxAge    time.Duration
	maxFuture time.Duration
}

// NewValidator returns a validator for the given meters and time window.
func NewValidator(meters *meter.Set, maxAge, maxFuture time.Duration) *Validator {
	return &Validator{meters: meters, maxAge: maxAge, maxFuture: maxFuture}
}

// Validate checks one structured-mode CloudEvent. at is the acknowledgement time the event's age is judged
// against (the request time over HTTP, the Kafka message timestamp in the collectors, never a collector's clock).
func (v *Validator) Validate(raw []byte, at time.Time) (*Event, *Rejection) {
	ev, err := v.validate(raw, at)
	if err != nil {
		rej := &Rejection{Reason: err.Error(), Code: err.Code, ReceivedAt: at.UTC(), Event: keepRaw(raw)}
		rej.Source, rej.ID = bestEffortKey(raw)
		return nil, rej
	}
	return ev, nil
}

func (v *Validator) validate(raw []byte, at time.Time) (*Event, *InvalidError) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, invalid(CodeMalformed, "", "not a JSON object: %v", err)
	}
	if obj == nil {
		return nil, invalid(CodeMalformed, "", "not a JSON object: null")
	}
	if dec.More() {
		return nil, invalid(CodeMalformed, "", "trailing data after the event object")
	}
	str := func(name string, max int) (string, *InvalidError) {
		val, ok := obj[name]
		if !ok || val == nil {
			return "", invalid(CodeMissingField, name, "required")
		}
		s, ok := val.(string)
		if !ok {
			return "", invalid(CodeMalformed, name, "must be a string")
		}
		if s == "" {
			return "", invalid(CodeMissingField, name, "must not be empty")
		}
		if n := utf8.RuneCountInString(s); max > 0 && n > max {
			return "", invalid(CodeTooLong, name, "%d characters, at most %d allowed", n, max)
		}
		return s, nil
	}
	specVersion, err := str("specversion", 0)
	if err != nil {
		return nil, err
	}
	if specVersion != "1.0" {
		return nil, invalid(CodeBadSpecVersion, "specversion", "%q is not supported, want \"1.0\"", truncate(specVersion, 20))
	}
	ev := &Event{ReceivedAt: at.UTC()}
	if ev.ID, err = str("id", MaxIDLen); err != nil {
		return nil, err
	}
	if ev.Source, err = str("source", MaxSourceLen); err != nil {
		return nil, err
	}
	if ev.Type, err = str("type", MaxTypeLen); err != nil {
		return nil, err
	}
	if ev.Subject, err = str("subject", MaxSubjectLen); err != nil {
		return nil, err
	}
	timeText, err := str("time", 64)
	if err != nil {
		return nil, err
	}
	t, perr := time.Parse(time.RFC3339Nano, timeText)
	if perr != nil {
		return nil, invalid(CodeBadTime, "time", "%q is not an RFC 3339 time", timeText)
	}
	ev.Time = t.UTC()
	if oldest := at.Add(-v.maxAge); ev.Time.Before(oldest) {
		return nil, invalid(CodeTooOld, "time", "%s is older than the max event age %s", ev.Time.Format(time.RFC3339), v.maxAge)
	}
	if newest := at.Add(v.maxFuture); ev.Time.After(newest) {
		return nil, invalid(CodeInFuture, "time", "%s is more than %s in the future", ev.Time.Format(time.RFC3339), v.maxFuture)
	}
	if _, ok := obj["data_base64"]; ok {
		return nil, invalid(CodeMalformed, "data_base64", "binary data is not supported: send the data as JSON")
	}
	if ct, ok := obj["datacontenttype"].(string); ok && !isJSONMediaType(ct) {
		return nil, invalid(CodeMalformed, "datacontenttype", "%q: data must be JSON", truncate(ct, 60))
	}
	data := obj["data"]
	meters := v.meters.ForType(ev.Type)
	if len(meters) == 0 {
		return nil, invalid(CodeUnknownType, "type", "%q feeds no configured meter", truncate(ev.Type, 60))
	}
	vals := make([]meter.Value, len(meters))
	for i, m := range meters {
		val, verr := m.Extract(data)
		if verr != nil {
			return nil, invalid(CodeBadValue, "data", "meter %s: %v", m.Key, verr)
		}
		vals[i] = val
	}
	ev.Values = toValues(meters, vals)
	canonicalData, merr := json.Marshal(data) // maps marshal with sorted keys; json.Number keeps its text
	if merr != nil {
		return nil, invalid(CodeMalformed, "data", "%v", merr)
	}
	h := sha256.New()
	for _, part := range []string{ev.Type, ev.Subject, ev.Time.Format(time.RFC3339Nano)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	h.Write(canonicalData)
	copy(ev.Hash[:], h.Sum(nil))
	ev.Raw = keepRaw(raw)
	return ev, nil
}

// keepRaw returns the compacted JSON, or the bytes as a JSON string when they are not JSON at all, so a dead
// letter always shows what was sent.
func keepRaw(raw []byte) json.RawMessage {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err == nil {
		return buf.Bytes()
	}
	b, _ := json.Marshal(truncate(string(raw), 64<<10))
	return b
}

// bestEffortKey reads source and id from an event that may be invalid, to label its dead letter.
func bestEffortKey(raw []byte) (source, id string) {
	var k struct {
		Source any `json:"source"`
		ID     any `json:"id"`
	}
	if json.Unmarshal(raw, &k) != nil {
		return "", ""
	}
	s, _ := k.Source.(string)
	i, _ := k.ID.(string)
	return truncate(s, MaxSourceLen), truncate(i, MaxIDLen)
}

func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n])
}
