// Command closebench is the store side of bench/close.sh (issues 7 and 11): it measures one hour close of N events
// over M instances on a real store, SQLite or ClickHouse, and checks the result so that a fast wrong close cannot
// pass for a fast one. It is a benchmark tool, not part of meterd: nothing imports it.
//
//	closebench --store sqlite --db FILE [--events N] [--instances M] ...
//	closebench --store clickhouse --addr HOST:PORT --database NAME [--drop] ...
//	closebench --store clickhouse --addr HOST:PORT --database NAME --drop-only
//
// Setup (not timed), on a store that must be new (a file that does not exist, a database without events):
//  1. the real Open creates and migrates the store; then bulk SQL in the store's own tables registers M instances
//     (the rows the instance registry writes for a new ACTIVE instance) and stores one event per instance in the
//     previous hour;
//  2. the store is opened again and the previous hour is closed by the real closer, so the measured close reads
//     real carries and a real previous snapshot, as every close after the first does;
//  3. bulk SQL stores the N events of the hour, spread evenly over the hour and the M subjects, with decimal
//     values, and a share of duplicate copies of the same (source, id): skipped by the unique key in SQLite (the
//     writer's INSERT ... ON CONFLICT DO NOTHING), stored with a later seq in ClickHouse (a copy that slipped past
//     the writer's pre-check), which every reader must drop;
//  4. the rows are checked: counts, and a few events compared with what ingest.Validator makes of the same JSON
//     (seq, subject, time, content hash, raw JSON, stored value), so the fixtures are exactly what ingest writes.
//
// Timed: aggregate.Closer.Close of the hour, the closer wired as cmd/meterd's newPipeline wires it (config meters
// and catalog, SyncWatermark, late policy carry, the clock at hour+1h+close_delay), on a store opened after the
// load so that its counters are the stored ones.
//
// Checked after (not timed): every instance-hour row against the expected usage computed here from the same
// formulas (events, quantity), carry_in equal to the previous hour's carry_out, and usage_value + carry_out =
// quantity x unit_scale + carry_in with usage_value cut to 4 places; the totals against everything loaded.
//
// Output: a human summary on stderr and one machine-readable line on stdout:
//
//	RESULT store=clickhouse events=10000000 instances=100000 duplicates=100000 aggregation=SUM close_s=12.345
//	  rows=100000 rss_mib=210 alloc_mib=875 server_peak_mib=819 server_samples=481/533 cpu_self_s=4.13
//	  cpu_machine_s=54.95 cores=2 load1_before=0.50 setup_s=48.3            (one line)
//
// rss_mib is this process's peak RSS during the close (VmHWM, reset just before it; rss_includes_setup=1 when the
// kernel cannot reset it), alloc_mib what the close allocated on the Go heap; server_peak_mib (ClickHouse) the
// largest peak_memory_usage of the close's queries in system.processes, sampled every 50 ms. cpu_machine_s is
// the CPU the whole machine used during the close: beside cpu_self_s it shows the server's work and any other
// load, which load1_before (the load average just before the close) also hints at.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
)

type options struct {
	store       string
	db          string
	addr        string
	database    string
	events      int
	instances   int
	hour        time.Time
	aggregation string
	dupRate     float64
	cpuProfile  string
	drop        bool
	dropOnly    bool
	logLevel    string
}

// benchStore is what the benchmark uses of a store: the close's ports, the instance reader of the sample check,
// and Close. Both store/sqlite and store/clickhouse implement it.
type benchStore interface {
	aggregate.Store
	aggregate.Instances
	GetInstance(ctx context.Context, id string) (instance.Instance, bool, error)
	Close() error
}

// fixture is one store kind: how to open it for real, and how to fill it in bulk while it is closed.
type fixture interface {
	// open opens the store with its real Open (which migrates).
	open(ctx context.Context) (benchStore, error)
	// fresh fails unless the store is new (nothing of another run or of somebody else would be changed); it
	// runs before the first open.
	fresh(ctx context.Context) error
	// loadPrevious registers the instances and stores the previous hour's events.
	loadPrevious(ctx context.Context, g *generator) error
	// loadHour stores the hour's events and their duplicate copies.
	loadHour(ctx context.Context, g *generator) error
	// keepsDuplicates: duplicate copies are stored (ClickHouse) rather than refused at insert (SQLite).
	keepsDuplicates() bool
	// counts returns the rows of events, event_values and instances (latest versions).
	counts(ctx context.Context) (rowCounts, error)
	// stored returns the stored rows of one event key (several in ClickHouse for a duplicated key).
	stored(ctx context.Context, source, id string) ([]storedEvent, error)
	// closeContext returns the context the timed close runs in and a function that stops any watching it
	// started and reports what it saw ("" when nothing).
	closeContext(ctx context.Context) (context.Context, func() string, error)
	// finish releases what the fixture holds (and drops the ClickHouse database with --drop).
	finish(ctx context.Context) error
}

