"""Tests for trust: hostile input and paths, cross-site
requests, log injection, credentials, an honest /healthz."""

import contextlib
import gc
import http.client
import json
import logging
import re
import threading
import time
import tracemalloc

import pytest
import webtest

import heartbeat_lite
from heartbeat_lite import MAX_EVENT_BODY_BYTES
from testing_support import (
    C01,
    DB_ERROR,
    INVALID,
    FakeClock,
    LockHolder,
    _basic,
    body,
    create,
    new_heartbeat,
    run_cli,
)


def raw_request(base, method, path, body=b"", headers=None):
    """One request with the exact path given (no quoting); returns (status, parsed JSON body)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
        for name, value in {"Authorization": _basic("root", "root"), "Content-Length": str(len(body)),
                            **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


###############################################################################
# Input
###############################################################################


LONE_SURROGATE_BODIES = {
    "unknown key": '{"name": "n", "pattern": {"a": "b"}, "expected_interval": "1m", "\\ud800": 1}',
    "name": '{"name": "\\udfff", "pattern": {"a": "b"}, "expected_interval": "1m"}',
    "pattern key": '{"name": "n", "pattern": {"\\uD800x": "b"}, "expected_interval": "1m"}',
    "ignored field, deep": '{"name": "n", "pattern": {"a": "b"}, "expected_interval": "1m", "_id": [[{"x": "\\ud800"}]]}',
    "high then high": '{"name": "\\ud83d\\ud83d", "pattern": {"a": "b"}, "expected_interval": "1m"}',
}


@pytest.mark.parametrize("raw", LONE_SURROGATE_BODIES.values(), ids=LONE_SURROGATE_BODIES.keys())
def test_a_lone_surrogate_anywhere_in_a_heartbeat_is_a_400(app, raw):
    response = app.post("/api/v2/heartbeat", raw.encode(), content_type="application/json", status=400)
    assert {k: response.json[k] for k in ("name", "description")} == INVALID
    assert any("surrogate" in reason for reason in response.json["errors"])
    assert app.get("/api/v2/heartbeat").json == []


def test_a_lone_surrogate_in_an_event_is_a_400_and_changes_nothing(app, service):
    heartbeat_id = create(app)
    raw = json.dumps([C01, {"connector": "x", "deep": {"k": ["\ud800"]}}]).encode()
    response = app.post("/api/v2/event", raw, content_type="application/json", status=400)
    assert response.json["description"] == "invalid event payload."
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["last_event"] is None
    assert service.engine.events_received == 0


def test_a_surrogate_pair_is_text(app):
    heartbeat_id = create(app, body(name="\ud83d\ude00", pattern={"k": "\\ud800 is not an escape here"}))
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["name"] == "\U0001F600"


def test_reasons_quoting_input_stay_encodable():
    reasons = heartbeat_lite.Invalid(["unknown field(s): \ud800"]).reasons
    assert reasons == ["unknown field(s): \\ud800"]
    heartbeat_lite.dump_json(reasons)


@pytest.fixture
def server(service):
    with heartbeat_lite.serve(service, port=0) as base:
        yield base


def test_an_event_body_of_exactly_the_limit_is_accepted_over_http(server, service):
    heartbeat_id = new_heartbeat(service)
    event = dict(C01, padding="")
    event["padding"] = "x" * (MAX_EVENT_BODY_BYTES - len(json.dumps(event, separators=(",", ":"))))
    raw = json.dumps(event, separators=(",", ":")).encode()
    assert len(raw) == MAX_EVENT_BODY_BYTES
    status, answer = raw_request(server, "POST", "/api/v2/event", raw)
    assert (status, answer) == (200, {"received": 1, "matched": [heartbeat_id]})
    # one byte more: refused on its Content-Length (413, waitress' own or ours), body unsent
    status, answer = raw_request(server, "POST", "/api/v2/event", headers={"Content-Length": str(len(raw) + 1)})
    assert status == 413


def test_a_path_that_is_not_utf8_is_not_found_over_http(server, service):
    heartbeat_id = new_heartbeat(service)
    for method in ("DELETE", "GET"):
        status, answer = raw_request(server, method, f"/api/v2/heartbeat/{heartbeat_id}%FF")
        assert (status, answer) == (404, {"name": "", "description": "not found"})
    assert raw_request(server, "GET", "/api/v2/heartbeat/%FF")[0] == 404
    assert raw_request(server, "GET", f"/api/v2/heartbeat/{heartbeat_id}")[0] == 200  # still there


def test_an_encoded_slash_in_an_id_is_not_found_over_http(server, service):
    heartbeat_id = new_heartbeat(service)
    for path in (f"/api/v2/heartbeat/{heartbeat_id}%2Fstatus", f"/api/v2/heartbeat/{heartbeat_id}%2fstatus"):
        assert raw_request(server, "GET", path) == (404, {"name": "", "description": "not found"})
    assert raw_request(server, "DELETE", f"/api/v2/heartbeat%2F{heartbeat_id}")[0] == 404
    assert raw_request(server, "GET", f"/api/v2/heartbeat/{heartbeat_id}/status")[0] == 200


def test_a_path_starting_with_two_slashes_is_not_found_over_http(server, service):
    heartbeat_id = new_heartbeat(service)
    for method, path in (("GET", f"//api/v2/heartbeat/{heartbeat_id}"), ("GET", f"///api/v2/heartbeat/{heartbeat_id}"),
                         ("DELETE", f"//api/v2/heartbeat/{heartbeat_id}"), ("GET", "//healthz")):
        assert raw_request(server, method, path) == (404, {"name": "", "description": "not found"}), path
    assert raw_request(server, "GET", f"/api/v2/heartbeat/{heartbeat_id}")[0] == 200  # still there


def test_an_id_that_is_not_a_canonical_uuid_is_not_found(app):
    heartbeat_id = create(app)
    for other in (heartbeat_id.upper(), heartbeat_id.replace("-", ""), "{%s}" % heartbeat_id):
        response = app.get(f"/api/v2/heartbeat/{other}", status=404)
        assert response.json == {"name": other, "description": "heartbeat not found"}
        app.delete(f"/api/v2/heartbeat/{other}", status=404)
    app.get(f"/api/v2/heartbeat/{heartbeat_id}")


###############################################################################
# Cross-site requests
###############################################################################

CROSS_SITE = {"name": "", "description": "cross-site request refused"}
FOREIGN = {
    "other host": {"Origin": "http://evil.example"},
    "other port": {"Origin": "http://localhost:8080"},
    "other scheme": {"Origin": "https://localhost"},
    "null": {"Origin": "null"},
    "garbage": {"Origin": "::::"},
    "with a path": {"Origin": "http://localhost/x"},
    "sec-fetch-site cross-site": {"Sec-Fetch-Site": "cross-site"},
    "cross-site, same origin": {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
    "same-site but foreign origin": {"Sec-Fetch-Site": "same-site", "Origin": "http://sub.localhost"},
}
OWN = {
    "neither header": {},
    "own origin": {"Origin": "http://localhost"},
    "own origin, explicit port": {"Origin": "HTTP://LOCALHOST:80"},
    "same-origin": {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    "none": {"Sec-Fetch-Site": "none"},
    "same-site, no origin": {"Sec-Fetch-Site": "same-site"},
}


def state_changing_requests(app, heartbeat_id, headers, status):
    """POST, PUT, DELETE and an event, each expecting ``status``; the answers."""
    return [
        app.post_json("/api/v2/heartbeat", body(pattern={"k": "v"}), headers=headers, status=status),
        app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(name="changed"), headers=headers, status=status),
        app.post_json("/api/v2/event", C01, headers=headers, status=status),
        app.delete(f"/api/v2/heartbeat/{heartbeat_id}", headers=headers, status=status),
    ]


@pytest.mark.parametrize("headers", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_cross_site_request_is_refused_and_changes_nothing(app, service, headers):
    heartbeat_id = create(app)
    before = app.get("/api/v2/heartbeat").json
    for response in state_changing_requests(app, heartbeat_id, headers, 403):
        assert response.json == CROSS_SITE
    assert app.get("/api/v2/heartbeat").json == before
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["last_event"] is None
    assert app.get("/api/v2/heartbeat", headers=headers).status_int == 200  # reads are not refused


def test_a_cross_site_request_is_refused_before_authentication(service):
    anonymous = webtest.TestApp(service.wsgi)
    response = anonymous.post("/api/v2/event", b"{}", headers={"Origin": "http://evil.example"}, status=403)
    assert response.json == CROSS_SITE


@pytest.mark.parametrize("headers", OWN.values(), ids=OWN.keys())
def test_same_origin_and_header_less_requests_pass(app, headers):
    heartbeat_id = create(app)
    responses = state_changing_requests(app, heartbeat_id, headers, 200)
    assert [r.json.get("name") for r in responses] == ["heartbeat created", "heartbeat updated", None, "heartbeat removed"]


def test_the_origin_is_compared_with_the_host_header_over_http(server):
    status, answer = raw_request(server, "POST", "/api/v2/event", b"[]", {"Origin": server})
    assert (status, answer) == (200, {"received": 0, "matched": []})
    status, answer = raw_request(server, "POST", "/api/v2/event", b"[]", {"Origin": "http://127.0.0.2:1"})
    assert (status, answer) == (403, CROSS_SITE)


###############################################################################
# DNS rebinding: the default root:root answers loopback Host names only
###############################################################################

MISDIRECTED = {"name": "", "description": "misdirected request: unknown Host"}


def test_a_rebinding_host_gets_421_and_changes_nothing_over_http(server, service):
    # a page from rebind.attacker.example whose name now resolves to
    # 127.0.0.1: Host and Origin are the attacker's own, so same-origin
    port = server.rsplit(":", 1)[1]
    attacker = {"Host": f"rebind.attacker.example:{port}", "Origin": f"http://rebind.attacker.example:{port}"}
    window = json.dumps({"name": "silence", "pattern": {}, "start": "2020-01-01T00:00:00",
                         "end": "2099-01-01T00:00:00"})
    for method, path, payload in (("POST", "/api/v2/heartbeat", json.dumps(body()).encode()),
                                  ("POST", "/api/v2/maintenance", window.encode()),
                                  ("GET", "/api/v2/heartbeat", b""), ("GET", "/healthz", b"")):
        assert raw_request(server, method, path, payload, attacker) == (421, MISDIRECTED), path
    assert raw_request(server, "GET", "/api/v2/heartbeat") == (200, [])  # nothing changed
    assert raw_request(server, "GET", "/api/v2/maintenance") == (200, [])
    assert raw_request(server, "POST", "/api/v2/maintenance", window.encode())[0] == 200  # a valid window
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LocalHost", "127.0.0.1"):
        status, answer = raw_request(server, "POST", "/api/v2/event", b"[]", {"Host": host, "Origin": f"http://{host}"})
        assert (status, answer) == (200, {"received": 0, "matched": []}), host
        assert raw_request(server, "GET", "/api/v2/heartbeat", headers={"Host": host})[0] == 200, host


def test_with_users_configured_any_host_is_answered(clock):
    with heartbeat_lite.create_app(users={"alice": "pw"}, clock=clock) as service:
        app = webtest.TestApp(service.wsgi, extra_environ={"HTTP_HOST": "monitor.example.org:8082"})
        app.get("/api/v2/heartbeat", headers={"Authorization": _basic("alice", "pw")}, status=200)


@pytest.mark.parametrize("host,allowed", [
    ("localhost", True), ("localhost:8082", True), ("LOCALHOST.:1", True), ("127.0.0.1", True),
    ("127.0.0.1:8082", True), ("127.9.9.9:1", True), ("[::1]", True), ("[::1]:8082", True),
    ("rebind.attacker.example", False), ("rebind.attacker.example:8082", False), ("localhost.attacker.example", False),
    ("evil.localhost", False), ("0.0.0.0:8082", False), ("10.0.0.1", False), ("[::1]x", False),
    ("localhost:80x", False), ("", False), ("127.0.0.1@evil.example", False),
])
def test_which_host_names_the_default_credentials_answer(host, allowed):
    assert heartbeat_lite.is_allowed_host(host, heartbeat_lite.allowed_host_names()) is allowed


def test_a_public_url_adds_its_host_to_the_allowed_names():
    names = heartbeat_lite.allowed_host_names("https://Monitor.Example.org:8443/base")
    assert heartbeat_lite.is_allowed_host("monitor.example.org:8443", names)
    assert heartbeat_lite.is_allowed_host("localhost", names)
    assert not heartbeat_lite.is_allowed_host("rebind.attacker.example", names)


###############################################################################
# Logs
###############################################################################

UNSAFE_IN_LOG = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def messages(caplog):
    return [record.getMessage() for record in caplog.records]


def test_log_safe_escapes_controls_and_cuts():
    assert heartbeat_lite.log_safe("a\nb\r\x1b[31m\x00\x7f\x85\u2028\u202e\\") == \
        "a\\nb\\r\\x1b[31m\\x00\\x7f\\x85\\u2028\\u202e\\\\"
    assert heartbeat_lite.log_safe("é ok") == "é ok"
    cut = heartbeat_lite.log_safe("x" * 5000)
    assert cut == "x" * heartbeat_lite.MAX_LOGGED_CHARS + "...[cut, 5000 chars]"


def test_a_hostile_request_path_cannot_forge_log_lines(app, caplog):
    with caplog.at_level(logging.INFO):
        app.get("/api/v2/x%0A2020-01-01 INFO forged%1B[31m%E2%80%A8?q=%0D%0A" + "y" * 3000, status=404)
    [line] = [record.getMessage() for record in caplog.records if record.name == "heartbeat_lite.access"]
    assert not UNSAFE_IN_LOG.search(line)
    assert "/api/v2/x\\n2020-01-01 INFO forged\\x1b[31m" in line
    assert "...[cut, " in line and len(line) < heartbeat_lite.MAX_LOGGED_CHARS + 100


def test_hostile_names_and_pattern_values_cannot_forge_log_lines(app, service, clock, caplog):
    name = "evil\n2020-01-01 WARNING forged\x1b[31m\u2028"
    with caplog.at_level(logging.INFO):
        heartbeat_id = create(app, body(name=name, pattern={"k\x1b": "v\r\nforged\x85"}, expected_interval="1s"))
        clock.advance(2)
        service.tick()  # the alarm line, with the resource built from the pattern
        app.post_json("/api/v2/event", {"k\x1b": "v\r\nforged\x85"})  # resolved
        app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(name=name, pattern={"k": "\u202e"}))
        app.delete(f"/api/v2/heartbeat/{heartbeat_id}")
    lines = [r.getMessage() for r in caplog.records if r.name == "heartbeat_lite" and heartbeat_id in r.getMessage()]
    assert [line.split(" ", 1)[0] for line in lines] == ["heartbeat", "alarm:", "resolved:", "heartbeat", "heartbeat"]
    for line in lines:
        assert not UNSAFE_IN_LOG.search(line), line
        assert "evil\\n2020-01-01 WARNING forged\\x1b[31m\\u2028" in line
    assert "k\\x1b:v\\r\\nforged\\x85" in lines[1]


###############################################################################
# Credentials
###############################################################################


def hashed_users(**passwords):
    return {name: str(heartbeat_lite.PasswordHash.create(password, 1000)) for name, password in passwords.items()}


def from_address(service, address):
    return webtest.TestApp(service.wsgi, extra_environ={"REMOTE_ADDR": address})


def test_a_guessing_flood_from_one_address_does_not_lock_out_another(counted_derivations):
    with heartbeat_lite.create_app(users=hashed_users(alice="pw")) as service:
        attacker, operator = from_address(service, "10.0.0.1"), from_address(service, "10.0.0.2")
        guess = {"Authorization": _basic("alice", "guess")}
        for _ in range(heartbeat_lite.AUTH_FAILURE_BURST):
            attacker.get("/api/v2/heartbeat", headers=guess, status=401)
        for _ in range(50):
            attacker.get("/api/v2/heartbeat", headers=guess, status=429)
        assert len(counted_derivations) == heartbeat_lite.AUTH_FAILURE_BURST  # refused ones cost nothing
        operator.get("/api/v2/heartbeat", headers={"Authorization": _basic("alice", "pw")}, status=200)
        operator.get("/api/v2/heartbeat", headers={"Authorization": _basic("alice", "typo")}, status=401)


def test_addresses_that_failed_share_one_budget_and_a_new_one_costs_one_derivation(counted_derivations):
    clock = FakeClock(0)
    auth = heartbeat_lite.Authenticator(hashed_users(alice="pw"), clock=clock)
    guess = _basic("alice", "guess")
    addresses = [f"10.1.{n // 256}.{n % 256}" for n in range(200)]
    for address in addresses:  # an address that has not failed is never refused: one derivation each
        assert auth.user(guess, address) is None
    assert len(counted_derivations) == 200
    for address in addresses:  # now they have: the global budget (which they spent) refuses them all
        with pytest.raises(heartbeat_lite.Throttled):
            auth.user(guess, address)
    assert len(counted_derivations) == 200
    clock.advance(10)  # 2 a second refill the global budget: 20 derivations for all of them together
    for n, address in enumerate(addresses):
        with pytest.raises(heartbeat_lite.Throttled) if n >= 10 * heartbeat_lite.AUTH_GLOBAL_FAILURES_PER_SECOND \
                else contextlib.nullcontext():
            auth.user(guess, address)
    assert len(counted_derivations) == 200 + 10 * heartbeat_lite.AUTH_GLOBAL_FAILURES_PER_SECOND
    assert auth.user(_basic("alice", "pw"), "10.9.9.9") == "alice"  # and a new address still gets in


def test_an_ipv6_client_is_budgeted_by_its_64(counted_derivations):
    auth = heartbeat_lite.Authenticator(hashed_users(alice="pw"), clock=FakeClock(0))
    for n in range(heartbeat_lite.AUTH_FAILURE_BURST):  # a new address of the same /64 each time
        assert auth.user(_basic("alice", "guess"), f"2001:db8:1:2::{n + 1:x}") is None
    with pytest.raises(heartbeat_lite.Throttled):
        auth.user(_basic("alice", "guess"), "2001:db8:1:2:ffff::9")
    assert auth.user(_basic("alice", "pw"), "2001:db8:1:3::1") == "alice"  # another /64
    assert heartbeat_lite.source_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert heartbeat_lite.source_key("fe80::1%eth0") == "fe80::/64"


def test_eight_addresses_flooding_wrong_passwords_do_not_lock_out_a_new_one_over_http(counted_derivations):
    # each flooding address fails once, then shares the global budget with
    # the others; the operator's address has not failed: it is never refused
    with heartbeat_lite.create_app(users=hashed_users(alice="pw")) as service, \
            heartbeat_lite.serve(service, port=0) as base:
        port = int(base.rsplit(":", 1)[1])

        def get(source, password):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
            try:
                conn.request("GET", "/api/v2/heartbeat", headers={"Authorization": _basic("alice", password)})
                return conn.getresponse().status
            finally:
                conn.close()

        stop, statuses = threading.Event(), []

        def flood(source):
            while not stop.is_set():
                statuses.append(get(source, "guess"))

        flooders = [threading.Thread(target=flood, args=(f"127.0.0.{n}",)) for n in range(2, 10)]
        started = time.monotonic()
        for thread in flooders:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while statuses.count(429) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert statuses.count(429) >= 50  # the flood is throttled
            assert get("127.0.0.10", "pw") == 200  # correct credentials from a new address
            assert get("127.0.0.11", "typo") == 401  # a wrong one from a new address is checked, not refused
        finally:
            stop.set()
            for thread in flooders:
                thread.join()
        elapsed = time.monotonic() - started
        budget = 10 + heartbeat_lite.AUTH_GLOBAL_FAILURE_BURST + heartbeat_lite.AUTH_GLOBAL_FAILURES_PER_SECOND * elapsed
        assert len(counted_derivations) <= budget + 1, (len(counted_derivations), elapsed)


def test_the_source_table_is_bounded(monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "AUTH_SOURCES_TRACKED", 3)
    auth = heartbeat_lite.Authenticator(hashed_users(alice="pw"), clock=FakeClock(0))
    for n in range(10):
        auth.user(_basic("alice", "guess"), f"10.0.0.{n}")
    assert list(auth._sources) == ["10.0.0.7", "10.0.0.8", "10.0.0.9"]


def test_an_unknown_name_costs_a_derivation_and_gets_the_same_answer(counted_derivations):
    users = {**hashed_users(alice="pw"), "bob": "plain"}
    with heartbeat_lite.create_app(users=users) as service:
        app = webtest.TestApp(service.wsgi)
        answers = []
        for name in ("alice", "mallory"):
            before = len(counted_derivations)
            response = app.get("/api/v2/heartbeat", headers={"Authorization": _basic(name, "guess")}, status=401)
            assert len(counted_derivations) == before + 1, name
            answers.append((response.headers["WWW-Authenticate"], response.body))
        assert answers[0] == answers[1]
        decoy = service.web.auth._decoy_hash
        assert decoy.iterations == heartbeat_lite.PasswordHash.parse(users["alice"]).iterations
        for _ in range(heartbeat_lite.AUTH_FAILURE_BURST):  # unknown names spend the budget too
            app.get("/api/v2/heartbeat", headers={"Authorization": _basic("mallory", "x")}, status=(401, 429))
        app.get("/api/v2/heartbeat", headers={"Authorization": _basic("mallory", "x")}, status=429)


def test_without_hashed_users_an_unknown_name_costs_no_derivation(counted_derivations, app):
    app.get("/api/v2/heartbeat", headers={"Authorization": _basic("mallory", "root")}, status=401)
    assert counted_derivations == []


def test_create_app_refuses_an_empty_password():
    with pytest.raises(heartbeat_lite.ConfigError, match="empty password"):
        heartbeat_lite.create_app(users={"a": ""})


@pytest.mark.parametrize("source", ["--user", "HEARTBEAT_LITE_USERS", "--users-file"])
def test_an_empty_password_exits_2_from_every_source(tmp_path, source):
    args, env = ["--port", "0", "--db", str(tmp_path / "hb.db")], {}
    if source == "--user":
        args += ["--user", "alice:"]
    elif source == "HEARTBEAT_LITE_USERS":
        env["HEARTBEAT_LITE_USERS"] = "bob:b,alice:"
    else:
        users_file = tmp_path / "users"
        users_file.write_text("bob:b\nalice:\n")
        args += ["--users-file", str(users_file)]
    result = run_cli(*args, env=env)
    assert result.returncode == 2 and "empty password for user alice" in result.stderr
    assert not (tmp_path / "hb.db").exists()


###############################################################################
# Memory: the recent events are bounded by bytes
###############################################################################


def pairs_event(heartbeat, size=4000):
    """An event of about ``size`` bytes of JSON, all ``{}`` pairs: ~89 KB
    each as Python dicts."""
    event = {"hb": heartbeat}
    for n in range((size - 20) // 12):
        event[f"p{n:03d}"] = {}
    return event


def retained_by(action):
    """Bytes Python still holds (tracemalloc) once ``action()`` returned."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_kept_events_cost_at_most_the_documented_bytes_each(app, service, clock):
    # 4 KB events of {} pairs cost ~89 KB each as dicts: 5,000 heartbeats'
    # lists of 20 were ~8.7 GB. Kept as their JSON, each costs at most
    # MAX_KEPT_EVENT_BYTES, and a list KEPT_LIST_OVERHEAD_BYTES more.
    heartbeats = 25
    ids = [create(app, body(pattern={"hb": str(n)})) for n in range(heartbeats)]
    assert len(json.dumps(pairs_event("0"))) < heartbeat_lite.MAX_SHOWN_EVENT_BYTES  # kept whole, not cut

    def rounds():
        for _ in range(heartbeat_lite.RECENT_EVENTS_PER_HEARTBEAT + 2):
            clock.advance(1)  # each round's refresh is written, so its event recorded
            for n in range(heartbeats):
                app.post("/api/v2/event", json.dumps(pairs_event(str(n))).encode(), content_type="application/json")

    retained = retained_by(rounds)
    lists, bodies = service.engine.recent.kept_bytes()
    kept = heartbeats * heartbeat_lite.RECENT_EVENTS_PER_HEARTBEAT
    assert lists <= heartbeats * heartbeat_lite.KEPT_LIST_OVERHEAD_BYTES + kept * heartbeat_lite.MAX_KEPT_EVENT_BYTES
    assert bodies <= heartbeat_lite.RECENT_RECEIVED_MAX_BYTES
    assert retained <= lists + bodies + 256 * 1024, (retained, lists, bodies)  # and a little for the rest
    events = app.get(f"/api/v2/heartbeat/{ids[0]}/events").json["events"]
    assert len(events) == heartbeat_lite.RECENT_EVENTS_PER_HEARTBEAT and events[0]["event"] == pairs_event("0")


