package main

// Helpers of the reliability tests (crash, disk full, backup restore, outage, slow clients, TLS, secrets): real
// `meterd serve` and `meterd kgsim` processes on loopback, the store read directly as finance's tools would, and
// one RESULT line per test for the results table of docs/reliability.md.

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// dbRows runs a read-only query on the store file (WAL: safe beside a running serve) and returns the rows as
// text, NULL as "".
func dbRows(t *testing.T, dbPath, q string, args ...any) [][]string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=query_only(1)&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out [][]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := make([]string, len(cols))
		for i, v := range vals {
			row[i] = v.String
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dbExec writes to the store file while no meterd process has it open.
func dbExec(t *testing.T, dbPath, q string, args ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// metric returns the value of one series of GET /metrics (name with its labels as exposed, e.g.
// `meterd_push_sdrs{state="ACCEPTED"}`), NaN when absent.
func metric(t *testing.T, hc *http.Client, base, series string) float64 {
	t.Helper()
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	return math.NaN()
}

// result logs the figures of one row of the results table (docs/reliability.md) in a fixed form that
// scripts/reliability/run.sh collects.
func result(t *testing.T, fault string, events, lost, doubleCounted, doubleBilled int, recovery string) {
	t.Helper()
	t.Logf("RESULT fault=%q events=%d lost=%d double_counted=%d double_billed=%d recovery=%q", fault, events, lost,
		doubleCounted, doubleBilled, recovery)
}

// killProc ends a process started by startProc with SIGKILL (no cleanup at all) and reaps it.
func killProc(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	_ = cmd.Process.Kill()
	_ = cmd.Wait() // "signal: killed"
}

// stopProc ends a process with SIGTERM and waits for it, failing the test if it does not exit cleanly in time.
func stopProc(t *testing.T, cmd *exec.Cmd, logs fmt.Stringer) {
	t.Helper()
	_ = cmd.Process.Signal(os.Interrupt)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s exited with %v:\n%s", cmd.Path, err, logs)
		}
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Kill()
		t.Errorf("%s did not stop in 40s", cmd.Path)
	}
}

// eventStream is a set of clients posting NDJSON batches to one URL, each retrying a batch (same ids) until it is
// acknowledged, as a well-behaved producer does across a server crash. It records what was acknowledged.
type eventStream struct {
	url     string
	token   string
	mu      sync.Mutex
	acked   map[string]sentEvent
	batches int
	dupAns  int // events answered "duplicate": a resend of a batch whose first answer was lost
	refused int // requests answered with an error status (e.g. 503) or not answered at all
	stop    chan struct{}
	wg      sync.WaitGroup
	errs    []string
}

// sentEvent is what a client sent for one event id.
type sentEvent struct {
	Subject string
	Time    time.Time
	Value   string
}

// next returns the events of batch b of client c.
type batchFunc func(c, b int) []sentEventWithID

type sentEventWithID struct {
	ID string
	sentEvent
}

func newEventStream(url, token string) *eventStream {
	return &eventStream{url: url, token: token, acked: map[string]sentEvent{}, stop: make(chan struct{})}
}

// start runs n clients until stopAndWait; gen gives each batch.
func (s *eventStream) start(n int, gen batchFunc) {
	for c := 0; c < n; c++ {
		s.wg.Add(1)
		go func(c int) {
			defer s.wg.Done()
			hc := &http.Client{Timeout: 10 * time.Second}
			for b := 0; ; b++ {
				select {
				case <-s.stop:
					return
				default:
				}
				evs := gen(c, b)
				var body strings.Builder
				for _, e := range evs {
					fmt.Fprintf(&body, `{"specversion":"1.0","id":%q,"source":"reliability","type":"llm_request","subject":%q,"time":%q,"data":{"tokens":%q}}`+"\n",
						e.ID, e.Subject, e.Time.Format(time.RFC3339Nano), e.Value)
				}
				// Until acknowledged: the batch is resent whole, which dedup makes harmless. Once stop is asked
				// for, the batch in hand is still finished, so that what was sent is what was acknowledged.
				for attempt := 0; ; attempt++ {
					st, dup, err := s.post(hc, body.String(), len(evs))
					if err == nil {
						s.mu.Lock()
						for _, e := range evs {
							s.acked[e.ID] = e.sentEvent
						}
						s.batches++
						s.dupAns += dup
						s.mu.Unlock()
						break
					}
					s.mu.Lock()
					s.refused++
					if st == http.StatusOK || st == http.StatusBadRequest || st == http.StatusUnauthorized {
						s.errs = append(s.errs, err.Error()) // never retryable: a bug
					}
					s.mu.Unlock()
					if st == http.StatusOK || st == http.StatusBadRequest || st == http.StatusUnauthorized {
						break
					}
					time.Sleep(time.Duration(20+attempt%10*10) * time.Millisecond)
				}
			}
		}(c)
	}
}

func (s *eventStream) post(hc *http.Client, body string, n int) (status, duplicates int, err error) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, s.url, strings.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return res.StatusCode, 0, err
	}
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, 0, fmt.Errorf("HTTP %d: %s", res.StatusCode, data)
	}
	var out struct {
		Accepted   int `json:"accepted"`
		Duplicates int `json:"duplicates"`
		Rejected   []struct {
			Reason string `json:"reason"`
		} `json:"rejected"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return res.StatusCode, 0, err
	}
	if out.Accepted+out.Duplicates != n || len(out.Rejected) > 0 {
		return res.StatusCode, 0, fmt.Errorf("answer %s", data)
	}
	return res.StatusCode, out.Duplicates, nil
}

// count returns how many events were acknowledged so far.
func (s *eventStream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

// stopAndWait asks the clients to stop after the batch in hand and waits for them.
func (s *eventStream) stopAndWait(t *testing.T, timeout time.Duration) {
	t.Helper()
	close(s.stop)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("clients did not finish their last batch in %s", timeout)
	}
	for _, e := range s.errs {
		t.Errorf("client: %s", e)
	}
}

// decodeJSON reads a 200 answer's JSON body into v.
func decodeJSON(res *http.Response, v any) error {
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
		return fmt.Errorf("%s: HTTP %d: %s", res.Request.URL, res.StatusCode, data)
	}
	return json.NewDecoder(res.Body).Decode(v)
}

// startServeNoWait starts `meterd serve` without waiting for it to listen, so that a test can kill it while it
// opens the store.
func startServeNoWait(t *testing.T, configPath string, env ...string) *exec.Cmd {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", "--config", configPath)
	cmd.Env = append(append(os.Environ(), "METERD_LISTEN=127.0.0.1:0"), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// cleanupKill kills cmd when the test ends, in case a failure left it running (a no-op for a process already
// reaped), so that no meterd outlives its test and a tmpfs can be unmounted.
func cleanupKill(t *testing.T, cmd *exec.Cmd) *exec.Cmd {
	t.Helper()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}
