package pricing

import (
	"errors"
	"fmt"
	"math/big"

	"github.com/shopspring/decimal"
)

// Limits on the decimals this package parses. They are far beyond any price, scale or usage KooGallery takes
// (usage_value is Double(12,4)), and they exist so that a hostile or mistyped value such as "1e999999999" is refused
// before shopspring/decimal is asked to build a 10^999999999 coefficient.
const (
	// MaxIntegerDigits is the most digits a parsed value may have before the decimal point.
	MaxIntegerDigits = 28
	// MaxFractionDigits is the most significant digits a parsed value may have after the decimal point.
	MaxFractionDigits = 18
	// maxDecimalLen bounds the text itself, so that leading or trailing zeros cannot be abused either.
	maxDecimalLen = 100
	// maxExponent bounds the exponent of decimals handed to Price by callers (values built in code rather than
	// parsed): anything beyond it cannot be a real quantity and would make the arithmetic allocate without bound.
	maxExponent = 64
)

// DisplayPlaces is the default number of decimal places amounts are shown with. KooGallery publishes no rounding
// rule for charges, so amounts stay exact everywhere and are rounded only where a person reads them.
const DisplayPlaces = 2

// errNotDecimal is the reason given for text that is not a decimal in the accepted syntax.
var errNotDecimal = errors.New("not a decimal number (want plain or JSON-number syntax, e.g. 0.3, 12, 1.5e-3)")

// ParseDecimal parses a decimal written in plain notation ("12", "0.30", "-1.5") or JSON-number syntax
// ("1.5e-3", "2E+2"). It rejects NaN, infinities, hexadecimal, a leading '+' or '.', a trailing '.', digit
// separators, surrounding whitespace, and values with more than MaxIntegerDigits integer or MaxFractionDigits
// significant fraction digits. The sign is accepted so that callers can say "must not be negative" rather than
// "not a number". The result carries no trailing zeros ("0.30" is 3 x 10^-1), so its exponent is bounded too.
func ParseDecimal(s string) (decimal.Decimal, error) {
	if len(s) > maxDecimalLen {
		return decimal.Decimal{}, fmt.Errorf("%q...: longer than %d characters", s[:20], maxDecimalLen)
	}
	coef, exp, err := scanDecimal(s)
	if err != nil {
		return decimal.Decimal{}, fmt.Errorf("%q: %w", s, err)
	}
	if coef == "" {
		return decimal.Zero, nil
	}
	var v big.Int
	v.SetString(coef, 10) // only digits, checked by scanDecimal
	if s[0] == '-' {
		v.Neg(&v)
	}
	return decimal.NewFromBigInt(&v, int32(exp)), nil
}

// scanDecimal checks s against -?digits(.digits)?([eE][+-]?digits)? and returns its significant digits (""
// for zero) and the exponent of the last of them, after checking the magnitude limits from the text alone, so
// that "1e999999999" is refused without building anything.
func scanDecimal(s string) (coef string, exp int, err error) {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	intStart := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	intDigits := s[intStart:i]
	if intDigits == "" {
		return "", 0, errNotDecimal
	}
	var fracDigits string
	if i < len(s) && s[i] == '.' {
		i++
		fracStart := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fracDigits = s[fracStart:i]
		if fracDigits == "" {
			return "", 0, errNotDecimal
		}
	}
	e := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		neg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			neg = s[i] == '-'
			i++
		}
		expStart := i
		for i < len(s) && isDigit(s[i]) {
			// The exponent alone may be 90 digits long: stop accumulating once it is far out of range
			// instead of overflowing.
			if e < 1_000_000 {
				e = e*10 + int(s[i]-'0')
			}
			i++
		}
		if i == expStart {
			return "", 0, errNotDecimal
		}
		if neg {
			e = -e
		}
	}
	if i != len(s) {
		return "", 0, errNotDecimal
	}

	// Significant digits: strip leading and trailing zeros of the digit string.
	digits := intDigits + fracDigits
	lead := 0
	for lead < len(digits) && digits[lead] == '0' {
		lead++
	}
	if lead == len(digits) {
		return "", 0, nil // zero, whatever its exponent
	}
	trail := len(digits)
	for digits[trail-1] == '0' {
		trail--
	}
	// The value is digits[lead:trail] x 10^exp, exp being where the last significant digit sits relative to
	// the decimal point (moved by the written exponent).
	point := len(intDigits)
	exp = point - trail + e
	intCount := point - lead + e // digits before the point, counting from the first significant one
	if intCount > MaxIntegerDigits {
		return "", 0, fmt.Errorf("more than %d integer digits", MaxIntegerDigits)
	}
	if -exp > MaxFractionDigits {
		return "", 0, fmt.Errorf("more than %d fraction digits", MaxFractionDigits)
	}
	return digits[lead:trail], exp, nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// checkExponent refuses decimals built by callers whose exponent is beyond anything a quantity can have.
func checkExponent(d decimal.Decimal) error {
	if e := d.Exponent(); e > maxExponent || e < -maxExponent {
		return fmt.Errorf("exponent %d is beyond ±%d", e, maxExponent)
	}
	return nil
}

// Round rounds d to places decimal places, half away from zero: 0.125 -> 0.13, -0.125 -> -0.13. Amounts are
// never negative, so for them this is the usual commercial half-up. It is shopspring/decimal's Round, which is
// already half away from zero; this function exists to name the rule in one place and to guard its edges:
// a d that already has at most places fraction digits is returned unchanged (so a large places cannot make
// the value grow), and places below 0 are treated as 0, since amounts are never shown rounded to tens.
// Use it only for display: amounts, sums and comparisons stay exact.
func Round(d decimal.Decimal, places int32) decimal.Decimal {
	if places < 0 {
		places = 0
	}
	if d.Exponent() >= -places {
		return d
	}
	return d.Round(places)
}

// Format renders d rounded half-up (see Round) with exactly places fraction digits, e.g. Format(1.9, 2) = "1.90".
func Format(d decimal.Decimal, places int32) string {
	if places < 0 {
		places = 0
	}
	return Round(d, places).StringFixed(places)
}
