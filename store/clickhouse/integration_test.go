//go:build integration

package clickhouse_test

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/aggregate/aggregatetest"
	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/reporttest"
	"github.com/meterd/meterd/store/clickhouse"
)

// throwaway returns the config of a new database that is dropped when the test ends.
func throwaway(t *testing.T) clickhouse.Config {
	t.Helper()
	a := services.ClickHouse(t)
	return clickhouse.Config{Addr: a, Database: services.Database(t, a)}
}

func open(t *testing.T, cfg clickhouse.Config) *clickhouse.Store {
	t.Helper()
	st, err := clickhouse.Open(context.Background(), cfg, clickhouse.Options{})
	if err != nil {
		t.Fatalf("open clickhouse store %s at %s: %v", cfg.Database, cfg.Addr, err)
	}
	return st
}

// TestConformance runs the hour-close golden scenario against ClickHouse: the same suite, golden data and
// expected hours as SQLite (store/sqlite/conformance_test.go), with a restart in the middle.
func TestConformance(t *testing.T) {
	dbs := map[string]clickhouse.Config{}
	aggregatetest.Run(t, filepath.Join("..", "..", "aggregate", "testdata", "golden"), func(t *testing.T, dir string) aggregatetest.Store {
		cfg, ok := dbs[dir]
		if !ok {
			cfg = throwaway(t)
			dbs[dir] = cfg
		}
		return open(t, cfg)
	})
}

// TestPushSuite runs the push scenarios and the ledger contract (report/reporttest) against ClickHouse: the same
// suite SQLite passes (report/pusher_test.go), a throwaway database per store directory, restarts included.
func TestPushSuite(t *testing.T) {
	dbs := map[string]clickhouse.Config{}
	reporttest.RunPushSuite(t, func(t *testing.T, dir string, now func() time.Time) reporttest.Store {
		cfg, ok := dbs[dir]
		if !ok {
			cfg = throwaway(t)
			dbs[dir] = cfg
		}
		st, err := clickhouse.Open(context.Background(), cfg, clickhouse.Options{Now: now})
		if err != nil {
			t.Fatalf("open clickhouse store %s at %s: %v", cfg.Database, cfg.Addr, err)
		}
		return st
	})
}

// TestMigrateTwice: re-running the migrations applies nothing and keeps the schema version.
func TestMigrateTwice(t *testing.T) {
	cfg := throwaway(t)
	st := open(t, cfg)
	defer func() { _ = st.Close() }()
	ctx := context.Background()
	applied, err := st.Migrate(ctx)
	if err != nil || len(applied) != 0 {
		t.Fatalf("second migrate applied %v, err %v", applied, err)
	}
	v, err := st.SchemaVersion(ctx)
	if err != nil || v < 3 {
		t.Fatalf("schema version %d, err %v", v, err)
	}
}

