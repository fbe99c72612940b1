package instance

import "context"

// Filter selects instances; an empty field matches everything.
type Filter struct {
	Subject string
	Meter   string
	Status  Status
}

// Result is what applying a spec did.
type Result struct {
	// Instance is the instance as stored after the apply, its Changes including New.
	Instance Instance
	// New are the changes this apply recorded (also at the end of Instance.Changes).
	New []Change
	// Created: the instance did not exist. Changed: something was written (Created implies Changed). When
	// Changed is false the spec matched what was stored and nothing was written.
	Created, Changed bool
}

// Decider decides what an apply does, given the stored instance (nil when there is none) and every other stored
// instance with the same subject and meter. It must have no side effects: the store may run it and then fail to
// commit, or find nothing to write.
type Decider func(current *Instance, sameKey []Instance) (Result, error)

// Store is what the registry needs from storage.
type Store interface {
	// ApplyInstance runs decide inside one write transaction that holds the instance id and every other
	// instance of (subject, meterKey), so that the overlap check and the write are one atomic step, also
	// against another process on the same store. When decide says Changed, the store writes Result.Instance
	// (never altering an existing row's subject, meter, sku or started_at) and appends Result.New to the
	// history; otherwise it writes nothing. decide's error is returned as it is, and nothing is written.
	ApplyInstance(ctx context.Context, id, subject, meterKey string, decide Decider) (Result, error)
	// ListInstances returns the instances matching f, each with its history, ordered by subject, meter,
	// started_at and id.
	ListInstances(ctx context.Context, f Filter) ([]Instance, error)
	// GetInstance returns the instance id with its history; false when there is none.
	GetInstance(ctx context.Context, id string) (Instance, bool, error)
}
