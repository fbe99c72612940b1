package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/report"
)

var _ report.Ledger = (*Store)(nil)

// AcquireLease takes or renews the push lease (report.Ledger). Taking it from another holder whose lease has
// expired increments the epoch; renewing keeps it.
func (s *Store) AcquireLease(ctx context.Context, holder string, now time.Time, ttl time.Duration) (report.Lease, bool, error) {
	var lease report.Lease
	ok := false
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var expires int64
		err := tx.QueryRowContext(ctx, `SELECT holder, epoch, expires_ms FROM push_lease WHERE id = 1`).Scan(&lease.Holder, &lease.Epoch, &expires)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			lease = report.Lease{Holder: holder, Epoch: 1, Expires: now.Add(ttl)}
			_, err = tx.ExecContext(ctx, `INSERT INTO push_lease (id, holder, epoch, expires_ms) VALUES (1, ?, 1, ?)`, holder, lease.Expires.UnixMilli())
			ok = err == nil
			return err
		case err != nil:
			return err
		}
		lease.Expires = time.UnixMilli(expires).UTC()
		switch {
		case lease.Holder == holder:
		case !now.Before(lease.Expires):
			lease.Holder, lease.Epoch = holder, lease.Epoch+1
		default:
			return nil // someone else holds it
		}
		lease.Expires = now.Add(ttl)
		_, err = tx.ExecContext(ctx, `UPDATE push_lease SET holder = ?, epoch = ?, expires_ms = ? WHERE id = 1`, lease.Holder, lease.Epoch, lease.Expires.UnixMilli())
		ok = err == nil
		return err
	})
	if err != nil {
		return report.Lease{}, false, fmt.Errorf("push lease: %w", err)
	}
	return lease, ok, nil
}

// ReleaseLease ends holder's lease at once, if it still holds it under epoch.
func (s *Store) ReleaseLease(ctx context.Context, holder string, epoch int64) error {
	_, err := s.write.ExecContext(ctx, `UPDATE push_lease SET expires_ms = 0 WHERE id = 1 AND holder = ? AND epoch = ?`, holder, epoch)
	if err != nil {
		return fmt.Errorf("release push lease: %w", err)
	}
	return nil
}

// writeTx runs fn in a write transaction, committed when fn returns nil.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return errors.Join(err, tx.Rollback())
	}
	return tx.Commit()
}

// fenced runs fn in a write transaction only if epoch is the lease's current epoch: a scheduler that lost the
// lease gets report.ErrStaleEpoch and writes nothing.
func (s *Store) fenced(ctx context.Context, epoch int64, fn func(tx *sql.Tx) error) error {
	return s.writeTx(ctx, func(tx *sql.Tx) error {
		var current int64
		if err := tx.QueryRowContext(ctx, `SELECT epoch FROM push_lease WHERE id = 1`).Scan(&current); err != nil {
			return fmt.Errorf("read lease epoch: %w", err)
		}
		if current != epoch {
			return fmt.Errorf("%w (mine %d, current %d)", report.ErrStaleEpoch, epoch, current)
		}
		return fn(tx)
	})
}

const rowColumns = `u.instance_id, u.hour_ms, u.meter, u.aggregation, u.sku, u.begin_ms, u.end_ms, u.events, u.quantity,
u.late_events, u.late_quantity, u.unit_scale, u.carry_in, u.usage_value, u.carry_out`

// UnbuiltRows returns closed instance-hours with usage and no SDR yet. Hours close in order and are built in
// order, so only hours from the newest one with an SDR onwards can hold unbuilt rows: the scan starts there
// instead of reading all of usage_hours.
func (s *Store) UnbuiltRows(ctx context.Context, afterHour time.Time, afterInstance string, limit int) ([]aggregate.Row, error) {
	var from int64
	if err := s.read.QueryRowContext(ctx, `SELECT coalesce(max(hour_ms), 0) FROM sdrs WHERE revision = 0`).Scan(&from); err != nil {
		return nil, fmt.Errorf("read SDR build position: %w", err)
	}
	after := int64(-1) << 62
	if !afterHour.IsZero() {
		after = afterHour.UnixMilli()
	}
	rows, err := s.read.QueryContext(ctx, `SELECT `+rowColumns+` FROM usage_hours u WHERE u.hour_ms >= ? AND (u.hour_ms, u.instance_id) > (?, ?)
AND u.usage_value != '0' AND NOT EXISTS (SELECT 1 FROM sdrs s WHERE s.instance_id = u.instance_id AND s.hour_ms = u.hour_ms)
ORDER BY u.hour_ms, u.instance_id LIMIT ?`, from, after, afterInstance, limit)
	if err != nil {
		return nil, fmt.Errorf("read unbuilt rows: %w", err)
	}
	defer rows.Close()
	return scanRows(rows)
}

