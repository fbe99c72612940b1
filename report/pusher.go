package report

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/report/koogallery"
)

// KooGalleryMaxAge is how old a record's begin_time may be for KooGallery to take it.
const KooGalleryMaxAge = 21 * 24 * time.Hour

// Client sends one signed body to KooGallery (koogallery.Client).
type Client interface {
	Push(ctx context.Context, body []byte) (koogallery.Response, error)
}

// PusherConfig configures a Pusher.
type PusherConfig struct {
	Ledger    Ledger
	Builder   *Builder
	Instances aggregate.Instances
	// Client is nil when no endpoint is configured: SDRs are built and stay PENDING, and the metrics say so.
	Client       Client
	Holder       string        // this scheduler's name in the lease
	LeaseTTL     time.Duration // default 30s
	BatchSize    int
	RetryInitial time.Duration
	RetryMax     time.Duration
	Now          func() time.Time
	Logger       *slog.Logger
	Metrics      *Metrics
	// Rand returns a float in [0, 1) for backoff jitter; default math/rand/v2.
	Rand func() float64
}

// Pusher pushes SDRs to KooGallery. RunOnce is the whole job; the scheduler calls it repeatedly.
type Pusher struct {
	cfg PusherConfig

	mu        sync.Mutex // guards the fields below across RunOnce calls (the scheduler runs one at a time)
	maxBatch  int        // lowered after a 9003
	haltUntil time.Time  // after an auth or signature failure
	haltCode  string
}

// NewPusher checks cfg and returns a Pusher.
func NewPusher(cfg PusherConfig) (*Pusher, error) {
	var errs []error
	if cfg.Ledger == nil || cfg.Builder == nil || cfg.Instances == nil {
		errs = append(errs, errors.New("pusher: ledger, builder and instances are required"))
	}
	if cfg.Holder == "" {
		errs = append(errs, errors.New("pusher: holder name required"))
	}
	if cfg.BatchSize < 1 || cfg.BatchSize > koogallery.MaxBatch {
		errs = append(errs, fmt.Errorf("pusher: batch size %d must be from 1 to %d", cfg.BatchSize, koogallery.MaxBatch))
	}
	if cfg.RetryInitial <= 0 || cfg.RetryMax < cfg.RetryInitial {
		errs = append(errs, fmt.Errorf("pusher: need 0 < retry initial (%s) <= retry max (%s)", cfg.RetryInitial, cfg.RetryMax))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = mrand.Float64
	}
	return &Pusher{cfg: cfg, maxBatch: cfg.BatchSize}, nil
}

// Summary is what one RunOnce did.
type Summary struct {
	Leader   bool
	Epoch    int64
	Built    int
	Sent     int // SDRs sent (in any batch, any outcome)
	Accepted int
	Rejected int
	Expired  int
	Retrying int
	Halted   bool
}

// RunOptions narrow a run: Hour (zero = all) limits the push to one hour's SDRs.
type RunOptions struct {
	Hour time.Time
}

