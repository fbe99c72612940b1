package sqlite

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/ingest"
)

// groupBySQL is the totals query as it was before the hour_totals_* aggregates: SQLite's GROUP BY over the
// decimal_sum and decimal_max functions and count(DISTINCT). It is the oracle Totals must match, row for row.
func groupBySQL(q aggregate.TotalsQuery) (string, []any) {
	agg := map[aggregate.Kind]string{aggregate.KindSum: "decimal_sum(value)", aggregate.KindMax: "decimal_max(value)",
		aggregate.KindDistinct: "count(DISTINCT value)"}[q.Kind]
	timeCol := "time_ms"
	if q.To.Sub(q.From) > 24*time.Hour {
		timeCol = "+time_ms"
	}
	query := fmt.Sprintf("SELECT meter, subject, time_ms / %d AS h, count(*), %s FROM event_values WHERE %s >= ? AND %s < ? AND seq > ? AND seq <= ? AND meter IN (?%s)",
		hourMs, agg, timeCol, timeCol, strings.Repeat(", ?", len(q.Meters)-1))
	args := []any{q.From.UnixMilli(), q.To.UnixMilli(), q.SeqAfter, q.SeqUpTo}
	for _, m := range q.Meters {
		args = append(args, m)
	}
	if q.Subject != "" {
		query += " AND subject = ?"
		args = append(args, q.Subject)
	}
	return query + " GROUP BY meter, subject, h ORDER BY meter, subject, h", args
}

