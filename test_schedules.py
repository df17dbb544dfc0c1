"""Pings' and schedules' fields of the heartbeat document (docs/pings.md):
``slug``, ``push_token``, ``max_run``, ``schedule``, ``tz``; their
validation, storage on both databases, migration, and the read model's
look-ups by slug and push token."""

import datetime
import math
import sqlite3
import zoneinfo

import cronsim
import pytest

import heartbeat_lite
from testing_support import HERE, INVALID, body, client, create, send

NEW_FIELDS = {"slug": "nightly-backup_2", "push_token": "Kuma_Token-123", "max_run": "30m",
              "schedule": "0 2 * * *", "tz": "Europe/Paris"}


def test_the_new_fields_are_stored_and_served(app):
    heartbeat_id = create(app, body(expected_interval="30m", **NEW_FIELDS))
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert {key: doc[key] for key in NEW_FIELDS} == NEW_FIELDS
    assert [item for item in app.get("/api/v2/heartbeat").json if item["_id"] == heartbeat_id] == [doc]
    # a GET body can be sent back as is
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", doc)
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json == {**doc, "updated": doc["updated"]}


def test_the_new_fields_are_absent_unless_set_and_a_put_resets_them(app):
    heartbeat_id = create(app, body(expected_interval="30m", **NEW_FIELDS))
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body())
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert not set(NEW_FIELDS) & set(doc)


def test_a_schedule_without_a_zone_is_in_utc_and_shows_no_zone(app, clock):
    # a field appears in GET only when set: the zone UTC is the default, not shown
    heartbeat_id = create(app, body(schedule="0 2 * * *", expected_interval="30m"))
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert doc["schedule"] == "0 2 * * *" and "tz" not in doc
    created = datetime.datetime.fromtimestamp(clock.now, datetime.timezone.utc)
    run = created.replace(hour=2, minute=0, second=0, microsecond=0)
    if run.timestamp() <= clock.now + heartbeat_lite.SCHEDULE_EARLY_SECONDS:
        run += datetime.timedelta(days=1)
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"] == run.timestamp() + 1800
    assert "0 2 * * * UTC" in app.get("/").text and "(UTC)" in app.get(f"/heartbeat/{heartbeat_id}").text


@pytest.mark.parametrize("changes, reason", [
    ({"schedule": "0 2 * *"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "0 0 0 2 * *"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "@daily"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "61 2 * * *"}, "schedule: not a valid cron expression (Bad minute)"),
    ({"schedule": "0 0 30 2 *"}, "schedule: not a valid cron expression (Bad day-of-month)"),
    ({"schedule": 5}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "0 2 * * *", "tz": "Europe/Nowhere"}, "tz: unknown time zone 'Europe/Nowhere'"),
    ({"schedule": "0 2 * * *", "tz": "../../etc/passwd"}, "tz: unknown time zone"),
    ({"schedule": "0 2 * * *", "tz": "localtime"}, "tz: unknown time zone 'localtime'"),
    ({"schedule": "0 2 * * *", "tz": "posixrules"}, "tz: unknown time zone 'posixrules'"),
    ({"schedule": "0 2 * * *", "tz": "Factory"}, "tz: unknown time zone 'Factory'"),
    ({"schedule": "0 2 * * *", "tz": "right/UTC"}, "tz: unknown time zone 'right/UTC'"),
    ({"schedule": "0 2 * * *", "tz": ""}, "tz: must be an IANA time zone name"),
    ({"tz": "Europe/Paris"}, "tz: needs schedule"),
    ({"schedule": "0 2 * * *", "expected_interval": None}, "schedule: needs expected_interval"),
    ({"slug": "Backup"}, "slug: must be 1 to 100 lower-case letters"),
    ({"slug": ""}, "slug: must be 1 to 100 lower-case letters"),
    ({"slug": "a" * 101}, "slug: must be 1 to 100 lower-case letters"),
    ({"slug": "back up"}, "slug: must be 1 to 100 lower-case letters"),
    ({"push_token": "short"}, "push_token: must be 8 to 64 letters"),
    ({"push_token": "x" * 65}, "push_token: must be 8 to 64 letters"),
    ({"push_token": "has/slash1"}, "push_token: must be 8 to 64 letters"),
    ({"max_run": "8760h"}, "max_run: must be shorter than a year"),
    ({"max_run": "31536000s"}, "max_run: must be shorter than a year"),
    ({"max_run": "30 m"}, "max_run: must look like 30s, 5m or 2h"),
])
def test_bad_new_fields_are_refused_and_nothing_is_stored(app, changes, reason):
    answer = app.post_json("/api/v2/heartbeat", body(**changes), status=400).json
    assert {key: answer[key] for key in INVALID} == INVALID
    assert any(error.startswith(reason) for error in answer["errors"]), answer["errors"]
    assert app.get("/api/v2/heartbeat").json == []
    # and a PUT is refused the same way, changing nothing
    heartbeat_id = create(app)
    before = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(**changes), status=400).json["errors"] \
        == answer["errors"]
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json == before


