"""Notification channels (docs/notifications.md): the channel routes and
their answers, secrets, routing, reminders, escalation, acknowledgement,
the queue of each channel (order, backoff, batches, events set aside), what
each kind sends, checked by local HTTP targets, health, metrics and the
status page. The real SMTP server, Alertmanager and Apprise are in
test_notify_real.py."""

import json
import logging
import sqlite3
import sys
import threading
import time

import pytest

import heartbeat_lite
from testing_support import C01, HERE, INVALID, T0, Hooks, body, client, grouped, host, parse_prometheus

CHANNEL_INVALID = {"name": "", "description": "invalid channel payload."}


@pytest.fixture
def hooks():
    hooks = Hooks()
    yield hooks
    hooks.close()


def channel(app, kind="webhook", url=None, status=200, **fields):
    """Create a channel through the API; return its id (or the answer, when ``status`` is not 200)."""
    doc = {"name": fields.pop("name", f"ops-{kind}"), "kind": kind, "url": url, **fields}
    answer = app.post_json("/api/v2/channel", doc, status=status)
    return answer.json["description"] if status == 200 else answer.json


def heartbeat(app, **changes):
    return app.post_json("/api/v2/heartbeat", body(**changes)).json["description"]


def go_down(service, clock, seconds=61):
    clock.advance(seconds)
    service.tick()


def delivered(hooks, path="/hook"):
    return hooks.bodies(path)


###############################################################################
# The channel routes
###############################################################################


def test_a_channel_is_created_listed_read_replaced_and_removed_with_the_documented_answers(app, hooks):
    answer = app.post_json("/api/v2/channel", {"name": "ops-hook", "kind": "webhook", "url": hooks.url()})
    assert answer.json["name"] == "channel created"
    channel_id = answer.json["description"]
    listed = app.get("/api/v2/channel").json
    assert listed == [app.get(f"/api/v2/channel/{channel_id}").json]
    assert listed[0] == {"_id": channel_id, "name": "ops-hook", "kind": "webhook", "url": hooks.url(),
                         "default": False, "created": listed[0]["created"], "updated": listed[0]["updated"],
                         "last_delivery": None, "last_error": None, "failing_since": None, "waiting": 0,
                         "oldest_waiting": None, "set_aside": 0, "last_refusal": None}
    assert app.put_json(f"/api/v2/channel/{channel_id}/", {"name": "ops", "kind": "slack", "url": hooks.url(),
                                                           "default": True, "repeat_every": "1h"}).json == {
        "name": "channel updated", "description": channel_id}
    replaced = app.get(f"/api/v2/channel/{channel_id}").json
    assert (replaced["name"], replaced["kind"], replaced["default"], replaced["repeat_every"]) == (
        "ops", "slack", True, "1h")
    assert app.delete(f"/api/v2/channel/{channel_id}").json == {"name": "channel removed", "description": channel_id}
    assert app.get(f"/api/v2/channel/{channel_id}", status=404).json == {"name": channel_id,
                                                                        "description": "channel not found"}
    assert app.get("/api/v2/channel").json == []


def test_an_unknown_channel_is_not_found_on_every_route(app):
    missing = "a0000000-0000-4000-8000-000000000000"
    for method, path in (("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/test")):
        answer = app.request(f"/api/v2/channel/{missing}{path}", method=method, status=404,
                             body=json.dumps({"name": "x", "kind": "webhook", "url": "http://x"}).encode())
        assert answer.json == {"name": missing, "description": "channel not found"}
    assert app.get("/api/v2/channel/not-an-id", status=404).json["description"] == "channel not found"


@pytest.mark.parametrize("kind, url, reason", [
    ("pager", "http://127.0.0.1/", "kind: must be one of"),
    ("webhook", "ftp://127.0.0.1/x", "url: webhook channels take an http:// or https:// URL"),
    ("slack", "hooks.slack.com/services/T0/B0/x", "url: slack channels take an http:// or https:// URL"),
    ("teams", "http://:80/x", "url: teams channels take"),
    ("canopsis", "http://127.0.0.1:99999/x", "url: not a valid URL"),
    ("ntfy", "https://ntfy.sh/", "url: an ntfy channel takes <server>/<topic>"),
    ("ntfy", "https://ntfy.sh/bad topic!", "url: an ntfy channel takes <server>/<topic>"),
    ("email", "http://mail.example.com/", "url: an email channel takes smtp://"),
    ("email", "smtp://mail.example.com?to=ops@example.com", "url: from= must give one address"),
    ("email", "smtp://mail.example.com?from=hb@example.com&to=nobody", "url: to= must give addresses"),
    ("email", "smtp://mail.example.com?from=hb@example.com&to=a@example.com&cc=b@example.com",
     "url: an email channel's query takes from and to only"),
    ("alertmanager", "prometheus-alertmanager:9093", "url: alertmanager channels take"),
])
def test_a_url_that_does_not_fit_the_kind_is_refused_and_nothing_is_stored(app, kind, url, reason):
    answer = channel(app, kind, url, status=400)
    assert {key: answer[key] for key in ("name", "description")} == CHANNEL_INVALID
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/channel").json == []


@pytest.mark.parametrize("doc, reason", [
    ({}, "name: required"),
    ({"name": " ", "kind": "webhook", "url": "http://x"}, "name: must not be blank"),
    ({"name": "x", "kind": "webhook"}, "url: required"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "default": "yes"}, "default: must be true or false"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "repeat_every": "30s"}, "repeat_every: at least 1m"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "repeat_every": "often"}, "repeat_every: must look like"),
    ({"name": "x", "kind": "slack", "url": "http://x", "template": "{}"}, "template: for a webhook channel only"),
    ({"name": "x", "kind": "slack", "url": "http://x", "headers": {}}, "headers: for a webhook channel only"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "headers": {"Host": "evil"}}, "headers: 'Host' is not"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "headers": {"X-A": "b\r\nX-B: c"}}, "headers.X-A: must be"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "template": '{"text": "{output}"'},
     "template: not valid JSON once rendered"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "template": '{"text": "{member}"}'},
     "template: not valid JSON once rendered"),
    ({"name": "x", "kind": "webhook", "url": "http://x", "colour": "red"}, "unknown field(s): colour"),
])
def test_a_bad_channel_body_gets_every_reason_and_nothing_is_stored(app, doc, reason):
    answer = app.post_json("/api/v2/channel", doc, status=400).json
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/channel").json == []


