package aggregate

import (
	"context"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate/instance"
)

// Kind groups meters by how the store totals their values.
type Kind string

// Kinds of totals.
const (
	KindSum      Kind = "sum"      // SUM and COUNT meters: exact decimal sum (COUNT values are 1)
	KindMax      Kind = "max"      // MAX meters: the largest value
	KindDistinct Kind = "distinct" // UNIQUE_COUNT meters: the number of distinct keys
)

// TotalsQuery selects stored meter values: time in [From, To), ingest sequence in (SeqAfter, SeqUpTo], meters in
// Meters, optionally one subject. Results are grouped by (meter, subject, hour of the event time).
type TotalsQuery struct {
	Kind     Kind
	Meters   []string
	From, To time.Time
	SeqAfter int64
	SeqUpTo  int64
	Subject  string // optional
}

// Total is one group of a TotalsQuery.
type Total struct {
	Meter   string
	Subject string
	Hour    time.Time
	Events  int64
	Value   decimal.Decimal // sum, max or distinct count, by Kind
}

// Row is the closed usage of one instance-hour.
type Row struct {
	InstanceID  string
	Hour        time.Time
	Meter       string
	Aggregation string
	SKU         string
	// Begin and End clamp the hour to the instance's life (the SDR's begin_time and end_time).
	Begin, End time.Time
	// Events and Quantity are the on-time usage of the hour in meter units (for MAX the largest value, for
	// UNIQUE_COUNT the number of distinct keys).
	Events   int64
	Quantity decimal.Decimal
	// LateEvents and LateQuantity are late usage of earlier hours carried into this one (additive meters only).
	LateEvents   int64
	LateQuantity decimal.Decimal
	UnitScale    decimal.Decimal
	// CarryIn + (Quantity + LateQuantity) x UnitScale = UsageValue + CarryOut (additive meters).
	CarryIn    decimal.Decimal
	UsageValue decimal.Decimal
	CarryOut   decimal.Decimal
}

// Late is late usage of one (meter, subject, origin hour) found by a close, and what was done with it.
type Late struct {
	CloseHour  time.Time
	Meter      string
	Subject    string
	OriginHour time.Time
	InstanceID string // empty when no instance matched at the origin time (then it is held as unmatched)
	Events     int64
	Quantity   decimal.Decimal
	Action     LateAction
	Reason     string
}

// LateAction is what a close did with late usage.
type LateAction string

// Late usage actions.
const (
	LateCarried   LateAction = "CARRIED"   // added to the instance's hour being closed, origin kept
	LateDropped   LateAction = "DROPPED"   // written off: late_policy drop, or a non-additive meter
	LateUnmatched LateAction = "UNMATCHED" // no instance at the origin time: held as unmatched usage
)

// Unmatched is usage of a (meter, subject) that no instance covered, identified by the query range that found it,
// so that attaching it later re-reads exactly the events an instance may take.
type Unmatched struct {
	ID         int64 // store-assigned; 0 for a new record
	Meter      string
	Subject    string
	Hour       time.Time
	From, To   time.Time
	SeqAfter   int64
	SeqUpTo    int64
	Events     int64
	Quantity   decimal.Decimal
	State      UnmatchedState
	InstanceID string    // set when attached
	Resolved   time.Time // close hour that attached or wrote it off
	FoundAt    time.Time // close hour that found it
	Reason     string
}

// UnmatchedState is the state of unmatched usage.
type UnmatchedState string

// Unmatched states.
const (
	UnmatchedHeld       UnmatchedState = "HELD"
	UnmatchedAttached   UnmatchedState = "ATTACHED"
	UnmatchedWrittenOff UnmatchedState = "WRITTEN_OFF"
	// UnmatchedSplit: part of it was attached; the parts still held are new records.
	UnmatchedSplit UnmatchedState = "SPLIT"
)

// WriteOff is usage, in usage units, that will never be billed, with the reason.
type WriteOff struct {
	InstanceID string
	Meter      string
	CloseHour  time.Time
	OriginHour time.Time
	Usage      decimal.Decimal
	Kind       WriteOffKind
	Reason     string
}

// WriteOffKind classifies write-offs.
type WriteOffKind string

// Write-off kinds.
const (
	WriteOffReleaseRemainder WriteOffKind = "RELEASE_REMAINDER" // the carried remainder (< 0.0001) at release
	WriteOffLateDropped      WriteOffKind = "LATE_DROPPED"      // late usage of an additive meter under late_policy drop
	WriteOffLateNoOpenHour   WriteOffKind = "LATE_AFTER_RELEASE"
)

// ClosedHour is everything one close decided. The store commits it atomically, the marker (the hour_closes row)
// last.
type ClosedHour struct {
	Hour         time.Time
	Snapshot     int64 // ingest sequence snapshot: events with seq <= Snapshot and time in the hour belong to it
	PrevSnapshot int64
	ClosedAt     time.Time
	Forced       bool
	Rows         []Row
	Late         []Late
	Unmatched    []Unmatched // new records, and held records whose state changed (by ID)
	WriteOffs    []WriteOff
}

// CloseMark is the record of a closed hour.
type CloseMark struct {
	Hour         time.Time
	Snapshot     int64
	PrevSnapshot int64
	ClosedAt     time.Time
	Forced       bool
	Rows         int
}

// Carry is what an instance carries out of its last closed row.
type Carry struct {
	Hour              time.Time
	CarryOut          decimal.Decimal
	ReleaseWrittenOff bool
}

// Store is what the close needs from storage. Implementations compute totals exactly (decimal arithmetic or
// scaled integers, never floating point) and commit a ClosedHour atomically.
type Store interface {
	LastSeq(ctx context.Context) (int64, error)
	EarliestEventTime(ctx context.Context, seqUpTo int64) (time.Time, bool, error)
	Totals(ctx context.Context, q TotalsQuery) ([]Total, error)
	LastClose(ctx context.Context) (CloseMark, bool, error)
	GetClose(ctx context.Context, hour time.Time) (CloseMark, bool, error)
	Carries(ctx context.Context, before time.Time) (map[string]Carry, error)
	HeldUnmatched(ctx context.Context) ([]Unmatched, error)
	CommitClose(ctx context.Context, c *ClosedHour) error
	UsageRows(ctx context.Context, q UsageQuery) ([]Row, error)
}

// Instances is what the close needs from the instance registry.
type Instances interface {
	ListInstances(ctx context.Context, f instance.Filter) ([]instance.Instance, error)
}

// UsageQuery selects closed rows: hours in [From, To), optionally one instance.
type UsageQuery struct {
	InstanceID string
	From, To   time.Time
}
