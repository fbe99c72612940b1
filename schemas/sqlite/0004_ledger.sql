-- The SDR ledger (DESIGN.md §4 steps 7-11): one row per SDR, every attempt, the push lease, pauses.

CREATE TABLE sdrs (
    metering_sn         TEXT    PRIMARY KEY,   -- f(instance, hour, revision); unique per KooGallery's rule (005)
    instance_id         TEXT    NOT NULL,
    hour_ms             INTEGER NOT NULL,
    revision            INTEGER NOT NULL,
    meter               TEXT    NOT NULL,
    sku                 TEXT    NOT NULL,
    record_time_ms      INTEGER NOT NULL,
    begin_ms            INTEGER NOT NULL,
    end_ms              INTEGER NOT NULL,
    usage_value         TEXT    NOT NULL,
    amount              TEXT    NOT NULL,      -- expected charge, exact
    currency            TEXT    NOT NULL,
    relate_pkg_instance TEXT,
    body                BLOB,                  -- the exact bytes of the record as sent (NULL when HELD)
    state               TEXT    NOT NULL,
    last_code           TEXT    NOT NULL DEFAULT '',
    reason              TEXT    NOT NULL DEFAULT '',
    due_ms              INTEGER NOT NULL,      -- H+1h+deadline
    unknown_attempts    INTEGER NOT NULL DEFAULT 0,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms     INTEGER NOT NULL DEFAULT 0,
    accepted_ms         INTEGER,
    epoch               INTEGER NOT NULL,      -- lease epoch of the last write
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL,
    UNIQUE (instance_id, hour_ms, revision)
) WITHOUT ROWID;
CREATE INDEX sdrs_state_hour ON sdrs (state, hour_ms);
CREATE INDEX sdrs_hour ON sdrs (hour_ms);

-- Every push call, once per SDR of its batch.
CREATE TABLE sdr_attempts (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    metering_sn TEXT    NOT NULL,
    at_ms       INTEGER NOT NULL,
    batch_id    TEXT    NOT NULL,
    records     INTEGER NOT NULL,
    http_status INTEGER NOT NULL,
    code        TEXT    NOT NULL,
    class       TEXT    NOT NULL,
    latency_ms  INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    error       TEXT    NOT NULL
);
CREATE INDEX sdr_attempts_sn ON sdr_attempts (metering_sn);

-- The push lease: one row. Taking it over increments the epoch; every ledger write checks its epoch is current.
CREATE TABLE push_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);

-- Paused pushing: scope '*' is global, otherwise an instance id.
CREATE TABLE push_pauses (
    scope     TEXT    PRIMARY KEY,
    paused_ms INTEGER NOT NULL
) WITHOUT ROWID;
