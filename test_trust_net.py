"""Trust at the network and process boundary (docs/security.md): connections,
forwarding, one database per service, configuration errors."""

import base64
import http.client
import json
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import heartbeat_lite
from testing_support import DB_ERROR, HERE, FakeClock, body, client, create, new_heartbeat


def run_cli(*args, env=None, timeout=30):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(heartbeat_lite.ENV_PREFIX)}
    return subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env={**environment, **(env or {})})


def one_error_line(result, alone=True):
    """The CLI failed as a configuration error: exit 2, one error line (the
    only line unless ``alone`` is false: after logging started), no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("heartbeat-lite: error: ")]
    assert len(errors) == 1 and (len(lines) == 1 or not alone), result.stderr
    return errors[0]


###############################################################################
# One database, one service
###############################################################################


def database_state(path):
    """What a start could change: meta (alive_at, stopped_cleanly) and rows."""
    with sqlite3.connect(path) as conn:
        return (sorted(conn.execute("SELECT key, value FROM meta")),
                sorted(conn.execute("SELECT id, status, refreshed, deadline FROM heartbeat")))


def files_in(directory):
    """Every file's bytes, but the lock file's (it holds the last holder's pid)."""
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory)) if not name.endswith(".lock")}


@pytest.fixture
def stopped_db(tmp_path, clock):
    """A database with one heartbeat, stopped cleanly a while ago."""
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        new_heartbeat(service)
        clock.advance(10)
        service.tick()
    return path


@pytest.mark.sqlite_only("the single-instance lock is SQLite's (several instances share a PostgreSQL database)")
def test_a_second_service_on_the_same_database_exits_2_and_changes_nothing(stopped_db, clock):
    with heartbeat_lite.create_app(db=stopped_db, clock=clock) as first:
        before = database_state(stopped_db)
        result = run_cli("--port", "0", "--db", stopped_db)
        line = one_error_line(result)
        assert "in use by another heartbeat-lite" in line and f"process {os.getpid()}" in line
        assert database_state(stopped_db) == before
        with pytest.raises(heartbeat_lite.ConfigError, match="in use"):  # in one process too
            heartbeat_lite.create_app(db=stopped_db, clock=clock)
        assert client(first).get("/healthz").json["status"] == "ok"
    with heartbeat_lite.create_app(db=stopped_db, clock=clock):  # released at close
        pass


@pytest.mark.sqlite_only("a hard link to a SQLite file")
def test_a_second_service_on_a_hard_link_to_the_database_exits_2_and_changes_nothing(stopped_db, clock, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = str(elsewhere / "same.db")
    os.link(stopped_db, link)  # another path, another directory, the same file
    with heartbeat_lite.create_app(db=stopped_db, clock=clock) as first:
        before = database_state(stopped_db)
        line = one_error_line(run_cli("--port", "0", "--db", link))
        assert "in use by another heartbeat-lite" in line and "another path to the same file" in line
        assert database_state(stopped_db) == before
        with pytest.raises(heartbeat_lite.ConfigError, match="in use"):  # in one process too
            heartbeat_lite.create_app(db=link, clock=clock)
        assert client(first).get("/healthz").json["status"] == "ok"
    with heartbeat_lite.create_app(db=link, clock=clock):  # released at close
        with pytest.raises(heartbeat_lite.ConfigError, match="in use"):
            heartbeat_lite.create_app(db=stopped_db, clock=clock)


@pytest.mark.sqlite_only("a hard link to a SQLite file")
def test_a_database_created_at_start_is_locked_by_its_identity_once_it_exists(tmp_path, clock):
    path = str(tmp_path / "new.db")
    with heartbeat_lite.create_app(db=path, clock=clock):
        os.link(path, str(tmp_path / "link.db"))
        with pytest.raises(heartbeat_lite.ConfigError, match="another path to the same file"):
            heartbeat_lite.create_app(db=str(tmp_path / "link.db"), clock=clock)


def test_a_start_on_a_port_in_use_changes_nothing_in_the_database(stopped_db):
    before = files_in(os.path.dirname(stopped_db))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port), "--db", stopped_db)
    line = one_error_line(result, alone=False)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert files_in(os.path.dirname(stopped_db)) == before  # not resumed: no alive_at, no WAL


def test_a_new_database_is_not_even_created_by_a_failed_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        one_error_line(run_cli("--port", str(taken.getsockname()[1]), "--db", str(tmp_path / "new.db")),
                       alone=False)
    assert not (tmp_path / "new.db").exists()


@pytest.mark.sqlite_only("a SQLite path")
def test_a_database_that_is_a_directory_or_not_sqlite_exits_2(tmp_path):
    assert "is a directory" in one_error_line(run_cli("--port", "0", "--db", str(tmp_path)))
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a database\n")
    assert "not a SQLite database" in one_error_line(run_cli("--port", "0", "--db", str(text)))
    assert text.read_text() == "these are my notes, not a database\n"
    with pytest.raises(heartbeat_lite.ConfigError, match="not a SQLite database"):
        heartbeat_lite.create_app(db=str(text))


