//go:build integration

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report/kgsim"
)

// TestPrometheusDeadlineAlertFires runs the on-call path end to end with real processes on loopback: `meterd
// kgsim` as a KooGallery that never answers (every call held until the client times out), `meterd serve`
// pushing to it with usage two hours old, and Debian's Prometheus scraping serve every second and evaluating the
// shipped rules (deploy/prometheus/meterd.rules.yml) every second. The hour's SDRs are past their deadline at
// once, nothing is billed, and MeterdDeadlineMissed must be firing in Prometheus's own /api/v1/alerts (and as an
// ALERTS series through /api/v1/query). On the way it checks that every shipped rule evaluates without error on
// real series and that every query of the Grafana dashboard runs. Bounded (100 s), loopback only, temporary
// directories. Needs the `prometheus` binary (Debian package prometheus); .ci/run installs it.
func TestPrometheusDeadlineAlertFires(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found on PATH (apt-get install prometheus): %v", err)
	}
	rules, err := filepath.Abs("../../deploy/prometheus/meterd.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Second)
	defer cancel()

	const key = "alert-integration-key"
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key, "--timeout-rate", "1")
	defer opsStop(sim)

	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meterd.yaml")
	cfg := fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: fixed, unit_price: "0.5"}
instances:
  - {instance_id: i-a, subject: a, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
  - {instance_id: i-b, subject: b, meter: calls, sku: CALLS, started_at: "2026-01-01T00:00:00Z"}
koogallery: {endpoint: %s%s, timeout: 1s}
push: {retry_initial: 200ms, retry_max: 1s}
store: {sqlite: {path: %s}}
`, simURL, kgsim.DefaultPath, filepath.Join(dir, "meterd.db"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"METERD_KOOGALLERY_KEY=" + key}

	// Usage two hours old: its hour closed long ago and its SDRs were due 45 minutes ago at the latest.
	srv, base, logs := startServe(t, cfgPath, env...)
	at := time.Now().UTC().Add(-2 * time.Hour)
	var body strings.Builder
	for i, subject := range []string{"a", "a", "b"} {
		fmt.Fprintf(&body, `{"specversion":"1.0","id":"old-%d","source":"alert-test","type":"api_call","subject":%q,"time":%q}`+"\n",
			i, subject, at.Add(time.Duration(i)*time.Second).Format(time.RFC3339))
	}
	if resp, err := (&ingest.Client{URL: base + "/v1/events"}).PostNDJSON(ctx, []byte(body.String())); err != nil || resp.Accepted != 3 {
		opsStop(srv)
		t.Fatalf("ingest: %+v %v\n%s", resp, err, logs)
	}
	// Restart: the close and the push run at start, so the catch-up happens now instead of at the next minute.
	if err := opsStop(srv); err != nil {
		t.Fatalf("serve: %v\n%s", err, logs)
	}
	srv, base, logs = startServe(t, cfgPath, env...)
	defer opsStop(srv)
	metricsAddr := strings.TrimPrefix(base, "http://")

	promAddr := opsFreeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: meterd
    static_configs:
      - targets: ['%s']
`, rules, metricsAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	var promLogs bytes.Buffer
	prom := exec.Command(promBin, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom.Stdout, prom.Stderr = &promLogs, &promLogs
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	defer opsStop(prom)
	promURL := "http://" + promAddr

	hc := &http.Client{Timeout: 2 * time.Second}
	dump := func() string {
		return fmt.Sprintf("serve:\n%s\nkgsim:\n%s\nprometheus:\n%s", logs, simLogs, &promLogs)
	}
	opsWaitFor(ctx, t, "prometheus ready", dump, func() (bool, string) {
		res, err := hc.Get(promURL + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, res.Status
	})

	type alert struct {
		Labels map[string]string `json:"labels"`
		State  string            `json:"state"`
		Value  string            `json:"value"`
	}
	var firing []alert
	opsWaitFor(ctx, t, "MeterdDeadlineMissed firing", dump, func() (bool, string) {
		var out struct {
			Status string `json:"status"`
			Data   struct {
				Alerts []alert `json:"alerts"`
			} `json:"data"`
		}
		if err := opsGetJSON(hc, promURL+"/api/v1/alerts", &out); err != nil {
			return false, err.Error()
		}
		firing = firing[:0]
		for _, a := range out.Data.Alerts {
			if a.State == "firing" {
				firing = append(firing, a)
			}
		}
		for _, a := range firing {
			if a.Labels["alertname"] == "MeterdDeadlineMissed" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("alerts now: %+v", out.Data.Alerts)
	})
	var missed alert
	for _, a := range firing {
		if a.Labels["alertname"] == "MeterdDeadlineMissed" {
			missed = a
		}
	}
	if missed.Labels["severity"] != "critical" || missed.Labels["job"] != "meterd" || missed.Labels["instance"] != metricsAddr {
		t.Errorf("MeterdDeadlineMissed labels %v", missed.Labels)
	}

	// The same through the query API: the ALERTS series, and the gauges the rule compares with time().
	var q struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := opsGetJSON(hc, promURL+`/api/v1/query?query=`+url.QueryEscape(`ALERTS{alertname="MeterdDeadlineMissed",alertstate="firing"}`), &q); err != nil || len(q.Data.Result) != 1 {
		t.Errorf("ALERTS query: %+v %v", q, err)
	}
	if err := opsGetJSON(hc, promURL+`/api/v1/query?query=`+url.QueryEscape(`time() - meterd_push_oldest_unaccepted_due_timestamp_seconds`), &q); err != nil || len(q.Data.Result) != 1 {
		t.Fatalf("due query: %+v %v", q, err)
	}
	var lateBy float64
	if s, ok := q.Data.Result[0].Value[1].(string); !ok || func() error { _, err := fmt.Sscan(s, &lateBy); return err }() != nil || lateBy < 40*60 {
		t.Errorf("the oldest unaccepted SDR is late by %v s, want at least 40 minutes (usage two hours old)", q.Data.Result[0].Value[1])
	}

	// Every rule evaluates without error on real series (vector matching, duplicate series), not only on
	// promtool's hand-written ones.
	opsWaitFor(ctx, t, "every rule evaluated and healthy", dump, func() (bool, string) {
		var out struct {
			Data struct {
				Groups []struct {
					Rules []struct {
						Name      string `json:"name"`
						Health    string `json:"health"`
						LastError string `json:"lastError"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if err := opsGetJSON(hc, promURL+"/api/v1/rules", &out); err != nil {
			return false, err.Error()
		}
		n := 0
		for _, g := range out.Data.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health == "err" {
					t.Fatalf("rule %s fails on real series: %s", r.Name, r.LastError)
				}
				if r.Health != "ok" {
					return false, r.Name + " not evaluated yet"
				}
			}
		}
		return n > 20, fmt.Sprintf("%d rules", n)
	})

	// Every dashboard query runs on the real series.
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	raw, err := os.ReadFile("../../deploy/grafana/meterd.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$job", ".+", "$instance", ".+", "$__rate_interval", "1m")
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			var out struct {
				Status string `json:"status"`
			}
			if err := opsGetJSON(hc, promURL+"/api/v1/query?query="+url.QueryEscape(vars.Replace(tg.Expr)), &out); err != nil || out.Status != "success" {
				t.Errorf("dashboard panel %q: query %s: %v %s", p.Title, tg.Expr, err, out.Status)
			}
		}
	}

	// KooGallery stalled: every call was held, nothing billed; the records are still waiting.
	var stats kgsim.Stats
	if err := opsGetJSON(hc, simURL+"/_sim/stats", &stats); err != nil {
		t.Fatal(err)
	}
	if stats.Held == 0 || stats.Billed != 0 {
		t.Errorf("simulator stats %+v: want calls held and nothing billed", stats)
	}
	for _, a := range firing {
		if a.Labels["alertname"] == "MeterdDown" || a.Labels["alertname"] == "MeterdNoScheduler" {
			t.Errorf("unexpected alert firing: %v", a.Labels)
		}
	}
}

// opsStop sends SIGTERM and waits; a process that does not stop within 20 s is killed.
func opsStop(cmd *exec.Cmd) error {
	if cmd.ProcessState != nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		return <-done
	}
}

// opsFreeAddr returns a loopback address whose port was free a moment ago.
func opsFreeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// opsWaitFor polls cond every 250 ms until it holds or ctx ends.
func opsWaitFor(ctx context.Context, t *testing.T, what string, dump func() string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (last: %s)\n%s", what, last, dump())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func opsGetJSON(hc *http.Client, url string, v any) error {
	res, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	return json.NewDecoder(res.Body).Decode(v)
}
