-- Bill imports (DESIGN.md §4 step 10), ClickHouse flavour of schemas/sqlite/0006_bills.sql: which KooGallery bill
-- or SDR Management export settled which SDR, and when. The SDR itself moves (ACCEPTED -> BILLED |
-- ASYNC_REJECTED) by a new sdr_states row, and an abnormal record's next revision is a new SDR; the provenance
-- lives here. No transactions, so an import is made safe to re-run instead: the file is recorded first (once per
-- content, pre-checked by sha256), then per SDR the re-report, its bill line and last the state move. A crash
-- leaves the SDR ACCEPTED, so importing the file again redoes what is missing; readers keep the first row per key.

-- One row per distinct file content (readers keep the first per sha256).
CREATE TABLE IF NOT EXISTS bill_imports (
    sha256      String,                    -- hex SHA-256 of the file as read
    name        String,                    -- the file as named by whoever imported it
    rows        Int64,                     -- data rows (the header excluded)
    imported_ms Int64
) ENGINE = MergeTree
ORDER BY sha256;

-- The bill line that moved an SDR out of ACCEPTED: one per SDR, since both moves are final (readers keep the
-- first by at_ms should a re-run after a crash have written a second).
CREATE TABLE IF NOT EXISTS sdr_bills (
    metering_sn   String,                  -- the SDR (sdrs.metering_sn) the line settled
    import_sha256 String,                  -- bill_imports.sha256
    line          Int64,                   -- 1-based line of the file (the header is line 1)
    state         String,                  -- BILLED | ASYNC_REJECTED: what the line made of the SDR
    status        String,                  -- the line's status column as exported ('' without one)
    amount        Nullable(String),        -- the line's amount, exact as exported (NULL without an amount column)
    rereported_sn Nullable(String),        -- ASYNC_REJECTED: metering_sn of the revision built to re-report it
    at_ms         Int64                    -- when the import applied it
) ENGINE = MergeTree
ORDER BY (metering_sn, at_ms);
