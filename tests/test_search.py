"""Search: the index the database keeps over subjects and every message, and ``act.search.find``
reading it, on SQLite and PostgreSQL alike.

The first tests write rows as the desk's writers do (one transaction per change) and look at
what ``find`` answers; the last ones go through the daemon with real mail: an agent's reply and
internal note, a merge, the same mail taken twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.orm import Session

import maildesk.database
from maildesk.act import search
from maildesk.database import Database
from maildesk.models import Message, Status, Ticket
from tests.desk import (
    ALICE,
    CUSTOMER,
    ON_BOTH_DATABASES,
    DeskWorld,
    agent_reply,
    customer_mail,
    ref_number,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'desk.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


def open_ticket(
    db: Database, subject: str, *texts: str, hours: float = 0, internal: bool = False
) -> int:
    """A ticket with ``texts`` as its messages, the first ``hours`` after ``START``."""
    at = START + timedelta(hours=hours)
    with db.transaction() as session:
        ticket = Ticket(
            subject=subject,
            requester=CUSTOMER,
            team="support",
            created_at=at,
            updated_at=at,
            status_since=at,
        )
        session.add(ticket)
        for n, body in enumerate(texts):
            ticket.messages.append(
                Message(
                    sender=CUSTOMER,
                    subject=subject,
                    text=body,
                    internal=internal and n > 0,
                    created_at=at + timedelta(minutes=n),
                )
            )
        session.flush()
        return ticket.id


def found(db: Database, words: str, **options: int) -> list[int]:
    with db.transaction() as session:
        return [m.ticket_id for m in search.find(session, words, **options)]


def test_the_best_matches_come_first_and_the_newest_among_equals(db: Database) -> None:
    scattered = open_ticket(db, "Question", "The jam is in tray 2 of the printer.", hours=5)
    older = open_ticket(db, "Hello", "Our printer jam again, tray 1.", hours=1)
    newer = open_ticket(db, "Hi", "A printer jam since Monday.", hours=3)
    in_subject = open_ticket(db, "Printer jam on floor 3", "It stops on every page.", hours=0)
    open_ticket(db, "Printer", "Toner is low.", hours=6)  # one of the two words only

    # the subject first, then the words as typed (newest first), then the words apart
    assert found(db, "printer jam") == [in_subject, newer, older, scattered]
    assert found(db, "printer jam", limit=2) == [in_subject, newer]
    # one word: every ticket holding it, subjects first, then the newest message first
    assert found(db, "jam") == [in_subject, scattered, newer, older]


def test_a_match_says_what_and_where(db: Database) -> None:
    number = open_ticket(
        db,
        "Refund",
        "Dear desk,\n\n" + "Lorem ipsum dolor sit amet. " * 20 + "\nInvoice E-4711 was charged"
        " twice,\nplease refund the second one. " + "More words follow here. " * 20,
        hours=2,
    )
    with db.transaction() as session:
        [match] = search.find(session, "e-4711")
    assert (match.ticket_id, match.subject, match.status) == (number, "Refund", Status.OPEN)
    assert match.requester == CUSTOMER
    assert match.at == START + timedelta(hours=2)
    assert not match.in_subject
    # one line around the words, cut where it is long
    assert "Invoice E-4711 was charged twice, please refund" in match.context
    assert "\n" not in match.context
    assert match.context.startswith("…") and match.context.endswith("…")
    assert len(match.context) <= search.CONTEXT_CHARS


@pytest.mark.parametrize(
    ("words", "written"),
    [
        ("E-4711", "Order E-4711 is late"),
        ("4711", "Order E-4711 is late"),
        ("e-4711", "ORDER E-4711 IS LATE"),
        ("alice@example.com", "please write to Alice@Example.com today"),
        ("example.com", "please write to alice@example.com today"),
        ("Grüße", "Viele grüße aus Köln"),
        ("köln", "Viele Grüße aus KÖLN"),
        ("straße", "Hauptstraße 5 or Straße des 17. Juni"),
        ("東京都", "送付先: 東京都 渋谷区"),
        ("v2.3.1", "since the upgrade to v2.3.1 it fails"),
        ("C++", "our C++ build breaks"),
        # typed decomposed (a terminal on macOS, a name pasted from a file), kept composed
        ("Cafe\u0301 cre\u0300me", "Café crème is cold"),
    ],
)
def test_words_find_what_a_user_expects(db: Database, words: str, written: str) -> None:
    number = open_ticket(db, "Help", written)
    open_ticket(db, "Other", "Nothing to see here, order 4712 at gmail.com")
    assert found(db, words) == [number]


@pytest.mark.parametrize(
    "words",
    [
        "",
        "   \n\t",
        '"',
        '"printer',
        'printer"',
        "NEAR(printer jam)",
        "printer NEAR/2 jam",
        "print*",
        "subject:printer",
        "(printer OR jam) AND NOT toner",
        "printer & !jam | toner <-> x:*",
        "'; DROP TABLE tickets; --",
        "\x00printer\x00",
        "^printer",
        "{subject text}: printer",
        "-printer +jam",
        "ß",
        "\U0001f5a8\ufe0f",
    ],
)
def test_query_syntax_is_only_words(db: Database, words: str) -> None:
    printer = open_ticket(db, "Printer", "printer jam, not toner")
    result = found(db, words)
    # never an error; the letters and digits in the words are what is looked for
    tokens = [t for word in search.terms(words) for t in word]
    assert result == (
        [printer] if tokens and set(tokens) <= {"printer", "jam", "not", "toner"} else []
    )
    with db.transaction() as session:  # the tickets are all there still
        assert session.query(Ticket).count() == 1


def test_words_are_bounded_however_many_are_given(db: Database) -> None:
    open_ticket(db, "Printer", "printer jam")
    many = " ".join(f"w{i}" for i in range(10_000))
    assert search.terms(many) == search.terms(many + " " + many)
    assert len(search.terms(many)) == search.MAX_TERMS
    assert found(db, many) == []
    assert found(db, "printer " + many) == []  # all the words looked for must be there
    megabyte = "a" * 1_000_000
    assert search.terms(megabyte) == [] == search.terms(megabyte * 2)
    assert found(db, megabyte) == []
    assert found(db, "printer " * 100_000) == found(db, "printer") != []
    # a word cut at the bound is left out, not looked for in half
    cut = "x" * (search.MAX_INPUT_CHARS - 4) + " printer"
    assert found(db, cut) == []


def test_a_word_in_an_internal_note_or_only_in_the_subject_finds_the_ticket(db: Database) -> None:
    noted = open_ticket(
        db, "Login", "I cannot log in", "Checked: zebra account locked", internal=True
    )
    titled = open_ticket(db, "Zebra crossing sign broken", "It fell over.", hours=1)
    assert found(db, "zebra") == [titled, noted]
    with db.transaction() as session:
        by_note = next(m for m in search.find(session, "zebra") if m.ticket_id == noted)
    assert by_note.context == "Checked: zebra account locked"


def test_the_index_follows_changes_to_subjects_and_messages(db: Database) -> None:
    number = open_ticket(db, "Old words", "first text")
    with db.transaction() as session:
        ticket = session.get(Ticket, number)
        assert ticket is not None
        ticket.subject = "New heading"
        ticket.messages[0].text = "second text"
        ticket.messages.append(Message(sender=ALICE, subject="", text="reply", created_at=START))
    assert found(db, "first") == []
    assert found(db, "heading") == found(db, "second") == found(db, "reply") == [number]
    with db.transaction() as session:  # the first mail's subject is the words it came with
        [by_mail] = search.find(session, "old")
        [by_subject] = search.find(session, "heading")
    assert (by_mail.in_subject, by_subject.in_subject) == (False, True)
    with db.transaction() as session:
        ticket = session.get(Ticket, number)
        assert ticket is not None
        for message in ticket.messages:
            session.delete(message)
    assert found(db, "second") == found(db, "reply") == []
    assert found(db, "heading") == [number]


def test_a_rolled_back_message_is_not_found(db: Database) -> None:
    number = open_ticket(db, "Printer", "printer jam")
    with pytest.raises(RuntimeError), db.transaction() as session:
        ticket = session.get(Ticket, number)
        assert ticket is not None
        ticket.messages.append(Message(sender=ALICE, subject="", text="walrus", created_at=START))
        session.flush()
        assert [m.ticket_id for m in search.find(session, "walrus")] == [number]
        raise RuntimeError("the mail could not be handled")
    assert found(db, "walrus") == []


def test_only_the_indexed_start_of_a_huge_text_is_searched(db: Database) -> None:
    filler = "word " * (search.SEARCHED_CHARS // 5)
    number = open_ticket(db, "Log", "start " + filler + " beyond")
    assert found(db, "start") == [number]
    assert found(db, "beyond") == []


# ---------------------------------------------------------------------------- the migration


def _alembic(db: Database) -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(Path(maildesk.database.__file__).parent / "migrations")
    )
    config.attributes["engine"] = db.engine
    return config


def test_the_migration_indexes_existing_tickets_and_goes_back(db: Database) -> None:
    command.downgrade(_alembic(db), "0010")
    number = open_ticket(db, "Printer on floor 3", "it jams", "noted: walrus", internal=True)
    with db.engine.connect() as conn:
        tables = {"sqlite": "sqlite_master", "postgresql": "pg_indexes"}[conn.dialect.name]
        column = "name" if tables == "sqlite_master" else "indexname"
        names = conn.execute(text(f"SELECT {column} FROM {tables}")).scalars().all()
    assert not any("search" in name for name in names)
    db.upgrade()
    assert db.revision() == maildesk.database.HEAD_REVISION
    assert found(db, "floor") == found(db, "jams") == found(db, "walrus") == [number]
    number_two = open_ticket(db, "Printer again", "walrus", hours=1)
    assert found(db, "walrus") == [number_two, number]


# ---------------------------------------------------------------------------- through the daemon


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url)
    yield w
    w.close()


def matches(world: DeskWorld, words: str) -> list[tuple[int, str]]:
    with world.db.transaction() as session:
        return [(m.ticket_id, m.context) for m in search.find(session, words)]


@ON_BOTH_DATABASES
def test_replies_notes_and_merged_threads_are_found(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages since E-4711."))
    world.deliver(customer_mail("Scanner too", "The scanner shows error 0x5A."))
    world.run_once()
    notices = {ref_number(notice): notice for notice in world.wait_mails_to(ALICE, 2)}
    first_notice, second_notice = notices[1], notices[2]
    world.deliver(agent_reply(first_notice, ALICE, "Please try the walrus driver."))
    world.deliver(agent_reply(second_notice, ALICE, "#note the unicorn cable is loose"))
    world.run_once()
    assert matches(world, "walrus driver") == [(1, "Please try the walrus driver.")]
    assert matches(world, "unicorn") == [(2, "the unicorn cable is loose")]

    world.deliver(agent_reply(second_notice, ALICE, "#merge #1"))
    world.run_once()
    assert world.ticket(2)["status"] == "merged"
    # the merged ticket's thread is found where it went; the merged ticket itself is not
    assert [n for n, _ in matches(world, "unicorn")] == [1]
    assert [n for n, _ in matches(world, "scanner")] == [1]


@ON_BOTH_DATABASES
def test_the_same_mail_taken_twice_is_indexed_once(world: DeskWorld) -> None:
    mail = customer_mail("Printer broken", "The narwhal tray is stuck.")
    world.deliver(mail)
    world.run_once()
    world.deliver(mail)  # the same Message-ID again, as a server redelivers it
    world.run_once()
    assert [n for n, _ in matches(world, "narwhal")] == [1]
    with world.db.transaction() as session:
        assert _indexed_messages(session, "narwhal") == 1


def _indexed_messages(session: Session, word: str) -> int:
    if session.get_bind().dialect.name == "sqlite":
        query = "SELECT count(*) FROM messages_search WHERE messages_search MATCH :w"
    else:
        query = "SELECT count(*) FROM messages WHERE search @@ to_tsquery('simple', :w)"
    return int(session.execute(text(query), {"w": word}).scalar_one())


@ON_BOTH_DATABASES
def test_tickets_search_on_the_command_line(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer broken", "Order E-4711: the printer\nprints blank pages."))
    world.deliver(customer_mail("Scanner", "The scanner is fine, the printer is not."))
    world.run_once()

    done = world.cli("tickets", "search", "--json", "printer")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert [(m["ref"], m["number"], m["in_subject"]) for m in found] == [
        ("[#1]", 1, True),
        ("[#2]", 2, False),
    ]
    assert set(found[0]) == {
        "ref",
        "number",
        "subject",
        "status",
        "requester",
        "at",
        "context",
        "in_subject",
    }
    assert (found[1]["subject"], found[1]["status"], found[1]["requester"]) == (
        "Scanner",
        "open",
        CUSTOMER,
    )
    assert found[1]["context"] == "The scanner is fine, the printer is not."
    assert found[1]["at"].endswith("Z")

    table = world.cli("tickets", "search", "E-4711", "blank").stdout.decode().splitlines()
    assert table[0].split() == ["REF", "STATUS", "AT", "REQUESTER", "SUBJECT"]
    assert table[1].startswith("[#1]") and table[1].endswith("Printer broken")
    assert table[2] == "    Order E-4711: the printer prints blank pages."
    assert len(table) == 3

    limited = json.loads(world.cli("tickets", "search", "printer", "--limit", "1", "--json").stdout)
    assert [m["number"] for m in limited] == [1]
    nothing = world.cli("tickets", "search", "NEAR(", '"', "*")
    assert (nothing.returncode, nothing.stdout) == (0, b"no ticket matches\n")
    wrong = world.cli("tickets", "search", "printer", "--limit", "0")
    assert wrong.returncode == 2 and b"not a number of tickets: '0'" in wrong.stderr


@ON_BOTH_DATABASES
def test_a_mail_taken_again_after_a_crash_is_indexed_once(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer broken", "The okapi tray is stuck."))
    for point in ("after_fetch", "after_commit"):  # killed before the commit, then after it
        killed = world.cli("run", "--once", MAILDESK_CRASH_AT=point)
        assert killed.returncode == 137, killed.stderr.decode()[-2000:]
        with world.db.transaction() as session:
            assert _indexed_messages(session, "okapi") == (point == "after_commit")
    again = world.cli("run", "--once")  # the ledger knows the mail: moved, not taken again
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert [n for n, _ in matches(world, "okapi")] == [1]
    with world.db.transaction() as session:
        assert _indexed_messages(session, "okapi") == 1
