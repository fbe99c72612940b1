// Package aggregate turns stored events into the final usage of each instance-hour: the number meterd bills
// (DESIGN.md §4 steps 3-6).
//
// Guarantees:
//   - Membership by ingest sequence, not wall clock: Close(H) records a snapshot S of the store's ingest sequence;
//     an event is part of H's total only if its time is in [H, H+1h) and its sequence is <= S. An event stored
//     after the snapshot is late usage, even when its time is inside H.
//   - Close is idempotent: closing a closed hour returns what was recorded, and a close that fails leaves nothing
//     half-written (the store commits the rows and the "closed" marker together, the marker last).
//   - Sums are exact decimals, computed by the store (never a float SUM). usage_value of additive meters (SUM,
//     COUNT) = quantity x unit_scale + carry-in, cut down to 4 decimals; the cut remainder is carried to the
//     instance's next hour and written off explicitly at release. MAX and UNIQUE_COUNT are rounded half-up, never
//     carried, and their late usage is dropped.
//   - Nothing is silent: late usage (carried or dropped), unmatched usage (held, attached or written off after 21
//     days) and release remainders are recorded and listed.
package aggregate
