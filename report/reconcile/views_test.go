package reconcile_test

import (
	"bytes"
	"database/sql"
	"encoding/csv"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// TestViewsAgreeWithReport: finance's SQL views (schemas/sqlite/0005_views.sql), queried with plain SQL on a
// separate read-only connection, give the report's lines and totals on the pipeline's data set.
func TestViewsAgreeWithReport(t *testing.T) {
	ds := pushedDataSet(t)
	// Some variety beyond the data set: an SDR re-reported under revision 1 after an asynchronous rejection.
	ds.r.exec(`UPDATE sdrs SET state = 'ASYNC_REJECTED' WHERE instance_id = 't-b' AND hour_ms = ?`, hour(1).UnixMilli())
	ds.r.exec(`INSERT INTO sdrs (metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms, begin_ms, end_ms, usage_value,
amount, currency, body, state, due_ms, epoch, created_ms, updated_ms)
SELECT metering_sn || '-r1', instance_id, hour_ms, 1, meter, sku, record_time_ms, begin_ms, end_ms, usage_value, amount, currency,
body, 'PENDING', due_ms, epoch, created_ms, updated_ms FROM sdrs WHERE instance_id = 't-b' AND hour_ms = ?`, hour(1).UnixMilli())
	from, to := hour(0), hour(ds.hours)
	rep := ds.r.build(from, to)
	if !rep.Invariant.Holds {
		t.Fatalf("violations %v", rep.Invariant.Violations)
	}
	db, err := sql.Open("sqlite", "file:"+ds.r.dbPath+"?mode=ro&_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	// Lines: every column of the report's CSV that the view has, by name, value for value.
	var csvBuf bytes.Buffer
	if err := rep.WriteCSV(&csvBuf); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&csvBuf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(`SELECT * FROM v_reconciliation_lines WHERE hour_ms >= ? AND hour_ms < ? ORDER BY instance_id, hour_ms`,
		from.UnixMilli(), to.UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	viewCol := map[string]int{}
	for i, c := range cols {
		viewCol[c] = i
	}
	// Only in the report: what needs the plans.
	reportOnly := map[string]bool{"amount_rounded_2": true, "amount_rounded_3": true, "recomputed_amount": true, "amount_mismatch": true}
	for _, c := range recs[0] {
		if _, ok := viewCol[c]; !ok && !reportOnly[c] {
			t.Errorf("v_reconciliation_lines lacks the report's column %q", c)
		}
	}
	i := 0
	for ; rows.Next(); i++ {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for k := range vals {
			ptrs[k] = &vals[k]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		if i+1 >= len(recs) {
			t.Fatalf("view has more lines than the report (%d)", len(recs)-1)
		}
		rec := recs[i+1]
		for k, c := range recs[0] {
			vi, ok := viewCol[c]
			if !ok {
				continue
			}
			got, want := vals[vi].String, rec[k]
			switch {
			case c == "accepted_at" && got != "":
				g, err1 := time.Parse(time.RFC3339Nano, got)
				w, err2 := time.Parse(time.RFC3339Nano, want)
				if err1 != nil || err2 != nil || !g.Equal(w) {
					t.Errorf("line %d accepted_at: view %q, report %q", i, got, want)
				}
			case c == "currency" && !vals[viewCol["metering_sn"]].Valid:
				// without an SDR the report names the plan's currency; SQL does not know the plans
			case got != want:
				t.Errorf("line %d (%s %s) %s: view %q, report %q", i, rec[0], rec[4], c, got, want)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != len(recs)-1 {
		t.Fatalf("view has %d lines, report %d", i, len(recs)-1)
	}

	// Totals per instance, with decimal_sum (the sqlite3 shell's, and meterd's registration of it here).
	trows, err := db.Query(`SELECT instance_id, sum(events + late_events),
decimal_sum(quantity), decimal_sum(late_quantity),
coalesce(decimal_sum(pushed_usage), '0'),
coalesce(decimal_sum(CASE WHEN state IN ('ACCEPTED', 'BILLED') THEN pushed_usage END), '0'),
coalesce(decimal_sum(CASE WHEN state NOT IN ('REJECTED', 'EXPIRED', 'ASYNC_REJECTED') THEN expected_amount END), '0')
FROM v_reconciliation_lines WHERE hour_ms >= ? AND hour_ms < ? GROUP BY instance_id ORDER BY instance_id`, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	defer trows.Close()
	n := 0
	for ; trows.Next(); n++ {
		var id, onTime, late, pushed, accepted, expected string
		var events int64
		if err := trows.Scan(&id, &events, &onTime, &late, &pushed, &accepted, &expected); err != nil {
			t.Fatal(err)
		}
		qty := decimal.RequireFromString(onTime).Add(decimal.RequireFromString(late)).String()
		want := rep.Totals.ByInstance[n]
		if id != want.InstanceID || events != want.Events || !decEq(qty, want.Quantity) || !decEq(pushed, want.PushedUsage) ||
			!decEq(accepted, want.AcceptedUsage) || !decEq(expected, want.ExpectedAmount) {
			t.Errorf("view totals %s %d %s %s %s %s, report %+v", id, events, qty, pushed, accepted, expected, want)
		}
	}
	if n != len(rep.Totals.ByInstance) {
		t.Fatalf("view totals for %d instances, report %d", n, len(rep.Totals.ByInstance))
	}

	// The ledger view has every revision with its attempts.
	var sdrs, logged, lastCode int
	if err := db.QueryRow(`SELECT count(*), sum(attempts_logged > 0), sum(last_attempt_code = '0000') FROM v_sdr_ledger`).Scan(&sdrs, &logged,
		&lastCode); err != nil {
		t.Fatal(err)
	}
	if sdrs != ds.lines()+1 || logged != ds.lines()-1 || lastCode < ds.lines()-6 {
		t.Errorf("v_sdr_ledger: %d SDRs, %d with attempts, %d last accepted", sdrs, logged, lastCode)
	}
}

func decEq(s string, d decimal.Decimal) bool {
	v, err := decimal.NewFromString(s)
	return err == nil && v.Equal(d)
}
