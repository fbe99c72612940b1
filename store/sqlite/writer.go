package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/meterd/meterd/ingest"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("sqlite store closed")

type writeReq struct {
	events   []*ingest.Event
	rejected []*ingest.Rejection
	result   chan writeResp
}

type writeResp struct {
	res ingest.WriteResult
	err error
}

// Write stores a batch durably (ingest.Sink). It returns once the transaction holding the batch has committed
// with synchronous=FULL, or with an error and nothing of the batch committed.
func (s *Store) Write(ctx context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	if len(events) == 0 && len(rejected) == 0 {
		return ingest.WriteResult{}, nil
	}
	req := &writeReq{events: events, rejected: rejected, result: make(chan writeResp, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ingest.WriteResult{}, ErrClosed
	}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		s.mu.RUnlock()
		return ingest.WriteResult{}, ctx.Err()
	}
	s.mu.RUnlock()
	// Once queued, wait for the commit whatever the caller's context says: answering before the outcome is known
	// would leave the client unsure whether to retry, and the writer finishes the batch anyway.
	r := <-req.result
	return r.res, r.err
}

// writer is the single goroutine that writes. It takes one request, adds every request already waiting (up to
// MaxBatchEvents), and commits them together.
func (s *Store) writer() {
	defer close(s.done)
	for req := range s.reqs {
		batch := []*writeReq{req}
		n := len(req.events)
	drain:
		for n < s.opts.MaxBatchEvents {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
				n += len(r.events)
			default:
				break drain
			}
		}
		results, err := s.commit(batch)
		if err == nil {
			s.kickCheckpoint()
		}
		for i, r := range batch {
			if err != nil {
				r.result <- writeResp{err: err}
				continue
			}
			r.result <- writeResp{res: results[i]}
		}
		s.restartWAL() // after answering: it is for the commits to come
	}
}

const (
	sqlStoredCopy = `SELECT hash, raw FROM events WHERE source = ? AND id = ?`
	sqlInsertDead = `INSERT INTO dead_letters (source, id, code, reason, event, existing, received_ms)
VALUES (?, ?, ?, ?, ?, ?, ?)`
	// sqlLastSeq is AUTOINCREMENT's high-water mark: the largest seq ever used (never reused, even when that row
	// was deleted). The writer numbers new rows from it inside its transaction, which holds the write lock.
	sqlLastSeq = `SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)`
	// sqlSeqsIn lists which of a chunk's seqs were inserted, when the chunk held repeats.
	sqlSeqsIn = `SELECT seq FROM events WHERE seq >= ? AND seq < ?`
	// chunkRows is how many rows one INSERT statement carries. Per-statement overhead dominates single-row
	// inserts through database/sql (about 3/4 of the time, measured); 64 rows x 9 columns stays far below SQLite's
	// limit of bound parameters.
	chunkRows = 64
)

// insertEventsSQL inserts n events with the given seqs, skipping keys already stored (first copy wins).
func insertEventsSQL(n int) string {
	return "INSERT INTO events (seq, source, id, type, subject, time_ms, hash, raw, received_ms) VALUES " +
		placeholders(n, 9) + " ON CONFLICT (source, id) DO NOTHING"
}

func insertValuesSQL(n int) string {
	return "INSERT INTO event_values (seq, meter, subject, time_ms, value) VALUES " + placeholders(n, 5)
}

// placeholders returns "(?, ?), (?, ?)" for rows x cols.
func placeholders(rows, cols int) string {
	row := "(?" + strings.Repeat(", ?", cols-1) + ")"
	return row + strings.Repeat(", "+row, rows-1)
}

// writeStmts are the writer's statements. They are prepared once, by the writer goroutine (their only user) after
// the migrations: parsing a 64-row insert costs as much as running it, and at 1% duplicates preparing the reads of
// chunks with a repeat on every use was 15% of the writer's CPU (measured).
type writeStmts struct {
	events, values, lastSeq, seqsIn, storedCopy *sql.Stmt
}

// prepare prepares every statement of s.stmts, or none.
func (s *Store) prepare(ctx context.Context) error {
	var w writeStmts
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&w.events, insertEventsSQL(chunkRows)}, {&w.values, insertValuesSQL(chunkRows)},
		{&w.lastSeq, sqlLastSeq}, {&w.seqsIn, sqlSeqsIn}, {&w.storedCopy, sqlStoredCopy},
	} {
		st, err := s.write.PrepareContext(ctx, p.sql)
		if err != nil {
			return errors.Join(fmt.Errorf("prepare %.40q: %w", p.sql, err), w.close())
		}
		*p.stmt = st
	}
	s.stmts = w
	return nil
}

