package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// Positions reads where the collectors' consumer group stands in the events topic. A collector commits only
// after its insert returned, so the group's committed offsets are the offsets below which every message is
// stored: they are the hour close's snapshot (StoredOffsets, for store/clickhouse) and give the watermark, the
// time up to which every acknowledged event is stored (Watermark, for the aggregate closer).
type Positions struct {
	client  *kafka.Client
	dialer  *kafka.Dialer
	brokers []string
	topic   string
	group   string
	err     error // the security could not be built: every call fails with it
}

// NewPositions reads the positions of group in topic, over plaintext without authentication; PositionsOf is the
// same with a Config's Security.
func NewPositions(brokers []string, topic, group string) *Positions {
	return newPositions(brokers, topic, group, secured{})
}

// PositionsOf reads the positions of cfg.GroupID in cfg.Topic, connecting with cfg.Security. It reads the security
// files now and does not contact Kafka. When they cannot be read, every call fails with that error (not
// retryable): the config loader checked the files already, and EnsureTopics, which a serve process calls first,
// reports the same error at start.
func PositionsOf(cfg Config) *Positions {
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return &Positions{err: err, brokers: cfg.Brokers, topic: cfg.Topic, group: cfg.GroupID}
	}
	return newPositions(cfg.Brokers, cfg.Topic, cfg.GroupID, sec)
}

func newPositions(brokers []string, topic, group string, sec secured) *Positions {
	client, _ := sec.client(brokers, 10*time.Second) // its connections live as long as the process
	return &Positions{
		client:  client,
		dialer:  sec.dialer(10 * time.Second),
		brokers: brokers,
		topic:   topic,
		group:   group,
	}
}

// partitions lists the topic's partition ids.
func (p *Positions) partitions(ctx context.Context) ([]int, error) {
	if p.err != nil {
		return nil, p.err // every exported method starts here
	}
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{p.topic}})
	if err != nil {
		return nil, wrap("read metadata of "+p.topic, err)
	}
	for _, t := range md.Topics {
		if t.Name != p.topic {
			continue
		}
		if t.Error != nil {
			return nil, wrap("read metadata of "+p.topic, t.Error)
		}
		ids := make([]int, 0, len(t.Partitions))
		for _, part := range t.Partitions {
			ids = append(ids, part.ID)
		}
		slices.Sort(ids)
		if len(ids) == 0 {
			return nil, fmt.Errorf("topic %s has no partitions", p.topic)
		}
		return ids, nil
	}
	return nil, fmt.Errorf("topic %s does not exist", p.topic)
}

// committed returns the group's committed offset per partition; -1 where it has committed nothing yet.
func (p *Positions) committed(ctx context.Context, parts []int) (map[int]int64, error) {
	res, err := p.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: p.group, Topics: map[string][]int{p.topic: parts}})
	if err != nil {
		return nil, wrap("read committed offsets of group "+p.group, err)
	}
	if res.Error != nil {
		return nil, wrap("read committed offsets of group "+p.group, res.Error)
	}
	out := make(map[int]int64, len(parts))
	for _, part := range parts {
		out[part] = -1
	}
	for _, op := range res.Topics[p.topic] {
		if op.Error != nil {
			return nil, wrap(fmt.Sprintf("read committed offset of %s/%d", p.topic, op.Partition), op.Error)
		}
		out[op.Partition] = op.CommittedOffset
	}
	return out, nil
}

// StoredOffsets returns, per partition, the offset below which every message is stored (store/clickhouse's
// Offsets): the committed offset, or -1 where the group has committed nothing yet.
func (p *Positions) StoredOffsets(ctx context.Context) (map[int]int64, error) {
	return retried(ctx, func() (map[int]int64, error) {
		parts, err := p.partitions(ctx)
		if err != nil {
			return nil, err
		}
		return p.committed(ctx, parts)
	})
}

