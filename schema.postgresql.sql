-- heartbeat-lite schema for PostgreSQL (13 or newer): schema.sql's tables
-- and rules, in PostgreSQL's words, plus what several instances sharing the
-- database need (instance, changes). The row 'schema_version' of meta
-- (set last) carries the version, and heartbeat_lite.SCHEMA_VERSION must
-- equal it. Applied whenever a database's version is older than that, in
-- one transaction, under an advisory lock (two instances starting at once
-- apply it once). Every statement is idempotent, so the file is also its
-- own migration: a later version adds its columns with ADD COLUMN IF NOT
-- EXISTS here rather than in a separate step.

-- One row per heartbeat: the document the API serves, and its state.
CREATE TABLE IF NOT EXISTS heartbeat (
    rowid             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,  -- insertion order, as SQLite's rowid
    id                TEXT COLLATE "C" PRIMARY KEY,   -- UUID4, lower case, as served in "_id"
    name              TEXT NOT NULL,
    author            TEXT NOT NULL,
    description       TEXT NOT NULL,
    output            TEXT NOT NULL,
    pattern           TEXT COLLATE "C" NOT NULL,      -- canonical JSON: keys sorted, compact, UTF-8
    expected_interval TEXT NOT NULL,                  -- as given ("1m")
    interval_seconds  INTEGER NOT NULL,
    late_after        TEXT,
    late_seconds      INTEGER,
    group_by          TEXT,                           -- JSON array of event keys, NULL: not grouped (version 3)
    expected_members  TEXT,                           -- JSON array of member objects (version 3)
    retire_after      TEXT,                           -- as given (version 3)
    retire_seconds    INTEGER,
    channels          TEXT,                           -- JSON array of channel ids (version 5)
    escalate_after    TEXT,
    escalate_seconds  INTEGER,
    escalate_to       TEXT,
    slug              TEXT COLLATE "C",               -- version 7, see schema.sql
    push_token        TEXT COLLATE "C",
    max_run           TEXT,
    max_run_seconds   INTEGER,
    schedule          TEXT,
    tz                TEXT,
    created           BIGINT NOT NULL,                -- Unix seconds
    updated           BIGINT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'up', 'late', 'down', 'paused')),
    refreshed         DOUBLE PRECISION NOT NULL,      -- Unix seconds; see schema.sql
    last_event        DOUBLE PRECISION,
    alarm_since       DOUBLE PRECISION,
    deadline          DOUBLE PRECISION GENERATED ALWAYS AS (refreshed + interval_seconds) STORED,
    -- NULL for a grouped heartbeat: its members fall due, not it (see schema.sql)
    due               DOUBLE PRECISION GENERATED ALWAYS AS (CASE WHEN group_by IS NOT NULL THEN NULL ELSE refreshed + CASE
                          WHEN late_seconds IS NULL OR status = 'late' THEN interval_seconds
                          ELSE late_seconds END END) STORED
);

-- Two heartbeats may not share a pattern (two instances creating one at
-- once: one wins, the other gets "pattern already exists").
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_pattern ON heartbeat (pattern);
CREATE INDEX IF NOT EXISTS heartbeat_newest ON heartbeat (created DESC);
CREATE INDEX IF NOT EXISTS heartbeat_due ON heartbeat (due) WHERE status NOT IN ('down', 'paused');
CREATE INDEX IF NOT EXISTS heartbeat_alarms ON heartbeat (alarm_since) WHERE status IN ('late', 'down');

CREATE TABLE IF NOT EXISTS maintenance (
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    start_local TEXT NOT NULL,
    end_local   TEXT NOT NULL,
    timezone    TEXT NOT NULL,
    rrule       TEXT,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL
);

-- Members of grouped heartbeats (version 3), as in schema.sql.
CREATE TABLE IF NOT EXISTS member (
    rowid            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    heartbeat_id     TEXT COLLATE "C" NOT NULL,
    member           TEXT COLLATE "C" NOT NULL,    -- canonical JSON of the member's pairs
    expected         INTEGER NOT NULL DEFAULT 0,
    interval_seconds INTEGER NOT NULL,
    late_seconds     INTEGER,
    retire_seconds   INTEGER,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'up', 'late', 'down', 'paused')),
    refreshed        DOUBLE PRECISION NOT NULL,
    last_event       DOUBLE PRECISION,
    alarm_since      DOUBLE PRECISION,
    deadline         DOUBLE PRECISION GENERATED ALWAYS AS (refreshed + interval_seconds) STORED,
    due              DOUBLE PRECISION GENERATED ALWAYS AS (CASE
                         WHEN status = 'paused' THEN NULL
                         WHEN status = 'down' THEN alarm_since + retire_seconds
                         WHEN late_seconds IS NULL OR status = 'late' THEN refreshed + interval_seconds
                         ELSE refreshed + late_seconds END) STORED,
    PRIMARY KEY (heartbeat_id, member)
);
CREATE INDEX IF NOT EXISTS member_due ON member (due) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS member_status ON member (heartbeat_id, status, member);
CREATE INDEX IF NOT EXISTS member_alarms ON member (alarm_since) WHERE status IN ('late', 'down');

-- Service-wide values: 'schema_version'; 'intake_silent_since' (see schema.sql); 'changes_pruned' (the last change
-- forgotten: an instance further behind reloads everything).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value DOUBLE PRECISION NOT NULL
);

