package kgsim_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/koogallery"
)

var t0 = time.Date(2026, 11, 22, 3, 10, 0, 0, time.UTC)

var lastHour = time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)

const key = "sim-test-key"

// clock is a settable clock shared by a test and the simulator.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type answer struct {
	Status   int
	Code     string `json:"error_code"`
	Msg      string `json:"error_msg"`
	Abnormal []struct {
		MeteringSN string `json:"metering_sn"`
		Code       string `json:"error_code"`
		Msg        string `json:"error_msg"`
	} `json:"abnormal_usage_data"`
	Date string
}

// request is one raw usage call; zero fields take valid defaults.
type request struct {
	body        []byte
	ts, nonce   string
	signature   string // "" signs body with key
	contentType string
	method      string
	path        string
	header      map[string]string // overrides, "" deletes
}

type harness struct {
	sim   *kgsim.Sim
	clock *clock
	n     int
}

func newHarness(t *testing.T, cfg kgsim.Config) *harness {
	t.Helper()
	h := &harness{clock: &clock{t: t0}}
	if cfg.Key == nil {
		cfg.Key = []byte(key)
	}
	cfg.Now = h.clock.Now
	h.sim = kgsim.New(cfg)
	t.Cleanup(h.sim.Close)
	return h
}

// do serves one request in-process and decodes the answer.
func (h *harness) do(t *testing.T, r request) answer {
	t.Helper()
	h.n++
	if r.ts == "" {
		r.ts = strconv.FormatInt(h.clock.Now().UnixMilli(), 10)
	}
	if r.nonce == "" {
		r.nonce = fmt.Sprintf("nonce-%d-%d", h.n, time.Now().UnixNano())
	}
	if r.signature == "" {
		r.signature = koogallery.Sign([]byte(key), r.ts, r.nonce, r.body)
	}
	if r.contentType == "" {
		r.contentType = "application/json"
	}
	if r.method == "" {
		r.method = http.MethodPost
	}
	if r.path == "" {
		r.path = kgsim.DefaultPath
	}
	req := httptest.NewRequest(r.method, r.path, bytes.NewReader(r.body))
	req.Header.Set("Content-Type", r.contentType)
	req.Header.Set("ts", r.ts)
	req.Header.Set("nonce", r.nonce)
	req.Header.Set("signature", r.signature)
	for k, v := range r.header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	w := httptest.NewRecorder()
	h.sim.ServeHTTP(w, req)
	var a answer
	if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
		t.Fatalf("answer %d is not JSON: %q", w.Code, w.Body.String())
	}
	a.Status = w.Code
	a.Date = w.Header().Get("Date")
	return a
}

func rec(id, sn string, h time.Time, value string) koogallery.Record {
	return koogallery.Record{InstanceID: id, MeteringSN: sn, BeginTime: h, EndTime: h.Add(time.Hour),
		RecordTime: h.Add(time.Hour + 5*time.Minute), UsageValue: decimal.RequireFromString(value)}
}

