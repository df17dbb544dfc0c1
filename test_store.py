"""The store: what its methods mean is the same on SQLite and on PostgreSQL.

Each test opens its service or store with ``:memory:``, which runs on
SQLite, and on a fresh PostgreSQL schema instead when
``HEARTBEAT_LITE_TEST_PG`` is set (see pg_testing.py): the same assertions
hold on both.
"""

import importlib.util
import inspect
import random
import sqlite3
import threading

import pytest

import heartbeat_lite

T0 = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def heartbeat(service, key, **fields):
    """Create a heartbeat watching ``{"n": key}`` through the engine; return its id."""
    doc = {"name": f"hb {key}", "pattern": {"n": key}, "expected_interval": "1m", **fields}
    return service.engine.create(heartbeat_lite.validate_heartbeat(doc, "root"))


# -- write_refreshes ----------------------------------------------------------


def test_write_refreshes_returns_the_ids_whose_heartbeat_is_no_longer_up():
    clock = Clock()
    with heartbeat_lite.create_app(clock=clock) as service:
        ids = [heartbeat(service, str(i)) for i in range(5)]
        service.engine.ingest([{"n": str(i)} for i in range(5)])
        store = service.store
        assert {store.heartbeat(heartbeat_id)["status"] for heartbeat_id in ids} == {"up"}
        # state changes the caller has not seen (another instance, or this
        # one between the chunks of a storm)
        store.set_state(ids[1], "paused", T0, T0, None)
        store.set_state(ids[2], "down", T0, T0, T0 + 60)
        store.set_state(ids[3], "late", T0, T0, T0 + 50)
        store.delete_heartbeat(ids[4])
        missed = store.write_refreshes([(heartbeat_id, T0 + 10) for heartbeat_id in reversed(ids)])
        assert missed == sorted(ids[1:])  # in id order
        assert store.heartbeat(ids[0])["refreshed"] == store.heartbeat(ids[0])["last_event"] == T0 + 10
        for heartbeat_id in ids[1:4]:
            row = store.heartbeat(heartbeat_id)
            assert (row["refreshed"], row["last_event"]) == (T0, T0)


def test_write_refreshes_of_heartbeats_all_up_misses_none():
    clock = Clock()
    with heartbeat_lite.create_app(clock=clock) as service:
        ids = [heartbeat(service, str(i)) for i in range(3)]
        service.engine.ingest([{"n": str(i)} for i in range(3)])
        assert service.store.write_refreshes([(heartbeat_id, T0 + 5) for heartbeat_id in ids]) == []
        assert [service.store.heartbeat(heartbeat_id)["refreshed"] for heartbeat_id in ids] == [T0 + 5] * 3
        assert service.store.write_refreshes([]) == []


def test_write_refreshes_of_many_heartbeats_is_one_transaction():
    # SQLite's connection commits each statement on its own outside a
    # transaction: a batch's thousand refreshes were a thousand commits
    # (44 ms under the engine's lock, against 7 ms as one).
    clock = Clock()
    with heartbeat_lite.create_app(clock=clock) as service:
        ids = [heartbeat(service, str(i)) for i in range(20)]
        service.engine.ingest([{"n": str(i)} for i in range(20)])
        statements = []
        service.store.statement_hook = lambda sql, params: statements.append(sql)
        try:
            assert service.store.write_refreshes([(heartbeat_id, T0 + 5) for heartbeat_id in ids]) == []
        finally:
            service.store.statement_hook = None
        assert statements.count(service.store._BEGIN) == 1 and statements.count("COMMIT") == 1
        assert [service.store.heartbeat(heartbeat_id)["refreshed"] for heartbeat_id in ids] == [T0 + 5] * 20


