package clickhouse

// The SDR ledger (report.Ledger) without transactions or UPDATE (schemas/clickhouse/0004_ledger.sql):
//
//   - An SDR is its immutable sdrs row plus its current sdr_states row, the one with the greatest (epoch,
//     version). Every change appends a state row; nothing is updated, and no result depends on merges.
//   - Fencing: every write first reads the current lease epoch and refuses, writing nothing, when the caller's is
//     not current (report.ErrStaleEpoch), as the SQLite store does. That check and the write are not atomic here,
//     so the epoch is also in every state row and ranks first: a stale scheduler's write that lands after a newer
//     scheduler's decision carries a lower epoch and can never become the current state.
//   - Read-modify-write (MarkSending counts attempts, RecordAttempt only moves SDRs still PENDING or SENT) happens
//     under the store's read-decide-write mutex (imu), so it is one step within this process. One scheduler
//     writes at a time: that is what the lease is for. version orders the rows of one SDR within an epoch: each
//     write takes max(now in µs, current version + 1), so it grows strictly per SDR in any process, a restart
//     included, whatever the injected clock says.
//   - The lease (push_lease) is append-only: guard-rail fencing for one scheduler per database, not an election.
//     Two schedulers that find the lease expired at the same moment both claim epoch+1 and then re-read: the
//     smallest holder name among the claims of the greatest epoch wins. A claim that lands only after the other
//     scheduler's re-read can leave both believing they hold the same epoch until the next renewal (before each
//     batch), when the loser sees the winner. In the scale-out deployment one scheduler is elected through a Kafka
//     consumer group (stream.Election) and only the elected one claims, so claims do not race; the lease then
//     fences the handover from a leader that died or lost the election.
//
// sdrs and sdr_states are ordered by hour_ms: the build, the push and the reports read ranges of hours, and reads
// by metering_sn narrow to the hour the number names (snHours). The push's reads of open SDRs (Pushable,
// OldestUnaccepted) go through the open index (sdr_open), so that their cost follows the open SDRs, not history.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

// inChunk bounds the values of one IN list (sent inline by the driver).
const inChunk = 2000

// placeholders returns "(?, ?, ...)" for n values.
func placeholders(n int) string { return "(?" + strings.Repeat(", ?", n-1) + ")" }

// nextVersion is the version of a row written after one of version prev: strictly greater, and near the wall clock
// so that versions of different rows compare sensibly in a dump. It only orders rows; the injected clock is not
// used because it may stand still (tests) or repeat.
func nextVersion(prev int64) int64 { return max(time.Now().UnixMicro(), prev+1) }

// --- lease -----------------------------------------------------------------------------------------------------

// currentLeaseSQL reads the current lease: among the rows of the greatest epoch, the winner's (smallest holder)
// latest row.
const currentLeaseSQL = `SELECT holder, epoch, expires_ms FROM push_lease WHERE epoch = (SELECT max(epoch) FROM push_lease)
ORDER BY holder, version DESC LIMIT 1`

func (s *Store) currentLease(ctx context.Context) (report.Lease, bool, error) {
	rows, err := s.conn.Query(ctx, currentLeaseSQL)
	if err != nil {
		return report.Lease{}, false, fmt.Errorf("read push lease: %w", err)
	}
	defer func() { _ = rows.Close() }()
	if !rows.Next() {
		return report.Lease{}, false, rows.Err()
	}
	var l report.Lease
	var expires int64
	if err := rows.Scan(&l.Holder, &l.Epoch, &expires); err != nil {
		return report.Lease{}, false, fmt.Errorf("read push lease: %w", err)
	}
	l.Expires = msTime(expires)
	return l, true, nil
}

// appendLease writes a lease row.
func (s *Store) appendLease(ctx context.Context, holder string, epoch int64, expires int64) error {
	var last int64
	if err := s.conn.QueryRow(ctx, `SELECT max(version) FROM push_lease`).Scan(&last); err != nil {
		return fmt.Errorf("read push lease version: %w", err)
	}
	return s.insert(ctx, `INSERT INTO push_lease (holder, epoch, version, expires_ms, written_ms)`, 1, func(b driver.Batch, _ int) error {
		return b.Append(holder, epoch, nextVersion(last), expires, s.opts.Now().UnixMilli())
	})
}

// AcquireLease takes or renews the push lease (report.Ledger). Renewing keeps the epoch; taking it when it is
// free or expired claims the next epoch, and holder has it only if its claim wins (see the file comment).
func (s *Store) AcquireLease(ctx context.Context, holder string, now time.Time, ttl time.Duration) (report.Lease, bool, error) {
	s.imu.Lock()
	defer s.imu.Unlock()
	cur, ok, err := s.currentLease(ctx)
	if err != nil {
		return report.Lease{}, false, err
	}
	expires := now.Add(ttl)
	epoch := int64(1)
	switch {
	case !ok:
	case cur.Holder == holder:
		if err := s.appendLease(ctx, holder, cur.Epoch, expires.UnixMilli()); err != nil {
			return report.Lease{}, false, fmt.Errorf("renew push lease: %w", err)
		}
		return report.Lease{Holder: holder, Epoch: cur.Epoch, Expires: expires}, true, nil
	case !now.Before(cur.Expires):
		epoch = cur.Epoch + 1
	default:
		return cur, false, nil // someone else holds it
	}
	if err := s.appendLease(ctx, holder, epoch, expires.UnixMilli()); err != nil {
		return report.Lease{}, false, fmt.Errorf("claim push lease: %w", err)
	}
	won, ok, err := s.currentLease(ctx)
	if err != nil {
		return report.Lease{}, false, err
	}
	if !ok || won.Holder != holder || won.Epoch != epoch {
		return won, false, nil // another scheduler's claim won
	}
	return report.Lease{Holder: holder, Epoch: epoch, Expires: expires}, true, nil
}

