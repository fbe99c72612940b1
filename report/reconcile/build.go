package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report"
)

// Build reads the window's closed hours and ledger through src and returns the report with all its lines.
// For long windows prefer Export, which streams the lines instead of keeping them.
func Build(ctx context.Context, src Source, catalog *pricing.Catalog, opts Options) (*Report, error) {
	var lines []Line
	r, err := build(ctx, src, catalog, opts, func(l *Line) error {
		lines = append(lines, *l)
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.Lines = lines
	return r, nil
}

// build makes the report, handing each line to emit as soon as it is complete.
func build(ctx context.Context, src Source, catalog *pricing.Catalog, opts Options, emit func(*Line) error) (*Report, error) {
	if catalog == nil {
		return nil, errors.New("reconcile: no plan catalog")
	}
	if !opts.From.Before(opts.To) {
		return nil, fmt.Errorf("reconcile: from %s must be before to %s", opts.From.Format(time.RFC3339), opts.To.Format(time.RFC3339))
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	opts.From, opts.To, opts.Now = opts.From.UTC(), opts.To.UTC(), opts.Now.UTC()
	b := &builder{src: src, catalog: catalog, opts: opts, emit: emit,
		r:    &Report{From: opts.From, To: opts.To, Now: opts.Now, Bill: opts.Bill, States: map[string]int{}},
		skus: map[skuKey]*SKUTotal{}, skuInstances: map[skuKey]map[string]bool{}, currencies: map[string]*CurrencyTotal{},
		hours: map[int64]*HourPoint{}}
	if err := b.run(ctx); err != nil {
		return nil, err
	}
	return b.r, nil
}

// builder is one run of build.
type builder struct {
	src     Source
	catalog *pricing.Catalog
	opts    Options
	emit    func(*Line) error
	r       *Report

	carried  map[string]map[int64][]aggregate.Late // instance -> close hour -> late usage carried into it
	releases map[string][]aggregate.WriteOff       // instance -> release remainders written off in the window
	lateWO   map[string]aggregate.WriteOff         // instance|close|origin -> late usage written off

	skus         map[skuKey]*SKUTotal
	skuInstances map[skuKey]map[string]bool
	currencies   map[string]*CurrencyTotal
	hours        map[int64]*HourPoint
	missed       []MissedDeadline
}

type skuKey struct{ sku, currency string }

func (b *builder) run(ctx context.Context) error {
	if err := b.readSide(ctx); err != nil {
		return err
	}
	insts, err := b.src.ListInstances(ctx, instance.Filter{})
	if err != nil {
		return fmt.Errorf("list instances: %w", err)
	}
	slices.SortFunc(insts, func(a, b instance.Instance) int { return strings.Compare(a.ID, b.ID) })
	for i, in := range insts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.instance(ctx, in); err != nil {
			return err
		}
		if b.opts.Progress != nil {
			b.opts.Progress(i+1, len(insts))
		}
	}
	if err := b.finishMissed(ctx); err != nil {
		return err
	}
	b.finishTotals()
	b.finishHours()
	b.r.Invariant.Holds = len(b.r.Invariant.Violations) == 0
	return nil
}

// readSide reads the window's late usage, write-offs and unmatched usage: records of incidents, not of every
// hour, so they are read once and indexed by instance.
func (b *builder) readSide(ctx context.Context) error {
	lates, err := b.src.ListLate(ctx, b.opts.From, b.opts.To)
	if err != nil {
		return fmt.Errorf("list late usage: %w", err)
	}
	wos, err := b.src.ListWriteOffs(ctx, b.opts.From, b.opts.To)
	if err != nil {
		return fmt.Errorf("list write-offs: %w", err)
	}
	b.carried, b.releases, b.lateWO = map[string]map[int64][]aggregate.Late{}, map[string][]aggregate.WriteOff{}, map[string]aggregate.WriteOff{}
	for _, w := range wos {
		if w.Kind == aggregate.WriteOffReleaseRemainder {
			b.releases[w.InstanceID] = append(b.releases[w.InstanceID], w)
			continue
		}
		k := lateKey(w.InstanceID, w.CloseHour, w.OriginHour)
		if prev, ok := b.lateWO[k]; ok {
			w.Usage = w.Usage.Add(prev.Usage)
		}
		b.lateWO[k] = w
	}
	for _, l := range lates {
		switch l.Action {
		case aggregate.LateCarried:
			m := b.carried[l.InstanceID]
			if m == nil {
				m = map[int64][]aggregate.Late{}
				b.carried[l.InstanceID] = m
			}
			m[l.CloseHour.UnixMilli()] = append(m[l.CloseHour.UnixMilli()], l)
		case aggregate.LateDropped:
			lw := LateWriteOff{InstanceID: l.InstanceID, Meter: l.Meter, Subject: l.Subject, CloseHour: l.CloseHour,
				OriginHour: l.OriginHour, Events: l.Events, Quantity: l.Quantity, Reason: l.Reason}
			if w, ok := b.lateWO[lateKey(l.InstanceID, l.CloseHour, l.OriginHour)]; ok {
				lw.Usage, lw.HasUsage = w.Usage, true
			}
			b.r.Late = append(b.r.Late, lw)
		}
	}
	unmatched, err := b.src.ListUnmatched(ctx, b.opts.From, b.opts.To)
	if err != nil {
		return fmt.Errorf("list unmatched usage: %w", err)
	}
	for _, u := range unmatched {
		b.r.Unmatched = append(b.r.Unmatched, UnmatchedUsage{ID: u.ID, Meter: u.Meter, Subject: u.Subject, Hour: u.Hour,
			Events: u.Events, Quantity: u.Quantity, State: string(u.State), InstanceID: u.InstanceID, FoundAt: u.FoundAt,
			Resolved: u.Resolved, Reason: u.Reason})
	}
	return nil
}

func lateKey(id string, closeHour, origin time.Time) string {
	return fmt.Sprintf("%s|%d|%d", id, closeHour.UnixMilli(), origin.UnixMilli())
}

// account is one instance's working set: its totals per currency and the terms of its invariant.
type account struct {
	in      instance.Instance
	meter   string
	agg     string
	check   Check
	held    int
	totals  map[string]*InstanceTotal // by currency
	prevRow *aggregate.Row
	// violationsBefore is the number of violations found before this instance: any beyond it are its own.
	violationsBefore int
}

// instance reads, checks and emits one instance's lines. Its rows and SDRs are dropped when it returns.
func (b *builder) instance(ctx context.Context, in instance.Instance) error {
	rows, err := b.src.UsageRows(ctx, aggregate.UsageQuery{InstanceID: in.ID, From: b.opts.From, To: b.opts.To})
	if err != nil {
		return fmt.Errorf("usage rows of %s: %w", in.ID, err)
	}
	sdrs, err := b.src.ListSDRs(ctx, report.SDRFilter{InstanceID: in.ID, From: b.opts.From, To: b.opts.To})
	if err != nil {
		return fmt.Errorf("SDRs of %s: %w", in.ID, err)
	}
	releases := b.releases[in.ID]
	if len(rows) == 0 && len(sdrs) == 0 && len(releases) == 0 && len(b.carried[in.ID]) == 0 {
		return nil
	}
	b.r.Instances++
	a := &account{in: in, meter: in.Meter, totals: map[string]*InstanceTotal{}, violationsBefore: len(b.r.Invariant.Violations)}
	if len(rows) > 0 {
		a.meter, a.agg = rows[0].Meter, rows[0].Aggregation
	} else if m := sdrMeter(sdrs); m != "" {
		a.meter = m
	}
	a.check = Check{InstanceID: in.ID, Meter: a.meter, Aggregation: a.agg, Additive: a.agg == "" || meter.Aggregation(a.agg).Additive()}

	// The SDRs of each hour, revisions ascending; the last one is the hour's current record.
	byHour := map[int64][]report.SDR{}
	for _, s := range sdrs {
		byHour[s.Hour.UnixMilli()] = append(byHour[s.Hour.UnixMilli()], s)
	}
	hours := make([]int64, 0, len(rows)+len(byHour))
	rowAt := make(map[int64]*aggregate.Row, len(rows))
	for i := range rows {
		h := rows[i].Hour.UnixMilli()
		rowAt[h] = &rows[i]
		hours = append(hours, h)
	}
	for h := range byHour {
		if _, ok := rowAt[h]; !ok {
			hours = append(hours, h)
		}
	}
	slices.Sort(hours)

	cum := map[int64]decimal.Decimal{} // step period start -> usage of the period before the current hour
	for _, h := range hours {
		revs := byHour[h]
		var cur *report.SDR
		if len(revs) > 0 {
			cur = &revs[len(revs)-1]
		}
		row := rowAt[h]
		sku := ""
		switch {
		case row != nil:
			sku = row.SKU
		case cur != nil:
			sku = cur.SKU
		}
		pr, err := b.reprice(ctx, in.ID, sku, time.UnixMilli(h).UTC(), cur, revs, cum)
		if err != nil {
			return err
		}
		if row != nil {
			if err := b.line(a, row, cur, pr); err != nil {
				return err
			}
		} else {
			b.violate(Violation{InstanceID: in.ID, Meter: a.meter, Hour: cur.Hour, What: "SDR without a closed hour",
				Want: "no SDR", Got: fmt.Sprintf("%s with usage_value %s", cur.MeteringSN, cur.UsageValue)})
			b.account(a, cur, sku, pr.currency(cur))
		}
		for i := range revs {
			b.sections(&revs[i])
		}
		if cur != nil {
			b.chart(cur)
		}
	}
	// Carried late usage with no closed hour to carry it.
	for _, closeMs := range slices.Sorted(maps.Keys(b.carried[in.ID])) {
		if ls := b.carried[in.ID][closeMs]; rowAt[closeMs] == nil {
			b.violate(Violation{InstanceID: in.ID, Meter: a.meter, Hour: time.UnixMilli(closeMs).UTC(),
				What: "late usage carried into an hour without a closed row", Want: "a closed row",
				Got: fmt.Sprintf("%d late records, no row", len(ls))})
		}
	}
	if err := b.invariant(ctx, a, rows, releases); err != nil {
		return err
	}
	b.flushAccount(a)
	return nil
}

func sdrMeter(sdrs []report.SDR) string {
	if len(sdrs) > 0 {
		return sdrs[0].Meter
	}
	return ""
}

// price is the repricing of an hour's current SDR.
type price struct {
	plan   *pricing.Plan
	amount decimal.Decimal
	ok     bool
}

// currency is the currency of an hour: its SDR's, else the plan's.
func (p price) currency(cur *report.SDR) string {
	if cur != nil {
		return cur.Currency
	}
	if p.plan != nil {
		return p.plan.Currency
	}
	return ""
}

// excluded are the states whose usage does not count towards a step plan's cumulative (DESIGN.md §4 step 8).
func excluded(s report.State) bool {
	return s == report.Rejected || s == report.Expired || s == report.AsyncRejected
}

// reprice prices the hour's current SDR with the plan in effect at the hour and, for step plans, the usage of
// the period accumulated so far from the ledger as it stands; then adds the hour's counting usage to it.
func (b *builder) reprice(ctx context.Context, id, sku string, hour time.Time, cur *report.SDR, revs []report.SDR,
	cum map[int64]decimal.Decimal) (price, error) {
	plan, err := b.catalog.Plan(sku, hour)
	if err != nil {
		return price{}, nil // the SKU is no longer priced: shown as not repriced, not a failure of the report
	}
	p := price{plan: plan}
	c := decimal.Zero
	var start int64
	step := plan.Mode == pricing.ModeStep
	if step {
		s, _ := plan.Period(hour)
		start = s.UnixMilli()
		var ok bool
		if c, ok = cum[start]; !ok {
			c = decimal.Zero
			if s.Before(b.opts.From) {
				if c, err = b.src.PeriodUsage(ctx, id, s, b.opts.From); err != nil {
					return p, fmt.Errorf("period usage of %s: %w", id, err)
				}
			}
		}
	}
	if cur != nil {
		if q, err := plan.Price(cur.UsageValue, c); err == nil {
			p.amount, p.ok = q.Amount, true
		}
	}
	if step {
		for _, s := range revs {
			if !excluded(s.State) {
				c = c.Add(s.UsageValue)
			}
		}
		cum[start] = c
	}
	return p, nil
}

// line builds, checks and emits the line of a closed row.
func (b *builder) line(a *account, row *aggregate.Row, cur *report.SDR, pr price) error {
	l := Line{InstanceID: row.InstanceID, Meter: row.Meter, SKU: row.SKU, Aggregation: row.Aggregation, Hour: row.Hour,
		Events: row.Events, Quantity: row.Quantity, LateEvents: row.LateEvents, LateQuantity: row.LateQuantity,
		UnitScale: row.UnitScale, CarryIn: row.CarryIn, CarryOut: row.CarryOut, UsageValue: row.UsageValue,
		Currency: pr.currency(cur)}
	lates := slices.Clone(b.carried[row.InstanceID][row.Hour.UnixMilli()])
	sort.SliceStable(lates, func(i, j int) bool { return lates[i].OriginHour.Before(lates[j].OriginHour) })
	lateQty, lateEvents := decimal.Zero, int64(0)
	for _, lt := range lates {
		l.LateOrigins = append(l.LateOrigins, LateOrigin{Hour: lt.OriginHour, Events: lt.Events, Quantity: lt.Quantity})
		lateQty, lateEvents = lateQty.Add(lt.Quantity), lateEvents+lt.Events
	}
	where := Violation{InstanceID: row.InstanceID, Meter: row.Meter, Hour: row.Hour}
	if !lateQty.Equal(row.LateQuantity) || lateEvents != row.LateEvents {
		b.violateAt(where, "late usage of the hour differs from the late usage carried into it",
			fmt.Sprintf("%s (%d events) carried in", lateQty, lateEvents), fmt.Sprintf("%s (%d events)", row.LateQuantity, row.LateEvents))
	}
	if cur != nil {
		l.HasSDR, l.PushedUsage, l.MeteringSN, l.Revision = true, cur.UsageValue, cur.MeteringSN, cur.Revision
		l.State, l.LastCode, l.Attempts, l.Due, l.AcceptedAt = string(cur.State), cur.LastCode, cur.Attempts, cur.Due, cur.AcceptedAt
		l.Amount = cur.Amount
		l.Recomputed, l.Repriced = pr.amount, pr.ok
		l.AmountMismatch = pr.ok && !pr.amount.Equal(cur.Amount)
		if !cur.UsageValue.Equal(row.UsageValue) {
			b.violateAt(where, "SDR usage_value differs from the closed hour's", row.UsageValue.String(),
				fmt.Sprintf("%s (%s)", cur.UsageValue, cur.MeteringSN))
		}
	} else {
		l.State = StateNone
		if row.UsageValue.Sign() != 0 {
			l.State = StateMissing
			b.violateAt(where, "closed hour with usage has no SDR", "an SDR with usage_value "+row.UsageValue.String(), "none")
		}
	}
	b.checkRow(a, row, where)
	if l.AmountMismatch {
		b.r.AmountMismatches = append(b.r.AmountMismatches, l)
	}
	b.r.LineCount++
	b.r.States[l.State]++

	t := a.total(row.SKU, l.Currency)
	t.Events += row.Events + row.LateEvents
	t.Quantity = t.Quantity.Add(row.Quantity).Add(row.LateQuantity)
	a.check.Hours++
	if a.check.Additive {
		a.check.Scaled = a.check.Scaled.Add(row.Quantity.Add(row.LateQuantity).Mul(row.UnitScale))
	} else {
		a.check.Scaled = a.check.Scaled.Add(row.Quantity.Mul(row.UnitScale).Round(4))
	}
	if cur != nil {
		b.account(a, cur, row.SKU, l.Currency)
	}
	return b.emit(&l)
}

// checkRow checks one row's own arithmetic: the carry of additive meters (DESIGN.md §4 step 5), the rounding of
// the others.
func (b *builder) checkRow(a *account, row *aggregate.Row, where Violation) {
	if !meter.Aggregation(row.Aggregation).Additive() {
		want := row.Quantity.Mul(row.UnitScale).Round(4)
		if !want.Equal(row.UsageValue) {
			b.violateAt(where, "usage_value is not round(quantity x unit_scale, 4)", want.String(), row.UsageValue.String())
		}
		return
	}
	lhs := row.CarryIn.Add(row.Quantity.Add(row.LateQuantity).Mul(row.UnitScale))
	if rhs := row.UsageValue.Add(row.CarryOut); !lhs.Equal(rhs) {
		b.violateAt(where, "carry_in + (quantity + late) x unit_scale differs from usage_value + carry_out", lhs.String(), rhs.String())
	}
	if !row.UsageValue.Equal(row.UsageValue.Truncate(4)) {
		b.violateAt(where, "usage_value has more than 4 decimals", row.UsageValue.Truncate(4).String(), row.UsageValue.String())
	}
	if row.CarryOut.IsNegative() || !row.CarryOut.LessThan(decimal.New(1, -4)) {
		b.violateAt(where, "carry_out outside [0, 0.0001)", "0 <= carry_out < 0.0001", row.CarryOut.String())
	}
	if p := a.prevRow; p != nil && !row.CarryIn.Equal(p.CarryOut) {
		b.violateAt(where, "carry_in differs from the previous hour's carry_out",
			fmt.Sprintf("%s (carry_out of %s)", p.CarryOut, p.Hour.Format(time.RFC3339)), row.CarryIn.String())
	}
	a.prevRow = row
}

// account adds the hour's current SDR to the instance's totals and to the terms of its invariant.
func (b *builder) account(a *account, s *report.SDR, sku, currency string) {
	t := a.total(sku, currency)
	t.PushedUsage = t.PushedUsage.Add(s.UsageValue)
	ct := b.currency(s.Currency)
	ct.SDRs++
	u := s.UsageValue
	switch s.State {
	case report.Accepted, report.Billed:
		a.check.Accepted = a.check.Accepted.Add(u)
		t.AcceptedUsage = t.AcceptedUsage.Add(u)
		t.ExpectedAmount = t.ExpectedAmount.Add(s.Amount)
		ct.AcceptedAmount = ct.AcceptedAmount.Add(s.Amount)
		ct.ExpectedAmount = ct.ExpectedAmount.Add(s.Amount)
	case report.Rejected, report.AsyncRejected:
		a.check.Rejected = a.check.Rejected.Add(u)
		ct.RejectedAmount = ct.RejectedAmount.Add(s.Amount)
	case report.Expired:
		a.check.Expired = a.check.Expired.Add(u)
		ct.RejectedAmount = ct.RejectedAmount.Add(s.Amount)
	default: // PENDING, SENT, HELD
		if s.State == report.Held {
			a.held++
		}
		a.check.Pending = a.check.Pending.Add(u)
		t.ExpectedAmount = t.ExpectedAmount.Add(s.Amount)
		ct.PendingAmount = ct.PendingAmount.Add(s.Amount)
		ct.ExpectedAmount = ct.ExpectedAmount.Add(s.Amount)
	}
}

func (a *account) total(sku, currency string) *InstanceTotal {
	t, ok := a.totals[currency]
	if !ok {
		t = &InstanceTotal{InstanceID: a.in.ID, Meter: a.meter, SKU: sku, Currency: currency}
		a.totals[currency] = t
	}
	return t
}

func (b *builder) currency(c string) *CurrencyTotal {
	t, ok := b.currencies[c]
	if !ok {
		t = &CurrencyTotal{Currency: c}
		b.currencies[c] = t
	}
	return t
}

// sections files an SDR (any revision) in the rejected and missed-deadline sections.
func (b *builder) sections(s *report.SDR) {
	if excluded(s.State) {
		b.r.Rejected = append(b.r.Rejected, RejectedRecord{MeteringSN: s.MeteringSN, InstanceID: s.InstanceID, Hour: s.Hour,
			Revision: s.Revision, State: string(s.State), Code: s.LastCode, Reason: s.Reason, UsageValue: s.UsageValue,
			Amount: s.Amount, Currency: s.Currency, Attempts: s.Attempts})
	}
	m := MissedDeadline{MeteringSN: s.MeteringSN, InstanceID: s.InstanceID, Hour: s.Hour, State: string(s.State), Due: s.Due,
		AcceptedAt: s.AcceptedAt, Attempts: s.Attempts}
	switch {
	case !s.AcceptedAt.IsZero():
		if !s.AcceptedAt.After(s.Due) {
			return
		}
		m.Late = s.AcceptedAt.Sub(s.Due)
	case (s.State == report.Pending || s.State == report.Sent || s.State == report.Held) && b.opts.Now.After(s.Due):
		m.Late = b.opts.Now.Sub(s.Due)
	default:
		return
	}
	b.missed = append(b.missed, m)
}

// chart adds the hour's current SDR to the hourly chart.
func (b *builder) chart(s *report.SDR) {
	h := s.Hour.UnixMilli()
	p, ok := b.hours[h]
	if !ok {
		p = &HourPoint{Hour: s.Hour}
		b.hours[h] = p
	}
	p.SDRs++
	end := s.Hour.Add(time.Hour)
	p.Deadline = max(p.Deadline, s.Due.Sub(end))
	switch {
	case !s.AcceptedAt.IsZero():
		if s.AcceptedAt.After(s.Due) {
			p.LateAccepted = p.LateAccepted.Add(s.UsageValue)
		} else {
			p.OnTime = p.OnTime.Add(s.UsageValue)
		}
		p.SlowestAccepted = max(p.SlowestAccepted, s.AcceptedAt.Sub(end))
	case excluded(s.State):
		p.Refused = p.Refused.Add(s.UsageValue)
	default:
		p.Waiting = p.Waiting.Add(s.UsageValue)
		p.Waited = max(p.Waited, b.opts.Now.Sub(end))
	}
}

// invariant checks DESIGN.md §4's equation for an additive instance over the window.
func (b *builder) invariant(ctx context.Context, a *account, rows []aggregate.Row, releases []aggregate.WriteOff) error {
	c := &a.check
	if !c.Additive {
		c.Holds = len(b.r.Invariant.Violations) == a.violationsBefore
		c.Note = "not additive: each hour recomputed as round(quantity x unit_scale, 4)"
		b.r.Invariant.Checks = append(b.r.Invariant.Checks, *c)
		return nil
	}
	for _, w := range releases {
		c.WrittenOff = c.WrittenOff.Add(w.Usage)
	}
	if len(rows) > 0 {
		first, last := rows[0], rows[len(rows)-1]
		c.OpeningCarry, c.ClosingCarry = first.CarryIn, last.CarryOut
		for _, w := range releases {
			if !w.OriginHour.Before(last.Hour) {
				c.ClosingCarry = decimal.Zero // the remainder at release is written off, not carried
			}
		}
	} else if len(releases) > 0 {
		// Released in an hour closed before the window, its remainder written off by a close inside it: the
		// opening carry is what that hour carried out.
		w := releases[0]
		prev, err := b.src.UsageRows(ctx, aggregate.UsageQuery{InstanceID: a.in.ID, From: w.OriginHour, To: w.OriginHour.Add(time.Hour)})
		if err != nil {
			return fmt.Errorf("usage row of %s at %s: %w", a.in.ID, w.OriginHour.Format(time.RFC3339), err)
		}
		if len(prev) > 0 {
			c.OpeningCarry = prev[0].CarryOut
		}
	}
	if a.held > 0 {
		c.Note = fmt.Sprintf("%d HELD SDRs (above KooGallery's per-record limit, not sent) counted as pending", a.held)
	}
	c.Holds = c.Left().Equal(c.Right())
	if !c.Holds {
		b.violate(Violation{InstanceID: a.in.ID, Meter: a.meter,
			What: "opening carry + scaled usage differs from accepted + pending + rejected + expired + written off + closing carry",
			Want: c.Left().String(),
			Got: fmt.Sprintf("%s (accepted %s + pending %s + rejected %s + expired %s + written off %s + closing carry %s)",
				c.Right(), c.Accepted, c.Pending, c.Rejected, c.Expired, c.WrittenOff, c.ClosingCarry)})
	}
	c.Holds = len(b.r.Invariant.Violations) == a.violationsBefore
	b.r.Invariant.Checks = append(b.r.Invariant.Checks, *c)
	return nil
}

func (b *builder) violate(v Violation) {
	b.r.Invariant.Violations = append(b.r.Invariant.Violations, v)
}

func (b *builder) violateAt(where Violation, what, want, got string) {
	where.What, where.Want, where.Got = what, want, got
	b.violate(where)
}

// flushAccount moves an instance's totals into the report and the SKU totals.
func (b *builder) flushAccount(a *account) {
	curs := make([]string, 0, len(a.totals))
	for c := range a.totals {
		curs = append(curs, c)
	}
	sort.Strings(curs)
	for _, c := range curs {
		t := a.totals[c]
		b.r.Totals.ByInstance = append(b.r.Totals.ByInstance, *t)
		k := skuKey{t.SKU, t.Currency}
		st, ok := b.skus[k]
		if !ok {
			st = &SKUTotal{SKU: t.SKU, Meter: t.Meter, Currency: t.Currency}
			b.skus[k] = st
			b.skuInstances[k] = map[string]bool{}
		}
		if !b.skuInstances[k][t.InstanceID] {
			b.skuInstances[k][t.InstanceID] = true
			st.Instances++
		}
		st.Events += t.Events
		st.Quantity = st.Quantity.Add(t.Quantity)
		st.PushedUsage = st.PushedUsage.Add(t.PushedUsage)
		st.AcceptedUsage = st.AcceptedUsage.Add(t.AcceptedUsage)
		st.ExpectedAmount = st.ExpectedAmount.Add(t.ExpectedAmount)
	}
}

func (b *builder) finishTotals() {
	for _, t := range b.skus {
		b.r.Totals.BySKU = append(b.r.Totals.BySKU, *t)
	}
	sort.Slice(b.r.Totals.BySKU, func(i, j int) bool {
		x, y := b.r.Totals.BySKU[i], b.r.Totals.BySKU[j]
		return x.SKU < y.SKU || x.SKU == y.SKU && x.Currency < y.Currency
	})
	for _, t := range b.currencies {
		b.r.Totals.ByCurrency = append(b.r.Totals.ByCurrency, *t)
	}
	sort.Slice(b.r.Totals.ByCurrency, func(i, j int) bool { return b.r.Totals.ByCurrency[i].Currency < b.r.Totals.ByCurrency[j].Currency })
	b.skuInstances = nil
}

func (b *builder) finishHours() {
	for _, p := range b.hours {
		b.r.Hourly = append(b.r.Hourly, *p)
	}
	sort.Slice(b.r.Hourly, func(i, j int) bool { return b.r.Hourly[i].Hour.Before(b.r.Hourly[j].Hour) })
}

// finishMissed orders the missed deadlines, latest first, and adds when each was first sent.
func (b *builder) finishMissed(ctx context.Context) error {
	sort.SliceStable(b.missed, func(i, j int) bool {
		if b.missed[i].Late != b.missed[j].Late {
			return b.missed[i].Late > b.missed[j].Late
		}
		return b.missed[i].MeteringSN < b.missed[j].MeteringSN
	})
	const chunk = 2000
	for start := 0; start < len(b.missed); start += chunk {
		part := b.missed[start:min(start+chunk, len(b.missed))]
		sns := make([]string, len(part))
		for i, m := range part {
			sns[i] = m.MeteringSN
		}
		atts, err := b.src.Attempts(ctx, sns)
		if err != nil {
			return fmt.Errorf("attempts of late SDRs: %w", err)
		}
		for i := range part {
			if as := atts[part[i].MeteringSN]; len(as) > 0 {
				part[i].FirstAttempt = as[0].At
			}
		}
	}
	b.r.MissedDeadline = b.missed
	return nil
}