@pytest.mark.sqlite_only("a SQLite file deleted or replaced")
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_while_running_is_detected(tmp_path, clock, caplog, monkeypatch, how):
    monkeypatch.setattr(heartbeat_lite, "DATABASE_IDENTITY_CHECK_SECONDS", 0.0)
    path = str(tmp_path / "hb.db")
    with heartbeat_lite.create_app(db=path, clock=clock) as service:
        app = client(service)
        kept = create(app)
        if how == "deleted":
            os.remove(path)
        else:
            with heartbeat_lite.create_app(db=str(tmp_path / "other.db")):
                pass
            os.replace(str(tmp_path / "other.db"), path)
            replacement = open(path, "rb").read()
        for _ in range(3):
            assert app.post_json("/api/v2/heartbeat", body(pattern={"k": "v"}), status=400).json == DB_ERROR
            health = app.get("/healthz", status=503).json
            assert (health["status"], health["description"]) == ("unavailable",
                                                                 "the database file was deleted or replaced")
            with pytest.raises(heartbeat_lite.StoreError):
                service.tick()
        assert app.get(f"/api/v2/heartbeat/{kept}").status_int == 200  # reads from memory still answer
        assert caplog.text.count("was deleted or replaced while running") == 1
        if how == "replaced":
            assert open(path, "rb").read() == replacement  # nothing written to the file that took its place


###############################################################################
# Configuration errors
###############################################################################


@pytest.mark.parametrize("args,env,named", [
    (["--port", "abc"], {}, "--port: not a number: 'abc'"),
    (["--port", "70000"], {}, "--port: must be 0 to 65535"),
    ([], {"HEARTBEAT_LITE_PORT": "abc"}, "HEARTBEAT_LITE_PORT: not a number: 'abc'"),
    (["--threads", "0"], {}, "--threads: must be 1 to 1024"),
    ([], {"HEARTBEAT_LITE_THREADS": "-3"}, "HEARTBEAT_LITE_THREADS: must be 1 to 1024"),
    (["--log-level", "loud"], {}, "--log-level: not one of DEBUG, INFO, WARNING, ERROR: 'loud'"),
    ([], {"HEARTBEAT_LITE_LOG_LEVEL": "verbose"}, "HEARTBEAT_LITE_LOG_LEVEL: not one of"),
    ([], {"HEARTBEAT_LITE_HOST": " "}, "HEARTBEAT_LITE_HOST: empty"),
    (["--db", ""], {}, "--db: the database path is empty"),
    ([], {"HEARTBEAT_LITE_DB": "/nonexistent/dir/hb.db"}, "HEARTBEAT_LITE_DB: database directory"),
    (["--user", "nocolon"], {}, "--user 1: expected NAME:PASSWORD"),
    ([], {"HEARTBEAT_LITE_USERS": "a:b,nocolon"}, "HEARTBEAT_LITE_USERS entry 2"),
    (["--users-file", "/nonexistent"], {}, "--users-file: cannot read users file"),
    ([], {"HEARTBEAT_LITE_USERS_FILE": "/nonexistent"}, "HEARTBEAT_LITE_USERS_FILE: cannot read users file"),
    (["--forward-url", "ftp://x/y"], {}, "--forward-url must be an http:// or https:// URL"),
    ([], {"HEARTBEAT_LITE_FORWARD_URL": "nope"}, "HEARTBEAT_LITE_FORWARD_URL must be an http://"),
    (["--prot", "8083"], {}, "unrecognized arguments: --prot 8083"),
    (["serve"], {}, "unrecognized arguments: serve"),
])
def test_a_bad_setting_exits_2_with_one_line_naming_it(tmp_path, capsys, args, env, named):
    argv = args if any(a.startswith("--db") for a in args) or "HEARTBEAT_LITE_DB" in env \
        else ["--db", str(tmp_path / "hb.db"), *args]
    assert heartbeat_lite.main(argv, env) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("heartbeat-lite: error: ") and named in err, err
    assert not os.path.exists(tmp_path / "hb.db")


def test_a_bad_log_level_from_the_environment_is_one_line_not_a_traceback():
    line = one_error_line(run_cli("--port", "0", env={"HEARTBEAT_LITE_LOG_LEVEL": "verbose"}))
    assert line == ("heartbeat-lite: error: HEARTBEAT_LITE_LOG_LEVEL: not one of DEBUG, INFO, WARNING, "
                    "ERROR: 'verbose'")


def test_usage_does_not_ask_for_a_command_and_help_still_names_it():
    help_text = run_cli("--help").stdout
    usage = help_text.split("\n\n")[0]
    assert "COMMAND" not in usage and "hash-password" not in usage
    assert "hash-password" in help_text
    assert "invalid choice" not in one_error_line(run_cli("--prot", "8083"))
    assert run_cli("hash-password", "--help").returncode == 0


