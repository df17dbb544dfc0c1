"""Plain helpers shared by the test files: the seed's body and the
documented answers, a fake clock, clients, stand-ins for other processes, the
Prometheus and OpenAPI checks. The fixtures built on them (``clock``,
``service``, ``app``, ``restart``, ``spec``, ...) are in conftest.py; test
files import what they use from here, never from another test file.
"""

import base64
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zoneinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema
import referencing
import webtest
from referencing.jsonschema import DRAFT202012

import heartbeat_lite


###############################################################################
# The seed and the documented answers
###############################################################################


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
C01 = {"connector": "connect", "connector_name": "c01"}  # an event the seed's pattern matches
HOSTILE = '<script>alert(1)</script>" \\ \n&amp;'  # a name every output must escape


###############################################################################
# Time
###############################################################################


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def wait_until(condition, timeout=5.0):
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (for what
    a background thread does); return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


###############################################################################
# Clients and requests
###############################################################################


def client(service, user=("root", "root")):
    """A webtest app for ``service``, with Basic credentials (none if ``user`` is None)."""
    app = webtest.TestApp(service.wsgi)
    if user:
        app.authorization = ("Basic", user)
    return app


def body(**changes):
    """The seed's example body with some fields changed (None removes one)."""
    doc = dict(SEED_BODY, **changes)
    return {k: v for k, v in doc.items() if v is not None}


def new_heartbeat(service, **changes):
    """Create a heartbeat through the engine (no HTTP); return its id."""
    return service.engine.create(heartbeat_lite.validate_heartbeat(body(**changes), "root"))


def create(app, doc=None, **kwargs):
    response = app.post_json("/api/v2/heartbeat", doc or body(), **kwargs)
    return response.json["description"]


def send(app, events, status=200):
    return app.post_json("/api/v2/event", events, status=status).json


###############################################################################
# Members and maintenance windows
###############################################################################


BACKUP = {"connector": "backup"}


def grouped(app, **changes):
    """Create a heartbeat watching hosts: pattern connector=backup, group_by
    host, 1m (``changes`` override); return its id."""
    doc = {"name": "backups", "pattern": BACKUP, "expected_interval": "1m", "group_by": ["host"], **changes}
    return create(app, {key: value for key, value in doc.items() if value is not None})


def host(name, **more):
    return {**BACKUP, "host": name, **more}


def local(t, zone="UTC"):
    """Unix time ``t`` as an ISO local time in ``zone``."""
    return datetime.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(zone)).replace(tzinfo=None).isoformat()


def window(app, start, end, pattern=None, **more):
    """Create a maintenance window from Unix times (UTC); return its id."""
    doc = {"name": "patching", "pattern": {} if pattern is None else pattern,
           "start": local(start), "end": local(end), **more}
    return app.post_json("/api/v2/maintenance", doc).json["description"]


###############################################################################
# Other processes and real HTTP
###############################################################################


def _basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http(method, url, data=None, user="root:root", content_type=None, timeout=10):
    """One request with the standard library; returns (status, headers, parsed body)."""
    request = urllib.request.Request(url, data=data, method=method)
    if user:
        request.add_header("Authorization", _basic(*user.split(":", 1)))
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, json.loads(error.read())


def run_cli(*args, env=None, timeout=30):
    """Run ``python heartbeat_lite.py`` with ``args`` to its end."""
    return subprocess.run([sys.executable, os.path.join(HERE, "heartbeat_lite.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class Receiver:
    """A local stand-in for Canopsis' /api/v2/event: records every POST and
    answers the statuses queued in ``statuses`` (then 200)."""

    def __init__(self):
        self.requests = []  # (headers, parsed body, status answered)
        self.statuses = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((dict(self.headers), json.loads(data), status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                receiver.received.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, userinfo=""):
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}/api/v2/event"

    @property
    def delivered(self):
        """Every event of every request answered 2xx, in order."""
        return [event for _, events, status in self.requests if status < 300 for event in events]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class LockHolder:
    """Another process holding SQLite's write lock on a database file."""

    SCRIPT = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute('ROLLBACK')\n"
    )

    def __init__(self, path):
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT, path], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    def release(self):
        self.process.communicate("\n", timeout=30)


###############################################################################
# Metrics
###############################################################################


_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*=" + _LABEL_VALUE + r")(?:,[a-zA-Z_][a-zA-Z0-9_]*=" + _LABEL_VALUE + r")*)?\})?"
    r" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|Inf))(?: -?[0-9]+)?"
)
_COMMENT = re.compile(r"# (?:HELP (?P<help>[a-zA-Z_:][a-zA-Z0-9_:]*) .*|TYPE (?P<type>[a-zA-Z_:][a-zA-Z0-9_:]*) "
                      r"(?:counter|gauge|histogram|summary|untyped))")