def test_the_kept_events_of_every_heartbeat_together_stay_within_their_bound(app, service, clock, monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "RECENT_EVENTS_MAX_BYTES", 256 * 1024)
    ids = [create(app, body(pattern={"hb": str(n)})) for n in range(30)]

    def rounds():
        for _ in range(5):
            clock.advance(1)
            for n in range(30):
                app.post("/api/v2/event", json.dumps(pairs_event(str(n))).encode(), content_type="application/json")

    retained = retained_by(rounds)
    lists, bodies = service.engine.recent.kept_bytes()
    assert lists <= 256 * 1024 and retained <= 256 * 1024 + bodies + 256 * 1024, (retained, lists, bodies)
    kept = [heartbeat_id for heartbeat_id in ids if app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]]
    assert 0 < len(kept) < 30 and ids[-1] in kept  # the oldest lists went, the newest stayed
    assert heartbeat_lite.RecentEvents().kept_bytes() == (0, 0)


###############################################################################
# Health
###############################################################################


def test_health_is_503_with_the_reason_while_writes_fail_then_200_after_one_succeeds(app, service):
    heartbeat_id = create(app)

    def writes_fail(sql, params):
        if not sql.startswith("SELECT"):
            raise heartbeat_lite.sqlite3.OperationalError("database or disk is full")

    service.store.statement_hook = writes_fail
    assert app.get("/healthz").json == {"status": "ok", "outbox": 0}  # no write has failed yet
    assert app.post_json("/api/v2/event", C01, status=400).json == DB_ERROR
    health = app.get("/healthz", status=503).json
    assert health["status"] == "unavailable"
    assert health["description"] == "database writes fail: database or disk is full"
    assert health["since"] == pytest.approx(time.time(), abs=5)
    app.get(f"/api/v2/heartbeat/{heartbeat_id}")  # reads still served
    service.store.statement_hook = None
    assert app.get("/healthz", status=503).json["status"] == "unavailable"  # until a write succeeds
    service.tick()
    assert app.get("/healthz").json == {"status": "ok", "outbox": 0}


