package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/store/clickhouse"
	"github.com/meterd/meterd/store/sqlite"
)

func newMigrateCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending schema migrations to the configured store",
		Long: "Apply the store's pending migrations (schemas/<store>/NNNN_name.sql) in order; running it again applies nothing. serve also migrates at start.\n" +
			"Works on store.driver sqlite and clickhouse.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := config.Load(configPath, os.LookupEnv)
			if err != nil {
				return usageError{err}
			}
			if cfg.Store.Driver == "clickhouse" {
				return migrateClickHouse(cmd, cfg.Store.ClickHouse)
			}
			st, err := sqlite.Open(cmd.Context(), cfg.Store.SQLite.Path, sqlite.Options{NoMigrate: true})
			if err != nil {
				return fmt.Errorf("migrate %s: %w", cfg.Store.SQLite.Path, err)
			}
			applied, err := st.Migrate(cmd.Context())
			for _, m := range applied {
				fmt.Fprintf(cmd.OutOrStdout(), "applied %04d_%s\n", m.Version, m.Name)
			}
			var version int
			if err == nil {
				version, err = st.SchemaVersion(cmd.Context())
			}
			if cerr := st.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("migrate %s: %w", cfg.Store.SQLite.Path, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "store %s at schema version %d (%d applied now)\n", cfg.Store.SQLite.Path, version, len(applied))
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (YAML)")
	return cmd
}

// clickHouseConfig turns the config section into the store's config, reading the password file and the TLS files.
func clickHouseConfig(c config.ClickHouseStore) (clickhouse.Config, error) {
	out := clickhouse.Config{Addr: c.Addr, Database: c.Database, Username: c.Username}
	tlsConfig, err := c.TLS.Load("store.clickhouse.tls")
	if err != nil {
		return out, err
	}
	out.TLS = tlsConfig
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return out, fmt.Errorf("store.clickhouse.password_file: %w", err)
		}
		out.Password = strings.TrimSpace(string(b))
	}
	return out, nil
}

func migrateClickHouse(cmd *cobra.Command, c config.ClickHouseStore) error {
	chCfg, err := clickHouseConfig(c)
	if err != nil {
		return err
	}
	where := chCfg.Addr + "/" + chCfg.Database
	st, err := clickhouse.Open(cmd.Context(), chCfg, clickhouse.Options{NoMigrate: true})
	if err != nil {
		return fmt.Errorf("migrate %s: %w", where, err)
	}
	applied, err := st.Migrate(cmd.Context())
	for _, m := range applied {
		fmt.Fprintf(cmd.OutOrStdout(), "applied %04d_%s\n", m.Version, m.Name)
	}
	var version int
	if err == nil {
		version, err = st.SchemaVersion(cmd.Context())
	}
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("migrate %s: %w", where, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "store clickhouse %s at schema version %d (%d applied now)\n", where, version, len(applied))
	return nil
}