def test_the_longest_max_run_is_just_under_a_year(app):
    create(app, body(max_run="8759h"))


@pytest.mark.parametrize("field, value", [("slug", "backup"), ("push_token", "KumaToken1")])
def test_a_slug_or_push_token_is_unique(app, field, value):
    first = create(app, body(**{field: value}))
    taken = {"name": "", "description": f"heartbeat {field} already exists"}
    assert app.post_json("/api/v2/heartbeat", body(pattern={"k": "2"}, **{field: value}), status=400).json == taken
    assert len(app.get("/api/v2/heartbeat").json) == 1
    second = create(app, body(pattern={"k": "2"}))
    assert app.put_json(f"/api/v2/heartbeat/{second}", body(pattern={"k": "2"}, **{field: value}),
                        status=400).json == taken
    assert field not in app.get(f"/api/v2/heartbeat/{second}").json
    app.put_json(f"/api/v2/heartbeat/{first}", body(name="renamed", **{field: value}))  # its own: fine
    # the pattern's answer is unchanged, and comes first
    assert app.post_json("/api/v2/heartbeat", body(**{field: value}), status=400).json == \
        {"name": "", "description": "heartbeat pattern already exists"}


def test_the_read_model_finds_heartbeats_by_slug_and_push_token(app, service):
    engine = service.engine
    first = create(app, body(slug="backup", push_token="KumaToken1"))
    assert (engine.by_slug("backup"), engine.by_push_token("KumaToken1")) == (first, first)
    assert (engine.by_slug("nope"), engine.by_push_token("nope-nope")) == (None, None)
    app.put_json(f"/api/v2/heartbeat/{first}", body(slug="backup-2"))
    assert (engine.by_slug("backup"), engine.by_slug("backup-2"), engine.by_push_token("KumaToken1")) == \
        (None, first, None)
    # a freed slug can be taken by another at once
    second = create(app, body(pattern={"k": "2"}, slug="backup", push_token="KumaToken1"))
    assert (engine.by_slug("backup"), engine.by_push_token("KumaToken1")) == (second, second)
    app.delete(f"/api/v2/heartbeat/{second}")
    assert (engine.by_slug("backup"), engine.by_push_token("KumaToken1"), engine.by_slug("backup-2")) == \
        (None, None, first)


def test_the_look_ups_survive_a_restart(restart):
    with restart() as service:
        heartbeat_id = create(client(service), body(slug="backup", push_token="KumaToken1", schedule="0 2 * * *",
                                                    tz="Europe/Paris", max_run="1h"))
    with restart() as service:
        assert (service.engine.by_slug("backup"), service.engine.by_push_token("KumaToken1")) == \
            (heartbeat_id, heartbeat_id)
        doc = client(service).get(f"/api/v2/heartbeat/{heartbeat_id}").json
        assert (doc["schedule"], doc["tz"], doc["max_run"]) == ("0 2 * * *", "Europe/Paris", "1h")


