package instance

import (
	"encoding/json"
	"testing"
	"time"
)

func TestContains(t *testing.T) {
	live := Instance{StartedAt: hour(0)}
	rel := Instance{StartedAt: hour(0), ReleasedAt: hour(5)}
	ms := time.Millisecond
	tests := []struct {
		name string
		in   Instance
		at   time.Time
		want bool
	}{
		{"at started_at", rel, hour(0), true},
		{"just before started_at", rel, hour(0).Add(-ms), false},
		{"inside", rel, hour(3), true},
		{"just before released_at", rel, hour(5).Add(-ms), true},
		{"at released_at: the successor's", rel, hour(5), false},
		{"after released_at", rel, hour(9), false},
		{"not released: open-ended", live, hour(10000), true},
		{"not released, before start", live, hour(-1), false},
	}
	for _, tt := range tests {
		if got := tt.in.Contains(tt.at); got != tt.want {
			t.Errorf("%s: Contains(%s) = %v, want %v", tt.name, tt.at.Format(time.RFC3339Nano), got, tt.want)
		}
	}
	if s, e := rel.Life(); !s.Equal(hour(0)) || !e.Equal(hour(5)) {
		t.Errorf("Life() = %s, %s", s, e)
	}
	if _, e := live.Life(); !e.IsZero() {
		t.Errorf("Life() of a live instance ends at %s, want zero", e)
	}
}

func TestFrozenAt(t *testing.T) {
	in := Instance{StartedAt: hour(0), Changes: []Change{
		{At: hour(0), Kind: KindCreated},
		{At: hour(2), Kind: KindFrozen},
		{At: hour(4), Kind: KindUnfrozen},
		{At: hour(6), Kind: KindFrozen},
		{At: hour(9), Kind: KindReleased},
	}}
	tests := []struct {
		at   time.Time
		want bool
	}{
		{hour(0), false},
		{hour(2).Add(-time.Millisecond), false},
		{hour(2), true}, // a freeze takes effect at its instant
		{hour(3), true},
		{hour(4), false},
		{hour(5), false},
		{hour(6), true},
		{hour(20), true}, // release does not unfreeze; Contains says the instance is over
	}
	for _, tt := range tests {
		if got := in.FrozenAt(tt.at); got != tt.want {
			t.Errorf("FrozenAt(%s) = %v, want %v", tt.at.Format(time.RFC3339Nano), got, tt.want)
		}
	}
	// History recorded out of time order (an unfreeze told before the freeze it ends, at the same instant): the
	// time decides, and at one instant the later record wins.
	odd := Instance{Changes: []Change{{At: hour(5), Kind: KindUnfrozen}, {At: hour(3), Kind: KindFrozen}, {At: hour(5), Kind: KindFrozen}}}
	for _, tt := range []struct {
		at   time.Time
		want bool
	}{{hour(2), false}, {hour(4), true}, {hour(5), true}} {
		if got := odd.FrozenAt(tt.at); got != tt.want {
			t.Errorf("out-of-order history: FrozenAt(%s) = %v, want %v", tt.at.Format(time.RFC3339), got, tt.want)
		}
	}
	if (Instance{}).FrozenAt(hour(1)) {
		t.Error("an instance without history is frozen")
	}
}

// TestMarshalJSON: RFC 3339 UTC with Z, null for what is unset, the history included.
func TestMarshalJSON(t *testing.T) {
	in := Instance{ID: "i-1", Subject: "s1", Meter: "tokens", SKU: "SKU-T", Status: Released,
		StartedAt: time.Date(2026, 11, 1, 8, 0, 0, 0, time.FixedZone("CST", 8*3600)), ReleasedAt: hour(5).Add(500 * time.Millisecond),
		Changes:   []Change{{At: t0, Kind: KindCreated, RecordedAt: hour(1)}, {At: hour(5), Kind: KindReleased, RecordedAt: hour(6)}},
		UpdatedAt: hour(6)}
	got, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"instance_id":"i-1","subject":"s1","meter":"tokens","sku":"SKU-T","status":"RELEASED",` +
		`"started_at":"2026-11-01T00:00:00Z","released_at":"2026-11-01T05:00:00.5Z","relate_pkg_instance":null,"site":null,` +
		`"changes":[{"at":"2026-11-01T00:00:00Z","kind":"CREATED","recorded_at":"2026-11-01T01:00:00Z"},` +
		`{"at":"2026-11-01T05:00:00Z","kind":"RELEASED","recorded_at":"2026-11-01T06:00:00Z"}],"updated_at":"2026-11-01T06:00:00Z"}`
	if string(got) != want {
		t.Errorf("JSON\n got %s\nwant %s", got, want)
	}
	live, _ := json.Marshal(Instance{ID: "i-2", RelatePkgInstance: "pkg", Site: "cn"})
	var m map[string]any
	if err := json.Unmarshal(live, &m); err != nil {
		t.Fatal(err)
	}
	if m["released_at"] != nil || m["relate_pkg_instance"] != "pkg" || m["site"] != "cn" {
		t.Errorf("live instance JSON %s", live)
	}
	if ch, ok := m["changes"].([]any); !ok || len(ch) != 0 {
		t.Errorf("changes of an instance without history: %s, want []", live)
	}
}
