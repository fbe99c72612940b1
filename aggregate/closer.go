package aggregate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

// UnmatchedHorizon is how long unmatched usage is held for an instance to appear: KooGallery refuses usage
// older than 21 days, so after that it can never be billed and is written off.
const UnmatchedHorizon = 21 * 24 * time.Hour

// usageDecimals is KooGallery's precision of usage_value.
const usageDecimals = 4

// LatePolicy is what happens to late usage of additive meters.
type LatePolicy string

// Late policies (schedule.late_policy).
const (
	LateCarry LatePolicy = "carry"
	LateDrop  LatePolicy = "drop"
)

// Watermark tells up to which time every acknowledged event is stored. The embedded store stores before it
// acknowledges, so its watermark is now; with Kafka it is the oldest position of the collectors.
type Watermark interface {
	Watermark(ctx context.Context, now time.Time) (time.Time, error)
}

// CloserConfig configures a Closer.
type CloserConfig struct {
	Store      Store
	Instances  Instances
	Meters     *meter.Set
	Catalog    *pricing.Catalog
	Watermark  Watermark
	LatePolicy LatePolicy
	// CloseDelay: hour H closes at H+1h+CloseDelay once the watermark has passed that time.
	CloseDelay time.Duration
	// ForceAfter: at H+1h+ForceAfter (deadline minus the push budget) H closes even if the watermark lags.
	ForceAfter time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
	Metrics    *Metrics
}

// Closer closes hours.
type Closer struct {
	cfg CloserConfig
}

