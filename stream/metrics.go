package stream

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/ingest"
)

// Metrics of the collectors. Label values come from closed sets (outcomes, reason codes, operations) or are
// partition numbers, bounded by the topic's partition count; instance ids never appear. The collectors of one
// process share one Metrics: their partitions are disjoint.
type Metrics struct {
	consumed      prometheus.Counter
	events        *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	batchSize     prometheus.Histogram
	insertSeconds prometheus.Histogram
	insertErrors  prometheus.Counter
	kafkaErrors   *prometheus.CounterVec
	lag           *prometheus.GaugeVec
	committedTime *prometheus.GaugeVec
	lastCommit    prometheus.Gauge
}

// Event outcomes as labelled in meterd_collector_events_total.
const (
	outcomeStored    = "stored"
	outcomeDuplicate = "duplicate"
	outcomeConflict  = "conflict"
)

// Kafka operations as labelled in meterd_collector_kafka_errors_total.
const (
	opFetch      = "fetch"
	opCommit     = "commit"
	opDeadLetter = "dead_letter"
)

// NewMetrics registers the collector metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_collector_messages_consumed_total",
			Help: "Messages fetched from the events topic, valid or not, redeliveries included.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_collector_events_total",
			Help: "Valid events written to the store by outcome: stored (first copy), duplicate (already stored), conflict (same source and id, other content; dead-lettered).",
		}, []string{"outcome"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_collector_dead_letters_total",
			Help: "Messages dead-lettered by the collectors, by reason code (conflict included).",
		}, []string{"reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_collector_batch_size_messages",
			Help:    "Messages per batch written to the store.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10), // 1 to 262144
		}),
		insertSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meterd_collector_insert_duration_seconds",
			Help:    "Time of one successful batch write to the store.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		insertErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meterd_collector_insert_errors_total",
			Help: "Failed batch writes to the store; the batch is retried with backoff and nothing more is fetched meanwhile.",
		}),
		kafkaErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meterd_collector_kafka_errors_total",
			Help: "Failed Kafka operations of the collectors by operation: fetch, commit (the batch is redelivered later), dead_letter (produce to the dead-letter topic, retried).",
		}, []string{"op"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meterd_collector_lag_messages",
			Help: "Messages of a partition not yet stored and committed, as of the last batch of that partition.",
		}, []string{"partition"}),
		committedTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meterd_collector_committed_message_timestamp_seconds",
			Help: "Producer timestamp of the newest committed message of a partition (when the API received the event, or when a raw send produced it; kafka-go returns this, not the topic's LogAppendTime): how far the partition is stored.",
		}, []string{"partition"}),
		lastCommit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meterd_collector_last_commit_timestamp_seconds",
			Help: "Wall-clock time of the last successful offset commit.",
		}),
	}
	for _, o := range []string{outcomeStored, outcomeDuplicate, outcomeConflict} {
		m.events.WithLabelValues(o)
	}
	for _, c := range ingest.Codes {
		m.deadLetters.WithLabelValues(string(c))
	}
	for _, op := range []string{opFetch, opCommit, opDeadLetter} {
		m.kafkaErrors.WithLabelValues(op)
	}
	reg.MustRegister(m.consumed, m.events, m.deadLetters, m.batchSize, m.insertSeconds, m.insertErrors,
		m.kafkaErrors, m.lag, m.committedTime, m.lastCommit)
	return m
}

// ConsumedCounter returns the counter of messages consumed, for tests and checks.
func (m *Metrics) ConsumedCounter() prometheus.Counter { return m.consumed }

// EventsCounter returns the counter of a store outcome (Stored, Duplicate, Conflict).
func (m *Metrics) EventsCounter(o ingest.Outcome) prometheus.Counter {
	return m.events.WithLabelValues(outcomeLabel(o))
}

// DeadLettersCounter returns the counter of a dead-letter reason code.
func (m *Metrics) DeadLettersCounter(c ingest.Code) prometheus.Counter {
	return m.deadLetters.WithLabelValues(string(c))
}

// InsertErrorsCounter returns the counter of failed batch writes.
func (m *Metrics) InsertErrorsCounter() prometheus.Counter { return m.insertErrors }

// LagGauge returns the lag gauge of a partition.
func (m *Metrics) LagGauge(partition int) prometheus.Gauge {
	return m.lag.WithLabelValues(strconv.Itoa(partition))
}

func outcomeLabel(o ingest.Outcome) string {
	switch o {
	case ingest.Stored:
		return outcomeStored
	case ingest.Duplicate:
		return outcomeDuplicate
	default:
		return outcomeConflict
	}
}
