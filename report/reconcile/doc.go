// Package reconcile builds the finance reconciliation report (DESIGN.md §4 invariant, §5, §5a): one line per
// closed instance-hour (usage counted, carries, late usage carried in and from which hours, the SDR pushed, its
// state and expected amount), totals per instance, SKU and currency, the invariant of DESIGN.md §4 checked per
// instance and meter, and the discrepancy sections (rejected and expired records, late usage written off,
// unmatched usage, SDRs that missed their deadline, and an imported bill's differences).
//
// It only reads: through the narrow Source port, which the SQLite store implements, so a report runs while
// `meterd serve` writes to the same store. Lines are produced instance by instance (each instance's closed hours
// and SDRs are read, checked and released before the next), and Export streams them to CSV or JSON as they are
// produced, so a report over months holds only the per-instance working set, the totals and the discrepancies.
//
// Amounts stay exact; the 2- and 3-place roundings beside them are for comparison with KooGallery's bill, which
// publishes no rounding rule.
package reconcile