def test_settings_come_from_the_flag_then_the_environment_then_the_default():
    parser = heartbeat_lite.build_parser({})
    env = {"HEARTBEAT_LITE_PORT": "9000", "HEARTBEAT_LITE_LOG_LEVEL": "debug", "HEARTBEAT_LITE_THREADS": "8"}
    args = heartbeat_lite.check_settings(parser.parse_args(["--port", "9001"]), env)
    assert (args.port, args.log_level, args.threads, args.host) == (9001, "DEBUG", 8, "127.0.0.1")
    args = heartbeat_lite.check_settings(parser.parse_args([]), {})
    assert (args.port, args.db, args.forward_url) == (8082, "heartbeat_lite.db", None)


###############################################################################
# Secrets in logs
###############################################################################


@pytest.mark.parametrize("url,shown", [
    ("postgresql://hb:pw-1@db.example/hb?password=pw-2&sslmode=require",
     "postgresql://hb:***@db.example/hb?password=***&sslmode=***"),
    ("http://canopsis:pw-3@h:8082/api/v2/event?authkey=key-4&flag#frag", "http://canopsis:***@h:8082/api/v2/event?authkey=***&***"),
    ("https://token-5@h/x", "https://***@h/x"),
    ("https://h/api/v2/event", "https://h/api/v2/event"),
    ("postgresql://u:p@ss:w%zzord@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
])
def test_a_url_is_shown_without_its_secrets(url, shown):
    assert heartbeat_lite.redact_url(url) == shown


def test_secrets_quoted_by_an_error_message_are_taken_out_and_it_is_one_line():
    url = "postgresql://u:s3%zzcret@h/db?connect_timeout=5"
    message = 'invalid percent-encoded token: "s3%zzcret"\n\tport 5432, "5"'
    assert heartbeat_lite.redact_secrets(message, url) == 'invalid percent-encoded token: "***" port 5432, ***'


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_until_logged(log_path, *args, expected, env=None, timeout=20):
    """Start the command with ``args`` logging to ``log_path``, wait until
    ``expected`` is in its log, stop it (SIGTERM); return the log."""
    with open(log_path, "w") as log:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(heartbeat_lite.ENV_PREFIX)}
        process = subprocess.Popen([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "--port", "0", *args],
                                   stderr=log, stdout=subprocess.DEVNULL, env={**environment, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while expected not in open(log_path).read():
            assert process.poll() is None and time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
    return open(log_path).read()


def assert_one_line_per_record(text):
    lines = text.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", line) for line in lines), text


@pytest.mark.sqlite_only("the command reads the SQLite file the test filled")
def test_a_forward_url_s_secrets_are_not_logged_at_start_nor_on_failures(tmp_path, clock):
    path = str(tmp_path / "hb.db")
    secrets = ("pw-Secret1", "Key-Secret2", "Tok-Secret3")
    url = f"http://canopsis:{secrets[0]}@127.0.0.1:{closed_port()}/api/v2/event?authkey={secrets[1]}&token={secrets[2]}"
    alarmed_forwarding_service(clock, url, db=path).close()  # an alarm waits in the outbox
    text = run_until_logged(tmp_path / "log", "--db", path, env={"HEARTBEAT_LITE_FORWARD_URL": url},
                            expected="alarm delivery to")
    port = url.split("@127.0.0.1:")[1].split("/")[0]
    assert f"forwarding alarms to http://127.0.0.1:{port}/api/v2/event?authkey=***&token=***" in text
    assert "alarm delivery to http://127.0.0.1:" in text
    assert not any(secret in text for secret in secrets), text
    assert_one_line_per_record(text)


def test_a_postgresql_url_s_secrets_are_not_logged_and_its_errors_are_one_line(tmp_path):
    pytest.importorskip("psycopg")
    url = f"postgresql://hb:Pw-Secret4@127.0.0.1:{closed_port()}/hb?password=Pw-Secret5&connect_timeout=2"
    text = run_until_logged(tmp_path / "log", "--db", url, expected="listening on", env={"HEARTBEAT_LITE_USERS": ""})
    assert "unavailable at start: cannot open database: connection failed" in text  # said, on one line
    assert "(database postgresql://hb:***@127.0.0.1:" in text and "/hb?password=***&connect_timeout=***)" in text
    assert "Secret4" not in text and "Secret5" not in text, text
    assert_one_line_per_record(text)


def test_a_bad_percent_encoding_in_a_postgresql_url_does_not_echo_the_password():
    pytest.importorskip("psycopg")
    for url in ("postgresql://hb:Pw%zzSecret6@127.0.0.1/hb", "postgresql://hb@127.0.0.1/hb?password=Pw%zzSecret6"):
        line = one_error_line(run_cli("--port", "0", "--db", url))
        assert "bad PostgreSQL URL" in line and "invalid percent-encoded token" in line
        assert "Secret6" not in line, line


###############################################################################
# Connections: exhaustion and slow clients
###############################################################################


def timed_get(base, path, user=None, timeout=1.0):
    """GET over a new connection; return (status, seconds); fails past ``timeout``."""
    started = time.monotonic()
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()} if user else {}
        conn.request("GET", path, headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.monotonic() - started


def open_connections(base, count):
    parts = urllib.parse.urlsplit(base)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sockets.append(sock)
    return sockets


def others_are_answered(base, rounds=3):
    timed_get(base, "/healthz", timeout=10)  # the server has caught up with the attack
    for _ in range(rounds):
        for path, user in (("/healthz", None), ("/api/v2/heartbeat", "root:root")):
            status, seconds = timed_get(base, path, user)
            assert status == 200 and seconds < 1.0, (path, status, seconds)


@pytest.fixture
def file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2600:
        pytest.skip("needs 2,600 open files (client and server in one process)")
    if soft != resource.RLIM_INFINITY and soft < 2600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2600, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_a_thousand_idle_connections_do_not_stop_other_clients(file_limit, clock):
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0) as base:
        sockets = open_connections(base, 1000)
        try:
            others_are_answered(base)
        finally:
            for sock in sockets:
                sock.close()


@pytest.mark.slow
def test_a_thousand_slowloris_connections_do_not_stop_other_clients(file_limit, clock):
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0) as base:
        sockets = open_connections(base, 1000)
        try:
            for sock in sockets:
                sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\n")
            for second in range(3):
                started = time.monotonic()
                for sock in sockets:
                    sock.sendall(b"X-Slow-%d: still coming\r\n" % second)
                others_are_answered(base, rounds=1)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        finally:
            for sock in sockets:
                sock.close()


