package aggregate

import (
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate/meter"
)

// CheckCarries verifies the per-hour carry arithmetic of additive rows (DESIGN.md §4 step 5) over a set of closed
// rows of consecutive closes: each row's carry_in is the previous row's carry_out of the same instance (0 for its
// first row, and 0 after a release write-off), carry_in + (quantity + late) x unit_scale = usage_value + carry_out,
// usage_value has at most 4 decimals and 0 <= carry_out < 0.0001. It returns every violation found.
func CheckCarries(rows []Row, writeOffs []WriteOff) error {
	released := map[string]time.Time{}
	for _, w := range writeOffs {
		if w.Kind == WriteOffReleaseRemainder {
			released[w.InstanceID] = w.OriginHour
		}
	}
	unit := decimal.New(1, -usageDecimals)
	var errs []error
	prev := map[string]Row{}
	for _, r := range rows {
		if !meter.Aggregation(r.Aggregation).Additive() {
			continue
		}
		where := fmt.Sprintf("%s %s", r.InstanceID, r.Hour.Format(time.RFC3339))
		wantIn := decimal.Zero
		if p, ok := prev[r.InstanceID]; ok {
			wantIn = p.CarryOut
		}
		if !r.CarryIn.Equal(wantIn) {
			errs = append(errs, fmt.Errorf("%s: carry_in %s, previous carry_out %s", where, r.CarryIn, wantIn))
		}
		lhs := r.CarryIn.Add(r.Quantity.Add(r.LateQuantity).Mul(r.UnitScale))
		if rhs := r.UsageValue.Add(r.CarryOut); !lhs.Equal(rhs) {
			errs = append(errs, fmt.Errorf("%s: carry_in + scaled usage %s != usage_value + carry_out %s", where, lhs, rhs))
		}
		if !r.UsageValue.Equal(r.UsageValue.Truncate(usageDecimals)) {
			errs = append(errs, fmt.Errorf("%s: usage_value %s has more than 4 decimals", where, r.UsageValue))
		}
		if r.CarryOut.IsNegative() || !r.CarryOut.LessThan(unit) {
			errs = append(errs, fmt.Errorf("%s: carry_out %s outside [0, 0.0001)", where, r.CarryOut))
		}
		prev[r.InstanceID] = r
		if h, ok := released[r.InstanceID]; ok && !r.Hour.Before(h) {
			r.CarryOut = decimal.Zero
			prev[r.InstanceID] = r
		}
	}
	return errors.Join(errs...)
}
