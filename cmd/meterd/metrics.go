package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/reconcile"
)

// The metrics of a serve process that no package can know by itself: its role, the schedule it follows (so that
// alert rules compare timestamps with the configured deadline instead of hard-coding 15m), the disk under the
// store, and what a periodic look at the store finds: the newest closed hour (which, unlike the closer's own
// gauge, survives a restart), records waiting for an instance's unfreeze, and the reconciliation invariant over
// the last closed hours. Every label value is from a closed set; none names an instance. docs/metrics.md is the
// catalog.

// registerProcessMetrics registers what every role exports: the role and the schedule (constant) and the disk
// under the store (read at each scrape).
func registerProcessMetrics(reg prometheus.Registerer, cfg *config.Config, role serveRole) {
	roleInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meterd_role_info",
		Help: "1 for the role this process runs (serve --role): api, collector, scheduler or all; 0 for the others.",
	}, []string{"role"})
	for _, r := range roles {
		v := 0.0
		if r == role {
			v = 1
		}
		roleInfo.WithLabelValues(string(r)).Set(v)
	}
	constant := func(name, help string, d time.Duration) prometheus.Collector {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		g.Set(d.Seconds())
		return g
	}
	reg.MustRegister(roleInfo,
		constant("meterd_schedule_close_delay_seconds",
			"schedule.close_delay: hour H closes at H+1h+close_delay (watermark permitting).", cfg.Schedule.CloseDelay.Duration),
		constant("meterd_schedule_deadline_seconds",
			"schedule.deadline: the SDRs of hour H are due by H+1h+deadline.", cfg.Schedule.Deadline.Duration),
		constant("meterd_schedule_force_close_after_seconds",
			"schedule.deadline minus schedule.push_budget: hour H is closed by force at H+1h+this, watermark or not.", cfg.Schedule.ForceAfter()))
	// ClickHouse's disk is the database server's; it exports its own metrics.
	if cfg.Store.Driver != "clickhouse" {
		reg.MustRegister(newDiskCollector(cfg.Store.SQLite.Path))
	}
}

// diskCollector reads the file system under the store at each scrape: a full disk stops every commit, so ingest
// answers 503 and closes fail.
type diskCollector struct {
	path             string
	free, size, file *prometheus.Desc
}

func newDiskCollector(storePath string) *diskCollector {
	return &diskCollector{path: storePath,
		free: prometheus.NewDesc("meterd_store_disk_free_bytes",
			"Bytes available to meterd on the file system holding the SQLite store.", nil, nil),
		size: prometheus.NewDesc("meterd_store_disk_size_bytes",
			"Size of the file system holding the SQLite store.", nil, nil),
		file: prometheus.NewDesc("meterd_store_file_size_bytes",
			"Size of the SQLite store: the database file, its write-ahead log and shared-memory index.", nil, nil),
	}
}

func (c *diskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.free
	ch <- c.size
	ch <- c.file
}

// Collect leaves out what it cannot read (the directory may not exist yet) instead of failing the whole scrape.
func (c *diskCollector) Collect(ch chan<- prometheus.Metric) {
	if free, size, err := diskSpace(filepath.Dir(c.path)); err == nil {
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(free))
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(size))
	}
	var total int64
	found := false
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if fi, err := os.Stat(c.path + suffix); err == nil {
			total += fi.Size()
			found = true
		}
	}
	if found {
		ch <- prometheus.MustNewConstMetric(c.file, prometheus.GaugeValue, float64(total))
	}
}

// monitorStore is what the store monitor reads: the reconciliation's source (instances, closed rows, ledger) and
// the newest close.
type monitorStore interface {
	reconcile.Source
	LastClose(ctx context.Context) (aggregate.CloseMark, bool, error)
}

// How often the store monitor looks, and over which window it checks the invariant.
const (
	monitorInterval     = 30 * time.Second
	invariantInterval   = 15 * time.Minute
	invariantFirstCheck = 2 * time.Minute // after start: the catch-up closes and builds first
	invariantWindow     = 6 * time.Hour   // closed hours checked, the newest one left out (its SDRs may be building)
	monitorQueryTimeout = 20 * time.Second
)

// invariant check results as labelled in meterd_reconcile_checks_total.
const (
	checkHolds    = "holds"
	checkViolated = "violated"
	checkError    = "error"
)

// storeMonitor looks at the store periodically for the scheduler roles. Its gauges keep the last value read;
// meterd_reconcile_checks_total{result="error"} and the log tell when reading fails.
type storeMonitor struct {
	store   monitorStore
	catalog *pricing.Catalog
	now     func() time.Time
	log     *slog.Logger

	lastClosed   prometheus.Gauge
	frozen       prometheus.Gauge
	frozenPast   prometheus.Gauge
	frozenExpiry prometheus.Gauge
	violations   prometheus.Gauge
	lastCheck    prometheus.Gauge
	checks       *prometheus.CounterVec
}

