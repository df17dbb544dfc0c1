"""Tests for heartbeat_lite: webtest against the WSGI app with a fake clock,
plus a few real-server tests over HTTP."""

import base64
import concurrent.futures
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException

import openapi_spec_validator
import pytest
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

import heartbeat_lite
from heartbeat_lite import (
    MAX_INTERVAL_SECONDS,
    MAX_NAME_CHARS,
    MAX_PATTERN_ENTRIES,
    MAX_PATTERN_ITEM_CHARS,
    MAX_TEXT_CHARS,
)
from testing_support import (
    C01,
    DB_ERROR,
    HERE,
    HOSTILE,
    INVALID,
    SEED_BODY,
    T0,
    FakeClock,
    LockHolder,
    Receiver,
    Recorder,
    _basic,
    body,
    client,
    create,
    described_answer,
    http,
    lookup,
    new_heartbeat,
    parse_prometheus,
    pointer,
    run_cli,
    schema_errors,
    send,
    wait_until,
)


class SteppedClock(FakeClock):
    """Real time, plus the steps the test adds: for server mode, where the
    background threads wait in real time."""

    def __init__(self):
        super().__init__(0.0)

    def __call__(self):
        return time.time() + self.now


def down_heartbeat(service, clock, **changes):
    """Create a heartbeat (the seed's body with ``changes``), move the clock
    to its deadline and tick: it goes down. Return its id."""
    heartbeat_id = new_heartbeat(service, **changes)
    clock.now = service.engine.status(heartbeat_id)["deadline"]
    service.tick()
    assert service.engine.status(heartbeat_id)["status"] == "down"
    return heartbeat_id


def _broken_statement(sql, params):
    """A ``Store.statement_hook`` for a database that fails every statement."""
    raise sqlite3.OperationalError("disk I/O error")