// NewCloser checks cfg and returns a Closer.
func NewCloser(cfg CloserConfig) (*Closer, error) {
	var errs []error
	if cfg.Store == nil || cfg.Instances == nil || cfg.Meters == nil || cfg.Catalog == nil || cfg.Watermark == nil {
		errs = append(errs, errors.New("closer: store, instances, meters, catalog and watermark are required"))
	}
	if cfg.LatePolicy != LateCarry && cfg.LatePolicy != LateDrop {
		errs = append(errs, fmt.Errorf("closer: late policy %q must be carry or drop", cfg.LatePolicy))
	}
	if cfg.CloseDelay < 0 || cfg.ForceAfter < cfg.CloseDelay {
		errs = append(errs, fmt.Errorf("closer: need 0 <= close delay (%s) <= force after (%s)", cfg.CloseDelay, cfg.ForceAfter))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Closer{cfg: cfg}, nil
}

// CloseDue closes, oldest first, every hour whose close time has come: H+1h+CloseDelay with the watermark past
// it, or H+1h+ForceAfter whatever the watermark (a forced close, logged and counted). It stops at the first hour
// not yet due.
func (c *Closer) CloseDue(ctx context.Context) ([]CloseMark, error) {
	now := c.cfg.Now().UTC()
	next, ok, err := c.nextHour(ctx, now)
	if err != nil || !ok {
		return nil, err
	}
	var done []CloseMark
	for {
		due := next.Add(time.Hour + c.cfg.CloseDelay)
		if now.Before(due) {
			return done, nil
		}
		wm, err := c.cfg.Watermark.Watermark(ctx, now)
		if err != nil {
			return done, fmt.Errorf("read watermark: %w", err)
		}
		forced := false
		if wm.Before(due) {
			if now.Before(next.Add(time.Hour + c.cfg.ForceAfter)) {
				return done, nil // the watermark may still catch up before the forced close
			}
			forced = true
			c.cfg.Logger.Warn("forced close: watermark behind", "hour", next, "watermark", wm)
		}
		mark, err := c.close(ctx, next, forced)
		if err != nil {
			return done, err
		}
		done = append(done, mark)
		next = next.Add(time.Hour)
	}
}

// nextHour is the hour after the last closed one or, before the first close, the hour of the earliest event.
func (c *Closer) nextHour(ctx context.Context, now time.Time) (time.Time, bool, error) {
	last, ok, err := c.cfg.Store.LastClose(ctx)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read last close: %w", err)
	}
	if ok {
		return last.Hour.Add(time.Hour), true, nil
	}
	seq, err := c.cfg.Store.LastSeq(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	first, ok, err := c.cfg.Store.EarliestEventTime(ctx, seq)
	if err != nil || !ok {
		return time.Time{}, false, err
	}
	// Never start beyond the 21-day horizon: older usage can no longer be billed.
	oldest := now.Add(-UnmatchedHorizon).Truncate(time.Hour)
	h := first.Truncate(time.Hour)
	if h.Before(oldest) {
		h = oldest
	}
	return h, true, nil
}

// Close closes hour (its start, UTC, on the hour). Closing a closed hour returns its record unchanged; hours close
// in order, so the previous hour must be closed (unless no hour is yet).
func (c *Closer) Close(ctx context.Context, hour time.Time) (CloseMark, error) {
	return c.close(ctx, hour, false)
}

func (c *Closer) close(ctx context.Context, hour time.Time, forced bool) (CloseMark, error) {
	hour = hour.UTC()
	if !hour.Equal(hour.Truncate(time.Hour)) {
		return CloseMark{}, fmt.Errorf("close %s: not the start of an hour", hour.Format(time.RFC3339Nano))
	}
	if mark, ok, err := c.cfg.Store.GetClose(ctx, hour); err != nil || ok {
		return mark, err
	}
	now := c.cfg.Now().UTC()
	if now.Before(hour.Add(time.Hour)) {
		return CloseMark{}, fmt.Errorf("close %s: the hour has not ended", hour.Format(time.RFC3339))
	}
	last, haveLast, err := c.cfg.Store.LastClose(ctx)
	if err != nil {
		return CloseMark{}, fmt.Errorf("close %s: read last close: %w", hour.Format(time.RFC3339), err)
	}
	if haveLast && !last.Hour.Add(time.Hour).Equal(hour) {
		return CloseMark{}, fmt.Errorf("close %s: hours close in order, and the next hour to close is %s",
			hour.Format(time.RFC3339), last.Hour.Add(time.Hour).Format(time.RFC3339))
	}
	snapshot, err := c.cfg.Store.LastSeq(ctx)
	if err != nil {
		return CloseMark{}, fmt.Errorf("close %s: snapshot: %w", hour.Format(time.RFC3339), err)
	}
	ch := &ClosedHour{Hour: hour, Snapshot: snapshot, ClosedAt: now, Forced: forced}
	if haveLast {
		ch.PrevSnapshot = last.Snapshot
	}
	if err := c.compute(ctx, ch); err != nil {
		return CloseMark{}, fmt.Errorf("close %s: %w", hour.Format(time.RFC3339), err)
	}
	if err := c.cfg.Store.CommitClose(ctx, ch); err != nil {
		return CloseMark{}, fmt.Errorf("close %s: commit: %w", hour.Format(time.RFC3339), err)
	}
	c.cfg.Metrics.observe(ch)
	c.cfg.Logger.Info("hour closed", "hour", hour, "snapshot", snapshot, "rows", len(ch.Rows), "late", len(ch.Late),
		"unmatched", len(ch.Unmatched), "forced", forced)
	return CloseMark{Hour: hour, Snapshot: snapshot, PrevSnapshot: ch.PrevSnapshot, ClosedAt: now, Forced: forced, Rows: len(ch.Rows)}, nil
}

// piece is part of a total assigned to one instance, or to none (unmatched).
type piece struct {
	inst     *instance.Instance
	from, to time.Time
	total    Total
}

// closeRun holds the state of one close while it is computed.
type closeRun struct {
	*Closer
	ch        *ClosedHour
	bySubject map[[2]string][]*instance.Instance // (subject, meter) -> instances
	acc       map[string]*Row                    // instance id -> row of the hour being closed
	insts     map[string]*instance.Instance
}

func (c *Closer) compute(ctx context.Context, ch *ClosedHour) error {
	r, err := c.newRun(ctx, ch)
	if err != nil {
		return err
	}
	hour := ch.Hour
	for _, kind := range []Kind{KindSum, KindMax, KindDistinct} {
		meters := c.metersOf(kind)
		if len(meters) == 0 {
			continue
		}
		if err := r.onTime(ctx, kind, meters); err != nil {
			return err
		}
		// Late usage: first seen since the previous close, for hours already closed.
		if ch.PrevSnapshot < ch.Snapshot {
			lq := TotalsQuery{Kind: kind, Meters: meters, From: time.Unix(0, 0).UTC(), To: hour, SeqAfter: ch.PrevSnapshot, SeqUpTo: ch.Snapshot}
			late, err := c.cfg.Store.Totals(ctx, lq)
			if err != nil {
				return fmt.Errorf("late totals: %w", err)
			}
			for _, t := range late {
				oq := lq
				oq.From, oq.To = t.Hour, t.Hour.Add(time.Hour)
				pieces, err := r.split(ctx, oq, t)
				if err != nil {
					return err
				}
				for _, p := range pieces {
					if err := r.late(kind, p, oq); err != nil {
						return err
					}
				}
			}
		}
	}
	if err := r.attachHeld(ctx); err != nil {
		return err
	}
	return r.finish(ctx)
}

// onTime assigns the hour's events stored up to the snapshot to their instances, holding the rest as unmatched.
func (r *closeRun) onTime(ctx context.Context, kind Kind, meters []string) error {
	hour := r.ch.Hour
	q := TotalsQuery{Kind: kind, Meters: meters, From: hour, To: hour.Add(time.Hour), SeqUpTo: r.ch.Snapshot}
	totals, err := r.cfg.Store.Totals(ctx, q)
	if err != nil {
		return fmt.Errorf("on-time totals: %w", err)
	}
	for _, t := range totals {
		pieces, err := r.split(ctx, q, t)
		if err != nil {
			return err
		}
		for _, p := range pieces {
			if p.inst == nil {
				r.holdUnmatched(p, q)
				continue
			}
			row, err := r.row(p.inst)
			if err != nil {
				return err
			}
			row.Events += p.total.Events
			row.Quantity = combine(kind, row.Quantity, p.total.Value)
		}
	}
	return nil
}

// newRun prepares the state of a close (or a preview) of ch.Hour.
func (c *Closer) newRun(ctx context.Context, ch *ClosedHour) (*closeRun, error) {
	all, err := c.cfg.Instances.ListInstances(ctx, instance.Filter{})
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	r := &closeRun{Closer: c, ch: ch, bySubject: map[[2]string][]*instance.Instance{}, acc: map[string]*Row{},
		insts: map[string]*instance.Instance{}}
	for i := range all {
		in := &all[i]
		k := [2]string{in.Subject, in.Meter}
		r.bySubject[k] = append(r.bySubject[k], in)
		r.insts[in.ID] = in
	}
	return r, nil
}

// Preview returns the usage of an hour that is not closed yet, as it stands: on-time events stored so far,
// assigned to instances, usage_value = quantity x unit_scale without cut or carry (those are decided at close).
func (c *Closer) Preview(ctx context.Context, hour time.Time) ([]Row, error) {
	seq, err := c.cfg.Store.LastSeq(ctx)
	if err != nil {
		return nil, err
	}
	r, err := c.newRun(ctx, &ClosedHour{Hour: hour.UTC(), Snapshot: seq})
	if err != nil {
		return nil, err
	}
	for _, kind := range []Kind{KindSum, KindMax, KindDistinct} {
		if meters := c.metersOf(kind); len(meters) > 0 {
			if err := r.onTime(ctx, kind, meters); err != nil {
				return nil, err
			}
		}
	}
	out := make([]Row, 0, len(r.acc))
	for _, row := range r.acc {
		row.UsageValue = row.Quantity.Mul(row.UnitScale)
		out = append(out, *row)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InstanceID < out[j].InstanceID })
	return out, nil
}

