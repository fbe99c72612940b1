// Package stream is the Kafka side of scale-out ingest (DESIGN.md §1, §6): a Producer that the HTTP ingest writes
// validated events to, the topic administration that makes the events and dead-letter topics fit for billing, and
// Collectors that consume the events topic in a consumer group and store batches through an ingest.Sink; beside
// them, Positions (the collectors' committed offsets: the hour close's snapshot and watermark) and the Election
// of the one active scheduler.
//
// Guarantees: the Producer returns only after every replica in sync acknowledged (acks=all). A Collector commits a
// message's offset only after the Sink made it durable, so delivery to the store is at least once: repeats (a
// producer retry, a redelivery after a crash or rebalance) are removed by the Sink's dedup on (source, id). An
// event's age is judged against its message timestamp, never a collector's clock, so a collector outage does not
// turn acknowledged events into rejects. That timestamp is the one the Producer sets (the time the API judged the
// event): kafka-go returns the producer's timestamp even on LogAppendTime topics.
package stream
