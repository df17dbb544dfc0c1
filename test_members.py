"""Tests for watching a population (docs/concepts.md): group_by members,
expected members, retirement, the member cap, the members routes, and the
intake silence; every rule on a fake clock, ticked by hand."""

import json
import logging
import sqlite3

import pytest

import heartbeat_lite
from testing_support import (
    BACKUP,
    INVALID,
    T0,
    Recorder,
    body,
    client,
    create,
    described_answer,
    grouped,
    host,
    local,
    lookup,
    schema_errors,
    window,
)

MINUTE = 60


def send(app, *events):
    return app.post_json("/api/v2/event", list(events)).json


def status(app, heartbeat_id):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json


def members(app, heartbeat_id, query=""):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/members{query}").json


def member_states(app, heartbeat_id, query=""):
    """``{host: status}`` of the first page."""
    return {entry["member"]["host"]: entry["status"] for entry in members(app, heartbeat_id, query)["members"]}


def seen(alarms_seen):
    """``(state, resource)`` of every published event, in order."""
    return [(event["state"], event["resource"]) for event in alarms_seen]


def at(clock, service, t):
    clock.now = t
    return service.tick()


###############################################################################
# The document
###############################################################################


@pytest.mark.parametrize("changes, reason", [
    ({"group_by": "host"}, "group_by: must be a list of 1 to 4 event keys"),
    ({"group_by": []}, "group_by: must be a list of 1 to 4 event keys"),
    ({"group_by": ["a", "b", "c", "d", "e"]}, "group_by: must be a list of 1 to 4 event keys"),
    ({"group_by": [""]}, "group_by: must be a list of 1 to 4 event keys"),
    ({"group_by": [1]}, "group_by: must be a list of 1 to 4 event keys"),
    ({"group_by": ["host", "host"]}, "group_by: a key appears twice"),
    ({"group_by": ["connector", "host"]}, "group_by: a key of the pattern cannot group its events: connector"),
    ({"group_by": None, "expected_members": [{"host": "a"}]}, "expected_members: needs group_by"),
    ({"expected_members": {"host": "a"}}, "expected_members: must be a list of at most 10000 member objects"),
    ({"expected_members": [{"host": "a"}, {"hast": "b"}]}, "expected_members[1]: must give a string"),
    ({"expected_members": [{"host": "a", "extra": "x"}]}, "expected_members[0]: must give a string"),
    ({"expected_members": [{"host": 1}]}, "expected_members[0]: must give a string"),
    ({"expected_members": [{"host": "a"}, {"host": "a"}]}, "expected_members[1]: listed twice"),
    ({"group_by": None, "retire_after": "1h"}, "retire_after: needs group_by"),
    ({"retire_after": "1d"}, "retire_after: must look like 30s, 5m or 2h"),
    ({"retire_after": "8761h"}, "retire_after: at most 365 days (8760h)"),
])
def test_it_rejects_a_bad_grouping(app, changes, reason):
    doc = {"name": "backups", "pattern": BACKUP, "expected_interval": "1m", "group_by": ["host"], **changes}
    answer = app.post_json("/api/v2/heartbeat", {k: v for k, v in doc.items() if v is not None}, status=400).json
    assert {key: answer[key] for key in INVALID} == INVALID
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/heartbeat").json == []


def test_too_many_expected_members_are_refused(monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "MAX_EXPECTED_MEMBERS", 2)
    with pytest.raises(heartbeat_lite.Invalid, match="at most 2 member objects"):
        heartbeat_lite.validate_heartbeat({"name": "n", "pattern": BACKUP, "expected_interval": "1m",
                                           "group_by": ["host"], "expected_members": [{"host": "a"}] * 3}, "u")


def test_the_new_fields_appear_only_when_set(app):
    plain = create(app, body())
    assert set(app.get(f"/api/v2/heartbeat/{plain}").json) == {
        "_id", "name", "author", "description", "pattern", "expected_interval", "output", "created", "updated"}
    assert "members" not in status(app, plain)
    heartbeat_id = grouped(app, group_by=["host", "app"], expected_members=[{"app": "db", "host": "a"}],
                           retire_after="24h")
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert (doc["group_by"], doc["expected_members"], doc["retire_after"]) == (
        ["host", "app"], [{"app": "db", "host": "a"}], "24h")


###############################################################################
# Members
###############################################################################


def test_each_combination_of_values_is_a_member(app, clock):
    heartbeat_id = grouped(app, group_by=["host", "app"])
    answer = send(app, host("a", app="db"), host("a", app="web"), host("b", app="db"), host("a", app="db"))
    assert answer == {"received": 4, "matched": [heartbeat_id]}
    page = members(app, heartbeat_id)
    assert [entry["member"] for entry in page["members"]] == [
        {"app": "db", "host": "a"}, {"app": "db", "host": "b"}, {"app": "web", "host": "a"}]
    assert page["next"] is None
    assert page["members"][0] == {"member": {"app": "db", "host": "a"}, "status": "up", "last_event": T0,
                                  "deadline": T0 + MINUTE, "alarm_since": None}
    assert status(app, heartbeat_id)["members"] == {"pending": 0, "up": 3, "late": 0, "down": 0, "paused": 0}


