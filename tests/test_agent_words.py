"""Words an agent wrote always go out; only mail made wholly from templates is held back.

Loop protection and the hourly cap are for automatic mail: acknowledgments, reminders and the
notices of closing, auto-closing and escalation. A mail that carries what an agent wrote (a
reply, a written resolution, canned text the agent chose) is a person's answer: it is sent
whatever those counted, without ``Auto-Submitted`` (RFC 3834), and even to an address that
bounced before, which the agent's receipt then says. The receipt never says "Done" over a mail
to the customer that was held back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    CUSTOMER,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    delivery_report,
    ref_number,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

AUTOMATIC_HEADERS = ("Auto-Submitted", "Precedence", "X-Auto-Response-Suppress")


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server, smtp_server, tmp_path, clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    )
    yield w
    w.close()


def on_ticket(mails: list[Captured], number: int) -> list[Captured]:
    return [m for m in mails if ref_number(m) == number]


def receipts(world: DeskWorld, number: int) -> list[Captured]:
    return [
        m
        for m in on_ticket(world.mails_to(ALICE), number)
        if "Done" in str(m.message["Subject"]) or "Not done" in str(m.message["Subject"])
    ]


def test_an_agents_words_reach_a_customer_whose_automatic_mail_is_capped(
    world: DeskWorld,
) -> None:
    limit = world.settings.limits.auto_replies_per_address_per_hour
    for n in range(limit + 1):
        world.deliver(customer_mail(f"Question {n + 1}", f"Hello, question {n + 1}."))
    assert world.run_once() == 0
    # every ticket is made, the acknowledgments stop at the cap: she had `limit` this hour
    assert len(world.tickets()) == limit + 1
    assert len(world.mails_to(CUSTOMER)) == limit
    notices = {ref_number(m): m for m in world.mails_to(ALICE)}

    world.deliver(agent_reply(notices[1], ALICE, "#close\nThe driver is updated; it prints now."))
    world.deliver(agent_reply(notices[2], ALICE, "Which printer model is it?"))
    world.deliver(agent_reply(notices[3], ALICE, "#reply thanks\nThe part is ordered."))
    world.deliver(agent_reply(notices[4], ALICE, "#close\n#reply thanks"))
    world.deliver(agent_reply(notices[5], ALICE, "#close"))  # nothing written: a template
    world.run_once()

    customer = world.mails_to(CUSTOMER)[limit:]
    [closed] = on_ticket(customer, 1)
    assert "The driver is updated; it prints now." in text_of(closed)
    [reply] = on_ticket(customer, 2)
    assert text_of(reply).startswith("Which printer model is it?")
    [canned] = on_ticket(customer, 3)
    assert "Thank you for your patience" in text_of(canned)
    assert "The part is ordered." in text_of(canned)
    [closed_canned] = on_ticket(customer, 4)
    assert "Thank you for your patience" in text_of(closed_canned)
    for mail in (closed, reply, canned, closed_canned):
        assert [h for h in AUTOMATIC_HEADERS if h in mail.message] == []
    assert [t["status"] for t in world.tickets()[:5]] == [
        "closed",
        "pending",
        "pending",
        "closed",
        "closed",
    ]

    # the receipts tell the truth: said mailed where the customer was mailed ...
    for number in (1, 3, 4):
        [receipt] = receipts(world, number)
        assert "was not mailed" not in text_of(receipt)
        assert "Nobody outside" not in text_of(receipt)
    # a plain reply that went out needs no receipt but for the ticket becoming hers
    [claimed] = receipts(world, 2)
    assert "you answered it while nobody had it" in text_of(claimed)
    assert "was not mailed" not in text_of(claimed)
    # ... and a closing notice made only from the template is held by the cap, as before,
    # which the receipt says instead of a bare "Done"
    assert on_ticket(customer, 5) == []
    [receipt] = receipts(world, 5)
    assert "was not mailed" in text_of(receipt)
    assert "loop protection" in text_of(receipt)


def test_an_agents_reply_reaches_an_address_that_bounced_and_the_receipt_says_so(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    notice = on_ticket(world.mails_to(ALICE), 1)[0]
    world.deliver(delivery_report(ack, "failed", "5.1.1", diagnostic="550 5.1.1 User unknown"))
    world.run_once()
    assert world.ticket(1)["requester_bounced"] is True

    world.clock.advance(hours=2)
    world.deliver(agent_reply(notice, ALICE, "Could you call us on 555-0100?"))
    world.run_once()

    [_, reply] = world.mails_to(CUSTOMER)
    assert text_of(reply).startswith("Could you call us on 555-0100?")
    assert [h for h in AUTOMATIC_HEADERS if h in reply.message] == []
    [receipt] = receipts(world, 1)  # a receipt even for a plain reply, to say this
    text = " ".join(text_of(receipt).split())
    assert f"{CUSTOMER} bounced permanently on 2026-11-26 09:00 UTC (5.1.1); sent anyway" in text


def test_a_receipt_lists_the_commands_only_when_one_was_refused_or_asked_for(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    notice = on_ticket(world.mails_to(ALICE), 1)[0]
    hint = "For the list of commands, reply with #help on a line of its own."

    world.deliver(agent_reply(notice, ALICE, "#assign me\n#priority high"))
    world.run_once()
    [done] = receipts(world, 1)
    text = text_of(done).replace("\r\n", "\n")
    assert "assigned to you (" in text
    # the state in whole sentences, each on its line; then one line on how to ask for the list
    assert "is now open.\nPriority high, team support, assignee alice@example.com.\n" in text
    assert text.rstrip().endswith(hint)
    assert "#escalate <team>" not in text
    assert len(text.strip().splitlines()) < 12

    world.deliver(agent_reply(notice, ALICE, "#help"))
    world.deliver(agent_reply(notice, ALICE, "#priority hgih"))
    world.run_once()
    [asked] = [m for m in receipts(world, 1)[1:] if " Done" in str(m.message["Subject"])]
    [refused] = [m for m in receipts(world, 1) if "Not done" in str(m.message["Subject"])]
    for receipt in (asked, refused):
        assert "#escalate <team>" in text_of(receipt)  # the whole list
        assert hint not in text_of(receipt)
    assert "the commands are listed below" in text_of(asked)


def test_the_customers_copy_of_a_reply_names_no_message_id_of_the_agents_mail(
    world: DeskWorld,
) -> None:
    first = customer_mail("Printer broken", "It prints blank pages.")
    world.deliver(first)
    world.run_once()
    notice = on_ticket(world.mails_to(ALICE), 1)[0]
    answers = [
        agent_reply(notice, ALICE, "Is it plugged in?"),
        agent_reply(notice, ALICE, "Also, which model is it?"),
    ]
    for answer in answers:
        world.deliver(answer)
        world.run_once()
    _, *replies = world.mails_to(CUSTOMER)
    assert len(replies) == 2
    agents_ids = {str(answer["Message-ID"]) for answer in answers}
    for reply in replies:
        named = f"{reply.message['References']} {reply.message['In-Reply-To']}"
        assert str(first["Message-ID"]) in named  # the customer's own mail
        assert not [mid for mid in agents_ids if mid in named]  # never the agent's
        assert "example.com" not in named  # nor her mail host

    # the customer answers the last reply: it threads into the ticket all the same
    world.deliver(customer_mail("Re: Printer broken", "A LaserJet 4.", reply_to=replies[-1]))
    world.run_once()
    assert [m["text"] for m in world.ticket(1)["messages"]][-1].startswith("A LaserJet 4.")