func (c *Closer) metersOf(kind Kind) []string {
	var out []string
	for _, m := range c.cfg.Meters.All() {
		if kindOf(m.Aggregation) == kind {
			out = append(out, m.Key)
		}
	}
	return out
}

func kindOf(a meter.Aggregation) Kind {
	switch a {
	case meter.Max:
		return KindMax
	case meter.UniqueCount:
		return KindDistinct
	default:
		return KindSum
	}
}

// combine adds two partial totals of one hour. Distinct counts of disjoint time ranges add up because each
// instance-hour takes only events of its own life; MAX takes the larger.
func combine(kind Kind, a, b decimal.Decimal) decimal.Decimal {
	if kind == KindMax {
		return decimal.Max(a, b)
	}
	return a.Add(b)
}

// split divides a total among the instances of its (subject, meter) whose life covers its events. When one
// instance covers the whole range (the common case) the total is taken as is; when an instance starts or is
// released inside the range, each part is totalled again by the store so that every event is matched by its own
// time.
func (r *closeRun) split(ctx context.Context, q TotalsQuery, t Total) ([]piece, error) {
	from, to := q.From, q.To
	if from.Before(t.Hour) {
		from = t.Hour
	}
	if to.After(t.Hour.Add(time.Hour)) {
		to = t.Hour.Add(time.Hour)
	}
	cands := r.bySubject[[2]string{t.Subject, t.Meter}]
	var cuts []time.Time
	var covering *instance.Instance
	for _, in := range cands {
		start, end := in.Life()
		if !start.Before(to) || (!end.IsZero() && !end.After(from)) {
			continue // no overlap
		}
		if !start.After(from) && (end.IsZero() || !end.Before(to)) {
			covering = in
			break
		}
		if start.After(from) {
			cuts = append(cuts, start)
		}
		if !end.IsZero() && end.Before(to) {
			cuts = append(cuts, end)
		}
	}
	if covering != nil {
		return []piece{{inst: covering, from: from, to: to, total: t}}, nil
	}
	if len(cuts) == 0 {
		return []piece{{from: from, to: to, total: t}}, nil
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i].Before(cuts[j]) })
	bounds := append([]time.Time{from}, cuts...)
	bounds = append(bounds, to)
	var out []piece
	for i := 0; i+1 < len(bounds); i++ {
		a, b := bounds[i], bounds[i+1]
		if !a.Before(b) {
			continue
		}
		sq := q
		sq.From, sq.To, sq.Subject, sq.Meters = a, b, t.Subject, []string{t.Meter}
		parts, err := r.cfg.Store.Totals(ctx, sq)
		if err != nil {
			return nil, fmt.Errorf("totals of %s/%s in [%s, %s): %w", t.Meter, t.Subject, a.Format(time.RFC3339), b.Format(time.RFC3339), err)
		}
		var owner *instance.Instance
		for _, in := range cands {
			if in.Contains(a) {
				owner = in
				break
			}
		}
		for _, p := range parts {
			out = append(out, piece{inst: owner, from: a, to: b, total: p})
		}
	}
	return out, nil
}

