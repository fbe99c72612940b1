//go:build integration

package clickhouse_test

import (
	"context"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/schemas"
	"github.com/meterd/meterd/store/clickhouse"
)

// openIndex returns the open index's rows as "metering_sn@generation", sorted.
func openIndex(t *testing.T, conn ch.Conn) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT metering_sn, gen FROM sdr_open`)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rows.Close() }()
	var out []string
	for rows.Next() {
		var sn string
		var gen int64
		if err := rows.Scan(&sn, &gen); err != nil {
			t.Fatal(err)
		}
		out = append(out, sn+"@"+time.UnixMilli(gen).UTC().Format("15h"))
	}
	slices.Sort(out)
	return out
}

// TestOpenIndex: the push reads open SDRs through sdr_open (0009). An SDR built PENDING is listed, a HELD one is
// not; a final SDR still listed is not pushed; once the clock has moved two generations on, the compaction keeps
// only what may be open (an index row without a state row included: a crash between the two inserts) in the
// current generation and drops the old partitions; the deadline read agrees; and the migration's backfill lists
// the open SDRs of a ledger that had no index.
func TestOpenIndex(t *testing.T) {
	ctx := context.Background()
	cfg := throwaway(t)
	clock := ledgerHour.Add(90 * time.Minute)
	st, err := clickhouse.Open(ctx, cfg, clickhouse.Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	conn := rawConn(t, cfg)
	lease, ok, err := st.AcquireLease(ctx, "a", clock, time.Hour)
	if err != nil || !ok {
		t.Fatal(lease, ok, err)
	}
	a, b, c, held := ledgerSDR("i-1"), ledgerSDR("i-2"), ledgerSDR("i-3"), ledgerSDR("i-4")
	held.State, held.Body = report.Held, nil
	if err := st.InsertSDRs(ctx, lease.Epoch, []report.SDR{a, b, c, held}); err != nil {
		t.Fatal(err)
	}
	if got, want := openIndex(t, conn), sortedOf(a.MeteringSN+"@04h", b.MeteringSN+"@04h", c.MeteringSN+"@04h"); !slices.Equal(got, want) {
		t.Fatalf("index after the build: %v, want %v", got, want)
	}
	if err := st.RecordAttempt(ctx, lease.Epoch, report.Attempt{At: clock, BatchID: "x", Records: 2, Code: "0000", Class: "accepted"},
		[]string{a.MeteringSN, b.MeteringSN}, []report.Outcome{
			{MeteringSN: a.MeteringSN, State: report.Accepted, Code: "0000", Definite: true, AcceptedAt: clock},
			{MeteringSN: b.MeteringSN, State: report.Rejected, Code: "0100", Definite: true},
		}); err != nil {
		t.Fatal(err)
	}
	pushable := func() []string {
		t.Helper()
		due, err := st.Pushable(ctx, clock, 100)
		if err != nil {
			t.Fatal(err)
		}
		var sns []string
		for _, d := range due {
			sns = append(sns, d.MeteringSN)
		}
		return sns
	}
	// a and b are final but still listed: the state decides.
	if got := pushable(); !slices.Equal(got, []string{c.MeteringSN}) {
		t.Fatalf("pushable before the compaction: %v", got)
	}
	// A crash between the index row and the state row, in the same generation.
	orphan := report.MeteringSN("i-9", ledgerHour, 0)
	rawInsert(t, conn, `INSERT INTO sdr_open (metering_sn, hour_ms, instance_id, gen)`,
		[]any{orphan, ledgerHour.UnixMilli(), "i-9", ledgerHour.Add(time.Hour).UnixMilli()})

	// An hour on, the previous generation is left alone.
	clock = clock.Add(time.Hour)
	if got := pushable(); !slices.Equal(got, []string{c.MeteringSN}) || len(openIndex(t, conn)) != 4 {
		t.Fatalf("an hour on: pushable %v, index %v", got, openIndex(t, conn))
	}
	// Two hours on, 04h is older than the previous generation: compacted into 06h.
	clock = clock.Add(time.Hour)
	if got := pushable(); !slices.Equal(got, []string{c.MeteringSN}) {
		t.Fatalf("pushable after the compaction: %v", got)
	}
	if got, want := openIndex(t, conn), sortedOf(c.MeteringSN+"@06h", orphan+"@06h"); !slices.Equal(got, want) {
		t.Fatalf("index after the compaction: %v, want %v", got, want)
	}
	var parts uint64
	if err := conn.QueryRow(ctx, `SELECT uniqExact(partition) FROM system.parts WHERE database = ? AND table = 'sdr_open' AND active`,
		cfg.Database).Scan(&parts); err != nil || parts != 1 {
		t.Fatalf("%d partitions of sdr_open, want 1 (%v)", parts, err)
	}
	if due, past, err := st.OldestUnaccepted(ctx, clock, nil); err != nil || !due.Equal(c.Due) || past != 1 {
		t.Fatalf("oldest unaccepted %s, %d past due, %v; want %s, 1", due, past, err, c.Due)
	}

	// The backfill of 0009 lists the open SDRs of a ledger without an index.
	body, err := fs.ReadFile(schemas.ClickHouse, "clickhouse/0009_sdr_open.sql")
	if err != nil {
		t.Fatal(err)
	}
	var backfill string
	for _, stmt := range strings.Split(string(body), ";\n") {
		if i := strings.Index(stmt, "INSERT INTO sdr_open"); i >= 0 {
			backfill = stmt[i:]
		}
	}
	if err := conn.Exec(ctx, "ALTER TABLE sdr_open DROP PARTITION "+genText(clock)); err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec(ctx, backfill); err != nil {
		t.Fatalf("backfill %q: %v", backfill, err)
	}
	if got, want := openIndex(t, conn), []string{c.MeteringSN + "@00h"}; !slices.Equal(got, want) {
		t.Fatalf("index after the backfill: %v, want %v", got, want)
	}
}

func sortedOf(s ...string) []string {
	slices.Sort(s)
	return s
}

// genText is the partition name of the open index generation of t.
func genText(t time.Time) string { return strconv.FormatInt(t.Truncate(time.Hour).UnixMilli(), 10) }
