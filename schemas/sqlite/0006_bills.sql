-- Bill imports (DESIGN.md §4 step 10): which KooGallery bill or SDR Management export settled which SDR, and when.
-- The sdrs table itself only gets its state moved (ACCEPTED -> BILLED | ASYNC_REJECTED) and, for an abnormal
-- record, the next revision inserted as PENDING; the provenance lives here.

-- One row per distinct file content. Importing the same bytes again finds this row and adds nothing.
CREATE TABLE bill_imports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256      TEXT    NOT NULL UNIQUE,   -- hex SHA-256 of the file as read
    name        TEXT    NOT NULL,          -- the file as named by whoever imported it
    rows        INTEGER NOT NULL,          -- data rows (the header excluded)
    imported_ms INTEGER NOT NULL
);

-- The bill line that moved an SDR out of ACCEPTED: at most one per SDR, since both moves are final.
CREATE TABLE sdr_bills (
    metering_sn   TEXT    PRIMARY KEY,     -- the SDR (sdrs.metering_sn) the line settled
    import_id     INTEGER NOT NULL REFERENCES bill_imports (id),
    line          INTEGER NOT NULL,        -- 1-based line of the file (the header is line 1)
    state         TEXT    NOT NULL,        -- BILLED | ASYNC_REJECTED: what the line made of the SDR
    status        TEXT    NOT NULL,        -- the line's status column as exported ('' without one)
    amount        TEXT,                    -- the line's amount, exact as exported (NULL without an amount column)
    rereported_sn TEXT,                    -- ASYNC_REJECTED: metering_sn of the revision built to re-report it
    at_ms         INTEGER NOT NULL         -- when the import applied it
) WITHOUT ROWID;
CREATE INDEX sdr_bills_import ON sdr_bills (import_id);
