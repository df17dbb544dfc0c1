"""Fixtures shared by every test file (the plain helpers they use are in
testing_support.py). ``pg_testing`` runs the suite on PostgreSQL too when
HEARTBEAT_LITE_TEST_PG is set, and skips the tests marked for one store when
run on the other (markers ``sqlite_only`` and ``postgresql``, see pytest.ini).
"""

import pytest

import heartbeat_lite
from testing_support import FakeClock, client

pytest_plugins = ["pg_testing"]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def alarms_seen():
    """Every alarm and resolution the service publishes, in order."""
    return []


@pytest.fixture
def service(clock, alarms_seen):
    with heartbeat_lite.create_app(db=":memory:", clock=clock, on_alarm=alarms_seen.append) as service:
        yield service


@pytest.fixture
def app(service):
    return client(service)


@pytest.fixture
def restart(tmp_path, clock, alarms_seen):
    """Open the service on this test's database file; each further call is a
    restart on the same file: ``with restart() as service: ...``. Keyword
    arguments go to ``create_app``; ``restart.path`` is the file."""
    path = str(tmp_path / "hb.db")

    def start(**options):
        return heartbeat_lite.create_app(**{"db": path, "clock": clock, "on_alarm": alarms_seen.append, **options})

    start.path = path
    return start


@pytest.fixture
def counted_derivations(monkeypatch):
    calls = []
    verify = heartbeat_lite.PasswordHash.verify

    def counting_verify(self, password):
        calls.append(password)
        return verify(self, password)

    monkeypatch.setattr(heartbeat_lite.PasswordHash, "verify", counting_verify)
    return calls


@pytest.fixture
def spec():
    with heartbeat_lite.create_app() as service:
        return client(service, user=None).get("/api/v2/openapi.json").json