// ReleaseLease ends holder's lease at once, if it still holds it under epoch: a row of the same epoch that expired.
func (s *Store) ReleaseLease(ctx context.Context, holder string, epoch int64) error {
	s.imu.Lock()
	defer s.imu.Unlock()
	cur, ok, err := s.currentLease(ctx)
	if err != nil {
		return fmt.Errorf("release push lease: %w", err)
	}
	if !ok || cur.Holder != holder || cur.Epoch != epoch {
		return nil
	}
	if err := s.appendLease(ctx, holder, epoch, 0); err != nil {
		return fmt.Errorf("release push lease: %w", err)
	}
	return nil
}

// fence returns report.ErrStaleEpoch when epoch is not the current lease epoch. Called with imu held.
func (s *Store) fence(ctx context.Context, epoch int64) error {
	var current int64
	var n uint64
	if err := s.conn.QueryRow(ctx, `SELECT max(epoch), count() FROM push_lease`).Scan(&current, &n); err != nil {
		return fmt.Errorf("read lease epoch: %w", err)
	}
	if n == 0 {
		return errors.New("read lease epoch: no push lease taken yet")
	}
	if current != epoch {
		return fmt.Errorf("%w (mine %d, current %d)", report.ErrStaleEpoch, epoch, current)
	}
	return nil
}

// --- states ----------------------------------------------------------------------------------------------------

// stateRow is one sdr_states row.
type stateRow struct {
	sn                                     string
	hour, epoch, version                   int64
	state, lastCode, reason                string
	unknown, attempts, next, accepted, upd int64
}

func (r stateRow) open() bool {
	return r.state == string(report.Pending) || r.state == string(report.Sent)
}

// stateAgg reads the current state of each SDR grouped by metering_sn: every column of its row with the greatest
// (epoch, version).
const stateAgg = `argMax(hour_ms, (epoch, version)) AS st_hour, argMax(epoch, (epoch, version)) AS st_epoch,
argMax(version, (epoch, version)) AS st_version, argMax(state, (epoch, version)) AS st_state,
argMax(last_code, (epoch, version)) AS st_last_code, argMax(reason, (epoch, version)) AS st_reason,
argMax(unknown_attempts, (epoch, version)) AS st_unknown, argMax(attempts, (epoch, version)) AS st_attempts,
argMax(next_attempt_ms, (epoch, version)) AS st_next, argMax(accepted_ms, (epoch, version)) AS st_accepted`

const stateInsert = `INSERT INTO sdr_states (metering_sn, hour_ms, epoch, version, state, last_code, reason, unknown_attempts, attempts,
next_attempt_ms, accepted_ms, updated_ms)`

func (s *Store) insertStates(ctx context.Context, rows []stateRow) error {
	if len(rows) == 0 {
		return nil
	}
	if err := s.insert(ctx, stateInsert, len(rows), func(b driver.Batch, i int) error {
		r := rows[i]
		return b.Append(r.sn, r.hour, r.epoch, r.version, r.state, r.lastCode, r.reason, r.unknown, r.attempts, r.next, r.accepted, r.upd)
	}); err != nil {
		return fmt.Errorf("insert SDR states (rows=%d): %w", len(rows), err)
	}
	return nil
}

// snPattern is the form of report.MeteringSN: m<yyyymmddhh>-r<revision>-<hash>.
var snPattern = regexp.MustCompile(`^m(\d{10})-r\d+-[0-9a-f]{32}$`)

// snHours returns the distinct hours (Unix ms) the numbers name (report.MeteringSN puts the SDR's hour in it), so
// that a lookup by number reads only those hours of the tables ordered by hour_ms. ok is false when a number
// is not of that form: the lookup then reads every hour.
func snHours(sns []string) (hours []int64, ok bool) {
	seen := map[int64]bool{}
	for _, sn := range sns {
		m := snPattern.FindStringSubmatch(sn)
		if m == nil {
			return nil, false
		}
		h, err := time.Parse("2006010215", m[1])
		if err != nil {
			return nil, false
		}
		if ms := h.UnixMilli(); !seen[ms] {
			seen[ms] = true
			hours = append(hours, ms)
		}
	}
	sort.Slice(hours, func(i, j int) bool { return hours[i] < hours[j] })
	return hours, true
}

