-- Raw usage events (DESIGN.md §2, §4 steps 1-2), ClickHouse flavour. SQL here runs on 18.16 and on current
-- releases: no DateTime64 (times are Unix milliseconds in Int64), no LowCardinality, TTL, CODEC.
-- Every statement is idempotent (IF NOT EXISTS), so re-running a migration after a crash is harmless.
--
-- Dedup never depends on merges: both tables are plain MergeTree (merges never collapse rows) and every reader
-- keeps the first stored copy of each (source, id), argMin by seq. The writer also skips keys it finds stored
-- (its pre-check), so repeats are rare; the read-time rule is what makes totals exact when one slips through
-- (a retried insert whose first attempt landed, two writers).
--
-- seq is the ingest sequence: assigned by the store's single writer, it only grows, and the hour close snapshots
-- it (events with seq <= snapshot belong to the hours they fall in). Gaps are normal.

-- One row per stored event: audit copy, dedup pre-check by key, conflict detection by content hash.
CREATE TABLE IF NOT EXISTS events (
    seq         Int64,
    source      String,
    id          String,
    type        String,
    subject     String,
    time_ms     Int64,
    hash        FixedString(32),
    raw         String,
    received_ms Int64
) ENGINE = MergeTree
PARTITION BY intDiv(time_ms, 86400000)
ORDER BY (source, id);

-- What each event contributes to each meter its type feeds: value is the exact decimal (SUM, MAX; COUNT = 1),
-- key the distinct key (UNIQUE_COUNT). Partitioned by day of the event time and ordered for the hourly scan:
-- the close reads one time range of a few meters.
CREATE TABLE IF NOT EXISTS event_values (
    meter   String,
    time_ms Int64,
    subject String,
    source  String,
    id      String,
    seq     Int64,
    value   Decimal(38, 10),
    key     String
) ENGINE = MergeTree
PARTITION BY intDiv(time_ms, 86400000)
ORDER BY (meter, time_ms, subject);

-- Dead letters: events refused at ingest, with the reason; a conflict keeps the stored version beside it.
CREATE TABLE IF NOT EXISTS dead_letters (
    n           Int64,
    source      String,
    id          String,
    code        String,
    reason      String,
    event       String,
    existing    Nullable(String),
    received_ms Int64
) ENGINE = MergeTree
PARTITION BY intDiv(received_ms, 2592000000)
ORDER BY n;
