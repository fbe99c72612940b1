package pricing

import (
	"math"
	"math/bits"

	"github.com/shopspring/decimal"
)

// The int64 fast path of step and tier pricing.
//
// shopspring/decimal allocates a big.Int for every operation and rescales one operand of every comparison
// whose exponents differ, which made a step record cost about 2µs. The usages, bounds and prices of real plans
// fit in an int64 once brought to a common number of fraction digits, so the bracket arithmetic is done there,
// exactly, and decimals are built only for the results. Whatever does not fit (more than 18 digits at the
// common scale, a product or sum beyond int64) takes the decimal path, which gives the same numbers; a test
// checks that the two agree.

// maxFastDigits is the most digits an int64 operand may have: 10^18 < 2^63, so the sum of two such values
// (cumulative + usage) cannot overflow either.
const maxFastDigits = 18

// pow10 returns 10^k for 0 <= k <= maxFastDigits.
func pow10(k int) int64 {
	p := int64(1)
	for range k {
		p *= 10
	}
	return p
}

// fastPlan is a plan's brackets as int64 coefficients at one exponent for bounds and one for prices.
type fastPlan struct {
	boundExp    int32   // exponent of bounds, <= 0
	bounds      []int64 // upper bounds of every bracket but the last, open one
	boundDigits int     // most digits of any bound at boundExp
	priceExp    int32   // exponent of prices
	prices      []int64 // unit price of every bracket
}

// newFastPlan returns the int64 form of p's brackets, or nil when some bound or price does not fit.
func newFastPlan(p *Plan) *fastPlan {
	if len(p.Brackets) == 0 {
		return nil
	}
	f := &fastPlan{}
	for _, b := range p.Brackets {
		if !b.Open {
			f.boundExp = min(f.boundExp, b.UpTo.Exponent())
		}
	}
	f.priceExp = p.Brackets[0].UnitPrice.Exponent()
	for _, b := range p.Brackets {
		f.priceExp = min(f.priceExp, b.UnitPrice.Exponent())
	}
	for _, b := range p.Brackets {
		if !b.Open {
			v, digits, ok := scaled(b.UpTo, f.boundExp)
			if !ok {
				return nil
			}
			f.bounds = append(f.bounds, v)
			f.boundDigits = max(f.boundDigits, digits)
		}
		v, _, ok := scaled(b.UnitPrice, f.priceExp)
		if !ok {
			return nil
		}
		f.prices = append(f.prices, v)
	}
	return f
}

// scaled returns the non-negative d as an int64 coefficient at exponent exp (<= d's exponent) and its number
// of digits, or false when it is negative or would have more than maxFastDigits digits.
func scaled(d decimal.Decimal, exp int32) (v int64, digits int, ok bool) {
	k := int(d.Exponent()) - int(exp)
	if k < 0 || d.Sign() < 0 {
		return 0, 0, false
	}
	digits = d.NumDigits() + k
	if digits > maxFastDigits {
		return 0, 0, false
	}
	return d.CoefficientInt64() * pow10(k), digits, true
}

// fastScale is the number of fraction digits at which usage, cumulative and the bounds are all integers, and
// the factor that brings the bounds there; false when that does not fit.
func (f *fastPlan) fastScale(ds ...decimal.Decimal) (s int32, boundFactor int64, ok bool) {
	s = -f.boundExp
	for _, d := range ds {
		s = max(s, -d.Exponent())
	}
	k := s + f.boundExp
	if s > maxFastDigits || f.boundDigits+int(k) > maxFastDigits {
		return 0, 0, false
	}
	return s, pow10(int(k)), true
}

// bracketOfFast is bracketOf on int64s.
func (p *Plan) bracketOfFast(x decimal.Decimal) (int, bool) {
	f := p.fast
	if f == nil {
		return 0, false
	}
	s, bf, ok := f.fastScale(x)
	if !ok {
		return 0, false
	}
	v, _, ok := scaled(x, -s)
	if !ok {
		return 0, false
	}
	for i, b := range f.bounds {
		if v <= b*bf {
			return i, true
		}
	}
	return len(f.bounds), true
}

// priceStepFast is priceStep on int64s for a usage > 0; false when the values do not fit.
func (p *Plan) priceStepFast(usage, c decimal.Decimal) (Quote, bool) {
	f := p.fast
	if f == nil {
		return Quote{}, false
	}
	s, bf, ok := f.fastScale(usage, c)
	if !ok {
		return Quote{}, false
	}
	u, _, ok1 := scaled(usage, -s)
	cv, _, ok2 := scaled(c, -s)
	if !ok1 || !ok2 {
		return Quote{}, false
	}
	end := cv + u
	amountExp := -s + f.priceExp

	var q Quote
	var total uint64
	lo := int64(0)
	last := len(p.Brackets) - 1
	for i := range p.Brackets {
		hi := int64(math.MaxInt64)
		if i < last {
			hi = f.bounds[i] * bf
		}
		if hi <= cv {
			lo = hi
			continue // the bracket ends before the record's part of the period begins
		}
		if lo >= end {
			break
		}
		from, to := max(cv, lo), min(end, hi)
		qty := to - from
		ph, pl := bits.Mul64(uint64(qty), uint64(f.prices[i]))
		if ph != 0 || pl > math.MaxInt64 {
			return Quote{}, false
		}
		sum, carry := bits.Add64(total, pl, 0)
		if carry != 0 || sum > math.MaxInt64 {
			return Quote{}, false
		}
		total = sum

		// Reuse the decimals already at hand (the inputs, the plan's bounds) for the line's ends.
		l := Line{UnitPrice: p.Brackets[i].UnitPrice, Amount: decimal.New(int64(pl), amountExp)}
		switch {
		case from == cv:
			l.From = c
		default: // from == lo, the bracket's lower bound
			l.From = p.Brackets[i-1].UpTo
		}
		switch {
		case to == hi:
			l.To = p.Brackets[i].UpTo
		default: // to == end
			l.To = decimal.New(end, -s)
		}
		if qty == u {
			l.Quantity = usage
		} else {
			l.Quantity = decimal.New(qty, -s)
		}
		if q.Lines == nil {
			q.Lines = make([]Line, 0, 2)
		}
		q.Lines = append(q.Lines, l)
		lo = hi
	}
	if len(q.Lines) == 1 {
		q.Amount = q.Lines[0].Amount
	} else {
		q.Amount = decimal.New(int64(total), amountExp)
	}
	return q, true
}