// rawConn is a connection of its own to the store's database, to write rows as a racing or crashed writer would.
func rawConn(t *testing.T, cfg clickhouse.Config) ch.Conn {
	t.Helper()
	conn, err := ch.Open(&ch.Options{Addr: []string{cfg.Addr}, Auth: ch.Auth{Database: cfg.Database}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func rawInsert(t *testing.T, conn ch.Conn, query string, rows ...[]any) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if err := b.Append(r...); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

var ledgerHour = time.Date(2026, 11, 20, 3, 0, 0, 0, time.UTC)

func ledgerSDR(instance string) report.SDR {
	sn := report.MeteringSN(instance, ledgerHour, 0)
	return report.SDR{InstanceID: instance, Hour: ledgerHour, MeteringSN: sn, Meter: "tokens", SKU: "TOK",
		RecordTime: ledgerHour.Add(65 * time.Minute), Begin: ledgerHour, End: ledgerHour.Add(time.Hour),
		UsageValue: decimal.RequireFromString("1.5"), Amount: decimal.RequireFromString("0.123456789012345678901"), Currency: "CNY",
		Body: []byte(`{"metering_sn":"` + sn + `"}`), State: report.Pending, Due: ledgerHour.Add(75 * time.Minute)}
}

// TestLedgerRowsWithoutTransactions: what the ClickHouse ledger's read rules promise when rows land in an order no
// transaction would allow. A stale scheduler's state row that lands late, with a lower epoch and a higher version,
// never becomes the current state; state rows of an SDR whose sdrs row never landed (a crash in InsertSDRs) are
// seen by no reader; a second copy of an sdrs row (a retried insert) does not double anything and the first copy
// wins; of two claims of one lease epoch the smallest holder wins; an amount with 21 decimals is kept exactly.
func TestLedgerRowsWithoutTransactions(t *testing.T) {
	ctx := context.Background()
	cfg := throwaway(t)
	st := open(t, cfg)
	defer func() { _ = st.Close() }()
	conn := rawConn(t, cfg)
	now := ledgerHour.Add(2 * time.Hour)

	lease, ok, err := st.AcquireLease(ctx, "a", now, time.Minute)
	if err != nil || !ok || lease.Epoch != 1 {
		t.Fatal(lease, ok, err)
	}
	// Two schedulers claim epoch 2 at once: the smallest name wins, whatever the order the claims landed in.
	rawInsert(t, conn, `INSERT INTO push_lease (holder, epoch, version, expires_ms, written_ms)`,
		[]any{"z", int64(2), time.Now().UnixMicro(), now.Add(time.Hour).UnixMilli(), now.UnixMilli()},
		[]any{"b", int64(2), time.Now().UnixMicro() + 1, now.Add(time.Hour).UnixMilli(), now.UnixMilli()})
	if l, ok, err := st.AcquireLease(ctx, "z", now, time.Minute); err != nil || ok || l.Holder != "b" || l.Epoch != 2 {
		t.Fatalf("z after losing the claim: %+v %v %v", l, ok, err)
	}
	if l, ok, err := st.AcquireLease(ctx, "b", now, time.Minute); err != nil || !ok || l.Epoch != 2 {
		t.Fatalf("b renews: %+v %v %v", l, ok, err)
	}

	a, b := ledgerSDR("i-1"), ledgerSDR("i-2")
	if err := st.InsertSDRs(ctx, 2, []report.SDR{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkSending(ctx, 2, []string{a.MeteringSN}, now); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordAttempt(ctx, 2, report.Attempt{At: now, BatchID: "x"}, []string{a.MeteringSN},
		[]report.Outcome{{MeteringSN: a.MeteringSN, State: report.Accepted, Code: "0000", Definite: true, AcceptedAt: now}}); err != nil {
		t.Fatal(err)
	}
	// The stale epoch-1 scheduler's write lands now, with a newer version.
	stateCols := `INSERT INTO sdr_states (metering_sn, hour_ms, epoch, version, state, last_code, reason, unknown_attempts, attempts,
next_attempt_ms, accepted_ms, updated_ms)`
	rawInsert(t, conn, stateCols, []any{a.MeteringSN, ledgerHour.UnixMilli(), int64(1), time.Now().UnixMicro() + 1e9, "REJECTED", "0100",
		"stale", int64(0), int64(1), int64(0), int64(0), now.UnixMilli()})
	// An orphan: state rows of an SDR whose sdrs row never landed.
	orphan := ledgerSDR("i-3")
	rawInsert(t, conn, stateCols, []any{orphan.MeteringSN, ledgerHour.UnixMilli(), int64(2), int64(1), "PENDING", "", "", int64(0),
		int64(0), int64(0), int64(0), now.UnixMilli()})
	// A second copy of b's sdrs row, stored later with other bytes.
	rawInsert(t, conn, `INSERT INTO sdrs (metering_sn, instance_id, hour_ms, revision, meter, sku, record_time_ms, begin_ms, end_ms,
usage_value, amount, currency, relate_pkg_instance, body, due_ms, created_ms)`, []any{b.MeteringSN, b.InstanceID, ledgerHour.UnixMilli(),
		int64(0), "tokens", "TOK", int64(0), int64(0), int64(0), decimal.RequireFromString("1.5"), "9", "CNY", nil, "copy",
		int64(0), time.Now().Add(time.Hour).UnixMilli()})

	all, err := st.ListSDRs(ctx, report.SDRFilter{From: ledgerHour, To: ledgerHour.Add(time.Hour)})
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %d %v", len(all), err)
	}
	if all[0].MeteringSN != a.MeteringSN || all[0].State != report.Accepted || all[0].Epoch != 2 || all[0].LastCode != "0000" {
		t.Errorf("a late stale write shadowed the decision: %+v", all[0])
	}
	if all[1].MeteringSN != b.MeteringSN || string(all[1].Body) != string(b.Body) || !all[1].Amount.Equal(b.Amount) ||
		all[1].Amount.String() != "0.123456789012345678901" {
		t.Errorf("first copy lost: %+v", all[1])
	}
	counts, err := st.StateCounts(ctx)
	if err != nil || len(counts) != 2 || counts[report.Accepted] != 1 || counts[report.Pending] != 1 {
		t.Errorf("counts %v %v", counts, err)
	}
	if due, err := st.Pushable(ctx, now, 10); err != nil || len(due) != 1 || due[0].MeteringSN != b.MeteringSN {
		t.Errorf("pushable %+v %v", due, err)
	}
	if _, past, err := st.OldestUnaccepted(ctx, now, nil); err != nil || past != 1 {
		t.Errorf("past due %d %v", past, err)
	}
	if u, err := st.PeriodUsage(ctx, "i-2", ledgerHour, ledgerHour.Add(time.Hour)); err != nil || u.String() != "1.5" {
		t.Errorf("period usage %s %v", u, err)
	}
	// Rebuilding after the crash writes the orphan's SDR, which then reads as one SDR.
	if err := st.InsertSDRs(ctx, 2, []report.SDR{orphan, a}); err != nil {
		t.Fatal(err)
	}
	if counts, err := st.StateCounts(ctx); err != nil || counts[report.Pending] != 2 || counts[report.Accepted] != 1 {
		t.Errorf("counts after the rebuild %v %v", counts, err)
	}
}

// TestBillProvenance: the ClickHouse side of bill.Store's record keeping (store/sqlite's TestApplyBill): the import
// is recorded once per file content, and each SDR moved out of ACCEPTED has one bill line with its import, line,
// status, exact amount and re-report, however often the file is imported.
func TestBillProvenance(t *testing.T) {
	ctx := context.Background()
	cfg := throwaway(t)
	st := open(t, cfg)
	defer func() { _ = st.Close() }()
	now := ledgerHour.Add(48 * time.Hour)
	lease, ok, err := st.AcquireLease(ctx, "pusher", now, time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	accepted, accepted2, sent := ledgerSDR("i-1"), ledgerSDR("i-2"), ledgerSDR("i-3")
	if err := st.InsertSDRs(ctx, lease.Epoch, []report.SDR{accepted, accepted2, sent}); err != nil {
		t.Fatal(err)
	}
	sns := []string{accepted.MeteringSN, accepted2.MeteringSN, sent.MeteringSN}
	if err := st.MarkSending(ctx, lease.Epoch, sns, now); err != nil {
		t.Fatal(err)
	}
	if err := st.RecordAttempt(ctx, lease.Epoch, report.Attempt{At: now}, sns, []report.Outcome{
		{MeteringSN: sns[0], State: report.Accepted, Definite: true, AcceptedAt: now},
		{MeteringSN: sns[1], State: report.Accepted, Definite: true, AcceptedAt: now}}); err != nil {
		t.Fatal(err)
	}
	next := ledgerSDR("i-2")
	next.Revision = 1
	next.MeteringSN = report.MeteringSN("i-2", ledgerHour, 1)
	changes := []bill.Change{
		{MeteringSN: sns[0], To: report.Billed, Line: 2, Status: "SUCCESS", Amount: "0.123456789012345678901"},
		{MeteringSN: sns[1], To: report.AsyncRejected, Line: 3, Status: "ABNORMAL", Next: &next},
		{MeteringSN: sns[2], To: report.Billed, Line: 4, Amount: "1"}, // SENT: the push's
	}
	src := bill.Source{SHA256: strings.Repeat("ab", 32), Name: "bill.csv", Rows: 3, At: now}
	for i := 0; i < 3; i++ {
		applied, err := st.ApplyBill(ctx, src, changes)
		want := bill.Applied{}
		if i == 0 {
			want = bill.Applied{Billed: 1, AsyncRejected: 1, Rereported: 1}
		}
		if err != nil || applied != want {
			t.Fatalf("apply %d: %+v %v", i, applied, err)
		}
	}
	if _, err := st.ApplyBill(ctx, bill.Source{SHA256: strings.Repeat("cd", 32), Name: "other.csv", At: now}, changes); err != nil {
		t.Fatal(err)
	}
	conn := rawConn(t, cfg)
	dump := func(q string) string {
		t.Helper()
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = rows.Close() }()
		var out []string
		cols := rows.ColumnTypes()
		for rows.Next() {
			vals := make([]any, len(cols))
			for i, c := range cols {
				vals[i] = reflect.New(c.ScanType()).Interface()
			}
			if err := rows.Scan(vals...); err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, v := range vals {
				parts = append(parts, fmt.Sprint(reflect.Indirect(reflect.ValueOf(v)).Interface()))
			}
			out = append(out, strings.Join(parts, " "))
		}
		return strings.Join(out, "\n")
	}
	sha := strings.Repeat("ab", 32)
	if got := dump(`SELECT sha256, name, rows FROM bill_imports ORDER BY sha256`); got != sha+" bill.csv 3\n"+strings.Repeat("cd", 32)+" other.csv 0" {
		t.Errorf("bill_imports\n%s", got)
	}
	amount, none := "0.123456789012345678901", "<nil>"
	want := []string{sns[0] + " " + sha + " 2 BILLED SUCCESS " + amount + " " + none, sns[1] + " " + sha + " 3 ASYNC_REJECTED ABNORMAL " + none + " " + next.MeteringSN}
	sort.Strings(want)
	got := dump(`SELECT metering_sn, import_sha256, line, state, status, ifNull(amount, '<nil>'), ifNull(rereported_sn, '<nil>') FROM sdr_bills ORDER BY metering_sn`)
	if got != strings.Join(want, "\n") {
		t.Errorf("sdr_bills\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	d, err := st.SDRsByMeteringSN(ctx, []string{next.MeteringSN, sns[2]})
	if err != nil || len(d) != 2 {
		t.Fatalf("%+v %v", d, err)
	}
	for _, x := range d {
		if x.MeteringSN == next.MeteringSN && (x.State != report.Pending || x.Epoch != lease.Epoch || x.Reason != "") ||
			x.MeteringSN == sns[2] && x.State != report.Sent {
			t.Errorf("%+v", x)
		}
	}
}
