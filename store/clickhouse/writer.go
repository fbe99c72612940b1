package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/ingest"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("clickhouse store closed")

// preCheckChunk bounds the keys of one pre-check query (the IN list is sent inline).
const preCheckChunk = 2000

type storedCopy struct {
	hash string
	raw  string
}

// Write stores a batch (ingest.Sink). The writer mutex makes seq assignment and the inserts one step: keys already
// stored are found first (duplicates and conflicts), new events get the next seqs, and their meter values are
// inserted before the event rows, so a retried batch after a failure between the two inserts is recognised only
// once its event rows exist; any copy that does slip in twice is removed at read time (argMin by seq). The inserts
// return after ClickHouse has written the parts.
func (s *Store) Write(ctx context.Context, events []*ingest.Event, rejected []*ingest.Rejection) (ingest.WriteResult, error) {
	res := ingest.WriteResult{Outcomes: make([]ingest.Outcome, len(events)), Existing: make([]json.RawMessage, len(events))}
	if len(events) == 0 && len(rejected) == 0 {
		return res, nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return ingest.WriteResult{}, ErrClosed
	}
	stored, err := s.storedCopies(ctx, events)
	if err != nil {
		return ingest.WriteResult{}, err
	}
	type deadRow struct {
		source, id, code, reason, event string
		existing                        *string
		received                        int64
	}
	var dead []deadRow
	var fresh []int // indexes of events to insert
	seq := s.seq
	seqs := make([]int64, len(events))
	for i, ev := range events {
		k := key(ev.Source, ev.ID)
		if c, ok := stored[k]; ok {
			if c.hash == string(ev.Hash[:]) {
				res.Outcomes[i] = ingest.Duplicate
				continue
			}
			res.Outcomes[i] = ingest.Conflict
			res.Existing[i] = json.RawMessage(c.raw)
			raw := c.raw
			dead = append(dead, deadRow{ev.Source, ev.ID, string(ingest.CodeConflict), ingest.ConflictReason, string(ev.Raw), &raw, ev.ReceivedAt.UnixMilli()})
			continue
		}
		// First copy of its key: later copies in the same batch are judged against it.
		stored[k] = storedCopy{hash: string(ev.Hash[:]), raw: string(ev.Raw)}
		res.Outcomes[i] = ingest.Stored
		if s.opts.Offsets != nil {
			if ev.Stream == nil {
				return ingest.WriteResult{}, errNoPosition
			}
			if seqs[i], err = streamSeq(ev.Stream); err != nil {
				return ingest.WriteResult{}, err
			}
		} else {
			seq++
			seqs[i] = seq
		}
		fresh = append(fresh, i)
	}
	now := s.opts.Now().UnixMilli()
	for _, rej := range rejected {
		received := now
		if !rej.ReceivedAt.IsZero() {
			received = rej.ReceivedAt.UnixMilli()
		}
		var existing *string
		if len(rej.Existing) > 0 {
			e := string(rej.Existing)
			existing = &e
		}
		dead = append(dead, deadRow{rej.Source, rej.ID, string(rej.Code), rej.Reason, string(rej.Event), existing, received})
	}
	// Whatever happens next, these seqs are used: a failed insert may still have stored some of its rows.
	s.seq = seq
	if len(fresh) > 0 {
		vb, err := s.conn.PrepareBatch(ctx, "INSERT INTO event_values (meter, time_ms, subject, source, id, seq, value, key)")
		if err != nil {
			return ingest.WriteResult{}, fmt.Errorf("prepare meter values insert: %w", err)
		}
		rows := 0
		for _, i := range fresh {
			ev := events[i]
			for _, v := range ev.Values {
				if err := vb.Append(v.Meter, ev.Time.UnixMilli(), ev.Subject, ev.Source, ev.ID, seqs[i], decimalValue(v.Value), v.Value); err != nil {
					_ = vb.Abort()
					return ingest.WriteResult{}, fmt.Errorf("append meter value: %w", err)
				}
				rows++
			}
		}
		if rows > 0 {
			if err := vb.Send(); err != nil {
				return ingest.WriteResult{}, fmt.Errorf("insert meter values (rows=%d): %w", rows, err)
			}
		} else {
			_ = vb.Abort()
		}
		eb, err := s.conn.PrepareBatch(ctx, "INSERT INTO events (seq, source, id, type, subject, time_ms, hash, raw, received_ms)")
		if err != nil {
			return ingest.WriteResult{}, fmt.Errorf("prepare events insert: %w", err)
		}
		for _, i := range fresh {
			ev := events[i]
			if err := eb.Append(seqs[i], ev.Source, ev.ID, ev.Type, ev.Subject, ev.Time.UnixMilli(), string(ev.Hash[:]), string(ev.Raw),
				ev.ReceivedAt.UnixMilli()); err != nil {
				_ = eb.Abort()
				return ingest.WriteResult{}, fmt.Errorf("append event: %w", err)
			}
		}
		if err := eb.Send(); err != nil {
			return ingest.WriteResult{}, fmt.Errorf("insert events (rows=%d): %w", len(fresh), err)
		}
	}
	if len(dead) > 0 {
		db, err := s.conn.PrepareBatch(ctx, "INSERT INTO dead_letters (n, source, id, code, reason, event, existing, received_ms)")
		if err != nil {
			return ingest.WriteResult{}, fmt.Errorf("prepare dead letters insert: %w", err)
		}
		n := s.dead
		for _, d := range dead {
			n++
			if err := db.Append(n, d.source, d.id, d.code, d.reason, d.event, d.existing, d.received); err != nil {
				_ = db.Abort()
				return ingest.WriteResult{}, fmt.Errorf("append dead letter: %w", err)
			}
		}
		s.dead = n
		if err := db.Send(); err != nil {
			return ingest.WriteResult{}, fmt.Errorf("insert dead letters (rows=%d): %w", len(dead), err)
		}
	}
	return res, nil
}

