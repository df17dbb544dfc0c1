# /// script
# requires-python = ">=3.9"
# dependencies = ["bottle>=0.13", "waitress>=3.0"]
# ///
"""heartbeat-lite: a single-file, embeddable heartbeat monitor.

It serves the Canopsis Heartbeat API (``/api/v2/heartbeat``) on SQLite.

Public API:

- ``create_app(db=..., users=..., clock=...)`` builds a :class:`Service`: its
  ``wsgi`` attribute is a WSGI application; nothing runs in the background.
- ``serve(service, host=..., port=0)`` is a context manager that runs the real
  waitress server in a thread, yields its base URL and always stops it.
- ``main(argv)`` is the command line (``python heartbeat_lite.py --help``).

The module is laid out in layers, each under a banner: Configuration,
Validation, Store (the only SQL), Engine, Web, Server/CLI. Data flows down.
"""

import argparse
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid

import bottle

__version__ = "0.1.0"
__all__ = ["create_app", "serve", "main", "Service", "ConfigError"]

log = logging.getLogger("heartbeat_lite")
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
REALM = "heartbeat-lite"
ENV_PREFIX = "HEARTBEAT_LITE_"

SCHEMA_VERSION = 1
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")
BUSY_TIMEOUT_SECONDS = 5.0

MAX_NAME_CHARS = 255
MAX_TEXT_CHARS = 4096  # description, output
MAX_PATTERN_ENTRIES = 32
MAX_PATTERN_ITEM_CHARS = 255  # each key and each value
MAX_INTERVAL_SECONDS = 365 * 24 * 3600
MAX_HEARTBEAT_BODY_BYTES = 64 * 1024
MAX_EVENT_BODY_BYTES = 1024 * 1024
MAX_EVENTS_PER_REQUEST = 10_000
MAX_REQUEST_BODY_BYTES = max(MAX_HEARTBEAT_BODY_BYTES, MAX_EVENT_BODY_BYTES)  # the HTTP server refuses more

ALIVE_INTERVAL_SECONDS = 5.0  # how often a running service records that it is alive
SCHEDULER_RETRY_SECONDS = 1.0  # after a failed tick

EXIT_CONFIG_ERROR = 2


class ConfigError(Exception):
    """A setting that prevents the service from starting (exit status 2)."""


def parse_users(entries):
    """Parse ``name:password`` strings into a dict.

    :param entries: iterable of ``name:password`` strings; the password may
        itself contain ``:``.
    :raises ConfigError: on an entry with no ``:`` or an empty name.
    """
    users = {}
    for entry in entries:
        name, sep, password = entry.partition(":")
        if not sep or not name:
            raise ConfigError(f"a user must be given as NAME:PASSWORD, not {name or entry!r}")
        users[name] = password
    return users


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

