"""PostgreSQL only (docs/postgresql.md): several instances on one database act as one
service. Skipped unless HEARTBEAT_LITE_TEST_PG=<url> is set (pg_testing.py
gives each test a fresh schema through the ``pg_url`` fixture); the rest of
the suite also runs on PostgreSQL then.

Embedded instances share one fake clock and are synced by hand
(``service.sync()``, also the first step of ``service.tick()``); the
failover test runs two real processes over HTTP.
"""

import collections
import concurrent.futures
import contextlib
import glob
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import heartbeat_lite
from testing_support import HERE, FakeClock, Receiver, body, client, create, http, wait_until


@pytest.fixture
def two(pg_url, clock):
    """Two embedded services on one PostgreSQL schema, sharing ``clock``;
    each with its own list of published alarms (``service.seen``)."""
    services = []

    def make(**kwargs):
        seen = []
        service = heartbeat_lite.create_app(db=pg_url, clock=clock, on_alarm=seen.append, **kwargs)
        service.seen = seen
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.mark.postgresql
def test_the_schema_is_versioned_in_meta_and_applied_once_by_concurrent_starts(pg_url):
    def start():
        store = heartbeat_lite.open_store(pg_url)
        store.open()
        return store

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: start(), range(4)))
    try:
        assert all(isinstance(store, heartbeat_lite.PostgresStore) for store in stores)
        assert all(store.last_write.ok for store in stores)
        assert stores[0].meta("schema_version") == heartbeat_lite.SCHEMA_VERSION
    finally:
        for store in stores:
            store.close()


@pytest.mark.postgresql
def test_a_newer_schema_is_refused_at_start(pg_url):
    with heartbeat_lite.create_app(db=pg_url) as service:
        service.store.set_meta("schema_version", heartbeat_lite.SCHEMA_VERSION + 1)
    with pytest.raises(heartbeat_lite.ConfigError, match="newer"):
        heartbeat_lite.create_app(db=pg_url)


def test_psycopg_is_imported_only_for_a_postgresql_url():
    script = ("import sys, heartbeat_lite\n"
              "heartbeat_lite.create_app(db=':memory:').close()\n"
              "print('psycopg' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=HERE, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.postgresql
def test_a_heartbeat_created_on_one_instance_is_matched_on_the_other(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body())
    assert client(b).get(f"/api/v2/heartbeat/{heartbeat_id}").json["_id"] == heartbeat_id  # a miss looks
    assert b.sync() is False  # ... and applied the change already
    answer = client(b).post_json("/api/v2/event", {"connector": "connect", "connector_name": "c01"}).json
    assert answer["matched"] == [heartbeat_id]
    assert client(a).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "up"


@pytest.mark.postgresql
def test_pings_naming_no_heartbeat_read_the_other_instances_changes_at_most_so_often(two, clock, monkeypatch):
    # A ping needs no credentials, so anybody may send a flood of made-up
    # ids: each read the others' changes under the engine's lock (a miss of
    # GET one does, for a heartbeat created a moment ago through another
    # instance). A ping's miss now does so at most every SYNC_ON_MISS_SECONDS.
    a, b = two(), two()
    reads = []
    b.store.statement_hook = lambda sql, params: reads.append(sql) if "FROM changes WHERE seq >" in sql else None
    monkeypatch.setattr(heartbeat_lite, "SYNC_ON_MISS_SECONDS", 3600)
    anonymous = client(b, user=None)
    for i in range(50):
        assert anonymous.get(f"/ping/6f1d3c1e-0000-4000-8000-{i:012}", status=404).text == "not found"
    assert len(reads) == 1
    monkeypatch.setattr(heartbeat_lite, "SYNC_ON_MISS_SECONDS", 0)
    heartbeat_id = create(client(a), body())
    assert anonymous.get(f"/ping/{heartbeat_id}").text == "OK"  # created through the other: found at once
    b.store.statement_hook = None


@pytest.mark.postgresql
def test_updates_deletions_and_windows_reach_the_other_instance(two, clock):
    a, b = two(), two()
    app_a, app_b = client(a), client(b)
    heartbeat_id = create(app_a, body())
    b.sync()
    app_a.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern={"k": "new"}, name="renamed"))
    b.sync()
    assert app_b.get(f"/api/v2/heartbeat/{heartbeat_id}").json["name"] == "renamed"
    assert app_b.post_json("/api/v2/event", {"connector": "connect", "connector_name": "c01"}).json["matched"] == []
    assert app_b.post_json("/api/v2/event", {"k": "new"}).json["matched"] == [heartbeat_id]
    window = app_a.post_json("/api/v2/maintenance", {
        "name": "w", "pattern": {}, "start": "2020-12-11T10:00:00", "end": "2020-12-11T12:00:00"}).json["description"]
    b.sync()
    assert app_b.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["maintenance"]["_id"] == window
    app_a.delete(f"/api/v2/maintenance/{window}")
    app_a.delete(f"/api/v2/heartbeat/{heartbeat_id}")
    b.sync()
    app_b.get(f"/api/v2/heartbeat/{heartbeat_id}", status=404)
    assert app_b.post_json("/api/v2/event", {"k": "new"}).json["matched"] == []
    assert b.engine.windows.by_id == {}


