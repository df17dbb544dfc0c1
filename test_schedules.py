"""Pings' and schedules' fields of the heartbeat document (DESIGN.md §16):
``slug``, ``push_token``, ``max_run``, ``schedule``, ``tz``; their
validation, storage on both databases, migration, and the read model's
look-ups by slug and push token."""

import sqlite3

import pytest

import heartbeat_lite
from testing_support import HERE, INVALID, body, client, create

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


def test_a_schedule_without_a_zone_is_in_utc(app):
    heartbeat_id = create(app, body(schedule="*/15 * * * 1-5"))
    doc = app.get(f"/api/v2/heartbeat/{heartbeat_id}").json
    assert (doc["schedule"], doc["tz"]) == ("*/15 * * * 1-5", "UTC")


@pytest.mark.parametrize("changes, reason", [
    ({"schedule": "0 2 * *"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "0 0 0 2 * *"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "@daily"}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "61 2 * * *"}, "schedule: not a valid cron expression (Bad minute)"),
    ({"schedule": "0 0 30 2 *"}, "schedule: not a valid cron expression (Bad day-of-month)"),
    ({"schedule": 5}, "schedule: must be a cron expression of 5 fields"),
    ({"schedule": "0 2 * * *", "tz": "Europe/Nowhere"}, "tz: unknown time zone 'Europe/Nowhere'"),
    ({"schedule": "0 2 * * *", "tz": "../../etc/passwd"}, "tz: unknown time zone"),
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
