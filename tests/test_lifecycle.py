"""Agents drive the whole lifecycle by mail; forged or misused commands change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    CUSTOMER,
    ON_BOTH_DATABASES,
    DeskWorld,
    agent_reply,
    customer_mail,
    html_of,
    reply_to_address,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount


@pytest.fixture
def world(
    imap_server: ImapAccount,
    smtp_server: ScriptedSmtp,
    tmp_path: Path,
    database_url: str | None,
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        tables={"security": {"trusted_authserv_ids": ["mx.example.com"]}},
        database_url=database_url,
    )
    assert w.db.engine.dialect.name == ("postgresql" if database_url else "sqlite")
    yield w
    w.close()


def open_ticket(
    world: DeskWorld, subject: str = "Printer broken", body: str = "It prints blank pages."
) -> tuple[Captured, Captured]:
    world.deliver(customer_mail(subject, body))
    world.run_once()
    return world.mails_to(CUSTOMER)[-1], world.mails_to(ALICE)[-1]


def kinds(ticket: dict) -> list[str]:
    return [e["kind"] for e in ticket["events"]]


@ON_BOTH_DATABASES
def test_full_lifecycle_by_mail(world: DeskWorld) -> None:
    ack, notice = open_ticket(world)
    assert "[#1]" in ack.message["Subject"]

    # 2. assign, set priority, tag, and answer the customer in one reply
    world.deliver(
        agent_reply(
            notice,
            ALICE,
            "#assign me\n#priority high\n#tag printer hardware\n\nHi Dana, which floor is it on?",
        )
    )
    world.run_once()
    t = world.ticket(1)
    assert (t["assignee"], t["priority"], t["tags"], t["status"]) == (
        ALICE,
        "high",
        ["hardware", "printer"],
        "pending",
    )
    [reply] = world.mails_to(CUSTOMER)[1:]
    assert text_of(reply).startswith("Hi Dana, which floor is it on?")
    assert "#" not in text_of(reply).split("--")[0]
    assert "Auto-Submitted" not in reply.message  # a person's answer
    assert "Hi Dana" in (html_of(reply) or "")
    [receipt] = world.mails_to(ALICE)[1:]
    assert "assigned" in text_of(receipt).lower() and "high" in text_of(receipt)

    # 3. the customer answers: pending -> open, the assignee is told
    world.deliver(
        customer_mail(
            f"Re: {reply.message['Subject']}",
            "Floor 3.\n\nOn Thu, Alice wrote:\n> which floor?",
            reply_to=reply,
        )
    )
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "open"
    assert t["messages"][-1]["text"] == "Floor 3."
    told = world.mails_to(ALICE)[-1]
    assert "Floor 3." in text_of(told)

    # internal note: the customer gets nothing
    before = len(world.mails_to(CUSTOMER))
    world.deliver(agent_reply(told, ALICE, "#note\nFuser unit is dead."))
    world.run_once()
    t = world.ticket(1)
    assert t["messages"][-1]["internal"] is True
    assert t["messages"][-1]["text"] == "Fuser unit is dead."
    assert len(world.mails_to(CUSTOMER)) == before

    # 4. escalate with a summary in the subject form
    world.deliver(
        agent_reply(
            told,
            ALICE,
            "Needs a new fuser unit (internal summary).",
            subject_extra=" #escalate engineering",
        )
    )
    world.run_once()
    t = world.ticket(1)
    assert (t["status"], t["team"]) == ("escalated", "engineering")
    bob_notice = world.mails_to(BOB)[-1]
    assert "Needs a new fuser unit" in text_of(bob_notice)
    notice_to_customer = world.mails_to(CUSTOMER)[-1]
    assert "engineering" in text_of(notice_to_customer)
    assert "fuser" not in text_of(notice_to_customer).lower()
    assert "internal" not in text_of(notice_to_customer).lower()

    # 5. close with a resolution; the customer rates; a later complaint reopens
    world.deliver(agent_reply(bob_notice, BOB, "#close\nWe replaced the fuser unit."))
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "closed"
    closing = world.mails_to(CUSTOMER)[-1]
    assert "We replaced the fuser unit." in text_of(closing)
    assert "1" in text_of(closing) and "5" in text_of(closing)

    world.deliver(
        customer_mail(
            f"Re: {closing.message['Subject']}",
            "5 - great service\n\n> We replaced the fuser unit.",
            reply_to=closing,
        )
    )
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "closed"
    assert t["satisfaction"] == {"rating": 5, "comment": "great service"}

    world.deliver(
        customer_mail(f"Re: {closing.message['Subject']}", "It is broken again!", reply_to=closing)
    )
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "open"
    assert "reopened" in kinds(t)
    assert kinds(t).count("reopened") == 1

    # the customer never saw anything internal
    for mail in world.mails_to(CUSTOMER):
        body = text_of(mail)
        assert (
            "Fuser unit is dead" not in body
            and "internal summary" not in body
            and "#" not in mail.message["Subject"].replace("[#1]", "")
        )
    for expected in (
        "assigned",
        "priority",
        "tagged",
        "replied",
        "note",
        "escalated",
        "closed",
        "rating",
        "reopened",
    ):
        assert expected in kinds(t), expected


@ON_BOTH_DATABASES
def test_reply_after_reopen_window_opens_a_linked_ticket(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#close\nDone."))
    world.run_once()
    closing = world.mails_to(CUSTOMER)[-1]
    world.clock.advance(days=31)
    world.deliver(
        customer_mail(
            f"Re: {closing.message['Subject']}", "The same problem again.", reply_to=closing
        )
    )
    world.run_once()
    tickets = world.tickets()
    assert len(tickets) == 2
    assert tickets[0]["status"] == "closed"
    assert tickets[1]["linked_to"] == "[#1]"
    assert tickets[1]["status"] == "open"


@pytest.mark.parametrize(
    ("sender", "body", "to", "headers", "why"),
    [
        # forged From, no token (sent straight to the desk address)
        (ALICE, "#close\nforged", "support", [], "no reply token"),
        # ambiguous From that shows Alice's address
        (f"{ALICE} <mallory@evil.test>", "#close\nforged", "token", [], "ambiguous"),
        # another agent's token
        (BOB, "#close\nnot mine", "token", [], "another agent"),
        # untrusted authserv-id claiming dmarc=pass
        (
            ALICE,
            "#close\nuntrusted",
            "support",
            [("Authentication-Results", "mx.evil.test; dmarc=pass header.from=example.com")],
            "no reply token",
        ),
    ],
)
def test_forged_and_misused_commands_change_nothing(
    world: DeskWorld, sender: str, body: str, to: str, headers: list, why: str
) -> None:
    _ack, notice = open_ticket(world)
    address = reply_to_address(notice) if to == "token" else world.address
    forged = agent_reply(notice, sender, body, to=address, headers=headers)
    world.deliver(forged)
    before = len(world.mails_to(CUSTOMER))
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "open"
    assert len(world.mails_to(CUSTOMER)) == before
    assert t["messages"][-1]["internal"] is True
    assert t["messages"][-1]["unverified"] is True
    assert "command_refused" in kinds(t)
    # the claimed agent's registered address is told why; the forger's inbound From gets nothing
    claimed = BOB if sender == BOB else ALICE
    told = world.mails_to(claimed)[-1]
    assert "could not be verified" in text_of(told)
    assert why in text_of(told).lower()
    assert world.mails_to("mallory@evil.test") == []


def test_trusted_authentication_results_prove_an_agent(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    msg = agent_reply(notice, ALICE, "#priority urgent", to=world.address)
    # the receiving MTA puts its verdict on top of the message
    verdict = (
        b"Authentication-Results: mx.example.com; dkim=pass header.d=example.com;\r\n"
        b" dmarc=pass header.from=example.com\r\n"
    )
    world.deliver(verdict + msg.as_bytes())
    world.run_once()
    assert world.ticket(1)["priority"] == "urgent"


def test_a_second_trusted_verdict_below_the_real_one_proves_nothing(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    msg = agent_reply(
        notice,
        ALICE,
        "#priority urgent",
        to=world.address,
        headers=[("Authentication-Results", "mx.example.com; dmarc=pass header.from=example.com")],
    )
    verdict = b"Authentication-Results: mx.example.com; dmarc=fail header.from=example.com\r\n"
    world.deliver(verdict + msg.as_bytes())
    world.run_once()
    assert world.ticket(1)["priority"] == "medium"


def test_expired_token_is_refused(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.clock.advance(days=181)
    world.deliver(agent_reply(notice, ALICE, "#close\nlate"))
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "open"
    assert "expired" in text_of(world.mails_to(ALICE)[-1]).lower()


def test_one_invalid_command_and_none_apply(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#priority high\n#assign nobody-here\n\nSome text"))
    world.run_once()
    t = world.ticket(1)
    assert (t["priority"], t["assignee"]) == ("medium", None)
    assert t["messages"][-1]["internal"] is True and t["messages"][-1]["text"] == "Some text"
    receipt = world.mails_to(ALICE)[-1]
    assert "nobody-here" in text_of(receipt)
    assert "#assign" in text_of(receipt)  # help for the commands
    assert len(world.mails_to(CUSTOMER)) == 1


def test_unknown_verb_is_refused(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#frobnicate\nHello"))
    world.run_once()
    t = world.ticket(1)
    assert "command_refused" in kinds(t)
    assert "frobnicate" in text_of(world.mails_to(ALICE)[-1])


def test_customer_hash_words_are_plain_text(world: DeskWorld) -> None:
    ack, _notice = open_ticket(world)
    world.deliver(
        customer_mail(
            f"Re: {ack.message['Subject']} #close",
            "#close\n#assign alice\nPlease hurry",
            reply_to=ack,
        )
    )
    world.run_once()
    t = world.ticket(1)
    assert t["status"] == "open" and t["assignee"] is None
    assert "#close" in t["messages"][-1]["text"]


def test_assign_by_name_and_notify_assignee(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "", subject_extra=" #assign Carol White #tag vip"))
    world.run_once()
    t = world.ticket(1)
    assert t["assignee"] == CAROL_AGENT
    assert t["tags"] == ["vip"]
    assert t["status"] == "open"  # commands only: no reply to the customer
    assigned = [m for m in world.mails_to(CAROL_AGENT) if "Assigned" in m.message["Subject"]]
    assert len(assigned) == 1
    assert len(world.mails_to(CUSTOMER)) == 1


def test_untag_and_reopen(world: DeskWorld) -> None:
    _ack, notice = open_ticket(world)
    world.deliver(agent_reply(notice, ALICE, "#tag a b\n#close"))
    world.run_once()
    world.deliver(agent_reply(notice, ALICE, "#untag a\n#reopen"))
    world.run_once()
    t = world.ticket(1)
    assert t["tags"] == ["b"]
    assert t["status"] == "open"
