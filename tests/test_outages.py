"""Outages, secrets, TLS and a graceful stop, against real servers.

An IMAP server that goes away, an SMTP server that refuses connections, a locked database: one
log line when it starts, one when it ends, an alert to the admin after five failures in a row
and one on recovery, and everything delivered afterwards. Certificates are verified, STARTTLS
is never skipped, passwords never reach a log, and SIGTERM stops a running daemon cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.config import SmtpSettings
from maildesk.demo.world import ImapServer, SmtpServer
from maildesk.mail.imap import Mailbox, MailboxError
from maildesk.mail.smtp import Sender
from maildesk.models import Outbox
from maildesk.service.outages import Dependency
from maildesk.service.timings import Timings
from maildesk.ui import cli
from tests.desk import CUSTOMER, DeskWorld, customer_mail, text_of, wait_until
from tests.servers import Certificate, ImapAccount, fresh_user

ADMIN = "admin@example.com"
SECRET = "s3cret-never-logged-7f2a"
SERVER_LOGGERS = ("pymap", "mail.log", "aiosmtpd")


@pytest.fixture
def world(
    imap_server: ImapAccount,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    w.timings = Timings(backoff_base=0.02)
    yield w
    w.close()


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_imap_outage_mid_run_is_one_line_one_alert_and_recovers(
    world: DeskWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world.start()
    world.deliver(customer_mail("Before the outage", "One", sender="one@x.test"))
    world.wait_mails_to("one@x.test", 1, timeout=30)

    world.account.stop()
    wait_until(
        lambda: world.mails_to(ADMIN), 30, "an alert to the admin"
    )  # five failed reconnects: the admin hears
    [alert] = world.mails_to(ADMIN)
    assert "mailbox support is failing" in str(alert.message["Subject"])
    assert "5 times in a row" in text_of(alert) and "Last error" in text_of(alert)

    world.account.start()
    world.deliver(customer_mail("After the outage", "Two", sender="two@x.test"))
    world.wait_mails_to("two@x.test", 1, timeout=30)
    [_, recovered] = world.wait_mails_to(ADMIN, 2, timeout=30)
    assert "recovered" in str(recovered.message["Subject"])
    world.stop()

    assert len(lines(caplog, "mailbox support unreachable")) == 1
    assert len(lines(caplog, "mailbox support is back")) == 1
    no_tracebacks(caplog)
    assert sorted(t["requester"] for t in world.tickets()) == ["one@x.test", "two@x.test"]
    assert world.account.uids("INBOX") == []


def test_smtp_outage_is_one_line_one_alert_and_everything_goes_out_after(
    world: DeskWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    world.smtp.stop()
    senders = [f"c{i}@x.test" for i in range(7)]  # 21 mails: enough for five failed rounds
    for sender in senders:
        world.deliver(customer_mail("While SMTP is down", "Hello", sender=sender))
    world.start()
    wait_until(lambda: daemon_health(world).alerted, 15, "the outage alerted")
    world.smtp.start()
    world.clock.advance(hours=1)  # the retries fall due
    world.deliver(customer_mail("Wake up", "Hello", sender="last@x.test"))
    for sender in [*senders, "last@x.test"]:
        world.wait_mails_to(sender, 1, timeout=20)
    admin = world.wait_mails_to(ADMIN, 2, timeout=20)
    world.stop()

    subjects = sorted(str(m.message["Subject"]) for m in admin)
    assert any("SMTP is failing" in s for s in subjects)
    assert any("SMTP recovered" in s for s in subjects)
    assert len(admin) == 2
    assert len(lines(caplog, "SMTP unreachable")) == 1
    assert len(lines(caplog, "SMTP is back")) == 1
    no_tracebacks(caplog)
    # each mail once
    ids = [m.message["Message-ID"] for m in world.smtp.messages]
    assert len(ids) == len(set(ids))


def daemon_health(world: DeskWorld) -> Dependency:
    running = world._daemon
    assert running is not None
    return running.health["smtp"]


def test_a_locked_database_delays_but_loses_nothing(
    world: DeskWorld, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds SQLite's write lock for a while: the daemon waits (SQLite's busy
    timeout), then handles the mail once; nothing is quarantined."""
    database = world.settings.database_url.split("///", 1)[1]
    holder = sqlite3.connect(database, timeout=1)
    holder.execute("BEGIN IMMEDIATE")
    world.deliver(customer_mail("Locked", "Hello"))
    world.start()
    try:
        time.sleep(1.0)  # the outage itself: the lock is held this long (fault injection)
    finally:
        holder.rollback()
        holder.close()
    world.wait_mails_to(CUSTOMER, 1)
    world.stop()
    assert len(world.tickets()) == 1
    assert world.account.uids("Quarantine") == []
    no_tracebacks(caplog)


# --------------------------------------------------------------------------- TLS and secrets


def smtp_settings(server: SmtpServer, **overrides: object) -> SmtpSettings:
    base = SmtpSettings(host="127.0.0.1", port=server.port, security="none", timeout=5)
    return replace(base, **overrides)  # type: ignore[arg-type]