func groupByTotals(t *testing.T, s *Store, q aggregate.TotalsQuery) []aggregate.Total {
	t.Helper()
	query, args := groupBySQL(q)
	rows, err := s.read.Query(query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []aggregate.Total
	for rows.Next() {
		var tt aggregate.Total
		var h int64
		var value string
		if err := rows.Scan(&tt.Meter, &tt.Subject, &h, &tt.Events, &value); err != nil {
			t.Fatal(err)
		}
		tt.Hour = time.UnixMilli(h * hourMs).UTC()
		tt.Value = decimal.RequireFromString(value)
		out = append(out, tt)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameTotals compares totals field by field, values by their text and exponent: the close stores the text.
func sameTotals(t *testing.T, what string, got, want []aggregate.Total) {
	t.Helper()
	str := func(ts []aggregate.Total) []string {
		out := make([]string, len(ts))
		for i, x := range ts {
			out[i] = fmt.Sprintf("%q %q %s events=%d value=%s exp=%d", x.Meter, x.Subject, x.Hour.Format(time.RFC3339), x.Events,
				x.Value.String(), x.Value.Exponent())
		}
		return out
	}
	g, w := str(got), str(want)
	if slices.Equal(g, w) {
		return
	}
	t.Errorf("%s: %d totals, want %d", what, len(g), len(w))
	for i := 0; i < max(len(g), len(w)); i++ {
		var gi, wi string
		if i < len(g) {
			gi = g[i]
		}
		if i < len(w) {
			wi = w[i]
		}
		if gi != wi {
			t.Errorf("%s: total %d\n got %s\nwant %s", what, i, gi, wi)
			return
		}
	}
}

// TestTotalsMatchGroupBy writes events through the writer (duplicate copies included) for several meters of every
// kind, many subjects (some not UTF-8) and hours, with values of every shape (long, negative, trailing zeros, an
// exponent), and checks Totals against the GROUP BY it replaced over many queries (seq bounds, time ranges,
// subject), and against totals computed here from the events the writer stored.
func TestTotalsMatchGroupBy(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "totals.db"))
	defer s.Close()
	rng := rand.New(rand.NewPCG(7, 11))
	hour0 := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	subjects := []string{"", "a", "A", "b", "é", "t\x00x", "\xff\xfe", "tenant-1", "tenant-10", "tenant-2"}
	for i := range 40 {
		subjects = append(subjects, fmt.Sprintf("s-%03d", i))
	}
	values := func() string {
		switch rng.IntN(12) {
		case 0:
			return fmt.Sprintf("%d%018d.%010d", rng.Int64N(1e9), rng.Int64N(1e18), rng.Int64N(1e10)) // 28 + 10 digits
		case 1:
			return fmt.Sprintf("-%d.%d", rng.IntN(1000), rng.IntN(100))
		case 2:
			return fmt.Sprintf("%d.%d00", rng.IntN(100), rng.IntN(10)) // trailing zeros
		case 3:
			return fmt.Sprintf("%d", rng.Int64N(1e18)) // 18 digits: the int64 path, sums overflow it
		case 4:
			return "0.000000000000000001"
		case 5:
			return "1.5e3"
		default:
			return fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100))
		}
	}
	type stored struct {
		subject string
		timeMs  int64
		vals    map[string]string
	}
	var written []stored
	n, copies := 0, 0
	for batch := range 30 {
		var evs []*ingest.Event
		for range 200 {
			var e *ingest.Event
			if n > 0 && rng.IntN(10) == 0 { // a copy of an earlier event: the writer keeps the first
				e = newTotalsEvent(rng.IntN(n), "", hour0, nil)
				copies++
			} else {
				subject := subjects[rng.IntN(len(subjects))]
				at := hour0.Add(time.Duration(rng.Int64N(int64(5*time.Hour))) + time.Duration(batch)*time.Minute)
				vals := map[string]string{"tokens": values(), "peak": values(), "calls": "1",
					"users": fmt.Sprintf("user-%d", rng.IntN(5))}
				e = newTotalsEvent(n, subject, at, vals)
				n++
			}
			evs = append(evs, e)
		}
		res, err := s.Write(ctx, evs, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, o := range res.Outcomes {
			switch o {
			case ingest.Stored:
				written = append(written, stored{evs[i].Subject, evs[i].Time.UnixMilli(), valuesOf(evs[i])})
			case ingest.Duplicate:
				copies--
			}
		}
	}
	if copies != 0 || len(written) != n {
		t.Fatalf("%d events stored, want %d; %d copies not refused as duplicates", len(written), n, copies)
	}
	last, err := s.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}

	meterSets := map[aggregate.Kind][][]string{
		aggregate.KindSum:      {{"tokens"}, {"calls"}, {"tokens", "calls", "nothing"}},
		aggregate.KindMax:      {{"peak"}, {"peak", "tokens"}},
		aggregate.KindDistinct: {{"users"}, {"users", "tokens", "calls"}},
	}
	kinds := []aggregate.Kind{aggregate.KindSum, aggregate.KindMax, aggregate.KindDistinct}
	queries := 0
	for _, kind := range kinds {
		for _, meters := range meterSets[kind] {
			for _, r := range []struct{ from, to time.Time }{
				{hour0.Add(time.Hour), hour0.Add(2 * time.Hour)},
				{hour0, hour0.Add(6 * time.Hour)},
				{hour0.Add(90 * time.Minute), hour0.Add(150 * time.Minute)},
				{time.Unix(0, 0).UTC(), hour0.Add(3 * time.Hour)}, // the late query: by sequence
			} {
				for _, seqs := range [][2]int64{{0, last}, {0, last / 2}, {last / 3, last}, {last / 3, 2 * last / 3}, {last, last}} {
					for _, subject := range []string{"", "tenant-1", "\xff\xfe"} {
						q := aggregate.TotalsQuery{Kind: kind, Meters: meters, From: r.from, To: r.to, SeqAfter: seqs[0], SeqUpTo: seqs[1], Subject: subject}
						got, err := s.Totals(ctx, q)
						if err != nil {
							t.Fatalf("%+v: %v", q, err)
						}
						sameTotals(t, fmt.Sprintf("%+v", q), got, groupByTotals(t, s, q))
						queries++
					}
				}
			}
		}
	}

	// Independently of SQLite: the totals of every kind over everything stored, from the events themselves.
	for _, kind := range kinds {
		meter := map[aggregate.Kind]string{aggregate.KindSum: "tokens", aggregate.KindMax: "peak", aggregate.KindDistinct: "users"}[kind]
		type acc struct {
			events   int64
			value    decimal.Decimal
			distinct map[string]bool
		}
		want := map[string]*acc{}
		for _, w := range written {
			k := fmt.Sprintf("%q %d", w.subject, w.timeMs/hourMs)
			a := want[k]
			v := w.vals[meter]
			d, _ := decimal.NewFromString(v)
			if a == nil {
				a = &acc{value: d, distinct: map[string]bool{}}
				want[k] = a
			} else if kind == aggregate.KindSum {
				a.value = a.value.Add(d)
			} else if d.GreaterThan(a.value) {
				a.value = d
			}
			a.events++
			a.distinct[v] = true
		}
		got, err := s.Totals(ctx, aggregate.TotalsQuery{Kind: kind, Meters: []string{meter}, From: hour0, To: hour0.Add(6 * time.Hour), SeqUpTo: last})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: %d totals, want %d", kind, len(got), len(want))
		}
		for _, g := range got {
			a := want[fmt.Sprintf("%q %d", g.Subject, g.Hour.UnixMilli()/hourMs)]
			if a == nil {
				t.Errorf("%s: unexpected total %+v", kind, g)
				continue
			}
			w := a.value
			if kind == aggregate.KindDistinct {
				w = decimal.NewFromInt(int64(len(a.distinct)))
			}
			if g.Events != a.events || !g.Value.Equal(w) {
				t.Errorf("%s %q %s: %d events, %s; want %d, %s", kind, g.Subject, g.Hour.Format(time.RFC3339), g.Events, g.Value, a.events, w)
			}
		}
	}
	t.Logf("%d events stored, %d queries compared", len(written), queries)
}

