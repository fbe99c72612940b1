package kgsim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"go.yaml.in/yaml/v3"
)

// Life is what the simulator knows of an instance: when it exists and when it is frozen. Zero times are open:
// a zero Start has existed forever, a zero End is not released, a zero FrozenFrom is never frozen, a zero
// FrozenUntil stays frozen.
type Life struct {
	Start, End              time.Time
	FrozenFrom, FrozenUntil time.Time
}

// frozenAt reports whether the instance is frozen at t (spec §5: usage during a freeze is refused, 013).
func (l Life) frozenAt(t time.Time) bool {
	return !l.FrozenFrom.IsZero() && !t.Before(l.FrozenFrom) && (l.FrozenUntil.IsZero() || t.Before(l.FrozenUntil))
}

// instanceSpec is one entry of an instances file. The fields of meterd's own instance specs (DESIGN.md §3) are
// accepted, and those the simulator has no use for ignored, so that `meterd instances apply -f` files and
// meterd configs serve as they are; a misspelt key is still an error.
type instanceSpec struct {
	InstanceID  string  `yaml:"instance_id"`
	StartedAt   string  `yaml:"started_at"`
	ReleasedAt  *string `yaml:"released_at"`
	Status      string  `yaml:"status"`
	FrozenFrom  *string `yaml:"frozen_from"`
	FrozenUntil *string `yaml:"frozen_until"`

	Subject           string  `yaml:"subject"`
	Meter             string  `yaml:"meter"`
	SKU               string  `yaml:"sku"`
	RelatePkgInstance *string `yaml:"relate_pkg_instance"`
	Site              *string `yaml:"site"`
}

// ParseInstances reads the instances of a YAML (or JSON) document: a list of specs, or a mapping whose
// instances: key holds the list (its other keys are ignored, so a meterd config file works). Each spec has
// instance_id, optional started_at and released_at (RFC 3339), and optional status (ACTIVE, FROZEN, RELEASED),
// frozen_from and frozen_until. FROZEN without frozen_from means frozen since started_at. Every problem is
// reported, prefixed with its path.
func ParseInstances(data []byte) (map[string]Life, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	out := map[string]Life{}
	if len(doc.Content) == 0 {
		return out, nil
	}
	list := doc.Content[0]
	if list.Kind == yaml.MappingNode {
		var found *yaml.Node
		for i := 0; i+1 < len(list.Content); i += 2 {
			if list.Content[i].Value == "instances" {
				found = list.Content[i+1]
			}
		}
		if found == nil {
			return nil, errors.New("no instances: key")
		}
		list = found
	}
	if list.Kind != yaml.SequenceNode {
		return nil, errors.New("want a list of instances, or a mapping with an instances: list")
	}
	// Re-encoded so that a decoder with KnownFields checks the keys: yaml.Node.Decode cannot.
	raw, err := yaml.Marshal(list)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var specs []instanceSpec
	if err := dec.Decode(&specs); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	var probs []error
	for i, s := range specs {
		p := fmt.Sprintf("instances[%d]", i)
		l, err := s.life(p)
		if err != nil {
			probs = append(probs, err)
			continue
		}
		if _, dup := out[s.InstanceID]; dup {
			probs = append(probs, fmt.Errorf("%s.instance_id: %q defined twice", p, s.InstanceID))
			continue
		}
		out[s.InstanceID] = l
	}
	if len(probs) > 0 {
		return nil, errors.Join(probs...)
	}
	return out, nil
}

func (s instanceSpec) life(path string) (Life, error) {
	var probs []error
	add := func(field, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s.%s: %s", path, field, fmt.Sprintf(format, args...)))
	}
	parse := func(field string, v *string) time.Time {
		if v == nil || *v == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, *v)
		if err != nil {
			add(field, "%q is not an RFC 3339 time", *v)
		}
		return t.UTC()
	}
	var l Life
	if s.InstanceID == "" {
		add("instance_id", "required")
	}
	l.Start = parse("started_at", &s.StartedAt)
	l.End = parse("released_at", s.ReleasedAt)
	l.FrozenFrom = parse("frozen_from", s.FrozenFrom)
	l.FrozenUntil = parse("frozen_until", s.FrozenUntil)
	switch s.Status {
	case "", "ACTIVE":
	case "FROZEN":
		if l.FrozenFrom.IsZero() {
			l.FrozenFrom = l.Start
			if l.FrozenFrom.IsZero() {
				l.FrozenFrom = time.Unix(0, 0).UTC()
			}
		}
	case "RELEASED":
		if l.End.IsZero() {
			add("released_at", "required when status is RELEASED")
		}
	default:
		add("status", "%q must be ACTIVE, FROZEN or RELEASED", s.Status)
	}
	if !l.Start.IsZero() && !l.End.IsZero() && !l.End.After(l.Start) {
		add("released_at", "must be after started_at")
	}
	if !l.FrozenFrom.IsZero() && !l.FrozenUntil.IsZero() && !l.FrozenUntil.After(l.FrozenFrom) {
		add("frozen_until", "must be after frozen_from")
	}
	return l, errors.Join(probs...)
}