@pytest.mark.postgresql
def test_one_pattern_created_on_both_at_once_yields_one_heartbeat(two):
    a, b = two(), two()
    apps = [client(a), client(b)] * 10
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda app: app.post_json("/api/v2/heartbeat", body(), expect_errors=True), apps))
    assert sorted(r.status_int for r in statuses) == [200] + [400] * 19
    assert {r.json["description"] for r in statuses if r.status_int == 400} == {"heartbeat pattern already exists"}


@pytest.mark.postgresql
def test_each_alarm_is_raised_once_when_both_instances_tick(two, clock):
    a, b = two(), two()
    for i in range(300):
        a.engine.create(heartbeat_lite.validate_heartbeat(body(pattern={"k": str(i)}), "root"))
    clock.advance(61)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda service: service.tick(), [a, b]))
    raised = [event["heartbeat_id"] for event in a.seen + b.seen]
    assert len(raised) == 300 and len(set(raised)) == 300
    assert len(client(b).get("/api/v2/alarms").json) == 300
    a.tick(), b.tick()
    assert len(a.seen + b.seen) == 300  # and never again


@pytest.mark.postgresql
def test_an_acknowledged_event_is_in_the_database_before_its_answer(two, clock):
    # Coalesced in memory (as on SQLite), b's second refresh would wait for
    # b's next tick: a, seeing only the database, would find the heartbeat
    # late at +30.1 s, and b killed meanwhile would lose the event for good.
    a, b = two(), two()
    heartbeat_id = create(client(a), body(late_after="30s"))
    b.sync()
    event = {"connector": "connect", "connector_name": "c01"}
    client(b).post_json("/api/v2/event", event)
    clock.advance(0.2)
    assert client(b).post_json("/api/v2/event", event).json["matched"] == [heartbeat_id]
    assert not b.engine.core.model.has_unwritten()
    clock.advance(29.9)
    a.tick()
    assert a.seen == []
    assert client(a).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == pytest.approx(
        clock() - 29.9 + 60, abs=0.01)


@pytest.mark.postgresql
def test_a_heartbeat_with_a_short_interval_is_written_at_every_event(two, clock):
    # Kept in memory, the refresh at +0.45 s would be written by a's next
    # tick, due at +0.95 s: too close to the database's deadline (+1 s),
    # which b's tick sees alone. So it is written at once.
    a, b = two(), two()
    heartbeat_id = create(client(a), body(expected_interval="1s"))
    event = {"connector": "connect", "connector_name": "c01"}
    client(a).post_json("/api/v2/event", event)
    clock.advance(0.45)
    client(a).post_json("/api/v2/event", event)
    clock.advance(0.55)
    b.tick()
    assert b.seen == [] and a.seen == []
    assert client(b).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "up"


@pytest.mark.postgresql
def test_one_instance_at_a_time_delivers_the_outbox_in_order(two, clock):
    receiver = Receiver()
    try:
        a, b = two(forward_url=receiver.url()), two(forward_url=receiver.url())
        for i in range(5):
            a.engine.create(heartbeat_lite.validate_heartbeat(body(pattern={"k": str(i)}), "root"))
        clock.advance(61)
        a.tick()
        with a.store.outbox_lease() as leased:
            assert leased
            assert b.deliver() == heartbeat_lite.OUTBOX_POLL_SECONDS  # a holds it: b waits
            assert receiver.delivered == []
        assert b.deliver() is None  # b delivers what a raised
        assert [event["heartbeat_id"] for event in receiver.delivered] == [e["heartbeat_id"] for e in a.seen]
        assert a.deliver() is None and len(receiver.delivered) == 5
    finally:
        receiver.close()


@pytest.mark.postgresql
def test_a_restart_postpones_deadlines_only_for_a_time_no_instance_ran(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body())  # deadline T0 + 60
    b.close()
    clock.advance(30)
    a.tick()  # a keeps running
    clock.advance(3)
    c = two()  # b comes back: the service never stopped (a was alive 3 s ago)
    assert client(c).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == 1_607_680_874
    a.close(), c.close()
    clock.advance(20)  # nothing runs for 20 s
    d = two()
    assert client(d).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == 1_607_680_894
    e = two()  # a second instance starting now counts no outage again
    assert client(e).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == 1_607_680_894
    assert len(d.store.instances()) == 5


