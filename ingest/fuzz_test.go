package ingest_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
)

// FuzzDecode feeds arbitrary bodies through the decoder and the validator: nothing may panic, and whatever is
// accepted must satisfy the invariants the store relies on.
func FuzzDecode(f *testing.F) {
	at := now.Add(-time.Hour)
	seeds := []string{
		ev("a", "llm_request", "t", at, `{"tokens":"1.5"}`),
		"[" + ev("a", "api_call", "t", at, "") + "]",
		ev("a", "llm_request", "t", at, `{"tokens":1e5}`) + "\n" + ev("b", "login", "t", at, `{"user":7}`),
		`{"specversion":"1.0"}`, `[`, `{}`, "null", `{"data":{"tokens":"1e-999"}}`, "\xff\xfe",
	}
	for i, s := range seeds {
		f.Add(uint8(i), s)
	}
	meters := testMetersF(f)
	v := ingest.NewValidator(meters, 21*24*time.Hour, 5*time.Minute)
	types := []string{ingest.MediaCloudEvent, ingest.MediaBatch, ingest.MediaNDJSON, ingest.MediaJSON, ""}
	f.Fuzz(func(t *testing.T, form uint8, body string) {
		h := http.Header{}
		if ct := types[int(form)%len(types)]; ct != "" {
			h.Set("Content-Type", ct)
		}
		if form%7 == 6 {
			h.Set("Ce-Specversion", "1.0")
			h.Set("Ce-Id", "x")
			h.Set("Ce-Source", "s")
			h.Set("Ce-Type", "llm_request")
			h.Set("Ce-Subject", "t")
			h.Set("Ce-Time", at.Format(time.RFC3339))
		}
		items, err := ingest.Decode(h, []byte(body))
		if err != nil {
			return
		}
		for _, it := range items {
			if it.Err != nil {
				continue
			}
			e, rej := v.Validate(it.Raw, now)
			if rej != nil {
				if rej.Reason == "" || rej.Code == "" {
					t.Fatalf("rejection without reason or code: %+v", rej)
				}
				continue
			}
			if e.ID == "" || e.Source == "" || e.Subject == "" || len(e.Values) == 0 || len(e.Raw) == 0 {
				t.Fatalf("accepted an incomplete event: %+v", e)
			}
			for _, mv := range e.Values {
				m, _ := meters.Get(mv.Meter)
				if m.Aggregation == meter.UniqueCount {
					continue
				}
				if _, err := meter.ParseQuantity(mv.Value); err != nil {
					t.Fatalf("stored value %q of meter %s does not re-parse: %v", mv.Value, mv.Meter, err)
				}
			}
		}
	})
}

func testMetersB(tb testing.TB) *meter.Set { return testMetersF(tb) }

func testMetersF(f testing.TB) *meter.Set {
	set, err := meter.NewSet([]meter.Spec{
		{Key: "api_calls", EventType: "api_call", Aggregation: "COUNT"},
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
		{Key: "users", EventType: "login", Aggregation: "UNIQUE_COUNT", ValueProperty: "$.user"},
	}, "meters")
	if err != nil {
		f.Fatal(err)
	}
	return set
}
