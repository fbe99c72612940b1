package clickhouse

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/meterd/meterd/schemas"
)

// Migration is one applied schema migration.
type Migration struct {
	Version int
	Name    string
}

// Migrate applies the migrations of schemas/clickhouse not recorded in schema_migrations yet, statement by
// statement, then records each. Every statement is idempotent, so a crash between applying and recording only
// means the migration runs again. Running Migrate again applies nothing.
func (s *Store) Migrate(ctx context.Context) ([]Migration, error) {
	if err := s.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version Int64, name String, applied_ms Int64)
ENGINE = MergeTree ORDER BY version`); err != nil {
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	all, err := migrations()
	if err != nil {
		return nil, err
	}
	applied := map[int]bool{}
	rows, err := s.conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[int(v)] = true
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	var done []Migration
	for _, m := range all {
		if applied[m.Version] {
			continue
		}
		for i, stmt := range m.statements {
			if err := s.conn.Exec(ctx, stmt); err != nil {
				return done, fmt.Errorf("migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_ms)")
		if err != nil {
			return done, fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
		}
		if err := b.Append(int64(m.Version), m.Name, s.opts.Now().UnixMilli()); err != nil {
			return done, fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
		}
		if err := b.Send(); err != nil {
			return done, fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
		}
		done = append(done, m.Migration)
		s.opts.Logger.Info("applied migration", "store", "clickhouse", "version", m.Version, "name", m.Name)
	}
	return done, nil
}

// SchemaVersion returns the highest applied migration version (0 for an empty database).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int64
	if err := s.conn.QueryRow(ctx, "SELECT max(version) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v), nil
}

type migration struct {
	Migration
	statements []string
}

// splitStatements splits a migration file at ";" ending a line, dropping "--" comment lines: the native
// protocol runs one statement per query.
func splitStatements(body string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if strings.HasSuffix(trimmed, ";") {
			stmt := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")
			out = append(out, stmt)
			cur.Reset()
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		out = append(out, rest)
	}
	return out
}

// migrations reads the embedded files NNNN_name.sql in version order.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(schemas.ClickHouse, "clickhouse")
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
		body, err := fs.ReadFile(schemas.ClickHouse, "clickhouse/"+name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, migration{Migration{Version: v, Name: label}, splitStatements(string(body))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}
