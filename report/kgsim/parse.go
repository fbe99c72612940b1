package kgsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/koogallery"
)

// Field limits of spec §1.
const (
	maxIDLen    = 64
	maxValueLen = 20
	maxDecimals = 4
)

// wireRecord is one record as received, before its values are checked.
type wireRecord struct {
	InstanceID, MeteringSN, RecordTime, BeginTime, EndTime, UsageValue, RelatePkgInstance string
	has                                                                                   map[string]bool
}

// record is a checked record.
type record struct {
	InstanceID, MeteringSN         string
	RecordTime, BeginTime, EndTime time.Time
	UsageValue                     decimal.Decimal
	RelatePkgInstance              string
}

// rejection is a call-level refusal.
type rejection struct {
	status int
	code   string
	msg    string
}

func reject(code, format string, args ...any) *rejection {
	return &rejection{status: statusOf(code), code: code, msg: fmt.Sprintf(format, args...)}
}

// recordKey reports whether k is a record field of spec §1.
func recordKey(k string) bool {
	switch k {
	case "instance_id", "metering_sn", "record_time", "begin_time", "end_time", "usage_value", "relate_pkg_instance":
		return true
	}
	return false
}

// parseBody reads {"usage_records":[...]} strictly: JSON syntax, UTF-8, known keys only, each once, values of
// the right JSON type, nothing after the object. Keys out of natural order are reported as 0102, after the
// syntax (a server that sorts before verifying the signature could not match an unsorted body).
func parseBody(data []byte) ([]wireRecord, *rejection) {
	if !utf8.Valid(data) {
		// encoding/json would silently replace the bad bytes, and the record billed would not be the one sent.
		return nil, reject("0100", "parameter invalid: body is not valid UTF-8")
	}
	p := &parser{dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	recs, err := p.body()
	if err != nil {
		return nil, reject("0100", "parameter invalid: %v", err)
	}
	if p.order != "" {
		return nil, reject("0102", "signature check failed: %s (the body is signed after natural sorting)", p.order)
	}
	return recs, nil
}

type parser struct {
	dec   *json.Decoder
	order string // the first key-order violation
}

func (p *parser) delim(want json.Delim, what string) error {
	tok, err := p.dec.Token()
	if err != nil {
		return fmt.Errorf("%s: %w", what, syntaxErr(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%s: want %q", what, string(want))
	}
	return nil
}

func (p *parser) key(what string) (string, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, syntaxErr(err))
	}
	return tok.(string), nil // inside an object, Token returns keys as strings
}

func (p *parser) body() ([]wireRecord, error) {
	if err := p.delim('{', "body"); err != nil {
		return nil, err
	}
	var recs []wireRecord
	seen := false
	for p.dec.More() {
		k, err := p.key("body")
		if err != nil {
			return nil, err
		}
		if k != "usage_records" {
			return nil, fmt.Errorf("body: unknown key %q (want only usage_records)", k)
		}
		if seen {
			return nil, errors.New("body: usage_records given twice")
		}
		seen = true
		if err := p.delim('[', "usage_records"); err != nil {
			return nil, err
		}
		for i := 0; p.dec.More(); i++ {
			r, err := p.record(fmt.Sprintf("usage_records[%d]", i))
			if err != nil {
				return nil, err
			}
			recs = append(recs, r)
		}
		if err := p.delim(']', "usage_records"); err != nil {
			return nil, err
		}
	}
	if err := p.delim('}', "body"); err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("body: data after the JSON object")
	}
	if !seen {
		return nil, errors.New("usage_records: required")
	}
	return recs, nil
}

