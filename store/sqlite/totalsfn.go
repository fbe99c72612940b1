package sqlite

import (
	"cmp"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"modernc.org/sqlite"

	"github.com/meterd/meterd/aggregate"
)

// totalsFunction names the aggregate that totals a kind, in SQL.
func totalsFunction(kind aggregate.Kind) (string, bool) {
	switch kind {
	case aggregate.KindSum:
		return "hour_totals_sum", true
	case aggregate.KindMax:
		return "hour_totals_max", true
	case aggregate.KindDistinct:
		return "hour_totals_distinct", true
	}
	return "", false
}

// registerTotalsFunctions adds hour_totals_sum, hour_totals_max and hour_totals_distinct(meter, subject, time_ms,
// value) to every connection the driver opens: each groups its rows by (meter, subject, hour of time_ms) in a Go
// hash map and returns all the groups at once, in one BLOB (appendTotal). The GROUP BY they replace had SQLite
// sort every row of the hour first, since no index has that order: 24 s of the close of 10M events (bench/close.sh
// profile). A hash map needs no order, and one aggregate over the scan hands Go each row without copying it
// (VolatileArgs) and without a result row per event, which cost more than the sort saved (database/sql and the
// driver, measured). The driver keeps one registry per process, hence the Once.
var registerTotalsFunctions = sync.OnceValue(func() error {
	for _, kind := range []aggregate.Kind{aggregate.KindSum, aggregate.KindMax, aggregate.KindDistinct} {
		name, _ := totalsFunction(kind)
		if err := sqlite.RegisterFunction(name, &sqlite.FunctionImpl{NArgs: 4, Deterministic: true, VolatileArgs: true,
			MakeAggregate: func(sqlite.FunctionContext) (sqlite.AggregateFunction, error) { return newHourTotals(kind), nil }}); err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
	return nil
})

// hourTotals is one evaluation of an hour_totals_* aggregate. Its arguments are views of SQLite's memory, valid
// during one Step only (VolatileArgs): they may be read and used as map keys for a lookup, but whatever is kept
// is cloned first.
//
// Groups are found in two steps, (meter, hour) then subject: nearly every row of a close has the meter and hour
// of the row before, and a map keyed by one string is faster than one keyed by a struct of two strings and an
// integer (the lookup is most of the cost of Step: 3.7 s against 2.8 s for 10M rows, profile).
type hourTotals struct {
	kind    aggregate.Kind
	buckets map[bucketKey]*totalsBucket
	last    *totalsBucket // the bucket of the previous row
}

type bucketKey struct {
	meter string
	hour  int64 // time_ms / hourMs, truncated as SQLite's integer division truncates
}

type totalsBucket struct {
	bucketKey
	subjects map[string]*totalsGroup
}

// totalsGroup is one (meter, subject, hour). Semantics are those of the SQL it replaces: events is count(*);
// value is decimal_sum(value) or decimal_max(value) (NULLs skipped, the first of equal maxima kept), or
// count(DISTINCT value) (text compared byte for byte, as SQLite's BINARY collation does).
type totalsGroup struct {
	events   int64
	seen     bool // a non-NULL value was seen: value holds it
	value    exactDecimal
	distinct map[string]struct{}
}

func newHourTotals(kind aggregate.Kind) *hourTotals {
	return &hourTotals{kind: kind, buckets: map[bucketKey]*totalsBucket{}}
}

func (a *hourTotals) Step(_ *sqlite.FunctionContext, args []driver.Value) error {
	meter, ok1 := args[0].(string)
	subject, ok2 := args[1].(string)
	ms, ok3 := args[2].(int64)
	if !ok1 || !ok2 || !ok3 {
		return fmt.Errorf("hour totals: want (text, text, integer, value), got (%T, %T, %T, %T)", args[0], args[1], args[2], args[3])
	}
	b := a.last
	if hour := ms / hourMs; b == nil || b.hour != hour || b.meter != meter {
		k := bucketKey{meter: meter, hour: hour}
		if b = a.buckets[k]; b == nil {
			k.meter = strings.Clone(meter)
			b = &totalsBucket{bucketKey: k, subjects: map[string]*totalsGroup{}}
			a.buckets[k] = b
		}
		a.last = b
	}
	g := b.subjects[subject]
	if g == nil {
		g = &totalsGroup{}
		if a.kind == aggregate.KindDistinct {
			g.distinct = map[string]struct{}{}
		}
		b.subjects[strings.Clone(subject)] = g
	}
	g.events++
	s, ok, err := argText(args[3])
	if err != nil || !ok {
		return err
	}
	if a.kind == aggregate.KindDistinct {
		if _, ok := g.distinct[s]; !ok {
			g.distinct[strings.Clone(s)] = struct{}{}
		}
		return nil
	}
	d, err := parseExactDecimal(s)
	if err != nil {
		return fmt.Errorf("decimal aggregate: %q: %w", s, err)
	}
	switch {
	case !g.seen:
		g.value, g.seen = d, true
	case a.kind == aggregate.KindMax:
		if d.cmp(g.value) > 0 {
			g.value = d
		}
	default:
		g.value = g.value.add(d)
	}
	return nil
}

func (a *hourTotals) WindowInverse(*sqlite.FunctionContext, []driver.Value) error {
	return errors.New("hour totals are not window functions")
}

// WindowValue returns the groups ordered by (meter, subject, hour), as the GROUP BY ... ORDER BY it replaces did.
func (a *hourTotals) WindowValue(*sqlite.FunctionContext) (driver.Value, error) {
	type group struct {
		k totalsKey
		g *totalsGroup
	}
	var all []group
	for _, b := range a.buckets {
		for subject, g := range b.subjects {
			all = append(all, group{totalsKey{b.meter, subject, b.hour}, g})
		}
	}
	slices.SortFunc(all, func(x, y group) int {
		return cmp.Or(strings.Compare(x.k.meter, y.k.meter), strings.Compare(x.k.subject, y.k.subject), cmp.Compare(x.k.hour, y.k.hour))
	})
	buf := []byte{} // a zero-length BLOB, not NULL, when no row was selected
	for _, x := range all {
		var value string
		switch {
		case a.kind == aggregate.KindDistinct:
			value = strconv.Itoa(len(x.g.distinct))
		case !x.g.seen:
			return nil, fmt.Errorf("hour totals: no value in group (%s, %s, %d)", x.k.meter, x.k.subject, x.k.hour)
		default:
			value = x.g.value.String()
		}
		buf = appendTotal(buf, x.k, x.g.events, value)
	}
	return buf, nil
}

func (a *hourTotals) Final(*sqlite.FunctionContext) {}

type totalsKey struct {
	meter, subject string
	hour           int64
}

// The groups travel as one BLOB, each group as meter, subject and value (decimal text) prefixed by their uvarint
// lengths, the hour as a varint and events as a uvarint: byte for byte, where JSON would replace text that is not
// UTF-8. At some 30 bytes a group, SQLite's limit of 1e9 bytes a BLOB is some 30M groups in one query, against
// 100,000 in the close benchmark; past it the query fails ("string or blob too big"), it does not lose groups.
func appendTotal(buf []byte, k totalsKey, events int64, value string) []byte {
	for _, s := range []string{k.meter, k.subject} {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	buf = binary.AppendVarint(buf, k.hour)
	buf = binary.AppendUvarint(buf, uint64(events))
	buf = binary.AppendUvarint(buf, uint64(len(value)))
	return append(buf, value...)
}

// decodeTotals reads what WindowValue encoded.
func decodeTotals(buf []byte) ([]aggregate.Total, error) {
	var out []aggregate.Total
	corrupt := errors.New("hour totals: malformed result")
	str := func() (string, bool) {
		n, w := binary.Uvarint(buf)
		if w <= 0 || n > uint64(len(buf)-w) {
			return "", false
		}
		s := string(buf[w : w+int(n)])
		buf = buf[w+int(n):]
		return s, true
	}
	for len(buf) > 0 {
		var t aggregate.Total
		var ok bool
		if t.Meter, ok = str(); !ok {
			return nil, corrupt
		}
		if t.Subject, ok = str(); !ok {
			return nil, corrupt
		}
		h, w := binary.Varint(buf)
		if w <= 0 {
			return nil, corrupt
		}
		buf = buf[w:]
		events, w := binary.Uvarint(buf)
		if w <= 0 || events > math.MaxInt64 {
			return nil, corrupt
		}
		buf = buf[w:]
		value, ok := str()
		if !ok {
			return nil, corrupt
		}
		t.Hour, t.Events = time.UnixMilli(h*hourMs).UTC(), int64(events)
		var err error
		if t.Value, err = decimal.NewFromString(value); err != nil {
			return nil, fmt.Errorf("read totals: value %q: %w", value, err)
		}
		out = append(out, t)
	}
	return out, nil
}
