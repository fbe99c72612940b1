package pricing

import (
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
)

// randDecimal returns a non-negative decimal with up to maxDigits digits and up to maxScale fraction digits.
func randDecimal(rng *rand.Rand, maxDigits, maxScale int) decimal.Decimal {
	digits := 1 + rng.IntN(maxDigits)
	var coef int64
	for range digits {
		coef = coef*10 + rng.Int64N(10)
	}
	return decimal.New(coef, -int32(rng.IntN(maxScale+1)))
}

// randBrackets returns 1 to 5 valid brackets: strictly ascending bounds, the last open, prices >= 0 (some zero).
func randBrackets(rng *rand.Rand) []BracketSpec {
	n := 1 + rng.IntN(5)
	out := make([]BracketSpec, n)
	bound := decimal.Zero
	for i := range out {
		price := randDecimal(rng, 4, 4)
		if rng.IntN(8) == 0 {
			price = decimal.Zero
		}
		out[i].UnitPrice = price.String()
		if i < n-1 {
			bound = bound.Add(randDecimal(rng, 4, 3)).Add(dec("0.001")) // strictly above the previous bound
			out[i].UpTo = bound.String()
		}
	}
	return out
}

// split cuts total into k >= 1 non-negative parts that add up to it exactly (some may be zero).
func split(rng *rand.Rand, total decimal.Decimal, k int) []decimal.Decimal {
	cuts := []decimal.Decimal{decimal.Zero, total}
	for range k - 1 {
		// A random point in [0, total], on a grid finer than total's own scale.
		f := decimal.New(rng.Int64N(10001), -4)
		cuts = append(cuts, total.Mul(f))
	}
	// Sort the cuts (k is small).
	for i := range cuts {
		for j := i + 1; j < len(cuts); j++ {
			if cuts[j].LessThan(cuts[i]) {
				cuts[i], cuts[j] = cuts[j], cuts[i]
			}
		}
	}
	parts := make([]decimal.Decimal, 0, k)
	for i := 1; i < len(cuts); i++ {
		parts = append(parts, cuts[i].Sub(cuts[i-1]))
	}
	return parts
}

// TestStepSplitInvariance: however a period's usage is split into records, the records' amounts add up to
// G(total), the lines of each record tile [cumulative, cumulative+usage], and every record is G(C+u) - G(C).
func TestStepSplitInvariance(t *testing.T) {
	rng := rand.New(rand.NewPCG(20261122, 1))
	for iter := range 2000 {
		p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: randBrackets(rng)})
		total := randDecimal(rng, 6, 4)
		parts := split(rng, total, 1+rng.IntN(12))

		sum, cum := decimal.Zero, decimal.Zero
		for _, u := range parts {
			q := mustPrice(t, p, u, cum)
			checkQuote(t, q)
			if !q.Amount.Equal(graduated(p, cum.Add(u)).Sub(graduated(p, cum))) {
				t.Fatalf("iter %d: Price(%s, %s) = %s, want G(C+u)-G(C)", iter, u, cum, q.Amount)
			}
			// The lines tile [cum, cum+u] in order.
			pos := cum
			for _, l := range q.Lines {
				if !l.From.Equal(pos) || !l.To.Equal(l.From.Add(l.Quantity)) {
					t.Fatalf("iter %d: lines %+v do not tile [%s, %s]", iter, q.Lines, cum, cum.Add(u))
				}
				pos = l.To
			}
			if !pos.Equal(cum.Add(u)) {
				t.Fatalf("iter %d: lines %+v end at %s, want %s", iter, q.Lines, pos, cum.Add(u))
			}
			sum = sum.Add(q.Amount)
			cum = cum.Add(u)
		}
		if want := graduated(p, total); !sum.Equal(want) {
			t.Fatalf("iter %d: %d records of %s sum to %s, want G(%s) = %s", iter, len(parts), total, sum, total, want)
		}
		if whole := mustPrice(t, p, total, decimal.Zero).Amount; !whole.Equal(sum) {
			t.Fatalf("iter %d: one record of %s = %s, split = %s", iter, total, whole, sum)
		}
	}
}

// TestFixedIsLinear: price(a) + price(b) = price(a+b).
func TestFixedIsLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 2000 {
		p := newPlan(t, PlanSpec{Mode: "fixed", UnitPrice: randDecimal(rng, 6, 6).String()})
		a, b := randDecimal(rng, 10, 4), randDecimal(rng, 10, 4)
		c := randDecimal(rng, 10, 4) // cumulative plays no part
		pa := mustPrice(t, p, a, c).Amount
		pb := mustPrice(t, p, b, decimal.Zero).Amount
		pab := mustPrice(t, p, a.Add(b), c).Amount
		if !pa.Add(pb).Equal(pab) {
			t.Fatalf("price %s: %s + %s = %s, price(%s) = %s", p.UnitPrice, pa, pb, pa.Add(pb), a.Add(b), pab)
		}
	}
}

