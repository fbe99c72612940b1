//go:build integration

package clickhouse_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/meterd/meterd/aggregate/aggregatetest"
	"github.com/meterd/meterd/store/clickhouse"
)

// addr is the ClickHouse under test: METERD_TEST_CLICKHOUSE (host:port), else the port written by
// deploy/local/clickhouse.sh up. The test fails, never skips, when there is none: CI starts it.
func addr(t *testing.T) string {
	t.Helper()
	if a := os.Getenv("METERD_TEST_CLICKHOUSE"); a != "" {
		return a
	}
	dir := os.Getenv("METERD_SERVICES_DIR")
	if dir == "" {
		dir = "/tmp/meterd-services"
	}
	port, err := os.ReadFile(filepath.Join(dir, "clickhouse", "port"))
	if err != nil {
		t.Fatalf("no ClickHouse to test against: set METERD_TEST_CLICKHOUSE or run deploy/local/clickhouse.sh up (%v)", err)
	}
	return "127.0.0.1:" + strings.TrimSpace(string(port))
}

// throwaway returns the config of a new database that is dropped when the test ends.
func throwaway(t *testing.T) clickhouse.Config {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	cfg := clickhouse.Config{Addr: addr(t), Database: "meterd_test_" + hex.EncodeToString(b)}
	t.Cleanup(func() {
		conn, err := ch.Open(&ch.Options{Addr: []string{cfg.Addr}})
		if err != nil {
			t.Errorf("drop %s: %v", cfg.Database, err)
			return
		}
		if err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+cfg.Database); err != nil {
			t.Errorf("drop %s: %v", cfg.Database, err)
		}
		_ = conn.Close()
	})
	return cfg
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
