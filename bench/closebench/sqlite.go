package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	dsql "database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	msqlite "modernc.org/sqlite"

	"github.com/meterd/meterd/store/sqlite"
)

// sqliteFixture fills a SQLite store (schemas/sqlite) with bulk INSERT ... SELECT statements over a recursive
// CTE, in one transaction per step, on a connection of its own while the store is closed.
type sqliteFixture struct {
	path string
	log  *slog.Logger
}

func (f *sqliteFixture) open(ctx context.Context) (benchStore, error) {
	st, err := sqlite.Open(ctx, f.path, sqlite.Options{Logger: f.log})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", f.path, err)
	}
	return st, nil
}

func (f *sqliteFixture) fresh(context.Context) error {
	if _, err := os.Stat(f.path); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--db %s: the file must not exist (the benchmark fills a new store)", f.path)
	}
	return nil
}

func (f *sqliteFixture) keepsDuplicates() bool { return false }

func (f *sqliteFixture) closeContext(ctx context.Context) (context.Context, func() string, error) {
	return ctx, func() string { return "" }, nil
}

func (f *sqliteFixture) finish(context.Context) error { return nil }

// registerHash adds closebench_hash(type, subject, time, data): the content hash ingest computes (sha256 of type,
// subject, time and canonical data, NUL-separated; ingest/validate.go hashPrefix), for the events' hash column.
var registerHash = sync.OnceValue(func() error {
	return msqlite.RegisterFunction("closebench_hash", &msqlite.FunctionImpl{NArgs: 4, Deterministic: true,
		Scalar: func(_ *msqlite.FunctionContext, args []dsql.Value) (dsql.Value, error) {
			h := sha256.New()
			for n, a := range args {
				s, ok := a.(string)
				if !ok {
					return nil, fmt.Errorf("closebench_hash: argument %d is %T, not text", n+1, a)
				}
				h.Write([]byte(s))
				if n < 3 {
					h.Write([]byte{0})
				}
			}
			return h.Sum(nil), nil
		}})
})

// bulk runs stmts in one transaction on a connection without journal or fsync (the store is new: a crash
// leaves a file nobody uses), then puts the file back in WAL mode as the store keeps it.
func (f *sqliteFixture) bulk(ctx context.Context, stmts ...string) error {
	if err := registerHash(); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+f.path+"?_pragma=journal_mode(OFF)&_pragma=synchronous(OFF)&_pragma=cache_size(-262144)")
	if err != nil {
		return fmt.Errorf("open %s for the bulk load: %w", f.path, err)
	}
	db.SetMaxOpenConns(1)
	err = func() error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, q := range stmts {
			t0 := time.Now()
			res, err := tx.ExecContext(ctx, q)
			if err != nil {
				return errors.Join(fmt.Errorf("bulk load: %w\n%s", err, q), tx.Rollback())
			}
			n, _ := res.RowsAffected()
			f.log.Debug("bulk insert", "rows", n, "elapsed", time.Since(t0), "sql", firstLine(q))
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		_, err = db.ExecContext(ctx, "PRAGMA journal_mode=WAL")
		return err
	}()
	return errors.Join(err, db.Close())
}

