package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/meterd/meterd/store/sqlite"
	"github.com/meterd/meterd/stream"
)

// liveMetrics runs serve (role all, a KooGallery endpoint configured so that the client's metrics exist) and
// returns its address and the meterd_* metric families it exports, with their types, together with the
// collector families a scale-out collector exports (collectorMetrics).
func liveMetrics(t *testing.T) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "meterd.yaml")
	opsWriteFile(t, cfgPath, fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
koogallery: {endpoint: "http://127.0.0.1:9/unreachable"}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db")))
	addr := opsServeInProcess(t, cfgPath, map[string]string{"METERD_KOOGALLERY_KEY": "observability-test"}, "")
	types := map[string]string{}
	for _, line := range strings.Split(scrape(t, addr), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" && strings.HasPrefix(f[2], "meterd_") {
			types[f[2]] = f[3]
		}
	}
	if len(types) < 30 {
		t.Fatalf("only %d meterd metrics exported", len(types))
	}
	for name, typ := range collectorMetrics(t) {
		if types[name] != "" {
			t.Fatalf("%s is exported by the embedded serve and by the collectors", name)
		}
		types[name] = typ
	}
	return addr, types
}

// collectorMetrics returns the metric families a collector registers (stream.NewMetrics, as startScaleOut calls it)
// with their types. The embedded serve of liveMetrics has no Kafka, so they are read from the registration: a
// vector without label values yet (the per-partition gauges before the first commit) is registered but not
// gathered. A gather of the same metrics, a partition's lag touched, must agree with it.
func collectorMetrics(t *testing.T) map[string]string {
	t.Helper()
	var captured captureRegisterer
	stream.NewMetrics(&captured)
	types := map[string]string{}
	fqName := regexp.MustCompile(`fqName: "([a-z0-9_]+)"`)
	for _, c := range captured {
		var typ string
		switch c.(type) { // Gauge before Counter: a gauge has Inc and Add too
		case prometheus.Gauge, *prometheus.GaugeVec:
			typ = "gauge"
		case prometheus.Counter, *prometheus.CounterVec:
			typ = "counter"
		case prometheus.Histogram, *prometheus.HistogramVec:
			typ = "histogram"
		default:
			t.Fatalf("collector metric %T: unknown kind", c)
		}
		descs := make(chan *prometheus.Desc, 16)
		c.Describe(descs)
		close(descs)
		for d := range descs {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil || !strings.HasPrefix(m[1], "meterd_collector_") {
				t.Fatalf("collector metric %s: not meterd_collector_*", d)
			}
			types[m[1]] = typ
		}
	}
	reg := prometheus.NewRegistry()
	stream.NewMetrics(reg).LagGauge(0).Set(1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if typ := strings.ToLower(mf.GetType().String()); types[mf.GetName()] != typ {
			t.Errorf("collector metric %s: gathered as %s, registered as %q", mf.GetName(), typ, types[mf.GetName()])
		}
	}
	if len(types) < 10 || len(mfs) < len(types)-1 {
		t.Fatalf("collector metrics: %d registered, %d gathered", len(types), len(mfs))
	}
	return types
}

// captureRegisterer keeps what is registered with it.
type captureRegisterer []prometheus.Collector

func (r *captureRegisterer) Register(c prometheus.Collector) error {
	*r = append(*r, c)
	return nil
}

func (r *captureRegisterer) MustRegister(cs ...prometheus.Collector) { *r = append(*r, cs...) }

func (r *captureRegisterer) Unregister(prometheus.Collector) bool { return false }

var metricRef = regexp.MustCompile(`\b(meterd_[a-z0-9_]+|up|ALERTS)\b`)

// checkMetricRefs fails for every metric name in expr that serve does not export (histogram series by family).
func checkMetricRefs(t *testing.T, where, expr string, live map[string]string) int {
	t.Helper()
	n := 0
	for _, name := range metricRef.FindAllString(expr, -1) {
		if name == "up" || name == "ALERTS" || strings.HasSuffix(name, "_") {
			continue
		}
		n++
		base := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suf); ok && live[b] == "histogram" {
				base = b
			}
		}
		if live[base] == "" {
			t.Errorf("%s: %s is not exported by meterd serve", where, name)
		}
	}
	return n
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name  string `yaml:"name"`
		Cases []struct {
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// markdownAnchors returns the GitHub anchors of a markdown file's headings.
func markdownAnchors(text string) map[string]bool {
	out := map[string]bool{}
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(text, "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			h = strings.TrimLeft(h, "#")
			a := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), ""), " ", "-")
			out[a] = true
		}
	}
	return out
}

