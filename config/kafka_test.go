package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKafkaDefaults pins the kafka section's defaults (stream.DefaultConfig has the same; the stream package's
// tests compare them).
func TestKafkaDefaults(t *testing.T) {
	k := Default().Kafka
	if k.Partitions != 6 || k.ReplicationFactor != 0 || k.Retention.Duration != 30*24*time.Hour ||
		k.BatchSize != 50000 || k.BatchBytes.Bytes != 16<<20 || k.BatchWait.Duration != time.Second {
		t.Errorf("kafka defaults = %+v", k)
	}
	if errs := k.validate("kafka"); len(errs) != 0 {
		t.Errorf("default kafka section invalid: %v", errs)
	}
}

// TestKafkaBad lists every problem of a kafka section with its key path, and that Kafka ingest needs the
// ClickHouse store.
func TestKafkaBad(t *testing.T) {
	_, _, err := Load(filepath.Join("testdata", "bad", "kafka_settings.yaml"), envOf(nil))
	checkProblems(t, err, []string{
		`kafka.brokers: Kafka ingest needs store.driver clickhouse (collectors write to ClickHouse); store.driver is "sqlite"`,
		`kafka.brokers[0]: "localhost" must be host:port`,
		`kafka.topic: "usage events": a topic name may only contain letters, digits, '.', '_' and '-'`,
		"kafka.dlq_topic: required",
		"kafka.group_id: required",
		"kafka.partitions: 0 must be from 1 to 10000",
		"kafka.replication_factor: -1 must be from 0 (the broker's default) to 32",
		"kafka.retention: 72h0m0s must be at least 21 days (504h)",
		"kafka.batch_size: 0 must be from 1 to 1000000",
		"kafka.batch_bytes: 32768 must be from 64KiB to 256MiB",
		`kafka.batch_wait: "soon" is not a duration`,
		"kafka.control_topic: required",
		"kafka.scheduler_group_id: required",
	})
}

// TestKafkaEnv sets the new keys from the environment and checks each rule at its boundary.
func TestKafkaEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string // empty: valid
		check   func(k Kafka) bool
	}{
		{name: "all set", env: map[string]string{"METERD_KAFKA_PARTITIONS": "12", "METERD_KAFKA_REPLICATION_FACTOR": "3",
			"METERD_KAFKA_RETENTION": "504h", "METERD_KAFKA_BATCH_SIZE": "500", "METERD_KAFKA_BATCH_WAIT": "250ms"},
			check: func(k Kafka) bool {
				return k.Partitions == 12 && k.ReplicationFactor == 3 && k.Retention.Duration == 504*time.Hour &&
					k.BatchSize == 500 && k.BatchWait.Duration == 250*time.Millisecond
			}},
		{name: "retention just short", env: map[string]string{"METERD_KAFKA_RETENTION": "503h59m"},
			wantErr: "kafka.retention: 503h59m0s must be at least 21 days"},
		{name: "same topics", env: map[string]string{"METERD_KAFKA_DLQ_TOPIC": "usage-events"},
			wantErr: `kafka.dlq_topic: "usage-events" is also kafka.topic`},
		{name: "topic too long", env: map[string]string{"METERD_KAFKA_TOPIC": strings.Repeat("t", 250)},
			wantErr: "kafka.topic: 250 characters, at most 249 allowed"},
		{name: "topic dot", env: map[string]string{"METERD_KAFKA_TOPIC": ".."},
			wantErr: `kafka.topic: ".." is not a valid topic name`},
		{name: "batch wait too long", env: map[string]string{"METERD_KAFKA_BATCH_WAIT": "2m"},
			wantErr: "kafka.batch_wait: 2m0s must be from 1ms to 1m"},
		{name: "batch size too big", env: map[string]string{"METERD_KAFKA_BATCH_SIZE": "1000001"},
			wantErr: "kafka.batch_size: 1000001 must be from 1 to 1000000"},
		{name: "scale-out on clickhouse", env: map[string]string{"METERD_KAFKA_BROKERS": "k1:9092,k2:9092", "METERD_STORE_DRIVER": "clickhouse",
			"METERD_KAFKA_CONTROL_TOPIC": "ctl", "METERD_KAFKA_SCHEDULER_GROUP_ID": "sched"},
			check: func(k Kafka) bool {
				return len(k.Brokers) == 2 && k.ControlTopic == "ctl" && k.SchedulerGroupID == "sched"
			}},
		{name: "control topic shared", env: map[string]string{"METERD_KAFKA_CONTROL_TOPIC": "usage-events"},
			wantErr: `kafka.control_topic: "usage-events" is also the events or dead-letter topic`},
		{name: "one group for both", env: map[string]string{"METERD_KAFKA_SCHEDULER_GROUP_ID": "meterd-collectors"},
			wantErr: `kafka.scheduler_group_id: "meterd-collectors" is also kafka.group_id`},
		{name: "partitions not a number", env: map[string]string{"METERD_KAFKA_PARTITIONS": "many"},
			wantErr: `kafka.partitions (env METERD_KAFKA_PARTITIONS): "many" is not an integer`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Load("", envOf(tt.env))
			if tt.wantErr != "" {
				checkProblems(t, err, []string{tt.wantErr})
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tt.check(c.Kafka) {
				t.Errorf("kafka = %+v", c.Kafka)
			}
		})
	}
}
