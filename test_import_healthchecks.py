"""``heartbeat-lite import-healthchecks URL`` (docs/move-from-healthchecks.md),
against a local fake Healthchecks serving the recorded ``checks.json`` of a
real server (fixtures/healthchecks/), checking the API key as Healthchecks
does (``X-Api-Key``; a wrong one: 401)."""

import json
import os
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import heartbeat_lite
from testing_support import HERE, client, run_cli

API_KEY = "fixture-api-key-0123456789abcdef"  # the recording's project key (fixtures/healthchecks/README.md)
CHECKS = os.path.join(HERE, "fixtures", "healthchecks", "checks.json")
UUIDS = {
    "bench": "1e57bac0-0474-45ea-b193-7fb92a960476",
    "nightly backup": "a73e26e5-b576-480d-9ce5-db7b6524b07f",
    "hourly etl": "75d9d586-06e0-4232-b020-1128a8ddb6fc",
    "weekly report": "bced683e-8c94-47e5-a695-11d913d5b7fe",
    "ssl expiry": "145e222e-5745-4d85-97a0-b94a0f2da2a5",
    "new-job": "f5bc363b-4105-4760-ac92-16f9e7f6ff2f",
}

CLI_WRITES_SQLITE = pytest.mark.sqlite_only("the command, a subprocess, writes a SQLite file (PostgreSQL: "
                                            "test_the_import_on_any_store)")


class FakeHealthchecks:
    """``GET /api/v3/checks/`` answering ``body`` (the recording by default)
    to the right ``X-Api-Key``, 401 ``{"error": "missing api key"}`` otherwise."""

    def __init__(self, body=None):
        with open(CHECKS, "rb") as f:
            self.body = f.read() if body is None else body
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake.requests.append((self.path, dict(self.headers)))
                if self.path != "/api/v3/checks/":
                    status, data = 404, b'{"error": "not found"}'
                elif self.headers.get("X-Api-Key") != API_KEY:
                    status, data = 401, b'{"error": "missing api key"}'
                else:
                    status, data = 200, fake.body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def healthchecks():
    fake = FakeHealthchecks()
    yield fake
    fake.close()


def run_import(url, db, key=API_KEY, *more):
    env = {"HEALTHCHECKS_API_KEY": key} if key is not None else {}
    if key is None:
        env["HEALTHCHECKS_API_KEY"] = ""
    return run_cli("import-healthchecks", url, "--db", db, *more, env=env)


def documents(db):
    with heartbeat_lite.create_app(db=db) as service:
        app = client(service)
        return {doc["_id"]: (doc, app.get(f"/api/v2/heartbeat/{doc['_id']}/status").json)
                for doc in app.get("/api/v2/heartbeat").json}


@CLI_WRITES_SQLITE
def test_every_recorded_check_moves_in_with_its_uuid(healthchecks, tmp_path):
    db = str(tmp_path / "hb.db")
    result = run_import(healthchecks.url, db)
    assert result.returncode == 0, result.stderr
    assert healthchecks.requests[0][0] == "/api/v3/checks/"
    lines = result.stdout.splitlines()
    assert lines[-1] == "6 created, 0 skipped, 0 could not be mapped"
    docs = documents(db)
    assert set(docs) == set(UUIDS.values())
    by_name = {doc["name"]: (doc, state) for doc, state in docs.values()}
    for name, uuid in UUIDS.items():
        doc, _ = by_name[name]
        assert doc["_id"] == uuid and doc["pattern"] == {"ping": uuid} and doc["author"] == "import-healthchecks"
    nightly, state = by_name["nightly backup"]
    assert (nightly["slug"], nightly["description"], nightly["expected_interval"], nightly["late_after"]) == \
        ("nightly-backup", "pg_basebackup of db-prod-01", "25h", "24h")  # timeout + grace, timeout
    assert state["status"] == "pending"
    etl, _ = by_name["hourly etl"]
    assert (etl["schedule"], etl["tz"], etl["expected_interval"], etl["description"]) == \
        ("15 * * * *", "Europe/Riga", "10m", "orders to warehouse")  # the grace
    assert "late_after" not in etl
    weekly, state = by_name["weekly report"]
    assert (weekly["schedule"], weekly["tz"], weekly["expected_interval"], state["status"]) == \
        ("0 9 * * 1", "America/New_York", "2h", "paused")
    ssl, _ = by_name["ssl expiry"]
    assert (ssl["expected_interval"], ssl["late_after"], "slug" in ssl) == ("65m", "1h", False)
    assert by_name["bench"][0]["expected_interval"] == "25h"
    # what a heartbeat does not keep is said, check by check
    assert f"created {UUIDS['weekly report']} (weekly report) (paused; not kept: manual_resume (a success ping " \
           "resolves it))" in lines
    assert f"created {UUIDS['ssl expiry']} (ssl expiry) (not kept: methods (pings by GET and HEAD are accepted " \
           "too))" in lines
    assert f"created {UUIDS['nightly backup']} (nightly backup) (not kept: tags)" in lines


