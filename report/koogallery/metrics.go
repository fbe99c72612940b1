package koogallery

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of meterd_push_requests_total besides the known codes.
const (
	codeLabelTransport = "transport" // no answer: network error, timeout, lost answer
	codeLabelNone      = "none"      // an answer without a code (a gateway's error page)
	codeLabelOther     = "other"     // a code not in the spec's table
)

// knownCodes are the call-level codes of spec/koogallery.md §1; only these become label values, so the series
// stay bounded whatever an answer contains.
var knownCodes = []string{"0000", "0100", "0101", "0102", "0150", "0151", "0154", "0199", "0250", "0999",
	"9001", "9002", "9003", "9004"}

// knownRecordCodes are the record-level codes of abnormal_usage_data (spec §1).
var knownRecordCodes = []string{"001", "002", "003", "004", "005", "006", "007", "009", "010", "011", "012", "013"}

// Metrics of the KooGallery client. Every label value is from a closed set, created up front so that zero series
// exist. A nil *Metrics records nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	abnormal *prometheus.CounterVec
	duration prometheus.Histogram
	skew     prometheus.Gauge
}

// NewMetrics registers the client metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_push_requests_total",
			Help: "Usage push calls to KooGallery by answer code: a known code, other (unknown code), none (answer without a code) or transport (no answer).",
		}, []string{"code"}),
		abnormal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_push_abnormal_records_total",
			Help: "Records listed in abnormal_usage_data of KooGallery answers, by record-level code (other: a code not in the spec).",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_push_request_duration_seconds",
			Help:    "Time from sending a usage push call to having its answer, or its transport error.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		skew: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_push_clock_skew_seconds",
			Help: "KooGallery's clock (Date header of the last answer) minus the local clock; ts is refused when this is large. Resolution one second.",
		}),
	}
	for _, c := range knownCodes {
		m.requests.WithLabelValues(c)
	}
	for _, c := range []string{codeLabelTransport, codeLabelNone, codeLabelOther} {
		m.requests.WithLabelValues(c)
	}
	for _, c := range knownRecordCodes {
		m.abnormal.WithLabelValues(c)
	}
	m.abnormal.WithLabelValues(codeLabelOther)
	reg.MustRegister(m.requests, m.abnormal, m.duration, m.skew)
	return m
}

// RequestsCounter returns the counter of an answer code ("0000", ...; "transport", "none", "other"), for tests.
func (m *Metrics) RequestsCounter(code string) prometheus.Counter {
	return m.requests.WithLabelValues(code)
}

// AbnormalCounter returns the counter of a record-level code ("005", ...; "other"), for tests.
func (m *Metrics) AbnormalCounter(code string) prometheus.Counter {
	return m.abnormal.WithLabelValues(code)
}

// ClockSkew returns the clock skew gauge, for tests.
func (m *Metrics) ClockSkew() prometheus.Gauge { return m.skew }

func (m *Metrics) observe(r Response) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(bounded(r.Code, knownCodes, codeLabelNone)).Inc()
	for _, a := range r.Abnormal {
		m.abnormal.WithLabelValues(bounded(a.Code, knownRecordCodes, codeLabelOther)).Inc()
	}
	m.duration.Observe(r.Latency.Seconds())
	if !r.ServerTime.IsZero() {
		m.skew.Set(r.ClockSkew.Seconds())
	}
}

func (m *Metrics) observeTransport(d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(codeLabelTransport).Inc()
	m.duration.Observe(d.Seconds())
}

// bounded maps code to itself when known, to empty when "", else to codeLabelOther.
func bounded(code string, known []string, empty string) string {
	if code == "" {
		return empty
	}
	for _, k := range known {
		if k == code {
			return code
		}
	}
	return codeLabelOther
}
