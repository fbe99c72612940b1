package pricing

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrUnknownSKU is wrapped by Catalog.Plan when no plan names the SKU.
var ErrUnknownSKU = errors.New("no plan for this sku")

// ErrNotInEffect is wrapped by Catalog.Plan when the SKU has plans but none is in effect yet at the instant asked.
var ErrNotInEffect = errors.New("no version of the plan in effect yet")

// Catalog holds every version of every plan, validated as a whole. It is immutable once built and safe for
// concurrent use.
type Catalog struct {
	versions map[string][]*Plan // by SKU, ascending EffectiveFrom, "always" first
	skus     []string           // sorted
}

// NewCatalog validates every spec and builds the catalog. Every problem is reported at once (errors.Join), each
// prefixed with its path built from pathPrefix, e.g. "plans[2].brackets[1].up_to: must be greater than 3";
// pathPrefix is "plans" when called from the config loader. It never half-loads: on any problem the catalog is
// nil. Besides each spec on its own, it checks the versions of a SKU together: no two may take effect at the
// same instant, and all must price the same meter, since an instance's meter and SKU must agree whichever
// version is in effect.
func NewCatalog(specs []PlanSpec, pathPrefix string) (*Catalog, error) {
	return newCatalog(specs, pathPrefix, nil)
}

// newCatalog is NewCatalog leaving out the specs in skip, which LoadPlans has already found structurally broken:
// their problems are reported, so the catalog is never built, but their half-decoded fields would only add
// misleading ones.
func newCatalog(specs []PlanSpec, pathPrefix string, skip map[int]bool) (*Catalog, error) {
	var probs problems
	c := &Catalog{versions: make(map[string][]*Plan)}

	type first struct {
		index int
		meter string
	}
	seen := make(map[string]first) // the first spec naming a meter for each SKU, to cite in problems
	type version struct {
		sku  string
		from time.Time
	}
	versionAt := make(map[version]int)

	for i, s := range specs {
		if skip[i] {
			continue
		}
		path := fmt.Sprintf("%s[%d]", pathPrefix, i)
		p := buildPlan(s, path, &probs)

		if s.SKU != "" && s.Meter != "" { // a missing sku or meter is reported on its own
			if f, ok := seen[s.SKU]; !ok {
				seen[s.SKU] = first{index: i, meter: s.Meter}
			} else if s.Meter != f.meter {
				probs.add(path+".meter", "%q differs from meter %q of sku %q at %s[%d] (all versions of a sku price one meter)",
					s.Meter, f.meter, s.SKU, pathPrefix, f.index)
			}
		}
		if p == nil {
			continue
		}
		v := version{sku: p.SKU, from: p.EffectiveFrom}
		if j, dup := versionAt[v]; dup {
			when := "without effective_from"
			if !p.EffectiveFrom.IsZero() {
				when = "effective from " + p.EffectiveFrom.Format(time.RFC3339)
			}
			probs.add(path+".effective_from", "sku %q already has a version %s at %s[%d]", p.SKU, when, pathPrefix, j)
			continue
		}
		versionAt[v] = i
		c.versions[p.SKU] = append(c.versions[p.SKU], p)
	}
	if err := probs.err(); err != nil {
		return nil, err
	}

	for sku, vs := range c.versions {
		slices.SortFunc(vs, func(a, b *Plan) int { return compareFrom(a.EffectiveFrom, b.EffectiveFrom) })
		for i := range len(vs) - 1 {
			vs[i].EffectiveUntil = vs[i+1].EffectiveFrom
		}
		c.skus = append(c.skus, sku)
	}
	slices.Sort(c.skus)
	return c, nil
}

// compareFrom orders effective_from values with zero ("always") before every instant, even one before year 1.
func compareFrom(a, b time.Time) int {
	switch {
	case a.IsZero() && b.IsZero():
		return 0
	case a.IsZero():
		return -1
	case b.IsZero():
		return 1
	}
	return a.Compare(b)
}

// Plan returns the version of sku in effect at the instant at: the one with the latest EffectiveFrom <= at.
// The pipeline asks with the start of the hour being priced. The error wraps ErrUnknownSKU or ErrNotInEffect.
func (c *Catalog) Plan(sku string, at time.Time) (*Plan, error) {
	vs, ok := c.versions[sku]
	if !ok {
		return nil, fmt.Errorf("sku %q: %w", sku, ErrUnknownSKU)
	}
	// Index of the first version that takes effect after at; the one before it is in effect.
	i, _ := slices.BinarySearchFunc(vs, at, func(p *Plan, at time.Time) int {
		if p.EffectiveFrom.IsZero() || !p.EffectiveFrom.After(at) {
			return -1
		}
		return 1
	})
	if i == 0 {
		return nil, fmt.Errorf("sku %q at %s: %w (the first takes effect at %s)",
			sku, at.UTC().Format(time.RFC3339), ErrNotInEffect, vs[0].EffectiveFrom.Format(time.RFC3339))
	}
	return vs[i-1], nil
}

// SKUs returns the SKUs that have plans, sorted.
func (c *Catalog) SKUs() []string {
	return slices.Clone(c.skus)
}

// Versions returns the versions of sku in the order they take effect (a version without effective_from first),
// or nil for an unknown SKU. The slice is the caller's; the Plans are shared and must not be modified.
func (c *Catalog) Versions(sku string) []*Plan {
	return slices.Clone(c.versions[sku])
}
