package sqlite

import (
	"database/sql/driver"
	"fmt"
	"strconv"
	"sync"

	"github.com/shopspring/decimal"
	"modernc.org/sqlite"
)

// registerDecimalFunctions adds decimal_sum(text) and decimal_max(text) to every connection the driver opens.
// SQLite's own SUM and MAX would add or compare the TEXT values as 64-bit floats (0.1 + 0.2 != 0.3, 18 digits
// lost); these aggregate exact decimals. The driver keeps one registry per process, hence the Once.
var registerDecimalFunctions = sync.OnceValue(func() error {
	if err := sqlite.RegisterFunction("decimal_sum", &sqlite.FunctionImpl{NArgs: 1, Deterministic: true,
		MakeAggregate: func(sqlite.FunctionContext) (sqlite.AggregateFunction, error) { return &decimalAgg{}, nil }}); err != nil {
		return fmt.Errorf("register decimal_sum: %w", err)
	}
	if err := sqlite.RegisterFunction("decimal_max", &sqlite.FunctionImpl{NArgs: 1, Deterministic: true,
		MakeAggregate: func(sqlite.FunctionContext) (sqlite.AggregateFunction, error) { return &decimalAgg{max: true}, nil }}); err != nil {
		return fmt.Errorf("register decimal_max: %w", err)
	}
	return nil
})

// decimalAgg is one evaluation of decimal_sum or decimal_max. NULLs are skipped, as SQL aggregates do.
type decimalAgg struct {
	max  bool
	seen bool
	acc  decimal.Decimal
}

func (a *decimalAgg) Step(_ *sqlite.FunctionContext, args []driver.Value) error {
	s, ok, err := argText(args[0])
	if err != nil || !ok {
		return err
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return fmt.Errorf("decimal aggregate: %q: %w", s, err)
	}
	switch {
	case !a.seen:
		a.acc = d
	case a.max:
		if d.GreaterThan(a.acc) {
			a.acc = d
		}
	default:
		a.acc = a.acc.Add(d)
	}
	a.seen = true
	return nil
}

func (a *decimalAgg) WindowInverse(*sqlite.FunctionContext, []driver.Value) error {
	return fmt.Errorf("decimal aggregates are not window functions")
}

func (a *decimalAgg) WindowValue(*sqlite.FunctionContext) (driver.Value, error) {
	if !a.seen {
		return nil, nil
	}
	return a.acc.String(), nil
}

func (a *decimalAgg) Final(*sqlite.FunctionContext) {}

// argText is the text of a value handed to an aggregate; ok is false for NULL, which aggregates skip. Values are
// stored as text; an integer is accepted as its decimal text.
func argText(v driver.Value) (s string, ok bool, err error) {
	switch v := v.(type) {
	case nil:
		return "", false, nil
	case string:
		return v, true, nil
	case []byte:
		return string(v), true, nil
	case int64:
		return strconv.FormatInt(v, 10), true, nil
	default:
		return "", false, fmt.Errorf("decimal aggregate: value of type %T is not decimal text", v)
	}
}