@pytest.mark.parametrize("event", [
    BACKUP,  # no host
    {**BACKUP, "host": 7},
    {**BACKUP, "host": ["a"]},
    {**BACKUP, "host": None},
    {"connector": "other", "host": "a"},
])
def test_an_event_naming_no_member_matches_nothing(app, event):
    heartbeat_id = grouped(app)
    assert send(app, event)["matched"] == []
    assert members(app, heartbeat_id)["members"] == []
    assert status(app, heartbeat_id)["status"] == "pending"


def test_a_silent_member_alarms_under_its_own_resource(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app, pattern={"connector": "backup", "connector_name": "nightly"}, output="no backup")
    event = {"connector": "backup", "connector_name": "nightly"}
    send(app, {**event, "host": "a"}, {**event, "host": "b"})
    clock.advance(30)
    send(app, {**event, "host": "b"})
    at(clock, service, T0 + MINUTE)
    assert alarms_seen == [{
        "connector": "heartbeat", "connector_name": "heartbeat", "event_type": "check", "source_type": "resource",
        "component": "heartbeats", "resource": "connector:backup.connector_name:nightly.host:a", "state": 3,
        "output": "no backup", "timestamp": int(T0 + MINUTE), "heartbeat_id": heartbeat_id,
        "heartbeat_name": "backups", "member": {"host": "a"}}]
    assert member_states(app, heartbeat_id) == {"a": "down", "b": "up"}
    state = status(app, heartbeat_id)
    assert (state["status"], state["alarm_since"], state["last_event"]) == ("down", T0 + MINUTE, T0 + 30)
    assert state["deadline"] == T0 + 30 + MINUTE  # the earliest of those not down
    assert state["members"]["down"] == 1 and state["members"]["up"] == 1
    listed = app.get("/api/v2/alarms").json
    assert [(alarm["resource"], alarm["member"], alarm["since"]) for alarm in listed] == [
        ("connector:backup.connector_name:nightly.host:a", {"host": "a"}, T0 + MINUTE)]
    clock.advance(5)
    send(app, {**event, "host": "a"})
    assert alarms_seen[-1]["state"] == 0 and alarms_seen[-1]["member"] == {"host": "a"}
    assert alarms_seen[-1]["resource"] == "connector:backup.connector_name:nightly.host:a"
    assert status(app, heartbeat_id)["status"] == "up"
    assert app.get("/api/v2/alarms").json == []


