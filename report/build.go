package report

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report/koogallery"
)

// buildBatch bounds how many closed rows one Build pass reads at a time.
const buildBatch = 5000

// BuildConfig configures the building of SDRs from closed hours.
type BuildConfig struct {
	Ledger     Ledger
	Instances  aggregate.Instances
	Catalog    *pricing.Catalog
	CloseDelay time.Duration // record_time = H+1h+CloseDelay
	Deadline   time.Duration // due = H+1h+Deadline
	ValueAs    koogallery.ValueAs
}

// Builder turns closed instance-hours into SDRs.
type Builder struct{ cfg BuildConfig }

// NewBuilder returns a Builder.
func NewBuilder(cfg BuildConfig) *Builder { return &Builder{cfg: cfg} }

// Build creates the SDR (revision 0) of every closed instance-hour with usage that has none yet, and returns how
// many it built. Everything in an SDR derives from the closed row, so building again after a crash gives the
// same bytes.
func (b *Builder) Build(ctx context.Context, epoch int64, now time.Time) (int, error) {
	built := 0
	var afterHour time.Time
	var afterInstance string
	for {
		// A keyset cursor: each batch starts after the last row of the previous one instead of scanning the hour
		// again.
		rows, err := b.cfg.Ledger.UnbuiltRows(ctx, afterHour, afterInstance, buildBatch)
		if err != nil || len(rows) == 0 {
			return built, err
		}
		last := rows[len(rows)-1]
		afterHour, afterInstance = last.Hour, last.InstanceID
		sdrs, err := b.fromRows(ctx, rows)
		if err != nil {
			return built, err
		}
		if err := b.cfg.Ledger.InsertSDRs(ctx, epoch, sdrs); err != nil {
			return built, fmt.Errorf("insert SDRs: %w", err)
		}
		built += len(sdrs)
	}
}

// Preview returns the SDRs Build would create now, without creating them.
func (b *Builder) Preview(ctx context.Context) ([]SDR, error) {
	rows, err := b.cfg.Ledger.UnbuiltRows(ctx, time.Time{}, "", 100000)
	if err != nil {
		return nil, err
	}
	return b.fromRows(ctx, rows)
}

// fromRows builds the SDRs of closed rows (ordered by hour). Step cumulative usage is read from the ledger once
// per (instance, period) and carried forward through the rows.
func (b *Builder) fromRows(ctx context.Context, rows []aggregate.Row) ([]SDR, error) {
	insts, err := b.instances(ctx)
	if err != nil {
		return nil, err
	}
	cum := map[string]decimal.Decimal{}
	out := make([]SDR, 0, len(rows))
	for _, row := range rows {
		sdr, err := b.build(ctx, row, insts[row.InstanceID], cum)
		if err != nil {
			return nil, err
		}
		out = append(out, sdr)
	}
	return out, nil
}

func (b *Builder) instances(ctx context.Context) (map[string]instance.Instance, error) {
	all, err := b.cfg.Instances.ListInstances(ctx, instance.Filter{})
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	out := make(map[string]instance.Instance, len(all))
	for _, in := range all {
		out[in.ID] = in
	}
	return out, nil
}

func (b *Builder) build(ctx context.Context, row aggregate.Row, in instance.Instance, cum map[string]decimal.Decimal) (SDR, error) {
	// KooGallery's time layout has whole seconds. Begin is rounded up and end down, so a mid-second start or
	// release keeps the record inside the instance's life (011 otherwise).
	begin, end := row.Begin.Truncate(time.Second), row.End.Truncate(time.Second)
	if begin.Before(row.Begin) {
		begin = begin.Add(time.Second)
	}
	sdr := SDR{InstanceID: row.InstanceID, Hour: row.Hour, MeteringSN: MeteringSN(row.InstanceID, row.Hour, 0),
		Meter: row.Meter, SKU: row.SKU, RecordTime: row.Hour.Add(time.Hour + b.cfg.CloseDelay), Begin: begin,
		End: end, UsageValue: row.UsageValue, RelatePkgInstance: in.RelatePkgInstance, State: Pending,
		Due: row.Hour.Add(time.Hour + b.cfg.Deadline)}
	plan, err := b.cfg.Catalog.Plan(row.SKU, row.Hour)
	if err != nil {
		return sdr, fmt.Errorf("price %s %s: %w", row.InstanceID, row.Hour.Format(time.RFC3339), err)
	}
	sdr.Currency = plan.Currency
	c := decimal.Zero
	if plan.Mode == pricing.ModeStep {
		start, _ := plan.Period(row.Hour)
		key := row.InstanceID + "|" + start.Format(time.RFC3339)
		var ok bool
		if c, ok = cum[key]; !ok {
			if c, err = b.cfg.Ledger.PeriodUsage(ctx, row.InstanceID, start, row.Hour); err != nil {
				return sdr, err
			}
		}
		cum[key] = c.Add(row.UsageValue)
	}
	quote, err := plan.Price(row.UsageValue, c)
	if err != nil {
		return sdr, fmt.Errorf("price %s %s: %w", row.InstanceID, row.Hour.Format(time.RFC3339), err)
	}
	sdr.Amount = quote.Amount
	if row.UsageValue.GreaterThan(decimal.RequireFromString(koogallery.MaxUsageValue)) {
		// KooGallery takes at most 99,999,999.9999 per record and one instance-hour has one record: it cannot be
		// split, so it is held and alerted rather than truncated.
		sdr.State, sdr.Reason = Held, "usage_value above KooGallery's 99,999,999.9999 per record"
		return sdr, nil
	}
	body, err := koogallery.EncodeRecord(koogallery.Record{InstanceID: sdr.InstanceID, MeteringSN: sdr.MeteringSN,
		RecordTime: sdr.RecordTime, BeginTime: sdr.Begin, EndTime: sdr.End, UsageValue: sdr.UsageValue,
		RelatePkgInstance: sdr.RelatePkgInstance}, b.cfg.ValueAs)
	if err != nil {
		sdr.State, sdr.Reason = Held, "cannot encode: "+err.Error()
		return sdr, nil
	}
	sdr.Body = body
	return sdr, nil
}
