package pricing

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// problems collects every validation problem of a load, each as "path: reason", so that a bad config is fixed
// in one round instead of one error per restart.
type problems struct {
	errs []error
}

func (p *problems) add(path, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

func (p *problems) err() error { return errors.Join(p.errs...) }

// buildPlan validates one spec on its own (the checks across versions of a SKU are in NewCatalog) and returns
// the plan, or nil when it has any problem.
func buildPlan(s PlanSpec, path string, probs *problems) *Plan {
	before := len(probs.errs)
	p := &Plan{SKU: s.SKU, Meter: s.Meter, Currency: s.Currency, Location: time.UTC}

	checkName(s.SKU, path+".sku", probs)
	if s.EffectiveFrom != "" {
		t, err := time.Parse(time.RFC3339, s.EffectiveFrom)
		switch {
		case err != nil:
			probs.add(path+".effective_from", "%q is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)", s.EffectiveFrom)
		case !t.Equal(t.Truncate(time.Hour)):
			// Records cover whole UTC hours and each is priced by the version in effect at its start, so a
			// version starting mid-hour would take over usage that the previous version had already priced.
			probs.add(path+".effective_from", "%s is not on a whole UTC hour (usage records cover whole hours)", s.EffectiveFrom)
		default:
			p.EffectiveFrom = t.UTC()
		}
	}
	checkName(s.Meter, path+".meter", probs)
	if !isCurrencyCode(s.Currency) {
		if s.Currency == "" {
			probs.add(path+".currency", "required (an ISO 4217 code such as CNY or USD)")
		} else {
			probs.add(path+".currency", "%q is not an uppercase 3-letter ISO 4217 code such as CNY or USD", s.Currency)
		}
	}
	p.UnitScale = decimal.NewFromInt(1)
	if s.UnitScale != "" {
		if d, ok := parseField(s.UnitScale, path+".unit_scale", probs); ok {
			if d.Sign() <= 0 {
				probs.add(path+".unit_scale", "must be greater than 0")
			}
			p.UnitScale = d
		}
	}

	mode := Mode(s.Mode)
	switch mode {
	case ModeFixed, ModeStep, ModeTier:
		p.Mode = mode
	case "":
		probs.add(path+".mode", "required (fixed, step or tier)")
	default:
		probs.add(path+".mode", "unknown mode %q (want fixed, step or tier)", s.Mode)
	}
	known := p.Mode != ""

	buildAccumulation(s, p, path, known, probs)

	// Prices: unit_price for fixed, brackets for step and tier, never both. With an unknown mode whichever is
	// present is still checked, so that its problems are not left for the next round.
	switch {
	case p.Mode == ModeFixed:
		if s.UnitPrice == "" {
			probs.add(path+".unit_price", "required for mode fixed")
		}
		if len(s.Brackets) > 0 {
			probs.add(path+".brackets", "not allowed with mode fixed (a fixed plan has one unit_price)")
		}
	case known: // step or tier
		if s.UnitPrice != "" {
			probs.add(path+".unit_price", "not allowed with mode %s (prices go in brackets)", p.Mode)
		}
		if len(s.Brackets) == 0 {
			probs.add(path+".brackets", "required for mode %s (ascending up_to, the last bracket without up_to)", p.Mode)
		}
	}
	if s.UnitPrice != "" && (p.Mode == ModeFixed || !known) {
		if d, ok := parseField(s.UnitPrice, path+".unit_price", probs); ok {
			if d.Sign() < 0 {
				probs.add(path+".unit_price", "must not be negative")
			}
			p.UnitPrice = d
		}
	}
	if len(s.Brackets) > 0 && p.Mode != ModeFixed {
		p.Brackets = buildBrackets(s.Brackets, path+".brackets", probs)
	}

	if len(probs.errs) > before {
		return nil
	}
	p.fast = newFastPlan(p)
	return p
}

// buildAccumulation checks accumulation and timezone: both belong to step plans only, and day and month need a
// zone, because a calendar day in Asia/Shanghai and one in UTC are different periods and there is no safe default.
func buildAccumulation(s PlanSpec, p *Plan, path string, known bool, probs *problems) {
	acc := Accumulation(s.Accumulation)
	switch acc {
	case "":
		if p.Mode == ModeStep {
			probs.add(path+".accumulation", "required for mode step (hour, day or month)")
		}
	case AccumulationHour, AccumulationDay, AccumulationMonth:
		if known && p.Mode != ModeStep {
			probs.add(path+".accumulation", "only allowed with mode step (mode is %s)", p.Mode)
		}
	default:
		probs.add(path+".accumulation", "unknown accumulation %q (want hour, day or month)", s.Accumulation)
	}
	if p.Mode == ModeStep {
		p.Accumulation = acc
	}

	if s.Timezone == "" {
		if p.Mode == ModeStep && (acc == AccumulationDay || acc == AccumulationMonth) {
			probs.add(path+".timezone", "required for %s accumulation (an IANA name such as Asia/Shanghai)", acc)
		}
		return
	}
	if known && p.Mode != ModeStep {
		probs.add(path+".timezone", "only allowed with mode step (mode is %s)", p.Mode)
		return
	}
	if s.Timezone == "Local" {
		// time.LoadLocation accepts it, but it means whatever zone the machine happens to run in.
		probs.add(path+".timezone", `"Local" depends on the machine; name an IANA zone such as Asia/Shanghai`)
		return
	}
	loc, err := time.LoadLocation(s.Timezone)
	if err != nil {
		probs.add(path+".timezone", "unknown time zone %q (want an IANA name such as Asia/Shanghai)", s.Timezone)
		return
	}
	p.Location = loc
}

// buildBrackets checks the brackets of a step or tier plan: ascending upper bounds, every one > 0, only the last
// one open-ended, and prices >= 0 (a free first bracket is a legitimate offer).
func buildBrackets(specs []BracketSpec, path string, probs *problems) []Bracket {
	out := make([]Bracket, len(specs))
	openAt := -1
	var prev decimal.Decimal
	havePrev := false
	for i, b := range specs {
		bp := fmt.Sprintf("%s[%d]", path, i)
		if openAt >= 0 && i == openAt+1 {
			probs.add(bp, "follows the open-ended %s[%d] (only the last bracket may omit up_to)", path, openAt)
		}
		if b.UnitPrice == "" {
			probs.add(bp+".unit_price", "required")
		} else if d, ok := parseField(b.UnitPrice, bp+".unit_price", probs); ok {
			if d.Sign() < 0 {
				probs.add(bp+".unit_price", "must not be negative")
			}
			out[i].UnitPrice = d
		}
		if b.UpTo == "" {
			out[i].Open = true
			if openAt < 0 {
				openAt = i
			}
			continue
		}
		d, ok := parseField(b.UpTo, bp+".up_to", probs)
		if !ok {
			continue
		}
		out[i].UpTo = d
		switch {
		case d.Sign() <= 0:
			probs.add(bp+".up_to", "must be greater than 0")
		case havePrev && d.LessThanOrEqual(prev):
			probs.add(bp+".up_to", "must be greater than %s (brackets ascend strictly)", prev)
		}
		prev, havePrev = d, true
	}
	if last := len(specs) - 1; last >= 0 && specs[last].UpTo != "" {
		probs.add(fmt.Sprintf("%s[%d].up_to", path, last),
			"the last bracket must be open-ended (omit up_to, so that every usage has a price)")
	}
	return out
}

// parseField parses a decimal config value, reporting a problem at path when it is not one.
func parseField(s, path string, probs *problems) (decimal.Decimal, bool) {
	d, err := ParseDecimal(s)
	if err != nil {
		probs.add(path, "%v", err)
		return decimal.Decimal{}, false
	}
	return d, true
}

// checkName checks an identifier that is matched exactly elsewhere (a SKU against KooGallery's product id, a
// meter against the config's meters), where stray whitespace would silently match nothing.
func checkName(s, path string, probs *problems) {
	switch {
	case s == "":
		probs.add(path, "required")
	case strings.TrimSpace(s) != s:
		probs.add(path, "%q has leading or trailing whitespace", s)
	}
}

func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := range len(s) {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}
