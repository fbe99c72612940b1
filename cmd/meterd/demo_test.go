package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDemo runs `meterd demo` in process: it must finish with every SDR accepted, write the three reports, and
// its JSON report must agree with the summary.
func TestDemo(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"demo", "--out", out}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	m := regexp.MustCompile(`(\d+) SDRs, (\d+) retried, (\d+) SDRs accepted\n$`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("summary does not end with the SDRs accepted:\n%s", stdout.String())
	}
	total, _ := strconv.Atoi(m[1])
	accepted, _ := strconv.Atoi(m[3])
	if total != demoInstancesPerPlan*len(demoPlans)*demoHours || accepted != total {
		t.Fatalf("%d SDRs, %d accepted", total, accepted)
	}
	if !strings.Contains(stdout.String(), "to retry") || !strings.Contains(stdout.String(), "each exactly once") {
		t.Errorf("the demo shows no retry or no billing check:\n%s", stdout.String())
	}
	for _, f := range []string{"reconcile.csv", "reconcile.json", "reconcile.html", "meterd-demo.yaml"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "reconcile.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Lines []struct {
			State string `json:"state"`
		} `json:"lines"`
		Invariant struct {
			Holds bool `json:"holds"`
		} `json:"invariant"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Invariant.Holds || len(rep.Lines) != total {
		t.Fatalf("report: %d lines, invariant %v", len(rep.Lines), rep.Invariant.Holds)
	}
	for _, l := range rep.Lines {
		if l.State != "ACCEPTED" {
			t.Fatalf("line state %s", l.State)
		}
	}
}