func (p *parser) record(path string) (wireRecord, error) {
	r := wireRecord{has: map[string]bool{}}
	if err := p.delim('{', path); err != nil {
		return r, err
	}
	prev := ""
	for p.dec.More() {
		k, err := p.key(path)
		if err != nil {
			return r, err
		}
		if !recordKey(k) {
			return r, fmt.Errorf("%s: unknown key %q", path, k)
		}
		if r.has[k] {
			return r, fmt.Errorf("%s.%s: given twice", path, k)
		}
		if k < prev && p.order == "" {
			p.order = fmt.Sprintf("%s: key %q after %q", path, k, prev)
		}
		prev = k
		r.has[k] = true
		tok, err := p.dec.Token()
		if err != nil {
			return r, fmt.Errorf("%s.%s: %w", path, k, syntaxErr(err))
		}
		var v string
		switch t := tok.(type) {
		case string:
			v = t
		case json.Number:
			if k != "usage_value" {
				return r, fmt.Errorf("%s.%s: must be a string", path, k)
			}
			v = t.String()
		default:
			if k == "usage_value" {
				return r, fmt.Errorf("%s.%s: must be a number or a string", path, k)
			}
			return r, fmt.Errorf("%s.%s: must be a string", path, k)
		}
		switch k {
		case "instance_id":
			r.InstanceID = v
		case "metering_sn":
			r.MeteringSN = v
		case "record_time":
			r.RecordTime = v
		case "begin_time":
			r.BeginTime = v
		case "end_time":
			r.EndTime = v
		case "usage_value":
			r.UsageValue = v
		case "relate_pkg_instance":
			r.RelatePkgInstance = v
		}
	}
	return r, p.delim('}', path)
}

func syntaxErr(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("unexpected end of body")
	}
	return err
}

// check validates the fields of one record: required, lengths, the exact time layout, and the usage value.
func (w wireRecord) check(path string) (record, []string) {
	var probs []string
	add := func(field, format string, args ...any) {
		probs = append(probs, fmt.Sprintf("%s.%s: %s", path, field, fmt.Sprintf(format, args...)))
	}
	id := func(field, v string, required bool) {
		switch {
		case !w.has[field] && required:
			add(field, "required")
		case w.has[field] && v == "":
			add(field, "empty")
		case len(v) > maxIDLen:
			add(field, "%d characters, at most %d", len(v), maxIDLen)
		}
	}
	id("instance_id", w.InstanceID, true)
	id("metering_sn", w.MeteringSN, true)
	id("relate_pkg_instance", w.RelatePkgInstance, false)
	tm := func(field, v string) time.Time {
		if !w.has[field] {
			add(field, "required")
			return time.Time{}
		}
		t, err := time.Parse(koogallery.TimeLayout, v)
		// Parse alone accepts what the layout does not spell (e.g. a 7-digit year would fail, but round-tripping
		// also catches any leniency): the exact 17 characters are required.
		if err != nil || len(v) != len(koogallery.TimeLayout) || t.Format(koogallery.TimeLayout) != v {
			add(field, "%q is not in the layout yyyyMMddTHHmmssZ", v)
		}
		return t
	}
	r := record{InstanceID: w.InstanceID, MeteringSN: w.MeteringSN, RelatePkgInstance: w.RelatePkgInstance}
	r.RecordTime = tm("record_time", w.RecordTime)
	r.BeginTime = tm("begin_time", w.BeginTime)
	r.EndTime = tm("end_time", w.EndTime)
	if !w.has["usage_value"] {
		add("usage_value", "required")
	} else if v, err := parseUsageValue(w.UsageValue); err != nil {
		add("usage_value", "%q %v", w.UsageValue, err)
	} else {
		r.UsageValue = v
	}
	return r, probs
}

// parseUsageValue accepts the plain notation of a Double(12,4): digits, optionally a point and 1 to 4 decimals,
// no sign, no exponent, no leading zero, positive, at most 99999999.9999. Anything looser would let a client
// bug (an exponent, a float artefact) through that the real API may read differently.
func parseUsageValue(s string) (decimal.Decimal, error) {
	if len(s) > maxValueLen {
		return decimal.Decimal{}, fmt.Errorf("is longer than %d characters", maxValueLen)
	}
	intPart, frac, hasPoint := strings.Cut(s, ".")
	switch {
	case intPart == "" || !digits(intPart):
		return decimal.Decimal{}, errors.New("is not a plain decimal number")
	case len(intPart) > 1 && intPart[0] == '0':
		return decimal.Decimal{}, errors.New("has a leading zero")
	case hasPoint && (frac == "" || !digits(frac)):
		return decimal.Decimal{}, errors.New("is not a plain decimal number")
	case len(frac) > maxDecimals:
		return decimal.Decimal{}, fmt.Errorf("has more than %d decimals", maxDecimals)
	case len(intPart) > 8:
		return decimal.Decimal{}, fmt.Errorf("is above %s", koogallery.MaxUsageValue)
	}
	v, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Decimal{}, errors.New("is not a decimal number")
	}
	if v.Sign() <= 0 {
		return decimal.Decimal{}, errors.New("must be positive")
	}
	return v, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