@pytest.mark.postgresql
def test_on_postgresql_the_unique_indexes_have_the_last_word(pg_url, clock, monkeypatch):
    """Two instances creating one slug at once: both look-ups find it free,
    the index refuses the second write with the documented answer."""
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as service:
        app = client(service)
        create(app, body(slug="backup", push_token="KumaToken1"))
        monkeypatch.setattr(type(service.store), "_check_free", lambda self, row, own_id: None)
        for field, value in (("slug", "backup"), ("push_token", "KumaToken1")):
            assert app.post_json("/api/v2/heartbeat", body(pattern={"k": field}, **{field: value}),
                                 status=400).json == {"name": "", "description": f"heartbeat {field} already exists"}
        assert len(app.get("/api/v2/heartbeat").json) == 1


def _version_6_schema():
    """schema.sql as version 6 had it: no column nor index of version 7."""
    schema = open(f"{HERE}/schema.sql", encoding="utf-8").read()
    lines = [line for line in schema.splitlines() if "(version 7)" not in line
             and not line.startswith("CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_slug")
             and not line.startswith("CREATE UNIQUE INDEX IF NOT EXISTS heartbeat_push_token")]
    return "\n".join(lines).replace(f"PRAGMA user_version = {heartbeat_lite.SCHEMA_VERSION};",
                                    "PRAGMA user_version = 6;")


@pytest.mark.sqlite_only("builds a SQLite file of schema version 6")
def test_a_version_6_database_is_migrated(tmp_path, clock):
    path = str(tmp_path / "v6.db")
    with sqlite3.connect(path) as conn:
        conn.executescript(_version_6_schema())
        assert "slug" not in {row[1] for row in conn.execute("PRAGMA table_info(heartbeat)")}
        conn.execute("INSERT INTO heartbeat (id, name, author, description, output, pattern, expected_interval, "
                     "interval_seconds, channels, created, updated, status, refreshed, last_event) VALUES "
                     "('cf7097b6-71ba-48db-a749-e9474aa70c93', 'old', 'root', '', '', '{\"k\":\"v\"}', '1m', 60, "
                     "'[]', 100, 100, 'up', ?, ?)", (clock(), clock()))
    conn.close()
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = client(service)
        doc = app.get("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93").json
        assert (doc["name"], doc["channels"]) == ("old", [])
        assert app.get("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93/status").json["status"] == "up"
        app.put_json("/api/v2/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93",
                     body(pattern={"k": "v"}, slug="old", schedule="0 2 * * *"))
        assert app.post_json("/api/v2/heartbeat", body(slug="old"), status=400).json["description"] == \
            "heartbeat slug already exists"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == heartbeat_lite.SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'heartbeat_v6'").fetchone()[0] == 0
    conn.close()


@pytest.mark.postgresql
def test_a_version_6_postgresql_database_gains_the_columns(pg_url, clock):
    import psycopg
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as service:
        heartbeat_id = create(client(service))
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to what version 6 had
        conn.execute("DROP INDEX heartbeat_slug; DROP INDEX heartbeat_push_token")
        for column in ("slug", "push_token", "max_run", "max_run_seconds", "schedule", "tz"):
            conn.execute(f"ALTER TABLE heartbeat DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = 6 WHERE key = 'schema_version'")
    with heartbeat_lite.create_app(db=pg_url, clock=clock) as service:
        app = client(service)
        app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(slug="old", schedule="0 2 * * *"))
        assert app.get(f"/api/v2/heartbeat/{heartbeat_id}").json["slug"] == "old"
        assert app.post_json("/api/v2/heartbeat", body(pattern={"k": "2"}, slug="old"), status=400).json[
            "description"] == "heartbeat slug already exists"
        assert service.store.meta("schema_version") == heartbeat_lite.SCHEMA_VERSION


def test_the_openapi_document_describes_the_new_fields(spec):
    from testing_support import pointer, schema_errors
    good = body(expected_interval="30m", **NEW_FIELDS)
    assert schema_errors(spec, pointer("components", "schemas", "HeartbeatInput"), good) == []
    assert schema_errors(spec, pointer("components", "schemas", "HeartbeatInput"), {**good, "slug": "Bad"})
    with heartbeat_lite.create_app() as service:
        app = client(service)
        heartbeat_id = create(app, good)
        doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert schema_errors(spec, pointer("components", "schemas", "Heartbeat"), doc) == []


