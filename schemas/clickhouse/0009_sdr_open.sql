-- The push's index of SDRs not known to be final (store/clickhouse/ledger.go, "open index"). The current state of
-- an SDR is an argMax over all its sdr_states rows, so finding the open ones meant grouping every state row ever
-- written: at 100,000 instances (7.2M SDRs, 21.6M state rows after three days) the push's reads ran out of memory
-- (2 GiB per query), and their cost grew with history forever. Every SDR built PENDING or SENT gets a row here
-- before its state and sdrs rows are written; the push reads sdr_states and sdrs only for the SDRs listed here
-- (the tuple (hour_ms, metering_sn) is a prefix of sdr_states' sorting key, (hour_ms, instance_id) of sdrs').
--
-- gen is the hour (Unix ms) the row was written in, and the partition. Once an hour, the push copies the rows of
-- the generations older than the previous hour whose SDR is not final into the current generation, then drops
-- those partitions (a DROP PARTITION is immediate, unlike a DELETE). Final states are never left (REJECTED,
-- EXPIRED, ACCEPTED, HELD move only to BILLED or ASYNC_REJECTED), so a dropped row is never needed again; a
-- re-report is a new SDR with a row of its own. The index may list an SDR that is final (not compacted yet, or a
-- copy raced with its last attempt): readers take the state from sdr_states, never from here. It must never miss
-- an open one, which is why rows are written first and only SDRs known final are dropped.
--
-- Upgrade: stop the schedulers (and `meterd push`, `report reconcile --bill`) of the previous version before
-- migrating. An SDR they build after the backfill below would not be listed, and the new version would not push it.
CREATE TABLE IF NOT EXISTS sdr_open (
    metering_sn String,
    hour_ms     Int64,
    instance_id String,
    gen         Int64
) ENGINE = MergeTree
PARTITION BY gen
ORDER BY (hour_ms, metering_sn);

-- The SDRs open now, in generation 0 (compacted by the first push). This is the one grouping of all state rows;
-- on a large ledger give it memory (max_memory_usage) or spill (max_bytes_before_external_group_by) for the
-- migrating user. Running it twice (a crash before the migration is recorded) only repeats rows, which no reader
-- minds.
INSERT INTO sdr_open (metering_sn, hour_ms, instance_id, gen) SELECT metering_sn, hour_ms, instance_id, 0 FROM sdrs WHERE metering_sn IN (SELECT metering_sn FROM (SELECT metering_sn, argMax(state, (epoch, version)) AS st_state FROM sdr_states GROUP BY metering_sn) WHERE st_state IN ('PENDING', 'SENT')) LIMIT 1 BY metering_sn;
