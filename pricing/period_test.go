package pricing

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func TestPeriod(t *testing.T) {
	tests := []struct {
		name       string
		zone       string // "" = none (UTC)
		acc        string
		t          string
		start, end string
	}{
		// 16:30Z on 30 November is already 00:30 on 1 December in Shanghai (UTC+8).
		{"Shanghai month, already December", "Asia/Shanghai", "month", "2026-11-30T16:30:00Z", "2026-11-30T16:00:00Z", "2026-12-31T16:00:00Z"},
		{"Shanghai month, still November", "Asia/Shanghai", "month", "2026-11-30T15:59:59Z", "2026-10-31T16:00:00Z", "2026-11-30T16:00:00Z"},
		{"UTC month, still November", "UTC", "month", "2026-11-30T16:30:00Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{"Shanghai day", "Asia/Shanghai", "day", "2026-11-22T03:15:04Z", "2026-11-21T16:00:00Z", "2026-11-22T16:00:00Z"},
		{"Shanghai February", "Asia/Shanghai", "month", "2028-02-10T00:00:00Z", "2028-01-31T16:00:00Z", "2028-02-29T16:00:00Z"},
		// New York: spring forward on 8 March 2026 (a 23-hour day), fall back on 1 November (25 hours).
		{"New York 23-hour day", "America/New_York", "day", "2026-03-08T12:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"},
		{"New York 25-hour day", "America/New_York", "day", "2026-11-01T12:00:00Z", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"},
		{"New York 25th hour", "America/New_York", "day", "2026-11-02T04:30:00Z", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"},
		{"New York month with the fall back", "America/New_York", "month", "2026-11-30T23:00:00Z", "2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z"},
		{"New York month start, still October", "America/New_York", "month", "2026-11-01T03:59:59Z", "2026-10-01T04:00:00Z", "2026-11-01T04:00:00Z"},
		{"New York month with the spring forward", "America/New_York", "month", "2026-03-31T12:00:00Z", "2026-03-01T05:00:00Z", "2026-04-01T04:00:00Z"},
		// The repeated hour 01:00-02:00 on 1 November is two periods, one per offset.
		{"New York first 01:00 (EDT)", "America/New_York", "hour", "2026-11-01T05:30:00Z", "2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z"},
		{"New York second 01:00 (EST)", "America/New_York", "hour", "2026-11-01T06:30:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"},
		{"New York hour before the gap", "America/New_York", "hour", "2026-03-08T06:59:59Z", "2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z"},
		{"New York hour after the gap", "America/New_York", "hour", "2026-03-08T07:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"},
		// Berlin: 29 March 2026 has 23 hours, 25 October 25 hours.
		{"Berlin 23-hour day", "Europe/Berlin", "day", "2026-03-29T12:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"},
		{"Berlin 25-hour day", "Europe/Berlin", "day", "2026-10-25T12:00:00Z", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"},
		{"Berlin April", "Europe/Berlin", "month", "2026-04-15T00:00:00Z", "2026-03-31T22:00:00Z", "2026-04-30T22:00:00Z"},
		// Kolkata is UTC+05:30: its days and months start at 18:30Z, its hours at hh:30Z.
		{"Kolkata day", "Asia/Kolkata", "day", "2026-11-30T18:30:00Z", "2026-11-30T18:30:00Z", "2026-12-01T18:30:00Z"},
		{"Kolkata day, UTC hour straddling midnight", "Asia/Kolkata", "day", "2026-11-30T18:00:00Z", "2026-11-29T18:30:00Z", "2026-11-30T18:30:00Z"},
		{"Kolkata month", "Asia/Kolkata", "month", "2026-12-31T18:29:59Z", "2026-11-30T18:30:00Z", "2026-12-31T18:30:00Z"},
		{"Kolkata hour", "Asia/Kolkata", "hour", "2026-12-01T10:45:00Z", "2026-12-01T10:30:00Z", "2026-12-01T11:30:00Z"},
		{"hour without a zone is the UTC hour", "", "hour", "2026-12-01T10:45:00Z", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"},
		// Lord Howe moves its clock by 30 minutes (02:00 +10:30 -> 02:30 +11 on 4 October 2026, at 15:30Z).
		{"Lord Howe hour before the change", "Australia/Lord_Howe", "hour", "2026-10-03T15:10:00Z", "2026-10-03T14:30:00Z", "2026-10-03T15:30:00Z"},
		{"Lord Howe half hour after the change", "Australia/Lord_Howe", "hour", "2026-10-03T15:40:00Z", "2026-10-03T15:30:00Z", "2026-10-03T16:00:00Z"},
		// Havana skips its midnight on 8 March 2026 (00:00 CST -> 01:00 CDT at 05:00Z) and repeats it on 1 November
		// (01:00 CDT -> 00:00 CST at 05:00Z): a day starting at the transition, and a 25-hour day in one period.
		{"Havana day whose midnight is skipped", "America/Havana", "day", "2026-03-08T12:00:00Z", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"},
		{"Havana day before it", "America/Havana", "day", "2026-03-08T04:59:59Z", "2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z"},
		{"Havana day whose midnight repeats", "America/Havana", "day", "2026-11-01T12:00:00Z", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"},
		// Beirut falls back from 00:00 to 23:00 of the day before (25 October 2026, at 21:00Z on the 24th).
		{"Beirut 25-hour Saturday", "Asia/Beirut", "day", "2026-10-24T21:30:00Z", "2026-10-23T21:00:00Z", "2026-10-24T22:00:00Z"},
		// Samoa skipped 30 December 2011 altogether.
		{"Apia day before the skipped day", "Pacific/Apia", "day", "2011-12-30T09:00:00Z", "2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z"},
		{"Apia day after the skipped day", "Pacific/Apia", "day", "2011-12-30T10:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPlan(t, PlanSpec{Mode: "step", Accumulation: tc.acc, Timezone: tc.zone, Brackets: docBrackets()})
			start, end := p.Period(at(t, tc.t))
			if !start.Equal(at(t, tc.start)) || !end.Equal(at(t, tc.end)) {
				t.Errorf("Period(%s) = [%s, %s), want [%s, %s)", tc.t,
					start.Format(time.RFC3339), end.Format(time.RFC3339), tc.start, tc.end)
			}
			if start.Location() != time.UTC || end.Location() != time.UTC {
				t.Errorf("Period returned non-UTC instants %v, %v", start, end)
			}
		})
	}
}

func TestPeriodFixedAndTierIsTheUTCHour(t *testing.T) {
	for _, p := range []*Plan{
		newPlan(t, PlanSpec{Mode: "fixed", UnitPrice: "1"}),
		newPlan(t, PlanSpec{Mode: "tier", Brackets: docBrackets()}),
	} {
		start, end := p.Period(at(t, "2026-11-22T03:15:04+05:30"))
		if !start.Equal(at(t, "2026-11-21T21:00:00Z")) || !end.Equal(at(t, "2026-11-21T22:00:00Z")) {
			t.Errorf("%s: Period = [%s, %s)", p.Mode, start, end)
		}
	}
}

// TestPeriodPartition checks, for random instants in zones with every kind of oddity, that periods partition
// time into the calendar's hours, days and months: the period contains t, both ends map back to the same
// period, the local date (or hour and offset) is the same throughout, and it differs just outside.
func TestPeriodPartition(t *testing.T) {
	zones := []string{
		"UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu",
		"Australia/Lord_Howe", "America/Havana", "America/Sao_Paulo", "Asia/Beirut", "Pacific/Apia",
		"Pacific/Chatham", "America/St_Johns", "Europe/London", "Australia/Sydney",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	lo, hi := at(t, "1995-01-01T00:00:00Z").Unix(), at(t, "2040-01-01T00:00:00Z").Unix()
	for _, zone := range zones {
		loc, err := time.LoadLocation(zone)
		if err != nil {
			t.Fatal(err)
		}
		for _, acc := range []string{"hour", "day", "month"} {
			p := newPlan(t, PlanSpec{Mode: "step", Accumulation: acc, Timezone: zone, Brackets: docBrackets()})
			same := func(a, b time.Time) bool {
				a, b = a.In(loc), b.In(loc)
				ay, am, ad := a.Date()
				by, bm, bd := b.Date()
				switch acc {
				case "month":
					return ay == by && am == bm
				case "day":
					return ay == by && am == bm && ad == bd
				}
				_, ao := a.Zone()
				_, bo := b.Zone()
				return ay == by && am == bm && ad == bd && a.Hour() == b.Hour() && ao == bo
			}
			maxLen := map[string]time.Duration{"hour": time.Hour, "day": 27 * time.Hour, "month": 32 * 24 * time.Hour}[acc]
			// Random instants, plus instants around every zone transition from 2005 to 2030, where the odd
			// periods are.
			var instants []time.Time
			for range 400 {
				instants = append(instants, time.Unix(lo+rng.Int64N(hi-lo), rng.Int64N(1e9)).UTC())
			}
			for tr := at(t, "2005-01-01T00:00:00Z").In(loc); tr.Year() < 2030; {
				_, next := tr.ZoneBounds()
				if next.IsZero() {
					break
				}
				for _, d := range []time.Duration{-time.Nanosecond, 0, 30 * time.Minute, -30 * time.Minute, 12 * time.Hour, -12 * time.Hour} {
					instants = append(instants, next.Add(d).UTC())
				}
				tr = next.In(loc)
			}
			for _, ts := range instants {
				s, e := p.Period(ts)
				name := zone + " " + acc + " " + ts.Format(time.RFC3339Nano)
				switch {
				case ts.Before(s) || !ts.Before(e):
					t.Fatalf("%s: [%s, %s) does not contain it", name, s, e)
				case e.Sub(s) > maxLen:
					t.Fatalf("%s: [%s, %s) is longer than %s", name, s, e, maxLen)
				case !same(s, ts) || !same(e.Add(-time.Nanosecond), ts):
					t.Fatalf("%s: [%s, %s) spans more than its period", name, s, e)
				case same(s.Add(-time.Nanosecond), ts) || same(e, ts):
					t.Fatalf("%s: [%s, %s) stops short of its period", name, s, e)
				}
				if s2, e2 := p.Period(s); !s2.Equal(s) || !e2.Equal(e) {
					t.Fatalf("%s: Period(start) = [%s, %s), want [%s, %s)", name, s2, e2, s, e)
				}
				if s2, _ := p.Period(e); !s2.Equal(e) {
					t.Fatalf("%s: the next period starts at %s, want %s", name, s2, e)
				}
			}
		}
	}
}

// hourRecord is one instance-hour of usage as the pipeline hands it to pricing.
type hourRecord struct {
	hour  string
	usage string
}

// billHours prices hourly records the way the pipeline is meant to: the plan version in effect at each hour's
// start, and as cumulative the usage of the earlier hours whose start lies in the same period. It returns the
// cumulative used for each record and checks each amount and each period's total against G.
func billHours(t *testing.T, c *Catalog, sku string, records []hourRecord) []decimal.Decimal {
	t.Helper()
	type periodID struct {
		plan       *Plan
		start, end time.Time
	}
	totals := make(map[periodID]decimal.Decimal)
	charged := make(map[periodID]decimal.Decimal)
	var cumulatives []decimal.Decimal
	for _, r := range records {
		h := at(t, r.hour)
		p, err := c.Plan(sku, h)
		if err != nil {
			t.Fatal(err)
		}
		s, e := p.Period(h)
		id := periodID{p, s, e}
		cum := totals[id] // zero value of Decimal is 0
		u := dec(r.usage)
		q := mustPrice(t, p, u, cum)
		checkQuote(t, q)
		if p.Mode == ModeStep {
			equal(t, "record "+r.hour, q.Amount, graduated(p, cum.Add(u)).Sub(graduated(p, cum)))
		}
		cumulatives = append(cumulatives, cum)
		totals[id] = cum.Add(u)
		charged[id] = charged[id].Add(q.Amount)
	}
	for id, total := range totals {
		equal(t, "period from "+id.start.Format(time.RFC3339), charged[id], graduated(id.plan, total))
	}
	return cumulatives
}

func TestStepAcrossPeriodEdges(t *testing.T) {
	brackets := docBrackets()
	tests := []struct {
		name, zone, acc string
		records         []hourRecord
		cumulatives     []string // expected, derived from where the periods start
	}{
		{
			"Shanghai month: 16:00Z on 30 November starts December", "Asia/Shanghai", "month",
			[]hourRecord{{"2026-11-30T00:00:00Z", "2.5"}, {"2026-11-30T12:00:00Z", "1"}, {"2026-11-30T15:00:00Z", "1"},
				{"2026-11-30T16:00:00Z", "1"}, {"2026-11-30T17:00:00Z", "1"}, {"2026-11-30T23:00:00Z", "3"}},
			[]string{"0", "2.5", "3.5", "0", "1", "2"},
		},
		{
			"UTC month: the same hours are all November", "UTC", "month",
			[]hourRecord{{"2026-11-30T00:00:00Z", "2.5"}, {"2026-11-30T12:00:00Z", "1"}, {"2026-11-30T15:00:00Z", "1"},
				{"2026-11-30T16:00:00Z", "1"}, {"2026-11-30T17:00:00Z", "1"}, {"2026-11-30T23:00:00Z", "3"},
				{"2026-12-01T00:00:00Z", "1"}},
			[]string{"0", "2.5", "3.5", "4.5", "5.5", "6.5", "0"},
		},
		{
			"New York day of 25 hours: 04:00Z on 2 November is still 1 November", "America/New_York", "day",
			[]hourRecord{{"2026-11-01T03:00:00Z", "1"}, {"2026-11-01T04:00:00Z", "2"}, {"2026-11-01T05:00:00Z", "0.5"},
				{"2026-11-01T06:00:00Z", "0.5"}, {"2026-11-02T04:00:00Z", "2"}, {"2026-11-02T05:00:00Z", "2"}},
			[]string{"0", "0", "2", "2.5", "3", "0"},
		},
		{
			"New York month boundary", "America/New_York", "month",
			[]hourRecord{{"2026-11-30T23:00:00Z", "2"}, {"2026-12-01T04:00:00Z", "2"}, {"2026-12-01T05:00:00Z", "2"}},
			[]string{"0", "2", "0"},
		},
		{
			"Berlin day of 23 hours", "Europe/Berlin", "day",
			[]hourRecord{{"2026-03-28T22:00:00Z", "1"}, {"2026-03-28T23:00:00Z", "2"}, {"2026-03-29T21:00:00Z", "2"},
				{"2026-03-29T22:00:00Z", "2"}},
			[]string{"0", "0", "2", "0"},
		},
		{
			"Kolkata day: the 18:00Z hour belongs to the day it starts in", "Asia/Kolkata", "day",
			[]hourRecord{{"2026-11-30T17:00:00Z", "2"}, {"2026-11-30T18:00:00Z", "2"}, {"2026-11-30T19:00:00Z", "2"},
				{"2026-12-01T18:00:00Z", "2"}, {"2026-12-01T19:00:00Z", "2"}},
			[]string{"0", "2", "0", "2", "0"},
		},
		{
			"Kolkata month", "Asia/Kolkata", "month",
			[]hourRecord{{"2026-11-30T18:00:00Z", "2"}, {"2026-11-30T19:00:00Z", "2"}, {"2026-12-15T00:00:00Z", "2"}},
			[]string{"0", "0", "2"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewCatalog([]PlanSpec{{SKU: "S", Meter: "m", Currency: "CNY", Mode: "step",
				Accumulation: tc.acc, Timezone: tc.zone, Brackets: brackets}}, "plans")
			if err != nil {
				t.Fatal(err)
			}
			got := billHours(t, c, "S", tc.records)
			for i, want := range tc.cumulatives {
				equal(t, "cumulative of "+tc.records[i].hour, got[i], dec(want))
			}
		})
	}
}

// TestVersionSwitchMidMonth: a new version takes effect at midnight of 16 November in Shanghai. Catalog.Plan
// picks by instant, and each version accumulates only its own usage.
func TestVersionSwitchMidMonth(t *testing.T) {
	specs := []PlanSpec{
		{SKU: "S", Meter: "m", Currency: "CNY", EffectiveFrom: "2026-11-15T16:00:00Z", Mode: "step",
			Accumulation: "month", Timezone: "Asia/Shanghai",
			Brackets: []BracketSpec{{UpTo: "5", UnitPrice: "0.25"}, {UnitPrice: "0.15"}}},
		{SKU: "S", Meter: "m", Currency: "CNY", Mode: "step", Accumulation: "month", Timezone: "Asia/Shanghai",
			Brackets: docBrackets()},
	}
	c, err := NewCatalog(specs, "plans")
	if err != nil {
		t.Fatal(err)
	}
	vs := c.Versions("S")
	old, cur := vs[0], vs[1]
	if !old.EffectiveFrom.IsZero() || !old.EffectiveUntil.Equal(cur.EffectiveFrom) || !cur.EffectiveUntil.IsZero() {
		t.Fatalf("versions: %+v", vs)
	}
	for _, tc := range []struct {
		t    string
		want *Plan
	}{
		{"2026-11-01T00:00:00Z", old},
		{"2026-11-15T15:59:59Z", old},
		{"2026-11-15T16:00:00Z", cur},
		{"2027-01-01T00:00:00Z", cur},
	} {
		if p, err := c.Plan("S", at(t, tc.t)); err != nil || p != tc.want {
			t.Errorf("Plan(%s) = %p, %v; want %p", tc.t, p, err, tc.want)
		}
	}

	s, e := old.Period(at(t, "2026-11-15T15:00:00Z"))
	if !s.Equal(at(t, "2026-10-31T16:00:00Z")) || !e.Equal(cur.EffectiveFrom) {
		t.Errorf("old version's last period = [%s, %s)", s, e)
	}
	s, e = cur.Period(at(t, "2026-11-20T00:00:00Z"))
	if !s.Equal(cur.EffectiveFrom) || !e.Equal(at(t, "2026-11-30T16:00:00Z")) {
		t.Errorf("new version's first period = [%s, %s)", s, e)
	}
	s, e = cur.Period(at(t, "2026-12-20T00:00:00Z"))
	if !s.Equal(at(t, "2026-11-30T16:00:00Z")) || !e.Equal(at(t, "2026-12-31T16:00:00Z")) {
		t.Errorf("new version's second period = [%s, %s)", s, e)
	}
	// Outside its validity a version reports the plain calendar period.
	s, _ = old.Period(at(t, "2026-11-20T00:00:00Z"))
	if !s.Equal(at(t, "2026-10-31T16:00:00Z")) {
		t.Errorf("old version after its end: period starts %s", s)
	}

	got := billHours(t, c, "S", []hourRecord{
		{"2026-11-01T00:00:00Z", "1"}, {"2026-11-15T14:00:00Z", "2"}, {"2026-11-15T15:00:00Z", "2"},
		{"2026-11-15T16:00:00Z", "2"}, {"2026-11-15T17:00:00Z", "2"}, {"2026-11-30T16:00:00Z", "2"},
	})
	for i, want := range []string{"0", "1", "3", "0", "2", "0"} {
		equal(t, "cumulative "+want, got[i], dec(want))
	}
}
