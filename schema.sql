-- heartbeat-lite schema. PRAGMA user_version (last line) carries the schema
-- version, and heartbeat_lite.SCHEMA_VERSION must equal it. Applied whenever a
-- database's version is older than that (a new file is version 0). Every
-- statement is idempotent and the version is set last, so an application
-- interrupted half-way is simply completed at the next start.

-- One row per heartbeat: the document the API serves.
CREATE TABLE IF NOT EXISTS heartbeat (
    id                TEXT PRIMARY KEY,      -- UUID4, lower case, as served in "_id"
    name              TEXT NOT NULL,
    author            TEXT NOT NULL,
    description       TEXT NOT NULL,
    output            TEXT NOT NULL,
    pattern           TEXT NOT NULL,         -- canonical JSON: keys sorted, compact, UTF-8
    expected_interval TEXT NOT NULL,         -- as given ("1m")
    interval_seconds  INTEGER NOT NULL,      -- expected_interval in seconds
    created           INTEGER NOT NULL,      -- Unix seconds
    updated           INTEGER NOT NULL,      -- Unix seconds
    -- State, times in Unix seconds (REAL: alarms are due to the millisecond).
    status            TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'up', 'down')),
    refreshed         REAL NOT NULL,         -- last refresh: creation or last matching event,
                                             -- moved later by the length of each outage
    last_event        REAL,                  -- receive time of the last matching event
    alarm_since       REAL,                  -- when it went down; NULL unless down
    deadline          REAL GENERATED ALWAYS AS (refreshed + interval_seconds) VIRTUAL
);

-- Two heartbeats may not share a pattern; the canonical form makes key order
-- irrelevant. Also serves the pattern look-up of create and update.
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_pattern ON heartbeat (pattern);

-- GET /api/v2/heartbeat lists newest first.
CREATE INDEX IF NOT EXISTS heartbeat_newest ON heartbeat (created DESC);

-- Expiry: "what is due by now" and "when is the next deadline" are range
-- scans of this index, O(expired * log N) and O(log N); down rows leave it.
CREATE INDEX IF NOT EXISTS heartbeat_due ON heartbeat (deadline) WHERE status <> 'down';

-- GET /api/v2/alarms: the down heartbeats, oldest alarm first.
CREATE INDEX IF NOT EXISTS heartbeat_alarms ON heartbeat (alarm_since) WHERE status = 'down';

-- Service-wide values. 'alive_at': the last time the service recorded that it
-- was running, from which a restart measures the outage.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value REAL NOT NULL
);

-- Alarm and resolution events waiting for --forward-url, written in the same
-- transaction as the state change they report; delivered oldest first, then
-- deleted. AUTOINCREMENT: a seq is never reused, so order survives deletes.
CREATE TABLE IF NOT EXISTS outbox (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL                      -- the Canopsis event, JSON
);

PRAGMA user_version = 1;
