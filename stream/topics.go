package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Topic settings meterd relies on.
const (
	// The watermark and the age of events are read from message timestamps, so they must be the broker's append
	// time (when the event was acknowledged), not a time chosen by the producer.
	timestampTypeKey = "message.timestamp.type"
	logAppendTime    = "LogAppendTime"
	retentionMsKey   = "retention.ms"
	retentionBytes   = "retention.bytes"
	cleanupPolicyKey = "cleanup.policy"
)

// topicAdmin is the part of a kafka.Client that EnsureTopics uses.
type topicAdmin interface {
	CreateTopics(ctx context.Context, req *kafka.CreateTopicsRequest) (*kafka.CreateTopicsResponse, error)
	DescribeConfigs(ctx context.Context, req *kafka.DescribeConfigsRequest) (*kafka.DescribeConfigsResponse, error)
}

// EnsureTopics creates the events and dead-letter topics if they are missing (cfg.Partitions partitions,
// cfg.ReplicationFactor replicas, retention.ms = cfg.Retention, no size limit, LogAppendTime timestamps) and then
// checks both as the broker reports them, so that a topic created by someone else with the broker's defaults is
// refused with the setting to change instead of silently losing events or misjudging their age.
func EnsureTopics(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return err
	}
	client, done := sec.client(cfg.Brokers, 30*time.Second)
	defer done()
	return ensureTopics(ctx, client, cfg)
}

func ensureTopics(ctx context.Context, admin topicAdmin, cfg Config) error {
	topics := []string{cfg.Topic, cfg.DLQTopic}
	rf := cfg.ReplicationFactor
	if rf == 0 {
		rf = -1 // the broker's default.replication.factor
	}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: cfg.Partitions, ReplicationFactor: rf,
			ConfigEntries: []kafka.ConfigEntry{
				{ConfigName: timestampTypeKey, ConfigValue: logAppendTime},
				{ConfigName: retentionMsKey, ConfigValue: strconv.FormatInt(cfg.Retention.Milliseconds(), 10)},
				{ConfigName: retentionBytes, ConfigValue: "-1"},
				{ConfigName: cleanupPolicyKey, ConfigValue: "delete"},
			}})
	}
	res, err := admin.CreateTopics(ctx, req)
	if err != nil {
		return wrap("create topics "+strings.Join(topics, ", "), err)
	}
	for _, t := range topics {
		if err := res.Errors[t]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return wrap("create topic "+t, err)
		}
	}

	dreq := &kafka.DescribeConfigsRequest{}
	for _, t := range topics {
		dreq.Resources = append(dreq.Resources, kafka.DescribeConfigRequestResource{ResourceType: kafka.ResourceTypeTopic,
			ResourceName: t, ConfigNames: []string{timestampTypeKey, retentionMsKey, retentionBytes, cleanupPolicyKey}})
	}
	dres, err := admin.DescribeConfigs(ctx, dreq)
	if err != nil {
		return wrap("describe topics "+strings.Join(topics, ", "), err)
	}
	var errs []error
	for _, t := range topics {
		errs = append(errs, checkDescribed(t, dres.Resources))
	}
	return errors.Join(errs...)
}

// checkDescribed finds topic among the described resources and checks its settings.
func checkDescribed(topic string, resources []kafka.DescribeConfigResponseResource) error {
	for _, r := range resources {
		if r.ResourceName != topic {
			continue
		}
		if r.Error != nil {
			return wrap("describe topic "+topic, r.Error)
		}
		settings := make(map[string]string, len(r.ConfigEntries))
		for _, e := range r.ConfigEntries {
			settings[e.ConfigName] = e.ConfigValue
		}
		return checkTopicSettings(topic, settings)
	}
	return &Error{Op: "describe topic " + topic, Err: errors.New("the broker did not describe it"), Retryable: true}
}

// checkTopicSettings reports every setting of an existing topic that breaks meterd's assumptions, with the
// command-line fix in mind (kafka-configs --alter --entity-type topics --add-config key=value).
func checkTopicSettings(topic string, settings map[string]string) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("topic %s: %s", topic, fmt.Sprintf(format, args...)))
	}
	if v := settings[timestampTypeKey]; v != logAppendTime {
		bad("%s is %q, want %s: event age and the watermark are judged by the time Kafka acknowledged a message", timestampTypeKey, v, logAppendTime)
	}
	switch v := settings[retentionMsKey]; {
	case v == "-1": // kept forever
	default:
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			bad("%s is %q, not a number of milliseconds", retentionMsKey, v)
		} else if time.Duration(ms)*time.Millisecond < MinRetention {
			bad("%s is %d (%s), want at least %d (21 days, the dedup horizon)", retentionMsKey, ms,
				time.Duration(ms)*time.Millisecond, MinRetention.Milliseconds())
		}
	}
	if v, ok := settings[retentionBytes]; ok && v != "-1" {
		bad("%s is %s: a size limit may delete events younger than 21 days; set it to -1", retentionBytes, v)
	}
	if v, ok := settings[cleanupPolicyKey]; ok && v != "delete" {
		bad("%s is %q, want delete: compaction keeps only the last copy of each (source, id)", cleanupPolicyKey, v)
	}
	return errors.Join(errs...)
}
