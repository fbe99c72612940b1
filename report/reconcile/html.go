package reconcile

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/pricing"
)

//go:embed report.html.tmpl
var pageSource string

// page is parsed once; html/template escapes every value put into it (instance ids, reasons, file names).
var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"ts":     func(t time.Time) string { return ts(t) },
	"tsNano": func(t time.Time) string { return tsNano(t) },
	"opt": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return tsNano(t)
	},
	"dec":  func(d decimal.Decimal) string { return d.String() },
	"r2":   func(d decimal.Decimal) string { return pricing.Format(d, 2) },
	"late": func(d time.Duration) string { return d.Round(time.Second).String() },
}).Parse(pageSource))

// WriteHTML writes the report as one self-contained HTML page (inline CSS and SVG, no script, no external
// reference) that finance can open offline: summary figures, the chart of hourly usage pushed against the
// deadline, the invariant, the totals and the discrepancy tables. It lists no lines: the CSV and JSON forms do.
func (r *Report) WriteHTML(w io.Writer) error {
	v := htmlView{Report: r, Chart: newChart(r)}
	for _, s := range sortedStates(r.States) {
		v.StateCounts = append(v.StateCounts, stateCount{State: s, Lines: r.States[s]})
	}
	return page.Execute(w, v)
}

type htmlView struct {
	*Report
	Chart       chart
	StateCounts []stateCount
}

type stateCount struct {
	State string
	Lines int
}

func sortedStates(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// The chart: per hour of the window, a stacked bar of the usage pushed (summed over instances, in KooGallery
// units) by outcome, and below it how long after the end of the hour its slowest SDR was accepted, against the
// deadline drawn across.
const (
	chartWidth   = 960.0
	chartLeft    = 64.0
	chartRight   = 16.0
	usageTop     = 24.0
	usageHeight  = 170.0
	delayTop     = 240.0
	delayHeight  = 120.0
	chartHeight  = 400.0
	maxChartBars = 24 * 93
)

// chart is the SVG's geometry, computed here so that the template only places numbers.
type chart struct {
	Width, Height                              float64
	Hours                                      int
	Rects                                      []rect
	Ticks                                      []tick
	HasDeadline                                bool
	DeadlineY, DeadlineLabel                   string
	UsageMax, DelayMax                         string
	Left, Right                                string
	UsageTopY, UsageBase, DelayTopY, DelayBase string
	Truncated, Empty                           bool
}

type rect struct {
	X, Y, W, H string
	Class      string
	Title      string
}

type tick struct {
	X, Y  string
	Label string
}

func f1(x float64) string { return fmt.Sprintf("%.1f", x) }

func newChart(r *Report) chart {
	c := chart{Width: chartWidth, Height: chartHeight, Left: f1(chartLeft), Right: f1(chartWidth - chartRight),
		UsageBase: f1(usageTop + usageHeight), DelayBase: f1(delayTop + delayHeight), UsageTopY: f1(usageTop),
		DelayTopY: f1(delayTop)}
	from, to := r.From.Truncate(time.Hour), r.To
	n := int(to.Sub(from).Hours())
	if to.Sub(from)%time.Hour != 0 {
		n++
	}
	if n > maxChartBars { // the chart shows the last maxChartBars hours; the tables have everything
		from = from.Add(time.Duration(n-maxChartBars) * time.Hour)
		n, c.Truncated = maxChartBars, true
	}
	c.Hours = n
	if n <= 0 || len(r.Hourly) == 0 {
		c.Empty = true
		return c
	}
	plot := chartWidth - chartLeft - chartRight
	bw := plot / float64(n)
	usageMax, delayMax, deadline := 0.0, 0.0, time.Duration(0)
	for _, p := range r.Hourly {
		total := p.OnTime.Add(p.LateAccepted).Add(p.Waiting).Add(p.Refused).InexactFloat64()
		usageMax = max(usageMax, total)
		delayMax = max(delayMax, p.SlowestAccepted.Minutes(), p.Waited.Minutes())
		deadline = max(deadline, p.Deadline)
	}
	delayMax = max(delayMax, deadline.Minutes()*1.25, 1)
	if usageMax == 0 {
		usageMax = 1
	}
	c.UsageMax, c.DelayMax = trimFloat(usageMax), trimFloat(delayMax)
	for _, p := range r.Hourly {
		i := int(p.Hour.Sub(from) / time.Hour)
		if i < 0 || i >= n {
			continue
		}
		x := chartLeft + float64(i)*bw + bw*0.1
		w := max(bw*0.8, 0.5)
		y := usageTop + usageHeight
		hour := ts(p.Hour)
		for _, part := range []struct {
			v     decimal.Decimal
			class string
			what  string
		}{{p.OnTime, "ontime", "accepted on time"}, {p.LateAccepted, "late", "accepted late"},
			{p.Waiting, "waiting", "not accepted yet"}, {p.Refused, "refused", "rejected or expired"}} {
			if part.v.Sign() <= 0 {
				continue
			}
			h := part.v.InexactFloat64() / usageMax * usageHeight
			y -= h
			c.Rects = append(c.Rects, rect{X: f1(x), Y: f1(y), W: f1(w), H: f1(max(h, 0.5)), Class: part.class,
				Title: fmt.Sprintf("%s: %s usage %s (%d SDRs)", hour, part.what, part.v, p.SDRs)})
		}
		// Below: the wait of records still not accepted (grey, behind), then the slowest acceptance, green when
		// by the deadline, orange after it.
		delay := func(d time.Duration, class, title string) {
			dh := d.Minutes() / delayMax * delayHeight
			c.Rects = append(c.Rects, rect{X: f1(x), Y: f1(delayTop + delayHeight - dh), W: f1(w), H: f1(max(dh, 0.5)),
				Class: class, Title: title})
		}
		if p.Waited > 0 {
			delay(p.Waited, "waiting", fmt.Sprintf("%s: records not accepted yet, waiting %s after the hour (deadline %s)",
				hour, p.Waited.Round(time.Second), p.Deadline))
		}
		if p.SlowestAccepted > 0 {
			class := "ontime"
			if p.SlowestAccepted > p.Deadline {
				class = "late"
			}
			delay(p.SlowestAccepted, class, fmt.Sprintf("%s: slowest acceptance %s after the hour (deadline %s)",
				hour, p.SlowestAccepted.Round(time.Second), p.Deadline))
		}
	}
	if deadline > 0 {
		c.HasDeadline = true
		c.DeadlineY = f1(delayTop + delayHeight - deadline.Minutes()/delayMax*delayHeight)
		c.DeadlineLabel = fmt.Sprintf("deadline %s", deadline)
	}
	for _, i := range slices.Compact([]int{0, n / 2, n - 1}) {
		c.Ticks = append(c.Ticks, tick{X: f1(chartLeft + float64(i)*bw + bw/2), Y: f1(delayTop + delayHeight + 16),
			Label: from.Add(time.Duration(i) * time.Hour).Format("2006-01-02 15:04Z")})
	}
	return c
}

func trimFloat(x float64) string { return decimal.NewFromFloat(x).Round(2).String() }