// row returns the accumulating row of an instance for the hour being closed.
func (r *closeRun) row(in *instance.Instance) (*Row, error) {
	if row, ok := r.acc[in.ID]; ok {
		return row, nil
	}
	hour := r.ch.Hour
	plan, err := r.cfg.Catalog.Plan(in.SKU, hour)
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", in.ID, err)
	}
	m, ok := r.cfg.Meters.Get(in.Meter)
	if !ok {
		return nil, fmt.Errorf("instance %s: meter %q is not configured", in.ID, in.Meter)
	}
	start, end := in.Life()
	row := &Row{InstanceID: in.ID, Hour: hour, Meter: in.Meter, Aggregation: string(m.Aggregation), SKU: in.SKU,
		Begin: maxTime(hour, start), End: hour.Add(time.Hour), UnitScale: plan.UnitScale}
	if !end.IsZero() && end.Before(row.End) {
		row.End = end
	}
	r.acc[in.ID] = row
	return row, nil
}

// alive reports whether the instance's life overlaps the hour being closed (it can take carried usage).
func (r *closeRun) alive(in *instance.Instance) bool {
	start, end := in.Life()
	h := r.ch.Hour
	return start.Before(h.Add(time.Hour)) && (end.IsZero() || end.After(h))
}

func (r *closeRun) holdUnmatched(p piece, q TotalsQuery) {
	r.ch.Unmatched = append(r.ch.Unmatched, Unmatched{Meter: p.total.Meter, Subject: p.total.Subject, Hour: p.total.Hour,
		From: p.from, To: p.to, SeqAfter: q.SeqAfter, SeqUpTo: q.SeqUpTo, Events: p.total.Events, Quantity: p.total.Value,
		State: UnmatchedHeld, FoundAt: r.ch.Hour, Reason: "no instance of this subject and meter at the event time"})
}

