"""The README and docs/*.md show commands; every one a test can run runs here.

One mechanism for every page:

- Each ```sh block runs with bash, the page's blocks in order, against a
  real server started by the test (``heartbeat_lite.serve(service,
  port=0)``, a fresh database per page); the documented base URL
  ``http://localhost:8082`` becomes the server's. Shell variables carry
  from one block to the next, as they would in a reader's terminal.
- Time is the server's injected clock. ``sleep N`` in a block moves that
  clock N seconds and runs ``service.tick()`` (what the server's scheduler
  does by itself when real seconds pass), so a story that waits for a
  deadline runs in milliseconds and gives the same answers every time.
- A ``# {...}`` or ``# [...]`` comment right after a command is the answer
  it shows (a JSON value, possibly continued on the next ``#`` lines): the
  real answer must have its shape, the same keys and the same literal
  values, except ids (UUIDs) and times (keys such as ``created`` or
  ``deadline``: the same type only). Any request answered 4xx or 5xx must be
  one whose answer the page shows that way.
- ```python blocks run in-process, a page's blocks in one namespace, in
  order, in a scratch directory; a block that is a test module (it defines
  ``test_`` functions) runs on its own with pytest, and must pass.
- ```log blocks are log lines the page says the service writes while its
  commands run: each must have been logged (its timestamp and ids aside).
- A block that cannot run here (it installs packages, starts a server in
  the foreground, needs PostgreSQL or a production host) has the comment
  ``<!-- not run: <reason> -->`` right before it; each is listed as a
  skipped test with its reason. ``<!-- new server: key=value ... -->``
  before a block starts a fresh server (fresh database) with those
  ``create_app`` arguments for it and the blocks after it.

Shell blocks must be tagged ``sh`` (no ``bash`` or ``console``), so none
escapes. Links between the pages must resolve, anchors included.
"""

import dataclasses
import http.server
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import heartbeat_lite

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENTED_BASE_URL = "http://localhost:8082"
PAGES = ["README.md"] + sorted(  # docs/ and its folders (docs/channels/)
    os.path.relpath(os.path.join(folder, name), HERE).replace(os.sep, "/")
    for folder, _, names in os.walk(os.path.join(HERE, "docs")) for name in names if name.endswith(".md"))

FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
MARKER = re.compile(r"<!--\s*(?P<kind>not run|new server)\s*:\s*(?P<argument>.*?)\s*-->\s*\Z", re.S)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Keys whose values are times: an answer must give the same type, not the same value.
TIME_KEYS = {"created", "updated", "last_event", "deadline", "alarm_since", "since", "timestamp", "at",
             "received", "until", "start", "end"}
# The project's design notes are not in the repository: no page may send a
# reader there (spelt in two halves so that this file does not either).
OUTSIDE_DOCUMENT = "DES" + "IGN"
LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
BLOCK_TIMEOUT_SECONDS = 60


@dataclasses.dataclass
class Block:
    page: str
    line: int
    lang: str
    body: str
    marker: str = None  # "not run", "new server" or None
    argument: str = ""

    @property
    def where(self):
        return f"{self.page}:{self.line}"


def read_page(page):
    with open(os.path.join(HERE, page), encoding="utf-8") as f:
        return f.read()


def blocks_of(page):
    """The fenced blocks of a page, with the marker comment right before each."""
    text, found, previous_end = read_page(page), [], 0
    for match in FENCE.finditer(text):
        indent = match.group("indent")
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in match.group("body").splitlines(keepends=True))
        marker = MARKER.search(text[previous_end:match.start()].rstrip())
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, match.group("lang").strip(), body,
                           marker and marker.group("kind"), marker.group("argument") if marker else ""))
        previous_end = match.end()
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


###############################################################################
# Expected answers
###############################################################################


def segments(block):
    """A sh block cut after each answer it shows: ``[(code, expected or None)]``."""
    lines, cut, code, index = block.body.splitlines(), [], [], 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not (line.startswith("# {") or line.startswith("# [")):
            code.append(line)
            continue
        texts = [line[2:]]
        while True:
            try:
                expected = json.loads(" ".join(texts))
                break
            except ValueError:
                if index < len(lines) and lines[index].startswith("#"):
                    texts.append(lines[index][1:].strip())
                    index += 1
                else:
                    raise AssertionError(f"{block.where}: the answer shown after a command is not JSON: {texts[0]}")
        cut.append(("\n".join(code), expected))
        code = []
    if any(line.strip() for line in code):
        cut.append(("\n".join(code), None))
    return cut


