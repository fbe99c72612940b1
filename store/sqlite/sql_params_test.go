package sqlite

import (
	"slices"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate"
)

// TestTotalsSQLTakesValuesAsParameters pins the exact text of the close's totals query: only fixed text (the
// aggregate chosen by kind, the column name, one "?" per meter) is written into the SQL; meters, subject, times
// and sequences, however hostile, travel as arguments.
func TestTotalsSQLTakesValuesAsParameters(t *testing.T) {
	from := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	hostile := "t1' OR '1'='1"
	q, args, err := totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"tokens", "x'); DROP TABLE events; --"},
		From: from, To: from.Add(time.Hour), SeqAfter: 7, SeqUpTo: 42, Subject: hostile})
	if err != nil {
		t.Fatal(err)
	}
	want := "WITH r AS (SELECT max(min(seq), ? + 1) AS lo, min(max(seq), ?) AS hi FROM event_values WHERE time_ms >= ? AND time_ms < ?) " +
		"SELECT hour_totals_sum(meter, subject, time_ms, value) FROM r, event_values WHERE seq >= r.lo AND seq <= r.hi AND +time_ms >= ? AND +time_ms < ? AND meter IN (?, ?) AND subject = ?"
	if q != want {
		t.Errorf("sum query\n got %s\nwant %s", q, want)
	}
	if !slices.Equal(args, []any{int64(7), int64(42), from.UnixMilli(), from.Add(time.Hour).UnixMilli(), from.UnixMilli(), from.Add(time.Hour).UnixMilli(),
		"tokens", "x'); DROP TABLE events; --", hostile}) {
		t.Errorf("args %v", args)
	}
	// Late usage: a range over a day reads by sequence (the unary + keeps SQLite off the time index).
	q, _, err = totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindDistinct, Meters: []string{"users"}, From: from.Add(-30 * 24 * time.Hour), To: from})
	if err != nil {
		t.Fatal(err)
	}
	if want := "SELECT hour_totals_distinct(meter, subject, time_ms, value) FROM event_values WHERE +time_ms >= ? AND +time_ms < ? AND seq > ? AND seq <= ? AND meter IN (?)"; q != want {
		t.Errorf("distinct query over a month: %s", q)
	}
	q, _, err = totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindMax, Meters: []string{"peak"}, From: from, To: from.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if want := "WITH r AS (SELECT max(min(seq), ? + 1) AS lo, min(max(seq), ?) AS hi FROM event_values WHERE time_ms >= ? AND time_ms < ?) " +
		"SELECT hour_totals_max(meter, subject, time_ms, value) FROM r, event_values WHERE seq >= r.lo AND seq <= r.hi AND +time_ms >= ? AND +time_ms < ? AND meter IN (?)"; q != want {
		t.Errorf("max query: %s", q)
	}
	if _, _, err := totalsSQL(aggregate.TotalsQuery{Kind: "x; DROP TABLE events", Meters: []string{"m"}}); err == nil {
		t.Error("an unknown kind was written into the SQL")
	}
}
