package stream

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// MinRetention is the shortest topic retention allowed: an acknowledged event must stay readable for the whole
// dedup horizon (at least 21 days, DESIGN.md §4 step 1), so that a store rebuilt from Kafka, or a collector back
// from a long outage, still finds it.
const MinRetention = 21 * 24 * time.Hour

// Config is the Kafka side of scale-out ingest. The keys are those of the config file's kafka section, and errors
// name them so.
type Config struct {
	Brokers  []string // bootstrap addresses, host:port
	Topic    string   // the events topic
	DLQTopic string   // the dead-letter topic
	GroupID  string   // the collectors' consumer group
	// Partitions and ReplicationFactor are used when EnsureTopics creates a topic; ReplicationFactor 0 takes the
	// broker's default.replication.factor.
	Partitions        int
	ReplicationFactor int
	Retention         time.Duration // retention.ms of both topics, at least MinRetention
	BatchSize         int           // most messages a collector stores in one Sink write
	BatchBytes        int           // most message value bytes in one Sink write: bounds memory for large events
	BatchWait         time.Duration // longest a collector holds a partial batch before storing it
	// Security is the TLS and SASL of every connection to the brokers; the zero value is plaintext.
	Security Security
}

// Limits of the batch settings: a batch is held in memory whole, and an unstored batch delays every event in it.
const (
	MaxBatchSize  = 1_000_000
	MinBatchBytes = 64 << 10
	MaxBatchBytes = 256 << 20
	MaxBatchWait  = time.Minute
)

// DefaultConfig returns the defaults, the same as the config file's (config.Default): keep both in step.
func DefaultConfig() Config {
	return Config{
		Topic:      "usage-events",
		DLQTopic:   "usage-events-dlq",
		GroupID:    "meterd-collectors",
		Partitions: 6,
		// 30 days: the 21-day dedup horizon plus room for a store rebuilt from Kafka after a week-long incident.
		Retention: 30 * 24 * time.Hour,
		// ClickHouse wants few large inserts: every insert is a new part that the server merges again in the
		// background, and every batch pays the dedup pre-check once. 50,000 events of about 250 bytes stored
		// 92k events/s against 63k at 10,000 in one run (docs/performance.md), within the 300 MB RSS target; the
		// byte bound keeps large events from multiplying that memory.
		BatchSize:  50000,
		BatchBytes: 16 << 20,
		BatchWait:  time.Second,
	}
}

// Validate reports every problem at once, each prefixed with its key path (kafka.<key>).
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("kafka.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if len(c.Brokers) == 0 {
		add("brokers", "at least one broker (host:port) is required")
	}
	for i, b := range c.Brokers {
		if err := checkBroker(b); err != nil {
			add(fmt.Sprintf("brokers[%d]", i), "%v", err)
		}
	}
	if err := CheckTopicName(c.Topic); err != nil {
		add("topic", "%v", err)
	}
	if err := CheckTopicName(c.DLQTopic); err != nil {
		add("dlq_topic", "%v", err)
	} else if c.DLQTopic == c.Topic {
		add("dlq_topic", "%q is also kafka.topic: dead letters would be consumed as events", c.DLQTopic)
	}
	if strings.TrimSpace(c.GroupID) == "" {
		add("group_id", "required")
	}
	if c.Partitions < 1 || c.Partitions > 10000 {
		add("partitions", "%d must be from 1 to 10000", c.Partitions)
	}
	if c.ReplicationFactor < 0 || c.ReplicationFactor > 32 {
		add("replication_factor", "%d must be from 0 (the broker's default) to 32", c.ReplicationFactor)
	}
	if c.Retention < MinRetention {
		add("retention", "%s must be at least %s (21 days): events must stay readable for the whole dedup horizon", c.Retention, MinRetention)
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		add("batch_size", "%d must be from 1 to %d", c.BatchSize, MaxBatchSize)
	}
	if c.BatchBytes < MinBatchBytes || c.BatchBytes > MaxBatchBytes {
		add("batch_bytes", "%d must be from %d (64KiB) to %d (256MiB)", c.BatchBytes, MinBatchBytes, MaxBatchBytes)
	}
	if c.BatchWait < time.Millisecond || c.BatchWait > MaxBatchWait {
		add("batch_wait", "%s must be from 1ms to %s", c.BatchWait, MaxBatchWait)
	}
	errs = append(errs, c.Security.validate(c.Brokers)...)
	return errors.Join(errs...)
}

// checkBroker checks one bootstrap address.
func checkBroker(b string) error {
	host, port, err := net.SplitHostPort(b)
	if err != nil || host == "" {
		return fmt.Errorf("%q must be host:port", b)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be a number from 1 to 65535", b)
	}
	return nil
}

// CheckTopicName applies Kafka's rules for topic names: 1 to 249 characters from [a-zA-Z0-9._-], not "." or "..".
func CheckTopicName(t string) error {
	switch {
	case t == "":
		return errors.New("required")
	case t == "." || t == "..":
		return fmt.Errorf("%q is not a valid topic name", t)
	case len(t) > 249:
		return fmt.Errorf("%d characters, at most 249 allowed", len(t))
	}
	for _, r := range t {
		if !(r == '.' || r == '_' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return fmt.Errorf("%q: a topic name may only contain letters, digits, '.', '_' and '-'", t)
		}
	}
	return nil
}
