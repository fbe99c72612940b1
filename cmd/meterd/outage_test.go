package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report/kgsim"
)

// TestKooGalleryOutageAlertsThenCatchesUpOldestFirst: KooGallery is unreachable (nothing listens at the
// endpoint) while serve holds five hours of usage, 2 to 6 hours old: to meterd that is an outage of hours of
// simulated time, every SDR past its deadline. The alert inputs say so on /metrics
// (meterd_push_sdrs_past_deadline = all of them, meterd_push_oldest_unaccepted_due_timestamp_seconds = the
// oldest hour's due time, in the past), nothing is lost or rejected, and once KooGallery answers again every SDR
// is pushed, oldest hour first, billed once, and the alert inputs clear.
func TestKooGalleryOutageAlertsThenCatchesUpOldestFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	const key = "outage-test-key"
	simAddr := freeAddr(t) // KooGallery: nobody listens here until the outage ends
	dir := t.TempDir()
	cur := time.Now().UTC().Truncate(time.Hour)
	first := cur.Add(-6 * time.Hour)
	const hours, instances = 5, 3
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: fixed, unit_price: "1"}
instances:
  - {instance_id: i-0, subject: s0, meter: calls, sku: CALLS, started_at: "%[1]s"}
  - {instance_id: i-1, subject: s1, meter: calls, sku: CALLS, started_at: "%[1]s"}
  - {instance_id: i-2, subject: s2, meter: calls, sku: CALLS, started_at: "%[1]s"}
koogallery: {endpoint: http://%[2]s%[3]s, timeout: 1s, batch_size: 2}
push: {retry_initial: 100ms, retry_max: 500ms}
store: {sqlite: {path: %[4]s/meterd.db}}
`, cur.Add(-24*time.Hour).Format(time.RFC3339), simAddr, kgsim.DefaultPath, dir))
	env := []string{"METERD_KOOGALLERY_KEY=" + key}

	srv, base, logs := startServe(t, cfgPath, env...)
	cleanupKill(t, srv)
	var body strings.Builder
	for h := 0; h < hours; h++ {
		for i := 0; i < instances; i++ {
			fmt.Fprintf(&body, `{"specversion":"1.0","id":"o-%d-%d","source":"outage","type":"api_call","subject":"s%d","time":%q}`+"\n",
				h, i, i, first.Add(time.Duration(h)*time.Hour+10*time.Minute).Format(time.RFC3339))
		}
	}
	if resp, err := (&ingest.Client{URL: base + "/v1/events"}).PostNDJSON(t.Context(), []byte(body.String())); err != nil || resp.Accepted != hours*instances {
		t.Fatalf("ingest: %+v %v", resp, err)
	}
	stopProc(t, srv, logs)
	srv, base, logs = startServe(t, cfgPath, env...) // closes the five hours at start, and tries to push
	cleanupKill(t, srv)
	defer stopProc(t, srv, logs)

	const n = hours * instances
	wantDue := float64(first.Add(time.Hour + 15*time.Minute).Unix())
	var past, due, retries float64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		past = metric(t, nil, base, "meterd_push_sdrs_past_deadline")
		due = metric(t, nil, base, "meterd_push_oldest_unaccepted_due_timestamp_seconds")
		retries = metric(t, nil, base, `meterd_push_attempts_total{class="retry"}`)
		if past == n && due == wantDue && retries >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("during the outage: past deadline %v (want %d), oldest due %v (want %v), retry attempts %v\n%s", past, n, due, wantDue, retries, logs)
		}
	}
	pending := metric(t, nil, base, `meterd_push_sdrs{state="PENDING"}`) + metric(t, nil, base, `meterd_push_sdrs{state="SENT"}`)
	if pending != n || metric(t, nil, base, `meterd_push_sdrs{state="REJECTED"}`) != 0 {
		t.Fatalf("during the outage: %v pending or sent, want %d, none rejected", pending, n)
	}
	behind := time.Since(time.Unix(int64(due), 0))
	t.Logf("outage: %v SDRs past their deadline, the oldest due %s ago (alert: time() > meterd_push_oldest_unaccepted_due_timestamp_seconds); %v push attempts retried",
		past, behind.Round(time.Minute), retries)

	// KooGallery comes back on the same address.
	back := time.Now()
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", simAddr, "--key", key)
	cleanupKill(t, sim)
	defer stopProc(t, sim, simLogs)
	var caughtUp time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if metric(t, nil, base, `meterd_push_sdrs{state="ACCEPTED"}`) == n && metric(t, nil, base, "meterd_push_sdrs_past_deadline") == 0 {
			caughtUp = time.Since(back)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not caught up 30s after KooGallery came back\n%s\n%s", logs, simLogs)
		}
	}
	if d := metric(t, nil, base, "meterd_push_oldest_unaccepted_due_timestamp_seconds"); d != 0 {
		t.Errorf("oldest unaccepted due %v after the catch-up, want 0", d)
	}
	billed, err := kgsim.FetchBilled(t.Context(), http.DefaultClient, simURL)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	double := 0
	for i, b := range billed {
		if seen[b.InstanceID+b.BeginTime.String()]++; seen[b.InstanceID+b.BeginTime.String()] > 1 {
			double++
		}
		if i > 0 && b.BeginTime.Before(billed[i-1].BeginTime) {
			t.Errorf("billed %s %s after %s %s: not oldest first", b.InstanceID, b.BeginTime, billed[i-1].InstanceID, billed[i-1].BeginTime)
		}
	}
	if len(billed) != n || double != 0 {
		t.Errorf("billed %d records (%d twice), want %d once", len(billed), double, n)
	}
	result(t, fmt.Sprintf("KooGallery unreachable; usage %d-%dh old (outage of hours, simulated)", 2, 6), hours*instances, n-len(billed), 0, double,
		fmt.Sprintf("alert inputs set during the outage (past deadline %v, oldest due %s ago); all %d SDRs ACCEPTED oldest first %.1fs after KooGallery answered again (retry_max 500ms, push every 2s)",
			past, behind.Round(time.Minute), n, caughtUp.Seconds()))
}