// statesBySNSQL reads the current state rows of the given SDRs.
func statesBySNSQL(sns []string) (string, []any) {
	var b strings.Builder
	var args []any
	b.WriteString("SELECT metering_sn, " + stateAgg + " FROM sdr_states WHERE ")
	if hours, ok := snHours(sns); ok && len(hours) > 0 {
		b.WriteString("hour_ms IN " + placeholders(len(hours)) + " AND ")
		for _, h := range hours {
			args = append(args, h)
		}
	}
	b.WriteString("metering_sn IN " + placeholders(len(sns)) + " GROUP BY metering_sn")
	for _, sn := range sns {
		args = append(args, sn)
	}
	return b.String(), args
}

// currentStates returns the current state row of each of sns that has one.
func (s *Store) currentStates(ctx context.Context, sns []string) (map[string]stateRow, error) {
	out := map[string]stateRow{}
	for start := 0; start < len(sns); start += inChunk {
		q, args := statesBySNSQL(sns[start:min(start+inChunk, len(sns))])
		rows, err := s.conn.Query(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("read SDR states: %w", err)
		}
		for rows.Next() {
			var r stateRow
			if err := rows.Scan(&r.sn, &r.hour, &r.epoch, &r.version, &r.state, &r.lastCode, &r.reason, &r.unknown, &r.attempts,
				&r.next, &r.accepted); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("read SDR state: %w", err)
			}
			out[r.sn] = r
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, fmt.Errorf("read SDR states: %w", err)
		}
	}
	return out, nil
}

// --- the open index (schemas/clickhouse/0009_sdr_open.sql) ------------------------------------------------------

// inOpenIndex keeps, of a table with hour_ms and metering_sn, the SDRs in the open index. On sdr_states the pair is
// a prefix of the sorting key, so the read skips the granules of SDRs not listed.
const inOpenIndex = `(hour_ms, metering_sn) IN (SELECT hour_ms, metering_sn FROM sdr_open)`

// inOpenInstanceHours keeps, of sdrs, the instance-hours in the open index: a prefix of its sorting key. Applied
// together with inOpenIndex on the state side, it selects the same SDRs.
const inOpenInstanceHours = `(hour_ms, instance_id) IN (SELECT hour_ms, instance_id FROM sdr_open)`

// openGeneration is the generation (and partition) of open index rows written at t: its hour, in Unix ms.
func openGeneration(t time.Time) int64 { return t.UTC().Truncate(time.Hour).UnixMilli() }

// indexOpen lists the SDRs of sdrs that start PENDING or SENT in the open index.
func (s *Store) indexOpen(ctx context.Context, sdrs []report.SDR) error {
	var open []report.SDR
	for _, d := range sdrs {
		if d.State == report.Pending || d.State == report.Sent {
			open = append(open, d)
		}
	}
	if len(open) == 0 {
		return nil
	}
	gen := openGeneration(s.opts.Now())
	if err := s.insert(ctx, `INSERT INTO sdr_open (metering_sn, hour_ms, instance_id, gen)`, len(open), func(b driver.Batch, i int) error {
		return b.Append(open[i].MeteringSN, open[i].Hour.UnixMilli(), open[i].InstanceID, gen)
	}); err != nil {
		return fmt.Errorf("index open SDRs (rows=%d): %w", len(open), err)
	}
	return nil
}

// compactOpenSQL copies, into generation ? (the current one), one row of each SDR listed in the generations before
// ? (a cutoff) that is not known to be final. An SDR without a state row (a crash between the index and the state
// insert, or a writer still between them) is kept: only a final state is proof that the push no longer needs it.
var compactOpenSQL = `INSERT INTO sdr_open (metering_sn, hour_ms, instance_id, gen)
SELECT metering_sn, any(hour_ms), any(instance_id), ? FROM sdr_open WHERE gen < ? AND metering_sn NOT IN (
SELECT metering_sn FROM (` + currentStateOf(`(hour_ms, metering_sn) IN (SELECT hour_ms, metering_sn FROM sdr_open WHERE gen < ?)`) + `)
WHERE st_state NOT IN ('PENDING', 'SENT')) GROUP BY metering_sn`

// compactOpen shrinks the open index once per generation: the rows of the generations before the previous one are
// copied forward when their SDR may still be open, and their partitions dropped. The previous generation is left
// alone so that a writer whose index row is minutes old is never compacted under its feet. A crash between the
// copy and the drops leaves duplicate rows, which readers do not mind; two processes compacting at once copy the
// same rows twice, no more.
func (s *Store) compactOpen(ctx context.Context) error {
	s.omu.Lock()
	defer s.omu.Unlock()
	gen := openGeneration(s.opts.Now())
	if gen <= s.compactedGen {
		return nil
	}
	cutoff := gen - time.Hour.Milliseconds()
	rows, err := s.conn.Query(ctx, `SELECT DISTINCT gen FROM sdr_open WHERE gen < ? ORDER BY gen`, cutoff)
	if err != nil {
		return fmt.Errorf("read open index generations: %w", err)
	}
	var old []int64
	for rows.Next() {
		var g int64
		if err := rows.Scan(&g); err != nil {
			_ = rows.Close()
			return fmt.Errorf("read open index generations: %w", err)
		}
		old = append(old, g)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return fmt.Errorf("read open index generations: %w", err)
	}
	if len(old) > 0 {
		if err := s.conn.Exec(ctx, compactOpenSQL, gen, cutoff, cutoff); err != nil {
			return fmt.Errorf("copy open SDRs forward: %w", err)
		}
		for _, g := range old {
			// A partition is named by its value; g is a number read back from the table.
			if err := s.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE sdr_open DROP PARTITION %d", g)); err != nil {
				return fmt.Errorf("drop open index generation %d: %w", g, err)
			}
		}
	}
	s.compactedGen = gen
	return nil
}

