package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
)

var _ aggregate.Store = (*Store)(nil)

// ErrAlreadyClosed is returned by CommitClose when another process closed the hour first; nothing was written.
var ErrAlreadyClosed = errors.New("hour already closed")

const hourMs = int64(time.Hour / time.Millisecond)

// EarliestEventTime returns the time of the earliest stored event with seq <= seqUpTo.
func (s *Store) EarliestEventTime(ctx context.Context, seqUpTo int64) (time.Time, bool, error) {
	var ms sql.NullInt64
	if err := s.read.QueryRowContext(ctx, `SELECT min(time_ms) FROM event_values WHERE seq <= ?`, seqUpTo).Scan(&ms); err != nil {
		return time.Time{}, false, fmt.Errorf("read earliest event time: %w", err)
	}
	if !ms.Valid {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(ms.Int64).UTC(), true, nil
}

// totalsSQL builds the query of aggregate.Totals. Kept apart so that its exact text is tested.
//
// The rows are those the close always selected (the time range, the ingest sequence bounds of the snapshot, the
// meters, the subject), handed to an hour_totals_* aggregate (totalsfn.go) that groups them by (meter, subject,
// hour) in a hash map: a GROUP BY had SQLite sort every row of the hour first.
func totalsSQL(q aggregate.TotalsQuery) (string, []any, error) {
	fn, ok := totalsFunction(q.Kind)
	if !ok {
		return "", nil, fmt.Errorf("unknown totals kind %q", q.Kind)
	}
	if len(q.Meters) == 0 {
		return "", nil, errors.New("totals: no meters")
	}
	from, to := q.From.UnixMilli(), q.To.UnixMilli()
	var b strings.Builder
	var args []any
	if q.To.Sub(q.From) > 24*time.Hour {
		// A query over a wide time range (late usage: everything before the hour, stored since the last close) is
		// driven by the ingest sequence, which bounds it to the events of one hour of ingest; the unary + keeps
		// SQLite from choosing the time index, which would read all of history.
		fmt.Fprintf(&b, "SELECT %s(meter, subject, time_ms, value) FROM event_values WHERE +time_ms >= ? AND +time_ms < ? AND seq > ? AND seq <= ?", fn)
		args = append(args, from, to, q.SeqAfter, q.SeqUpTo)
	} else {
		// An hour (or part of one) is read in sequence order, from the first to the last sequence of its events
		// within the query's bounds, which the time index gives without reading a row. Left alone, SQLite reads
		// the query's whole sequence range, all of history before the snapshot for an on-time close (about 3 s
		// for an hour of 100,000 events under 10M newer ones, against 0.5 s); reading the hour through the time
		// index instead fetches each row by its key, about 1.5 times as long as reading the range in order (10M
		// events, measured).
		fmt.Fprintf(&b, "WITH r AS (SELECT max(min(seq), ? + 1) AS lo, min(max(seq), ?) AS hi FROM event_values WHERE time_ms >= ? AND time_ms < ?) "+
			"SELECT %s(meter, subject, time_ms, value) FROM r, event_values WHERE seq >= r.lo AND seq <= r.hi AND +time_ms >= ? AND +time_ms < ?", fn)
		args = append(args, q.SeqAfter, q.SeqUpTo, from, to, from, to)
	}
	fmt.Fprintf(&b, " AND meter IN (?%s)", strings.Repeat(", ?", len(q.Meters)-1))
	for _, m := range q.Meters {
		args = append(args, m)
	}
	if q.Subject != "" {
		b.WriteString(" AND subject = ?")
		args = append(args, q.Subject)
	}
	return b.String(), args, nil
}

// Totals computes exact totals of stored meter values (aggregate.Store), ordered by (meter, subject, hour).
func (s *Store) Totals(ctx context.Context, q aggregate.TotalsQuery) ([]aggregate.Total, error) {
	query, args, err := totalsSQL(q)
	if err != nil {
		return nil, err
	}
	var groups []byte
	if err := s.read.QueryRowContext(ctx, query, args...).Scan(&groups); err != nil {
		return nil, fmt.Errorf("query totals: %w", err)
	}
	return decodeTotals(groups)
}

const closeColumns = `hour_ms, snapshot_seq, prev_snapshot_seq, closed_ms, forced, rows_count`

func scanClose(row interface{ Scan(...any) error }) (aggregate.CloseMark, bool, error) {
	var m aggregate.CloseMark
	var hour, closed int64
	err := row.Scan(&hour, &m.Snapshot, &m.PrevSnapshot, &closed, &m.Forced, &m.Rows)
	if errors.Is(err, sql.ErrNoRows) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read hour close: %w", err)
	}
	m.Hour, m.ClosedAt = time.UnixMilli(hour).UTC(), time.UnixMilli(closed).UTC()
	return m, true, nil
}

