package pricing

import (
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func TestParseDecimal(t *testing.T) {
	good := []struct{ in, want string }{
		{"0", "0"}, {"-0", "0"}, {"12", "12"}, {"0.30", "0.3"}, {"-1.5", "-1.5"}, {"007", "7"},
		{"1.5e-3", "0.0015"}, {"2E+2", "200"}, {"1e3", "1000"}, {"0.000000000000000001", "0.000000000000000001"},
		{"1234567890123456789012345678", "1234567890123456789012345678"}, {"1e27", "1" + strings.Repeat("0", 27)},
		{"0e999999", "0"}, {"100e-20", "0.000000000000000001"}, {"0.10000000000000000000000", "0.1"},
	}
	for _, tc := range good {
		d, err := ParseDecimal(tc.in)
		if err != nil {
			t.Errorf("ParseDecimal(%q): %v", tc.in, err)
			continue
		}
		equal(t, "ParseDecimal("+tc.in+")", d, dec(tc.want))
	}
	bad := []struct{ in, want string }{
		{"", "not a decimal"}, {"-", "not a decimal"}, {"NaN", "not a decimal"}, {"Inf", "not a decimal"},
		{"-Infinity", "not a decimal"}, {".inf", "not a decimal"}, {"0x10", "not a decimal"}, {"1_000", "not a decimal"},
		{".5", "not a decimal"}, {"5.", "not a decimal"}, {"+1", "not a decimal"}, {" 1", "not a decimal"},
		{"1 ", "not a decimal"}, {"1e", "not a decimal"}, {"1e+", "not a decimal"}, {"1,5", "not a decimal"},
		{"1e999999999", "more than 28 integer digits"}, {"1e-999999999", "more than 18 fraction digits"},
		{"1e" + strings.Repeat("9", 90), "more than 28 integer digits"},
		{"12345678901234567890123456789", "more than 28 integer digits"}, {"1e28", "more than 28 integer digits"},
		{"0.0000000000000000001", "more than 18 fraction digits"}, {"1e-19", "more than 18 fraction digits"},
		{strings.Repeat("0", 101), "longer than 100 characters"},
	}
	for _, tc := range bad {
		if _, err := ParseDecimal(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseDecimal(%q): err = %v, want %q", tc.in, err, tc.want)
		}
	}
}

// TestRound: half-up (away from zero) at the display places, and nothing else changes.
func TestRound(t *testing.T) {
	tests := []struct {
		in     string
		places int32
		want   string
		fixed  string
	}{
		{"1.9", 2, "1.9", "1.90"},
		{"0.125", 2, "0.13", "0.13"}, // half-up: banker's rounding would give 0.12
		{"0.135", 2, "0.14", "0.14"},
		{"0.145", 2, "0.15", "0.15"}, // banker's: 0.14
		{"0.124999", 2, "0.12", "0.12"},
		{"-0.125", 2, "-0.13", "-0.13"},
		{"2.5", 0, "3", "3"},
		{"0.60002", 2, "0.6", "0.60"},
		{"1.23456", 4, "1.2346", "1.2346"},
		{"7", 2, "7", "7.00"},
		{"0.005", 2, "0.01", "0.01"},
		{"0.0049", 2, "0", "0.00"},
		{"0.45", -1, "0", "0"}, // negative places count as 0
		{"0.5", 1000000000, "0.5", ""},
	}
	for _, tc := range tests {
		got := Round(dec(tc.in), tc.places)
		equal(t, "Round("+tc.in+")", got, dec(tc.want))
		if tc.fixed != "" {
			if s := Format(dec(tc.in), tc.places); s != tc.fixed {
				t.Errorf("Format(%s, %d) = %q, want %q", tc.in, tc.places, s, tc.fixed)
			}
		}
	}
	if got := Format(decimal.Zero, DisplayPlaces); got != "0.00" {
		t.Errorf("Format(0) = %q", got)
	}
}
