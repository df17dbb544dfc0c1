"""Pings (docs/pings.md): Healthchecks' ping URLs, failures, runs, Opsgenie's and
Uptime Kuma's routes, --pings off; over HTTP (webtest, and a real server on
port 0), with the fake clock for runs. The answers are checked against those
a real Healthchecks server gave (fixtures/healthchecks/).
"""

import logging
import os
import re
import sqlite3
import urllib.error
import urllib.request

import pytest

import heartbeat_lite
from testing_support import (Recorder, client, described_answer, lookup, new_heartbeat, parse_prometheus, pointer,
                             schema_errors)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "healthchecks")
FIXTURE_ID = "a73e26e5-b576-480d-9ce5-db7b6524b07f"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
RID = "0b3e2c8a-1f6e-4c1e-9a70-7a7f0f3c2d11"


def recorded_answers():
    """The answers of ping-answers.txt: ``[(method, path, status, headers, body)]``."""
    with open(os.path.join(FIXTURES, "ping-answers.txt"), encoding="utf-8") as file:
        text = file.read()
    answers = []
    for section in text.split("### ")[1:]:
        head, _, rest = section.partition("\n")
        method, path = head.split(" ", 1)
        status_line, _, rest = rest.partition("\n")
        header_text, _, body = rest.partition("\n\n")
        headers = dict(line.split(": ", 1) for line in header_text.splitlines())
        answers.append((method, path, int(status_line.split()[1]), headers, body.rstrip("\n")))
    return answers


@pytest.fixture
def anonymous(service):
    """A client without credentials: pings need none."""
    return client(service, user=None)


@pytest.fixture
def job(service):
    return new_heartbeat(service, name="nightly backup", pattern={"job": "backup"}, expected_interval="1h")


def events_of(app, heartbeat_id):
    return [item["event"] for item in app.get(f"/api/v2/heartbeat/{heartbeat_id}/events").json["events"]]


def status_of(service, heartbeat_id):
    return service.engine.status(heartbeat_id)["status"]


def history_of(app, heartbeat_id):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"]


# -- Healthchecks' answers ------------------------------------------------------


def test_the_recorded_ping_answers_of_a_healthchecks_server_are_there():
    paths = [path for _, path, _, _, _ in recorded_answers()]
    assert len(paths) == 18 and f"/ping/{FIXTURE_ID}/256" in paths


def test_every_ping_by_id_answers_as_the_recorded_healthchecks_server(anonymous, job):
    replayed = 0
    for method, path, status, headers, text in recorded_answers():
        if not path.startswith((f"/ping/{FIXTURE_ID}", f"/ping/{UNKNOWN_ID}")):
            continue
        answer = anonymous.request(path.replace(FIXTURE_ID, job), method=method, expect_errors=True)
        assert answer.status_int == status, (method, path)
        assert answer.body == (b"" if method == "HEAD" else text.encode()), (method, path)
        assert answer.headers["Content-Length"] == headers["Content-Length"], (method, path)
        for name in ("Ping-Body-Limit", "Access-Control-Allow-Origin", "Cache-Control"):
            assert answer.headers.get(name) == headers.get(name), (method, path, name)
        # docs/pings.md: text/plain (Healthchecks says text/html for the same two bytes)
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        replayed += 1
    assert replayed == 11


@pytest.mark.parametrize("suffix", ["/foo", "/start/1", "/-1", "/1.5", "/%C2%B2"])
def test_a_path_that_is_no_ping_url_is_not_found_in_text(anonymous, job, suffix):
    answer = anonymous.get(f"/ping/{job}{suffix}", status=404)
    assert answer.body == b"not found" and answer.content_type == "text/plain"


def test_an_id_not_in_lower_case_is_no_heartbeat(anonymous, job):
    assert anonymous.get(f"/ping/{job.upper()}", status=404).body == b"not found"


def test_an_unknown_id_is_not_found_before_a_bad_exit_status_or_rid(anonymous):
    assert anonymous.get(f"/ping/{UNKNOWN_ID}/256", status=404).body == b"not found"
    assert anonymous.get(f"/ping/{UNKNOWN_ID}?rid=x", status=404).body == b"not found"


def test_a_trailing_slash_is_the_same_ping(anonymous, service, job):
    anonymous.get(f"/ping/{job}/")
    anonymous.get(f"/ping/{job}/log/")
    assert [event["kind"] for event in events_of(client(service), job)] == ["log", "success"]