@CLI_WRITES_SQLITE
def test_a_second_run_skips_what_is_there_and_brings_what_is_new(healthchecks, tmp_path):
    db = str(tmp_path / "hb.db")
    assert run_import(healthchecks.url, db).returncode == 0
    result = run_import(healthchecks.url, db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "0 created, 6 skipped, 0 could not be mapped"
    assert f"skipped {UUIDS['bench']} (bench): already here" in result.stdout
    recorded = json.loads(healthchecks.body)
    recorded["checks"].append({**recorded["checks"][0], "uuid": "0b7f6d9e-1c2a-4b3d-8e4f-5a6b7c8d9e0f",
                               "name": "brand new", "timeout": 60, "grace": 60})
    healthchecks.body = json.dumps(recorded).encode()
    result = run_import(healthchecks.url, db)
    assert result.stdout.splitlines()[-1] == "1 created, 6 skipped, 0 could not be mapped"
    assert len(documents(db)) == 7


@CLI_WRITES_SQLITE
def test_checks_that_cannot_be_mapped_are_listed_and_the_rest_moves_in(tmp_path):
    recorded = json.loads(open(CHECKS, "rb").read())
    first = recorded["checks"][0]
    recorded["checks"] += [
        {**first, "uuid": "11111111-1111-4111-8111-111111111111", "name": "calendar", "timeout": None,
         "schedule": "Mon *-*-* 09:00:00", "tz": "UTC"},  # an OnCalendar schedule
        {**first, "uuid": "22222222-2222-4222-8222-222222222222", "name": "too long", "timeout": 31536000,
         "grace": 31536000},  # timeout + grace: two years
        {**first, "uuid": "33333333-3333-4333-8333-333333333333", "name": "same slug", "slug": "nightly-backup"},
    ]
    fake = FakeHealthchecks(json.dumps(recorded).encode())
    try:
        db = str(tmp_path / "hb.db")
        result = run_import(fake.url, db)
    finally:
        fake.close()
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == "6 created, 0 skipped, 3 could not be mapped"
    assert "could not map 11111111-1111-4111-8111-111111111111 (calendar): schedule: must be a cron expression " \
           "of 5 fields (minute hour day month weekday)" in lines
    assert "could not map 22222222-2222-4222-8222-222222222222 (too long): expected_interval: at most 365 days " \
           "(8760h)" in lines
    assert "could not map 33333333-3333-4333-8333-333333333333 (same slug): heartbeat slug already exists" in lines
    assert len(documents(db)) == 6


@CLI_WRITES_SQLITE
def test_bad_usage_a_wrong_key_an_unreachable_site_or_a_running_service_exit_2(healthchecks, tmp_path):
    db = str(tmp_path / "hb.db")
    wrong = run_import(healthchecks.url, db, "wrong-key")
    assert wrong.returncode == 2 and "refused the API key (HTTP 401)" in wrong.stderr
    assert healthchecks.requests[-1][1]["X-Api-Key"] == "wrong-key"
    missing = run_import(healthchecks.url, db, None)
    assert missing.returncode == 2 and "HEALTHCHECKS_API_KEY: not set" in missing.stderr
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()  # nothing listens there now
    unreachable = run_import(f"http://127.0.0.1:{port}", db)
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    assert run_import("ftp://hc.example.com", db).returncode == 2
    assert run_cli("import-healthchecks", env={"HEALTHCHECKS_API_KEY": API_KEY}).returncode == 2  # no URL
    nowhere = run_import(healthchecks.url, str(tmp_path / "missing" / "hb.db"))
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr
    assert not os.path.exists(db)  # nothing written by any of them
    with heartbeat_lite.create_app(db=db):  # a service holds the database
        busy = run_import(healthchecks.url, db)
    assert busy.returncode == 2 and "heartbeat-lite: error:" in busy.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM heartbeat").fetchone()[0] == 0
    conn.close()


@CLI_WRITES_SQLITE
def test_the_imported_ping_urls_work_after_the_move(healthchecks, tmp_path, clock):
    db = str(tmp_path / "hb.db")
    assert run_import(healthchecks.url, db).returncode == 0
    with heartbeat_lite.create_app(db=db, clock=clock) as service:
        app = client(service, user=None)
        assert app.get(f"/ping/{UUIDS['nightly backup']}").text == "OK"
        app.authorization = ("Basic", ("root", "root"))
        assert app.get(f"/api/v2/heartbeat/{UUIDS['nightly backup']}/status").json["status"] == "up"


def test_the_mapping_rules(tmp_path):
    check = json.loads(open(CHECKS, "rb").read())["checks"][0]
    body, notes = heartbeat_lite.healthchecks_heartbeat({**check, "name": " ", "slug": "", "timeout": 90,
                                                         "grace": 60, "desc": "x" * 5000})
    assert body["name"] == check["uuid"]  # a blank name: the slug, else the uuid
    assert (body["expected_interval"], body["late_after"]) == ("150s", "90s")
    assert len(body["description"]) == heartbeat_lite.MAX_TEXT_CHARS
    assert notes == [f"description cut to {heartbeat_lite.MAX_TEXT_CHARS} characters"]
    with pytest.raises(ValueError, match="no uuid"):
        heartbeat_lite.healthchecks_heartbeat({**check, "uuid": "not-a-uuid"})
    read_only = {key: value for key, value in check.items() if key not in ("uuid", "ping_url", "update_url")}
    with pytest.raises(ValueError, match="a read-only API key hides it, give the project's read-write key"):
        heartbeat_lite.healthchecks_heartbeat({**read_only, "unique_key": "a6c7b0a8a66bed0df66abfdab3c77736861703ee"})
    assert [heartbeat_lite.interval_text(s) for s in (3600, 5400, 90000, 45)] == ["1h", "90m", "25h", "45s"]


def test_the_import_on_any_store(service, clock):
    """The import itself, in process: on PostgreSQL too when the suite runs there."""
    import io
    checks = json.loads(open(CHECKS, "rb").read())["checks"]
    out = io.StringIO()
    assert heartbeat_lite.import_healthchecks(service.engine, checks, out) == 0
    assert heartbeat_lite.import_healthchecks(service.engine, checks, out) == 0
    assert out.getvalue().splitlines()[-1] == "0 created, 6 skipped, 0 could not be mapped"
    app = client(service)
    assert sorted(doc["_id"] for doc in app.get("/api/v2/heartbeat").json) == sorted(UUIDS.values())
    assert app.get(f"/api/v2/heartbeat/{UUIDS['weekly report']}/status").json["status"] == "paused"
    assert service.engine.by_slug("hourly-etl") == UUIDS["hourly etl"]