func newTotalsEvent(n int, subject string, at time.Time, vals map[string]string) *ingest.Event {
	id := fmt.Sprintf("e%d", n)
	e := &ingest.Event{Source: "src", ID: id, Type: "llm_request", Subject: subject, Time: at, ReceivedAt: at,
		Raw: []byte(fmt.Sprintf(`{"id":%q}`, id))}
	for _, m := range []string{"calls", "peak", "tokens", "users"} {
		if v, ok := vals[m]; ok {
			e.Values = append(e.Values, ingest.MeterValue{Meter: m, Value: v})
		}
	}
	e.Hash = sha256.Sum256([]byte(id))
	return e
}

func valuesOf(e *ingest.Event) map[string]string {
	out := map[string]string{}
	for _, v := range e.Values {
		out[v.Meter] = v.Value
	}
	return out
}

// TestTotalsErrorsAsGroupByDid: a stored value that is not a decimal fails the query, as decimal_sum failed it.
func TestTotalsErrorsAsGroupByDid(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "bad.db"))
	defer s.Close()
	at := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	if _, err := s.Write(ctx, []*ingest.Event{newTotalsEvent(1, "a", at, map[string]string{"tokens": "12abc"})}, nil); err != nil {
		t.Fatal(err)
	}
	q := aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"tokens"}, From: at, To: at.Add(time.Hour), SeqUpTo: 10}
	if _, err := s.Totals(ctx, q); err == nil || !strings.Contains(err.Error(), `"12abc"`) {
		t.Errorf("sum of a value that is not a decimal: %v", err)
	}
	q.Kind = aggregate.KindDistinct // any text is a distinct key
	if got, err := s.Totals(ctx, q); err != nil || len(got) != 1 || got[0].Value.String() != "1" {
		t.Errorf("distinct: %+v, %v", got, err)
	}
	q.SeqUpTo = 0 // nothing selected: no totals, no error
	if got, err := s.Totals(ctx, q); err != nil || len(got) != 0 {
		t.Errorf("empty range: %+v, %v", got, err)
	}
}

