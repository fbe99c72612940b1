package report

import (
	"context"
	"errors"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
)

// ErrStaleEpoch is returned by ledger writes made under a lease epoch that is no longer current: another
// scheduler took over, and this one's decisions must not overwrite its.
var ErrStaleEpoch = errors.New("lease epoch is stale: another scheduler holds the push lease")

// Lease is the push lease as read from the store.
type Lease struct {
	Holder  string
	Epoch   int64
	Expires time.Time
}

// Outcome is the ledger update decided for one SDR after an attempt.
type Outcome struct {
	MeteringSN string
	State      State
	Code       string
	Reason     string
	// Definite: the attempt got an answer that settles whether KooGallery processed the record, so the
	// write-ahead unknown attempt is removed.
	Definite    bool
	NextAttempt time.Time // for PENDING/SENT: not before
	AcceptedAt  time.Time
}

// Ledger is what the push needs from storage. Every write takes the caller's lease epoch and fails with
// ErrStaleEpoch, writing nothing, when it is no longer the current one.
type Ledger interface {
	// AcquireLease takes or renews the lease for holder until now+ttl. It returns the lease as it stands and whether
	// holder has it; taking it over from another holder (expired) increments the epoch.
	AcquireLease(ctx context.Context, holder string, now time.Time, ttl time.Duration) (Lease, bool, error)
	// ReleaseLease gives the lease up (on shutdown) so another scheduler can take over at once.
	ReleaseLease(ctx context.Context, holder string, epoch int64) error
	// UnbuiltRows returns closed instance-hours with a usage_value > 0 and no SDR yet, ordered by (hour,
	// instance), after the given position (zero values: from the start).
	UnbuiltRows(ctx context.Context, afterHour time.Time, afterInstance string, limit int) ([]aggregate.Row, error)
	// PeriodUsage sums the usage_value of an instance's SDRs with begin in [from, to), excluding REJECTED, EXPIRED
	// and ASYNC_REJECTED: the cumulative usage of a step plan's period.
	PeriodUsage(ctx context.Context, instanceID string, from, to time.Time) (decimal.Decimal, error)
	InsertSDRs(ctx context.Context, epoch int64, sdrs []SDR) error
	// Pushable returns SDRs in PENDING or SENT whose next attempt is due, oldest hour first.
	Pushable(ctx context.Context, now time.Time, limit int) ([]SDR, error)
	// MarkSending records, before a batch is sent, one attempt of unknown outcome on each of its SDRs.
	MarkSending(ctx context.Context, epoch int64, sns []string, now time.Time) error
	// RecordAttempt applies the outcomes of one attempt and logs the attempt for every SDR of its batch.
	RecordAttempt(ctx context.Context, epoch int64, a Attempt, sns []string, outcomes []Outcome) error
	Pauses(ctx context.Context) (global bool, instances map[string]bool, err error)
	SetPause(ctx context.Context, instanceID string, paused bool, now time.Time) error
	StateCounts(ctx context.Context) (map[State]int, error)
	// OldestUnaccepted returns the due time of the oldest SDR not yet final (zero when none) and how many not-final
	// SDRs are past their due time, leaving out the SDRs of the instances in skip.
	OldestUnaccepted(ctx context.Context, now time.Time, skip []string) (due time.Time, pastDue int, err error)
	ListSDRs(ctx context.Context, f SDRFilter) ([]SDR, error)
	Attempts(ctx context.Context, sns []string) (map[string][]Attempt, error)
}

// SDRFilter selects SDRs by state and hour range [From, To).
type SDRFilter struct {
	State      State
	InstanceID string
	From, To   time.Time
	Limit      int
}
