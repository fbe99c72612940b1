package instance_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/store/sqlite"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func hour(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }

func strp(s string) *string { return &s }

// clock is an injected clock the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func refs(t *testing.T) instance.Refs {
	t.Helper()
	meters, err := meter.NewSet([]meter.Spec{
		{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"},
		{Key: "calls", EventType: "api_call", Aggregation: "COUNT"},
	}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := pricing.NewCatalog([]pricing.PlanSpec{
		{SKU: "SKU-T", Meter: "tokens", Currency: "CNY", Mode: "fixed", UnitPrice: "0.5"},
		{SKU: "SKU-C", Meter: "calls", Currency: "CNY", Mode: "fixed", UnitPrice: "0.01"},
	}, "plans")
	if err != nil {
		t.Fatal(err)
	}
	return instance.NewRefs(meters, catalog, []string{"cn"})
}

// newRegistry returns a registry over a fresh SQLite store in a temporary directory, at hour 100.
func newRegistry(t *testing.T) (*instance.Registry, *sqlite.Store, *clock) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "meterd.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	c := &clock{t: hour(100)}
	reg, err := instance.NewRegistry(st, refs(t), c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return reg, st, c
}

func spec(id string, mods ...func(*instance.Spec)) instance.Spec {
	s := instance.Spec{InstanceID: id, Subject: "s1", Meter: "tokens", SKU: "SKU-T", StartedAt: t0.Format(time.RFC3339)}
	for _, m := range mods {
		m(&s)
	}
	return s
}

func withStatus(st string) func(*instance.Spec) { return func(s *instance.Spec) { s.Status = st } }

func startedAt(t time.Time) func(*instance.Spec) {
	return func(s *instance.Spec) { s.StartedAt = t.Format(time.RFC3339) }
}

func releasedAt(t time.Time) func(*instance.Spec) {
	return func(s *instance.Spec) { s.Status, s.ReleasedAt = "RELEASED", strp(t.Format(time.RFC3339)) }
}

func TestNewRegistryNeedsEveryCheck(t *testing.T) {
	if _, err := instance.NewRegistry(nil, refs(t), nil); err == nil {
		t.Error("no store accepted")
	}
	r := refs(t)
	r.Site = nil
	st := &sqlite.Store{}
	if _, err := instance.NewRegistry(st, r, nil); err == nil {
		t.Error("refs without a site check accepted")
	}
}

// TestRegistryLifecycle walks one instance through its life on a real store: create, re-apply, freeze, unfreeze,
// release, and the refusal of anything after the release. The history is read back from the store.
func TestRegistryLifecycle(t *testing.T) {
	ctx := t.Context()
	reg, _, clk := newRegistry(t)
	steps := []struct {
		at                time.Time
		spec              instance.Spec
		created, changed  bool
		wantStatus        instance.Status
		wantConflictField string
	}{
		{hour(100), spec("a"), true, true, instance.Active, ""},
		{hour(101), spec("a"), false, false, instance.Active, ""},
		{hour(102), spec("a", withStatus("FROZEN")), false, true, instance.Frozen, ""},
		{hour(103), spec("a", withStatus("FROZEN")), false, false, instance.Frozen, ""},
		{hour(104), spec("a", withStatus("ACTIVE")), false, true, instance.Active, ""},
		{hour(105), spec("a", releasedAt(hour(90))), false, true, instance.Released, ""},
		{hour(106), spec("a", releasedAt(hour(90))), false, false, instance.Released, ""},
		{hour(107), spec("a", withStatus("ACTIVE")), false, false, "", "status"},
		{hour(108), spec("a", func(s *instance.Spec) { s.Meter, s.SKU = "calls", "SKU-C" }), false, false, "", "meter"},
	}
	for i, s := range steps {
		clk.Set(s.at)
		res, err := reg.Apply(ctx, s.spec)
		if s.wantConflictField != "" {
			var ce *instance.ConflictError
			if !errors.As(err, &ce) || ce.Field != s.wantConflictField {
				t.Fatalf("step %d: err %v, want a conflict on %s", i, err, s.wantConflictField)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if res.Created != s.created || res.Changed != s.changed || res.Instance.Status != s.wantStatus {
			t.Errorf("step %d: created %v changed %v status %s, want %v %v %s", i, res.Created, res.Changed,
				res.Instance.Status, s.created, s.changed, s.wantStatus)
		}
	}
	got, ok, err := reg.Get(ctx, "a")
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	want := []instance.Change{
		{At: t0, Kind: instance.KindCreated, RecordedAt: hour(100)},
		{At: hour(102), Kind: instance.KindFrozen, RecordedAt: hour(102)},
		{At: hour(104), Kind: instance.KindUnfrozen, RecordedAt: hour(104)},
		{At: hour(90), Kind: instance.KindReleased, RecordedAt: hour(105)},
	}
	if len(got.Changes) != len(want) {
		t.Fatalf("history %v, want %v", got.Changes, want)
	}
	for i := range want {
		if g := got.Changes[i]; g.Kind != want[i].Kind || !g.At.Equal(want[i].At) || !g.RecordedAt.Equal(want[i].RecordedAt) {
			t.Errorf("change %d = %+v, want %+v", i, g, want[i])
		}
	}
	if !got.UpdatedAt.Equal(hour(105)) || !got.ReleasedAt.Equal(hour(90)) || got.Subject != "s1" {
		t.Errorf("stored instance %+v", got)
	}
	if !got.FrozenAt(hour(103)) || got.FrozenAt(hour(104)) || !got.Contains(hour(89)) || got.Contains(hour(90)) {
		t.Error("FrozenAt or Contains disagree with the stored history")
	}
	if _, ok, err := reg.Get(ctx, "nope"); ok || err != nil {
		t.Errorf("get of an unknown id: %v %v", ok, err)
	}
}

func TestRegistryApplyInvalid(t *testing.T) {
	ctx := t.Context()
	reg, _, _ := newRegistry(t)
	_, err := reg.Apply(ctx, spec("a", func(s *instance.Spec) { s.SKU, s.StartedAt = "NOPE", "soon" }))
	var inv *instance.InvalidError
	if !errors.As(err, &inv) || len(inv.Problems) != 2 {
		t.Fatalf("err %v, want an InvalidError with 2 problems", err)
	}
	if !strings.Contains(err.Error(), `sku: "NOPE" has no plan`) || !strings.Contains(err.Error(), `started_at: "soon"`) {
		t.Errorf("problems: %v", err)
	}
	if list, _ := reg.List(ctx, instance.Filter{}); len(list) != 0 {
		t.Errorf("an invalid spec stored %v", list)
	}
}

// TestApplyAllInvalidAppliesNothing: one bad spec in a list stops the whole list, with every problem's path.
func TestApplyAllInvalidAppliesNothing(t *testing.T) {
	ctx := t.Context()
	reg, _, _ := newRegistry(t)
	_, err := reg.ApplyAll(ctx, []instance.Spec{spec("a"), spec("b", withStatus("PAUSED")), spec("a")}, "instances")
	var inv *instance.InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("err %v, want an InvalidError", err)
	}
	for _, w := range []string{`instances[1].status: "PAUSED"`, `instances[2].instance_id: "a" already defined at instances[0]`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if list, _ := reg.List(ctx, instance.Filter{}); len(list) != 0 {
		t.Errorf("stored %d instances from an invalid list", len(list))
	}
}

// TestApplyAllSuccessorBeforeRelease: a file may list a successor before the release of its predecessor.
func TestApplyAllSuccessorBeforeRelease(t *testing.T) {
	ctx := t.Context()
	reg, _, _ := newRegistry(t)
	if _, err := reg.Apply(ctx, spec("old")); err != nil {
		t.Fatal(err)
	}
	results, err := reg.ApplyAll(ctx, []instance.Spec{spec("new", startedAt(hour(50))), spec("old", releasedAt(hour(50)))}, "instances")
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || !results[0].Created || results[0].Instance.ID != "new" || !results[1].Changed ||
		results[1].Instance.Status != instance.Released {
		t.Errorf("results %+v", results)
	}
}

// TestApplyAllConflictsDoNotStopTheOthers: refused specs are listed with their paths; the rest are applied.
func TestApplyAllConflictsDoNotStopTheOthers(t *testing.T) {
	ctx := t.Context()
	reg, _, _ := newRegistry(t)
	if _, err := reg.Apply(ctx, spec("a", releasedAt(hour(10)))); err != nil {
		t.Fatal(err)
	}
	results, err := reg.ApplyAll(ctx, []instance.Spec{
		spec("a"),                      // released is final
		spec("b", startedAt(hour(5))),  // overlaps a's life
		spec("c", startedAt(hour(10))), // successor: fine
		spec("d", startedAt(hour(20))), // overlaps c
		spec("e", func(s *instance.Spec) { s.Meter, s.SKU = "calls", "SKU-C" }), // another meter: fine
	}, "instances")
	var ce *instance.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("err %v, want conflicts", err)
	}
	lines := strings.Split(err.Error(), "\n")
	wantLines := []string{
		`instances[0].status: instance "a" was released at 2026-11-01T10:00:00Z: a released instance is final`,
		`instances[1]: instance "b" [2026-11-01T05:00:00Z, open) overlaps instance "a"`,
		// c was created after b's first attempt; b's retry meets it too
		`instances[1]: instance "b" [2026-11-01T05:00:00Z, open) overlaps instance "c"`,
		`instances[3]: instance "d" [2026-11-01T20:00:00Z, open) overlaps instance "c"`,
	}
	if len(lines) != len(wantLines) {
		t.Fatalf("problems:\n%v", err)
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	for i, wantID := range []string{"", "", "c", "", "e"} {
		if results[i].Instance.ID != wantID || (wantID != "") != results[i].Created {
			t.Errorf("results[%d] = %+v, want created %q", i, results[i], wantID)
		}
	}
}

// TestList filters by subject, meter and status, in the documented order.
func TestList(t *testing.T) {
	ctx := t.Context()
	reg, _, _ := newRegistry(t)
	calls := func(s *instance.Spec) { s.Meter, s.SKU = "calls", "SKU-C" }
	subj := func(v string) func(*instance.Spec) { return func(s *instance.Spec) { s.Subject = v } }
	for _, s := range []instance.Spec{
		spec("a1", releasedAt(hour(5))), spec("a2", startedAt(hour(5)), withStatus("FROZEN")), spec("b", calls),
		spec("c", subj("s2")),
	} {
		if _, err := reg.Apply(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		f    instance.Filter
		want string
	}{
		{instance.Filter{}, "b a1 a2 c"},
		{instance.Filter{Subject: "s1"}, "b a1 a2"},
		{instance.Filter{Meter: "tokens"}, "a1 a2 c"},
		{instance.Filter{Subject: "s1", Meter: "tokens", Status: instance.Frozen}, "a2"},
		{instance.Filter{Status: instance.Released}, "a1"},
		{instance.Filter{Subject: "nobody"}, ""},
	}
	for _, tt := range tests {
		list, err := reg.List(ctx, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, in := range list {
			ids = append(ids, in.ID)
			if len(in.Changes) == 0 {
				t.Errorf("%s listed without its history", in.ID)
			}
		}
		if got := strings.Join(ids, " "); got != tt.want {
			t.Errorf("List(%+v) = %q, want %q", tt.f, got, tt.want)
		}
	}
	if _, err := reg.List(ctx, instance.Filter{Status: "GONE"}); err == nil {
		t.Error("a bad status filter was accepted")
	}
}

// TestApplyStoreFailure: a storage error is neither invalid nor a conflict, so callers answer 503 / exit 1.
func TestApplyStoreFailure(t *testing.T) {
	reg, st, _ := newRegistry(t)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := reg.Apply(context.Background(), spec("a"))
	var inv *instance.InvalidError
	var ce *instance.ConflictError
	if err == nil || errors.As(err, &inv) || errors.As(err, &ce) || !strings.Contains(err.Error(), "apply instance a") {
		t.Errorf("err %v, want a plain storage error naming the action", err)
	}
}
