package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

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
		for i, r := range batch {
			if err != nil {
				r.result <- writeResp{err: err}
				continue
			}
			r.result <- writeResp{res: results[i]}
		}
	}
}

const (
	sqlInsertEvent = `INSERT INTO events (source, id, type, subject, time_ms, hash, raw, received_ms)
VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING RETURNING seq`
	sqlInsertValue = `INSERT INTO event_values (seq, meter, subject, time_ms, value) VALUES (?, ?, ?, ?, ?)`
	sqlStoredCopy  = `SELECT hash, raw FROM events WHERE source = ? AND id = ?`
	sqlInsertDead  = `INSERT INTO dead_letters (source, id, code, reason, event, existing, received_ms)
VALUES (?, ?, ?, ?, ?, ?, ?)`
)

// commit writes all requests in one transaction. Within it, the events are inserted in request order, so the
// first copy of a key wins even when several copies arrive in the same batch.
func (s *Store) commit(batch []*writeReq) (results []ingest.WriteResult, err error) {
	ctx := context.Background() // the batch belongs to several requests: none of their contexts may abort it
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin ingest transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	insEvent, err := tx.PrepareContext(ctx, sqlInsertEvent)
	if err != nil {
		return nil, fmt.Errorf("prepare event insert: %w", err)
	}
	defer insEvent.Close()
	insValue, err := tx.PrepareContext(ctx, sqlInsertValue)
	if err != nil {
		return nil, fmt.Errorf("prepare value insert: %w", err)
	}
	defer insValue.Close()
	stored, err := tx.PrepareContext(ctx, sqlStoredCopy)
	if err != nil {
		return nil, fmt.Errorf("prepare stored-copy lookup: %w", err)
	}
	defer stored.Close()
	insDead, err := tx.PrepareContext(ctx, sqlInsertDead)
	if err != nil {
		return nil, fmt.Errorf("prepare dead-letter insert: %w", err)
	}
	defer insDead.Close()

	now := s.opts.Now().UnixMilli()
	results = make([]ingest.WriteResult, len(batch))
	for bi, req := range batch {
		res := ingest.WriteResult{Outcomes: make([]ingest.Outcome, len(req.events)), Existing: make([]json.RawMessage, len(req.events))}
		for i, ev := range req.events {
			var seq int64
			err := insEvent.QueryRowContext(ctx, ev.Source, ev.ID, ev.Type, ev.Subject, ev.Time.UnixMilli(),
				ev.Hash[:], string(ev.Raw), ev.ReceivedAt.UnixMilli()).Scan(&seq)
			switch {
			case err == nil:
				res.Outcomes[i] = ingest.Stored
				for _, v := range ev.Values {
					if _, err := insValue.ExecContext(ctx, seq, v.Meter, ev.Subject, ev.Time.UnixMilli(), v.Value); err != nil {
						return nil, fmt.Errorf("insert meter value (seq=%d meter=%s): %w", seq, v.Meter, err)
					}
				}
			case errors.Is(err, sql.ErrNoRows): // the key exists: duplicate or conflict
				var hash []byte
				var raw string
				if err := stored.QueryRowContext(ctx, ev.Source, ev.ID).Scan(&hash, &raw); err != nil {
					return nil, fmt.Errorf("read stored copy of (%s, %s): %w", ev.Source, ev.ID, err)
				}
				if bytes.Equal(hash, ev.Hash[:]) {
					res.Outcomes[i] = ingest.Duplicate
					continue
				}
				res.Outcomes[i] = ingest.Conflict
				res.Existing[i] = json.RawMessage(raw)
				if _, err := insDead.ExecContext(ctx, ev.Source, ev.ID, string(ingest.CodeConflict), ingest.ConflictReason,
					string(ev.Raw), raw, ev.ReceivedAt.UnixMilli()); err != nil {
					return nil, fmt.Errorf("dead-letter conflict (%s, %s): %w", ev.Source, ev.ID, err)
				}
			default:
				return nil, fmt.Errorf("insert event (%s, %s): %w", ev.Source, ev.ID, err)
			}
		}
		for _, rej := range req.rejected {
			received := now
			if !rej.ReceivedAt.IsZero() {
				received = rej.ReceivedAt.UnixMilli()
			}
			if _, err := insDead.ExecContext(ctx, rej.Source, rej.ID, string(rej.Code), rej.Reason, string(rej.Event),
				nullable(rej.Existing), received); err != nil {
				return nil, fmt.Errorf("insert dead letter: %w", err)
			}
		}
		results[bi] = res
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit ingest transaction: %w", err)
	}
	return results, nil
}

func nullable(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}
