package aggregate

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the hour close. A nil *Metrics records nothing (tools that close hours without a registry).
type Metrics struct {
	closed          *prometheus.CounterVec
	lastClosed      prometheus.Gauge
	late            *prometheus.CounterVec
	unmatchedFound  prometheus.Counter
	unmatchedResult *prometheus.CounterVec
	writeOffs       *prometheus.CounterVec
}

// NewMetrics registers the aggregation metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_aggregate_hours_closed_total",
			Help: "Hours closed; forced=true when closed at the deadline budget with the watermark behind.",
		}, []string{"forced"}),
		lastClosed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_aggregate_last_closed_hour_timestamp_seconds",
			Help: "Start of the most recently closed hour, Unix seconds.",
		}),
		late: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_aggregate_late_usage_total",
			Help: "Late usage groups (meter, subject, origin hour) found at close, by action: CARRIED, DROPPED, UNMATCHED.",
		}, []string{"action"}),
		unmatchedFound: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_aggregate_unmatched_found_total",
			Help: "Unmatched usage records created (usage of a subject and meter no instance covered).",
		}),
		unmatchedResult: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_aggregate_unmatched_resolved_total",
			Help: "Held unmatched usage records resolved, by state: ATTACHED, SPLIT, WRITTEN_OFF.",
		}, []string{"state"}),
		writeOffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_aggregate_write_offs_total",
			Help: "Usage written off by kind: RELEASE_REMAINDER, LATE_DROPPED, LATE_AFTER_RELEASE.",
		}, []string{"kind"}),
	}
	for _, f := range []string{"true", "false"} {
		m.closed.WithLabelValues(f)
	}
	for _, a := range []LateAction{LateCarried, LateDropped, LateUnmatched} {
		m.late.WithLabelValues(string(a))
	}
	for _, s := range []UnmatchedState{UnmatchedAttached, UnmatchedSplit, UnmatchedWrittenOff} {
		m.unmatchedResult.WithLabelValues(string(s))
	}
	for _, k := range []WriteOffKind{WriteOffReleaseRemainder, WriteOffLateDropped, WriteOffLateNoOpenHour} {
		m.writeOffs.WithLabelValues(string(k))
	}
	reg.MustRegister(m.closed, m.lastClosed, m.late, m.unmatchedFound, m.unmatchedResult, m.writeOffs)
	return m
}

func (m *Metrics) observe(ch *ClosedHour) {
	if m == nil {
		return
	}
	forced := "false"
	if ch.Forced {
		forced = "true"
	}
	m.closed.WithLabelValues(forced).Inc()
	m.lastClosed.Set(float64(ch.Hour.Unix()))
	for _, l := range ch.Late {
		m.late.WithLabelValues(string(l.Action)).Inc()
	}
	for _, u := range ch.Unmatched {
		if u.ID == 0 {
			m.unmatchedFound.Inc()
		} else {
			m.unmatchedResult.WithLabelValues(string(u.State)).Inc()
		}
	}
	for _, w := range ch.WriteOffs {
		m.writeOffs.WithLabelValues(string(w.Kind)).Inc()
	}
}

// ClosedCounter returns the counter of closed hours, forced or not (tests and checks).
func (m *Metrics) ClosedCounter(forced bool) prometheus.Counter {
	if forced {
		return m.closed.WithLabelValues("true")
	}
	return m.closed.WithLabelValues("false")
}

// LateCounter returns the counter of late usage groups by action.
func (m *Metrics) LateCounter(a LateAction) prometheus.Counter {
	return m.late.WithLabelValues(string(a))
}