func key(source, id string) string { return source + "\x00" + id }

// storedCopies returns the first stored copy (by seq) of each key of events that is stored already.
func (s *Store) storedCopies(ctx context.Context, events []*ingest.Event) (map[string]storedCopy, error) {
	out := map[string]storedCopy{}
	for start := 0; start < len(events); start += preCheckChunk {
		chunk := events[start:min(start+preCheckChunk, len(events))]
		query, args := storedCopiesSQL(chunk)
		rows, err := s.conn.Query(ctx, query, args...)
		if err != nil {
			return nil, fmt.Errorf("look up stored copies: %w", err)
		}
		for rows.Next() {
			var source, id, hash, raw string
			if err := rows.Scan(&source, &id, &hash, &raw); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("read stored copy: %w", err)
			}
			out[key(source, id)] = storedCopy{hash: hash, raw: raw}
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("look up stored copies: %w", err)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up stored copies: %w", err)
		}
	}
	return out, nil
}

// storedCopiesSQL builds the pre-check of a chunk of events: the first stored copy of each of their keys.
func storedCopiesSQL(events []*ingest.Event) (string, []any) {
	var b strings.Builder
	b.WriteString("SELECT source, id, argMin(hash, seq), argMin(raw, seq) FROM events WHERE (source, id) IN (")
	args := make([]any, 0, 2*len(events))
	for i, ev := range events {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?)")
		args = append(args, ev.Source, ev.ID)
	}
	b.WriteString(") GROUP BY source, id")
	return b.String(), args
}

var maxInteger = decimal.New(1, 28)

// decimalValue is the Decimal(38, 10) form of a meter value: the value itself for SUM, MAX and COUNT (validated
// to 28 integer and 10 fractional digits), zero for a UNIQUE_COUNT key that is not such a decimal (its key column
// holds it).
func decimalValue(v string) decimal.Decimal {
	d, err := decimal.NewFromString(v)
	if err != nil || d.Exponent() < -10 || d.Abs().Cmp(maxInteger) >= 0 {
		return decimal.Zero
	}
	return d
}