@pytest.mark.sqlite_only("a trigger makes SQLite fail one row of the statement")
def test_a_batch_s_refreshes_that_fail_midway_write_none(tmp_path):
    # Their statement failing at its eleventh row (a full disk, here a
    # trigger): one commit per row had kept the first ten, which the read
    # model did not know of; one transaction writes none, as it answered.
    clock = Clock()
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        ids = [heartbeat(service, str(i)) for i in range(20)]
        service.engine.ingest([{"n": str(i)} for i in range(20)])
        with sqlite3.connect(path) as other:
            other.execute(f"CREATE TRIGGER full BEFORE UPDATE ON heartbeat WHEN old.id = '{ids[10]}' "
                          "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        with pytest.raises(heartbeat_lite.StoreError, match="full"):
            service.store.write_refreshes([(heartbeat_id, T0 + 5) for heartbeat_id in ids])
        assert [service.store.heartbeat(heartbeat_id)["refreshed"] for heartbeat_id in ids] == [T0] * 20


def test_a_heartbeat_paused_between_the_chunks_of_a_storm_counts_its_event(monkeypatch):
    """One service: a batch refreshing heartbeats up is written in chunks,
    letting go of the engine's lock in between; a pause that gets in then
    leaves a later chunk's heartbeat paused. Its event is still counted (its
    ``last_event`` moves, as for any event to a paused heartbeat) and the
    engine does not take it for up."""
    monkeypatch.setattr(heartbeat_lite, "REFRESH_CHUNK_HEARTBEATS", 2)
    monkeypatch.setattr(heartbeat_lite, "STORM_YIELD_SECONDS", 0.5)  # the pause's way in
    clock = Clock()
    with heartbeat_lite.create_app(clock=clock) as service:
        ids = [heartbeat(service, str(i)) for i in range(4)]
        events = [{"n": str(i)} for i in range(4)]
        service.engine.ingest(events)  # all up
        clock.advance(10)
        pauser = threading.Thread(target=service.engine.pause, args=(ids[3],))
        write_refreshes = service.store.write_refreshes
        chunks = []

        def in_chunks(refreshes):
            refreshes = list(refreshes)
            chunks.append([heartbeat_id for heartbeat_id, _ in refreshes])
            if len(chunks) == 1:
                pauser.start()  # waits for the engine's lock, free between the chunks
            else:
                assert not pauser.is_alive()  # it got in between
            return write_refreshes(refreshes)

        monkeypatch.setattr(service.store, "write_refreshes", in_chunks)
        service.engine.ingest(events)
        pauser.join(10)
        monkeypatch.undo()
        assert len(chunks) == 2 and ids[3] in chunks[1]  # it was in the chunk after the pause
        row = service.store.heartbeat(ids[3])
        assert (row["status"], row["last_event"]) == ("paused", T0 + 10)
        clock.advance(10)
        service.engine.ingest([events[3]])  # the next one counts too
        row = service.store.heartbeat(ids[3])
        assert (row["status"], row["last_event"]) == ("paused", T0 + 20)


# -- one deadline rule ---------------------------------------------------------
# schema.sql and schema.postgresql.sql spell ``deadline`` and ``due`` as
# generated columns (so that they can be indexed); the engine has the rule in
# Python (deadline_of, due_of, member_due_of). Both must say the same of any
# row: random rows of every status, with and without late and retire
# seconds, integer and float times, tiny and huge intervals.

HEARTBEAT_STATES = ("pending", "up", "late", "down", "paused")
EDGE_SECONDS = (1, 2, 59, 60, 61, 3599, 3600, 86400, heartbeat_lite.MAX_INTERVAL_SECONDS, 2 ** 31 - 1)
EDGE_TIMES = (0, 0.0, 1e-9, 0.1, 0.5, 1, T0, T0 + 0.001, 2 ** 31, 253402300799.999, 1e15 + 0.25, 2 ** 50)


def _seconds(rng, optional=False):
    """An interval, late or retire time (None sometimes, when ``optional``)."""
    choice = rng.random()
    if optional and choice < 0.3:
        return None
    if choice < 0.6:
        return rng.choice(EDGE_SECONDS)
    return rng.randint(1, heartbeat_lite.MAX_INTERVAL_SECONDS)


def _time(rng):
    """A Unix time: an edge, an integer, or a float with a fraction."""
    choice = rng.random()
    if choice < 0.3:
        return rng.choice(EDGE_TIMES)
    if choice < 0.6:
        return rng.randint(0, 2 ** 40)
    return rng.uniform(0, 2 ** 40) if choice < 0.8 else T0 + rng.uniform(-1e6, 1e6)


def random_heartbeats(rng, count):
    rows = []
    for i in range(count):
        status = HEARTBEAT_STATES[i % len(HEARTBEAT_STATES)]
        refreshed = _time(rng)
        rows.append({
            "id": f"h{i:05d}", "pattern": f'{{"n":"{i}"}}', "interval_seconds": _seconds(rng),
            "late_seconds": _seconds(rng, optional=True), "retire_seconds": _seconds(rng, optional=True),
            "group_by": '["host"]' if rng.random() < 0.2 else None, "status": status, "refreshed": refreshed,
            "alarm_since": refreshed + rng.choice((0, 1, 0.5)) if status in ("late", "down") else None,
        })
    return rows


def random_members(rng, count):
    rows = []
    for i in range(count):
        status = HEARTBEAT_STATES[i % len(HEARTBEAT_STATES)]
        refreshed = _time(rng)
        expected = rng.random() < 0.2
        rows.append({
            "heartbeat_id": "h", "member": f'{{"host":"m{i:05d}"}}', "expected": int(expected),
            "interval_seconds": _seconds(rng), "late_seconds": _seconds(rng, optional=True),
            "retire_seconds": None if expected else _seconds(rng, optional=True), "status": status,
            "refreshed": refreshed,
            "alarm_since": _time(rng) if status in ("late", "down") else None,
        })
    return rows


@pytest.fixture
def store():
    store = heartbeat_lite.open_store(":memory:")  # a fresh PostgreSQL schema with HEARTBEAT_LITE_TEST_PG
    store.open()
    yield store
    store.close()


NOT_COMPARED = object()  # a rule's answer where the column means nothing


def _disagreements(rows, stored, rules):
    """``(row, column, SQL, Python)`` wherever a generated column and its rule differ."""
    found = []
    for row in rows:
        for column, rule in rules.items():
            expected = rule(row)
            if expected is not NOT_COMPARED and stored[column].get(row["key"], "missing") != expected:
                found.append((row, column, stored[column].get(row["key"], "missing"), expected))
    return found


def test_the_generated_deadline_and_due_of_heartbeats_follow_the_python_rule(store):
    rng = random.Random(17)
    rows = random_heartbeats(rng, 3000)
    store._executemany(
        "INSERT INTO heartbeat (id, name, author, description, output, pattern, expected_interval, interval_seconds, "
        "late_seconds, group_by, retire_seconds, created, updated, status, refreshed, alarm_since) VALUES "
        "(:id, 'n', 'a', '', '', :pattern, '1s', :interval_seconds, :late_seconds, :group_by, :retire_seconds, "
        "0, 0, :status, :refreshed, :alarm_since)", rows)
    stored = {"deadline": {}, "due": {}}
    for row in store._query("SELECT id, deadline, due FROM heartbeat"):
        stored["deadline"][row[0]], stored["due"][row[0]] = row[1], row[2]
    for row in rows:
        row["key"] = row["id"]

    def due(row):
        if row["group_by"] is not None:
            return None  # its members fall due, not it
        if row["status"] in ("down", "paused"):
            return NOT_COMPARED  # nothing is due: every query of ``due`` leaves these rows out
        return heartbeat_lite.due_of(row)

    assert _disagreements(rows, stored, {"deadline": heartbeat_lite.deadline_of, "due": due})[:5] == []
    # every kind of row was drawn
    assert {(row["status"], row["late_seconds"] is None, row["group_by"] is None, type(row["refreshed"]))
            for row in rows} >= {(status, no_late, plain, kind) for status in HEARTBEAT_STATES
                                 for no_late in (True, False) for plain in (True, False) for kind in (int, float)}


def test_the_generated_deadline_and_due_of_members_follow_the_python_rule(store):
    rng = random.Random(23)
    rows = random_members(rng, 3000)
    store._executemany(
        "INSERT INTO member (heartbeat_id, member, expected, interval_seconds, late_seconds, retire_seconds, "
        "status, refreshed, alarm_since) VALUES (:heartbeat_id, :member, :expected, :interval_seconds, "
        ":late_seconds, :retire_seconds, :status, :refreshed, :alarm_since)", rows)
    stored = {"deadline": {}, "due": {}}
    for row in store._query("SELECT member, deadline, due FROM member"):
        stored["deadline"][row[0]], stored["due"][row[0]] = row[1], row[2]
    for row in rows:
        row["key"] = row["member"]
    assert _disagreements(rows, stored, {"deadline": heartbeat_lite.deadline_of,
                                         "due": heartbeat_lite.member_due_of})[:5] == []
    assert {(row["status"], row["late_seconds"] is None, row["retire_seconds"] is None, type(row["refreshed"]))
            for row in rows} >= {(status, no_late, no_retire, kind) for status in HEARTBEAT_STATES
                                 for no_late in (True, False) for no_retire in (True, False) for kind in (int, float)}


# -- the status page's search and order ---------------------------------------


def test_the_status_page_folds_only_ascii_letters_in_its_search_and_order():
    """As SQLite's LIKE and NOCASE do, on both databases: ``é`` finds ``é``
    but not ``É``, ``ECLAIR`` finds ``eclair`` but not ``éclair``."""
    names = ["Éclair", "éclair", "eclair", "ECLAIR beta", "Zed", "zebra", "apple", "Ärger"]
    with heartbeat_lite.create_app(clock=Clock()) as service:
        by_name = {name: heartbeat(service, f"p{i}", name=name) for i, name in enumerate(names)}

        def found(*terms):
            return [row["name"] for row in service.store.status_page([], list(terms), 100, 0)[2]]

        assert found() == ["apple", "eclair", "ECLAIR beta", "zebra", "Zed", "Ärger", "Éclair", "éclair"]
        assert found("é") == ["éclair"]
        assert found("É") == ["Éclair"]
        assert found("ECLAIR") == ["eclair", "ECLAIR beta"]
        assert found("zE") == ["zebra", "Zed"]
        assert len(by_name) == len(names)


# -- two siblings of one base ------------------------------------------------------


def test_the_stores_are_siblings_that_each_implement_every_hook():
    assert heartbeat_lite.SqliteStore.__bases__ == heartbeat_lite.PostgresStore.__bases__ == (heartbeat_lite.Store,)
    assert {"_open", "_send", "_for_update", "write_refreshes", "last_alive", "outbox_lease"} \
        <= heartbeat_lite.Store.__abstractmethods__
    assert heartbeat_lite.SqliteStore.__abstractmethods__ == frozenset()
    assert heartbeat_lite.PostgresStore.__abstractmethods__ == frozenset()
    with pytest.raises(TypeError, match="_BEGIN"):
        type("Incomplete", (heartbeat_lite.Store,), {name: None for name in heartbeat_lite.Store._DIALECT
                                                     if name != "_BEGIN"})


def test_each_store_is_built_through_the_base_constructor():
    """Every attribute the shared base sets is there on both, so that one
    added to the base later cannot be missing from a sibling."""
    base = object.__new__(heartbeat_lite.SqliteStore)
    heartbeat_lite._Connections.__init__(base, "label", 1.0, (Exception,))
    stores = [heartbeat_lite.SqliteStore(":memory:")]
    if importlib.util.find_spec("psycopg") is not None:
        stores.append(heartbeat_lite.PostgresStore("postgresql://nobody@127.0.0.1:1/none"))  # connects on first use
    for store in stores:
        try:
            assert set(vars(base)) <= set(vars(store)), type(store).__name__
        finally:
            store.close()
    assert len(vars(base)) > 10


def test_no_class_of_the_store_is_over_600_lines():
    classes = set(heartbeat_lite.Store.__mro__) | {heartbeat_lite.SqliteStore, heartbeat_lite.PostgresStore}
    sizes = {cls.__name__: len(inspect.getsourcelines(cls)[0]) for cls in classes
             if cls.__module__ == "heartbeat_lite"}
    assert len(sizes) >= 10
    assert {name: size for name, size in sizes.items() if size > 600} == {}
