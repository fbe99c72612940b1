package kgsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/report/koogallery"
)

// DefaultPath is the path of the usage API on KooGallery's hosts (spec §1); `meterd kgsim` serves it.
const DefaultPath = "/api/mkp-openapi-public/global/v1/isv/usage-data"

// DefaultMaxSkew is the default freshness window of ts, either side of the simulator's clock.
const DefaultMaxSkew = 5 * time.Minute

// MaxAge is how old a begin_time may be (spec §3: 21 days, 9004).
const MaxAge = 21 * 24 * time.Hour

// Routes of the simulator's own read-outs, outside KooGallery's API.
const (
	RecordsPath = "/_sim/records"
	StatsPath   = "/_sim/stats"
)

const (
	maxBody = 16 << 20 // far above 1000 records, so an oversized batch is answered 9003, not cut off
	// maxHold caps how long a held request (TimeoutRate, Stall) waits for its client to give up.
	maxHold = 10 * time.Minute
	// maxReasons bounds the problems listed in one 0100 message.
	maxReasons = 10
)

// Config holds what the simulator needs. Defaults: Now time.Now, MaxSkew DefaultMaxSkew, Path "" (any path).
type Config struct {
	// Key is the interconnection key that signatures must verify against.
	Key []byte
	// Path is the only path answering usage calls ("" accepts any path, which suits tests that point a client
	// at the server's root); `meterd kgsim` sets DefaultPath. /_sim/... are always served.
	Path string
	// Now is the simulator's clock: ts freshness, 21-day expiry, freeze and time-range checks, the Date header.
	Now func() time.Time
	// MaxSkew is the freshness window of ts, either way.
	MaxSkew time.Duration
	// Instances known to the simulator, with their lives. nil: every instance exists with an unbounded life
	// (SetInstance may still give some a life). Not nil, even empty: a record of an instance not in it makes the
	// call fail with 9001.
	Instances map[string]Life
	// Logger gets one line per usage call (code, records, billed); nil discards. It never sees the key.
	Logger *slog.Logger
}

// BilledRecord is a record the simulator billed.
type BilledRecord struct {
	InstanceID, MeteringSN         string
	RecordTime, BeginTime, EndTime time.Time
	UsageValue                     decimal.Decimal
	RelatePkgInstance              string
	Batch                          string    // the call that billed it: "b000001", ... in order of processing
	ReceivedAt                     time.Time // the simulator's clock when the call was processed
}

// Stats count what the simulator saw.
type Stats struct {
	Requests int            `json:"requests"` // usage calls received
	ByCode   map[string]int `json:"by_code"`  // answers by code ("0000", "0154", ...; "none" for none); held calls are not answered
	Records  int            `json:"records"`  // records in calls that reached the per-record checks
	Billed   int            `json:"billed"`   // records billed
	Abnormal map[string]int `json:"abnormal"` // abnormal_usage_data entries by record-level code
	Lost     int            `json:"lost"`     // calls processed whose answer was dropped
	Held     int            `json:"held"`     // calls held unprocessed (TimeoutRate, Stall)
	Batches  int            `json:"batches"`  // calls that reached the per-record checks
	Nonces   int            `json:"nonces"`   // nonces remembered now (within the freshness window)
}

// Sim is the simulator: an http.Handler safe for concurrent use.
type Sim struct {
	key     []byte
	path    string
	now     func() time.Time
	maxSkew time.Duration
	log     *slog.Logger
	faults  *Faults

	closed    chan struct{}
	closeOnce sync.Once

	// mu makes each call's checks and billing atomic: two calls racing with the same metering_sn bill it once.
	mu        sync.Mutex
	strict    bool
	lives     map[string]Life
	nonces    map[string]time.Time // nonce -> when it may be forgotten
	nextPrune time.Time
	sns       map[string]bool
	periods   map[period]bool
	billed    []BilledRecord
	stats     Stats
}

// period keys a billed SDR's instance and period; Unix seconds, since time.Time values of one instant may
// differ as map keys (location, monotonic reading).
type period struct {
	instance   string
	begin, end int64
}

func periodOf(r record) period { return period{r.InstanceID, r.BeginTime.Unix(), r.EndTime.Unix()} }

// New returns a simulator for cfg.
func New(cfg Config) *Sim {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSkew <= 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	lives := make(map[string]Life, len(cfg.Instances))
	maps.Copy(lives, cfg.Instances)
	return &Sim{
		key: append([]byte(nil), cfg.Key...), path: cfg.Path, now: cfg.Now, maxSkew: cfg.MaxSkew, log: cfg.Logger,
		faults: newFaults(), closed: make(chan struct{}),
		strict: cfg.Instances != nil, lives: lives,
		nonces: map[string]time.Time{}, sns: map[string]bool{}, periods: map[period]bool{},
		stats: Stats{ByCode: map[string]int{}, Abnormal: map[string]int{}},
	}
}

