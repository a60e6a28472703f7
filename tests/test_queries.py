"""Queries by mail: a proven agent mails ``#list``, ``#show``, ``#help`` to their personal desk
address and gets one answer, text and HTML; nothing changes, nobody else is mailed. An
unproven sender gets the notice about the personal address, a customer's ``#list`` is text in
their ticket. And ``tickets list`` filters as ``#list`` does. Every test runs the real daemon
against pymap and Dovecot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maildesk.demo.world import Captured
from maildesk.models import Event, Ledger, Message, Outbox, Ticket
from maildesk.ui import cli
from tests.desk import (
    ALICE,
    BOB,
    CUSTOMER,
    ON_BOTH_DATABASES,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    html_of,
    reply_to_address,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

ERIN = "erin@customer.test"
PHOTO = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


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
        clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
        tables={
            "security": {"trusted_authserv_ids": ["mx.example.com"]},
            "sla": {"medium": {"first_response": "4h"}},
        },
        database_url=database_url,
    )
    yield w
    w.close()


def personal_address(world: DeskWorld, agent: str = ALICE) -> str:
    done = world.cli("agents", "address", agent)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def ask(world: DeskWorld, body: str, *, sender: str = ALICE, to: str | None = None) -> list[Any]:
    """Mail ``body`` to the agent's personal address (or ``to``); the mails the desk sent."""
    before = len(world.smtp.messages)
    world.deliver(customer_mail("my queue", body, sender=sender, to=to or personal_address(world)))
    world.run_once()
    return world.smtp.messages[before:]


def counts(world: DeskWorld) -> dict[str, int]:
    """What a query must not change: the tickets, their messages and events, and the mail to
    anyone but the agents."""
    with world.db.transaction() as session:
        to_customers = select(func.count(Outbox.id)).where(Outbox.recipient.like("%customer.test"))
        return {
            "tickets": session.scalar(select(func.count(Ticket.id))) or 0,
            "messages": session.scalar(select(func.count(Message.id))) or 0,
            "events": session.scalar(select(func.count(Event.id))) or 0,
            "to_customers": session.scalar(to_customers) or 0,
        }


def queue(world: DeskWorld) -> Captured:
    """Dana's ticket [#1] with a photo, taken by Alice with a note; Erin's [#2], unassigned."""
    mail = customer_mail("Printer broken", "It prints blank pages.\n#list all")
    mail.add_attachment(PHOTO, maintype="image", subtype="png", filename="display.png")
    world.deliver(mail)
    world.run_once()
    notice = world.mails_to(ALICE)[-1]
    world.deliver(agent_reply(notice, ALICE, "#assign me\n#note Called her, <b>no</b> answer"))
    world.clock.advance(hours=1)
    world.deliver(
        customer_mail("Invoice <b>wrong</b> & late", "Amount is <script>x</script>", sender=ERIN)
    )
    world.run_once()
    return notice


def ledger(world: DeskWorld) -> list[tuple[str, str]]:
    with world.db.transaction() as session:
        rows = session.execute(select(Ledger.outcome, Ledger.reason).order_by(Ledger.id))
        return [(r.outcome, r.reason) for r in rows]


def said(mail: Captured) -> str:
    """The text part as the agent reads it (lines ended by newlines)."""
    return text_of(mail).replace("\r\n", "\n")


# --------------------------------------------------------------------------- the answers


@ON_BOTH_DATABASES
def test_list_answers_the_agent_alone_and_changes_nothing(world: DeskWorld) -> None:
    queue(world)
    world.clock.advance(hours=2)
    before = counts(world)
    body = "#list\n#list unassigned\n#list team nosuch\n#lsit all\n\nthe text below is not read"
    [answer] = ask(world, body)

    assert answer.rcpt_tos == (ALICE,)
    assert str(answer.message["Subject"]) == "Answer to your 4 queries"
    assert reply_to_address(answer) == personal_address(world)
    text = said(answer)
    mine, unassigned, team, wrong = text.split("\n== ")[1:5]
    assert mine.startswith("#list\n1 ticket (mine open):")
    assert "[#1]  open, medium, 3h 0m old, SLA due: 2026-11-26 13:00 UTC" in mine
    assert "Printer broken\n    from dana@customer.test" in mine
    assert "[#2]" not in mine
    assert "[#2]  open, medium, 2h 0m old, SLA due: 2026-11-26 14:00 UTC" in unassigned
    assert "Invoice <b>wrong</b> & late" in unassigned  # text is text
    assert "no team called nosuch (known: support, engineering)" in team
    assert "#lsit all\nNot answered: not a query; the queries are #list, #show" in wrong
    assert "#assign <agent email | agent name | me>" in text  # the help, after a refusal
    html = html_of(answer)
    assert html is not None
    assert "<td>Invoice &lt;b&gt;wrong&lt;/b&gt; &amp; late</td>" in html
    assert "<b>wrong</b>" not in html

    assert counts(world) == before
    assert ledger(world)[-1] == (
        "ignored",
        "queries from alice@example.com answered: #list, #list unassigned, "
        "#list team nosuch, #lsit all",
    )
    assert world.cli("quarantine", "list", "--json").stdout.strip() == b"[]"


