-- Pay-per-use instances (DESIGN.md §3, §4 step 3). ClickHouse has no UPDATE: each write of an instance appends a
-- row with a higher version and readers take the latest row per instance (argMax by version), so the result never
-- depends on whether ReplacingMergeTree has merged yet. Times are Unix milliseconds; released_ms 0 = not released.
CREATE TABLE IF NOT EXISTS instances (
    instance_id         String,
    version             Int64,
    subject             String,
    meter               String,
    sku                 String,
    status              String,
    started_ms          Int64,
    released_ms         Int64,
    relate_pkg_instance String,
    site                String,
    updated_ms          Int64
) ENGINE = ReplacingMergeTree(version)
ORDER BY instance_id;

-- The lifecycle history: only ever appended; seq orders it as recorded.
CREATE TABLE IF NOT EXISTS instance_changes (
    instance_id String,
    seq         Int64,
    at_ms       Int64,
    kind        String,
    recorded_ms Int64
) ENGINE = MergeTree
ORDER BY (instance_id, seq);
