package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts it at the end of the test; it skips the
// test when mounting is not permitted (not root, or no CAP_SYS_ADMIN in a container).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0750", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run() // never leave a mount behind
		}
	})
	return dir
}

// fill writes a file until the file system is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// The last partial chunk: fill byte by byte what is left.
	for {
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
	return path
}

// ingestBatch posts n events with ids prefix-0 .. prefix-(n-1) and returns the status and the answer.
func ingestBatch(t *testing.T, url, prefix string, n int, at time.Time) (int, string) {
	t.Helper()
	var body strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&body, `{"specversion":"1.0","id":"%s-%d","source":"diskfull","type":"llm_request","subject":"t1","time":%q,"data":{"tokens":"1.5"}}`+"\n",
			prefix, i, at.Format(time.RFC3339))
	}
	hc := &http.Client{Timeout: 20 * time.Second}
	res, err := hc.Post(url, "application/x-ndjson", strings.NewReader(body.String()))
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode == http.StatusServiceUnavailable && res.Header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	return res.StatusCode, string(data)
}

// TestDiskFullSQLite puts the embedded store on a small tmpfs and fills it while the real `meterd serve` ingests:
// ingest answers 503 (with Retry-After) and acknowledges nothing it could not commit; once space is freed, the
// same process takes the refused batches again; filled a second time, it is killed with SIGKILL, restarted while
// the disk is still full, and recovers when space is freed. At the end every acknowledged event is stored once
// and the database passes PRAGMA integrity_check.
func TestDiskFullSQLite(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs and runs the binary")
	}
	mnt := mountTmpfs(t, 8<<20)
	dir := t.TempDir()
	dbPath := filepath.Join(mnt, "meterd.db")
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
store: {sqlite: {path: %s}}
`, dbPath))
	addr := freeAddr(t)
	env := "METERD_LISTEN=" + addr
	url := "http://" + addr + "/v1/events"
	at := time.Now().UTC().Add(-time.Minute)
	srv, base, logs := startServe(t, cfgPath, env)
	cleanupKill(t, srv)

	acked := map[string]bool{}
	batch := 0
	send := func(prefix string) int {
		st, body := ingestBatch(t, url, prefix, 50, at)
		if st == http.StatusOK {
			if !strings.Contains(body, `"accepted":50`) && !strings.Contains(body, `"duplicates":`) {
				t.Fatalf("batch %s: %s", prefix, body)
			}
			for i := 0; i < 50; i++ {
				acked[fmt.Sprintf("%s-%d", prefix, i)] = true
			}
		}
		return st
	}
	for ; batch < 40; batch++ {
		if st := send(fmt.Sprintf("b%d", batch)); st != http.StatusOK {
			t.Fatalf("before the disk is full: %d\n%s", st, logs)
		}
	}

	// fillUntil503 fills the disk and ingests new batches until three in a row are refused; it returns the
	// refused ones.
	fillUntil503 := func() (filler string, refused []string) {
		filler = fill(t, mnt)
		for run := 0; run < 3 && batch < 2000; batch++ {
			prefix := fmt.Sprintf("b%d", batch)
			switch st := send(prefix); st {
			case http.StatusOK:
				run = 0 // free pages of the WAL are reused before the file must grow
			case http.StatusServiceUnavailable:
				refused = append(refused, prefix)
				run++
			default:
				t.Fatalf("disk full: status %d, want 503", st)
			}
		}
		if len(refused) == 0 {
			t.Fatalf("the disk is full and nothing was refused after %d batches", batch)
		}
		return filler, refused
	}
	// retry sends refused batches again until each is taken; it returns when the first was.
	retry := func(refused []string) time.Time {
		start := time.Now()
		var first time.Time
		for _, prefix := range refused {
			for {
				st := send(prefix)
				if st == http.StatusOK {
					if first.IsZero() {
						first = time.Now()
					}
					break
				}
				if time.Since(start) > 30*time.Second {
					t.Fatalf("batch %s still refused (%d) 30s after space was freed\n%s", prefix, st, logs)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		return first
	}

	filler, refused := fillUntil503()
	res, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	t.Logf("disk full: %d batches refused with 503; /readyz %d", len(refused), res.StatusCode)
	refusedTotal := len(refused)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	recovery1 := retry(refused).Sub(freed)
	t.Logf("space freed: the running process took the refused batches again after %s", recovery1)

	// Full again, then a crash while full, a restart while still full, and space freed.
	filler, refused = fillUntil503()
	refusedTotal += len(refused)
	killProc(t, srv)
	// Restarted while the disk is still full: it opens the store (reads need no space) and answers; what it
	// cannot commit it refuses.
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	full := exec.Command(bin, "serve", "--config", cfgPath)
	full.Env = append(os.Environ(), env)
	var fullLogs syncBuffer
	full.Stderr = &fullLogs
	if err := full.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = full.Process.Kill() }) // reaped by the goroutine below
	exited := make(chan error, 1)
	go func() { exited <- full.Wait() }()
	whileFull := "did not answer"
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-exited:
			whileFull = fmt.Sprintf("exited (%v)", err)
			exited <- err
		default:
		}
		if st, _ := ingestBatch(t, url, "probe-while-full", 1, at); st != 0 {
			if st == http.StatusOK {
				acked["probe-while-full-0"] = true
			}
			whileFull = fmt.Sprintf("answered %d", st)
			break
		}
		if strings.HasPrefix(whileFull, "exited") {
			break
		}
	}
	_ = full.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		t.Logf("restarted while full: %s; stopped with %v", whileFull, err)
	case <-time.After(40 * time.Second):
		_ = full.Process.Kill()
		t.Errorf("serve started while the disk was full did not stop on SIGINT:\n%s", fullLogs.String())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed = time.Now()
	srv, _, logs = startServe(t, cfgPath, env)
	cleanupKill(t, srv)
	recovery2 := retry(refused).Sub(freed) // from space freed to the first batch taken, restart included
	for i := 0; i < 5; i++ {
		if st := send(fmt.Sprintf("after-%d", i)); st != http.StatusOK {
			t.Fatalf("after recovery: %d", st)
		}
	}
	stopProc(t, srv, logs)

	if got := dbRows(t, dbPath, `PRAGMA integrity_check`); len(got) != 1 || got[0][0] != "ok" {
		t.Fatalf("integrity_check: %v", got)
	}
	stored := map[string]int{}
	for _, r := range dbRows(t, dbPath, `SELECT id FROM events WHERE source = 'diskfull'`) {
		stored[r[0]]++
	}
	lost, double := 0, 0
	for id := range acked {
		switch stored[id] {
		case 0:
			lost++
		case 1:
		default:
			double++
		}
	}
	if lost > 0 || double > 0 || len(stored) != len(acked) {
		t.Errorf("%d acknowledged events lost, %d stored twice; %d stored, %d acknowledged", lost, double, len(stored), len(acked))
	}
	result(t, "disk full under SQLite (8 MiB tmpfs filled), twice; SIGKILL while full", len(acked), lost, double, 0,
		fmt.Sprintf("%d batches answered 503; the running process took them %dms after space was freed; after a crash while full, %dms from space freed (restart included)",
			refusedTotal, recovery1.Milliseconds(), recovery2.Milliseconds()))
}
