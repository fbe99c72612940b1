package report

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// State is the state of an SDR (DESIGN.md §4 step 10).
type State string

// SDR states.
const (
	Pending       State = "PENDING"        // built, not sent yet (or to be sent again)
	Sent          State = "SENT"           // an attempt is in flight or had an unknown outcome
	Accepted      State = "ACCEPTED"       // taken by KooGallery (0000 without a per-record problem, or a confirmed duplicate)
	Rejected      State = "REJECTED"       // refused for good; last_code says why
	Expired       State = "EXPIRED"        // older than KooGallery's 21 days (9004/007, or never sent in time)
	Held          State = "HELD"           // cannot be sent as is (usage_value above 99,999,999.9999): alerted
	Billed        State = "BILLED"         // matched in an imported bill
	AsyncRejected State = "ASYNC_REJECTED" // listed as abnormal in an imported SDR export; re-reported under the next revision
)

// States lists every state, for metrics created up front.
var States = []State{Pending, Sent, Accepted, Rejected, Expired, Held, Billed, AsyncRejected}

// Final reports whether the push is done with an SDR in this state.
func (s State) Final() bool { return s != Pending && s != Sent }

// SDR is one usage record of one instance-hour in the ledger.
type SDR struct {
	InstanceID        string
	Hour              time.Time
	Revision          int
	MeteringSN        string
	Meter, SKU        string
	RecordTime        time.Time
	Begin, End        time.Time
	UsageValue        decimal.Decimal
	Amount            decimal.Decimal // expected charge, exact (plan in effect at the hour)
	Currency          string
	RelatePkgInstance string
	Body              []byte // the exact canonical JSON of the record as sent
	State             State
	LastCode          string
	Reason            string
	Due               time.Time // H+1h+deadline
	UnknownAttempts   int       // attempts whose outcome is unknown (sent, no definite answer)
	Attempts          int
	NextAttempt       time.Time // backoff: not before this time
	AcceptedAt        time.Time
	Epoch             int64 // lease epoch of the last write
}

// Attempt is one push call as recorded for every SDR of its batch.
type Attempt struct {
	MeteringSN string
	At         time.Time
	BatchID    string
	Records    int
	HTTPStatus int
	Code       string
	Class      string
	Latency    time.Duration
	Epoch      int64
	Error      string // transport error text (never contains the key)
}

// MeteringSN is the SDR number of an instance-hour and revision: readable (the hour and revision show) and a pure
// function of its inputs, at most 64 characters whatever the instance id. The same instance-hour always gets the
// same number, so a second deployment or a restored store collides visibly (005) instead of billing twice.
func MeteringSN(instanceID string, hour time.Time, revision int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s|%d|%d", instanceID, hour.UTC().UnixMilli(), revision)))
	return fmt.Sprintf("m%s-r%d-%s", hour.UTC().Format("2006010215"), revision, hex.EncodeToString(h[:])[:32])
}