func encode(t *testing.T, r koogallery.Record) []byte {
	t.Helper()
	b, err := koogallery.EncodeRecord(r, koogallery.ValueAsNumber)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func body(t *testing.T, recs ...koogallery.Record) []byte {
	t.Helper()
	enc := make([][]byte, len(recs))
	for i, r := range recs {
		enc[i] = encode(t, r)
	}
	return koogallery.Body(enc)
}

func (a answer) abnormal() map[string]string {
	m := map[string]string{}
	for _, e := range a.Abnormal {
		m[e.MeteringSN] = e.Code
	}
	return m
}

func sns(b []kgsim.BilledRecord) []string {
	var out []string
	for _, r := range b {
		out = append(out, r.MeteringSN)
	}
	return out
}

// TestDuplicates: a repeated metering_sn is 005, a repeated period of an instance is 010, as abnormal entries of
// a 0000 answer; the other records of the same call are billed.
func TestDuplicates(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	a := h.do(t, request{body: body(t, rec("i1", "sn-1", lastHour, "1"), rec("i2", "sn-2", lastHour, "2"))})
	if a.Code != "MKT.0000" || a.Status != 200 || len(a.Abnormal) != 0 || a.Msg != "success" {
		t.Fatalf("first call: %+v", a)
	}
	a = h.do(t, request{body: body(t,
		rec("i3", "sn-3", lastHour, "3"),                 // new: billed
		rec("i9", "sn-1", lastHour, "1"),                 // sn of an earlier call
		rec("i2", "sn-2b", lastHour, "2"),                // period of an earlier call
		rec("i4", "sn-4", lastHour, "4"),                 // new: billed
		rec("i5", "sn-4", lastHour.Add(-time.Hour), "4"), // sn earlier in this call
		rec("i4", "sn-4b", lastHour, "4"),                // period earlier in this call
	)})
	if a.Code != "MKT.0000" || a.Status != 200 {
		t.Fatalf("second call: %+v", a)
	}
	want := map[string]string{"sn-1": "005", "sn-2b": "010", "sn-4": "005", "sn-4b": "010"}
	if got := a.abnormal(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("abnormal %v, want %v", got, want)
	}
	if got := sns(h.sim.Billed()); strings.Join(got, ",") != "sn-1,sn-2,sn-3,sn-4" {
		t.Errorf("billed %v", got)
	}
	st := h.sim.Stats()
	if st.Billed != 4 || st.Abnormal["005"] != 2 || st.Abnormal["010"] != 2 || st.ByCode["0000"] != 2 || st.Batches != 2 {
		t.Errorf("stats %+v", st)
	}
	if b := h.sim.Billed(); b[2].Batch != "b000002" || !b[2].ReceivedAt.Equal(t0) {
		t.Errorf("billed[2] %+v", b[2])
	}
}

// TestTimeRange: 011 for a period outside the instance's life, inverted, after its record_time or in the future.
func TestTimeRange(t *testing.T) {
	start := lastHour.Add(-3 * time.Hour)
	release := lastHour.Add(-time.Hour)
	h := newHarness(t, kgsim.Config{Instances: map[string]kgsim.Life{
		"live":     {Start: start},
		"released": {Start: start, End: release},
	}})
	raw := func(id, sn, begin, end, recordTime string) []byte {
		return []byte(fmt.Sprintf(`{"begin_time":%q,"end_time":%q,"instance_id":%q,"metering_sn":%q,"record_time":%q,"usage_value":1}`,
			begin, end, id, sn, recordTime))
	}
	f := func(t time.Time) string { return t.Format(koogallery.TimeLayout) }
	recs := [][]byte{
		encode(t, rec("live", "ok", lastHour, "1")),
		encode(t, rec("live", "before-start", start.Add(-time.Hour), "1")),
		encode(t, rec("released", "after-release", lastHour, "1")),
		encode(t, rec("released", "ok-released", release.Add(-time.Hour), "1")),
		raw("live", "inverted", f(lastHour.Add(time.Minute)), f(lastHour), f(lastHour.Add(time.Hour))),
		raw("live", "after-record", f(lastHour.Add(-time.Hour)), f(lastHour), f(lastHour.Add(-time.Minute))),
		encode(t, rec("live", "future", lastHour.Add(time.Hour), "1")),
	}
	a := h.do(t, request{body: koogallery.Body(recs)})
	if a.Code != "MKT.0000" {
		t.Fatalf("%+v", a)
	}
	want := map[string]string{"before-start": "011", "after-release": "011", "inverted": "011", "after-record": "011", "future": "011"}
	if got := a.abnormal(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("abnormal %v, want %v", got, want)
	}
	if got := sns(h.sim.Billed()); strings.Join(got, ",") != "ok,ok-released" {
		t.Errorf("billed %v", got)
	}
	// A refused record does not occupy its metering_sn: sent again it is refused for the same reason.
	a = h.do(t, request{body: koogallery.Body(recs[1:2])})
	if got := a.abnormal(); got["before-start"] != "011" {
		t.Errorf("resent: %+v", a)
	}
}

// TestFrozen: 013 while frozen at push time, billed after the unfreeze.
func TestFrozen(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	h.sim.SetInstance("ice", kgsim.Life{FrozenFrom: t0.Add(-time.Hour), FrozenUntil: t0.Add(time.Minute)})
	a := h.do(t, request{body: body(t, rec("ice", "sn-ice", lastHour, "1"), rec("other", "sn-other", lastHour, "1"))})
	if got := a.abnormal(); a.Code != "MKT.0000" || len(got) != 1 || got["sn-ice"] != "013" {
		t.Fatalf("frozen: %+v", a)
	}
	h.clock.Add(time.Minute)
	a = h.do(t, request{body: body(t, rec("ice", "sn-ice", lastHour, "1"))})
	if a.Code != "MKT.0000" || len(a.Abnormal) != 0 {
		t.Errorf("after unfreeze: %+v", a)
	}
	if got := sns(h.sim.Billed()); strings.Join(got, ",") != "sn-other,sn-ice" {
		t.Errorf("billed %v", got)
	}
}

// TestCallLevel: every call-level refusal, each with its code and status, and nothing billed by any of them.
func TestCallLevel(t *testing.T) {
	good := encode(t, rec("i1", "sn-1", lastHour, "1"))
	withValue := func(v string) []byte {
		return koogallery.Body([][]byte{good, bytes.Replace(good, []byte(`"usage_value":1`), []byte(`"usage_value":`+v), 1)})
	}
	withField := func(old, repl string) []byte {
		return koogallery.Body([][]byte{bytes.Replace(good, []byte(old), []byte(repl), 1)})
	}
	many := make([][]byte, koogallery.MaxBatch+1)
	for i := range many {
		many[i] = encode(t, rec(fmt.Sprintf("i%d", i), fmt.Sprintf("sn-%d", i), lastHour, "1"))
	}
	tsNow := strconv.FormatInt(t0.UnixMilli(), 10)
	tests := []struct {
		name   string
		req    request
		code   string
		status int
		msg    string
	}{
		{"content type", request{body: koogallery.Body([][]byte{good}), contentType: "text/plain"}, "0100", 400, "Content-Type"},
		{"content type with charset", request{body: koogallery.Body([][]byte{good}), contentType: "application/json; charset=utf-8"}, "0000", 200, ""},
		{"no ts", request{body: koogallery.Body([][]byte{good}), header: map[string]string{"ts": ""}}, "0150", 401, "required"},
		{"no nonce", request{body: koogallery.Body([][]byte{good}), header: map[string]string{"nonce": ""}}, "0150", 401, "required"},
		{"no signature", request{body: koogallery.Body([][]byte{good}), header: map[string]string{"signature": ""}}, "0150", 401, "required"},
		{"ts in seconds form", request{body: koogallery.Body([][]byte{good}), ts: "1.5e12"}, "0150", 401, "milliseconds"},
		{"ts too long", request{body: koogallery.Body([][]byte{good}), ts: "000000000" + tsNow}, "0150", 401, "20 digits"},
		{"nonce too long", request{body: koogallery.Body([][]byte{good}), nonce: strings.Repeat("n", 65)}, "0150", 401, "64"},
		{"stale ts", request{body: koogallery.Body([][]byte{good}), ts: strconv.FormatInt(t0.Add(-6*time.Minute).UnixMilli(), 10)}, "0154", 401, "request expired"},
		{"future ts", request{body: koogallery.Body([][]byte{good}), ts: strconv.FormatInt(t0.Add(6*time.Minute).UnixMilli(), 10)}, "0154", 401, "request expired"},
		{"bad signature", request{body: koogallery.Body([][]byte{good}), signature: koogallery.Sign([]byte("wrong"), tsNow, "n", nil)}, "0102", 400, "signature"},
		{"signature not base64", request{body: koogallery.Body([][]byte{good}), signature: "%%%"}, "0102", 400, "signature"},
		{"keys unsorted", request{body: []byte(`{"usage_records":[{"instance_id":"i1","begin_time":"20261122T020000Z","end_time":"20261122T030000Z","metering_sn":"sn-1","record_time":"20261122T030500Z","usage_value":1}]}`)}, "0102", 400, "natural"},
		{"not JSON", request{body: []byte(`{"usage_records":[`)}, "0100", 400, "end of body"},
		{"not UTF-8", request{body: withField(`"i1"`, "\"i\xff\"")}, "0100", 400, "UTF-8"},
		{"trailing data", request{body: append(koogallery.Body([][]byte{good}), []byte(`{}`)...)}, "0100", 400, "after the JSON"},
		{"unknown top key", request{body: []byte(`{"records":[]}`)}, "0100", 400, "unknown key"},
		{"no records key", request{body: []byte(`{}`)}, "0100", 400, "required"},
		{"empty", request{body: []byte(`{"usage_records":[]}`)}, "0100", 400, "empty"},
		{"unknown record key", request{body: withField(`"usage_value":1`, `"usage_value":1,"zone":"x"`)}, "0100", 400, `unknown key "zone"`},
		{"duplicate key", request{body: withField(`"begin_time":"20261122T020000Z"`, `"begin_time":"20261122T020000Z","begin_time":"20261122T020000Z"`)}, "0100", 400, "twice"},
		{"missing field", request{body: withField(`"metering_sn":"sn-1",`, ``)}, "0100", 400, "metering_sn: required"},
		{"number id", request{body: withField(`"instance_id":"i1"`, `"instance_id":1`)}, "0100", 400, "must be a string"},
		{"long id", request{body: withField(`"i1"`, `"`+strings.Repeat("i", 65)+`"`)}, "0100", 400, "at most 64"},
		{"long sn", request{body: withField(`"sn-1"`, `"`+strings.Repeat("s", 65)+`"`)}, "0100", 400, "at most 64"},
		{"empty package", request{body: withField(`"usage_value"`, `"relate_pkg_instance":"","usage_value"`)}, "0100", 400, "relate_pkg_instance: empty"},
		{"package ok", request{body: withField(`"usage_value"`, `"relate_pkg_instance":"p","usage_value"`)}, "0000", 200, ""},
		{"time layout", request{body: withField(`20261122T020000Z`, `2026-11-22T02:00:00Z`)}, "0100", 400, "layout"},
		{"time no Z", request{body: withField(`20261122T020000Z`, `20261122T020000`)}, "0100", 400, "layout"},
		{"time bad hour", request{body: withField(`20261122T020000Z`, `20261122T250000Z`)}, "0100", 400, "layout"},
		{"value exponent", request{body: withValue(`1e2`)}, "0100", 400, "usage_records[1].usage_value"},
		{"value 5 decimals", request{body: withValue(`1.00001`)}, "0100", 400, "more than 4 decimals"},
		{"value zero", request{body: withValue(`0`)}, "0100", 400, "positive"},
		{"value zero string", request{body: withValue(`"0.0000"`)}, "0100", 400, "positive"},
		{"value negative", request{body: withValue(`-1`)}, "0100", 400, "plain decimal"},
		{"value too large", request{body: withValue(`100000000`)}, "0100", 400, "above"},
		{"value too long", request{body: withValue(`"000000000000000000001"`)}, "0100", 400, "longer than 20"},
		{"value leading zero", request{body: withValue(`"01"`)}, "0100", 400, "leading zero"},
		{"value bool", request{body: withValue(`true`)}, "0100", 400, "number or a string"},
		{"value string ok", request{body: withValue(`"99999999.9999"`)}, "0000", 200, ""},
		{"too many", request{body: koogallery.Body(many)}, "9003", 500, "at most 1000"},
		{"expired", request{body: body(t, rec("i1", "sn-1", lastHour, "1"), rec("i1", "sn-old", t0.Add(-21*24*time.Hour-time.Second), "1"))}, "9004", 500, "older than 21 days"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, kgsim.Config{})
			a := h.do(t, tt.req)
			if a.Code != "MKT."+tt.code || a.Status != tt.status || !strings.Contains(a.Msg, tt.msg) {
				t.Errorf("got %d %s %q, want %d %s containing %q", a.Status, a.Code, a.Msg, tt.status, tt.code, tt.msg)
			}
			if n := len(h.sim.Billed()); tt.code != "0000" && n != 0 {
				t.Errorf("refused call billed %d", n)
			}
			if _, err := http.ParseTime(a.Date); err != nil {
				t.Errorf("Date header %q", a.Date)
			}
		})
	}
}