def test_member_pairs_sort_among_the_pattern_pairs(service, clock, alarms_seen):
    app = client(service)
    grouped(app, pattern={"b": "2", "d": "4"}, group_by=["e", "a", "c"])
    send(app, {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"})
    at(clock, service, T0 + MINUTE)
    assert alarms_seen[0]["resource"] == "a:1.b:2.c:3.d:4.e:5"
    assert alarms_seen[0]["member"] == {"a": "1", "c": "3", "e": "5"}


def test_the_worst_member_status_is_the_heartbeats(app, service, clock):
    heartbeat_id = grouped(app, late_after="30s", expected_members=[{"host": "p"}])
    assert status(app, heartbeat_id)["status"] == "pending"
    clock.advance(20)
    send(app, host("u"))
    assert status(app, heartbeat_id)["status"] == "pending"  # pending > up
    at(clock, service, T0 + 30)
    assert member_states(app, heartbeat_id) == {"p": "late", "u": "up"}
    assert status(app, heartbeat_id)["status"] == "late"
    at(clock, service, T0 + MINUTE)
    assert member_states(app, heartbeat_id) == {"p": "down", "u": "late"}
    assert status(app, heartbeat_id)["status"] == "down"
    send(app, host("p"), host("u"))
    assert status(app, heartbeat_id)["status"] == "up"
    assert app.get("/api/v2/heartbeat").json[0]["_id"] == heartbeat_id


def test_late_after_applies_to_each_member(app, service, clock, alarms_seen):
    grouped(app, late_after="30s")
    send(app, host("a"))
    at(clock, service, T0 + 30)
    at(clock, service, T0 + MINUTE)
    assert [(event["state"], event["timestamp"]) for event in alarms_seen] == [(1, T0 + 30), (3, T0 + MINUTE)]
    send(app, host("a"))
    assert alarms_seen[-1]["state"] == 0


def test_an_expected_member_that_never_reports_alarms(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app, expected_members=[{"host": "a"}, {"host": "b"}])
    assert member_states(app, heartbeat_id) == {"a": "pending", "b": "pending"}
    clock.advance(10)
    send(app, host("b"))
    at(clock, service, T0 + MINUTE)
    assert seen(alarms_seen) == [(3, "connector:backup.host:a")]
    assert member_states(app, heartbeat_id) == {"a": "down", "b": "up"}


def test_a_member_down_for_retire_after_is_retired(app, service, clock, alarms_seen, caplog):
    heartbeat_id = grouped(app, retire_after="10m", expected_members=[{"host": "kept"}])
    send(app, host("gone"))
    at(clock, service, T0 + MINUTE)
    assert sorted(seen(alarms_seen)) == [(3, "connector:backup.host:gone"), (3, "connector:backup.host:kept")]
    at(clock, service, T0 + MINUTE + 599)
    assert member_states(app, heartbeat_id) == {"gone": "down", "kept": "down"}
    with caplog.at_level(logging.INFO, logger="heartbeat_lite"):
        at(clock, service, T0 + MINUTE + 600)
    assert alarms_seen[-1]["state"] == 0 and alarms_seen[-1]["member"] == {"host": "gone"}
    assert alarms_seen[-1]["timestamp"] == int(T0 + MINUTE + 600)
    assert member_states(app, heartbeat_id) == {"kept": "down"}  # an expected member is never retired
    assert any("member {\"host\":\"gone\"}" in record.getMessage() and "retired" in record.getMessage()
               for record in caplog.records)
    assert [alarm["member"] for alarm in app.get("/api/v2/alarms").json] == [{"host": "kept"}]
    send(app, host("gone"))  # it may come back: a new member
    assert member_states(app, heartbeat_id) == {"gone": "up", "kept": "down"}


def test_a_late_tick_goes_down_and_retires_at_once(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app, retire_after="1m")
    send(app, host("a"))
    at(clock, service, T0 + 10 * MINUTE)
    assert [(event["state"], event["timestamp"]) for event in alarms_seen] == [
        (3, T0 + MINUTE), (0, T0 + 2 * MINUTE)]
    assert members(app, heartbeat_id)["members"] == []
    assert status(app, heartbeat_id)["status"] == "pending"  # no member left


def test_pausing_resolves_member_alarms_and_resuming_starts_afresh(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app)
    send(app, host("a"), host("b"))
    clock.advance(30)
    send(app, host("b"))
    at(clock, service, T0 + MINUTE)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    assert seen(alarms_seen) == [(3, "connector:backup.host:a"), (0, "connector:backup.host:a")]
    assert member_states(app, heartbeat_id) == {"a": "paused", "b": "paused"}
    assert status(app, heartbeat_id)["status"] == "paused" and status(app, heartbeat_id)["deadline"] is None
    clock.advance(10)
    send(app, host("a"), host("new"))  # counted, nothing else
    page = {entry["member"]["host"]: entry for entry in members(app, heartbeat_id)["members"]}
    assert page["a"]["status"] == "paused" and page["a"]["last_event"] == T0 + MINUTE + 10
    assert page["new"]["status"] == "paused"
    at(clock, service, T0 + 10 * MINUTE)
    assert len(alarms_seen) == 2
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/resume")
    assert member_states(app, heartbeat_id) == {"a": "pending", "b": "pending", "new": "pending"}
    assert status(app, heartbeat_id)["status"] == "pending"
    at(clock, service, T0 + 11 * MINUTE)
    assert len([event for event in alarms_seen if event["state"] == 3]) == 4


def test_a_maintenance_window_protects_the_members(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app)
    send(app, host("a"))
    window(app, T0 + 30, T0 + 2 * MINUTE, pattern=BACKUP)
    at(clock, service, T0 + 30)
    at(clock, service, T0 + MINUTE)
    assert alarms_seen == [] and member_states(app, heartbeat_id) == {"a": "up"}
    assert members(app, heartbeat_id)["members"][0]["deadline"] == T0 + 3 * MINUTE
    at(clock, service, T0 + 2 * MINUTE)
    assert members(app, heartbeat_id)["members"][0]["deadline"] == T0 + 3 * MINUTE  # the end rule
    at(clock, service, T0 + 3 * MINUTE)
    assert seen(alarms_seen) == [(3, "connector:backup.host:a")]
    assert local  # imported with window


def test_the_member_cap_refuses_new_members_and_says_it_once(app, monkeypatch, clock, caplog):
    monkeypatch.setattr(heartbeat_lite, "MAX_MEMBERS_PER_HEARTBEAT", 2)
    heartbeat_id = grouped(app)
    with caplog.at_level(logging.WARNING, logger="heartbeat_lite"):
        send(app, host("a"), host("b"), host("c"))
        clock.advance(1)
        send(app, host("a"), host("d"))
        send(app, host("e"))
    assert member_states(app, heartbeat_id) == {"a": "up", "b": "up"}
    assert members(app, heartbeat_id)["members"][0]["last_event"] == T0 + 1  # still refreshed
    assert len([r for r in caplog.records if "the most it may have" in r.getMessage()]) == 1
    app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members?host=b")
    send(app, host("c"))
    assert member_states(app, heartbeat_id) == {"a": "up", "c": "up"}


def test_a_member_value_is_at_most_255_characters_as_a_pattern_value(app):
    heartbeat_id = grouped(app)
    assert send(app, host("x" * 256))["matched"] == []  # names no member
    assert send(app, host("x" * 255))["matched"] == [heartbeat_id]
    assert [entry["member"]["host"] for entry in members(app, heartbeat_id)["members"]] == ["x" * 255]


def test_the_members_of_every_heartbeat_together_are_capped(app, monkeypatch, caplog):
    monkeypatch.setattr(heartbeat_lite, "MAX_MEMBERS", 5)
    first = grouped(app)
    second = grouped(app, pattern={"connector": "other"})
    with caplog.at_level(logging.WARNING, logger="heartbeat_lite"):
        send(app, host("a"), host("b"), host("c"))
        send(app, *({"connector": "other", "host": name} for name in "pqrs"))
        send(app, {"connector": "other", "host": "t"})
    assert sorted(member_states(app, first)) == ["a", "b", "c"]
    assert sorted(member_states(app, second)) == ["p", "q"]
    assert len([r for r in caplog.records if "for every heartbeat together" in r.getMessage()]) == 1
    answer = app.post_json("/api/v2/heartbeat", {"name": "more", "pattern": {"connector": "more"},
                                                  "expected_interval": "1m", "group_by": ["host"],
                                                  "expected_members": [{"host": "m"}]}, status=400).json
    assert answer["errors"][0].startswith("expected_members: 1 more members do not fit")
    assert len(app.get("/api/v2/heartbeat").json) == 2  # nothing created
    app.delete(f"/api/v2/heartbeat/{first}/members?host=a")
    send(app, {"connector": "other", "host": "t"})
    assert sorted(member_states(app, second)) == ["p", "q", "t"]


###############################################################################
# The members routes
###############################################################################


def test_members_page_through_with_a_stable_cursor(app):
    heartbeat_id = grouped(app)
    send(app, *(host(f"h{i:02}") for i in range(0, 10, 2)))  # h00 h02 ... h08
    first = members(app, heartbeat_id, "?limit=2")
    assert [entry["member"]["host"] for entry in first["members"]] == ["h00", "h02"]
    send(app, host("h01"), host("h03"))  # one before the cursor, one after
    second = members(app, heartbeat_id, f"?limit=2&after={first['next']}")
    assert [entry["member"]["host"] for entry in second["members"]] == ["h03", "h04"]
    app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members?host=h04")  # the cursor's own member may go
    third = members(app, heartbeat_id, f"?limit=2&after={second['next']}")
    assert [entry["member"]["host"] for entry in third["members"]] == ["h06", "h08"]
    assert third["next"] is None or members(app, heartbeat_id, f"?after={third['next']}")["members"] == []
    assert len(members(app, heartbeat_id)["members"]) == 6  # default limit 100


def test_members_filter_by_status(app, service, clock):
    heartbeat_id = grouped(app, expected_members=[{"host": "p"}])
    send(app, host("a"), host("b"))
    assert member_states(app, heartbeat_id, "?status=up") == {"a": "up", "b": "up"}
    assert member_states(app, heartbeat_id, "?status=pending,down") == {"p": "pending"}
    page = members(app, heartbeat_id, "?status=up&limit=1")
    assert member_states(app, heartbeat_id, f"?status=up&after={page['next']}") == {"b": "up"}


@pytest.mark.parametrize("query, reason", [
    ("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit"), ("?status=dead", "status"),
    ("?after=bm90IGEgY3Vyc29y", "after"), ("?after=%%%", "after"), ("?page=2", "unknown parameter"),
])
def test_bad_members_parameters_get_a_json_400(app, query, reason):
    heartbeat_id = grouped(app)
    answer = app.get(f"/api/v2/heartbeat/{heartbeat_id}/members{query}", status=400).json
    assert answer["description"] == "invalid query parameters."
    assert any(error.startswith(reason) for error in answer["errors"]), answer


def test_members_of_an_unknown_or_plain_heartbeat(app):
    app.get("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93/members", status=404)
    assert members(app, create(app, body())) == {"members": [], "next": None}


def test_deleting_a_member_resolves_its_alarm(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app, group_by=["host", "app"])
    send(app, host("a", app="db"), host("b", app="db"))
    at(clock, service, T0 + MINUTE)
    assert status(app, heartbeat_id)["members"]["down"] == 2
    answer = app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members?app=db&host=a").json
    assert answer == {"name": "member removed", "description": heartbeat_id}
    assert alarms_seen[-1]["state"] == 0 and alarms_seen[-1]["member"] == {"app": "db", "host": "a"}
    assert [entry["member"]["host"] for entry in members(app, heartbeat_id)["members"]] == ["b"]
    gone = app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members?app=db&host=a", status=404).json
    assert gone == {"name": '{"app":"db","host":"a"}', "description": "member not found"}
    for query in ("?host=b", "?host=b&app=db&x=1", "?host=b&host=c&app=db", ""):
        wrong = app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members{query}", status=400).json
        assert wrong["description"] == "invalid query parameters.", query
    app.delete("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93/members?host=a", status=404)


def test_deleting_a_grouped_heartbeat_resolves_every_member_alarm(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app)
    send(app, host("a"), host("b"), host("c"))
    clock.advance(30)
    send(app, host("c"))
    at(clock, service, T0 + MINUTE)
    app.delete(f"/api/v2/heartbeat/{heartbeat_id}")
    assert seen(alarms_seen)[2:] == [(0, "connector:backup.host:a"), (0, "connector:backup.host:b")]
    assert service.store.member_counts() == {}


def test_the_members_answers_follow_the_description(service, clock, spec):
    record = Recorder(service)
    heartbeat_id = grouped(record.app, expected_members=[{"host": "p"}], retire_after="1h", late_after="30s")
    send(record.app, host("a"), host("b"))
    at(clock, service, T0 + 40)
    record("GET", f"/api/v2/heartbeat/{heartbeat_id}", 200)
    record("GET", f"/api/v2/heartbeat/{heartbeat_id}/status", 200)
    record("GET", f"/api/v2/heartbeat/{heartbeat_id}/members?limit=1", 200)
    record("GET", f"/api/v2/heartbeat/{heartbeat_id}/members?limit=0", 400)
    record("GET", "/api/v2/alarms", 200)
    record("DELETE", f"/api/v2/heartbeat/{heartbeat_id}/members?host=a", 200)
    record("DELETE", f"/api/v2/heartbeat/{heartbeat_id}/members?host=a", 404)
    record("DELETE", f"/api/v2/heartbeat/{heartbeat_id}/members?hast=a", 400)
    for method, path, response in record.answers:
        fragment = described_answer(spec, method, path.split("?")[0], response.status_int)
        schema = heartbeat_lite_schema(spec, fragment)
        if schema is not None:
            assert schema_errors(spec, schema, response.json) == [], (method, path)


def heartbeat_lite_schema(spec, fragment):
    """The pointer to the JSON schema of the answer at ``fragment``."""
    answer = lookup(spec, fragment)
    if "content" not in answer:
        return None
    return fragment + "/content/application~1json/schema"


###############################################################################
# Updates
###############################################################################


def test_changing_group_by_resolves_every_member_alarm_and_starts_afresh(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app, expected_members=[{"host": "x"}])
    send(app, host("a"))
    at(clock, service, T0 + MINUTE)
    assert len(alarms_seen) == 2
    doc = {"name": "backups", "pattern": BACKUP, "expected_interval": "1m", "group_by": ["app"],
           "expected_members": [{"app": "db"}]}
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    assert sorted(seen(alarms_seen)[2:]) == [(0, "connector:backup.host:a"), (0, "connector:backup.host:x")]
    assert [entry["member"] for entry in members(app, heartbeat_id)["members"]] == [{"app": "db"}]
    assert status(app, heartbeat_id)["status"] == "pending"
    assert send(app, host("a"))["matched"] == []  # no app: no member
    doc["pattern"] = {"connector": "backup2"}  # a new pattern starts afresh too
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    assert members(app, heartbeat_id)["members"][0]["deadline"] == T0 + 2 * MINUTE
    del doc["group_by"], doc["expected_members"]  # no longer grouped: a plain heartbeat, afresh
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    assert status(app, heartbeat_id)["status"] == "pending" and "members" not in status(app, heartbeat_id)
    assert members(app, heartbeat_id)["members"] == []
    at(clock, service, T0 + 2 * MINUTE)
    assert alarms_seen[-1]["resource"] == "connector:backup2" and "member" not in alarms_seen[-1]


def test_grouping_a_down_heartbeat_resolves_its_own_alarm(app, service, clock, alarms_seen):
    heartbeat_id = create(app, {"name": "backups", "pattern": BACKUP, "expected_interval": "1m"})
    at(clock, service, T0 + MINUTE)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", {"name": "backups", "pattern": BACKUP,
                                                       "expected_interval": "1m", "group_by": ["host"]})
    assert seen(alarms_seen) == [(3, "connector:backup"), (0, "connector:backup")]
    assert status(app, heartbeat_id)["status"] == "pending"
    assert app.get("/api/v2/alarms").json == []
    send(app, host("a"))
    assert status(app, heartbeat_id)["status"] == "up"


