package pricing

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestYAMLKeepsLiteralText checks what PlanSpec relies on instead of a custom decoder: yaml.v3 stores the
// literal text of an unquoted number, timestamp or other scalar in a string field, and null as "".
func TestYAMLKeepsLiteralText(t *testing.T) {
	const doc = `
sku: 0123
effective_from: 2026-11-01T00:00:00Z
unit_scale: 1E-3
unit_price: 0.30
brackets:
  - {up_to: 3.10, unit_price: 1e3}
  - {up_to: ~, unit_price: 0x1F}
`
	var s PlanSpec
	if err := yaml.Unmarshal([]byte(doc), &s); err != nil {
		t.Fatal(err)
	}
	got := []string{s.SKU, s.EffectiveFrom, s.UnitScale, s.UnitPrice,
		s.Brackets[0].UpTo, s.Brackets[0].UnitPrice, s.Brackets[1].UpTo, s.Brackets[1].UnitPrice}
	want := []string{"0123", "2026-11-01T00:00:00Z", "1E-3", "0.30", "3.10", "1e3", "", "0x1F"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d = %q, want the literal %q", i, got[i], want[i])
		}
	}
}

// TestLoadDesignExample loads the plan of DESIGN.md §3 and checks what it parsed to.
func TestLoadDesignExample(t *testing.T) {
	c, err := LoadPlans(readFile(t, "testdata/good/design.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.SKUs(); len(got) != 1 || got[0] != "OFFI-TOKENS" {
		t.Fatalf("SKUs = %v", got)
	}
	p, err := c.Plan("OFFI-TOKENS", at(t, "2026-11-22T03:00:00Z"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Meter != "tokens" || p.Currency != "CNY" || p.Mode != ModeStep || p.Accumulation != AccumulationMonth ||
		p.Location.String() != "Asia/Shanghai" || !p.EffectiveFrom.Equal(at(t, "2026-11-01T00:00:00Z")) ||
		!p.UnitScale.Equal(dec("0.001")) || len(p.Brackets) != 2 || !p.Brackets[0].UpTo.Equal(dec("3")) ||
		p.Brackets[0].Open || !p.Brackets[1].Open || !p.Brackets[1].UnitPrice.Equal(dec("0.2")) {
		t.Errorf("parsed plan: %+v", p)
	}
	equal(t, "8 units", mustPrice(t, p, dec("8"), dec("0")).Amount, graduated(p, dec("8")))
}

// TestLoadForms: a top-level list and a mapping with a plans key load to the same catalog.
func TestLoadForms(t *testing.T) {
	const plan = `- {sku: A, meter: m, currency: CNY, mode: fixed, unit_price: 0.5}
- {sku: A, meter: m, currency: CNY, mode: fixed, unit_price: 0.4, effective_from: 2026-12-01T00:00:00Z}
`
	indented := "  " + strings.ReplaceAll(strings.TrimSuffix(plan, "\n"), "\n", "\n  ") + "\n"
	for _, doc := range []string{plan, "plans:\n" + indented} {
		c, err := LoadPlans([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		vs := c.Versions("A")
		if len(vs) != 2 || !vs[0].UnitPrice.Equal(dec("0.5")) || !vs[1].UnitPrice.Equal(dec("0.4")) {
			t.Errorf("%s: versions %+v", doc, vs)
		}
	}
	c, err := LoadPlans([]byte("plans:\n"))
	if err != nil || len(c.SKUs()) != 0 {
		t.Errorf("plans: null -> %v, %v; want an empty catalog", c, err)
	}
}

// TestLoadSyntaxErrorLines: malformed YAML is reported at the line where it breaks.
func TestLoadSyntaxErrorLines(t *testing.T) {
	tests := []struct{ doc, want string }{
		{"plans:\n  - sku: A\n    meter: m\n   currency: CNY\n", "line 4: "},
		{"plans:\n  - sku: A\n\tmeter: m\n", "line 3: found a tab character"},
		{"plans:\n  - sku: A\n    meter: m: n\n", "line 3: mapping values are not allowed"},
		{"plans:\n  - sku: \"A\n    meter: m\n", "line 2: "},
		{"- sku: A\n  meter: *nope\n", "line 2: unknown anchor"},
	}
	for _, tc := range tests {
		_, err := LoadPlans([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "decode plans: ") {
			t.Errorf("%q: err = %v, want it to contain %q", tc.doc, err, tc.want)
		}
	}
}

// TestLoadKeepsPathsAfterBrokenElement: yaml.v3 drops a list element it cannot decode; the paths of the plans
// after it must still be their own.
func TestLoadKeepsPathsAfterBrokenElement(t *testing.T) {
	doc := `- {sku: A, sku: B}
- just a string
- {sku: C, meter: m, currency: CNY, mode: fixed}
`
	_, err := LoadPlans([]byte(doc))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"plans[0].sku: defined twice (lines 1 and 1)",
		"plans[1]: want a mapping, got !!str (line 2)",
		"plans[2].unit_price: required for mode fixed",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestCatalogPlan(t *testing.T) {
	c, err := LoadPlans([]byte(`
- {sku: LATER, meter: m, currency: CNY, mode: fixed, unit_price: 1, effective_from: 2026-12-01T00:00:00Z}
- {sku: LATER, meter: m, currency: CNY, mode: fixed, unit_price: 2, effective_from: 2027-01-01T00:00:00Z}
- {sku: ALWAYS, meter: m, currency: USD, mode: fixed, unit_price: 3}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.SKUs(); len(got) != 2 || got[0] != "ALWAYS" || got[1] != "LATER" {
		t.Errorf("SKUs = %v", got)
	}
	if _, err := c.Plan("NOPE", time.Now()); !errors.Is(err, ErrUnknownSKU) {
		t.Errorf("unknown sku: %v", err)
	}
	_, err = c.Plan("LATER", at(t, "2026-11-30T23:59:59Z"))
	if !errors.Is(err, ErrNotInEffect) || !strings.Contains(err.Error(), "2026-12-01T00:00:00Z") {
		t.Errorf("before the first version: %v", err)
	}
	for _, tc := range []struct{ t, price string }{
		{"2026-12-01T00:00:00Z", "1"}, {"2026-12-31T23:00:00Z", "1"}, {"2027-01-01T00:00:00Z", "2"}, {"2099-01-01T00:00:00Z", "2"},
	} {
		p, err := c.Plan("LATER", at(t, tc.t))
		if err != nil || !p.UnitPrice.Equal(dec(tc.price)) {
			t.Errorf("Plan(LATER, %s) = %+v, %v; want price %s", tc.t, p, err, tc.price)
		}
	}
	if p, err := c.Plan("ALWAYS", time.Time{}); err != nil || !p.UnitPrice.Equal(dec("3")) {
		t.Errorf("a version without effective_from applies at any instant: %v, %v", p, err)
	}
	if vs := c.Versions("NOPE"); vs != nil {
		t.Errorf("Versions(NOPE) = %v", vs)
	}
	// The slices handed out are copies.
	c.SKUs()[0] = "X"
	c.Versions("LATER")[0] = nil
	if c.SKUs()[0] != "ALWAYS" || c.Versions("LATER")[0] == nil {
		t.Error("SKUs or Versions share the catalog's slices")
	}
}