// late applies the late policy to late usage of one origin hour.
func (r *closeRun) late(kind Kind, p piece, q TotalsQuery) error {
	l := Late{CloseHour: r.ch.Hour, Meter: p.total.Meter, Subject: p.total.Subject, OriginHour: p.total.Hour,
		Events: p.total.Events, Quantity: p.total.Value}
	if p.inst == nil {
		l.Action, l.Reason = LateUnmatched, "no instance at the origin time: held as unmatched usage"
		r.ch.Late = append(r.ch.Late, l)
		r.holdUnmatched(p, q)
		return nil
	}
	l.InstanceID = p.inst.ID
	return r.carryOrDrop(kind, p.inst, l)
}

// carryOrDrop carries late (or newly attached) usage into the instance's hour being closed, or writes it off.
func (r *closeRun) carryOrDrop(kind Kind, in *instance.Instance, l Late) error {
	switch {
	case kind != KindSum:
		l.Action, l.Reason = LateDropped, "late usage of a "+string(kind)+" meter cannot be carried: its hour is final"
	case r.cfg.LatePolicy == LateDrop:
		l.Action, l.Reason = LateDropped, "late_policy drop"
	case !r.alive(in):
		l.Action, l.Reason = LateDropped, "the instance has no open hour left (released)"
	default:
		row, err := r.row(in)
		if err != nil {
			return err
		}
		row.LateEvents += l.Events
		row.LateQuantity = row.LateQuantity.Add(l.Quantity)
		l.Action, l.Reason = LateCarried, "carried into "+r.ch.Hour.Format(time.RFC3339)
		r.ch.Late = append(r.ch.Late, l)
		return nil
	}
	r.ch.Late = append(r.ch.Late, l)
	if kind == KindSum {
		plan, err := r.cfg.Catalog.Plan(in.SKU, l.OriginHour)
		if err != nil {
			return fmt.Errorf("instance %s: %w", in.ID, err)
		}
		wk := WriteOffLateDropped
		if r.cfg.LatePolicy == LateCarry {
			wk = WriteOffLateNoOpenHour
		}
		r.ch.WriteOffs = append(r.ch.WriteOffs, WriteOff{InstanceID: in.ID, Meter: in.Meter, CloseHour: r.ch.Hour,
			OriginHour: l.OriginHour, Usage: l.Quantity.Mul(plan.UnitScale), Kind: wk, Reason: l.Reason})
	}
	return nil
}

