// Package report owns the push of usage to KooGallery (DESIGN.md §4 steps 7-11): the SDR ledger, the push loop
// with its error policy, the single-scheduler lease, and (later) reconciliation. Sub-packages: koogallery (the
// signed client), kgsim (the strict simulator).
//
// Guarantees:
//   - One SDR per instance-hour, every field a pure function of the closed data (record_time = H+1h+close_delay,
//     metering_sn = f(instance, hour, revision)), its exact bytes stored and resent identically, so a retry, a
//     rebuild after a crash or a scheduler handover cannot bill twice.
//   - Write-ahead: before a batch is sent, each of its SDRs counts one attempt of unknown outcome; a definite answer
//     removes it. A later 005/010 for an SDR with an attempt of unknown outcome means KooGallery already took it
//     (ACCEPTED); without one it is a collision (a restored store, a second deployment): REJECTED and paged.
//   - Exactly one scheduler pushes: a lease with an epoch in the store, and every ledger write checks the epoch in
//     its own transaction, so a scheduler that lost the lease cannot overwrite the newer one's decisions.
package report
