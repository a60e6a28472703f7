"""Every ticket can be answered: who a ticket answers, and what happens when nobody can be.

The requester is the first usable mailbox of ``From:``, else ``Sender:``, else ``Reply-To:``.
A ticket without one still takes every agent command (nothing goes outside, the agent's receipt
says so). A non-ASCII address is kept as written and mailed with SMTPUTF8 where the SMTP server
announces it; where it does not, the mail fails once with the reason, on the ticket and in the
agent's receipt.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.demo.world import Captured
from maildesk.models import Outbox, OutboxStatus
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    DeskWorld,
    agent_reply,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

AGENTS = {ALICE, BOB, CAROL_AGENT, "admin@example.com"}
JOSE = "José.Núñez@exämple.test"  # as written: a UTF-8 local part keeps its case (RFC 6532)


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def raw_mail(subject: str, headers: str, body: str = "Please help.") -> bytes:
    """A message exactly as written (the email package would tidy the headers under test)."""
    return (
        f"{headers}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: {make_msgid(domain='customer.test')}\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def by_subject(world: DeskWorld) -> dict[str, dict]:
    return {t["subject"]: t for t in world.tickets()}


def outside(world: DeskWorld) -> list[str]:
    """Every recipient the desk mailed who is not an agent or the admin."""
    return [r for m in world.smtp.messages for r in m.rcpt_tos if r not in AGENTS]


def test_the_requester_is_the_first_usable_mailbox_of_from_then_sender_then_reply_to(
    world: DeskWorld,
) -> None:
    cases = {
        "two mailboxes": ("From: a@x.test, b@y.test", "a@x.test"),
        "address in the name": ('From: "bob@evil.test" <carol@customer.test>', "carol@customer.test"),
        "only a name, with Sender": ("From: Carol Customer\r\nSender: sec@customer.test", "sec@customer.test"),
        "only a name, with Reply-To": ("From: Carol Customer\r\nReply-To: Carol <rt@customer.test>", "rt@customer.test"),
        "nobody at all": ("From: Carol Customer", ""),
    }  # fmt: skip
    for subject, (headers, _) in cases.items():
        world.deliver(raw_mail(subject, headers))
    assert world.run_once() == 0

    tickets = by_subject(world)
    assert {s: tickets[s]["requester"] for s in cases} == {s: r for s, (_, r) in cases.items()}
    acked = sorted(outside(world))
    assert acked == sorted(r for _, r in cases.values() if r)  # one ack each, nobody else
    assert "b@y.test" not in acked and "bob@evil.test" not in acked
    nobody = tickets["nobody at all"]
    created = nobody["events"][0]
    assert created["kind"] == "created" and "no usable address" in created["detail"]["warning"]
    assert [e["kind"] for e in nobody["events"]] == ["created"]  # no acknowledgment, no error
    # every message was handled: nothing in quarantine
    assert world.account.uids("Quarantine") == []
    assert len(world.account.uids("Processed")) == len(cases)


def receipt_after(world: DeskWorld, agent: str, mail: bytes | object) -> Captured:
    before = len(world.mails_to(agent))
    world.deliver(mail)  # type: ignore[arg-type]
    world.run_once()
    receipts = [m for m in world.mails_to(agent)[before:] if "Done" in m.message["Subject"]]
    assert len(receipts) == 1, [m.message["Subject"] for m in world.mails_to(agent)[before:]]
    return receipts[0]


def test_a_ticket_without_an_address_takes_replies_notes_escalation_and_closing(
    world: DeskWorld,
) -> None:
    world.deliver(raw_mail("Printer broken", "From: Carol Customer", "It prints blank pages."))
    world.run_once()
    [notice] = world.mails_to(ALICE)

    receipt = receipt_after(world, ALICE, agent_reply(notice, ALICE, "Which model is it?"))
    t = world.ticket(1)
    assert t["status"] == "pending" and t["messages"][-1]["text"] == "Which model is it?"
    assert "Nobody outside was mailed" in text_of(receipt)
    assert "no usable customer address" in " ".join(text_of(receipt).split())

    receipt = receipt_after(world, ALICE, agent_reply(notice, ALICE, "#note\nAsked on the phone."))
    t = world.ticket(1)
    assert t["messages"][-1]["internal"] and t["messages"][-1]["text"] == "Asked on the phone."
    assert "Nobody outside was mailed" in text_of(receipt)

    escalation = agent_reply(
        notice, ALICE, "Fuser is dead.", subject_extra=" #escalate engineering"
    )
    receipt = receipt_after(world, ALICE, escalation)
    t = world.ticket(1)
    assert (t["status"], t["team"]) == ("escalated", "engineering")
    assert "Nobody outside was mailed" in text_of(receipt)
    [bob_notice] = world.mails_to(BOB)
    assert "Fuser is dead." in text_of(bob_notice)

    receipt = receipt_after(world, BOB, agent_reply(bob_notice, BOB, "#close\nNew fuser fitted."))
    t = world.ticket(1)
    assert t["status"] == "closed"
    assert "Nobody outside was mailed" in text_of(receipt)

    assert outside(world) == []
    kinds = [e["kind"] for e in t["events"]]
    assert kinds.count("not_mailed") == 3  # the reply, the escalation notice, the resolution
    assert "command_refused" not in kinds
    assert world.account.uids("Quarantine") == []


def test_an_sla_escalation_on_a_ticket_without_an_address_goes_through(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    sla = {"sla": {"medium": {"first_response": "30m", "escalate_to": "engineering"}}}
    world = DeskWorld(imap_server, smtp_server, tmp_path, tables=sla)
    try:
        world.deliver(raw_mail("Printer broken", "From: Carol Customer"))
        world.run_once()
        world.clock.advance(minutes=31)
        world.run_once()
        t = world.ticket(1)
        assert (t["status"], t["team"], t["sla_breached"]) == (
            "escalated",
            "engineering",
            ["first_response"],
        )
        assert [e["kind"] for e in t["events"]][-3:] == ["sla_breached", "escalated", "not_mailed"]
        assert len(world.mails_to(BOB)) == 1 and outside(world) == []
        world.clock.advance(minutes=5)
        world.run_once()
        assert "timer_failed" not in [e["kind"] for e in world.ticket(1)["events"]]
    finally:
        world.close()


def test_a_non_ascii_requester_is_answered_as_written_over_smtputf8(world: DeskWorld) -> None:
    world.deliver(raw_mail("Impresora rota", f"From: José Núñez <{JOSE}>", "No imprime."))
    world.run_once()
    assert world.ticket(1)["requester"] == JOSE
    [ack] = world.wait_mails_to(JOSE, 1)
    assert ack.rcpt_tos == (JOSE,)
    assert f"\r\nTo: {JOSE}\r\n".encode() in ack.raw  # UTF-8 in the header, no encoded word
    assert ack.message["To"] == JOSE

    [notice] = world.mails_to(ALICE)
    world.deliver(agent_reply(notice, ALICE, "¿Qué modelo es?"))
    world.run_once()
    [_, reply] = world.wait_mails_to(JOSE, 2)
    assert "¿Qué modelo es?" in text_of(reply)
    # the one receipt says only that the answer made the ticket hers
    [done] = [m for m in world.mails_to(ALICE) if "Done" in m.message["Subject"]]
    assert "you answered it while nobody had it" in text_of(done)
    assert "not mailed" not in text_of(done)


def test_without_smtputf8_a_non_ascii_requester_fails_once_with_the_reason(
    imap_server: ImapAccount, tmp_path: Path
) -> None:
    with ScriptedSmtp(smtputf8=False) as smtp:
        world = DeskWorld(imap_server, smtp, tmp_path)
        try:
            world.deliver(raw_mail("Impresora rota", f"From: José Núñez <{JOSE}>", "No imprime."))
            world.run_once()
            # not known before the first connection: the acknowledgment fails when it is tried
            [failed] = [e for e in world.ticket(1)["events"] if e["kind"] == "mail_failed"]
            assert failed["detail"]["mail"] == "ack" and failed["detail"]["recipient"] == JOSE
            assert "does not announce SMTPUTF8" in failed["detail"]["error"]
            # the agents' mail goes out as always, and they are told the customer's did not
            [notice, told] = world.mails_to(ALICE)
            assert " New: " in str(notice.message["Subject"])
            assert "does not announce SMTPUTF8" in " ".join(text_of(told).split())

            receipt = receipt_after(world, ALICE, agent_reply(notice, ALICE, "¿Qué modelo es?"))
            text = " ".join(text_of(receipt).split())
            assert "Nobody outside was mailed" in text and "does not announce SMTPUTF8" in text
            assert JOSE in text
            t = world.ticket(1)
            assert t["status"] == "pending" and t["messages"][-1]["text"] == "¿Qué modelo es?"
            assert [e["detail"]["mail"] for e in t["events"] if e["kind"] == "mail_failed"] == [
                "ack",
                "reply",
            ]

            world.clock.advance(hours=1)
            world.run_once()  # failed for good: no retry
            assert world.mails_to(JOSE) == []
            with world.db.transaction() as session:
                rows = session.scalars(select(Outbox).where(Outbox.recipient == JOSE)).all()
                assert [(r.kind, r.status, r.attempts) for r in rows] == [
                    ("ack", OutboxStatus.FAILED, 1),
                    ("reply", OutboxStatus.FAILED, 0),  # known at once: never tried
                ]
                assert all("SMTPUTF8" in (r.last_error or "") for r in rows)
        finally:
            world.close()
