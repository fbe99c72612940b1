package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/spf13/cobra"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
	"github.com/meterd/meterd/report"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/report/reconcile"
	"github.com/meterd/meterd/store/sqlite"
)

// demoKey signs the demo's pushes to its own simulator; it is not a secret of anyone's.
const demoKey = "meterd-demo-key"

// demoPlans are the demo's billing factors, one per KooGallery price mode.
var demoPlans = []struct {
	sku, meter, eventType, property, aggregation, plan string
}{
	{"DEMO-TOKENS-STEP", "tokens", "llm_request", "tokens", "SUM",
		`{sku: DEMO-TOKENS-STEP, meter: tokens, currency: CNY, unit_scale: "0.001", mode: step, accumulation: month, timezone: Asia/Shanghai, brackets: [{up_to: "50", unit_price: "0.3"}, {unit_price: "0.2"}]}`},
	{"DEMO-CALLS-TIER", "api_calls", "api_call", "", "COUNT",
		`{sku: DEMO-CALLS-TIER, meter: api_calls, currency: CNY, mode: tier, brackets: [{up_to: "20", unit_price: "0.05"}, {unit_price: "0.03"}]}`},
	{"DEMO-MINUTES-FIXED", "minutes", "call_minutes", "minutes", "SUM",
		`{sku: DEMO-MINUTES-FIXED, meter: minutes, currency: CNY, mode: fixed, unit_price: "0.12"}`},
}

const demoInstancesPerPlan = 12
const demoHours = 3

