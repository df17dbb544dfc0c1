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
import os
import re
import signal
import subprocess
import sys
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
