//go:build integration

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/report/kgsim"
)

// proc is one meterd process of the deployment under test.
type proc struct {
	name string
	cmd  *exec.Cmd
	base string
	logs fmt.Stringer
}

// TestScaleOutEndToEnd runs the scale-out deployment with real processes on a real Kafka and ClickHouse: one API
// producing to Kafka, two collectors in one group, two schedulers electing one through Kafka, and `meterd kgsim`
// with 5xx and lost answers. Midway one collector is killed with SIGKILL (the group rebalances), the same events
// are produced a second time straight to Kafka (counted once), and the leading scheduler is killed with SIGKILL
// in the middle of its push (the other takes over). Every instance-hour is billed exactly once with the exact
// totals of the events sent, and finance's report agrees.
func TestScaleOutEndToEnd(t *testing.T) {
	chAddr, broker := services.ClickHouse(t), services.Kafka(t)
	db := services.Database(t, chAddr)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	const key = "scale-out-interconnection-key"
	// Latency makes a push of all the records take a few seconds, so the leader can be killed in the middle.
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key, "--fail-rate", "0.2",
		"--lost-rate", "0.2", "--latency", "150ms", "--seed", "11")
	defer func() { _ = sim.Process.Signal(syscall.SIGTERM); _ = sim.Wait() }()

	const instances = 8
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
plans:
  - {sku: TOK, meter: tokens, currency: CNY, mode: fixed, unit_price: "0.01"}
koogallery: {endpoint: %s%s, timeout: 2s, batch_size: 2}
push: {retry_initial: 100ms, retry_max: 500ms}
store: {driver: clickhouse, clickhouse: {addr: %q, database: %s}}
kafka:
  brokers: [%q]
  topic: events-%s
  dlq_topic: events-dlq-%s
  group_id: collectors-%s
  control_topic: control-%s
  scheduler_group_id: schedulers-%s
  partitions: 4
  batch_size: 50
  batch_wait: 50ms
