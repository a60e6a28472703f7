"""Forgery through honest headers: nothing a sender chooses acts for someone else.

Every attack runs through the real daemon against pymap and Dovecot: an agent impersonated
through what a receiving MTA repeats in its ``Authentication-Results``, a delivery report that
would silence customers it says nothing provable about, and a flood of forged agent mail that
would flood the agent with notices.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.demo.world import Captured
from maildesk.models import Ledger, Outbox
from tests.desk import (
    ALICE,
    CUSTOMER,
    DeskWorld,
    agent_reply,
    customer_mail,
    delivery_report,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        tables={"security": {"trusted_authserv_ids": ["mx.example.com"]}},
    )
    yield w
    w.close()


def open_ticket(world: DeskWorld, sender: str = CUSTOMER) -> tuple[Captured, Captured]:
    """A customer's new ticket: (their acknowledgment, the notice to Alice)."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=sender))
    world.run_once()
    return world.mails_to(sender)[-1], world.mails_to(ALICE)[-1]


def unverified_notices(world: DeskWorld, agent: str = ALICE) -> list[Captured]:
    return [m for m in world.mails_to(agent) if "could not be verified" in text_of(m)]


# --------------------------------------------------------------------------- impersonation

PHISHING = (
    "#assign me\n#priority urgent\n\n"
    "Dear customer, your account is locked. Confirm your card at http://evil.test/pay today.\n"
    "Alice Smith, Example Support"
)

# The topmost Authentication-Results, as the receiving MTA wrote it: each repeats something the
# sender chose (envelope sender, HELO name) or is not what it looks like once cleaned for display.
FORGED_VERDICTS = {
    "mailfrom-encoded-word": (
        b"mx.example.com; spf=pass smtp.mailfrom==?us-ascii?q?x=3B_dmarc=3Dpass_?=@evil.test"
    ),
    "mailfrom-encoded-word-with-header-from": (
        b"mx.example.com; spf=pass"
        b" smtp.mailfrom==?us-ascii?q?x=3B_dmarc=3Dpass_header.from=3Dexample.com_?=@evil.test"
    ),
    "spf-comment": (
        b"mx.example.com; spf=pass (mx.example.com: domain of"
        b" =?us-ascii?q?x=29=3B_dmarc=3Dpass_header.from=3Dexample.com_=28?=@evil.test\r\n"
        b" designates 192.0.2.7 as permitted sender) smtp.mailfrom=evil.test"
    ),
    "smtp-helo": (
        b"mx.example.com; spf=none"
        b" smtp.helo==?us-ascii?q?x=3B_dmarc=3Dpass_header.from=3Dexample.com?="
    ),
    "authserv-id-zero-width-space": (
        b"mx.example.com\xe2\x80\x8b; dmarc=pass header.from=example.com"
    ),
    # a quoted envelope sender, repeated in the SPF comment as it came: its ")" would end the
    # comment and its ";" start results of the MTA's own
    "spf-comment-quoted-sender": (
        b"mx.example.com; spf=pass (mx.example.com: domain of"
        b' "x);dmarc=pass header.from=example.com;("@evil.test designates 192.0.2.7 as'
        b' permitted sender) smtp.mailfrom="x);dmarc=pass header.from=example.com;("@evil.test'
    ),
    "spf-comment-quoted-sender-domain-only": (
        b"mx.example.com; spf=pass (mx.example.com: domain of"
        b' "x);dmarc=pass header.from=example.com;("@evil.test designates 192.0.2.7 as'
        b" permitted sender) smtp.mailfrom=evil.test"
    ),
    "dkim-comment-quoted": (
        b'mx.example.com; dkim=pass (2048-bit key; "x) header.d=example.com (") header.d=evil.test'
    ),
    "dmarc-pass-without-header-from": b"mx.example.com; dmarc=pass",
    "dmarc-pass-for-another-domain": b"mx.example.com; dmarc=pass header.from=evil.test",
}


