package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/meterd/meterd/store/clickhouse"
)

// clickhouseFixture fills a ClickHouse store (schemas/clickhouse) with INSERT ... SELECT FROM numbers(N) on a
// connection of its own, while the store is closed.
type clickhouseFixture struct {
	addr     string
	database string
	drop     bool
	log      *slog.Logger

	admin driver.Conn // on the default database; every statement names the bench database
}

func (f *clickhouseFixture) config() clickhouse.Config {
	return clickhouse.Config{Addr: f.addr, Database: f.database}
}

func (f *clickhouseFixture) open(ctx context.Context) (benchStore, error) {
	st, err := clickhouse.Open(ctx, f.config(), clickhouse.Options{Logger: f.log})
	if err != nil {
		return nil, fmt.Errorf("open store clickhouse %s/%s: %w", f.addr, f.database, err)
	}
	return st, nil
}

// conn returns the fixture's own connection. Its read timeout is long: an INSERT ... SELECT of 30M rows sends
// nothing back until it is done.
func (f *clickhouseFixture) conn(ctx context.Context) (driver.Conn, error) {
	if f.admin != nil {
		return f.admin, nil
	}
	if err := f.config().Validate(); err != nil {
		return nil, err
	}
	conn, err := ch.Open(&ch.Options{Addr: []string{f.addr}, Auth: ch.Auth{Database: "default"},
		DialTimeout: 5 * time.Second, ReadTimeout: time.Hour})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", f.addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("ping clickhouse %s: %w", f.addr, err), conn.Close())
	}
	f.admin = conn
	return conn, nil
}

// fresh fails when the database holds events: the benchmark only fills a new database, never somebody's data.
func (f *clickhouseFixture) fresh(ctx context.Context) error {
	conn, err := f.conn(ctx)
	if err != nil {
		return err
	}
	var tables uint64
	if err := conn.QueryRow(ctx, `SELECT count() FROM system.tables WHERE database = ? AND name = 'events'`, f.database).Scan(&tables); err != nil {
		return fmt.Errorf("look for database %s: %w", f.database, err)
	}
	if tables == 0 {
		return nil
	}
	var events uint64
	if err := conn.QueryRow(ctx, `SELECT count() FROM `+f.database+`.events`).Scan(&events); err != nil {
		return fmt.Errorf("count events of %s: %w", f.database, err)
	}
	if events > 0 {
		return fmt.Errorf("--database %s holds %d events: the benchmark fills a new database", f.database, events)
	}
	return nil
}

func (f *clickhouseFixture) keepsDuplicates() bool { return true }

func (f *clickhouseFixture) dropDatabase(ctx context.Context) error {
	conn, err := f.conn(ctx)
	if err != nil {
		return err
	}
	if err := conn.Exec(ctx, `DROP DATABASE IF EXISTS `+f.database); err != nil {
		return fmt.Errorf("drop database %s: %w", f.database, err)
	}
	return nil
}

func (f *clickhouseFixture) finish(ctx context.Context) error {
	var err error
	if f.drop {
		err = f.dropDatabase(ctx)
	}
	if f.admin != nil {
		err = errors.Join(err, f.admin.Close())
		f.admin = nil
	}
	return err
}

func (f *clickhouseFixture) exec(ctx context.Context, stmts ...string) error {
	conn, err := f.conn(ctx)
	if err != nil {
		return err
	}
	for _, q := range stmts {
		t0 := time.Now()
		if err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("bulk load: %w\n%s", err, q)
		}
		f.log.Debug("bulk insert", "elapsed", time.Since(t0), "sql", firstLine(q))
	}
	return nil
}

func (f *clickhouseFixture) loadPrevious(ctx context.Context, g *generator) error {
	r := strings.NewReplacer("{db}", f.database, "{m}", strconv.Itoa(g.instances), "{iprefix}", instancePrefix,
		"{subject}", subjectPrefix, "{meter}", meterKey, "{sku}", planSKU, "{started}", strconv.FormatInt(g.started.UnixMilli(), 10))
	// A new ACTIVE instance as the registry writes it: version 1, no release, and its CREATED change at started_at.
	instances := r.Replace(`INSERT INTO {db}.instances (instance_id, version, subject, meter, sku, status, started_ms, released_ms,
relate_pkg_instance, site, updated_ms)
SELECT concat('{iprefix}', substring(toString(1000000000000 + number), 2)), toInt64(1), concat('{subject}', toString(number)),
'{meter}', '{sku}', 'ACTIVE', toInt64({started}), toInt64(0), '', '', toInt64({started}) FROM numbers({m})`)
	changes := r.Replace(`INSERT INTO {db}.instance_changes (instance_id, seq, at_ms, kind, recorded_ms)
SELECT concat('{iprefix}', substring(toString(1000000000000 + number), 2)), toInt64(number + 1), toInt64({started}), 'CREATED',
toInt64({started}) FROM numbers({m})`)
	return f.exec(ctx, instances, changes, f.valuesSQL(g, g.prev, g.instances, 1, g.prev.seq0),
		f.eventsSQL(g, g.prev, g.instances, 1, g.prev.seq0))
}

