// Package clickhouse is the scale-out store: ClickHouse over its native protocol (ClickHouse/clickhouse-go/v2,
// pinned in go.mod; the server may be as old as 18.16, see DESIGN.md §6).
//
// Guarantees, and how they hold without transactions:
//   - Exactly once: every reader keeps the first stored copy of an event key (source, id), argMin by ingest
//     sequence, so totals are exact whatever merges have or have not happened; the writer's pre-check only keeps
//     repeats out of the tables.
//   - Ingest sequence, written directly (HTTP ingest into ClickHouse): one writer per store (a mutex) assigns seq
//     from a counter loaded at Open and holds the mutex until its inserts returned; LastSeq takes the same mutex,
//     so no event with a lower seq can be stored after the snapshot it returns. One writing process per database.
//   - Ingest sequence, fed by Kafka (Options.Offsets): seq is the event's Kafka position and the close snapshots
//     the collectors' committed offsets (stream.go), so any number of collectors may write.
//   - SDR ledger: append-only state rows ranked by (lease epoch, version) (ledger.go).
//   - Hour close: rows carry their close_id and only the first marker's close_id of an hour is visible, so a
//     close is all or nothing and re-running it after a crash is harmless.
//   - Totals are computed in ClickHouse in Decimal(38, 10), never Float64.
package clickhouse

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
)

var (
	_ ingest.Sink           = (*Store)(nil)
	_ ingest.RejectedLister = (*Store)(nil)
	_ aggregate.Store       = (*Store)(nil)
	_ instance.Store        = (*Store)(nil)
	_ report.Ledger         = (*Store)(nil)
	_ bill.Store            = (*Store)(nil)
)

// Config locates the ClickHouse database.
type Config struct {
	Addr     string // host:port of the native protocol
	Database string
	Username string
	Password string
	// TLS, when set, secures the native protocol (the server's secure port, 9440 by default). The server's
	// certificate is verified against its RootCAs (nil: the system's) and the host of Addr unless ServerName is
	// set. nil: plaintext.
	TLS *tls.Config
}

// Format prints the config without its secrets, whatever the verb: the password, and the client key a TLS
// configuration may hold, are only shown as set or not.
func (c Config) Format(f fmt.State, _ rune) {
	password := "(none)"
	if c.Password != "" {
		password = "(set)"
	}
	_, _ = fmt.Fprintf(f, "{Addr:%s Database:%s Username:%s Password:%s TLS:%t}", c.Addr, c.Database, c.Username,
		password, c.TLS != nil)
}

var databaseName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports every problem of c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("addr: required"))
	}
	if !databaseName.MatchString(c.Database) {
		errs = append(errs, fmt.Errorf("database: %q must match %s", c.Database, databaseName))
	}
	return errors.Join(errs...)
}

// Options configure a Store.
type Options struct {
	// Now is the clock of dead letters without their own time and of close ids; defaults to time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// NoMigrate skips applying migrations at open, for `meterd migrate`, which applies and reports them itself.
	NoMigrate bool
	// Offsets, when set, makes the store stream-fed (scale-out with Kafka): events are written by collectors with
	// their Kafka positions as ingest sequence, and a close snapshots these offsets instead of a counter.
	Offsets Offsets
}

// Store is the ClickHouse storage.
type Store struct {
	cfg  Config
	conn driver.Conn
	opts Options

	wmu    sync.Mutex // the single writer: seq assignment and the inserts that use it
	seq    int64      // last assigned ingest sequence
	dead   int64      // last dead-letter number
	closed bool

	imu sync.Mutex // instance applies, close commits and ledger writes: read-decide-write as one step in this process

	snaps snapshots // stream-fed stores only

	spillBytes uint64 // max_bytes_before_external_group_by of the hour totals: half the server's max_memory_usage

	omu          sync.Mutex // one compaction of the open index at a time in this process
	compactedGen int64      // the generation of the open index this process last compacted in
}

// Open connects, creates the database if needed, applies pending migrations and loads the sequence counters.
func Open(ctx context.Context, cfg Config, opts Options) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// The database must exist before a connection can use it by default.
	boot, err := connect(ctx, cfg, "default")
	if err != nil {
		return nil, err
	}
	err = boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.Database)
	if cerr := boot.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("create database %s: %w", cfg.Database, err)
	}
	conn, err := connect(ctx, cfg, cfg.Database)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, conn: conn, opts: opts}
	if !opts.NoMigrate {
		if _, err := s.Migrate(ctx); err != nil {
			return nil, errors.Join(err, conn.Close())
		}
		if err := s.loadCounters(ctx); err != nil {
			return nil, errors.Join(err, conn.Close())
		}
		if err := s.loadMemoryLimit(ctx); err != nil {
			return nil, errors.Join(err, conn.Close())
		}
		if err := s.loadSnapshots(ctx); err != nil {
			return nil, errors.Join(err, conn.Close())
		}
	}
	return s, nil
}

func connect(ctx context.Context, cfg Config, database string) (driver.Conn, error) {
	conn, err := ch.Open(&ch.Options{
		Addr:        []string{cfg.Addr},
		Auth:        ch.Auth{Database: database, Username: cfg.Username, Password: cfg.Password},
		TLS:         cfg.TLS,
		DialTimeout: 5 * time.Second,
		ReadTimeout: 5 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", cfg.Addr, err)
	}
	if err := conn.Ping(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("ping clickhouse %s: %w", cfg.Addr, err), conn.Close())
	}
	return conn, nil
}

func (s *Store) loadCounters(ctx context.Context) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// Both tables: a write whose values landed and whose events insert failed has used its seqs too.
	if err := s.conn.QueryRow(ctx, `SELECT greatest((SELECT max(seq) FROM events), (SELECT max(seq) FROM event_values))`).Scan(&s.seq); err != nil {
		return fmt.Errorf("read last ingest sequence: %w", err)
	}
	if err := s.conn.QueryRow(ctx, `SELECT max(n) FROM dead_letters`).Scan(&s.dead); err != nil {
		return fmt.Errorf("read last dead letter: %w", err)
	}
	return nil
}

// loadMemoryLimit reads the per-query memory limit of this connection's user (0: unlimited) and derives the
// hour totals' spill threshold from it.
func (s *Store) loadMemoryLimit(ctx context.Context) error {
	var v string
	if err := s.conn.QueryRow(ctx, `SELECT value FROM system.settings WHERE name = 'max_memory_usage'`).Scan(&v); err != nil {
		return fmt.Errorf("read max_memory_usage: %w", err)
	}
	limit, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("read max_memory_usage %q: %w", v, err)
	}
	s.spillBytes = limit / 2
	return nil
}

// Database returns the database name.
func (s *Store) Database() string { return s.cfg.Database }

// Ping checks that the server answers a query.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping clickhouse: %w", err)
	}
	return nil
}

// LastSeq returns the ingest sequence snapshot for an hour close. It waits for the write in progress, so every
// event with seq <= the result is stored (or its write failed) and no later write can use a lower seq. A
// stream-fed store returns a snapshot of the stored Kafka offsets instead (stream.go).
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	if s.opts.Offsets != nil {
		return s.takeSnapshot(ctx)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.seq, nil
}

// Close closes the connection; writes after Close fail.
func (s *Store) Close() error {
	s.wmu.Lock()
	if s.closed {
		s.wmu.Unlock()
		return nil
	}
	s.closed = true
	s.wmu.Unlock()
	return s.conn.Close()
}
