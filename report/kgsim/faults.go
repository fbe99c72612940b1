package kgsim

import (
	"math/rand/v2"
	"sync"
	"time"
)

// DefaultSeed seeds the fault generator until Seed is called, so that a test is repeatable by default.
const DefaultSeed = 1

// Faults are the simulator's failure knobs. They are safe to change while requests are served. Probabilities are
// clamped to [0, 1]; a knob at 0 draws nothing from the generator, so turning one on does not shift another's
// sequence. Requests served concurrently draw in arrival order, which only a sequential test can make
// deterministic.
type Faults struct {
	mu       sync.Mutex
	rng      *rand.Rand
	queue    []forced
	p5xx     float64
	pLost    float64
	pTimeout float64
	latency  time.Duration
	stall    bool
}

// forced is one FailNext entry.
type forced struct {
	n      int
	code   string
	status int
}

func newFaults() *Faults {
	return &Faults{rng: rand.New(rand.NewPCG(DefaultSeed, DefaultSeed))}
}

// Seed restarts the random generator of the rate knobs.
func (f *Faults) Seed(seed int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rng = rand.New(rand.NewPCG(uint64(seed), uint64(seed)))
}

// FailNext answers the next n usage calls with code and httpStatus without processing them. code may be given
// with or without the "MKT." prefix; "" sends an answer without a code (as a gateway would). httpStatus 0 takes
// the status the spec gives the code (500 when it gives none). Calls queue: FailNext(1, "9003", 0) then
// FailNext(2, "0999", 0) fails the next three calls in that order.
func (f *Faults) FailNext(n int, code string, httpStatus int) {
	if n <= 0 {
		return
	}
	if httpStatus == 0 {
		httpStatus = statusOf(stripPrefix(code))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queue = append(f.queue, forced{n: n, code: code, status: httpStatus})
}

// Rate5xx answers a share p of usage calls with 0999 (HTTP 500) without processing them.
func (f *Faults) Rate5xx(p float64) { f.set(&f.p5xx, p) }

// LostAnswerRate makes a share p of usage calls processed in full (records billed) and then answered with a
// dropped connection, so the client sees a transport error: the "timeout after success" case that must not bill
// twice when the client resends. The connection is hijacked and closed; a ResponseWriter that cannot be hijacked
// (httptest.ResponseRecorder, HTTP/2) gets panic(http.ErrAbortHandler), which a real server turns into a reset,
// so test lost answers through an httptest.Server.
func (f *Faults) LostAnswerRate(p float64) { f.set(&f.pLost, p) }

// TimeoutRate holds a share p of usage calls without processing them until the client gives up (or the
// simulator closes): the client times out, and nothing was billed.
func (f *Faults) TimeoutRate(p float64) { f.set(&f.pTimeout, p) }

// Latency delays every usage call by d before it is processed.
func (f *Faults) Latency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = max(d, 0)
}

// Stall holds every usage call, unprocessed, until the client gives up, while on is true.
func (f *Faults) Stall(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stall = on
}

func (f *Faults) set(p *float64, v float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	*p = min(max(v, 0), 1)
}

// plan is what the faults decide for one call.
type plan struct {
	forced  *forced
	hold    bool // TimeoutRate or Stall: never answer in time, never process
	fail5xx bool
	lose    bool
	latency time.Duration
}

func (f *Faults) draw() plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := plan{latency: f.latency, hold: f.stall}
	if len(f.queue) > 0 {
		q := f.queue[0]
		p.forced = &forced{code: q.code, status: q.status}
		if f.queue[0].n--; f.queue[0].n == 0 {
			f.queue = f.queue[1:]
		}
	}
	if f.pTimeout > 0 && f.rng.Float64() < f.pTimeout {
		p.hold = true
	}
	if f.p5xx > 0 && f.rng.Float64() < f.p5xx {
		p.fail5xx = true
	}
	if f.pLost > 0 && f.rng.Float64() < f.pLost {
		p.lose = true
	}
	return p
}
