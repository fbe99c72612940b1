// Command ingestbench is the store side of bench/ingest.sh: it preloads a SQLite store directly (no HTTP, so that
// ten million events take minutes, not the length of the benchmark) and measures the raw store ceiling on that same
// store. Both go through the real ingest.Validator and sqlite.Store.Write, so the rows are exactly those HTTP ingest
// writes. It is a benchmark tool, not part of meterd: nothing imports it.
//
//	ingestbench preload --db F --count N [--id-prefix P] ...   store N events, report events/s
//	ingestbench ceiling --db F --count N [--id-prefix P] ...   events validated first, then only Write is timed
//	ingestbench count --db F                                  events stored
//
// The events are those of `meterd events gen` with the same flags (same JSON, same ids, values and times), so a
// run of gen over HTTP with the same --id-prefix would find every one of them a duplicate.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/store/sqlite"
)

type options struct {
	db          string
	count       int
	batch       int
	concurrency int
	eventType   string
	property    string
	meterKey    string
	subjects    int
	source      string
	idPrefix    string
	start       time.Time
	span        time.Duration
	cpuProfile  string
	dupRate     float64
	seed        uint64
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingestbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: ingestbench preload|ceiling|count --db FILE [flags]")
	}
	cmd := args[0]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var o options
	var startText string
	fs.StringVar(&o.db, "db", "", "SQLite store file (required)")
	fs.IntVar(&o.count, "count", 1000000, "events to write")
	fs.IntVar(&o.batch, "batch", 1000, "events per Write (one HTTP request's worth)")
	fs.IntVar(&o.concurrency, "concurrency", 4, "concurrent writers (the store group-commits what waits)")
	fs.StringVar(&o.eventType, "type", "llm_request", "event type")
	fs.StringVar(&o.property, "property", "tokens", "data property holding the value (SUM meter on $.<property>)")
	fs.StringVar(&o.meterKey, "meter", "tokens", "meter key, as in the serve config")
	fs.IntVar(&o.subjects, "subjects", 10, "distinct subjects")
	fs.StringVar(&o.source, "source", "meterd-gen", "event source")
	fs.StringVar(&o.idPrefix, "id-prefix", "gen-", "event id prefix")
	fs.StringVar(&startText, "start", "", "time of the first event, RFC 3339 (default: 30 minutes ago)")
	fs.DurationVar(&o.span, "span", 25*time.Minute, "the events' times are spread over this span")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed part to this file")
	fs.Float64Var(&o.dupRate, "duplicate-rate", 0, "fraction of events that re-send an earlier one (ceiling only), as gen does")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the duplicate choice")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.db == "" {
		return errors.New("--db is required")
	}
	if startText == "" {
		o.start = time.Now().UTC().Add(-30 * time.Minute)
	} else {
		t, err := time.Parse(time.RFC3339Nano, startText)
		if err != nil {
			return fmt.Errorf("--start: %w", err)
		}
		o.start = t.UTC()
	}
	if o.count < 1 || o.batch < 1 || o.concurrency < 1 || o.subjects < 1 || o.span <= 0 {
		return errors.New("--count, --batch, --concurrency, --subjects and --span must be positive")
	}
	switch cmd {
	case "preload":
		return preload(ctx, &o)
	case "ceiling":
		return ceiling(ctx, &o)
	case "count":
		return count(ctx, &o)
	default:
		return fmt.Errorf("unknown command %q: want preload, ceiling or count", cmd)
	}
}

func (o *options) validator() (*ingest.Validator, error) {
	set, err := meter.NewSet([]meter.Spec{{Key: o.meterKey, EventType: o.eventType, Aggregation: "SUM",
		ValueProperty: "$." + o.property}}, "meters")
	if err != nil {
		return nil, err
	}
	return ingest.NewValidator(set, 21*24*time.Hour, 5*time.Minute), nil
}

// appendEvent is `meterd events gen`'s event i (cmd/meterd/events.go), without the newline.
func (o *options) appendEvent(b []byte, i int) []byte {
	t := o.start.Add(time.Duration(int64(o.span) / int64(o.count) * int64(i)))
	b = append(b, `{"specversion":"1.0","id":"`...)
	b = append(b, o.idPrefix...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `","source":"`...)
	b = append(b, o.source...)
	b = append(b, `","type":"`...)
	b = append(b, o.eventType...)
	b = append(b, `","subject":"tenant-`...)
	b = strconv.AppendInt(b, int64(i%o.subjects), 10)
	b = append(b, `","time":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","data":{"`...)
	b = append(b, o.property...)
	b = append(b, `":"`...)
	b = strconv.AppendInt(b, int64(i%1000), 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(i%10), 10)
	return append(b, `"}}`...)
}

// eventIndexes is `meterd events gen`'s choice of events: index n of the output is event idx, an earlier one with
// probability dupRate (the same sequence for the same seed).
func (o *options) eventIndexes() []int {
	rng := rand.New(rand.NewPCG(o.seed, 0x6d65746572640a))
	out := make([]int, o.count)
	next := 0
	for n := range out {
		idx := next
		if next > 0 && rng.Float64() < o.dupRate {
			idx = rng.IntN(next)
		} else {
			next++
		}
		out[n] = idx
	}
	return out
}

// makeBatch validates events [from, to) as the HTTP handler would.
func (o *options) makeBatch(v *ingest.Validator, from, to int, at time.Time) ([]*ingest.Event, error) {
	idx := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		idx = append(idx, i)
	}
	return o.validate(v, idx, at)
}

