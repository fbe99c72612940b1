package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// Election makes exactly one of several schedulers active, with the engine we already run rather than a consensus
// protocol of our own: every scheduler joins one consumer group over a control topic of one partition, and the
// member the group coordinator assigns that partition to leads for that generation. When the leader dies or
// hangs, the coordinator expels it after the session timeout and hands the partition to another member; a leader
// that loses the group (a rebalance, a lost coordinator) stops leading at once.
//
// Leadership only gates who runs the close and the push. The push lease in the store stays the last line: a new
// leader takes the lease (and a new epoch) only once the old one's lease expired or was released, and ledger
// writes under an old epoch are fenced (DESIGN.md §4 step 11).
type Election struct {
	group *kafka.ConsumerGroup
	topic string
	log   *slog.Logger

	mu         sync.Mutex
	term       context.Context // valid while this process leads; nil when it does not
	generation int32
}

// ElectionConfig configures an Election.
type ElectionConfig struct {
	Brokers []string
	Topic   string // the control topic: one partition (EnsureControlTopic creates it)
	GroupID string
	// SessionTimeout bounds how long a dead leader keeps leading; default 10s.
	SessionTimeout time.Duration
	Logger         *slog.Logger
	// Security is the TLS and SASL of the connections to the brokers; the zero value is plaintext.
	Security Security
}

// groupSessionTimeout is how long the group coordinator waits for a silent member (a collector, a scheduler)
// before it hands that member's partitions to the others.
const groupSessionTimeout = 10 * time.Second

// NewElection joins the group in the background; Run drives it.
func NewElection(cfg ElectionConfig) (*Election, error) {
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = groupSessionTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return nil, fmt.Errorf("scheduler election: %w", err)
	}
	g, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                cfg.GroupID,
		Brokers:           cfg.Brokers,
		Dialer:            sec.dialer(dialTimeout),
		Topics:            []string{cfg.Topic},
		SessionTimeout:    cfg.SessionTimeout,
		RebalanceTimeout:  cfg.SessionTimeout,
		HeartbeatInterval: cfg.SessionTimeout / 4,
		JoinGroupBackoff:  time.Second,
		StartOffset:       kafka.LastOffset, // nothing is ever read from the control topic
	})
	if err != nil {
		return nil, fmt.Errorf("scheduler election: %w", err)
	}
	return &Election{group: g, topic: cfg.Topic, log: cfg.Logger}, nil
}

// EnsureControlTopic creates the control topic with one partition if it does not exist, over plaintext without
// authentication; EnsureElectionTopic is the same with an ElectionConfig's Security.
func EnsureControlTopic(ctx context.Context, brokers []string, topic string) error {
	return EnsureElectionTopic(ctx, ElectionConfig{Brokers: brokers, Topic: topic})
}

// EnsureElectionTopic creates cfg.Topic, the control topic, with one partition if it does not exist, connecting
// with cfg.Security.
func EnsureElectionTopic(ctx context.Context, cfg ElectionConfig) error {
	sec, err := cfg.Security.build(cfg.Brokers)
	if err != nil {
		return err
	}
	c, done := sec.client(cfg.Brokers, 10*time.Second)
	defer done()
	topic := cfg.Topic
	res, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: 1, ReplicationFactor: -1,
	}}})
	if err != nil {
		return wrap("create control topic "+topic, err)
	}
	if err := res.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return wrap("create control topic "+topic, err)
	}
	return nil
}

// Run takes part in the election until ctx ends, then leaves the group so another scheduler takes over at once.
func (e *Election) Run(ctx context.Context) {
	defer func() {
		e.standBy(0)
		if err := e.group.Close(); err != nil {
			e.log.Warn("scheduler election: leave the group", "err", err)
		}
	}()
	for {
		gen, err := e.group.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				return
			}
			e.standBy(0)
			e.log.Warn("scheduler election: joining the group failed; not leading", "err", err)
			continue // the group backs off before its next attempt
		}
		if len(gen.Assignments[e.topic]) == 0 {
			e.standBy(gen.ID)
			e.log.Info("scheduler election: standing by", "generation", gen.ID)
			continue // Next returns when this generation ends
		}
		started := make(chan struct{})
		gen.Start(func(gctx context.Context) {
			e.lead(gctx, gen.ID)
			e.log.Info("scheduler election: leading", "generation", gen.ID)
			close(started)
			<-gctx.Done() // the generation ended: a rebalance, a lost coordinator, or Close
			e.standBy(gen.ID)
			e.log.Info("scheduler election: no longer leading", "generation", gen.ID)
		})
		<-started
	}
}

// lead records that this process leads for generation while term lasts.
func (e *Election) lead(term context.Context, generation int32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.term, e.generation = term, generation
}

// standBy records that this process does not lead.
func (e *Election) standBy(generation int32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.term = nil
	if generation != 0 {
		e.generation = generation
	}
}

// Term returns a context that ends when this process stops leading, and whether it leads now. Work done as the
// leader runs under it, so it stops when leadership is lost.
func (e *Election) Term() (context.Context, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.term == nil || e.term.Err() != nil {
		return nil, false
	}
	return e.term, true
}

// Generation is the group generation last seen (0 before joining): it only grows while the group exists.
func (e *Election) Generation() int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.generation
}
