package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/meterd/meterd/config"
	"github.com/spf13/cobra"
)

// loadConfig loads --config (or the defaults when it is empty) with the environment overrides. A bad config is a
// usage error (exit 2) listing every problem. Warnings matter only to commands that run the service.
func loadConfig(cmd *cobra.Command, path string, showWarnings bool) (*config.Config, error) {
	cfg, warnings, err := config.Load(path, os.LookupEnv)
	if err != nil {
		return nil, usageError{err}
	}
	if showWarnings {
		for _, w := range warnings {
			fmt.Fprintf(cmd.ErrOrStderr(), "meterd: warning: %s\n", w)
		}
	}
	return cfg, nil
}

// newLogger returns the process logger: logfmt-like text on stderr, lower-case messages, stable keys.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, usagef("--log-level: %q must be debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