// --- reading SDRs ----------------------------------------------------------------------------------------------

// sdrWhere selects current SDRs; empty fields select everything.
type sdrWhere struct {
	from, to   int64 // hours [from, to), when to > from
	hours      []int64
	sns        []string
	instanceID string
	periods    []bill.Period
	states     []report.State // current state in
	dueBy      int64          // with due: current next_attempt_ms <= dueBy
	due        bool
	open       bool // only the SDRs in the open index
	limit      int
}

// hourConds are the conditions on hour_ms and metering_sn, applied to both tables so that each reads only the
// hours it needs.
func (w sdrWhere) hourConds() ([]string, []any) {
	var conds []string
	var args []any
	if w.to > w.from {
		conds = append(conds, "hour_ms >= ? AND hour_ms < ?")
		args = append(args, w.from, w.to)
	}
	if len(w.hours) > 0 {
		conds = append(conds, "hour_ms IN "+placeholders(len(w.hours)))
		for _, h := range w.hours {
			args = append(args, h)
		}
	}
	if len(w.sns) > 0 {
		conds = append(conds, "metering_sn IN "+placeholders(len(w.sns)))
		for _, sn := range w.sns {
			args = append(args, sn)
		}
	}
	if w.open {
		conds = append(conds, inOpenIndex)
	}
	return conds, args
}

const sdrSelect = `SELECT metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms, begin_ms, end_ms, usage_value, amount,
currency, ifNull(relate_pkg_instance, '') AS relate, body, st_state, st_last_code, st_reason, due_ms, st_unknown, st_attempts, st_next,
st_accepted, st_epoch`

// sdrsSQL builds the read of current SDRs: the first stored copy of each metering_sn (LIMIT 1 BY after ordering by
// created_ms) joined with its current state, ordered by hour, instance and revision. The state side is grouped
// first and filtered by the current state (HAVING), so the join's right side is only the SDRs wanted.
func sdrsSQL(w sdrWhere) (string, []any) {
	hc, hargs := w.hourConds()
	var b strings.Builder
	var args []any
	b.WriteString(sdrSelect + " FROM sdrs ALL INNER JOIN (SELECT metering_sn, " + stateAgg + " FROM sdr_states")
	if len(hc) > 0 {
		b.WriteString(" WHERE " + strings.Join(hc, " AND "))
		args = append(args, hargs...)
	}
	b.WriteString(" GROUP BY metering_sn")
	var having []string
	if len(w.states) > 0 {
		having = append(having, "st_state IN "+placeholders(len(w.states)))
		for _, st := range w.states {
			args = append(args, string(st))
		}
	}
	if w.due {
		having = append(having, "st_next <= ?")
		args = append(args, w.dueBy)
	}
	if len(having) > 0 {
		b.WriteString(" HAVING " + strings.Join(having, " AND "))
	}
	b.WriteString(") USING metering_sn")
	conds := hc
	args = append(args, hargs...)
	if w.open {
		conds = append(conds, inOpenInstanceHours) // a prefix of sdrs' sorting key, unlike (hour_ms, metering_sn)
	}
	if w.instanceID != "" {
		conds = append(conds, "instance_id = ?")
		args = append(args, w.instanceID)
	}
	if len(w.periods) > 0 {
		conds = append(conds, "(instance_id, hour_ms, begin_ms, end_ms) IN ((?, ?, ?, ?)"+strings.Repeat(", (?, ?, ?, ?)", len(w.periods)-1)+")")
		for _, p := range w.periods {
			args = append(args, p.InstanceID, p.Begin.Truncate(time.Hour).UnixMilli(), p.Begin.UnixMilli(), p.End.UnixMilli())
		}
	}
	if len(conds) > 0 {
		b.WriteString(" WHERE " + strings.Join(conds, " AND "))
	}
	b.WriteString(" ORDER BY hour_ms, instance_id, revision, created_ms LIMIT 1 BY metering_sn")
	if w.limit > 0 {
		b.WriteString(" LIMIT ?")
		args = append(args, w.limit)
	}
	return b.String(), args
}