def test_pings_need_no_credentials_and_pass_the_cross_site_check(anonymous, service, job):
    headers = {"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}
    assert anonymous.post(f"/ping/{job}", headers=headers).body == b"OK"
    assert status_of(service, job) == "up"
    # the API itself still refuses both
    client(service).post_json("/api/v2/event", {"job": "backup"}, headers=headers, status=403)
    anonymous.get("/api/v2/heartbeat", status=401)


def test_wrong_credentials_do_not_matter_to_a_ping(service, job):
    assert client(service, user=("root", "wrong")).get(f"/ping/{job}").body == b"OK"


# -- what a ping does -----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_a_success_ping_refreshes_the_heartbeat_like_a_matching_event(anonymous, service, clock, job, method):
    clock.advance(10)
    anonymous.request(f"/ping/{job}", method=method)
    assert service.engine.status(job)["last_event"] == clock.now
    assert status_of(service, job) == "up"
    clock.advance(3599)
    service.tick()
    assert status_of(service, job) == "up"
    clock.advance(2)
    service.tick()
    assert status_of(service, job) == "down"


def test_a_failure_puts_the_heartbeat_down_at_once_and_a_success_resolves_it(anonymous, service, clock, job,
                                                                             alarms_seen):
    anonymous.get(f"/ping/{job}")
    clock.advance(5)
    anonymous.post(f"/ping/{job}/fail", "pg_dump: disk full\nsecond line\n")
    state = service.engine.status(job)
    assert state["status"] == "down" and state["alarm_since"] == clock.now
    assert state["last_event"] == clock.now  # a failure ping is an event too
    assert [(event["state"], event["output"]) for event in alarms_seen] == [(3, "failed: pg_dump: disk full")]
    assert service.engine.document(job)  # its stored output is unchanged
    clock.advance(5)
    anonymous.get(f"/ping/{job}")
    assert status_of(service, job) == "up"
    assert [event["state"] for event in alarms_seen] == [3, 0]
    reasons = [entry["reason"] for entry in history_of(client(service), job)]
    assert reasons[:2] == ["matching event received", "failed"]


@pytest.mark.parametrize("suffix, body, output", [
    ("/fail", "", "failed"),
    ("/fail", "  \n\n", "failed"),
    ("/fail", "\n  oom killed  \nmore", "failed: oom killed"),
    ("/1", "", "exit status 1"),
    ("/255", "Traceback (most recent call last):\n", "exit status 255: Traceback (most recent call last):"),
    ("/7", "x" * 5000, "exit status 7: " + "x" * heartbeat_lite.MAX_TEXT_CHARS),
])
def test_the_alarm_output_of_a_failure_says_why(anonymous, job, alarms_seen, suffix, body, output):
    anonymous.post(f"/ping/{job}{suffix}", body)
    assert [event["output"] for event in alarms_seen] == [output]


def test_an_open_alarm_is_listed_with_the_output_its_event_had(anonymous, service, clock, job, alarms_seen):
    # GET /api/v2/alarms lists "the event above plus since" (docs/api.md): a
    # failure's event says why (16), not the heartbeat's stored output
    app = client(service)
    anonymous.post(f"/ping/{job}/fail", "pg_dump: disk full\nmore")
    assert [(alarm["output"], alarm["since"]) for alarm in app.get("/api/v2/alarms").json] == [
        ("failed: pg_dump: disk full", clock.now)]
    assert app.get("/api/v2/alarms").json[0] == {**alarms_seen[-1], "since": clock.now}
    anonymous.get(f"/ping/{job}")
    assert app.get("/api/v2/alarms").json == []
    clock.advance(3600)
    service.tick()  # gone down by itself: its event has the heartbeat's own output
    stored = app.get(f"/api/v2/heartbeat/{job}").json["output"]
    assert [alarm["output"] for alarm in app.get("/api/v2/alarms").json] == [alarms_seen[-1]["output"]] == [stored]
    anonymous.post(f"/ping/{job}/3", "")  # already down: no new alarm, the open one unchanged
    assert [alarm["output"] for alarm in app.get("/api/v2/alarms").json] == [stored]


def test_a_failure_s_alarm_output_is_listed_after_a_restart(restart, clock):
    with restart() as service:
        heartbeat_id = new_heartbeat(service, name="job", pattern={"job": "x"}, expected_interval="1h")
        client(service, user=None).post(f"/ping/{heartbeat_id}/7", "boom")
    with restart() as service:
        assert [alarm["output"] for alarm in client(service).get("/api/v2/alarms").json] == ["exit status 7: boom"]
        client(service).delete(f"/api/v2/heartbeat/{heartbeat_id}")
        assert service.engine.core.store.alarm_outputs() == {}


@pytest.mark.sqlite_only("makes a version 7 file (PostgreSQL applies its schema whatever the version)")
def test_a_version_7_database_is_migrated_with_its_open_alarms(restart, clock):
    with restart() as service:
        heartbeat_id = new_heartbeat(service, name="job", pattern={"job": "x"}, expected_interval="1h")
        client(service, user=None).post(f"/ping/{heartbeat_id}/fail", "boom")
    with sqlite3.connect(restart.path) as conn:  # as version 7 left it: no alarm_output table
        conn.execute("DROP TABLE alarm_output")
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with restart() as service:
        app, anonymous = client(service), client(service, user=None)
        assert [alarm["heartbeat_id"] for alarm in app.get("/api/v2/alarms").json] == [heartbeat_id]
        anonymous.get(f"/ping/{heartbeat_id}")
        clock.advance(5)
        anonymous.post(f"/ping/{heartbeat_id}/2", "again")
        assert [alarm["output"] for alarm in app.get("/api/v2/alarms").json] == ["exit status 2: again"]
    with sqlite3.connect(restart.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION == 8
    conn.close()


def test_exit_status_0_is_a_success(anonymous, service, job, alarms_seen):
    anonymous.post(f"/ping/{job}/0")
    assert status_of(service, job) == "up" and alarms_seen == []
    assert events_of(client(service), job)[0] == {"kind": "success", "method": "POST", "client": None, "body": "",
                                                  "exit_status": 0}


def test_a_second_failure_raises_no_second_alarm(anonymous, job, alarms_seen):
    anonymous.post(f"/ping/{job}/fail", "one")
    anonymous.post(f"/ping/{job}/3", "two")
    assert [event["output"] for event in alarms_seen] == ["failed: one"]


def test_a_log_ping_is_recorded_and_changes_nothing(anonymous, service, job, alarms_seen):
    anonymous.post(f"/ping/{job}/log", "halfway through")
    assert status_of(service, job) == "pending" and service.engine.status(job)["last_event"] is None
    assert events_of(client(service), job) == [{"kind": "log", "method": "POST", "client": None,
                                                "body": "halfway through"}]
    assert alarms_seen == []


def test_a_start_ping_only_begins_a_run(anonymous, service, job):
    anonymous.get(f"/ping/{job}/start")
    assert status_of(service, job) == "pending"


def test_a_paused_heartbeat_takes_pings_without_alarm_or_resume(anonymous, service, job, alarms_seen):
    service.engine.pause(job)
    anonymous.get(f"/ping/{job}")
    anonymous.post(f"/ping/{job}/fail")
    assert status_of(service, job) == "paused" and alarms_seen == []
    assert [event["kind"] for event in events_of(client(service), job)] == ["fail", "success"]


def test_a_grouped_heartbeat_lists_its_pings_and_follows_only_its_members(anonymous, service, alarms_seen):
    grouped = new_heartbeat(service, name="hosts", pattern={"job": "x"}, expected_interval="1m", group_by=["host"])
    anonymous.get(f"/ping/{grouped}")
    anonymous.post(f"/ping/{grouped}/fail", "no")
    assert status_of(service, grouped) == "pending" and alarms_seen == []
    assert [event["kind"] for event in events_of(client(service), grouped)] == ["fail", "success"]


def test_a_ping_after_the_heartbeat_is_deleted_is_not_found(anonymous, service, job):
    service.engine.delete(job)
    assert anonymous.get(f"/ping/{job}", status=404).body == b"not found"
    assert anonymous.get(f"/ping/{job}/fail", status=404).body == b"not found"


# -- /events -------------------------------------------------------------------


def test_every_ping_is_listed_in_events_with_method_body_and_client(service, clock, job):
    with heartbeat_lite.serve(service, port=0) as base:
        urllib.request.urlopen(urllib.request.Request(f"{base}/ping/{job}/log", data=b"log line",
                                                      method="POST"), timeout=10).read()
        for _ in range(3):  # each one is listed, none coalesced away
            with urllib.request.urlopen(f"{base}/ping/{job}", timeout=10) as answer:
                assert answer.status == 200 and answer.read() == b"OK"
                assert answer.headers["Ping-Body-Limit"] == "10000"
                assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    listed = events_of(client(service), job)
    assert listed == [{"kind": "success", "method": "GET", "client": "127.0.0.1", "body": ""}] * 3 + [
        {"kind": "log", "method": "POST", "client": "127.0.0.1", "body": "log line"}]


def test_a_ping_body_is_kept_up_to_10000_bytes(anonymous, service, job):
    anonymous.post(f"/ping/{job}/log", "é" * 4999 + "xyz")  # 10,001 bytes: the last byte cut
    kept = events_of(client(service), job)[0]
    assert kept["body"] == "é" * 4999 + "xy" and kept["body_truncated"] is True
    anonymous.post(f"/ping/{job}/log", "é" * 5001)  # a character cut in two is dropped
    kept = events_of(client(service), job)[0]
    assert kept["body"] == "é" * 5000 and kept["body_truncated"] is True
    anonymous.post(f"/ping/{job}/log", "\x01" * 10_000)  # escaped 6 times over in JSON: still whole
    kept = events_of(client(service), job)[0]
    assert kept["body"] == "\x01" * 10_000 and "body_truncated" not in kept


def test_a_ping_body_over_the_service_limit_is_refused_and_changes_nothing(anonymous, service, job):
    too_big = b"x" * (heartbeat_lite.MAX_EVENT_BODY_BYTES + 1)
    answer = anonymous.post(f"/ping/{job}/fail", too_big, status=413)
    assert answer.json["description"].startswith("request body larger than")
    assert status_of(service, job) == "pending" and events_of(client(service), job) == []


def test_a_bad_rid_changes_nothing(anonymous, service, job):
    assert anonymous.post(f"/ping/{job}/fail?rid=12", status=400).body == b"invalid uuid format"
    assert status_of(service, job) == "pending" and events_of(client(service), job) == []


# -- runs ----------------------------------------------------------------------


def test_a_run_s_duration_is_on_its_last_ping_and_in_the_history(anonymous, service, clock, job):
    anonymous.get(f"/ping/{job}/start")
    clock.advance(6.08)
    anonymous.get(f"/ping/{job}")
    api = client(service)
    assert events_of(api, job)[0]["duration"] == 6.08
    assert "duration" not in events_of(api, job)[1]
    entry = history_of(api, job)[0]
    assert entry["duration"] == 6.08 and entry["status"] == "up" and entry["reason"] == "run finished in 6.1s"
    clock.advance(1)
    anonymous.get(f"/ping/{job}")  # no run open: no duration
    assert "duration" not in events_of(api, job)[0]


def test_a_failed_run_s_duration_is_in_its_alarm_s_history_entry(anonymous, service, clock, job):
    anonymous.post(f"/ping/{job}/start")
    clock.advance(90)
    anonymous.post(f"/ping/{job}/2", "rsync error")
    api = client(service)
    assert events_of(api, job)[0]["duration"] == 90
    entry = history_of(api, job)[0]
    assert entry == {"at": clock.now, "status": "down", "reason": "exit status 2", "duration": 90}


def test_runs_are_paired_by_rid(anonymous, service, clock, job):
    other = "6f1d3c1e-0000-4000-8000-000000000001"
    anonymous.get(f"/ping/{job}/start?rid={RID}")
    clock.advance(10)
    anonymous.get(f"/ping/{job}/start?rid={other.upper()}")  # any spelling of a UUID
    clock.advance(5)
    anonymous.get(f"/ping/{job}?rid={RID}")
    clock.advance(1)
    anonymous.get(f"/ping/{job}")  # no rid: no run of its own
    clock.advance(1)
    anonymous.post(f"/ping/{job}/fail?rid={other}")
    listed = events_of(client(service), job)
    assert [(event["kind"], event.get("rid"), event.get("duration")) for event in listed] == [
        ("fail", other, 7), ("success", None, None), ("success", RID, 15), ("start", other, None),
        ("start", RID, None)]


def test_a_run_started_again_is_measured_from_its_last_start(anonymous, service, clock, job):
    anonymous.get(f"/ping/{job}/start")
    clock.advance(100)
    anonymous.get(f"/ping/{job}/start")
    clock.advance(20)
    anonymous.get(f"/ping/{job}")
    assert events_of(client(service), job)[0]["duration"] == 20


def test_open_runs_are_bounded_per_heartbeat(anonymous, service, clock, job):
    first = "6f1d3c1e-0000-4000-8000-000000000000"
    anonymous.get(f"/ping/{job}/start?rid={first}")
    for n in range(1, heartbeat_lite.MAX_OPEN_RUNS_PER_HEARTBEAT + 1):
        anonymous.get(f"/ping/{job}/start?rid=6f1d3c1e-0000-4000-8000-{n:012d}")
    anonymous.get(f"/ping/{job}?rid={first}")  # forgotten: the oldest
    assert "duration" not in events_of(client(service), job)[0]
    anonymous.get(f"/ping/{job}?rid=6f1d3c1e-0000-4000-8000-000000000001")
    assert "duration" in events_of(client(service), job)[0]


# -- metrics -------------------------------------------------------------------


def test_metrics_count_pings_by_kind(anonymous, service, job):
    for suffix in ("", "/0", "/start", "/log", "/fail", "/9"):
        anonymous.get(f"/ping/{job}{suffix}")
    anonymous.get(f"/ping/{UNKNOWN_ID}", status=404)
    samples = parse_prometheus(client(service).get("/metrics").text)
    counts = {labels[0][1]: value for (name, labels), value in samples.items()
              if name == "heartbeat_lite_pings_received_total"}
    assert counts == {"success": 2, "start": 1, "log": 1, "fail": 2}


# -- Opsgenie ------------------------------------------------------------------


def genie(clock, **options):
    return heartbeat_lite.create_app(clock=clock, genie_key="s3cret-genie", **options)


def test_the_opsgenie_route_is_off_without_a_genie_key(anonymous, job):
    anonymous.get("/v2/heartbeats/nightly%20backup/ping", headers={"Authorization": "GenieKey x"}, status=404)


@pytest.mark.parametrize("header", [None, "GenieKey wrong", "Basic cm9vdDpyb290", "s3cret-genie", "GenieKey"])
def test_an_opsgenie_ping_without_the_right_key_is_refused(clock, header):
    with genie(clock) as service:
        job = new_heartbeat(service, name="nightly backup", pattern={"job": "backup"})
        headers = {"Authorization": header} if header else {}
        answer = client(service, user=None).get("/v2/heartbeats/nightly%20backup/ping", headers=headers,
                                                status=401)
        assert answer.json["message"] == "Could not authenticate"
        assert status_of(service, job) == "pending"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "HEAD"])
