package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

// kgsimShutdownGrace bounds the wait for answers in flight at SIGTERM; held requests are released first.
const kgsimShutdownGrace = 5 * time.Second

// kgsimOptions are the flags of `meterd kgsim`.
type kgsimOptions struct {
	listen, key, keyFile, path, instances, logLevel string
	failRate, timeoutRate, lostRate                 float64
	latency, maxSkew                                time.Duration
	seed                                            int64
}

func newKgsimCmd() *cobra.Command {
	var o kgsimOptions
	cmd := &cobra.Command{
		Use:   "kgsim --listen ADDR --key K",
		Short: "Run the strict KooGallery usage API simulator",
		Long: `Run a KooGallery usage API simulator that checks every call the way the spec says KooGallery does:
ts freshness, nonce reuse, HMAC-SHA256 signature over the exact body, body schema, at most 1000 records,
time layout, positive usage values with at most 4 decimals, metering_sn and period duplicates, instance
lives and freezes. Faults are injected on demand. GET /_sim/records lists what was billed, GET /_sim/stats
counts answers.

The key is --key, else the content of --key-file, else $METERD_KOOGALLERY_KEY; it is never logged.
--instances reads a YAML list of instances (instance_id, started_at, released_at, status, frozen_from,
frozen_until; a meterd instances file or config works): records of other instances are refused with 9001.
Without it every instance exists. Stops on SIGINT or SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), o.logLevel)
			if err != nil {
				return err
			}
			cfg, err := o.config(log)
			if err != nil {
				return err
			}
			return runKgsim(cmd.Context(), o.listen, cfg, o, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8081", "address to listen on (port 0 picks a free one)")
	f.StringVar(&o.key, "key", "", "the interconnection key signatures must match")
	f.StringVar(&o.keyFile, "key-file", "", "file holding the key (surrounding whitespace trimmed)")
	f.StringVar(&o.path, "path", kgsim.DefaultPath, `path of the usage API; "" accepts any path`)
	f.StringVar(&o.instances, "instances", "", "YAML file of known instances and their lives (default: every instance exists)")
	f.Float64Var(&o.failRate, "fail-rate", 0, "share of calls answered 0999 (HTTP 500) without processing, 0..1")
	f.Float64Var(&o.timeoutRate, "timeout-rate", 0, "share of calls held unprocessed until the client times out, 0..1")
	f.Float64Var(&o.lostRate, "lost-rate", 0, "share of calls processed (billed) whose answer is then dropped, 0..1")
	f.DurationVar(&o.latency, "latency", 0, "delay before processing each call")
	f.DurationVar(&o.maxSkew, "max-skew", kgsim.DefaultMaxSkew, "freshness window of the ts header, either way")
	f.Int64Var(&o.seed, "seed", kgsim.DefaultSeed, "seed of the fault generator, for repeatable runs")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.MarkFlagsMutuallyExclusive("key", "key-file")
	return cmd
}

// config turns the flags into the simulator's config; every mistake is a usage error.
func (o kgsimOptions) config(log *slog.Logger) (kgsim.Config, error) {
	var cfg kgsim.Config
	for _, r := range []struct {
		flag string
		v    float64
	}{{"--fail-rate", o.failRate}, {"--timeout-rate", o.timeoutRate}, {"--lost-rate", o.lostRate}} {
		if !(r.v >= 0 && r.v <= 1) {
			return cfg, usagef("%s: %v must be between 0 and 1", r.flag, r.v)
		}
	}
	if o.latency < 0 {
		return cfg, usagef("--latency: %s must not be negative", o.latency)
	}
	if o.maxSkew <= 0 {
		return cfg, usagef("--max-skew: %s must be positive", o.maxSkew)
	}
	key, err := o.readKey()
	if err != nil {
		return cfg, err
	}
	cfg = kgsim.Config{Key: key, Path: o.path, MaxSkew: o.maxSkew, Logger: log}
	if o.instances != "" {
		data, err := os.ReadFile(o.instances)
		if err != nil {
			return cfg, usagef("--instances: %v", err)
		}
		if cfg.Instances, err = kgsim.ParseInstances(data); err != nil {
			return cfg, usagef("--instances %s: %v", o.instances, err)
		}
	}
	return cfg, nil
}

// readKey: an explicit flag wins over the environment, unlike in serve's config, because a simulator is started
// by hand or by a test that says which key it wants.
func (o kgsimOptions) readKey() ([]byte, error) {
	switch {
	case o.key != "":
		return []byte(o.key), nil
	case o.keyFile != "":
		key, err := koogallery.NewKeySource(o.keyFile, func(string) string { return "" }).Key()
		if err != nil {
			return nil, usagef("--key-file: %v", err)
		}
		return key, nil
	}
	key, err := koogallery.NewKeySource("", os.Getenv).Key()
	if err != nil {
		return nil, usagef("no key: give --key, --key-file or $%s", koogallery.KeyEnv)
	}
	return key, nil
}

// runKgsim serves the simulator until ctx ends (SIGINT/SIGTERM), then releases held requests and shuts down.
func runKgsim(ctx context.Context, listen string, cfg kgsim.Config, o kgsimOptions, log *slog.Logger) error {
	sim := kgsim.New(cfg)
	f := sim.Faults()
	f.Seed(o.seed)
	f.Rate5xx(o.failRate)
	f.TimeoutRate(o.timeoutRate)
	f.LostAnswerRate(o.lostRate)
	f.Latency(o.latency)

	srv := &http.Server{
		Handler:           sim,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return usagef("--listen %s: %v", listen, err)
	}
	instances := "any"
	if cfg.Instances != nil {
		instances = fmt.Sprint(len(cfg.Instances))
	}
	path := cfg.Path
	if path == "" {
		path = "any"
	}
	log.Info("listening", "addr", ln.Addr().String(), "path", path, "instances", instances,
		"fail_rate", o.failRate, "timeout_rate", o.timeoutRate, "lost_rate", o.lostRate, "latency", o.latency,
		"seed", o.seed)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("kgsim http server: %w", err)
	case <-ctx.Done():
	}
	sim.Close() // held requests would otherwise keep Shutdown waiting until their clients give up
	shutCtx, cancel := context.WithTimeout(context.Background(), kgsimShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return errors.Join(fmt.Errorf("kgsim shutdown: %w", err), srv.Close())
	}
	st := sim.Stats()
	log.Info("stopped", "requests", st.Requests, "billed", st.Billed, "lost", st.Lost, "held", st.Held)
	return nil
}
