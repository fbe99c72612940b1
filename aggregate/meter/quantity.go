package meter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/shopspring/decimal"
)

// Limits of an exact quantity (DESIGN.md §4 step 2). They match ClickHouse's Decimal(38,10), so a value accepted
// here is stored identically by both stores.
const (
	MaxIntegerDigits    = 28
	MaxFractionalDigits = 10
	// maxExponent bounds a JSON exponent before the value is expanded: "1e999999999" must be refused without
	// allocating a billion digits.
	maxExponent = 64
)

// ErrNegative is returned by ParseQuantity for values below zero.
var ErrNegative = errors.New("must be >= 0")

// ParseQuantity parses a decimal written as a JSON number or a decimal string ("12.5", "1e3", "0.1"). It refuses
// anything that is not plain decimal syntax (NaN, Infinity, hex, spaces, a leading '+'), exponents beyond ±64,
// more than 28 integer or 10 fractional digits (trailing fractional zeros do not count: they do not change the
// value) and negative values.
func ParseQuantity(s string) (decimal.Decimal, error) {
	if err := checkSyntax(s); err != nil {
		return decimal.Decimal{}, err
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, fmt.Errorf("%q is not a decimal number", s)
	}
	if d.IsNegative() {
		return decimal.Decimal{}, fmt.Errorf("%s %w", s, ErrNegative)
	}
	if err := checkDigits(d); err != nil {
		return decimal.Decimal{}, fmt.Errorf("%s: %w", truncate(s, 40), err)
	}
	return d, nil
}

// checkSyntax accepts exactly the JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, with the
// exponent bounded. Leading zeros ("007") are tolerated in strings since they do not change the value.
func checkSyntax(s string) error {
	if s == "" {
		return errors.New("empty value")
	}
	i := 0
	if s[0] == '-' {
		i++
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if digits == 0 {
		return fmt.Errorf("%q is not a decimal number", truncate(s, 40))
	}
	if i < len(s) && s[i] == '.' {
		i++
		frac := 0
		for i < len(s) && isDigit(s[i]) {
			i++
			frac++
		}
		if frac == 0 {
			return fmt.Errorf("%q is not a decimal number", truncate(s, 40))
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		start := i
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		expDigits := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == expDigits || i != len(s) {
			return fmt.Errorf("%q is not a decimal number", truncate(s, 40))
		}
		exp, err := strconv.Atoi(s[start:i])
		if err != nil || exp > maxExponent || exp < -maxExponent {
			return fmt.Errorf("%s: exponent out of range (at most ±%d)", truncate(s, 40), maxExponent)
		}
	}
	if i != len(s) {
		return fmt.Errorf("%q is not a decimal number", truncate(s, 40))
	}
	return nil
}

func checkDigits(d decimal.Decimal) error {
	coef := d.Coefficient() // absolute value handled below
	digits := strings.TrimPrefix(coef.String(), "-")
	exp := d.Exponent()
	// Drop trailing zeros of the coefficient so that "1.5000000000000" counts one fractional digit.
	for exp < 0 && len(digits) > 1 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		exp++
	}
	frac := 0
	if exp < 0 {
		frac = int(-exp)
	}
	intDigits := len(digits) + int(exp)
	if digits == "0" {
		intDigits = 0
	}
	if frac > MaxFractionalDigits {
		return fmt.Errorf("more than %d fractional digits", MaxFractionalDigits)
	}
	if intDigits > MaxIntegerDigits {
		return fmt.Errorf("more than %d integer digits", MaxIntegerDigits)
	}
	return nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
