"""Tests for the engine's structure: the transition funnel every state change
goes through (each path gives history, alarm event, outbox row and
publication together), the one expiry state machine (pure, on plain dicts),
the one status vocabulary and severity order, and a transition applied from
outside expiry (a job reporting its own failure)."""

import json
import logging
import os
import subprocess
import sys
import threading
import types

import pytest

import heartbeat_lite
from heartbeat_lite import expiry_steps
from testing_support import C01, HERE, T0, FakeClock, body, client, create, local

GROUPED = dict(pattern={"connector": "backup"}, group_by=["host"], expected_interval="1m")


class RecordingSink:
    """A sink of the funnel noting what it is handed, as a notification
    channel would be."""

    def __init__(self):
        self.transitions = []
        self.published_calls = 0

    def receive(self, transitions, events):
        assert [t.event for t in transitions if t.event is not None] == events
        self.transitions += transitions

    def published(self):
        self.published_calls += 1


###############################################################################
# The funnel: every path, table-driven
###############################################################################


def _history(service):
    return [tuple(row) for row in service.store._query(
        "SELECT seq, heartbeat_id, at, status, reason, member FROM history ORDER BY seq")]


def _outbox(service):
    return [json.loads(event) for _, event in service.store.outbox_batch(100_000)]


def _grouped_member_down(app, clock, service, **fields):
    heartbeat_id = create(app, body(**{**GROUPED, **fields}))
    app.post_json("/api/v2/event", {"connector": "backup", "host": "a"})
    clock.advance(61)
    service.tick()
    return heartbeat_id


def _down(app, clock, service, **fields):
    heartbeat_id = create(app, body(**fields))
    clock.advance(61)
    service.tick()
    return heartbeat_id


def _paused(app, clock, service):
    heartbeat_id = create(app, body())
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    return heartbeat_id


def _window_now(app, clock, pattern=None):
    return app.post_json("/api/v2/maintenance", {
        "name": "w", "pattern": pattern or {}, "start": local(clock.now - 10),
        "end": local(clock.now + 600)}).json["description"]


