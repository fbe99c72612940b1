package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/stream"
)

// tokenEnv holds the bearer token for `events send|gen` when --token-file is not given.
const tokenEnv = "METERD_INGEST_TOKEN"

func newEventsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Send events from a file, or generate synthetic load",
	}
	cmd.AddCommand(newEventsSendCmd(), newEventsGenCmd())
	return cmd
}

// eventTarget takes batches of NDJSON events: a meterd ingest endpoint (ingest.Client) or a Kafka topic.
type eventTarget interface {
	PostNDJSON(ctx context.Context, body []byte) (ingest.Response, error)
}

// kafkaTarget produces each line of a batch to the events topic as is. The collectors validate and deduplicate
// (invalid events go to the dead-letter topic with the reason), so the answer only counts what Kafka took.
type kafkaTarget struct{ p *stream.Producer }

func (k kafkaTarget) PostNDJSON(ctx context.Context, body []byte) (ingest.Response, error) {
	var raws [][]byte
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		if l := bytes.TrimSpace(line); len(l) > 0 {
			raws = append(raws, l)
		}
	}
	if err := k.p.Send(ctx, raws); err != nil {
		return ingest.Response{}, err
	}
	return ingest.Response{Accepted: len(raws)}, nil
}

// ingestTarget reads --to and the token for sending events: the URL of a meterd ingest endpoint, or
// kafka://BROKER[,BROKER]/TOPIC to produce straight to the events topic. close releases the target.
func ingestTarget(to, tokenFile string) (target eventTarget, close func() error, err error) {
	if strings.HasPrefix(to, stream.URLScheme) {
		p, err := stream.OpenURL(to)
		if err != nil {
			return nil, nil, usagef("--to: %v", err)
		}
		return kafkaTarget{p}, p.Close, nil
	}
	c, err := httpTarget(to, tokenFile)
	if err != nil {
		return nil, nil, err
	}
	return c, func() error { return nil }, nil
}

// httpTarget reads the URL of POST /v1/events and the token.
func httpTarget(to, tokenFile string) (*ingest.Client, error) {
	if !strings.HasPrefix(to, "http://") && !strings.HasPrefix(to, "https://") {
		return nil, usagef("--to %q: want the URL of POST /v1/events, e.g. http://127.0.0.1:8080/v1/events, or kafka://HOST:PORT/TOPIC", to)
	}
	token := os.Getenv(tokenEnv)
	if tokenFile != "" {
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, usagef("--token-file: %v", err)
		}
		token = strings.TrimSpace(string(data))
	}
	return &ingest.Client{URL: to, Token: token, HTTP: &http.Client{Timeout: 2 * time.Minute}}, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// newProgress shows a progress bar on a terminal and nothing otherwise, so logs and CI output stay clean. unit
// names what is counted ("bytes" shows sizes).
func newProgress(w io.Writer, max int64, desc, unit string) *progressbar.ProgressBar {
	if !isTerminal(w) {
		return progressbar.DefaultSilent(max, desc)
	}
	opts := []progressbar.Option{progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) })}
	if unit == "bytes" {
		opts = append(opts, progressbar.OptionShowBytes(true))
	} else {
		opts = append(opts, progressbar.OptionShowIts(), progressbar.OptionSetItsString(unit))
	}
	return progressbar.NewOptions64(max, opts...)
}