func (s *Store) querySDRs(ctx context.Context, w sdrWhere) ([]report.SDR, error) {
	q, args := sdrsSQL(w)
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read SDRs: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []report.SDR
	for rows.Next() {
		var d report.SDR
		var hour, rec, begin, end, due, next, accepted, rev, unknown, attempts int64
		var amount, state, body string
		if err := rows.Scan(&d.MeteringSN, &d.InstanceID, &hour, &rev, &d.Meter, &d.SKU, &rec, &begin, &end, &d.UsageValue, &amount,
			&d.Currency, &d.RelatePkgInstance, &body, &state, &d.LastCode, &d.Reason, &due, &unknown, &attempts, &next, &accepted,
			&d.Epoch); err != nil {
			return nil, fmt.Errorf("read SDR: %w", err)
		}
		d.Hour, d.RecordTime, d.Begin, d.End, d.Due, d.NextAttempt = msTime(hour), msTime(rec), msTime(begin), msTime(end), msTime(due), msTime(next)
		if accepted != 0 {
			d.AcceptedAt = msTime(accepted)
		}
		d.Revision, d.UnknownAttempts, d.Attempts = int(rev), int(unknown), int(attempts)
		d.State = report.State(state)
		if body != "" {
			d.Body = []byte(body)
		}
		if d.Amount, err = decimal.NewFromString(amount); err != nil {
			return nil, fmt.Errorf("read SDR %s: amount: %w", d.MeteringSN, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read SDRs: %w", err)
	}
	return out, nil
}

// sdrsBySN returns the SDRs with the given numbers, in chunks.
func (s *Store) sdrsBySN(ctx context.Context, sns []string) ([]report.SDR, error) {
	var out []report.SDR
	for start := 0; start < len(sns); start += inChunk {
		part := sns[start:min(start+inChunk, len(sns))]
		hours, _ := snHours(part)
		found, err := s.querySDRs(ctx, sdrWhere{sns: part, hours: hours})
		if err != nil {
			return nil, err
		}
		out = append(out, found...)
	}
	return out, nil
}

// existingSNs returns which of sdrs are stored already.
func (s *Store) existingSNs(ctx context.Context, sdrs []report.SDR) (map[string]bool, error) {
	out := map[string]bool{}
	for start := 0; start < len(sdrs); start += inChunk {
		part := sdrs[start:min(start+inChunk, len(sdrs))]
		hours := map[int64]bool{}
		var args []any
		for _, d := range part {
			if !hours[d.Hour.UnixMilli()] {
				hours[d.Hour.UnixMilli()] = true
				args = append(args, d.Hour.UnixMilli())
			}
		}
		nh := len(args)
		for _, d := range part {
			args = append(args, d.MeteringSN)
		}
		rows, err := s.conn.Query(ctx, `SELECT DISTINCT metering_sn FROM sdrs WHERE hour_ms IN `+placeholders(nh)+` AND metering_sn IN `+
			placeholders(len(part)), args...)
		if err != nil {
			return nil, fmt.Errorf("look up stored SDRs: %w", err)
		}
		for rows.Next() {
			var sn string
			if err := rows.Scan(&sn); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("look up stored SDRs: %w", err)
			}
			out[sn] = true
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, fmt.Errorf("look up stored SDRs: %w", err)
		}
	}
	return out, nil
}

// --- report.Ledger ---------------------------------------------------------------------------------------------

// UnbuiltRows returns closed instance-hours with usage and no SDR yet (report.Ledger). Visibility is the close's
// (only the first marker's rows of an hour count). Hours close in order and are built in order, so only hours from
// the newest one with an SDR onwards can hold unbuilt rows: both reads start there.
func (s *Store) UnbuiltRows(ctx context.Context, afterHour time.Time, afterInstance string, limit int) ([]aggregate.Row, error) {
	var from int64
	if err := s.conn.QueryRow(ctx, `SELECT max(hour_ms) FROM sdrs WHERE revision = 0`).Scan(&from); err != nil {
		return nil, fmt.Errorf("read SDR build position: %w", err)
	}
	q, args := unbuiltSQL(from, afterHour, afterInstance, limit)
	rows, err := s.conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read unbuilt rows: %w", err)
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
		r.Hour, r.Begin, r.End = msTime(hour), msTime(begin), msTime(end)
		out = append(out, r)
	}
	return out, rows.Err()
}

// unbuiltSQL builds the read of UnbuiltRows from hour from (Unix ms), after the keyset position.
func unbuiltSQL(from int64, afterHour time.Time, afterInstance string, limit int) (string, []any) {
	after := int64(-1) << 62
	if !afterHour.IsZero() {
		after = afterHour.UnixMilli()
	}
	return `SELECT ` + rowColumns + ` FROM usage_hours WHERE ` + committed + ` AND hour_ms >= ?
AND (hour_ms > ? OR (hour_ms = ? AND instance_id > ?)) AND usage_value != 0
AND (instance_id, hour_ms) NOT IN (SELECT instance_id, hour_ms FROM sdrs WHERE hour_ms >= ?)
ORDER BY hour_ms, instance_id LIMIT ?`, []any{from, after, after, afterInstance, from, limit}
}

// periodUsageSQL sums the usage of an instance's SDRs in [from, to) that count for step pricing, in Decimal.
const periodUsageSQL = `SELECT sum(u) FROM (SELECT metering_sn, argMin(usage_value, created_ms) AS u FROM sdrs
WHERE instance_id = ? AND hour_ms >= ? AND hour_ms < ? GROUP BY metering_sn)
ALL INNER JOIN (SELECT metering_sn, argMax(state, (epoch, version)) AS st_state FROM sdr_states WHERE hour_ms >= ? AND hour_ms < ?
AND metering_sn IN (SELECT metering_sn FROM sdrs WHERE instance_id = ? AND hour_ms >= ? AND hour_ms < ?)
GROUP BY metering_sn HAVING st_state NOT IN ('REJECTED', 'EXPIRED', 'ASYNC_REJECTED')) USING metering_sn`

