package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/store/sqlite"
)

// runInstancesCLI is runCLI for `meterd instances ...` with stdin. It adds the command to the tree when root.go
// does not list it yet, and decides the exit code as run does, so these tests hold before and after the wiring.
func runInstancesCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ran := false
	root := newRoot(strings.NewReader(stdin), &stdout, &stderr, &ran)
	if c, _, err := root.Find([]string{"instances"}); err != nil || c == root {
		ic := newInstancesCmd()
		markRuns(ic, &ran)
		root.AddCommand(ic)
	}
	root.SetArgs(args)
	code := exitOK
	if err := root.ExecuteContext(t.Context()); err != nil {
		fmt.Fprintf(&stderr, "meterd: %v\n", err)
		var ue usageError
		code = exitRuntime
		if errors.As(err, &ue) || !ran {
			code = exitUsage
		}
	}
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// instancesConfig writes a config with two meters, their plans and two instances, and a store in a temporary
// directory.
func instancesConfig(t *testing.T) (dir, cfgPath string) {
	t.Helper()
	dir = t.TempDir()
	cfg := fmt.Sprintf(`meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
  - {key: api_calls, event_type: api_call, aggregation: COUNT}
plans:
  - {sku: OFFI-TOKENS, meter: tokens, currency: CNY, mode: fixed, unit_price: "0.5"}
  - {sku: OFFI-CALLS, meter: api_calls, currency: CNY, mode: fixed, unit_price: "0.01"}
instances:
  - instance_id: i-tokens
    subject: tenant-42
    meter: tokens
    sku: OFFI-TOKENS
    started_at: 2026-11-01T00:00:00Z
  - instance_id: i-calls
    subject: tenant-42
    meter: api_calls
    sku: OFFI-CALLS
    status: FROZEN
    started_at: "2026-11-01T08:00:00+08:00"
store: {driver: sqlite, sqlite: {path: %q}}
`, filepath.Join(dir, "data", "meterd.db"))
	return dir, writeFile(t, dir, "meterd.yaml", cfg)
}

func TestInstancesApplyAndList(t *testing.T) {
	dir, cfg := instancesConfig(t)

	first := runInstancesCLI(t, "", "instances", "apply", "--config", cfg)
	if first.code != exitOK || !strings.HasPrefix(first.stdout, "created i-tokens ACTIVE\ncreated i-calls FROZEN (FROZEN at ") {
		t.Fatalf("first apply: %v", first)
	}
	again := runInstancesCLI(t, "", "instances", "apply", "--config", cfg)
	if again.code != exitOK || again.stdout != "unchanged i-tokens ACTIVE\nunchanged i-calls FROZEN\n" {
		t.Fatalf("second apply: %v", again)
	}

	// A file releases i-tokens and registers its successor, listed first; a mapping with instances: works too.
	file := writeFile(t, dir, "next.yaml", `
- instance_id: i-tokens-2
  subject: tenant-42
  meter: tokens
  sku: OFFI-TOKENS
  started_at: 2026-11-10T00:00:00Z
- instance_id: i-tokens
  subject: tenant-42
  meter: tokens
  sku: OFFI-TOKENS
  status: RELEASED
  started_at: 2026-11-01T00:00:00Z
  released_at: 2026-11-10T00:00:00Z
`)
	r := runInstancesCLI(t, "", "instances", "apply", "--config", cfg, "-f", file)
	if r.code != exitOK || r.stdout != "created i-tokens-2 ACTIVE\nchanged i-tokens RELEASED (RELEASED at 2026-11-10T00:00:00Z)\n" {
		t.Fatalf("apply -f: %v", r)
	}
	stdin := `{"instances": [{"instance_id": "i-calls", "subject": "tenant-42", "meter": "api_calls", "sku": "OFFI-CALLS",
  "status": "ACTIVE", "started_at": "2026-11-01T00:00:00Z"}]}`
	r = runInstancesCLI(t, stdin, "instances", "apply", "--config", cfg, "-f", "-")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "changed i-calls ACTIVE (UNFROZEN at ") {
		t.Fatalf("apply -f - (JSON mapping on stdin): %v", r)
	}

	list := runInstancesCLI(t, "", "instances", "list", "--config", cfg, "--output", "json")
	if list.code != exitOK {
		t.Fatalf("list: %v", list)
	}
	var got struct {
		Instances []struct {
			ID         string  `json:"instance_id"`
			Status     string  `json:"status"`
			StartedAt  string  `json:"started_at"`
			ReleasedAt *string `json:"released_at"`
			Changes    []struct {
				At   string `json:"at"`
				Kind string `json:"kind"`
			} `json:"changes"`
		} `json:"instances"`
	}
	if err := json.Unmarshal([]byte(list.stdout), &got); err != nil {
		t.Fatalf("list JSON: %v\n%s", err, list.stdout)
	}
	var summary []string
	for _, in := range got.Instances {
		var kinds []string
		for _, c := range in.Changes {
			kinds = append(kinds, c.Kind)
		}
		summary = append(summary, in.ID+" "+in.Status+" "+in.StartedAt+" "+strings.Join(kinds, ","))
	}
	want := []string{
		"i-calls ACTIVE 2026-11-01T00:00:00Z CREATED,FROZEN,UNFROZEN",
		"i-tokens RELEASED 2026-11-01T00:00:00Z CREATED,RELEASED",
		"i-tokens-2 ACTIVE 2026-11-10T00:00:00Z CREATED",
	}
	if strings.Join(summary, "\n") != strings.Join(want, "\n") {
		t.Errorf("list:\n%s\nwant:\n%s", strings.Join(summary, "\n"), strings.Join(want, "\n"))
	}
	if rel := got.Instances[1].ReleasedAt; rel == nil || *rel != "2026-11-10T00:00:00Z" || got.Instances[0].ReleasedAt != nil {
		t.Errorf("released_at: %v %v", got.Instances[0].ReleasedAt, rel)
	}

	text := runInstancesCLI(t, "", "instances", "list", "--config", cfg, "--status", "RELEASED")
	lines := strings.Split(strings.TrimSpace(text.stdout), "\n")
	if text.code != exitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], "INSTANCE_ID") ||
		strings.Join(strings.Fields(lines[1]), " ") != "i-tokens tenant-42 tokens OFFI-TOKENS RELEASED 2026-11-01T00:00:00Z 2026-11-10T00:00:00Z" {
		t.Errorf("list --status RELEASED: %v", text)
	}
}

