-- heartbeat-lite schema. PRAGMA user_version (last line) carries the schema
-- version, and heartbeat_lite.SCHEMA_VERSION must equal it. Applied whenever a
-- database's version is older than that (a new file is version 0). Every
-- statement is idempotent and the version is set last, so an application
-- interrupted half-way is simply completed at the next start. An older
-- database is migrated in the same transaction (heartbeat_lite's _MIGRATIONS:
-- for its version, a step before and one after this file), so a migration is
-- all or nothing.

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
    late_after        TEXT,                  -- as given ("30s"), NULL when not set (version 2)
    late_seconds      INTEGER,               -- late_after in seconds, NULL when not set (version 2)
    group_by          TEXT,                  -- JSON array of event keys as given, NULL: not grouped (version 3)
    expected_members  TEXT,                  -- JSON array of member objects as given, NULL when not set (version 3)
    retire_after      TEXT,                  -- as given ("168h"), NULL when not set (version 3)
    retire_seconds    INTEGER,               -- retire_after in seconds (version 3)
    channels          TEXT,                  -- JSON array of channel ids, NULL: the default channels (version 5)
    escalate_after    TEXT,                  -- as given ("30m"), NULL when not set (version 5)
    escalate_seconds  INTEGER,               -- escalate_after in seconds (version 5)
    escalate_to       TEXT,                  -- JSON array of channel ids told after escalate_after (version 5)
    slug              TEXT,                  -- the name pings may use (/ping/<key>/<slug>), NULL: none (version 7)
    push_token        TEXT,                  -- the Uptime Kuma push token (/api/push/<token>), NULL: none (version 7)
    max_run           TEXT,                  -- as given ("30m"), NULL when not set (version 7)
    max_run_seconds   INTEGER,               -- max_run in seconds (version 7)
    schedule          TEXT,                  -- 5-field cron expression as given, NULL: interval only (version 7)
    tz                TEXT,                  -- the schedule's IANA zone ("Europe/Paris"), NULL without one (version 7)
    created           INTEGER NOT NULL,      -- Unix seconds
    updated           INTEGER NOT NULL,      -- Unix seconds
    -- State, times in Unix seconds (REAL: alarms are due to the millisecond).
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'up', 'late', 'down', 'paused')),
    refreshed         REAL NOT NULL,         -- last refresh: creation, resume or last matching event,
                                             -- moved later by each outage and maintenance window
    last_event        REAL,                  -- receive time of the last matching event
    alarm_since       REAL,                  -- when it went late or down; NULL unless late or down
    deadline          REAL GENERATED ALWAYS AS (refreshed + interval_seconds) VIRTUAL,
    -- The next transition: going late (pending or up with a late_after), else
    -- going down. Meaningless when down or paused (no transition is due).
    -- NULL for a grouped heartbeat: its members fall due, not it; its status
    -- is the worst of theirs (or paused), kept up to date with each change.
    due               REAL GENERATED ALWAYS AS (CASE WHEN group_by IS NOT NULL THEN NULL ELSE refreshed + CASE
                          WHEN late_seconds IS NULL OR status = 'late' THEN interval_seconds
                          ELSE late_seconds END END) VIRTUAL
);

-- Two heartbeats may not share a pattern; the canonical form makes key order
-- irrelevant. Also serves the pattern look-up of create and update.
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_pattern ON heartbeat (pattern);

-- Two heartbeats may not share a slug, nor a push token (version 7); NULLs
-- (not set) are many.
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_slug ON heartbeat (slug);
CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_push_token ON heartbeat (push_token);

-- GET /api/v2/heartbeat lists newest first.
CREATE INDEX IF NOT EXISTS heartbeat_newest ON heartbeat (created DESC);

-- Expiry: "what is due by now" and "when is the next transition" are range
-- scans of this index, O(expired * log N) and O(log N); down and paused rows
-- leave it (nothing is due for them).
CREATE INDEX IF NOT EXISTS heartbeat_due ON heartbeat (due) WHERE status NOT IN ('down', 'paused');

-- GET /api/v2/alarms: the late and down heartbeats, oldest alarm first.
CREATE INDEX IF NOT EXISTS heartbeat_alarms ON heartbeat (alarm_since) WHERE status IN ('late', 'down');

