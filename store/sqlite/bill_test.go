package sqlite

import (
	"context"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

var billHour = time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)

func billSDR(instance string, revision int, state report.State) report.SDR {
	sn := report.MeteringSN(instance, billHour, revision)
	return report.SDR{InstanceID: instance, Hour: billHour, Revision: revision, MeteringSN: sn, Meter: "tokens", SKU: "TOK",
		RecordTime: billHour.Add(65 * time.Minute), Begin: billHour, End: billHour.Add(time.Hour), UsageValue: decimal.RequireFromString("1.5"),
		Amount: decimal.RequireFromString("0.45"), Currency: "CNY", Body: []byte(`{"metering_sn":"` + sn + `"}`), State: state,
		Due: billHour.Add(75 * time.Minute)}
}

func TestPeriodQuery(t *testing.T) {
	want := `SELECT ` + sdrColumns + ` FROM sdrs WHERE (instance_id, hour_ms, begin_ms, end_ms) IN (VALUES (?, ?, ?, ?), (?, ?, ?, ?))`
	if got := periodQuery(2); got != want {
		t.Errorf("periodQuery(2) =\n%s\nwant\n%s", got, want)
	}
}

// TestApplyBill: only ACCEPTED SDRs move, whatever the caller asks; the next revision of an ASYNC_REJECTED one is
// inserted PENDING with the current lease epoch; the line that moved each is recorded with its import; applying
// again changes nothing. No lease is needed, and a push holding it under another epoch is not disturbed.
func TestApplyBill(t *testing.T) {
	ctx := context.Background()
	now := billHour.Add(48 * time.Hour)
	s, err := Open(ctx, filepath.Join(t.TempDir(), "b.db"), Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lease, ok, err := s.AcquireLease(ctx, "pusher", now, time.Minute)
	if err != nil || !ok {
		t.Fatalf("lease %+v %v %v", lease, ok, err)
	}
	accepted, sent, accepted2, pending := billSDR("i-1", 0, report.Accepted), billSDR("i-2", 0, report.Sent),
		billSDR("i-3", 0, report.Accepted), billSDR("i-4", 0, report.Pending)
	start := billHour.Add(20 * time.Minute) // an instance started mid-hour: begin is not the hour
	accepted2.Begin = start
	if err := s.InsertSDRs(ctx, lease.Epoch, []report.SDR{accepted, sent, accepted2, pending}); err != nil {
		t.Fatal(err)
	}

	got, err := s.SDRsByMeteringSN(ctx, []string{accepted.MeteringSN, "nope", pending.MeteringSN})
	if err != nil || len(got) != 2 {
		t.Fatalf("by metering_sn: %d, %v", len(got), err)
	}
	got, err = s.SDRsByPeriod(ctx, []bill.Period{{InstanceID: "i-3", Begin: start, End: billHour.Add(time.Hour)},
		{InstanceID: "i-3", Begin: billHour, End: billHour.Add(time.Hour)}, {InstanceID: "i-1", Begin: billHour, End: billHour.Add(time.Hour)}})
	if err != nil || len(got) != 2 {
		t.Fatalf("by period: %+v, %v", got, err)
	}

	next := billSDR("i-3", 1, report.Pending)
	next.Begin = start
	next2 := billSDR("i-4", 1, report.Pending)
	changes := []bill.Change{
		{MeteringSN: accepted.MeteringSN, To: report.Billed, Line: 2, Status: "SUCCESS", Amount: "0.45"},
		{MeteringSN: sent.MeteringSN, To: report.Billed, Line: 3, Amount: "0.45"}, // SENT: the push's
		{MeteringSN: accepted2.MeteringSN, To: report.AsyncRejected, Line: 4, Status: "ABNORMAL", Amount: "0", Next: &next},
		{MeteringSN: pending.MeteringSN, To: report.AsyncRejected, Line: 5, Status: "ABNORMAL", Next: &next2}, // PENDING: the push's
	}
	// Another scheduler takes the lease over meanwhile: the import does not care.
	if _, ok, err := s.AcquireLease(ctx, "other", now.Add(2*time.Minute), time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	src := bill.Source{SHA256: strings.Repeat("ab", 32), Name: "bill.csv", Rows: 4, At: now}
	applied, err := s.ApplyBill(ctx, src, changes)
	if err != nil {
		t.Fatal(err)
	}
	if applied != (bill.Applied{Billed: 1, AsyncRejected: 1, Rereported: 1}) {
		t.Errorf("applied %+v", applied)
	}
	states := map[string]report.SDR{}
	all, err := s.ListSDRs(ctx, report.SDRFilter{From: billHour, To: billHour.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range all {
		states[d.MeteringSN] = d
	}
	want := map[string]report.State{accepted.MeteringSN: report.Billed, sent.MeteringSN: report.Sent,
		accepted2.MeteringSN: report.AsyncRejected, pending.MeteringSN: report.Pending, next.MeteringSN: report.Pending}
	if len(states) != len(want) {
		t.Errorf("%d SDRs, want %d", len(states), len(want))
	}
	for sn, st := range want {
		if states[sn].State != st {
			t.Errorf("%s: %s, want %s", sn, states[sn].State, st)
		}
	}
	if d := states[next.MeteringSN]; d.Epoch != lease.Epoch+1 || string(d.Body) != string(next.Body) || !d.Begin.Equal(start) || d.Revision != 1 {
		t.Errorf("next revision %+v", d)
	}
	if r := states[accepted2.MeteringSN].Reason; r != `listed as "ABNORMAL" in bill.csv line 4; re-reported as `+next.MeteringSN {
		t.Errorf("reason %q", r)
	}
	lines := dumpBills(t, s)
	wantLines := []string{
		accepted.MeteringSN + " 1 2 BILLED SUCCESS 0.45 <nil>",
		accepted2.MeteringSN + " 1 4 ASYNC_REJECTED ABNORMAL 0 " + next.MeteringSN,
	}
	if strings.Join(lines, "\n") != strings.Join(sortedCopy(wantLines), "\n") {
		t.Errorf("sdr_bills\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(sortedCopy(wantLines), "\n"))
	}

	// Again, and again from another file: nothing moves, the second file is recorded once.
	if applied, err = s.ApplyBill(ctx, src, changes); err != nil || applied != (bill.Applied{}) {
		t.Errorf("again: %+v, %v", applied, err)
	}
	if applied, err = s.ApplyBill(ctx, bill.Source{SHA256: strings.Repeat("cd", 32), Name: "other.csv", At: now}, changes); err != nil ||
		applied != (bill.Applied{}) {
		t.Errorf("other file: %+v, %v", applied, err)
	}
	var imports int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM bill_imports`).Scan(&imports); err != nil || imports != 2 {
		t.Errorf("%d imports, %v", imports, err)
	}
	if again := dumpBills(t, s); strings.Join(again, "\n") != strings.Join(lines, "\n") {
		t.Errorf("sdr_bills changed:\n%s", strings.Join(again, "\n"))
	}

	// The push cannot overwrite a bill's decision: its writes only touch PENDING and SENT.
	if err := s.RecordAttempt(ctx, lease.Epoch+1, report.Attempt{At: now, BatchID: "b"}, []string{accepted.MeteringSN},
		[]report.Outcome{{MeteringSN: accepted.MeteringSN, State: report.Rejected, Code: "0100"}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.SDRsByMeteringSN(ctx, []string{accepted.MeteringSN}); len(d) != 1 || d[0].State != report.Billed {
		t.Errorf("after a push write: %+v", d)
	}

	if _, err := s.ApplyBill(ctx, src, []bill.Change{{MeteringSN: accepted.MeteringSN, To: report.Rejected}}); err == nil {
		t.Error("a change to REJECTED was applied")
	}
}

func dumpBills(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.read.QueryContext(context.Background(), `SELECT metering_sn, import_id, line, state, status, amount, rereported_sn FROM sdr_bills ORDER BY metering_sn`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var sn, state, status string
		var id, line int
		var amount, next any
		if err := rows.Scan(&sn, &id, &line, &state, &status, &amount, &next); err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.Join([]string{sn, strconv.Itoa(id), strconv.Itoa(line), state, status, str(amount), str(next)}, " "))
	}
	return out
}

func str(v any) string {
	switch x := v.(type) {
	case nil:
		return "<nil>"
	case []byte:
		return string(x)
	case string:
		return x
	}
	return "?"
}

func sortedCopy(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return out
}
