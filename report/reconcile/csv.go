package reconcile

import (
	"encoding/csv"
	"io"
	"strconv"
	"strings"
)

// CSVHeader is the header row of the CSV form: the columns of a line, named as in the JSON form and in the
// v_reconciliation_lines view.
var CSVHeader = []string{"instance_id", "meter", "sku", "aggregation", "hour", "events", "quantity", "late_events",
	"late_quantity", "late_origins", "unit_scale", "carry_in", "carry_out", "usage_value", "pushed_usage", "metering_sn",
	"revision", "state", "last_code", "attempts", "due", "accepted_at", "expected_amount", "amount_rounded_2",
	"amount_rounded_3", "recomputed_amount", "amount_mismatch", "currency"}

// lateOrigins renders the origins of late usage carried in as "HOUR=QUANTITY;..." in hour order.
func (l *Line) lateOrigins() string {
	parts := make([]string, len(l.LateOrigins))
	for i, o := range l.LateOrigins {
		parts[i] = ts(o.Hour) + "=" + o.Quantity.String()
	}
	return strings.Join(parts, ";")
}

func deref[T any](p *T, f func(T) string) string {
	if p == nil {
		return ""
	}
	return f(*p)
}

func str(s string) string { return s }

func (l *Line) csv() []string {
	j := l.json()
	return []string{j.InstanceID, j.Meter, j.SKU, j.Aggregation, j.Hour, strconv.FormatInt(j.Events, 10), j.Quantity,
		strconv.FormatInt(j.LateEvents, 10), j.LateQuantity, l.lateOrigins(), j.UnitScale, j.CarryIn, j.CarryOut,
		j.UsageValue, deref(j.PushedUsage, str), deref(j.MeteringSN, str), deref(j.Revision, strconv.Itoa), j.State,
		j.LastCode, strconv.Itoa(j.Attempts), deref(j.Due, str), deref(j.AcceptedAt, str), deref(j.ExpectedAmount, str),
		deref(j.AmountRounded2, str), deref(j.AmountRounded3, str), deref(j.RecomputedAmount, str),
		strconv.FormatBool(j.AmountMismatch), j.Currency}
}

// csvWriter writes lines as CSV rows as they come.
type csvWriter struct{ w *csv.Writer }

func newCSVWriter(w io.Writer) (*csvWriter, error) {
	c := &csvWriter{w: csv.NewWriter(w)}
	return c, c.w.Write(CSVHeader)
}

func (c *csvWriter) line(l *Line) error { return c.w.Write(l.csv()) }

func (c *csvWriter) end() error {
	c.w.Flush()
	return c.w.Error()
}

// WriteCSV writes the lines as CSV: a header row (CSVHeader), then one row per line. Empty cells are absent
// values (no SDR).
func (r *Report) WriteCSV(w io.Writer) error {
	c, err := newCSVWriter(w)
	if err != nil {
		return err
	}
	for i := range r.Lines {
		if err := c.line(&r.Lines[i]); err != nil {
			return err
		}
	}
	return c.end()
}
