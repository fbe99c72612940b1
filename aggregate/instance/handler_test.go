package instance_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meterd/meterd/aggregate/instance"
)

func newServer(t *testing.T) *httptest.Server {
	t.Helper()
	reg, _, _ := newRegistry(t)
	h, err := instance.NewHandler(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

type answer struct {
	status int
	body   string
}

func do(t *testing.T, srv *httptest.Server, method, path, body string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return answer{resp.StatusCode, string(b)}
}

const tokensSpec = `{"subject": "tenant-42", "meter": "tokens", "sku": "SKU-T", "started_at": "2026-11-01T08:00:00+08:00"}`

func TestPutCreatesThenChangesNothing(t *testing.T) {
	srv := newServer(t)
	a := do(t, srv, "PUT", "/v1/instances/i-1", tokensSpec)
	if a.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", a.status, a.body)
	}
	var got struct {
		Instance map[string]any `json:"instance"`
		Changed  bool           `json:"changed"`
		Created  bool           `json:"created"`
	}
	if err := json.Unmarshal([]byte(a.body), &got); err != nil {
		t.Fatal(err)
	}
	in := got.Instance
	if !got.Changed || !got.Created || in["instance_id"] != "i-1" || in["subject"] != "tenant-42" || in["status"] != "ACTIVE" ||
		in["started_at"] != "2026-11-01T00:00:00Z" || in["released_at"] != nil || in["site"] != nil ||
		in["updated_at"] != "2026-11-05T04:00:00Z" {
		t.Errorf("PUT answer %s", a.body)
	}
	changes, _ := in["changes"].([]any)
	if len(changes) != 1 || changes[0].(map[string]any)["kind"] != "CREATED" || changes[0].(map[string]any)["at"] != "2026-11-01T00:00:00Z" {
		t.Errorf("changes %v", in["changes"])
	}

	// The same spec again, this time with the id in the body too.
	again := do(t, srv, "PUT", "/v1/instances/i-1", `{"instance_id": "i-1", `+tokensSpec[1:])
	if again.status != http.StatusOK || !strings.Contains(again.body, `"changed":false`) || !strings.Contains(again.body, `"created":false`) {
		t.Errorf("second PUT: %d %s", again.status, again.body)
	}
}

func TestPutErrors(t *testing.T) {
	srv := newServer(t)
	if a := do(t, srv, "PUT", "/v1/instances/i-1", tokensSpec); a.status != http.StatusOK {
		t.Fatalf("setup: %d %s", a.status, a.body)
	}
	tests := []struct {
		name   string
		path   string
		body   string
		status int
		want   string
	}{
		{"overlap", "/v1/instances/i-2", tokensSpec, http.StatusConflict, `overlaps instance \"i-1\"`},
		{"fixed field", "/v1/instances/i-1", strings.Replace(tokensSpec, "tenant-42", "tenant-43", 1), http.StatusConflict,
			`subject: instance \"i-1\" has subject \"tenant-42\" since its creation`},
		{"not JSON", "/v1/instances/i-3", `{"meter": `, http.StatusBadRequest, "body is not a JSON instance spec"},
		{"unknown key", "/v1/instances/i-3", `{"meter": "tokens", "released": "2026-11-02T00:00:00Z"}`, http.StatusBadRequest,
			`unknown field \"released\"`},
		{"trailing data", "/v1/instances/i-3", tokensSpec + `{}`, http.StatusBadRequest, "data after the object"},
		{"id differs", "/v1/instances/i-3", `{"instance_id": "i-4"}`, http.StatusBadRequest, `instance_id: \"i-4\" differs`},
		{"invalid spec", "/v1/instances/i-3", `{"meter": "tokens", "sku": "NOPE"}`, http.StatusBadRequest,
			`sku: \"NOPE\" has no plan\nstarted_at: required`},
		{"too large", "/v1/instances/i-3", `{"subject": "` + strings.Repeat("x", instance.MaxBody) + `"}`,
			http.StatusRequestEntityTooLarge, "body larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := do(t, srv, "PUT", tt.path, tt.body)
			if a.status != tt.status || !strings.Contains(a.body, tt.want) || !strings.HasPrefix(a.body, `{"error":`) {
				t.Errorf("%d %s, want %d with %q", a.status, a.body, tt.status, tt.want)
			}
		})
	}
}

func TestGetInstances(t *testing.T) {
	srv := newServer(t)
	for _, p := range []struct{ id, body string }{
		{"i-1", `{"subject": "s1", "meter": "tokens", "sku": "SKU-T", "started_at": "2026-11-01T00:00:00Z", "status": "RELEASED", "released_at": "2026-11-02T00:00:00Z"}`},
		{"i-2", `{"subject": "s1", "meter": "tokens", "sku": "SKU-T", "started_at": "2026-11-02T00:00:00Z", "status": "FROZEN"}`},
		{"i-3", `{"subject": "s2", "meter": "calls", "sku": "SKU-C", "started_at": "2026-11-01T00:00:00Z"}`},
	} {
		if a := do(t, srv, "PUT", "/v1/instances/"+p.id, p.body); a.status != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", p.id, a.status, a.body)
		}
	}
	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{"i-1", "i-2", "i-3"}},
		{"?subject=s1", []string{"i-1", "i-2"}},
		{"?meter=calls", []string{"i-3"}},
		{"?subject=s1&status=FROZEN", []string{"i-2"}},
		{"?status=RELEASED", []string{"i-1"}},
		{"?subject=nobody", []string{}},
	}
	for _, tt := range tests {
		a := do(t, srv, "GET", "/v1/instances"+tt.query, "")
		var got struct {
			Instances []struct {
				ID         string  `json:"instance_id"`
				ReleasedAt *string `json:"released_at"`
			} `json:"instances"`
		}
		if a.status != http.StatusOK || json.Unmarshal([]byte(a.body), &got) != nil || got.Instances == nil {
			t.Fatalf("GET %s: %d %s", tt.query, a.status, a.body)
		}
		var ids []string
		for _, in := range got.Instances {
			ids = append(ids, in.ID)
		}
		if strings.Join(ids, ",") != strings.Join(tt.want, ",") {
			t.Errorf("GET %s: %v, want %v", tt.query, ids, tt.want)
		}
		if tt.query == "?status=RELEASED" && (got.Instances[0].ReleasedAt == nil || *got.Instances[0].ReleasedAt != "2026-11-02T00:00:00Z") {
			t.Errorf("released_at %v", got.Instances[0].ReleasedAt)
		}
	}
	if a := do(t, srv, "GET", "/v1/instances?status=paused", ""); a.status != http.StatusBadRequest {
		t.Errorf("bad status filter: %d %s", a.status, a.body)
	}
	if a := do(t, srv, "GET", "/v1/instances/i-2", ""); a.status != http.StatusOK || !strings.Contains(a.body, `"kind":"FROZEN"`) {
		t.Errorf("GET one: %d %s", a.status, a.body)
	}
	if a := do(t, srv, "GET", "/v1/instances/nope", ""); a.status != http.StatusNotFound {
		t.Errorf("GET unknown: %d %s", a.status, a.body)
	}
}
