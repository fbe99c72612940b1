package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/pricing"
)

// The fixture data. Every formula here has a SQL twin in sqlite.go and clickhouse.go; verifySetup compares a few
// stored events with what the real validator makes of the JSON written from these formulas.
const (
	eventSource = "closebench"
	eventType   = "llm_request"
	meterKey    = "tokens"
	planSKU     = "BENCH-TOKENS"
	// instancePrefix + 12 digits looks like the UUIDs KooGallery gives instances.
	instancePrefix = "00000000-0000-4000-8000-"
	subjectPrefix  = "tenant-"
	prevPrefix     = "prev-" // ids of the previous hour's events
	hourPrefix     = "evt-"  // ids of the closed hour's events
	maxUsageDigits = 4
)

var (
	benchMeter = meter.Spec{Key: meterKey, EventType: eventType, Aggregation: "SUM", ValueProperty: "$." + meterKey}
	// unit_scale 0.001 (usage per 1,000 tokens) makes every hour cut usage_value to 4 places and carry the rest.
	benchPlan = pricing.PlanSpec{SKU: planSKU, Meter: meterKey, Currency: "CNY", UnitScale: "0.001", Mode: "fixed", UnitPrice: "0.5"}
)

// batch is a run of events spread evenly over one hour and over the instances' subjects: event i has id
// prefix+%012d(i), subject tenant-(i mod M), time start + floor(i*3600/count) s, seq seq0+i+1 and value
// valueText(i).
type batch struct {
	prefix string
	count  int
	start  time.Time
	seq0   int64
}

// generator holds the benchmark's data: two batches (one event per instance in the previous hour, N in the hour),
// the duplicate copies, and the usage the close must find.
type generator struct {
	cfg         *config.Config
	validator   *ingest.Validator
	aggregation string
	hour        time.Time
	prevHour    time.Time
	started     time.Time // every instance's started_at (and its registration time)
	events      int
	instances   int
	dups        int // duplicate copies: copy j repeats hour event j*dupStep with seq dupSeq0+j+1
	dupStep     int
	dupSeq0     int64
	prev, cur   batch
	// Expected on-time usage of the hour per instance (index k of tenant-k): events, and the quantity in
	// hundredths (SUM, MAX) or units (COUNT, UNIQUE_COUNT).
	expEvents []int64
	expQty    []int64
}

func newGenerator(o options) (*generator, error) {
	agg := strings.ToUpper(o.aggregation)
	switch agg {
	case "SUM", "COUNT", "MAX", "UNIQUE_COUNT":
	default:
		return nil, fmt.Errorf("--meter-aggregation %q: want SUM, COUNT, MAX or UNIQUE_COUNT", o.aggregation)
	}
	cfg, err := benchConfig(agg)
	if err != nil {
		return nil, err
	}
	g := &generator{cfg: cfg, aggregation: agg, hour: o.hour, prevHour: o.hour.Add(-time.Hour),
		started: o.hour.Add(-7 * 24 * time.Hour), events: o.events, instances: o.instances,
		validator: ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration)}
	g.prev = batch{prefix: prevPrefix, count: o.instances, start: g.prevHour}
	g.cur = batch{prefix: hourPrefix, count: o.events, start: g.hour, seq0: int64(o.instances)}
	g.dups = min(int(math.Round(float64(o.events)*o.dupRate)), o.events)
	if g.dups > 0 {
		g.dupStep = o.events / g.dups
	}
	g.dupSeq0 = int64(o.instances) + int64(o.events)
	g.expect()
	return g, nil
}

// closeTime is when meterd closes hour h: h+1h+close_delay.
func (g *generator) closeTime(h time.Time) time.Time {
	return h.Add(time.Hour + g.cfg.Schedule.CloseDelay.Duration)
}

func eventID(prefix string, i int) string { return fmt.Sprintf("%s%012d", prefix, i) }
func instanceID(k int) string             { return fmt.Sprintf("%s%012d", instancePrefix, k) }
func subject(k int) string                { return subjectPrefix + strconv.Itoa(k) }

