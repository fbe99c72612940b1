package instance

import (
	"errors"
	"fmt"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

// MaxIDLen is KooGallery's limit on instance_id and relate_pkg_instance (spec/koogallery.md §1); meterd applies
// it to subject too, the limit of an event's subject.
const MaxIDLen = 64

// Spec is a pay-per-use instance as written in the config file (DESIGN.md §3), in a file given to
// `meterd instances apply -f`, or as the body of PUT /v1/instances/{id}.
type Spec struct {
	InstanceID string `yaml:"instance_id" json:"instance_id"`
	// Subject is the event subject that feeds this instance; empty means the instance id.
	Subject string `yaml:"subject" json:"subject"`
	Meter   string `yaml:"meter" json:"meter"`
	SKU     string `yaml:"sku" json:"sku"`
	// Status is ACTIVE, FROZEN or RELEASED; empty means ACTIVE.
	Status string `yaml:"status" json:"status"`
	// StartedAt and ReleasedAt are RFC 3339 (any offset, fractions accepted, kept to the millisecond).
	StartedAt         string  `yaml:"started_at" json:"started_at"`
	ReleasedAt        *string `yaml:"released_at" json:"released_at"`
	RelatePkgInstance *string `yaml:"relate_pkg_instance" json:"relate_pkg_instance"`
	Site              *string `yaml:"site" json:"site"`
}

// Refs are the names a spec refers to, checked by Validate: configured meters, the meter each SKU's plan prices,
// and extra KooGallery sites. A nil func skips its check: the config loader leaves out what is itself broken
// (an invalid meter list), so that one mistake is reported once and not again on every instance.
type Refs struct {
	Meter     func(key string) bool
	PlanMeter func(sku string) (meterKey string, ok bool)
	Site      func(name string) bool
}

// NewRefs checks references against a validated config's meters, plan catalog and site names. A nil set or
// catalog knows no meter or SKU (every spec naming one is refused), rather than failing later in a request.
func NewRefs(meters *meter.Set, catalog *pricing.Catalog, sites []string) Refs {
	known := make(map[string]bool, len(sites))
	for _, s := range sites {
		known[s] = true
	}
	return Refs{
		Meter: func(key string) bool {
			if meters == nil {
				return false
			}
			_, ok := meters.Get(key)
			return ok
		},
		PlanMeter: func(sku string) (string, bool) {
			if catalog == nil {
				return "", false
			}
			// NewCatalog guarantees that every version of a SKU prices the same meter.
			vs := catalog.Versions(sku)
			if len(vs) == 0 {
				return "", false
			}
			return vs[0].Meter, true
		},
		Site: func(name string) bool { return known[name] },
	}
}

// Validate checks the spec on its own and against refs. It reports every problem, each prefixed with path and
// the field (path "instances[3]" gives "instances[3].started_at: ..."; an empty path gives "started_at: ...").
// The error is nil or an *InvalidError.
func (s Spec) Validate(path string, refs Refs) error {
	_, err := s.parse(path, refs)
	return err
}

// ValidateAll validates a list of specs, reporting every problem of every spec and ids used twice, with paths
// built from pathPrefix ("instances" gives "instances[3].sku: ..."). The error is nil or an *InvalidError.
func ValidateAll(specs []Spec, pathPrefix string, refs Refs) error {
	_, err := parseAll(specs, pathPrefix, refs)
	return err
}

func parseAll(specs []Spec, pathPrefix string, refs Refs) ([]Instance, error) {
	var probs []error
	out := make([]Instance, len(specs))
	seen := make(map[string]int, len(specs))
	for i, s := range specs {
		p := fmt.Sprintf("%s[%d]", pathPrefix, i)
		in, err := s.parse(p, refs)
		if err != nil {
			probs = append(probs, err.(*InvalidError).Problems...)
		}
		if prev, dup := seen[s.InstanceID]; dup && s.InstanceID != "" {
			probs = append(probs, fmt.Errorf("%s.instance_id: %q already defined at %s[%d]", p, s.InstanceID, pathPrefix, prev))
		} else {
			seen[s.InstanceID] = i
		}
		out[i] = in
	}
	if len(probs) > 0 {
		return nil, &InvalidError{Problems: probs}
	}
	return out, nil
}

// parse validates the spec and returns the instance it describes, without history.
func (s Spec) parse(path string, refs Refs) (Instance, error) {
	var probs []error
	add := func(field, format string, args ...any) {
		p := field
		if path != "" {
			p = path + "." + field
		}
		probs = append(probs, fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...)))
	}
	switch n := len(s.InstanceID); {
	case n == 0:
		add("instance_id", "required")
	case n > MaxIDLen:
		add("instance_id", "%d characters, at most %d (KooGallery's limit)", n, MaxIDLen)
	}
	if len(s.Subject) > MaxIDLen {
		add("subject", "%d characters, at most %d", len(s.Subject), MaxIDLen)
	}
	meterOK := s.Meter != ""
	switch {
	case s.Meter == "":
		add("meter", "required")
	case refs.Meter != nil:
		if meterOK = refs.Meter(s.Meter); !meterOK {
			add("meter", "%q is not a configured meter", s.Meter)
		}
	}
	if s.SKU == "" {
		add("sku", "required (selects the plan)")
	} else if refs.PlanMeter != nil {
		if pm, ok := refs.PlanMeter(s.SKU); !ok {
			add("sku", "%q has no plan", s.SKU)
		} else if meterOK && pm != "" && pm != s.Meter {
			// The plan prices one meter's usage; an instance of another meter would be billed at the wrong price.
			add("sku", "%q prices meter %q, not the instance's meter %q", s.SKU, pm, s.Meter)
		}
	}
	status := Status(s.Status)
	if status == "" {
		status = Active
	}
	if !status.valid() {
		add("status", "%q must be ACTIVE, FROZEN or RELEASED", s.Status)
	}
	var start, rel time.Time
	startOK := false
	switch t, err := parseTime(s.StartedAt); {
	case s.StartedAt == "":
		add("started_at", "required (RFC 3339)")
	case err != nil:
		add("started_at", "%q is not an RFC 3339 time", s.StartedAt)
	default:
		start, startOK = t, true
	}
	if s.ReleasedAt != nil {
		t, err := parseTime(*s.ReleasedAt)
		switch {
		case err != nil:
			add("released_at", "%q is not an RFC 3339 time", *s.ReleasedAt)
		case startOK && !t.After(start):
			add("released_at", "%s must be after started_at", *s.ReleasedAt)
		default:
			rel = t
		}
		// Releasing is final, so it must be said in so many words: a released_at beside ACTIVE or FROZEN is more
		// likely a mistake than a release.
		switch {
		case s.Status == "":
			add("status", "not given (so ACTIVE) while released_at is set: a release must say status RELEASED")
		case status == Active || status == Frozen:
			add("status", "%s while released_at is set: a release must say status RELEASED", status)
		}
	} else if status == Released {
		add("released_at", "required when status is RELEASED")
	}
	if s.RelatePkgInstance != nil && len(*s.RelatePkgInstance) > MaxIDLen {
		add("relate_pkg_instance", "at most %d characters", MaxIDLen)
	}
	if s.Site != nil && refs.Site != nil && !refs.Site(*s.Site) {
		add("site", "%q is not in koogallery.sites", *s.Site)
	}
	if len(probs) > 0 {
		return Instance{}, &InvalidError{Problems: probs}
	}
	in := Instance{ID: s.InstanceID, Subject: s.Subject, Meter: s.Meter, SKU: s.SKU, Status: status,
		StartedAt: start, ReleasedAt: rel, RelatePkgInstance: deref(s.RelatePkgInstance), Site: deref(s.Site)}
	if in.Subject == "" {
		in.Subject = in.ID
	}
	return in, nil
}

// parseTime reads RFC 3339 and keeps milliseconds, the precision of the stores and of event times (which are
// floored to the millisecond too, so an event at an instance's exact start still matches it).
func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, err
	}
	return t.UTC().Truncate(time.Millisecond), nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// InvalidError is a spec that is wrong on its own or names an unknown meter, plan or site: the caller must fix
// the spec (HTTP 400, exit code 2). Problems lists each, prefixed with its path.
type InvalidError struct {
	Problems []error
}

func (e *InvalidError) Error() string { return errors.Join(e.Problems...).Error() }

// Unwrap returns the problems.
func (e *InvalidError) Unwrap() []error { return e.Problems }
