// Package bill imports KooGallery's console exports into the SDR ledger and compares them with it (DESIGN.md §4
// step 10, spec §6): a bill detail (Settlement Management > Bill Management) or an SDR Management export, as CSV
// with a header row whose column names are configured (config reconcile.bill_columns).
//
// Import reads and checks the whole file before it changes anything: a malformed file is refused with the line
// and the reason, and the ledger is left as it was. The changes of a good file are then applied in one
// transaction:
//   - a line with a normal status settles its SDR: ACCEPTED -> BILLED;
//   - a line with an abnormal status (reconcile.abnormal_statuses) means KooGallery refused the SDR after taking
//     it: ACCEPTED -> ASYNC_REJECTED, and the SDR's next revision is built (same record, the metering_sn of
//     revision+1) as PENDING, so the push re-reports it.
//
// Only ACCEPTED SDRs move, and each move is final, so importing a file again, or another export listing the same
// records, changes nothing (the import itself is recorded once per file content, in bill_imports). A line whose
// SDR the push has not settled yet (SENT after a lost answer) is matched but left to the push; importing the file
// again once the push has confirmed it settles it then. Every import reports its comparison: lines matching no
// SDR, ACCEPTED or BILLED SDRs of the period missing from the file, and amounts that differ beyond the tolerance,
// each also compared rounded to 2 and 3 places since KooGallery publishes no rounding rule.
//
// A BILLED SDR is never re-reported, even if a later export calls it abnormal: a billed record cannot be reversed
// (spec §2), and sending it again could only bill it twice.
//
// Import does not take the push lease. It writes only SDRs in ACCEPTED (a state the push never leaves) and inserts
// new PENDING revisions that no push can have built (the push builds revision 0 only, of instance-hours without
// any SDR), while every push write is conditional on PENDING or SENT; the two cannot overwrite each other, and
// SQLite serialises their transactions.
package bill
