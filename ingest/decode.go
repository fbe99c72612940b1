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
		if !json.Valid(trimmed) {
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
		if !json.Valid(l) {
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
		obj[strings.TrimPrefix(lower, "ce-")] = v
	}
	if ct := header.Get("Content-Type"); ct != "" {
		obj["datacontenttype"] = ct
	}
	if body = bytes.TrimSpace(body); len(body) > 0 {
		if !json.Valid(body) {
			var v any
			err := json.Unmarshal(body, &v)
			return nil, fmt.Errorf("%w: binary-mode data: %v", ErrUnparseable, err)
		}
		obj["data"] = json.RawMessage(body)
	}
	return json.Marshal(obj)
}