def test_apprise_without_the_extra_is_a_400_saying_how_to_install_it(app, monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise raises ImportError
    answer = channel(app, "apprise", "json://127.0.0.1:9/x", status=400)
    assert answer["errors"] == ["kind: apprise needs the optional extra, not installed here: "
                                "pip install heartbeat-lite[apprise]"]
    assert app.get("/api/v2/channel").json == []


def test_at_most_a_hundred_channels(app, monkeypatch):
    monkeypatch.setattr(heartbeat_lite, "MAX_CHANNELS", 2)
    channel(app, url="http://127.0.0.1:9/a")
    channel(app, url="http://127.0.0.1:9/b")
    assert channel(app, url="http://127.0.0.1:9/c", status=400)["errors"] == ["at most 2 channels: delete one first"]


###############################################################################
# Secrets
###############################################################################


SLACK_SECRET = "XyZ9secretTOKENvalue123"


def test_secrets_are_never_shown_in_answers_metrics_pages_or_logs(service, app, hooks, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="heartbeat_lite")
    url = hooks.url(f"/services/T0123ABCD/B0456EFGH/{SLACK_SECRET}?token=qu3ryS3cret", userinfo="bot:p4ssw0rd@")
    hooks.statuses["/services/T0123ABCD/B0456EFGH/" + SLACK_SECRET] = [500]
    slack = channel(app, "slack", url, default=True)
    hook = channel(app, "webhook", hooks.url("/hook"), headers={"Authorization": "Bearer h3aderS3cret"})
    heartbeat(app)
    go_down(service, clock)
    service.deliver()
    shown = sorted(app.get("/api/v2/channel").json, key=lambda doc: doc["_id"] != slack)
    assert shown[0]["url"] == f"http://bot:***@127.0.0.1:{hooks.server.server_address[1]}/services/***/***/***?token=***"
    assert shown[1]["headers"] == {"Authorization": "***"}
    assert shown[0]["failing_since"] is not None and shown[0]["last_error"] == "HTTP 500"
    everything = (json.dumps(shown) + json.dumps(app.get(f"/api/v2/channel/{slack}").json)
                  + json.dumps(app.get(f"/api/v2/channel/{hook}").json) + app.get("/metrics").text
                  + app.get("/").text + caplog.text)
    for secret in ("p4ssw0rd", SLACK_SECRET, "T0123ABCD", "qu3ryS3cret", "h3aderS3cret"):
        assert secret not in everything
    assert "alarms are not reaching <b>ops-slack</b>" in app.get("/").text


def test_a_put_that_sends_back_the_masked_values_keeps_the_secrets(service, app, hooks, clock):
    url = hooks.url(f"/hooks/{SLACK_SECRET}", userinfo="u:pw@")
    hook = channel(app, "webhook", url, headers={"X-Token": "t0ken-value", "X-Team": "ops"}, default=True)
    doc = app.get(f"/api/v2/channel/{hook}").json  # sent back as it came, its delivery's keys too
    assert doc["url"].endswith("/hooks/***") and doc["headers"] == {"X-Token": "***", "X-Team": "***"}
    app.put_json(f"/api/v2/channel/{hook}", {**doc, "name": "renamed", "headers": {"X-Token": "***", "X-Team": "dev"}})
    heartbeat(app)
    go_down(service, clock)
    assert service.deliver() is None
    path, headers, _, _ = hooks.requests[-1]
    assert path == f"/hooks/{SLACK_SECRET}"
    assert (headers["X-Token"], headers["X-Team"]) == ("t0ken-value", "dev")
    assert headers["Authorization"] == "Basic dTpwdw=="  # u:pw


def test_a_masked_value_that_is_not_the_stored_one_is_refused(app, hooks):
    hook = channel(app, "webhook", hooks.url(f"/hooks/{SLACK_SECRET}"))
    answer = app.put_json(f"/api/v2/channel/{hook}", {"name": "x", "kind": "webhook",
                                                      "url": hooks.url("/other/***")}, status=400).json
    assert answer["errors"][0].startswith("url: *** hides a secret in answers")
    answer = app.put_json(f"/api/v2/channel/{hook}", {"name": "x", "kind": "webhook", "url": hooks.url(),
                                                      "headers": {"X-New": "***"}}, status=400).json
    assert answer["errors"] == ["headers.X-New: *** stands for the stored value, and there is none"]
    assert app.get(f"/api/v2/channel/{hook}").json["name"] == "ops-webhook"  # unchanged


def test_an_ntfy_topic_is_hidden_and_a_plain_path_is_not():
    assert heartbeat_lite.redact_channel_url("https://ntfy.sh/ops-alarms", "ntfy") == "https://ntfy.sh/***"
    assert heartbeat_lite.redact_channel_url("http://am:9093/", "alertmanager") == "http://am:9093/"
    assert heartbeat_lite.redact_channel_url("https://x/api/v2/event", "canopsis") == "https://x/api/v2/event"
    assert heartbeat_lite.redact_channel_url("smtp://u:pw@mail:25?from=a@b&to=c@d", "email") == \
        "smtp://u:***@mail:25?from=***&to=***"


###############################################################################
# The forward channel
###############################################################################


def test_forward_url_is_the_default_canopsis_channel_named_forward(clock, hooks):
    with heartbeat_lite.create_app(clock=clock, forward_url=hooks.url("/api/v2/event", "u:pw@")) as service:
        app = client(service)
        shown = app.get("/api/v2/channel/forward").json
        assert {key: shown[key] for key in ("_id", "name", "kind", "default", "configured_by", "url")} == {
            "_id": "forward", "name": "forward", "kind": "canopsis", "default": True,
            "configured_by": "--forward-url", "url": hooks.url("/api/v2/event", "u:***@")}
        for method in ("PUT", "DELETE"):
            answer = app.request("/api/v2/channel/forward", method=method, status=409,
                                 body=json.dumps({"name": "f", "kind": "canopsis", "url": hooks.url()}).encode())
            assert answer.json == {"name": "forward", "description": "channel set by --forward-url: change the setting"}
        silent = heartbeat(app, channels=[], pattern={"job": "silent"})
        routed = heartbeat(app, channels=["forward"], pattern={"job": "routed"})
        go_down(service, clock)
        assert service.deliver() is None
        assert sorted(event["heartbeat_id"] for batch in delivered(hooks, "/api/v2/event") for event in batch) == \
            sorted([routed, *[doc["_id"] for doc in app.get("/api/v2/heartbeat").json
                              if doc["_id"] not in (silent, routed)]])


###############################################################################
# Routing
###############################################################################


def test_alarms_go_to_the_default_channels_unless_the_heartbeat_names_its_own(service, app, hooks, clock):
    default = channel(app, url=hooks.url("/default"), default=True)
    other = channel(app, url=hooks.url("/other"))
    by_default = heartbeat(app, pattern={"job": "a"})
    named = heartbeat(app, pattern={"job": "b"}, channels=[other])
    both = heartbeat(app, pattern={"job": "c"}, channels=[other, default])
    nowhere = heartbeat(app, pattern={"job": "d"}, channels=[])
    go_down(service, clock)
    assert service.deliver() is None
    assert sorted(b["heartbeat"]["_id"] for b in delivered(hooks, "/default")) == sorted([by_default, both])
    assert sorted(b["heartbeat"]["_id"] for b in delivered(hooks, "/other")) == sorted([named, both])
    assert nowhere not in json.dumps(hooks.bodies("/default") + hooks.bodies("/other"))
    assert app.get(f"/api/v2/heartbeat/{named}").json["channels"] == [other]
    assert "channels" not in app.get(f"/api/v2/heartbeat/{by_default}").json


@pytest.mark.parametrize("changes, reason", [
    ({"channels": ["a0000000-0000-4000-8000-000000000009"]},
     "channels: no channel has the id a0000000-0000-4000-8000-000000000009"),
    ({"channels": ["not an id"]}, "channels: must be a list of"),
    ({"channels": "forward"}, "channels: must be a list of"),
    ({"escalate_after": "10m", "escalate_to": ["forward"]}, "escalate_to: no channel has the id forward"),
    ({"escalate_after": "10m"}, "escalate_after and escalate_to: give both"),
    ({"escalate_after": "10m", "escalate_to": []}, "escalate_to: must be a list of 1 to"),
    ({"escalate_after": "soon", "escalate_to": ["forward"]}, "escalate_after: must look like"),
])
def test_an_unknown_or_malformed_channel_in_a_heartbeat_is_an_invalid_heartbeat_payload(app, changes, reason):
    answer = app.post_json("/api/v2/heartbeat", body(**changes), status=400).json
    assert {key: answer[key] for key in ("name", "description")} == INVALID
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/heartbeat").json == []


def test_an_update_naming_an_unknown_channel_changes_nothing(app):
    heartbeat_id = heartbeat(app)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(channels=["a0000000-0000-4000-8000-000000000009"]),
                 status=400)
    assert "channels" not in app.get(f"/api/v2/heartbeat/{heartbeat_id}").json


