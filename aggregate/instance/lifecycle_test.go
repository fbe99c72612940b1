package instance

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// hour returns t0 + h hours.
func hour(h int) time.Time { return t0.Add(time.Duration(h) * time.Hour) }

func rfc(t time.Time) string { return t.Format(time.RFC3339) }

func strp(s string) *string { return &s }

// spec is an ACTIVE instance of subject s1 and meter tokens started at t0, changed by mods.
func spec(id string, mods ...func(*Spec)) Spec {
	s := Spec{InstanceID: id, Subject: "s1", Meter: "tokens", SKU: "SKU-T", StartedAt: rfc(t0)}
	for _, m := range mods {
		m(&s)
	}
	return s
}

func status(st Status) func(*Spec) { return func(s *Spec) { s.Status = string(st) } }
func started(t time.Time) func(*Spec) {
	return func(s *Spec) { s.StartedAt = rfc(t) }
}
func released(t time.Time) func(*Spec) {
	return func(s *Spec) { s.Status, s.ReleasedAt = string(Released), strp(rfc(t)) }
}
func subject(v string) func(*Spec) { return func(s *Spec) { s.Subject = v } }
func meterOf(v string) func(*Spec) { return func(s *Spec) { s.Meter = v } }

// memStore runs decide the way a Store does, over a map, so the lifecycle is tested without storage.
type memStore map[string]Instance

func (m memStore) apply(t *testing.T, s Spec, now time.Time) (Result, error) {
	t.Helper()
	next, err := s.parse("", Refs{})
	if err != nil {
		t.Fatalf("spec %+v is invalid: %v", s, err)
	}
	var cur *Instance
	if in, ok := m[next.ID]; ok {
		cur = &in
	}
	var same []Instance
	for _, in := range m {
		if in.ID != next.ID && in.Subject == next.Subject && in.Meter == next.Meter {
			same = append(same, in)
		}
	}
	res, err := decide(cur, next, same, now)
	if err == nil && res.Changed {
		m[next.ID] = res.Instance
	}
	return res, err
}

type step struct {
	spec Spec
	now  time.Time
}

