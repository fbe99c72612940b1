package ingest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meterd/meterd/ingest"
)

// corpusCase is one entry of testdata/corpus/cases.json: a request body (a file of the corpus, or generated) and
// what the real handler over a real store must answer.
type corpusCase struct {
	File        string            `json:"file"`     // body, under testdata/corpus; placeholders {{AT}}... replaced
	Generate    string            `json:"generate"` // or a generated body: name:parameter (see generate)
	ContentType string            `json:"content_type"`
	Headers     map[string]string `json:"headers"`
	Status      int               `json:"status"`
	Error       string            `json:"error"` // substring of the error of a non-200 answer
	Accepted    int               `json:"accepted"`
	Duplicates  int               `json:"duplicates"`
	// Rejected lists every refused event of a 200 answer, by index: its code (checked through the metric and the
	// dead letter) and a substring of its reason.
	Rejected []struct {
		Index  int    `json:"index"`
		Code   string `json:"code"`
		Reason string `json:"reason"`
	} `json:"rejected"`
	// Stored maps an accepted id to its stored meter values (meter -> exact text): valid data beside bad data.
	Stored map[string]map[string]string `json:"stored"`
	Why    string                       `json:"why"` // what the case is about, for people
}

func (c corpusCase) name() string {
	if c.File != "" {
		return c.File
	}
	return c.Generate
}

// corpusTimes are the placeholders of the corpus files, relative to the fixed request time of these tests.
func corpusTimes() *strings.Replacer {
	at := now.Add(-time.Hour)
	return strings.NewReplacer(
		"{{AT}}", at.Format(time.RFC3339),
		"{{AT_LOWER_T}}", strings.Replace(at.Format(time.RFC3339), "T", "t", 1),
		"{{AT_OFFSET}}", at.In(time.FixedZone("", 5*3600+1800)).Format(time.RFC3339),
		"{{AT_FRACTION13}}", strings.Replace(at.Format(time.RFC3339), "Z", ".1234567891234Z", 1),
		"{{OLD}}", now.Add(-22*24*time.Hour).Format(time.RFC3339),
		"{{FUTURE}}", now.Add(6*time.Minute).Format(time.RFC3339),
	)
}

// generate builds the bodies too large or too regular to keep as files.
func generate(t *testing.T, spec string) []byte {
	t.Helper()
	name, param, _ := strings.Cut(spec, ":")
	var n int
	if param != "" {
		if _, err := fmt.Sscan(param, &n); err != nil {
			t.Fatalf("generate %q: %v", spec, err)
		}
	}
	at := now.Add(-time.Hour)
	switch name {
	case "binary_pct_nul", "binary_pct_ff": // binary mode: the attributes are in the case's headers
		return []byte(`{"tokens":"4"}`)
	case "deep_data": // data nested n arrays deep beside the value
		return []byte(ev("deep-1", "llm_request", "t1", at, `{"tokens":"1","x":`+strings.Repeat("[", n)+strings.Repeat("]", n)+`}`))
	case "deep_ndjson": // a line nested n deep between two good lines
		return []byte(ev("deepnd-1", "api_call", "t1", at, "") + "\n" + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n" +
			ev("deepnd-2", "api_call", "t1", at, "") + "\n")
	case "huge_id": // an id of n characters
		return []byte(ev(strings.Repeat("i", n), "api_call", "t1", at, ""))
	case "huge_unique_key": // a UNIQUE_COUNT key of n characters
		return []byte(ev("uqhuge-1", "login", "t1", at, `{"user":"`+strings.Repeat("u", n)+`"}`))
	case "huge_digits": // a value of n digits
		return []byte(ev("digits-1", "llm_request", "t1", at, `{"tokens":"`+strings.Repeat("9", n)+`"}`))
	case "over_max_body": // n bytes of whitespace after a good event: over the 64 KiB limit of newEnv
		return []byte(ev("big-1", "api_call", "t1", at, "") + strings.Repeat(" ", n))
	case "many_keys": // data with n members
		var b strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		return []byte(ev("keys-1", "llm_request", "t1", at, `{`+b.String()+`"tokens":"2"}`))
	case "alternating": // n events, every other one bad: the good half is stored
		var b strings.Builder
		b.WriteString("[")
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(",")
			}
			if i%2 == 0 {
				b.WriteString(ev(fmt.Sprintf("alt-%d", i), "api_call", "t1", at, ""))
			} else {
				b.WriteString(ev(fmt.Sprintf("alt-%d", i), "llm_request", "t1", at, `{"tokens":"-1"}`))
			}
		}
		return []byte(b.String() + "]")
	}
	t.Fatalf("no generator %q", name)
	return nil
}