def closed_after(sock, dribble, interval=0.1, limit=5.0):
    """Send ``dribble`` every ``interval`` until the server closes the
    connection; return the seconds that took."""
    started = time.monotonic()
    sock.settimeout(interval)
    while time.monotonic() - started < limit:
        try:
            sock.sendall(dribble)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:  # reset
            return time.monotonic() - started
    raise AssertionError("the connection was never closed")


@pytest.mark.slow
def test_a_request_head_or_body_that_does_not_arrive_in_time_is_cut(clock):
    with heartbeat_lite.create_app(clock=clock) as service, \
            heartbeat_lite.serve(service, port=0, head_deadline=0.5, body_deadline=0.5) as base:
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port)) as head:
            head.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert 0.5 <= closed_after(head, b"X-Slow: 1\r\n") < 2.0
        with socket.create_connection((parts.hostname, parts.port)) as payload:
            payload.sendall(b"POST /api/v2/event HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[")
            assert 1.0 <= closed_after(payload, b" ") < 2.5
        # a connection idle between requests is not "late": keep-alive still works
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        time.sleep(1.2)  # beyond both deadlines
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


def test_near_the_connection_limit_the_oldest_idle_connections_make_room(clock):
    with heartbeat_lite.create_app(clock=clock) as service, \
            heartbeat_lite.serve(service, port=0, connection_limit=300) as base:
        sockets = open_connections(base, 400)
        try:
            others_are_answered(base, rounds=1)
        finally:
            for sock in sockets:
                sock.close()


@pytest.fixture
def servers(monkeypatch):
    """The waitress servers serve() makes, for a look at their connections."""
    made = []
    make_class = heartbeat_lite._json_error_server_class

    def capturing_class():
        class Capturing(make_class()):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)
        return Capturing

    monkeypatch.setattr(heartbeat_lite, "_json_error_server_class", capturing_class)
    return made


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pipelining_without_reading(base, count, depth, path="/api/v2/openapi.json"):
    """``count`` connections, each sending ``depth`` pipelined GETs, and
    never reading (a small receive buffer: the kernel holds little for them)."""
    parts = urllib.parse.urlsplit(base)
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(request * depth)
        sockets.append(sock)
    return sockets


def held_unsent(server):
    return sum(channel.total_outbufs_len for channel in list(server.active_channels.values()))


@pytest.mark.slow
def test_clients_pipelining_without_reading_hold_bounded_memory_and_are_cut(clock, servers):
    # 300 such connections of 160 requests took 1.4 GB, kept after they
    # closed, and were never cut. Per connection now: at most
    # MAX_PIPELINED_REQUESTS wait (beyond, it is closed after the 16th
    # answer), answers beyond UNSENT_ANSWER_BYTES wait for the client to read
    # before the next request is served, and a connection that reads nothing
    # for the unread deadline is reset.
    answer = len(heartbeat_lite.dump_json(heartbeat_lite.openapi_document())) + 256  # and its head
    per_connection = heartbeat_lite.UNSENT_ANSWER_BYTES + answer
    with heartbeat_lite.create_app(clock=clock) as service, \
            heartbeat_lite.serve(service, port=0, unread_deadline=1.0) as base:
        server = servers[0]
        timed_get(base, "/healthz")
        before = resident_bytes()
        deep = pipelining_without_reading(base, 20, 160)
        shallow = pipelining_without_reading(base, 20, heartbeat_lite.MAX_PIPELINED_REQUESTS - 4)
        try:
            started, peak = time.monotonic(), 0
            while server.active_channels and time.monotonic() - started < 8:
                peak = max(peak, held_unsent(server))
                others_are_answered(base, rounds=1)
                time.sleep(0.05)
            assert not server.active_channels, f"{len(server.active_channels)} connection(s) still open"
            assert time.monotonic() - started < 2 * 1.0 + 3.0  # reset within twice the deadline (and slack)
            assert peak <= 40 * per_connection, peak
            assert resident_bytes() - before < 64 * 1024 * 1024
            for sock in shallow:  # reset, not closed politely: the kernel dropped the unread answers
                sock.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    while sock.recv(1 << 20):
                        pass
        finally:
            for sock in deep + shallow:
                sock.close()
        others_are_answered(base, rounds=1)


