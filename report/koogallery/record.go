package koogallery

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// TimeLayout is KooGallery's SDR time layout, yyyyMMdd'T'HHmmss'Z', always UTC.
const TimeLayout = "20060102T150405Z"

// MaxBatch is KooGallery's limit of records per call (more is answered 9003).
const MaxBatch = 1000

// MaxUsageValue is the largest usage_value KooGallery accepts: the field is a Double(12,4).
const MaxUsageValue = "99999999.9999"

// MaxIDLen is KooGallery's limit on instance_id, metering_sn and relate_pkg_instance, counted in bytes (a
// multi-byte character counts for its bytes, which can only make the check stricter than KooGallery's).
const MaxIDLen = 64

// usageDecimals is the precision of usage_value (Double(12,4)).
const usageDecimals = 4

// Record is one SDR as sent. Times are UTC instants; they are formatted yyyyMMdd'T'HHmmss'Z' and must be whole
// seconds, since the layout cannot carry fractions and silently cutting them could move begin_time before the
// instance's start (KooGallery code 011).
type Record struct {
	InstanceID                     string
	MeteringSN                     string
	RecordTime, BeginTime, EndTime time.Time
	UsageValue                     decimal.Decimal
	RelatePkgInstance              string // omitted when empty
}

// ValueAs selects the JSON type of usage_value: the English docs type it Double, the Chinese ones String
// (config koogallery.usage_value_as).
type ValueAs string

// The two forms of usage_value.
const (
	ValueAsNumber ValueAs = "number"
	ValueAsString ValueAs = "string"
)

// EncodeRecord returns the canonical JSON of one record: object keys in lexicographic order (begin_time,
// end_time, instance_id, metering_sn, record_time, relate_pkg_instance, usage_value), no spaces, usage_value in
// plain notation without trailing zeros, as a JSON number or a JSON string.
//
// It returns an error listing every problem of an invalid record: an empty or too long id, invalid UTF-8, a zero
// or fractional-second time, begin_time after end_time, end_time after record_time, a usage_value <= 0, with more
// than 4 decimals or above MaxUsageValue. These are the checks KooGallery answers 0100 or 011 for; catching them
// here keeps one bad record from costing a bisection of its batch.
//
// The bytes are what the ledger stores and what every retry sends again; they do not depend on any global
// setting of the decimal package.
func EncodeRecord(r Record, as ValueAs) ([]byte, error) {
	var probs []error
	add := func(format string, args ...any) { probs = append(probs, fmt.Errorf(format, args...)) }
	if as != ValueAsNumber && as != ValueAsString {
		add("usage_value_as: %q must be %q or %q", as, ValueAsNumber, ValueAsString)
	}
	checkID := func(field, v string, required bool) {
		switch {
		case v == "" && required:
			add("%s: required", field)
		case len(v) > MaxIDLen:
			add("%s: %d bytes, at most %d", field, len(v), MaxIDLen)
		case !utf8.ValidString(v):
			add("%s: not valid UTF-8", field)
		}
	}
	checkID("instance_id", r.InstanceID, true)
	checkID("metering_sn", r.MeteringSN, true)
	checkID("relate_pkg_instance", r.RelatePkgInstance, false)

	var ts [3]string
	for i, t := range []struct {
		field string
		t     time.Time
	}{{"begin_time", r.BeginTime}, {"end_time", r.EndTime}, {"record_time", r.RecordTime}} {
		s, err := formatTime(t.t)
		if err != nil {
			add("%s: %v", t.field, err)
		}
		ts[i] = s
	}
	if r.BeginTime.After(r.EndTime) {
		add("begin_time %s is after end_time %s", ts[0], ts[1])
	}
	if r.EndTime.After(r.RecordTime) {
		// KooGallery wants begin <= end <= report time (spec §3): an SDR cannot end after it was produced.
		add("end_time %s is after record_time %s", ts[1], ts[2])
	}
	value, err := FormatUsageValue(r.UsageValue)
	if err != nil {
		add("usage_value: %v", err)
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("invalid record (metering_sn %q): %w", truncate(r.MeteringSN, MaxIDLen), errors.Join(probs...))
	}

	var b bytes.Buffer
	b.Grow(256)
	b.WriteString(`{"begin_time":"`)
	b.WriteString(ts[0])
	b.WriteString(`","end_time":"`)
	b.WriteString(ts[1])
	b.WriteString(`","instance_id":`)
	writeJSONString(&b, r.InstanceID)
	b.WriteString(`,"metering_sn":`)
	writeJSONString(&b, r.MeteringSN)
	b.WriteString(`,"record_time":"`)
	b.WriteString(ts[2])
	b.WriteByte('"')
	if r.RelatePkgInstance != "" {
		b.WriteString(`,"relate_pkg_instance":`)
		writeJSONString(&b, r.RelatePkgInstance)
	}
	b.WriteString(`,"usage_value":`)
	if as == ValueAsString {
		b.WriteByte('"')
		b.WriteString(value)
		b.WriteByte('"')
	} else {
		b.WriteString(value)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// FormatUsageValue returns v as KooGallery takes it: plain notation (never an exponent), no trailing zeros, no
// trailing point. It errors when v is not positive, has more than 4 decimals or exceeds MaxUsageValue.
func FormatUsageValue(v decimal.Decimal) (string, error) {
	switch {
	case v.Sign() <= 0:
		return "", fmt.Errorf("%s must be positive (KooGallery refuses zero)", v.StringFixed(max(0, -v.Exponent())))
	case !v.Equal(v.Truncate(usageDecimals)):
		return "", fmt.Errorf("%s has more than %d decimals", v.StringFixed(-v.Exponent()), usageDecimals)
	case v.GreaterThan(decimal.RequireFromString(MaxUsageValue)):
		return "", fmt.Errorf("%s is above %s, the largest Double(12,4)", v.StringFixed(usageDecimals), MaxUsageValue)
	}
	// StringFixed never uses scientific notation, whatever decimal.UseScientificNotation says; String would.
	s := v.StringFixed(usageDecimals)
	s = strings.TrimRight(s, "0")
	s = strings.TrimSuffix(s, ".")
	return s, nil
}

// formatTime formats t in TimeLayout after checking that the layout can carry it exactly.
func formatTime(t time.Time) (string, error) {
	switch {
	case t.IsZero():
		return "", errors.New("required")
	case t.Nanosecond() != 0:
		return "", fmt.Errorf("%s is not a whole second", t.UTC().Format(time.RFC3339Nano))
	}
	s := t.UTC().Format(TimeLayout)
	if len(s) != len(TimeLayout) {
		return "", fmt.Errorf("%s does not fit the layout yyyyMMddTHHmmssZ", t.UTC().Format(time.RFC3339))
	}
	return s, nil
}

// Body assembles {"usage_records":[<rec>,<rec>...]} from encoded records. The one top-level key is trivially in
// natural order, so the body stays canonical when its records are.
func Body(records [][]byte) []byte {
	n := len(`{"usage_records":[]}`) + len(records)
	for _, r := range records {
		n += len(r)
	}
	b := make([]byte, 0, n)
	b = append(b, `{"usage_records":[`...)
	for i, r := range records {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, r...)
	}
	return append(b, "]}"...)
}

// writeJSONString writes s as a JSON string with the minimal escaping of RFC 8259 (quote, backslash, control
// characters), unlike encoding/json, which also escapes <, > and &: the canonical form should not depend on an
// HTML-safety choice.
func writeJSONString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