def start_server(*args, env=None):
    """Start `python heartbeat_lite.py` on a free port; return (process, base URL)."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "--port", "0", *args],
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    for line in process.stderr:  # the start-up line says where it listens
        if "listening on " in line:
            return process, line.split("listening on ")[1].split()[0]
    process.kill()
    raise AssertionError("the server did not start")


###############################################################################
# Validation
###############################################################################


def post_invalid(app, raw):
    """POST a raw body, expect the documented 400, return the reasons."""
    response = app.post("/api/v2/heartbeat", raw, content_type="application/json", status=400)
    assert response.content_type == "application/json"
    assert {k: response.json[k] for k in ("name", "description")} == INVALID
    assert set(response.json) <= {"name", "description", "errors"}
    assert app.get("/api/v2/heartbeat").json == []
    return response.json.get("errors", [])


INVALID_DOCS = {
    "array": [SEED_BODY],
    "string": "heartbeat",
    "null": None,
    "name missing": body(name=None),
    "name empty": body(name=""),
    "name blank": body(name=" \t\n"),
    "name too long": body(name="n" * (MAX_NAME_CHARS + 1)),
    "name number": body(name=1),
    "name null": dict(SEED_BODY, name=None),
    "author too long": body(author="a" * (MAX_NAME_CHARS + 1)),
    "author number": body(author=5),
    "description too long": body(description="d" * (MAX_TEXT_CHARS + 1)),
    "description object": body(description={}),
    "output too long": body(output="o" * (MAX_TEXT_CHARS + 1)),
    "pattern missing": body(pattern=None),
    "pattern empty": body(pattern={}),
    "pattern too many entries": body(pattern={f"k{i}": "v" for i in range(MAX_PATTERN_ENTRIES + 1)}),
    "pattern empty key": body(pattern={"": "v"}),
    "pattern key too long": body(pattern={"k" * (MAX_PATTERN_ITEM_CHARS + 1): "v"}),
    "pattern value too long": body(pattern={"k": "v" * (MAX_PATTERN_ITEM_CHARS + 1)}),
    "pattern value number": body(pattern={"k": 1}),
    "pattern value null": body(pattern={"k": None}),
    "pattern value object": body(pattern={"k": {"nested": "v"}}),
    "pattern list": body(pattern=[["k", "v"]]),
    "pattern string": body(pattern="connector=connect"),
    "interval missing": body(expected_interval=None),
    "interval empty": body(expected_interval=""),
    "interval zero": body(expected_interval="0s"),
    "interval leading zero": body(expected_interval="01m"),
    "interval days": body(expected_interval="1d"),
    "interval decimal": body(expected_interval="1.5h"),
    "interval space": body(expected_interval="1 m"),
    "interval trailing newline": body(expected_interval="1m\n"),
    "interval unit only": body(expected_interval="m"),
    "interval number": body(expected_interval=60),
    "interval negative": body(expected_interval="-1m"),
    "interval over a year in h": body(expected_interval="8761h"),
    "interval over a year in s": body(expected_interval=f"{MAX_INTERVAL_SECONDS + 1}s"),
    "interval huge": body(expected_interval="9" * 5000 + "s"),
    "unknown key": body(enabled=True),
}


@pytest.mark.parametrize("doc", INVALID_DOCS.values(), ids=INVALID_DOCS.keys())
def test_it_rejects_an_invalid_heartbeat(app, doc):
    assert post_invalid(app, json.dumps(doc))


INVALID_RAW = {
    "empty body": b"",
    "not json": b"name=Heartbeat",
    "truncated": json.dumps(SEED_BODY).encode()[:-1],
    "invalid utf-8": json.dumps(SEED_BODY).encode().replace(b"Heartbeat", b"Heart\xffbeat"),
    "bom": b"\xef\xbb\xbf" + json.dumps(SEED_BODY).encode(),
    "lone surrogate": json.dumps(SEED_BODY).replace("Heartbeat", "\\ud800").encode(),
    "duplicate key": b'{"name": "a", "name": "b", "pattern": {"k": "v"}, "expected_interval": "1m"}',
    "nan": b'{"name": "a", "pattern": {"k": "v"}, "expected_interval": "1m", "_id": NaN}',
    "deeply nested": b"[" * 30_000 + b"]" * 30_000,  # 60 KB: under the body limit
}


@pytest.mark.parametrize("raw", INVALID_RAW.values(), ids=INVALID_RAW.keys())
def test_it_rejects_a_malformed_body(app, raw):
    post_invalid(app, raw)


def test_parse_json_survives_hostile_nesting():
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        with pytest.raises(heartbeat_lite.Invalid, match="nested too deeply"):
            heartbeat_lite.parse_json(raw)


def test_it_gives_every_reason(app):
    reasons = post_invalid(app, json.dumps({"name": " ", "pattern": {}, "expected_interval": "1d"}))
    assert "name: must not be blank" in reasons
    assert any(r.startswith("pattern:") for r in reasons)
    assert "expected_interval: must look like 30s, 5m or 2h" in reasons


VALID_EDGES = {
    "1s": body(expected_interval="1s"),
    "8760h": body(expected_interval="8760h"),
    "525600m": body(expected_interval="525600m"),
    "a year in seconds": body(expected_interval=f"{MAX_INTERVAL_SECONDS}s"),
    "32-key pattern": body(pattern={f"k{i}": "v" for i in range(MAX_PATTERN_ENTRIES)}),
    "255-char pattern key and value": body(pattern={"k" * MAX_PATTERN_ITEM_CHARS: "v" * MAX_PATTERN_ITEM_CHARS}),
    "empty pattern value": body(pattern={"k": ""}),
    "255-char name": body(name="n" * MAX_NAME_CHARS),
    "255-char author": body(author="a" * MAX_NAME_CHARS),
    "4096-char description and output": body(description="d" * MAX_TEXT_CHARS, output="o" * MAX_TEXT_CHARS),
    "name with spaces around": body(name="  padded  "),
    "ignored _id, created, updated": body(_id="not-mine", created="yesterday", updated=None),
}


@pytest.mark.parametrize("doc", VALID_EDGES.values(), ids=VALID_EDGES.keys())
def test_it_accepts_edge_cases(app, doc):
    heartbeat_id = create(app, doc)
    stored = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert stored["_id"] == heartbeat_id
    for field in ("name", "author", "pattern", "expected_interval", "description", "output"):
        if field in doc:
            assert stored[field] == doc[field]


def test_a_get_body_can_be_sent_back(app, clock):
    first = app.get(f"/api/v2/heartbeat/{create(app)}").json
    app.delete(f"/api/v2/heartbeat/{first['_id']}")
    clock.advance(10)
    second_id = create(app, first)
    second = app.get(f"/api/v2/heartbeat/{second_id}").json
    assert second_id != first["_id"]
    assert second["created"] == first["created"] + 10
    assert {k: v for k, v in second.items() if k not in ("_id", "created", "updated")} == \
        {k: v for k, v in first.items() if k not in ("_id", "created", "updated")}


###############################################################################
# CRUD (the seed's routes)
###############################################################################


def test_create_answers_the_documented_body(app):
    response = app.post_json("/api/v2/heartbeat", SEED_BODY)
    assert response.status_int == 200
    assert response.content_type == "application/json"
    assert response.json["name"] == "heartbeat created"
    assert set(response.json) == {"name", "description"}
    heartbeat_id = response.json["description"]
    assert heartbeat_id.count("-") == 4 and heartbeat_id[14] == "4"  # UUID4


def test_get_returns_the_seed_document(app, clock):
    heartbeat_id = create(app)
    response = app.get(f"/api/v2/heartbeat/{heartbeat_id}")
    assert response.json == {
        "_id": heartbeat_id,
        "name": "Heartbeat",
        "author": "créateur",
        "description": "Ceci est une description",
        "pattern": {"connector": "connect", "connector_name": "c01"},
        "expected_interval": "1m",
        "output": "Une note personnalisable",
        "created": int(T0),
        "updated": int(T0),
    }


def test_non_ascii_is_sent_as_is(app):
    heartbeat_id = create(app, body(name="Battement ♥ 心跳"))
    raw = app.get(f"/api/v2/heartbeat/{heartbeat_id}").body
    assert "créateur".encode("utf-8") in raw
    assert "Battement ♥ 心跳".encode("utf-8") in raw


def test_author_defaults_to_the_authenticated_user():
    with heartbeat_lite.create_app(users={"alice": "s3cret"}) as service:
        app = client(service, ("alice", "s3cret"))
        heartbeat_id = create(app, body(author=None))
        assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["author"] == "alice"


def test_it_parses_json_whatever_the_content_type(app):
    response = app.post("/api/v2/heartbeat", json.dumps(SEED_BODY),
                        content_type="application/x-www-form-urlencoded")
    assert response.json["name"] == "heartbeat created"


def test_a_pattern_exists_whatever_the_key_order(app):
    create(app)
    reversed_pattern = {"connector_name": "c01", "connector": "connect"}
    response = app.post_json("/api/v2/heartbeat", body(name="other", pattern=reversed_pattern), status=400)
    assert response.json == {"name": "", "description": "heartbeat pattern already exists"}
    assert len(app.get("/api/v2/heartbeat").json) == 1


def test_list_is_newest_first(app, clock):
    first = create(app)
    clock.advance(68)
    second = create(app, body(name="Heartbeat 2", pattern={"connector": "connect", "connector_name": "c02"}))
    third = create(app, body(name="Heartbeat 3", pattern={"connector": "connect", "connector_name": "c03"}))
    listed = app.get("/api/v2/heartbeat").json
    assert [h["_id"] for h in listed] == [third, second, first]  # same second: last created first
    assert listed[2] == app.get(f"/api/v2/heartbeat/{first}").json


def test_list_is_empty_at_first(app):
    assert app.get("/api/v2/heartbeat").json == []


def test_delete_removes_it(app):
    heartbeat_id = create(app)
    response = app.delete(f"/api/v2/heartbeat/{heartbeat_id}")
    assert response.json == {"name": "heartbeat removed", "description": heartbeat_id}
    app.get(f"/api/v2/heartbeat/{heartbeat_id}", status=404)
    assert app.get("/api/v2/heartbeat").json == []
    create(app)  # the pattern is free again


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("heartbeat_id", ["cf7097b6-71ba-48db-a749-e9474aa70c93", "not-a-uuid", "%C3%A9t%C3%A9"])
def test_an_unknown_id_is_not_found_with_the_id_as_name(app, method, heartbeat_id):
    response = getattr(app, method)(f"/api/v2/heartbeat/{heartbeat_id}", status=404)
    expected_name = "été" if heartbeat_id.startswith("%") else heartbeat_id
    assert response.json == {"name": expected_name, "description": "heartbeat not found"}


def test_every_route_answers_with_and_without_trailing_slash(app):
    for suffix in ("", "/"):
        heartbeat_id = app.post_json("/api/v2/heartbeat" + suffix, body()).json["description"]
        assert app.get("/api/v2/heartbeat" + suffix).status_int == 200
        assert app.get(f"/api/v2/heartbeat/{heartbeat_id}{suffix}").json["_id"] == heartbeat_id
        assert app.delete(f"/api/v2/heartbeat/{heartbeat_id}{suffix}").status_int == 200


def test_two_services_share_nothing():
    with heartbeat_lite.create_app() as one, heartbeat_lite.create_app(users={"bob": "pw"}) as two:
        app_one = client(one)
        app_two = client(two, ("bob", "pw"))
        create(app_one)
        assert app_two.get("/api/v2/heartbeat").json == []
        app_two.get("/api/v2/heartbeat", extra_environ={"HTTP_AUTHORIZATION": _basic("root", "root")},
                    status=401)


###############################################################################
# Events
###############################################################################


def status_of(app, heartbeat_id):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json


def test_a_matching_event_refreshes_the_heartbeat(app, clock):
    heartbeat_id = create(app)
    assert status_of(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "pending", "last_event": None,
        "deadline": T0 + 60, "alarm_since": None, "maintenance": None,
    }
    clock.advance(10.5)
    answer = send(app, {**C01, "component": "srv1", "resource": "cpu", "timestamp": 1})
    assert answer == {"received": 1, "matched": [heartbeat_id]}
    assert status_of(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "up", "last_event": T0 + 10.5,
        "deadline": T0 + 70.5, "alarm_since": None, "maintenance": None,
    }


def test_status_after_a_refresh_on_a_whole_second(app, clock):
    heartbeat_id = create(app)
    clock.advance(10)  # T0 is a whole second: SQLite stores the refresh as an integer
    send(app, C01)
    assert status_of(app, heartbeat_id)["deadline"] == T0 + 70


NON_MATCHING = {
    "missing key": {"connector": "connect"},
    "other value": {"connector": "connect", "connector_name": "c02"},
    "number against string": {"connector": "connect", "connector_name": 1},
    "nested value": {"connector": "connect", "connector_name": {"c01": "c01"}},
    "list value": {"connector": "connect", "connector_name": ["c01"]},
    "null value": {"connector": "connect", "connector_name": None},
    "case differs": {"connector": "Connect", "connector_name": "c01"},
    "empty event": {},
}


@pytest.mark.parametrize("event", NON_MATCHING.values(), ids=NON_MATCHING.keys())
def test_a_non_matching_event_refreshes_nothing(app, clock, event):
    heartbeat_id = create(app)
    clock.advance(1)
    assert send(app, event) == {"received": 1, "matched": []}
    assert status_of(app, heartbeat_id)["status"] == "pending"


def test_one_event_matches_several_heartbeats(app):
    both = create(app, body(pattern={"a": "1", "b": "2"}))
    only_a = create(app, body(pattern={"a": "1"}))
    only_b = create(app, body(pattern={"b": "2"}))
    other = create(app, body(pattern={"a": "2"}))
    answer = send(app, {"a": "1", "b": "2", "c": "3"})
    assert answer["received"] == 1
    assert sorted(answer["matched"]) == sorted([both, only_a, only_b])
    assert status_of(app, other)["status"] == "pending"


def test_a_batch_reports_each_heartbeat_once(app):
    heartbeat_id = create(app)
    assert send(app, [C01, {"x": "y"}, C01]) == {"received": 3, "matched": [heartbeat_id]}
    assert send(app, []) == {"received": 0, "matched": []}


INVALID_EVENTS = {
    "a string": "event",
    "a number": 1,
    "null": None,
    "one bad element": [C01, 5],
    "a nested array": [[C01]],
}


@pytest.mark.parametrize("payload", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_an_invalid_event_body_applies_nothing(app, payload):
    heartbeat_id = create(app)
    answer = send(app, payload, status=400)
    assert {k: answer[k] for k in ("name", "description")} == {"name": "", "description": "invalid event payload."}
    assert status_of(app, heartbeat_id)["status"] == "pending"


def test_a_malformed_event_body_applies_nothing(app):
    heartbeat_id = create(app)
    response = app.post("/api/v2/event", json.dumps([C01]).encode()[:-1], status=400)
    assert response.json["description"] == "invalid event payload."
    assert status_of(app, heartbeat_id)["status"] == "pending"


def test_matching_follows_creation_and_deletion(app, clock):
    first = create(app)
    app.delete(f"/api/v2/heartbeat/{first}")
    assert send(app, C01)["matched"] == []
    second = create(app)
    assert send(app, C01)["matched"] == [second]


def test_the_pattern_index_survives_a_restart(restart):
    with restart() as service:
        heartbeat_id = create(client(service))
    with restart() as service:
        assert service.engine.ingest([C01]) == [heartbeat_id]


###############################################################################
# Expiry and alarms
###############################################################################


def test_pending_goes_down_exactly_at_the_deadline(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    clock.now = T0 + 59.999
    assert service.tick() == pytest.approx(0.001, abs=1e-6)
    assert status_of(app, heartbeat_id)["status"] == "pending"
    assert alarms_seen == [] and app.get("/api/v2/alarms").json == []
    clock.now = T0 + 60
    assert service.tick() == heartbeat_lite.ALIVE_INTERVAL_SECONDS  # nothing left to go down
    assert status_of(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "down", "last_event": None,
        "deadline": T0 + 60, "alarm_since": T0 + 60, "maintenance": None,
    }
    alarm = {
        "connector": "heartbeat", "connector_name": "heartbeat", "event_type": "check",
        "source_type": "resource", "component": "heartbeats",
        "resource": "connector:connect.connector_name:c01",
        "state": 3, "output": "Une note personnalisable", "timestamp": int(T0 + 60),
        "heartbeat_id": heartbeat_id, "heartbeat_name": "Heartbeat",
    }
    assert alarms_seen == [alarm]
    assert app.get("/api/v2/alarms").json == [{**alarm, "since": T0 + 60}]


def test_a_late_tick_dates_the_alarm_by_the_deadline(app, service, clock, alarms_seen):
    create(app)
    clock.advance(3600)
    service.tick()
    assert alarms_seen[0]["timestamp"] == int(T0 + 60)


def test_down_up_down_up(app, service, clock, alarms_seen):
    heartbeat_id = down_heartbeat(service, clock, expected_interval="30s")
    assert status_of(app, heartbeat_id)["status"] == "down"
    service.tick()
    assert [a["state"] for a in alarms_seen] == [3]  # never alarmed twice

    clock.advance(5)
    assert send(app, C01)["matched"] == [heartbeat_id]
    assert status_of(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "up", "last_event": T0 + 35, "deadline": T0 + 65, "alarm_since": None, "maintenance": None,
    }
    assert [(a["state"], a["timestamp"]) for a in alarms_seen] == [(3, int(T0 + 30)), (0, int(T0 + 35))]
    assert app.get("/api/v2/alarms").json == []

    clock.now = T0 + 64.9
    service.tick()
    assert status_of(app, heartbeat_id)["status"] == "up"
    clock.now = T0 + 65
    service.tick()
    assert status_of(app, heartbeat_id)["status"] == "down"
    send(app, C01)
    assert [a["state"] for a in alarms_seen] == [3, 0, 3, 0]


def test_events_keep_it_up(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    for _ in range(10):
        clock.advance(59)
        send(app, C01)
        service.tick()
    assert status_of(app, heartbeat_id)["status"] == "up"
    assert alarms_seen == []


def test_alarms_are_listed_oldest_first(app, service, clock):
    slow = create(app, body(expected_interval="2m"))
    fast = create(app, body(pattern={"k": "fast"}, expected_interval="1m"))
    clock.advance(300)
    service.tick()
    assert [a["heartbeat_id"] for a in app.get("/api/v2/alarms").json] == [fast, slow]


def test_the_alarms_listed_are_bounded_and_the_total_is_said(app, service, clock, monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "DEFAULT_ALARMS_LISTED", 2)
    ids = [create(app, body(pattern={"k": str(i)}, expected_interval=f"{i + 1}m")) for i in range(3)]
    clock.advance(300)
    service.tick()
    answer = app.get("/api/v2/alarms")
    assert [a["heartbeat_id"] for a in answer.json] == ids[:2]  # the oldest
    assert answer.headers["X-Total-Count"] == "3"
    assert [a["heartbeat_id"] for a in app.get("/api/v2/alarms?limit=3").json] == ids
    assert [a["heartbeat_id"] for a in app.get("/api/v2/alarms?limit=1").json] == ids[:1]
    for limit in ("0", "10001", "x"):
        answer = app.get(f"/api/v2/alarms?limit={limit}", status=400).json
        assert answer["errors"] == ["limit: must be an integer from 1 to 10000"]


def test_the_resource_joins_sorted_keys(service, clock, alarms_seen):
    down_heartbeat(service, clock, pattern={"z": "1", "a": "2", "m": "é"})
    assert alarms_seen[0]["resource"] == "a:2.m:é.z:1"


def test_deleting_a_down_heartbeat_resolves_its_alarm(app, service, clock, alarms_seen):
    heartbeat_id = down_heartbeat(service, clock)
    clock.advance(2)
    app.delete(f"/api/v2/heartbeat/{heartbeat_id}")
    assert [(a["state"], a["heartbeat_id"], a["timestamp"]) for a in alarms_seen] == \
        [(3, heartbeat_id, int(T0 + 60)), (0, heartbeat_id, int(T0 + 62))]
    assert app.get("/api/v2/alarms").json == []
    app.get(f"/api/v2/heartbeat/{heartbeat_id}/status", status=404)


def test_deleting_a_healthy_heartbeat_emits_nothing(app, clock, alarms_seen):
    app.delete(f"/api/v2/heartbeat/{create(app)}")
    assert alarms_seen == []


def test_status_of_an_unknown_heartbeat_is_not_found(app):
    response = app.get("/api/v2/heartbeat/nope/status/", status=404)
    assert response.json == {"name": "nope", "description": "heartbeat not found"}


def test_tick_says_when_the_next_tick_is_due(app, service, clock):
    alive = heartbeat_lite.ALIVE_INTERVAL_SECONDS
    assert service.tick() == alive  # nothing can go down: only the alive record
    create(app, body(expected_interval="2m"))
    create(app, body(pattern={"k": "v"}, expected_interval="90s"))
    clock.advance(88)
    assert service.tick() == 2  # the earliest deadline, sooner than the alive record
    clock.advance(1)
    send(app, {"k": "v"})
    clock.advance(0.1)
    send(app, {"k": "v"})  # kept in memory: written by a tick half a second after the first
    assert service.tick() == pytest.approx(alive)  # written now; the alive record is next


def test_a_failing_on_alarm_callback_does_not_stop_the_engine(clock, caplog):
    def broken(event):
        raise RuntimeError("receiver exploded")

    with heartbeat_lite.create_app(clock=clock, on_alarm=broken) as service:
        down_heartbeat(service, clock)
        assert service.engine.alarms()[0]["state"] == 3
    assert "receiver exploded" in caplog.text


def test_the_store_walks_every_heartbeat_in_batches(tmp_path):
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db")) as service:
        ids = [new_heartbeat(service, pattern={"n": str(i)}) for i in range(7)]
        assert [row["id"] for row in service.store.each_heartbeat(batch=3)] == sorted(ids)
        assert [row["id"] for row in service.store.each_heartbeat(batch=7)] == sorted(ids)


@pytest.mark.sqlite_only("reads SQLite's EXPLAIN QUERY PLAN of the file")
def test_expiry_reads_the_deadline_index(tmp_path):
    # O(expired * log N): the due and next-deadline queries are range scans of
    # the partial index, never a scan of the table.
    path = str(tmp_path / "hb.db")
    heartbeat_lite.create_app(db=path).close()
    with sqlite3.connect(path) as conn:
        for query in ("SELECT id FROM heartbeat WHERE status NOT IN ('down', 'paused') AND due <= 1 ORDER BY due",
                      "SELECT MIN(due) FROM heartbeat WHERE status NOT IN ('down', 'paused')"):
            plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query))
            assert "SEARCH heartbeat USING INDEX heartbeat_due" in plan


class CountingDict(dict):
    lookups = 0

    def get(self, key, default=None):
        CountingDict.lookups += 1
        return super().get(key, default)


def count_lookups(index):
    """Make every trie node of ``index`` count its child look-ups."""
    stack = [index._root]
    while stack:
        node = stack.pop()
        node.children = CountingDict(node.children)
        stack.extend(node.children.values())
    CountingDict.lookups = 0


def test_matching_costs_the_event_pairs_not_the_heartbeats_or_key_sets():
    index = heartbeat_lite.PatternIndex()
    for i in range(1000):
        index.add(f"id{i}", {"connector": "c", "connector_name": f"n{i}"})
    for i in range(5000):  # 5,000 distinct key sets
        index.add(f"k{i}", {f"key{i}": "v", "host": "h"})
    index.add("other", {"host": "h"})
    count_lookups(index)
    event = {"connector": "c", "connector_name": "n999", "host": "h", "key42": "v", "state": 3, "x": "y"}
    assert sorted(index.match([event])) == ["id999", "k42", "other"]
    assert CountingDict.lookups <= 5 * 5  # pairs times depth, whatever N and the key sets
    index.remove({"connector_name": "n999", "connector": "c"})
    assert sorted(index.match([event])) == ["k42", "other"]
    assert index.match([{"connector": "c", "connector_name": "n999"}]) == []


@pytest.fixture(params=["key sets", "trie"])
def matching(request, monkeypatch):
    """Run a matching test both ways: scanning key sets, and walking the trie."""
    monkeypatch.setattr(heartbeat_lite, "KEY_SETS_SCANNED", 0 if request.param == "trie" else 10**9)
    return request.param


def test_removing_a_pattern_prunes_the_trie_but_keeps_its_prefixes(matching):
    index = heartbeat_lite.PatternIndex()
    index.add("short", {"a": "1"})
    index.add("long", {"a": "1", "b": "2"})
    assert index.match([{"a": "1", "b": "2", "c": "3"}]) in (["short", "long"], ["long", "short"])
    index.remove({"a": "1", "b": "2"})
    assert index.match([{"a": "1", "b": "2"}]) == ["short"]
    assert index._root.children[("a", "1")].children == {}
    index.remove({"a": "1"})
    assert index._root.children == {} and index._by_keys == {}
    assert index.match([{"a": "1"}]) == []
    index.remove({"never": "added"})  # nothing to do


@pytest.mark.parametrize("value", [1, 1.0, None, True, ["v"], {"v": "v"}])
def test_only_a_string_value_matches(value, matching):
    index = heartbeat_lite.PatternIndex()
    index.add("x", {"k": "1" if value in (1, 1.0, True) else "v"})
    assert index.match([{"k": value}]) == []


def test_both_ways_of_matching_agree(matching):
    rng = random.Random(5)
    index = heartbeat_lite.PatternIndex()
    patterns = {}
    for i in range(300):
        pattern = {rng.choice("abcd"): rng.choice("xy") for _ in range(rng.randint(1, 3))}
        if heartbeat_lite.canonical_pattern(pattern) not in patterns:
            patterns[heartbeat_lite.canonical_pattern(pattern)] = f"id{i}"
            index.add(f"id{i}", pattern)
    for _ in range(200):
        event = {rng.choice("abcde"): rng.choice(["x", "y", 1]) for _ in range(rng.randint(0, 5))}
        expected = {heartbeat_id for text, heartbeat_id in patterns.items()
                    if all(event.get(k) == v for k, v in json.loads(text).items())}
        assert set(index.match([event])) == expected, event


@pytest.mark.parametrize("grouped", [False, True])
def test_a_batch_matches_as_its_events_do_one_by_one(matching, grouped):
    # One key set (a batch of one source's events) is looked up for the whole
    # batch at once, falling back event by event for an event without a key,
    # with a list for a value, or naming a grouped heartbeat: the same ids,
    # in order of first match, each with the last event that matched it.
    rng = random.Random(11)
    index = heartbeat_lite.PatternIndex()
    patterns = {f"id{i}": {"connector": "c", "connector_name": f"n{i}"} for i in range(40)}
    for heartbeat_id, pattern in patterns.items():
        index.add(heartbeat_id, pattern)
    groups = {"id3": ["host"], "id7": ["host", "site"]} if grouped else None
    names = [f"n{i}" for i in range(50)] + [1, None, ["n1"], {"n": "n2"}]
    for _ in range(300):
        batch = []
        for seq in range(rng.randint(0, 25)):
            event = {"connector": rng.choice(["c", "c", "c", "d", 3]), "connector_name": rng.choice(names), "seq": seq}
            if rng.random() < 0.05:
                del event[rng.choice(["connector", "connector_name"])]
            if rng.random() < 0.5:
                event["host"] = rng.choice(["h1", "h2", 5])
            if rng.random() < 0.5:
                event["site"] = "s"
            batch.append(event)
        expected, expected_members = {}, {}
        for event in batch:
            for heartbeat_id, pattern in patterns.items():
                if all(type(event.get(k)) is str and event[k] == v for k, v in pattern.items()):
                    if groups and heartbeat_id in groups:
                        values = heartbeat_lite.member_values(event, groups[heartbeat_id])
                        if values is None:
                            continue
                        expected_members[(heartbeat_id, values)] = None
                    expected[heartbeat_id] = event
        members = {}
        found = index.matches(batch, groups, members)
        assert list(found.items()) == list(expected.items()), batch
        assert list(members) == list(expected_members)


def test_containing_finds_the_heartbeats_a_window_selects_as_they_come_and_go():
    rng = random.Random(7)
    index = heartbeat_lite.PatternIndex()
    patterns = {}
    for i in range(400):
        pattern = {rng.choice("abcd"): rng.choice("xy") for _ in range(rng.randint(1, 3))}
        text = heartbeat_lite.canonical_pattern(pattern)
        if text in patterns:  # taken: this one goes instead (a delete)
            index.remove(json.loads(text))
            del patterns[text]
        else:
            patterns[text] = f"id{i}"
            index.add(f"id{i}", pattern)
    for _ in range(100):
        window = {rng.choice("abcde"): rng.choice("xy") for _ in range(rng.randint(0, 3))}
        expected = {heartbeat_id for text, heartbeat_id in patterns.items()
                    if all(json.loads(text).get(k) == v for k, v in window.items())}
        assert index.containing(window) == expected, window


def stored_last_event(service, heartbeat_id):
    """What the database itself holds (the API shows refreshes not yet written)."""
    return service.store.heartbeat(heartbeat_id)["last_event"]


@pytest.mark.sqlite_only("refreshes coalesced in memory: on PostgreSQL each is written before its answer")
def test_a_burst_of_events_is_written_once_per_half_second(app, service, clock):
    heartbeat_id = create(app)
    clock.advance(10)
    send(app, C01)  # pending -> up: written at once
    assert stored_last_event(service, heartbeat_id) == T0 + 10
    clock.advance(0.3)
    assert send(app, C01)["matched"] == [heartbeat_id]  # up, stored 0.3 s ago: kept in memory
    assert stored_last_event(service, heartbeat_id) == T0 + 10
    assert status_of(app, heartbeat_id)["last_event"] == T0 + 10.3  # but the API shows it
    assert status_of(app, heartbeat_id)["deadline"] == T0 + 70.3
    service.tick()  # the tick writes it
    assert stored_last_event(service, heartbeat_id) == T0 + 10.3
    clock.now = T0 + 10.9
    send(app, C01)  # 0.6 s after the stored refresh: written at once
    assert stored_last_event(service, heartbeat_id) == T0 + 10.9


def test_a_pending_refresh_keeps_a_heartbeat_up(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    clock.now = T0 + 59.7
    send(app, C01)
    clock.now = T0 + 59.9
    send(app, C01)  # kept in memory
    clock.now = T0 + 119.8  # past the stored deadline (T0 + 119.7), not the real one
    service.tick()
    assert status_of(app, heartbeat_id)["status"] == "up"
    clock.now = T0 + 119.9
    service.tick()
    assert status_of(app, heartbeat_id)["status"] == "down"
    assert [a["timestamp"] for a in alarms_seen] == [int(T0 + 119.9)]


def test_a_heartbeat_coming_back_up_is_written_at_once(app, service, clock, alarms_seen):
    heartbeat_id = create(app, body(expected_interval="1s"))
    clock.advance(0.2)
    send(app, C01)
    clock.advance(1.1)
    service.tick()  # down
    clock.advance(0.1)  # 0.1 s after... but down: a state change is never kept in memory
    send(app, C01)
    assert service.store.heartbeat(heartbeat_id)["status"] == "up"
    assert [a["state"] for a in alarms_seen] == [3, 0]


def test_a_clean_stop_writes_pending_refreshes(restart, clock):
    with restart() as service:
        heartbeat_id = new_heartbeat(service)
        clock.advance(1)
        service.engine.ingest([C01])
        clock.advance(0.2)
        service.engine.ingest([C01])  # pending
    with restart() as service:
        assert service.engine.status(heartbeat_id)["last_event"] == T0 + 1.2
        assert service.engine.status(heartbeat_id)["deadline"] == T0 + 61.2  # clean stop: no extra


def test_a_crash_never_invents_an_alarm_from_a_lost_refresh(restart, clock, alarms_seen):
    service = restart()
    heartbeat_id = new_heartbeat(service)
    clock.now = T0 + 30
    service.engine.ingest([C01])
    clock.now = T0 + 30.4
    service.engine.ingest([C01])  # pending, lost in the crash
    service.store.close()  # SIGKILL: no shutdown
    clock.now = T0 + 100
    with restart() as service:
        # outage counted from the start's alive record (T0); the true deadline
        # (T0 + 90.4, clock stopped while down) must not come early
        true_deadline = T0 + 90.4 + (T0 + 100 - T0)
        assert service.engine.status(heartbeat_id)["deadline"] >= true_deadline
        clock.now = true_deadline - 0.01
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "up"
    assert alarms_seen == []


@pytest.mark.sqlite_only("refreshes coalesced in memory: on PostgreSQL each is written before its answer")
def test_pending_refreshes_reach_the_database_in_server_mode(tmp_path):
    clock = SteppedClock()
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db"), clock=clock) as service:
        with heartbeat_lite.serve(service, port=0) as base:
            _, _, created = http("POST", f"{base}/api/v2/heartbeat", json.dumps(body()).encode())
            heartbeat_id = created["description"]
            http("POST", f"{base}/api/v2/event", json.dumps(C01).encode())
            clock.advance(0.05)  # apart enough to tell the two refreshes apart, well within 0.5 s
            http("POST", f"{base}/api/v2/event", json.dumps(C01).encode())  # kept in memory
            shown = http("GET", f"{base}/api/v2/heartbeat/{heartbeat_id}/status")[2]["last_event"]
            assert stored_last_event(service, heartbeat_id) != pytest.approx(shown, abs=1e-3)
            # the scheduler writes it within about half a second
            assert wait_until(lambda: stored_last_event(service, heartbeat_id) == pytest.approx(shown, abs=1e-3))


###############################################################################
# Restart
###############################################################################


def test_a_restart_pushes_deadlines_back_by_the_outage(restart, clock, alarms_seen):
    with restart() as service:
        heartbeat_id = new_heartbeat(service)
        clock.advance(20)
        service.tick()
    clock.advance(3600)  # the service is stopped for an hour
    with restart() as service:
        assert service.engine.status(heartbeat_id)["deadline"] == T0 + 60 + 3600
        clock.now = T0 + 3600 + 59.9  # 20 s ran before the outage, 39.9 s after: not yet 60
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "pending"
        clock.now = T0 + 3600 + 60
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "down"
    assert [a["state"] for a in alarms_seen] == [3]


def test_a_crash_counts_the_outage_from_the_last_alive_record(restart, clock):
    service = restart()
    heartbeat_id = new_heartbeat(service)
    clock.advance(heartbeat_lite.ALIVE_INTERVAL_SECONDS)
    service.tick()  # records T0 + 5
    clock.advance(2)  # runs 2 s more, then dies without a word: no close()
    service.store.close()
    clock.advance(1000)
    with restart() as service:
        # the outage, plus the refreshes a crash may have cost (not a clean stop)
        assert service.engine.status(heartbeat_id)["deadline"] == T0 + 60 + 1002 + heartbeat_lite.REFRESH_WRITE_SECONDS


def test_a_down_heartbeat_stays_down_without_a_second_alarm(restart, clock, alarms_seen):
    with restart() as service:
        heartbeat_id = down_heartbeat(service, clock)
    clock.advance(600)
    with restart() as service:
        service.tick()
        clock.advance(600)
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "down"
        assert service.engine.status(heartbeat_id)["alarm_since"] == T0 + 60
        assert [a["heartbeat_id"] for a in service.engine.alarms()] == [heartbeat_id]
        service.engine.ingest([C01])
    assert [a["state"] for a in alarms_seen] == [3, 0]


def test_a_deadline_passed_before_the_outage_goes_down_at_once(restart, clock):
    with restart() as service:
        heartbeat_id = new_heartbeat(service)
        clock.advance(90)  # overdue, but nobody ticked before the stop
    clock.advance(600)
    with restart() as service:
        assert service.engine.status(heartbeat_id)["deadline"] == T0 + 60
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "down"


###############################################################################
# Update
###############################################################################


def test_put_replaces_the_fields_and_keeps_id_and_created(app, clock):
    heartbeat_id = create(app)
    clock.advance(100)
    answer = app.put_json(f"/api/v2/heartbeat/{heartbeat_id}",
                           {"name": "Renamed", "pattern": {"connector": "other"}, "expected_interval": "5m"})
    assert answer.json == {"name": "heartbeat updated", "description": heartbeat_id}
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json == {
        "_id": heartbeat_id, "name": "Renamed", "author": "root", "description": "",
        "pattern": {"connector": "other"}, "expected_interval": "5m", "output": "",
        "created": int(T0), "updated": int(T0 + 100),
    }


def test_put_accepts_a_get_body_back_with_its_own_pattern(app, clock):
    heartbeat_id = create(app)
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    doc["pattern"] = {"connector_name": "c01", "connector": "connect"}  # same pattern, keys reordered
    doc["name"] = "same pattern, new name"
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}/", doc)
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["name"] == "same pattern, new name"


def test_put_refuses_another_heartbeats_pattern(app):
    heartbeat_id = create(app)
    create(app, body(pattern={"k": "v"}))
    response = app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern={"k": "v"}), status=400)
    assert response.json == {"name": "", "description": "heartbeat pattern already exists"}
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["pattern"] == C01


def test_put_of_an_unknown_heartbeat_is_not_found(app):
    response = app.put_json("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93", body(), status=404)
    assert response.json == {"name": "cf7097b6-71ba-48db-a749-e9474aa70c93", "description": "heartbeat not found"}
    assert app.get("/api/v2/heartbeat").json == []


def test_put_validates_like_post(app):
    heartbeat_id = create(app)
    before = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    response = app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(expected_interval="1d"), status=400)
    assert response.json["description"] == "invalid heartbeat payload."
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json == before


def test_a_shorter_interval_applies_from_the_last_refresh(app, service, clock):
    heartbeat_id = create(app)
    clock.advance(10)
    send(app, C01)
    clock.advance(10)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(expected_interval="30s"))
    assert status_of(app, heartbeat_id)["deadline"] == T0 + 40
    clock.now = T0 + 40
    service.tick()
    assert status_of(app, heartbeat_id)["status"] == "down"


def test_a_longer_interval_keeps_a_pending_heartbeat_up(app, service, clock, alarms_seen):
    heartbeat_id = create(app)
    clock.advance(50)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(expected_interval="2h"))
    clock.advance(3600)
    service.tick()
    assert status_of(app, heartbeat_id) == {
        "_id": heartbeat_id, "status": "pending", "last_event": None, "deadline": T0 + 7200, "alarm_since": None, "maintenance": None,
    }
    assert alarms_seen == []


def test_matching_follows_a_pattern_change(app):
    heartbeat_id = create(app)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern={"host": "h1"}))
    assert send(app, C01)["matched"] == []
    assert send(app, {"host": "h1"})["matched"] == [heartbeat_id]


def test_changing_a_down_heartbeats_pattern_moves_its_alarm(app, service, clock, alarms_seen):
    heartbeat_id = down_heartbeat(service, clock)
    clock.advance(5)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern={"host": "h1"}))
    assert [(a["state"], a["resource"], a["timestamp"]) for a in alarms_seen] == [
        (3, "connector:connect.connector_name:c01", int(T0 + 60)),
        (0, "connector:connect.connector_name:c01", int(T0 + 65)),
        (3, "host:h1", int(T0 + 65)),
    ]
    assert status_of(app, heartbeat_id)["status"] == "down"
    assert [a["resource"] for a in app.get("/api/v2/alarms").json] == ["host:h1"]


def test_renaming_a_down_heartbeat_keeps_its_alarm(app, service, clock, alarms_seen):
    heartbeat_id = down_heartbeat(service, clock)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(name="renamed", expected_interval="2h"))
    assert [a["state"] for a in alarms_seen] == [3]
    assert status_of(app, heartbeat_id)["status"] == "down"  # only an event brings it back


def test_a_shorter_interval_wakes_the_scheduler(tmp_path):
    alarmed = threading.Event()
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db"), on_alarm=lambda e: alarmed.set()) as service:
        with heartbeat_lite.serve(service, port=0) as base:
            _, _, created = http("POST", f"{base}/api/v2/heartbeat", json.dumps(body(expected_interval="1h")).encode())
            heartbeat_id = created["description"]
            status, _, _ = http("PUT", f"{base}/api/v2/heartbeat/{heartbeat_id}",
                                json.dumps(body(expected_interval="1s")).encode())
            assert status == 200
            assert alarmed.wait(3), "the scheduler slept through the new, earlier deadline"


###############################################################################
# Forwarding
###############################################################################


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def unused_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v2/event"  # nothing listens there


def forwarding_service(clock, url, alarms_seen):
    """An in-memory service forwarding its alarms to ``url``."""
    return heartbeat_lite.create_app(clock=clock, forward_url=url, on_alarm=alarms_seen.append)


def test_alarms_are_forwarded_with_basic_auth_from_the_url(receiver, clock, alarms_seen):
    with forwarding_service(clock, receiver.url("canopsis:p%40ss:w@"), alarms_seen) as service:
        down_heartbeat(service, clock)
        assert service.engine.outbox_depth() == 1
        assert service.deliver() is None
        assert service.engine.outbox_depth() == 0
    (headers, events, _), = receiver.requests
    assert events == alarms_seen and events[0]["state"] == 3
    assert headers["Content-Type"] == "application/json"
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"canopsis:p@ss:w"


def test_forwarding_keeps_the_order_across_batches(receiver, clock, alarms_seen):
    with forwarding_service(clock, receiver.url(), alarms_seen) as service:
        count = heartbeat_lite.FORWARD_BATCH_EVENTS + 20
        for i in range(count):
            new_heartbeat(service, pattern={"n": str(i)}, expected_interval=f"{i + 1}s")
        clock.advance(count)
        service.tick()  # every one goes down, earliest deadline first
        service.engine.ingest([{"n": "0"}, {"n": "7"}])  # two come back
        clock.advance(1)
        service.tick()  # "0" goes down again
        assert service.deliver() is None
    assert len(receiver.requests) == 2
    assert receiver.delivered == alarms_seen
    assert [e["resource"] for e in alarms_seen[:3]] == ["n:0", "n:1", "n:2"]
    assert [(e["state"], e["resource"]) for e in alarms_seen[-3:]] == [(0, "n:0"), (0, "n:7"), (3, "n:0")]


def test_a_failing_target_is_retried_with_capped_backoff(receiver, clock, alarms_seen, caplog):
    with forwarding_service(clock, receiver.url("u:topsecret@"), alarms_seen) as service:
        down_heartbeat(service, clock)
        receiver.statuses = [500, 503]
        assert service.deliver() == 1.0
        assert service.deliver() == 2.0
        assert service.engine.outbox_depth() == 1
        assert "alarm delivery to http://127.0.0.1" in caplog.text and "failing" in caplog.text
        assert service.deliver() is None
        assert "recovered after 2 failed attempt(s)" in caplog.text
        assert service.engine.outbox_depth() == 0
    assert [status for _, _, status in receiver.requests] == [500, 503, 200]
    assert receiver.delivered == alarms_seen
    assert "topsecret" not in caplog.text


def test_backoff_doubles_up_to_its_cap_while_the_target_is_down(clock, alarms_seen):
    with forwarding_service(clock, unused_url(), alarms_seen) as service:
        down_heartbeat(service, clock)
        delays = [service.deliver() for _ in range(9)]
        assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
        assert service.engine.outbox_depth() == 1


def test_the_outbox_survives_a_restart(restart, receiver, clock, alarms_seen):
    with restart(forward_url=unused_url()) as service:
        down_heartbeat(service, clock)
        assert service.deliver() == 1.0
    with restart(forward_url=receiver.url()) as service:
        assert service.engine.outbox_depth() == 1
        assert service.deliver() is None
    assert receiver.delivered == alarms_seen and len(alarms_seen) == 1


def test_a_restart_does_not_alarm_a_down_heartbeat_twice(restart, receiver, clock):
    with restart(forward_url=receiver.url()) as service:
        down_heartbeat(service, clock)
        service.deliver()
    clock.advance(600)
    with restart(forward_url=receiver.url()) as service:
        service.tick()
        clock.advance(600)
        service.tick()
        assert service.deliver() is None
    assert [e["state"] for e in receiver.delivered] == [3]


def test_the_outbox_row_and_the_state_change_commit_together(receiver, clock, alarms_seen, monkeypatch):
    with forwarding_service(clock, receiver.url(), alarms_seen) as service:
        heartbeat_id = new_heartbeat(service)
        clock.advance(60)

        def failing_enqueue(rows):
            raise heartbeat_lite.StoreError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr(service.store, "enqueue_notices", failing_enqueue)
            with pytest.raises(heartbeat_lite.StoreError):
                service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "pending"  # rolled back with it
        assert alarms_seen == []
        service.tick()
        assert service.engine.status(heartbeat_id)["status"] == "down"
        service.deliver()
    assert [e["state"] for e in receiver.delivered] == [3]


def test_without_a_forward_url_nothing_waits_in_the_outbox(service, clock):
    down_heartbeat(service, clock)
    assert service.engine.outbox_depth() == 0
    with pytest.raises(RuntimeError):
        service.deliver()


def test_a_bug_in_a_background_step_does_not_end_its_thread(caplog):
    class Flaky(heartbeat_lite._Worker):
        name, retry_seconds = "flaky", 0.01

        def __init__(self):
            super().__init__()
            self.calls = 0
            self.recovered = threading.Event()

        def step(self):
            self.calls += 1
            if self.calls == 1:
                raise KeyError("a bug")
            self.recovered.set()
            return None

    worker = Flaky()
    worker.start()
    try:
        assert worker.recovered.wait(5), "the thread died with its first step"
    finally:
        worker.stop()
    assert "flaky: unexpected error" in caplog.text and "KeyError" in caplog.text


def test_the_forwarder_thread_delivers_in_server_mode(tmp_path, receiver):
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db"), forward_url=receiver.url()) as service:
        with heartbeat_lite.serve(service, port=0) as base:
            http("POST", f"{base}/api/v2/heartbeat", json.dumps(body(expected_interval="1s")).encode())
            assert receiver.received.wait(5), "no alarm delivered within 5 s"
    assert receiver.delivered[0]["state"] == 3


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/api", "http://", "file:///etc/passwd",
                                 "http://h:notaport/x"])
def test_a_forward_url_must_be_http(url):
    with pytest.raises(heartbeat_lite.ConfigError, match="--forward-url"):
        heartbeat_lite.create_app(forward_url=url)


def test_cli_refuses_a_bad_forward_url(tmp_path):
    result = run_cli("--port", "0", "--db", str(tmp_path / "hb.db"), "--forward-url", "ftp://u:pw@host/x")
    assert result.returncode == 2
    assert "must be an http:// or https:// URL" in result.stderr
    assert "pw" not in result.stderr.replace("https", "")


###############################################################################
# Health
###############################################################################


def test_health_needs_no_credentials(service):
    response = client(service, user=None).get("/healthz")
    assert response.json == {"status": "ok", "outbox": 0}


def test_health_reports_the_outbox_depth(clock, alarms_seen):
    with forwarding_service(clock, unused_url(), alarms_seen) as service:
        down_heartbeat(service, clock)
        assert client(service, user=None).get("/healthz").json == {"status": "ok", "outbox": 1}


def test_health_is_503_when_the_database_fails(service, monkeypatch, caplog):
    service.store.statement_hook = _broken_statement
    response = client(service, user=None).get("/healthz", status=503)
    assert response.json["status"] == "unavailable"
    assert "disk I/O error" in caplog.text


###############################################################################
# Errors are JSON
###############################################################################


def test_unknown_path_is_a_json_404(app):
    response = app.get("/api/v2/nothing", status=404)
    assert response.content_type == "application/json"
    assert response.json == {"name": "", "description": "not found"}


def test_wrong_method_is_a_json_405_with_allow(app):
    response = app.put("/api/v2/heartbeat", status=405)
    assert response.content_type == "application/json"
    assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}
    assert response.json["description"] == "method not allowed"


def _kaboom():
    raise RuntimeError("kaboom")


def test_an_unexpected_error_is_a_json_500_and_logged(app, service, caplog, monkeypatch):
    monkeypatch.setattr(service.engine, "list", _kaboom)
    response = app.get("/api/v2/heartbeat", status=500)
    assert response.content_type == "application/json"
    assert response.json == {"name": "", "description": "internal error"}
    assert "kaboom" in caplog.text


def test_every_request_is_access_logged(app, caplog):
    with caplog.at_level(logging.INFO, logger="heartbeat_lite.access"):
        app.get("/api/v2/heartbeat?x=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "heartbeat_lite.access"]
    assert len(lines) == 1
    assert '"GET /api/v2/heartbeat?x=1" 200' in lines[0]


###############################################################################
# Authentication
###############################################################################


ROUTES = [
    ("POST", "/api/v2/heartbeat"),
    ("GET", "/api/v2/heartbeat"),
    ("GET", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"),
    ("PUT", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"),
    ("DELETE", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"),
    ("GET", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93/status"),
    ("POST", "/api/v2/event"),
    ("GET", "/api/v2/alarms"),
    ("GET", "/"),
    ("GET", "/metrics"),
]
BAD_CREDENTIALS = {
    "none": None,
    "wrong password": _basic("root", "wrong"),
    "unknown user": _basic("mallory", "root"),
    "password prefix": _basic("root", "roo"),
    "not basic": "Bearer root",
    "garbage": "Basic !!!not-base64",
    "no colon": "Basic " + base64.b64encode(b"rootroot").decode(),
}


@pytest.mark.parametrize("method,path", ROUTES)
@pytest.mark.parametrize("authorization", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_every_api_route_needs_credentials(service, method, path, authorization):
    app = client(service, user=None)
    headers = {"Authorization": authorization} if authorization else {}
    response = app.request(path, method=method, headers=headers, body=json.dumps(SEED_BODY).encode(),
                           expect_errors=True)
    assert response.status_int == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="heartbeat-lite"'
    assert response.json == {"name": "", "description": "authentication required"}
    assert service.engine.list() == []


def test_configured_users_replace_root(clock):
    with heartbeat_lite.create_app(users={"alice": "pw:with:colons", "bob": "b"}, clock=clock) as service:
        for user, password, status in [("alice", "pw:with:colons", 200), ("bob", "b", 200),
                                       ("root", "root", 401), ("alice", "b", 401)]:
            client(service, (user, password)).get("/api/v2/heartbeat", status=status)


def test_parse_users():
    assert heartbeat_lite.parse_users(["a:b", "c:d:e"]) == {"a": "b", "c": "d:e"}
    for bad in ("nocolon", ":password", "f:"):
        with pytest.raises(heartbeat_lite.ConfigError):
            heartbeat_lite.parse_users([bad])


def test_a_users_file_takes_passwords_and_hashes(tmp_path):
    users_file = tmp_path / "users"
    users_file.write_text("# operators\n\nalice:plain:pw\n  bob:%s  \n" % heartbeat_lite.PasswordHash.create("b0b", 1000))
    args = heartbeat_lite.build_parser({}).parse_args(["--users-file", str(users_file), "--user", "carol:c"])
    users = heartbeat_lite._users_from(args, {})
    assert set(users) == {"alice", "bob", "carol"}
    with heartbeat_lite.create_app(users=users) as service:
        for user, password, status in [("alice", "plain:pw", 200), ("bob", "b0b", 200), ("carol", "c", 200),
                                       ("bob", "wrong", 401), ("alice", "plain", 401)]:
            client(service, (user, password)).get("/api/v2/heartbeat", status=status)


@pytest.mark.parametrize("line", ["no-colon-s3cretpw", ":s3cretpw", "dave:pbkdf2_sha256$x$s3cretpw$abc",
                                  "dave:pbkdf2_sha256$1000$!!!$s3cretpw"])
def test_a_malformed_users_file_line_is_refused_without_echoing_it(tmp_path, line):
    users_file = tmp_path / "users"
    users_file.write_text("alice:ok\n" + line + "\n")
    with pytest.raises(heartbeat_lite.ConfigError, match="line 2") as caught:
        heartbeat_lite.load_users_file(str(users_file))
    assert "s3cretpw" not in str(caught.value)


def test_a_missing_users_file_is_a_config_error(tmp_path):
    result = run_cli("--port", "0", "--db", str(tmp_path / "hb.db"), "--users-file", str(tmp_path / "none"))
    assert result.returncode == 2 and "cannot read users file" in result.stderr


def test_hash_password_reads_stdin_and_prints_a_verifiable_hash():
    result = subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "hash-password"],
                            input="correct horse\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    hashed = heartbeat_lite.PasswordHash.parse(result.stdout.strip())
    assert hashed.iterations == heartbeat_lite.PBKDF2_ITERATIONS
    assert hashed.verify(b"correct horse") and not hashed.verify(b"correct horse\n")
    assert "correct horse" not in result.stdout + result.stderr


def test_hash_password_refuses_an_empty_password():
    result = subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "hash-password"],
                            input="\n", capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "empty password" in result.stderr


def test_a_hashed_password_is_derived_once_then_remembered(counted_derivations):
    users = {"alice": str(heartbeat_lite.PasswordHash.create("pw", 1000))}
    with heartbeat_lite.create_app(users=users) as service:
        app = client(service, ("alice", "pw"))
        for _ in range(20):
            app.get("/api/v2/heartbeat")
    assert len(counted_derivations) == 1


def test_a_derivation_is_refused_rather_than_waited_for_when_asked_not_to_wait(counted_derivations):
    # the server's event loop answers from memory and never waits: it asks not to
    auth = heartbeat_lite.Authenticator({"alice": str(heartbeat_lite.PasswordHash.create("pw", 1000)),
                                         "bob": "plain"})
    for name, password in (("alice", "pw"), ("nobody", "pw")):  # not verified yet; an unknown name (a decoy)
        with pytest.raises(heartbeat_lite.WouldBlock):
            auth.user(_basic(name, password), blocking=False)
    assert not counted_derivations
    assert auth.user(_basic("bob", "plain"), blocking=False) == "bob"  # a plain password costs nothing
    assert auth.user(_basic("alice", "pw")) == "alice"
    assert auth.user(_basic("alice", "pw"), blocking=False) == "alice"  # remembered
    assert len(counted_derivations) == 1


def test_failed_derivations_are_throttled(counted_derivations):
    clock = FakeClock(0)
    auth = heartbeat_lite.Authenticator({"alice": str(heartbeat_lite.PasswordHash.create("pw", 1000))}, clock=clock)
    burst = heartbeat_lite.AUTH_FAILURE_BURST
    for _ in range(burst):
        assert auth.user(_basic("alice", "guess")) is None
    with pytest.raises(heartbeat_lite.Throttled):
        auth.user(_basic("alice", "guess"))
    assert len(counted_derivations) == burst  # the refused attempt cost no derivation
    clock.advance(heartbeat_lite.AUTH_FAILURE_REFILL_SECONDS)
    assert auth.user(_basic("alice", "pw")) == "alice"  # one derivation earned back; a success keeps it
    assert auth.user(_basic("alice", "pw")) == "alice"  # remembered: no derivation at all
    assert auth.user(_basic("alice", "guess")) is None  # the kept one, spent
    with pytest.raises(heartbeat_lite.Throttled):
        auth.user(_basic("alice", "guess"))
    assert len(counted_derivations) == burst + 2


def test_throttling_is_a_json_429_with_retry_after():
    users = {"alice": str(heartbeat_lite.PasswordHash.create("pw", 1000))}
    with heartbeat_lite.create_app(users=users) as service:
        guessing = client(service, ("alice", "guess"))
        for _ in range(heartbeat_lite.AUTH_FAILURE_BURST):
            guessing.get("/api/v2/heartbeat", status=401)
        response = guessing.get("/api/v2/heartbeat", status=429)
        assert response.headers["Retry-After"] == "2"
        assert response.json == {"name": "", "description": "too many failed authentication attempts, retry later"}


def test_plain_users_are_never_throttled(service):
    guessing = client(service, ("root", "wrong"))
    for _ in range(50):
        guessing.get("/api/v2/heartbeat", status=401)
    client(service).get("/api/v2/heartbeat", status=200)


def test_no_password_reaches_the_log(tmp_path):
    users_file = tmp_path / "users"
    users_file.write_text("bob:%s\n" % heartbeat_lite.PasswordHash.create("FilePassw0rd", 1000))
    process, base = start_server("--db", str(tmp_path / "hb.db"), "--user", "alice:FlagPassw0rd",
                                 "--users-file", str(users_file), "--log-level", "DEBUG",
                                 "--forward-url", "http://fwd:UrlPassw0rd@127.0.0.1:9/x")
    try:
        for user in ("alice:FlagPassw0rd", "bob:FilePassw0rd", "alice:WrongPassw0rd", "bob:WrongPassw0rd"):
            http("GET", f"{base}/api/v2/heartbeat", user=user)
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        process.wait(timeout=30)
    assert "forwarding alarms to http://127.0.0.1:9/x" in rest
    assert "Passw0rd" not in rest


###############################################################################
# Limits and hostile input
###############################################################################


def test_a_heartbeat_body_over_64_kib_is_413(app):
    raw = json.dumps(body(description="d" * heartbeat_lite.MAX_HEARTBEAT_BODY_BYTES)).encode()
    response = app.post("/api/v2/heartbeat", raw, status=413)
    assert response.json == {"name": "", "description": "request body larger than 65536 bytes"}
    assert app.get("/api/v2/heartbeat").json == []


def test_an_event_body_over_1_mib_is_413(app):
    heartbeat_id = create(app)
    raw = json.dumps([C01] * 30_000).encode()
    assert len(raw) > heartbeat_lite.MAX_EVENT_BODY_BYTES
    response = app.post("/api/v2/event", raw, status=413)
    assert response.json == {"name": "", "description": "request body larger than 1048576 bytes"}
    assert status_of(app, heartbeat_id)["status"] == "pending"


def test_more_than_10000_events_is_413_and_applies_nothing(app):
    heartbeat_id = create(app)
    limit = heartbeat_lite.MAX_EVENTS_PER_REQUEST
    response = app.post_json("/api/v2/event", [{}] * limit + [C01], status=413)
    assert response.json == {"name": "", "description": "more than 10000 events in one request"}
    assert status_of(app, heartbeat_id)["status"] == "pending"
    assert send(app, [{}] * (limit - 1) + [C01]) == {"received": limit, "matched": [heartbeat_id]}


def hostile_bodies(valid):
    """A few hundred malformed variants of a valid JSON body (bytes), none of
    them valid JSON; deterministic."""
    rng = random.Random(valid)
    bodies = {}
    step = max(1, len(valid) // 60)
    for cut in range(0, len(valid), step):
        bodies[f"truncated at {cut}"] = valid[:cut]
    for i in range(40):
        bodies[f"garbage {i}"] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    for i in range(25):
        at = rng.randrange(1, len(valid) - 1)
        bodies[f"invalid utf-8 {i}, at {at}"] = valid[:at] + rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"]) + valid[at:]
    text = valid.decode("utf-8")
    inside = text.index('"') + 1  # just inside the first string
    for char in ("\x00", "\x01", "\x1f", "\n", "\t"):
        bodies[f"raw control char {ord(char)}"] = (text[:inside] + char + text[inside:]).encode()
    bodies.update({
        "empty": b"",
        "whitespace": b" \n\t ",
        "bom": b"\xef\xbb\xbf" + valid,
        "utf-16": text.encode("utf-16"),
        "utf-16-le": text.encode("utf-16-le"),
        "utf-32": text.encode("utf-32"),
        "trailing comma": valid[:-1] + b",}" if valid.endswith(b"}") else valid[:-1] + b",]",
        "trailing garbage": valid + b"x",
        "two documents": valid + valid,
        "single quotes": text.replace('"', "'").encode(),
        "unquoted key": re.sub(r'"(\w+)":', r"\1:", text, count=1).encode(),
        "comment": b"/* hi */" + valid,
        "nan": b'{"a": NaN}',
        "infinity": b'{"a": Infinity}',
        "-infinity": b'[{"a": -Infinity}]',
        "huge float": b'{"a": 1e999}',
        "huge negative float": b'[{"a": -1e999}]',
        "huge integer": b'{"a": ' + b"9" * 5000 + b"}",
        "leading zero": b'{"a": 01}',
        "plus sign": b'{"a": +1}',
        "hex": b'{"a": 0x1F}',
        "bare dot": b'{"a": .5}',
        "duplicate key": b'{"a": "1", "a": "2"}',
        "nested duplicate key": b'[{"b": {"a": 1, "a": 2}}]',
        "deep arrays": b"[" * 30_000 + b"]" * 30_000,
        "deep objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        "unclosed deep": b"[" * 30_000,
        "bad escape": b'{"a": "\\x41"}',
        "short unicode escape": b'{"a": "\\u12"}',
        "lone backslash": b'{"a": "\\"}',
        "true": b"true",
        "number": b"42",
        "string": b'"event"',
        "null": b"null",
        "array of numbers": b"[1, 2, 3]",
        "array with null": b"[null]",
        "array of arrays": b"[[]]",
    })
    return bodies


def database_snapshot(service):
    engine = service.engine
    docs = engine.list()
    return docs, [engine.status(doc["_id"]) for doc in docs], engine.outbox_depth(), engine.alarms()


@pytest.mark.parametrize("target", ["POST heartbeat", "PUT heartbeat", "POST event"])
def test_hostile_json_gets_a_json_4xx_and_changes_nothing(app, service, clock, target):
    heartbeat_id = create(app)
    clock.advance(1)
    method, path, valid = {
        "POST heartbeat": ("POST", "/api/v2/heartbeat", json.dumps(body(pattern={"k": "v"})).encode()),
        "PUT heartbeat": ("PUT", f"/api/v2/heartbeat/{heartbeat_id}", json.dumps(body(name="new")).encode()),
        "POST event": ("POST", "/api/v2/event", json.dumps([C01, {"connector": "x"}]).encode()),
    }[target]
    bodies = hostile_bodies(valid)
    if target == "POST event":  # a duplicate key in an event keeps its last value, as in Canopsis
        del bodies["duplicate key"], bodies["nested duplicate key"]
    else:
        bodies["lone surrogate"] = valid.replace(b'"Heartbeat"', b'"\\ud800"').replace(b'"new"', b'"\\udfff"')
        bodies["an array"] = b"[" + valid + b"]"
    assert len(bodies) >= 150
    before = database_snapshot(service)
    for name, raw in bodies.items():
        response = app.request(path, method=method, body=raw, headers={"Content-Type": "application/json"},
                                expect_errors=True)
        assert 400 <= response.status_int < 500, (name, response.status, response.body[:200])
        assert response.content_type == "application/json", name
        assert isinstance(response.json, dict) and "description" in response.json, name
    assert database_snapshot(service) == before
    assert send(app, C01)["matched"] == [heartbeat_id]  # and it still serves


def test_a_duplicate_key_in_an_event_keeps_its_last_value(app):
    heartbeat_id = create(app)
    raw = b'{"connector": "other", "connector": "connect", "connector_name": "c01"}'
    assert app.post("/api/v2/event", raw).json == {"received": 1, "matched": [heartbeat_id]}


###############################################################################
# Database errors
###############################################################################


@pytest.mark.sqlite_only("holds SQLite's file write lock")
def test_a_write_lock_held_by_another_process_gives_the_database_error(restart, caplog):
    with restart(busy_timeout=0.05) as service:
        app = client(service)
        kept = create(app)
        holder = LockHolder(restart.path)
        try:
            response = app.post_json("/api/v2/heartbeat", body(pattern={"k": "v"}), status=400)
            assert response.json == DB_ERROR
            assert "database is locked" in caplog.text
            assert "locked" not in response.text
            assert app.delete(f"/api/v2/heartbeat/{kept}", status=400).json == DB_ERROR
            assert app.post_json("/api/v2/event", C01, status=400).json == DB_ERROR
            assert app.get(f"/api/v2/heartbeat/{kept}").status_int == 200  # WAL: reads still served
            health = app.get("/healthz", status=503).json
            assert health["description"] == "database writes fail: database is locked"
        finally:
            holder.release()
        create(app, body(pattern={"k": "v"}))
        assert app.get("/healthz").json == {"status": "ok", "outbox": 0}
        assert len(app.get("/api/v2/heartbeat").json) == 2
        assert app.post_json("/api/v2/event", C01).json["matched"] == [kept]


@pytest.mark.sqlite_only("holds SQLite's file write lock")
def test_a_database_locked_at_start_starts_degraded_then_recovers(restart, clock, caplog):
    with restart() as service:
        heartbeat_id = new_heartbeat(service)
        clock.advance(20)
        service.tick()
    clock.advance(100)
    holder = LockHolder(restart.path)
    try:
        service = restart(busy_timeout=0.05)
        assert "cannot start the engine yet" in caplog.text
        app = client(service)
        assert app.post_json("/api/v2/event", C01, status=400).json == DB_ERROR
    finally:
        holder.release()
    with service:
        assert app.post_json("/api/v2/event", C01).json["matched"] == [heartbeat_id]
        # the outage was measured when the engine could finally start
        assert service.engine.status(heartbeat_id)["last_event"] == T0 + 120


@pytest.mark.sqlite_only("holds SQLite's file write lock")
def test_pings_to_an_engine_that_could_not_start_are_a_database_error_not_unknown(restart, clock, caplog):
    # A ping found no heartbeat in memory while the engine waited to start
    # (the database locked, or not answering, at start): a 404, which
    # `curl -fsS --retry 5` does not retry, so the job's ping was lost. It
    # is now the 503 a retry is for, by id, by slug and by push token.
    with restart(ping_key="k3y") as service:
        heartbeat_id = new_heartbeat(service, slug="nightly", push_token="tok-en-0123456789")
    holder = LockHolder(restart.path)
    try:
        service = restart(busy_timeout=0.05, ping_key="k3y")
        assert "cannot start the engine yet" in caplog.text
        anonymous = client(service, user=None)
        for path in (f"/ping/{heartbeat_id}", "/ping/k3y/nightly", "/api/push/tok-en-0123456789"):
            assert anonymous.get(path, status=503).status_int == 503, path
    finally:
        holder.release()
    with service:
        for path in (f"/ping/{heartbeat_id}", "/ping/k3y/nightly", "/api/push/tok-en-0123456789"):
            assert anonymous.get(path).status_int == 200, path
        assert service.engine.pings.counts["success"] == 3


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs mount this test may remount read-only (needs root)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def remount(mount_point, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


@pytest.mark.sqlite_only("makes the SQLite file read-only")
def test_a_read_only_file_system_gives_database_errors_until_it_is_writable(tmpfs, restart, caplog):
    path = str(tmpfs / "hb.db")
    with restart(db=path) as service:
        heartbeat_id = new_heartbeat(service)
    remount(tmpfs, "ro")  # root ignores file permissions, not a read-only mount
    with restart(db=path) as service:
        assert "unavailable at start" in caplog.text
        app = client(service)
        assert app.get("/api/v2/heartbeat", status=400).json == DB_ERROR
        assert app.post_json("/api/v2/heartbeat", body(pattern={"k": "v"}), status=400).json == DB_ERROR
        assert app.get("/healthz", status=503).json["status"] == "unavailable"
        assert "unable to open database file" in caplog.text
        remount(tmpfs, "rw")
        assert app.get("/healthz", status=503).json["description"].startswith("database writes fail")
        assert [doc["_id"] for doc in app.get("/api/v2/heartbeat").json] == [heartbeat_id]
        create(app, body(pattern={"k": "v"}))
        assert app.get("/healthz").json == {"status": "ok", "outbox": 0}
        assert len(app.get("/api/v2/heartbeat").json) == 2


def test_a_newer_schema_is_refused_by_the_cli(tmp_path):
    path = str(tmp_path / "hb.db")
    heartbeat_lite.create_app(db=path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {heartbeat_lite.SCHEMA_VERSION + 1}")
    result = run_cli("--port", "0", "--db", path)
    assert result.returncode == 2 and f"schema version {heartbeat_lite.SCHEMA_VERSION + 1}" in result.stderr


def test_a_failing_read_gives_the_database_error(app, service, monkeypatch, caplog):
    heartbeat_id = create(app)
    service.store.statement_hook = _broken_statement
    for path in ("/api/v2/heartbeat", f"/api/v2/heartbeat/{heartbeat_id}/status", "/api/v2/alarms"):
        assert app.get(path, status=400).json == DB_ERROR
    assert "disk I/O error" in caplog.text
    # one heartbeat's document is served from memory, database or not
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["_id"] == heartbeat_id


@pytest.mark.sqlite_only("reads PRAGMA user_version (PostgreSQL: test_postgresql.py)")
def test_the_schema_is_versioned(restart):
    restart().close()
    with sqlite3.connect(restart.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(heartbeat_lite.ConfigError, match="schema version 99"):
        restart()


def test_the_schema_file_matches_the_code():
    with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as f:
        assert f"PRAGMA user_version = {heartbeat_lite.SCHEMA_VERSION};" in f.read()


def test_data_survives_a_restart(restart):
    with restart() as service:
        app = client(service)
        heartbeat_id = create(app)
        before = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    with restart() as service:
        assert json.loads(service.engine.document(heartbeat_id)) == before


@pytest.mark.sqlite_only("a SQLite path's directory")
def test_a_missing_database_directory_is_a_config_error(tmp_path):
    with pytest.raises(heartbeat_lite.ConfigError, match="does not exist"):
        heartbeat_lite.create_app(db=str(tmp_path / "missing" / "hb.db"))
    assert not (tmp_path / "missing").exists()


###############################################################################
# Real server
###############################################################################


def test_the_seed_examples_over_http(service):
    """Each curl example of the seed, replayed as curl sends it."""
    with heartbeat_lite.serve(service, port=0) as base:
        # curl -X POST -u root:root -H "Content-Type: application/json" -d '{...}' .../api/v2/heartbeat
        seed_body = json.dumps(SEED_BODY, indent=2, ensure_ascii=False).encode("utf-8")
        status, headers, created = http("POST", f"{base}/api/v2/heartbeat", seed_body,
                                         content_type="application/json")
        assert status == 200 and created["name"] == "heartbeat created"
        assert headers["Content-Type"] == "application/json"
        heartbeat_id = created["description"]

        status, _, answer = http("POST", f"{base}/api/v2/heartbeat", seed_body, content_type="application/json")
        assert (status, answer) == (400, {"name": "", "description": "heartbeat pattern already exists"})
        status, _, answer = http("POST", f"{base}/api/v2/heartbeat", b"{", content_type="application/json")
        assert status == 400 and {k: answer[k] for k in ("name", "description")} == INVALID

        # curl -X GET -u root:root '.../api/v2/heartbeat/<id>'
        status, _, doc = http("GET", f"{base}/api/v2/heartbeat/{heartbeat_id}")
        assert status == 200 and doc["_id"] == heartbeat_id and doc["author"] == "créateur"
        # curl -X GET -u root:root '.../api/v2/heartbeat'
        status, _, docs = http("GET", f"{base}/api/v2/heartbeat")
        assert (status, docs) == (200, [doc])

        # curl -X DELETE -u root:root '.../api/v2/heartbeat/<id>'
        status, _, answer = http("DELETE", f"{base}/api/v2/heartbeat/{heartbeat_id}")
        assert (status, answer) == (200, {"name": "heartbeat removed", "description": heartbeat_id})
        for method in ("GET", "DELETE"):
            status, _, answer = http(method, f"{base}/api/v2/heartbeat/{heartbeat_id}")
            assert (status, answer) == (404, {"name": heartbeat_id, "description": "heartbeat not found"})

        status, headers, answer = http("GET", f"{base}/api/v2/heartbeat", user=None)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="heartbeat-lite"'


def test_the_scheduler_raises_alarms_with_no_tick(tmp_path):
    """Server mode: a 1s heartbeat goes down by itself, promptly, and a new
    deadline wakes the sleeping scheduler (it would otherwise sleep 5 s)."""
    alarmed = threading.Event()
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db"),
                                   on_alarm=lambda event: alarmed.set()) as service:
        with heartbeat_lite.serve(service, port=0) as base:
            status, _, created = http("POST", f"{base}/api/v2/heartbeat",
                                      json.dumps(body(expected_interval="1s")).encode())
            assert status == 200
            assert alarmed.wait(3), "no alarm within 3 s of a 1 s deadline"
            status, _, alarms = http("GET", f"{base}/api/v2/alarms")
            assert status == 200 and [a["heartbeat_id"] for a in alarms] == [created["description"]]
            scheduler_thread = service.scheduler._thread
            assert scheduler_thread.is_alive()
        assert not scheduler_thread.is_alive()  # serve() stopped it


def test_no_acknowledged_creation_is_lost_to_sigkill(tmp_path):
    db = str(tmp_path / "hb.db")
    process, base = start_server("--db", db)
    acknowledged = []

    def stream():
        for i in range(100_000):
            try:
                status, _, answer = http("POST", f"{base}/api/v2/heartbeat",
                                         json.dumps(body(pattern={"n": str(i)})).encode())
            except (OSError, HTTPException):  # the server is gone, maybe mid-answer
                return
            assert status == 200, answer  # raised again in the test's thread by writer.result()
            acknowledged.append(answer["description"])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        writer = pool.submit(stream)
        try:
            while len(acknowledged) < 200 and not writer.done():
                concurrent.futures.wait([writer], timeout=0.01)
            process.kill()  # SIGKILL, in the middle of the stream
            process.wait(timeout=30)
            writer.result(timeout=30)
        finally:
            process.kill()
            process.stderr.close()
    assert len(acknowledged) >= 200
    process, base = start_server("--db", db)
    try:
        status, _, docs = http("GET", f"{base}/api/v2/heartbeat")
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
    assert status == 200
    assert set(acknowledged) <= {doc["_id"] for doc in docs}


def test_concurrent_creations_of_one_pattern_make_one_heartbeat(service):
    answers = []
    with heartbeat_lite.serve(service, port=0, threads=8) as base:
        start = threading.Barrier(50)

        def create_one(i):
            start.wait()
            answers.append(http("POST", f"{base}/api/v2/heartbeat", json.dumps(body(name=f"racer {i}")).encode()))

        racers = [threading.Thread(target=create_one, args=(i,)) for i in range(50)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        status, _, docs = http("GET", f"{base}/api/v2/heartbeat")
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] + [400] * 49
    assert all(answer == {"name": "", "description": "heartbeat pattern already exists"}
               for status, _, answer in answers if status == 400)
    assert len(docs) == 1


def test_the_http_server_answers_its_own_errors_in_json(service):
    with heartbeat_lite.serve(service, port=0) as base:
        request = urllib.request.Request(f"{base}/api/v2/heartbeat", data=b"x", method="POST")
        request.add_header("Content-Length", str(heartbeat_lite.MAX_REQUEST_BODY_BYTES + 1))
        request.add_header("Authorization", _basic("root", "root"))
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        with caught.value as error:
            assert error.code == 413
            assert error.headers["Content-Type"] == "application/json"
            assert json.loads(error.read())["description"] == "request entity too large"


def test_stopping_lets_a_request_in_flight_finish(service, monkeypatch):
    entered, proceed = threading.Event(), threading.Event()
    real_list = service.engine.list

    def slow_list():
        entered.set()
        proceed.wait(10)
        return real_list()

    monkeypatch.setattr(service.engine, "list", slow_list)
    answers = []
    with heartbeat_lite.serve(service, port=0) as base:
        client = threading.Thread(target=lambda: answers.append(http("GET", f"{base}/api/v2/heartbeat")))
        client.start()
        assert entered.wait(10)
        threading.Timer(0.2, proceed.set).start()  # still busy when the stop begins
    client.join(10)
    assert [(status, docs) for status, _, docs in answers] == [(200, [])]


def test_serve_refuses_default_credentials_off_loopback(service):
    with pytest.raises(heartbeat_lite.ConfigError, match="not a loopback address"):
        with heartbeat_lite.serve(service, host="0.0.0.0", port=0):
            pass


def test_serve_stops_even_when_the_block_fails(service):
    with pytest.raises(ZeroDivisionError):
        with heartbeat_lite.serve(service, port=0) as base:
            1 / 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)


###############################################################################
# Command line
###############################################################################


def test_cli_version_and_help():
    assert run_cli("--version").stdout.strip() == f"heartbeat-lite {heartbeat_lite.__version__}"
    help_text = run_cli("--help").stdout
    for flag in ("--host", "--port", "--db", "--user", "--threads", "--log-level", "HEARTBEAT_LITE_"):
        assert flag in help_text


def test_cli_refuses_default_credentials_off_loopback(tmp_path):
    result = run_cli("--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "hb.db"))
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_missing_database_directory(tmp_path):
    result = run_cli("--port", "0", "--db", str(tmp_path / "missing" / "hb.db"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_cli_rejects_a_malformed_environment_value():
    result = run_cli("--port", "0", env={"HEARTBEAT_LITE_THREADS": "many"})
    assert result.returncode == 2 and "HEARTBEAT_LITE_THREADS: not a number: 'many'" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_then_stops_cleanly_on_a_signal(tmp_path, sig):
    db = str(tmp_path / "hb.db")
    process, base = start_server("--db", db, env={"HEARTBEAT_LITE_USERS": "alice:pw, bob:pw2"})
    try:
        status, _, created = http("POST", f"{base}/api/v2/heartbeat", json.dumps(SEED_BODY).encode(),
                                  user="bob:pw2", content_type="application/json")
        assert status == 200
        assert http("GET", f"{base}/api/v2/heartbeat", user="root:root")[0] == 401
    finally:
        process.send_signal(sig)
        rest = process.stderr.read()
        process.wait(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in rest
    assert '"POST /api/v2/heartbeat" 200' in rest
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM heartbeat").fetchall() == [(created["description"],)]


###############################################################################
# Status page
###############################################################################

# The status page's tests are in test_status_page.py and test_status_page_browser.py.


###############################################################################
# Metrics
###############################################################################


def test_metrics_follow_the_exposition_format(app, service, clock):
    hostile = create(app, body(name=HOSTILE, pattern={"k": "hostile"}, expected_interval="1s"))
    up = create(app, body(name="up one", pattern={"k": "up"}, expected_interval="1h"))
    create(app, body(name="pending one", pattern={"k": "pending"}, expected_interval="1h"))
    clock.advance(0.5)
    send(app, [{"k": "up"}, {"k": "nothing"}])
    clock.advance(1)
    service.tick()  # the hostile one goes down
    response = app.get("/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_prometheus(response.text)
    assert samples[("heartbeat_lite_heartbeats", (("status", "up"),))] == 1
    assert samples[("heartbeat_lite_heartbeats", (("status", "pending"),))] == 1
    assert samples[("heartbeat_lite_heartbeats", (("status", "down"),))] == 1
    assert samples[("heartbeat_lite_heartbeat_up", (("id", up), ("name", "up one")))] == 1
    assert samples[("heartbeat_lite_heartbeat_up", (("id", hostile), ("name", HOSTILE)))] == 0  # escaped, round trip
    assert samples[("heartbeat_lite_heartbeat_last_event_timestamp_seconds", (("id", up), ("name", "up one")))] \
        == T0 + 0.5
    assert not any(name.endswith("last_event_timestamp_seconds") and ("id", hostile) in labels
                   for name, labels in samples)  # no event yet: no sample
    assert samples[("heartbeat_lite_events_received_total", ())] == 2
    assert samples[("heartbeat_lite_alarms_raised_total", ())] == 1
    assert samples[("heartbeat_lite_outbox_events", ())] == 0


def test_the_metrics_grammar_check_can_fail():
    for broken in ('m{a="x"} 1\n', '# TYPE m gauge\nm{a="un"escaped"} 1\n', '# TYPE m gauge\nm{a="x"}\n',
                   '# TYPE m gauge\nm 1', '# TYPE m gauge\nm{a="new\nline"} 1\n'):
        with pytest.raises(AssertionError):
            parse_prometheus(broken)


###############################################################################
# OpenAPI
###############################################################################


def test_the_schema_check_can_fail(spec):
    heartbeat, error = pointer("components", "schemas", "Heartbeat"), pointer("components", "schemas", "Error")
    assert schema_errors(spec, heartbeat, {"_id": "x"})
    assert schema_errors(spec, error, {"name": "", "description": "d", "extra": 1})
    assert schema_errors(spec, pointer("components", "schemas", "Status"),
                         {"_id": "x", "status": "sideways", "last_event": None, "deadline": 1, "alarm_since": None})
    listed = pointer("paths", "/api/v2/heartbeat", "get", "responses", "200", "content", "application/json", "schema")
    assert schema_errors(spec, listed, [{"_id": "x"}])  # through the array's $ref
    assert not schema_errors(spec, error, {"name": "", "description": "d", "errors": ["e"]})
    with pytest.raises(OpenAPIValidationError):
        openapi_spec_validator.validate({**spec, "paths": {"/x": {"get": {"responses": {"200": {}}}}}})


def test_the_openapi_description_is_served_without_credentials(spec):
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["version"] == heartbeat_lite.__version__
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec))
    assert refs and all(lookup(spec, ref) for ref in refs)


def test_the_openapi_description_is_a_valid_openapi_3_1_document(spec):
    openapi_spec_validator.validate(spec)
    assert [server["url"] for server in spec["servers"]] == ["/"]  # whatever host serves it


def operations(spec):
    """(path, method, operation) for every operation of the description."""
    return [(path, method, operation) for path, item in spec["paths"].items()
            for method, operation in item.items() if method != "parameters"]


def test_every_operation_has_a_unique_operation_id_and_tags(spec):
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)) == len(operations(spec))
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]*)*", operation_id) for operation_id in ids)
    declared = {tag["name"] for tag in spec["tags"]}
    for path, method, operation in operations(spec):
        assert operation["tags"] and set(operation["tags"]) <= declared, (path, method)
        assert "500" in operation["responses"], (path, method)
    assert declared == {"heartbeat", "maintenance", "event", "alarm", "operator", "ping"}


def test_the_openapi_description_covers_every_route(spec, clock):
    with heartbeat_lite.create_app(clock=clock, genie_key="k") as service:  # every route: Opsgenie's too
        routes = {(route.rule.rstrip("/") or "/", route.method.lower()) for route in service.app.routes}
    routes = {(re.sub(r"<(\w+)>", r"{\1}", rule), method) for rule, method in routes}
    assert routes == {(path, method) for path, method, _ in operations(spec)}


def test_real_answers_match_the_openapi_description(spec, clock, monkeypatch):
    heartbeat_json = {"headers": {"Content-Type": "application/json"}}
    recorders = []
    with heartbeat_lite.create_app(clock=clock) as service:
        call = Recorder(service)
        recorders.append(call)
        hid = call("POST", "/api/v2/heartbeat", 200, body=json.dumps(body(expected_interval="1s")).encode(),
                   **heartbeat_json).json["description"]
        call("POST", "/api/v2/heartbeat", 400, body=b'{"name": 1}', **heartbeat_json)
        call("POST", "/api/v2/heartbeat", 400, body=json.dumps(body()).encode(), **heartbeat_json)
        call("POST", "/api/v2/heartbeat", 413, body=b"x" * (heartbeat_lite.MAX_HEARTBEAT_BODY_BYTES + 1))
        call("GET", "/api/v2/heartbeat", 200)
        call("GET", f"/api/v2/heartbeat/{hid}", 200)
        call("GET", "/api/v2/heartbeat/nope", 404)
        call("PUT", f"/api/v2/heartbeat/{hid}/", 200, body=json.dumps(body(expected_interval="1s", output="o")).encode())
        call("PUT", "/api/v2/heartbeat/nope", 404, body=json.dumps(body()).encode())
        call("PUT", f"/api/v2/heartbeat/{hid}", 400, body=b"[]")
        call("PUT", f"/api/v2/heartbeat/{hid}", 413, body=b"x" * (heartbeat_lite.MAX_HEARTBEAT_BODY_BYTES + 1))
        call("PUT", "/api/v2/heartbeat", 405, body=json.dumps(body()).encode())
        call("PATCH", f"/api/v2/heartbeat/{hid}", 405)
        call("POST", "/healthz", 405)
        call("GET", f"/api/v2/heartbeat/{hid}/status", 200)
        call("GET", "/api/v2/heartbeat/nope/status", 404)
        call("POST", "/api/v2/event", 200, body=json.dumps(C01).encode())
        call("POST", "/api/v2/event", 200, body=json.dumps([C01, {"x": 1}]).encode())
        call("POST", "/api/v2/event", 400, body=b"[1]")
        call("POST", "/api/v2/event", 413, body=json.dumps([{}] * (heartbeat_lite.MAX_EVENTS_PER_REQUEST + 1)).encode())
        clock.advance(2)
        service.tick()
        call("GET", f"/api/v2/heartbeat/{hid}/status", 200)
        assert call("GET", "/api/v2/alarms", 200).json
        call("GET", "/", 200)
        call("GET", "/metrics", 200)
        call("GET", "/healthz", 200)
        call("GET", "/api/v2/openapi.json", 200)
        call("DELETE", f"/api/v2/heartbeat/{hid}", 200)
        call("DELETE", f"/api/v2/heartbeat/{hid}", 404)
        call("GET", "/api/v2/heartbeat", 401, headers={"Authorization": _basic("root", "wrong")})
        with monkeypatch.context() as patch:
            patch.setattr(service.engine, "list", _kaboom)
            call("GET", "/api/v2/heartbeat", 500)
        service.store.statement_hook = _broken_statement
        call("GET", "/api/v2/heartbeat", 400)
        call("GET", "/healthz", 503)
    hashed = {"alice": str(heartbeat_lite.PasswordHash.create("pw", 1000))}
    with heartbeat_lite.create_app(users=hashed) as service:
        call = Recorder(service, user=("alice", "guess"))
        recorders.append(call)
        for _ in range(heartbeat_lite.AUTH_FAILURE_BURST):
            call("GET", "/api/v2/alarms", 401)
        call("GET", "/api/v2/alarms", 429)

    seen_statuses = set()
    for recorder in recorders:
        for method, path, response in recorder.answers:
            where = f"{method} {path} {response.status_int}"
            answer = described_answer(spec, method, path, response.status_int)
            content = lookup(spec, answer)
            media_type = next((t for t in (response.headers["Content-Type"], response.content_type)
                               if t in content["content"]), None)
            assert media_type, where
            if response.content_type == "application/json":
                assert schema_errors(spec, answer + pointer("content", media_type, "schema")[1:],
                                     response.json) == [], where
            for header, described in content.get("headers", {}).items():
                assert header in response.headers or not described.get("required", False), where
            seen_statuses.add(response.status_int)
    assert seen_statuses == {200, 400, 401, 404, 405, 413, 429, 500, 503}


###############################################################################
# Benchmark helpers
###############################################################################

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:40429/api/v2/event
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.73ms  586.52us   7.11ms   72.39%
    Req/Sec     4.65k   310.50     4.97k    80.00%
  Latency Distribution
     50%  850.00us
     75%    2.05ms
     90%    2.47ms
     99%    1.20s
  9247 requests in 2.00s, 3.33MB read
Requests/sec:   4622.98
Transfer/sec:      1.67MB
"""


