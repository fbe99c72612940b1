package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"mime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/internal/jsonscan"
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
	return v.judge(raw, at, false)
}

// ValidateOwned is Validate for bytes that nothing modifies afterwards (a Kafka message's value): a valid event
// keeps raw itself as its Raw instead of a copy, which was a tenth of a collector's allocations.
func (v *Validator) ValidateOwned(raw []byte, at time.Time) (*Event, *Rejection) {
	return v.judge(raw, at, true)
}

func (v *Validator) judge(raw []byte, at time.Time, owned bool) (*Event, *Rejection) {
	ev, err := v.validate(raw, at, owned)
	if err != nil {
		rej := &Rejection{Reason: err.Error(), Code: err.Code, ReceivedAt: at.UTC(), Event: keepRaw(raw)}
		rej.Source, rej.ID = bestEffortKey(raw)
		return nil, rej
	}
	return ev, nil
}

// eventJSON is the raw value of each member of an event object that validation reads (nil when absent), the last
// one when a key repeats, as decoding into a map would keep.
type eventJSON struct {
	specVersion, id, source, typ, subject, time, dataContentType, data []byte
	hasDataBase64                                                      bool
}

// scanEvent splits a JSON object into the members validation reads, without decoding anything else. ok is false
// when raw is not valid JSON or not an object: the decoding path judges those, with its error messages.
func scanEvent(raw []byte) (e eventJSON, ok bool) {
	if !validJSON(raw) {
		return e, false
	}
	i := jsonscan.SkipSpace(raw, 0)
	if raw[i] != '{' {
		return e, false
	}
	i = jsonscan.SkipSpace(raw, i+1)
	if raw[i] == '}' {
		return e, true
	}
	for {
		kEnd := jsonscan.SkipString(raw, i)
		key := raw[i:kEnd]
		i = jsonscan.SkipSpace(raw, jsonscan.SkipSpace(raw, kEnd)+1) // past ':'
		vEnd := jsonscan.SkipValue(raw, i)
		val := raw[i:vEnd]
		name := key[1 : len(key)-1]
		if !jsonscan.PlainString(name) {
			name = []byte(jsonscan.Unquote(key))
		}
		switch string(name) {
		case "specversion":
			e.specVersion = val
		case "id":
			e.id = val
		case "source":
			e.source = val
		case "type":
			e.typ = val
		case "subject":
			e.subject = val
		case "time":
			e.time = val
		case "datacontenttype":
			e.dataContentType = val
		case "data":
			e.data = val
		case "data_base64":
			e.hasDataBase64 = true
		}
		i = jsonscan.SkipSpace(raw, vEnd)
		if raw[i] == '}' {
			return e, true
		}
		i = jsonscan.SkipSpace(raw, i+1) // past ','
	}
}

// attr reads a required string attribute from its raw value.
func attr(val []byte, name string, max int) (string, *InvalidError) {
	if val == nil || val[0] == 'n' {
		return "", invalid(CodeMissingField, name, "required")
	}
	if val[0] != '"' {
		return "", invalid(CodeMalformed, name, "must be a string")
	}
	s := jsonscan.Unquote(val)
	if s == "" {
		return "", invalid(CodeMissingField, name, "must not be empty")
	}
	if n := utf8.RuneCountInString(s); max > 0 && n > max {
		return "", invalid(CodeTooLong, name, "%d characters, at most %d allowed", n, max)
	}
	if err := checkAttrText(name, s); err != nil {
		return "", err
	}
	return s, nil
}

// checkAttrText refuses the control characters CloudEvents 1.0 disallows in String attributes (U+0000-U+001F,
// U+007F-U+009F): a NUL or a newline in a subject or id has no agreed meaning, and the content hash separates
// attributes with NUL bytes.
func checkAttrText(name, s string) *InvalidError {
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return invalid(CodeMalformed, name, "contains the control character U+%04X, which CloudEvents attributes may not", r)
		}
	}
	return nil
}

// checkUnicode refuses an event that is not valid Unicode text: invalid UTF-8 bytes, or a \u escape that is a lone
// UTF-16 surrogate. JSON decoders replace both with U+FFFD, so two different ids ("a\xff", "a\xfe") would become
// one dedup key and the second event would be counted as a duplicate of the first, or a conflict.
func checkUnicode(raw []byte) *InvalidError {
	if !utf8.Valid(raw) {
		return invalid(CodeMalformed, "", "not valid UTF-8")
	}
	if bytes.Contains(raw, []byte(`\u`)) && hasLoneSurrogate(raw) {
		return invalid(CodeMalformed, "", "a \\u escape is a lone UTF-16 surrogate, not a character")
	}
	return nil
}