###############################################################################
# Schedules in the engine: deadlines from each scheduled time (injected clock)
###############################################################################

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
JOB = {"connector": "cron", "job": "backup"}


def paris(*args, fold=0):
    """Unix time of a wall time in Europe/Paris (``fold=1``: the second of a repeated hour)."""
    return datetime.datetime(*args, tzinfo=PARIS, fold=fold).timestamp()


def scheduled_job(app, clock, start, schedule="0 2 * * *", grace="30m", **more):
    clock.now = start
    return create(app, body(pattern=JOB, schedule=schedule, tz="Europe/Paris", expected_interval=grace, **more))


def ping_at(app, clock, t):
    clock.now = t
    assert send(app, [JOB])["matched"]


def deadline(app, heartbeat_id):
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["deadline"]


def status_at(app, service, clock, heartbeat_id, t):
    clock.now = t
    service.tick()
    return app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"]


def downs(alarms_seen):
    return [event["timestamp"] for event in alarms_seen if event["state"] == 3]


def test_a_daily_job_at_two_with_thirty_minutes_grace(app, service, clock, alarms_seen):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 11, 2, 30)  # the first run after creation, + grace
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 2, 29)) == "pending"
    ping_at(app, clock, paris(2027, 1, 11, 2, 0, 10))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 12, 2, 30)  # the next run, not the ping + 30m
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 12, 2, 29, 59)) == "up"
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 12, 2, 30)) == "down"
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 12, 14, 0)) == "down"
    assert downs(alarms_seen) == [paris(2027, 1, 12, 2, 30)]  # one alarm, dated by the deadline
    history = app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"]
    assert history[0]["reason"] == "no matching event for 30m after the run of 2027-01-12 02:00 CET"
    ping_at(app, clock, paris(2027, 1, 12, 14, 0))  # run by hand: resolved, and tomorrow's run expected
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "up"
    assert deadline(app, heartbeat_id) == paris(2027, 1, 13, 2, 30)
    assert alarms_seen[-1]["state"] == 0


def test_a_ping_up_to_a_minute_early_counts_for_the_run_it_precedes(app, service, clock, alarms_seen):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0))
    ping_at(app, clock, paris(2027, 1, 11, 1, 59, 0))  # 60 s early (the job's clock is ahead)
    assert deadline(app, heartbeat_id) == paris(2027, 1, 12, 2, 30)
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 3, 0)) == "up"
    ping_at(app, clock, paris(2027, 1, 12, 1, 58, 59))  # 61 s early: a ping of its own, the run still expected
    assert deadline(app, heartbeat_id) == paris(2027, 1, 12, 2, 30)
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 12, 2, 30)) == "down"
    assert downs(alarms_seen) == [paris(2027, 1, 12, 2, 30)]


def test_late_after_is_measured_from_the_scheduled_time(app, service, clock):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0), grace="1h", late_after="15m")
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 2, 14)) == "pending"
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 2, 15)) == "late"
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/history").json["history"][0]["reason"] == \
        "no matching event for 15m after the run of 2027-01-11 02:00 CET"
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 3, 0)) == "down"


def _runs(schedule, after, until):
    """The scheduled times of ``schedule`` in Europe/Paris in (after, until], as cronsim gives them."""
    times, it = [], cronsim.CronSim(schedule, datetime.datetime.fromtimestamp(after, PARIS))
    while (t := next(it).timestamp()) <= until:
        times.append(t)
    return times


