package pricing

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestSchemaMatchesSpec keeps schemas/plan.schema.json and PlanSpec in step: the same keys, and the same
// required ones and enums as validation.
func TestSchemaMatchesSpec(t *testing.T) {
	var schema struct {
		Required   []string `json:"required"`
		Properties map[string]struct {
			Enum []string `json:"enum"`
		} `json:"properties"`
		Defs struct {
			Bracket struct {
				Required   []string                   `json:"required"`
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"bracket"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(readFile(t, "../schemas/plan.schema.json"), &schema); err != nil {
		t.Fatal(err)
	}
	keys := func(v any) []string {
		var out []string
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			out = append(out, strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0])
		}
		slices.Sort(out)
		return out
	}
	var props, bracketProps []string
	for k := range schema.Properties {
		props = append(props, k)
	}
	for k := range schema.Defs.Bracket.Properties {
		bracketProps = append(bracketProps, k)
	}
	slices.Sort(props)
	slices.Sort(bracketProps)
	if want := keys(PlanSpec{}); !slices.Equal(props, want) {
		t.Errorf("schema properties %v, PlanSpec keys %v", props, want)
	}
	if want := keys(BracketSpec{}); !slices.Equal(bracketProps, want) {
		t.Errorf("schema bracket properties %v, BracketSpec keys %v", bracketProps, want)
	}
	if got := schema.Required; !slices.Equal(got, []string{"sku", "meter", "currency", "mode"}) {
		t.Errorf("schema required %v", got)
	}
	if got := schema.Defs.Bracket.Required; !slices.Equal(got, []string{"unit_price"}) {
		t.Errorf("schema bracket required %v", got)
	}
	enums := map[string][]string{
		"mode":         {string(ModeFixed), string(ModeStep), string(ModeTier)},
		"accumulation": {string(AccumulationHour), string(AccumulationDay), string(AccumulationMonth)},
	}
	for key, want := range enums {
		if got := schema.Properties[key].Enum; !slices.Equal(got, want) {
			t.Errorf("schema %s enum %v, want %v", key, got, want)
		}
	}
}
