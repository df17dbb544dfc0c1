"""Benchmark heartbeat-lite against its performance targets (TARGETS below; --help lists them).

Every figure is a ratio (or a latency) measured in this one run on this one
machine, against a baseline served the same way in the same run, so a shared,
noisy machine skews both sides alike:

- a bare bottle + waitress app that parses a JSON body of the same size and
  answers ``{}`` (a 1,000-event batch: a body of the size of ours, the
  1,000 ids; a GET: a small fixed object), and heartbeat-lite, each in its
  own process, with the same waitress thread count, both silencing
  waitress' "Task queue depth" warnings;
- the same concurrent HTTP load on each (wrk when installed, else a
  multi-process standard-library client), at 8 and at 64 connections, in
  interleaved rounds (A B A B ...) so that drift hits all alike; medians of
  requests/s, p50/p99 latency;
- the cost of an expiry tick with nothing due, in process;
- alarm latency in server mode, at a local --forward-url receiver;
- resident memory of a server holding 100,000 heartbeats;
- a 1,000-event batch, each event matching its own heartbeat, against the
  baseline parsing the same body;
- one-event ingestion while 100,000 heartbeats go down in one storm;
- matching with 5,000 distinct pattern key sets against one;
- the status page with 10,000 heartbeats: bytes per load (plain and
  gzipped) and time to serve (sequential requests: the first page, a deep
  page, a search, a filter);
- one heartbeat grouped by connector_name with 100,000 members: ingestion
  (the event refreshes one member) against 10 heartbeats, the expiry tick
  against 10 heartbeats, resident memory.
- 100,000 heartbeats with a cron ``schedule`` (docs/pings.md; docs/performance.md) against
  100,000 with an interval: the expiry tick with nothing due, resident
  memory, and (shown, no target) ingestion of an event matching one of them
  (``--only schedules`` runs just these);
- notifications: 10,000 heartbeats falling due at once, their alarms to a
  local webhook channel (one POST each), alone and beside a second channel
  whose target never answers (interleaved, medians); alarm to a real
  Alertmanager's API (``--only notify`` runs just these).

    python bench.py           # the full run, a few minutes
    python bench.py --quick   # a smoke run, under a minute
    python bench.py --only http     # ingestion, GET one and the batch against
                                    # the baseline at 8 and 64 connections
    python bench.py --only notify   # the notification rows alone, a few minutes
                                    # (groups: --help; several: --only http,page)
    python bench.py --quick --db postgresql://user:password@host/dbname
                              # the same on PostgreSQL: each database of the
                              # run is a schema bench_<name> there (dropped
                              # and made again); the baseline is unchanged

Exit status 0 when every target is met, 1 otherwise.
"""

import argparse
import base64
import collections
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import heartbeat_lite

HERE = os.path.dirname(os.path.abspath(__file__))
USER, PASSWORD = "bench", "bench"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
EVENT = {"connector": "bench", "connector_name": "c7", "component": "srv-7", "resource": "cpu",
         "event_type": "check", "source_type": "resource", "state": 0, "output": "fine"}
EVENT_BODY = json.dumps(EVENT).encode()
N_SMALL, N_LARGE = 10, 100_000
BATCH = 1000  # events per request in the batch scenario, each matching its own heartbeat
KEY_SETS = 5000  # distinct pattern key sets in the matching scenario
N_PAGE = 10_000  # heartbeats behind the status page scenario (one in ten down)
PAGE_PATHS = ("/", "/?page=50", "/?q=bench+99", "/?status=down")  # what an operator opens
BATCH_BODY = json.dumps([{**EVENT, "connector_name": f"c{i}"} for i in range(BATCH)]).encode()

MANY = 64  # the many-connections rows (cron fires many jobs on the same minute)


def ratio(key, of, measure="rps"):
    """A target's measure: row ``key``'s ``measure`` over row ``of``'s."""
    return lambda m: m[key][measure] / m[of][measure]