def test_an_opsgenie_ping_refreshes_every_heartbeat_of_that_name(clock, method):
    with genie(clock) as service:
        first = new_heartbeat(service, name="nightly backup", pattern={"job": "backup", "site": "a"})
        second = new_heartbeat(service, name="nightly backup", pattern={"job": "backup", "site": "b"})
        other = new_heartbeat(service, name="other", pattern={"job": "other"})
        answer = client(service, user=None).request("/v2/heartbeats/nightly%20backup/ping", method=method,
                                                    headers={"Authorization": "GenieKey s3cret-genie"})
        assert answer.status_int == 202
        if method != "HEAD":
            assert answer.json["result"] == "PONG - Heartbeat received" and answer.json["took"] == 0
            assert re.fullmatch(r"[0-9a-f-]{36}", answer.json["requestId"])
        assert [status_of(service, hid) for hid in (first, second, other)] == ["up", "up", "pending"]
        assert events_of(client(service), first)[0]["kind"] == "success"


def test_an_opsgenie_ping_for_an_unknown_name_answers_as_opsgenie_and_is_logged_once(clock, caplog):
    with genie(clock) as service:
        app = client(service, user=None)
        with caplog.at_level(logging.WARNING, logger="heartbeat_lite"):
            for _ in range(3):
                answer = app.post("/v2/heartbeats/nobody/ping", headers={"Authorization": "GenieKey s3cret-genie"},
                                  status=202)
                assert answer.json["result"] == "PONG - Heartbeat received"
        assert len([record for record in caplog.records if "nobody" in record.getMessage()]) == 1


