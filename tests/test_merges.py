"""Two agents, two answers: a reply written against an older notice than another agent's reply
is held, and #send or #drop decides; #merge and #link join tickets; a new ticket's notice names
the requester's other open tickets. Through the daemon, on pymap and on Dovecot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    ON_BOTH_DATABASES,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    ref_number,
    reply_to_address,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

pytestmark = ON_BOTH_DATABASES


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    clock = Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url, clock=clock)
    yield w
    w.close()


def on_ticket(mails: list[Captured], number: int) -> list[Captured]:
    return [m for m in mails if ref_number(m) == number]


def subject(mail: Captured) -> str:
    return str(mail.message["Subject"])


def replies_to_customer(world: DeskWorld, number: int) -> list[str]:
    """The agents' replies the customer got on ticket ``number`` (not the acknowledgment)."""
    return [
        text_of(m).split("\n--")[0].strip()
        for m in on_ticket(world.mails_to(CUSTOMER), number)
        if "received" not in text_of(m).lower() and "Re:" in subject(m)
    ]


def two_answers(world: DeskWorld) -> tuple[Captured, Captured]:
    """A customer's question; Alice and Carol both get the notice; Alice answers first."""
    world.deliver(customer_mail("Wifi password", "What is the guest wifi password?"))
    world.run_once()
    [alice_notice] = world.mails_to(ALICE)
    [carol_notice] = world.mails_to(CAROL_AGENT)
    world.clock.advance(minutes=5)
    world.deliver(agent_reply(alice_notice, ALICE, "It is guest2026."))
    world.run_once()
    world.clock.advance(minutes=5)
    return alice_notice, carol_notice


def test_a_reply_to_an_older_notice_is_held_and_sent_with_send(
    world: DeskWorld, database_url: str | None
) -> None:
    _, carol_notice = two_answers(world)
    number = ref_number(carol_notice)
    world.deliver(agent_reply(carol_notice, CAROL_AGENT, "It is on the reception desk."))
    world.run_once()

    # the customer got one answer; Carol is told whose, and when, with its text
    assert replies_to_customer(world, number) == ["It is guest2026."]
    [held] = [m for m in world.mails_to(CAROL_AGENT) if "Held, not sent" in subject(m)]
    assert "Alice Smith" in subject(held)
    assert "It is guest2026." in text_of(held)
    assert "It is on the reception desk." in text_of(held)
    assert "09:05" in text_of(held)
    shown = world.ticket(number)
    assert "reply_held" in [e["kind"] for e in shown["events"]]
    [kept] = [m for m in shown["messages"] if m["text"] == "It is on the reception desk."]
    assert kept["internal"] is True

    # answering the held mail with #send sends it after all, from a restarted desk
    world.close()
    world = DeskWorld(
        world.account, world.smtp, world.root, database_url=database_url, clock=world.clock
    )
    try:
        world.clock.advance(minutes=1)
        world.deliver(agent_reply(held, CAROL_AGENT, "#send"))
        world.run_once()
        assert replies_to_customer(world, number) == [
            "It is guest2026.",
            "It is on the reception desk.",
        ]
        [kept] = [
            m
            for m in world.ticket(number)["messages"]
            if m["text"] == "It is on the reception desk."
        ]
        assert kept["internal"] is False
        # nothing is held any more: a second #send is refused, with the reason
        world.deliver(agent_reply(held, CAROL_AGENT, "#send"))
        world.run_once()
        receipt = [m for m in world.mails_to(CAROL_AGENT) if "Not done" in subject(m)]
        assert "no reply of yours is held on this ticket" in text_of(receipt[-1])
    finally:
        world.close()


def test_a_held_reply_dropped_stays_a_note(world: DeskWorld) -> None:
    _, carol_notice = two_answers(world)
    number = ref_number(carol_notice)
    world.deliver(agent_reply(carol_notice, CAROL_AGENT, "It is on the reception desk."))
    world.run_once()
    [held] = [m for m in world.mails_to(CAROL_AGENT) if "Held, not sent" in subject(m)]
    world.deliver(agent_reply(held, CAROL_AGENT, "#drop"))
    world.run_once()
    assert replies_to_customer(world, number) == ["It is guest2026."]
    shown = world.ticket(number)
    assert "reply_dropped" in [e["kind"] for e in shown["events"]]
    [kept] = [m for m in shown["messages"] if m["text"] == "It is on the reception desk."]
    assert kept["internal"] is True


