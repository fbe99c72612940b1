package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// runWithKgsim is run for a kgsim command line. It adds the kgsim command when newRoot does not have it yet, so
// this test does not depend on the order in which root.go and kgsim.go land.
func runWithKgsim(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	probe := newRoot(strings.NewReader(""), io.Discard, io.Discard, new(bool))
	if c, _, err := probe.Find([]string{"kgsim"}); err == nil && c != probe {
		return run(ctx, args, strings.NewReader(""), stdout, stderr)
	}
	ran := false
	root := newRoot(strings.NewReader(""), stdout, stderr, &ran)
	root.AddCommand(newKgsimCmd())
	markRuns(root, &ran)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		_, _ = io.WriteString(stderr, "meterd: "+err.Error()+"\n")
		if _, ok := errors.AsType[usageError](err); ok || !ran {
			return exitUsage
		}
		return exitRuntime
	}
	return exitOK
}

// TestKgsimServes starts `meterd kgsim` in-process, pushes one record with the real client, reads it back from
// /_sim/records, and stops it by cancelling the context (what SIGTERM does).
func TestKgsimServes(t *testing.T) {
	const key = "cli-kgsim-key-5d1e"
	dir := t.TempDir()
	instances := writeFile(t, dir, "instances.yaml", `
- instance_id: inst-1
  started_at: 2020-01-01T00:00:00Z
`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- runWithKgsim(ctx, []string{"kgsim", "--listen", "127.0.0.1:0", "--key", key, "--instances", instances,
			"--seed", "7"}, &stdout, &stderr)
	}()
	addrRE := regexp.MustCompile(`msg=listening addr=(\S+)`)
	var addr string
	for deadline := time.Now().Add(10 * time.Second); addr == ""; {
		if m := addrRE.FindStringSubmatch(stderr.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("kgsim exited %d early:\n%s", code, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listening line:\n%s", stderr.String())
		}
	}

	client, err := koogallery.NewClient(koogallery.Config{Endpoint: "http://" + addr + kgsim.DefaultPath,
		Key: func() ([]byte, error) { return []byte(key), nil }})
	if err != nil {
		t.Fatal(err)
	}
	h := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	mk := func(id, sn string) []byte {
		b, err := koogallery.EncodeRecord(koogallery.Record{InstanceID: id, MeteringSN: sn, BeginTime: h,
			EndTime: h.Add(time.Hour), RecordTime: h.Add(time.Hour), UsageValue: decimal.RequireFromString("3.5")},
			koogallery.ValueAsString)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	resp, err := client.Push(ctx, koogallery.Body([][]byte{mk("inst-1", "sn-1")}))
	if err != nil || resp.Code != "0000" {
		t.Fatalf("push: %+v %v\n%s", resp, err, stderr.String())
	}
	resp, err = client.Push(ctx, koogallery.Body([][]byte{mk("inst-2", "sn-2")}))
	if err != nil || resp.Code != "9001" {
		t.Errorf("unknown instance: %+v %v", resp, err)
	}
	billed, err := kgsim.FetchBilled(ctx, http.DefaultClient, "http://"+addr)
	if err != nil || len(billed) != 1 || billed[0].MeteringSN != "sn-1" || billed[0].UsageValue.String() != "3.5" {
		t.Errorf("billed: %+v %v", billed, err)
	}

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit %d:\n%s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("kgsim did not stop")
	}
	log := stderr.String()
	for _, want := range []string{"msg=request code=0000", "records=1", "code=9001", "msg=stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, key) {
		t.Errorf("the key is in the log:\n%s", log)
	}
}

func TestKgsimUsageErrors(t *testing.T) {
	t.Setenv(koogallery.KeyEnv, "")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"kgsim", "--listen", "127.0.0.1:0"}, "no key"},
		{[]string{"kgsim", "--key", "k", "--key-file", "f"}, "none of the others can be"},
		{[]string{"kgsim", "--key-file", "testdata/no-such-key"}, "--key-file"},
		{[]string{"kgsim", "--key", "k", "--fail-rate", "1.5"}, "--fail-rate"},
		{[]string{"kgsim", "--key", "k", "--lost-rate", "-0.1"}, "--lost-rate"},
		{[]string{"kgsim", "--key", "k", "--latency", "-1s"}, "--latency"},
		{[]string{"kgsim", "--key", "k", "--instances", "testdata/no-such.yaml"}, "--instances"},
		{[]string{"kgsim", "--key", "k", "--listen", "256.0.0.1:x"}, "--listen"},
	}
	for _, tt := range tests {
		var stdout, stderr syncBuffer
		code := runWithKgsim(t.Context(), tt.args, &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tt.args, code, stderr.String(), tt.want)
		}
	}
}