def test_expected_members_added_and_removed(app, service, clock, alarms_seen):
    doc = {"name": "backups", "pattern": BACKUP, "expected_interval": "1m", "group_by": ["host"],
           "retire_after": "5m", "expected_members": [{"host": "a"}, {"host": "b"}]}
    heartbeat_id = create(app, doc)
    send(app, host("c"))
    clock.advance(30)
    doc["expected_members"] = [{"host": "b"}, {"host": "c"}, {"host": "d"}]  # a no longer, c now, d new
    doc["expected_interval"] = "2m"
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    page = {entry["member"]["host"]: entry for entry in members(app, heartbeat_id)["members"]}
    assert {name: entry["status"] for name, entry in page.items()} == {
        "a": "pending", "b": "pending", "c": "up", "d": "pending"}
    assert page["a"]["deadline"] == T0 + 2 * MINUTE  # the new interval, from its refresh
    assert page["d"]["deadline"] == T0 + 30 + 2 * MINUTE
    at(clock, service, T0 + 30 + 2 * MINUTE)
    at(clock, service, T0 + 30 + 7 * MINUTE)  # a (no longer expected) retires; b, c, d (expected) stay
    assert member_states(app, heartbeat_id) == {"b": "down", "c": "down", "d": "down"}
    assert ("connector:backup.host:a" in {event["resource"] for event in alarms_seen if event["state"] == 0})


