package ingest_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meterd/meterd/ingest"
)

// BenchmarkDecodeValidate measures the CPU cost of turning an NDJSON body of 1,000 events into validated events.
// go test -run='^$' -bench=DecodeValidate -benchmem ./ingest/
func BenchmarkDecodeValidate(b *testing.B) {
	at := now.Add(-time.Hour)
	var body []byte
	for i := 0; i < 1000; i++ {
		body = append(body, ev(fmt.Sprintf("id-%d", i), "llm_request", fmt.Sprintf("tenant-%d", i%100), at, fmt.Sprintf(`{"tokens":"%d.%d"}`, i, i%10))...)
		body = append(body, '\n')
	}
	meters := testMetersB(b)
	v := ingest.NewValidator(meters, 21*24*time.Hour, 5*time.Minute)
	h := http.Header{"Content-Type": []string{ingest.MediaNDJSON}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		items, err := ingest.Decode(h, body)
		if err != nil {
			b.Fatal(err)
		}
		for _, it := range items {
			if _, rej := v.Validate(it.Raw, now); rej != nil {
				b.Fatal(rej.Reason)
			}
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}
