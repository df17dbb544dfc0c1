"""A pytest plugin (loaded by conftest.py) that runs the suite on PostgreSQL
when ``HEARTBEAT_LITE_TEST_PG=<url>`` is set.

Every service a test builds gets a fresh PostgreSQL schema instead of its
SQLite database: ``heartbeat_lite.open_store`` is patched so that
``:memory:`` is a new schema each time and a file path is a schema of its
own for the test (opened again by the same path: a restart sees the same
data). The schemas are dropped after each test.

Tests of one store only say so where they are defined, with a marker
(registered in pytest.ini):

- ``@pytest.mark.sqlite_only("reason")``: what only SQLite has (files,
  locks, WAL, query plans, read-only file systems); skipped, with the
  reason, when the suite runs on PostgreSQL;
- ``@pytest.mark.postgresql``: needs a PostgreSQL server; skipped without
  the variable. Such a test asks for the ``pg_url`` fixture (the URL of a
  fresh schema), which refuses a test not marked so.

Without the variable, nothing else changes.
"""

import itertools
import os
import urllib.parse

import pytest

import heartbeat_lite

PG_URL = os.environ.get("HEARTBEAT_LITE_TEST_PG")

_counter = itertools.count()


def _url_with_schema(url, schema):
    """``url`` with ``options=-csearch_path=<schema>`` added, and the schema's
    name as ``application_name``: what connections to it are called on the
    server, so a test ends its own and no one else's."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query += [("options", f"-csearch_path={schema}"), ("application_name", schema)]
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

    def end_connections(self, url):
        """End every server connection opened with ``url`` (from :meth:`new`),
        as a network failure would, and wait until they are gone. Other
        tests' and other runs' connections to the same database stay."""
        name = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["application_name"]
        self.conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                          "WHERE application_name = %s AND pid <> pg_backend_pid()", (name,))

    def drop(self):
        for name in self.made:
            self.conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        self.made.clear()


@pytest.fixture(scope="session")
def pg_schemas():
    if not PG_URL:
        pytest.fail("PostgreSQL's schemas need HEARTBEAT_LITE_TEST_PG: mark the test @pytest.mark.postgresql",
                    pytrace=False)
    schemas = Schemas(PG_URL)
    yield schemas
    schemas.drop()
    schemas.conn.close()


@pytest.fixture
def pg_url(request, pg_schemas):
    """The URL of a fresh, empty PostgreSQL schema, for a test marked ``postgresql``."""
    if request.node.get_closest_marker("postgresql") is None:
        pytest.fail(f"{request.node.name} uses pg_url: mark it @pytest.mark.postgresql", pytrace=False)
    url = pg_schemas.new()
    yield url
    pg_schemas.drop()


@pytest.fixture(autouse=True)
def _on_postgresql(request, monkeypatch):
    if not PG_URL or request.node.get_closest_marker("sqlite_only") or request.node.get_closest_marker("postgresql"):
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


def pytest_collection_modifyitems(config, items):
    for item in items:
        sqlite_only = item.get_closest_marker("sqlite_only")
        if PG_URL and sqlite_only:
            reason = sqlite_only.args[0] if sqlite_only.args else "SQLite only"
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))
        elif not PG_URL and item.get_closest_marker("postgresql"):
            item.add_marker(pytest.mark.skip(reason="PostgreSQL tests need HEARTBEAT_LITE_TEST_PG=<url>"))