def test_a_new_late_after_clears_late_members(app, service, clock, alarms_seen):
    doc = {"name": "backups", "pattern": BACKUP, "expected_interval": "1m", "group_by": ["host"],
           "late_after": "10s"}
    heartbeat_id = create(app, doc)
    send(app, host("a"))
    at(clock, service, T0 + 20)
    assert member_states(app, heartbeat_id) == {"a": "late"}
    doc["late_after"] = "30s"
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    assert member_states(app, heartbeat_id) == {"a": "up"} and alarms_seen[-1]["state"] == 0
    at(clock, service, T0 + 30)
    assert member_states(app, heartbeat_id) == {"a": "late"}


###############################################################################
# Storage: the hot path, storms, restarts, the outbox, the migration
###############################################################################


def count_statements(service):
    statements = []
    service.store.statement_hook = lambda sql, params: statements.append(sql)
    return statements


@pytest.mark.sqlite_only("refreshes coalesced in memory: on PostgreSQL each is written before its answer")
def test_a_chatty_member_is_written_once_per_half_second(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, host("a"))
    statements = count_statements(service)
    for _ in range(5):
        clock.advance(0.05)
        service.engine.ingest([host("a")])
    assert statements == []  # kept in memory
    clock.advance(0.5)
    service.engine.ingest([host("a")])
    assert len(statements) == 1 and statements[0].startswith("UPDATE member")  # one statement
    service.store.statement_hook = None
    assert members(app, heartbeat_id)["members"][0]["last_event"] == pytest.approx(T0 + 0.75)