// LastClose returns the most recent closed hour.
func (s *Store) LastClose(ctx context.Context) (aggregate.CloseMark, bool, error) {
	return scanClose(s.read.QueryRowContext(ctx, `SELECT `+closeColumns+` FROM hour_closes ORDER BY hour_ms DESC LIMIT 1`))
}

// GetClose returns the record of a closed hour.
func (s *Store) GetClose(ctx context.Context, hour time.Time) (aggregate.CloseMark, bool, error) {
	return scanClose(s.read.QueryRowContext(ctx, `SELECT `+closeColumns+` FROM hour_closes WHERE hour_ms = ?`, hour.UnixMilli()))
}

// Carries returns the carry of every instance's last closed row before the hour.
func (s *Store) Carries(ctx context.Context, before time.Time) (map[string]aggregate.Carry, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT instance_id, hour_ms, carry_out, release_written_off FROM instance_carry WHERE hour_ms < ?`, before.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read carries: %w", err)
	}
	defer rows.Close()
	out := map[string]aggregate.Carry{}
	for rows.Next() {
		var id, carry string
		var hour int64
		var c aggregate.Carry
		if err := rows.Scan(&id, &hour, &carry, &c.ReleaseWrittenOff); err != nil {
			return nil, fmt.Errorf("read carries: %w", err)
		}
		c.Hour = time.UnixMilli(hour).UTC()
		if c.CarryOut, err = decimal.NewFromString(carry); err != nil {
			return nil, fmt.Errorf("read carry of %s: %w", id, err)
		}
		out[id] = c
	}
	return out, rows.Err()
}

const unmatchedColumns = `id, meter, subject, hour_ms, from_ms, to_ms, seq_after, seq_upto, events, quantity, state, coalesce(instance_id, ''), found_hour_ms, coalesce(resolved_hour_ms, 0), reason`

// HeldUnmatched returns the unmatched usage still held.
func (s *Store) HeldUnmatched(ctx context.Context) ([]aggregate.Unmatched, error) {
	return s.queryUnmatched(ctx, `SELECT `+unmatchedColumns+` FROM unmatched_usage WHERE state = 'HELD' ORDER BY id`)
}

// ListUnmatched returns unmatched usage found by closes of hours in [from, to), in any state.
func (s *Store) ListUnmatched(ctx context.Context, from, to time.Time) ([]aggregate.Unmatched, error) {
	return s.queryUnmatched(ctx, `SELECT `+unmatchedColumns+` FROM unmatched_usage WHERE hour_ms >= ? AND hour_ms < ? ORDER BY id`,
		from.UnixMilli(), to.UnixMilli())
}

func (s *Store) queryUnmatched(ctx context.Context, q string, args ...any) ([]aggregate.Unmatched, error) {
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read unmatched usage: %w", err)
	}
	defer rows.Close()
	var out []aggregate.Unmatched
	for rows.Next() {
		var u aggregate.Unmatched
		var hour, from, to, found, resolved int64
		var qty, state string
		if err := rows.Scan(&u.ID, &u.Meter, &u.Subject, &hour, &from, &to, &u.SeqAfter, &u.SeqUpTo, &u.Events, &qty,
			&state, &u.InstanceID, &found, &resolved, &u.Reason); err != nil {
			return nil, fmt.Errorf("read unmatched usage: %w", err)
		}
		u.Hour, u.From, u.To = time.UnixMilli(hour).UTC(), time.UnixMilli(from).UTC(), time.UnixMilli(to).UTC()
		u.FoundAt = time.UnixMilli(found).UTC()
		if resolved != 0 {
			u.Resolved = time.UnixMilli(resolved).UTC()
		}
		u.State = aggregate.UnmatchedState(state)
		if u.Quantity, err = decimal.NewFromString(qty); err != nil {
			return nil, fmt.Errorf("read unmatched usage %d: %w", u.ID, err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// closeChunkRows is how many instance-hours one statement of CommitClose writes: 64 rows x 15 columns stays far
// below SQLite's limit of bound parameters.
const (
	closeChunkRows = 64
	usageColumns   = 15
	carryColumns   = 4
)

func insertUsageSQL(rows int) string {
	return `INSERT INTO usage_hours (instance_id, hour_ms, meter, aggregation, sku, begin_ms, end_ms, events, quantity, late_events,
late_quantity, unit_scale, carry_in, usage_value, carry_out) VALUES ` + placeholders(rows, usageColumns)
}

// upsertCarrySQL sets the carry of each instance to that of its row; release_written_off is only ever set by
// a release write-off, and new rows start without one.
func upsertCarrySQL(rows int) string {
	return `INSERT INTO instance_carry (instance_id, hour_ms, carry_out, release_written_off) VALUES ` + placeholders(rows, carryColumns) +
		` ON CONFLICT (instance_id) DO UPDATE SET hour_ms = excluded.hour_ms, carry_out = excluded.carry_out`
}

// CommitClose writes everything a close decided in one transaction, the hour_closes marker last: a crash at any
// point leaves the hour either fully closed or not closed at all.
func (s *Store) CommitClose(ctx context.Context, c *aggregate.ClosedHour) (err error) {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin close transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var exists int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM hour_closes WHERE hour_ms = ?`, c.Hour.UnixMilli()).Scan(&exists); err != nil {
		return fmt.Errorf("check hour close: %w", err)
	}
	if exists > 0 {
		return ErrAlreadyClosed
	}
	// Prepared once per close: parsing the SQL for each of the 100,000 instances of an hour was a third of the
	// close (bench/close.sh profile). Rows go closeChunkRows to a statement: one execution per row left the cost of
	// the executions themselves (database/sql and the driver) at a third of CommitClose (profile).
	insertUsage, err := tx.PrepareContext(ctx, insertUsageSQL(closeChunkRows))
	if err != nil {
		return fmt.Errorf("prepare usage rows: %w", err)
	}
	defer insertUsage.Close()
	upsertCarry, err := tx.PrepareContext(ctx, upsertCarrySQL(closeChunkRows))
	if err != nil {
		return fmt.Errorf("prepare carries: %w", err)
	}
	defer upsertCarry.Close()
	usage := make([]any, 0, closeChunkRows*usageColumns)
	carry := make([]any, 0, closeChunkRows*carryColumns)
	for start := 0; start < len(c.Rows); start += closeChunkRows {
		chunk := c.Rows[start:min(start+closeChunkRows, len(c.Rows))]
		usage, carry = usage[:0], carry[:0]
		for _, r := range chunk {
			usage = append(usage, r.InstanceID, r.Hour.UnixMilli(), r.Meter, r.Aggregation, r.SKU, r.Begin.UnixMilli(), r.End.UnixMilli(),
				r.Events, r.Quantity.String(), r.LateEvents, r.LateQuantity.String(), r.UnitScale.String(), r.CarryIn.String(),
				r.UsageValue.String(), r.CarryOut.String())
			carry = append(carry, r.InstanceID, r.Hour.UnixMilli(), r.CarryOut.String(), 0)
		}
		first, last := chunk[0].InstanceID, chunk[len(chunk)-1].InstanceID
		if len(chunk) == closeChunkRows {
			_, err = insertUsage.ExecContext(ctx, usage...)
		} else {
			_, err = tx.ExecContext(ctx, insertUsageSQL(len(chunk)), usage...)
		}
		if err != nil {
			return fmt.Errorf("insert usage rows (%s .. %s, %s): %w", first, last, c.Hour.Format(time.RFC3339), err)
		}
		if len(chunk) == closeChunkRows {
			_, err = upsertCarry.ExecContext(ctx, carry...)
		} else {
			_, err = tx.ExecContext(ctx, upsertCarrySQL(len(chunk)), carry...)
		}
		if err != nil {
			return fmt.Errorf("update carries (%s .. %s): %w", first, last, err)
		}
	}
	for _, l := range c.Late {
		if _, err := tx.ExecContext(ctx, `INSERT INTO late_usage (close_hour_ms, meter, subject, origin_hour_ms, instance_id,
events, quantity, action, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			l.CloseHour.UnixMilli(), l.Meter, l.Subject, l.OriginHour.UnixMilli(), nullString(l.InstanceID), l.Events,
			l.Quantity.String(), string(l.Action), l.Reason); err != nil {
			return fmt.Errorf("insert late usage: %w", err)
		}
	}
	for _, u := range c.Unmatched {
		if u.ID == 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO unmatched_usage (meter, subject, hour_ms, from_ms, to_ms, seq_after, seq_upto,
events, quantity, state, instance_id, found_hour_ms, resolved_hour_ms, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL, ?)`,
				u.Meter, u.Subject, u.Hour.UnixMilli(), u.From.UnixMilli(), u.To.UnixMilli(), u.SeqAfter, u.SeqUpTo, u.Events,
				u.Quantity.String(), string(u.State), u.FoundAt.UnixMilli(), u.Reason); err != nil {
				return fmt.Errorf("insert unmatched usage: %w", err)
			}
			continue
		}
		res, err := tx.ExecContext(ctx, `UPDATE unmatched_usage SET state = ?, instance_id = ?, resolved_hour_ms = ?, reason = ?
WHERE id = ? AND state = 'HELD'`, string(u.State), nullString(u.InstanceID), u.Resolved.UnixMilli(), u.Reason, u.ID)
		if err != nil {
			return fmt.Errorf("update unmatched usage %d: %w", u.ID, err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("update unmatched usage %d: no longer held", u.ID)
		}
	}
	for _, w := range c.WriteOffs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO write_offs (instance_id, meter, close_hour_ms, origin_hour_ms, usage, kind, reason)
