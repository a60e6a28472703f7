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
from tests.desk import ALICE, CAROL_AGENT, CUSTOMER, ON_BOTH_DATABASES, DeskWorld, customer_mail
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
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    tables = {
        "security": {"trusted_authserv_ids": ["mx.example.com"]},
        "intake": {"blocked_senders": ["*@blocked.test"]},
    }
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables=tables, database_url=database_url)
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


PROVEN = [("Authentication-Results", "mx.example.com; dmarc=pass header.from=example.com")]


def from_agent(subject: str, body: str = "", sender: str = ALICE) -> EmailMessage:
    """An agent's mail their own MTA proved (``trusted_authserv_ids``), naming a ticket's ref."""
    return customer_mail(subject, body or "\n", sender=sender, headers=PROVEN)


def blocked_list(world: DeskWorld) -> list[dict]:
    done = world.cli("intake", "blocked", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@ON_BOTH_DATABASES
def test_spam_block_stops_the_next_mail_from_that_sender(world: DeskWorld) -> None:
    world.deliver(customer_mail("Invoice overdue", "Open the attachment.", sender=SPAMMER))
    world.run_once()
    assert len(world.mails_to(SPAMMER)) == 1  # the acknowledgment, before anyone knew
    world.deliver(from_agent("[#1] #spam block", "Phishing, see the link."))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["status"] == "spam"
    assert ticket["due_at"] is None
    assert [m["internal"] for m in ticket["messages"]] == [False, True]  # the text: a note
    assert {"spam", "blocked"} <= {e["kind"] for e in ticket["events"]}
    assert len(world.mails_to(SPAMMER)) == 1  # the customer got nothing
    [receipt] = world.mails_to(ALICE)[1:]
    assert f"{SPAMMER} blocked" in " ".join(receipt.message.get_body().get_content().split())
    assert listed(world) == []

    # the next mail from that sender opens nothing, and nobody hears of it
    sent = len(world.smtp.messages)
    world.deliver(customer_mail("Final notice", "Pay now.", sender=SPAMMER))
    world.run_once()
    assert len(world.tickets()) == 1
    assert len(world.smtp.messages) == sent
    with world.db.transaction() as session:
        last = session.scalars(select(Ledger).order_by(Ledger.id.desc())).first()
        assert last is not None and last.outcome == "ignored"
        assert f"{SPAMMER} was blocked by an agent" in last.reason

    # the block list shows the config's pattern and the agent's address; unblocking lets it in
    entries = blocked_list(world)
    assert [(e["address"], e["source"]) for e in entries] == [
        ("*@blocked.test", "config"),
        (SPAMMER, "agent"),
    ]
    assert (entries[1]["blocked_by"], entries[1]["ticket"]) == (ALICE, "[#1]")
    assert world.cli("intake", "unblock", SPAMMER).returncode == 0
    assert [e["source"] for e in blocked_list(world)] == ["config"]
    again = world.cli("intake", "unblock", SPAMMER)
    assert again.returncode == 1 and b"is not blocked" in again.stderr
    config = world.cli("intake", "unblock", "promo@blocked.test")
    assert config.returncode == 1 and b"blocked_senders" in config.stderr
    world.deliver(customer_mail("Sorry", "That was not me.", sender=SPAMMER))
    world.run_once()
    assert [t["status"] for t in world.tickets()] == ["spam", "open"]


def test_spam_block_blocks_who_sent_it_never_the_reply_to_it_named(world: DeskWorld) -> None:
    """A spammer names a customer in Reply-To (the ticket answers her, as a web form's): the
    agent's ``#spam block`` blocks the address the mail came from, so nobody can have another
    person's mail kept out by sending spam in her name."""
    victim = "dana@customer.test"
    spam = customer_mail("You won", "Claim now.", sender=SPAMMER, headers=[("Reply-To", victim)])
    world.deliver(spam)
    world.run_once()
    assert world.ticket(1)["requester"] == victim
    world.deliver(from_agent("[#1] #spam block"))
    world.run_once()
    [receipt] = world.mails_to(ALICE)[1:]
    assert f"{SPAMMER} blocked" in " ".join(receipt.message.get_body().get_content().split())
    assert [e["address"] for e in blocked_list(world) if e["source"] == "agent"] == [SPAMMER]

    world.deliver(customer_mail("My order", "Where is it?", sender=victim))
    world.deliver(customer_mail("You won again", "Claim now.", sender=SPAMMER))
    world.run_once()
    # her mail opens a ticket; the spammer's opens nothing
    assert [(t["requester"], t["status"]) for t in world.tickets()] == [
        (victim, "spam"),
        (victim, "open"),
    ]


def test_notspam_opens_the_ticket_and_sends_what_it_missed(world: DeskWorld) -> None:
    mail = customer_mail("Printer broken", "It prints blank pages.")
    world.deliver(arrived(mail, above="X-Spam-Status: Yes, score=6.1\r\n"))
    world.run_once()
    assert world.ticket(1)["status"] == "spam" and world.smtp.messages == []

    world.deliver(from_agent("[#1] #notspam"))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["status"] == "open"
    assert "not_spam" in [e["kind"] for e in ticket["events"]]
    [ack] = world.mails_to(CUSTOMER)
    assert "[#1]" in ack.message["Subject"] and ack.message["Auto-Submitted"] == "auto-replied"
    notices = [m for m in world.mails_to(CAROL_AGENT) if "New:" in str(m.message["Subject"])]
    assert len(notices) == 1
    assert "It prints blank pages." in notices[0].message.get_body().get_content()
    assert any("not spam" in m.message.get_body().get_content() for m in world.mails_to(ALICE))
    assert listed(world)[0]["status"] == "open"


def test_contradicting_spam_commands_are_refused_and_change_nothing(world: DeskWorld) -> None:
    world.deliver(customer_mail("Offer", "Buy.", sender=SPAMMER))
    world.run_once()
    number = world.tickets()[-1]["number"]
    world.deliver(from_agent(f"[#{number}] #spam block #spam"))
    world.run_once()
    assert world.ticket(number)["status"] == "open"  # refused: nothing applied
    receipt = world.mails_to(ALICE)[-1].message.get_body().get_content()
    assert "conflicts with #spam block" in " ".join(receipt.split())
    assert blocked_list(world) == [
        {
            "address": "*@blocked.test",
            "source": "config",
            "blocked_by": "",
            "blocked_at": None,
            "ticket": None,
        }
    ]