def test_the_assignees_reply_is_never_held(world: DeskWorld) -> None:
    world.deliver(customer_mail("Wifi password", "What is the guest wifi password?"))
    world.run_once()
    [alice_notice] = world.mails_to(ALICE)
    [carol_notice] = world.mails_to(CAROL_AGENT)
    number = ref_number(carol_notice)
    world.deliver(agent_reply(carol_notice, CAROL_AGENT, "#assign me"))
    world.run_once()
    world.clock.advance(minutes=5)
    world.deliver(agent_reply(alice_notice, ALICE, "It is guest2026."))
    world.run_once()
    world.clock.advance(minutes=5)
    world.deliver(agent_reply(carol_notice, CAROL_AGENT, "It is on the reception desk."))
    world.run_once()
    assert world.ticket(number)["assignee"] == CAROL_AGENT
    assert replies_to_customer(world, number) == [
        "It is guest2026.",
        "It is on the reception desk.",
    ]
    assert not [m for m in world.mails_to(CAROL_AGENT) if "Held, not sent" in subject(m)]


def test_merge_moves_the_thread_and_mail_to_the_old_ref_joins_the_target(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer jams", "The printer jams on every page."))
    world.run_once()
    world.clock.advance(minutes=10)
    world.deliver(customer_mail("Printer still broken", "Did you see my mail about the printer?"))
    world.run_once()
    acks = world.mails_to(CUSTOMER)
    second_notice = on_ticket(world.mails_to(ALICE), 2)[0]
    # the second ticket's notice names the requester's first, still open
    assert "Other open tickets of dana@customer.test" in text_of(second_notice)
    assert "[#1] Printer jams" in text_of(second_notice)

    refused = [
        ("#merge #2", "cannot be merged into itself"),
        ("#merge #99", "there is no ticket #99"),
        ("#merge", "name one ticket"),
    ]
    for command, reason in refused:
        world.deliver(agent_reply(second_notice, ALICE, command))
        world.run_once()
        receipt = [m for m in world.mails_to(ALICE) if "Not done" in subject(m)][-1]
        assert reason in text_of(receipt)
    world.deliver(agent_reply(second_notice, ALICE, "#merge #1\nSame printer as #1."))
    world.run_once()

    merged, target = world.ticket(2), world.ticket(1)
    assert (merged["status"], merged["merged_into"]) == ("merged", "[#1]")
    assert merged["messages"] == []
    texts = [m["text"] for m in target["messages"]]
    assert "Did you see my mail about the printer?" in texts
    assert "Same printer as #1." in texts
    # the customer is told once, under the old ref, that the target's ref is the one
    [told] = [m for m in world.mails_to(CUSTOMER)[len(acks) :] if "[#1]" in text_of(m)]
    assert ref_number(told) == 2
    assert "both are handled under [#1]" in " ".join(text_of(told).split())
    # a follow-up to the merged ref, by In-Reply-To of its old mail, joins the target
    world.deliver(customer_mail("Re: [#2] Printer still broken", "Any news?", reply_to=acks[1]))
    # and one naming only the old ref in its subject does too
    world.deliver(customer_mail("Re: [#2] Printer still broken", "Hello again?"))
    world.run_once()
    texts = [m["text"] for m in world.ticket(1)["messages"]]
    assert "Any news?" in texts and "Hello again?" in texts
    assert len(world.tickets()) == 2
    # merging into a merged ticket is refused
    world.deliver(customer_mail("Toner", "The toner is empty."))
    world.run_once()
    third = on_ticket(world.mails_to(ALICE), 3)[0]
    world.deliver(agent_reply(third, ALICE, "#merge #2"))
    world.run_once()
    receipt = [m for m in world.mails_to(ALICE) if "Not done" in subject(m)][-1]
    assert "merged into another ticket" in text_of(receipt)


def test_link_is_recorded_both_ways(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer jams", "The printer jams."))
    world.deliver(customer_mail("Scanner too", "The scanner jams too.", sender="eve@customer.test"))
    world.run_once()
    notice = on_ticket(world.mails_to(ALICE), 2)[0]
    world.deliver(agent_reply(notice, ALICE, "#link #1"))
    world.run_once()
    assert world.ticket(1)["links"] == ["[#2]"]
    assert world.ticket(2)["links"] == ["[#1]"]
    assert world.ticket(1)["status"] == "open"
    shown = world.cli("tickets", "show", "2", "--json")
    assert b'"links"' in shown.stdout and b'"merged_into": null' in shown.stdout


def test_an_old_notice_of_a_merged_ticket_proves_its_agent_on_the_target(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("Printer jams", "The printer jams on every page."))
    world.deliver(customer_mail("Printer still broken", "Did you see my mail?"))
    world.deliver(customer_mail("Scanner", "The scanner is slow.", sender="eve@customer.test"))
    world.run_once()
    [first_notice] = on_ticket(world.mails_to(ALICE), 1)
    [second_notice] = on_ticket(world.mails_to(ALICE), 2)
    [third_notice] = on_ticket(world.mails_to(ALICE), 3)
    world.deliver(agent_reply(second_notice, ALICE, "#merge #1"))
    world.run_once()

    # Alice answers the notice of #2 she had: its token was made for #2, merged into #1
    world.clock.advance(minutes=5)
    world.deliver(agent_reply(second_notice, ALICE, "The tray was misaligned; fixed now."))
    world.run_once()
    assert "The tray was misaligned; fixed now." in replies_to_customer(world, 1)
    [answer] = [m for m in world.ticket(1)["messages"] if m["text"].startswith("The tray")]
    assert answer["internal"] is False and answer["from"] == ALICE
    assert not [m for m in world.mails_to(ALICE) if "could not verify you" in subject(m)]

    # a token of an unrelated ticket (#3, merged nowhere) proves nothing on #1
    world.deliver(agent_reply(first_notice, ALICE, "#close", to=reply_to_address(third_notice)))
    world.run_once()
    [told] = [m for m in world.mails_to(ALICE) if "could not verify you" in subject(m)]
    assert ref_number(told) == 1
    assert "The reply token belongs to another ticket" in " ".join(text_of(told).split())
    assert world.ticket(1)["status"] != "closed"
    assert world.ticket(3)["status"] == "open"


def test_a_merge_joins_the_tags_and_the_target_keeps_its_sla_clock(
    world: DeskWorld, database_url: str | None
) -> None:
    world.close()
    sla = {"sla": {"medium": {"first_response": "30m"}}}
    world = DeskWorld(
        world.account,
        world.smtp,
        world.root,
        tables=sla,
        database_url=database_url,
        clock=world.clock,
    )
    try:
        world.deliver(customer_mail("Printer jams", "The printer jams on every page."))
        world.run_once()
        world.clock.advance(minutes=10)
        world.deliver(customer_mail("Printer still broken", "Did you see my mail?"))
        world.run_once()
        [first_notice] = on_ticket(world.mails_to(ALICE), 1)
        [second_notice] = on_ticket(world.mails_to(ALICE), 2)
        world.deliver(agent_reply(first_notice, ALICE, "#tag printer"))
        world.deliver(agent_reply(second_notice, ALICE, "#tag printer urgent"))
        world.run_once()
        assert world.ticket(2)["due_at"] == "2026-11-26T09:40:00Z"
        world.clock.advance(minutes=5)
        world.deliver(agent_reply(second_notice, ALICE, "#merge #1"))
        world.run_once()

        target, merged = world.ticket(1), world.ticket(2)
        assert sorted(target["tags"]) == ["printer", "urgent"]
        # the target runs its own clock; the merged ticket runs none
        assert target["due_at"] == "2026-11-26T09:30:00Z"
        assert merged["due_at"] is None
        # the merged ticket keeps its history; the target records the merge
        kinds = [e["kind"] for e in merged["events"]]
        assert kinds == ["created", "acknowledged", "tagged", "merged"]
        assert merged["tags"] == ["printer", "urgent"]
        assert "merged_in" in [e["kind"] for e in target["events"]]

        # past the due time the target's missed first response is told, the merged one's never
        world.clock.advance(minutes=30)
        world.run_once()
        missed = [m for m in world.mails_to(ALICE) if "SLA missed" in subject(m)]
        assert [ref_number(m) for m in missed] == [1]
        assert world.ticket(1)["sla_breached"] == ["first_response"]
        assert world.ticket(2)["sla_breached"] == []
    finally:
        world.close()


def with_files(message: EmailMessage, *files: tuple[str, bytes]) -> EmailMessage:
    for filename, data in files:
        message.add_attachment(data, maintype="application", subtype="pdf", filename=filename)
    return message


def attachments(mail: Captured) -> dict[str, bytes]:
    """The files a delivered mail carries, by name, as the recipient's client decodes them."""
    return {
        str(part.get_filename()): part.get_content() for part in mail.message.iter_attachments()
    }


def blob(name: str, size: int) -> bytes:
    seed = name.encode() * 64
    return (seed * (size // len(seed) + 1))[:size]


def test_send_sends_the_held_replys_files_within_the_limits(
    world: DeskWorld, database_url: str | None
) -> None:
    world.close()
    limits = {"max_attachment_bytes": 60_000, "max_outbound_bytes": 100_000}
    world = DeskWorld(
        world.account,
        world.smtp,
        world.root,
        tables={"limits": limits},
        database_url=database_url,
        clock=world.clock,
    )
    try:
        _, carol_notice = two_answers(world)
        number = ref_number(carol_notice)
        contract, terms = blob("contract.pdf", 55_000), blob("terms.pdf", 50_000)
        reply = with_files(
            agent_reply(carol_notice, CAROL_AGENT, "The papers are attached."),
            ("contract.pdf", contract),
            ("huge.pdf", blob("huge.pdf", 70_000)),  # over max_attachment_bytes: not kept
            ("terms.pdf", terms),  # 105 KB with the contract: over max_outbound_bytes
            ("note.pdf", b"small\n"),
        )
        world.deliver(reply)
        world.run_once()
        [held] = [m for m in world.mails_to(CAROL_AGENT) if "Held, not sent" in subject(m)]
        [receipt] = [m for m in world.mails_to(CAROL_AGENT) if "Done:" in subject(m)]
        assert "contract.pdf (55 KB) not sent to the customer: held with your reply; #send" in (
            " ".join(text_of(receipt).split())
        )

        world.deliver(agent_reply(held, CAROL_AGENT, "#send"))
        world.run_once()
        [answer] = [m for m in on_ticket(world.mails_to(CUSTOMER), number) if attachments(m)]
        assert text_of(answer).startswith("The papers are attached.")
        assert attachments(answer) == {"contract.pdf": contract, "note.pdf": b"small\n"}
        receipt = [m for m in world.mails_to(CAROL_AGENT) if "Done:" in subject(m)][-1]
        said = " ".join(text_of(receipt).split())
        assert "your held reply sent to the customer" in said
        assert "held reply: contract.pdf (55 KB) sent to the customer" in said
        assert (
            "held reply: huge.pdf (70 KB) not sent to the customer: it was not kept: larger"
            " than max_attachment_bytes (60 KB) when it came" in said
        )
        assert (
            "held reply: terms.pdf (50 KB) not sent to the customer: the files of one reply may"
            " come to 100 KB in all (max_outbound_bytes)" in said
        )
        assert "held reply: note.pdf (6 bytes) sent to the customer" in said
    finally:
        world.close()


def test_a_ticket_number_no_ticket_can_have_is_no_ticket(world: DeskWorld) -> None:
    """A ref beyond the numbers a ticket can have (PostgreSQL keeps them in 32 bits) names no
    ticket: a customer's mail with one opens a new ticket, an agent's #merge or #link naming one
    is refused with the reason, ``tickets show`` says there is none; never a failed message."""
    world.deliver(customer_mail("Re: [#2147483648] Printer jams", "The printer jams."))
    world.run_once()
    [ticket] = world.tickets()
    assert ticket["subject"] == "Re: [#2147483648] Printer jams"
    assert len(world.mails_to(CUSTOMER)) == 1  # the acknowledgment
    notice = on_ticket(world.mails_to(ALICE), 1)[0]
    for command in ("#merge #99999999999", "#link 2147483648"):
        world.deliver(agent_reply(notice, ALICE, command))
        world.run_once()
        receipt = [m for m in world.mails_to(ALICE) if "Not done" in subject(m)][-1]
        assert f"{command}: there is no ticket" in text_of(receipt)
    shown = world.cli("tickets", "show", "99999999999")
    assert shown.returncode == 1 and b"Traceback" not in shown.stderr
    assert b"no ticket" in shown.stderr
