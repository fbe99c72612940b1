//go:build integration

package stream_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/stream"
)

// TestPositions: the snapshot offsets are the group's commits, and the watermark is the append time of the first
// unstored message, now once everything is stored (idle partitions pass).
func TestPositions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	broker := services.Kafka(t)
	topic, group := services.Name(t, "pos-"), services.Name(t, "pos-group-")
	client := &kafka.Client{Addr: kafka.TCP(broker), Timeout: 10 * time.Second}
	res, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 3, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "message.timestamp.type", ConfigValue: "LogAppendTime"}}}}})
	if err != nil || res.Errors[topic] != nil {
		t.Fatalf("create topic: %v %v", err, res)
	}
	produce := func(partition, n int) time.Time {
		t.Helper()
		conn, err := (&kafka.Dialer{Timeout: 10 * time.Second}).DialLeader(ctx, "tcp", broker, topic, partition)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		before := time.Now().Add(-time.Second) // the broker's clock is this machine's
		msgs := make([]kafka.Message, n)
		for i := range msgs {
			msgs[i] = kafka.Message{Value: []byte("m")}
		}
		if _, err := conn.WriteMessages(msgs...); err != nil {
			t.Fatal(err)
		}
		return before
	}
	pos := stream.NewPositions([]string{broker}, topic, group)
	offs, err := pos.StoredOffsets(ctx)
	if err != nil || len(offs) != 3 || offs[0] != -1 || offs[2] != -1 {
		t.Fatalf("stored offsets of an empty group: %v %v", offs, err)
	}
	now := time.Now().UTC()
	if wm, err := pos.Watermark(ctx, now); err != nil || !wm.Equal(now) {
		t.Fatalf("watermark of an empty topic %v (%v), want now %v", wm, err, now)
	}
	t0 := produce(0, 3)
	time.Sleep(1100 * time.Millisecond)
	t1 := produce(1, 2)
	// Nothing stored: the watermark is the oldest message's append time.
	wm, err := pos.Watermark(ctx, time.Now())
	if err != nil || wm.Before(t0) || !wm.Before(t1) {
		t.Fatalf("watermark %v (%v), want the first message's time, after %v and before %v", wm, err, t0, t1)
	}
	// A collector stores and commits partition 0 only.
	commit := func(partition int, offset int64) {
		t.Helper()
		r, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
			Topics: map[string][]kafka.OffsetCommit{topic: {{Partition: partition, Offset: offset}}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Topics[topic] {
			if p.Error != nil {
				t.Fatal(p.Error)
			}
		}
	}
	commit(0, 3)
	offs, err = pos.StoredOffsets(ctx)
	if err != nil || offs[0] != 3 || offs[1] != -1 {
		t.Fatalf("stored offsets %v %v", offs, err)
	}
	wm, err = pos.Watermark(ctx, time.Now())
	if err != nil || wm.Before(t1) {
		t.Fatalf("watermark %v (%v), want partition 1's first message time (after %v)", wm, err, t1)
	}
	commit(1, 1)
	if wm2, err := pos.Watermark(ctx, time.Now()); err != nil || wm2.Before(wm) || wm2.After(time.Now()) {
		t.Fatalf("watermark after storing one more: %v (%v), want at least %v", wm2, err, wm)
	}
	commit(1, 2)
	now = time.Now().UTC()
	if wm, err := pos.Watermark(ctx, now); err != nil || !wm.Equal(now) {
		t.Fatalf("watermark with everything stored %v (%v), want now", wm, err)
	}
	if _, err := stream.NewPositions([]string{broker}, services.Name(t, "missing-"), group).StoredOffsets(ctx); err == nil {
		t.Error("a missing topic gave offsets")
	}
}

// TestElection: of two schedulers exactly one leads; when it leaves, the other takes over and the old term ends.
func TestElection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	broker := services.Kafka(t)
	topic, group := services.Name(t, "control-"), services.Name(t, "schedulers-")
	if err := stream.EnsureControlTopic(ctx, []string{broker}, topic); err != nil {
		t.Fatal(err)
	}
	if err := stream.EnsureControlTopic(ctx, []string{broker}, topic); err != nil {
		t.Fatalf("ensuring twice: %v", err)
	}
	var es [2]*stream.Election
	var stops [2]context.CancelFunc
	done := make(chan struct{}, 2)
	for i := range es {
		e, err := stream.NewElection(stream.ElectionConfig{Brokers: []string{broker}, Topic: topic, GroupID: group, SessionTimeout: 6 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		es[i] = e
		rctx, stop := context.WithCancel(ctx)
		stops[i] = stop
		go func() { e.Run(rctx); done <- struct{}{} }()
	}
	defer func() {
		for _, s := range stops {
			s()
		}
		<-done
		<-done
	}()
	leader := -1
	waitFor(t, 60*time.Second, "one leader", func() bool {
		n := 0
		for i, e := range es {
			if _, ok := e.Term(); ok {
				n++
				leader = i
			}
		}
		return n == 1
	})
	term, _ := es[leader].Term()
	gen := es[leader].Generation()
	stops[leader]()
	other := 1 - leader
	waitFor(t, 60*time.Second, "the other to take over", func() bool { _, ok := es[other].Term(); return ok })
	if term.Err() == nil {
		t.Error("the old leader's term did not end")
	}
	if g := es[other].Generation(); g <= gen {
		t.Errorf("new generation %d, want above %d", g, gen)
	}
}
