package report

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/report/koogallery"
)

// Metrics of the push. Labels come from closed sets (states, classes); never an instance id. A nil *Metrics
// records nothing.
type Metrics struct {
	sdrs         *prometheus.GaugeVec
	oldestDue    prometheus.Gauge
	pastDeadline prometheus.Gauge
	attempts     *prometheus.CounterVec
	builtTotal   prometheus.Counter
	collisions   prometheus.Counter
	haltedG      prometheus.Gauge
	pausedG      prometheus.Gauge
	enabled      prometheus.Gauge
	leaderG      prometheus.Gauge
	epoch        prometheus.Gauge
}

var classes = []koogallery.Class{koogallery.ClassAccepted, koogallery.ClassRetry, koogallery.ClassHalve,
	koogallery.ClassIsolate, koogallery.ClassExpired, koogallery.ClassHalt, koogallery.ClassUnknown}

// NewMetrics registers the push metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sdrs: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meterd_push_sdrs",
			Help: "SDRs in the ledger by state."}, []string{"state"}),
		oldestDue: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_oldest_unaccepted_due_timestamp_seconds",
			Help: "Due time (H+1h+deadline, Unix seconds) of the oldest SDR not yet accepted or final, instances frozen now left out; 0 when none. Alert when time() approaches or passes it."}),
		pastDeadline: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_sdrs_past_deadline",
			Help: "SDRs not yet accepted or final whose due time has passed, instances frozen now left out (see meterd_push_frozen_sdrs_past_deadline)."}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meterd_push_attempts_total",
			Help: "Push calls by outcome class: accepted, retry, halve, isolate, expired, halt, unknown."}, []string{"class"}),
		builtTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterd_push_sdrs_built_total",
			Help: "SDRs built from closed instance-hours."}),
		collisions: prometheus.NewCounter(prometheus.CounterOpts{Name: "meterd_push_collisions_total",
			Help: "005/010 answers no attempt of ours explains (a second deployment or a restored store): page."}),
		haltedG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_halted",
			Help: "1 while pushing is stopped after an auth or signature failure (0102, 0150, 0151, 0154)."}),
		pausedG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_paused",
			Help: "1 while pushing is paused globally (meterd push pause)."}),
		enabled: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_enabled",
			Help: "1 when a KooGallery endpoint is configured; 0 means SDRs are built and stay PENDING."}),
		leaderG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_leader",
			Help: "1 when this process holds the push lease (the one active scheduler)."}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meterd_push_lease_epoch",
			Help: "Epoch of the push lease as last seen."}),
	}
	for _, s := range States {
		m.sdrs.WithLabelValues(string(s))
	}
	for _, c := range classes {
		m.attempts.WithLabelValues(c.String())
	}
	reg.MustRegister(m.sdrs, m.oldestDue, m.pastDeadline, m.attempts, m.builtTotal, m.collisions, m.haltedG, m.pausedG,
		m.enabled, m.leaderG, m.epoch)
	return m
}

func (m *Metrics) leader(ok bool, epoch int64) {
	if m == nil {
		return
	}
	m.leaderG.Set(b2f(ok))
	m.epoch.Set(float64(epoch))
}

func (m *Metrics) built(n int) {
	if m != nil {
		m.builtTotal.Add(float64(n))
	}
}

func (m *Metrics) attempt(c koogallery.Class) {
	if m != nil {
		m.attempts.WithLabelValues(c.String()).Inc()
	}
}

func (m *Metrics) collision() {
	if m != nil {
		m.collisions.Inc()
	}
}

func (m *Metrics) halted(h bool) {
	if m != nil {
		m.haltedG.Set(b2f(h))
	}
}

func (m *Metrics) paused(p bool) {
	if m != nil {
		m.pausedG.Set(b2f(p))
	}
}

// ledger sets the ledger gauges; nil counts (they could not be read) leave meterd_push_sdrs as it was.
func (m *Metrics) ledger(counts map[State]int, due time.Time, pastDue int, enabled, halted bool) {
	if counts != nil {
		for _, s := range States {
			m.sdrs.WithLabelValues(string(s)).Set(float64(counts[s]))
		}
	}
	if due.IsZero() {
		m.oldestDue.Set(0)
	} else {
		m.oldestDue.Set(float64(due.Unix()))
	}
	m.pastDeadline.Set(float64(pastDue))
	m.enabled.Set(b2f(enabled))
	m.haltedG.Set(b2f(halted))
}

// AttemptsCounter returns the counter of a class (tests and checks).
func (m *Metrics) AttemptsCounter(c koogallery.Class) prometheus.Counter {
	return m.attempts.WithLabelValues(c.String())
}

// CollisionsCounter returns the collisions counter.
func (m *Metrics) CollisionsCounter() prometheus.Counter { return m.collisions }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