def test_a_pipelined_request_beyond_the_limit_closes_the_connection_after_the_last_kept(clock):
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0) as base:
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n" * 40)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        answers = received.count(b"HTTP/1.1 200 OK")
        assert answers == heartbeat_lite.MAX_PIPELINED_REQUESTS, answers
        assert received.count(b"Connection: close") == 1 and received.endswith(b'{"status": "ok", "outbox": 0}')
        others_are_answered(base, rounds=1)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_request_with_both_content_length_and_chunked_is_refused_and_so_is_what_follows(clock, version):
    # a proxy in front reading Content-Length would see the chunked body as
    # another request: refuse it (400, JSON) and close, with what is pipelined
    smuggled = (f"POST /api/v2/event HTTP/{version}\r\nHost: localhost\r\nAuthorization: Basic cm9vdDpyb290\r\n"
                "Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                "2\r\n{}\r\n0\r\n\r\n"
                "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").encode()
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0) as base:
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(smuggled)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 Bad Request" in head.split(b"\r\n")[0]
        assert b"Connection: close" in head and b"application/json" in head
        assert json.loads(body) == {"name": "", "description": "bad request"}  # and nothing after it
        assert service.engine.events_received == 0


@pytest.mark.parametrize("chunk", [1024, 65536])
def test_a_chunked_body_is_bounded_by_what_it_decodes_to_as_a_content_length_is(clock, chunk):
    # exactly the limit is accepted however it is framed; one byte more is
    # refused (413, JSON), the body never reaching the engine
    limit = heartbeat_lite.MAX_EVENT_BODY_BYTES
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0) as base:
        parts = urllib.parse.urlsplit(base)
        for size, status in ((limit, 200), (limit + 1, 413)):
            document = b"[" + b" " * (size - 2) + b"]"  # an empty batch of events, of that size
            framed = b"".join(b"%x\r\n%s\r\n" % (len(document[i:i + chunk]), document[i:i + chunk])
                              for i in range(0, len(document), chunk)) + b"0\r\n\r\n"
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.putrequest("POST", "/api/v2/event")
            for name, value in (("Authorization", "Basic cm9vdDpyb290"), ("Content-Type", "application/json"),
                                ("Transfer-Encoding", "chunked")):
                conn.putheader(name, value)
            conn.endheaders(framed)
            answer = conn.getresponse()
            assert (answer.status, answer.headers["Content-Type"]) == (status, "application/json"), size
            assert json.loads(answer.read()) == ({"received": 0, "matched": []} if status == 200 else
                                                 {"name": "", "description": f"request body larger than {limit} bytes"})
            conn.close()


def test_reads_from_memory_are_answered_while_every_worker_waits_for_the_engine(servers):
    # GET one heartbeat and events that only refresh memory are served by the
    # event loop itself (no hand-over to a worker and back); what would wait
    # (the engine's lock held, a write) goes to a worker, and the loop never
    # waits: with the only worker stuck behind the lock, reads still answer
    clock = FakeClock(time.time())
    with heartbeat_lite.create_app(clock=clock) as service, \
            heartbeat_lite.serve(service, port=0, threads=1) as base:
        heartbeat_id = new_heartbeat(service)
        parts = urllib.parse.urlsplit(base)
        authorization = {"Authorization": "Basic " + base64.b64encode(b"root:root").decode(),
                         "Content-Type": "application/json"}

        def post_event():
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request("POST", "/api/v2/event", json.dumps({"connector": "connect", "connector_name": "c01"}),
                         authorization)
            answer = conn.getresponse()
            results.append((answer.status, json.loads(answer.read())))
            conn.close()

        results = []
        dispatcher = servers[0].task_dispatcher
        with service.engine.core.lock:  # as a tick or a storm chunk holds it
            poster = threading.Thread(target=post_event)
            poster.start()
            deadline = time.monotonic() + 10
            while dispatcher.active_count < 1:  # the event went to the worker, which waits for the lock
                assert time.monotonic() < deadline, "the event was not handed to a worker"
                time.sleep(0.01)
            status, seconds = timed_get(base, f"/api/v2/heartbeat/{heartbeat_id}", "root:root")
            assert status == 200 and seconds < 1.0
            assert not results
        poster.join(30)
        # the first event of a pending heartbeat is written: a worker did it
        assert results == [(200, {"received": 1, "matched": [heartbeat_id]})]
        assert service.engine.views.status(heartbeat_id)["status"] == "up"
        post_event()  # up, and written lately: answered from memory
        assert results[-1] == (200, {"received": 1, "matched": [heartbeat_id]})


