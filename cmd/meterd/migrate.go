package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meterd/meterd/store/sqlite"
)

func newMigrateCmd() *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply pending schema migrations to the configured store",
		Long:  "Apply the store's pending migrations (schemas/<store>/NNNN_name.sql) in order; running it again applies nothing. serve also migrates at start.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
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
