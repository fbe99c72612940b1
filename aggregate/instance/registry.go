package instance

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Registry applies instance specs through a Store and answers queries. It holds no state of its own, so several
// registries (serve, and the CLI in another process) may work on one store at once. Safe for concurrent use.
type Registry struct {
	store Store
	refs  Refs
	now   func() time.Time
}

// NewRegistry returns a registry over store that checks every spec against refs (see NewRefs) and records
// changes at now (time.Now when nil).
func NewRegistry(store Store, refs Refs, now func() time.Time) (*Registry, error) {
	if store == nil {
		return nil, errors.New("instance registry: store is required")
	}
	if refs.Meter == nil || refs.PlanMeter == nil || refs.Site == nil {
		// The config loader may skip a check; a running registry must not, or an API call could register an
		// instance that no plan prices.
		return nil, errors.New("instance registry: refs must check meters, plans and sites (use NewRefs)")
	}
	if now == nil {
		now = time.Now
	}
	return &Registry{store: store, refs: refs, now: now}, nil
}

// Apply validates spec and applies it atomically. The error is an *InvalidError (the spec is wrong), an error
// wrapping *ConflictError (the lifecycle refuses it; several are joined when several fields conflict), or a
// storage error.
func (r *Registry) Apply(ctx context.Context, spec Spec) (Result, error) {
	next, err := spec.parse("", r.refs)
	if err != nil {
		return Result{}, err
	}
	return r.apply(ctx, next)
}

func (r *Registry) apply(ctx context.Context, next Instance) (Result, error) {
	res, err := r.store.ApplyInstance(ctx, next.ID, next.Subject, next.Meter, func(cur *Instance, sameKey []Instance) (Result, error) {
		// The clock is read inside the store's transaction, so that changes recorded by two processes are
		// timestamped in the order they were committed.
		return decide(cur, next, sameKey, r.now())
	})
	if err != nil {
		if isConflict(err) {
			return Result{}, err
		}
		return Result{}, fmt.Errorf("apply instance %s: %w", next.ID, err)
	}
	return res, nil
}

// ApplyAll applies a list of specs: the config's instances at start, or a file given to `meterd instances
// apply`. Every spec is validated first; if any is invalid nothing is applied and the error, an *InvalidError,
// lists every problem with its path (pathPrefix "instances" gives "instances[3].sku: ..."). Then each spec is
// applied in its own transaction, in order, and a conflict does not stop the others. A spec refused only
// because it overlaps another instance is retried after the rest, so that one file may release an instance and
// register its successor in either order.
//
// The results are aligned with specs; a refused spec's Result is the zero value. The error joins every
// *ConflictError, each with its path. A storage error stops the run and is returned alone, beside the results
// of the specs applied before it.
func (r *Registry) ApplyAll(ctx context.Context, specs []Spec, pathPrefix string) ([]Result, error) {
	parsed, err := parseAll(specs, pathPrefix, r.refs)
	if err != nil {
		return nil, err
	}
	results := make([]Result, len(specs))
	failed := make(map[int]error)
	pending := make([]int, len(specs))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		var retry []int
		progress := false
		for _, i := range pending {
			res, err := r.apply(ctx, parsed[i])
			switch {
			case err == nil:
				results[i], progress = res, true
				delete(failed, i)
			case isConflict(err):
				failed[i] = err
				if onlyOverlaps(err) {
					retry = append(retry, i)
				}
			default:
				return results, fmt.Errorf("%s[%d]: %w", pathPrefix, i, err)
			}
		}
		if !progress {
			break
		}
		pending = retry
	}
	var probs []error
	for i := range specs {
		if err, ok := failed[i]; ok {
			for _, ce := range conflicts(err) {
				c := *ce
				c.Path = fmt.Sprintf("%s[%d]", pathPrefix, i)
				probs = append(probs, &c)
			}
		}
	}
	return results, errors.Join(probs...)
}

// List returns the instances matching f, with their histories.
func (r *Registry) List(ctx context.Context, f Filter) ([]Instance, error) {
	if f.Status != "" && !f.Status.valid() {
		return nil, &InvalidError{Problems: []error{fmt.Errorf("status: %q must be ACTIVE, FROZEN or RELEASED", f.Status)}}
	}
	out, err := r.store.ListInstances(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	return out, nil
}

// Get returns one instance with its history; false when there is none.
func (r *Registry) Get(ctx context.Context, id string) (Instance, bool, error) {
	in, ok, err := r.store.GetInstance(ctx, id)
	if err != nil {
		return Instance{}, false, fmt.Errorf("get instance %s: %w", id, err)
	}
	return in, ok, nil
}

func isConflict(err error) bool {
	var ce *ConflictError
	return errors.As(err, &ce)
}

// conflicts returns the *ConflictErrors of err, which may join several.
func conflicts(err error) []*ConflictError {
	var out []*ConflictError
	var walk func(error)
	walk = func(e error) {
		if ce, ok := e.(*ConflictError); ok {
			out = append(out, ce)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// onlyOverlaps reports whether every conflict of err is an overlap with another instance: the only kind another
// spec of the same run can resolve (by releasing that instance).
func onlyOverlaps(err error) bool {
	cs := conflicts(err)
	for _, c := range cs {
		if c.Other == "" {
			return false
		}
	}
	return len(cs) > 0
}