func newDemoCmd() *cobra.Command {
	var out string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo [--out DIR]",
		Short: "Run the whole job offline: ingest, close, push to a simulated KooGallery with faults, reconcile",
		Long: `Run meterd's whole job in under a minute, offline: a temporary embedded store, a built-in KooGallery
simulator that fails some calls and loses some answers, 36 instances across fixed, Step and Tier plans, synthetic
usage for the last closed hours sent through the HTTP ingest, the hour close, the push with its retries, and the
reconciliation report written to DIR as reconcile.csv, reconcile.json and reconcile.html.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), out, keep, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&out, "out", "meterd-demo", "directory for the reports and the demo's config")
	cmd.Flags().BoolVar(&keep, "keep-store", false, "keep the demo's SQLite store in DIR/store (default: a temporary one, removed)")
	return cmd
}

func runDemo(ctx context.Context, outDir string, keep bool, w io.Writer) (err error) {
	start := time.Now()
	if err := os.MkdirAll(outDir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", outDir, err)
	}
	storeDir := filepath.Join(outDir, "store")
	if keep {
		err = os.MkdirAll(storeDir, 0o750)
	} else {
		storeDir, err = os.MkdirTemp("", "meterd-demo-store")
		defer os.RemoveAll(storeDir)
	}
	if err != nil {
		return err
	}
	// The last closed hours are replayed on a simulated clock shared by every part (ingest, close, push, the
	// simulated KooGallery): each hour is ingested, closed and pushed inside its window, as in production, in
	// seconds instead of hours.
	first := time.Now().UTC().Truncate(time.Hour).Add(-(demoHours + 1) * time.Hour)
	vnow := first
	clock := func() time.Time { return vnow }

	// The simulated KooGallery, on loopback, with faults: 20% 5xx, 10% answers lost after processing.
	sim := kgsim.New(kgsim.Config{Key: []byte(demoKey), Now: clock})
	sim.Faults().Seed(42)
	sim.Faults().Rate5xx(0.2)
	sim.Faults().LostAnswerRate(0.1)
	simURL, stopSim, err := serveLoopback(sim)
	if err != nil {
		return err
	}
	defer func() { sim.Close(); stopSim() }()

	keyFile := filepath.Join(storeDir, "koogallery.key")
	if err := os.WriteFile(keyFile, []byte(demoKey+"\n"), 0o600); err != nil {
		return err
	}
	cfgPath := filepath.Join(outDir, "meterd-demo.yaml")
	if err := os.WriteFile(cfgPath, []byte(demoConfig(simURL, keyFile, filepath.Join(storeDir, "meterd.db"))), 0o600); err != nil {
		return err
	}
	// The demo's config is self-contained: the environment must not redirect its store or endpoint.
	cfg, _, err := config.Load(cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	store, err := sqlite.Open(ctx, cfg.Store.SQLite.Path, sqlite.Options{Now: clock})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, store.Close()) }()
	log := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	apiMux := http.NewServeMux()
	if _, err := startInstances(ctx, cfg, store, log, apiMux); err != nil {
		return err
	}
	h, err := ingest.NewHandler(ingest.HandlerConfig{
		Validator: ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration),
		Sink:      store, Rejected: store, MaxBody: cfg.Ingest.MaxBody.Bytes, Metrics: ingest.NewMetrics(reg), Now: clock})
	if err != nil {
		return err
	}
	h.Register(apiMux)
	apiURL, stopAPI, err := serveLoopback(apiMux)
	if err != nil {
		return err
	}
	defer stopAPI()
	p, err := newPipeline(cfg, store, log, reg, holderName("demo"), clock)
	if err != nil {
		return err
	}

	fmt.Fprintf(w, "meterd demo: %d instances on %d plans (fixed, step, tier); replaying %d hours from %s on a simulated clock\n",
		demoInstancesPerPlan*len(demoPlans), len(demoPlans), demoHours, first.Format(time.RFC3339))
	fmt.Fprintf(w, "KooGallery simulator: 20%% of calls fail with 5xx, 10%% of answers are lost after processing\n\n")
	for i := 0; i < demoHours; i++ {
		hour := first.Add(time.Duration(i) * time.Hour)
		vnow = hour.Add(55 * time.Minute)
		sent, err := demoIngest(ctx, apiURL+"/v1/events", hour, i)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s  ingest: %d events over HTTP, each batch sent twice: accepted %d, duplicates %d\n",
			hour.Format("15:04"), sent.total, sent.Accepted, sent.Duplicates)
		vnow = hour.Add(time.Hour + cfg.Schedule.CloseDelay.Duration + time.Second)
		closed, err := p.closer.CloseDue(ctx)
		if err != nil {
			return err
		}
		for _, c := range closed {
			fmt.Fprintf(w, "%s  close %s: %d instance-hours\n", vnow.Format("15:04:05"), c.Hour.Format("15:04"), c.Rows)
		}
		for round := 1; ; round++ {
			sum, err := p.pusher.RunOnce(ctx, report.RunOptions{})
			if err != nil {
				return err
			}
			if sum.Sent > 0 {
				fmt.Fprintf(w, "%s  push: sent %d, accepted %d, rejected %d, to retry %d\n", vnow.Format("15:04:05.0"),
					sum.Sent, sum.Accepted, sum.Rejected, sum.Retrying)
			}
			counts, err := store.StateCounts(ctx)
			if err != nil {
				return err
			}
			if counts[report.Pending]+counts[report.Sent] == 0 {
				break
			}
			if round >= 200 || ctx.Err() != nil {
				return fmt.Errorf("push did not finish: %v", counts)
			}
			vnow = vnow.Add(500 * time.Millisecond) // past the demo's retry delays (50-400 ms)
		}
	}
	if err := demoReports(ctx, cfg, store, first, vnow, outDir); err != nil {
		return err
	}
	return demoSummary(ctx, store, sim, first, outDir, time.Since(start), w)
}

// demoReports writes the reconciliation report of the demo's hours in the three formats. The demo fails if the
// invariant does not hold: that would be a bug worth stopping for.
func demoReports(ctx context.Context, cfg *config.Config, store *sqlite.Store, first, now time.Time, outDir string) error {
	rep, err := reconcile.Build(ctx, store, cfg.Catalog(), reconcile.Options{From: first, To: first.Add(demoHours * time.Hour), Now: now})
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	for name, write := range map[string]func(io.Writer) error{"reconcile.csv": rep.WriteCSV, "reconcile.json": rep.WriteJSON,
		"reconcile.html": rep.WriteHTML} {
		f, err := os.Create(filepath.Join(outDir, name))
		if err != nil {
			return err
		}
		if err := errors.Join(write(f), f.Close()); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	if !rep.Invariant.Holds {
		return fmt.Errorf("reconciliation invariant broken: %v", rep.Invariant.Violations)
	}
	return nil
}

// serveLoopback serves h on a free loopback port.
func serveLoopback(h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}

func demoConfig(simURL, keyFile, dbPath string) string {
	var b strings.Builder
	b.WriteString("# The demo's config, written by `meterd demo`: a complete example of a meterd config.\nmeters:\n")
	for _, p := range demoPlans {
		fmt.Fprintf(&b, "  - {key: %s, event_type: %s, aggregation: %s", p.meter, p.eventType, p.aggregation)
		if p.property != "" {
			fmt.Fprintf(&b, ", value_property: $.%s", p.property)
		}
		b.WriteString("}\n")
	}
	b.WriteString("plans:\n")
	for _, p := range demoPlans {
		fmt.Fprintf(&b, "  - %s\n", p.plan)
	}
	b.WriteString("instances:\n")
	for _, p := range demoPlans {
		for j := 0; j < demoInstancesPerPlan; j++ {
			fmt.Fprintf(&b, "  - {instance_id: demo-%s-%02d, subject: tenant-%02d, meter: %s, sku: %s, started_at: \"2026-01-01T00:00:00Z\"}\n",
				p.meter, j, j, p.meter, p.sku)
		}
	}
	fmt.Fprintf(&b, `koogallery: {endpoint: %s, key_file: %s, batch_size: 10}
schedule: {close_delay: 1m, deadline: 15m, push_budget: 5m}
push: {retry_initial: 100ms, retry_max: 400ms}
store: {sqlite: {path: %s}}
`, simURL, keyFile, dbPath)
	return b.String()
}

type demoIngestResult struct {
	ingest.Response
	total int
}

// demoIngest sends synthetic usage for each instance-hour through POST /v1/events, each batch twice (a client
// retry), so dedup shows.
func demoIngest(ctx context.Context, url string, hour time.Time, h int) (demoIngestResult, error) {
	client := &ingest.Client{URL: url}
	var res demoIngestResult
	n := h * 100000
	{
		var body bytes.Buffer
		for _, p := range demoPlans {
			for j := 0; j < demoInstancesPerPlan; j++ {
				events := 1 + (j*7+h*3)%25
				for e := 0; e < events; e++ {
					n++
					at := hour.Add(time.Duration(e*2+j) * time.Minute)
					fmt.Fprintf(&body, `{"specversion":"1.0","id":"demo-%d","source":"demo","type":%q,"subject":"tenant-%02d","time":%q`,
						n, p.eventType, j, at.Format(time.RFC3339))
					if p.property != "" {
						fmt.Fprintf(&body, `,"data":{%q:"%d.%d"}`, p.property, 10+(n*37)%900, n%10)
					}
					body.WriteString("}\n")
				}
			}
		}
		for attempt := 0; attempt < 2; attempt++ {
			resp, err := client.PostNDJSON(ctx, body.Bytes())
			if err != nil {
				return res, err
			}
			if len(resp.Rejected) > 0 {
				return res, fmt.Errorf("demo events rejected: %s", resp.Rejected[0].Reason)
			}
			res.Accepted += resp.Accepted
			res.Duplicates += resp.Duplicates
			res.total += resp.Accepted + resp.Duplicates
		}
	}
	return res, nil
}

func demoSummary(ctx context.Context, store *sqlite.Store, sim *kgsim.Sim, first time.Time, outDir string, took time.Duration, w io.Writer) error {
	sdrs, err := store.ListSDRs(ctx, report.SDRFilter{From: first, To: first.Add(demoHours * time.Hour)})
	if err != nil {
		return err
	}
	type agg struct {
		n      int
		amount decimal.Decimal
		cur    string
	}
	byPlan := map[string]*agg{}
	accepted, retried := 0, 0
	for _, s := range sdrs {
		if s.State == report.Accepted {
			accepted++
		}
		if s.Attempts > 1 {
			retried++
		}
		a := byPlan[s.SKU]
		if a == nil {
			a = &agg{cur: s.Currency}
			byPlan[s.SKU] = a
		}
		a.n++
		a.amount = a.amount.Add(s.Amount)
	}
	st := sim.Stats()
	failed := 0
	for code, n := range st.ByCode {
		if code != "0000" {
			failed += n
		}
	}
	periods := map[string]int{}
	for _, b := range sim.Billed() {
		periods[b.InstanceID+" "+b.BeginTime.Format(time.RFC3339)]++
	}
	for p, n := range periods {
		if n != 1 {
			return fmt.Errorf("the simulator billed %s %d times", p, n)
		}
	}
	fmt.Fprintf(w, "\nKooGallery simulator: %d calls, %d failed, %d answers lost after processing; %d instance-hours billed, each exactly once\n",
		st.Requests, failed, st.Lost, len(periods))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLAN\tSDRS\tEXPECTED AMOUNT")
	skus := make([]string, 0, len(byPlan))
	for s := range byPlan {
		skus = append(skus, s)
	}
	sort.Strings(skus)
	for _, s := range skus {
		fmt.Fprintf(tw, "%s\t%d\t%s %s\n", s, byPlan[s].n, byPlan[s].amount.StringFixed(2), byPlan[s].cur)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "reports: %s, %s, %s\n", filepath.Join(outDir, "reconcile.csv"), filepath.Join(outDir, "reconcile.json"),
		filepath.Join(outDir, "reconcile.html"))
	fmt.Fprintf(w, "done in %s: %d SDRs, %d retried, %d SDRs accepted\n", took.Round(time.Millisecond), len(sdrs), retried, accepted)
	return nil
}
