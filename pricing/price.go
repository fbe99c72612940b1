package pricing

import (
	"encoding/json"
	"fmt"

	"github.com/shopspring/decimal"
)

// Quote is the exact charge for one record and how it was made up. Amount is the sum of the lines' amounts,
// unrounded: round only for display (Round, Format).
type Quote struct {
	Amount decimal.Decimal `json:"amount"`
	Lines  []Line          `json:"lines"`
}

// Line is one part of a Quote. Its meaning follows the mode:
//   - fixed: one line, the whole usage, From 0 and ToOpen;
//   - tier: one line, the whole usage, From/To the bounds of the bracket it fell into;
//   - step: one line per bracket that [cumulative, cumulative+usage] reaches, From/To the part of that interval
//     inside the bracket (in accumulated-usage coordinates), so Quantity = To - From. A zero usage gives one zero
//     line in the bracket the next unit would be charged in.
//
// Every quote has at least one line, and Amount = Quantity x UnitPrice exactly.
type Line struct {
	From      decimal.Decimal
	To        decimal.Decimal // meaningless when ToOpen
	ToOpen    bool
	Quantity  decimal.Decimal
	UnitPrice decimal.Decimal
	Amount    decimal.Decimal
}

// lineJSON is the wire form of a Line: decimals as strings (shopspring's default), an open end as "to": null.
type lineJSON struct {
	From      decimal.Decimal  `json:"from"`
	To        *decimal.Decimal `json:"to"`
	Quantity  decimal.Decimal  `json:"quantity"`
	UnitPrice decimal.Decimal  `json:"unit_price"`
	Amount    decimal.Decimal  `json:"amount"`
}

