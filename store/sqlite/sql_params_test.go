package sqlite

import (
	"slices"
	"strings"
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
	want := "SELECT meter, subject, time_ms / 3600000 AS h, count(*), decimal_sum(value) FROM event_values WHERE time_ms >= ? AND time_ms < ? AND seq > ? AND seq <= ? AND meter IN (?, ?) AND subject = ? GROUP BY meter, subject, h ORDER BY meter, subject, h"
	if q != want {
		t.Errorf("sum query\n got %s\nwant %s", q, want)
	}
	if !slices.Equal(args, []any{from.UnixMilli(), from.Add(time.Hour).UnixMilli(), int64(7), int64(42), "tokens", "x'); DROP TABLE events; --", hostile}) {
		t.Errorf("args %v", args)
	}
	// Late usage: a range over a day reads by sequence (the unary + keeps SQLite off the time index).
	q, _, err = totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindDistinct, Meters: []string{"users"}, From: from.Add(-30 * 24 * time.Hour), To: from})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(q, "count(DISTINCT value) FROM event_values WHERE +time_ms >= ? AND +time_ms < ? AND seq > ? AND seq <= ? AND meter IN (?) GROUP BY") {
		t.Errorf("distinct query over a month: %s", q)
	}
	if _, _, err := totalsSQL(aggregate.TotalsQuery{Kind: "x; DROP TABLE events", Meters: []string{"m"}}); err == nil {
		t.Error("an unknown kind was written into the SQL")
	}
}
