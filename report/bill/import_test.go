package bill_test

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// line is one line of a generated bill.
type line struct{ sn, inst, begin, end, usage, amount, status string }

const header = "metering_sn,instance_id,begin_time,end_time,usage_value,amount,status\n"

func csvOf(lines []line) string {
	var b strings.Builder
	b.WriteString(header)
	for _, l := range lines {
		b.WriteString(strings.Join([]string{l.sn, l.inst, l.begin, l.end, l.usage, l.amount, l.status}, ","))
		b.WriteByte('\n')
	}
	return b.String()
}

func kgTime(t time.Time) string { return t.UTC().Format(koogallery.TimeLayout) }

// billOf is the bill KooGallery would export for what the simulator billed: one line per record, in billing
// order, its amount priced by the plan on its own (step: the instance's usage billed earlier in the month), with
// status SUCCESS.
func (r *rig) billOf(billed []kgsim.BilledRecord) []line {
	r.t.Helper()
	byBegin := append([]kgsim.BilledRecord(nil), billed...)
	sort.SliceStable(byBegin, func(i, j int) bool { return byBegin[i].BeginTime.Before(byBegin[j].BeginTime) })
	amounts, cum := map[string]decimal.Decimal{}, map[string]decimal.Decimal{}
	for _, b := range byBegin {
		plan, err := r.cfg.Catalog().Plan("TOK", b.BeginTime)
		if err != nil {
			r.t.Fatal(err)
		}
		q, err := plan.Price(b.UsageValue, cum[b.InstanceID])
		if err != nil {
			r.t.Fatal(err)
		}
		cum[b.InstanceID] = cum[b.InstanceID].Add(b.UsageValue)
		amounts[b.MeteringSN] = q.Amount
	}
	var out []line
	for _, b := range billed {
		out = append(out, line{sn: b.MeteringSN, inst: b.InstanceID, begin: kgTime(b.BeginTime), end: kgTime(b.EndTime),
			usage: b.UsageValue.String(), amount: amounts[b.MeteringSN].String(), status: "SUCCESS"})
	}
	return out
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// TestImportFindsEveryPlantedDiscrepancy pushes 12 instance-hours to the simulator, generates the bill from what
// it billed and plants one discrepancy of each kind. The import must find each exactly, bill the rest, turn the
// ABNORMAL line into an ASYNC_REJECTED SDR whose next revision the push then re-reports, and change nothing when
// the file is imported again.
func TestImportFindsEveryPlantedDiscrepancy(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 4, 3, "")
	r.push(r.srv.URL, koogallery.ValueAsNumber)
	billed := r.sim.Billed()
	if len(billed) != 12 {
		t.Fatalf("simulator billed %d records, want 12", len(billed))
	}
	lines := r.billOf(billed)
	for _, l := range lines {
		if d := r.sdr(l.sn); d.State != report.Accepted || !d.Amount.Equal(dec(l.amount)) {
			t.Fatalf("before planting: %s is %s with amount %s, the bill says %s", l.sn, d.State, d.Amount, l.amount)
		}
	}

	// The plants.
	off, by3, by2, missing, abnormal, byPeriod := lines[0], lines[1], lines[2], lines[3], lines[4], lines[5]
	lines[0].amount = dec(off.amount).Add(dec("0.05")).String()                   // beyond any tolerance
	lines[1].amount = pricing.Round(dec(by3.amount), 3).String()                  // KooGallery rounding to 3 places
	lines[2].amount = pricing.Round(dec(by2.amount), 2).StringFixed(2)            // ... or to 2 places
	lines[4].status, lines[4].amount = "ABNORMAL", "0"                            // refused after acceptance
	lines[5].sn = ""                                                              // no number: matched by instance and period,
	lines[5].begin, lines[5].end = rfc3339(byPeriod.begin), rfc3339(byPeriod.end) // with RFC 3339 times
	unknown := line{sn: "m2026112000-r0-00000000000000000000000000000000", inst: "inst-9999", begin: off.begin, end: off.end,
		usage: "1", amount: "0.3", status: "SUCCESS"}
	lines = append(append(lines[:3:3], lines[4:]...), unknown) // drop the missing one, add one for no SDR
	path := r.writeFile("bill-2026-11.csv", csvOf(lines))

	opts := bill.OptionsFromConfig(r.cfg, r.now)
	opts.Tolerance = decimal.Zero // list every difference, to see the rounding ones
	res, err := bill.Import(ctx, r.store, path, "bill-2026-11.csv", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.File != "bill-2026-11.csv" || res.Rows != 12 || res.Matched != 11 || res.Billed != 10 || res.AsyncRejected != 1 ||
		res.Rereported != 1 {
		t.Errorf("result %+v", summary(res))
	}
	if len(res.MissingInLedger) != 1 || res.MissingInLedger[0].MeteringSN != unknown.sn || res.MissingInLedger[0].Line != 13 {
		t.Errorf("missing in ledger: %+v, want line 13 %s", res.MissingInLedger, unknown.sn)
	}
	if len(res.MissingInBill) != 1 || res.MissingInBill[0].MeteringSN != missing.sn {
		t.Errorf("missing in bill: %v, want %s", sns(res.MissingInBill), missing.sn)
	}
	want := []bill.AmountDiff{
		{MeteringSN: off.sn, Ledger: dec(off.amount), Bill: dec(lines[0].amount), Diff: dec("0.05")},
		{MeteringSN: by3.sn, Ledger: dec(by3.amount), Bill: dec(lines[1].amount), Diff: dec(lines[1].amount).Sub(dec(by3.amount)),
			Rounded2: true, Rounded3: true},
		{MeteringSN: by2.sn, Ledger: dec(by2.amount), Bill: dec(lines[2].amount), Diff: dec(lines[2].amount).Sub(dec(by2.amount)),
			Rounded2: true},
	}
	checkDiffs(t, res.AmountDiffs, want)

	// The ledger: BILLED, the abnormal one ASYNC_REJECTED with its next revision PENDING, the missing one still
	// ACCEPTED.
	states := map[report.State]int{}
	for _, d := range r.sdrs() {
		states[d.State]++
	}
	if states[report.Billed] != 10 || states[report.AsyncRejected] != 1 || states[report.Accepted] != 1 || states[report.Pending] != 1 ||
		len(r.sdrs()) != 13 {
		t.Errorf("states %v", states)
	}
	if d := r.sdr(missing.sn); d.State != report.Accepted {
		t.Errorf("SDR missing from the bill is %s", d.State)
	}
	if d := r.sdr(byPeriod.sn); d.State != report.Billed {
		t.Errorf("SDR matched by period is %s", d.State)
	}
	old := r.sdr(abnormal.sn)
	if old.State != report.AsyncRejected || !strings.Contains(old.Reason, `listed as "ABNORMAL" in bill-2026-11.csv line 5`) {
		t.Errorf("abnormal SDR: %s %q", old.State, old.Reason)
	}
	nextSN := report.MeteringSN(old.InstanceID, old.Hour, 1)
	next := r.sdr(nextSN)
	if next.State != report.Pending || next.Revision != 1 || !next.RecordTime.Equal(old.RecordTime) || !next.Begin.Equal(old.Begin) ||
		!next.End.Equal(old.End) || !next.UsageValue.Equal(old.UsageValue) || !next.Amount.Equal(old.Amount) {
		t.Errorf("next revision %+v\nof %+v", next, old)
	}
	if wantBody := bytes.ReplaceAll(old.Body, []byte(old.MeteringSN), []byte(nextSN)); !bytes.Equal(next.Body, wantBody) {
		t.Errorf("next revision body\n%s\nwant\n%s", next.Body, wantBody)
	}

	// Importing the same file again reports the same comparison and changes nothing.
	before := r.dump()
	again, err := bill.Import(ctx, r.store, path, "bill-2026-11.csv", opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Billed != 0 || again.AsyncRejected != 0 || again.Rereported != 0 || again.Matched != 11 ||
		len(again.MissingInLedger) != 1 || len(again.MissingInBill) != 1 {
		t.Errorf("second import %+v", summary(again))
	}
	checkDiffs(t, again.AmountDiffs, want)
	if after := r.dump(); after != before {
		t.Errorf("second import changed the store:\nbefore\n%s\nafter\n%s", before, after)
	}

	// With the default tolerance (0.01) rounding differences are not listed.
	def := bill.OptionsFromConfig(r.cfg, r.now)
	if !def.Tolerance.Equal(dec("0.01")) {
		t.Fatalf("default tolerance %s", def.Tolerance)
	}
	res, err = bill.Import(ctx, r.store, path, "bill-2026-11.csv", def)
	if err != nil {
		t.Fatal(err)
	}
	checkDiffs(t, res.AmountDiffs, want[:1])

	// The push re-reports the abnormal record under revision 1. KooGallery refused revision 0 after taking it, so
	// it no longer holds that period; the simulator has no knob for an asynchronous refusal, so a fresh one stands
	// for KooGallery from here on.
	sim2, srv2 := r.simulator()
	r.push(srv2.URL, koogallery.ValueAsNumber)
	if got := sim2.Billed(); len(got) != 1 || got[0].MeteringSN != nextSN || got[0].InstanceID != old.InstanceID ||
		!got[0].BeginTime.Equal(old.Begin) || !got[0].EndTime.Equal(old.End) || !got[0].UsageValue.Equal(old.UsageValue) {
		t.Fatalf("re-report billed %+v, want %s", got, nextSN)
	}
	if d := r.sdr(nextSN); d.State != report.Accepted {
		t.Fatalf("re-reported SDR is %s (%s %s)", d.State, d.LastCode, d.Reason)
	}
	// Every instance-hour billed once over both: revision 0 of the abnormal one does not count.
	seen := map[string]int{}
	for _, b := range append(r.sim.Billed(), sim2.Billed()...) {
		if b.MeteringSN != abnormal.sn {
			seen[b.InstanceID+"|"+b.BeginTime.String()]++
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s billed %d times", k, n)
		}
	}
	if len(seen) != 12 {
		t.Errorf("%d instance-hours billed, want 12", len(seen))
	}

	// Imported a third time, the file still changes nothing; the re-report is now ACCEPTED and missing from it.
	before = r.dump()
	res, err = bill.Import(ctx, r.store, path, "bill-2026-11.csv", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Billed != 0 || res.AsyncRejected != 0 || res.Rereported != 0 {
		t.Errorf("third import %+v", summary(res))
	}
	if got := sns(res.MissingInBill); len(got) != 2 || !containsAll(got, missing.sn, nextSN) {
		t.Errorf("missing in bill %v, want %s and %s", got, missing.sn, nextSN)
	}
	if after := r.dump(); after != before {
		t.Errorf("third import changed the store:\nbefore\n%s\nafter\n%s", before, after)
	}

	// Next month's bill lists the re-report without a number: matched by period to revision 1 (not the refused
	// revision 0), which becomes BILLED; an abnormal line for the same period is taken to be the refusal already
	// handled, and changes nothing.
	path2 := r.writeFile("bill-2026-12.csv", csvOf([]line{
		{inst: old.InstanceID, begin: kgTime(old.Begin), end: kgTime(old.End), usage: old.UsageValue.String(), amount: old.Amount.String(), status: "SUCCESS"},
		{sn: missing.sn, inst: missing.inst, begin: missing.begin, end: missing.end, usage: missing.usage, amount: missing.amount, status: "SUCCESS"},
	}))
	res, err = bill.Import(ctx, r.store, path2, "", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.File != path2 || res.Matched != 2 || res.Billed != 2 || len(res.AmountDiffs) != 0 || len(res.MissingInLedger) != 0 {
		t.Errorf("next month %+v", summary(res))
	}
	if d := r.sdr(nextSN); d.State != report.Billed {
		t.Errorf("re-report after next month's bill: %s", d.State)
	}
	path3 := r.writeFile("sdr-abnormal.csv", csvOf([]line{
		{inst: old.InstanceID, begin: kgTime(old.Begin), end: kgTime(old.End), usage: old.UsageValue.String(), amount: "0", status: "Abnormal"},
	}))
	before = r.dump("sdrs", "sdr_bills")
	if res, err = bill.Import(ctx, r.store, path3, "sdr-abnormal.csv", opts); err != nil {
		t.Fatal(err)
	}
	if res.Matched != 1 || res.AsyncRejected != 0 || res.Rereported != 0 {
		t.Errorf("abnormal by period again: %+v", summary(res))
	}
	if after := r.dump("sdrs", "sdr_bills"); after != before {
		t.Errorf("abnormal by period again changed the ledger:\nbefore\n%s\nafter\n%s", before, after)
	}
	if imports := r.dump("bill_imports"); strings.Count(imports, "sdr-abnormal.csv") != 1 {
		t.Errorf("the import is not recorded once:\n%s", imports)
	}
}

func rfc3339(kg string) string {
	t, err := time.Parse(koogallery.TimeLayout, kg)
	if err != nil {
		panic(err)
	}
	return t.In(time.FixedZone("CST", 8*3600)).Format(time.RFC3339)
}

func summary(r *bill.Result) map[string]any {
	return map[string]any{"file": r.File, "rows": r.Rows, "matched": r.Matched, "billed": r.Billed, "async_rejected": r.AsyncRejected,
		"rereported": r.Rereported, "missing_in_ledger": len(r.MissingInLedger), "missing_in_bill": sns(r.MissingInBill),
		"amount_diffs": len(r.AmountDiffs)}
}

func sns(sdrs []report.SDR) []string {
	out := make([]string, len(sdrs))
	for i, d := range sdrs {
		out[i] = d.MeteringSN
	}
	return out
}

func containsAll(have []string, want ...string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

func checkDiffs(t *testing.T, got, want []bill.AmountDiff) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d amount diffs, want %d: %+v", len(got), len(want), got)
		return
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.MeteringSN != w.MeteringSN || !g.Ledger.Equal(w.Ledger) || !g.Bill.Equal(w.Bill) || !g.Diff.Equal(w.Diff) ||
			g.Rounded2 != w.Rounded2 || g.Rounded3 != w.Rounded3 {
			t.Errorf("amount diff %d: %+v, want %+v", i, g, w)
		}
	}
}

// TestImportRejectsMalformedFiles: each malformed file is refused with its line and reason, and the ledger is left
// as it was, although the first line of each would move an SDR.
func TestImportRejectsMalformedFiles(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, 2, "")
	r.push(r.srv.URL, koogallery.ValueAsNumber)
	lines := r.billOf(r.sim.Billed())
	a, b := lines[0], lines[1]
	good := strings.Join([]string{a.sn, a.inst, a.begin, a.end, a.usage, a.amount, "ABNORMAL"}, ",")
	row := func(l line, change func(*line)) string {
		change(&l)
		return strings.Join([]string{l.sn, l.inst, l.begin, l.end, l.usage, l.amount, l.status}, ",")
	}
	same := func(*line) {}
	tests := []struct {
		name    string
		content string
		line    int
		reason  string
	}{
		{"empty file", "", 1, "empty file: want a header row"},
		{"missing amount column", "metering_sn,instance_id,begin_time,end_time,usage_value,status\n", 1,
			`missing column(s) "amount"`},
		{"no way to match rows", "instance_id,begin_time,usage_value,amount\n", 1,
			`rows cannot be matched: the header needs the "metering_sn" column, or "instance_id", "begin_time" and "end_time" (missing "metering_sn", "end_time")`},
		{"column twice", "metering_sn,amount,instance_id,begin_time,end_time,usage_value,Amount\n", 1,
			`column "amount" appears more than once`},
		{"wrong field count", header + good + "\n" + row(b, same) + ",extra\n", 3, "8 fields, the header has 7"},
		{"bad time", header + good + "\n" + row(b, func(l *line) { l.begin = "2026-11-20 00:00:00" }) + "\n", 3,
			`begin_time: "2026-11-20 00:00:00" is not a time`},
		{"begin after end", header + good + "\n" + row(b, func(l *line) { l.begin, l.end = l.end, l.begin }) + "\n", 3,
			"begin_time 2026-11-20T01:00:00Z is after end_time 2026-11-20T00:00:00Z"},
		{"bad amount", header + good + "\n" + row(b, func(l *line) { l.amount = `"1,5"` }) + "\n", 3, `amount: "1,5": not a decimal`},
		{"bad usage", header + good + "\n" + row(b, func(l *line) { l.usage = "NaN" }) + "\n", 3, `usage_value: "NaN": not a decimal`},
		{"empty amount", header + good + "\n" + row(b, func(l *line) { l.amount = "" }) + "\n", 3, "amount: empty, want a decimal"},
		{"negative usage", header + good + "\n" + row(b, func(l *line) { l.usage = "-1.5" }) + "\n", 3,
			"usage_value: -1.5 must not be negative"},
		{"duplicate metering_sn", header + good + "\n" + row(b, same) + "\n" + row(a, same) + "\n", 4,
			"the same SDR as line 2 (metering_sn " + a.sn + ")"},
		{"duplicate period", header + row(b, func(l *line) { l.sn = "" }) + "\n" + row(b, func(l *line) { l.sn = "" }) + "\n", 3,
			"the same SDR as line 2 (instance " + b.inst},
		{"same SDR by number and by period", header + good + "\n" + row(a, func(l *line) { l.sn = "" }) + "\n", 3,
			"the same SDR as line 2 (metering_sn " + a.sn + ")"},
		{"no identity", header + good + "\n" + row(b, func(l *line) { l.sn, l.end = "", "" }) + "\n", 3,
			"no metering_sn, and not all of instance_id, begin_time and end_time to match the row by"},
		{"bad quoting", header + good + "\n" + row(b, func(l *line) { l.status = `SUC"CESS` }) + "\n", 3,
			`bare " in non-quoted-field`},
	}
	before := r.dump()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := r.writeFile(strings.ReplaceAll(tt.name, " ", "_")+".csv", tt.content)
			res, err := bill.Import(ctx, r.store, path, "", bill.OptionsFromConfig(r.cfg, r.now))
			if err == nil {
				t.Fatalf("accepted: %+v", summary(res))
			}
			t.Log(err)
			var fe *bill.FormatError
			if !errors.As(err, &fe) || fe.Line != tt.line || !strings.Contains(fe.Reason, tt.reason) {
				t.Fatalf("error %q, want line %d: ...%s", err, tt.line, tt.reason)
			}
			if want := "line " + strconv.Itoa(tt.line) + ": "; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file and %q", err, want)
			}
			if after := r.dump(); after != before {
				t.Errorf("a refused file changed the store:\nbefore\n%s\nafter\n%s", before, after)
			}
		})
	}
}