def test_show_gives_the_whole_timeline_with_its_files_and_a_reply_acts_on_it(
    world: DeskWorld,
) -> None:
    queue(world)
    before = counts(world)
    [answer] = ask(world, "#show [#1]")

    assert answer.rcpt_tos == (ALICE,)
    assert str(answer.message["Subject"]) == "[#1] Printer broken"
    assert re.fullmatch(r"[^+]+\+[a-z2-7]{48}@.*", reply_to_address(answer))  # a reply token
    text = said(answer)
    assert "status open, priority medium, team support, assignee alice@example.com" in text
    told = text.index("message from dana@customer.test\nIt prints blank pages.\n＃list all")
    noted = text.index("internal note from alice@example.com\nCalled her, <b>no</b> answer")
    assert told < noted
    assert "assigned by alice@example.com\nassignee: alice@example.com" in text
    assert "acknowledged\nfirst contact: yes" in text  # details read as words, not as code
    assert "  [file] display.png (2 KB)" in text
    assert "  - display.png (2 KB), attached" in text
    [photo] = [p for p in answer.message.iter_attachments()]
    assert (photo.get_filename(), photo.get_content()) == ("display.png", PHOTO)
    html = html_of(answer)
    assert html is not None and "Called her, &lt;b&gt;no&lt;/b&gt; answer" in html
    assert counts(world) == before

    # a reply to the answer acts on the ticket, as a reply to a notice does
    world.deliver(agent_reply(answer, ALICE, "#close Replaced the toner"))
    world.run_once()
    assert world.ticket(1)["status"] == "closed"
    assert "Replaced the toner" in said(world.mails_to(CUSTOMER)[-1])


def test_show_writes_a_customers_file_name_so_no_command_can_come_of_it(
    world: DeskWorld,
) -> None:
    """A file name is the customer's text too: in the answer its ``#word`` is the full-width
    ``＃``, as in the subject and the messages; the file attached keeps the name it came with."""
    mail = customer_mail("Printer broken", "See the file.")
    mail.add_attachment(PHOTO, maintype="image", subtype="png", filename="#close")
    world.deliver(mail)
    world.run_once()
    [answer] = ask(world, "#show 1")

    text = said(answer)
    assert "  [file] ＃close (2 KB)" in text
    assert "  - ＃close (2 KB), attached" in text
    html = html_of(answer)
    assert html is not None and "<li>＃close (2 KB), attached</li>" in html
    assert "#close (2 KB)" not in text + html
    [photo] = [p for p in answer.message.iter_attachments()]
    assert photo.get_filename() == "#close"


def test_show_of_a_merged_ticket_shows_the_one_it_joined_and_no_ticket_says_so(
    world: DeskWorld,
) -> None:
    notice = queue(world)
    world.deliver(agent_reply(notice, ALICE, "#merge 2"))
    world.run_once()
    assert world.ticket(1)["status"] == "merged"

    [answer] = ask(world, "#show 1\n#show 999\n#show 2147483648")
    text = said(answer)
    assert str(answer.message["Subject"]) == "[#2] Invoice <b>wrong</b> & late"
    assert "[#1] was merged into [#2]; shown here: [#2]." in text
    assert "#show 999\nNot answered: no ticket [#999]." in text
    assert "#show 2147483648\nNot answered: no ticket 2147483648." in text


