"""The operator console (docs/operations.md), through webtest with a fake clock:
problems first, late shown as late, exact counts, grouped heartbeats' rows
and alarms, the forms (pause, resume, acknowledge, maintenance for 1 h)
and the cross-site check, the ways to feed a heartbeat, per-table phone
labels, channel health on both pages."""

import html as html_module
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.parse

import pytest
import webtest

import heartbeat_lite
from testing_support import T0, body, client, create, grouped, host, parse_prometheus, send, window


def names(html):
    """The heartbeat names of the list, in order."""
    table = html.split('<table class="heartbeats">', 1)[1] if '<table class="heartbeats">' in html else ""
    return re.findall(r'<tr><td><a href="/heartbeat/[^"]+">([^<]*)</a></td>', table)


def alarm_box(html):
    return html.split('<section class="alarms">')[1].split("</section>")[0]


def row_of(html, name):
    """The list's row of the heartbeat called ``name``."""
    return re.search(r"<tr><td><a [^>]*>" + re.escape(name) + r"</a></td>.*?</tr>", html, re.S).group(0)


@pytest.fixture
def mixed(app, service, clock):
    """Five heartbeats by name: "a up", "b down", "c late", "d pending",
    "e down"; returns {name: id}."""
    ids = {name: create(app, body(name=name, pattern={"job": name}, expected_interval=interval, late_after=late))
           for name, interval, late in (("a up", "1h", None), ("b down", "1m", None), ("c late", "1h", "1m"),
                                        ("d pending", "1h", None), ("e down", "1m", None))}
    send(app, [{"job": "a up"}, {"job": "b down"}, {"job": "c late"}, {"job": "e down"}])
    clock.advance(61)
    send(app, [{"job": "a up"}])
    service.tick()
    return ids


def test_the_list_shows_the_problems_first_down_then_late_then_the_rest_by_name(app, mixed):
    html = app.get("/").text
    assert names(html) == ["b down", "e down", "c late", "a up", "d pending"]
    assert "5 heartbeats, problems first (down, then late), then by name." in html
    assert names(app.get("/?q=down").text) == ["b down", "e down"]  # filters and search keep the order
    assert names(app.get("/?status=up,late,down").text) == ["b down", "e down", "c late", "a up"]


def test_late_is_shown_as_late_and_never_counted_as_down(app, mixed):
    html = app.get("/").text
    assert ">down 2</a>" in html and ">late 1</a>" in html
    box = alarm_box(html)
    assert "<h2>2 heartbeats down, 1 heartbeat late</h2>" in box
    marked = re.findall(r'<li><span class="badge (\w+)">\w+</span> <a [^>]*><strong>([^<]*)</strong>', box)
    assert sorted(marked) == [("down", "b down"), ("down", "e down"), ("late", "c late")]
    assert app.get("/").html.title.string == "2 down, 1 late - heartbeat-lite"
    filtered = app.get("/?q=pending").text
    assert ('2 heartbeats down, 1 heartbeat late: <a href="?status=down">show the 2 down</a>, '
            '<a href="?status=late">show the 1 late</a>') in filtered


def test_a_heartbeat_in_maintenance_is_counted_once(app, service, clock):
    for name in ("db1", "db2", "web"):
        create(app, body(name=name, pattern={"component": name}, expected_interval="1h"))
    window(app, T0 - 60, T0 + 3600, pattern={"component": "db1"})
    html = app.get("/").text
    assert ">maintenance 1</a>" in html and ">pending 3</a>" in html
    assert ">all 3</a>" in html  # not 4
    assert "1 heartbeat matching (of 3)" in app.get("/?status=maintenance").text
    assert "2 heartbeats matching (of 3)" in app.get("/?q=db").text


def test_a_grouped_heartbeats_row_shows_its_members_last_event_and_oldest_alarm(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, [host("h1"), host("h2"), host("h3"), host("h4")])
    clock.advance(30)
    send(app, [host("h4")])
    clock.advance(31)
    service.tick()  # h1..h3 down at T0 + 60
    clock.advance(10)
    send(app, [host("h4")])  # its latest event: T0 + 71
    html = app.get("/").text
    row = row_of(html, "backups")
    assert "never" not in row and "down since" in row
    assert 'title="2020-12-11 10:01:25 UTC"' in row  # last event T0 + 71
    assert 'down since <time datetime="2020-12-11T10:01:14Z"' in row  # the oldest member alarm, T0 + 60
    detail = app.get(f"/heartbeat/{heartbeat_id}").text
    assert 'title="2020-12-11 10:01:25 UTC"' in detail and "2020-12-11T10:01:14Z" in detail
    # the alarm box names each down member, and says members, not heartbeats
    box = alarm_box(html)
    assert "<h2>3 members down</h2>" in box
    assert re.findall(r"member <code>([^<]*)</code>", box) == ["host: h1", "host: h2", "host: h3"]
    assert app.get("/").html.title.string == "1 down - heartbeat-lite"  # the heartbeat, in the chips and title