@pytest.mark.sqlite_only("on PostgreSQL a refresh is written before its answer: by a worker")
def test_a_ping_to_a_heartbeat_up_is_answered_while_every_worker_is_busy():
    # A Healthchecks ping to a heartbeat up is served by the event loop
    # itself, as an event is: with the only worker held (here by an on_alarm
    # that takes its time, after the engine's lock is released), a crontab's
    # ping still answers at once; the failure went to the worker.
    clock = FakeClock(time.time())
    held, entered, released = [], threading.Event(), threading.Event()

    def on_alarm(event):
        if held:
            entered.set()
            released.wait(30)

    with heartbeat_lite.create_app(clock=clock, on_alarm=on_alarm) as service, \
            heartbeat_lite.serve(service, port=0, threads=1) as base:
        up = new_heartbeat(service, name="up", pattern={"job": "up"})
        failing = new_heartbeat(service, name="failing", pattern={"job": "failing"})
        assert timed_get(base, f"/ping/{up}")[0] == 200  # pending -> up: written by a worker
        results = []
        held.append(True)
        failer = threading.Thread(target=lambda: results.append(timed_get(base, f"/ping/{failing}/fail", timeout=30)))
        failer.start()
        try:
            assert entered.wait(10), "the failure's alarm was not published"
            status, seconds = timed_get(base, f"/ping/{up}")
            assert status == 200 and seconds < 1.0
            assert not results  # the worker is still held
        finally:
            released.set()
            failer.join(30)
        assert results and results[0][0] == 200
        assert service.engine.pings.counts == {"success": 2, "start": 0, "fail": 1, "log": 0}
        listed = client(service).get(f"/api/v2/heartbeat/{up}/events").json["events"]
        assert [item["event"]["kind"] for item in listed] == ["success", "success"]


def test_a_ping_the_event_loop_hands_to_a_worker_is_taken_once():
    # A ping the event loop starts and finds it cannot finish in memory
    # (a first success that writes, a start, a success that ends a run: its
    # duration goes to the history) is served again by a worker: counted,
    # listed and timed once.
    clock = FakeClock(time.time())
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0, threads=2) as base:
        job = new_heartbeat(service, name="job", pattern={"job": "job"})
        for path in ("", "/start", "", "", "/log"):
            assert timed_get(base, f"/ping/{job}{path}")[0] == 200
            clock.advance(5)
        assert service.engine.pings.counts == {"success": 3, "start": 1, "fail": 0, "log": 1}
        app = client(service)
        kinds = [item["event"]["kind"] for item in app.get(f"/api/v2/heartbeat/{job}/events").json["events"]]
        assert sorted(kinds) == ["log", "start", "success", "success", "success"]
        finished = [row for row in app.get(f"/api/v2/heartbeat/{job}/history").json["history"]
                    if "duration" in row]
        assert [row["duration"] for row in finished] == [5.0]


def test_pipelined_pings_the_loop_and_the_workers_serve_are_answered_in_order():
    # One connection, requests the event loop answers (a success to a
    # heartbeat up, a bad rid), hands to a worker after starting them (an
    # unknown id, a slug to create, a failure) or never takes (/healthz):
    # each answer in its request's place, each ping taken once.
    clock = FakeClock(time.time())
    with heartbeat_lite.create_app(clock=clock, ping_key="k3y") as service, \
            heartbeat_lite.serve(service, port=0, threads=2) as base:
        job = new_heartbeat(service, name="job", pattern={"job": "job"})
        assert timed_get(base, f"/ping/{job}")[0] == 200  # up, written: the next successes are from memory
        paths = [f"/ping/{job}", "/ping/00000000-0000-4000-8000-000000000000", f"/ping/{job}?rid=x",
                 "/ping/k3y/new-job?create=1", "/healthz", f"/ping/{job}/fail", f"/ping/{job}", f"/ping/{job}"]
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall("".join(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                                 f"{'Connection: close' if n == len(paths) - 1 else 'X-N: ' + str(n)}\r\n\r\n"
                                 for n, path in enumerate(paths)).encode())
            answers = b""
            while chunk := sock.recv(65536):
                answers += chunk
        bodies = re.findall(rb"HTTP/1.1 (\d+) .*?\r\n\r\n(OK|not found|invalid uuid format|Created|\{[^}]*\})",
                            answers, re.S)
        assert [(int(status), body[:10]) for status, body in bodies] == [
            (200, b"OK"), (404, b"not found"), (400, b"invalid uu"), (201, b"Created"), (200, b'{"status":'),
            (200, b"OK"), (200, b"OK"), (200, b"OK")]
        assert service.engine.pings.counts == {"success": 5, "start": 0, "fail": 1, "log": 0}