# -- Uptime Kuma ----------------------------------------------------------------


def test_an_unknown_push_token_answers_as_uptime_kuma(anonymous):
    answer = anonymous.get("/api/push/abcdefgh12?status=up&msg=OK", status=404)
    assert answer.json == {"ok": False, "msg": "Monitor not found or not active."}


# -- turned off -----------------------------------------------------------------


def test_pings_off_turns_every_ping_route_off(clock):
    with heartbeat_lite.create_app(clock=clock, pings=False, genie_key="k", ping_key="key") as service:
        job = new_heartbeat(service)
        app = client(service, user=None)
        for path in (f"/ping/{job}", f"/ping/{job}/fail", "/ping/key/slug", "/api/push/abcdefgh12",
                     "/v2/heartbeats/x/ping"):
            assert app.get(path, headers={"Authorization": "GenieKey k"}, status=404).json["description"] \
                == "not found"
        assert status_of(service, job) == "pending"


def test_the_ping_settings_come_from_flags_or_the_environment():
    parser = heartbeat_lite.build_parser()
    args = heartbeat_lite.check_settings(parser.parse_args(["--pings", "off", "--db", ":memory:"]), {})
    assert args.pings is False and args.ping_key is None and args.genie_key is None
    args = heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:"]), {
        "HEARTBEAT_LITE_PINGS": "ON", "HEARTBEAT_LITE_PING_KEY": "k3y", "HEARTBEAT_LITE_GENIE_KEY": "g"})
    assert args.pings is True and args.ping_key == "k3y" and args.genie_key == "g"
    with pytest.raises(heartbeat_lite.ConfigError, match="HEARTBEAT_LITE_PINGS: on or off"):
        heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:"]), {"HEARTBEAT_LITE_PINGS": "no"})
    with pytest.raises(heartbeat_lite.ConfigError, match="--ping-key: printable"):
        heartbeat_lite.check_settings(parser.parse_args(["--db", ":memory:", "--ping-key", "a b"]), {})


