package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/meterd/meterd/ingest"
)

// Offsets tells, per partition of the events topic, the offset below which every message is stored. For a
// consumer group that commits only after its insert returned, these are its committed offsets.
type Offsets interface {
	StoredOffsets(ctx context.Context) (map[int]int64, error)
}

// Positions in a stream-fed store: seq = partition << posBits | offset. 2^40 offsets per partition is decades of
// traffic at a million messages a second, and 2^23 partitions more than any topic has.
const (
	posBits = 40
	posMask = int64(1)<<posBits - 1
)

// streamSeq is the ingest sequence of an event read from Kafka.
func streamSeq(p *ingest.StreamPos) (int64, error) {
	if p.Partition < 0 || p.Partition >= 1<<23 || p.Offset < 0 || p.Offset > posMask {
		return 0, fmt.Errorf("kafka position partition %d offset %d is out of the store's range", p.Partition, p.Offset)
	}
	return int64(p.Partition)<<posBits | p.Offset, nil
}

// snapshots keeps the stream snapshots this process has read or taken: they never change once written.
type snapshots struct {
	mu      sync.Mutex
	last    int64             // newest snapshot number this process knows
	vectors map[int64][]int64 // snapshot -> next offset per partition (index = partition)
}

// vector returns the offsets of snapshot n (empty for 0: nothing stored yet).
func (s *Store) vector(ctx context.Context, n int64) ([]int64, error) {
	if n == 0 {
		return nil, nil
	}
	s.snaps.mu.Lock()
	defer s.snaps.mu.Unlock()
	if v, ok := s.snaps.vectors[n]; ok {
		return v, nil
	}
	rows, err := s.conn.Query(ctx, `SELECT partition, next_offset FROM stream_snapshots WHERE snapshot = ? ORDER BY partition`, n)
	if err != nil {
		return nil, fmt.Errorf("read stream snapshot %d: %w", n, err)
	}
	defer func() { _ = rows.Close() }()
	var v []int64
	found := false
	for rows.Next() {
		var p int32
		var off int64
		if err := rows.Scan(&p, &off); err != nil {
			return nil, fmt.Errorf("read stream snapshot %d: %w", n, err)
		}
		for len(v) <= int(p) {
			v = append(v, -1)
		}
		if v[p] != -1 {
			return nil, fmt.Errorf("stream snapshot %d has two rows for partition %d: it was taken twice", n, p)
		}
		v[p] = off
		found = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read stream snapshot %d: %w", n, err)
	}
	if !found {
		return nil, fmt.Errorf("stream snapshot %d does not exist", n)
	}
	for p := range v {
		v[p] = max(v[p], 0) // a partition missing from a snapshot is at offset 0 there
	}
	s.snaps.vectors[n] = v
	return v, nil
}

// takeSnapshot records the stored offsets as a new snapshot, or returns the newest one when nothing moved since
// (previews of open hours ask often; they must not add a row each time).
func (s *Store) takeSnapshot(ctx context.Context) (int64, error) {
	offs, err := s.opts.Offsets.StoredOffsets(ctx)
	if err != nil {
		return 0, fmt.Errorf("read stored kafka offsets: %w", err)
	}
	var v []int64
	for _, p := range slices.Sorted(maps.Keys(offs)) {
		if p < 0 || offs[p] < 0 {
			continue // no commit yet: nothing of this partition is known to be stored
		}
		for len(v) <= p {
			v = append(v, 0)
		}
		v[p] = offs[p]
	}
	s.snaps.mu.Lock()
	defer s.snaps.mu.Unlock()
	if last, ok := s.snaps.vectors[s.snaps.last]; ok && slices.Equal(last, v) {
		return s.snaps.last, nil
	}
	if len(v) == 0 && s.snaps.last == 0 {
		return 0, nil
	}
	// Offsets never go back: a snapshot below the previous one would hide stored events from every hour.
	if prev, ok := s.snaps.vectors[s.snaps.last]; ok {
		for p, off := range prev {
			if p >= len(v) || v[p] < off {
				return 0, fmt.Errorf("stored offsets went back on partition %d (from %d): refusing the snapshot", p, off)
			}
		}
	}
	// Every process with the store open may take snapshots (the scheduler's closes, the API's previews of open
	// hours), so a number must be unique across processes, not just the next after this process's last: the
	// time in microseconds with three random digits, and above the newest number in the store, so that a new
	// leader whose clock is behind the old one's still numbers above the previous close's snapshot.
	var newest int64
	if err := s.conn.QueryRow(ctx, `SELECT max(snapshot) FROM stream_snapshots`).Scan(&newest); err != nil {
		return 0, fmt.Errorf("read newest stream snapshot: %w", err)
	}
	n := max(s.snaps.last+1, newest+1, s.opts.Now().UnixMicro()*1000+rand.Int64N(1000))
	now := s.opts.Now().UnixMilli()
	err = s.insert(ctx, `INSERT INTO stream_snapshots (snapshot, partition, next_offset, taken_ms)`, len(v), func(b driver.Batch, i int) error {
		return b.Append(n, int32(i), v[i], now)
	})
	if err != nil {
		return 0, fmt.Errorf("record stream snapshot: %w", err)
	}
	s.snaps.last = n
	s.snaps.vectors[n] = v
	return n, nil
}

// loadSnapshots reads the newest snapshot number at open.
func (s *Store) loadSnapshots(ctx context.Context) error {
	s.snaps.vectors = map[int64][]int64{}
	if err := s.conn.QueryRow(ctx, `SELECT max(snapshot) FROM stream_snapshots`).Scan(&s.snaps.last); err != nil {
		return fmt.Errorf("read last stream snapshot: %w", err)
	}
	if s.snaps.last > 0 {
		if _, err := s.vector(ctx, s.snaps.last); err != nil {
			return err
		}
	}
	return nil
}

// seqWindow renders "col lies in the ingest window (after, upto]" with its arguments. In a stream-fed store the
// numbers are snapshots and the window is per partition: offset in [after[partition], upto[partition]).
func (s *Store) seqWindow(ctx context.Context, col string, after, upto int64) (string, []any, error) {
	if s.opts.Offsets == nil {
		return col + " > ? AND " + col + " <= ?", []any{after, upto}, nil
	}
	va, err := s.vector(ctx, after)
	if err != nil {
		return "", nil, err
	}
	vb, err := s.vector(ctx, upto)
	if err != nil {
		return "", nil, err
	}
	if len(vb) == 0 {
		return "0", nil, nil // nothing stored up to upto
	}
	// arrayElement is 1-based and gives 0 past the end: a partition missing from a snapshot is at offset 0.
	off := fmt.Sprintf("bitAnd(%s, %d)", col, posMask)
	part := fmt.Sprintf("toUInt32(bitShiftRight(%s, %d)) + 1", col, posBits)
	if len(va) == 0 {
		va = []int64{0}
	}
	return fmt.Sprintf("%s >= arrayElement(?, %s) AND %s < arrayElement(?, %s)", off, part, off, part), []any{va, vb}, nil
}

var errNoPosition = errors.New("event has no kafka position: a stream-fed store stores only what collectors read from the events topic")