def test_a_ping_with_a_chunked_or_long_body_is_served_by_a_worker_whatever_its_method():
    # The event loop reads a ping's body, a GET's as a POST's: a GET or HEAD
    # with a chunked body, or one over INLINE_BODY_BYTES, was served in the
    # loop whatever its length (up to MAX_EVENT_BODY_BYTES, from a file on
    # disk past waitress' 512 KiB), when a POST's was bounded.
    clock = FakeClock(time.time())
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0, threads=2) as base:
        job = new_heartbeat(service, name="job", pattern={"job": "job"})
        assert timed_get(base, f"/ping/{job}")[0] == 200  # up, written: the next are answered from memory
        pings = service.engine.pings
        ping = pings.ping
        tried_inline = []

        def recording(*args):
            tried_inline.append(not args[-1])  # blocking
            return ping(*args)

        pings.ping = recording
        parts = urllib.parse.urlsplit(base)
        long_body = b"x" * (heartbeat_lite.INLINE_BODY_BYTES + 1)
        for method, framing, body, inline in (
                ("GET", "length", b"", True), ("HEAD", "length", b"", True), ("GET", "length", b"short", True),
                ("POST", "length", b"short", True), ("POST", "chunked", b"short", False),
                ("GET", "chunked", b"short", False), ("HEAD", "chunked", b"short", False),
                ("GET", "length", long_body, False), ("POST", "length", long_body, False)):
            tried_inline.clear()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            conn.putrequest(method, f"/ping/{job}")
            if framing == "chunked":
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            else:
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
            assert conn.getresponse().status == 200
            conn.close()
            assert tried_inline[0] is inline, (method, framing, len(body))


def test_a_request_a_worker_takes_before_the_event_loop_is_done_is_served_as_by_a_worker(servers):
    # The event loop hands a request to a worker (a ping it cannot finish in
    # memory; the next pipelined request, once it answered one) and goes on:
    # a worker may start before the loop has returned. It served the request
    # as the loop does, raised WouldBlock in turn, and that request (and the
    # connection) was never answered. Here every worker starts at once and
    # the loop waits for it: the worst order the threads can run in.
    clock = FakeClock(time.time())
    with heartbeat_lite.create_app(clock=clock) as service, heartbeat_lite.serve(service, port=0, threads=2) as base:
        job = new_heartbeat(service, name="job", pattern={"job": "job"})

        dispatcher = servers[0].task_dispatcher
        queue = dispatcher.add_task

        def at_once(channel):  # from the loop: a worker starts, and the loop waits for it
            if threading.get_ident() != servers[0].loop_thread:
                return queue(channel)
            worker = threading.Thread(target=channel.service)
            worker.start()
            worker.join(10)

        dispatcher.add_task = at_once
        assert timed_get(base, f"/ping/{job}", timeout=5)[0] == 200  # pending -> up: written, by the worker
        parts = urllib.parse.urlsplit(base)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            # up: from memory, by the loop; then a start (a worker's), then a success (ends the run: a worker's)
            sock.sendall("".join(f"GET /ping/{job}{suffix} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                                 f"{'Connection: close' if last else 'X-A: b'}\r\n\r\n"
                                 for suffix, last in (("", False), ("/start", False), ("", True))).encode())
            answers = b""
            while chunk := sock.recv(65536):
                answers += chunk
        assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200"] * 3
        assert service.engine.pings.counts == {"success": 3, "start": 1, "fail": 0, "log": 0}


###############################################################################
# Forwarding to a misbehaving target
###############################################################################


class Target:
    """A local HTTP target answering each request with the next of
    ``answers`` (status, extra headers), recording (path, headers)."""

    def __init__(self, answers=()):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        target = self
        self.answers = list(answers)
        self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._answer()

            def do_GET(self):
                self._answer()

            def _answer(self):
                target.requests.append((self.command, self.path, dict(self.headers)))
                status, headers = target.answers.pop(0) if target.answers else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path="/api/v2/event", userinfo=""):
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Dribbler:
    """A target that reads the request, then sends its answer one byte every
    ``interval`` seconds, for as long as the connection stays open."""

    def __init__(self, interval=0.05):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.interval = interval
        self.stopping = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self):
        return f"http://u:secret@127.0.0.1:{self.listener.getsockname()[1]}/api/v2/event"

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._dribble, args=(conn,), daemon=True).start()

    def _dribble(self, conn):
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nX-Padding: " + b"x" * 100000
        with conn:
            conn.recv(65536)
            for byte in answer:
                if self.stopping.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self):
        self.stopping.set()
        self.listener.close()


class RawTarget:
    """A target speaking raw bytes: each connection (after the request is
    read) gets the next of ``answers``, a list of byte strings sent one
    every ``interval`` seconds (then the connection is closed); beyond
    them, a complete 200. Records how many requests it answered in full."""

    COMPLETE = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"]

    def __init__(self, answers, interval=0.0):
        self.answers = list(answers)
        self.interval = interval
        self.delivered = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.stopping = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/api/v2/event?authkey=s3cr3t-key"

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            pieces = self.answers.pop(0) if self.answers else self.COMPLETE
            threading.Thread(target=self._answer, args=(conn, pieces), daemon=True).start()

    def _answer(self, conn, pieces):
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            while len(body) < length:
                body += conn.recv(65536)
            for piece in pieces:
                if self.stopping.wait(self.interval):
                    return
                try:
                    conn.sendall(piece)
                except OSError:
                    return
            if pieces is self.COMPLETE:
                self.delivered.append(body)

    def close(self):
        self.stopping.set()
        self.listener.close()