def test_smtp_certificate_is_verified_by_default(certificate: Certificate) -> None:
    with SmtpServer(
        username="desk", password=SECRET, tls_context=certificate.server_context()
    ) as server:
        settings = smtp_settings(server, security="starttls", username="desk", password=SECRET)
        refused = asyncio.run(
            Sender(settings).send("desk@x.test", "c@x.test", b"Subject: x\r\n\r\nx")
        )
        assert refused.outcome == "retry" and "certificate" in refused.detail.lower()
        assert server.auth_attempts == [] and server.messages == []

        trusted = replace(settings, ssl_context=certificate.client_context())
        sent = asyncio.run(Sender(trusted).send("desk@x.test", "c@x.test", b"Subject: x\r\n\r\nx"))
        assert sent.outcome == "sent"
        [attempt] = server.auth_attempts
        assert attempt.success and attempt.tls


def test_starttls_missing_is_an_error_and_no_auth_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with SmtpServer(username="desk", password=SECRET) as server:  # offers no STARTTLS
        settings = smtp_settings(server, security="starttls", username="desk", password=SECRET)
        result = asyncio.run(
            Sender(settings).send("desk@x.test", "c@x.test", b"Subject: x\r\n\r\nx")
        )
        assert result.outcome == "retry"
        assert "starttls" in result.detail.lower()
        assert server.auth_attempts == [] and server.messages == []
    assert SECRET not in caplog.text


def test_passwords_never_reach_the_logs(
    pymap_server: ImapServer, caplog: pytest.LogCaptureFixture
) -> None:
    username, password = fresh_user()
    imap_server = ImapAccount("pymap", pymap_server, username, password)
    caplog.set_level(logging.DEBUG)
    with SmtpServer(username="desk", password="the-right-one") as server:
        settings = smtp_settings(server, username="desk", password=SECRET)
        result = asyncio.run(
            Sender(settings).send("desk@x.test", "c@x.test", b"Subject: x\r\n\r\nx")
        )
        assert result.outcome != "sent"
        assert [a.success for a in server.auth_attempts] == [False]
    mailbox = Mailbox(imap_server.config(password=SECRET))
    with pytest.raises(MailboxError) as failed:
        mailbox.connect()
    mailbox.close()
    assert SECRET not in str(failed.value)
    assert SECRET not in result.detail
    # the test servers run in this process and log what they receive; the client side must not
    ours = [r for r in caplog.records if not r.name.startswith(SERVER_LOGGERS)]
    leaked = [(r.name, r.getMessage()) for r in ours if SECRET in r.getMessage()]
    assert leaked == []


def test_a_config_with_a_password_readable_by_others_is_warned_about(
    world: DeskWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    cli_logging: None,
) -> None:
    monkeypatch.setenv("MAILDESK_CONFIG", str(world.config_path))
    world.config_path.chmod(0o644)
    assert cli.main(["quarantine", "list"]) == 0
    err = capsys.readouterr().err
    assert "readable by others" in err and str(world.config_path) in err
    assert world.account.password not in err

    world.config_path.chmod(0o600)
    assert cli.main(["quarantine", "list"]) == 0
    assert "readable by others" not in capsys.readouterr().err


# --------------------------------------------------------------------------- graceful stop


def test_sigterm_in_idle_and_in_an_smtp_retry_wait_exits_0_quickly(
    pymap_server: ImapServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """Against pymap only: what matters is the daemon's wait, not the server's IDLE."""
    username, password = fresh_user()
    world = DeskWorld(ImapAccount("pymap", pymap_server, username, password), smtp_server, tmp_path)
    try:
        sigterm_twice(world)
    finally:
        world.close()


def sigterm_twice(world: DeskWorld) -> None:
    env = {**os.environ, "MAILDESK_CONFIG": str(world.config_path)}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "maildesk", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(process: subprocess.Popen[bytes]) -> float:
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(15)
        took = time.monotonic() - began
        assert code == 0, process.stderr.read().decode()[-2000:] if process.stderr else ""
        return took

    # 1. idle: the mail is handled and acknowledged, the daemon waits in IDLE
    running = start()
    try:
        world.deliver(customer_mail("Idle", "Hello", sender="idle@x.test"))
        world.wait_mails_to("idle@x.test", 1, timeout=20)
    finally:
        idle_stop = stop(running)
    assert idle_stop < 5, idle_stop

    # 2. SMTP down: the daemon is between retries when it is told to stop
    world.smtp.stop()
    running = start()
    try:
        world.deliver(customer_mail("Retry", "Hello", sender="retry@x.test"))
        wait_until(lambda: attempted(world, "retry@x.test"), 20, "a delivery attempt")
    finally:
        retry_stop = stop(running)
    assert retry_stop < 5, retry_stop
    assert len(world.tickets()) == 2
    assert world.account.uids("INBOX") == []
    print(f"\nSIGTERM to exit: {idle_stop:.2f} s in IDLE, {retry_stop:.2f} s in an SMTP retry wait")


def attempted(world: DeskWorld, recipient: str) -> bool:
    with world.db.transaction() as session:
        row = session.scalar(select(Outbox).where(Outbox.recipient == recipient))
        # tried and refused: the error is kept (an unreachable server costs the mail no attempt)
        return row is not None and row.last_error is not None