// TestInstancesApplyProblems: invalid specs and lifecycle refusals exit 2 and list every problem with its path.
func TestInstancesApplyProblems(t *testing.T) {
	dir, cfg := instancesConfig(t)
	if r := runInstancesCLI(t, "", "instances", "apply", "--config", cfg); r.code != exitOK {
		t.Fatalf("setup: %v", r)
	}
	tests := []struct {
		name, file string
		want       []string
		stdout     string
	}{
		{name: "invalid specs apply nothing", file: `
- {instance_id: i-new, meter: tokens, sku: OFFI-CALLS, started_at: 2026-11-20T00:00:00Z}
- {instance_id: i-new2, meter: tokens, sku: OFFI-TOKENS, started_at: later}
`, want: []string{`instances[0].sku: "OFFI-CALLS" prices meter "api_calls", not the instance's meter "tokens"`,
			`instances[1].started_at: "later" is not an RFC 3339 time`}},
		{name: "refusals do not stop the others", file: `
- {instance_id: i-tokens, subject: tenant-42, meter: api_calls, sku: OFFI-CALLS, started_at: 2026-11-01T00:00:00Z}
- {instance_id: i-other, subject: tenant-42, meter: tokens, sku: OFFI-TOKENS, started_at: 2026-11-05T00:00:00Z}
- {instance_id: i-fine, subject: tenant-7, meter: tokens, sku: OFFI-TOKENS, started_at: 2026-11-05T00:00:00Z}
`, want: []string{`instances[0].meter: instance "i-tokens" has meter "tokens" since its creation`,
			`instances[0].sku: instance "i-tokens" has sku "OFFI-TOKENS"`,
			`instances[1]: instance "i-other" [2026-11-05T00:00:00Z, open) overlaps instance "i-tokens"`},
			stdout: "created i-fine ACTIVE\n"},
		{name: "unknown key", file: "- {instance_id: i-x, relased_at: 2026-11-05T00:00:00Z}\n", want: []string{"field relased_at not found"}},
		{name: "not a list", file: "just text\n", want: []string{"want a list of instance specs"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeFile(t, dir, fmt.Sprintf("bad%d.yaml", i), tt.file)
			r := runInstancesCLI(t, "", "instances", "apply", "--config", cfg, "-f", f)
			if r.code != exitUsage || r.stdout != tt.stdout {
				t.Fatalf("want exit 2 and stdout %q: %v", tt.stdout, r)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
		})
	}
	if r := runInstancesCLI(t, "", "instances", "list", "--config", cfg, "--output", "yaml"); r.code != exitUsage || !strings.Contains(r.stderr, "--output") {
		t.Errorf("bad --output: %v", r)
	}
	if r := runInstancesCLI(t, "", "instances", "list", "--config", cfg, "--status", "GONE"); r.code != exitUsage || !strings.Contains(r.stderr, "--status") {
		t.Errorf("bad --status: %v", r)
	}
	if r := runInstancesCLI(t, "", "instances", "apply"); r.code != exitUsage || !strings.Contains(r.stderr, `"config" not set`) {
		t.Errorf("no --config: %v", r)
	}
}

// TestStartInstances is serve's part: the config's instances are applied and the API answers on the mux; a
// config that the stored lifecycle refuses stops the start with exit 2.
func TestStartInstances(t *testing.T) {
	_, cfgPath := instancesConfig(t)
	cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(t.Context(), cfg.Store.SQLite.Path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	mux := http.NewServeMux()
	if _, err := startInstances(t.Context(), cfg, st, log, mux); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/v1/instances?meter=tokens")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"instance_id":"i-tokens"`) || strings.Contains(string(body), "i-calls") {
		t.Errorf("GET /v1/instances: %d %s", resp.StatusCode, body)
	}

	// Released at run time while the config still says ACTIVE: a restart keeps the registry's state (re-applying
	// the config would undo lifecycle changes KooGallery made) and warns about the difference.
	req, _ := http.NewRequestWithContext(t.Context(), "PUT", srv.URL+"/v1/instances/i-tokens", strings.NewReader(
		`{"subject": "tenant-42", "meter": "tokens", "sku": "OFFI-TOKENS", "started_at": "2026-11-01T00:00:00Z", "status": "RELEASED", "released_at": "2026-11-03T00:00:00Z"}`))
	if resp, err := srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("release: %v %v", resp, err)
	}
	var logs bytes.Buffer
	reg, err := startInstances(t.Context(), cfg, st, slog.New(slog.NewTextHandler(&logs, nil)), http.NewServeMux())
	if err != nil {
		t.Fatalf("start over a store that moved on: %v", err)
	}
	in, _, err := reg.Get(t.Context(), "i-tokens")
	if err != nil || in.Status != instance.Released {
		t.Errorf("after restart i-tokens is %v (%v), want RELEASED kept", in.Status, err)
	}
	if !strings.Contains(logs.String(), "config instance differs from the registry") || !strings.Contains(logs.String(), "instance_id=i-tokens") {
		t.Errorf("no warning about the difference:\n%s", logs.String())
	}
}