def forged_agent_mail(notice: Captured, verdict: bytes, world: DeskWorld) -> bytes:
    """Alice's address in From:, sent to the plain desk address (no token), threaded to the
    ticket, with the receiving MTA's verdict on top."""
    message = agent_reply(notice, ALICE, PHISHING, to=world.address)
    return b"Authentication-Results: " + verdict + b"\r\n" + message.as_bytes()


@pytest.mark.parametrize("verdict", FORGED_VERDICTS.values(), ids=FORGED_VERDICTS.keys())
def test_a_verdict_that_is_not_read_exactly_proves_no_agent(
    world: DeskWorld, verdict: bytes
) -> None:
    ack, notice = open_ticket(world)
    world.deliver(forged_agent_mail(notice, verdict, world))
    world.run_once()

    ticket = world.ticket(1)
    assert (ticket["assignee"], ticket["priority"], ticket["status"]) == (None, "medium", "open")
    assert world.mails_to(CUSTOMER) == [ack]  # the phishing text reached no customer
    note = ticket["messages"][-1]
    assert note["internal"] and note["unverified"]
    assert "http://evil.test/pay" in note["text"]
    [told] = unverified_notices(world)
    assert "#assign me" in text_of(told) and "#priority urgent" in text_of(told)


def test_the_trusted_servers_own_dmarc_pass_for_the_from_domain_still_proves_an_agent(
    world: DeskWorld,
) -> None:
    ack, notice = open_ticket(world)
    world.deliver(
        forged_agent_mail(notice, b"mx.example.com; dmarc=pass header.from=example.com", world)
    )
    world.run_once()

    ticket = world.ticket(1)
    assert (ticket["assignee"], ticket["priority"]) == (ALICE, "urgent")
    assert not ticket["messages"][-1]["internal"]
    [reply] = world.mails_to(CUSTOMER)[1:]
    assert "http://evil.test/pay" in text_of(reply)  # it was Alice: her words go out
    assert unverified_notices(world) == []


# --------------------------------------------------------------------------- delivery reports

CAROL = "carol@customer.test"
MALLORY = "mallory@evil.test"
BIG = "purchasing@bigcorp.test"


def outbox_row(world: DeskWorld, captured: Captured) -> Outbox:
    with world.db.transaction() as session:
        row = session.scalar(
            select(Outbox).where(Outbox.message_id == captured.message["Message-ID"].strip("<>"))
        )
        assert row is not None
        return row


def ledger_reasons(world: DeskWorld) -> list[tuple[str, str]]:
    with world.db.transaction() as session:
        return [(r.outcome, r.reason) for r in session.scalars(select(Ledger).order_by(Ledger.id))]


def acknowledged(world: DeskWorld, address: str) -> int:
    """How many acknowledgments the address has got (a suppressed address gets none)."""
    return len(world.mails_to(address))


def test_a_report_at_the_plain_address_is_recorded_and_silences_no_one(world: DeskWorld) -> None:
    carol_ack, _ = open_ticket(world, CAROL)
    mallory_ack, _ = open_ticket(world, MALLORY)
    open_ticket(world, BIG)
    # Mallory knows Message-IDs of our mail: her own acknowledgment's, and Carol's if Carol
    # ever showed it to her. Each report names one and lists the biggest customer and Carol.
    for about in (carol_ack, mallory_ack):
        world.deliver(
            delivery_report(
                about,
                "failed",
                "5.1.1",
                to=world.address,
                recipients=[BIG, CAROL],
                sender=f"Mail Delivery System <{MALLORY}>",
            )
        )
    world.run_once()

    # recorded on the tickets of the mails they name, by whom, and nothing else
    for number, about in ((1, carol_ack), (2, mallory_ack)):
        events = world.ticket(number)["events"]
        [recorded] = [e for e in events if e["kind"] == "bounce_unproven"]
        assert recorded["actor"] == MALLORY
        assert [r["address"] for r in recorded["detail"]["recipients"]] == [BIG, CAROL]
        assert recorded["detail"]["message_id"] == about.message["Message-ID"].strip("<>")
        assert not [e for e in events if e["kind"] == "bounce"]
        assert outbox_row(world, about).status == "sent"
    assert [o for o, _ in ledger_reasons(world)[-2:]] == ["bounce", "bounce"]
    assert all("recorded only" in r for _, r in ledger_reasons(world)[-2:])

    # no one is silenced: their next tickets are acknowledged
    for address in (BIG, CAROL, MALLORY):
        world.deliver(customer_mail("Another question", "Hello again", sender=address))
    world.run_once()
    assert [acknowledged(world, a) for a in (BIG, CAROL, MALLORY)] == [2, 2, 2]


