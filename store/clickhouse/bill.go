package clickhouse

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

// periodsPerQuery bounds the (instance, hour, begin, end) tuples of one query.
const periodsPerQuery = 500

// SDRsByMeteringSN returns the SDRs with the given numbers (bill.Store).
func (s *Store) SDRsByMeteringSN(ctx context.Context, sns []string) ([]report.SDR, error) {
	out, err := s.sdrsBySN(ctx, sns)
	if err != nil {
		return nil, fmt.Errorf("read SDRs by metering_sn: %w", err)
	}
	return out, nil
}

// SDRsByPeriod returns every revision of the SDRs whose instance, begin and end equal one of periods (bill.Store).
// An SDR's hour is its begin truncated to the hour, so both tables are read only for the hours of the periods.
func (s *Store) SDRsByPeriod(ctx context.Context, periods []bill.Period) ([]report.SDR, error) {
	var out []report.SDR
	for start := 0; start < len(periods); start += periodsPerQuery {
		part := periods[start:min(start+periodsPerQuery, len(periods))]
		seen := map[int64]bool{}
		var hours []int64
		for _, p := range part {
			if h := p.Begin.Truncate(time.Hour).UnixMilli(); !seen[h] {
				seen[h] = true
				hours = append(hours, h)
			}
		}
		found, err := s.querySDRs(ctx, sdrWhere{hours: hours, periods: part})
		if err != nil {
			return nil, fmt.Errorf("read SDRs by period: %w", err)
		}
		out = append(out, found...)
	}
	return out, nil
}

// ApplyBill records an import and applies its changes (bill.Store).
//
// ClickHouse has no transaction to make this all or nothing, so it is made safe to re-run instead. Every change is
// checked first (a bad one writes nothing); then the file is recorded once per content, and the writes come in an
// order that a crash at any point leaves recoverable: the re-reports (next revisions, PENDING), then the bill lines
// (sdr_bills), then last the moves out of ACCEPTED. Until its move an SDR is still ACCEPTED, so importing the same
// file again applies what is missing; a re-report already written is found and not written twice.
//
// It takes no lease epoch, and needs none, as in the SQLite store: it moves only SDRs that are ACCEPTED, which the
// push never writes again, and it inserts revisions above 0, which the push never builds. The move is a state row
// of the epoch of the ACCEPTED row it replaces (so the SDR's Epoch stays the push's, as in SQLite), with a greater
// version. Inserted SDRs carry the lease epoch current at the time. The decisions run under the store's
// read-decide-write mutex, so an import and a push in the same process do not interleave.
func (s *Store) ApplyBill(ctx context.Context, src bill.Source, changes []bill.Change) (bill.Applied, error) {
	for _, c := range changes {
		if c.To != report.Billed && c.To != report.AsyncRejected {
			return bill.Applied{}, fmt.Errorf("SDR %s: a bill moves SDRs to BILLED or ASYNC_REJECTED, not %s", c.MeteringSN, c.To)
		}
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	now := src.At.UnixMilli()
	var known uint64
	if err := s.conn.QueryRow(ctx, `SELECT count() FROM bill_imports WHERE sha256 = ?`, src.SHA256).Scan(&known); err != nil {
		return bill.Applied{}, fmt.Errorf("read bill import: %w", err)
	}
	if known == 0 {
		if err := s.insert(ctx, `INSERT INTO bill_imports (sha256, name, rows, imported_ms)`, 1, func(b driver.Batch, _ int) error {
			return b.Append(src.SHA256, src.Name, int64(src.Rows), now)
		}); err != nil {
			return bill.Applied{}, fmt.Errorf("record bill import: %w", err)
		}
	}
	if len(changes) == 0 {
		return bill.Applied{}, nil
	}
	var epoch int64
	if err := s.conn.QueryRow(ctx, `SELECT max(epoch) FROM push_lease`).Scan(&epoch); err != nil {
		return bill.Applied{}, fmt.Errorf("read lease epoch: %w", err)
	}
	sns := make([]string, len(changes))
	var nexts []report.SDR
	for i, c := range changes {
		sns[i] = c.MeteringSN
		if c.To == report.AsyncRejected && c.Next != nil {
			nexts = append(nexts, *c.Next)
		}
	}
	cur, err := s.currentStates(ctx, sns)
	if err != nil {
		return bill.Applied{}, err
	}
	stored, err := s.existingSNs(ctx, nexts)
	if err != nil {
		return bill.Applied{}, err
	}

	type line struct {
		c    bill.Change
		next *string
	}
	var applied bill.Applied
	var moves []stateRow
	var lines []line
	var inserts []report.SDR
	for _, c := range changes {
		r, ok := cur[c.MeteringSN]
		if !ok || r.state != string(report.Accepted) {
			continue // no longer ACCEPTED: settled meanwhile
		}
		// A BILLED SDR keeps its reason (how it was accepted); sdr_bills says which line billed it. An ASYNC_REJECTED
		// one says why, as REJECTED ones do.
		l := line{c: c}
		if c.To == report.Billed {
			applied.Billed++
		} else {
			applied.AsyncRejected++
			r.reason = fmt.Sprintf("listed as %q in %s line %d", c.Status, src.Name, c.Line)
			if c.Next != nil {
				r.reason += "; re-reported as " + c.Next.MeteringSN
				if !stored[c.Next.MeteringSN] {
					stored[c.Next.MeteringSN] = true
					next := *c.Next
					next.State = report.Pending
					inserts = append(inserts, next)
					applied.Rereported++
					l.next = &next.MeteringSN
				}
			}
		}
		r.state, r.upd, r.version = string(c.To), now, nextVersion(r.version)
		cur[c.MeteringSN] = r
		moves = append(moves, r)
		lines = append(lines, l)
	}
	if len(inserts) > 0 {
		if err := s.insertNewSDRs(ctx, epoch, inserts, map[string]bool{}); err != nil {
			return bill.Applied{}, fmt.Errorf("insert re-reports: %w", err)
		}
	}
	if len(lines) > 0 {
		if err := s.insert(ctx, `INSERT INTO sdr_bills (metering_sn, import_sha256, line, state, status, amount, rereported_sn, at_ms)`,
			len(lines), func(b driver.Batch, i int) error {
				l := lines[i]
				var amount *string
				if l.c.Amount != "" {
					amount = &l.c.Amount
				}
				return b.Append(l.c.MeteringSN, src.SHA256, int64(l.c.Line), string(l.c.To), l.c.Status, amount, l.next, now)
			}); err != nil {
			return bill.Applied{}, fmt.Errorf("record bill lines: %w", err)
		}
	}
	if err := s.insertStates(ctx, moves); err != nil {
		return bill.Applied{}, fmt.Errorf("move SDRs out of ACCEPTED: %w", err)
	}
	return applied, nil
}