instances:
`, simURL, kgsim.DefaultPath, chAddr, db, broker, suffix, suffix, suffix, suffix, suffix)
	for i := range instances {
		fmt.Fprintf(&cfg, "  - {instance_id: i-%d, subject: s%d, meter: tokens, sku: TOK, started_at: \"2026-01-01T00:00:00Z\"}\n", i, i)
	}
	cfgPath := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"METERD_KOOGALLERY_KEY=" + key, "METERD_LISTEN=127.0.0.1:0"}
	start := func(name, role string) *proc {
		cmd, base, logs := startProc(t, env, "serve", "--config", cfgPath, "--role", role)
		cleanupKill(t, cmd)
		return &proc{name: name, cmd: cmd, base: base, logs: logs}
	}
	api := start("api", "api")
	collectors := []*proc{start("collector-a", "collector"), start("collector-b", "collector")}
	dump := func() string {
		var s strings.Builder
		for _, p := range append([]*proc{api}, collectors...) {
			fmt.Fprintf(&s, "--- %s\n%s\n", p.name, p.logs)
		}
		fmt.Fprintf(&s, "--- kgsim\n%s\n", simLogs)
		return s.String()
	}

	// Three ended hours: instance i, hour h, event k carries tokens (i+h+k).25.
	h1 := time.Now().UTC().Truncate(time.Hour).Add(-4 * time.Hour)
	want := map[string]decimal.Decimal{}
	var lines []string
	for i := range instances {
		for h := range 3 {
			hour := h1.Add(time.Duration(h) * time.Hour)
			for k := range 25 {
				tokens := decimal.New(int64(100*(i+h+k))+25, -2)
				lines = append(lines, fmt.Sprintf(`{"specversion":"1.0","id":"e-%d-%d-%d","source":"scale","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":%s}}`,
					i, h, k, i, hour.Add(time.Duration(2*k)*time.Minute).Format(time.RFC3339), tokens))
				k := fmt.Sprintf("i-%d %s", i, hour.Format(time.RFC3339))
				want[k] = want[k].Add(tokens)
			}
		}
	}
	client := &ingest.Client{URL: api.base + "/v1/events"}
	post := func(part []string) {
		t.Helper()
		resp, err := client.PostNDJSON(t.Context(), []byte(strings.Join(part, "\n")+"\n"))
		if err != nil || resp.Accepted != len(part) {
			t.Fatalf("ingest: %+v %v\n%s", resp, err, dump())
		}
	}
	half := len(lines) / 2
	post(lines[:half])
	// A collector dies mid-stream: its partitions move to the other one, nothing acknowledged is lost.
	if err := collectors[0].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = collectors[0].cmd.Wait()
	post(lines[half:])
	// The same events once more, produced straight to the topic: collectors count them as duplicates.
	send := runCLI(t, "events", "send", "--to", fmt.Sprintf("kafka://%s/events-%s", broker, suffix), "--file",
		writeFile(t, dir, "again.ndjson", strings.Join(lines, "\n")+"\n"))
	if send.code != 0 {
		t.Fatalf("events send to kafka: %s", send)
	}
	collectors[0] = start("collector-a2", "collector")

	// Two schedulers; one is elected. Kill the leader once the push has started.
	schedulers := []*proc{start("scheduler-a", "scheduler"), start("scheduler-b", "scheduler")}
	dumpAll := func() string {
		s := dump()
		for _, p := range schedulers {
			s += fmt.Sprintf("--- %s\n%s\n", p.name, p.logs)
		}
		return s
	}
	var leader *proc
	deadline := time.Now().Add(90 * time.Second)
	for leader == nil {
		billed, err := kgsim.FetchBilled(t.Context(), http.DefaultClient, simURL)
		if err != nil {
			t.Fatal(err)
		}
		if len(billed) > 0 {
			for _, p := range schedulers {
				if strings.Contains(p.logs.String(), "scheduler election: leading") {
					leader = p
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no push started:\n%s", dumpAll())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := leader.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = leader.cmd.Wait()
	billedAtKill, _ := kgsim.FetchBilled(t.Context(), http.DefaultClient, simURL)

	records := waitAccepted(t, api.base, h1, len(want), 150*time.Second, func() string {
		return fmt.Sprintf("%d billed when the leader was killed\n%s", len(billedAtKill), dumpAll())
	})
	for _, r := range records {
		if w := want[r.InstanceID+" "+r.Hour]; w.String() != r.UsageValue {
			t.Errorf("record %+v, want usage %s", r, w)
		}
	}
	if len(billedAtKill) >= len(want) {
		t.Errorf("the leader was killed after the push had finished (%d billed): the takeover was not exercised", len(billedAtKill))
	}
	checkBilledExactly(t, simURL, want)
	for _, p := range append(append([]*proc{api}, collectors...), schedulers...) {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			_ = p.cmd.Wait()
		}
		if strings.Contains(p.logs.String(), key) {
			t.Errorf("%s logged the KooGallery key", p.name)
		}
	}

	// Finance's report over the same store agrees with the events sent.
	res := runReport(t, "report", "reconcile", "--config", cfgPath, "--from", h1.Format(time.RFC3339),
		"--to", h1.Add(3*time.Hour).Format(time.RFC3339), "--format", "json")
	if res.code != 0 {
		t.Fatalf("report: %s", res)
	}
	var rep struct {
		Totals struct {
			ByInstance []struct {
				InstanceID    string `json:"instance_id"`
				Events        int64  `json:"events"`
				AcceptedUsage string `json:"accepted_usage"`
			} `json:"by_instance"`
		} `json:"totals"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("report JSON: %v", err)
	}
	if len(rep.Totals.ByInstance) != instances {
		t.Fatalf("report has %d instances, want %d", len(rep.Totals.ByInstance), instances)
	}
	for _, it := range rep.Totals.ByInstance {
		var sum decimal.Decimal
		for h := range 3 {
			sum = sum.Add(want[it.InstanceID+" "+h1.Add(time.Duration(h)*time.Hour).Format(time.RFC3339)])
		}
		if a, _ := decimal.NewFromString(it.AcceptedUsage); it.Events != 75 || !a.Equal(sum) {
			t.Errorf("report %+v, want 75 events and %s accepted", it, sum)
		}
	}
}

// localService runs deploy/local/NAME.sh with args (up, down) on the services the tests use.
func localService(t *testing.T, name string, args ...string) {
	t.Helper()
	if os.Getenv("METERD_TEST_CLICKHOUSE") != "" || os.Getenv("METERD_TEST_KAFKA") != "" {
		t.Fatalf("this test restarts the local %s of deploy/local; unset METERD_TEST_CLICKHOUSE and METERD_TEST_KAFKA", name)
	}
	cmd := exec.Command(repoPath("deploy", "local", name+".sh"), args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s.sh %v: %v\n%s", name, args, err, out)
	}
}