def test_a_database_error_answers_503_so_that_curl_retries(anonymous, service, job, caplog):
    def broken(*_):
        raise heartbeat_lite.StoreError("disk I/O error")

    service.store.statement_hook = broken
    with caplog.at_level(logging.ERROR, logger="heartbeat_lite"):
        answer = anonymous.post(f"/ping/{job}/fail", status=503)
    assert answer.body.decode() == heartbeat_lite.DATABASE_ERROR and answer.content_type == "text/plain"


def test_a_database_error_on_an_opsgenie_or_kuma_ping_is_a_503_in_json(clock, caplog):
    # Healthchecks' pings answer text/plain; Opsgenie's and Uptime Kuma's
    # routes answer JSON, their errors too (as their 401, 404 and 413 do).
    # Their database errors were Healthchecks' text: since a97fd4c, also a
    # push while the engine could not start, once a JSON 404.
    with genie(clock) as service:
        new_heartbeat(service, name="shop", pattern={"job": "shop"}, push_token="kUmA_token-123")
        anonymous = client(service, user=None)

        def broken(*_):
            raise heartbeat_lite.StoreError("disk I/O error")

        service.store.statement_hook = broken
        with caplog.at_level(logging.ERROR, logger="heartbeat_lite"):
            for answer in (anonymous.get("/api/push/kUmA_token-123?status=down", status=503),
                           anonymous.post("/v2/heartbeats/shop/ping", headers={"Authorization": "GenieKey s3cret-genie"},
                                          status=503)):
                assert answer.content_type == "application/json"
                assert answer.json == {"name": "", "description": heartbeat_lite.DATABASE_ERROR}