def test_metrics_give_a_grouped_heartbeat_its_members_last_event(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, [host("h1")])
    clock.advance(5)
    send(app, [host("h2")])
    samples = parse_prometheus(app.get("/metrics").text)
    key = ("heartbeat_lite_heartbeat_last_event_timestamp_seconds", (("id", heartbeat_id), ("name", "backups")))
    assert samples[key] == T0 + 5


###############################################################################
# Forms
###############################################################################

SAME_ORIGIN = {"Origin": "http://localhost:80", "Sec-Fetch-Site": "same-origin"}


def act(app, heartbeat_id, action, status=303, headers=SAME_ORIGIN, **form):
    return app.post(f"/heartbeat/{heartbeat_id}/{action}", form, headers=headers, status=status,
                    extra_environ={"HTTP_HOST": "localhost:80"})


def test_pause_and_resume_forms_say_what_they_did(app, service, clock):
    heartbeat_id = create(app)
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert f'<form method="post" action="/heartbeat/{heartbeat_id}/pause"><button>Pause</button></form>' in html
    answer = act(app, heartbeat_id, "pause")
    assert answer.headers["Location"] == f"http://localhost:80/heartbeat/{heartbeat_id}?done=paused"
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "paused"
    page = app.get(f"/heartbeat/{heartbeat_id}?done=paused").text
    assert '<p class="done" role="status">Paused: no alarm from it until it is resumed' in page
    assert f'action="/heartbeat/{heartbeat_id}/resume"><button>Resume</button>' in page
    act(app, heartbeat_id, "resume")
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "pending"
    assert "Resumed:" in app.get(f"/heartbeat/{heartbeat_id}?done=resumed").text
    assert 'class="done"' not in app.get(f"/heartbeat/{heartbeat_id}?done=<script>").text


def test_the_acknowledge_form_acknowledges_the_open_alarm_with_its_comment(app, service, clock):
    heartbeat_id = create(app)
    assert "Acknowledge</button>" not in app.get(f"/heartbeat/{heartbeat_id}").text  # nothing to acknowledge
    act(app, heartbeat_id, "ack", status=409)
    clock.advance(61)
    service.tick()
    assert "Acknowledge</button>" in app.get(f"/heartbeat/{heartbeat_id}").text
    answer = act(app, heartbeat_id, "ack", comment="on it, disk full")
    assert answer.headers["Location"].endswith("?done=acked")
    ack = app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["ack"]
    assert ack["by"] == "root" and ack["comment"] == "on it, disk full"
    page = app.get(f"/heartbeat/{heartbeat_id}?done=acked").text
    assert "Acknowledged:" in page and "on it, disk full" in page and "Acknowledge</button>" not in page


def test_the_maintenance_form_opens_an_hour_long_window_of_the_heartbeats_pattern(app, service, clock):
    heartbeat_id = create(app, body(name="db", pattern={"component": "db1"}))
    wider = create(app, body(name="db disk", pattern={"component": "db1", "resource": "disk"}))
    other = create(app, body(name="web", pattern={"component": "web"}))
    answer = act(app, heartbeat_id, "maintenance")
    assert answer.headers["Location"].endswith("?done=maintenance")
    [created] = app.get("/api/v2/maintenance").json
    assert created["pattern"] == {"component": "db1"} and created["name"] == "1 h from the page of db"
    until = T0 + heartbeat_lite.MAINTENANCE_FORM_SECONDS
    for covered in (heartbeat_id, wider):  # a window selects every heartbeat whose pattern holds its pairs
        assert app.get(f"/api/v2/heartbeat/{covered}/status").json["maintenance"]["until"] == until
    assert app.get(f"/api/v2/heartbeat/{other}/status").json["maintenance"] is None
    page = app.get(f"/heartbeat/{heartbeat_id}?done=maintenance").text
    assert "every other whose pattern holds all of these pairs" in page
    assert "Maintenance for 1 h</button>" not in page  # in maintenance already


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"},
])
@pytest.mark.parametrize("action", ["pause", "resume", "ack", "maintenance"])
def test_forms_are_refused_cross_site_like_the_api(app, service, clock, headers, action):
    heartbeat_id = create(app)
    clock.advance(61)
    service.tick()
    answer = act(app, heartbeat_id, action, status=403, headers=headers)
    assert answer.json == {"name": "", "description": "cross-site request refused"}
    state = app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json
    assert state["status"] == "down" and "ack" not in state and state["maintenance"] is None
    assert app.get("/api/v2/maintenance").json == []


def test_forms_need_credentials_and_a_known_heartbeat(app, service):
    heartbeat_id = create(app)
    anonymous = webtest_app(service)
    assert anonymous.post(f"/heartbeat/{heartbeat_id}/pause", status=401).json["description"] == \
        "authentication required"
    assert app.post("/heartbeat/5a0b0b2c-0000-4000-8000-000000000000/pause", status=404).json["description"] == \
        "heartbeat not found"
    app.post(f"/heartbeat/{heartbeat_id}/delete", status=404)
    app.get(f"/heartbeat/{heartbeat_id}/pause", status=405)


