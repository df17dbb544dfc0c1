"""Tests for history and explanations (docs/concepts.md): state changes
and availability, recent events, the pattern tester, their metrics, and
paging GET /api/v2/heartbeat."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import webtest

import heartbeat_lite
from heartbeat_lite import (
    MAX_SHOWN_EVENT_BYTES,
    RECENT_EVENTS_PER_HEARTBEAT,
    RECENT_EVENTS_RECEIVED,
    availability,
)
from testing_support import (
    HERE,
    T0,
    Recorder,
    body,
    client,
    create,
    described_answer,
    grouped,
    host,
    lookup,
    new_heartbeat,
    parse_prometheus,
    pointer,
    schema_errors,
    window,
)

DAY = 86400
C01 = {"connector": "connect", "connector_name": "c01"}
INVALID_QUERY = "invalid query parameters."


def send(app, events):
    return app.post_json("/api/v2/event", events).json


def history(app, heartbeat_id, query="", status=200):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/history{query}", status=status).json


def history_rows(service):
    return [tuple(row) for row in service.store._query("SELECT heartbeat_id, at, status FROM history ORDER BY seq")]


###############################################################################
# Availability, a pure function
###############################################################################


def test_availability_is_the_share_of_counted_time_not_down():
    changes = [(0, "pending"), (10, "up"), (40, "down"), (70, "up")]
    assert availability(changes, now=100, window=100) == pytest.approx(60 / 90)  # the 10 s pending left out
    assert availability(changes, now=100, window=50) == pytest.approx(30 / 50)  # from 50: 20 down, 30 up
    assert availability(changes, now=100, window=30) == 1.0


def test_availability_counts_from_the_state_at_the_window_start():
    changes = [(0, "down"), (90, "up")]  # down since long before the window
    assert availability(changes, now=100, window=20) == pytest.approx(0.5)
    assert availability([(0, "down")], now=1000, window=10) == 0.0


def test_availability_covers_the_life_when_shorter_than_the_window():
    assert availability([(90, "pending"), (95, "up")], now=100, window=DAY) == 1.0
    assert availability([(80, "up"), (95, "down")], now=100, window=DAY) == pytest.approx(0.75)


def test_a_job_that_never_ran_has_no_availability_then_none_once_down():
    day = [(0, "pending")]  # expected every 24 h, created a day ago, never ran
    assert availability(day, now=DAY - 1, window=DAY) is None  # no data, not 100 %
    assert availability(day + [(DAY, "down")], now=DAY + 2 * 3600, window=DAY) == 0.0  # not 91.67 %
    resumed = [(0, "up"), (10, "paused"), (20, "pending"), (50, "up")]  # waiting after a resume: left out too
    assert availability(resumed, now=60, window=60) == 1.0


def test_availability_leaves_paused_and_maintenance_time_out():
    changes = [(0, "up"), (10, "down"), (20, "paused"), (60, "up"), (70, "maintenance"), (90, "up")]
    assert availability(changes, now=100, window=100) == pytest.approx(30 / 40)


def test_availability_is_unknown_when_no_time_counts():
    assert availability([], now=100, window=10) is None
    assert availability([(100, "pending")], now=100, window=10) is None  # created this instant
    assert availability([(0, "paused")], now=100, window=10) is None
    assert availability([(200, "up")], now=100, window=10) is None  # a change ahead of the clock


###############################################################################
# History
###############################################################################


def test_every_state_change_is_recorded_with_its_time_and_reason(app, service, clock):
    heartbeat_id = create(app)
    clock.advance(10)
    send(app, C01)
    clock.advance(70)
    service.tick()  # down at T0 + 70, its deadline
    clock.advance(20)
    send(app, C01)
    answer = history(app, heartbeat_id)
    assert answer["history"] == [
        {"at": T0 + 100, "status": "up", "reason": "matching event received"},
        {"at": T0 + 70, "status": "down", "reason": "no matching event for 1m"},
        {"at": T0 + 10, "status": "up", "reason": "matching event received"},
        {"at": T0, "status": "pending", "reason": "created"},
    ]
    assert answer["availability"] == {"24h": pytest.approx(60 / 90), "7d": pytest.approx(60 / 90),
                                      "30d": pytest.approx(60 / 90)}  # the 10 s pending left out


def test_events_that_change_nothing_record_nothing(app, service, clock):
    create(app)
    for _ in range(5):
        clock.advance(1)
        send(app, C01)
        service.tick()
    assert [status for _, _, status in history_rows(service)] == ["pending", "up"]


def test_the_change_commits_with_its_record_or_not_at_all(tmp_path, clock, alarms_seen):
    # a file: a failed transaction drops the connection, and with it an in-memory database
    service = heartbeat_lite.create_app(db=str(tmp_path / "h.db"), clock=clock, on_alarm=alarms_seen.append)
    app = client(service)
    heartbeat_id = create(app)
    clock.advance(61)

    def no_history(sql, params):
        if sql.startswith("INSERT INTO history"):
            raise sqlite3.OperationalError("disk I/O error")

    service.store.statement_hook = no_history
    with pytest.raises(heartbeat_lite.StoreError):
        service.tick()
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "pending"
    assert alarms_seen == []
    service.store.statement_hook = None
    service.tick()
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "down"
    assert [entry["status"] for entry in history(app, heartbeat_id)["history"]] == ["down", "pending"]
    service.close()


def test_a_creation_whose_record_fails_is_not_created(tmp_path, clock):
    service = heartbeat_lite.create_app(db=str(tmp_path / "h.db"), clock=clock)
    app = client(service)

    def no_history(sql, params):
        if sql.startswith("INSERT INTO history"):
            raise sqlite3.OperationalError("disk I/O error")

    service.store.statement_hook = no_history
    app.post_json("/api/v2/heartbeat", body(), status=400)
    service.store.statement_hook = None
    assert app.get("/api/v2/heartbeat").json == []
    create(app)  # the pattern is free, the index was not touched
    service.close()


def test_history_filters_by_time_and_limit(app, service, clock):
    heartbeat_id = create(app, body(expected_interval="10s"))
    for _ in range(3):  # up at +1, down at +11, ... each cycle 20 s
        clock.advance(1)
        send(app, C01)
        clock.advance(19)
        service.tick()
    times = [entry["at"] - T0 for entry in history(app, heartbeat_id)["history"]]
    assert times == [51, 41, 31, 21, 11, 1, 0]
    assert [e["at"] - T0 for e in history(app, heartbeat_id, f"?since={T0 + 11}&until={T0 + 41}")["history"]] \
        == [41, 31, 21, 11]
    assert [e["at"] - T0 for e in history(app, heartbeat_id, "?limit=2")["history"]] == [51, 41]
    assert [e["at"] - T0 for e in history(app, heartbeat_id, f"?until={T0 + 1.5}&limit=1")["history"]] == [1]


BAD_HISTORY_QUERIES = {
    "since not a number": ("?since=yesterday", "since: must be a time in Unix seconds"),
    "until infinite": ("?until=inf", "until: must be a time in Unix seconds"),
    "since nan": ("?since=nan", "since: must be a time in Unix seconds"),
    "limit zero": ("?limit=0", "limit: must be an integer from 1 to 1000"),
    "limit over": ("?limit=1001", "limit: must be an integer from 1 to 1000"),
    "limit negative": ("?limit=-1", "limit: must be an integer from 1 to 1000"),
    "limit float": ("?limit=2.5", "limit: must be an integer from 1 to 1000"),
    "limit unicode digit": ("?limit=%D9%A3", "limit: must be an integer from 1 to 1000"),
    "since after until": ("?since=20&until=10", "since: must not be after until"),
}


@pytest.mark.parametrize("query,reason", BAD_HISTORY_QUERIES.values(), ids=BAD_HISTORY_QUERIES.keys())
def test_bad_history_parameters_are_a_json_400_with_reasons(app, query, reason):
    heartbeat_id = create(app)
    answer = history(app, heartbeat_id, query, status=400)
    assert answer == {"name": "", "description": INVALID_QUERY, "errors": [reason]}


def test_history_of_an_unknown_heartbeat_is_not_found(app):
    missing = "cf7097b6-71ba-48db-a749-e9474aa70c93"
    assert history(app, missing, status=404) == {"name": missing, "description": "heartbeat not found"}
    assert app.get(f"/api/v2/heartbeat/{missing}/events", status=404).json["name"] == missing


def test_deleting_a_heartbeat_deletes_its_history(app, service, clock):
    kept, gone = create(app), create(app, body(pattern={"k": "gone"}))
    clock.advance(1)
    send(app, [C01, {"k": "gone"}])
    app.delete(f"/api/v2/heartbeat/{gone}")
    assert {heartbeat_id for heartbeat_id, _, _ in history_rows(service)} == {kept}


def test_availability_leaves_out_what_the_history_no_longer_holds(clock):
    with heartbeat_lite.create_app(clock=clock, history_days=1) as service:
        app = client(service)
        heartbeat_id = create(app)
        clock.advance(60)
        service.tick()  # down at T0 + 60
        clock.advance(2 * DAY)
        assert history(app, heartbeat_id)["availability"] == {"24h": 0.0, "7d": 0.0, "30d": 0.0}
        send(app, C01)
        clock.advance(DAY / 2)
        assert history(app, heartbeat_id)["availability"] == {"24h": 0.5, "7d": 0.5, "30d": 0.5}


@pytest.mark.sqlite_only("builds a version 3 SQLite file")
def test_a_migrated_database_gains_the_history_table(tmp_path, clock):
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as conn:  # a version 3 database (group_by): the schema without the history
        schema = open(os.path.join(HERE, "schema.sql"), encoding="utf-8").read()
        conn.executescript(schema.split("-- Every state change")[0] + "PRAGMA user_version = 3;")
        conn.execute("INSERT INTO heartbeat (id, name, author, description, output, pattern, expected_interval, "
                     "interval_seconds, created, updated, status, refreshed) VALUES ('a0000000-0000-4000-8000-"
                     "000000000001', 'old', 'u', '', 'o', '{\"k\":\"a\"}', '1m', 60, 1, 1, 'pending', ?)", (T0,))
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        heartbeat_id = new_heartbeat(service)
        assert history(client(service), heartbeat_id)["history"][0]["reason"] == "created"
        assert service.engine.document("a0000000-0000-4000-8000-000000000001")  # kept
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION


@pytest.mark.postgresql
def test_a_version_3_postgresql_database_gains_the_history_table(pg_url, clock):
    import psycopg
    schema = open(os.path.join(HERE, "schema.postgresql.sql"), encoding="utf-8").read()
    before, after = schema.split("-- Every state change")
    version_3 = before + after[after.index("INSERT INTO meta"):].replace(
        f"'schema_version', {heartbeat_lite.SCHEMA_VERSION}", "'schema_version', 3")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(version_3)
        assert conn.execute("SELECT to_regclass('history')").fetchone()[0] is None
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as service:
        heartbeat_id = new_heartbeat(service)
        assert history(client(service), heartbeat_id)["history"][0]["reason"] == "created"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] in (str(heartbeat_lite.SCHEMA_VERSION), heartbeat_lite.SCHEMA_VERSION)


###############################################################################
# Pruning
###############################################################################


def test_pruning_keeps_the_last_change_before_the_window(clock):
    with heartbeat_lite.create_app(clock=clock, history_days=2) as service:
        app = client(service)
        heartbeat_id = create(app, body(expected_interval="1h"))
        for _ in range(2):  # up at +10 s, down at +1 h 10 s, up at +2 h, down at +3 h
            clock.advance(10 if clock.now == T0 else 7200 - 3610)
            send(app, C01)
            clock.advance(3600)
            service.tick()
        before = [entry["at"] - T0 for entry in history(app, heartbeat_id)["history"]]
        assert before == [10800, 7200, 3610, 10, 0]
        clock.now = T0 + 2 * DAY + 7300
        service.tick()  # the kept window starts at +7300 s: older changes go, but the last of them
        assert [entry["at"] - T0 for entry in history(app, heartbeat_id)["history"]] == [10800, 7200]
        every_change = [(T0 + at, status) for at, status in
                        ((0, "pending"), (10, "up"), (3610, "down"), (7200, "up"), (10800, "down"))]
        assert history(app, heartbeat_id)["availability"] == {  # as if nothing was pruned, within 2 days
            "24h": availability(every_change, clock.now, DAY),
            "7d": availability(every_change, clock.now, 2 * DAY),
            "30d": availability(every_change, clock.now, 2 * DAY)}
        assert history(app, heartbeat_id)["availability"]["30d"] == pytest.approx(3500 / (2 * DAY), abs=1e-6)


def test_pruning_runs_in_bounded_batches_at_most_hourly(clock, monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "HISTORY_PRUNE_BATCH_ROWS", 10)
    monkeypatch.setattr(heartbeat_lite, "HISTORY_PRUNE_BATCHES_PER_TICK", 2)
    with heartbeat_lite.create_app(clock=clock, history_days=1) as service:
        ids = [new_heartbeat(service, pattern={"k": str(i)}) for i in range(50)]  # pending at T0
        clock.advance(2 * DAY)
        kept = []
        for _ in range(6):
            service.tick()  # the first puts all down at T0 + 60 s; each prunes 20 rows at most
            kept.append(len(history_rows(service)))
        assert kept == [100 - 20, 60, 50, 50, 50, 50]  # 50 pending rows go; each one's down, its last change, stays
        assert {status for _, _, status in history_rows(service)} == {"down"}
        assert service.engine.records._prune_due_at == clock.now + 3600  # the pass is over
        service.engine.record_changes([(heartbeat_id, T0 + 1, "up", "test", None) for heartbeat_id in ids])
        clock.advance(3599)
        service.tick()  # within the hour of the last pass
        assert len(history_rows(service)) == 100
        clock.advance(1)
        service.tick()
        assert len(history_rows(service)) == 80


def test_a_failed_pruning_is_logged_and_retried_later(service, clock, caplog):
    def broken(sql, params):
        if "FROM history AS h" in sql:
            raise sqlite3.OperationalError("disk I/O error")

    service.store.statement_hook = broken
    service.tick()
    assert "history pruning failed" in caplog.text
    service.store.statement_hook = None
    clock.advance(59)
    assert service.engine.records._prune_due_at > clock.now
    clock.advance(2)
    assert service.engine.records._prune_due_at <= clock.now


@pytest.mark.parametrize("days", [0, -1, 1.5, "90", True, None])
def test_history_days_must_be_an_integer_of_at_least_one(days):
    with pytest.raises(heartbeat_lite.ConfigError, match="history_days"):
        heartbeat_lite.create_app(history_days=days)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def test_cli_refuses_a_bad_history_days():
    for result, named in ((run_cli("--port", "0", "--history-days", "0"), "--history-days"),
                          (run_cli("--port", "0", env={"HEARTBEAT_LITE_HISTORY_DAYS": "soon"}),
                           "HEARTBEAT_LITE_HISTORY_DAYS")):
        assert result.returncode == 2
        assert result.stderr.startswith(f"heartbeat-lite: error: {named}: ") and "Traceback" not in result.stderr
    assert "HEARTBEAT_LITE_HISTORY_DAYS" in run_cli("--help").stdout


###############################################################################
# The hot path
###############################################################################


@pytest.mark.sqlite_only("refreshes coalesced in memory: on PostgreSQL each is written before its answer")
def test_a_heartbeat_already_up_costs_no_new_statement(app, service, clock):
    create(app)
    clock.advance(1)
    send(app, C01)  # pending -> up: recorded
    statements = []
    service.store.statement_hook = lambda sql, params: statements.append(sql.split()[0])
    clock.advance(0.1)
    send(app, C01)
    assert statements == []  # refreshed in memory
    clock.advance(1)
    send(app, C01)
    assert statements == ["UPDATE"]  # one statement, as before history


###############################################################################
# Recent events
###############################################################################


def test_the_last_matching_events_are_kept_newest_first(app, service, clock):
    heartbeat_id = create(app)
    create(app, body(pattern={"k": "other"}))
    for i in range(RECENT_EVENTS_PER_HEARTBEAT + 5):
        clock.advance(1)
        send(app, [dict(C01, n=i), {"k": "other"}, {"unrelated": i}])
    events = app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]
    assert len(events) == RECENT_EVENTS_PER_HEARTBEAT
    assert events[0] == {"received": T0 + 25, "event": dict(C01, n=24), "truncated": False}
    assert [item["event"]["n"] for item in events] == list(range(24, 4, -1))


@pytest.mark.sqlite_only("refreshes coalesced in memory: on PostgreSQL each is written before its answer")
def test_recent_events_are_sampled_with_the_written_refreshes(app, service, clock):
    # a heartbeat records its matching event only when its refresh is
    # written: at most once per REFRESH_WRITE_SECONDS (0.5 s), so ingestion
    # pays nothing per matched heartbeat for the refreshes kept in memory
    heartbeat_id = create(app)
    send(app, dict(C01, n=0))  # pending -> up: written
    clock.advance(0.1)
    send(app, dict(C01, n=1))  # refreshed in memory only: not recorded
    clock.advance(0.1)
    send(app, dict(C01, n=2))
    clock.advance(0.5)
    send(app, dict(C01, n=3))  # its stored refresh is 0.6 s old: written, recorded
    events = app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]
    assert [item["event"]["n"] for item in events] == [3, 0]
    assert len(service.engine.recent.all_received()) == 4  # the pattern tester sees every event


def test_an_event_over_4_kib_is_shown_cut(app, service, clock):
    heartbeat_id = create(app)
    big = dict(C01, output="é" * 5000)
    send(app, big)
    (item,) = app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]
    assert item["truncated"] is True
    assert isinstance(item["event"], str) and len(item["event"].encode()) <= MAX_SHOWN_EVENT_BYTES
    assert json.dumps(big, ensure_ascii=False).startswith(item["event"])


def test_an_event_with_a_lone_surrogate_would_be_shown_as_text():
    # the API refuses such events; shown_event must not fail on one anyway
    shown, truncated = heartbeat_lite.shown_event({"x": "\ud800"})
    assert truncated is True and shown == '{"x": "?"}'
    assert heartbeat_lite.shown_value("a\udfffb") == "a?b"


def test_big_events_are_kept_compactly_and_still_tested_whole(app, service, clock):
    heartbeat_id = create(app)
    events = [dict(C01, n=i, output="x" * 5000) for i in range(20)] + [{"small": "one"}]
    send(app, events)
    lists, bodies = service.engine.recent.kept_bytes()
    assert bodies == len(json.dumps(events).encode())  # the request's body, as it came
    assert lists <= heartbeat_lite.MAX_KEPT_EVENT_BYTES + heartbeat_lite.KEPT_LIST_OVERHEAD_BYTES  # one event, cut
    kept = service.engine.recent.all_received()
    assert [event for _, event in kept] == events  # the pattern tester sees them whole
    clock.advance(1)  # past REFRESH_WRITE_SECONDS: the next refresh is written, so its event recorded
    send(app, [dict(C01, output="x" * 5000)] + [{"small": "one"}] * 2)
    assert service.engine.recent.all_received()[-3][1] == dict(C01, output="x" * 5000)
    items = app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]
    assert len(items) == 2 and items[1]["event"].startswith('{"connector"')  # one per request: its last match
    assert '"n": 19' in items[1]["event"] and items[1]["truncated"] and items[0]["truncated"]
    tested = app.post_json("/api/v2/pattern/test", {"pattern": dict(C01, n="19")}).json
    assert tested["matched"] == []
    assert [item["mismatched"] for item in tested["near_misses"][:2]] == [
        {"n": {"expected": "19", "got": None}},  # the newest, kept whole
        {"n": {"expected": "19", "got": 19}}]  # a cut event is still tested


def test_recent_events_are_forgotten_with_the_heartbeat_and_at_a_restart(tmp_path, clock):
    path = str(tmp_path / "h.db")
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = client(service)
        heartbeat_id = create(app)
        send(app, C01)
        assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = client(service)
        assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json == {"events": []}
        send(app, C01)
        app.delete(f"/api/v2/heartbeat/{heartbeat_id}")
        assert heartbeat_id not in service.engine.recent._matching


def test_the_number_of_recent_event_lists_is_bounded(app, service, monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "RECENT_EVENTS_MAX_HEARTBEATS", 3)
    ids = [create(app, body(pattern={"k": str(i)})) for i in range(5)]
    for i in range(5):
        send(app, {"k": str(i)})
    assert set(service.engine.recent._matching) == set(ids[2:])
    assert app.get(f"/api/v2/heartbeat/{ids[0]}/events").json == {"events": []}


###############################################################################
# Pattern tester
###############################################################################


def test_pattern(app, pattern, status=200):
    return app.post_json("/api/v2/pattern/test", {"pattern": pattern}, status=status).json


test_pattern.__test__ = False


def test_the_pattern_tester_works_before_any_heartbeat_exists(app, clock):
    send(app, [C01, {"connector": "connect", "connector_name": "c02"}, {"other": "x"}])
    clock.advance(1)
    send(app, dict(C01, extra="yes"))
    answer = test_pattern(app, C01)
    assert answer["examined"] == 4
    assert answer["matched"] == [
        {"received": T0 + 1, "event": dict(C01, extra="yes"), "truncated": False},
        {"received": T0, "event": C01, "truncated": False},
    ]
    assert answer["near_misses"] == [{
        "received": T0, "event": {"connector": "connect", "connector_name": "c02"}, "truncated": False,
        "mismatched": {"connector_name": {"expected": "c01", "got": "c02"}},
    }]  # {"other": "x"} matches no pair: not a near miss


def test_near_misses_come_fewest_mismatches_first_then_newest(app, clock):
    pattern = {"a": "1", "b": "2", "c": "3"}
    for event in ({"a": "1", "b": "x", "c": "y"}, {"a": "1", "b": "2", "c": 3}, {"a": "1", "b": "2"},
                  {"a": "1", "c": "3", "b": ["2"]}):
        clock.advance(1)
        send(app, event)
    near = test_pattern(app, pattern)["near_misses"]
    assert [item["mismatched"] for item in near] == [
        {"b": {"expected": "2", "got": ["2"]}},  # newest of those with one mismatch
        {"c": {"expected": "3", "got": None}},  # missing
        {"c": {"expected": "3", "got": 3}},  # a number never equals a string
        {"b": {"expected": "2", "got": "x"}, "c": {"expected": "3", "got": "y"}},
    ]


def test_the_pattern_tester_agrees_with_the_engine(app, service):
    pattern = {"a": "1", "b": "2"}
    events = [{"a": "1", "b": "2"}, {"a": 1, "b": "2"}, {"a": "1", "b": "2", "c": None}, {"a": "1"},
              {"a": "1", "b": {"x": "2"}}, {"a": "1", "b": True}, {"a": "1 ", "b": "2"}]
    send(app, events)
    tested = test_pattern(app, pattern)
    heartbeat_id = create(app, body(pattern=pattern))
    matched_by_engine = [event for event in events if send(app, event)["matched"] == [heartbeat_id]]
    assert [item["event"] for item in reversed(tested["matched"])] == matched_by_engine


def test_the_pattern_tester_examines_the_last_1000_events_and_answers_20_of_each(app):
    send(app, [dict(C01, n=i) for i in range(RECENT_EVENTS_RECEIVED + 50)])
    send(app, [{"connector": "connect", "n": i} for i in range(30)])
    answer = test_pattern(app, C01)
    assert answer["examined"] == RECENT_EVENTS_RECEIVED
    assert [item["event"]["n"] for item in answer["matched"]] == list(range(1049, 1029, -1))
    assert [item["event"]["n"] for item in answer["near_misses"]] == list(range(29, 9, -1))


INVALID_PATTERN_BODIES = {
    "not an object": [C01],
    "no pattern": {},
    "empty pattern": {"pattern": {}},
    "number value": {"pattern": {"a": 1}},
    "unknown key": {"pattern": C01, "extra": 1},
}


@pytest.mark.parametrize("doc", INVALID_PATTERN_BODIES.values(), ids=INVALID_PATTERN_BODIES.keys())
def test_an_invalid_pattern_is_a_json_400(app, doc):
    answer = app.post_json("/api/v2/pattern/test", doc, status=400).json
    assert answer["name"] == "" and answer["description"] == "invalid pattern payload." and answer["errors"]


def test_the_pattern_tester_needs_credentials(service):
    webtest.TestApp(service.wsgi).post_json("/api/v2/pattern/test", {"pattern": C01}, status=401)


###############################################################################
# Metrics
###############################################################################


def test_metrics_give_availability_and_the_last_change(app, service, clock):
    up = create(app, body(name="up one", pattern={"k": "up"}, expected_interval="1h"))
    flaky = create(app, body(name='fla"ky', pattern={"k": "flaky"}, expected_interval="10s"))
    clock.advance(10)
    service.tick()  # flaky down at +10
    clock.advance(10)
    send(app, [{"k": "flaky"}])  # up at +20
    clock.advance(20)
    samples = parse_prometheus(app.get("/metrics").text)
    ratio = "heartbeat_lite_heartbeat_availability_ratio"
    changed = "heartbeat_lite_heartbeat_last_change_timestamp_seconds"
    assert (ratio, (("id", up), ("name", "up one"))) not in samples  # pending all along: no data
    assert samples[(ratio, (("id", flaky), ("name", 'fla"ky')))] == pytest.approx(20 / 30)  # 10 s pending left out
    assert samples[(changed, (("id", up), ("name", "up one")))] == T0
    assert samples[(changed, (("id", flaky), ("name", 'fla"ky')))] == T0 + 20


def test_a_heartbeat_with_no_counted_time_has_no_availability_sample(app, service):
    heartbeat_id = create(app)  # created this instant
    samples = parse_prometheus(app.get("/metrics").text)
    assert not any(name.endswith("availability_ratio") for name, _ in samples)
    assert any(name.endswith("last_change_timestamp_seconds") and ("id", heartbeat_id) in labels
               for name, labels in samples)


###############################################################################
# Paging GET /api/v2/heartbeat
###############################################################################


def test_without_limit_the_list_is_every_heartbeat(app):
    ids = [create(app, body(pattern={"k": str(i)})) for i in range(3)]
    response = app.get("/api/v2/heartbeat")
    assert [doc["_id"] for doc in response.json] == ids[::-1]
    assert "Link" not in response.headers and "X-Next-Cursor" not in response.headers


def test_pages_follow_the_cursor_newest_first_and_stable_under_inserts(app, clock):
    ids = []
    for i in range(7):
        ids.append(create(app, body(pattern={"k": str(i)})))
        clock.advance(i % 2)  # some share a second
    first = app.get("/api/v2/heartbeat?limit=3")
    assert [doc["_id"] for doc in first.json] == ids[:-4:-1]
    cursor = first.headers["X-Next-Cursor"]
    assert first.headers["Link"] == f'</api/v2/heartbeat?limit=3&after={cursor}>; rel="next"'
    create(app, body(pattern={"k": "new"}))  # lands before the first page, moves nothing
    second = app.get(first.headers["Link"][1:].split(">")[0])
    assert [doc["_id"] for doc in second.json] == ids[3:0:-1]
    third = app.get(f"/api/v2/heartbeat?limit=3&after={second.headers['X-Next-Cursor']}")
    assert [doc["_id"] for doc in third.json] == [ids[0]]
    assert "Link" not in third.headers and "X-Next-Cursor" not in third.headers
    assert third.json[0] == app.get(f"/api/v2/heartbeat/{ids[0]}").json


def test_a_full_last_page_has_no_next(app):
    for i in range(2):
        create(app, body(pattern={"k": str(i)}))
    response = app.get("/api/v2/heartbeat?limit=2")
    assert len(response.json) == 2 and "X-Next-Cursor" not in response.headers


def test_after_alone_pages_by_the_default_size(app):
    ids = [create(app, body(pattern={"k": str(i)})) for i in range(3)]
    cursor = app.get("/api/v2/heartbeat?limit=1").headers["X-Next-Cursor"]
    assert [doc["_id"] for doc in app.get(f"/api/v2/heartbeat?after={cursor}").json] == ids[1::-1]


BAD_PAGE_QUERIES = {
    "limit zero": ("?limit=0", "limit: must be an integer from 1 to 1000"),
    "limit word": ("?limit=all", "limit: must be an integer from 1 to 1000"),
    "limit over": ("?limit=1001", "limit: must be an integer from 1 to 1000"),
    "after garbage": ("?limit=2&after=!!!", "after: not a cursor this service gave"),
    "after other base64": ("?after=aGVsbG8", "after: not a cursor this service gave"),
}


@pytest.mark.parametrize("query,reason", BAD_PAGE_QUERIES.values(), ids=BAD_PAGE_QUERIES.keys())
def test_bad_paging_parameters_are_a_json_400(app, query, reason):
    answer = app.get(f"/api/v2/heartbeat{query}", status=400).json
    assert answer["description"] == INVALID_QUERY and answer["errors"][0].startswith(reason)


def test_cursors_round_trip():
    assert heartbeat_lite.decode_cursor(heartbeat_lite.encode_cursor(1607680814, 42)) == (1607680814, 42)
    for text in ("", "=", "MTIz", "YS5i"):  # "123", "a.b"
        assert heartbeat_lite.decode_cursor(text) is None


###############################################################################
# OpenAPI
###############################################################################


def test_the_new_answers_match_the_openapi_description(spec, clock):
    with heartbeat_lite.create_app(clock=clock) as service:
        call = Recorder(service)
        heartbeat_id = call("POST", "/api/v2/heartbeat", 200, body=json.dumps(body(expected_interval="1s")).encode()
                            ).json["description"]
        call("POST", "/api/v2/event", 200, body=json.dumps([C01, dict(C01, big="x" * 5000), {"connector": "connect"}]
                                                          ).encode())
        clock.advance(5)
        service.tick()
        call("GET", f"/api/v2/heartbeat/{heartbeat_id}/history", 200)
        call("GET", f"/api/v2/heartbeat/{heartbeat_id}/history?since=0&until=1e10&limit=2", 200)
        call("GET", f"/api/v2/heartbeat/{heartbeat_id}/history?limit=x", 400)
        call("GET", "/api/v2/heartbeat/nope/history", 404)
        call("GET", f"/api/v2/heartbeat/{heartbeat_id}/events", 200)
        call("GET", "/api/v2/heartbeat/nope/events", 404)
        tested = call("POST", "/api/v2/pattern/test", 200, body=json.dumps({"pattern": C01}).encode()).json
        assert tested["near_misses"] and tested["matched"][0]["truncated"]
        call("POST", "/api/v2/pattern/test", 400, body=b'{"pattern": {}}')
        call("POST", "/api/v2/pattern/test", 413, body=b"x" * (heartbeat_lite.MAX_HEARTBEAT_BODY_BYTES + 1))
        create(call.app, body(pattern={"k": "second"}))
        paged = call("GET", "/api/v2/heartbeat?limit=1", 200)
        assert paged.headers["X-Next-Cursor"] and paged.headers["Link"].endswith('; rel="next"')
        call("GET", "/api/v2/heartbeat?limit=0", 400)
    for method, path, response in call.answers:
        where = f"{method} {path} {response.status_int}"
        answer = described_answer(spec, method, path.split("?")[0], response.status_int)
        content = lookup(spec, answer)
        assert response.content_type in content["content"], where
        assert schema_errors(spec, answer + pointer("content", response.content_type, "schema")[1:],
                             response.json) == [], where
    operation = spec["paths"]["/api/v2/heartbeat/{heartbeat_id}/history"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"since", "until", "limit"}
    assert {p["name"] for p in spec["paths"]["/api/v2/heartbeat"]["get"]["parameters"]} == {"limit", "after"}


###############################################################################
# Pause and late warnings in the history
###############################################################################


def test_late_pause_and_resume_are_recorded_and_paused_time_is_left_out(app, service, clock):
    heartbeat_id = create(app, body(expected_interval="1m", late_after="30s"))
    clock.advance(40)
    service.tick()  # late at +30
    clock.advance(30)
    service.tick()  # down at +60
    clock.advance(10)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")  # +80
    clock.advance(100)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/resume")  # +180
    clock.advance(20)
    answer = history(app, heartbeat_id)
    assert [(entry["at"] - T0, entry["status"], entry["reason"]) for entry in answer["history"]] == [
        (180, "pending", "resumed"),
        (80, "paused", "paused"),
        (60, "down", "no matching event for 1m"),
        (30, "late", "no matching event for 30s"),
        (0, "pending", "created"),
    ]
    # counted: 30-80 (late 30 s, down 20 s); paused 80-180 and pending 0-30 and 180-200 are left out
    assert answer["availability"]["24h"] == pytest.approx(30 / 50)


def test_a_late_heartbeat_coming_back_is_recorded_up(app, service, clock):
    heartbeat_id = create(app, body(expected_interval="1m", late_after="30s"))
    clock.advance(40)
    service.tick()
    send(app, C01)
    assert [entry["status"] for entry in history(app, heartbeat_id)["history"]] == ["up", "late", "pending"]


###############################################################################
# Members (group_by) and maintenance windows in the history
###############################################################################


def _entries(app, heartbeat_id, query=""):
    """``(at - T0, status, reason, host or None)`` of the history, oldest first."""
    return [(item["at"] - T0, item["status"], item["reason"], item.get("member", {}).get("host"))
            for item in reversed(history(app, heartbeat_id, query)["history"])]


def test_members_changes_are_recorded_under_their_heartbeat(app, service, clock):
    heartbeat_id = grouped(app, expected_members=[{"host": "a"}], late_after="30s", retire_after="2m")
    send(app, [host("a"), host("b")])
    clock.now = T0 + 30
    service.tick()
    clock.now = T0 + 60
    service.tick()
    send(app, host("a"))
    clock.now = T0 + 200  # b down since 60: retired at 180
    service.tick()
    assert _entries(app, heartbeat_id) == [
        (0, "pending", "created", None),
        (0, "pending", "expected member created", "a"),
        (0, "up", "matching event received", "a"),
        (0, "up", "new member: matching event received", "b"),
        (0, "up", "every member is up", None),
        (30, "late", "no matching event for 30s", "a"),
        (30, "late", "no matching event for 30s", "b"),
        (30, "late", "a member is late, none down", None),
        (60, "down", "no matching event for 1m", "a"),
        (60, "down", "no matching event for 1m", "b"),
        (60, "down", "a member is down", None),
        (60, "up", "matching event received", "a"),
        (90, "late", "no matching event for 30s", "a"),
        (120, "down", "no matching event for 1m", "a"),
        (180, "retired", "member retired: down for 2m", "b"),
    ]
    # availability counts the heartbeat's own changes only: down from 60 to 200
    assert history(app, heartbeat_id)["availability"]["24h"] == round(60 / 200, 6)


def test_a_member_deleted_is_recorded(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, [host("a"), host("b")])
    clock.advance(10)
    app.delete(f"/api/v2/heartbeat/{heartbeat_id}/members?host=b")
    assert _entries(app, heartbeat_id)[-1] == (10, "deleted", "member deleted", "b")


def test_history_pruning_drops_old_member_changes_whole(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, host("a"))
    clock.advance(91 * DAY)
    service.tick()
    rows = service.store._query("SELECT status, member FROM history WHERE heartbeat_id = ? ORDER BY seq",
                                (heartbeat_id,))
    # the heartbeat keeps its last own change before the cutoff (its state then); members' go
    assert [(row[0], row[1]) for row in rows] == [("down", None)]


def test_maintenance_start_and_end_are_recorded_and_left_out_of_availability(app, service, clock):
    covered = create(app)
    other = create(app, body(pattern={"k": "other"}))
    send(app, [C01, {"k": "other"}])
    window(app, T0 + 100, T0 + 400, pattern=C01, name="Sunday patching")
    statements = []
    service.store.statement_hook = lambda sql, params: statements.append(sql)
    for t in range(10, 800, 10):  # the 1m heartbeat is protected during the window, down after
        clock.now = T0 + t
        send(app, {"k": "other"})
        if T0 + t < T0 + 100 or T0 + 400 <= T0 + t < T0 + 430:
            send(app, C01)
        service.tick()
    service.store.statement_hook = None
    assert [entry for entry in _entries(app, covered) if entry[2].startswith("maintenance")] == [
        (100, "maintenance", "maintenance 'Sunday patching' started", None),
        (400, "up", "maintenance 'Sunday patching' ended", None),
    ]
    assert _entries(app, covered)[-1] == (480, "down", "no matching event for 1m", None)
    # maintenance time counts neither way: up 0-100 and 400-480, down 480-790
    assert history(app, covered)["availability"]["24h"] == round(180 / (180 + 310), 6)
    assert [entry[1] for entry in _entries(app, other)] == ["pending", "up"]
    assert history(app, other)["availability"]["24h"] == 1
    # one containment query per boundary, not per tick
    assert sum(("json_each" in sql or "->>" in sql) and "FROM heartbeat" in sql for sql in statements) == 2


def test_a_window_created_active_or_deleted_early_is_recorded_at_once(app, service, clock):
    heartbeat_id = create(app)
    send(app, C01)
    clock.advance(10)
    window_id = window(app, T0 - 100, T0 + 1000, pattern=C01)
    clock.advance(20)
    app.delete(f"/api/v2/maintenance/{window_id}")
    assert _entries(app, heartbeat_id)[-2:] == [
        (10, "maintenance", "maintenance 'patching' started", None),
        (30, "up", "maintenance 'patching' ended", None),
    ]
    extra = history(app, heartbeat_id)["history"][0]
    assert extra["maintenance"] == window_id


def test_a_window_created_after_its_start_is_recorded_as_started_once(app, service, clock):
    heartbeat_id = create(app)
    send(app, C01)
    service.tick()  # the windows were last looked at now
    clock.advance(10)
    window(app, T0 + 5, T0 + 1000, pattern=C01)  # began since that look, but after it was created
    clock.advance(10)
    service.tick()
    started = [entry for entry in _entries(app, heartbeat_id) if entry[2].endswith("started")]
    assert started == [(10, "maintenance", "maintenance 'patching' started", None)]


def test_a_paused_heartbeat_gets_no_maintenance_records(app, service, clock):
    heartbeat_id = create(app)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    window(app, T0 + 10, T0 + 20, pattern=C01)
    for t in (10, 20):
        clock.now = T0 + t
        service.tick()
    assert [entry[1] for entry in _entries(app, heartbeat_id)] == ["pending", "paused"]


def test_the_detail_page_names_the_member_of_a_change(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, host("db1"))
    page = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "new member: matching event received — member host: db1" in page
    assert "every member is up</td>" in page
