"""Everyone on the thread: the people a customer's mail names in To and Cc join the ticket,
the mails that carry its news reach them in Cc, and a web form's Reply-To is the customer.

What a user sees: the ticket's ``participants`` in ``maildesk tickets show --json``, the mail
each address receives (its envelope and its headers), and the tickets a participant's answer
lands on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.demo.world import Captured
from maildesk.models import Contact
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    ON_BOTH_DATABASES,
    DeskWorld,
    agent_reply,
    customer_mail,
    delivery_report,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

DAVE = "dave@customer.test"  # Carol's colleague, on Cc of her first mail
ERIN = "erin@customer.test"  # Cc'd by a later mail
GINA = "gina@customer.test"  # wrote through the shop's web form
SHOP = "noreply@shop.test"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url)
    yield w
    w.close()


def people(ticket: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(p["address"], p["role"], p["added_by"]) for p in ticket["participants"]]


def lines(mail: Captured) -> str:
    """The mail's text with its lines ended as ``\\n``."""
    return text_of(mail).replace("\r\n", "\n")


def cc_of(mail: Captured) -> list[str]:
    return [a.strip() for a in str(mail.message.get("Cc", "")).split(",") if a.strip()]


def test_to_and_cc_of_every_customer_mail_join_the_ticket_but_the_desk_and_agents(
    world: DeskWorld,
) -> None:
    desk_plus = world.address.replace("@", "+anything@")
    first = customer_mail(
        "Printer broken",
        "It prints blank pages.",
        headers=[("Cc", f"{DAVE}, {ALICE}, {desk_plus}, Support <{world.address}>")],
    )
    world.deliver(first)
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    assert ack.rcpt_tos == (CUSTOMER,) and "Cc" not in ack.message  # acknowledgments: requester
    assert world.mails_to(DAVE) == []
    ticket = world.ticket(1)
    assert people(ticket) == [(CUSTOMER, "requester", CUSTOMER), (DAVE, "cc", CUSTOMER)]
    assert ticket["participants"][1]["added_at"] == ticket["created_at"]
    # the agents' notice says who else reads the answers
    [notice] = world.mails_to(ALICE)
    assert f"\nCc: {DAVE} (copied on your replies)\n" in lines(notice)
    assert "Requester:" not in text_of(notice)  # she is who wrote

    # a later mail of the customer's names someone new in To: they join too, added by her
    later = customer_mail(
        f"Re: {ack.message['Subject']}",
        "Erin sees it too.",
        to=f"{ERIN}, support@example.com",
        reply_to=ack,
        headers=[("Cc", DAVE)],
    )
    world.deliver(later)
    world.run_once()
    ticket = world.ticket(1)
    assert people(ticket) == [
        (CUSTOMER, "requester", CUSTOMER),
        (DAVE, "cc", CUSTOMER),
        (ERIN, "cc", CUSTOMER),
    ]
    [added] = [e for e in ticket["events"] if e["kind"] == "cc_added"][1:]
    assert added["actor"] == CUSTOMER and added["detail"] == {"added": [ERIN]}
    assert world.mails_to(ERIN) == []  # joining mails nobody
    replied = world.mails_to(ALICE)[-1]
    assert "Customer replied" in str(replied.message["Subject"])
    assert f"\nCc: {DAVE}, {ERIN} (copied on your replies)\n" in lines(replied)
    shown = world.cli("tickets", "show", "1")
    assert f"cc {DAVE}, {ERIN}" in shown.stdout.decode()


