package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meterd/meterd/schemas"
)

// Migration is one applied schema migration.
type Migration struct {
	Version int
	Name    string
}

// Migrate applies the migrations of schemas/sqlite not applied yet, each in its own transaction with its record
// in schema_migrations, and returns those it applied. Running it again applies nothing.
func (s *Store) Migrate(ctx context.Context) ([]Migration, error) {
	if _, err := s.write.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	all, err := migrations()
	if err != nil {
		return nil, err
	}
	applied := map[int]bool{}
	rows, err := s.write.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	var done []Migration
	for _, m := range all {
		if applied[m.Version] {
			continue
		}
		if err := s.apply(ctx, m); err != nil {
			return done, err
		}
		done = append(done, m.Migration)
		s.opts.Logger.Info("applied migration", "store", "sqlite", "version", m.Version, "name", m.Name)
	}
	return done, nil
}

// SchemaVersion returns the highest applied migration version (0 for an empty database).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.read.QueryRowContext(ctx, "SELECT max(version) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), nil
}

type migration struct {
	Migration
	sql string
}

func (s *Store) apply(ctx context.Context, m migration) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %04d_%s: begin: %w", m.Version, m.Name, err)
	}
	defer func() { _ = tx.Rollback() }() // no-op after Commit
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
		m.Version, m.Name, time.Now().UnixMilli()); err != nil {
		return fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %04d_%s: commit: %w", m.Version, m.Name, err)
	}
	return nil
}

// migrations reads the embedded files NNNN_name.sql in version order.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(schemas.SQLite, "sqlite")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		base, ok := strings.CutSuffix(name, ".sql")
		num, label, ok2 := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || !ok2 || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: want NNNN_name.sql", name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migration version %d used twice (%s, %s)", v, prev, name)
		}
		seen[v] = name
		body, err := fs.ReadFile(schemas.SQLite, "sqlite/"+name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, migration{Migration{Version: v, Name: label}, string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}