-- Maintenance windows (version 2): during an occurrence, the heartbeats whose
-- pattern contains all of the window's pairs raise no alarm. Few rows (at most
-- MAX_MAINTENANCE_WINDOWS), all held in memory by the engine: the primary key
-- serves GET/PUT/DELETE one, and the list reads the whole table.
CREATE TABLE IF NOT EXISTS maintenance (
    id          TEXT PRIMARY KEY,             -- UUID4, as served in "_id"
    name        TEXT NOT NULL,
    pattern     TEXT NOT NULL,                -- canonical JSON, may be {} (every heartbeat)
    start_local TEXT NOT NULL,                -- ISO 8601 local time, no offset ("2026-12-06T02:00:00")
    end_local   TEXT NOT NULL,                -- the same; end - start is each occurrence's length
    timezone    TEXT NOT NULL,                -- IANA name ("Europe/Paris")
    rrule       TEXT,                         -- RFC 5545 rule ("FREQ=WEEKLY;BYDAY=SU"), NULL: once
    created     INTEGER NOT NULL,             -- Unix seconds
    updated     INTEGER NOT NULL
);

-- Members of grouped heartbeats (version 3): one row per distinct combination
-- of the group_by keys' values seen in matching events (or expected). The
-- same state as a heartbeat's; interval, late and retire seconds are copied
-- from the heartbeat (and rewritten when it changes) so that ``due`` can be
-- a generated column and indexed. Deleted with their heartbeat.
CREATE TABLE IF NOT EXISTS member (
    heartbeat_id     TEXT NOT NULL,
    member           TEXT NOT NULL,          -- canonical JSON of the member's pairs: {"host":"db1"}
    expected         INTEGER NOT NULL DEFAULT 0,  -- 1: listed in expected_members (never retired)
    interval_seconds INTEGER NOT NULL,
    late_seconds     INTEGER,
    retire_seconds   INTEGER,                -- NULL: never retired (no retire_after, or expected)
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'up', 'late', 'down', 'paused')),
    refreshed        REAL NOT NULL,
    last_event       REAL,
    alarm_since      REAL,
    deadline         REAL GENERATED ALWAYS AS (refreshed + interval_seconds) VIRTUAL,
    -- The next transition: late, down, or (down with a retire_seconds)
    -- retirement; NULL when none is due (paused, or down for good).
    due              REAL GENERATED ALWAYS AS (CASE
                         WHEN status = 'paused' THEN NULL
                         WHEN status = 'down' THEN alarm_since + retire_seconds
                         WHEN late_seconds IS NULL OR status = 'late' THEN refreshed + interval_seconds
                         ELSE refreshed + late_seconds END) VIRTUAL,
    PRIMARY KEY (heartbeat_id, member)       -- GET .../members pages by it; the refresh look-up
);

-- Expiry of members, as heartbeat_due: O(expired * log N) and O(log N).
CREATE INDEX IF NOT EXISTS member_due ON member (due) WHERE due IS NOT NULL;

-- Counts per status (covering), the worst status of a heartbeat (one probe
-- per status), a members page filtered by one status.
CREATE INDEX IF NOT EXISTS member_status ON member (heartbeat_id, status, member);

-- GET /api/v2/alarms: the late and down members, oldest alarm first.
CREATE INDEX IF NOT EXISTS member_alarms ON member (alarm_since) WHERE status IN ('late', 'down');

-- Service-wide values. 'alive_at': the last time the service recorded that it
-- was running, from which a restart measures the outage. 'intake_silent_since'
-- (only during an intake silence, --intake-silence): when it began.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value REAL NOT NULL
);

-- The durable queue of every channel (version 5: one queue per channel):
-- alarms, resolutions, reminders, escalations and acknowledgements waiting
-- for delivery, written in the same transaction as what they report;
-- delivered oldest first per channel, then deleted. A row its target
-- refused for good (a 4xx) is set aside: kept, shown, no longer sent.
-- AUTOINCREMENT: a seq is never reused, so order survives deletes. Rows of
-- an older version belong to the forward channel (--forward-url).
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event       TEXT NOT NULL,               -- the Canopsis event, JSON (what a canopsis channel sends)
    channel     TEXT NOT NULL DEFAULT 'forward',
    notice      TEXT,                        -- JSON: what the message says (NULL: from the event alone)
    enqueued_at REAL,                        -- Unix seconds: how long it waits (/healthz)
    refused_at  REAL,                        -- set aside: when the target refused it for good
    refusal     TEXT                         -- and what it answered
);

-- A channel's next batch, its waiting count and oldest row.
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox (channel, seq) WHERE refused_at IS NULL;