def test_members_follow_their_heartbeat(service, app, hooks, clock):
    hook = channel(app, url=hooks.url())
    channel(app, url=hooks.url("/default"), default=True)
    heartbeat_id = grouped(app, channels=[hook])
    app.post_json("/api/v2/event", [host("db1"), host("db2")])
    go_down(service, clock)
    app.post_json("/api/v2/event", host("db1"))
    assert service.deliver() is None
    assert [(b["member"], b["status"], b["previous"]) for b in delivered(hooks)] == [
        ({"host": "db1"}, "down", "up"), ({"host": "db2"}, "down", "up"), ({"host": "db1"}, "up", "down")]
    assert all(b["heartbeat"]["_id"] == heartbeat_id for b in delivered(hooks))
    assert delivered(hooks, "/default") == []


def test_the_intake_alarm_goes_to_the_default_channels(clock, hooks):
    with heartbeat_lite.create_app(clock=clock, intake_silence="5m") as service:
        app = client(service)
        channel(app, url=hooks.url(), default=True)
        heartbeat(app, expected_interval="1h")
        go_down(service, clock, 301)
        app.post_json("/api/v2/event", {"any": "thing"})
        assert service.deliver() is None
        assert [(b["heartbeat"]["name"], b["status"]) for b in delivered(hooks)] == [("intake", "down"),
                                                                                      ("intake", "up")]


def test_deleting_a_channel_a_heartbeat_names_is_refused_naming_the_heartbeats(service, app, hooks, clock):
    hook = channel(app, url=hooks.url())
    spare = channel(app, url=hooks.url("/spare"))
    first = heartbeat(app, pattern={"job": "a"}, channels=[hook])
    second = heartbeat(app, pattern={"job": "b"}, channels=[spare], escalate_after="1h", escalate_to=[hook])
    answer = app.delete(f"/api/v2/channel/{hook}", status=409).json
    assert answer == {"name": hook, "description": "channel in use: heartbeats name it in channels or escalate_to",
                      "heartbeats": sorted([first, second])}
    go_down(service, clock)  # its queue fills meanwhile
    app.delete(f"/api/v2/heartbeat/{first}")
    app.put_json(f"/api/v2/heartbeat/{second}", body(pattern={"job": "b"}, channels=[spare]))
    assert app.delete(f"/api/v2/channel/{hook}").json["name"] == "channel removed"
    assert service.store.queues().get(hook) is None  # its queue went with it


###############################################################################
# Reminders and escalation
###############################################################################


def test_a_channel_with_repeat_every_reminds_while_the_alarm_is_open_then_stops(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True, repeat_every="10m")
    heartbeat(app)
    go_down(service, clock)
    for _ in range(3):
        assert service.tick() <= 600  # the scheduler knows the reminder is due
        clock.advance(600)
        service.tick()
    app.post_json("/api/v2/event", C01)
    assert service.store.next_followup() is None
    assert service.deliver() is None
    assert [(b["status"], b["reason"].split(" since")[0]) for b in delivered(hooks)] == [
        ("down", "no matching event for 1m"), ("down", "still down"), ("down", "still down"),
        ("down", "still down"), ("up", "matching event received")]


def test_a_late_tick_sends_one_reminder_not_one_per_missed_period(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True, repeat_every="1m")
    heartbeat(app)
    go_down(service, clock)
    go_down(service, clock, 3600)  # an hour without a tick
    go_down(service, clock, 30)
    assert service.deliver() is None
    assert [b["reason"].split(" since")[0] for b in delivered(hooks)] == ["no matching event for 1m", "still down"]


def test_reminders_and_escalations_survive_a_restart(restart, hooks, clock):
    with restart() as service:
        app = client(service)
        hook = channel(app, url=hooks.url(), default=True, repeat_every="10m")
        boss = channel(app, url=hooks.url("/boss"))
        heartbeat(app, escalate_after="15m", escalate_to=[boss])
        go_down(service, clock)
        service.deliver()
    clock.advance(900)
    with restart() as service:
        service.tick()
        assert service.deliver() is None
    assert [b["reason"].split(" since")[0] for b in delivered(hooks)] == ["no matching event for 1m", "still down"]
    assert [b["reason"] for b in delivered(hooks, "/boss")] == ["not acknowledged 15m after it went down"]
    assert hook


def test_escalation_tells_its_channels_once_and_they_get_the_resolution(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True)
    boss = channel(app, url=hooks.url("/boss"), repeat_every="1h")
    heartbeat(app, escalate_after="30m", escalate_to=[boss])
    go_down(service, clock)  # down at 60 s (its deadline): escalation due at 1860 s
    go_down(service, clock, 1798)
    assert service.deliver() is None and delivered(hooks, "/boss") == []
    go_down(service, clock, 1)
    go_down(service, clock, 1000)
    app.post_json("/api/v2/event", C01)
    assert service.deliver() is None
    assert [(b["status"], b["reason"]) for b in delivered(hooks, "/boss")] == [
        ("down", "not acknowledged 30m after it went down"), ("up", "matching event received")]
    assert [b["status"] for b in delivered(hooks)] == ["down", "up"]


def test_a_late_heartbeat_escalates_only_once_down_and_without_escalation_channels_get_no_resolution(
        service, app, hooks, clock):
    boss = channel(app, url=hooks.url("/boss"))
    heartbeat(app, late_after="30s", escalate_after="1m", escalate_to=[boss])
    go_down(service, clock, 31)  # late
    go_down(service, clock, 60)  # down at 60 s; escalation due at 120 s
    app.post_json("/api/v2/event", C01)
    go_down(service, clock, 40)  # the escalation was due at 120 s; the heartbeat is late again, not down
    assert service.deliver() is None
    assert delivered(hooks, "/boss") == []


