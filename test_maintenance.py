"""Tests for pause/resume, late warnings and maintenance windows: every
edge on a fake clock, ticked by hand."""

import datetime
import json
import re
import sqlite3
import zoneinfo

import pytest

import heartbeat_lite
from testing_support import (
    C01,
    INVALID,
    T0,
    Recorder,
    body,
    client,
    create,
    described_answer,
    local,
    lookup,
    pointer,
    schema_errors,
    window,
)

MINUTE = 60


def send(app, event=C01):
    return app.post_json("/api/v2/event", event).json


def status(app, heartbeat_id):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json


def seen(alarms_seen):
    """(state, timestamp) of every published event, in order."""
    return [(event["state"], event["timestamp"]) for event in alarms_seen]


@pytest.fixture
def long_alive(monkeypatch):
    """Alive records far apart, so that tick() says when the next thing is due."""
    monkeypatch.setattr(heartbeat_lite, "ALIVE_INTERVAL_SECONDS", 10_000.0)


def at(clock, service, t):
    """Move the fake clock to ``t`` and tick."""
    clock.now = t
    return service.tick()


# The version-1 schema, as main had it before version 2 (git show <v1>:schema.sql).
SCHEMA_V1 = """-- heartbeat-lite schema. PRAGMA user_version (last line) carries the schema
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
"""

###############################################################################
# Pause and resume
###############################################################################


def test_pause_and_resume_answer_as_documented(app):
    heartbeat_id = create(app)
    for verb, word in (("pause", "paused"), ("pause", "paused"), ("resume", "resumed"), ("resume", "resumed")):
        answer = app.post(f"/api/v2/heartbeat/{heartbeat_id}/{verb}").json  # twice each: a no-op 200
        assert answer == {"name": f"heartbeat {word}", "description": heartbeat_id}
    for verb in ("pause", "resume"):
        for unknown in ("nope", "0b7b7a5e-9f49-4c57-9d6e-2b4f5f0f0f0f"):
            assert app.post(f"/api/v2/heartbeat/{unknown}/{verb}/", status=404).json == {
                "name": unknown, "description": "heartbeat not found"}


def test_a_paused_heartbeat_raises_nothing_and_events_only_move_its_last_event(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    assert status(app, heartbeat_id) == {"_id": heartbeat_id, "status": "paused", "last_event": None,
                                         "deadline": None, "alarm_since": None, "maintenance": None}
    at(clock, service, T0 + 10 * MINUTE)
    assert alarms_seen == [] and app.get("/api/v2/alarms").json == []
    for offset in (601, 601.2):  # the second within the coalescing interval: still written at once
        clock.now = T0 + offset
        assert send(app)["matched"] == [heartbeat_id]
        assert service.store.heartbeat(heartbeat_id)["last_event"] == T0 + offset
    assert status(app, heartbeat_id)["status"] == "paused"
    assert service.store.heartbeat(heartbeat_id)["refreshed"] == T0  # nothing else moved
    assert service.tick() == heartbeat_lite.ALIVE_INTERVAL_SECONDS  # nothing is due for it: no wake-up


def test_pausing_a_down_heartbeat_resolves_its_alarm_through_the_outbox(clock):
    published = []
    with heartbeat_lite.create_app(clock=clock, on_alarm=published.append,
                                   forward_url="http://127.0.0.1:9/") as service:
        app = client(service)
        heartbeat_id = create(app)
        at(clock, service, T0 + 60)
        app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
        assert seen(published) == [(3, int(T0 + 60)), (0, int(T0 + 60))]
        outbox = [json.loads(event) for _, event in service.store.outbox_batch(10)]
        assert [event["state"] for event in outbox] == [3, 0]
        assert app.get("/api/v2/alarms").json == []
        app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")  # no-op: nothing more
        assert len(published) == 2


def test_resume_starts_afresh(app, service, clock, alarms_seen, long_alive):
    heartbeat_id = create(app)
    send(app)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    clock.now = T0 + 1000
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/resume")
    assert status(app, heartbeat_id) == {"_id": heartbeat_id, "status": "pending", "last_event": T0,
                                         "deadline": T0 + 1060, "alarm_since": None, "maintenance": None}
    assert service.tick() == 60  # the scheduler's next wake-up is the fresh deadline
    at(clock, service, T0 + 1059.9)
    assert alarms_seen == []
    at(clock, service, T0 + 1060)
    assert seen(alarms_seen) == [(3, int(T0 + 1060))]


def test_pausing_keeps_a_refresh_not_yet_written(app, service, clock):
    heartbeat_id = create(app)
    send(app)
    clock.advance(0.2)
    send(app)  # kept in memory (coalesced)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    assert status(app, heartbeat_id)["last_event"] == T0 + 0.2
    service.tick()
    assert service.store.heartbeat(heartbeat_id)["status"] == "paused"


###############################################################################
# late_after
###############################################################################


def test_late_after_is_validated_and_shown_only_when_set(app):
    for late_after, reason in (("60s", "late_after: must be shorter than expected_interval"),
                               ("2m", "late_after: must be shorter than expected_interval"),
                               ("soon", "late_after: must look like 30s, 5m or 2h"),
                               (30, "late_after: must look like 30s, 5m or 2h"),
                               (None, "late_after: must look like 30s, 5m or 2h")):
        answer = app.post_json("/api/v2/heartbeat", {**body(), "late_after": late_after}, status=400).json
        assert {k: answer[k] for k in ("name", "description")} == INVALID
        assert reason in answer["errors"]
    plain = create(app)
    assert "late_after" not in app.get(f"/api/v2/heartbeat/{plain}").json
    late = create(app, body(pattern={"k": "v"}, late_after="30s"))
    assert app.get(f"/api/v2/heartbeat/{late}").json["late_after"] == "30s"
    assert [doc.get("late_after") for doc in app.get("/api/v2/heartbeat").json] == ["30s", None]


def test_late_then_down_then_one_resolution(app, service, clock, alarms_seen, long_alive):
    heartbeat_id = create(app, body(late_after="30s"))
    assert service.tick() == 30  # the late time is the next wake-up
    at(clock, service, T0 + 29.9)
    assert alarms_seen == []
    at(clock, service, T0 + 30)
    assert seen(alarms_seen) == [(1, int(T0 + 30))]
    assert status(app, heartbeat_id)["status"] == "late"
    assert status(app, heartbeat_id)["alarm_since"] == T0 + 30
    assert [(a["state"], a["since"]) for a in app.get("/api/v2/alarms").json] == [(1, T0 + 30)]
    at(clock, service, T0 + 60)
    assert seen(alarms_seen)[1:] == [(3, int(T0 + 60))]
    assert [(a["state"], a["since"]) for a in app.get("/api/v2/alarms").json] == [(3, T0 + 60)]
    clock.now = T0 + 70
    send(app)
    assert seen(alarms_seen)[2:] == [(0, int(T0 + 70))]
    assert status(app, heartbeat_id)["status"] == "up"


def test_an_event_resolves_a_late_heartbeat_before_it_goes_down(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(late_after="30s"))
    at(clock, service, T0 + 45)
    send(app)
    assert seen(alarms_seen) == [(1, int(T0 + 30)), (0, int(T0 + 45))]
    assert status(app, heartbeat_id)["status"] == "up"
    at(clock, service, T0 + 75)
    assert status(app, heartbeat_id)["status"] == "late"
    assert seen(alarms_seen)[2:] == [(1, int(T0 + 75))]


def test_a_tick_late_by_a_whole_interval_raises_both_warnings_in_order(app, service, clock, alarms_seen):
    create(app, body(late_after="30s"))
    at(clock, service, T0 + 500)
    assert seen(alarms_seen) == [(1, int(T0 + 30)), (3, int(T0 + 60))]


def test_a_put_removing_late_after_while_late_resolves_the_warning(app, service, clock, alarms_seen):
    waiting = create(app, body(late_after="30s"))
    seen_once = create(app, body(pattern={"k": "v"}, late_after="30s"))
    send(app, {"k": "v"})
    at(clock, service, T0 + 40)
    assert [status(app, i)["status"] for i in (waiting, seen_once)] == ["late", "late"]
    app.put_json(f"/api/v2/heartbeat/{waiting}", body())
    app.put_json(f"/api/v2/heartbeat/{seen_once}", body(pattern={"k": "v"}))
    # back to what its last refresh says: never an event -> pending; an event -> up
    assert [status(app, i)["status"] for i in (waiting, seen_once)] == ["pending", "up"]
    assert [status(app, i)["deadline"] for i in (waiting, seen_once)] == [T0 + 60, T0 + 60]
    assert seen(alarms_seen) == [(1, int(T0 + 30)), (1, int(T0 + 30)), (0, int(T0 + 40)), (0, int(T0 + 40))]
    assert app.get("/api/v2/alarms").json == []
    at(clock, service, T0 + 60)
    assert [state for state, _ in seen(alarms_seen)[4:]] == [3, 3]


def test_a_put_keeping_a_passed_late_after_stays_late_and_a_longer_one_resolves(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(late_after="30s"))
    at(clock, service, T0 + 40)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(late_after="20s", output="x"))
    assert status(app, heartbeat_id)["status"] == "late" and len(alarms_seen) == 1
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(late_after="50s"))
    assert status(app, heartbeat_id)["status"] == "pending"
    assert seen(alarms_seen)[1:] == [(0, int(T0 + 40))]
    at(clock, service, T0 + 50)
    assert seen(alarms_seen)[2:] == [(1, int(T0 + 50))]


