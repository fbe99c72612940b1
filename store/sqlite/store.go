// Package sqlite is the embedded store: one SQLite file through modernc.org/sqlite (pure Go, nothing to install).
//
// Durability: WAL with synchronous=FULL, so a commit has reached the disk before Write returns and the caller
// acknowledges. Writes go through a single writer goroutine that commits the requests waiting at that moment in
// one transaction (group commit): one fsync serves many concurrent requests, and each request still learns its
// own outcome. Reads use a separate connection pool and never block the writer (WAL readers see the last commit).
// Copying the WAL back into the database file (checkpointing) happens on a third connection beside the writer,
// not inside its commits; the WAL stays bounded (walRestartFrames).
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
	"sync/atomic"
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
	stmts  writeStmts // the writer goroutine's own
	// The checkpointer copies committed WAL pages back into the database file on a connection of its own, beside
	// the writer: SQLite's automatic checkpoint would do it inside a commit, holding up every request waiting for
	// that commit (about a tenth of the writer's time under load, measured). kick wakes it after a commit.
	ckpt     *sql.DB
	kick     chan struct{}
	ckptDone chan struct{}
	walFull  atomic.Bool // set by the checkpointer, read by the writer: see restartWAL
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
	if err := registerTotalsFunctions(); err != nil {
		return nil, err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create store directory: %w", err)
		}
	}
	write, err := openDB(path, connWrite)
	if err != nil {
		return nil, err
	}
	write.SetMaxOpenConns(1)
	read, err := openDB(path, connRead)
	if err != nil {
		return nil, errors.Join(err, write.Close())
	}
	read.SetMaxOpenConns(4)
	ckpt, err := openDB(path, connCheckpoint)
	if err != nil {
		return nil, errors.Join(err, write.Close(), read.Close())
	}
	ckpt.SetMaxOpenConns(1)
	s := &Store{path: path, write: write, read: read, opts: opts, reqs: make(chan *writeReq, 256), done: make(chan struct{}),
		ckpt: ckpt, kick: make(chan struct{}, 1), ckptDone: make(chan struct{})}
	if !opts.NoMigrate {
		if _, err := s.Migrate(ctx); err != nil {
			return nil, errors.Join(err, write.Close(), read.Close(), ckpt.Close())
		}
	}
	go s.checkpointer()
	go s.writer()
	return s, nil
}

type connKind int

const (
	connWrite connKind = iota
	connRead
	connCheckpoint
)

// checkpointInterval is the most often the checkpointer runs, and how often it runs without being kicked (for
// commits other than ingest: hour closes, instances, the push ledger). Checkpointing less often writes each
// page rewritten by successive commits (the end of every index) once instead of each time.
const checkpointInterval = 200 * time.Millisecond

// checkpointer runs PASSIVE checkpoints, which never block the writer or readers, until Close. The WAL keeps
// every commit durable meanwhile (synchronous=FULL); a checkpoint only moves pages into the database file, with
// its own fsync, and lets the WAL start over once all of it is copied.
func (s *Store) checkpointer() {
	defer close(s.ckptDone)
	tick := time.NewTicker(checkpointInterval)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case _, ok := <-s.kick:
			if !ok {
				return
			}
			if time.Since(last) < checkpointInterval {
				continue // the next tick will do
			}
		case <-tick.C:
		}
		last = time.Now()
		if err := s.checkpoint(); err != nil {
			s.opts.Logger.Warn("checkpoint", "store", "sqlite", "err", err)
		}
	}
}

// walRestartFrames bounds the WAL. A PASSIVE checkpoint beside the writer copies what was committed but cannot
// make the WAL start over: SQLite restarts it only when a write transaction begins with every frame copied, which
// never happens while commits keep coming (the WAL grew by 400 MB per million events, measured, and so would the
// recovery after a crash). So once the WAL holds this many frames, the writer itself checkpoints between two
// commits (see restartWAL); the checkpointer has copied nearly everything by then, so that costs it little.
const walRestartFrames = 8192

// checkpoint copies the WAL into the database without blocking anybody, and tells the writer when the WAL has
// grown past walRestartFrames.
func (s *Store) checkpoint() error {
	var busy, logFrames, copied int
	if err := s.ckpt.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &copied); err != nil {
		return err
	}
	s.walFull.Store(logFrames >= walRestartFrames)
	return nil
}

// restartWAL runs on the writer's connection between two transactions, when the checkpointer says the WAL is
// full: nothing else writes then, so the checkpoint copies every frame left, and the next write transaction
// starts the WAL over. A reader still on an old snapshot can keep some frames; the next round gets them.
func (s *Store) restartWAL() {
	if !s.walFull.Swap(false) {
		return
	}
	var busy, logFrames, copied int
	if err := s.write.QueryRow("PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &copied); err != nil {
		s.opts.Logger.Warn("checkpoint", "store", "sqlite", "err", err)
	}
}

// kickCheckpoint wakes the checkpointer after a commit, without waiting.
func (s *Store) kickCheckpoint() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func openDB(path string, kind connKind) (*sql.DB, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	switch kind {
	case connRead:
		// 64 MiB of page cache per connection (SQLite's default is 2 MiB): an hour's SDRs, keyed by a hash-like
		// metering_sn, are written at random pages; with the default cache 100,000 of them took 4x longer per row.
		q.Add("_pragma", "cache_size(-65536)")
		q.Add("_pragma", "query_only(1)")
	case connWrite:
		q.Add("_pragma", "cache_size(-65536)")
		// The checkpointer checkpoints, not the commits.
		q.Add("_pragma", "wal_autocheckpoint(0)")
		// Take the write lock at BEGIN, so a second process on the same file waits at the start of a
		// transaction instead of failing at its first write.
		q.Set("_txlock", "immediate")
	case connCheckpoint:
		// It reads WAL frames and writes database pages, bypassing the page cache: the default cache is enough.
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
	close(s.kick)
	<-s.ckptDone
	// The writer's connection last: SQLite checkpoints and removes the WAL when the last connection closes.
	return errors.Join(s.stmts.close(), s.ckpt.Close(), s.read.Close(), s.write.Close())
}