// TestScaleOutSurvivesClickHouseRestart: ClickHouse stops in the middle of the stream. The API keeps
// acknowledging (Kafka holds the events), the collector's readiness reports the store down and it backs off
// without fetching more, and once ClickHouse is back every acknowledged event is stored exactly once.
func TestScaleOutSurvivesClickHouseRestart(t *testing.T) {
	chAddr, broker := services.ClickHouse(t), services.Kafka(t)
	db := services.Database(t, chAddr)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := hex.EncodeToString(b)
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
store: {driver: clickhouse, clickhouse: {addr: %q, database: %s}}
kafka: {brokers: [%q], topic: ev-%s, dlq_topic: dlq-%s, group_id: col-%s, control_topic: ctl-%s, scheduler_group_id: sch-%s,
  partitions: 3, batch_size: 200, batch_wait: 50ms}
`, chAddr, db, broker, suffix, suffix, suffix, suffix, suffix))
	env := []string{"METERD_LISTEN=127.0.0.1:0"}
	apiCmd, apiBase, apiLogs := startProc(t, env, "serve", "--config", cfgPath, "--role", "api")
	cleanupKill(t, apiCmd)
	colCmd, colBase, colLogs := startProc(t, env, "serve", "--config", cfgPath, "--role", "collector")
	cleanupKill(t, colCmd)
	t.Cleanup(func() {
		// Whatever happened, leave ClickHouse running for the tests after this one.
		localService(t, "clickhouse", "up")
	})

	client := &ingest.Client{URL: apiBase + "/v1/events"}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Hour)
	sent := 0
	post := func(n int) {
		t.Helper()
		var body strings.Builder
		for range n {
			fmt.Fprintf(&body, `{"specversion":"1.0","id":"r-%d","source":"restart","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":1}}`+"\n",
				sent, sent%7, at.Add(time.Duration(sent%3000)*time.Second).Format(time.RFC3339))
			sent++
		}
		resp, err := client.PostNDJSON(t.Context(), []byte(body.String()))
		if err != nil || resp.Accepted != n {
			t.Fatalf("ingest: %+v %v\napi:\n%s\ncollector:\n%s", resp, err, apiLogs, colLogs)
		}
	}
	stored := func() (uint64, error) {
		conn, err := ch.Open(&ch.Options{Addr: []string{chAddr}, Auth: ch.Auth{Database: db}})
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		var n uint64
		err = conn.QueryRow(t.Context(), "SELECT uniqExact(source, id) FROM events").Scan(&n)
		return n, err
	}
	waitStored := func(want int) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			n, err := stored()
			if err == nil && n == uint64(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("stored %d (%v), want %d\ncollector:\n%s", n, err, want, colLogs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for range 5 {
		post(500)
	}
	waitStored(sent)

	localService(t, "clickhouse", "down")
	for range 5 {
		post(500) // acknowledged by Kafka while the store is down
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(colBase + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collector stayed ready with ClickHouse down\n%s", colLogs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // a few failed inserts and backoffs
	localService(t, "clickhouse", "up")
	post(500)
	waitStored(sent)
	// Exactly once: no key stored twice by the retried batches.
	conn, err := ch.Open(&ch.Options{Addr: []string{chAddr}, Auth: ch.Auth{Database: db}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var total, dups uint64
	if err := conn.QueryRow(t.Context(), "SELECT count(), countIf(c > 1) FROM (SELECT count() AS c FROM event_values GROUP BY source, id)").Scan(&total, &dups); err != nil {
		t.Fatal(err)
	}
	if total != uint64(sent) {
		t.Errorf("%d events have meter values, want %d", total, sent)
	}
	t.Logf("%d events; %d keys with a repeated meter-value row (removed at read time by argMin)", total, dups)
	_ = apiCmd.Process.Signal(syscall.SIGTERM)
	_ = colCmd.Process.Signal(syscall.SIGTERM)
	if err := apiCmd.Wait(); err != nil {
		t.Errorf("api: %v\n%s", err, apiLogs)
	}
	if err := colCmd.Wait(); err != nil {
		t.Errorf("collector: %v\n%s", err, colLogs)
	}
}

// TestScaleOutSurvivesKafkaRestart: the broker stops in the middle of the stream. The API answers 503 (retry)
// instead of acknowledging what it could not make durable, clients resend, and once the broker is back every
// acknowledged event is stored exactly once.
func TestScaleOutSurvivesKafkaRestart(t *testing.T) {
	chAddr, broker := services.ClickHouse(t), services.Kafka(t)
	db := services.Database(t, chAddr)
	suffix := services.Name(t, "")
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
store: {driver: clickhouse, clickhouse: {addr: %q, database: %s}}
kafka: {brokers: [%q], topic: ev-%s, dlq_topic: dlq-%s, group_id: col-%s, control_topic: ctl-%s, scheduler_group_id: sch-%s,
  partitions: 3, batch_size: 200, batch_wait: 50ms}
`, chAddr, db, broker, suffix, suffix, suffix, suffix, suffix))
	env := []string{"METERD_LISTEN=127.0.0.1:0"}
	apiCmd, apiBase, apiLogs := startProc(t, env, "serve", "--config", cfgPath, "--role", "api")
	cleanupKill(t, apiCmd)
	colCmd, _, colLogs := startProc(t, env, "serve", "--config", cfgPath, "--role", "collector")
	cleanupKill(t, colCmd)
	t.Cleanup(func() { localService(t, "kafka", "up") })

	client := &ingest.Client{URL: apiBase + "/v1/events"}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Hour)
	acked := 0
	// post sends n new events once; it returns false when the API refused the batch (503: nothing acknowledged).
	post := func(from, n int) bool {
		var body strings.Builder
		for i := from; i < from+n; i++ {
			fmt.Fprintf(&body, `{"specversion":"1.0","id":"k-%d","source":"kafka-restart","type":"llm_request","subject":"s%d","time":%q,"data":{"tokens":2}}`+"\n",
				i, i%5, at.Add(time.Duration(i%3000)*time.Second).Format(time.RFC3339))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		resp, err := (&ingest.Client{URL: client.URL, HTTP: &http.Client{Timeout: 20 * time.Second}}).PostNDJSON(ctx, []byte(body.String()))
		if err != nil {
			return false
		}
		if resp.Accepted != n {
			t.Fatalf("partial acknowledgement %+v", resp)
		}
		return true
	}
	for range 4 {
		if !post(acked, 250) {
			t.Fatalf("ingest failed with Kafka up\n%s", apiLogs)
		}
		acked += 250
	}
	localService(t, "kafka", "down")
	refused := 0
	for range 3 {
		if post(acked, 250) {
			acked += 250 // acknowledged means durable: count it
		} else {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("the API acknowledged every batch with the broker down")
	}
	localService(t, "kafka", "up")
	// Clients resend what was refused; the API recovers without a restart.
	deadline := time.Now().Add(60 * time.Second)
	for sent := 0; sent < 4; {
		if post(acked, 250) {
			acked += 250
			sent++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API did not recover after the broker came back\n%s", apiLogs)
		}
		time.Sleep(time.Second)
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{chAddr}, Auth: ch.Auth{Database: db}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	deadline = time.Now().Add(90 * time.Second)
	for {
		var n uint64
		var sum decimal.Decimal
		err := conn.QueryRow(t.Context(), "SELECT uniqExact(source, id) FROM events").Scan(&n)
		if err == nil && n == uint64(acked) {
			if err := conn.QueryRow(t.Context(), "SELECT sum(v) FROM (SELECT argMin(value, seq) AS v FROM event_values GROUP BY source, id)").Scan(&sum); err != nil {
				t.Fatal(err)
			}
			if !sum.Equal(decimal.NewFromInt(int64(2 * acked))) {
				t.Errorf("stored tokens %s, want %d", sum, 2*acked)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored %d (%v), want %d acknowledged\ncollector:\n%s", n, err, acked, colLogs)
		}
		time.Sleep(300 * time.Millisecond)
	}
	_ = apiCmd.Process.Signal(syscall.SIGTERM)
	_ = colCmd.Process.Signal(syscall.SIGTERM)
	_ = apiCmd.Wait()
	_ = colCmd.Wait()
}
