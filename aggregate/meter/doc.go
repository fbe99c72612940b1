// Package meter owns the meter definitions of DESIGN.md §3: which event type feeds which KooGallery billing factor,
// how its events are aggregated (SUM, COUNT, MAX, UNIQUE_COUNT) and where the value sits in the event's data.
//
// It guarantees that every value it hands out is exact: quantities are parsed into shopspring decimals with at
// most 28 integer and 10 fractional digits (DESIGN.md §4 step 2), never through float64, and that the same rule
// applies wherever a quantity enters meterd (HTTP ingest, Kafka collectors, both stores).
package meter