def test_bench_reads_wrk_output():
    import bench

    assert bench.parse_wrk(WRK_OUTPUT) == {"rps": 4622.98, "p50": pytest.approx(850e-6), "p99": 1.2}
    with pytest.raises(RuntimeError, match="non-2xx"):
        bench.parse_wrk(WRK_OUTPUT.replace("Requests/sec", "  Non-2xx or 3xx responses: 3\nRequests/sec"))


def test_bench_plans_rows_by_group():
    import bench

    measurements = {"ticks", "ticks_scheduled", "storm", "alarms", "page", "notify", "alertmanager"}
    rows = {row[0] for row in bench.LOAD_ROWS}
    for target in bench.TARGETS:  # every target can be measured
        assert set(target.needs) <= rows | measurements, target.name
    targets, needs, http_rows = bench.plan(["http"])
    assert {target.group for target in targets} == {"http"}
    # part three: ingestion and GET one at 8 and 64 connections, the batch, each beside its baseline
    assert {row[0] for row in http_rows} == {"base_post", "ingest", "base_get", "get_one", "base_post_many",
                                             "ingest_many", "base_get_many", "get_one_many", "base_batch", "batch"}
    assert {row[6] for row in http_rows} == {8, "many"}
    assert not needs & measurements
    assert len(bench.plan()[0]) == len(bench.TARGETS)
    with pytest.raises(SystemExit):
        bench.main(["--only", "nothing"])


