package sqlite

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate"
)

// TestCommitCloseWritesEveryRow commits hours of more rows than one statement carries (full statements and a
// shorter last one), then checks every row and every carry as read back, including carries updated by the next
// hour and those of instances it does not have.
func TestCommitCloseWritesEveryRow(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "close.db"))
	defer s.Close()
	hour := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	rows := func(h time.Time, from, to int) []aggregate.Row {
		var out []aggregate.Row
		for i := from; i < to; i++ {
			out = append(out, aggregate.Row{InstanceID: fmt.Sprintf("inst-%04d", i), Hour: h, Meter: "tokens", Aggregation: "SUM",
				SKU: "TOK", Begin: h.Add(time.Duration(i) * time.Second), End: h.Add(time.Hour), Events: int64(i),
				Quantity: decimal.New(int64(i)*7+1, -3), LateEvents: int64(i % 3), LateQuantity: decimal.New(int64(i%3), -1),
				UnitScale: decimal.RequireFromString("0.001"), CarryIn: decimal.New(int64(i%5), -5), UsageValue: decimal.New(int64(i), -4),
				CarryOut: decimal.New(int64(h.Hour()*1000+i), -6)})
		}
		return out
	}
	first := rows(hour, 0, 2*closeChunkRows+22)
	second := rows(hour.Add(time.Hour), 10, 2*closeChunkRows+40)
	for n, c := range []*aggregate.ClosedHour{
		{Hour: hour, Snapshot: 10, ClosedAt: hour.Add(65 * time.Minute), Rows: first},
		{Hour: hour.Add(time.Hour), Snapshot: 20, PrevSnapshot: 10, ClosedAt: hour.Add(125 * time.Minute), Rows: second},
	} {
		if err := s.CommitClose(ctx, c); err != nil {
			t.Fatal(err)
		}
		got, err := s.UsageRows(ctx, aggregate.UsageQuery{From: c.Hour, To: c.Hour.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(c.Rows) {
			t.Fatalf("close %d: %d rows read back, want %d", n, len(got), len(c.Rows))
		}
		for i, r := range got {
			if want := c.Rows[i]; fmt.Sprint(r) != fmt.Sprint(want) {
				t.Errorf("close %d row %d\n got %v\nwant %v", n, i, r, want)
			}
		}
		if m, ok, err := s.GetClose(ctx, c.Hour); err != nil || !ok || m.Rows != len(c.Rows) || m.Snapshot != c.Snapshot {
			t.Errorf("close %d marker %+v, %v, %v", n, m, ok, err)
		}
	}
	carries, err := s.Carries(ctx, hour.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]aggregate.Row{}
	for _, r := range append(first, second...) {
		want[r.InstanceID] = r // the second hour's wins where both have the instance
	}
	if len(carries) != len(want) {
		t.Errorf("%d carries, want %d", len(carries), len(want))
	}
	for id, r := range want {
		c := carries[id]
		if !c.Hour.Equal(r.Hour) || !c.CarryOut.Equal(r.CarryOut) || c.ReleaseWrittenOff {
			t.Errorf("carry of %s: %+v, want hour %s carry %s", id, c, r.Hour, r.CarryOut)
		}
	}
	if err := s.CommitClose(ctx, &aggregate.ClosedHour{Hour: hour, Rows: first[:1]}); !errors.Is(err, ErrAlreadyClosed) {
		t.Errorf("closing an hour twice: %v", err)
	}
}
