package report_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/koogallery"
	"github.com/meterd/meterd/store/sqlite"
)

// TestBuildKeepsRecordsInsideTheInstanceLife: KooGallery's times have whole seconds; an instance started and
// released mid-second gets begin rounded up and end rounded down, never a period outside its life (011).
func TestBuildKeepsRecordsInsideTheInstanceLife(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(cfgPath, []byte(`meters: [{key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}]
plans: [{sku: TOK, meter: tokens, currency: CNY, mode: fixed, unit_price: "2"}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "m.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	started := hour.Add(30*time.Minute + 250*time.Millisecond)
	released := hour.Add(40*time.Minute + 10*time.Second + 900*time.Millisecond)
	row := aggregate.Row{InstanceID: "i", Hour: hour, Meter: "tokens", Aggregation: "SUM", SKU: "TOK", Begin: started, End: released,
		Events: 1, Quantity: decimal.RequireFromString("1.25"), UnitScale: decimal.NewFromInt(1), UsageValue: decimal.RequireFromString("1.25")}
	if err := st.CommitClose(ctx, &aggregate.ClosedHour{Hour: hour, Snapshot: 1, ClosedAt: hour.Add(time.Hour), Rows: []aggregate.Row{row}}); err != nil {
		t.Fatal(err)
	}
	b := report.NewBuilder(report.BuildConfig{Ledger: st, Instances: st, Catalog: cfg.Catalog(), CloseDelay: 5 * time.Minute,
		Deadline: 15 * time.Minute, ValueAs: koogallery.ValueAsString})
	sdrs, err := b.Preview(ctx)
	if err != nil || len(sdrs) != 1 {
		t.Fatalf("%d SDRs, %v", len(sdrs), err)
	}
	s := sdrs[0]
	wantBody := `{"begin_time":"20261122T033001Z","end_time":"20261122T034010Z","instance_id":"i","metering_sn":"` + s.MeteringSN +
		`","record_time":"20261122T040500Z","usage_value":"1.25"}`
	if s.State != report.Pending || string(s.Body) != wantBody || !s.Amount.Equal(decimal.RequireFromString("2.5")) ||
		!s.Due.Equal(hour.Add(75*time.Minute)) {
		t.Fatalf("SDR %s %s amount %s due %s\n got %s\nwant %s", s.State, s.Reason, s.Amount, s.Due, s.Body, wantBody)
	}
}
