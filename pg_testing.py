"""A pytest plugin (loaded by conftest.py) that runs the suite on PostgreSQL
when ``HEARTBEAT_LITE_TEST_PG=<url>`` is set.

Every service a test builds gets a fresh PostgreSQL schema instead of its
SQLite database: ``heartbeat_lite.open_store`` is patched so that
``:memory:`` is a new schema each time and a file path is a schema of its
own for the test (opened again by the same path: a restart sees the same
data). The schemas are dropped after each test. Tests of what only SQLite
has (files, locks, WAL, query plans, read-only file systems) are skipped,
with the reason, by name in :data:`SQLITE_ONLY`. PostgreSQL-only tests ask
for the ``pg_url`` fixture (skipped without the variable), which gives the
URL of a fresh schema.

Without the variable, nothing changes.
"""

import itertools
import os
import urllib.parse

import pytest

import heartbeat_lite

PG_URL = os.environ.get("HEARTBEAT_LITE_TEST_PG")

# test name (without parameters) -> why it does not run on PostgreSQL
SQLITE_ONLY = {
    "test_expiry_reads_the_deadline_index": "reads SQLite's EXPLAIN QUERY PLAN of the file",
    "test_the_due_index_serves_expiry_with_late_after": "reads SQLite's EXPLAIN QUERY PLAN of the file",
    "test_a_write_lock_held_by_another_process_gives_the_database_error": "holds SQLite's file write lock",
    "test_a_database_locked_at_start_starts_degraded_then_recovers": "holds SQLite's file write lock",
    "test_health_and_reads_from_memory_answer_while_a_write_waits_on_another_process": "holds SQLite's file write lock",
    "test_a_read_only_file_system_gives_database_errors_until_it_is_writable": "makes the SQLite file read-only",
    "test_the_schema_is_versioned": "reads PRAGMA user_version (PostgreSQL: test_postgresql.py)",
    "test_a_version_1_database_is_migrated_keeping_heartbeats_and_states": "builds a version 1 SQLite file",
    "test_a_missing_database_directory_is_a_config_error": "a SQLite path's directory",
    "test_the_tick_does_not_scan_heartbeats_for_windows": "counts SQLite's json_each statements",
    "test_a_second_service_on_the_same_database_exits_2_and_changes_nothing":
        "the single-instance lock is SQLite's (several instances share a PostgreSQL database)",
    "test_a_database_that_is_a_directory_or_not_sqlite_exits_2": "a SQLite path",
    "test_a_database_file_deleted_or_replaced_while_running_is_detected": "a SQLite file deleted or replaced",
    "test_member_expiry_reads_the_due_index": "reads SQLite's EXPLAIN QUERY PLAN of the file",
    "test_a_version_2_database_is_migrated": "builds a version 2 SQLite file",
    "test_a_storm_of_members_goes_down_in_chunks": "counts SQLite's BEGIN IMMEDIATE statements",
}

_counter = itertools.count()


def _url_with_schema(url, schema):
    """``url`` with ``options=-csearch_path=<schema>`` added."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class Schemas:
    """Fresh schemas in the test database, dropped at the end."""

    def __init__(self, url):
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.made = []

    def new(self):
        name = f"hbtest_{os.getpid()}_{next(_counter)}"
        self.conn.execute(f"CREATE SCHEMA {name}")
        self.made.append(name)
        return _url_with_schema(self.url, name)

    def drop(self):
        for name in self.made:
            self.conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.made.clear()


@pytest.fixture(scope="session")
def pg_schemas():
    if not PG_URL:
        pytest.skip("PostgreSQL tests need HEARTBEAT_LITE_TEST_PG=<url>")
    schemas = Schemas(PG_URL)
    yield schemas
    schemas.drop()
    schemas.conn.close()


@pytest.fixture
def pg_url(pg_schemas):
    """The URL of a fresh, empty PostgreSQL schema (skips without HEARTBEAT_LITE_TEST_PG)."""
    url = pg_schemas.new()
    yield url
    pg_schemas.drop()


@pytest.fixture(autouse=True)
def _on_postgresql(request, monkeypatch):
    if not PG_URL or request.node.get_closest_marker("sqlite_only") or "pg_url" in request.fixturenames:
        yield
        return
    schemas = request.getfixturevalue("pg_schemas")
    by_path = {}
    original = heartbeat_lite.open_store

    def open_store(db, busy_timeout=heartbeat_lite.BUSY_TIMEOUT_SECONDS):
        if heartbeat_lite.is_postgres_url(db):
            return original(db, busy_timeout)
        if db == ":memory:":
            return original(schemas.new(), busy_timeout)
        if db not in by_path:
            by_path[db] = schemas.new()
        return original(by_path[db], busy_timeout)

    monkeypatch.setattr(heartbeat_lite, "open_store", open_store)
    yield
    schemas.drop()


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only(reason): runs on SQLite only (skipped with HEARTBEAT_LITE_TEST_PG)")
    config.addinivalue_line("markers", "postgresql: needs HEARTBEAT_LITE_TEST_PG")


def pytest_collection_modifyitems(config, items):
    if not PG_URL:
        return
    for item in items:
        name = item.name.split("[")[0]
        marker = item.get_closest_marker("sqlite_only")
        reason = SQLITE_ONLY.get(name) or (marker and (marker.args[0] if marker.args else "SQLite only"))
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))