def web_form(**headers: str) -> bytes:
    """A shop's contact form, as its mailer sends it."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"From: Shop Contact Form <{SHOP}>\r\nTo: support@example.com\r\n{extra}"
        "Subject: Order 1234 never arrived\r\nMessage-ID: <form-1@shop.test>\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nName: Gina\r\nMy parcel never came.\r\n"
    ).encode()


def test_a_web_forms_reply_to_customer_is_the_requester_and_gets_the_answer(
    world: DeskWorld,
) -> None:
    world.deliver(web_form(**{"Reply-To": f"Gina <{GINA}>"}))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["requester"] == GINA
    assert ticket["messages"][0]["from"] == SHOP  # From: stays the message's sender
    assert people(ticket) == [(GINA, "requester", GINA)]
    [ack] = world.mails_to(GINA)
    assert world.mails_to(SHOP) == []

    [notice] = world.mails_to(ALICE)
    said = lines(notice)
    assert f"from {SHOP}.\n" in said
    assert f"\nRequester: {GINA} (your replies go there)\n" in said
    world.deliver(agent_reply(notice, ALICE, "Hi Gina, a new parcel is on its way."))
    world.run_once()
    [_, answer] = world.mails_to(GINA)
    assert text_of(answer).startswith("Hi Gina, a new parcel is on its way.")
    assert world.mails_to(SHOP) == []

    # she answers from her own address, on the thread: her message on the same ticket
    world.deliver(customer_mail("Re: parcel", "Thank you!", sender=GINA, reply_to=answer))
    world.run_once()
    assert [m["from"] for m in world.ticket(1)["messages"]][-1] == GINA
    assert len(world.tickets()) == 1


def test_reply_to_is_not_the_requester_when_the_mailbox_says_so_or_it_is_the_desk(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    world = DeskWorld(
        imap_server, smtp_server, tmp_path, tables={"mailbox": {"reply_to_requester": False}}
    )
    try:
        world.deliver(web_form(**{"Reply-To": GINA}))
        world.run_once()
        assert world.ticket(1)["requester"] == SHOP
    finally:
        world.close()


def test_a_reply_to_naming_the_desk_an_agent_several_or_from_itself_keeps_from_as_requester(
    world: DeskWorld,
) -> None:
    cases = {
        "the desk": "support@example.com",
        "two addresses": f"{GINA}, other@customer.test",
        "the sender itself": SHOP,
        # a form filled in with an agent's address: the agent would get the acknowledgment
        # and every answer, as the customer
        "an agent": f"Alice <{ALICE.upper()}>",
    }
    for n, (what, reply_to) in enumerate(cases.items()):
        mail = web_form(**{"Reply-To": reply_to}).replace(b"form-1@", f"form-{what}-{n}@".encode())
        world.deliver(mail.replace(b"Order 1234", what.encode()))
    world.run_once()
    assert {t["subject"]: t["requester"] for t in world.tickets()} == {
        f"{what} never arrived": SHOP for what in cases
    }
    # Alice has the team's notices, never a customer's acknowledgment
    assert [m.message["Auto-Submitted"] for m in world.mails_to(ALICE)] == ["auto-generated"] * 4


@ON_BOTH_DATABASES
def test_a_ccd_colleague_gets_the_answers_the_escalation_and_the_closing_and_can_answer(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", headers=[("Cc", DAVE)]))
    world.run_once()
    [notice] = world.mails_to(ALICE)

    world.deliver(agent_reply(notice, ALICE, "Which model is it?"))
    world.run_once()
    [_, to_carol] = world.mails_to(CUSTOMER)
    [to_dave] = world.mails_to(DAVE)
    # one mail: the same Message-ID and headers, To the requester and Cc the colleague ...
    for mail in (to_carol, to_dave):
        assert mail.message["To"] == CUSTOMER and cc_of(mail) == [DAVE]
        assert text_of(mail).startswith("Which model is it?")
    assert to_carol.message["Message-ID"] == to_dave.message["Message-ID"]
    assert to_carol.raw == to_dave.raw
    # ... in an envelope of its own for each: its own VERP return path
    assert (to_carol.rcpt_tos, to_dave.rcpt_tos) == ((CUSTOMER,), (DAVE,))
    assert to_carol.mail_from != to_dave.mail_from

    # the colleague answers into the ticket: its owner is told, the ticket opens again
    world.deliver(
        customer_mail("Re: Printer broken", "It is an HP 4000.", sender=DAVE, reply_to=to_dave)
    )
    world.run_once()
    ticket = world.ticket(1)
    assert (ticket["messages"][-1]["from"], ticket["status"]) == (DAVE, "open")
    assert "It is an HP 4000." in text_of(world.mails_to(ALICE)[-1])
    with world.db.transaction() as session:  # he answered the desk's mail to him: heard from
        assert session.get(Contact, DAVE) is not None

    world.deliver(
        agent_reply(notice, ALICE, "Needs a fuser.", subject_extra=" #escalate engineering")
    )
    world.run_once()
    [escalated] = world.mails_to(DAVE)[1:]
    assert cc_of(escalated) == [DAVE] and escalated.rcpt_tos == (DAVE,)

    carols = world.mails_to(CAROL_AGENT)[-1]  # the escalation notice to engineering
    world.deliver(agent_reply(carols, CAROL_AGENT, "#close\nNew fuser fitted."))
    world.run_once()
    [closing] = world.mails_to(DAVE)[2:]
    assert "New fuser fitted." in text_of(closing) and cc_of(closing) == [DAVE]
    assert world.ticket(1)["status"] == "closed"
    assert [m.rcpt_tos for m in world.mails_to(CUSTOMER)][-1] == (CUSTOMER,)


def test_a_bounce_of_a_copy_is_about_its_participant_alone(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", headers=[("Cc", DAVE)]))
    world.run_once()
    [notice] = world.mails_to(ALICE)
    world.deliver(agent_reply(notice, ALICE, "Which model is it?"))
    world.run_once()
    [to_dave] = world.mails_to(DAVE)
    before = len(world.mails_to(ALICE))
    world.deliver(delivery_report(to_dave, "failed", "5.1.1", diagnostic="550 5.1.1 unknown"))
    world.run_once()
    ticket = world.ticket(1)
    [bounce] = [e for e in ticket["events"] if e["kind"] == "bounce"]
    assert bounce["detail"]["recipient"] == DAVE
    assert ticket["requester_bounced"] is False  # Carol's mail arrived
    # Dave is marked on the ticket, and its owner told which mail did not reach whom
    assert [p["bounced"] for p in ticket["participants"]] == [False, True]
    [marked] = [e for e in ticket["events"] if e["kind"] == "participant_bounced"]
    assert (marked["detail"]["address"], marked["detail"]["status"]) == (DAVE, "5.1.1")
    [told] = world.mails_to(ALICE)[before:]
    said = " ".join(text_of(told).split())
    assert str(told.message["Subject"]).startswith("[#1] Mail not delivered")
    assert f"The reply sent to {DAVE} on ticket [#1] was not delivered" in said
    assert f"{DAVE} is on this ticket's Cc" in said and f"#uncc {DAVE}" in said
    assert "no reminder and does not close by itself" not in said  # that is the requester's
    # the closing notice is made from the template: held for Dave, who bounced, sent to Carol
    world.deliver(agent_reply(notice, ALICE, "#close"))
    world.run_once()
    assert len(world.mails_to(DAVE)) == 1 and len(world.mails_to(CUSTOMER)) == 3

    # Dave writes again: his address works, the mark goes
    world.deliver(
        customer_mail("Re: Printer broken", "New address, same me.", sender=DAVE, reply_to=to_dave)
    )
    world.run_once()
    ticket = world.ticket(1)
    assert [p["bounced"] for p in ticket["participants"]] == [False, False]
    assert ticket["events"][-1]["kind"] != "participant_bounced"
    assert any(e["kind"] == "bounce_cleared" and e["actor"] == DAVE for e in ticket["events"])


def receipt_after(world: DeskWorld, mail: Any) -> str:
    """The text of Alice's receipt for ``mail``, words joined by single spaces."""
    before = len(world.mails_to(ALICE))
    world.clock.advance(minutes=1)
    world.deliver(mail)
    world.run_once()
    [receipt] = [m for m in world.mails_to(ALICE)[before:] if "one" in str(m.message["Subject"])]
    return " ".join(text_of(receipt).split())


