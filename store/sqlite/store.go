// Package sqlite is the embedded store: one SQLite file through modernc.org/sqlite (pure Go, nothing to install).
//
// Durability: WAL with synchronous=FULL, so a commit has reached the disk before Write returns and the caller
// acknowledges. Writes go through a single writer goroutine that commits the requests waiting at that moment in
// one transaction (group commit): one fsync serves many concurrent requests, and each request still learns its
// own outcome. Reads use a separate connection pool and never block the writer (WAL readers see the last commit).
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meterd/meterd/ingest"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

var (
	_ ingest.Sink           = (*Store)(nil)
	_ ingest.RejectedLister = (*Store)(nil)
)

// Options configure a Store.
type Options struct {
	// Now is the clock of received_ms for dead letters without their own time; defaults to time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// MaxBatchEvents bounds one group commit; defaults to 20,000 events.
	MaxBatchEvents int
	// NoMigrate skips applying migrations at open, for `meterd migrate`, which applies and reports them itself.
	NoMigrate bool
}

// Store is the SQLite storage.
type Store struct {
	path   string
	write  *sql.DB // one connection: SQLite has one writer anyway, and one connection keeps statements cached
	read   *sql.DB
	opts   Options
	reqs   chan *writeReq
	done   chan struct{}
	mu     sync.RWMutex // guards closed against Write racing Close
	closed bool
	// Full-chunk inserts, prepared once by the writer goroutine (their only user) after the migrations: parsing a
	// 64-row statement costs as much as running it.
	stmtEvents, stmtValues *sql.Stmt
}

// Open opens (creating if needed) the database at path, applies pending migrations and starts the writer.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxBatchEvents <= 0 {
		opts.MaxBatchEvents = 20000
	}
	if err := registerDecimalFunctions(); err != nil {
		return nil, err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create store directory: %w", err)
		}
	}
	write, err := openDB(path, false)
	if err != nil {
		return nil, err
	}
	write.SetMaxOpenConns(1)
	read, err := openDB(path, true)
	if err != nil {
		return nil, errors.Join(err, write.Close())
	}
	read.SetMaxOpenConns(4)
	s := &Store{path: path, write: write, read: read, opts: opts, reqs: make(chan *writeReq, 256), done: make(chan struct{})}
	if !opts.NoMigrate {
		if _, err := s.Migrate(ctx); err != nil {
			return nil, errors.Join(err, write.Close(), read.Close())
		}
	}
	go s.writer()
	return s, nil
}

func openDB(path string, readOnly bool) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	// 64 MiB of page cache per connection (SQLite's default is 2 MiB): an hour's SDRs, keyed by a hash-like
	// metering_sn, are written at random pages; with the default cache 100,000 of them took 4x longer per row.
	q.Add("_pragma", "cache_size(-65536)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		// Take the write lock at BEGIN, so a second process on the same file waits at the start of a
		// transaction instead of failing at its first write.
		q.Set("_txlock", "immediate")
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	return db, nil
}

// Path returns the database file.
func (s *Store) Path() string { return s.path }

// Ping checks that the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.read.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("ping sqlite: %w", err)
	}
	return nil
}

// LastSeq returns the highest ingest sequence stored: the snapshot an hour close records.
func (s *Store) LastSeq(ctx context.Context) (int64, error) {
	var seq sql.NullInt64
	if err := s.read.QueryRowContext(ctx, "SELECT max(seq) FROM events").Scan(&seq); err != nil {
		return 0, fmt.Errorf("read last ingest sequence: %w", err)
	}
	return seq.Int64, nil
}

// Close stops accepting writes, lets the writer finish what it was given, and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()
	<-s.done
	var errs []error
	for _, st := range []*sql.Stmt{s.stmtEvents, s.stmtValues} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(append(errs, s.write.Close(), s.read.Close())...)
}
