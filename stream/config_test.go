package stream

import (
	"strings"
	"testing"
	"time"

	"github.com/meterd/meterd/config"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Brokers = []string{"127.0.0.1:9092"}
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(c *Config)
		wantErr []string
	}{
		{name: "defaults with a broker", edit: func(*Config) {}},
		{name: "minimum retention", edit: func(c *Config) { c.Retention = MinRetention }},
		{name: "no broker", edit: func(c *Config) { c.Brokers = nil },
			wantErr: []string{"kafka.brokers: at least one broker"}},
		{name: "bad brokers", edit: func(c *Config) { c.Brokers = []string{"k1", "k2:0", ":9092"} },
			wantErr: []string{`kafka.brokers[0]: "k1" must be host:port`, "kafka.brokers[1]: \"k2:0\": port must be",
				`kafka.brokers[2]: ":9092" must be host:port`}},
		{name: "everything else wrong at once", edit: func(c *Config) {
			*c = Config{Brokers: c.Brokers, Topic: "a b", DLQTopic: "", GroupID: " ", Partitions: 0, ReplicationFactor: -1,
				Retention: 20 * 24 * time.Hour, BatchSize: 0, BatchWait: 0}
		}, wantErr: []string{"kafka.topic:", "kafka.dlq_topic: required", "kafka.group_id: required",
			"kafka.partitions: 0 must be", "kafka.replication_factor: -1 must be", "kafka.retention: 480h0m0s must be at least",
			"kafka.batch_size: 0 must be", "kafka.batch_bytes: 0 must be", "kafka.batch_wait: 0s must be"}},
		{name: "same topic twice", edit: func(c *Config) { c.DLQTopic = c.Topic },
			wantErr: []string{`kafka.dlq_topic: "usage-events" is also kafka.topic`}},
		{name: "batch too large", edit: func(c *Config) { c.BatchSize, c.BatchBytes, c.BatchWait = MaxBatchSize+1, 1<<30, 2*time.Minute },
			wantErr: []string{"kafka.batch_size: 1000001 must be", "kafka.batch_bytes: 1073741824 must be", "kafka.batch_wait: 2m0s must be"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.edit(&c)
			err := c.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted %+v", c)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tt.wantErr) {
				t.Errorf("%d problems, want %d:\n%v", len(lines), len(tt.wantErr), err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestDefaultsMatchConfigFile keeps DefaultConfig and the config file's defaults (config.Default) in step: serve
// builds a Config from the file, the CLI's kafka:// URL from DefaultConfig.
func TestDefaultsMatchConfigFile(t *testing.T) {
	f := config.Default().Kafka
	d := DefaultConfig()
	got := Config{Brokers: f.Brokers, Topic: f.Topic, DLQTopic: f.DLQTopic, GroupID: f.GroupID, Partitions: f.Partitions,
		ReplicationFactor: f.ReplicationFactor, Retention: f.Retention.Duration, BatchSize: f.BatchSize,
		BatchWait: f.BatchWait.Duration}
	if got.Topic != d.Topic || got.DLQTopic != d.DLQTopic || got.GroupID != d.GroupID || got.Partitions != d.Partitions ||
		got.ReplicationFactor != d.ReplicationFactor || got.Retention != d.Retention || got.BatchSize != d.BatchSize ||
		got.BatchWait != d.BatchWait || len(got.Brokers) != 0 {
		t.Errorf("config.Default().Kafka = %+v\nstream.DefaultConfig() = %+v", got, d)
	}
}

func TestCheckTopicName(t *testing.T) {
	for _, ok := range []string{"a", "usage-events", "x.y_z-1", strings.Repeat("t", 249)} {
		if err := CheckTopicName(ok); err != nil {
			t.Errorf("CheckTopicName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "ü", strings.Repeat("t", 250)} {
		if CheckTopicName(bad) == nil {
			t.Errorf("CheckTopicName(%q) accepted", bad)
		}
	}
}
