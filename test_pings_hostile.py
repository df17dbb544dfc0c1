"""The ping routes (docs/pings.md) under attack: a hostile client or a careless
operator, against a real server on port 0 where the fault lives in HTTP
(docs/security.md). The ordinary behaviour of pings is test_pings.py's.
"""

import http.client
import logging
import socket
import sqlite3
import threading
import time
import urllib.parse

import pytest

import heartbeat_lite
from testing_support import client, new_heartbeat

PING_KEY = "k3y-0f-the-slug-form"
PUSH_TOKEN = "kuma-push-t0ken"


@pytest.fixture
def keyed(clock, alarms_seen):
    with heartbeat_lite.create_app(db=":memory:", clock=clock, on_alarm=alarms_seen.append,
                                   ping_key=PING_KEY, genie_key="g3nie-key") as service:
        yield service


def get(base, path, method="GET", body=None):
    """One request on a fresh connection: ``(status, body bytes)``."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


# -- secrets in logs ---------------------------------------------------------------


def test_the_ping_key_and_push_tokens_never_reach_the_log(keyed, caplog, monkeypatch):
    """The access log (and a failure's error line) showed
    ``GET /ping/<ping-key>/<slug>`` and ``/api/push/<push_token>`` in full:
    anyone reading the log could ping (and ``?create=1``) every slug."""
    with caplog.at_level(logging.INFO), heartbeat_lite.serve(keyed, port=0) as base:
        assert get(base, f"/ping/{PING_KEY}/backup")[0] == 404
        assert get(base, f"/ping/{PING_KEY}/backup/fail?rid=x")[0] == 404
        assert get(base, f"//ping/{PING_KEY}/backup")[0] == 404
        assert get(base, f"/ping/{PING_KEY}")[0] == 404  # the slug forgotten
        assert get(base, f"/api/push/{PUSH_TOKEN}?status=down&msg=x")[0] == 404
        assert get(base, f"/api/push/{PUSH_TOKEN}/")[0] == 404
        monkeypatch.setattr(keyed.engine.pings, "by_slug", lambda slug: 1 / 0)
        assert get(base, f"/ping/{PING_KEY}/backup")[0] == 500
    lines = [record.getMessage() for record in caplog.records]
    access = [line for line in lines if "/ping/" in line or "/api/push/" in line]
    assert len(access) >= 7
    assert not [line for line in lines if PING_KEY in line or PUSH_TOKEN in line]
    assert any("/ping/***/backup/fail?rid=x" in line for line in access)
    assert any("/api/push/***?status=down" in line for line in access)


def test_a_ping_by_id_is_logged_as_it_came(service, caplog):
    """The id is no secret to hide from the log: every alarm line shows it."""
    heartbeat_id = new_heartbeat(service)
    with caplog.at_level(logging.INFO), heartbeat_lite.serve(service, port=0) as base:
        assert get(base, f"/ping/{heartbeat_id}/start")[0] == 200
    assert any(f"/ping/{heartbeat_id}/start" in record.getMessage() for record in caplog.records)


def test_redact_path_hides_what_a_ping_path_holds_secret():
    redact = heartbeat_lite.redact_path
    heartbeat_id = "63518bd6-4fcc-49a1-8f68-57ec817f867d"
    assert redact(f"/ping/{heartbeat_id}/fail") == f"/ping/{heartbeat_id}/fail"
    assert redact("/ping/key/slug/start") == "/ping/***/slug/start"
    assert redact("//ping//key") == "//ping//***"
    assert redact("/api/push/tok") == "/api/push/***"
    assert redact("/api/v2/heartbeat/x") == "/api/v2/heartbeat/x"


# -- memory from unauthenticated input ---------------------------------------------


def test_a_flood_of_start_pings_keeps_the_overrun_bookkeeping_bounded(service, clock, alarms_seen):
    """Each /start of a heartbeat with a max_run added an entry to the
    overrun heap that only its deadline (here 8,000 h away) took out: 20,000
    starts of one rid held 20,000 entries (~300 bytes each, 3,000 starts a
    second over one connection). Now the heap holds about the open runs."""
    heartbeat_id = new_heartbeat(service, max_run="8000h")
    anonymous = client(service, user=None)
    for n in range(3 * heartbeat_lite.OVERRUN_HEAP_SLACK):
        anonymous.get(f"/ping/{heartbeat_id}/start")
        clock.advance(0.001 if n % 2 else 0)  # two starts at one instant are one run
    assert len(service.engine.pings._overruns) <= heartbeat_lite.OVERRUN_HEAP_SLACK + 2
    anonymous.get(f"/ping/{heartbeat_id}/start?rid=0b3e2c8a-1f6e-4c1e-9a70-7a7f0f3c2d11")
    clock.advance(8000 * 3600 + 1)
    service.tick()
    assert service.engine.status(heartbeat_id)["status"] == "down"
    assert [event["state"] for event in alarms_seen] == [3]
    assert service.engine.pings.next_overrun() is None


# -- protocol edges ----------------------------------------------------------------


@pytest.mark.parametrize("digits", ["1" * 5000, "0" * 5000, "0" * 4999 + "7"], ids=["ones", "zeros", "seven"])
def test_an_exit_status_of_thousands_of_digits_is_no_internal_error(service, caplog, digits):
    """``int()`` refuses more than 4,300 digits (ValueError): such an exit
    status was a 500 and a traceback in the log, for anyone, on any id."""
    heartbeat_id = new_heartbeat(service)
    expected = (200, b"OK") if digits.lstrip("0") in ("", "7") else (400, b"invalid url format")
    with caplog.at_level(logging.INFO), heartbeat_lite.serve(service, port=0) as base:
        assert get(base, f"/ping/{heartbeat_id}/{digits}") == expected
        assert get(base, f"/ping/00000000-0000-4000-8000-000000000000/{digits}") == (404, b"not found")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_exit_statuses_are_read_as_healthchecks_reads_them(service):
    parse = heartbeat_lite.parse_ping_path
    heartbeat_id = "63518bd6-4fcc-49a1-8f68-57ec817f867d"
    assert parse(f"{heartbeat_id}/007") == (heartbeat_id, None, "fail", 7)
    assert parse(f"{heartbeat_id}/000") == (heartbeat_id, None, "success", 0)
    assert parse(f"{heartbeat_id}/256")[3] > heartbeat_lite.MAX_EXIT_STATUS
    assert parse(f"{heartbeat_id}/{'9' * 5000}")[3] > heartbeat_lite.MAX_EXIT_STATUS
    assert parse(f"{heartbeat_id}/-1") is None


def test_a_content_length_of_thousands_of_digits_is_a_bad_request(service, caplog):
    """waitress reads Content-Length with int(), which refuses over 4,300
    digits: the ValueError escaped its parser, the connection was dropped
    with no answer and an ERROR line logged, for anyone, on any path."""
    heartbeat_id = new_heartbeat(service)
    with caplog.at_level(logging.INFO), heartbeat_lite.serve(service, port=0) as base:
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(f"POST /ping/{heartbeat_id}/fail HTTP/1.1\r\nHost: localhost\r\n"
                         f"Content-Length: {'1' * 5000}\r\n\r\n".encode())
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received[:100]
        assert get(base, "/healthz")[0] == 200
    assert service.engine.status(heartbeat_id)["status"] != "down"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


# -- operator mistakes -------------------------------------------------------------


@pytest.mark.parametrize("key", ["k3y.with.dots", "base64+key/=", "key!", "0b3e2c8a-1f6e-4c1e-9a70-7a7f0f3c2d11"])
def test_a_ping_key_no_ping_url_can_hold_is_refused_at_start(key):
    """A key outside Healthchecks' slug alphabet (``[-a-zA-Z0-9_]``, as its
    URL converter) or shaped like a heartbeat's id passed the settings check,
    and then every slug ping answered 404 not found: the service started,
    and no ping by slug ever reached a heartbeat."""
    parser = heartbeat_lite.build_parser()
    with pytest.raises(heartbeat_lite.ConfigError, match="^--ping-key: "):
        heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:", "--ping-key", key]), {})
    with pytest.raises(heartbeat_lite.ConfigError, match="^HEARTBEAT_LITE_PING_KEY: "):
        heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:"]), {"HEARTBEAT_LITE_PING_KEY": key})
    args = heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:", "--genie-key", key]), {})
    assert args.genie_key == key  # a header's value: any printable key


def test_every_ping_key_the_settings_take_pings_by_slug(clock):
    key = "Az09-_" * 40  # the longest: 240 characters
    parser = heartbeat_lite.build_parser()
    assert heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:", "--ping-key", key]), {}).ping_key == key
    with heartbeat_lite.create_app(clock=clock, ping_key=key) as service:
        new_heartbeat(service, slug="backup")
        assert client(service, user=None).get(f"/ping/{key}/backup").text == "OK"


# -- races -------------------------------------------------------------------------


def test_a_create_that_loses_the_race_for_its_slug_is_an_ordinary_ping(keyed, monkeypatch):
    """Two jobs pinging a new slug with ?create=1 at once: both find no
    heartbeat, one creates it, the other's creation finds the pattern
    ``{"ping": slug}`` taken, by the very heartbeat of that slug, and
    answered ``409 ambiguous slug`` (40 concurrent requests over real HTTP:
    2 such 409s), so curl -f failed and that ping was lost."""
    anonymous = client(keyed, user=None)
    found = keyed.engine.pings.by_slug
    checked = []

    def created_meanwhile(slug, blocking=True):  # the other request creates it between the look-up and the creation
        if not checked:
            checked.append(slug)
            keyed.engine.pings.create(slug)
            return None
        return found(slug, blocking)

    monkeypatch.setattr(keyed.engine.pings, "by_slug", created_meanwhile)
    answer = anonymous.get(f"/ping/{PING_KEY}/racey?create=1", expect_errors=True)
    assert (answer.status_int, answer.text) == (200, "OK")
    [heartbeat] = [doc for doc in client(keyed).get("/api/v2/heartbeat").json if doc.get("slug") == "racey"]
    assert client(keyed).get(f"/api/v2/heartbeat/{heartbeat['_id']}/events").json["events"]


def test_a_slug_whose_pattern_another_heartbeat_has_is_still_ambiguous(keyed):
    new_heartbeat(keyed, pattern={"ping": "taken"})
    answer = client(keyed, user=None).get(f"/ping/{PING_KEY}/taken?create=1", expect_errors=True)
    assert (answer.status_int, answer.text) == (409, "ambiguous slug")


def test_concurrent_creates_of_one_slug_make_one_heartbeat_and_no_error(keyed):
    with heartbeat_lite.serve(keyed, port=0, threads=8) as base:
        answers = []

        def ping():
            answers.append(get(base, f"/ping/{PING_KEY}/crowd?create=1"))

        threads = [threading.Thread(target=ping) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(set(answers)) == [(200, b"OK"), (201, b"Created")] and answers.count((201, b"Created")) == 1
    assert [doc.get("slug") for doc in client(keyed).get("/api/v2/heartbeat").json] == ["crowd"]


# -- what the log says -------------------------------------------------------------


def test_the_alarm_line_of_a_failure_says_the_job_s_words_escaped(service, clock, caplog):
    """A failure ping's alarm was logged ``is down: no matching event for
    <resource>``: the job did report, that it failed. The line now says its
    words (the first line of the body, escaped: no forged line)."""
    heartbeat_id = new_heartbeat(service, name="backup", pattern={"job": "backup"}, expected_interval="1h",
                                 max_run="1m")
    with caplog.at_level(logging.INFO), heartbeat_lite.serve(service, port=0) as base:
        assert get(base, f"/ping/{heartbeat_id}/3", "POST", b"disk full\x1b[31m\r\n2026 WARNING forged") == (200, b"OK")
        assert get(base, f"/ping/{heartbeat_id}")[0] == 200
        assert get(base, f"/ping/{heartbeat_id}/start")[0] == 200
        clock.advance(61)
        service.tick()
    alarms = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alarm: ")]
    assert alarms == [f"alarm: heartbeat {heartbeat_id} ('backup') is down: exit status 3: disk full\\x1b[31m",
                      f"alarm: heartbeat {heartbeat_id} ('backup') is down: run exceeded 1m"]


def test_an_expired_heartbeat_s_alarm_line_is_as_it_was(service, clock, caplog):
    heartbeat_id = new_heartbeat(service, name="backup", pattern={"job": "backup"}, expected_interval="1m")
    with caplog.at_level(logging.INFO):
        clock.advance(61)
        service.tick()
    assert f"alarm: heartbeat {heartbeat_id} ('backup') is down: no matching event for job:backup" in [
        record.getMessage() for record in caplog.records]


@pytest.mark.sqlite_only("changes a row with sqlite3 behind the service, as a lost zone would")
def test_a_schedule_whose_zone_the_system_lost_still_takes_pings_and_events(restart, clock, caplog):
    """A zone valid when the heartbeat was made may be gone after an
    upgrade (tzdata drops names: US/Pacific-New in 2020b). Every ping to
    that heartbeat was a 500, every event batch matching it a 500 for all
    the heartbeats it matched, and it went down with its job still pinging;
    then the tick itself raised on its alarm's reason: no heartbeat at all
    went down any more. Its schedule is now read in UTC, and the log says
    so at start."""
    with restart() as service:
        heartbeat_id = new_heartbeat(service, pattern={"job": "lost-zone"}, schedule="*/5 * * * *",
                                     tz="Europe/Paris", expected_interval="1h")
        other = new_heartbeat(service, pattern={"job": "other"}, expected_interval="1h")
    with sqlite3.connect(restart.path) as connection:
        connection.execute("UPDATE heartbeat SET tz = 'Gone/Zone' WHERE id = ?", (heartbeat_id,))
    with caplog.at_level(logging.WARNING), restart() as service:
        assert client(service, user=None).get(f"/ping/{heartbeat_id}").text == "OK"
        answer = client(service).post_json("/api/v2/event", [{"job": "lost-zone"}, {"job": "other"}])
        assert sorted(answer.json["matched"]) == sorted([heartbeat_id, other])
        assert service.engine.status(heartbeat_id)["status"] == "up"
        clock.advance(3 * 3600)
        service.tick()
        assert [service.engine.status(h)["status"] for h in (heartbeat_id, other)] == ["down", "down"]
        [last] = client(service).get(f"/api/v2/heartbeat/{heartbeat_id}/history?limit=1").json["history"]
        assert last["reason"].endswith(" UTC"), last
    assert any("time zone 'Gone/Zone' is unknown" in record.getMessage() for record in caplog.records)


def test_pings_taken_at_once_by_many_threads_are_each_counted(service, monkeypatch):
    # Pings are counted after the engine's lock (not before a ping the event
    # loop hands to a worker is taken), by the loop and the workers at once:
    # a ``+=`` that a thread switch cut between its read and its write lost
    # a count of heartbeat_lite_pings_received_total. The switch is forced
    # here at the read; CPython may make it at any instruction.
    heartbeat_id = new_heartbeat(service)
    pings = service.engine.pings

    class SwitchingCounts(dict):
        def __getitem__(self, key):
            value = super().__getitem__(key)
            time.sleep(0.001)  # another thread runs here
            return value

    monkeypatch.setattr(pings, "counts", SwitchingCounts(pings.counts))

    def pinging(kind):
        for _ in range(25):
            pings.ping(heartbeat_id, kind, "GET", "127.0.0.1")

    threads = [threading.Thread(target=pinging, args=(kind,)) for kind in ("success", "success", "log", "log")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert dict(pings.counts) == {"success": 50, "start": 0, "fail": 0, "log": 50}