// MarshalJSON writes {"from","to","quantity","unit_price","amount"} with exact decimal strings and "to": null
// for an open-ended line, which is what `meterd price --output json` prints.
func (l Line) MarshalJSON() ([]byte, error) {
	w := lineJSON{From: l.From, Quantity: l.Quantity, UnitPrice: l.UnitPrice, Amount: l.Amount}
	if !l.ToOpen {
		w.To = &l.To
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *Line) UnmarshalJSON(data []byte) error {
	var w lineJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	*l = Line{From: w.From, ToOpen: w.To == nil, Quantity: w.Quantity, UnitPrice: w.UnitPrice, Amount: w.Amount}
	if w.To != nil {
		l.To = *w.To
	}
	return nil
}

// Price prices one record of usage (in KooGallery units, i.e. already multiplied by UnitScale). cumulative is
// the usage already accumulated earlier in the same step period (see Period); fixed and tier plans ignore it,
// but it must still be >= 0 so that a caller's bug shows the same way in every mode.
//
// Price is pure and exact: the same inputs always give the same Quote, and for step plans the amounts of the
// records of one period add up to the graduated price of the period's total, however the usage was split.
func (p *Plan) Price(usage, cumulative decimal.Decimal) (Quote, error) {
	if err := checkQuantity(usage); err != nil {
		return Quote{}, fmt.Errorf("price %s: usage %w", p.SKU, err)
	}
	if err := checkQuantity(cumulative); err != nil {
		return Quote{}, fmt.Errorf("price %s: cumulative %w", p.SKU, err)
	}
	// The errors below are for a Plan built by hand rather than by NewCatalog, which guarantees neither.
	switch {
	case p.Mode == ModeFixed:
		return p.priceFixed(usage), nil
	case p.Mode != ModeTier && p.Mode != ModeStep:
		return Quote{}, fmt.Errorf("price %s: unknown mode %q", p.SKU, p.Mode)
	case len(p.Brackets) == 0:
		return Quote{}, fmt.Errorf("price %s: %s plan without brackets", p.SKU, p.Mode)
	case p.Mode == ModeTier:
		return p.priceTier(usage), nil
	}
	return p.priceStep(usage, cumulative), nil
}

// checkQuantity checks a usage or cumulative value. The exponent is checked first and the value is printed only
// once it is known to be small: printing 1e999999999 would itself allocate a billion digits.
func checkQuantity(d decimal.Decimal) error {
	if err := checkExponent(d); err != nil {
		return err
	}
	if d.Sign() < 0 {
		return fmt.Errorf("%s: must not be negative", d)
	}
	return nil
}

func (p *Plan) priceFixed(usage decimal.Decimal) Quote {
	amount := usage.Mul(p.UnitPrice)
	return Quote{Amount: amount, Lines: []Line{{
		From: decimal.Zero, ToOpen: true, Quantity: usage, UnitPrice: p.UnitPrice, Amount: amount,
	}}}
}

// priceTier charges the whole usage at the price of the bracket it falls into. This is not monotone across a
// bound (3 at 0.3 = 0.90, 3.0001 at 0.2 = 0.60002): that is KooGallery's rule, kept on purpose.
func (p *Plan) priceTier(usage decimal.Decimal) Quote {
	i, ok := p.bracketOfFast(usage)
	if !ok {
		i = p.bracketOf(usage)
	}
	b := p.Brackets[i]
	amount := usage.Mul(b.UnitPrice)
	return Quote{Amount: amount, Lines: []Line{{
		From: p.from(i), To: b.UpTo, ToOpen: b.Open, Quantity: usage, UnitPrice: b.UnitPrice, Amount: amount,
	}}}
}

// bracketOf returns the index of the bracket x falls into: the first whose upper bound is >= x, since an upper
// bound belongs to the lower bracket. The last bracket is open, so there always is one.
func (p *Plan) bracketOf(x decimal.Decimal) int {
	last := len(p.Brackets) - 1
	for i := range last {
		if x.LessThanOrEqual(p.Brackets[i].UpTo) {
			return i
		}
	}
	return last
}

// priceStep charges the part of [c, c+usage] inside each bracket at that bracket's price. That is
// G(c+usage) - G(c) for the graduated total G, computed directly from the parts so that the breakdown and the
// amount are the same numbers. It takes the int64 fast path (fast.go) when the values fit.
func (p *Plan) priceStep(usage, c decimal.Decimal) Quote {
	if usage.Sign() > 0 {
		if q, ok := p.priceStepFast(usage, c); ok {
			return q
		}
	}
	return p.priceStepDecimal(usage, c)
}

// priceStepDecimal is priceStep in shopspring/decimal arithmetic, for any values.
func (p *Plan) priceStepDecimal(usage, c decimal.Decimal) Quote {
	if usage.IsZero() {
		// The next unit would be charged in the first bracket whose upper bound lies beyond c.
		i := len(p.Brackets) - 1
		for j := range i {
			if c.LessThan(p.Brackets[j].UpTo) {
				i = j
				break
			}
		}
		return Quote{Amount: decimal.Zero, Lines: []Line{{
			From: c, To: c, Quantity: decimal.Zero, UnitPrice: p.Brackets[i].UnitPrice, Amount: decimal.Zero,
		}}}
	}
	end := c.Add(usage)
	var q Quote
	for i, b := range p.Brackets {
		if !b.Open && b.UpTo.LessThanOrEqual(c) {
			continue // the bracket ends before the record's part of the period begins
		}
		lo := p.from(i)
		if lo.GreaterThanOrEqual(end) {
			break // this bracket and every later one start after the record's part ends
		}
		partFrom := decimal.Max(c, lo)
		partTo := end
		if !b.Open && b.UpTo.LessThan(end) {
			partTo = b.UpTo
		}
		qty := partTo.Sub(partFrom)
		amount := qty.Mul(b.UnitPrice)
		if q.Lines == nil {
			q.Amount = amount
			// Most records stay within one bracket; two covers a record that crosses one bound.
			q.Lines = make([]Line, 0, 2)
		} else {
			q.Amount = q.Amount.Add(amount)
		}
		q.Lines = append(q.Lines, Line{
			From: partFrom, To: partTo, Quantity: qty, UnitPrice: b.UnitPrice, Amount: amount,
		})
	}
	return q
}