def alarmed_forwarding_service(clock, url, db=":memory:"):
    service = heartbeat_lite.create_app(db=db, clock=clock, forward_url=url)
    new_heartbeat(service)
    clock.advance(61)
    service.tick()  # one alarm in the outbox
    assert service.engine.outbox_depth() == 1
    return service


def test_a_redirect_is_a_failed_attempt_never_followed_and_credentials_stay_home(clock):
    elsewhere = Target()
    target = Target([(302, {"Location": elsewhere.url("/steal")}), (307, {"Location": elsewhere.url("/steal")}),
                     (301, {"Location": elsewhere.url("/steal")})])
    try:
        with alarmed_forwarding_service(clock, target.url(userinfo="canopsis:s3cret@")) as service:
            for attempt in (1, 2, 3):
                assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0] * 2 ** (attempt - 1)
                assert service.forwarder.failures == attempt
                assert service.engine.outbox_depth() == 1  # not delivered: kept for the retry
            assert service.deliver() is None  # the target answers 200 now
            assert service.engine.outbox_depth() == 0
        assert elsewhere.requests == []
        assert len(target.requests) == 4
        assert all(headers["Authorization"] == "Basic " + base64.b64encode(b"canopsis:s3cret").decode()
                   for _, _, headers in target.requests)
    finally:
        target.close()
        elsewhere.close()


def test_a_dribbling_target_is_cut_at_the_attempt_deadline(clock, caplog):
    dribbler = Dribbler()
    try:
        with alarmed_forwarding_service(clock, dribbler.url()) as service:
            service.forwarder.timeout = 0.5
            started = time.monotonic()
            assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
            assert 0.5 <= time.monotonic() - started < 1.5
            assert service.engine.outbox_depth() == 1
            assert "no complete answer within 0.5s" in caplog.text
    finally:
        dribbler.close()


def test_stopping_waits_for_a_stuck_attempt_at_most_its_deadline(tmp_path):
    dribbler = Dribbler()
    try:
        clock = FakeClock(time.time())
        with alarmed_forwarding_service(clock, dribbler.url(), db=str(tmp_path / "hb.db")) as service:
            service.forwarder.timeout = 0.5
            with heartbeat_lite.serve(service, port=0):
                deadline = time.monotonic() + 5
                while dribbler.connections == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert dribbler.connections == 1  # the forwarder thread is in its attempt
                started = time.monotonic()
            assert time.monotonic() - started < 1.5
    finally:
        dribbler.close()


DRIBBLED_200 = [b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n"] + [b"x"] * 30


def test_a_200_whose_body_dribbles_past_the_deadline_is_a_failed_attempt(clock, caplog):
    # the head arrives at once, then the body one byte every 0.3 s: at the
    # 1 s deadline the watchdog cuts it with 3 of its 30 bytes read
    target = RawTarget([DRIBBLED_200], interval=0.3)
    try:
        with alarmed_forwarding_service(clock, target.url()) as service:
            service.forwarder.timeout = 1.0
            started = time.monotonic()
            assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
            assert 1.0 <= time.monotonic() - started < 5.0  # cut at the deadline, not at the body's end (9 s)
            assert service.engine.outbox_depth() == 1  # not acknowledged: redelivered later
            assert "no complete answer within 1s" in caplog.text
            assert service.deliver() is None  # the target answers in full now
            assert service.engine.outbox_depth() == 0
            assert len(target.delivered) == 1 and b'"state": 3' in target.delivered[0]
    finally:
        target.close()


def test_a_200_shorter_than_its_content_length_is_a_failed_attempt(clock):
    cut_short = [b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{\"ok\""]  # then the target closes
    target = RawTarget([cut_short, cut_short])
    try:
        with alarmed_forwarding_service(clock, target.url()) as service:
            assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
            assert service.engine.outbox_depth() == 1
            assert service.deliver() == 2 * heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
            assert service.deliver() is None and service.engine.outbox_depth() == 0
    finally:
        target.close()


def test_an_alarm_a_dribbled_200_did_not_deliver_is_delivered_after_a_restart(tmp_path):
    # the process boundary: the server's forwarder meets the dribbling
    # target, the service stops (as at a SIGTERM), and a restart delivers
    target = RawTarget([DRIBBLED_200], interval=0.3)
    path = str(tmp_path / "hb.db")
    try:
        clock = FakeClock(time.time())
        with alarmed_forwarding_service(clock, target.url(), db=path) as service:
            service.forwarder.timeout = 1.0
            with heartbeat_lite.serve(service, port=0):
                deadline = time.monotonic() + 10
                while service.forwarder.failures == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert service.forwarder.failures == 1
        assert target.delivered == []
        with heartbeat_lite.create_app(db=path, clock=clock, forward_url=target.url()) as service:
            assert service.engine.outbox_depth() == 1
            assert service.deliver() is None
        assert len(target.delivered) == 1
    finally:
        target.close()