@ON_BOTH_DATABASES
def test_search_answers_the_best_matches_with_a_line_of_context(world: DeskWorld) -> None:
    queue(world)
    before = counts(world)
    long_words = " ".join(["toner"] * 31)  # with "#search ", 193 characters: at most 200
    [answer] = ask(
        world,
        f"#search blank pages\n#search INVOICE\n#search nothing-like-it\n#search {long_words}",
    )
    blank, invoice, nothing, toner = said(answer).split("\n== ")[1:5]
    assert '1 best match for "blank pages":' in blank
    assert "[#1]  open, 2026-11-26 09:00 UTC, from dana@customer.test" in blank
    assert "It prints blank pages." in blank
    assert "[#2]" in invoice and "[#1]" not in invoice
    assert 'Nothing matches "nothing-like-it".' in nothing
    assert "Nothing matches" in toner
    html = html_of(answer)
    assert html is not None and "Invoice &lt;b&gt;wrong&lt;/b&gt; &amp; late" in html
    [amount] = ask(world, "#search amount")
    assert "Amount is <script>x</script>" in said(amount)
    html = html_of(amount)
    assert html is not None and "Amount is &lt;script&gt;x&lt;/script&gt;" in html
    assert "<script>" not in html
    assert counts(world) == before

    [refused] = ask(world, "#search " + "x" * 500)
    assert "Not answered: longer than 200 characters." in said(refused)


def test_help_lists_the_queries_and_the_ticket_commands(world: DeskWorld) -> None:
    [answer] = ask(world, "#help")
    text = said(answer)
    assert str(answer.message["Subject"]) == "Answer to your query"
    assert "#list [mine | unassigned | team <name> | overdue | all]" in text
    assert "#search <words>" in text
    assert "#escalate <team> [summary]" in text
    assert world.tickets() == []


def test_a_query_typed_as_the_subject_is_answered(world: DeskWorld) -> None:
    """A phone's quickest mail: the query as the subject, the body a signature."""
    queue(world)
    before = counts(world)
    sent = customer_mail(
        "#list all", "Sent from my iPhone", sender=ALICE, to=personal_address(world)
    )
    world.deliver(sent)
    world.run_once()
    [answer] = world.mails_to(ALICE)[-1:]
    text = said(answer)
    assert str(answer.message["Subject"]) == "Answer to your query"
    assert text.split("\n== ")[1].startswith("#list all\n2 tickets (all open):")
    assert counts(world) == before


def test_a_ticket_of_thousands_of_messages_makes_an_answer_of_bounded_size(
    world: DeskWorld,
) -> None:
    queue(world)
    with world.db.transaction() as session:
        ticket = session.get(Ticket, 1)
        assert ticket is not None
        for number in range(5000):
            session.add(
                Message(
                    ticket_id=1,
                    sender=CUSTOMER,
                    text=f"message {number} " + "x" * 30_000,
                    created_at=ticket.created_at,
                )
            )
    [answer] = ask(world, "#show 1")
    text = said(answer)
    assert len(answer.raw) < 1_000_000, len(answer.raw)
    assert "older entries of its history are not shown here: maildesk tickets show 1" in text
    assert "message 4999 " in text
    assert "It prints blank pages." in text  # the first message always
    assert "more characters not shown here" in text
    # ten of them in one mail share that bound
    [ten] = ask(world, "#show 1\n" * 10)
    assert said(ten).count("\n== #show 1\n") == 10
    assert len(ten.raw) < 1_000_000


def test_a_thousand_query_lines_are_answered_ten_and_counted(world: DeskWorld) -> None:
    queue(world)
    [answer] = ask(world, "#list all\n" * 1000)
    text = said(answer)
    assert text.count("\n== #list all\n") == 10
    assert "990 more query lines not read: at most 10 queries per message." in text


def test_on_a_ticket_a_query_is_no_command_and_changes_nothing_but_the_note(
    world: DeskWorld,
) -> None:
    notice = queue(world)
    world.deliver(agent_reply(notice, ALICE, "#show 2\nwhat about this one?"))
    world.run_once()
    receipt = world.mails_to(ALICE)[-1]
    assert "Not done" in str(receipt.message["Subject"])
    assert "#show 2: unknown command" in said(receipt)
    hint = "#list, #show and #search are queries, not commands for a ticket: mail them on lines"
    assert hint in said(receipt) and personal_address(world) in said(receipt)
    ticket = world.ticket(1)
    assert ticket["status"] == "open"
    assert ticket["messages"][-1]["internal"] is True
    assert all("Invoice" not in said(m) for m in world.mails_to(CUSTOMER))


# --------------------------------------------------------------------------- who may ask


def test_a_forged_query_gets_only_the_notice_about_the_personal_address(world: DeskWorld) -> None:
    queue(world)
    before = counts(world)
    [notice] = ask(world, "#list all\n#show 1", to="support@example.com")
    assert notice.rcpt_tos == (ALICE,)
    text = " ".join(said(notice).split())
    assert "It was not sent to your personal desk address" in text
    assert "Printer broken" not in text and "Invoice" not in text
    assert counts(world) == before
    assert ledger(world)[-1][0] == "quarantined"
    # forged again within the hour: held back, nothing sent
    assert ask(world, "#list all", to="support@example.com") == []
    assert counts(world) == before


