"""Mail in, tickets out: ingestion, acknowledgment, threading, outbound, against real servers."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    ON_BOTH_DATABASES,
    SHIPPED_MAILS,
    DeskWorld,
    customer_mail,
    html_of,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

MAIL = Path(__file__).parent / "mail"


@pytest.fixture
def world(
    imap_server: ImapAccount,
    smtp_server: ScriptedSmtp,
    tmp_path: Path,
    database_url: str | None,
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url)
    assert w.db.engine.dialect.name == ("postgresql" if database_url else "sqlite")
    yield w
    w.close()


@ON_BOTH_DATABASES
def test_new_mail_becomes_a_ticket_with_one_threaded_acknowledgment(world: DeskWorld) -> None:
    msg = customer_mail(
        "Printer prints blank pages", "Hello,\nthe printer on floor 3 is broken.\nDana"
    )
    world.deliver(msg)

    assert world.run_once() == 0

    [ticket] = world.tickets()
    assert ticket["status"] == "open"
    assert ticket["priority"] == "medium"
    assert ticket["team"] == "support"
    assert ticket["requester"] == CUSTOMER
    assert ticket["assignee"] is None
    assert ticket["subject"] == "Printer prints blank pages"
    assert "floor 3 is broken" in ticket["messages"][0]["text"]
    assert [e["kind"] for e in ticket["events"]] == ["created", "acknowledged"]

    [ack] = world.mails_to(CUSTOMER)
    assert ack.message["Auto-Submitted"] == "auto-replied"
    assert ack.message["X-Auto-Response-Suppress"] == "All"
    assert ticket["ref"] in ack.message["Subject"]
    assert ack.message["In-Reply-To"] == msg["Message-ID"]
    assert msg["Message-ID"] in ack.message["References"]
    assert ack.message["Message-ID"] and ack.message["Message-ID"] != msg["Message-ID"]
    assert world.address in ack.message["From"]
    assert ticket["ref"] in text_of(ack)
    assert ticket["ref"] in (html_of(ack) or "")
    # a bounce would come back to an address that names this outbox row
    assert ack.mail_from.startswith(world.address.split("@")[0] + "+bounce-")

    # the team's agents get a notice they can reply to
    notices = world.mails_to(ALICE) + world.mails_to(CAROL_AGENT)
    assert len(notices) == 2
    assert all(ticket["ref"] in n.message["Subject"] for n in notices)
    assert all("+" in str(n.message["Reply-To"]) for n in notices)

    # the handled mail left INBOX for Processed
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Processed")) == 1

    # a second pass changes nothing
    sent = len(world.smtp.messages)
    assert world.run_once() == 0
    assert len(world.tickets()) == 1
    assert len(world.smtp.messages) == sent


@ON_BOTH_DATABASES
def test_attachments_are_kept_whole(world: DeskWorld) -> None:
    msg = customer_mail("Two files", "See attached.")
    pdf = os.urandom(50_000)
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="report.pdf")
    msg.add_attachment(png, maintype="image", subtype="png", filename="screen shot.png")
    world.deliver(msg)
    world.run_once()

    [ticket] = world.tickets()
    atts = ticket["messages"][0]["attachments"]
    assert [(a["filename"], a["content_type"], a["size"]) for a in atts] == [
        ("report.pdf", "application/pdf", len(pdf)),
        ("screen shot.png", "image/png", len(png)),
    ]
    assert [a["sha256"] for a in atts] == [
        hashlib.sha256(pdf).hexdigest(),
        hashlib.sha256(png).hexdigest(),
    ]
    # in the data directory on SQLite, in the database on PostgreSQL (its default store)
    kept = {
        name.rsplit("/", 1)[1]: world.desk.store.read(name) for name in world.desk.store.names()
    }
    assert kept == {a["sha256"]: data for a, data in zip(atts, (pdf, png), strict=True)}
    on_disk = [p for p in (world.root / "data" / "blobs").rglob("*") if p.is_file()]
    assert len(on_disk) == (2 if world.db.is_sqlite else 0)


def test_html_only_and_encoded_subjects_become_readable(world: DeskWorld) -> None:
    msg = EmailMessage()
    msg["From"] = "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@kunde.test>"
    msg["To"] = world.address
    msg["Subject"] = "=?utf-8?b?RHJ1Y2tlciBkZWZla3Qg4oCTIGJpdHRlIGhlbGZlbg==?="
    msg["Message-ID"] = "<html-only-1@kunde.test>"
    msg.set_content(
        "<html><body><p>Der <b>Drucker</b> druckt nicht.</p><ul><li>Etage 3</li></ul></body></html>",
        subtype="html",
    )
    world.deliver(msg)
    world.run_once()

    [ticket] = world.tickets()
    assert ticket["subject"] == "Drucker defekt – bitte helfen"
    assert ticket["requester"] == "juergen@kunde.test"
    text = ticket["messages"][0]["text"]
    assert "Drucker" in text and "druckt nicht" in text and "Etage 3" in text
    assert "<b>" not in text and "<p>" not in text


@ON_BOTH_DATABASES
def test_follow_ups_join_by_header_or_by_ref_from_the_requester_but_not_from_strangers(
    world: DeskWorld,
) -> None:
    world.deliver(customer_mail("VPN drops", "The VPN drops every hour."))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    ref = ack.message["Subject"].split()[0]

    # by header: a reply to our acknowledgment
    world.deliver(customer_mail(f"Re: {ack.message['Subject']}", "Still happening.", reply_to=ack))
    # by ref in the subject from the requester, with a foreign prefix
    world.deliver(customer_mail(f"AW: [EXTERNAL] {ref} VPN drops", "And again today."))
    # a stranger using the ref opens a new ticket
    world.deliver(
        customer_mail(f"Re: {ref} VPN drops", "I can read your ticket?", sender="mallory@evil.test")
    )
    world.run_once()

    tickets = world.tickets()
    assert len(tickets) == 2
    first, second = tickets
    assert [m["text"] for m in first["messages"]][1:] == ["Still happening.", "And again today."]
    assert second["requester"] == "mallory@evil.test"
    # follow-ups get no acknowledgment; the stranger's new ticket does
    assert len(world.mails_to(CUSTOMER)) == 1
    assert len(world.mails_to("mallory@evil.test")) == 1


@pytest.mark.parametrize(
    "header",
    [
        ("Auto-Submitted", "auto-replied"),
        ("Precedence", "bulk"),
        ("List-Id", "<announce.lists.example.org>"),
        ("Return-Path", "<>"),
    ],
)
def test_automatic_mail_gets_no_acknowledgment(world: DeskWorld, header: tuple[str, str]) -> None:
    world.deliver(customer_mail("Out of office", "I am away until Monday.", headers=[header]))
    world.run_once()

    assert world.tickets() == []
    assert world.smtp.messages == []
    assert world.account.uids("INBOX") == []  # recorded as ignored, moved, never lost


def test_automatic_mail_that_threads_is_kept_on_its_ticket(world: DeskWorld) -> None:
    world.deliver(customer_mail("Help", "Please help."))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    world.deliver(
        customer_mail(
            "Automatic reply: Help",
            "I am out of office.",
            reply_to=ack,
            headers=[("Auto-Submitted", "auto-replied")],
        )
    )
    world.run_once()
    [ticket] = world.tickets()
    assert ticket["messages"][-1]["text"] == "I am out of office."
    assert ticket["status"] == "open"
    assert len(world.mails_to(CUSTOMER)) == 1


def test_mailer_daemon_mail_gets_no_reply(world: DeskWorld) -> None:
    world.deliver(
        customer_mail(
            "Warning: could not send",
            "Your message is delayed.",
            sender="MAILER-DAEMON@mx.example.net",
        )
    )
    world.run_once()
    assert world.smtp.messages == []


def test_corpus_messages_become_tickets(world: DeskWorld) -> None:
    names = ["plain-text.eml", "multi-attachment.eml", "html-only.eml", "rfc2047-subject.eml"]
    for name in names:
        world.deliver((MAIL / name).read_bytes())
    world.run_once()
    tickets = world.tickets()
    assert len(tickets) == len(names)
    assert all(t["messages"][0]["text"].strip() for t in tickets)
    assert sum(len(t["messages"][0]["attachments"]) for t in tickets) >= 2
    assert world.account.uids("INBOX") == []


@ON_BOTH_DATABASES
def test_outbound_retries_on_4xx_with_the_same_message_id_and_fails_on_5xx(
    world: DeskWorld,
) -> None:
    # the acknowledgment and the two agent notices are each refused once
    world.smtp.script("rcpt", *["451 4.3.0 try again later"] * 3)
    world.deliver(customer_mail("Retry me", "Hello"))
    world.run_once()
    assert world.smtp.messages == []  # first attempts refused

    # due again after the backoff: move the clock, run again
    world.clock.advance(hours=1)
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)

    from sqlalchemy import select

    from maildesk.models import Outbox

    with world.db.transaction() as session:
        row = session.scalar(select(Outbox).where(Outbox.recipient == CUSTOMER))
        assert row is not None
        assert row.status == "sent"
        assert row.attempts == 2
        assert f"<{row.message_id}>" == ack.message["Message-ID"]

    world.smtp.script("rcpt", *["550 5.1.1 no such user"] * 3)
    world.deliver(customer_mail("Bounce me", "Hello", sender="nobody@customer.test"))
    world.run_once()
    with world.db.transaction() as session:
        row = session.scalar(select(Outbox).where(Outbox.recipient == "nobody@customer.test"))
        assert row is not None
        assert row.status == "failed"
        assert row.last_error is not None and "550" in row.last_error


def test_smtp_down_never_blocks_ingestion(world: DeskWorld) -> None:
    world.smtp.stop()
    world.deliver(customer_mail("SMTP is down", "Hello"))
    world.run_once()
    assert len(world.tickets()) == 1
    world.smtp.start()
    world.clock.advance(hours=1)
    world.run_once()
    assert len(world.mails_to(CUSTOMER)) == 1


def test_crash_between_commit_and_move_neither_loses_nor_doubles(world: DeskWorld) -> None:
    """The daemon is killed (os._exit) right after the commit, before the move."""
    world.deliver(customer_mail("Crash test", "Hello"))
    killed = world.cli("run", "--once", MAILDESK_CRASH_AT="after_commit")
    assert killed.returncode == 137
    assert len(world.tickets()) == 1
    assert len(world.account.uids("INBOX")) == 1  # committed, not yet moved

    again = world.cli("run", "--once")
    assert again.returncode == 0, again.stderr.decode()
    assert len(world.tickets()) == 1
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Processed")) == 1
    # one acknowledgment; the delivery process may have sent it just before it was killed with
    # the daemon, before recording it: then it goes again, the same mail (same Message-ID)
    acks = world.mails_to(CUSTOMER)
    assert 1 <= len(acks) <= 2 and len({a.message["Message-ID"] for a in acks}) == 1


def test_idle_answers_a_new_message_within_moments(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    # polling every 60 s: only IDLE can answer within seconds
    world = DeskWorld(imap_server, smtp_server, tmp_path, poll_seconds=60)
    world.start()
    try:
        world.deliver(customer_mail("Fast please", "Hello"))
        start = time.monotonic()
        world.wait_mails_to(CUSTOMER, 1, timeout=10)
        elapsed = time.monotonic() - start
    finally:
        world.close()
    # Dovecot coalesces notifications for 0.5 s by design; the rest is handling and SMTP
    assert elapsed < 5, elapsed


def test_ingest_from_stdin_for_an_mta_pipe(world: DeskWorld) -> None:
    raw = customer_mail("Piped in", "From the MTA").as_bytes()
    done = world.cli("ingest", input=raw)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("new_ticket [#1]")
    again = world.cli("ingest", input=raw)
    assert again.returncode == 0
    assert len(world.tickets()) == 1


def test_run_once_with_an_unreachable_mailbox_says_so_in_one_line(world: DeskWorld) -> None:
    world.account.stop()
    done = world.cli("run", "--once")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr.decode()
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("maildesk: mailbox support:")


def test_ticket_json_contract(world: DeskWorld) -> None:
    world.deliver(customer_mail("Contract", "Hello"))
    world.run_once()
    listed = json.loads(world.cli("tickets", "list", "--json").stdout)
    assert set(listed[0]) >= {
        "ref",
        "number",
        "subject",
        "status",
        "priority",
        "requester",
        "assignee",
        "team",
        "tags",
        "created_at",
        "updated_at",
    }
    shown = json.loads(world.cli("tickets", "show", "1", "--json").stdout)
    assert set(shown["messages"][0]) >= {
        "from",
        "internal",
        "text",
        "message_id",
        "created_at",
        "attachments",
    }
    assert set(shown["events"][0]) >= {"kind", "actor", "at", "detail"}
    human = world.cli("tickets", "list").stdout.decode()
    assert "[#1]" in human and "Contract" in human


def test_check_config_logs_in_to_every_server(world: DeskWorld) -> None:
    done = world.cli("check-config", "--no-probe")
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    lines = done.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 5
    assert any(line.startswith(f"ok   templates: {SHIPPED_MAILS} mails rendered") for line in lines)
    assert any(line.startswith("ok   mailbox support") for line in lines)
    [smtp] = [line for line in lines if line.startswith("ok   smtp")]
    assert smtp.endswith("(SMTPUTF8 announced)")  # what mail to non-ASCII addresses needs

    world.smtp.stop()
    done = world.cli("check-config", "--no-probe")
    assert done.returncode == 1
    assert any(line.startswith("FAIL smtp") for line in done.stdout.decode().splitlines())
    assert b"Traceback" not in done.stderr