// RunOnce takes (or renews) the lease, builds SDRs for newly closed hours and pushes what is due, oldest hour
// first, until nothing due is left or pushing must stop. Without the lease it does nothing.
func (p *Pusher) RunOnce(ctx context.Context, opts RunOptions) (Summary, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.cfg.Now().UTC()
	var sum Summary
	lease, ok, err := p.cfg.Ledger.AcquireLease(ctx, p.cfg.Holder, now, p.cfg.LeaseTTL)
	if err != nil {
		return sum, fmt.Errorf("acquire push lease: %w", err)
	}
	p.cfg.Metrics.leader(ok, lease.Epoch)
	if !ok {
		return sum, nil
	}
	sum.Leader, sum.Epoch = true, lease.Epoch
	if sum.Built, err = p.cfg.Builder.Build(ctx, lease.Epoch, now); err != nil {
		return sum, fmt.Errorf("build SDRs: %w", err)
	}
	p.cfg.Metrics.built(sum.Built)
	// The deadline gauges are read before pushing as well as after: a first catch-up after downtime can run for
	// minutes, and the deadline alerts must see the backlog during it, not only once it is over. The counts by
	// state only after: they read every SDR's state, and pushing must not wait for them.
	p.observe(ctx, now, false)
	defer func() { p.observe(ctx, p.cfg.Now().UTC(), true) }()
	if p.cfg.Client == nil {
		return sum, nil
	}
	if now.Before(p.haltUntil) {
		sum.Halted = true
		return sum, nil
	}
	global, paused, err := p.cfg.Ledger.Pauses(ctx)
	if err != nil {
		return sum, err
	}
	p.cfg.Metrics.paused(global)
	if global {
		return sum, nil
	}
	insts, err := p.cfg.Builder.instances(ctx)
	if err != nil {
		return sum, err
	}
	// Walk the due SDRs oldest first. Each pass reads what is due now; SDRs that were tried in this run are due
	// again only after their backoff, so the loop ends.
	for pass := 0; pass < 1000; pass++ {
		due, err := p.cfg.Ledger.Pushable(ctx, now, 10*p.cfg.BatchSize)
		if err != nil {
			return sum, err
		}
		var batch []SDR
		var waiting []Outcome
		for _, s := range due {
			switch in := insts[s.InstanceID]; {
			case !opts.Hour.IsZero() && !s.Hour.Equal(opts.Hour):
				continue
			case paused[s.InstanceID], in.FrozenAt(now):
				// Paused, or frozen (KooGallery rejects usage of a frozen instance, 013): the record waits, and steps
				// aside until retry_max so that it cannot fill the window of due records and starve the others. An
				// unfreeze or resume takes effect within retry_max.
				waiting = append(waiting, Outcome{MeteringSN: s.MeteringSN, State: s.State, Code: s.LastCode,
					Reason: "waiting: instance paused or frozen", NextAttempt: now.Add(p.cfg.RetryMax)})
				continue
			case now.Sub(s.Begin) > KooGalleryMaxAge:
				// Not sent now: no attempt of this run to settle (Definite false leaves earlier unknown attempts counted).
				out := Outcome{MeteringSN: s.MeteringSN, State: Expired, Code: "local", Reason: "begin_time older than 21 days: KooGallery no longer accepts it"}
				if err := p.cfg.Ledger.RecordAttempt(ctx, lease.Epoch, Attempt{At: now, Epoch: lease.Epoch, Class: "expired-local"}, nil, []Outcome{out}); err != nil {
					return sum, err
				}
				sum.Expired++
				continue
			}
			batch = append(batch, s)
		}
		if len(waiting) > 0 {
			if err := p.cfg.Ledger.RecordAttempt(ctx, lease.Epoch, Attempt{At: now, Epoch: lease.Epoch}, nil, waiting); err != nil {
				return sum, err
			}
			if len(batch) == 0 {
				continue // the next page of due records
			}
		}
		if len(batch) == 0 {
			return sum, nil
		}
		for start := 0; start < len(batch); {
			// Renew the lease before each batch: a long catch-up outlasts one lease period, and a run that lost the
			// lease stops here instead of being fenced write after write.
			if _, ok, err := p.cfg.Ledger.AcquireLease(ctx, p.cfg.Holder, p.cfg.Now().UTC(), p.cfg.LeaseTTL); err != nil || !ok {
				if err == nil {
					p.cfg.Logger.Warn("push lease lost during a run: stopping", "holder", p.cfg.Holder)
				}
				return sum, err
			}
			n := min(p.maxBatch, len(batch)-start)
			stop, err := p.send(ctx, lease.Epoch, batch[start:start+n], &sum)
			if err != nil || stop {
				return sum, err
			}
			start += n
		}
	}
	return sum, nil
}

// Plan is what a run would do now, without doing it: the SDRs it would build and the ones it would send.
func (p *Pusher) Plan(ctx context.Context, opts RunOptions) (build, send []SDR, err error) {
	now := p.cfg.Now().UTC()
	if build, err = p.cfg.Builder.Preview(ctx); err != nil {
		return nil, nil, err
	}
	due, err := p.cfg.Ledger.Pushable(ctx, now, 100000)
	if err != nil {
		return nil, nil, err
	}
	global, paused, err := p.cfg.Ledger.Pauses(ctx)
	if err != nil {
		return nil, nil, err
	}
	insts, err := p.cfg.Builder.instances(ctx)
	if err != nil {
		return nil, nil, err
	}
	keep := func(s SDR) bool {
		return !global && !paused[s.InstanceID] && !insts[s.InstanceID].FrozenAt(now) && (opts.Hour.IsZero() || s.Hour.Equal(opts.Hour))
	}
	for _, s := range build {
		if s.State == Pending && keep(s) {
			send = append(send, s)
		}
	}
	for _, s := range due {
		if keep(s) {
			send = append(send, s)
		}
	}
	return build, send, nil
}