func newEventsSendCmd() *cobra.Command {
	var to, file, tokenFile string
	var batch int
	cmd := &cobra.Command{
		Use:   "send --to URL [--file F.ndjson]",
		Short: "Send NDJSON events from a file or stdin to POST /v1/events",
		Long: `Send events, one JSON object per line, in batches. Failed requests are retried (the server deduplicates,
so a resend never counts twice). Rejected events are listed on stderr with their line number; the exit code is 1
when any event was rejected or could not be sent. With --to kafka://HOST:PORT/TOPIC the lines are produced to the
events topic as they are (acks from all replicas); the collectors validate them and dead-letter invalid ones.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if batch < 1 {
				return usagef("--batch: %d must be at least 1", batch)
			}
			client, closeTarget, err := ingestTarget(to, tokenFile)
			if err != nil {
				return err
			}
			defer func() { err = errors.Join(err, closeTarget()) }()
			in := cmd.InOrStdin()
			size := int64(-1)
			if file != "" && file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return usagef("--file: %v", err)
				}
				defer f.Close()
				if st, err := f.Stat(); err == nil {
					size = st.Size()
				}
				in = f
			}
			return sendEvents(cmd.Context(), client, in, size, batch, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "URL of POST /v1/events, or kafka://HOST:PORT[,HOST:PORT]/TOPIC to produce to the events topic (required)")
	cmd.Flags().StringVar(&file, "file", "-", "NDJSON file; - for stdin")
	cmd.Flags().IntVar(&batch, "batch", 1000, "events per request")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token (default: $"+tokenEnv+")")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// sendEvents posts the non-blank lines of in, batch lines per request, and maps rejections back to line numbers.
func sendEvents(ctx context.Context, client eventTarget, in io.Reader, size int64, batch int, stdout, stderr io.Writer) error {
	bar := newProgress(stderr, size, "sending", "bytes")
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	var body bytes.Buffer
	var lines []int // file line of each event in body
	var total ingest.Response
	rejected := 0
	flush := func() error {
		if len(lines) == 0 {
			return nil
		}
		resp, err := client.PostNDJSON(ctx, body.Bytes())
		if err != nil {
			return fmt.Errorf("send events of lines %d-%d: %w", lines[0], lines[len(lines)-1], err)
		}
		total.Accepted += resp.Accepted
		total.Duplicates += resp.Duplicates
		for _, r := range resp.Rejected {
			line := 0
			if r.Index >= 0 && r.Index < len(lines) {
				line = lines[r.Index]
			}
			fmt.Fprintf(stderr, "line %d: rejected (id %q): %s\n", line, r.ID, r.Reason)
			rejected++
		}
		body.Reset()
		lines = lines[:0]
		return nil
	}
	lineNo := 0
	for sc.Scan() {
		lineNo++
		_ = bar.Add(len(sc.Bytes()) + 1)
		l := bytes.TrimSpace(sc.Bytes())
		if len(l) == 0 {
			continue
		}
		body.Write(l)
		body.WriteByte('\n')
		lines = append(lines, lineNo)
		if len(lines) >= batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read events at line %d: %w", lineNo+1, err)
	}
	if err := flush(); err != nil {
		return err
	}
	_ = bar.Finish()
	fmt.Fprintf(stdout, "accepted %d, duplicates %d, rejected %d\n", total.Accepted, total.Duplicates, rejected)
	if rejected > 0 {
		return fmt.Errorf("%d events rejected (listed above)", rejected)
	}
	return nil
}

// genOptions describe synthetic events: a pure function of (options, index), so that two runs with the same flags
// produce the same events and a resend is a duplicate.
type genOptions struct {
	count       int
	eventType   string
	property    string
	subjects    int
	subjectPfx  string
	source      string
	idPrefix    string
	start       time.Time
	span        time.Duration
	dupRate     float64
	seed        uint64
	batch       int
	concurrency int
}

// appendEvent appends event i as one JSON line. Hand-built with strconv: a load generator must not be the
// bottleneck of the load it measures.
func (o *genOptions) appendEvent(b []byte, i int) []byte {
	t := o.start.Add(time.Duration(int64(o.span) / int64(o.count) * int64(i)))
	b = append(b, `{"specversion":"1.0","id":"`...)
	b = append(b, o.idPrefix...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `","source":"`...)
	b = append(b, o.source...)
	b = append(b, `","type":"`...)
	b = append(b, o.eventType...)
	b = append(b, `","subject":"`...)
	b = append(b, o.subjectPfx...)
	b = strconv.AppendInt(b, int64(i%o.subjects), 10)
	b = append(b, `","time":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if o.property != "" {
		// Values with a fractional part that float64 cannot hold exactly (x.1, x.3): totals must still be exact.
		b = append(b, `,"data":{"`...)
		b = append(b, o.property...)
		b = append(b, `":"`...)
		b = strconv.AppendInt(b, int64(i%1000), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(i%10), 10)
		b = append(b, `"}`...)
	}
	return append(b, "}\n"...)
}

func newEventsGenCmd() *cobra.Command {
	o := genOptions{}
	var to, tokenFile, startText string
	cmd := &cobra.Command{
		Use:   "gen [--to URL] [--count N]",
		Short: "Generate synthetic usage events (NDJSON to stdout, or posted to --to with a throughput report)",
		Long: `Generate deterministic synthetic events: event i has id <id-prefix>i, subject <subject-prefix>(i mod subjects),
a time spread evenly over [start, start+span) and, with --property, data {"<property>": "<i mod 1000>.<i mod 10>"}.
--duplicate-rate re-sends earlier events. With --to the events are posted in batches by --concurrency workers and
the run ends with events/s and request latency percentiles (the ingest benchmark).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if o.count < 1 || o.subjects < 1 || o.batch < 1 || o.concurrency < 1 || o.span <= 0 {
				return usagef("--count, --subjects, --batch, --concurrency and --span must be positive")
			}
			if o.dupRate < 0 || o.dupRate >= 1 {
				return usagef("--duplicate-rate: %v must be in [0, 1)", o.dupRate)
			}
			if startText == "" {
				o.start = time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
			} else {
				t, err := parseTimeFlag(startText)
				if err != nil {
					return usagef("--start: %v", err)
				}
				o.start = t
			}
			if to == "" {
				return genToWriter(&o, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			client, closeTarget, err := ingestTarget(to, tokenFile)
			if err != nil {
				return err
			}
			defer func() { err = errors.Join(err, closeTarget()) }()
			return genToServer(cmd.Context(), &o, client, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "URL of POST /v1/events or kafka://HOST:PORT/TOPIC; omit to print NDJSON to stdout")
	f.StringVar(&tokenFile, "token-file", "", "file holding the bearer token (default: $"+tokenEnv+")")
	f.IntVar(&o.count, "count", 1000, "events to generate (duplicates included)")
	f.StringVar(&o.eventType, "type", "api_call", "event type")
	f.StringVar(&o.property, "property", "", "data property holding the value (empty: no data, for COUNT meters)")
	f.IntVar(&o.subjects, "subjects", 10, "distinct subjects")
	f.StringVar(&o.subjectPfx, "subject-prefix", "tenant-", "subject prefix")
	f.StringVar(&o.source, "source", "meterd-gen", "event source")
	f.StringVar(&o.idPrefix, "id-prefix", "gen-", "event id prefix")
	f.StringVar(&startText, "start", "", "time of the first event, RFC 3339 (default: the start of the previous hour)")
	f.DurationVar(&o.span, "span", time.Hour, "the events' times are spread over this span")
	f.Float64Var(&o.dupRate, "duplicate-rate", 0, "fraction of events that re-send an earlier event")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the duplicate choice")
	f.IntVar(&o.batch, "batch", 1000, "events per request (with --to)")
	f.IntVar(&o.concurrency, "concurrency", 4, "concurrent requests (with --to)")
	return cmd
}

// parseTimeFlag accepts RFC 3339 (offsets and fractions) and the hour shorthand 2026-11-22T03.
func parseTimeFlag(s string) (time.Time, error) { return aggregate.ParseTime(s) }

// eventIndexes yields the index of each event to emit: i itself, or with --duplicate-rate an earlier index.
func (o *genOptions) eventIndexes(yield func(n, idx int) bool) {
	rng := rand.New(rand.NewPCG(o.seed, 0x6d65746572640a))
	next := 0
	for n := 0; n < o.count; n++ {
		idx := next
		if next > 0 && rng.Float64() < o.dupRate {
			idx = rng.IntN(next)
		} else {
			next++
		}
		if !yield(n, idx) {
			return
		}
	}
}

func genToWriter(o *genOptions, out, stderr io.Writer) error {
	w := bufio.NewWriterSize(out, 1<<20)
	bar := newProgress(stderr, int64(o.count), "generating", "events")
	var buf []byte
	var werr error
	o.eventIndexes(func(n, idx int) bool {
		buf = o.appendEvent(buf[:0], idx)
		if _, werr = w.Write(buf); werr != nil {
			return false
		}
		if n%10000 == 0 {
			_ = bar.Set(n)
		}
		return true
	})
	if werr != nil {
		return fmt.Errorf("write events: %w", werr)
	}
	_ = bar.Finish()
	return w.Flush()
}

func genToServer(ctx context.Context, o *genOptions, client eventTarget, stdout, stderr io.Writer) error {
	type job struct{ body []byte }
	jobs := make(chan job, o.concurrency*2)
	var mu sync.Mutex
	var total ingest.Response
	rejected := 0
	var latencies []time.Duration
	var firstErr error
	bar := newProgress(stderr, int64(o.count), "posting", "events")
	var wg sync.WaitGroup
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				t0 := time.Now()
				resp, err := client.PostNDJSON(ctx, j.body)
				d := time.Since(t0)
				mu.Lock()
				latencies = append(latencies, d)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				total.Accepted += resp.Accepted
				total.Duplicates += resp.Duplicates
				rejected += len(resp.Rejected)
				if len(resp.Rejected) > 0 && rejected <= 5 {
					fmt.Fprintf(stderr, "rejected: %s\n", resp.Rejected[0].Reason)
				}
				mu.Unlock()
				_ = bar.Add(resp.Accepted + resp.Duplicates + len(resp.Rejected))
			}
		}()
	}
	start := time.Now()
	var body []byte
	inBatch := 0
	o.eventIndexes(func(_, idx int) bool {
		body = o.appendEvent(body, idx)
		inBatch++
		if inBatch == o.batch {
			select {
			case jobs <- job{body: body}:
			case <-ctx.Done():
				return false
			}
			body, inBatch = nil, 0
		}
		return true
	})
	if inBatch > 0 && ctx.Err() == nil {
		jobs <- job{body: body}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	_ = bar.Finish()
	if err := ctx.Err(); err != nil {
		return err
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) time.Duration {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(float64(len(latencies))*p))]
	}
	sent := total.Accepted + total.Duplicates + rejected
	fmt.Fprintf(stdout, "events %d (accepted %d, duplicates %d, rejected %d) in %s: %.0f events/s; requests %d of %d events, latency p50 %s p99 %s max %s\n",
		sent, total.Accepted, total.Duplicates, rejected, elapsed.Round(time.Millisecond),
		float64(sent)/elapsed.Seconds(), len(latencies), o.batch, pct(0.50).Round(time.Microsecond),
		pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond))
	if firstErr != nil {
		return fmt.Errorf("some batches were not sent: %w", firstErr)
	}
	if rejected > 0 {
		return fmt.Errorf("%d events rejected", rejected)
	}
	return nil
}
