package meter

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseQuantity(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "0", want: "0"},
		{in: "12.5", want: "12.5"},
		{in: "2.50", want: "2.5"},
		{in: "1e3", want: "1000"},
		{in: "1E-10", want: "0.0000000001"},
		{in: "0.1000000000000", want: "0.1"}, // trailing zeros do not count as digits
		{in: "1234567890123456789012345678", want: "1234567890123456789012345678"},
		{in: "1234567890123456789012345678.0123456789", want: "1234567890123456789012345678.0123456789"},
		{in: "-0", want: "0"},
		{in: "12345678901234567890123456789", err: "more than 28 integer digits"},
		{in: "0.01234567891", err: "more than 10 fractional digits"},
		{in: "1e-11", err: "more than 10 fractional digits"},
		{in: "1e29", err: "more than 28 integer digits"},
		{in: "1e65", err: "exponent out of range"},
		{in: "1e999999999999", err: "exponent out of range"},
		{in: "-1", err: "must be >= 0"},
		{in: "NaN", err: "not a decimal number"},
		{in: "Infinity", err: "not a decimal number"},
		{in: "+1", err: "not a decimal number"},
		{in: " 1", err: "not a decimal number"},
		{in: "1.", err: "not a decimal number"},
		{in: ".5", err: "not a decimal number"},
		{in: "0x10", err: "not a decimal number"},
		{in: "1e", err: "not a decimal number"},
		{in: "", err: "empty"},
	}
	for _, c := range cases {
		d, err := ParseQuantity(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseQuantity(%q) = %v, %v; want error %q", c.in, d, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("ParseQuantity(%q): %v", c.in, err)
		case c.err == "" && d.String() != c.want:
			t.Errorf("ParseQuantity(%q) = %s, want %s", c.in, d, c.want)
		}
	}
}

func TestNewSetReportsEveryProblem(t *testing.T) {
	_, err := NewSet([]Spec{
		{Key: "ok", EventType: "a", Aggregation: "SUM", ValueProperty: "$.v"},
		{Key: "ok", EventType: "b", Aggregation: "COUNT"},
		{Key: "c", EventType: "c", Aggregation: "COUNT", ValueProperty: "$.v"},
		{Key: "d", EventType: "", Aggregation: "AVG"},
		{Key: "e", EventType: "e", Aggregation: "MAX"},
		{Key: "f", EventType: "f", Aggregation: "SUM", ValueProperty: "$..v"},
		{Key: "g", EventType: "g", Aggregation: "SUM", ValueProperty: "tokens"},
		{Key: "bad key!", EventType: "h", Aggregation: "COUNT"},
	}, "meters")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`meters[1].key: duplicate meter key "ok"`,
		"meters[2].value_property: COUNT meters count events and take no value",
		"meters[3].event_type: required",
		`meters[3].aggregation: unknown "AVG"`,
		"meters[4].value_property: required for MAX",
		"meters[5].value_property:",
		"meters[6].value_property: \"tokens\" must be a JSONPath starting with $",
		"meters[7].key:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestExtract(t *testing.T) {
	set, err := NewSet([]Spec{
		{Key: "sum", EventType: "e", Aggregation: "sum", ValueProperty: "$.usage.tokens"},
		{Key: "n", EventType: "e", Aggregation: "COUNT"},
		{Key: "u", EventType: "e", Aggregation: "UNIQUE_COUNT", ValueProperty: "$['user id']"},
		{Key: "first", EventType: "e", Aggregation: "MAX", ValueProperty: "$.items[0]"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(set.ForType("e")); got != 4 {
		t.Fatalf("ForType = %d meters", got)
	}
	data := decode(t, `{"usage":{"tokens":"0.30"},"user id":1.0,"items":[7,8]}`)
	want := map[string]string{"sum": "0.3", "n": "1", "u": "1", "first": "7"}
	for _, m := range set.ForType("e") {
		v, err := m.Extract(data)
		if err != nil {
			t.Fatalf("%s: %v", m.Key, err)
		}
		if got := v.Text(m.Aggregation); got != want[m.Key] {
			t.Errorf("%s = %q, want %q", m.Key, got, want[m.Key])
		}
	}
	u, _ := set.Get("u")
	for in, key := range map[string]string{`{"user id":"1"}`: `"1"`, `{"user id":true}`: "true", `{"user id":1}`: "1"} {
		v, err := u.Extract(decode(t, in))
		if err != nil || v.Key != key {
			t.Errorf("unique key of %s = %q, %v; want %q", in, v.Key, err, key)
		}
	}
	if _, err := u.Extract(decode(t, `{"user id":"`+strings.Repeat("x", 300)+`"}`)); err == nil {
		t.Error("an oversized distinct key was accepted")
	}
	s, _ := set.Get("sum")
	if _, err := s.Extract(nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("no data: %v", err)
	}
	if _, err := s.Extract(decode(t, `{"usage":{"tokens":null}}`)); err == nil {
		t.Error("null value accepted")
	}
}

func decode(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}
