package ingest

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the ingest path. Every label value is from a closed set, created up front so that zero series exist.
type Metrics struct {
	events   *prometheus.CounterVec
	rejected *prometheus.CounterVec
	requests *prometheus.CounterVec
	duration prometheus.Histogram
}

// Event outcomes as labelled in meterd_ingest_events_total.
const (
	outcomeAccepted  = "accepted"
	outcomeDuplicate = "duplicate"
	outcomeRejected  = "rejected"
)

// NewMetrics registers the ingest metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_ingest_events_total",
			Help: "Events received by outcome: accepted (stored, first copy), duplicate (already stored), rejected (invalid or conflicting).",
		}, []string{"outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_ingest_rejected_total",
			Help: "Events refused at ingest and dead-lettered, by reason code (conflict = same source and id with different content).",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_ingest_requests_total",
			Help: "POST /v1/events requests by HTTP status code.",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_ingest_request_duration_seconds",
			Help:    "Time from receiving a POST /v1/events request to answering it, the batch durable.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	for _, o := range []string{outcomeAccepted, outcomeDuplicate, outcomeRejected} {
		m.events.WithLabelValues(o)
	}
	for _, c := range Codes {
		m.rejected.WithLabelValues(string(c))
	}
	for _, code := range []int{200, 400, 401, 405, 413, 415, 503} {
		m.requests.WithLabelValues(strconv.Itoa(code))
	}
	reg.MustRegister(m.events, m.rejected, m.requests, m.duration)
	return m
}

// EventsCounter returns the counter of an event outcome (accepted, duplicate, rejected), for tests and checks.
func (m *Metrics) EventsCounter(outcome string) prometheus.Counter {
	return m.events.WithLabelValues(outcome)
}

// RejectedCounter returns the counter of a rejection code.
func (m *Metrics) RejectedCounter(c Code) prometheus.Counter {
	return m.rejected.WithLabelValues(string(c))
}

// RequestsCounter returns the counter of an HTTP status.
func (m *Metrics) RequestsCounter(status int) prometheus.Counter {
	return m.requests.WithLabelValues(strconv.Itoa(status))
}