// TestCorpus sends every body of testdata/corpus (malformed, hostile and edge-case events) through the real HTTP
// handler into a real SQLite store, and checks the status, the error or the per-event reasons, the rejection
// codes (metric and dead letter), that every valid event beside bad ones is stored with its exact value, and that
// nothing else is.
func TestCorpus(t *testing.T) {
	if raceDetector {
		// One request per case costs 20s under the race detector; TestCorpusAsOneBatch sends the same bodies
		// through the same handler and writer in one request, which is what the detector can judge.
		t.Skip("per-case corpus skipped under -race; TestCorpusAsOneBatch covers it")
	}
	data, err := os.ReadFile(filepath.Join("testdata", "corpus", "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []corpusCase
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	// Every file of the corpus has a case, so a body added without its expectation fails here.
	files, err := filepath.Glob(filepath.Join("testdata", "corpus", "*"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{"cases.json": true}
	for _, c := range cases {
		listed[c.File] = true
	}
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("corpus file %s has no case in cases.json", filepath.Base(f))
		}
	}
	repl := corpusTimes()
	// One store for every case (ids are unique across the corpus), each case judged by what it added: opening a
	// store per case costs more than the whole corpus, most of all under the race detector.
	e := newEnv(t, "", ingest.Tokens{})
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			var body []byte
			if c.File != "" {
				raw, err := os.ReadFile(filepath.Join("testdata", "corpus", c.File))
				if err != nil {
					t.Fatal(err)
				}
				body = []byte(repl.Replace(string(raw)))
			} else {
				body = generate(t, c.Generate)
			}
			headers := map[string]string{}
			for k, v := range c.Headers {
				headers[k] = repl.Replace(v)
			}
			marks := e.query(`SELECT (SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce(max(n), 0) FROM dead_letters)`)[0]
			lastSeq, lastDead := marks[0], marks[1]
			before := map[ingest.Code]float64{}
			for _, code := range ingest.Codes {
				before[code] = testutil.ToFloat64(e.metrics.RejectedCounter(code))
			}
			status, resp, raw := e.post(c.ContentType, string(body), headers)
			if status != c.Status {
				t.Fatalf("status %d (%.300s), want %d", status, raw, c.Status)
			}
			if !json.Valid([]byte(raw)) {
				t.Errorf("answer is not valid JSON: %q", raw)
			}
			stored := e.query(`SELECT id FROM events WHERE seq > ? ORDER BY seq`, lastSeq)
			if status != http.StatusOK {
				if !strings.Contains(raw, c.Error) {
					t.Errorf("error %.300s, want it to contain %q", raw, c.Error)
				}
				if len(stored) != 0 {
					t.Errorf("a refused request stored %d events", len(stored))
				}
				return
			}
			if resp.Accepted != c.Accepted || resp.Duplicates != c.Duplicates {
				t.Errorf("accepted %d duplicates %d, want %d and %d", resp.Accepted, resp.Duplicates, c.Accepted, c.Duplicates)
			}
			if len(resp.Rejected) != len(c.Rejected) {
				t.Errorf("%d rejected, want %d: %+v", len(resp.Rejected), len(c.Rejected), resp.Rejected)
			}
			codes := map[ingest.Code]int{}
			for i, w := range c.Rejected {
				codes[ingest.Code(w.Code)]++
				if i >= len(resp.Rejected) {
					break
				}
				got := resp.Rejected[i]
				if got.Index != w.Index || !strings.Contains(got.Reason, w.Reason) {
					t.Errorf("rejected[%d] = %d %q, want %d ...%q...", i, got.Index, got.Reason, w.Index, w.Reason)
				}
			}
			for _, code := range ingest.Codes {
				if got := testutil.ToFloat64(e.metrics.RejectedCounter(code)) - before[code]; int(got) != codes[code] {
					t.Errorf("meterd_ingest_rejected_total{reason=%q} grew by %v, want %d", code, got, codes[code])
				}
			}
			var deadCodes []string
			for _, r := range e.query(`SELECT code FROM dead_letters WHERE n > ? ORDER BY n`, lastDead) {
				deadCodes = append(deadCodes, r[0])
			}
			var wantCodes []string
			for _, w := range c.Rejected {
				wantCodes = append(wantCodes, w.Code)
			}
			sort.Strings(deadCodes)
			sort.Strings(wantCodes)
			if fmt.Sprint(deadCodes) != fmt.Sprint(wantCodes) {
				t.Errorf("dead letters %v, want %v", deadCodes, wantCodes)
			}
			if len(stored) != c.Accepted {
				t.Errorf("%d events stored, %d accepted", len(stored), c.Accepted)
			}
			for id, meters := range c.Stored {
				for m, want := range meters {
					rows := e.query(`SELECT v.value FROM event_values v JOIN events e USING (seq) WHERE e.id = ? AND v.meter = ?`, id, m)
					if len(rows) != 1 || rows[0][0] != want {
						t.Errorf("stored %s %s = %v, want %q", id, m, rows, want)
					}
				}
			}
		})
	}
	// The dead letters list is what operators read: it must stay valid JSON whatever was sent.
	res, err := http.Get(e.server.URL + "/v1/events/rejected?limit=10000")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK || !json.Valid(buf.Bytes()) {
		t.Errorf("GET /v1/events/rejected: %d %.300q", res.StatusCode, buf.String())
	}
}

