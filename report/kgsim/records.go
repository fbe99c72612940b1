package kgsim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// billedJSON is the JSON form of a BilledRecord in GET /_sim/records: RFC 3339 UTC times and the usage value as
// a plain decimal string (DESIGN.md §5a), independent of the decimal package's global JSON setting.
type billedJSON struct {
	InstanceID        string `json:"instance_id"`
	MeteringSN        string `json:"metering_sn"`
	RecordTime        string `json:"record_time"`
	BeginTime         string `json:"begin_time"`
	EndTime           string `json:"end_time"`
	UsageValue        string `json:"usage_value"`
	RelatePkgInstance string `json:"relate_pkg_instance,omitempty"`
	Batch             string `json:"batch"`
	ReceivedAt        string `json:"received_at"`
}

// MarshalJSON writes the record as GET /_sim/records lists it.
func (b BilledRecord) MarshalJSON() ([]byte, error) {
	f := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	return json.Marshal(billedJSON{InstanceID: b.InstanceID, MeteringSN: b.MeteringSN, RecordTime: f(b.RecordTime),
		BeginTime: f(b.BeginTime), EndTime: f(b.EndTime), UsageValue: plain(b.UsageValue),
		RelatePkgInstance: b.RelatePkgInstance, Batch: b.Batch, ReceivedAt: b.ReceivedAt.UTC().Format(time.RFC3339Nano)})
}

// UnmarshalJSON reads a record of GET /_sim/records.
func (b *BilledRecord) UnmarshalJSON(data []byte) error {
	var j billedJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	var err error
	parse := func(field, s string) time.Time {
		t, e := time.Parse(time.RFC3339Nano, s)
		if e != nil && err == nil {
			err = fmt.Errorf("%s: %w", field, e)
		}
		return t
	}
	out := BilledRecord{InstanceID: j.InstanceID, MeteringSN: j.MeteringSN, RecordTime: parse("record_time", j.RecordTime),
		BeginTime: parse("begin_time", j.BeginTime), EndTime: parse("end_time", j.EndTime),
		RelatePkgInstance: j.RelatePkgInstance, Batch: j.Batch, ReceivedAt: parse("received_at", j.ReceivedAt)}
	if out.UsageValue, err = decimal.NewFromString(j.UsageValue); err != nil {
		return fmt.Errorf("usage_value: %w", err)
	}
	if err != nil {
		return err
	}
	*b = out
	return nil
}

// plain formats a usage value (at most 4 decimals) without exponent or trailing zeros.
func plain(d decimal.Decimal) string {
	s := d.StringFixed(maxDecimals)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// FetchBilled reads GET /_sim/records of a simulator running elsewhere (`meterd kgsim`); baseURL is its root,
// e.g. http://127.0.0.1:8081. In-process tests call Sim.Billed instead.
func FetchBilled(ctx context.Context, hc *http.Client, baseURL string) ([]BilledRecord, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+RecordsPath, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch billed records: %w", err)
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch billed records: %w", err)
	}
	defer func() { _ = res.Body.Close() }() // read-only request: a close error loses nothing
	if res.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return nil, fmt.Errorf("fetch billed records: HTTP %d: %s", res.StatusCode, strings.TrimSpace(string(data)))
	}
	var out struct {
		Records []BilledRecord `json:"records"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("fetch billed records: decode: %w", err)
	}
	return out.Records, nil
}
