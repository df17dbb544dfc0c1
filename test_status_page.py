"""The operator pages: the status page (search, filters, pages, alarm
summary, gzip, conditional refresh) and a heartbeat's page, through
webtest with a fake clock; the timeline SVG on plain data. What a browser
shows is in test_status_page_browser.py."""

import datetime
import gzip
import io
import json
import re
import sys

import pytest

import heartbeat_lite
from heartbeat_lite import STATUS_PAGE_ALARMS_SHOWN, STATUS_PAGE_ROWS, timeline_svg
from testing_support import HOSTILE, body, client, create, send

BAD_PARAMETERS = "invalid status page parameters."


def add(service, count, start=0, **changes):
    """``count`` heartbeats through the engine in one transaction, named
    ``hb 00000`` ... and matching ``{"host": "h<i>"}``; returns their ids."""
    with service.store.atomic():
        return [service.engine.create(heartbeat_lite.validate_heartbeat(
            body(**{"name": f"hb {i:05d}", "pattern": {"host": f"h{i}"}, **changes}), "root"))
            for i in range(start, start + count)]


def names(html):
    """The heartbeat names of the table, in order."""
    table = html.split("<tbody>", 1)[1] if "<tbody>" in html else ""
    return re.findall(r'<tr><td><a href="/heartbeat/[^"]+">([^<]*)</a></td>', table)


def live(html):
    """The part of the page the script refreshes."""
    return html.split('<main id="live"', 1)[1].split("</main>", 1)[0]