// hasLoneSurrogate reports whether raw has a \uD800-\uDFFF escape that is not a high surrogate directly followed
// by a low one.
func hasLoneSurrogate(raw []byte) bool {
	hex4 := func(i int) (rune, bool) { // the code unit of the escape at raw[i] ("\uXXXX")
		if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
			return 0, false
		}
		var r rune
		for _, c := range raw[i+2 : i+6] {
			switch {
			case c >= '0' && c <= '9':
				r = r<<4 | rune(c-'0')
			case c >= 'a' && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case c >= 'A' && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return 0, false
			}
		}
		return r, true
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		r, ok := hex4(i)
		if !ok {
			i++ // another escape: skip the escaped character, which may be a backslash
			continue
		}
		switch {
		case r >= 0xD800 && r <= 0xDBFF:
			if low, ok := hex4(i + 6); !ok || low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 11
		case r >= 0xDC00 && r <= 0xDFFF:
			return true
		default:
			i += 5
		}
	}
	return false
}

// validate judges a valid JSON object by reading only the members it needs and the meter values' paths in data;
// anything else (not JSON, not an object) goes through validateDecoded, whose answers it reproduces exactly.
func (v *Validator) validate(raw []byte, at time.Time, owned bool) (*Event, *InvalidError) {
	if err := checkUnicode(raw); err != nil {
		return nil, err
	}
	obj, ok := scanEvent(raw)
	if !ok {
		return v.validateDecoded(raw, at)
	}
	var err *InvalidError
	if string(obj.specVersion) != `"1.0"` { // else it is the one valid answer, as written by everyone
		specVersion, err := attr(obj.specVersion, "specversion", 0)
		if err != nil {
			return nil, err
		}
		if specVersion != "1.0" {
			return nil, invalid(CodeBadSpecVersion, "specversion", "%q is not supported, want \"1.0\"", truncate(specVersion, 20))
		}
	}
	ev := &Event{ReceivedAt: at.UTC()}
	if ev.ID, err = attr(obj.id, "id", MaxIDLen); err != nil {
		return nil, err
	}
	if ev.Source, err = attr(obj.source, "source", MaxSourceLen); err != nil {
		return nil, err
	}
	if ev.Type, err = attr(obj.typ, "type", MaxTypeLen); err != nil {
		return nil, err
	}
	if ev.Subject, err = attr(obj.subject, "subject", MaxSubjectLen); err != nil {
		return nil, err
	}
	timeText, err := attr(obj.time, "time", 64)
	if err != nil {
		return nil, err
	}
	if err := v.checkTime(ev, timeText, at); err != nil {
		return nil, err
	}
	if obj.hasDataBase64 {
		return nil, invalid(CodeMalformed, "data_base64", "binary data is not supported: send the data as JSON")
	}
	if ct := obj.dataContentType; ct != nil && ct[0] == '"' {
		if s := jsonscan.Unquote(ct); !isJSONMediaType(s) {
			return nil, invalid(CodeMalformed, "datacontenttype", "%q: data must be JSON", truncate(s, 60))
		}
	}
	meters := v.meters.ForType(ev.Type)
	if len(meters) == 0 {
		return nil, invalid(CodeUnknownType, "type", "%q feeds no configured meter", truncate(ev.Type, 60))
	}
	ev.Values = make([]MeterValue, len(meters))
	for i, m := range meters {
		text, verr := m.ValueText(obj.data)
		if verr != nil {
			return nil, invalid(CodeBadValue, "data", "meter %s: %v", m.Key, verr)
		}
		ev.Values[i] = MeterValue{Meter: m.Key, Value: text}
	}
	var buf [512]byte
	b := hashPrefix(buf[:0], ev)
	if obj.data == nil {
		b = append(b, "null"...)
	} else if c, ok := appendCanonical(b, obj.data); ok {
		b = c
	} else {
		canonicalData, err := canonicalDecoded(obj.data)
		if err != nil {
			return nil, invalid(CodeMalformed, "data", "%v", err)
		}
		b = append(b, canonicalData...)
	}
	ev.Hash = sha256.Sum256(b)
	switch {
	case isCompact(raw) && owned:
		ev.Raw = raw
	case isCompact(raw):
		ev.Raw = bytes.Clone(raw) // what keepRaw would return, without compacting
	default:
		ev.Raw = keepRaw(raw)
	}
	return ev, nil
}

func (v *Validator) checkTime(ev *Event, timeText string, at time.Time) *InvalidError {
	t, perr := time.Parse(time.RFC3339Nano, timeText)
	if perr != nil {
		return invalid(CodeBadTime, "time", "%q is not an RFC 3339 time", timeText)
	}
	ev.Time = t.UTC()
	if oldest := at.Add(-v.maxAge); ev.Time.Before(oldest) {
		return invalid(CodeTooOld, "time", "%s is older than the max event age %s", ev.Time.Format(time.RFC3339), v.maxAge)
	}
	if newest := at.Add(v.maxFuture); ev.Time.After(newest) {
		return invalid(CodeInFuture, "time", "%s is more than %s in the future", ev.Time.Format(time.RFC3339), v.maxFuture)
	}
	return nil
}

// hashPrefix appends what the content hash covers before the data: type, subject and time, each ended by a zero
// byte.
func hashPrefix(b []byte, ev *Event) []byte {
	b = append(b, ev.Type...)
	b = append(b, 0)
	b = append(b, ev.Subject...)
	b = append(b, 0)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	return append(b, 0)
}

