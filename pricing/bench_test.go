package pricing

import (
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
)

type benchRecord struct {
	plan              *Plan
	usage, cumulative decimal.Decimal
}

// benchPlans are one plan of each mode, with brackets whose bounds the benchmark's usages cross.
func benchPlans(b *testing.B) map[Mode]*Plan {
	brackets := []BracketSpec{{UpTo: "10", UnitPrice: "0.3"}, {UpTo: "100", UnitPrice: "0.25"}, {UnitPrice: "0.2015"}}
	return map[Mode]*Plan{
		ModeFixed: newPlan(b, PlanSpec{Mode: "fixed", UnitPrice: "0.0005"}),
		ModeTier:  newPlan(b, PlanSpec{Mode: "tier", Brackets: brackets}),
		ModeStep:  newPlan(b, PlanSpec{Mode: "step", Accumulation: "month", Timezone: "Asia/Shanghai", Brackets: brackets}),
	}
}

// benchRecords returns n records cycling through the given modes, with usages of up to 4 decimals (what
// KooGallery takes) and cumulatives spread across the bracket bounds.
func benchRecords(b *testing.B, n int, modes ...Mode) []benchRecord {
	plans := benchPlans(b)
	rng := rand.New(rand.NewPCG(42, 42))
	recs := make([]benchRecord, n)
	for i := range recs {
		recs[i] = benchRecord{
			plan:       plans[modes[i%len(modes)]],
			usage:      decimal.New(rng.Int64N(200_0000), -4),
			cumulative: decimal.New(rng.Int64N(150_0000), -4),
		}
	}
	return recs
}

// BenchmarkPrice prices 1,000,000 records per op, a third each fixed, tier and step: ns/op / 10^6 is the
// cost of one record.
func BenchmarkPrice(b *testing.B) {
	const n = 1_000_000
	// 65,536 distinct records cycled through, so that the data of the benchmark stays small beside the work.
	recs := benchRecords(b, 1<<16, ModeFixed, ModeTier, ModeStep)
	var sink decimal.Decimal
	b.ReportAllocs()
	for b.Loop() {
		for i := range n {
			r := &recs[i&(len(recs)-1)]
			q, err := r.plan.Price(r.usage, r.cumulative)
			if err != nil {
				b.Fatal(err)
			}
			sink = q.Amount
		}
	}
	_ = sink
}

// BenchmarkPriceMode prices one record per op in each mode.
func BenchmarkPriceMode(b *testing.B) {
	for _, mode := range []Mode{ModeFixed, ModeTier, ModeStep} {
		b.Run(string(mode), func(b *testing.B) {
			recs := benchRecords(b, 1<<12, mode)
			var sink decimal.Decimal
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r := &recs[i&(len(recs)-1)]
				i++
				q, err := r.plan.Price(r.usage, r.cumulative)
				if err != nil {
					b.Fatal(err)
				}
				sink = q.Amount
			}
			_ = sink
		})
	}
}

// BenchmarkLoadPlans loads the good testdata file with every mode.
func BenchmarkLoadPlans(b *testing.B) {
	data := readFile(b, "testdata/good/modes.yaml")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := LoadPlans(data); err != nil {
			b.Fatal(err)
		}
	}
}
