package report

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/meterd/meterd/aggregate"
)

// RecordsHandler serves GET /v1/records: the SDR ledger with attempts (DESIGN.md §5, §5a).
type RecordsHandler struct {
	ledger Ledger
	now    func() time.Time
	logger *slog.Logger
}

// NewRecordsHandler returns the handler.
func NewRecordsHandler(l Ledger, now func() time.Time, logger *slog.Logger) *RecordsHandler {
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &RecordsHandler{ledger: l, now: now, logger: logger}
}

// Register adds GET /v1/records to mux.
func (h *RecordsHandler) Register(mux *http.ServeMux) { mux.HandleFunc("GET /v1/records", h.get) }

// RecordJSON is one SDR in GET /v1/records. Decimals are strings in plain notation; times RFC 3339 UTC.
type RecordJSON struct {
	MeteringSN      string          `json:"metering_sn"`
	InstanceID      string          `json:"instance_id"`
	Hour            string          `json:"hour"`
	Revision        int             `json:"revision"`
	Meter           string          `json:"meter"`
	SKU             string          `json:"sku"`
	RecordTime      string          `json:"record_time"`
	BeginTime       string          `json:"begin_time"`
	EndTime         string          `json:"end_time"`
	UsageValue      string          `json:"usage_value"`
	Amount          string          `json:"amount"`
	Currency        string          `json:"currency"`
	State           string          `json:"state"`
	LastCode        string          `json:"last_code"`
	Reason          string          `json:"reason"`
	Due             string          `json:"due"`
	AcceptedAt      *string         `json:"accepted_at"`
	UnknownAttempts int             `json:"unknown_attempts"`
	Body            json.RawMessage `json:"body,omitempty"`
	Attempts        []AttemptJSON   `json:"attempts"`
}

// AttemptJSON is one attempt of an SDR.
type AttemptJSON struct {
	At         string `json:"at"`
	BatchID    string `json:"batch_id"`
	Records    int    `json:"records"`
	HTTPStatus int    `json:"http_status"`
	Code       string `json:"code"`
	Class      string `json:"class"`
	LatencyMs  int64  `json:"latency_ms"`
	Epoch      int64  `json:"epoch"`
	Error      string `json:"error,omitempty"`
}

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func (h *RecordsHandler) get(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	now := h.now().UTC()
	f := SDRFilter{State: State(q.Get("state")), InstanceID: q.Get("instance_id"), Limit: 10000}
	var err error
	if f.From, err = timeParam(q.Get("from"), now.Add(-24*time.Hour).Truncate(time.Hour)); err != nil {
		httpError(w, http.StatusBadRequest, "from: "+err.Error())
		return
	}
	if f.To, err = timeParam(q.Get("to"), now.Add(time.Hour)); err != nil {
		httpError(w, http.StatusBadRequest, "to: "+err.Error())
		return
	}
	if s := q.Get("limit"); s != "" {
		if f.Limit, err = strconv.Atoi(s); err != nil || f.Limit < 1 || f.Limit > 100000 {
			httpError(w, http.StatusBadRequest, "limit: must be an integer from 1 to 100000")
			return
		}
	}
	if f.State != "" && !validState(f.State) {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("state: %q is not an SDR state", f.State))
		return
	}
	sdrs, err := h.ledger.ListSDRs(r.Context(), f)
	if err != nil {
		h.logger.Error("list SDRs", "err", err)
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	sns := make([]string, len(sdrs))
	for i, s := range sdrs {
		sns[i] = s.MeteringSN
	}
	attempts, err := h.ledger.Attempts(r.Context(), sns)
	if err != nil {
		h.logger.Error("list attempts", "err", err)
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	out := make([]RecordJSON, 0, len(sdrs))
	for _, s := range sdrs {
		rec := RecordJSON{MeteringSN: s.MeteringSN, InstanceID: s.InstanceID, Hour: rfc(s.Hour), Revision: s.Revision,
			Meter: s.Meter, SKU: s.SKU, RecordTime: rfc(s.RecordTime), BeginTime: rfc(s.Begin), EndTime: rfc(s.End),
			UsageValue: s.UsageValue.String(), Amount: s.Amount.String(), Currency: s.Currency, State: string(s.State),
			LastCode: s.LastCode, Reason: s.Reason, Due: rfc(s.Due), UnknownAttempts: s.UnknownAttempts,
			Body: s.Body, Attempts: []AttemptJSON{}}
		if !s.AcceptedAt.IsZero() {
			a := rfc(s.AcceptedAt)
			rec.AcceptedAt = &a
		}
		for _, a := range attempts[s.MeteringSN] {
			rec.Attempts = append(rec.Attempts, AttemptJSON{At: a.At.UTC().Format(time.RFC3339Nano), BatchID: a.BatchID,
				Records: a.Records, HTTPStatus: a.HTTPStatus, Code: a.Code, Class: a.Class, LatencyMs: a.Latency.Milliseconds(),
				Epoch: a.Epoch, Error: a.Error})
		}
		out = append(out, rec)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Records []RecordJSON `json:"records"`
	}{out})
}

func validState(s State) bool {
	for _, st := range States {
		if st == s {
			return true
		}
	}
	return false
}

func timeParam(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	return aggregate.ParseTime(s)
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}
