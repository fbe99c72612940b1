package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/go-faster/city"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/ingest"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("clickhouse store closed")

type storedCopy struct {
	hash string
	raw  string
}

// Write stores a batch (ingest.Sink). The writer mutex makes seq assignment and the inserts one step: keys already
// stored are found first (duplicates and conflicts), new events get the next seqs, and their meter values are
// inserted before the event rows and those before the key index (event_keys), so a retried batch after a failure
// between the inserts is recognised only once all its rows exist; any copy that does slip in twice is removed at
// read time (argMin by seq). The inserts return after ClickHouse has written the parts.
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
		// The pre-check's index, last: a key is found by the pre-check only once all its rows are stored.
		kb, err := s.conn.PrepareBatch(ctx, "INSERT INTO event_keys (kh)")
		if err != nil {
			return ingest.WriteResult{}, fmt.Errorf("prepare event keys insert: %w", err)
		}
		for _, i := range fresh {
			if err := kb.Append(keyHash(events[i].Source, events[i].ID)); err != nil {
				_ = kb.Abort()
				return ingest.WriteResult{}, fmt.Errorf("append event key: %w", err)
			}
		}
		if err := kb.Send(); err != nil {
			return ingest.WriteResult{}, fmt.Errorf("insert event keys (rows=%d): %w", len(fresh), err)
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

// storedCopies returns the first stored copy (by seq) of each key of events that is stored already: its hash, and
// its raw event when it conflicts with a copy in events (only then is raw needed, to dead-letter beside it).
//
// First the narrow key index (candidates) narrows the batch to the keys that may be stored, nearly always a
// few; only those are read from events, their hash, then raw (by far the widest column) for conflicting keys
// alone. Keys travel as external tables, not inline IN lists: one query per step whatever the batch size, within
// max_query_size.
func (s *Store) storedCopies(ctx context.Context, events []*ingest.Event) (map[string]storedCopy, error) {
	out := map[string]storedCopy{}
	if len(events) == 0 {
		return out, nil
	}
	events, err := s.candidates(ctx, events)
	if err != nil || len(events) == 0 {
		return out, err
	}
	err = s.queryKeys(ctx, storedHashesSQL, events, func(source, id, hash string) {
		out[key(source, id)] = storedCopy{hash: hash}
	})
	if err != nil {
		return nil, err
	}
	var conflicting []*ingest.Event
	asked := map[string]bool{}
	for _, ev := range events {
		k := key(ev.Source, ev.ID)
		if c, ok := out[k]; ok && c.hash != string(ev.Hash[:]) && !asked[k] {
			conflicting = append(conflicting, ev)
			asked[k] = true
		}
	}
	if len(conflicting) == 0 {
		return out, nil
	}
	err = s.queryKeys(ctx, storedRawSQL, conflicting, func(source, id, raw string) {
		c := out[key(source, id)]
		c.raw = raw
		out[key(source, id)] = c
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// keyHash is the pre-check index's key of an event key: ClickHouse's cityHash64(concat(source, '\0', id)).
func keyHash(source, id string) uint64 { return city.CH64([]byte(source + "\x00" + id)) }

// candidatesSQL finds which key hashes of a batch (the external table batch_kh) the index holds.
const candidatesSQL = "SELECT DISTINCT kh FROM event_keys WHERE kh IN (SELECT kh FROM batch_kh)"

// candidates returns the events whose key hash is in the pre-check index: the only ones that may be stored. The
// index read is narrow and bounded by the batch (0007_event_keys.sql), so new keys, nearly all of a batch, cost
// no read of events.
func (s *Store) candidates(ctx context.Context, events []*ingest.Event) ([]*ingest.Event, error) {
	table, err := ext.NewTable("batch_kh", ext.Column("kh", "UInt64"))
	if err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	hashes := make([]uint64, len(events))
	for i, ev := range events {
		hashes[i] = keyHash(ev.Source, ev.ID)
		if err := table.Append(hashes[i]); err != nil {
			return nil, fmt.Errorf("look up stored keys: %w", err)
		}
	}
	rows, err := s.conn.Query(ch.Context(ctx, ch.WithExternalTable(table)), candidatesSQL)
	if err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	defer func() { _ = rows.Close() }()
	found := map[uint64]bool{}
	for rows.Next() {
		var kh uint64
		if err := rows.Scan(&kh); err != nil {
			return nil, fmt.Errorf("read stored key: %w", err)
		}
		found[kh] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	var out []*ingest.Event
	for i, ev := range events {
		if found[hashes[i]] {
			out = append(out, ev)
		}
	}
	return out, nil
}

// The pre-check's queries: the first stored copy's hash, then its raw event, of each key in batch_keys.
const (
	storedHashesSQL = "SELECT source, id, argMin(hash, seq) FROM events WHERE (source, id) IN (SELECT source, id FROM batch_keys) GROUP BY source, id"
	storedRawSQL    = "SELECT source, id, argMin(raw, seq) FROM events WHERE (source, id) IN (SELECT source, id FROM batch_keys) GROUP BY source, id"
)

// queryKeys runs query with the keys of events as the external table batch_keys (source, id) and calls row for
// each (source, id, value) row of the result.
func (s *Store) queryKeys(ctx context.Context, query string, events []*ingest.Event, row func(source, id, v string)) error {
	keys, err := ext.NewTable("batch_keys", ext.Column("source", "String"), ext.Column("id", "String"))
	if err != nil {
		return fmt.Errorf("look up stored copies: %w", err)
	}
	for _, ev := range events {
		if err := keys.Append(ev.Source, ev.ID); err != nil {
			return fmt.Errorf("look up stored copies: %w", err)
		}
	}
	rows, err := s.conn.Query(ch.Context(ctx, ch.WithExternalTable(keys)), query)
	if err != nil {
		return fmt.Errorf("look up stored copies: %w", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var source, id, v string
		if err := rows.Scan(&source, &id, &v); err != nil {
			return fmt.Errorf("read stored copy: %w", err)
		}
		row(source, id, v)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("look up stored copies: %w", err)
	}
	return nil
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