// close closes the statements prepared.
func (w *writeStmts) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{w.events, w.values, w.lastSeq, w.seqsIn, w.storedCopy} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// commit writes all requests in one transaction. Events are inserted in request order, so the first copy of a key
// wins even when several copies arrive in the same batch.
//
// Each event gets its seq from the writer, counting up from AUTOINCREMENT's high-water mark: the transaction holds
// the write lock, so nobody else can take one, and seqs keep growing in commit order as the hour close requires. A
// seq whose row was not inserted (a repeat) is a gap, as it was with AUTOINCREMENT. A chunk whose rows were all
// inserted (the changes count says so: the common case) needs nothing more; otherwise the inserted seqs are read
// back, and only the others (duplicates and conflicts, rare) are looked up one by one.
func (s *Store) commit(batch []*writeReq) (results []ingest.WriteResult, err error) {
	ctx := context.Background() // the batch belongs to several requests: none of their contexts may abort it
	if s.stmts.events == nil {
		if err := s.prepare(ctx); err != nil {
			return nil, err
		}
	}
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin ingest transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	st := writeStmts{events: tx.StmtContext(ctx, s.stmts.events), values: tx.StmtContext(ctx, s.stmts.values),
		lastSeq: tx.StmtContext(ctx, s.stmts.lastSeq), seqsIn: tx.StmtContext(ctx, s.stmts.seqsIn),
		storedCopy: tx.StmtContext(ctx, s.stmts.storedCopy)}
	var seq int64
	if err := st.lastSeq.QueryRowContext(ctx).Scan(&seq); err != nil {
		return nil, fmt.Errorf("read last ingest sequence: %w", err)
	}
	type ref struct{ req, idx int }
	var all []ref
	results = make([]ingest.WriteResult, len(batch))
	for bi, req := range batch {
		results[bi] = ingest.WriteResult{Outcomes: make([]ingest.Outcome, len(req.events)), Existing: make([]json.RawMessage, len(req.events))}
		for i := range req.events {
			all = append(all, ref{bi, i})
		}
	}
	values := make([]any, 0, chunkRows*5)
	var valueRows int
	flushValues := func() error {
		if valueRows == 0 {
			return nil
		}
		var err error
		if valueRows == chunkRows {
			_, err = st.values.ExecContext(ctx, values...)
		} else {
			_, err = tx.ExecContext(ctx, insertValuesSQL(valueRows), values...)
		}
		if err != nil {
			return fmt.Errorf("insert meter values: %w", err)
		}
		values, valueRows = values[:0], 0
		return nil
	}
	args := make([]any, 0, chunkRows*9)
	var inserted [chunkRows]bool
	for start := 0; start < len(all); start += chunkRows {
		chunk := all[start:min(start+chunkRows, len(all))]
		first := seq + 1
		args = args[:0]
		for _, r := range chunk {
			ev := batch[r.req].events[r.idx]
			seq++
			args = append(args, seq, ev.Source, ev.ID, ev.Type, ev.Subject, ev.Time.UnixMilli(), ev.Hash[:], string(ev.Raw), ev.ReceivedAt.UnixMilli())
		}
		if err := insertChunk(ctx, tx, &st, first, len(chunk), args, inserted[:len(chunk)]); err != nil {
			return nil, err
		}
		for j, r := range chunk {
			ev := batch[r.req].events[r.idx]
			res := &results[r.req]
			if inserted[j] {
				res.Outcomes[r.idx] = ingest.Stored
				for _, v := range ev.Values {
					values = append(values, first+int64(j), v.Meter, ev.Subject, ev.Time.UnixMilli(), v.Value)
					if valueRows++; valueRows == chunkRows {
						if err := flushValues(); err != nil {
							return nil, err
						}
					}
				}
				continue
			}
			var hash []byte
			var raw string
			if err := st.storedCopy.QueryRowContext(ctx, ev.Source, ev.ID).Scan(&hash, &raw); err != nil {
				return nil, fmt.Errorf("read stored copy of (%s, %s): %w", ev.Source, ev.ID, err)
			}
			if bytes.Equal(hash, ev.Hash[:]) {
				res.Outcomes[r.idx] = ingest.Duplicate
				continue
			}
			res.Outcomes[r.idx] = ingest.Conflict
			res.Existing[r.idx] = json.RawMessage(raw)
			if _, err := tx.ExecContext(ctx, sqlInsertDead, ev.Source, ev.ID, string(ingest.CodeConflict), ingest.ConflictReason,
				string(ev.Raw), raw, ev.ReceivedAt.UnixMilli()); err != nil {
				return nil, fmt.Errorf("dead-letter conflict (%s, %s): %w", ev.Source, ev.ID, err)
			}
		}
	}
	if err := flushValues(); err != nil {
		return nil, err
	}
	now := s.opts.Now().UnixMilli()
	for _, req := range batch {
		for _, rej := range req.rejected {
			received := now
			if !rej.ReceivedAt.IsZero() {
				received = rej.ReceivedAt.UnixMilli()
			}
			if _, err := tx.ExecContext(ctx, sqlInsertDead, rej.Source, rej.ID, string(rej.Code), rej.Reason, string(rej.Event),
				nullable(rej.Existing), received); err != nil {
				return nil, fmt.Errorf("insert dead letter: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit ingest transaction: %w", err)
	}
	return results, nil
}

// insertChunk inserts n events numbered first, first+1, ... and sets inserted[j] for each row actually inserted.
func insertChunk(ctx context.Context, tx *sql.Tx, st *writeStmts, first int64, n int, args []any, inserted []bool) error {
	var res sql.Result
	var err error
	if n == chunkRows {
		res, err = st.events.ExecContext(ctx, args...)
	} else {
		res, err = tx.ExecContext(ctx, insertEventsSQL(n), args...)
	}
	if err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	count, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	all := count == int64(n)
	for j := range inserted {
		inserted[j] = all
	}
	if all {
		return nil
	}
	rows, err := st.seqsIn.QueryContext(ctx, first, first+int64(n))
	if err != nil {
		return fmt.Errorf("read inserted events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return fmt.Errorf("read inserted events: %w", err)
		}
		inserted[seq-first] = true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read inserted events: %w", err)
	}
	return nil
}

func nullable(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}
