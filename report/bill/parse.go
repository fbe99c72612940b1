package bill

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report/koogallery"
)

// FormatError is a malformed export: the 1-based line of the file (the header is line 1) and the reason.
type FormatError struct {
	Line   int
	Reason string
}

func (e *FormatError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Reason) }

func lineErr(line int, format string, args ...any) *FormatError {
	return &FormatError{Line: line, Reason: fmt.Sprintf(format, args...)}
}

// sheet is a parsed and checked export.
type sheet struct {
	rows      []BillRow
	abnormal  []bool // per row: its status is one of the abnormal statuses
	hasAmount bool
}

// column is one configured column and where the header has it (-1: absent).
type column struct {
	name string
	at   int
}

func (c column) present() bool { return c.at >= 0 }

// parse reads a whole export and checks every line: the header names the columns needed to match rows; every
// line has the header's number of fields, times in KooGallery's layout or RFC 3339, decimals in plain notation,
// no negative usage, and identifies an SDR no earlier line identifies. It returns the first problem found.
func parse(r io.Reader, cols Columns, abnormalStatuses []string) (*sheet, error) {
	rd := csv.NewReader(r)
	rd.FieldsPerRecord = -1 // checked here, to say what the header has
	header, err := rd.Read()
	if errors.Is(err, io.EOF) {
		return nil, lineErr(1, "empty file: want a header row")
	}
	if err != nil {
		return nil, csvErr(err)
	}
	sn, inst, begin, end, usage, amount, status, err := locate(header, cols)
	if err != nil {
		return nil, err
	}
	abnormal := map[string]bool{}
	for _, s := range abnormalStatuses {
		abnormal[strings.ToUpper(strings.TrimSpace(s))] = true
	}
	sh := &sheet{hasAmount: amount.present()}
	seen := map[string]int{} // identity of the row's SDR -> line
	for {
		rec, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return sh, nil
		}
		if err != nil {
			return nil, csvErr(err)
		}
		line, _ := rd.FieldPos(0)
		if len(rec) != len(header) {
			return nil, lineErr(line, "%d fields, the header has %d", len(rec), len(header))
		}
		field := func(c column) string {
			if !c.present() {
				return ""
			}
			return strings.TrimSpace(rec[c.at])
		}
		row := BillRow{Line: line, MeteringSN: field(sn), InstanceID: field(inst), Status: field(status)}
		if row.Begin, err = parseTime(field(begin)); err != nil {
			return nil, lineErr(line, "%s: %v", begin.name, err)
		}
		if row.End, err = parseTime(field(end)); err != nil {
			return nil, lineErr(line, "%s: %v", end.name, err)
		}
		if !row.Begin.IsZero() && !row.End.IsZero() && row.Begin.After(row.End) {
			return nil, lineErr(line, "%s %s is after %s %s", begin.name, row.Begin.Format(time.RFC3339), end.name,
				row.End.Format(time.RFC3339))
		}
		if usage.present() {
			if row.Usage, err = parseDecimal(field(usage)); err != nil {
				return nil, lineErr(line, "%s: %v", usage.name, err)
			}
			if row.Usage.Sign() < 0 {
				return nil, lineErr(line, "%s: %s must not be negative", usage.name, field(usage))
			}
		}
		if amount.present() {
			if row.Amount, err = parseDecimal(field(amount)); err != nil {
				return nil, lineErr(line, "%s: %v", amount.name, err)
			}
		}
		key, err := identity(row, sn, inst, begin, end)
		if err != nil {
			return nil, lineErr(line, "%v", err)
		}
		if prev, dup := seen[key]; dup {
			return nil, lineErr(line, "the same SDR as line %d (%s)", prev, key)
		}
		seen[key] = line
		sh.rows = append(sh.rows, row)
		sh.abnormal = append(sh.abnormal, abnormal[strings.ToUpper(row.Status)])
	}
}