// valueCents is event i's value in hundredths: a decimal with two places, the last never 0 (so that the text is
// the same before and after the validator drops trailing zeros).
func valueCents(i int) int64 { return int64(i%1000)*100 + int64(i%10*10+i%9+1) }

// valueText is event i's value as sent ("123.45").
func valueText(i int) string {
	c := valueCents(i)
	return fmt.Sprintf("%d.%02d", c/100, c%100)
}

// storedText is what ingest stores for event i's meter value: the quantity, 1 for COUNT, the canonical JSON of
// the scalar for UNIQUE_COUNT (the value is sent as a JSON string).
func (g *generator) storedText(i int) string {
	switch g.aggregation {
	case "COUNT":
		return "1"
	case "UNIQUE_COUNT":
		return `"` + valueText(i) + `"`
	}
	return valueText(i)
}

func (b batch) eventTime(i int) time.Time {
	return b.start.Add(time.Duration(int64(i)*3600/int64(b.count)) * time.Second)
}

// eventJSON is event i of b as sent: compact structured-mode CloudEvents JSON, as `meterd events gen` writes it.
func (b batch) eventJSON(i, instances int) string {
	return `{"specversion":"1.0","id":"` + eventID(b.prefix, i) + `","source":"` + eventSource + `","type":"` + eventType +
		`","subject":"` + subject(i%instances) + `","time":"` + b.eventTime(i).Format(time.RFC3339) + `","data":{"` + meterKey +
		`":"` + valueText(i) + `"}}`
}

// expect computes the usage of every instance in the hour from the formulas: what a correct close must find.
func (g *generator) expect() {
	m := g.instances
	g.expEvents = make([]int64, m)
	g.expQty = make([]int64, m)
	for i := 0; i < g.events; i++ {
		k := i % m
		g.expEvents[k]++
		switch g.aggregation {
		case "SUM":
			g.expQty[k] += valueCents(i)
		case "MAX":
			g.expQty[k] = max(g.expQty[k], valueCents(i))
		case "COUNT":
			g.expQty[k]++
		}
	}
	if g.aggregation == "UNIQUE_COUNT" {
		seen := map[int64]bool{}
		for k := 0; k < m; k++ {
			clear(seen)
			for i := k; i < g.events; i += m {
				seen[valueCents(i)] = true
			}
			g.expQty[k] = int64(len(seen))
		}
	}
}

func (g *generator) quantity(k int) decimal.Decimal {
	if g.aggregation == "SUM" || g.aggregation == "MAX" {
		return decimal.New(g.expQty[k], -2)
	}
	return decimal.NewFromInt(g.expQty[k])
}

func (g *generator) total() decimal.Decimal {
	t := decimal.Zero
	for k := range g.expQty {
		t = t.Add(g.quantity(k))
	}
	return t
}

func (g *generator) totalText() string { return g.total().String() }

// isDupSource reports whether hour event i has a duplicate copy (copy j repeats event j*dupStep).
func (g *generator) isDupSource(i int) bool {
	return g.dups > 0 && i%g.dupStep == 0 && i/g.dupStep < g.dups
}

