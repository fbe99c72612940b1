package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/ingest"
)

// ErrAlreadyClosed is returned by CommitClose when the hour has a close marker already; nothing was written.
var ErrAlreadyClosed = errors.New("hour already closed")

const hourMs = int64(time.Hour / time.Millisecond)

// committed selects the close ids whose rows are visible: the first marker of each hour.
const committed = `close_id IN (SELECT min(close_id) FROM hour_closes GROUP BY hour_ms)`

// EarliestEventTime returns the time of the earliest stored event with seq <= seqUpTo. Copies of one key share
// their time, so no dedup is needed.
func (s *Store) EarliestEventTime(ctx context.Context, seqUpTo int64) (time.Time, bool, error) {
	var ms int64
	var n uint64
	window, args, err := s.seqWindow(ctx, "seq", 0, seqUpTo)
	if err != nil {
		return time.Time{}, false, err
	}
	if err := s.conn.QueryRow(ctx, `SELECT min(time_ms), count() FROM event_values WHERE `+window, args...).Scan(&ms, &n); err != nil {
		return time.Time{}, false, fmt.Errorf("read earliest event time: %w", err)
	}
	if n == 0 {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(ms).UTC(), true, nil
}

// seqFilter is the ingest-window condition of a column (seqWindow) with its arguments.
type seqFilter struct {
	sql  string
	args []any
}

// totalsSQL builds the query of aggregate.Totals: exact totals per meter, subject and hour of the first stored
// copy (min seq) of each event key, kept when that copy lies in the ingest window, in Decimal(38, 10) (sum, max)
// or as an exact distinct count.
//
// Dedup by GROUP BY over every key of the hour holds a hash table of all of them: 3.6 GB at 10M events, beyond
// the server's per-query memory. Almost every key has one copy, so the query splits: keys seen once in the hour
// are taken as they are (their row is their first copy: the window applies to its seq), and only keys seen more
// than once (found by a count of cityHash64(meter, source, id): small) go through the exact first-copy argMin.
// A hash collision only sends a key down the exact path. The two row sets are unioned before the one final
// aggregation, so sums, maxima and distinct counts all stay exact. firstSeq and seq are the window on each path.
func totalsSQL(q aggregate.TotalsQuery, seq, firstSeq seqFilter) (string, []any, error) {
	var agg string
	switch q.Kind {
	case aggregate.KindSum:
		agg = "sum(v)"
	case aggregate.KindMax:
		agg = "max(v)"
	case aggregate.KindDistinct:
		agg = "uniqExact(k)"
	default:
		return "", nil, fmt.Errorf("unknown totals kind %q", q.Kind)
	}
	if len(q.Meters) == 0 {
		return "", nil, errors.New("totals: no meters")
	}
	// where: the rows of the query's meters, hour range and subject.
	where := "meter IN (?" + strings.Repeat(", ?", len(q.Meters)-1) + ") AND time_ms >= ? AND time_ms < ?"
	var whereArgs []any
	for _, m := range q.Meters {
		whereArgs = append(whereArgs, m)
	}
	whereArgs = append(whereArgs, q.From.UnixMilli(), q.To.UnixMilli())
	if q.Subject != "" {
		where += " AND subject = ?"
		whereArgs = append(whereArgs, q.Subject)
	}
	repeated := "SELECT cityHash64(meter, source, id) AS kh FROM event_values WHERE " + where + " GROUP BY kh HAVING count() > 1"
	query := fmt.Sprintf("SELECT meter, subj, intDiv(tms, %d) AS h, count() AS n, %s AS total FROM ("+
		"SELECT meter, subject AS subj, time_ms AS tms, value AS v, key AS k FROM event_values WHERE %s "+
		"AND cityHash64(meter, source, id) NOT IN (%s) AND %s "+
		"UNION ALL "+
		"SELECT meter, subj, tms, v, k FROM (SELECT meter, source, id, min(seq) AS first_seq, argMin(subject, seq) AS subj, "+
		"argMin(time_ms, seq) AS tms, argMin(value, seq) AS v, argMin(key, seq) AS k FROM event_values WHERE %s "+
		"AND cityHash64(meter, source, id) IN (%s) GROUP BY meter, source, id) WHERE %s"+
		") GROUP BY meter, subj, h ORDER BY meter, subj, h",
		hourMs, agg, where, repeated, seq.sql, where, repeated, firstSeq.sql)
	var args []any
	args = append(args, whereArgs...)
	args = append(args, whereArgs...)
	args = append(args, seq.args...)
	args = append(args, whereArgs...)
	args = append(args, whereArgs...)
	args = append(args, firstSeq.args...)
	return query, args, nil
}

// Totals computes exact totals of stored meter values in ClickHouse (aggregate.Store).
func (s *Store) Totals(ctx context.Context, q aggregate.TotalsQuery) ([]aggregate.Total, error) {
	var seq, firstSeq seqFilter
	var err error
	if seq.sql, seq.args, err = s.seqWindow(ctx, "seq", q.SeqAfter, q.SeqUpTo); err != nil {
		return nil, err
	}
	if firstSeq.sql, firstSeq.args, err = s.seqWindow(ctx, "first_seq", q.SeqAfter, q.SeqUpTo); err != nil {
		return nil, err
	}
	query, args, err := totalsSQL(q, seq, firstSeq)
	if err != nil {
		return nil, err
	}
	if s.spillBytes > 0 {
		// The repeated-key count groups every key hash of the hour: at 30M events that alone nears the server's
		// per-query memory, so it spills to disk past half of it instead of failing the close.
		ctx = ch.Context(ctx, ch.WithSettings(ch.Settings{"max_bytes_before_external_group_by": int(s.spillBytes)}))
	}
	rows, err := s.conn.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query totals: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []aggregate.Total
	for rows.Next() {
		var t aggregate.Total
		var h int64
		var n uint64
		if q.Kind == aggregate.KindDistinct {
			var c uint64
			if err := rows.Scan(&t.Meter, &t.Subject, &h, &n, &c); err != nil {
				return nil, fmt.Errorf("read totals: %w", err)
			}
			t.Value = decimal.NewFromUint64(c)
		} else if err := rows.Scan(&t.Meter, &t.Subject, &h, &n, &t.Value); err != nil {
			return nil, fmt.Errorf("read totals: %w", err)
		}
		t.Events = int64(n)
		t.Hour = time.UnixMilli(h * hourMs).UTC()
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read totals: %w", err)
	}
	return out, nil
}

const closeColumns = `hour_ms, snapshot_seq, prev_snapshot_seq, closed_ms, forced, rows_count`

func (s *Store) queryClose(ctx context.Context, query string, args ...any) (aggregate.CloseMark, bool, error) {
	rows, err := s.conn.Query(ctx, query, args...)
	if err != nil {
		return aggregate.CloseMark{}, false, fmt.Errorf("read hour close: %w", err)
	}
	defer func() { _ = rows.Close() }()
	if !rows.Next() {
		return aggregate.CloseMark{}, false, rows.Err()
	}
	var m aggregate.CloseMark
	var hour, closed, n int64
	var forced uint8
	if err := rows.Scan(&hour, &m.Snapshot, &m.PrevSnapshot, &closed, &forced, &n); err != nil {
		return m, false, fmt.Errorf("read hour close: %w", err)
	}
	m.Hour, m.ClosedAt, m.Forced, m.Rows = time.UnixMilli(hour).UTC(), time.UnixMilli(closed).UTC(), forced == 1, int(n)
	return m, true, nil
}

// LastClose returns the most recent closed hour.
func (s *Store) LastClose(ctx context.Context) (aggregate.CloseMark, bool, error) {
	return s.queryClose(ctx, `SELECT `+closeColumns+` FROM hour_closes ORDER BY hour_ms DESC, close_id LIMIT 1`)
}

// GetClose returns the record of a closed hour (its first marker).
func (s *Store) GetClose(ctx context.Context, hour time.Time) (aggregate.CloseMark, bool, error) {
	return s.queryClose(ctx, `SELECT `+closeColumns+` FROM hour_closes WHERE hour_ms = ? ORDER BY close_id LIMIT 1`, hour.UnixMilli())
}

// Carries returns the carry of every instance's last closed row, for instances whose last row is before the hour.
// The release write-off flag sticks once written, as in the SQLite store.
func (s *Store) Carries(ctx context.Context, before time.Time) (map[string]aggregate.Carry, error) {
	rows, err := s.conn.Query(ctx, `SELECT instance_id, max(hour_ms) AS h, argMax(carry_out, hour_ms) FROM usage_hours WHERE `+committed+`
GROUP BY instance_id HAVING h < ?`, before.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read carries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := map[string]aggregate.Carry{}
	for rows.Next() {
		var id string
		var hour int64
		var c aggregate.Carry
		if err := rows.Scan(&id, &hour, &c.CarryOut); err != nil {
			return nil, fmt.Errorf("read carries: %w", err)
		}
		c.Hour = time.UnixMilli(hour).UTC()
		out[id] = c
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read carries: %w", err)
	}
	if len(out) == 0 {
		return out, nil
	}
	released, err := s.conn.Query(ctx, `SELECT DISTINCT instance_id FROM write_offs WHERE kind = ? AND `+committed,
		string(aggregate.WriteOffReleaseRemainder))
	if err != nil {
		return nil, fmt.Errorf("read release write-offs: %w", err)
	}
	defer func() { _ = released.Close() }()
	for released.Next() {
		var id string
		if err := released.Scan(&id); err != nil {
			return nil, fmt.Errorf("read release write-offs: %w", err)
		}
		if c, ok := out[id]; ok {
			c.ReleaseWrittenOff = true
			out[id] = c
		}
	}
	return out, released.Err()
}

// unmatchedLatest is the latest committed version of each unmatched record.
const unmatchedLatest = `SELECT id, argMax(meter, version) AS meter, argMax(subject, version) AS subject, argMax(hour_ms, version) AS hour_ms,
argMax(from_ms, version) AS from_ms, argMax(to_ms, version) AS to_ms, argMax(seq_after, version) AS seq_after,
argMax(seq_upto, version) AS seq_upto, argMax(events, version) AS events, argMax(quantity, version) AS quantity,
argMax(state, version) AS state, argMax(instance_id, version) AS instance_id, argMax(found_hour_ms, version) AS found_hour_ms,
argMax(resolved_hour_ms, version) AS resolved_hour_ms, argMax(reason, version) AS reason
FROM unmatched_usage WHERE ` + committed + ` GROUP BY id`

// HeldUnmatched returns the unmatched usage still held.
func (s *Store) HeldUnmatched(ctx context.Context) ([]aggregate.Unmatched, error) {
	return s.queryUnmatched(ctx, `SELECT * FROM (`+unmatchedLatest+`) WHERE state = 'HELD' ORDER BY id`)
}

// ListUnmatched returns unmatched usage found by closes of hours in [from, to), in any state.
func (s *Store) ListUnmatched(ctx context.Context, from, to time.Time) ([]aggregate.Unmatched, error) {
	return s.queryUnmatched(ctx, `SELECT * FROM (`+unmatchedLatest+`) WHERE hour_ms >= ? AND hour_ms < ? ORDER BY id`,
		from.UnixMilli(), to.UnixMilli())
}

func (s *Store) queryUnmatched(ctx context.Context, q string, args ...any) ([]aggregate.Unmatched, error) {
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read unmatched usage: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []aggregate.Unmatched
	for rows.Next() {
		var u aggregate.Unmatched
		var hour, from, to, found, resolved int64
		var state string
		if err := rows.Scan(&u.ID, &u.Meter, &u.Subject, &hour, &from, &to, &u.SeqAfter, &u.SeqUpTo, &u.Events, &u.Quantity,
			&state, &u.InstanceID, &found, &resolved, &u.Reason); err != nil {
			return nil, fmt.Errorf("read unmatched usage: %w", err)
		}
		u.Hour, u.From, u.To = time.UnixMilli(hour).UTC(), time.UnixMilli(from).UTC(), time.UnixMilli(to).UTC()
		u.FoundAt = time.UnixMilli(found).UTC()
		if resolved != 0 {
			u.Resolved = time.UnixMilli(resolved).UTC()
		}
		u.State = aggregate.UnmatchedState(state)
		out = append(out, u)
	}
	return out, rows.Err()
}

// CommitClose writes everything a close decided under a new close id, the hour_closes marker last: until the
// marker is written none of it is visible, and a crash before it leaves rows that no reader will ever see.
func (s *Store) CommitClose(ctx context.Context, c *aggregate.ClosedHour) error {
	s.imu.Lock()
	defer s.imu.Unlock()
	if _, ok, err := s.GetClose(ctx, c.Hour); err != nil {
		return err
	} else if ok {
		return ErrAlreadyClosed
	}
	var maxClose, maxUnmatched int64
	if err := s.conn.QueryRow(ctx, `SELECT (SELECT max(close_id) FROM hour_closes), (SELECT max(id) FROM unmatched_usage)`).Scan(&maxClose, &maxUnmatched); err != nil {
		return fmt.Errorf("read close ids: %w", err)
	}
	// Close ids grow in commit order (readers list late usage and write-offs in that order).
	closeID := max(time.Now().UnixNano(), maxClose+1)

	if len(c.Rows) > 0 {
		if err := s.insert(ctx, `INSERT INTO usage_hours (close_id, instance_id, hour_ms, meter, aggregation, sku, begin_ms, end_ms, events,
quantity, late_events, late_quantity, unit_scale, carry_in, usage_value, carry_out)`, len(c.Rows), func(b driver.Batch, i int) error {
			r := c.Rows[i]
			return b.Append(closeID, r.InstanceID, r.Hour.UnixMilli(), r.Meter, r.Aggregation, r.SKU, r.Begin.UnixMilli(), r.End.UnixMilli(),
				r.Events, r.Quantity, r.LateEvents, r.LateQuantity, r.UnitScale, r.CarryIn, r.UsageValue, r.CarryOut)
		}); err != nil {
			return fmt.Errorf("insert usage rows: %w", err)
		}
	}
	if len(c.Late) > 0 {
		if err := s.insert(ctx, `INSERT INTO late_usage (close_id, ord, close_hour_ms, meter, subject, origin_hour_ms, instance_id, events,
quantity, action, reason)`, len(c.Late), func(b driver.Batch, i int) error {
			l := c.Late[i]
			return b.Append(closeID, int64(i), l.CloseHour.UnixMilli(), l.Meter, l.Subject, l.OriginHour.UnixMilli(), l.InstanceID, l.Events,
				l.Quantity, string(l.Action), l.Reason)
		}); err != nil {
			return fmt.Errorf("insert late usage: %w", err)
		}
	}
	if len(c.Unmatched) > 0 {
		held := map[int64]bool{}
		current, err := s.HeldUnmatched(ctx)
		if err != nil {
			return err
		}
		for _, u := range current {
			held[u.ID] = true
		}
		next := maxUnmatched
		if err := s.insert(ctx, `INSERT INTO unmatched_usage (id, version, close_id, meter, subject, hour_ms, from_ms, to_ms, seq_after, seq_upto,
events, quantity, state, instance_id, found_hour_ms, resolved_hour_ms, reason)`, len(c.Unmatched), func(b driver.Batch, i int) error {
			u := c.Unmatched[i]
			id := u.ID
			var resolved int64
			if id == 0 {
				next++
				id = next
			} else {
				if !held[id] {
					return fmt.Errorf("update unmatched usage %d: no longer held", id)
				}
				resolved = u.Resolved.UnixMilli()
			}
			return b.Append(id, closeID, closeID, u.Meter, u.Subject, u.Hour.UnixMilli(), u.From.UnixMilli(), u.To.UnixMilli(), u.SeqAfter,
				u.SeqUpTo, u.Events, u.Quantity, string(u.State), u.InstanceID, u.FoundAt.UnixMilli(), resolved, u.Reason)
		}); err != nil {
			return fmt.Errorf("insert unmatched usage: %w", err)
		}
	}
	if len(c.WriteOffs) > 0 {
		if err := s.insert(ctx, `INSERT INTO write_offs (close_id, ord, instance_id, meter, close_hour_ms, origin_hour_ms, usage, kind, reason)`,
			len(c.WriteOffs), func(b driver.Batch, i int) error {
				w := c.WriteOffs[i]
				return b.Append(closeID, int64(i), w.InstanceID, w.Meter, w.CloseHour.UnixMilli(), w.OriginHour.UnixMilli(), w.Usage,
					string(w.Kind), w.Reason)
			}); err != nil {
			return fmt.Errorf("insert write-offs: %w", err)
		}
	}
	var forced uint8
	if c.Forced {
		forced = 1
	}
	if err := s.insert(ctx, `INSERT INTO hour_closes (close_id, `+closeColumns+`)`, 1, func(b driver.Batch, _ int) error {
		return b.Append(closeID, c.Hour.UnixMilli(), c.Snapshot, c.PrevSnapshot, c.ClosedAt.UnixMilli(), forced, int64(len(c.Rows)))
	}); err != nil {
		return fmt.Errorf("write close marker: %w", err)
	}
	return nil
}

// insert sends n rows appended by row as one batch.
func (s *Store) insert(ctx context.Context, query string, n int, row func(b driver.Batch, i int) error) error {
	b, err := s.conn.PrepareBatch(ctx, query)
	if err != nil {
		return err
	}
	for i := range n {
		if err := row(b, i); err != nil {
			return errors.Join(err, b.Abort())
		}
	}
	return b.Send()
}

const rowColumns = `instance_id, hour_ms, meter, aggregation, sku, begin_ms, end_ms, events, quantity, late_events, late_quantity,
unit_scale, carry_in, usage_value, carry_out`

// UsageRows returns closed instance-hours in [q.From, q.To), optionally of one instance.
func (s *Store) UsageRows(ctx context.Context, q aggregate.UsageQuery) ([]aggregate.Row, error) {
	query := `SELECT ` + rowColumns + ` FROM usage_hours WHERE ` + committed + ` AND hour_ms >= ? AND hour_ms < ?`
	args := []any{q.From.UnixMilli(), q.To.UnixMilli()}
	if q.InstanceID != "" {
		query += " AND instance_id = ?"
		args = append(args, q.InstanceID)
	}
	query += " ORDER BY instance_id, hour_ms"
	rows, err := s.conn.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage rows: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []aggregate.Row
	for rows.Next() {
		var r aggregate.Row
		var hour, begin, end int64
		if err := rows.Scan(&r.InstanceID, &hour, &r.Meter, &r.Aggregation, &r.SKU, &begin, &end, &r.Events, &r.Quantity, &r.LateEvents,
			&r.LateQuantity, &r.UnitScale, &r.CarryIn, &r.UsageValue, &r.CarryOut); err != nil {
			return nil, fmt.Errorf("read usage row: %w", err)
		}
		r.Hour, r.Begin, r.End = time.UnixMilli(hour).UTC(), time.UnixMilli(begin).UTC(), time.UnixMilli(end).UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}

// ListLate returns the late usage found by closes of hours in [from, to), in commit order.
func (s *Store) ListLate(ctx context.Context, from, to time.Time) ([]aggregate.Late, error) {
	rows, err := s.conn.Query(ctx, `SELECT close_hour_ms, meter, subject, origin_hour_ms, instance_id, events, quantity, action, reason
FROM late_usage WHERE `+committed+` AND close_hour_ms >= ? AND close_hour_ms < ? ORDER BY close_id, ord`, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read late usage: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []aggregate.Late
	for rows.Next() {
		var l aggregate.Late
		var closeMs, originMs int64
		var action string
		if err := rows.Scan(&closeMs, &l.Meter, &l.Subject, &originMs, &l.InstanceID, &l.Events, &l.Quantity, &action, &l.Reason); err != nil {
			return nil, fmt.Errorf("read late usage: %w", err)
		}
		l.CloseHour, l.OriginHour, l.Action = time.UnixMilli(closeMs).UTC(), time.UnixMilli(originMs).UTC(), aggregate.LateAction(action)
		out = append(out, l)
	}
	return out, rows.Err()
}

// ListWriteOffs returns the write-offs made by closes of hours in [from, to), in commit order.
func (s *Store) ListWriteOffs(ctx context.Context, from, to time.Time) ([]aggregate.WriteOff, error) {
	rows, err := s.conn.Query(ctx, `SELECT instance_id, meter, close_hour_ms, origin_hour_ms, usage, kind, reason FROM write_offs
WHERE `+committed+` AND close_hour_ms >= ? AND close_hour_ms < ? ORDER BY close_id, ord`, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read write-offs: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []aggregate.WriteOff
	for rows.Next() {
		var w aggregate.WriteOff
		var closeMs, originMs int64
		var kind string
		if err := rows.Scan(&w.InstanceID, &w.Meter, &closeMs, &originMs, &w.Usage, &kind, &w.Reason); err != nil {
			return nil, fmt.Errorf("read write-offs: %w", err)
		}
		w.CloseHour, w.OriginHour, w.Kind = time.UnixMilli(closeMs).UTC(), time.UnixMilli(originMs).UTC(), aggregate.WriteOffKind(kind)
		out = append(out, w)
	}
	return out, rows.Err()
}

// ListRejected returns the newest dead letters first (ingest.RejectedLister).
func (s *Store) ListRejected(ctx context.Context, limit int) ([]ingest.Rejection, error) {
	rows, err := s.conn.Query(ctx, `SELECT source, id, code, reason, event, existing, received_ms FROM dead_letters ORDER BY n DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []ingest.Rejection
	for rows.Next() {
		var r ingest.Rejection
		var code, event string
		var existing *string
		var ms int64
		if err := rows.Scan(&r.Source, &r.ID, &code, &r.Reason, &event, &existing, &ms); err != nil {
			return nil, fmt.Errorf("read dead letter: %w", err)
		}
		r.Code = ingest.Code(code)
		r.Event = []byte(event)
		if existing != nil {
			r.Existing = []byte(*existing)
		}
		r.ReceivedAt = time.UnixMilli(ms).UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}
