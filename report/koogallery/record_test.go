package koogallery

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func hour(h int) time.Time { return time.Date(2026, 11, 22, h, 0, 0, 0, time.UTC) }

func sampleRecord() Record {
	return Record{
		InstanceID: "7f141bf1-aec8-4859-8323-fb3a8ad50721",
		MeteringSN: "sn-7f141bf1-2026112202-0",
		RecordTime: hour(3).Add(5 * time.Minute),
		BeginTime:  hour(2),
		EndTime:    hour(3),
		UsageValue: decimal.RequireFromString("12.5"),
	}
}

// TestEncodeRecordExact: keys in natural order, no spaces, the value as a number or a string.
func TestEncodeRecordExact(t *testing.T) {
	r := sampleRecord()
	const number = `{"begin_time":"20261122T020000Z","end_time":"20261122T030000Z",` +
		`"instance_id":"7f141bf1-aec8-4859-8323-fb3a8ad50721","metering_sn":"sn-7f141bf1-2026112202-0",` +
		`"record_time":"20261122T030500Z","usage_value":12.5}`
	got, err := EncodeRecord(r, ValueAsNumber)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != number {
		t.Errorf("number form:\n got %s\nwant %s", got, number)
	}
	got, err = EncodeRecord(r, ValueAsString)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(number, `12.5}`, `"12.5"}`, 1); string(got) != want {
		t.Errorf("string form:\n got %s\nwant %s", got, want)
	}

	r.RelatePkgInstance = "pkg-1"
	got, err = EncodeRecord(r, ValueAsNumber)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(number, `"record_time":"20261122T030500Z",`, `"record_time":"20261122T030500Z","relate_pkg_instance":"pkg-1",`, 1); string(got) != want {
		t.Errorf("with relate_pkg_instance:\n got %s\nwant %s", got, want)
	}
	assertSortedKeys(t, got)
}

// assertSortedKeys decodes one flat object token by token and checks its keys ascend.
func assertSortedKeys(t *testing.T, data []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	prev := ""
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		if k.(string) <= prev {
			t.Errorf("key %q after %q", k, prev)
		}
		prev = k.(string)
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUsageValueNotation: plain notation, never an exponent, trailing zeros stripped, equal values equal bytes.
func TestUsageValueNotation(t *testing.T) {
	tests := []struct {
		in   decimal.Decimal
		want string
	}{
		{decimal.New(1, 2), "100"}, // exponent form inside the decimal: 1E+2
		{decimal.New(5, 7), "50000000"},
		{decimal.RequireFromString("1.5000"), "1.5"},
		{decimal.RequireFromString("1.50"), "1.5"},
		{decimal.RequireFromString("2.0"), "2"},
		{decimal.RequireFromString("0.0001"), "0.0001"},
		{decimal.New(1, -4), "0.0001"},
		{decimal.RequireFromString("99999999.9999"), "99999999.9999"},
		{decimal.RequireFromString("0.12345000"), ""}, // 5 decimals after trimming: refused below
	}
	for _, tt := range tests {
		got, err := FormatUsageValue(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%s: want an error, got %q", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q", tt.in, got, err, tt.want)
		}
		if strings.ContainsAny(got, "eE+") {
			t.Errorf("%s: exponent in %q", tt.in, got)
		}
	}

	// The decimal package has a global switch to print exponents; the canonical bytes must not follow it.
	decimal.UseScientificNotation = true
	t.Cleanup(func() { decimal.UseScientificNotation = false })
	if got, _ := FormatUsageValue(decimal.New(1, 2)); got != "100" {
		t.Errorf("with decimal.UseScientificNotation: got %q", got)
	}

	a, b := sampleRecord(), sampleRecord()
	a.UsageValue, b.UsageValue = decimal.RequireFromString("7.25"), decimal.New(72500, -4)
	ea, _ := EncodeRecord(a, ValueAsNumber)
	eb, _ := EncodeRecord(b, ValueAsNumber)
	if !bytes.Equal(ea, eb) {
		t.Errorf("equal values, different bytes:\n%s\n%s", ea, eb)
	}
}