def json_values(text):
    """Every JSON object or array in ``text`` (what curl printed), in order."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index] in "{[":
            try:
                value, end = decoder.raw_decode(text, index)
            except ValueError:
                index += 1
                continue
            values.append(value)
            index = end
        else:
            index += 1
    return values


def kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def shape_differences(expected, actual, path="$"):
    """How ``actual`` differs from the shape of ``expected`` (empty: it has it)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {kind(actual)} where the page shows an object"]
        if set(expected) != set(actual):
            return [f"{path}: keys {sorted(actual)} where the page shows {sorted(expected)}"]
        differences = []
        for key, value in expected.items():
            if key in TIME_KEYS:
                if kind(value) != kind(actual[key]):
                    differences.append(f"{path}.{key}: {kind(actual[key])} where the page shows a {kind(value)}")
            else:
                differences += shape_differences(value, actual[key], f"{path}.{key}")
        return differences
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {json.dumps(actual)[:3000]} where the page shows {len(expected)} item(s)"]
        return [difference for position, (one, other) in enumerate(zip(expected, actual))
                for difference in shape_differences(one, other, f"{path}[{position}]")]
    if isinstance(expected, str) and UUID.fullmatch(expected):
        return [] if isinstance(actual, str) and UUID.fullmatch(actual) else [f"{path}: {actual!r} is not an id"]
    if kind(expected) != kind(actual) or expected != actual:
        return [f"{path}: {json.dumps(actual)} where the page shows {json.dumps(expected)}"]
    return []


def test_the_shape_check_tells_ids_and_times_from_values():
    shown = {"name": "heartbeat created", "description": "eaadc64a-a0ef-4c5c-8453-a45e574fd5ca",
             "deadline": 1607680934.25, "alarm_since": None, "matched": ["cf7097b6-71ba-48db-a749-e9474aa70c93"]}
    same = {"name": "heartbeat created", "description": "0b5a8a0e-8d0b-4d0f-9f53-0e6f3a3f1a11",
            "deadline": 1795665859, "alarm_since": None, "matched": ["6af0babd-c087-40ff-8e2f-f403d10f6dff"]}
    assert shape_differences(shown, same) == []
    assert shape_differences(shown, {**same, "name": "heartbeat removed"})
    assert shape_differences(shown, {**same, "alarm_since": 12.5})
    assert shape_differences(shown, {**same, "description": "not an id"})
    assert shape_differences(shown, {**same, "matched": []})
    assert shape_differences(shown, {**same, "extra": 1})
    assert shape_differences({"state": 3}, {"state": 3.0}) == []
    assert shape_differences({"ok": True}, {"ok": 1})
    assert json_values('HTTP/1.1 200 OK\r\nLink: </x>; rel="next"\r\n\r\n[{"a": 1}]{"b": [2]}\n') == [[{"a": 1}], {"b": [2]}]


###############################################################################
# The server a page's commands talk to
###############################################################################


class Clock:
    """The service's clock: frozen, moved by the pages' ``sleep``."""

    def __init__(self, now):
        self.now = now
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            return self.now

    def advance(self, seconds):
        with self.lock:
            self.now += seconds


