package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meterd/meterd/report"
)

// serveRole is what one `meterd serve` process does (--role). The embedded deployment runs everything in one
// process (all); the roles split it where the parts differ: the API takes ingest and answers reads, the
// collector (scale-out only) moves events from Kafka into ClickHouse, the scheduler closes hours and pushes. They
// may run against the same store, and more than one collector and scheduler may run: collectors share the
// partitions of one consumer group, and exactly one scheduler acts (the Kafka election in scale-out, and the push
// lease in every deployment).
type serveRole string

const (
	roleAll       serveRole = "all"       // every part below that the deployment has
	roleAPI       serveRole = "api"       // ingest and read APIs, /metrics; no close, no push
	roleCollector serveRole = "collector" // Kafka -> ClickHouse, /metrics; scale-out only
	roleScheduler serveRole = "scheduler" // close and push, /metrics; no ingest, no /v1 API
)

// roles lists the roles, for metrics created up front and for help texts.
var roles = []serveRole{roleAPI, roleCollector, roleScheduler, roleAll}

func parseRole(s string) (serveRole, error) {
	for _, r := range roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", usagef("--role: %q must be api, collector, scheduler or all", s)
}

// serves tells whether the role serves ingest and the /v1 API.
func (r serveRole) serves() bool { return r == roleAll || r == roleAPI }

// collects tells whether the role consumes the events topic (when there is one).
func (r serveRole) collects() bool { return r == roleAll || r == roleCollector }

// schedules tells whether the role closes hours and pushes.
func (r serveRole) schedules() bool { return r == roleAll || r == roleScheduler }

// pushWatch keeps what the last push run learnt about the lease, for /readyz. A run that ends without the lease
// and without an error found another scheduler holding a live lease; an error before that means the lease could
// not be read or written (the store).
type pushWatch struct {
	mu       sync.Mutex
	finished bool
	leader   bool
	err      error
}

func (w *pushWatch) record(sum report.Summary, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished, w.leader, w.err = true, sum.Leader, err
}

// lease says whether the push lease is accounted for: held by this process, or by another live scheduler.
// leaderNow reads this process's meterd_push_leader gauge, which a run sets as soon as it has the lease, so a long
// first run (a catch-up) counts as holding it before it ends.
func (w *pushWatch) lease(leaderNow func() bool) (ok bool, detail string) {
	w.mu.Lock()
	finished, leader, err := w.finished, w.leader, w.err
	w.mu.Unlock()
	switch {
	case leaderNow():
		return true, "push lease held"
	case !finished:
		return false, "push lease not checked yet (first push run in progress)"
	case leader:
		return true, "push lease held"
	case err != nil:
		return false, "push lease: " + err.Error()
	default:
		return true, "standby: another scheduler holds the push lease"
	}
}

// gaugeValue reads one unlabelled gauge from a gatherer; false when it is not there.
func gaugeValue(g prometheus.Gatherer, name string) (float64, bool) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetGauge() == nil {
			continue
		}
		return mf.GetMetric()[0].GetGauge().GetValue(), true
	}
	return 0, false
}

// readyHandler answers /readyz by the role's dependencies: every role needs the store; the scheduler role also
// needs the push lease accounted for (held here, or by another live scheduler). The all role stays ready while the
// store answers, so that a push problem never takes ingest out of a load balancer: the push has its own alerts.
func readyHandler(role serveRole, ping func(context.Context) error, watch *pushWatch, leaderNow func() bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := ping(r.Context()); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		detail := "store ok"
		if role.schedules() {
			ok, d := watch.lease(leaderNow)
			if !ok && role == roleScheduler {
				http.Error(w, d, http.StatusServiceUnavailable)
				return
			}
			detail += "; " + d
		}
		_, _ = fmt.Fprintf(w, "ready\nrole %s: %s\n", role, detail)
	}
}
