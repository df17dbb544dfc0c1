# /// script
# requires-python = ">=3.10"
# dependencies = ["bottle>=0.13", "waitress>=3.0", "python-dateutil>=2.8", "cronsim>=2.7"]
# ///
"""heartbeat-lite: a single-file, embeddable heartbeat monitor.

It serves the Canopsis Heartbeat API (``/api/v2/heartbeat``) on SQLite, and
does the job that API exists for: it watches incoming events and raises an
alarm (the Canopsis check event) when nothing matching a heartbeat's pattern
arrived within its expected interval, and resolves it when events come back.

Public API:

- ``create_app(db=..., users=..., clock=..., on_alarm=..., forward_url=...)``
  builds a :class:`Service`: its ``wsgi`` attribute is a WSGI application;
  nothing runs in the background, ``service.tick()`` runs expiry.
- ``serve(service, host=..., port=0)`` is a context manager that runs the real
  waitress server (and the expiry and delivery threads), yields its base URL
  and always stops them.
- ``main(argv)`` is the command line (``python heartbeat_lite.py --help``).

The module is laid out in sections, each under a banner, in dependency
order: a section uses what the sections above it define, never what a later
one does (``test_layout.py`` checks it). Data flows down through them:

1. Configuration: limits and defaults (``UPPER_CASE``, units in the name),
   settings, log safety;
2. Validation: the API's documents, bodies and queries, checked;
3. States: the one status vocabulary and severity order;
4. Store: the only SQL (SQLite and PostgreSQL);
5. Rules and memory: the rules as pure functions of a row and a time, and
   what the engine keeps in memory (the read model, the recent events);
   Messages: what each kind of notification channel sends;
6. Transitions: the funnel every state change goes through, its sinks (the
   outbox), publishing;
7. Engine: its parts, one job each, and the ``Engine`` facade over them;
8. Background work: the scheduler, the syncer, the forwarder;
9. Authentication: users, passwords, Basic credentials;
10. Operator pages: the status pages, the metrics, the OpenAPI document;
11. Web API: the routes (parse, call, format);
12. Embedding API: :class:`Service` and ``create_app``;
13. Server / CLI: ``serve``, the command line, ``main``.
"""

import abc
import argparse
import base64
import bisect
import collections
import contextlib
import datetime
import email.message
import email.utils
import functools
import gc
import getpass
import gzip
import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import math
import operator
import os
import re
import shlex
import signal
import smtplib
import socket
import sqlite3
import ssl
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
import zoneinfo

import bottle
import cronsim
import dateutil.rrule

__version__ = "0.1.0"
__all__ = ["create_app", "serve", "main", "Service", "ConfigError"]

log = logging.getLogger("heartbeat_lite")
# A library's logger: an embedding program that configured no logging hears
# nothing (not Python's last-resort stderr); main() configures logging.
log.addHandler(logging.NullHandler())
access_log = logging.getLogger("heartbeat_lite.access")


###############################################################################
# Configuration
###############################################################################

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8082
DEFAULT_DB = "heartbeat_lite.db"
DEFAULT_THREADS = 4
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_USERS = {"root": "root"}  # only ever used on a loopback address
LOOPBACK_HOST_NAMES = frozenset(("localhost",))  # and loopback addresses: the Host names root:root answers
REALM = "heartbeat-lite"
ENV_PREFIX = "HEARTBEAT_LITE_"

SCHEMA_VERSION = 8


def read_schema(name):
    """The text of the schema file ``name`` shipped with the module; a
    :class:`ConfigError` saying where it was looked for if it cannot be read.

    It is ``heartbeat_lite.<name>`` beside the module once installed from a
    wheel or inside the zipapp (pyproject.toml renames it, so that
    site-packages gets no generic ``schema.sql``), else ``<name>`` beside it,
    as in a checkout. "Beside" may be inside a zip: the file is read through
    the module's loader, as ``pkgutil.get_data`` does (called directly:
    ``pkgutil`` would import the module again by name when it runs as
    ``__main__``).
    """
    here = os.path.dirname(__file__)
    places = [os.path.join(here, "heartbeat_lite." + name), os.path.join(here, name)]
    for place in places:
        try:
            if __spec__ is None:  # run as a script: a plain file
                with open(place, "rb") as f:
                    return f.read().decode("utf-8")
            return __spec__.loader.get_data(place).decode("utf-8")
        except OSError as exc:
            error = exc
    raise ConfigError(f"cannot read the schema {' or '.join(places)}: {error}") from error


BUSY_TIMEOUT_SECONDS = 5.0
WRITER_STUCK_SECONDS = 0.5  # a write waiting this long waits for the database: requests stop queueing behind it
LOCK_POLL_SECONDS = 0.05  # how often a request waiting for the engine looks whether it should give up

MAX_NAME_CHARS = 255
MAX_TEXT_CHARS = 4096  # description, output
MAX_PATTERN_ENTRIES = 32
MAX_PATTERN_ITEM_CHARS = 255  # each key and each value
MAX_INTERVAL_SECONDS = 365 * 24 * 3600
MAX_HEARTBEAT_BODY_BYTES = 64 * 1024
MAX_EVENT_BODY_BYTES = 1024 * 1024
MAX_EVENTS_PER_REQUEST = 10_000
MAX_REQUEST_BODY_BYTES = max(MAX_HEARTBEAT_BODY_BYTES, MAX_EVENT_BODY_BYTES)  # the HTTP server refuses more
#: what the HTTP server lets a chunked body's framing take beyond
#: MAX_REQUEST_BODY_BYTES in one read (a read is at most 8 KiB); a body
#: decoding to more than the limit is refused by the route's own read
CHUNK_FRAMING_SLACK_BYTES = 16 * 1024
MAX_MAINTENANCE_BODY_BYTES = 64 * 1024
MAX_MAINTENANCE_WINDOWS = 1000  # every window lives in memory and is consulted at each expiry
RRULE_SEARCH_MONTHS = 120  # one search for a rule's next occurrence scans at most this much calendar
MAX_RRULE_COUNT = 1000  # a rule with COUNT is iterated from its start
MAX_RRULE_INTERVAL = 1000
MIN_BYEASTER_DAYS, MAX_BYEASTER_DAYS = -80, 248  # a day of Easter's own year, whatever the year
MAINTENANCE_LOOKBACK_SECONDS = 24 * 3600  # occurrences kept before now (expiry dates a state when it was due)
MAINTENANCE_KEPT_STARTS = 512  # occurrence starts a window keeps in memory, at most
MAX_GROUP_BY_KEYS = 4
MAX_EXPECTED_MEMBERS = 10_000  # and the heartbeat body stays within MAX_HEARTBEAT_BODY_BYTES
MAX_MEMBERS_PER_HEARTBEAT = 100_000  # beyond, new members are refused (and the log says it once)
MAX_MEMBERS = 200_000  # members of every heartbeat together: likewise
DEFAULT_ALARMS_LISTED = 1000  # GET /api/v2/alarms without limit: the oldest; X-Total-Count says how many are open
MAX_ALARMS_LISTED = 10_000
DEFAULT_MEMBERS_PAGE = 100  # GET .../members without limit
MAX_MEMBERS_PAGE = 1000
UTC_ZONE = datetime.timezone.utc  # the default maintenance time zone; needs no zone database

ALIVE_INTERVAL_SECONDS = 5.0  # how often a running service records that it is alive
SCHEDULE_EARLY_SECONDS = 60  # a ping this much before a scheduled time counts for it (clock skew)
REFRESH_WRITE_SECONDS = 0.5  # a heartbeat up is written at most this often; must stay under 1 s (the shortest interval)
COALESCE_MIN_PERIOD_SECONDS = 4 * REFRESH_WRITE_SECONDS  # a shorter late time or interval: each refresh written at once
SYNC_SECONDS = 0.2  # several instances on PostgreSQL: how often each reads the others' changes
#: and at most how often a ping naming no heartbeat known here reads them
#: at once (the id may be one just created through another instance, or a
#: guess: a flood of guesses then costs the database and the lock nothing more)
SYNC_ON_MISS_SECONDS = 0.05
OUTBOX_POLL_SECONDS = 1.0  # several instances: how often an idle forwarder looks at the shared outbox
INSTANCE_ALIVE_SECONDS = 2 * ALIVE_INTERVAL_SECONDS  # an instance recorded alive this recently still runs
META_ALIVE_AT = "alive_at"  # meta keys
META_STOPPED_CLEANLY = "stopped_cleanly"
META_INTAKE_SILENT_SINCE = "intake_silent_since"  # present while the intake is silent (--intake-silence)
SCHEDULER_RETRY_SECONDS = 1.0  # after a failed tick
STORM_CHUNK_HEARTBEATS = 250  # state changes per transaction and per hold of the engine lock in a storm
REFRESH_CHUNK_HEARTBEATS = 2000  # refreshes of heartbeats up (one UPDATE each) per transaction in a big batch
STORM_YIELD_SECONDS = 0.001  # between chunks the lock is let go this long, or as long as the chunk took
KEY_SETS_SCANNED = 8  # up to this many pattern key sets, matching scans them; beyond, it walks a trie
LOG_EACH_EVENT_UP_TO = 10  # more alarms or resolutions at once are logged as one summary line

DEFAULT_HISTORY_DAYS = 90  # --history-days: state changes older than this are pruned
MAX_HISTORY_DAYS = 36_500
HISTORY_PRUNE_INTERVAL_SECONDS = 3600.0  # a pruning pass at most this often ...
HISTORY_PRUNE_BATCH_ROWS = 1000  # ... deleting at most this many rows per transaction ...
HISTORY_PRUNE_BATCHES_PER_TICK = 4  # ... and this many transactions per tick (the rest waits for the next)
DEFAULT_HISTORY_LIMIT = 100  # history entries per answer, unless ?limit= says otherwise
MAX_HISTORY_LIMIT = 1000
AVAILABILITY_WINDOWS = (("24h", 24 * 3600), ("7d", 7 * 24 * 3600), ("30d", 30 * 24 * 3600))
RECENT_EVENTS_PER_HEARTBEAT = 20  # GET /api/v2/heartbeat/<id>/events
RECENT_EVENTS_MAX_HEARTBEATS = 5_000  # heartbeats with such a list; beyond, the oldest list is dropped
RECENT_EVENTS_RECEIVED = 1000  # events POST /api/v2/pattern/test examines
RECENT_EVENTS_MAX_BYTES = 48 * 1024 * 1024  # the heartbeats' lists together; beyond, the oldest lists are dropped
RECENT_RECEIVED_MAX_BYTES = 2 * 1024 * 1024  # request bodies kept for the pattern tester (the newest always)
MAX_SHOWN_EVENT_BYTES = 4096  # an event shown back is cut to this much of its JSON
MAX_PATTERN_TEST_RESULTS = 20  # matched, and near misses, each

# Pings (docs/pings.md): the URLs jobs already call
PING_BODY_LIMIT_BYTES = 10_000  # a ping's body is kept (in /events) up to this much; Healthchecks' Ping-Body-Limit
PING_KINDS = ("success", "start", "fail", "log")  # what a ping says, counted by /metrics
MAX_SHOWN_PING_BYTES = 64 * 1024  # a ping as /events shows it (its body cut at PING_BODY_LIMIT_BYTES) is never cut
MAX_UNKNOWN_PING_NAMES = 1000  # Opsgenie pings' unknown names each logged once, up to this many
MAX_OPEN_RUNS_PER_HEARTBEAT = 100  # /start pings waiting for their end (by rid); beyond, the oldest is forgotten
#: the overrun heap (max_run) is cleared of ended runs' entries once it holds twice its live ones and this many more
OVERRUN_HEAP_SLACK = 1000
MAX_EXIT_STATUS = 255
PING_TYPE = "text/plain; charset=utf-8"
PING_OK_HEADERS = {"Ping-Body-Limit": str(PING_BODY_LIMIT_BYTES), "Access-Control-Allow-Origin": "*",
                   "Cache-Control": "max-age=0, no-cache, no-store, must-revalidate, private"}
#: a created heartbeat (``?create=1``): Healthchecks' default timeout (1 day) plus its grace (1 hour)
PING_CREATED_INTERVAL, PING_CREATED_LATE_AFTER = "25h", "24h"
PING_AUTHOR = "ping"  # the author of a heartbeat ?create=1 made
OPSGENIE_PONG = "PONG - Heartbeat received"
KUMA_NOT_FOUND = "Monitor not found or not active."
DEFAULT_PAGE_LIMIT = 100  # GET /api/v2/heartbeat?after=... without ?limit=
MAX_PAGE_LIMIT = 1000

FORWARD_TIMEOUT_SECONDS = 10.0  # one delivery attempt, whole: connect, send, headers and body of the answer
FORWARD_BATCH_EVENTS = 100
FORWARD_ANSWER_BYTES = 64 * 1024  # of the target's answer, read at most
FORWARD_BACKOFF_SECONDS = (1.0, 60.0)  # first retry, cap; doubling in between

# Notification channels (docs/notifications.md)
FORWARD_CHANNEL_ID = "forward"  # the canopsis channel --forward-url makes: its id and its name
CHANNEL_KINDS = ("canopsis", "webhook", "slack", "teams", "ntfy", "email", "alertmanager", "apprise")
MAX_CHANNELS = 100  # each has a delivery thread of its own
MAX_CHANNEL_BODY_BYTES = 64 * 1024
MAX_URL_CHARS = 2048
MAX_TEMPLATE_CHARS = 16 * 1024
MAX_CHANNEL_HEADERS = 20
MAX_HEADER_VALUE_CHARS = 1024
MIN_REPEAT_SECONDS = 60  # repeat_every: reminders at most once a minute
DELIVERY_BATCH_BYTES = 256 * 1024  # one request's body at most (nginx refuses more than 1 MiB by default)
DELIVERY_STALE_SECONDS = 300.0  # /healthz warns when an event waits longer than this undelivered
ALERTMANAGER_RESEND_SECONDS = 60.0  # open alerts are sent again this often (Alertmanager resolves silent ones)
SMTP_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}

PASSWORD_HASH_SCHEME = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000  # about 0.15 s of one core per derivation
AUTH_CACHE_ENTRIES = 1024  # remembered successful verifications of hashed passwords
AUTH_FAILURE_BURST = 5  # failed derivations one client address may cause at once ...
AUTH_FAILURE_REFILL_SECONDS = 2.0  # ... then one per this many seconds
AUTH_SOURCES_TRACKED = 10_000  # client addresses whose failure budget is remembered (least recent forgotten)
AUTH_GLOBAL_FAILURE_BURST = 20  # failed derivations all clients together may cause at once ...
AUTH_GLOBAL_FAILURES_PER_SECOND = 2.0  # ... then this many per second (with one at a time: a bound on CPU)

HEALTH_TIMEOUT_SECONDS = 0.5  # /healthz's own database read waits at most this (a lock; on PostgreSQL, any answer)
MAX_LOGGED_CHARS = 1024  # a request's URL, a name, a pattern: cut at this in a log line

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUS_PAGE_REFRESH_SECONDS = 5
STATUS_PAGE_ROWS = 100  # heartbeats per status page: 10,000 heartbeats stay a 100-row page
STATUS_PAGE_ALARMS_SHOWN = 5  # the oldest alarms named on the status page; the rest are counted
DETAIL_PAGE_MEMBERS = 50  # members listed on a grouped heartbeat's page, the worst first
MAINTENANCE_FORM_SECONDS = 3600  # the window a heartbeat page's "maintenance for 1 h" creates
MAX_SEARCH_CHARS = 255
MAX_PAGE_NUMBER = 1_000_000
TIMELINE_SECONDS = 24 * 3600  # what the timelines show
TIMELINE_STEP_SECONDS = 60  # their right end moves by whole minutes, so an unchanged page keeps its ETag

EXIT_CONFIG_ERROR = 2

# Connections (waitress). A client must send a whole request head within
# HEAD_DEADLINE_SECONDS of its first byte, and the body within
# BODY_DEADLINE_SECONDS more (1 MiB in 60 s is 17 KiB/s: slow but honest).
# Idle keep-alive connections are closed after IDLE_TIMEOUT_SECONDS, and the
# oldest idle ones first whenever the connection limit is near.
HEAD_DEADLINE_SECONDS = 10.0
BODY_DEADLINE_SECONDS = 60.0
IDLE_TIMEOUT_SECONDS = 60
CONNECTION_LIMIT = 4000
# A client that pipelines requests and does not read the answers: at most
# MAX_PIPELINED_REQUESTS wait per connection (beyond, it is closed after the
# last of them), the next is served only while fewer than
# UNSENT_ANSWER_BYTES of its answers wait unsent, and a connection whose
# answers wait UNREAD_DEADLINE_SECONDS with nothing read is reset.
MAX_PIPELINED_REQUESTS = 16
UNSENT_ANSWER_BYTES = 64 * 1024
UNREAD_DEADLINE_SECONDS = 10.0
CONNECTION_SPARE = 100  # waiting connections are evicted when fewer slots than this (or a tenth of the limit) are left
FILE_DESCRIPTORS_SPARE = 200  # beyond the connections: database, threads, pipes

DATABASE_IDENTITY_CHECK_SECONDS = 1.0  # how often the database file's identity is checked
SQLITE_HEADER = b"SQLite format 3\x00"


class ConfigError(Exception):
    """A setting that prevents the service from starting (exit status 2)."""


class WouldBlock(BaseException):
    """Raised by an operation asked not to wait (``blocking=False``) when it
    would wait (for the engine's lock, the database, a password derivation),
    before it has changed anything. The HTTP server answers the requests the
    engine serves from memory in its event loop's thread, which must never
    wait: on this, it hands the request to a worker thread instead. A
    BaseException, so that it passes the routes' own ``except Exception``."""


def parse_forward_url(url, name="--forward-url"):
    """Split ``--forward-url`` into the URL to POST to and its credentials.

    :param name: the setting's name, for the error (a flag or a variable).
    :returns: ``(url without userinfo, Authorization header or None)``.
    :raises ConfigError: unless it is an http:// or https:// URL with a host.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL with a host "
                          f"(got scheme {parts.scheme or 'none'!r})")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    authorization = None
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), authorization


REDACTED = "***"


def redact_url(url):
    """``url`` as a log line or a message may show it: the password of its
    userinfo (or, with no password, the whole userinfo: a lone user may be a
    token) and every query value replaced by ``***`` (a query item with no
    ``=``, too), the fragment dropped, then :func:`log_safe` (escaped, cut
    at 1 KiB). The one function for every URL logged or shown: the database
    URL, the forward URL.
    """
    url = url if isinstance(url, str) else str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return log_safe(url.partition("?")[0].partition("#")[0] + ("?" + REDACTED if "?" in url else ""))
    rest = rest.partition("#")[0]
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"
    if question:
        items = [item.partition("=") for item in query.split("&") if item]
        query = "&".join(f"{key}={REDACTED}" if equal else REDACTED for key, equal, _ in items)
    return log_safe(f"{scheme}://{authority}{slash}{path}{question}{query}")


#: the secret a ping path holds (docs/pings.md): the ping key of ``/ping/<key>/<slug>`` (anything there
#: but a canonical id: a key mistyped, or the slug forgotten, is still one), the ``/api/push/<push_token>``
_SECRET_IN_PATH = re.compile(r"^(/+ping/+)(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:/|$))"
                             r"([^/]+)|^(/+api/+push/+)([^/]+)")


def redact_path(path):
    """A request's path as a log line shows it: the ping key of
    ``/ping/<key>/<slug>`` and the token of ``/api/push/<push_token>``
    replaced by ``***`` (a heartbeat's id, ``/ping/<id>``, is shown: every
    alarm line names it). Not escaped: :func:`log_safe` does that."""
    return _SECRET_IN_PATH.sub(lambda match: (match.group(1) or match.group(3)) + REDACTED, path, count=1)


def url_secrets(url):
    """The secrets :func:`redact_url` hides, each as written and
    percent-decoded, longest first: what :func:`redact_secrets` takes out of
    a library's error message that may quote them."""
    url = url if isinstance(url, str) else str(url)
    rest = url.partition("://")[2].partition("#")[0]
    rest, _, query = rest.partition("?")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    found = []
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [value if equal else key for key, equal, value in (item.partition("=") for item in query.split("&"))]
    decoded = [urllib.parse.unquote(secret) for secret in found]
    return sorted({secret for secret in found + decoded if secret}, key=len, reverse=True)


def redact_secrets(text, url):
    """``text`` (an error message) with every secret of ``url`` in it replaced
    by ``***``, made one line (a library's message may span several) and
    :func:`log_safe`."""
    text = text if isinstance(text, str) else str(text)
    for secret in url_secrets(url):
        # a short one only where quoted: "5" must not become *** in "port 5432"
        text = text.replace(secret if len(secret) >= 4 else f'"{secret}"', REDACTED)
    return log_safe(one_line(text))


# a path segment that looks like a token: 8 characters or more with a
# digit in them, or 16 or more (Slack's T0.../B0.../secret, a Teams workflow id)
_TOKEN_SEGMENT = re.compile(r"(?=[^/]*[0-9])[^/]{8,}|[^/]{16,}")


def redact_channel_url(url, kind=None):
    """A channel's URL as answers, pages and logs show it: :func:`redact_url`
    (userinfo, query values), and each path segment that looks like a token
    replaced by ``***`` too (Slack, Teams and Discord put their secret in
    the path); an ntfy topic is always hidden (whoever knows it reads the
    notifications). A ``PUT`` that sends this text back keeps the stored URL.
    """
    url = url if isinstance(url, str) else str(url)
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        path, question, query = path.partition("?")
        segments = path.split("/")
        segments = [REDACTED if _TOKEN_SEGMENT.fullmatch(segment) else segment for segment in segments]
        if kind == "ntfy" and segments and segments[-1]:
            segments[-1] = REDACTED
        url = f"{scheme}://{authority}{slash}{'/'.join(segments)}{question}{query}"
    return redact_url(url)


def is_permanent_refusal(status):
    """Whether a target's HTTP ``status`` refuses an event for good: a 4xx
    but 408 (timeout) and 429 (too many requests), which are retried like
    3xx and 5xx. A 413 first splits the batch; alone, the event is set aside."""
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def apprise_module():
    """The ``apprise`` module when it is installed (``pip install
    heartbeat-lite[apprise]``), else None; imported only when a channel of
    kind apprise is created or used."""
    try:
        import apprise
    except ImportError:
        return None
    return apprise


def detail_link(public_url, heartbeat_id):
    """The link to a heartbeat's page in messages: under ``public_url``
    (``--public-url``, by default the listen address), or None when unknown."""
    if not public_url or heartbeat_id is None:
        return None
    return f"{public_url.rstrip('/')}/heartbeat/{heartbeat_id}"


def one_line(text):
    """``text`` as one line: its lines, stripped, joined by a space (a
    PostgreSQL error comes as several, with a tab-indented hint)."""
    if "\n" not in text and "\r" not in text:
        return text
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# C0 and C1 controls, DEL, backslash (so an escape cannot be forged either),
# line and paragraph separators, bidirectional-text controls
_UNSAFE_IN_LOG = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_LOG_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_for_log(match):
    char = match.group()
    if char in _LOG_ESCAPES:
        return _LOG_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def log_safe(text, limit=MAX_LOGGED_CHARS):
    """``text`` (anything; str() of it) fit for one log line: control
    characters and the like escaped (no forged lines, no terminal escapes,
    no reordered text), cut at ``limit`` characters with a marker saying so.
    """
    text = text if isinstance(text, str) else str(text)
    cut = len(text) > limit
    if cut:
        total, text = len(text), text[:limit]
    text = _UNSAFE_IN_LOG.sub(_escape_for_log, text)
    return f"{text}...[cut, {total} chars]" if cut else text


def allowed_host_names(public_url=None):
    """The ``Host`` names a service with no user configured answers (the
    default ``root:root`` on loopback): :data:`LOOPBACK_HOST_NAMES`, and the
    host of ``public_url`` when one is given. Loopback addresses
    (``127.0.0.1``, ``[::1]``) are always allowed, whatever the port (see
    :func:`is_allowed_host`). The one place that says which."""
    names = set(LOOPBACK_HOST_NAMES)
    if public_url:
        host = urllib.parse.urlsplit(public_url).hostname
        if host:
            names.add(host.lower().rstrip("."))
    return frozenset(names)


def is_allowed_host(host, allowed):
    """True when the ``Host`` header ``host`` (with or without a port)
    names one of ``allowed``, or a loopback address. A DNS rebinding attack
    (a page from ``attacker.example`` whose name now resolves to 127.0.0.1)
    sends its own name, so it is refused."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
    else:
        name, colon, port = host.rpartition(":")
        if not colon or not port.isdigit():
            name = host
    name = name.rstrip(".")
    if name in allowed:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback(host):
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


###############################################################################
# Validation
###############################################################################

HEARTBEAT_FIELDS = ("name", "author", "description", "pattern", "expected_interval", "output", "late_after",
                    "group_by", "expected_members", "retire_after",
                    "channels", "escalate_after", "escalate_to",
                    "slug", "push_token", "max_run", "schedule", "tz")
MAINTENANCE_FIELDS = ("name", "pattern", "start", "end", "timezone", "rrule")
IGNORED_FIELDS = ("_id", "created", "updated")
_INTERVAL_RE = re.compile(r"([1-9][0-9]{0,11})([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class Invalid(ValueError):
    """Input that breaks the contract; ``reasons`` says every way it does."""

    def __init__(self, reasons):
        # a reason may quote the input: keep it encodable (no lone surrogate)
        self.reasons = [reason.encode("utf-8", "backslashreplace").decode("utf-8") for reason in reasons]
        super().__init__("; ".join(self.reasons))


def _no_duplicate_keys(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicate_keys,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)
# Events: a duplicate key keeps its last value, as Canopsis' own (Go)
# decoder does; refusing it costs a Python call per object, which a
# 1,000-event batch cannot afford.
_LAST_WINS_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def parse_json(body, duplicate_keys=False):
    """Decode a request body as strict JSON.

    Strict means: UTF-8 with no BOM, no NaN/Infinity, no duplicate keys
    (unless ``duplicate_keys``: then the last value wins), no number too
    large to represent, nesting within the interpreter's limit.

    :param body: the raw bytes.
    :raises Invalid: with the reason.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(["body: not valid UTF-8"]) from None
    try:
        value = (_LAST_WINS_DECODER if duplicate_keys else _DECODER).decode(text)
    except RecursionError:
        raise Invalid(["body: nested too deeply"]) from None
    except ValueError as exc:  # JSONDecodeError and the hooks' errors
        raise Invalid([f"body: not valid JSON ({exc})"]) from None
    if "\\" in text and _SURROGATE_ESCAPE.search(text):  # only a \uD800-\uDFFF escape can make one
        _refuse_lone_surrogates(value)
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value):
    """:raises Invalid: when a string anywhere in ``value`` (key or value, at
    any depth) holds a lone surrogate: it is not Unicode text, and could not
    be stored or answered as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not _is_text(item):
            raise Invalid(["body: a string holds a lone surrogate (\\ud800 to \\udfff), which is not text"])


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # built once: json.dumps with options builds one per call


def _json_text(value):
    """``value`` as compact JSON text to store, or None for None."""
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def dump_json(value):
    """JSON bytes as the API sends them: UTF-8, non-ASCII kept as is."""
    return _ENCODER.encode(value).encode("utf-8")


def _is_text(value):
    """A str that can be stored as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_interval(text):
    """Seconds in an interval such as ``30s``, ``5m`` or ``2h``; None if malformed."""
    match = _INTERVAL_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


INTERVAL_SYNTAX = "must look like 30s, 5m or 2h"
INTERVAL_LIMIT = f"at most 365 days ({MAX_INTERVAL_SECONDS // 3600}h)"


def _check_interval(reasons, field, value, limited=True):
    """The seconds of interval ``value``, or None; each reason it is
    refused goes to ``reasons`` (beyond :data:`MAX_INTERVAL_SECONDS` too,
    when ``limited``: the seconds are still returned)."""
    seconds = parse_interval(value)
    if seconds is None:
        reasons.append(f"{field}: {INTERVAL_SYNTAX}")
    elif limited and seconds > MAX_INTERVAL_SECONDS:
        reasons.append(f"{field}: {INTERVAL_LIMIT}")
    return seconds


def _check_string(reasons, field, value, max_chars):
    if not _is_text(value):
        reasons.append(f"{field}: must be a string")
    elif len(value) > max_chars:
        reasons.append(f"{field}: at most {max_chars} characters")


def _check_pattern(reasons, pattern):
    if not isinstance(pattern, dict):
        reasons.append("pattern: must be an object of strings")
        return
    if not 1 <= len(pattern) <= MAX_PATTERN_ENTRIES:
        reasons.append(f"pattern: must have 1 to {MAX_PATTERN_ENTRIES} entries")
    for key, value in pattern.items():
        if not key or not _is_text(key) or len(key) > MAX_PATTERN_ITEM_CHARS:
            reasons.append(f"pattern: keys must be 1 to {MAX_PATTERN_ITEM_CHARS} characters")
            break
        if not _is_text(value) or len(value) > MAX_PATTERN_ITEM_CHARS:
            reasons.append(f"pattern.{key}: must be a string of at most {MAX_PATTERN_ITEM_CHARS} characters")


def _document_reasons(doc, fields):
    """The checks every document of the API starts with: a JSON object
    (else :class:`Invalid` at once), no key but ``fields`` and the ignored
    ones, a ``name`` that is a non-blank string within its limit.

    :returns: the reasons found so far (a list to add to).
    """
    if not isinstance(doc, dict):
        raise Invalid(["body: must be a JSON object"])
    reasons = []
    unknown = sorted(set(doc) - set(fields) - set(IGNORED_FIELDS))
    if unknown:
        reasons.append("unknown field(s): " + ", ".join(unknown))
    name = doc.get("name")
    if "name" not in doc:
        reasons.append("name: required")
    else:
        _check_string(reasons, "name", name, MAX_NAME_CHARS)
        if isinstance(name, str) and not name.strip():
            reasons.append("name: must not be blank")
    return reasons


def validate_heartbeat(doc, default_author):
    """Check a POST or PUT body and return the clean heartbeat fields.

    :param doc: the decoded JSON body.
    :param default_author: the author when the body gives none (the
        authenticated user).
    :returns: a dict with every key of :data:`HEARTBEAT_FIELDS` plus
        ``interval_seconds``.
    :raises Invalid: with every reason the body is refused.
    """
    reasons = _document_reasons(doc, HEARTBEAT_FIELDS)
    name = doc.get("name")
    author = doc.get("author", default_author)
    _check_string(reasons, "author", author, MAX_NAME_CHARS)
    description = doc.get("description", "")
    _check_string(reasons, "description", description, MAX_TEXT_CHARS)
    output = doc.get("output", "")
    _check_string(reasons, "output", output, MAX_TEXT_CHARS)

    if "pattern" not in doc:
        reasons.append("pattern: required")
    else:
        _check_pattern(reasons, doc["pattern"])

    interval = doc.get("expected_interval")
    if "expected_interval" not in doc:
        seconds = None
        reasons.append("expected_interval: required")
    else:
        seconds = _check_interval(reasons, "expected_interval", interval)

    late_after = doc.get("late_after")
    late_seconds = _check_interval(reasons, "late_after", late_after, limited=False) if "late_after" in doc else None
    if late_seconds is not None and seconds is not None and late_seconds >= seconds:
        reasons.append("late_after: must be shorter than expected_interval")

    group_by, expected, retire_after, retire_seconds = _check_grouping(reasons, doc)
    routing = _check_routing(reasons, doc)
    pings = _check_pings(reasons, doc)

    if reasons:
        raise Invalid(reasons)
    return {
        "name": name,
        "author": author,
        "description": description,
        "pattern": dict(doc["pattern"]),
        "expected_interval": interval,
        "output": output,
        "interval_seconds": seconds,
        "late_after": late_after,
        "late_seconds": late_seconds,
        "group_by": group_by,
        "expected_members": expected,
        "retire_after": retire_after,
        "retire_seconds": retire_seconds,
        **routing,
        **pings,
    }


_SLUG = re.compile(r"[a-z0-9_-]{1,100}")
_PUSH_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_SCHEDULE_CHARS = 255


def _check_pings(reasons, doc):
    """Check the fields of pings and schedules (docs/pings.md), each optional:
    ``slug`` and ``push_token`` (the other names a ping may address the
    heartbeat by; that they are free is the store's to check), ``max_run``
    (an interval shorter than a year), ``schedule`` (a 5-field cron
    expression, Debian semantics through cronsim: it needs
    ``expected_interval``, then measured from each scheduled time) and
    ``tz`` (the schedule's IANA zone, default ``UTC``; only with a schedule).

    :returns: the fields ``slug``, ``push_token``, ``max_run``,
        ``max_run_seconds``, ``schedule``, ``tz``, each None when not given
        (``tz`` is ``UTC`` when a schedule is given without one).
    """
    pings = dict.fromkeys(("slug", "push_token", "max_run", "max_run_seconds", "schedule", "tz"))
    if "slug" in doc:
        if isinstance(doc["slug"], str) and _SLUG.fullmatch(doc["slug"]):
            pings["slug"] = doc["slug"]
        else:
            reasons.append("slug: must be 1 to 100 lower-case letters, digits, - or _")
    if "push_token" in doc:
        if isinstance(doc["push_token"], str) and _PUSH_TOKEN.fullmatch(doc["push_token"]):
            pings["push_token"] = doc["push_token"]
        else:
            reasons.append("push_token: must be 8 to 64 letters, digits, - or _")
    if "max_run" in doc:
        seconds = _check_interval(reasons, "max_run", doc["max_run"], limited=False)
        if seconds is not None and seconds >= MAX_INTERVAL_SECONDS:
            reasons.append(f"max_run: must be shorter than a year ({MAX_INTERVAL_SECONDS // 3600}h)")
        pings["max_run"], pings["max_run_seconds"] = doc["max_run"], seconds
    if "schedule" in doc:
        schedule = doc["schedule"]
        if "expected_interval" not in doc:
            reasons.append("schedule: needs expected_interval (how long after each scheduled time a ping may come)")
        if "group_by" in doc:
            reasons.append("schedule: not with group_by (members have no schedule)")
        if not _is_text(schedule) or len(schedule) > MAX_SCHEDULE_CHARS or len(schedule.split()) != 5:
            reasons.append("schedule: must be a cron expression of 5 fields (minute hour day month weekday)")
        else:
            try:
                cronsim.CronSim(schedule, datetime.datetime(2000, 1, 1))
            except (cronsim.CronSimError, ValueError, KeyError, IndexError) as exc:
                reasons.append(f"schedule: not a valid cron expression ({exc or 'malformed'})")
            else:
                pings["schedule"] = schedule
    if "tz" in doc:  # absent with a schedule: UTC (schedule_zone), and not shown (a field appears when set)
        tz = doc["tz"]
        if "schedule" not in doc:
            reasons.append("tz: needs schedule (it is the schedule's time zone)")
        elif not _is_text(tz) or not 1 <= len(tz) <= MAX_NAME_CHARS:
            reasons.append("tz: must be an IANA time zone name, such as Europe/Paris")
        else:
            try:
                time_zone(tz)
            except ValueError:
                reasons.append(f"tz: unknown time zone {tz!r} (an IANA name, such as Europe/Paris)")
            else:
                pings["tz"] = tz
    return pings


def _check_grouping(reasons, doc):
    """Check ``group_by``, ``expected_members`` and ``retire_after`` (each
    optional; the last two need the first); append every reason to
    ``reasons``. :returns: ``(group_by, expected_members, retire_after,
    retire_seconds)``, each None when not given."""
    group_by = doc.get("group_by")
    keys_ok = False
    if "group_by" in doc:
        if (not isinstance(group_by, list) or not 1 <= len(group_by) <= MAX_GROUP_BY_KEYS
                or not all(_is_text(key) and 1 <= len(key) <= MAX_PATTERN_ITEM_CHARS for key in group_by)):
            reasons.append(f"group_by: must be a list of 1 to {MAX_GROUP_BY_KEYS} event keys (strings of 1 to "
                           f"{MAX_PATTERN_ITEM_CHARS} characters)")
        elif len(set(group_by)) != len(group_by):
            reasons.append("group_by: a key appears twice")
        else:
            in_pattern = sorted(set(group_by) & set(doc["pattern"])) if isinstance(doc.get("pattern"), dict) else []
            if in_pattern:
                reasons.append("group_by: a key of the pattern cannot group its events: " + ", ".join(in_pattern))
            else:
                keys_ok = True
    expected = doc.get("expected_members")
    if "expected_members" in doc:
        if "group_by" not in doc:
            reasons.append("expected_members: needs group_by")
        elif not isinstance(expected, list) or len(expected) > MAX_EXPECTED_MEMBERS:
            reasons.append(f"expected_members: must be a list of at most {MAX_EXPECTED_MEMBERS} member objects")
        elif keys_ok:
            wanted, seen = set(group_by), set()
            for i, member in enumerate(expected):
                if (not isinstance(member, dict) or set(member) != wanted
                        or not all(_is_text(value) and len(value) <= MAX_PATTERN_ITEM_CHARS for value in member.values())):
                    reasons.append(f"expected_members[{i}]: must give a string (at most {MAX_PATTERN_ITEM_CHARS} "
                                   "characters) for every group_by key, and nothing else")
                    break
                key = member_key(member)
                if key in seen:
                    reasons.append(f"expected_members[{i}]: listed twice")
                    break
                seen.add(key)
    retire_after = doc.get("retire_after")
    retire_seconds = parse_interval(retire_after)
    if "retire_after" in doc:
        if "group_by" not in doc:
            reasons.append("retire_after: needs group_by")
        else:
            _check_interval(reasons, "retire_after", retire_after)
    return (list(group_by) if "group_by" in doc else None, list(expected) if "expected_members" in doc else None,
            retire_after, retire_seconds)


_CHANNEL_ID = re.compile(FORWARD_CHANNEL_ID + r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_channel_id(text):
    """Whether ``text`` has the shape of a channel id: a UUID4 as the API
    gives them, or ``forward`` (the channel of ``--forward-url``)."""
    return isinstance(text, str) and _CHANNEL_ID.fullmatch(text) is not None


def _channel_ids(reasons, field, value, empty_ok):
    if (not isinstance(value, list) or len(value) > MAX_CHANNELS or (not value and not empty_ok)
            or not all(is_channel_id(item) for item in value)):
        reasons.append(f"{field}: must be a list of {'' if empty_ok else '1 to '}{MAX_CHANNELS} channel ids "
                       "(the _id of a channel, or forward)")
        return None
    if len(set(value)) != len(value):
        reasons.append(f"{field}: a channel appears twice")
        return None
    return list(value)


def _check_routing(reasons, doc):
    """Check ``channels`` (where the heartbeat's alarms go; ``[]``: none;
    absent: every default channel), ``escalate_after`` and ``escalate_to``
    (given together); that the channels exist is the engine's to check.

    :returns: the fields ``channels``, ``escalate_after``,
        ``escalate_seconds``, ``escalate_to``, each None when not given.
    """
    routing = {"channels": None, "escalate_after": None, "escalate_seconds": None, "escalate_to": None}
    if "channels" in doc:
        routing["channels"] = _channel_ids(reasons, "channels", doc["channels"], empty_ok=True)
    if ("escalate_after" in doc) != ("escalate_to" in doc):
        reasons.append("escalate_after and escalate_to: give both (after how long, and whom to tell)")
    elif "escalate_after" in doc:
        routing["escalate_after"] = doc["escalate_after"]
        routing["escalate_seconds"] = _check_interval(reasons, "escalate_after", doc["escalate_after"])
        routing["escalate_to"] = _channel_ids(reasons, "escalate_to", doc["escalate_to"], empty_ok=False)
    return routing


CHANNEL_FIELDS = ("name", "kind", "url", "default", "repeat_every", "headers", "template")
#: what a channel's document says of its delivery: ignored in a body, so a GET answer can be sent back
CHANNEL_READ_ONLY = ("configured_by", "last_delivery", "last_error", "failing_since", "waiting", "oldest_waiting",
                     "set_aside", "last_refusal")
#: the placeholders of a webhook's template: the keys of its body, plus name and id
TEMPLATE_KEYS = ("heartbeat", "member", "status", "previous", "since", "output", "reason", "url", "name", "id")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(TEMPLATE_KEYS) + r")\}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_FORBIDDEN_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection"))
_NTFY_TOPIC = re.compile(r"[-_A-Za-z0-9]{1,64}")
#: values that exercise a template at creation: quotes, a backslash, a line break, a member
TEMPLATE_SAMPLE = {
    "heartbeat": {"_id": "cf7097b6-71ba-48db-a749-e9474aa70c93", "name": 'backup "nightly" \\ db1', "slug": None},
    "member": {"host": "db1"}, "status": "down", "previous": "up", "since": 1607680900,
    "output": "no backup\nsince \"yesterday\"", "reason": "no matching event for 1m",
    "url": "http://127.0.0.1:8082/heartbeat/cf7097b6-71ba-48db-a749-e9474aa70c93",
}


def template_values(body):
    """The placeholders' values for a webhook body (see :func:`webhook_body`)."""
    return {**body, "name": body["heartbeat"]["name"], "id": body["heartbeat"]["_id"]}


def render_template(template, values):
    """A webhook's ``template`` with each ``{placeholder}`` replaced: a string
    JSON-escaped without its quotes (it goes inside a JSON string), any
    other value as its JSON (``{member}``: an object or null, ``{since}``:
    a number). Other braces are the template's own."""
    def replace(match):
        value = values[match.group(1)]
        text = json.dumps(value, ensure_ascii=False)
        return text[1:-1] if isinstance(value, str) else text
    return _PLACEHOLDER.sub(replace, template)


def _http_target(reasons, parts, kind):
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reasons.append(f"url: {kind} channels take an http:// or https:// URL with a host")
        return False
    return True


def _email_addresses(text):
    """The addresses of a comma-separated list, or None if one is not an address."""
    found = []
    for item in text.split(","):
        name, address = email.utils.parseaddr(item.strip())
        if not address or address.count("@") != 1 or not all(address.split("@")) or any(c in address for c in "\r\n "):
            return None
        found.append(address)
    return found or None


def _check_channel_url(reasons, kind, url):
    """Check that ``url`` fits a channel of ``kind`` (see docs/channels/)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        reasons.append("url: not a valid URL")
        return
    if kind == "email":
        if parts.scheme not in SMTP_DEFAULT_PORTS or not parts.hostname:
            reasons.append("url: an email channel takes smtp://[user:password@]host[:port]?from=...&to=... "
                           "(STARTTLS when the server offers it) or smtps://... (TLS from the start)")
            return
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"from", "to"})
        if unknown:
            reasons.append("url: an email channel's query takes from and to only, not " + ", ".join(unknown))
        for key in ("from", "to"):
            values = query.get(key)
            if not values or len(values) != 1 or _email_addresses(values[0]) is None:
                reasons.append(f"url: {key}= must give {'one address' if key == 'from' else 'addresses'} "
                               "(comma-separated), such as ops@example.com")
        return
    if kind == "apprise":
        apprise = apprise_module()
        if apprise is None:
            reasons.append("kind: apprise needs the optional extra, not installed here: "
                           "pip install heartbeat-lite[apprise]")
        elif not apprise.Apprise().add(url):
            reasons.append("url: not a URL Apprise knows (see its list of services)")
        return
    if not _http_target(reasons, parts, kind):
        return
    if kind == "ntfy":
        segments = [segment for segment in parts.path.split("/")]
        if len(segments) < 2 or not _NTFY_TOPIC.fullmatch(segments[-1]):
            reasons.append("url: an ntfy channel takes <server>/<topic>, such as https://ntfy.sh/my-alarms "
                           "(a topic of letters, digits, - and _)")


def _check_headers(reasons, headers, stored):
    if not isinstance(headers, dict) or len(headers) > MAX_CHANNEL_HEADERS:
        reasons.append(f"headers: must be an object of at most {MAX_CHANNEL_HEADERS} header names and values")
        return None
    clean = {}
    kept = {name.lower(): value for name, value in (stored or {}).items()}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or name.lower() in _FORBIDDEN_HEADERS:
            reasons.append(f"headers: {name[:100]!r} is not a header name a channel may set")
            continue
        if value == REDACTED:  # sent back as shown: the stored value stays
            if name.lower() not in kept:
                reasons.append(f"headers.{name}: {REDACTED} stands for the stored value, and there is none")
                continue
            value = kept[name.lower()]
        if not _is_text(value) or len(value) > MAX_HEADER_VALUE_CHARS or any(c in value for c in "\r\n\0"):
            reasons.append(f"headers.{name}: must be a string of at most {MAX_HEADER_VALUE_CHARS} characters, "
                           "on one line")
            continue
        clean[name] = value
    return clean


def validate_channel(doc, stored=None):
    """Check a channel's POST or PUT body; return its clean fields.

    :param stored: for a PUT, the channel as stored (a dict of the clean
        fields): a ``url`` sent back exactly as answers show it (see
        :func:`redact_channel_url`), or a header value sent back as
        ``***``, keeps the stored secret.
    :returns: a dict with every key of :data:`CHANNEL_FIELDS` (``headers``
        and ``template`` None when not given) plus ``repeat_seconds``.
    :raises Invalid: with every reason the body is refused.
    """
    reasons = _document_reasons(doc, CHANNEL_FIELDS + CHANNEL_READ_ONLY)
    kind = doc.get("kind")
    if kind not in CHANNEL_KINDS:
        reasons.append("kind: must be one of " + ", ".join(CHANNEL_KINDS))
        kind = None
    url = doc.get("url")
    if "url" not in doc:
        reasons.append("url: required")
    elif not _is_text(url) or not 1 <= len(url) <= MAX_URL_CHARS:
        reasons.append(f"url: must be a string of at most {MAX_URL_CHARS} characters")
    else:
        if stored is not None and stored["kind"] == kind and url == redact_channel_url(stored["url"], kind):
            url = stored["url"]  # sent back as shown: the stored secrets stay
        elif REDACTED in url:
            reasons.append(f"url: {REDACTED} hides a secret in answers; give the whole URL (or send back exactly "
                           "the url the channel shows, to keep it)")
        if kind is not None:
            _check_channel_url(reasons, kind, url)
    default = doc.get("default", False)
    if not isinstance(default, bool):
        reasons.append("default: must be true or false")
    repeat_every = doc.get("repeat_every")
    repeat_seconds = None
    if "repeat_every" in doc:
        repeat_seconds = _check_interval(reasons, "repeat_every", repeat_every)
        if repeat_seconds is not None and repeat_seconds < MIN_REPEAT_SECONDS:
            reasons.append(f"repeat_every: at least {MIN_REPEAT_SECONDS // 60}m")
    headers = template = None
    for field in ("headers", "template"):
        if field in doc and kind not in (None, "webhook"):
            reasons.append(f"{field}: for a webhook channel only")
    if "headers" in doc and kind == "webhook":
        headers = _check_headers(reasons, doc["headers"], stored and stored.get("headers"))
    if "template" in doc and kind == "webhook":
        template = doc["template"]
        if not _is_text(template) or not 1 <= len(template) <= MAX_TEMPLATE_CHARS:
            reasons.append(f"template: must be a string of 1 to {MAX_TEMPLATE_CHARS} characters")
        else:
            try:
                parse_json(render_template(template, template_values(TEMPLATE_SAMPLE)).encode("utf-8"))
            except Invalid as exc:
                why = exc.reasons[0].removeprefix("body: ")
                if why.startswith("not valid JSON (") and why.endswith(")"):
                    why = why[len("not valid JSON ("):-1]
                reasons.append(f"template: not valid JSON once rendered ({why})")
    if reasons:
        raise Invalid(reasons)
    return {"name": doc["name"], "kind": kind, "url": url, "default": default, "repeat_every": repeat_every,
            "repeat_seconds": repeat_seconds, "headers": headers, "template": template}


def validate_ack(body):
    """Check a ``POST /api/v2/heartbeat/<id>/ack`` body: empty, ``{}`` or
    ``{"comment": "..."}``; return the comment (None when not given).

    :raises Invalid: with every reason.
    """
    if not body.strip():
        return None
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise Invalid(["body: must be a JSON object"])
    reasons = []
    unknown = sorted(set(doc) - {"comment"})
    if unknown:
        reasons.append("unknown field(s): " + ", ".join(unknown))
    comment = doc.get("comment")
    if comment is not None:
        _check_string(reasons, "comment", comment, MAX_TEXT_CHARS)
    if reasons:
        raise Invalid(reasons)
    return comment


def _local_time(reasons, field, value, zone):
    """A naive ``datetime`` from an ISO 8601 local time that exists in
    ``zone``, or None after appending the reason."""
    if not isinstance(value, str):
        reasons.append(f"{field}: must be an ISO 8601 local time such as 2026-12-06T02:00:00")
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        reasons.append(f"{field}: must be an ISO 8601 local time such as 2026-12-06T02:00:00")
        return None
    if moment.tzinfo is not None:
        reasons.append(f"{field}: must be a local time without an offset (timezone says where)")
        return None
    if not 1970 <= moment.year <= 9000:
        reasons.append(f"{field}: the year must be 1970 to 9000")
        return None
    if zone is not None and local_timestamp(moment, zone) is None:
        reasons.append(f"{field}: {value} does not exist in {getattr(zone, 'key', 'UTC')} (a daylight saving gap)")
        return None
    return moment


#: names in the zone database that are no zone of their own: the host's
#: zone (which moves with the host) and placeholders; ``right/...`` zones count
#: leap seconds, which Unix times do not
HOST_ZONE_NAMES = frozenset(("localtime", "posixrules", "Factory"))


def time_zone(name):
    """The ``tzinfo`` of an IANA zone name; ``UTC`` needs no zone database.

    :raises ValueError: an unknown or malformed name.
    """
    if name == "UTC":
        return UTC_ZONE
    if name in HOST_ZONE_NAMES or name.startswith("right/"):
        raise ValueError(f"{name} is not a zone of its own (it is the host's, or counts leap seconds)")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(str(exc) or name) from None


def local_timestamp(moment, zone):
    """Unix seconds of the naive local ``moment`` in ``zone``; None when that
    wall time does not exist there (a daylight saving gap). An ambiguous one
    (the hour repeated when clocks go back) is its first occurrence (fold=0)."""
    aware = moment.replace(tzinfo=zone, fold=0)
    timestamp = aware.timestamp()
    back = datetime.datetime.fromtimestamp(timestamp, zone).replace(tzinfo=None, fold=0)
    return timestamp if back == moment else None


def validate_maintenance(doc):
    """Check a maintenance window's POST or PUT body; return its clean fields.

    :returns: a dict with every key of :data:`MAINTENANCE_FIELDS` (``start``
        and ``end`` as naive datetimes, ``timezone`` a name, ``rrule`` text
        or None), plus ``zone`` (the tzinfo) and ``rule`` (the parsed rule).
    :raises Invalid: with every reason the body is refused.
    """
    reasons = _document_reasons(doc, MAINTENANCE_FIELDS)
    name = doc.get("name")
    pattern = doc.get("pattern")
    if "pattern" not in doc:
        reasons.append("pattern: required ({} selects every heartbeat)")
    elif pattern == {}:
        pass
    else:
        _check_pattern(reasons, pattern)

    timezone_name = doc.get("timezone", "UTC")
    zone = None
    if not _is_text(timezone_name):
        reasons.append("timezone: must be an IANA time zone name such as Europe/Paris")
    else:
        try:
            zone = time_zone(timezone_name)
        except ValueError:
            reasons.append(f"timezone: unknown time zone {timezone_name[:MAX_NAME_CHARS]!r}")
    start = end = None
    for field in ("start", "end"):
        if field not in doc:
            reasons.append(f"{field}: required")
    if "start" in doc:
        start = _local_time(reasons, "start", doc["start"], zone)
    if "end" in doc:
        end = _local_time(reasons, "end", doc["end"], zone)
    if start is not None and end is not None and (
            end <= start or local_timestamp(end, zone) <= local_timestamp(start, zone)):
        reasons.append("end: must be after start")

    text = doc.get("rrule")
    rule = None
    if "rrule" in doc:
        if not _is_text(text) or len(text) > MAX_TEXT_CHARS:
            reasons.append(f"rrule: must be a string of at most {MAX_TEXT_CHARS} characters")
        elif start is not None:
            rule = _parse_rrule(reasons, text, start)

    if reasons:
        raise Invalid(reasons)
    return {"name": name, "pattern": dict(pattern), "start": start, "end": end, "timezone": timezone_name,
            "rrule": text, "zone": zone, "rule": rule}


def _parse_rrule(reasons, text, start):
    try:
        rule = recurrence_rule(text, start)
        rule.first()
    except ValueError as exc:
        reasons.append(f"rrule: {exc}")
        return None
    return rule


class RuleTooSparse(Exception):
    """A rule's search for its next occurrence scanned more than
    :data:`RRULE_SEARCH_MONTHS` of the calendar."""


class BoundedRule(dateutil.rrule.rrule):
    """A ``dateutil`` recurrence rule whose search for the next occurrence
    is bounded: an impossible rule (``BYMONTH=2;BYMONTHDAY=30``) would
    otherwise scan the calendar up to the year 9999 in one ``next()``.

    ``dateutil`` asks a rule for its ``_bynweekday`` once for each month it
    scans (each year for a yearly rule, which costs no more); counting
    those reads bounds the work. :meth:`bounded` gives the iteration in
    which each step may scan :data:`RRULE_SEARCH_MONTHS` months, then
    raises :class:`RuleTooSparse`. ``test_maintenance.py`` checks that this
    still holds for the ``dateutil`` installed.
    """

    def __init__(self, *args, **kwargs):
        self._months_left = None  # None: not counting
        super().__init__(*args, **kwargs)

    @property
    def _bynweekday(self):
        left = self._months_left
        if left is not None:
            if left <= 0:
                raise RuleTooSparse()
            self._months_left = left - 1
        return self._nth_weekdays

    @_bynweekday.setter
    def _bynweekday(self, value):
        self._nth_weekdays = value

    @classmethod
    def of(cls, rule, **changes):
        """The same rule as ``rule`` (a ``dateutil`` rule) with every BYxxx
        part it implies made explicit, so that a new ``dtstart`` (in
        ``changes``) keeps the same occurrences."""
        weekdays = [*(rule._byweekday or ()),
                    *(dateutil.rrule.weekday(day, n) for day, n in (rule._bynweekday or ()))]
        parts = {"freq": rule._freq, "dtstart": rule._dtstart, "interval": rule._interval, "wkst": rule._wkst,
                 "count": rule._count, "until": rule._until, "bysetpos": rule._bysetpos,
                 "bymonth": rule._bymonth, "bymonthday": (*(rule._bymonthday or ()), *(rule._bynmonthday or ())),
                 "byyearday": rule._byyearday, "byeaster": rule._byeaster, "byweekno": rule._byweekno,
                 "byweekday": weekdays or None, "byhour": rule._byhour, "byminute": rule._byminute,
                 "bysecond": rule._bysecond}
        return cls(**{key: value if value != () else None for key, value in {**parts, **changes}.items()})

    def bounded(self):
        """The occurrences (naive datetimes), each step bounded;
        :raises RuleTooSparse: from a step that scanned too far."""
        steps = self._iter()
        while True:
            self._months_left = RRULE_SEARCH_MONTHS
            try:
                local = next(steps)
            except StopIteration:
                return
            finally:
                self._months_left = None
            yield local

    def first(self):
        """The first occurrence, or None (there is none);
        :raises ValueError: when there is none within :data:`RRULE_SEARCH_MONTHS`
        of the start, or ``dateutil`` fails on the rule."""
        try:
            return next(self.bounded(), None)
        except RuleTooSparse:
            raise ValueError(f"no occurrence within {RRULE_SEARCH_MONTHS // 12} years of start") from None
        except (ArithmeticError, LookupError, TypeError) as exc:
            raise ValueError(f"not a valid RFC 5545 recurrence rule ({exc})") from None

    def period_start(self, moment):
        """The start of the rule's last period (a year, month, week, day or
        hour, times the interval, counted from ``dtstart``) that begins at
        or before ``moment`` (a naive local datetime), or ``dtstart`` when
        ``moment`` is before it: an iteration from there gives the same
        occurrences after ``moment`` as one from ``dtstart``."""
        start, step = self._dtstart, self._interval
        if moment <= start:
            return start
        if self._freq == dateutil.rrule.YEARLY:
            period = datetime.datetime(start.year + (moment.year - start.year) // step * step, 1, 1)
        elif self._freq == dateutil.rrule.MONTHLY:
            months = (moment.year - start.year) * 12 + moment.month - start.month
            year, month = divmod(start.year * 12 + start.month - 1 + months // step * step, 12)
            period = datetime.datetime(year, month + 1, 1)
        elif self._freq == dateutil.rrule.HOURLY:
            hours = int((moment - start).total_seconds() // 3600)
            period = start + datetime.timedelta(hours=hours // step * step)
        else:
            days = step * (7 if self._freq == dateutil.rrule.WEEKLY else 1)
            first = datetime.datetime.combine(start.date(), datetime.time())
            if self._freq == dateutil.rrule.WEEKLY:  # weeks begin on the rule's WKST
                first -= datetime.timedelta(days=(start.weekday() - self._wkst) % 7)
            period = first + datetime.timedelta(days=(moment - first).days // days * days)
        return max(period, start)  # the first period: from the start itself

    def after(self, moment):
        """The same rule iterated from its period around ``moment`` (a naive
        local datetime) instead of from a start long ago; itself when it
        has a COUNT (counted from the start: at most :data:`MAX_RRULE_COUNT`)."""
        if self._count is not None:
            return self
        return BoundedRule.of(self, dtstart=self.period_start(moment))


def recurrence_rule(text, start):
    """A maintenance window's rule (``rrule`` text) from its first start
    ``start`` (a naive local datetime), checked on what ``dateutil``
    parsed (it keeps the last of repeated parts: ``FREQ=HOURLY;FREQ=SECONDLY``
    is secondly): occurrences at least an hour apart, however spelled.

    :returns: a :class:`BoundedRule`.
    :raises ValueError: with the reason.
    """
    body = text.strip()
    if body.upper().startswith("RRULE:"):
        body = body[len("RRULE:"):]
    if "\n" in body or ":" in body or "DTSTART" in body.upper():
        raise ValueError("give one rule such as FREQ=WEEKLY;BYDAY=SU (start gives the first occurrence)")
    try:
        rule = dateutil.rrule.rrulestr(body, dtstart=start)
    except Exception as exc:  # dateutil raises many kinds on bad text
        raise ValueError(f"not a valid RFC 5545 recurrence rule ({str(exc)[:MAX_NAME_CHARS]})") from None
    if not isinstance(rule, dateutil.rrule.rrule):
        raise ValueError("give one rule such as FREQ=WEEKLY;BYDAY=SU")
    if (rule._freq > dateutil.rrule.HOURLY or len(rule._byminute or ()) > 1
            or len(rule._bysecond or ()) > 1):
        raise ValueError("FREQ must be HOURLY or slower, with at most one BYMINUTE and one BYSECOND "
                         "(occurrences at least an hour apart)")
    if not 1 <= rule._interval <= MAX_RRULE_INTERVAL:
        raise ValueError(f"INTERVAL must be from 1 to {MAX_RRULE_INTERVAL}")
    if rule._count is not None and rule._count > MAX_RRULE_COUNT:
        raise ValueError(f"COUNT must be at most {MAX_RRULE_COUNT}")
    if any(not MIN_BYEASTER_DAYS <= offset <= MAX_BYEASTER_DAYS for offset in rule._byeaster or ()):
        raise ValueError(f"BYEASTER must be between {MIN_BYEASTER_DAYS} and {MAX_BYEASTER_DAYS} "
                         "(a day of Easter's year)")
    try:
        return BoundedRule.of(rule)
    except Exception as exc:
        raise ValueError(f"not a valid RFC 5545 recurrence rule ({str(exc)[:MAX_NAME_CHARS]})") from None


def parse_members_query(query):
    """``status``, ``limit`` and ``after`` of ``GET .../members`` (a bottle
    query dict): ``(statuses, after key or None, limit)``.

    :raises Invalid: with every reason.
    """
    reasons = []
    unknown = sorted(set(query.keys()) - {"status", "limit", "after"})
    if unknown:
        reasons.append("unknown parameter(s): " + ", ".join(unknown))
    statuses = [status for status in query.get("status", "").split(",") if status]
    if any(status not in ("pending", "up", "late", "down", "paused") for status in statuses):
        reasons.append("status: one or more of pending, up, late, down, paused, comma-separated")
    limit = _limit_parameter(reasons, query, DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
    after = query.get("after")
    key = None
    if after is not None:
        key = decode_member_cursor(after)
        if key is None:
            reasons.append("after: not a cursor this service gave (the next of a members page)")
    if reasons:
        raise Invalid(reasons)
    return list(dict.fromkeys(statuses)), key, limit


def canonical_pattern(pattern):
    """The pattern's canonical serialization: keys sorted, compact, UTF-8 text."""
    return json.dumps(pattern, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def member_key(member):
    """A member's key, as stored and paged by: its pairs (a dict) in the
    pattern's canonical serialization."""
    return canonical_pattern(member)


def validate_pattern_test(doc):
    """Check a ``POST /api/v2/pattern/test`` body: ``{"pattern": {...}}``,
    the pattern under the rules of a heartbeat's.

    :returns: the pattern (a dict).
    :raises Invalid: with every reason the body is refused.
    """
    if not isinstance(doc, dict):
        raise Invalid(["body: must be a JSON object"])
    reasons = []
    unknown = sorted(set(doc) - {"pattern"})
    if unknown:
        reasons.append("unknown field(s): " + ", ".join(unknown))
    if "pattern" not in doc:
        reasons.append("pattern: required")
    else:
        _check_pattern(reasons, doc["pattern"])
    if reasons:
        raise Invalid(reasons)
    return dict(doc["pattern"])


def _time_parameter(reasons, query, name):
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        reasons.append(f"{name}: must be a time in Unix seconds")
        return None
    return value


def _limit_parameter(reasons, query, default, maximum):
    text = query.get("limit")
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        reasons.append(f"limit: must be an integer from 1 to {maximum}")
        return default
    return int(text)


def parse_alarms_query(query):
    """``limit`` of ``GET /api/v2/alarms`` (other parameters are ignored):
    how many of the oldest alarms to list.

    :raises Invalid: with the reason.
    """
    reasons = []
    limit = _limit_parameter(reasons, query, DEFAULT_ALARMS_LISTED, MAX_ALARMS_LISTED)
    if reasons:
        raise Invalid(reasons)
    return limit


def parse_history_query(query):
    """``since``, ``until`` (Unix seconds, inclusive) and ``limit`` of
    ``GET /api/v2/heartbeat/<id>/history``; other parameters are ignored.

    :param query: a mapping of parameter name to text.
    :returns: ``(since or None, until or None, limit)``.
    :raises Invalid: with every reason the query is refused.
    """
    reasons = []
    since = _time_parameter(reasons, query, "since")
    until = _time_parameter(reasons, query, "until")
    limit = _limit_parameter(reasons, query, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
    if since is not None and until is not None and since > until:
        reasons.append("since: must not be after until")
    if reasons:
        raise Invalid(reasons)
    return since, until, limit


_CURSOR_RE = re.compile(r"(-?[0-9]{1,18})\.([0-9]{1,18})")


def encode_cursor(created, rowid):
    """An opaque paging cursor for the heartbeat at (``created``, ``rowid``)."""
    return base64.urlsafe_b64encode(f"{int(created)}.{int(rowid)}".encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(text):
    """``(created, rowid)`` from :func:`encode_cursor`'s text; None if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return None
    match = _CURSOR_RE.fullmatch(raw)
    return (int(match[1]), int(match[2])) if match else None


def encode_member_cursor(key):
    """The opaque ``next`` cursor of a members page ending at member ``key``."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_member_cursor(text):
    """The member key in :func:`encode_member_cursor`'s text; None if it is not one."""
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        member = json.loads(key)
    except (ValueError, UnicodeError):  # binascii.Error and JSONDecodeError are ValueErrors
        return None
    return key if isinstance(member, dict) and member_key(member) == key else None


def parse_page_query(query):
    """``limit`` and ``after`` of ``GET /api/v2/heartbeat``.

    :returns: ``(limit, after)``: both None when the client does not page
        (neither is given: every heartbeat); otherwise the page size
        (``after`` alone pages by :data:`DEFAULT_PAGE_LIMIT`) and None or
        the decoded cursor.
    :raises Invalid: with every reason the query is refused.
    """
    if not query.get("limit") and not query.get("after"):
        return None, None
    reasons = []
    limit = _limit_parameter(reasons, query, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT)
    after = None
    if query.get("after"):
        after = decode_cursor(query["after"])
        if after is None:
            reasons.append("after: not a cursor this service gave (take it from the Link or X-Next-Cursor header)")
    if reasons:
        raise Invalid(reasons)
    return limit, after


#: a heartbeat's id as the API writes it (a UUID, lower case): anything else is no heartbeat
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PING_SLUG = re.compile(r"[a-z0-9_-]{1,100}")
_PING_URL_SLUG = re.compile(r"[-a-zA-Z0-9_]+")  # Healthchecks' slug converter: others are no ping URL
INVALID_URL_FORMAT = "invalid url format"
INVALID_UUID_FORMAT = "invalid uuid format"


def parse_ping_path(path):
    """A Healthchecks ping URL's path after ``/ping/`` (docs/pings.md):
    ``(id, None, kind, exit status)`` for ``<id>[/<suffix>]``, ``(ping key,
    slug, kind, exit status)`` for ``<ping-key>/<slug>[/<suffix>]``; the
    suffix ``start``, ``fail``, ``log`` or an exit status 0-255 (0 a success,
    else a failure); none is a success.

    :returns: that, or None when ``path`` is no ping URL at all (``404 not found``).
    :raises Invalid: ``invalid url format``: a slug not in lower case, as
        Healthchecks answers.
    """
    parts = path[:-1].split("/") if path.endswith("/") else path.split("/")
    if _CANONICAL_ID.fullmatch(parts[0]):
        address, slug, rest = parts[0], None, parts[1:]
    elif len(parts) in (2, 3) and _PING_URL_SLUG.fullmatch(parts[0]) and _PING_URL_SLUG.fullmatch(parts[1]):
        address, slug, rest = parts[0], parts[1], parts[2:]
        if not _PING_SLUG.fullmatch(slug):
            raise Invalid([INVALID_URL_FORMAT])
    else:
        return None
    if not rest:
        return address, slug, "success", None
    if len(rest) == 1:
        suffix = rest[0]
        if suffix in ("start", "fail", "log"):
            return address, slug, suffix, None
        if suffix.isdigit() and suffix.isascii():  # over 255: see check_exit_status
            digits = suffix.lstrip("0")  # int() refuses over 4,300 digits: any over 3 is over 255 anyway
            status = int(digits or "0") if len(digits) <= 3 else MAX_EXIT_STATUS + 1
            return address, slug, "success" if status == 0 else "fail", status
    return None


def check_exit_status(status):
    """:raises Invalid: ``invalid url format`` for an exit status over 255
    (checked once the heartbeat is found, as Healthchecks does)."""
    if status is not None and status > MAX_EXIT_STATUS:
        raise Invalid([INVALID_URL_FORMAT])


def parse_rid(value):
    """A ping's ``?rid=`` (a run's id: a UUID, in any spelling
    :class:`uuid.UUID` reads) in canonical form; None when not given.
    :raises Invalid: ``invalid uuid format``."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Invalid([INVALID_UUID_FORMAT]) from None


def ping_body_text(body):
    """A ping's body as kept: ``(text, cut)``, its first
    :data:`PING_BODY_LIMIT_BYTES` bytes decoded (UTF-8, a character cut in
    two dropped, bytes that are not UTF-8 replaced)."""
    if len(body) <= PING_BODY_LIMIT_BYTES:
        return body.decode("utf-8", "replace"), False
    return body[:PING_BODY_LIMIT_BYTES].decode("utf-8", "replace").rstrip("\ufffd"), True


def failure_output(exit_status, body_text):
    """The alarm event's ``output`` of a failed run (docs/pings.md): ``failed:
    <first line of the body>`` or ``exit status N: <first line>``, or
    without a body ``failed`` / ``exit status N``."""
    head = "failed" if exit_status is None else f"exit status {exit_status}"
    lines = body_text.strip().splitlines()
    first = lines[0].strip()[:MAX_TEXT_CHARS] if lines else ""
    return f"{head}: {first}" if first else head


class TooLarge(Exception):
    """Input over one of the MAX_* limits (answered 413)."""


def validate_events(value):
    """Check a POST /api/v2/event body: one event object, or an array of them.

    :returns: the list of events (dicts).
    :raises Invalid: when the body or any element is not an object.
    :raises TooLarge: beyond :data:`MAX_EVENTS_PER_REQUEST` events.
    """
    events = [value] if isinstance(value, dict) else value
    if not isinstance(events, list):
        raise Invalid(["body: must be an event object or an array of event objects"])
    if events and set(map(type, events)) != {dict}:  # in C: a 1,000-event batch is checked in microseconds
        bad = [i for i, event in enumerate(events) if not isinstance(event, dict)]
        raise Invalid([f"event {i}: must be an object" for i in bad[:10]])
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise TooLarge(f"more than {MAX_EVENTS_PER_REQUEST} events in one request")
    return events


###############################################################################
# States
###############################################################################

# The one status vocabulary and severity order: the store, the engine, the
# pages and the metrics all speak it.
PENDING, UP, LATE, DOWN, PAUSED = "pending", "up", "late", "down", "paused"
MAINTENANCE = "maintenance"  # in the history and the pages only: a maintenance window covers the heartbeat
DELETED, RETIRED = "deleted", "retired"  # in the history only: a member removed by hand, or retired
#: every status the history and the pages show, the worst first: a grouped
#: heartbeat's status is the first its members have, a slice of a timeline
#: shows the first it saw, filters, counts and lists go in this order
SEVERITY = (DOWN, LATE, PENDING, UP, MAINTENANCE, PAUSED)
#: the statuses a heartbeat or a member is in (stored), the worst first
STATUSES = tuple(status for status in SEVERITY if status != MAINTENANCE)
#: those a grouped heartbeat takes from its members, the worst first (paused is its own)
MEMBERS_WORST_FIRST = tuple(status for status in STATUSES if status != PAUSED)
#: the statuses with an open alarm
ALARMED = frozenset((LATE, DOWN))
ALARM_STATE, LATE_STATE, RESOLVED_STATE = 3, 1, 0  # Canopsis check states: critical, minor, ok
_SEVERITY_INDEX = {status: i for i, status in enumerate(SEVERITY)}


def severity(status):
    """A status's place in :data:`SEVERITY` (0: the worst); a status it
    does not know comes after every one it knows."""
    return _SEVERITY_INDEX.get(status, len(SEVERITY))


###############################################################################
# Store
###############################################################################


class StoreError(Exception):
    """The database failed; the cause is chained (``__cause__``). Its text is
    one line (PostgreSQL's messages span several), for the log."""

    def __str__(self):
        return one_line(super().__str__())


class SchemaTooNew(StoreError):
    """The database was written by a newer heartbeat-lite."""


class DatabaseBusy(StoreError):
    """A request gave up waiting for the engine while it waits for the
    database (see :class:`EngineLock`): the database error, at once."""


class DatabaseGone(StoreError):
    """The database file was deleted or replaced while the service ran:
    what would be written now would be lost, so nothing is. ``since``: when
    that was found (Unix seconds)."""

    def __init__(self, reason, since):
        super().__init__(reason)
        self.since = since


class NotFound(Exception):
    """No heartbeat has that id."""


class Taken(Exception):
    """Another heartbeat already has a value that must be unique: ``field``
    says which (``pattern``, ``slug``, ``push_token``)."""

    field = None


class PatternExists(Taken):
    """Another heartbeat already has that pattern."""

    field = "pattern"


class SlugExists(Taken):
    """Another heartbeat already has that slug."""

    field = "slug"


class PushTokenExists(Taken):
    """Another heartbeat already has that push token."""

    field = "push_token"


class MemberNotFound(NotFound):
    """The heartbeat has no such member (``args[0]``: the member key)."""


_DOCUMENT_COLUMNS = (
    "id", "name", "author", "description", "output", "pattern", "expected_interval",
    "interval_seconds", "late_after", "late_seconds", "group_by", "expected_members", "retire_after",
    "retire_seconds", "created", "updated",
    "channels", "escalate_after", "escalate_seconds", "escalate_to",
    "slug", "push_token", "max_run", "max_run_seconds", "schedule", "tz",
)
_STATE_COLUMNS = ("status", "refreshed", "last_event", "alarm_since", "deadline", "due")
_SELECT_HEARTBEAT = "SELECT " + ", ".join(_DOCUMENT_COLUMNS + _STATE_COLUMNS) + " FROM heartbeat"
#: the status page's order, before the name: the problems first (down, then late, then the rest)
_PROBLEMS_FIRST = "CASE status WHEN 'down' THEN 0 WHEN 'late' THEN 1 ELSE 2 END"
_PATTERN_TEXT = "replace(pattern, '\"', '')"  # what the status page searches: {"k":"v"} as {k:v}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ID_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit
_READS = ("SELECT", "PRAGMA")

#: the outcome of the store's last write: ``ok``, ``at`` (Unix seconds, None
#: before any write) and, when it failed, ``reason`` (SQLite's message)
WriteOutcome = collections.namedtuple("WriteOutcome", "ok at reason")

_MEMBER_COLUMNS = ("heartbeat_id", "member", "expected", "interval_seconds", "late_seconds", "retire_seconds",
                   "status", "refreshed", "last_event", "alarm_since")
_SELECT_MEMBER = "SELECT " + ", ".join(_MEMBER_COLUMNS + ("deadline", "due")) + " FROM member"
# A member with what its alarm event needs of its heartbeat (``id`` is the heartbeat's).
_SELECT_MEMBER_AND_HEARTBEAT = ("SELECT " + ", ".join(f"m.{c}" for c in _MEMBER_COLUMNS + ("deadline", "due"))
                                + ", h.id AS id, h.name AS name, h.output AS output, h.pattern AS pattern"
                                + " FROM member m JOIN heartbeat h ON h.id = m.heartbeat_id")
_WORST_FIRST = MEMBERS_WORST_FIRST  # a grouped heartbeat's status: the first its members have

_MAINTENANCE_COLUMNS = ("id", "name", "pattern", "start_local", "end_local", "timezone", "rrule", "created", "updated")
_SELECT_MAINTENANCE = "SELECT " + ", ".join(_MAINTENANCE_COLUMNS) + " FROM maintenance"

# For each older schema version v, the steps that bring a database of that
# version straight to SCHEMA_VERSION, run in one transaction with schema.sql
# between them: (before it, after it). Each version changed the heartbeat
# table in a way SQLite cannot ALTER (a CHECK, a generated column), so each
# step rebuilds it: the old table steps aside without its indexes (schema.sql
# makes the new table and its indexes), then its rows move over, the columns
# that version had. Rebuilding keeps the CHECK, which catches a bug writing a
# status that does not exist.
_SET_ASIDE = """
ALTER TABLE heartbeat RENAME TO heartbeat_v{v};
DROP INDEX IF EXISTS heartbeat_pattern;
DROP INDEX IF EXISTS heartbeat_newest;
DROP INDEX IF EXISTS heartbeat_due;
DROP INDEX IF EXISTS heartbeat_alarms;
DROP INDEX IF EXISTS heartbeat_slug;
DROP INDEX IF EXISTS heartbeat_push_token;
"""
_V1_COLUMNS = ("id, name, author, description, output, pattern, expected_interval, interval_seconds, "
               "created, updated, status, refreshed, last_event, alarm_since")
_V2_COLUMNS = _V1_COLUMNS + ", late_after, late_seconds"
_MOVE_OVER = """
INSERT INTO heartbeat ({columns}) SELECT {columns} FROM heartbeat_v{v} ORDER BY rowid;
DROP TABLE heartbeat_v{v};
"""
_MIGRATIONS = {
    # Version 2 widened the status CHECK (late, paused) and added late_after
    # and the generated ``due``.
    1: (_SET_ASIDE.format(v=1), _MOVE_OVER.format(v=1, columns=_V1_COLUMNS)),
    # Version 3 added the group_by columns, made ``due`` NULL for a grouped
    # heartbeat, and the member table (schema.sql creates it).
    2: (_SET_ASIDE.format(v=2), _MOVE_OVER.format(v=2, columns=_V2_COLUMNS)),
    # Version 4 added the history table (schema.sql creates it): nothing to rebuild.
    3: ("", ""),
}
# Version 5 (notifications) added the heartbeat's routing columns and a
# channel column and more to the outbox, and the channel tables (schema.sql
# creates them): to every older version's steps, the heartbeat table is
# rebuilt (from version 3 on: before, the step above does it) and the
# outbox too, its rows moved over as the forward channel's: nothing
# undelivered is lost.
_V3_COLUMNS = _V2_COLUMNS + ", group_by, expected_members, retire_after, retire_seconds"
_V5_OUTBOX_ASIDE = "ALTER TABLE outbox RENAME TO outbox_v4;\n"
_V5_OUTBOX_OVER = """
INSERT INTO outbox (seq, event, channel, enqueued_at)
    SELECT seq, event, 'forward', json_extract(event, '$.timestamp') FROM outbox_v4 ORDER BY seq;
DROP TABLE outbox_v4;
"""
_MIGRATIONS = {
    1: (_MIGRATIONS[1][0] + _V5_OUTBOX_ASIDE, _MIGRATIONS[1][1] + _V5_OUTBOX_OVER),
    2: (_MIGRATIONS[2][0] + _V5_OUTBOX_ASIDE, _MIGRATIONS[2][1] + _V5_OUTBOX_OVER),
    **{v: (_SET_ASIDE.format(v=v) + _V5_OUTBOX_ASIDE, _MOVE_OVER.format(v=v, columns=_V3_COLUMNS) + _V5_OUTBOX_OVER)
       for v in (3, 4)},
    # Version 6 added the boundary table (schema.sql creates it): nothing to rebuild.
    5: ("", ""),
}
# Version 7 (pings and schedules) added the heartbeat's slug, push_token,
# max_run and schedule columns: to every older version's steps (each
# rebuilds the heartbeat table but version 5's), version 6's rebuild.
_V5_COLUMNS = _V3_COLUMNS + ", channels, escalate_after, escalate_seconds, escalate_to"
_MIGRATIONS = {
    **_MIGRATIONS,
    5: (_SET_ASIDE.format(v=5), _MOVE_OVER.format(v=5, columns=_V5_COLUMNS)),
    6: (_SET_ASIDE.format(v=6), _MOVE_OVER.format(v=6, columns=_V5_COLUMNS)),
    # Version 8 added the alarm_output table (schema.sql creates it): nothing to rebuild.
    7: ("", ""),
}


def check_database_path(path):
    """Refuse, before opening anything, a database path that cannot work: an
    empty path, a missing directory, a directory, a file that is not SQLite.
    Reads at most the first 16 bytes; writes nothing.

    :raises ConfigError: saying why.
    """
    if path == ":memory:":
        return
    if not path:
        raise ConfigError("the database path is empty")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"database directory {directory} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"database {path} is a directory, not a SQLite file")
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # created at first open
    except OSError as exc:
        raise ConfigError(f"cannot read database {path}: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:  # an empty file is an empty database to SQLite
        raise ConfigError(f"database {path} is not a SQLite database file")


class DatabaseLock:
    """An exclusive lock on the database, held from :meth:`acquire` to
    :meth:`release`: one database, one service. Two ``flock`` locks:

    - on ``<database>.lock`` beside it (its real path: a symbolic link finds
      it), taken before the database exists, so that two services starting
      on one new path do not both create it;
    - on the database file itself, by its identity (device and inode), so
      that a service on another path to the same file (a hard link, a bind
      mount) is refused too: two services on one file each keep their own
      WAL, and writes are lost. It is taken at :meth:`acquire` when the file
      exists, else by :meth:`hold_file` once the store has created it.

    ``flock`` locks belong to the open file, so a second service in the same
    process is refused too; the kernel drops them when the process dies,
    however it dies. They never touch SQLite's own locks (POSIX record
    locks, which ``flock`` does not see on Linux and the BSDs); the file
    descriptor held on the database is closed only at :meth:`release`, after
    the store closed its connections (closing any descriptor of a file drops
    the process' POSIX locks on it). The lock file stays (deleting it races
    with the next taker); it holds the holder's process id, for the message.
    """

    def __init__(self, database_path):
        self.database_path = database_path
        self.path = os.path.realpath(database_path) + ".lock"
        self._fd = None
        self._file_fd = None  # on the database file, once it exists

    def acquire(self):
        """:raises ConfigError: another service holds it, or it cannot be created."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system: no lock
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            try:  # a read-only file system: the database is read-only too, but may come back
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                raise ConfigError(f"cannot create the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise ConfigError(
                f"database {self.path[:-len('.lock')]} is in use by another heartbeat-lite"
                f"{f' (process {holder})' if holder.isdigit() else ''}: one database, one service"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode("ascii"))
        except OSError:
            pass  # opened read-only: the lock holds all the same
        self._fd = fd
        try:
            self.hold_file()
        except BaseException:
            self.release()
            raise

    def hold_file(self):
        """Lock the database file itself, if it exists and is not locked yet.

        :raises ConfigError: another service holds it (through another path).
        """
        if self._fd is None or self._file_fd is not None:
            return
        import fcntl
        try:
            fd = os.open(self.database_path, os.O_RDONLY)
        except FileNotFoundError:
            return  # created at the store's first open, which calls this again
        except OSError as exc:
            raise ConfigError(f"cannot open database {self.database_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"database {os.path.abspath(self.database_path)} is in use by another heartbeat-lite, "
                "through another path to the same file (a hard link?): one database, one service"
            ) from None
        self._file_fd = fd

    def release(self):
        for name in ("_file_fd", "_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)  # closing the file releases its lock
                setattr(self, name, None)


class _Connections(abc.ABC):
    """The connection funnel and transactions of a :class:`Store`: every
    statement passes :meth:`_run`, the one place where the test hook runs,
    driver errors become :class:`StoreError`, a failed connection is dropped
    (opened again before its next use) and the outcome of writes is kept.

    Writes go through one connection, the writer, under a lock; a
    transaction (:meth:`atomic`) holds it to the end. Reads go through a
    connection of the reading thread's own, with no lock (a read inside the
    thread's own transaction uses the writer, to see its uncommitted rows);
    a database with a single connection (SQLite in memory) reads on the
    writer. ``/healthz`` reads on a connection of its own with a short
    timeout (:meth:`health`).

    What a database does its own way are the abstract hooks below, each
    implemented by :class:`SqliteStore` and :class:`PostgresStore`.

    :param label: the database as messages show it (``path``).
    :param busy_timeout: seconds to wait for a lock held by another
        connection before giving up with a :class:`StoreError`.
    :param errors: the exception classes a statement may raise (the
        driver's; sqlite3's too for PostgreSQL, which tests' statement hooks
        raise to inject a failure).
    :param single_connection: reads share the writer (no reader connections).
    """

    def __init__(self, label, busy_timeout, errors, single_connection=False):
        #: the database as messages show it: a file path, a URL without its password
        self.path = label
        self.busy_timeout = busy_timeout
        self._errors = errors
        self._single_connection = single_connection
        self._guard = None  # None, or a callable run before every statement that may refuse it (StoreError)
        self._lock = threading.RLock()  # guards the writer connection
        self._depth = 0  # nesting of atomic()
        self._owner = None  # the thread inside atomic()
        self._conn = None  # the writer: opened on first use, and again after a failure
        self._stale = False  # the writer failed inside a transaction: drop it after
        self._writing_since = None  # time.monotonic() when the writer's statement in progress began
        self._local = threading.local()  # .reader: this thread's reader connection
        self._readers = set()  # every open reader, to close them all
        self._readers_lock = threading.Lock()  # guards _readers (never the writer's lock: reads must not wait)
        self._prepared = False  # the schema is in place: readers need not go through the writer
        self._health_conn = None  # /healthz's own reader, with a short timeout
        self._health_lock = threading.Lock()
        #: the :data:`WriteOutcome` of the last write (statement outside a
        #: transaction, or a transaction's commit), or of the last failure
        self.last_write = WriteOutcome(True, None, None)
        #: None, or a callable ``(sql, params)`` run before every statement:
        #: tests trace statements with it, or raise ``sqlite3.Error`` from it
        #: to inject a failure
        self.statement_hook = None
        #: None, or a callable ``(ok)`` told the outcome of every write, as
        #: :attr:`last_write` records it (the engine's outage rule)
        self.write_observer = None

    # -- hooks: what each database does its own way --------------------------

    @abc.abstractmethod
    def _open(self, timeout=None):
        """A new connection in autocommit mode whose rows read like
        :class:`sqlite3.Row`, waiting ``timeout`` seconds (default: the busy
        timeout) for locks; :raises StoreError:."""

    @abc.abstractmethod
    def _open_reader(self, timeout=None):
        """As :meth:`_open`, for a connection that only reads."""

    @abc.abstractmethod
    def _prepare(self, conn):
        """Prepare a new writer connection: the schema in place (created,
        or an older one migrated), and what else the database needs once it
        exists; :raises SchemaTooNew:, :raises StoreError:."""

    @abc.abstractmethod
    def _send(self, conn, sql, params, many, fetch):
        """Run one statement written with ``?`` and ``:name`` placeholders:
        every row of ``params`` when ``many``; the rows when ``fetch``, else
        the cursor (its ``rowcount``)."""

    @abc.abstractmethod
    def _refusal(self, error):
        """The exception that a statement's ``error`` means when the database
        refused it by a rule (:class:`PatternExists`), else None."""

    @abc.abstractmethod
    def _broken(self, conn, error):
        """Whether the writer that met ``error`` inside a transaction must be
        opened again once the transaction is over."""

    @abc.abstractmethod
    def _lost(self, exc):
        """Whether a :class:`StoreError` says the server closed the
        connection: a statement not yet sent may then run again on a new one."""

    @abc.abstractmethod
    def _for_update(self, skip_locked=False, of=None):
        """The clause that locks the rows a read inside :meth:`atomic` is
        about to change, so that another instance changes them before or
        after, never in between (``skip_locked``: rows another holds are
        left out; ``of``: the table alias to lock)."""

    # -- connections -----------------------------------------------------------

    def open(self):
        """Open and prepare the database now (else the first use does).

        :raises ConfigError: the database is newer than this code.
        """
        try:
            with self._lock:
                self._connection()
        except SchemaTooNew as exc:
            raise ConfigError(str(exc)) from exc
        except StoreError as exc:
            log.error("database %s unavailable at start: %s; answering database errors until it recovers",
                      self.path, exc)

    def _connection(self):
        """The writer connection, opening and preparing one if needed (call
        under the lock)."""
        if self._conn is None:
            try:
                conn = self._open()
                try:
                    self._prepare(conn)
                except BaseException:
                    conn.close()
                    raise
            except StoreError as exc:
                self._wrote(exc.__cause__ or exc)
                raise
            self._conn = conn
            self._prepared = True
        return self._conn

    def _reader(self):
        """This thread's reader connection, opened if needed (after the
        writer, which prepares the schema)."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            if not self._prepared:
                with self._lock:
                    self._connection()
            reader = self._open_reader()
            with self._readers_lock:
                self._readers.add(reader)
            self._local.reader = reader
        return reader

    def _discard_reader(self):
        reader = getattr(self._local, "reader", None)
        self._local.reader = None
        if reader is not None:
            with self._readers_lock:
                self._readers.discard(reader)
            reader.close()

    def _discard(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except self._errors as exc:
                log.debug("closing a failed connection: %s", exc)
            self._conn = None
        self._stale = False

    def _discard_health(self):
        if self._health_conn is not None:
            self._health_conn.close()
            self._health_conn = None

    def close(self):
        with self._lock:
            self._discard()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        with self._health_lock:
            self._discard_health()

    def _wrote(self, error=None):
        """Record the outcome of a write: success, or the driver's error."""
        self.last_write = WriteOutcome(error is None, time.time(), None if error is None else str(error))
        if self.write_observer is not None:
            self.write_observer(error is None)

    # -- transactions and statements -------------------------------------------

    @contextlib.contextmanager
    def atomic(self):
        """Run the enclosed store calls as one transaction (nestable).

        The outermost level begins it (``_BEGIN``: SQLite takes its write
        lock at once), commits on success and rolls back on any exception.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._execute(self._BEGIN)
            self._depth = 1
            self._owner = threading.get_ident()
            try:
                yield self
                self._execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0
                self._owner = None
                if self._stale:
                    self._discard()

    def _rollback(self):
        try:
            self._conn.execute("ROLLBACK")
        except self._errors as exc:
            log.debug("rollback: %s", exc)
            self._stale = True  # a connection that cannot roll back is opened again

    def _run(self, conn, sql, params, many=False, fetch=False):
        """The one funnel every statement passes: the guard, the hook, then
        the database; a driver error leaves as :class:`StoreError` (or as
        what :meth:`_refusal` makes of it) and the failed connection is
        dropped (the writer's once its transaction is over)."""
        if self._guard is not None:
            try:
                self._guard()
            except StoreError as exc:  # a refused write is a failed one
                if conn is self._conn and (self._depth or not sql.startswith(_READS)):
                    self._wrote(exc)
                raise
        writer = conn is self._conn
        try:
            if writer:
                self._writing_since = time.monotonic()
            if self.statement_hook is not None:
                self.statement_hook(sql, params)
            result = self._send(conn, sql, params, many, fetch)
        except self._errors as exc:
            refusal = self._refusal(exc)
            if refusal is not None:
                raise refusal from exc
            self._failed(conn, sql, exc)
            raise StoreError(f"{exc} (in: {sql.split()[0]} ...)") from exc
        finally:
            if writer:
                self._writing_since = None
        if conn is self._conn and (sql == "COMMIT" or not self._depth and not sql.startswith(_READS + ("BEGIN",))):
            self._wrote()
        return result

    def writer_waiting(self):
        """Seconds the writer's statement in progress has run, 0.0 when
        none: long, it waits for a lock the database holds for another
        (another process' transaction, on SQLite), up to the busy timeout."""
        since = self._writing_since
        return 0.0 if since is None else time.monotonic() - since

    def _failed(self, conn, sql, error):
        if conn is self._conn:
            if self._depth or not sql.startswith(_READS):  # a read beside no write is no write failure
                self._wrote(error)
            if self._depth:
                self._stale = self._stale or self._broken(conn, error)  # atomic() drops it once over
            else:
                self._discard()
        elif conn is self._health_conn:
            self._discard_health()
        else:
            self._discard_reader()

    def _execute(self, sql, params=()):
        with self._lock:
            try:
                return self._run(self._connection(), sql, params)
            except StoreError as exc:
                if sql != self._BEGIN or not self._lost(exc):
                    raise
            # A connection found closed by the server (PostgreSQL restarted,
            # the backend terminated) when nothing was sent yet: once more.
            return self._run(self._connection(), sql, params)

    def _executemany(self, sql, rows):
        with self._lock:
            return self._run(self._connection(), sql, rows, many=True)

    def _query(self, sql, params=()):
        if self._single_connection or self._owner == threading.get_ident():
            with self._lock:
                return self._run(self._connection(), sql, params, fetch=True)
        try:
            return self._run(self._reader(), sql, params, fetch=True)
        except StoreError as exc:
            if not self._lost(exc):
                raise
        return self._run(self._reader(), sql, params, fetch=True)  # a read outside a transaction: harmless again

    # -- health ----------------------------------------------------------------

    #: /healthz's read: the events waiting for delivery (not those set aside)
    _HEALTH_READ = "SELECT COUNT(*) FROM outbox WHERE refused_at IS NULL"

    def health(self):
        """Whether the database answers reads and the last write succeeded,
        found without waiting on the writer: a read on a connection of its
        own, with a timeout of :data:`HEALTH_TIMEOUT_SECONDS`, and the
        recorded :attr:`last_write`.

        :returns: ``(outbox depth, or None when the read could not run in
            time; problem or None; since when, Unix seconds, or None)``; the
            problem says what fails.
        """
        try:
            depth = self._health_read(self._HEALTH_READ)
        except DatabaseGone as exc:
            return None, str(exc), exc.since
        except StoreError as exc:
            return None, f"database reads fail: {exc.__cause__ or exc}", time.time()
        last = self.last_write
        if not last.ok:
            return depth, f"database writes fail: {last.reason}", last.at
        return depth, None, None

    def _health_read(self, sql):
        rows = self._health_rows(sql)
        return None if rows is None else rows[0][0]

    def delivery_health(self):
        """``[(channel, waiting, oldest waiting's enqueued time, set aside)]``
        read as :meth:`health` reads (on its own connection, briefly), for
        ``/healthz``; None when the read could not run in time.

        :raises StoreError:."""
        rows = self._health_rows(
            "SELECT channel, SUM(CASE WHEN refused_at IS NULL THEN 1 ELSE 0 END), "
            "MIN(CASE WHEN refused_at IS NULL THEN enqueued_at END), "
            "SUM(CASE WHEN refused_at IS NULL THEN 0 ELSE 1 END) FROM outbox GROUP BY channel")
        return None if rows is None else [tuple(row) for row in rows]

    def _health_rows(self, sql):
        if self._single_connection:  # one connection: wait for it briefly, else skip the read
            if not self._lock.acquire(timeout=HEALTH_TIMEOUT_SECONDS):
                return None
            try:
                return self._run(self._connection(), sql, (), fetch=True)
            finally:
                self._lock.release()
        if not self._health_lock.acquire(timeout=HEALTH_TIMEOUT_SECONDS):
            return None  # another health check is reading
        try:
            for attempt in (1, 2):  # a connection the server closed (PostgreSQL restarted) is opened again
                if self._health_conn is None:
                    self._health_conn = self._open_reader(timeout=HEALTH_TIMEOUT_SECONDS)
                try:
                    return self._run(self._health_conn, sql, (), fetch=True)
                except StoreError as exc:
                    if attempt == 2 or not self._lost(exc):
                        raise
        finally:
            self._health_lock.release()


class _HeartbeatStatements:
    """The heartbeats' documents: create, read, list, page, update, delete;
    the alarms list and the status page's search."""

    def insert_heartbeat(self, row):
        """Insert a heartbeat (a dict with every document column and
        ``refreshed``); it starts ``pending``.

        :raises PatternExists: when another heartbeat has the same pattern.
        """
        columns = _DOCUMENT_COLUMNS + ("refreshed",)
        with self.atomic():
            self._check_free(row, row["id"])
            self._execute(
                f"INSERT INTO heartbeat ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})",
                row,
            )
            self._changed("heartbeat", row["id"])

    def _check_free(self, row, own_id):
        """:raises Taken: (the first of pattern, slug, push token) when another
        heartbeat than ``own_id`` has a value of ``row`` that must be unique."""
        # Inside the write transaction, so no other writer can slip in between
        # this look-up and the write; the UNIQUE indexes stay the last word.
        for column, taken in (("pattern", PatternExists), ("slug", SlugExists), ("push_token", PushTokenExists)):
            value = row.get(column)
            if value is not None and self._query(f"SELECT 1 FROM heartbeat WHERE {column} = ? AND id <> ?",
                                                 (value, own_id)):
                raise taken(value)

    def heartbeat(self, heartbeat_id):
        """The heartbeat row with that id (document and state).

        :raises NotFound: when there is none.
        """
        rows = self._query(f"{_SELECT_HEARTBEAT} WHERE id = ?{self._for_update()}", (heartbeat_id,))
        if not rows:
            raise NotFound(heartbeat_id)
        return rows[0]

    def ids_named(self, name):
        """The ids of the heartbeats named ``name`` (an Opsgenie ping
        refreshes them all), oldest first."""
        return [row[0] for row in self._query("SELECT id FROM heartbeat WHERE name = ? ORDER BY created, id", (name,))]

    def heartbeats(self):
        """Every heartbeat row, newest first (ties: last inserted first)."""
        return self._query(f"{_SELECT_HEARTBEAT} ORDER BY created DESC, rowid DESC")

    def heartbeats_page(self, limit, after=None):
        """At most ``limit`` heartbeat rows, newest first (ties: last
        inserted first), each with its ``rowid``: the first ones, or those
        after the cursor ``after`` = ``(created, rowid)`` of the last row of
        the previous page."""
        where, params = "", (limit,)
        if after is not None:
            where, params = "WHERE (created, rowid) < (?, ?)", (*after, limit)
        return self._query(f"{_SELECT_HEARTBEAT.replace('SELECT ', 'SELECT rowid, ', 1)} {where} "
                           "ORDER BY created DESC, rowid DESC LIMIT ?", params)

    def each_heartbeat(self, batch=1000):
        """Every heartbeat row, in id order, ``batch`` rows per query: a
        whole table at once would set the process's memory high-water mark.
        """
        after = ""
        while True:
            rows = self._query(f"{_SELECT_HEARTBEAT} WHERE id > ? ORDER BY id LIMIT ?", (after, batch))
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["id"]

    def update_heartbeat(self, heartbeat_id, fields):
        """Replace a heartbeat's document fields (every document column but
        ``id`` and ``created``); its state is kept.

        :returns: ``(old row, new row)``.
        :raises NotFound: when there is none.
        :raises PatternExists: when another heartbeat has the new pattern.
        """
        columns = [c for c in _DOCUMENT_COLUMNS if c not in ("id", "created")]
        with self.atomic():
            old = self.heartbeat(heartbeat_id)
            self._check_free(fields, heartbeat_id)
            self._execute(
                f"UPDATE heartbeat SET {', '.join(f'{c} = :{c}' for c in columns)} WHERE id = :id",
                {**{c: fields[c] for c in columns}, "id": heartbeat_id},
            )
            self._changed("heartbeat", heartbeat_id)
            return old, self.heartbeat(heartbeat_id)

    def delete_heartbeat(self, heartbeat_id):
        """Delete a heartbeat, its state and its history; return its row as it was.

        :raises NotFound: when there is none.
        """
        with self.atomic():
            row = self.heartbeat(heartbeat_id)
            self._execute("DELETE FROM heartbeat WHERE id = ?", (heartbeat_id,))
            self._changed("heartbeat", heartbeat_id)
            self._execute("DELETE FROM history WHERE heartbeat_id = ?", (heartbeat_id,))
            self._execute("DELETE FROM alarm_output WHERE heartbeat_id = ?", (heartbeat_id,))
        return row

    def alarms(self, limit=-1):
        """The rows of the heartbeats that are late or down, oldest alarm first (at
        most ``limit``; all when negative); not grouped ones (their members
        have the alarms: :meth:`member_alarms`)."""
        return self._query(f"{_SELECT_HEARTBEAT} WHERE status IN ('late', 'down') AND group_by IS NULL "
                           "ORDER BY alarm_since, rowid LIMIT ?", (self._NO_LIMIT if limit < 0 else limit,))

    def alarm_counts(self):
        """``{status: (heartbeats, members)}`` of the alarms open now, late
        and down: heartbeats not grouped (a grouped one's members have its
        alarms) and members; from the status indexes."""
        counts = {LATE: [0, 0], DOWN: [0, 0]}
        for table, grouped, column in (("heartbeat", " AND group_by IS NULL", 0), ("member", "", 1)):
            for status, count in self._query(f"SELECT status, COUNT(*) FROM {table} WHERE status IN ('late', 'down')"
                                             f"{grouped} GROUP BY status"):
                counts[status][column] = count
        return {status: tuple(pair) for status, pair in counts.items()}

    def status_page(self, statuses, terms, limit, offset, covered=()):
        """One page of the heartbeats whose status is one of ``statuses``
        (any, when empty) and whose name or pattern contains every one of
        ``terms`` (case-insensitive for ASCII letters only, on both
        databases, as SQLite's LIKE; the pattern is searched as its
        canonical JSON without quotes, so ``connector:backup`` finds
        ``{"connector": "backup"}``), ordered by name, case-insensitive
        likewise, then id, the problems first (down, then late, then the
        rest): a stable order to page through. ``covered``
        holds the ids of the heartbeats a maintenance window covers now
        (worked out in memory, :meth:`Windows.covered`): they are counted
        under ``"maintenance"`` too, and that "status" in ``statuses``
        selects them. They are one parameter (a JSON list), whatever their
        number: the statement is the same for any number of windows.

        Two scans of the table, one counting, one for the page: 10,000
        heartbeats take a few milliseconds.

        :returns: ``(counts, matching, rows)``: ``{status: heartbeats}``
            over the whole table, how many match, the rows of this page.
        """
        covered = list(covered)
        covered_params = [dump_json(covered).decode()] if covered else []
        covered = f"id IN ({self._IN_JSON_LIST})" if covered else "FALSE"
        conditions, params = [], []
        wanted = [status for status in statuses if status != "maintenance"]
        either = [f"status IN ({', '.join('?' * len(wanted))})"] if wanted else []
        params += wanted
        if "maintenance" in statuses:
            either.append(f"({covered})")
            params += covered_params
        if either:
            conditions.append("(" + " OR ".join(either) + ")")
        for term in terms:
            like = "%" + re.sub(r"([\\%_])", r"\\\1", term.translate(_ASCII_LOWER)) + "%"
            conditions.append(f"({self._FOLD.format('name')} LIKE ? ESCAPE '\\' OR "
                              f"{self._FOLD.format(_PATTERN_TEXT)} LIKE ? ESCAPE '\\')")
            params += [like, like]
        condition = " AND ".join(conditions) or "TRUE"
        counted = self._query(f"SELECT status, COUNT(*), SUM(CASE WHEN {condition} THEN 1 ELSE 0 END), "
                              f"SUM(CASE WHEN {covered} THEN 1 ELSE 0 END) FROM heartbeat "
                              "GROUP BY status", params + covered_params)
        matching = sum(row[2] for row in counted)
        rows = self._query(f"{_SELECT_HEARTBEAT} WHERE {condition} ORDER BY {_PROBLEMS_FIRST}, {self._BY_NAME} "
                           "LIMIT ? OFFSET ?", params + [limit, offset]) if matching > offset else []
        counts = {row[0]: row[1] for row in counted}
        counts["maintenance"] = sum(row[3] for row in counted)
        return counts, matching, rows


class _StateStatements(abc.ABC):
    """The heartbeats' state: refreshes by matching events, what falls due
    and when, the transitions the engine writes, and the outage shift."""

    def refresh(self, heartbeat_ids, now, refreshes=None):
        """Record a matching event at ``now`` for each id: each goes ``up``,
        except a paused one, whose ``last_event`` only moves. ``refreshes``:
        None, or ``{id: refreshed}`` when that is not ``now`` (a schedule's
        next run, see :func:`refresh_time`).

        :returns: the rows, as they were, of those that were not up
            (pending, late, down or paused), in the order of ``heartbeat_ids``.
        """
        with self.atomic():
            special = []
            for start in range(0, len(heartbeat_ids), _ID_CHUNK):
                chunk = heartbeat_ids[start:start + _ID_CHUNK]
                special += [row for row in self._query(
                    f"{_SELECT_HEARTBEAT} WHERE {self._SPECIAL_ONLY}id IN ({', '.join('?' * len(chunk))})"
                    f"{self._for_update()}",
                    chunk,
                ) if row["status"] != UP]
            self._executemany(
                f"UPDATE heartbeat SET status = 'up', {self._LATER_REFRESH}, alarm_since = NULL "
                "WHERE id = ? AND status <> 'paused'",
                [(now if refreshes is None else refreshes[heartbeat_id], now, now, heartbeat_id)
                 for heartbeat_id in heartbeat_ids],
            )
            paused = [row["id"] for row in special if row["status"] == "paused"]
            if paused:
                self._executemany(f"UPDATE heartbeat SET {self._LATER_EVENT} WHERE id = ?",
                                  [(now, now, heartbeat_id) for heartbeat_id in paused])
        if len(special) > 1:
            position = {heartbeat_id: i for i, heartbeat_id in enumerate(heartbeat_ids)}
            special.sort(key=lambda row: position[row["id"]])
        return special

    def refresh_if_not_down(self, heartbeat_id, now):
        """Refresh one heartbeat at ``now`` if it is pending or up, in a single
        statement (atomic by itself); True when it was refreshed.

        Ingestion's hot path: every SQLite statement costs a release and a
        re-acquisition of the GIL, which under concurrent load is what
        throughput pays for, so the common case is one statement, not four.
        """
        return self._execute(
            f"UPDATE heartbeat SET status = 'up', {self._LATER_REFRESH} WHERE id = ? AND status IN ('pending', 'up')",
            (now, now, now, heartbeat_id),
        ).rowcount == 1

    @abc.abstractmethod
    def write_refreshes(self, refreshes):
        """Store ``(id, refresh time)`` pairs of heartbeats that are up
        (refreshes the engine kept in memory until now); a heartbeat no
        longer up keeps its row as it is.

        :returns: the ids, in id order, whose refresh was not written because
            the heartbeat is no longer up: late, down, paused or deleted by a
            change the caller had not seen (another instance's; or, in one
            service, a request that got in between the chunks of a storm).
            The engine applies them as refreshes of heartbeats not up
            (resolving an alarm, or counting the event of a paused one).
        """

    def write_refreshes_now(self, refreshes):
        """:meth:`write_refreshes`, for a caller that answers once they are
        written; where several instances share the database, the refreshes
        of concurrent callers are written together (one transaction: group
        commit). :returns: those of the caller's ids not written, in id order."""
        return self.write_refreshes(refreshes)

    def due(self, now, limit=None):
        """The rows of the heartbeats whose next transition (going late or
        down) is at or before ``now``, earliest first; at most ``limit``."""
        return self._query(f"{_SELECT_HEARTBEAT} WHERE status NOT IN ('down', 'paused') AND due <= ? "
                           f"ORDER BY due LIMIT ?{self._for_update(skip_locked=True)}",
                           (now, self._NO_LIMIT if limit is None else limit))

    def next_due(self):
        """The earliest next transition of a heartbeat that is neither down
        nor paused, or None."""
        return self._query("SELECT MIN(due) FROM heartbeat WHERE status NOT IN ('down', 'paused')")[0][0]

    def set_states(self, states):
        """Write ``(id, status, refreshed, alarm_since)`` tuples."""
        self._executemany("UPDATE heartbeat SET status = ?, refreshed = ?, alarm_since = ? WHERE id = ?",
                          [(status, refreshed, alarm_since, heartbeat_id)
                           for heartbeat_id, status, refreshed, alarm_since in states])

    def set_alarm_outputs(self, items):
        """Write ``(heartbeat id, member key or '', alarm_since, output)``
        tuples: the output of an alarm just opened with its own (see
        :meth:`alarm_outputs`)."""
        self._executemany("INSERT INTO alarm_output (heartbeat_id, member, opened, output) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (heartbeat_id, member) DO UPDATE SET opened = excluded.opened, "
                          "output = excluded.output", items)

    def alarm_outputs(self):
        """``{(heartbeat id, member key or ''): (opened, output)}``: the
        outputs alarms were opened with in place of their heartbeat's; one
        counts while ``opened`` is its heartbeat's (or member's)
        ``alarm_since``. Few rows: failures reported by jobs."""
        return {(row[0], row[1]): (row[2], row[3])
                for row in self._query("SELECT heartbeat_id, member, opened, output FROM alarm_output")}

    def set_state(self, heartbeat_id, status, refreshed, last_event, alarm_since):
        """Set one heartbeat's whole state."""
        self._execute("UPDATE heartbeat SET status = ?, refreshed = ?, last_event = ?, alarm_since = ? WHERE id = ?",
                      (status, refreshed, last_event, alarm_since, heartbeat_id))

    def postpone(self, after, seconds):
        """Move later by ``seconds`` every transition still ahead at ``after``
        (of heartbeats and members neither down nor paused); return how many
        moved."""
        with self.atomic():
            moved = self._execute(
                "UPDATE heartbeat SET refreshed = refreshed + ? WHERE status NOT IN ('down', 'paused') AND due > ?",
                (seconds, after),
            ).rowcount
            return moved + self._execute(
                "UPDATE member SET refreshed = refreshed + ? WHERE due > ? AND status IN ('pending', 'up', 'late')",
                (seconds, after),
            ).rowcount


class _MemberStatements:
    """The members of grouped heartbeats, named by (heartbeat id, member
    key: see :func:`member_key`): created by events, refreshed, falling due,
    paused, retired, counted and paged; a grouped heartbeat's status from
    theirs."""

    def insert_members(self, rows):
        """Insert members: dicts with every column of the member table but
        ``alarm_since`` (None)."""
        columns = [c for c in _MEMBER_COLUMNS if c != "alarm_since"]
        self._executemany(f"INSERT INTO member ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
                          rows)

    def members_by_key(self, heartbeat_id, keys):
        """The rows of those of ``keys`` that are members of the heartbeat,
        ``{key: row}``."""
        found = {}
        for start in range(0, len(keys), _ID_CHUNK):
            chunk = keys[start:start + _ID_CHUNK]
            found.update((row["member"], row) for row in self._query(
                f"{_SELECT_MEMBER} WHERE heartbeat_id = ? AND member IN ({', '.join('?' * len(chunk))})",
                [heartbeat_id, *chunk]))
        return found

    def each_member(self, batch=5000):
        """``(heartbeat id, member key, status, refreshed)`` of every member,
        ``batch`` rows per query (see :meth:`each_heartbeat`)."""
        after = ("", "")
        while True:
            rows = [tuple(row) for row in self._query(
                "SELECT heartbeat_id, member, status, refreshed FROM member WHERE (heartbeat_id, member) > (?, ?) "
                "ORDER BY heartbeat_id, member LIMIT ?", (*after, batch))]
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1][:2]

    def refresh_member_if_up(self, heartbeat_id, key, now):
        """Refresh one member that is up, in a single statement; True when
        it was (ingestion's hot path, as :meth:`refresh_if_not_down`)."""
        return self._execute(f"UPDATE member SET {self._LATER_REFRESH} WHERE heartbeat_id = ? AND member = ? "
                             "AND status = 'up'", (now, now, now, heartbeat_id, key)).rowcount == 1

    def refresh_members(self, items, now):
        """Members ``(heartbeat id, key)`` had a matching event at ``now``:
        each goes ``up`` (a paused one is handled by :meth:`touch_members`)."""
        self._executemany(f"UPDATE member SET status = 'up', {self._LATER_REFRESH}, alarm_since = NULL "
                          "WHERE heartbeat_id = ? AND member = ? AND status <> 'paused'",
                          [(now, now, now, heartbeat_id, key) for heartbeat_id, key in items])

    def touch_members(self, items, now):
        """Paused members ``(heartbeat id, key)`` had a matching event at ``now``: only ``last_event`` moves."""
        self._executemany(f"UPDATE member SET {self._LATER_EVENT} WHERE heartbeat_id = ? AND member = ?",
                          [(now, now, heartbeat_id, key) for heartbeat_id, key in items])

    def write_member_refreshes(self, refreshes):
        """Store ``(heartbeat id, key, refresh time)`` of members that are up
        (refreshes the engine kept in memory until now)."""
        self._executemany(f"UPDATE member SET {self._LATER_REFRESH} WHERE heartbeat_id = ? AND member = ? "
                          "AND status = 'up'", [(t, t, t, heartbeat_id, key) for heartbeat_id, key, t in refreshes])

    def due_members(self, now, limit=None):
        """The members (with their heartbeat's id, name, output and pattern)
        whose next transition (late, down, retired) is at or before ``now``,
        earliest first; at most ``limit``."""
        return self._query(f"{_SELECT_MEMBER_AND_HEARTBEAT} WHERE m.due IS NOT NULL AND m.due <= ? "
                           f"ORDER BY m.due LIMIT ?{self._for_update(skip_locked=True, of='m')}",
                           (now, self._NO_LIMIT if limit is None else limit))

    def next_member_due(self):
        """The earliest next transition of a member, or None."""
        return self._query("SELECT MIN(due) FROM member WHERE due IS NOT NULL")[0][0]

    def set_member_states(self, states):
        """Write ``(heartbeat id, key, status, refreshed, alarm_since)`` tuples."""
        self._executemany("UPDATE member SET status = ?, refreshed = ?, alarm_since = ? "
                          "WHERE heartbeat_id = ? AND member = ?",
                          [(status, refreshed, alarm_since, heartbeat_id, key)
                           for heartbeat_id, key, status, refreshed, alarm_since in states])

    def delete_members(self, items):
        """Delete members ``(heartbeat id, key)``."""
        self._executemany("DELETE FROM member WHERE heartbeat_id = ? AND member = ?", items)

    def delete_all_members(self, heartbeat_id):
        """Delete every member of a heartbeat; :returns: the rows, as they
        were, of those that were late or down."""
        with self.atomic():
            alarmed = self._query(f"{_SELECT_MEMBER} WHERE heartbeat_id = ? AND status IN ('late', 'down') "
                                  "ORDER BY member", (heartbeat_id,))
            self._execute("DELETE FROM member WHERE heartbeat_id = ?", (heartbeat_id,))
        return alarmed

    def members_with_status(self, heartbeat_id, status):
        """The rows of a heartbeat's members in ``status``, by key."""
        return self._query(f"{_SELECT_MEMBER} WHERE heartbeat_id = ? AND status = ? ORDER BY member",
                           (heartbeat_id, status))

    def set_member_timing(self, heartbeat_id, interval_seconds, late_seconds, retire_seconds):
        """Copy a heartbeat's interval, late and retire seconds to its
        members (an expected member is never retired)."""
        self._execute("UPDATE member SET interval_seconds = ?, late_seconds = ?, "
                      "retire_seconds = CASE WHEN expected <> 0 THEN NULL ELSE CAST(? AS INTEGER) END WHERE heartbeat_id = ?",
                      (interval_seconds, late_seconds, retire_seconds, heartbeat_id))

    def set_expected(self, heartbeat_id, keys, expected, retire_seconds):
        """Mark members ``keys`` expected (never retired), or no longer
        (``expected`` false: retired after ``retire_seconds`` down)."""
        self._executemany("UPDATE member SET expected = ?, retire_seconds = ? WHERE heartbeat_id = ? AND member = ?",
                          [(int(expected), None if expected else retire_seconds, heartbeat_id, key) for key in keys])

    def pause_members(self, heartbeat_id):
        """Pause every member of a heartbeat; :returns: the rows, as they
        were, of those that were late or down."""
        with self.atomic():
            alarmed = self.members_with_status(heartbeat_id, LATE) + self.members_with_status(heartbeat_id, DOWN)
            self._execute("UPDATE member SET status = 'paused', alarm_since = NULL "
                          "WHERE heartbeat_id = ? AND status <> 'paused'", (heartbeat_id,))
        return sorted(alarmed, key=lambda row: row["member"])

    def resume_members(self, heartbeat_id, now):
        """Every member of a heartbeat starts afresh: pending, refreshed now."""
        self._execute("UPDATE member SET status = 'pending', refreshed = ?, alarm_since = NULL "
                      "WHERE heartbeat_id = ?", (now, heartbeat_id))

    def update_group_status(self, heartbeat_ids):
        """Set each grouped heartbeat's status to the worst of its members'
        (``down`` > ``late`` > ``pending`` > ``up``; ``pending`` with no
        member), unless it is paused: one index probe per status.

        :returns: ``[(id, status)]`` of those whose status changed."""
        changed = []
        for heartbeat_id in dict.fromkeys(heartbeat_ids):
            worst = PENDING
            for status in _WORST_FIRST:
                if self._query("SELECT 1 FROM member WHERE heartbeat_id = ? AND status = ? LIMIT 1",
                               (heartbeat_id, status)):
                    worst = status
                    break
            if self._execute("UPDATE heartbeat SET status = ? WHERE id = ? AND status NOT IN ('paused', ?)",
                             (worst, heartbeat_id, worst)).rowcount == 1:
                changed.append((heartbeat_id, worst))
        return changed

    def member_counts(self, heartbeat_ids=None):
        """``{heartbeat id: {status: members}}`` of those heartbeats (all
        that have members, when None); from the status index alone."""
        if heartbeat_ids is None:
            rows = self._query("SELECT heartbeat_id, status, COUNT(*) FROM member GROUP BY heartbeat_id, status")
        else:
            rows = []
            for start in range(0, len(heartbeat_ids), _ID_CHUNK):
                chunk = heartbeat_ids[start:start + _ID_CHUNK]
                rows += self._query(f"SELECT heartbeat_id, status, COUNT(*) FROM member WHERE heartbeat_id IN "
                                    f"({', '.join('?' * len(chunk))}) GROUP BY heartbeat_id, status", chunk)
        counts = {}
        for heartbeat_id, status, count in rows:
            counts.setdefault(heartbeat_id, {})[status] = count
        return counts

    def member_summaries(self, heartbeat_ids=None):
        """``{heartbeat id: (last event, earliest deadline of a member
        pending, up or late, earliest alarm)}`` over the members of those
        heartbeats (every grouped one, when None; one with no member is not
        in it): a scan of their members."""
        summary = ("SELECT heartbeat_id, MAX(last_event), "
                   "MIN(CASE WHEN status IN ('pending', 'up', 'late') THEN deadline END), MIN(alarm_since) FROM member")
        if heartbeat_ids is None:
            rows = self._query(f"{summary} GROUP BY heartbeat_id")
        else:
            rows = []
            for start in range(0, len(heartbeat_ids), _ID_CHUNK):
                chunk = heartbeat_ids[start:start + _ID_CHUNK]
                rows += self._query(f"{summary} WHERE heartbeat_id IN ({', '.join('?' * len(chunk))}) "
                                    "GROUP BY heartbeat_id", chunk)
        return {row[0]: tuple(row[1:]) for row in rows}

    def members_page(self, heartbeat_id, statuses, after, limit):
        """A heartbeat's members by key after ``after`` (a key, or None),
        with one of ``statuses`` (any, when empty); at most ``limit``."""
        where, params = ["heartbeat_id = ?"], [heartbeat_id]
        if after is not None:
            where.append("member > ?")
            params.append(after)
        if len(statuses) == 1:
            where.append("status = ?")  # the status index, in key order
        elif statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params += statuses
        return self._query(f"{_SELECT_MEMBER} WHERE {' AND '.join(where)} ORDER BY member LIMIT ?", params + [limit])

    def member_alarms(self, limit=-1):
        """The members that are late or down (with their heartbeat's id,
        name, output and pattern), oldest alarm first (at most ``limit``;
        all when negative)."""
        return self._query(f"{_SELECT_MEMBER_AND_HEARTBEAT} WHERE m.status IN ('late', 'down') "
                           "ORDER BY m.alarm_since, m.rowid LIMIT ?", (self._NO_LIMIT if limit < 0 else limit,))


class _MaintenanceStatements:
    """Maintenance windows: their documents, and what a window does to the
    heartbeats its pattern selects (which they are; its end rule)."""

    def insert_maintenance(self, row):
        """Insert a maintenance window (a dict with every column)."""
        with self.atomic():
            self._execute(f"INSERT INTO maintenance ({', '.join(_MAINTENANCE_COLUMNS)}) "
                          f"VALUES ({', '.join(':' + c for c in _MAINTENANCE_COLUMNS)})", row)
            self._changed("maintenance", row["id"])

    def maintenance(self, maintenance_id):
        """The window with that id; :raises NotFound:."""
        rows = self._query(f"{_SELECT_MAINTENANCE} WHERE id = ?{self._for_update()}", (maintenance_id,))
        if not rows:
            raise NotFound(maintenance_id)
        return rows[0]

    def maintenances(self):
        """Every window, newest first."""
        return self._query(f"{_SELECT_MAINTENANCE} ORDER BY created DESC, rowid DESC")

    def update_maintenance(self, maintenance_id, row):
        """Replace a window's fields but ``id`` and ``created``; return ``(old, new)``; :raises NotFound:."""
        columns = [c for c in _MAINTENANCE_COLUMNS if c not in ("id", "created")]
        with self.atomic():
            old = self.maintenance(maintenance_id)
            self._execute(f"UPDATE maintenance SET {', '.join(f'{c} = :{c}' for c in columns)} WHERE id = :id",
                          {**{c: row[c] for c in columns}, "id": maintenance_id})
            self._changed("maintenance", maintenance_id)
            return old, self.maintenance(maintenance_id)

    def delete_maintenance(self, maintenance_id):
        """Delete a window; return its row as it was; :raises NotFound:."""
        with self.atomic():
            row = self.maintenance(maintenance_id)
            self._execute("DELETE FROM maintenance WHERE id = ?", (maintenance_id,))
            self._changed("maintenance", maintenance_id)
        return row

    def selected(self, pattern, among=None):
        """``(id, status, pattern)`` of the heartbeats a maintenance window
        selecting ``pattern`` (a dict) covers: a scan (json_each per row, in
        SQLite's C), once per window boundary, never per tick; with
        ``among`` (ids: those the read model says it selects), only those
        are looked up, one by one, in a single statement."""
        contains = [self._CONTAINS] * len(pattern) or ["TRUE"]
        params = [item for pair in sorted(pattern.items()) for item in pair]
        if among is not None:
            if not among:
                return []
            contains.append(f"id IN ({self._IN_JSON_LIST})")
            params.append(dump_json(sorted(among)).decode())
        return [(row[0], row[1], row[2]) for row in self._query(
            f"SELECT id, status, pattern FROM heartbeat WHERE {' AND '.join(contains)} ORDER BY id", params)]

    def end_maintenance(self, pattern, end, pushed_to=None, covered=None):
        """A maintenance window selecting ``pattern`` (a dict) ended at
        ``end``: every selected heartbeat neither down nor paused gets
        ``refreshed = max(refreshed, end)`` (its deadline is then at least
        end + interval); with ``pushed_to`` (a window ended early), also those
        whose refresh the window had pushed to that time get ``end``.

        A scan of the table (json_each per row, in SQLite's C): once per
        window end, never per tick.

        The members of grouped heartbeats it selects get the same.

        :param covered: None, or a list that gets ``(id, status, pattern)``
            of every heartbeat the window selects (for the history).
        :returns: ``(id, status)`` of the (not grouped) heartbeats changed.
        """
        selects, selects_params = [], []
        for key, value in sorted(pattern.items()):
            selects.append(self._CONTAINS)
            selects_params += [key, value]
        with self.atomic():
            every = self._query(f"SELECT id, status, group_by IS NOT NULL, refreshed, pattern FROM heartbeat "
                                f"WHERE {' AND '.join(selects) or 'TRUE'} ORDER BY id{self._for_update()}",
                                selects_params)
            if covered is not None:
                covered += [(row[0], row[1], row[4]) for row in every]
            selected = [row for row in every if (row[1] != "paused" if row[2] else
                                                 row[1] not in ("down", "paused")
                                                 and (row[3] < end or row[3] == pushed_to))]
            rows = [(row[0], row[1]) for row in selected if not row[2]]
            self._executemany("UPDATE heartbeat SET refreshed = ? WHERE id = ?", [(end, row[0]) for row in rows])
            # the members of grouped ones (refreshes the engine holds for
            # them stay lower than these: at worst written sooner)
            self._executemany("UPDATE member SET refreshed = ? WHERE heartbeat_id = ? AND status IN "
                              "('pending', 'up', 'late') AND (refreshed < ? OR refreshed = ?)",
                              [(end, row[0], end, pushed_to) for row in selected if row[2]])
        return rows


class _HistoryStatements:
    """The history of state changes: appended with each change, read newest
    first or from a time on (availability), pruned after ``--history-days``."""

    # A heartbeat's own changes (what its availability is computed from):
    # members' changes, recorded under their heartbeat, have ``member`` set.
    _OWN = "member IS NULL"

    def add_history(self, changes):
        """Append state changes: ``(heartbeat id, at, status, reason, extra)``
        tuples, ``extra`` None or a dict (stored as JSON); a ``"member"`` in
        it (the member's pairs) goes to the ``member`` column (its key), which
        marks a member's change."""
        rows = []
        for heartbeat_id, at, status, reason, extra in changes:
            member = None
            if extra and "member" in extra:
                extra = dict(extra)
                member = member_key(extra.pop("member"))
            rows.append((heartbeat_id, at, status, reason, json.dumps(extra, ensure_ascii=False) if extra else None,
                         member))
        self._executemany(
            "INSERT INTO history (heartbeat_id, at, status, reason, extra, member) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def claim_boundary(self, maintenance_id, at, started):
        """In the transaction that records a window's start (``started``) or
        end at ``at`` in the history: True when this call claims it, False
        when it was recorded already (by another instance sharing the
        database: its insert won)."""
        return self._execute("INSERT INTO boundary (maintenance_id, at, kind) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                             (maintenance_id, at, "start" if started else "end")).rowcount == 1

    def history(self, heartbeat_id, since, until, limit):
        """A heartbeat's changes (its own and its members') with ``since <=
        at <= until`` (None: no bound), newest first, at most ``limit``: rows
        of ``at, status, reason, extra`` (JSON text or None), ``member`` (key
        or None)."""
        where, params = ["heartbeat_id = ?"], [heartbeat_id]
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at <= ?")
            params.append(until)
        return self._query(f"SELECT at, status, reason, extra, member FROM history WHERE {' AND '.join(where)} "
                           "ORDER BY at DESC, seq DESC LIMIT ?", (*params, limit))

    def changes_since(self, heartbeat_id, start):
        """``(at, status)`` of a heartbeat's own changes from the last one
        before ``start`` (its state at ``start``) on, oldest first."""
        return [(row[0], row[1]) for row in self._query(
            f"SELECT at, status FROM history WHERE heartbeat_id = :id AND {self._OWN} AND at >= "
            f"COALESCE((SELECT MAX(at) FROM history WHERE heartbeat_id = :id AND {self._OWN} AND at < :start), :start) "
            "ORDER BY at, seq", {"id": heartbeat_id, "start": start})]

    def changes_since_of(self, heartbeat_ids, start):
        """:meth:`changes_since` for each of ``heartbeat_ids`` (a page of
        them): ``{id: [(at, status), ...]}``, one query per
        :data:`_ID_CHUNK` ids."""
        changes = {}
        for first in range(0, len(heartbeat_ids), _ID_CHUNK):
            chunk = list(heartbeat_ids[first:first + _ID_CHUNK])
            for row in self._query(
                "SELECT h.heartbeat_id, h.at, h.status FROM history AS h "
                f"WHERE h.heartbeat_id IN ({', '.join('?' * len(chunk))}) AND h.{self._OWN} AND h.at >= "
                f"COALESCE((SELECT MAX(at) FROM history WHERE heartbeat_id = h.heartbeat_id AND {self._OWN} "
                "AND at < ?), ?) ORDER BY h.heartbeat_id, h.at, h.seq", (*chunk, start, start)):
                changes.setdefault(row[0], []).append((row[1], row[2]))
        return changes

    def all_changes_since(self, start):
        """:meth:`changes_since` for every heartbeat: ``{id: [(at, status), ...]}``
        (one index probe per heartbeat, plus the changes since ``start``)."""
        changes = {}
        for row in self._query(
            "SELECT h.heartbeat_id, h.at, h.status FROM heartbeat AS b JOIN history AS h "
            f"ON h.heartbeat_id = b.id AND h.{self._OWN} AND h.at >= "
            f"COALESCE((SELECT MAX(at) FROM history WHERE heartbeat_id = b.id AND {self._OWN} AND at < :start), "
            ":start) ORDER BY h.heartbeat_id, h.at, h.seq", {"start": start}):
            changes.setdefault(row[0], []).append((row[1], row[2]))
        return changes

    def prune_history(self, cutoff, after, batch):
        """Delete changes older than ``cutoff``, but each heartbeat's last own
        one before it (its state at ``cutoff``; members' changes go
        whole), examining at most ``batch`` rows from the cursor ``after`` =
        ``(at, seq)`` on; the deletion is one transaction.

        :returns: ``(rows deleted, cursor to continue from, or None when
            every row older than ``cutoff`` was examined)``.
        """
        # the rows are read outside a transaction: history rows are only
        # appended (a later one makes a row more doomed, never less) and
        # deleted here; a pass that deletes nothing writes nothing
        rows = self._query(
            "SELECT h.seq, h.at, CASE WHEN h.member IS NOT NULL OR EXISTS (SELECT 1 FROM history AS l "
            "WHERE l.heartbeat_id = h.heartbeat_id AND l.member IS NULL AND l.at < :cutoff "
            "AND (l.at, l.seq) > (h.at, h.seq)) THEN 1 ELSE 0 END FROM history AS h "
            "WHERE h.at < :cutoff AND (h.at, h.seq) > (:at, :seq) ORDER BY h.at, h.seq LIMIT :batch",
            {"cutoff": cutoff, "at": after[0], "seq": after[1], "batch": batch})
        doomed = [row[0] for row in rows if row[2]]
        if doomed:
            with self.atomic():
                for start in range(0, len(doomed), _ID_CHUNK):
                    chunk = doomed[start:start + _ID_CHUNK]
                    self._execute(f"DELETE FROM history WHERE seq IN ({', '.join('?' * len(chunk))})", chunk)
                self._execute("DELETE FROM boundary WHERE at < ?", (cutoff,))  # their records are going
        cursor = (rows[-1][1], rows[-1][0]) if len(rows) == batch else None
        return len(doomed), cursor


class _OutboxStatements:
    """The outbox, the durable queue of every channel (``channel`` names
    it): alarm events and notices waiting for delivery, oldest first per
    channel; those a target refused for good, set aside; each channel's
    delivery health. And the service-wide values of ``meta``."""

    def enqueue(self, events, channel=FORWARD_CHANNEL_ID):
        """Append Canopsis events (dicts) to a channel's queue, in order."""
        self.enqueue_notices([(channel, event, None, event.get("timestamp")) for event in events])

    def enqueue_notices(self, rows):
        """Append ``(channel id, Canopsis event, notice or None, enqueued at)``
        rows to the queues, in order."""
        self._executemany("INSERT INTO outbox (channel, event, notice, enqueued_at) VALUES (?, ?, ?, ?)",
                          [(channel, json.dumps(event, ensure_ascii=False),
                            None if notice is None else json.dumps(notice, ensure_ascii=False), at)
                           for channel, event, notice, at in rows])

    def deliveries(self, channel, limit):
        """The oldest ``limit`` rows waiting in a channel's queue (none set
        aside), as ``(seq, event JSON text, notice JSON text or None)``."""
        return [tuple(row) for row in self._query(
            "SELECT seq, event, notice FROM outbox WHERE channel = ? AND refused_at IS NULL ORDER BY seq LIMIT ?",
            (channel, limit))]

    def delivered(self, channel, last_seq):
        """Forget a channel's waiting rows up to ``last_seq`` (delivered)."""
        self._execute("DELETE FROM outbox WHERE channel = ? AND seq <= ? AND refused_at IS NULL", (channel, last_seq))

    def set_aside(self, channel, seq, at, refusal):
        """The target refused row ``seq`` for good: keep it, no longer sent."""
        self._execute("UPDATE outbox SET refused_at = ?, refusal = ? WHERE channel = ? AND seq = ?",
                      (at, refusal, channel, seq))

    def requeue(self, channel):
        """Put the rows set aside back in a channel's queue (its settings
        changed: it may take them now); return how many."""
        return self._execute("UPDATE outbox SET refused_at = NULL, refusal = NULL WHERE channel = ? "
                             "AND refused_at IS NOT NULL", (channel,)).rowcount

    def queues(self):
        """``{channel: (waiting, oldest waiting's enqueued time or None,
        set aside, last refusal or None)}`` of every queue with a row."""
        found = {}
        for row in self._query("SELECT channel, SUM(CASE WHEN refused_at IS NULL THEN 1 ELSE 0 END), "
                               "MIN(CASE WHEN refused_at IS NULL THEN enqueued_at END), "
                               "SUM(CASE WHEN refused_at IS NULL THEN 0 ELSE 1 END), MAX(refused_at) "
                               "FROM outbox GROUP BY channel"):
            found[row[0]] = (int(row[1]), row[2], int(row[3]), row[4])
        if any(value[2] for value in found.values()):
            for row in self._query("SELECT channel, refusal FROM outbox o WHERE refused_at = "
                                   "(SELECT MAX(refused_at) FROM outbox WHERE channel = o.channel)"):
                waiting, oldest, aside, _ = found[row[0]]
                found[row[0]] = (waiting, oldest, aside, row[1])
        return found

    def channel_health(self):
        """``{channel: (delivered at, failing since, last error, error at)}``."""
        return {row[0]: tuple(row)[1:] for row in self._query(
            "SELECT channel, delivered_at, failing_since, last_error, error_at FROM channel_health")}

    def record_delivery(self, channel, at):
        """A channel delivered at ``at``: it fails no more."""
        self._execute("INSERT INTO channel_health (channel, delivered_at) VALUES (?, ?) ON CONFLICT (channel) "
                      "DO UPDATE SET delivered_at = excluded.delivered_at, failing_since = NULL, last_error = NULL",
                      (channel, at))

    def record_failure(self, channel, at, error):
        """A channel's attempt failed at ``at``, for ``error``."""
        self._execute("INSERT INTO channel_health (channel, failing_since, last_error, error_at) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (channel) DO UPDATE SET failing_since = COALESCE(channel_health.failing_since, "
                      "excluded.failing_since), last_error = excluded.last_error, error_at = excluded.error_at",
                      (channel, at, error, at))

    def outbox_batch(self, limit, channel=FORWARD_CHANNEL_ID):
        """The oldest ``limit`` events waiting for a channel (the forward
        channel's by default) as ``(seq, event JSON text)``."""
        return [(seq, event) for seq, event, _ in self.deliveries(channel, limit)]

    def outbox_ack(self, last_seq, channel=FORWARD_CHANNEL_ID):
        """Forget the waiting events of a channel up to ``last_seq`` (delivered)."""
        self.delivered(channel, last_seq)

    def outbox_depth(self):
        """How many events wait for delivery, every channel's (also proves
        the database answers); those set aside are not waiting."""
        return self._query("SELECT COUNT(*) FROM outbox WHERE refused_at IS NULL")[0][0]

    def meta(self, key):
        """A service-wide value (a number), or None."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key, value):
        self._execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                      (key, value))

    def delete_meta(self, key):
        self._execute("DELETE FROM meta WHERE key = ?", (key,))


_CHANNEL_COLUMNS = ("id", "name", "kind", "url", "is_default", "repeat_every", "repeat_seconds", "headers",
                    "template", "created", "updated")
_SELECT_CHANNEL = "SELECT " + ", ".join(_CHANNEL_COLUMNS) + " FROM channel"
_FOLLOW_KEY = "heartbeat_id = ? AND member = ?"


class _ChannelStatements:
    """Notification channels (their documents), and what follows an open
    alarm: its acknowledgement and escalation (``alarm_follow``), its
    reminders and escalation due (``followup``). An alarm is named by
    ``(heartbeat id, member key)``, ``""`` for the heartbeat's own."""

    def channels(self):
        """Every channel row, oldest first."""
        return self._query(f"{_SELECT_CHANNEL} ORDER BY created, id")

    def channel(self, channel_id):
        """:raises NotFound:."""
        rows = self._query(f"{_SELECT_CHANNEL} WHERE id = ?", (channel_id,))
        if not rows:
            raise NotFound(channel_id)
        return rows[0]

    def insert_channel(self, row):
        """Insert a channel (a dict with every column)."""
        with self.atomic():
            self._execute(f"INSERT INTO channel ({', '.join(_CHANNEL_COLUMNS)}) "
                          f"VALUES ({', '.join(':' + c for c in _CHANNEL_COLUMNS)})", row)
            self._changed("channel", row["id"])

    def update_channel(self, channel_id, row):
        """Replace a channel's columns (all but ``id`` and ``created``);
        :raises NotFound:."""
        columns = [c for c in _CHANNEL_COLUMNS if c not in ("id", "created")]
        with self.atomic():
            self.channel(channel_id)
            self._execute(f"UPDATE channel SET {', '.join(f'{c} = :{c}' for c in columns)} WHERE id = :id",
                          {**{c: row[c] for c in columns}, "id": channel_id})
            self._changed("channel", channel_id)

    def delete_channel(self, channel_id):
        """Delete a channel, its queue, its health and its reminders;
        :raises NotFound:."""
        with self.atomic():
            self.channel(channel_id)
            self._execute("DELETE FROM channel WHERE id = ?", (channel_id,))
            for table in ("outbox", "channel_health", "followup"):
                self._execute(f"DELETE FROM {table} WHERE channel = ?", (channel_id,))
            self._changed("channel", channel_id)

    def heartbeats_naming(self, channel_id):
        """The ids of the heartbeats whose ``channels`` or ``escalate_to``
        name the channel."""
        quoted = f'%"{channel_id}"%'
        return [row[0] for row in self._query(
            "SELECT id FROM heartbeat WHERE channels LIKE ? OR escalate_to LIKE ? ORDER BY id", (quoted, quoted))]

    def unrouted(self):
        """How many heartbeats have no ``channels`` field (they use the default channels)."""
        return self._query("SELECT COUNT(*) FROM heartbeat WHERE channels IS NULL")[0][0]

    def routes(self, heartbeat_ids):
        """``{id: (channels JSON or None, escalate_seconds, escalate_to JSON
        or None)}`` of those heartbeats (deleted ones are left out)."""
        found = {}
        for start in range(0, len(heartbeat_ids), _ID_CHUNK):
            chunk = heartbeat_ids[start:start + _ID_CHUNK]
            for row in self._query("SELECT id, channels, escalate_seconds, escalate_to FROM heartbeat "
                                   f"WHERE id IN ({', '.join('?' * len(chunk))})", chunk):
                found[row[0]] = (row[1], row[2], row[3])
        return found

    def follows(self, keys):
        """``{(heartbeat id, member): (ack_by, ack_at, ack_comment,
        escalated)}`` of those alarms that have a row."""
        found = {}
        keys = list(keys)
        for start in range(0, len(keys), _ID_CHUNK):
            chunk = keys[start:start + _ID_CHUNK]
            ids = sorted({heartbeat_id for heartbeat_id, _ in chunk})
            wanted = set(chunk)
            for row in self._query("SELECT heartbeat_id, member, ack_by, ack_at, ack_comment, escalated "
                                   f"FROM alarm_follow WHERE heartbeat_id IN ({', '.join('?' * len(ids))})", ids):
                if (row[0], row[1]) in wanted:
                    found[(row[0], row[1])] = (row[2], row[3], row[4], bool(row[5]))
        return found

    def acks_of(self, heartbeat_id):
        """``{member: (by, at, comment)}`` of a heartbeat's acknowledged alarms."""
        return {row[0]: (row[1], row[2], row[3]) for row in self._query(
            "SELECT member, ack_by, ack_at, ack_comment FROM alarm_follow WHERE heartbeat_id = ? "
            "AND ack_at IS NOT NULL", (heartbeat_id,))}

    def set_acks(self, rows):
        """Acknowledge alarms: ``(heartbeat id, member, by, at, comment)``."""
        self._executemany("INSERT INTO alarm_follow (heartbeat_id, member, ack_by, ack_at, ack_comment) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (heartbeat_id, member) DO UPDATE SET "
                          "ack_by = excluded.ack_by, ack_at = excluded.ack_at, ack_comment = excluded.ack_comment",
                          rows)

    def set_escalated(self, keys):
        """Those alarms ``(heartbeat id, member)`` were escalated."""
        self._executemany("INSERT INTO alarm_follow (heartbeat_id, member, escalated) VALUES (?, ?, 1) "
                          "ON CONFLICT (heartbeat_id, member) DO UPDATE SET escalated = 1", list(keys))

    def forget_alarms(self, keys):
        """Those alarms ``(heartbeat id, member)`` are resolved: their
        acknowledgement, escalation and follow-ups go."""
        keys = list(keys)
        self._executemany(f"DELETE FROM alarm_follow WHERE {_FOLLOW_KEY}", keys)
        self._executemany(f"DELETE FROM followup WHERE {_FOLLOW_KEY}", keys)

    def forget_heartbeat_alarms(self, heartbeat_id):
        """A heartbeat is deleted: every follow-up of it and its members goes."""
        for table in ("alarm_follow", "followup"):
            self._execute(f"DELETE FROM {table} WHERE heartbeat_id = ?", (heartbeat_id,))

    def schedule(self, rows):
        """Follow-ups due: ``(heartbeat id, member, channel or "" for the
        escalation, due)``; one already there moves to the new time."""
        self._executemany("INSERT INTO followup (heartbeat_id, member, channel, due) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (heartbeat_id, member, channel) DO UPDATE SET due = excluded.due", rows)

    def unschedule(self, rows):
        """Forget follow-ups ``(heartbeat id, member, channel)``."""
        self._executemany(f"DELETE FROM followup WHERE {_FOLLOW_KEY} AND channel = ?", rows)

    def unschedule_alarms(self, keys):
        """Forget every follow-up of those alarms (acknowledged)."""
        self._executemany(f"DELETE FROM followup WHERE {_FOLLOW_KEY}", list(keys))

    def due_followups(self, now, limit):
        """The follow-ups due by ``now``, earliest first, at most ``limit``:
        ``(heartbeat id, member, channel, due)``."""
        return [tuple(row) for row in self._query(
            "SELECT heartbeat_id, member, channel, due FROM followup WHERE due <= ? ORDER BY due LIMIT ?"
            f"{self._for_update(skip_locked=True)}", (now, limit))]

    def next_followup(self):
        """When the earliest follow-up is due, or None."""
        return self._query("SELECT MIN(due) FROM followup")[0][0]

    def open_alarms_of(self, heartbeat_id):
        """The member keys of a grouped heartbeat's open alarms, and their
        status: ``[(key, status)]``."""
        return [(row[0], row[1]) for row in self._query(
            "SELECT member, status FROM member WHERE heartbeat_id = ? AND status IN ('late', 'down') ORDER BY member",
            (heartbeat_id,))]


class _InstanceStatements(abc.ABC):
    """What the instances of a service sharing its database tell each other:
    when the service last ran (restart semantics), which documents changed,
    who delivers the outbox. One service owns a SQLite database, so there
    these are the service's own records and trivial answers; several
    instances may share a PostgreSQL one."""

    @abc.abstractmethod
    def last_alive(self, now):
        """When the service was last known to run, before this start, and
        whether it then stopped cleanly: ``(Unix seconds or None, bool)``;
        ``(now, True)`` when it runs still (another instance runs)."""

    @abc.abstractmethod
    def blind_since(self, failed_at):
        """In a transaction: this instance's writes failed from ``failed_at``
        on. Since when the service was blind: ``failed_at``; or None when
        another instance recorded that it was alive after it (that one was
        not blind: it recorded events meanwhile, or counted the outage
        already). Instances that recover together queue here, so an outage
        is counted once."""

    @abc.abstractmethod
    def record_start(self, now):
        """This instance runs, from ``now`` (a stop from now on is unclean
        until :meth:`record_stop`)."""

    @abc.abstractmethod
    def record_alive(self, now):
        """This instance is running at ``now``."""

    @abc.abstractmethod
    def record_stop(self, now):
        """This instance stops cleanly at ``now``."""

    @abc.abstractmethod
    def _changed(self, kind, object_id):
        """A heartbeat's or a window's document changed (``kind``:
        ``heartbeat`` or ``maintenance``), in the current transaction: the
        other instances reload it from :meth:`changes`."""

    @abc.abstractmethod
    def changes(self, after):
        """The documents other instances changed since change ``after``:
        ``(last change, [(kind, id), ...])``, or ``(last, None)`` when
        changes since ``after`` were forgotten (reload everything)."""

    @abc.abstractmethod
    def last_change(self):
        """The number of the last change recorded (see :meth:`changes`)."""

    @abc.abstractmethod
    def outbox_lease(self, channel=FORWARD_CHANNEL_ID):
        """A context manager yielding True when this instance may deliver
        the channel's queue now (one at a time, so that delivery stays in
        order; each channel on its own)."""


class Store(_Connections, _HeartbeatStatements, _StateStatements, _MemberStatements, _MaintenanceStatements,
            _HistoryStatements, _OutboxStatements, _ChannelStatements, _InstanceStatements):
    """The database: the only code in this module that speaks SQL. Open one
    with :func:`open_store`: a :class:`SqliteStore` or a
    :class:`PostgresStore`, siblings built on this class.

    The statements (one class per family, above) are written once, in the
    SQL that SQLite and PostgreSQL share (``?`` and ``:name`` placeholders,
    ``ON CONFLICT`` upserts, ``TRUE`` and ``FALSE``). Where the two differ,
    the difference has a name: a spelling in :data:`_DIALECT`, which each
    sibling defines (a class missing one is refused when it is defined), or
    an abstract method, which each sibling implements (a class missing one
    cannot be built): the connections (:class:`_Connections`' hooks), row
    locks (:meth:`_for_update`), what instances sharing the database tell
    each other (:class:`_InstanceStatements`) and :meth:`write_refreshes`.
    A method here that changes a heartbeat's or a window's document calls
    :meth:`_changed` (other instances reload it from there).

    Rows read like :class:`sqlite3.Row` (by index or by column name). Every
    database error leaves as :class:`StoreError` (``__cause__`` says why),
    and a failed connection is opened again before its next use.
    """

    #: the spellings each sibling defines:
    #: ``shared_by_instances`` (several instances may share the database),
    #: ``_BEGIN`` (what begins a transaction), ``_NO_LIMIT`` (a LIMIT that
    #: limits nothing), ``_FOLD`` (a format making ``{}`` compare with ASCII
    #: letters folded to lower case in LIKE and ORDER BY, as SQLite's LIKE
    #: and NOCASE do), ``_BY_NAME`` (the status page's order: name folded so,
    #: then id), ``_CONTAINS`` (the heartbeat's pattern has the pair ``?``,
    #: ``?``), ``_SPECIAL_ONLY`` (what :meth:`refresh` reads: a condition
    #: and ``AND``, or nothing), ``_GREATEST`` (the larger of two values),
    #: ``_IN_JSON_LIST`` (the strings of the JSON list ``?``, for ``IN``)
    _DIALECT = ("shared_by_instances", "_BEGIN", "_NO_LIMIT", "_FOLD", "_BY_NAME", "_CONTAINS", "_SPECIAL_ONLY",
                "_GREATEST", "_IN_JSON_LIST")

    # A refresh never moves backwards (writes of two instances, or of one
    # instance's concurrent requests, may commit in any order): what a
    # refresh sets, with its time three times as parameters, and what an
    # event sets of a paused one (twice); last_event may be NULL.
    _LATER_REFRESH = ("refreshed = {g}(refreshed, ?), last_event = COALESCE({g}(last_event, ?), ?)")
    _LATER_EVENT = "last_event = COALESCE({g}(last_event, ?), ?)"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [name for name in Store._DIALECT if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"{cls.__name__} must spell {', '.join(missing)} (see Store._DIALECT)")
        cls._LATER_REFRESH = Store._LATER_REFRESH.format(g=cls._GREATEST)
        cls._LATER_EVENT = Store._LATER_EVENT.format(g=cls._GREATEST)


class SqliteStore(Store):
    """The store on a SQLite file, or in memory (``:memory:``; one
    connection then, as other connections would see another database).

    One service owns the file: the constructor takes :class:`DatabaseLock`
    and writes nothing; :meth:`open` (or the first use) opens and prepares
    it (``schema.sql``, migrated from an older version by
    :data:`_MIGRATIONS`). Once open, the file's identity is watched: deleted
    or replaced, every call raises :class:`DatabaseGone` from then on (said
    in the log once).

    Writes go through one connection under a lock (SQLite writes one
    transaction at a time anyway); reads go through connections of their
    threads' own, ``query_only``: WAL lets readers run beside the writer,
    and under concurrent load a shared lock held while SQLite runs without
    the GIL turns every request into a queue of thread hand-offs. A
    connection that met a read-only file system or an I/O error stays
    broken even once the cause is gone, so any failed one is reopened.

    :param path: a file path, or ``:memory:``.
    :param busy_timeout: seconds to wait for a lock held by another
        connection before giving up with a :class:`StoreError`.
    :raises ConfigError: the path cannot be a database (see
        :func:`check_database_path`), another service holds the database
        (see :class:`DatabaseLock`), the schema file cannot be read, or (from
        :meth:`open`) the database is newer than this code. A database that
        merely fails now (read-only, locked, I/O error) is logged, and every
        call raises :class:`StoreError` until it answers again.
    """

    shared_by_instances = False
    _BEGIN = "BEGIN IMMEDIATE"  # takes the write lock at once: writers queue here, not mid-transaction
    _NO_LIMIT = -1
    _FOLD = "{}"  # LIKE ignores the case of ASCII letters already
    _BY_NAME = "name COLLATE NOCASE, id"
    _CONTAINS = "EXISTS (SELECT 1 FROM json_each(heartbeat.pattern) WHERE key = ? AND value = ?)"
    _SPECIAL_ONLY = "status <> 'up' AND "  # only the rows refresh() reports
    _GREATEST = "MAX"  # with two arguments, the scalar max (NULL if either is)
    _IN_JSON_LIST = "SELECT value FROM json_each(?)"

    def __init__(self, path, busy_timeout=BUSY_TIMEOUT_SECONDS):
        if sqlite3.sqlite_version_info < (3, 31):
            raise ConfigError(f"SQLite 3.31 or newer is needed, this Python has {sqlite3.sqlite_version}")
        check_database_path(path)
        super().__init__(path, busy_timeout, (sqlite3.Error,), single_connection=path == ":memory:")
        self._schema = read_schema("schema.sql")
        self._file_lock = None
        if path != ":memory:":
            self._file_lock = DatabaseLock(path)
            self._file_lock.acquire()
        self._identity = None  # (st_dev, st_ino) of the file once opened
        self._identity_checked_at = -math.inf  # time.monotonic()
        self._gone = None  # why the database file is no longer ours, once it is not
        self._gone_at = None  # since when (Unix seconds)
        self._gone_lock = threading.Lock()

    # -- connections -----------------------------------------------------------

    def _open(self, timeout=None):
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout if timeout is None else timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database: {exc}") from exc
        conn.row_factory = sqlite3.Row
        return conn

    def _open_reader(self, timeout=None):
        reader = self._open(timeout)
        try:
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            reader.close()
            raise StoreError(f"cannot open database: {exc}") from exc
        return reader

    def _prepare(self, conn):
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"database {self.path} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this heartbeat-lite {__version__} knows; upgrade heartbeat-lite"
                )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < SCHEMA_VERSION:  # schema.sql sets the version last: equal means fully applied
                before, after = _MIGRATIONS[version] if version else ("", "")  # none for a new file
                script = "\n".join(["BEGIN IMMEDIATE;", before, self._schema, after, "COMMIT;"])
                try:
                    conn.executescript(script)
                except sqlite3.Error:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if version:
                    log.info("database %s migrated from schema version %d to %d", self.path, version, SCHEMA_VERSION)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare database: {exc}") from exc
        if self._identity is None and not self._single_connection:  # the file exists from here on
            self._identity = self._file_identity()  # watched from now on
            if self._identity is not None:
                self._guard = self._check_identity
            if self._file_lock is not None:
                self._file_lock.hold_file()  # a file created just now: lock it by its identity

    def _file_identity(self):
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _check_identity(self):
        """Refuse every statement once the database file is not the one
        opened (deleted, or replaced by another file); checked at most once
        per :data:`DATABASE_IDENTITY_CHECK_SECONDS`."""
        if self._gone is None:
            now = time.monotonic()
            if now - self._identity_checked_at < DATABASE_IDENTITY_CHECK_SECONDS:
                return
            self._identity_checked_at = now
            if self._file_identity() == self._identity:
                return
            with self._gone_lock:
                if self._gone is None:
                    self._gone_at = time.time()
                    self._gone = "the database file was deleted or replaced"
                    log.error("the database file %s was deleted or replaced while running: nothing more is "
                              "written, every write gets the database error; restart heartbeat-lite",
                              os.path.abspath(self.path))
        raise DatabaseGone(self._gone, self._gone_at)

    def close(self):
        super().close()
        if self._file_lock is not None:
            self._file_lock.release()

    def _send(self, conn, sql, params, many, fetch):
        if many:
            return conn.executemany(sql, params)
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if fetch else cursor

    def _refusal(self, error):
        return None  # a pattern taken is found before the write, inside BEGIN IMMEDIATE

    def _broken(self, conn, error):
        return True

    def _lost(self, exc):
        return False  # a file is not a server

    def _for_update(self, skip_locked=False, of=None):
        return ""  # BEGIN IMMEDIATE lets one writer in at a time already

    # -- what differs ------------------------------------------------------------

    def write_refreshes(self, refreshes):
        # One statement per row, each conditional on 'up': their rowcount
        # says whether any was not written, which is then looked up. One
        # transaction (the connection commits each statement on its own
        # otherwise: a thousand commits took 44 ms, under the engine's lock).
        refreshes = list(refreshes)
        if len(refreshes) == 1:
            return self._write_refreshes(refreshes)
        with self.atomic():  # (nested in the caller's, when it has one)
            return self._write_refreshes(refreshes)

    def _write_refreshes(self, refreshes):
        with self._lock:  # no other write between the update and the look at what it missed
            written = self._executemany(
                f"UPDATE heartbeat SET {self._LATER_REFRESH} WHERE id = ? AND status = 'up'",
                [(refreshed, refreshed, refreshed, heartbeat_id) for heartbeat_id, refreshed in refreshes],
            ).rowcount
            if written == len(refreshes):  # the common case: every one was up
                return []
            ids = sorted(heartbeat_id for heartbeat_id, _ in refreshes)
            up = set()
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start:start + _ID_CHUNK]
                up.update(row[0] for row in self._query(
                    f"SELECT id FROM heartbeat WHERE status = 'up' AND id IN ({', '.join('?' * len(chunk))})", chunk))
        return [heartbeat_id for heartbeat_id in ids if heartbeat_id not in up]

    # One service owns the database: its life is two values of meta, and it
    # has no other instance to tell of changes or to share the outbox with.

    def last_alive(self, now):
        return self.meta(META_ALIVE_AT), self.meta(META_STOPPED_CLEANLY) == 1

    def blind_since(self, failed_at):
        return failed_at  # one service: it was blind

    def record_start(self, now):
        self.set_meta(META_STOPPED_CLEANLY, 0)
        self.record_alive(now)

    def record_alive(self, now):
        self.set_meta(META_ALIVE_AT, now)

    def record_stop(self, now):
        self.record_alive(now)
        self.set_meta(META_STOPPED_CLEANLY, 1)

    def _changed(self, kind, object_id):
        pass

    def changes(self, after):
        return after, []

    def last_change(self):
        return 0

    @contextlib.contextmanager
    def outbox_lease(self, channel=FORWARD_CHANNEL_ID):
        yield True


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Client-side bounds on a PostgreSQL server that stops answering (each may be
# overridden in the URL, as libpq reads them): connecting (libpq's least:
# a frozen server holds an attempt this long), TCP keepalives and
# tcp_user_timeout (a peer gone from the network, on idle connections and
# unacknowledged sends), and the server-side statement_timeout (a runaway
# statement; a frozen server enforces nothing: see _DatabaseWatchdog).
POSTGRES_CONNECT_TIMEOUT_SECONDS = 2
POSTGRES_CONNECTION_OPTIONS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                               "keepalives_count": 3, "tcp_user_timeout": 10_000}
POSTGRES_STATEMENT_TIMEOUT_SECONDS = 60.0
STALL_SECONDS = 0.5  # a statement unanswered this long has the watchdog probe the server (HEALTH_TIMEOUT_SECONDS)
WATCH_SECONDS = 0.1  # how often the watchdog looks; and, while the server does not answer, probes it again
CLOCK_WARNING_SECONDS = 1.0  # an instance's clock further than this from the database's is logged (and corrected)
CLOCK_SAMPLES = 4  # the clock offset is that of the quickest of the last samples (the least error)
CLOCK_SAMPLE_SECONDS = 1.0  # how often a server's syncer samples the database's clock
CHANGES_KEPT = "1 day"  # another instance's changes are kept this long; one further behind reloads everything
# advisory lock kinds (the first key); the second is the schema's own, so
# that databases of separate services in one PostgreSQL cluster never meet
_LOCK_SCHEMA, _LOCK_OUTBOX, _LOCK_CHANGES, _LOCK_START = 0x4842_0001, 0x4842_0002, 0x4842_0003, 0x4842_0004
_PLACEHOLDERS = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):([A-Za-z_]\w*)|\?|%")


def is_postgres_url(db):
    """True when ``db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def open_store(db, busy_timeout=BUSY_TIMEOUT_SECONDS):
    """The store for ``db``: a :class:`PostgresStore` for a
    ``postgresql://`` (or ``postgres://``) URL, else a :class:`SqliteStore`."""
    if is_postgres_url(db):
        return PostgresStore(db, busy_timeout=busy_timeout)
    return SqliteStore(db, busy_timeout=busy_timeout)


def database_label(db):
    """``db`` as a log line may show it: a URL with no secret in it (see
    :func:`redact_url`), a SQLite path made absolute."""
    if is_postgres_url(db):
        return redact_url(db)
    return os.path.abspath(db) if db != ":memory:" else ":memory:"


@functools.lru_cache(maxsize=4096)
def _pyformat(sql):
    """SQL with ``?`` and ``:name`` placeholders (sqlite3's) spelt as
    psycopg's ``%s`` and ``%(name)s``, and any other ``%`` doubled; string
    literals and ``::`` casts are left alone."""
    def replace(match):
        text = match.group(0)
        if text[0] == "'":
            return text
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(1)})s"
    return _PLACEHOLDERS.sub(replace, sql)


class _PgRow(tuple):
    """A row as :class:`sqlite3.Row` reads: by index or by column name,
    ``keys()``, ``dict(row)``, ``tuple(row)``."""

    __slots__ = ()
    _index = {}

    def __getitem__(self, key):
        if type(key) is str:
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._index)


@functools.lru_cache(maxsize=256)
def _pg_row_class(names):
    return type("Row", (_PgRow,), {"__slots__": (), "_index": {name: i for i, name in enumerate(names)}})


def _pg_rows(cursor):
    """psycopg row factory making :class:`_PgRow` rows."""
    if cursor.description is None:
        return tuple
    return _pg_row_class(tuple(column.name for column in cursor.description))


class _GroupCommit:
    """Writes of concurrent callers made one (group commit): while one
    caller writes, the others queue; the next to go takes every item queued
    and writes them together, in one transaction. Each caller returns once
    its items are written (or raises the write's error).

    :param write: ``write(items)`` writes a list of items and returns the
        set of those it did not write (see :meth:`Store.write_refreshes`).
    """

    def __init__(self, write):
        self._write = write
        self._cond = threading.Condition()
        self._queue = []  # (items, outcome) of the callers waiting
        self._busy = False

    @contextlib.contextmanager
    def writing(self):
        """Be the writer, outside any write (to close what it uses)."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def __call__(self, items):
        outcome = {}  # "missed" (a set) or "error", once written
        with self._cond:
            self._queue.append((items, outcome))
            while self._busy and not outcome:
                self._cond.wait()
            if not outcome:  # this caller writes the queue
                self._busy = True
                batch, self._queue = self._queue, []
        if not outcome:
            result = {"error": StoreError("the write did not end")}
            try:
                result = {"missed": set(self._write([item for queued, _ in batch for item in queued]))}
            except StoreError as exc:
                result = {"error": exc}
            finally:
                with self._cond:
                    for _, waiting in batch:
                        waiting.update(result)
                    self._busy = False
                    self._cond.notify_all()
        if "error" in outcome:
            error = outcome["error"]
            raise StoreError(str(error)) from error.__cause__
        return outcome["missed"]


class _DatabaseWatchdog:
    """The client-side deadline of a :class:`PostgresStore`. A server that
    stops answering (frozen, or cut off while TCP still acknowledges)
    holds a statement forever: libpq waits on its socket, and the
    server-side timeouts need a running server. So every statement is
    registered while it runs (:meth:`begin`, :meth:`end`), and a thread
    looks every :data:`WATCH_SECONDS`: when one has waited
    :data:`STALL_SECONDS`, it probes the server on a connection of its own
    (``/healthz``'s read, :meth:`read`). A probe unanswered within
    :data:`HEALTH_TIMEOUT_SECONDS` means the server does not answer: every
    statement waiting is cut (its socket shut down: the driver fails it as
    a lost connection), and from then on every statement, and every new
    connection but the probe's, is refused at once with a
    :class:`StoreError` (:meth:`refuse`), until a probe is answered again
    (tried every :data:`WATCH_SECONDS`). A slow statement on a server that
    answers the probe is left alone (its server-side timeouts bound it).
    """

    def __init__(self, store):
        self._store = store
        self._running = {}  # connection -> time.monotonic() its statement started
        self._running_lock = threading.Lock()  # held while cutting: a registered connection is still open
        self._cond = threading.Condition()
        #: None while the server answers; else since when it does not (Unix seconds)
        self.unanswered_since = None
        self._probe = None  # the probing thread, while one runs
        self._probe_started = 0.0  # time.monotonic()
        self._probes = 0  # probes finished, so a caller knows a fresh one
        self._outcome = (None, None)  # the last probe's (outbox depth, StoreError or None)
        self._thread = None
        self._stopping = False

    def start(self):
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._watch, name="heartbeat-lite-watchdog", daemon=True)
                self._thread.start()

    def stop(self):
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()

    def begin(self, conn):
        with self._running_lock:
            self._running[conn] = time.monotonic()

    def end(self, conn):
        with self._running_lock:
            self._running.pop(conn, None)

    def refuse(self):
        """Raise the database error while the server does not answer (but
        in the probe, which finds when it answers again)."""
        since = self.unanswered_since
        if since is not None and self._probe is not threading.current_thread():
            raise StoreError("the database does not answer (since "
                             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))})")

    def read(self):
        """``/healthz``'s read: the outbox depth, from a probe that ends
        within :data:`HEALTH_TIMEOUT_SECONDS` (one started meanwhile by
        another caller or by the watchdog counts), else :raises StoreError:."""
        self.refuse()
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        with self._cond:
            seen = self._probes
            self._start_probe()
            while self._probes == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"the database does not answer within {HEALTH_TIMEOUT_SECONDS:g}s")
                self._cond.wait(left)
            depth, error = self._outcome
        if error is not None:
            raise error
        return depth

    def _start_probe(self):
        """Start a probe unless one runs (call with the condition held)."""
        if self._probe is None:
            self._probe_started = time.monotonic()
            self._probe = threading.Thread(target=self._run_probe, name="heartbeat-lite-probe", daemon=True)
            self._probe.start()

    def _run_probe(self):
        try:
            outcome = (self._store._probe(), None)
        except StoreError as exc:
            outcome = (None, exc)
        with self._cond:
            self._probe = None
            self._probes += 1
            self._outcome = outcome
            if outcome[1] is None and self.unanswered_since is not None:
                log.warning("the database %s answers again, after %.1fs", self._store.path,
                            time.time() - self.unanswered_since)
                self.unanswered_since = None
            self._cond.notify_all()

    def _watch(self):
        while True:
            with self._cond:
                self._cond.wait(WATCH_SECONDS)
                if self._stopping:
                    return
                now = time.monotonic()
                if self._probe is not None:
                    if now - self._probe_started > HEALTH_TIMEOUT_SECONDS:
                        self._unanswered()
                else:
                    with self._running_lock:
                        stalled = any(now - started >= STALL_SECONDS for started in self._running.values())
                    if stalled or self.unanswered_since is not None:
                        self._start_probe()
            if self.unanswered_since is not None:
                self._cut()  # what waits, the probe included; what started since the last look

    def _unanswered(self):
        if self.unanswered_since is None:
            self.unanswered_since = time.time() - HEALTH_TIMEOUT_SECONDS
            log.error("the database %s does not answer: statements waiting are cut, every change gets the "
                      "database error until it answers again", self._store.path)

    def _cut(self):
        """Shut down the socket of every statement waiting: the driver then
        fails it as a connection lost (and the store opens a new one)."""
        with self._running_lock:
            for conn in list(self._running):
                try:
                    sock = socket.socket(fileno=os.dup(conn.fileno()))
                except (OSError, ValueError, self._store._psycopg.Error) as exc:
                    log.debug("cutting a statement: %s", exc)
                    continue
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError as exc:
                    log.debug("cutting a statement: %s", exc)
                finally:
                    sock.close()


class PostgresStore(Store):
    """The store on PostgreSQL (13 or newer), through psycopg 3, which is
    imported only here: SQLite users need not install it
    (``pip install heartbeat-lite[postgresql]``).

    The statements are :class:`Store`'s (placeholders are translated once
    per statement, :func:`_pyformat`); the schema is
    ``schema.postgresql.sql``, applied idempotently under an advisory lock,
    its version in ``meta``. Several instances may share the database:

    - reads inside :meth:`atomic` lock the rows about to change (``FOR
      UPDATE``; expiry takes ``FOR UPDATE SKIP LOCKED``), so that each state
      change, and so each alarm, happens once across instances;
    - a document change is recorded in ``changes`` (``seq`` in commit order:
      writers of changes queue on an advisory lock), which the other
      instances read every :data:`SYNC_SECONDS` (:meth:`changes`);
    - each instance records that it is alive in ``instance``: a restart
      postpones deadlines only for a time when none was alive
      (:meth:`last_alive`);
    - one instance at a time delivers the outbox (:meth:`outbox_lease`, a
      session advisory lock).

    Transactions are READ COMMITTED; the busy timeout becomes
    ``lock_timeout``. A connection the server closed (PostgreSQL restarted)
    is opened again: at once for a read or a BEGIN, which may safely run
    again, else before its next use. A server that stops answering is
    found by :class:`_DatabaseWatchdog` within a second: what waits on it is cut,
    and changes are refused at once until it answers again.

    Refreshes written before an answer (:meth:`write_refreshes_now`) are
    written together with those of concurrent requests (group commit).
    The database's clock is sampled (:meth:`sample_clock`): an instance
    whose clock is off judges time on the database's
    (:meth:`database_clock`).
    """

    shared_by_instances = True
    _BEGIN = "BEGIN"
    _NO_LIMIT = None
    _FOLD = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"  # ASCII only, as SQLite
    _BY_NAME = _FOLD.format("name") + ' COLLATE "C", id'
    _CONTAINS = "(heartbeat.pattern::jsonb ->> ?) = ?"
    _SPECIAL_ONLY = ""  # lock every row of the chunk, then look at its status (see refresh())
    _GREATEST = "GREATEST"  # NULLs ignored
    _IN_JSON_LIST = "SELECT jsonb_array_elements_text(CAST(? AS jsonb))"

    def __init__(self, url, busy_timeout=BUSY_TIMEOUT_SECONDS):
        try:
            import psycopg
            import psycopg.errors
        except ImportError as exc:
            raise ConfigError("a PostgreSQL database needs psycopg 3: pip install \"psycopg[binary]\" "
                              "(or heartbeat-lite[postgresql])") from exc
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(f"bad PostgreSQL URL {database_label(url)}: {redact_secrets(exc, url)}") from None
        super().__init__(database_label(url), busy_timeout, (psycopg.Error, sqlite3.Error))
        self._psycopg = psycopg
        self._schema = read_schema("schema.postgresql.sql")
        self.url = url
        self.instance_id = str(uuid.uuid4())
        self._key = None  # the second key of advisory locks, from the schema's name
        self._lease_conns = {}  # channel -> its delivery's connection, holding the channel's lock while it delivers
        self._lease_locks = collections.defaultdict(threading.Lock)
        self._watchdog = _DatabaseWatchdog(self)
        self._guard = self._watchdog.refuse
        given = psycopg.conninfo.conninfo_to_dict(url)
        self._options = {key: value for key, value in POSTGRES_CONNECTION_OPTIONS.items() if key not in given}
        if "connect_timeout" not in given:
            self._options["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_SECONDS
        self._together = _GroupCommit(self._write_refreshes_apart)
        self._refresh_conn = None  # write_refreshes_now's own connection (its group commit's writer uses it alone)
        self._clock_samples = collections.deque(maxlen=CLOCK_SAMPLES)  # (round trip, offset) seconds
        #: this host's clock minus the database's (seconds), once measured, else None
        self.clock_offset = None
        self._clock_warned = False

    # -- connections -----------------------------------------------------------

    def _open(self, timeout=None):
        psycopg = self._psycopg
        self._watchdog.refuse()  # a server that does not answer holds a connection attempt too
        self._watchdog.start()
        wait = self.busy_timeout if timeout is None else timeout
        statement_timeout = POSTGRES_STATEMENT_TIMEOUT_SECONDS if timeout is None else timeout
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=_pg_rows, **self._options)
            self._watchdog.begin(conn)
            try:
                conn.execute(f"SET lock_timeout = {int(wait * 1000)}; "
                             f"SET statement_timeout = {int(statement_timeout * 1000)}")
                if self._key is None:
                    schema = conn.execute("SELECT current_schema()").fetchone()[0]
                    if schema is None:
                        conn.close()
                        raise StoreError("cannot open database: its search_path names no schema that exists")
                    self._key = zlib.crc32(schema.encode("utf-8")) - 2 ** 31
            finally:
                self._watchdog.end(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open database: {exc}") from exc
        return conn

    def _open_reader(self, timeout=None):
        return self._open(timeout)

    def _prepare(self, conn):
        try:
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")  # a migration takes the time it takes
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_SCHEMA, self._key))
                version = 0
                if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is not None:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                    version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise SchemaTooNew(
                        f"database {self.path} has schema version {version}, newer than the "
                        f"{SCHEMA_VERSION} this heartbeat-lite {__version__} knows; upgrade heartbeat-lite")
                if version < SCHEMA_VERSION:
                    conn.execute(self._schema)
                    if version:
                        log.info("database %s migrated from schema version %d to %d", self.path, version,
                                 SCHEMA_VERSION)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot prepare database: {exc}") from exc

    def open(self):
        super().open()
        try:
            self.sample_clock()  # before the engine reads its clock
        except StoreError as exc:
            log.debug("the database's clock: %s", exc)

    def close(self):
        self._watchdog.stop()
        if self._watchdog.unanswered_since is not None:
            self._watchdog._cut()  # nothing waits on a server that does not answer to close
        super().close()
        with self._together.writing():
            if self._refresh_conn is not None:
                self._refresh_conn.close()
                self._refresh_conn = None
        for channel in list(self._lease_conns):
            with self._lease_locks[channel]:
                self._drop_lease(channel)

    def _send(self, conn, sql, params, many, fetch):
        text = _pyformat(sql)
        watchdog = self._watchdog
        watchdog.begin(conn)
        try:
            if many:
                with conn.cursor() as cursor:
                    cursor.executemany(text, params)
                return None
            cursor = conn.execute(text, params)
            return cursor.fetchall() if fetch else cursor
        finally:
            watchdog.end(conn)

    def _health_read(self, sql):
        return self._watchdog.read()  # the probe's read is sql (_HEALTH_READ)

    def _probe(self):
        """The watchdog's probe, which is ``/healthz``'s read: the outbox
        depth, on the health connection (opened if needed: a connection the
        server closed is opened again once)."""
        with self._health_lock:
            for attempt in (1, 2):
                if self._health_conn is None:
                    self._health_conn = self._open_reader(timeout=HEALTH_TIMEOUT_SECONDS)
                try:
                    return self._run(self._health_conn, self._HEALTH_READ, (), fetch=True)[0][0]
                except StoreError as exc:
                    if attempt == 2 or not self._lost(exc):
                        raise

    # -- the database's clock ----------------------------------------------------

    def sample_clock(self):
        """Measure this host's clock against the database's: one read of
        ``clock_timestamp()`` between two readings of ``time.time()``; the
        offset kept is that of the quickest of the last
        :data:`CLOCK_SAMPLES` (its error is at most half its round trip).
        An offset beyond :data:`CLOCK_WARNING_SECONDS` is logged once (and
        its end).

        :returns: the offset, this host's clock minus the database's (seconds).
        :raises StoreError: the database does not answer.
        """
        before = time.time()
        database = self._query("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0]
        after = time.time()
        self._clock_samples.append((after - before, (before + after) / 2 - database))
        offset = self.clock_offset = min(self._clock_samples)[1]
        if abs(offset) > CLOCK_WARNING_SECONDS and not self._clock_warned:
            log.warning("this host's clock is %+.3fs off the database's (%s): deadlines are judged on the "
                        "database's clock; fix the host's time synchronisation", offset, self.path)
            self._clock_warned = True
        elif abs(offset) <= CLOCK_WARNING_SECONDS / 2 and self._clock_warned:
            log.warning("this host's clock agrees with the database's again (%+.3fs)", offset)
            self._clock_warned = False
        return offset

    def database_clock(self):
        """The time on the database's clock: this host's, corrected by the
        offset measured last (uncorrected before the first measure)."""
        return time.time() - (self.clock_offset or 0.0)

    def _refusal(self, error):
        # two instances creating one pattern at once: the UNIQUE index decides
        if isinstance(error, self._psycopg.errors.UniqueViolation):
            taken = {"heartbeat_pattern": PatternExists, "heartbeat_slug": SlugExists,
                     "heartbeat_push_token": PushTokenExists}.get(error.diag.constraint_name)
            if taken is not None:
                return taken(error.diag.message_detail)
        return None

    def _broken(self, conn, error):
        # a failed statement only aborts the transaction, which is rolled
        # back; an error injected by a test's hook is taken for a broken one
        return getattr(conn, "broken", False) or isinstance(error, sqlite3.Error)

    def _lost(self, exc):
        return isinstance(exc.__cause__, self._psycopg.OperationalError)

    def _for_update(self, skip_locked=False, of=None):
        if self._depth and self._owner == threading.get_ident():
            return f" FOR UPDATE{f' OF {of}' if of else ''}{' SKIP LOCKED' if skip_locked else ''}"
        return ""

    # -- what differs ------------------------------------------------------------

    def write_refreshes(self, refreshes):
        # Another instance may have put a heartbeat late or down, or paused
        # it, meanwhile: the rows are locked, then updated where still up.
        latest = {}  # one time per id (an UPDATE joining a row twice uses either)
        for heartbeat_id, refreshed in refreshes:
            if refreshed > latest.get(heartbeat_id, -math.inf):
                latest[heartbeat_id] = refreshed
        refreshes = sorted(latest.items())  # rows locked in id order: no deadlock with another instance
        ids = [heartbeat_id for heartbeat_id, _ in refreshes]
        if len(ids) == 1:  # one row: one statement, which locks it alone
            written = self._execute(f"UPDATE heartbeat SET {self._LATER_REFRESH} WHERE id = ? AND status = 'up'",
                                    (refreshes[0][1],) * 3 + (ids[0],)).rowcount
            return [] if written else ids
        with self.atomic():
            self._query("SELECT id FROM heartbeat WHERE id = ANY(?::text[]) ORDER BY id FOR UPDATE", (ids,))
            written = self._query(
                "UPDATE heartbeat SET refreshed = GREATEST(heartbeat.refreshed, v.t), "
                "last_event = GREATEST(heartbeat.last_event, v.t) "
                "FROM (SELECT unnest(?::text[]) AS id, unnest(?::float8[]) AS t) AS v "
                "WHERE heartbeat.id = v.id AND heartbeat.status = 'up' RETURNING heartbeat.id",
                (ids, [refreshed for _, refreshed in refreshes]))
        written = {row[0] for row in written}
        return [heartbeat_id for heartbeat_id in ids if heartbeat_id not in written]

    def write_refreshes_now(self, refreshes):
        # On a connection of their own: an event's refresh does not wait
        # behind the writer's transactions (a tick, a storm's chunks), only
        # on its rows' locks (taken in id order, as everywhere).
        return sorted(self._together(list(refreshes)) & {heartbeat_id for heartbeat_id, _ in refreshes})

    def _write_refreshes_apart(self, refreshes):
        """:meth:`write_refreshes` on the refresh connection (called by one
        thread at a time: the group commit's writer); its outcome is a
        write's (:attr:`last_write`, the outage rule)."""
        latest = {}
        for heartbeat_id, refreshed in refreshes:
            if refreshed > latest.get(heartbeat_id, -math.inf):
                latest[heartbeat_id] = refreshed
        ids = sorted(latest)
        try:
            if self._refresh_conn is None:
                self._refresh_conn = self._open()
            if len(ids) == 1:
                written = ids if self._apart(f"UPDATE heartbeat SET {self._LATER_REFRESH} WHERE id = ? AND status = "
                                             "'up'", (latest[ids[0]],) * 3 + (ids[0],)).rowcount else []
            else:
                self._apart("BEGIN")
                self._apart("SELECT id FROM heartbeat WHERE id = ANY(?::text[]) ORDER BY id FOR UPDATE", (ids,),
                            fetch=True)
                written = [row[0] for row in self._apart(
                    "UPDATE heartbeat SET refreshed = GREATEST(heartbeat.refreshed, v.t), "
                    "last_event = GREATEST(heartbeat.last_event, v.t) "
                    "FROM (SELECT unnest(?::text[]) AS id, unnest(?::float8[]) AS t) AS v "
                    "WHERE heartbeat.id = v.id AND heartbeat.status = 'up' RETURNING heartbeat.id",
                    (ids, [latest[heartbeat_id] for heartbeat_id in ids]), fetch=True)]
                self._apart("COMMIT")
        except BaseException as exc:
            if isinstance(exc, StoreError):
                self._wrote(exc.__cause__ or exc)
            if self._refresh_conn is not None:  # a transaction cut short, or a connection lost: a new one
                self._refresh_conn.close()
                self._refresh_conn = None
            raise
        self._wrote()
        written = set(written)
        return [heartbeat_id for heartbeat_id in ids if heartbeat_id not in written]

    def _apart(self, sql, params=(), fetch=False):
        """One statement on the refresh connection, as :meth:`_run` runs
        them (the guard, the test hook, errors as :class:`StoreError`)."""
        self._guard()
        try:
            if self.statement_hook is not None:
                self.statement_hook(sql, params)
            return self._send(self._refresh_conn, sql, params, False, fetch)
        except self._errors as exc:
            raise StoreError(f"{exc} (in: {sql.split()[0]} ...)") from exc

    def last_alive(self, now):
        """The instance that ran last: when it was last alive and whether it
        stopped cleanly; ``(now, True)`` when another instance runs (was
        alive within :data:`INSTANCE_ALIVE_SECONDS` and did not stop):
        the service never stopped. Instances starting together queue here
        (until :meth:`record_start` commits), so an outage is counted once."""
        self._query("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_START, self._key))
        rows = self._query("SELECT alive_at, stopped FROM instance WHERE id <> ? ORDER BY alive_at DESC",
                           (self.instance_id,))
        if any(not stopped and alive_at >= now - INSTANCE_ALIVE_SECONDS for alive_at, stopped in rows):
            return now, True
        if not rows:
            return None, False
        return rows[0][0], rows[0][1]

    def blind_since(self, failed_at):
        self._query("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_START, self._key))
        others = self._query("SELECT MAX(alive_at) FROM instance WHERE id <> ?", (self.instance_id,))[0][0]
        return None if others is not None and others > failed_at else failed_at

    def record_start(self, now):
        self._execute("INSERT INTO instance (id, alive_at, stopped) VALUES (?, ?, FALSE) "
                      "ON CONFLICT (id) DO UPDATE SET alive_at = excluded.alive_at, stopped = FALSE",
                      (self.instance_id, now))
        self._execute("DELETE FROM instance WHERE alive_at < (SELECT MAX(alive_at) FROM instance) - 86400")

    def record_alive(self, now):
        with self.atomic():
            self._execute("UPDATE instance SET alive_at = ? WHERE id = ?", (now, self.instance_id))
            pruned = self._query(f"WITH gone AS (DELETE FROM changes WHERE at < now() - interval '{CHANGES_KEPT}' "
                                 "RETURNING seq) SELECT MAX(seq) FROM gone")[0][0]
            if pruned is not None:
                self.set_meta("changes_pruned", pruned)

    def record_stop(self, now):
        self._execute("UPDATE instance SET alive_at = ?, stopped = TRUE WHERE id = ?", (now, self.instance_id))

    def instances(self):
        """Every instance recorded: ``(id, alive_at, stopped)`` rows, the last alive first."""
        return [tuple(row) for row in self._query("SELECT id, alive_at, stopped FROM instance ORDER BY alive_at DESC")]

    def _changed(self, kind, object_id):
        # Writers of changes queue here until they commit: seq order is commit order.
        self._query("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_CHANGES, self._key))
        self._execute("INSERT INTO changes (instance, kind, object_id) VALUES (?, ?, ?)",
                      (self.instance_id, kind, object_id))

    def changes(self, after):
        pruned = self.meta("changes_pruned")
        rows = self._query("SELECT seq, instance, kind, object_id FROM changes WHERE seq > ? ORDER BY seq", (after,))
        last = rows[-1][0] if rows else after
        if pruned is not None and after < pruned:
            return max(last, int(pruned)), None
        return last, [(row[2], row[3]) for row in rows if row[1] != self.instance_id]

    def last_change(self):
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM changes")[0][0]

    def _lease_key(self, channel):
        """The advisory lock of a channel's queue: the forward channel's is
        the outbox lock of before (two 32-bit keys); another channel's one
        64-bit key from the schema and the channel (the two spaces never meet)."""
        if channel == FORWARD_CHANNEL_ID:
            return "%s, %s", (_LOCK_OUTBOX, self._key)
        digest = hashlib.blake2b(f"{self._key}:{channel}".encode("utf-8"), digest_size=8).digest()
        return "%s", (int.from_bytes(digest, "big", signed=True),)

    @contextlib.contextmanager
    def outbox_lease(self, channel=FORWARD_CHANNEL_ID):
        """Yields whether this instance holds the channel's queue now: a
        session advisory lock on a connection of the delivery's own, taken
        without waiting and let go after the batch; PostgreSQL lets it go
        too when an instance dies (its connection closes)."""
        with self._lease_locks[channel]:
            psycopg = self._psycopg
            try:
                if self._lease_conns.get(channel) is None:
                    self._lease_conns[channel] = self._open()
                conn = self._lease_conns[channel]
                placeholders, key = self._lease_key(channel)
                self._watchdog.begin(conn)
                try:
                    leased = conn.execute(f"SELECT pg_try_advisory_lock({placeholders})", key).fetchone()[0]
                finally:
                    self._watchdog.end(conn)
            except psycopg.Error as exc:
                self._drop_lease(channel)
                raise StoreError(f"cannot lease the outbox: {exc}") from exc
            try:
                yield leased
            finally:
                if leased:
                    self._watchdog.begin(conn)
                    try:
                        conn.execute(f"SELECT pg_advisory_unlock({placeholders})", key)
                    except psycopg.Error as exc:
                        log.debug("outbox lease: %s", exc)
                        self._watchdog.end(conn)
                        self._drop_lease(channel)  # closing the connection lets go of the lock
                    else:
                        self._watchdog.end(conn)

    def _drop_lease(self, channel):
        conn = self._lease_conns.pop(channel, None)
        if conn is not None:
            conn.close()


###############################################################################
# Rules and memory
###############################################################################

def _optional(row, key):
    """``row[key]``, or None when the row has no such column (a row built by
    hand, or by code that predates the column)."""
    try:
        return row[key]
    except (KeyError, IndexError):
        return None


def heartbeat_document(row):
    """The API's JSON document for a heartbeat row; optional fields only
    when set."""
    doc = {
        "_id": row["id"],
        "name": row["name"],
        "author": row["author"],
        "description": row["description"],
        "pattern": json.loads(row["pattern"]),
        "expected_interval": row["expected_interval"],
        "output": row["output"],
        "created": row["created"],
        "updated": row["updated"],
    }
    late_after = _optional(row, "late_after")
    if late_after is not None:
        doc["late_after"] = late_after
    for field in ("group_by", "expected_members"):
        value = _optional(row, field)
        if value is not None:
            doc[field] = json.loads(value)
    retire_after = _optional(row, "retire_after")
    if retire_after is not None:
        doc["retire_after"] = retire_after
    for field in ("channels", "escalate_after", "escalate_to"):
        value = _optional(row, field)
        if value is not None:
            doc[field] = value if field == "escalate_after" else json.loads(value)
    for field in ("slug", "push_token", "max_run", "schedule", "tz"):
        value = _optional(row, field)
        if value is not None:
            doc[field] = value
    return doc


def heartbeat_columns(fields, now):
    """The document columns of a heartbeat row from validated fields,
    ``updated`` at ``now``."""
    return {
        "name": fields["name"],
        "author": fields["author"],
        "description": fields["description"],
        "output": fields["output"],
        "pattern": canonical_pattern(fields["pattern"]),
        "expected_interval": fields["expected_interval"],
        "interval_seconds": fields["interval_seconds"],
        "late_after": fields.get("late_after"),
        "late_seconds": fields.get("late_seconds"),
        "group_by": _json_text(fields.get("group_by")),
        "expected_members": _json_text(fields.get("expected_members")),
        "retire_after": fields.get("retire_after"),
        "retire_seconds": fields.get("retire_seconds"),
        "channels": _json_text(fields.get("channels")),
        "escalate_after": fields.get("escalate_after"),
        "escalate_seconds": fields.get("escalate_seconds"),
        "escalate_to": _json_text(fields.get("escalate_to")),
        "slug": fields.get("slug"),
        "push_token": fields.get("push_token"),
        "max_run": fields.get("max_run"),
        "max_run_seconds": fields.get("max_run_seconds"),
        "schedule": fields.get("schedule"),
        "tz": fields.get("tz"),
        "updated": int(now),
    }


def member_row(heartbeat, key, now, status, expected=False, last_event=None):
    """A new member row of ``heartbeat`` (its row, or its columns): member
    ``key``, in ``status``, refreshed at ``now``."""
    return {"heartbeat_id": heartbeat["id"], "member": key, "expected": int(expected),
            "interval_seconds": heartbeat["interval_seconds"], "late_seconds": heartbeat["late_seconds"],
            "retire_seconds": None if expected else heartbeat["retire_seconds"], "status": status,
            "refreshed": now, "last_event": last_event}


def group_keys(row):
    """A heartbeat row's group_by keys, sorted (the order of a member's
    values in memory), or None when it is not grouped."""
    group_by = _optional(row, "group_by")
    return None if group_by is None else tuple(sorted(json.loads(group_by)))


def member_values(event, keys):
    """The values of ``keys`` in ``event``, a tuple, when each is a string
    of at most :data:`MAX_PATTERN_ITEM_CHARS` characters (as a pattern's
    values); otherwise None (the event names no member)."""
    values = []
    for key in keys:
        value = event.get(key)
        if type(value) is not str or len(value) > MAX_PATTERN_ITEM_CHARS:
            return None
        values.append(value)
    return tuple(values)


def member_due_of(row):
    """When a member's next transition is due (schema.sql's generated
    ``due`` on the member table spells the same): as :func:`due_of` while
    pending, up or late; retirement (``retire_seconds`` after it went down)
    when down; None when paused or down for good."""
    if row["status"] == PAUSED:
        return None
    if row["status"] == DOWN:
        return None if row["retire_seconds"] is None else row["alarm_since"] + row["retire_seconds"]
    return due_of(row)


def maintenance_columns(fields, now):
    """The columns of a maintenance window row from validated fields,
    ``updated`` at ``now``."""
    return {
        "name": fields["name"],
        "pattern": canonical_pattern(fields["pattern"]),
        "start_local": fields["start"].isoformat(),
        "end_local": fields["end"].isoformat(),
        "timezone": fields["timezone"],
        "rrule": fields["rrule"],
        "updated": int(now),
    }


def maintenance_document(row):
    """The API's JSON document for a maintenance window row (``rrule`` only
    when set)."""
    doc = {"_id": row["id"], "name": row["name"], "pattern": json.loads(row["pattern"]),
           "start": row["start_local"], "end": row["end_local"], "timezone": row["timezone"]}
    if row["rrule"] is not None:
        doc["rrule"] = row["rrule"]
    doc.update(created=row["created"], updated=row["updated"])
    return doc


def scheduled_time(schedule, tz, t):
    """The first time cron expression ``schedule`` fires (in zone ``tz``,
    as cronsim says: a time a DST change skips fires at the first valid
    minute, a repeated one once) more than :data:`SCHEDULE_EARLY_SECONDS`
    after Unix time ``t``: the run that a ping at ``t`` does not count for
    (one up to that early counts for the run it precedes)."""
    start = datetime.datetime.fromtimestamp(t + SCHEDULE_EARLY_SECONDS, schedule_zone(tz))
    return next(cronsim.CronSim(schedule, start)).timestamp()


def schedule_zone(tz):
    """The zone a schedule is read in: ``tz`` (None: UTC). A zone the system
    no longer has (tzdata drops names) is UTC, so that neither a refresh nor
    the tick fails on it (the read model says so in the log at start)."""
    try:
        return time_zone(tz or "UTC")
    except ValueError:
        return UTC_ZONE


def refresh_time(row, t):
    """What a refresh at ``t`` (an event, a ping, creation, resume) stores as
    ``refreshed``: ``t``; for a heartbeat with a ``schedule``, the next run
    it expects (:func:`scheduled_time`), so that :func:`deadline_of` (that
    run plus ``expected_interval``) and :func:`due_of` (plus ``late_after``)
    hold unchanged. Computed once per refresh, never per tick."""
    schedule = _optional(row, "schedule")
    return t if schedule is None else scheduled_time(schedule, row["tz"], t)


def deadline_of(row):
    """The one deadline rule: a heartbeat is due ``expected_interval`` after
    its last refresh (its creation, or its last matching event, moved later
    by each outage; with a schedule, the next run it expects then: see
    :func:`refresh_time`); for one that is down, the deadline it missed.
    ``row`` needs ``refreshed`` and ``interval_seconds``. (schema.sql's
    generated ``deadline`` column spells the same sum, so that SQLite can
    index it.)"""
    return row["refreshed"] + row["interval_seconds"]


def due_of(row):
    """When a heartbeat's next transition is due (schema.sql's generated
    ``due`` spells the same): its late time while pending or up with a
    ``late_after``, else its deadline. Meaningless when down or paused."""
    late_seconds = _optional(row, "late_seconds")
    if late_seconds is None or row["status"] not in (PENDING, UP):
        return deadline_of(row)
    return row["refreshed"] + late_seconds


def pushed_deadline(deadline, interval_seconds, maintenance):
    """The end rule applied to a deadline (of something neither down nor
    paused): while a maintenance window covers it, it cannot go down before
    the window's end plus its interval.

    :param maintenance: None, or ``(until, window)``: the window covering
        it now that ends last.
    """
    if maintenance is None or deadline is None:
        return deadline
    return max(deadline, maintenance[0] + interval_seconds)


def _shown_deadline(row, maintenance):
    """A heartbeat's or a member's deadline as the API shows it: None when
    paused; the one it missed when down; else pushed by a covering window."""
    if row["status"] == PAUSED:
        return None
    if row["status"] == DOWN:
        return deadline_of(row)
    return pushed_deadline(deadline_of(row), row["interval_seconds"], maintenance)


def _interval_text(row, field, seconds):
    """An interval as the history quotes it: as the heartbeat's document
    wrote it (``field``), else (a member's row) in the same syntax."""
    return _optional(row, field) or seconds_text(seconds)


def _run_text(row, refreshed):
    """For a heartbeat with a schedule, the run a reason is about (its
    refresh is that run: :func:`refresh_time`), in its zone: `` after the
    run of 2027-01-12 02:00 CET``; else nothing."""
    if not _optional(row, "schedule"):
        return ""
    local = datetime.datetime.fromtimestamp(refreshed, schedule_zone(row["tz"]))
    return f" after the run of {local:%Y-%m-%d %H:%M} {local.tzname()}"


def expiry_steps(row, now, covered_until, member=False):
    """The transitions due by ``now`` for a heartbeat or a member: the one
    expiry state machine, a pure function of (row, now, covering), so it is
    tested on plain dicts.

    Pending or up with a ``late_seconds``: late at its late time; then (or
    without one) down at its deadline (:func:`due_of`); a member down for
    its ``retire_seconds`` retires (:func:`member_due_of`). A step falling
    due while a maintenance window covers the row does not happen: the
    refresh moves to the window's end instead (what the end rule would give
    it), and the machine goes on from there (a tick late by more than an
    interval may see several steps).

    :param row: a mapping with ``status``, ``refreshed``, ``alarm_since``,
        ``interval_seconds``, ``late_seconds`` (and a member's
        ``retire_seconds``); a heartbeat's ``expected_interval`` and
        ``late_after`` are quoted in the reasons.
    :param covered_until: a function of a time giving the end of the
        maintenance window covering the row then (the one ending last), or
        None when none does.
    :param member: the row is a member's (it retires).
    :returns: ``(steps, (status, refreshed, alarm_since))``: the steps
        ``(old status, new status, at, reason)`` in order, and the state
        after them (status :data:`RETIRED` when the member retired).
    """
    state = dict(row)
    steps = []
    while True:
        status = state["status"]
        if member:
            at = member_due_of(state)
        else:
            at = None if status in (DOWN, PAUSED) else due_of(state)
        if at is None or at > now:
            break
        if status == DOWN:  # a member down for retire_seconds
            steps.append((DOWN, RETIRED, at, f"member retired: down for {seconds_text(state['retire_seconds'])}"))
            state["status"] = RETIRED
            break
        until = covered_until(at)
        if until is not None:
            state["refreshed"] = until
        elif status in (PENDING, UP) and state["late_seconds"] is not None:
            reason = "no matching event for " + _interval_text(row, "late_after", state["late_seconds"])
            steps.append((status, LATE, at, reason + _run_text(row, state["refreshed"])))
            state["status"], state["alarm_since"] = LATE, at
        else:
            reason = "no matching event for " + _interval_text(row, "expected_interval", state["interval_seconds"])
            steps.append((status, DOWN, at, reason + _run_text(row, state["refreshed"])))
            state["status"], state["alarm_since"] = DOWN, at
    return steps, (state["status"], state["refreshed"], state["alarm_since"])


def next_tick_at(now, earliest_deadline, next_boundary=None):
    """When the engine needs its next tick, after one at ``now``: at the
    earliest transition of a heartbeat neither down nor paused (None: there
    is none), at the next start or end of a maintenance window (None: there
    is none), and at the latest when the next alive record is due."""
    times = [t for t in (earliest_deadline, next_boundary) if t is not None]
    return min([now + ALIVE_INTERVAL_SECONDS, *(max(now, t) for t in times)])


def with_refresh(row, refreshed):
    """``row`` as it reads once a refresh kept in memory (not yet written)
    is counted: refreshed and last event at ``refreshed``; None: as is."""
    if refreshed is None:
        return row
    return {**dict(row), "refreshed": refreshed, "last_event": refreshed}


def seconds_text(seconds):
    """A duration in the syntax of expected_interval when it is one ("5m",
    "2h"), else in seconds ("7.3s")."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds, 1):g}s"


def iso_time(t):
    """Unix seconds as ISO 8601 UTC text, to the second (for the log)."""
    return datetime.datetime.fromtimestamp(t, UTC_ZONE).isoformat(timespec="seconds")


def api_time(value):
    """A time as the API shows it: Unix seconds to the millisecond, or None."""
    if value is None:
        return None
    value = round(float(value), 3)  # SQLite may hand back an integral REAL as an int
    return int(value) if value.is_integer() else value


def status_document(row, maintenance=None):
    """``GET /api/v2/heartbeat/<id>/status`` for a heartbeat row.

    :param maintenance: None, or ``(until, window)``: the maintenance window
        covering the heartbeat now that ends last. Its deadline then says
        when it can go down at the earliest: not before until + interval
        (the end rule). A paused heartbeat has no deadline.
    """
    return {
        "_id": row["id"],
        "status": row["status"],
        "last_event": api_time(row["last_event"]),
        "deadline": api_time(_shown_deadline(row, maintenance)),
        "alarm_since": api_time(row["alarm_since"]),
        "maintenance": None if maintenance is None else {
            "_id": maintenance[1].id, "name": maintenance[1].name, "until": api_time(maintenance[0])},
    }


def alarm_event(row, state, timestamp, member=None, output=None):
    """The check event Canopsis' engine-heartbeat emits for a heartbeat.

    :param row: the heartbeat row (``id``, ``name``, ``output``, ``pattern``).
    :param state: :data:`ALARM_STATE` (down), :data:`LATE_STATE` or
        :data:`RESOLVED_STATE`.
    :param timestamp: Unix seconds (sent as an integer, as Canopsis does).
    :param member: for a member of a grouped heartbeat, its pairs (a dict):
        they join the pattern's in ``resource``, and the event says
        ``member``.
    :param output: the event's ``output`` in place of the heartbeat's (a
        failed job's own words), or None.
    """
    pairs = json.loads(row["pattern"])
    if member is not None:
        pairs.update(member)
    event = {
        "connector": "heartbeat",
        "connector_name": "heartbeat",
        "event_type": "check",
        "source_type": "resource",
        "component": "heartbeats",
        "resource": ".".join(f"{key}:{value}" for key, value in sorted(pairs.items())),
        "state": state,
        "output": row["output"] if output is None else output,
        "timestamp": int(timestamp),
        "heartbeat_id": row["id"],
        "heartbeat_name": row["name"],
    }
    if member is not None:
        event["member"] = member
    return event


#: the reason recorded when a grouped heartbeat's status follows its members'
GROUP_REASONS = {
    DOWN: "a member is down", LATE: "a member is late, none down",
    PENDING: "a member is pending (or none is left), none late or down", UP: "every member is up",
}


def raised_output(row, outputs):
    """The output the open alarm of ``row`` (a heartbeat's, or a member's
    joined with its heartbeat) was raised with in place of its heartbeat's
    (a failure ping's), or None; ``outputs`` as :meth:`Store.alarm_outputs`."""
    opened, output = outputs.get((row["id"], row["member"] if "member" in row.keys() else ""), (None, None))
    return output if opened is not None and opened == row["alarm_since"] else None  # else a former alarm's


def active_alarm(row, outputs=None):
    """An entry of ``GET /api/v2/alarms``: the alarm event (state 3 when
    down, 1 when late) plus ``since``; ``row`` a heartbeat's, or a member's
    joined with its heartbeat. ``outputs``: see :func:`raised_output`, so
    that the event listed is the event raised."""
    state = LATE_STATE if row["status"] == LATE else ALARM_STATE
    member = json.loads(row["member"]) if "member" in row.keys() else None
    output = raised_output(row, outputs or {})
    return {**alarm_event(row, state, row["alarm_since"], member, output), "since": api_time(row["alarm_since"])}


INTAKE_COMPONENT, INTAKE_RESOURCE = "heartbeat-lite", "intake"


def intake_output(silence_seconds):
    """The ``output`` of the intake silence's alarm."""
    return (f"no event received for {seconds_text(silence_seconds)}: the feed into the monitor may be "
            "broken; heartbeat deadlines are stopped until events come back")


def intake_event(state, timestamp, output):
    """The one alarm (or its resolution) of an intake silence: the shape of
    :func:`alarm_event`, for ``component`` heartbeat-lite, ``resource``
    intake, no heartbeat (``heartbeat_id`` null); ``output`` from
    :func:`intake_output`."""
    return {
        "connector": "heartbeat",
        "connector_name": "heartbeat",
        "event_type": "check",
        "source_type": "resource",
        "component": INTAKE_COMPONENT,
        "resource": INTAKE_RESOURCE,
        "state": state,
        "output": output,
        "timestamp": int(timestamp),
        "heartbeat_id": None,
        "heartbeat_name": "intake",
    }


def member_document(row, maintenance=None, refreshed=None):
    """An entry of ``GET .../members`` for a member row: as
    :func:`status_document` (``maintenance`` the same), the member's pairs
    in place of the id. ``refreshed``: a refresh kept in memory, or None."""
    row = with_refresh(row, refreshed)
    return {"member": json.loads(row["member"]), "status": row["status"], "last_event": api_time(row["last_event"]),
            "deadline": api_time(_shown_deadline(row, maintenance)), "alarm_since": api_time(row["alarm_since"])}


def status_counts(counts):
    """``{status: members}`` with every status of :data:`STATUSES` named,
    the worst first."""
    return {status: counts.get(status, 0) for status in STATUSES}


class MaintenanceWindow:
    """A maintenance window as the engine uses it: its occurrences as Unix
    time intervals ``[start, start + length)``.

    Occurrences follow the zone's wall time: the rule (``dateutil.rrule``,
    started at the local ``start``) yields local times, each made a Unix time
    in the zone; one that does not exist that day (a daylight saving gap) is
    skipped, as RFC 5545 says, and an ambiguous one (the hour repeated when
    clocks go back) is its first occurrence (fold=0). Each lasts the exact
    length of the first one, ``end - start`` (RFC 5545's "exact duration").

    Occurrence starts are computed once, lazily, and kept in a sorted list
    extended as time goes on: a question about any time is a bisection.
    Safe to share between threads.

    :param row: the window's store row.
    """

    def __init__(self, row, now=None):
        self.id = row["id"]
        self.name = row["name"]
        self.pattern = json.loads(row["pattern"])
        self.row = row
        #: when this engine learned of the window (created or replaced), or None
        #: for one loaded at start: boundaries before that are not its own
        self.known_since = None
        zone = time_zone(row["timezone"])
        start = datetime.datetime.fromisoformat(row["start_local"])
        end = datetime.datetime.fromisoformat(row["end_local"])
        self.length = local_timestamp(end, zone) - local_timestamp(start, zone)
        self._zone = zone
        #: occurrences starting before this are not kept (None: all of them)
        self._floor = None if now is None else now - self.length - MAINTENANCE_LOOKBACK_SECONDS
        if not row["rrule"]:
            self._local = iter([start])
        else:
            rule = recurrence_rule(row["rrule"], start)  # checked again: a row may predate a check
            if self._floor is not None:
                rule = rule.after(datetime.datetime.fromtimestamp(self._floor, zone).replace(tzinfo=None))
            self._local = rule.bounded()
        self._starts = []  # Unix times, ascending
        self._exhausted = False
        self._lock = threading.Lock()
        if now is not None:
            self._starts_past(now)  # the work done here, by the caller, before the engine's lock

    def selects(self, pattern):
        """True when ``pattern`` (a heartbeat's, a dict) has all of the window's pairs."""
        return all(pattern.get(key) == value for key, value in self.pattern.items())

    def _starts_past(self, t):
        """The starts, computed until one is after ``t`` (or there is no more).

        Each step is bounded (:meth:`BoundedRule.bounded`): a rule with no
        occurrence within :data:`RRULE_SEARCH_MONTHS` is over (logged).
        Only :data:`MAINTENANCE_KEPT_STARTS` starts are kept, the ones
        before ``t`` by :data:`MAINTENANCE_LOOKBACK_SECONDS` left out first."""
        with self._lock:
            starts = self._starts
            while not self._exhausted and (not starts or starts[-1] <= t):
                try:
                    local = next(self._local)
                except StopIteration:
                    self._exhausted = True
                    break
                except (RuleTooSparse, ArithmeticError, LookupError) as exc:
                    self._exhausted = True
                    log.warning("maintenance window %s ('%s') has no occurrence after %s within %d years (%s): "
                                "it protects nothing from then on", self.id, log_safe(self.name),
                                iso_time(starts[-1]) if starts else "its start", RRULE_SEARCH_MONTHS // 12,
                                type(exc).__name__)
                    break
                start = local_timestamp(local, self._zone)
                if start is None or (starts and start <= starts[-1]):
                    continue
                if self._floor is not None and start < self._floor:
                    continue  # a COUNT rule, iterated from its start
                starts.append(start)
                if len(starts) > MAINTENANCE_KEPT_STARTS:
                    starts = starts[bisect.bisect_left(starts, t - self.length - MAINTENANCE_LOOKBACK_SECONDS):]
                    self._starts = starts  # a new list: callers bisect the one they got
            return starts

    def occurrence_at(self, t):
        """``(start, end)`` of the occurrence covering ``t`` (start <= t < end),
        or None. Of overlapping occurrences, the one ending last."""
        starts = self._starts_past(t)
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and t < starts[i] + self.length:
            return starts[i], starts[i] + self.length
        return None

    def next_boundary(self, t):
        """The first start or end of an occurrence after ``t``, or None."""
        starts = self._starts_past(t)
        i = bisect.bisect_right(starts, t)
        times = [starts[i]] if i < len(starts) else []
        if i and starts[i - 1] + self.length > t:
            times.append(starts[i - 1] + self.length)
        return min(times, default=None)

    def last_end(self, after, until):
        """The last end of an occurrence in ``(after, until]``, or None."""
        starts = self._starts_past(until)
        i = bisect.bisect_right(starts, until - self.length) - 1
        if i >= 0 and starts[i] + self.length > after:
            return starts[i] + self.length
        return None

    def last_start(self, after, until):
        """The last start of an occurrence in ``(after, until]``, or None."""
        starts = self._starts_past(until)
        i = bisect.bisect_right(starts, until) - 1
        return starts[i] if i >= 0 and starts[i] > after else None

    def started(self, after, until):
        """True when an occurrence started in ``(after, until]``."""
        starts = self._starts_past(until)
        return bisect.bisect_right(starts, until) > bisect.bisect_right(starts, after)


#: statuses whose time counts neither for nor against availability: section
#: 10's pause and maintenance windows, and pending (waiting for a first
#: event: a job that never ran is not available, nor is it down yet)
UNCOUNTED_STATUSES = frozenset({PAUSED, MAINTENANCE, PENDING})


def availability(changes, now, window):
    """The share of the ``window`` seconds before ``now`` a heartbeat was not
    down, from its state changes; pure, so it is tested on plain lists.

    :param changes: ``(at, status)`` pairs, oldest first, each the status
        entered at ``at``; the last one before the window gives the state at
        its start. Time before the first change is not counted (the
        heartbeat did not exist yet, or its history was pruned), nor time
        in a status of :data:`UNCOUNTED_STATUSES` (paused, maintenance,
        pending); up and late count as available, down against. A backup
        that never ran is None while pending, then 0 once down.
    :returns: a ratio from 0 to 1, or None when no time in the window counts
        (created this instant, or paused all along): "unknown", not "perfect".
    """
    start = now - window
    available = down = 0.0
    for i, (at, status) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else now
        seconds = min(until, now) - max(at, start)
        if seconds <= 0 or status in UNCOUNTED_STATUSES:
            continue
        if status == DOWN:
            down += seconds
        else:
            available += seconds
    counted = available + down
    return round(available / counted, 6) if counted > 0 else None


class _KeptEvent(bytes):
    """An event kept for showing back: its compact JSON, UTF-8, whole (see
    :func:`kept_event`). Bytes, not the dicts it was parsed into: an event
    of 4 KiB of ``{}`` pairs is ~89 KB as Python objects."""

    __slots__ = ()
    truncated = False


class _CutEvent(_KeptEvent):
    """An event kept cut: the first :data:`MAX_SHOWN_EVENT_BYTES` of its
    JSON (on a character boundary), as shown back."""

    __slots__ = ()
    truncated = True


def kept_event(event, limit=MAX_SHOWN_EVENT_BYTES):
    """``event`` (a dict) as kept for ``/events``: a :class:`_KeptEvent`, or
    a :class:`_CutEvent` when its JSON is over ``limit`` bytes
    or holds a lone surrogate (replaced by ``?``). One encoding."""
    text = _ENCODER.encode(event)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    else:
        if len(raw) <= limit:
            return _KeptEvent(raw)
    return _CutEvent(raw[:limit].decode("utf-8", "ignore").encode("utf-8"))


def ping_record(kind, method, client, body_text, cut=False, rid=None, exit_status=None, duration=None):
    """A ping as ``/events`` shows it (as its ``event``): what it said
    (``kind``: success, start, fail or log), how it came (``method``, the
    ``client``'s address), its ``body`` (cut at
    :data:`PING_BODY_LIMIT_BYTES`: ``body_truncated``), and when given its
    run's ``rid``, its ``exit_status`` and the run's ``duration`` (seconds)."""
    record = {"kind": kind, "method": method, "client": client, "body": body_text}
    if cut:
        record["body_truncated"] = True
    if rid is not None:
        record["rid"] = rid
    if exit_status is not None:
        record["exit_status"] = exit_status
    if duration is not None:
        record["duration"] = duration
    return record


def shown_event(event):
    """An event (or any JSON value, or a kept event) as the API shows it
    back: ``(value, truncated)``. One whose compact JSON is over
    :data:`MAX_SHOWN_EVENT_BYTES` is replaced by that JSON text (a string),
    cut on a character boundary to at most that many bytes, and
    ``truncated`` is True; so is one holding a lone surrogate, which UTF-8
    cannot carry (replaced by ``?`` in the text)."""
    if isinstance(event, _KeptEvent):
        return (event.decode("utf-8"), True) if event.truncated else (json.loads(event), False)
    text = _ENCODER.encode(event)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "replace")
    else:
        if len(raw) <= MAX_SHOWN_EVENT_BYTES:
            return event, False
    return raw[:MAX_SHOWN_EVENT_BYTES].decode("utf-8", "ignore"), True


def _kept_event_overhead():
    """Bytes a kept event costs beyond its JSON: the bytes object's header,
    its ``(time, event)`` tuple, the float and the list's slot."""
    return sys.getsizeof(_KeptEvent(b"")) + sys.getsizeof((0.0, None)) + sys.getsizeof(0.0) + 8


def _kept_list_overhead():
    """Bytes a heartbeat's list costs beyond its events: the list as grown
    by appends (over-allocated), and its slot in the dict of lists."""
    grown = []
    for _ in range(RECENT_EVENTS_PER_HEARTBEAT + 1):
        grown.append(None)
    del grown[0]
    return sys.getsizeof(grown) + 64


KEPT_EVENT_OVERHEAD_BYTES = _kept_event_overhead()
KEPT_LIST_OVERHEAD_BYTES = _kept_list_overhead()
#: what one kept event may cost at most (its JSON is cut to MAX_SHOWN_EVENT_BYTES)
MAX_KEPT_EVENT_BYTES = MAX_SHOWN_EVENT_BYTES + KEPT_EVENT_OVERHEAD_BYTES


def pattern_test(pattern, received):
    """Which received events match ``pattern`` (as the engine matches:
    string equality, a number never equals a string), and which come close.

    :param received: ``(receive time, event)`` pairs, oldest first.
    :returns: ``(matched, near misses)``, each newest first and at most
        :data:`MAX_PATTERN_TEST_RESULTS`: ``(time, event)`` pairs, and
        ``(time, event, {key: (expected, got or None)})`` for events that
        match at least one pair of the pattern but not all, fewest
        mismatched pairs first (ties: newest first).
    """
    matched, near = [], []
    for order, (at, event) in enumerate(reversed(received)):
        mismatched = {}
        for key, expected in pattern.items():
            got = event.get(key)
            if not (isinstance(got, str) and got == expected):
                mismatched[key] = (expected, got if key in event else None)
        if not mismatched:
            if len(matched) < MAX_PATTERN_TEST_RESULTS:
                matched.append((at, event))
        elif len(mismatched) < len(pattern):
            near.append((len(mismatched), order, at, event, mismatched))
    near.sort(key=lambda item: item[:2])
    return matched, [(at, event, mismatched) for _, _, at, event, mismatched in near[:MAX_PATTERN_TEST_RESULTS]]


def shown_item(at, event):
    """``{"received", "event", "truncated"}`` for an event received at ``at``."""
    shown, truncated = shown_event(event)
    return {"received": api_time(at), "event": shown, "truncated": truncated}


def shown_value(value):
    """An event's value as the pattern tester shows it: strings, numbers,
    booleans and null as they are; objects and arrays as :func:`shown_event`
    shows them (cut); a string with a lone surrogate with ``?`` for it."""
    if isinstance(value, str) and not _is_text(value):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, (dict, list)):
        return shown_event(value)[0]
    return value


class RecentEvents:
    """The events received lately, in memory only (gone at a restart),
    bounded by bytes: the bodies of the last requests holding
    :data:`RECENT_EVENTS_RECEIVED` events (at most
    :data:`RECENT_RECEIVED_MAX_BYTES`, the newest always), for the pattern
    tester, and the last :data:`RECENT_EVENTS_PER_HEARTBEAT` matching events
    of each heartbeat, its list made at its first match; at most
    :data:`RECENT_EVENTS_MAX_HEARTBEATS` such lists and
    :data:`RECENT_EVENTS_MAX_BYTES` for them all, the oldest made dropped
    first.

    Kept compactly: a request's body as it came (bytes, no copy: the
    pattern tester parses it again when asked), and a heartbeat's events as
    their compact JSON, cut to :data:`MAX_SHOWN_EVENT_BYTES`
    (:func:`kept_event`): one kept event costs at most
    :data:`MAX_KEPT_EVENT_BYTES`.

    Recording costs the ingestion path one append per request and, per
    heartbeat whose refresh is written (at most one per
    :data:`REFRESH_WRITE_SECONDS` each: a sample of its matching events; a
    heartbeat matched several times in one request records the last of
    those events), one append and the encoding of its event (once per
    event, however many heartbeats record it). Appends happen under the
    engine's lock; readers take copies (a list's or a deque's copy runs
    without a thread switch).
    """

    def __init__(self):
        # (time, a request's body, its number of events), oldest first
        self._received = collections.deque()
        self._received_count = 0
        self._received_bytes = 0
        self._matching = {}  # heartbeat id -> list of (time, kept event), oldest first
        self._matching_bytes = 0  # what the lists cost, their events' JSON and overheads

    def add(self, now, events, found, heartbeat_ids=(), members=(), body=None, limit=MAX_SHOWN_EVENT_BYTES):
        """Record the request of ``events`` received at ``now``, and the
        matching event of the heartbeats whose refresh is written now.

        :param found: ``{heartbeat id: the last of the events that matched
            it}`` (:meth:`PatternIndex.match`): a heartbeat records one event
            per request (a batch that matches it ten times would otherwise
            cost ten records, and push out its earlier requests).
        :param heartbeat_ids: the heartbeats whose refresh is written now
            (``ReadModel.refreshed``'s ``to_write``): only those record their
            event, so a heartbeat records at most one event per
            :data:`REFRESH_WRITE_SECONDS` (its refreshes in between are kept
            in memory, and so are not recorded).
        :param members: ``(heartbeat id, keys, values)`` of the members whose
            refresh is written now: their heartbeat records its event.
        :param body: the request's body (bytes), kept as it is; anything
            else (None, its size) has ``events`` encoded instead.
        :param limit: a kept event's JSON is cut at this many bytes (a ping's,
            :func:`ping_record`, at :data:`MAX_SHOWN_PING_BYTES`).
        :returns: the entries it let go, for the caller to drop once it has
            released the engine's lock.
        """
        dropped = []
        if events:
            if not isinstance(body, bytes):
                body = _ENCODER.encode(events).encode("utf-8", "replace")
            received = self._received
            received.append((now, body, len(events)))
            self._received_count += len(events)
            self._received_bytes += len(body)
            while len(received) > 1 and (self._received_count - received[0][2] >= RECENT_EVENTS_RECEIVED
                                         or self._received_bytes > RECENT_RECEIVED_MAX_BYTES):
                dropped.append(received.popleft())
                self._received_count -= dropped[-1][2]
                self._received_bytes -= len(dropped[-1][1])
        if members:
            heartbeat_ids = list(heartbeat_ids) + list(dict.fromkeys(item[0] for item in members))
        matching = self._matching
        get = matching.get
        encoded = {}  # id(event) -> kept: an event several heartbeats record is encoded once
        for heartbeat_id in heartbeat_ids:
            event = found.get(heartbeat_id)
            if event is None:
                continue
            kept = encoded.get(id(event))
            if kept is None:
                kept = encoded[id(event)] = kept_event(event, limit)
            recent = get(heartbeat_id)
            if recent is None:
                if len(matching) >= RECENT_EVENTS_MAX_HEARTBEATS:
                    dropped.append(self._drop_oldest_list())
                recent = matching[heartbeat_id] = []
                self._matching_bytes += KEPT_LIST_OVERHEAD_BYTES
            recent.append((now, kept))
            self._matching_bytes += len(kept) + KEPT_EVENT_OVERHEAD_BYTES
            if len(recent) > RECENT_EVENTS_PER_HEARTBEAT:
                self._matching_bytes -= len(recent[0][1]) + KEPT_EVENT_OVERHEAD_BYTES
                del recent[0]
        while self._matching_bytes > RECENT_EVENTS_MAX_BYTES and matching:
            dropped.append(self._drop_oldest_list())
        return dropped

    def _drop_oldest_list(self):
        heartbeat_id = next(iter(self._matching))
        return self._forget(heartbeat_id)

    def _forget(self, heartbeat_id):
        recent = self._matching.pop(heartbeat_id, None)
        if recent is not None:
            self._matching_bytes -= KEPT_LIST_OVERHEAD_BYTES + sum(
                len(kept) + KEPT_EVENT_OVERHEAD_BYTES for _, kept in recent)
        return recent

    def forget(self, heartbeat_id):
        self._forget(heartbeat_id)

    def kept_bytes(self):
        """``(heartbeats' lists, request bodies)``: the bytes each holds, as
        bounded by :data:`RECENT_EVENTS_MAX_BYTES` and
        :data:`RECENT_RECEIVED_MAX_BYTES`."""
        return self._matching_bytes, self._received_bytes

    def matching(self, heartbeat_id):
        """``(time, kept event)`` of a heartbeat's last matching events,
        oldest first (see :func:`shown_event`)."""
        recent = self._matching.get(heartbeat_id)
        return recent[:] if recent is not None else []

    def all_received(self):
        """``(time, event)`` of the last events received, oldest first: the
        kept bodies parsed again (at most :data:`RECENT_RECEIVED_MAX_BYTES`)."""
        received = []
        for now, body, _ in self._received.copy():
            value = parse_json(body, duplicate_keys=True)
            received.extend((now, event) for event in ([value] if isinstance(value, dict) else value))
        return received[-RECENT_EVENTS_RECEIVED:]


class PatternIndex:
    """Which heartbeat owns a pattern.

    Two views of the same patterns, both always up to date:

    - by key set: for each distinct set of keys, a table from the values
      (in sorted key order) to the heartbeat. An event costs one look-up
      per key set: the fastest way when patterns use a few key sets, the
      common case (a 1,000-event batch is 1,000 matches);
    - a trie of the patterns' ``(key, value)`` pairs, each pattern's pairs
      in sorted order, walked through the nodes whose pairs the event has
      (looking the event's pairs up among a node's children, never the
      other way round): an event costs about its pairs times the depth of
      the patterns it (partly) matches, whatever the number of heartbeats
      and however many key sets their patterns use.

    :meth:`match` scans the key sets while there are at most
    :data:`KEY_SETS_SCANNED` of them, and walks the trie beyond. Not
    thread-safe: the engine's lock guards changes.
    """

    def __init__(self):
        self._by_keys = {}  # sorted keys -> {values in that key order: heartbeat id}
        self._root = _TrieNode()
        self._owners = {}  # key -> {value -> the id (one) or ids (a set) of the heartbeats whose pattern has the pair}

    def add(self, heartbeat_id, pattern):
        pairs = sorted(pattern.items())
        keys, values = tuple(key for key, _ in pairs), tuple(value for _, value in pairs)
        self._by_keys.setdefault(keys, {})[values] = heartbeat_id
        for key, value in pairs:
            owners_by_value = self._owners.get(key)
            if owners_by_value is None:
                owners_by_value = self._owners[key] = {}
            owners = owners_by_value.get(value)
            if owners is None:
                owners_by_value[value] = heartbeat_id  # one owner: the id itself (most pairs; a set costs 200 bytes)
            elif type(owners) is str:
                owners_by_value[value] = {owners, heartbeat_id}
            else:
                owners.add(heartbeat_id)
        node = self._root
        for pair in pairs:
            if node.children is _NO_CHILDREN:
                node.children = {}
            node = node.children.setdefault(pair, _TrieNode())
        node.heartbeat_id = heartbeat_id

    def remove(self, pattern):
        pairs = sorted(pattern.items())
        keys, values = tuple(key for key, _ in pairs), tuple(value for _, value in pairs)
        table = self._by_keys.get(keys, {})
        heartbeat_id = table.pop(values, None)
        if not table:
            self._by_keys.pop(keys, None)
        if heartbeat_id is not None:
            for key, value in pairs:
                owners_by_value = self._owners.get(key, {})
                owners = owners_by_value.get(value)
                if type(owners) is str:
                    if owners == heartbeat_id:
                        del owners_by_value[value]
                        if not owners_by_value:
                            del self._owners[key]
                elif owners is not None:
                    owners.discard(heartbeat_id)
                    if len(owners) == 1:
                        owners_by_value[value] = next(iter(owners))
        path = [self._root]
        for pair in pairs:
            node = path[-1].children.get(pair)
            if node is None:
                return
            path.append(node)
        path[-1].heartbeat_id = None
        for pair, node, parent in zip(reversed(pairs), reversed(path), reversed(path[:-1])):
            if node.children or node.heartbeat_id is not None:
                break
            del parent.children[pair]  # prune what no pattern uses any more

    def containing(self, pattern):
        """The ids of the heartbeats whose pattern has every pair of
        ``pattern`` (a dict; ``{}``: every heartbeat), as a new set: what a
        maintenance window selects. Costs the smallest of its pairs' sets
        of heartbeats; safe to call without the engine's lock (the sets are
        copied and intersected in C, under the GIL)."""
        if not pattern:  # each table's ids copied in C, a list of the tables first: no size changes under us
            return set().union(*[set(table.values()) for table in list(self._by_keys.values())])
        owners = [self._owners.get(key, _NO_CHILDREN).get(value, _NO_IDS) for key, value in pattern.items()]
        owners = [{item} if type(item) is str else item for item in owners]
        owners.sort(key=len)
        return owners[0].intersection(*owners[1:])

    def match(self, events, groups=None, members=None):
        """Ids of the heartbeats whose every ``key: value`` one of the events
        has, with the same string value (a number never equals a string), in
        order of first match, without duplicates (a list; see :meth:`matches`)."""
        return list(self.matches(events, groups, members))

    def matches(self, events, groups=None, members=None):
        """:meth:`match`, as a dict of each id to the last of the events that
        matched it (at no extra cost: the dict is built anyway; ingestion
        keeps it for the recent events).

        :param groups: ``{heartbeat id: its group_by keys, sorted}`` of the
            grouped heartbeats: an event matches one of those only when it
            has a string for each key (:func:`member_values`), and names a
            member, added to ``members`` as ``(heartbeat id, values)``.
        """
        found = {}
        groups = groups or _NO_CHILDREN
        if len(self._by_keys) <= KEY_SETS_SCANNED:
            tables = [(_values_getter(keys), table) for keys, table in self._by_keys.items()]
            if len(tables) == 1:  # one key set (a batch of one source's events): looked up in C
                values, table = tables[0]
                try:
                    ids = list(map(table.get, map(values, events)))
                except (KeyError, TypeError):  # one lacks a key or has a list: event by event, below
                    ids = None
                if ids is not None and (groups is _NO_CHILDREN or groups.keys().isdisjoint(ids)):
                    found = dict(zip(ids, events))  # the first match's place, the last match's event
                    found.pop(None, None)
                    return found
            for event in events:  # the hot loop of ingestion: kept flat
                for values, table in tables:
                    try:
                        heartbeat_id = table.get(values(event))
                    except (KeyError, TypeError):  # a key is missing; a value is a list or an object
                        continue
                    if heartbeat_id is not None:
                        if heartbeat_id in groups:
                            values = member_values(event, groups[heartbeat_id])
                            if values is None:
                                continue
                            members[(heartbeat_id, values)] = None
                        found[heartbeat_id] = event
        else:
            for event in events:
                for heartbeat_id in self._walk_trie(event):
                    if heartbeat_id in groups:
                        values = member_values(event, groups[heartbeat_id])
                        if values is None:
                            continue
                        members[(heartbeat_id, values)] = None
                    found[heartbeat_id] = event
        return found

    def _walk_trie(self, event):
        # A node's children all sort after its own pair, so looking every
        # pair of the event up at every node finds exactly the paths in
        # sorted order, with no need to sort the event.
        pairs = [item for item in event.items() if type(item[1]) is str]
        found = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.heartbeat_id is not None:
                found.append(node.heartbeat_id)
            children = node.children
            if children:
                for pair in pairs:
                    child = children.get(pair)
                    if child is not None:
                        stack.append(child)
        return found


_NO_IDS = frozenset()


def _values_getter(keys):
    """A function of an event giving the tuple of its values at ``keys``
    (KeyError when one is missing), in C."""
    getter = operator.itemgetter(*keys)
    return getter if len(keys) > 1 else lambda event: (getter(event),)


_NO_CHILDREN = {}  # shared by every leaf (most nodes): never written to


class _TrieNode:
    __slots__ = ("children", "heartbeat_id")

    def __init__(self):
        self.children = _NO_CHILDREN  # (key, value) -> _TrieNode, once it has any
        self.heartbeat_id = None  # the heartbeat whose pattern ends here


class ReadModel:
    """What the engine keeps in memory beside the database, which stays the
    truth and from which this is rebuilt at start (:meth:`loaded`).

    - the pattern index, to match events;
    - each heartbeat's document, JSON-encoded, so GET serves it without a
      database round trip (each sqlite3 call hands the GIL around, which
      under concurrent load costs far more than the query);
    - for each heartbeat that is up, its refresh time as stored, and a later
      one not yet written, if any: a heartbeat already up, refreshed again
      within :data:`REFRESH_WRITE_SECONDS` of its stored refresh, is
      refreshed in memory only and written by the next tick, so a chatty
      source costs one write per half second, not one per event. Except a
      heartbeat whose late time or interval is under
      :data:`COALESCE_MIN_PERIOD_SECONDS`: its refresh is written at once,
      since the database's deadline would otherwise come before the write
      could (another instance's tick sees only the database).

    Invariant, after every committed change (the engine's lock guards it):
    the index and the documents hold exactly the heartbeats of the database;
    ``stored`` holds the refresh time of exactly those that are up in the
    database, as written there; ``unwritten`` only ids of ``stored``, each
    with a time later than its stored one. Every method is named by what
    happened (created, updated, deleted, refreshed, written, went down);
    call it after the change is committed.

    Members of grouped heartbeats have the same: refresh times as stored of
    those up, later ones unwritten (both ``{heartbeat id: {values:
    time}}``, the values of the sorted group_by keys naming the member), and
    how many members each heartbeat has (for the member cap).
    """

    def __init__(self):
        self._index = PatternIndex()
        self._documents = {}  # id -> the GET document, JSON bytes
        self._stored = {}  # id -> refresh time in the database, for heartbeats that are up
        self._unwritten = {}  # id -> later refresh time, not yet in the database
        self._groups = {}  # id of a grouped heartbeat -> its group_by keys, sorted
        self._member_stored = {}  # id -> {values: refresh time in the database}, members up
        self._member_unwritten = {}  # id -> {values: later refresh time}
        self._member_counts = {}  # id -> how many members it has
        self._short = set()  # ids whose refreshes are written at once (see COALESCE_MIN_PERIOD_SECONDS)
        self._slugs = {}  # slug -> id, for the heartbeats that have one (pings address them by it)
        self._push_tokens = {}  # push_token -> id, likewise
        self._schedules = {}  # id -> (schedule, tz), for the heartbeats that have a schedule

    @classmethod
    def loaded(cls, rows, members=()):
        """A read model of ``rows`` (every heartbeat row of the database) and
        ``members`` (``(heartbeat id, key, status, refreshed)`` of every member)."""
        model = cls()
        for row in rows:
            model.created(row)
            if row["status"] == UP and row["id"] not in model._groups:
                model._stored[row["id"]] = row["refreshed"]
        for heartbeat_id, key, status, refreshed in members:
            keys = model._groups.get(heartbeat_id)
            if keys is None:
                continue  # a member of a heartbeat no longer grouped (cannot happen: removed together)
            model._member_counts[heartbeat_id] += 1
            if status == UP:
                member = json.loads(key)
                model._member_stored[heartbeat_id][tuple(member[k] for k in keys)] = refreshed
        return model

    # -- what happened -------------------------------------------------------

    def created(self, row):
        self._index.add(row["id"], json.loads(row["pattern"]))
        self._documents[row["id"]] = dump_json(heartbeat_document(row))
        for names, column in ((self._slugs, "slug"), (self._push_tokens, "push_token")):
            name = _optional(row, column)
            if name is not None:
                names[name] = row["id"]
        schedule = _optional(row, "schedule")
        if schedule is not None:
            self._schedules[row["id"]] = (schedule, row["tz"])
            try:
                time_zone(row["tz"] or "UTC")
            except ValueError:
                log.warning("heartbeat %s ('%s'): time zone '%s' is unknown on this system (tzdata drops some): "
                            "its schedule is read in UTC", row["id"], log_safe(row["name"]), log_safe(row["tz"]))
        else:
            self._schedules.pop(row["id"], None)
        keys = group_keys(row)
        if keys is not None:
            self._groups[row["id"]] = keys
            self._member_stored.setdefault(row["id"], {})
            self._member_unwritten.setdefault(row["id"], {})
            self._member_counts.setdefault(row["id"], 0)
        periods = (_optional(row, "interval_seconds"), _optional(row, "late_seconds"))
        if min((p for p in periods if p is not None), default=math.inf) < COALESCE_MIN_PERIOD_SECONDS:
            self._short.add(row["id"])
        else:
            self._short.discard(row["id"])

    def updated(self, old, new):
        """A heartbeat changed; when its grouping changed (or its pattern,
        for a grouped one), its members went with it (see :meth:`Engine.update`)."""
        self._index.remove(json.loads(old["pattern"]))
        self._forget_names(old["id"], old)
        regrouped = group_keys(old) != group_keys(new) or (group_keys(old) is not None
                                                           and old["pattern"] != new["pattern"])
        if regrouped:
            self._forget_members(old["id"])
            self._groups.pop(old["id"], None)
        if group_keys(new) is not None:
            self._stored.pop(new["id"], None)
            self._unwritten.pop(new["id"], None)
        self.created(new)

    def deleted(self, row):
        self._index.remove(json.loads(row["pattern"]))
        self._forget_names(row["id"], row)
        for memory in (self._documents, self._stored, self._unwritten, self._groups, self._schedules):
            memory.pop(row["id"], None)
        self._forget_members(row["id"])
        self._short.discard(row["id"])

    def _forget_names(self, heartbeat_id, known):
        """Forget the slug and push token of ``known`` (a row or a document)
        if they still name ``heartbeat_id``."""
        for names, column in ((self._slugs, "slug"), (self._push_tokens, "push_token")):
            name = _optional(known, column)
            if name is not None and names.get(name) == heartbeat_id:
                del names[name]

    def _forget_members(self, heartbeat_id):
        for memory in (self._member_stored, self._member_unwritten, self._member_counts):
            memory.pop(heartbeat_id, None)

    def synced(self, heartbeat_id, row):
        """Another instance changed a heartbeat: ``row`` is it as the
        database has it now, None when deleted. What this model held of it
        (its pattern, from its own document) goes; the row comes in."""
        known = self._documents.get(heartbeat_id)
        if known is not None:
            document = json.loads(known)
            self._index.remove(document["pattern"])
            self._forget_names(heartbeat_id, document)
            self._documents.pop(heartbeat_id)
        # Members are kept as if none were known: their first refresh here
        # is written, not coalesced (and counted against the limit from now).
        self._forget_members(heartbeat_id)
        self._groups.pop(heartbeat_id, None)
        if row is None:
            for memory in (self._stored, self._unwritten, self._schedules):
                memory.pop(heartbeat_id, None)
            self._short.discard(heartbeat_id)
            return
        self.created(row)
        if heartbeat_id in self._groups:
            self._stored.pop(heartbeat_id, None)
            self._unwritten.pop(heartbeat_id, None)
            return
        if row["status"] == UP:
            self._stored[heartbeat_id] = row["refreshed"]
        else:  # an unwritten refresh stays: the tick writes it as a refresh (it resolves an alarm)
            self._stored.pop(heartbeat_id, None)

    def refreshed(self, heartbeat_ids, now, keep=True):
        """Split heartbeats refreshed at ``now`` into those to write now and
        those whose refresh can wait in memory (kept here as unwritten);
        none waits unless ``keep``.

        :returns: ``(to_write, kept)``, lists of ids.
        """
        if not keep:
            return heartbeat_ids, []
        recent = self._keepable(heartbeat_ids, now)
        if all(recent):  # the common case, a thousand at a time in a batch: in C
            self._unwritten.update(zip(heartbeat_ids, itertools.repeat(now)))
            return [], heartbeat_ids
        kept = list(itertools.compress(heartbeat_ids, recent))
        if not kept:
            return heartbeat_ids, kept
        to_write = list(itertools.compress(heartbeat_ids, map(operator.not_, recent)))
        self._unwritten.update(zip(kept, itertools.repeat(now)))
        return to_write, kept

    def _keepable(self, heartbeat_ids, now):
        """For each of ``heartbeat_ids``, whether its refresh at ``now`` may
        wait in memory: its stored refresh is recent, and its times are not
        too short to wait."""
        stored_after = now - REFRESH_WRITE_SECONDS  # a refresh stored later than this is recent
        # in C: a batch refreshes a thousand heartbeats
        recent = list(map(operator.lt, itertools.repeat(stored_after),
                          map(self._stored.get, heartbeat_ids, itertools.repeat(-math.inf))))
        short = self._short
        if short:
            recent = [keepable and heartbeat_id not in short for keepable, heartbeat_id in zip(recent, heartbeat_ids)]
        return recent

    def keeps_all(self, heartbeat_ids, now):
        """True when the refreshes at ``now`` of all ``heartbeat_ids`` would
        wait in memory (:meth:`refreshed` would write none)."""
        return all(self._keepable(heartbeat_ids, now))

    def written(self, refreshes):
        """``{id: refresh time}`` are now in the database (those heartbeats
        are up)."""
        for heartbeat_id, refreshed in refreshes.items():
            if heartbeat_id not in self._documents:
                continue  # deleted meanwhile (between the chunks of a storm)
            # a refresh never moves backwards (writes of concurrent requests end in any order)
            self._stored[heartbeat_id] = max(refreshed, self._stored.get(heartbeat_id, refreshed))
            if self._unwritten.get(heartbeat_id, math.inf) <= refreshed:
                del self._unwritten[heartbeat_id]

    def up_among(self, heartbeat_ids):
        """Those of ``heartbeat_ids`` that are up, in their order."""
        stored = self._stored
        return [heartbeat_id for heartbeat_id in heartbeat_ids if heartbeat_id in stored]

    def deferred(self, heartbeat_ids, now):
        """Refreshes at ``now`` that a later chunk of a storm writes: those
        of heartbeats up wait as unwritten, so that a tick in between writes
        them before it looks for what is due."""
        for heartbeat_id in heartbeat_ids:
            if heartbeat_id in self._stored:
                self._unwritten[heartbeat_id] = now

    def unkept(self, refreshes):
        """Refreshes ``{id: time}`` kept as unwritten (:meth:`deferred`) were
        refused after all (their write failed): they are forgotten."""
        for heartbeat_id, refreshed in refreshes.items():
            if self._unwritten.get(heartbeat_id) == refreshed:
                del self._unwritten[heartbeat_id]

    def went_down(self, heartbeat_ids):
        """Those heartbeats left ``up`` other than by a refresh: they went
        late or down, or were paused."""
        for heartbeat_id in heartbeat_ids:
            self._stored.pop(heartbeat_id, None)
            self._unwritten.pop(heartbeat_id, None)

    def members_refreshed(self, members, now, keep=True):
        """As :meth:`refreshed`, for members ``(heartbeat id, values)``.

        :returns: ``(to_write, kept)``: ``(heartbeat id, keys, values)`` to
            write now (``keys`` the group_by keys they go with), and how many
            were kept.
        """
        to_write, kept = [], 0
        for heartbeat_id, values in members:
            if keep and self._member_keepable(heartbeat_id, values, now):
                self._member_unwritten[heartbeat_id][values] = now
                kept += 1
            else:
                to_write.append((heartbeat_id, self._groups[heartbeat_id], values))
        return to_write, kept

    def _member_keepable(self, heartbeat_id, values, now):
        """Whether a member's refresh at ``now`` may wait in memory: its stored refresh is recent."""
        return now - self._member_stored[heartbeat_id].get(values, -math.inf) < REFRESH_WRITE_SECONDS

    def members_kept_all(self, members, now):
        """True when the refreshes at ``now`` of all ``members`` (``(heartbeat
        id, values)``) would wait in memory (:meth:`members_refreshed` would
        write none)."""
        return all(self._member_keepable(heartbeat_id, values, now) for heartbeat_id, values in members)

    def members_written(self, refreshes):
        """``{(heartbeat id, values): refresh time}`` are in the database (those members are up)."""
        for (heartbeat_id, values), refreshed in refreshes.items():
            stored = self._member_stored.get(heartbeat_id)
            if stored is None:
                continue  # deleted or regrouped meanwhile
            stored[values] = refreshed
            unwritten = self._member_unwritten[heartbeat_id]
            if unwritten.get(values, math.inf) <= refreshed:
                del unwritten[values]

    def members_deferred(self, items, now):
        """As :meth:`deferred`, for members ``(heartbeat id, keys, values)``."""
        for heartbeat_id, _, values in items:
            if values in self._member_stored[heartbeat_id]:
                self._member_unwritten[heartbeat_id][values] = now

    def members_went_down(self, heartbeat_id, values_list=None):
        """Those members (all of the heartbeat's, when None) left ``up``
        other than by a refresh."""
        stored, unwritten = self._member_stored.get(heartbeat_id), self._member_unwritten.get(heartbeat_id)
        if stored is None:
            return
        if values_list is None:
            stored.clear()
            unwritten.clear()
            return
        for values in values_list:
            stored.pop(values, None)
            unwritten.pop(values, None)

    def transitioned(self, transitions):
        """Transitions committed (see :class:`Funnel`): heartbeats that came
        up (refreshed then) or left up; members that did, and members
        created or removed. A grouped heartbeat's own status is not kept
        here (its members' are); the transitions of heartbeats deleted or
        regrouped since are of no account."""
        groups, documents, stored, unwritten = self._groups, self._documents, self._stored, self._unwritten
        for transition in transitions:
            heartbeat = transition.heartbeat
            if heartbeat is None:
                continue  # the intake
            heartbeat_id = heartbeat["id"]
            if transition.member is None:
                if heartbeat_id in groups or heartbeat_id not in documents:
                    continue
                if transition.new == UP and transition.refreshed is not None:
                    stored[heartbeat_id] = transition.refreshed
                    if unwritten.get(heartbeat_id, math.inf) <= transition.refreshed:
                        del unwritten[heartbeat_id]
                elif transition.new != UP:
                    stored.pop(heartbeat_id, None)
                    unwritten.pop(heartbeat_id, None)
                continue
            keys = groups.get(heartbeat_id)
            if keys is None:
                continue
            member = json.loads(transition.member)
            values = tuple(member[key] for key in keys)
            if transition.old is None:
                self._member_counts[heartbeat_id] += 1
            if transition.new == UP:
                self.members_written({(heartbeat_id, values): transition.refreshed})
            elif transition.new in (DELETED, RETIRED):
                self.members_removed(heartbeat_id, [values])
            else:
                self.members_went_down(heartbeat_id, [values])

    def members_added(self, heartbeat_id, count):
        if heartbeat_id in self._member_counts:
            self._member_counts[heartbeat_id] += count

    def members_removed(self, heartbeat_id, values_list):
        """Those members were deleted (or retired)."""
        if heartbeat_id not in self._member_counts:
            return
        self.members_went_down(heartbeat_id, values_list)
        self._member_counts[heartbeat_id] -= len(values_list)

    # -- questions -----------------------------------------------------------

    def match(self, events, members=None):
        """Ids of the heartbeats the events match (see
        :meth:`PatternIndex.match`); the members they name go to
        ``members`` (a dict used as an ordered set)."""
        return list(self.matches(events, members))

    def matches(self, events, members=None):
        """:meth:`match`, as :meth:`PatternIndex.matches`: ``{id: the last
        event that matched it}``."""
        return self._index.matches(events, self._groups, {} if members is None else members)

    def plain(self, heartbeat_ids):
        """Those of ``heartbeat_ids`` that are not grouped."""
        groups = self._groups
        return [heartbeat_id for heartbeat_id in heartbeat_ids if heartbeat_id not in groups]

    def group_keys(self, heartbeat_id):
        """A grouped heartbeat's group_by keys, sorted; None when it is not."""
        return self._groups.get(heartbeat_id)

    def member_count(self, heartbeat_id):
        return self._member_counts.get(heartbeat_id, 0)

    def member_total(self):
        """How many members every heartbeat has together."""
        return sum(self._member_counts.values())

    def member_is_up(self, heartbeat_id, values):
        return values in self._member_stored.get(heartbeat_id, _NO_CHILDREN)

    def member_values(self, heartbeat_id, key):
        """The values (sorted group_by key order) of member ``key``."""
        member = json.loads(key)
        return tuple(member[k] for k in self._groups[heartbeat_id])

    def unwritten_members(self, heartbeat_id=None):
        """The member refreshes waiting to be written, ``[(heartbeat id,
        values, time)]`` (of one heartbeat, or all)."""
        ids = self._member_unwritten if heartbeat_id is None else [heartbeat_id]
        return [(hid, values, t) for hid in ids for values, t in self._member_unwritten.get(hid, {}).items()]

    def member_unwritten_refresh(self, heartbeat_id, values):
        return self._member_unwritten.get(heartbeat_id, _NO_CHILDREN).get(values)

    def moved(self, heartbeat_id, refreshed):
        """A heartbeat's refresh was set to ``refreshed`` (earlier, maybe: its
        schedule changed), not by a refresh."""
        if heartbeat_id in self._stored:
            self._stored[heartbeat_id] = refreshed

    def scheduled_among(self, heartbeat_ids):
        """Those of ``heartbeat_ids`` that have a schedule, in their order."""
        schedules = self._schedules
        return [heartbeat_id for heartbeat_id in heartbeat_ids if heartbeat_id in schedules] if schedules else []

    def refresh_times(self, heartbeat_ids, now):
        """``{id: what a refresh at now stores}`` (:func:`refresh_time`) of
        ``heartbeat_ids``, or None when none has a schedule (all: ``now``)."""
        schedules = self._schedules
        if not schedules or not any(heartbeat_id in schedules for heartbeat_id in heartbeat_ids):
            return None
        return {heartbeat_id: scheduled_time(*schedules[heartbeat_id], now) if heartbeat_id in schedules else now
                for heartbeat_id in heartbeat_ids}

    def by_slug(self, slug):
        """The id of the heartbeat whose ``slug`` is ``slug``, or None."""
        return self._slugs.get(slug)

    def by_push_token(self, token):
        """The id of the heartbeat whose ``push_token`` is ``token``, or None."""
        return self._push_tokens.get(token)

    def document(self, heartbeat_id):
        """The GET document (JSON bytes); :raises NotFound:."""
        try:
            return self._documents[heartbeat_id]
        except KeyError:
            raise NotFound(heartbeat_id) from None

    def unwritten(self):
        """A copy of the refreshes waiting to be written, ``{id: time}``."""
        return dict(self._unwritten)

    def has_unwritten(self):
        return bool(self._unwritten) or any(self._member_unwritten.values())

    def is_up(self, heartbeat_id):
        """True when the heartbeat is up in the database."""
        return heartbeat_id in self._stored

    def containing(self, pattern):
        """The ids of the heartbeats whose pattern has every pair of
        ``pattern`` (see :meth:`PatternIndex.containing`)."""
        return self._index.containing(pattern)

    def unwritten_refresh(self, heartbeat_id):
        """The refresh time of ``heartbeat_id`` not yet written, or None."""
        return self._unwritten.get(heartbeat_id)


###############################################################################
# Messages
###############################################################################

# What a channel sends is built from a *notice*, a dict kept with each row
# of a channel's queue (the outbox's ``notice`` column): ``type`` (alarm,
# resolved, reminder, escalation, ack, test), ``heartbeat`` ({"_id",
# "name", "slug"}, None for the intake), ``member``, ``status``,
# ``previous``, ``since`` (since when in ``status``), ``alarm_since``,
# ``at`` (when it was made), ``output``, ``reason``, ``last_event``,
# ``ack`` ({"by", "at", "comment"} or None). Each function below is a pure
# function of a notice and the link to the heartbeat's page.

#: the notice types a kind is sent; the others get every type (an
#: Alertmanager re-sends open alerts itself and has silences, not acks)
KIND_NOTICES = {"alertmanager": frozenset(("alarm", "resolved", "escalation"))}
TEST_OUTPUT = "a test message from heartbeat-lite: this channel works"


def notice_from_event(event):
    """The notice of an event queued before notices were kept (an outbox
    row of an older version, or one enqueued bare)."""
    state = event.get("state")
    status = {ALARM_STATE: DOWN, LATE_STATE: LATE}.get(state, UP)
    at = event.get("timestamp")
    return {"type": "resolved" if state == RESOLVED_STATE else "alarm",
            "heartbeat": None if event.get("heartbeat_id") is None else {
                "_id": event["heartbeat_id"], "name": event.get("heartbeat_name"), "slug": None},
            "member": event.get("member"), "status": status, "previous": None, "since": at, "alarm_since": at,
            "at": at, "output": event.get("output", ""), "reason": "", "last_event": None, "ack": None}


def follow_notice(kind, row, member, status, at, reason, ack=None):
    """A reminder, an escalation or an acknowledgement (``kind``) of the
    open alarm of heartbeat ``row`` (its member's: ``member`` pairs, and
    ``row`` the member's state joined with its heartbeat)."""
    return {"type": kind, "heartbeat": {"_id": row["id"], "name": row["name"], "slug": _optional(row, "slug")},
            "member": member, "status": status, "previous": status, "since": row["alarm_since"],
            "alarm_since": row["alarm_since"], "at": at, "output": row["output"], "reason": reason,
            "last_event": _optional(row, "last_event"), "ack": ack}


def test_notice(at):
    """The notice ``POST /api/v2/channel/<id>/test`` sends."""
    return {"type": "test", "heartbeat": {"_id": None, "name": "heartbeat-lite test", "slug": None},
            "member": None, "status": "test", "previous": None, "since": at, "alarm_since": at, "at": at,
            "output": TEST_OUTPUT, "reason": "test message (POST /api/v2/channel/<id>/test)",
            "last_event": None, "ack": None}


def ack_event(alarm, by, comment, at):
    """The Canopsis ``ack`` event of an alarm (its check event ``alarm``)."""
    return {"event_type": "ack", "connector": alarm["connector"], "connector_name": alarm["connector_name"],
            "source_type": alarm["source_type"], "component": alarm["component"], "resource": alarm["resource"],
            "author": by, "output": comment or "", "timestamp": int(at),
            "heartbeat_id": alarm["heartbeat_id"], "heartbeat_name": alarm["heartbeat_name"]}


def channel_row(fields, now):
    """The columns of a channel row from validated fields, ``updated`` at ``now``."""
    return {"name": fields["name"], "kind": fields["kind"], "url": fields["url"],
            "is_default": int(fields["default"]), "repeat_every": fields["repeat_every"],
            "repeat_seconds": fields["repeat_seconds"], "headers": _json_text(fields["headers"]),
            "template": fields["template"], "updated": int(now)}


def channel_of(row, configured=None):
    """A channel as the engine keeps it (a dict of its clean fields, plus
    ``_id``, ``created``, ``updated`` and ``configured``: the setting that
    made it, or None) from its row."""
    return {"_id": row["id"], "name": row["name"], "kind": row["kind"], "url": row["url"],
            "default": bool(row["is_default"]), "repeat_every": row["repeat_every"],
            "repeat_seconds": row["repeat_seconds"],
            "headers": None if row["headers"] is None else json.loads(row["headers"]),
            "template": row["template"], "created": row["created"], "updated": row["updated"],
            "configured": configured}


def forward_channel(url, now=0):
    """The canopsis channel ``--forward-url`` makes: id and name
    ``forward``, default, in no table."""
    return channel_of({"id": FORWARD_CHANNEL_ID, "name": FORWARD_CHANNEL_ID, "kind": "canopsis", "url": url,
                       "is_default": 1, "repeat_every": None, "repeat_seconds": None, "headers": None,
                       "template": None, "created": int(now), "updated": int(now)}, configured="--forward-url")


def channel_document(channel, queue=None, health=None):
    """The API's document of a channel: its fields with every secret hidden
    (``***``: see :func:`redact_channel_url`; each header value), and how
    its delivery goes: ``last_delivery``, ``last_error`` (null once an
    attempt succeeds), ``failing_since``, ``waiting``, ``set_aside`` and
    ``last_refusal``.

    :param queue: ``(waiting, oldest, set aside, last refusal)`` or None.
    :param health: ``(delivered at, failing since, last error, error at)`` or None.
    """
    doc = {"_id": channel["_id"], "name": channel["name"], "kind": channel["kind"],
           "url": redact_channel_url(channel["url"], channel["kind"]), "default": channel["default"]}
    if channel["repeat_every"] is not None:
        doc["repeat_every"] = channel["repeat_every"]
    if channel["headers"] is not None:
        doc["headers"] = {name: REDACTED for name in channel["headers"]}
    if channel["template"] is not None:
        doc["template"] = channel["template"]
    if channel["configured"]:
        doc["configured_by"] = channel["configured"]
    waiting, oldest, aside, refusal = queue or (0, None, 0, None)
    delivered_at, failing_since, last_error, _ = health or (None, None, None, None)
    doc.update(created=channel["created"], updated=channel["updated"], last_delivery=api_time(delivered_at),
               last_error=last_error, failing_since=api_time(failing_since), waiting=waiting,
               oldest_waiting=api_time(oldest), set_aside=aside, last_refusal=refusal if aside else None)
    return doc


def _notice_name(notice):
    heartbeat = notice["heartbeat"]
    name = "intake (heartbeat-lite)" if heartbeat is None else heartbeat["name"]
    if notice["member"]:
        name += " [" + ", ".join(f"{key}={value}" for key, value in sorted(notice["member"].items())) + "]"
    return name


def notice_title(notice):
    """One line saying what happened: ``backup is DOWN``."""
    name, status, kind = _notice_name(notice), notice["status"], notice["type"]
    if kind == "test":
        return "Test message from heartbeat-lite"
    if kind == "ack":
        return f"{name}: acknowledged by {notice['ack']['by']}"
    if kind == "resolved":
        return f"{name} is back up" if status == UP else f"{name}: alarm resolved ({status})"
    prefix = {"reminder": "Reminder: ", "escalation": "Escalated: "}.get(kind, "")
    still = "still " if kind == "reminder" else ""
    return f"{prefix}{name} is {still}{status.upper()}"


def _when(t):
    return "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def notice_facts(notice):
    """``[(label, text)]``: what a person needs to act, in order."""
    facts = [("Status", notice["status"] if not notice["previous"] or notice["previous"] == notice["status"]
              else f"{notice['status']} (was {notice['previous']})")]
    if notice["type"] != "test":
        facts.append(("Since", _when(notice["alarm_since"] if notice["type"] in ("reminder", "escalation", "ack")
                                     else notice["since"])))
        facts.append(("Last event", _when(notice["last_event"])))
    if notice["member"]:
        facts.append(("Member", ", ".join(f"{key}={value}" for key, value in sorted(notice["member"].items()))))
    if notice["output"]:
        facts.append(("Output", shorten(notice["output"], 1000)))
    if notice["reason"]:
        facts.append(("Reason", notice["reason"]))
    if notice["ack"]:
        ack = notice["ack"]
        facts.append(("Acknowledged", f"by {ack['by']} at {_when(ack['at'])}"
                      + (f": {ack['comment']}" if ack.get("comment") else "")))
    return facts


def notice_text(notice, link):
    """The notice as plain text: its facts, one per line, and the link."""
    lines = [f"{label}: {text}" for label, text in notice_facts(notice)]
    if link:
        lines.append(f"Details: {link}")
    return "\n".join(lines)


def shorten(text, limit):
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def webhook_body(notice, link):
    """A webhook's JSON body (docs/channels/webhook.md)."""
    heartbeat = notice["heartbeat"] or {"_id": None, "name": "intake", "slug": None}
    return {"heartbeat": heartbeat, "member": notice["member"], "status": notice["status"],
            "previous": notice["previous"], "since": api_time(notice["since"]), "output": notice["output"],
            "reason": notice["reason"], "url": link}


def _slack_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_EMOJI = {"down": ":red_circle:", "late": ":large_orange_circle:", "resolved": ":large_green_circle:",
          "ack": ":eyes:", "test": ":wave:"}


def _severity_word(notice):
    if notice["type"] in ("resolved", "ack", "test"):
        return notice["type"]
    return notice["status"]


def slack_body(notice, link):
    """A Slack incoming-webhook body: ``text`` (the notification) and
    blocks (also Mattermost's and Rocket.Chat's)."""
    title = notice_title(notice)
    emoji = _EMOJI.get(_severity_word(notice), ":bell:")
    fields = [{"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(shorten(text, 1900))}"}
              for label, text in notice_facts(notice)][:10]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{_slack_escape(title)}*"}},
              {"type": "section", "fields": fields}]
    if link:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in heartbeat-lite>"}]})
    return {"text": f"{emoji} {title}", "blocks": blocks}


def teams_body(notice, link):
    """A Teams Workflows webhook body: a message with one Adaptive Card."""
    color = {"down": "Attention", "late": "Warning", "resolved": "Good"}.get(_severity_word(notice), "Default")
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4",
            "body": [{"type": "TextBlock", "text": notice_title(notice), "weight": "Bolder", "size": "Medium",
                      "color": color, "wrap": True},
                     {"type": "FactSet", "facts": [{"title": label, "value": text}
                                                   for label, text in notice_facts(notice)]}]}
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in heartbeat-lite", "url": link}]
    return {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                                "contentUrl": None, "content": card}]}


_NTFY_PRIORITY = {"down": 5, "late": 3, "resolved": 1, "ack": 2, "test": 3}
_NTFY_TAGS = {"down": "rotating_light", "late": "warning", "resolved": "white_check_mark", "ack": "eyes",
              "test": "wave"}


def ntfy_body(notice, link, topic):
    """An ntfy JSON publish (to the server's root): topic, title, message,
    priority (down 5, late 3, up 1), tags, and the link to click."""
    word = _severity_word(notice)
    body = {"topic": topic, "title": notice_title(notice), "message": notice_text(notice, None),
            "priority": _NTFY_PRIORITY.get(word, 4), "tags": [_NTFY_TAGS.get(word, "bell"), "heartbeat-lite"]}
    if link:
        body["click"] = link
    return body


def email_message(notice, link, sender, recipients):
    """A plain-text e-mail: the title as subject, the facts as body."""
    message = email.message.EmailMessage()
    message["Subject"] = "[heartbeat-lite] " + notice_title(notice)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = email.utils.formatdate(notice["at"], usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain="heartbeat-lite")
    message.set_content(notice_title(notice) + "\n\n" + notice_text(notice, link) + "\n")
    return message


def _rfc3339(t):
    return datetime.datetime.fromtimestamp(t, UTC_ZONE).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED_LABELS = frozenset(("alertname", "heartbeat", "heartbeat_id", "severity"))


def alertmanager_alerts(notice, link):
    """The alerts of a notice for Alertmanager's ``POST /api/v2/alerts``:
    ``HeartbeatDown`` or ``HeartbeatLate`` (labels ``alertname``,
    ``heartbeat_id``, ``heartbeat``, the member's pairs, ``severity``),
    firing from the alarm's start, ended (``endsAt``) by its resolution; a
    heartbeat going down from late also ends its ``HeartbeatLate``."""
    heartbeat = notice["heartbeat"] or {"_id": "intake", "name": "intake"}
    labels = {"heartbeat_id": heartbeat["_id"], "heartbeat": heartbeat["name"]}
    for key, value in sorted((notice["member"] or {}).items()):
        name = _LABEL_NAME.sub("_", key)
        name = "_" + name if name[:1].isdigit() or not name else name
        labels["member_" + name if name in _RESERVED_LABELS or name.startswith("__") else name] = value
    annotations = {"summary": notice_title(notice), "description": notice_text(notice, None)}

    def alert(status, starts, ends=None):
        late = status == LATE
        item = {"labels": {"alertname": "HeartbeatLate" if late else "HeartbeatDown", **labels,
                           "severity": "warning" if late else "critical"},
                "annotations": annotations, "startsAt": _rfc3339(starts)}
        if ends is not None:
            item["endsAt"] = _rfc3339(max(ends, starts))
        if link:
            item["generatorURL"] = link
        return item

    at, since = notice["at"], notice["alarm_since"] or notice["at"]
    if notice["type"] == "resolved":
        return [alert(notice["previous"] if notice["previous"] in ALARMED else DOWN, since, at)]
    alerts = [alert(notice["status"], since)]
    if notice["status"] == DOWN and notice["previous"] == LATE and notice["type"] == "alarm":
        alerts.insert(0, alert(LATE, at, at))
    return alerts


###############################################################################
# Transitions
###############################################################################

class _Keep:
    """The type of :data:`KEEP`."""

    __slots__ = ()

    def __repr__(self):
        return "KEEP"


#: a :class:`Transition` field left as it is (``last_event``), or worked out
#: by the funnel (``alarm``)
KEEP = _Keep()


class Transition:
    """One state change, as a value: of a heartbeat, of one of its members,
    or of the intake (the monitor's own feed: no heartbeat). The funnel
    (:class:`Funnel`) applies it; nothing else writes a state, records a
    change or emits an alarm.

    :param heartbeat: the heartbeat's row (a mapping with ``id``; with
        ``name``, ``output`` and ``pattern`` when it emits an alarm event,
        ``interval_seconds`` and ``late_seconds`` when something falls due
        after it: a heartbeat's row, or a member's joined with its
        heartbeat), or None for the intake.
    :param member: the member's key (:func:`member_key`), or None.
    :param old: the status left; None when it is created (or not known: a
        grouped heartbeat's status following its members').
    :param new: the status entered: one of :data:`STATUSES`, or
        :data:`DELETED` / :data:`RETIRED` (a member removed); in a record
        (:meth:`Change.record`), any status the history shows,
        :data:`MAINTENANCE` included.
    :param at: when (Unix seconds): the history's time, the event's.
    :param reason: short human text for the history ("no matching event
        for 1m").
    :param refreshed: the refresh time it writes (with ``new``).
    :param alarm_since: the alarm time it writes (None: no open alarm).
    :param last_event: the last event time it writes, or :data:`KEEP`.
    :param output: the alarm event's ``output`` in place of the
        heartbeat's (a failed job's "failed: <first line>"), or None.
    :param extra: further keys of the history entry, or None.
    :param alarm: the Canopsis state of the event it emits; :data:`KEEP`
        (the default) works it out from ``old`` and ``new``
        (:func:`alarm_state_of`), None emits none.
    :param record: False when the history keeps no entry (its heartbeat is
        deleted, or the change is one of many it sums up).

    ``event`` is set by the funnel: the alarm event emitted, or None.
    """

    __slots__ = ("heartbeat", "member", "old", "new", "at", "reason", "refreshed", "alarm_since", "last_event",
                 "output", "extra", "alarm", "record", "event")

    def __init__(self, heartbeat, member, old, new, at, reason, refreshed=None, alarm_since=None, last_event=KEEP,
                 output=None, extra=None, alarm=KEEP, record=True):
        self.heartbeat = heartbeat
        self.member = member
        self.old = old
        self.new = new
        self.at = at
        self.reason = reason
        self.refreshed = refreshed
        self.alarm_since = alarm_since
        self.last_event = last_event
        self.output = output
        self.extra = extra
        self.alarm = alarm
        self.record = record
        self.event = None

    @property
    def heartbeat_id(self):
        return None if self.heartbeat is None else self.heartbeat["id"]

    def __repr__(self):
        who = self.heartbeat_id if self.member is None else f"{self.heartbeat_id} {self.member}"
        return f"<Transition {who or 'intake'}: {self.old} -> {self.new} at {self.at} ({self.reason})>"


def alarm_state_of(transition):
    """The Canopsis state of the event a transition emits when it does not
    say (see :class:`Transition`): 3 entering down, 1 entering late, 0
    leaving either for another status; None otherwise, and for a grouped
    heartbeat's own status (its members have the alarms)."""
    new, old = transition.new, transition.old
    if transition.member is None and transition.heartbeat is not None \
            and _optional(transition.heartbeat, "group_by") is not None:
        return None
    if new == DOWN:
        return None if old == DOWN else ALARM_STATE
    if new == LATE:
        return None if old == LATE else LATE_STATE
    return RESOLVED_STATE if old in ALARMED else None


def due_after(transition):
    """When the next transition is due after this one (see :func:`due_of`),
    or None: nothing falls due in that status, or the row does not say."""
    if transition.new not in (PENDING, UP, LATE) or transition.refreshed is None or transition.heartbeat is None:
        return None
    interval_seconds = _optional(transition.heartbeat, "interval_seconds")
    if interval_seconds is None:
        return None
    late_seconds = _optional(transition.heartbeat, "late_seconds")
    if late_seconds is not None and transition.new != LATE:
        return transition.refreshed + late_seconds
    return transition.refreshed + interval_seconds


def transition_now(row, new, now, reason, output=None, member=None, extra=None, event=False):
    """The transition that puts a heartbeat (or member: ``row`` its member
    row joined with its heartbeat, ``member`` its key) into ``new`` at
    ``now``, from outside expiry (a failed job says so at once): down or
    late open an alarm now, its refresh kept; up and pending start afresh
    from now (up: an event now). None when it is in ``new`` already, or
    paused (pause and resume have their own rules). ``extra``: more keys of
    its history entry (a failed run's ``duration``); ``event``: it came with
    an event (a failure ping), its last event now."""
    old = row["status"]
    if old == new or old == PAUSED or new not in (PENDING, UP, LATE, DOWN):
        return None
    if new in ALARMED:
        return Transition(row, member, old, new, now, reason, row["refreshed"], now, output=output, extra=extra,
                          last_event=now if event else KEEP)
    return Transition(row, member, old, new, now, reason, now if member is not None else refresh_time(row, now),
                      None, last_event=now if new == UP else KEEP, extra=extra)


class Change:
    """The state changes of one transaction, as the funnel applies them
    (see :meth:`Funnel.change`)."""

    __slots__ = ("funnel", "transitions", "events", "hooks")

    def __init__(self, funnel):
        self.funnel = funnel
        self.transitions = []
        self.events = []
        self.hooks = []

    def apply(self, transitions, written=False, follow=True):
        """Apply ``transitions`` (an iterable of :class:`Transition`), now,
        in this change's transaction: write each state (unless ``written``:
        the statement that found them wrote them already), record the
        history, build the alarm events and hand transitions and events to
        every sink. The read model (unless not ``follow``: it forgot them
        already, as the members of a grouping replaced), the scheduler and
        the publisher follow once the transaction commits.

        :returns: the transitions, as a list.
        """
        transitions = list(transitions)
        if transitions:
            self.funnel.apply(self, transitions, written, follow)
        return transitions

    def record(self, transitions):
        """Record ``transitions`` in the history only: records, not state
        changes (a maintenance window's start or end in the history of the
        heartbeats it covers): nothing is written, no alarm is emitted, the
        read model does not follow; the sinks see them (their ``event`` is
        None)."""
        transitions = list(transitions)
        if transitions:
            for transition in transitions:
                transition.alarm = None
            self.funnel.apply(self, transitions, written=True, follow=False)

    def then(self, function, *args):
        """Call ``function(*args)`` once the transaction commits, before the
        read model follows the transitions: what the site keeps in memory of
        documents (created, updated, deleted) and of refreshes that are not
        transitions."""
        self.hooks.append((function, args))


class Funnel:
    """The one way a state changes: every path (events, expiry, pause and
    resume, maintenance, members, create, update and delete, the intake
    silence, and pings next) hands its :class:`Transition` values to
    :meth:`Change.apply`, inside a :meth:`change` opened under the engine's
    lock. The funnel then

    1. writes the states, in bulk statements (the chunks of a storm stay
       chunks: the sites hand them over a chunk at a time);
    2. records the history rows;
    3. builds the alarm events (:func:`alarm_event`, :func:`intake_event`);
    4. hands transitions and events to each sink, in the transaction: the
       outbox (:class:`ChannelSink`) is the first; a sink writes its durable
       rows there, so a change and its deliveries commit together;
    5. after the commit: the read model follows (:meth:`ReadModel.transitioned`),
       the scheduler is told what falls due, and the events of the
       transaction are queued for publishing, in commit order
       (:class:`Publisher`, which runs after the lock).

    :param core: the :class:`EngineCore`.
    :param sinks: the sinks (objects with ``receive(transitions, events)``
        called in the transaction, and ``published()`` called after events
        were published).
    """

    def __init__(self, core, sinks):
        self.core = core
        self.sinks = sinks
        #: alarms raised (late and down) since the start
        self.alarms_raised = 0

    @contextlib.contextmanager
    def change(self):
        """A transaction whose state changes go through the funnel; call it
        under the engine's lock. Yields a :class:`Change`. When the block
        raises, nothing was written and nothing follows."""
        change = Change(self)
        with self.core.store.atomic():
            yield change
        self._settle(change)

    def apply(self, change, transitions, written, follow=True):
        if not written:
            self._write(transitions)
        store = self.core.store
        history = [self._history_row(transition) for transition in transitions
                   if transition.record and transition.heartbeat is not None]
        if history:
            store.add_history(history)
        events = []
        for transition in transitions:
            state = alarm_state_of(transition) if transition.alarm is KEEP else transition.alarm
            if state is not None:
                transition.event = self._event(transition, state)
                events.append(transition.event)
        for sink in self.sinks:
            sink.receive(transitions, events)
        if follow:
            change.transitions += transitions
        change.events += events

    def _write(self, transitions):
        """Each heartbeat's and member's last state among ``transitions``,
        in one statement per kind."""
        states, members, removed = {}, {}, []
        for transition in transitions:
            heartbeat_id = transition.heartbeat_id
            if heartbeat_id is None:
                continue  # the intake: its state is the service's (see IntakeSilence)
            if transition.member is None:
                states[heartbeat_id] = transition
            elif transition.new in (DELETED, RETIRED):
                members.pop((heartbeat_id, transition.member), None)
                removed.append((heartbeat_id, transition.member))
            else:
                members[(heartbeat_id, transition.member)] = transition
        store = self.core.store
        plain = [(key, t.new, t.refreshed, t.alarm_since) for key, t in states.items() if t.last_event is KEEP]
        if plain:
            store.set_states(plain)
        for heartbeat_id, t in states.items():
            if t.last_event is not KEEP:
                store.set_state(heartbeat_id, t.new, t.refreshed, t.last_event, t.alarm_since)
        if members:
            store.set_member_states([(heartbeat_id, key, t.new, t.refreshed, t.alarm_since)
                                     for (heartbeat_id, key), t in members.items()])
        if removed:
            store.delete_members(removed)
        outputs = [(t.heartbeat_id, t.member or "", t.alarm_since, t.output) for t in transitions
                   if t.output is not None and t.new in ALARMED and t.old != t.new and t.heartbeat_id is not None
                   and t.alarm_since is not None]
        if outputs:
            store.set_alarm_outputs(outputs)

    @staticmethod
    def _history_row(transition):
        extra = transition.extra
        if transition.member is not None:
            extra = {**(extra or {}), "member": json.loads(transition.member)}
        return transition.heartbeat["id"], transition.at, transition.new, transition.reason, extra

    @staticmethod
    def _event(transition, state):
        if transition.heartbeat is None:
            return intake_event(state, transition.at, transition.output)
        member = None if transition.member is None else json.loads(transition.member)
        return alarm_event(transition.heartbeat, state, transition.at, member, transition.output)

    def _settle(self, change):
        """Under the lock, after the commit."""
        for function, args in change.hooks:
            function(*args)
        transitions = change.transitions
        if not transitions:
            return
        core = self.core
        core.model.transitioned(transitions)
        due = min((at for at in map(due_after, transitions) if at is not None), default=None)
        if due is not None:
            core.due_by(due)
        self.alarms_raised += sum(1 for t in transitions
                                  if t.event is not None and t.event["state"] != RESOLVED_STATE and t.old != t.new)
        core.publisher.committed(change.events, {id(t.event): t.output for t in transitions
                                                 if t.event is not None and t.output is not None})


class ChannelRegistry:
    """The channels in force, in memory: the one ``--forward-url`` makes
    (configured) and those of the channel table. Replaced whole on a
    change, never changed in place, so readers need no lock.

    :param configured: the channels the settings make (see :func:`forward_channel`).
    """

    def __init__(self, configured=()):
        self.configured = {channel["_id"]: channel for channel in configured}
        #: ``{id: channel}`` (see :func:`channel_of`), oldest first, the configured ones first
        self.channels = dict(self.configured)
        #: called with the channels after each change (the delivery workers follow)
        self.listeners = []

    def load(self, rows):
        """The channel table's ``rows`` are the channels now."""
        self.channels = {**self.configured, **{row["id"]: channel_of(row) for row in rows}}
        for listener in self.listeners:
            listener(self.channels)

    def get(self, channel_id):
        return self.channels.get(channel_id)

    def route(self, channels):
        """The ids of the channels a heartbeat's alarms go to: those of its
        ``channels`` (JSON text, None: absent) that exist; absent, every
        default channel."""
        known = self.channels
        if channels is None:
            return [channel_id for channel_id, channel in known.items() if channel["default"]]
        return [channel_id for channel_id in json.loads(channels) if channel_id in known]

    def takes(self, channel_id, kind):
        """Whether the channel is sent notices of that type (see :data:`KIND_NOTICES`)."""
        channel = self.channels.get(channel_id)
        return channel is not None and kind in KIND_NOTICES.get(channel["kind"], (kind,))


def notice_of(transition, event):
    """The notice of a transition's alarm or resolution ``event``."""
    row = transition.heartbeat
    resolved = event["state"] == RESOLVED_STATE
    alarm_since = _optional(row or {}, "alarm_since") if resolved else (transition.alarm_since or transition.at)
    return {
        "type": "resolved" if resolved else "alarm",
        "heartbeat": None if row is None else {"_id": row["id"], "name": row["name"], "slug": _optional(row, "slug")},
        "member": event.get("member"),
        "status": transition.new, "previous": transition.old,
        "since": transition.at, "alarm_since": alarm_since, "at": transition.at,
        "output": event["output"], "reason": transition.reason,
        "last_event": transition.last_event if transition.last_event is not KEEP else _optional(row or {}, "last_event"),
        "ack": None,
    }


class ChannelSink:
    """The way out of the funnel: each alarm and resolution goes, in the
    transaction of its change, to the queue of every channel its heartbeat
    routes it to (its ``channels``, else the default channels; the intake's
    to the default ones; a resolution also to the ``escalate_to`` channels
    once the alarm was escalated). An alarm that opens schedules its
    follow-ups (a reminder per channel with ``repeat_every``, the
    escalation after ``escalate_after``, unless acknowledged); one that
    resolves forgets them, and its acknowledgement. Once published, the
    channels' workers are woken. ``--forward-url``'s canopsis channel is
    one channel among them, so nothing else enqueues alarms.

    A sink is how a way out attaches: ``receive(transitions, events)`` in
    the transaction (each transition's ``event`` is set, or None; write the
    durable rows there), ``published()`` once events were published.

    :param store: the :class:`Store` holding the queues.
    :param registry: the :class:`ChannelRegistry`.
    """

    def __init__(self, store, registry):
        self.store = store
        self.registry = registry
        #: None, or called with the ids of channels given something to deliver (their workers' wake-up)
        self.waker = None
        #: None, or called with a clock time when a follow-up falls due (the scheduler's wake-up)
        self.due_by = None
        self._woken = set()

    def receive(self, transitions, events):
        store = self.store
        forgotten, gone, alarms = [], [], []
        for transition in transitions:
            if transition.heartbeat is not None and transition.member is None and transition.new == DELETED:
                gone.append(transition.heartbeat_id)
            if transition.event is not None:  # not a record (a window's start keeps a down alarm open)
                alarms.append(transition)
        if alarms and self.registry.channels:
            forgotten += self._route(alarms)
        else:
            forgotten += [(t.heartbeat_id, t.member or "") for t in alarms
                          if t.heartbeat is not None and t.event["state"] == RESOLVED_STATE and t.old != t.new]
        if forgotten:
            store.forget_alarms(forgotten)
        for heartbeat_id in gone:
            store.forget_heartbeat_alarms(heartbeat_id)

    def _route(self, alarms):
        """Queue the notices of ``alarms`` (transitions with an event) and
        schedule their follow-ups; return the alarms resolved (keys)."""
        store, registry = self.store, self.registry
        ids = sorted({t.heartbeat_id for t in alarms if t.heartbeat is not None})
        routes = store.routes(ids) if ids else {}
        watched = [(t.heartbeat_id, t.member or "") for t in alarms if t.heartbeat is not None and (
            t.old == LATE and t.new == DOWN or t.event["state"] == RESOLVED_STATE)]
        follows = store.follows(watched) if watched else {}
        rows, schedule, resolved = [], [], []
        for transition in alarms:
            row, event = transition.heartbeat, transition.event
            route = routes.get(transition.heartbeat_id) or (
                (None, None, None) if row is None else
                (_optional(row, "channels"), _optional(row, "escalate_seconds"), _optional(row, "escalate_to")))
            channels, escalate_seconds, escalate_to = route
            key = (transition.heartbeat_id, transition.member or "")
            targets = registry.route(channels)
            notice = notice_of(transition, event)
            follow = follows.get(key)
            if event["state"] == RESOLVED_STATE:
                if follow is not None and follow[3] and escalate_to:  # escalated: they hear the end too
                    targets += [c for c in registry.route(escalate_to) if c not in targets]
                if transition.old != transition.new:  # not an alarm moving to its new resource
                    resolved.append(key)
            elif transition.old != transition.new and (follow is None or follow[1] is None):
                schedule += [(*key, channel_id, transition.at + registry.get(channel_id)["repeat_seconds"])
                             for channel_id in targets
                             if registry.get(channel_id)["repeat_seconds"] and registry.takes(channel_id, "reminder")]
                if transition.new == DOWN and escalate_seconds and escalate_to:
                    schedule.append((*key, "", transition.at + escalate_seconds))
            rows += [(channel_id, event, notice, transition.at) for channel_id in targets
                     if registry.takes(channel_id, notice["type"])]
        self.enqueue(rows)
        if schedule:
            store.schedule(schedule)
            if self.due_by is not None:
                self.due_by(min(due for *_, due in schedule))
        return resolved

    def enqueue(self, rows):
        """Queue ``(channel id, Canopsis event, notice, at)`` rows, in the
        caller's transaction; their channels are woken once published
        (see :meth:`wake`)."""
        if rows:
            self.store.enqueue_notices(rows)
            self._woken.update(channel_id for channel_id, *_ in rows)

    def wake(self):
        """Wake the workers of the channels given something since the last
        wake-up (after the commit)."""
        woken, self._woken = self._woken, set()
        if woken and self.waker is not None:
            self.waker(woken)

    def published(self):
        self.wake()


class Publisher:
    """Publishes what committed, after the engine's lock is released: logs
    each event (one line each, or one summary line for many: a storm says
    it once, not 100,000 times), hands each to ``on_alarm``, then tells the
    sinks. One thread drains the queue at a time, in commit order (commits
    happen under the lock); a thread that finds another draining leaves its
    events to it, so an ``on_alarm`` that calls back into the engine never
    waits on itself.

    :param on_alarm: None, or a callable receiving each event.
    :param sinks: the funnel's sinks (their ``published()`` is called after
        a drain that published something).
    """

    def __init__(self, on_alarm, sinks):
        self.on_alarm = on_alarm
        self.sinks = sinks
        self._outgoing = collections.deque()  # committed events not yet published, a list per transaction
        self._lock = threading.Lock()
        self._publishing = False  # a thread is draining _outgoing

    def committed(self, events, causes=None):
        """Under the engine's lock, after commit: queue the events of one
        transaction; ``causes`` maps an event's ``id()`` to the words of an
        alarm that has its own (a failed job's "failed: disk full", "run
        exceeded 30m"), which its log line says instead of "no matching
        event"."""
        if events:
            with self._lock:
                self._outgoing.append((events, causes or {}))

    def publish(self):
        """Without the engine's lock: publish what is queued."""
        with self._lock:
            if self._publishing or not self._outgoing:
                return
            self._publishing = True
        published = 0
        try:
            while True:
                with self._lock:
                    if not self._outgoing:
                        self._publishing = False
                        break
                    events, causes = self._outgoing.popleft()
                self._announce(events, causes)
                published += len(events)
        except BaseException:
            with self._lock:
                self._publishing = False
            raise
        if published:
            for sink in self.sinks:
                sink.published()

    def _announce(self, events, causes):
        if len(events) <= LOG_EACH_EVENT_UP_TO:
            for event in events:
                if event["heartbeat_id"] is None:  # the intake: said when it starts and ends
                    continue
                cause = causes.get(id(event))
                why = log_safe(cause) if cause is not None else "no matching event for " + log_safe(event["resource"])
                if event["state"] == ALARM_STATE:
                    log.warning("alarm: heartbeat %s ('%s') is down: %s",
                                event["heartbeat_id"], log_safe(event["heartbeat_name"]), why)
                elif event["state"] == LATE_STATE:
                    log.warning("late: heartbeat %s ('%s') is late: %s",
                                event["heartbeat_id"], log_safe(event["heartbeat_name"]), why)
                else:
                    log.info("resolved: heartbeat %s ('%s')%s", event["heartbeat_id"],
                             log_safe(event["heartbeat_name"]),
                             f" for {log_safe(event['resource'])}" if "member" in event else "")
        else:
            raised = sum(event["state"] != RESOLVED_STATE for event in events)
            names = ", ".join(f"'{log_safe(event['heartbeat_name'])}'" for event in events[:3])
            log.log(logging.WARNING if raised else logging.INFO,
                    "%d alarm(s) raised, %d resolved at once (%s and %d more)",
                    raised, len(events) - raised, names, len(events) - 3)
        if self.on_alarm is not None:
            for event in events:
                try:
                    self.on_alarm(event)
                except Exception:  # the embedder's bug must not stop the engine
                    log.exception("on_alarm callback failed for %s", event["heartbeat_id"])


###############################################################################
# Engine
###############################################################################


class _LockNow:
    """A lock taken without waiting (see :meth:`EngineLock.now`)."""

    __slots__ = ("lock",)

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        if not self.lock.acquire(False):
            raise WouldBlock()

    def __exit__(self, *exc):
        self.lock.release()


class EngineLock:
    """The engine's lock: reentrant; ``with lock:`` waits as long as it
    takes (background work: the tick, the workers).

    Requests take it with :meth:`bounded`, which waits too, except while
    its holder is stuck on the database (``stuck()``: the writer's statement
    has waited :data:`WRITER_STUCK_SECONDS`, e.g. for SQLite's write lock,
    held by another process): then one request waits in line, up to
    ``wait_seconds`` (the busy timeout), and every other gives up at once
    with :class:`DatabaseBusy` (the documented database error). Writes
    waiting for the database never take every worker thread, so reads
    served from memory and ``/healthz`` answer meanwhile.
    """

    def __init__(self, stuck, wait_seconds):
        self._lock = threading.RLock()
        self._stuck = stuck
        self.wait_seconds = wait_seconds
        self._in_line = threading.Lock()  # held by the one request waiting while the holder is stuck

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def _is_owned(self):
        return self._lock._is_owned()

    @contextlib.contextmanager
    def bounded(self):
        """The lock, for a request (see the class)."""
        if not self._lock.acquire(blocking=False):
            self._wait()
        try:
            yield self
        finally:
            self._lock.release()

    def _wait(self):
        deadline = time.monotonic() + self.wait_seconds
        in_line = False
        try:
            while not self._lock.acquire(timeout=LOCK_POLL_SECONDS):
                if time.monotonic() >= deadline:
                    raise DatabaseBusy("the database is busy (a write waits for a lock held elsewhere)")
                if not in_line and self._stuck():
                    in_line = self._in_line.acquire(blocking=False)
                    if not in_line:
                        raise DatabaseBusy("the database is busy (a write waits for a lock held elsewhere; "
                                           "another request waits in line)")
        finally:
            if in_line:
                self._in_line.release()

    def now(self):
        """The lock, for what must never wait (the HTTP server's event
        loop): raises :class:`WouldBlock` at once when another thread holds it."""
        return _LockNow(self._lock)


class EngineCore:
    """What the engine's parts share, and only that: the store, the clock,
    the lock every change runs under, the read model, the funnel and the
    publisher, and when the next tick is due.

    Every change runs under the one lock, so the read model, the database
    and the order of events agree; events are published after it is
    released (:meth:`operation`).
    """

    def __init__(self, store, clock, on_alarm=None, sinks=()):
        self.store = store
        self.clock = clock
        self.lock = EngineLock(lambda: store.writer_waiting() >= WRITER_STUCK_SECONDS, store.busy_timeout)
        #: the :class:`ReadModel`; replaced whole when reloaded, so read it here each time
        self.model = ReadModel()
        self.sinks = list(sinks)
        self.funnel = Funnel(self, self.sinks)
        self.publisher = Publisher(on_alarm, self.sinks)
        #: loads the engine (resuming after an outage) if not done yet; set by :class:`Engine`
        self.load = lambda: None
        #: whether it is loaded (then :attr:`load` does nothing); set by :class:`Engine`
        self.is_loaded = lambda: True
        self.next_tick_at = -math.inf  # when a tick is due next (clock time)
        #: None, or called with a clock time when a tick becomes due earlier
        #: than the last tick said (the scheduler's wake-up)
        self.waker = None
        #: None, or what runs the follow-ups of alarms at each tick (:class:`Notifications`)
        self.followups = None
        #: loads the channels (at each load, and when another instance changed one)
        self.load_channels = lambda: None
        self._last_chunk_seconds = 0.0  # how long the last chunk of a storm held the lock

    @contextlib.contextmanager
    def operation(self):
        """The lock, the engine loaded, and the time (yielded, read once);
        what committed meanwhile is published once the lock is released."""
        try:
            with self.lock.bounded():
                self.load()
                yield self.clock()
        finally:
            self.publisher.publish()

    def due_by(self, at):
        """Something is due at ``at`` (clock time): make sure a tick comes by
        then, waking the scheduler if the last tick said later."""
        if at < self.next_tick_at:
            self.next_tick_at = at
            if self.waker is not None:
                self.waker(at)

    @contextlib.contextmanager
    def storm_chunk(self, pause=True):
        """The lock, for a chunk of a storm: after the first, taken after a
        pause as long as the last chunk held it (at least
        :data:`STORM_YIELD_SECONDS`), so requests waiting for it get in and
        a storm takes at most half of the engine's time."""
        if pause:
            time.sleep(max(STORM_YIELD_SECONDS, self._last_chunk_seconds))
        with self.lock:
            started = time.perf_counter()
            try:
                yield
            finally:
                self._last_chunk_seconds = min(time.perf_counter() - started, 0.1)


class Windows:
    """Maintenance windows: those in force (in memory, replaced whole,
    never changed in place, so readers need no lock), the one that covers
    a heartbeat at a time, their creation, replacement and deletion, and
    their boundaries (a start recorded in the history; an end's rule: a
    heartbeat it selects that is neither down nor paused gets a full
    interval from the end).
    """

    def __init__(self, core):
        self.core = core
        self.by_id = {}  # id -> MaintenanceWindow
        self.checked_at = None  # the clock time up to which window starts and ends were handled

    @property
    def by_id(self):
        """The windows in force, ``{id: MaintenanceWindow}``; replaced whole."""
        return self._by_id

    @by_id.setter
    def by_id(self, windows):
        # the windows by one of their pairs (the first, sorted), those of
        # pattern {} under None: the ones that may select a heartbeat are
        # found from its own pairs, without looking at the others
        by_pair = {}
        for window in windows.values():
            pair = min(window.pattern.items()) if window.pattern else None
            by_pair.setdefault(pair, []).append(window)
        self._by_id, self._by_pair = windows, by_pair

    def selecting(self, pattern):
        """The windows that select a heartbeat of ``pattern`` (a dict):
        a look-up per pair of the pattern, whatever the number of windows."""
        by_pair = self._by_pair
        candidates = list(by_pair.get(None, ()))
        for pair in pattern.items():
            candidates += by_pair.get(pair, ())
        return [window for window in candidates if window.selects(pattern)]

    def built(self, now):
        """Every window of the database, built (their occurrences around
        ``now`` worked out): what :meth:`Lifecycle.load` puts in force."""
        windows = {}
        for row in self.core.store.maintenances():
            try:
                windows[row["id"]] = MaintenanceWindow(row, now)
            except (ValueError, OverflowError) as exc:  # e.g. a zone the system no longer has
                log.error("maintenance window %s ('%s') cannot be used, it protects nothing: %s",
                          row["id"], log_safe(row["name"]), log_safe(str(exc)))
        return windows

    def synced(self, maintenance_id, now):
        """Another instance created, replaced or deleted a window."""
        try:
            window = MaintenanceWindow(self.core.store.maintenance(maintenance_id), now)
        except NotFound:
            self.by_id = {key: value for key, value in self.by_id.items() if key != maintenance_id}
        except (ValueError, OverflowError) as exc:
            log.error("maintenance window %s cannot be used, it protects nothing: %s", maintenance_id, exc)
        else:
            self.by_id = {**self.by_id, maintenance_id: window}
            self._due_by_boundary(window, now)

    def covering(self, pattern, at, excluding=None):
        """``(until, window)``: of the maintenance windows selecting
        ``pattern`` (a heartbeat's, JSON text or dict) and active at ``at``,
        but the one of id ``excluding``, the one ending last; None when
        there is none."""
        if not self._by_id:
            return None
        if isinstance(pattern, str):
            pattern = json.loads(pattern)
        best = None
        for window in self.selecting(pattern):
            if window.id != excluding:
                occurrence = window.occurrence_at(at)
                if occurrence is not None and (best is None or occurrence[1] > best[0]):
                    best = (occurrence[1], window)
        return best

    def covered_until(self, pattern):
        """A function of a time giving the end of the window covering a
        heartbeat of ``pattern`` then (the one ending last), or None: what
        :func:`expiry_steps` asks."""
        if not self.by_id:
            return _NOT_COVERED

        def until(at):
            covering = self.covering(pattern, at)
            return None if covering is None else covering[0]

        return until

    def active(self, now):
        """The windows active at ``now``."""
        return [window for window in self.by_id.values() if window.occurrence_at(now)]

    def covered(self, now):
        """``{heartbeat id: (until, window)}``: the heartbeats a window
        active at ``now`` covers, each with the window ending last, worked
        out in memory from the read model's index of pairs (the cost of the
        heartbeats each distinct pattern selects, never SQL per window)."""
        ending = {}  # canonical pattern -> (until, window): the active window of that pattern ending last
        for window in self.active(now):
            until = window.occurrence_at(now)[1]
            key = canonical_pattern(window.pattern)
            if key not in ending or until > ending[key][0]:
                ending[key] = (until, window)
        covered = {}
        for until, window in ending.values():
            for heartbeat_id in self.core.model.containing(window.pattern):
                best = covered.get(heartbeat_id)
                if best is None or until > best[0]:
                    covered[heartbeat_id] = (until, window)
        return covered

    def next_boundary(self, now):
        """The next start or end of a maintenance window after ``now``, or None."""
        boundaries = (window.next_boundary(now) for window in self.by_id.values())
        return min((boundary for boundary in boundaries if boundary is not None), default=None)

    def create(self, fields):
        """Create a window from validated fields; return its id.

        :raises Invalid: when there are :data:`MAX_MAINTENANCE_WINDOWS` already.
        """
        core = self.core
        before = core.clock()
        row = {**maintenance_columns(fields, before), "id": str(uuid.uuid4())}
        window = MaintenanceWindow(row, before)  # its occurrences worked out before the engine's lock
        with core.operation() as now:
            if len(self.by_id) >= MAX_MAINTENANCE_WINDOWS:
                raise Invalid([f"too many maintenance windows (at most {MAX_MAINTENANCE_WINDOWS}); delete some"])
            row.update(created=int(now), updated=int(now))
            window.known_since = now
            with core.funnel.change() as change:
                core.store.insert_maintenance(row)
                if window.occurrence_at(now) is not None:  # active already: its start is now
                    self._record(change, window, now, True)
            self.by_id = {**self.by_id, window.id: window}
            self._due_by_boundary(window, now)
        log.info("maintenance %s created ('%s', pattern %s)", window.id, log_safe(window.name), log_safe(row["pattern"]))
        return window.id

    def update(self, maintenance_id, fields):
        """Replace a window. One active now ends now first (see
        :meth:`_end_early`), then the new definition applies.
        :raises NotFound:."""
        core = self.core
        before = core.clock()
        window = MaintenanceWindow({**maintenance_columns(fields, before), "id": maintenance_id}, before)
        with core.operation() as now:
            with core.funnel.change() as change:
                _, row = core.store.update_maintenance(maintenance_id, maintenance_columns(fields, now))
                self._end_early(change, self.by_id.get(maintenance_id), now)
                window.row = row
                window.known_since = now
                if window.occurrence_at(now) is not None:  # the new definition is active: it starts now
                    self._record(change, window, now, True)
            self.by_id = {**self.by_id, window.id: window}
            self._due_by_boundary(window, now)
        log.info("maintenance %s updated ('%s', pattern %s)", window.id, log_safe(window.name), log_safe(row["pattern"]))

    def delete(self, maintenance_id):
        """Delete a window; one active now ends now (see :meth:`_end_early`).
        :raises NotFound:."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.delete_maintenance(maintenance_id)
                self._end_early(change, self.by_id.get(maintenance_id), now)
            self.by_id = {key: window for key, window in self.by_id.items() if key != maintenance_id}
        log.info("maintenance %s deleted ('%s')", maintenance_id, log_safe(row["name"]))

    def _end_early(self, change, window, now):
        """A window edited or deleted while active ends now: the end rule
        applies as of now (deadline at least now + interval), including to
        the heartbeats whose refresh it had pushed to its planned end."""
        occurrence = window.occurrence_at(now) if window is not None else None
        if occurrence is None:
            return
        covered = []
        changed = self.core.store.end_maintenance(window.pattern, now, pushed_to=occurrence[1], covered=covered)
        change.then(self.core.model.written, {heartbeat_id: now for heartbeat_id, status in changed if status == UP})
        self._record(change, window, now, False, covered)
        log.info("maintenance %s ('%s') ended early, at its change: %d heartbeat(s) get a full interval from now",
                 window.id, log_safe(window.name), self._ruled(covered))

    def _ruled(self, covered):
        """How many of the heartbeats a window covers its end rule applies
        to: those neither down nor paused, and the grouped ones not paused
        (their members neither down nor paused). Counted from the window's
        scan, not from the rows the rule moved: one whose refresh expiry had
        pushed to the end already gets the full interval too."""
        grouped = self.core.model.group_keys
        return sum(1 for heartbeat_id, status, _ in covered
                   if status != PAUSED and (status != DOWN or grouped(heartbeat_id) is not None))

    def _due_by_boundary(self, window, now):
        boundary = window.next_boundary(now)
        if boundary is not None:
            self.core.due_by(boundary)

    def boundaries(self, change, now):
        """In a tick's change: the starts and ends of every window occurrence
        since the last tick. A start is recorded; an end applies the end
        rule (the heartbeats it selects that are neither down nor paused get
        ``refreshed = max(refreshed, end)``) and is recorded. A window
        boundary costs one scan then, not one per tick.

        :returns: ``(windows started, [(window, heartbeats the end rule applies to)])``.
        """
        after = self.checked_at
        change.then(setattr, self, "checked_at", now)
        if after is None or after >= now or not self.by_id:
            return [], []
        started, ended, moved_up = [], [], {}
        for window in self.by_id.values():
            # boundaries from before the engine knew the window (created or
            # replaced since the last look) are not its to apply or record
            since = after if window.known_since is None else max(after, window.known_since)
            if since >= now:
                continue
            start = window.last_start(since, now)
            if start is not None:
                started.append(window)
            end = window.last_end(since, now)
            if start is not None and (end is None or start < end):
                self._record(change, window, start, True, own=True)
            if end is not None:
                covered = []
                changed = self.core.store.end_maintenance(window.pattern, end, covered=covered)
                moved_up.update((heartbeat_id, end) for heartbeat_id, status in changed if status == UP)
                ended.append((window, self._ruled(covered)))
                self._record(change, window, end, False, covered, own=True)
            if start is not None and end is not None and start >= end:  # ended, then started again
                self._record(change, window, start, True, own=True)
        if moved_up:
            change.then(self.core.model.written, moved_up)
        return started, ended

    def _record(self, change, window, at, started, covered=None, own=False):
        """Record a window's start (status ``maintenance``) or end (each
        heartbeat's status then) in the history of the heartbeats it
        covers, with one containment scan per boundary (``covered``: those
        heartbeats, when the end rule's scan found them already, see
        :meth:`Store.end_maintenance`). Paused heartbeats are left alone
        (their time is not counted anyway). Only a change is recorded: a
        start not for a heartbeat a window covered just before, an end not
        for one a window still covers; ``own``: the window's other
        occurrences count (a boundary of its rule), else only the other
        windows (created, replaced, deleted). So overlapping windows, or a
        rule whose occurrences overlap, record one start and one end per
        stretch of maintenance, not one per occurrence. Availability
        leaves maintenance time out. Records only: nothing is written, no
        alarm."""
        if not self.core.store.claim_boundary(window.id, at, started):
            return  # another instance sharing the database recorded it
        excluding = None if own else window.id
        then = math.nextafter(at, -math.inf) if started else at
        verb = "started" if started else "ended"
        reason, extra = f"maintenance '{window.name}' {verb}", {"maintenance": window.id}
        if covered is None:  # the heartbeats the read model says it selects, looked up (not a scan of the table)
            covered = self.core.store.selected(window.pattern, self.core.model.containing(window.pattern))
        scanned = covered
        change.record(Transition({"id": heartbeat_id}, None, status, MAINTENANCE if started else status, at, reason,
                                 extra=extra)
                      for heartbeat_id, status, pattern in scanned
                      if status != PAUSED and self.covering(pattern, then, excluding) is None)

    def document(self, maintenance_id):
        """A window's document; :raises NotFound:."""
        return maintenance_document(self.core.store.maintenance(maintenance_id))

    def documents(self, active=False):
        """Every window, newest first; with ``active``, only those active now."""
        rows = self.core.store.maintenances()
        if active:
            now = self.core.clock()
            windows = self.by_id
            rows = [row for row in rows if row["id"] in windows and windows[row["id"]].occurrence_at(now)]
        return [maintenance_document(row) for row in rows]


def _NOT_COVERED(at):
    """No window covers anything (there is none)."""
    return None


class IntakeSilence:
    """The intake silence (``--intake-silence``): when no event at all
    arrived for that long, the one intake alarm is raised and every
    deadline stops until events come back; then the alarm is resolved and
    the deadlines move later by the silence, as after an outage of the
    monitor.

    :param seconds: None (not watched), or the silence that raises the alarm.
    """

    def __init__(self, core, seconds):
        self.core = core
        self.seconds = seconds
        self.heard_at = None  # clock time of the last event received (or of the start)
        self.since = None  # when the silence began; None while events arrive

    def due(self):
        """When the intake falls silent if no event arrives by then; None
        when it is silent, or not watched."""
        if self.seconds is None or self.since is not None:
            return None
        return self.heard_at + self.seconds

    def horizon(self, now):
        """Up to when deadlines may expire in a tick at ``now``: now; the
        start of a silence that began since (expiry stops there); None
        during a silence (the clock is stopped)."""
        if self.since is not None:
            return None
        silence = self.due()
        return now if silence is None or silence > now else silence

    def alarm(self):
        """The entry of ``GET /api/v2/alarms`` while silent, else None."""
        since = self.since
        if since is None:
            return None
        return {**intake_event(ALARM_STATE, since, intake_output(self.seconds or 0)), "since": api_time(since)}

    def start(self, since):
        """Under the lock: no event arrived from ``since - seconds`` to
        ``since``. Raise the one intake alarm, record the silence (it
        survives a restart), stop expiry until events come back."""
        core = self.core
        with core.funnel.change() as change:
            core.store.set_meta(META_INTAKE_SILENT_SINCE, since)
            change.apply([Transition(None, None, UP, DOWN, since, "intake silent",
                                     output=intake_output(self.seconds))], written=True)
            change.then(setattr, self, "since", since)
        log.warning("intake silence: no event received for %s; deadlines are stopped until events come back",
                    seconds_text(self.seconds))

    def heard(self, now):
        """Under the lock: events arrived at ``now``; True when that ends a
        silence (see :meth:`end`)."""
        self.heard_at = now
        return self.since is not None

    def end(self, now, why, flush):
        """Under the lock: the silence is over at ``now``. Every deadline
        still ahead when it began (all of them: expiry stopped) moves later
        by its length, as after an outage of the monitor; the intake alarm
        is resolved. ``flush`` writes the refreshes kept in memory first
        (see :meth:`Intake.flush`)."""
        core, since = self.core, self.since
        with core.funnel.change() as change:
            flush(change)
            moved = core.store.postpone(since, max(0.0, now - since))
            core.store.delete_meta(META_INTAKE_SILENT_SINCE)
            change.apply([Transition(None, None, DOWN, UP, now, why, output=intake_output(self.seconds or 0))],
                         written=True)
            change.then(setattr, self, "since", None)
        log.info("intake silence over (%s) after %s: %d deadline(s) moved later", why,
                 seconds_text(max(0.0, now - since)), moved)


class Intake:
    """Events coming in: matching, the refreshes they make (coalesced in
    memory while a heartbeat stays up, see :class:`ReadModel`), written in
    chunks in a storm, and the transitions of what comes back up.

    :param groups: the :class:`Groups` part (members refreshed).
    :param silence: the :class:`IntakeSilence` part (an event ends one).
    """

    def __init__(self, core, groups, silence):
        self.core = core
        self.groups = groups
        self.silence = silence
        # Where instances share the database, a refresh is in it before the
        # answer (an instance killed then loses no acknowledged event), and
        # those of concurrent requests are written together (group commit);
        # on SQLite, refreshes are coalesced in memory (see ReadModel).
        self.write_before_answer = core.store.shared_by_instances
        #: the events received lately (memory only)
        self.recent = RecentEvents()
        #: events received (valid requests) since the start
        self.events_received = 0

    def ingest(self, events, body_bytes=0, pinged=None, blocking=True):
        """Refresh every heartbeat an event matches, at the receive time.

        Heartbeats coming back in a storm are written in chunks of
        :data:`STORM_CHUNK_HEARTBEATS`, letting go of the lock in between.

        :param events: validated events (dicts).
        :param body_bytes: the request's body they came in (bytes), which
            :class:`RecentEvents` keeps for the pattern tester (else it
            encodes ``events``).
        :param pinged: None, or (a ping, ``events`` empty: :class:`Pings`)
            a function called under the lock with the time, returning
            ``{heartbeat id: the ping's record}`` of the heartbeats it
            refreshes, each recorded in their ``/events`` whether written now
            or not (:func:`ping_record`). Unless ``blocking``, it changes
            nothing (it may raise :class:`WouldBlock`).
        :param blocking: False: only what is done in memory (the lock free,
            every refresh waiting in memory, the common case of heartbeats
            up); anything else raises :class:`WouldBlock` before a change.
        :returns: the ids refreshed, in order of first match, no duplicates.
        """
        core = self.core
        if not blocking and (self.write_before_answer or not core.is_loaded()):
            raise WouldBlock()
        with core.lock.bounded() if blocking else core.lock.now():
            core.load()
            now = core.clock()
            model = core.model
            members = {}
            # id -> the last event that matched it
            found = model.matches(events, members) if pinged is None else pinged(now)
            back = self.silence.heard(now) if events or pinged is not None else False
            if back:
                if not blocking:  # (heard_at, the time of the last event, is now: so it is)
                    raise WouldBlock()
                self.silence.end(now, "events came back", self.flush)
            matched = list(found)
            # Heartbeats with a schedule are refreshed to their next run, each
            # written now (with the others that may change state), never kept
            scheduled = model.scheduled_among(matched)
            plain = [heartbeat_id for heartbeat_id in matched if heartbeat_id not in set(scheduled)] \
                if scheduled else matched
            if not blocking and (scheduled or not model.keeps_all(model.plain(plain) if members else plain, now)
                                 or not model.members_kept_all(members, now)):
                raise WouldBlock()
            had_unwritten = model.has_unwritten()
            keep = not self.write_before_answer
            to_write, kept = model.refreshed(model.plain(plain) if members else plain, now, keep)
            members_to_write, members_kept = model.members_refreshed(members, now, keep)
            if (kept or members_kept) and not had_unwritten:
                core.due_by(now + REFRESH_WRITE_SECONDS)  # the tick that writes them
            self.events_received += len(events)
            # a sample (see RecentEvents); the lists it lets go are freed when
            # this returns, after the lock is released, not under it
            if pinged is None:
                dropped = self.recent.add(now, events, found, to_write + scheduled if scheduled else to_write,
                                          members_to_write, body_bytes)
            else:  # every ping is listed
                dropped = self.recent.add(now, (), found, found, limit=MAX_SHOWN_PING_BYTES)
            # Shared database: heartbeats already up (the common case) are
            # written after the lock, with other requests' (group commit);
            # meanwhile they are kept as unwritten, so that a tick in
            # between writes them before it looks for what is due.
            together = None
            if self.write_before_answer and not back and not members_to_write and not scheduled and 0 < len(to_write) \
                    <= REFRESH_CHUNK_HEARTBEATS and len(model.up_among(to_write)) == len(to_write):
                together = dict.fromkeys(to_write, now)
                model.deferred(to_write, now)
            else:
                # One heartbeat already up, or one member up (the common cases),
                # is one statement and no transition; otherwise transactions
                # through the funnel for those that may change state.
                if not back and not members_to_write and not scheduled and len(to_write) == 1 \
                        and model.is_up(to_write[0]) and core.store.refresh_if_not_down(to_write[0], now):
                    model.written({to_write[0]: now})
                    return matched
                if not back and not to_write and not scheduled and len(members_to_write) == 1:
                    heartbeat_id, keys, values = members_to_write[0]
                    if model.member_is_up(heartbeat_id, values) and core.store.refresh_member_if_up(
                            heartbeat_id, self.groups.key(heartbeat_id, values), now):
                        model.members_written({(heartbeat_id, values): now})
                        return matched
                # Heartbeats up only need their refresh written (one cheap
                # statement each, no state change), in big chunks; the others
                # (heartbeats that may come back up, then members: tuples) in
                # storm-sized chunks.
                up = model.up_among(to_write)
                up_set = set(up)
                others = [heartbeat_id for heartbeat_id in to_write if heartbeat_id not in up_set] + scheduled \
                    + members_to_write
                chunks = [(self._write_up_chunk, up[start:start + REFRESH_CHUNK_HEARTBEATS])
                          for start in range(0, len(up), REFRESH_CHUNK_HEARTBEATS)]
                chunks += [(self.refresh_chunk, others[start:start + STORM_CHUNK_HEARTBEATS])
                           for start in range(0, len(others), STORM_CHUNK_HEARTBEATS)]
                for _, later in chunks[1:]:
                    model.deferred([item for item in later if type(item) is str], now)
                    model.members_deferred([item for item in later if type(item) is tuple], now)
                if chunks:
                    write, first = chunks[0]
                    write(first, now)
        if not blocking:
            # nothing committed: nothing of its own to publish, and others'
            # events are published by their own threads (on_alarm may take
            # its time, or call the service over HTTP: never in the event loop)
            return matched
        if together is not None:
            return self._write_together(together, matched)
        core.publisher.publish()
        for write, heartbeat_ids in chunks[1:]:
            with core.storm_chunk():
                write(heartbeat_ids, now)
            core.publisher.publish()
        return matched

    def _write_together(self, refreshes, matched):
        """After the lock: write refreshes ``{id: time}`` of heartbeats up
        with those of concurrent requests (:meth:`Store.write_refreshes_now`),
        then, under the lock, account for them (those another instance put
        late, down or paused meanwhile are refreshed through the funnel)."""
        core = self.core
        try:
            missed = core.store.write_refreshes_now(refreshes.items())
        except StoreError:
            with core.lock:
                core.model.unkept(refreshes)
            raise
        with core.lock:
            self._written(refreshes, missed)
        core.publisher.publish()
        return matched

    def flush(self, change):
        """In a change: write the refreshes kept in memory (heartbeats and
        members up). One that another instance put late, down or paused
        meanwhile (shared PostgreSQL) is refreshed like any other once the
        change commits, resolving its alarm."""
        model, store = self.core.model, self.core.store
        unwritten = model.unwritten()
        missed = store.write_refreshes(unwritten.items()) if unwritten else []
        unwritten_members = model.unwritten_members()
        if unwritten_members:
            store.write_member_refreshes([(heartbeat_id, self.groups.key(heartbeat_id, values), t)
                                          for heartbeat_id, values, t in unwritten_members])
            change.then(model.members_written, {(heartbeat_id, values): t
                                                for heartbeat_id, values, t in unwritten_members})
        if unwritten:
            change.then(self._written, unwritten, missed)

    def _written(self, refreshes, missed):
        """Under the lock, after commit: ``refreshes`` (``{id: time}``) were
        written, except ``missed``, whose heartbeats another instance put
        late, down or paused meanwhile: those are refreshed like any other,
        resolving their alarm."""
        model = self.core.model
        model.written({key: value for key, value in refreshes.items() if key not in missed})
        for heartbeat_id in missed:
            model.went_down([heartbeat_id])
            self.refresh_chunk([heartbeat_id], refreshes[heartbeat_id])

    def _write_up_chunk(self, heartbeat_ids, now):
        """Under the lock: write refreshes at ``now`` of heartbeats up (no
        transition: they stay up)."""
        refreshes = dict.fromkeys(heartbeat_ids, now)
        self._written(refreshes, self.core.store.write_refreshes(refreshes.items()))

    def refresh_chunk(self, items, now):
        """Under the lock: write refreshes at ``now`` of heartbeats (ids) and
        members (``(heartbeat id, keys, values)``), in one change: those
        pending, late or down come up (resolving the alarm of those late or
        down); a paused one only counts the event."""
        if not items:
            return
        heartbeat_ids = [item for item in items if type(item) is str]
        members = [item for item in items if type(item) is tuple]
        core = self.core
        with core.funnel.change() as change:
            if heartbeat_ids:
                refreshes = core.model.refresh_times(heartbeat_ids, now)  # None: each at now
                special = core.store.refresh(heartbeat_ids, now, refreshes)  # written: one statement for all
                refreshed = dict.fromkeys(heartbeat_ids, now) if refreshes is None else refreshes
                change.apply((Transition(row, None, row["status"], UP, now, "matching event received",
                                         refreshed[row["id"]], last_event=now)  # for its notice: written
                              for row in special if row["status"] != PAUSED), written=True)
                special_ids = {row["id"] for row in special}  # the others were up: no transition
                change.then(core.model.written, {heartbeat_id: refreshed[heartbeat_id] for heartbeat_id in
                                                 heartbeat_ids if heartbeat_id not in special_ids})
            if members:
                self.groups.refreshed(change, members, now)


class Groups:
    """The members of grouped heartbeats: those an event names (created on
    first sight, up to :data:`MAX_MEMBERS_PER_HEARTBEAT`), their state when
    their heartbeat is replaced, one removed by hand, a page of them, and
    the grouped heartbeat's status following theirs."""

    def __init__(self, core, windows):
        self.core = core
        self.windows = windows
        self._capped = set()  # grouped heartbeats whose member cap was said in the log

    def key(self, heartbeat_id, values):
        """The stored key of member ``values`` of a heartbeat."""
        return member_key(dict(zip(self.core.model.group_keys(heartbeat_id), values)))

    def follow(self, change, times):
        """In a change: grouped heartbeats' status follows their members'
        (:meth:`Store.update_group_status`), each change recorded as the
        heartbeat's own (no alarm: the members have them). ``times``:
        ``{id: when their members changed}``."""
        change.apply((Transition({"id": heartbeat_id}, None, None, status, times[heartbeat_id],
                                 GROUP_REASONS[status], alarm=None)
                      for heartbeat_id, status in self.core.store.update_group_status(list(times))), written=True)

    def refreshed(self, change, items, now):
        """In a change: members ``(heartbeat id, keys, values)`` had a
        matching event at ``now``. Each goes up (resolving its alarm if it
        was late or down); one of a paused heartbeat only moves its
        ``last_event``; a member not seen before is created (up, or paused),
        unless its heartbeat has :data:`MAX_MEMBERS_PER_HEARTBEAT` members
        already. Items whose heartbeat was deleted or regrouped since they
        were matched (between the chunks of a storm) are dropped."""
        core = self.core
        model, store = core.model, core.store
        by_heartbeat = {}
        for heartbeat_id, keys, values in items:
            if model.group_keys(heartbeat_id) == keys:
                by_heartbeat.setdefault(heartbeat_id, {})[member_key(dict(zip(keys, values)))] = values
        for heartbeat_id, wanted in by_heartbeat.items():
            heartbeat = store.heartbeat(heartbeat_id)
            rows = store.members_by_key(heartbeat_id, list(wanted))
            refresh, touch, insert, transitions, up = [], [], [], [], {}
            room = min(MAX_MEMBERS_PER_HEARTBEAT - model.member_count(heartbeat_id),
                       MAX_MEMBERS - model.member_total())
            if room > 0:
                self._capped.discard(heartbeat_id)  # say it again when it fills up again
            for key, values in wanted.items():
                row = rows.get(key)
                if row is None:
                    if heartbeat["status"] == PAUSED:
                        insert.append(member_row(heartbeat, key, now, PAUSED, last_event=now))
                        transitions.append(Transition(heartbeat, key, None, PAUSED, now,
                                                      "new member (heartbeat paused)", now, last_event=now))
                    elif len(insert) < room:
                        insert.append(member_row(heartbeat, key, now, UP, last_event=now))
                        transitions.append(Transition(heartbeat, key, None, UP, now,
                                                      "new member: matching event received", now, last_event=now))
                    else:
                        self._refuse(heartbeat)
                elif row["status"] == PAUSED:
                    touch.append((heartbeat_id, key))
                else:
                    refresh.append((heartbeat_id, key))
                    if row["status"] != UP:
                        transitions.append(Transition(heartbeat, key, row["status"], UP, now,
                                                      "matching event received", now, last_event=now))
                    else:
                        up[(heartbeat_id, values)] = now
            # written: one statement per kind for all of them, transitions or not
            store.refresh_members(refresh, now)
            store.touch_members(touch, now)
            store.insert_members(insert)
            change.apply(transitions, written=True)
            if up:
                change.then(model.members_written, up)
            if any(t.new == UP for t in transitions):
                self.follow(change, {heartbeat_id: now})

    def _refuse(self, heartbeat):
        if heartbeat["id"] not in self._capped:
            self._capped.add(heartbeat["id"])
            count = self.core.model.member_count(heartbeat["id"])
            log.warning("heartbeat %s ('%s') has %d members, the most it may have (%d per heartbeat, %d for every "
                        "heartbeat together, which have %d): events naming new members are ignored (they still "
                        "refresh the members it has)",
                        heartbeat["id"], log_safe(heartbeat["name"]), count, MAX_MEMBERS_PER_HEARTBEAT,
                        MAX_MEMBERS, self.core.model.member_total())

    def room(self, count):
        """Check that ``count`` more members fit under :data:`MAX_MEMBERS`
        (expected members, created with their heartbeat).
        :raises Invalid: when they do not."""
        room = MAX_MEMBERS - self.core.model.member_total()
        if count > room:
            raise Invalid([f"expected_members: {count} more members do not fit: every heartbeat together may have "
                           f"{MAX_MEMBERS:,} members, there is room for {max(room, 0):,}"])

    def regrouped(self, change, old, new, now):
        """In an update's change: what it does to a heartbeat that is or was
        grouped, and to its members.

        A changed ``group_by``, or a changed pattern of a grouped heartbeat,
        starts afresh: every member goes (their open alarms resolved), the
        expected ones come back pending, the heartbeat is pending (paused
        stays paused); a heartbeat that was not grouped has its own alarm
        resolved. Otherwise the members get the new timing; expected
        members added are created pending (or marked expected, if they
        exist); those no longer listed stay, as ordinary members (retired
        once down for ``retire_after``); a late member stays late only if
        the new ``late_after`` has passed since its refresh. A status that
        changed is recorded as the update's.
        """
        store = self.core.store
        heartbeat_id = old["id"]
        paused = old["status"] == PAUSED
        afresh = old["group_by"] != new["group_by"] or old["pattern"] != new["pattern"]
        expected_old = {member_key(m) for m in json.loads(old["expected_members"] or "[]")}
        expected_new = [member_key(m) for m in json.loads(new["expected_members"] or "[]")]
        if afresh:
            if old["group_by"] is not None:  # memory forgets them with the old grouping (ReadModel.updated)
                change.apply((Transition(old, row["member"], row["status"], DELETED, now, "regrouped", record=False)
                              for row in store.delete_all_members(heartbeat_id)), written=True, follow=False)
            to_create = expected_new if new["group_by"] is not None else []
        else:
            store.set_member_timing(heartbeat_id, new["interval_seconds"], new["late_seconds"], new["retire_seconds"])
            store.set_expected(heartbeat_id, sorted(expected_old - set(expected_new)), False, new["retire_seconds"])
            fresh = [key for key in expected_new if key not in expected_old]
            existing = store.members_by_key(heartbeat_id, fresh)
            store.set_expected(heartbeat_id, list(existing), True, None)
            to_create = [key for key in fresh if key not in existing]
            late_seconds = new["late_seconds"]
            change.apply(Transition(new, row["member"], LATE, UP if row["last_event"] is not None else PENDING, now,
                                    "updated", row["refreshed"], None)
                         for row in store.members_with_status(heartbeat_id, LATE)
                         if late_seconds is None or row["refreshed"] + late_seconds > now)
        status = PAUSED if paused else PENDING
        if to_create:
            self.room(len(to_create))
            store.insert_members([member_row(new, key, now, status, expected=True) for key in to_create])
            change.apply((Transition(new, key, None, status, now, "expected member created", now)
                          for key in to_create), written=True)
        if afresh:  # its own alarm, if it was not grouped; its members had theirs
            change.apply([Transition(old, None, old["status"], status, now, "updated", now, None,
                                     last_event=old["last_event"], record=old["status"] != status)])
        if new["group_by"] is not None:
            self.follow(change, {heartbeat_id: now})
        if not afresh:
            status = store.heartbeat(heartbeat_id)["status"]
            if status != old["status"]:
                change.record([Transition(old, None, old["status"], status, now, "updated")])

    def delete(self, heartbeat_id, member):
        """Remove one member (``member``: its pairs), resolving its alarm if
        it is late or down. :raises NotFound: no such heartbeat;
        :raises MemberNotFound:; :raises Invalid: when ``member`` does
        not give exactly the heartbeat's group_by keys."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.heartbeat(heartbeat_id)
                keys = group_keys(row)
                if keys is None:
                    raise Invalid(["this heartbeat has no group_by: it has no members"])
                if set(member) != set(keys):
                    raise Invalid(["the query must give exactly the group_by keys, each once: " + ", ".join(keys)])
                key = member_key(member)
                found = core.store.members_by_key(heartbeat_id, [key]).get(key)
                if found is None:
                    raise MemberNotFound(key)
                change.apply([Transition(row, key, found["status"], DELETED, now, "member deleted")])
                self.follow(change, {heartbeat_id: now})
        log.info("member %s of heartbeat %s ('%s') removed", log_safe(key), heartbeat_id, log_safe(row["name"]))

    def page(self, heartbeat_id, statuses=(), after=None, limit=DEFAULT_MEMBERS_PAGE):
        """A page of a heartbeat's members, by member key: those after the
        key ``after`` (None: from the first) whose status is one of
        ``statuses`` (any, when empty); ``{"members": [...], "next": cursor
        or None}`` (see :func:`member_document`). A heartbeat that is not
        grouped has none. :raises NotFound:."""
        core = self.core
        core.load()
        row = core.store.heartbeat(heartbeat_id)
        if row["group_by"] is None:
            return {"members": [], "next": None}
        rows = core.store.members_page(heartbeat_id, list(statuses), after, limit + 1)
        covering = self.windows.covering(row["pattern"], core.clock())
        model = core.model
        documents = [member_document(member, covering, model.member_unwritten_refresh(
            heartbeat_id, model.member_values(heartbeat_id, member["member"]))) for member in rows[:limit]]
        more = len(rows) > limit
        return {"members": documents, "next": encode_member_cursor(rows[limit - 1]["member"]) if more else None}


class Heartbeats:
    """A heartbeat's life through the API: created, replaced, deleted,
    paused, resumed, or put into a status at once (:meth:`put`: a job that
    reports its own failure)."""

    def __init__(self, core, groups, intake):
        self.core = core
        self.groups = groups
        self.intake = intake

    def create(self, fields, heartbeat_id=None):
        """Create a heartbeat from validated fields; return its id (a new
        UUID4, or ``heartbeat_id``: a check moving in keeps its UUID).

        :raises Taken: when another heartbeat has the pattern (slug, push token).
        """
        core = self.core
        with core.operation() as now:
            row = {**heartbeat_columns(fields, now), "id": heartbeat_id or str(uuid.uuid4()), "created": int(now),
                   "status": PENDING}
            row["refreshed"] = refresh_time(row, now)
            expected = [member_key(member) for member in fields.get("expected_members") or ()]
            self.groups.room(len(expected))
            with core.funnel.change() as change:
                core.store.insert_heartbeat(row)
                change.then(core.model.created, row)
                change.apply([Transition(row, None, None, PENDING, now, "created", row["refreshed"])], written=True)
                if expected:
                    core.store.insert_members([member_row(row, key, now, PENDING, expected=True) for key in expected])
                    change.apply((Transition(row, key, None, PENDING, now, "expected member created", now)
                                  for key in expected), written=True)
        log.info("heartbeat %s created ('%s', pattern %s)", row["id"], log_safe(row["name"]),
                 log_safe(row["pattern"]))
        return row["id"]

    def update(self, heartbeat_id, fields):
        """Replace a heartbeat's fields, keeping its id, creation and state.

        A changed interval (or ``late_after``) applies from the last refresh.
        A heartbeat that is down stays down; if its pattern changed, its
        alarm is resolved under the old resource and raised again under the
        new one, so no alarm is left open under a resource nobody will
        resolve. One that is late stays late only if its new ``late_after``
        has passed since its last refresh; otherwise it goes back to ``up``
        (``pending`` if it never had a matching event) and its minor alarm
        is resolved.

        :raises NotFound: when there is none.
        :raises PatternExists: when another heartbeat has the new pattern.
        """
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                old, new = core.store.update_heartbeat(heartbeat_id, heartbeat_columns(fields, now))
                change.then(core.model.updated, old, new)
                new = self._rescheduled(change, old, new)
                late_seconds = new["late_seconds"]
                if old["group_by"] is not None or new["group_by"] is not None:
                    self.groups.regrouped(change, old, new, now)
                elif old["status"] == LATE and (late_seconds is None or new["refreshed"] + late_seconds > now):
                    change.apply([Transition(old, None, LATE, UP if new["last_event"] is not None else PENDING, now,
                                             "updated", new["refreshed"], None)])
                elif old["status"] in ALARMED and old["pattern"] != new["pattern"]:
                    # the alarm moves to the new resource: resolved under the old one, raised under the new one
                    state = LATE_STATE if old["status"] == LATE else ALARM_STATE
                    change.apply([Transition(old, None, old["status"], old["status"], now, "pattern changed",
                                             alarm=RESOLVED_STATE, record=False),
                                  Transition(new, None, old["status"], old["status"], now, "pattern changed",
                                             alarm=state, record=False)], written=True)
            new = core.store.heartbeat(heartbeat_id)
            if new["status"] not in (DOWN, PAUSED):  # a shorter interval may fall due sooner
                core.due_by(due_of(with_refresh(new, core.model.unwritten_refresh(heartbeat_id))))
            if new["group_by"] is not None:
                core.due_by(now + (new["late_seconds"] or new["interval_seconds"]))
        log.info("heartbeat %s updated ('%s', pattern %s)", heartbeat_id, log_safe(new["name"]),
                 log_safe(new["pattern"]))

    def _rescheduled(self, change, old, new):
        """In an update's change: when the schedule (or its zone) changed,
        the refresh is the next run after the last refresh under the new
        one (an interval only: the last refresh itself). The last refresh
        is the last event (or creation) when there was a schedule (its
        refresh was a run ahead), else the refresh as it was (with one kept
        in memory). :returns: ``new``, with its ``refreshed`` as it is now."""
        if (old["schedule"], old["tz"]) == (new["schedule"], new["tz"]) or new["status"] in (DOWN, PAUSED):
            return new
        core = self.core
        if old["schedule"] is None:
            base = max(old["refreshed"], core.model.unwritten_refresh(old["id"]) or -math.inf)
        else:
            base = new["last_event"] if new["last_event"] is not None else float(new["created"])
        refreshed = refresh_time(new, base)
        core.store.set_state(new["id"], new["status"], refreshed, new["last_event"], new["alarm_since"])
        change.then(core.model.moved, new["id"], refreshed)
        return {**{key: new[key] for key in new.keys()}, "refreshed": refreshed}

    def delete(self, heartbeat_id):
        """Delete a heartbeat and its state (and members), resolving its
        alarm if it is late or down (those of its members);
        :raises NotFound:."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.delete_heartbeat(heartbeat_id)  # its history goes with it: nothing recorded
                change.then(core.model.deleted, row)
                change.then(self.intake.recent.forget, heartbeat_id)
                if row["group_by"] is not None:
                    change.apply((Transition(row, member["member"], member["status"], DELETED, now,
                                             "heartbeat deleted", record=False)
                                  for member in core.store.delete_all_members(heartbeat_id)), written=True)
                else:
                    change.apply([Transition(row, None, row["status"], DELETED, now, "deleted", record=False)],
                                 written=True)
        log.info("heartbeat %s deleted ('%s')", row["id"], log_safe(row["name"]))

    def pause(self, heartbeat_id):
        """Pause a heartbeat: no alarm until it is resumed; matching events
        only move its ``last_event``. An open alarm (late or down) is
        resolved. A grouped heartbeat pauses every member the same way. A
        no-op when it is paused already; :raises NotFound:."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.heartbeat(heartbeat_id)
                if row["status"] == PAUSED:
                    return
                last_event = core.model.unwritten_refresh(heartbeat_id) or row["last_event"]
                change.apply([Transition(row, None, row["status"], PAUSED, now, "paused", row["refreshed"], None,
                                         last_event=last_event)])
                if row["group_by"] is not None:
                    unwritten = core.model.unwritten_members(heartbeat_id)  # their last events, before they pause
                    core.store.write_member_refreshes([(heartbeat_id, self.groups.key(heartbeat_id, values), t)
                                                       for _, values, t in unwritten])
                    change.apply((Transition(row, member["member"], member["status"], PAUSED, now, "paused",
                                             record=False)
                                  for member in core.store.pause_members(heartbeat_id)), written=True)
                    change.then(core.model.members_went_down, heartbeat_id)  # all of them (those up too)
        log.info("heartbeat %s paused ('%s', was %s)", heartbeat_id, log_safe(row["name"]), row["status"])

    def resume(self, heartbeat_id):
        """Resume a paused heartbeat: it starts afresh, ``pending``, its
        deadline an interval from now (each of its members, for a grouped
        one). A no-op when it is not paused; :raises NotFound:."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.heartbeat(heartbeat_id)
                if row["status"] != PAUSED:
                    return
                change.apply([Transition(row, None, PAUSED, PENDING, now, "resumed", refresh_time(row, now), None,
                                         last_event=row["last_event"])])
                if row["group_by"] is not None:
                    core.store.resume_members(heartbeat_id, now)  # all of them, in one statement: none is recorded
                    self.groups.follow(change, {heartbeat_id: now})
        log.info("heartbeat %s resumed ('%s')", heartbeat_id, log_safe(row["name"]))

    def put(self, heartbeat_id, status, reason, output=None, member=None, extra=None, event=False):
        """Put a heartbeat (or one of its members: ``member`` its pairs) into
        ``status`` now, through the funnel, as a job reporting its own
        failure does (see :func:`transition_now`): down or late raise the
        alarm at once, with ``output`` in place of the heartbeat's when
        given (``extra``: more keys of its history entry; ``event``: it came
        with an event, its last event now); up or pending start afresh
        (resolving an open alarm). A grouped heartbeat's own status follows
        its members' and cannot be put.

        :returns: the :class:`Transition` applied, or None when there was
            none (already in that status, or paused).
        :raises NotFound: no such heartbeat; :raises MemberNotFound:;
            :raises ValueError: a grouped heartbeat without ``member``.
        """
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.heartbeat(heartbeat_id)
                key = None
                if member is not None:
                    key = member_key(member)
                    found = core.store.members_by_key(heartbeat_id, [key]).get(key)
                    if found is None:
                        raise MemberNotFound(key)
                    row = {**dict(found), "id": row["id"], "name": row["name"], "output": row["output"],
                           "pattern": row["pattern"]}
                elif row["group_by"] is not None:
                    raise ValueError("a grouped heartbeat's status follows its members': put a member")
                transition = transition_now(row, status, now, reason, output, key, extra, event)
                if transition is None:
                    return None
                change.apply([transition])
                if key is not None:
                    self.groups.follow(change, {heartbeat_id: now})
        return transition


class Pings:
    """Pings (docs/pings.md): requests addressed to one heartbeat directly (by
    its id, its slug, its push token or its name), whatever its pattern. A
    success refreshes it as a matching event does, on the same path
    (:meth:`Intake.ingest`); a failure puts it down at once through the
    funnel (:meth:`Heartbeats.put`, the run's own words as the alarm's
    output), and the next success resolves it; ``start`` begins a run;
    ``log`` only records. Every ping is listed in the heartbeat's
    ``/events`` (:func:`ping_record`). A grouped heartbeat's status follows
    its members': a ping to it is listed, nothing more.

    Runs live in memory, as the recent events do (a restart forgets the
    open ones): the open runs of each heartbeat by ``rid``, and for a
    heartbeat with a ``max_run``, a heap of when each run overruns, which
    the tick reads (:meth:`overran`), so nothing is scanned per tick.
    """

    def __init__(self, core, intake, heartbeats):
        self.core = core
        self.intake = intake
        self.heartbeats = heartbeats
        self._runs = {}  # heartbeat id -> {rid or None: start time}, oldest first
        self._overruns = []  # heap of (deadline, heartbeat id, rid or "", start time, max_run as written)
        self._overruns_live = 0  # entries of open runs in that heap when it was last cleared
        #: pings received since the start, by kind (:data:`PING_KINDS`)
        self.counts = dict.fromkeys(PING_KINDS, 0)
        # counted once the ping is taken, after the engine's lock (a ping the
        # event loop gives up on is not counted): by the loop and the workers
        # at once, so under a lock of its own (``+=`` reads, then writes)
        self._counting = threading.Lock()
        self._unknown_names = set()  # Opsgenie pings' names no heartbeat has, logged once each
        self._last_runs = {}  # heartbeat id -> (end time, duration or None, failure output or None)

    def last_run(self, heartbeat_id):
        """The heartbeat's last run since the start, as its page shows it:
        ``{"at", "duration", "output"}`` (``duration`` None when no start
        ping began it, ``output`` None when it ended well), or None."""
        last = self._last_runs.get(heartbeat_id)
        return None if last is None else dict(zip(("at", "duration", "output"), last))

    def by_slug(self, slug, blocking=True):
        """The id of the heartbeat with that ``slug``, or None (from memory,
        once loaded: :raises StoreError:, never a 404 for a database that
        did not answer; unless ``blocking``, :class:`WouldBlock` then)."""
        self._loaded(blocking)
        return self.core.model.by_slug(slug)

    def by_push_token(self, token):
        """The id of the heartbeat with that ``push_token``, or None (as :meth:`by_slug`)."""
        self._loaded(True)
        return self.core.model.by_push_token(token)

    def _loaded(self, blocking):
        core = self.core
        if not blocking and not core.is_loaded():
            raise WouldBlock()
        core.load()

    def create(self, slug):
        """``?create=1``: the heartbeat of a slug no heartbeat has, named and
        slugged ``slug``, pattern ``{"ping": slug}``, Healthchecks' default
        timing (:data:`PING_CREATED_INTERVAL`, :data:`PING_CREATED_LATE_AFTER`).

        :returns: ``(its id, True)``, or ``(the id, False)`` when another
            request created it meanwhile (its slug, or its pattern, found
            taken: by the heartbeat of that slug, that is no ambiguity).
        :raises PatternExists: another heartbeat's pattern is ``{"ping": slug}``.
        """
        fields = validate_heartbeat({"name": slug, "slug": slug, "pattern": {"ping": slug},
                                     "expected_interval": PING_CREATED_INTERVAL,
                                     "late_after": PING_CREATED_LATE_AFTER}, PING_AUTHOR)
        try:
            return self.heartbeats.create(fields), True
        except (SlugExists, PatternExists) as exc:
            heartbeat_id = self.by_slug(slug)
            if heartbeat_id is None and isinstance(exc, PatternExists):
                raise
            if heartbeat_id is None:  # created, then deleted or changed meanwhile
                raise NotFound(slug) from None
            return heartbeat_id, False

    def named(self, name):
        """The ids of the heartbeats named ``name`` (an Opsgenie ping's);
        none is logged once per name (at most :data:`MAX_UNKNOWN_PING_NAMES`)."""
        ids = self.core.store.ids_named(name)
        if not ids and name not in self._unknown_names and len(self._unknown_names) < MAX_UNKNOWN_PING_NAMES:
            self._unknown_names.add(name)
            log.warning("Opsgenie heartbeat ping for '%s': no heartbeat has that name (said once)", log_safe(name))
        return ids

    def ping(self, heartbeat_id, kind, method, client, body=b"", rid=None, exit_status=None, blocking=True):
        """One ping to a heartbeat, received now.

        :param kind: one of :data:`PING_KINDS`.
        :param method: the HTTP method; ``client``: the client's address.
        :param body: the request's body (bytes; kept up to
            :data:`PING_BODY_LIMIT_BYTES`).
        :param rid: the run's id (a UUID), or None.
        :param exit_status: the job's exit status, when the URL gave one.
        :param blocking: False: only a ping done in memory (a success to a
            heartbeat up, not grouped, no run open: see
            :meth:`Intake.ingest`); anything else raises :class:`WouldBlock`
            before a change.
        :raises NotFound: there is no such heartbeat.
        """
        if not blocking and kind != "success":
            raise WouldBlock()
        text, cut = ping_body_text(body)
        core = self.core
        facts = {}

        def received(now):  # under the lock
            core.model.document(heartbeat_id)  # NotFound
            grouped = core.model.group_keys(heartbeat_id) is not None
            if not blocking and (grouped or heartbeat_id in self._runs):
                raise WouldBlock()  # (a run that ends is written in the history)
            facts["duration"] = duration = self._run(heartbeat_id, kind, rid, now)
            record = ping_record(kind, method, client, text, cut, rid, exit_status, duration)
            if grouped or kind != "success":
                self.intake.recent.add(now, (), {heartbeat_id: record}, (heartbeat_id,), limit=MAX_SHOWN_PING_BYTES)
                return {}
            return {heartbeat_id: record}

        if kind == "success":
            self.intake.ingest((), pinged=received, blocking=blocking)
        else:
            with core.operation() as now:
                received(now)
        with self._counting:  # (once taken: not before a WouldBlock)
            self.counts[kind] += 1
        duration = facts["duration"]
        if kind == "fail" or duration is not None:
            self._last_runs[heartbeat_id] = (core.clock(), duration,
                                             failure_output(exit_status, text) if kind == "fail" else None)
        if kind == "fail" and core.model.group_keys(heartbeat_id) is None:
            self.heartbeats.put(heartbeat_id, DOWN, "failed" if exit_status is None else f"exit status {exit_status}",
                                output=failure_output(exit_status, text),
                                extra=None if duration is None else {"duration": duration}, event=True)
        elif kind == "success" and duration is not None:
            self._finished(heartbeat_id, duration)

    def _run(self, heartbeat_id, kind, rid, now):
        """Under the lock: a ``start`` opens a run (a run of the same
        ``rid`` starts again), a success or failure ends the one of its
        ``rid`` (None: the last started without one); returns the ended
        run's duration in seconds, or None."""
        if kind == "start":
            runs = self._runs.setdefault(heartbeat_id, {})
            runs.pop(rid, None)
            runs[rid] = now
            if len(runs) > MAX_OPEN_RUNS_PER_HEARTBEAT:
                del runs[next(iter(runs))]
            max_run = json.loads(self.core.model.document(heartbeat_id)).get("max_run")
            seconds = parse_interval(max_run) if isinstance(max_run, str) else None
            if seconds:
                heapq.heappush(self._overruns, (now + seconds, heartbeat_id, rid or "", now, max_run))
                if len(self._overruns) > 2 * self._overruns_live + OVERRUN_HEAP_SLACK:
                    self._clear_overruns()
                self.core.due_by(now + seconds)
            return None
        if kind == "log":
            return None
        runs = self._runs.get(heartbeat_id)
        started = runs.pop(rid, None) if runs else None
        if runs is not None and not runs:
            del self._runs[heartbeat_id]
        return None if started is None else round(now - started, 3)

    def _finished(self, heartbeat_id, duration):
        """A run that ended well, in the heartbeat's history (with its
        ``duration``): a record, not a state change."""
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                try:
                    row = core.store.heartbeat(heartbeat_id)
                except NotFound:
                    return  # deleted meanwhile
                change.record([Transition(row, None, row["status"], row["status"], now,
                                          f"run finished in {seconds_text(duration)}", extra={"duration": duration})])

    def _clear_overruns(self):
        """Under the lock: the overrun heap without the entries of runs that
        ended, started again or were forgotten (each ``/start`` adds one, and
        only its deadline took it out: a flood of starts with a long
        ``max_run`` grew it without bound). Amortized O(1) per start; the
        heap stays within twice the open runs, plus :data:`OVERRUN_HEAP_SLACK`."""
        live = {}
        for entry in self._overruns:
            _, heartbeat_id, rid, started, _ = entry
            if self._runs.get(heartbeat_id, {}).get(rid or None) == started:
                live[(heartbeat_id, rid, started)] = entry
        self._overruns = list(live.values())
        heapq.heapify(self._overruns)
        self._overruns_live = len(self._overruns)

    def overran(self, change, now):
        """In the tick's change: each run not finished within its
        heartbeat's ``max_run`` puts it down ("run exceeded 30m"), dated
        when it overran. :returns: how many runs overran."""
        core, heap, transitions = self.core, self._overruns, []
        while heap and heap[0][0] <= now:
            deadline, heartbeat_id, rid, started, max_run = heapq.heappop(heap)
            runs = self._runs.get(heartbeat_id, {})
            rid = rid or None
            if runs.get(rid) != started:
                continue  # finished, or started again
            del runs[rid]
            if not runs:
                self._runs.pop(heartbeat_id, None)
            try:
                row = core.store.heartbeat(heartbeat_id)
            except NotFound:
                continue  # deleted
            reason = f"run exceeded {max_run}"
            transition = transition_now(row, DOWN, deadline, reason, output=reason)
            if transition is not None and row["group_by"] is None:
                transitions.append(transition)
        change.apply(transitions)
        return len(transitions)

    def next_overrun(self):
        """When the next open run overruns (clock time), or None."""
        return self._overruns[0][0] if self._overruns else None


class Views:
    """The read side: documents, states, alarms, and the pages' and metrics'
    overviews, from memory where it holds them, else the database, with
    the refreshes memory holds and the windows that cover counted."""

    def __init__(self, core, windows, silence, lifecycle):
        self.core = core
        self.windows = windows
        self.silence = silence
        self.lifecycle = lifecycle

    def document(self, heartbeat_id, blocking=True, anonymous=False):
        """The heartbeat's document as JSON bytes, from memory; :raises NotFound:.
        (With other instances, one not found is looked for in their changes
        first: it may have been created a moment ago through another; for an
        ``anonymous`` client's id, a ping's, at most every
        :data:`SYNC_ON_MISS_SECONDS`.) Unless ``blocking``, what needs more
        than memory (loading the engine, a heartbeat not found) raises
        :class:`WouldBlock`."""
        if not blocking and not self.core.is_loaded():
            raise WouldBlock()
        self.core.load()
        try:
            return self.core.model.document(heartbeat_id)
        except NotFound:
            if not blocking:
                raise WouldBlock() from None
            if not (self.lifecycle.sync_on_miss() if anonymous else self.lifecycle.sync()):
                raise
        return self.core.model.document(heartbeat_id)

    def list(self):
        """Every heartbeat document, newest first."""
        return [heartbeat_document(row) for row in self.core.store.heartbeats()]

    def page(self, limit, after=None):
        """A page of heartbeat documents, newest first (ties: last created
        first); stable under creations, which go before the first page.

        :param limit: the page size.
        :param after: None (the first page), or the ``(created, rowid)``
            cursor of the last heartbeat of the previous page.
        :returns: ``(documents, the next page's cursor or None)``.
        """
        rows = self.core.store.heartbeats_page(limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = encode_cursor(rows[-1]["created"], rows[-1]["rowid"]) if more else None
        return [heartbeat_document(row) for row in rows], cursor

    def status(self, heartbeat_id):
        """The heartbeat's state document; :raises NotFound:.

        A grouped heartbeat's status is the worst of its members' (or
        paused), ``last_event`` the latest of theirs, ``deadline`` the
        earliest of those pending, up or late, ``alarm_since`` the oldest
        member alarm, and ``members`` counts them by status.
        """
        core = self.core
        row = core.store.heartbeat(heartbeat_id)
        covering = self.windows.covering(row["pattern"], core.clock())
        if row["group_by"] is None:
            return status_document(with_refresh(row, core.model.unwritten_refresh(heartbeat_id)), covering)
        return self._grouped(row, covering, core.store.member_summaries([heartbeat_id]).get(heartbeat_id),
                             core.store.member_counts([heartbeat_id]).get(heartbeat_id, {}))

    def _grouped(self, row, covering, summary, counts):
        """A grouped heartbeat's state document: its members' latest event
        (those kept in memory too), earliest deadline and oldest alarm
        (``summary``, from :meth:`Store.member_summaries`; None when it has
        no member), and ``members``, their ``counts`` by status."""
        last_event, deadline, alarm_since = summary or (None, None, None)
        kept = [t for _, _, t in self.core.model.unwritten_members(row["id"])]
        last_event = max([t for t in (last_event, *kept) if t is not None], default=None)
        document = status_document({**dict(row), "last_event": last_event, "alarm_since": alarm_since}, covering)
        # the members' deadline: of those neither down nor paused
        document["deadline"] = api_time(None if row["status"] == PAUSED else
                                        pushed_deadline(deadline, row["interval_seconds"], covering))
        document["members"] = status_counts(counts)
        return document

    def alarms(self, limit=None):
        """The active alarms (heartbeats and members late or down, and the
        intake silence), oldest first (the ``limit`` oldest, if given)."""
        store = self.core.store
        limit = -1 if limit is None else limit
        outputs = store.alarm_outputs()
        alarms = [active_alarm(row, outputs) for row in store.alarms(limit)]
        alarms += [active_alarm(row, outputs) for row in store.member_alarms(limit)]
        intake = self.silence.alarm()
        if intake is not None:
            alarms.append(intake)
        alarms.sort(key=lambda alarm: alarm["since"])  # stable: heartbeats, then members, at the same time
        return alarms if limit < 0 else alarms[:limit]

    def status_page(self, statuses=(), terms=(), offset=0, limit=100):
        """One page of the heartbeats for the status page, each as in
        :meth:`overview`: those whose status is one of ``statuses`` (any,
        when empty) and whose name or pattern contains every search term,
        by name; see :meth:`Store.status_page`.

        :returns: ``{"rows", "total" (matching, all pages), "counts"
            ({status: n} over every heartbeat)}``.
        """
        core = self.core
        core.load()
        now = core.clock()
        covered = self.windows.covered(now)
        counts, total, rows = core.store.status_page(list(statuses), list(terms), limit, offset, covered)
        unwritten = core.model.unwritten_refresh
        grouped = [row["id"] for row in rows if row["group_by"] is not None]
        members = core.store.member_counts(grouped) if grouped else {}
        summaries = core.store.member_summaries(grouped) if grouped else {}
        page = []
        for row in rows:
            covering = covered.get(row["id"])
            if row["group_by"] is None:
                state = status_document(with_refresh(row, unwritten(row["id"])), covering)
            else:
                state = self._grouped(row, covering, summaries.get(row["id"]), members.get(row["id"], {}))
            page.append({**heartbeat_document(row), **state})
        return {"rows": page, "total": total, "counts": counts}

    def alarm_counts(self):
        """``{"down": (heartbeats, members), "late": (...), "intake": 0 or
        1}``: the alarms open now (see :meth:`Store.alarm_counts`)."""
        return {**self.core.store.alarm_counts(), "intake": int(self.silence.alarm() is not None)}

    def overview(self):
        """Every heartbeat, newest first, as its document merged with its
        state document, and for a grouped one its members per status in
        ``members``, its last event and oldest alarm its members' (three
        database reads)."""
        core = self.core
        unwritten = core.model.unwritten()
        now = core.clock()
        covered = self.windows.covered(now)
        members = core.store.member_counts()
        summaries = core.store.member_summaries() if members else {}
        overview = []
        for row in core.store.heartbeats():
            maintenance = covered.get(row["id"])
            if row["group_by"] is None:
                state = status_document(with_refresh(row, unwritten.get(row["id"])), maintenance)
            else:
                state = self._grouped(row, maintenance, summaries.get(row["id"]), members.get(row["id"], {}))
            overview.append({**heartbeat_document(row), **state})
        return overview


class History:
    """The recorded state changes (the funnel writes them): a heartbeat's
    history and availability, the pages' timelines, the metrics, and
    pruning what is older than ``history_days``."""

    def __init__(self, core, days):
        self.core = core
        self.days = days
        self._prune_lock = threading.Lock()
        self._prune_due_at = -math.inf  # clock time of the next pruning pass
        self._prune_cursor = None  # (at, seq) where the pass in progress goes on

    def record(self, changes):
        """Write ``(heartbeat id, at, status, reason, extra)`` rows as they
        are, in the caller's transaction: for history brought in from
        elsewhere (an import); the engine's own changes go through the
        funnel."""
        changes = list(changes)
        if changes:
            self.core.store.add_history(changes)

    def window(self, seconds):
        """A window of availability, no longer than the history kept (past
        ``history_days`` the changes are gone: the window covers what is kept)."""
        return min(seconds, self.days * 86400)

    def of(self, heartbeat_id, since=None, until=None, limit=DEFAULT_HISTORY_LIMIT):
        """``GET /api/v2/heartbeat/<id>/history`` (the heartbeat is known
        to exist): its changes with ``since <= at <= until``, newest first,
        at most ``limit`` (its members' too, each with ``"member"``), and
        its availability over each of :data:`AVAILABILITY_WINDOWS` (from its
        own changes only: a grouped heartbeat's status already follows its
        members')."""
        store = self.core.store
        now = self.core.clock()
        entries = []
        for row in store.history(heartbeat_id, since, until, limit):
            extra = json.loads(row["extra"]) if row["extra"] else {}
            if row["member"] is not None:  # a member's change: not counted in the heartbeat's availability
                extra["member"] = json.loads(row["member"])
            entries.append({**extra, "at": api_time(row["at"]), "status": row["status"], "reason": row["reason"]})
        changes = store.changes_since(heartbeat_id, now - self.window(AVAILABILITY_WINDOWS[-1][1]))
        return {"history": entries, "availability": {
            name: availability(changes, now, self.window(seconds)) for name, seconds in AVAILABILITY_WINDOWS}}

    def timelines(self, heartbeat_ids, start):
        """``{id: [(at, status), ...]}``: the changes of each heartbeat from
        its state at ``start`` on, oldest first (the pages' timelines)."""
        return self.core.store.changes_since_of(list(heartbeat_ids), start)

    def metrics(self):
        """For ``/metrics``: ``{id: (availability over 24 h, time of the last
        change)}`` of every heartbeat with a recorded change."""
        now = self.core.clock()
        window = self.window(AVAILABILITY_WINDOWS[0][1])
        return {heartbeat_id: (availability(changes, now, window), changes[-1][0])
                for heartbeat_id, changes in self.core.store.all_changes_since(now - window).items()}

    def prune(self):
        """One bounded step of pruning changes older than ``history_days``
        (every heartbeat keeps its last change before that, its state then):
        at most :data:`HISTORY_PRUNE_BATCHES_PER_TICK` transactions of
        :data:`HISTORY_PRUNE_BATCH_ROWS` rows, a pass at most every
        :data:`HISTORY_PRUNE_INTERVAL_SECONDS`; a tick calls it after
        releasing the engine's lock (pruning touches only rows no one else
        writes). A failure is logged and retried a minute later.

        :returns: how many rows it deleted.
        """
        if not self._prune_lock.acquire(blocking=False):
            return 0  # another thread is at it
        try:
            now = self.core.clock()
            if now < self._prune_due_at:
                return 0
            cutoff = now - self.days * 86400
            deleted = 0
            for _ in range(HISTORY_PRUNE_BATCHES_PER_TICK):
                count, self._prune_cursor = self.core.store.prune_history(
                    cutoff, self._prune_cursor or (-math.inf, -1), HISTORY_PRUNE_BATCH_ROWS)
                deleted += count
                if self._prune_cursor is None:
                    self._prune_due_at = now + HISTORY_PRUNE_INTERVAL_SECONDS
                    break
            if deleted:
                log.info("history: pruned %d change(s) older than %d day(s)", deleted, self.days)
            return deleted
        except StoreError as exc:
            log.error("history pruning failed, retrying in a minute: %s", exc)
            self._prune_due_at = self.core.clock() + 60
            return 0
        finally:
            self._prune_lock.release()


class Expiry:
    """Time passing: each tick writes the refreshes kept in memory, applies
    the maintenance windows' boundaries, puts what is due late or down
    (heartbeats and members through one state machine,
    :func:`expiry_steps`; members also retire), records that the service
    is alive, watches the intake silence, and says when the next tick is
    due. A storm is handled in chunks of :data:`STORM_CHUNK_HEARTBEATS`,
    letting go of the lock in between.
    """

    def __init__(self, core, lifecycle, intake, windows, groups, silence, history, pings):
        self.core = core
        self.pings = pings
        self.lifecycle = lifecycle
        self.intake = intake
        self.windows = windows
        self.groups = groups
        self.silence = silence
        self.history = history

    def tick(self):
        """One tick; then, outside the lock, a bounded step of history
        pruning (:meth:`History.prune`).

        :returns: seconds until the next tick is due: the earliest late time
            or deadline, the next start or end of a maintenance window, the
            next write of refreshes kept in memory, or the next alive record,
            whichever comes first (the scheduler sleeps that long).
        """
        core = self.core
        now = None
        while True:
            with core.storm_chunk(pause=now is not None):
                core.load()
                first = now is None
                if first:
                    now = core.clock()
                    horizon = self.silence.horizon(now)
                started, ended, retired = [], [], []
                with core.funnel.change() as change:
                    if first:
                        self.lifecycle.recover(change, now)
                    self.intake.flush(change)
                    if first:
                        started, ended = self.windows.boundaries(change, now)
                    handled = 0
                    if horizon is not None:
                        handled = self._expire(change, horizon, STORM_CHUNK_HEARTBEATS)
                        if handled < STORM_CHUNK_HEARTBEATS:
                            handled += self._expire_members(change, horizon, STORM_CHUNK_HEARTBEATS - handled,
                                                            retired)
                    if handled < STORM_CHUNK_HEARTBEATS and core.followups is not None:
                        handled += core.followups.due(change, now, STORM_CHUNK_HEARTBEATS - handled)
                    if first:
                        self.pings.overran(change, now)
                    self.lifecycle.record_alive(now)
                more = handled == STORM_CHUNK_HEARTBEATS
                if not more:
                    silence = self.silence.due()
                    if silence is not None and silence <= now:
                        self.silence.start(silence)
                    later = core.clock()  # a storm takes time: say when next from its end
                    store = core.store
                    followup = core.followups.next_due() if core.followups is not None else None
                    earliest = [t for t in (store.next_due(), store.next_member_due(), self.silence.due(), followup,
                                            self.pings.next_overrun()) if t is not None]
                    next_at = core.next_tick_at = next_tick_at(later, min(earliest, default=None),
                                                               self.windows.next_boundary(later))
            for window in started:
                log.info("maintenance %s ('%s') started", window.id, log_safe(window.name))
            for window, count in ended:
                log.info("maintenance %s ('%s') ended: %d heartbeat(s) get a full interval from its end",
                         window.id, log_safe(window.name), count)
            for transition in retired:
                log.info("member %s of heartbeat %s ('%s') retired: down since %s", log_safe(transition.member),
                         transition.heartbeat["id"], log_safe(transition.heartbeat["name"]),
                         iso_time(transition.alarm_since))
            core.publisher.publish()
            if not more:
                break
        self.history.prune()
        return next_at - later

    def _expire(self, change, now, limit):
        """Every heartbeat whose next transition is due by ``now`` goes late
        (pending or up with a ``late_after``) or down, its alarm dated by
        when it was due; one that a maintenance window protects then instead
        gets its refresh moved to the window's end (what the end rule would
        give it), so it is not due again before.

        :returns: how many were due (at most ``limit``).
        """
        core = self.core
        rows = core.store.due(now, limit)
        transitions, moved, moved_up = [], [], {}
        for row in rows:
            steps, (status, refreshed, alarm_since) = expiry_steps(
                row, now, self.windows.covered_until(row["pattern"]))
            if steps:
                transitions += [Transition(row, None, old, new, at, reason, refreshed, alarm_since)
                                for old, new, at, reason in steps]
            elif refreshed != row["refreshed"]:
                moved.append((row["id"], status, refreshed, alarm_since))
                if status == UP:
                    moved_up[row["id"]] = refreshed
        if moved:
            core.store.set_states(moved)
            change.then(core.model.written, moved_up)
        change.apply(transitions)
        return len(rows)

    def _expire_members(self, change, now, limit, retired):
        """As :meth:`_expire`, for members: late, down (a maintenance window
        protecting their heartbeat at that time moves them to its end
        instead), and retired: one down for its ``retire_seconds`` is
        removed, its alarm resolved. A grouped heartbeat's status follows.
        The retirements go to ``retired`` too (for the log).

        :returns: how many were due (at most ``limit``).
        """
        core = self.core
        rows = core.store.due_members(now, limit)
        transitions, moved, moved_up, touched = [], [], {}, {}
        for row in rows:
            steps, (status, refreshed, alarm_since) = expiry_steps(
                row, now, self.windows.covered_until(row["pattern"]), member=True)
            heartbeat_id = row["heartbeat_id"]
            if steps:
                for old, new, at, reason in steps:
                    transitions.append(Transition(row, row["member"], old, new, at, reason, refreshed, alarm_since))
                touched[heartbeat_id] = max(steps[-1][2], touched.get(heartbeat_id, steps[-1][2]))
                if status == RETIRED:
                    retired.append(transitions[-1])
            elif refreshed != row["refreshed"]:
                moved.append((heartbeat_id, row["member"], status, refreshed, alarm_since))
                keys = core.model.group_keys(heartbeat_id)
                if status == UP and keys is not None:
                    moved_up[(heartbeat_id, core.model.member_values(heartbeat_id, row["member"]))] = refreshed
        if moved:
            core.store.set_member_states(moved)
            change.then(core.model.members_written, moved_up)
        change.apply(transitions)
        if touched:
            self.groups.follow(change, touched)
        return len(rows)


class Lifecycle:
    """The engine across restarts and instances: loading (resuming after
    the outage, then the read model and the windows from the database),
    applying other instances' changes (:meth:`sync`), the alive records,
    and a clean stop."""

    def __init__(self, core, windows, silence, intake):
        self.core = core
        self.windows = windows
        self.silence = silence
        self.intake = intake
        self.loaded = False
        self._synced = 0  # the last change of other instances applied to the read model (see sync())
        self._alive_recorded = None
        self._synced_on_miss = -math.inf  # when a look-up that found nothing last read the others' changes
        # the outage rule (see recover()): the clock time of the first
        # write that failed since the rule last ran
        self._failed_at = None
        core.store.write_observer = self._observed

    def load(self):
        """Resume after the outage (see :meth:`resume`) and load the read
        model; every operation does this first if it has not been done.

        :raises StoreError: when the database does not answer.
        """
        if self.loaded:  # the usual case, without the lock (GET serves from memory)
            return
        core = self.core
        synced = core.store.last_change()
        windows = self.windows.built(core.clock())  # their occurrences worked out before the lock
        with core.lock:
            if self.loaded:
                return
            self.resume()
            self._reload(synced, windows)
            self.loaded = True
            if self.silence.since is not None and self.silence.seconds is None:
                self.silence.end(core.clock(), "--intake-silence is no longer set", self.intake.flush)
        core.publisher.publish()

    def _reload(self, synced=None, windows=None):
        """Load the read model and the windows (or take ``windows``, built
        by :meth:`Windows.built` after the change cursor ``synced`` was
        read) from the database (under the lock). The change cursor is read
        first: a change made meanwhile by another instance is then read
        again by :meth:`sync`, never missed."""
        store = self.core.store
        self._synced = store.last_change() if synced is None else synced
        if windows is None:
            windows = self.windows.built(self.core.clock())
        self.core.model = ReadModel.loaded(store.each_heartbeat(), store.each_member())
        self.windows.by_id = windows
        self.core.load_channels()

    def sync_on_miss(self):
        """:meth:`sync` for a look-up by an unauthenticated client that found
        nothing, at most every :data:`SYNC_ON_MISS_SECONDS` (real time: a
        bound on the database's work, not a rule of the engine's clock)."""
        now = time.monotonic()
        if now - self._synced_on_miss < SYNC_ON_MISS_SECONDS:
            return False
        self._synced_on_miss = now
        return self.sync()

    def sync(self):
        """Apply what other instances on the same database changed since
        the last sync (heartbeats and maintenance windows created, updated,
        deleted) to the read model; a no-op on a database no other instance
        uses. Server mode runs it every :data:`SYNC_SECONDS`.

        :returns: whether anything changed.
        :raises StoreError: when the database does not answer.
        """
        core = self.core
        if not core.store.shared_by_instances:
            return False
        self.load()
        with core.lock:
            last, changes = core.store.changes(self._synced)
            if changes is None:  # too far behind: the changes were pruned
                log.warning("read model out of date beyond the kept changes: reloading it")
                unwritten = core.model.unwritten()
                self._reload()
                for heartbeat_id, refreshed in unwritten.items():
                    core.model.deferred([heartbeat_id], refreshed)
                return True
            now = core.clock()
            for kind, object_id in dict.fromkeys(changes):
                if kind == "heartbeat":
                    try:
                        row = core.store.heartbeat(object_id)
                    except NotFound:
                        row = None
                    core.model.synced(object_id, row)
                    if row is not None and row["status"] not in (DOWN, PAUSED):
                        core.due_by(due_of(row))
                elif kind == "channel":
                    core.load_channels()
                else:
                    self.windows.synced(object_id, now)
            self._synced = last
            return bool(changes)

    def resume(self):
        """Stop the clock for the time the service was not running.

        Every deadline still ahead when the service last recorded it was
        alive moves later by the length of the outage, plus, after a stop
        that was not clean, the :data:`REFRESH_WRITE_SECONDS` of refreshes
        it may have cost; heartbeats already down stay down. During an
        intake silence nothing moves now: the silence's end moves them. The
        intake counts as heard from at the start. Called once, by
        :meth:`load`.
        """
        core = self.core
        with core.lock:
            now = core.clock()
            moved = 0
            with core.store.atomic():
                alive_at, clean = core.store.last_alive(now)
                # During an intake silence the clock is stopped already: its
                # end moves every deadline by the whole silence, outage included.
                self.silence.since = core.store.meta(META_INTAKE_SILENT_SINCE)
                self.silence.heard_at = now
                if alive_at is not None and now > alive_at and self.silence.since is None:
                    moved = core.store.postpone(alive_at, now - alive_at + (0 if clean else REFRESH_WRITE_SECONDS))
                core.store.record_start(now)
                self._alive_recorded = now
                self._failed_at = None  # the outage is counted here
            # window ends missed while stopped get their end rule at the first tick
            self.windows.checked_at = alive_at if alive_at is not None and alive_at < now else now
        if moved:
            log.info("resumed after %.1fs without service: %d deadline(s) moved later", now - alive_at, moved)

    def _observed(self, ok):
        """The store tells the outcome of a write (any thread)."""
        if not ok and self._failed_at is None:
            self._failed_at = self.core.clock()

    def recover(self, change, now):
        """In a tick's change, before anything is found due: when writes
        failed since the last time (the database stopped, froze, refused),
        the monitor could not record events: it was blind, and its clock
        stops, as across a restart. Every deadline still ahead when the
        service last recorded anything (:meth:`Store.blind_since`) moves
        later by the time since; nothing moves when another instance
        recorded that it was alive meanwhile (it was not blind), nor during
        an intake silence (the clock is stopped already).

        Blind since the first write that failed: whatever fell due before
        it was handled (the scheduler ticks at each deadline, and a tick
        that fails is such a write), and any event refused after it is one."""
        failed_at = self._failed_at
        if failed_at is None:
            return
        store = self.core.store
        since = None if self.silence.since is not None else store.blind_since(failed_at)
        moved = store.postpone(since, now - since) if since is not None and now > since else 0
        store.record_alive(now)
        change.then(self._recovered, failed_at, since, now, moved)

    def _recovered(self, failed_at, since, now, moved):
        self._alive_recorded = now
        if self._failed_at == failed_at:
            self._failed_at = None
        if since is None:
            log.info("database writes work again: other instances recorded events meanwhile, no deadline moves")
        else:
            log.warning("database writes work again: events could not be recorded for %.1fs, %d deadline(s) "
                        "moved later by that (the clock stops while the monitor is blind)", now - since, moved)

    def record_alive(self, now):
        """Record that the service is alive at ``now``, at most every
        :data:`ALIVE_INTERVAL_SECONDS` (in the caller's transaction)."""
        last = self._alive_recorded
        if last is None or not 0 <= now - last < ALIVE_INTERVAL_SECONDS:
            self.core.store.record_alive(now)
            self._alive_recorded = now

    def shutdown(self):
        """Write the refreshes kept in memory and record a clean stop, now;
        nothing when the engine never loaded (the record would be a lie)."""
        core = self.core
        with core.lock:
            if not self.loaded:
                return
            with core.funnel.change() as change:
                self.intake.flush(change)
                core.store.record_stop(core.clock())
        core.publisher.publish()


class NoOpenAlarm(Exception):
    """The heartbeat has no open alarm to acknowledge (``args[0]``: its id)."""


class ChannelInUse(Exception):
    """Heartbeats name the channel in ``channels`` or ``escalate_to``:
    ``args`` is the channel's id and theirs."""


class ChannelConfigured(Exception):
    """The channel comes from a setting (``args``: its id, the setting):
    change the setting, not the channel."""


class Notifications:
    """Where alarms go, and what follows them: the channels (their
    documents, created, replaced, deleted, kept in the
    :class:`ChannelRegistry`), acknowledgements, and the follow-ups the
    tick runs when due (reminders, escalation). The alarms and resolutions
    themselves reach the channels through the funnel's sink
    (:class:`ChannelSink`).

    :param core: the :class:`EngineCore`.
    :param sink: the :class:`ChannelSink`.
    """

    def __init__(self, core, sink):
        self.core = core
        self.sink = sink
        self.registry = sink.registry

    def load(self):
        """The channels from the database (at start, and when another
        instance changed one); :raises StoreError:."""
        self.registry.load(self.core.store.channels())

    # -- channels ----------------------------------------------------------------

    def channel(self, channel_id):
        """The channel (see :func:`channel_of`); :raises NotFound:."""
        self.core.load()
        channel = self.registry.get(channel_id)
        if channel is None:
            raise NotFound(channel_id)
        return channel

    def documents(self):
        """Every channel's document (see :func:`channel_document`), oldest first."""
        self.core.load()
        store = self.core.store
        queues, health = store.queues(), store.channel_health()
        return [channel_document(channel, queues.get(channel_id), health.get(channel_id))
                for channel_id, channel in self.registry.channels.items()]

    def document(self, channel_id):
        """One channel's document; :raises NotFound:."""
        channel = self.channel(channel_id)
        store = self.core.store
        return channel_document(channel, store.queues().get(channel_id), store.channel_health().get(channel_id))

    def create(self, fields):
        """Create a channel from validated fields; return its id.

        :raises Invalid: :data:`MAX_CHANNELS` exist already.
        """
        core = self.core
        with core.operation() as now:
            if len(self.registry.channels) >= MAX_CHANNELS:
                raise Invalid([f"at most {MAX_CHANNELS} channels: delete one first"])
            row = {**channel_row(fields, now), "id": str(uuid.uuid4()), "created": int(now)}
            core.store.insert_channel(row)
            self.load()
        log.info("channel %s created ('%s', %s, %s)", row["id"], log_safe(row["name"]), row["kind"],
                 redact_channel_url(row["url"], row["kind"]))
        return row["id"]

    def update(self, channel_id, fields):
        """Replace a channel's fields; what its target had refused (set
        aside) goes back in its queue: it may take it now.

        :raises NotFound:; :raises ChannelConfigured:.
        """
        core = self.core
        with core.operation() as now:
            channel = self.channel(channel_id)
            if channel["configured"]:
                raise ChannelConfigured(channel_id, channel["configured"])
            with core.store.atomic():
                core.store.update_channel(channel_id, channel_row(fields, now))
                requeued = core.store.requeue(channel_id)
            self.load()
        log.info("channel %s updated ('%s', %s, %s)%s", channel_id, log_safe(fields["name"]), fields["kind"],
                 redact_channel_url(fields["url"], fields["kind"]),
                 f"; {requeued} event(s) it had refused are sent again" if requeued else "")
        if self.sink.waker is not None:
            self.sink.waker({channel_id})

    def delete(self, channel_id):
        """Delete a channel, with its queue; refused while a heartbeat names
        it (:raises ChannelInUse: with their ids): its alarms would then go
        nowhere, or elsewhere, without a word. :raises NotFound:;
        :raises ChannelConfigured:."""
        core = self.core
        with core.operation():
            channel = self.channel(channel_id)
            if channel["configured"]:
                raise ChannelConfigured(channel_id, channel["configured"])
            users = core.store.heartbeats_naming(channel_id)
            if users:
                raise ChannelInUse(channel_id, users)
            core.store.delete_channel(channel_id)
            self.load()
        log.info("channel %s deleted ('%s')", channel_id, log_safe(channel["name"]))

    def check_references(self, fields):
        """:raises Invalid: when a heartbeat's ``channels`` or
        ``escalate_to`` name a channel that does not exist."""
        self.core.load()
        reasons = [f"{field}: no channel has the id {channel_id}" for field in ("channels", "escalate_to")
                   for channel_id in fields.get(field) or () if self.registry.get(channel_id) is None]
        if reasons:
            raise Invalid(reasons)

    # -- what follows an alarm ---------------------------------------------------

    def ack(self, heartbeat_id, user, comment=None):
        """Acknowledge a heartbeat's open alarm (a grouped heartbeat's: each
        open member alarm): its reminders and escalation stop, the ack is
        recorded in the history and told to its channels (a canopsis
        channel gets Canopsis' ``ack`` event). Acknowledging again replaces
        the ack.

        :returns: the ack, ``{"by", "at", "comment"}``.
        :raises NotFound:; :raises NoOpenAlarm:.
        """
        core = self.core
        with core.operation() as now:
            with core.funnel.change() as change:
                row = core.store.heartbeat(heartbeat_id)
                if row["group_by"] is not None:
                    alarms = core.store.open_alarms_of(heartbeat_id)
                elif row["status"] in ALARMED:
                    alarms = [("", row["status"])]
                else:
                    alarms = []
                if not alarms:
                    raise NoOpenAlarm(heartbeat_id)
                ack = {"by": user, "at": api_time(now), "comment": comment}
                keys = [(heartbeat_id, key) for key, _ in alarms]
                core.store.set_acks([(heartbeat_id, key, user, now, comment) for key, _ in alarms])
                core.store.unschedule_alarms(keys)
                reason = f"acknowledged by {user}" + (f": {comment}" if comment else "")
                extra = {"ack": ack, **({"members": len(alarms)} if row["group_by"] is not None else {})}
                change.record([Transition(row, None, row["status"], row["status"], now, reason, extra=extra)])
                self._tell_ack(row, alarms, ack, reason, now)
                change.then(self.sink.wake)
        log.info("heartbeat %s ('%s') acknowledged by %s (%d alarm(s))", heartbeat_id, log_safe(row["name"]),
                 log_safe(user), len(alarms))
        return ack

    def _tell_ack(self, row, alarms, ack, reason, now):
        """Queue the ack's notices: one per open alarm to a canopsis channel
        (Canopsis' ack event of each), one to each other channel."""
        store, registry = self.core.store, self.registry
        channels, _, escalate_to = store.routes([row["id"]])[row["id"]]
        targets = registry.route(channels)
        if escalate_to and any(follow[3] for follow in store.follows([(row["id"], key) for key, _ in alarms]).values()):
            targets += [channel_id for channel_id in registry.route(escalate_to) if channel_id not in targets]
        events = []
        for key, status in alarms:
            member = json.loads(key) if key else None
            alarm = alarm_event(row, ALARM_STATE if status == DOWN else LATE_STATE, now, member)
            events.append(ack_event(alarm, ack["by"], ack["comment"], now))
        one = alarms[0]
        summary = {**dict(row), "alarm_since": row["alarm_since"]}
        notice = follow_notice("ack", summary, json.loads(one[0]) if len(alarms) == 1 and one[0] else None,
                               row["status"], now, reason if len(alarms) == 1 else f"{reason} ({len(alarms)} "
                               "member alarms)", ack)
        rows = []
        for channel_id in targets:
            if not registry.takes(channel_id, "ack"):
                continue
            if registry.get(channel_id)["kind"] == "canopsis":
                rows += [(channel_id, event, notice, now) for event in events]
            else:
                rows.append((channel_id, events[0], notice, now))
        self.sink.enqueue(rows)

    def ack_of(self, heartbeat_id, document):
        """The ack shown in a status ``document``: the heartbeat's open
        alarm's; for a grouped one, the latest when every open member alarm
        is acknowledged; else None."""
        if document["status"] not in ALARMED:
            return None
        acks = self.core.store.acks_of(heartbeat_id)
        if "members" in document:
            open_alarms = sum(document["members"].get(status, 0) for status in ALARMED)
            found = max(acks.values(), key=lambda ack: ack[1]) if acks and len(acks) >= open_alarms else None
        else:
            found = acks.get("")
        return None if found is None else {"by": found[0], "at": api_time(found[1]), "comment": found[2]}

    def due(self, change, now, limit):
        """Run the follow-ups due by ``now`` (at most ``limit``), in the
        tick's change: a reminder to its channel (the next one scheduled at
        its pace), an escalation to the ``escalate_to`` channels; dropped
        when the alarm closed, was acknowledged, or the channel no longer
        routes it.

        :returns: how many were due.
        """
        core = self.core
        store, registry = core.store, self.registry
        due = store.due_followups(now, limit)
        if not due:
            return 0
        ids = sorted({heartbeat_id for heartbeat_id, *_ in due})
        routes = store.routes(ids)
        heartbeats = {}
        for heartbeat_id in ids:
            with contextlib.suppress(NotFound):
                heartbeats[heartbeat_id] = store.heartbeat(heartbeat_id)
        follows = store.follows({(heartbeat_id, member) for heartbeat_id, member, *_ in due})
        outputs = store.alarm_outputs()
        rows, dropped, scheduled, escalated = [], [], [], []
        for heartbeat_id, key, channel_id, at in due:
            row = self._alarm_row(heartbeats.get(heartbeat_id), key)
            follow = follows.get((heartbeat_id, key))
            if row is None or row["status"] not in ALARMED or (follow is not None and follow[1] is not None):
                dropped.append((heartbeat_id, key, channel_id))
                continue
            if raised_output(row, outputs) is not None:  # the alarm as it was raised (a failure's words)
                row = {**dict(row), "output": raised_output(row, outputs)}
            channels, escalate_seconds, escalate_to = routes[heartbeat_id]
            member = json.loads(key) if key else None
            event = alarm_event(row, ALARM_STATE if row["status"] == DOWN else LATE_STATE, now, member)
            dropped.append((heartbeat_id, key, channel_id))
            if channel_id == "":  # the escalation
                targets = registry.route(escalate_to) if escalate_to else []
                notice = follow_notice("escalation", row, member, row["status"], now,
                                       f"not acknowledged {seconds_text(escalate_seconds or 0)} after it went down")
                rows += [(target, event, notice, now) for target in targets if registry.takes(target, "escalation")]
                escalated.append((heartbeat_id, key))
                scheduled += [(heartbeat_id, key, target, now + registry.get(target)["repeat_seconds"])
                              for target in targets
                              if registry.get(target)["repeat_seconds"] and registry.takes(target, "reminder")]
                continue
            channel = registry.get(channel_id)
            routed = registry.route(channels)
            if follow is not None and follow[3] and escalate_to:
                routed += registry.route(escalate_to)
            if channel is None or not channel["repeat_seconds"] or channel_id not in routed \
                    or not registry.takes(channel_id, "reminder"):
                continue
            notice = follow_notice("reminder", row, member, row["status"], now,
                                   f"still {row['status']} since {_when(row['alarm_since'])}")
            rows.append((channel_id, event, notice, now))
            step = channel["repeat_seconds"]
            dropped.pop()
            scheduled.append((heartbeat_id, key, channel_id, at + step * (math.floor((now - at) / step) + 1)))
        store.unschedule(dropped)
        if scheduled:
            store.schedule(scheduled)
            change.then(core.due_by, min(due_at for *_, due_at in scheduled))
        if escalated:
            store.set_escalated(escalated)
        self.sink.enqueue(rows)
        change.then(self.sink.wake)
        return len(due)

    def _alarm_row(self, heartbeat, key):
        """A heartbeat's row, or one member's joined with it; None when gone."""
        if heartbeat is None or not key:
            return heartbeat
        member = self.core.store.members_by_key(heartbeat["id"], [key]).get(key)
        if member is None:
            return None
        return {**dict(member), "id": heartbeat["id"], "name": heartbeat["name"], "output": heartbeat["output"],
                "pattern": heartbeat["pattern"], "slug": _optional(heartbeat, "slug")}

    def next_due(self):
        """When the earliest follow-up is due, or None."""
        return self.core.store.next_followup()

    def delivery_warnings(self):
        """What ``/healthz`` warns of, the monitor itself working: per
        channel, an event waiting undelivered longer than
        :data:`DELIVERY_STALE_SECONDS`, events a target refused for good
        (set aside). Read as the health check reads (never waiting on the
        writer); :raises StoreError:."""
        warnings, now = [], self.core.clock()
        for channel_id, waiting, oldest, aside in self.core.store.delivery_health() or ():
            channel = self.registry.get(channel_id)
            name = channel["name"] if channel is not None else channel_id
            if waiting and oldest is not None and now - oldest > DELIVERY_STALE_SECONDS:
                warnings.append(f"alarms are not reaching {name}: {waiting} event(s) wait, the oldest for "
                                f"{seconds_text(round(now - oldest))}")
            if aside:
                warnings.append(f"{name} refused {aside} event(s) for good: set aside (see GET /api/v2/channel)")
        return warnings

    def unrouted(self):
        """Whether alarms of some heartbeats reach no channel: those with no
        ``channels`` field, when no channel is a default one."""
        channels = self.registry.channels
        return not any(channel["default"] for channel in channels.values()) and self.core.store.unrouted() > 0

    def open_notices(self, channel_id):
        """A notice for each alarm open now that goes to the channel (an
        Alertmanager's re-send: alerts not sent again resolve themselves there)."""
        core = self.core
        store, registry = core.store, self.registry
        now = core.clock()
        outputs = store.alarm_outputs()
        rows = [row if raised_output(row, outputs) is None else {**dict(row), "output": raised_output(row, outputs)}
                for row in list(store.alarms()) + list(store.member_alarms())]
        routes = store.routes(sorted({row["id"] for row in rows}))
        notices = []
        for row in rows:
            channels, _, escalate_to = routes.get(row["id"], (None, None, None))
            member = json.loads(row["member"]) if "member" in row.keys() else None
            if channel_id not in registry.route(channels):
                if not (escalate_to and channel_id in registry.route(escalate_to)):
                    continue
                follow = store.follows([(row["id"], row["member"] if member else "")]).get(
                    (row["id"], row["member"] if member else ""))
                if follow is None or not follow[3]:
                    continue
            notices.append(follow_notice("alarm", row, member, row["status"], now, "open"))
        return notices


class Engine:
    """The heartbeat rules, as one facade over parts with one job each,
    which share the lock, the read model and the funnel
    (:class:`EngineCore`):

    - :class:`Heartbeats`: create, update, delete, pause, resume, put;
    - :class:`Intake`: events, refreshes coalesced in memory, storms;
    - :class:`Groups`: members of grouped heartbeats;
    - :class:`Windows`: the windows and their boundaries;
    - :class:`IntakeSilence`: the one alarm of a silent feed;
    - :class:`Expiry`: the tick;
    - :class:`History`: the recorded changes, availability, pruning;
    - :class:`Views`: what the API, the pages and the metrics read;
    - :class:`Lifecycle`: restarts, other instances, a clean stop.

    Every state change goes through the funnel (:class:`Funnel`): written
    with its history row and its alarm event, handed to the sinks (the
    outbox, when forwarding) in the same transaction, and published
    (logged, handed to ``on_alarm``) after the lock is released, in commit
    order: a callback may call back into the service, even over HTTP,
    without deadlock.

    :param store: the :class:`Store`.
    :param clock: callable returning Unix seconds (float); read once per
        operation.
    :param on_alarm: optional callable receiving each alarm and resolution
        event (a dict), in order, once it is committed.
    :param channels: the channels the settings make (``--forward-url``'s:
        :func:`forward_channel`); the others are in the database.
    :param intake_silence: None, or seconds (see :class:`IntakeSilence`).
    :param history_days: days of state changes kept.
    :param sinks: more sinks of the funnel (see :class:`ChannelSink`).
    """

    def __init__(self, store, clock, on_alarm=None, channels=(), intake_silence=None,
                 history_days=DEFAULT_HISTORY_DAYS, sinks=()):
        #: the :class:`ChannelSink`: alarms and resolutions into the channels' queues
        self.outbox = ChannelSink(store, ChannelRegistry(channels))
        self.core = core = EngineCore(store, clock, on_alarm, [self.outbox] + list(sinks))
        #: channels, acknowledgements, reminders and escalation
        self.notifications = Notifications(core, self.outbox)
        core.followups = self.notifications
        core.load_channels = self.notifications.load
        self.outbox.due_by = core.due_by
        self.store, self.clock = store, clock
        self.windows = Windows(core)
        self.silence = IntakeSilence(core, intake_silence)
        self.groups = Groups(core, self.windows)
        self.intake = Intake(core, self.groups, self.silence)
        self.lifecycle = Lifecycle(core, self.windows, self.silence, self.intake)
        core.load = self.lifecycle.load
        core.is_loaded = lambda: self.lifecycle.loaded
        self.heartbeats = Heartbeats(core, self.groups, self.intake)
        #: pings (docs/pings.md): Healthchecks', Opsgenie's and Uptime Kuma's URLs
        self.pings = Pings(core, self.intake, self.heartbeats)
        self.records = History(core, history_days)
        self.views = Views(core, self.windows, self.silence, self.lifecycle)
        self.expiry = Expiry(core, self.lifecycle, self.intake, self.windows, self.groups, self.silence,
                             self.records, self.pings)
        #: the events received lately (memory only)
        self.recent = self.intake.recent
        self.intake_silence = intake_silence
        self.history_days = history_days
        # the hot paths (POST an event, GET one heartbeat): the parts' own
        # methods, without a call through the facade
        self.ingest = self.intake.ingest
        self.document = self.views.document

    @property
    def waker(self):
        """None, or called with a clock time when a tick becomes due earlier
        than the last tick said (the scheduler's wake-up)."""
        return self.core.waker

    @waker.setter
    def waker(self, waker):
        self.core.waker = waker

    @property
    def events_received(self):
        """Events received (valid requests) since the start."""
        return self.intake.events_received

    @property
    def alarms_raised(self):
        """Alarms raised (late and down) since the start."""
        return self.core.funnel.alarms_raised

    # -- life ------------------------------------------------------------------

    def load(self):
        self.lifecycle.load()

    def sync(self):
        return self.lifecycle.sync()

    def resume(self):
        self.lifecycle.resume()

    def shutdown(self):
        self.lifecycle.shutdown()

    def tick(self):
        return self.expiry.tick()

    # -- heartbeats ------------------------------------------------------------

    def create(self, fields, heartbeat_id=None):
        self.notifications.check_references(fields)
        return self.heartbeats.create(fields, heartbeat_id)

    def update(self, heartbeat_id, fields):
        self.notifications.check_references(fields)
        self.heartbeats.update(heartbeat_id, fields)

    def delete(self, heartbeat_id):
        self.heartbeats.delete(heartbeat_id)

    def pause(self, heartbeat_id):
        self.heartbeats.pause(heartbeat_id)

    def resume_heartbeat(self, heartbeat_id):
        self.heartbeats.resume(heartbeat_id)

    def put(self, heartbeat_id, status, reason, output=None, member=None, extra=None, event=False):
        return self.heartbeats.put(heartbeat_id, status, reason, output, member, extra, event)

    def by_slug(self, slug):
        """The id of the heartbeat whose ``slug`` is ``slug``, or None: a
        look-up in memory, O(1), no database round trip (the pings' routes)."""
        return self.core.model.by_slug(slug)

    def by_push_token(self, token):
        """The id of the heartbeat whose ``push_token`` is ``token``, or None
        (as :meth:`by_slug`)."""
        return self.core.model.by_push_token(token)

    def list(self):
        return self.views.list()

    def page(self, limit, after=None):
        return self.views.page(limit, after)

    def status(self, heartbeat_id):
        document = self.views.status(heartbeat_id)
        ack = self.notifications.ack_of(heartbeat_id, document)
        if ack is not None:
            document["ack"] = ack
        return document

    def ack(self, heartbeat_id, user, comment=None):
        return self.notifications.ack(heartbeat_id, user, comment)

    def alarms(self, limit=None):
        return self.views.alarms(limit)

    def alarm_counts(self):
        return self.views.alarm_counts()

    def status_page(self, statuses=(), terms=(), offset=0, limit=100):
        return self.views.status_page(statuses, terms, offset, limit)

    def overview(self):
        return self.views.overview()

    # -- members -----------------------------------------------------------------

    def members(self, heartbeat_id, statuses=(), after=None, limit=DEFAULT_MEMBERS_PAGE):
        return self.groups.page(heartbeat_id, statuses, after, limit)

    def delete_member(self, heartbeat_id, member):
        self.groups.delete(heartbeat_id, member)

    # -- maintenance windows -----------------------------------------------------

    def create_maintenance(self, fields):
        return self.windows.create(fields)

    def update_maintenance(self, maintenance_id, fields):
        self.windows.update(maintenance_id, fields)

    def delete_maintenance(self, maintenance_id):
        self.windows.delete(maintenance_id)

    def maintenance(self, maintenance_id):
        return self.windows.document(maintenance_id)

    def maintenances(self, active=False):
        return self.windows.documents(active)

    # -- history and explanations ------------------------------------------------

    def history(self, heartbeat_id, since=None, until=None, limit=DEFAULT_HISTORY_LIMIT):
        """:meth:`History.of`; :raises NotFound: when there is no such heartbeat."""
        self.document(heartbeat_id)  # NotFound
        return self.records.of(heartbeat_id, since, until, limit)

    def record_changes(self, changes):
        self.records.record(changes)

    def changes_since(self, heartbeat_ids, start):
        return self.records.timelines(heartbeat_ids, start)

    def history_metrics(self):
        return self.records.metrics()

    def prune_history(self):
        return self.records.prune()

    def recent_events(self, heartbeat_id):
        """The heartbeat's last matching events, newest first, as
        ``{"received", "event", "truncated"}``; :raises NotFound:."""
        self.document(heartbeat_id)  # NotFound
        return [shown_item(at, event) for at, event in reversed(self.recent.matching(heartbeat_id))]

    def test_pattern(self, pattern):
        """``POST /api/v2/pattern/test``: which of the events received lately
        match ``pattern``, and which come close (see :func:`pattern_test`)."""
        received = self.recent.all_received()
        matched, near = pattern_test(pattern, received)
        return {
            "examined": len(received),
            "matched": [shown_item(at, event) for at, event in matched],
            "near_misses": [
                {**shown_item(at, event),
                 "mismatched": {key: {"expected": expected, "got": shown_value(got)}
                                for key, (expected, got) in mismatched.items()}}
                for at, event, mismatched in near],
        }

    # -- the database ------------------------------------------------------------

    def outbox_depth(self):
        """Events waiting for delivery; :raises StoreError: when the database
        does not answer."""
        return self.store.outbox_depth()

    def health(self):
        """``(outbox depth or None, problem or None, since)``; never waits on the
        engine's lock or the database writer (see :meth:`Store.health`)."""
        return self.store.health()


###############################################################################
# Background work
###############################################################################


class _Worker:
    """A background thread running ``step()`` until stopped; ``step`` returns
    the seconds to wait before the next step (None: until woken). An
    unexpected exception (a bug) is logged with its traceback and the step
    retried: a background thread that died would stop alarms, or their
    delivery, without a word."""

    name = "heartbeat-lite-worker"
    retry_seconds = 1.0  # after a step that failed unexpectedly

    def __init__(self):
        self._wake = threading.Event()
        self._stopping = False
        self._thread = None

    def start(self):
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, wait=True):
        """Stop the thread; unless ``wait``, without waiting for it to end
        (it ends after its step)."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        if wait:
            self._thread.join()
        self._thread = None

    def wake(self):
        self._wake.set()

    def _run(self):
        while not self._stopping:
            self._wake.clear()
            try:
                wait = self.step()
            except Exception:
                log.exception("%s: unexpected error, retrying in %.0fs", self.name, self.retry_seconds)
                wait = self.retry_seconds
            if wait is None or wait > 0:
                self._wake.wait(wait)

    def step(self):  # pragma: no cover - overridden
        raise NotImplementedError


class Scheduler(_Worker):
    """Server mode: ticks the engine when the last tick said the next one is
    due (the earliest deadline, the write of refreshes kept in memory, or the
    next alive record), sleeping in between; the engine wakes it when
    something becomes due earlier."""

    name = "heartbeat-lite-scheduler"

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self._due_lock = threading.Lock()
        self._due_at = -math.inf  # clock time of the next tick
        self._failing = None  # the error of the last tick, while ticks fail

    def start(self):
        self.engine.waker = self._due_by
        super().start()

    def stop(self):
        self.engine.waker = None
        super().stop()

    def _due_by(self, at):
        with self._due_lock:
            self._due_at = min(self._due_at, at)
        self.wake()

    def step(self):
        clock = self.engine.clock
        with self._due_lock:
            wait = self._due_at - clock()
            if wait > 0:  # woken early: sleep again, less
                return wait
            self._due_at = math.inf  # what becomes due during the tick lowers it again
        try:
            delay = self.engine.tick()
        except StoreError as exc:
            if str(exc) != self._failing:  # the same failure every second is said once
                log.error("expiry failed, retrying every %.0fs: %s", SCHEDULER_RETRY_SECONDS, exc)
                self._failing = str(exc)
            delay = SCHEDULER_RETRY_SECONDS
        except BaseException:
            self._due_by(clock() + self.retry_seconds)
            raise
        else:
            if self._failing is not None:
                log.warning("expiry works again")
                self._failing = None
        with self._due_lock:
            self._due_at = min(self._due_at, clock() + delay)
            return max(0.0, self._due_at - clock())


class Syncer(_Worker):
    """Several instances on one database: applies the others' changes to
    this one's read model every :data:`SYNC_SECONDS` (see :meth:`Engine.sync`),
    and samples the database's clock every :data:`CLOCK_SAMPLE_SECONDS`
    (see :meth:`PostgresStore.sample_clock`)."""

    name = "heartbeat-lite-sync"

    def __init__(self, engine, store):
        super().__init__()
        self.engine = engine
        self.store = store
        self.failing = False
        self._sample_at = -math.inf  # time.monotonic() of the next clock sample

    def step(self):
        try:
            if time.monotonic() >= self._sample_at:
                self._sample_at = time.monotonic() + CLOCK_SAMPLE_SECONDS
                self.store.sample_clock()
            self.engine.sync()
        except StoreError as exc:
            if not self.failing:
                log.error("cannot read other instances' changes, retrying: %s", exc)
            self.failing = True
            return SCHEDULER_RETRY_SECONDS
        if self.failing:
            log.warning("reading other instances' changes again")
            self.failing = False
        return SYNC_SECONDS


class DeliveryFailed(Exception):
    """An attempt that did not deliver: ``reason`` (no secret in it),
    ``status`` (the target's HTTP status, or None), ``permanent`` (the
    target refuses this content for good: retrying will not help)."""

    def __init__(self, reason, status=None, permanent=False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent


class _Watchdog:
    """Shuts a socket down at a deadline, which ends a read or a write
    blocked on a peer that sends a byte now and then (a socket timeout alone
    is per read). ``expired`` says whether it did."""

    def __init__(self, seconds, get_socket):
        self.expired = threading.Event()
        self._closing = threading.Lock()
        self._get_socket = get_socket
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def _cut(self):
        with self._closing:
            sock = self._get_socket()
            if not self.expired.is_set() and sock is not None:
                self.expired.set()
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        with self._closing:
            self.expired.set()  # from here on the watchdog does nothing
        self._timer.cancel()


def http_attempt(url, body, headers, timeout, context=None, method="POST"):
    """One HTTP request, over http.client (no redirect handling to switch
    off), ended at ``timeout`` seconds whatever the target does; userinfo
    in ``url`` becomes Basic auth.

    The answer must be complete by the deadline: its head, and its body up
    to :data:`FORWARD_ANSWER_BYTES` (all of it when shorter). A body cut
    short (by the deadline, or by the target closing before its
    ``Content-Length``) fails the attempt, whatever the status: a ``200``
    that never finishes is not a delivery.

    :returns: the status, when 2xx.
    :raises DeliveryFailed: any other status (a 3xx is never followed, so
        credentials go to the configured URL only), too slow, network.
    """
    target, authorization = parse_forward_url(url, "url")
    parts = urllib.parse.urlsplit(target)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": JSON_TYPE, **headers}
    if authorization and not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = authorization
    watchdog = _Watchdog(timeout, lambda: conn.sock)
    try:
        with watchdog:
            try:
                conn.request(method, urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")), body, headers)
                response = conn.getresponse()
                _read_answer(response, FORWARD_ANSWER_BYTES)
                if watchdog.expired.is_set():  # the watchdog cut it, and what was read ended at the cut
                    raise TimeoutError(f"no complete answer within {timeout:g}s")
            except (OSError, http.client.HTTPException) as exc:
                if watchdog.expired.is_set() and not isinstance(exc, TimeoutError):
                    raise TimeoutError(f"no complete answer within {timeout:g}s") from exc
                raise
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, ssl errors are OSErrors
        raise DeliveryFailed(redact_secrets(str(exc) or type(exc).__name__, url)) from exc
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        redirect = " (a redirect: not followed)" if 300 <= response.status < 400 else ""
        raise DeliveryFailed(f"HTTP {response.status}{redirect}", response.status,
                             is_permanent_refusal(response.status))
    return response.status


def smtp_attempt(url, message, timeout, context=None):
    """Send ``message`` through the SMTP server of an ``email`` channel's
    URL: ``smtps://`` speaks TLS from the start, ``smtp://`` upgrades with
    STARTTLS when the server offers it; userinfo logs in. The whole attempt
    ends at ``timeout`` seconds.

    :raises DeliveryFailed: a recipient or the message refused for good
        (a 5xx to them) is permanent; anything else is retried.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or SMTP_DEFAULT_PORTS[parts.scheme]
    context = context or ssl.create_default_context()
    query = urllib.parse.parse_qs(parts.query)
    sender, recipients = query["from"][0], _email_addresses(query["to"][0])
    holder = []
    try:
        with _Watchdog(timeout, lambda: holder[0].sock if holder else None) as watchdog:
            try:
                if parts.scheme == "smtps":
                    client = smtplib.SMTP_SSL(parts.hostname, port, timeout=timeout, context=context)
                else:
                    client = smtplib.SMTP(parts.hostname, port, timeout=timeout)
                holder.append(client)
                with client:
                    client.ehlo()
                    if parts.scheme == "smtp" and client.has_extn("starttls"):
                        client.starttls(context=context)
                        client.ehlo()
                    if parts.username is not None:
                        client.login(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
                    client.send_message(message, from_addr=sender, to_addrs=recipients)
            except (OSError, smtplib.SMTPException) as exc:
                if watchdog.expired.is_set():
                    raise TimeoutError(f"no complete exchange within {timeout:g}s") from exc
                raise
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryFailed(redact_secrets(f"recipients refused: {exc.recipients}", url), permanent=True) from exc
    except smtplib.SMTPResponseException as exc:
        permanent = isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        raise DeliveryFailed(redact_secrets(f"SMTP {exc.smtp_code} {text}", url), permanent=permanent) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(redact_secrets(str(exc) or type(exc).__name__, url)) from exc
    return None


class Sender:
    """What one channel's attempts send, by kind (docs/channels/): the
    requests of a batch of queued rows, each carrying the rows it delivers,
    and one attempt of a request.

    :param channel: the channel (see :func:`channel_of`).
    :param public_url: the base of links to heartbeats' pages.
    :param timeout: seconds one attempt may take, overall.
    :param ca_file: a certificate authority file for https, SMTPS and STARTTLS.
    """

    BATCHED = ("canopsis", "alertmanager")  # one request carries many rows

    def __init__(self, channel, public_url=None, timeout=FORWARD_TIMEOUT_SECONDS, ca_file=None):
        self.channel = channel
        self.public_url = public_url
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def requests(self, rows, single=False):
        """``rows`` (``(seq, event JSON text, notice JSON text or None)``,
        oldest first) as requests ``(seqs, payload)``: one per row, or (a
        canopsis or alertmanager channel) as many rows as fit in
        :data:`DELIVERY_BATCH_BYTES` and :data:`FORWARD_BATCH_EVENTS`
        (one each when ``single``)."""
        kind = self.channel["kind"]
        if kind not in self.BATCHED:
            return [([seq], self._one(event, notice)) for seq, event, notice in rows]
        requests, seqs, parts, size = [], [], [], 2
        for seq, event, notice in rows:
            if kind == "canopsis":
                items = [event]
            else:
                notice = json.loads(notice) if notice is not None else notice_from_event(json.loads(event))
                items = [json.dumps(alert, ensure_ascii=False) for alert in alertmanager_alerts(notice, self._link(notice))]
            grown = size + sum(len(item.encode("utf-8")) + 1 for item in items)
            if seqs and (single or grown > DELIVERY_BATCH_BYTES or len(seqs) >= FORWARD_BATCH_EVENTS):
                requests.append((seqs, parts))
                seqs, parts, grown = [], [], 2 + sum(len(item.encode("utf-8")) + 1 for item in items)
            seqs.append(seq)
            parts += items
            size = grown
        if seqs:
            requests.append((seqs, parts))
        return [(seqs, ("[" + ",".join(parts) + "]").encode("utf-8")) for seqs, parts in requests]

    def _link(self, notice):
        heartbeat = notice["heartbeat"]
        return detail_link(self.public_url, heartbeat and heartbeat["_id"])

    def _one(self, event, notice):
        """The payload of one row for a kind sent one row at a time."""
        notice = json.loads(notice) if notice is not None else notice_from_event(json.loads(event))
        return self.payload(notice)

    def payload(self, notice):
        """What this channel sends for one notice: JSON bytes, an e-mail
        message, or ``(title, body)`` for Apprise."""
        kind, link, url = self.channel["kind"], self._link(notice), self.channel["url"]
        if kind == "canopsis":
            return dump_json([_test_check_event(notice)])
        if kind == "alertmanager":
            return dump_json(alertmanager_alerts(notice, link))
        if kind == "webhook":
            body = webhook_body(notice, link)
            if self.channel["template"] is not None:
                return render_template(self.channel["template"], template_values(body)).encode("utf-8")
            return dump_json(body)
        if kind == "slack":
            return dump_json(slack_body(notice, link))
        if kind == "teams":
            return dump_json(teams_body(notice, link))
        if kind == "ntfy":
            return dump_json(ntfy_body(notice, link, urllib.parse.urlsplit(url).path.rsplit("/", 1)[1]))
        if kind == "email":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
            return email_message(notice, link, query["from"][0], _email_addresses(query["to"][0]))
        return notice_title(notice), notice_text(notice, link)

    def send(self, payload):
        """One attempt; :returns: the target's HTTP status, or None (not
        HTTP); :raises DeliveryFailed:."""
        kind, url = self.channel["kind"], self.channel["url"]
        if kind == "email":
            return smtp_attempt(url, payload, self.timeout, self._context)
        if kind == "apprise":
            return self._apprise(payload)
        if kind == "alertmanager":
            url = url.rstrip("/").partition("?")[0] + "/api/v2/alerts"
        elif kind == "ntfy":
            parts = urllib.parse.urlsplit(url)
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0] or "/", "", ""))
        return http_attempt(url, payload, dict(self.channel["headers"] or {}), self.timeout, self._context)

    def _apprise(self, payload):
        apprise = apprise_module()
        if apprise is None:
            raise DeliveryFailed("apprise is not installed: pip install heartbeat-lite[apprise]")
        notifier = apprise.Apprise()
        if not notifier.add(self.channel["url"]):
            raise DeliveryFailed("Apprise does not take this URL", permanent=True)
        title, body = payload
        if not notifier.notify(title=title, body=body):
            raise DeliveryFailed("Apprise could not notify (its log says why)")
        return None

    def test(self, now):
        """Send a test message now: ``{"delivered", "status", "error"}``."""
        try:
            status = self.send(self.payload(test_notice(now)))
        except DeliveryFailed as exc:
            return {"delivered": False, "status": exc.status, "error": exc.reason}
        return {"delivered": True, "status": status, "error": None}


def _test_check_event(notice):
    """The event a canopsis channel's test sends: an ok check of resource
    ``channel-test`` of component heartbeat-lite."""
    return {"connector": "heartbeat", "connector_name": "heartbeat", "event_type": "check",
            "source_type": "resource", "component": INTAKE_COMPONENT, "resource": "channel-test",
            "state": RESOLVED_STATE, "output": TEST_OUTPUT, "timestamp": int(notice["at"]),
            "heartbeat_id": None, "heartbeat_name": "channel test"}


class Forwarder(_Worker):
    """Delivers one channel's queue: oldest first, at least once (a row is
    deleted only once its target took it), in order, with capped
    exponential backoff while the target fails; its own thread, so a
    failing or hanging channel never delays another. ``--forward-url``'s
    canopsis channel is one of them.

    A request is split to fit :data:`DELIVERY_BATCH_BYTES`; one the target
    refuses for good (a 4xx but 408 and 429, see
    :func:`is_permanent_refusal`) is sent again one row at a time, and a
    row refused alone is set aside (kept, shown, no longer sent), so one
    bad event never blocks the ones after it. An Alertmanager channel also
    sends the open alerts again every :data:`ALERTMANAGER_RESEND_SECONDS`.

    Each attempt ends within ``timeout`` seconds whatever the target does,
    so stopping waits at most that long.

    :param store: the :class:`Store` holding the queues.
    :param channel: the channel (see :func:`channel_of`).
    :param open_notices: None, or a callable giving the notices of the
        alarms open now for a channel (:meth:`Notifications.open_notices`).
    """

    name = "heartbeat-lite-forwarder"

    def __init__(self, store, channel, timeout=FORWARD_TIMEOUT_SECONDS, public_url=None, ca_file=None,
                 clock=time.time, open_notices=None):
        super().__init__()
        self.store = store
        self.clock = clock
        self.open_notices = open_notices
        self.failures = 0  # consecutive failed attempts
        self._single = False  # a batch was refused: one row per request until a whole batch goes
        self._resent_at = -math.inf  # time.monotonic() of the last re-send of open alerts
        self.sender = Sender(channel, public_url, timeout, ca_file)

    @property
    def channel(self):
        return self.sender.channel

    @channel.setter
    def channel(self, channel):
        self.sender.channel = channel

    @property
    def timeout(self):
        return self.sender.timeout

    @timeout.setter
    def timeout(self, seconds):
        self.sender.timeout = seconds

    @property
    def label(self):
        """The channel's URL as the log shows it: no userinfo, no secret
        (see :func:`redact_channel_url`)."""
        url, kind = self.channel["url"], self.channel["kind"]
        if kind not in ("email", "apprise"):
            url = parse_forward_url(url)[0]
        return redact_channel_url(url, kind)

    def wake(self):
        if not self.failures:  # while failing, new events wait for the backoff
            super().wake()

    def step(self):
        try:
            delay = self.deliver_once()
            if self.channel["kind"] == "alertmanager" and self.open_notices is not None and delay in (None, 0.0):
                since = time.monotonic() - self._resent_at
                if since >= ALERTMANAGER_RESEND_SECONDS:
                    self.resend()
                    since = 0.0
                delay = delay if delay == 0.0 else ALERTMANAGER_RESEND_SECONDS - since
            if delay is None and self.store.shared_by_instances:
                return OUTBOX_POLL_SECONDS  # another instance may fill the queue, and die before delivering
            return delay
        except StoreError as exc:
            log.error("alarm delivery to %s cannot read its queue, retrying in %.0fs: %s", self.label,
                      FORWARD_BACKOFF_SECONDS[0], exc)
            return FORWARD_BACKOFF_SECONDS[0]

    def deliver_once(self):
        """Send the oldest batch of the channel's queue.

        :returns: 0 when it was delivered (more may wait), None when the
            queue is empty, or the backoff in seconds after a failure. With
            other instances on the database, one at a time delivers a
            channel: while another does, this waits :data:`OUTBOX_POLL_SECONDS`.
        """
        channel_id = self.channel["_id"]
        with self.store.outbox_lease(channel_id) as leased:
            if not leased:
                return OUTBOX_POLL_SECONDS
            rows = self.store.deliveries(channel_id, FORWARD_BATCH_EVENTS)
            if not rows:
                self._single = False
                return None
            return self._deliver(channel_id, rows)

    def _deliver(self, channel_id, rows):
        store = self.store
        delivered = None  # the last seq delivered
        for seqs, payload in self.sender.requests(rows, self._single):
            try:
                self.sender.send(payload)
            except DeliveryFailed as exc:
                if delivered is not None:
                    store.delivered(channel_id, delivered)
                if exc.permanent and len(seqs) > 1:  # which one? one at a time tells
                    self._single = True
                    log.warning("%s refused a batch of %d event(s) (%s): sending them one at a time",
                                self.label, len(seqs), exc.reason)
                    return 0.0
                if exc.permanent:
                    store.set_aside(channel_id, seqs[0], self.clock(), exc.reason)
                    log.error("%s refused an event for good (%s): set aside, the next ones go on "
                              "(docs/notifications.md)", self.label, exc.reason)
                    return 0.0
                return self._failed(channel_id, exc)
            delivered = seqs[-1]
        store.delivered(channel_id, delivered)
        store.record_delivery(channel_id, self.clock())
        if self.failures:
            log.warning("alarm delivery to %s recovered after %d failed attempt(s)", self.label, self.failures)
            self.failures = 0
        log.debug("delivered %d event(s) to %s", len(rows), self.label)
        return 0.0

    def _failed(self, channel_id, exc):
        self.failures += 1
        delay = min(FORWARD_BACKOFF_SECONDS[1], FORWARD_BACKOFF_SECONDS[0] * 2 ** (self.failures - 1))
        try:
            self.store.record_failure(channel_id, self.clock(), exc.reason)
        except StoreError as error:
            log.error("cannot record the failure of %s: %s", self.label, error)
        if self.failures == 1:
            waiting = self.store.queues().get(channel_id, (0,))[0]
            log.warning("alarm delivery to %s failing (%s); %d event(s) wait, retrying with backoff",
                        self.label, exc.reason, waiting)
        else:
            log.debug("alarm delivery to %s failed again (%s); next try in %.0fs", self.label, exc.reason, delay)
        return delay

    def resend(self):
        """Send the alarms open now again (an Alertmanager channel: its
        alerts resolve themselves unless sent again); return how many."""
        self._resent_at = time.monotonic()
        notices = self.open_notices(self.channel["_id"])
        rows = [(0, "{}", json.dumps(notice)) for notice in notices]
        with self.store.outbox_lease(self.channel["_id"]) as leased:
            if not leased:
                return 0
            for _, payload in self.sender.requests(rows):
                try:
                    self.sender.send(payload)
                except DeliveryFailed as exc:
                    log.debug("re-sending open alerts to %s failed (%s)", self.label, exc.reason)
                    return 0
        return len(notices)


class Deliveries:
    """The delivery workers: one :class:`Forwarder` per channel, following
    the channels as they are created, changed and deleted.

    :param store: the :class:`Store`.
    :param registry: the :class:`ChannelRegistry` to follow.
    """

    def __init__(self, store, registry, public_url=None, ca_file=None, clock=time.time, open_notices=None,
                 timeout=FORWARD_TIMEOUT_SECONDS):
        self.store = store
        self.public_url = public_url
        self.ca_file = ca_file
        self.clock = clock
        self.open_notices = open_notices
        self.timeout = timeout
        #: ``{channel id: Forwarder}``
        self.workers = {}
        self._started = False
        self._lock = threading.Lock()
        registry.listeners.append(self.follow)
        self.follow(registry.channels)

    def follow(self, channels):
        """The channels are now ``channels`` (``{id: channel}``): a worker
        for each new one, the changed ones' settings replaced, the deleted
        ones' workers told to stop (not waited for: this runs under the
        engine's lock)."""
        with self._lock:
            for channel_id in list(self.workers):
                if channel_id not in channels:
                    worker = self.workers.pop(channel_id)
                    worker.stop(wait=False)
            for channel_id, channel in channels.items():
                worker = self.workers.get(channel_id)
                if worker is None:
                    worker = self.workers[channel_id] = Forwarder(
                        self.store, channel, self.timeout, self.public_url, self.ca_file, self.clock,
                        self.open_notices)
                    worker.name = f"heartbeat-lite-channel-{channel['name'][:40]}"
                    if self._started:
                        worker.start()
                elif worker.channel is not channel:
                    worker.channel = channel
                    worker.failures = 0
                    worker.wake()

    def set_public_url(self, public_url):
        """Links in messages from now on start with ``public_url``."""
        self.public_url = public_url
        with self._lock:
            for worker in self.workers.values():
                worker.sender.public_url = public_url

    def wake(self, channel_ids):
        workers = self.workers
        for channel_id in channel_ids:
            worker = workers.get(channel_id)
            if worker is not None:
                worker.wake()

    def start(self):
        with self._lock:
            self._started = True
            for worker in self.workers.values():
                worker.start()

    def stop(self):
        with self._lock:
            self._started = False
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()

    def deliver(self, channel_id=None):
        """Deliver now (embedded): each channel's queue (or one's) until it
        is empty or an attempt fails.

        :returns: None when every queue is empty, else the shortest backoff
            in seconds before the next attempt.
        """
        delays = []
        for worker in list(self.workers.values()):
            if channel_id is not None and worker.channel["_id"] != channel_id:
                continue
            while True:
                delay = worker.deliver_once()
                if delay != 0:
                    break
            if delay is not None:
                delays.append(delay)
        return min(delays, default=None)


def _read_answer(response, limit):
    """Read ``response``'s body, or its first ``limit`` bytes when it is
    longer (the rest is not waited for).

    :raises http.client.IncompleteRead: the body ended before its
        ``Content-Length`` (or before ``limit`` bytes of it); a chunked
        body cut short raises it too, from http.client.
    """
    wanted = limit if response.length is None else min(limit, response.length)
    got = 0
    while got < wanted:
        chunk = response.read(wanted - got)
        if not chunk:
            break
        got += len(chunk)
    if response.length is not None and got < wanted:
        raise http.client.IncompleteRead(b"", wanted - got)


###############################################################################
# Authentication
###############################################################################


class PasswordHash:
    """A salted PBKDF2-SHA256 password hash, written
    ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>``."""

    def __init__(self, iterations, salt, digest):
        self.iterations, self.salt, self.digest = iterations, salt, digest

    @classmethod
    def create(cls, password, iterations=PBKDF2_ITERATIONS):
        """Hash ``password`` (str) with a new random salt."""
        salt = os.urandom(16)
        return cls(iterations, salt, hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations))

    @classmethod
    def parse(cls, text):
        """:raises ValueError: when ``text`` is not a hash in the format above."""
        parts = text.split("$")
        if len(parts) != 4 or parts[0] != PASSWORD_HASH_SCHEME or not parts[1].isdigit():
            raise ValueError(f"malformed password hash: expected {PASSWORD_HASH_SCHEME}$<iterations>$<salt>$<hash>")
        try:
            salt, digest = (base64.b64decode(part, validate=True) for part in parts[2:])
        except ValueError:
            raise ValueError("malformed password hash: salt and hash must be base64") from None
        if int(parts[1]) < 1 or not salt or len(digest) != 32:
            raise ValueError("malformed password hash: bad iterations, salt or hash length")
        return cls(int(parts[1]), salt, digest)

    def verify(self, password):
        """True when ``password`` (bytes) hashes to this hash (a full PBKDF2 derivation)."""
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password, self.salt, self.iterations), self.digest)

    def __str__(self):
        encode = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
        return f"{PASSWORD_HASH_SCHEME}${self.iterations}${encode(self.salt)}${encode(self.digest)}"


def parse_users(entries, source="user"):
    """Parse ``name:password`` strings into a dict.

    :param entries: iterable of ``name:password`` strings; the password may
        itself contain ``:``, or be a hash (see :class:`PasswordHash`).
    :param source: how to name an entry in an error (never by its text,
        which may hold a password).
    :raises ConfigError: on an entry with no ``:``, an empty name, an empty
        password or a malformed hash.
    """
    users = {}
    for number, entry in enumerate(entries, 1):
        name, sep, secret = entry.partition(":")
        if not sep or not name:
            raise ConfigError(f"{source} {number}: expected NAME:PASSWORD or NAME:{PASSWORD_HASH_SCHEME}$...")
        if not secret:
            raise ConfigError(f"{source} {number}: empty password for user {log_safe(name)}")
        if secret.startswith(PASSWORD_HASH_SCHEME + "$"):
            try:
                PasswordHash.parse(secret)
            except ValueError as exc:
                raise ConfigError(f"{source} {number}: {exc}") from None
        users[name] = secret
    return users


def load_users_file(path):
    """Read a users file: one ``name:password`` or ``name:<hash>`` per line;
    blank lines and lines starting with ``#`` are skipped, and whitespace
    around a line is ignored.

    :raises ConfigError: when it cannot be read or a line is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as exc:
        raise ConfigError(f"cannot read users file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"users file {path} is not UTF-8 text") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    users = {}
    for n, line in numbered:
        users.update(parse_users([line], source=f"users file {path}, line {n}; entry"))
    return users


class Throttled(Exception):
    """Too many failed password derivations lately (answered 429)."""


class Authenticator:
    """HTTP Basic credentials.

    A plain password is compared in constant time (as SHA-256 digests, so
    its length does not show either), and is not throttled: it costs
    nothing to check. A password given as a :class:`PasswordHash` costs a
    PBKDF2 derivation, so:

    - successful verifications are remembered in memory (under a keyed hash
      of name and password, never the password itself): correct
      credentials cost a derivation once, then nothing, from any address;
    - when any user is hashed, an unknown name costs a derivation too,
      against a decoy hash of the same strength, and gets the same answer,
      so neither time nor answer tells which names exist;
    - derivations run one at a time (at most one core), and a client
      address that has failed (one of the last :data:`AUTH_SOURCES_TRACKED`
      to fail; an IPv6 address counts as its /64) is budgeted: its own
      failures (:data:`AUTH_FAILURE_BURST` at once, then one per
      :data:`AUTH_FAILURE_REFILL_SECONDS`) and, together with every other
      such address, a global one (:data:`AUTH_GLOBAL_FAILURE_BURST` at
      once, then :data:`AUTH_GLOBAL_FAILURES_PER_SECOND`). Past either,
      :class:`Throttled` is raised instead of deriving.

    An address that has not failed is never refused: guessing from any
    number of addresses does not lock out correct credentials from another
    (the old rule, one global budget for every address, let eight flooding
    addresses shut out a new one). What that costs: each address gets one
    failed derivation before it is budgeted, so beyond the global rate a
    flood pays one new address per derivation (a new /64 in IPv6), and
    derivations stay one at a time.

    :param users: dict of name to password, or to a hash string.
    :param clock: monotonic seconds, for the budgets.
    :raises ConfigError: an empty password, or a malformed hash.
    """

    def __init__(self, users, clock=time.monotonic):
        self._plain = {}
        self._hashed = {}
        for name, secret in users.items():
            if not secret:
                raise ConfigError(f"user {log_safe(name)}: empty password")
            if secret.startswith(PASSWORD_HASH_SCHEME + "$"):
                try:
                    self._hashed[name] = PasswordHash.parse(secret)
                except ValueError as exc:
                    raise ConfigError(f"user {log_safe(name)}: {exc}") from None
            else:
                self._plain[name] = self._digest(secret.encode("utf-8"))
        #: what an unknown name is checked against: a random 32 bytes, or,
        #: when some user is hashed, a hash no password matches
        self._decoy = os.urandom(32)
        self._decoy_hash = None
        if self._hashed:
            iterations = max(hashed.iterations for hashed in self._hashed.values())
            self._decoy_hash = PasswordHash(iterations, os.urandom(16), os.urandom(32))
        self._key = os.urandom(32)
        self._verified = {}  # keyed digest of (name, password) -> True, oldest first
        self._derive_lock = threading.Lock()
        self._clock = clock
        self._global = [float(AUTH_GLOBAL_FAILURE_BURST), clock()]  # budget, when last refilled
        #: client addresses that failed -> [budget, when last refilled], least recent first
        self._sources = collections.OrderedDict()

    @staticmethod
    def _digest(password):
        return hashlib.sha256(password).digest()

    def user(self, header, source=None, blocking=True):
        """The user name the ``Authorization`` header proves, or None.

        :param source: the client's address, whose failures are budgeted.
        :param blocking: False: raise :class:`WouldBlock` instead of a
            password derivation (credentials of a hashed password not
            verified yet, an unknown name when some user is hashed).
        :raises Throttled: when a hashed password (or an unknown name, when
            some user is hashed) would need a derivation, the address has
            failed lately, and its own or the global failure budget is spent.
        """
        credentials = bottle.parse_auth(header) if header else None
        if not credentials:
            return None
        name, password = credentials
        password = password.encode("utf-8")
        hashed = self._hashed.get(name)
        if hashed is not None:
            return name if self._verify_hashed(name, password, hashed, source, blocking) else None
        expected = self._plain.get(name)
        if expected is None and self._decoy_hash is not None:
            self._verify_hashed(name, password, self._decoy_hash, source, blocking)  # the same cost and answer
            return None
        ok = hmac.compare_digest(self._digest(password), expected if expected is not None else self._decoy)
        return name if ok and expected is not None else None

    def _verify_hashed(self, name, password, hashed, source, blocking=True):
        key = hmac.new(self._key, name.encode("utf-8") + b"\0" + password, hashlib.sha256).digest()
        if key in self._verified:
            return True
        if not blocking:
            raise WouldBlock()
        source = source_key(source)
        with self._derive_lock:  # one derivation at a time: at most one core
            if key in self._verified:
                return True
            now = self._clock()
            _refill(self._global, AUTH_GLOBAL_FAILURES_PER_SECOND, AUTH_GLOBAL_FAILURE_BURST, now)
            record = self._sources.get(source)
            if record is not None:  # it failed lately: its budget, and the global one
                self._sources.move_to_end(source)
                _refill(record, 1 / AUTH_FAILURE_REFILL_SECONDS, AUTH_FAILURE_BURST, now)
                if record[0] < 1 or self._global[0] < 1:
                    raise Throttled()
            if hashed.verify(password):
                if len(self._verified) >= AUTH_CACHE_ENTRIES:
                    del self._verified[next(iter(self._verified))]
                self._verified[key] = True
                return True
            # a failure spends the global budget (never below empty: an
            # address that has not failed is not refused for it) and the
            # address's own, remembering the address
            self._global[0] = max(0.0, self._global[0] - 1)
            if record is None:
                record = self._sources[source] = [float(AUTH_FAILURE_BURST), now]
                if len(self._sources) > AUTH_SOURCES_TRACKED:
                    self._sources.popitem(last=False)
            record[0] -= 1
            return False


def _refill(budget, rate, burst, now):
    """A token bucket ``[tokens, when last refilled]``, refilled to ``now``."""
    budget[0] = min(burst, budget[0] + (now - budget[1]) * rate)
    budget[1] = now


def source_key(address):
    """The client address whose failures are budgeted: an IPv4 address as
    it is, an IPv6 address as its /64 (one client is given a whole /64),
    an IPv4-mapped one as the IPv4 address; anything else (None, a name) as
    it is."""
    if not address or ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


###############################################################################
# Operator pages
###############################################################################


def parse_status_query(query_string):
    """The status page's query parameters, checked: ``q`` (search text),
    ``status`` (comma-separated, or repeated; the filters are
    :data:`SEVERITY`) and ``page`` (from 1). Other parameters are ignored.

    :returns: ``{"q", "terms", "statuses", "page"}``; statuses in the
        order of :data:`SEVERITY`.
    :raises Invalid: with every reason.
    """
    reasons = []
    try:
        params = urllib.parse.parse_qs(query_string, errors="strict")
    except UnicodeDecodeError:
        raise Invalid(["the query is not valid UTF-8"]) from None
    q = " ".join(params.get("q", [])).strip()
    if len(q) > MAX_SEARCH_CHARS:
        reasons.append(f"q: at most {MAX_SEARCH_CHARS} characters")
    wanted = {status.strip() for value in params.get("status", []) for status in value.split(",")} - {""}
    if wanted - set(SEVERITY):
        reasons.append(f"status: {', '.join(sorted(wanted - set(SEVERITY)))} unknown; "
                       f"choose among {', '.join(SEVERITY)}")
    page = params.get("page", ["1"])[-1]
    if not (page.isascii() and page.isdigit() and 1 <= int(page) <= MAX_PAGE_NUMBER):
        reasons.append(f"page: a whole number from 1 to {MAX_PAGE_NUMBER}")
    if reasons:
        raise Invalid(reasons)
    return {"q": q, "terms": q.split(), "statuses": [s for s in SEVERITY if s in wanted], "page": int(page)}


def status_query_string(q="", statuses=(), page=1):
    """The query string (with its ``?``) of a status page view; the
    inverse of :func:`parse_status_query`. ``?`` alone is the unfiltered
    first page (a link to it keeps the page's path)."""
    params = [("q", q)] if q else []
    if statuses:
        params.append(("status", ",".join(s for s in SEVERITY if s in statuses)))
    if page > 1:
        params.append(("page", str(page)))
    return "?" + urllib.parse.urlencode(params)


def accepts_gzip(header):
    """Whether an ``Accept-Encoding`` header value accepts gzip (an explicit
    ``gzip`` entry decides, else ``*``; ``q=0`` refuses)."""
    decision = {}
    for item in (header or "").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "*"):
            continue
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        try:
            decision[coding] = float(match.group(1)) > 0 if match else True
        except ValueError:
            decision[coding] = False
    return decision.get("gzip", decision.get("*", False))


def member_counts_text(counts):
    """``{status: members}`` as "2 down, 5 up", the worst first, zeros left out."""
    return ", ".join(f"{counts[status]:,} {status}" for status in STATUSES if counts.get(status))


def alarm_counts_text(counts):
    """The open alarms in words, down before late, heartbeats and members
    apart (``counts`` from :meth:`Engine.alarm_counts`): "2 heartbeats and
    3 members down, 1 heartbeat late"; "" when none is open."""

    def some(count, noun):
        return f"{count:,} {noun}{'s' if count != 1 else ''}"

    parts = []
    for status in (DOWN, LATE):
        heartbeats, members = counts[status]
        named = ([some(heartbeats, "heartbeat")] if heartbeats else []) + ([some(members, "member")] if members else [])
        if named:
            parts.append(" and ".join(named) + f" {status}")
    if counts.get("intake"):
        parts.append("no event coming in (the intake)")
    return ", ".join(parts)


def open_alarms_of(counts):
    """How many alarms are open (``counts`` from :meth:`Engine.alarm_counts`)."""
    return sum(sum(counts[status]) for status in (DOWN, LATE)) + counts.get("intake", 0)


def pattern_text(pattern):
    """A pattern as the pages show it: ``key: value, key: value``."""
    return ", ".join(f"{key}: {value}" for key, value in pattern.items())


def duration_text(seconds):
    """A duration in words, to the minute: "2 h 05 min", "40 min", "< 1 min"."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "< 1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def time_html(when, now, missing="—"):
    """A ``<time>`` element: the UTC time of day (the date too, when not
    today), the exact time on hover; the page's script turns it into
    "2 min ago". It does not depend on the second it is rendered, so an
    unchanged page has an unchanged ETag. Built from numbers only, so it
    is safe to put in the page unescaped."""
    if when is None:
        return missing
    moment = time.gmtime(when)
    exact = time.strftime("%Y-%m-%d %H:%M:%S UTC", moment)
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)
    same_day = moment[:3] == time.gmtime(now)[:3]
    shown = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", moment)
    return f'<time datetime="{iso}" title="{exact}">{shown}</time>'


def timeline_svg(changes, start, end, initial=None, slots=48):
    """A heartbeat's states between ``start`` and ``end`` (Unix seconds) as
    a small inline SVG bar, one colour per state (CSS classes ``s-up``,
    ``s-down``, ...; see the pages' style sheet).

    The window is cut into ``slots`` equal slices; a slice that saw several
    states shows the worst (:data:`SEVERITY`), and a run of equal slices is one rectangle of one path per
    state: the markup stays under a kilobyte however often the heartbeat
    flapped. Time before the first known state is left blank.

    :param changes: state changes, each ``{"at": Unix seconds, "status":
        ...}`` (a history entry; other keys ignored) or an ``(at, status)``
        pair, in any order; None when no history is recorded (an empty bar
        that says so).
    :param initial: the state at ``start``, when known.
    :returns: SVG markup (statuses outside the known set are drawn as
        ``s-unknown``; nothing user-written goes into it).
    """
    if changes is None:
        return ('<svg class="timeline" viewBox="0 0 1 1" preserveAspectRatio="none" role="img" '
                'aria-label="no history recorded"><title>no history recorded</title></svg>')
    span = max(end - start, 1e-9)
    step = span / slots
    worst = [None] * slots
    spent = collections.Counter()
    ordered = sorted((c["at"], c["status"]) if isinstance(c, dict) else tuple(c) for c in changes)
    segments = [(start, initial)] + [(at, status) for at, status in ordered if at > start]
    for at, status in ordered:  # the last change at or before start sets the initial state
        if at <= start:
            segments[0] = (start, status)
    for (begin, status), (finish, _) in zip(segments, segments[1:] + [(end, None)]):
        begin, finish = max(begin, start), min(finish, end)
        if status is None or finish <= begin:
            continue
        status = status if status in _SEVERITY_INDEX else "unknown"
        spent[status] += finish - begin
        first = int((begin - start) / step)
        last = min(slots - 1, max(first, math.ceil((finish - start) / step) - 1))
        for slot in range(first, last + 1):
            if worst[slot] is None or severity(status) < severity(worst[slot]):
                worst[slot] = status
    runs = collections.defaultdict(list)
    slot = 0
    while slot < slots:
        length = 1
        while slot + length < slots and worst[slot + length] == worst[slot]:
            length += 1
        if worst[slot] is not None:
            runs[worst[slot]].append(f"M{slot} 0h{length}v1h-{length}z")
        slot += length
    said = ", ".join(f"{status} {duration_text(seconds)}" for status, seconds in spent.most_common())
    paths = "".join(f'<path class="s-{status}" d="{"".join(parts)}"><title>{status} '
                    f'{duration_text(spent[status])}</title></path>' for status, parts in runs.items())
    return (f'<svg class="timeline" viewBox="0 0 {slots} 1" preserveAspectRatio="none" role="img" '
            f'aria-label="{said or "no state known"}">{paths}</svg>')


def availability_text(share):
    """An availability share (0 to 1, or None: no time counted) as a percentage."""
    if share is None:
        return "no data"
    return f"{share * 100:.2f} %" if share < 1 else "100 %"


# The pages share a style sheet and a script. The script refreshes the
# <main id="live"> part every few seconds: it asks for the same URL with
# If-None-Match, gets a 304 (no body) when nothing changed, and says in words
# when the service stops answering.
PAGE_STYLE = """
:root { color-scheme: light dark; --up: #1a7f37; --pending: #d4a72c; --late: #e16f24; --down: #cf222e;
        --paused: #8c959f; --maintenance: #0969da; --muted: #6e7781; --line: #8886; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 75rem;
       padding: 1rem; overflow-wrap: anywhere; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .25rem 1rem; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.25rem 0 .5rem; }
a { color: inherit; }
.muted { color: var(--muted); }
.badge { display: inline-block; min-width: 4.5em; padding: .1em .5em; border-radius: 1em; color: #fff;
         font-size: .85em; font-weight: 600; text-align: center; white-space: nowrap; }
.badge.up { background: var(--up); } .badge.down { background: var(--down); }
.badge.maintenance { background: var(--maintenance); }
.badge.pending { background: var(--pending); color: #1f2328; } .badge.late { background: var(--late); color: #1f2328; }
.badge.paused { background: var(--paused); color: #1f2328; }
#unreachable { background: var(--down); color: #fff; padding: .5rem .75rem; border-radius: .3rem; font-weight: 600;
               margin: .75rem 0; }
body.stale main { opacity: .55; }
form.search { display: flex; gap: .5rem; margin: .75rem 0 .5rem; }
form.search input { flex: 1; min-width: 0; font: inherit; padding: .3rem .5rem; }
form.search button { font: inherit; }
.banner { border-left: .3rem solid var(--down); padding: .3rem .7rem; margin: .5rem 0; font-weight: 500; }
.filters { display: flex; flex-wrap: wrap; gap: .4rem; margin: .5rem 0; padding: 0; list-style: none; }
.filters a { display: inline-block; border: 1px solid var(--line); border-radius: 1em; padding: .1em .7em;
             text-decoration: none; white-space: nowrap; }
.filters a.on { border-color: currentColor; box-shadow: inset 0 0 0 1px currentColor; font-weight: 600; }
.dot { display: inline-block; width: .65em; height: .65em; border-radius: 50%; margin-right: .35em; }
.alarms { border-left: 4px solid var(--down); background: #cf222e14; padding: .25rem .75rem .5rem; margin: .75rem 0; }
.alarms h2 { margin: .4rem 0; } p.alarms { padding: .5rem .75rem; }
.alarms ol { margin: .25rem 0; padding-left: 1.5rem; }
.alarms li { margin: .2rem 0; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; }
col.name { width: 24%; } col.pattern { width: 21%; } col.every { width: 4.5rem; } col.status { width: 7.5rem; }
col.timeline { width: 14%; } col.time { width: 12%; }
svg.timeline { display: block; width: 100%; height: .9rem; margin-top: .2rem; background: #8882; border-radius: 2px; }
svg.timeline.large { height: 1.6rem; }
.s-up { fill: var(--up); background: var(--up); } .s-down { fill: var(--down); background: var(--down); }
.s-pending { fill: var(--pending); background: var(--pending); } .s-late { fill: var(--late); background: var(--late); }
.s-paused { fill: var(--paused); background: var(--paused); }
.s-maintenance { fill: var(--maintenance); background: var(--maintenance); } .s-unknown { fill: #888; background: #888; }
code, pre { font: .9em ui-monospace, SFMono-Regular, Menlo, monospace; overflow-wrap: anywhere; }
pre { background: #8881; padding: .6rem; white-space: pre-wrap; margin: .3rem 0; }
.pager { display: flex; flex-wrap: wrap; gap: .5rem 1.25rem; align-items: baseline; margin: .75rem 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; margin: .5rem 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; min-width: 0; }
.legend { display: flex; flex-wrap: wrap; gap: .25rem 1rem; font-size: .9em; margin: .3rem 0; }
.availability { display: flex; flex-wrap: wrap; gap: .5rem 2rem; }
.availability b { font-size: 1.3em; display: block; }
textarea { width: 100%; font: .9em ui-monospace, SFMono-Regular, Menlo, monospace; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; margin: .5rem 0; }
.actions form { display: flex; gap: .3rem; margin: 0; }
.actions button, .actions input, button.copy { font: inherit; }
.done { border-left: .3rem solid var(--up); padding: .3rem .7rem; margin: .5rem 0; }
.copyable { display: flex; gap: .5rem; align-items: start; }
.copyable pre { flex: 1; min-width: 0; }
.error { color: var(--down); font-weight: 600; }
@media (max-width: 40rem) {
  body { padding: .75rem; }
  colgroup, thead { display: none; }
  table, tbody, tr, td { display: block; }
  tr { border-bottom: 1px solid var(--line); padding: .5rem 0; }
  td { border: 0; padding: .1rem 0; display: grid; grid-template-columns: 6.5rem minmax(0, 1fr); }
  td::before { color: var(--muted); }
  td .badge { justify-self: start; }
  .heartbeats td:nth-child(1)::before { content: "Name"; } .heartbeats td:nth-child(2)::before { content: "Pattern"; }
  .heartbeats td:nth-child(3)::before { content: "Every"; } .heartbeats td:nth-child(4)::before { content: "Status"; }
  .heartbeats td:nth-child(5)::before { content: "Last 24 h"; }
  .heartbeats td:nth-child(6)::before { content: "Last event"; } .heartbeats td:nth-child(7)::before { content: "Deadline"; }
  .members td:nth-child(1)::before { content: "Member"; } .members td:nth-child(2)::before { content: "Status"; }
  .members td:nth-child(3)::before { content: "Last event"; } .members td:nth-child(4)::before { content: "Deadline"; }
  .history td:nth-child(1)::before { content: "When"; } .history td:nth-child(2)::before { content: "Status"; }
  .history td:nth-child(3)::before { content: "Reason"; }
  dl.facts { grid-template-columns: 1fr; gap: 0; } dl.facts dd { margin-bottom: .4rem; }
  .alarms .wide { display: none; }
}
"""

PAGE_SCRIPT = """
(() => {
  const banner = document.getElementById("unreachable"), stamp = document.getElementById("updated");
  let skew = 0, failingSince = null;
  const utc = (ms) => new Date(ms).toISOString().slice(11, 19) + " UTC";
  function relative(when, now) {
    const seconds = Math.abs(now - when) / 1000;
    if (seconds < 5) return "now";
    for (const [limit, unit, size] of [[90, "s", 1], [5400, "min", 60], [129600, "h", 3600], [Infinity, "d", 86400]]) {
      if (seconds < limit) {
        const amount = Math.round(seconds / size) + " " + unit;
        return when > now ? "in " + amount : amount + " ago";
      }
    }
  }
  function relativeTimes() {
    const now = Date.now() + skew;
    for (const element of document.querySelectorAll("#live time[datetime]")) {
      element.textContent = relative(Date.parse(element.dateTime), now);
    }
  }
  async function refresh() {
    const live = document.getElementById("live");
    try {
      const answer = await fetch(location.origin + location.pathname + location.search, {cache: "no-store", headers: {"If-None-Match": live.dataset.etag}});
      const date = Date.parse(answer.headers.get("Date"));
      if (date) skew = date - Date.now();
      if (answer.status === 200) {
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById("live");
        if (!fresh) throw new Error("not a status page");
        live.replaceWith(fresh);
        document.title = page.title;
      } else if (answer.status !== 304) {
        throw new Error("HTTP " + answer.status);
      }
      failingSince = null;
      banner.hidden = true;
      document.body.classList.remove("stale");
      stamp.textContent = "updated " + utc(Date.now() + skew);
    } catch (error) {
      if (failingSince === null) failingSince = Date.now() + skew;
      const why = error.message.startsWith("HTTP") ? " (" + error.message + ")" : "";
      banner.textContent = "Service unreachable since " + utc(failingSince) + why +
        "; what you see is from " + stamp.textContent.replace("updated ", "") + ". Retrying every %(seconds)d s.";
      banner.hidden = false;
      document.body.classList.add("stale");
    }
    relativeTimes();
  }
  stamp.textContent = "updated " + utc(Date.now());
  relativeTimes();
  for (const button of document.querySelectorAll("button.copy")) {  // without the script: the text is selectable
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (error) {  // no clipboard (plain http but on localhost): select it for Ctrl+C
        getSelection().selectAllChildren(source);
        button.textContent = "Selected";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
  setInterval(refresh, %(milliseconds)d);
  const tester = document.getElementById("tester");
  if (tester) tester.addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    const out = document.getElementById("tester-result");
    out.replaceChildren();
    const say = (tag, text, kind) => {
      const element = out.appendChild(document.createElement(tag));
      element.textContent = text;
      if (kind) element.className = kind;
    };
    let pattern;
    try { pattern = JSON.parse(tester.elements.pattern.value); }
    catch (error) { say("p", "The pattern is not JSON: " + error.message, "error"); return; }
    let answer, result;
    try {
      answer = await fetch(location.origin + tester.getAttribute("action"), {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({pattern})});
      result = await answer.json();
    } catch (error) { say("p", "Service unreachable: " + error.message, "error"); return; }
    if (answer.status === 404) { say("p", "This server has no pattern tester.", "error"); return; }
    if (!answer.ok) {
      say("p", "HTTP " + answer.status + ": " + [result.description, ...(result.errors || [])].join("; "), "error");
      return;
    }
    say("p", result.matched.length + " of the last " + result.examined + " events received match.");
    for (const match of result.matched) say("pre", new Date(match.received * 1000).toISOString() + "  " +
                                                    JSON.stringify(match.event));
    if (result.near_misses.length) say("h3", "Closest events that do not match");
    for (const miss of result.near_misses) {
      say("p", Object.entries(miss.mismatched).map(([key, pair]) => key + ": expected " +
          JSON.stringify(pair.expected) + ", got " + (pair.got === null ? "nothing" : JSON.stringify(pair.got)))
          .join("; "));
      say("pre", new Date(miss.received * 1000).toISOString() + "  " + JSON.stringify(miss.event));
    }
  });
})();
"""

# Each page is a shell (bottle SimpleTemplate: {{x}} is HTML-escaped, {{!x}}
# is not, and only takes our own markup) around its live part, rendered first:
# the ETag is a hash of the live part and the URL, so the shell carries it.
PAGE_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{title}}</title>
<style>{{!style}}</style>
</head>
<body>
<header><h1><a href="{{base}}">heartbeat-lite</a></h1><span class="muted" id="updated"></span></header>
<div id="unreachable" role="alert" hidden></div>
{{!top}}
<main id="live" data-etag="{{etag}}">
{{!live}}
</main>
{{!bottom}}
<script>{{!script}}</script>
</body>
</html>
"""

STATUS_PAGE_TOP = """<form class="search" method="get" action="{{base}}" role="search">
<input type="search" name="q" value="{{q}}" placeholder="Search names and patterns" aria-label="Search names and patterns">
% if statuses:
<input type="hidden" name="status" value="{{",".join(statuses)}}">
% end
<button>Search</button>
</form>
"""

# The list: filters with counts over every heartbeat, the alarms summed up,
# one page of heartbeats, the problems first.
STATUS_PAGE = """<ul class="filters">
% for status in statuses_all:
<li><a href="{{query(q, set(statuses) ^ {status}, 1)}}" class="{{"on" if status in statuses else ""}}" title="{{"remove" if status in statuses else "add"}} this filter"><span class="dot s-{{status}}"></span>{{status}} {{f"{counts.get(status, 0):,}"}}</a></li>
% end
<li><a href="{{query(q, (), 1)}}" class="{{"" if statuses else "on"}}">all {{f"{everything:,}"}}</a></li>
</ul>
% down, late = counts.get("down", 0), counts.get("late", 0)
% if open_alarms and (q or statuses):
<p class="alarms">{{alarm_text}}: \\\\
% if down:
<a href="{{query("", ["down"], 1)}}">show the {{f"{down:,}"}} down</a>\\\\
% end
% if down and late:
, \\\\
% end
% if late:
<a href="{{query("", ["late"], 1)}}">show the {{f"{late:,}"}} late</a>\\\\
% end
</p>
% elif open_alarms:
<section class="alarms">
<h2>{{alarm_text}}{{f", the oldest {len(alarms)}:" if open_alarms > len(alarms) else ""}}</h2>
<ol>
% for alarm in alarms:
% status = "down" if alarm["state"] == 3 else "late"
<li><span class="badge {{status}}">{{status}}</span> \\\\
% if alarm["heartbeat_id"]:
<a href="{{base}}heartbeat/{{alarm["heartbeat_id"]}}"><strong>{{shorten(alarm["heartbeat_name"], 80)}}</strong></a>\\\\
% else:
<strong>{{alarm["heartbeat_name"]}}</strong>\\\\
% end
% if alarm.get("member"):
 member <code>{{shorten(pattern_text(alarm["member"]), 120)}}</code>\\\\
% end
 since {{!time_html(alarm["since"], now)}}<span class="wide"> <code>{{shorten(alarm["resource"], 80)}}</code> <span class="muted">{{shorten(alarm["output"], 120)}}</span></span></li>
% end
</ol>
% if open_alarms > len(alarms):
% if down:
<a href="{{query("", ["down"], 1)}}">All {{f"{down:,}"}} heartbeat{{"s" if down > 1 else ""}} down</a>
% end
% if late:
<a href="{{query("", ["late"], 1)}}">All {{f"{late:,}"}} heartbeat{{"s" if late > 1 else ""}} late</a>
% end
% end
</section>
% else:
<p class="muted">No active alarm.</p>
% end
% if not total and not (q or statuses):
<h2>No heartbeat yet</h2>
<p>Create one: it goes down, and raises an alarm, when no event matching its pattern
arrives within its expected interval.</p>
<pre>curl -u USER:PASSWORD -d '{"name": "nightly backup", "pattern": {"connector": "backup"}, "expected_interval": "24h"}' \\
     {{base_url}}/api/v2/heartbeat</pre>
<p>Then send it events, as Canopsis does:</p>
<pre>curl -u USER:PASSWORD -d '{"connector": "backup", "component": "db1"}' {{base_url}}/api/v2/event</pre>
% elif not total:
<p>No heartbeat matches{{f" “{q}”" if q else ""}}{{f" with status {' or '.join(statuses)}" if statuses else ""}}.
<a href="{{query("", (), 1)}}">Show all</a></p>
% else:
<p class="muted">{{f"{first:,}–{last:,} of {total:,}" if pages > 1 else f"{total:,} heartbeat{'s' if total > 1 else ''}"}}{{f" matching (of {everything:,})" if q or statuses else ""}}, problems first (down, then late), then by name.
% if not timelines_recorded:
The 24 h timelines stay empty: this version records no history.
% end
</p>
<table class="heartbeats">
<colgroup><col class="name"><col class="pattern"><col class="every"><col class="status"><col class="timeline"><col class="time"><col class="time"></colgroup>
<thead><tr><th>Name</th><th>Pattern</th><th>Every</th><th>Status</th><th>Last 24 h</th><th>Last event</th><th>Deadline</th></tr></thead>
<tbody>
% for row in rows:
<tr><td><a href="{{base}}heartbeat/{{row["_id"]}}">{{row["name"]}}</a></td>
<td><code>{{shorten(pattern_text(row["pattern"]), 300)}}</code></td><td>{{row["expected_interval"] if "schedule" not in row else f'{row["schedule"]} {row.get("tz", "UTC")}, within {row["expected_interval"]}'}}</td>
<td><span class="badge {{row["status"]}}">{{row["status"]}}</span>\\\\
% if row.get("members"):
 <span class="muted">members: {{member_counts_text(row["members"])}}</span>\\\\
% end
% if row.get("maintenance"):
 <span class="badge maintenance">maintenance</span> <span class="muted">maintenance: {{shorten(row["maintenance"]["name"], 80)}}, until {{!time_html(row["maintenance"]["until"], now)}}</span>\\\\
% end
</td><td>{{!timelines[row["_id"]]}}</td><td>{{!time_html(row["last_event"], now, "never")}}</td>
<td>{{!(("down since " + time_html(row["alarm_since"], now)) if row["status"] == "down" else time_html(row["deadline"], now))}}</td></tr>
% end
</tbody>
</table>
% if pages > 1:
<nav class="pager">
% if page > 1:
<a href="{{query(q, statuses, 1)}}">« first</a><a href="{{query(q, statuses, page - 1)}}" rel="prev">‹ previous</a>
% end
<span>page {{page}} of {{pages}}</span>
% if page < pages:
<a href="{{query(q, statuses, page + 1)}}" rel="next">next ›</a><a href="{{query(q, statuses, pages)}}">last »</a>
% end
</nav>
% end
% end
"""

# One heartbeat: its facts, 24 h timeline, availability, history, last events.
DETAIL_PAGE = """<p><a href="{{base}}">All heartbeats</a></p>
% if done:
<p class="done" role="status">{{done}}</p>
% end
<h2>{{doc["name"]}} <span class="badge {{state["status"]}}">{{state["status"]}}</span>\\\\
% if state.get("maintenance"):
 <span class="badge maintenance">maintenance</span>\\\\
% end
</h2>
<div class="actions">
% if state["status"] == "paused":
<form method="post" action="{{base}}heartbeat/{{doc["_id"]}}/resume"><button>Resume</button></form>
% else:
<form method="post" action="{{base}}heartbeat/{{doc["_id"]}}/pause"><button>Pause</button></form>
% end
% if state["status"] in ("down", "late") and not state.get("ack"):
<form method="post" action="{{base}}heartbeat/{{doc["_id"]}}/ack"><input name="comment" maxlength="1000" placeholder="comment (optional)" aria-label="acknowledgement comment"> <button>Acknowledge</button></form>
% end
% if not state.get("maintenance"):
<form method="post" action="{{base}}heartbeat/{{doc["_id"]}}/maintenance" title="a maintenance window of 1 h from now with this heartbeat's pattern: it covers every heartbeat whose pattern holds all of these pairs"><button>Maintenance for 1 h</button></form>
% end
</div>
<dl class="facts">
<dt>Pattern</dt><dd><code>{{pattern_text(doc["pattern"])}}</code></dd>
% if "schedule" in doc:
<dt>Schedule</dt><dd><code>{{doc["schedule"]}}</code> ({{doc.get("tz", "UTC")}}), each run expected within {{doc["expected_interval"]}}</dd>
% else:
<dt>Expected every</dt><dd>{{doc["expected_interval"]}}</dd>
% end
<dt>Last event</dt><dd>{{!time_html(state["last_event"], now, "never")}}</dd>
% if state["status"] == "down":
<dt>Down since</dt><dd>{{!time_html(state["alarm_since"], now)}}</dd>
% else:
<dt>Deadline</dt><dd>{{!time_html(state["deadline"], now)}}</dd>
% end
% if state.get("maintenance"):
<dt>Maintenance</dt><dd>{{state["maintenance"]["name"]}} until {{!time_html(state["maintenance"]["until"], now)}}</dd>
% end
% if state.get("ack"):
<dt>Acknowledged</dt><dd>by {{state["ack"]["by"]}} {{!time_html(state["ack"]["at"], now)}}{{(": " + state["ack"]["comment"]) if state["ack"].get("comment") else ""}}</dd>
% end
% if doc["description"]:
<dt>Description</dt><dd>{{doc["description"]}}</dd>
% end
% if doc["output"]:
<dt>Alarm output</dt><dd>{{doc["output"]}}</dd>
% end
% if last_run is not None:
<dt>Last run</dt><dd>{{"failed" if last_run["output"] else "ended well"}} {{!time_html(last_run["at"], now)}}{{"" if last_run["duration"] is None else ", took " + seconds_text(last_run["duration"])}}{{"" if last_run["output"] is None else ": " + last_run["output"]}}</dd>
% end
<dt>Created</dt><dd>{{!time_html(doc["created"], now)}} by {{doc["author"]}}</dd>
<dt>Updated</dt><dd>{{!time_html(doc["updated"], now)}}</dd>
<dt>Id</dt><dd><code>{{doc["_id"]}}</code></dd>
</dl>
% if members is not None:
<h2>Members</h2>
<p class="muted">{{member_counts_text(state["members"]) or "none yet"}}\\\\
% if len(members) < sum(state["members"].values()):
; the first {{len(members)}}, the worst first (all of them: <code>GET {{base}}api/v2/heartbeat/{{doc["_id"]}}/members</code>)\\\\
% end
</p>
% if members:
<table class="members">
<colgroup><col><col class="status"><col class="time"><col class="time"></colgroup>
<thead><tr><th>Member</th><th>Status</th><th>Last event</th><th>Deadline</th></tr></thead>
<tbody>
% for entry in members:
<tr><td><code>{{pattern_text(entry["member"])}}</code></td><td><span class="badge {{entry["status"]}}">{{entry["status"]}}</span></td>
<td>{{!time_html(entry["last_event"], now, "never")}}</td>
<td>{{!(("down since " + time_html(entry["alarm_since"], now)) if entry["status"] == "down" else time_html(entry["deadline"], now))}}</td></tr>
% end
</tbody>
</table>
% end
% end
<h2>Last 24 h</h2>
{{!timeline}}
<div class="legend">
% for status in statuses_all:
<span><span class="dot s-{{status}}"></span>{{status}}</span>
% end
</div>
<h2>Availability</h2>
% if availability is None:
<p class="muted">Not recorded by this version.</p>
% else:
<div class="availability">
% for window in ("24h", "7d", "30d"):
<div><b>{{availability_text(availability.get(window))}}</b><span class="muted">last {{window}}</span></div>
% end
</div>
<p class="muted">The share of the time it was not down; time paused, in maintenance or pending (waiting for its first event) left out.</p>
% end
<h2>History</h2>
% if history is None:
<p class="muted">Not recorded by this version.</p>
% elif not history:
<p class="muted">No state change recorded yet.</p>
% else:
<table class="history">
<colgroup><col class="time"><col class="status"><col></colgroup>
<thead><tr><th>When</th><th>Status</th><th>Reason</th></tr></thead>
<tbody>
% for change in history:
<tr><td>{{!time_html(change["at"], now)}}</td><td><span class="badge {{change["status"]}}">{{change["status"]}}</span></td><td>{{change.get("reason") or ""}}{{(" — member " + pattern_text(change["member"])) if change.get("member") else ""}}</td></tr>
% end
</tbody>
</table>
% end
<h2>Last matching events</h2>
% if events is None:
<p class="muted">Not recorded by this version.</p>
% elif not events:
<p class="muted">None received since the service started.</p>
% else:
% for entry in events:
<pre>{{!time_html(entry["received"], now)}}  {{entry["event"] if isinstance(entry["event"], str) else dump_text(entry["event"])}}</pre>
% end
% end
"""

DETAIL_PAGE_BOTTOM = """<section class="feed">
<h2>Feed it</h2>
% if ping_url:
<p>A ping (no password: the id in the URL is the secret):</p>
<div class="copyable"><pre id="feed-ping">{{ping_url}}</pre><button type="button" class="copy" data-copy="feed-ping" hidden>Copy</button></div>
<p>A crontab line, the ping sent when the job succeeds (the schedule before it, your command for <code>job</code>):</p>
<div class="copyable"><pre id="feed-cron">job &amp;&amp; curl -fsS -m 10 --retry 3 {{ping_url}}</pre><button type="button" class="copy" data-copy="feed-cron" hidden>Copy</button></div>
% else:
<p class="muted">Pings are off on this service (<code>--pings off</code>): feed it with events.</p>
% end
<p>An event matching its pattern{{(" (each member with its own " + ", ".join(group_by) + ")") if group_by else ""}}:</p>
<div class="copyable"><pre id="feed-event">{{event_curl}}</pre><button type="button" class="copy" data-copy="feed-event" hidden>Copy</button></div>
</section>
<section>
<h2>Pattern tester</h2>
<p class="muted">Which of the last events received match a pattern, and how the closest others differ.</p>
<form id="tester" method="post" action="{{base}}api/v2/pattern/test">
<textarea name="pattern" rows="{{min(12, 2 + len(doc["pattern"]))}}" spellcheck="false" aria-label="pattern (JSON)">{{pattern_json}}</textarea>
<button>Test</button>
</form>
<div id="tester-result" aria-live="polite"></div>
</section>
"""


def prometheus_label(value):
    """A label value escaped as the text exposition format requires."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(overview, events_received, alarms_raised, outbox_depth, history=None, channels=None,
                    pings=None):
    """Metrics in the Prometheus text exposition format 0.0.4.

    :param overview: rows of :meth:`Engine.overview`.
    :param history: :meth:`Engine.history_metrics`, ``{id: (availability
        over 24 h or None, time of the last change)}``.
    :param channels: the channels' documents (:meth:`Notifications.documents`):
        their delivery health, labelled by id, name and kind (never the URL).
    :param pings: ``{kind: pings received}`` (:attr:`Pings.counts`).
    """
    history = history or {}
    channels = channels or []
    lines = []

    def family(name, kind, help_text, samples):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{prometheus_label(text)}"' for key, text in labels)
            lines.append(f"{name}{{{label_text}}} {value!r}" if labels else f"{name} {value!r}")

    counts = {status: 0 for status in STATUSES}
    for row in overview:
        counts[row["status"]] += 1
    identity = [(row, (("id", row["_id"]), ("name", row["name"]))) for row in overview]
    family("heartbeat_lite_heartbeats", "gauge", "Heartbeats by status.",
           [((("status", status),), count) for status, count in counts.items()])
    family("heartbeat_lite_heartbeat_up", "gauge", "1 when the heartbeat is up, 0 otherwise.",
           [(labels, int(row["status"] == UP)) for row, labels in identity])
    family("heartbeat_lite_heartbeat_status", "gauge",
           "1 for the heartbeat's status (pending, up, late, down, paused), 0 for the others.",
           [(labels + (("status", status),), int(row["status"] == status))
            for row, labels in identity for status in STATUSES])
    family("heartbeat_lite_heartbeat_members", "gauge",
           "Members of a grouped heartbeat by status (no series per member: their number is unbounded).",
           [(labels + (("status", status),), count) for row, labels in identity if "members" in row
            for status, count in row["members"].items()])
    family("heartbeat_lite_heartbeat_in_maintenance", "gauge",
           "1 while a maintenance window covers the heartbeat, else 0.",
           [(labels, int(row["maintenance"] is not None)) for row, labels in identity])
    family("heartbeat_lite_heartbeat_last_event_timestamp_seconds", "gauge",
           "Receive time of the last matching event (heartbeats that had one; a grouped one's: its members' "
           "latest).",
           [(labels, float(row["last_event"])) for row, labels in identity if row["last_event"] is not None])
    family("heartbeat_lite_heartbeat_availability_ratio", "gauge",
           "Share of the last 24 h the heartbeat was not down (paused, maintenance and pending time left out; "
           "no sample when no time counts).",
           [(labels, float(history[row["_id"]][0])) for row, labels in identity
            if history.get(row["_id"], (None,))[0] is not None])
    family("heartbeat_lite_heartbeat_last_change_timestamp_seconds", "gauge",
           "Time of the heartbeat's last state change (its creation at the latest).",
           [(labels, float(history[row["_id"]][1])) for row, labels in identity if row["_id"] in history])
    family("heartbeat_lite_events_received_total", "counter", "Events received since the service started.",
           [((), events_received)])
    family("heartbeat_lite_pings_received_total", "counter",
           "Pings received since the service started (Healthchecks, Opsgenie and Uptime Kuma URLs), by kind: "
           "success, start, fail, log.",
           [((("kind", kind),), count) for kind, count in (pings or dict.fromkeys(PING_KINDS, 0)).items()])
    family("heartbeat_lite_alarms_raised_total", "counter",
           "Alarms raised (down, and late warnings) since the service started.",
           [((), alarms_raised)])
    family("heartbeat_lite_outbox_events", "gauge", "Alarm and resolution events waiting for delivery.",
           [((), outbox_depth)])
    named = [(channel, (("channel", channel["_id"]), ("name", channel["name"]), ("kind", channel["kind"])))
             for channel in channels]
    family("heartbeat_lite_channel_waiting_events", "gauge", "Events waiting in a channel's queue.",
           [(labels, channel["waiting"]) for channel, labels in named])
    family("heartbeat_lite_channel_set_aside_events", "gauge",
           "Events a channel's target refused for good (a 4xx): kept, no longer sent.",
           [(labels, channel["set_aside"]) for channel, labels in named])
    family("heartbeat_lite_channel_failing", "gauge", "1 while a channel's deliveries fail, else 0.",
           [(labels, int(channel["failing_since"] is not None)) for channel, labels in named])
    family("heartbeat_lite_channel_last_delivery_timestamp_seconds", "gauge",
           "When a channel last delivered (channels that did).",
           [(labels, float(channel["last_delivery"])) for channel, labels in named
            if channel["last_delivery"] is not None])
    family("heartbeat_lite_channel_oldest_waiting_timestamp_seconds", "gauge",
           "When the oldest event waiting in a channel's queue was queued (channels with one).",
           [(labels, float(channel["oldest_waiting"])) for channel, labels in named
            if channel["oldest_waiting"] is not None])
    return "\n".join(lines) + "\n"


def _json_content(schema):
    return {"content": {JSON_TYPE: {"schema": schema}}}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description, schema_name="Message"):
    return {"description": description, **_json_content(_ref(schema_name))}


def openapi_document():
    """The OpenAPI 3.1 description of every route, served at
    ``/api/v2/openapi.json``."""
    string = {"type": "string"}
    time_or_null = {"type": ["number", "null"], "description": "Unix seconds, to the millisecond"}
    errors = {
        "400": _answer("Invalid body, pattern (or slug, or push_token) already exists, or database error", "Error"),
        "401": _answer("Missing or wrong credentials (with WWW-Authenticate: Basic)", "Error"),
        "429": _answer("Too many failed password derivations lately (with Retry-After)", "Error"),
    }
    internal_error = {"500": _answer("An unexpected error, logged with its traceback", "Error")}
    not_found = {"404": _answer("No heartbeat has this id (name: the id)", "Error")}
    bad_query = {"400": _answer("Invalid query parameters (description \"invalid query parameters.\", errors: "
                                "the reasons), or database error", "Error")}
    ratio_or_null = {"type": ["number", "null"], "minimum": 0,
                     "description": "share of the window not down, 0 to 1; null when no time counts"}

    def query_parameter(name, description, schema):
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    def limit_parameter(default, maximum):
        return query_parameter("limit", f"at most this many (default {default})",
                               {"type": "integer", "minimum": 1, "maximum": maximum})

    shown_event = {
        "type": "object", "required": ["received", "event", "truncated"],
        "properties": {
            "received": {"type": "number", "description": "receive time, Unix seconds"},
            "event": {"type": ["object", "string"],
                      "description": f"the event; when its JSON is over {MAX_SHOWN_EVENT_BYTES} bytes (or holds "
                                     f"a lone surrogate), that JSON text cut to {MAX_SHOWN_EVENT_BYTES} bytes"},
            "truncated": {"type": "boolean", "description": "true when event is the cut JSON text"},
        },
        "additionalProperties": False,
    }
    too_large = {"413": _answer("Body over its limit, or more than 10,000 events", "Error")}
    cross_site = {"403": _answer("Sent by a browser from another site (Origin or Sec-Fetch-Site): refused", "Error")}
    heartbeat_id = {"name": "heartbeat_id", "in": "path", "required": True, "schema": string}
    heartbeat_body = {"required": True, **_json_content(_ref("HeartbeatInput"))}
    maintenance_id = {"name": "maintenance_id", "in": "path", "required": True, "schema": string}
    maintenance_body = {"required": True, **_json_content(_ref("MaintenanceInput"))}
    maintenance_not_found = {"404": _answer("No maintenance window has this id (name: the id)", "Error")}
    channel_id = {"name": "channel_id", "in": "path", "required": True, "schema": string}
    channel_body = {"required": True, **_json_content(_ref("ChannelInput"))}
    channel_not_found = {"404": _answer("No channel has this id (name: the id)", "Error")}
    channel_ids = {"type": "array", "items": string, "maxItems": MAX_CHANNELS, "uniqueItems": True}
    interval = {"type": "string", "pattern": "^[1-9][0-9]*(s|m|h)$"}
    slug = {"type": "string", "pattern": "^" + _SLUG.pattern + "$"}
    push_token = {"type": "string", "pattern": "^" + _PUSH_TOKEN.pattern + "$"}
    item = {"type": "string", "maxLength": MAX_PATTERN_ITEM_CHARS}
    group_by = {"type": "array", "items": {**item, "minLength": 1}, "minItems": 1, "maxItems": MAX_GROUP_BY_KEYS,
                "uniqueItems": True, "description": "event keys (none of the pattern's): each distinct combination "
                "of their values in matching events is a member, with its own deadline, state and alarm"}
    member_pairs = {"type": "object", "additionalProperties": item}
    expected_members = {"type": "array", "items": member_pairs, "maxItems": MAX_EXPECTED_MEMBERS}
    local_time = {"type": "string", "description": "ISO 8601 local time, no offset: 2026-12-06T02:00:00"}
    secured = [{"basicAuth": []}]

    def operation(operation_id, tag, summary, responses, security=secured, **more):
        return {"operationId": operation_id, "tags": [tag], "summary": summary, "security": security,
                "responses": {**responses, **internal_error}, **more}

    def ping_paths():
        """The ping routes (docs/pings.md): answers as Healthchecks',
        Opsgenie's and Uptime Kuma's servers give them."""
        plain = {"content": {PING_TYPE: {"schema": string}}}
        ping_body = {"required": False, "description": f"kept up to {PING_BODY_LIMIT_BYTES} bytes in /events; "
                     "a failure's first line is its alarm's output", "content": {"*/*": {"schema": string}}}
        answers = {
            "200": {"description": "OK (headers Ping-Body-Limit: 10000, Access-Control-Allow-Origin: *)", **plain},
            "400": {"description": "invalid url format (exit status over 255, slug not in lower case), or "
                    "invalid uuid format (rid)", **plain},
            "404": {"description": "not found: no such id, key or slug", **plain},
            "413": _answer("Body over the service's limit", "Error"),
            "503": {"description": "database error: retry", **plain},
        }
        rid = query_parameter("rid", "the run's id (a UUID): pairs a start with its end", {"type": "string"})
        create = query_parameter("create", "1 (slug form): create the heartbeat when no heartbeat has the slug "
                                 "(201 Created; 409 ambiguous slug when its pattern is another's)",
                                 {"type": "string", "enum": ["1"]})
        address = {"name": "address", "in": "path", "required": True, "schema": string,
                   "description": "a heartbeat's id, or the ping key (--ping-key) of the slug form"}
        second = {"name": "second", "in": "path", "required": True, "schema": string,
                  "description": "after an id: start, fail, log or an exit status 0-255; after the ping key: a slug"}
        third = {"name": "third", "in": "path", "required": True, "schema": string,
                 "description": "after a slug: start, fail, log or an exit status 0-255"}

        def healthchecks(name, summary, parameters, extra=None):
            more = {**answers, **(extra or {})}
            return {"parameters": parameters, **{
                method: operation(f"{method}{name}", "ping", summary, more, security=[],
                                  parameters=[rid] + ([create] if extra else []),
                                  **({"requestBody": ping_body} if method == "post" else {}))
                for method in ("get", "post", "head")}}

        created = {"201": {"description": "Created: the heartbeat, named and slugged <slug>, pattern "
                           "{\"ping\": \"<slug>\"}, expected_interval 25h, late_after 24h", **plain},
                   "409": {"description": "ambiguous slug", **plain}}
        kuma = {"type": "object", "required": ["ok"], "properties": {
            "ok": {"type": "boolean"}, "msg": {"type": "string"}}, "additionalProperties": False}
        genie = {"type": "object", "properties": {"result": string, "message": string, "took": {"type": "number"},
                                                  "requestId": string}}
        return {
            "/ping/{address}": healthchecks("Ping", "Healthchecks ping by id: a success", [address]),
            "/ping/{address}/{second}": healthchecks(
                "PingSuffix", "Healthchecks ping: by id with start, fail, log or an exit status; or by slug",
                [address, second], created),
            "/ping/{address}/{second}/{third}": healthchecks(
                "PingSlugSuffix", "Healthchecks ping by slug with start, fail, log or an exit status",
                [address, second, third], created),
            "/api/push/{token}": {
                "parameters": [{"name": "token", "in": "path", "required": True, "schema": string,
                                "description": "a heartbeat's push_token"}],
                "get": operation("getKumaPush", "ping", "Uptime Kuma push: status=up a success, else a failure "
                                 "(msg its output)", {
                    "200": {"description": '{"ok": true}', **_json_content(kuma)},
                    "404": {"description": f'{{"ok": false, "msg": "{KUMA_NOT_FOUND}"}}', **_json_content(kuma)},
                    "503": _answer("Database error: retry", "Error"),
                }, security=[], parameters=[
                    query_parameter("status", "up (the default): a success; anything else: a failure", string),
                    query_parameter("msg", "the failure's output", string)]),
            },
            "/v2/heartbeats/{name}/ping": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": string,
                                "description": "the heartbeats' name"}],
                **{method: operation(f"{method}OpsgenieHeartbeat", "ping",
                                     "Opsgenie heartbeat ping (only with --genie-key; Authorization: GenieKey <key>): "
                                     "every heartbeat of that name refreshed", {
                    "202": {"description": f'{{"result": "{OPSGENIE_PONG}", "took": 0, "requestId": <uuid>}}, even '
                            "for a name no heartbeat has", **_json_content(genie)},
                    "401": {"description": "missing or wrong GenieKey", **_json_content(genie)},
                    "404": _answer("No --genie-key: the route is off", "Error"),
                    "503": _answer("Database error: retry", "Error"),
                }, security=[]) for method in ("get", "post", "put", "patch", "head")},
            },
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "heartbeat-lite",
            "version": __version__,
            "description": "The Canopsis Heartbeat API on SQLite, plus events, alarms, health and metrics. "
                           "Every path also answers with a trailing slash. Every error body is JSON. "
                           "A method a path does not describe answers 405 (components/responses/"
                           "MethodNotAllowed), with an Allow header naming the methods it does.",
        },
        "servers": [{"url": "/", "description": "wherever this document is served from"}],
        "tags": [
            {"name": "heartbeat", "description": "Heartbeats: what to expect, and how often"},
            {"name": "maintenance", "description": "Maintenance windows: when no alarm is raised"},
            {"name": "event", "description": "Incoming Canopsis events"},
            {"name": "alarm", "description": "Heartbeats gone silent, and the channels their alarms go to"},
            {"name": "operator", "description": "Health, metrics, the status page and this description"},
            {"name": "ping", "description": "Pings: the URLs jobs already call (Healthchecks, Opsgenie, Uptime "
                                            "Kuma), no Basic auth; off with --pings off (docs/pings.md)"},
        ],
        "components": {
            "responses": {
                "MethodNotAllowed": {
                    "description": "The path exists, not with this method",
                    "headers": {"Allow": {"description": "The methods the path answers, comma-separated",
                                          "required": True, "schema": string}},
                    **_json_content(_ref("Error")),
                },
            },
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Pattern": {
                    "type": "object", "minProperties": 1, "maxProperties": MAX_PATTERN_ENTRIES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_PATTERN_ITEM_CHARS},
                    "additionalProperties": {"type": "string", "maxLength": MAX_PATTERN_ITEM_CHARS},
                },
                "HeartbeatInput": {
                    "type": "object",
                    "required": ["name", "pattern", "expected_interval"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                        "author": {"type": "string", "maxLength": MAX_NAME_CHARS},
                        "description": {"type": "string", "maxLength": MAX_TEXT_CHARS},
                        "output": {"type": "string", "maxLength": MAX_TEXT_CHARS},
                        "pattern": _ref("Pattern"),
                        "expected_interval": interval,
                        "late_after": {**interval, "description": "shorter than expected_interval: when it "
                                       "passes with no matching event, the heartbeat is late (a state 1 alarm)"},
                        "group_by": group_by,
                        "expected_members": {**expected_members, "description": "members that exist from "
                                             "creation (pending), so that one never reporting alarms too; "
                                             "needs group_by"},
                        "retire_after": {**interval, "description": "a member down this long (at most 8760h) is "
                                         "removed and its alarm resolved; never an expected one; needs group_by"},
                        "channels": {**channel_ids, "description": "where its alarms go: channel ids ([]: "
                                     "nowhere); absent: every channel with default true"},
                        "escalate_after": {**interval, "description": "still down and not acknowledged this "
                                           "long: escalate_to is told too (give both)"},
                        "escalate_to": {**channel_ids, "minItems": 1},
                        "slug": {**slug, "description": "the name a ping may use (/ping/<ping-key>/<slug>); "
                                 "unique (else 400 heartbeat slug already exists)"},
                        "push_token": {**push_token, "description": "the Uptime Kuma push token "
                                       "(/api/push/<push_token>); unique (else 400 heartbeat push_token already "
                                       "exists)"},
                        "max_run": {**interval, "description": "shorter than a year: a run (/ping/<id>/start) "
                                    "not finished within it puts the heartbeat down"},
                        "schedule": {"type": "string", "maxLength": MAX_SCHEDULE_CHARS,
                                     "description": "a 5-field cron expression (Debian semantics, as cronsim): "
                                     "expected_interval (and late_after) are then measured from each scheduled "
                                     "time after the last event; a ping up to 60 s early counts for that time"},
                        "tz": {"type": "string", "description": "the schedule's IANA time zone (default UTC); "
                               "needs schedule"},
                        "_id": {"description": "ignored"}, "created": {"description": "ignored"},
                        "updated": {"description": "ignored"},
                    },
                    "additionalProperties": False,
                },
                "Heartbeat": {
                    "type": "object",
                    "required": ["_id", "name", "author", "description", "pattern", "expected_interval",
                                 "output", "created", "updated"],
                    "properties": {
                        "_id": string, "name": string, "author": string, "description": string,
                        "pattern": _ref("Pattern"), "expected_interval": string, "output": string,
                        "late_after": {**string, "description": "present only when set"},
                        "group_by": {**group_by, "description": "present only when set"},
                        "expected_members": {**expected_members, "description": "present only when set"},
                        "retire_after": {**string, "description": "present only when set"},
                        "channels": {**channel_ids, "description": "present only when set"},
                        "escalate_after": {**string, "description": "present only when set"},
                        "escalate_to": {**channel_ids, "description": "present only when set"},
                        "slug": {**slug, "description": "present only when set"},
                        "push_token": {**push_token, "description": "present only when set"},
                        "max_run": {**string, "description": "present only when set"},
                        "schedule": {**string, "description": "present only when set"},
                        "tz": {**string, "description": "present (UTC when not given) only with a schedule"},
                        "created": {"type": "integer"}, "updated": {"type": "integer"},
                    },
                    "additionalProperties": False,
                },
                "MemberCounts": {
                    "type": "object", "description": "members per status (grouped heartbeats only)",
                    "required": list(STATUSES),
                    "properties": {status: {"type": "integer", "minimum": 0} for status in STATUSES},
                    "additionalProperties": False,
                },
                "Member": {
                    "type": "object",
                    "required": ["member", "status", "last_event", "deadline", "alarm_since"],
                    "properties": {"member": member_pairs, "status": {"enum": list(STATUSES)},
                                   "last_event": time_or_null,
                                   "deadline": {**time_or_null, "description": "when it goes down at the earliest "
                                                "(the deadline it missed, when down); null when paused"},
                                   "alarm_since": {**time_or_null, "description": "when it went late or down"}},
                    "additionalProperties": False,
                },
                "MemberPage": {
                    "type": "object", "required": ["members", "next"],
                    "properties": {"members": {"type": "array", "items": _ref("Member")},
                                   "next": {"type": ["string", "null"], "description": "pass as after= for the "
                                            "next page; null on the last"}},
                    "additionalProperties": False,
                },
                "MaintenanceInput": {
                    "type": "object",
                    "required": ["name", "pattern", "start", "end"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                        "pattern": {"type": "object", "maxProperties": MAX_PATTERN_ENTRIES,
                                    "additionalProperties": {"type": "string", "maxLength": MAX_PATTERN_ITEM_CHARS},
                                    "description": "selects the heartbeats whose pattern has all of these pairs; "
                                                   "{} selects every heartbeat"},
                        "start": local_time, "end": {**local_time, "description": "after start; end - start is "
                                                     "the length of every occurrence"},
                        "timezone": {"type": "string", "default": "UTC", "description": "IANA zone name"},
                        "rrule": {"type": "string", "description": "RFC 5545 recurrence rule, e.g. "
                                  "FREQ=WEEKLY;BYDAY=SU (occurrences at least an hour apart); absent: once"},
                        "_id": {"description": "ignored"}, "created": {"description": "ignored"},
                        "updated": {"description": "ignored"},
                    },
                    "additionalProperties": False,
                },
                "Maintenance": {
                    "type": "object",
                    "required": ["_id", "name", "pattern", "start", "end", "timezone", "created", "updated"],
                    "properties": {
                        "_id": string, "name": string,
                        "pattern": {"type": "object", "additionalProperties": string},
                        "start": string, "end": string, "timezone": string,
                        "rrule": {**string, "description": "present only when set"},
                        "created": {"type": "integer"}, "updated": {"type": "integer"},
                    },
                    "additionalProperties": False,
                },
                "Message": {
                    "type": "object", "required": ["name", "description"],
                    "properties": {"name": string, "description": string}, "additionalProperties": False,
                },
                "Error": {
                    "type": "object", "required": ["name", "description"],
                    "properties": {"name": string, "description": string,
                                   "errors": {"type": "array", "items": string},
                                   "heartbeats": {"type": "array", "items": string,
                                                  "description": "those naming a channel that is in use"}},
                    "additionalProperties": False,
                },
                "Status": {
                    "type": "object",
                    "required": ["_id", "status", "last_event", "deadline", "alarm_since", "maintenance"],
                    "properties": {"_id": string, "status": {"enum": list(STATUSES)},
                                   "last_event": time_or_null,
                                   "deadline": {**time_or_null, "description": "when it goes down at the earliest; "
                                                "null when paused"},
                                   "alarm_since": {**time_or_null, "description": "when it went late or down"},
                                   "maintenance": {"oneOf": [{"type": "null"}, {
                                       "type": "object", "required": ["_id", "name", "until"],
                                       "properties": {"_id": string, "name": string, "until": {"type": "number"}},
                                       "additionalProperties": False}]},
                                   "members": {**_ref("MemberCounts"), "description": "grouped heartbeats only: "
                                               "members per status; the status is the worst of theirs "
                                               "(down > late > pending > up), or paused"},
                                   "ack": {**_ref("Ack"), "description": "present while the open alarm (every "
                                           "open member alarm) is acknowledged"}},
                    "additionalProperties": False,
                },
                "Event": {"type": "object", "description": "A Canopsis event; any keys"},
                "EventResult": {
                    "type": "object", "required": ["received", "matched"],
                    "properties": {"received": {"type": "integer", "minimum": 0},
                                   "matched": {"type": "array", "items": string}},
                    "additionalProperties": False,
                },
                "Alarm": {
                    "type": "object",
                    "required": ["connector", "connector_name", "event_type", "source_type", "component",
                                 "resource", "state", "output", "timestamp", "heartbeat_id", "heartbeat_name",
                                 "since"],
                    "properties": {
                        "connector": {"const": "heartbeat"}, "connector_name": {"const": "heartbeat"},
                        "event_type": {"const": "check"}, "source_type": {"const": "resource"},
                        "component": {"enum": ["heartbeats", INTAKE_COMPONENT], "description": "heartbeat-lite: "
                                      "the intake silence (resource intake, heartbeat_id null)"},
                        "resource": {**string, "description": "the pattern's pairs, and a member's, key:value "
                                     "sorted by key, joined by '.'"},
                        "state": {"enum": [ALARM_STATE, LATE_STATE]}, "output": string,
                        "timestamp": {"type": "integer"},
                        "heartbeat_id": {"type": ["string", "null"]}, "heartbeat_name": string,
                        "member": {**member_pairs, "description": "a member's alarm: its pairs"},
                        "since": {"type": "number"},
                    },
                    "additionalProperties": False,
                },
                "HistoryEntry": {
                    "type": "object", "required": ["at", "status", "reason"],
                    "properties": {"at": {"type": "number", "description": "Unix seconds"},
                                   "status": {"type": "string", "description": "the status entered: pending, "
                                              "up, late, down, paused, maintenance (a window started); a "
                                              "member's also retired, deleted"},
                                   "reason": string,
                                   "member": {"type": "object", "additionalProperties": string,
                                              "description": "the member (its group_by pairs) whose change "
                                                             "this is; absent for the heartbeat's own"},
                                   "maintenance": {**string, "description": "the window's id, for its start "
                                                                            "and end"}},
                    "description": "a state change; it may carry further keys",
                },
                "History": {
                    "type": "object", "required": ["history", "availability"],
                    "properties": {
                        "history": {"type": "array", "items": _ref("HistoryEntry"),
                                    "maxItems": MAX_HISTORY_LIMIT},
                        "availability": {
                            "type": "object", "required": [name for name, _ in AVAILABILITY_WINDOWS],
                            "properties": {name: ratio_or_null for name, _ in AVAILABILITY_WINDOWS},
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
                "ShownEvent": shown_event,
                "RecentEvents": {
                    "type": "object", "required": ["events"],
                    "properties": {"events": {"type": "array", "items": _ref("ShownEvent"),
                                              "maxItems": RECENT_EVENTS_PER_HEARTBEAT}},
                    "additionalProperties": False,
                },
                "PatternTestInput": {
                    "type": "object", "required": ["pattern"],
                    "properties": {"pattern": _ref("Pattern")}, "additionalProperties": False,
                },
                "PatternTest": {
                    "type": "object", "required": ["examined", "matched", "near_misses"],
                    "properties": {
                        "examined": {"type": "integer", "minimum": 0},
                        "matched": {"type": "array", "items": _ref("ShownEvent"),
                                    "maxItems": MAX_PATTERN_TEST_RESULTS},
                        "near_misses": {"type": "array", "maxItems": MAX_PATTERN_TEST_RESULTS, "items": {
                            "type": "object", "required": ["received", "event", "truncated", "mismatched"],
                            "properties": {
                                **shown_event["properties"],
                                "mismatched": {"type": "object", "minProperties": 1, "additionalProperties": {
                                    "type": "object", "required": ["expected", "got"],
                                    "properties": {"expected": string, "got": {
                                        "description": "the event's value; null when it lacks the key"}},
                                    "additionalProperties": False}},
                            },
                            "additionalProperties": False,
                        }},
                    },
                    "additionalProperties": False,
                },
                "Ack": {
                    "type": "object", "required": ["by", "at", "comment"],
                    "properties": {"by": string, "at": {"type": "number"}, "comment": {"type": ["string", "null"]}},
                    "additionalProperties": False,
                },
                "AckInput": {
                    "type": "object", "properties": {"comment": {"type": "string", "maxLength": MAX_TEXT_CHARS}},
                    "additionalProperties": False, "description": "optional: the body may be empty",
                },
                "ChannelInput": {
                    "type": "object", "required": ["name", "kind", "url"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                        "kind": {"enum": list(CHANNEL_KINDS)},
                        "url": {"type": "string", "maxLength": MAX_URL_CHARS, "description": "the target; "
                                "alertmanager: its base URL; ntfy: <server>/<topic>; email: smtp:// or smtps://"
                                "user:password@host:port?from=...&to=...; send back the url shown (with ***) to "
                                "keep the stored secrets"},
                        "default": {"type": "boolean", "default": False, "description": "heartbeats with no "
                                    "channels field send here"},
                        "repeat_every": {**interval, "description": f"reminders while an alarm stays open and "
                                         f"unacknowledged, at least {MIN_REPEAT_SECONDS // 60}m"},
                        "headers": {"type": "object", "additionalProperties": string, "maxProperties":
                                    MAX_CHANNEL_HEADERS, "description": "webhook only; *** keeps a stored value"},
                        "template": {"type": "string", "maxLength": MAX_TEMPLATE_CHARS, "description": "webhook "
                                     "only: the body, with {placeholders} JSON-escaped"},
                        **{key: {"description": "ignored"} for key in IGNORED_FIELDS + CHANNEL_READ_ONLY},
                    },
                    "additionalProperties": False,
                },
                "Channel": {
                    "type": "object",
                    "required": ["_id", "name", "kind", "url", "default", "created", "updated", "last_delivery",
                                 "last_error", "failing_since", "waiting", "oldest_waiting", "set_aside",
                                 "last_refusal"],
                    "properties": {
                        "_id": string, "name": string, "kind": {"enum": list(CHANNEL_KINDS)},
                        "url": {**string, "description": "secrets shown as ***"}, "default": {"type": "boolean"},
                        "repeat_every": string, "headers": {"type": "object", "additionalProperties": string},
                        "template": string, "configured_by": {**string, "description": "the setting that "
                                                              "made it (--forward-url)"},
                        "created": {"type": "integer"}, "updated": {"type": "integer"},
                        "last_delivery": time_or_null, "last_error": {"type": ["string", "null"]},
                        "failing_since": time_or_null, "waiting": {"type": "integer", "minimum": 0},
                        "oldest_waiting": time_or_null, "set_aside": {"type": "integer", "minimum": 0},
                        "last_refusal": {"type": ["string", "null"]},
                    },
                    "additionalProperties": False,
                },
                "ChannelTest": {
                    "type": "object", "required": ["delivered", "status", "error"],
                    "properties": {"delivered": {"type": "boolean"}, "status": {"type": ["integer", "null"]},
                                   "error": {"type": ["string", "null"]}},
                    "additionalProperties": False,
                },
                "Health": {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"enum": ["ok", "degraded", "unavailable"]},
                                   "outbox": {"type": "integer", "description": "events waiting for delivery"},
                                   "warnings": {"type": "array", "items": string, "description": "degraded: "
                                                "alarms not reaching a channel (an event waiting over "
                                                f"{DELIVERY_STALE_SECONDS:g} s), events set aside"},
                                   "description": string, "since": {"type": "number"},
                                   "clock_offset": {"type": "number", "description": "PostgreSQL: this instance's "
                                                    "clock minus the database's, seconds (time is judged on the "
                                                    "database's)"}},
                    "additionalProperties": False,
                },
            },
        },
        "paths": {
            "/api/v2/heartbeat": {
                "post": operation("createHeartbeat", "heartbeat", "Create a heartbeat", {
                    "200": _answer('{"name": "heartbeat created", "description": <new id>}'),
                    **errors, **too_large, **cross_site}, requestBody=heartbeat_body),
                "get": operation("listHeartbeats", "heartbeat", "Every heartbeat, newest first; or a page of them", {
                    "200": {"description": "The heartbeats (every one, unless limit or after is given)",
                            "headers": {
                                "Link": {"description": 'the next page, <...>; rel="next"; only when paging '
                                                        "and more follow", "required": False, "schema": string},
                                "X-Next-Cursor": {"description": "the next page's after; only when paging and "
                                                                 "more follow", "required": False, "schema": string}},
                            **_json_content({"type": "array", "items": _ref("Heartbeat")})},
                    **errors, **bad_query}, parameters=[
                        limit_parameter(f"{DEFAULT_PAGE_LIMIT} when after is given; without limit and after, "
                                        "every heartbeat", MAX_PAGE_LIMIT),
                        query_parameter("after", "the opaque cursor of the previous page (X-Next-Cursor)", string),
                    ]),
            },
            "/api/v2/heartbeat/{heartbeat_id}": {
                "parameters": [heartbeat_id],
                "get": operation("getHeartbeat", "heartbeat", "One heartbeat", {
                    "200": {"description": "The heartbeat", **_json_content(_ref("Heartbeat"))},
                    **errors, **not_found}),
                "put": operation("replaceHeartbeat", "heartbeat", "Replace a heartbeat (keeps _id and created)", {
                    "200": _answer('{"name": "heartbeat updated", "description": <id>}'),
                    **errors, **not_found, **too_large, **cross_site}, requestBody=heartbeat_body),
                "delete": operation("deleteHeartbeat", "heartbeat",
                                    "Delete a heartbeat, resolving its alarm if it is down", {
                    "200": _answer('{"name": "heartbeat removed", "description": <id>}'),
                    **errors, **not_found, **cross_site}),
            },
            "/api/v2/heartbeat/{heartbeat_id}/status": {
                "parameters": [heartbeat_id],
                "get": operation("getHeartbeatStatus", "heartbeat", "A heartbeat's state", {
                    "200": {"description": "Its state", **_json_content(_ref("Status"))},
                    **errors, **not_found}),
            },
            "/api/v2/heartbeat/{heartbeat_id}/pause": {
                "parameters": [heartbeat_id],
                "post": operation("pauseHeartbeat", "heartbeat",
                                  "Pause a heartbeat: no alarm until resumed; resolves an open alarm", {
                    "200": _answer('{"name": "heartbeat paused", "description": <id>} (also when paused already)'),
                    **errors, **not_found, **cross_site}),
            },
            "/api/v2/heartbeat/{heartbeat_id}/resume": {
                "parameters": [heartbeat_id],
                "post": operation("resumeHeartbeat", "heartbeat",
                                  "Resume a paused heartbeat: pending, deadline = now + interval", {
                    "200": _answer('{"name": "heartbeat resumed", "description": <id>} (also when not paused)'),
                    **errors, **not_found, **cross_site}),
            },
            "/api/v2/heartbeat/{heartbeat_id}/members": {
                "parameters": [heartbeat_id],
                "get": operation("listMembers", "heartbeat", "A page of a grouped heartbeat's members, by member", {
                    "200": {"description": "The page (empty for a heartbeat that is not grouped)",
                            **_json_content(_ref("MemberPage"))},
                    "400": _answer("invalid query parameters. (errors says why), or database error", "Error"),
                    **{code: answer for code, answer in errors.items() if code != "400"}, **not_found},
                    parameters=[
                        {"name": "status", "in": "query", "description": "comma-separated statuses to list",
                         "schema": string, "example": "down,late"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                    "maximum": MAX_MEMBERS_PAGE,
                                                                    "default": DEFAULT_MEMBERS_PAGE}},
                        {"name": "after", "in": "query", "description": "the next of the previous page",
                         "schema": string}]),
                "delete": operation("deleteMember", "heartbeat", "Remove one member, resolving its alarm; the "
                                    "query names it: one parameter per group_by key (?host=db1)", {
                    "200": _answer('{"name": "member removed", "description": <heartbeat id>}'),
                    "400": _answer("invalid query parameters.: the keys are not exactly group_by's", "Error"),
                    **{code: answer for code, answer in errors.items() if code != "400"},
                    "404": _answer("heartbeat not found (name: the id), or member not found (name: the "
                                   "member as JSON)", "Error"),
                    **cross_site}),
            },
            "/api/v2/maintenance": {
                "post": operation("createMaintenance", "maintenance", "Create a maintenance window", {
                    "200": _answer('{"name": "maintenance created", "description": <new id>}'),
                    **errors, **too_large, **cross_site}, requestBody=maintenance_body),
                "get": operation("listMaintenance", "maintenance", "Every maintenance window, newest first", {
                    "200": {"description": "The windows",
                            **_json_content({"type": "array", "items": _ref("Maintenance")})},
                    **errors}, parameters=[{"name": "active", "in": "query", "required": False,
                                            "schema": {"enum": ["0", "1"]},
                                            "description": "1: only the windows active now"}]),
            },
            "/api/v2/maintenance/{maintenance_id}": {
                "parameters": [maintenance_id],
                "get": operation("getMaintenance", "maintenance", "One maintenance window", {
                    "200": {"description": "The window", **_json_content(_ref("Maintenance"))},
                    **errors, **maintenance_not_found}),
                "put": operation("replaceMaintenance", "maintenance",
                                 "Replace a maintenance window (one active now ends now, then the new one applies)", {
                    "200": _answer('{"name": "maintenance updated", "description": <id>}'),
                    **errors, **maintenance_not_found, **too_large, **cross_site}, requestBody=maintenance_body),
                "delete": operation("deleteMaintenance", "maintenance",
                                    "Delete a maintenance window (one active now ends now)", {
                    "200": _answer('{"name": "maintenance removed", "description": <id>}'),
                    **errors, **maintenance_not_found, **cross_site}),
            },
            "/api/v2/heartbeat/{heartbeat_id}/history": {
                "parameters": [heartbeat_id],
                "get": operation("getHeartbeatHistory", "heartbeat",
                                 "A heartbeat's state changes, newest first, and its availability", {
                    "200": {"description": "Its history", **_json_content(_ref("History"))},
                    **errors, **bad_query, **not_found}, parameters=[
                        query_parameter("since", "only changes at or after this time (Unix seconds)",
                                        {"type": "number"}),
                        query_parameter("until", "only changes at or before this time (Unix seconds)",
                                        {"type": "number"}),
                        limit_parameter(DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT),
                    ]),
            },
            "/api/v2/heartbeat/{heartbeat_id}/events": {
                "parameters": [heartbeat_id],
                "get": operation("getHeartbeatEvents", "heartbeat",
                                 f"The last {RECENT_EVENTS_PER_HEARTBEAT} events that matched the heartbeat, "
                                 "newest first, one per request (kept in memory: none after a restart)", {
                    "200": {"description": "Its recent events", **_json_content(_ref("RecentEvents"))},
                    **errors, **not_found}),
            },
            "/api/v2/pattern/test": {
                "post": operation("testPattern", "event",
                                  f"Which of the last {RECENT_EVENTS_RECEIVED} events received match a pattern, "
                                  "and which come close", {
                    "200": {"description": "Matches and near misses", **_json_content(_ref("PatternTest"))},
                    "400": _answer('Invalid body ("invalid pattern payload.", with errors)', "Error"),
                    **{k: v for k, v in errors.items() if k != "400"}, **too_large, **cross_site},
                    requestBody={"required": True, **_json_content(_ref("PatternTestInput"))}),
            },
            "/api/v2/event": {
                "post": operation("sendEvents", "event",
                                  "Send Canopsis events; each refreshes the heartbeats it matches", {
                    "200": {"description": "Events received, heartbeats refreshed",
                            **_json_content(_ref("EventResult"))},
                    **errors, **too_large, **cross_site},
                    requestBody={"required": True, **_json_content({"oneOf": [
                        _ref("Event"),
                        {"type": "array", "items": _ref("Event"), "maxItems": MAX_EVENTS_PER_REQUEST}]})}),
            },
            "/api/v2/alarms": {
                "get": operation("listAlarms", "alarm", "The active alarms, oldest first: the oldest "
                                 f"{DEFAULT_ALARMS_LISTED:,} unless limit says otherwise", {
                    "200": {"description": "The alarms",
                            "headers": {
                                "X-Total-Count": {"description": "how many alarms are open, listed or not",
                                                  "required": True, "schema": {"type": "integer"}}},
                            **_json_content({"type": "array", "items": _ref("Alarm")})},
                    **errors, **bad_query}, parameters=[
                        limit_parameter(f"{DEFAULT_ALARMS_LISTED}", MAX_ALARMS_LISTED)]),
            },
            "/api/v2/heartbeat/{heartbeat_id}/ack": {
                "parameters": [heartbeat_id],
                "post": operation("ackHeartbeat", "alarm", "Acknowledge the open alarm (every open member alarm): "
                                  "reminders and escalation stop", {
                    "200": _answer('{"name": "alarm acknowledged", "description": <id>}'),
                    "409": _answer('No open alarm: {"name": <id>, "description": "no open alarm"}', "Error"),
                    **errors, **not_found, **too_large, **cross_site},
                    requestBody={"required": False, **_json_content(_ref("AckInput"))}),
            },
            "/api/v2/channel": {
                "post": operation("createChannel", "alarm", "Create a notification channel", {
                    "200": _answer('{"name": "channel created", "description": <new id>}'),
                    **errors, **too_large, **cross_site}, requestBody=channel_body),
                "get": operation("listChannels", "alarm", "Every channel, oldest first, with its delivery health", {
                    "200": {"description": "The channels",
                            **_json_content({"type": "array", "items": _ref("Channel")})},
                    **errors}),
            },
            "/api/v2/channel/{channel_id}": {
                "parameters": [channel_id],
                "get": operation("getChannel", "alarm", "One channel", {
                    "200": {"description": "The channel", **_json_content(_ref("Channel"))},
                    **errors, **channel_not_found}),
                "put": operation("replaceChannel", "alarm", "Replace a channel (what it refused is sent again)", {
                    "200": _answer('{"name": "channel updated", "description": <id>}'),
                    "409": _answer("The channel comes from a setting (--forward-url)", "Error"),
                    **errors, **channel_not_found, **too_large, **cross_site}, requestBody=channel_body),
                "delete": operation("deleteChannel", "alarm", "Delete a channel and its queue", {
                    "200": _answer('{"name": "channel removed", "description": <id>}'),
                    "409": _answer("Heartbeats name it (heartbeats: their ids), or a setting made it", "Error"),
                    **errors, **channel_not_found, **cross_site}),
            },
            "/api/v2/channel/{channel_id}/test": {
                "parameters": [channel_id],
                "post": operation("testChannel", "alarm", "Send a test message now; answer what the target said", {
                    "200": {"description": "What happened (never a 5xx for a failing target)",
                            **_json_content(_ref("ChannelTest"))},
                    **errors, **channel_not_found, **cross_site}),
            },
            "/healthz": {
                "get": operation("getHealth", "operator", "Health (no authentication)", {
                    "200": {"description": "The database answers reads and the last write succeeded",
                            **_json_content(_ref("Health"))},
                    "503": {"description": "Reads or writes fail: `description` says which and why, `since` "
                            "since when (Unix seconds)", **_json_content(_ref("Health"))},
                }, security=[]),
            },
            **ping_paths(),
            "/metrics": {
                "get": operation("getMetrics", "operator", "Prometheus metrics", {
                    "200": {"description": "Text exposition format 0.0.4",
                            "content": {PROMETHEUS_TYPE: {"schema": string}}},
                    **errors}),
            },
            "/": {
                "get": operation("getStatusPage", "operator",
                                 "The status page: heartbeats, the problems first then by name, 100 a page, "
                                 "with counts per status", {
                    "200": {"description": "An HTML page (gzipped when accepted)",
                            "content": {HTML_TYPE: {"schema": string}}},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    **errors}, parameters=[
                    {"name": "q", "in": "query", "description": "words the name or pattern must all contain",
                     "schema": {"type": "string", "maxLength": MAX_SEARCH_CHARS}},
                    {"name": "status", "in": "query", "description": "comma-separated statuses to show",
                     "schema": {"type": "string"}, "example": "down,late"},
                    {"name": "page", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_NUMBER}},
                ]),
            },
            "/heartbeat/{heartbeat_id}": {
                "parameters": [heartbeat_id],
                "get": operation("getHeartbeatPage", "operator", "A heartbeat's page: state, 24 h timeline, "
                                 "history, last events, pattern tester", {
                    "200": {"description": "An HTML page (gzipped when accepted)",
                            "content": {HTML_TYPE: {"schema": string}}},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match"},
                    **errors, **not_found}),
            },
            **{f"/heartbeat/{{heartbeat_id}}/{action}": {
                "parameters": [heartbeat_id],
                "post": operation(f"{action}FromHeartbeatPage", "operator", summary, {
                    "303": {"description": "Done: see the heartbeat's page, whose ?done= says what was done"},
                    **errors, **not_found, **cross_site, **too_large, **more}, requestBody={
                        "required": False, "content": {"application/x-www-form-urlencoded": {"schema": form}}}),
            } for action, summary, form, more in (
                ("pause", "The page's Pause button", {"type": "object"}, {}),
                ("resume", "The page's Resume button", {"type": "object"}, {}),
                ("ack", "The page's Acknowledge button", {"type": "object", "properties": {"comment": string}},
                 {"409": _answer('No open alarm: {"name": <id>, "description": "no open alarm"}', "Error")}),
                ("maintenance", "The page's Maintenance for 1 h button: a window of the heartbeat's pattern "
                 "from now to an hour later", {"type": "object"}, {}),
            )},
            "/api/v2/openapi.json": {
                "get": operation("getOpenApiDocument", "operator", "This description (no authentication)", {
                    "200": {"description": "OpenAPI 3.1", **_json_content({"type": "object"})},
                }, security=[]),
            },
        },
    }


###############################################################################
# Web API
###############################################################################

ALREADY_EXISTS = "heartbeat {} already exists"  # pattern, slug, push_token
CROSS_SITE_REFUSED = "cross-site request refused"
MISDIRECTED = "misdirected request: unknown Host"
STATE_CHANGING_METHODS = frozenset(("POST", "PUT", "DELETE", "PATCH"))
DATABASE_ERROR = "database error, please contact your administrator."
#: the WSGI environ key the HTTP server sets on a request it serves in its
#: event loop's thread: the routes then raise WouldBlock rather than wait
INLINE_ENVIRON_KEY = "heartbeat_lite.inline"
INLINE_BODY_BYTES = 16 * 1024  # an event body at most this long may be answered in the event loop's thread
_INLINE_GET = re.compile(r"/api/v2/heartbeat/[^/]+/?")
_PING_METHODS = frozenset(("GET", "HEAD", "POST"))  # Healthchecks' ping routes'
INVALID_QUERY = "invalid query parameters."
INTERNAL_ERROR = "internal error"


def error_body(description, name="", **extra):
    """The API's one error shape: ``{"name", "description"}``, plus extras
    such as ``errors`` (the reasons of an invalid payload)."""
    return {"name": name, "description": description, **extra}


class ApiError(Exception):
    """An error answer: status, the documented body, extra headers."""

    def __init__(self, status, description, name="", headers=None, **extra):
        super().__init__(description)
        self.status = status
        self.body = error_body(description, name, **extra)
        self.headers = headers or {}


def _origin_of(scheme, netloc):
    """``(scheme, host, port)`` of a URL's scheme and authority, the port made
    explicit; None when it is not one."""
    scheme = scheme.lower()
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{netloc}")
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None
    return (scheme, parts.hostname, port) if parts.hostname else None


def is_cross_site(environ):
    """True when a browser says the request comes from another site: a
    ``Sec-Fetch-Site: cross-site``, or an ``Origin`` that is not this
    service's own scheme, host and port (``Origin: null`` included). A client
    sending neither header (curl, scripts) is not cross-site."""
    if environ.get("HTTP_SEC_FETCH_SITE", "").strip().lower() == "cross-site":
        return True
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return False
    scheme, _, rest = origin.strip().partition("://")
    theirs = _origin_of(scheme, rest) if rest and "/" not in rest else None
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return theirs is None or theirs != _origin_of(environ.get("wsgi.url_scheme", "http"), host)


def is_hostile_path(environ):
    """True when the request's path is not valid UTF-8, has an encoded
    ``/`` (``%2F``) in it, or starts with ``//``: no resource has such a
    path, and the server's decoding would otherwise make it another one
    (bottle drops bytes that are not UTF-8 and leading slashes; waitress
    decodes ``%2F`` into a ``/``)."""
    path = environ.get("bottle.raw_path", environ.get("PATH_INFO", ""))
    try:
        path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return True
    raw = (environ.get("REQUEST_URI") or environ.get("RAW_URI") or "").partition("?")[0]
    # waitress and bottle strip the extra slashes: //api/v2/... is not /api/v2/...
    return "%2f" in raw.lower() or raw.startswith("//") or path.startswith("//")


def json_response(value, status=200, headers=None):
    """Set the status and headers of the current answer and return its body,
    ``value`` encoded (or as is, if already JSON bytes); cheaper than building
    a ``bottle.HTTPResponse`` for bottle to copy."""
    response = bottle.response
    response.status = status
    response.content_type = JSON_TYPE
    for name, header in (headers or {}).items():
        response.set_header(name, header)
    return value if isinstance(value, bytes) else dump_json(value)


def text_response(body, content_type):
    """Set the status and type of the current answer; return ``body`` (bytes)."""
    bottle.response.status = 200
    bottle.response.content_type = content_type
    return body


#: the forms of a heartbeat's page: ``POST /heartbeat/<id>/<action>``
PAGE_ACTIONS = ("pause", "resume", "ack", "maintenance")
#: what a page's form did, by the ``done`` key its answer's redirect names
DONE_MESSAGES = {
    "paused": "Paused: no alarm from it until it is resumed; its events are still counted.",
    "resumed": "Resumed: it starts afresh, pending until its next event or deadline.",
    "acked": "Acknowledged: reminders and escalation of its open alarm stop; the next resolution clears it.",
    "maintenance": ("Maintenance for 1 h started: a window with this heartbeat's pattern, so it covers this "
                    "heartbeat and every other whose pattern holds all of these pairs."),
}


class OperatorPages:
    """The operator pages: the status page, a heartbeat's page and its
    forms (pause, resume, acknowledge, maintenance for 1 h), each
    answered with a redirect to the heartbeat's page that says what it did.
    :class:`WebApi` routes to them (its checks, cross-site included, apply).

    :param engine: the :class:`Engine`.
    :param read_body: reads the request's body under a limit (``WebApi._read_body``).
    """

    def __init__(self, engine, read_body):
        self.engine = engine
        self.read_body = read_body
        #: whether the ping routes are served (``--pings``): a heartbeat's page then shows its ping URL
        self.pings = True
        self._templates = {name: bottle.SimpleTemplate(text) for name, text in (
            ("shell", PAGE_SHELL), ("status top", STATUS_PAGE_TOP), ("status", STATUS_PAGE),
            ("detail", DETAIL_PAGE), ("detail bottom", DETAIL_PAGE_BOTTOM))}
        self._script = PAGE_SCRIPT % {"seconds": STATUS_PAGE_REFRESH_SECONDS,
                                      "milliseconds": STATUS_PAGE_REFRESH_SECONDS * 1000}

    @staticmethod
    def _base_url():
        """The service's URL as the browser sees it (no trailing ``/``)."""
        parts = bottle.request.urlparts
        return f"{parts.scheme}://{parts.netloc}{bottle.request.script_name.rstrip('/')}"

    def status_page(self, user):
        try:
            query = parse_status_query(bottle.request.query_string)
        except Invalid as exc:
            raise ApiError(400, "invalid status page parameters.", errors=exc.reasons) from None
        found = self.engine.status_page(query["statuses"], query["terms"], (query["page"] - 1) * STATUS_PAGE_ROWS,
                                        STATUS_PAGE_ROWS)
        pages = max(1, math.ceil(found["total"] / STATUS_PAGE_ROWS))
        page = min(query["page"], pages)
        if page != query["page"]:  # past the end (the list shrank): the last page
            found = self.engine.status_page(query["statuses"], query["terms"], (page - 1) * STATUS_PAGE_ROWS,
                                            STATUS_PAGE_ROWS)
        now = self.engine.clock()
        counts, rows = found["counts"], found["rows"]
        alarm_counts = self.engine.alarm_counts()
        open_alarms = open_alarms_of(alarm_counts)
        live = self._templates["status"].render(
            rows=rows, total=found["total"], counts=counts, page=page, pages=pages,
            everything=sum(counts.get(status, 0) for status in STATUSES),  # "maintenance" counts some twice
            first=(page - 1) * STATUS_PAGE_ROWS + 1, last=(page - 1) * STATUS_PAGE_ROWS + len(rows),
            alarms=self.engine.alarms(limit=STATUS_PAGE_ALARMS_SHOWN) if open_alarms else [],
            open_alarms=open_alarms, alarm_text=alarm_counts_text(alarm_counts),
            q=query["q"], statuses=query["statuses"], statuses_all=SEVERITY, query=status_query_string,
            timelines=self._timelines(rows, now), timelines_recorded=True, now=now, time_html=time_html,
            shorten=shorten, member_counts_text=member_counts_text, pattern_text=pattern_text,
            base=bottle.request.script_name, base_url=self._base_url(),
        )
        live = self._channel_banner(now) + live
        down, late = counts.get(DOWN, 0), counts.get(LATE, 0)
        said = ", ".join(f"{count} {status}" for status, count in ((DOWN, down), (LATE, late)) if count)
        title = f"{said} - heartbeat-lite" if said else "heartbeat-lite"
        top = self._templates["status top"].render(q=query["q"], statuses=query["statuses"],
                                                   base=bottle.request.script_name)
        return self._html_answer(title, live, top=top)

    def _channel_banner(self, now):
        """The status page's first lines when alarms do not reach people:
        a channel failing ("alarms are not reaching ops-slack since
        10:42"), events a target refused for good, or alarms that reach
        no channel at all."""
        notifications = self.engine.notifications
        channels = notifications.documents()
        escape = bottle.html_escape
        notes = []
        for channel in channels:
            name = escape(channel["name"])
            if channel["failing_since"] is not None:
                why = f" ({escape(channel['last_error'])})" if channel["last_error"] else ""
                notes.append(f"alarms are not reaching <b>{name}</b> since "
                             f"{time_html(channel['failing_since'], now)}{why}; {channel['waiting']:,} waiting")
            if channel["set_aside"]:
                notes.append(f"<b>{name}</b> refused {channel['set_aside']:,} event(s) for good: set aside "
                             f"(<code>GET api/v2/channel/{escape(channel['_id'])}</code>)")
        if not channels:
            notes.append("alarms reach no channel at all: create one (<code>POST api/v2/channel</code>) or start "
                         "with <code>--forward-url</code>")
        elif notifications.unrouted():
            notes.append("alarms of heartbeats with no <code>channels</code> field reach no channel: "
                         "no channel is a default one")
        return "".join(f'<p class="banner" role="alert">{note}</p>\n' for note in notes)

    def heartbeat_page(self, heartbeat_id, user):
        doc = json.loads(self.engine.document(heartbeat_id))
        state = self.engine.status(heartbeat_id)
        now = self.engine.clock()
        end = math.ceil(now / TIMELINE_STEP_SECONDS) * TIMELINE_STEP_SECONDS
        base = bottle.request.script_name
        recorded = self.engine.history(heartbeat_id, limit=DEFAULT_HISTORY_LIMIT)
        history, availability = recorded["history"], recorded["availability"]
        events = self.engine.recent_events(heartbeat_id)
        changes = self.engine.changes_since([heartbeat_id], end - TIMELINE_SECONDS).get(heartbeat_id, [])
        members = None
        if "group_by" in doc:  # the worst first: those not up, then the others
            members = self.engine.members(heartbeat_id, ("down", "late", "pending"), limit=DETAIL_PAGE_MEMBERS)["members"]
            if len(members) < DETAIL_PAGE_MEMBERS:
                members += self.engine.members(heartbeat_id, ("up", "paused"),
                                               limit=DETAIL_PAGE_MEMBERS - len(members))["members"]
            members.sort(key=lambda entry: severity(entry["status"]))
        live = self._templates["detail"].render(
            doc=doc, state=state, now=now, base=base, history=history, availability=availability, events=events,
            members=members, member_counts_text=member_counts_text,
            done=DONE_MESSAGES.get(bottle.request.query.get("done")),
            last_run=self.engine.pings.last_run(heartbeat_id), seconds_text=seconds_text,
            timeline=timeline_svg(changes, end - TIMELINE_SECONDS, end, slots=288).replace(
                'class="timeline"', 'class="timeline large"', 1),
            statuses_all=SEVERITY, time_html=time_html, pattern_text=pattern_text,
            availability_text=availability_text, dump_text=lambda value: json.dumps(value, ensure_ascii=False),
        )
        live = self._channel_banner(now) + live
        base_url = self._base_url()
        example = {**doc["pattern"], **{key: f"<{key}>" for key in doc.get("group_by", ())}}
        event_curl = (f"curl -fsS -u USER:PASSWORD -d {shlex.quote(json.dumps(example, ensure_ascii=False))} "
                      f"{base_url}/api/v2/event")
        bottom = self._templates["detail bottom"].render(
            doc=doc, base=base, pattern_json=json.dumps(doc["pattern"], ensure_ascii=False, indent=2),
            ping_url=f"{base_url}/ping/{heartbeat_id}" if self.pings else None, event_curl=event_curl,
            group_by=doc.get("group_by"))
        return self._html_answer(f"{doc['name']} - heartbeat-lite", live, bottom=bottom)

    def act(self, heartbeat_id, action, user):
        """A heartbeat page's form: pause, resume, ack (with an optional
        ``comment`` field) or maintenance (a window of
        :data:`MAINTENANCE_FORM_SECONDS` from now, with the heartbeat's
        pattern); answered ``303`` to the heartbeat's page, whose ``done``
        parameter says what was done."""
        engine = self.engine
        if action == "pause":
            engine.pause(heartbeat_id)
            done = "paused"
        elif action == "resume":
            engine.resume_heartbeat(heartbeat_id)
            done = "resumed"
        elif action == "ack":
            form = urllib.parse.parse_qs(self.read_body(MAX_HEARTBEAT_BODY_BYTES).decode("utf-8", "replace"))
            comment = " ".join(form.get("comment", [])).strip()
            engine.ack(heartbeat_id, user, validate_ack(dump_json({"comment": comment}) if comment else b""))
            done = "acked"
        else:
            doc = json.loads(engine.document(heartbeat_id))
            now = engine.clock()
            start, end = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
                          for t in (now, now + MAINTENANCE_FORM_SECONDS))
            engine.create_maintenance(validate_maintenance({
                "name": f"1 h from the page of {shorten(doc['name'], MAX_NAME_CHARS - 40)}",
                "pattern": doc["pattern"], "start": start, "end": end}))
            done = "maintenance"
        bottle.response.status = 303
        bottle.response.set_header("Location", f"{self._base_url()}/heartbeat/{heartbeat_id}?done={done}")
        return b""

    def _timelines(self, rows, now):
        """``{heartbeat id: SVG}``: each row's last 24 h, ending at ``now``
        rounded up to :data:`TIMELINE_STEP_SECONDS`."""
        end = math.ceil(now / TIMELINE_STEP_SECONDS) * TIMELINE_STEP_SECONDS
        changes = self.engine.changes_since([row["_id"] for row in rows], end - TIMELINE_SECONDS)
        return {row["_id"]: timeline_svg(changes.get(row["_id"], []), end - TIMELINE_SECONDS, end) for row in rows}

    def _html_answer(self, title, live, top="", bottom=""):
        """An operator page: ``live`` (the part the page's script refreshes)
        in the shell. Its weak ETag hashes the URL and ``live``, which
        depend on the state only (not on the second), so the script's
        conditional refresh gets a body-less 304 while nothing changed.
        Gzipped when the client accepts it."""
        request, response = bottle.request, bottle.response
        digest = hashlib.sha256(f"{__version__}\n{request.fullpath}?{request.query_string}\n{live}".encode())
        etag = f'W/"{digest.hexdigest()[:32]}"'
        response.set_header("ETag", etag)
        response.set_header("Vary", "Accept-Encoding")
        response.set_header("Cache-Control", "no-cache")
        wanted = {tag.strip().removeprefix("W/") for tag in request.environ.get("HTTP_IF_NONE_MATCH", "").split(",")}
        if etag.removeprefix("W/") in wanted or "*" in wanted:  # the weak comparison GET uses
            response.status = 304
            return b""
        html = self._templates["shell"].render(title=title, style=PAGE_STYLE, script=self._script, etag=etag,
                                               live=live, top=top, bottom=bottom, base=request.script_name)
        body = html.encode("utf-8")
        if accepts_gzip(request.environ.get("HTTP_ACCEPT_ENCODING")):
            body = gzip.compress(body, compresslevel=6, mtime=0)
            response.set_header("Content-Encoding", "gzip")
        return text_response(body, HTML_TYPE)


class WebApi:
    """The bottle routes: parse the request, call the engine, format the answer.

    :param engine: the :class:`Engine`.
    :param authenticator: the :class:`Authenticator` guarding ``/api/``.
    :param allowed_hosts: None (any ``Host``), or the names a request's
        ``Host`` must be (see :func:`allowed_host_names`); others get ``421``
        and change nothing.
    """

    def __init__(self, engine, authenticator, allowed_hosts=None, sender=None):
        self.engine = engine
        self.auth = authenticator
        self.allowed_hosts = allowed_hosts
        self.sender = sender or Sender  # makes a channel's Sender (the test route's)
        self._health_problem = None  # the last problem /healthz logged
        #: None, or a callable giving the instance's clock offset to the database's (shown by /healthz)
        self.clock_offset = None
        self.app = bottle.Bottle()
        self.app.uninstall(True)  # no JSON/template plugins: every route returns an HTTPResponse
        self.app.default_error_handler = self._bottle_error
        self._route("/api/v2/heartbeat", "POST", self.create_heartbeat)
        self._route("/api/v2/heartbeat", "GET", self.list_heartbeats)
        self._route("/api/v2/heartbeat/<heartbeat_id>", "GET", self.get_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>", "PUT", self.update_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>", "DELETE", self.delete_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>/status", "GET", self.heartbeat_status)
        self._route("/api/v2/heartbeat/<heartbeat_id>/pause", "POST", self.pause_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>/resume", "POST", self.resume_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>/members", "GET", self.list_members)
        self._route("/api/v2/heartbeat/<heartbeat_id>/members", "DELETE", self.delete_member)
        self._route("/api/v2/maintenance", "POST", self.create_maintenance, kind="maintenance")
        self._route("/api/v2/maintenance", "GET", self.list_maintenance, kind="maintenance")
        self._route("/api/v2/maintenance/<maintenance_id>", "GET", self.get_maintenance, kind="maintenance")
        self._route("/api/v2/maintenance/<maintenance_id>", "PUT", self.update_maintenance, kind="maintenance")
        self._route("/api/v2/maintenance/<maintenance_id>", "DELETE", self.delete_maintenance, kind="maintenance")
        self._route("/api/v2/heartbeat/<heartbeat_id>/history", "GET", self.heartbeat_history)
        self._route("/api/v2/heartbeat/<heartbeat_id>/events", "GET", self.heartbeat_events)
        self._route("/api/v2/pattern/test", "POST", self.test_pattern, kind="pattern")
        self._route("/api/v2/event", "POST", self.post_events, kind="event")
        self._route("/api/v2/alarms", "GET", self.list_alarms)
        self._route("/api/v2/heartbeat/<heartbeat_id>/ack", "POST", self.ack_heartbeat)
        self._route("/api/v2/channel", "POST", self.create_channel, kind="channel")
        self._route("/api/v2/channel", "GET", self.list_channels, kind="channel")
        self._route("/api/v2/channel/<channel_id>", "GET", self.get_channel, kind="channel")
        self._route("/api/v2/channel/<channel_id>", "PUT", self.update_channel, kind="channel")
        self._route("/api/v2/channel/<channel_id>", "DELETE", self.delete_channel, kind="channel")
        self._route("/api/v2/channel/<channel_id>/test", "POST", self.test_channel, kind="channel")
        self._route("/healthz", "GET", self.health, authenticated=False)
        #: the operator pages (:class:`OperatorPages`)
        self.pages = OperatorPages(engine, self._read_body)
        self._route("/", "GET", self.pages.status_page)
        self._route("/heartbeat/<heartbeat_id>", "GET", self.pages.heartbeat_page)
        for action in PAGE_ACTIONS:  # the heartbeat page's forms
            self._route(f"/heartbeat/<heartbeat_id>/{action}", "POST", functools.partial(self.pages.act, action=action))
        self._route("/metrics", "GET", self.metrics)
        self._route("/api/v2/openapi.json", "GET", self.openapi, authenticated=False)
        self._openapi = dump_json(openapi_document())

    def _route(self, path, method, handler, authenticated=True, kind="heartbeat"):
        """Serve ``handler`` at ``path`` with and without a trailing slash;
        ``kind`` names the document it handles, in its error answers."""
        wrapped = self._wrap(handler, authenticated, kind)
        for variant in {path, path.rstrip("/") + "/"}:
            self.app.route(variant, method, wrapped)

    def _wrap(self, handler, authenticated, kind):
        """The one place where exceptions become JSON answers."""

        def wrapper(**kwargs):
            try:
                environ = bottle.request.environ
                if is_hostile_path(environ):
                    raise ApiError(404, "not found")
                if self.allowed_hosts is not None and "HTTP_HOST" in environ \
                        and not is_allowed_host(environ["HTTP_HOST"], self.allowed_hosts):
                    raise ApiError(421, MISDIRECTED)
                if environ.get("REQUEST_METHOD") in STATE_CHANGING_METHODS and is_cross_site(environ):
                    raise ApiError(403, CROSS_SITE_REFUSED)
                if authenticated:
                    kwargs["user"] = self._authenticate()
                if "heartbeat_id" in kwargs and not _CANONICAL_ID.fullmatch(kwargs["heartbeat_id"]):
                    raise NotFound(kwargs["heartbeat_id"])
                if "channel_id" in kwargs and not is_channel_id(kwargs["channel_id"]):
                    raise NotFound(kwargs["channel_id"])
                return handler(**kwargs)
            except ApiError as exc:
                return json_response(exc.body, exc.status, exc.headers)
            except Invalid as exc:
                return json_response(error_body(f"invalid {kind} payload.", errors=exc.reasons), 400)
            except MemberNotFound as exc:
                return json_response(error_body("member not found", name=str(exc.args[0])), 404)
            except NotFound as exc:
                return json_response(error_body(f"{kind} not found", name=str(exc.args[0])), 404)
            except Taken as exc:
                return json_response(error_body(ALREADY_EXISTS.format(exc.field)), 400)
            except NoOpenAlarm as exc:
                return json_response(error_body("no open alarm", name=str(exc.args[0])), 409)
            except ChannelInUse as exc:
                return json_response(error_body("channel in use: heartbeats name it in channels or escalate_to",
                                                name=exc.args[0], heartbeats=exc.args[1]), 409)
            except ChannelConfigured as exc:
                return json_response(error_body(f"channel set by {exc.args[1]}: change the setting",
                                                name=exc.args[0]), 409)
            except TooLarge as exc:
                return json_response(error_body(str(exc)), 413)
            except StoreError as exc:
                log.error("database error on %s %s: %s", log_safe(bottle.request.method),
                          log_safe(bottle.request.path), exc,
                          exc_info=exc.__cause__ is None and not isinstance(exc, (DatabaseGone, DatabaseBusy)))
                return json_response(error_body(DATABASE_ERROR), 400)
            except Exception:
                log.exception("unexpected error on %s %s", log_safe(bottle.request.method),
                              log_safe(bottle.request.path))
                return json_response(error_body(INTERNAL_ERROR), 500)

        return wrapper

    def _bottle_error(self, error):
        """bottle's own errors (unknown path, wrong method, ...) as JSON."""
        if error.status_code >= 500:
            log.error("unhandled error: %s", error.exception, exc_info=error.exception)
        bottle.response.content_type = JSON_TYPE
        descriptions = {404: "not found", 405: "method not allowed"}
        description = descriptions.get(error.status_code, error.status_line.split(" ", 1)[-1].lower())
        return dump_json(error_body(description))

    @staticmethod
    def answers_inline(method, path, body_length):
        """True for a request the server may serve in its event loop's
        thread, without a worker (see :class:`WouldBlock`): those the engine
        answers from memory, GET one heartbeat, a POST of events whose body
        (``body_length`` bytes; None: chunked) is small, and a ping
        (``/ping/...``, as small)."""
        if path.startswith("/ping/"):  # Healthchecks' pings: a success is served from memory
            # whatever the method, the body is read: a GET's too, bounded as a POST's
            return method in _PING_METHODS and body_length is not None and body_length <= INLINE_BODY_BYTES
        if method == "GET":
            return _INLINE_GET.fullmatch(path) is not None
        return method == "POST" and body_length is not None and body_length <= INLINE_BODY_BYTES \
            and path in ("/api/v2/event", "/api/v2/event/")

    @staticmethod
    def _blocking():
        """False when the server serves this request in its event loop's thread."""
        return INLINE_ENVIRON_KEY not in bottle.request.environ

    def _authenticate(self):
        try:
            environ = bottle.request.environ
            user = self.auth.user(environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR"),
                                  INLINE_ENVIRON_KEY not in environ)
        except Throttled:
            raise ApiError(429, "too many failed authentication attempts, retry later",
                           headers={"Retry-After": str(int(AUTH_FAILURE_REFILL_SECONDS))}) from None
        if user is None:
            raise ApiError(401, "authentication required",
                           headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        return user

    def _read_body(self, limit):
        environ = bottle.request.environ
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise ApiError(400, "invalid Content-Length")
        if length > limit:
            raise TooLarge(f"request body larger than {limit} bytes")
        return environ["wsgi.input"].read(length) if length else b""

    # -- routes --------------------------------------------------------------

    def create_heartbeat(self, user):
        heartbeat_id = self.engine.create(self._heartbeat_body(user))
        return json_response({"name": "heartbeat created", "description": heartbeat_id})

    def _heartbeat_body(self, user):
        body = self._read_body(MAX_HEARTBEAT_BODY_BYTES)
        return validate_heartbeat(parse_json(body), default_author=user)

    def list_heartbeats(self, user):
        limit, after = self._query_parameters(parse_page_query)
        if limit is None:
            return json_response(self.engine.list())
        documents, cursor = self.engine.page(limit, after)
        headers = {}
        if cursor is not None:
            query = urllib.parse.urlencode({"limit": limit, "after": cursor})
            headers = {"Link": f'<{bottle.request.script_name}api/v2/heartbeat?{query}>; rel="next"',
                       "X-Next-Cursor": cursor}
        return json_response(documents, headers=headers)

    @staticmethod
    def _query_parameters(parse):
        """The query string, parsed by ``parse``; 400 ``invalid query
        parameters.`` with every reason when it is refused."""
        try:
            return parse(bottle.request.query)
        except Invalid as exc:
            raise ApiError(400, INVALID_QUERY, errors=exc.reasons) from None

    def get_heartbeat(self, heartbeat_id, user):
        return json_response(self.engine.document(heartbeat_id, self._blocking()))

    def update_heartbeat(self, heartbeat_id, user):
        self.engine.update(heartbeat_id, self._heartbeat_body(user))
        return json_response({"name": "heartbeat updated", "description": heartbeat_id})

    def delete_heartbeat(self, heartbeat_id, user):
        self.engine.delete(heartbeat_id)
        return json_response({"name": "heartbeat removed", "description": heartbeat_id})

    def heartbeat_status(self, heartbeat_id, user):
        return json_response(self.engine.status(heartbeat_id))

    def pause_heartbeat(self, heartbeat_id, user):
        self.engine.pause(heartbeat_id)
        return json_response({"name": "heartbeat paused", "description": heartbeat_id})

    def resume_heartbeat(self, heartbeat_id, user):
        self.engine.resume_heartbeat(heartbeat_id)
        return json_response({"name": "heartbeat resumed", "description": heartbeat_id})

    def list_members(self, heartbeat_id, user):
        statuses, after, limit = self._query_parameters(parse_members_query)
        return json_response(self.engine.members(heartbeat_id, statuses, after, limit))

    def delete_member(self, heartbeat_id, user):
        query = bottle.request.query
        member = {}
        for key in query.keys():
            values = query.getall(key)
            if len(values) != 1 or not _is_text(key) or not _is_text(values[0]):
                raise ApiError(400, INVALID_QUERY, errors=[f"{key}: give each group_by key once"])
            member[key] = values[0]
        try:
            self.engine.delete_member(heartbeat_id, member)
        except Invalid as exc:
            raise ApiError(400, INVALID_QUERY, errors=exc.reasons) from None
        return json_response({"name": "member removed", "description": heartbeat_id})

    def _maintenance_body(self):
        return validate_maintenance(parse_json(self._read_body(MAX_MAINTENANCE_BODY_BYTES)))

    def create_maintenance(self, user):
        maintenance_id = self.engine.create_maintenance(self._maintenance_body())
        return json_response({"name": "maintenance created", "description": maintenance_id})

    def list_maintenance(self, user):
        active = bottle.request.query.get("active", "0")
        if active not in ("0", "1"):
            raise ApiError(400, INVALID_QUERY, errors=["active: must be 1 (the windows active now) or 0 (all)"])
        return json_response(self.engine.maintenances(active=active == "1"))

    def get_maintenance(self, maintenance_id, user):
        return json_response(self.engine.maintenance(maintenance_id))

    def update_maintenance(self, maintenance_id, user):
        self.engine.update_maintenance(maintenance_id, self._maintenance_body())
        return json_response({"name": "maintenance updated", "description": maintenance_id})

    def delete_maintenance(self, maintenance_id, user):
        self.engine.delete_maintenance(maintenance_id)
        return json_response({"name": "maintenance removed", "description": maintenance_id})

    def heartbeat_history(self, heartbeat_id, user):
        since, until, limit = self._query_parameters(parse_history_query)
        return json_response(self.engine.history(heartbeat_id, since, until, limit))

    def heartbeat_events(self, heartbeat_id, user):
        return json_response({"events": self.engine.recent_events(heartbeat_id)})

    def test_pattern(self, user):
        pattern = validate_pattern_test(parse_json(self._read_body(MAX_HEARTBEAT_BODY_BYTES)))
        return json_response(self.engine.test_pattern(pattern))

    def post_events(self, user):
        body = self._read_body(MAX_EVENT_BODY_BYTES)
        events = validate_events(parse_json(body, duplicate_keys=True))
        return json_response({"received": len(events), "matched": self.engine.ingest(events, body, blocking=self._blocking())})

    def list_alarms(self, user):
        try:
            limit = parse_alarms_query(bottle.request.query)
        except Invalid as exc:
            raise ApiError(400, INVALID_QUERY, errors=exc.reasons) from None
        counts = self.engine.alarm_counts()
        total = counts.pop("intake") + sum(heartbeats + members for heartbeats, members in counts.values())
        return json_response(self.engine.alarms(limit), headers={"X-Total-Count": str(total)})

    def ack_heartbeat(self, heartbeat_id, user):
        comment = validate_ack(self._read_body(MAX_HEARTBEAT_BODY_BYTES))
        self.engine.ack(heartbeat_id, user, comment)
        return json_response({"name": "alarm acknowledged", "description": heartbeat_id})

    def create_channel(self, user):
        fields = validate_channel(parse_json(self._read_body(MAX_CHANNEL_BODY_BYTES)))
        return json_response({"name": "channel created", "description": self.engine.notifications.create(fields)})

    def list_channels(self, user):
        return json_response(self.engine.notifications.documents())

    def get_channel(self, channel_id, user):
        return json_response(self.engine.notifications.document(channel_id))

    def update_channel(self, channel_id, user):
        stored = self.engine.notifications.channel(channel_id)
        fields = validate_channel(parse_json(self._read_body(MAX_CHANNEL_BODY_BYTES)), stored=stored)
        self.engine.notifications.update(channel_id, fields)
        return json_response({"name": "channel updated", "description": channel_id})

    def delete_channel(self, channel_id, user):
        self.engine.notifications.delete(channel_id)
        return json_response({"name": "channel removed", "description": channel_id})

    def test_channel(self, channel_id, user):
        channel = self.engine.notifications.channel(channel_id)
        return json_response(self.sender(channel).test(self.engine.clock()))

    def metrics(self, user):
        text = prometheus_text(self.engine.overview(), self.engine.events_received, self.engine.alarms_raised,
                               self.engine.outbox_depth(), self.engine.history_metrics(),
                               self.engine.notifications.documents(), dict(self.engine.pings.counts))
        return text_response(text.encode("utf-8"), PROMETHEUS_TYPE)

    def openapi(self):
        return json_response(self._openapi)

    def health(self):
        depth, problem, since = self.engine.health()
        offset = None if self.clock_offset is None else self.clock_offset()
        clock = {} if offset is None else {"clock_offset": round(offset, 3)}
        if problem is not None:
            if problem != self._health_problem:  # a monitor polling /healthz must not flood the log
                log.error("health check: %s", problem)
            self._health_problem = problem
            return json_response({"status": "unavailable", "description": problem, "since": since, **clock}, 503)
        self._health_problem = None
        answer = {"status": "ok", **({"outbox": depth} if depth is not None else {}), **clock}
        warnings = self._delivery_warnings()
        if warnings:
            answer.update(status="degraded", warnings=warnings)
        return json_response(answer)

    def _delivery_warnings(self):
        try:
            return self.engine.notifications.delivery_warnings()
        except StoreError:
            return []  # the database's own trouble is said by the health check


_PING_HEADERS = (("Content-Type", PING_TYPE), ("Cache-Control", PING_OK_HEADERS["Cache-Control"]))
_PING_OK_HEADERS = _PING_HEADERS + tuple(PING_OK_HEADERS.items() - dict(_PING_HEADERS).items())


class PingRoutes:
    """The ping routes (docs/pings.md) on a :class:`WebApi`'s application:
    Healthchecks' ``/ping/...`` (answered in text/plain as Healthchecks
    answers), Opsgenie's heartbeat ping (only with a ``genie_key``), Uptime
    Kuma's push. No Basic auth and no cross-site check: the id, key or
    token in the URL (or the GenieKey) is the secret. Thin: parse, call
    :class:`Pings`, answer.

    :param web: the :class:`WebApi` whose application gets the routes.
    :param ping_key: the key of the slug form ``/ping/<key>/<slug>``
        (None: that form answers ``not found``).
    :param genie_key: the key Opsgenie pings must send (None: no route).
    """

    def __init__(self, web, ping_key=None, genie_key=None):
        self.web = web
        self.pings = web.engine.pings
        self.ping_key = ping_key.encode() if ping_key else None
        self.genie_key = genie_key.encode() if genie_key else None
        routes = [("/ping/<address>", _PING_METHODS, self.healthchecks),
                  ("/ping/<address>/<second>", _PING_METHODS, self.healthchecks),
                  ("/ping/<address>/<second>/<third>", _PING_METHODS, self.healthchecks),
                  ("/api/push/<token>", ("GET",), self.kuma)]
        if genie_key:
            routes.append(("/v2/heartbeats/<name>/ping", ("GET", "POST", "PUT", "PATCH", "HEAD"), self.opsgenie))
        for path, methods, handler in routes:
            for variant in (path, path + "/"):
                for method in methods:
                    web.app.route(variant, method, handler)

    def _refused(self):
        """``(status, description)`` when the request is refused before
        anything (a hostile path, an unknown ``Host``), else None."""
        environ = bottle.request.environ
        if is_hostile_path(environ):
            return 404, "not found"
        allowed = self.web.allowed_hosts
        if allowed is not None and "HTTP_HOST" in environ and not is_allowed_host(environ["HTTP_HOST"], allowed):
            return 421, MISDIRECTED
        return None

    @staticmethod
    def _text(status, text, ok=False):
        response = bottle.response
        if status != 200:  # bottle's answer is 200 until told otherwise
            response.status = status
        # The hot path: these headers are constants, so they are put in place
        # whole, as bottle keeps them ({Title-Case name: [value]}), instead of
        # through set_header, which checks and converts each name and value
        # (half the cost of the route).
        response._headers.update({name: [value] for name, value in (_PING_OK_HEADERS if ok else _PING_HEADERS)})
        return text.encode()

    def healthchecks(self, address, second=None, third=None):
        """``/ping/<id>[/<suffix>]`` and ``/ping/<ping-key>/<slug>[/<suffix>]``."""
        request = bottle.request
        try:
            refused = self._refused()
            if refused is not None:
                return self._text(*refused)
            parsed = parse_ping_path("/".join(part for part in (address, second, third) if part is not None))
            if parsed is None:
                return self._text(404, "not found")
            address, slug, kind, exit_status = parsed
            status = 200
            query = request.query if request.environ.get("QUERY_STRING") else {}
            blocking = self.web._blocking()  # (in the event loop: a success to a heartbeat up, from memory)
            if slug is None:
                heartbeat_id = address
            elif self.ping_key is None or not hmac.compare_digest(address.encode(), self.ping_key):
                return self._text(404, "not found")
            else:
                heartbeat_id = self.pings.by_slug(slug, blocking)
                if heartbeat_id is None and query.get("create") == "1":
                    if not blocking:
                        raise WouldBlock()
                    heartbeat_id, created = self.pings.create(slug)
                    status = 201 if created else 200
                elif heartbeat_id is None:
                    return self._text(404, "not found")
            self.web.engine.document(heartbeat_id, blocking, anonymous=True)  # NotFound before anything else
            check_exit_status(exit_status)
            rid = parse_rid(query.get("rid"))
            body = self.web._read_body(MAX_EVENT_BODY_BYTES)
            self.pings.ping(heartbeat_id, kind, request.method, request.environ.get("REMOTE_ADDR"), body, rid,
                            exit_status, blocking)
        except Invalid as exc:
            return self._text(400, exc.reasons[0])
        except NotFound:
            return self._text(404, "not found")
        except PatternExists:
            return self._text(409, "ambiguous slug")
        except Exception as exc:
            return self._failed(exc)
        return self._text(status, "Created" if status == 201 else "OK", ok=True)

    def _failed(self, exc, text=True):
        """An answer for what went wrong past the request's own faults: a
        body over its limit (413, JSON, as every body), the database (503: a
        ping retried by ``curl --retry`` then comes again), else 500; in
        ``text`` (Healthchecks' text/plain) or else JSON (Opsgenie's and
        Uptime Kuma's routes, which answer JSON)."""
        if isinstance(exc, TooLarge):
            return json_response(error_body(str(exc)), 413)
        if isinstance(exc, ApiError):
            return json_response(exc.body, exc.status, exc.headers)
        request = bottle.request
        if isinstance(exc, StoreError):
            log.error("database error on %s %s: %s", log_safe(request.method), log_safe(redact_path(request.path)),
                      exc)
            status, description = 503, DATABASE_ERROR
        else:
            log.error("unexpected error on %s %s", log_safe(request.method), log_safe(redact_path(request.path)),
                      exc_info=exc)
            status, description = 500, INTERNAL_ERROR
        return self._text(status, description) if text else json_response(error_body(description), status)

    def opsgenie(self, name):
        """``/v2/heartbeats/<name>/ping``, as Opsgenie answers: every
        heartbeat of that name refreshed, 202 even when none has it."""
        request = bottle.request
        request_id = str(uuid.uuid4())
        try:
            refused = self._refused()
            if refused is not None:
                return json_response(error_body(refused[1]), refused[0])
            scheme, _, key = request.environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
            if scheme.lower() != "geniekey" or not hmac.compare_digest(key.strip().encode(), self.genie_key):
                return json_response({"message": "Could not authenticate", "took": 0, "requestId": request_id}, 401)
            body = self.web._read_body(MAX_EVENT_BODY_BYTES)
            for heartbeat_id in self.pings.named(name):
                try:
                    self.pings.ping(heartbeat_id, "success", request.method, request.environ.get("REMOTE_ADDR"),
                                    body)
                except NotFound:
                    pass  # deleted meanwhile
        except Exception as exc:
            return self._failed(exc, text=False)
        return json_response({"result": OPSGENIE_PONG, "took": 0, "requestId": request_id}, 202)

    def kuma(self, token):
        """``/api/push/<push_token>?status=up|down&msg=``, as Uptime Kuma
        answers; any status but ``up`` is a failure, ``msg`` its output."""
        request = bottle.request
        try:
            refused = self._refused()
            if refused is not None:
                return json_response(error_body(refused[1]), refused[0])
            query = request.query
            heartbeat_id = self.pings.by_push_token(token)
            if heartbeat_id is None:
                raise NotFound(token)
            up = (query.get("status") or "up") == "up"
            self.pings.ping(heartbeat_id, "success" if up else "fail", request.method,
                            request.environ.get("REMOTE_ADDR"), query.getunicode("msg", default="").encode())
        except NotFound:
            return json_response({"ok": False, "msg": KUMA_NOT_FOUND}, 404)
        except Exception as exc:
            return self._failed(exc, text=False)
        return json_response({"ok": True})


def _access_logged(app):
    """WSGI middleware: one access-log line per request, JSON on a crash."""

    def wsgi(environ, start_response):
        started = time.perf_counter()
        seen = []

        def recording_start_response(status, headers, exc_info=None):
            seen.append(status)
            return start_response(status, headers, exc_info)

        try:
            body = app(environ, recording_start_response)
        except Exception:  # bottle's own last resort failed: still answer JSON
            log.exception("unhandled error in the WSGI application")
            body = [dump_json(error_body(INTERNAL_ERROR))]
            seen.append("500 Internal Server Error")
            start_response(seen[-1], [("Content-Type", JSON_TYPE)], sys.exc_info())
        if access_log.isEnabledFor(logging.INFO):
            path = redact_path(environ.get("PATH_INFO", ""))
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
            access_log.info('%s "%s %s" %s %.1fms', log_safe(environ.get("REMOTE_ADDR", "-")),
                            log_safe(environ.get("REQUEST_METHOD")), log_safe(path),
                            seen[-1].split(" ", 1)[0] if seen else "-",
                            (time.perf_counter() - started) * 1000)
        return body

    return wsgi


###############################################################################
# Embedding API
###############################################################################


class Service:
    """One heartbeat-lite instance: its store, engine and WSGI application.

    Build it with :func:`create_app`. Nothing runs in the background until
    :meth:`start` (which :func:`serve` calls); embedded, call :meth:`tick`
    (and :meth:`deliver` when forwarding). Two services in one process share
    nothing. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, db, users, clock, busy_timeout, on_alarm, forward_url, open_now=True,
                 intake_silence=None, history_days=DEFAULT_HISTORY_DAYS, public_url=None, ca_file=None,
                 pings=True, ping_key=None, genie_key=None):
        self.uses_default_users = users is None
        if forward_url:
            parse_forward_url(forward_url)  # refuse a bad URL before touching the database
        if public_url:
            check_public_url(public_url)
        if ca_file:
            check_ca_file(ca_file)
        check_history_days(history_days)
        authenticator = Authenticator(DEFAULT_USERS if users is None else users)
        self.store = open_store(db, busy_timeout=busy_timeout)  # takes the lock (SQLite); writes nothing
        # Instances sharing a database judge time on its clock: the system
        # clock is corrected by its measured offset to it. An injected clock
        # is the caller's, used as given.
        corrected = clock is time.time and self.store.shared_by_instances
        if corrected:
            clock = self.store.database_clock
        self.engine = Engine(self.store, clock, on_alarm=on_alarm,
                             channels=[forward_channel(forward_url)] if forward_url else [],
                             intake_silence=intake_silence, history_days=history_days)
        self.scheduler = Scheduler(self.engine)
        #: the :class:`Syncer` when other instances may share the database, else None
        self.syncer = Syncer(self.engine, self.store) if self.store.shared_by_instances else None
        #: the base of links in messages (``--public-url``); :func:`serve` sets the listen address when None
        self.public_url = public_url
        self.ca_file = ca_file
        #: the delivery workers, one :class:`Forwarder` per channel
        self.deliveries = Deliveries(self.store, self.engine.notifications.registry, public_url, ca_file, clock,
                                     self.engine.notifications.open_notices)
        self.engine.outbox.waker = self.deliveries.wake
        # the default root:root answers loopback names only (and --public-url's): no DNS rebinding
        self.web = WebApi(self.engine, authenticator,
                          allowed_hosts=allowed_host_names(public_url) if users is None else None,
                          sender=self.sender)
        if corrected:
            self.web.clock_offset = lambda: self.store.clock_offset
        if pings:
            PingRoutes(self.web, ping_key, genie_key)
        self.web.pages.pings = bool(pings)
        #: the bottle application (routes, for inspection or mounting)
        self.app = self.web.app
        #: the WSGI application: the bottle app with access log and a JSON last resort
        self.wsgi = _access_logged(self.app)
        self._opened = False
        if open_now:
            try:
                self.open()
            except BaseException:
                self.store.close()
                raise

    def open(self):
        """Open the database and start the engine (resuming after the
        outage); :func:`serve` calls it once it holds its port, so a start
        that fails has changed nothing. Idempotent.

        :raises ConfigError: the database is newer than this code.
        """
        if self._opened:
            return
        self.store.open()
        self._opened = True
        try:
            self.engine.load()
        except StoreError as exc:
            log.error("cannot start the engine yet (%s); it starts with the first change that succeeds", exc)
        self._warn_about_a_stranded_outbox()

    @property
    def forwarder(self):
        """The :class:`Forwarder` of ``--forward-url``'s channel, or None."""
        return self.deliveries.workers.get(FORWARD_CHANNEL_ID)

    def sender(self, channel):
        """A :class:`Sender` for ``channel``, as this service's workers have
        (the test route's)."""
        return Sender(channel, self.deliveries.public_url, FORWARD_TIMEOUT_SECONDS, self.ca_file)

    def set_public_url(self, public_url):
        """Links in messages start with ``public_url`` from now on."""
        self.public_url = public_url
        self.deliveries.set_public_url(public_url)

    def _warn_about_a_stranded_outbox(self):
        if self.forwarder is not None:
            return
        try:
            depth = self.store.queues().get(FORWARD_CHANNEL_ID, (0,))[0]
        except StoreError:
            return  # already said at start
        if depth:
            log.warning("%d undelivered event(s) in the outbox; start with --forward-url to deliver them", depth)

    def tick(self):
        """Run expiry now, against the service's clock (after applying the
        changes of other instances, if any: see :meth:`sync`).

        :returns: seconds until the next deadline, or None.
        """
        self.engine.sync()
        return self.engine.tick()

    def sync(self):
        """Apply what other instances on the same (PostgreSQL) database
        changed to this one's read model now (server mode does it every
        :data:`SYNC_SECONDS`); returns whether anything changed."""
        return self.engine.sync()

    def deliver(self, channel_id=None):
        """Deliver now (embedded): every channel's queue (or one's), until
        it is empty or an attempt fails.

        :returns: None when every queue is empty, else the shortest backoff
            in seconds before the next attempt.
        :raises RuntimeError: there is no channel (no ``forward_url``, none created).
        """
        if not self.deliveries.workers:
            raise RuntimeError("no channel: no forward_url configured, and none created")
        return self.deliveries.deliver(channel_id)

    def start(self):
        """Start the background work of server mode: the expiry scheduler
        and, when forwarding, the delivery thread."""
        self.scheduler.start()
        if self.syncer is not None:
            self.syncer.start()
        self.deliveries.start()

    def stop(self):
        """Stop the background work; the service can still be used embedded."""
        self.scheduler.stop()
        if self.syncer is not None:
            self.syncer.stop()
        self.deliveries.stop()

    def close(self):
        """Stop background work, record the shutdown time, close the database."""
        self.stop()
        try:
            self.engine.shutdown()
        except StoreError as exc:
            log.error("could not write pending refreshes and the shutdown time: %s", exc)
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create_app(db=":memory:", users=None, clock=time.time, busy_timeout=BUSY_TIMEOUT_SECONDS,
               on_alarm=None, forward_url=None, intake_silence=None, history_days=DEFAULT_HISTORY_DAYS,
               public_url=None, ca_file=None, pings=True, ping_key=None, genie_key=None):
    """Build a :class:`Service`; nothing runs in the background.

    :param db: SQLite file path, or ``:memory:``, or a PostgreSQL URL
        (``postgresql://...``; needs psycopg 3: see :class:`PostgresStore`).
    :param users: dict of user name to password (or to a hash from
        ``hash-password``); None means ``root:root``, which :func:`serve`
        accepts only on a loopback address.
    :param clock: callable returning Unix seconds (float); inject a fake one
        in tests and call ``service.tick()`` after moving it.
    :param busy_timeout: seconds to wait for a database lock held elsewhere.
    :param on_alarm: callable receiving every alarm (``state`` 3) and
        resolution (``state`` 0) event, in order, after it is committed.
    :param forward_url: http(s) URL to POST alarms and resolutions to
        (Canopsis' ``/api/v2/event``); they go through the outbox.
    :param intake_silence: None (the default), or seconds (or a duration
        such as ``"5m"``): when no event at all arrives for that long, raise
        the one intake alarm and stop every deadline until events come back.
    :param history_days: days of state changes kept (an integer, at least
        1); older ones are pruned by ``tick()``.
    :param public_url: the base of links in messages (``https://hb.example.com``);
        None: :func:`serve` takes the listen address.
    :param ca_file: a certificate authority file (PEM) that channels'
        https, SMTPS and STARTTLS connections trust besides the system's.
    :param pings: False turns off every ping route (docs/pings.md: ``/ping/...``,
        Opsgenie's, Uptime Kuma's).
    :param ping_key: the key of Healthchecks' slug form ``/ping/<key>/<slug>``
        (None: that form is off).
    :param genie_key: the key Opsgenie heartbeat pings send
        (``Authorization: GenieKey <key>``); None: that route is off.
    :raises ConfigError: a bad forward URL, public URL, CA file, password
        hash, intake silence or history_days, a missing database directory,
        a database newer than this code.
    """
    if isinstance(intake_silence, str):
        intake_silence = check_intake_silence(intake_silence, "intake silence")
    elif intake_silence is not None and (isinstance(intake_silence, bool) or not (
            isinstance(intake_silence, (int, float)) and intake_silence > 0)):
        raise ConfigError("intake silence: a number of seconds above 0, or a duration such as 5m")
    return Service(db, users, clock, busy_timeout, on_alarm, forward_url, intake_silence=intake_silence,
                   history_days=history_days, public_url=public_url, ca_file=ca_file, pings=pings,
                   ping_key=ping_key or None, genie_key=genie_key or None)


def check_public_url(url, name="public_url"):
    """``url`` when it is an http(s) URL with a host (the base of links in
    messages); :raises ConfigError: naming ``name`` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(f"{name}: must be an http:// or https:// URL with a host, such as "
                          f"https://heartbeat.example.com, not {url!r}")
    return url.rstrip("/")


def check_ca_file(path, name="ca_file"):
    """``path`` when it holds certificates an SSL context can load;
    :raises ConfigError: naming ``name`` otherwise."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{name}: cannot load certificates from {path}: {exc}") from None
    return path


def check_history_days(days, name="history_days"):
    """``days`` when it is a whole number of days of history to keep, from
    1 to :data:`MAX_HISTORY_DAYS` (``create_app`` and ``--history-days``
    alike); :raises ConfigError: naming ``name`` otherwise."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_HISTORY_DAYS:
        raise ConfigError(f"{name}: must be a whole number of days from 1 to {MAX_HISTORY_DAYS}, not {days!r}")
    return days


def check_intake_silence(text, name):
    """The seconds of an intake silence given as a duration (``5m``);
    :raises ConfigError: naming ``name`` otherwise."""
    seconds = parse_interval(text.strip())
    if seconds is None or seconds > MAX_INTERVAL_SECONDS:
        raise ConfigError(f"{name}: {INTERVAL_SYNTAX}, {INTERVAL_LIMIT}, not {text!r}")
    return seconds


###############################################################################
# Server / CLI
###############################################################################


def _json_error_server_class():
    """waitress' server class, answering its own HTTP errors (malformed request,
    body too large) in JSON like the rest of the API, refusing what a proxy
    in front could read another way, and bounding what each connection may
    hold (see :class:`JsonErrorServer` inside)."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser, ParsingError
    from waitress.server import TcpWSGIServer
    from waitress.task import ErrorTask, WSGITask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            body = dump_json(error_body(error.reason.lower()))
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", JSON_TYPE))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class InlineTask(WSGITask):
        """A request served in the event loop's thread: the routes see
        :data:`INLINE_ENVIRON_KEY` and raise WouldBlock rather than wait."""

        def get_environment(self):
            environ = super().get_environment()
            environ[INLINE_ENVIRON_KEY] = True
            return environ

    class StrictRequestParser(HTTPRequestParser):
        def received(self, data):
            # waitress bounds a chunked body by the bytes that carry it (chunk
            # sizes, extensions, CRLFs included), so a body of exactly the
            # limit was refused when chunked and accepted with a
            # Content-Length. Count what it decoded so far, less the slack
            # the framing of this read may take (waitress adds the read's
            # bytes); the route's own read refuses a decoded body over the
            # limit.
            if self.chunked and self.body_rcv is not None:
                self.body_bytes_received = len(self.body_rcv) - CHUNK_FRAMING_SLACK_BYTES
            return super().received(data)

        def parse_header(self, header_plus):
            try:
                super().parse_header(header_plus)
            except ValueError as exc:  # int() refuses a Content-Length of over 4,300 digits
                raise ParsingError("Content-Length is invalid") from exc
            # Both framings: waitress reads the chunked body, a proxy in front
            # may read Content-Length bytes, and the rest of the stream is a
            # request one of them never saw (request smuggling). A 400, and
            # the connection closed (with what was pipelined behind it).
            if "CONTENT_LENGTH" in self.headers and (self.chunked or "TRANSFER_ENCODING" in self.headers):
                raise ParsingError("both Content-Length and Transfer-Encoding")

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask
        parser_class = StrictRequestParser
        # When the server's periodic check first saw the request being
        # received (within a second of its first byte): nothing is done per
        # read, which is the hot path of every request.
        request_started = None
        _timed_request = None  # the parser request_started belongs to
        #: its next request waits until the client reads its answers (see
        #: JsonErrorServer.add_task)
        deferred = False

        def request_age(self, now):
            """Seconds since the request being received was first seen, or
            None when none is."""
            if self.request is not self._timed_request:
                self._timed_request = self.request
                self.request_started = None if self.request is None else now
            return None if self.request_started is None else now - self.request_started

        def is_waiting(self):
            """True when nothing is being served or sent: the connection is
            idle, or a request is still arriving."""
            return not (self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed)

        _queued = 0  # bytes in the kernel's send queue at the last look
        _queued_since = 0.0  # since when that queue has not gone down

        def is_unread(self, now):
            """True when answers wait for the client, none is being written,
            and the client read nothing for the server's ``unread_deadline``
            (``now``: wall-clock seconds, as waitress' ``last_activity``,
            which a send that moved data refreshes). Answers all handed to
            the kernel but not read (its send queue, up to megabytes) count
            once that queue has not gone down for the deadline."""
            deadline = self.server.unread_deadline
            if self.requests and not self.deferred or now - self.last_activity <= deadline:
                return False
            if self.total_outbufs_len:
                return True
            queued = _unsent_bytes(self.socket)
            if not queued or queued < self._queued or not self._queued:  # nothing waits, or it moved
                self._queued, self._queued_since = queued, now
                return False
            return now - self._queued_since > deadline

        def received(self, data):
            # one read (8 KiB) may hold a hundred pipelined requests: waitress
            # would queue them all. Past MAX_PIPELINED_REQUESTS the last one
            # kept closes the connection once answered; the others are
            # dropped, and the client must send them again (as a client
            # pipelining must be ready to: RFC 9112, 9.3.2).
            result = super().received(data)
            if len(self.requests) > MAX_PIPELINED_REQUESTS:
                with self.requests_lock:
                    dropped = self.requests[MAX_PIPELINED_REQUESTS:]
                    del self.requests[MAX_PIPELINED_REQUESTS:]
                    self.requests[-1].headers["CONNECTION"] = "close"
                    if self.request is not None:
                        dropped.append(self.request)
                        self.request = None
                for request in dropped:
                    request.close()
            return result

        def handle_write(self):
            super().handle_write()
            if self.deferred and self.connected and self.total_outbufs_len <= UNSENT_ANSWER_BYTES:
                with self.outbuf_lock:
                    if not self.deferred:
                        return
                    self.deferred = False
                self.server.add_task(self)
                self.server.serve_inline()

        def handle_read(self):
            super().handle_read()
            self.server.serve_inline()

        @property
        def task_class(self):
            # Chosen by the thread that serves, never set on the channel for
            # a while: a worker may take the channel's request (handed over
            # on WouldBlock, or the next pipelined one, dispatched by the
            # loop before it is done) before the loop thread could undo it,
            # and would serve it as the loop (raising WouldBlock again: that
            # request never answered).
            return InlineTask if threading.get_ident() == self.server.loop_thread else WSGITask

        def serve_inline(self):
            """In the event loop's thread: serve the first request waiting
            (one the application answers from memory) without a worker; if
            the application would wait after all (WouldBlock, raised before
            it answers or changes anything), a worker serves it again."""
            try:
                self.service()
            except WouldBlock:
                self.requests[0].get_body_stream().seek(0)
                TcpWSGIServer.add_task(self.server, self)

    class JsonErrorServer(TcpWSGIServer):
        """Cuts every request whose head is not complete within
        ``head_deadline`` seconds of its first byte, or its body within
        ``body_deadline`` more (an idle timeout alone lets a client dribble
        one byte at a time forever); near the connection limit, closes the
        connections that wait longest (idle first, then the oldest requests
        still arriving), so a new client is always accepted.

        A client that sends requests and does not read the answers (one
        read may hold a hundred pipelined requests) holds memory: each
        connection may have at most :data:`MAX_PIPELINED_REQUESTS` requests
        waiting, its next request is served only once fewer than
        :data:`UNSENT_ANSWER_BYTES` of its answers wait unsent (the kernel's
        socket buffers hold the rest), and a connection whose answers wait
        ``unread_deadline`` seconds with nothing read is reset. The memory
        that frees is handed back to the system."""

        channel_class = JsonErrorChannel
        head_deadline = HEAD_DEADLINE_SECONDS
        body_deadline = BODY_DEADLINE_SECONDS
        unread_deadline = UNREAD_DEADLINE_SECONDS
        _next_deadline_check = 0.0
        cut = 0  # connections closed by a deadline or evicted, since the start

        _spare = None  # connection slots kept free: computed at the first turn
        #: None, or ``(method, path, body length or None) -> bool``: may the
        #: request be served in the event loop's thread (see WouldBlock)
        answers_inline = None
        loop_thread = None  # the thread id of the event loop (see _ServerThread)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._inline = []  # channels whose request the event loop serves itself, after this read

        def add_task(self, channel):
            # the answers of earlier requests wait unsent: this one waits for
            # the client to read them (the channel's handle_write dispatches
            # it), so no thread blocks on a client that does not read
            if channel.total_outbufs_len > UNSENT_ANSWER_BYTES:  # unlocked: the common case is one comparison
                with channel.outbuf_lock:
                    if channel.total_outbufs_len > UNSENT_ANSWER_BYTES and channel.connected:
                        channel.deferred = True
                        return
            # A request answered from memory is served by the event loop
            # itself once the read is done: no hand-over to a worker and
            # back, no wake-up of the loop (a third of a request's CPU).
            if self.answers_inline is not None and threading.get_ident() == self.loop_thread:
                request = channel.requests[0]
                if request.error is None and self.answers_inline(
                        request.command, request.path, None if request.chunked else request.content_length):
                    self._inline.append(channel)
                    return
            super().add_task(channel)

        def serve_inline(self):
            """Serve the requests :meth:`add_task` kept for the event loop."""
            inline = self._inline
            while inline:
                inline.pop(0).serve_inline()

        def pull_trigger(self):
            # wakes the event loop: it is awake when it is the caller
            if threading.get_ident() != self.loop_thread:
                super().pull_trigger()

        def readable(self):  # once per turn of the event loop: kept cheap
            if not self.accepting:
                return super().readable()
            now = time.monotonic()
            closed = 0
            if now >= self._next_deadline_check:
                self._next_deadline_check = now + min(1.0, self.head_deadline / 4, self.unread_deadline / 4)
                closed += self._cut_late_requests(now)
            spare = self._spare
            if spare is None:
                spare = self._spare = min(CONNECTION_SPARE, max(1, self.adj.connection_limit // 10))
            free = self.adj.connection_limit - len(self._map)
            if free < spare:
                closed += self._evict(2 * spare - free)
            if closed:
                self.cut += closed
                # channels closed now may have been registered with this
                # iteration's poll already: accept nothing until the next
                # one, so their file descriptor numbers are not reused yet
                return False
            return super().readable()

        def _cut_late_requests(self, now):
            late, unread = [], []
            wall = time.time()
            for channel in list(self.active_channels.values()):
                age = channel.request_age(now)
                if channel.is_unread(wall):
                    unread.append(channel)
                if age is None or not channel.is_waiting():
                    continue
                allowed = self.head_deadline
                if channel.request.headers_finished:
                    allowed += self.body_deadline
                if age > allowed:
                    late.append(channel)
            for channel in late:
                channel.handle_close()
            if late:
                log.debug("closed %d connection(s) that did not send their request in time", len(late))
            for channel in unread:
                try:  # a reset: the kernel drops the unsent answers now, instead of keeping them for a FIN
                    channel.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
                channel.handle_close()
            if unread:
                log.info("reset %d connection(s) whose client did not read its answers for %gs",
                         len(unread), self.unread_deadline)
                release_free_memory()
            return len(late) + len(unread)

        def _evict(self, count):
            waiting = [channel for channel in list(self.active_channels.values()) if channel.is_waiting()]
            # idle ones first, least recently active first; then requests still
            # arriving, oldest first
            waiting.sort(key=lambda channel: (channel.request is not None,
                                              channel.request_started or channel.last_activity))
            for channel in waiting[:count]:
                channel.handle_close()
            if waiting:
                log.debug("connection limit near: closed %d waiting connection(s)", min(count, len(waiting)))
            return min(count, len(waiting))

    return JsonErrorServer


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


def _unsent_bytes(sock):
    """Bytes in ``sock``'s send queue the peer has not acknowledged (Linux's
    ``SIOCOUTQ``), or 0 where that cannot be asked."""
    try:
        import fcntl
        import termios

        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return 0


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library)."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory():
    """Hand the C heap's free pages back to the system (glibc keeps the
    memory a burst of answers freed, in the middle of its heaps, otherwise:
    the process' resident size would stay at its peak)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _file_descriptor_limit(wanted):
    """Raise this process' soft limit on open files toward ``wanted`` (within
    the hard limit); return the soft limit now in force (None: unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def check_binding(service, host):
    """Refuse the default ``root:root`` credentials off loopback.

    :raises ConfigError: when ``service`` has no user configured and
        ``host`` is not a loopback address.
    """
    if not service.uses_default_users:
        return
    if not is_loopback(host):
        raise ConfigError(
            f"no user configured and {host} is not a loopback address: refusing to serve "
            "with the default root:root; give --user NAME:PASSWORD or HEARTBEAT_LITE_USERS"
        )
    log.warning("no user configured: accepting root:root, on loopback (%s) only", host)


@contextlib.contextmanager
def serve(service, host=DEFAULT_HOST, port=0, threads=DEFAULT_THREADS, *,
          head_deadline=HEAD_DEADLINE_SECONDS, body_deadline=BODY_DEADLINE_SECONDS,
          connection_limit=CONNECTION_LIMIT, unread_deadline=UNREAD_DEADLINE_SECONDS):
    """Serve ``service`` over HTTP with waitress in a background thread.

    :param service: a :class:`Service`.
    :param host: address to listen on.
    :param port: port; 0 picks a free one.
    :param threads: waitress worker threads.
    :param head_deadline: seconds a client has to send a request's head,
        from its first byte; ``body_deadline``: seconds more for its body.
    :param unread_deadline: seconds a connection's answers may wait for a
        client that reads nothing, before the connection is reset.
    :param connection_limit: open connections at most (lowered to fit the
        process' limit on open files, which is raised toward it first).
    :yields: the base URL, e.g. ``http://127.0.0.1:54321``.
    :raises ConfigError: default credentials off loopback, the address
        cannot be bound, or the database is newer than this code.

    It binds the address first, then opens the service (which resumes the
    engine), then starts its background work (the expiry scheduler): a
    start that fails has written nothing. On exit it stops listening, lets
    in-flight requests finish, stops the server thread and the background
    work, whatever happened inside the ``with`` block; the service itself
    stays open.
    """
    check_binding(service, host)
    server_class = _json_error_server_class()
    files = _file_descriptor_limit(connection_limit + threads + FILE_DESCRIPTORS_SPARE)
    if files is not None and files - threads - FILE_DESCRIPTORS_SPARE < connection_limit:
        connection_limit = max(10, files - threads - FILE_DESCRIPTORS_SPARE)
        log.warning("the limit on open files (%d) allows %d connections only", files, connection_limit)
    try:
        server = server_class(
            service.wsgi, map={}, host=host, port=port, threads=threads,
            # waitress refuses a body of its limit or more; ours are "at most"
            max_request_body_size=MAX_REQUEST_BODY_BYTES + 1, ident="heartbeat-lite",
            connection_limit=connection_limit, channel_timeout=IDLE_TIMEOUT_SECONDS,
            asyncore_use_poll=True,  # select() fails beyond 1,024 descriptors
            # a worker thread never waits for a client to read (waitress' high
            # watermark would block it): the server bounds unsent answers itself
            outbuf_high_watermark=2 ** 62,
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    server.head_deadline, server.body_deadline = head_deadline, body_deadline
    server.unread_deadline = unread_deadline
    server.answers_inline = service.web.answers_inline
    try:
        service.open()
    except BaseException:
        server.close()
        server.task_dispatcher.shutdown(timeout=1)
        raise
    runner = _ServerThread(server)
    display_host = f"[{host}]" if ":" in host else host
    if service.public_url is None:  # links in messages: the listen address (a name for a wildcard one)
        link_host = socket.getfqdn() if host in ("0.0.0.0", "::", "") else display_host
        service.set_public_url(f"http://{link_host}:{server.effective_port}")
    service.start()
    try:
        yield f"http://{display_host}:{server.effective_port}"
    finally:
        runner.stop()
        service.stop()


class _ServerThread:
    """waitress' event loop in a thread, stopped in phases: stop listening,
    let the workers finish what they have, let the loop flush their answers,
    close everything.

    The loop thread does every close itself, when told by a flag; it is woken
    by pulling waitress' trigger, under a lock that the final close takes too,
    so nothing ever writes to a closed (or, worse, reused) trigger pipe. (A
    thunk that closes the trigger races with waitress' own pull: the thunk can
    run before the pulling thread writes its wake-up byte.)
    """

    def __init__(self, server, grace=5.0):
        self.server = server
        self.grace = grace
        self._stop_listening = threading.Event()
        self._listening_stopped = threading.Event()
        self._finish = threading.Event()
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        self._thread = threading.Thread(target=self._run, name="heartbeat-lite-http", daemon=True)
        self._thread.start()

    def _run(self):
        from waitress import wasyncore

        server, adj = self.server, self.server.adj
        server.loop_thread = threading.get_ident()
        try:
            for phase_over in (self._stop_listening, self._finish):
                while not phase_over.is_set():
                    wasyncore.loop(timeout=adj.asyncore_loop_timeout, map=server._map,
                                   use_poll=adj.asyncore_use_poll, count=1)
                if phase_over is self._stop_listening:
                    wasyncore.dispatcher.close(server)  # the listening socket only
                    self._listening_stopped.set()
        finally:
            self._listening_stopped.set()
            with self._trigger_lock:
                wasyncore.close_all(server._map)
                self._trigger_closed = True

    def _wake(self):
        with self._trigger_lock:
            if not self._trigger_closed:
                self.server.trigger.pull_trigger()

    def stop(self):
        self._stop_listening.set()
        self._wake()
        self._listening_stopped.wait(self.grace)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=self.grace)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(
            channel.total_outbufs_len for channel in list(self.server.active_channels.values())
        ):
            time.sleep(0.01)
        self._finish.set()
        self._wake()
        self._thread.join(self.grace)


def _env(environ, name, default=None):
    return environ.get(ENV_PREFIX + name, default)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors as :class:`ConfigError` (one line, exit 2)."""

    def error(self, message):
        raise ConfigError(f"{message} (see --help)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HASH_PASSWORD_HELP = ("print a salted PBKDF2-SHA256 hash of a password read from stdin (or asked twice "
                      "on a terminal), for a --users-file line NAME:<hash>")


def build_parser(environ=os.environ):
    """The command-line parser. Flags left out are None: :func:`check_settings`
    takes them from their ``HEARTBEAT_LITE_<NAME>`` environment twin, or the
    default, and checks every value."""
    parser = _ArgumentParser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "heartbeat_lite.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A heartbeat monitor serving the Canopsis Heartbeat API on SQLite. "
        "Every flag has an environment\ntwin HEARTBEAT_LITE_<NAME> (e.g. HEARTBEAT_LITE_PORT); "
        "a flag given on the command line wins.",
        epilog=f"commands:\n  heartbeat_lite.py hash-password\n      {HASH_PASSWORD_HELP}\n"
               f"  heartbeat_lite.py import-healthchecks URL [--db DB]\n      {IMPORT_HEALTHCHECKS_HELP}",
    )
    parser.add_argument("--version", action="version", version=f"heartbeat-lite {__version__}")
    parser.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST}; env HEARTBEAT_LITE_HOST)")
    parser.add_argument("--port", help=f"port to listen on (default {DEFAULT_PORT}; env HEARTBEAT_LITE_PORT)")
    parser.add_argument("--db", help=f"SQLite database file, or :memory: (default ./{DEFAULT_DB}; "
                        "env HEARTBEAT_LITE_DB); its directory must exist; one service per database "
                        "(it holds <db>.lock). Or a PostgreSQL URL (postgresql://user:password@host/dbname; "
                        "needs psycopg 3), which several instances may share")
    parser.add_argument("--user", action="append", metavar="NAME:PASSWORD",
                        help="a user allowed to call the API; repeatable (env HEARTBEAT_LITE_USERS="
                        "name:password,name2:password2). With no user at all, root:root is "
                        "accepted on a loopback address only")
    parser.add_argument("--users-file", metavar="PATH",
                        help="file of users, one NAME:PASSWORD or NAME:<hash> per line (hashes from "
                        "the hash-password command); adds to --user (env HEARTBEAT_LITE_USERS_FILE)")
    parser.add_argument("--forward-url", metavar="URL",
                        help="POST every alarm and resolution, as a JSON array of Canopsis events, to "
                        "this http(s) URL (e.g. Canopsis' /api/v2/event; user:password@ in it becomes "
                        "Basic auth); at least once, in order, retried with backoff. With a password in "
                        "it, prefer the env HEARTBEAT_LITE_FORWARD_URL: the command line shows in ps")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address people reach this service at (https://hb.example.com): the base of "
                        "links in notifications, and a Host name the default root:root answers "
                        "(default: the listen address; env HEARTBEAT_LITE_PUBLIC_URL)")
    parser.add_argument("--ca-file", metavar="PATH",
                        help="certificate authorities (PEM) that notification channels' https, SMTPS and "
                        "STARTTLS connections trust besides the system's (env HEARTBEAT_LITE_CA_FILE)")
    parser.add_argument("--intake-silence", metavar="DURATION",
                        help="when no event at all arrived for this long (30s, 5m, 2h), raise one alarm "
                        "(component heartbeat-lite, resource intake) and stop every heartbeat's clock until "
                        "events come back, instead of paging for each heartbeat (default: off; "
                        "env HEARTBEAT_LITE_INTAKE_SILENCE)")
    parser.add_argument("--history-days", metavar="N",
                        help=f"days of state changes kept for GET /api/v2/heartbeat/<id>/history, pruned "
                        f"in the background (default {DEFAULT_HISTORY_DAYS}; env HEARTBEAT_LITE_HISTORY_DAYS)")
    parser.add_argument("--pings", metavar="{on,off}",
                        help="serve the ping URLs jobs already call: Healthchecks' /ping/<id>, Opsgenie's and "
                        "Uptime Kuma's (default on; env HEARTBEAT_LITE_PINGS; see docs/pings.md)")
    parser.add_argument("--ping-key", metavar="KEY",
                        help="the key of Healthchecks' slug form /ping/<key>/<slug> (default: that form is off; "
                        "env HEARTBEAT_LITE_PING_KEY, which ps does not show)")
    parser.add_argument("--genie-key", metavar="KEY",
                        help="the key Opsgenie heartbeat pings send (Authorization: GenieKey <key>) to "
                        "/v2/heartbeats/<name>/ping (default: that route is off; env HEARTBEAT_LITE_GENIE_KEY, "
                        "which ps does not show)")
    parser.add_argument("--threads", help=f"HTTP worker threads (default {DEFAULT_THREADS}; "
                        "env HEARTBEAT_LITE_THREADS)")
    parser.add_argument("--log-level", metavar="{" + ",".join(LOG_LEVELS) + "}",
                        help=f"log verbosity (default {DEFAULT_LOG_LEVEL}; env HEARTBEAT_LITE_LOG_LEVEL)")
    return parser


def _database_setting(args, environ):
    """``--db`` (or its variable), checked: a PostgreSQL URL, or a SQLite
    path whose directory exists; :raises ConfigError: naming the setting."""
    db, name = _setting(args, environ, "db", DEFAULT_DB)
    try:
        if not is_postgres_url(db):
            check_database_path(db)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return db


def _setting(args, environ, dest, default=None):
    """A setting's raw value and the name to blame it on: the flag's, when
    given; else its environment twin's, when set; else the default."""
    value = getattr(args, dest)
    if value is not None:
        return value, "--" + dest.replace("_", "-")
    variable = ENV_PREFIX + dest.upper()
    if variable in environ:
        return environ[variable], variable
    return default, "--" + dest.replace("_", "-")


def _integer(text, name, low, high):
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{name}: not a number: {text!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be {low} to {high}, not {value}")
    return value


def check_settings(args, environ):
    """Resolve every setting of ``args`` (flag, else environment twin, else
    default) and check it, in place.

    :raises ConfigError: one line naming the flag or the variable at fault.
    """
    args.port = _integer(*_setting(args, environ, "port", str(DEFAULT_PORT)), 0, 65535)
    args.threads = _integer(*_setting(args, environ, "threads", str(DEFAULT_THREADS)), 1, 1024)
    days, name = _setting(args, environ, "history_days", str(DEFAULT_HISTORY_DAYS))
    args.history_days = check_history_days(_integer(days, name, -math.inf, math.inf), name)
    level, name = _setting(args, environ, "log_level", DEFAULT_LOG_LEVEL)
    if level.strip().upper() not in LOG_LEVELS:
        raise ConfigError(f"{name}: not one of {', '.join(LOG_LEVELS)}: {level!r}")
    args.log_level = level.strip().upper()
    host, name = _setting(args, environ, "host", DEFAULT_HOST)
    if not host.strip():
        raise ConfigError(f"{name}: empty; give an address to listen on (0.0.0.0 for every IPv4 one)")
    args.host = host.strip()
    args.db = _database_setting(args, environ)
    args.forward_url, name = _setting(args, environ, "forward_url")
    args.forward_url = args.forward_url or None  # empty: no forwarding
    if args.forward_url:
        parse_forward_url(args.forward_url, name)
    public_url, name = _setting(args, environ, "public_url")
    args.public_url = check_public_url(public_url, name) if public_url else None
    ca_file, name = _setting(args, environ, "ca_file")
    args.ca_file = check_ca_file(ca_file, name) if ca_file else None
    pings, name = _setting(args, environ, "pings", "on")
    if pings.strip().lower() not in ("on", "off"):
        raise ConfigError(f"{name}: on or off, not {pings!r}")
    args.pings = pings.strip().lower() == "on"
    for dest in ("ping_key", "genie_key"):
        key, name = _setting(args, environ, dest)
        if key and not re.fullmatch(r"[\x21-\x7e]{1,256}", key):
            raise ConfigError(f"{name}: printable characters (no space), at most 256")
        if key and dest == "ping_key" and (not _PING_URL_SLUG.fullmatch(key) or _CANONICAL_ID.fullmatch(key)):
            # else no /ping/<key>/<slug> ever matches: every slug ping would be 404 not found
            raise ConfigError(f"{name}: letters, digits, - and _ only (a ping URL's path segment), and not "
                              "shaped like a heartbeat's id")
        setattr(args, dest, key or None)
    silence, name = _setting(args, environ, "intake_silence")
    args.intake_silence = None
    if silence:  # empty: off
        args.intake_silence = check_intake_silence(silence, name)
    return args


def _users_from(args, environ):
    """Users from --users-file, then --user (or, without it, HEARTBEAT_LITE_USERS)."""
    path, name = _setting(args, environ, "users_file")
    try:
        users = load_users_file(path) if path else {}
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if args.user:
        users.update(parse_users(args.user, source="--user"))
    else:
        entries = [entry.strip() for entry in _env(environ, "USERS", "").split(",") if entry.strip()]
        users.update(parse_users(entries, source="HEARTBEAT_LITE_USERS entry"))
    return users or None


def hash_password_command(stdin, stdout):
    """``hash-password``: read a password, print its hash; return the exit status."""
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("heartbeat-lite: error: the passwords differ", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        print("heartbeat-lite: error: empty password", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(PasswordHash.create(password), file=stdout)
    return 0


# -- import-healthchecks: moving in from a Healthchecks site (docs/pings.md) -----

IMPORT_HEALTHCHECKS_HELP = ("create a heartbeat for each check of a Healthchecks site (URL: its root, e.g. "
                            "https://hc.example.com; API key in HEALTHCHECKS_API_KEY), with the same UUID, so "
                            "ping URLs keep working once the host changes; writes --db directly (SQLite: with "
                            "the service stopped); run it again to bring what is new")
IMPORT_AUTHOR = "import-healthchecks"
IMPORT_TIMEOUT_SECONDS = 30
#: what a Healthchecks check may have that a heartbeat does not keep: (key, value meaning "unused", what is lost)
HEALTHCHECKS_NOT_KEPT = (
    ("tags", "", "tags"),
    ("manual_resume", False, "manual_resume (a success ping resolves it)"),
    ("methods", "", "methods (pings by GET and HEAD are accepted too)"),
    ("channels", "", "integrations (channels: make them with /api/v2/channel)"),
    ("start_kw", "", "e-mail keywords"), ("success_kw", "", "e-mail keywords"), ("failure_kw", "", "e-mail keywords"),
    ("subject", "", "e-mail keywords"), ("subject_fail", "", "e-mail keywords"),
    ("filter_subject", False, "e-mail filters"), ("filter_body", False, "e-mail filters"),
    ("filter_http_body", False, "HTTP body filters"), ("filter_default_fail", False, "HTTP body filters"),
)


def interval_text(seconds):
    """``seconds`` in the interval syntax, in the largest unit that divides it (``90m``, ``25h``, ``45s``)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def healthchecks_heartbeat(check):
    """A heartbeat's body for a Healthchecks check (a document of
    ``GET /api/v3/checks/``), and what of the check it does not keep.

    The pattern is ``{"ping": "<uuid>"}``; a simple check's
    ``expected_interval`` is timeout + grace and its ``late_after`` the
    timeout; a cron check keeps ``schedule`` and ``tz``, its grace as
    ``expected_interval``. The name is the check's (else its slug, else its
    UUID), the description its ``desc`` (cut to the limit).

    :returns: ``(body, notes)``; the body is still to be validated.
    :raises ValueError: what makes the check impossible to map.
    """
    if not isinstance(check, dict) or not isinstance(check.get("uuid"), str) \
            or not _CANONICAL_ID.fullmatch(check["uuid"]):
        hidden = isinstance(check, dict) and "unique_key" in check
        raise ValueError("no uuid" + (": a read-only API key hides it, give the project's read-write key"
                                      if hidden else ""))
    grace = check.get("grace")
    if not isinstance(grace, int) or grace < 1:
        raise ValueError(f"grace: not a positive number of seconds: {grace!r}")
    slug = check.get("slug") or None
    name = check.get("name") if isinstance(check.get("name"), str) and check["name"].strip() else None
    body = {"name": name or slug or check["uuid"], "author": IMPORT_AUTHOR,
            "pattern": {"ping": check["uuid"]}}
    notes = []
    desc = check.get("desc") or ""
    if isinstance(desc, str) and desc:
        body["description"] = desc[:MAX_TEXT_CHARS]
        if len(desc) > MAX_TEXT_CHARS:
            notes.append(f"description cut to {MAX_TEXT_CHARS} characters")
    if slug is not None:
        body["slug"] = slug
    if check.get("schedule"):  # a cron check (an OnCalendar one too: its schedule is then refused)
        body.update(schedule=check["schedule"], tz=check.get("tz") or "UTC", expected_interval=interval_text(grace))
    elif isinstance(check.get("timeout"), int) and check["timeout"] > 0:
        body.update(expected_interval=interval_text(check["timeout"] + grace),
                    late_after=interval_text(check["timeout"]))
    else:
        raise ValueError("neither a timeout nor a schedule")
    lost = []
    for key, unused, what in HEALTHCHECKS_NOT_KEPT:
        if check.get(key, unused) not in (unused, None) and what not in lost:
            lost.append(what)
    if lost:
        notes.append("not kept: " + ", ".join(lost))
    return body, notes


def fetch_healthchecks_checks(url, api_key, timeout=IMPORT_TIMEOUT_SECONDS):
    """The checks of the Healthchecks site at ``url`` (``GET /api/v3/checks/``
    with ``X-Api-Key``).

    :raises ConfigError: a URL that is not http(s), a refused key, an
        unreachable site, an answer that is not a list of checks.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"URL: the root of a Healthchecks site, such as https://hc.example.com, not {url!r}")
    endpoint = url.rstrip("/") + "/api/v3/checks/"
    request = urllib.request.Request(endpoint, headers={"X-Api-Key": api_key, "Accept": "application/json",
                                                        "User-Agent": f"heartbeat-lite/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read(64 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(f"{endpoint} refused the API key (HTTP {exc.code}): give the project's API key "
                              "in HEALTHCHECKS_API_KEY") from None
        raise ConfigError(f"{endpoint} answered HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigError(f"cannot reach {endpoint}: {getattr(exc, 'reason', exc)}") from None
    try:
        checks = json.loads(text)["checks"]
        if not isinstance(checks, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{endpoint} did not answer a list of checks (is it a Healthchecks site?)") from None
    return checks


def import_healthchecks(engine, checks, out):
    """Create a heartbeat for each of ``checks`` (see
    :func:`healthchecks_heartbeat`), with the check's UUID, paused if the
    check is; one that exists already (same id) is skipped, so a second
    run only brings what is new. Says on ``out`` what it created, skipped
    and could not map (with why). :returns: how many could not be mapped."""
    created = skipped = 0
    failed = []
    for check in checks:
        label = check.get("uuid") if isinstance(check, dict) else None
        try:
            body, notes = healthchecks_heartbeat(check)
            label = f"{check['uuid']} ({body['name']})"
            try:
                engine.document(check["uuid"])
            except NotFound:
                pass
            else:
                skipped += 1
                print(f"skipped {label}: already here", file=out)
                continue
            engine.create(validate_heartbeat(body, IMPORT_AUTHOR), check["uuid"])
            if check.get("status") == PAUSED:
                engine.pause(check["uuid"])
                notes.insert(0, "paused")
        except (ValueError, Taken) as exc:  # Invalid is a ValueError
            reason = (f"heartbeat {exc.field} already exists" if isinstance(exc, Taken)
                      else "; ".join(exc.reasons) if isinstance(exc, Invalid) else str(exc))
            failed.append(label)
            print(f"could not map {label or '(a check without uuid)'}: {reason}", file=out)
            continue
        created += 1
        print(f"created {label}" + (f" ({'; '.join(notes)})" if notes else ""), file=out)
    print(f"{created} created, {skipped} skipped, {len(failed)} could not be mapped", file=out)
    return len(failed)


def import_healthchecks_command(argv, environ, out):
    """``import-healthchecks URL [--db DB]``: return the exit status (0 every
    check mapped, 1 some could not, 2 bad usage, a wrong key or an
    unreachable site)."""
    parser = _ArgumentParser(prog="heartbeat_lite.py import-healthchecks", description=IMPORT_HEALTHCHECKS_HELP)
    parser.add_argument("url", help="the Healthchecks site's root, e.g. https://hc.example.com")
    parser.add_argument("--db", help=f"the database to write (default ./{DEFAULT_DB}; env HEARTBEAT_LITE_DB); "
                        "a SQLite file must not be in use by a running service")
    args = parser.parse_args(argv)
    api_key = environ.get("HEALTHCHECKS_API_KEY", "").strip()
    if not api_key:
        raise ConfigError("HEALTHCHECKS_API_KEY: not set; give the project's API key (Settings, API Access; "
                          "not the read-only one, which hides the checks' UUIDs)")
    args.db = _database_setting(args, environ)
    checks = fetch_healthchecks_checks(args.url, api_key)
    try:
        with create_app(db=args.db) as service:
            failed = import_healthchecks(service.engine, checks, out)
    except StoreError as exc:
        raise ConfigError(f"{database_label(args.db)}: {exc}") from None
    return 1 if failed else 0


def main(argv=None, environ=None):
    """Run the server until SIGINT or SIGTERM; return the exit status.

    A bad setting, a database in use by another service, a port in use: one
    line ``heartbeat-lite: error: ...`` on stderr, exit status 2, and the
    database untouched (the port is bound and the database locked before the
    engine resumes).
    """
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["hash-password"]:
            _ArgumentParser(prog="heartbeat_lite.py hash-password", description=HASH_PASSWORD_HELP).parse_args(
                argv[1:])
            return hash_password_command(sys.stdin, sys.stdout)
        if argv[:1] == ["import-healthchecks"]:
            return import_healthchecks_command(argv[1:], environ, sys.stdout)
        args = check_settings(build_parser(environ).parse_args(argv), environ)
        users = _users_from(args, environ)
    except ConfigError as exc:
        print(f"heartbeat-lite: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # waitress warns once per request that waits for a worker thread: under
        # load that floods the log (and the CPU) with no news
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    stop = threading.Event()
    try:
        # takes the database's lock, opens nothing; serve() binds, then opens
        service = Service(args.db, users, time.time, BUSY_TIMEOUT_SECONDS, None, args.forward_url,
                          open_now=False, intake_silence=args.intake_silence, history_days=args.history_days,
                          public_url=args.public_url, ca_file=args.ca_file, pings=args.pings,
                          ping_key=args.ping_key, genie_key=args.genie_key)
    except ConfigError as exc:
        print(f"heartbeat-lite: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with service, serve(service, args.host, args.port, args.threads) as url:
            # What was loaded lives as long as the process: keep the cyclic
            # garbage collector from walking it (100,000 heartbeats made a full
            # collection a pause of a few hundred milliseconds).
            gc.freeze()
            log.info("heartbeat-lite %s listening on %s (database %s)", __version__, url, database_label(args.db))
            if service.forwarder is not None:
                log.info("forwarding alarms to %s", service.forwarder.label)
            while not stop.wait(3600):
                pass
            log.info("shutting down")
    except ConfigError as exc:
        print(f"heartbeat-lite: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