// canonicalDecoded is the canonical form of data by definition: decoded with UseNumber and marshalled again, maps
// with sorted keys, json.Number keeping its text. appendCanonical produces the same bytes directly when it can.
func canonicalDecoded(data []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// member is one member of a raw JSON object.
type member struct{ key, val []byte }

// appendCanonical appends the canonical form of the valid JSON value v (what canonicalDecoded returns), without
// decoding it: whitespace dropped, object keys sorted bytewise with the last copy of a repeated key kept, numbers
// and literals as written. ok is false, and the caller falls back to canonicalDecoded, when a string is not
// written the way encoding/json writes it (escapes, <, >, &, U+2028, U+2029 or invalid UTF-8).
func appendCanonical(dst, v []byte) (out []byte, ok bool) {
	switch v[0] {
	case '{':
		var stack [8]member
		ms := stack[:0]
		i := jsonscan.SkipSpace(v, 1)
		if v[i] != '}' {
			for {
				kEnd := jsonscan.SkipString(v, i)
				key := v[i+1 : kEnd-1]
				if !encodedAsIs(key) {
					return dst, false
				}
				i = jsonscan.SkipSpace(v, jsonscan.SkipSpace(v, kEnd)+1)
				vEnd := jsonscan.SkipValue(v, i)
				ms = append(ms, member{key, v[i:vEnd]})
				i = jsonscan.SkipSpace(v, vEnd)
				if v[i] == '}' {
					break
				}
				i = jsonscan.SkipSpace(v, i+1)
			}
		}
		slices.SortStableFunc(ms, func(a, b member) int { return bytes.Compare(a.key, b.key) })
		dst = append(dst, '{')
		first := true
		for j, m := range ms {
			if j+1 < len(ms) && bytes.Equal(m.key, ms[j+1].key) {
				continue // a later copy of the key replaces this one
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, '"')
			dst = append(dst, m.key...)
			dst = append(dst, '"', ':')
			if dst, ok = appendCanonical(dst, m.val); !ok {
				return dst, false
			}
		}
		return append(dst, '}'), true
	case '[':
		dst = append(dst, '[')
		i := jsonscan.SkipSpace(v, 1)
		if v[i] != ']' {
			for {
				end := jsonscan.SkipValue(v, i)
				if dst, ok = appendCanonical(dst, v[i:end]); !ok {
					return dst, false
				}
				i = jsonscan.SkipSpace(v, end)
				if v[i] == ']' {
					break
				}
				dst = append(dst, ',')
				i = jsonscan.SkipSpace(v, i+1)
			}
		}
		return append(dst, ']'), true
	case '"':
		if !encodedAsIs(v[1 : len(v)-1]) {
			return dst, false
		}
		return append(dst, v...), true
	default: // numbers (json.Number keeps their text) and literals
		return append(dst, v...), true
	}
}

// encodedAsIs reports whether encoding/json would write the decoded string exactly as the body of this string
// token: no escapes, nothing it escapes as HTML (<, >, &) or as a line separator (U+2028, U+2029), valid UTF-8.
func encodedAsIs(body []byte) bool {
	for i := 0; i < len(body); {
		c := body[i]
		if c < utf8.RuneSelf {
			if c == '\\' || c == '<' || c == '>' || c == '&' || c < 0x20 {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(body[i:])
		if (r == utf8.RuneError && size == 1) || r == '\u2028' || r == '\u2029' {
			return false
		}
		i += size
	}
	return true
}

// The scanning helpers below read JSON already known to be valid.

// isCompact reports whether raw has no whitespace outside its strings, so that compacting it changes nothing.
func isCompact(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '"':
			i = jsonscan.SkipString(raw, i) - 1
		case ' ', '\t', '\n', '\r':
			return false
		}
	}
	return true
}

// validateDecoded is the reference validation: the event decoded into a map. validate takes it for what is not a
// valid JSON object, for its error messages (and its tolerance of what follows the object).
func (v *Validator) validateDecoded(raw []byte, at time.Time) (*Event, *InvalidError) {
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
		if err := checkAttrText(name, s); err != nil {
			return "", err
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
	if err := v.checkTime(ev, timeText, at); err != nil {
		return nil, err
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
	h.Write(hashPrefix(nil, ev))
	h.Write(canonicalData)
	copy(ev.Hash[:], h.Sum(nil))
	ev.Raw = keepRaw(raw)
	return ev, nil
}

// keepRaw returns the compacted JSON, or the bytes as a JSON string when they are not JSON at all, so a dead
// letter always shows what was sent.
func keepRaw(raw []byte) json.RawMessage {
	var buf bytes.Buffer
	// Invalid UTF-8 is kept as a JSON string (its bad bytes as U+FFFD), so GET /v1/events/rejected stays valid JSON.
	if err := json.Compact(&buf, raw); err == nil && utf8.Valid(raw) {
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