// TestEncodeRecordDeterministic: the ledger's bytes are reproducible from the same record.
func TestEncodeRecordDeterministic(t *testing.T) {
	first, err := EncodeRecord(sampleRecord(), ValueAsNumber)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		r := sampleRecord()
		// The same instants in another location are the same record.
		r.BeginTime = r.BeginTime.In(time.FixedZone("CST", 8*3600))
		got, _ := EncodeRecord(r, ValueAsNumber)
		if !bytes.Equal(got, first) {
			t.Fatalf("different bytes:\n%s\n%s", got, first)
		}
	}
}

func TestEncodeRecordEscaping(t *testing.T) {
	r := sampleRecord()
	r.InstanceID = `a"b\c<d>&` + "\x01"
	got, err := EncodeRecord(r, ValueAsNumber)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), `"instance_id":"a\"b\\c<d>&\u0001"`) {
		t.Errorf("escaping: %s", got)
	}
	var back struct {
		InstanceID string `json:"instance_id"`
	}
	if err := json.Unmarshal(got, &back); err != nil || back.InstanceID != r.InstanceID {
		t.Errorf("round trip: %q, %v", back.InstanceID, err)
	}
}

func TestEncodeRecordErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Record)
		as   ValueAs
		want string
	}{
		{"empty instance", func(r *Record) { r.InstanceID = "" }, ValueAsNumber, "instance_id: required"},
		{"empty sn", func(r *Record) { r.MeteringSN = "" }, ValueAsNumber, "metering_sn: required"},
		{"long instance", func(r *Record) { r.InstanceID = strings.Repeat("i", 65) }, ValueAsNumber, "instance_id: 65 bytes"},
		{"long sn", func(r *Record) { r.MeteringSN = strings.Repeat("s", 65) }, ValueAsNumber, "metering_sn: 65 bytes"},
		{"long package", func(r *Record) { r.RelatePkgInstance = strings.Repeat("p", 65) }, ValueAsNumber, "relate_pkg_instance: 65 bytes"},
		{"bad utf-8", func(r *Record) { r.MeteringSN = "sn-\xff" }, ValueAsNumber, "not valid UTF-8"},
		{"zero value", func(r *Record) { r.UsageValue = decimal.Zero }, ValueAsNumber, "must be positive"},
		{"negative value", func(r *Record) { r.UsageValue = decimal.NewFromInt(-1) }, ValueAsNumber, "must be positive"},
		{"five decimals", func(r *Record) { r.UsageValue = decimal.RequireFromString("1.00001") }, ValueAsNumber, "more than 4 decimals"},
		{"above max", func(r *Record) { r.UsageValue = decimal.RequireFromString("100000000") }, ValueAsNumber, "above 99999999.9999"},
		{"just above max", func(r *Record) { r.UsageValue = decimal.RequireFromString("99999999.99991") }, ValueAsNumber, "usage_value"},
		{"begin after end", func(r *Record) { r.BeginTime = r.EndTime.Add(time.Second) }, ValueAsNumber, "begin_time 20261122T030001Z is after end_time"},
		{"end after record", func(r *Record) { r.RecordTime = r.EndTime.Add(-time.Second) }, ValueAsNumber, "after record_time"},
		{"zero time", func(r *Record) { r.RecordTime = time.Time{} }, ValueAsNumber, "record_time: required"},
		{"fraction", func(r *Record) { r.BeginTime = r.BeginTime.Add(time.Millisecond) }, ValueAsNumber, "not a whole second"},
		{"year", func(r *Record) { r.BeginTime = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, ValueAsNumber, "does not fit"},
		{"value form", func(*Record) {}, "float", "usage_value_as"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := sampleRecord()
			tt.edit(&r)
			got, err := EncodeRecord(r, tt.as)
			if err == nil {
				t.Fatalf("no error, got %s", got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
	// Every problem at once.
	r := sampleRecord()
	r.InstanceID, r.UsageValue = "", decimal.Zero
	if _, err := EncodeRecord(r, ValueAsNumber); err == nil || !strings.Contains(err.Error(), "instance_id") || !strings.Contains(err.Error(), "usage_value") {
		t.Errorf("want both problems: %v", err)
	}
}

func TestBody(t *testing.T) {
	if got := string(Body(nil)); got != `{"usage_records":[]}` {
		t.Errorf("empty: %s", got)
	}
	got := Body([][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`)})
	if string(got) != `{"usage_records":[{"a":1},{"b":2}]}` {
		t.Errorf("two: %s", got)
	}
}