# (what, service options, prepare(app, clock, service) -> context, act(app, clock, service, context),
#  the (old, new) of each transition, the state of each event)
SITES = [
    ("create", {}, lambda app, clock, service: None,
     lambda app, clock, service, _: create(app, body(**GROUPED, expected_members=[{"host": "x"}])),
     [(None, "pending"), (None, "pending")], []),
    ("update: late no more under a longer late_after", {},
     lambda app, clock, service: (create(app, body(late_after="30s")), clock.advance(31), service.tick())[0],
     lambda app, clock, service, hb: app.put_json(f"/api/v2/heartbeat/{hb}", body(late_after="45s")),
     [("late", "pending")], [0]),
    ("update: a down heartbeat's alarm moves to its new pattern", {}, _down,
     lambda app, clock, service, hb: app.put_json(f"/api/v2/heartbeat/{hb}", body(pattern={"k": "v"})),
     [("down", "down"), ("down", "down")], [0, 3]),
    ("update: group_by changed", {}, _grouped_member_down,
     lambda app, clock, service, hb: app.put_json(f"/api/v2/heartbeat/{hb}", body(**{**GROUPED,
                                                                                  "group_by": ["app"]})),
     [("down", "deleted"), ("down", "pending")], [0]),
    ("update: a late member is not late any more", {},
     lambda app, clock, service: (
         create(app, body(**GROUPED, late_after="30s")),
         app.post_json("/api/v2/event", {"connector": "backup", "host": "a"}), clock.advance(31), service.tick())[0],
     lambda app, clock, service, hb: app.put_json(f"/api/v2/heartbeat/{hb}", body(**GROUPED, late_after="45s")),
     [("late", "up"), (None, "up"), ("late", "up")], [0]),
    ("delete", {}, _down, lambda app, clock, service, hb: app.delete(f"/api/v2/heartbeat/{hb}"),
     [("down", "deleted")], [0]),
    ("delete a grouped heartbeat", {}, _grouped_member_down,
     lambda app, clock, service, hb: app.delete(f"/api/v2/heartbeat/{hb}"), [("down", "deleted")], [0]),
    ("pause", {}, _down, lambda app, clock, service, hb: app.post(f"/api/v2/heartbeat/{hb}/pause"),
     [("down", "paused")], [0]),
    ("pause a grouped heartbeat", {}, _grouped_member_down,
     lambda app, clock, service, hb: app.post(f"/api/v2/heartbeat/{hb}/pause"),
     [("down", "paused"), ("down", "paused")], [0]),
    ("resume", {}, _paused,
     lambda app, clock, service, hb: app.post(f"/api/v2/heartbeat/{hb}/resume"), [("paused", "pending")], []),
    ("delete a member", {}, _grouped_member_down,
     lambda app, clock, service, hb: app.delete(f"/api/v2/heartbeat/{hb}/members?host=a"),
     [("down", "deleted"), (None, "pending")], [0]),
    ("an event: a heartbeat comes back", {}, _down,
     lambda app, clock, service, hb: app.post_json("/api/v2/event", dict(C01)), [("down", "up")], [0]),
    ("an event: a member comes back", {}, _grouped_member_down,
     lambda app, clock, service, hb: app.post_json("/api/v2/event", {"connector": "backup", "host": "a"}),
     [("down", "up"), (None, "up")], [0]),
    ("an event: a new member", {}, lambda app, clock, service: create(app, body(**GROUPED)),
     lambda app, clock, service, hb: app.post_json("/api/v2/event", {"connector": "backup", "host": "new"}),
     [(None, "up"), (None, "up")], []),
    ("expiry: late, then down, in one late tick", {},
     lambda app, clock, service: create(app, body(late_after="30s")),
     lambda app, clock, service, hb: (clock.advance(3600), service.tick()),
     [("pending", "late"), ("late", "down")], [1, 3]),
    ("expiry: a member goes down, then retires", {},
     lambda app, clock, service: (
         create(app, body(**GROUPED, retire_after="1m")),
         app.post_json("/api/v2/event", {"connector": "backup", "host": "a"}))[0],
     lambda app, clock, service, hb: (clock.advance(3600), service.tick()),
     [("up", "down"), ("down", "retired"), (None, "pending")], [3, 0]),
    ("intake silence: starts", {"intake_silence": 300}, lambda app, clock, service: None,
     lambda app, clock, service, _: (clock.advance(301), service.tick()), [("up", "down")], [3]),
    ("intake silence: ends", {"intake_silence": 300},
     lambda app, clock, service: (clock.advance(301), service.tick()),
     lambda app, clock, service, _: app.post_json("/api/v2/event", {"k": "x"}), [("down", "up")], [0]),
    ("maintenance: starts", {}, lambda app, clock, service: create(app, body()),
     lambda app, clock, service, hb: _window_now(app, clock), [("pending", "maintenance")], []),
    ("maintenance: ends", {},
     lambda app, clock, service: (create(app, body()), _window_now(app, clock))[0],
     lambda app, clock, service, hb: (clock.advance(601), service.tick()), [("pending", "pending")], []),
    ("a transition applied now: a job reports its failure", {}, lambda app, clock, service: create(app, body()),
     lambda app, clock, service, hb: service.engine.put(hb, "down", "job failed", output="failed: disk full"),
     [("pending", "down")], [3]),
]


@pytest.mark.parametrize("what, options, prepare, act, expected, states", SITES, ids=[site[0] for site in SITES])
def test_every_state_change_gives_its_history_alarm_outbox_row_and_publication_together(
        what, options, prepare, act, expected, states):
    clock = FakeClock()
    published = []
    with heartbeat_lite.create_app(clock=clock, on_alarm=published.append, forward_url="http://127.0.0.1:9/",
                                   **options) as service:
        app = client(service)
        context = prepare(app, clock, service)
        sink = RecordingSink()
        service.engine.core.sinks.append(sink)
        history_before = {row[0] for row in _history(service)}
        outbox_before, published_before = len(_outbox(service)), len(published)
        act(app, clock, service, context)
        transitions = sink.transitions
        assert [(t.old, t.new) for t in transitions] == expected
        events = [t.event for t in transitions if t.event is not None]
        assert [event["state"] for event in events] == states
        # each event is in the outbox and published, in the same order, once
        assert _outbox(service)[outbox_before:] == events
        assert published[published_before:] == events
        assert sink.published_calls == (1 if events else 0)
        # each transition recorded has its history row (deleted ones with their heartbeat)
        recorded = [(t.heartbeat_id, t.at, t.new, t.reason, t.member) for t in transitions
                    if t.record and t.heartbeat is not None]
        assert [row[1:] for row in _history(service) if row[0] not in history_before] == recorded


def test_the_alarm_count_counts_what_was_raised_not_what_moved(clock):
    with heartbeat_lite.create_app(clock=clock) as service:
        app = client(service)
        heartbeat_id = create(app, body(late_after="30s"))
        clock.advance(3600)
        service.tick()  # late, then down: two alarms
        app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(late_after="30s", pattern={"k": "v"}))  # moved
        assert service.engine.alarms_raised == 2
        assert "heartbeat_lite_alarms_raised_total 2\n" in app.get("/metrics").text