def test_a_refresh_kept_in_memory_keeps_a_member_up(app, service, clock, alarms_seen):
    heartbeat_id = grouped(app)
    send(app, host("a"))
    clock.advance(0.2)
    send(app, host("a"))  # kept in memory
    at(clock, service, T0 + MINUTE + 0.1)
    assert alarms_seen == [] and member_states(app, heartbeat_id) == {"a": "up"}
    assert status(app, heartbeat_id)["last_event"] == pytest.approx(T0 + 0.2)


@pytest.mark.sqlite_only("counts SQLite's BEGIN IMMEDIATE statements")
def test_a_storm_of_members_goes_down_in_chunks(service, clock, alarms_seen, monkeypatch, caplog):
    monkeypatch.setattr(heartbeat_lite, "STORM_CHUNK_HEARTBEATS", 12)
    monkeypatch.setattr(heartbeat_lite, "STORM_YIELD_SECONDS", 0.0)
    app = client(service)
    heartbeat_id = grouped(app)
    statements = []
    send(app, *(host(f"h{i:03}") for i in range(35)))
    service.store.statement_hook = lambda sql, params: statements.append(sql)
    with caplog.at_level(logging.INFO, logger="heartbeat_lite"):
        at(clock, service, T0 + MINUTE)
    service.store.statement_hook = None
    assert len([event for event in alarms_seen if event["state"] == 3]) == 35
    assert statements.count("BEGIN IMMEDIATE") == 3  # 12 + 12 + 11
    storm_lines = [r.getMessage() for r in caplog.records if "at once" in r.getMessage()]
    assert storm_lines == ["12 alarm(s) raised, 0 resolved at once ('backups', 'backups', 'backups' and 9 more)"] * 2 \
        + ["11 alarm(s) raised, 0 resolved at once ('backups', 'backups', 'backups' and 8 more)"]
    assert status(app, heartbeat_id)["members"]["down"] == 35
    send(app, *(host(f"h{i:03}") for i in range(35)))  # and back, in chunks too
    assert len([event for event in alarms_seen if event["state"] == 0]) == 35
    assert status(app, heartbeat_id)["status"] == "up"


def test_members_survive_a_restart_and_the_outage_postpones_them(restart, clock, alarms_seen):
    with restart() as service:
        app = client(service)
        heartbeat_id = grouped(app, expected_members=[{"host": "p"}])
        send(app, host("a"), host("gone"))
        clock.advance(0.2)
        send(app, host("a"))  # kept in memory: written at the clean stop
        at(clock, service, T0 + 30)
        send(app, host("p"))
    clock.now = T0 + 40
    with restart() as service:  # 10 s of outage
        app = client(service)
        state = {entry["member"]["host"]: entry for entry in members(app, heartbeat_id)["members"]}
        assert state["a"]["deadline"] == pytest.approx(T0 + 0.2 + MINUTE + 10)
        assert state["p"]["deadline"] == pytest.approx(T0 + 30 + MINUTE + 10)
        at(clock, service, T0 + 0.2 + MINUTE + 10)
        assert seen(alarms_seen) == [(3, "connector:backup.host:gone"), (3, "connector:backup.host:a")]
    clock.advance(100)
    with restart() as service:  # down stays down, not alarmed twice
        app = client(service)
        service.tick()
        assert member_states(app, heartbeat_id) == {"a": "down", "gone": "down", "p": "up"}
        assert len(alarms_seen) == 2
        send(app, host("a"))  # the chatty hot path knows who is up after a restart
        assert alarms_seen[-1]["state"] == 0


def test_member_alarms_go_through_the_outbox(clock):
    with heartbeat_lite.create_app(clock=clock, forward_url="http://127.0.0.1:9/api/v2/event") as service:
        app = client(service)
        grouped(app)
        send(app, host("a"))
        at(clock, service, T0 + MINUTE)
        send(app, host("a"))
        queued = [json.loads(event) for _, event in service.store.outbox_batch(10)]
        assert [(event["state"], event["member"]) for event in queued] == [(3, {"host": "a"}), (0, {"host": "a"})]