// TestUnknownInstance: with a list of instances, one unknown record fails the whole call (9001).
func TestUnknownInstance(t *testing.T) {
	h := newHarness(t, kgsim.Config{Instances: map[string]kgsim.Life{"known": {}}})
	a := h.do(t, request{body: body(t, rec("known", "sn-1", lastHour, "1"), rec("unknown", "sn-2", lastHour, "1"))})
	if a.Code != "MKT.9001" || a.Status != 500 || !strings.Contains(a.Msg, `"unknown"`) {
		t.Errorf("%+v", a)
	}
	if n := len(h.sim.Billed()); n != 0 {
		t.Errorf("billed %d", n)
	}
	// Without a list every instance exists.
	open := newHarness(t, kgsim.Config{})
	if a := open.do(t, request{body: body(t, rec("anything", "sn-1", lastHour, "1"))}); a.Code != "MKT.0000" {
		t.Errorf("open: %+v", a)
	}
	// SetInstances switches between the two at run time.
	open.sim.SetInstances(map[string]kgsim.Life{"known": {}})
	if a := open.do(t, request{body: body(t, rec("anything", "sn-2", lastHour.Add(-time.Hour), "1"))}); a.Code != "MKT.9001" {
		t.Errorf("after SetInstances: %+v", a)
	}
	open.sim.SetInstances(nil)
	if a := open.do(t, request{body: body(t, rec("anything", "sn-2", lastHour.Add(-time.Hour), "1"))}); a.Code != "MKT.0000" {
		t.Errorf("after SetInstances(nil): %+v", a)
	}
}

