package reconcile

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/meterd/meterd/aggregate"
	"github.com/meterd/meterd/pricing"
)

// Handler serves GET /v1/reports/reconcile?from=&to=&format=csv|json|html (DESIGN.md §5): the same report as
// `meterd report reconcile`, streamed. from and to are required; format defaults to json. The answer is 200
// whether or not the invariant holds (the report says which); 400 for bad parameters; 503 when the store fails
// before anything was sent.
type Handler struct {
	src     Source
	catalog *pricing.Catalog
	now     func() time.Time
}

// NewHandler returns the handler; now (nil: time.Now) judges SDRs still waiting against their deadline.
func NewHandler(src Source, catalog *pricing.Catalog, now func() time.Time) *Handler {
	if now == nil {
		now = time.Now
	}
	return &Handler{src: src, catalog: catalog, now: now}
}

// Register adds GET /v1/reports/reconcile to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/reports/reconcile", h.get)
}

// ParseWindow reads the from and to of a report, as the API and the CLI take them (RFC 3339, or an hour such as
// 2026-11-22T03): both required, from before to.
func ParseWindow(from, to string) (time.Time, time.Time, error) {
	var errs []error
	var f, t time.Time
	var err error
	if from == "" {
		errs = append(errs, errors.New("from: required"))
	} else if f, err = aggregate.ParseTime(from); err != nil {
		errs = append(errs, fmt.Errorf("from: %w", err))
	}
	if to == "" {
		errs = append(errs, errors.New("to: required"))
	} else if t, err = aggregate.ParseTime(to); err != nil {
		errs = append(errs, fmt.Errorf("to: %w", err))
	}
	if len(errs) == 0 && !f.Before(t) {
		errs = append(errs, fmt.Errorf("from %s must be before to %s", ts(f), ts(t)))
	}
	return f, t, errors.Join(errs...)
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from, to, err := ParseWindow(q.Get("from"), q.Get("to"))
	format := FormatJSON
	if s := q.Get("format"); s != "" {
		var ferr error
		if format, ferr = ParseFormat(s); ferr != nil {
			err = errors.Join(err, fmt.Errorf("format: %w", ferr))
		}
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// The report is buffered until 64 KiB are ready, so a store failure at the start is still a clean 503; after
	// that it streams, and a failure can only cut it short.
	sent := &sentWriter{w: w}
	buf := bufio.NewWriterSize(sent, 64<<10)
	w.Header().Set("Content-Type", format.ContentType())
	w.Header().Set("Cache-Control", "no-store")
	if format == FormatCSV {
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="reconcile-%s-%s.csv"`,
			from.Format("20060102T15"), to.Format("20060102T15")))
	}
	_, err = Export(r.Context(), h.src, h.catalog, Options{From: from, To: to, Now: h.now()}, format, buf)
	if err == nil {
		err = buf.Flush()
	}
	if err != nil && !sent.started {
		w.Header().Del("Content-Disposition")
		writeError(w, http.StatusServiceUnavailable, "reconcile: "+err.Error())
	}
}

// sentWriter tells whether anything reached the client.
type sentWriter struct {
	w       io.Writer
	started bool
}

func (s *sentWriter) Write(p []byte) (int, error) {
	s.started = true
	return s.w.Write(p)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}