// TestTierWholeUsage: tier is u x price(bracket(u)) for every u, including exactly on and just past each bound.
func TestTierWholeUsage(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 500 {
		p := newPlan(t, PlanSpec{Mode: "tier", Brackets: randBrackets(rng)})
		usages := []decimal.Decimal{decimal.Zero}
		for _, b := range p.Brackets {
			if !b.Open {
				usages = append(usages, b.UpTo, b.UpTo.Add(dec("0.0001")), b.UpTo.Sub(dec("0.0001")))
			}
		}
		for range 20 {
			usages = append(usages, randDecimal(rng, 6, 4))
		}
		for _, u := range usages {
			if u.IsNegative() {
				continue
			}
			q := mustPrice(t, p, u, randDecimal(rng, 4, 2))
			checkQuote(t, q)
			if want := u.Mul(tierPrice(p, u)); !q.Amount.Equal(want) || len(q.Lines) != 1 {
				t.Fatalf("tier %s: %+v, want %s", u, q, want)
			}
		}
	}
}

// TestFastPathMatchesDecimal: the int64 fast path (fast.go) gives the same quotes as decimal arithmetic, and
// steps aside for values that do not fit.
func TestFastPathMatchesDecimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 13))
	sameQuote := func(a, b Quote) bool {
		if !a.Amount.Equal(b.Amount) || len(a.Lines) != len(b.Lines) {
			return false
		}
		for i := range a.Lines {
			x, y := a.Lines[i], b.Lines[i]
			if !x.From.Equal(y.From) || !x.To.Equal(y.To) || x.ToOpen != y.ToOpen || !x.Quantity.Equal(y.Quantity) ||
				!x.UnitPrice.Equal(y.UnitPrice) || !x.Amount.Equal(y.Amount) {
				return false
			}
		}
		return true
	}
	fastSteps, fastTiers := 0, 0
	for range 3000 {
		brackets := randBrackets(rng)
		step := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: brackets})
		tier := newPlan(t, PlanSpec{Mode: "tier", Brackets: brackets})
		u := randDecimal(rng, 8, 6).Add(dec("0.000001"))
		c := randDecimal(rng, 8, 6)
		if rng.IntN(10) == 0 {
			u = randDecimal(rng, 18, 18).Add(dec("1")) // may not fit
		}
		if q, ok := step.priceStepFast(u, c); ok {
			fastSteps++
			if slow := step.priceStepDecimal(u, c); !sameQuote(q, slow) {
				t.Fatalf("step C=%s u=%s brackets %+v:\nfast %+v\nslow %+v", c, u, brackets, q, slow)
			}
		}
		if i, ok := tier.bracketOfFast(u); ok {
			fastTiers++
			if j := tier.bracketOf(u); i != j {
				t.Fatalf("tier %s brackets %+v: fast bracket %d, slow %d", u, brackets, i, j)
			}
		}
	}
	if fastSteps < 2000 || fastTiers < 2000 {
		t.Errorf("fast path taken for %d steps and %d tiers of 3000: it should be the common case", fastSteps, fastTiers)
	}

	// Values beyond int64 at the common scale take the decimal path and still price exactly.
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: []BracketSpec{
		{UpTo: "0.000000000000000001", UnitPrice: "1"}, {UnitPrice: "999999999999999999"},
	}})
	big := dec("123456789012345678901234")
	if _, ok := p.priceStepFast(big, decimal.Zero); ok {
		t.Error("fast path taken for a 24-digit usage")
	}
	q := mustPrice(t, p, big, decimal.Zero)
	equal(t, "big step", q.Amount, graduated(p, big))
	if _, ok := p.bracketOfFast(big); ok {
		t.Error("fast tier bracket for a 24-digit usage")
	}
	huge := newPlan(t, PlanSpec{Mode: "tier", Brackets: []BracketSpec{
		{UpTo: "1234567890123456789012345678", UnitPrice: "1"}, {UnitPrice: "2"},
	}})
	if huge.fast != nil {
		t.Error("int64 form of a 28-digit bound")
	}
	equal(t, "huge tier", mustPrice(t, huge, dec("5"), decimal.Zero).Amount, dec("5"))
}

// TestFastPathOverflow: a product beyond int64 falls back to decimal arithmetic.
func TestFastPathOverflow(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: []BracketSpec{
		{UpTo: "10", UnitPrice: "999999999999999999"}, {UnitPrice: "999999999999999999"},
	}})
	u := dec("99999999999")
	if _, ok := p.priceStepFast(u, decimal.Zero); ok {
		t.Error("fast path taken for a product of 29 digits")
	}
	q := mustPrice(t, p, u, dec("5"))
	checkQuote(t, q)
	equal(t, "overflowing step", q.Amount, graduated(p, u.Add(dec("5"))).Sub(graduated(p, dec("5"))))
}
