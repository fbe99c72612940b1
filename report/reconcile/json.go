package reconcile

import (
	"bufio"
	"encoding/json"
	"io"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report/bill"
)

// The JSON form of the report (DESIGN.md §5a): decimals are strings in plain notation, times RFC 3339 UTC with Z,
// absent values null.

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// tsNano keeps the milliseconds of instants recorded to the millisecond (acceptances, attempts).
func tsNano(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func optTime(t time.Time, f func(time.Time) string) *string {
	if t.IsZero() {
		return nil
	}
	s := f(t)
	return &s
}

func optDec(d decimal.Decimal, ok bool) *string {
	if !ok {
		return nil
	}
	s := d.String()
	return &s
}

type lineJSON struct {
	InstanceID       string       `json:"instance_id"`
	Meter            string       `json:"meter"`
	SKU              string       `json:"sku"`
	Aggregation      string       `json:"aggregation"`
	Hour             string       `json:"hour"`
	Events           int64        `json:"events"`
	Quantity         string       `json:"quantity"`
	LateEvents       int64        `json:"late_events"`
	LateQuantity     string       `json:"late_quantity"`
	LateOrigins      []originJSON `json:"late_origins"`
	UnitScale        string       `json:"unit_scale"`
	CarryIn          string       `json:"carry_in"`
	CarryOut         string       `json:"carry_out"`
	UsageValue       string       `json:"usage_value"`
	PushedUsage      *string      `json:"pushed_usage"`
	MeteringSN       *string      `json:"metering_sn"`
	Revision         *int         `json:"revision"`
	State            string       `json:"state"`
	LastCode         string       `json:"last_code"`
	Attempts         int          `json:"attempts"`
	Due              *string      `json:"due"`
	AcceptedAt       *string      `json:"accepted_at"`
	ExpectedAmount   *string      `json:"expected_amount"`
	AmountRounded2   *string      `json:"amount_rounded_2"`
	AmountRounded3   *string      `json:"amount_rounded_3"`
	RecomputedAmount *string      `json:"recomputed_amount"`
	AmountMismatch   bool         `json:"amount_mismatch"`
	Currency         string       `json:"currency"`
}

type originJSON struct {
	Hour     string `json:"hour"`
	Events   int64  `json:"events"`
	Quantity string `json:"quantity"`
}

func (l *Line) json() lineJSON {
	j := lineJSON{InstanceID: l.InstanceID, Meter: l.Meter, SKU: l.SKU, Aggregation: l.Aggregation, Hour: ts(l.Hour),
		Events: l.Events, Quantity: l.Quantity.String(), LateEvents: l.LateEvents, LateQuantity: l.LateQuantity.String(),
		LateOrigins: []originJSON{}, UnitScale: l.UnitScale.String(), CarryIn: l.CarryIn.String(),
		CarryOut: l.CarryOut.String(), UsageValue: l.UsageValue.String(), State: l.State, LastCode: l.LastCode,
		Attempts: l.Attempts, AmountMismatch: l.AmountMismatch, Currency: l.Currency}
	for _, o := range l.LateOrigins {
		j.LateOrigins = append(j.LateOrigins, originJSON{Hour: ts(o.Hour), Events: o.Events, Quantity: o.Quantity.String()})
	}
	if l.HasSDR {
		sn, rev := l.MeteringSN, l.Revision
		j.MeteringSN, j.Revision = &sn, &rev
		j.PushedUsage = optDec(l.PushedUsage, true)
		j.Due, j.AcceptedAt = optTime(l.Due, ts), optTime(l.AcceptedAt, tsNano)
		j.ExpectedAmount = optDec(l.Amount, true)
		r2, r3 := pricing.Format(l.Amount, 2), pricing.Format(l.Amount, 3)
		j.AmountRounded2, j.AmountRounded3 = &r2, &r3
		j.RecomputedAmount = optDec(l.Recomputed, l.Repriced)
	}
	return j
}

type instanceTotalJSON struct {
	InstanceID     string `json:"instance_id"`
	Meter          string `json:"meter"`
	SKU            string `json:"sku"`
	Events         int64  `json:"events"`
	Quantity       string `json:"quantity"`
	PushedUsage    string `json:"pushed_usage"`
	AcceptedUsage  string `json:"accepted_usage"`
	ExpectedAmount string `json:"expected_amount"`
	Currency       string `json:"currency"`
}

type skuTotalJSON struct {
	SKU            string `json:"sku"`
	Meter          string `json:"meter"`
	Currency       string `json:"currency"`
	Instances      int    `json:"instances"`
	Events         int64  `json:"events"`
	Quantity       string `json:"quantity"`
	PushedUsage    string `json:"pushed_usage"`
	AcceptedUsage  string `json:"accepted_usage"`
	ExpectedAmount string `json:"expected_amount"`
}

type currencyTotalJSON struct {
	Currency       string `json:"currency"`
	SDRs           int    `json:"sdrs"`
	ExpectedAmount string `json:"expected_amount"`
	AcceptedAmount string `json:"accepted_amount"`
	PendingAmount  string `json:"pending_amount"`
	RejectedAmount string `json:"rejected_amount"`
}

type totalsJSON struct {
	ByInstance []instanceTotalJSON `json:"by_instance"`
	BySKU      []skuTotalJSON      `json:"by_sku"`
	ByCurrency []currencyTotalJSON `json:"by_currency"`
}

type violationJSON struct {
	InstanceID string  `json:"instance_id"`
	Meter      string  `json:"meter"`
	Hour       *string `json:"hour"`
	What       string  `json:"what"`
	Want       string  `json:"want"`
	Got        string  `json:"got"`
}

type checkJSON struct {
	InstanceID   string `json:"instance_id"`
	Meter        string `json:"meter"`
	Aggregation  string `json:"aggregation"`
	Additive     bool   `json:"additive"`
	Hours        int    `json:"hours"`
	OpeningCarry string `json:"opening_carry"`
	Scaled       string `json:"scaled_quantity"`
	Accepted     string `json:"accepted"`
	Pending      string `json:"pending"`
	Rejected     string `json:"rejected"`
	Expired      string `json:"expired"`
	WrittenOff   string `json:"written_off"`
	ClosingCarry string `json:"closing_carry"`
	Holds        bool   `json:"holds"`
	Note         string `json:"note,omitempty"`
}

type invariantJSON struct {
	Holds      bool            `json:"holds"`
	Violations []violationJSON `json:"violations"`
	Checks     []checkJSON     `json:"checks"`
}

type rejectedJSON struct {
	MeteringSN string `json:"metering_sn"`
	InstanceID string `json:"instance_id"`
	Hour       string `json:"hour"`
	Revision   int    `json:"revision"`
	State      string `json:"state"`
	Code       string `json:"code"`
	Reason     string `json:"reason"`
	UsageValue string `json:"usage_value"`
	Amount     string `json:"amount"`
	Currency   string `json:"currency"`
	Attempts   int    `json:"attempts"`
}

type lateJSON struct {
	InstanceID string  `json:"instance_id"`
	Meter      string  `json:"meter"`
	Subject    string  `json:"subject"`
	CloseHour  string  `json:"close_hour"`
	OriginHour string  `json:"origin_hour"`
	Events     int64   `json:"events"`
	Quantity   string  `json:"quantity"`
	Usage      *string `json:"usage_written_off"`
	Reason     string  `json:"reason"`
}

type unmatchedJSON struct {
	ID         int64   `json:"id"`
	Meter      string  `json:"meter"`
	Subject    string  `json:"subject"`
	Hour       string  `json:"hour"`
	Events     int64   `json:"events"`
	Quantity   string  `json:"quantity"`
	State      string  `json:"state"`
	InstanceID *string `json:"instance_id"`
	FoundAt    string  `json:"found_at"`
	ResolvedAt *string `json:"resolved_at"`
	Reason     string  `json:"reason"`
}

type missedJSON struct {
	MeteringSN     string  `json:"metering_sn"`
	InstanceID     string  `json:"instance_id"`
	Hour           string  `json:"hour"`
	State          string  `json:"state"`
	Due            string  `json:"due"`
	AcceptedAt     *string `json:"accepted_at"`
	FirstAttemptAt *string `json:"first_attempt_at"`
	Attempts       int     `json:"attempts"`
	Late           string  `json:"late"`
	LateSeconds    float64 `json:"late_seconds"`
}

type billJSON struct {
	File            string           `json:"file"`
	Rows            int              `json:"rows"`
	Matched         int              `json:"matched"`
	Billed          int              `json:"billed"`
	AsyncRejected   int              `json:"async_rejected"`
	Rereported      int              `json:"rereported"`
	MissingInLedger []billRowJSON    `json:"missing_in_ledger"`
	MissingInBill   []billSDRJSON    `json:"missing_in_bill"`
	AmountDiffs     []amountDiffJSON `json:"amount_diffs"`
}

type billRowJSON struct {
	Line       int    `json:"line"`
	MeteringSN string `json:"metering_sn"`
	InstanceID string `json:"instance_id"`
	Begin      string `json:"begin"`
	End        string `json:"end"`
	Usage      string `json:"usage"`
	Amount     string `json:"amount"`
	Status     string `json:"status"`
}

type billSDRJSON struct {
	MeteringSN string `json:"metering_sn"`
	InstanceID string `json:"instance_id"`
	Hour       string `json:"hour"`
	UsageValue string `json:"usage_value"`
	Amount     string `json:"amount"`
	Currency   string `json:"currency"`
	State      string `json:"state"`
}

type amountDiffJSON struct {
	MeteringSN string `json:"metering_sn"`
	Ledger     string `json:"ledger"`
	Bill       string `json:"bill"`
	Diff       string `json:"diff"`
	Rounded2   bool   `json:"equal_rounded_2"`
	Rounded3   bool   `json:"equal_rounded_3"`
}

func totalsOf(t Totals) totalsJSON {
	out := totalsJSON{ByInstance: []instanceTotalJSON{}, BySKU: []skuTotalJSON{}, ByCurrency: []currencyTotalJSON{}}
	for _, x := range t.ByInstance {
		out.ByInstance = append(out.ByInstance, instanceTotalJSON{InstanceID: x.InstanceID, Meter: x.Meter, SKU: x.SKU,
			Events: x.Events, Quantity: x.Quantity.String(), PushedUsage: x.PushedUsage.String(),
			AcceptedUsage: x.AcceptedUsage.String(), ExpectedAmount: x.ExpectedAmount.String(), Currency: x.Currency})
	}
	for _, x := range t.BySKU {
		out.BySKU = append(out.BySKU, skuTotalJSON{SKU: x.SKU, Meter: x.Meter, Currency: x.Currency, Instances: x.Instances,
			Events: x.Events, Quantity: x.Quantity.String(), PushedUsage: x.PushedUsage.String(),
			AcceptedUsage: x.AcceptedUsage.String(), ExpectedAmount: x.ExpectedAmount.String()})
	}
	for _, x := range t.ByCurrency {
		out.ByCurrency = append(out.ByCurrency, currencyTotalJSON{Currency: x.Currency, SDRs: x.SDRs,
			ExpectedAmount: x.ExpectedAmount.String(), AcceptedAmount: x.AcceptedAmount.String(),
			PendingAmount: x.PendingAmount.String(), RejectedAmount: x.RejectedAmount.String()})
	}
	return out
}

func invariantOf(inv Invariant) invariantJSON {
	out := invariantJSON{Holds: inv.Holds, Violations: []violationJSON{}, Checks: []checkJSON{}}
	for _, v := range inv.Violations {
		out.Violations = append(out.Violations, violationJSON{InstanceID: v.InstanceID, Meter: v.Meter, Hour: optTime(v.Hour, ts),
			What: v.What, Want: v.Want, Got: v.Got})
	}
	for _, c := range inv.Checks {
		out.Checks = append(out.Checks, checkJSON{InstanceID: c.InstanceID, Meter: c.Meter, Aggregation: c.Aggregation,
			Additive: c.Additive, Hours: c.Hours, OpeningCarry: c.OpeningCarry.String(), Scaled: c.Scaled.String(),
			Accepted: c.Accepted.String(), Pending: c.Pending.String(), Rejected: c.Rejected.String(),
			Expired: c.Expired.String(), WrittenOff: c.WrittenOff.String(), ClosingCarry: c.ClosingCarry.String(),
			Holds: c.Holds, Note: c.Note})
	}
	return out
}

func rejectedOf(rs []RejectedRecord) []rejectedJSON {
	out := []rejectedJSON{}
	for _, r := range rs {
		out = append(out, rejectedJSON{MeteringSN: r.MeteringSN, InstanceID: r.InstanceID, Hour: ts(r.Hour), Revision: r.Revision,
			State: r.State, Code: r.Code, Reason: r.Reason, UsageValue: r.UsageValue.String(), Amount: r.Amount.String(),
			Currency: r.Currency, Attempts: r.Attempts})
	}
	return out
}

func lateOf(ls []LateWriteOff) []lateJSON {
	out := []lateJSON{}
	for _, l := range ls {
		out = append(out, lateJSON{InstanceID: l.InstanceID, Meter: l.Meter, Subject: l.Subject, CloseHour: ts(l.CloseHour),
			OriginHour: ts(l.OriginHour), Events: l.Events, Quantity: l.Quantity.String(), Usage: optDec(l.Usage, l.HasUsage),
			Reason: l.Reason})
	}
	return out
}

func unmatchedOf(us []UnmatchedUsage) []unmatchedJSON {
	out := []unmatchedJSON{}
	for _, u := range us {
		j := unmatchedJSON{ID: u.ID, Meter: u.Meter, Subject: u.Subject, Hour: ts(u.Hour), Events: u.Events,
			Quantity: u.Quantity.String(), State: u.State, FoundAt: ts(u.FoundAt), ResolvedAt: optTime(u.Resolved, ts), Reason: u.Reason}
		if u.InstanceID != "" {
			id := u.InstanceID
			j.InstanceID = &id
		}
		out = append(out, j)
	}
	return out
}

func missedOf(ms []MissedDeadline) []missedJSON {
	out := []missedJSON{}
	for _, m := range ms {
		out = append(out, missedJSON{MeteringSN: m.MeteringSN, InstanceID: m.InstanceID, Hour: ts(m.Hour), State: m.State,
			Due: ts(m.Due), AcceptedAt: optTime(m.AcceptedAt, tsNano), FirstAttemptAt: optTime(m.FirstAttempt, tsNano),
			Attempts: m.Attempts, Late: m.Late.String(), LateSeconds: m.Late.Seconds()})
	}
	return out
}

func billOf(b *bill.Result) *billJSON {
	if b == nil {
		return nil
	}
	out := &billJSON{File: b.File, Rows: b.Rows, Matched: b.Matched, Billed: b.Billed, AsyncRejected: b.AsyncRejected,
		Rereported: b.Rereported, MissingInLedger: []billRowJSON{}, MissingInBill: []billSDRJSON{}, AmountDiffs: []amountDiffJSON{}}
	for _, r := range b.MissingInLedger {
		out.MissingInLedger = append(out.MissingInLedger, billRowJSON{Line: r.Line, MeteringSN: r.MeteringSN, InstanceID: r.InstanceID,
			Begin: ts(r.Begin), End: ts(r.End), Usage: r.Usage.String(), Amount: r.Amount.String(), Status: r.Status})
	}
	for _, s := range b.MissingInBill {
		out.MissingInBill = append(out.MissingInBill, billSDRJSON{MeteringSN: s.MeteringSN, InstanceID: s.InstanceID, Hour: ts(s.Hour),
			UsageValue: s.UsageValue.String(), Amount: s.Amount.String(), Currency: s.Currency, State: string(s.State)})
	}
	for _, d := range b.AmountDiffs {
		out.AmountDiffs = append(out.AmountDiffs, amountDiffJSON{MeteringSN: d.MeteringSN, Ledger: d.Ledger.String(),
			Bill: d.Bill.String(), Diff: d.Diff.String(), Rounded2: d.Rounded2, Rounded3: d.Rounded3})
	}
	return out
}

// jsonWriter writes the report object piece by piece, so that its lines can be streamed as they are built: the
// lines come first in the object, everything computed from all of them after.
type jsonWriter struct {
	w   *bufio.Writer
	n   int
	err error
}

func newJSONWriter(w io.Writer) *jsonWriter { return &jsonWriter{w: bufio.NewWriterSize(w, 64<<10)} }

func (j *jsonWriter) raw(s string) {
	if j.err == nil {
		_, j.err = j.w.WriteString(s)
	}
}

func (j *jsonWriter) value(v any) {
	if j.err != nil {
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		j.err = err
		return
	}
	_, j.err = j.w.Write(data)
}

func (j *jsonWriter) begin(from, to time.Time) error {
	j.raw(`{"from":`)
	j.value(ts(from))
	j.raw(`,"to":`)
	j.value(ts(to))
	j.raw(`,"lines":[`)
	return j.err
}

func (j *jsonWriter) line(l *Line) error {
	if j.n > 0 {
		j.raw(",")
	}
	j.raw("\n")
	j.value(l.json())
	j.n++
	return j.err
}

func (j *jsonWriter) end(r *Report) error {
	if j.n > 0 {
		j.raw("\n")
	}
	j.raw(`],"totals":`)
	j.value(totalsOf(r.Totals))
	j.raw(`,"invariant":`)
	j.value(invariantOf(r.Invariant))
	j.raw(`,"rejected":`)
	j.value(rejectedOf(r.Rejected))
	j.raw(`,"late":`)
	j.value(lateOf(r.Late))
	j.raw(`,"unmatched":`)
	j.value(unmatchedOf(r.Unmatched))
	j.raw(`,"missed_deadline":`)
	j.value(missedOf(r.MissedDeadline))
	if r.Bill != nil {
		j.raw(`,"bill":`)
		j.value(billOf(r.Bill))
	}
	j.raw("}\n")
	if j.err != nil {
		return j.err
	}
	return j.w.Flush()
}

// WriteJSON writes the report as the JSON object of DESIGN.md §5a.
func (r *Report) WriteJSON(w io.Writer) error {
	j := newJSONWriter(w)
	if err := j.begin(r.From, r.To); err != nil {
		return err
	}
	for i := range r.Lines {
		if err := j.line(&r.Lines[i]); err != nil {
			return err
		}
	}
	return j.end(r)
}
