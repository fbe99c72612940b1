package bill

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/koogallery"
)

// Result is what one import found and did.
type Result struct {
	File    string
	Rows    int // data lines of the file
	Matched int // lines that matched an SDR of the ledger
	// Billed, AsyncRejected and Rereported count what this import changed: SDRs moved ACCEPTED -> BILLED and
	// ACCEPTED -> ASYNC_REJECTED, and next revisions built to re-report the latter. All are 0 for a file whose
	// records are already settled, such as the same file imported again.
	Billed        int
	AsyncRejected int
	Rereported    int
	// MissingInLedger are the lines matching no SDR, in file order.
	MissingInLedger []BillRow
	// MissingInBill are the ACCEPTED and BILLED SDRs of the window (Options.From, To) that no line matched,
	// oldest hour first.
	MissingInBill []report.SDR
	// AmountDiffs are the matched lines, in file order, whose amount differs from the SDR's exact expected amount
	// by more than the tolerance. Lines with an abnormal status are not compared: KooGallery charged nothing.
	AmountDiffs []AmountDiff
}

// BillRow is one line of an export. Fields of columns the export lacks are zero.
type BillRow struct {
	Line          int // 1-based line of the file; the header is line 1
	MeteringSN    string
	InstanceID    string
	Begin, End    time.Time
	Usage, Amount decimal.Decimal
	Status        string
}

// AmountDiff is a matched line whose amount differs from the ledger's.
type AmountDiff struct {
	MeteringSN         string
	Ledger, Bill, Diff decimal.Decimal // Diff = Bill - Ledger, exact
	// Rounded2 and Rounded3 tell whether the two amounts are equal once each is rounded half-up to 2 or 3
	// places: the difference is then only KooGallery's (unpublished) rounding.
	Rounded2, Rounded3 bool
}

// Store is what an import needs from the ledger (*sqlite.Store implements it).
type Store interface {
	// SDRsByMeteringSN returns the SDRs with these numbers; numbers the ledger lacks are left out.
	SDRsByMeteringSN(ctx context.Context, sns []string) ([]report.SDR, error)
	// SDRsByPeriod returns every revision of the SDRs of these instances and periods (begin and end equal).
	SDRsByPeriod(ctx context.Context, periods []Period) ([]report.SDR, error)
	// ListSDRs is report.Ledger's: SDRs by state and hour range.
	ListSDRs(ctx context.Context, f report.SDRFilter) ([]report.SDR, error)
	// ApplyBill records the import of src (once per file content) and applies changes in one transaction. Each
	// change applies only if its SDR is still ACCEPTED; a Next revision is inserted only with its ASYNC_REJECTED
	// change and only if no SDR of that instance, hour and revision exists. It returns what it changed.
	ApplyBill(ctx context.Context, src Source, changes []Change) (Applied, error)
}

// Period is an instance and an SDR period, a line's identity when it has no metering_sn.
type Period struct {
	InstanceID string
	Begin, End time.Time
}

// Source is the imported file.
type Source struct {
	SHA256 string // hex SHA-256 of the file's bytes
	Name   string
	Rows   int
	At     time.Time
}

// Change moves one ACCEPTED SDR to BILLED or ASYNC_REJECTED on account of one line.
type Change struct {
	MeteringSN string
	To         report.State // report.Billed or report.AsyncRejected
	Line       int
	Status     string
	Amount     string      // the line's amount, exact; "" when the export has no amount column
	Next       *report.SDR // with report.AsyncRejected: the next revision, PENDING, that re-reports the record
}

// Applied counts what ApplyBill changed.
type Applied struct {
	Billed, AsyncRejected, Rereported int
}