HEARTBEAT_FIELDS = ("name", "author", "description", "pattern", "expected_interval", "output")
IGNORED_FIELDS = ("_id", "created", "updated")
_INTERVAL_RE = re.compile(r"([1-9][0-9]{0,11})([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class Invalid(ValueError):
    """Input that breaks the contract; ``reasons`` says every way it does."""

    def __init__(self, reasons):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


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


def parse_json(body):
    """Decode a request body as strict JSON.

    Strict means: UTF-8 with no BOM, no NaN/Infinity, no duplicate keys, no
    number too large to represent, nesting within the interpreter's limit.

    :param body: the raw bytes.
    :raises Invalid: with the reason.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(["body: not valid UTF-8"]) from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise Invalid(["body: nested too deeply"]) from None
    except ValueError as exc:  # JSONDecodeError and the hooks' errors
        raise Invalid([f"body: not valid JSON ({exc})"]) from None


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


def validate_heartbeat(doc, default_author):
    """Check a POST or PUT body and return the clean heartbeat fields.

    :param doc: the decoded JSON body.
    :param default_author: the author when the body gives none (the
        authenticated user).
    :returns: a dict with every key of :data:`HEARTBEAT_FIELDS` plus
        ``interval_seconds``.
    :raises Invalid: with every reason the body is refused.
    """
    if not isinstance(doc, dict):
        raise Invalid(["body: must be a JSON object"])
    reasons = []
    unknown = sorted(set(doc) - set(HEARTBEAT_FIELDS) - set(IGNORED_FIELDS))
    if unknown:
        reasons.append("unknown field(s): " + ", ".join(unknown))

    name = doc.get("name")
    if "name" not in doc:
        reasons.append("name: required")
    else:
        _check_string(reasons, "name", name, MAX_NAME_CHARS)
        if isinstance(name, str) and not name.strip():
            reasons.append("name: must not be blank")

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
    seconds = parse_interval(interval)
    if "expected_interval" not in doc:
        reasons.append("expected_interval: required")
    elif seconds is None:
        reasons.append("expected_interval: must look like 30s, 5m or 2h")
    elif seconds > MAX_INTERVAL_SECONDS:
        reasons.append("expected_interval: at most 365 days (8760h)")

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
    }


def canonical_pattern(pattern):
    """The pattern's canonical serialization: keys sorted, compact, UTF-8 text."""
    return json.dumps(pattern, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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
    bad = [i for i, event in enumerate(events) if not isinstance(event, dict)]
    if bad:
        raise Invalid([f"event {i}: must be an object" for i in bad[:10]])
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise TooLarge(f"more than {MAX_EVENTS_PER_REQUEST} events in one request")
    return events


###############################################################################
# Store
###############################################################################


class StoreError(Exception):
    """The database failed; the cause is chained (``__cause__``)."""


class NotFound(Exception):
    """No heartbeat has that id."""


class PatternExists(Exception):
    """Another heartbeat already has that pattern."""


_DOCUMENT_COLUMNS = (
    "id", "name", "author", "description", "output", "pattern", "expected_interval",
    "interval_seconds", "created", "updated",
)
_STATE_COLUMNS = ("status", "refreshed", "last_event", "alarm_since", "deadline")
_SELECT_HEARTBEAT = "SELECT " + ", ".join(_DOCUMENT_COLUMNS + _STATE_COLUMNS) + " FROM heartbeat"
_ID_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit


class Store:
    """The SQLite database: the only code in this module that speaks SQL.

    One connection, shared by all threads under a lock: SQLite writes one
    transaction at a time anyway, and each statement here takes microseconds.
    Rows come back as :class:`sqlite3.Row` (read them like dicts). Every
    sqlite3 error leaves as :class:`StoreError`.

    :param path: a file path, or ``:memory:``.
    :param busy_timeout: seconds to wait for a lock held by another
        connection before giving up with a :class:`StoreError`.
    """

    def __init__(self, path, busy_timeout=BUSY_TIMEOUT_SECONDS):
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise ConfigError(f"database directory {directory} does not exist")
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0  # nesting of atomic()
        try:
            self._conn = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _migrate(self):
        if sqlite3.sqlite_version_info < (3, 31):
            raise ConfigError(f"SQLite 3.31 or newer is needed, this Python has {sqlite3.sqlite_version}")
        try:
            with open(SCHEMA_PATH, encoding="utf-8") as f:
                schema = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the schema {SCHEMA_PATH}: {exc}") from exc
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"database {self.path} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this heartbeat-lite {__version__} knows; upgrade heartbeat-lite"
                )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.executescript(schema)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot prepare database {self.path}: {exc}") from exc

    def close(self):
        with self._lock:
            self._conn.close()

    # -- plumbing ------------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self):
        """Run the enclosed store calls as one transaction (nestable).

        The outermost level takes SQLite's write lock at once (``BEGIN
        IMMEDIATE``), commits on success and rolls back on any exception.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                self._rollback()
                raise
            self._depth = 0
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"commit failed: {exc}") from exc

    def _rollback(self):
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # no transaction left to roll back
            log.debug("rollback: %s", exc)

    def _execute(self, sql, params=()):
        with self._lock:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"{exc} (in: {sql.split()[0]} ...)") from exc

    def _executemany(self, sql, rows):
        with self._lock:
            try:
                return self._conn.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise StoreError(f"{exc} (in: {sql.split()[0]} ...)") from exc

    def _query(self, sql, params=()):
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{exc} (in: {sql.split()[0]} ...)") from exc

    # -- heartbeats ----------------------------------------------------------

    def insert_heartbeat(self, row):
        """Insert a heartbeat (a dict with every document column and
        ``refreshed``); it starts ``pending``.

        :raises PatternExists: when another heartbeat has the same pattern.
        """
        columns = _DOCUMENT_COLUMNS + ("refreshed",)
        with self.atomic():
            self._check_pattern_free(row["pattern"], row["id"])
            self._execute(
                f"INSERT INTO heartbeat ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})",
                row,
            )

    def _check_pattern_free(self, pattern, own_id):
        # Inside the write transaction, so no other writer can slip in between
        # this look-up and the write; the UNIQUE index stays the last word.
        if self._query("SELECT 1 FROM heartbeat WHERE pattern = ? AND id <> ?", (pattern, own_id)):
            raise PatternExists(pattern)

    def heartbeat(self, heartbeat_id):
        """The heartbeat row with that id (document and state).

        :raises NotFound: when there is none.
        """
        rows = self._query(f"{_SELECT_HEARTBEAT} WHERE id = ?", (heartbeat_id,))
        if not rows:
            raise NotFound(heartbeat_id)
        return rows[0]

    def heartbeats(self):
        """Every heartbeat row, newest first (ties: last inserted first)."""
        return self._query(f"{_SELECT_HEARTBEAT} ORDER BY created DESC, rowid DESC")

    def patterns(self):
        """``(id, canonical pattern)`` of every heartbeat."""
        return [(row["id"], row["pattern"]) for row in self._query("SELECT id, pattern FROM heartbeat")]

    def delete_heartbeat(self, heartbeat_id):
        """Delete a heartbeat and its state; return its row as it was.

        :raises NotFound: when there is none.
        """
        with self.atomic():
            row = self.heartbeat(heartbeat_id)
            self._execute("DELETE FROM heartbeat WHERE id = ?", (heartbeat_id,))
        return row

    # -- state ---------------------------------------------------------------

    def refresh(self, heartbeat_ids, now):
        """Record a matching event at ``now`` for each id: each goes ``up``.

        :returns: the rows, as they were, of those that were down.
        """
        with self.atomic():
            came_back = []
            for start in range(0, len(heartbeat_ids), _ID_CHUNK):
                chunk = heartbeat_ids[start:start + _ID_CHUNK]
                came_back += self._query(
                    f"{_SELECT_HEARTBEAT} WHERE status = 'down' AND id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
            self._executemany(
                "UPDATE heartbeat SET status = 'up', refreshed = ?, last_event = ?, alarm_since = NULL "
                "WHERE id = ?",
                [(now, now, heartbeat_id) for heartbeat_id in heartbeat_ids],
            )
        return came_back

    def expire(self, now):
        """Put every heartbeat whose deadline is at or before ``now`` down,
        its alarm dated by its deadline (when it really went down).

        :returns: their rows as they were, earliest deadline first.
        """
        due_sql = "WHERE status <> 'down' AND deadline <= ?"
        with self.atomic():
            due = self._query(f"{_SELECT_HEARTBEAT} {due_sql} ORDER BY deadline", (now,))
            if due:
                self._execute(f"UPDATE heartbeat SET status = 'down', alarm_since = deadline {due_sql}", (now,))
        return due

    def next_deadline(self):
        """The earliest deadline of a heartbeat that is not down, or None."""
        return self._query("SELECT MIN(deadline) FROM heartbeat WHERE status <> 'down'")[0][0]

    def alarms(self):
        """The rows of the heartbeats that are down, oldest alarm first."""
        return self._query(f"{_SELECT_HEARTBEAT} WHERE status = 'down' ORDER BY alarm_since, rowid")

    def alive_at(self):
        """When the service last recorded that it was alive, or None."""
        rows = self._query("SELECT value FROM meta WHERE key = 'alive_at'")
        return rows[0][0] if rows else None

    def set_alive(self, now):
        self._execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('alive_at', ?)", (now,))

    def postpone(self, after, seconds):
        """Move later by ``seconds`` every deadline still ahead at ``after``
        (of heartbeats that are not down); return how many moved."""
        return self._execute(
            "UPDATE heartbeat SET refreshed = refreshed + ? WHERE status <> 'down' AND deadline > ?",
            (seconds, after),
        ).rowcount

    def ping(self):
        """Raise :class:`StoreError` unless the database answers."""
        self._query("SELECT 1")


###############################################################################
# Engine
###############################################################################

PENDING, UP, DOWN = "pending", "up", "down"
ALARM_STATE, RESOLVED_STATE = 3, 0  # Canopsis check states: critical, ok


def heartbeat_document(row):
    """The API's JSON document for a heartbeat row."""
    return {
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


def api_time(value):
    """A time as the API shows it: Unix seconds to the millisecond, or None."""
    if value is None:
        return None
    value = round(value, 3)
    return int(value) if value.is_integer() else value


def status_document(row):
    """``GET /api/v2/heartbeat/<id>/status`` for a heartbeat row."""
    return {
        "_id": row["id"],
        "status": row["status"],
        "last_event": api_time(row["last_event"]),
        "deadline": api_time(row["deadline"]),
        "alarm_since": api_time(row["alarm_since"]),
    }


def alarm_event(row, state, timestamp):
    """The check event Canopsis' engine-heartbeat emits for a heartbeat.

    :param row: the heartbeat row.
    :param state: :data:`ALARM_STATE` (down) or :data:`RESOLVED_STATE`.
    :param timestamp: Unix seconds (sent as an integer, as Canopsis does).
    """
    pattern = json.loads(row["pattern"])
    return {
        "connector": "heartbeat",
        "connector_name": "heartbeat",
        "event_type": "check",
        "source_type": "resource",
        "component": "heartbeats",
        "resource": ".".join(f"{key}:{value}" for key, value in sorted(pattern.items())),
        "state": state,
        "output": row["output"],
        "timestamp": int(timestamp),
        "heartbeat_id": row["id"],
        "heartbeat_name": row["name"],
    }


def active_alarm(row):
    """An entry of ``GET /api/v2/alarms``: the alarm event plus ``since``."""
    return {**alarm_event(row, ALARM_STATE, row["alarm_since"]), "since": api_time(row["alarm_since"])}


class PatternIndex:
    """Which heartbeat owns a pattern, grouped by the pattern's key set.

    Matching an event costs one dictionary look-up per distinct key set,
    whatever the number of heartbeats. Not thread-safe: the engine's lock
    guards it.
    """

    def __init__(self):
        self._by_keys = {}  # sorted keys -> {values in that key order: heartbeat id}

    @staticmethod
    def _split(pattern):
        keys = tuple(sorted(pattern))
        return keys, tuple(pattern[key] for key in keys)

    def add(self, heartbeat_id, pattern):
        keys, values = self._split(pattern)
        self._by_keys.setdefault(keys, {})[values] = heartbeat_id

    def remove(self, pattern):
        keys, values = self._split(pattern)
        table = self._by_keys.get(keys, {})
        table.pop(values, None)
        if not table:
            self._by_keys.pop(keys, None)

    def match(self, event):
        """Ids of the heartbeats whose every ``key: value`` the event has, with
        the same string value (a number never equals a string)."""
        found = []
        for keys, table in self._by_keys.items():
            try:
                heartbeat_id = table.get(tuple(map(event.__getitem__, keys)))
            except (KeyError, TypeError):  # a key is missing; a value is a list or an object
                continue
            if heartbeat_id is not None:
                found.append(heartbeat_id)
        return found


class Engine:
    """The heartbeat rules: matching, deadlines, alarms.

    Every change runs under one lock, so the in-memory pattern index, the
    database and the order of published events agree.

    :param store: the :class:`Store`.
    :param clock: callable returning Unix seconds (float); read once per
        operation.
    :param on_alarm: optional callable receiving each alarm and resolution
        event (a dict), in order, once it is committed.
    """

    def __init__(self, store, clock, on_alarm=None):
        self.store = store
        self.clock = clock
        self._on_alarm = on_alarm
        self._lock = threading.RLock()
        self._index = PatternIndex()
        for heartbeat_id, pattern in store.patterns():
            self._index.add(heartbeat_id, json.loads(pattern))
        self._alive_recorded = None
        #: when the next tick is expected (clock time); a deadline earlier than
        #: this calls :attr:`waker`
        self.next_tick_at = float("inf")
        #: called when a deadline earlier than :attr:`next_tick_at` appears
        #: (the scheduler's wake-up); None when nothing runs in the background
        self.waker = None

    # -- heartbeats ----------------------------------------------------------

    def create(self, fields):
        """Create a heartbeat from validated fields; return its id.

        :raises PatternExists: when another heartbeat has the pattern.
        """
        with self._lock:
            now = self.clock()
            row = {
                "id": str(uuid.uuid4()),
                "name": fields["name"],
                "author": fields["author"],
                "description": fields["description"],
                "output": fields["output"],
                "pattern": canonical_pattern(fields["pattern"]),
                "expected_interval": fields["expected_interval"],
                "interval_seconds": fields["interval_seconds"],
                "created": int(now),
                "updated": int(now),
                "refreshed": now,
            }
            self.store.insert_heartbeat(row)
            self._index.add(row["id"], fields["pattern"])
            self._deadline_added(now + fields["interval_seconds"])
        log.info("heartbeat %s created (%r, pattern %s)", row["id"], row["name"], row["pattern"])
        return row["id"]

    def get(self, heartbeat_id):
        """The heartbeat document; :raises NotFound:."""
        return heartbeat_document(self.store.heartbeat(heartbeat_id))

    def list(self):
        """Every heartbeat document, newest first."""
        return [heartbeat_document(row) for row in self.store.heartbeats()]

    def delete(self, heartbeat_id):
        """Delete a heartbeat and its state, resolving its alarm if it is
        down; :raises NotFound:."""
        with self._lock:
            now = self.clock()
            row = self.store.delete_heartbeat(heartbeat_id)
            self._index.remove(json.loads(row["pattern"]))
            log.info("heartbeat %s deleted (%r)", row["id"], row["name"])
            if row["status"] == DOWN:
                self._publish([alarm_event(row, RESOLVED_STATE, now)])

    def status(self, heartbeat_id):
        """The heartbeat's state document; :raises NotFound:."""
        return status_document(self.store.heartbeat(heartbeat_id))

    def alarms(self):
        """The active alarms, oldest first."""
        return [active_alarm(row) for row in self.store.alarms()]

    # -- events and time -----------------------------------------------------

    def ingest(self, events):
        """Refresh every heartbeat an event matches, at the receive time.

        :param events: validated events (dicts).
        :returns: the ids refreshed, in order of first match, no duplicates.
        """
        with self._lock:
            now = self.clock()
            matched = {}
            for event in events:
                for heartbeat_id in self._index.match(event):
                    matched[heartbeat_id] = None
            matched = list(matched)
            if not matched:
                return matched
            came_back = self.store.refresh(matched, now)
            if came_back:
                self._publish([alarm_event(row, RESOLVED_STATE, now) for row in came_back])
                self._deadline_added(now + min(row["interval_seconds"] for row in came_back))
        return matched

    def tick(self):
        """Put down every heartbeat whose deadline has passed, raising its
        alarm; record that the service is alive.

        :returns: seconds until the next deadline, or None when no heartbeat
            can go down.
        """
        with self._lock:
            now = self.clock()
            with self.store.atomic():
                expired = self.store.expire(now)
                self._record_alive(now)
            self._publish([alarm_event(row, ALARM_STATE, row["deadline"]) for row in expired])
            next_deadline = self.store.next_deadline()
            delay = None if next_deadline is None else max(0.0, next_deadline - now)
            self.next_tick_at = now + min(ALIVE_INTERVAL_SECONDS, float("inf") if delay is None else delay)
        return delay

    def resume(self):
        """At start: stop the clock for the time the service was not running.

        Every deadline still ahead when the service last recorded it was
        alive moves later by the length of the outage; heartbeats already down
        stay down.
        """
        with self._lock:
            now = self.clock()
            moved = 0
            with self.store.atomic():
                alive_at = self.store.alive_at()
                if alive_at is not None and now > alive_at:
                    moved = self.store.postpone(alive_at, now - alive_at)
                self._record_alive(now, force=True)
        if moved:
            log.info("resumed after %.1fs without service: %d deadline(s) moved later", now - alive_at, moved)

    def record_alive(self):
        """Record now as the last time the service was alive (at shutdown)."""
        with self._lock:
            self._record_alive(self.clock(), force=True)

    def _record_alive(self, now, force=False):
        last = self._alive_recorded
        if force or last is None or not 0 <= now - last < ALIVE_INTERVAL_SECONDS:
            self.store.set_alive(now)
            self._alive_recorded = now

    def _deadline_added(self, deadline):
        if deadline < self.next_tick_at and self.waker is not None:
            self.waker()

    def _publish(self, events):
        for event in events:
            if event["state"] == ALARM_STATE:
                log.warning("alarm: heartbeat %s (%r) is down: no matching event for %s",
                            event["heartbeat_id"], event["heartbeat_name"], event["resource"])
            else:
                log.info("resolved: heartbeat %s (%r)", event["heartbeat_id"], event["heartbeat_name"])
            if self._on_alarm is not None:
                try:
                    self._on_alarm(event)
                except Exception:  # the embedder's bug must not stop the engine
                    log.exception("on_alarm callback failed for %s", event["heartbeat_id"])


class Scheduler:
    """Server mode: a thread that ticks the engine when the earliest deadline
    is due (and every few seconds to record that the service is alive),
    sleeping in between; the engine wakes it when an earlier deadline appears.
    """

    def __init__(self, engine):
        self.engine = engine
        self._wake = threading.Event()
        self._stopping = False
        self._thread = None

    def start(self):
        if self._thread is not None:
            return
        self._stopping = False
        self.engine.waker = self._wake.set
        self._thread = threading.Thread(target=self._run, name="heartbeat-lite-scheduler", daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is None:
            return
        self._stopping = True
        self.engine.waker = None
        self._wake.set()
        self._thread.join()
        self._thread = None

    def _run(self):
        while not self._stopping:
            self._wake.clear()
            try:
                self.engine.tick()
                wait = self.engine.next_tick_at - self.engine.clock()
            except StoreError as exc:
                log.error("expiry failed, retrying in %.0fs: %s", SCHEDULER_RETRY_SECONDS, exc)
                wait = SCHEDULER_RETRY_SECONDS
            except Exception:  # a bug: say it loudly, but keep alarms flowing
                log.exception("expiry failed, retrying in %.0fs", SCHEDULER_RETRY_SECONDS)
                wait = SCHEDULER_RETRY_SECONDS
            self._wake.wait(max(0.0, wait))


###############################################################################
# Web
###############################################################################

JSON_TYPE = "application/json"
INVALID_HEARTBEAT = "invalid heartbeat payload."
PATTERN_EXISTS = "heartbeat pattern already exists"
NOT_FOUND = "heartbeat not found"
INVALID_EVENT = "invalid event payload."
DATABASE_ERROR = "database error, please contact your administrator."


class ApiError(Exception):
    """An error answer: status, the documented body, extra headers."""

    def __init__(self, status, description, name="", headers=None, **extra):
        super().__init__(description)
        self.status = status
        self.body = {"name": name, "description": description, **extra}
        self.headers = headers or {}


def dump_json(value):
    """JSON bytes as the API sends them: UTF-8, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")


def json_response(value, status=200, headers=None):
    response = bottle.HTTPResponse(dump_json(value), status)
    response.set_header("Content-Type", JSON_TYPE)
    for name, header in (headers or {}).items():
        response.set_header(name, header)
    return response


class Authenticator:
    """HTTP Basic credentials checked in constant time.

    :param users: dict of name to password.
    """

    def __init__(self, users):
        self._users = {name.encode("utf-8"): password.encode("utf-8") for name, password in users.items()}
        self._decoy = b"\0" * 32  # compared against when the name is unknown

    def user(self, header):
        """The user name the ``Authorization`` header proves, or None."""
        credentials = bottle.parse_auth(header) if header else None
        if not credentials:
            return None
        name, password = (part.encode("utf-8", "surrogateescape") for part in credentials)
        expected = self._users.get(name)
        ok = hmac.compare_digest(password, expected if expected is not None else self._decoy)
        return credentials[0] if ok and expected is not None else None


class WebApi:
    """The bottle routes: parse the request, call the engine, format the answer.

    :param engine: the :class:`Engine`.
    :param authenticator: the :class:`Authenticator` guarding ``/api/``.
    """

    def __init__(self, engine, authenticator):
        self.engine = engine
        self.auth = authenticator
        self.app = bottle.Bottle()
        self.app.uninstall(True)  # no JSON/template plugins: every route returns an HTTPResponse
        self.app.default_error_handler = self._bottle_error
        self._route("/api/v2/heartbeat", "POST", self.create_heartbeat)
        self._route("/api/v2/heartbeat", "GET", self.list_heartbeats)
        self._route("/api/v2/heartbeat/<heartbeat_id>", "GET", self.get_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>", "DELETE", self.delete_heartbeat)
        self._route("/api/v2/heartbeat/<heartbeat_id>/status", "GET", self.heartbeat_status)
        self._route("/api/v2/event", "POST", self.post_events)
        self._route("/api/v2/alarms", "GET", self.list_alarms)

    def _route(self, path, method, handler, authenticated=True):
        wrapped = self._wrap(handler, authenticated)
        for variant in (path, path + "/"):
            self.app.route(variant, method, wrapped)

    def _wrap(self, handler, authenticated):
        """The one place where exceptions become JSON answers."""

        def wrapper(**kwargs):
            try:
                if authenticated:
                    kwargs["user"] = self._authenticate()
                return handler(**kwargs)
            except ApiError as exc:
                return json_response(exc.body, exc.status, exc.headers)
            except TooLarge as exc:
                return json_response({"name": "", "description": str(exc)}, 413)
            except StoreError as exc:
                log.error("database error on %s %s: %s", bottle.request.method, bottle.request.path,
                          exc, exc_info=exc.__cause__ is None)
                return json_response({"name": "", "description": DATABASE_ERROR}, 400)
            except Exception:
                log.exception("unexpected error on %s %s", bottle.request.method, bottle.request.path)
                return json_response({"name": "", "description": "internal error"}, 500)

        return wrapper

    def _bottle_error(self, error):
        """bottle's own errors (unknown path, wrong method, ...) as JSON."""
        if error.status_code >= 500:
            log.error("unhandled error: %s", error.exception, exc_info=error.exception)
        bottle.response.content_type = JSON_TYPE
        descriptions = {404: "not found", 405: "method not allowed"}
        description = descriptions.get(error.status_code, error.status_line.split(" ", 1)[-1].lower())
        return dump_json({"name": "", "description": description})

    def _authenticate(self):
        user = self.auth.user(bottle.request.environ.get("HTTP_AUTHORIZATION"))
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
        fields = self._heartbeat_body(user)
        try:
            heartbeat_id = self.engine.create(fields)
        except PatternExists:
            raise ApiError(400, PATTERN_EXISTS) from None
        return json_response({"name": "heartbeat created", "description": heartbeat_id})

    def _heartbeat_body(self, user):
        body = self._read_body(MAX_HEARTBEAT_BODY_BYTES)
        try:
            return validate_heartbeat(parse_json(body), default_author=user)
        except Invalid as exc:
            raise ApiError(400, INVALID_HEARTBEAT, errors=exc.reasons) from None

    def list_heartbeats(self, user):
        return json_response(self.engine.list())

    def get_heartbeat(self, heartbeat_id, user):
        try:
            return json_response(self.engine.get(heartbeat_id))
        except NotFound:
            raise ApiError(404, NOT_FOUND, name=heartbeat_id) from None

    def delete_heartbeat(self, heartbeat_id, user):
        try:
            self.engine.delete(heartbeat_id)
        except NotFound:
            raise ApiError(404, NOT_FOUND, name=heartbeat_id) from None
        return json_response({"name": "heartbeat removed", "description": heartbeat_id})

    def heartbeat_status(self, heartbeat_id, user):
        try:
            return json_response(self.engine.status(heartbeat_id))
        except NotFound:
            raise ApiError(404, NOT_FOUND, name=heartbeat_id) from None

    def post_events(self, user):
        body = self._read_body(MAX_EVENT_BODY_BYTES)
        try:
            events = validate_events(parse_json(body))
        except Invalid as exc:
            raise ApiError(400, INVALID_EVENT, errors=exc.reasons) from None
        return json_response({"received": len(events), "matched": self.engine.ingest(events)})

    def list_alarms(self, user):
        return json_response(self.engine.alarms())


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
            body = [dump_json({"name": "", "description": "internal error"})]
            seen.append("500 Internal Server Error")
            start_response(seen[-1], [("Content-Type", JSON_TYPE)], sys.exc_info())
        if access_log.isEnabledFor(logging.INFO):
            path = environ.get("PATH_INFO", "")
            if environ.get("QUERY_STRING"):
                path += "?" + environ["QUERY_STRING"]
            access_log.info('%s "%s %s" %s %.1fms', environ.get("REMOTE_ADDR", "-"),
                            environ.get("REQUEST_METHOD"), path,
                            seen[-1].split(" ", 1)[0] if seen else "-",
                            (time.perf_counter() - started) * 1000)
        return body

    return wsgi


class Service:
    """One heartbeat-lite instance: its store, engine and WSGI application.

    Build it with :func:`create_app`. Nothing runs in the background until
    :meth:`start` (which :func:`serve` calls); embedded, call :meth:`tick`.
    Two services in one process share nothing. Use it as a context manager,
    or call :meth:`close`.
    """

    def __init__(self, db, users, clock, busy_timeout, on_alarm):
        self.uses_default_users = users is None
        self.store = Store(db, busy_timeout=busy_timeout)
        try:
            self.engine = Engine(self.store, clock, on_alarm=on_alarm)
            self.engine.resume()
        except StoreError as exc:
            self.store.close()
            raise ConfigError(f"cannot start on database {db}: {exc}") from exc
        self.scheduler = Scheduler(self.engine)
        self.web = WebApi(self.engine, Authenticator(DEFAULT_USERS if users is None else users))
        #: the bottle application (routes, for inspection or mounting)
        self.app = self.web.app
        #: the WSGI application: the bottle app with access log and a JSON last resort
        self.wsgi = _access_logged(self.app)

    def tick(self):
        """Run expiry now, against the service's clock.

        :returns: seconds until the next deadline, or None.
        """
        return self.engine.tick()

    def start(self):
        """Start the background work of server mode: the expiry scheduler."""
        self.scheduler.start()

    def stop(self):
        """Stop the background work; the service can still be used embedded."""
        self.scheduler.stop()

    def close(self):
        """Stop background work, record the shutdown time, close the database."""
        self.stop()
        try:
            self.engine.record_alive()
        except StoreError as exc:
            log.error("could not record the shutdown time: %s", exc)
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create_app(db=":memory:", users=None, clock=time.time, busy_timeout=BUSY_TIMEOUT_SECONDS,
               on_alarm=None):
    """Build a :class:`Service`; nothing runs in the background.

    :param db: SQLite file path, or ``:memory:``.
    :param users: dict of user name to password; None means ``root:root``,
        which :func:`serve` accepts only on a loopback address.
    :param clock: callable returning Unix seconds (float); inject a fake one
        in tests and call ``service.tick()`` after moving it.
    :param busy_timeout: seconds to wait for a database lock held elsewhere.
    :param on_alarm: callable receiving every alarm (``state`` 3) and
        resolution (``state`` 0) event, in order, after it is committed.
    :raises ConfigError: when the database cannot be opened or prepared.
    """
    return Service(db, users, clock, busy_timeout, on_alarm)


###############################################################################
# Server / CLI
###############################################################################


def _json_error_server_class():
    """waitress' server class, answering its own HTTP errors (malformed request,
    body too large) in JSON like the rest of the API."""
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            body = dump_json({"name": "", "description": error.reason.lower()})
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", JSON_TYPE))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    class JsonErrorServer(TcpWSGIServer):
        channel_class = JsonErrorChannel

    return JsonErrorServer


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
def serve(service, host=DEFAULT_HOST, port=0, threads=DEFAULT_THREADS):
    """Serve ``service`` over HTTP with waitress in a background thread.

    :param service: a :class:`Service`.
    :param host: address to listen on.
    :param port: port; 0 picks a free one.
    :param threads: waitress worker threads.
    :yields: the base URL, e.g. ``http://127.0.0.1:54321``.
    :raises ConfigError: default credentials off loopback, or the address
        cannot be bound.

    It starts the service's background work (the expiry scheduler). On exit
    it stops listening, lets in-flight requests finish, stops the server
    thread and the background work, whatever happened inside the ``with``
    block; the service itself stays open.
    """
    check_binding(service, host)
    server_class = _json_error_server_class()
    try:
        server = server_class(
            service.wsgi, map={}, host=host, port=port, threads=threads,
            max_request_body_size=MAX_REQUEST_BODY_BYTES, ident="heartbeat-lite",
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    thread = threading.Thread(target=server.run, name="heartbeat-lite-http", daemon=True)
    thread.start()
    service.start()
    display_host = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{display_host}:{server.effective_port}"
    finally:
        _stop_server(server, thread)
        service.stop()


def _stop_server(server, thread, grace=5.0):
    from waitress import wasyncore

    # Stop listening (in the loop's own thread), then let the workers finish
    # what they have, let the loop flush their answers, and close everything.
    server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(server))
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=grace)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(
        channel.total_outbufs_len for channel in list(server.active_channels.values())
    ):
        time.sleep(0.01)
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    thread.join(grace)


def _env(environ, name, default=None):
    return environ.get(ENV_PREFIX + name, default)


def build_parser(environ=os.environ):
    """The command-line parser; each flag's default comes from its
    ``HEARTBEAT_LITE_<NAME>`` environment twin."""
    parser = argparse.ArgumentParser(
        prog="heartbeat_lite.py",
        description="A heartbeat monitor serving the Canopsis Heartbeat API on SQLite. "
        "Every flag has an environment twin HEARTBEAT_LITE_<NAME> (e.g. HEARTBEAT_LITE_PORT); "
        "a flag given on the command line wins.",
    )
    parser.add_argument("--version", action="version", version=f"heartbeat-lite {__version__}")
    parser.add_argument("--host", default=_env(environ, "HOST", DEFAULT_HOST),
                        help=f"address to listen on (default {DEFAULT_HOST}; env HEARTBEAT_LITE_HOST)")
    parser.add_argument("--port", type=int, default=_env(environ, "PORT", str(DEFAULT_PORT)),
                        help=f"port to listen on (default {DEFAULT_PORT}; env HEARTBEAT_LITE_PORT)")
    parser.add_argument("--db", default=_env(environ, "DB", DEFAULT_DB),
                        help=f"SQLite database file, or :memory: (default ./{DEFAULT_DB}; "
                        "env HEARTBEAT_LITE_DB); its directory must exist")
    parser.add_argument("--user", action="append", metavar="NAME:PASSWORD",
                        help="a user allowed to call the API; repeatable (env HEARTBEAT_LITE_USERS="
                        "name:password,name2:password2). With no user at all, root:root is "
                        "accepted on a loopback address only")
    parser.add_argument("--threads", type=int, default=_env(environ, "THREADS", str(DEFAULT_THREADS)),
                        help=f"HTTP worker threads (default {DEFAULT_THREADS}; env HEARTBEAT_LITE_THREADS)")
    parser.add_argument("--log-level", default=_env(environ, "LOG_LEVEL", DEFAULT_LOG_LEVEL),
                        type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help=f"log verbosity (default {DEFAULT_LOG_LEVEL}; env HEARTBEAT_LITE_LOG_LEVEL)")
    return parser


def _users_from(args, environ):
    if args.user:
        return parse_users(args.user)
    env_users = _env(environ, "USERS", "")
    entries = [entry for entry in env_users.split(",") if entry.strip()]
    return parse_users(entry.strip() for entry in entries) if entries else None


def main(argv=None, environ=None):
    """Run the server until SIGINT or SIGTERM; return the exit status."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    try:
        if not 0 <= args.port <= 65535 or args.threads < 1:
            raise ConfigError("--port must be 0 to 65535 and --threads at least 1")
        service = create_app(db=args.db, users=_users_from(args, environ))
    except ConfigError as exc:
        print(f"heartbeat-lite: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with service, serve(service, args.host, args.port, args.threads) as url:
            log.info("heartbeat-lite %s listening on %s (database %s)", __version__, url,
                     os.path.abspath(args.db) if args.db != ":memory:" else ":memory:")
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