###############################################################################
# Acknowledgement
###############################################################################


def test_an_ack_stops_reminders_and_escalation_and_shows_in_status_and_history(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True, repeat_every="5m")
    boss = channel(app, url=hooks.url("/boss"))
    heartbeat_id = heartbeat(app, escalate_after="10m", escalate_to=[boss])
    go_down(service, clock)
    answer = app.post_json(f"/api/v2/heartbeat/{heartbeat_id}/ack", {"comment": "restoring the backup"})
    assert answer.json == {"name": "alarm acknowledged", "description": heartbeat_id}
    ack = {"by": "root", "at": clock.now, "comment": "restoring the backup"}
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["ack"] == ack
    entry = app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"][0]
    assert entry == {"ack": ack, "at": clock.now, "status": "down", "reason": "acknowledged by root: restoring the backup"}
    go_down(service, clock, 3600)
    assert service.deliver() is None
    assert [(b["status"], b["reason"]) for b in delivered(hooks)] == [
        ("down", "no matching event for 1m"), ("down", "acknowledged by root: restoring the backup")]
    assert delivered(hooks, "/boss") == []
    app.post_json("/api/v2/event", C01)
    assert "ack" not in app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json  # cleared by the resolution
    go_down(service, clock)  # a new alarm: reminders again
    go_down(service, clock, 300)
    assert service.deliver() is None
    assert [b["reason"].split(" since")[0] for b in delivered(hooks)][-2:] == ["no matching event for 1m", "still down"]


def test_an_ack_with_no_open_alarm_is_a_409_and_a_bad_body_a_400(service, app, clock):
    heartbeat_id = heartbeat(app)
    assert app.post(f"/api/v2/heartbeat/{heartbeat_id}/ack", status=409).json == {
        "name": heartbeat_id, "description": "no open alarm"}
    go_down(service, clock)
    for bad in (b"[]", b'{"comment": 5}', b'{"by": "me"}', b"{"):
        assert app.post(f"/api/v2/heartbeat/{heartbeat_id}/ack", bad, status=400).json["description"] == \
            "invalid heartbeat payload."
    assert "ack" not in app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/ack")  # an empty body: no comment
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["ack"]["comment"] is None
    assert app.post("/api/v2/heartbeat/a0000000-0000-4000-8000-000000000000/ack", status=404).json[
        "description"] == "heartbeat not found"


def test_an_ack_on_a_grouped_heartbeat_acknowledges_every_open_member_alarm(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True, repeat_every="5m")
    heartbeat_id = grouped(app)
    app.post_json("/api/v2/event", [host("db1"), host("db2"), host("db3")])
    clock.advance(50)
    app.post_json("/api/v2/event", host("db3"))
    go_down(service, clock, 11)  # db1 and db2 down, db3 up
    app.post_json(f"/api/v2/heartbeat/{heartbeat_id}/ack", {"comment": "network"})
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["ack"]["comment"] == "network"
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"][0]["members"] == 2
    go_down(service, clock, 3600)  # db3 goes down too: a new alarm, not acknowledged
    assert "ack" not in app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
    assert service.deliver() is None
    reminded = [b["member"] for b in delivered(hooks) if b["reason"].startswith("still")]
    assert reminded and all(member == {"host": "db3"} for member in reminded)


def test_a_canopsis_channel_gets_a_canopsis_ack_event(service, app, hooks, clock):
    channel(app, "canopsis", hooks.url("/api/v2/event"), default=True)
    heartbeat_id = heartbeat(app)
    go_down(service, clock)
    app.post_json(f"/api/v2/heartbeat/{heartbeat_id}/ack", {"comment": "on it"})
    assert service.deliver() is None
    alarm, ack = [event for batch in delivered(hooks, "/api/v2/event") for event in batch]
    assert alarm["event_type"] == "check" and alarm["state"] == 3
    assert ack == {"event_type": "ack", "connector": "heartbeat", "connector_name": "heartbeat",
                   "source_type": "resource", "component": "heartbeats", "resource": alarm["resource"],
                   "author": "root", "output": "on it", "timestamp": int(clock.now),
                   "heartbeat_id": heartbeat_id, "heartbeat_name": "Heartbeat"}


###############################################################################
# Delivery: one queue per channel
###############################################################################


def test_a_failing_channel_never_delays_another_and_keeps_its_own_order_and_backoff(service, app, hooks, clock):
    hooks.statuses["/bad"] = [503, 503]
    bad = channel(app, url=hooks.url("/bad"), default=True)
    channel(app, url=hooks.url("/good"), default=True)
    ids = [heartbeat(app, pattern={"job": str(i)}) for i in range(3)]
    go_down(service, clock)
    assert service.deliver() == 1.0  # the bad one's first backoff; the good one delivered
    assert [b["heartbeat"]["_id"] for b in delivered(hooks, "/good")] == ids
    assert service.deliver(bad) == 2.0
    assert app.get(f"/api/v2/channel/{bad}").json["waiting"] == 3
    assert service.deliver() is None
    assert [b["heartbeat"]["_id"] for b in delivered(hooks, "/bad")] == ids  # in order, at least once
    shown = app.get(f"/api/v2/channel/{bad}").json
    assert (shown["waiting"], shown["failing_since"], shown["last_error"]) == (0, None, None)
    assert shown["last_delivery"] == clock.now


@pytest.mark.slow
def test_a_hanging_channel_never_delays_another_in_server_mode(tmp_path, hooks):
    hooks.hang.add("/hang")
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db")) as service:
        app = client(service)
        hang = channel(app, url=hooks.url("/hang"), default=True)
        channel(app, url=hooks.url("/good"), default=True)
        service.deliveries.workers[hang].timeout = 2.0  # its attempt's deadline: what stopping waits for at most
        with heartbeat_lite.serve(service):
            app.post_json("/api/v2/heartbeat", body(expected_interval="1s"))
            assert hooks.wait_for(1, "/good", timeout=10), "the good channel waited for the hanging one"
            app.post_json("/api/v2/event", C01)
            assert hooks.wait_for(2, "/good", timeout=5)


