package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/reconcile"
	"github.com/meterd/meterd/store/clickhouse"
	"github.com/meterd/meterd/store/sqlite"
)

// backend is the store as the commands use it: the union of the ports the packages own. Both the embedded store
// (store/sqlite) and the scale-out one (store/clickhouse) implement all of it, so every command runs on either;
// `store.driver` chooses.
type backend interface {
	ingest.Sink
	ingest.RejectedLister
	aggregate.Store
	aggregate.Instances
	instance.Store
	report.Ledger
	reconcile.Source
	bill.Store
	Ping(ctx context.Context) error
	Close() error
}

var (
	_ backend = (*sqlite.Store)(nil)
	_ backend = (*clickhouse.Store)(nil)
)

// storeOptions are what a command may set on the store it opens.
type storeOptions struct {
	Logger *slog.Logger
	Now    func() time.Time // the store's own clock (dead letters, close ids); nil: time.Now
}

// openStore opens (and migrates) the configured store.
func openStore(ctx context.Context, cfg *config.Config, opts storeOptions) (backend, error) {
	switch cfg.Store.Driver {
	case "clickhouse":
		chCfg, err := clickHouseConfig(cfg.Store.ClickHouse)
		if err != nil {
			return nil, err
		}
		chOpts := clickhouse.Options{Logger: opts.Logger, Now: opts.Now}
		if scaledOut(cfg) {
			chOpts.Offsets = positions(cfg) // collectors write; a close snapshots their committed offsets
		}
		st, err := clickhouse.Open(ctx, chCfg, chOpts)
		if err != nil {
			return nil, fmt.Errorf("open store clickhouse %s/%s: %w", chCfg.Addr, chCfg.Database, err)
		}
		return st, nil
	default:
		st, err := sqlite.Open(ctx, cfg.Store.SQLite.Path, sqlite.Options{Logger: opts.Logger, Now: opts.Now})
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", cfg.Store.SQLite.Path, err)
		}
		return st, nil
	}
}

// storeExists tells a read-only command whether there is a store to read: opening a missing SQLite file would
// create an empty store and report nothing, which looks like success. A ClickHouse database is created by
// migrate or serve; the report finds it empty rather than missing, which its own output shows.
func storeExists(cfg *config.Config) error {
	if cfg.Store.Driver == "clickhouse" {
		return nil
	}
	if _, err := os.Stat(cfg.Store.SQLite.Path); err != nil {
		return usagef("store.sqlite.path: %v", err)
	}
	return nil
}

// storeWhere names the store for logs: never a password.
func storeWhere(cfg *config.Config) []any {
	if cfg.Store.Driver == "clickhouse" {
		return []any{"store", "clickhouse", "addr", cfg.Store.ClickHouse.Addr, "database", cfg.Store.ClickHouse.Database}
	}
	return []any{"store", "sqlite", "path", cfg.Store.SQLite.Path}
}