# -- the heartbeat's page ---------------------------------------------------------


def test_the_heartbeat_page_shows_the_last_run_s_duration_and_a_failed_run_s_output(anonymous, service, clock, job):
    api = client(service)
    assert "Last run" not in api.get(f"/heartbeat/{job}").text
    anonymous.get(f"/ping/{job}/start")
    clock.advance(90)
    anonymous.post(f"/ping/{job}/2", "rsync <error> 23")
    page = api.get(f"/heartbeat/{job}").text
    assert "<dt>Last run</dt><dd>failed " in page
    assert ", took 1.5m: exit status 2: rsync &lt;error&gt; 23</dd>" in page or \
        ", took 90s: exit status 2: rsync &lt;error&gt; 23</dd>" in page
    anonymous.get(f"/ping/{job}/start")
    clock.advance(7200)
    anonymous.get(f"/ping/{job}")
    page = api.get(f"/heartbeat/{job}").text
    assert "<dt>Last run</dt><dd>ended well " in page and ", took 2h</dd>" in page


# -- slugs, the ping key, ?create=1 ------------------------------------------------


PING_KEY = "fixturepingkey0123456"  # the recorded server's


@pytest.fixture
def keyed(clock, alarms_seen):
    with heartbeat_lite.create_app(clock=clock, ping_key=PING_KEY, on_alarm=alarms_seen.append) as service:
        yield service


def test_every_ping_by_slug_answers_as_the_recorded_healthchecks_server(keyed):
    job = new_heartbeat(keyed, name="nightly backup", slug="nightly-backup", pattern={"job": "backup"})
    app = client(keyed, user=None)
    replayed = 0
    for method, path, status, headers, text in recorded_answers():
        if path.startswith(("/ping/a73e26e5", "/ping/00000000")):
            continue
        answer = app.request(path, method=method, expect_errors=True)
        assert (answer.status_int, answer.text) == (status, text), (method, path)
        assert answer.headers["Content-Length"] == headers["Content-Length"], (method, path)
        for name in ("Ping-Body-Limit", "Access-Control-Allow-Origin"):
            assert answer.headers.get(name) == headers.get(name), (method, path, name)
        replayed += 1
    assert replayed == 7
    assert status_of(keyed, job) == "down"  # the last recorded ping: POST .../nightly-backup/fail
    created = keyed.engine.by_slug("new-job")
    document = keyed.engine.views.document(created)
    assert document and status_of(keyed, created) == "up"


def test_a_created_heartbeat_has_healthchecks_default_timing(keyed, clock):
    app = client(keyed, user=None)
    assert app.get(f"/ping/{PING_KEY}/db-backup/start?create=1", status=201).body == b"Created"
    created = keyed.engine.by_slug("db-backup")
    document = client(keyed).get(f"/api/v2/heartbeat/{created}").json
    assert {key: document[key] for key in ("name", "slug", "pattern", "expected_interval", "late_after")} == {
        "name": "db-backup", "slug": "db-backup", "pattern": {"ping": "db-backup"}, "expected_interval": "25h",
        "late_after": "24h"}
    assert document["author"] == "ping"
    assert app.get(f"/ping/{PING_KEY}/db-backup?create=1").body == b"OK"


def test_create_is_refused_when_the_slug_s_pattern_is_another_heartbeat_s(keyed):
    other = new_heartbeat(keyed, name="older", pattern={"ping": "db-backup"})
    app = client(keyed, user=None)
    answer = app.get(f"/ping/{PING_KEY}/db-backup?create=1", status=409)
    assert answer.body == b"ambiguous slug" and answer.content_type == "text/plain"
    assert keyed.engine.by_slug("db-backup") is None and status_of(keyed, other) == "pending"


def test_create_needs_the_right_ping_key_and_a_lower_case_slug(keyed):
    app = client(keyed, user=None)
    assert app.get("/ping/wrongkey000000000000000/db-backup?create=1", status=404).body == b"not found"
    assert app.get(f"/ping/{PING_KEY}/DB-backup?create=1", status=400).body == b"invalid url format"
    assert app.get(f"/ping/{PING_KEY}/db-backup?create=yes", status=404).body == b"not found"
    assert keyed.engine.by_slug("db-backup") is None and not keyed.engine.list()


def test_without_a_ping_key_the_slug_form_is_off(anonymous, service):
    new_heartbeat(service, name="nightly backup", slug="nightly-backup", pattern={"job": "backup"})
    assert anonymous.get(f"/ping/{PING_KEY}/nightly-backup", status=404).body == b"not found"
    assert anonymous.get(f"/ping/{PING_KEY}/new-job?create=1", status=404).body == b"not found"


