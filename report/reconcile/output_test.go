package reconcile_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/bill"
	"github.com/meterd/meterd/report/reconcile"
)

func keys(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sameKeys(t *testing.T, what string, raw json.RawMessage, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := keys(t, raw); !slices.Equal(got, want) {
		t.Errorf("%s keys %v, want %v", what, got, want)
	}
}

func field(t *testing.T, raw json.RawMessage, k string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m[k]
}

func first(t *testing.T, raw json.RawMessage) json.RawMessage {
	t.Helper()
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil || len(a) == 0 {
		t.Fatalf("%s: want a non-empty array (%v)", raw, err)
	}
	return a[0]
}

// TestJSONShape: the object of DESIGN.md §5a, key for key, decimals as plain strings and times in UTC with Z.
func TestJSONShape(t *testing.T) {
	ds := pushedDataSet(t)
	rep := ds.r.build(hour(0), hour(ds.hours))
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	doc := json.RawMessage(buf.Bytes())
	sameKeys(t, "report", doc, "from", "to", "lines", "totals", "invariant", "rejected", "late", "unmatched", "missed_deadline")
	if string(field(t, doc, "from")) != `"2026-11-20T00:00:00Z"` || string(field(t, doc, "to")) != `"2026-11-20T04:00:00Z"` {
		t.Errorf("from %s to %s", field(t, doc, "from"), field(t, doc, "to"))
	}
	totals := field(t, doc, "totals")
	sameKeys(t, "totals", totals, "by_instance", "by_sku", "by_currency")
	bi := first(t, field(t, totals, "by_instance"))
	sameKeys(t, "by_instance", bi, "instance_id", "meter", "sku", "events", "quantity", "pushed_usage", "accepted_usage",
		"expected_amount", "currency")
	for _, k := range []string{"quantity", "pushed_usage", "accepted_usage", "expected_amount"} {
		if v := field(t, bi, k); !bytes.HasPrefix(v, []byte(`"`)) {
			t.Errorf("by_instance.%s = %s, want a decimal string", k, v)
		}
	}
	inv := field(t, doc, "invariant")
	sameKeys(t, "invariant", inv, "holds", "violations", "checks")
	if string(field(t, inv, "holds")) != "true" || string(field(t, inv, "violations")) != "[]" {
		t.Errorf("invariant %s", inv)
	}
	line := first(t, field(t, doc, "lines"))
	for _, k := range []string{"instance_id", "meter", "sku", "hour", "events", "quantity", "carry_in", "carry_out",
		"late_quantity", "late_origins", "usage_value", "pushed_usage", "metering_sn", "state", "last_code",
		"expected_amount", "amount_rounded_2", "amount_rounded_3", "currency"} {
		if field(t, line, k) == nil {
			t.Errorf("line lacks %q: %s", k, line)
		}
	}
	sameKeys(t, "missed_deadline", first(t, field(t, doc, "missed_deadline")), "metering_sn", "instance_id", "hour", "state", "due",
		"accepted_at", "first_attempt_at", "attempts", "late", "late_seconds")
	sameKeys(t, "rejected", first(t, field(t, doc, "rejected")), "metering_sn", "instance_id", "hour", "revision", "state", "code",
		"reason", "usage_value", "amount", "currency", "attempts")
	first(t, field(t, doc, "late"))
	first(t, field(t, doc, "unmatched"))

	// Every time is UTC with Z; no decimal uses an exponent.
	for _, m := range regexp.MustCompile(`"\d{4}-\d\d-\d\dT[^"]*"`).FindAll(buf.Bytes(), -1) {
		if !bytes.HasSuffix(m, []byte(`Z"`)) {
			t.Errorf("time %s not in UTC with Z", m)
		}
	}
	if m := regexp.MustCompile(`"-?\d+(\.\d+)?[eE][-+]?\d+"`).Find(buf.Bytes()); m != nil {
		t.Errorf("decimal with an exponent: %s", m)
	}
	var decoded struct {
		MissedDeadline []struct {
			Late        string  `json:"late"`
			LateSeconds float64 `json:"late_seconds"`
			AcceptedAt  *string `json:"accepted_at"`
		} `json:"missed_deadline"`
	}
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatal(err)
	}
	if m := decoded.MissedDeadline[0]; m.Late != "1h45m0s" || m.LateSeconds != 6300 || m.AcceptedAt != nil {
		t.Errorf("first missed deadline %+v", m)
	}

	// With a bill, its sections are added under "bill".
	rep.Bill = &bill.Result{File: "bill.csv", Rows: 3, Matched: 2,
		MissingInLedger: []bill.BillRow{{Line: 4, MeteringSN: "m-x", InstanceID: "t-z", Begin: hour(0), End: hour(1),
			Usage: decimal.NewFromInt(1), Amount: decimal.RequireFromString("0.3"), Status: "NORMAL"}},
		MissingInBill: []report.SDR{{MeteringSN: "m-y", InstanceID: "t-a", Hour: hour(1), State: report.Accepted}},
		AmountDiffs: []bill.AmountDiff{{MeteringSN: "m-z", Ledger: decimal.RequireFromString("0.3333"),
			Bill: decimal.RequireFromString("0.33"), Diff: decimal.RequireFromString("-0.0033"), Rounded2: true}}}
	buf.Reset()
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	doc = buf.Bytes()
	sameKeys(t, "report with bill", doc, "from", "to", "lines", "totals", "invariant", "rejected", "late", "unmatched",
		"missed_deadline", "bill")
	b := field(t, doc, "bill")
	sameKeys(t, "bill", b, "file", "rows", "matched", "billed", "async_rejected", "rereported", "missing_in_ledger",
		"missing_in_bill", "amount_diffs")
	if d := first(t, field(t, b, "amount_diffs")); string(field(t, d, "diff")) != `"-0.0033"` || string(field(t, d, "equal_rounded_2")) != "true" {
		t.Errorf("amount diff %s", d)
	}
}