// Import reads the export at path (named name in the result and the ledger; path when empty), compares it with
// the ledger and applies what it settles (see the package comment). A malformed file is refused with a
// *FormatError (line and reason) and changes nothing.
func Import(ctx context.Context, st Store, path, name string, opts Options) (*Result, error) {
	if name == "" {
		name = path
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read bill: %w", err)
	}
	if opts.Columns == (Columns{}) {
		opts.Columns = DefaultColumns()
	}
	sh, err := parse(bytes.NewReader(data), opts.Columns, opts.AbnormalStatuses)
	if err != nil {
		return nil, fmt.Errorf("bill %s: %w", name, err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	sdrs, err := match(ctx, st, sh)
	if err != nil {
		return nil, fmt.Errorf("bill %s: %w", name, err)
	}

	res := &Result{File: name, Rows: len(sh.rows)}
	matchedBy := map[string]int{} // metering_sn -> line
	var changes []Change
	for i, row := range sh.rows {
		d := sdrs[i]
		if d == nil {
			res.MissingInLedger = append(res.MissingInLedger, row)
			continue
		}
		if prev, dup := matchedBy[d.MeteringSN]; dup {
			return nil, fmt.Errorf("bill %s: %w", name, lineErr(row.Line, "the same SDR as line %d (metering_sn %s)", prev, d.MeteringSN))
		}
		matchedBy[d.MeteringSN] = row.Line
		res.Matched++
		amount := ""
		if sh.hasAmount {
			amount = row.Amount.String()
		}
		// Only ACCEPTED moves: a BILLED record cannot be reversed (spec §2), an ASYNC_REJECTED one has been dealt
		// with, and PENDING, SENT, REJECTED and EXPIRED belong to the push.
		switch {
		case d.State != report.Accepted:
		case sh.abnormal[i]:
			next, err := nextRevision(*d, row, name, opts.valueAs)
			if err != nil {
				return nil, fmt.Errorf("bill %s: line %d: re-report %s: %w", name, row.Line, d.MeteringSN, err)
			}
			changes = append(changes, Change{MeteringSN: d.MeteringSN, To: report.AsyncRejected, Line: row.Line,
				Status: row.Status, Amount: amount, Next: &next})
		default:
			changes = append(changes, Change{MeteringSN: d.MeteringSN, To: report.Billed, Line: row.Line, Status: row.Status,
				Amount: amount})
		}
		if sh.hasAmount && !sh.abnormal[i] {
			if diff, ok := compareAmounts(d.MeteringSN, d.Amount, row.Amount, opts.Tolerance); ok {
				res.AmountDiffs = append(res.AmountDiffs, diff)
			}
		}
	}

	from, to := window(sh, sdrs, opts.From, opts.To)
	if from.Before(to) {
		if res.MissingInBill, err = missingInBill(ctx, st, from, to, matchedBy); err != nil {
			return nil, fmt.Errorf("bill %s: %w", name, err)
		}
	}

	sum := sha256.Sum256(data)
	applied, err := st.ApplyBill(ctx, Source{SHA256: hex.EncodeToString(sum[:]), Name: name, Rows: len(sh.rows), At: now}, changes)
	if err != nil {
		return nil, fmt.Errorf("bill %s: apply: %w", name, err)
	}
	res.Billed, res.AsyncRejected, res.Rereported = applied.Billed, applied.AsyncRejected, applied.Rereported
	return res, nil
}

// compareAmounts returns the difference of a line's amount from the ledger's when it exceeds the tolerance.
func compareAmounts(sn string, ledger, bill, tolerance decimal.Decimal) (AmountDiff, bool) {
	diff := bill.Sub(ledger)
	if diff.Abs().LessThanOrEqual(tolerance) {
		return AmountDiff{}, false
	}
	return AmountDiff{MeteringSN: sn, Ledger: ledger, Bill: bill, Diff: diff,
		Rounded2: pricing.Round(ledger, 2).Equal(pricing.Round(bill, 2)),
		Rounded3: pricing.Round(ledger, 3).Equal(pricing.Round(bill, 3))}, true
}

// match finds each line's SDR (nil: none). A line with a metering_sn is matched by it alone; a line without one
// by its instance and period, choosing among the revisions of that instance-hour (pick).
func match(ctx context.Context, st Store, sh *sheet) ([]*report.SDR, error) {
	var sns []string
	var periods []Period
	for _, row := range sh.rows {
		if row.MeteringSN != "" {
			sns = append(sns, row.MeteringSN)
		} else {
			periods = append(periods, Period{InstanceID: row.InstanceID, Begin: row.Begin, End: row.End})
		}
	}
	bySN := map[string]report.SDR{}
	if len(sns) > 0 {
		found, err := st.SDRsByMeteringSN(ctx, sns)
		if err != nil {
			return nil, err
		}
		for _, d := range found {
			bySN[d.MeteringSN] = d
		}
	}
	byPeriod := map[string][]report.SDR{}
	if len(periods) > 0 {
		found, err := st.SDRsByPeriod(ctx, periods)
		if err != nil {
			return nil, err
		}
		for _, d := range found {
			k := periodKey(d.InstanceID, d.Begin, d.End)
			byPeriod[k] = append(byPeriod[k], d)
		}
	}
	out := make([]*report.SDR, len(sh.rows))
	for i, row := range sh.rows {
		if row.MeteringSN != "" {
			if d, ok := bySN[row.MeteringSN]; ok {
				out[i] = &d
			}
			continue
		}
		out[i] = pick(byPeriod[periodKey(row.InstanceID, row.Begin, row.End)], sh.abnormal[i])
	}
	return out, nil
}

func periodKey(instanceID string, begin, end time.Time) string {
	return fmt.Sprintf("%s|%d|%d", instanceID, begin.UnixMilli(), end.UnixMilli())
}

// pick chooses the revision a line without a metering_sn stands for. KooGallery processes one SDR per instance
// and period, so a normal line is the live revision: the newest ACCEPTED or BILLED one, else the newest not
// ASYNC_REJECTED. An abnormal line is ambiguous once a revision has been re-reported (every revision has the same
// instance, period and usage): it is taken to be the one already ASYNC_REJECTED, so that a second export listing
// the same refusal does not reject the re-report too. Exports with a metering_sn column have no such ambiguity.
func pick(revs []report.SDR, abnormal bool) *report.SDR {
	if len(revs) == 0 {
		return nil
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i].Revision > revs[j].Revision }) // newest first
	choose := func(ok func(report.SDR) bool) *report.SDR {
		for i := range revs {
			if ok(revs[i]) {
				return &revs[i]
			}
		}
		return nil
	}
	if abnormal {
		if d := choose(func(d report.SDR) bool { return d.State == report.AsyncRejected }); d != nil {
			return d
		}
		return &revs[0]
	}
	if d := choose(func(d report.SDR) bool { return d.State == report.Accepted || d.State == report.Billed }); d != nil {
		return d
	}
	if d := choose(func(d report.SDR) bool { return d.State != report.AsyncRejected }); d != nil {
		return d
	}
	return &revs[0]
}

