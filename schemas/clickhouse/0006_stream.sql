-- Snapshots of Kafka positions (DESIGN.md §4 step 4), for stores fed by collectors. There the ingest sequence of an
-- event is its position in the events topic, seq = partition << 40 | offset, and an hour close snapshots the
-- offsets below which every message is stored (the collectors' committed offsets: they commit after the insert).
-- The snapshot number the closer records is a handle to one row per partition here; "seq in (A, B]" reads as
-- "offset in [A[partition], B[partition])". Snapshots are written once and never change; a partition missing from a
-- snapshot is at offset 0 there.
CREATE TABLE IF NOT EXISTS stream_snapshots (
    snapshot    Int64,
    partition   Int32,
    next_offset Int64,
    taken_ms    Int64
) ENGINE = MergeTree
ORDER BY (snapshot, partition);
