package stream

import (
	"fmt"
	"net/url"
	"strings"
)

// URLScheme starts a Kafka destination: kafka://BROKER[,BROKER...]/TOPIC[?dlq_topic=NAME].
const URLScheme = "kafka://"

// Target is a parsed Kafka destination URL.
type Target struct {
	Brokers  []string
	Topic    string
	DLQTopic string // default: Topic + "-dlq"
}

// ParseURL parses kafka://BROKER[,BROKER...]/TOPIC[?dlq_topic=NAME], the --to of `meterd events send`. Every
// broker is host:port. Errors say what is wrong and show the expected form; they never repeat credentials.
func ParseURL(s string) (Target, error) {
	const form = "want kafka://HOST:PORT[,HOST:PORT...]/TOPIC"
	rest, ok := strings.CutPrefix(s, URLScheme)
	if !ok {
		return Target{}, fmt.Errorf("kafka URL: must start with %s (%s)", URLScheme, form)
	}
	rest, query, _ := strings.Cut(rest, "?")
	hosts, topic, ok := strings.Cut(rest, "/")
	if !ok || topic == "" {
		return Target{}, fmt.Errorf("kafka URL: no topic (%s)", form)
	}
	if strings.Contains(hosts, "@") {
		return Target{}, fmt.Errorf("kafka URL: credentials in the URL are not supported (%s)", form)
	}
	if hosts == "" {
		return Target{}, fmt.Errorf("kafka URL: no broker (%s)", form)
	}
	t := Target{Topic: topic, DLQTopic: topic + "-dlq"}
	for _, b := range strings.Split(hosts, ",") {
		if err := checkBroker(b); err != nil {
			return Target{}, fmt.Errorf("kafka URL: broker %v (%s)", err, form)
		}
		t.Brokers = append(t.Brokers, b)
	}
	if strings.Contains(topic, "/") {
		return Target{}, fmt.Errorf("kafka URL: topic %q: a topic name cannot contain '/' (%s)", topic, form)
	}
	if err := CheckTopicName(topic); err != nil {
		return Target{}, fmt.Errorf("kafka URL: topic %v", err)
	}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return Target{}, fmt.Errorf("kafka URL: query: %v", err)
		}
		for k, v := range q {
			if k != "dlq_topic" {
				return Target{}, fmt.Errorf("kafka URL: unknown parameter %q (only dlq_topic)", k)
			}
			t.DLQTopic = v[len(v)-1]
		}
		if err := CheckTopicName(t.DLQTopic); err != nil {
			return Target{}, fmt.Errorf("kafka URL: dlq_topic %v", err)
		} else if t.DLQTopic == t.Topic {
			return Target{}, fmt.Errorf("kafka URL: dlq_topic %q is the events topic", t.DLQTopic)
		}
	}
	return t, nil
}

// OpenURL parses a kafka:// URL and returns a producer to it (see ParseURL). It does not contact Kafka; the
// first write does. Close the producer when done.
//
// The producer is plaintext without authentication: a URL carries no TLS or SASL settings (and credentials in it
// are refused). To produce to a secured cluster, use NewProducer with a Config whose Security is set.
func OpenURL(s string) (*Producer, error) {
	t, err := ParseURL(s)
	if err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.Brokers, cfg.Topic, cfg.DLQTopic = t.Brokers, t.Topic, t.DLQTopic
	return NewProducer(cfg)
}