// TestExactDecimal checks the int64 fast path of parse, add and compare against decimal.Decimal: the same values,
// the same errors, the same text, including sums that leave int64 and values it never holds.
func TestExactDecimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fixed := []string{"0", "-0", "00", "-0.000", "1", "-1", "0.1", "0.2", "0.3", "123456789012345678", "-123456789012345678",
		"999999999999999999", "1234567890123456789", "0.000000000000000001", "0.0000000000000000001", "9223372036854775807",
		"-9223372036854775808", "1.5e3", "1E-2", "+5", ".5", "5.", "-.5", "1..2", "1.2.3", "--1", "-", "", "abc", "1 ", " 1",
		"1_000", "0x10", "１", "1234.56789", "0.00004", "100.000", "99999999999999999999999999.9999999999"}
	gen := func() string {
		if rng.IntN(4) == 0 {
			return fixed[rng.IntN(len(fixed))]
		}
		intDigits, fracDigits := rng.IntN(20), rng.IntN(20)
		var b strings.Builder
		if rng.IntN(3) == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(byte('0' + rng.IntN(10)))
		for range intDigits {
			b.WriteByte(byte('0' + rng.IntN(10)))
		}
		if fracDigits > 0 {
			b.WriteByte('.')
			for range fracDigits {
				b.WriteByte(byte('0' + rng.IntN(10)))
			}
		}
		return b.String()
	}
	for _, s := range fixed {
		checkParse(t, s)
	}
	for range 200 {
		sum, sumRef := exactDecimal{}, decimal.Zero
		var maxV exactDecimal
		var maxRef decimal.Decimal
		first := true
		for range 1 + rng.IntN(200) {
			s := gen()
			x, ok := checkParse(t, s)
			if !ok {
				continue
			}
			d := decimal.RequireFromString(s)
			sum, sumRef = sum.add(x), sumRef.Add(d)
			if c, cr := x.cmp(maxV), d.Cmp(maxRef); !first && c != cr {
				t.Fatalf("cmp(%s, %s) = %d, want %d", s, maxV, c, cr)
			}
			if first || d.GreaterThan(maxRef) {
				maxV, maxRef, first = x, d, false
			}
			if sum.String() != sumRef.String() {
				t.Fatalf("sum %s, want %s (after adding %s)", sum, sumRef, s)
			}
		}
		if !first && maxV.String() != maxRef.String() {
			t.Fatalf("max %s, want %s", maxV, maxRef)
		}
	}
	// Overflow at the edges of int64, both signs, and a scale change that does not fit.
	for _, c := range [][2]string{{"999999999999999999", "999999999999999999"}, {"-999999999999999999", "-999999999999999999"},
		{"999999999999999999", "0.000000000000000001"}, {"-999999999999999999", "999999999999999999"}} {
		x, _ := parseExactDecimal(c[0])
		y, _ := parseExactDecimal(c[1])
		for range 12 {
			x = x.add(y)
		}
		want := decimal.RequireFromString(c[0]).Add(decimal.RequireFromString(c[1]).Mul(decimal.NewFromInt(12)))
		if x.String() != want.String() {
			t.Errorf("%s + 12 x %s = %s, want %s", c[0], c[1], x, want)
		}
	}
}

// checkParse compares parseExactDecimal with decimal.NewFromString: both fail, or both give the same value.
func checkParse(t *testing.T, s string) (exactDecimal, bool) {
	t.Helper()
	x, err := parseExactDecimal(s)
	d, errRef := decimal.NewFromString(s)
	if (err != nil) != (errRef != nil) {
		t.Fatalf("parse %q: error %v, decimal.NewFromString says %v", s, err, errRef)
	}
	if err != nil {
		return x, false
	}
	if !x.decimal().Equal(d) || x.String() != d.String() {
		t.Fatalf("parse %q = %s, want %s", s, x, d)
	}
	return x, true
}

// TestTotalsQueryPlan pins how SQLite reads the totals, which decides whether a close costs its hour or all of
// history: an hour by the sequence range of its events, found in the time index; late usage by the sequence range
// since the last close.
func TestTotalsQueryPlan(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "plan.db"))
	defer s.Close()
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		q    aggregate.TotalsQuery
		want []string
	}{
		{aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"tokens", "calls"}, From: hour, To: hour.Add(time.Hour), SeqUpTo: 1e9},
			[]string{"SEARCH event_values USING COVERING INDEX event_values_time (time_ms>? AND time_ms<?)", "SEARCH event_values USING PRIMARY KEY (seq>? AND seq<?)"}},
		{aggregate.TotalsQuery{Kind: aggregate.KindMax, Meters: []string{"peak"}, From: hour.Add(10 * time.Minute), To: hour.Add(20 * time.Minute),
			SeqAfter: 5, SeqUpTo: 1e9, Subject: "a"},
			[]string{"SEARCH event_values USING COVERING INDEX event_values_time (time_ms>? AND time_ms<?)", "SEARCH event_values USING PRIMARY KEY (seq>? AND seq<?)"}},
		{aggregate.TotalsQuery{Kind: aggregate.KindDistinct, Meters: []string{"users"}, From: time.Unix(0, 0), To: hour, SeqAfter: 5, SeqUpTo: 1e9},
			[]string{"SEARCH event_values USING PRIMARY KEY (seq>? AND seq<?)"}},
	} {
		query, args, err := totalsSQL(c.q)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := s.read.Query("EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(detail, "SEARCH") || strings.HasPrefix(detail, "SCAN event_values") {
				plan = append(plan, detail)
			}
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(plan, c.want) {
			t.Errorf("%s\nplan %q\nwant %q", query, plan, c.want)
		}
	}
}