@pytest.mark.parametrize("schedule", ["30 2 * * *", "0 2 * * *", "15 * * * *"])
@pytest.mark.parametrize("day", [(2027, 3, 28), (2027, 10, 31)], ids=["spring-forward", "fall-back"])
def test_across_a_daylight_saving_change_no_missed_run_and_no_double_alarm(app, service, clock, alarms_seen,
                                                                            schedule, day):
    """A job that runs every time cron runs it (as cronsim says: a skipped
    time at the first valid minute, a repeated one once), 20 s late, except
    the run of the night of the change: ticked every minute for three days,
    the only alarm is that run's, once."""
    start, until = paris(*day, 0, 0) - 86400, paris(*day, 0, 0) + 2 * 86400
    heartbeat_id = scheduled_job(app, clock, start, schedule=schedule, grace="10m")
    runs = _runs(schedule, start, until)
    skipped = next(run for run in runs if run >= paris(*day, 1, 0))
    to_ping = iter([run + 20 for run in runs if run != skipped] + [math.inf])
    t, next_ping, last_ping = start, next(to_ping), None
    while t < until:
        t += 60
        if t >= next_ping:
            ping_at(app, clock, next_ping)
            last_ping, next_ping = next_ping, next(to_ping)
        missed = t >= skipped + 600 and (last_ping is None or last_ping < skipped)
        expected = ("down",) if missed else ("pending", "up")
        assert status_at(app, service, clock, heartbeat_id, t) in expected, \
            datetime.datetime.fromtimestamp(t, PARIS)
    assert downs(alarms_seen) == [skipped + 600]
    assert [event["state"] for event in alarms_seen] == [3, 0]


def test_the_spring_forward_run_of_a_skipped_time_is_at_three(app, service, clock, alarms_seen):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 3, 27, 12, 0), schedule="30 2 * * *")
    # 02:30 does not exist on 2027-03-28: the run is at 03:00 CEST, its grace ends at 03:30
    assert deadline(app, heartbeat_id) == paris(2027, 3, 28, 3, 30)
    ping_at(app, clock, paris(2027, 3, 28, 3, 0, 5))
    assert deadline(app, heartbeat_id) == paris(2027, 3, 29, 3, 0)


def test_the_fall_back_repeated_time_runs_once(app, service, clock, alarms_seen):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 10, 30, 12, 0), schedule="30 2 * * *")
    # the first 02:30 (CEST) + 30m: 02:00 again, in CET
    assert deadline(app, heartbeat_id) == paris(2027, 10, 31, 2, 30) + 1800 == paris(2027, 10, 31, 2, 0, fold=1)
    ping_at(app, clock, paris(2027, 10, 31, 2, 30, 5))
    assert deadline(app, heartbeat_id) == paris(2027, 11, 1, 3, 0)  # not the second 02:30 (CET)
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 10, 31, 2, 59, fold=1)) == "up"
    assert downs(alarms_seen) == []


def test_a_put_that_adds_changes_or_removes_a_schedule_moves_the_deadline(app, service, clock):
    clock.now = paris(2027, 1, 10, 12, 0)
    heartbeat_id = create(app, body(pattern=JOB, expected_interval="30m"))
    ping_at(app, clock, paris(2027, 1, 10, 12, 5))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 10, 12, 35)
    clock.now = paris(2027, 1, 10, 12, 10)
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern=JOB, expected_interval="30m",
                                                           schedule="0 2 * * *", tz="Europe/Paris"))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 11, 2, 30)  # the next run after the last refresh
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern=JOB, expected_interval="30m",
                                                           schedule="0 18 * * *", tz="Europe/Paris"))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 10, 18, 30)  # the next run after the last event
    app.put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern=JOB, expected_interval="30m"))
    assert deadline(app, heartbeat_id) == paris(2027, 1, 10, 12, 35)  # from the last event again
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 10, 12, 35)) == "down"


def test_a_scheduled_heartbeat_keeps_its_deadline_across_a_restart(restart, clock):
    clock.now = paris(2027, 1, 10, 12, 0)
    with restart() as service:
        app = client(service)
        heartbeat_id = create(app, body(pattern=JOB, expected_interval="30m", schedule="0 2 * * *",
                                        tz="Europe/Paris"))
        ping_at(app, clock, paris(2027, 1, 11, 2, 0, 30))
    with restart() as service:
        app = client(service)
        assert deadline(app, heartbeat_id) == paris(2027, 1, 12, 2, 30)
        status = app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
        assert status["last_event"] == paris(2027, 1, 11, 2, 0, 30)  # the real time, not the run


def test_resume_expects_the_next_run(app, service, clock):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0))
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/pause")
    clock.now = paris(2027, 1, 15, 9, 0)
    app.post(f"/api/v2/heartbeat/{heartbeat_id}/resume")
    assert deadline(app, heartbeat_id) == paris(2027, 1, 16, 2, 30)