-- Version 5: the routing fields of a heartbeat (a database of an older version gets them here).
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS channels TEXT;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS escalate_after TEXT;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS escalate_seconds INTEGER;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS escalate_to TEXT;

-- Version 7: the fields of pings and schedules (see schema.sql); two
-- heartbeats may not share a slug, nor a push token.
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS slug TEXT COLLATE "C";
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS push_token TEXT COLLATE "C";
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS max_run TEXT;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS max_run_seconds INTEGER;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS schedule TEXT;
ALTER TABLE heartbeat ADD COLUMN IF NOT EXISTS tz TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_slug ON heartbeat (slug);
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_push_token ON heartbeat (push_token);

-- The durable queue of every channel (see schema.sql), each channel's
-- delivered in seq order by one instance at a time (an advisory lock per
-- channel), then deleted. Rows of an older version belong to the forward channel.
CREATE TABLE IF NOT EXISTS outbox (
    seq   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event TEXT NOT NULL
);
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS channel TEXT NOT NULL DEFAULT 'forward';
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS notice TEXT;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS enqueued_at DOUBLE PRECISION;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS refused_at DOUBLE PRECISION;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS refusal TEXT;
UPDATE outbox SET enqueued_at = (event::jsonb ->> 'timestamp')::double precision WHERE enqueued_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, seq) WHERE refused_at IS NULL;

CREATE TABLE IF NOT EXISTS channel (
    rowid          BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id             TEXT COLLATE "C" PRIMARY KEY,
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    url            TEXT NOT NULL,
    is_default     INTEGER NOT NULL DEFAULT 0,
    repeat_every   TEXT,
    repeat_seconds INTEGER,
    headers        TEXT,
    template       TEXT,
    created        BIGINT NOT NULL,
    updated        BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_health (
    channel       TEXT PRIMARY KEY,
    delivered_at  DOUBLE PRECISION,
    failing_since DOUBLE PRECISION,
    last_error    TEXT,
    error_at      DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS alarm_follow (
    heartbeat_id TEXT COLLATE "C" NOT NULL,
    member       TEXT COLLATE "C" NOT NULL DEFAULT '',
    ack_by       TEXT,
    ack_at       DOUBLE PRECISION,
    ack_comment  TEXT,
    escalated    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (heartbeat_id, member)
);
CREATE TABLE IF NOT EXISTS followup (
    heartbeat_id TEXT COLLATE "C" NOT NULL,
    member       TEXT COLLATE "C" NOT NULL DEFAULT '',
    channel      TEXT NOT NULL,
    due          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (heartbeat_id, member, channel)
);
CREATE INDEX IF NOT EXISTS followup_due ON followup (due);

-- Each instance's last sign of life (engine clock, Unix seconds) and whether
-- it stopped cleanly: a restart postpones deadlines only by a time when no
-- instance was alive.
CREATE TABLE IF NOT EXISTS instance (
    id       TEXT PRIMARY KEY,             -- a UUID4 per process
    alive_at DOUBLE PRECISION NOT NULL,
    stopped  BOOLEAN NOT NULL DEFAULT FALSE
);

-- Heartbeats and maintenance windows created, updated or deleted, for the
-- other instances' read models (each reads the rows after the last it
-- applied, every 0.2 s). Writers queue on an advisory lock, so seq order is
-- commit order. Kept a day.
CREATE TABLE IF NOT EXISTS changes (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance  TEXT NOT NULL,               -- who changed it (it skips its own)
    kind      TEXT NOT NULL,                -- heartbeat, maintenance, channel
    object_id TEXT NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every state change of every heartbeat and member (as schema.sql's), written
-- in the transaction of the change it records.
CREATE TABLE IF NOT EXISTS history (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    heartbeat_id TEXT NOT NULL,
    at           DOUBLE PRECISION NOT NULL, -- Unix seconds
    status       TEXT NOT NULL,             -- the status entered: pending, up, late, down, paused, maintenance
    reason       TEXT NOT NULL,
    extra        TEXT,                      -- NULL, or a JSON object of further keys
    member       TEXT                       -- NULL: the heartbeat's own change; else the member's key
);
CREATE INDEX IF NOT EXISTS history_by_heartbeat ON history (heartbeat_id, at);
CREATE INDEX IF NOT EXISTS history_at ON history (at);

-- Version 5: channels' changes are in the feed too (an older database's CHECK named only the first two).
ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_kind_check;

-- The starts and ends of maintenance windows recorded in the history
-- (version 6), as in schema.sql: every instance's tick sees a boundary,
-- the one whose insert wins records it.
CREATE TABLE IF NOT EXISTS boundary (
    maintenance_id TEXT NOT NULL,
    at             DOUBLE PRECISION NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('start', 'end')),
    PRIMARY KEY (maintenance_id, at, kind)
);

-- The output of an open alarm raised with its own (version 8), as in schema.sql.
CREATE TABLE IF NOT EXISTS alarm_output (
    heartbeat_id TEXT NOT NULL,
    member       TEXT NOT NULL,
    opened       DOUBLE PRECISION NOT NULL,
    output       TEXT NOT NULL,
    PRIMARY KEY (heartbeat_id, member)
);

INSERT INTO meta (key, value) VALUES ('schema_version', 8)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value;