-- Notification channels (version 5): where alarms go. Few rows (at most
-- MAX_CHANNELS), held in memory by the engine.
CREATE TABLE IF NOT EXISTS channel (
    id             TEXT PRIMARY KEY,         -- UUID4, as served in "_id"
    name           TEXT NOT NULL,
    kind           TEXT NOT NULL,            -- canopsis, webhook, slack, teams, ntfy, email, alertmanager, apprise
    url            TEXT NOT NULL,            -- with its secrets: never shown in full
    is_default     INTEGER NOT NULL DEFAULT 0,  -- 1: heartbeats with no "channels" use it
    repeat_every   TEXT,                     -- as given ("1h"), NULL: no reminders
    repeat_seconds INTEGER,
    headers        TEXT,                     -- JSON object (webhook), NULL when not set
    template       TEXT,                     -- webhook body template, NULL when not set
    created        INTEGER NOT NULL,
    updated        INTEGER NOT NULL
);

-- How each channel's delivery goes (the forward channel's too): the last
-- delivery, and while it fails, since when and why.
CREATE TABLE IF NOT EXISTS channel_health (
    channel       TEXT PRIMARY KEY,
    delivered_at  REAL,
    failing_since REAL,
    last_error    TEXT,
    error_at      REAL
);

-- An open alarm's acknowledgement and escalation (version 5): a row only
-- once it is acknowledged or escalated; deleted when the alarm resolves.
-- member '' is the heartbeat's own alarm.
CREATE TABLE IF NOT EXISTS alarm_follow (
    heartbeat_id TEXT NOT NULL,
    member       TEXT NOT NULL DEFAULT '',
    ack_by       TEXT,
    ack_at       REAL,
    ack_comment  TEXT,
    escalated    INTEGER NOT NULL DEFAULT 0, -- 1: the escalate_to channels were told
    PRIMARY KEY (heartbeat_id, member)
);

-- Reminders (channel: the channel reminded) and escalations (channel '')
-- due for open alarms: the tick takes what is due, in order of due, and
-- the scheduler sleeps until the first. Deleted with the alarm, or its
-- acknowledgement.
CREATE TABLE IF NOT EXISTS followup (
    heartbeat_id TEXT NOT NULL,
    member       TEXT NOT NULL DEFAULT '',
    channel      TEXT NOT NULL,
    due          REAL NOT NULL,
    PRIMARY KEY (heartbeat_id, member, channel)
);
CREATE INDEX IF NOT EXISTS followup_due ON followup (due);

-- Every state change of every heartbeat and member (GET /api/v2/heartbeat/<id>/history,
-- availability), written in the transaction of the change it records. The
-- status is the one entered at "at"; no CHECK on it, so new states need no
-- migration. seq orders changes that share a time.
CREATE TABLE IF NOT EXISTS history (
    seq          INTEGER PRIMARY KEY,
    heartbeat_id TEXT NOT NULL,
    at           REAL NOT NULL,              -- Unix seconds
    status       TEXT NOT NULL,              -- pending, up, down, ...
    reason       TEXT NOT NULL,              -- short human text: "no matching event for 1m"
    extra        TEXT,                       -- NULL, or a JSON object of further keys
    member       TEXT                        -- NULL: the heartbeat's own change (availability
                                             -- counts those); else the member's key (group_by)
);

-- A heartbeat's history, newest first or from a time on; the "last change
-- before a time" probe of availability and of pruning; delete with its heartbeat.
CREATE INDEX IF NOT EXISTS history_by_heartbeat ON history (heartbeat_id, at);

-- Pruning: the rows older than --history-days, oldest first.
CREATE INDEX IF NOT EXISTS history_at ON history (at);

-- The starts and ends of maintenance windows recorded in the history
-- (version 6): inserted in the transaction that records one, so that it is
-- recorded once, however many instances share the database (the one whose
-- insert wins records it). Pruned with the history.
CREATE TABLE IF NOT EXISTS boundary (
    maintenance_id TEXT NOT NULL,
    at             REAL NOT NULL,            -- Unix seconds
    kind           TEXT NOT NULL CHECK (kind IN ('start', 'end')),
    PRIMARY KEY (maintenance_id, at, kind)
);

-- The output of an open alarm whose event did not carry its heartbeat's
-- stored output (version 8): a failure ping's "failed: <first line>", "exit
-- status N", "run exceeded 30m". GET /api/v2/alarms lists the event as it
-- was raised; a row counts only while ``opened`` is the alarm_since of the
-- alarm it belongs to (a later alarm of the same heartbeat or member has
-- its own). member '' is the heartbeat's own; deleted with its heartbeat.
CREATE TABLE IF NOT EXISTS alarm_output (
    heartbeat_id TEXT NOT NULL,
    member       TEXT NOT NULL,              -- '' or the member's key
    opened       REAL NOT NULL,              -- the alarm's alarm_since
    output       TEXT NOT NULL,
    PRIMARY KEY (heartbeat_id, member)
);

PRAGMA user_version = 8;