def test_a_trusted_verdict_proves_a_query_at_the_plain_address(world: DeskWorld) -> None:
    queue(world)
    mail = customer_mail("queue", "#list unassigned", sender=ALICE, to=world.address)
    verdict = b"Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"
    world.deliver(verdict + mail.as_bytes())
    world.run_once()
    answer = world.mails_to(ALICE)[-1]
    assert str(answer.message["Subject"]) == "Answer to your query"
    assert "[#2]" in said(answer)


def test_a_customers_list_is_text_in_their_own_ticket(world: DeskWorld) -> None:
    queue(world)
    mails = ask(world, "#list all\n#show 1", sender="frank@customer.test", to="support@example.com")
    ack = next(m for m in mails if m.rcpt_tos == ("frank@customer.test",))
    assert "Printer broken" not in said(ack) and "dana@customer.test" not in said(ack)
    [ticket] = [t for t in world.tickets() if t["requester"] == "frank@customer.test"]
    assert ticket["messages"][0]["text"] == "#list all\n#show 1"


def test_a_removed_agents_personal_address_proves_nothing(world: DeskWorld) -> None:
    queue(world)
    old = personal_address(world, BOB)
    world.tables["agents"][:] = [a for a in world.tables["agents"] if a["email"] != BOB]
    world.rewrite_config()
    from maildesk.service.wiring import desk_for

    world.settings = world.load_settings()
    world.desk.close()
    world.desk = desk_for(world.settings, clock=world.clock)
    mails = ask(world, "#list all", sender=BOB, to=old)
    # no longer an agent: a customer, whose mail is a ticket of their own and nothing more
    assert [m.rcpt_tos for m in mails if BOB in m.rcpt_tos] == [(BOB,)]
    assert all("Printer broken" not in said(m) for m in mails)
    assert [t["requester"] for t in world.tickets()][-1] == BOB


# --------------------------------------------------------------------------- tickets list


def listed(world: DeskWorld, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    """``maildesk tickets list --json FLAGS`` run in this process (as ``world.cli`` runs it in
    its own, a second's start each), the refs it lists."""
    capsys.readouterr()
    code = cli.main(["--config", str(world.config_path), "tickets", "list", "--json", *flags])
    out = capsys.readouterr()
    assert code == 0, out.err
    return [t["ref"] for t in json.loads(out.out)]


@ON_BOTH_DATABASES
def test_tickets_list_filters_as_list_does(
    world: DeskWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    notice = queue(world)
    world.deliver(agent_reply(notice, ALICE, "#tag printer"))
    world.run_once()
    assert listed(world, capsys) == ["[#1]", "[#2]"]
    assert listed(world, capsys, "--assignee", ALICE) == ["[#1]"]
    assert listed(world, capsys, "--assignee", "none") == ["[#2]"]
    assert listed(world, capsys, "--team", "Support") == ["[#1]", "[#2]"]
    assert listed(world, capsys, "--team", "engineering") == []
    assert listed(world, capsys, "--tag", "printer") == ["[#1]"]
    assert listed(world, capsys, "--requester", ERIN) == ["[#2]"]
    assert listed(world, capsys, "--since", "2026-11-26T09:30") == ["[#2]"]
    assert listed(world, capsys, "--since", "2026-11-26T10:30+01:00") == ["[#2]"]
    assert listed(world, capsys, "--since", "2026-11-27") == []
    assert listed(world, capsys, "--sla-breached") == []
    world.clock.advance(hours=3, minutes=30)  # [#1] was due at 13:00, [#2] at 14:00
    world.run_once()  # the timers mark [#1] missed
    assert listed(world, capsys, "--sla-breached") == ["[#1]"]
    assert listed(world, capsys, "--sla-breached", "--assignee", "none") == []
    [answer] = ask(world, "#list overdue\n#list all")
    overdue, everything = said(answer).split("\n== ")[1:3]
    assert "[#1]  open, medium, 4h 30m old, SLA due: missed: first response" in overdue
    assert "[#2]" not in overdue
    assert "[#1]" in everything and "[#2]" in everything

    for flags, error in [
        (("--since", "yesterday"), "maildesk: --since: not an ISO date or date and time"),
        (("--team", "nosuch"), "maildesk: --team: no team called nosuch (known: support"),
        (("--assignee", "alice"), "maildesk: --assignee: 'alice' is not an address (or none)"),
    ]:
        done = world.cli("tickets", "list", *flags)
        assert done.returncode == 2
        assert done.stderr.decode().startswith(error)
        assert len(done.stderr.decode().strip().splitlines()) == 1
