"""People see their own words, through the daemon against pymap and Dovecot: a customer's subject
as they wrote it, links and tables of HTML-only mail, replies without their wrapped quoted
history, and an agent's text on the line of ``#close``, ``#note`` or ``#escalate``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    BOB,
    CUSTOMER,
    DeskWorld,
    agent_reply,
    customer_mail,
    delivery_report,
    html_of,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

MAIL = Path(__file__).parent / "mail"
FULLWIDTH_HASH = "\uff03"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def shown(world: DeskWorld, number: int) -> dict[str, Any]:
    """``maildesk tickets show N --json``, as an admin reads it."""
    done = world.cli("tickets", "show", str(number), "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def open_ticket(world: DeskWorld, subject: str = "Order #A123") -> tuple[Captured, Captured]:
    world.deliver(customer_mail(subject, "My order has not arrived."))
    assert world.run_once() == 0
    return world.mails_to(CUSTOMER)[-1], world.mails_to(ALICE)[-1]


# --------------------------------------------------------------------------- subjects


def test_the_customer_sees_their_subject_and_agents_a_neutralised_one(world: DeskWorld) -> None:
    ack, notice = open_ticket(world, "Order #A123 and #close-out sale")
    assert str(ack.message["Subject"]) == "[#1] Order #A123 and #close-out sale"
    assert '"Order #A123 and #close-out sale"' in text_of(ack)
    assert "Order #A123 and #close-out sale" in (html_of(ack) or "")
    neutral = f"Order {FULLWIDTH_HASH}A123 and {FULLWIDTH_HASH}close-out sale"
    assert str(notice.message["Subject"]) == f"[#1] New: {neutral}"

    # replying to the notice with the neutralised subject quoted carries out no command
    world.deliver(agent_reply(notice, ALICE, "We are checking with the courier."))
    world.run_once()
    ticket = shown(world, 1)
    assert (ticket["status"], ticket["messages"][-1]["internal"]) == ("pending", False)
    [reply] = world.mails_to(CUSTOMER)[1:]
    assert "Order #A123 and #close-out sale" in str(reply.message["Subject"])


def test_a_bounce_notice_shows_agents_the_customers_subject_neutralised(
    world: DeskWorld,
) -> None:
    ack, _ = open_ticket(world)
    world.deliver(delivery_report(ack, "failed", "5.1.1"))
    world.run_once()
    [told] = world.mails_to(ALICE)[1:]
    text = " ".join(text_of(told).split())
    assert f'"[#1] Order {FULLWIDTH_HASH}A123", sent' in text
    assert "#A123" not in text and "#A123" not in str(told.message["Subject"])


# --------------------------------------------------------------------------- HTML


def test_html_only_mail_keeps_link_targets_and_table_cells(world: DeskWorld) -> None:
    world.deliver((MAIL / "html-only-links-and-table.eml").read_bytes())
    assert world.run_once() == 0
    text = shown(world, 1)["messages"][0]["text"]
    assert "Click this article <https://shop.example.net/help/missing-items> told me" in text
    assert "Item | Ordered | Delivered\nUSB-C cable | 2 | 1\nCharger 65 W | 1 | 0" in text
    assert "javascript" not in text and "data:" not in text
    [notice] = world.mails_to(ALICE)
    assert "USB-C cable | 2 | 1" in text_of(notice)


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    "attribution",
    [
        "Example Support <support@example.com> schrieb am Do., 26. Nov.\n2026, 10:00:",
        "czw., 26 lis 2026 o 10:00 Example Support <\nsupport@example.com> napisał(a):",
        "On Thu, Nov 26, 2026 at 10:00 AM Example Support <\nsupport@example.com> wrote:",
    ],
    ids=["german-phone", "polish", "english"],
)
def test_a_reply_with_a_wrapped_attribution_keeps_only_the_customers_words(
    world: DeskWorld, attribution: str
) -> None:
    ack, _ = open_ticket(world)
    body = f"It arrived today, thank you!\n\nDana\n\n{attribution}\n\n> Hello Dana,\n> ..."
    world.deliver(customer_mail(f"Re: {ack.message['Subject']}", body, reply_to=ack))
    world.run_once()
    assert shown(world, 1)["messages"][-1]["text"] == "It arrived today, thank you!\n\nDana"
    told = world.mails_to(ALICE)[-1]
    assert "It arrived today" in text_of(told) and "Hello Dana" not in text_of(told)


# --------------------------------------------------------------------------- agents' text


def test_close_with_its_resolution_on_the_same_line(world: DeskWorld) -> None:
    _, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#close Thanks, replaced the cable\nAlice"))
    world.run_once()
    ticket = shown(world, 1)
    assert ticket["status"] == "closed"
    closed = [e for e in ticket["events"] if e["kind"] == "closed"]
    assert closed[0]["detail"]["resolution"] == "Thanks, replaced the cable\nAlice"
    [closing] = world.mails_to(CUSTOMER)[1:]
    assert str(closing.message["Subject"]) == "Re: [#1] Order #A123 (closed)"
    assert "\n\nThanks, replaced the cable\nAlice\n\n" in text_of(closing).replace("\r\n", "\n")
    assert "#close" not in text_of(closing)
    [receipt] = world.mails_to(ALICE)[1:]
    assert text_of(receipt).startswith("Done on ticket [#1]:\r\n  - closed\r\n")


def test_note_and_escalate_with_their_text_on_the_same_line(world: DeskWorld) -> None:
    _, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#note checked the logs"))
    world.run_once()
    note = shown(world, 1)["messages"][-1]
    assert (note["internal"], note["text"]) == (True, "checked the logs")
    assert len(world.mails_to(CUSTOMER)) == 1

    world.deliver(agent_reply(notice, ALICE, "#escalate engineering needs a new fuser"))
    world.run_once()
    ticket = shown(world, 1)
    assert (ticket["status"], ticket["team"]) == ("escalated", "engineering")
    [escalated] = [e for e in ticket["events"] if e["kind"] == "escalated"]
    assert escalated["detail"]["summary"] == "needs a new fuser"
    [told] = world.mails_to(BOB)
    assert "needs a new fuser" in text_of(told)
    assert "fuser" not in text_of(world.mails_to(CUSTOMER)[-1])


def test_assign_then_close_with_text_and_priority_with_text_refused(world: DeskWorld) -> None:
    _, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#priority high Thanks"))
    world.run_once()
    ticket = shown(world, 1)
    assert (ticket["priority"], ticket["status"]) == ("medium", "open")
    assert ticket["messages"][-1]["internal"] is True
    receipt = text_of(world.mails_to(ALICE)[-1])
    assert "#priority high Thanks: priority must be one of" in receipt
    assert "write your text on a line below the commands" in " ".join(receipt.split())

    world.deliver(agent_reply(notice, ALICE, "#assign me #close Fixed it"))
    world.run_once()
    ticket = shown(world, 1)
    assert (ticket["assignee"], ticket["status"]) == (ALICE, "closed")
    assert "Fixed it" in text_of(world.mails_to(CUSTOMER)[-1])