// window returns the hours [from, to) whose SDRs the file should list: the bounds given, else the first and last
// hour the file covers (its lines' begin times and its matched SDRs' hours).
func window(sh *sheet, sdrs []*report.SDR, from, to time.Time) (time.Time, time.Time) {
	if !from.IsZero() && !to.IsZero() {
		return from, to
	}
	var lo, hi time.Time
	see := func(hour time.Time) {
		if lo.IsZero() || hour.Before(lo) {
			lo = hour
		}
		if hi.IsZero() || hour.After(hi) {
			hi = hour
		}
	}
	for i, row := range sh.rows {
		if sdrs[i] != nil {
			see(sdrs[i].Hour)
		} else if !row.Begin.IsZero() {
			see(row.Begin.Truncate(time.Hour))
		}
	}
	if lo.IsZero() {
		return from, to // nothing to take a span from: only an explicit window applies
	}
	if from.IsZero() {
		from = lo
	}
	if to.IsZero() {
		to = hi.Add(time.Hour)
	}
	return from, to
}

// missingInBill lists the ACCEPTED and BILLED SDRs of [from, to) that no line matched, oldest hour first.
func missingInBill(ctx context.Context, st Store, from, to time.Time, matched map[string]int) ([]report.SDR, error) {
	var out []report.SDR
	for _, state := range []report.State{report.Accepted, report.Billed} {
		sdrs, err := st.ListSDRs(ctx, report.SDRFilter{State: state, From: from, To: to})
		if err != nil {
			return nil, err
		}
		for _, d := range sdrs {
			if _, ok := matched[d.MeteringSN]; !ok {
				out = append(out, d)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Hour.Equal(b.Hour) {
			return a.Hour.Before(b.Hour)
		}
		if a.InstanceID != b.InstanceID {
			return a.InstanceID < b.InstanceID
		}
		return a.Revision < b.Revision
	})
	return out, nil
}

// nextRevision builds the SDR that re-reports d after KooGallery refused it: the same record (instance, times,
// usage, package) under the metering_sn of the next revision, PENDING. The usage_value keeps the JSON form of d's
// stored body, so the re-report differs from what KooGallery first took only in its number.
func nextRevision(d report.SDR, row BillRow, file string, fallback koogallery.ValueAs) (report.SDR, error) {
	n := report.SDR{InstanceID: d.InstanceID, Hour: d.Hour, Revision: d.Revision + 1, Meter: d.Meter, SKU: d.SKU,
		RecordTime: d.RecordTime, Begin: d.Begin, End: d.End, UsageValue: d.UsageValue, Amount: d.Amount,
		Currency: d.Currency, RelatePkgInstance: d.RelatePkgInstance, State: report.Pending, Due: d.Due,
		Reason: fmt.Sprintf("re-reports %s, listed as %q in %s line %d", d.MeteringSN, row.Status, file, row.Line)}
	n.MeteringSN = report.MeteringSN(n.InstanceID, n.Hour, n.Revision)
	body, err := koogallery.EncodeRecord(koogallery.Record{InstanceID: n.InstanceID, MeteringSN: n.MeteringSN,
		RecordTime: n.RecordTime, BeginTime: n.Begin, EndTime: n.End, UsageValue: n.UsageValue,
		RelatePkgInstance: n.RelatePkgInstance}, valueForm(d.Body, fallback))
	if err != nil {
		return report.SDR{}, err
	}
	n.Body = body
	return n, nil
}

// valueForm returns the JSON type of usage_value in a stored body, else fallback, else a number.
func valueForm(body []byte, fallback koogallery.ValueAs) koogallery.ValueAs {
	var rec struct {
		UsageValue json.RawMessage `json:"usage_value"`
	}
	if json.Unmarshal(body, &rec) == nil && len(rec.UsageValue) > 0 {
		if rec.UsageValue[0] == '"' {
			return koogallery.ValueAsString
		}
		return koogallery.ValueAsNumber
	}
	if fallback == koogallery.ValueAsString {
		return fallback
	}
	return koogallery.ValueAsNumber
}
