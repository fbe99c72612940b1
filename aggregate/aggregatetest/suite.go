// Package aggregatetest is the storage conformance suite of the hour close: golden events, instance changes and
// closes (aggregate/testdata/golden) run against any store, which must produce exactly the expected closed hours,
// late usage, unmatched usage and write-offs. SQLite runs it in its tests; ClickHouse must pass the same suite.
package aggregatetest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/aggregate/instance"
	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/ingest"
)

// Store is what a storage implementation must provide to run the suite.
type Store interface {
	ingest.Sink
	aggregate.Store
	instance.Store
	ListLate(ctx context.Context, from, to time.Time) ([]aggregate.Late, error)
	ListUnmatched(ctx context.Context, from, to time.Time) ([]aggregate.Unmatched, error)
	ListWriteOffs(ctx context.Context, from, to time.Time) ([]aggregate.WriteOff, error)
	Close() error
}

// Opener opens the store kept in dir, the same data each time it is called with the same dir (a restart).
type Opener func(t *testing.T, dir string) Store

type step struct {
	At           time.Time        `yaml:"at"`
	Ingest       []map[string]any `yaml:"ingest"`
	ExpectIngest *struct {
		Accepted, Duplicates, Rejected int
	} `yaml:"expect_ingest"`
	Close     string          `yaml:"close"`
	Instances []instance.Spec `yaml:"instances"`
	Restart   bool            `yaml:"restart"`
}

// Expected is the golden outcome, in the JSON shape of expected.json.
type Expected struct {
	Rows      []map[string]any `json:"rows"`
	Late      []map[string]any `json:"late"`
	Unmatched []map[string]any `json:"unmatched"`
	WriteOffs []map[string]any `json:"write_offs"`
	Closes    []map[string]any `json:"closes"`
}