func scanRows(rows *sql.Rows) ([]aggregate.Row, error) {
	var out []aggregate.Row
	for rows.Next() {
		var r aggregate.Row
		var hour, begin, end int64
		var dec [6]string
		if err := rows.Scan(&r.InstanceID, &hour, &r.Meter, &r.Aggregation, &r.SKU, &begin, &end, &r.Events, &dec[0],
			&r.LateEvents, &dec[1], &dec[2], &dec[3], &dec[4], &dec[5]); err != nil {
			return nil, fmt.Errorf("read usage row: %w", err)
		}
		r.Hour, r.Begin, r.End = time.UnixMilli(hour).UTC(), time.UnixMilli(begin).UTC(), time.UnixMilli(end).UTC()
		targets := []*decimal.Decimal{&r.Quantity, &r.LateQuantity, &r.UnitScale, &r.CarryIn, &r.UsageValue, &r.CarryOut}
		for i, t := range targets {
			var err error
			if *t, err = decimal.NewFromString(dec[i]); err != nil {
				return nil, fmt.Errorf("read usage row (%s): %w", r.InstanceID, err)
			}
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PeriodUsage sums the usage of an instance's SDRs in [from, to) that count for step pricing.
func (s *Store) PeriodUsage(ctx context.Context, instanceID string, from, to time.Time) (decimal.Decimal, error) {
	var sum sql.NullString
	if err := s.read.QueryRowContext(ctx, `SELECT decimal_sum(usage_value) FROM sdrs WHERE instance_id = ? AND hour_ms >= ? AND hour_ms < ?
AND state NOT IN ('REJECTED', 'EXPIRED', 'ASYNC_REJECTED')`, instanceID, from.UnixMilli(), to.UnixMilli()).Scan(&sum); err != nil {
		return decimal.Zero, fmt.Errorf("read period usage of %s: %w", instanceID, err)
	}
	if !sum.Valid {
		return decimal.Zero, nil
	}
	return decimal.NewFromString(sum.String)
}

// InsertSDRs adds built SDRs; an SDR already in the ledger is left as it is.
func (s *Store) InsertSDRs(ctx context.Context, epoch int64, sdrs []report.SDR) error {
	now := s.opts.Now().UnixMilli()
	return s.fenced(ctx, epoch, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO sdrs (metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms,
begin_ms, end_ms, usage_value, amount, currency, relate_pkg_instance, body, state, reason, due_ms, epoch, created_ms, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, d := range sdrs {
			if _, err := stmt.ExecContext(ctx, d.MeteringSN, d.InstanceID, d.Hour.UnixMilli(), d.Revision, d.Meter, d.SKU,
				d.RecordTime.UnixMilli(), d.Begin.UnixMilli(), d.End.UnixMilli(), d.UsageValue.String(), d.Amount.String(), d.Currency,
				nullString(d.RelatePkgInstance), d.Body, string(d.State), d.Reason, d.Due.UnixMilli(), epoch, now, now); err != nil {
				return fmt.Errorf("insert SDR %s: %w", d.MeteringSN, err)
			}
		}
		return nil
	})
}

const sdrColumns = `metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms, begin_ms, end_ms, usage_value, amount,
currency, coalesce(relate_pkg_instance, ''), body, state, last_code, reason, due_ms, unknown_attempts, attempts, next_attempt_ms,
coalesce(accepted_ms, 0), epoch`

func scanSDRs(rows *sql.Rows) ([]report.SDR, error) {
	defer rows.Close()
	var out []report.SDR
	for rows.Next() {
		var d report.SDR
		var hour, rec, begin, end, due, next, accepted int64
		var usage, amount, state string
		if err := rows.Scan(&d.MeteringSN, &d.InstanceID, &hour, &d.Revision, &d.Meter, &d.SKU, &rec, &begin, &end, &usage, &amount,
			&d.Currency, &d.RelatePkgInstance, &d.Body, &state, &d.LastCode, &d.Reason, &due, &d.UnknownAttempts, &d.Attempts,
			&next, &accepted, &d.Epoch); err != nil {
			return nil, fmt.Errorf("read SDR: %w", err)
		}
		d.Hour, d.RecordTime = time.UnixMilli(hour).UTC(), time.UnixMilli(rec).UTC()
		d.Begin, d.End, d.Due = time.UnixMilli(begin).UTC(), time.UnixMilli(end).UTC(), time.UnixMilli(due).UTC()
		d.NextAttempt = time.UnixMilli(next).UTC()
		if accepted != 0 {
			d.AcceptedAt = time.UnixMilli(accepted).UTC()
		}
		d.State = report.State(state)
		var err error
		if d.UsageValue, err = decimal.NewFromString(usage); err != nil {
			return nil, fmt.Errorf("read SDR %s: %w", d.MeteringSN, err)
		}
		if d.Amount, err = decimal.NewFromString(amount); err != nil {
			return nil, fmt.Errorf("read SDR %s: %w", d.MeteringSN, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// Pushable returns SDRs due for an attempt, oldest hour first.
func (s *Store) Pushable(ctx context.Context, now time.Time, limit int) ([]report.SDR, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+sdrColumns+` FROM sdrs WHERE state IN ('PENDING', 'SENT') AND next_attempt_ms <= ?
ORDER BY hour_ms, instance_id LIMIT ?`, now.UnixMilli(), limit)
	if err != nil {
		return nil, fmt.Errorf("read pushable SDRs: %w", err)
	}
	return scanSDRs(rows)
}

func inList(n int) string { return "(?" + strings.Repeat(", ?", n-1) + ")" }

// MarkSending records one attempt of unknown outcome on each SDR before its batch is sent (write-ahead).
func (s *Store) MarkSending(ctx context.Context, epoch int64, sns []string, now time.Time) error {
	return s.fenced(ctx, epoch, func(tx *sql.Tx) error {
		for start := 0; start < len(sns); start += 500 {
			part := sns[start:min(start+500, len(sns))]
			args := []any{now.UnixMilli(), epoch}
			for _, sn := range part {
				args = append(args, sn)
			}
			// The unary + keeps SQLite on the primary key: with the state index it would scan every pending SDR for
			// each chunk (quadratic in the size of an hour: 100,000 SDRs took 91 s instead of seconds).
			if _, err := tx.ExecContext(ctx, `UPDATE sdrs SET state = 'SENT', unknown_attempts = unknown_attempts + 1,
attempts = attempts + 1, updated_ms = ?, epoch = ? WHERE metering_sn IN `+inList(len(part))+` AND +state IN ('PENDING', 'SENT')`, args...); err != nil {
				return fmt.Errorf("mark SDRs sending: %w", err)
			}
		}
		return nil
	})
}

// RecordAttempt logs an attempt for every SDR of its batch and applies the outcomes. Only SDRs still in PENDING
// or SENT change: a final state is never overwritten.
func (s *Store) RecordAttempt(ctx context.Context, epoch int64, a report.Attempt, sns []string, outs []report.Outcome) error {
	now := s.opts.Now().UnixMilli()
	return s.fenced(ctx, epoch, func(tx *sql.Tx) error {
		if len(sns) > 0 {
			stmt, err := tx.PrepareContext(ctx, `INSERT INTO sdr_attempts (metering_sn, at_ms, batch_id, records, http_status, code, class,
latency_ms, epoch, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
			if err != nil {
				return err
			}
			defer stmt.Close()
			for _, sn := range sns {
				if _, err := stmt.ExecContext(ctx, sn, a.At.UnixMilli(), a.BatchID, a.Records, a.HTTPStatus, a.Code, a.Class,
					a.Latency.Milliseconds(), epoch, a.Error); err != nil {
					return fmt.Errorf("insert attempt: %w", err)
				}
			}
		}
		upd, err := tx.PrepareContext(ctx, `UPDATE sdrs SET state = ?, last_code = ?, reason = ?,
unknown_attempts = max(0, unknown_attempts - ?), next_attempt_ms = ?, accepted_ms = coalesce(?, accepted_ms), epoch = ?, updated_ms = ?
WHERE metering_sn = ? AND +state IN ('PENDING', 'SENT')`)
		if err != nil {
			return err
		}
		defer upd.Close()
		for _, o := range outs {
			dec := 0
			if o.Definite {
				dec = 1
			}
			var accepted any
			if !o.AcceptedAt.IsZero() {
				accepted = o.AcceptedAt.UnixMilli()
			}
			if _, err := upd.ExecContext(ctx, string(o.State), o.Code, o.Reason, dec, o.NextAttempt.UnixMilli(), accepted, epoch,
				now, o.MeteringSN); err != nil {
				return fmt.Errorf("update SDR %s: %w", o.MeteringSN, err)
			}
		}
		return nil
	})
}

// Pauses returns whether pushing is paused globally and which instances are paused.
func (s *Store) Pauses(ctx context.Context) (bool, map[string]bool, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT scope FROM push_pauses`)
	if err != nil {
		return false, nil, fmt.Errorf("read pauses: %w", err)
	}
	defer rows.Close()
	global, inst := false, map[string]bool{}
	for rows.Next() {
		var scope string
		if err := rows.Scan(&scope); err != nil {
			return false, nil, err
		}
		if scope == "*" {
			global = true
		} else {
			inst[scope] = true
		}
	}
	return global, inst, rows.Err()
}

// SetPause pauses or resumes pushing, globally (instanceID "") or for one instance. Nothing is lost: paused SDRs
// stay in the ledger and go out when resumed.
func (s *Store) SetPause(ctx context.Context, instanceID string, paused bool, now time.Time) error {
	scope := instanceID
	if scope == "" {
		scope = "*"
	}
	var err error
	if paused {
		_, err = s.write.ExecContext(ctx, `INSERT INTO push_pauses (scope, paused_ms) VALUES (?, ?) ON CONFLICT DO NOTHING`, scope, now.UnixMilli())
	} else {
		_, err = s.write.ExecContext(ctx, `DELETE FROM push_pauses WHERE scope = ?`, scope)
	}
	if err != nil {
		return fmt.Errorf("set pause %s: %w", scope, err)
	}
	return nil
}

// StateCounts counts SDRs by state.
func (s *Store) StateCounts(ctx context.Context) (map[report.State]int, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT state, count(*) FROM sdrs GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count SDRs: %w", err)
	}
	defer rows.Close()
	out := map[report.State]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[report.State(st)] = n
	}
	return out, rows.Err()
}

// OldestUnaccepted returns the due time of the oldest SDR still to push and how many are past due, the SDRs of the
// instances in skip left out (report.Ledger).
func (s *Store) OldestUnaccepted(ctx context.Context, now time.Time, skip []string) (time.Time, int, error) {
	q := `SELECT min(due_ms), sum(due_ms < ?) FROM sdrs WHERE state IN ('PENDING', 'SENT')`
	args := []any{now.UnixMilli()}
	if len(skip) > 0 {
		// One JSON array, not a placeholder per instance: the list has no length limit this way.
		list, err := json.Marshal(skip)
		if err != nil {
			return time.Time{}, 0, err
		}
		q += ` AND instance_id NOT IN (SELECT value FROM json_each(?))`
		args = append(args, string(list))
	}
	var due sql.NullInt64
	var past sql.NullInt64
	if err := s.read.QueryRowContext(ctx, q, args...).Scan(&due, &past); err != nil {
		return time.Time{}, 0, fmt.Errorf("read oldest unaccepted SDR: %w", err)
	}
	if !due.Valid {
		return time.Time{}, 0, nil
	}
	return time.UnixMilli(due.Int64).UTC(), int(past.Int64), nil
}

// ListSDRs returns SDRs by state and hour range, oldest first.
func (s *Store) ListSDRs(ctx context.Context, f report.SDRFilter) ([]report.SDR, error) {
	q := `SELECT ` + sdrColumns + ` FROM sdrs WHERE hour_ms >= ? AND hour_ms < ?`
	args := []any{f.From.UnixMilli(), f.To.UnixMilli()}
	if f.State != "" {
		q += ` AND state = ?`
		args = append(args, string(f.State))
	}
	if f.InstanceID != "" {
		q += ` AND instance_id = ?`
		args = append(args, f.InstanceID)
	}
	q += ` ORDER BY hour_ms, instance_id, revision`
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list SDRs: %w", err)
	}
	return scanSDRs(rows)
}

// Attempts returns the attempts of the given SDRs, oldest first.
func (s *Store) Attempts(ctx context.Context, sns []string) (map[string][]report.Attempt, error) {
	out := map[string][]report.Attempt{}
	for start := 0; start < len(sns); start += 500 {
		part := sns[start:min(start+500, len(sns))]
		args := make([]any, len(part))
		for i, sn := range part {
			args[i] = sn
		}
		rows, err := s.read.QueryContext(ctx, `SELECT metering_sn, at_ms, batch_id, records, http_status, code, class, latency_ms, epoch, error
FROM sdr_attempts WHERE metering_sn IN `+inList(len(part))+` ORDER BY n`, args...)
		if err != nil {
			return nil, fmt.Errorf("read attempts: %w", err)
		}
		for rows.Next() {
			var a report.Attempt
			var at, lat int64
			if err := rows.Scan(&a.MeteringSN, &at, &a.BatchID, &a.Records, &a.HTTPStatus, &a.Code, &a.Class, &lat, &a.Epoch, &a.Error); err != nil {
				rows.Close()
				return nil, err
			}
			a.At, a.Latency = time.UnixMilli(at).UTC(), time.Duration(lat)*time.Millisecond
			out[a.MeteringSN] = append(out[a.MeteringSN], a)
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
