package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/koogallery"
)

// pipeline is the hourly cycle wired on one store: the closer and the pusher with its KooGallery client.
type pipeline struct {
	closer *aggregate.Closer
	pusher *report.Pusher
	keys   *koogallery.KeySource // nil when pushing is disabled (no endpoint)
}

// newPipeline wires the close and the push from the config. reg may be a throwaway registry for one-shot commands;
// now is the clock of every part (nil: time.Now; the demo replays hours on a simulated one).
func newPipeline(cfg *config.Config, store backend, log *slog.Logger, reg prometheus.Registerer, holder string, now func() time.Time) (*pipeline, error) {
	if now == nil {
		now = time.Now
	}
	closer, err := aggregate.NewCloser(aggregate.CloserConfig{Store: store, Instances: store, Meters: cfg.MeterSet(),
		Catalog: cfg.Catalog(), Watermark: watermarkFor(cfg), LatePolicy: aggregate.LatePolicy(cfg.Schedule.LatePolicy),
		CloseDelay: cfg.Schedule.CloseDelay.Duration, ForceAfter: cfg.Schedule.ForceAfter(), Logger: log,
		Metrics: aggregate.NewMetrics(reg), Now: now})
	if err != nil {
		return nil, err
	}
	p := &pipeline{closer: closer}
	var client report.Client
	if cfg.KooGallery.Endpoint != "" {
		p.keys = koogallery.NewKeySource(cfg.KooGallery.KeyFile, os.Getenv)
		if _, err := p.keys.Key(); err != nil {
			return nil, usagef("koogallery.key_file (or METERD_KOOGALLERY_KEY): %v", err)
		}
		c, err := koogallery.NewClient(koogallery.Config{Endpoint: cfg.KooGallery.Endpoint, Key: p.keys.Key,
			Timeout: cfg.KooGallery.Timeout.Duration, Metrics: koogallery.NewMetrics(reg), Now: now})
		if err != nil {
			return nil, usagef("koogallery: %v", err)
		}
		client = c
	}
	builder := report.NewBuilder(report.BuildConfig{Ledger: store, Instances: store, Catalog: cfg.Catalog(),
		CloseDelay: cfg.Schedule.CloseDelay.Duration, Deadline: cfg.Schedule.Deadline.Duration,
		ValueAs: koogallery.ValueAs(cfg.KooGallery.UsageValueAs)})
	p.pusher, err = report.NewPusher(report.PusherConfig{Ledger: store, Builder: builder, Instances: store, Client: client,
		Holder: holder, BatchSize: cfg.KooGallery.BatchSize, RetryInitial: cfg.Push.RetryInitial.Duration,
		RetryMax: cfg.Push.RetryMax.Duration, Logger: log, Metrics: report.NewMetrics(reg), Now: now})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// holderName names this process in the push lease: host and pid for people, a random suffix so that two
// processes never share a name.
func holderName(role string) string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s/%s/%d/%s", role, host, os.Getpid(), hex.EncodeToString(b[:]))
}
