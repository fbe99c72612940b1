//go:build integration

package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/internal/services"
	"github.com/meterd/meterd/report/kgsim"
	"github.com/meterd/meterd/stream"
)

// TestCrashSIGKILLScaleOut is TestCrashSIGKILLEmbedded for the scale-out deployment: real processes (`meterd kgsim`,
// `serve --role api`, two `--role collector`, two `--role scheduler`) on the real Kafka and ClickHouse, four clients
// streaming events through the API and retrying every batch until it is answered 200 with every event accepted, and
// METERD_CRASH_CYCLES (default 20) cycles that each SIGKILL one randomly chosen process at a seeded random moment
// (METERD_CRASH_SEED) and restart it, over about 2 minutes from the first close. Usage lies in the current hour and the 16 before it:
// every hour but the last is due at start, and close_delay makes the last one fall due during the kills; a leader
// closes at start and at each clock minute, so the first kill and the first after each clock minute take the leader
// 0-1.5s after it closed an hour (inside its catch-up). The first such leader stays down until the other scheduler,
// running since before those closes, has closed an hour itself (a lost machine). Clients keep sending usage of the
// closed hours, so every close also finds late usage. The simulator answers after 300 ms and koogallery.batch_size
// is 2, so pushing the 192 instance-hours spans the kills and leader changes; it fails 15% of calls and loses 15%
// of answers after billing. METERD_CRASH_LOGS=DIR keeps every process's log.
//
// Afterwards, from ClickHouse and the simulator: every acknowledged event is stored with its value (first copy of
// its (source, id)), and none that was not acknowledged; every closed instance-hour counts exactly the events of the
// hour within its close's snapshot (Kafka offsets per partition) plus the late events stored between the previous
// close's snapshot and its own, and the counted plus the not-yet-closed events are all the stored ones (nothing
// counted twice or never); every instance-hour with usage has one SDR, ACCEPTED, billed exactly once by the
// simulator with the same usage value.
func TestCrashSIGKILLScaleOut(t *testing.T) {
	seed := envInt(t, "METERD_CRASH_SEED", 1)
	cycles := envInt(t, "METERD_CRASH_CYCLES", 20)
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	testStart := time.Now()
	chAddr, broker := services.ClickHouse(t), services.Kafka(t)
	db := services.Database(t, chAddr)
	suffix := services.Name(t, "")
	const key = "scale-out-crash-interconnection-key"
	sim, simURL, simLogs := startProc(t, nil, "kgsim", "--listen", "127.0.0.1:0", "--key", key, "--fail-rate", "0.15",
		"--lost-rate", "0.15", "--latency", "300ms", "--seed", strconv.Itoa(seed))
	cleanupKill(t, sim)

	conn, err := ch.Open(&ch.Options{Addr: []string{chAddr}, Auth: ch.Auth{Database: db}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	const instances, oldHours = 12, 16
	t0 := time.Now().UTC()
	cur := t0.Truncate(time.Hour)
	// Hours cur-16 .. cur-2 are due at once; cur-1 falls due at lastDue, cur never in the test. A leader closes at
	// each clock minute: the first one after the election (about 15s in) catches up, and the next closes cur-1.
	firstTick := t0.Add(8 * time.Second).Truncate(time.Minute).Add(time.Minute)
	lastDue := firstTick.Add(20 * time.Second)
	closeDelay := lastDue.Sub(cur)
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `meters:
  - {key: tokens, event_type: llm_request, aggregation: SUM, value_property: $.tokens}
plans:
  - {sku: TOK, meter: tokens, currency: CNY, mode: fixed, unit_price: "0.5"}
koogallery: {endpoint: %s%s, timeout: 2s, batch_size: 2}
push: {retry_initial: 100ms, retry_max: 1s}
schedule: {close_delay: %s, deadline: 2h, push_budget: 30m}
store: {driver: clickhouse, clickhouse: {addr: %q, database: %s}}
kafka:
  brokers: [%q]
  topic: crash-ev-%s
  dlq_topic: crash-dlq-%s
  group_id: crash-col-%s
  control_topic: crash-ctl-%s
  scheduler_group_id: crash-sch-%s
  partitions: 4
  batch_size: 200
  batch_wait: 500ms
instances:
`, simURL, kgsim.DefaultPath, closeDelay, chAddr, db, broker, suffix, suffix, suffix, suffix, suffix)
	for i := range instances {
		fmt.Fprintf(&cfg, "  - {instance_id: i-%02d, subject: s%02d, meter: tokens, sku: TOK, started_at: %q}\n", i, i,
			cur.Add(-48*time.Hour).Format(time.RFC3339))
	}
	cfgPath := writeFile(t, dir, "meterd.yaml", cfg.String())
	apiAddr := freeAddr(t)
	env := []string{"METERD_KOOGALLERY_KEY=" + key}

	// The processes, restarted under the same name; every generation's logs are kept for the dump.
	type xproc struct {
		name, role string
		cmd        *exec.Cmd
		logs       *bytes.Buffer
	}
	var allLogs []string
	var logsOf []*bytes.Buffer
	start := func(name, role string) *xproc {
		t.Helper()
		e := append([]string{"METERD_LISTEN=127.0.0.1:0"}, env...)
		if role == "api" {
			e = append(e, "METERD_LISTEN="+apiAddr) // the clients' URL stays the same across restarts
		}
		cmd, _, logs := startProc(t, e, "serve", "--config", cfgPath, "--role", role)
		cleanupKill(t, cmd)
		allLogs = append(allLogs, fmt.Sprintf("%s (pid %d)", name, cmd.Process.Pid))
		logsOf = append(logsOf, logs)
		return &xproc{name: name, role: role, cmd: cmd, logs: logs}
	}
	dump := func() string {
		var s strings.Builder
		for i, name := range allLogs {
			fmt.Fprintf(&s, "--- %s, last lines\n%s\n", name, tailLines(logsOf[i].String(), 25))
		}
		fmt.Fprintf(&s, "--- kgsim, last lines\n%s\n", tailLines(simLogs.String(), 10))
		return s.String()
	}
	// METERD_CRASH_LOGS=DIR keeps every process's log there, whatever the outcome.
	if logDir := os.Getenv("METERD_CRASH_LOGS"); logDir != "" {
		t.Cleanup(func() {
			for i, name := range allLogs {
				f := filepath.Join(logDir, fmt.Sprintf("%02d-%s.log", i, strings.NewReplacer(" ", "", "(", "-", ")", "").Replace(name)))
				if err := os.WriteFile(f, logsOf[i].Bytes(), 0o644); err != nil {
					t.Logf("keep logs: %v", err)
				}
			}
			_ = os.WriteFile(filepath.Join(logDir, "kgsim.log"), simLogs.Bytes(), 0o644)
		})
	}
	leading := func(p *xproc) bool {
		s := p.logs.String()
		return strings.LastIndex(s, `msg="scheduler election: leading"`) >
			max(strings.LastIndex(s, `no longer leading"`), strings.LastIndex(s, `standing by"`))
	}

	procs := []*xproc{start("api", "api"), start("collector-a", "collector"), start("collector-b", "collector")}

	// The clients: batches of 20 events of random instances, 70% in the 16 closed or closing hours, 30% now.
	var rngMu sync.Mutex
	rngs := map[int]*rand.Rand{}
	gen := func(c, b int) []sentEventWithID {
		time.Sleep(200 * time.Millisecond) // about 400 events a second from the four clients
		rngMu.Lock()
		r := rngs[c]
		if r == nil {
			r = rand.New(rand.NewPCG(uint64(seed), uint64(200+c)))
			rngs[c] = r
		}
		rngMu.Unlock()
		evs := make([]sentEventWithID, 20)
		now := time.Now().UTC()
		for i := range evs {
			at := now.Add(-time.Duration(r.IntN(60)) * time.Second)
			if r.IntN(10) < 7 {
				at = cur.Add(-time.Duration(1+r.IntN(oldHours)) * time.Hour).Add(time.Duration(r.IntN(3600)) * time.Second)
			}
			evs[i] = sentEventWithID{ID: fmt.Sprintf("c%d-b%d-e%d", c, b, i), sentEvent: sentEvent{Subject: fmt.Sprintf("s%02d", r.IntN(instances)),
				Time: at, Value: fmt.Sprintf("%d.%02d", r.IntN(50), r.IntN(100))}}
		}
		return evs
	}
	events := newEventStream("http://"+apiAddr+"/v1/events", "")
	t.Cleanup(func() {
		select {
		case <-events.stop:
		default:
			close(events.stop) // a failure before the end: let the clients go
		}
	})
	// The schedulers start before any event is stored, so both have opened the store before the first close (as a
	// standby that has run for days has): the first close comes at the first clock minute after the clients start.
	procs = append(procs, start("scheduler-a", "scheduler"), start("scheduler-b", "scheduler"))
	events.start(4, gen)

	// Store-side state, for the cycle log and the recovery checks.
	q := func(query string, dest ...any) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return conn.QueryRow(ctx, query).Scan(dest...)
	}
	type state struct {
		closed, usage, built, accepted, sent uint64
		holder                               string
	}
	readState := func() state {
		var s state
		if err := q(`SELECT (SELECT uniqExact(hour_ms) FROM hour_closes),
(SELECT count() FROM usage_hours WHERE close_id IN (SELECT min(close_id) FROM hour_closes GROUP BY hour_ms) AND usage_value != 0),
(SELECT uniqExact(metering_sn) FROM sdrs),
(SELECT countIf(st = 'ACCEPTED') FROM (SELECT argMax(state, (epoch, version)) AS st FROM sdr_states GROUP BY metering_sn)),
(SELECT countIf(st = 'SENT') FROM (SELECT argMax(state, (epoch, version)) AS st FROM sdr_states GROUP BY metering_sn))`,
			&s.closed, &s.usage, &s.built, &s.accepted, &s.sent); err != nil {
			t.Logf("read state: %v", err)
		}
		s.holder, _ = leaseHolder(conn)
		return s
	}
	dueHours := func(now time.Time) uint64 {
		if now.Before(lastDue) {
			return oldHours - 1
		}
		return oldHours
	}

	// Recoveries are measured in the background while the next cycles run.
	type recovery struct {
		cycle int
		what  string
		kind  string // api, collector, scheduler
		start time.Time
		check func(ctx context.Context) bool
		took  time.Duration
		done  bool
	}
	var recMu sync.Mutex
	var recs []*recovery
	positions := stream.NewPositions([]string{broker}, "crash-ev-"+suffix, "crash-col-"+suffix)
	trackCtx, stopTracking := context.WithCancel(context.Background())
	trackDone := make(chan struct{})
	t.Cleanup(func() { stopTracking(); <-trackDone })
	go func() {
		defer close(trackDone)
		for {
			select {
			case <-trackCtx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			recMu.Lock()
			var open []*recovery
			for _, r := range recs {
				if !r.done {
					open = append(open, r)
				}
			}
			recMu.Unlock()
			for _, r := range open {
				if r.check(trackCtx) {
					recMu.Lock()
					r.took, r.done = time.Since(r.start), true
					recMu.Unlock()
				}
			}
		}
	}()

	type kill struct {
		cycle                      int
		victim, role               string
		leader, holder             bool
		afterClose                 bool
		closing, pushing, inFlight bool
		stateBefore                state
		restart                    time.Duration
	}
	var kills []kill
	// The kills start with the first close. Their times: spread at random over a window of 6s a cycle (two or three
	// clock minutes: a leader closes at each), at least 300ms after the previous restart. The first kill, and the
	// first after each clock minute, wait for the leader to close an hour and kill it 0-1.5s later: inside the
	// catch-up. No scheduler is killed in the 25s before a clock minute, so that the election (10s session timeout,
	// then a rebalance) has settled on a leader by then.
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		closed := 0
		for _, p := range procs[3:] {
			closed += strings.Count(p.logs.String(), `msg="hour closed"`)
		}
		if closed > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hour closed 90s after the clients started\n%s", dump())
		}
	}
	cyclesStart := time.Now()
	window := time.Duration(cycles) * 6 * time.Second
	type slot struct {
		at   time.Duration
		tick time.Time // set: the kill inside this minute's close
	}
	slots := make([]slot, cycles)
	for i := range slots {
		slots[i].at = time.Duration(rng.Int64N(int64(window)))
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i].at < slots[j].at })
	// The first kill: inside the first leader's catch-up of the hours due.
	slots[0] = slot{at: 0, tick: cyclesStart}
	var ticks []time.Time
	for tick := cyclesStart.Truncate(time.Minute).Add(time.Minute); tick.Before(cyclesStart.Add(window)); tick = tick.Add(time.Minute) {
		ticks = append(ticks, tick)
		for i := range slots {
			if slots[i].at >= tick.Sub(cyclesStart) {
				slots[i] = slot{at: tick.Sub(cyclesStart), tick: tick}
				break
			}
		}
	}
	sort.SliceStable(slots, func(i, j int) bool { return slots[i].at < slots[j].at })
	beforeTick := func(at time.Time) bool {
		for _, tick := range ticks {
			if !at.Before(tick.Add(-25*time.Second)) && at.Before(tick) {
				return true
			}
		}
		return false
	}
	lastRestart := time.Now()
	replace := func(old, np *xproc) {
		for i := range procs {
			if procs[i] == old {
				procs[i] = np
			}
		}
	}
	// The first leader killed inside its catch-up stays down until the other scheduler has closed an hour (at the
	// next clock minute, 75s at most), as when a machine is lost: the survivor, running since before the killed
	// leader's closes, carries on with the hours due. No scheduler is killed meanwhile.
	var held *xproc
	var heldSurvivor *xproc
	var heldCloses int
	var heldAt time.Time
	restartHeld := func(force bool) {
		if held == nil || !force && time.Since(heldAt) < 75*time.Second &&
			strings.Count(heldSurvivor.logs.String(), `msg="hour closed"`) == heldCloses {
			return
		}
		np := start(held.name, held.role)
		t.Logf("         t=%5.1fs: %s restarted %.1fs after its kill (the other scheduler closed %d hours meanwhile)", time.Since(testStart).Seconds(),
			held.name, time.Since(heldAt).Seconds(), strings.Count(heldSurvivor.logs.String(), `msg="hour closed"`)-heldCloses)
		replace(held, np)
		held, lastRestart = nil, time.Now()
	}
	schedulers := func() []*xproc { // the live ones
		var out []*xproc
		for _, p := range procs[3:] {
			if p != held {
				out = append(out, p)
			}
		}
		return out
	}
	for cycle := 1; cycle <= cycles; cycle++ {
		sl := slots[cycle-1]
		for until := cyclesStart.Add(sl.at); time.Now().Before(until) || time.Since(lastRestart) < 300*time.Millisecond; {
			restartHeld(false)
			time.Sleep(50 * time.Millisecond)
		}
		var victim *xproc
		sawClose := false
		if !sl.tick.IsZero() {
			// Wait for an hour closed by the leader in this minute, then kill it a moment later.
			closedBefore := map[*xproc]int{}
			for _, p := range schedulers() {
				closedBefore[p] = strings.Count(p.logs.String(), `msg="hour closed"`)
			}
			for deadline := time.Now().Add(8 * time.Second); victim == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				for _, p := range schedulers() {
					if n, ok := closedBefore[p]; ok && strings.Count(p.logs.String(), `msg="hour closed"`) > n {
						victim, sawClose = p, true
					}
				}
				restartHeld(false)
			}
			switch {
			case victim == nil && held != nil:
				victim = procs[0] // the survivor must close first
			case victim == nil:
				victim = schedulers()[rng.IntN(len(schedulers()))] // no close in 8s: a scheduler anyway (the leader, below)
			}
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		}
		wait := time.Since(lastRestart)
		// A random process: the API 20%, a collector 30%, a scheduler 50% (the leader in half of those), no
		// scheduler just before a clock minute.
		switch p := rng.IntN(100); {
		case victim != nil:
		case p >= 50 && (beforeTick(time.Now()) || held != nil):
			victim = procs[rng.IntN(3)] // the API or a collector instead
		case p < 20:
			victim = procs[0]
		case p < 50:
			victim = procs[1+rng.IntN(2)]
		default:
			victim = procs[3+rng.IntN(2)]
		}
		if victim.role == "scheduler" && !sawClose && (!sl.tick.IsZero() || rng.IntN(2) == 0) {
			for _, s := range schedulers() {
				if leading(s) {
					victim = s
				}
			}
		}
		st := readState()
		k := kill{cycle: cycle, victim: victim.name, role: victim.role, stateBefore: st}
		if victim.role == "scheduler" {
			k.leader = leading(victim)
			k.holder = holderPID(st.holder) == victim.cmd.Process.Pid
			// Inside a close: the leader closed an hour a moment ago and has more due.
			k.afterClose = sawClose
			k.closing = sawClose && k.leader && st.closed < dueHours(time.Now())
			k.pushing = k.holder && st.accepted < max(st.built, st.usage)
			k.inFlight = k.holder && st.sent > 0
		}
		acked := events.count()
		killedAt := time.Now()
		killProc(t, victim.cmd)
		ackedAtKill := events.count()
		rec := &recovery{cycle: cycle, what: victim.name, kind: victim.role, start: killedAt}
		switch {
		case victim.role == "api":
			rec.what = "api: clients acknowledged again"
			rec.check = func(context.Context) bool { return events.count() > ackedAtKill }
		case victim.role == "collector":
			rec.what = victim.name + ": every event acknowledged before the kill stored"
			rec.check = func(ctx context.Context) bool {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				wm, err := positions.Watermark(ctx, time.Now())
				return err == nil && !wm.Before(killedAt)
			}
		case k.holder:
			pid := victim.cmd.Process.Pid
			rec.what = victim.name + " (lease holder): lease taken or renewed by a live scheduler"
			rec.check = func(context.Context) bool {
				h, written := leaseHolder(conn)
				return holderPID(h) != pid && holderPID(h) != 0 && written >= killedAt.UnixMilli()
			}
		}
		// Restart at once, except a leader killed inside a close: it comes back once the other scheduler leads (as
		// when a machine is lost), so that the survivor carries on with the hours due.
		var takeover time.Duration
		if sawClose {
			for _, p := range schedulers() {
				if p == victim {
					continue
				}
				for deadline := time.Now().Add(25 * time.Second); !leading(p) && time.Now().Before(deadline); {
					time.Sleep(50 * time.Millisecond)
				}
				if leading(p) {
					takeover = time.Since(killedAt)
				}
			}
		}
		restarted := ""
		if cycle == 1 && sawClose && takeover > 0 {
			held, heldAt = victim, killedAt
			for _, p := range schedulers() {
				heldSurvivor, heldCloses = p, strings.Count(p.logs.String(), `msg="hour closed"`)
			}
			restarted = fmt.Sprintf("the other scheduler led %.1fs after the kill; restart held until it closes an hour", takeover.Seconds())
		} else {
			t1 := time.Now()
			replace(victim, start(victim.name, victim.role))
			k.restart = time.Since(t1)
			lastRestart = time.Now()
			restarted = fmt.Sprintf("restarted in %.1fs", k.restart.Seconds())
			if takeover > 0 {
				restarted = fmt.Sprintf("the other scheduler led %.1fs after the kill, then restarted in %.1fs", takeover.Seconds(), k.restart.Seconds())
			}
		}
		if rec.check == nil { // a scheduler without the lease: back once it runs again
			rec.what = victim.name + " (standing by): restarted"
			rec.check = func(context.Context) bool { return true }
			rec.took, rec.done = time.Since(killedAt), true
		}
		recMu.Lock()
		recs = append(recs, rec)
		recMu.Unlock()
		kills = append(kills, k)
		var phase []string
		phase = append(phase, fmt.Sprintf("ingest (%d acknowledged)", acked))
		if k.closing {
			phase = append(phase, fmt.Sprintf("closing (%d/%d hours closed)", st.closed, dueHours(killedAt)))
		}
		if k.pushing {
			phase = append(phase, fmt.Sprintf("pushing (%d/%d SDRs accepted, %d in flight)", st.accepted, max(st.built, st.usage), st.sent))
		}
		role := ""
		if k.leader {
			role += " leader"
		}
		if k.holder {
			role += " lease-holder"
		}
		t.Logf("cycle %2d t=%5.1fs: SIGKILL %-11s%s %4dms after the previous restart; phase: %s; store: %d/%d hours closed, %d/%d SDRs accepted, %d in flight; %s",
			cycle, killedAt.Sub(testStart).Seconds(), victim.name, role, wait.Milliseconds(), strings.Join(phase, ", "),
			st.closed, dueHours(killedAt), st.accepted, st.built, st.sent, restarted)
	}

	restartHeld(true)

	// Settle: the clients finish their batch in hand; everything acknowledged is stored, every hour due closes and
	// every instance-hour with usage is pushed.
	cyclesEnd := time.Now()
	events.stopAndWait(t, 60*time.Second)
	acked := events.acked
	var settled time.Duration
	for deadline := time.Now().Add(180 * time.Second); ; {
		var stored, rowsWithUsage, accepted, other uint64
		var lastClosed int64
		err := q(`SELECT (SELECT uniqExact(id) FROM event_values WHERE source = 'reliability'),
(SELECT max(hour_ms) FROM hour_closes),
(SELECT count() FROM usage_hours WHERE close_id IN (SELECT min(close_id) FROM hour_closes GROUP BY hour_ms) AND usage_value != 0),
(SELECT countIf(st = 'ACCEPTED') FROM (SELECT argMax(state, (epoch, version)) AS st FROM sdr_states GROUP BY metering_sn)),
(SELECT countIf(st != 'ACCEPTED') FROM (SELECT argMax(state, (epoch, version)) AS st FROM sdr_states GROUP BY metering_sn))`,
			&stored, &lastClosed, &rowsWithUsage, &accepted, &other)
		if err == nil && stored >= uint64(len(acked)) && lastClosed == cur.Add(-time.Hour).UnixMilli() && rowsWithUsage > 0 && accepted == rowsWithUsage && other == 0 {
			settled = time.Since(cyclesEnd)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not settled 180s after the last cycle: stored %d of %d acknowledged, last hour closed %s (want %s), %d instance-hours with usage, %d SDRs accepted, %d in other states (%v)\n%s",
				stored, len(acked), time.UnixMilli(lastClosed).UTC().Format(time.RFC3339), cur.Add(-time.Hour).Format(time.RFC3339),
				rowsWithUsage, accepted, other, err, dump())
		}
		time.Sleep(500 * time.Millisecond)
	}
	stopTracking()
	<-trackDone
	t.Logf("settled %.1fs after the last cycle", settled.Seconds())

	// The ledger as the API serves it.
	res, err := http.Get("http://" + apiAddr + "/v1/records?from=" + cur.Add(-48*time.Hour).Format(time.RFC3339) + "&state=ACCEPTED")
	if err != nil {
		t.Fatal(err)
	}
	var ledger struct {
		Records []recordJSON `json:"records"`
	}
	if err := decodeJSON(res, &ledger); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		stopProc(t, p.cmd, p.logs)
	}

	lost, doubleCounted := checkScaleOutEvents(t, conn, acked)
	doubleBilled := checkScaleOutBilled(t, conn, simURL, len(ledger.Records))

	// Closes cut short by a kill between their rows and their marker leave rows no reader sees.
	var orphanCloses uint64
	if err := q(`SELECT uniqExact(close_id) FROM usage_hours WHERE close_id NOT IN (SELECT close_id FROM hour_closes)`, &orphanCloses); err != nil {
		t.Fatal(err)
	}

	// When the hours closed: during the kills, or while settling.
	var closeTimes []string
	closesDuringKills := 0
	chRows(t, conn, `SELECT hour_ms, min(closed_ms), count() FROM hour_closes GROUP BY hour_ms ORDER BY hour_ms`, func(rows driver.Rows) error {
		var hour, closed int64
		var markers uint64
		if err := rows.Scan(&hour, &closed, &markers); err != nil {
			return err
		}
		at := time.UnixMilli(closed)
		if at.Before(cyclesEnd) {
			closesDuringKills++
		}
		closeTimes = append(closeTimes, fmt.Sprintf("%s@%.1fs", time.UnixMilli(hour).UTC().Format("15h"), at.Sub(testStart).Seconds()))
		return nil
	})
	t.Logf("hours closed (hour@time into the test; kills from %.1fs to %.1fs): %s", cyclesStart.Sub(testStart).Seconds(),
		cyclesEnd.Sub(testStart).Seconds(), strings.Join(closeTimes, " "))

	// What the processes logged as errors and warnings, by message, for the diagnosis.
	problems := map[string]int{}
	for i, name := range allLogs {
		for _, line := range strings.Split(logsOf[i].String(), "\n") {
			if !strings.Contains(line, "level=ERROR") && !strings.Contains(line, "level=WARN") {
				continue
			}
			msg := line
			if j := strings.Index(line, " msg="); j >= 0 {
				msg = line[j+1:]
			}
			if len(msg) > 220 {
				msg = msg[:220]
			}
			problems[strings.Fields(name)[0]+": "+msg]++
		}
	}
	var problemLines []string
	for m, n := range problems {
		problemLines = append(problemLines, fmt.Sprintf("%4dx %s", n, m))
	}
	sort.Strings(problemLines)
	t.Logf("errors and warnings logged (%d kinds):\n%s", len(problemLines), strings.Join(problemLines, "\n"))

	// The summary.
	byVictim := map[string]int{}
	var closing, afterClose, pushing, inFlight, leaders int
	for _, k := range kills {
		byVictim[k.victim]++
		if k.afterClose {
			afterClose++
		}
		if k.closing {
			closing++
		}
		if k.pushing {
			pushing++
		}
		if k.inFlight {
			inFlight++
		}
		if k.leader || k.holder {
			leaders++
		}
	}
	longest := map[string]time.Duration{}
	var longestAll time.Duration
	var longestWhat string
	for _, r := range recs {
		if !r.done {
			t.Logf("cycle %d %s: not recovered when the run settled", r.cycle, r.what)
			continue
		}
		t.Logf("recovery cycle %2d: %s after %.1fs", r.cycle, r.what, r.took.Seconds())
		longest[r.kind] = max(longest[r.kind], r.took)
		if r.took > longestAll {
			longestAll, longestWhat = r.took, fmt.Sprintf("cycle %d, %s", r.cycle, r.what)
		}
	}
	var victims []string
	for v, n := range byVictim {
		victims = append(victims, fmt.Sprintf("%s %d", v, n))
	}
	sort.Strings(victims)
	t.Logf("%d kills (%s): %d of the leader or lease holder, %d of the leader 0-1.5s after it closed an hour (%d with hours still due: inside the catch-up), %d while the leader pushed, %d with SDRs in flight (unknown outcome); every one during ingest; %d of %d hours closed during the kills, %d closes cut between their rows and their marker",
		cycles, strings.Join(victims, ", "), leaders, afterClose, closing, pushing, inFlight, closesDuringKills, len(closeTimes), orphanCloses)
	t.Logf("%d events acknowledged (%d batches, %d answered as duplicates after a resend, %d requests failed and were retried); %d SDRs accepted; lost %d, double-counted %d, double-billed %d",
		len(acked), events.batches, events.dupAns, events.refused, len(ledger.Records), lost, doubleCounted, doubleBilled)
	t.Logf("longest recovery %.1fs (%s); by kind: api %.1fs, collector %.1fs, scheduler %.1fs; settled %.1fs after the last kill; whole test %.0fs",
		longestAll.Seconds(), longestWhat, longest["api"].Seconds(), longest["collector"].Seconds(), longest["scheduler"].Seconds(),
		settled.Seconds(), time.Since(testStart).Seconds())
	result(t, fmt.Sprintf("SIGKILL x%d during ingest, close, push (scale-out: Kafka, ClickHouse)", cycles), len(acked), lost, doubleCounted, doubleBilled,
		fmt.Sprintf("ingest back %.1fs after an API kill (max); a collector's partitions stored again %.1fs after its kill (max, Kafka session timeout); push resumed %.1fs after a lease holder's kill (max: election 10s, lease TTL 30s); all settled %.1fs after the last kill",
			longest["api"].Seconds(), longest["collector"].Seconds(), longest["scheduler"].Seconds(), settled.Seconds()))
	if closing == 0 || inFlight == 0 {
		t.Logf("note: with seed %d no kill landed inside a close (%d) or with SDRs in flight (%d)", seed, closing, inFlight)
	}
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// leaseHolder returns the holder and write time of the newest push lease row ("" when none).
func leaseHolder(conn driver.Conn) (string, int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var holder string
	var written int64
	_ = conn.QueryRow(ctx, `SELECT holder, written_ms FROM push_lease ORDER BY written_ms DESC, epoch DESC, version DESC LIMIT 1`).Scan(&holder, &written)
	return holder, written
}

