package clickhouse

import (
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate"
)

// The exact SQL of the hourly totals: keys seen once are taken as they are, keys seen more than once go through
// the first-copy argMin; both paths are unioned before one Decimal aggregation.
func TestTotalsSQL(t *testing.T) {
	from := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	q, args, err := totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindSum, Meters: []string{"tokens", "calls"}, From: from,
		To: from.Add(time.Hour), Subject: "tenant-42"},
		seqFilter{"seq > ? AND seq <= ?", []any{int64(10), int64(20)}},
		seqFilter{"first_seq > ? AND first_seq <= ?", []any{int64(10), int64(20)}})
	if err != nil {
		t.Fatal(err)
	}
	const where = "meter IN (?, ?) AND time_ms >= ? AND time_ms < ? AND subject = ?"
	const repeated = "SELECT cityHash64(meter, source, id) AS kh FROM event_values WHERE " + where + " GROUP BY kh HAVING count() > 1"
	want := "SELECT meter, subj, intDiv(tms, 3600000) AS h, count() AS n, sum(v) AS total FROM (" +
		"SELECT meter, subject AS subj, time_ms AS tms, value AS v, key AS k FROM event_values WHERE " + where +
		" AND cityHash64(meter, source, id) NOT IN (" + repeated + ") AND seq > ? AND seq <= ? " +
		"UNION ALL " +
		"SELECT meter, subj, tms, v, k FROM (SELECT meter, source, id, min(seq) AS first_seq, argMin(subject, seq) AS subj, " +
		"argMin(time_ms, seq) AS tms, argMin(value, seq) AS v, argMin(key, seq) AS k FROM event_values WHERE " + where +
		" AND cityHash64(meter, source, id) IN (" + repeated + ") GROUP BY meter, source, id) WHERE first_seq > ? AND first_seq <= ?" +
		") GROUP BY meter, subj, h ORDER BY meter, subj, h"
	if q != want {
		t.Errorf("sql\n got %s\nwant %s", q, want)
	}
	// 5 filter arguments per use of where (4 uses) and 2 per window.
	if len(args) != 24 || args[0] != "tokens" || args[2] != from.UnixMilli() || args[4] != "tenant-42" || args[10] != int64(10) ||
		args[11] != int64(20) || args[23] != int64(20) {
		t.Errorf("args %v", args)
	}
	for kind, agg := range map[aggregate.Kind]string{aggregate.KindMax: "max(v)", aggregate.KindDistinct: "uniqExact(k)"} {
		q, _, err := totalsSQL(aggregate.TotalsQuery{Kind: kind, Meters: []string{"m"}}, seqFilter{sql: "1"}, seqFilter{sql: "1"})
		if err != nil || !strings.Contains(q, agg+" AS total") {
			t.Errorf("%s: %v %s", kind, err, q)
		}
	}
	if _, _, err := totalsSQL(aggregate.TotalsQuery{Kind: aggregate.KindSum}, seqFilter{sql: "1"}, seqFilter{sql: "1"}); err == nil {
		t.Error("no meters accepted")
	}
}

// The pre-check reads the narrow hash column for every key of a batch, and raw only for conflicting keys; both
// keep the first stored copy (argMin by seq) and take the keys from the batch_keys external table.
func TestStoredCopiesSQL(t *testing.T) {
	const where = " FROM events WHERE (source, id) IN (SELECT source, id FROM batch_keys) GROUP BY source, id"
	if storedHashesSQL != "SELECT source, id, argMin(hash, seq)"+where || storedRawSQL != "SELECT source, id, argMin(raw, seq)"+where {
		t.Errorf("pre-check SQL:\n%s\n%s", storedHashesSQL, storedRawSQL)
	}
}

func TestDecimalValue(t *testing.T) {
	for in, want := range map[string]string{
		"12.5": "12.5", "1": "1", "0.0000000001": "0.0000000001",
		"9999999999999999999999999999.9999999999": "9999999999999999999999999999.9999999999",
		"0.00000000001": "0", "10000000000000000000000000000": "0", "user-7": "0",
	} {
		if got := decimalValue(in).String(); got != want {
			t.Errorf("decimalValue(%q) = %s, want %s", in, got, want)
		}
	}
}

// Every embedded migration splits into statements, each harmless to run again (a crash between applying and
// recording a migration runs it again).
func TestMigrations(t *testing.T) {
	all, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 3 || all[0].Version != 1 {
		t.Fatalf("migrations %v", all)
	}
	for _, m := range all {
		for _, s := range m.statements {
			// The backfills of the pre-check and open indexes may run twice: a repeated row changes no lookup.
			backfill := strings.HasPrefix(s, "INSERT INTO event_keys (kh) SELECT ") ||
				strings.HasPrefix(s, "INSERT INTO event_digests (kh, dh) SELECT ") ||
				strings.HasPrefix(s, "INSERT INTO sdr_open (metering_sn, hour_ms, instance_id, gen) SELECT ")
			idempotent := strings.HasPrefix(s, "CREATE TABLE IF NOT EXISTS ") || strings.HasPrefix(s, "DROP TABLE IF EXISTS ")
			if !idempotent && !backfill {
				t.Errorf("%04d_%s: statement is not idempotent: %.60s", m.Version, m.Name, s)
			}
			for _, banned := range []string{"DateTime64", "LowCardinality", " TTL ", "CODEC(", "JSONExtract"} {
				if strings.Contains(s, banned) {
					t.Errorf("%04d_%s: %s does not run on ClickHouse 18.16", m.Version, m.Name, banned)
				}
			}
		}
	}
	if got := splitStatements("-- c\nCREATE A (\n x;\n\nCREATE B;\n"); len(got) != 2 || got[0] != "CREATE A (\n x" || got[1] != "CREATE B" {
		t.Errorf("split %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{Addr: "127.0.0.1:9000", Database: "meterd"}).Validate(); err != nil {
		t.Error(err)
	}
	err := (Config{Database: "a-b"}).Validate()
	if err == nil || !strings.Contains(err.Error(), "addr: required") || !strings.Contains(err.Error(), `database: "a-b"`) {
		t.Errorf("got %v", err)
	}
}