@pytest.mark.parametrize("status", [301, 302, 307, 308, 408, 429, 500, 502, 503])
def test_a_redirect_a_timeout_a_throttle_or_a_server_error_is_retried_never_followed_nor_set_aside(
        service, app, hooks, clock, status):
    hooks.statuses["/hook"] = [status]
    hook = channel(app, url=hooks.url(), default=True)
    heartbeat(app)
    go_down(service, clock)
    assert service.deliver() == 1.0
    shown = app.get(f"/api/v2/channel/{hook}").json
    assert (shown["waiting"], shown["set_aside"]) == (1, 0)
    assert shown["last_error"] == f"HTTP {status}" + (" (a redirect: not followed)" if status < 400 else "")
    assert service.deliver() is None
    assert len(delivered(hooks)) == 1 and [path for path, *_ in hooks.requests] == ["/hook", "/hook"]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_an_event_a_target_refuses_for_good_is_set_aside_shown_and_the_next_ones_go(service, app, hooks, clock, status):
    hooks.statuses["/hook"] = [status]
    hook = channel(app, url=hooks.url(), default=True)
    first, second = heartbeat(app, pattern={"job": "1"}), heartbeat(app, pattern={"job": "2"})
    go_down(service, clock)
    assert service.deliver() is None
    assert [b["heartbeat"]["_id"] for b in delivered(hooks)] == [second]
    shown = app.get(f"/api/v2/channel/{hook}").json
    assert (shown["waiting"], shown["set_aside"], shown["last_refusal"]) == (0, 1, f"HTTP {status}")
    samples = parse_prometheus(app.get("/metrics").text)
    labels = (("channel", hook), ("name", "ops-webhook"), ("kind", "webhook"))
    assert samples[("heartbeat_lite_channel_set_aside_events", labels)] == 1
    assert "<b>ops-webhook</b> refused 1 event(s) for good" in app.get("/").text
    health = client(service, user=None).get("/healthz").json
    assert health == {"status": "degraded", "outbox": 0,
                      "warnings": ["ops-webhook refused 1 event(s) for good: set aside (see GET /api/v2/channel)"]}
    # fixing the channel sends again what it refused
    app.put_json(f"/api/v2/channel/{hook}", {"name": "ops-webhook", "kind": "webhook", "url": hooks.url(),
                                             "default": True})
    assert service.deliver() is None
    assert [b["heartbeat"]["_id"] for b in delivered(hooks)] == [second, first]
    assert first


def test_a_target_refusing_big_bodies_gets_them_split_and_one_too_big_is_set_aside(service, app, clock):
    hooks = Hooks(limit=100_000)  # nginx answers 413 above its client_max_body_size
    try:
        forward = channel(app, "canopsis", hooks.url("/api/v2/event"), default=True)
        small = {**C01, "output": "x" * 3000}
        service.store.enqueue([{**small, "n": i} for i in range(60)], forward)  # 180 KB: two requests
        service.store.enqueue([{"huge": "y" * 600_000}], forward)  # alone, over the limit
        service.store.enqueue([{"after": True}], forward)
        assert service.deliver() is None
        received = [event for batch in hooks.bodies("/api/v2/event") for event in batch]
        assert [event.get("n") for event in received[:60]] == list(range(60)) and received[60] == {"after": True}
        assert all(len(data) <= heartbeat_lite.DELIVERY_BATCH_BYTES for _, _, data, _ in hooks.requests
                   if len(data) < 600_000)
        shown = app.get(f"/api/v2/channel/{forward}").json
        assert (shown["waiting"], shown["set_aside"], shown["last_refusal"]) == (0, 1, "HTTP 413")
    finally:
        hooks.close()


def test_a_batch_refused_for_good_is_sent_one_event_at_a_time_to_find_the_bad_one(service, app, hooks, clock):
    hooks.statuses["/api/v2/event"] = [400, 200, 400, 200]
    forward = channel(app, "canopsis", hooks.url("/api/v2/event"), default=True)
    service.store.enqueue([{"n": i} for i in range(3)], forward)
    assert service.deliver() is None
    assert [batch for batch in hooks.bodies("/api/v2/event")] == [[{"n": 0}], [{"n": 2}]]
    assert app.get(f"/api/v2/channel/{forward}").json["set_aside"] == 1


def test_healthz_degrades_when_the_oldest_undelivered_event_is_old(service, app, hooks, clock):
    hooks.statuses["/hook"] = [500] * 10
    channel(app, url=hooks.url(), default=True, name="ops-slack")
    heartbeat(app)
    go_down(service, clock)
    service.deliver()
    health = client(service, user=None)
    assert health.get("/healthz").json == {"status": "ok", "outbox": 1}
    clock.advance(heartbeat_lite.DELIVERY_STALE_SECONDS)  # queued at the deadline, a second ago before this
    assert health.get("/healthz", status=200).json == {
        "status": "degraded", "outbox": 1, "warnings": [
            f"alarms are not reaching ops-slack: 1 event(s) wait, the oldest for "
            f"{heartbeat_lite.seconds_text(heartbeat_lite.DELIVERY_STALE_SECONDS + 1)}"]}


def test_the_status_page_says_when_a_channel_fails_or_alarms_reach_no_channel(service, app, hooks, clock):
    assert "alarms reach no channel at all" in app.get("/").text
    hooks.statuses["/hook"] = [500]
    hook = channel(app, url=hooks.url(), name="ops-slack")
    heartbeat(app)
    assert "alarms of heartbeats with no <code>channels</code> field reach no channel" in app.get("/").text
    app.put_json(f"/api/v2/channel/{hook}", {"name": "ops-slack", "kind": "webhook", "url": hooks.url(),
                                             "default": True})
    page = app.get("/").text
    assert "reach no channel" not in page and "banner" not in page.split("<main", 1)[1].split("</main>")[0]
    go_down(service, clock)
    service.deliver()
    assert "alarms are not reaching <b>ops-slack</b> since" in app.get("/").text
    service.deliver()
    assert "alarms are not reaching" not in app.get("/").text


def test_metrics_say_each_channel_s_delivery(service, app, hooks, clock):
    hooks.statuses["/bad"] = [500]
    good = channel(app, url=hooks.url("/good"), default=True, name="good")
    bad = channel(app, url=hooks.url("/bad"), default=True, name="bad")
    heartbeat(app)
    go_down(service, clock)
    service.deliver()
    samples = parse_prometheus(app.get("/metrics").text)

    def sample(name, channel_id, channel_name):
        return samples.get((name, (("channel", channel_id), ("name", channel_name), ("kind", "webhook"))))

    assert sample("heartbeat_lite_channel_waiting_events", good, "good") == 0
    assert sample("heartbeat_lite_channel_waiting_events", bad, "bad") == 1
    assert sample("heartbeat_lite_channel_failing", bad, "bad") == 1
    assert sample("heartbeat_lite_channel_failing", good, "good") == 0
    assert sample("heartbeat_lite_channel_last_delivery_timestamp_seconds", good, "good") == clock.now
    assert sample("heartbeat_lite_channel_last_delivery_timestamp_seconds", bad, "bad") is None
    assert sample("heartbeat_lite_channel_oldest_waiting_timestamp_seconds", bad, "bad") == clock.now - 1  # its deadline


def test_the_test_route_answers_what_the_target_said_never_a_5xx(app, hooks):
    ok = channel(app, url=hooks.url())
    assert app.post(f"/api/v2/channel/{ok}/test").json == {"delivered": True, "status": 200, "error": None}
    assert hooks.bodies()[0]["status"] == "test"
    hooks.statuses["/failing"] = [500]
    failing = channel(app, url=hooks.url("/failing"))
    assert app.post(f"/api/v2/channel/{failing}/test").json == {"delivered": False, "status": 500,
                                                                 "error": "HTTP 500"}
    nowhere = channel(app, url="http://127.0.0.1:9/x?token=s3cret")
    answer = app.post(f"/api/v2/channel/{nowhere}/test").json
    assert (answer["delivered"], answer["status"]) == (False, None) and "s3cret" not in answer["error"]
    canopsis = channel(app, "canopsis", hooks.url("/api/v2/event"))
    app.post(f"/api/v2/channel/{canopsis}/test")
    assert hooks.bodies("/api/v2/event")[0][0]["resource"] == "channel-test"


