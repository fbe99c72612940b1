package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/reconcile"
)

func newReportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Finance reports",
	}
	cmd.AddCommand(newReconcileCmd())
	return cmd
}

func newReconcileCmd() *cobra.Command {
	var configPath, fromText, toText, billPath, formatText, outPath string
	cmd := &cobra.Command{
		Use:   "reconcile --config FILE --from T --to T [--bill FILE.csv] [--format csv|json|html] [--out FILE]",
		Short: "Reconcile usage, pushed SDRs, KooGallery's answers and (with --bill) its bill, and check the invariant",
		Long: `Report the closed hours in [--from, --to): one line per instance-hour (events, quantity, carry in and out,
late usage carried in and from which hours, the SDR pushed, its state, last code and expected amount), totals per
instance, SKU and currency, the invariant of DESIGN.md §4 per instance and meter, and the discrepancies: rejected
and expired records, late usage written off, unmatched usage, SDRs that missed their deadline.

--format csv (the default) writes the lines; json the whole report; html one self-contained page with a chart.
--bill imports a KooGallery bill detail or SDR Management export first (columns: the reconcile section of the
config) and adds its matches, both-sided omissions and amount differences to the report; matched SDRs become
BILLED, abnormal ones ASYNC_REJECTED and re-reported. Otherwise the report only reads, and it runs while serve runs
on the same store.

Exit code 0 when the invariant holds; 1 when it does not, each violation on stderr (where and what); 2 for a bad
command line, config or bill file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			from, to, err := reconcile.ParseWindow(fromText, toText)
			if err != nil {
				return usageError{err}
			}
			format, err := reconcile.ParseFormat(formatText)
			if err != nil {
				return usagef("--format: %v", err)
			}
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			if err := storeExists(cfg); err != nil {
				return err
			}
			ctx := cmd.Context()
			store, err := openStore(ctx, cfg, storeOptions{})
			if err != nil {
				return err
			}
			defer func() { err = errors.Join(err, store.Close()) }()

			now := time.Now().UTC()
			opts := reconcile.Options{From: from, To: to, Now: now}
			if billPath != "" {
				if opts.Bill, err = importBill(cmd, cfg, store, billPath, from, to, now); err != nil {
					return err
				}
			}
			stderr := cmd.ErrOrStderr()
			var bar *progressbar.ProgressBar
			opts.Progress = func(done, total int) {
				if bar == nil {
					bar = newProgress(stderr, int64(total), "reconciling", "instances")
				}
				_ = bar.Set(done)
			}
			r, err := writeReport(cmd, store, cfg, opts, format, outPath)
			if bar != nil {
				_ = bar.Finish()
			}
			if err != nil {
				return err
			}
			if outPath != "" {
				status := "invariant holds"
				if !r.Invariant.Holds {
					status = fmt.Sprintf("invariant does NOT hold (%d violations)", len(r.Invariant.Violations))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d lines, %d instances, %d missed deadlines, %d rejected; %s\n",
					outPath, r.LineCount, r.Instances, len(r.MissedDeadline), len(r.Rejected), status)
			}
			if !r.Invariant.Holds {
				for _, v := range r.Invariant.Violations {
					fmt.Fprintf(stderr, "meterd: invariant: %s\n", v)
				}
				return fmt.Errorf("invariant does not hold: %d violations (listed above)", len(r.Invariant.Violations))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "config file (YAML): the store and the plans")
	f.StringVar(&fromText, "from", "", "first hour reported, RFC 3339 or e.g. 2026-11-22T03 (required)")
	f.StringVar(&toText, "to", "", "end of the report, excluded (required)")
	f.StringVar(&billPath, "bill", "", "KooGallery bill detail or SDR Management export (CSV) to import and reconcile")
	f.StringVar(&formatText, "format", "csv", "csv, json or html")
	f.StringVar(&outPath, "out", "", "output file (default: stdout); written whole or not at all")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// importBill imports the export before the report is built, so the report shows the states it settled.
func importBill(cmd *cobra.Command, cfg *config.Config, store backend, path string, from, to, now time.Time) (*bill.Result, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, usagef("--bill: %v", err)
	}
	bo := bill.OptionsFromConfig(cfg, now)
	bo.From, bo.To = from, to
	res, err := bill.Import(cmd.Context(), store, path, "", bo)
	var fe *bill.FormatError
	if errors.As(err, &fe) {
		return nil, usageError{err}
	}
	return res, err
}

// writeReport streams the report to --out (through a temporary file renamed at the end, so a failed run leaves
// no half report) or to stdout.
func writeReport(cmd *cobra.Command, store backend, cfg *config.Config, opts reconcile.Options, format reconcile.Format,
	outPath string) (*reconcile.Report, error) {
	ctx := cmd.Context()
	if outPath == "" {
		return reconcile.Export(ctx, store, cfg.Catalog(), opts, format, cmd.OutOrStdout())
	}
	dir := filepath.Dir(outPath)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(outPath)+".*")
	if err != nil {
		return nil, usagef("--out: %v", err)
	}
	r, err := reconcile.Export(ctx, store, cfg.Catalog(), opts, format, tmp)
	err = errors.Join(err, syncClose(tmp))
	if err == nil {
		err = os.Rename(tmp.Name(), outPath)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return nil, fmt.Errorf("write %s: %w", outPath, err)
	}
	return r, nil
}

func syncClose(f *os.File) error {
	return errors.Join(f.Sync(), f.Close())
}
