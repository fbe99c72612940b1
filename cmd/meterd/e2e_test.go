package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
)

// TestServeClosesHoursAndReportsUsage runs the real binary: usage of hours that have already ended is ingested,
// the process is restarted, and the catch-up close at start closes those hours; GET /v1/usage then shows them
// CLOSED with step amounts accumulated across hours (G(2) = 0.6, then G(5) - G(2) = 0.7).
func TestServeClosesHoursAndReportsUsage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`meters:
  - {key: minutes, event_type: call_minutes, aggregation: SUM, value_property: $.minutes}
plans:
  - {sku: MIN, meter: minutes, currency: CNY, mode: step, accumulation: month, timezone: Asia/Shanghai,
     brackets: [{up_to: "3", unit_price: "0.3"}, {unit_price: "0.2"}]}
instances:
  - {instance_id: i-1, subject: tenant-1, meter: minutes, sku: MIN, started_at: "2026-01-01T00:00:00Z"}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db"))
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	h1 := now.Truncate(time.Hour).Add(-3 * time.Hour)
	h2 := h1.Add(time.Hour)
	if h1.Add(time.Hour).In(mustZone(t, "Asia/Shanghai")).Day() == 1 && h1.In(mustZone(t, "Asia/Shanghai")).Hour() == 23 {
		t.Skip("the two hours straddle a Shanghai month boundary; the step period restarts")
	}
	cmd, base, logs := startServe(t, cfgPath)
	client := &ingest.Client{URL: base + "/v1/events"}
	var body strings.Builder
	for i, ev := range []struct {
		at      time.Time
		minutes string
	}{{h1.Add(10 * time.Minute), "1.5"}, {h1.Add(50 * time.Minute), "0.5"}, {h2.Add(5 * time.Minute), "3"}} {
		fmt.Fprintf(&body, `{"specversion":"1.0","id":"m%d","source":"e2e","type":"call_minutes","subject":"tenant-1","time":%q,"data":{"minutes":%q}}`+"\n",
			i, ev.at.Format(time.RFC3339), ev.minutes)
	}
	resp, err := client.PostNDJSON(t.Context(), []byte(body.String()))
	if err != nil || resp.Accepted != 3 {
		t.Fatalf("ingest: %+v %v\n%s", resp, err, logs)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs)
	}

	cmd, base, logs = startServe(t, cfgPath)
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	var rows []map[string]any
	for {
		res, err := http.Get(fmt.Sprintf("%s/v1/usage?instance_id=i-1&from=%s&to=%s", base, h1.Format(time.RFC3339), h2.Add(time.Hour).Format(time.RFC3339)))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Rows []map[string]any `json:"rows"`
		}
		err = json.NewDecoder(res.Body).Decode(&out)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		rows = out.Rows
		if len(rows) == 2 && rows[0]["state"] == "CLOSED" && rows[1]["state"] == "CLOSED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hours not closed after restart: %v\n%s", rows, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	want := []map[string]string{
		{"hour": h1.Format(time.RFC3339), "usage_value": "2", "amount": "0.6", "carry": "0"},
		{"hour": h2.Format(time.RFC3339), "usage_value": "3", "amount": "0.7", "carry": "0"},
	}
	for i, w := range want {
		for k, v := range w {
			if rows[i][k] != v {
				t.Errorf("row %d %s = %v, want %s", i, k, rows[i][k], v)
			}
		}
	}
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}