class PageServer:
    """A real server for one page's commands, a control endpoint for the
    shell's ``sleep``, and a record of every request it answered."""

    def __init__(self, directory):
        self.directory = directory
        self.clock = Clock(round(time.time(), 3))  # so that `date` in a page agrees with the service
        self.requests = []  # (segment, method, path, status)
        self.segment = None
        self.count = 0
        self.service = self.base_url = self._serving = None
        self.control = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._control_handler())
        threading.Thread(target=self.control.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.control_url = f"http://127.0.0.1:{self.control.server_address[1]}"

    def start(self, **options):
        self.stop()
        self.count += 1
        self.service = heartbeat_lite.create_app(
            db=os.path.join(self.directory, f"page-{self.count}.db"), clock=self.clock, **options)
        self.service.wsgi = self._recorded(self.service.wsgi)
        self._serving = heartbeat_lite.serve(self.service, port=0)
        self.base_url = self._serving.__enter__()

    def stop(self):
        if self._serving is not None:
            self._serving.__exit__(None, None, None)
            self.service.close()
            self._serving = None

    def close(self):
        self.stop()
        self.control.shutdown()
        self.control.server_close()

    def _recorded(self, wsgi):
        def recorded(environ, start_response):
            def recording(status, headers, exc_info=None):
                self.requests.append((self.segment, environ["REQUEST_METHOD"], environ["PATH_INFO"],
                                      int(status.split(" ", 1)[0])))
                return start_response(status, headers, exc_info)

            return wsgi(environ, recording)

        return recorded

    def _control_handler(self):
        server = self

        class Control(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                _, action, argument = self.path.split("/", 2)
                if action == "sleep":
                    server.clock.advance(float(argument))
                    server.service.tick()
                elif action == "segment":
                    server.segment = urllib.parse.unquote(argument)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        return Control


SHELL_PRELUDE = r"""
set -euo pipefail
sleep() { curl -sf "$DOCS_CONTROL/sleep/$1" >/dev/null; }  # the service's clock moves, then it ticks
docs_segment() { curl -sf "$DOCS_CONTROL/segment/$1" >/dev/null; printf '\n\036%s\036\n' "$1"; }
"""

# After a block, the variables it set (not those bash sets itself) are saved
# for the next block.
SHELL_SAVE = r"""
for docs_name in $(compgen -v); do
    case " $DOCS_INITIAL_VARIABLES " in *" $docs_name "*) ;; *) declare -p "$docs_name" ;; esac
done > "$DOCS_STATE"
"""


def scratch_directory(tmp_path):
    """A directory holding the repository's top-level files but its tests (so
    `python heartbeat_lite.py` works there) and a bin/ where `python` is
    this one."""
    work = tmp_path / "work"
    work.mkdir()
    for name in os.listdir(HERE):
        if os.path.isfile(os.path.join(HERE, name)) and not re.match(r"test_|conftest|pg_testing|pytest", name):
            os.symlink(os.path.join(HERE, name), work / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):  # a script, not a symlink: a venv's python finds its venv by its own path
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return work, bin_dir


def run_shell_block(block, server, work, env, state_file):
    cut = segments(block)
    script = [SHELL_PRELUDE, f"[ -f {state_file} ] && source {state_file}"]
    for number, (code, _) in enumerate(cut):
        script += [f"docs_segment {block.line}.{number}", code.replace(DOCUMENTED_BASE_URL, server.base_url)]
    script.append(SHELL_SAVE)
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_SECONDS)
    assert result.returncode == 0, (f"{block.where}: the block failed (exit {result.returncode})\n"
                                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    outputs = dict(re.findall(r"\x1e(\d+\.\d+)\x1e\n(.*?)(?=\n\x1e|\Z)", result.stdout, re.S))
    for number, (code, expected) in enumerate(cut):
        key = f"{block.line}.{number}"
        failed = [request for request in server.requests if request[0] == key and request[3] >= 400]
        assert not failed or expected is not None, (
            f"{block.where}: {failed} answered an error the page does not show, after:\n{code}")
        if expected is None:
            continue
        values = json_values(outputs.get(key, ""))
        assert values, f"{block.where}: no JSON answer where the page shows one, after:\n{code}"
        differences = shape_differences(expected, values[-1])
        assert not differences, (f"{block.where}: the answer differs from the one shown, after:\n{code}\n"
                                 + "\n".join(differences))


def run_test_module(block, tmp_path, work, env):
    """A ```python block that is a test module runs with pytest, on its own."""
    directory = tmp_path / f"example-{block.line}"
    directory.mkdir()
    (directory / f"test_example_{block.line}.py").write_text(block.body, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."], cwd=directory,
                            env={**env, "PYTHONPATH": str(work)}, capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_SECONDS)
    assert result.returncode == 0, f"{block.where}: the test module failed\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


def log_line_pattern(line):
    parts = UUID.split(LOG_TIMESTAMP.sub("", line.strip()))
    return re.compile(UUID.pattern.join(re.escape(part) for part in parts))


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def run_page(page, tmp_path, monkeypatch):
    blocks = [block for block in blocks_of(page) if block.lang in ("sh", "python", "log")]
    work, bin_dir = scratch_directory(tmp_path)
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("HEARTBEAT_LITE_") and name not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    state_file = tmp_path / "shell-state"
    namespace = {"__name__": "__docs__"}
    records = Records()
    logger = logging.getLogger("heartbeat_lite")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    server = PageServer(str(tmp_path))
    try:
        server.start()
        env["DOCS_CONTROL"] = server.control_url
        env["DOCS_STATE"] = str(state_file)
        env["DOCS_INITIAL_VARIABLES"] = subprocess.run(
            ["bash", "-c", "set -euo pipefail; docs_segment() { :; }; sleep() { :; }; compgen -v | tr '\\n' ' '"],
            env=env, capture_output=True, text=True, check=True).stdout + " docs_name"
        monkeypatch.chdir(work)
        for block in blocks:
            if block.marker == "not run":
                continue
            if block.marker == "new server":
                options = dict(option.split("=", 1) for option in block.argument.split())
                server.start(**{name: json_value_or_text(value) for name, value in options.items()})
            if block.lang == "sh":
                run_shell_block(block, server, work, env, state_file)
            elif block.lang == "python" and re.search(r"^def test_", block.body, re.M):
                run_test_module(block, tmp_path, work, env)
            elif block.lang == "python":
                exec(compile(block.body, block.where, "exec"), namespace)
    finally:
        server.close()
        logger.removeHandler(records)
        logger.setLevel(level)
    for block in blocks:
        if block.lang == "log" and block.marker != "not run":
            for line in filter(str.strip, block.body.splitlines()):
                pattern = log_line_pattern(line)
                assert any(pattern.search(logged) for logged in records.lines), (
                    f"{block.where}: the service did not log {line!r}; it logged:\n" + "\n".join(records.lines))


def json_value_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


###############################################################################
# The tests
###############################################################################


@pytest.mark.parametrize("page", [page for page in PAGES if any(
    block.lang in ("sh", "python") and block.marker != "not run" for block in blocks_of(page))])
def test_the_commands_a_page_shows_run_as_shown(page, tmp_path, monkeypatch):
    run_page(page, tmp_path, monkeypatch)


@pytest.mark.parametrize("block", [block for block in ALL_BLOCKS if block.marker == "not run"],
                         ids=lambda block: block.where)
def test_a_block_not_run_says_why(block):
    assert block.lang in ("sh", "python", "log"), f"{block.where}: a ```{block.lang} block is never run anyway"
    assert len(block.argument) >= 10, f"{block.where}: say why the block cannot run"
    pytest.skip(f"{block.where}: not run: {block.argument}")


def test_every_shell_block_is_tagged_sh():
    untagged = [block.where for block in ALL_BLOCKS if block.lang in ("bash", "shell", "console", "zsh", "")]
    assert not untagged, f"tag shell blocks ```sh (and others with their language): {untagged}"


def test_the_readme_and_docs_stay_within_the_repository():
    for page in PAGES:
        text = read_page(page)
        assert OUTSIDE_DOCUMENT not in text, f"{page} refers to a document that is not in the repository"
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            assert os.path.exists(os.path.join(HERE, resolved)), f"{page}: a link to {target}, which does not exist"
            if anchor and resolved.endswith(".md"):
                assert anchor in anchors(resolved), f"{page}: a link to {target}, which has no such heading"


def anchors(page):
    """The anchors GitHub gives a page's headings."""
    found, seen = set(), {}
    text = FENCE.sub("", read_page(page))
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_the_readme_is_a_welcome_not_the_reference():
    readme = read_page("README.md")
    assert len(readme.splitlines()) <= 250
    assert len([page for page in PAGES if page.startswith("docs/")]) >= 5
    for page in PAGES[1:]:
        assert f"({page})" in readme, f"the README does not link to {page}"


# The four curl commands of the Canopsis document the API was built from
# (its ids replaced by the shell variable the page keeps the id in).
SEED_COMMANDS = [
    "curl -X POST -u root:root -H \"Content-Type: application/json\" -d '{\n"
    '  "author": "créateur",\n  "name": "Heartbeat",\n  "description": "Ceci est une description",\n'
    '  "expected_interval": "1m",\n  "output": "Une note personnalisable",\n  "pattern": {\n'
    '    "connector": "connect",\n    "connector_name": "c01"\n  }\n'
    "}' 'http://localhost:8082/api/v2/heartbeat'",
    'curl -X DELETE -u root:root "http://localhost:8082/api/v2/heartbeat/$ID"',
    'curl -X GET -u root:root "http://localhost:8082/api/v2/heartbeat/$ID"',
    "curl -X GET -u root:root 'http://localhost:8082/api/v2/heartbeat'",
]


@pytest.mark.parametrize("command", SEED_COMMANDS, ids=["create", "delete", "get", "list"])
def test_the_seed_examples_run_in_the_api_reference(command):
    run = [block.body for block in blocks_of("docs/api.md") if block.lang == "sh" and block.marker != "not run"]
    assert any(command in body for body in run)