###############################################################################
# What each kind sends (local targets check the documented bodies)
###############################################################################


def alarm_and_resolution(service, app, clock, **changes):
    heartbeat_id = heartbeat(app, **changes)
    go_down(service, clock)
    app.post_json("/api/v2/event", C01)
    assert service.deliver() is None
    return heartbeat_id


def test_a_webhook_sends_the_documented_keys(clock, hooks):
    with heartbeat_lite.create_app(clock=clock, public_url="https://hb.example.com/") as service:
        app = client(service)
        channel(app, url=hooks.url(), default=True)
        heartbeat_id = alarm_and_resolution(service, app, clock)
    down, up = delivered(hooks)
    assert down == {"heartbeat": {"_id": heartbeat_id, "name": "Heartbeat", "slug": None}, "member": None,
                    "status": "down", "previous": "pending", "since": T0 + 60,
                    "output": "Une note personnalisable",
                    "reason": "no matching event for 1m", "url": f"https://hb.example.com/heartbeat/{heartbeat_id}"}
    assert (up["status"], up["previous"], up["reason"]) == ("up", "down", "matching event received")
    assert hooks.requests[0][1]["Content-Type"] == "application/json"


def test_a_webhook_template_gets_its_placeholders_json_escaped(service, app, hooks, clock):
    template = '{"msg": "{name} is {status}: {output}", "who": {member}, "at": {since}, "id": "{id}"}'
    channel(app, url=hooks.url(), default=True, template=template, headers={"X-Source": "hb"})
    heartbeat_id = heartbeat(app, name='say "hi" \\ now', output="line 1\nline 2")
    go_down(service, clock)
    assert service.deliver() is None
    assert delivered(hooks) == [{"msg": 'say "hi" \\ now is down: line 1\nline 2', "who": None,
                                 "at": T0 + 60, "id": heartbeat_id}]
    assert hooks.requests[0][1]["X-Source"] == "hb"


def test_slack_gets_text_and_blocks(service, app, hooks, clock):
    channel(app, "slack", hooks.url(), default=True)
    alarm_and_resolution(service, app, clock, name="backup <prod> & co")
    down, up = delivered(hooks)
    assert down["text"] == ":red_circle: backup <prod> & co is DOWN"
    assert down["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn",
                                                             "text": ":red_circle: *backup &lt;prod&gt; &amp; co is DOWN*"}}
    fields = {field["text"].split("\n")[0]: field["text"].split("\n", 1)[1] for field in down["blocks"][1]["fields"]}
    assert fields["*Status*"] == "down (was pending)" and fields["*Output*"] == "Une note personnalisable"
    assert fields["*Last event*"] == "never" and fields["*Since*"].endswith("UTC")
    assert up["text"] == ":large_green_circle: backup <prod> & co is back up"


def test_teams_gets_a_workflows_message_with_an_adaptive_card(clock, hooks):
    with heartbeat_lite.create_app(clock=clock, public_url="https://hb.example.com") as service:
        app = client(service)
        channel(app, "teams", hooks.url(), default=True)
        heartbeat_id = alarm_and_resolution(service, app, clock)
    down = delivered(hooks)[0]
    assert down["type"] == "message" and len(down["attachments"]) == 1
    attachment = down["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == "Heartbeat is DOWN" and card["body"][0]["color"] == "Attention"
    assert {"title": "Reason", "value": "no matching event for 1m"} in card["body"][1]["facts"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in heartbeat-lite",
                                "url": f"https://hb.example.com/heartbeat/{heartbeat_id}"}]


def test_ntfy_gets_a_json_publish_at_the_server_root_with_priorities(service, app, hooks, clock):
    channel(app, "ntfy", hooks.url("/ops-alarms", userinfo=":tk_token@"), default=True)
    heartbeat(app, late_after="30s")
    go_down(service, clock, 31)
    go_down(service, clock, 30)
    app.post_json("/api/v2/event", C01)
    assert service.deliver() is None
    late, down, up = delivered(hooks, "/")
    assert [(b["topic"], b["priority"], b["title"]) for b in (late, down, up)] == [
        ("ops-alarms", 3, "Heartbeat is LATE"), ("ops-alarms", 5, "Heartbeat is DOWN"),
        ("ops-alarms", 1, "Heartbeat is back up")]
    assert down["tags"] == ["rotating_light", "heartbeat-lite"] and "Reason: no matching event for 1m" in down["message"]
    assert hooks.requests[0][1]["Authorization"] == "Basic OnRrX3Rva2Vu"  # ":tk_token": an access token


def test_canopsis_gets_today_s_event_arrays(service, app, hooks, clock):
    channel(app, "canopsis", hooks.url("/api/v2/event"), default=True)
    heartbeat_id = alarm_and_resolution(service, app, clock)
    events = [event for batch in delivered(hooks, "/api/v2/event") for event in batch]
    assert [(e["event_type"], e["state"], e["heartbeat_id"]) for e in events] == [
        ("check", 3, heartbeat_id), ("check", 0, heartbeat_id)]
    assert events[0]["resource"] == "connector:connect.connector_name:c01"


def test_alertmanager_gets_alerts_late_resolved_when_down_opens(service, app, hooks, clock):
    channel(app, "alertmanager", hooks.url("/am/"), default=True, repeat_every="1m")
    heartbeat_id = grouped(app, late_after="30s")
    app.post_json("/api/v2/event", host("db1"))
    go_down(service, clock, 31)
    go_down(service, clock, 30)
    go_down(service, clock, 300)  # no reminder: Alertmanager is sent open alerts again on its own
    app.post_json("/api/v2/event", host("db1"))
    assert service.deliver() is None
    batches = delivered(hooks, "/am/api/v2/alerts")
    alerts = [alert for batch in batches for alert in batch]
    assert [(a["labels"]["alertname"], "endsAt" in a) for a in alerts] == [
        ("HeartbeatLate", False), ("HeartbeatLate", True), ("HeartbeatDown", False), ("HeartbeatDown", True)]
    assert alerts[2]["labels"] == {"alertname": "HeartbeatDown", "heartbeat_id": heartbeat_id,
                                   "heartbeat": "backups", "host": "db1", "severity": "critical"}
    assert alerts[0]["labels"]["severity"] == "warning"
    assert alerts[2]["annotations"]["summary"] == "backups [host=db1] is DOWN"
    assert alerts[1]["endsAt"] == alerts[2]["startsAt"]  # the late alert ends when the down one starts


###############################################################################
# Upgrades and several instances
###############################################################################


OUTBOX_V4 = "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL);\n"


