package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/report/kgsim"
)

// TestSecretsNeverLeak runs serve, kgsim, pushes (first with a wrong key, so that the refusal paths log, then
// with the right one from a key file), a SIGHUP key reload, ingest with good, missing and wrong bearer tokens,
// dead letters, and the reconciliation report over HTTP and from the CLI, with a distinctive KooGallery key, a
// distinctive wrong key and a distinctive ingest token. Then it scans everything an operator or an attacker could
// read: every log line of every process, every HTTP answer (401s, /metrics, /v1/records, /v1/reports/reconcile in
// three formats, /v1/usage, /v1/events/rejected, /v1/instances, health, the simulator's read-outs), the report
// files, CLI output, and the bytes of the database and its WAL. None holds a secret.
func TestSecretsNeverLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	t.Parallel()
	const (
		key      = "KEY7f3a9c1e-koogallery-secret"
		wrongKey = "WRONGKEY55d0-koogallery-secret"
		token    = "TOKENb41d2e-ingest-secret"
	)
	secrets := []string{key, wrongKey, token}
	var seen []string // what was scanned, by name, for the failure message
	var corpus bytes.Buffer
	collect := func(name, text string) {
		seen = append(seen, fmt.Sprintf("%s (%d bytes)", name, len(text)))
		corpus.WriteString(text)
		corpus.WriteByte('\n')
	}

	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key)
	cleanupKill(t, sim)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "meterd.db")
	keyFile := writeFile(t, dir, "koogallery.key", "\n  "+key+"  \n")
	tokens := writeFile(t, dir, "tokens", "# ingest\n"+token+"\n")
	cur := time.Now().UTC().Truncate(time.Hour)
	h1 := cur.Add(-3 * time.Hour)
	cfgText := fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: CALLS, meter: calls, currency: CNY, mode: fixed, unit_price: "0.5"}
instances:
  - {instance_id: i-a, subject: a, meter: calls, sku: CALLS, started_at: %q}
