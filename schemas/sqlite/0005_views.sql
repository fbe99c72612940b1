-- Read-only views for finance (docs/finance.md): the closed hours, the SDR ledger and the reconciliation lines,
-- queryable with any SQLite tool while meterd runs (WAL: readers never block the writer, nor it them).
-- Decimals are TEXT in plain notation, exact: add them with decimal_sum() (built into the sqlite3 shell since
-- 3.35, and registered by meterd), never sum(), which adds as 64-bit floats. Times are given both as RFC 3339 UTC
-- text and as the stored Unix milliseconds (*_ms), which index and compare best. An hour is named by its start.
-- The views use nothing but core SQL, so they work in any SQLite 3.25 or later.

-- One row per closed instance-hour, with its current SDR: the highest revision of the instance-hour (revision 0
-- unless a record was re-reported after an asynchronous rejection). The SDR columns are NULL when the hour has
-- none (usage_value 0: all carried; or not built yet).
CREATE VIEW v_hourly_usage AS
SELECT u.instance_id,
       u.meter,
       u.sku,
       u.aggregation,
       strftime('%Y-%m-%dT%H:%M:%SZ', u.hour_ms / 1000, 'unixepoch') AS hour,
       u.hour_ms,
       strftime('%Y-%m-%dT%H:%M:%SZ', u.begin_ms / 1000, 'unixepoch') AS begin_time,
       strftime('%Y-%m-%dT%H:%M:%SZ', u.end_ms / 1000, 'unixepoch') AS end_time,
       u.events,
       u.quantity,                              -- on-time usage, meter units
       u.late_events,
       u.late_quantity,                         -- late usage of earlier hours carried into this one
       u.unit_scale,
       u.carry_in,
       u.usage_value,                           -- carry_in + (quantity + late_quantity) x unit_scale - carry_out
       u.carry_out,
       s.metering_sn,
       s.revision,
       s.state,
       s.last_code,
       s.attempts,
       s.usage_value AS pushed_usage,           -- the SDR's usage_value: equal to usage_value
       s.amount AS expected_amount,             -- exact, priced by the plan in effect at the hour
       s.currency,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.due_ms / 1000, 'unixepoch') AS due,
       s.due_ms,
       strftime('%Y-%m-%dT%H:%M:%fZ', s.accepted_ms / 1000.0, 'unixepoch') AS accepted_at,
       s.accepted_ms
FROM usage_hours u
LEFT JOIN sdrs s
       ON s.instance_id = u.instance_id AND s.hour_ms = u.hour_ms
      AND s.revision = (SELECT max(x.revision) FROM sdrs x WHERE x.instance_id = u.instance_id AND x.hour_ms = u.hour_ms);

-- One row per SDR (every revision), with how often it was sent and what the last attempt got.
CREATE VIEW v_sdr_ledger AS
SELECT s.metering_sn,
       s.instance_id,
       s.meter,
       s.sku,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.hour_ms / 1000, 'unixepoch') AS hour,
       s.hour_ms,
       s.revision,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.begin_ms / 1000, 'unixepoch') AS begin_time,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.end_ms / 1000, 'unixepoch') AS end_time,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.record_time_ms / 1000, 'unixepoch') AS record_time,
       s.usage_value,
       s.amount,
       s.currency,
       s.state,                                 -- PENDING SENT ACCEPTED REJECTED EXPIRED HELD BILLED ASYNC_REJECTED
       s.last_code,
       s.reason,
       strftime('%Y-%m-%dT%H:%M:%SZ', s.due_ms / 1000, 'unixepoch') AS due,
       s.due_ms,
       strftime('%Y-%m-%dT%H:%M:%fZ', s.accepted_ms / 1000.0, 'unixepoch') AS accepted_at,
       s.accepted_ms,
       CASE WHEN s.accepted_ms > s.due_ms THEN (s.accepted_ms - s.due_ms) / 1000.0 END AS accepted_late_seconds,
       s.attempts,                              -- sends (each logged before the call)
       (SELECT count(*) FROM sdr_attempts a WHERE a.metering_sn = s.metering_sn) AS attempts_logged,
       strftime('%Y-%m-%dT%H:%M:%fZ', la.at_ms / 1000.0, 'unixepoch') AS last_attempt_at,
       la.http_status AS last_http_status,
       la.code AS last_attempt_code,
       la.class AS last_attempt_class,
       la.latency_ms AS last_attempt_latency_ms,
       la.error AS last_attempt_error
FROM sdrs s
LEFT JOIN sdr_attempts la
       ON la.n = (SELECT max(a.n) FROM sdr_attempts a WHERE a.metering_sn = s.metering_sn);

-- The lines of the reconciliation report (`meterd report reconcile`), column for column where SQL can compute
-- them: the rounded and repriced amounts need the plans and are only in the report. state is the SDR's, or NONE
-- (usage_value 0: nothing to send) or MISSING (usage without an SDR: an invariant violation). late_origins
-- lists the late usage carried into the hour as "ORIGIN_HOUR=QUANTITY" joined by ';', in origin order.
CREATE VIEW v_reconciliation_lines AS
SELECT h.instance_id,
       h.meter,
       h.sku,
       h.aggregation,
       h.hour,
       h.hour_ms,
       h.events,
       h.quantity,
       h.late_events,
       h.late_quantity,
       coalesce((SELECT group_concat(o, ';') FROM (
                     SELECT strftime('%Y-%m-%dT%H:%M:%SZ', l.origin_hour_ms / 1000, 'unixepoch') || '=' || l.quantity AS o
                     FROM late_usage l
                     WHERE l.instance_id = h.instance_id AND l.close_hour_ms = h.hour_ms AND l.action = 'CARRIED'
                     ORDER BY l.origin_hour_ms, l.rowid)), '') AS late_origins,
       h.unit_scale,
       h.carry_in,
       h.carry_out,
       h.usage_value,
       h.pushed_usage,
       h.metering_sn,
       h.revision,
       CASE WHEN h.metering_sn IS NOT NULL THEN h.state
            WHEN h.usage_value = '0' THEN 'NONE'
            ELSE 'MISSING' END AS state,
       coalesce(h.last_code, '') AS last_code,
       coalesce(h.attempts, 0) AS attempts,
       h.due,
       h.due_ms,
       h.accepted_at,
       h.accepted_ms,
       h.expected_amount,
       h.currency
FROM v_hourly_usage h;