###############################################################################
# A transition applied now, from outside the event path
###############################################################################


def test_a_failure_put_now_raises_its_own_output_and_an_event_resolves_it(service, clock, alarms_seen):
    app = client(service)
    heartbeat_id = create(app, body())
    clock.advance(5)
    transition = service.engine.put(heartbeat_id, "down", "job failed", output="failed: disk full")
    assert (transition.old, transition.new, transition.at) == ("pending", "down", T0 + 5)
    assert [(e["state"], e["output"], e["timestamp"]) for e in alarms_seen] == [(3, "failed: disk full", int(T0 + 5))]
    state = app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
    assert (state["status"], state["alarm_since"]) == ("down", T0 + 5)
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["output"] == body()["output"]  # the stored one stays
    assert app.get("/api/v2/alarms").json[0]["output"] == "failed: disk full"  # the alarm listed is the one raised
    assert service.engine.put(heartbeat_id, "down", "job failed again") is None  # down already: no second alarm
    clock.advance(5)
    app.post_json("/api/v2/event", C01)
    assert [(e["state"], e["output"]) for e in alarms_seen[1:]] == [(0, body()["output"])]
    history = app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"]
    assert [(h["status"], h["reason"]) for h in history][:2] == [("up", "matching event received"),
                                                                 ("down", "job failed")]


def test_a_transition_put_now_keeps_to_the_rules_of_pause_and_groups(service, clock, alarms_seen):
    app = client(service)
    paused = create(app, body(pattern={"k": "paused"}))
    app.post(f"/api/v2/heartbeat/{paused}/pause")
    assert service.engine.put(paused, "down", "job failed") is None
    grouped = create(app, body(**GROUPED))
    with pytest.raises(ValueError):
        service.engine.put(grouped, "down", "job failed")
    with pytest.raises(heartbeat_lite.MemberNotFound):
        service.engine.put(grouped, "down", "job failed", member={"host": "nobody"})
    app.post_json("/api/v2/event", {"connector": "backup", "host": "a"})
    service.engine.put(grouped, "down", "job failed", output="failed", member={"host": "a"})
    assert [(e["state"], e["member"], e["output"]) for e in alarms_seen] == [(3, {"host": "a"}, "failed")]
    assert app.get(f"/api/v2/heartbeat/{grouped}/status").json["status"] == "down"  # the heartbeat follows
    up = create(app, body(pattern={"k": "up"}))
    app.post_json("/api/v2/event", {"k": "up"})
    service.engine.put(up, "down", "job failed")
    clock.advance(0.1)
    app.post_json("/api/v2/event", {"k": "up"})  # within the coalescing period: back up all the same
    assert app.get(f"/api/v2/heartbeat/{up}/status").json["status"] == "up"


###############################################################################
# One expiry state machine (pure: plain dicts)
###############################################################################


def heartbeat_row(**state):
    return {"status": "pending", "refreshed": 0.0, "alarm_since": None, "interval_seconds": 60,
            "late_seconds": None, **state}


def member_row(**state):
    return {**heartbeat_row(**state), "retire_seconds": state.get("retire_seconds")}


def never(at):
    return None


def test_the_machine_puts_a_heartbeat_late_then_down_by_its_rule():
    row = heartbeat_row(late_seconds=30)
    assert expiry_steps(row, 29.9, never) == ([], ("pending", 0.0, None))
    assert expiry_steps(row, 30, never) == ([("pending", "late", 30, "no matching event for 30s")],
                                            ("late", 0.0, 30))
    assert expiry_steps(row, 1000, never) == ([("pending", "late", 30, "no matching event for 30s"),
                                               ("late", "down", 60, "no matching event for 1m")], ("down", 0.0, 60))
    quoted = heartbeat_row(status="up", interval_seconds=120, expected_interval="120s")
    assert expiry_steps(quoted, 1000, never)[0] == [("up", "down", 120, "no matching event for 120s")]


