package aggregate

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
)

// Row states in GET /v1/usage before the push ledger tracks them: CLOSED (final usage) and OPEN (the hour is not
// closed yet: the figures are what is stored so far).
const (
	StateClosed = "CLOSED"
	StateOpen   = "OPEN"
)

// maxUsageRange bounds one GET /v1/usage request (the dedup and SDR horizon).
const maxUsageRange = 31 * 24 * time.Hour

// UsageHandler serves GET /v1/usage (DESIGN.md §5, §5a).
type UsageHandler struct {
	closer  *Closer
	logger  *slog.Logger
	catalog *pricing.Catalog
}

// NewUsageHandler returns the handler; it reads through the closer's store and previews open hours with it.
func NewUsageHandler(c *Closer, logger *slog.Logger) *UsageHandler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &UsageHandler{closer: c, logger: logger, catalog: c.cfg.Catalog}
}

// Register adds GET /v1/usage to mux.
func (h *UsageHandler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/usage", h.get)
}

// UsageRow is one row of GET /v1/usage. Decimals are strings in plain notation.
type UsageRow struct {
	InstanceID   string  `json:"instance_id"`
	Meter        string  `json:"meter"`
	Hour         string  `json:"hour"`
	Quantity     string  `json:"quantity"`
	UsageValue   string  `json:"usage_value"`
	Carry        *string `json:"carry"`
	State        string  `json:"state"`
	MeteringSN   *string `json:"metering_sn"`
	Amount       *string `json:"amount"`
	Currency     string  `json:"currency,omitempty"`
	SKU          string  `json:"sku"`
	Events       int64   `json:"events"`
	LateQuantity string  `json:"late_quantity"`
	Begin        string  `json:"begin"`
	End          string  `json:"end"`
}

func (h *UsageHandler) get(w http.ResponseWriter, r *http.Request) {
	now := h.closer.cfg.Now().UTC()
	q := r.URL.Query()
	from, err := parseTimeParam(q.Get("from"), now.Truncate(time.Hour).Add(-24*time.Hour))
	if err != nil {
		writeError(w, http.StatusBadRequest, "from: "+err.Error())
		return
	}
	to, err := parseTimeParam(q.Get("to"), now.Truncate(time.Hour).Add(time.Hour))
	if err != nil {
		writeError(w, http.StatusBadRequest, "to: "+err.Error())
		return
	}
	if !from.Before(to) || to.Sub(from) > maxUsageRange {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("need from < to and a range of at most %s", maxUsageRange))
		return
	}
	rows, err := h.rows(r, UsageQuery{InstanceID: q.Get("instance_id"), From: from.Truncate(time.Hour), To: to}, now)
	if err != nil {
		h.logger.Error("usage query", "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Rows []UsageRow `json:"rows"`
	}{rows})
}

func (h *UsageHandler) rows(r *http.Request, q UsageQuery, now time.Time) ([]UsageRow, error) {
	ctx := r.Context()
	st := h.closer.cfg.Store
	closed, err := st.UsageRows(ctx, q)
	if err != nil {
		return nil, err
	}
	out := []UsageRow{}
	cum := map[string]decimal.Decimal{} // (instance, period start) -> usage accumulated before the current row
	for _, row := range closed {
		u := h.render(row, StateClosed)
		carry := row.CarryOut.String()
		u.Carry = &carry
		if amount, currency, err := h.amount(r, row, cum); err == nil {
			u.Amount, u.Currency = &amount, currency
		}
		out = append(out, u)
	}
	// Open hours: after the last closed one, up to the current hour.
	next := q.From
	if last, ok, err := st.LastClose(ctx); err != nil {
		return nil, err
	} else if ok && !last.Hour.Before(next) {
		next = last.Hour.Add(time.Hour)
	}
	for hour := next; hour.Before(q.To) && !hour.After(now); hour = hour.Add(time.Hour) {
		preview, err := h.closer.Preview(ctx, hour)
		if err != nil {
			return nil, err
		}
		for _, row := range preview {
			if q.InstanceID == "" || row.InstanceID == q.InstanceID {
				out = append(out, h.render(row, StateOpen))
			}
		}
	}
	return out, nil
}

func (h *UsageHandler) render(row Row, state string) UsageRow {
	return UsageRow{InstanceID: row.InstanceID, Meter: row.Meter, Hour: row.Hour.UTC().Format(time.RFC3339),
		Quantity: row.Quantity.String(), UsageValue: row.UsageValue.String(), State: state, SKU: row.SKU,
		Events: row.Events, LateQuantity: row.LateQuantity.String(), Begin: row.Begin.UTC().Format(time.RFC3339),
		End: row.End.UTC().Format(time.RFC3339)}
}

// amount prices a closed row with the plan in effect at its hour. For step plans the cumulative usage is the
// instance's earlier usage in the same accumulation period: read once per (instance, period), then carried
// forward through the rows, which come ordered by instance and hour.
func (h *UsageHandler) amount(r *http.Request, row Row, cum map[string]decimal.Decimal) (string, string, error) {
	plan, err := h.catalog.Plan(row.SKU, row.Hour)
	if err != nil {
		return "", "", err
	}
	c := decimal.Zero
	if plan.Mode == pricing.ModeStep {
		start, _ := plan.Period(row.Hour)
		key := row.InstanceID + "|" + start.Format(time.RFC3339)
		var ok bool
		if c, ok = cum[key]; !ok {
			before, err := h.closer.cfg.Store.UsageRows(r.Context(), UsageQuery{InstanceID: row.InstanceID, From: start, To: row.Hour})
			if err != nil {
				return "", "", err
			}
			for _, b := range before {
				c = c.Add(b.UsageValue)
			}
		}
		cum[key] = c.Add(row.UsageValue)
	}
	quote, err := plan.Price(row.UsageValue, c)
	if err != nil {
		return "", "", err
	}
	return quote.Amount.String(), plan.Currency, nil
}

func parseTimeParam(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	return ParseTime(s)
}

// ParseTime reads a time of the API and CLI (DESIGN.md §5a): RFC 3339 with any offset and fraction, or an hour
// named like 2026-11-22T03. The result is UTC.
func ParseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse("2006-01-02T15", s); err == nil {
		return t.UTC(), nil
	}
	return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time (or an hour like 2026-11-22T03)", s)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, struct {
		Error string `json:"error"`
	}{msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
