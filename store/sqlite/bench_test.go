package sqlite

import (
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
)

// BenchmarkWrite measures the store's dedup insert of batches of 1,000 new events (the ceiling of HTTP ingest).
// go test -run='^$' -bench=Write -benchmem ./store/sqlite/
func BenchmarkWrite(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "b.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	n := 0
	batch := func() []*ingest.Event {
		evs := make([]*ingest.Event, 1000)
		for i := range evs {
			id := fmt.Sprintf("bench-%d", n)
			raw := fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"bench","type":"llm_request","subject":"tenant-%d","time":"2026-11-22T03:00:00Z","data":{"tokens":"%d.5"}}`, id, n%100, n%1000)
			evs[i] = &ingest.Event{Source: "bench", ID: id, Type: "llm_request", Subject: fmt.Sprintf("tenant-%d", n%100),
				Time: t0.Add(time.Duration(n) * time.Millisecond), ReceivedAt: t0,
				Values: []ingest.MeterValue{{Meter: "tokens", Value: fmt.Sprintf("%d.5", n%1000)}}, Raw: []byte(raw),
				Hash: sha256.Sum256([]byte(raw))}
			n++
		}
		return evs
	}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		evs := batch()
		b.StartTimer()
		if _, err := s.Write(context.Background(), evs, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}