# The targets: what is measured, comparison, limit, why, its group (--only
# runs groups), the measurements it needs (load rows of LOAD_ROWS, or the
# keys of MEASUREMENTS), and how the figure is computed from them. A new row
# is a LOAD_ROWS entry (and a SERVERS entry if it needs its own server) and
# a target here.
Target = collections.namedtuple("Target", "name op limit why group needs measure")
TARGETS = (
    Target("ingestion / baseline POST, 8 conn.", ">=", 0.95,
           "POST /api/v2/event with one matching event, over real HTTP on waitress, in requests/s, against the "
           "bare bottle+waitress app parsing the same JSON body and answering {} (this version's target; the first asked 0.7)",
           "http", ("base_post", "ingest"), ratio("ingest", "base_post")),
    Target("ingestion p99 / baseline POST p99, 8 conn.", "<=", 2.0, "p99 latency of that ingestion under the same load",
           "http", ("base_post", "ingest"), ratio("ingest", "base_post", "p99")),
    Target("GET one / baseline GET, 8 conn.", ">=", 1.0,
           "GET /api/v2/heartbeat/<id>, against the baseline answering a small fixed object (this version's target; the first asked 0.8)",
           "http", ("base_get", "get_one"), ratio("get_one", "base_get")),
    Target(f"ingestion / baseline POST, {MANY} conn.", ">=", 0.9,
           f"the same ingestion and baseline with {MANY} concurrent connections: cron fires many jobs on the same minute",
           "http", ("base_post_many", "ingest_many"), ratio("ingest_many", "base_post_many")),
    Target(f"ingestion p99 / baseline p99, {MANY} conn.", "<=", 2.0, "p99 latency of that ingestion",
           "http", ("base_post_many", "ingest_many"), ratio("ingest_many", "base_post_many", "p99")),
    Target(f"GET one / baseline GET, {MANY} conn.", None, None, f"GET one with {MANY} connections: shown, no target "
           "(the target is at 8)", "http", ("base_get_many", "get_one_many"), ratio("get_one_many", "base_get_many")),
    Target(f"{BATCH:,}-event batch events/s / baseline", ">=", 0.8,
           f"POST /api/v2/event with {BATCH:,} events matching {BATCH:,} heartbeats, against the baseline "
           f"parsing the same body and answering a body of the same size as ours (the {BATCH:,} ids)",
           "http", ("base_batch", "batch"), ratio("batch", "base_batch")),
    Target(f"ingestion N={N_LARGE:,} / N={N_SMALL}", ">=", 0.8,
           "ingestion throughput with that many heartbeats: matching does not depend on N",
           "scale", ("ingest", "ingest_large"), ratio("ingest_large", "ingest")),
    Target(f"expiry tick N={N_LARGE:,} / N={N_SMALL}", "<=", 2.0, "cost of an expiry tick with nothing due",
           "scale", ("ticks",), lambda m: m["ticks"]["large"] / m["ticks"]["small"]),
    Target(f"resident memory, N={N_LARGE:,} (MiB)", "<=", 200.0, "of a server holding that many heartbeats",
           "scale", ("ingest_large",), lambda m: m["memory"]["large"]),
    Target(f"ingestion, {KEY_SETS:,} pattern key sets / 1", ">=", 0.8,
           "matching does not depend on how patterns are shaped (index by pairs, not key sets)",
           "scale", ("ingest", "ingest_key_sets"), ratio("ingest_key_sets", "ingest")),
    Target(f"ingestion {N_LARGE:,} members / N={N_SMALL}", ">=", 0.8,
           f"one heartbeat with group_by and {N_LARGE:,} members, the event refreshing one of them, against "
           f"{N_SMALL} heartbeats", "scale", ("ingest", "ingest_members"), ratio("ingest_members", "ingest")),
    Target(f"expiry tick {N_LARGE:,} members / N={N_SMALL}", "<=", 2.0, "cost of an expiry tick with nothing due",
           "scale", ("ticks",), lambda m: m["ticks"]["members"] / m["ticks"]["small"]),
    Target(f"resident memory, {N_LARGE:,} members (MiB)", "<=", 200.0, "of a server holding that many members",
           "scale", ("ingest_members",), lambda m: m["memory"]["members"]),
    Target("alarm latency p99, server mode (ms)", "<=", 100.0,
           "from a deadline to the alarm reaching a local --forward-url receiver",
           "alarms", ("alarms",), lambda m: percentile(m["alarms"], 99) * 1e3),
    Target(f"ingestion p99 in a {N_LARGE:,}-heartbeat storm (ms)", "<=", 100.0,
           f"one-event ingestion while {N_LARGE:,} heartbeats go down at once on the same server",
           "storm", ("storm",),
           lambda m: m["storm"]["p99"] * 1e3 if m["storm"]["down"] >= N_LARGE - 1 else float("inf")),  # no storm, no figure
    Target(f"status page, N={N_PAGE:,}: KB per load", "<=", 200.0,
           "bytes of the largest of those pages, uncompressed (gzipped is printed too)",
           "page", ("page",), lambda m: max(plain for plain, _ in m["page"][0].values()) / 1000),
    Target(f"status page, N={N_PAGE:,}: p99 ms to serve", "<=", 100.0,
           f"sequential GETs of {', '.join(PAGE_PATHS)} on waitress, each from request to last byte",
           "page", ("page",), lambda m: percentile(m["page"][1], 99) * 1e3),
)
TARGETS += (
    Target("GET /ping/<id> / baseline GET, 8 conn.", ">=", 0.9,
           "a Healthchecks ping by id (docs/pings.md), against the bare bottle+waitress GET",
           "ping", ("base_get", "ping"), ratio("ping", "base_get")),
)
TARGETS += (
    Target(f"expiry tick {N_LARGE:,} scheduled / {N_LARGE:,} interval", "<=", 2.0,
           "cost of an expiry tick with nothing due, heartbeats with a cron schedule against heartbeats with an "
           "interval: a schedule's next time is computed once per event, never per tick",
           "schedules", ("ticks_scheduled",),
           lambda m: m["ticks_scheduled"]["scheduled"] / m["ticks_scheduled"]["large"]),
    Target(f"resident memory {N_LARGE:,} scheduled / {N_LARGE:,} interval", "<=", 2.0,
           "of a server holding that many heartbeats with a schedule, against one holding as many with an interval",
           "schedules", ("ingest_large", "ingest_scheduled"),
           lambda m: m["memory"]["scheduled"] / m["memory"]["large"]),
    Target(f"ingestion, {N_LARGE:,} scheduled / {N_LARGE:,} interval", None, None,
           "an event matching a heartbeat with a schedule (its next run computed, its refresh written at once, "
           "never coalesced): shown, no target", "schedules", ("ingest_large", "ingest_scheduled"),
           ratio("ingest_scheduled", "ingest_large")),
)
NOTIFY_STORM = 10_000  # alarms in the notification storm
TARGETS += (
    Target(f"{NOTIFY_STORM:,}-alarm storm to a webhook channel (s)", "<=", 60.0,
           f"from the deadline of {NOTIFY_STORM:,} heartbeats falling due at once to the last of their alarms "
           "received by a local webhook channel (one POST each)", "notify", ("notify",), lambda m: m["notify"][0]),
    Target("a dead second channel delays the webhook by (s)", "<=", 1.0,
           "the same storm with a second default channel that never answers: how much later the webhook "
           "channel got its last alarm", "notify", ("notify",), lambda m: m["notify"][1] - m["notify"][0]),
    Target("alarm to Alertmanager, p99 after the deadline (s)", "<=", 2.0,
           "from a deadline to the alert being listed by a real Alertmanager's GET /api/v2/alerts",
           "notify", ("alertmanager",), lambda m: percentile(m["alertmanager"], 99)),
)
GROUPS = tuple(dict.fromkeys(target.group for target in TARGETS))

