"""Notification channels against real servers (docs/channels/): a real
SMTP server (aiosmtpd) speaking STARTTLS and SMTPS with a certificate
authority the test makes (trustme), a real Alertmanager (Debian's
prometheus-alertmanager, started once per session, read back through its
own API), and Apprise sending to a local target."""

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

import heartbeat_lite
from testing_support import C01, Hooks, body, client, wait_until

ALERTMANAGER = os.environ.get("HEARTBEAT_LITE_TEST_ALERTMANAGER", "/usr/bin/prometheus-alertmanager")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_channel(app, kind, url, **fields):
    return app.post_json("/api/v2/channel", {"name": f"ops-{kind}", "kind": kind, "url": url, "default": True,
                                             **fields}).json["description"]


def down(service, clock, **changes):
    heartbeat_id = service.engine.create(heartbeat_lite.validate_heartbeat(body(**changes), "root"))
    clock.advance(61)
    service.tick()
    return heartbeat_id


class Clock:
    """A fake clock a little behind the real one: what it dates (an alarm, its end) is in the past to a
    real server, which judges times against its own clock."""

    def __init__(self):
        self.now = time.time() - 300  # alarms fall due in the past, as seen by the real servers

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


###############################################################################
# E-mail: a real SMTP server
###############################################################################


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    trustme = pytest.importorskip("trustme", reason="trustme (requirements-dev.txt) makes the test's certificates")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return server, str(path)


class Mailbox:
    """An aiosmtpd handler keeping each message: ``(over TLS, sender,
    recipients, the message)``; refuses the recipients in ``refused``."""

    def __init__(self):
        self.messages = []
        self.refused = set()

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address in self.refused:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import email
        self.messages.append((session.ssl is not None, envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content)))
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult
    return AuthResult(success=(auth_data.login, auth_data.password) == (b"hb", b"s3cret-pw"), handled=False)


@pytest.fixture
def smtp(certificates):
    """A real SMTP server offering STARTTLS, login over TLS only: ``(mailbox, port)``."""
    controller_module = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is in requirements-dev.txt")
    mailbox, port = Mailbox(), free_port()
    controller = controller_module.Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=certificates[0],
                                              authenticator=_authenticator, auth_require_tls=True)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def smtps(certificates):
    """A real SMTP server speaking TLS from the start (SMTPS): ``(mailbox, port)``."""
    controller_module = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is in requirements-dev.txt")
    mailbox, port = Mailbox(), free_port()
    controller = controller_module.Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=certificates[0],
                                              server_hostname="127.0.0.1")
    controller.start()
    yield mailbox, port
    controller.stop()


MAIL_QUERY = "from=heartbeat@example.com&to=ops@example.com,dev@example.com"


def test_email_goes_through_starttls_when_offered_and_logs_in(clock, smtp, certificates):
    mailbox, port = smtp
    with heartbeat_lite.create_app(clock=clock, ca_file=certificates[1], public_url="https://hb.example.com") as service:
        app = client(service)
        create_channel(app, "email", f"smtp://hb:s3cret-pw@127.0.0.1:{port}?{MAIL_QUERY}")
        heartbeat_id = down(service, clock)
        assert service.deliver() is None
        shown = app.get("/api/v2/channel").json[0]
        assert "s3cret-pw" not in json.dumps(shown)
        assert shown["last_delivery"] == heartbeat_lite.api_time(clock.now)
    [(tls, sender, recipients, message)] = mailbox.messages
    assert tls and sender == "heartbeat@example.com" and recipients == ["ops@example.com", "dev@example.com"]
    assert message["Subject"] == "[heartbeat-lite] Heartbeat is DOWN"
    assert message["To"] == "ops@example.com, dev@example.com"
    text = message.get_payload(decode=True).decode("utf-8")
    assert "Status: down (was pending)" in text and "Output: Une note personnalisable" in text
    assert f"Details: https://hb.example.com/heartbeat/{heartbeat_id}" in text