def test_a_put_adding_late_after_applies_from_the_last_refresh(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    clock.now = T0 + 10
    send(app)
    clock.now = T0 + 35
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(late_after="20s"))
    service.tick()  # due already: the PUT woke the scheduler for it
    assert seen(alarms_seen) == [(1, int(T0 + 30))]
    assert status(app, heartbeat_id)["status"] == "late"


def test_a_late_heartbeat_whose_pattern_changes_moves_its_warning(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(late_after="30s"))
    at(clock, service, T0 + 40)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(late_after="30s", pattern={"k": "v"}))
    resources = [(event["state"], event["resource"]) for event in alarms_seen]
    assert resources == [(1, "connector:connect.connector_name:c01"), (0, "connector:connect.connector_name:c01"),
                         (1, "k:v")]


def test_deleting_or_pausing_a_late_heartbeat_resolves_its_warning(app, service, clock, alarms_seen):
    first = create(app, body(late_after="30s"))
    second = create(app, body(late_after="30s", pattern={"k": "v"}))
    at(clock, service, T0 + 40)
    app.delete(f"/api/v2/heartbeat/{first}")
    app.post(f"/api/v2/heartbeat/{second}/pause")
    assert [state for state, _ in seen(alarms_seen)] == [1, 1, 0, 0]


###############################################################################
# Maintenance windows: the resource
###############################################################################

WEEKLY = {"name": "Sunday patching", "pattern": {"component": "db1"}, "start": "2026-12-06T02:00:00",
          "end": "2026-12-06T04:00:00", "timezone": "Europe/Paris", "rrule": "FREQ=WEEKLY;BYDAY=SU"}


def test_maintenance_windows_are_created_read_replaced_and_removed(app, clock):
    maintenance_id = app.post_json("/api/v2/maintenance", WEEKLY).json["description"]
    answer = app.get(f"/api/v2/maintenance/{maintenance_id}").json
    assert answer == {"_id": maintenance_id, **WEEKLY, "created": int(T0), "updated": int(T0)}
    once = app.post_json("/api/v2/maintenance/", {"name": "once", "pattern": {}, "start": "2030-01-01T00:00",
                                                   "end": "2030-01-01T01:00"}).json["description"]
    assert app.get(f"/api/v2/maintenance/{once}").json == {
        "_id": once, "name": "once", "pattern": {}, "start": "2030-01-01T00:00:00", "end": "2030-01-01T01:00:00",
        "timezone": "UTC", "created": int(T0), "updated": int(T0)}  # no rrule key when none is set
    assert [doc["_id"] for doc in app.get("/api/v2/maintenance").json] == [once, maintenance_id]
    clock.advance(5)
    replaced = {**answer, "name": "Saturday patching", "rrule": "FREQ=WEEKLY;BYDAY=SA"}
    assert app.put_json(f"/api/v2/maintenance/{maintenance_id}", replaced).json == {
        "name": "maintenance updated", "description": maintenance_id}
    assert app.get(f"/api/v2/maintenance/{maintenance_id}").json == {
        **replaced, "created": int(T0), "updated": int(T0 + 5)}
    assert app.delete(f"/api/v2/maintenance/{maintenance_id}").json == {
        "name": "maintenance removed", "description": maintenance_id}
    for method in ("get", "delete"):
        assert getattr(app, method)(f"/api/v2/maintenance/{maintenance_id}", status=404).json == {
            "name": maintenance_id, "description": "maintenance not found"}
    assert app.put_json(f"/api/v2/maintenance/{maintenance_id}", WEEKLY, status=404).json["name"] == maintenance_id
    assert app.get("/api/v2/maintenance/not-a-uuid", status=404).json["description"] == "maintenance not found"
    assert [doc["_id"] for doc in app.get("/api/v2/maintenance").json] == [once]