# The HTTP load rows, run in interleaved rounds: key, what is shown, the
# server (a SERVERS key), method, path ("{id}": the heartbeat the server's
# set-up returned), body, connections ("many": --many, 64 by default;
# else --connections, 8 by default).
LOAD_ROWS = (
    ("base_post", "baseline POST (bare bottle+waitress)", "baseline", "POST", "/api/v2/event", EVENT_BODY, 8),
    ("base_get", "baseline GET (bare bottle+waitress)", "baseline", "GET", "/api/v2/heartbeat/x", b"", 8),
    ("ingest", f"ingest 1 matching event, N={N_SMALL}", "small", "POST", "/api/v2/event", EVENT_BODY, 8),
    ("get_one", f"GET /api/v2/heartbeat/<id>, N={N_SMALL}", "small", "GET", "/api/v2/heartbeat/{id}", b"", 8),
    ("base_post_many", "baseline POST", "baseline", "POST", "/api/v2/event", EVENT_BODY, "many"),
    ("ingest_many", f"ingest 1 matching event, N={N_SMALL}", "small", "POST", "/api/v2/event", EVENT_BODY, "many"),
    ("base_get_many", "baseline GET", "baseline", "GET", "/api/v2/heartbeat/x", b"", "many"),
    ("get_one_many", f"GET /api/v2/heartbeat/<id>, N={N_SMALL}", "small", "GET", "/api/v2/heartbeat/{id}", b"",
     "many"),
    ("base_batch", f"baseline POST {BATCH:,}-event batch", "baseline", "POST", "/api/v2/event", BATCH_BODY, 8),
    ("batch", f"ingest {BATCH:,}-event batch, {BATCH:,} matched", "batch", "POST", "/api/v2/event", BATCH_BODY, 8),
    ("ingest_large", f"ingest 1 matching event, N={N_LARGE:,}", "large", "POST", "/api/v2/event", EVENT_BODY, 8),
    ("ingest_key_sets", f"ingest 1 matching event, {KEY_SETS:,} key sets", "keysets", "POST", "/api/v2/event",
     EVENT_BODY, 8),
    ("ingest_members", f"ingest 1 event, {N_LARGE:,} members", "members", "POST", "/api/v2/event", EVENT_BODY, 8),
    ("ping", f"GET /ping/<id>, N={N_SMALL}", "small", "GET", "/ping/{id}", b"", 8),
    ("ingest_scheduled", f"ingest 1 matching event, N={N_LARGE:,} scheduled", "scheduled", "POST", "/api/v2/event",
     EVENT_BODY, 8),
)

# The baseline: what any bottle + waitress JSON service costs, with no work.
BASELINE_APP = r'''
import json, logging, sys, uuid
import bottle, waitress

logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # as heartbeat-lite's CLI does

FIXED = {"_id": "cf7097b6-71ba-48db-a749-e9474aa70c93", "name": "Heartbeat", "author": "root",
         "description": "", "pattern": {"connector": "bench", "connector_name": "c7"},
         "expected_interval": "1h", "output": "", "created": 1607680814, "updated": 1607680814}
IDS = [str(uuid.uuid4()) for _ in range(1000)]
app = bottle.Bottle()

@app.post("/api/v2/event")
def post():
    events = json.loads(bottle.request.body.read())
    bottle.response.content_type = "application/json"
    if isinstance(events, dict):
        return "{}"
    # a batch: an answer of the size of heartbeat-lite's, an id per matched event
    return json.dumps({"received": len(events), "matched": IDS[:len(events)]}, ensure_ascii=False)

@app.get("/api/v2/heartbeat/<heartbeat_id>")
def get(heartbeat_id):
    bottle.response.content_type = "application/json"
    return json.dumps(FIXED)

@app.get("/healthz")
def health():
    return "{}"

waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), _quiet=True)
'''


###############################################################################
# Servers
###############################################################################


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server did not become ready")