def test_the_machine_leaves_down_and_paused_alone_and_retires_only_members():
    for status in ("down", "paused"):
        row = heartbeat_row(status=status, alarm_since=60, retire_seconds=60)
        assert expiry_steps(row, 10_000, never) == ([], (status, 0.0, 60))
    assert expiry_steps(member_row(status="down", alarm_since=60), 10_000, never, member=True)[0] == []
    retiring = member_row(status="down", alarm_since=60, retire_seconds=3600)
    assert expiry_steps(retiring, 3659, never, member=True)[0] == []
    assert expiry_steps(retiring, 3660, never, member=True) == (
        [("down", "retired", 3660, "member retired: down for 1h")], ("retired", 0.0, 60))
    up = member_row(status="up", retire_seconds=60)
    assert [step[:3] for step in expiry_steps(up, 10_000, never, member=True)[0]] == [
        ("up", "down", 60), ("down", "retired", 120)]


def test_a_window_covering_a_step_moves_the_refresh_to_its_end_and_the_machine_goes_on():
    def window_until_50(at):
        return 50.0 if 20 <= at < 50 else None

    row = heartbeat_row(late_seconds=30)
    assert expiry_steps(row, 79, window_until_50) == ([], ("pending", 50.0, None))
    assert expiry_steps(row, 1000, window_until_50) == ([("pending", "late", 80.0, "no matching event for 30s"),
                                                         ("late", "down", 110.0, "no matching event for 1m")],
                                                        ("down", 50.0, 110.0))
    member = member_row(status="up", interval_seconds=30, retire_seconds=10)
    assert expiry_steps(member, 100, window_until_50, member=True) == (
        [("up", "down", 80.0, "no matching event for 30s"), ("down", "retired", 90.0, "member retired: down for 10s")],
        ("retired", 50.0, 80.0))


def test_the_deadline_a_window_pushes_is_one_rule():
    window = (500.0, types.SimpleNamespace(id="w", name="patching"))
    assert heartbeat_lite.pushed_deadline(100.0, 60, None) == 100.0
    assert heartbeat_lite.pushed_deadline(None, 60, window) is None
    assert heartbeat_lite.pushed_deadline(100.0, 60, window) == 560.0
    assert heartbeat_lite.pushed_deadline(900.0, 60, window) == 900.0
    row = {"id": "x", "status": "up", "refreshed": 40.0, "interval_seconds": 60, "last_event": 40.0,
           "alarm_since": None}
    assert heartbeat_lite.status_document(row, window)["deadline"] == 560
    assert heartbeat_lite.status_document({**row, "status": "down", "alarm_since": 100.0}, window)["deadline"] == 100
    assert heartbeat_lite.status_document({**row, "status": "paused"}, window)["deadline"] is None
    member = {**row, "member": '{"host":"a"}'}
    assert heartbeat_lite.member_document(member, window)["deadline"] == 560


def test_a_grouped_heartbeat_follows_a_member_that_retires(service, clock):
    app = client(service)
    heartbeat_id = create(app, body(**GROUPED, retire_after="1m"))
    app.post_json("/api/v2/event", {"connector": "backup", "host": "a"})
    clock.advance(61)
    service.tick()
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "down"
    clock.advance(61)
    service.tick()  # the only member down retires: none is left
    state = app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
    assert (state["status"], state["members"]["down"]) == ("pending", 0)
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"][0]["reason"] == \
        "a member is pending (or none is left), none late or down"


def test_a_window_end_counts_the_heartbeats_it_gives_a_full_interval(service, clock, caplog):
    caplog.set_level(logging.INFO, "heartbeat_lite")
    app = client(service)
    heartbeat_id = create(app, body())
    app.post_json("/api/v2/maintenance", {"name": "w", "pattern": {}, "start": local(T0 + 30),
                                          "end": local(T0 + 300)})
    for t in (T0 + 30, T0 + 61):  # starts; the deadline passes under it: the refresh moves to its end
        clock.now = t
        service.tick()
    clock.now = T0 + 300
    service.tick()
    assert "ended: 1 heartbeat(s) get a full interval from its end" in caplog.text
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == T0 + 360


###############################################################################
# One status vocabulary and severity order
###############################################################################


def test_one_severity_order_serves_groups_timelines_pages_and_counts():
    severity = heartbeat_lite.severity
    assert heartbeat_lite.SEVERITY == ("down", "late", "pending", "up", "maintenance", "paused")
    assert heartbeat_lite.STATUSES == ("down", "late", "pending", "up", "paused")
    assert sorted(["up", "paused", "what", "down", "maintenance", "late"], key=severity) == [
        "down", "late", "up", "maintenance", "paused", "what"]
    assert heartbeat_lite.MEMBERS_WORST_FIRST == ("down", "late", "pending", "up")
    assert heartbeat_lite.member_counts_text({"up": 3, "paused": 1, "down": 2}) == "2 down, 3 up, 1 paused"
    assert heartbeat_lite.status_query_string(statuses={"paused", "maintenance", "down"}) == \
        "?status=down%2Cmaintenance%2Cpaused"
    svg = heartbeat_lite.timeline_svg([(0, "up"), (10, "pending"), (20, "late"), (30, "up")], 0, 100, slots=1)
    assert 'class="s-late"' in svg and 's-up"' not in svg


