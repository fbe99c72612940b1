package aggregate_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate"
)

func TestUsageEndpointClosedAndOpenRows(t *testing.T) {
	r := newRig(t, "carry", h0)
	r.now = h0.Add(30 * time.Minute)
	r.ingest("A", h0.Add(10*time.Minute), "2.00005")
	r.now = h0.Add(65 * time.Minute)
	r.close(h0)
	r.now = h0.Add(70 * time.Minute)
	r.ingest("A", h0.Add(68*time.Minute), "1.5")

	mux := http.NewServeMux()
	aggregate.NewUsageHandler(r.closer, nil).Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	res, err := http.Get(srv.URL + "/v1/usage?instance_id=tok-a&from=" + h0.Format(time.RFC3339) + "&to=2026-11-01T03")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Rows []map[string]any `json:"rows"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %v", res.StatusCode, err)
	}
	if len(body.Rows) != 2 {
		t.Fatalf("rows %v", body.Rows)
	}
	closed, open := body.Rows[0], body.Rows[1]
	// Fixed price 1: the amount is the usage_value, exactly; the cut 0.00005 is carried.
	for k, want := range map[string]any{"instance_id": "tok-a", "hour": "2026-11-01T00:00:00Z", "state": "CLOSED",
		"quantity": "2.00005", "usage_value": "2", "carry": "0.00005", "amount": "2", "currency": "CNY", "metering_sn": nil} {
		if closed[k] != want {
			t.Errorf("closed row %s = %v, want %v", k, closed[k], want)
		}
	}
	for k, want := range map[string]any{"hour": "2026-11-01T01:00:00Z", "state": "OPEN", "quantity": "1.5",
		"usage_value": "1.5", "carry": nil, "amount": nil} {
		if open[k] != want {
			t.Errorf("open row %s = %v, want %v", k, open[k], want)
		}
	}
	for _, bad := range []string{"from=yesterday", "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "from=2026-01-01T00:00:00Z&to=2026-11-01T00:00:00Z"} {
		res, err := http.Get(srv.URL + "/v1/usage?" + bad)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", bad, res.StatusCode)
		}
	}
}