const runbookBase = "https://github.com/meterd/meterd/blob/main/docs/runbooks.md#"

// TestObservabilityArtifacts checks the alert rules, their promtool tests, the metrics catalog, the dashboard and
// the runbooks against one another and against what a running serve exports.
func TestObservabilityArtifacts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a server")
	}
	addr, live := liveMetrics(t)
	runbooks := readRepoFile(t, "docs", "runbooks.md")
	anchors := markdownAnchors(runbooks)

	var rules ruleFile
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy", "prometheus", "meterd.rules.yml")), &rules); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	t.Run("rules", func(t *testing.T) {
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				alerts[r.Alert] = true
				if s := r.Labels["severity"]; s != "critical" && s != "warning" {
					t.Errorf("%s: severity %q", r.Alert, s)
				}
				anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
				if !ok || anchor != strings.ToLower(r.Alert) || !anchors[anchor] {
					t.Errorf("%s: runbook_url %q must be %s%s, a section of docs/runbooks.md", r.Alert, r.Annotations["runbook_url"], runbookBase, strings.ToLower(r.Alert))
				}
				if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("%s: summary and description wanted", r.Alert)
				}
				if checkMetricRefs(t, r.Alert, r.Expr, live) == 0 && !strings.Contains(r.Expr, "up{") {
					t.Errorf("%s: its expression names no meterd metric", r.Alert)
				}
				if regexp.MustCompile(`\b900\b|15 \* 60`).MatchString(r.Expr) {
					t.Errorf("%s: hard-codes the 15-minute deadline; compare exported timestamps with time()", r.Alert)
				}
			}
		}
		for _, want := range []string{"MeterdDeadlineAtRisk", "MeterdDeadlineMissed", "MeterdForcedClose", "MeterdPushHalted",
			"MeterdPushErrorRate", "MeterdClockSkew", "MeterdCloseStalled", "MeterdIngestConflicts", "MeterdIngestRejectsRising",
			"MeterdUnmatchedUsage", "MeterdSDRsRejected", "MeterdSDRCollision", "MeterdSDRsHeld", "MeterdFrozenSDRsNearExpiry",
			"MeterdPushDisabled", "MeterdPushPaused", "MeterdNoScheduler", "MeterdDiskNearlyFull", "MeterdDown",
			"MeterdInvariantBroken", "MeterdCollectorLagGrowing", "MeterdCollectorStalled", "MeterdCollectorStoreFailing",
			"MeterdDeadLettersRising", "MeterdNoCollector"} {
			if !alerts[want] {
				t.Errorf("alert %s missing", want)
			}
		}
		// Every section of the runbooks' alert part names a real alert (no stale runbooks).
		for _, m := range regexp.MustCompile(`(?m)^### (Meterd\w+)$`).FindAllStringSubmatch(runbooks, -1) {
			if !alerts[m[1]] {
				t.Errorf("docs/runbooks.md has a section for %s, which is no alert", m[1])
			}
		}
	})

	t.Run("promtool tests cover every alert", func(t *testing.T) {
		var rt ruleTests
		if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy", "prometheus", "meterd.rules_test.yml")), &rt); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(rt.RuleFiles, []string{"meterd.rules.yml"}) {
			t.Errorf("rule_files %v", rt.RuleFiles)
		}
		firing, silent := map[string]bool{}, map[string]bool{}
		for _, tc := range rt.Tests {
			for _, c := range tc.Cases {
				if len(c.ExpAlerts) > 0 {
					firing[c.Alertname] = true
				} else {
					silent[c.Alertname] = true
				}
			}
		}
		for a := range alerts {
			if !firing[a] || !silent[a] {
				t.Errorf("%s: promtool tests must show it firing (%v) and not firing (%v)", a, firing[a], silent[a])
			}
		}
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("promtool not installed (Debian package prometheus); .ci/run runs it")
		}
		for _, args := range [][]string{{"check", "rules", "meterd.rules.yml"}, {"test", "rules", "meterd.rules_test.yml"}} {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = repoPath("deploy", "prometheus")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool %v: %v\n%s", args, err, out)
			}
		}
	})

	t.Run("catalog", func(t *testing.T) {
		doc := readRepoFile(t, "docs", "metrics.md")
		row := regexp.MustCompile("(?m)^\\| `(meterd_[a-z0-9_]+)` \\| (counter|gauge|histogram) \\|.*\\|([^|]*)\\|$")
		documented := map[string]bool{}
		for _, m := range row.FindAllStringSubmatch(doc, -1) {
			documented[m[1]] = true
			if live[m[1]] != m[2] {
				t.Errorf("docs/metrics.md: %s is a %s, serve exports %q", m[1], m[2], live[m[1]])
			}
			for _, a := range regexp.MustCompile(`Meterd\w+`).FindAllString(m[3], -1) {
				if !alerts[a] {
					t.Errorf("docs/metrics.md: %s names alert %s, which does not exist", m[1], a)
				}
			}
		}
		for name := range live {
			if !documented[name] {
				t.Errorf("docs/metrics.md does not document %s", name)
			}
		}
		checkMetricRefs(t, "docs/metrics.md", doc, live)
	})

	t.Run("dashboard", func(t *testing.T) {
		var dash struct {
			UID    string `json:"uid"`
			Title  string `json:"title"`
			Panels []struct {
				Type    string `json:"type"`
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
			Templating struct {
				List []struct {
					Name string `json:"name"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal([]byte(readRepoFile(t, "deploy", "grafana", "meterd.json")), &dash); err != nil {
			t.Fatal(err)
		}
		if dash.UID == "" || dash.Title == "" || len(dash.Panels) < 10 {
			t.Fatalf("dashboard uid %q title %q panels %d", dash.UID, dash.Title, len(dash.Panels))
		}
		if dash.Panels[0].Type != "row" || !strings.HasPrefix(dash.Panels[0].Title, "Deadline") ||
			!strings.Contains(dash.Panels[1].Targets[0].Expr, "meterd_push_oldest_unaccepted_due_timestamp_seconds") {
			t.Error("the dashboard must open on the deadline: the oldest unaccepted SDR's due time first")
		}
		vars := map[string]bool{}
		for _, v := range dash.Templating.List {
			vars[v.Name] = true
		}
		used := map[string]bool{}
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				checkMetricRefs(t, "dashboard "+p.Title, tg.Expr, live)
				for _, v := range regexp.MustCompile(`\$(\w+)`).FindAllStringSubmatch(tg.Expr, -1) {
					if !vars[v[1]] && !strings.HasPrefix(v[1], "__") {
						t.Errorf("dashboard %s: variable $%s is not defined", p.Title, v[1])
					}
				}
				for _, m := range metricRef.FindAllString(tg.Expr, -1) {
					used[m] = true
				}
			}
		}
		for _, must := range []string{"meterd_push_sdrs_past_deadline", "meterd_push_sdrs", "meterd_push_attempts_total",
			"meterd_ingest_events_total", "meterd_aggregate_hours_closed_total", "meterd_store_disk_free_bytes",
			"meterd_collector_lag_messages", "meterd_collector_events_total", "meterd_collector_insert_duration_seconds_bucket",
			"meterd_collector_dead_letters_total"} {
			if !used[must] {
				t.Errorf("the dashboard shows no %s", must)
			}
		}
	})

	t.Run("runbook API paths", func(t *testing.T) {
		n := 0
		for _, m := range regexp.MustCompile(`\$M(/[a-z0-9/_]*)`).FindAllStringSubmatch(runbooks, -1) {
			n++
			res, err := http.Get("http://" + addr + m[1])
			if err != nil {
				t.Fatal(err)
			}
			_ = res.Body.Close()
			if res.StatusCode == http.StatusNotFound || res.StatusCode == http.StatusMethodNotAllowed {
				t.Errorf("docs/runbooks.md: GET %s answers %s", m[1], res.Status)
			}
		}
		if n < 10 {
			t.Errorf("only %d API paths found in the runbooks", n)
		}
	})

	t.Run("runbook SQL", func(t *testing.T) {
		sqlite3, err := exec.LookPath("sqlite3")
		if err != nil {
			t.Skip("sqlite3 not installed")
		}
		db := filepath.Join(t.TempDir(), "meterd.db")
		st, err := sqlite.Open(t.Context(), db, sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		// Every `sqlite3 ... "$DB" "SQL"` of the runbooks runs on a migrated store, as written.
		q := regexp.MustCompile(`(?s)sqlite3 -readonly[^"\n]*"\$DB" "([^"]*)"`)
		found := q.FindAllStringSubmatch(runbooks, -1)
		for _, m := range found {
			if strings.HasPrefix(m[1], ".") {
				continue // a dot-command of the shell (.backup), not SQL
			}
			out, err := exec.Command(sqlite3, "-readonly", "-bail", db, m[1]).CombinedOutput()
			if err != nil {
				t.Errorf("runbook query fails: %v\n%s\n%s", err, out, m[1])
			}
		}
		if len(found) < 10 {
			t.Errorf("only %d runbook queries found", len(found))
		}
		if _, err := os.Stat(db); err != nil {
			t.Fatal(err)
		}
	})
}