// TestHTMLIsOneSelfContainedPage: no external reference of any kind, an inline SVG chart, the figures, and
// everything escaped.
func TestHTMLIsOneSelfContainedPage(t *testing.T) {
	ds := pushedDataSet(t)
	ds.r.exec(`UPDATE sdrs SET reason = '<script>alert("x")</script>' WHERE instance_id = 'c-b' AND hour_ms = ?`, hour(0).UnixMilli())
	rep := ds.r.build(hour(0), hour(ds.hours))
	var buf bytes.Buffer
	if err := rep.WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, bad := range []string{"http://", "https://", `src="http`, "<link", "<script", "url(", "@import"} {
		if strings.Contains(strings.ToLower(page), bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	for _, want := range []string{"<!DOCTYPE html>", "<svg", "</svg>", `class="deadline"`, "Invariant holds",
		"&lt;script&gt;", "deadline 15m0s", "t-c", "45m0s", "1h45m0s", "nobody", "9001"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if n := strings.Count(page, "<html"); n != 1 {
		t.Errorf("%d <html> elements", n)
	}
	if strings.Count(page, "<rect ") < 4*3 {
		t.Errorf("chart has %d bars", strings.Count(page, "<rect "))
	}

	ds.r.exec(`DELETE FROM sdrs WHERE instance_id = 'p-a' AND hour_ms = ?`, hour(2).UnixMilli())
	buf.Reset()
	if err := ds.r.build(hour(0), hour(ds.hours)).WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "does NOT hold") || !strings.Contains(buf.String(), "closed hour with usage has no SDR") {
		t.Error("a broken invariant is not shown")
	}
}

// TestCSVParses: the CSV parses with encoding/csv, one header and one row per line.
func TestCSVParses(t *testing.T) {
	ds := pushedDataSet(t)
	rep := ds.r.build(hour(0), hour(ds.hours))
	var buf bytes.Buffer
	if err := rep.WriteCSV(&buf); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(recs[0], reconcile.CSVHeader) || len(recs) != 1+ds.lines() {
		t.Fatalf("header %v, %d records", recs[0], len(recs))
	}
	col := map[string]int{}
	for i, c := range recs[0] {
		col[c] = i
	}
	for i, rec := range recs[1:] {
		l := rep.Lines[i]
		if rec[col["instance_id"]] != l.InstanceID || rec[col["hour"]] != l.Hour.Format(time.RFC3339) ||
			rec[col["usage_value"]] != l.UsageValue.String() || rec[col["metering_sn"]] != l.MeteringSN ||
			rec[col["expected_amount"]] != l.Amount.String() || rec[col["state"]] != l.State {
			t.Errorf("row %d %v, line %+v", i, rec, l)
		}
		if l.InstanceID == "t-a" && l.Hour.Equal(hour(2)) && rec[col["late_origins"]] != "2026-11-20T00:00:00Z=500.5" {
			t.Errorf("late_origins %q", rec[col["late_origins"]])
		}
	}
}

// TestExportStreamsTheSameReport: Export writes, line by line, exactly what Build and the writers give.
func TestExportStreamsTheSameReport(t *testing.T) {
	ds := pushedDataSet(t)
	opts := reconcile.Options{From: hour(0), To: hour(ds.hours), Now: ds.r.now}
	rep := ds.r.build(hour(0), hour(ds.hours))
	for _, f := range []reconcile.Format{reconcile.FormatCSV, reconcile.FormatJSON, reconcile.FormatHTML} {
		var want, got bytes.Buffer
		var err error
		switch f {
		case reconcile.FormatCSV:
			err = rep.WriteCSV(&want)
		case reconcile.FormatJSON:
			err = rep.WriteJSON(&want)
		case reconcile.FormatHTML:
			err = rep.WriteHTML(&want)
		}
		if err != nil {
			t.Fatal(err)
		}
		progress := 0
		o := opts
		o.Progress = func(done, total int) {
			if done != progress+1 || total != len(ds.instances) {
				t.Errorf("progress %d/%d after %d", done, total, progress)
			}
			progress = done
		}
		streamed, err := reconcile.Export(context.Background(), ds.r.store, ds.r.cfg.Catalog(), o, f, &got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want.Bytes(), got.Bytes()) {
			t.Errorf("%s: export differs from build", f)
		}
		if len(streamed.Lines) != 0 || streamed.LineCount != ds.lines() || progress != len(ds.instances) {
			t.Errorf("%s: kept %d lines, counted %d, progress %d", f, len(streamed.Lines), streamed.LineCount, progress)
		}
	}
	// An empty window is a valid, empty report.
	var buf bytes.Buffer
	r, err := reconcile.Export(context.Background(), ds.r.store, ds.r.cfg.Catalog(),
		reconcile.Options{From: hour(100), To: hour(101), Now: ds.r.now}, reconcile.FormatJSON, &buf)
	if err != nil || !r.Invariant.Holds || !json.Valid(buf.Bytes()) || !strings.Contains(buf.String(), `"lines":[]`) {
		t.Fatalf("empty window: %v %s", err, buf.String())
	}
}

// TestHandler: GET /v1/reports/reconcile serves the same report in each format and refuses bad parameters.
func TestHandler(t *testing.T) {
	ds := pushedDataSet(t)
	mux := http.NewServeMux()
	reconcile.NewHandler(ds.r.store, ds.r.cfg.Catalog(), ds.r.clock).Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(q string) (int, string, string) {
		res, err := http.Get(srv.URL + "/v1/reports/reconcile?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		return res.StatusCode, res.Header.Get("Content-Type"), string(body)
	}
	var want bytes.Buffer
	if err := ds.r.build(hour(0), hour(ds.hours)).WriteJSON(&want); err != nil {
		t.Fatal(err)
	}
	if code, ct, body := get("from=2026-11-20T00&to=2026-11-20T04:00:00Z"); code != 200 || ct != "application/json" || body != want.String() {
		t.Errorf("json: %d %s\n%s", code, ct, body)
	}
	if code, ct, body := get("from=2026-11-20T00:00:00Z&to=2026-11-20T04:00:00Z&format=csv"); code != 200 ||
		!strings.HasPrefix(ct, "text/csv") || strings.Count(body, "\n") != 1+ds.lines() {
		t.Errorf("csv: %d %s\n%s", code, ct, body)
	}
	if code, ct, body := get("from=2026-11-20T08:00:00%2B08:00&to=2026-11-20T04:00:00Z&format=html"); code != 200 ||
		!strings.HasPrefix(ct, "text/html") || !strings.Contains(body, "<svg") {
		t.Errorf("html: %d %s", code, ct)
	}
	for _, q := range []string{"", "from=2026-11-20T00", "to=2026-11-20T04", "from=yesterday&to=2026-11-20T04",
		"from=2026-11-20T04&to=2026-11-20T04", "from=2026-11-20T00&to=2026-11-20T04&format=pdf"} {
		if code, ct, body := get(q); code != 400 || ct != "application/json" || !strings.Contains(body, `"error"`) {
			t.Errorf("%q: %d %s %s", q, code, ct, body)
		}
	}
}
