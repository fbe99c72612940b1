package reconcile_test

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/reconcile"
)

func eq(t *testing.T, what string, got, want decimal.Decimal) {
	t.Helper()
	if !got.Equal(want) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

// TestReportOnPushedDataSet: on a data set pushed through the real pipeline the invariant holds for every
// instance, and every total equals what the inputs give.
func TestReportOnPushedDataSet(t *testing.T) {
	ds := pushedDataSet(t)
	rep := ds.r.build(hour(0), hour(ds.hours))

	if !rep.Invariant.Holds {
		for _, v := range rep.Invariant.Violations {
			t.Error(v)
		}
		t.Fatal("invariant does not hold")
	}
	if len(rep.Lines) != ds.lines() || rep.LineCount != ds.lines() {
		t.Fatalf("%d lines (count %d), want %d", len(rep.Lines), rep.LineCount, ds.lines())
	}
	if len(rep.Invariant.Checks) != len(ds.instances) {
		t.Fatalf("%d checks, want %d", len(rep.Invariant.Checks), len(ds.instances))
	}

	// Totals by instance.
	if len(rep.Totals.ByInstance) != len(ds.instances) {
		t.Fatalf("%d instance totals, want %d", len(rep.Totals.ByInstance), len(ds.instances))
	}
	for i, got := range rep.Totals.ByInstance {
		want := ds.instances[i]
		if got.InstanceID != want.id || got.Meter != want.meter || got.SKU != want.sku || got.Currency != want.currency {
			t.Errorf("total %d: %+v, want %s %s %s %s", i, got, want.id, want.meter, want.sku, want.currency)
		}
		if got.Events != want.events {
			t.Errorf("%s events = %d, want %d", want.id, got.Events, want.events)
		}
		eq(t, want.id+" quantity", got.Quantity, want.quantity)
		eq(t, want.id+" pushed_usage", got.PushedUsage, want.pushed())
		eq(t, want.id+" accepted_usage", got.AcceptedUsage, want.accepted())
		eq(t, want.id+" expected_amount", got.ExpectedAmount, want.expectedAmount())
	}

	// Totals by SKU and by currency, summed here from the per-instance expectations.
	type agg struct {
		instances                                     int
		events                                        int64
		quantity, pushed, accepted, expected, pending decimal.Decimal
		rejected                                      decimal.Decimal
		sdrs                                          int
	}
	bySKU, byCur := map[string]*agg{}, map[string]*agg{}
	for _, e := range ds.instances {
		s := bySKU[e.sku]
		if s == nil {
			s = &agg{}
			bySKU[e.sku] = s
		}
		s.instances++
		s.events += e.events
		s.quantity = s.quantity.Add(e.quantity)
		s.pushed = s.pushed.Add(e.pushed())
		s.accepted = s.accepted.Add(e.accepted())
		s.expected = s.expected.Add(e.expectedAmount())
		c := byCur[e.currency]
		if c == nil {
			c = &agg{}
			byCur[e.currency] = c
		}
		c.sdrs += len(e.hourly)
		for h, a := range e.amounts {
			switch {
			case e.rejected:
				c.rejected = c.rejected.Add(a)
			case e.pendingHours[h]:
				c.pending = c.pending.Add(a)
				c.expected = c.expected.Add(a)
			default:
				c.accepted = c.accepted.Add(a)
				c.expected = c.expected.Add(a)
			}
		}
	}
	if len(rep.Totals.BySKU) != len(bySKU) {
		t.Fatalf("by_sku %+v", rep.Totals.BySKU)
	}
	for _, got := range rep.Totals.BySKU {
		want := bySKU[got.SKU]
		if want == nil || got.Instances != want.instances || got.Events != want.events {
			t.Errorf("by_sku %s: %+v, want %+v", got.SKU, got, want)
			continue
		}
		eq(t, got.SKU+" quantity", got.Quantity, want.quantity)
		eq(t, got.SKU+" pushed", got.PushedUsage, want.pushed)
		eq(t, got.SKU+" accepted", got.AcceptedUsage, want.accepted)
		eq(t, got.SKU+" expected", got.ExpectedAmount, want.expected)
	}
	if len(rep.Totals.ByCurrency) != 2 {
		t.Fatalf("by_currency %+v", rep.Totals.ByCurrency)
	}
	for _, got := range rep.Totals.ByCurrency {
		want := byCur[got.Currency]
		if want == nil || got.SDRs != want.sdrs {
			t.Errorf("by_currency %s: %+v, want %+v", got.Currency, got, want)
			continue
		}
		eq(t, got.Currency+" expected", got.ExpectedAmount, want.expected)
		eq(t, got.Currency+" accepted", got.AcceptedAmount, want.accepted)
		eq(t, got.Currency+" pending", got.PendingAmount, want.pending)
		eq(t, got.Currency+" rejected", got.RejectedAmount, want.rejected)
	}

	// Lines: usage and amount of every hour as the inputs give; t-a's late usage of hour 0 shows in hour 2.
	for _, l := range rep.Lines {
		e := ds.byID[l.InstanceID]
		h := int(l.Hour.Sub(h0) / time.Hour)
		eq(t, l.InstanceID+" "+l.Hour.Format(time.RFC3339)+" usage_value", l.UsageValue, e.hourly[h])
		if !l.HasSDR || l.MeteringSN == "" {
			t.Errorf("%s %s: no SDR", l.InstanceID, l.Hour)
			continue
		}
		eq(t, l.InstanceID+" pushed", l.PushedUsage, e.hourly[h])
		eq(t, l.InstanceID+" amount", l.Amount, e.amounts[h])
		if l.AmountMismatch || !l.Repriced {
			t.Errorf("%s %s: amount %s repriced %s (%v)", l.InstanceID, l.Hour, l.Amount, l.Recomputed, l.Repriced)
		}
		wantState := "ACCEPTED"
		switch {
		case e.rejected:
			wantState = "REJECTED"
		case e.pendingHours[h]:
			wantState = "PENDING"
		}
		if l.State != wantState {
			t.Errorf("%s %s: state %s, want %s", l.InstanceID, l.Hour, l.State, wantState)
		}
		late := l.InstanceID == "t-a" && h == 2
		if late != (len(l.LateOrigins) == 1) {
			t.Errorf("%s %s: late origins %+v", l.InstanceID, l.Hour, l.LateOrigins)
		}
		if late {
			o := l.LateOrigins[0]
			if !o.Hour.Equal(hour(0)) || !o.Quantity.Equal(decimal.RequireFromString("500.5")) || o.Events != 1 ||
				!l.LateQuantity.Equal(o.Quantity) {
				t.Errorf("late origin %+v, late quantity %s", o, l.LateQuantity)
			}
		}
	}

	// t-d was released at 01:30: its last remainder is written off, and its invariant closes at 0.
	for _, c := range rep.Invariant.Checks {
		if c.InstanceID == "t-d" && (c.WrittenOff.Sign() <= 0 || !c.ClosingCarry.IsZero()) {
			t.Errorf("t-d check %+v", c)
		}
		if c.InstanceID == "p-a" && c.Additive {
			t.Errorf("p-a checked as additive: %+v", c)
		}
	}

	// Sections.
	if len(rep.Rejected) != 4 {
		t.Errorf("rejected %+v", rep.Rejected)
	}
	for _, x := range rep.Rejected {
		if x.InstanceID != "c-b" || x.State != "REJECTED" || x.Code != "9001" {
			t.Errorf("rejected %+v", x)
		}
	}
	if len(rep.Late) != 1 || rep.Late[0].InstanceID != "p-a" || !rep.Late[0].OriginHour.Equal(hour(0)) ||
		!rep.Late[0].CloseHour.Equal(hour(2)) || !rep.Late[0].Quantity.Equal(decimal.NewFromInt(99)) || rep.Late[0].HasUsage {
		t.Errorf("late %+v", rep.Late)
	}
	if len(rep.Unmatched) != 1 || rep.Unmatched[0].Subject != "nobody" || rep.Unmatched[0].State != "HELD" ||
		!rep.Unmatched[0].Quantity.Equal(decimal.NewFromInt(42)) {
		t.Errorf("unmatched %+v", rep.Unmatched)
	}
}

// TestMissedDeadlines: hour 3 was pushed 45 minutes after its due time, and t-c's record of hour 3 is still
// waiting (paused): both are listed with how late, the waiting one measured to the report's now.
func TestMissedDeadlines(t *testing.T) {
	ds := pushedDataSet(t)
	rep := ds.r.build(hour(0), hour(ds.hours))
	due := hour(3).Add(75 * time.Minute)
	got := map[string]reconcile.MissedDeadline{}
	for _, m := range rep.MissedDeadline {
		if !m.Hour.Equal(hour(3)) || !m.Due.Equal(due) {
			t.Errorf("missed %+v", m)
		}
		got[m.InstanceID] = m
	}
	for _, id := range []string{"c-a", "p-a", "t-a", "t-b"} {
		m, ok := got[id]
		if !ok || m.State != "ACCEPTED" || !m.AcceptedAt.Equal(hour(3).Add(2*time.Hour)) || m.Late != 45*time.Minute ||
			!m.FirstAttempt.Equal(hour(3).Add(2*time.Hour)) || m.Attempts < 1 {
			t.Errorf("%s: %+v", id, m)
		}
	}
	if m, ok := got["t-c"]; !ok || m.State != "PENDING" || !m.AcceptedAt.IsZero() || m.Late != ds.r.now.Sub(due) ||
		m.Late != 105*time.Minute || !m.FirstAttempt.IsZero() {
		t.Errorf("t-c: %+v", m)
	}
	if len(got) != 5 || len(rep.MissedDeadline) != 5 {
		t.Errorf("missed %+v", rep.MissedDeadline)
	}
	if rep.MissedDeadline[0].InstanceID != "t-c" {
		t.Errorf("the latest first: %+v", rep.MissedDeadline[0])
	}
}

// TestWindowInsideAStepPeriod: a window starting at hour 1 takes the step cumulative of hour 0 from the ledger
// (PeriodUsage) and opens with hour 0's carry: amounts reprice to the stored ones and the invariant holds.
func TestWindowInsideAStepPeriod(t *testing.T) {
	ds := pushedDataSet(t)
	rep := ds.r.build(hour(1), hour(3))
	if !rep.Invariant.Holds {
		t.Fatalf("violations %v", rep.Invariant.Violations)
	}
	if len(rep.AmountMismatches) != 0 {
		t.Fatalf("mismatches %+v", rep.AmountMismatches)
	}
	opened := false
	for _, c := range rep.Invariant.Checks {
		if c.InstanceID == "t-a" && c.OpeningCarry.Sign() > 0 {
			opened = true
		}
	}
	if !opened {
		t.Errorf("t-a opens with no carry: %+v", rep.Invariant.Checks)
	}
	for _, l := range rep.Lines {
		if l.Hour.Before(hour(1)) || !l.Hour.Before(hour(3)) {
			t.Errorf("line outside the window: %s %s", l.InstanceID, l.Hour)
		}
	}
}

// TestInvariantCatchesCorruptedLedger: an SDR whose usage_value was changed in SQL, and one deleted, break the
// invariant at the instance and hour they belong to.
func TestInvariantCatchesCorruptedLedger(t *testing.T) {
	ds := pushedDataSet(t)
	r := ds.r
	r.exec(`UPDATE sdrs SET usage_value = '9.9999' WHERE instance_id = 't-b' AND hour_ms = ?`, hour(1).UnixMilli())
	r.exec(`DELETE FROM sdrs WHERE instance_id = 'p-a' AND hour_ms = ?`, hour(2).UnixMilli())
	rep := r.build(hour(0), hour(ds.hours))
	if rep.Invariant.Holds {
		t.Fatal("invariant holds on a corrupted ledger")
	}
	var changed, equation, missing bool
	for _, v := range rep.Invariant.Violations {
		switch {
		case v.InstanceID == "t-b" && v.Hour.Equal(hour(1)) && strings.Contains(v.What, "usage_value differs") &&
			v.Got != "" && strings.HasPrefix(v.Got, "9.9999") && v.Want == ds.byID["t-b"].hourly[1].String():
			changed = true
		case v.InstanceID == "t-b" && v.Hour.IsZero() && strings.Contains(v.What, "opening carry"):
			equation = true
		case v.InstanceID == "p-a" && v.Hour.Equal(hour(2)) && strings.Contains(v.What, "no SDR"):
			missing = true
		default:
			t.Errorf("unexpected violation: %s", v)
		}
	}
	if !changed || !equation || !missing {
		t.Fatalf("changed %v, equation %v, missing %v: %v", changed, equation, missing, rep.Invariant.Violations)
	}
	for _, l := range rep.Lines {
		if l.InstanceID == "p-a" && l.Hour.Equal(hour(2)) && l.State != reconcile.StateMissing {
			t.Errorf("line state %s", l.State)
		}
	}
	for _, c := range rep.Invariant.Checks {
		if (c.InstanceID == "t-b" || c.InstanceID == "p-a") == c.Holds {
			t.Errorf("check %s holds=%v", c.InstanceID, c.Holds)
		}
	}
}

// TestStepAmountRepricedAfterRefusal: when an earlier record of a step period is refused after later ones were
// priced, the later ones' stored amounts no longer match the plan: each is flagged with the amount it has now.
func TestStepAmountRepricedAfterRefusal(t *testing.T) {
	ds := pushedDataSet(t)
	ds.r.exec(`UPDATE sdrs SET state = 'EXPIRED' WHERE instance_id = 't-a' AND hour_ms = ?`, hour(0).UnixMilli())
	rep := ds.r.build(hour(0), hour(ds.hours))
	if !rep.Invariant.Holds {
		t.Fatalf("violations %v", rep.Invariant.Violations)
	}
	e := ds.byID["t-a"]
	for _, l := range rep.Lines {
		if l.InstanceID != "t-a" {
			if l.AmountMismatch {
				t.Errorf("%s %s flagged", l.InstanceID, l.Hour)
			}
			continue
		}
		h := int(l.Hour.Sub(h0) / time.Hour)
		before := decimal.Zero // usage of the period before hour h, hour 0 now excluded
		for i := 1; i < h; i++ {
			before = before.Add(e.hourly[i])
		}
		want := stepG(before.Add(e.hourly[h])).Sub(stepG(before))
		if h == 0 {
			want = e.amounts[0]
		}
		eq(t, "t-a recomputed "+l.Hour.Format(time.RFC3339), l.Recomputed, want)
		if l.AmountMismatch != !want.Equal(e.amounts[h]) {
			t.Errorf("t-a %d: mismatch %v, stored %s, now %s", h, l.AmountMismatch, l.Amount, want)
		}
	}
	if len(rep.AmountMismatches) == 0 {
		t.Fatal("no amount flagged")
	}
	for _, c := range rep.Invariant.Checks {
		if c.InstanceID == "t-a" && !c.Expired.Equal(e.hourly[0]) {
			t.Errorf("t-a expired %s, want %s", c.Expired, e.hourly[0])
		}
	}
}

// TestHeldCountsAsPending: a HELD record (above KooGallery's per-record limit, never sent) is pending in the
// invariant, with a note saying so.
func TestHeldCountsAsPending(t *testing.T) {
	ds := pushedDataSet(t)
	ds.r.exec(`UPDATE sdrs SET state = 'HELD', accepted_ms = NULL WHERE instance_id = 't-a' AND hour_ms = ?`, hour(1).UnixMilli())
	rep := ds.r.build(hour(0), hour(ds.hours))
	if !rep.Invariant.Holds {
		t.Fatalf("violations %v", rep.Invariant.Violations)
	}
	for _, c := range rep.Invariant.Checks {
		if c.InstanceID == "t-a" && (!c.Pending.Equal(ds.byID["t-a"].hourly[1]) || !strings.Contains(c.Note, "1 HELD")) {
			t.Errorf("t-a check %+v", c)
		}
	}
	if rep.States["HELD"] != 1 {
		t.Errorf("states %v", rep.States)
	}
}