@pytest.mark.sqlite_only("builds a SQLite file of schema version 4")
def test_an_upgrade_keeps_the_undelivered_outbox_for_the_forward_channel(tmp_path, clock, hooks):
    path = str(tmp_path / "old.db")
    schema = open(f"{HERE}/schema.sql", encoding="utf-8").read()
    head, rest = schema.split("-- The durable queue of every channel")
    version_4 = head + OUTBOX_V4 + rest[rest.index("-- Every state change"):].replace(
        f"PRAGMA user_version = {heartbeat_lite.SCHEMA_VERSION};", "PRAGMA user_version = 4;")
    with sqlite3.connect(path) as conn:
        conn.executescript(version_4.split("-- Notification channels")[0] if "-- Notification" in version_4
                           else version_4)
        conn.executemany("INSERT INTO outbox (event) VALUES (?)",
                         [(json.dumps({"state": 3, "n": i, "timestamp": 1000 + i}),) for i in range(3)])
    with heartbeat_lite.create_app(db=path, clock=clock, forward_url=hooks.url("/api/v2/event")) as service:
        assert client(service).get("/api/v2/channel/forward").json["waiting"] == 3
        assert service.deliver() is None
    assert [event["n"] for batch in hooks.bodies("/api/v2/event") for event in batch] == [0, 1, 2]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION


@pytest.mark.postgresql
def test_an_upgraded_postgresql_database_keeps_its_outbox_for_the_forward_channel(pg_url, clock, hooks):
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what version 4 had of the outbox and meta
        conn.execute("CREATE TABLE outbox (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event TEXT NOT NULL)")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)")
        conn.execute("CREATE TABLE changes (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, instance TEXT NOT "
                     "NULL, kind TEXT NOT NULL CHECK (kind IN ('heartbeat', 'maintenance')), object_id TEXT NOT NULL, "
                     "at TIMESTAMPTZ NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO meta VALUES ('schema_version', 4)")
        for i in range(2):
            conn.execute("INSERT INTO outbox (event) VALUES (%s)", (json.dumps({"state": 3, "n": i, "timestamp": 5}),))
    with heartbeat_lite.create_app(db=pg_url, clock=clock, forward_url=hooks.url("/api/v2/event")) as service:
        app = client(service)
        assert app.get("/api/v2/channel/forward").json["waiting"] == 2
        assert service.deliver() is None
        channel(app, url=hooks.url())  # a channel's change goes through the feed the old CHECK refused
    assert [event["n"] for batch in hooks.bodies("/api/v2/event") for event in batch] == [0, 1]


@pytest.mark.postgresql
def test_each_channel_s_queue_is_delivered_by_one_instance_at_a_time(pg_url, clock, hooks):
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as a, \
            heartbeat_lite.create_app(db=pg_url, clock=clock) as b:
        app = client(a)
        first = channel(app, url=hooks.url("/first"), default=True)
        second = channel(app, url=hooks.url("/second"), default=True)
        b.sync()
        assert set(b.deliveries.workers) == {first, second}  # the other instance follows the channels
        heartbeat(app)
        go_down(a, clock)
        with a.store.outbox_lease(first) as leased:
            assert leased
            assert b.deliver(first) == heartbeat_lite.OUTBOX_POLL_SECONDS  # a holds it: b waits
            assert b.deliver(second) is None  # another channel's queue is free
        assert b.deliver(first) is None
        assert len(delivered(hooks, "/first")) == len(delivered(hooks, "/second")) == 1


###############################################################################
# The message text
###############################################################################


def test_a_message_says_what_since_when_the_last_event_the_output_the_member_and_links_the_page():
    notice = {"type": "alarm", "heartbeat": {"_id": "x", "name": "backups", "slug": None},
              "member": {"host": "db1"}, "status": "down", "previous": "up", "since": 1607680900,
              "alarm_since": 1607680900, "at": 1607680900, "output": "no backup", "reason": "no matching event for 1m",
              "last_event": 1607680840, "ack": None}
    assert heartbeat_lite.notice_title(notice) == "backups [host=db1] is DOWN"
    assert heartbeat_lite.notice_text(notice, "https://hb/heartbeat/x").split("\n") == [
        "Status: down (was up)", "Since: 2020-12-11 10:01:40 UTC", "Last event: 2020-12-11 10:00:40 UTC",
        "Member: host=db1", "Output: no backup", "Reason: no matching event for 1m", "Details: https://hb/heartbeat/x"]
    message = heartbeat_lite.email_message(notice, "https://hb/heartbeat/x", "hb@example.com", ["ops@example.com"])
    assert message["Subject"] == "[heartbeat-lite] backups [host=db1] is DOWN"
    assert "Details: https://hb/heartbeat/x" in message.get_content()


def test_links_start_with_the_public_url_or_the_listen_address(tmp_path, hooks):
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db")) as service:
        client(service).post_json("/api/v2/channel", {"name": "h", "kind": "webhook", "url": hooks.url(),
                                                      "default": True})
        with heartbeat_lite.serve(service) as base_url:
            client(service).post_json("/api/v2/heartbeat", body(expected_interval="1s"))
            assert hooks.wait_for(1)
    assert delivered(hooks)[0]["url"].startswith(f"{base_url}/heartbeat/")


def test_public_url_and_ca_file_are_checked_at_start(tmp_path):
    with pytest.raises(heartbeat_lite.ConfigError, match="public_url: must be an http"):
        heartbeat_lite.create_app(public_url="hb.example.com")
    with pytest.raises(heartbeat_lite.ConfigError, match="ca_file: cannot load certificates"):
        heartbeat_lite.create_app(ca_file=str(tmp_path / "missing.pem"))


def test_public_url_names_a_host_the_default_credentials_answer(clock):
    with heartbeat_lite.create_app(clock=clock, public_url="https://hb.example.com") as service:
        app = client(service)
        assert app.get("/api/v2/heartbeat", headers={"Host": "hb.example.com"}).status_int == 200
        assert app.get("/api/v2/heartbeat", headers={"Host": "evil.example"}, status=421)


def test_a_slow_channel_does_not_hold_the_engine(service, app, hooks, clock):
    # deleting a channel stops its worker without waiting for its attempt
    hooks.hang.add("/hang")
    hang = channel(app, url=hooks.url("/hang"))
    worker = service.deliveries.workers[hang]
    worker.start()
    started = time.monotonic()
    app.delete(f"/api/v2/channel/{hang}")
    assert time.monotonic() - started < 2
    assert hang not in service.deliveries.workers
    assert threading.active_count() < 100


###############################################################################
# Settings and the OpenAPI description
###############################################################################


@pytest.mark.parametrize("argv, environ, message", [
    (["--public-url", "hb.example.com"], {}, "--public-url: must be an http:// or https:// URL with a host"),
    ([], {"HEARTBEAT_LITE_PUBLIC_URL": "ftp://x"}, "HEARTBEAT_LITE_PUBLIC_URL: must be an http:// or https://"),
    (["--ca-file", "/nonexistent/ca.pem"], {}, "--ca-file: cannot load certificates from /nonexistent/ca.pem"),
])
def test_a_bad_public_url_or_ca_file_is_a_configuration_error_naming_it(argv, environ, message):
    with pytest.raises(heartbeat_lite.ConfigError, match=message.replace(".", r"\.")):
        heartbeat_lite.check_settings(heartbeat_lite.build_parser(environ).parse_args(argv), environ)