// TestImportCustomColumns reads a console-style export through the column names of the config file: a byte-order
// mark, other case and order, extra columns, no status column, and an abnormal status of another case.
func TestImportCustomColumns(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, 1, `reconcile:
  bill_columns: {metering_sn: "SDR No.", instance_id: Resource ID, begin_time: Start Time, end_time: End Time,
    usage: Usage, amount: Amount (CNY), status: ""}
  amount_tolerance: "0.001"
`)
	r.push(r.srv.URL, koogallery.ValueAsNumber)
	lines := r.billOf(r.sim.Billed())
	a, b := lines[0], lines[1]
	content := "\ufeffAmount (CNY),Currency,sdr no.,RESOURCE ID, Start Time ,End Time,Usage\n" +
		pricing.Round(dec(a.amount), 2).String() + ",CNY," + a.sn + "," + a.inst + "," + a.begin + "," + a.end + "," + a.usage + "\n" +
		pricing.Round(dec(b.amount), 3).String() + ",CNY,," + b.inst + "," + rfc3339(b.begin) + "," + rfc3339(b.end) + "," + b.usage + "\n"
	path := r.writeFile("console.csv", content)

	// The default columns do not fit this file.
	if _, err := bill.Import(ctx, r.store, path, "", bill.Options{}); err == nil || !strings.Contains(err.Error(), `line 1: missing column(s) "usage_value", "amount"`) {
		t.Fatalf("default columns: %v", err)
	}
	opts := bill.OptionsFromConfig(r.cfg, r.now)
	res, err := bill.Import(ctx, r.store, path, "console.csv", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 2 || res.Matched != 2 || res.Billed != 2 || len(res.MissingInBill) != 0 || len(res.MissingInLedger) != 0 {
		t.Errorf("result %+v", summary(res))
	}
	// a is off by its rounding to 2 places (beyond 0.001), b by 3 places (within).
	if len(res.AmountDiffs) != 1 || res.AmountDiffs[0].MeteringSN != a.sn || !res.AmountDiffs[0].Rounded2 || res.AmountDiffs[0].Rounded3 {
		t.Errorf("amount diffs %+v", res.AmountDiffs)
	}
}

