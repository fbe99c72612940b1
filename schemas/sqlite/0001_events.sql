-- Raw usage events, deduplicated by (source, id). seq is the ingest sequence: it only grows (AUTOINCREMENT never
-- reuses a value), rows become visible in seq order (SQLite has one writer), and the hour close snapshots
-- max(seq) to decide which events belong to an hour. It may have gaps (a duplicate's INSERT ... ON CONFLICT DO
-- NOTHING consumes a value); only its order matters.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    time_ms     INTEGER NOT NULL,  -- event time, Unix milliseconds UTC (floored: never moves an event across an hour)
    hash        BLOB    NOT NULL,  -- content hash; a repeat of (source, id) with another hash is a conflict
    raw         TEXT    NOT NULL,  -- the event as structured-mode CloudEvents JSON
    received_ms INTEGER NOT NULL   -- acknowledgement time, Unix milliseconds UTC
);
-- The dedup index: the first stored copy of a key wins for as long as the row is kept (the dedup horizon).
CREATE UNIQUE INDEX events_key ON events (source, id);

-- What each event contributes to each meter its type feeds: a plain decimal (SUM, MAX, COUNT = 1) or the distinct
-- key (UNIQUE_COUNT), as text so no value ever passes through a float. One event may feed several meters.
CREATE TABLE event_values (
    seq     INTEGER NOT NULL,
    meter   TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    time_ms INTEGER NOT NULL,
    value   TEXT    NOT NULL,
    PRIMARY KEY (seq, meter)
) WITHOUT ROWID;
-- The hourly scan of the close reads one time range for all meters.
CREATE INDEX event_values_time ON event_values (time_ms);

-- Dead letters: events refused at ingest, with the reason; a conflict keeps the stored version beside it.
CREATE TABLE dead_letters (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    code        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    existing    TEXT,
    received_ms INTEGER NOT NULL
);
