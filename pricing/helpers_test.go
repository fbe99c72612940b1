package pricing

import (
	"os"
	"testing"
	"time"

	_ "time/tzdata" // zones must resolve on any machine, including one without /usr/share/zoneinfo

	"github.com/shopspring/decimal"
)

// dec parses a decimal literal written in a test.
func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// at parses an RFC 3339 instant written in a test.
func at(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// docBrackets are the brackets of the KooGallery docs' example: up to 3 at 0.3, beyond at 0.2.
func docBrackets() []BracketSpec {
	return []BracketSpec{{UpTo: "3", UnitPrice: "0.3"}, {UnitPrice: "0.2"}}
}

// newPlan builds a single plan through NewCatalog, so tests exercise the same validation as the config.
func newPlan(t testing.TB, s PlanSpec) *Plan {
	t.Helper()
	if s.SKU == "" {
		s.SKU = "TEST-SKU"
	}
	if s.Meter == "" {
		s.Meter = "m"
	}
	if s.Currency == "" {
		s.Currency = "CNY"
	}
	c, err := NewCatalog([]PlanSpec{s}, "plans")
	if err != nil {
		t.Fatalf("NewCatalog: %v", err)
	}
	return c.Versions(s.SKU)[0]
}

// graduated is G(x), the step price of an accumulated usage x, written independently of priceStep: walk the
// brackets, charging the whole of each bracket below x and the rest of x in the bracket x falls into.
func graduated(p *Plan, x decimal.Decimal) decimal.Decimal {
	total := decimal.Zero
	lower := decimal.Zero
	for _, b := range p.Brackets {
		if b.Open || x.LessThanOrEqual(b.UpTo) {
			return total.Add(x.Sub(lower).Mul(b.UnitPrice))
		}
		total = total.Add(b.UpTo.Sub(lower).Mul(b.UnitPrice))
		lower = b.UpTo
	}
	panic("the last bracket is open")
}

// tierPrice is the unit price of the bracket u falls into, found independently of bracketOf: the bracket
// (lower, upper] containing u, the first from 0.
func tierPrice(p *Plan, u decimal.Decimal) decimal.Decimal {
	lower := decimal.Zero
	for i, b := range p.Brackets {
		inside := (i == 0 || u.GreaterThan(lower)) && (b.Open || u.LessThanOrEqual(b.UpTo))
		if inside {
			return b.UnitPrice
		}
		lower = b.UpTo
	}
	panic("no bracket contains " + u.String())
}

// mustPrice prices or fails the test.
func mustPrice(t testing.TB, p *Plan, usage, cumulative decimal.Decimal) Quote {
	t.Helper()
	q, err := p.Price(usage, cumulative)
	if err != nil {
		t.Fatalf("Price(%s, %s): %v", usage, cumulative, err)
	}
	return q
}

// checkQuote checks the invariants every quote has: at least one line, each line's amount is its quantity times
// its price, and the amount is the sum of the lines.
func checkQuote(t testing.TB, q Quote) {
	t.Helper()
	if len(q.Lines) == 0 {
		t.Fatalf("quote without lines: %+v", q)
	}
	sum := decimal.Zero
	for _, l := range q.Lines {
		if !l.Amount.Equal(l.Quantity.Mul(l.UnitPrice)) {
			t.Fatalf("line amount %s != %s x %s", l.Amount, l.Quantity, l.UnitPrice)
		}
		sum = sum.Add(l.Amount)
	}
	if !sum.Equal(q.Amount) {
		t.Fatalf("amount %s != sum of lines %s", q.Amount, sum)
	}
}

// equal reports a mismatch of two decimals by their strings, which shows the exact digits.
func equal(t testing.TB, what string, got, want decimal.Decimal) {
	t.Helper()
	if !got.Equal(want) {
		t.Errorf("%s = %s, want %s", what, got.String(), want.String())
	}
}

// readFile reads a test file or fails the test.
func readFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