// TestImportLeavesThePushAlone: lines for SDRs the push has not settled (SENT after a lost answer) are matched
// but not moved, even abnormal ones: only ACCEPTED SDRs change, so an import cannot overwrite a push decision.
func TestImportLeavesThePushAlone(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, 1, "")
	r.sim.Faults().LostAnswerRate(1) // processed and billed, answer lost: the ledger keeps both SENT
	if _, err := r.pusher(r.srv.URL, koogallery.ValueAsNumber).RunOnce(ctx, report.RunOptions{}); err != nil {
		t.Fatal(err)
	}
	lines := r.billOf(r.sim.Billed())
	if len(lines) != 2 {
		t.Fatalf("billed %d", len(lines))
	}
	for _, d := range r.sdrs() {
		if d.State != report.Sent {
			t.Fatalf("%s is %s, want SENT", d.MeteringSN, d.State)
		}
	}
	lines[1].status = "FAILED"
	path := r.writeFile("bill.csv", csvOf(lines))
	before := r.dump("sdrs", "sdr_bills")
	res, err := bill.Import(ctx, r.store, path, "bill.csv", bill.OptionsFromConfig(r.cfg, r.now))
	if err != nil {
		t.Fatal(err)
	}
	if res.Matched != 2 || res.Billed != 0 || res.AsyncRejected != 0 || res.Rereported != 0 || len(res.MissingInBill) != 0 {
		t.Errorf("result %+v", summary(res))
	}
	if after := r.dump("sdrs", "sdr_bills"); after != before {
		t.Errorf("import moved SDRs the push owns:\nbefore\n%s\nafter\n%s", before, after)
	}
	// The push settles them as confirmed duplicates; the same file then bills the first, re-reports the second.
	r.sim.Faults().LostAnswerRate(0)
	r.now = r.now.Add(5 * time.Minute)
	r.push(r.srv.URL, koogallery.ValueAsNumber)
	res, err = bill.Import(ctx, r.store, path, "bill.csv", bill.OptionsFromConfig(r.cfg, r.now))
	if err != nil {
		t.Fatal(err)
	}
	if res.Billed != 1 || res.AsyncRejected != 1 || res.Rereported != 1 {
		t.Errorf("after the push settled them: %+v", summary(res))
	}
}

