-- heartbeat-lite schema. Applied at every start, so every statement is
-- idempotent; PRAGMA user_version (last line) carries the schema version, and
-- heartbeat_lite.SCHEMA_VERSION must equal it.

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
    updated           INTEGER NOT NULL       -- Unix seconds
);

-- Two heartbeats may not share a pattern; the canonical form makes key order
-- irrelevant. Also serves the pattern look-up of create and update.
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_pattern ON heartbeat (pattern);

-- GET /api/v2/heartbeat lists newest first.
CREATE INDEX IF NOT EXISTS heartbeat_newest ON heartbeat (created DESC);

PRAGMA user_version = 1;
