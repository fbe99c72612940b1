-- The dedup pre-check's index, second form (store/clickhouse/writer.go). event_keys (0007) held only the key hash,
-- so every repeat found there still cost a read of its stored copy from events (granules of 8,192 rows of the
-- key, hash and seq columns): with 1% repeats, about 50 ms of every batch of 10,000, and as much server CPU as
-- the batch's inserts. Here each stored copy also carries dh, a hash of its key and content hash: a repeat whose
-- (kh, dh) is found is a duplicate without reading events. events is read only for a key whose digest differs (a
-- conflict, or a key hash collision) or that has several digests (conflicting copies raced in).
--
-- Upgrade: stop the collectors of the previous version before migrating. After the drop below their writes fail
-- and are retried (nothing is committed to Kafka meanwhile, so nothing is lost); a key they stored without a
-- digest would look new to the pre-check, and its second copy would be counted once only by the read-time rule.
CREATE TABLE IF NOT EXISTS event_digests (
    kh UInt64,
    dh UInt64
) ENGINE = MergeTree
ORDER BY kh
SETTINGS index_granularity = 256;

-- The copies stored before this table existed. Running this twice (a crash before the migration is recorded) only
-- repeats rows, which a lookup does not mind.
INSERT INTO event_digests (kh, dh) SELECT cityHash64(concat(source, '\0', id)), cityHash64(concat(source, '\0', id, '\0', hash)) FROM events;

DROP TABLE IF EXISTS event_keys;
