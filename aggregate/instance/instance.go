package instance

import (
	"encoding/json"
	"fmt"
	"time"
)

// Status is an instance's current state. KooGallery's provisioning calls are create, FREEZE, UNFREEZE and
// release (spec/koogallery.md §5).
type Status string

// Statuses.
const (
	Active   Status = "ACTIVE"
	Frozen   Status = "FROZEN"   // usage still counts, but KooGallery refuses its SDRs (013) until unfreeze
	Released Status = "RELEASED" // final
)

func (s Status) valid() bool { return s == Active || s == Frozen || s == Released }

// ParseStatus reads a status as written in specs and filters.
func ParseStatus(s string) (Status, error) {
	if st := Status(s); st.valid() {
		return st, nil
	}
	return "", fmt.Errorf("%q must be ACTIVE, FROZEN or RELEASED", s)
}

// ChangeKind is what happened to an instance.
type ChangeKind string

// Change kinds.
const (
	KindCreated  ChangeKind = "CREATED"
	KindFrozen   ChangeKind = "FROZEN"
	KindUnfrozen ChangeKind = "UNFROZEN"
	KindReleased ChangeKind = "RELEASED"
)

// Change is one event of an instance's lifecycle. At is when it took effect: started_at for CREATED,
// released_at for RELEASED, the time meterd was told for FROZEN and UNFROZEN (KooGallery's freeze calls carry no
// time of their own), never before started_at. RecordedAt is when meterd recorded it.
type Change struct {
	At         time.Time
	Kind       ChangeKind
	RecordedAt time.Time
}

// Instance is a registered pay-per-use instance. Times are UTC, to the millisecond.
type Instance struct {
	ID      string
	Subject string // events with this subject feed the instance
	Meter   string
	SKU     string
	Status  Status
	// StartedAt and ReleasedAt bound the instance's life [StartedAt, ReleasedAt); a zero ReleasedAt means not
	// released (open-ended).
	StartedAt         time.Time
	ReleasedAt        time.Time
	RelatePkgInstance string // "" when none
	Site              string // "" for the default KooGallery site
	// Changes is the history, in the order recorded.
	Changes   []Change
	UpdatedAt time.Time
}

// Contains reports whether t lies within the instance's life [StartedAt, ReleasedAt): an event at exactly the
// release time belongs to a successor, not to the released instance (KooGallery refuses SDRs ending after the
// release).
func (in Instance) Contains(t time.Time) bool {
	return !t.Before(in.StartedAt) && (in.ReleasedAt.IsZero() || t.Before(in.ReleasedAt))
}

// Life returns the instance's life [start, end); end is zero while the instance is not released.
func (in Instance) Life() (start, end time.Time) { return in.StartedAt, in.ReleasedAt }

// FrozenAt reports whether the instance was frozen at t, from its history: the latest FROZEN or UNFROZEN change
// that took effect at or before t decides (of two at the same instant, the one recorded last).
func (in Instance) FrozenAt(t time.Time) bool {
	frozen := false
	var last time.Time
	seen := false
	for _, c := range in.Changes {
		if c.Kind != KindFrozen && c.Kind != KindUnfrozen || c.At.After(t) {
			continue
		}
		if seen && c.At.Before(last) {
			continue
		}
		frozen, last, seen = c.Kind == KindFrozen, c.At, true
	}
	return frozen
}

// overlaps reports whether the lives of a and b share an instant.
func overlaps(a, b Instance) bool {
	return (b.ReleasedAt.IsZero() || a.StartedAt.Before(b.ReleasedAt)) &&
		(a.ReleasedAt.IsZero() || b.StartedAt.Before(a.ReleasedAt))
}

// instanceJSON is the API form of an Instance (DESIGN.md §5a): the Spec's keys, times in RFC 3339 UTC with Z,
// null for what is unset, plus the history.
type instanceJSON struct {
	InstanceID        string       `json:"instance_id"`
	Subject           string       `json:"subject"`
	Meter             string       `json:"meter"`
	SKU               string       `json:"sku"`
	Status            Status       `json:"status"`
	StartedAt         string       `json:"started_at"`
	ReleasedAt        *string      `json:"released_at"`
	RelatePkgInstance *string      `json:"relate_pkg_instance"`
	Site              *string      `json:"site"`
	Changes           []changeJSON `json:"changes"`
	UpdatedAt         string       `json:"updated_at"`
}

type changeJSON struct {
	At         string     `json:"at"`
	Kind       ChangeKind `json:"kind"`
	RecordedAt string     `json:"recorded_at"`
}

// MarshalJSON writes the API form.
func (in Instance) MarshalJSON() ([]byte, error) {
	out := instanceJSON{InstanceID: in.ID, Subject: in.Subject, Meter: in.Meter, SKU: in.SKU, Status: in.Status,
		StartedAt: FormatTime(in.StartedAt), RelatePkgInstance: nullable(in.RelatePkgInstance), Site: nullable(in.Site),
		Changes: make([]changeJSON, len(in.Changes)), UpdatedAt: FormatTime(in.UpdatedAt)}
	if !in.ReleasedAt.IsZero() {
		r := FormatTime(in.ReleasedAt)
		out.ReleasedAt = &r
	}
	for i, c := range in.Changes {
		out.Changes[i] = changeJSON{At: FormatTime(c.At), Kind: c.Kind, RecordedAt: FormatTime(c.RecordedAt)}
	}
	return json.Marshal(out)
}

// FormatTime writes t as RFC 3339 in UTC with Z, with a fraction only when there is one.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
