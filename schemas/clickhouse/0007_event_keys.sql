-- The dedup pre-check's index (store/clickhouse/writer.go). Looking keys up in events, ordered by (source, id) in
-- granules of 8,192 rows, made every batch read the key columns of nearly the whole table: 27 ms at an empty table,
-- 450 ms at 2M events, growing without bound. Here each stored key is one UInt64, kh = cityHash64(source \0 id),
-- in granules of 256 rows, so a batch of 10,000 keys reads at most 10,000 small granules whatever the table's
-- size. A hash match only makes a key a candidate: the writer then reads the candidates' stored copies from events
-- by their real keys (few: repeats are rare), so a collision costs a lookup, never a wrong answer.
CREATE TABLE IF NOT EXISTS event_keys (
    kh UInt64
) ENGINE = MergeTree
ORDER BY kh
SETTINGS index_granularity = 256;

-- The keys stored before this table existed. Running this twice (a crash before the migration is recorded) only
-- repeats keys, which a lookup does not mind.
INSERT INTO event_keys (kh) SELECT cityHash64(concat(source, '\0', id)) FROM events;