@pytest.mark.parametrize("changes, reason", [
    ({"timezone": "Mars/Olympus_Mons"}, "timezone: unknown time zone 'Mars/Olympus_Mons'"),
    ({"timezone": "../../etc/passwd"}, "timezone: unknown time zone '../../etc/passwd'"),
    ({"timezone": "localtime"}, "timezone: unknown time zone 'localtime'"),
    ({"timezone": "right/Europe/Paris"}, "timezone: unknown time zone 'right/Europe/Paris'"),
    ({"timezone": 1}, "timezone: must be an IANA time zone name such as Europe/Paris"),
    ({"end": "2026-12-06T02:00:00"}, "end: must be after start"),
    ({"end": "2026-12-06T01:00:00"}, "end: must be after start"),
    ({"rrule": "FREQ=SOMETIMES"}, "rrule: not a valid RFC 5545 recurrence rule"),
    ({"rrule": "FREQ=MINUTELY"}, "rrule: FREQ must be HOURLY or slower"),
    ({"rrule": 7}, "rrule: must be a string"),
    ({"rrule": "DTSTART:20260101T000000\nRRULE:FREQ=DAILY"}, "rrule: give one rule such as FREQ=WEEKLY;BYDAY=SU"),
    ({"start": "next sunday"}, "start: must be an ISO 8601 local time such as 2026-12-06T02:00:00"),
    ({"start": "2026-12-06T02:00:00+01:00"}, "start: must be a local time without an offset"),
    ({"start": "2026-03-29T02:30:00", "end": "2026-03-29T04:00:00", "rrule": None},
     "start: 2026-03-29T02:30:00 does not exist in Europe/Paris (a daylight saving gap)"),
    ({"colour": "red"}, "unknown field(s): colour"),
    ({"pattern": {"k": 1}}, "pattern.k: must be a string of at most 255 characters"),
    ({"pattern": []}, "pattern: must be an object of strings"),
    ({"name": " "}, "name: must not be blank"),
])
def test_an_invalid_maintenance_window_gives_its_reason(app, changes, reason):
    doc = {k: v for k, v in {**WEEKLY, **changes}.items() if v is not None}
    answer = app.post_json("/api/v2/maintenance", doc, status=400).json
    assert {k: answer[k] for k in ("name", "description")} == {"name": "", "description": "invalid maintenance payload."}
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/maintenance").json == []


def test_every_reason_is_given_at_once(app):
    answer = app.post_json("/api/v2/maintenance", {"name": "", "timezone": "Nowhere", "start": "x", "extra": 1,
                                                   "rrule": "FREQ=WEEKLY"}, status=400).json
    assert len(answer["errors"]) >= 5, answer["errors"]
    assert app.post("/api/v2/maintenance", b"[]", status=400).json["description"] == "invalid maintenance payload."
    assert app.get("/api/v2/maintenance?active=yes", status=400).json["errors"]


def test_the_active_filter_lists_the_windows_active_now(app, clock):
    now_id = window(app, T0 - 10, T0 + 10)
    window(app, T0 + 100, T0 + 200)
    assert [doc["_id"] for doc in app.get("/api/v2/maintenance?active=1").json] == [now_id]
    assert len(app.get("/api/v2/maintenance?active=0").json) == 2
    clock.now = T0 + 150
    assert [doc["_id"] for doc in app.get("/api/v2/maintenance?active=1").json] != [now_id]


###############################################################################
# Maintenance windows: the edges
###############################################################################


def test_a_window_starting_while_up_holds_the_alarm_until_end_plus_interval(app, service, clock, alarms_seen,
                                                                            long_alive):
    heartbeat_id = create(app)
    clock.now = T0 + 10
    send(app)
    window_id = window(app, T0 + 30, T0 + 300, pattern={"connector": "connect"})
    assert service.tick() == 20  # the window's start is a wake-up
    at(clock, service, T0 + 70)  # its deadline passes inside the window
    assert alarms_seen == []
    assert status(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "up", "last_event": T0 + 10, "deadline": T0 + 360, "alarm_since": None,
        "maintenance": {"_id": window_id, "name": "patching", "until": T0 + 300}}
    assert service.tick() == 230  # not due again: the next wake-up is the window's end
    at(clock, service, T0 + 300)
    assert status(app, heartbeat_id)["maintenance"] is None
    assert status(app, heartbeat_id)["deadline"] == T0 + 360
    at(clock, service, T0 + 359.9)
    assert alarms_seen == []
    at(clock, service, T0 + 360)
    assert seen(alarms_seen) == [(3, int(T0 + 360))]


def test_at_the_end_every_selected_heartbeat_gets_a_full_interval(app, service, clock, alarms_seen):
    long_id = create(app, body(expected_interval="10m"))  # not due during the window
    other = create(app, body(pattern={"other": "x"}, expected_interval="10m"))  # not selected
    window(app, T0 + 30, T0 + 300, pattern={"connector_name": "c01"})
    at(clock, service, T0 + 300)
    assert status(app, long_id)["deadline"] == T0 + 300 + 600  # max(T0 + 600, end + interval)
    assert status(app, other)["deadline"] == T0 + 600
    at(clock, service, T0 + 600)
    assert [event["heartbeat_id"] for event in alarms_seen] == [other]


def test_a_window_starting_while_down_keeps_the_alarm_open_without_raising_it_again(app, service, clock,
                                                                                       alarms_seen):
    heartbeat_id = create(app)
    at(clock, service, T0 + 60)
    window(app, T0 + 100, T0 + 1000)
    for t in (T0 + 100, T0 + 500, T0 + 999):
        at(clock, service, t)
    assert seen(alarms_seen) == [(3, int(T0 + 60))]
    assert [alarm["heartbeat_id"] for alarm in app.get("/api/v2/alarms").json] == [heartbeat_id]
    state = status(app, heartbeat_id)
    assert state["status"] == "down" and state["deadline"] == T0 + 60 and state["maintenance"]["until"] == T0 + 1000
    clock.now = T0 + 600
    send(app)  # a matching event resolves it as usual
    assert seen(alarms_seen)[1:] == [(0, int(T0 + 600))]
    at(clock, service, T0 + 1000)
    assert status(app, heartbeat_id)["deadline"] == T0 + 1060