@pytest.mark.postgresql
def test_instances_killed_count_their_outage_from_the_last_alive(two, clock):
    a = two()
    heartbeat_id = create(client(a), body())
    a.store.close()  # as if killed: no clean stop recorded
    clock.advance(100)  # far beyond INSTANCE_ALIVE_SECONDS: a is dead
    b = two()
    deadline = client(b).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"]
    assert deadline == pytest.approx(1_607_680_874 + 100 + heartbeat_lite.REFRESH_WRITE_SECONDS, abs=0.01)


def test_healthz_says_503_while_postgresql_is_unreachable():
    with heartbeat_lite.create_app(db="postgresql://heartbeat:x@127.0.0.1:1/none") as service:
        app = client(service)
        health = app.get("/healthz", status=503).json
        assert "database" in health["description"] or "database" in str(health)
        assert app.post_json("/api/v2/heartbeat", body(), status=400).json["description"].startswith("database error")


@pytest.mark.postgresql
def test_connections_lost_are_opened_again(pg_url, pg_schemas):
    with heartbeat_lite.create_app(db=pg_url) as service:
        app = client(service)
        heartbeat_id = create(app, body())
        app.get(f"/api/v2/heartbeat/{heartbeat_id}/status")
        pg_schemas.end_connections(pg_url)
        answers = [app.get(f"/api/v2/heartbeat/{heartbeat_id}/status", expect_errors=True).status_int
                   for _ in range(3)]
        assert answers == [200, 200, 200]  # a read on a connection found closed runs again on a new one
        create(app, body(pattern={"k": "after"}))  # so does a transaction's BEGIN
        assert app.get("/healthz").status_int == 200


###############################################################################
# Failover over real HTTP: two processes, SIGKILL one while alarms are due
###############################################################################


def start_instance(pg_url, forward_url, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "--port", "0", "--db", pg_url,
         "--forward-url", forward_url],
        stderr=log, stdout=subprocess.DEVNULL, env={**os.environ, "HEARTBEAT_LITE_USERS": ""})
    log.close()
    found = []
    assert wait_until(lambda: found.extend(re.findall(r"listening on (\S+)", open(log_path).read())) or found,
                      timeout=20), open(log_path).read()
    return process, found[0]


def post(url, doc):
    return http("POST", url, data=__import__("json").dumps(doc).encode(), content_type="application/json")


@pytest.mark.postgresql
@pytest.mark.slow
def test_failover_every_alarm_raised_once_delivered_in_order(pg_url, tmp_path):
    receiver = Receiver()
    processes = []
    try:
        (a, url_a), (b, url_b) = [start_instance(pg_url, receiver.url(), tmp_path / f"{name}.log")
                                  for name in "ab"]
        processes += [a, b]
        ids = []
        for i in range(20):  # created on b; intervals 2 to 5 s: alarms fall due before and after the kill
            status, _, answer = post(f"{url_b}/api/v2/heartbeat",
                                     body(pattern={"host": f"h{i}"}, expected_interval=f"{2 + i % 4}s"))
            assert status == 200, answer
            ids.append(answer["description"])
        events = [{"host": f"h{i}"} for i in range(20)]
        assert wait_until(lambda: len(post(f"{url_a}/api/v2/event", events)[2]["matched"]) == 20, timeout=1.0)
        time.sleep(2.5)  # the 2 s heartbeats are down, the others fall due within 2.5 s
        a.kill()  # SIGKILL: whatever a was raising or delivering, b takes over
        a.wait()
        assert wait_until(lambda: {e["heartbeat_id"] for e in receiver.delivered if e["state"] == 3} == set(ids),
                          timeout=10)
        assert len(http("GET", f"{url_b}/api/v2/alarms")[2]) == 20
        assert post(f"{url_b}/api/v2/event", events)[2]["matched"] == ids
        assert wait_until(lambda: {e["heartbeat_id"] for e in receiver.delivered if e["state"] == 0} == set(ids),
                          timeout=10)
        b.send_signal(signal.SIGTERM)
        assert b.wait(timeout=15) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        receiver.close()
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    raised = collections.Counter(re.findall(r"alarm: heartbeat (\S+) ", logs))
    assert max(raised.values(), default=0) <= 1, raised  # never raised twice (a may die before its log line)
    delivered = receiver.delivered
    for heartbeat_id in ids:  # at least once, in order: each alarm before its resolution, one of each
        states = [(e["state"], e["timestamp"]) for e in delivered if e["heartbeat_id"] == heartbeat_id]
        distinct = list(dict.fromkeys(states))
        assert [state for state, _ in distinct] == [3, 0], states