// send pushes one batch and applies the error policy of DESIGN.md §4 step 9. It returns stop=true when this run
// must send no more: halted, or a transient failure.
func (p *Pusher) send(ctx context.Context, epoch int64, batch []SDR, sum *Summary) (stop bool, err error) {
	sns := make([]string, len(batch))
	bodies := make([][]byte, len(batch))
	for i, s := range batch {
		sns[i], bodies[i] = s.MeteringSN, s.Body
	}
	now := p.cfg.Now().UTC()
	if err := p.cfg.Ledger.MarkSending(ctx, epoch, sns, now); err != nil {
		return true, fmt.Errorf("mark batch sending: %w", err)
	}
	resp, perr := p.cfg.Client.Push(ctx, koogallery.Body(bodies))
	class := koogallery.Classify(resp, perr)
	att := Attempt{At: now, BatchID: batchID(), Records: len(batch), HTTPStatus: resp.HTTPStatus, Code: resp.Code,
		Class: class.String(), Latency: resp.Latency, Epoch: epoch}
	if perr != nil {
		att.Error = perr.Error()
	}
	sum.Sent += len(batch)
	p.cfg.Metrics.attempt(class)
	record := func(outs []Outcome) error {
		if err := p.cfg.Ledger.RecordAttempt(ctx, epoch, att, sns, outs); err != nil {
			return fmt.Errorf("record attempt: %w", err)
		}
		return nil
	}
	switch class {
	case koogallery.ClassAccepted:
		abnormal := map[string]koogallery.Abnormal{}
		for _, a := range resp.Abnormal {
			abnormal[a.MeteringSN] = a
		}
		outs := make([]Outcome, len(batch))
		for i, s := range batch {
			a, bad := abnormal[s.MeteringSN]
			if !bad {
				outs[i] = Outcome{MeteringSN: s.MeteringSN, State: Accepted, Code: resp.Code, Definite: true, AcceptedAt: now}
				sum.Accepted++
				continue
			}
			outs[i] = p.abnormal(s, a, now, sum)
		}
		return false, record(outs)
	case koogallery.ClassHalve, koogallery.ClassIsolate, koogallery.ClassExpired:
		// Nothing of the batch was processed. 9003: too many records, so halve (and keep the smaller size);
		// parameter or instance problems: bisect until the bad record stands alone, so the good ones go through.
		if len(batch) == 1 {
			state := Rejected
			if class == koogallery.ClassExpired {
				state = Expired
				sum.Expired++
			} else if class == koogallery.ClassHalve {
				return true, fmt.Errorf("KooGallery answered 9003 (too many records) to a single record")
			} else {
				sum.Rejected++
			}
			return false, record([]Outcome{{MeteringSN: batch[0].MeteringSN, State: state, Code: resp.Code, Reason: resp.Message, Definite: true}})
		}
		outs := make([]Outcome, len(batch))
		for i, s := range batch {
			outs[i] = Outcome{MeteringSN: s.MeteringSN, State: Pending, Code: resp.Code, Definite: true}
		}
		if err := record(outs); err != nil {
			return true, err
		}
		if class == koogallery.ClassHalve {
			p.maxBatch = max(1, len(batch)/2)
			p.cfg.Logger.Warn("KooGallery answered 9003: smaller batches", "batch_size", p.maxBatch)
		}
		half := len(batch) / 2
		if stop, err := p.send(ctx, epoch, batch[:half], sum); stop || err != nil {
			return stop, err
		}
		return p.send(ctx, epoch, batch[half:], sum)
	case koogallery.ClassHalt:
		p.haltUntil, p.haltCode = now.Add(p.cfg.RetryMax), resp.Code
		p.cfg.Logger.Error("KooGallery refused the credentials or the signature: pushing stops, records kept pending",
			"code", resp.Code, "http_status", resp.HTTPStatus, "retry_at", p.haltUntil)
		outs := make([]Outcome, len(batch))
		for i, s := range batch {
			outs[i] = Outcome{MeteringSN: s.MeteringSN, State: Pending, Code: resp.Code, Definite: true, NextAttempt: p.haltUntil}
		}
		sum.Halted = true
		p.cfg.Metrics.halted(true)
		return true, record(outs)
	default: // retry: transport error, 5xx, 0999, 0250, unknown codes
		// The run ends here. A transient failure is rarely the batch's own: KooGallery is down, overloaded or rate
		// limiting us (0250), and the next batch would meet the same. Going on would turn an outage into one
		// timeout per due batch per run, answer 0250 with more calls, and bill younger hours before this batch
		// (catch-up is oldest first, §4 step 11). The next run starts again from the oldest due record.
		//
		// Definite only when KooGallery certainly did not process the call: rate limited (0250), or the request
		// never left this machine. A timeout, a lost answer, a 5xx or 0999 may all follow processing.
		var te *koogallery.TransportError
		definite := (perr == nil && resp.Code == "0250") || (errors.As(perr, &te) && te.Unsent)
		if class == koogallery.ClassUnknown {
			p.cfg.Logger.Warn("unknown KooGallery answer: retrying", "code", resp.Code, "http_status", resp.HTTPStatus)
		}
		outs := make([]Outcome, len(batch))
		for i, s := range batch {
			state := Sent
			if definite && s.UnknownAttempts == 0 {
				state = Pending
			}
			outs[i] = Outcome{MeteringSN: s.MeteringSN, State: state, Code: resp.Code, Definite: definite,
				NextAttempt: now.Add(p.backoff(s.Attempts + 1))}
			sum.Retrying++
		}
		return true, record(outs)
	}
}