def test_email_over_smtps(clock, smtps, certificates):
    mailbox, port = smtps
    with heartbeat_lite.create_app(clock=clock, ca_file=certificates[1]) as service:
        app = client(service)
        channel_id = create_channel(app, "email", f"smtps://127.0.0.1:{port}?{MAIL_QUERY}")
        assert app.post(f"/api/v2/channel/{channel_id}/test").json == {"delivered": True, "status": None,
                                                                       "error": None}
        down(service, clock)
        assert service.deliver() is None
    assert [message["Subject"] for tls, _, _, message in mailbox.messages] == [
        "[heartbeat-lite] Test message from heartbeat-lite", "[heartbeat-lite] Heartbeat is DOWN"]


def test_an_smtp_server_whose_certificate_is_not_trusted_fails_and_is_retried(clock, smtp):
    mailbox, port = smtp
    with heartbeat_lite.create_app(clock=clock) as service:  # no --ca-file
        app = client(service)
        channel_id = create_channel(app, "email", f"smtp://hb:s3cret-pw@127.0.0.1:{port}?{MAIL_QUERY}")
        down(service, clock)
        assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
        shown = app.get(f"/api/v2/channel/{channel_id}").json
        assert shown["waiting"] == 1 and "CERTIFICATE_VERIFY_FAILED" in shown["last_error"]
        assert "s3cret-pw" not in shown["last_error"]
    assert mailbox.messages == []


def test_a_recipient_refused_for_good_sets_the_message_aside(clock, smtp, certificates):
    mailbox, port = smtp
    mailbox.refused.add("ops@example.com")
    with heartbeat_lite.create_app(clock=clock, ca_file=certificates[1]) as service:
        app = client(service)
        channel_id = create_channel(app, "email", f"smtp://hb:s3cret-pw@127.0.0.1:{port}?from=h@example.com"
                                                  "&to=ops@example.com")
        down(service, clock)
        assert service.deliver() is None
        assert app.get(f"/api/v2/channel/{channel_id}").json["set_aside"] == 1


def test_a_wrong_smtp_password_is_retried_not_set_aside(clock, smtp, certificates):
    mailbox, port = smtp
    with heartbeat_lite.create_app(clock=clock, ca_file=certificates[1]) as service:
        app = client(service)
        channel_id = create_channel(app, "email", f"smtp://hb:wrong@127.0.0.1:{port}?{MAIL_QUERY}")
        down(service, clock)
        assert service.deliver() == heartbeat_lite.FORWARD_BACKOFF_SECONDS[0]
        shown = app.get(f"/api/v2/channel/{channel_id}").json
        assert (shown["waiting"], shown["set_aside"]) == (1, 0) and shown["last_error"].startswith("SMTP 535")


###############################################################################
# A real Alertmanager
###############################################################################


