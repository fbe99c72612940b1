package sqlite

import (
	"cmp"
	"math"

	"github.com/shopspring/decimal"
)

// exactDecimal is an exact decimal: coef x 10^-scale while that fits an int64, a decimal.Decimal beyond. Parsing
// and adding every value of the hour through decimal.Decimal (a big.Int each) cost more than reading the row
// (bench/close.sh profile); the values ingest stores nearly always fit, and those that do not are still exact.
type exactDecimal struct {
	coef   int64
	scale  int32 // digits after the point, 0..maxShortDigits
	wide   decimal.Decimal
	isWide bool
}

// maxShortDigits is the most digits parseExactDecimal reads into an int64: 10^18 < 2^63.
const maxShortDigits = 18

var pow10 = func() (p [maxShortDigits + 1]int64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// parseExactDecimal reads a decimal as decimal.NewFromString does, with the same value and the same errors.
// Plain notation of at most maxShortDigits digits ("-12.345") is read here; anything else (longer, exponent,
// leading "+", malformed) is left to decimal.NewFromString.
func parseExactDecimal(s string) (exactDecimal, error) {
	if d, ok := parseShort(s); ok {
		return d, nil
	}
	w, err := decimal.NewFromString(s)
	if err != nil {
		return exactDecimal{}, err
	}
	return exactDecimal{wide: w, isWide: true}, nil
}

// parseShort reads -?[0-9]+(\.[0-9]+)? of at most maxShortDigits digits.
func parseShort(s string) (exactDecimal, bool) {
	var d exactDecimal
	i, neg := 0, false
	if len(s) > 0 && s[0] == '-' {
		i, neg = 1, true
	}
	start, point, digits := i, -1, 0
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			if digits++; digits > maxShortDigits {
				return d, false
			}
			d.coef = d.coef*10 + int64(c-'0')
		case c == '.' && point < 0 && i > start && i+1 < len(s):
			point = i
		default:
			return d, false
		}
	}
	if digits == 0 {
		return d, false
	}
	if point >= 0 {
		d.scale = int32(len(s) - point - 1)
	}
	if neg {
		d.coef = -d.coef
	}
	return d, true
}

// decimal returns the value as a decimal.Decimal.
func (x exactDecimal) decimal() decimal.Decimal {
	if x.isWide {
		return x.wide
	}
	return decimal.New(x.coef, -x.scale)
}

// String formats the value as decimal.Decimal.String does (trailing zeros of the fraction dropped), so that the
// totals read the same text the decimal_sum and decimal_max functions return.
func (x exactDecimal) String() string { return x.decimal().String() }

// add returns x + y, exactly.
func (x exactDecimal) add(y exactDecimal) exactDecimal {
	if a, b, scale, ok := align(x, y); ok {
		if s := a + b; (a >= 0) != (b >= 0) || (s >= 0) == (a >= 0) { // no overflow
			return exactDecimal{coef: s, scale: scale}
		}
	}
	return exactDecimal{wide: x.decimal().Add(y.decimal()), isWide: true}
}

// cmp compares x and y as numbers (-1, 0 or +1).
func (x exactDecimal) cmp(y exactDecimal) int {
	if a, b, _, ok := align(x, y); ok {
		return cmp.Compare(a, b)
	}
	return x.decimal().Cmp(y.decimal())
}

// align returns the coefficients of x and y at the larger of their scales, unless either is wide or does not fit.
func align(x, y exactDecimal) (a, b int64, scale int32, ok bool) {
	if x.isWide || y.isWide {
		return 0, 0, 0, false
	}
	a, b, scale = x.coef, y.coef, x.scale
	switch {
	case y.scale > x.scale:
		a, ok = mulPow10(a, y.scale-x.scale)
		scale = y.scale
	case x.scale > y.scale:
		b, ok = mulPow10(b, x.scale-y.scale)
	default:
		ok = true
	}
	return a, b, scale, ok
}

// mulPow10 returns v x 10^k unless it overflows.
func mulPow10(v int64, k int32) (int64, bool) {
	if v == 0 {
		return 0, true
	}
	if k < 0 || int(k) >= len(pow10) {
		return 0, false
	}
	p := pow10[k]
	if v > math.MaxInt64/p || v < math.MinInt64/p {
		return 0, false
	}
	return v * p, true
}