// verifySetup checks the bulk load cheaply: row counts, and a few events compared field by field with what the
// real validator makes of the same JSON. keepsDups: the store keeps duplicate copies (ClickHouse) instead of
// refusing them at insert (SQLite).
func verifySetup(ctx context.Context, fx fixture, g *generator, keepsDups bool) error {
	c, err := fx.counts(ctx)
	if err != nil {
		return err
	}
	wantEvents := int64(g.instances) + int64(g.events)
	if keepsDups {
		wantEvents += int64(g.dups)
	}
	if c.events != wantEvents || c.values != wantEvents || c.instances != int64(g.instances) {
		return fmt.Errorf("setup: stored %d events, %d meter values, %d instances; want %d, %d, %d",
			c.events, c.values, c.instances, wantEvents, wantEvents, g.instances)
	}
	type sample struct {
		b batch
		i int
	}
	samples := []sample{{g.prev, 0}, {g.prev, g.instances - 1}}
	for _, i := range []int{0, 1, g.events / 2, g.events - 1} {
		samples = append(samples, sample{g.cur, i})
	}
	if g.dups > 0 {
		samples = append(samples, sample{g.cur, (g.dups - 1) * g.dupStep})
	}
	for _, s := range samples {
		copies := 1
		if keepsDups && s.b.prefix == hourPrefix && g.isDupSource(s.i) {
			copies = 2
		}
		if err := g.checkStored(ctx, fx, s.b, s.i, copies); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	return nil
}

// checkStored compares the stored copies of event i of b with what the validator makes of its JSON.
func (g *generator) checkStored(ctx context.Context, fx fixture, b batch, i, copies int) error {
	id := eventID(b.prefix, i)
	raw := b.eventJSON(i, g.instances)
	at := b.eventTime(i).Add(time.Second)
	ev, rej := g.validator.Validate([]byte(raw), at)
	if rej != nil {
		return fmt.Errorf("event %s: the validator rejects the fixture JSON: %s", id, rej.Reason)
	}
	rows, err := fx.stored(ctx, eventSource, id)
	if err != nil {
		return err
	}
	if len(rows) != copies {
		return fmt.Errorf("event %s: %d stored copies, want %d", id, len(rows), copies)
	}
	want := storedEvent{seq: b.seq0 + int64(i) + 1, subject: ev.Subject, timeMs: ev.Time.UnixMilli(), hash: ev.Hash[:],
		raw: string(ev.Raw), value: ev.Values[0].Value}
	for n, got := range rows {
		if n == 1 {
			want.seq = g.dupSeq0 + int64(i/g.dupStep) + 1
		}
		var diffs []string
		if got.seq != want.seq {
			diffs = append(diffs, fmt.Sprintf("seq %d, want %d", got.seq, want.seq))
		}
		if got.subject != want.subject || got.timeMs != want.timeMs {
			diffs = append(diffs, fmt.Sprintf("subject/time %s/%d, want %s/%d", got.subject, got.timeMs, want.subject, want.timeMs))
		}
		if !bytes.Equal(got.hash, want.hash) {
			diffs = append(diffs, fmt.Sprintf("hash %x, want %x", got.hash, want.hash))
		}
		if got.raw != want.raw {
			diffs = append(diffs, fmt.Sprintf("raw %s, want %s", got.raw, want.raw))
		}
		if got.value != want.value || got.value != g.storedText(i) {
			diffs = append(diffs, fmt.Sprintf("value %q, want %q", got.value, want.value))
		}
		if len(diffs) > 0 {
			return fmt.Errorf("event %s (copy %d) differs from what ingest stores: %s", id, n+1, strings.Join(diffs, "; "))
		}
	}
	return nil
}

// checkInstance compares instance 0 as the store reads it with what the registry records for a new ACTIVE
// instance.
func checkInstance(ctx context.Context, st benchStore, g *generator) error {
	in, ok, err := st.GetInstance(ctx, instanceID(0))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("setup: instance %s not found", instanceID(0))
	}
	want := instance.Instance{ID: instanceID(0), Subject: subject(0), Meter: meterKey, SKU: planSKU, Status: instance.Active,
		StartedAt: g.started, UpdatedAt: g.started,
		Changes: []instance.Change{{At: g.started, Kind: instance.KindCreated, RecordedAt: g.started}}}
	if fmt.Sprint(in) != fmt.Sprint(want) {
		return fmt.Errorf("setup: instance read back as %+v, want %+v", in, want)
	}
	return nil
}

