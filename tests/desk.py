"""An end-to-end harness: a real maildesk (config file, database, daemon) against real servers.

Tests build a ``DeskWorld`` on an IMAP account (pymap or Dovecot) and an SMTP capture, put mail
into the mailbox over IMAP, run the daemon (``run_once`` or in the background) and look at what a
user would see: tickets as ``maildesk tickets show --json`` prints them, mail at the SMTP sink,
and the folders on the IMAP server.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from maildesk import config, shared_secret
from maildesk.database import Database
from maildesk.demo import configs
from maildesk.demo.configs import merged
from maildesk.demo.world import Captured
from maildesk.models import Ticket
from maildesk.service.daemon import Daemon
from maildesk.service.timings import Timings
from maildesk.service.wiring import desk_for
from maildesk.ui import views
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

SUPPORT_NAME = "Example Support"
ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL_AGENT = "carol@example.com"
CUSTOMER = "dana@customer.test"

# An end-to-end flow that runs on SQLite and again on a fresh PostgreSQL database: the test's
# world takes the ``database_url`` fixture (conftest.py).
# every mail the desk sends from the shipped templates: one per name, and each canned reply
_TEMPLATES = Path(__file__).parent.parent / "templates"
SHIPPED_MAILS = len({p.name.split(".")[0] for p in _TEMPLATES.glob("*.j2")}) + len(
    list(_TEMPLATES.glob("canned/*.txt.j2"))
)

ON_BOTH_DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


class Clock:
    """An injected clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def desk_tables(
    account: ImapAccount, smtp_port: int, data_dir: Path, *, poll_seconds: float = 2
) -> dict[str, Any]:
    """The harness's desk: one mailbox on ``account``, two teams, three agents (as
    ``maildesk.demo.configs.config_text`` takes them)."""
    return {
        "desk": {
            "name": SUPPORT_NAME,
            "address": account.username,
            "data_dir": data_dir,
            "admin_address": "admin@example.com",
        },
        "mailboxes": [
            {
                "name": "support",
                "host": account.host,
                "port": account.port,
                "security": "none",
                "username": account.username,
                "password": account.password,
                "poll_seconds": poll_seconds,
                "team": "support",
                # the tests' customers write to this address: it reaches the desk's mailbox
                "addresses": ["support@example.com"],
            }
        ],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 5},
        "teams": [{"name": "support"}, {"name": "engineering"}],
        "agents": [
            {"email": ALICE, "name": "Alice Smith", "teams": ["support"]},
            {"email": BOB, "name": "Bob Jones", "teams": ["engineering"]},
            {"email": CAROL_AGENT, "name": "Carol White", "teams": ["support", "engineering"]},
        ],
    }


