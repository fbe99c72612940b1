package report_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
	"github.com/meterd/meterd/store/sqlite"
)

// BenchmarkPushHour measures the time from a committed hour close to every SDR ACCEPTED by the simulator on
// loopback: build (pricing included) and push in batches of 1,000. Size: METERD_BENCH_SDRS (default 100,000).
//
//	METERD_BENCH_SDRS=100000 go test -run='^$' -bench=PushHour -benchtime=1x ./report/
func BenchmarkPushHour(b *testing.B) {
	n := 100000
	if s := os.Getenv("METERD_BENCH_SDRS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	now := hour.Add(65 * time.Minute)
	clock := func() time.Time { return now }
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		cfgPath := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(cfgPath, []byte(`meters: [{key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}]
plans: [{sku: TOK, meter: tokens, currency: CNY, mode: step, accumulation: month, timezone: Asia/Shanghai, brackets: [{up_to: "100", unit_price: "0.3"}, {unit_price: "0.2"}]}]
`), 0o600); err != nil {
			b.Fatal(err)
		}
		cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
		if err != nil {
			b.Fatal(err)
		}
		st, err := sqlite.Open(ctx, filepath.Join(dir, "m.db"), sqlite.Options{Now: clock})
		if err != nil {
			b.Fatal(err)
		}
		ch := &aggregate.ClosedHour{Hour: hour, Snapshot: 1, ClosedAt: now}
		for i := 0; i < n; i++ {
			uv := decimal.New(int64(1+i%5000), -2)
			ch.Rows = append(ch.Rows, aggregate.Row{InstanceID: fmt.Sprintf("inst-%06d", i), Hour: hour, Meter: "tokens",
				Aggregation: "SUM", SKU: "TOK", Begin: hour, End: hour.Add(time.Hour), Events: 1, Quantity: uv, UnitScale: decimal.NewFromInt(1),
				UsageValue: uv})
		}
		if err := st.CommitClose(ctx, ch); err != nil {
			b.Fatal(err)
		}
		sim := kgsim.New(kgsim.Config{Key: testKey, Now: clock})
		srv := httptest.NewServer(sim)
		client, err := koogallery.NewClient(koogallery.Config{Endpoint: srv.URL, Key: func() ([]byte, error) { return testKey, nil },
			Timeout: 30 * time.Second, Now: clock})
		if err != nil {
			b.Fatal(err)
		}
		builder := report.NewBuilder(report.BuildConfig{Ledger: st, Instances: st, Catalog: cfg.Catalog(), CloseDelay: 5 * time.Minute,
			Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsNumber})
		p, err := report.NewPusher(report.PusherConfig{Ledger: st, Builder: builder, Instances: st, Client: client, Holder: "bench",
			BatchSize: 1000, RetryInitial: time.Second, RetryMax: time.Minute, Now: clock})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		sum, err := p.RunOnce(ctx, report.RunOptions{})
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(t0)
		b.StopTimer()
		if sum.Built != n || sum.Accepted != n || sim.Stats().Billed != n {
			b.Fatalf("built %d, accepted %d, billed %d; want %d", sum.Built, sum.Accepted, sim.Stats().Billed, n)
		}
		b.ReportMetric(elapsed.Seconds(), "s-to-all-accepted")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "sdrs/s")
		srv.Close()
		if err := st.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
