package main

import (
	"fmt"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/meterd/meterd/report"
)

func newPushCmd() *cobra.Command {
	var configPath, hourText string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "push --config FILE [--hour H] [--dry-run]",
		Short: "Close due hours and push (or catch up) their usage records to KooGallery now",
		Long: `Close every hour that is due, build its SDRs and push what is pending, oldest hour first, until nothing is
due. With --hour only that hour's records are pushed. --dry-run shows what would be built and sent and changes
nothing. When a running serve holds the push lease, it is the one pushing: this command then does nothing and
exits 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			var opts report.RunOptions
			if hourText != "" {
				if opts.Hour, err = parseTimeFlag(hourText); err != nil {
					return usagef("--hour: %v", err)
				}
				if !opts.Hour.Equal(opts.Hour.Truncate(time.Hour)) {
					return usagef("--hour: %s is not the start of an hour", hourText)
				}
			}
			ctx := cmd.Context()
			store, err := openStore(ctx, cfg, storeOptions{})
			if err != nil {
				return err
			}
			defer store.Close()
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
			p, err := newPipeline(cfg, store, log, prometheus.NewRegistry(), holderName("cli"), nil)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if dryRun {
				build, send, err := p.pusher.Plan(ctx, opts)
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ACTION\tMETERING_SN\tINSTANCE\tHOUR\tUSAGE_VALUE\tAMOUNT\tSTATE")
				for _, s := range build {
					fmt.Fprintf(w, "build\t%s\t%s\t%s\t%s\t%s %s\t%s\n", s.MeteringSN, s.InstanceID, s.Hour.Format(time.RFC3339), s.UsageValue, s.Amount, s.Currency, s.State)
				}
				for _, s := range send {
					fmt.Fprintf(w, "send\t%s\t%s\t%s\t%s\t%s %s\t%s\n", s.MeteringSN, s.InstanceID, s.Hour.Format(time.RFC3339), s.UsageValue, s.Amount, s.Currency, s.State)
				}
				if err := w.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(out, "dry run: %d to build, %d to send; nothing changed (hours due for closing are not closed in a dry run)\n", len(build), len(send))
				return nil
			}
			closed, err := p.closer.CloseDue(ctx)
			if err != nil {
				return err
			}
			sum, err := p.pusher.RunOnce(ctx, opts)
			if rerr := p.pusher.Release(ctx); err == nil {
				err = rerr
			}
			if err != nil {
				return err
			}
			if !sum.Leader {
				return fmt.Errorf("another scheduler holds the push lease and is pushing; nothing done")
			}
			fmt.Fprintf(out, "closed %d hours; built %d SDRs; sent %d: accepted %d, rejected %d, expired %d, to retry %d\n",
				len(closed), sum.Built, sum.Sent, sum.Accepted, sum.Rejected, sum.Expired, sum.Retrying)
			if sum.Halted {
				return fmt.Errorf("pushing halted: KooGallery refused the credentials or the signature (see the log)")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (YAML)")
	cmd.Flags().StringVar(&hourText, "hour", "", "push only this hour's records (e.g. 2026-11-22T03)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be built and sent; change nothing")
	cmd.AddCommand(newPauseCmd(true), newPauseCmd(false))
	return cmd
}

func newPauseCmd(pause bool) *cobra.Command {
	var configPath, instanceID string
	use, short := "resume", "Resume pushing (globally or for one instance)"
	if pause {
		use, short = "pause", "Pause pushing (globally or for one instance); records wait in the ledger, nothing is lost"
	}
	cmd := &cobra.Command{
		Use:   use + " --config FILE [--instance ID]",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			store, err := openStore(cmd.Context(), cfg, storeOptions{})
			if err != nil {
				return err
			}
			defer store.Close()
			if err := store.SetPause(cmd.Context(), instanceID, pause, time.Now().UTC()); err != nil {
				return err
			}
			scope := "all instances"
			if instanceID != "" {
				scope = "instance " + instanceID
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pushing %sd for %s\n", use, scope)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (YAML)")
	cmd.Flags().StringVar(&instanceID, "instance", "", "only this instance (default: all)")
	return cmd
}