def test_a_schedule_cannot_group_members(app):
    answer = app.post_json("/api/v2/heartbeat", body(schedule="0 2 * * *", group_by=["host"]), status=400).json
    assert "schedule: not with group_by (members have no schedule)" in answer["errors"]


def test_a_tick_computes_no_schedule(app, service, clock, monkeypatch):
    """The next run is computed once per event, creation or update; a tick only reads the stored deadline."""
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0))
    ping_at(app, clock, paris(2027, 1, 11, 2, 0, 30))
    calls = []
    real = heartbeat_lite.scheduled_time
    monkeypatch.setattr(heartbeat_lite, "scheduled_time", lambda *args: calls.append(args) or real(*args))
    for hours in range(0, 48):
        status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 3, 0) + hours * 3600)
    assert calls == []
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "down"


def test_the_status_page_and_the_heartbeat_page_show_the_schedule(app, service, clock):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0), schedule="0 2 * * 1-5")
    create(app, body(pattern={"k": "plain"}, name="plain", expected_interval="5m"))
    status_page = app.get("/").text
    assert "0 2 * * 1-5 Europe/Paris, within 30m" in status_page
    assert "<td>5m</td>" in status_page
    page = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "<dt>Schedule</dt><dd><code>0 2 * * 1-5</code> (Europe/Paris), each run expected within 30m</dd>" in page
    assert "Expected every" not in page


def test_a_healthchecks_ping_counts_for_the_scheduled_run(app, service, clock, alarms_seen):
    heartbeat_id = scheduled_job(app, clock, paris(2027, 1, 10, 12, 0))
    clock.now = paris(2027, 1, 11, 1, 59, 30)  # 30 s early
    assert app.get(f"/ping/{heartbeat_id}").text == "OK"
    assert deadline(app, heartbeat_id) == paris(2027, 1, 12, 2, 30)
    assert status_at(app, service, clock, heartbeat_id, paris(2027, 1, 11, 2, 31)) == "up"
    clock.now = paris(2027, 1, 12, 2, 0, 5)
    app.get(f"/ping/{heartbeat_id}/fail")  # down at once, and the next success expects the next run
    clock.now = paris(2027, 1, 12, 2, 10)
    app.get(f"/ping/{heartbeat_id}")
    assert deadline(app, heartbeat_id) == paris(2027, 1, 13, 2, 30)
    assert [event["state"] for event in alarms_seen] == [3, 0]


@pytest.mark.postgresql
def test_another_instance_knows_the_schedule_slug_and_push_token(pg_url, clock):
    """Two instances on one PostgreSQL database: what one creates, changes
    or deletes, the other's read model follows (look-ups and schedules)."""
    a = heartbeat_lite.create_app(db=pg_url, clock=clock)
    b = heartbeat_lite.create_app(db=pg_url, clock=clock)
    try:
        heartbeat_id = scheduled_job(client(a), clock, paris(2027, 1, 10, 12, 0), slug="nightly",
                                     push_token="KumaToken1")
        b.sync()
        assert (b.engine.by_slug("nightly"), b.engine.by_push_token("KumaToken1")) == (heartbeat_id, heartbeat_id)
        ping_at(client(b), clock, paris(2027, 1, 11, 1, 59, 30))  # on b: counts for the 02:00 run
        assert deadline(client(a), heartbeat_id) == paris(2027, 1, 12, 2, 30)
        client(a).put_json(f"/api/v2/heartbeat/{heartbeat_id}", body(pattern=JOB, slug="renamed"))
        b.sync()
        assert (b.engine.by_slug("nightly"), b.engine.by_slug("renamed"), b.engine.by_push_token("KumaToken1")) \
            == (None, heartbeat_id, None)
        ping_at(client(b), clock, paris(2027, 1, 11, 2, 0))  # no schedule now: the interval from the event
        assert deadline(client(a), heartbeat_id) == paris(2027, 1, 11, 2, 1)
        client(a).delete(f"/api/v2/heartbeat/{heartbeat_id}")
        b.sync()
        assert b.engine.by_slug("renamed") is None
    finally:
        a.close()
        b.close()
