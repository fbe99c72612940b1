package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

// Source is what the report reads. Every method only reads; the SQLite store implements it.
type Source interface {
	ListInstances(ctx context.Context, f instance.Filter) ([]instance.Instance, error)
	// UsageRows returns closed instance-hours ordered by instance and hour.
	UsageRows(ctx context.Context, q aggregate.UsageQuery) ([]aggregate.Row, error)
	// ListSDRs returns SDRs ordered by hour, instance and revision.
	ListSDRs(ctx context.Context, f report.SDRFilter) ([]report.SDR, error)
	Attempts(ctx context.Context, sns []string) (map[string][]report.Attempt, error)
	// PeriodUsage sums the usage_value of an instance's SDRs with hour in [from, to), excluding REJECTED, EXPIRED
	// and ASYNC_REJECTED: the cumulative of a step plan's period before the report's window.
	PeriodUsage(ctx context.Context, instanceID string, from, to time.Time) (decimal.Decimal, error)
	ListLate(ctx context.Context, from, to time.Time) ([]aggregate.Late, error)
	ListUnmatched(ctx context.Context, from, to time.Time) ([]aggregate.Unmatched, error)
	ListWriteOffs(ctx context.Context, from, to time.Time) ([]aggregate.WriteOff, error)
}

// Options select and decorate a report.
type Options struct {
	// From and To bound the closed hours reported: [From, To).
	From, To time.Time
	// Now judges SDRs still not accepted against their due time; zero means time.Now.
	Now time.Time
	// Bill is the result of an imported bill or SDR export, shown in the report; nil for none.
	Bill *bill.Result
	// Progress, when set, is called after each instance with how many of all instances are done.
	Progress func(done, total int)
}

// Line states besides the SDR states, for closed hours without an SDR.
const (
	// StateNone: the hour's usage_value is 0 (all carried): there is nothing to send.
	StateNone = "NONE"
	// StateMissing: the hour has usage but no SDR in the ledger (an invariant violation).
	StateMissing = "MISSING"
)

// Line is one closed instance-hour.
type Line struct {
	InstanceID, Meter, SKU, Aggregation string
	Hour                                time.Time
	Events                              int64
	Quantity                            decimal.Decimal // on-time usage, meter units
	LateEvents                          int64
	LateQuantity                        decimal.Decimal // late usage of earlier hours carried into this one
	LateOrigins                         []LateOrigin
	UnitScale                           decimal.Decimal
	CarryIn, CarryOut                   decimal.Decimal
	UsageValue                          decimal.Decimal // as closed
	// HasSDR tells whether the fields below describe the hour's SDR (its highest revision).
	HasSDR      bool
	PushedUsage decimal.Decimal // the SDR's usage_value
	MeteringSN  string
	Revision    int
	State       string // an SDR state, StateNone or StateMissing
	LastCode    string
	Attempts    int
	Due         time.Time
	AcceptedAt  time.Time // zero: not accepted
	// Amount is the SDR's expected amount as stored when it was built. Recomputed is the amount the plan gives
	// now, with a step plan's cumulative taken from the ledger as it stands (REJECTED, EXPIRED and ASYNC_REJECTED
	// records excluded); AmountMismatch flags a difference (e.g. an earlier record of the period was rejected
	// after this one was priced).
	Amount         decimal.Decimal
	Recomputed     decimal.Decimal
	Repriced       bool // false when no plan prices the SKU at the hour any more
	AmountMismatch bool
	Currency       string
}

// LateOrigin is late usage carried into a line, by the hour it belongs to.
type LateOrigin struct {
	Hour     time.Time
	Events   int64
	Quantity decimal.Decimal
}

// Totals sum the lines.
type Totals struct {
	ByInstance []InstanceTotal
	BySKU      []SKUTotal
	ByCurrency []CurrencyTotal
}

// InstanceTotal sums one instance's lines. Events and Quantity include late usage carried in; PushedUsage is
// the usage of its SDRs whatever their state, AcceptedUsage that of ACCEPTED and BILLED ones; ExpectedAmount
// sums the amounts of SDRs that KooGallery should bill (all but REJECTED, EXPIRED and ASYNC_REJECTED).
type InstanceTotal struct {
	InstanceID, Meter, SKU string
	Events                 int64
	Quantity               decimal.Decimal
	PushedUsage            decimal.Decimal
	AcceptedUsage          decimal.Decimal
	ExpectedAmount         decimal.Decimal
	Currency               string
}

// SKUTotal sums the lines of one SKU (and currency).
type SKUTotal struct {
	SKU, Meter, Currency string
	Instances            int
	Events               int64
	Quantity             decimal.Decimal
	PushedUsage          decimal.Decimal
	AcceptedUsage        decimal.Decimal
	ExpectedAmount       decimal.Decimal
}

// CurrencyTotal sums amounts per currency: expected = accepted + pending; rejected amounts (REJECTED, EXPIRED,
// ASYNC_REJECTED) are not expected to be billed.
type CurrencyTotal struct {
	Currency       string
	SDRs           int
	ExpectedAmount decimal.Decimal
	AcceptedAmount decimal.Decimal
	PendingAmount  decimal.Decimal
	RejectedAmount decimal.Decimal
}

