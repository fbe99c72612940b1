package instance

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

// testRefs knows meters tokens and calls, SKU-T pricing tokens and SKU-C pricing calls, and site cn.
func testRefs(t *testing.T) Refs {
	t.Helper()
	meters, err := meter.NewSet([]meter.Spec{
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
		{Key: "calls", EventType: "api_call", Aggregation: "COUNT"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := pricing.NewCatalog([]pricing.PlanSpec{
		{SKU: "SKU-T", Meter: "tokens", Currency: "CNY", Mode: "fixed", UnitPrice: "0.5"},
		{SKU: "SKU-C", Meter: "calls", Currency: "CNY", Mode: "fixed", UnitPrice: "0.01"},
	}, "plans")
	if err != nil {
		t.Fatal(err)
	}
	return NewRefs(meters, catalog, []string{"cn"})
}

// checkProblems asserts that err lists exactly the wanted problems (substrings, one per line, any order).
func checkProblems(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	var inv *InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("%T is not an *InvalidError: %v", err, err)
	}
	lines := strings.Split(err.Error(), "\n")
	used := make([]bool, len(lines))
	for _, w := range want {
		found := false
		for i, l := range lines {
			if !used[i] && strings.Contains(l, w) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("error lacks %q; got:\n%v", w, err)
		}
	}
	for i, l := range lines {
		if !used[i] {
			t.Errorf("unexpected problem %q", l)
		}
	}
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name string
		spec Spec
		want []string // empty: valid
	}{
		{name: "minimal", spec: Spec{InstanceID: "i", Meter: "tokens", SKU: "SKU-T", StartedAt: "2026-11-01T00:00:00Z"}},
		{name: "released", spec: spec("i", released(hour(2)))},
		{name: "everything missing", spec: Spec{}, want: []string{
			"p.instance_id: required", "p.meter: required", "p.sku: required (selects the plan)", "p.started_at: required"}},
		{name: "too long", spec: spec(long, subject(long), func(s *Spec) { s.RelatePkgInstance = strp(long) }), want: []string{
			"p.instance_id: 65 characters, at most 64", "p.subject: 65 characters, at most 64",
			"p.relate_pkg_instance: at most 64 characters"}},
		{name: "unknown meter, sku and site", spec: spec("i", meterOf("nope"), func(s *Spec) { s.SKU, s.Site = "NOPE", strp("eu") }),
			want: []string{`p.meter: "nope" is not a configured meter`, `p.sku: "NOPE" has no plan`, `p.site: "eu" is not in koogallery.sites`}},
		{name: "plan of another meter", spec: spec("i", meterOf("calls")),
			want: []string{`p.sku: "SKU-T" prices meter "tokens", not the instance's meter "calls"`}},
		{name: "bad status", spec: spec("i", status("PAUSED")), want: []string{`p.status: "PAUSED" must be ACTIVE, FROZEN or RELEASED`}},
		{name: "lower-case status", spec: spec("i", status("active")), want: []string{`p.status: "active" must be`}},
		{name: "bad times", spec: spec("i", func(s *Spec) { s.StartedAt, s.Status, s.ReleasedAt = "yesterday", "RELEASED", strp("2026-11-01 05:00") }),
			want: []string{`p.started_at: "yesterday" is not an RFC 3339 time`, `p.released_at: "2026-11-01 05:00" is not an RFC 3339 time`}},
		{name: "no offset", spec: spec("i", func(s *Spec) { s.StartedAt = "2026-11-01T00:00:00" }),
			want: []string{`p.started_at: "2026-11-01T00:00:00" is not an RFC 3339 time`}},
		{name: "released before started", spec: spec("i", released(t0.Add(-time.Hour))),
			want: []string{"p.released_at: 2026-10-31T23:00:00Z must be after started_at"}},
		{name: "released at started", spec: spec("i", released(t0)), want: []string{"must be after started_at"}},
		{name: "RELEASED without released_at", spec: spec("i", status(Released)), want: []string{"p.released_at: required when status is RELEASED"}},
		{name: "released_at on an ACTIVE instance", spec: spec("i", status(Active), func(s *Spec) { s.ReleasedAt = strp(rfc(hour(2))) }),
			want: []string{"p.status: ACTIVE while released_at is set: a release must say status RELEASED"}},
		{name: "released_at on a FROZEN instance", spec: spec("i", status(Frozen), func(s *Spec) { s.ReleasedAt = strp(rfc(hour(2))) }),
			want: []string{"p.status: FROZEN while released_at is set"}},
		{name: "released_at without a status", spec: spec("i", func(s *Spec) { s.ReleasedAt = strp(rfc(hour(2))) }),
			want: []string{"p.status: not given (so ACTIVE) while released_at is set"}},
	}
	refs := testRefs(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate("p", refs)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("valid spec refused: %v", err)
				}
				return
			}
			checkProblems(t, err, tt.want)
		})
	}
}

func TestValidateWithoutPath(t *testing.T) {
	err := Spec{InstanceID: "i", Meter: "tokens", SKU: "SKU-T"}.Validate("", testRefs(t))
	checkProblems(t, err, []string{"started_at: required"})
	if strings.HasPrefix(err.Error(), ".") {
		t.Errorf("problem starts with a dot: %q", err)
	}
}

// TestValidateSkipsNilRefs: the config loader leaves out a broken meter list, and nothing is reported about it.
func TestValidateSkipsNilRefs(t *testing.T) {
	if err := spec("i", meterOf("whatever"), func(s *Spec) { s.SKU, s.Site = "ANY", strp("any") }).Validate("p", Refs{}); err != nil {
		t.Errorf("nil refs checked something: %v", err)
	}
}

func TestParseDefaultsAndPrecision(t *testing.T) {
	in, err := Spec{InstanceID: "i", Meter: "tokens", SKU: "SKU-T", StartedAt: "2026-11-01T08:00:00.123456789+08:00"}.parse("", testRefs(t))
	if err != nil {
		t.Fatal(err)
	}
	if in.Subject != "i" || in.Status != Active {
		t.Errorf("subject %q status %q, want the instance id and ACTIVE", in.Subject, in.Status)
	}
	if want := time.Date(2026, 11, 1, 0, 0, 0, 123000000, time.UTC); !in.StartedAt.Equal(want) || in.StartedAt.Location() != time.UTC {
		t.Errorf("started at %s, want %s (UTC, milliseconds)", in.StartedAt, want)
	}
}

func TestValidateAll(t *testing.T) {
	specs := []Spec{spec("a"), spec("b", meterOf("calls"), func(s *Spec) { s.SKU = "SKU-C" }), spec("a", status("X"))}
	err := ValidateAll(specs, "instances", testRefs(t))
	checkProblems(t, err, []string{
		`instances[2].status: "X" must be ACTIVE, FROZEN or RELEASED`,
		`instances[2].instance_id: "a" already defined at instances[0]`,
	})
	if err := ValidateAll(specs[:2], "instances", testRefs(t)); err != nil {
		t.Errorf("valid list refused: %v", err)
	}
}

func TestNewRefsWithoutConfig(t *testing.T) {
	err := spec("i").Validate("p", NewRefs(nil, nil, nil))
	checkProblems(t, err, []string{`p.meter: "tokens" is not a configured meter`, `p.sku: "SKU-T" has no plan`})
}