def test_bench_percentiles():
    import bench

    values = sorted(range(1, 101))
    assert (bench.percentile(values, 50), bench.percentile(values, 99), bench.percentile(values, 100)) == (50, 99, 100)
    assert bench.percentile([7], 99) == 7


###############################################################################
# Documentation
###############################################################################


def readme_block(heading):
    """The first ```python block under a README heading."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(heading + "\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_embedding_example_runs_as_written():
    exec(compile(readme_block("## Embedding"), "README.md", "exec"), {})


def test_the_readme_leads_with_the_ci_test_command():
    with open(os.path.join(HERE, ".ci", "run"), encoding="utf-8") as f:
        ci_command = [line for line in f if "pytest" in line][0].strip()
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme_head = f.read()[:800]
    assert ci_command in readme_head


###############################################################################
# Engine structure: pure deadline rules, read model, publishing
###############################################################################


def test_the_deadline_is_the_last_refresh_plus_the_interval():
    row = {"status": "up", "refreshed": 100.0, "interval_seconds": 60, "last_event": 100.0}
    assert heartbeat_lite.deadline_of(row) == 160
    assert heartbeat_lite.deadline_of({**row, "status": "down"}) == 160  # the one it missed
    later = heartbeat_lite.with_refresh(row, 130.5)
    assert (later["refreshed"], later["last_event"], heartbeat_lite.deadline_of(later)) == (130.5, 130.5, 190.5)
    assert heartbeat_lite.with_refresh(row, None) is row


def test_the_next_tick_is_the_earliest_deadline_or_the_alive_record():
    alive = heartbeat_lite.ALIVE_INTERVAL_SECONDS
    assert heartbeat_lite.next_tick_at(100, None) == 100 + alive
    assert heartbeat_lite.next_tick_at(100, 101) == 101
    assert heartbeat_lite.next_tick_at(100, 90) == 100  # overdue: now
    assert heartbeat_lite.next_tick_at(100, 100 + alive + 1) == 100 + alive


def test_the_status_document_reads_only_the_row():
    row = {"id": "x", "status": "pending", "refreshed": 10.25, "interval_seconds": 60,
           "last_event": None, "alarm_since": None}
    assert heartbeat_lite.status_document(row) == {
        "_id": "x", "status": "pending", "last_event": None, "deadline": 70.25, "alarm_since": None, "maintenance": None}


def test_the_read_model_keeps_recent_refreshes_in_memory_until_written():
    row = {"id": "a", "pattern": '{"k":"v"}', "status": "up", "refreshed": 100.0, "name": "n",
           "author": "u", "description": "", "output": "", "expected_interval": "1m", "created": 1,
           "updated": 1}
    model = heartbeat_lite.ReadModel.loaded([row])
    assert model.match([{"k": "v", "other": "x"}]) == ["a"]
    assert model.refreshed(["a"], 100.2) == ([], ["a"])  # within the write interval: kept
    assert model.unwritten() == {"a": 100.2}
    assert model.refreshed(["a"], 101.0) == (["a"], [])  # stale stored time: write it
    model.written({"a": 101.0})
    assert model.unwritten() == {}
    model.deleted(row)
    assert model.match([{"k": "v"}]) == []
    with pytest.raises(heartbeat_lite.NotFound):
        model.document("a")


def test_on_alarm_can_call_back_into_the_service_over_http(clock):
    answers = []

    def on_alarm(event):
        if event["state"] == 3:  # the heartbeat's own event, sent back over HTTP: it comes back up
            request = urllib.request.Request(
                base_url + "/api/v2/event", data=json.dumps(SEED_BODY["pattern"]).encode(), method="POST",
                headers={"Authorization": "Basic " + base64.b64encode(b"root:root").decode()})
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append(json.loads(response.read()))
        seen.append(event["state"])

    seen = []
    with heartbeat_lite.create_app(clock=clock, on_alarm=on_alarm) as service:
        with heartbeat_lite.serve(service, port=0) as base_url:
            heartbeat_id = new_heartbeat(service)
            clock.advance(61)
            started = time.monotonic()
            service.tick()  # the alarm's callback posts the event back while the tick runs
            assert time.monotonic() - started < 5  # no deadlock waiting for the timeout
            assert answers == [{"received": 1, "matched": [heartbeat_id]}]
            assert seen == [3, 0]  # the alarm, then the resolution its callback caused, in order
            assert service.engine.status(heartbeat_id)["status"] == "up"


def test_events_are_published_in_commit_order_by_one_thread_at_a_time(clock):
    seen, inside = [], []

    def on_alarm(event):
        inside.append(threading.get_ident())
        seen.append((event["heartbeat_name"], event["state"]))
        if len(inside) == 1:  # while the first is being published, more commits happen
            service.engine.ingest([{"k": "a"}])
            service.engine.ingest([{"k": "b"}])

    with heartbeat_lite.create_app(clock=clock, on_alarm=on_alarm) as service:
        new_heartbeat(service, name="a", pattern={"k": "a"})
        new_heartbeat(service, name="b", pattern={"k": "b"})
        clock.advance(61)
        service.tick()
    assert seen == [("a", 3), ("b", 3), ("a", 0), ("b", 0)]
    assert set(inside) == {threading.get_ident()}  # one thread published them all


###############################################################################
# Storms
###############################################################################


def many_heartbeats(service, count, interval="1m"):
    with service.store.atomic():
        return [new_heartbeat(service, name=f"hb {i}", pattern={"storm": str(i)}, expected_interval=interval)
                for i in range(count)]


def test_a_storm_goes_down_in_chunks_with_one_log_line_each(clock, caplog):
    published, down_when_published = [], []

    def on_alarm(event):
        if not published:  # between the first chunk and the next: the lock is free for requests
            other = threading.Thread(target=service.engine.ingest, args=([{"storm": "other"}],))
            other.start()
            other.join(5)
            down_when_published.append((other.is_alive(), len(service.engine.alarms())))
        published.append(event)

    chunk = heartbeat_lite.STORM_CHUNK_HEARTBEATS
    with heartbeat_lite.create_app(clock=clock, on_alarm=on_alarm) as service:
        ids = many_heartbeats(service, 2 * chunk + chunk // 2)
        clock.advance(61)
        with caplog.at_level(logging.INFO, logger="heartbeat_lite"):
            service.tick()
        assert len(service.engine.alarms()) == len(ids)
    assert down_when_published == [(False, chunk)]  # ingestion got in; only the first chunk was down yet
    assert [event["heartbeat_id"] for event in published] == ids  # every alarm, in deadline order
    storm_lines = [r.getMessage() for r in caplog.records if "at once" in r.getMessage()]
    assert storm_lines == [
        f"{size} alarm(s) raised, 0 resolved at once ('hb {first}', 'hb {first + 1}', 'hb {first + 2}' "
        f"and {size - 3} more)" for first, size in ((0, chunk), (chunk, chunk), (2 * chunk, chunk // 2))]
    assert not any("is down" in r.getMessage() for r in caplog.records)


def test_a_storm_comes_back_in_chunks(service, clock, alarms_seen, caplog):
    count = 2 * heartbeat_lite.STORM_CHUNK_HEARTBEATS + heartbeat_lite.STORM_CHUNK_HEARTBEATS // 2
    ids = many_heartbeats(service, count)
    clock.advance(61)
    service.tick()
    alarms_seen.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="heartbeat_lite"):
        assert service.engine.ingest([{"storm": str(i)} for i in range(count)]) == ids
    assert [e["state"] for e in alarms_seen] == [0] * count
    assert service.engine.alarms() == []
    assert len([r for r in caplog.records if "resolved at once" in r.getMessage()]) == 3


def test_a_tick_between_storm_chunks_does_not_put_down_what_a_later_chunk_refreshes(clock, alarms_seen):
    chunk = heartbeat_lite.STORM_CHUNK_HEARTBEATS

    def on_alarm(event):
        alarms_seen.append(event)
        if len(alarms_seen) == 1:  # publishing the first chunk's resolutions
            clock.advance(1)  # past the up heartbeat's deadline: its refresh is not written yet
            service.tick()

    with heartbeat_lite.create_app(clock=clock, on_alarm=on_alarm) as service:
        many_heartbeats(service, chunk + 1, interval="1h")
        clock.advance(3601)
        service.tick()  # all down
        alarms_seen.clear()
        up = new_heartbeat(service, pattern={"up": "1"}, expected_interval="30s")
        clock.advance(20)
        service.engine.ingest([{"up": "1"}])
        clock.advance(29.5)  # 0.5 s before its deadline, the storm and its event arrive together
        events = [{"storm": str(i)} for i in range(chunk + 1)] + [{"up": "1"}]
        service.engine.ingest(events)
        assert service.engine.status(up)["status"] == "up"
    assert [e["state"] for e in alarms_seen] == [0] * (chunk + 1)  # and no alarm for it


def test_bench_runs_the_scheduled_rows_as_one_group():
    import bench

    targets, needs, rows = bench.plan(["schedules"])
    assert {target.group for target in targets} == {"schedules"} and len(targets) == 3
    assert needs == {"ticks_scheduled", "ingest_large", "ingest_scheduled"}
    assert {row[2] for row in rows} == {"large", "scheduled"}  # the interval and the scheduled servers
    body = heartbeat_lite.validate_heartbeat({"name": "n", "pattern": {"k": "v"}, **bench.scheduled_fields(1439)},
                                             "root")
    assert (body["schedule"], body["tz"]) == ("59 23 * * *", "Asia/Tokyo")