# The version-2 schema's heartbeat table, as main had it before version 3.
SCHEMA_V2_HEARTBEAT = """
CREATE TABLE heartbeat (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, author TEXT NOT NULL, description TEXT NOT NULL,
    output TEXT NOT NULL, pattern TEXT NOT NULL, expected_interval TEXT NOT NULL,
    interval_seconds INTEGER NOT NULL, late_after TEXT, late_seconds INTEGER,
    created INTEGER NOT NULL, updated INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'up', 'late', 'down', 'paused')),
    refreshed REAL NOT NULL, last_event REAL, alarm_since REAL,
    deadline REAL GENERATED ALWAYS AS (refreshed + interval_seconds) VIRTUAL,
    due REAL GENERATED ALWAYS AS (refreshed + CASE
        WHEN late_seconds IS NULL OR status = 'late' THEN interval_seconds ELSE late_seconds END) VIRTUAL
);
CREATE UNIQUE INDEX heartbeat_pattern ON heartbeat (pattern);
CREATE INDEX heartbeat_newest ON heartbeat (created DESC);
CREATE INDEX heartbeat_due ON heartbeat (due) WHERE status NOT IN ('down', 'paused');
CREATE INDEX heartbeat_alarms ON heartbeat (alarm_since) WHERE status IN ('late', 'down');
CREATE TABLE maintenance (id TEXT PRIMARY KEY, name TEXT NOT NULL, pattern TEXT NOT NULL,
    start_local TEXT NOT NULL, end_local TEXT NOT NULL, timezone TEXT NOT NULL, rrule TEXT,
    created INTEGER NOT NULL, updated INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL);
PRAGMA user_version = 2;
"""