@pytest.mark.parametrize("suffix, kind", [("", "success"), ("/start", "start"), ("/log", "log"), ("/0", "success"),
                                          ("/fail", "fail"), ("/1", "fail")])
def test_the_slug_form_takes_every_suffix(keyed, suffix, kind):
    job = new_heartbeat(keyed, name="nightly backup", slug="nightly-backup", pattern={"job": "backup"})
    client(keyed, user=None).post(f"/ping/{PING_KEY}/nightly-backup{suffix}")
    assert events_of(client(keyed), job)[0]["kind"] == kind


def test_a_slug_changed_or_deleted_is_not_found_at_once(keyed):
    job = new_heartbeat(keyed, name="nightly backup", slug="nightly-backup", pattern={"job": "backup"})
    app = client(keyed, user=None)
    client(keyed).put_json(f"/api/v2/heartbeat/{job}", {"name": "nightly backup", "slug": "backup-2",
                                                        "pattern": {"job": "backup"}, "expected_interval": "1h"})
    assert app.get(f"/ping/{PING_KEY}/nightly-backup", status=404).body == b"not found"
    app.get(f"/ping/{PING_KEY}/backup-2")
    keyed.engine.delete(job)
    assert app.get(f"/ping/{PING_KEY}/backup-2", status=404).body == b"not found"


# -- Uptime Kuma ----------------------------------------------------------------


def test_an_uptime_kuma_push_is_a_success_or_a_failure(anonymous, service, alarms_seen):
    job = new_heartbeat(service, name="shop", pattern={"job": "shop"}, push_token="kUmA_token-123")
    assert anonymous.get("/api/push/kUmA_token-123?status=up&msg=OK&ping=").json == {"ok": True}
    assert status_of(service, job) == "up"
    assert anonymous.get("/api/push/kUmA_token-123?status=down&msg=HTTP%20503%20%C3%A9").json == {"ok": True}
    assert status_of(service, job) == "down"
    assert [event["output"] for event in alarms_seen] == ["failed: HTTP 503 é"]
    assert anonymous.get("/api/push/kUmA_token-123").json == {"ok": True}  # no status: up
    assert status_of(service, job) == "up"
    assert [event["kind"] for event in events_of(client(service), job)] == ["success", "fail", "success"]


def test_a_push_token_is_case_sensitive_and_a_slug_is_no_push_token(anonymous, service):
    new_heartbeat(service, name="shop", pattern={"job": "shop"}, push_token="kUmA_token-123", slug="shop-slug")
    for token in ("kuma_token-123", "shop-slug"):
        assert anonymous.get(f"/api/push/{token}?status=up", status=404).json == {
            "ok": False, "msg": "Monitor not found or not active."}


# -- max_run ---------------------------------------------------------------------


@pytest.fixture
def timed(service):
    return new_heartbeat(service, name="etl", pattern={"job": "etl"}, expected_interval="24h", max_run="30m")


def test_a_run_not_finished_within_max_run_puts_the_heartbeat_down(anonymous, service, clock, timed, alarms_seen):
    anonymous.get(f"/ping/{timed}")
    anonymous.get(f"/ping/{timed}/start")
    started = clock.now
    assert service.tick() <= 1800
    clock.advance(1799)
    service.tick()
    assert status_of(service, timed) == "up"
    clock.advance(31)
    service.tick()
    state = service.engine.status(timed)
    assert state["status"] == "down" and state["alarm_since"] == started + 1800
    assert [(event["state"], event["output"]) for event in alarms_seen] == [(3, "run exceeded 30m")]
    assert history_of(client(service), timed)[0]["reason"] == "run exceeded 30m"
    clock.advance(60)
    service.tick()
    assert len(alarms_seen) == 1  # once
    anonymous.get(f"/ping/{timed}")  # the late end resolves it (no run: no duration)
    assert status_of(service, timed) == "up" and [event["state"] for event in alarms_seen] == [3, 0]
    assert "duration" not in events_of(client(service), timed)[0]


def test_a_run_finished_in_time_or_failed_raises_no_overrun(anonymous, service, clock, timed, alarms_seen):
    anonymous.get(f"/ping/{timed}/start")
    clock.advance(600)
    anonymous.get(f"/ping/{timed}")
    anonymous.get(f"/ping/{timed}/start?rid={RID}")
    clock.advance(600)
    anonymous.get(f"/ping/{timed}/fail?rid={RID}")
    clock.advance(3600)
    service.tick()
    assert [event["output"] for event in alarms_seen] == ["failed"]


def test_a_run_started_again_gets_a_new_max_run(anonymous, service, clock, timed, alarms_seen):
    anonymous.get(f"/ping/{timed}/start")
    clock.advance(1500)
    anonymous.get(f"/ping/{timed}/start")
    clock.advance(1500)
    service.tick()
    assert alarms_seen == []
    clock.advance(301)
    service.tick()
    assert [event["output"] for event in alarms_seen] == ["run exceeded 30m"]


