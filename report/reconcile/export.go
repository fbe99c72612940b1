package reconcile

import (
	"context"
	"fmt"
	"io"

	"github.com/meterd/meterd/pricing"
)

// Format is an output format of the report.
type Format string

// Formats.
const (
	FormatCSV  Format = "csv"  // the lines, one row each
	FormatJSON Format = "json" // the whole report (DESIGN.md §5a)
	FormatHTML Format = "html" // one self-contained page: summary, chart, invariant, discrepancy tables
)

// ParseFormat reads a format name.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatCSV, FormatJSON, FormatHTML:
		return f, nil
	}
	return "", fmt.Errorf("%q must be csv, json or html", s)
}

// ContentType is the HTTP media type of the format.
func (f Format) ContentType() string {
	switch f {
	case FormatCSV:
		return "text/csv; charset=utf-8"
	case FormatHTML:
		return "text/html; charset=utf-8"
	}
	return "application/json"
}

// Export builds the report and writes it to w in format f. CSV and JSON lines are written as they are built and
// not kept, so memory does not grow with the number of lines; the HTML page has no per-line table and keeps none
// either. The returned report has everything but Lines (LineCount counts them). On an error the output is
// incomplete.
func Export(ctx context.Context, src Source, catalog *pricing.Catalog, opts Options, f Format, w io.Writer) (*Report, error) {
	switch f {
	case FormatCSV:
		var c *csvWriter
		start := func() (err error) {
			if c == nil {
				c, err = newCSVWriter(w)
			}
			return err
		}
		r, err := build(ctx, src, catalog, opts, func(l *Line) error {
			if err := start(); err != nil {
				return err
			}
			return c.line(l)
		})
		if err != nil {
			return nil, err
		}
		if err := start(); err != nil {
			return nil, err
		}
		return r, c.end()
	case FormatJSON:
		j := newJSONWriter(w)
		started := false
		r, err := build(ctx, src, catalog, opts, func(l *Line) error {
			if !started {
				started = true
				if err := j.begin(opts.From, opts.To); err != nil {
					return err
				}
			}
			return j.line(l)
		})
		if err != nil {
			return nil, err
		}
		if !started {
			if err := j.begin(r.From, r.To); err != nil {
				return nil, err
			}
		}
		return r, j.end(r)
	case FormatHTML:
		r, err := build(ctx, src, catalog, opts, func(*Line) error { return nil })
		if err != nil {
			return nil, err
		}
		return r, r.WriteHTML(w)
	}
	return nil, fmt.Errorf("unknown report format %q", f)
}
