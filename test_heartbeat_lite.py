"""Tests for heartbeat_lite: webtest against the WSGI app with a fake clock,
plus a few real-server tests over HTTP."""

import base64
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import webtest

import heartbeat_lite
from heartbeat_lite import (
    MAX_INTERVAL_SECONDS,
    MAX_NAME_CHARS,
    MAX_PATTERN_ENTRIES,
    MAX_PATTERN_ITEM_CHARS,
    MAX_TEXT_CHARS,
)

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_607_680_814.0  # the seed's "created"

SEED_BODY = {
    "author": "créateur",
    "name": "Heartbeat",
    "description": "Ceci est une description",
    "expected_interval": "1m",
    "output": "Une note personnalisable",
    "pattern": {"connector": "connect", "connector_name": "c01"},
}
INVALID = {"name": "", "description": "invalid heartbeat payload."}
DB_ERROR = {"name": "", "description": "database error, please contact your administrator."}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def service(clock):
    with heartbeat_lite.create_app(db=":memory:", clock=clock) as service:
        yield service


@pytest.fixture
def app(service):
    app = webtest.TestApp(service.wsgi)
    app.authorization = ("Basic", ("root", "root"))
    return app


def body(**changes):
    """The seed's example body with some fields changed (None removes one)."""
    doc = dict(SEED_BODY, **changes)
    return {k: v for k, v in doc.items() if v is not None}


def create(app, doc=None, **kwargs):
    response = app.post_json("/api/v2/heartbeat", doc or body(), **kwargs)
    return response.json["description"]


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
        app = webtest.TestApp(service.wsgi)
        app.authorization = ("Basic", ("alice", "s3cret"))
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
        app_one = webtest.TestApp(one.wsgi)
        app_one.authorization = ("Basic", ("root", "root"))
        app_two = webtest.TestApp(two.wsgi)
        app_two.authorization = ("Basic", ("bob", "pw"))
        create(app_one)
        assert app_two.get("/api/v2/heartbeat").json == []
        app_two.get("/api/v2/heartbeat", extra_environ={"HTTP_AUTHORIZATION": _basic("root", "root")},
                    status=401)


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


def test_an_unexpected_error_is_a_json_500_and_logged(app, service, caplog, monkeypatch):
    def boom():
        raise RuntimeError("kaboom")

    monkeypatch.setattr(service.engine, "list", boom)
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


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ROUTES = [
    ("POST", "/api/v2/heartbeat"),
    ("GET", "/api/v2/heartbeat"),
    ("GET", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"),
    ("DELETE", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"),
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
    app = webtest.TestApp(service.wsgi)
    headers = {"Authorization": authorization} if authorization else {}
    response = app.request(path, method=method, headers=headers, body=json.dumps(SEED_BODY).encode(),
                           expect_errors=True)
    assert response.status_int == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="heartbeat-lite"'
    assert response.json == {"name": "", "description": "authentication required"}
    assert service.engine.list() == []


def test_configured_users_replace_root(clock):
    with heartbeat_lite.create_app(users={"alice": "pw:with:colons", "bob": "b"}, clock=clock) as service:
        app = webtest.TestApp(service.wsgi)
        for user, password, status in [("alice", "pw:with:colons", 200), ("bob", "b", 200),
                                       ("root", "root", 401), ("alice", "b", 401)]:
            app.get("/api/v2/heartbeat", headers={"Authorization": _basic(user, password)}, status=status)


def test_parse_users():
    assert heartbeat_lite.parse_users(["a:b", "c:d:e", "f:"]) == {"a": "b", "c": "d:e", "f": ""}
    for bad in ("nocolon", ":password"):
        with pytest.raises(heartbeat_lite.ConfigError):
            heartbeat_lite.parse_users([bad])


###############################################################################
# Database errors
###############################################################################


@pytest.fixture
def file_service(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock, busy_timeout=0.05) as service:
        app = webtest.TestApp(service.wsgi)
        app.authorization = ("Basic", ("root", "root"))
        service.test_app = app
        yield service


def test_a_held_write_lock_gives_the_database_error_then_service_resumes(file_service, caplog):
    app = file_service.test_app
    kept = create(app)
    other = sqlite3.connect(file_service.store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        response = app.post_json("/api/v2/heartbeat", body(pattern={"k": "v"}), status=400)
        assert response.json == DB_ERROR
        assert "database is locked" in caplog.text
        assert "locked" not in response.text
        response = app.delete(f"/api/v2/heartbeat/{kept}", status=400)
        assert response.json == DB_ERROR
        assert app.get(f"/api/v2/heartbeat/{kept}").status_int == 200  # WAL: reads still served
    finally:
        other.execute("ROLLBACK")
        other.close()
    create(app, body(pattern={"k": "v"}))
    assert len(app.get("/api/v2/heartbeat").json) == 2


def test_a_failing_read_gives_the_database_error(app, service, monkeypatch, caplog):
    monkeypatch.setattr(service.store, "_conn", _BrokenConnection())
    for path in ("/api/v2/heartbeat", "/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93"):
        assert app.get(path, status=400).json == DB_ERROR
    assert "disk I/O error" in caplog.text


class _BrokenConnection:
    def execute(self, *args):
        raise sqlite3.OperationalError("disk I/O error")

    def close(self):
        pass


def test_the_schema_is_versioned(tmp_path):
    path = str(tmp_path / "hb.db")
    heartbeat_lite.create_app(db=path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(heartbeat_lite.ConfigError, match="schema version 99"):
        heartbeat_lite.create_app(db=path)


def test_the_schema_file_matches_the_code():
    with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as f:
        assert f"PRAGMA user_version = {heartbeat_lite.SCHEMA_VERSION};" in f.read()


def test_data_survives_a_restart(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = webtest.TestApp(service.wsgi)
        app.authorization = ("Basic", ("root", "root"))
        heartbeat_id = create(app)
        before = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        assert service.engine.get(heartbeat_id) == before


def test_a_missing_database_directory_is_a_config_error(tmp_path):
    with pytest.raises(heartbeat_lite.ConfigError, match="does not exist"):
        heartbeat_lite.create_app(db=str(tmp_path / "missing" / "hb.db"))
    assert not (tmp_path / "missing").exists()


###############################################################################
# Real server
###############################################################################


def http(method, url, data=None, user="root:root", content_type=None):
    """One request with the standard library; returns (status, headers, parsed body)."""
    request = urllib.request.Request(url, data=data, method=method)
    if user:
        request.add_header("Authorization", _basic(*user.split(":", 1)))
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())


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


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


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
    assert result.returncode == 2 and "--threads" in result.stderr


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