VALUES (?, ?, ?, ?, ?, ?, ?)`, w.InstanceID, w.Meter, w.CloseHour.UnixMilli(), w.OriginHour.UnixMilli(), w.Usage.String(),
			string(w.Kind), w.Reason); err != nil {
			return fmt.Errorf("insert write-off: %w", err)
		}
		if w.Kind == aggregate.WriteOffReleaseRemainder {
			if _, err := tx.ExecContext(ctx, `UPDATE instance_carry SET release_written_off = 1 WHERE instance_id = ?`, w.InstanceID); err != nil {
				return fmt.Errorf("mark release write-off of %s: %w", w.InstanceID, err)
			}
		}
	}
	forced := 0
	if c.Forced {
		forced = 1
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO hour_closes (`+closeColumns+`) VALUES (?, ?, ?, ?, ?, ?)`,
		c.Hour.UnixMilli(), c.Snapshot, c.PrevSnapshot, c.ClosedAt.UnixMilli(), forced, len(c.Rows)); err != nil {
		return fmt.Errorf("write close marker: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit close: %w", err)
	}
	return nil
}

// UsageRows returns closed instance-hours in [q.From, q.To), optionally of one instance.
func (s *Store) UsageRows(ctx context.Context, q aggregate.UsageQuery) ([]aggregate.Row, error) {
	query := `SELECT ` + rowColumns + ` FROM usage_hours u WHERE u.hour_ms >= ? AND u.hour_ms < ?`
	args := []any{q.From.UnixMilli(), q.To.UnixMilli()}
	if q.InstanceID != "" {
		query += " AND u.instance_id = ?"
		args = append(args, q.InstanceID)
	}
	query += " ORDER BY u.instance_id, u.hour_ms"
	rows, err := s.read.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage rows: %w", err)
	}
	defer rows.Close()
	return scanRows(rows)
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// ListLate returns the late usage found by closes of hours in [from, to).
func (s *Store) ListLate(ctx context.Context, from, to time.Time) ([]aggregate.Late, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT close_hour_ms, meter, subject, origin_hour_ms, coalesce(instance_id, ''), events,
quantity, action, reason FROM late_usage WHERE close_hour_ms >= ? AND close_hour_ms < ? ORDER BY rowid`, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read late usage: %w", err)
	}
	defer rows.Close()
	var out []aggregate.Late
	for rows.Next() {
		var l aggregate.Late
		var closeMs, originMs int64
		var qty, action string
		if err := rows.Scan(&closeMs, &l.Meter, &l.Subject, &originMs, &l.InstanceID, &l.Events, &qty, &action, &l.Reason); err != nil {
			return nil, fmt.Errorf("read late usage: %w", err)
		}
		l.CloseHour, l.OriginHour, l.Action = time.UnixMilli(closeMs).UTC(), time.UnixMilli(originMs).UTC(), aggregate.LateAction(action)
		if l.Quantity, err = decimal.NewFromString(qty); err != nil {
			return nil, fmt.Errorf("read late usage: %w", err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// ListWriteOffs returns the write-offs made by closes of hours in [from, to).
func (s *Store) ListWriteOffs(ctx context.Context, from, to time.Time) ([]aggregate.WriteOff, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT instance_id, meter, close_hour_ms, origin_hour_ms, usage, kind, reason FROM write_offs
WHERE close_hour_ms >= ? AND close_hour_ms < ? ORDER BY rowid`, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read write-offs: %w", err)
	}
	defer rows.Close()
	var out []aggregate.WriteOff
	for rows.Next() {
		var w aggregate.WriteOff
		var closeMs, originMs int64
		var usage, kind string
		if err := rows.Scan(&w.InstanceID, &w.Meter, &closeMs, &originMs, &usage, &kind, &w.Reason); err != nil {
			return nil, fmt.Errorf("read write-offs: %w", err)
		}
		w.CloseHour, w.OriginHour, w.Kind = time.UnixMilli(closeMs).UTC(), time.UnixMilli(originMs).UTC(), aggregate.WriteOffKind(kind)
		if w.Usage, err = decimal.NewFromString(usage); err != nil {
			return nil, fmt.Errorf("read write-offs: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}