// TestNonce: a nonce is refused again within the freshness window, and forgotten after it.
func TestNonce(t *testing.T) {
	h := newHarness(t, kgsim.Config{MaxSkew: time.Minute})
	b := body(t, rec("i1", "sn-1", lastHour, "1"))
	ts := strconv.FormatInt(t0.UnixMilli(), 10)
	if a := h.do(t, request{body: b, ts: ts, nonce: "n1"}); a.Code != "MKT.0000" {
		t.Fatalf("%+v", a)
	}
	h.clock.Add(30 * time.Second)
	if a := h.do(t, request{body: b, ts: ts, nonce: "n1"}); a.Code != "MKT.0154" || !strings.Contains(a.Msg, "nonce reused") {
		t.Errorf("replay: %+v", a)
	}
	// Reused with a fresh ts and a valid signature: still within the window of the first use.
	if a := h.do(t, request{body: b, nonce: "n1"}); a.Code != "MKT.0154" {
		t.Errorf("reuse with a new ts: %+v", a)
	}
	// A bad signature does not burn a nonce.
	if a := h.do(t, request{body: b, nonce: "n2", signature: "AAAA"}); a.Code != "MKT.0102" {
		t.Errorf("%+v", a)
	}
	if a := h.do(t, request{body: body(t, rec("i2", "sn-2", lastHour, "1")), nonce: "n2"}); a.Code != "MKT.0000" {
		t.Errorf("n2 after a bad signature: %+v", a)
	}
	h.clock.Add(2 * time.Minute)
	if a := h.do(t, request{body: body(t, rec("i3", "sn-3", lastHour, "1")), nonce: "n1"}); a.Code != "MKT.0000" {
		t.Errorf("after the window: %+v", a)
	}
	if st := h.sim.Stats(); st.Nonces != 1 {
		t.Errorf("remembered nonces %d, want 1 (older ones pruned)", st.Nonces)
	}
}

