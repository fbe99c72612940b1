package clickhouse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/ext"
	"github.com/go-faster/city"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/ingest"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("clickhouse store closed")

// storedCopy is the first copy of a key: stored already (hash, and raw once a conflict needs it), or the first
// copy in the batch being written (first), whose raw is copied only if a later copy conflicts with it.
type storedCopy struct {
	hash  string
	raw   string
	first *ingest.Event
}

// Write stores a batch (ingest.Sink). The writer mutex makes seq assignment and the inserts one step: keys already
// stored are found first (duplicates and conflicts), new events get the next seqs, and their meter values and
// event rows are inserted before the digest index (event_digests), so a retried batch after a failure between the
// inserts is recognised only once all its rows exist; any copy that does slip in twice is removed at read time
// (argMin by seq). The inserts return after ClickHouse has written the parts.
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
			raw := c.raw
			if c.first != nil {
				raw = string(c.first.Raw)
			}
			res.Existing[i] = json.RawMessage(raw)
			dead = append(dead, deadRow{ev.Source, ev.ID, string(ingest.CodeConflict), ingest.ConflictReason, string(ev.Raw), &raw, ev.ReceivedAt.UnixMilli()})
			continue
		}
		// First copy of its key: later copies in the same batch are judged against it.
		stored[k] = storedCopy{hash: string(ev.Hash[:]), first: ev}
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
		if err := s.insertFresh(ctx, events, fresh, seqs); err != nil {
			return ingest.WriteResult{}, err
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

// eventKey is the dedup key (source, id) as a map key: no string built per event.
type eventKey struct{ source, id string }

func key(source, id string) eventKey { return eventKey{source, id} }

// insertFresh inserts the new events of a batch: their meter values and event rows, then, only once both are
// stored, their digests, so a key is found by the pre-check only when all its rows exist. A retry after a failure
// in between inserts the batch again: the pre-check does not know its keys yet, and the copies it may leave twice
// are removed at read time (argMin by seq). The first two inserts at once were measured no faster: on two cores
// shared with Kafka the server's CPU, not its latency, bounds them. Rows are handed to the driver column by
// column: one typed slice per column instead of a reflected Append per row, which took a fifth of the
// collector's CPU.
func (s *Store) insertFresh(ctx context.Context, events []*ingest.Event, fresh []int, seqs []int64) error {
	nv := 0
	for _, i := range fresh {
		nv += len(events[i].Values)
	}
	v := struct {
		meter, subject, source, id, key []string
		time, seq                       []int64
		value                           []decimal.Decimal
	}{meter: make([]string, 0, nv), subject: make([]string, 0, nv), source: make([]string, 0, nv), id: make([]string, 0, nv),
		key: make([]string, 0, nv), time: make([]int64, 0, nv), seq: make([]int64, 0, nv), value: make([]decimal.Decimal, 0, nv)}
	n := len(fresh)
	e := struct {
		seq, time, received            []int64
		source, id, typ, subject, hash []string
		raw                            []json.RawMessage // copied by the driver as it is, not first into a string
		kh, dh                         []uint64
	}{seq: make([]int64, n), time: make([]int64, n), received: make([]int64, n), source: make([]string, n),
		id: make([]string, n), typ: make([]string, n), subject: make([]string, n), hash: make([]string, n),
		raw: make([]json.RawMessage, n), kh: make([]uint64, n), dh: make([]uint64, n)}
	for j, i := range fresh {
		ev := events[i]
		for _, mv := range ev.Values {
			v.meter, v.subject, v.source, v.id = append(v.meter, mv.Meter), append(v.subject, ev.Subject), append(v.source, ev.Source), append(v.id, ev.ID)
			v.time, v.seq = append(v.time, ev.Time.UnixMilli()), append(v.seq, seqs[i])
			v.value, v.key = append(v.value, decimalValue(mv.Value)), append(v.key, mv.Value)
		}
		e.seq[j], e.time[j], e.received[j] = seqs[i], ev.Time.UnixMilli(), ev.ReceivedAt.UnixMilli()
		e.source[j], e.id[j], e.typ[j], e.subject[j] = ev.Source, ev.ID, ev.Type, ev.Subject
		e.hash[j], e.raw[j] = string(ev.Hash[:]), ev.Raw
		e.kh[j], e.dh[j] = keyHash(ev.Source, ev.ID), digest(ev.Source, ev.ID, ev.Hash[:])
	}
	if nv > 0 {
		if err := s.insertColumns(ctx, "INSERT INTO event_values (meter, time_ms, subject, source, id, seq, value, key)", nv,
			v.meter, v.time, v.subject, v.source, v.id, v.seq, v.value, v.key); err != nil {
			return fmt.Errorf("insert meter values (rows=%d): %w", nv, err)
		}
	}
	if err := s.insertColumns(ctx, "INSERT INTO events (seq, source, id, type, subject, time_ms, hash, raw, received_ms)", n,
		e.seq, e.source, e.id, e.typ, e.subject, e.time, e.hash, e.raw, e.received); err != nil {
		return fmt.Errorf("insert events (rows=%d): %w", n, err)
	}
	if err := s.insertColumns(ctx, "INSERT INTO event_digests (kh, dh)", n, e.kh, e.dh); err != nil {
		return fmt.Errorf("insert event digests (rows=%d): %w", n, err)
	}
	return nil
}

// insertChunkRows is how many rows insertColumns hands the driver at a time. The driver encodes what it holds
// into a second buffer before sending, so a whole batch of 50,000 events held the event columns three times over;
// in chunks the columns are held once. The server squashes the blocks of one INSERT into parts of up to about a
// million rows (min_insert_block_size_rows), so chunking adds no parts to merge.
const insertChunkRows = 8192

// insertColumns runs one INSERT of query's columns, each given as a slice of its values, all of length rows, sent
// to the server insertChunkRows at a time.
func (s *Store) insertColumns(ctx context.Context, query string, rows int, columns ...any) error {
	b, err := s.conn.PrepareBatch(ctx, query)
	if err != nil {
		return err
	}
	for lo := 0; lo < rows; lo += insertChunkRows {
		hi := min(lo+insertChunkRows, rows)
		for i, col := range columns {
			if err := b.Column(i).Append(reflect.ValueOf(col).Slice(lo, hi).Interface()); err != nil {
				return errors.Join(fmt.Errorf("column %d: %w", i, err), b.Abort())
			}
		}
		if hi < rows {
			if err := b.Flush(); err != nil {
				return errors.Join(err, b.Abort())
			}
		}
	}
	return b.Send()
}

// storedCopies returns the first stored copy (by seq) of each key of events that is stored already: its hash, and
// its raw event when it conflicts with a copy in events (only then is raw needed, to dead-letter beside it).
//
// The narrow digest index (event_digests) answers nearly every key: a key not there is new, a key there with the
// batch copy's own digest is a duplicate. Only the rest, a conflict, a key hash collision, or a key stored with
// several contents, is read from events: the first copy's hash, then raw (by far the widest column) for the
// conflicting keys alone. Keys travel as external tables, not inline IN lists: one query per step whatever the
// batch size, within max_query_size.
func (s *Store) storedCopies(ctx context.Context, events []*ingest.Event) (map[eventKey]storedCopy, error) {
	out := make(map[eventKey]storedCopy, len(events))
	if len(events) == 0 {
		return out, nil
	}
	digests, err := s.storedDigests(ctx, events)
	if err != nil || len(digests) == 0 {
		return out, err
	}
	var unresolved []*ingest.Event
	asked := map[eventKey]bool{}
	for _, ev := range events {
		ds, ok := digests[keyHash(ev.Source, ev.ID)]
		if !ok {
			continue
		}
		k := key(ev.Source, ev.ID)
		if len(ds) == 1 && ds[0] == digest(ev.Source, ev.ID, ev.Hash[:]) {
			// Every stored copy has this content, so the first one does too.
			if _, seen := out[k]; !seen {
				out[k] = storedCopy{hash: string(ev.Hash[:])}
			}
			continue
		}
		// A conflict, a key hash collision, or a key stored with several contents: read from events.
		if !asked[k] {
			unresolved = append(unresolved, ev)
			asked[k] = true
		}
	}
	if len(unresolved) == 0 {
		return out, nil
	}
	for _, ev := range unresolved {
		delete(out, key(ev.Source, ev.ID))
	}
	err = s.queryKeys(ctx, storedHashesSQL, unresolved, func(source, id, hash string) {
		out[key(source, id)] = storedCopy{hash: hash}
	})
	if err != nil {
		return nil, err
	}
	var conflicting []*ingest.Event
	clear(asked)
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

// keyHash is the digest index's key of an event key: ClickHouse's cityHash64(concat(source, '\0', id)).
func keyHash(source, id string) uint64 {
	var buf [keyBufSize]byte // on the stack: no allocation per event unless the key is longer
	return city.CH64(append(append(append(buf[:0], source...), 0), id...))
}

// keyBufSize holds an ASCII source and id of the longest valid length (256 characters each), two separators and
// a content hash; longer (multi-byte) keys only cost an allocation.
const keyBufSize = 2*256 + 2 + 32

// digest identifies one stored copy in the digest index: ClickHouse's cityHash64(concat(source, '\0', id, '\0',
// hash)). It covers the key as well as the content hash, so equal digests under equal key hashes mean the same
// key with the same content unless two 64-bit hashes collide at once.
func digest(source, id string, hash []byte) uint64 {
	var buf [keyBufSize]byte
	return city.CH64(append(append(append(append(append(buf[:0], source...), 0), id...), 0), hash...))
}

// digestsSQL reads the digests stored under the key hashes of a batch (the external table batch_kh). PREWHERE
// reads dh only from the granules where a key hash matched.
const digestsSQL = "SELECT DISTINCT kh, dh FROM event_digests PREWHERE kh IN (SELECT kh FROM batch_kh)"

// storedDigests returns the distinct digests stored under each key hash of events that the index holds: the
// index read is narrow (one pair of UInt64 per copy, granules of 256 rows), so new keys, nearly all of a batch,
// cost no read of events.
func (s *Store) storedDigests(ctx context.Context, events []*ingest.Event) (map[uint64][]uint64, error) {
	table, err := ext.NewTable("batch_kh", ext.Column("kh", "UInt64"))
	if err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	for _, ev := range events {
		if err := table.Append(keyHash(ev.Source, ev.ID)); err != nil {
			return nil, fmt.Errorf("look up stored keys: %w", err)
		}
	}
	rows, err := s.conn.Query(ch.Context(ctx, ch.WithExternalTable(table)), digestsSQL)
	if err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	defer func() { _ = rows.Close() }()
	found := map[uint64][]uint64{}
	for rows.Next() {
		var kh, dh uint64
		if err := rows.Scan(&kh, &dh); err != nil {
			return nil, fmt.Errorf("read stored key: %w", err)
		}
		found[kh] = append(found[kh], dh)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up stored keys: %w", err)
	}
	return found, nil
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
