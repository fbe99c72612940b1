//go:build integration

package clickhouse

import (
	"context"
	"testing"

	"github.com/meterd/meterd/internal/services"
)

// TestKeyHashMatchesServer: the pre-check index is written with keyHash computed here and backfilled by the
// migration with ClickHouse's cityHash64(concat(source, '\0', id)); both must agree for every key, or stored events
// would look new.
func TestKeyHashMatchesServer(t *testing.T) {
	ctx := context.Background()
	addr := services.ClickHouse(t)
	st, err := Open(ctx, Config{Addr: addr, Database: services.Database(t, addr)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	for _, k := range [][2]string{{"", ""}, {"s", "1"}, {"meterd-gen", "gen-000000001"}, {"app/é", "ид-🙂"},
		{"long-source-name-for-a-real-service", "7f141bf1-aec8-4859-8323-fb3a8ad50721"}, {"a\x00b", "c"}} {
		var server uint64
		if err := st.conn.QueryRow(ctx, "SELECT cityHash64(concat(?, '\\0', ?))", k[0], k[1]).Scan(&server); err != nil {
			t.Fatal(err)
		}
		if got := keyHash(k[0], k[1]); got != server {
			t.Errorf("keyHash(%q, %q) = %d, ClickHouse says %d", k[0], k[1], got, server)
		}
	}
}