// checkClose compares the closed hour with the expected usage, row by row.
func checkClose(ctx context.Context, st benchStore, g *generator, mark aggregate.CloseMark, prevRows []aggregate.Row) error {
	wantRows := min(g.events, g.instances)
	if mark.Rows != wantRows {
		return fmt.Errorf("%d rows, want %d (one per instance with events)", mark.Rows, wantRows)
	}
	if mark.Snapshot < int64(g.instances)+int64(g.events) {
		return fmt.Errorf("snapshot %d is below the last loaded seq %d", mark.Snapshot, int64(g.instances)+int64(g.events))
	}
	if stored, ok, err := st.GetClose(ctx, g.hour); err != nil || !ok || stored.Rows != mark.Rows {
		return errors.Join(fmt.Errorf("close marker read back: found %t, %d rows", ok, stored.Rows), err)
	}
	rows, err := st.UsageRows(ctx, aggregate.UsageQuery{From: g.hour, To: g.hour.Add(time.Hour)})
	if err != nil {
		return err
	}
	if len(rows) != wantRows {
		return fmt.Errorf("%d rows read back, want %d", len(rows), wantRows)
	}
	held, err := st.HeldUnmatched(ctx)
	if err != nil {
		return err
	}
	if len(held) > 0 {
		return fmt.Errorf("%d unmatched usage records held, want none", len(held))
	}
	carry := map[string]decimal.Decimal{}
	for _, r := range prevRows {
		carry[r.InstanceID] = r.CarryOut
	}
	plan, err := g.cfg.Catalog().Plan(planSKU, g.hour)
	if err != nil {
		return err
	}
	additive := meter.Aggregation(g.aggregation).Additive()
	var events int64
	qty := decimal.Zero
	var problems []string
	for _, r := range rows {
		k, err := strconv.Atoi(strings.TrimPrefix(r.InstanceID, instancePrefix))
		if err != nil || k < 0 || k >= g.instances || r.InstanceID != instanceID(k) {
			return fmt.Errorf("row of unknown instance %q", r.InstanceID)
		}
		events += r.Events
		qty = qty.Add(r.Quantity)
		var p []string
		if r.Events != g.expEvents[k] {
			p = append(p, fmt.Sprintf("events %d, want %d", r.Events, g.expEvents[k]))
		}
		if !r.Quantity.Equal(g.quantity(k)) {
			p = append(p, fmt.Sprintf("quantity %s, want %s", r.Quantity, g.quantity(k)))
		}
		if r.LateEvents != 0 || !r.LateQuantity.IsZero() {
			p = append(p, "late usage where none was loaded")
		}
		if !r.UnitScale.Equal(plan.UnitScale) {
			p = append(p, fmt.Sprintf("unit_scale %s, want %s", r.UnitScale, plan.UnitScale))
		}
		if additive {
			total := r.Quantity.Mul(plan.UnitScale).Add(carry[r.InstanceID])
			switch {
			case !r.CarryIn.Equal(carry[r.InstanceID]):
				p = append(p, fmt.Sprintf("carry_in %s, want the previous carry_out %s", r.CarryIn, carry[r.InstanceID]))
			case !r.UsageValue.Equal(total.Truncate(maxUsageDigits)) || !r.CarryOut.Equal(total.Sub(r.UsageValue)):
				p = append(p, fmt.Sprintf("usage_value %s + carry_out %s, want %s cut to 4 places", r.UsageValue, r.CarryOut, total))
			}
		} else if !r.UsageValue.Equal(r.Quantity.Mul(plan.UnitScale).Round(maxUsageDigits)) {
			p = append(p, fmt.Sprintf("usage_value %s, want quantity x unit_scale rounded", r.UsageValue))
		}
		if len(p) > 0 && len(problems) < 5 {
			problems = append(problems, r.InstanceID+": "+strings.Join(p, ", "))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	if events != int64(g.events) || !qty.Equal(g.total()) {
		return fmt.Errorf("totals: %d events, quantity %s; loaded %d distinct events, quantity %s", events, qty, g.events, g.total())
	}
	return nil
}
