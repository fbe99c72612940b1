package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// readHeaderTimeout is serve's http.Server.ReadHeaderTimeout (serve.go); the test allows this much plus slack.
const readHeaderTimeout = 10 * time.Second

// TestSlowClientsAreCutOff runs the real serve against slowloris-style clients: 50 connections that send a
// request line and then trickle header bytes, one every 500ms, never finishing their headers. Each is closed by
// the server within ReadHeaderTimeout (10s) of connecting, plus slack; meanwhile a normal client is served at
// once. A body over ingest.max_body is answered 413 after max_body bytes, however large its Content-Length, and
// a huge header block is answered 431.
func TestSlowClientsAreCutOff(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary and waits for the header timeout")
	}
	t.Parallel()
	dir := t.TempDir()
	cfgPath := writeFile(t, dir, "meterd.yaml", fmt.Sprintf(`meters:
  - {key: calls, event_type: api_call, aggregation: COUNT}
ingest: {max_body: 64KiB}
store: {sqlite: {path: %s}}
`, filepath.Join(dir, "meterd.db")))
	srv, base, logs := startServe(t, cfgPath)
	cleanupKill(t, srv)
	defer stopProc(t, srv, logs)
	addr := strings.TrimPrefix(base, "http://")

	const slow = 50
	closedAfter := make([]time.Duration, slow)
	var wg sync.WaitGroup
	for i := 0; i < slow; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			if _, err := fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nX-Slow: "); err != nil {
				t.Error(err)
				return
			}
			// Trickle one byte every 500ms until a write fails or the server closes (a read returns).
			gone := make(chan struct{})
			go func() {
				_, _ = io.Copy(io.Discard, conn) // returns when the server closes the connection
				close(gone)
			}()
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-gone:
					closedAfter[i] = time.Since(start)
					return
				case <-tick.C:
					if _, err := conn.Write([]byte("a")); err != nil {
						<-gone
						closedAfter[i] = time.Since(start)
						return
					}
					if time.Since(start) > readHeaderTimeout+15*time.Second {
						closedAfter[i] = -1
						return
					}
				}
			}
		}(i)
	}

	// While the slow clients hold their connections, a normal client is served at once.
	time.Sleep(time.Second)
	t0 := time.Now()
	res, err := (&http.Client{Timeout: 5 * time.Second}).Post(base+"/v1/events", "application/cloudevents+json", strings.NewReader(
		`{"specversion":"1.0","id":"s-1","source":"slow","type":"api_call","subject":"a","time":"`+time.Now().UTC().Format(time.RFC3339)+`"}`))
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("normal client beside %d slow ones: %v %v", slow, res, err)
	}
	res.Body.Close()
	normal := time.Since(t0)

	// A body larger than max_body: refused after 64 KiB, not read to its announced end.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1/events HTTP/1.1\r\nHost: meterd\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n", int64(10)<<30)
	go func() {
		chunk := make([]byte, 16<<10)
		for i := 0; i < 8; i++ { // 128 KiB, twice max_body, of the 10 GiB announced
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	big, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || big.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("10 GiB body: %v %v, want 413", big, err)
	}
	conn.Close()

	// A header block over MaxHeaderBytes (64 KiB): 431.
	req, _ := http.NewRequest(http.MethodGet, base+"/healthz", nil)
	req.Header.Set("X-Huge", strings.Repeat("h", 200<<10))
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("200 KiB of headers: %v %v, want 431", res, err)
	} else {
		res.Body.Close()
	}

	wg.Wait()
	var longest time.Duration
	for i, d := range closedAfter {
		switch {
		case d < 0:
			t.Errorf("slow client %d still connected %s after connecting", i, readHeaderTimeout+15*time.Second)
		case d < readHeaderTimeout-time.Second:
			t.Errorf("slow client %d closed after %s, before the header timeout: something else cut it", i, d)
		case d > readHeaderTimeout+3*time.Second:
			t.Errorf("slow client %d closed after %s, want within %s + 3s", i, d, readHeaderTimeout)
		}
		longest = max(longest, d)
	}
	t.Logf("%d slow clients closed by the server at most %s after connecting (ReadHeaderTimeout %s); a normal request beside them took %s",
		slow, longest.Round(10*time.Millisecond), readHeaderTimeout, normal.Round(time.Millisecond))
	result(t, fmt.Sprintf("%d slowloris clients (headers trickled 1 byte/500ms)", slow), 1, 0, 0, 0,
		fmt.Sprintf("each cut %.1fs after connecting; a normal client served in %dms meanwhile", longest.Seconds(), normal.Milliseconds()))
}