func TestLifecycle(t *testing.T) {
	now := hour(100)
	tests := []struct {
		name  string
		setup []step // applied first, each must succeed
		apply Spec   // then this, at now
		// on success
		wantCreated, wantChanged bool
		wantStatus               Status
		wantNew                  []Change // At and Kind
		// on refusal: each substring must appear, and every error must be a *ConflictError
		wantErr    []string
		wantField  string
		wantOther  string
		wantErrors int
	}{
		{name: "create ACTIVE", apply: spec("a"),
			wantCreated: true, wantChanged: true, wantStatus: Active, wantNew: []Change{{At: t0, Kind: KindCreated}}},
		{name: "create FROZEN: frozen from now", apply: spec("a", status(Frozen)),
			wantCreated: true, wantChanged: true, wantStatus: Frozen,
			wantNew: []Change{{At: t0, Kind: KindCreated}, {At: now, Kind: KindFrozen}}},
		{name: "create FROZEN before it starts: frozen from its start", apply: spec("a", status(Frozen), started(hour(200))),
			wantCreated: true, wantChanged: true, wantStatus: Frozen,
			wantNew: []Change{{At: hour(200), Kind: KindCreated}, {At: hour(200), Kind: KindFrozen}}},
		{name: "create RELEASED", apply: spec("a", released(hour(5))),
			wantCreated: true, wantChanged: true, wantStatus: Released,
			wantNew: []Change{{At: t0, Kind: KindCreated}, {At: hour(5), Kind: KindReleased}}},
		{name: "freeze", setup: []step{{spec("a"), hour(1)}}, apply: spec("a", status(Frozen)),
			wantChanged: true, wantStatus: Frozen, wantNew: []Change{{At: now, Kind: KindFrozen}}},
		{name: "unfreeze", setup: []step{{spec("a", status(Frozen)), hour(1)}}, apply: spec("a", status(Active)),
			wantChanged: true, wantStatus: Active, wantNew: []Change{{At: now, Kind: KindUnfrozen}}},
		{name: "release an ACTIVE instance: at released_at, not now", setup: []step{{spec("a"), hour(1)}},
			apply: spec("a", released(hour(50))), wantChanged: true, wantStatus: Released,
			wantNew: []Change{{At: hour(50), Kind: KindReleased}}},
		{name: "release a FROZEN instance", setup: []step{{spec("a", status(Frozen)), hour(1)}},
			apply: spec("a", released(hour(50))), wantChanged: true, wantStatus: Released,
			wantNew: []Change{{At: hour(50), Kind: KindReleased}}},
		{name: "same spec again changes nothing", setup: []step{{spec("a"), hour(1)}}, apply: spec("a"),
			wantStatus: Active},
		{name: "an empty status is ACTIVE", setup: []step{{spec("a", status(Active)), hour(1)}},
			apply: spec("a", status("")), wantStatus: Active},
		{name: "an empty subject is the instance id", setup: []step{{spec("a"), hour(1)}},
			apply: spec("a", subject("")), wantErr: []string{`subject "s1"`, `cannot become "a"`},
			wantField: "subject", wantErrors: 1},
		{name: "FROZEN again records no second freeze", setup: []step{{spec("a"), hour(1)}, {spec("a", status(Frozen)), hour(2)}},
			apply: spec("a", status(Frozen)), wantStatus: Frozen},
		{name: "RELEASED again is a no-op, whatever the offset written",
			setup:      []step{{spec("a", released(hour(5))), hour(6)}},
			apply:      spec("a", func(s *Spec) { s.Status, s.ReleasedAt = "RELEASED", strp("2026-11-01T13:00:00+08:00") }),
			wantStatus: Released},
		{name: "RELEASED is final: no reactivation", setup: []step{{spec("a", released(hour(5))), hour(6)}},
			apply: spec("a"), wantErr: []string{`instance "a" was released at 2026-11-01T05:00:00Z`, "final"},
			wantField: "status", wantErrors: 1},
		{name: "RELEASED is final: no new release time", setup: []step{{spec("a", released(hour(5))), hour(6)}},
			apply: spec("a", released(hour(6))), wantErr: []string{"final"}, wantField: "released_at", wantErrors: 1},
		{name: "RELEASED is final: no new package instance", setup: []step{{spec("a", released(hour(5))), hour(6)}},
			apply:   spec("a", released(hour(5)), func(s *Spec) { s.RelatePkgInstance = strp("pkg-2") }),
			wantErr: []string{"final"}, wantField: "relate_pkg_instance", wantErrors: 1},
		{name: "relate_pkg_instance and site may change while live", setup: []step{{spec("a"), hour(1)}},
			apply:       spec("a", func(s *Spec) { s.RelatePkgInstance, s.Site = strp("pkg-2"), strp("cn") }),
			wantChanged: true, wantStatus: Active},
		{name: "meter is fixed", setup: []step{{spec("a"), hour(1)}}, apply: spec("a", meterOf("calls")),
			wantErr:   []string{`instance "a" has meter "tokens" since its creation`, `cannot become "calls"`},
			wantField: "meter", wantErrors: 1},
		{name: "sku is fixed", setup: []step{{spec("a"), hour(1)}}, apply: spec("a", func(s *Spec) { s.SKU = "SKU-2" }),
			wantErr: []string{`sku "SKU-T"`}, wantField: "sku", wantErrors: 1},
		{name: "started_at is fixed", setup: []step{{spec("a"), hour(1)}}, apply: spec("a", started(hour(1))),
			wantErr:   []string{`started_at "2026-11-01T00:00:00Z"`, `cannot become "2026-11-01T01:00:00Z"`},
			wantField: "started_at", wantErrors: 1},
		{name: "started_at written with another offset is the same instant", setup: []step{{spec("a"), hour(1)}},
			apply: spec("a", func(s *Spec) { s.StartedAt = "2026-11-01T08:00:00+08:00" }), wantStatus: Active},
		{name: "every fixed field changed is reported", setup: []step{{spec("a"), hour(1)}},
			apply:   spec("a", subject("s2"), meterOf("calls"), func(s *Spec) { s.SKU = "X" }, started(hour(1))),
			wantErr: []string{"subject", "meter", "sku", "started_at"}, wantErrors: 4},
		{name: "overlap with an ACTIVE instance", setup: []step{{spec("a"), hour(1)}}, apply: spec("b", started(hour(10))),
			wantErr: []string{`instance "b" [2026-11-01T10:00:00Z, open) overlaps instance "a" [2026-11-01T00:00:00Z, open) (ACTIVE)`,
				`release "a" at or before 2026-11-01T10:00:00Z first`},
			wantOther: "a", wantErrors: 1},
		{name: "overlap with a FROZEN instance", setup: []step{{spec("a", status(Frozen)), hour(1)}},
			apply: spec("b", started(hour(10))), wantErr: []string{"(FROZEN)"}, wantOther: "a", wantErrors: 1},
		{name: "overlap with a RELEASED instance's life", setup: []step{{spec("a", released(hour(5))), hour(6)}},
			apply: spec("b", started(hour(4))), wantErr: []string{"(RELEASED)", `"b" would have to start at or after 2026-11-01T05:00:00Z`},
			wantOther: "a", wantErrors: 1},
		{name: "overlap with an instance starting later", setup: []step{{spec("a", started(hour(10))), hour(1)}},
			apply: spec("b"), wantErr: []string{`"b" would have to be released at or before 2026-11-01T10:00:00Z`},
			wantOther: "a", wantErrors: 1},
		{name: "overlap with two instances", setup: []step{{spec("a", released(hour(5))), hour(1)}, {spec("c", started(hour(5))), hour(2)}},
			apply: spec("b", started(hour(2))), wantErr: []string{`overlaps instance "a"`, `overlaps instance "c"`}, wantErrors: 2},
		{name: "successor starting at the predecessor's release", setup: []step{{spec("a", released(hour(5))), hour(6)}},
			apply: spec("b", started(hour(5))), wantCreated: true, wantChanged: true, wantStatus: Active,
			wantNew: []Change{{At: hour(5), Kind: KindCreated}}},
		{name: "released predecessor registered after its successor", setup: []step{{spec("b", started(hour(5))), hour(1)}},
			apply: spec("a", released(hour(5))), wantCreated: true, wantChanged: true, wantStatus: Released,
			wantNew: []Change{{At: t0, Kind: KindCreated}, {At: hour(5), Kind: KindReleased}}},
		{name: "same subject, another meter", setup: []step{{spec("a"), hour(1)}}, apply: spec("b", meterOf("calls")),
			wantCreated: true, wantChanged: true, wantStatus: Active, wantNew: []Change{{At: t0, Kind: KindCreated}}},
		{name: "same meter, another subject", setup: []step{{spec("a"), hour(1)}}, apply: spec("b", subject("s2")),
			wantCreated: true, wantChanged: true, wantStatus: Active, wantNew: []Change{{At: t0, Kind: KindCreated}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := memStore{}
			for i, s := range tt.setup {
				if _, err := m.apply(t, s.spec, s.now); err != nil {
					t.Fatalf("setup[%d]: %v", i, err)
				}
			}
			before := m[tt.apply.InstanceID]
			res, err := m.apply(t, tt.apply, now)
			if len(tt.wantErr) > 0 {
				checkConflict(t, err, tt.wantErr, tt.wantField, tt.wantOther, tt.wantErrors)
				if got := m[tt.apply.InstanceID]; !equalInstances(got, before) {
					t.Errorf("a refused apply changed the instance:\n got %+v\nwant %+v", got, before)
				}
				return
			}
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if res.Created != tt.wantCreated || res.Changed != tt.wantChanged || res.Instance.Status != tt.wantStatus {
				t.Errorf("created %v changed %v status %s, want %v %v %s", res.Created, res.Changed, res.Instance.Status,
					tt.wantCreated, tt.wantChanged, tt.wantStatus)
			}
			if !sameChanges(res.New, tt.wantNew) {
				t.Errorf("new changes %v, want %v", res.New, tt.wantNew)
			}
			for _, c := range res.New {
				if !c.RecordedAt.Equal(now) {
					t.Errorf("change %s recorded at %s, want now %s", c.Kind, c.RecordedAt, now)
				}
			}
			if !tt.wantChanged {
				if !equalInstances(res.Instance, before) {
					t.Errorf("an unchanged apply returned\n %+v\nnot the stored\n %+v", res.Instance, before)
				}
				return
			}
			wantHistory := append(slices.Clone(before.Changes), tt.wantNew...)
			if !sameChanges(res.Instance.Changes, wantHistory) {
				t.Errorf("history %v, want %v", res.Instance.Changes, wantHistory)
			}
			if !res.Instance.UpdatedAt.Equal(now) {
				t.Errorf("updated at %s, want %s", res.Instance.UpdatedAt, now)
			}
		})
	}
}

