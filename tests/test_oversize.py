"""Mail over ``[limits] max_message_bytes`` is answered: quarantined with its sender and subject,
the sender told once an hour (never automatic mail), the admin alerted once an hour with a count,
and the message left whole in the quarantine folder; through the daemon and ``maildesk ingest``.
"""

from __future__ import annotations

import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk.mail.rendering import filesize
from tests.desk import CUSTOMER, Clock, DeskWorld, customer_mail, html_of, text_of
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

ADMIN = "admin@example.com"
LIMIT = 200_000


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        tables={"limits": {"max_message_bytes": LIMIT}},
        clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
    )
    yield w
    w.close()


def oversized(
    subject: str, sender: str = CUSTOMER, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A mail of about 300 KB: a few lines and a zip of photos."""
    message: EmailMessage = customer_mail(
        subject, "Photos of the printer attached.", sender=sender, headers=headers
    )
    message.add_attachment(
        os.urandom(225_000), maintype="application", subtype="zip", filename="photos.zip"
    )
    raw = message.as_bytes(policy=email.policy.SMTP)
    assert 280_000 < len(raw) < 320_000
    return raw


def quarantined(world: DeskWorld) -> list[dict[str, Any]]:
    done = world.cli("quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_oversized_mail_is_quarantined_its_sender_told_and_the_admin_alerted(
    world: DeskWorld,
) -> None:
    big = oversized("Photos of the jammed printer #A123")
    world.deliver(big)
    assert world.run_once() == 0

    [entry] = quarantined(world)
    assert entry["from"] == CUSTOMER
    assert entry["subject"] == "Photos of the jammed printer #A123"
    assert entry["error"] == (
        f"message of {len(big)} bytes exceeds [limits] max_message_bytes ({LIMIT}); sender told"
    )
    # nothing lost: the message is whole in the quarantine folder, nothing left to fetch
    assert world.account.messages("Quarantine") == [big]
    assert world.account.messages("INBOX") == []
    assert world.tickets() == []

    [notice] = world.mails_to(CUSTOMER)
    assert str(notice.message["Subject"]) == (
        "Your message was too large to receive: Photos of the jammed printer #A123"
    )
    text = text_of(notice)
    size = filesize(len(big))
    assert size.endswith(" KB") and "200 KB" in text
    assert f'"Photos of the jammed printer #A123" is {size},' in text
    assert "larger than the 200 KB that Example Support can take in" in text
    assert "download link" in text and f"{size}</strong>" in (html_of(notice) or "")
    assert notice.message["Auto-Submitted"] == "auto-replied"
    assert notice.message["In-Reply-To"] == customer_message_id(big)

    [alert] = world.mails_to(ADMIN)
    assert str(alert.message["Subject"]) == (
        "[Example Support] 1 message too large to take, quarantined"
    )
    alerted = text_of(alert)
    assert "1 message larger than [limits] max_message_bytes (200 KB) arrived" in alerted
    assert f"From:    {CUSTOMER}" in alerted
    assert "Subject: Photos of the jammed printer #A123" in alerted
    assert f"Size:    {size}, mailbox support" in alerted
    assert "It is in the folder Quarantine of that mailbox" in alerted


def customer_message_id(raw: bytes) -> str:
    header = raw.split(b"\nMessage-ID: ", 1)[1].split(b"\n", 1)[0]
    return header.decode().strip()


def test_one_notice_an_hour_none_to_automatic_mail_and_one_alert_an_hour_with_a_count(
    world: DeskWorld,
) -> None:
    world.deliver(oversized("First photos"))
    world.run_once()
    assert len(world.mails_to(CUSTOMER)) == len(world.mails_to(ADMIN)) == 1

    world.clock.advance(minutes=20)
    automatic = [
        oversized("More photos"),  # the same sender within the hour
        oversized(
            "Out of office",
            sender="away@customer.test",
            headers=(("Auto-Submitted", "auto-replied"),),
        ),
        oversized(
            "Undelivered Mail Returned to Sender",
            sender="MAILER-DAEMON@mx.customer.test",
            headers=(("Return-Path", "<>"),),
        ),
        oversized(
            "[users] weekly digest", sender="list@lists.test", headers=(("List-Id", "<users>"),)
        ),
    ]
    for raw in automatic:
        world.deliver(raw)
    world.run_once()
    assert len(world.mails_to(CUSTOMER)) == 1  # no second notice within the hour
    for address in ("away@customer.test", "MAILER-DAEMON@mx.customer.test", "list@lists.test"):
        assert world.mails_to(address) == []
    assert len(world.mails_to(ADMIN)) == 1  # held back within the hour
    errors = {entry["subject"]: entry["error"] for entry in quarantined(world)}
    assert errors["More photos"].endswith(
        "; no notice: the sender was told of another message within the hour"
    )
    assert errors["Out of office"].endswith(
        "; no notice: automatic mail (Auto-Submitted: auto-replied)"
    )
    assert errors["Undelivered Mail Returned to Sender"].endswith(
        "; no notice: automatic mail (delivery report (heuristic))"
    )
    assert errors["[users] weekly digest"].endswith(
        "; no notice: automatic mail (mailing list (list-id))"
    )
    assert len(world.account.messages("Quarantine")) == 5

    # an hour after the first alert: the sender may be told again, the admin gets the count
    world.clock.advance(minutes=41)
    world.deliver(oversized("Photos, third try"))
    world.run_once()
    assert len(world.mails_to(CUSTOMER)) == 2
    [_, alert] = world.mails_to(ADMIN)
    assert str(alert.message["Subject"]) == (
        "[Example Support] 5 messages too large to take, quarantined"
    )
    assert (
        "5 messages larger than [limits] max_message_bytes (200 KB) arrived since the last "
        "alert (2026-11-26 09:00 UTC) and were quarantined" in text_of(alert)
    )
    assert "Subject: Photos, third try" in text_of(alert)
    assert world.account.messages("INBOX") == []
    assert len(world.account.messages("Quarantine")) == 6


def test_a_crash_before_the_move_tells_nobody_twice(world: DeskWorld) -> None:
    big = oversized("Photos of the jammed printer")
    world.deliver(big)
    crashed = maildesk_run_once(world, MAILDESK_CRASH_AT="after_commit")
    assert crashed.returncode == 137
    assert world.account.messages("INBOX") == [big]  # committed, not moved
    done = maildesk_run_once(world)
    assert done.returncode == 0, done.stderr
    assert world.account.messages("Quarantine") == [big]
    # the delivery process may have sent a mail just before the crash: then again, with the
    # same Message-ID; never a second notice or alert
    assert len({m.message["Message-ID"] for m in world.mails_to(CUSTOMER)}) == 1
    assert len({m.message["Message-ID"] for m in world.mails_to(ADMIN)}) == 1
    [entry] = quarantined(world)
    assert entry["error"].endswith("; sender told")


def maildesk_run_once(world: DeskWorld, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "run", "--once"],
        env={**os.environ, "MAILDESK_CONFIG": str(world.config_path), **env},
        capture_output=True,
        timeout=60,
    )


def test_oversized_mail_piped_in_is_answered_the_same(world: DeskWorld) -> None:
    big = oversized("Photos of the jammed printer")
    done = world.cli("ingest", input=big)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"quarantined - (message of {len(big)} bytes exceeds")
    [entry] = quarantined(world)
    assert (entry["from"], entry["subject"], entry["uid"]) == (
        CUSTOMER,
        "Photos of the jammed printer",
        None,
    )
    assert entry["error"].endswith("; sender told")
    delivered = world.cli("deliver", "--once")
    assert delivered.returncode == 0, delivered.stderr
    [notice] = world.mails_to(CUSTOMER)
    assert f"is {filesize(len(big))}," in text_of(notice)
    [alert] = world.mails_to(ADMIN)
    assert "It came through `maildesk ingest`, which kept it whole" in text_of(alert)
    replay = world.cli("quarantine", "replay", str(entry["id"]))
    assert replay.returncode == 1  # still over the limit: quarantined again, nothing lost
    assert b"quarantined" in replay.stdout
    world.rewrite_config(limits={"max_message_bytes": LIMIT * 10})
    replay = world.cli("quarantine", "replay", str(entry["id"]))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    [ticket] = world.tickets()
    assert ticket["subject"] == "Photos of the jammed printer"
    [message] = ticket["messages"]
    assert message["text"] == "Photos of the printer attached."
    [photos] = message["attachments"]
    assert (photos["filename"], photos["size"]) == ("photos.zip", 225_000)
