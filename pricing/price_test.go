package pricing

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

// TestDocumentedExamples are the figures of KooGallery's price mode docs (spec §4).
func TestDocumentedExamples(t *testing.T) {
	step := newPlan(t, PlanSpec{Mode: "step", Accumulation: "month", Timezone: "Asia/Shanghai", Brackets: docBrackets()})
	tier := newPlan(t, PlanSpec{Mode: "tier", Brackets: docBrackets()})

	tests := []struct {
		name    string
		plan    *Plan
		usage   string
		want    decimal.Decimal // written as the docs derive it
		display string          // as the docs print it
	}{
		{"step 8 minutes", step, "8", dec("3").Mul(dec("0.3")).Add(dec("5").Mul(dec("0.2"))), "1.90"},
		{"tier 2 minutes", tier, "2", dec("2").Mul(dec("0.3")), "0.60"},
		{"tier 8 minutes", tier, "8", dec("8").Mul(dec("0.2")), "1.60"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := mustPrice(t, tc.plan, dec(tc.usage), decimal.Zero)
			checkQuote(t, q)
			equal(t, "amount", q.Amount, tc.want)
			if got := Format(q.Amount, DisplayPlaces); got != tc.display {
				t.Errorf("Format = %q, want %q", got, tc.display)
			}
		})
	}
}

// TestTierSplitChangesBill is the docs' warning: under tier, one 8-minute record costs less than eight 1-minute
// records; under step within one period, the split does not matter.
func TestTierSplitChangesBill(t *testing.T) {
	tier := newPlan(t, PlanSpec{Mode: "tier", Brackets: docBrackets()})
	step := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: docBrackets()})

	whole := mustPrice(t, tier, dec("8"), decimal.Zero).Amount
	split, splitStep := decimal.Zero, decimal.Zero
	for i := range 8 {
		split = split.Add(mustPrice(t, tier, dec("1"), decimal.Zero).Amount)
		splitStep = splitStep.Add(mustPrice(t, step, dec("1"), decimal.NewFromInt(int64(i))).Amount)
	}
	equal(t, "tier whole", whole, dec("8").Mul(dec("0.2")))
	equal(t, "tier split", split, dec("8").Mul(dec("0.3")))
	equal(t, "step split", splitStep, mustPrice(t, step, dec("8"), decimal.Zero).Amount)
}

func TestFixed(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "fixed", UnitPrice: "0.5"})
	for _, u := range []string{"0", "0.0001", "1", "3", "12.3456", "99999999.9999"} {
		q := mustPrice(t, p, dec(u), dec("7")) // cumulative is ignored
		checkQuote(t, q)
		equal(t, "fixed "+u, q.Amount, dec(u).Mul(dec("0.5")))
		l := q.Lines[0]
		if len(q.Lines) != 1 || !l.From.IsZero() || !l.ToOpen || !l.Quantity.Equal(dec(u)) {
			t.Errorf("fixed %s: lines %+v, want one line [0, open) of the whole usage", u, q.Lines)
		}
	}
}

// TestTierEdges: an upper bound belongs to the lower bracket, and the price is not monotone across a bound.
func TestTierEdges(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "tier", Brackets: []BracketSpec{
		{UpTo: "3", UnitPrice: "0.3"}, {UpTo: "10", UnitPrice: "0.2"}, {UnitPrice: "0.1"},
	}})
	tests := []struct {
		usage           string
		price, from, to string // to "" = open
	}{
		{"0", "0.3", "0", "3"},
		{"0.0001", "0.3", "0", "3"},
		{"2", "0.3", "0", "3"},
		{"3", "0.3", "0", "3"},
		{"3.0000", "0.3", "0", "3"},
		{"3.0001", "0.2", "3", "10"},
		{"10", "0.2", "3", "10"},
		{"10.00000001", "0.1", "10", ""},
		{"1000000", "0.1", "10", ""},
	}
	for _, tc := range tests {
		q := mustPrice(t, p, dec(tc.usage), decimal.Zero)
		checkQuote(t, q)
		equal(t, "tier "+tc.usage, q.Amount, dec(tc.usage).Mul(dec(tc.price)))
		l := q.Lines[0]
		if len(q.Lines) != 1 || !l.From.Equal(dec(tc.from)) || l.ToOpen != (tc.to == "") ||
			(tc.to != "" && !l.To.Equal(dec(tc.to))) || !l.Quantity.Equal(dec(tc.usage)) {
			t.Errorf("tier %s: lines %+v, want one line (%s, %q] of the whole usage", tc.usage, q.Lines, tc.from, tc.to)
		}
	}

	// The docs' rule makes the charge drop when usage passes a bound; kept on purpose.
	at3 := mustPrice(t, p, dec("3"), decimal.Zero).Amount
	past3 := mustPrice(t, p, dec("3.0001"), decimal.Zero).Amount
	equal(t, "tier 3", at3, dec("3").Mul(dec("0.3")))
	equal(t, "tier 3.0001", past3, dec("3.0001").Mul(dec("0.2")))
	if !past3.LessThan(at3) {
		t.Errorf("tier 3.0001 = %s, want less than tier 3 = %s", past3, at3)
	}
}