// SetInstance adds or changes an instance's life (e.g. a freeze in the middle of a test). It does not change
// whether unknown instances exist (Config.Instances).
func (s *Sim) SetInstance(id string, l Life) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lives[id] = l
}

// SetInstances replaces every instance life, as Config.Instances does at start: a non-nil map (even empty) makes
// records of instances not in it fail their call with 9001; nil lets every instance exist again.
func (s *Sim) SetInstances(lives map[string]Life) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.strict = lives != nil
	s.lives = maps.Clone(lives)
	if s.lives == nil {
		s.lives = map[string]Life{}
	}
}

// Faults returns the fault knobs.
func (s *Sim) Faults() *Faults { return s.faults }

// Close releases every held request (TimeoutRate, Stall); they end without an answer. Call it before closing the
// HTTP server, whose shutdown waits for them. The simulator keeps answering other calls.
func (s *Sim) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
}

// Billed returns a copy of what was billed, in billing order.
func (s *Sim) Billed() []BilledRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]BilledRecord(nil), s.billed...)
}

// Stats returns a copy of the counts.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByCode = maps.Clone(s.stats.ByCode)
	st.Abnormal = maps.Clone(s.stats.Abnormal)
	st.Nonces = len(s.nonces)
	return st
}

// ServeHTTP serves usage calls on the configured path, and GET /_sim/records and GET /_sim/stats.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case RecordsPath, StatsPath:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			s.write(w, http.StatusMethodNotAllowed, answer{Msg: "method not allowed"})
			return
		}
		if r.URL.Path == RecordsPath {
			s.writeJSON(w, http.StatusOK, struct {
				Records []BilledRecord `json:"records"`
			}{Records: nonNil(s.Billed())})
		} else {
			s.writeJSON(w, http.StatusOK, s.Stats())
		}
		return
	}
	if s.path != "" && r.URL.Path != s.path {
		s.write(w, http.StatusNotFound, answer{Msg: "not found: usage calls go to " + s.path})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.write(w, http.StatusMethodNotAllowed, answer{Msg: "method not allowed: POST usage records"})
		return
	}
	s.push(w, r)
}

// answer is the JSON body of every answer.
type answer struct {
	Code     string          `json:"error_code,omitempty"`
	Msg      string          `json:"error_msg"`
	Abnormal []abnormalEntry `json:"abnormal_usage_data,omitempty"`
}

type abnormalEntry struct {
	MeteringSN string `json:"metering_sn"`
	Code       string `json:"error_code"`
	Msg        string `json:"error_msg"`
}

// outcome is the result of processing one call.
type outcome struct {
	status   int
	code     string
	msg      string
	abnormal []abnormalEntry
	records  int
	billed   int
}

func (s *Sim) push(w http.ResponseWriter, r *http.Request) {
	// The body is read first in every case: the server notices a client that gives up (and cancels the request's
	// context) only once the body has been consumed.
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	p := s.faults.draw()
	if p.latency > 0 && !s.sleep(w, r, p.latency) {
		s.count(func(st *Stats) { st.Requests++ }) // interrupted during the latency: nothing processed
		return
	}
	if p.hold {
		s.count(func(st *Stats) { st.Requests++; st.Held++ })
		s.log.Info("request held", "fault", "timeout")
		if s.sleep(w, r, maxHold) {
			s.finish(w, outcome{status: http.StatusGatewayTimeout, msg: "held past the client's timeout"}, "timeout")
		}
		return
	}
	var out outcome
	fault := ""
	switch {
	case p.forced != nil:
		out = outcome{status: p.forced.status, code: stripPrefix(p.forced.code), msg: "injected failure"}
		fault = "forced"
	case p.fail5xx:
		out = outcome{status: http.StatusInternalServerError, code: "0999", msg: "internal error (injected)"}
		fault = "5xx"
	case readErr != nil:
		out = outcome{status: http.StatusBadRequest, code: "0100", msg: "parameter invalid: read body: " + readErr.Error()}
	default:
		out = s.process(r.Header, body)
	}
	s.count(func(st *Stats) { st.Requests++ })
	if p.lose && fault == "" {
		s.count(func(st *Stats) { st.Lost++ })
		s.logOutcome(out, "lost")
		dropConnection(w)
		return
	}
	s.finish(w, out, fault)
}