func TestRoutes(t *testing.T) {
	h := newHarness(t, kgsim.Config{Path: kgsim.DefaultPath})
	b := body(t, rec("i1", "sn-1", lastHour, "1"))
	if a := h.do(t, request{body: b, path: "/other"}); a.Status != 404 {
		t.Errorf("other path: %+v", a)
	}
	if a := h.do(t, request{body: b, method: http.MethodGet}); a.Status != 405 {
		t.Errorf("GET: %+v", a)
	}
	if a := h.do(t, request{body: b, method: http.MethodPost, path: kgsim.RecordsPath}); a.Status != 405 {
		t.Errorf("POST records: %+v", a)
	}
	anyPath := newHarness(t, kgsim.Config{})
	if a := anyPath.do(t, request{body: b, path: "/"}); a.Code != "MKT.0000" {
		t.Errorf("any path: %+v", a)
	}
}

// TestRecordsEndpoint: GET /_sim/records over HTTP, read back with FetchBilled.
func TestRecordsEndpoint(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	srv := httptest.NewServer(h.sim)
	t.Cleanup(srv.Close)

	res, err := http.Get(srv.URL + kgsim.RecordsPath)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if strings.TrimSpace(string(data)) != `{"records":[]}` {
		t.Errorf("empty: %s", data)
	}

	r := rec("i1", "sn-1", lastHour, "12.5000")
	r.RelatePkgInstance = "pkg-1"
	h.do(t, request{body: body(t, r, rec("i2", "sn-2", lastHour, "100"))})
	res, err = http.Get(srv.URL + kgsim.RecordsPath)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = io.ReadAll(res.Body)
	_ = res.Body.Close()
	const want = `{"records":[{"instance_id":"i1","metering_sn":"sn-1","record_time":"2026-11-22T03:05:00Z",` +
		`"begin_time":"2026-11-22T02:00:00Z","end_time":"2026-11-22T03:00:00Z","usage_value":"12.5",` +
		`"relate_pkg_instance":"pkg-1","batch":"b000001","received_at":"2026-11-22T03:10:00Z"},` +
		`{"instance_id":"i2","metering_sn":"sn-2","record_time":"2026-11-22T03:05:00Z",` +
		`"begin_time":"2026-11-22T02:00:00Z","end_time":"2026-11-22T03:00:00Z","usage_value":"100",` +
		`"batch":"b000001","received_at":"2026-11-22T03:10:00Z"}]}`
	if strings.TrimSpace(string(data)) != want {
		t.Errorf("records:\n got %s\nwant %s", data, want)
	}

	got, err := kgsim.FetchBilled(t.Context(), srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].MeteringSN != "sn-1" || !got[0].UsageValue.Equal(decimal.RequireFromString("12.5")) ||
		!got[0].BeginTime.Equal(lastHour) || got[0].RelatePkgInstance != "pkg-1" {
		t.Errorf("FetchBilled: %+v", got)
	}

	res, err = http.Get(srv.URL + kgsim.StatsPath)
	if err != nil {
		t.Fatal(err)
	}
	var st kgsim.Stats
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if st.Requests != 1 || st.Billed != 2 || st.ByCode["0000"] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestFaultsQueue: forced answers come in order, with the spec's status by default, and process nothing.
func TestFaultsQueue(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	h.sim.Faults().FailNext(1, "9003", 0)
	h.sim.Faults().FailNext(2, "MKT.0250", 0)
	h.sim.Faults().FailNext(1, "", 503)
	want := []struct {
		status int
		code   string
	}{{500, "MKT.9003"}, {406, "MKT.0250"}, {406, "MKT.0250"}, {503, ""}, {200, "MKT.0000"}}
	for i, w := range want {
		a := h.do(t, request{body: body(t, rec("i1", fmt.Sprintf("sn-%d", i), lastHour.Add(-time.Duration(i)*time.Hour), "1"))})
		if a.Status != w.status || a.Code != w.code {
			t.Errorf("call %d: %d %q, want %d %q", i, a.Status, a.Code, w.status, w.code)
		}
	}
	if n := len(h.sim.Billed()); n != 1 {
		t.Errorf("billed %d, want 1", n)
	}
	if st := h.sim.Stats(); st.ByCode["none"] != 1 || st.ByCode["0250"] != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestFaultsSeeded: the same seed gives the same sequence of injected failures.
func TestFaultsSeeded(t *testing.T) {
	run := func() string {
		h := newHarness(t, kgsim.Config{})
		h.sim.Faults().Seed(42)
		h.sim.Faults().Rate5xx(0.5)
		var out []string
		for i := range 40 {
			a := h.do(t, request{body: body(t, rec("i1", fmt.Sprintf("sn-%d", i), lastHour.Add(-time.Duration(i)*time.Hour), "1"))})
			out = append(out, a.Code)
		}
		return strings.Join(out, ",")
	}
	first, second := run(), run()
	if first != second {
		t.Errorf("not repeatable:\n%s\n%s", first, second)
	}
	if !strings.Contains(first, "0999") || !strings.Contains(first, "0000") {
		t.Errorf("rate 0.5 gave %s", first)
	}
}

func TestParseInstances(t *testing.T) {
	good := `
instances:
  - instance_id: a
    started_at: 2026-11-01T00:00:00+08:00
    meter: tokens        # meterd spec keys are accepted
    sku: OFFI-TOKENS
  - instance_id: b
    started_at: 2026-11-01T00:00:00Z
    released_at: 2026-11-20T00:00:00Z
    status: RELEASED
  - instance_id: c
    status: FROZEN
    started_at: 2026-11-02T00:00:00Z
  - instance_id: d
    frozen_from: 2026-11-03T00:00:00Z
    frozen_until: 2026-11-04T00:00:00Z
meters: []               # other keys of a meterd config are ignored
`
	lives, err := kgsim.ParseInstances([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(lives) != 4 || !lives["a"].Start.Equal(time.Date(2026, 10, 31, 16, 0, 0, 0, time.UTC)) ||
		!lives["b"].End.Equal(time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)) ||
		!lives["c"].FrozenFrom.Equal(lives["c"].Start) || !lives["d"].FrozenUntil.Equal(time.Date(2026, 11, 4, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("lives %+v", lives)
	}
	list, err := kgsim.ParseInstances([]byte("- instance_id: x\n"))
	if err != nil || len(list) != 1 {
		t.Errorf("a bare list: %v %v", list, err)
	}

	bad := `
- instance_id: ""
- instance_id: b
  status: RELEASED
- instance_id: c
  started_at: yesterday
- instance_id: c
- instance_id: e
  status: PAUSED
`
	_, err = kgsim.ParseInstances([]byte(bad))
	for _, want := range []string{"instances[0].instance_id: required", "instances[1].released_at: required",
		"instances[2].started_at", "instances[4].status"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if _, err := kgsim.ParseInstances([]byte("- instance_id: a\n  startd_at: x\n")); err == nil || !strings.Contains(err.Error(), "startd_at") {
		t.Errorf("misspelt key: %v", err)
	}
}

// TestConcurrentSameRecord: racing calls with the same record bill it once.
func TestConcurrentSameRecord(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	srv := httptest.NewServer(h.sim)
	t.Cleanup(srv.Close)
	b := body(t, rec("i1", "sn-1", lastHour, "1"))
	var wg sync.WaitGroup
	codes := make([]string, 20)
	for i := range codes {
		wg.Go(func() {
			ts, nonce := strconv.FormatInt(t0.UnixMilli(), 10), fmt.Sprintf("n-%d", i)
			req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(b))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("ts", ts)
			req.Header.Set("nonce", nonce)
			req.Header.Set("signature", koogallery.Sign([]byte(key), ts, nonce, b))
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer func() { _ = res.Body.Close() }()
			var a answer
			_ = json.NewDecoder(res.Body).Decode(&a)
			codes[i] = a.Code + fmt.Sprint(a.abnormal())
		})
	}
	wg.Wait()
	if n := len(h.sim.Billed()); n != 1 {
		t.Errorf("billed %d, want 1: %v", n, codes)
	}
	dups := 0
	for _, c := range codes {
		if strings.Contains(c, "sn-1:005") {
			dups++
		}
	}
	if dups != 19 {
		t.Errorf("want 19 answers with 005: %v", codes)
	}
}

// TestCloseReleasesHeld: a call held by Stall ends with a dropped connection when the simulator closes, never
// with an empty 200.
func TestCloseReleasesHeld(t *testing.T) {
	h := newHarness(t, kgsim.Config{})
	srv := httptest.NewServer(h.sim)
	t.Cleanup(srv.Close)
	h.sim.Faults().Stall(true)
	b := body(t, rec("i1", "sn-1", lastHour, "1"))
	errc := make(chan error, 1)
	go func() {
		ts, nonce := strconv.FormatInt(t0.UnixMilli(), 10), "n-held"
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("ts", ts)
		req.Header.Set("nonce", nonce)
		req.Header.Set("signature", koogallery.Sign([]byte(key), ts, nonce, b))
		res, err := srv.Client().Do(req)
		if err == nil {
			data, _ := io.ReadAll(res.Body)
			_ = res.Body.Close()
			err = fmt.Errorf("answered %d %q", res.StatusCode, data)
			errc <- err
			return
		}
		errc <- nil
	}()
	for h.sim.Stats().Held == 0 {
		time.Sleep(time.Millisecond)
	}
	h.sim.Close()
	select {
	case err := <-errc:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("held call not released")
	}
	if n := len(h.sim.Billed()); n != 0 {
		t.Errorf("billed %d", n)
	}
}