// TestImportKeepsUsageValueForm: the re-report sends usage_value in the JSON form of the record KooGallery took
// (a string here), whatever koogallery.usage_value_as says now.
func TestImportKeepsUsageValueForm(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 1, 1, "")
	r.push(r.srv.URL, koogallery.ValueAsString)
	lines := r.billOf(r.sim.Billed())
	lines[0].status = "REJECTED"
	res, err := bill.Import(ctx, r.store, r.writeFile("b.csv", csvOf(lines)), "b.csv", bill.OptionsFromConfig(r.cfg, r.now))
	if err != nil || res.Rereported != 1 {
		t.Fatalf("%+v, %v", res, err)
	}
	old := r.sdr(lines[0].sn)
	next := r.sdr(report.MeteringSN(old.InstanceID, old.Hour, 1))
	if !bytes.Contains(old.Body, []byte(`"usage_value":"`)) || !bytes.Equal(next.Body, bytes.ReplaceAll(old.Body, []byte(old.MeteringSN), []byte(next.MeteringSN))) {
		t.Errorf("bodies\n%s\n%s", old.Body, next.Body)
	}
}

// TestImportWindow: an explicit window decides which ACCEPTED SDRs the file is expected to list.
func TestImportWindow(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2, 3, "")
	r.push(r.srv.URL, koogallery.ValueAsNumber)
	lines := r.billOf(r.sim.Billed())
	var hour1 []line
	for _, l := range lines {
		if l.begin == kgTime(h0.Add(time.Hour)) {
			hour1 = append(hour1, l)
		}
	}
	path := r.writeFile("h1.csv", csvOf(hour1))
	opts := bill.OptionsFromConfig(r.cfg, r.now)
	opts.From, opts.To = h0, h0.Add(3*time.Hour)
	res, err := bill.Import(ctx, r.store, path, "", opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Billed != 2 || len(res.MissingInBill) != 4 {
		t.Errorf("whole window: %+v", summary(res))
	}
	// Without a window, the file's own span (hour 1): nothing missing (those two are BILLED and in it).
	opts.From, opts.To = time.Time{}, time.Time{}
	if res, err = bill.Import(ctx, r.store, path, "", opts); err != nil || len(res.MissingInBill) != 0 || res.Billed != 0 {
		t.Errorf("own span: %+v, %v", res, err)
	}
}