@contextlib.contextmanager
def server(command, port):
    # stderr to a file, never an unread pipe: a full pipe would stall the server
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            wait_ready(port, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode not in (0, -15):
                errors.seek(0)
                print(f"server {command[1]} exited with {process.returncode}:\n{errors.read()}", file=sys.stderr)


def baseline_server(threads):
    port = free_port()
    return server([sys.executable, "-c", BASELINE_APP, str(port), str(threads)], port), port


class Databases:
    """Where the run's databases are: SQLite files in a temporary
    directory, or schemas ``bench_<name>`` of one PostgreSQL database."""

    def __init__(self, workdir, url=None):
        self.workdir, self.url = workdir, url

    def new(self, name):
        """The ``db`` of a new, empty database called ``name``."""
        if self.url is None:
            return os.path.join(self.workdir, f"{name}.db")
        import psycopg

        schema = f"bench_{name}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}options=-csearch_path%3D{schema}"

    def copy(self, source, name):
        """A new database called ``name`` holding ``source``'s heartbeats."""
        if self.url is None:
            target = self.new(name)
            shutil.copy(source, target)
            return target
        target = self.new(name)
        heartbeat_lite.create_app(db=target).close()  # the schema
        columns = ", ".join(heartbeat_lite._DOCUMENT_COLUMNS + ("status", "refreshed", "last_event", "alarm_since"))
        schema = source.rsplit("%3D", 1)[1]
        execute(target, f"INSERT INTO heartbeat ({columns}) SELECT {columns} FROM {schema}.heartbeat ORDER BY rowid")
        return target


def execute(db, sql, params=()):
    """Run one statement (``?`` placeholders) on ``db``, outside heartbeat-lite;
    the rows, if it returns any."""
    if heartbeat_lite.is_postgres_url(db):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            cursor = conn.execute(heartbeat_lite._pyformat(sql), params)
            return cursor.fetchall() if cursor.description else []
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def heartbeat_server(db, threads, *extra):
    port = free_port()
    command = [sys.executable, os.path.join(HERE, "heartbeat_lite.py"), "--db", db, "--port", str(port),
               "--threads", str(threads), "--user", f"{USER}:{PASSWORD}", "--log-level", "WARNING", *extra]
    return server(command, port), port


SCHEDULE_ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")


def scheduled_fields(i):
    """The schedule of the i-th scheduled heartbeat: a daily run at one of the
    1,440 minutes of a day, in one of four zones, 2h of grace (none falls due
    during the run)."""
    return {"schedule": f"{i % 60} {i // 60 % 24} * * *", "tz": SCHEDULE_ZONES[i % len(SCHEDULE_ZONES)],
            "expected_interval": "2h"}


def prefill(db, count, extra_patterns=(), scheduled=False):
    """A database holding ``count`` heartbeats (pattern connector=bench,
    connector_name=c<i>, interval 1h, or with ``scheduled`` a daily schedule:
    none falls due during the run), plus one per extra pattern."""
    logging.getLogger("heartbeat_lite").setLevel(logging.WARNING)
    patterns = [{"connector": "bench", "connector_name": f"c{i}"} for i in range(count)] + list(extra_patterns)
    with heartbeat_lite.create_app(db=db) as service:
        with service.store.atomic():
            for i, pattern in enumerate(patterns):
                service.engine.create(heartbeat_lite.validate_heartbeat(
                    {"name": f"bench {i}", "pattern": pattern, "expected_interval": "1h",
                     **(scheduled_fields(i) if scheduled else {})}, USER))
    return execute(db, "SELECT id FROM heartbeat WHERE pattern = ?",
                   (heartbeat_lite.canonical_pattern({"connector": "bench", "connector_name": "c7"}),))[0][0]


def prefill_members(db, count):
    """A database holding one heartbeat (pattern connector=bench, grouped by
    connector_name, interval 1h) with ``count`` members c0 ... c<count-1>,
    up. They are written to the store directly: as many first events would
    take the engine minutes of storm chunks, and this is set-up."""
    logging.getLogger("heartbeat_lite").setLevel(logging.WARNING)
    with heartbeat_lite.create_app(db=db) as service:
        engine = service.engine
        heartbeat_id = engine.create(heartbeat_lite.validate_heartbeat(
            {"name": "bench members", "pattern": {"connector": "bench"}, "expected_interval": "1h",
             "group_by": ["connector_name"]}, USER))
        row = service.store.heartbeat(heartbeat_id)
        now = time.time()
        with service.store.atomic():
            service.store.insert_members([
                heartbeat_lite.member_row(row, heartbeat_lite.member_key({"connector_name": f"c{i}"}), now, "up",
                                   last_event=now) for i in range(count)])
            service.store.update_group_status([heartbeat_id])
    return heartbeat_id


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


###############################################################################
# Load
###############################################################################


def request_bytes(method, path, body=b"", close=False):
    """One authenticated HTTP/1.1 request, keep-alive unless ``close``."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += f"Content-Type: application/json\r\nAuthorization: {AUTHORIZATION}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def read_answer(sock, buffer=b""):
    """Read one HTTP answer (with a Content-Length) from a keep-alive
    connection, ``buffer`` holding what was already received.

    :returns: ``(head, body, what follows it)``, bytes.
    """
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(buffer) < length:
        buffer += sock.recv(65536)
    return head, buffer[:length], buffer[length:]


def _client_process(port, raw, seconds, queue):
    """One keep-alive connection sending ``raw`` back to back; reports the
    count, the latencies and the non-2xx answers."""
    latencies, bad = [], 0
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        sock.sendall(raw)
        head, _, buffer = read_answer(sock, buffer)
        latencies.append(time.perf_counter() - started)
        bad += not head.startswith(b"HTTP/1.1 2")
    sock.close()
    queue.put((latencies, bad))


def load_stdlib(port, method, path, body, seconds, connections):
    queue = multiprocessing.Queue()
    raw = request_bytes(method, path, body)
    workers = [multiprocessing.Process(target=_client_process, args=(port, raw, seconds, queue))
               for _ in range(connections)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(x for lat, _ in results for x in lat)
    bad = sum(b for _, b in results)
    if bad:
        raise RuntimeError(f"{bad} non-2xx answers on {method} {path}")
    return {"rps": len(latencies) / seconds, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


WRK_SCRIPT = """
wrk.method = "%s"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "%s"
"""


def load_wrk(port, method, path, body, seconds, connections):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % (method, json.dumps(body.decode()), AUTHORIZATION))
    try:
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name,
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(output)


def parse_wrk(output):
    """requests/s and p50/p99 latency (seconds) from ``wrk --latency`` output."""
    if "Non-2xx" in output:
        raise RuntimeError("non-2xx answers:\n" + output)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
        latency[pct] = float(value) * units[unit]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"]}


def percentile(sorted_values, pct):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


###############################################################################
# In-process and server-mode measurements
###############################################################################


def tick_cost(dbs, ticks, blocks):
    """Seconds per expiry tick with nothing due, per database, measured in
    interleaved blocks; the median block."""
    services = {name: heartbeat_lite.create_app(db=db) for name, db in dbs.items()}
    per_tick = {name: [] for name in dbs}
    try:
        for _ in range(blocks):
            for name, service in services.items():
                started = time.perf_counter()
                for _ in range(ticks):
                    service.tick()
                per_tick[name].append((time.perf_counter() - started) / ticks)
    finally:
        for service in services.values():
            service.close()
    return {name: statistics.median(values) for name, values in per_tick.items()}


class AlarmReceiver:
    """A local --forward-url target noting when each alarm arrives."""

    def __init__(self):
        self.arrived = {}  # heartbeat id -> arrival time of its alarm
        self.done = threading.Event()
        self.expected = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                now = time.time()
                events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for event in events:
                    if event["state"] == 3:
                        receiver.arrived.setdefault(event["heartbeat_id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                if receiver.expected is not None and len(receiver.arrived) >= receiver.expected:
                    receiver.done.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v2/event"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _call(port, method, path, body=b""):
    """One request on a fresh connection; the parsed JSON answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes(method, path, body, close=True))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data.partition(b"\r\n\r\n")[2])