def webtest_app(service):
    return webtest.TestApp(service.wsgi)


###############################################################################
# Feeding it; phones; channel health
###############################################################################


def test_a_heartbeat_page_says_how_to_feed_it_ready_to_copy(app, service):
    heartbeat_id = create(app, body(pattern={"connector": "backup", "component": "it's db1"}))
    html = app.get(f"/heartbeat/{heartbeat_id}", extra_environ={"HTTP_HOST": "127.0.0.1:8082"}).text
    feed = html.split('<section class="feed">')[1].split("</section>")[0]
    ping = f"http://127.0.0.1:8082/ping/{heartbeat_id}"
    assert f'<pre id="feed-ping">{ping}</pre>' in feed
    assert f'<pre id="feed-cron">job &amp;&amp; curl -fsS -m 10 --retry 3 {ping}</pre>' in feed
    curl = re.search(r'<pre id="feed-event">([^<]*)</pre>', feed).group(1)
    assert html_module.unescape(curl) == ("curl -fsS -u USER:PASSWORD -d "
                                          """'{"component": "it'"'"'s db1", "connector": "backup"}' """
                                          "http://127.0.0.1:8082/api/v2/event")
    assert feed.count('class="copy"') == 3 and feed.count(" hidden>Copy</button>") == 3  # shown by the script
    assert html.index('<section class="feed">') > html.index("</main>")  # not refreshed


def test_the_ping_url_on_the_page_pings_it(app, service):
    heartbeat_id = create(app)
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    ping = re.search(r'<pre id="feed-ping">([^<]*)</pre>', html).group(1)
    assert webtest_app(service).get(urllib.parse.urlsplit(ping).path).text == "OK"  # no credentials
    assert app.get(f"/api/v2/heartbeat/{heartbeat_id}/status").json["status"] == "up"


def test_with_pings_off_the_page_shows_no_ping_url(clock):
    with heartbeat_lite.create_app(db=":memory:", clock=clock, pings=False) as service:
        app = client(service)
        heartbeat_id = create(app)
        html = app.get(f"/heartbeat/{heartbeat_id}").text
        assert "/ping/" not in html and "Pings are off on this service" in html
        assert 'id="feed-event"' in html


def test_the_event_curl_of_a_grouped_heartbeat_names_its_group_keys(app):
    heartbeat_id = grouped(app)
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "(each member with its own host)" in html
    assert "{&quot;connector&quot;: &quot;backup&quot;, &quot;host&quot;: &quot;&lt;host&gt;&quot;}" in html


def test_the_event_curl_works_as_pasted(app, service):
    heartbeat_id = create(app, body(pattern={"connector": "backup", "component": "it's db1"}))
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    curl = re.search(r'<pre id="feed-event">([^<]*)</pre>', html).group(1)
    words = shlex.split(html_module.unescape(curl))
    assert words[:4] == ["curl", "-fsS", "-u", "USER:PASSWORD"] and words[4] == "-d"
    assert send(app, json.loads(words[5]))["matched"] == [heartbeat_id]


def test_each_table_wears_its_own_labels_on_a_phone(app, service, clock):
    heartbeat_id = grouped(app)
    send(app, [host("h1")])
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert '<table class="members">' in html and '<table class="history">' in html
    style = html.split("@media (max-width: 40rem)")[1]
    assert '.members td:nth-child(2)::before { content: "Status"; }' in style
    assert '.history td:nth-child(1)::before { content: "When"; }' in style
    assert '.heartbeats td:nth-child(3)::before { content: "Every"; }' in style
    assert not re.search(r"(^|[;}]\s*)td:nth-child", style, re.M)  # no label for every table
    assert '<table class="heartbeats">' in app.get("/").text


def test_channel_health_is_at_the_top_of_both_pages(app):
    heartbeat_id = create(app)
    for path in ("/", f"/heartbeat/{heartbeat_id}"):
        live = app.get(path).text.split('<main id="live"', 1)[1]
        assert live.split(">", 1)[1].lstrip().startswith(
            '<p class="banner" role="alert">alarms reach no channel at all'), path


###############################################################################
# Slips
###############################################################################


def test_an_embedding_program_that_configured_no_logging_gets_no_alarm_lines_on_stderr(tmp_path):
    """The library's logger has a NullHandler: Python's last-resort handler
    (warnings and worse, to stderr) stays out of a program's output."""
    program = tmp_path / "embed.py"
    program.write_text(
        "import heartbeat_lite\n"
        "now = [1_800_000_000.0]\n"
        "service = heartbeat_lite.create_app(clock=lambda: now[0])\n"
        "service.engine.create(heartbeat_lite.validate_heartbeat(\n"
        "    {'name': 'b', 'pattern': {'job': 'b'}, 'expected_interval': '1m'}, 'me'))\n"
        "now[0] += 61\n"
        "service.tick()\n"
        "assert service.engine.alarms()\n"
        "service.close()\n")
    here = os.path.dirname(os.path.abspath(heartbeat_lite.__file__))
    done = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": here})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