// retried runs fn again, briefly, while it fails with a retryable error: a leader or coordinator moving answers
// for a second or two with an error that the next call does not get.
func retried[T any](ctx context.Context, fn func() (T, error)) (T, error) {
	var v T
	var err error
	for attempt := range 5 {
		if v, err = fn(); err == nil || !IsRetryable(err) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, errors.Join(err, ctx.Err())
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	return v, err
}

// bounds returns each partition's first and next (end) offset.
func (p *Positions) bounds(ctx context.Context, parts []int) (first, end map[int]int64, err error) {
	reqs := make([]kafka.OffsetRequest, 0, 2*len(parts))
	for _, part := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(part), kafka.LastOffsetOf(part))
	}
	res, err := p.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{p.topic: reqs}})
	if err != nil {
		return nil, nil, wrap("list offsets of "+p.topic, err)
	}
	first, end = map[int]int64{}, map[int]int64{}
	for _, po := range res.Topics[p.topic] {
		if po.Error != nil {
			return nil, nil, wrap(fmt.Sprintf("list offsets of %s/%d", p.topic, po.Partition), po.Error)
		}
		first[po.Partition], end[po.Partition] = po.FirstOffset, po.LastOffset
	}
	return first, end, nil
}

// Watermark returns the time up to which every acknowledged event is stored: the smallest append time
// (LogAppendTime: the broker's clock at acknowledgement) of the first unstored message over all partitions. A
// partition whose messages are all stored does not hold the watermark back (an idle partition passes), so with
// everything stored it is now.
func (p *Positions) Watermark(ctx context.Context, now time.Time) (time.Time, error) {
	return retried(ctx, func() (time.Time, error) { return p.watermark(ctx, now) })
}

func (p *Positions) watermark(ctx context.Context, now time.Time) (time.Time, error) {
	parts, err := p.partitions(ctx)
	if err != nil {
		return time.Time{}, err
	}
	committed, err := p.committed(ctx, parts)
	if err != nil {
		return time.Time{}, err
	}
	first, end, err := p.bounds(ctx, parts)
	if err != nil {
		return time.Time{}, err
	}
	wm := now
	for _, part := range parts {
		next := max(committed[part], first[part]) // nothing committed yet: the first message kept is the first unstored
		if next >= end[part] {
			continue
		}
		t, err := p.appendTime(ctx, part, next)
		if err != nil {
			return time.Time{}, err
		}
		if t.Before(wm) {
			wm = t
		}
	}
	return wm, nil
}

// appendTime reads the timestamp of the message at offset in partition.
func (p *Positions) appendTime(ctx context.Context, partition int, offset int64) (time.Time, error) {
	var errs []error
	for _, b := range p.brokers {
		conn, err := p.dialer.DialLeader(ctx, "tcp", b, p.topic, partition)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t, err := readTime(ctx, conn, offset)
		_ = conn.Close()
		if err != nil {
			return time.Time{}, wrap(fmt.Sprintf("read %s/%d at offset %d", p.topic, partition, offset), err)
		}
		return t, nil
	}
	return time.Time{}, wrap(fmt.Sprintf("dial the leader of %s/%d", p.topic, partition), errors.Join(errs...))
}

func readTime(ctx context.Context, conn *kafka.Conn, offset int64) (time.Time, error) {
	if _, err := conn.Seek(offset, kafka.SeekAbsolute); err != nil {
		return time.Time{}, err
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetReadDeadline(deadline); err != nil {
		return time.Time{}, err
	}
	// A batch starts at the requested offset or before it (compressed batches are read whole): skip to it.
	batch := conn.ReadBatch(1, 16<<20)
	defer func() { _ = batch.Close() }()
	for {
		m, err := batch.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return time.Time{}, fmt.Errorf("no message at offset %d within the deadline", offset)
			}
			return time.Time{}, err
		}
		if m.Offset >= offset {
			return m.Time.UTC(), nil
		}
	}
}

// Ping checks that the events topic can be read: the brokers answer and know it.
func (p *Positions) Ping(ctx context.Context) error {
	_, err := p.partitions(ctx)
	return err
}
