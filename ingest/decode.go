package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/meterd/meterd/internal/jsonscan"
)

// Media types of DESIGN.md §2.
const (
	MediaCloudEvent = "application/cloudevents+json"
	MediaBatch      = "application/cloudevents-batch+json"
	MediaNDJSON     = "application/x-ndjson"
	MediaJSON       = "application/json"
)

// ErrUnparseable means the body as a whole cannot be read as events (400): the events in it cannot even be told
// apart, so none of them can be judged on its own.
var ErrUnparseable = errors.New("body cannot be parsed")

// ErrUnsupportedMedia means the Content-Type is none of the accepted forms (415).
var ErrUnsupportedMedia = errors.New("unsupported content type")

// Item is one event of a request before validation: its raw structured-mode JSON, or, for an NDJSON line that is
// not JSON, the reason.
type Item struct {
	Raw []byte
	Err *InvalidError
}

// Decode splits a request body into events, by Content-Type, in the four forms of DESIGN.md §2. A malformed
// NDJSON line is one bad item; a malformed single event, array or binary-mode body is ErrUnparseable.
func Decode(header http.Header, body []byte) ([]Item, error) {
	if header.Get("Ce-Specversion") != "" {
		raw, err := fromBinary(header, body)
		if err != nil {
			return nil, err
		}
		return []Item{{Raw: raw}}, nil
	}
	mt := MediaJSON
	if ct := header.Get("Content-Type"); ct != "" {
		var err error
		if mt, _, err = mime.ParseMediaType(ct); err != nil {
			return nil, fmt.Errorf("%w: %q", ErrUnsupportedMedia, ct)
		}
	}
	switch mt {
	case MediaNDJSON, "application/ndjson", "application/jsonl":
		return splitNDJSON(body), nil
	case MediaBatch, MediaJSON, MediaCloudEvent, "text/json":
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) == 0 {
			return nil, fmt.Errorf("%w: empty body", ErrUnparseable)
		}
		if trimmed[0] == '[' {
			var arr []json.RawMessage
			if err := json.Unmarshal(trimmed, &arr); err != nil {
				return nil, fmt.Errorf("%w: JSON array: %v", ErrUnparseable, err)
			}
			items := make([]Item, len(arr))
			for i, r := range arr {
				items[i] = Item{Raw: r}
			}
			return items, nil
		}
		if mt == MediaBatch {
			return nil, fmt.Errorf("%w: %s must be a JSON array", ErrUnparseable, MediaBatch)
		}
		if !validJSON(trimmed) {
			var v any
			err := json.Unmarshal(trimmed, &v)
			return nil, fmt.Errorf("%w: %v", ErrUnparseable, err)
		}
		return []Item{{Raw: trimmed}}, nil
	default:
		return nil, fmt.Errorf("%w: %q (want %s, %s, %s or CloudEvents binary mode)", ErrUnsupportedMedia, mt,
			MediaCloudEvent, MediaBatch, MediaNDJSON)
	}
}

// splitNDJSON returns one item per non-blank line. A line that is not JSON is rejected on its own (its index in
// the answer tells which) and the other lines go on.
func splitNDJSON(body []byte) []Item {
	var items []Item
	for len(body) > 0 {
		var l []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			l, body = body[:i], body[i+1:]
		} else {
			l, body = body, nil
		}
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		if !validJSON(l) {
			items = append(items, Item{Raw: l, Err: invalid(CodeMalformed, "", "not valid JSON")})
			continue
		}
		items = append(items, Item{Raw: l})
	}
	return items
}

