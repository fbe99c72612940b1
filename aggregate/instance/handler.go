package instance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
)

// MaxBody bounds a PUT /v1/instances/{id} body: a spec is a few hundred bytes.
const MaxBody = 1 << 20

// Handler serves the instance API (DESIGN.md §5): PUT /v1/instances/{id}, GET /v1/instances and
// GET /v1/instances/{id}.
type Handler struct {
	reg *Registry
	log *slog.Logger
}

// NewHandler returns the handler of reg; log may be nil.
func NewHandler(reg *Registry, log *slog.Logger) (*Handler, error) {
	if reg == nil {
		return nil, errors.New("instance handler: registry is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Handler{reg: reg, log: log}, nil
}

// Register adds the instance routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("PUT /v1/instances/{id}", h.put)
	mux.HandleFunc("GET /v1/instances", h.list)
	mux.HandleFunc("GET /v1/instances/{id}", h.get)
}

// PutResponse is the answer to PUT /v1/instances/{id}.
type PutResponse struct {
	Instance Instance `json:"instance"`
	Changed  bool     `json:"changed"`
	Created  bool     `json:"created"`
}

type errorBody struct {
	Error string `json:"error"`
}

func (h *Handler) put(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: "body larger than " + strconv.FormatInt(tooBig.Limit, 10) + " bytes"})
			return
		}
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "read body: " + err.Error()})
		return
	}
	spec, err := decodeSpec(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: err.Error()})
		return
	}
	if spec.InstanceID != "" && spec.InstanceID != id {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("instance_id: %q differs from the id %q in the path", spec.InstanceID, id)})
		return
	}
	spec.InstanceID = id
	res, err := h.reg.Apply(r.Context(), spec)
	if err != nil {
		h.fail(w, "apply instance", id, err)
		return
	}
	if res.Changed {
		h.log.Info("instance applied", "instance_id", id, "status", res.Instance.Status, "created", res.Created,
			"changes", len(res.New))
	}
	writeJSON(w, http.StatusOK, PutResponse{Instance: res.Instance, Changed: res.Changed, Created: res.Created})
}

// decodeSpec reads one JSON spec strictly: an unknown key is refused, since a misspelt key silently ignored
// (say "released" for "released_at") would leave an instance billing.
func decodeSpec(body []byte) (Spec, error) {
	var spec Spec
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return Spec{}, fmt.Errorf("body is not a JSON instance spec: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Spec{}, errors.New("body is not a JSON instance spec: data after the object")
	}
	return spec, nil
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := Filter{Subject: q.Get("subject"), Meter: q.Get("meter")}
	if s := q.Get("status"); s != "" {
		st, err := ParseStatus(s)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: "status: " + err.Error()})
			return
		}
		f.Status = st
	}
	out, err := h.reg.List(r.Context(), f)
	if err != nil {
		h.fail(w, "list instances", "", err)
		return
	}
	if out == nil {
		out = []Instance{}
	}
	writeJSON(w, http.StatusOK, struct {
		Instances []Instance `json:"instances"`
	}{out})
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	in, ok, err := h.reg.Get(r.Context(), id)
	if err != nil {
		h.fail(w, "get instance", id, err)
		return
	}
	if !ok {
		writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("instance %q is not registered", id)})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Instance Instance `json:"instance"`
	}{in})
}

// fail answers an error of the registry: the caller's mistake (400, 409) or the store's (503, retryable).
func (h *Handler) fail(w http.ResponseWriter, action, id string, err error) {
	var inv *InvalidError
	switch {
	case errors.As(err, &inv):
		writeJSON(w, http.StatusBadRequest, errorBody{Error: err.Error()})
	case isConflict(err):
		writeJSON(w, http.StatusConflict, errorBody{Error: err.Error()})
	default:
		h.log.Error(action, "instance_id", id, "err", err)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "store unavailable: " + err.Error()})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing more to do
}