// holderPID reads the process id out of a lease holder name (role/host/pid/random), 0 when there is none.
func holderPID(holder string) int {
	parts := strings.Split(holder, "/")
	if len(parts) < 4 {
		return 0
	}
	n, _ := strconv.Atoi(parts[len(parts)-2])
	return n
}

// chRows runs a query on ClickHouse and calls scan for each row.
func chRows(t *testing.T, conn driver.Conn, query string, scan func(rows driver.Rows) error) {
	t.Helper()
	rows, err := conn.Query(context.Background(), query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// Positions in a stream-fed store (store/clickhouse/stream.go): seq = partition << 40 | offset.
const streamPosBits = 40

// checkScaleOutEvents compares ClickHouse with the acknowledged events: each is stored with its value (the first
// copy of its key, as every reader takes it); each closed hour counts the events of the hour within its snapshot
// and the late ones stored between the previous close's snapshot and its own (snapshots are Kafka offsets per
// partition, table stream_snapshots); and the counted plus the not yet closed ones are exactly the stored ones.
func checkScaleOutEvents(t *testing.T, conn driver.Conn, acked map[string]sentEvent) (lost, doubleCounted int) {
	t.Helper()
	type stored struct {
		subj           string
		timeMs         int64
		value          decimal.Decimal
		partition, off int64
	}
	byID := map[string]stored{}
	copies := 0
	chRows(t, conn, `SELECT id, argMin(subject, seq), argMin(time_ms, seq), argMin(value, seq), min(seq), count() FROM event_values
WHERE meter = 'tokens' AND source = 'reliability' GROUP BY id`, func(rows driver.Rows) error {
		var id string
		var s stored
		var seq int64
		var n uint64
		if err := rows.Scan(&id, &s.subj, &s.timeMs, &s.value, &seq, &n); err != nil {
			return err
		}
		s.partition, s.off = seq>>streamPosBits, seq&(1<<streamPosBits-1)
		byID[id] = s
		copies += int(n) - 1
		return nil
	})
	audit := map[string]bool{}
	chRows(t, conn, `SELECT DISTINCT id FROM events WHERE source = 'reliability'`, func(rows driver.Rows) error {
		var id string
		err := rows.Scan(&id)
		audit[id] = true
		return err
	})
	for id, e := range acked {
		s, ok := byID[id]
		switch {
		case !ok:
			lost++
		case s.subj != e.Subject || !s.value.Equal(decimal.RequireFromString(e.Value)) || s.timeMs != e.Time.UnixMilli():
			t.Errorf("event %s stored as %+v, sent %+v", id, s, e)
		}
		if !audit[id] {
			t.Errorf("event %s has no row in events", id)
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged events are not in ClickHouse", lost, len(acked))
	}
	if extra := len(byID) - (len(acked) - lost); extra != 0 {
		t.Errorf("%d events stored that no client saw acknowledged (clients finish every batch, so there should be none)", extra)
	}
	t.Logf("%d events stored; %d repeated meter-value rows (redelivered or resent copies, removed at read time by the first-copy rule)", len(byID), copies)

	// Snapshots: number -> versions (one per writer and time); a number written twice is a bug.
	type version struct {
		taken int64
		vec   map[int64]int64 // partition -> next offset
	}
	snaps := map[int64][]*version{}
	chRows(t, conn, `SELECT snapshot, partition, next_offset, taken_ms FROM stream_snapshots ORDER BY snapshot, taken_ms, partition`,
		func(rows driver.Rows) error {
			var n, off, taken int64
			var p int32
			if err := rows.Scan(&n, &p, &off, &taken); err != nil {
				return err
			}
			vs := snaps[n]
			if len(vs) == 0 || vs[len(vs)-1].taken != taken {
				vs = append(vs, &version{taken: taken, vec: map[int64]int64{}})
				snaps[n] = vs
			}
			vs[len(vs)-1].vec[int64(p)] = off
			return nil
		})
	for n, vs := range snaps {
		if len(vs) > 1 {
			var s []string
			for _, v := range vs {
				s = append(s, fmt.Sprintf("taken %s: %v", time.UnixMilli(v.taken).UTC().Format("15:04:05.000"), v.vec))
			}
			t.Errorf("stream snapshot %d was written %d times with different offsets (%s): readers mix their rows", n, len(vs), strings.Join(s, "; "))
		}
	}
	// pick returns the version of snapshot n nearest to the time a close used it.
	pick := func(n, at int64) map[int64]int64 {
		if n == 0 {
			return nil
		}
		vs := snaps[n]
		if len(vs) == 0 {
			t.Errorf("stream snapshot %d, recorded by a close, does not exist", n)
			return nil
		}
		best := vs[0]
		for _, v := range vs[1:] {
			if abs64(v.taken-at) < abs64(best.taken-at) {
				best = v
			}
		}
		return best.vec
	}

	type agg struct {
		events, late int
		qty, lateQty decimal.Decimal
	}
	type closeMark struct {
		hour, closeID, snap, prev, closedMs int64
	}
	var closes []closeMark
	markers := map[int64]int{}
	chRows(t, conn, `SELECT hour_ms, close_id, snapshot_seq, prev_snapshot_seq, closed_ms FROM hour_closes ORDER BY hour_ms, close_id`,
		func(rows driver.Rows) error {
			var c closeMark
			if err := rows.Scan(&c.hour, &c.closeID, &c.snap, &c.prev, &c.closedMs); err != nil {
				return err
			}
			markers[c.hour]++
			if markers[c.hour] == 1 {
				closes = append(closes, c)
			}
			return nil
		})
	for h, n := range markers {
		if n > 1 {
			t.Logf("hour %s has %d close markers: the first one's rows are the visible ones", time.UnixMilli(h).UTC().Format(time.RFC3339), n)
		}
	}
	want := map[string]*agg{} // instance|hour
	var prevVec, lastVec map[int64]int64
	openFrom := int64(0)
	for i, c := range closes {
		vec := pick(c.snap, c.closedMs)
		if i > 0 && c.prev != closes[i-1].snap {
			t.Errorf("close of %s: previous snapshot %d, but the previous close recorded %d", time.UnixMilli(c.hour).UTC().Format(time.RFC3339), c.prev, closes[i-1].snap)
		}
		if i > 0 && c.snap < c.prev {
			t.Errorf("close of %s: snapshot %d is below the previous close's %d (late usage between them is skipped: the closer only looks for it when previous < snapshot)",
				time.UnixMilli(c.hour).UTC().Format(time.RFC3339), c.snap, c.prev)
		}
		if i == 0 {
			prevVec = nil
		}
		in := func(v map[int64]int64, s stored) bool { return s.off < v[s.partition] }
		for _, s := range byID {
			k := "i-" + strings.TrimPrefix(s.subj, "s") + "|" + strconv.FormatInt(c.hour, 10)
			a := want[k]
			if a == nil {
				a = &agg{}
			}
			switch {
			case in(vec, s) && s.timeMs >= c.hour && s.timeMs < c.hour+hourMillis:
				a.events++
				a.qty = a.qty.Add(s.value)
			case in(vec, s) && !in(prevVec, s) && s.timeMs < c.hour:
				a.late++
				a.lateQty = a.lateQty.Add(s.value)
			default:
				continue
			}
			want[k] = a
		}
		prevVec, lastVec = vec, vec
		openFrom = max(openFrom, c.hour+hourMillis)
	}
	got := map[string]agg{}
	counted := 0
	chRows(t, conn, `SELECT instance_id, hour_ms, events, quantity, late_events, late_quantity FROM usage_hours
WHERE close_id IN (SELECT min(close_id) FROM hour_closes GROUP BY hour_ms)`, func(rows driver.Rows) error {
		var inst string
		var hour, ev, late int64
		var a agg
		if err := rows.Scan(&inst, &hour, &ev, &a.qty, &late, &a.lateQty); err != nil {
			return err
		}
		a.events, a.late = int(ev), int(late)
		k := inst + "|" + strconv.FormatInt(hour, 10)
		if _, dup := got[k]; dup {
			t.Errorf("%s: two visible usage rows", k)
		}
		got[k] = a
		counted += a.events + a.late
		return nil
	})
	mismatches, fewer, more := 0, 0, 0
	for k, w := range want {
		g := got[k]
		if d := g.events + g.late - w.events - w.late; d < 0 {
			fewer -= d
		} else {
			more += d
		}
		if g.events != w.events || g.late != w.late || !g.qty.Equal(w.qty) || !g.lateQty.Equal(w.lateQty) {
			mismatches++
			if mismatches <= 20 {
				t.Errorf("%s: closed %d events (%s) + %d late (%s), the events say %d (%s) + %d late (%s)", k, g.events, g.qty,
					g.late, g.lateQty, w.events, w.qty, w.late, w.lateQty)
			}
		}
	}
	if mismatches > 20 {
		t.Errorf("... %d instance-hours in all count other events than their closes' snapshots say", mismatches)
	}
	if mismatches > 0 {
		t.Errorf("%d instance-hours count other events than their closes' snapshots say: %d events missing from the hours that should count them, %d counted in excess",
			mismatches, fewer, more)
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && (g.events > 0 || g.late > 0) {
			t.Errorf("%s: closed %d events + %d late that no stored event explains", k, g.events, g.late)
		}
	}
	pending := 0
	for _, s := range byID {
		if s.timeMs >= openFrom || s.off >= lastVec[s.partition] {
			pending++ // in an hour not closed yet, or stored after the last close: the next close counts them
		}
	}
	if counted+pending != len(byID) {
		t.Errorf("closed hours count %d events, %d are not closed yet: %d, but %d are stored", counted, pending, counted+pending, len(byID))
		if counted+pending > len(byID) {
			doubleCounted += counted + pending - len(byID)
		} else {
			lost += len(byID) - counted - pending
		}
	}
	t.Logf("%d closes; %d events counted in closed hours (on time or late), %d for the next close (the open hour's, or late ones stored after the last close)",
		len(closes), counted, pending)
	return lost, doubleCounted
}

const hourMillis = int64(time.Hour / time.Millisecond)

func abs64(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// checkScaleOutBilled compares closed usage, the SDR ledger in ClickHouse and what the simulator billed: each
// instance-hour with usage has one SDR (revision 0), ACCEPTED, billed once with its usage value.
func checkScaleOutBilled(t *testing.T, conn driver.Conn, simURL string, ledgerAccepted int) (doubleBilled int) {
	t.Helper()
	usage := map[string]decimal.Decimal{} // instance|hour_ms
	chRows(t, conn, `SELECT instance_id, hour_ms, usage_value FROM usage_hours
WHERE close_id IN (SELECT min(close_id) FROM hour_closes GROUP BY hour_ms) AND usage_value != 0`, func(rows driver.Rows) error {
		var inst string
		var hour int64
		var v decimal.Decimal
		if err := rows.Scan(&inst, &hour, &v); err != nil {
			return err
		}
		usage[inst+"|"+strconv.FormatInt(hour, 10)] = v
		return nil
	})
	states := map[string]string{}
	chRows(t, conn, `SELECT metering_sn, argMax(state, (epoch, version)) FROM sdr_states GROUP BY metering_sn`, func(rows driver.Rows) error {
		var sn, st string
		err := rows.Scan(&sn, &st)
		states[sn] = st
		return err
	})
	type sdr struct {
		sn    string
		usage decimal.Decimal
	}
	bySN := map[string]decimal.Decimal{}
	byPeriod := map[string][]sdr{}
	chRows(t, conn, `SELECT metering_sn, argMin(instance_id, created_ms), argMin(hour_ms, created_ms), argMin(revision, created_ms),
argMin(usage_value, created_ms), uniqExact(usage_value) FROM sdrs GROUP BY metering_sn`, func(rows driver.Rows) error {
		var sn, inst string
		var hour, rev int64
		var v decimal.Decimal
		var variants uint64
		if err := rows.Scan(&sn, &inst, &hour, &rev, &v, &variants); err != nil {
			return err
		}
		if variants > 1 {
			t.Errorf("SDR %s stored with %d different usage values", sn, variants)
		}
		if rev != 0 {
			t.Errorf("SDR %s is revision %d: no bill was imported, so there should be none", sn, rev)
		}
		k := inst + "|" + strconv.FormatInt(hour, 10)
		byPeriod[k] = append(byPeriod[k], sdr{sn: sn, usage: v})
		bySN[sn] = v
		return nil
	})
	for k, u := range usage {
		ss := byPeriod[k]
		if len(ss) != 1 {
			t.Errorf("%s usage %s: %d SDRs %v", k, u, len(ss), ss)
			continue
		}
		if st := states[ss[0].sn]; st != "ACCEPTED" || !ss[0].usage.Equal(u) {
			t.Errorf("%s usage %s: SDR %s %s usage %s", k, u, ss[0].sn, st, ss[0].usage)
		}
	}
	for k, ss := range byPeriod {
		if _, ok := usage[k]; !ok {
			t.Errorf("%s: SDRs %v without closed usage", k, ss)
		}
	}
	if ledgerAccepted != len(usage) {
		t.Errorf("/v1/records lists %d ACCEPTED records for %d instance-hours with usage", ledgerAccepted, len(usage))
	}
	double, billed := billedOnce(t, simURL, bySN)
	doubleBilled += double
	t.Logf("%d instance-hours with usage, %d SDRs, %d records billed by the simulator", len(usage), len(bySN), billed)
	return doubleBilled
}