// PeriodUsage sums the usage_value of an instance's SDRs in [from, to) that count for step pricing (report.Ledger).
func (s *Store) PeriodUsage(ctx context.Context, instanceID string, from, to time.Time) (decimal.Decimal, error) {
	f, t := from.UnixMilli(), to.UnixMilli()
	var sum decimal.Decimal
	if err := s.conn.QueryRow(ctx, periodUsageSQL, instanceID, f, t, f, t, instanceID, f, t).Scan(&sum); err != nil {
		return decimal.Zero, fmt.Errorf("read period usage of %s: %w", instanceID, err)
	}
	return sum, nil
}

// InsertSDRs adds built SDRs; an SDR already in the ledger is left as it is (report.Ledger). The initial state rows
// are written before the SDR rows, so a stored SDR always has a state; a crash between the two leaves state rows
// of no SDR, which no reader sees, and the rebuild writes both again.
func (s *Store) InsertSDRs(ctx context.Context, epoch int64, sdrs []report.SDR) error {
	s.imu.Lock()
	defer s.imu.Unlock()
	if err := s.fence(ctx, epoch); err != nil {
		return err
	}
	if len(sdrs) == 0 {
		return nil
	}
	existing, err := s.existingSNs(ctx, sdrs)
	if err != nil {
		return err
	}
	return s.insertNewSDRs(ctx, epoch, sdrs, existing)
}

// insertNewSDRs writes the SDRs not in existing (nor earlier in sdrs), with their initial states at epoch.
func (s *Store) insertNewSDRs(ctx context.Context, epoch int64, sdrs []report.SDR, existing map[string]bool) error {
	now := s.opts.Now().UnixMilli()
	var fresh []report.SDR
	var states []stateRow
	for _, d := range sdrs {
		if existing[d.MeteringSN] {
			continue
		}
		existing[d.MeteringSN] = true
		fresh = append(fresh, d)
		states = append(states, stateRow{sn: d.MeteringSN, hour: d.Hour.UnixMilli(), epoch: epoch, version: nextVersion(0),
			state: string(d.State), reason: d.Reason, upd: now})
	}
	if len(fresh) == 0 {
		return nil
	}
	// The open index first: an SDR that can be pushed must never be missing from it.
	if err := s.indexOpen(ctx, fresh); err != nil {
		return err
	}
	if err := s.insertStates(ctx, states); err != nil {
		return err
	}
	if err := s.insert(ctx, `INSERT INTO sdrs (metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms, begin_ms, end_ms,
usage_value, amount, currency, relate_pkg_instance, body, due_ms, created_ms)`, len(fresh), func(b driver.Batch, i int) error {
		d := fresh[i]
		var relate *string
		if d.RelatePkgInstance != "" {
			relate = &d.RelatePkgInstance
		}
		return b.Append(d.MeteringSN, d.InstanceID, d.Hour.UnixMilli(), int64(d.Revision), d.Meter, d.SKU, d.RecordTime.UnixMilli(),
			d.Begin.UnixMilli(), d.End.UnixMilli(), d.UsageValue, d.Amount.String(), d.Currency, relate, string(d.Body), d.Due.UnixMilli(), now)
	}); err != nil {
		return fmt.Errorf("insert SDRs (rows=%d): %w", len(fresh), err)
	}
	return nil
}

// Pushable returns SDRs due for an attempt, oldest hour first (report.Ledger). It reads only the SDRs in the open
// index, in two steps so that the SDR table is read only for the hours needed: the hours holding due SDRs and how
// many each holds, then the SDRs of the oldest of those hours up to limit. It compacts the index first, once an
// hour.
func (s *Store) Pushable(ctx context.Context, now time.Time, limit int) ([]report.SDR, error) {
	if err := s.compactOpen(ctx); err != nil {
		// The index only grows meanwhile: the push goes on, and the next call tries again.
		s.opts.Logger.Warn("compact the open SDR index", "err", err)
	}
	rows, err := s.conn.Query(ctx, pushableHoursSQL, now.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("read pushable hours: %w", err)
	}
	var hours []int64
	var total uint64
	for rows.Next() && total < uint64(limit) {
		var h int64
		var n uint64
		if err := rows.Scan(&h, &n); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("read pushable hours: %w", err)
		}
		hours = append(hours, h)
		total += n
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("read pushable hours: %w", err)
	}
	if len(hours) == 0 {
		return nil, nil
	}
	out, err := s.querySDRs(ctx, sdrWhere{hours: hours, open: true, states: []report.State{report.Pending, report.Sent}, due: true,
		dueBy: now.UnixMilli(), limit: limit})
	if err != nil {
		return nil, fmt.Errorf("read pushable SDRs: %w", err)
	}
	return out, nil
}

// pushableHoursSQL counts the due SDRs (PENDING or SENT, next attempt not after ?) per hour, oldest first.
const pushableHoursSQL = `SELECT st_hour, count() FROM (SELECT metering_sn, argMax(hour_ms, (epoch, version)) AS st_hour,
argMax(state, (epoch, version)) AS st_state, argMax(next_attempt_ms, (epoch, version)) AS st_next FROM sdr_states
WHERE ` + inOpenIndex + ` GROUP BY metering_sn HAVING st_state IN ('PENDING', 'SENT') AND st_next <= ?) GROUP BY st_hour ORDER BY st_hour`

