-- The hour close (DESIGN.md §4 steps 4-6). Decimals are TEXT in plain notation: exact, never a float.

-- One row per closed hour: the marker. It is written in the same transaction as everything the close decided, so
-- an hour is either closed with all its rows or not closed at all.
CREATE TABLE hour_closes (
    hour_ms           INTEGER PRIMARY KEY,
    snapshot_seq      INTEGER NOT NULL,  -- events with seq <= snapshot_seq and time in the hour belong to it
    prev_snapshot_seq INTEGER NOT NULL,
    closed_ms         INTEGER NOT NULL,
    forced            INTEGER NOT NULL,
    rows_count        INTEGER NOT NULL
);

-- The closed usage of each instance-hour: the number billed. carry_in + (quantity + late_quantity) x unit_scale
-- = usage_value + carry_out for additive meters.
CREATE TABLE usage_hours (
    instance_id   TEXT    NOT NULL,
    hour_ms       INTEGER NOT NULL,
    meter         TEXT    NOT NULL,
    aggregation   TEXT    NOT NULL,
    sku           TEXT    NOT NULL,
    begin_ms      INTEGER NOT NULL,
    end_ms        INTEGER NOT NULL,
    events        INTEGER NOT NULL,
    quantity      TEXT    NOT NULL,
    late_events   INTEGER NOT NULL,
    late_quantity TEXT    NOT NULL,
    unit_scale    TEXT    NOT NULL,
    carry_in      TEXT    NOT NULL,
    usage_value   TEXT    NOT NULL,
    carry_out     TEXT    NOT NULL,
    PRIMARY KEY (instance_id, hour_ms)
) WITHOUT ROWID;
CREATE INDEX usage_hours_hour ON usage_hours (hour_ms);

-- Late usage found by each close and what was done with it (carried, dropped, held as unmatched).
CREATE TABLE late_usage (
    close_hour_ms  INTEGER NOT NULL,
    meter          TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    origin_hour_ms INTEGER NOT NULL,
    instance_id    TEXT,
    events         INTEGER NOT NULL,
    quantity       TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    reason         TEXT    NOT NULL
);
CREATE INDEX late_usage_close ON late_usage (close_hour_ms);

-- Usage no instance covered, kept as the range of events that made it so that attaching it later re-reads
-- exactly the events an instance may take.
CREATE TABLE unmatched_usage (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    meter            TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    hour_ms          INTEGER NOT NULL,
    from_ms          INTEGER NOT NULL,
    to_ms            INTEGER NOT NULL,
    seq_after        INTEGER NOT NULL,
    seq_upto         INTEGER NOT NULL,
    events           INTEGER NOT NULL,
    quantity         TEXT    NOT NULL,
    state            TEXT    NOT NULL,  -- HELD | ATTACHED | SPLIT | WRITTEN_OFF
    instance_id      TEXT,
    found_hour_ms    INTEGER NOT NULL,
    resolved_hour_ms INTEGER,
    reason           TEXT    NOT NULL
);
CREATE INDEX unmatched_usage_state ON unmatched_usage (state);

-- Usage, in usage units, that will never be billed, with the reason.
CREATE TABLE write_offs (
    instance_id    TEXT    NOT NULL,
    meter          TEXT    NOT NULL,
    close_hour_ms  INTEGER NOT NULL,
    origin_hour_ms INTEGER NOT NULL,
    usage          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    reason         TEXT    NOT NULL
);
CREATE INDEX write_offs_instance ON write_offs (instance_id);

-- The latest carry of each instance, maintained by each close, so that a close reads one row per instance instead
-- of searching usage_hours for each instance's last row.
CREATE TABLE instance_carry (
    instance_id         TEXT    PRIMARY KEY,
    hour_ms             INTEGER NOT NULL,
    carry_out           TEXT    NOT NULL,
    release_written_off INTEGER NOT NULL
) WITHOUT ROWID;