// Invariant is the check of DESIGN.md §4 over the report's window.
type Invariant struct {
	Holds      bool
	Violations []Violation
	// Checks are the terms of the equation per instance and meter (additive meters), or the count of hours
	// recomputed (MAX and UNIQUE_COUNT).
	Checks []Check
}

// Violation is one place where the invariant does not hold.
type Violation struct {
	InstanceID, Meter string
	Hour              time.Time // zero for the whole window
	What              string
	Want, Got         string
}

// String names where and what, for one line of a terminal.
func (v Violation) String() string {
	where := v.InstanceID + " " + v.Meter
	if !v.Hour.IsZero() {
		where += " " + v.Hour.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("%s: %s: want %s, got %s", where, v.What, v.Want, v.Got)
}

// Check is the invariant of one instance and meter over the window. For additive meters:
// OpeningCarry + Scaled = Accepted + Pending + Rejected + Expired + WrittenOff + ClosingCarry.
type Check struct {
	InstanceID, Meter, Aggregation string
	Additive                       bool
	Hours                          int
	OpeningCarry                   decimal.Decimal
	// Scaled is the usage assigned to the window: (quantity + late quantity) x unit_scale of its hours; for MAX and
	// UNIQUE_COUNT the sum of round(quantity x unit_scale, 4).
	Scaled            decimal.Decimal
	Accepted, Pending decimal.Decimal // ACCEPTED and BILLED; PENDING, SENT and HELD
	Rejected, Expired decimal.Decimal // REJECTED and ASYNC_REJECTED; EXPIRED
	WrittenOff        decimal.Decimal // release remainders written off in the window
	ClosingCarry      decimal.Decimal
	Holds             bool
	Note              string
}

// Left is the usage assigned to the window: opening carry plus scaled quantities.
func (c Check) Left() decimal.Decimal { return c.OpeningCarry.Add(c.Scaled) }

// Right is where that usage went.
func (c Check) Right() decimal.Decimal {
	return c.Accepted.Add(c.Pending).Add(c.Rejected).Add(c.Expired).Add(c.WrittenOff).Add(c.ClosingCarry)
}

// RejectedRecord is an SDR KooGallery refused: REJECTED, EXPIRED or ASYNC_REJECTED.
type RejectedRecord struct {
	MeteringSN, InstanceID string
	Hour                   time.Time
	Revision               int
	State, Code, Reason    string
	UsageValue, Amount     decimal.Decimal
	Currency               string
	Attempts               int
}

// LateWriteOff is late usage that was dropped (late_policy drop, a non-additive meter, or no open hour left).
type LateWriteOff struct {
	InstanceID, Meter, Subject string
	CloseHour, OriginHour      time.Time
	Events                     int64
	Quantity                   decimal.Decimal // meter units
	// Usage is the written-off usage in KooGallery units (additive meters); HasUsage is false when no write-off
	// was recorded in usage units (MAX and UNIQUE_COUNT).
	Usage    decimal.Decimal
	HasUsage bool
	Reason   string
}

// UnmatchedUsage is usage that no instance covered, found for hours in the window.
type UnmatchedUsage struct {
	ID                int64
	Meter, Subject    string
	Hour              time.Time
	Events            int64
	Quantity          decimal.Decimal
	State             string
	InstanceID        string
	FoundAt, Resolved time.Time
	Reason            string
}

// MissedDeadline is an SDR accepted after its due time, or still waiting (PENDING, SENT, HELD) past it.
type MissedDeadline struct {
	MeteringSN, InstanceID string
	Hour                   time.Time
	State                  string
	Due                    time.Time
	AcceptedAt             time.Time // zero: not accepted yet; Late is then measured to the report's Now
	FirstAttempt           time.Time // zero: never sent
	Attempts               int
	Late                   time.Duration
}

// HourPoint is the chart of one hour: the usage of its SDRs by outcome against the deadline.
type HourPoint struct {
	Hour                 time.Time
	SDRs                 int
	OnTime, LateAccepted decimal.Decimal
	Waiting, Refused     decimal.Decimal
	// SlowestAccepted is the latest acceptance after the end of the hour; Waited is how long the hour's SDRs still
	// waiting (PENDING, SENT, HELD) have waited so far, zero when none; Deadline is the due time after the end of
	// the hour.
	SlowestAccepted, Waited, Deadline time.Duration
}

// Report is a reconciliation report.
type Report struct {
	From, To, Now time.Time
	// Lines are the closed instance-hours; empty when the report was exported as it was built (Export).
	Lines []Line
	// LineCount counts the lines, even when they were streamed and not kept.
	LineCount int
	Instances int
	// States counts the lines by state.
	States           map[string]int
	Totals           Totals
	Invariant        Invariant
	Rejected         []RejectedRecord
	Late             []LateWriteOff
	Unmatched        []UnmatchedUsage
	MissedDeadline   []MissedDeadline
	AmountMismatches []Line
	Hourly           []HourPoint
	Bill             *bill.Result
}
