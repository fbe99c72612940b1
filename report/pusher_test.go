package report_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/meterd/meterd/report/reporttest"
	"github.com/meterd/meterd/store/sqlite"
)

var testKey = reporttest.TestKey

// TestPushSuite runs the push scenarios (report/reporttest) against SQLite: the same suite the ClickHouse store
// runs in its integration tests (store/clickhouse/integration_test.go).
func TestPushSuite(t *testing.T) {
	reporttest.RunPushSuite(t, func(t *testing.T, dir string, now func() time.Time) reporttest.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(dir, "m.db"), sqlite.Options{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return st
	})
}