func (f *clickhouseFixture) loadHour(ctx context.Context, g *generator) error {
	// Meter values before events, as the writer inserts them.
	stmts := []string{f.valuesSQL(g, g.cur, g.events, 1, g.cur.seq0), f.eventsSQL(g, g.cur, g.events, 1, g.cur.seq0)}
	if g.dups > 0 {
		// Copies that slipped past the writer's pre-check (a retried insert whose first attempt landed): stored
		// with later seqs, in both tables; readers keep the first copy.
		stmts = append(stmts, f.valuesSQL(g, g.cur, g.dups, g.dupStep, g.dupSeq0), f.eventsSQL(g, g.cur, g.dups, g.dupStep, g.dupSeq0))
	}
	if err := f.exec(ctx, stmts...); err != nil {
		return err
	}
	return f.settle(ctx)
}

// settle waits for the merges of the load to finish (at most 10 minutes), so that the close does not share the
// server with them: by H+1h+close_delay the hour's parts have had an hour to merge.
func (f *clickhouseFixture) settle(ctx context.Context) error {
	conn, err := f.conn(ctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		var merges, parts uint64
		if err := conn.QueryRow(ctx, `SELECT (SELECT count() FROM system.merges WHERE database = ?),
(SELECT count() FROM system.parts WHERE database = ? AND table = 'event_values' AND active)`, f.database, f.database).Scan(&merges, &parts); err != nil {
			return fmt.Errorf("watch merges: %w", err)
		}
		if merges == 0 || time.Now().After(deadline) {
			say("setup: %d merges running, event_values in %d parts", merges, parts)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// eventSelect is the rows of the events of b, rows of them: row r is event r*step with seq seq0+r+1. The columns
// are those of the formulas in fixture.go.
func (f *clickhouseFixture) eventSelect(g *generator, b batch, rows, step int, seq0 int64) string {
	return strings.NewReplacer("{rows}", strconv.Itoa(rows), "{step}", strconv.Itoa(step), "{seq0}", strconv.FormatInt(seq0, 10),
		"{prefix}", b.prefix, "{m}", strconv.Itoa(g.instances), "{start}", strconv.FormatInt(b.start.Unix(), 10),
		"{count}", strconv.Itoa(b.count), "{subject}", subjectPrefix, "{meter}", meterKey,
	).Replace(`SELECT toInt64({seq0} + number + 1) AS seq, number * {step} AS i,
concat('{prefix}', substring(toString(1000000000000 + i), 2)) AS eid, concat('{subject}', toString(i % {m})) AS subj,
toInt64({start} + intDiv(i * 3600, {count})) AS ts, concat(replaceOne(toString(toDateTime(ts), 'UTC'), ' ', 'T'), 'Z') AS tt,
concat(toString(i % 1000), '.', substring(toString(100 + (i % 10) * 10 + (i % 9) + 1), 2)) AS vt,
concat('{"{meter}":"', vt, '"}') AS data
FROM numbers({rows})`)
}

func (f *clickhouseFixture) eventsSQL(g *generator, b batch, rows, step int, seq0 int64) string {
	return strings.NewReplacer("{db}", f.database, "{source}", eventSource, "{type}", eventType).Replace(
		`INSERT INTO {db}.events (seq, source, id, type, subject, time_ms, hash, raw, received_ms)
SELECT seq, '{source}', eid, '{type}', subj, ts * 1000, SHA256(concat('{type}', '\0', subj, '\0', tt, '\0', data)),
concat('{"specversion":"1.0","id":"', eid, '","source":"{source}","type":"{type}","subject":"', subj, '","time":"', tt,
'","data":', data, '}'), ts * 1000 + 1000
FROM (`) + f.eventSelect(g, b, rows, step, seq0) + ")"
}

// valuesSQL is the event_values rows of the same events: the Decimal(38, 10) value and the stored text in key,
// as the writer's decimalValue and v.Value make them.
func (f *clickhouseFixture) valuesSQL(g *generator, b batch, rows, step int, seq0 int64) string {
	value, key := `toDecimal128(vt, 10)`, `vt`
	switch g.aggregation {
	case "COUNT":
		value, key = `toDecimal128(1, 10)`, `'1'`
	case "UNIQUE_COUNT":
		value, key = `toDecimal128(0, 10)`, `concat('"', vt, '"')`
	}
	return strings.NewReplacer("{db}", f.database, "{source}", eventSource, "{meter}", meterKey).Replace(
		`INSERT INTO {db}.event_values (meter, time_ms, subject, source, id, seq, value, key)
SELECT '{meter}', ts * 1000, subj, '{source}', eid, seq, `) + value + ", " + key + " FROM (" + f.eventSelect(g, b, rows, step, seq0) + ")"
}

func (f *clickhouseFixture) counts(ctx context.Context) (rowCounts, error) {
	conn, err := f.conn(ctx)
	if err != nil {
		return rowCounts{}, err
	}
	var e, v, i uint64
	db := f.database
	if err := conn.QueryRow(ctx, `SELECT (SELECT count() FROM `+db+`.events), (SELECT count() FROM `+db+`.event_values),
(SELECT uniqExact(instance_id) FROM `+db+`.instances)`).Scan(&e, &v, &i); err != nil {
		return rowCounts{}, fmt.Errorf("count stored rows: %w", err)
	}
	return rowCounts{events: int64(e), values: int64(v), instances: int64(i)}, nil
}

func (f *clickhouseFixture) stored(ctx context.Context, source, id string) ([]storedEvent, error) {
	conn, err := f.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `SELECT seq, subject, time_ms, hash, raw FROM `+f.database+`.events WHERE source = ? AND id = ? ORDER BY seq`, source, id)
	if err != nil {
		return nil, fmt.Errorf("read stored event (%s, %s): %w", source, id, err)
	}
	var out []storedEvent
	for rows.Next() {
		var e storedEvent
		var hash string
		if err := rows.Scan(&e.seq, &e.subject, &e.timeMs, &hash, &e.raw); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("read stored event (%s, %s): %w", source, id, err)
		}
		e.hash = []byte(hash)
		out = append(out, e)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("read stored event (%s, %s): %w", source, id, err)
	}
	keys := map[int64]string{}
	vals, err := conn.Query(ctx, `SELECT seq, key FROM `+f.database+`.event_values WHERE meter = ? AND source = ? AND id = ?`, meterKey, source, id)
	if err != nil {
		return nil, fmt.Errorf("read stored meter value (%s, %s): %w", source, id, err)
	}
	for vals.Next() {
		var seq int64
		var key string
		if err := vals.Scan(&seq, &key); err != nil {
			_ = vals.Close()
			return nil, fmt.Errorf("read stored meter value (%s, %s): %w", source, id, err)
		}
		keys[seq] = key
	}
	if err := errors.Join(vals.Err(), vals.Close()); err != nil {
		return nil, fmt.Errorf("read stored meter value (%s, %s): %w", source, id, err)
	}
	for n := range out {
		out[n].value = keys[out[n].seq]
	}
	return out, nil
}

// closeContext tags the close's queries with a client-info comment (it changes nothing else) and samples their
// memory in system.processes every 50 ms until stopped. query_log is not configured on the 18.16 servers here,
// and system.processes needs nothing.
func (f *clickhouseFixture) closeContext(ctx context.Context) (context.Context, func() string, error) {
	conn, err := f.conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	tag := fmt.Sprintf("closebench-%d-%d", os.Getpid(), time.Now().UnixNano())
	closeCtx := ch.Context(ctx, ch.WithClientInfo(ch.ClientInfo{Comment: []string{tag}}))
	watchCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var peak int64
	var samples, seen int
	var watchErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			var p int64
			var n uint64
			err := conn.QueryRow(watchCtx, `SELECT max(peak_memory_usage), count() FROM system.processes WHERE client_name LIKE ?`,
				"%"+tag+"%").Scan(&p, &n)
			if err != nil {
				if watchCtx.Err() == nil {
					watchErr = err
				}
				return
			}
			samples++
			if n > 0 {
				seen++
				peak = max(peak, p)
			}
			select {
			case <-watchCtx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	stop := func() string {
		cancel()
		wg.Wait()
		if watchErr != nil {
			f.log.Warn("server memory not sampled", "err", watchErr)
			return ""
		}
		return fmt.Sprintf("server_peak_mib=%d server_samples=%d/%d", peak>>20, seen, samples)
	}
	return closeCtx, stop, nil
}