ALERTMANAGER_CONFIG = """route:
  receiver: "null"
  group_wait: 1s
receivers:
  - name: "null"
"""


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory):
    """A real Alertmanager (Debian's prometheus-alertmanager; .ci/run
    installs it), one for the session, on a free port, with a one-receiver
    configuration and no cluster: its base URL."""
    if not os.access(ALERTMANAGER, os.X_OK):
        pytest.skip(f"no Alertmanager at {ALERTMANAGER} (apt-get install prometheus-alertmanager; .ci/run does)")
    directory = tmp_path_factory.mktemp("alertmanager")
    (directory / "alertmanager.yml").write_text(ALERTMANAGER_CONFIG)
    port = free_port()
    with open(directory / "log", "wb") as log:
        process = subprocess.Popen([ALERTMANAGER, f"--config.file={directory / 'alertmanager.yml'}",
                                    f"--storage.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return process.poll() is not None  # stop waiting: it died

    try:
        assert wait_until(ready, timeout=30) and process.poll() is None, (directory / "log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(10)


def alerts(url, heartbeat_id):
    """The alerts of a heartbeat the Alertmanager lists (active ones)."""
    query = urllib.parse.urlencode({"filter": f'heartbeat_id="{heartbeat_id}"'})
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as answer:
        return json.loads(answer.read())


def test_an_alarm_is_an_alert_in_alertmanager_and_its_resolution_ends_it(clock, alertmanager):
    with heartbeat_lite.create_app(clock=clock, public_url="https://hb.example.com") as service:
        app = client(service)
        create_channel(app, "alertmanager", alertmanager + "/")
        heartbeat_id = down(service, clock)
        assert service.deliver() is None
        [alert] = alerts(alertmanager, heartbeat_id)
        assert alert["labels"] == {"alertname": "HeartbeatDown", "heartbeat_id": heartbeat_id,
                                   "heartbeat": "Heartbeat", "severity": "critical"}
        assert alert["annotations"]["summary"] == "Heartbeat is DOWN"
        assert alert["generatorURL"] == f"https://hb.example.com/heartbeat/{heartbeat_id}"
        assert alert["status"]["state"] == "active"
        app.post_json("/api/v2/event", C01)
        assert service.deliver() is None
        assert alerts(alertmanager, heartbeat_id) == []


def test_a_late_alert_is_resolved_when_the_down_one_opens(clock, alertmanager):
    with heartbeat_lite.create_app(clock=clock) as service:
        app = client(service)
        create_channel(app, "alertmanager", alertmanager)
        heartbeat_id = service.engine.create(heartbeat_lite.validate_heartbeat(body(late_after="30s"), "root"))
        clock.advance(31)
        service.tick()
        assert service.deliver() is None
        assert [a["labels"]["alertname"] for a in alerts(alertmanager, heartbeat_id)] == ["HeartbeatLate"]
        assert alerts(alertmanager, heartbeat_id)[0]["labels"]["severity"] == "warning"
        clock.advance(30)
        service.tick()
        assert service.deliver() is None
        assert [a["labels"]["alertname"] for a in alerts(alertmanager, heartbeat_id)] == ["HeartbeatDown"]


def test_open_alerts_are_sent_again_acknowledged_or_not(clock, alertmanager):
    with heartbeat_lite.create_app(clock=clock) as service:
        app = client(service)
        channel_id = create_channel(app, "alertmanager", alertmanager)
        heartbeat_id = down(service, clock)
        assert service.deliver() is None
        first = alerts(alertmanager, heartbeat_id)[0]["updatedAt"]
        app.post(f"/api/v2/heartbeat/{heartbeat_id}/ack")
        assert service.deliver() is None  # an Alertmanager is sent no ack
        assert service.deliveries.workers[channel_id].resend() == 1
        [again] = alerts(alertmanager, heartbeat_id)
        assert again["updatedAt"] > first and again["startsAt"] == alerts(alertmanager, heartbeat_id)[0]["startsAt"]


@pytest.mark.slow
def test_in_server_mode_an_alarm_is_visible_in_alertmanager_soon_after_its_deadline(tmp_path, alertmanager):
    with heartbeat_lite.create_app(db=str(tmp_path / "hb.db")) as service:
        app = client(service)
        create_channel(app, "alertmanager", alertmanager)
        with heartbeat_lite.serve(service):
            heartbeat_id = app.post_json("/api/v2/heartbeat", body(expected_interval="1s")).json["description"]
            assert wait_until(lambda: alerts(alertmanager, heartbeat_id), timeout=10)


###############################################################################
# Apprise
###############################################################################


def test_apprise_sends_to_any_url_it_knows(clock):
    pytest.importorskip("apprise", reason="the optional extra heartbeat-lite[apprise] (requirements-dev.txt has it)")
    hooks = Hooks()
    try:
        with heartbeat_lite.create_app(clock=clock) as service:
            app = client(service)
            port = hooks.server.server_address[1]
            channel_id = create_channel(app, "apprise", f"json://127.0.0.1:{port}/apprise")
            assert app.post(f"/api/v2/channel/{channel_id}/test").json["delivered"] is True
            down(service, clock)
            assert service.deliver() is None
        test, alarm = hooks.bodies("/apprise")
        assert test["title"] == "Test message from heartbeat-lite"
        assert alarm["title"] == "Heartbeat is DOWN" and "Reason: no matching event for 1m" in alarm["message"]
    finally:
        hooks.close()


def test_apprise_refuses_a_url_it_does_not_know(app):
    pytest.importorskip("apprise", reason="the optional extra heartbeat-lite[apprise] (requirements-dev.txt has it)")
    answer = app.post_json("/api/v2/channel", {"name": "x", "kind": "apprise", "url": "nosuchservice://x"},
                           status=400).json
    assert answer["errors"] == ["url: not a URL Apprise knows (see its list of services)"]
