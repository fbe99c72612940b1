package main

import (
	"io"

	"github.com/spf13/cobra"
)

// newRoot builds the command tree. Cobra gives the subcommands, --help everywhere and flag parsing; hand-written
// flag dispatch for a dozen nested commands would be longer and worse.
func newRoot(stdin io.Reader, stdout, stderr io.Writer, ran *bool) *cobra.Command {
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
	root.AddCommand(newServeCmd(), newMigrateCmd(), newPriceCmd(), newEventsCmd(), newInstancesCmd(), newPushCmd(), newReportCmd(), newDemoCmd(), newKgsimCmd(), newVersionCmd())
	markRuns(root, ran)
	return root
}

// markRuns wraps every command's RunE so that run can tell an error of cobra's own parsing (unknown command or
// flag, missing required flag, wrong argument count: RunE never started, exit 2) from one of the command (exit 1
// unless it is a usageError). Matching cobra's message texts instead would misjudge runtime errors that happen
// to contain the same words.
func markRuns(c *cobra.Command, ran *bool) {
	if inner := c.RunE; inner != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*ran = true
			return inner(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markRuns(sub, ran)
	}
}
