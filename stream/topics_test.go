package stream

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"
)

// fakeAdmin answers CreateTopics with createErrs and DescribeConfigs with settings per topic.
type fakeAdmin struct {
	created    *kafka.CreateTopicsRequest
	createErrs map[string]error
	settings   map[string]map[string]string
}

func (a *fakeAdmin) CreateTopics(_ context.Context, req *kafka.CreateTopicsRequest) (*kafka.CreateTopicsResponse, error) {
	a.created = req
	return &kafka.CreateTopicsResponse{Errors: a.createErrs}, nil
}

func (a *fakeAdmin) DescribeConfigs(_ context.Context, req *kafka.DescribeConfigsRequest) (*kafka.DescribeConfigsResponse, error) {
	res := &kafka.DescribeConfigsResponse{}
	for _, r := range req.Resources {
		s, ok := a.settings[r.ResourceName]
		if !ok {
			res.Resources = append(res.Resources, kafka.DescribeConfigResponseResource{ResourceName: r.ResourceName,
				Error: kafka.UnknownTopicOrPartition})
			continue
		}
		out := kafka.DescribeConfigResponseResource{ResourceName: r.ResourceName}
		for k, v := range s {
			out.ConfigEntries = append(out.ConfigEntries, kafka.DescribeConfigResponseConfigEntry{ConfigName: k, ConfigValue: v})
		}
		res.Resources = append(res.Resources, out)
	}
	return res, nil
}

func goodSettings() map[string]string {
	return map[string]string{timestampTypeKey: logAppendTime, retentionMsKey: "2592000000", retentionBytes: "-1",
		cleanupPolicyKey: "delete"}
}

func TestEnsureTopicsCreates(t *testing.T) {
	cfg := validConfig()
	a := &fakeAdmin{settings: map[string]map[string]string{cfg.Topic: goodSettings(), cfg.DLQTopic: goodSettings()}}
	if err := ensureTopics(context.Background(), a, cfg); err != nil {
		t.Fatal(err)
	}
	if len(a.created.Topics) != 2 {
		t.Fatalf("created %+v", a.created.Topics)
	}
	for i, name := range []string{cfg.Topic, cfg.DLQTopic} {
		tc := a.created.Topics[i]
		entries := map[string]string{}
		for _, e := range tc.ConfigEntries {
			entries[e.ConfigName] = e.ConfigValue
		}
		if tc.Topic != name || tc.NumPartitions != 6 || tc.ReplicationFactor != -1 ||
			entries[timestampTypeKey] != logAppendTime || entries[retentionMsKey] != "2592000000" ||
			entries[retentionBytes] != "-1" || entries[cleanupPolicyKey] != "delete" {
			t.Errorf("topic %d created as %+v", i, tc)
		}
	}
}

func TestEnsureTopicsChecksExisting(t *testing.T) {
	cfg := validConfig()
	exists := map[string]error{cfg.Topic: kafka.TopicAlreadyExists, cfg.DLQTopic: kafka.TopicAlreadyExists}
	bad := map[string]string{timestampTypeKey: "CreateTime", retentionMsKey: "604800000", retentionBytes: "1073741824",
		cleanupPolicyKey: "compact"}
	a := &fakeAdmin{createErrs: exists, settings: map[string]map[string]string{cfg.Topic: bad, cfg.DLQTopic: goodSettings()}}
	err := ensureTopics(context.Background(), a, cfg)
	if err == nil {
		t.Fatal("a CreateTime topic with 7-day retention was accepted")
	}
	for _, want := range []string{
		`topic usage-events: message.timestamp.type is "CreateTime", want LogAppendTime`,
		"topic usage-events: retention.ms is 604800000 (168h0m0s), want at least 1814400000",
		"topic usage-events: retention.bytes is 1073741824",
		`topic usage-events: cleanup.policy is "compact", want delete`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "usage-events-dlq") {
		t.Errorf("the good dead-letter topic is reported:\n%v", err)
	}

	// Kept forever is fine.
	forever := goodSettings()
	forever[retentionMsKey] = "-1"
	a.settings[cfg.Topic] = forever
	if err := ensureTopics(context.Background(), a, cfg); err != nil {
		t.Errorf("retention.ms -1: %v", err)
	}
}

func TestEnsureTopicsErrors(t *testing.T) {
	cfg := validConfig()
	a := &fakeAdmin{createErrs: map[string]error{cfg.Topic: kafka.TopicAuthorizationFailed}}
	err := ensureTopics(context.Background(), a, cfg)
	if !errors.Is(err, kafka.TopicAuthorizationFailed) || IsRetryable(err) {
		t.Errorf("create refused: %v (retryable %v)", err, IsRetryable(err))
	}
	a = &fakeAdmin{settings: map[string]map[string]string{cfg.Topic: goodSettings()}}
	if err := ensureTopics(context.Background(), a, cfg); !errors.Is(err, kafka.UnknownTopicOrPartition) {
		t.Errorf("dead-letter topic not described: %v", err)
	}
	cfg.Brokers = nil
	if err := EnsureTopics(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "kafka.brokers") {
		t.Errorf("EnsureTopics without brokers: %v", err)
	}
}
