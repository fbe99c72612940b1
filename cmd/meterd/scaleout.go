package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/stream"
)

// The scale-out deployment (kafka.brokers set, store.driver clickhouse): the API produces to Kafka, collectors
// consume into ClickHouse, and schedulers elect one of them to close and push (DESIGN.md §1, §4).

// scaledOut tells whether the config runs ingest through Kafka.
func scaledOut(cfg *config.Config) bool { return len(cfg.Kafka.Brokers) > 0 }

// streamConfig maps the config file's kafka section to the stream package's. Security holds paths: the stream
// package reads the files when it builds a client, so this mapping cannot fail.
func streamConfig(k config.Kafka) stream.Config {
	return stream.Config{Brokers: k.Brokers, Topic: k.Topic, DLQTopic: k.DLQTopic, GroupID: k.GroupID,
		Partitions: k.Partitions, ReplicationFactor: k.ReplicationFactor, Retention: k.Retention.Duration,
		BatchSize: k.BatchSize, BatchBytes: int(k.BatchBytes.Bytes), BatchWait: k.BatchWait.Duration,
		Security: stream.Security{
			TLS: stream.TLS{Enabled: k.TLS.Enabled, CAFile: k.TLS.CAFile, CertFile: k.TLS.CertFile, KeyFile: k.TLS.KeyFile,
				ServerName: k.TLS.ServerName},
			SASL: stream.SASL{Mechanism: k.SASL.Mechanism, Username: k.SASL.Username, PasswordFile: k.SASL.PasswordFile},
		}}
}

// positions reads where the collectors stand in the events topic: the close's snapshot and watermark.
func positions(cfg *config.Config) *stream.Positions {
	return stream.PositionsOf(streamConfig(cfg.Kafka))
}

// watermarkFor is the close's watermark: the embedded and direct ClickHouse stores store before they acknowledge
// (the watermark is now); with Kafka it is where the collectors stand.
func watermarkFor(cfg *config.Config) aggregate.Watermark {
	if scaledOut(cfg) {
		return positions(cfg)
	}
	return aggregate.SyncWatermark{}
}

// scaleOut is the Kafka side of one serve process.
type scaleOut struct {
	cfg       stream.Config
	positions *stream.Positions
	producer  *stream.Producer // roles that serve ingest
	log       *slog.Logger
	stops     []func() error // collectors and the election, stopped in reverse order
}

// setupTimeout bounds the start-up calls to Kafka (topics), so that a broker down at start fails the start with
// a clear error instead of hanging.
const setupTimeout = 30 * time.Second

// startScaleOut creates or checks the topics and starts what role runs on Kafka: the producer for ingest,
// collectors into sink, the scheduler election. gate is nil unless the role schedules.
func startScaleOut(ctx context.Context, cfg *config.Config, role serveRole, sink ingest.Sink, v *ingest.Validator,
	reg prometheus.Registerer, log *slog.Logger) (s *scaleOut, gate func() (context.Context, bool), err error) {
	s = &scaleOut{cfg: streamConfig(cfg.Kafka), positions: positions(cfg), log: log}
	setup, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if err := stream.EnsureTopics(setup, s.cfg); err != nil {
		return nil, nil, fmt.Errorf("kafka topics: %w", err)
	}
	if role.serves() {
		if s.producer, err = stream.NewProducer(s.cfg); err != nil {
			return nil, nil, err
		}
	}
	if role.collects() {
		c, err := stream.NewCollector(s.cfg, stream.CollectorOptions{Validator: v, Sink: sink, Metrics: stream.NewMetrics(reg), Logger: log})
		if err != nil {
			return nil, nil, errors.Join(err, s.stop())
		}
		s.run(ctx, "collector", c.Run, c.Close)
	}
	if role.schedules() {
		if err := stream.EnsureElectionTopic(setup, stream.ElectionConfig{Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.ControlTopic,
			Security: s.cfg.Security}); err != nil {
			return nil, nil, errors.Join(fmt.Errorf("kafka control topic: %w", err), s.stop())
		}
		e, err := stream.NewElection(stream.ElectionConfig{Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.ControlTopic,
			GroupID: cfg.Kafka.SchedulerGroupID, Security: s.cfg.Security, Logger: log})
		if err != nil {
			return nil, nil, errors.Join(err, s.stop())
		}
		s.run(ctx, "scheduler election", func(ctx context.Context) error { e.Run(ctx); return nil }, nil)
		gate = e.Term
	}
	return s, gate, nil
}

// run starts fn until stop; close, when set, runs after fn returned.
func (s *scaleOut) run(ctx context.Context, what string, fn func(context.Context) error, close func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		err := fn(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Error(what+" stopped", "err", err)
		}
		done <- err
	}()
	s.stops = append(s.stops, func() error {
		cancel()
		err := <-done
		if close != nil {
			err = errors.Join(err, close())
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// ping checks the brokers for readiness.
func (s *scaleOut) ping(ctx context.Context) error {
	if err := s.positions.Ping(ctx); err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	return nil
}

// stop stops the collectors and the election (leaving the groups, so others take over at once), then flushes
// the producer. Call it after the HTTP server stopped taking requests.
func (s *scaleOut) stop() error {
	var errs []error
	for i := len(s.stops) - 1; i >= 0; i-- {
		errs = append(errs, s.stops[i]())
	}
	s.stops = nil
	if s.producer != nil {
		errs = append(errs, s.producer.Close())
		s.producer = nil
	}
	return errors.Join(errs...)
}