def with_changes(tables: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``configs.merged``, and ``mailbox`` changes the support mailbox key by key."""
    changes = dict(changes)
    mailbox = changes.pop("mailbox", None)
    result = merged(tables, changes)
    if mailbox:
        [first, *rest] = result["mailboxes"]
        support = {k: v for k, v in {**first, **mailbox}.items() if v is not None}
        result["mailboxes"] = [support, *rest]
    return result


def config_text(account: ImapAccount, smtp: ScriptedSmtp, data_dir: Path, **changes: Any) -> str:
    """The harness's config file, with ``changes`` (``configs.merged``: ``limits={...}`` sets
    keys, ``mailboxes=[...]`` adds mailboxes, ``mailbox={...}`` changes the support mailbox)."""
    tables = with_changes(desk_tables(account, smtp.port, data_dir), changes)
    return configs.config_text(**tables)


class DeskWorld:
    def __init__(
        self,
        account: ImapAccount,
        smtp: ScriptedSmtp,
        root: Path,
        *,
        tables: dict[str, Any] | None = None,
        database_url: str | None = None,
        clock: Clock | None = None,
        poll_seconds: float = 2,
    ) -> None:
        """``tables``: changes to the harness's config (as ``config_text`` takes them)."""
        self.account = account
        self.smtp = smtp
        self.root = root
        self.clock = clock or Clock(datetime.now(UTC))
        self.tables = desk_tables(account, smtp.port, root / "data", poll_seconds=poll_seconds)
        if database_url:
            self.tables["database"] = {"url": database_url}
        self.config_path = root / "maildesk.toml"
        self.rewrite_config(**(tables or {}))
        self.db = Database(config.load(self.config_path).database_url)
        self.db.upgrade()
        self.settings = self.load_settings()
        self.desk = desk_for(self.settings, clock=self.clock)
        self.address = account.username
        self._thread: threading.Thread | None = None
        self._daemon: Daemon | None = None
        self.timings = Timings()  # the daemons' waits (tests shorten them)

    def rewrite_config(self, **changes: Any) -> None:
        """Write the config file again with ``changes`` (as ``config_text`` takes them), as an
        operator edits it; ``settings`` stay as they were until loaded again."""
        self.tables = with_changes(self.tables, changes)
        self.config_path.write_text(configs.config_text(**self.tables))
        self.config_path.chmod(0o600)

    def load_settings(self) -> config.Settings:
        """The config file read again, with the desk's secret from the database, as a daemon
        starting on it reads them."""
        return shared_secret.settled(config.load(self.config_path), self.db)

    # ------------------------------------------------------------------ driving

    def run_once(self) -> int:
        daemon = Daemon(self.settings, self.db, self.desk, once=True, timings=self.timings)
        return asyncio.run(daemon.run())

    def start(self, on_outcome: Callable[[str, Any], None] | None = None, **options: Any) -> Daemon:
        """The daemon in a thread of this process (``options`` for ``Daemon``)."""
        options.setdefault("timings", self.timings)
        daemon = Daemon(self.settings, self.db, self.desk, on_outcome=on_outcome, **options)
        self._daemon = daemon
        self._thread = threading.Thread(target=lambda: asyncio.run(daemon.run()), daemon=True)
        self._thread.start()
        return daemon

    def stop(self) -> None:
        if self._daemon is not None and self._daemon.loop is not None:
            self._daemon.loop.call_soon_threadsafe(self._daemon.request_stop)
        if self._thread is not None:
            self._thread.join(timeout=15)
            assert not self._thread.is_alive(), "daemon did not stop"
        self._thread = None
        self._daemon = None

    def close(self) -> None:
        self.stop()
        self.desk.close()
        self.db.dispose()

    def use_templates(self, directory: Path) -> None:
        """Point ``[desk] templates_dir`` at ``directory`` and take the config in again, as an
        operator would (the templates are not checked: a test of the check does that)."""
        self.rewrite_config(desk={"templates_dir": directory})
        self.settings = self.load_settings()
        self.desk = desk_for(self.settings, clock=self.clock)

    def cli(
        self, *args: str, input: bytes | None = None, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        """``maildesk ARGS`` as its own process on this world's config, as an admin runs it."""
        return subprocess.run(
            [sys.executable, "-m", "maildesk", *args],
            input=input,
            env={**os.environ, "MAILDESK_CONFIG": str(self.config_path), **env},
            capture_output=True,
            timeout=60,
        )

    def spawn(self, *args: str, group: bool = False, **env: str) -> subprocess.Popen[str]:
        """``maildesk --log-format json ARGS`` in the background (``env`` added to its
        environment); its log lines on ``stderr``. ``group``: in a process group of its own
        (its pid is the group's), so that a signal can reach every process it starts, as
        systemd's ``KillMode=control-group`` does."""
        return subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--log-format", "json", *args],
            env={**os.environ, "MAILDESK_CONFIG": str(self.config_path), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0 if group else None,
        )

    def deliver(self, message: EmailMessage | bytes) -> None:
        raw = message if isinstance(message, bytes) else message.as_bytes(policy=email.policy.SMTP)
        self.account.append(raw)

    # ------------------------------------------------------------------ looking

    def tickets(self) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            from sqlalchemy import select

            return [
                views.ticket_detail(t, self.settings.desk.ref_format)
                for t in session.scalars(select(Ticket).order_by(Ticket.id))
            ]

    def ticket(self, number: int) -> dict[str, Any]:
        with self.db.transaction() as session:
            ticket = session.get(Ticket, number)
            assert ticket is not None, f"no ticket {number}"
            return views.ticket_detail(ticket, self.settings.desk.ref_format)

    def mails_to(self, address: str) -> list[Captured]:
        return [m for m in self.smtp.messages if address in m.rcpt_tos]

    def wait_mails_to(self, address: str, count: int, timeout: float = 10) -> list[Captured]:
        self.smtp.wait_for(lambda msgs: sum(address in m.rcpt_tos for m in msgs) >= count, timeout)
        return self.mails_to(address)


def customer_mail(
    subject: str,
    body: str,
    *,
    sender: str = CUSTOMER,
    to: str = "support@example.com",
    reply_to: Captured | None = None,
    headers: Iterable[tuple[str, str]] = (),
    message_id: str | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain=sender.split("@")[-1].strip(">"))
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    if reply_to is not None:
        msg["In-Reply-To"] = reply_to.message["Message-ID"]
        msg["References"] = reply_to.message["Message-ID"]
    for name, value in headers:
        msg[name] = value
    msg.set_content(body)
    return msg


def delivery_report(
    about: Captured,
    action: str,
    status: str,
    *,
    to: str | None = None,
    recipients: Sequence[str] = (),
    sender: str = "MAILER-DAEMON@mx.customer.test (Mail Delivery System)",
    diagnostic: str = "",
) -> bytes:
    """A Postfix-style DSN about the mail ``about``: by default sent back to its envelope sender
    (our VERP address) by the recipient's MTA, for its recipient. ``to`` sends it elsewhere (the
    plain desk address), ``recipients`` lists other Final-Recipients, ``sender`` forges it,
    ``diagnostic`` is the receiving server's answer (a ``Diagnostic-Code``, folded as Postfix
    folds it)."""
    to = to or about.mail_from
    listed = list(recipients) or [about.rcpt_tos[0]]
    original = about.raw.split(b"\r\n\r\n", 1)[0].decode()
    boundary = "dsn-boundary-4711"
    code = f"Diagnostic-Code: smtp; {diagnostic}\n" if diagnostic else ""
    code = re.sub(r"(.{60}) ", "\\1\n    ", code)  # long values come folded
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {address}\nAction: {action}\nStatus: {status}\n{code}"
        for address in listed
    )
    text = f"""Return-Path: <>
Delivered-To: {to}
From: {sender}
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Thu, 26 Nov 2026 10:05:00 +0000
Message-ID: <{make_msgid(domain="mx.customer.test")[1:-1]}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

<{listed[0]}>: host mx.customer.test said: {status} problem

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.test

{blocks}
--{boundary}
Content-Type: text/rfc822-headers

{original}

--{boundary}--
"""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def text_of(captured: Captured) -> str:
    part = captured.message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def html_of(captured: Captured) -> str | None:
    part = captured.message.get_body(preferencelist=("html",))
    return part.get_content() if part is not None else None