// Run plays the golden scenario in dir (aggregate/testdata/golden) against the store opened by open.
func Run(t *testing.T, goldenDir string, open Opener) {
	ctx := context.Background()
	cfg, _, err := config.Load(filepath.Join(goldenDir, "config.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	var script struct {
		Steps []step `yaml:"steps"`
	}
	readYAML(t, filepath.Join(goldenDir, "script.yaml"), &script)

	dir := t.TempDir()
	now := script.Steps[0].At
	clock := func() time.Time { return now }
	st := open(t, dir)
	defer func() { _ = st.Close() }()
	var closer *aggregate.Closer
	var registry *instance.Registry
	wire := func() {
		var err error
		registry, err = instance.NewRegistry(st, instance.NewRefs(cfg.MeterSet(), cfg.Catalog(), nil), clock)
		if err != nil {
			t.Fatal(err)
		}
		closer, err = aggregate.NewCloser(aggregate.CloserConfig{Store: st, Instances: st, Meters: cfg.MeterSet(),
			Catalog: cfg.Catalog(), Watermark: aggregate.SyncWatermark{}, LatePolicy: aggregate.LatePolicy(cfg.Schedule.LatePolicy),
			CloseDelay: cfg.Schedule.CloseDelay.Duration, ForceAfter: cfg.Schedule.Deadline.Duration, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
	}
	wire()
	if _, err := registry.ApplyAll(ctx, cfg.Instances, "instances"); err != nil {
		t.Fatal(err)
	}
	validator := ingest.NewValidator(cfg.MeterSet(), cfg.Ingest.MaxEventAge.Duration, cfg.Ingest.MaxFutureSkew.Duration)

	for i, s := range script.Steps {
		if !s.At.IsZero() {
			now = s.At
		}
		switch {
		case s.Restart:
			if err := st.Close(); err != nil {
				t.Fatalf("step %d: close store: %v", i, err)
			}
			st = open(t, dir)
			wire()
		case len(s.Ingest) > 0:
			var events []*ingest.Event
			var rejected []*ingest.Rejection
			for _, e := range s.Ingest {
				e["specversion"], e["source"] = "1.0", "app"
				raw, err := json.Marshal(e)
				if err != nil {
					t.Fatal(err)
				}
				ev, rej := validator.Validate(raw, now)
				if rej != nil {
					rejected = append(rejected, rej)
					continue
				}
				events = append(events, ev)
			}
			res, err := st.Write(ctx, events, rejected)
			if err != nil {
				t.Fatalf("step %d: ingest: %v", i, err)
			}
			got := map[ingest.Outcome]int{}
			for _, o := range res.Outcomes {
				got[o]++
			}
			if want := s.ExpectIngest; want != nil &&
				(got[ingest.Stored] != want.Accepted || got[ingest.Duplicate] != want.Duplicates || got[ingest.Conflict]+len(rejected) != want.Rejected) {
				var reasons []string
				for _, r := range rejected {
					reasons = append(reasons, r.ID+": "+r.Reason)
				}
				t.Fatalf("step %d: ingest outcomes %v (+%d invalid: %v), want %+v", i, got, len(rejected), reasons, *want)
			}
		case len(s.Instances) > 0:
			for _, spec := range s.Instances {
				if _, err := registry.Apply(ctx, spec); err != nil {
					t.Fatalf("step %d: apply instance %s: %v", i, spec.InstanceID, err)
				}
			}
		case s.Close != "":
			hour, err := time.Parse(time.RFC3339, s.Close)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := closer.Close(ctx, hour); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		}
	}

	var want Expected
	data, err := os.ReadFile(filepath.Join(goldenDir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	from, to := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	rows, err := st.UsageRows(ctx, aggregate.UsageQuery{From: from, To: to})
	if err != nil {
		t.Fatal(err)
	}
	late, err := st.ListLate(ctx, from, to)
	if err != nil {
		t.Fatal(err)
	}
	unmatched, err := st.ListUnmatched(ctx, from, to)
	if err != nil {
		t.Fatal(err)
	}
	writeOffs, err := st.ListWriteOffs(ctx, from, to)
	if err != nil {
		t.Fatal(err)
	}
	// The closed hours, walking back from the last one.
	var closes []map[string]any
	last, ok, err := st.LastClose(ctx)
	if err != nil || !ok {
		t.Fatalf("last close: %v %v", ok, err)
	}
	for hour := last.Hour; ; hour = hour.Add(-time.Hour) {
		c, ok, err := st.GetClose(ctx, hour)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		closes = append([]map[string]any{{"hour": ts(c.Hour), "rows": c.Rows, "forced": c.Forced}}, closes...)
	}
	compare(t, "rows", want.Rows, RowsJSON(rows))
	compare(t, "late", want.Late, lateJSON(late))
	compare(t, "unmatched", want.Unmatched, unmatchedJSON(unmatched))
	compare(t, "write_offs", want.WriteOffs, writeOffsJSON(writeOffs))
	compare(t, "closes", want.Closes, closes)
	if err := aggregate.CheckCarries(rows, writeOffs); err != nil {
		t.Errorf("carry invariant: %v", err)
	}
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// RowsJSON renders rows in the golden shape.
func RowsJSON(rows []aggregate.Row) []map[string]any {
	out := []map[string]any{}
	for _, r := range rows {
		out = append(out, map[string]any{"instance_id": r.InstanceID, "hour": ts(r.Hour), "begin": ts(r.Begin), "end": ts(r.End),
			"events": r.Events, "quantity": r.Quantity.String(), "late_events": r.LateEvents, "late_quantity": r.LateQuantity.String(),
			"unit_scale": r.UnitScale.String(), "carry_in": r.CarryIn.String(), "usage_value": r.UsageValue.String(),
			"carry_out": r.CarryOut.String()})
	}
	return out
}

func lateJSON(ls []aggregate.Late) []map[string]any {
	out := []map[string]any{}
	for _, l := range ls {
		out = append(out, map[string]any{"close_hour": ts(l.CloseHour), "meter": l.Meter, "subject": l.Subject,
			"origin_hour": ts(l.OriginHour), "instance_id": l.InstanceID, "events": l.Events, "quantity": l.Quantity.String(),
			"action": string(l.Action)})
	}
	return out
}

func unmatchedJSON(us []aggregate.Unmatched) []map[string]any {
	out := []map[string]any{}
	for _, u := range us {
		out = append(out, map[string]any{"meter": u.Meter, "subject": u.Subject, "hour": ts(u.Hour), "from": ts(u.From),
			"to": ts(u.To), "events": u.Events, "quantity": u.Quantity.String(), "state": string(u.State), "instance_id": u.InstanceID})
	}
	return out
}

func writeOffsJSON(ws []aggregate.WriteOff) []map[string]any {
	out := []map[string]any{}
	for _, w := range ws {
		out = append(out, map[string]any{"instance_id": w.InstanceID, "meter": w.Meter, "close_hour": ts(w.CloseHour),
			"origin_hour": ts(w.OriginHour), "usage": w.Usage.String(), "kind": string(w.Kind)})
	}
	return out
}

// compare checks got against want through their JSON form, so numbers and strings compare as written.
func compare(t *testing.T, what string, want, got []map[string]any) {
	t.Helper()
	if want == nil {
		want = []map[string]any{}
	}
	w, _ := json.MarshalIndent(want, "", "  ")
	g, _ := json.MarshalIndent(got, "", "  ")
	if !bytes.Equal(w, g) {
		t.Errorf("%s differ:\n got: %s\nwant: %s", what, g, w)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
