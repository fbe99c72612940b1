package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// HandlerConfig holds what the HTTP ingest needs. MaxBody is in bytes.
type HandlerConfig struct {
	Validator *Validator
	Sink      Sink
	Rejected  RejectedLister
	MaxBody   int64
	Now       func() time.Time
	Metrics   *Metrics
	Logger    *slog.Logger
}

// Handler serves POST /v1/events and GET /v1/events/rejected.
type Handler struct {
	cfg HandlerConfig
}

// NewHandler checks cfg and returns the handler.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	switch {
	case cfg.Validator == nil, cfg.Sink == nil, cfg.Rejected == nil, cfg.Metrics == nil:
		return nil, errors.New("ingest handler: validator, sink, rejected lister and metrics are required")
	case cfg.MaxBody <= 0:
		return nil, errors.New("ingest handler: max body must be positive")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg}, nil
}

// Register adds the ingest routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/events", h.post)
	mux.HandleFunc("GET /v1/events/rejected", h.listRejected)
}

// RejectedItem is one refused event of a request, as answered (DESIGN.md §2).
type RejectedItem struct {
	Index  int    `json:"index"`
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Response is the answer to POST /v1/events.
type Response struct {
	Accepted   int            `json:"accepted"`
	Duplicates int            `json:"duplicates"`
	Rejected   []RejectedItem `json:"rejected"`
}

type errorBody struct {
	Error string `json:"error"`
}

func (h *Handler) post(w http.ResponseWriter, r *http.Request) {
	start := h.cfg.Now()
	status := h.ingest(w, r, start)
	h.cfg.Metrics.requests.WithLabelValues(strconv.Itoa(status)).Inc()
	h.cfg.Metrics.duration.Observe(time.Since(start).Seconds())
}

func (h *Handler) ingest(w http.ResponseWriter, r *http.Request, now time.Time) int {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{Error: "body larger than ingest.max_body (" + strconv.FormatInt(tooBig.Limit, 10) + " bytes)"})
		}
		return writeJSON(w, http.StatusBadRequest, errorBody{Error: "read body: " + err.Error()})
	}
	items, err := Decode(r.Header, body)
	if errors.Is(err, ErrUnsupportedMedia) {
		return writeJSON(w, http.StatusUnsupportedMediaType, errorBody{Error: err.Error()})
	}
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, errorBody{Error: err.Error()})
	}

	resp := Response{Rejected: []RejectedItem{}}
	var events []*Event
	var eventIndex []int // request index of each event
	var rejections []*Rejection
	for i, it := range items {
		if it.Err != nil {
			rej := &Rejection{Reason: it.Err.Error(), Code: it.Err.Code, ReceivedAt: now.UTC(), Event: keepRaw(it.Raw)}
			rejections = append(rejections, rej)
			resp.Rejected = append(resp.Rejected, RejectedItem{Index: i, Reason: rej.Reason})
			continue
		}
		ev, rej := h.cfg.Validator.Validate(it.Raw, now)
		if rej != nil {
			rejections = append(rejections, rej)
			resp.Rejected = append(resp.Rejected, RejectedItem{Index: i, ID: rej.ID, Reason: rej.Reason})
			continue
		}
		events = append(events, ev)
		eventIndex = append(eventIndex, i)
	}

	res, err := h.cfg.Sink.Write(r.Context(), events, rejections)
	if err != nil {
		// Nothing of this request is acknowledged: the client retries the whole request, and dedup makes the
		// retry harmless for whatever did reach the store.
		h.cfg.Logger.Error("store ingest batch", "events", len(events), "err", err)
		w.Header().Set("Retry-After", "1")
		if errors.Is(err, context.Canceled) {
			return writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "request cancelled before the batch was durable"})
		}
		return writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "store unavailable: " + err.Error()})
	}
	m := h.cfg.Metrics
	for _, rej := range rejections {
		m.rejected.WithLabelValues(string(rej.Code)).Inc()
	}
	for j, o := range res.Outcomes {
		switch o {
		case Stored:
			resp.Accepted++
		case Duplicate:
			resp.Duplicates++
		case Conflict:
			m.rejected.WithLabelValues(string(CodeConflict)).Inc()
			resp.Rejected = append(resp.Rejected, RejectedItem{Index: eventIndex[j], ID: events[j].ID,
				Reason: ConflictReason})
		}
	}
	sortRejected(resp.Rejected)
	m.events.WithLabelValues(outcomeAccepted).Add(float64(resp.Accepted))
	m.events.WithLabelValues(outcomeDuplicate).Add(float64(resp.Duplicates))
	m.events.WithLabelValues(outcomeRejected).Add(float64(len(resp.Rejected)))
	return writeJSON(w, http.StatusOK, resp)
}

// ConflictReason is the reason given for a conflicting copy.
const ConflictReason = "conflict: an event with this source and id was stored earlier with different content; this copy is dead-lettered, not counted"

func sortRejected(r []RejectedItem) {
	// Insertion sort: conflicts are appended after validation failures and are few.
	for i := 1; i < len(r); i++ {
		for j := i; j > 0 && r[j].Index < r[j-1].Index; j-- {
			r[j], r[j-1] = r[j-1], r[j]
		}
	}
}

func (h *Handler) listRejected(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: "limit: must be an integer from 1 to 10000"})
			return
		}
		limit = n
	}
	rows, err := h.cfg.Rejected.ListRejected(r.Context(), limit)
	if err != nil {
		h.cfg.Logger.Error("list dead letters", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "store unavailable: " + err.Error()})
		return
	}
	if rows == nil {
		rows = []Rejection{}
	}
	writeJSON(w, http.StatusOK, struct {
		Rejected []Rejection `json:"rejected"`
	}{rows})
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client may be gone; nothing more to do
	return status
}