STORM_DELAY_SECONDS = 25  # from setting the storm up to its deadline: covers the server's start
STORM_AFTER_SECONDS = 8  # load kept on after the storm's deadline


def storm_ingestion(db, threads, load, connections):
    """One-event ingestion on a server whose every heartbeat but the one
    the event matches falls due at the same moment, during the load. The
    database is set up before the server starts (deadlines a little ahead,
    no alive record, so the start moves nothing)."""
    due_at = time.time() + STORM_DELAY_SECONDS
    target = heartbeat_lite.canonical_pattern({"connector": "bench", "connector_name": "c7"})
    execute(db, "UPDATE heartbeat SET refreshed = ? - interval_seconds WHERE pattern <> ?", (due_at, target))
    execute(db, "DELETE FROM instance" if heartbeat_lite.is_postgres_url(db) else "DELETE FROM meta")
    context, port = heartbeat_server(db, threads)
    with context:
        ahead = due_at - time.time()
        if ahead < 1:
            raise RuntimeError(f"the server took too long to start: raise STORM_DELAY_SECONDS ({ahead:.1f} s)")
        result = load(port, "POST", "/api/v2/event", EVENT_BODY, round(ahead + STORM_AFTER_SECONDS), connections)
        result["health"] = _call(port, "GET", "/healthz")  # still answering after the storm
    result["down"] = execute(db, "SELECT COUNT(*) FROM heartbeat WHERE status = 'down'")[0][0]
    return result


