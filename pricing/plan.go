package pricing

import (
	"time"

	"github.com/shopspring/decimal"
)

// Mode is a KooGallery price mode of a pay-per-use billing factor (spec §4).
type Mode string

const (
	// ModeFixed charges every record usage x unit price.
	ModeFixed Mode = "fixed"
	// ModeStep is graduated: the usage accumulated in a calendar period is split across the brackets, each part
	// at its own bracket's price.
	ModeStep Mode = "step"
	// ModeTier charges the whole usage of a record at the price of the one bracket that usage falls into.
	ModeTier Mode = "tier"
)

// Accumulation is the calendar period over which a step plan accumulates usage.
type Accumulation string

// The accumulation periods are calendar periods in the plan's time zone, not rolling windows: a month is
// 1 November 00:00 to 1 December 00:00 local time, whatever the number of days or hours in it.
const (
	AccumulationHour  Accumulation = "hour"
	AccumulationDay   Accumulation = "day"
	AccumulationMonth Accumulation = "month"
)

// Plan is one validated version of the price of a SKU. Plans are built only by NewCatalog and are immutable:
// the fields are exported to be read (by the CLI, reports and tests), never written, and a Plan is safe for
// concurrent use.
type Plan struct {
	SKU string
	// EffectiveFrom is the first instant this version applies; zero means it has applied since always.
	EffectiveFrom time.Time
	// EffectiveUntil is the EffectiveFrom of the next version of the same SKU; zero means no later version.
	// Step accumulation never reaches across it (see Period).
	EffectiveUntil time.Time
	Meter          string
	Currency       string
	// UnitScale converts a meter's quantity to KooGallery units: usage = quantity x UnitScale. Prices are per
	// KooGallery unit, and Price takes usage already scaled.
	UnitScale decimal.Decimal
	Mode      Mode
	// Accumulation is set for step plans only.
	Accumulation Accumulation
	// Location is the zone whose calendar bounds step periods; time.UTC when the plan names no timezone (a step
	// plan with hour accumulation may omit it; fixed and tier plans may not name one). Never nil.
	Location *time.Location
	// UnitPrice is the price of fixed plans; zero for step and tier.
	UnitPrice decimal.Decimal
	// Brackets are the step and tier brackets, strictly ascending, the last one open-ended; nil for fixed.
	Brackets []Bracket

	fast *fastPlan // the brackets in int64 form, nil when they do not fit (see fast.go)
}

// Bracket is one price bracket. It covers usage in (previous UpTo, UpTo], the first one from 0: an upper bound
// belongs to the lower bracket, as KooGallery reads "not exceeding 3" / "exceeding 3".
type Bracket struct {
	UpTo      decimal.Decimal // meaningless when Open
	Open      bool            // no upper bound: only the last bracket
	UnitPrice decimal.Decimal
}

// from is the lower bound of bracket i.
func (p *Plan) from(i int) decimal.Decimal {
	if i == 0 {
		return decimal.Zero
	}
	return p.Brackets[i-1].UpTo
}
