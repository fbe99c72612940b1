package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/meterd/meterd/aggregate/aggregatetest"
	"github.com/meterd/meterd/store/sqlite"
)

// TestConformance runs the hour-close golden scenario (aggregate/testdata/golden) against SQLite, with a restart
// in the middle: the same suite the ClickHouse store must pass.
func TestConformance(t *testing.T) {
	aggregatetest.Run(t, filepath.Join("..", "..", "aggregate", "testdata", "golden"), func(t *testing.T, dir string) aggregatetest.Store {
		st, err := sqlite.Open(context.Background(), filepath.Join(dir, "meterd.db"), sqlite.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	})
}
