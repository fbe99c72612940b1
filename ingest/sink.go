package ingest

import (
	"context"
	"encoding/json"
)

// Outcome is what the Sink did with one event.
type Outcome uint8

// Outcomes of Sink.Write.
const (
	// Stored: first copy of its (source, id), now durable.
	Stored Outcome = iota + 1
	// Duplicate: an identical copy was stored before (or earlier in the same write); nothing added.
	Duplicate
	// Conflict: a copy with different content was stored before; this one was dead-lettered beside it.
	Conflict
)

// WriteResult reports, per event of a write, what the Sink did, and for conflicts the stored version.
type WriteResult struct {
	Outcomes []Outcome
	Existing []json.RawMessage // index-aligned with Outcomes; set for Conflict only
}

// Sink makes a batch durable: the events deduplicated by (source, id) against everything stored within the dedup
// horizon (first copy wins), conflicting copies and the given rejections dead-lettered, all in one atomic step.
// It returns only after the batch is durable (an fsync'd commit, or all Kafka replicas), so the caller may
// acknowledge; on error nothing of the batch may be assumed stored and the caller answers with a retryable status.
type Sink interface {
	Write(ctx context.Context, events []*Event, rejected []*Rejection) (WriteResult, error)
}

// RejectedLister lists dead letters, newest first.
type RejectedLister interface {
	ListRejected(ctx context.Context, limit int) ([]Rejection, error)
}
