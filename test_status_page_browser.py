"""The status page in headless Chromium, at 1280x800 and 390x844.

    python test_status_page_browser.py [OUTDIR]   # take the screenshots for a person to look at
    python -m pytest test_status_page_browser.py  # take them and check what the browser shows

A real server on an ephemeral port, holding 2,000 heartbeats: 200 down,
some pending, the rest up, a few with very long unbroken names and patterns.
The tests skip, saying why, when Chromium is not installed (Debian:
``apt-get install chromium``), unless HEARTBEAT_LITE_TEST_CHROMIUM names
it (``.ci/run`` does): then they must run.
"""

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import heartbeat_lite

CHROMIUM = os.environ.get("HEARTBEAT_LITE_TEST_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
USER, PASSWORD = "operator", "s3cret"
LONG_NAME = "api-" + "unbroken" * 30  # 244 characters without a break opportunity
SERVICES = ("api", "backup", "billing", "cron", "db", "mail", "queue", "search", "web")

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def populate(service, count=2000, down_every=10, clock_offset=None):
    """Fill ``service`` through its engine: ``count`` heartbeats, one in
    ``down_every`` down (alarm raised an hour and a half ago), one in 7
    pending, the rest up; the first two with very long unbroken names or
    pattern values, the down one at ``down_every`` with a hostile name.
    Then one grouped heartbeat, "backups by host", of 12 members, 3 down.
    ``clock_offset``: the one-item list the service's clock adds to the
    real time (moved here to date things in the past).

    :returns: the ids, in creation order (the grouped one last).
    """
    ids = []
    clock_offset[0] = -7200.0
    with service.store.atomic():
        for i in range(count):
            name = f"{SERVICES[i % len(SERVICES)]}-{'prod' if i % 3 else 'staging'}-{i:04d}"
            pattern = {"connector": "nagios", "component": name}
            if i < 2:
                pattern["resource"] = "disk-" + "x" * 200
            if i == 0:
                name = LONG_NAME
            elif i == down_every:  # down: on the first page, the problems first
                name = "api <script>alert('hostile')</script> & co"
            interval = "30m" if i % down_every == 0 else ("24h" if i % 7 == 0 else "2h")
            ids.append(service.engine.create(heartbeat_lite.validate_heartbeat(
                {"name": name, "pattern": pattern, "expected_interval": interval,
                 "output": f"{name} sent nothing for {interval}"}, USER)))
    grouped = service.engine.create(heartbeat_lite.validate_heartbeat(
        {"name": "backups by host", "pattern": {"connector": "backup"}, "group_by": ["host"],
         "expected_interval": "30m", "output": "no backup for 30m"}, USER))
    clock_offset[0] = -3600.0
    service.engine.ingest([{"connector": "nagios", "component": f"{SERVICES[i % len(SERVICES)]}-"
                            f"{'prod' if i % 3 else 'staging'}-{i:04d}"}
                           for i in range(count) if i % down_every and i % 7])
    service.engine.ingest([{"connector": "backup", "host": f"db{n:02d}"} for n in range(12)])
    clock_offset[0] = 0.0
    service.tick()
    service.engine.ingest([{"connector": "nagios", "component": f"web-prod-{i:04d}"}
                           for i in range(count) if i % down_every])
    service.engine.ingest([{"connector": "backup", "host": f"db{n:02d}"} for n in range(3, 12)])
    return ids + [grouped]


@contextlib.contextmanager
def fixture_server(count=2000, wrap=None):
    """A served, populated service; yields ``(base URL with credentials, ids)``.
    ``wrap``: optional WSGI middleware put around the service's application."""
    offset = [0.0]
    logger = logging.getLogger("heartbeat_lite")
    level = logger.level
    logger.setLevel(logging.ERROR)  # not 200 alarm lines
    try:
        with heartbeat_lite.create_app(db=":memory:", users={USER: PASSWORD},
                                       clock=lambda: time.time() + offset[0]) as service:
            ids = populate(service, count, clock_offset=offset)
            if wrap is not None:
                service.wsgi = wrap(service.wsgi)
            with heartbeat_lite.serve(service, port=0) as url:
                yield url.replace("http://", f"http://{USER}:{PASSWORD}@"), ids
    finally:
        logger.setLevel(level)  # other tests read the log


def chromium(url, size, *args, budget_ms=1000):
    """Run headless Chromium on ``url`` at ``size`` (width, height) with more
    arguments; return its standard output."""
    with tempfile.TemporaryDirectory(prefix="hl-chromium-") as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   "--no-first-run", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                   f"--virtual-time-budget={budget_ms}", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


VIEWS = ("list", "search", "long", "detail", "grouped")


def take_screenshots(url, ids, outdir, views=VIEWS, sizes=tuple(SIZES)):
    """Screenshots of the list, a search, the longest name, a detail view
    and a grouped heartbeat's at every size; returns their paths
    (``<view>-<size>.png``)."""
    paths = {"list": "/", "search": "/?q=backup&status=down,up&page=2", "long": "/?q=unbroken",
             "detail": f"/heartbeat/{ids[0]}", "grouped": f"/heartbeat/{ids[-1]}"}
    taken = []
    for size_name in sizes:
        size = SIZES[size_name]
        for view in views:
            path = paths[view]
            target = os.path.join(outdir, f"{view}-{size_name}.png")
            chromium(url + path, size, f"--screenshot={target}")
            taken.append(target)
    return taken


def png_size(path):
    """(width, height) of a PNG file, from its header."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def recording(seen):
    """WSGI middleware noting ``(time, path, If-None-Match, status)`` of each request in ``seen``."""
    def middleware(app):
        def wsgi(environ, start_response):
            def noting_start_response(status, headers, exc_info=None):
                seen.append((time.time(), environ["PATH_INFO"], environ.get("HTTP_IF_NONE_MATCH"), status[:3]))
                return start_response(status, headers, exc_info)
            return app(environ, noting_start_response)
        return wsgi
    return middleware


@pytest.fixture(scope="module")
def served():
    seen = []
    with fixture_server(wrap=recording(seen)) as (url, ids):
        yield url, ids, seen


@needs_chromium
@pytest.mark.slow
def test_screenshots_are_taken_at_both_sizes(served, tmp_path):
    url, ids, _ = served
    paths = take_screenshots(url, ids, str(tmp_path), views=("long",))  # all of them: run the file
    assert len(paths) == 2
    for path in paths:
        expected = SIZES["desktop"] if path.endswith("-desktop.png") else SIZES["phone"]
        assert png_size(path) == expected
        assert os.path.getsize(path) > 10_000  # something was drawn


@needs_chromium
@pytest.mark.slow
def test_the_browser_runs_the_page_script_and_shows_relative_times(served):
    url, ids, seen = served
    del seen[:]
    dom = chromium(url + "/", SIZES["desktop"], "--dump-dom",
                   budget_ms=heartbeat_lite.STATUS_PAGE_REFRESH_SECONDS * 1000 + 1500)
    assert re.search(r"\d+ heartbeats and 3 members down, the oldest 5:", dom)
    assert re.search(r'<span class="muted" id="updated">updated \d\d:\d\d:\d\d UTC</span>', dom)
    assert re.search(r'title="[^"]+ UTC">(\d+ min|\d+ h) ago</time>', dom)  # the script rewrote the times
    assert "<script>alert(" not in dom and "api &lt;script&gt;alert('hostile')" in dom
    assert 'id="unreachable" role="alert" hidden=""' in dom
    # the refresh asked with the page's ETag, with the credentials: 304, unless a minute turned meanwhile
    page, refresh = [entry for entry in seen if entry[1] == "/" and entry[3] != "401"][:2]
    assert page[2] is None and refresh[2] is not None and refresh[2].startswith('W/"')
    assert refresh[3] == "304" or int(page[0] // 60) != int(refresh[0] // 60), seen


@needs_chromium
@pytest.mark.slow
def test_the_page_says_in_words_when_the_service_stops_answering():
    answered = []

    def refuse_after_the_first_page(app):
        def wsgi(environ, start_response):
            if environ["PATH_INFO"] == "/" and answered:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"down for the test"]

            def noting_start_response(status, headers, exc_info=None):
                if status.startswith("200") and environ["PATH_INFO"] == "/":
                    answered.append(status)
                return start_response(status, headers, exc_info)
            return app(environ, noting_start_response)
        return wsgi

    with fixture_server(count=20, wrap=refuse_after_the_first_page) as (url, ids):
        dom = chromium(url + "/", SIZES["phone"], "--dump-dom",
                       budget_ms=heartbeat_lite.STATUS_PAGE_REFRESH_SECONDS * 1000 + 2000)
    banner = re.search(r'<div id="unreachable" role="alert">([^<]*)</div>', dom)
    assert banner, dom[:2000]
    assert re.fullmatch(r"Service unreachable since \d\d:\d\d:\d\d UTC \(HTTP 503\); what you see is from "
                        r"\d\d:\d\d:\d\d UTC\. Retrying every \d+ s\.", banner.group(1))
    assert '<body class="stale">' in dom


def main(argv):
    if CHROMIUM is None:
        print("Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    outdir = argv[1] if len(argv) > 1 else tempfile.mkdtemp(prefix="hl-screenshots-")
    os.makedirs(outdir, exist_ok=True)
    with fixture_server() as (url, ids):
        for path in take_screenshots(url, ids, outdir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