def test_a_report_at_the_verp_address_acts_only_for_that_mails_recipient(
    world: DeskWorld,
) -> None:
    carol_ack, _ = open_ticket(world, CAROL)
    mallory_ack, _ = open_ticket(world, MALLORY)
    open_ticket(world, BIG)
    # Mallory's own acknowledgment came from its VERP address (its Return-Path): a report she
    # sends there speaks for her address only
    world.deliver(
        delivery_report(
            mallory_ack, "failed", "5.1.1", recipients=[BIG, CAROL], sender=f"<{MALLORY}>"
        )
    )
    # Carol's MTA really bounces her acknowledgment, back to its VERP address
    world.deliver(delivery_report(carol_ack, "failed", "5.1.1"))
    world.run_once()

    # Carol: the genuine report fails the row and suppresses her, as a bounce always did
    [bounced] = [e for e in world.ticket(1)["events"] if e["kind"] == "bounce"]
    assert (bounced["detail"]["recipient"], bounced["detail"]["status"]) == (CAROL, "5.1.1")
    row = outbox_row(world, carol_ack)
    assert row.status == "failed" and row.last_error is not None and CAROL in row.last_error
    # Mallory's report names others than her own mail's recipient: recorded, not acted on
    events = world.ticket(2)["events"]
    assert not [e for e in events if e["kind"] == "bounce"]
    [recorded] = [e for e in events if e["kind"] == "bounce_unproven"]
    assert [r["address"] for r in recorded["detail"]["recipients"]] == [BIG, CAROL]
    assert outbox_row(world, mallory_ack).status == "sent"

    for address in (BIG, CAROL):
        world.deliver(customer_mail("Another question", "Hello again", sender=address))
    world.run_once()
    assert acknowledged(world, BIG) == 2  # never suppressed
    assert acknowledged(world, CAROL) == 1  # suppressed by her own MTA's report


# --------------------------------------------------------------------------- amplification


def test_forty_forged_mails_give_the_agent_one_notice_an_hour(world: DeskWorld) -> None:
    ack, notice = open_ticket(world)
    before = len(world.mails_to(ALICE))
    for n in range(40):
        world.deliver(agent_reply(notice, ALICE, f"#close\nforged {n}", to=world.address))
    world.run_once()

    [told] = unverified_notices(world)
    assert len(world.mails_to(ALICE)) == before + 1
    assert "since the last notice" not in text_of(told)
    ticket = world.ticket(1)
    notes = [m for m in ticket["messages"] if m["unverified"]]
    assert [m["text"] for m in notes] == [f"#close\nforged {n}" for n in range(40)]
    assert ticket["status"] == "open" and world.mails_to(CUSTOMER) == [ack]

    # an hour later the next one is told, with how many came in Alice's name since
    world.clock.advance(hours=1, minutes=1)
    world.deliver(agent_reply(notice, ALICE, "#close\nforged again", to=world.address))
    world.run_once()
    first, second = unverified_notices(world)
    assert first is told
    assert "40 messages claiming to be from you could not be verified" in text_of(second)
    assert "[#1]" in text_of(second)
    assert len([m for m in world.ticket(1)["messages"] if m["unverified"]]) == 41
