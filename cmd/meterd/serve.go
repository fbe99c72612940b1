package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
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
)

// shutdownGrace bounds how long SIGTERM waits for in-flight requests; each of them is waiting for a commit, which
// takes milliseconds, so this only matters when the disk hangs.
const shutdownGrace = 30 * time.Second

func newServeCmd() *cobra.Command {
	var configPath, logLevel, roleName string
	var validate, profile bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ingest API, /metrics and the embedded store",
		Long: `Run meterd: POST /v1/events ingest into the embedded SQLite store (or the configured store), with
/healthz, /readyz and /metrics. Without --config, the defaults apply: data under ./meterd-data, 127.0.0.1:8080.
SIGTERM or SIGINT stops it gracefully: requests in flight finish and every acknowledged event is on disk.

--role splits the work between processes on the same store: api (ingest and the /v1 API; no close, no push),
collector (scale-out: consumes the events topic into ClickHouse), scheduler (hour close and push; no ingest, no
/v1 API), all (every part; the default). With kafka.brokers set (store.driver clickhouse), ingest produces to
Kafka, collectors of one consumer group store, and the schedulers elect one of them through a Kafka group. Every
role serves /metrics, /healthz and /readyz; /readyz checks the store (and Kafka when used), and for the scheduler
also that the push lease is held here or by another live scheduler.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			role, err := parseRole(roleName)
			if err != nil {
				return err
			}
			cfg, err := loadConfig(cmd, configPath, true)
			if err != nil {
				return err
			}
			if role == roleCollector && !scaledOut(cfg) {
				return usagef("--role collector: needs kafka.brokers (the scale-out deployment); without Kafka the api role stores ingest")
			}
			if validate {
				fmt.Fprintln(cmd.OutOrStdout(), "config ok")
				return nil
			}
			log, err := newLogger(cmd.ErrOrStderr(), logLevel)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, log, role, profile)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "config file (YAML); defaults apply when omitted")
	cmd.Flags().BoolVar(&validate, "validate", false, "check the config and exit: 0 when valid, 2 listing every problem")
	cmd.Flags().BoolVar(&profile, "pprof", false, "serve Go's profiles under /debug/pprof/ (behind the ingest tokens, like /v1): for benchmarks and incidents")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&roleName, "role", string(roleAll), "api (ingest and /v1 API), collector (Kafka to ClickHouse), scheduler (close and push) or all")
	return cmd
}

// serve runs until ctx is cancelled (SIGTERM/SIGINT), then shuts down without losing an acknowledged event: the
// HTTP server stops accepting, waits for in-flight requests (each waits for its commit), then the store closes.
// role selects the parts that run (serveRole).
func serve(ctx context.Context, cfg *config.Config, log *slog.Logger, role serveRole, profile bool) error {
	var tokens ingest.Tokens
	if cfg.Ingest.TokensFile != "" {
		var err error
		if tokens, err = ingest.LoadTokens(cfg.Ingest.TokensFile); err != nil {
			return usagef("ingest.tokens_file: %v", err)
		}
	}
	var tlsConfig *tls.Config // nil: plain HTTP
	if cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return usagef("tls: %v", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	store, err := openStore(ctx, cfg, storeOptions{Logger: log})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg)
	registerProcessMetrics(reg, cfg, role)

	validator := ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration)
	// Scale-out: ingest produces to Kafka, collectors store, one elected scheduler closes and pushes.
	var sink ingest.Sink = store
	var out *scaleOut
	var gate func() (context.Context, bool)
	ready := store.Ping
	if scaledOut(cfg) {
		if out, gate, err = startScaleOut(ctx, cfg, role, store, validator, reg, log); err != nil {
			return errors.Join(err, store.Close())
		}
		if out.producer != nil {
			sink = out.producer
		}
		ready = func(ctx context.Context) error {
			if err := store.Ping(ctx); err != nil {
				return err
			}
			return out.ping(ctx)
		}
	}
	// closeAll stops the Kafka side first (collectors write to the store), then the store.
	closeAll := func() error {
		var err error
		if out != nil {
			err = out.stop()
		}
		return errors.Join(err, store.Close())
	}

	api := http.NewServeMux()
	if role.serves() {
		handler, err := ingest.NewHandler(ingest.HandlerConfig{
			Validator: validator,
			Sink:      sink,
			Rejected:  store,
			MaxBody:   cfg.Ingest.MaxBody.Bytes,
			Metrics:   ingest.NewMetrics(reg),
			Logger:    log,
		})
		if err != nil {
			return errors.Join(err, closeAll())
		}
		handler.Register(api)
	}
	// Every role creates the config's instances at start (the closer needs them); only the API serves them.
	if _, err := startInstances(ctx, cfg, store, log, api); err != nil {
		return errors.Join(err, closeAll())
	}
	// The api role neither closes nor pushes: its pipeline only previews open hours for /v1/usage, needs no
	// KooGallery key, and its close and push metrics stay out of /metrics (a scheduler exports them).
	pipeCfg, pipeReg := cfg, prometheus.Registerer(reg)
	if !role.schedules() {
		noPush := *cfg
		noPush.KooGallery.Endpoint = ""
		pipeCfg, pipeReg = &noPush, prometheus.NewRegistry()
	}
	pipe, err := newPipeline(pipeCfg, store, log, pipeReg, holderName("serve"), nil)
	if err != nil {
		return errors.Join(err, closeAll())
	}
	if role.serves() {
		aggregate.NewUsageHandler(pipe.closer, log).Register(api)
		report.NewRecordsHandler(store, nil, log).Register(api)
		reconcile.NewHandler(store, cfg.Catalog(), nil).Register(api)
	}
	watch := &pushWatch{}
	var sched gocron.Scheduler
	stopMonitor := func() {}
	if role.schedules() {
		if pipe.keys != nil {
			stopHUP := reloadKeyOnSIGHUP(pipe.keys, log)
			defer stopHUP()
		}
		if sched, err = startCycle(ctx, pipe, log, watch.record, gate); err != nil {
			return errors.Join(err, closeAll())
		}
		stopMonitor = newStoreMonitor(reg, store, cfg.Catalog(), log, nil).start(ctx)
	}
	shutdownCycle := func() error {
		if sched == nil {
			return nil
		}
		err := sched.Shutdown() // waits for a close or push in progress: each commits whole or not at all anyway
		stopMonitor()
		if rerr := pipe.pusher.Release(context.Background()); rerr != nil {
			log.Warn("release the push lease", "err", rerr)
		}
		return err
	}

	mux := http.NewServeMux()
	if role.serves() {
		mux.Handle("/v1/", tokens.Wrap(api))
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if profile {
		// Profiles show code paths and timings, never data; they still sit behind the tokens like the API.
		prof := http.NewServeMux()
		prof.HandleFunc("/debug/pprof/", pprof.Index)
		prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
		prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.Handle("/debug/pprof/", tokens.Wrap(prof))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", readyHandler(role, ready, watch, func() bool {
		v, ok := gaugeValue(reg, "meterd_push_leader")
		return ok && v == 1
	}))

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
		return errors.Join(fmt.Errorf("listen %s: %w", cfg.Listen, err), closeAll())
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig) // HTTPS (HTTP/1.1); the timeouts above apply to the handshake too
	}
	log.Info("listening", append([]any{"addr", ln.Addr().String(), "auth", tokens.Enabled(), "role", role,
		"tls", tlsConfig != nil}, storeWhere(cfg)...)...)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return errors.Join(fmt.Errorf("http server: %w", err), shutdownCycle(), closeAll())
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight")
	shutCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	shutErr := srv.Shutdown(shutCtx)
	schedErr := shutdownCycle()
	closeErr := closeAll()
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
// onPush, when set, learns the outcome of every push run (readiness watches the lease through it).
func startCycle(ctx context.Context, p *pipeline, log *slog.Logger, onPush func(report.Summary, error),
	gate func() (context.Context, bool)) (gocron.Scheduler, error) {
	s, err := gocron.NewScheduler(gocron.WithLocation(time.UTC))
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	// elected runs fn only while this process leads the scheduler election (always without one), under a context
	// that ends when leadership does: a scheduler that lost the election stops at its next store call.
	elected := func(fn func(ctx context.Context)) bool {
		if gate == nil {
			fn(ctx)
			return true
		}
		term, ok := gate()
		if !ok {
			return false
		}
		runCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(term, cancel)()
		fn(runCtx)
		return true
	}
	closeTask := func() {
		elected(func(ctx context.Context) {
			if done, err := p.closer.CloseDue(ctx); err != nil {
				log.Error("close hours", "err", err, "closed", len(done))
			}
		})
	}
	pushTask := func() {
		ran := elected(func(ctx context.Context) { pushOnce(ctx, p, log, onPush) })
		if !ran && onPush != nil {
			onPush(report.Summary{}, nil) // standing by: another scheduler leads
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

// pushOnce runs the push once and reports the outcome to onPush.
func pushOnce(ctx context.Context, p *pipeline, log *slog.Logger, onPush func(report.Summary, error)) {
	sum, err := p.pusher.RunOnce(ctx, report.RunOptions{})
	if err != nil && ctx.Err() == nil {
		log.Error("push", "err", err)
	}
	if onPush != nil {
		onPush(sum, err)
	}
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
