"""check-config proves the round trip: a probe through the SMTP server to support+probe-...@,
found in the mailbox and deleted, or a FAIL line naming the missing piece.

The SMTP side is the aiosmtpd server with an MTA's local delivery (``deliver_into``): what it
accepts for the desk's address or a plus address of it lands in the IMAP account (pymap and
Dovecot alike). A relay without plus addressing, or refusing the envelope sender, answers as
Postfix does (scripted replies at RCPT and MAIL: one probe, one command each).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.act.ingest import Outcome
from maildesk.demo.world import SmtpServer
from maildesk.desk import routing
from maildesk.mail import compose
from maildesk.mail.inbound import Limits, parse
from maildesk.models import Ledger
from maildesk.service import roundtrip
from tests.desk import DeskWorld, customer_mail, wait_until
from tests.servers import ImapAccount, deliver_into


@pytest.fixture
def world(imap_server: ImapAccount, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def lines(done: object) -> list[str]:
    return done.stdout.decode().splitlines()  # type: ignore[attr-defined]


def addresses(world: DeskWorld) -> tuple[str, str]:
    """Patterns of the probe's recipient and envelope sender for this world's desk address."""
    local, domain = (re.escape(p) for p in world.address.split("@"))
    return (
        rf"{local}\+probe-[0-9a-f]{{20}}@{domain}",
        rf"{local}\+bounce-[0-9a-f]{{20}}-[0-9a-f]{{10}}@{domain}",
    )


def test_the_probe_arrives_and_is_deleted(world: DeskWorld) -> None:
    world.smtp.on_message = deliver_into(world.account)
    done = world.cli("check-config")
    out = lines(done)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    probe_to, bounce = addresses(world)
    assert re.fullmatch(
        rf"ok   probe {probe_to}: sent with envelope sender {bounce}, arrived in mailbox "
        r"support \((INBOX|Processed)\) after \d+\.\d s, deleted",
        out[-1],
    ), out
    [sent] = world.smtp.messages
    assert re.fullmatch(bounce, sent.mail_from) and re.fullmatch(probe_to, sent.rcpt_tos[0])
    assert out[-1].split()[2] == sent.rcpt_tos[0] + ":"
    # gone from the mailbox: nothing left for a daemon to pick up, in either folder
    assert world.account.uids("INBOX") == [] and world.account.uids("Processed") == []
    assert world.run_once() == 0
    assert world.tickets() == [] and len(world.smtp.messages) == 1


def test_without_plus_addressing_the_fail_line_says_so(world: DeskWorld) -> None:
    world.smtp.on_message = deliver_into(world.account)
    world.smtp.script(
        "rcpt",
        "550 5.1.1 <probe>: Recipient address rejected: User unknown in local recipient table",
    )
    done = world.cli("check-config")
    assert done.returncode == 1
    probe_to, _ = addresses(world)
    assert re.fullmatch(
        rf"FAIL probe: SMTP server refused {probe_to} — enable plus addressing "
        r"\(recipient_delimiter = \+ in Postfix\): 550 5\.1\.1 <probe>: Recipient address "
        r"rejected: User unknown in local recipient table",
        lines(done)[-1],
    ), lines(done)
    assert [line.split()[0] for line in lines(done)[:-1]] == ["ok"] * 5
    assert world.smtp.messages == [] and world.account.uids("INBOX") == []


def test_a_refused_envelope_sender_is_named(world: DeskWorld) -> None:
    world.smtp.script("mail", "553 5.7.1 <bounce>: Sender address rejected: not owned by user")
    done = world.cli("check-config")
    assert done.returncode == 1
    _, bounce = addresses(world)
    assert re.fullmatch(
        rf"FAIL probe: SMTP server refused the envelope sender {bounce}: 553 5\.7\.1 <bounce>: "
        r"Sender address rejected: not owned by user",
        lines(done)[-1],
    ), lines(done)


def test_a_probe_accepted_but_never_delivered_fails_after_the_wait(world: DeskWorld) -> None:
    # the SMTP server takes the mail and drops it (no local delivery)
    done = world.cli("check-config", "--probe-wait", "1")
    assert done.returncode == 1
    assert lines(done)[-1] == (
        "FAIL probe: the probe was accepted but did not arrive in mailbox support within 1 s "
        "(check delivery / plus addressing at the IMAP side)"
    )
    assert len(world.smtp.messages) == 1


def test_no_probe_skips_it(world: DeskWorld) -> None:
    done = world.cli("check-config", "--no-probe")
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert [line.split()[0] for line in lines(done)] == ["ok"] * 5
    assert not any(line.split()[1].startswith("probe") for line in lines(done))
    assert world.smtp.messages == []


def test_no_probe_when_a_server_failed(world: DeskWorld) -> None:
    world.smtp.stop()
    done = world.cli("check-config")
    assert done.returncode == 1
    assert lines(done)[-2].startswith("FAIL smtp")
    assert lines(done)[-1] == (
        "warn probe not sent: it needs the database, every mailbox and the SMTP server"
    )


def test_a_running_daemon_leaves_the_probe_to_check_config(world: DeskWorld) -> None:
    world.smtp.on_message = deliver_into(world.account)
    outcomes: list[Outcome] = []
    daemon = world.start(on_outcome=lambda _box, outcome: outcomes.append(outcome))
    try:
        wait_until(
            lambda: "support" in daemon.mailboxes and daemon.mailboxes["support"].connected,
            10,
            "the daemon watches the mailbox",
        )
        done = world.cli("check-config")
        assert done.returncode == 0, (done.stdout + done.stderr).decode()
        assert lines(done)[-1].startswith("ok   probe ")
    finally:
        world.stop()
    # whichever saw it first, the probe made no ticket and no mail, and is gone
    assert world.tickets() == []
    assert len(world.smtp.messages) == 1
    assert all(o.kind == "ignored" and "check-config probe" in o.reason for o in outcomes)
    assert world.account.uids("INBOX") == [] and world.account.uids("Processed") == []


def test_the_daemon_ignores_a_probe_and_moves_it_to_processed(world: DeskWorld) -> None:
    """What a running daemon does with a probe it sees first (check-config then finds it in
    the processed folder): recorded as ignored, no ticket, no mail."""
    probe = compose.probe_mail(world.settings, datetime.now(UTC))
    world.deliver(f"Delivered-To: {probe.to}\r\n".encode() + probe.body)
    assert world.run_once() == 0
    assert world.tickets() == [] and world.smtp.messages == []
    assert world.account.uids("INBOX") == [] and len(world.account.uids("Processed")) == 1
    with world.db.transaction() as session:
        [row] = session.scalars(select(Ledger)).all()
        assert (row.outcome, row.reason) == ("ignored", "our own check-config probe")


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_only_our_signed_probe_is_recognised(world: DeskWorld) -> None:
    """A stranger writing to support+probe-<anything>@ is a customer like any other."""
    probe = compose.probe_mail(world.settings, datetime.now(UTC))
    ours = parse(probe.body, Limits())
    assert routing.classify(ours, world.desk.identity).reason == "our own check-config probe"
    forged_id = probe.body.replace(
        f"Message-ID: <{probe.message_id}>".encode(),
        b"Message-ID: <md.00000000000000000000.000000000000@example.test>",
    )
    forged = parse(forged_id.replace(b"X-Maildesk-Loop", b"X-Other"), Limits())
    assert forged.to == ours.to
    assert routing.classify(forged, world.desk.identity).reason != "our own check-config probe"


def test_a_probe_a_daemon_moved_is_found_in_processed_and_only_it_is_deleted(
    world: DeskWorld,
) -> None:
    probe = compose.probe_mail(world.settings, datetime.now(UTC))
    other = customer_mail("Printer", "It jams.").as_bytes()
    world.account.append(other, "Processed")
    world.account.append(probe.body, "Processed")
    world.account.append(other, "INBOX")
    clock = time.monotonic
    with roundtrip.connected(world.settings.mailboxes) as boxes:
        piped = roundtrip.Piped(world.db, ())
        found = roundtrip.arrival(boxes, piped, probe.message_id, clock() + 5, clock)
        assert found is not None and (found.mailbox, found.folder) == ("support", "Processed")
        assert roundtrip.remove(boxes, probe.message_id, clock() + 5, clock) == ""
    [kept] = world.account.messages("Processed")
    assert b"It jams." in kept and probe.message_id.encode() not in kept
    assert len(world.account.uids("INBOX")) == 1