@pytest.mark.postgresql
def test_an_event_for_a_heartbeat_the_other_instance_put_late_resolves_it(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body(late_after="30s"))
    b.sync()
    event = {"connector": "connect", "connector_name": "c01"}
    client(b).post_json("/api/v2/event", event)  # up, as b's memory knows it
    clock.advance(31)
    a.tick()  # a sees the database only: late
    assert [e["state"] for e in a.seen] == [heartbeat_lite.LATE_STATE]
    client(b).post_json("/api/v2/event", event)  # b still thinks it up: its refresh must resolve, not vanish
    assert [e["state"] for e in b.seen] == [heartbeat_lite.RESOLVED_STATE]
    assert client(a).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "up"


###############################################################################
# Refreshes, outages, clocks, history: embedded
###############################################################################


def test_a_refresh_never_moves_backwards(service, clock):
    # Two instances' writes (or one instance's concurrent requests) may commit
    # in any order: the later refresh stays, for heartbeats and members alike.
    app = client(service)
    heartbeat_id = create(app, body())
    grouped_id = create(app, body(pattern={"k": "g"}, group_by=["host"]))
    app.post_json("/api/v2/event", [{"connector": "connect", "connector_name": "c01"}, {"k": "g", "host": "a"}])
    store = service.store
    key = heartbeat_lite.member_key({"host": "a"})
    store.write_refreshes([(heartbeat_id, clock() + 5)])
    store.write_member_refreshes([(grouped_id, key, clock() + 5)])
    assert store.write_refreshes([(heartbeat_id, clock() + 3)]) == []  # up: written, as far as it goes
    store.write_member_refreshes([(grouped_id, key, clock() + 3)])
    assert store.refresh_if_not_down(heartbeat_id, clock() + 1)
    assert store.refresh_member_if_up(grouped_id, key, clock() + 1)
    store.refresh([heartbeat_id], clock() + 2)
    row = store.heartbeat(heartbeat_id)
    assert (row["refreshed"], row["last_event"]) == (clock() + 5, clock() + 5)
    member = store.members_by_key(grouped_id, [key])[key]
    assert (member["refreshed"], member["last_event"]) == (clock() + 5, clock() + 5)


def refuse_writes(sql, params):
    """A statement hook: every write fails (the database stopped, frozen, or
    locked by another process)."""
    if not sql.startswith("SELECT"):
        raise heartbeat_lite.sqlite3.OperationalError("the database is away")


def blind_for(service, clock, seconds, app):
    """Every write fails for ``seconds`` of the clock: an event is refused, the ticks fail."""
    service.store.statement_hook = refuse_writes
    try:
        assert app.post_json("/api/v2/event", {"k": "fed"}, status=400).json["description"].startswith(
            "database error")
        for _ in range(int(seconds)):
            clock.advance(1)
            with pytest.raises(heartbeat_lite.StoreError):
                service.tick()
    finally:
        service.store.statement_hook = None


def test_a_database_outage_stops_the_clock_as_a_restart_does(restart, clock, alarms_seen):
    # One rule for both stores (and whichever way the database failed):
    # while no event could be recorded, the monitor was blind; every
    # deadline still ahead when writes began to fail moves later by the
    # outage, whether an event or a tick comes first after it. (A file: a
    # failed write drops SQLite's connection, and an in-memory database with it.)
    with restart() as service:
        outage_stops_the_clock(service, clock, alarms_seen)


def outage_stops_the_clock(service, clock, alarms_seen):
    app = client(service)
    silent = create(app, body(pattern={"k": "silent"}, expected_interval="10s"))
    fed = create(app, body(pattern={"k": "fed"}, expected_interval="10s"))
    down = create(app, body(pattern={"k": "down"}, expected_interval="2s"))
    app.post_json("/api/v2/event", [{"k": "silent"}, {"k": "fed"}])
    clock.advance(3)
    service.tick()
    assert [e["heartbeat_id"] for e in alarms_seen] == [down]  # down before the outage: stays down
    blind_for(service, clock, 20, app)  # from +3 s to +23 s
    app.post_json("/api/v2/event", {"k": "fed"})  # an event first, then the tick
    service.tick()
    assert [e["heartbeat_id"] for e in alarms_seen] == [down]
    deadline = app.get(f"/api/v2/heartbeat/{silent}/status").json["deadline"]
    assert deadline == pytest.approx(clock() - 23 + 10 + 20, abs=0.01)
    clock.advance(6.9)
    service.tick()
    assert [e["heartbeat_id"] for e in alarms_seen] == [down]
    clock.advance(0.2)
    service.tick()
    assert [e["heartbeat_id"] for e in alarms_seen] == [down, silent]
    assert app.get(f"/api/v2/heartbeat/{fed}/status").json["status"] == "up"


