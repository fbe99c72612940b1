package pricing

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// FuzzLoadPlans feeds arbitrary documents to LoadPlans: it must never panic, an error must come without a
// catalog, and a catalog must hold only plans that price without error and keep the package's invariants.
//
//	go test -run='^$' -fuzz=FuzzLoadPlans -fuzztime=1m ./pricing/
func FuzzLoadPlans(f *testing.F) {
	files, err := filepath.Glob("testdata/*/*.yaml")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed files: %v", err)
	}
	for _, name := range files {
		f.Add(readFile(f, name))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := LoadPlans(data)
		if err != nil {
			if c != nil {
				t.Fatalf("catalog and error together: %v", err)
			}
			return
		}
		if c == nil {
			t.Fatal("neither catalog nor error")
		}
		checkCatalog(t, c)
	})
}

// checkCatalog asserts what NewCatalog promises about every catalog it returns.
func checkCatalog(t *testing.T, c *Catalog) {
	skus := c.SKUs()
	if !slices.IsSorted(skus) {
		t.Fatalf("SKUs not sorted: %q", skus)
	}
	usages := []decimal.Decimal{decimal.Zero, dec("0.0001"), dec("1"), dec("1000.5")}
	for _, sku := range skus {
		vs := c.Versions(sku)
		if sku == "" || len(vs) == 0 {
			t.Fatalf("sku %q with %d versions", sku, len(vs))
		}
		for i, p := range vs {
			if p.SKU != sku || p.Meter != vs[0].Meter || p.Meter == "" || len(p.Currency) != 3 {
				t.Fatalf("%s v%d: identity %+v", sku, i, p)
			}
			if i > 0 && (vs[i].EffectiveFrom.IsZero() || !vs[i].EffectiveFrom.After(vs[i-1].EffectiveFrom)) {
				t.Fatalf("%s: versions not strictly ascending", sku)
			}
			if i < len(vs)-1 && !p.EffectiveUntil.Equal(vs[i+1].EffectiveFrom) || i == len(vs)-1 && !p.EffectiveUntil.IsZero() {
				t.Fatalf("%s v%d: EffectiveUntil %s", sku, i, p.EffectiveUntil)
			}
			if got, err := c.Plan(sku, p.EffectiveFrom); !p.EffectiveFrom.IsZero() && (err != nil || got != p) {
				t.Fatalf("%s: Plan at its own EffectiveFrom = %p, %v", sku, got, err)
			}
			checkPlan(t, p)
			bounds := slices.Clone(usages)
			for _, b := range p.Brackets {
				if !b.Open {
					bounds = append(bounds, b.UpTo)
				}
			}
			for _, u := range bounds {
				for _, cum := range []decimal.Decimal{decimal.Zero, dec("2.5")} {
					q, err := p.Price(u, cum)
					if err != nil {
						t.Fatalf("%s: Price(%s, %s): %v", sku, u, cum, err)
					}
					checkQuote(t, q)
					if q.Amount.IsNegative() {
						t.Fatalf("%s: negative amount %s", sku, q.Amount)
					}
					if p.Mode == ModeStep && !q.Amount.Equal(graduated(p, cum.Add(u)).Sub(graduated(p, cum))) {
						t.Fatalf("%s: step Price(%s, %s) = %s, not G(C+u)-G(C)", sku, u, cum, q.Amount)
					}
				}
			}
			for _, ts := range []time.Time{p.EffectiveFrom, p.EffectiveFrom.Add(36*time.Hour + 17*time.Minute)} {
				if s, e := p.Period(ts); ts.Before(s) || !ts.Before(e) {
					t.Fatalf("%s: Period(%s) = [%s, %s)", sku, ts, s, e)
				}
			}
		}
	}
}

// checkPlan asserts the shape validation guarantees for one plan.
func checkPlan(t *testing.T, p *Plan) {
	if p.Location == nil || p.UnitScale.Sign() <= 0 {
		t.Fatalf("%s: location %v, unit scale %s", p.SKU, p.Location, p.UnitScale)
	}
	switch p.Mode {
	case ModeFixed:
		if p.Brackets != nil || p.UnitPrice.IsNegative() || p.Accumulation != "" {
			t.Fatalf("%s: fixed plan %+v", p.SKU, p)
		}
		return
	case ModeStep:
		if p.Accumulation != AccumulationHour && p.Accumulation != AccumulationDay && p.Accumulation != AccumulationMonth {
			t.Fatalf("%s: step accumulation %q", p.SKU, p.Accumulation)
		}
	case ModeTier:
		if p.Accumulation != "" {
			t.Fatalf("%s: tier with accumulation %q", p.SKU, p.Accumulation)
		}
	default:
		t.Fatalf("%s: mode %q", p.SKU, p.Mode)
	}
	if len(p.Brackets) == 0 || !p.UnitPrice.IsZero() {
		t.Fatalf("%s: %s plan with %d brackets and unit price %s", p.SKU, p.Mode, len(p.Brackets), p.UnitPrice)
	}
	for i, b := range p.Brackets {
		last := i == len(p.Brackets)-1
		if b.Open != last || b.UnitPrice.IsNegative() ||
			!last && (b.UpTo.Sign() <= 0 || i > 0 && !b.UpTo.GreaterThan(p.Brackets[i-1].UpTo)) {
			t.Fatalf("%s: brackets %+v", p.SKU, p.Brackets)
		}
	}
}
