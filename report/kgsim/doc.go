// Package kgsim is a strict, in-process simulator of KooGallery's usage push API (spec/koogallery.md §1-3),
// for tests and for `meterd kgsim` (DESIGN.md §5). It is an http.Handler.
//
// It verifies what the real API is documented to verify, and refuses in the documented way, so that a client
// that passes here is unlikely to surprise anyone in production: POST with Content-Type application/json; the ts,
// nonce and signature headers (fresh ts, nonce never reused within the freshness window, HMAC-SHA256 over the
// exact body received); the body {"usage_records":[...]} with known keys only, in natural (lexicographic) order,
// 1..1000 records, every field's type, length and layout; a positive usage_value with at most 4 decimals, at most
// 99,999,999.9999. It then applies the per-record business rules (repeated metering_sn 005, repeated period 010,
// time range 011, frozen instance 013), bills the other records, and remembers what it billed (Billed, GET
// /_sim/records), so a test can prove that nothing was billed twice.
//
// Choices where the spec is silent (all answers carry error_code with the "MKT." prefix):
//
//	missing or malformed ts, nonce or signature header          0150  HTTP 401  "unauthorized: ..."
//	ts more than MaxSkew (default 5m) from the simulator's clock 0154  HTTP 401  "request expired: ..."
//	signature mismatch, or record keys not in natural order     0102  HTTP 400  "signature check failed: ..."
//	nonce seen before within the freshness window               0154  HTTP 401  "nonce reused: ..."
//	Content-Type, JSON, schema, field or value invalid          0100  HTTP 400  (nothing processed)
//	more than 1000 records                                      9003  HTTP 500  (nothing processed)
//	a begin_time older than 21 days                             9004  HTTP 500  (nothing processed)
//	an unknown instance (when Config.Instances is not nil)      9001  HTTP 500  (nothing processed)
//	otherwise                                                   0000  HTTP 200  with abnormal_usage_data
//	                                                                             [{"metering_sn","error_code","error_msg"}]
//
// Key order is checked because the docs say the body is signed "after natural sorting" (spec §1, inferred): a
// server that sorts before verifying would refuse an unsorted body's signature. A call-level refusal processes
// no record at all, which is what lets a client bisect a batch to find the bad record. Only billed records
// occupy a metering_sn or a period: a record refused with 011 and sent again is refused with 011 again.
//
// Faults (Faults) are injected on demand: a queue of forced answers, random 5xx, answers lost after processing,
// requests held past the client's timeout without processing, stalls and latency, all drawn from a seeded
// generator so a test is repeatable.
package kgsim