// locate finds the configured columns in the header and checks that rows can be matched and every named usage
// and amount column is there.
func locate(header []string, cols Columns) (sn, inst, begin, end, usage, amount, status column, err error) {
	if len(header) > 0 {
		header[0] = strings.TrimPrefix(header[0], "\ufeff") // a byte-order mark, as spreadsheet programs write
	}
	for _, h := range header {
		// encoding/csv ends lines at \n only: a file with CR-only line endings is one long header, which would
		// otherwise import as a valid file without rows.
		if strings.ContainsAny(h, "\r\n") {
			err = lineErr(1, "header cell %q holds a line break: CR-only line endings? (want LF or CRLF)", h)
			return
		}
	}
	at, twice := map[string]int{}, map[string]bool{}
	for i, h := range header {
		k := strings.ToLower(strings.TrimSpace(h))
		if _, dup := at[k]; dup {
			twice[k] = true // a problem only if it is a configured column
		}
		at[k] = i
	}
	var problems, missing []string
	find := func(name string) column {
		k := strings.ToLower(strings.TrimSpace(name))
		i, ok := at[k]
		switch {
		case k == "" || !ok:
			return column{name: name, at: -1}
		case twice[k]:
			problems = append(problems, fmt.Sprintf("column %q appears more than once", name))
			return column{name: name, at: -2} // not present, and not missing either
		}
		return column{name: strings.TrimSpace(header[i]), at: i}
	}
	sn, inst, begin, end = find(cols.MeteringSN), find(cols.InstanceID), find(cols.Begin), find(cols.End)
	usage, amount, status = find(cols.Usage), find(cols.Amount), find(cols.Status)
	for _, c := range []struct {
		col  column
		name string
	}{{usage, cols.Usage}, {amount, cols.Amount}} {
		if strings.TrimSpace(c.name) != "" && c.col.at == -1 {
			missing = append(missing, strconv.Quote(c.name))
		}
	}
	if len(missing) > 0 {
		problems = append(problems, "missing column(s) "+strings.Join(missing, ", "))
	}
	if !sn.present() && !(inst.present() && begin.present() && end.present()) {
		var lack []string
		for _, c := range []struct {
			col  column
			name string
		}{{sn, cols.MeteringSN}, {inst, cols.InstanceID}, {begin, cols.Begin}, {end, cols.End}} {
			if !c.col.present() {
				lack = append(lack, strconv.Quote(c.name))
			}
		}
		problems = append(problems, fmt.Sprintf("rows cannot be matched: the header needs the %q column, or %q, %q and %q (missing %s)",
			cols.MeteringSN, cols.InstanceID, cols.Begin, cols.End, strings.Join(lack, ", ")))
	}
	if len(problems) > 0 {
		err = lineErr(1, "%s (header: %s)", strings.Join(problems, "; "), strings.Join(quoteAll(header), ","))
	}
	return
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

// identity names the SDR a row stands for: its metering_sn, else its instance and period.
func identity(row BillRow, sn, inst, begin, end column) (string, error) {
	if row.MeteringSN != "" {
		return "metering_sn " + row.MeteringSN, nil
	}
	if row.InstanceID == "" || row.Begin.IsZero() || row.End.IsZero() {
		if sn.present() {
			return "", fmt.Errorf("no %s, and not all of %s, %s and %s to match the row by", sn.name, inst.name, begin.name, end.name)
		}
		return "", fmt.Errorf("%s, %s and %s are all needed to match the row", inst.name, begin.name, end.name)
	}
	return fmt.Sprintf("instance %s, %s to %s", row.InstanceID, row.Begin.Format(time.RFC3339), row.End.Format(time.RFC3339)), nil
}

// parseTime reads KooGallery's yyyyMMdd'T'HHmmss'Z' or RFC 3339 (any offset, fractions allowed); "" is the zero
// time.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(koogallery.TimeLayout, s); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a time (want yyyyMMddTHHmmssZ, e.g. 20261122T030000Z, or RFC 3339)", s)
	}
	return t.UTC(), nil
}

func parseDecimal(s string) (decimal.Decimal, error) {
	if s == "" {
		return decimal.Decimal{}, errors.New("empty, want a decimal")
	}
	return pricing.ParseDecimal(s)
}

// csvErr turns the CSV reader's error into a FormatError on its line.
func csvErr(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return lineErr(pe.Line, "%v", pe.Err)
	}
	return fmt.Errorf("read CSV: %w", err)
}
