package stream

import (
	"slices"
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "kafka://127.0.0.1:9092/usage-events",
			want: Target{Brokers: []string{"127.0.0.1:9092"}, Topic: "usage-events", DLQTopic: "usage-events-dlq"}},
		{in: "kafka://k1:9092,k2:9093,[::1]:9094/ev.v1?dlq_topic=ev.dead",
			want: Target{Brokers: []string{"k1:9092", "k2:9093", "[::1]:9094"}, Topic: "ev.v1", DLQTopic: "ev.dead"}},
		{in: "http://k1:9092/t", wantErr: "must start with kafka://"},
		{in: "kafka://k1:9092", wantErr: "no topic"},
		{in: "kafka://k1:9092/", wantErr: "no topic"},
		{in: "kafka:///t", wantErr: "no broker"},
		{in: "kafka://k1/t", wantErr: `broker "k1" must be host:port`},
		{in: "kafka://k1:9092,/t", wantErr: `broker "" must be host:port`},
		{in: "kafka://k1:http/t", wantErr: "port must be a number from 1 to 65535"},
		{in: "kafka://k1:70000/t", wantErr: "port must be a number from 1 to 65535"},
		{in: "kafka://user:secret@k1:9092/t", wantErr: "credentials in the URL are not supported"},
		{in: "kafka://k1:9092/a/b", wantErr: "cannot contain '/'"},
		{in: "kafka://k1:9092/bad topic", wantErr: "may only contain letters"},
		{in: "kafka://k1:9092/t?acks=1", wantErr: `unknown parameter "acks"`},
		{in: "kafka://k1:9092/t?dlq_topic=t", wantErr: "is the events topic"},
		{in: "kafka://k1:9092/t?dlq_topic=", wantErr: "dlq_topic required"},
	}
	for _, tt := range tests {
		got, err := ParseURL(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseURL(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseURL(%q) error repeats the password: %v", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.in, err)
			continue
		}
		if !slices.Equal(got.Brokers, tt.want.Brokers) || got.Topic != tt.want.Topic || got.DLQTopic != tt.want.DLQTopic {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestOpenURL(t *testing.T) {
	p, err := OpenURL("kafka://127.0.0.1:9/usage-events")
	if err != nil {
		t.Fatal(err)
	}
	if p.topic != "usage-events" || p.dlqTopic != "usage-events-dlq" {
		t.Errorf("producer topics %q, %q", p.topic, p.dlqTopic)
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if _, err := OpenURL("kafka://nohost/t"); err == nil {
		t.Error("OpenURL accepted a broker without a port")
	}
}