def raw_get(service, path, **headers):
    """One GET straight through WSGI (webtest would decode gzip for us);
    returns (status, headers dict, body bytes)."""
    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "test",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
               "HTTP_AUTHORIZATION": "Basic cm9vdDpyb290"}
    environ.update({"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()})
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(response_headers)

    answer = b"".join(service.wsgi(environ, start_response))
    return int(seen["status"][:3]), seen["headers"], answer


###############################################################################
# Search, filters, pages
###############################################################################


def test_the_list_is_by_name_a_page_at_a_time(app, service):
    add(service, 250)
    first = app.get("/").text
    assert names(first) == [f"hb {i:05d}" for i in range(100)]
    assert "1–100 of 250, problems first (down, then late), then by name." in first
    assert 'href="?page=2" rel="next"' in first and 'href="?page=3">last' in first and "page 1 of 3" in first
    last = app.get("/?page=3").text
    assert names(last) == [f"hb {i:05d}" for i in range(200, 250)]
    assert "201–250 of 250" in last and 'href="?page=2" rel="prev"' in last and "rel=\"next\"" not in last


def test_a_page_past_the_end_shows_the_last_one(app, service):
    add(service, 150)
    html = app.get("/?page=40").text
    assert names(html) == [f"hb {i:05d}" for i in range(100, 150)] and "page 2 of 2" in html


@pytest.mark.parametrize("query,reason", [
    ("page=0", "page: "), ("page=-1", "page: "), ("page=two", "page: "), ("page=1.5", "page: "),
    ("page=%EF%BC%91", "page: "),  # a full-width digit one
    (f"page={heartbeat_lite.MAX_PAGE_NUMBER + 1}", "page: "),
    ("status=broken", "status: broken unknown"), ("status=down,Up", "status: Up unknown"),
    ("q=" + "x" * (heartbeat_lite.MAX_SEARCH_CHARS + 1), "q: at most"),
    ("q=%FF", "not valid UTF-8"), ("q=%ED%A0%80", "not valid UTF-8"),  # a lone surrogate
])
def test_bad_parameters_get_a_json_400_with_the_reason(app, query, reason):
    answer = app.get("/?" + query, status=400)
    assert answer.content_type == "application/json"
    assert answer.json["description"] == BAD_PARAMETERS and answer.json["name"] == ""
    assert any(reason in error for error in answer.json["errors"]), answer.json


def test_every_reason_is_given_at_once_and_unknown_parameters_are_ignored(app):
    errors = app.get("/?page=0&status=nope&utm_source=mail", status=400).json["errors"]
    assert len(errors) == 2
    app.get("/?utm_source=mail&page=1", status=200)


def test_status_filters_combine_and_counts_cover_everything(app, service, clock):
    add(service, 3, expected_interval="1m")  # hb 00000..00002 go down
    add(service, 4, start=3, expected_interval="1h")
    send(app, {"host": "h3"})
    clock.advance(61)
    send(app, {"host": "h4"})
    service.tick()
    for query in ("status=down", "status=down&status=", "status=%20down%20,"):
        assert names(app.get("/?" + query).text) == ["hb 00000", "hb 00001", "hb 00002"]
    html = app.get("/?status=up,pending").text
    assert names(html) == ["hb 00003", "hb 00004", "hb 00005", "hb 00006"]
    assert names(app.get("/?status=up&status=down").text) == ["hb 00000", "hb 00001", "hb 00002", "hb 00003",
                                                                  "hb 00004"]
    assert names(app.get("/?status=late,paused,maintenance").text) == []
    # counts over every heartbeat whatever the filter; each link toggles its status
    assert ">down 3</a>" in html and ">pending 2</a>" in html and ">up 2</a>" in html and ">late 0</a>" in html
    assert ">all 7</a>" in html and "4 heartbeats matching (of 7)" in html
    assert 'href="?status=down%2Cpending%2Cup" class=""' in html  # add down
    assert 'href="?status=pending" class="on"' in html  # remove up
    assert 'href="?" class="">all' in html


def test_search_finds_words_in_names_and_patterns(app, service):
    create(app, body(name="Nightly BACKUP of db1", pattern={"connector": "backup", "component": "db1"}))
    create(app, body(name="web front", pattern={"connector": "nagios", "component": "web1"}))
    create(app, body(name="100% sure_thing", pattern={"connector": "x"}))
    create(app, body(name="1000 sureXthing", pattern={"connector": "y"}))
    assert names(app.get("/?q=backup").text) == ["Nightly BACKUP of db1"]  # name and pattern, any case
    assert names(app.get("/?q=connector:nagios").text) == ["web front"]  # as the pattern reads, quotes aside
    assert names(app.get("/?q=db1+nightly").text) == ["Nightly BACKUP of db1"]  # every word, anywhere
    assert names(app.get("/?q=db1+web").text) == []
    assert names(app.get("/?q=100%25").text) == ["100% sure_thing"]  # % and _ are literal
    assert names(app.get("/?q=sure_").text) == ["100% sure_thing"]
    html = app.get("/?q=nothing+like+it").text
    assert "No heartbeat matches “nothing like it”." in html and "No heartbeat yet" not in html
    assert 'name="q" value="nothing like it"' in html


def test_search_and_filter_links_keep_each_other(app, service, clock):
    add(service, 250, expected_interval="1m")
    clock.advance(61)
    service.tick()
    html = app.get("/?q=hb&status=down&page=2").text
    assert 'href="?q=hb&amp;status=down&amp;page=3" rel="next"' in html
    assert 'href="?q=hb&amp;status=down%2Cpending" class=""' in html
    assert '<input type="hidden" name="status" value="down">' in html


###############################################################################
# Size, compression, refresh
###############################################################################


@pytest.mark.slow
def test_ten_thousand_heartbeats_make_a_page_under_200_kb(app, service, clock):
    ids = add(service, 10_000, expected_interval="1m")
    with service.store.atomic():
        for i, heartbeat_id in enumerate(ids[:50]):  # long names and patterns where the page shows them
            service.engine.update(heartbeat_id, heartbeat_lite.validate_heartbeat(body(
                name=f"hb {i:05d} " + "n" * 240, output="o" * 4096,
                pattern={f"key{k}": f"{i}-" + "v" * 200 for k in range(4)}), "root"))
    clock.advance(61)
    service.tick()  # 10,000 alarms
    page = app.get("/")
    assert len(names(page.text)) == STATUS_PAGE_ROWS and "10,000 heartbeats down, the oldest 5:" in page.text
    assert len(page.body) <= 200_000
    status, headers, zipped = raw_get(service, "/", accept_encoding="gzip")
    assert len(zipped) <= len(page.body) / 4


def test_the_page_is_gzipped_only_for_clients_that_accept_it(app, service):
    add(service, 30)
    plain = app.get("/").body
    for accepted in ("gzip", "deflate, gzip;q=0.5", "*", "br, GZIP"):
        status, headers, answer = raw_get(service, "/", accept_encoding=accepted)
        assert status == 200 and headers["Content-Encoding"] == "gzip" and headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(answer) == plain
    for refused in ("", "identity", "gzip;q=0", "gzip;q=0.0, *", "*;q=0", "br"):
        status, headers, answer = raw_get(service, "/", accept_encoding=refused)
        assert "Content-Encoding" not in headers and headers["Vary"] == "Accept-Encoding" and answer == plain


def test_the_refresh_gets_a_304_until_something_changes(app, service, clock):
    add(service, 3)
    first = app.get("/?status=pending")
    etag = first.headers["ETag"]
    assert etag.startswith('W/"') and f'data-etag="{etag.replace(chr(34), "&quot;")}"' in first.text
    assert first.headers["Cache-Control"] == "no-cache"
    clock.advance(20)  # time passes: the page reads the same
    again = app.get("/?status=pending", headers={"If-None-Match": etag}, status=304)
    assert again.body == b"" and again.headers["ETag"] == etag
    assert raw_get(service, "/?status=pending", if_none_match=etag.removeprefix("W/"),
                   accept_encoding="gzip")[0] == 304
    app.get("/?status=down", headers={"If-None-Match": etag}, status=200)  # another view
    send(app, {"host": "h1"})  # a change
    changed = app.get("/?status=pending", headers={"If-None-Match": etag}, status=200)
    assert changed.headers["ETag"] != etag and names(changed.text) == ["hb 00000", "hb 00002"]


def test_the_page_loads_nothing_from_elsewhere_and_refreshes_itself(app):
    html = app.get("/").text
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", html)
    assert 'rel="icon" href="data:,"' in html  # no favicon request either
    assert "<script src" not in html and html.count("<script>") == 1
    assert f"setInterval(refresh, {heartbeat_lite.STATUS_PAGE_REFRESH_SECONDS * 1000});" in html
    assert '"If-None-Match": live.dataset.etag' in html and "answer.status !== 304" in html
    assert 'name="viewport"' in html and "@media (max-width: 40rem)" in html
    assert "overflow-wrap: anywhere" in html and "--pending: #d4a72c" in html  # amber, not brown


def test_the_script_says_in_words_since_when_the_service_is_unreachable(app):
    html = app.get("/").text
    assert '<div id="unreachable" role="alert" hidden></div>' in html
    assert '"Service unreachable since " + utc(failingSince)' in html
    assert 'new Date(ms).toISOString().slice(11, 19) + " UTC"' in html  # 12:03:04 UTC
    assert "banner.hidden = true" in html  # and says nothing once it answers again


###############################################################################
# Alarms, escaping, first steps
###############################################################################


def test_many_alarms_are_summed_up_with_the_oldest_few(app, service, clock):
    ids = []
    for i in range(12):
        ids += add(service, 1, start=i, expected_interval="1m")
        clock.advance(10)
    clock.advance(60)
    service.tick()
    html = live(app.get("/").text)
    summary = html.split('<section class="alarms">')[1].split("</section>")[0]
    assert "12 heartbeats down, the oldest 5:" in summary
    assert re.findall(r"<strong>([^<]*)</strong>", summary) == [f"hb {i:05d}" for i in range(STATUS_PAGE_ALARMS_SHOWN)]
    assert f'href="/heartbeat/{ids[0]}"' in summary
    assert '<a href="?status=down">All 12 heartbeats down</a>' in summary
    assert app.get("/").html.title.string == "12 down - heartbeat-lite"
    filtered = live(app.get("/?status=up").text)
    assert '<section class="alarms">' not in filtered
    assert '12 heartbeats down: <a href="?status=down">show the 12 down</a>' in filtered


def test_a_few_alarms_are_all_named_and_none_is_said(app, service, clock):
    assert "No active alarm." in app.get("/").text
    add(service, 2, expected_interval="1m")
    clock.advance(61)
    service.tick()
    summary = app.get("/").text.split('<section class="alarms">')[1].split("</section>")[0]
    assert "<h2>2 heartbeats down</h2>" in summary and "All " not in summary
    assert "hb 00000" in summary and "hb 00001" in summary


def test_every_user_string_is_escaped(app, service, clock):
    heartbeat_id = create(app, body(name=HOSTILE, author=HOSTILE, description=HOSTILE, output=HOSTILE,
                                    pattern={HOSTILE: HOSTILE}, expected_interval="1s"))
    clock.advance(2)
    service.tick()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    html = app.get("/?q=" + "%3Cscript%3E").text
    assert "<script>alert(1)" not in html
    assert html.count(escaped) >= 3  # search box, row name, pattern
    assert "&amp;amp;" in html
    html = app.get("/").text
    assert "<script>alert(1)" not in html and html.count(escaped) >= 5  # + alarm name, resource, output
    page = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "<script>alert(1)" not in page
    assert page.count(escaped) >= 6  # title, heading, pattern, description, output, author, tester


def test_an_empty_service_shows_first_steps(app):
    html = app.get("/", extra_environ={"HTTP_HOST": "127.0.0.1:8082"}).text
    assert "No heartbeat yet" in html
    assert "curl -u USER:PASSWORD -d" in html and "http://127.0.0.1:8082/api/v2/heartbeat" in html
    assert "No active alarm." in html


def test_the_pages_need_credentials(service):
    anonymous = client(service, user=("root", "wrong"))
    assert anonymous.get("/", status=401).json["description"] == "authentication required"
    assert anonymous.get("/heartbeat/x", status=401).content_type == "application/json"


###############################################################################
# A heartbeat's page
###############################################################################


def test_a_heartbeat_page_shows_its_facts_and_a_prefilled_pattern_tester(app, service, clock):
    heartbeat_id = create(app, body(name="nightly backup", pattern={"connector": "backup", "component": "db1"},
                                    description="the 2 a.m. dump"))
    clock.advance(30)
    send(app, {"connector": "backup", "component": "db1"})
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "<title>nightly backup - heartbeat-lite</title>" in html
    assert '<span class="badge up">up</span>' in html and "the 2 a.m. dump" in html
    assert "<code>component: db1, connector: backup</code>" in html or "<code>connector: backup, component: db1" \
        in html
    assert 'title="2020-12-11 10:00:44 UTC">10:00:44</time>' in html  # the last event, exactly, on hover
    tester = html.split('<form id="tester"', 1)[1].split("</form>")[0]
    assert 'method="post" action="/api/v2/pattern/test"' in tester
    textarea = re.search(r"<textarea[^>]*>([^<]*)</textarea>", tester).group(1)
    assert json.loads(textarea.replace("&quot;", '"')) == {"connector": "backup", "component": "db1"}
    assert 'href="/">All heartbeats</a>' in html
    assert '<main id="live"' in html and html.index('<form id="tester"') > html.index("</main>")  # not refreshed


def test_a_heartbeat_page_shows_its_history_availability_events_and_timeline(app, service, clock):
    heartbeat_id = create(app)
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "Not recorded by this version." not in html and "No state change recorded" not in html
    assert "None received since the service started." in html  # no event yet
    clock.advance(61)
    service.tick()  # down at +60
    clock.advance(59)
    send(app, {"connector": "connect", "connector_name": "c01", "component": "db1"})
    clock.advance(60)
    html = app.get(f"/heartbeat/{heartbeat_id}").text
    assert "no matching event for 1m" in html and "matching event received" in html and "created" in html
    assert "50.00 %" in html  # down 60 s, up 60 s (the 60 s pending before its first event left out)
    assert "&quot;component&quot;: &quot;db1&quot;" in html  # the last event
    assert 'aria-label="no history recorded"' not in html and 'class="s-down"' in html
    listed = app.get("/").text
    assert "this version records no history" not in listed and 'class="s-down"' in listed


def test_an_unknown_heartbeat_page_is_a_json_404(app):
    for heartbeat_id in ("5a0b0b2c-0000-4000-8000-000000000000", "not-a-uuid"):
        answer = app.get(f"/heartbeat/{heartbeat_id}", status=404)
        assert answer.json == {"name": heartbeat_id, "description": "heartbeat not found"}


###############################################################################
# The timeline, on plain data
###############################################################################

DAY = 86_400


def runs(svg):
    """``{class: [(first slot, length), ...]}`` read back from the SVG."""
    found = {}
    for cls, path in re.findall(r'<path class="s-(\w+)" d="([^"]+)">', svg):
        found[cls] = [(int(x), int(n)) for x, n in re.findall(r"M(\d+) 0h(\d+)v1h-\d+z", path)]
    return found


def test_a_timeline_draws_each_state_where_it_was():
    changes = [{"at": 6 * 3600, "status": "down", "reason": "no event for 1h"},
               {"at": 12 * 3600, "status": "up", "reason": "event received"}]
    svg = timeline_svg(changes, 0, DAY, initial="up", slots=24)
    assert svg.startswith('<svg class="timeline" viewBox="0 0 24 1" preserveAspectRatio="none" role="img"')
    assert runs(svg) == {"up": [(0, 6), (12, 12)], "down": [(6, 6)]}
    assert 'aria-label="up 18 h 00 min, down 6 h 00 min"' in svg
    assert "<title>down 6 h 00 min</title>" in svg


def test_a_timeline_takes_the_state_before_its_window_and_any_order():
    changes = [{"at": DAY + 3600, "status": "late"}, {"at": -5, "status": "down"}, {"at": -100, "status": "up"}]
    assert runs(timeline_svg(changes, 0, 2 * DAY, slots=48)) == {"down": [(0, 25)], "late": [(25, 23)]}
    pairs = [(-100, "up"), (-5, "down"), (DAY + 3600, "late")]  # as the store hands them over
    assert timeline_svg(pairs, 0, 2 * DAY) == timeline_svg(changes, 0, 2 * DAY)


def test_a_timeline_leaves_unknown_time_blank_and_draws_other_states_grey():
    changes = [{"at": 12 * 3600, "status": "pending"}, {"at": 18 * 3600, "status": "something new"}]
    assert runs(timeline_svg(changes, 0, DAY, slots=4)) == {"pending": [(2, 1)], "unknown": [(3, 1)]}
    assert runs(timeline_svg([], 0, DAY, slots=4)) == {}
    assert 'aria-label="no state known"' in timeline_svg([], 0, DAY)


def test_a_timeline_shows_the_worst_state_of_a_slice_and_stays_small_however_it_flaps():
    blip = [{"at": 0, "status": "up"}, {"at": 100, "status": "down"}, {"at": 160, "status": "up"},
            {"at": 7200, "status": "maintenance"}, {"at": 7300, "status": "paused"}]
    assert runs(timeline_svg(blip, 0, DAY, slots=24)) == {"down": [(0, 1)], "maintenance": [(2, 1)],
                                                            "paused": [(3, 21)], "up": [(1, 1)]}
    flapping = [{"at": t, "status": ("up", "down", "late")[i % 3]} for i, t in enumerate(range(0, DAY, 30))]
    svg = timeline_svg(flapping, 0, DAY, slots=48)
    assert runs(svg) == {"down": [(0, 48)]}
    assert len(timeline_svg([{"at": t * 1800, "status": ("up", "paused")[t % 2]} for t in range(48)],
                            0, DAY, slots=48)) < 1500


def test_a_timeline_without_history_says_so_and_markup_never_holds_reasons():
    assert "no history recorded" in timeline_svg(None, 0, DAY)
    svg = timeline_svg([{"at": 0, "status": "down", "reason": "<script>x</script>"}], 0, DAY)
    assert "<script>" not in svg and "reason" not in svg


def test_the_status_page_draws_a_timeline_per_row(app, service):
    add(service, 3)
    html = app.get("/").text
    assert html.count('<svg class="timeline"') == 3


def _windows(service, clock, patterns):
    """Maintenance windows active now (an hour from a minute ago), one per pattern."""
    start = datetime.datetime.fromtimestamp(clock.now - 60, datetime.timezone.utc).replace(tzinfo=None)
    for pattern in patterns:
        service.engine.create_maintenance(heartbeat_lite.validate_maintenance(
            {"name": "w", "pattern": pattern, "start": start.isoformat(timespec="seconds"),
             "end": (start + datetime.timedelta(hours=1)).isoformat(timespec="seconds")}))


def _statements(service, monkeypatch):
    """The length of every statement the store runs, in a list."""
    seen = []
    run = service.store._run

    def spying(conn, sql, params, **kwargs):
        seen.append(len(sql) + len(params))
        return run(conn, sql, params, **kwargs)

    monkeypatch.setattr(service.store, "_run", spying)
    return seen


def test_a_thousand_active_windows_leave_the_status_page_whole(app, service, clock, monkeypatch):
    """1,000 active single-pair windows (the most there may be) used to be
    1,000 conditions of SQL: SQLite's 'Expression tree is too large', a
    database error for everyone. Coverage is worked out in memory; the
    statements are those of a page without windows."""
    add(service, 50, expected_interval="1h")
    _windows(service, clock, [{"host": f"h{i}"} for i in range(50)])
    seen = _statements(service, monkeypatch)
    app.get("/?status=maintenance")
    fifty = max(seen)
    _windows(service, clock, [{"host": f"h{i}"} for i in range(50, heartbeat_lite.MAX_MAINTENANCE_WINDOWS)])
    seen.clear()
    html = app.get("/").text
    assert ">maintenance 50</a>" in html
    seen.clear()
    html = app.get("/?status=maintenance").text
    assert len(names(html)) == 50 and "50 heartbeats matching" in html
    assert max(seen) == fifty  # one parameter for the covered ones, not SQL per window


def test_windows_of_32_pairs_cover_the_heartbeats_they_select(app, service, clock, monkeypatch):
    common = {f"k{i:02d}": "v" for i in range(31)}
    with service.store.atomic():
        for i in range(50):
            service.engine.create(heartbeat_lite.validate_heartbeat(
                body(name=f"hb {i:05d}", pattern={**common, "host": f"h{i}"}, expected_interval="1h"), "root"))
    seen = _statements(service, monkeypatch)
    _windows(service, clock, [{**common, "host": f"h{i % 40}"} for i in range(200)])  # hb 40..49 not covered
    seen.clear()
    html = app.get("/?status=maintenance").text
    assert len(names(html)) == 40 and ">maintenance 40</a>" in html
    assert names(app.get("/?status=maintenance&q=h45").text) == []
    assert max(seen) < 2000
    doc = service.engine.status_page(["maintenance"], ["h7"])["rows"]
    assert [row["maintenance"]["name"] for row in doc] == ["w"]
