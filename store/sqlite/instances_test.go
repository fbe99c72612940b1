package sqlite

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

var instT0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func instanceRegistry(t *testing.T, s *Store, now time.Time) *instance.Registry {
	t.Helper()
	meters, err := meter.NewSet([]meter.Spec{{Key: "tokens", EventType: "llm_request", Aggregation: "SUM", ValueProperty: "$.tokens"}}, "meters")
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := pricing.NewCatalog([]pricing.PlanSpec{{SKU: "SKU-T", Meter: "tokens", Currency: "CNY", Mode: "fixed", UnitPrice: "1"}}, "plans")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := instance.NewRegistry(s, instance.NewRefs(meters, catalog, []string{"cn"}), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func tokensSpec(id string, start time.Time) instance.Spec {
	return instance.Spec{InstanceID: id, Subject: "tenant", Meter: "tokens", SKU: "SKU-T", StartedAt: start.Format(time.RFC3339)}
}

// TestInstancesSQL pins the queries: the filter becomes a WHERE of equalities, the same for the rows and their
// histories, in the documented order.
func TestInstancesSQL(t *testing.T) {
	rows, changes, args := instancesQueries(instancesWhere{})
	if rows != `SELECT instance_id, subject, meter, sku, status, started_ms, released_ms, relate_pkg_instance, site, updated_ms FROM instances ORDER BY subject, meter, started_ms, instance_id` ||
		changes != `SELECT instance_id, at_ms, kind, recorded_ms FROM instance_changes WHERE instance_id IN (SELECT instance_id FROM instances) ORDER BY seq` ||
		len(args) != 0 {
		t.Errorf("unfiltered:\n%s\n%s\n%v", rows, changes, args)
	}
	rows, changes, args = instancesQueries(instancesWhere{subject: "s", meter: "m", notID: "x"})
	wantWhere := ` WHERE instance_id <> ? AND subject = ? AND meter = ?`
	if rows != `SELECT `+instanceColumns+` FROM instances`+wantWhere+` ORDER BY subject, meter, started_ms, instance_id` ||
		changes != `SELECT instance_id, at_ms, kind, recorded_ms FROM instance_changes WHERE instance_id IN (SELECT instance_id FROM instances`+wantWhere+`) ORDER BY seq` ||
		!slices.Equal(args, []any{"x", "s", "m"}) {
		t.Errorf("filtered:\n%s\n%s\n%v", rows, changes, args)
	}
	if where, args := (instancesWhere{id: "i", status: "FROZEN"}).sql(); where != ` WHERE instance_id = ? AND status = ?` || !slices.Equal(args, []any{"i", "FROZEN"}) {
		t.Errorf("by id and status: %q %v", where, args)
	}
}

// TestInstanceRoundTrip: what the registry decided is what is read back, NULLs included, and an unchanged apply
// writes nothing.
func TestInstanceRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "i.db"))
	defer s.Close()
	reg := instanceRegistry(t, s, instT0.Add(100*time.Hour))
	sp := tokensSpec("i-1", instT0)
	rel, site := "2026-11-01T05:00:00.250Z", "cn"
	sp.Status, sp.ReleasedAt, sp.Site = "RELEASED", &rel, &site
	res, err := reg.Apply(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.GetInstance(ctx, "i-1")
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if got.ID != "i-1" || got.Subject != "tenant" || got.Meter != "tokens" || got.SKU != "SKU-T" || got.Status != instance.Released ||
		!got.StartedAt.Equal(instT0) || !got.ReleasedAt.Equal(instT0.Add(5*time.Hour+250*time.Millisecond)) ||
		got.RelatePkgInstance != "" || got.Site != "cn" || !got.UpdatedAt.Equal(res.Instance.UpdatedAt) ||
		got.StartedAt.Location() != time.UTC {
		t.Errorf("read back %+v\nwant %+v", got, res.Instance)
	}
	if !slices.Equal(got.Changes, res.Instance.Changes) || len(got.Changes) != 2 {
		t.Errorf("history %v, want %v", got.Changes, res.Instance.Changes)
	}
	var relNull, ok2 bool
	if err := s.read.QueryRowContext(ctx, `SELECT relate_pkg_instance IS NULL, site IS NOT NULL FROM instances WHERE instance_id = 'i-1'`).Scan(&relNull, &ok2); err != nil || !relNull || !ok2 {
		t.Errorf("NULL columns: relate_pkg_instance null %v, site set %v, %v", relNull, ok2, err)
	}

	again, err := instanceRegistry(t, s, instT0.Add(200*time.Hour)).Apply(ctx, sp)
	if err != nil || again.Changed {
		t.Fatalf("re-apply: changed %v, %v", again.Changed, err)
	}
	got2, _, _ := s.GetInstance(ctx, "i-1")
	if !got2.UpdatedAt.Equal(got.UpdatedAt) || len(got2.Changes) != 2 {
		t.Errorf("an unchanged apply wrote: updated %s, %d changes", got2.UpdatedAt, len(got2.Changes))
	}
}