// finish answers and counts the answer.
func (s *Sim) finish(w http.ResponseWriter, out outcome, fault string) {
	s.count(func(st *Stats) {
		c := out.code
		if c == "" {
			c = "none"
		}
		st.ByCode[c]++
	})
	s.logOutcome(out, fault)
	a := answer{Msg: out.msg, Abnormal: out.abnormal}
	if out.code != "" {
		a.Code = "MKT." + out.code
	}
	s.write(w, out.status, a)
}

func (s *Sim) logOutcome(out outcome, fault string) {
	attrs := []any{"code", out.code, "http_status", out.status, "records", out.records, "billed", out.billed,
		"abnormal", len(out.abnormal)}
	if fault != "" {
		attrs = append(attrs, "fault", fault)
	}
	if out.code != "0000" {
		attrs = append(attrs, "reason", out.msg)
	}
	s.log.Info("request", attrs...)
}

// sleep waits d and reports whether it passed. When the client gives up first there is nobody to answer; when
// the simulator closes first the connection is dropped, so the client sees a transport error rather than the
// empty 200 an unanswered handler would produce.
func (s *Sim) sleep(w http.ResponseWriter, r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
	case <-s.closed:
		dropConnection(w)
	}
	return false
}

// dropConnection closes the connection without an answer, so the client sees a transport error although the
// call was processed.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close() // the point is to break the connection; an error closing it changes nothing
			return
		}
	}
	// HTTP/2 cannot be hijacked: aborting the handler resets the stream, which the client sees the same way.
	panic(http.ErrAbortHandler)
}

func (s *Sim) count(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

// process checks one call and bills it. Call-level refusals return before anything is billed.
func (s *Sim) process(h http.Header, body []byte) outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if rej := s.authenticate(h, body, now); rej != nil {
		return rej.outcome()
	}
	wires, rej := parseBody(body)
	if rej != nil {
		return rej.outcome()
	}
	refuse := func(r *rejection) outcome {
		o := r.outcome()
		o.records = len(wires) // for the log: how many records the refusal concerned
		return o
	}
	switch n := len(wires); {
	case n == 0:
		return refuse(reject("0100", "parameter invalid: usage_records is empty"))
	case n > koogallery.MaxBatch:
		return refuse(reject("9003", "too many records: %d, at most %d per call", n, koogallery.MaxBatch))
	}
	recs := make([]record, len(wires))
	var probs []string
	for i, w := range wires {
		rec, p := w.check(fmt.Sprintf("usage_records[%d]", i))
		recs[i] = rec
		probs = append(probs, p...)
	}
	if len(probs) > 0 {
		more := ""
		if len(probs) > maxReasons {
			more = fmt.Sprintf("; and %d more", len(probs)-maxReasons)
			probs = probs[:maxReasons]
		}
		return refuse(reject("0100", "parameter invalid: %s%s", strings.Join(probs, "; "), more))
	}
	oldest := now.Add(-MaxAge)
	for i, r := range recs {
		if r.BeginTime.Before(oldest) {
			return refuse(reject("9004", "usage_records[%d].begin_time %s is older than 21 days", i,
				r.BeginTime.Format(koogallery.TimeLayout)))
		}
	}
	if s.strict {
		for i, r := range recs {
			if _, ok := s.lives[r.InstanceID]; !ok {
				return refuse(reject("9001", "instance not found: usage_records[%d].instance_id %q", i, r.InstanceID))
			}
		}
	}

	s.stats.Batches++
	batch := fmt.Sprintf("b%06d", s.stats.Batches)
	out := outcome{status: http.StatusOK, code: "0000", msg: "success", records: len(recs)}
	for _, r := range recs {
		code, msg := s.business(r, now)
		if code != "" {
			out.abnormal = append(out.abnormal, abnormalEntry{MeteringSN: r.MeteringSN, Code: code, Msg: msg})
			s.stats.Abnormal[code]++
			continue
		}
		s.sns[r.MeteringSN] = true
		s.periods[periodOf(r)] = true
		s.billed = append(s.billed, BilledRecord{InstanceID: r.InstanceID, MeteringSN: r.MeteringSN,
			RecordTime: r.RecordTime, BeginTime: r.BeginTime, EndTime: r.EndTime,
			UsageValue: r.UsageValue, RelatePkgInstance: r.RelatePkgInstance,
			Batch: batch, ReceivedAt: now})
		out.billed++
	}
	s.stats.Records += len(recs)
	s.stats.Billed += out.billed
	return out
}