// MarkSending records one attempt of unknown outcome on each SDR still PENDING or SENT before its batch is sent
// (report.Ledger): write-ahead, so that a lost answer is known to be possible.
func (s *Store) MarkSending(ctx context.Context, epoch int64, sns []string, now time.Time) error {
	s.imu.Lock()
	defer s.imu.Unlock()
	if err := s.fence(ctx, epoch); err != nil {
		return err
	}
	cur, err := s.currentStates(ctx, sns)
	if err != nil {
		return fmt.Errorf("mark SDRs sending: %w", err)
	}
	var rows []stateRow
	for _, sn := range sns {
		r, ok := cur[sn]
		if !ok || !r.open() {
			continue
		}
		r.state, r.unknown, r.attempts, r.upd = string(report.Sent), r.unknown+1, r.attempts+1, now.UnixMilli()
		r.epoch, r.version = epoch, nextVersion(r.version)
		cur[sn] = r
		rows = append(rows, r)
	}
	if err := s.insertStates(ctx, rows); err != nil {
		return fmt.Errorf("mark SDRs sending: %w", err)
	}
	return nil
}

// RecordAttempt logs an attempt for every SDR of its batch and applies the outcomes (report.Ledger). Only SDRs
// still PENDING or SENT change: a final state is never overwritten. The attempts are written first: should the
// state rows fail, the SDRs stay SENT with an unknown outcome and are retried, which is the safe side.
func (s *Store) RecordAttempt(ctx context.Context, epoch int64, a report.Attempt, sns []string, outs []report.Outcome) error {
	s.imu.Lock()
	defer s.imu.Unlock()
	if err := s.fence(ctx, epoch); err != nil {
		return err
	}
	now := s.opts.Now().UnixMilli()
	if len(sns) > 0 {
		base := time.Now().UnixNano()
		if err := s.insert(ctx, `INSERT INTO sdr_attempts (metering_sn, at_ms, n, batch_id, records, http_status, code, class, latency_ms,
epoch, error)`, len(sns), func(b driver.Batch, i int) error {
			return b.Append(sns[i], a.At.UnixMilli(), base+int64(i), a.BatchID, int64(a.Records), int64(a.HTTPStatus), a.Code, a.Class,
				a.Latency.Milliseconds(), epoch, a.Error)
		}); err != nil {
			return fmt.Errorf("insert attempts (rows=%d): %w", len(sns), err)
		}
	}
	if len(outs) == 0 {
		return nil
	}
	osns := make([]string, len(outs))
	for i, o := range outs {
		osns[i] = o.MeteringSN
	}
	cur, err := s.currentStates(ctx, osns)
	if err != nil {
		return err
	}
	var rows []stateRow
	for _, o := range outs {
		r, ok := cur[o.MeteringSN]
		if !ok || !r.open() {
			continue
		}
		r.state, r.lastCode, r.reason, r.next = string(o.State), o.Code, o.Reason, o.NextAttempt.UnixMilli()
		if o.Definite {
			r.unknown = max(0, r.unknown-1)
		}
		if !o.AcceptedAt.IsZero() {
			r.accepted = o.AcceptedAt.UnixMilli()
		}
		r.epoch, r.version, r.upd = epoch, nextVersion(r.version), now
		cur[o.MeteringSN] = r
		rows = append(rows, r)
	}
	return s.insertStates(ctx, rows)
}

// Pauses returns whether pushing is paused globally and which instances are paused (report.Ledger).
func (s *Store) Pauses(ctx context.Context) (bool, map[string]bool, error) {
	rows, err := s.conn.Query(ctx, `SELECT scope FROM (SELECT scope, argMax(paused, version) AS p FROM push_pauses GROUP BY scope) WHERE p = 1`)
	if err != nil {
		return false, nil, fmt.Errorf("read pauses: %w", err)
	}
	defer func() { _ = rows.Close() }()
	global, inst := false, map[string]bool{}
	for rows.Next() {
		var scope string
		if err := rows.Scan(&scope); err != nil {
			return false, nil, fmt.Errorf("read pauses: %w", err)
		}
		if scope == "*" {
			global = true
		} else {
			inst[scope] = true
		}
	}
	return global, inst, rows.Err()
}

