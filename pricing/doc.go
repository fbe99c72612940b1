// Package pricing owns meterd's price plans and computes what KooGallery charges for a usage record, so that the
// seller knows its revenue and can reconcile it with KooGallery's bill (spec/koogallery.md §4).
//
// It owns:
//   - the plan config (PlanSpec, DESIGN.md §3; schemas/plan.schema.json) and its validation: NewCatalog and
//     LoadPlans report every problem at once, each with its config path, and never build a half-valid catalog;
//   - the Catalog of plan versions per SKU, and which version is in effect at an instant;
//   - the three price modes: fixed (usage x price), tier (the whole usage at the price of the bracket it falls
//     into; an upper bound belongs to the lower bracket) and step (graduated over a calendar hour, day or month
//     in the plan's time zone: each part of the accumulated usage at its own bracket's price);
//   - the accumulation periods of step plans (Plan.Period), across time zones and daylight-saving changes.
//
// It guarantees:
//   - exactness: every quantity, price and amount is a shopspring/decimal, never a float64, and amounts are never
//     rounded; Round and Format (half away from zero, which is half-up for amounts, DisplayPlaces by default)
//     exist for display only;
//   - purity: Price is a function of (plan, usage, cumulative) alone, with no clock and no state, so a rebuild
//     prices the same hour to the same amount;
//   - step additivity: the amounts of the records of one period add up to the graduated price of the period's
//     total, however its usage is split into records;
//   - bounded work: decimal text is parsed only in plain or JSON-number syntax within MaxIntegerDigits and
//     MaxFractionDigits, and Price refuses values with absurd exponents, so no input makes it allocate without
//     bound.
//
// It does not know about instances, hours or stores: the caller totals an instance-hour, asks the Catalog for
// the plan in effect at the hour's start, sums the usage of the instance's earlier hours in the same Period as
// the cumulative, and calls Price.
//
// Performance. Step and tier do their bracket arithmetic in int64 when the values fit (they do for any real
// plan; fast.go), and fall back to decimal arithmetic with the same results otherwise; what remains is mostly
// the allocation of the result decimals. Measured on the 2-core AMD EPYC development machine (Go 1.26) with
//
//	go test -run='^$' -bench=. -benchmem -cpu=1 ./pricing/
//
//	BenchmarkPrice             1,000,000 records per op, a third each fixed, tier and step:
//	                           370,000,000 ns/op (0.37 s for the million), 5,144,973 allocs/op, 236 MB/op
//	BenchmarkPriceMode/fixed   180 ns/op   3 allocs/op
//	BenchmarkPriceMode/tier    220 ns/op   3 allocs/op
//	BenchmarkPriceMode/step    445 ns/op   9 allocs/op (records crossing one or two bounds)
//	BenchmarkLoadPlans         310,000 ns/op   1,497 allocs/op (five plans, every mode)
//
// with a load average near 1; with other builds and tests running beside it the same run gave up to
// 600,000,000 ns/op. `go test -run='^$' -bench=. -benchmem ./pricing/` (GOMAXPROCS 2) gives the same figures
// within that noise: pricing is single-threaded, and the second core only takes the garbage collector's share.
package pricing
