-- The hour close (DESIGN.md §4 steps 4-6). ClickHouse has no transactions, so a close is made atomic by
-- visibility instead: every row a close writes carries its close_id, the hour_closes marker is written last, and
-- readers only see rows whose close_id is the one recorded by the first marker of their hour. Rows of a close that
-- crashed before its marker are invisible, and re-closing the hour writes a new set under a new close_id.
-- Decimals are Decimal(38, 10): exact, never a float.

CREATE TABLE IF NOT EXISTS hour_closes (
    hour_ms           Int64,
    close_id          Int64,
    snapshot_seq      Int64,
    prev_snapshot_seq Int64,
    closed_ms         Int64,
    forced            UInt8,
    rows_count        Int64
) ENGINE = MergeTree
ORDER BY (hour_ms, close_id);

CREATE TABLE IF NOT EXISTS usage_hours (
    close_id      Int64,
    instance_id   String,
    hour_ms       Int64,
    meter         String,
    aggregation   String,
    sku           String,
    begin_ms      Int64,
    end_ms        Int64,
    events        Int64,
    quantity      Decimal(38, 10),
    late_events   Int64,
    late_quantity Decimal(38, 10),
    unit_scale    Decimal(38, 10),
    carry_in      Decimal(38, 10),
    usage_value   Decimal(38, 10),
    carry_out     Decimal(38, 10)
) ENGINE = MergeTree
PARTITION BY intDiv(hour_ms, 2592000000)
ORDER BY (hour_ms, instance_id);

CREATE TABLE IF NOT EXISTS late_usage (
    close_id       Int64,
    ord            Int64,
    close_hour_ms  Int64,
    meter          String,
    subject        String,
    origin_hour_ms Int64,
    instance_id    String,
    events         Int64,
    quantity       Decimal(38, 10),
    action         String,
    reason         String
) ENGINE = MergeTree
ORDER BY (close_hour_ms, close_id, ord);

-- Unmatched usage: state changes append a row with a higher version (argMax by version per id on read).
CREATE TABLE IF NOT EXISTS unmatched_usage (
    id               Int64,
    version          Int64,
    close_id         Int64,
    meter            String,
    subject          String,
    hour_ms          Int64,
    from_ms          Int64,
    to_ms            Int64,
    seq_after        Int64,
    seq_upto         Int64,
    events           Int64,
    quantity         Decimal(38, 10),
    state            String,
    instance_id      String,
    found_hour_ms    Int64,
    resolved_hour_ms Int64,
    reason           String
) ENGINE = MergeTree
ORDER BY (id, version);

CREATE TABLE IF NOT EXISTS write_offs (
    close_id       Int64,
    ord            Int64,
    instance_id    String,
    meter          String,
    close_hour_ms  Int64,
    origin_hour_ms Int64,
    usage          Decimal(38, 10),
    kind           String,
    reason         String
) ENGINE = MergeTree
ORDER BY (close_hour_ms, close_id, ord);