// TestCorpusAsOneBatch sends every single-event body of the corpus that is answered 200 on its own as one NDJSON
// request, followed by a batch where every other event is bad: each line must get the outcome it gets alone, and
// every valid event beside the bad ones is stored (valid data beside bad data is kept).
func TestCorpusAsOneBatch(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "corpus", "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []corpusCase
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	repl := corpusTimes()
	var body bytes.Buffer
	var want []corpusCase
	for _, c := range cases {
		if c.File == "" || c.ContentType != ingest.MediaCloudEvent || len(c.Headers) > 0 || c.Status != http.StatusOK {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("testdata", "corpus", c.File))
		if err != nil {
			t.Fatal(err)
		}
		line := repl.Replace(string(raw))
		if strings.ContainsAny(line, "\n\r") || strings.TrimSpace(line) == "" {
			continue
		}
		body.WriteString(line + "\n")
		want = append(want, c)
	}
	if len(want) < 40 {
		t.Fatalf("only %d single-event cases", len(want))
	}
	e := newEnv(t, "", ingest.Tokens{})
	status, resp, raw := e.post(ingest.MediaNDJSON, body.String(), nil)
	if status != http.StatusOK {
		t.Fatalf("status %d: %.300s", status, raw)
	}
	got := map[int]string{}
	for _, r := range resp.Rejected {
		got[r.Index] = r.Reason
	}
	accepted := 0
	for i, c := range want {
		reason, rejected := got[i]
		switch {
		case len(c.Rejected) == 0 && rejected:
			t.Errorf("line %d (%s) rejected in a batch: %s", i, c.File, reason)
		case len(c.Rejected) == 0:
			accepted++
		case !rejected:
			t.Errorf("line %d (%s) accepted in a batch, alone it is rejected", i, c.File)
		case !strings.Contains(reason, c.Rejected[0].Reason):
			t.Errorf("line %d (%s): reason %q, alone %q", i, c.File, reason, c.Rejected[0].Reason)
		}
	}
	if resp.Accepted != accepted || len(resp.Rejected) != len(want)-accepted {
		t.Errorf("accepted %d rejected %d, want %d and %d", resp.Accepted, len(resp.Rejected), accepted, len(want)-accepted)
	}
	if n := e.query(`SELECT count(*) FROM events`)[0][0]; n != fmt.Sprint(accepted) {
		t.Errorf("%s events stored, want %d", n, accepted)
	}

	status, resp, raw = e.post(ingest.MediaBatch, string(generate(t, "alternating:300")), nil)
	if status != http.StatusOK || resp.Accepted != 150 || len(resp.Rejected) != 150 {
		t.Fatalf("alternating batch: %d %.300s", status, raw)
	}
	for i, r := range resp.Rejected {
		if r.Index != 2*i+1 {
			t.Fatalf("rejected[%d] is index %d, want %d", i, r.Index, 2*i+1)
		}
	}
	if n := e.query(`SELECT count(*) FROM events WHERE id LIKE 'alt-%'`)[0][0]; n != "150" {
		t.Errorf("%s of the 150 good events stored", n)
	}
}
