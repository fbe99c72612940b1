// Package services locates the real servers the integration tests run against: the ClickHouse and Kafka that
// deploy/local starts (their ports are in ${METERD_SERVICES_DIR:-/tmp/meterd-services}/<name>/port), or the ones
// named by METERD_TEST_CLICKHOUSE and METERD_TEST_KAFKA (host:port). A test fails, never skips, when there is
// none: CI starts them.
package services

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ch "github.com/ClickHouse/clickhouse-go/v2"
)

// ClickHouse returns the native-protocol address of the ClickHouse under test.
func ClickHouse(t testing.TB) string { return addr(t, "clickhouse", "METERD_TEST_CLICKHOUSE") }

// Kafka returns the bootstrap address of the Kafka broker under test.
func Kafka(t testing.TB) string { return addr(t, "kafka", "METERD_TEST_KAFKA") }

func addr(t testing.TB, name, env string) string {
	t.Helper()
	if a := os.Getenv(env); a != "" {
		return a
	}
	dir := os.Getenv("METERD_SERVICES_DIR")
	if dir == "" {
		dir = "/tmp/meterd-services"
	}
	port, err := os.ReadFile(filepath.Join(dir, name, "port"))
	if err != nil {
		t.Fatalf("no %s to test against: set %s or run deploy/local/%s.sh up (%v)", name, env, name, err)
	}
	return "127.0.0.1:" + strings.TrimSpace(string(port))
}

// Name returns prefix followed by a random suffix: a database, topic or group of one test.
func Name(t testing.TB, prefix string) string {
	t.Helper()
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// Database returns the name of a new ClickHouse database on addr (created by the store that opens it), dropped
// when the test ends.
func Database(t testing.TB, addr string) string {
	t.Helper()
	name := Name(t, "meterd_test_")
	t.Cleanup(func() {
		conn, err := ch.Open(&ch.Options{Addr: []string{addr}})
		if err == nil {
			err = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name)
			_ = conn.Close()
		}
		if err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}