// fromBinary converts a CloudEvents HTTP binary-mode request (attributes in ce-* headers, data as the body) into
// structured-mode JSON, so that validation, hashing and storage see one form.
func fromBinary(header http.Header, body []byte) ([]byte, error) {
	obj := map[string]any{}
	for name, values := range header {
		lower := strings.ToLower(name)
		if !strings.HasPrefix(lower, "ce-") || len(values) == 0 {
			continue
		}
		v := values[0]
		// The HTTP binding percent-encodes attribute values that are not printable ASCII.
		if dec, err := url.PathUnescape(v); err == nil {
			v = dec
		}
		if !utf8.ValidString(v) {
			// json.Marshal would turn the bad bytes into U+FFFD, making different ids one dedup key.
			return nil, fmt.Errorf("%w: header %s is not valid UTF-8 (after percent-decoding)", ErrUnparseable, name)
		}
		obj[strings.TrimPrefix(lower, "ce-")] = v
	}
	if ct := header.Get("Content-Type"); ct != "" {
		obj["datacontenttype"] = ct
	}
	if body = bytes.TrimSpace(body); len(body) > 0 {
		if !validJSON(body) {
			var v any
			err := json.Unmarshal(body, &v)
			return nil, fmt.Errorf("%w: binary-mode data: %v", ErrUnparseable, err)
		}
		obj["data"] = json.RawMessage(body)
	}
	return json.Marshal(obj)
}

// validJSON is json.Valid, answering the same for every input, in one tight pass: every body is checked at least
// once (per NDJSON line, then per event), and encoding/json's byte-at-a-time state machine was a tenth of the
// ingest CPU. Only deep nesting, where json.Valid has a depth limit, is left to it.
func validJSON(b []byte) bool {
	i := jsonscan.SkipSpace(b, 0)
	end, ok := validValue(b, i, 0)
	if !ok {
		if end < 0 { // nested deeper than checked here
			return json.Valid(b)
		}
		return false
	}
	return jsonscan.SkipSpace(b, end) == len(b)
}

// maxValidDepth is the nesting validValue checks itself; json.Valid allows 10,000.
const maxValidDepth = 64

// validValue checks the value starting at b[i] and returns the index after it. end < 0 with !ok means the value
// nests deeper than maxValidDepth.
func validValue(b []byte, i, depth int) (end int, ok bool) {
	if i >= len(b) {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		return validString(b, i)
	case c == '{' || c == '[':
		if depth == maxValidDepth {
			return -1, false
		}
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		i = jsonscan.SkipSpace(b, i+1)
		if i < len(b) && b[i] == closer {
			return i + 1, true
		}
		for {
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return i, false
				}
				if i, ok = validString(b, i); !ok {
					return i, false
				}
				i = jsonscan.SkipSpace(b, i)
				if i >= len(b) || b[i] != ':' {
					return i, false
				}
				i = jsonscan.SkipSpace(b, i+1)
			}
			if i, ok = validValue(b, i, depth+1); !ok {
				return i, false
			}
			i = jsonscan.SkipSpace(b, i)
			if i >= len(b) {
				return i, false
			}
			if b[i] == closer {
				return i + 1, true
			}
			if b[i] != ',' {
				return i, false
			}
			i = jsonscan.SkipSpace(b, i+1)
		}
	case c == '-' || (c >= '0' && c <= '9'):
		return validNumber(b, i)
	case c == 't':
		return validLiteral(b, i, "true")
	case c == 'f':
		return validLiteral(b, i, "false")
	case c == 'n':
		return validLiteral(b, i, "null")
	}
	return i, false
}

func validLiteral(b []byte, i int, lit string) (int, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// validString checks the string token at b[i] (its opening quote) as encoding/json does: no byte below 0x20,
// only the escapes of RFC 8259; other bytes, even invalid UTF-8, are accepted.
func validString(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			i++
			if i >= len(b) {
				return i, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i < 5 {
					return i, false
				}
				for _, h := range b[i+1 : i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return i, false
					}
				}
				i += 4
			default:
				return i, false
			}
		}
	}
	return i, false
}

// validNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at b[i].
func validNumber(b []byte, i int) (int, bool) {
	digits := func(i int) (int, bool) {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i, i > start
	}
	if b[i] == '-' {
		i++
	}
	if i >= len(b) {
		return i, false
	}
	if b[i] == '0' {
		i++
	} else {
		var ok bool
		if i, ok = digits(i); !ok {
			return i, false
		}
	}
	if i < len(b) && b[i] == '.' {
		var ok bool
		if i, ok = digits(i + 1); !ok {
			return i, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		var ok bool
		if i, ok = digits(i); !ok {
			return i, false
		}
	}
	return i, true
}
