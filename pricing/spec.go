package pricing

// PlanSpec is one plan as written in the YAML config (DESIGN.md §3, schemas/plan.schema.json). Every value is kept
// as the text written, so that validation can report the exact path and reason for a bad one; NewCatalog turns
// specs into Plans. yaml.v3 stores the literal text of an unquoted scalar in a string field, so `up_to: 3`,
// `unit_price: 0.30` and an unquoted `effective_from: 2026-11-01T00:00:00Z` arrive exactly as written.
type PlanSpec struct {
	SKU           string        `yaml:"sku" json:"sku"`
	EffectiveFrom string        `yaml:"effective_from" json:"effective_from"` // RFC 3339 on a whole UTC hour; empty = always
	Meter         string        `yaml:"meter" json:"meter"`
	Currency      string        `yaml:"currency" json:"currency"`         // ISO 4217, e.g. CNY or USD
	UnitScale     string        `yaml:"unit_scale" json:"unit_scale"`     // default "1"; must be > 0
	Mode          string        `yaml:"mode" json:"mode"`                 // fixed | step | tier
	Accumulation  string        `yaml:"accumulation" json:"accumulation"` // step only: hour | day | month
	Timezone      string        `yaml:"timezone" json:"timezone"`         // step only; IANA name, required for day and month
	UnitPrice     string        `yaml:"unit_price" json:"unit_price"`     // fixed only
	Brackets      []BracketSpec `yaml:"brackets" json:"brackets"`         // step and tier
}

// BracketSpec is one bracket as written in the config: an upper bound (empty for the last, open-ended bracket)
// and the unit price of usage in the bracket.
type BracketSpec struct {
	UpTo      string `yaml:"up_to" json:"up_to"`
	UnitPrice string `yaml:"unit_price" json:"unit_price"`
}