@pytest.mark.sqlite_only("builds a version 2 SQLite file")
def test_a_version_2_database_is_migrated(tmp_path, clock):
    path = str(tmp_path / "v2.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_V2_HEARTBEAT)
        conn.execute("INSERT INTO heartbeat (id, name, author, description, output, pattern, expected_interval, "
                     "interval_seconds, late_after, late_seconds, created, updated, status, refreshed, alarm_since) "
                     "VALUES "
                     "('a0000000-0000-4000-8000-000000000001', 'late one', 'u', '', 'o', '{\"k\":\"a\"}', '1m', 60, "
                     "'30s', 30, 1, 1, 'late', ?, ?)", (T0 - 40, T0 - 10))
    conn.close()
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = client(service)
        assert status(app, "a0000000-0000-4000-8000-000000000001")["status"] == "late"
        assert app.get("/api/v2/heartbeat").json[0]["late_after"] == "30s"
        heartbeat_id = grouped(app)
        send(app, host("a"))
        assert member_states(app, heartbeat_id) == {"a": "up"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'heartbeat_v2'").fetchone()[0] == 0
    conn.close()


@pytest.mark.sqlite_only("reads SQLite's EXPLAIN QUERY PLAN of the file")
def test_member_expiry_reads_the_due_index(tmp_path):
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db")) as service:
        plans = []
        service.store.statement_hook = lambda sql, params: plans.append(
            (sql, service.store._conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            if sql.startswith("SELECT") and "FROM member" in sql and "due" in sql else None)
        service.tick()
        service.store.statement_hook = None
        details = " ".join(str(row[3]) for _, plan in filter(None, plans) for row in plan)
        assert "member_due" in details and "SCAN m" not in details and "SCAN member" not in details


###############################################################################
# Intake silence
###############################################################################


@pytest.fixture
def silence(restart):
    """Start (or restart) a service on this test's file with a 5 minute intake silence."""
    return lambda: restart(intake_silence="5m")


def test_a_silent_intake_raises_one_alarm_and_stops_every_deadline(silence, clock, alarms_seen, caplog):
    with silence() as service:
        app = client(service)
        plain = create(app, {"name": "plain", "pattern": {"k": "v"}, "expected_interval": "10m"})
        heartbeat_id = grouped(app, expected_interval="10m")
        send(app, host("a"))  # the last event, at T0
        assert service.tick() <= 5 * MINUTE
        with caplog.at_level(logging.WARNING, logger="heartbeat_lite"):
            at(clock, service, T0 + 5 * MINUTE)
        assert alarms_seen == [{
            "connector": "heartbeat", "connector_name": "heartbeat", "event_type": "check",
            "source_type": "resource", "component": "heartbeat-lite", "resource": "intake", "state": 3,
            "output": alarms_seen[0]["output"], "timestamp": int(T0 + 5 * MINUTE), "heartbeat_id": None,
            "heartbeat_name": "intake"}]
        assert alarms_seen[0]["output"].startswith("no event received for 5m: ")
        assert any("intake silence" in r.getMessage() for r in caplog.records)
        assert [(alarm["resource"], alarm["since"]) for alarm in app.get("/api/v2/alarms").json] == [
            ("intake", T0 + 5 * MINUTE)]
        at(clock, service, T0 + 60 * MINUTE)  # far past every deadline: nothing goes down
        assert len(alarms_seen) == 1
        assert status(app, plain)["status"] == "pending" and member_states(app, heartbeat_id) == {"a": "up"}
        send(app, {"any": "event"})  # back, at T0 + 60m: the silence lasted 55 minutes
        assert (alarms_seen[-1]["resource"], alarms_seen[-1]["state"]) == ("intake", 0)
        assert status(app, plain)["deadline"] == T0 + 10 * MINUTE + 55 * MINUTE
        assert members(app, heartbeat_id)["members"][0]["deadline"] == T0 + 10 * MINUTE + 55 * MINUTE
        at(clock, service, T0 + 65 * MINUTE - 1)
        assert len(alarms_seen) == 2
        at(clock, service, T0 + 65 * MINUTE)  # the deadlines, then (silent again since 60m) the intake
        assert [event["resource"] for event in alarms_seen[2:]] == ["k:v", "connector:backup.host:a", "intake"]


def test_deadlines_before_the_silence_still_expire(silence, clock, alarms_seen):
    with silence() as service:
        app = client(service)
        create(app, {"name": "short", "pattern": {"k": "v"}, "expected_interval": "2m"})
        at(clock, service, T0 + 10 * MINUTE)  # one late tick: down at 2m, silent at 5m
        assert [(event["resource"], event["timestamp"]) for event in alarms_seen] == [
            ("k:v", T0 + 2 * MINUTE), ("intake", T0 + 5 * MINUTE)]


def test_the_silence_survives_a_restart(silence, clock, alarms_seen):
    with silence() as service:
        app = client(service)
        plain = create(app, {"name": "plain", "pattern": {"k": "v"}, "expected_interval": "10m"})
        at(clock, service, T0 + 6 * MINUTE)
        assert [event["resource"] for event in alarms_seen] == ["intake"]
    clock.now = T0 + 30 * MINUTE  # an outage in the silence
    with silence() as service:
        app = client(service)
        service.tick()
        assert [alarm["resource"] for alarm in app.get("/api/v2/alarms").json] == ["intake"]
        assert status(app, plain)["status"] == "pending" and len(alarms_seen) == 1  # not raised twice
        at(clock, service, T0 + 40 * MINUTE)
        send(app, {"any": "event"})  # silent from 5m to 40m: moved by 35m, not 35m + the outage
        assert status(app, plain)["deadline"] == T0 + 10 * MINUTE + 35 * MINUTE
        assert alarms_seen[-1]["state"] == 0
    with silence() as service:
        assert client(service).get("/api/v2/alarms").json == []


def test_without_the_flag_a_stored_silence_ends_at_start(silence, restart, clock, alarms_seen):
    with silence() as service:
        at(clock, service, T0 + 6 * MINUTE)
    clock.now = T0 + 7 * MINUTE
    with restart() as service:
        assert client(service).get("/api/v2/alarms").json == []
        assert (alarms_seen[-1]["resource"], alarms_seen[-1]["state"]) == ("intake", 0)


def test_intake_silence_is_off_by_default(service, clock, alarms_seen):
    at(clock, service, T0 + 1000 * MINUTE)
    assert alarms_seen == []


def test_the_intake_silence_flag_and_its_environment_twin(tmp_path, capsys):
    db = ["--db", str(tmp_path / "x.db")]

    def setting(argv, environ):
        return heartbeat_lite.check_settings(heartbeat_lite.build_parser(environ).parse_args(db + argv),
                                             environ).intake_silence

    assert setting([], {}) is None
    assert setting([], {"HEARTBEAT_LITE_INTAKE_SILENCE": "5m"}) == 300
    assert setting(["--intake-silence", "30s"], {"HEARTBEAT_LITE_INTAKE_SILENCE": "5m"}) == 30
    with pytest.raises(heartbeat_lite.ConfigError, match="intake silence"):
        heartbeat_lite.create_app(intake_silence="5 minutes")
    assert heartbeat_lite.main(db + ["--intake-silence", "soon"], {}) == 2
    assert "--intake-silence: must look like 30s" in capsys.readouterr().err
    assert heartbeat_lite.main(db, {"HEARTBEAT_LITE_INTAKE_SILENCE": "0s"}) == 2
    assert "HEARTBEAT_LITE_INTAKE_SILENCE: must look like" in capsys.readouterr().err


###############################################################################
# Operator pages
###############################################################################


def test_metrics_count_members_by_status_without_a_series_per_member(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, host("a"), host("b"))
    clock.advance(30)
    send(app, host("b"))
    at(clock, service, T0 + MINUTE)
    text = app.get("/metrics").text
    assert f'heartbeat_lite_heartbeat_members{{id="{heartbeat_id}",name="backups",status="down"}} 1' in text
    assert f'heartbeat_lite_heartbeat_members{{id="{heartbeat_id}",name="backups",status="up"}} 1' in text
    assert "host=" not in text and '"a"' not in text


def test_the_status_page_counts_members_and_the_detail_page_lists_them(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, host("alpha"), host("beta"))
    clock.advance(30)
    send(app, host("beta"))
    at(clock, service, T0 + MINUTE)
    page = app.get("/").text
    assert "1 down, 1 up" in page
    assert "host:alpha" in page  # the alarm summary names the member
    detail = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "Members" in detail and "alpha" in detail and "beta" in detail
    assert detail.index("alpha") < detail.index("beta")  # the worst first
