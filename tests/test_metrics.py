"""/metrics and /healthz of a running daemon, scraped over HTTP as Prometheus and a load
balancer would; an IMAP outage turns the health check red, alerts the admin once, and clears."""

from __future__ import annotations

import logging
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk import config
from maildesk.demo.world import ImapServer, SmtpServer, free_port
from maildesk.service.timings import Timings
from tests.desk import CUSTOMER, DeskWorld, customer_mail, wait_until
from tests.servers import ImapAccount, fresh_user

ADMIN = "admin@example.com"


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str]:
    """Status and body; status 0 while nothing listens yet."""
    try:
        with DIRECT.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return 0, ""


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    """A pymap of this test's own: the test takes it down."""
    with ImapServer() as server:
        yield server


@pytest.fixture
def world(imap: ImapServer, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[DeskWorld]:
    port = free_port()
    account = ImapAccount("pymap", imap, *fresh_user())
    w = DeskWorld(
        account,
        smtp_server,
        tmp_path,
        extra_config=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
        clock=lambda: datetime.now(UTC),  # type: ignore[arg-type]
    )
    text = w.config_path.read_text().replace("poll_seconds = 2", "poll_seconds = 1")
    w.config_path.write_text(text)
    w.settings = config.load(w.config_path)
    w.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield w
    w.close()


def test_metrics_count_what_happened(world: DeskWorld) -> None:
    url: str = world.url  # type: ignore[attr-defined]
    world.start()
    wait_until(lambda: get(url + "/healthz")[0] == 200, 10, "healthy at start")
    world.deliver(customer_mail("VPN down", "It does not connect."))
    world.deliver(
        customer_mail(
            "Out of office",
            "I am away.",
            sender="ooo@customer.test",
            headers=[("Auto-Submitted", "auto-replied")],
        )
    )
    world.wait_mails_to(CUSTOMER, 1)

    def scraped() -> str:
        return get(url + "/metrics")[1]

    def all_counted() -> bool:
        captured = len(world.smtp.messages)  # the acknowledgment and the agents' notices
        return captured >= 2 and sample(scraped(), "maildesk_mails_sent_total") == captured

    wait_until(all_counted, 10, "every mail sent counted")
    text = scraped()
    assert (
        sample(
            text,
            "maildesk_messages_ingested_total",
            mailbox="support",
            outcome="new_ticket",
            reason="",
        )
        == 1.0
    )
    assert (
        sample(
            text,
            "maildesk_messages_ingested_total",
            mailbox="support",
            outcome="ignored",
            reason="auto_reply",
        )
        == 1.0
    )
    assert sample(text, "maildesk_tickets", status="open") == 1.0
    assert sample(text, "maildesk_tickets", status="closed") == 0.0
    assert sample(text, "maildesk_outbox_pending") == 0.0
    assert sample(text, "maildesk_outbox_failed") == 0.0
    assert sample(text, "maildesk_mailbox_up", mailbox="support") == 1.0
    checked = sample(text, "maildesk_mailbox_last_check_timestamp_seconds", mailbox="support")
    assert checked is not None and abs(checked - time.time()) < 5
    assert sample(text, "maildesk_ingest_latency_seconds_count", mailbox="support") == 2.0
    fast = sample(text, "maildesk_ingest_latency_seconds_bucket", mailbox="support", le="10.0")
    assert fast == 2.0  # from arrival in the mailbox to the commit, both within seconds
    assert get(url + "/nothing")[0] == 404


def test_healthz_turns_red_when_imap_goes_away_alerts_once_and_recovers(
    world: DeskWorld, imap: ImapServer
) -> None:
    # Backoff capped at 2 s instead of 5 min, so five failures (the alert) come in seconds.
    world.timings = Timings(max_backoff=2.0)
    url: str = world.url  # type: ignore[attr-defined]
    world.start()
    wait_until(lambda: get(url + "/healthz")[0] == 200, 10, "healthy at start")
    assert get(url + "/healthz")[1].strip() == "ok"

    imap.stop()
    down = time.monotonic()
    wait_until(lambda: get(url + "/healthz")[0] == 503, 60, "503 after the outage")
    took = time.monotonic() - down
    assert took < 10  # 3 x poll_seconds (1 s), plus the time to notice
    status, body = get(url + "/healthz")
    assert body.splitlines()[0].startswith("mailbox support: down since ")
    assert body.splitlines()[1:] == ["database: ok"]
    text = get(url + "/metrics")[1]
    assert sample(text, "maildesk_mailbox_up", mailbox="support") == 0.0

    world.smtp.wait_for(
        lambda msgs: any("is failing" in str(m.message["Subject"]) for m in msgs), timeout=30
    )
    imap.start()
    wait_until(lambda: get(url + "/healthz")[0] == 200, 30, "200 after the server is back")
    world.smtp.wait_for(
        lambda msgs: any("recovered" in str(m.message["Subject"]) for m in msgs), timeout=10
    )
    alerts = [m for m in world.mails_to(ADMIN) if "is failing" in str(m.message["Subject"])]
    assert len(alerts) == 1, [m.message["Subject"] for m in alerts]
    assert "mailbox support" in str(alerts[0].message["Subject"])


def test_healthz_names_the_mailbox_down_but_neither_its_server_nor_the_error(
    imap_server: ImapAccount,
    smtp_server: SmtpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever reaches the port reads /healthz: the states are for them, the details for the log."""
    port = free_port()
    world = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        extra_config=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
        clock=lambda: datetime.now(UTC),  # type: ignore[arg-type]
        poll_seconds=1,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        world.start()
        wait_until(
            lambda: sample(get(url + "/metrics")[1], "maildesk_mailbox_up", mailbox="support"),
            10,
            "the mailbox checked",
        )
        assert get(url + "/healthz") == (200, "ok\n")
        imap_server.stop()
        status, body = wait_until(
            lambda: (got := get(url + "/healthz"))[0] == 503 and got, 30, "503"
        )
    finally:
        world.close()
    lines = body.splitlines()
    assert re.fullmatch(r"mailbox support: down since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[0])
    assert lines[1:] == ["database: ok"]
    said = [
        r.getMessage() for r in caplog.records if "mailbox support unreachable" in r.getMessage()
    ]
    assert said and f"{imap_server.host}:{imap_server.port}" in said[0]
    error = said[0].split("unreachable: ", 1)[1].removesuffix(" (retrying with backoff)")
    assert error not in body
    assert imap_server.host not in body and str(imap_server.port) not in body


def test_request_lines_are_logged_with_control_characters_escaped(
    world: DeskWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="maildesk.metrics")
    url: str = world.url  # type: ignore[attr-defined]
    world.start()
    wait_until(lambda: get(url + "/healthz")[0] == 200, 10, "healthy at start")
    port = int(url.rsplit(":", 1)[1])
    for request, status in (
        (b"GET /\x1b[31mred HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /\x1b[31mred\r127.0.0.1 - forged line HTTP/1.0\r\n\r\n", b"400"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(request)
            answer = conn.makefile("rb").read()  # HTTP/1.0: the server closes when done
        assert answer.split(b"\r\n", 1)[0].split()[1] == status
    lines = [r.getMessage() for r in caplog.records if r.name == "maildesk.metrics"]
    assert any('"GET /\\x1b[31mred HTTP/1.0" 404' in line for line in lines), lines
    assert any("/\\x1b[31mred\\x0d127.0.0.1 - forged line" in line for line in lines), lines
    assert not [line for line in lines if {"\x1b", "\r", "\n"} & set(line)]
