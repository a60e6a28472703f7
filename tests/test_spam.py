"""Spam kept out, through the real daemon: the MTA's verdicts make ``spam`` tickets nobody is
mailed about, a verdict a spammer wrote counts for nothing, and blocked senders open nothing."""

from __future__ import annotations

import email.policy
import json
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.models import Ledger
from tests.desk import ALICE, CAROL_AGENT, CUSTOMER, DeskWorld, customer_mail
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

SPAMMER = "win@lottery.test"
# what the desk's MTA writes on top of a mail it took from the world
OWN_HOP = (
    "Received: from mail.lottery.test (mail.lottery.test [203.0.113.9])\r\n"
    "\tby mx.example.com (Postfix) with ESMTP id 4F1A2; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
)
VERDICTS = [
    "X-Spam-Flag: YES",
    "X-Spam-Status: Yes, score=15.2 required=5.0 tests=BAYES_99,URIBL_BLACK",
    "X-Rspamd-Action: reject",
    "X-Rspamd-Action: add header",
    "X-Rspamd-Action: rewrite subject",
    "X-Spam: Yes",
]


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    tables = {
        "security": {"trusted_authserv_ids": ["mx.example.com"]},
        "intake": {"blocked_senders": ["*@blocked.test"]},
    }
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables=tables)
    yield w
    w.close()


def arrived(message: EmailMessage, above: str = "", below: str = "") -> bytes:
    """``message`` as the desk's mailbox holds it: ``above`` the desk's MTA's Received: line
    (what that MTA added), ``below`` it (what came from outside)."""
    raw = message.as_bytes(policy=email.policy.SMTP)
    return (above + OWN_HOP + below).encode() + raw


def listed(world: DeskWorld, *args: str) -> list[dict]:
    done = world.cli("tickets", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_each_spam_verdict_makes_a_spam_ticket_nobody_is_mailed_about(world: DeskWorld) -> None:
    for index, verdict in enumerate(VERDICTS):
        mail = customer_mail(f"You won #{index}", "Claim your prize.", sender=SPAMMER)
        world.deliver(arrived(mail, above=verdict + "\r\n"))
    world.run_once()
    tickets = world.tickets()
    assert [t["status"] for t in tickets] == ["spam"] * len(VERDICTS)
    for ticket, verdict in zip(tickets, VERDICTS, strict=True):
        spam = [e for e in ticket["events"] if e["kind"] == "spam"]
        assert [e["kind"] for e in ticket["events"]] == ["created", "spam"]
        assert verdict.split(":")[0] in json.dumps(spam)
        assert ticket["due_at"] is None
    assert world.smtp.messages == []  # no acknowledgment, no notice
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Processed")) == len(VERDICTS)
    assert listed(world) == []
    assert len(listed(world, "--status", "spam")) == len(VERDICTS)


def test_a_verdict_below_a_foreign_received_counts_for_nothing(world: DeskWorld) -> None:
    # the spammer's own "YES" below the desk's hop: an ordinary ticket
    world.deliver(arrived(customer_mail("Printer", "Broken."), below="X-Spam-Flag: YES\r\n"))
    # and the spammer's own "NO" below does not outweigh the desk's "YES" above
    spam = customer_mail("You won", "Claim it.", sender=SPAMMER)
    world.deliver(arrived(spam, above="X-Spam-Flag: YES\r\n", below="X-Spam-Flag: NO\r\n"))
    world.run_once()
    assert [t["status"] for t in world.tickets()] == ["open", "spam"]
    assert len(world.mails_to(CUSTOMER)) == 1  # the acknowledgment
    assert world.mails_to(SPAMMER) == []
    assert len(world.mails_to(ALICE)) == 1 and len(world.mails_to(CAROL_AGENT)) == 1


def test_a_follow_up_with_a_verdict_is_kept_quietly(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer", "Broken."))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    sent = len(world.smtp.messages)
    follow = customer_mail("Re: " + str(ack.message["Subject"]), "More.", reply_to=ack)
    world.deliver(arrived(follow, above="X-Spam: Yes\r\n"))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["status"] == "open"
    assert [m["automatic"] for m in ticket["messages"]] == [None, "spam verdict (X-Spam: Yes)"]
    assert len(world.smtp.messages) == sent


def test_a_blocked_sender_opens_nothing_and_is_recorded(world: DeskWorld) -> None:
    world.deliver(customer_mail("Offer", "Buy now.", sender="promo@blocked.test"))
    world.run_once()
    assert world.tickets() == []
    assert world.smtp.messages == []
    assert len(world.account.uids("Processed")) == 1
    with world.db.transaction() as session:
        [row] = session.scalars(select(Ledger)).all()
        assert row.outcome == "ignored"
        assert "promo@blocked.test matches blocked_senders '*@blocked.test'" in row.reason