// TestStepEdges prices records at and across bracket bounds, against an independent G.
func TestStepEdges(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "day", Timezone: "UTC", Brackets: []BracketSpec{
		{UpTo: "3", UnitPrice: "0.3"}, {UpTo: "10", UnitPrice: "0.2"}, {UnitPrice: "0.1"},
	}})
	type part struct{ from, to, price string }
	tests := []struct {
		cumulative, usage string
		parts             []part
	}{
		{"0", "8", []part{{"0", "3", "0.3"}, {"3", "8", "0.2"}}},
		{"0", "3", []part{{"0", "3", "0.3"}}},
		{"0", "3.0001", []part{{"0", "3", "0.3"}, {"3", "3.0001", "0.2"}}},
		{"2", "1", []part{{"2", "3", "0.3"}}},
		{"3", "1", []part{{"3", "4", "0.2"}}},
		{"2.5", "0.5", []part{{"2.5", "3", "0.3"}}},
		{"2.5", "0.6", []part{{"2.5", "3", "0.3"}, {"3", "3.1", "0.2"}}},
		{"1", "20", []part{{"1", "3", "0.3"}, {"3", "10", "0.2"}, {"10", "21", "0.1"}}},
		{"10", "5", []part{{"10", "15", "0.1"}}},
		{"100", "0.0001", []part{{"100", "100.0001", "0.1"}}},
		// Zero usage: one zero line in the bracket the next unit would go to.
		{"0", "0", []part{{"0", "0", "0.3"}}},
		{"3", "0", []part{{"3", "3", "0.2"}}},
		{"2.9", "0", []part{{"2.9", "2.9", "0.3"}}},
		{"10", "0", []part{{"10", "10", "0.1"}}},
	}
	for _, tc := range tests {
		c, u := dec(tc.cumulative), dec(tc.usage)
		q := mustPrice(t, p, u, c)
		checkQuote(t, q)
		name := "step C=" + tc.cumulative + " u=" + tc.usage
		equal(t, name, q.Amount, graduated(p, c.Add(u)).Sub(graduated(p, c)))
		if len(q.Lines) != len(tc.parts) {
			t.Errorf("%s: %d lines %+v, want %d", name, len(q.Lines), q.Lines, len(tc.parts))
			continue
		}
		for i, want := range tc.parts {
			l := q.Lines[i]
			if !l.From.Equal(dec(want.from)) || !l.To.Equal(dec(want.to)) || l.ToOpen ||
				!l.Quantity.Equal(dec(want.to).Sub(dec(want.from))) || !l.UnitPrice.Equal(dec(want.price)) {
				t.Errorf("%s: line %d = %+v, want [%s, %s] at %s", name, i, l, want.from, want.to, want.price)
			}
		}
	}
}

// TestStepFreeFirstBracket: a zero price is a legitimate offer (the first N units free).
func TestStepFreeFirstBracket(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "month", Timezone: "Asia/Kolkata", Brackets: []BracketSpec{
		{UpTo: "1000", UnitPrice: "0"}, {UnitPrice: "0.002"},
	}})
	equal(t, "within the free bracket", mustPrice(t, p, dec("999"), decimal.Zero).Amount, decimal.Zero)
	equal(t, "across it", mustPrice(t, p, dec("10"), dec("995")).Amount, dec("5").Mul(dec("0.002")))
}

func TestPriceRejects(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: docBrackets()})
	fixed := newPlan(t, PlanSpec{Mode: "fixed", UnitPrice: "1"})
	tests := []struct {
		name              string
		plan              *Plan
		usage, cumulative decimal.Decimal
		want              string
	}{
		{"negative usage", p, dec("-1"), decimal.Zero, "usage -1: must not be negative"},
		{"negative cumulative", p, dec("1"), dec("-0.5"), "cumulative -0.5: must not be negative"},
		{"negative cumulative, fixed", fixed, dec("1"), dec("-0.5"), "cumulative -0.5: must not be negative"},
		{"huge exponent", p, decimal.New(1, 999_999_999), decimal.Zero, "usage exponent 999999999 is beyond"},
		{"tiny exponent", fixed, decimal.New(1, -999_999_999), decimal.Zero, "usage exponent -999999999 is beyond"},
	}
	for _, tc := range tests {
		_, err := tc.plan.Price(tc.usage, tc.cumulative)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to contain %q", tc.name, err, tc.want)
		}
	}
	for _, hand := range []*Plan{{SKU: "no mode"}, {SKU: "no brackets", Mode: ModeTier}, {SKU: "no brackets", Mode: ModeStep}} {
		if _, err := hand.Price(dec("1"), decimal.Zero); err == nil {
			t.Errorf("a hand-made Plan %q priced without error", hand.SKU)
		}
	}
}

func TestQuoteJSON(t *testing.T) {
	p := newPlan(t, PlanSpec{Mode: "step", Accumulation: "hour", Brackets: docBrackets()})
	q := mustPrice(t, p, dec("8"), decimal.Zero)
	b, err := json.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"amount":"1.9","lines":[` +
		`{"from":"0","to":"3","quantity":"3","unit_price":"0.3","amount":"0.9"},` +
		`{"from":"3","to":"8","quantity":"5","unit_price":"0.2","amount":"1"}]}`
	if string(b) != want {
		t.Errorf("JSON\n got %s\nwant %s", b, want)
	}
	var back Quote
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	equal(t, "round-trip amount", back.Amount, q.Amount)
	equal(t, "round-trip to", back.Lines[1].To, q.Lines[1].To)

	tier := newPlan(t, PlanSpec{Mode: "tier", Brackets: docBrackets()})
	b, err = json.Marshal(mustPrice(t, tier, dec("8"), decimal.Zero).Lines[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"from":"3","to":null,"quantity":"8","unit_price":"0.2","amount":"1.6"}`; string(b) != want {
		t.Errorf("open line JSON\n got %s\nwant %s", b, want)
	}
	var open Line
	if err := json.Unmarshal(b, &open); err != nil || !open.ToOpen {
		t.Errorf("open line round trip: %+v, %v", open, err)
	}
}
