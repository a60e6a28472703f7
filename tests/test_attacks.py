"""Attacks by mail on what the daemon does outside the parse budget, each through the real daemon.

The parse of a message runs in a worker under ``[limits] parse_seconds``; everything else (the
header block of an oversized mail, the bounce of a delivery report, the ticket's history read
for each mail, the parsed value handed back) runs in the daemon, where no budget stops it. Each
test here sends the mail an outsider could send and checks what a user sees: the mail behind it
answered in time, the ticket's timeline, the daemon's memory, nothing forged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.mailworld import SmtpServer
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    DeskWorld,
    customer_mail,
    delivery_report,
    wait_until,
)
from tests.servers import ImapAccount

A_FEW_SECONDS = 5.0  # what the ordinary mail behind a poison may take beyond parse_seconds


def limits(**values: Any) -> str:
    return "\n[limits]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


def quarantined(world: DeskWorld) -> list[dict[str, Any]]:
    done = world.cli("quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr.decode()
    return list(json.loads(done.stdout))


class Daemon:
    """``maildesk run`` as its own process (so a stall in it is its own), logging to a file."""

    def __init__(self, world: DeskWorld, log: Path) -> None:
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--log-format", "json", "run"],
            env={**os.environ, "MAILDESK_CONFIG": str(world.config_path)},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:  # stuck in work it cannot leave: it failed
                self.process.kill()
                self.process.wait()
        self._stderr.close()


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: SmtpServer, tmp_path: Path, request: Any
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, extra_config=getattr(request, "param", ""))
    yield w
    w.close()


@pytest.fixture
def daemon(world: DeskWorld, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(world, tmp_path / "daemon.log")
    # ready once it has answered a first mail: logged in, idling, its parse worker started
    world.deliver(customer_mail("Hello", "Just checking in.", sender="first@customer.test"))
    world.wait_mails_to("first@customer.test", 1, timeout=30)
    yield d
    d.stop()


def poison_then_ordinary(world: DeskWorld, poison: bytes, seconds: float) -> float:
    """Put ``poison`` and then an ordinary customer mail in the inbox; how long the ordinary
    one's acknowledgment took (failing once it took more than ``seconds`` and a few more)."""
    world.deliver(poison)
    world.deliver(customer_mail("Printer jammed", "It jams on page 2.", sender="dana@ok.test"))
    appended = time.monotonic()
    world.wait_mails_to("dana@ok.test", 1, timeout=seconds + 3 * A_FEW_SECONDS)
    return time.monotonic() - appended


# --------------------------------------------------------------------------- oversized mail

OVERSIZE_LIMIT = 200_000


def oversized_with_slow_headers(semicolons: int) -> bytes:
    """A mail over the size limit whose header block (under 256 KB, so it is fetched) holds a
    Content-Type the standard library reads in time quadratic in its length: a quoted value
    that never ends, full of ``;`` (``email.message._parseparam`` counts the quotes before
    each one). 150,000 of them: about 80 s in one process here."""
    content_type = 'multipart/mixed; boundary="' + ";" * semicolons
    head = (
        "From: Mallory <mallory@poison.test>\r\nTo: support@example.com\r\n"
        "Subject: Photos\r\nMessage-ID: <slow-head@poison.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + b"x" * 78 + b"\r\n" * 2_000 + os.urandom(OVERSIZE_LIMIT).hex().encode()


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world",
    [limits(parse_seconds=1, max_message_bytes=OVERSIZE_LIMIT)],
    indirect=True,
    ids=["1s"],
)
def test_an_oversized_mails_header_block_is_read_within_the_parse_budget(
    world: DeskWorld, daemon: Daemon
) -> None:
    """The daemon reads only the header block of a mail over ``max_message_bytes``, but it read
    it itself, outside the budget: one such mail held the mailbox for minutes, again after
    every restart (it is moved only once handled)."""
    waited = poison_then_ordinary(world, oversized_with_slow_headers(150_000), 1)

    assert waited < 1 + A_FEW_SECONDS, f"the ordinary mail waited {waited:.1f} s"
    assert daemon.process.poll() is None, "the daemon died"
    [entry] = wait_until(lambda: quarantined(world), 10, "the oversized mail in quarantine")
    assert entry["error"].startswith("message of ")
    assert "exceeds [limits] max_message_bytes (200000)" in entry["error"]
    assert entry["subject"] == "Photos" and "mallory@poison.test" in entry["from"]
    assert entry["error"].endswith(
        "; no notice: its header block could not be read (parse budget exceeded)"
    )
    wait_until(lambda: world.account.uids("Quarantine"), 10, "moved to Quarantine")
    assert world.account.uids("INBOX") == []


# --------------------------------------------------------------------------- delivery reports


def bounce_events(world: DeskWorld, number: int) -> list[dict[str, Any]]:
    return [e for e in world.ticket(number)["events"] if e["kind"] == "bounce"]


@pytest.mark.parametrize("copies", [1, 2_000])
def test_a_report_repeating_its_recipient_acts_once(world: DeskWorld, copies: int) -> None:
    """A customer knows the VERP address of their own acknowledgment (its Return-Path); a
    report mailed there may speak for their address. Listing that address 2,000 times made
    2,000 bounce events in one transaction of the daemon's, and a 50 MB report 800,000."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    before = len(world.smtp.messages)
    report = delivery_report(
        ack, "failed", "5.1.1", recipients=[CUSTOMER] * copies, sender=f"<{CUSTOMER}>"
    )
    world.deliver(report)
    world.run_once()

    [bounced] = bounce_events(world, 1)
    assert (bounced["detail"]["recipient"], bounced["detail"]["status"]) == (CUSTOMER, "5.1.1")
    assert len(world.ticket(1)["events"]) == 4  # created, acknowledged, bounce, requester_bounced
    told = world.smtp.messages[before:]
    assert sorted(m.rcpt_tos for m in told) == [(ALICE,), (CAROL_AGENT,)]  # the team, once