type rowCounts struct{ events, values, instances int64 }

// storedEvent is one stored copy of an event as the sample check reads it.
type storedEvent struct {
	seq     int64
	subject string
	timeMs  int64
	hash    []byte
	raw     string
	value   string // the stored text of the meter value (event_values.value in SQLite, .key in ClickHouse)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "closebench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("closebench", flag.ContinueOnError)
	var o options
	var hourText string
	fs.StringVar(&o.store, "store", "sqlite", "store: sqlite or clickhouse")
	fs.StringVar(&o.db, "db", "", "SQLite store file; must not exist (--store sqlite)")
	fs.StringVar(&o.addr, "addr", "", "ClickHouse native protocol host:port (--store clickhouse)")
	fs.StringVar(&o.database, "database", "", "ClickHouse database; created, must hold no events (--store clickhouse)")
	fs.IntVar(&o.events, "events", 1000000, "events in the closed hour")
	fs.IntVar(&o.instances, "instances", 100000, "instances (one subject each) the events are spread over")
	fs.StringVar(&hourText, "hour", "2026-11-22T03:00:00Z", "the hour closed, RFC 3339 on the hour")
	fs.StringVar(&o.aggregation, "meter-aggregation", "SUM", "aggregation of the meter: SUM, COUNT, MAX or UNIQUE_COUNT")
	fs.Float64Var(&o.dupRate, "duplicate-rate", 0.01, "duplicate copies of stored events, as a fraction of --events")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timed close to this file")
	fs.BoolVar(&o.drop, "drop", false, "drop the ClickHouse database at the end, whatever happened")
	fs.BoolVar(&o.dropOnly, "drop-only", false, "only drop the ClickHouse database (cleanup after a crash)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level of the store and the closer (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	hour, err := time.Parse(time.RFC3339, hourText)
	if err != nil {
		return fmt.Errorf("--hour: %w", err)
	}
	o.hour = hour.UTC()
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	var problems []string
	if !o.hour.Equal(o.hour.Truncate(time.Hour)) {
		problems = append(problems, "--hour must be the start of an hour")
	}
	if o.events < 1 || o.instances < 1 {
		problems = append(problems, "--events and --instances must be positive")
	}
	if o.dupRate < 0 || o.dupRate > 1 {
		problems = append(problems, "--duplicate-rate must be from 0 to 1")
	}
	var fx fixture
	switch o.store {
	case "sqlite":
		if o.db == "" {
			problems = append(problems, "--db is required with --store sqlite")
		}
		if o.drop || o.dropOnly {
			problems = append(problems, "--drop and --drop-only are for --store clickhouse")
		}
		fx = &sqliteFixture{path: o.db, log: log}
	case "clickhouse":
		if o.addr == "" || o.database == "" {
			problems = append(problems, "--addr and --database are required with --store clickhouse")
		}
		fx = &clickhouseFixture{addr: o.addr, database: o.database, drop: o.drop, log: log}
	default:
		problems = append(problems, fmt.Sprintf("--store %q: want sqlite or clickhouse", o.store))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	if o.dropOnly {
		return fx.(*clickhouseFixture).dropDatabase(ctx)
	}
	g, err := newGenerator(o)
	if err != nil {
		return err
	}
	res, err := bench(ctx, o, g, fx, log)
	if ferr := fx.finish(context.WithoutCancel(ctx)); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if err != nil {
		return err
	}
	fmt.Println(res)
	return nil
}

// bench sets up, closes the hour (timed) and checks it; it returns the RESULT line.
func bench(ctx context.Context, o options, g *generator, fx fixture, log *slog.Logger) (result string, err error) {
	setupStart := time.Now()
	say("setup: %s store, %d instances, previous hour %s", o.store, o.instances, g.prevHour.Format(time.RFC3339))
	if err := fx.fresh(ctx); err != nil {
		return "", err
	}
	st, err := fx.open(ctx) // creates and migrates the store
	if err != nil {
		return "", err
	}
	if err := st.Close(); err != nil {
		return "", err
	}
	if err := fx.loadPrevious(ctx, g); err != nil {
		return "", err
	}
	if st, err = fx.open(ctx); err != nil {
		return "", err
	}
	prevMark, err := newCloser(st, g, log, g.closeTime(g.prevHour)).Close(ctx, g.prevHour)
	if err != nil {
		return "", errors.Join(fmt.Errorf("close the previous hour: %w", err), st.Close())
	}
	prevRows, err := st.UsageRows(ctx, aggregate.UsageQuery{From: g.prevHour, To: g.hour})
	if err := errors.Join(err, st.Close()); err != nil {
		return "", err
	}
	if len(prevRows) != o.instances || prevMark.Rows != o.instances {
		return "", fmt.Errorf("previous hour closed with %d rows (%d read back), want %d", prevMark.Rows, len(prevRows), o.instances)
	}
	say("setup: %d events of %s, %d duplicate copies", o.events, g.hour.Format(time.RFC3339), g.dups)
	t0 := time.Now()
	if err := fx.loadHour(ctx, g); err != nil {
		return "", err
	}
	say("setup: hour loaded in %s", time.Since(t0).Round(time.Millisecond))
	if err := verifySetup(ctx, fx, g, fx.keepsDuplicates()); err != nil {
		return "", err
	}
	if st, err = fx.open(ctx); err != nil {
		return "", err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil {
			result, err = "", errors.Join(err, cerr)
		}
	}()
	if err := checkInstance(ctx, st, g); err != nil {
		return "", err
	}
	setupS := time.Since(setupStart).Seconds()

	// Timed: the close alone, on a process whose setup garbage is collected and whose peak RSS starts over.
	closeCtx, stopWatch, err := fx.closeContext(ctx)
	if err != nil {
		return "", err
	}
	closer := newCloser(st, g, log, g.closeTime(g.hour))
	runtime.GC()
	debug.FreeOSMemory()
	hwmReset := resetPeakRSS() == nil
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0, machine0 := selfCPU(), machineCPU()
	stopProfile, err := startProfile(o.cpuProfile)
	if err != nil {
		stopWatch()
		return "", err
	}
	load1 := loadAverage()
	say("close %s", g.hour.Format(time.RFC3339))
	start := time.Now()
	mark, closeErr := closer.Close(closeCtx, g.hour)
	elapsed := time.Since(start)
	profErr := stopProfile()
	cpu1, machine1 := selfCPU(), machineCPU()
	server := stopWatch()
	hwm := peakRSS()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	if err := errors.Join(closeErr, profErr); err != nil {
		return "", err
	}
	say("closed in %s: %d rows, snapshot %d (previous %d)", elapsed.Round(time.Millisecond), mark.Rows, mark.Snapshot, mark.PrevSnapshot)

	if err := checkClose(ctx, st, g, mark, prevRows); err != nil {
		return "", fmt.Errorf("the close is WRONG: %w", err)
	}
	say("check: every row matches the loaded events (total %s)", g.totalText())

	var b strings.Builder
	fmt.Fprintf(&b, "RESULT store=%s events=%d instances=%d duplicates=%d aggregation=%s close_s=%.3f rows=%d rss_mib=%d",
		o.store, o.events, o.instances, g.dups, g.aggregation, elapsed.Seconds(), mark.Rows, hwm>>20)
	if !hwmReset {
		b.WriteString(" rss_includes_setup=1")
	}
	fmt.Fprintf(&b, " alloc_mib=%d", (ms1.TotalAlloc-ms0.TotalAlloc)>>20)
	if server != "" {
		b.WriteString(" " + server)
	}
	fmt.Fprintf(&b, " cpu_self_s=%.2f cpu_machine_s=%.2f cores=%d load1_before=%s setup_s=%.1f",
		cpu1-cpu0, machine1-machine0, runtime.NumCPU(), load1, setupS)
	return b.String(), nil
}

// benchConfig is the configuration the benchmark closes with: meterd's defaults (close_delay, deadline, push
// budget, late policy carry) with one meter and one plan.
func benchConfig(agg string) (*config.Config, error) {
	cfg := config.Default()
	spec := benchMeter
	spec.Aggregation = agg
	if agg == "COUNT" {
		spec.ValueProperty = ""
	}
	cfg.Meters = append(cfg.Meters, spec)
	cfg.Plans = append(cfg.Plans, benchPlan)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("benchmark config: %w", err)
	}
	return &cfg, nil
}

// newCloser wires the closer as cmd/meterd's newPipeline does, on a clock stopped at at.
func newCloser(st benchStore, g *generator, log *slog.Logger, at time.Time) *aggregate.Closer {
	cfg := g.cfg
	now := func() time.Time { return at }
	closer, err := aggregate.NewCloser(aggregate.CloserConfig{Store: st, Instances: st, Meters: cfg.MeterSet(),
		Catalog: cfg.Catalog(), Watermark: aggregate.SyncWatermark{}, LatePolicy: aggregate.LatePolicy(cfg.Schedule.LatePolicy),
		CloseDelay: cfg.Schedule.CloseDelay.Duration, ForceAfter: cfg.Schedule.ForceAfter(), Logger: log,
		Metrics: aggregate.NewMetrics(prometheus.NewRegistry()), Now: now})
	if err != nil {
		panic(err) // the configuration is fixed and validated: this is a bug of the benchmark
	}
	return closer
}

func startProfile(path string) (func() error, error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, errors.Join(fmt.Errorf("cpu profile: %w", err), f.Close())
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}