// SetPause pauses or resumes pushing, globally (instanceID "") or for one instance (report.Ledger). Nothing is
// lost: paused SDRs stay in the ledger and go out when resumed.
func (s *Store) SetPause(ctx context.Context, instanceID string, paused bool, now time.Time) error {
	scope := instanceID
	if scope == "" {
		scope = "*"
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	var last int64
	if err := s.conn.QueryRow(ctx, `SELECT max(version) FROM push_pauses`).Scan(&last); err != nil {
		return fmt.Errorf("set pause %s: %w", scope, err)
	}
	var p uint8
	if paused {
		p = 1
	}
	if err := s.insert(ctx, `INSERT INTO push_pauses (scope, version, paused, changed_ms)`, 1, func(b driver.Batch, _ int) error {
		return b.Append(scope, nextVersion(last), p, now.UnixMilli())
	}); err != nil {
		return fmt.Errorf("set pause %s: %w", scope, err)
	}
	return nil
}

// currentStateOf reads the current state (st_state) of each SDR with sdr_states rows matching where ("" for every
// SDR; an SDR exists once its sdrs row does). The one place the state reads of the open index and the counts rank
// rows, by (epoch, version) as the fencing requires.
func currentStateOf(where string) string {
	if where != "" {
		where = " WHERE " + where
	}
	return `SELECT metering_sn, argMax(state, (epoch, version)) AS st_state FROM sdr_states` + where + ` GROUP BY metering_sn`
}

// StateCounts counts SDRs by state (report.Ledger).
func (s *Store) StateCounts(ctx context.Context) (map[report.State]int, error) {
	if s.spillBytes > 0 {
		// This groups every state row ever written (unlike the push's reads, which the open index bounds): past a
		// few days at 100,000 instances it needs more than the server's per-query memory, so it spills to disk.
		ctx = ch.Context(ctx, ch.WithSettings(ch.Settings{"max_bytes_before_external_group_by": int(s.spillBytes)}))
	}
	rows, err := s.conn.Query(ctx, `SELECT st_state, count() FROM (`+currentStateOf("")+`) WHERE metering_sn IN (SELECT metering_sn FROM sdrs)
GROUP BY st_state`)
	if err != nil {
		return nil, fmt.Errorf("count SDRs: %w", err)
	}
	defer func() { _ = rows.Close() }()
	out := map[report.State]int{}
	for rows.Next() {
		var st string
		var n uint64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count SDRs: %w", err)
		}
		out[report.State(st)] = int(n)
	}
	return out, rows.Err()
}

// oldestUnacceptedSQL reads the due time of the oldest open SDR, how many are past due (?), and whether there are
// any, from the SDRs in the open index.
var oldestUnacceptedSQL = `SELECT min(due_ms), uniqExactIf(metering_sn, due_ms < ?), count() FROM sdrs
WHERE ` + inOpenInstanceHours + ` AND metering_sn IN (SELECT metering_sn FROM (` + currentStateOf(inOpenIndex) + `)
WHERE st_state IN ('PENDING', 'SENT'))`

// OldestUnaccepted returns the due time of the oldest SDR still to push and how many are past due, the SDRs of the
// instances in skip left out (report.Ledger).
func (s *Store) OldestUnaccepted(ctx context.Context, now time.Time, skip []string) (time.Time, int, error) {
	q := oldestUnacceptedSQL
	args := []any{now.UnixMilli()}
	if len(skip) > 0 {
		// The driver binds a []string as one array literal in the query text, so thousands of frozen instances
		// would meet max_query_size (256 KiB); the read then fails and is logged, and the gauges keep their values.
		q += ` AND NOT has(?, instance_id)`
		args = append(args, skip)
	}
	var due int64
	var past, n uint64
	if err := s.conn.QueryRow(ctx, q, args...).Scan(&due, &past, &n); err != nil {
		return time.Time{}, 0, fmt.Errorf("read oldest unaccepted SDR: %w", err)
	}
	if n == 0 {
		return time.Time{}, 0, nil
	}
	return msTime(due), int(past), nil
}

// ListSDRs returns SDRs by state and hour range, ordered by hour, instance and revision (report.Ledger).
func (s *Store) ListSDRs(ctx context.Context, f report.SDRFilter) ([]report.SDR, error) {
	w := sdrWhere{from: f.From.UnixMilli(), to: f.To.UnixMilli(), instanceID: f.InstanceID, limit: f.Limit}
	if w.to <= w.from {
		return nil, nil // an empty range, as in SQLite
	}
	if f.State != "" {
		w.states = []report.State{f.State}
	}
	out, err := s.querySDRs(ctx, w)
	if err != nil {
		return nil, fmt.Errorf("list SDRs: %w", err)
	}
	return out, nil
}

// Attempts returns the attempts of the given SDRs, oldest first (report.Ledger).
func (s *Store) Attempts(ctx context.Context, sns []string) (map[string][]report.Attempt, error) {
	out := map[string][]report.Attempt{}
	for start := 0; start < len(sns); start += inChunk {
		part := sns[start:min(start+inChunk, len(sns))]
		args := make([]any, len(part))
		for i, sn := range part {
			args[i] = sn
		}
		rows, err := s.conn.Query(ctx, `SELECT metering_sn, at_ms, batch_id, records, http_status, code, class, latency_ms, epoch, error
FROM sdr_attempts WHERE metering_sn IN `+placeholders(len(part))+` ORDER BY metering_sn, at_ms, n`, args...)
		if err != nil {
			return nil, fmt.Errorf("read attempts: %w", err)
		}
		for rows.Next() {
			var a report.Attempt
			var at, records, status, lat int64
			if err := rows.Scan(&a.MeteringSN, &at, &a.BatchID, &records, &status, &a.Code, &a.Class, &lat, &a.Epoch, &a.Error); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("read attempt: %w", err)
			}
			a.At, a.Latency, a.Records, a.HTTPStatus = msTime(at), time.Duration(lat)*time.Millisecond, int(records), int(status)
			out[a.MeteringSN] = append(out[a.MeteringSN], a)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return nil, fmt.Errorf("read attempts: %w", err)
		}
	}
	return out, nil
}
