package bill

import (
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/meterd/meterd/config"
	"github.com/meterd/meterd/pricing"
	"github.com/meterd/meterd/report/koogallery"
)

// Columns are the header names of an export's columns, compared without regard to case or surrounding space. An
// empty name means the export has no such column. A row is matched by MeteringSN when it has one, else by
// InstanceID and period (Begin, End), so MeteringSN or those three must be present in the header; Usage and
// Amount must be present when named; Status may be absent (every line is then normal, as in a bill detail).
type Columns struct {
	MeteringSN, InstanceID, Begin, End, Usage, Amount, Status string
}

// DefaultColumns are the names config.Default gives (reconcile.bill_columns).
func DefaultColumns() Columns {
	return columnsFrom(config.Default().Reconcile.BillColumns)
}

func columnsFrom(c config.BillColumns) Columns {
	return Columns{MeteringSN: c.MeteringSN, InstanceID: c.InstanceID, Begin: c.BeginTime, End: c.EndTime,
		Usage: c.Usage, Amount: c.Amount, Status: c.Status}
}

// Options configure one Import.
type Options struct {
	// Columns names the export's columns; the zero Columns means DefaultColumns.
	Columns Columns
	// Tolerance is the largest |bill - ledger| amount difference not listed in Result.AmountDiffs; zero lists
	// every difference.
	Tolerance decimal.Decimal
	// AbnormalStatuses are the status values, compared without regard to case, of records KooGallery refused.
	AbnormalStatuses []string
	// Now is when the import happens, recorded with each SDR it settles; zero means time.Now().
	Now time.Time
	// From and To bound the hours [From, To) whose ACCEPTED and BILLED SDRs must be in the file
	// (Result.MissingInBill); a zero bound is taken from the file: the first and last hour it covers.
	From, To time.Time

	// valueAs is the usage_value form of a re-reported SDR whose stored body cannot tell (koogallery.usage_value_as).
	valueAs koogallery.ValueAs
}

// OptionsFromConfig returns the options that cfg's reconcile section (and koogallery.usage_value_as) give, with
// the time of the import. cfg must have passed Validate.
func OptionsFromConfig(cfg *config.Config, now time.Time) Options {
	r := cfg.Reconcile
	// Validate has checked the tolerance; an unreadable one here would be a caller that skipped it, and an exact
	// comparison is the safe reading.
	tol, err := pricing.ParseDecimal(strings.TrimSpace(r.AmountTolerance))
	if err != nil || tol.Sign() < 0 {
		tol = decimal.Zero
	}
	return Options{
		Columns:          columnsFrom(r.BillColumns),
		Tolerance:        tol,
		AbnormalStatuses: append([]string(nil), r.AbnormalStatuses...),
		Now:              now,
		valueAs:          koogallery.ValueAs(cfg.KooGallery.UsageValueAs),
	}
}