// business applies the per-record rules of spec §1-3 and §5 in a fixed order; "" means the record is billed.
func (s *Sim) business(r record, now time.Time) (code, msg string) {
	life, known := s.lives[r.InstanceID]
	f := func(t time.Time) string { return t.UTC().Format(koogallery.TimeLayout) }
	switch {
	case s.sns[r.MeteringSN]:
		return "005", "metering_sn duplicated"
	case s.periods[periodOf(r)]:
		return "010", "duplicate SDR: the instance already has a record for " + f(r.BeginTime) + "-" + f(r.EndTime)
	case r.BeginTime.After(r.EndTime):
		return "011", "time range invalid: begin_time after end_time"
	case r.EndTime.After(r.RecordTime):
		return "011", "time range invalid: end_time after record_time"
	case r.EndTime.After(now):
		return "011", "time range invalid: end_time in the future"
	case known && !life.Start.IsZero() && r.BeginTime.Before(life.Start):
		return "011", "time range invalid: begin_time before the instance started at " + f(life.Start)
	case known && !life.End.IsZero() && r.EndTime.After(life.End):
		return "011", "time range invalid: end_time after the instance was released at " + f(life.End)
	case known && life.frozenAt(now):
		return "013", "instance status abnormal: frozen"
	}
	return "", ""
}

// authenticate checks the content type and the ts, nonce and signature headers, and remembers the nonce of a
// call that passes.
func (s *Sim) authenticate(h http.Header, body []byte, now time.Time) *rejection {
	if mt, _, err := mime.ParseMediaType(h.Get("Content-Type")); err != nil || mt != "application/json" {
		return reject("0100", "parameter invalid: Content-Type %q, want application/json", h.Get("Content-Type"))
	}
	ts, nonce, sig := h.Get("ts"), h.Get("nonce"), h.Get("signature")
	ms, err := strconv.ParseInt(ts, 10, 64)
	switch {
	case ts == "" || nonce == "" || sig == "":
		return reject("0150", "unauthorized: headers ts, nonce and signature are required")
	case len(ts) > 20 || !digits(ts) || err != nil:
		return reject("0150", "unauthorized: header ts must be Unix milliseconds, at most 20 digits")
	case len(nonce) > 64:
		return reject("0150", "unauthorized: header nonce longer than 64 characters")
	}
	sent := time.UnixMilli(ms)
	if d := now.Sub(sent); d > s.maxSkew || d < -s.maxSkew {
		return reject("0154", "request expired: ts is %s from the server's time, allowed ±%s", d.Round(time.Millisecond), s.maxSkew)
	}
	if !s.verify(ts, nonce, body, sig) {
		return reject("0102", "signature check failed")
	}
	if !now.Before(s.nextPrune) {
		// Pruned at most once a second of the simulator's clock: a scan per call would cost O(calls in window).
		for n, until := range s.nonces {
			if now.After(until) {
				delete(s.nonces, n)
			}
		}
		s.nextPrune = now.Add(time.Second)
	}
	if until, seen := s.nonces[nonce]; seen && !now.After(until) {
		return reject("0154", "nonce reused: the nonce was already used within the freshness window")
	}
	// A replay is only possible while its ts is fresh: remember the nonce until then (or until MaxSkew from now
	// for a ts in the future), and no longer.
	until := now
	if sent.After(now) {
		until = sent
	}
	s.nonces[nonce] = until.Add(s.maxSkew)
	return nil
}

// verify computes the signature independently of the client package, so a shared bug cannot make both agree.
func (s *Sim) verify(ts, nonce string, body []byte, sig string) bool {
	got, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("ts=" + ts + "&nonce=" + nonce + "&body="))
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

func (r *rejection) outcome() outcome { return outcome{status: r.status, code: r.code, msg: r.msg} }

// statusOf is the HTTP status the spec gives a call-level code.
func statusOf(code string) int {
	switch code {
	case "0000":
		return http.StatusOK
	case "0100", "0101", "0199", "0102":
		return http.StatusBadRequest
	case "0150", "0151", "0154":
		return http.StatusUnauthorized
	case "0250":
		return http.StatusNotAcceptable
	}
	return http.StatusInternalServerError
}

func stripPrefix(code string) string {
	if i := strings.LastIndexByte(code, '.'); i >= 0 {
		return code[i+1:]
	}
	return code
}

func (s *Sim) write(w http.ResponseWriter, status int, a answer) { s.writeJSON(w, status, a) }

func (s *Sim) writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	// The simulator's clock, not the machine's: clients derive their clock skew from it.
	w.Header().Set("Date", s.now().UTC().Format(http.TimeFormat))
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n')) // the client is gone if this fails; nothing to do about it
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

var _ http.Handler = (*Sim)(nil)