@pytest.mark.postgresql
def test_an_outage_of_every_instance_is_counted_once(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body(expected_interval="10s"))
    a.tick(), b.tick()
    for service in (a, b):
        service.store.statement_hook = refuse_writes
    clock.advance(1)
    for service in (a, b):
        with pytest.raises(heartbeat_lite.StoreError):
            service.tick()
        service.store.statement_hook = None
    clock.advance(20)
    a.tick(), b.tick()  # a counts the outage (20 s); b finds a alive since its failure: nothing more
    deadline = client(b).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"]
    assert deadline == pytest.approx(clock() - 21 + 10 + 20, abs=0.01)


@pytest.mark.postgresql
def test_one_instance_cut_off_while_another_recorded_moves_nothing(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body(expected_interval="10s"))
    a.store.statement_hook = refuse_writes
    clock.advance(1)
    with pytest.raises(heartbeat_lite.StoreError):
        a.tick()
    clock.advance(heartbeat_lite.ALIVE_INTERVAL_SECONDS)
    b.tick()  # b records events and life meanwhile
    a.store.statement_hook = None
    clock.advance(1)
    a.tick()
    deadline = client(a).get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"]
    assert deadline == pytest.approx(clock() - 7 + 10, abs=0.01)


@pytest.mark.postgresql
def test_concurrent_acknowledged_refreshes_share_one_write(pg_url, clock):
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as service:
        ids = [create(client(service), body(pattern={"k": str(i)})) for i in range(8)]
        client(service).post_json("/api/v2/event", [{"k": str(i)} for i in range(8)])
        first_held, release, writes = threading.Event(), threading.Event(), []

        def hold_the_first(sql, params):
            if sql.startswith("UPDATE heartbeat SET refreshed"):
                writes.append(params)
                if not first_held.is_set():
                    first_held.set()
                    assert release.wait(10)

        service.store.statement_hook = hold_the_first
        clock.advance(1)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(client(service).post_json, "/api/v2/event", {"k": str(i)}) for i in range(8)]
            assert first_held.wait(10)
            assert wait_until(lambda: len(service.store._together._queue) == 7)
            release.set()
            assert [answer.result().json["matched"] for answer in answers] == [[i] for i in ids]
        assert len(writes) == 2  # the first alone, then the seven that queued meanwhile, together
        assert {row["refreshed"] for row in service.store.heartbeats()} == {clock()}


@pytest.mark.postgresql
def test_the_system_clock_is_judged_on_the_databases(pg_url, monkeypatch, caplog):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 5)  # this host's clock is 5 s fast
    with heartbeat_lite.create_app(db=pg_url, clock=time.time) as service:  # the system clock (patched)
        assert service.store.clock_offset == pytest.approx(5, abs=0.5)  # measured at start
        assert service.engine.clock() == pytest.approx(real(), abs=0.5)
        assert re.search(r"clock is \+[45]\.\d+s off the database.s", caplog.text)
        assert client(service, user=None).get("/healthz").json["clock_offset"] == pytest.approx(5, abs=0.5)
    with heartbeat_lite.create_app(db=pg_url, clock=lambda: time.time() + 1) as service:  # injected: as given
        assert service.engine.clock() == pytest.approx(real() + 6, abs=0.5)
        assert "clock_offset" not in client(service, user=None).get("/healthz").json


