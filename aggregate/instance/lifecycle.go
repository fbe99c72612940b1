package instance

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ConflictError is a valid spec that the lifecycle refuses given what is stored: a released instance changed, a
// field fixed at creation changed, or a life overlapping another instance of the same subject and meter. The
// caller must fix the spec or the other instance (HTTP 409, exit code 2).
type ConflictError struct {
	Path   string // where the spec came from, e.g. "instances[3]"; empty for a single apply
	ID     string // the instance applied
	Field  string // the spec field at fault; empty for the instance's life as a whole
	Reason string
	Other  string // for an overlap: the other instance
}

func (e *ConflictError) Error() string {
	p := e.Path
	if e.Field != "" {
		if p != "" {
			p += "."
		}
		p += e.Field
	}
	if p == "" {
		return e.Reason
	}
	return p + ": " + e.Reason
}

// decide is the lifecycle, in one place: what applying next (a parsed, valid spec) to current (nil when the
// instance does not exist) does at now, given the other instances of the same subject and meter. It is pure.
//
// Rules:
//   - a new instance records CREATED at started_at, then FROZEN (at now) or RELEASED (at released_at) when it is
//     created in that state;
//   - subject, meter, sku and started_at are fixed at creation: usage already matched, priced and pushed under
//     them cannot be moved to another subject, meter, plan or start;
//   - ACTIVE -> FROZEN records FROZEN and FROZEN -> ACTIVE records UNFROZEN, both at now (never before
//     started_at); -> RELEASED records RELEASED at released_at;
//   - RELEASED is final: only the identical spec is accepted (and changes nothing);
//   - the same spec applied twice changes nothing and records nothing;
//   - relate_pkg_instance and site may change while the instance is not released (no history: they are
//     metadata of the SDRs, not of the instance's life);
//   - no two instances of one (subject, meter) may have overlapping lives, whatever their status, so that an
//     event matches at most one instance.
func decide(current *Instance, next Instance, sameKey []Instance, now time.Time) (Result, error) {
	now = now.UTC().Truncate(time.Millisecond)
	if current == nil {
		return create(next, sameKey, now)
	}
	return update(*current, next, sameKey, now)
}

func create(next Instance, sameKey []Instance, now time.Time) (Result, error) {
	if err := checkOverlap(next, sameKey); err != nil {
		return Result{}, err
	}
	ch := []Change{{At: next.StartedAt, Kind: KindCreated, RecordedAt: now}}
	switch next.Status {
	case Frozen:
		ch = append(ch, Change{At: effective(next, now), Kind: KindFrozen, RecordedAt: now})
	case Released:
		ch = append(ch, Change{At: next.ReleasedAt, Kind: KindReleased, RecordedAt: now})
	}
	next.Changes = ch
	next.UpdatedAt = now
	return Result{Instance: next, New: slices.Clone(ch), Created: true, Changed: true}, nil
}

func update(cur, next Instance, sameKey []Instance, now time.Time) (Result, error) {
	var errs []error
	conflict := func(field, format string, args ...any) {
		errs = append(errs, &ConflictError{ID: cur.ID, Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	fixed := func(field, was, to string) {
		if was != to {
			conflict(field, "instance %q has %s %q since its creation: it cannot become %q (usage already matched and billed under it)",
				cur.ID, field, was, to)
		}
	}
	fixed("subject", cur.Subject, next.Subject)
	fixed("meter", cur.Meter, next.Meter)
	fixed("sku", cur.SKU, next.SKU)
	fixed("started_at", FormatTime(cur.StartedAt), FormatTime(next.StartedAt))
	if len(errs) > 0 {
		return Result{}, errors.Join(errs...)
	}

	differs := ""
	switch {
	case next.Status != cur.Status:
		differs = "status"
	case !next.ReleasedAt.Equal(cur.ReleasedAt):
		differs = "released_at"
	case next.RelatePkgInstance != cur.RelatePkgInstance:
		differs = "relate_pkg_instance"
	case next.Site != cur.Site:
		differs = "site"
	}
	if differs == "" {
		return Result{Instance: cur}, nil
	}
	if cur.Status == Released {
		conflict(differs, "instance %q was released at %s: a released instance is final", cur.ID, FormatTime(cur.ReleasedAt))
		return Result{}, errors.Join(errs...)
	}

	out := cur
	out.Status, out.ReleasedAt = next.Status, next.ReleasedAt
	out.RelatePkgInstance, out.Site = next.RelatePkgInstance, next.Site
	var ch []Change
	switch {
	case next.Status == cur.Status:
	case next.Status == Frozen:
		ch = append(ch, Change{At: effective(cur, now), Kind: KindFrozen, RecordedAt: now})
	case next.Status == Active: // from FROZEN
		ch = append(ch, Change{At: effective(cur, now), Kind: KindUnfrozen, RecordedAt: now})
	case next.Status == Released:
		ch = append(ch, Change{At: next.ReleasedAt, Kind: KindReleased, RecordedAt: now})
	}
	// A release only shortens the life, so this cannot fail on a consistent store; it is checked anyway so
	// that a store holding overlaps (written by an older meterd, or by hand) is not made worse.
	if err := checkOverlap(out, sameKey); err != nil {
		return Result{}, err
	}
	out.Changes = append(slices.Clone(cur.Changes), ch...)
	out.UpdatedAt = now
	return Result{Instance: out, New: ch, Changed: true}, nil
}

// effective is when a freeze or unfreeze told at now takes effect: now, but never before the instance starts.
func effective(in Instance, now time.Time) time.Time {
	if now.Before(in.StartedAt) {
		return in.StartedAt
	}
	return now
}

// checkOverlap refuses a life that shares an instant with another instance of the same subject and meter.
func checkOverlap(in Instance, sameKey []Instance) error {
	var errs []error
	for _, o := range sameKey {
		if o.ID == in.ID || o.Subject != in.Subject || o.Meter != in.Meter || !overlaps(in, o) {
			continue
		}
		var hint string
		switch {
		case !o.StartedAt.Before(in.StartedAt):
			hint = fmt.Sprintf("%q would have to be released at or before %s", in.ID, FormatTime(o.StartedAt))
		case o.Status == Released: // final: only the new instance can move
			hint = fmt.Sprintf("%q would have to start at or after %s", in.ID, FormatTime(o.ReleasedAt))
		default:
			hint = fmt.Sprintf("release %q at or before %s first", o.ID, FormatTime(in.StartedAt))
		}
		errs = append(errs, &ConflictError{ID: in.ID, Other: o.ID, Reason: fmt.Sprintf(
			"instance %q %s overlaps instance %q %s (%s) of the same subject %q and meter %q: an event must match one instance; %s",
			in.ID, life(in), o.ID, life(o), o.Status, in.Subject, in.Meter, hint)})
	}
	return errors.Join(errs...)
}

func life(in Instance) string {
	end := "open"
	if !in.ReleasedAt.IsZero() {
		end = FormatTime(in.ReleasedAt)
	}
	return "[" + FormatTime(in.StartedAt) + ", " + end + ")"
}