// validate validates the given events as the HTTP handler would.
func (o *options) validate(v *ingest.Validator, idx []int, at time.Time) ([]*ingest.Event, error) {
	evs := make([]*ingest.Event, 0, len(idx))
	var buf []byte
	for _, i := range idx {
		buf = o.appendEvent(buf[:0], i)
		ev, rej := v.Validate(buf, at)
		if rej != nil {
			return nil, fmt.Errorf("event %d rejected: %s", i, rej.Reason)
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

func openStore(ctx context.Context, path string) (*sqlite.Store, error) {
	return sqlite.Open(ctx, path, sqlite.Options{})
}

// preload writes o.count events as fast as the machine allows: o.concurrency workers each validate a batch and
// write it; the store's group commit merges the batches that wait.
func preload(ctx context.Context, o *options) error {
	v, err := o.validator()
	if err != nil {
		return err
	}
	st, err := openStore(ctx, o.db)
	if err != nil {
		return err
	}
	next := make(chan int)
	var stored, dups int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range next {
				evs, err := o.makeBatch(v, from, min(from+o.batch, o.count), time.Now())
				if err == nil {
					var res ingest.WriteResult
					if res, err = st.Write(ctx, evs, nil); err == nil {
						var s, d int64
						for _, out := range res.Outcomes {
							if out == ingest.Stored {
								s++
							} else {
								d++
							}
						}
						mu.Lock()
						stored, dups = stored+s, dups+d
						mu.Unlock()
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	lastReport := t0
feed:
	for from := 0; from < o.count; from += o.batch {
		select {
		case next <- from:
		case <-ctx.Done():
			break feed
		}
		if time.Since(lastReport) >= 30*time.Second {
			lastReport = time.Now()
			fmt.Fprintf(os.Stderr, "preload: %d of %d events, %.0f events/s\n", from, o.count, float64(from)/time.Since(t0).Seconds())
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(t0)
	closeErr := st.Close()
	if err := errors.Join(firstErr, ctx.Err(), closeErr); err != nil {
		return err
	}
	fmt.Printf("preload: stored %d, duplicates %d in %s: %.0f events/s\n", stored, dups, elapsed.Round(time.Millisecond),
		float64(stored+dups)/elapsed.Seconds())
	return nil
}

// ceiling measures the store alone: every batch is validated before the clock starts, then o.concurrency writers
// call Write as fast as it returns. This is the most HTTP ingest could reach on this store with free CPU for
// decoding; the ratio HTTP/ceiling is what decoding, validation and HTTP cost.
func ceiling(ctx context.Context, o *options) error {
	v, err := o.validator()
	if err != nil {
		return err
	}
	at := time.Now()
	idx := o.eventIndexes()
	var batches [][]*ingest.Event
	for from := 0; from < o.count; from += o.batch {
		evs, err := o.validate(v, idx[from:min(from+o.batch, o.count)], at)
		if err != nil {
			return err
		}
		batches = append(batches, evs)
	}
	st, err := openStore(ctx, o.db)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return errors.Join(err, st.Close())
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return errors.Join(err, f.Close(), st.Close())
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	cpu0, busy0 := cpuTime(), machineBusy()
	next := make(chan []*ingest.Event)
	var mu sync.Mutex
	var lat []time.Duration
	var stored, dups int
	var firstErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for evs := range next {
				b0 := time.Now()
				res, err := st.Write(ctx, evs, nil)
				d := time.Since(b0)
				mu.Lock()
				lat = append(lat, d)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				for _, out := range res.Outcomes {
					switch out {
					case ingest.Stored:
						stored++
					case ingest.Duplicate:
						dups++
					}
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, b := range batches {
		select {
		case next <- b:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(t0)
	cpu := cpuTime() - cpu0
	other := max(machineBusy()-busy0-cpu, 0)
	closeErr := st.Close()
	if err := errors.Join(firstErr, ctx.Err(), closeErr); err != nil {
		return err
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	fmt.Printf("ceiling: events %d (stored %d, duplicates %d) in %s: %.0f events/s; writes %d of %d events, latency p50 %s p99 %s; CPU %.1f us/event; other processes %.1fs\n",
		o.count, stored, dups, elapsed.Round(time.Millisecond), float64(o.count)/elapsed.Seconds(), len(lat), o.batch,
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), float64(cpu.Microseconds())/float64(o.count),
		other.Seconds())
	return nil
}

// count prints how many events and meter values the store holds, read directly with SQL.
func count(ctx context.Context, o *options) error {
	db, err := sql.Open("sqlite", "file:"+o.db+"?_pragma=query_only(1)")
	if err != nil {
		return fmt.Errorf("open %s: %w", o.db, err)
	}
	var events, values int64
	err = db.QueryRowContext(ctx, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_values)").Scan(&events, &values)
	if err = errors.Join(err, db.Close()); err != nil {
		return fmt.Errorf("count events: %w", err)
	}
	fmt.Printf("count: events %d, meter values %d\n", events, values)
	return nil
}

// cpuTime is the CPU time this process has used, user and system: a figure less sensitive than wall time to other
// load on a shared machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time all CPUs have spent busy (/proc/stat), so that the load of other processes during a
// measurement can be told; 0 where /proc is not there.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		if i < len(f) {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}