@pytest.mark.postgresql
def test_a_windows_start_and_end_are_recorded_once_by_instances_ticking_together(two, clock):
    a, b = two(), two()
    heartbeat_id = create(client(a), body())
    client(a).post_json("/api/v2/maintenance", {"name": "w", "pattern": {}, "start": "2020-12-11T10:01:00",
                                                "end": "2020-12-11T10:02:00"})
    b.sync()
    for _ in range(3):
        clock.advance(45)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda service: service.tick(), [a, b]))
    reasons = [entry["reason"] for entry in client(b).get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"]]
    assert reasons.count("maintenance 'w' started") == 1 and reasons.count("maintenance 'w' ended") == 1, reasons


###############################################################################
# Faults over real processes: kill -9, a frozen or stopped database, skewed
# clocks. Each scenario counts false alarms (an alarm while events arrive
# well within the interval) and lost acknowledged events (an alarm sooner
# than the interval after the last event answered 200): none of either.
###############################################################################

# An instance whose system clock is off by argv[1] seconds (every use of
# time.time() in the process), running heartbeat-lite's command line.
LAUNCHER = """\
import sys, time
offset = float(sys.argv[1])
if offset:
    _system = time.time
    time.time = lambda: _system() + offset
sys.path.insert(0, sys.argv[2])
import heartbeat_lite
sys.exit(heartbeat_lite.main(sys.argv[3:]))
"""


class Instance:
    """One heartbeat-lite process (root:root on loopback), its log in
    ``<directory>/<name>.log``; ``start()`` again after ``kill()``."""

    def __init__(self, db, directory, name, forward_url=None, offset=0.0):
        self.launcher = directory / "launcher.py"
        self.launcher.write_text(LAUNCHER)
        self.log_path = directory / f"{name}.log"
        self.args = [sys.executable, str(self.launcher), str(offset), HERE, "--port", "0", "--db", db]
        if forward_url:
            self.args += ["--forward-url", forward_url]
        self.process = self.url = None
        self.start()

    def start(self):
        seen = self.log_path.read_text() if self.log_path.exists() else ""
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.args, stderr=log, stdout=subprocess.DEVNULL,
                                            env={**os.environ, "HEARTBEAT_LITE_USERS": ""})
        found = []
        assert wait_until(lambda: found.extend(re.findall(r"listening on (\S+)", self.log()[len(seen):]))
                          or found or self.process.poll() is not None, timeout=30), self.log()
        assert found, self.log()
        self.url = found[0]

    def log(self):
        return self.log_path.read_text()

    def request(self, method, path, doc=None, timeout=10.0):
        """``(status or None when it failed, body, seconds)``."""
        started = time.monotonic()
        try:
            status, _, answer = http(method, self.url + path, None if doc is None else json.dumps(doc).encode(),
                                     content_type="application/json" if doc is not None else None, timeout=timeout)
        except OSError:
            return None, None, time.monotonic() - started
        return status, answer, time.monotonic() - started

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class TimedReceiver(Receiver):
    """A forward target that also notes when each alarm or resolution arrived."""

    def __init__(self):
        super().__init__()
        self.arrivals = []  # (time.time(), event)
        handler = self.server.RequestHandlerClass
        receiver = self
        post = handler.do_POST

        def do_post(request):
            before = len(receiver.requests)
            post(request)
            receiver.arrivals += [(time.time(), event) for event in receiver.requests[before][1]]

        handler.do_POST = do_post

    def alarms(self, state=3):
        """``{heartbeat id: [arrival times]}``, an alarm delivered twice (at
        least once) counted once (same event)."""
        found = {}
        for at, event in self.arrivals:
            if event["state"] == state:
                times = found.setdefault(event["heartbeat_id"], {})
                times.setdefault(json.dumps(event, sort_keys=True), at)
        return {heartbeat_id: sorted(times.values()) for heartbeat_id, times in found.items()}