def test_agents_cc_uncc_and_name_the_requester_by_mail_and_malformed_ones_are_refused(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    [notice] = world.mails_to(ALICE)

    said = receipt_after(world, agent_reply(notice, ALICE, f"#cc {DAVE}\nDave, FYI."))
    assert f"added to Cc: {DAVE}" in said
    [to_dave] = world.mails_to(DAVE)
    assert text_of(to_dave).startswith("Dave, FYI.") and cc_of(to_dave) == [DAVE]

    said = receipt_after(world, agent_reply(notice, ALICE, f"#requester <{GINA}>\nHello Gina."))
    assert f"requester set to {GINA}; the requester before stays on Cc" in said
    [to_gina] = world.mails_to(GINA)
    assert to_gina.message["To"] == GINA and sorted(cc_of(to_gina)) == sorted([DAVE, CUSTOMER])
    assert world.mails_to(CUSTOMER)[-1].message["Message-ID"] == to_gina.message["Message-ID"]
    ticket = world.ticket(1)
    assert people(ticket) == [
        (GINA, "requester", ALICE),
        (DAVE, "cc", ALICE),
        (CUSTOMER, "cc", ALICE),
    ]

    said = receipt_after(world, agent_reply(notice, ALICE, f"#uncc {DAVE}"))
    assert f"removed from Cc: {DAVE}" in said
    assert [p for p, *_ in people(world.ticket(1))] == [GINA, CUSTOMER]

    refusals = {
        "#cc Dave": "'Dave' is not a mail address",
        f"#cc {world.address}": "is the desk's own address",
        "#requester bob@example.com": "bob@example.com is an agent of this desk, not a customer",
        f"#uncc {ERIN}": f"{ERIN} is not on this ticket's Cc",
    }
    before = world.ticket(1)
    for command, reason in refusals.items():
        said = receipt_after(world, agent_reply(notice, ALICE, f"{command}\nSecret words."))
        assert reason in said, said
    after = world.ticket(1)
    assert (after["requester"], after["participants"]) == (
        before["requester"],
        before["participants"],
    )
    assert [e["kind"] for e in after["events"]].count("command_refused") == len(refusals)
    assert "Secret words." not in " ".join(text_of(m) for m in world.mails_to(GINA))
    kinds = [e["kind"] for e in after["events"]]
    assert {"cc_added", "requester_changed", "cc_removed"} <= set(kinds)


JOERG = "jörg@kunde.test"  # a participant whose address needs SMTPUTF8 (RFC 6531)


@pytest.mark.parametrize("announced", [True, False], ids=["smtputf8", "no-smtputf8"])
def test_a_non_ascii_participant_is_copied_only_where_the_server_takes_it(
    imap_server: ImapAccount, tmp_path: Path, announced: bool
) -> None:
    with ScriptedSmtp(smtputf8=announced) as smtp:
        world = DeskWorld(imap_server, smtp, tmp_path)
        try:
            cc = f"Jörg <{JOERG}>, {DAVE}"
            world.deliver(customer_mail("Drucker", "Er druckt nicht.", headers=[("Cc", cc)]))
            world.run_once()  # the acknowledgment: the desk learns what the server announces
            assert [p for p, *_ in people(world.ticket(1))] == [CUSTOMER, DAVE, JOERG]
            [notice] = world.mails_to(ALICE)
            said = receipt_after(world, agent_reply(notice, ALICE, "Welches Modell?"))
            [_, to_carol] = world.mails_to(CUSTOMER)
            [to_dave] = world.mails_to(DAVE)
            if announced:
                [to_joerg] = world.mails_to(JOERG)
                assert sorted(cc_of(to_carol)) == sorted([DAVE, JOERG]) == sorted(cc_of(to_joerg))
                assert "not copied" not in said
                return
            # without SMTPUTF8 a header naming him cannot be sent: he is left out of the Cc
            assert world.mails_to(JOERG) == []
            for mail in (to_carol, to_dave):
                assert cc_of(mail) == [DAVE] and mail.raw.isascii()
            assert f"{JOERG} was not copied" in said and "does not announce SMTPUTF8" in said
            [event] = [e for e in world.ticket(1)["events"] if e["kind"] == "not_copied"]
            assert (event["detail"]["recipient"], event["detail"]["mail"]) == (JOERG, "reply")
        finally:
            world.close()
