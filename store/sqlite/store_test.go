package sqlite

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func event(id string, value string) *ingest.Event {
	e := &ingest.Event{Source: "src", ID: id, Type: "llm_request", Subject: "t1",
		Time:       time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC),
		ReceivedAt: time.Date(2026, 11, 22, 3, 1, 0, 0, time.UTC),
		Values:     []ingest.MeterValue{{Meter: "tokens", Value: value}},
		Raw:        []byte(fmt.Sprintf(`{"id":%q,"v":%q}`, id, value))}
	e.Hash = sha256.Sum256([]byte(id + "/" + value))
	return e
}

func TestMigrateIsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.db")
	s := openTest(t, path)
	v, err := s.SchemaVersion(context.Background())
	if err != nil || v < 1 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	again, err := s.Migrate(context.Background())
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate applied %v, %v", again, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path)
	defer s.Close()
	if v2, _ := s.SchemaVersion(context.Background()); v2 != v {
		t.Fatalf("version after reopen %d, want %d", v2, v)
	}
}

// TestConcurrentWritesStoreEachKeyOnce sends overlapping batches from many goroutines, so that group commits mix
// requests: every key must be Stored exactly once overall, every other copy a Duplicate, and LastSeq must be the
// highest sequence. (The sequence may have gaps: a duplicate's INSERT consumes a value. Only its order matters.)
func TestConcurrentWritesStoreEachKeyOnce(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "c.db"))
	defer s.Close()
	const writers, batches, perBatch, keys = 8, 25, 40, 500
	var mu sync.Mutex
	stored := map[string]int{}
	dups := 0
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				evs := make([]*ingest.Event, perBatch)
				for i := range evs {
					evs[i] = event(fmt.Sprintf("k%d", (w*7919+b*104729+i*31)%keys), "1")
				}
				res, err := s.Write(context.Background(), evs, nil)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for i, o := range res.Outcomes {
					switch o {
					case ingest.Stored:
						stored[evs[i].ID]++
					case ingest.Duplicate:
						dups++
					default:
						t.Errorf("outcome %v for identical copies", o)
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	for id, n := range stored {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
	if len(stored)+dups != writers*batches*perBatch {
		t.Errorf("outcomes %d stored + %d duplicates != %d sent", len(stored), dups, writers*batches*perBatch)
	}
	var count, maxSeq, values int64
	if err := s.read.QueryRow("SELECT count(*), max(seq) FROM events").Scan(&count, &maxSeq); err != nil {
		t.Fatal(err)
	}
	if err := s.read.QueryRow("SELECT count(*) FROM event_values").Scan(&values); err != nil {
		t.Fatal(err)
	}
	last, err := s.LastSeq(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if count != int64(len(stored)) || maxSeq < count || last != maxSeq || values != count {
		t.Errorf("rows %d, max seq %d, LastSeq %d, values %d; want %d rows and values, LastSeq = max seq", count, maxSeq, last, values, len(stored))
	}
}

func TestWriteAfterCloseFails(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "x.db"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(context.Background(), []*ingest.Event{event("a", "1")}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}