###############################################################################
# Small things
###############################################################################


def test_the_library_logger_is_silent_when_the_embedder_configured_no_logging():
    script = ("import heartbeat_lite\n"
              "now = [0.0]\n"
              "s = heartbeat_lite.create_app(clock=lambda: now[0])\n"
              "s.engine.create(heartbeat_lite.validate_heartbeat({'name': 'n', 'pattern': {'k': 'v'}, "
              "'expected_interval': '1s'}, 'me'))\n"
              "now[0] = 10.0\n"
              "s.tick()\n"
              "assert s.engine.alarms()\n"
              "s.close()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": HERE})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("days", [36_501, 10**9])
def test_history_days_has_one_bound_embedded_and_on_the_command_line(days):
    with pytest.raises(heartbeat_lite.ConfigError, match="history_days: must be a whole number of days from 1 to"):
        heartbeat_lite.create_app(history_days=days)
    args = heartbeat_lite.build_parser({}).parse_args(["--history-days", str(days)])
    with pytest.raises(heartbeat_lite.ConfigError, match="--history-days: must be a whole number of days"):
        heartbeat_lite.check_settings(args, {})
    heartbeat_lite.create_app(history_days=36_500).close()


def test_a_bad_active_filter_is_an_invalid_query(service):
    answer = client(service).get("/api/v2/maintenance?active=2", status=400).json
    assert answer["description"] == "invalid query parameters."
    assert answer["errors"] == ["active: must be 1 (the windows active now) or 0 (all)"]


@pytest.mark.sqlite_only("on PostgreSQL each event is written before its answer: none is answered from memory")
def test_ingestion_asked_not_to_wait_does_only_what_memory_does_else_changes_nothing():
    # the server's event loop serves events itself when they need nothing
    # but memory; anything else (a write, the lock held) raises WouldBlock
    # before any change, and a worker thread ingests them again
    clock = FakeClock(T0)
    with heartbeat_lite.create_app(clock=clock) as service:
        engine = service.engine
        heartbeat_id = create(client(service))
        event = dict(C01)
        before = engine.views.status(heartbeat_id)
        with pytest.raises(heartbeat_lite.WouldBlock):  # pending: its first event is written
            engine.ingest([event], blocking=False)
        assert engine.views.status(heartbeat_id) == before and engine.intake.events_received == 0
        assert engine.ingest([event]) == [heartbeat_id]  # as a worker does
        clock.advance(0.1)
        assert engine.ingest([event], blocking=False) == [heartbeat_id]  # up, written lately: kept in memory
        assert engine.ingest([{"connector": "other"}], blocking=False) == []
        held = threading.Event()
        release = threading.Event()

        def hold():
            with engine.core.lock:
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            held.wait(10)
            with pytest.raises(heartbeat_lite.WouldBlock):  # the lock is held (a tick, a storm chunk)
                engine.ingest([event], blocking=False)
        finally:
            release.set()
            holder.join()
        assert engine.intake.events_received == 3
        grouped = create(client(service), body(pattern={"connector": "grouped"}, group_by=["component"]))
        member = {"connector": "grouped", "component": "web-1"}
        with pytest.raises(heartbeat_lite.WouldBlock):  # a new member is written
            engine.ingest([member], blocking=False)
        assert engine.ingest([member]) == [grouped]
        clock.advance(0.1)
        assert engine.ingest([member], blocking=False) == [grouped]  # up, written lately: kept in memory
        scheduled = create(client(service), body(pattern={"connector": "cron"}, schedule="0 * * * *"))
        engine.ingest([{"connector": "cron"}])
        clock.advance(0.1)
        with pytest.raises(heartbeat_lite.WouldBlock):  # a schedule's refresh is written each time
            engine.ingest([{"connector": "cron"}], blocking=False)
        assert engine.views.status(scheduled)["status"] == "up"
        with pytest.raises(heartbeat_lite.WouldBlock):  # not found from memory: a worker answers
            engine.document("0" * 8 + "-0000-0000-0000-" + "0" * 12, blocking=False)
        assert json.loads(engine.document(heartbeat_id, blocking=False))["_id"] == heartbeat_id