// abnormal decides the state of a record KooGallery listed in abnormal_usage_data.
func (p *Pusher) abnormal(s SDR, a koogallery.Abnormal, now time.Time, sum *Summary) Outcome {
	out := Outcome{MeteringSN: s.MeteringSN, Code: a.Code, Reason: a.Message, Definite: true}
	switch a.Code {
	case "005", "010":
		if s.UnknownAttempts > 0 {
			// An earlier attempt got no answer: KooGallery took it then. Same bytes, same number: billed once.
			out.State, out.AcceptedAt, out.Reason = Accepted, now, "duplicate confirmed: an earlier attempt had an unknown outcome"
			sum.Accepted++
			return out
		}
		// No attempt of ours can explain it: another deployment or a restored store sent this number. Page.
		out.State, out.Reason = Rejected, "collision: KooGallery already has this record and no attempt of ours explains it ("+a.Code+")"
		p.cfg.Metrics.collision()
		p.cfg.Logger.Error("SDR collision: another sender reported this instance-hour", "metering_sn", s.MeteringSN,
			"instance_id", s.InstanceID, "hour", s.Hour, "code", a.Code)
		sum.Rejected++
	case "013":
		// The instance is frozen on KooGallery's side: the record waits for the unfreeze.
		out.State, out.NextAttempt = Pending, now.Add(p.cfg.RetryMax)
		sum.Retrying++
	case "007":
		out.State = Expired
		sum.Expired++
	default:
		out.State = Rejected
		sum.Rejected++
	}
	return out
}

// backoff is the delay before attempt n (1-based): retry_initial doubling up to retry_max, with jitter in
// [0.5, 1.5) so that many records do not retry in lockstep.
func (p *Pusher) backoff(n int) time.Duration {
	d := float64(p.cfg.RetryInitial) * math.Pow(2, float64(max(0, n-1)))
	d = math.Min(d, float64(p.cfg.RetryMax))
	return time.Duration(d * (0.5 + p.cfg.Rand()))
}

// Release gives up the lease so another scheduler can take over at once.
func (p *Pusher) Release(ctx context.Context) error {
	lease, ok, err := p.cfg.Ledger.AcquireLease(ctx, p.cfg.Holder, p.cfg.Now().UTC(), p.cfg.LeaseTTL)
	if err != nil || !ok {
		return err
	}
	return p.cfg.Ledger.ReleaseLease(ctx, p.cfg.Holder, lease.Epoch)
}

// observe refreshes the ledger gauges, the counts by state (meterd_push_sdrs) only when withCounts.
func (p *Pusher) observe(ctx context.Context, now time.Time, withCounts bool) {
	if p.cfg.Metrics == nil {
		return
	}
	var counts map[State]int
	if withCounts {
		var err error
		if counts, err = p.cfg.Ledger.StateCounts(ctx); err != nil {
			// The deadline gauges below do not fail with the counts.
			p.cfg.Logger.Warn("read SDR state counts", "err", err)
			counts = nil
		}
	}
	// The deadline gauges leave out the instances frozen now: their SDRs wait for the unfreeze by design and have
	// gauges of their own (meterd_push_frozen_*). Counted in, one old frozen record would hide every other from
	// MeterdDeadlineAtRisk, since the oldest due time would be long past.
	frozen, err := FrozenInstances(ctx, p.cfg.Instances, now)
	if err != nil {
		p.cfg.Logger.Warn("read frozen instances", "err", err)
		return
	}
	skip := make([]string, len(frozen))
	for i, in := range frozen {
		skip[i] = in.ID
	}
	due, pastDue, err := p.cfg.Ledger.OldestUnaccepted(ctx, now, skip)
	if err != nil {
		p.cfg.Logger.Warn("read oldest unaccepted SDR", "err", err)
		return
	}
	p.cfg.Metrics.ledger(counts, due, pastDue, p.cfg.Client != nil, now.Before(p.haltUntil))
}

// FrozenInstances returns the instances frozen at now: KooGallery refuses their usage (013) until the unfreeze.
func FrozenInstances(ctx context.Context, src aggregate.Instances, now time.Time) ([]instance.Instance, error) {
	listed, err := src.ListInstances(ctx, instance.Filter{Status: instance.Frozen})
	if err != nil {
		return nil, fmt.Errorf("list frozen instances: %w", err)
	}
	var out []instance.Instance
	for _, in := range listed {
		if in.FrozenAt(now) {
			out = append(out, in)
		}
	}
	return out, nil
}

func batchID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