def _get(sock, path, headers=""):
    """One GET on a keep-alive connection; ``(head bytes, body bytes)``."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTHORIZATION}\r\n{headers}\r\n"
                 .encode())
    head, body, _ = read_answer(sock)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {head.splitlines()[0].decode()}")
    return head, body


def status_page_cost(db, threads, requests):
    """Size and time to serve of the status page on a server holding the
    heartbeats of ``db``, one in ten down: for each of :data:`PAGE_PATHS`,
    bytes plain and gzipped; seconds per request, ``requests`` sequential
    requests in all, alternating paths and encodings."""
    # one in ten due: down at the server's first tick
    execute(db, "UPDATE heartbeat SET refreshed = refreshed - interval_seconds WHERE rowid % 10 = 0")
    context, port = heartbeat_server(db, threads)
    sizes, times = {}, []
    with context, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + 30
        while b"heartbeats down" not in _get(sock, "/")[1]:  # wait for that tick
            if time.monotonic() > deadline:
                raise RuntimeError("the status page shows no alarm")
            time.sleep(0.2)
        for path in PAGE_PATHS:
            plain = _get(sock, path)[1]
            head, zipped = _get(sock, path, "Accept-Encoding: gzip\r\n")
            if b"content-encoding: gzip" not in head.lower():
                raise RuntimeError(f"GET {path} was not gzipped")
            sizes[path] = (len(plain), len(zipped))
        for i in range(requests):
            path = PAGE_PATHS[i % len(PAGE_PATHS)]
            started = time.perf_counter()
            _get(sock, path, "Accept-Encoding: gzip\r\n" if (i // len(PAGE_PATHS)) % 2 else "")
            times.append(time.perf_counter() - started)
    return sizes, sorted(times)


def alarm_latency(databases, count, spread, threads):
    """Seconds from each deadline to its alarm at the receiver, for ``count``
    heartbeats of interval 2 s created over ``spread`` seconds."""
    receiver = AlarmReceiver()
    receiver.expected = count
    (context, port) = heartbeat_server(databases.new("alarms"), threads, "--forward-url", receiver.url)
    rng = random.Random(7)
    try:
        with context:
            ids = []
            for i in range(count):
                answer = _call(port, "POST", "/api/v2/heartbeat", json.dumps(
                    {"name": f"alarm {i}", "pattern": {"alarm": str(i)}, "expected_interval": "2s"}).encode())
                ids.append(answer["description"])
                time.sleep(rng.uniform(0, 2 * spread / count))
            deadlines = {i: _call(port, "GET", f"/api/v2/heartbeat/{i}/status")["deadline"] for i in ids}
            if not receiver.done.wait(spread + 30):
                raise RuntimeError(f"only {len(receiver.arrived)} of {count} alarms arrived")
    finally:
        receiver.close()
    return sorted(receiver.arrived[i] - deadlines[i] for i in ids)


class WebhookReceiver:
    """A local webhook channel's target: notes when each down alarm arrives."""

    def __init__(self):
        self.arrived = {}  # heartbeat id -> arrival time of its down alarm
        self.expected = None
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                now = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body["status"] == "down":
                    receiver.arrived.setdefault(body["heartbeat"]["_id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                if receiver.expected is not None and len(receiver.arrived) >= receiver.expected:
                    receiver.done.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 128
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def dead_target():
    """A socket that accepts connections (the kernel does) and never reads
    nor answers: a channel whose target hangs. Its URL, and the socket."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/never", sock


NOTIFY_DELAY_SECONDS = 12  # from setting the storm up to its deadline: covers the server's start


def notification_storm(databases, name, source, threads, dead):
    """Seconds from the deadline of :data:`NOTIFY_STORM` heartbeats falling
    due at once to the last of their alarms at a webhook channel; with
    ``dead``, a second default channel that never answers."""
    db = databases.copy(source, name)
    due_at = time.time() + NOTIFY_DELAY_SECONDS
    execute(db, "UPDATE heartbeat SET refreshed = ? - interval_seconds", (due_at,))
    execute(db, "DELETE FROM instance" if heartbeat_lite.is_postgres_url(db) else "DELETE FROM meta")
    receiver = WebhookReceiver()
    receiver.expected = NOTIFY_STORM
    hang_url, hang = dead_target()
    context, port = heartbeat_server(db, threads)
    try:
        with context:
            channels = [{"name": "webhook", "kind": "webhook", "url": receiver.url, "default": True}]
            if dead:
                channels.append({"name": "dead", "kind": "webhook", "url": hang_url, "default": True})
            for channel in channels:
                _call(port, "POST", "/api/v2/channel", json.dumps(channel).encode())
            if due_at - time.time() < 1:
                raise RuntimeError("the server took too long to start: raise NOTIFY_DELAY_SECONDS")
            if not receiver.done.wait(due_at - time.time() + 120):
                raise RuntimeError(f"only {len(receiver.arrived)} of {NOTIFY_STORM} alarms arrived")
            return max(receiver.arrived.values()) - due_at
    finally:
        receiver.close()
        hang.close()


ALERTMANAGER = os.environ.get("HEARTBEAT_LITE_TEST_ALERTMANAGER", "/usr/bin/prometheus-alertmanager")


@contextlib.contextmanager
def alertmanager_server(workdir):
    """A real Alertmanager on a free port, one receiver, no cluster: its URL."""
    config = os.path.join(workdir, "alertmanager.yml")
    with open(config, "w") as f:
        f.write('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    port = free_port()
    process = subprocess.Popen([ALERTMANAGER, f"--config.file={config}", f"--storage.path={workdir}/am-data",
                                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("Alertmanager did not become ready") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def alertmanager_latency(databases, workdir, count, spread, threads):
    """Seconds from each deadline to its alert listed by a real Alertmanager,
    for ``count`` heartbeats of interval 2 s created over ``spread`` seconds."""
    with alertmanager_server(workdir) as url:
        context, port = heartbeat_server(databases.new("alertmanager"), threads)
        with context:
            _call(port, "POST", "/api/v2/channel", json.dumps(
                {"name": "alertmanager", "kind": "alertmanager", "url": url, "default": True}).encode())
            rng = random.Random(7)
            deadlines, seen = {}, {}
            stop = time.monotonic() + spread + 30

            def poll():  # from before the first deadline: each alert is seen as soon as it is listed
                while len(seen) < count and time.monotonic() < stop:
                    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as answer:
                        now = time.time()
                        for alert in json.loads(answer.read()):
                            seen.setdefault(alert["labels"].get("heartbeat_id"), now)
                    time.sleep(0.02)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            for i in range(count):
                answer = _call(port, "POST", "/api/v2/heartbeat", json.dumps(
                    {"name": f"am {i}", "pattern": {"am": str(i)}, "expected_interval": "2s"}).encode())
                heartbeat_id = answer["description"]
                deadlines[heartbeat_id] = _call(port, "GET", f"/api/v2/heartbeat/{heartbeat_id}/status")["deadline"]
                time.sleep(rng.uniform(0, 2 * spread / count))
            poller.join()
    missing = [heartbeat_id for heartbeat_id in deadlines if heartbeat_id not in seen]
    if missing:
        raise RuntimeError(f"{len(missing)} of {count} alerts never showed in Alertmanager")
    return sorted(seen[heartbeat_id] - deadline for heartbeat_id, deadline in deadlines.items())


def notification_storms(databases, source, args):
    """The storm without, then with, a dead second channel, interleaved
    (A B A B ...: drift hits both alike): the medians, printed."""
    runs = {False: [], True: []}
    for round_number in range(args.storm_rounds):
        for dead in (False, True):
            runs[dead].append(notification_storm(databases, f"storm{round_number}{int(dead)}", source,
                                                 args.threads, dead))
    alone, with_dead = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"{NOTIFY_STORM:,}-alarm storm, last alarm at the webhook after the deadline, median of "
          f"{args.storm_rounds}: alone {alone:.2f} s ({', '.join(f'{t:.2f}' for t in runs[False])}); "
          f"with a dead second channel {with_dead:.2f} s ({', '.join(f'{t:.2f}' for t in runs[True])})", flush=True)
    return alone, with_dead


def verdicts(targets, measured):
    """Print each target with its measure; 0 when every one is met, else 1."""
    print()
    print(f"{'target':48} {'measured':>9}  {'target':>8}  verdict")
    all_ok = True
    for target in targets:
        value = target.measure(measured)
        if target.op is None:  # shown, no target
            print(f"{target.name:48} {value:9.2f}  {'':>8}  -")
            continue
        fmt = "{:.2f}" if target.limit < 10 else "{:.1f}"
        ok = value >= target.limit if target.op == ">=" else value <= target.limit
        all_ok &= ok
        print(f"{target.name:48} {fmt.format(value):>9}  {target.op} {target.limit:<6g}  {'ok' if ok else 'MISS'}")
    return 0 if all_ok else 1


###############################################################################
# The run
###############################################################################


def store_label(url):
    """What the run's heartbeat-lite servers store in, for the first line."""
    if url is None:
        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    with psycopg.connect(url) as conn:
        return f"PostgreSQL {conn.info.server_version // 10000}.{conn.info.server_version % 10000} " \
               f"({heartbeat_lite.database_label(url)})"


class Setup:
    """The run's databases, each pre-filled once, when first needed."""

    def __init__(self, databases):
        self.databases = databases
        self._made = {}

    def _once(self, name, make):
        if name not in self._made:
            self._made[name] = make()
        return self._made[name]

    def heartbeats(self, count):
        """``(db, id)``: ``count`` heartbeats; the id is the one the bench event matches."""
        def make():
            db = self.databases.new(f"n{count}")
            return db, prefill(db, count)
        return self._once(f"n{count}", make)

    def server_db(self, server):
        """``(db, id)`` of a SERVERS entry (see there)."""
        return self._once(f"server {server}", lambda: SERVERS[server](self))

    def notify_source(self):
        def make():
            db = self.databases.new("notify")
            prefill(db, NOTIFY_STORM)
            return db
        return self._once("notify", make)


def _key_sets_db(setup):
    db = setup.databases.new("keysets")
    return db, prefill(db, N_SMALL, [{f"key{i}": "x", "connector": "bench"} for i in range(KEY_SETS)])


def _batch_db(setup):
    db = setup.databases.new("batch")
    return db, prefill(db, BATCH)


def _members_db(setup):
    db = setup.databases.new("members")
    return db, prefill_members(db, N_LARGE)


def _scheduled_db(setup):
    db = setup.databases.new("scheduled")
    return db, prefill(db, N_LARGE, scheduled=True)


# The heartbeat-lite servers of the load rows: name -> set-up, which makes
# the database and returns (db, the id that "{id}" in a row's path stands for).
SERVERS = {
    "small": lambda setup: setup.heartbeats(N_SMALL),
    "large": lambda setup: setup.heartbeats(N_LARGE),
    "batch": _batch_db,
    "keysets": _key_sets_db,
    "members": _members_db,
    "scheduled": _scheduled_db,
}


def connections_of(row, args):
    """A load row's connections: --many or --connections."""
    return args.many if row[6] == "many" else args.connections


def load_rows(setup, rows, args, load):
    """Run the load ``rows`` in interleaved rounds, each server started once;
    the medians per row key, and the resident memory (MiB) per server after
    the load."""
    contexts, ports, ids, processes = contextlib.ExitStack(), {}, {}, {}
    with contexts:
        for server in dict.fromkeys(row[2] for row in rows):
            if server == "baseline":
                context, ports[server] = baseline_server(args.threads)
            else:
                db, ids[server] = setup.server_db(server)
                context, ports[server] = heartbeat_server(db, args.threads)
            processes[server] = contexts.enter_context(context)
        samples = {row[0]: [] for row in rows}
        for round_number in range(args.rounds):
            for row in rows:
                key, _, server, method, path, body, _ = row
                samples[key].append(load(ports[server], method, path.format(id=ids.get(server)), body,
                                         args.seconds, connections_of(row, args)))
            print(f"round {round_number + 1}/{args.rounds} done", flush=True)
        memory = {server: rss_mib(process.pid) for server, process in processes.items()}
    print()
    print(f"{'scenario':52} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8}")
    results = {}
    for row in rows:
        key, label = row[0], f"{row[1]}, {connections_of(row, args)} conn."
        summary = {measure: statistics.median(r[measure] for r in samples[key]) for measure in ("rps", "p50", "p99")}
        results[key] = summary
        print(f"{label:52} {summary['rps']:15.0f} {summary['p50'] * 1e3:8.2f} {summary['p99'] * 1e3:8.2f}")
    return results, memory


def plan(only=None):
    """What a run checks and measures: the targets of the groups ``only``
    (None: all), the measurements they need, the load rows among those."""
    targets = [target for target in TARGETS if only is None or target.group in only]
    needs = {need for target in targets for need in target.needs}
    return targets, needs, [row for row in LOAD_ROWS if row[0] in needs]


def run(args):
    cores = os.cpu_count()
    use_wrk = shutil.which("wrk") is not None and not args.stdlib_client
    load = load_wrk if use_wrk else load_stdlib
    client = "wrk" if use_wrk else "standard-library client"
    targets, needs, rows = plan(args.only)
    print(f"heartbeat-lite {heartbeat_lite.__version__} benchmark: {cores} cores, Python {platform.python_version()}, "
          f"{store_label(args.db)}; load: {client}, {args.connections} and {args.many} connections, "
          f"{args.rounds} interleaved rounds x {args.seconds} s; waitress threads {args.threads}"
          + (f"; only {', '.join(args.only)}" if args.only else ""), flush=True)
    measured = {}
    with tempfile.TemporaryDirectory(prefix="hl-bench-") as workdir:
        databases = Databases(workdir, args.db)
        setup = Setup(databases)
        started = time.perf_counter()
        for server in dict.fromkeys(row[2] for row in rows):
            if server != "baseline":
                setup.server_db(server)
        if "ticks" in needs:
            tick_dbs = {"small": setup.heartbeats(N_SMALL)[0], "large": setup.heartbeats(N_LARGE)[0],
                        "members": setup.server_db("members")[0]}
        if "ticks_scheduled" in needs:
            scheduled_tick_dbs = {"large": setup.heartbeats(N_LARGE)[0], "scheduled": setup.server_db("scheduled")[0]}
        if "storm" in needs:
            storm_db = databases.copy(setup.heartbeats(N_LARGE)[0], "storm")
        if "page" in needs:
            page_db = databases.new("page")
            prefill(page_db, N_PAGE)
        print(f"pre-filled the databases in {time.perf_counter() - started:.1f} s", flush=True)

        if "ticks" in needs:
            measured["ticks"] = tick_cost(tick_dbs, args.ticks, args.rounds)
        if "ticks_scheduled" in needs:
            measured["ticks_scheduled"] = tick_cost(scheduled_tick_dbs, args.ticks, args.rounds)
        if rows:
            results, measured["memory"] = load_rows(setup, rows, args, load)
            measured.update(results)
        if "ticks" in needs:
            for name, label in (("small", f"N={N_SMALL}"), ("large", f"N={N_LARGE:,}"),
                                ("members", f"{N_LARGE:,} members")):
                print(f"{'expiry tick, none due, ' + label:52} {measured['ticks'][name] * 1e6:12.1f} us per tick")
        if "ticks_scheduled" in needs:
            for name, label in (("large", f"N={N_LARGE:,}"), ("scheduled", f"N={N_LARGE:,} scheduled")):
                print(f"{'expiry tick, none due, ' + label:52} {measured['ticks_scheduled'][name] * 1e6:12.1f} us "
                      "per tick")
        for server, label in (("large", f"N={N_LARGE:,}"), ("members", f"{N_LARGE:,} members"),
                              ("scheduled", f"N={N_LARGE:,} scheduled")):
            if server in measured.get("memory", {}):
                print(f"{'resident memory, ' + label:52} {measured['memory'][server]:12.1f} MiB")
        if "storm" in needs:
            storm = measured["storm"] = storm_ingestion(storm_db, args.threads, load, args.connections)
            print(f"{'ingest 1 event during a storm':52} {storm['rps']:15.0f} {storm['p50'] * 1e3:8.2f} "
                  f"{storm['p99'] * 1e3:8.2f}  ({storm['down']:,} went down; /healthz then: {storm['health']})")
        if "alarms" in needs:
            latencies = measured["alarms"] = alarm_latency(databases, args.alarms, args.spread, args.threads)
            print(f"{'alarm latency after deadline (' + str(len(latencies)) + ' alarms)':52} "
                  f"p50 {percentile(latencies, 50) * 1e3:.1f} ms, p99 {percentile(latencies, 99) * 1e3:.1f} ms, "
                  f"max {latencies[-1] * 1e3:.1f} ms")
        if "page" in needs:
            page_sizes, page_times = measured["page"] = status_page_cost(page_db, args.threads, args.page_requests)
            for path, (plain, zipped) in page_sizes.items():
                print(f"{'status page ' + path + ', N=' + format(N_PAGE, ','):52} {plain / 1000:9.1f} KB, gzipped "
                      f"{zipped / 1000:.1f} KB")
            print(f"{'status page, ' + str(len(page_times)) + ' sequential GETs':52} "
                  f"p50 {percentile(page_times, 50) * 1e3:.1f} ms, p99 {percentile(page_times, 99) * 1e3:.1f} ms, "
                  f"max {page_times[-1] * 1e3:.1f} ms")
        if "notify" in needs:
            measured["notify"] = notification_storms(databases, setup.notify_source(), args)
        if "alertmanager" in needs:
            if os.access(ALERTMANAGER, os.X_OK):
                am = measured["alertmanager"] = alertmanager_latency(databases, workdir, args.am_alarms, args.spread,
                                                                     args.threads)
                print(f"alarm to Alertmanager ({len(am)} alarms): p50 {percentile(am, 50):.2f} s, "
                      f"p99 {percentile(am, 99):.2f} s, max {am[-1]:.2f} s")
            else:
                print(f"no Alertmanager at {ALERTMANAGER}: that row is not measured")
                measured["alertmanager"] = [float("inf")]
    return verdicts(targets, measured)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark heartbeat-lite against its performance targets, each a ratio against a "
        "bare bottle+waitress baseline served the same way in the same run (or a latency, a memory size).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="targets (exit status 1 if one is missed), by group:\n" + "\n".join(
            f"  [{target.group}] {target.name}" + (f" {target.op} {target.limit:g}" if target.op else "") + "\n"
            + textwrap.fill(target.why, 78, initial_indent=" " * 6, subsequent_indent=" " * 6)
            for target in TARGETS),
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument("--only", metavar="GROUP[,GROUP]", type=lambda text: text.split(","),
                        help=f"run only the rows of these groups ({', '.join(GROUPS)}), e.g. --only http "
                        "(ingestion, GET one and the batch against the baseline, at 8 and 64 connections)")
    parser.add_argument("--stdlib-client", action="store_true", help="use the standard-library client even "
                        "when wrk is installed")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--many", type=int, default=MANY, help="concurrent connections of the many-connections "
                        "rows (default %(default)s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the load rows (default 5, --quick 2)")
    parser.add_argument("--seconds", type=int, help="seconds per load row and round (default 5, --quick 2)")
    parser.add_argument("--threads", type=int, default=heartbeat_lite.DEFAULT_THREADS,
                        help="waitress threads of every server (default %(default)s)")
    parser.add_argument("--db", metavar="URL", help="run heartbeat-lite on this PostgreSQL database "
                        "(postgresql://...; its schemas bench_* are dropped and made again) instead of "
                        "SQLite files; the baseline is unchanged")
    args = parser.parse_args(argv)
    if args.db is not None and not heartbeat_lite.is_postgres_url(args.db):
        parser.error("--db takes a postgresql:// URL (SQLite files are the default)")
    if args.only is not None and set(args.only) - set(GROUPS):
        parser.error(f"--only takes groups among {', '.join(GROUPS)}")
    rounds, seconds = (2, 2) if args.quick else (5, 5)
    args.rounds = args.rounds or rounds
    args.seconds = args.seconds or seconds
    args.ticks = 500 if args.quick else 3000
    args.alarms, args.spread = (100, 2.0) if args.quick else (400, 4.0)
    args.page_requests = 200 if args.quick else 1000
    args.am_alarms = 20 if args.quick else 50
    args.storm_rounds = 1 if args.quick else 3
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
