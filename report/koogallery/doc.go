// Package koogallery is the wire layer to Huawei Cloud KooGallery's pay-per-use usage API (spec/koogallery.md §1):
// it encodes usage records (SDRs) canonically, signs and sends one batch per call, parses the answer, and says
// what the pusher must do with it (Classify). It keeps no state about records: the ledger, retries, bisection and
// deadlines belong to the pusher.
//
// Guarantees:
//   - EncodeRecord is a pure function: the same Record gives the same bytes, so a record stored in the ledger and
//     resent after a crash is byte-for-byte the record first sent (KooGallery deduplicates on metering_sn and on
//     the period, never on content, so a resend must be identical to be harmless).
//   - Push never retries on its own and never resends a body: every call is one attempt with a fresh ts and nonce.
//     A call whose outcome is unknown (network error, timeout, lost answer) returns a *TransportError, never a
//     guess.
//   - The interconnection key never appears in an error, a log line or a metric.
package koogallery