// query runs fn on a read-only connection of its own.
func (f *sqliteFixture) query(ctx context.Context, fn func(db *sql.DB) error) error {
	db, err := sql.Open("sqlite", "file:"+f.path+"?_pragma=query_only(1)&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	return errors.Join(fn(db), db.Close())
}

func (f *sqliteFixture) loadPrevious(ctx context.Context, g *generator) error {
	started := strconv.FormatInt(g.started.UnixMilli(), 10)
	n := strconv.Itoa(g.instances)
	instances := `WITH RECURSIVE n(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM n WHERE k + 1 < ` + n + `)
INSERT INTO instances (instance_id, subject, meter, sku, status, started_ms, released_ms, relate_pkg_instance, site, updated_ms)
SELECT printf('` + instancePrefix + `%012d', k), '` + subjectPrefix + `' || k, '` + meterKey + `', '` + planSKU + `', 'ACTIVE', ` +
		started + `, NULL, NULL, NULL, ` + started + ` FROM n`
	changes := `WITH RECURSIVE n(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM n WHERE k + 1 < ` + n + `)
INSERT INTO instance_changes (instance_id, at_ms, kind, recorded_ms)
SELECT printf('` + instancePrefix + `%012d', k), ` + started + `, 'CREATED', ` + started + ` FROM n`
	return f.bulk(ctx, instances, changes, sqliteEventsSQL(g, g.prev, g.instances, 1, g.prev.seq0),
		sqliteValuesSQL(g, g.prev, g.prev.seq0, g.prev.seq0+int64(g.instances)))
}

func (f *sqliteFixture) loadHour(ctx context.Context, g *generator) error {
	stmts := []string{sqliteEventsSQL(g, g.cur, g.events, 1, g.cur.seq0)}
	if g.dups > 0 {
		// The copies take the seqs the writer would give them and are skipped by the unique key, as the writer's
		// INSERT ... ON CONFLICT DO NOTHING skips them: no row, a gap in seq.
		stmts = append(stmts, sqliteEventsSQL(g, g.cur, g.dups, g.dupStep, g.dupSeq0))
	}
	stmts = append(stmts, sqliteValuesSQL(g, g.cur, g.cur.seq0, g.cur.seq0+int64(g.events)))
	return f.bulk(ctx, stmts...)
}

// sqliteEventsSQL inserts rows events of b: row r is event r*step with seq seq0+r+1. Repeated keys are skipped.
func sqliteEventsSQL(g *generator, b batch, rows, step int, seq0 int64) string {
	return strings.NewReplacer(
		"{rows}", strconv.Itoa(rows), "{step}", strconv.Itoa(step), "{seq0}", strconv.FormatInt(seq0, 10),
		"{prefix}", b.prefix, "{m}", strconv.Itoa(g.instances), "{start}", strconv.FormatInt(b.start.Unix(), 10),
		"{count}", strconv.Itoa(b.count), "{subject}", subjectPrefix, "{meter}", meterKey, "{source}", eventSource,
		"{type}", eventType,
	).Replace(`WITH RECURSIVE n(r) AS (SELECT 0 UNION ALL SELECT r + 1 FROM n WHERE r + 1 < {rows}),
e AS (SELECT {seq0} + r + 1 AS seq, r * {step} AS i FROM n),
f AS (SELECT seq, printf('{prefix}%012d', i) AS eid, '{subject}' || (i % {m}) AS subj, {start} + (i * 3600) / {count} AS ts,
  (i % 1000) || '.' || printf('%02d', (i % 10) * 10 + (i % 9) + 1) AS vt FROM e),
g AS (SELECT seq, eid, subj, ts, strftime('%Y-%m-%dT%H:%M:%SZ', ts, 'unixepoch') AS tt, '{"{meter}":"' || vt || '"}' AS data FROM f)
INSERT INTO events (seq, source, id, type, subject, time_ms, hash, raw, received_ms)
SELECT seq, '{source}', eid, '{type}', subj, ts * 1000, closebench_hash('{type}', subj, tt, data),
  '{"specversion":"1.0","id":"' || eid || '","source":"{source}","type":"{type}","subject":"' || subj || '","time":"' || tt ||
  '","data":' || data || '}', ts * 1000 + 1000
FROM g WHERE true ON CONFLICT (source, id) DO NOTHING`)
}

// sqliteValuesSQL inserts the meter values of the events of b stored with seq in (lo, hi], as the writer does for
// each event it stored.
func sqliteValuesSQL(g *generator, b batch, lo, hi int64) string {
	vt := `(i % 1000) || '.' || printf('%02d', (i % 10) * 10 + (i % 9) + 1)`
	switch g.aggregation {
	case "COUNT":
		vt = `'1'`
	case "UNIQUE_COUNT":
		vt = `'"' || ` + vt + ` || '"'`
	}
	return `INSERT INTO event_values (seq, meter, subject, time_ms, value)
SELECT seq, '` + meterKey + `', subject, time_ms, ` + vt + ` FROM (SELECT seq, subject, time_ms, CAST(substr(id, ` +
		strconv.Itoa(len(b.prefix)+1) + `) AS INTEGER) AS i FROM events WHERE seq > ` + strconv.FormatInt(lo, 10) +
		` AND seq <= ` + strconv.FormatInt(hi, 10) + `)`
}

func (f *sqliteFixture) counts(ctx context.Context) (rowCounts, error) {
	var c rowCounts
	err := f.query(ctx, func(db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_values),
(SELECT count(*) FROM instances)`).Scan(&c.events, &c.values, &c.instances)
	})
	if err != nil {
		return c, fmt.Errorf("count stored rows: %w", err)
	}
	return c, nil
}

func (f *sqliteFixture) stored(ctx context.Context, source, id string) ([]storedEvent, error) {
	var out []storedEvent
	err := f.query(ctx, func(db *sql.DB) error {
		rows, err := db.QueryContext(ctx, `SELECT e.seq, e.subject, e.time_ms, e.hash, e.raw, coalesce(v.value, '')
FROM events e LEFT JOIN event_values v ON v.seq = e.seq AND v.meter = ? WHERE e.source = ? AND e.id = ? ORDER BY e.seq`, meterKey, source, id)
		if err != nil {
			return err
		}
		defer func() { _ = rows.Close() }()
		for rows.Next() {
			var e storedEvent
			if err := rows.Scan(&e.seq, &e.subject, &e.timeMs, &e.hash, &e.raw, &e.value); err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read stored event (%s, %s): %w", source, id, err)
	}
	return out, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