def test_overlapping_runs_each_have_their_max_run(anonymous, service, clock, timed, alarms_seen):
    other = "6f1d3c1e-0000-4000-8000-000000000001"
    anonymous.get(f"/ping/{timed}/start?rid={RID}")
    clock.advance(600)
    anonymous.get(f"/ping/{timed}/start?rid={other}")
    anonymous.get(f"/ping/{timed}?rid={RID}")
    clock.advance(1500)
    service.tick()
    assert alarms_seen == []
    clock.advance(301)
    service.tick()
    assert [event["output"] for event in alarms_seen] == ["run exceeded 30m"]


def test_without_max_run_a_run_may_last(anonymous, service, clock, job, alarms_seen):
    anonymous.get(f"/ping/{job}")
    anonymous.get(f"/ping/{job}/start")
    clock.advance(3500)
    service.tick()
    assert alarms_seen == []


def test_a_paused_or_deleted_heartbeat_s_run_raises_nothing(anonymous, service, clock, timed, alarms_seen):
    second = new_heartbeat(service, name="etl2", pattern={"job": "etl2"}, expected_interval="24h", max_run="1m")
    anonymous.get(f"/ping/{timed}/start")
    anonymous.get(f"/ping/{second}/start")
    service.engine.pause(timed)
    service.engine.delete(second)
    clock.advance(3600)
    service.tick()
    assert alarms_seen == []


# -- OpenAPI, and a real server -------------------------------------------------------


def test_ping_answers_match_the_openapi_description(spec, clock):
    with heartbeat_lite.create_app(clock=clock, ping_key=PING_KEY, genie_key="g") as service:
        job = new_heartbeat(service, name="shop", pattern={"job": "shop"}, push_token="kUmA_token-123",
                            slug="shop")
        new_heartbeat(service, name="older", pattern={"ping": "taken"})
        call = Recorder(service, user=None)
        call("GET", f"/ping/{job}", 200)
        call("POST", f"/ping/{job}/start?rid={RID}", 200, body=b"starting")
        call("HEAD", f"/ping/{job}/0", 200)
        call("GET", f"/ping/{job}/256", 400)
        call("GET", f"/ping/{job}?rid=x", 400)
        call("GET", f"/ping/{UNKNOWN_ID}", 404)
        call("POST", f"/ping/{job}/fail", 413, body=b"x" * (heartbeat_lite.MAX_EVENT_BODY_BYTES + 1))
        call("GET", f"/ping/{PING_KEY}/shop", 200)
        call("GET", f"/ping/{PING_KEY}/new-one?create=1", 201)
        call("GET", f"/ping/{PING_KEY}/taken?create=1", 409)
        call("GET", f"/ping/{PING_KEY}/shop/log", 200)
        call("GET", "/api/push/kUmA_token-123?status=up", 200)
        call("GET", "/api/push/nope12345", 404)
        call("PUT", "/v2/heartbeats/shop/ping", 202, headers={"Authorization": "GenieKey g"})
        call("GET", "/v2/heartbeats/shop/ping", 401)
    for method, path, response in call.answers:
        where = f"{method} {path} {response.status_int}"
        answer = described_answer(spec, method, path.split("?")[0], response.status_int)
        content = lookup(spec, answer).get("content")
        if response.content_type == "application/json":
            assert schema_errors(spec, answer + pointer("content", "application/json", "schema")[1:],
                                 response.json) == [], where
        else:
            assert f"{response.content_type}; charset=utf-8" in content, where


def test_the_ping_routes_over_a_real_server(clock, alarms_seen):
    with heartbeat_lite.create_app(clock=clock, ping_key=PING_KEY, genie_key="g",
                                   on_alarm=alarms_seen.append) as service:
        job = new_heartbeat(service, name="shop", pattern={"job": "shop"}, push_token="kUmA_token-123",
                            slug="shop")
        with heartbeat_lite.serve(service, port=0) as base:
            def call(path, data=None, method=None, headers=None):
                request = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        return answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    with error:
                        return error.code, error.read()

            assert call(f"/ping/{PING_KEY}/shop/start") == (200, b"OK")
            clock.advance(3)
            assert call(f"/ping/{PING_KEY}/shop/1", b"boom\n") == (200, b"OK")
            assert call("/api/push/kUmA_token-123?status=up") == (200, b'{"ok": true}')
            assert call("/v2/heartbeats/shop/ping", method="PATCH",
                        headers={"Authorization": "GenieKey g"})[0] == 202
            assert call(f"/ping/{PING_KEY}/shop?rid=nope") == (400, b"invalid uuid format")
        listed = events_of(client(service), job)
    assert [(event["state"], event["output"]) for event in alarms_seen] == [
        (3, "exit status 1: boom"), (0, "Une note personnalisable")]  # the resolution: the heartbeat's own output
    assert [(event["kind"], event["method"], event["client"], event.get("duration")) for event in listed] == [
        ("success", "PATCH", "127.0.0.1", None), ("success", "GET", "127.0.0.1", None),
        ("fail", "POST", "127.0.0.1", 3), ("start", "GET", "127.0.0.1", None)]