@pytest.mark.sqlite_only("holds SQLite's file write lock")
def test_health_and_reads_from_memory_answer_while_a_write_waits_on_another_process(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    busy_timeout = 1.5
    with heartbeat_lite.create_app(db=path, clock=clock, busy_timeout=busy_timeout) as service, \
            heartbeat_lite.serve(service, port=0) as base:
        heartbeat_id = new_heartbeat(service)
        holder = LockHolder(path)
        try:
            writing = threading.Event()
            service.store.statement_hook = lambda sql, params: sql.startswith(("BEGIN", "UPDATE")) and writing.set()
            answers = []
            writer = threading.Thread(target=lambda: answers.append(
                raw_request(base, "POST", "/api/v2/event", json.dumps(C01).encode())))
            writer.start()
            assert writing.wait(10)
            started = time.monotonic()
            assert raw_request(base, "GET", "/healthz") == (200, {"status": "ok", "outbox": 0})
            status, document = raw_request(base, "GET", f"/api/v2/heartbeat/{heartbeat_id}")
            assert status == 200 and document["_id"] == heartbeat_id
            assert time.monotonic() - started < 1.0
            assert writer.is_alive()  # the write still waits
            writer.join(30)
            assert answers == [(400, DB_ERROR)]
            status, health = raw_request(base, "GET", "/healthz")
            assert status == 503 and health["description"] == "database writes fail: database is locked"
        finally:
            holder.release()
        status, answer = raw_request(base, "POST", "/api/v2/event", json.dumps(C01).encode())
        assert (status, answer["matched"]) == (200, [heartbeat_id])
        assert raw_request(base, "GET", "/healthz") == (200, {"status": "ok", "outbox": 0})


@pytest.mark.sqlite_only("another process holds SQLite's write lock")
def test_writes_waiting_on_another_process_do_not_take_every_worker_thread(tmp_path, clock):
    """Six events for pending heartbeats (each a write) while another
    process holds the write lock: one waits for the database, one in line,
    the others get the database error at once; the worker threads stay
    free for reads from memory and /healthz."""
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock, busy_timeout=4.0) as service, \
            heartbeat_lite.serve(service, port=0, threads=4) as base:
        ids = [new_heartbeat(service, pattern={"k": str(i)}) for i in range(6)]
        holder = LockHolder(path)
        try:
            writing = threading.Event()
            service.store.statement_hook = lambda sql, params: sql.startswith("BEGIN") and writing.set()
            answers = []
            writers = [threading.Thread(target=lambda i=i: answers.append(
                raw_request(base, "POST", "/api/v2/event", json.dumps({"k": str(i)}).encode()))) for i in range(6)]
            for writer in writers:
                writer.start()
            assert writing.wait(10)
            time.sleep(0.2)  # every event is in by now, each on a worker thread or queued for one
            started = time.monotonic()
            assert raw_request(base, "GET", "/healthz")[0] == 200
            status, document = raw_request(base, "GET", f"/api/v2/heartbeat/{ids[0]}")
            assert status == 200 and document["_id"] == ids[0]
            assert time.monotonic() - started < 1.0
            for writer in writers:
                writer.join(30)
            assert answers == [(400, DB_ERROR)] * 6
        finally:
            holder.release()
        status, answer = raw_request(base, "POST", "/api/v2/event", json.dumps({"k": "0"}).encode())
        assert (status, answer["matched"]) == (200, [ids[0]])


def test_the_engine_lock_lets_one_request_wait_in_line_while_its_holder_is_stuck():
    stuck = threading.Event()
    lock = heartbeat_lite.EngineLock(stuck.is_set, wait_seconds=5.0)
    held, release = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    outcomes = []

    def request():
        try:
            with lock.bounded():
                outcomes.append("served")
        except heartbeat_lite.DatabaseBusy:
            outcomes.append("busy")

    waiting = [threading.Thread(target=request) for _ in range(3)]
    for waiter in waiting:
        waiter.start()
    time.sleep(0.2)
    assert outcomes == []  # not stuck: they wait
    stuck.set()
    deadline = time.monotonic() + 5
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes == ["busy", "busy"]  # one waits in line, the others give up at once
    release.set()
    for waiter in (thread, *waiting):
        waiter.join(5)
    assert outcomes == ["busy", "busy", "served"]
