package pricing

import "time"

// Period returns the accumulation period [start, end) containing t, as UTC instants: the calendar hour, day or
// month of a step plan in its Location, and for fixed and tier plans (which accumulate nothing) the hour.
//
// A step record's cumulative is the usage of the same instance in records earlier in the same period. The
// pipeline prices hourly records, so it should place each record by its hour's start: in a zone with a
// half-hour offset (Asia/Kolkata) a local day or month starts at hh:30 UTC, and the UTC hour that straddles it
// counts wholly in the period its start falls into.
//
// Periods follow the wall clock through daylight-saving changes: a local day may last 23 or 25 hours, and a
// day whose midnight is skipped starts at the transition. Hour periods are split at a change of UTC offset, so a
// repeated local hour (01:00-02:00 on a fall-back night) is two periods, each one real hour.
//
// A period never reaches outside the plan version: it is cut at EffectiveFrom and EffectiveUntil, so a new
// version starts accumulating from zero when it takes effect. For t outside the version's validity the uncut
// calendar period is returned.
func (p *Plan) Period(t time.Time) (start, end time.Time) {
	acc := p.Accumulation
	if p.Mode != ModeStep || acc == "" {
		acc = AccumulationHour
	}
	loc := p.Location
	if loc == nil {
		loc = time.UTC
	}
	start, end = calendarPeriod(t.In(loc), acc)
	inVersion := (p.EffectiveFrom.IsZero() || !t.Before(p.EffectiveFrom)) &&
		(p.EffectiveUntil.IsZero() || t.Before(p.EffectiveUntil))
	if inVersion {
		if !p.EffectiveFrom.IsZero() && p.EffectiveFrom.After(start) {
			start = p.EffectiveFrom
		}
		if !p.EffectiveUntil.IsZero() && p.EffectiveUntil.Before(end) {
			end = p.EffectiveUntil
		}
	}
	return start.UTC(), end.UTC()
}

// periodKey names the calendar period of a local time. For hours the UTC offset is part of the key, so that a
// repeated wall-clock hour is not merged into one two-hour "hour"; days and months are named by date alone, so
// they do run across a transition.
type periodKey struct {
	year   int
	month  time.Month
	day    int
	hour   int
	offset int
}

func keyOf(lt time.Time, acc Accumulation) periodKey {
	y, m, d := lt.Date()
	switch acc {
	case AccumulationMonth:
		return periodKey{year: y, month: m}
	case AccumulationDay:
		return periodKey{year: y, month: m, day: d}
	}
	_, off := lt.Zone()
	return periodKey{year: y, month: m, day: d, hour: lt.Hour(), offset: off}
}

// sinceStart is how long the wall clock has run since the start of lt's period, and length how long the wall
// clock runs from the start to the end of the period. Within one zone span (a constant UTC offset) wall-clock
// time and real time advance together, so these are real durations there.
func sinceStart(lt time.Time, acc Accumulation) time.Duration {
	d := time.Duration(lt.Minute())*time.Minute + time.Duration(lt.Second())*time.Second +
		time.Duration(lt.Nanosecond())
	if acc == AccumulationHour {
		return d
	}
	d += time.Duration(lt.Hour()) * time.Hour
	if acc == AccumulationDay {
		return d
	}
	return d + time.Duration(lt.Day()-1)*24*time.Hour
}

func length(lt time.Time, acc Accumulation) time.Duration {
	switch acc {
	case AccumulationHour:
		return time.Hour
	case AccumulationDay:
		return 24 * time.Hour
	}
	y, m, _ := lt.Date()
	days := time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day() // day 0 of next month = last day of this one
	return time.Duration(days) * 24 * time.Hour
}

// maxSpans bounds the walk over zone transitions. A month contains at most a handful of transitions in any real
// zone; the bound only keeps corrupt zone data from looping.
const maxSpans = 16

// calendarPeriod finds the period of lt (a time in the plan's location) without time.Date, which picks an
// unspecified instant for a wall-clock time that a transition skips or repeats. Instead it works inside zone
// spans (time.ZoneBounds), where the offset is constant and wall-clock arithmetic is exact, and steps into the
// neighbouring span when the period's wall-clock start or end lies beyond a transition. It assumes, as holds
// for every zone in the tz database, that a transition never moves the wall clock back across a period
// boundary it had already passed.
func calendarPeriod(lt time.Time, acc Accumulation) (start, end time.Time) {
	key := keyOf(lt, acc)

	cur := lt
	for range maxSpans {
		zs, _ := cur.ZoneBounds()
		s := cur.Add(-sinceStart(cur, acc))
		if zs.IsZero() || s.After(zs) {
			start = s
			break
		}
		// The wall-clock start lies at or before the transition that began this span: if the instant just
		// before it is still in the period, continue there, otherwise the period starts at the transition.
		prev := zs.Add(-time.Nanosecond).In(lt.Location())
		if keyOf(prev, acc) != key {
			start = zs
			break
		}
		cur = prev
		start = zs // used only if maxSpans runs out
	}

	cur = lt
	for range maxSpans {
		_, ze := cur.ZoneBounds()
		e := cur.Add(length(cur, acc) - sinceStart(cur, acc))
		if ze.IsZero() || e.Before(ze) {
			end = e
			break
		}
		next := ze.In(lt.Location())
		if keyOf(next, acc) != key {
			end = ze
			break
		}
		cur = next
		end = ze
	}
	return start, end
}
