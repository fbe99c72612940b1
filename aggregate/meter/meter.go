package meter

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/ohler55/ojg/jp"
	"github.com/shopspring/decimal"
)

// Aggregation is how a meter combines the events of one instance-hour.
type Aggregation string

// The aggregations of DESIGN.md §3. SUM and COUNT are additive (carry, late usage carried forward); MAX and
// UNIQUE_COUNT are not (rounded, never carried, late events only dropped).
const (
	Sum         Aggregation = "SUM"
	Count       Aggregation = "COUNT"
	Max         Aggregation = "MAX"
	UniqueCount Aggregation = "UNIQUE_COUNT"
)

// Additive reports whether hourly values of this aggregation may be split and carried between hours.
func (a Aggregation) Additive() bool { return a == Sum || a == Count }

// MaxUniqueKeyLen bounds the distinct key of a UNIQUE_COUNT event, so one hostile event cannot store megabytes.
const MaxUniqueKeyLen = 256

// Spec is one meter as written in the config file.
type Spec struct {
	Key           string `yaml:"key" json:"key"`
	EventType     string `yaml:"event_type" json:"event_type"`
	Aggregation   string `yaml:"aggregation" json:"aggregation"`
	ValueProperty string `yaml:"value_property" json:"value_property"`
}

// Meter is a validated meter.
type Meter struct {
	Key           string
	EventType     string
	Aggregation   Aggregation
	ValueProperty string
	path          jp.Expr
}

// Value is what one event contributes to one meter: a quantity for SUM, MAX and COUNT (1 per event), or the
// distinct key for UNIQUE_COUNT (canonical JSON of the scalar, so "a" and 1 and 1.0 are told apart correctly).
type Value struct {
	Meter    string
	Quantity decimal.Decimal
	Key      string
}

// Text is the value as stored: the quantity in plain notation, or the distinct key.
func (v Value) Text(agg Aggregation) string {
	if agg == UniqueCount {
		return v.Key
	}
	return v.Quantity.String()
}

var keyPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$`)

// Set is the validated meters of a config, indexed by event type.
type Set struct {
	all    []*Meter
	byType map[string][]*Meter
	byKey  map[string]*Meter
}

// NewSet validates specs and builds the set. Every problem is reported, each prefixed by its path
// (prefix[i].field), and nothing is returned when there is any.
func NewSet(specs []Spec, prefix string) (*Set, error) {
	s := &Set{byType: map[string][]*Meter{}, byKey: map[string]*Meter{}}
	var errs []error
	for i, sp := range specs {
		p := fmt.Sprintf("%s[%d]", prefix, i)
		m, err := newMeter(sp, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := s.byKey[m.Key]; dup {
			errs = append(errs, fmt.Errorf("%s.key: duplicate meter key %q", p, m.Key))
			continue
		}
		s.all = append(s.all, m)
		s.byKey[m.Key] = m
		s.byType[m.EventType] = append(s.byType[m.EventType], m)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

func newMeter(sp Spec, p string) (*Meter, error) {
	var errs []error
	if !keyPattern.MatchString(sp.Key) {
		errs = append(errs, fmt.Errorf("%s.key: %q must be 1-64 characters of letters, digits, '_', '.', ':' or '-'", p, sp.Key))
	}
	if strings.TrimSpace(sp.EventType) == "" {
		errs = append(errs, fmt.Errorf("%s.event_type: required", p))
	}
	agg := Aggregation(strings.ToUpper(sp.Aggregation))
	switch agg {
	case Sum, Count, Max, UniqueCount:
	case "":
		errs = append(errs, fmt.Errorf("%s.aggregation: required (SUM, COUNT, MAX or UNIQUE_COUNT)", p))
	default:
		errs = append(errs, fmt.Errorf("%s.aggregation: unknown %q (want SUM, COUNT, MAX or UNIQUE_COUNT)", p, sp.Aggregation))
	}
	m := &Meter{Key: sp.Key, EventType: sp.EventType, Aggregation: agg, ValueProperty: sp.ValueProperty}
	switch {
	case agg == Count && sp.ValueProperty != "":
		errs = append(errs, fmt.Errorf("%s.value_property: COUNT meters count events and take no value", p))
	case agg != Count && agg != "" && sp.ValueProperty == "":
		errs = append(errs, fmt.Errorf("%s.value_property: required for %s", p, agg))
	case sp.ValueProperty != "":
		path, err := parsePath(sp.ValueProperty)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.value_property: %w", p, err))
		}
		m.path = path
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

// parsePath accepts a singular JSONPath into data: $ followed by child names and array indexes. Wildcards,
// descent, unions and filters could select several values, which has no meaning for one event's quantity.
func parsePath(s string) (jp.Expr, error) {
	if !strings.HasPrefix(s, "$") {
		return nil, fmt.Errorf("%q must be a JSONPath starting with $ (e.g. $.tokens)", s)
	}
	x, err := jp.ParseString(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a valid JSONPath: %v", s, err)
	}
	if len(x) < 2 {
		return nil, fmt.Errorf("%q must name a property inside data (e.g. $.tokens)", s)
	}
	for _, f := range x[1:] {
		switch f.(type) {
		case jp.Child, jp.Nth:
		default:
			return nil, fmt.Errorf("%q must select exactly one value: only .name, ['name'] and [index] are allowed", s)
		}
	}
	return x, nil
}

// All returns the meters in config order.
func (s *Set) All() []*Meter { return s.all }

// ForType returns the meters fed by events of type t (several meters may share one event type).
func (s *Set) ForType(t string) []*Meter { return s.byType[t] }

// Get returns the meter with the given key.
func (s *Set) Get(key string) (*Meter, bool) {
	m, ok := s.byKey[key]
	return m, ok
}

// Extract returns what an event's data contributes to m. data is the event's data decoded with UseNumber (nil
// when the event has none). The error says what is wrong with the value, without the meter key: callers add it.
func (m *Meter) Extract(data any) (Value, error) {
	v := Value{Meter: m.Key}
	if m.Aggregation == Count {
		v.Quantity = decimal.NewFromInt(1)
		return v, nil
	}
	raw, found := m.path.FirstFound(data)
	if !found {
		raw = nil
	}
	return m.extractFound(raw)
}

// extractFound judges the value found at the meter's path (nil when there is none) for a SUM, MAX or UNIQUE_COUNT
// meter.
func (m *Meter) extractFound(raw any) (Value, error) {
	v := Value{Meter: m.Key}
	if raw == nil {
		return v, fmt.Errorf("value %s missing from data", m.ValueProperty)
	}
	if m.Aggregation == UniqueCount {
		key, err := uniqueKey(raw)
		if err != nil {
			return v, fmt.Errorf("value %s: %w", m.ValueProperty, err)
		}
		v.Key = key
		return v, nil
	}
	var text string
	switch t := raw.(type) {
	case json.Number:
		text = string(t)
	case string:
		text = t
	default:
		return v, fmt.Errorf("value %s: must be a decimal number or decimal string, got %s", m.ValueProperty, jsonKind(raw))
	}
	q, err := ParseQuantity(text)
	if err != nil {
		return v, fmt.Errorf("value %s: %w", m.ValueProperty, err)
	}
	v.Quantity = q
	return v, nil
}

// uniqueKey turns a JSON scalar into its canonical text: numbers by decimal value (1 and 1.0 are one key),
// strings and booleans as JSON.
func uniqueKey(raw any) (string, error) {
	var key string
	switch t := raw.(type) {
	case json.Number:
		if err := checkSyntax(string(t)); err != nil {
			return "", err
		}
		d, err := decimal.NewFromString(string(t))
		if err != nil {
			return "", fmt.Errorf("%q is not a number", string(t))
		}
		key = d.String()
	case string, bool:
		b, err := json.Marshal(t)
		if err != nil {
			return "", err
		}
		key = string(b)
	default:
		return "", fmt.Errorf("must be a JSON scalar (string, number or boolean), got %s", jsonKind(raw))
	}
	if len(key) > MaxUniqueKeyLen {
		return "", fmt.Errorf("distinct key longer than %d bytes", MaxUniqueKeyLen)
	}
	return key, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	case string:
		return "a string"
	default:
		return fmt.Sprintf("%T", v)
	}
}