func checkConflict(t *testing.T, err error, want []string, field, other string, n int) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want a conflict with %q", want)
	}
	cs := conflicts(err)
	if len(cs) != n {
		t.Errorf("%d conflicts, want %d: %v", len(cs), n, err)
	}
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("%T is not a *ConflictError: %v", err, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	if field != "" && ce.Field != field {
		t.Errorf("field %q, want %q", ce.Field, field)
	}
	if other != "" && ce.Other != other {
		t.Errorf("other %q, want %q", ce.Other, other)
	}
}

func sameChanges(got, want []Change) bool {
	return slices.EqualFunc(got, want, func(a, b Change) bool { return a.Kind == b.Kind && a.At.Equal(b.At) })
}

func equalInstances(a, b Instance) bool {
	return a.ID == b.ID && a.Status == b.Status && a.ReleasedAt.Equal(b.ReleasedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		a.RelatePkgInstance == b.RelatePkgInstance && a.Site == b.Site && slices.Equal(a.Changes, b.Changes)
}

// TestConflictErrorPath: ApplyAll names the spec and field of a conflict the way config problems are named.
func TestConflictErrorPath(t *testing.T) {
	tests := []struct {
		err  ConflictError
		want string
	}{
		{ConflictError{Path: "instances[3]", Field: "meter", Reason: "r"}, "instances[3].meter: r"},
		{ConflictError{Path: "instances[3]", Reason: "r"}, "instances[3]: r"},
		{ConflictError{Field: "meter", Reason: "r"}, "meter: r"},
		{ConflictError{Reason: "r"}, "r"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.err, got, tt.want)
		}
	}
}
