package main

import (
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// newRoot builds the command tree. Cobra gives the subcommands, --help everywhere and flag parsing; hand-written
// flag dispatch for a dozen nested commands would be longer and worse.
func newRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "meterd",
		Short: "Usage metering and billing for pay-per-use SaaS on Huawei Cloud KooGallery",
		Long: `meterd ingests usage events, stores them exactly once, totals them per instance and hour, prices
them the way KooGallery does and pushes one signed usage record per instance-hour to KooGallery.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(), newMigrateCmd(), newPriceCmd(), newEventsCmd(), newVersionCmd())
	return root
}

// isFlagError recognises cobra's own argument errors (unknown command, wrong arg count), which are usage errors.
func isFlagError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "required flag", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