def test_a_window_over_a_down_heartbeat_that_stays_silent_raises_nothing_more(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    at(clock, service, T0 + 60)
    window(app, T0 + 100, T0 + 200)
    at(clock, service, T0 + 150)
    at(clock, service, T0 + 400)
    assert seen(alarms_seen) == [(3, int(T0 + 60))]
    assert status(app, heartbeat_id)["status"] == "down"


def test_events_during_a_window_refresh_as_usual(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    window(app, T0 + 10, T0 + 1000)
    for t in (T0 + 50, T0 + 120, T0 + 900):
        clock.now = t
        assert send(app)["matched"] == [heartbeat_id]
        service.tick()
    state = status(app, heartbeat_id)
    assert (state["status"], state["last_event"], state["deadline"]) == ("up", T0 + 900, T0 + 1060)
    at(clock, service, T0 + 1060)
    assert seen(alarms_seen) == [(3, int(T0 + 1060))]


def test_deleting_an_active_window_ends_it_now(app, service, clock, alarms_seen):
    pushed = create(app)  # due inside the window: pushed to its end
    waiting = create(app, body(pattern={"k": "v"}, expected_interval="10m"))  # not due yet
    window_id = window(app, T0 + 10, T0 + 1000)
    at(clock, service, T0 + 100)
    assert status(app, pushed)["deadline"] == T0 + 1060
    clock.now = T0 + 200
    app.delete(f"/api/v2/maintenance/{window_id}")
    # the end rule applies as of the deletion: a full interval from now, no less, no more
    assert [status(app, i)["deadline"] for i in (pushed, waiting)] == [T0 + 260, T0 + 800]
    assert [status(app, i)["maintenance"] for i in (pushed, waiting)] == [None, None]
    at(clock, service, T0 + 260)
    assert [event["heartbeat_id"] for event in alarms_seen] == [pushed]


def test_editing_an_active_window_ends_it_then_applies_the_new_definition(app, service, clock, alarms_seen):
    db1 = create(app, body(pattern={"component": "db1"}))
    db2 = create(app, body(pattern={"component": "db2"}, expected_interval="10m"))
    window_id = window(app, T0 + 10, T0 + 1000, pattern={"component": "db1"})
    at(clock, service, T0 + 100)
    clock.now = T0 + 200
    app.put_json(f"/api/v2/maintenance/{window_id}", {
        "name": "moved", "pattern": {"component": "db2"}, "start": local(T0 + 10), "end": local(T0 + 1000)})
    assert status(app, db1)["maintenance"] is None and status(app, db1)["deadline"] == T0 + 260
    assert status(app, db2)["maintenance"]["name"] == "moved"
    at(clock, service, T0 + 260)
    assert [event["heartbeat_id"] for event in alarms_seen] == [db1]
    at(clock, service, T0 + 600)  # db2's deadline, inside the new definition
    at(clock, service, T0 + 1000)
    at(clock, service, T0 + 1599)
    assert len(alarms_seen) == 1
    at(clock, service, T0 + 1600)
    assert [event["heartbeat_id"] for event in alarms_seen] == [db1, db2]


def test_overlapping_windows_protect_until_the_last_ends(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    window(app, T0 + 30, T0 + 200, name="first")
    second = window(app, T0 + 100, T0 + 400, name="second")
    at(clock, service, T0 + 60)
    assert alarms_seen == []
    at(clock, service, T0 + 150)
    assert status(app, heartbeat_id)["maintenance"] == {"_id": second, "name": "second", "until": T0 + 400}
    at(clock, service, T0 + 200)
    at(clock, service, T0 + 300)
    assert alarms_seen == []
    at(clock, service, T0 + 400)
    assert status(app, heartbeat_id)["deadline"] == T0 + 460
    at(clock, service, T0 + 460)
    assert seen(alarms_seen) == [(3, int(T0 + 460))]


def test_a_window_selects_by_pattern_containment(app, service, clock, alarms_seen):
    both = create(app, body(pattern={"component": "db1", "connector": "backup"}))
    one = create(app, body(pattern={"component": "db1"}))
    other = create(app, body(pattern={"component": "db2", "connector": "backup"}))
    window(app, T0 + 10, T0 + 1000, pattern={"component": "db1", "connector": "backup"})
    at(clock, service, T0 + 100)
    assert sorted(event["heartbeat_id"] for event in alarms_seen) == sorted([one, other])
    assert status(app, both)["status"] == "pending"


def test_a_heartbeat_created_inside_an_active_window_is_protected(app, service, clock, alarms_seen):
    window(app, T0, T0 + 1000)
    clock.now = T0 + 500
    heartbeat_id = create(app)
    assert status(app, heartbeat_id)["maintenance"]["until"] == T0 + 1000
    assert status(app, heartbeat_id)["deadline"] == T0 + 1060
    at(clock, service, T0 + 560)
    assert alarms_seen == []
    at(clock, service, T0 + 1000)
    at(clock, service, T0 + 1060)
    assert seen(alarms_seen) == [(3, int(T0 + 1060))]


def test_late_after_inside_a_window_warns_nothing(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(late_after="30s"))
    window(app, T0 + 10, T0 + 500)
    at(clock, service, T0 + 30)
    at(clock, service, T0 + 60)
    assert alarms_seen == [] and status(app, heartbeat_id)["status"] == "pending"
    at(clock, service, T0 + 500)
    at(clock, service, T0 + 530)
    at(clock, service, T0 + 560)
    assert seen(alarms_seen) == [(1, int(T0 + 530)), (3, int(T0 + 560))]


def test_a_late_heartbeat_stays_late_through_a_window_then_goes_down_after_it(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(late_after="30s"))
    at(clock, service, T0 + 30)
    window(app, T0 + 40, T0 + 500)
    at(clock, service, T0 + 60)
    assert status(app, heartbeat_id)["status"] == "late" and len(alarms_seen) == 1
    at(clock, service, T0 + 500)
    at(clock, service, T0 + 560)
    assert seen(alarms_seen) == [(1, int(T0 + 30)), (3, int(T0 + 560))]


def test_pause_and_resume_inside_a_window(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    window(app, T0 + 10, T0 + 500)
    clock.now = T0 + 100
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    at(clock, service, T0 + 500)
    assert status(app, heartbeat_id)["status"] == "paused"  # the end rule leaves a paused heartbeat alone
    assert status(app, heartbeat_id)["deadline"] is None
    window(app, T0 + 600, T0 + 1000)
    clock.now = T0 + 700
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/resume")
    at(clock, service, T0 + 760)  # its fresh deadline falls inside the second window
    assert alarms_seen == []
    at(clock, service, T0 + 1000)
    at(clock, service, T0 + 1060)
    assert seen(alarms_seen) == [(3, int(T0 + 1060))]


def test_a_window_is_honoured_after_a_restart(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    published = []
    with heartbeat_lite.create_app(db=path, clock=clock, on_alarm=published.append) as service:
        app = client(service)
        heartbeat_id = create(app)
        window(app, T0 + 10, T0 + 1000)
        at(clock, service, T0 + 100)
    clock.now = T0 + 110  # a clean stop of 10 s: the clock stops for it, as for every deadline
    with heartbeat_lite.create_app(db=path, clock=clock, on_alarm=published.append) as service:
        app = client(service)
        assert status(app, heartbeat_id)["maintenance"]["until"] == T0 + 1000
        assert status(app, heartbeat_id)["deadline"] == T0 + 1070
        at(clock, service, T0 + 900)
        assert published == []
        at(clock, service, T0 + 1000)
        at(clock, service, T0 + 1069)
        assert published == []
        at(clock, service, T0 + 1070)
        assert seen(published) == [(3, int(T0 + 1070))]


def test_a_window_that_ended_while_the_service_was_stopped_still_gives_its_interval(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    published = []
    with heartbeat_lite.create_app(db=path, clock=clock, on_alarm=published.append) as service:
        app = client(service)
        heartbeat_id = create(app, body(expected_interval="10m"))
        window(app, T0 + 10, T0 + 100)
        at(clock, service, T0 + 50)
    clock.now = T0 + 150  # stopped across the window's end (100 s of outage)
    with heartbeat_lite.create_app(db=path, clock=clock, on_alarm=published.append) as service:
        service.tick()
        # outage: T0 + 600 -> T0 + 700; end rule: at least end + interval = T0 + 700
        assert service.engine.status(heartbeat_id)["deadline"] == T0 + 700


@pytest.mark.sqlite_only("counts SQLite's json_each statements")
def test_the_tick_does_not_scan_heartbeats_for_windows(service, app, clock):
    for i in range(20):
        create(app, body(pattern={"k": str(i)}, expected_interval="1h"))
    window(app, T0 + 10, T0 + 100, pattern={"k": "3"})
    statements = []
    service.store.statement_hook = lambda sql, params: statements.append(sql)
    at(clock, service, T0 + 10)
    assert sum("json_each" in sql for sql in statements) == 1  # one at the start (recorded in the history)
    for t in (T0 + 50, T0 + 99):
        at(clock, service, t)
    assert sum("json_each" in sql for sql in statements) == 1  # none while nothing starts or ends
    at(clock, service, T0 + 100)
    assert sum("json_each" in sql for sql in statements) == 2  # one, at the end


def maintenance_rows(service, heartbeat_id):
    """The history rows of a heartbeat that maintenance windows wrote: (at, status)."""
    return [(entry["at"], entry["status"]) for entry in reversed(service.engine.history(heartbeat_id)["history"])
            if "maintenance" in entry]


def test_overlapping_windows_record_one_start_and_one_end_per_stretch(app, service, clock):
    ids = [create(app, body(pattern={"k": str(i)}, expected_interval="24h")) for i in range(3)]
    window(app, T0 + 10, T0 + 100)
    window(app, T0 + 50, T0 + 200)  # starts while the first covers them: nothing to record
    window(app, T0 + 20, T0 + 80, pattern={"k": "1"})  # inside both
    for t in (T0 + 10, T0 + 20, T0 + 50, T0 + 80, T0 + 100, T0 + 150, T0 + 200):
        at(clock, service, t)
    for heartbeat_id in ids:
        assert maintenance_rows(service, heartbeat_id) == [(T0 + 10, "maintenance"), (T0 + 200, "pending")]


def test_a_rule_whose_occurrences_overlap_records_one_stretch(app, service, clock):
    """Hourly occurrences two hours long: always covered, so one start, and
    one end when the window is deleted; not two rows every hour."""
    heartbeat_id = create(app, body(pattern={"k": "1"}, expected_interval="24h"))
    maintenance_id = window(app, T0 + 60, T0 + 60 + 7200, rrule="FREQ=HOURLY")
    for hour in range(12):
        at(clock, service, T0 + 60 + hour * 3600)
        at(clock, service, T0 + 61 + hour * 3600)
    app.delete(f"/api/v2/maintenance/{maintenance_id}")
    assert maintenance_rows(service, heartbeat_id) == [(T0 + 60, "maintenance"), (T0 + 61 + 11 * 3600, "pending")]


def test_a_window_starting_looks_up_the_heartbeats_it_selects_not_the_whole_table(app, service, clock):
    ids = [create(app, body(pattern={"host": f"h{i}"}, expected_interval="1h")) for i in range(20)]
    statements = []
    service.store.statement_hook = lambda sql, params: statements.append((sql, params))
    window(app, T0 - 10, T0 + 100, pattern={"host": "h3"})  # active at once: its start is recorded now
    looked_up = [params for sql, params in statements if sql.startswith("SELECT id, status, pattern FROM heartbeat")]
    assert len(looked_up) == 1 and json.loads(looked_up[0][-1]) == [ids[3]]
    assert maintenance_rows(service, ids[3]) == [(T0, "maintenance")]


def test_windows_that_select_nothing_cost_nothing_at_expiry(app, service, clock, monkeypatch, alarms_seen):
    """Expiry asks which windows cover each heartbeat falling due: found
    from the heartbeat's own pairs, never by trying every window."""
    for i in range(50):
        create(app, body(pattern={"host": f"h{i}"}, expected_interval="1m"))
    for i in range(300):
        window(app, T0 + 10, T0 + 10_000, pattern={"host": f"elsewhere{i}"})
    window(app, T0 + 10, T0 + 10_000, pattern={"host": "h7"})
    at(clock, service, T0 + 11)
    tried = []
    selects = heartbeat_lite.MaintenanceWindow.selects
    monkeypatch.setattr(heartbeat_lite.MaintenanceWindow, "selects",
                        lambda window, pattern: tried.append(window.id) or selects(window, pattern))
    at(clock, service, T0 + 61)
    assert len(tried) <= 50  # the one window selecting h7, tried as each heartbeat falls due
    assert len(alarms_seen) == 49  # all but h7


###############################################################################
# Daylight saving time (Europe/Paris: last Sundays of March and October 2026)
###############################################################################


def paris(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo("Europe/Paris")).timestamp()


def utc(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


def paris_window(start="2026-03-22T02:30:00", end="2026-03-22T03:30:00", rrule="FREQ=WEEKLY;BYDAY=SU"):
    row = {"id": "w", "name": "n", "pattern": "{}", "start_local": start, "end_local": end,
           "timezone": "Europe/Paris", "rrule": rrule, "created": 0, "updated": 0}
    return heartbeat_lite.MaintenanceWindow(row)


def test_an_occurrence_in_the_spring_gap_is_skipped():
    weekly = paris_window()
    assert weekly.occurrence_at(utc("2026-03-22T01:45:00")) == (utc("2026-03-22T01:30:00"), utc("2026-03-22T02:30:00"))
    # 29 March 2026: 02:00 jumps to 03:00, 02:30 does not exist: no occurrence that day
    for moment in ("2026-03-29T00:00:00", "2026-03-29T00:45:00", "2026-03-29T01:15:00", "2026-03-29T01:45:00"):
        assert weekly.occurrence_at(utc(moment)) is None, moment
    # the next Sunday, summer time: 02:30 CEST is 00:30 UTC
    assert weekly.occurrence_at(utc("2026-04-05T00:45:00")) == (utc("2026-04-05T00:30:00"), utc("2026-04-05T01:30:00"))
    assert weekly.next_boundary(utc("2026-03-22T03:00:00")) == utc("2026-04-05T00:30:00")


def test_an_ambiguous_occurrence_in_the_autumn_is_the_first_one():
    weekly = paris_window(start="2026-10-18T02:30:00", end="2026-10-18T03:30:00")
    # 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice, the first (CEST, 00:30 UTC) counts
    assert weekly.occurrence_at(utc("2026-10-25T00:45:00")) == (utc("2026-10-25T00:30:00"), utc("2026-10-25T01:30:00"))
    assert weekly.occurrence_at(utc("2026-10-25T01:45:00")) is None
    # winter time afterwards: 02:30 CET is 01:30 UTC
    assert weekly.occurrence_at(utc("2026-11-01T01:45:00")) == (utc("2026-11-01T01:30:00"), utc("2026-11-01T02:30:00"))


def test_occurrences_keep_the_wall_time_and_the_exact_length_across_the_change():
    nightly = paris_window(start="2026-03-27T01:00:00", end="2026-03-27T04:00:00", rrule="FREQ=DAILY")
    for day in ("27", "28", "29", "30"):  # 3 h each; 01:00 local is 00:00 UTC in winter, 23:00 UTC in summer
        start = paris(f"2026-03-{day}T01:00:00")
        assert nightly.occurrence_at(start + 1) == (start, start + 3 * 3600), day
    assert paris("2026-03-30T01:00:00") - paris("2026-03-28T01:00:00") == 47 * 3600


@pytest.mark.parametrize("rule, reason", [
    ("FREQ=HOURLY;FREQ=SECONDLY", "rrule: FREQ must be HOURLY or slower"),  # dateutil keeps the last FREQ
    ("FREQ=SECONDLY;FREQ=HOURLY;FREQ=MINUTELY", "rrule: FREQ must be HOURLY or slower"),
    ("FREQ=HOURLY;BYMINUTE=0,30", "rrule: FREQ must be HOURLY or slower"),
    ("FREQ=DAILY;BYSECOND=1,2", "rrule: FREQ must be HOURLY or slower"),
    ("freq=daily;byminute=0,1,2,3", "rrule: FREQ must be HOURLY or slower"),
    ("FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=30", "rrule: no occurrence within 10 years of start"),
    ("FREQ=DAILY;BYMONTH=4;BYMONTHDAY=31", "rrule: no occurrence within 10 years of start"),
    ("FREQ=YEARLY;BYEASTER=372", "rrule: BYEASTER must be between -80 and 248"),
    ("FREQ=YEARLY;BYEASTER=-200", "rrule: BYEASTER must be between -80 and 248"),
    ("FREQ=DAILY;COUNT=1001", "rrule: COUNT must be at most 1000"),
    ("FREQ=HOURLY;INTERVAL=0", "rrule: INTERVAL must be from 1 to 1000"),
    ("FREQ=HOURLY;INTERVAL=1000000000", "rrule: INTERVAL must be from 1 to 1000"),
    ("FREQ=HOURLY;BYHOUR=25", "rrule: not a valid RFC 5545 recurrence rule"),
])
def test_a_rule_faster_than_hourly_or_without_occurrences_is_refused(app, rule, reason):
    answer = app.post_json("/api/v2/maintenance", {**WEEKLY, "rrule": rule}, status=400).json
    assert answer["description"] == "invalid maintenance payload."
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/maintenance").json == []


def test_a_sparse_but_real_rule_is_accepted(app):
    for rule in ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=29",
                 "FREQ=YEARLY;BYEASTER=-2", "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=22,23"):
        app.post_json("/api/v2/maintenance", {**WEEKLY, "rrule": rule})


def test_one_search_for_an_occurrence_scans_a_bounded_calendar():
    """dateutil scans an impossible rule to the year 9999 in one step; the
    bounded rule gives up after RRULE_SEARCH_MONTHS months (this fails,
    slowly, if dateutil stops reading _bynweekday once per month)."""
    start = datetime.datetime(2026, 1, 1)
    for text in ("FREQ=HOURLY;BYMONTH=2;BYMONTHDAY=30", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30",
                 "FREQ=WEEKLY;BYMONTH=4;BYMONTHDAY=31;INTERVAL=3"):
        rule = heartbeat_lite.BoundedRule.of(heartbeat_lite.dateutil.rrule.rrulestr(text, dtstart=start))
        reads = []
        original = type(rule)._bynweekday.fget

        class Counting(heartbeat_lite.BoundedRule):
            @property
            def _bynweekday(self):
                reads.append(1)
                return original(self)

            @_bynweekday.setter
            def _bynweekday(self, value):
                self._nth_weekdays = value

        counted = Counting.of(rule)
        reads.clear()
        with pytest.raises(heartbeat_lite.RuleTooSparse):
            next(counted.bounded())
        assert len(reads) <= heartbeat_lite.RRULE_SEARCH_MONTHS + 1, text


@pytest.mark.parametrize("rule", [
    "FREQ=HOURLY", "FREQ=HOURLY;INTERVAL=5", "FREQ=HOURLY;INTERVAL=7;BYHOUR=3,10,17", "FREQ=DAILY;INTERVAL=3",
    "FREQ=DAILY;BYHOUR=1,13", "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE", "FREQ=WEEKLY;INTERVAL=3;WKST=SU;BYDAY=SA,SU",
    "FREQ=WEEKLY", "FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=31", "FREQ=MONTHLY;BYDAY=-1FR", "FREQ=MONTHLY",
    "FREQ=YEARLY;INTERVAL=4;BYMONTH=2;BYMONTHDAY=29", "FREQ=YEARLY", "FREQ=YEARLY;BYWEEKNO=20;BYDAY=MO",
    "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=-1", "FREQ=DAILY;UNTIL=20261201T000000", "FREQ=DAILY;COUNT=500",
])
def test_occurrences_worked_out_from_near_now_are_those_of_the_whole_rule(rule):
    start = datetime.datetime(2024, 2, 29, 22, 30)  # a Thursday in a leap year, late, at half past
    row = {"id": "w", "name": "n", "pattern": "{}", "start_local": start.isoformat(),
           "end_local": (start + datetime.timedelta(minutes=20)).isoformat(), "timezone": "Europe/Paris",
           "rrule": rule, "created": 0, "updated": 0}
    zone = zoneinfo.ZoneInfo("Europe/Paris")
    for now in (utc("2026-12-06T10:17:00"), utc("2026-03-29T01:30:00"), utc("2024-03-01T00:00:00")):
        window = heartbeat_lite.MaintenanceWindow(row, now)
        whole = heartbeat_lite.dateutil.rrule.rrulestr(rule, dtstart=start)
        expected = [heartbeat_lite.local_timestamp(local, zone)
                    for local in whole.between(datetime.datetime.fromtimestamp(now - 86400, zone).replace(tzinfo=None),
                                               datetime.datetime.fromtimestamp(now + 90 * 86400, zone).replace(tzinfo=None),
                                               inc=True)]
        expected = [t for t in expected if t is not None]
        got = []
        t = now - 86400 + 1
        while True:
            boundary = window.next_boundary(t)
            if boundary is None or boundary > now + 90 * 86400:
                break
            occurrence = window.occurrence_at(boundary)
            if occurrence is not None and occurrence[0] == boundary:
                got.append(boundary)
            t = boundary
        assert got == [t for t in expected if t > now - 86400 + 1], (rule, now)


def test_a_window_started_long_ago_is_worked_out_from_near_now():
    """An hourly window started ten years ago keeps a day of occurrences, not ten years of them."""
    now = utc("2026-12-06T10:17:00")
    row = {"id": "w", "name": "n", "pattern": "{}", "start_local": "2016-12-06T10:00:00",
           "end_local": "2016-12-06T10:30:00", "timezone": "UTC", "rrule": "FREQ=HOURLY", "created": 0, "updated": 0}
    window = heartbeat_lite.MaintenanceWindow(row, now)
    assert len(window._starts) <= 24 + 2
    assert window.occurrence_at(now) == (utc("2026-12-06T10:00:00"), utc("2026-12-06T10:30:00"))
    for hour in range(2000):  # time goes on: what is kept stays bounded
        window.occurrence_at(now + hour * 3600)
    assert len(window._starts) <= heartbeat_lite.MAINTENANCE_KEPT_STARTS + 1


def test_windows_are_worked_out_before_the_engine_lock(app, service, monkeypatch):
    """Creating, replacing or loading a window computes its occurrences
    outside the engine's lock: intake never waits for them."""
    held = []
    bounded = heartbeat_lite.BoundedRule.bounded

    def spying(rule):
        held.append(service.engine.core.lock._is_owned())
        return bounded(rule)

    monkeypatch.setattr(heartbeat_lite.BoundedRule, "bounded", spying)
    maintenance_id = app.post_json("/api/v2/maintenance", {**WEEKLY, "rrule": "FREQ=HOURLY"}).json["description"]
    app.put_json(f"/api/v2/maintenance/{maintenance_id}", {**WEEKLY, "rrule": "FREQ=DAILY"})
    service.engine.lifecycle.loaded = False
    service.engine.lifecycle.load()
    assert held and not any(held), held


def test_the_engine_skips_a_gap_occurrence_end_to_end(clock):
    clock.now = utc("2026-03-28T23:00:00")
    published = []
    with heartbeat_lite.create_app(clock=clock, on_alarm=published.append) as service:
        app = client(service)
        app.post_json("/api/v2/maintenance", {"name": "night", "pattern": {}, "start": "2026-03-22T02:30:00",
                                               "end": "2026-03-22T03:30:00", "timezone": "Europe/Paris",
                                               "rrule": "FREQ=WEEKLY;BYDAY=SU"})
        create(app, body(expected_interval="2h"))  # due at 01:00 UTC, 03:00 CEST: no window that night
        at(clock, service, utc("2026-03-29T01:00:00"))
        assert len(published) == 1


###############################################################################
# Schema version 2
###############################################################################


@pytest.mark.sqlite_only("builds a version 1 SQLite file")
def test_a_version_1_database_is_migrated_keeping_heartbeats_and_states(tmp_path, clock):
    path = str(tmp_path / "v1.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1)
        columns = "id, name, author, description, output, pattern, expected_interval, interval_seconds, created, " \
                  "updated, status, refreshed, last_event, alarm_since"
        rows = [("a0000000-0000-4000-8000-000000000001", "up one", "u", "", "o", '{"k":"a"}', "1m", 60, 1, 1,
                 "up", T0, T0, None),
                ("a0000000-0000-4000-8000-000000000002", "down one", "u", "", "o", '{"k":"b"}', "1m", 60, 1, 1,
                 "down", T0 - 100, None, T0 - 40)]
        conn.executemany(f"INSERT INTO heartbeat ({columns}) VALUES ({', '.join('?' * 14)})", rows)
        conn.execute("INSERT INTO meta (key, value) VALUES ('alive_at', ?)", (T0,))
    conn.close()
    published = []
    with heartbeat_lite.create_app(db=path, clock=clock, on_alarm=published.append) as service:
        app = client(service)
        assert [doc["name"] for doc in app.get("/api/v2/heartbeat").json] == ["down one", "up one"]
        assert [status(app, row[0])["status"] for row in rows] == ["up", "down"]
        assert [alarm["heartbeat_name"] for alarm in app.get("/api/v2/alarms").json] == ["down one"]
        app.post(f"/api/v2/heartbeat/{rows[0][0]}/pause")  # the new statuses fit the new CHECK
        window(app, T0, T0 + 10)
        assert app.post_json("/api/v2/heartbeat", body(pattern={"k": "a"}), status=400).json["description"] == \
            "heartbeat pattern already exists"  # the unique index came back
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                  "AND tbl_name = 'heartbeat' AND name NOT LIKE 'sqlite_%'")}
        assert indexes == {"heartbeat_pattern", "heartbeat_newest", "heartbeat_due", "heartbeat_alarms",
                           "heartbeat_slug", "heartbeat_push_token"}
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'heartbeat_v1'").fetchone()[0] == 0
    conn.close()


def test_a_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "v1.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V1)
    conn.close()
    monkeypatch.setitem(heartbeat_lite._MIGRATIONS, 1, (heartbeat_lite._MIGRATIONS[1][0], "SELECT no_such_function();"))
    service = heartbeat_lite.create_app(db=path)  # logged, answers database errors
    service.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'heartbeat_v1'").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'maintenance'").fetchone()[0] == 0
    conn.close()
    monkeypatch.undo()
    with heartbeat_lite.create_app(db=path) as service:
        assert client(service).get("/api/v2/heartbeat").json == []


def test_the_schema_stays_idempotent(tmp_path):
    path = str(tmp_path / "hb.db")
    heartbeat_lite.create_app(db=path).close()
    schema = heartbeat_lite.read_schema("schema.sql")
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
        conn.executescript(schema)
    conn.close()


@pytest.mark.sqlite_only("reads SQLite's EXPLAIN QUERY PLAN of the file")
def test_the_due_index_serves_expiry_with_late_after(tmp_path):
    path = str(tmp_path / "hb.db")
    heartbeat_lite.create_app(db=path).close()
    with sqlite3.connect(path) as conn:
        plan = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM heartbeat WHERE status NOT IN ('down', 'paused') AND due <= 1"))
        assert "SEARCH heartbeat USING INDEX heartbeat_due" in plan
    conn.close()


###############################################################################
# Operator pages and the OpenAPI document
###############################################################################


def test_the_status_page_shows_late_paused_and_maintenance(app, service, clock):
    late = create(app, body(name="late one", late_after="30s"))
    paused = create(app, body(name="paused one", pattern={"k": "p"}))
    covered = create(app, body(name="covered one", pattern={"k": "m"}))
    app.post(f"/api/v2/heartbeat/{paused}/pause")
    window(app, T0, T0 + 3600, pattern={"k": "m"}, name="db <upgrade>")
    at(clock, service, T0 + 40)
    page = app.get("/").text
    assert '<span class="badge late">late</span>' in page
    assert '<span class="badge paused">paused</span>' in page
    assert "maintenance: db &lt;upgrade&gt;" in page and "db <upgrade>" not in page
    assert 'datetime="2020-12-11T11:00:14Z"' in page  # the window's end
    for status in ("late", "paused", "maintenance"):  # the filters, with their counts
        assert re.search(rf"<span class=\"dot s-{status}\"></span>{status} 1</a>", page), status
    assert "maintenance: db &lt;upgrade&gt;" in app.get("/?status=maintenance").text
    assert "late one" not in app.get("/?status=maintenance").text
    assert late and covered


def test_metrics_tell_every_state_apart(app, service, clock):
    ids = {"pending": create(app, body(name="pending", pattern={"k": "pending"}, expected_interval="1h")),
           "up": create(app, body(name="up", pattern={"k": "up"}, expected_interval="1h")),
           "late": create(app, body(name="late", pattern={"k": "late"}, late_after="30s")),
           "down": create(app, body(name="down", pattern={"k": "down"}, expected_interval="30s")),
           "paused": create(app, body(name="paused", pattern={"k": "paused"}))}
    send(app, {"k": "up"})
    app.post(f"/api/v2/heartbeat/{ids['paused']}/pause")
    window(app, T0 + 35, T0 + 3600, pattern={"k": "late"})
    at(clock, service, T0 + 40)
    text = app.get("/metrics").text
    for name, heartbeat_id in ids.items():
        for state in heartbeat_lite.STATUSES:
            line = f'heartbeat_lite_heartbeat_status{{id="{heartbeat_id}",name="{name}",status="{state}"}}'
            assert f"{line} {int(state == name)}\n" in text, (name, state)
        in_maintenance = int(name == "late")
        assert f'heartbeat_lite_heartbeat_in_maintenance{{id="{heartbeat_id}",name="{name}"}} {in_maintenance}\n' \
            in text
    for state in heartbeat_lite.STATUSES:
        assert f'heartbeat_lite_heartbeats{{status="{state}"}} 1\n' in text


def test_real_maintenance_answers_match_the_openapi_description(clock):
    spec = heartbeat_lite.openapi_document()
    with heartbeat_lite.create_app(clock=clock) as service:
        call = Recorder(service)
        hid = call("POST", "/api/v2/heartbeat", 200, body=json.dumps(body(late_after="30s")).encode()).json[
            "description"]
        call("GET", f"/api/v2/heartbeat/{hid}", 200)
        mid = call("POST", "/api/v2/maintenance", 200, body=json.dumps(WEEKLY).encode()).json["description"]
        call("POST", "/api/v2/maintenance", 200, body=json.dumps(
            {"name": "now", "pattern": {}, "start": local(T0 - 10), "end": local(T0 + 100)}).encode())
        call("POST", "/api/v2/maintenance", 400, body=b'{"name": 1}')
        call("POST", "/api/v2/maintenance", 413, body=b"x" * (heartbeat_lite.MAX_MAINTENANCE_BODY_BYTES + 1))
        call("GET", "/api/v2/maintenance", 200)
        call("GET", "/api/v2/maintenance?active=1", 200)
        call("GET", f"/api/v2/maintenance/{mid}", 200)
        call("GET", "/api/v2/maintenance/nope", 404)
        call("PUT", f"/api/v2/maintenance/{mid}", 200, body=json.dumps(WEEKLY).encode())
        call("PUT", f"/api/v2/maintenance/{mid}", 400, body=b"{}")
        call("PUT", "/api/v2/maintenance/nope", 404, body=json.dumps(WEEKLY).encode())
        call("GET", f"/api/v2/heartbeat/{hid}/status", 200)
        call("POST", f"/api/v2/heartbeat/{hid}/pause", 200)
        call("GET", f"/api/v2/heartbeat/{hid}/status", 200)
        call("POST", "/api/v2/heartbeat/nope/pause", 404)
        call("POST", f"/api/v2/heartbeat/{hid}/resume", 200)
        call("POST", "/api/v2/heartbeat/nope/resume", 404)
        clock.advance(31)
        service.tick()
        call("GET", "/api/v2/alarms", 200)
        call("DELETE", f"/api/v2/maintenance/{mid}", 200)
        call("DELETE", f"/api/v2/maintenance/{mid}", 404)
    for method, path, response in call.answers:
        answer = described_answer(spec, method, path.split("?")[0], response.status_int)
        content = lookup(spec, answer)["content"]
        assert "application/json" in content, (method, path)
        assert schema_errors(spec, answer + pointer("content", "application/json", "schema")[1:],
                             response.json) == [], (method, path, response.json)