// TestApplyInstanceWritesNothingOnRefusal: decide's error comes back as it is and leaves no trace.
func TestApplyInstanceWritesNothingOnRefusal(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "i.db"))
	defer s.Close()
	refused := errors.New("refused")
	_, err := s.ApplyInstance(ctx, "i-1", "tenant", "tokens", func(*instance.Instance, []instance.Instance) (instance.Result, error) {
		return instance.Result{}, refused
	})
	if err != refused {
		t.Fatalf("err %v, want decide's own error", err)
	}
	if list, err := s.ListInstances(ctx, instance.Filter{}); err != nil || len(list) != 0 {
		t.Errorf("stored %v, %v", list, err)
	}
}

// TestApplyInstanceKeepsFixedFields: even a decider that asks for it cannot move an instance to another subject,
// meter, sku or start.
func TestApplyInstanceKeepsFixedFields(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, filepath.Join(t.TempDir(), "i.db"))
	defer s.Close()
	if _, err := instanceRegistry(t, s, instT0).Apply(ctx, tokensSpec("i-1", instT0)); err != nil {
		t.Fatal(err)
	}
	_, err := s.ApplyInstance(ctx, "i-1", "tenant", "tokens", func(cur *instance.Instance, _ []instance.Instance) (instance.Result, error) {
		in := *cur
		in.Subject, in.Meter, in.SKU, in.StartedAt, in.Status = "other", "calls", "X", instT0.Add(time.Hour), instance.Frozen
		return instance.Result{Instance: in, Changed: true}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _, _ := s.GetInstance(ctx, "i-1")
	if got.Subject != "tenant" || got.Meter != "tokens" || got.SKU != "SKU-T" || !got.StartedAt.Equal(instT0) || got.Status != instance.Frozen {
		t.Errorf("stored %+v", got)
	}
}

// TestConcurrentOverlappingApplies registers many overlapping instances of one (subject, meter) at once, through
// one store and through two stores on the same file (two processes, as the CLI beside serve): exactly one wins,
// every other is refused as an overlap, and the store holds one instance.
func TestConcurrentOverlappingApplies(t *testing.T) {
	for _, stores := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d stores", stores), func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "i.db")
			var regs []*instance.Registry
			for range stores {
				s := openTest(t, path)
				defer s.Close()
				regs = append(regs, instanceRegistry(t, s, instT0.Add(100*time.Hour)))
			}
			const n = 16
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					// Different starts, all open-ended: every pair overlaps.
					_, errs[i] = regs[i%stores].Apply(ctx, tokensSpec(fmt.Sprintf("i-%02d", i), instT0.Add(time.Duration(i)*time.Hour)))
				}()
			}
			close(start)
			wg.Wait()
			won := 0
			for i, err := range errs {
				var ce *instance.ConflictError
				switch {
				case err == nil:
					won++
				case errors.As(err, &ce) && ce.Other != "":
				default:
					t.Errorf("apply %d: %v, want success or an overlap", i, err)
				}
			}
			if won != 1 {
				t.Errorf("%d applies won, want exactly 1", won)
			}
			list, err := regs[0].List(ctx, instance.Filter{})
			if err != nil || len(list) != 1 {
				t.Errorf("stored %d instances, %v; want 1", len(list), err)
			}
		})
	}
}
