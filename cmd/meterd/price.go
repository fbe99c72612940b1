package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/spf13/cobra"

	"github.com/meterd/meterd/aggregate/meter"
	"github.com/meterd/meterd/pricing"
)

// priceLine is one bracket of a quote; decimals are plain strings (DESIGN.md §5a), "to" is null for the open
// bracket.
type priceLine struct {
	From      string  `json:"from"`
	To        *string `json:"to"`
	Quantity  string  `json:"quantity"`
	UnitPrice string  `json:"unit_price"`
	Amount    string  `json:"amount"`
}

// priceOutput is the JSON contract of `meterd price --output json` (DESIGN.md §5), extended with the display
// rounding and the plan version used.
type priceOutput struct {
	SKU           string      `json:"sku"`
	Mode          string      `json:"mode"`
	Usage         string      `json:"usage"`
	Cumulative    string      `json:"cumulative"`
	Amount        string      `json:"amount"`
	Currency      string      `json:"currency"`
	Lines         []priceLine `json:"lines"`
	AmountRounded string      `json:"amount_rounded"`
	Places        int         `json:"places"`
	EffectiveFrom *string     `json:"effective_from"`
}

func newPriceCmd() *cobra.Command {
	var configPath, sku, usageText, cumText, atText, output string
	var places int
	cmd := &cobra.Command{
		Use:   "price --config FILE --sku SKU --usage N [--cumulative C]",
		Short: "Price a usage value with the plan of a SKU, as KooGallery would",
		Long: `Price a usage value (in KooGallery units, after unit_scale) with the plan version of SKU in effect at --at.
For step plans, --cumulative is the usage already accumulated earlier in the same accumulation period.
The amount is exact; amount_rounded is rounded half-up to --places (default pricing.display_places).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd, configPath, false)
			if err != nil {
				return err
			}
			usage, err := meter.ParseQuantity(usageText)
			if err != nil {
				return usagef("--usage: %v", err)
			}
			cum := decimal.Zero
			if cumText != "" {
				if cum, err = meter.ParseQuantity(cumText); err != nil {
					return usagef("--cumulative: %v", err)
				}
			}
			at := time.Now().UTC()
			if atText != "" {
				if at, err = parseTimeFlag(atText); err != nil {
					return usagef("--at: %v", err)
				}
			}
			if !cmd.Flags().Changed("places") {
				places = cfg.Pricing.DisplayPlaces
			}
			if places < 0 || places > 10 {
				return usagef("--places: %d must be from 0 to 10", places)
			}
			plan, err := cfg.Catalog().Plan(sku, at)
			if err != nil {
				return usagef("--sku: %v", err)
			}
			q, err := plan.Price(usage, cum)
			if err != nil {
				return usagef("price: %v", err)
			}
			out := priceOutput{SKU: plan.SKU, Mode: string(plan.Mode), Usage: usage.String(), Cumulative: cum.String(),
				Amount: q.Amount.String(), Currency: plan.Currency, Lines: []priceLine{},
				AmountRounded: pricing.Round(q.Amount, int32(places)).StringFixed(int32(places)), Places: places}
			if !plan.EffectiveFrom.IsZero() {
				ef := plan.EffectiveFrom.UTC().Format(time.RFC3339)
				out.EffectiveFrom = &ef
			}
			for _, l := range q.Lines {
				pl := priceLine{From: l.From.String(), Quantity: l.Quantity.String(), UnitPrice: l.UnitPrice.String(), Amount: l.Amount.String()}
				if !l.ToOpen {
					to := l.To.String()
					pl.To = &to
				}
				out.Lines = append(out.Lines, pl)
			}
			w := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(w)
				return enc.Encode(out)
			case "text":
				fmt.Fprintf(w, "%s (%s): usage %s, cumulative %s -> %s %s (%s rounded to %d places)\n", out.SKU, out.Mode,
					out.Usage, out.Cumulative, out.Amount, out.Currency, out.AmountRounded, places)
				for _, l := range out.Lines {
					to := "open"
					if l.To != nil {
						to = *l.To
					}
					fmt.Fprintf(w, "  (%s, %s]: %s x %s = %s\n", l.From, to, l.Quantity, l.UnitPrice, l.Amount)
				}
				return nil
			default:
				return usagef("--output: %q must be text or json", output)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "config file with the plans (required)")
	f.StringVar(&sku, "sku", "", "the plan's SKU (required)")
	f.StringVar(&usageText, "usage", "", "usage value in KooGallery units (required)")
	f.StringVar(&cumText, "cumulative", "", "step plans: usage accumulated earlier in the same period (default 0)")
	f.StringVar(&atText, "at", "", "time whose plan version applies, RFC 3339 (default now)")
	f.StringVar(&output, "output", "text", "text or json")
	f.IntVar(&places, "places", 2, "display rounding places (half-up); default pricing.display_places")
	for _, r := range []string{"config", "sku", "usage"} {
		_ = cmd.MarkFlagRequired(r)
	}
	return cmd
}