// attachHeld gives held unmatched usage to instances registered since, when their life covers the events' time,
// and writes off what has waited beyond the 21-day horizon.
func (r *closeRun) attachHeld(ctx context.Context) error {
	held, err := r.cfg.Store.HeldUnmatched(ctx)
	if err != nil {
		return fmt.Errorf("held unmatched usage: %w", err)
	}
	expiry := r.ch.Hour.Add(time.Hour - UnmatchedHorizon)
	for _, u := range held {
		if u.Hour.Before(expiry) {
			u.State, u.Resolved = UnmatchedWrittenOff, r.ch.Hour
			u.Reason = "unmatched for 21 days: KooGallery no longer accepts usage this old"
			r.ch.Unmatched = append(r.ch.Unmatched, u)
			continue
		}
		m, ok := r.cfg.Meters.Get(u.Meter)
		if !ok {
			continue // the meter was removed from the config: keep it held, visible, until it expires
		}
		kind := kindOf(m.Aggregation)
		q := TotalsQuery{Kind: kind, Meters: []string{u.Meter}, From: u.From, To: u.To, SeqAfter: u.SeqAfter, SeqUpTo: u.SeqUpTo}
		t := Total{Meter: u.Meter, Subject: u.Subject, Hour: u.Hour, Events: u.Events, Value: u.Quantity}
		pieces, err := r.split(ctx, q, t)
		if err != nil {
			return err
		}
		if len(pieces) == 1 && pieces[0].inst == nil {
			continue // still nobody's
		}
		state := UnmatchedAttached
		for _, p := range pieces {
			if p.inst == nil {
				state = UnmatchedSplit
				r.holdUnmatched(p, q)
				continue
			}
			l := Late{CloseHour: r.ch.Hour, Meter: u.Meter, Subject: u.Subject, OriginHour: u.Hour, InstanceID: p.inst.ID,
				Events: p.total.Events, Quantity: p.total.Value}
			if err := r.carryOrDrop(kind, p.inst, l); err != nil {
				return err
			}
			u.InstanceID = p.inst.ID
		}
		u.State, u.Resolved = state, r.ch.Hour
		u.Reason = "attached to an instance registered later"
		r.ch.Unmatched = append(r.ch.Unmatched, u)
	}
	return nil
}

// finish computes usage_value and carries for every instance with usage, carry or a release in this hour.
func (r *closeRun) finish(ctx context.Context) error {
	hour := r.ch.Hour
	carries, err := r.cfg.Store.Carries(ctx, hour)
	if err != nil {
		return fmt.Errorf("read carries: %w", err)
	}
	// An instance with a carry but no usage this hour needs a row only when it is released now: otherwise the carry
	// simply waits in its last row (a carry alone is < 0.0001 and cannot make an SDR).
	for id, cr := range carries {
		in, ok := r.insts[id]
		if !ok || cr.ReleaseWrittenOff || cr.CarryOut.IsZero() {
			continue
		}
		if _, has := r.acc[id]; has {
			continue
		}
		_, end := in.Life()
		if end.IsZero() || end.After(hour.Add(time.Hour)) {
			continue
		}
		if r.alive(in) {
			if _, err := r.row(in); err != nil {
				return err
			}
			continue
		}
		// Released in an hour already closed (a release recorded late): write the remainder off now.
		r.ch.WriteOffs = append(r.ch.WriteOffs, WriteOff{InstanceID: id, Meter: in.Meter, CloseHour: hour, OriginHour: cr.Hour,
			Usage: cr.CarryOut, Kind: WriteOffReleaseRemainder, Reason: "remainder below 0.0001 at release"})
	}
	ids := make([]string, 0, len(r.acc))
	for id := range r.acc {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		row := r.acc[id]
		in := r.insts[id]
		if meter.Aggregation(row.Aggregation).Additive() {
			if cr, ok := carries[id]; ok && !cr.ReleaseWrittenOff {
				row.CarryIn = cr.CarryOut
			}
			total := row.Quantity.Add(row.LateQuantity).Mul(row.UnitScale).Add(row.CarryIn)
			row.UsageValue = total.Truncate(usageDecimals)
			row.CarryOut = total.Sub(row.UsageValue)
			if _, end := in.Life(); !end.IsZero() && !end.After(hour.Add(time.Hour)) && !row.CarryOut.IsZero() {
				r.ch.WriteOffs = append(r.ch.WriteOffs, WriteOff{InstanceID: id, Meter: in.Meter, CloseHour: hour, OriginHour: hour,
					Usage: row.CarryOut, Kind: WriteOffReleaseRemainder, Reason: "remainder below 0.0001 at release"})
			}
		} else {
			// Half-up to 4 places: decimal's Round is half away from zero, the same for these non-negative values.
			row.UsageValue = row.Quantity.Mul(row.UnitScale).Round(usageDecimals)
		}
		r.ch.Rows = append(r.ch.Rows, *row)
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