def parse_prometheus(text):
    """Check the text exposition format 0.0.4 line by line; return
    {(name, ((label, value), ...)): value}, label values unescaped."""
    assert text.endswith("\n")
    samples, typed = {}, set()
    for number, line in enumerate(text.splitlines(), 1):
        comment = _COMMENT.fullmatch(line)
        if comment:
            if comment["type"]:
                typed.add(comment["type"])
            continue
        sample = _SAMPLE.fullmatch(line)
        assert sample, f"line {number} breaks the format: {line!r}"
        assert sample["name"] in typed, f"line {number}: no TYPE before {sample['name']}"
        labels = tuple(
            (key, re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), raw[1:-1]))
            for key, raw in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)=(" + _LABEL_VALUE + ")", sample["labels"] or "")
        )
        samples[(sample["name"], labels)] = float(sample["value"])
    return samples


###############################################################################
# OpenAPI
###############################################################################


OPENAPI_URI = "urn:heartbeat-lite:openapi.json"


def pointer(*parts):
    """A JSON pointer (RFC 6901) to ``parts`` of a document, as a URI fragment."""
    return "#" + "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def openapi_registry(spec):
    """A referencing registry holding ``spec``, so that its "#/..." $refs resolve."""
    return referencing.Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(spec))


def lookup(spec, fragment):
    return openapi_registry(spec).resolver().lookup(OPENAPI_URI + fragment).contents


def schema_errors(spec, fragment, value):
    """Every way ``value`` breaks the schema at ``fragment`` of the OpenAPI
    document ``spec``, checked by jsonschema, $refs resolved within ``spec``."""
    validator = jsonschema.Draft202012Validator({"$ref": OPENAPI_URI + fragment}, registry=openapi_registry(spec))
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(value)]


class Recorder:
    """A webtest app noting every answer, to replay against the description."""

    def __init__(self, service, user=("root", "root")):
        self.app = client(service, user)
        self.answers = []

    def __call__(self, method, path, status, **kwargs):
        response = self.app.request(path, method=method, expect_errors=True, **kwargs)
        assert response.status_int == status, (method, path, response.status, response.text[:300])
        self.answers.append((method, path, response))
        return response


def described_answer(spec, method, path, status):
    """Where the description says what ``method path`` answers with ``status``:
    the pointer to its response object, or to the shared 405 answer."""
    template = next(template for template in spec["paths"]
                    if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", template), path.rstrip("/") or "/"))
    if method.lower() not in spec["paths"][template]:
        assert status == 405, (method, path, status)
        return pointer("components", "responses", "MethodNotAllowed")
    responses = spec["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, (method, path, status)
    return pointer("paths", template, method.lower(), "responses", str(status))


###############################################################################
# Notification targets
###############################################################################


class Hooks:
    """Local HTTP targets for notification channels: every request to any
    path is recorded as ``(path, headers, body bytes)``; ``statuses`` maps a
    path to the statuses to answer it, in turn (then 200); ``limit`` answers
    413 to a body larger than that (nginx's client_max_body_size);
    ``hang`` paths never answer (until closed)."""

    def __init__(self, limit=None):
        self.requests = []
        self.statuses = {}
        self.hang = set()
        self.limit = limit
        self.arrived = threading.Condition()
        self.closing = threading.Event()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path
                if path.partition("?")[0] in hooks.hang:
                    hooks.closing.wait(60)
                    return
                queued = hooks.statuses.get(path.partition("?")[0])
                status = queued.pop(0) if queued else 200
                if hooks.limit is not None and len(data) > hooks.limit:
                    status = 413
                with hooks.arrived:
                    hooks.requests.append((path, dict(self.headers), data, status))
                    hooks.arrived.notify_all()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path="/hook", userinfo=""):
        return f"http://{userinfo}127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path="/hook", delivered=True):
        """The JSON bodies POSTed to ``path`` (those answered 2xx only, when ``delivered``)."""
        return [json.loads(data) for got, _, data, status in self.requests
                if got.partition("?")[0] == path and (status < 300 or not delivered)]

    def wait_for(self, count, path="/hook", timeout=10.0):
        """Wait until ``count`` bodies were delivered to ``path``; return whether they were."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.bodies(path)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.arrived.wait(left)
        return True

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
