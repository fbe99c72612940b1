package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-co-op/gocron/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/koogallery"
	"github.com/meterd/meterd/report/reconcile"
	"github.com/meterd/meterd/store/sqlite"
)

// shutdownGrace bounds how long SIGTERM waits for in-flight requests; each of them is waiting for a commit, which
// takes milliseconds, so this only matters when the disk hangs.
const shutdownGrace = 30 * time.Second

func newServeCmd() *cobra.Command {
	var configPath, logLevel string
	var validate bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ingest API, /metrics and the embedded store",
		Long: `Run meterd: POST /v1/events ingest into the embedded SQLite store (or the configured store), with
/healthz, /readyz and /metrics. Without --config, the defaults apply: data under ./meterd-data, 127.0.0.1:8080.
SIGTERM or SIGINT stops it gracefully: requests in flight finish and every acknowledged event is on disk.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, true)
			if err != nil {
				return err
			}
			if validate {
				fmt.Fprintln(cmd.OutOrStdout(), "config ok")
				return nil
			}
			log, err := newLogger(cmd.ErrOrStderr(), logLevel)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (YAML); defaults apply when omitted")
	cmd.Flags().BoolVar(&validate, "validate", false, "check the config and exit: 0 when valid, 2 listing every problem")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// serve runs until ctx is cancelled (SIGTERM/SIGINT), then shuts down without losing an acknowledged event: the
// HTTP server stops accepting, waits for in-flight requests (each waits for its commit), then the store closes.
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	var tokens ingest.Tokens
	if cfg.Ingest.TokensFile != "" {
		var err error
		if tokens, err = ingest.LoadTokens(cfg.Ingest.TokensFile); err != nil {
			return usagef("ingest.tokens_file: %v", err)
		}
	}
	store, err := sqlite.Open(ctx, cfg.Store.SQLite.Path, sqlite.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg)

	handler, err := ingest.NewHandler(ingest.HandlerConfig{
		Validator: ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration),
		Sink:      store,
		Rejected:  store,
		MaxBody:   cfg.Ingest.MaxBody.Bytes,
		Metrics:   ingest.NewMetrics(reg),
		Logger:    log,
	})
	if err != nil {
		return errors.Join(err, store.Close())
	}
	api := http.NewServeMux()
	handler.Register(api)
	if _, err := startInstances(ctx, cfg, store, log, api); err != nil {
		return errors.Join(err, store.Close())
	}
	pipe, err := newPipeline(cfg, store, log, reg, holderName("serve"), nil)
	if err != nil {
		return errors.Join(err, store.Close())
	}
	aggregate.NewUsageHandler(pipe.closer, log).Register(api)
	report.NewRecordsHandler(store, nil, log).Register(api)
	reconcile.NewHandler(store, cfg.Catalog(), nil).Register(api)
	if pipe.keys != nil {
		stopHUP := reloadKeyOnSIGHUP(pipe.keys, log)
		defer stopHUP()
	}
	sched, err := startCycle(ctx, pipe, log)
	if err != nil {
		return errors.Join(err, store.Close())
	}

	mux := http.NewServeMux()
	mux.Handle("/v1/", tokens.Wrap(api))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := store.Ping(r.Context()); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})

	srv := &http.Server{
		Handler: mux,
		// Slow clients must not hold connections open: headers within 10s, a whole request within a minute.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return errors.Join(fmt.Errorf("listen %s: %w", cfg.Listen, err), store.Close())
	}
	log.Info("listening", "addr", ln.Addr().String(), "store", "sqlite", "path", cfg.Store.SQLite.Path,
		"auth", tokens.Enabled())

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return errors.Join(fmt.Errorf("http server: %w", err), sched.Shutdown(), store.Close())
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight")
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	shutErr := srv.Shutdown(shutCtx)
	schedErr := sched.Shutdown() // waits for a close or push in progress: each commits whole or not at all anyway
	if err := pipe.pusher.Release(context.Background()); err != nil {
		log.Warn("release the push lease", "err", err)
	}
	closeErr := store.Close()
	if schedErr != nil {
		log.Error("stop scheduler", "err", schedErr)
	}
	if shutErr != nil || closeErr != nil {
		return errors.Join(shutErr, closeErr)
	}
	log.Info("stopped")
	return nil
}

func registerBuildInfo(reg prometheus.Registerer) {
	v, r := buildVersion()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "meterd_build_info",
		Help:        "Always 1; the labels tell which build runs.",
		ConstLabels: prometheus.Labels{"version": v, "revision": r},
	})
	g.Set(1)
	reg.MustRegister(g)
}

// pushInterval is how often the push runs: often enough that a retry after push.retry_initial is not late, cheap
// when nothing is due (one indexed query).
const pushInterval = 2 * time.Second

// startCycle runs the hourly cycle: the close at every clock minute, the push every pushInterval, both once at
// start so that hours missed while meterd was down are caught up at once. Singleton mode: a long run is never
// started twice at the same time.
func startCycle(ctx context.Context, p *pipeline, log *slog.Logger) (gocron.Scheduler, error) {
	s, err := gocron.NewScheduler(gocron.WithLocation(time.UTC))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	closeTask := func() {
		if done, err := p.closer.CloseDue(ctx); err != nil {
			log.Error("close hours", "err", err, "closed", len(done))
		}
	}
	pushTask := func() {
		if _, err := p.pusher.RunOnce(ctx, report.RunOptions{}); err != nil && ctx.Err() == nil {
			log.Error("push", "err", err)
		}
	}
	once := []gocron.JobOption{gocron.WithSingletonMode(gocron.LimitModeReschedule), gocron.WithStartAt(gocron.WithStartImmediately())}
	if _, err := s.NewJob(gocron.CronJob("* * * * *", false), gocron.NewTask(closeTask), once...); err != nil {
		return nil, fmt.Errorf("schedule the hour close: %w", err)
	}
	if _, err := s.NewJob(gocron.DurationJob(pushInterval), gocron.NewTask(pushTask), once...); err != nil {
		return nil, fmt.Errorf("schedule the push: %w", err)
	}
	s.Start()
	return s, nil
}

// reloadKeyOnSIGHUP re-reads the KooGallery key on SIGHUP, so a rotated key is used without a restart.
func reloadKeyOnSIGHUP(keys *koogallery.KeySource, log *slog.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				if err := keys.Reload(); err != nil {
					log.Error("reload the KooGallery key", "err", err)
				} else {
					log.Info("KooGallery key reloaded")
				}
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