koogallery: {endpoint: %s%s, timeout: 2s%%s}
push: {retry_initial: 100ms, retry_max: 300ms}
ingest: {tokens_file: %s}
store: {sqlite: {path: %s}}
`, cur.Add(-24*time.Hour).Format(time.RFC3339), simURL, kgsim.DefaultPath, tokens, dbPath)
	wrongCfg := writeFile(t, dir, "wrong.yaml", fmt.Sprintf(cfgText, ""))
	rightCfg := writeFile(t, dir, "right.yaml", fmt.Sprintf(cfgText, ", key_file: "+keyFile))
	wrongEnv := "METERD_KOOGALLERY_KEY=" + wrongKey

	get := func(base, path, auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, _ := io.ReadAll(res.Body)
		collect(fmt.Sprintf("GET %s (%d)", path, res.StatusCode), fmt.Sprint(res.Header)+string(data))
		return res.StatusCode, string(data)
	}
	post := func(base, body, auth string) int {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/events", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-ndjson")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, _ := io.ReadAll(res.Body)
		collect(fmt.Sprintf("POST /v1/events (%d)", res.StatusCode), fmt.Sprint(res.Header)+string(data))
		return res.StatusCode
	}
	bearer := "Bearer " + token

	// 1. Ingest with the wrong key configured; 401s for missing, wrong and near-miss tokens.
	srv, base, logs := startServe(t, wrongCfg, wrongEnv)
	cleanupKill(t, srv)
	var events strings.Builder
	for i := 0; i < 3; i++ {
		fmt.Fprintf(&events, `{"specversion":"1.0","id":"k%d","source":"secrets","type":"api_call","subject":"a","time":%q}`+"\n",
			i, h1.Add(time.Duration(10+i)*time.Minute).Format(time.RFC3339))
	}
	events.WriteString(`{"specversion":"1.0","id":"bad","source":"secrets","type":"nope","subject":"a","time":"` + h1.Format(time.RFC3339) + `"}` + "\n")
	for i, auth := range []string{"", "Bearer " + token[:len(token)-1], "Bearer " + token + "x", "Basic " + token, "bearer " + wrongKey} {
		if st := post(base, events.String(), auth); st != http.StatusUnauthorized {
			t.Errorf("POST with bad authorization #%d: %d, want 401", i, st)
		}
	}
	if st := post(base, events.String(), bearer); st != http.StatusOK {
		t.Fatalf("POST with the token: %d", st)
	}
	stopProc(t, srv, logs)
	collect("serve 1 log", logs.String())

	// 2. Restart with the wrong key: the close at start, then KooGallery refuses the signature (halt).
	srv, _, logs = startServe(t, wrongCfg, wrongEnv)
	cleanupKill(t, srv)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), "refused the credentials"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal logged:\n%s", logs)
		}
	}
	stopProc(t, srv, logs)
	collect("serve 2 log (wrong key)", logs.String())

	// 3. The right key from a file: everything is accepted; SIGHUP reloads the key.
	srv, base, logs = startServe(t, rightCfg)
	cleanupKill(t, srv)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, body := get(base, "/v1/records?from="+h1.Format(time.RFC3339), bearer); strings.Contains(body, `"state":"ACCEPTED"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not accepted with the right key:\n%s", logs)
		}
	}
	if err := srv.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "key reloaded"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged:\n%s", logs)
		}
	}
	from, to := h1.Format(time.RFC3339), cur.Format(time.RFC3339)
	for _, path := range []string{"/v1/records?from=" + from, "/v1/reports/reconcile?from=" + from + "&to=" + to + "&format=json",
		"/v1/reports/reconcile?from=" + from + "&to=" + to + "&format=csv", "/v1/reports/reconcile?from=" + from + "&to=" + to + "&format=html",
		"/v1/usage?instance_id=i-a&from=" + from, "/v1/events/rejected?limit=100", "/v1/instances"} {
		if st, body := get(base, path, bearer); st != http.StatusOK {
			t.Errorf("GET %s: %d %.200s", path, st, body)
		}
		if st, _ := get(base, path, "Bearer "+wrongKey); st != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d", path, st)
		}
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		get(base, path, "")
	}
	get(simURL, kgsim.RecordsPath, "")
	get(simURL, kgsim.StatsPath, "")
	stopProc(t, srv, logs)
	collect("serve 3 log", logs.String())

	// 4. The CLI: the report into files, a dry-run push, the config check.
	for _, format := range []string{"json", "csv", "html"} {
		out := filepath.Join(dir, "report."+format)
		code, text := runBin(t, nil, "report", "reconcile", "--config", rightCfg, "--from", from, "--to", to, "--format", format, "--out", out)
		collect("reconcile "+format+" output", text)
		data, err := os.ReadFile(out)
		if code != 0 || err != nil {
			t.Fatalf("reconcile %s: exit %d %v\n%s", format, code, err, text)
		}
		collect("report."+format, string(data))
	}
	for _, args := range [][]string{{"push", "--config", rightCfg, "--dry-run"}, {"serve", "--validate", "--config", rightCfg},
		{"push", "--config", wrongCfg}} {
		_, text := runBin(t, []string{wrongEnv}, args...)
		collect(strings.Join(args[:2], " "), text)
	}
	stopProc(t, sim, simLogs)
	collect("kgsim log", simLogs.String())
	for _, suffix := range []string{"", "-wal"} {
		if data, err := os.ReadFile(dbPath + suffix); err == nil {
			collect("meterd.db"+suffix, string(data))
		}
	}

	text := corpus.String()
	for _, want := range []string{"refused the credentials", `"state":"ACCEPTED"`, "meterd_push_sdrs", "missing or invalid bearer token", "<html"} {
		if !strings.Contains(text, want) {
			t.Errorf("the scan did not cover %q: the test exercised less than it claims", want)
		}
	}
	for _, s := range secrets {
		if i := strings.Index(text, s); i >= 0 {
			t.Errorf("secret %q found: ...%s...", s, text[max(0, i-200):min(len(text), i+len(s)+50)])
		}
	}
	t.Logf("scanned %d bytes: %s", corpus.Len(), strings.Join(seen, ", "))
}