def reply_to_address(captured: Captured) -> str:
    return re.sub(r".*<|>.*", "", str(captured.message["Reply-To"]))


def agent_reply(
    notice: Captured,
    sender: str,
    body: str,
    *,
    subject_extra: str = "",
    to: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> EmailMessage:
    """What an agent's mail client sends when they reply to a notification."""
    quoted = "\n".join("> " + line for line in text_of(notice).splitlines()[:5])
    return customer_mail(
        f"Re: {notice.message['Subject']}{subject_extra}",
        f"{body}\n\nOn Thu, Nov 26, 2026 at 10:00 AM Example Support wrote:\n{quoted}\n",
        sender=sender,
        to=to or reply_to_address(notice),
        reply_to=notice,
        headers=headers,
    )


def ref_number(captured: Captured) -> int:
    match = re.search(r"\[#(\d+)\]", str(captured.message["Subject"]))
    assert match, captured.message["Subject"]
    return int(match.group(1))


class LogReader:
    """Reads a process's JSON log lines in a thread; tests wait for a line by condition."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(json.loads(line))
                self._changed.notify_all()

    def finish(self, timeout: float = 10) -> None:
        """Wait until the process has closed its end (it exited) and every line is read."""
        self._thread.join(timeout)

    def wait_for(self, text: str, timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((x for x in self.lines if text in x["message"]), None)

        with self._changed:
            if not self._changed.wait_for(lambda: found() is not None, timeout):
                raise AssertionError(f"no log line with {text!r}: {self.lines}")
            line = found()
            assert line is not None
            return line


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``condition`` (a query of a server, the database or /proc) until it returns something
    true, and return that; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)  # polling interval of a condition with a deadline


# --------------------------------------------------------------------------- HTTP (/healthz, /metrics)

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str]:
    """Status and body; status 0 while nothing listens yet."""
    try:
        with _DIRECT.open(url, timeout=5) as response:
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


class RunningDaemon:
    """``maildesk run`` as its own process (so a stall in it is its own), logging JSON lines
    to a file."""

    def __init__(self, world: DeskWorld, log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--log-format", "json", "run"],
            env={**os.environ, "MAILDESK_CONFIG": str(world.config_path)},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:  # stuck in work it cannot leave: it failed
                self.process.kill()
                self.process.wait()
        self._stderr.close()


def daemon_peak_mb(pid: int) -> float:
    """The daemon process's own resident high-water mark (its parse workers are not in it)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]
