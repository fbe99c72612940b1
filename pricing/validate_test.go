package pricing

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wants returns the expected error substrings written in a testdata file as "# want: ..." lines.
func wants(t *testing.T, data []byte) []string {
	t.Helper()
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if w, ok := strings.CutPrefix(strings.TrimSpace(line), "# want: "); ok {
			out = append(out, w)
		}
	}
	return out
}

// TestLoadGood loads every file under testdata/good.
func TestLoadGood(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no good files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			c, err := LoadPlans(data)
			if err != nil {
				t.Fatalf("LoadPlans: %v", err)
			}
			if c == nil {
				t.Fatal("nil catalog without error")
			}
		})
	}
}

// TestLoadBad loads every file under testdata/bad and expects exactly the problems its "# want:" lines name:
// each want matches its own line of the error, and there is no other line, so every problem is reported in one
// round and none twice.
func TestLoadBad(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			want := wants(t, data)
			if len(want) == 0 {
				t.Fatal("a bad file without # want: lines")
			}
			c, err := LoadPlans(data)
			if err == nil {
				t.Fatal("loaded without error")
			}
			if c != nil {
				t.Error("a catalog returned with an error")
			}
			lines := strings.Split(err.Error(), "\n")
			used := make([]bool, len(lines))
		next:
			for _, w := range want {
				for i, l := range lines {
					if !used[i] && strings.Contains(l, w) {
						used[i] = true
						continue next
					}
				}
				t.Errorf("missing problem %q", w)
			}
			for i, l := range lines {
				if !used[i] {
					t.Errorf("unexpected problem %q", l)
				}
			}
		})
	}
}

// TestAllProblemsAtOnce: NewCatalog reports the problems of every plan in one error, one joined error each,
// and builds nothing.
func TestAllProblemsAtOnce(t *testing.T) {
	specs := []PlanSpec{
		{SKU: "A", Meter: "m", Currency: "CNY", Mode: "fixed"},
		{SKU: "B", Meter: "m", Currency: "CNY", Mode: "tier", Brackets: []BracketSpec{
			{UpTo: "3", UnitPrice: "0.3"}, {UpTo: "3", UnitPrice: "0.2"}, {UnitPrice: "0.1"},
		}},
		{SKU: "C", Meter: "m", Currency: "CNY", Mode: "step", Accumulation: "day", Brackets: docBrackets()},
		{SKU: "D", Meter: "m", Currency: "CNY", Mode: "fixed", UnitPrice: "1"}, // fine on its own
	}
	c, err := NewCatalog(specs, "billing.plans")
	if c != nil {
		t.Error("a catalog returned with an error")
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("err = %v, want a joined error", err)
	}
	got := joined.Unwrap()
	want := []string{
		"billing.plans[0].unit_price: required for mode fixed",
		"billing.plans[1].brackets[1].up_to: must be greater than 3 (brackets ascend strictly)",
		"billing.plans[2].timezone: required for day accumulation (an IANA name such as Asia/Shanghai)",
	}
	if len(got) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(got), len(want), err)
	}
	for i := range want {
		if got[i].Error() != want[i] {
			t.Errorf("problem %d = %q, want %q", i, got[i], want[i])
		}
	}
}
