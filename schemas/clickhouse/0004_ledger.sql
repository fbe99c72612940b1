-- The SDR ledger (DESIGN.md §4 steps 7-11), ClickHouse flavour of schemas/sqlite/0004_ledger.sql. ClickHouse has
-- no transactions and no UPDATE, so the ledger is split into what never changes and what does, and every change
-- is a new row:
--   * sdrs holds the immutable part of an SDR (a pure function of the closed hour: the same bytes when rebuilt).
--     Writers pre-check metering_sn and readers keep the first stored copy of each (LIMIT 1 BY metering_sn after
--     ORDER BY created_ms), so a retried insert that did land twice changes nothing.
--   * sdr_states is the append-only history of its state. The current state of an SDR is its row with the greatest
--     (epoch, version), argMax over the tuple: this is the fencing. A stale scheduler's late write carries a lower
--     lease epoch and can never shadow a decision of the newer epoch, whatever order the rows land in. version
--     only orders the rows of one epoch (each write takes max(now in µs, current version + 1)). The initial state
--     row is written before the sdrs row: an SDR exists once its sdrs row does, and then always has a state.
--   * sdr_attempts, push_lease and push_pauses are append-only logs; readers take the latest row.
-- Results never depend on merges: every table is a plain MergeTree. Times are Unix milliseconds in Int64 (no
-- DateTime64 on 18.16). usage_value is Decimal(38, 10) (at most 4 decimals, summed exactly in ClickHouse for step
-- pricing); amount is the exact decimal text, since a price may have up to 18 fractional digits and amount =
-- usage x price would not fit Decimal(38, 10) without rounding. The SDR tables are partitioned by month and
-- ordered by hour_ms first: the push, the build and the reports read ranges of hours.

CREATE TABLE IF NOT EXISTS sdrs (
    metering_sn         String,            -- f(instance, hour, revision); unique per KooGallery's rule (005)
    instance_id         String,
    hour_ms             Int64,
    revision            Int64,
    meter               String,
    sku                 String,
    record_time_ms      Int64,
    begin_ms            Int64,
    end_ms              Int64,
    usage_value         Decimal(38, 10),
    amount              String,            -- expected charge, exact decimal text
    currency            String,
    relate_pkg_instance Nullable(String),
    body                String,            -- the exact bytes of the record as sent ('' when HELD)
    due_ms              Int64,             -- H+1h+deadline
    created_ms          Int64
) ENGINE = MergeTree
PARTITION BY intDiv(hour_ms, 2592000000)
ORDER BY (hour_ms, instance_id, revision, metering_sn);

-- One row per state change of an SDR; the current one has the greatest (epoch, version).
CREATE TABLE IF NOT EXISTS sdr_states (
    metering_sn      String,
    hour_ms          Int64,                -- the SDR's hour, copied so that hourly reads prune like sdrs
    epoch            Int64,                -- lease epoch of the write
    version          Int64,                -- orders the rows of one SDR within an epoch
    state            String,
    last_code        String,
    reason           String,
    unknown_attempts Int64,
    attempts         Int64,
    next_attempt_ms  Int64,
    accepted_ms      Int64,                -- 0: not accepted
    updated_ms       Int64
) ENGINE = MergeTree
PARTITION BY intDiv(hour_ms, 2592000000)
ORDER BY (hour_ms, metering_sn, epoch, version);

-- Every push call, once per SDR of its batch. Read by metering_sn, so ordered by it; n orders the attempts of
-- one call (at_ms, then n, is the order they were made in).
CREATE TABLE IF NOT EXISTS sdr_attempts (
    metering_sn String,
    at_ms       Int64,
    n           Int64,
    batch_id    String,
    records     Int64,
    http_status Int64,
    code        String,
    class       String,
    latency_ms  Int64,
    epoch       Int64,
    error       String
) ENGINE = MergeTree
ORDER BY (metering_sn, at_ms, n);

-- The push lease, append-only: the current lease is, among the rows of the greatest epoch, the latest row
-- (greatest version) of the winning holder (the smallest name, when two schedulers claimed the same epoch at once).
-- This is guard-rail fencing for one scheduler per database; see store/clickhouse/ledger.go.
CREATE TABLE IF NOT EXISTS push_lease (
    holder     String,
    epoch      Int64,
    version    Int64,
    expires_ms Int64,                      -- 0: released
    written_ms Int64
) ENGINE = MergeTree
ORDER BY (epoch, holder, version);

-- Paused pushing, append-only: scope '*' is global, otherwise an instance id; the latest row (greatest version)
-- of a scope says whether it is paused.
CREATE TABLE IF NOT EXISTS push_pauses (
    scope      String,
    version    Int64,
    paused     UInt8,
    changed_ms Int64
) ENGINE = MergeTree
ORDER BY (scope, version);
