"""Bounces reach the people who can act.

A mail of a ticket that did not arrive, proven by a delivery report at its VERP address or
refused for good by the SMTP server, is told to the ticket's assignee (else its team): which
mail, which address, the server's words. A ticket whose requester's address refused mail for
good shows ``requester_bounced`` and is neither reminded nor closed by the timers until the
customer writes again. Bounces of the desk's mail to agents are told to no one, so a notice
that bounces cannot start a loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    CUSTOMER,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    delivery_report,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

USER_UNKNOWN = (
    f"550 5.1.1 <{CUSTOMER}>: Recipient address rejected: User unknown in virtual mailbox table"
)
EVERYONE = (ALICE, CAROL_AGENT, BOB, CUSTOMER, "admin@example.com")


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server, smtp_server, tmp_path, clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    )
    yield w
    w.close()


def open_ticket(world: DeskWorld) -> tuple[Captured, Captured]:
    """A customer's new ticket: (her acknowledgment, the notice to Alice)."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    return world.mails_to(CUSTOMER)[-1], world.mails_to(ALICE)[-1]


def counts(world: DeskWorld) -> dict[str, int]:
    return {address: len(world.mails_to(address)) for address in EVERYONE}


def new_mail(world: DeskWorld, before: dict[str, int]) -> dict[str, list[Captured]]:
    """The mail each address got since ``before`` (addresses that got none left out)."""
    return {a: world.mails_to(a)[n:] for a, n in before.items() if world.mails_to(a)[n:]}


def flat(captured: Captured) -> str:
    return " ".join(text_of(captured).split())


def test_a_bounced_acknowledgment_is_told_to_the_assignee_in_the_servers_words(
    world: DeskWorld,
) -> None:
    ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#assign me"))
    world.run_once()
    before = counts(world)

    world.clock.advance(minutes=5)
    world.deliver(delivery_report(ack, "failed", "5.1.1", diagnostic=USER_UNKNOWN))
    world.run_once()

    [told] = new_mail(world, before).pop(ALICE)
    assert new_mail(world, before) == {ALICE: [told]}  # Alice only: nobody else, no customer
    assert "[#1]" in str(told.message["Subject"])
    assert "not delivered" in str(told.message["Subject"])
    text = flat(told)
    assert f"The acknowledgment sent to {CUSTOMER}" in text  # which mail, which address
    assert f'"{ack.message["Subject"]}", sent 2026-11-26 09:00 UTC' in text
    assert "5.1.1" in text and USER_UNKNOWN in text  # the server's words
    assert "Auto-Submitted" in told.message  # a notice to an agent is the desk's own
    ticket = world.ticket(1)
    assert ticket["requester_bounced"] is True
    assert ticket["assignee"] == ALICE


def test_an_unassigned_tickets_bounce_goes_to_its_team_and_agents_bounces_to_no_one(
    world: DeskWorld,
) -> None:
    ack, notice = open_ticket(world)
    before = counts(world)

    # the notice to Alice bounces: nobody is told of the desk's mail to its own agents
    world.deliver(delivery_report(notice, "failed", "5.1.1", diagnostic="550 5.1.1 no Alice"))
    world.run_once()
    assert new_mail(world, before) == {}
    assert world.ticket(1)["requester_bounced"] is False

    # the acknowledgment bounces: the support team hears of it, engineering does not
    world.deliver(delivery_report(ack, "failed", "5.1.1", diagnostic=USER_UNKNOWN))
    world.run_once()
    got = new_mail(world, before)
    assert sorted(got) == [ALICE, CAROL_AGENT]
    for address in (ALICE, CAROL_AGENT):
        [told] = got[address]
        assert "acknowledgment" in flat(told) and USER_UNKNOWN in flat(told)

    # the bounce notice bounces in turn: told to no one, no loop
    before = counts(world)
    world.deliver(delivery_report(got[ALICE][0], "failed", "5.2.2", diagnostic="552 5.2.2 full"))
    world.run_once()
    assert new_mail(world, before) == {}


def test_a_delay_is_recorded_and_told_to_no_one(world: DeskWorld) -> None:
    ack, _ = open_ticket(world)
    before = counts(world)
    world.deliver(delivery_report(ack, "delayed", "4.4.1", diagnostic="451 4.4.1 try later"))
    world.run_once()
    assert new_mail(world, before) == {}
    ticket = world.ticket(1)
    assert ticket["requester_bounced"] is False
    assert [e["detail"]["action"] for e in ticket["events"] if e["kind"] == "bounce"] == ["delayed"]


def test_a_reply_the_smtp_server_refuses_is_told_like_a_bounce(world: DeskWorld) -> None:
    ack, notice = open_ticket(world)
    before = counts(world)
    # the customer's server (through ours) refuses her address at RCPT TO: a permanent failure
    world.smtp.script("rcpt", USER_UNKNOWN, to=CUSTOMER)
    world.deliver(agent_reply(notice, ALICE, "Which floor is the printer on?"))
    world.run_once()

    got = new_mail(world, before)
    # her answer made the ticket hers (claim on reply): she is told; never the customer
    assert sorted(got) == [ALICE]
    [told] = [m for m in got[ALICE] if "not delivered" in str(m.message["Subject"])]
    text = flat(told)
    assert f"The reply sent to {CUSTOMER}" in text
    assert '"Re: [#1] Printer broken"' in text  # the subject of the mail that did not arrive
    assert USER_UNKNOWN in text
    ticket = world.ticket(1)
    assert ticket["requester_bounced"] is True
    [failed] = [e for e in ticket["events"] if e["kind"] == "mail_failed"]
    assert USER_UNKNOWN in failed["detail"]["error"]


def test_a_pending_ticket_whose_requester_bounced_is_neither_reminded_nor_closed(
    world: DeskWorld,
) -> None:
    ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "Which floor is the printer on?"))
    world.run_once()
    reply = world.mails_to(CUSTOMER)[-1]
    world.deliver(delivery_report(reply, "failed", "5.1.1", diagnostic=USER_UNKNOWN))
    world.run_once()

    shown = world.cli("tickets", "show", "1", "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    assert json.loads(shown.stdout)["requester_bounced"] is True
    listed = world.cli("tickets", "list", "--json")
    assert [t["requester_bounced"] for t in json.loads(listed.stdout)] == [True]

    # past remind_pending_after (3 days), then past close_pending_after (7 days)
    before = counts(world)
    for _ in range(4):
        world.clock.advance(days=2, hours=1)
        assert world.run_once() == 0
    ticket = world.ticket(1)
    assert ticket["status"] == "pending"
    kinds = [e["kind"] for e in ticket["events"]]
    assert "reminded" not in kinds and "auto_closed" not in kinds
    [held] = [e for e in ticket["events"] if e["kind"] == "timers_held"]  # said once
    assert "bounced" in held["detail"]["reason"]
    assert new_mail(world, before) == {}
    assert ticket["requester_bounced"] is True

    # she writes again from that address: it works, the mark goes, the ticket is open again
    world.deliver(
        customer_mail("Re: Printer", "Floor 3. Sorry, my mailbox was full.", reply_to=reply)
    )
    world.run_once()
    ticket = world.ticket(1)
    assert (ticket["status"], ticket["requester_bounced"]) == ("open", False)
    shown = world.cli("tickets", "show", "1", "--json")
    assert json.loads(shown.stdout)["requester_bounced"] is False
