-- Pay-per-use instances (DESIGN.md §3, §4 step 3), written only through aggregate/instance's lifecycle rules.
-- Times are Unix milliseconds UTC. An instance's life is [started_ms, released_ms); released_ms is NULL while it
-- is not released. subject, meter, sku and started_ms never change after the row is created.
CREATE TABLE instances (
    instance_id         TEXT    PRIMARY KEY,
    subject             TEXT    NOT NULL,
    meter               TEXT    NOT NULL,
    sku                 TEXT    NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('ACTIVE', 'FROZEN', 'RELEASED')),
    started_ms          INTEGER NOT NULL,
    released_ms         INTEGER,           -- NULL: not released
    relate_pkg_instance TEXT,              -- NULL: none
    site                TEXT,              -- NULL: the default KooGallery site
    updated_ms          INTEGER NOT NULL,
    CHECK ((status = 'RELEASED') = (released_ms IS NOT NULL))
) WITHOUT ROWID;
-- Matching an event to an instance, and the overlap check of an apply, read one (subject, meter) in time order.
CREATE INDEX instances_subject_meter ON instances (subject, meter, started_ms);

-- The lifecycle history: freeze, unfreeze and release are kept as timestamped events, not only as a status.
-- at_ms is when the change took effect, recorded_ms when meterd learned it; seq orders the history as recorded.
-- Rows are only ever added.
CREATE TABLE instance_changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT    NOT NULL,
    at_ms       INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('CREATED', 'FROZEN', 'UNFROZEN', 'RELEASED')),
    recorded_ms INTEGER NOT NULL
);
CREATE INDEX instance_changes_instance ON instance_changes (instance_id, seq);
