package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"

	_ "modernc.org/sqlite"
)

// buildBinary compiles meterd once per test binary run, so process-level tests run the real thing.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "meterd-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "meterd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

var listenLine = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startServe runs `meterd serve` on a free loopback port and returns the process and its base URL.
func startServe(t *testing.T, configPath string, env ...string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	return startProc(t, append([]string{"METERD_LISTEN=127.0.0.1:0"}, env...), "serve", "--config", configPath)
}

// startProc runs the meterd binary with args and waits for its "listening" log line, returning the process, its
// base URL and its logs so far.
func startProc(t *testing.T, env []string, args ...string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	addr := make(chan string, 1)
	var logMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logs.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		return cmd, "http://" + a, logs
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("serve did not start:\n%s", logs)
	}
	return nil, "", nil
}

func writeConfig(t *testing.T, dir string) string {
	t.Helper()
	cfg := fmt.Sprintf(`meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db"))
	path := filepath.Join(dir, "meterd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSIGTERMDuringStreamLosesNoAcknowledgedEvent streams batches from several clients, sends SIGTERM in the
// middle, and then checks the database file: every event of every batch answered 200 must be stored, once.
func TestSIGTERMDuringStreamLosesNoAcknowledgedEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir)
	cmd, base, logs := startServe(t, cfgPath)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	const clients, perBatch = 4, 50
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339Nano)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			client := &ingest.Client{URL: base + "/v1/events", MaxAttempts: 1, HTTP: &http.Client{Timeout: 10 * time.Second}}
			for b := 0; ctx.Err() == nil; b++ {
				var body bytes.Buffer
				ids := make([]string, perBatch)
				for i := range ids {
					ids[i] = fmt.Sprintf("c%d-b%d-e%d", c, b, i)
					fmt.Fprintf(&body, `{"specversion":"1.0","id":%q,"source":"sigterm","type":"llm_request","subject":"t1","time":%q,"data":{"tokens":"0.1"}}`+"\n", ids[i], at)
				}
				resp, err := client.PostNDJSON(ctx, body.Bytes())
				if err != nil {
					return // the server is going away: this batch is not acknowledged
				}
				if resp.Accepted != perBatch {
					t.Errorf("batch answered %+v", resp)
					return
				}
				mu.Lock()
				for _, id := range ids {
					acked[id] = true
				}
				mu.Unlock()
			}
		}(c)
	}
	// Let the stream run, then stop the server in the middle of it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 2000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitErr := cmd.Wait()
	cancel()
	wg.Wait()
	if waitErr != nil {
		t.Fatalf("serve exited with %v:\n%s", waitErr, logs)
	}
	if len(acked) == 0 {
		t.Fatal("no batch was acknowledged before SIGTERM")
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "meterd.db")+"?_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT id FROM events WHERE source = 'sigterm'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	stored := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		stored[id] = true
	}
	missing := 0
	for id := range acked {
		if !stored[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged events missing after SIGTERM", missing, len(acked))
	}
	t.Logf("%d events acknowledged before SIGTERM, all stored (%d stored in all)", len(acked), len(stored))
}