def test_the_public_url_setting_is_taken_from_the_flag_or_its_environment_twin():
    parser = heartbeat_lite.build_parser({})
    args = heartbeat_lite.check_settings(parser.parse_args([]), {"HEARTBEAT_LITE_PUBLIC_URL": "https://hb.example.com/"})
    assert args.public_url == "https://hb.example.com"
    assert heartbeat_lite.check_settings(parser.parse_args([]), {}).public_url is None


def test_channel_answers_match_the_openapi_description(spec, clock, hooks):
    from testing_support import Recorder, described_answer, lookup, pointer, schema_errors
    with heartbeat_lite.create_app(clock=clock, forward_url=hooks.url("/api/v2/event")) as service:
        call = Recorder(service)
        doc = {"name": "h", "kind": "webhook", "url": hooks.url(), "headers": {"X-A": "b"}, "repeat_every": "1h"}
        hook = call("POST", "/api/v2/channel", 200, body=json.dumps(doc).encode()).json["description"]
        call("POST", "/api/v2/channel", 400, body=b'{"kind": "pager"}')
        call("GET", "/api/v2/channel", 200)
        call("GET", f"/api/v2/channel/{hook}", 200)
        call("GET", "/api/v2/channel/forward", 200)
        call("GET", "/api/v2/channel/a0000000-0000-4000-8000-000000000000", 404)
        call("PUT", f"/api/v2/channel/{hook}", 200, body=json.dumps({**doc, "default": True}).encode())
        call("PUT", "/api/v2/channel/forward", 409, body=json.dumps(doc).encode())
        call("POST", f"/api/v2/channel/{hook}/test", 200)
        heartbeat_id = call("POST", "/api/v2/heartbeat", 200, body=json.dumps(body(channels=[hook])).encode()).json[
            "description"]
        call("DELETE", f"/api/v2/channel/{hook}", 409)
        call("POST", f"/api/v2/heartbeat/{heartbeat_id}/ack", 409)
        clock.advance(61)
        service.tick()
        call("POST", f"/api/v2/heartbeat/{heartbeat_id}/ack", 200, body=b'{"comment": "x"}')
        call("GET", f"/api/v2/heartbeat/{heartbeat_id}/status", 200)
        clock.advance(heartbeat_lite.DELIVERY_STALE_SECONDS + 1)
        call("GET", "/healthz", 200)
        assert call.answers[-1][2].json["status"] == "degraded"
        call("DELETE", f"/api/v2/heartbeat/{heartbeat_id}", 200)
        call("DELETE", f"/api/v2/channel/{hook}", 200)
    for method, path, response in call.answers:
        answer = described_answer(spec, method, path, response.status_int)
        assert schema_errors(spec, answer + pointer("content", "application/json", "schema")[1:],
                             response.json) == [], (method, path, response.status_int)
        assert lookup(spec, answer)


def test_a_maintenance_window_starting_over_a_down_heartbeat_keeps_its_ack_and_reminders(service, app, hooks, clock):
    from testing_support import window
    channel(app, url=hooks.url(), default=True, repeat_every="10m")
    heartbeat_id = heartbeat(app)
    go_down(service, clock)
    app.post_json(f"/api/v2/heartbeat/{heartbeat_id}/ack", {"comment": "known"})
    window(app, clock.now + 60, clock.now + 7200)
    go_down(service, clock, 120)  # the window starts: recorded in the history, the alarm stays open
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["ack"]["comment"] == "known"


def test_an_open_alarm_sent_again_keeps_the_output_it_was_raised_with(service, app, clock):
    # an Alertmanager's re-send is the alarm raised (a failure's own words), not the stored output
    channel_id = app.post_json("/api/v2/channel", {"name": "am", "kind": "alertmanager",
                                                   "url": "http://127.0.0.1:9", "default": True}).json["description"]
    heartbeat_id = service.engine.create(heartbeat_lite.validate_heartbeat(body(), "root"))
    client(service, user=None).post(f"/ping/{heartbeat_id}/fail", "disk full")
    [notice] = service.deliveries.workers[channel_id].open_notices(channel_id)
    assert notice["output"] == "failed: disk full"
    clock.advance(5)
    client(service, user=None).get(f"/ping/{heartbeat_id}")
    clock.advance(3600)
    service.tick()  # down by itself this time: the stored output
    [notice] = service.deliveries.workers[channel_id].open_notices(channel_id)
    assert notice["output"] == body()["output"]


def test_a_heartbeat_back_up_by_an_event_says_that_event_is_its_last(service, app, hooks, clock):
    # the event that brings it back is its last event: not "never", nor the one before
    channel(app, "ntfy", hooks.url() + "/ops", default=True)
    heartbeat(app, name="fed")
    app.post_json("/api/v2/event", C01)
    clock.advance(120)
    service.tick()
    clock.advance(30)
    app.post_json("/api/v2/event", C01)
    assert service.deliver() is None
    messages = [body["message"].split("\n") for body in delivered(hooks)]
    assert [line for line in messages[-1] if line.startswith("Last event")] == [
        "Last event: " + heartbeat_lite.datetime.datetime.fromtimestamp(clock.now, heartbeat_lite.UTC_ZONE)
        .strftime("%Y-%m-%d %H:%M:%S UTC")]
    assert messages[-1][0] == "Status: up (was down)"


def test_a_member_back_up_by_an_event_says_that_event_is_its_last(service, app, hooks, clock):
    channel(app, "ntfy", hooks.url() + "/ops", default=True)
    grouped(app)
    app.post_json("/api/v2/event", host("db1"))
    clock.advance(120)
    service.tick()
    clock.advance(30)
    app.post_json("/api/v2/event", host("db1"))
    assert service.deliver() is None
    last = delivered(hooks)[-1]["message"].split("\n")
    assert last[0] == "Status: up (was down)" and "Member: host=db1" in last
    assert [line for line in last if line.startswith("Last event")] == [
        "Last event: " + heartbeat_lite.datetime.datetime.fromtimestamp(clock.now, heartbeat_lite.UTC_ZONE)
        .strftime("%Y-%m-%d %H:%M:%S UTC")]


def test_a_reminder_of_a_failure_says_what_the_failure_said(service, app, hooks, clock):
    channel(app, url=hooks.url(), default=True, repeat_every="1m")
    heartbeat_id = heartbeat(app, name="job")
    client(service, user=None).post(f"/ping/{heartbeat_id}/fail", "disk full")
    assert service.deliver() is None
    clock.advance(61)
    service.tick()
    assert service.deliver() is None
    assert [(body["status"], body["output"]) for body in delivered(hooks)] == [("down", "failed: disk full")] * 2