class Feeder:
    """Sends each heartbeat's event (``{"host": name}``) every ``period``
    seconds, to each instance in turn, in a thread; notes when each event
    was answered 200 (``acked``: name -> time.time() of the last) and every
    answer (``answers``: (sent at, name, status, seconds))."""

    def __init__(self, instances, names, period):
        self.instances, self.names, self.period = list(instances), list(names), period
        self.acked, self.answers = {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        rounds = 0
        while not self._stop.is_set():
            started = time.monotonic()
            rounds += 1
            for turn, name in enumerate(list(self.names), rounds):  # each heartbeat to each instance in turn
                instance = self.instances[turn % len(self.instances)]
                sent = time.time()
                status, _, seconds = instance.request("POST", "/api/v2/event", {"host": name}, timeout=15)
                if status == 200:
                    self.acked[name] = sent
                self.answers.append((sent, name, status, seconds))
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def stop(self):
        self._stop.set()
        self._thread.join(30)


def make_heartbeats(instance, names, interval):
    ids = {}
    for name in names:
        status, answer, _ = instance.request("POST", "/api/v2/heartbeat", body(
            name=name, pattern={"host": name}, expected_interval=interval))
        assert status == 200, answer
        ids[name] = answer["description"]
    return ids


@contextlib.contextmanager
def instances(*made):
    """Stop every instance (and the receiver, if given) at the end."""
    try:
        yield made
    finally:
        for instance in made:
            if isinstance(instance, Instance):
                instance.stop()
            else:
                instance.close()


@pytest.mark.postgresql
@pytest.mark.slow
def test_instances_killed_lose_no_acknowledged_event_and_raise_no_false_alarm(pg_url, tmp_path):
    # Three instances; every heartbeat's event goes to each in turn every
    # 0.25 s; one instance is killed (SIGKILL) and restarted every 2 s. Then
    # each heartbeat's last event goes to one instance, killed at once.
    receiver = TimedReceiver()
    a, b, c = [Instance(pg_url, tmp_path, name, receiver.url()) for name in "abc"]
    with instances(a, b, c, receiver):
        names = [f"h{i}" for i in range(12)]
        ids = make_heartbeats(a, names, "2s")
        feeder = Feeder([a, b, c], names, 0.25)
        for victim in (b, a, c, b):
            time.sleep(2)
            victim.kill()
            victim.start()
        time.sleep(1)
        feeder.stop()
        fed_until = time.time()
        last = {}
        for _ in range(2):  # the second within 0.5 s of the first: once kept in c's memory only
            for name in names:
                last[name] = time.time()
                assert c.request("POST", "/api/v2/event", {"host": name})[0] == 200
            time.sleep(0.4)
        c.kill()  # every one of these events was acknowledged by c alone
        assert wait_until(lambda: len(receiver.alarms()) == len(names), timeout=15), receiver.alarms()
        alarms = receiver.alarms()
        assert all(len(alarms[ids[name]]) == 1 for name in names), alarms  # raised once each
        early = {name: alarms[ids[name]][0] - last[name] for name in names if alarms[ids[name]][0] < last[name] + 2}
        assert early == {}  # no acknowledged event lost: none alarms sooner than 2 s after its last event
        assert not [at for at, event in receiver.arrivals if at < fed_until]  # no false alarm while fed
        assert {event["state"] for _, event in receiver.arrivals} == {3}  # no flapping: no resolution


@pytest.mark.postgresql
@pytest.mark.slow
def test_skewed_clocks_raise_no_false_alarm_and_write_history_once(pg_url, tmp_path):
    # One instance 5 s fast, one 5 s slow, one right: events spread over the
    # three, then silence: each heartbeat alarms once, 2 s after its last
    # event, and a maintenance window's start and end are recorded once.
    receiver = TimedReceiver()
    a, fast, slow = [Instance(pg_url, tmp_path, name, receiver.url(), offset)
                     for name, offset in (("a", 0), ("fast", 5), ("slow", -5))]
    with instances(a, fast, slow, receiver):
        for instance, offset in ((fast, 5), (slow, -5), (a, 0)):
            assert instance.request("GET", "/healthz")[1]["clock_offset"] == pytest.approx(offset, abs=0.5)
        assert re.search(r"clock is \+[45]\.\d+s off", fast.log()) and re.search(r"clock is -[45]\.\d+s off",
                                                                                 slow.log())
        names = [f"h{i}" for i in range(10)]
        ids = make_heartbeats(fast, names, "2s")
        status, windowed, _ = slow.request("POST", "/api/v2/heartbeat", body(pattern={"k": "w"}))
        start = int(time.time()) + 2
        status, _, _ = fast.request("POST", "/api/v2/maintenance", {
            "name": "w", "pattern": {"k": "w"},
            "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start)),
            "end": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + 2))})
        assert status == 200
        feeder = Feeder([a, fast, slow], names, 0.3)
        time.sleep(7)
        feeder.stop()
        fed_until = time.time()
        assert wait_until(lambda: len(receiver.alarms()) == len(names), timeout=10), receiver.alarms()
        alarms = receiver.alarms()
        assert not [at for at, event in receiver.arrivals if at < fed_until]  # no false alarm while fed
        assert all(len(alarms[ids[name]]) == 1 for name in names), alarms  # once each, no flapping
        delays = {name: alarms[ids[name]][0] - feeder.acked[name] for name in names}
        assert all(1.9 <= delay <= 4 for delay in delays.values()), delays
        history = a.request("GET", f"/api/v2/heartbeat/{windowed['description']}/history")[1]["history"]
        reasons = [entry["reason"] for entry in history]
        assert reasons.count("maintenance 'w' started") == 1 and reasons.count("maintenance 'w' ended") == 1, reasons