func newStoreMonitor(reg prometheus.Registerer, store monitorStore, catalog *pricing.Catalog, log *slog.Logger, now func() time.Time) *storeMonitor {
	if now == nil {
		now = time.Now
	}
	m := &storeMonitor{store: store, catalog: catalog, now: now, log: log,
		lastClosed: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_store_last_closed_hour_timestamp_seconds",
			Help: "Start of the newest closed hour as recorded in the store (Unix seconds; 0 before the first close). Unlike meterd_aggregate_last_closed_hour_timestamp_seconds it survives a restart."}),
		frozen: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_frozen_sdrs",
			Help: "SDRs not yet accepted (PENDING, SENT) of instances frozen now: they wait for the unfreeze (KooGallery answers 013)."}),
		frozenPast: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_frozen_sdrs_past_deadline",
			Help: "The part of meterd_push_frozen_sdrs past its due time; not counted in meterd_push_sdrs_past_deadline."}),
		frozenExpiry: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_frozen_oldest_expiry_timestamp_seconds",
			Help: "When the oldest SDR waiting for an unfreeze becomes too old for KooGallery: its begin_time + 21 days (Unix seconds; 0 when none)."}),
		violations: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_reconcile_invariant_violations",
			Help: "Violations of the reconciliation invariant found by the last check of the last closed hours (0: it holds)."}),
		lastCheck: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_reconcile_last_check_timestamp_seconds",
			Help: "When the invariant was last checked successfully (Unix seconds; 0 before the first check)."}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterd_reconcile_checks_total",
			Help: "Periodic invariant checks by result: holds, violated, error (the report could not be built)."}, []string{"result"}),
	}
	for _, r := range []string{checkHolds, checkViolated, checkError} {
		m.checks.WithLabelValues(r)
	}
	reg.MustRegister(m.lastClosed, m.frozen, m.frozenPast, m.frozenExpiry, m.violations, m.lastCheck, m.checks)
	return m
}

// observe reads the newest close and the records waiting for an unfreeze.
func (m *storeMonitor) observe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, monitorQueryTimeout)
	defer cancel()
	now := m.now().UTC()
	mark, ok, err := m.store.LastClose(ctx)
	if err != nil {
		return err
	}
	if ok {
		m.lastClosed.Set(float64(mark.Hour.Unix()))
	}
	frozen, err := report.FrozenInstances(ctx, m.store, now)
	if err != nil {
		return err
	}
	var waiting, past int
	var oldest time.Time
	for _, in := range frozen {
		for _, st := range []report.State{report.Pending, report.Sent} {
			sdrs, err := m.store.ListSDRs(ctx, report.SDRFilter{State: st, InstanceID: in.ID, To: now.Add(time.Hour)})
			if err != nil {
				return err
			}
			for _, s := range sdrs {
				waiting++
				if now.After(s.Due) {
					past++
				}
				if oldest.IsZero() || s.Begin.Before(oldest) {
					oldest = s.Begin
				}
			}
		}
	}
	m.frozen.Set(float64(waiting))
	m.frozenPast.Set(float64(past))
	if oldest.IsZero() {
		m.frozenExpiry.Set(0)
	} else {
		m.frozenExpiry.Set(float64(oldest.Add(report.KooGalleryMaxAge).Unix()))
	}
	return nil
}

// checkInvariant runs the reconciliation over the last closed hours, the newest one left out, and exports how
// many violations it found. The report is streamed and discarded: only its invariant is kept.
func (m *storeMonitor) checkInvariant(ctx context.Context) error {
	mark, ok, err := m.store.LastClose(ctx)
	if err != nil {
		m.checks.WithLabelValues(checkError).Inc()
		return err
	}
	if !ok {
		return nil // nothing closed yet: nothing to check
	}
	to := mark.Hour
	now := m.now().UTC()
	r, err := reconcile.Export(ctx, m.store, m.catalog, reconcile.Options{From: to.Add(-invariantWindow), To: to, Now: now},
		reconcile.FormatCSV, io.Discard)
	if err != nil {
		m.checks.WithLabelValues(checkError).Inc()
		return err
	}
	m.violations.Set(float64(len(r.Invariant.Violations)))
	m.lastCheck.Set(float64(now.Unix()))
	if r.Invariant.Holds {
		m.checks.WithLabelValues(checkHolds).Inc()
		return nil
	}
	m.checks.WithLabelValues(checkViolated).Inc()
	for _, v := range r.Invariant.Violations {
		m.log.Error("reconciliation invariant violated", "violation", v)
	}
	return nil
}

// start runs the monitor until ctx ends or stop is called; stop waits for a look in progress, so the store can be
// closed after it.
func (m *storeMonitor) start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		look := time.NewTicker(monitorInterval)
		defer look.Stop()
		check := time.NewTimer(invariantFirstCheck)
		defer check.Stop()
		m.observeLogged(ctx)
		for {
			select {
			case <-ctx.Done():
				return
			case <-look.C:
				m.observeLogged(ctx)
			case <-check.C:
				if err := m.checkInvariant(ctx); err != nil && ctx.Err() == nil {
					m.log.Warn("check the reconciliation invariant", "err", err)
				}
				check.Reset(invariantInterval)
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

func (m *storeMonitor) observeLogged(ctx context.Context) {
	if err := m.observe(ctx); err != nil && !errors.Is(err, context.Canceled) {
		m.log.Warn("read the store for metrics", "err", err)
	}
}
