package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

var _ bill.Store = (*Store)(nil)

// SDRsByMeteringSN returns the SDRs with the given numbers (bill.Store).
func (s *Store) SDRsByMeteringSN(ctx context.Context, sns []string) ([]report.SDR, error) {
	var out []report.SDR
	for start := 0; start < len(sns); start += 500 {
		part := sns[start:min(start+500, len(sns))]
		args := make([]any, len(part))
		for i, sn := range part {
			args[i] = sn
		}
		rows, err := s.read.QueryContext(ctx, `SELECT `+sdrColumns+` FROM sdrs WHERE metering_sn IN `+inList(len(part)), args...)
		if err != nil {
			return nil, fmt.Errorf("read SDRs by metering_sn: %w", err)
		}
		found, err := scanSDRs(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, found...)
	}
	return out, nil
}

// periodsPerQuery bounds the (instance, hour, begin, end) tuples of one query: 4 parameters each, far below
// SQLite's limit on parameters.
const periodsPerQuery = 250

// SDRsByPeriod returns every revision of the SDRs whose instance, begin and end equal one of periods (bill.Store).
// The lookup goes through the (instance_id, hour_ms, revision) key: an SDR's hour is its begin truncated to the
// hour.
func (s *Store) SDRsByPeriod(ctx context.Context, periods []bill.Period) ([]report.SDR, error) {
	var out []report.SDR
	for start := 0; start < len(periods); start += periodsPerQuery {
		part := periods[start:min(start+periodsPerQuery, len(periods))]
		args := make([]any, 0, 4*len(part))
		for _, p := range part {
			args = append(args, p.InstanceID, p.Begin.Truncate(time.Hour).UnixMilli(), p.Begin.UnixMilli(), p.End.UnixMilli())
		}
		rows, err := s.read.QueryContext(ctx, periodQuery(len(part)), args...)
		if err != nil {
			return nil, fmt.Errorf("read SDRs by period: %w", err)
		}
		found, err := scanSDRs(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, found...)
	}
	return out, nil
}

// periodQuery selects the SDRs of n (instance_id, hour_ms, begin_ms, end_ms) tuples.
func periodQuery(n int) string {
	return `SELECT ` + sdrColumns + ` FROM sdrs WHERE (instance_id, hour_ms, begin_ms, end_ms) IN (VALUES (?, ?, ?, ?)` +
		strings.Repeat(`, (?, ?, ?, ?)`, n-1) + `)`
}

// ApplyBill records an import and applies its changes in one transaction (bill.Store).
//
// It takes no lease epoch, and needs none: it moves only SDRs that are ACCEPTED, which the push never writes
// again (MarkSending and RecordAttempt change PENDING and SENT rows only), and it inserts revisions above 0, which
// the push never builds (Build makes revision 0 of instance-hours that have no SDR at all). Each statement checks
// the state it moves from, inside the transaction, so a decision taken on an earlier read cannot overwrite a
// newer one. Inserted SDRs carry the lease epoch current at the time, as a record of who held the push then.
func (s *Store) ApplyBill(ctx context.Context, src bill.Source, changes []bill.Change) (bill.Applied, error) {
	var applied bill.Applied
	now := src.At.UnixMilli()
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		applied = bill.Applied{}
		if _, err := tx.ExecContext(ctx, `INSERT INTO bill_imports (sha256, name, rows, imported_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (sha256) DO NOTHING`, src.SHA256, src.Name, src.Rows, now); err != nil {
			return fmt.Errorf("record bill import: %w", err)
		}
		var importID, epoch int64
		if err := tx.QueryRowContext(ctx, `SELECT id FROM bill_imports WHERE sha256 = ?`, src.SHA256).Scan(&importID); err != nil {
			return fmt.Errorf("read bill import: %w", err)
		}
		if err := tx.QueryRowContext(ctx, `SELECT coalesce((SELECT epoch FROM push_lease WHERE id = 1), 0)`).Scan(&epoch); err != nil {
			return fmt.Errorf("read lease epoch: %w", err)
		}
		move, err := tx.PrepareContext(ctx, `UPDATE sdrs SET state = ?, reason = coalesce(?, reason), updated_ms = ? WHERE metering_sn = ? AND state = 'ACCEPTED'`)
		if err != nil {
			return err
		}
		defer move.Close()
		record, err := tx.PrepareContext(ctx, `INSERT INTO sdr_bills (metering_sn, import_id, line, state, status, amount, rereported_sn, at_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer record.Close()
		insert, err := tx.PrepareContext(ctx, `INSERT INTO sdrs (metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms,
begin_ms, end_ms, usage_value, amount, currency, relate_pkg_instance, body, state, reason, due_ms, epoch, created_ms, updated_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'PENDING', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		defer insert.Close()
		for _, c := range changes {
			if c.To != report.Billed && c.To != report.AsyncRejected {
				return fmt.Errorf("SDR %s: a bill moves SDRs to BILLED or ASYNC_REJECTED, not %s", c.MeteringSN, c.To)
			}
			// A BILLED SDR keeps its reason (how it was accepted); sdr_bills says which line billed it. An
			// ASYNC_REJECTED one says why, as REJECTED ones do.
			var reason any
			if c.To == report.AsyncRejected {
				r := fmt.Sprintf("listed as %q in %s line %d", c.Status, src.Name, c.Line)
				if c.Next != nil {
					r += "; re-reported as " + c.Next.MeteringSN
				}
				reason = r
			}
			res, err := move.ExecContext(ctx, string(c.To), reason, now, c.MeteringSN)
			if err != nil {
				return fmt.Errorf("move SDR %s to %s: %w", c.MeteringSN, c.To, err)
			}
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				if err != nil {
					return err
				}
				continue // no longer ACCEPTED: settled meanwhile
			}
			var next any
			if c.To == report.Billed {
				applied.Billed++
			} else {
				applied.AsyncRejected++
				if d := c.Next; d != nil {
					res, err := insert.ExecContext(ctx, d.MeteringSN, d.InstanceID, d.Hour.UnixMilli(), d.Revision, d.Meter, d.SKU,
						d.RecordTime.UnixMilli(), d.Begin.UnixMilli(), d.End.UnixMilli(), d.UsageValue.String(), d.Amount.String(),
						d.Currency, nullString(d.RelatePkgInstance), d.Body, d.Reason, d.Due.UnixMilli(), epoch, now, now)
					if err != nil {
						return fmt.Errorf("insert SDR %s: %w", d.MeteringSN, err)
					}
					if n, err := res.RowsAffected(); err != nil {
						return err
					} else if n > 0 {
						applied.Rereported++
						next = d.MeteringSN
					}
				}
			}
			var amount any
			if c.Amount != "" {
				amount = c.Amount
			}
			if _, err := record.ExecContext(ctx, c.MeteringSN, importID, c.Line, string(c.To), c.Status, amount, next, now); err != nil {
				return fmt.Errorf("record bill line of SDR %s: %w", c.MeteringSN, err)
			}
		}
		return nil
	})
	if err != nil {
		return bill.Applied{}, err
	}
	return applied, nil
}