class Cluster:
    """A PostgreSQL cluster of the test's own (initdb, pg_ctl) on a free
    port, to freeze and stop: never the shared server other tests use. Run
    as the postgres user when this process is root (initdb refuses root)."""

    def __init__(self):
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = shutil.which("initdb") or (binaries[-1] if binaries else None)
        if initdb is None:
            pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        self.bin = os.path.dirname(os.path.realpath(initdb))
        self.as_user = []
        self.directory = tempfile.mkdtemp(prefix="heartbeat-lite-pg-")
        if os.geteuid() == 0:
            try:
                import pwd
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("initdb refuses root and there is no postgres user")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.data = os.path.join(self.directory, "data")
        self._run("initdb", "-D", self.data, "-U", "heartbeat", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()
        self.url = f"postgresql://heartbeat@127.0.0.1:{self.port}/postgres"
        self._schemas = itertools.count()

    def _run(self, program, *args):
        subprocess.run(self.as_user + [os.path.join(self.bin, program), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.directory, "log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off", "start")

    def stop(self):
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def schema(self):
        """The URL of a fresh schema."""
        import psycopg
        name = f"fault_{next(self._schemas)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url}?options=-csearch_path%3D{name}"

    def processes(self):
        """The postmaster and its children."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        children = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return [postmaster, *children]

    def freeze(self):
        """SIGSTOP the whole server: the postmaster first (it forks no one
        from then on), then its children, those forked just before
        included; :returns: the processes, for thaw()."""
        postmaster, *_ = self.processes()
        os.kill(postmaster, signal.SIGSTOP)
        time.sleep(0.05)  # a fork under way ends
        frozen = self.processes()
        for pid in frozen[1:]:
            os.kill(pid, signal.SIGSTOP)
        return frozen

    @staticmethod
    def thaw(frozen):
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def remove(self):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    made = Cluster()
    yield made
    made.remove()


class Watcher:
    """Polls an instance every 0.2 s in a thread: ``/healthz`` and one
    heartbeat's GET (served from memory), each answer with its time."""

    def __init__(self, instance, heartbeat_id):
        self.health, self.reads = [], []  # (time.time() sent, status, seconds)
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                sent = time.time()
                status, _, seconds = instance.request("GET", "/healthz", timeout=10)
                self.health.append((sent, status, seconds))
                sent = time.time()
                status, _, seconds = instance.request("GET", f"/api/v2/heartbeat/{heartbeat_id}", timeout=10)
                self.reads.append((sent, status, seconds))
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(30)


@pytest.mark.postgresql
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["freeze", "stop"])
def test_a_frozen_or_stopped_database_is_said_refused_and_survived(cluster, tmp_path, fault):
    # Two instances; six heartbeats fed through the outage (every event
    # refused meanwhile), six silent from just before it. For 10 s the
    # database is frozen (SIGSTOP of every server process) or stopped.
    receiver = TimedReceiver()
    db = cluster.schema()
    a, b = Instance(db, tmp_path, "a", receiver.url()), Instance(db, tmp_path, "b", receiver.url())
    with instances(a, b, receiver):
        fed, silent = [f"f{i}" for i in range(6)], [f"s{i}" for i in range(6)]
        ids = make_heartbeats(a, fed, "3s")
        ids.update(make_heartbeats(a, silent, "4s"))
        feeder = Feeder([a, b], fed + silent, 0.5)
        time.sleep(1.5)
        feeder.names = fed
        time.sleep(0.5)
        silent_acked = {name: feeder.acked[name] for name in silent}
        watcher = Watcher(a, ids["f0"])
        frozen = cluster.freeze() if fault == "freeze" else cluster.stop()
        began = time.time()  # (pg_ctl stop returns once the server is gone)
        time.sleep(10)
        ended = time.time()
        cluster.thaw(frozen) if fault == "freeze" else cluster.start()
        back = time.time()  # the server answers again
        time.sleep(2)
        watcher.stop()
        time.sleep(8)
        feeder.stop()

    during = [(sent, status, seconds) for sent, status, seconds in watcher.health if began + 1 < sent < ended]
    assert during and all(status == 503 and seconds < 1.0 for _, status, seconds in during), during
    assert all(status == 200 and seconds < 1.0 for _, status, seconds in watcher.reads), watcher.reads
    refused = [(sent, status, seconds) for sent, _, status, seconds in feeder.answers if began + 2 < sent < ended]
    assert refused and all(status == 400 for _, status, _ in refused), refused
    assert max(seconds for sent, _, _, seconds in feeder.answers if began < sent < ended) < 3.0
    healthy_again = min(sent + seconds for sent, status, seconds in watcher.health if sent > ended and status == 200)
    accepted_again = min(sent + seconds for sent, _, status, seconds in feeder.answers if sent > ended and status == 200)
    assert healthy_again - back < 1.0 and accepted_again - back < 1.0, (healthy_again - back, accepted_again - back)
    alarms = receiver.alarms()
    assert not [name for name in fed if ids[name] in alarms], alarms  # fed through the outage: no false alarm
    # silent through it: each once, its deadline (during the outage) moved by
    # the outage (the clock stopped), all alike, not due at once after it
    assert sorted(name for name in silent if ids[name] in alarms) == silent, alarms
    assert all(len(alarms[ids[name]]) == 1 for name in silent)
    after_back = {name: alarms[ids[name]][0] - back for name in silent}
    assert all(1.5 <= delay <= 8 for delay in after_back.values()), after_back
    moved = [alarms[ids[name]][0] - (silent_acked[name] + 4) for name in silent]
    assert max(moved) - min(moved) < 1.5, moved
    recovered = [instance.log() for instance in (a, b)]
    assert all("events could not be recorded for" in log or "other instances recorded events" in log
               for log in recovered), recovered
