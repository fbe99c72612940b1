package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report/kgsim"
)

// TestServePushesToKooGallery runs the whole job with real processes: `meterd kgsim` as KooGallery (with lost
// answers and 5xx injected), `meterd serve` with the key from the environment. Usage of hours that have ended is
// ingested, serve restarts, catches up (close, build, push with retries) and every record ends ACCEPTED, billed
// exactly once by the simulator, with the amounts the plan gives.
func TestServePushesToKooGallery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const key = "e2e-interconnection-key"
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key, "--fail-rate", "0.3", "--lost-rate", "0.2", "--seed", "3")
	defer func() { _ = sim.Process.Signal(syscall.SIGTERM); _ = sim.Wait() }()

	dir := t.TempDir()
	cfg := fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: tier, brackets: [{up_to: "2", unit_price: "0.5"}, {unit_price: "0.25"}]}
instances:
  - {instance_id: i-a, subject: a, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
  - {instance_id: i-b, subject: b, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
koogallery: {endpoint: %s%s, timeout: 2s}
push: {retry_initial: 100ms, retry_max: 500ms}
store: {sqlite: {path: %s}}
`, simURL, kgsim.DefaultPath, filepath.Join(dir, "meterd.db"))
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"METERD_KOOGALLERY_KEY=" + key}
	h1 := time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)
	srv, base, logs := startServe(t, cfgPath, env...)
	var body strings.Builder
	// a: 1 call in h1, 3 in h1+1h; b: 2 calls in h1.
	for i, ev := range []struct {
		subject string
		at      time.Duration
	}{{"a", 5 * time.Minute}, {"a", 65 * time.Minute}, {"a", 70 * time.Minute}, {"a", 75 * time.Minute}, {"b", 10 * time.Minute}, {"b", 20 * time.Minute}} {
		fmt.Fprintf(&body, `{"specversion":"1.0","id":"c%d","source":"e2e","type":"api_call","subject":%q,"time":%q}`+"\n",
			i, ev.subject, h1.Add(ev.at).Format(time.RFC3339))
	}
	if resp, err := (&ingest.Client{URL: base + "/v1/events"}).PostNDJSON(t.Context(), []byte(body.String())); err != nil || resp.Accepted != 6 {
		t.Fatalf("ingest: %+v %v", resp, err)
	}
	_ = srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs)
	}
	srv, base, logs = startServe(t, cfgPath, env...)
	defer func() { _ = srv.Process.Signal(syscall.SIGTERM); _ = srv.Wait() }()

	records := waitAccepted(t, base, h1, 3, 60*time.Second, func() string { return fmt.Sprintf("serve:\n%s\nkgsim:\n%s", logs, simLogs) })
	// Tier: 1 call -> 0.5; 3 calls -> 3 x 0.25 = 0.75; 2 calls -> 2 x 0.5 = 1 (an upper bound is in the lower bracket).
	want := map[string][2]string{
		"i-a " + h1.Format(time.RFC3339):                {"1", "0.5"},
		"i-a " + h1.Add(time.Hour).Format(time.RFC3339): {"3", "0.75"},
		"i-b " + h1.Format(time.RFC3339):                {"2", "1"},
	}
	for _, r := range records {
		w, ok := want[r.InstanceID+" "+r.Hour]
		if !ok || r.UsageValue != w[0] || r.Amount != w[1] {
			t.Errorf("record %+v, want usage %v", r, w)
		}
	}
	billed, err := kgsim.FetchBilled(t.Context(), http.DefaultClient, simURL)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, b := range billed {
		seen[b.InstanceID+" "+b.BeginTime.Format(time.RFC3339)]++
	}
	if len(seen) != 3 {
		t.Fatalf("billed %v", seen)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s billed %d times", k, n)
		}
	}
	if strings.Contains(logs.String(), key) || strings.Contains(simLogs.String(), key) {
		t.Error("a log contains the KooGallery key")
	}
}
