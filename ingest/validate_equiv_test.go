// The validator has a fast path (validate: a scan of the raw JSON, no map decoding) and a reference path
// (validateDecoded: the event decoded with encoding/json). These tests and fuzz targets hold the fast path to the
// reference: same event, same hash, same rejection, for every input.

package ingest

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
)

var diffNow = time.Date(2026, 11, 22, 3, 30, 0, 0, time.UTC)

func diffMeters(t testing.TB) *meter.Set {
	set, err := meter.NewSet([]meter.Spec{
		{Key: "api_calls", EventType: "api_call", Aggregation: "COUNT"},
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
		{Key: "peak", EventType: "llm_request", Aggregation: "MAX", ValueProperty: "$.tokens"},
		{Key: "users", EventType: "login", Aggregation: "UNIQUE_COUNT", ValueProperty: "$.user"},
		{Key: "deep", EventType: "deep", Aggregation: "SUM", ValueProperty: "$.a['b c'][1]"},
		{Key: "last", EventType: "deep", Aggregation: "MAX", ValueProperty: "$.arr[-1]"},
		{Key: "u2", EventType: "deep", Aggregation: "UNIQUE_COUNT", ValueProperty: "$.a.k"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// compare checks that the fast path (validate: a scan of the raw JSON) judges raw exactly as the reference does
// (validateDecoded: the event decoded into a map), same event, same hash, same rejection.
func compare(t *testing.T, v *Validator, raw []byte) {
	t.Helper()
	fast, ferr := v.validate(raw, diffNow, false)
	ref, rerr := func() (*Event, *InvalidError) {
		if err := checkUnicode(raw); err != nil {
			return nil, err
		}
		return v.validateDecoded(raw, diffNow)
	}()
	if !reflect.DeepEqual(ferr, rerr) {
		t.Fatalf("%q:\nfast err %+v\nref  err %+v", raw, ferr, rerr)
	}
	if ferr != nil {
		return
	}
	if fast.Hash != ref.Hash || !bytes.Equal(fast.Raw, ref.Raw) || !reflect.DeepEqual(fast.Values, ref.Values) ||
		fast.ID != ref.ID || fast.Source != ref.Source || fast.Type != ref.Type || fast.Subject != ref.Subject ||
		!fast.Time.Equal(ref.Time) || fast.ReceivedAt != ref.ReceivedAt {
		t.Fatalf("%q:\nfast %+v\nref  %+v", raw, fast, ref)
	}
	// Bytes handed over (ValidateOwned) are judged the same; a compact event keeps them instead of a copy.
	owned, oerr := v.validate(bytes.Clone(raw), diffNow, true)
	if oerr != nil || owned.Hash != fast.Hash || !bytes.Equal(owned.Raw, fast.Raw) || !reflect.DeepEqual(owned.Values, fast.Values) {
		t.Fatalf("%q: owned bytes judged %+v %v, want %+v", raw, owned, oerr, fast)
	}
}

// TestValidateOwnedKeepsBytes: ValidateOwned keeps a compact event's bytes as its Raw, Validate copies them (the
// HTTP handler reuses its buffers).
func TestValidateOwnedKeepsBytes(t *testing.T) {
	v := NewValidator(diffMeters(t), 21*24*time.Hour, 5*time.Minute)
	raw := []byte(diffSeeds[0])
	owned, rej := v.ValidateOwned(raw, diffNow)
	if rej != nil || &owned.Raw[0] != &raw[0] {
		t.Errorf("ValidateOwned: %v, raw kept: %v", rej, rej == nil && &owned.Raw[0] == &raw[0])
	}
	copied, rej := v.Validate(raw, diffNow)
	if rej != nil || &copied.Raw[0] == &raw[0] || !bytes.Equal(copied.Raw, raw) {
		t.Errorf("Validate: %v, copy: %q", rej, copied.Raw)
	}
}

var diffSeeds = []string{
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1.5"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"0001.5000","x":[1,2,{"b":1,"a":2}]}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"z":1,"tokens":12, "tokens":"3"}}`,
	` { "specversion" : "1.0", "id":"a\u0041","source":"s","type":"llm_request","subject":"t\u00e9","time":"2026-11-22T03:00:00.123+01:00","data":{"tokens":1e3}} `,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1.5","h":"<a&b>","u":"\u2028","e":"é","q":"a\"b"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1.5","h":"` + "\xff" + `"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"login","subject":"t","time":"2026-11-22T03:00:00Z","data":{"user":1.0}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"login","subject":"t","time":"2026-11-22T03:00:00Z","data":{"user":"x<y"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"login","subject":"t","time":"2026-11-22T03:00:00Z","data":{"user":true}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"login","subject":"t","time":"2026-11-22T03:00:00Z","data":{"user":[1]}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"deep","subject":"t","time":"2026-11-22T03:00:00Z","data":{"a":{"b c":[1,"2.50"],"k":null},"arr":[3,4,"5"]}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"deep","subject":"t","time":"2026-11-22T03:00:00Z","data":{"a":{"b c":[1,"2.50"],"k":"x"},"arr":[]}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"deep","subject":"t","time":"2026-11-22T03:00:00Z","data":{"a":{"b\u0020c":[1,2e2],"k":7},"arr":[-1,0.5]}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"api_call","subject":"t","time":"2026-11-22T03:00:00Z"}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"api_call","subject":"t","time":"2026-11-22T03:00:00Z","data":null,"datacontenttype":"text/plain"}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"api_call","subject":"t","time":"2026-11-22T03:00:00Z","data_base64":null}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"api_call","subject":"t","time":"2026-11-22T03:00:00Z","datacontenttype":5}`,
	`{"specversion":"1.0","id":"","source":"s","type":"api_call","subject":"t","time":"2026-11-22T03:00:00Z"}`,
	`{"specversion":1,"id":"x"}`, `{"specversion":"1.0","id":null}`, `{}`, `[]`, `null`, `"x"`, `{"a":1} }`, `{"a":1} x`, `{`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"-1"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"12345678901234567890.5"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"0.00000000001"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1."}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"0"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":0.0}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"99999999999999999999999999999"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":"str"}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1"},"data":{"tokens":"2"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","d\u0061ta":{"tokens":"1"}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":{"x":1}}}`,
	`{"specversion":"1.0","id":"a","source":"s","type":"llm_request","subject":"t","time":"2026-11-22T03:00:00Z","data":{"tokens":"1","":{"":[]},"a":{}}}`,
}

func TestFastMatchesDecoded(t *testing.T) {
	v := NewValidator(diffMeters(t), 21*24*time.Hour, 5*time.Minute)
	for _, s := range diffSeeds {
		compare(t, v, []byte(s))
	}
}

// FuzzFastMatchesDecoded checks the fast path against the reference, and appendCanonical against canonicalDecoded.
func FuzzFastMatchesDecoded(f *testing.F) {
	for _, s := range diffSeeds {
		f.Add([]byte(s))
	}
	v := NewValidator(diffMeters(f), 21*24*time.Hour, 5*time.Minute)
	f.Fuzz(func(t *testing.T, raw []byte) {
		compare(t, v, raw)
		if json.Valid(raw) {
			// The canonical data (hashed for conflict detection) must not depend on the path either.
			if b, ok := appendCanonical(nil, bytes.TrimSpace(raw)); ok {
				ref, err := canonicalDecoded(raw)
				if err != nil || !bytes.Equal(b, ref) {
					t.Fatalf("canonical %q: %q vs %q %v", raw, b, ref, err)
				}
			}
		}
	})
}

// FuzzValidJSON checks that validJSON answers as json.Valid does.
func FuzzValidJSON(f *testing.F) {
	for _, s := range diffSeeds {
		f.Add([]byte(s))
	}
	for _, s := range []string{`1`, `-0.5e+7`, `01`, `1.`, `.5`, `-`, `"\u12"`, `"\uabcd"`, `"\x"`, "\"\x01\"", `[1,]`, `{"a":1,}`, `{"a" 1}`, `[[[[[[]]]]]]`, ` true `, `nul`, `{"a":[1,{"b":null}],"c":"\"\\\/\b\f\n\r\t"}`, "[" + string(bytes.Repeat([]byte("["), 100)) + string(bytes.Repeat([]byte("]"), 100)) + "]", "\xff", `"` + "\xff" + `"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if validJSON(raw) != json.Valid(raw) {
			t.Fatalf("%q: validJSON %v, json.Valid %v", raw, validJSON(raw), json.Valid(raw))
		}
	})
}
