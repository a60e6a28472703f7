"""The schema: ``db upgrade`` creates it, knows when it is current, and stays in step with
the migrations on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

import maildesk.models
from maildesk.act import search
from maildesk.database import HEAD_REVISION, Database


def test_head_revision_is_the_newest_migration() -> None:
    config = Config()
    config.set_main_option(
        "script_location", str(Path(maildesk.models.__file__).parent / "migrations")
    )
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'desk.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_upgrade_creates_the_schema_once(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert db.revision() is None
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert {"tickets", "messages", "outbox", "ledger"} <= set(
            inspect(db.engine).get_table_names()
        )
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO suppressions (address, reason, until) VALUES "
                    "('x@example.org', 'bounced', '2030-01-01 00:00:00')"
                )
            )
        db.upgrade()  # current already: nothing is recreated, nothing is lost
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM suppressions")).scalar() == 1
    finally:
        db.dispose()


def test_an_older_revision_is_upgraded(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'stale'"))
        assert db.revision() == "stale"
        with pytest.raises(Exception, match="stale"):
            db.upgrade()  # not taken for current: alembic is asked, and names what it cannot find
    finally:
        db.dispose()


def _undo_0015(conn: Connection) -> None:
    conn.execute(text("DROP TABLE desk_state"))


def _undo_0014(conn: Connection) -> None:
    _undo_0015(conn)
    conn.execute(text("ALTER TABLE outbox DROP COLUMN files_bytes"))
    conn.execute(text("ALTER TABLE outbox DROP COLUMN files"))


def _undo_0013(conn: Connection) -> None:
    _undo_0014(conn)
    conn.execute(text("DROP TABLE digests"))


def _undo_0012(conn: Connection) -> None:
    _undo_0013(conn)
    conn.execute(text("DROP TABLE blob_chunks"))
    conn.execute(text("DROP TABLE blobs"))


def _undo_0011(conn: Connection) -> None:
    _undo_0012(conn)
    if conn.dialect.name == "sqlite":
        for kind, name in conn.execute(
            text(
                "SELECT type, name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%search%'"
            )
        ).all():
            conn.execute(text(f"DROP {kind} {name}"))
        conn.execute(text("DROP TABLE messages_search"))
        conn.execute(text("DROP TABLE tickets_search"))
    else:
        conn.execute(text("ALTER TABLE messages DROP COLUMN search"))
        conn.execute(text("ALTER TABLE tickets DROP COLUMN search"))


def _undo_0010(conn: Connection) -> None:
    _undo_0011(conn)
    conn.execute(text("ALTER TABLE participants DROP COLUMN bounced_at"))


def _undo_0009(conn: Connection) -> None:
    _undo_0010(conn)
    conn.execute(text("DROP TABLE ticket_links"))
    conn.execute(text("ALTER TABLE messages DROP COLUMN held"))
    conn.execute(text("ALTER TABLE tickets DROP COLUMN merged_into"))


def _undo_0008(conn: Connection) -> None:
    _undo_0009(conn)
    conn.execute(text("DROP TABLE blocked_senders"))


def _undo_0007(conn: Connection) -> None:
    _undo_0008(conn)
    conn.execute(text("DROP INDEX ix_outbox_copy_of"))
    conn.execute(text("ALTER TABLE outbox DROP COLUMN copy_of"))
    conn.execute(text("ALTER TABLE participants DROP COLUMN added_at"))
    conn.execute(text("ALTER TABLE participants DROP COLUMN added_by"))


def _undo_0006(conn: Connection) -> None:
    _undo_0007(conn)
    conn.execute(text("DROP TABLE contacts"))


def _undo_0005(conn: Connection) -> None:
    _undo_0006(conn)
    conn.execute(text("DROP TABLE pipe_counts"))


def _undo_0004(conn: Connection) -> None:
    _undo_0005(conn)
    conn.execute(text("ALTER TABLE tickets DROP COLUMN requester_bounced_at"))
    conn.execute(text("ALTER TABLE suppressions DROP COLUMN bounced_at"))


def _undo_0003(conn: Connection) -> None:
    _undo_0004(conn)
    conn.execute(text("DROP TABLE smtp_capabilities"))
    conn.execute(text("DROP INDEX ix_messages_sender"))
    conn.execute(text("DROP INDEX ix_events_kind_at"))


def test_a_database_at_the_first_revision_gains_the_raw_mail_table(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0003(conn)
            conn.execute(text("DROP TABLE raw_mail"))
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert "raw_mail" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert "raw_mail" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_a_database_at_the_second_revision_gains_smtp_capabilities_and_indexes(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0003(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        schema = inspect(db.engine)
        assert "smtp_capabilities" in schema.get_table_names()
        assert "ix_messages_sender" in {i["name"] for i in schema.get_indexes("messages")}
        assert "ix_events_kind_at" in {i["name"] for i in schema.get_indexes("events")}
    finally:
        db.dispose()


def test_a_database_at_the_third_revision_gains_the_bounce_dates(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0004(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0003'"))
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        schema = inspect(db.engine)
        assert "requester_bounced_at" in {c["name"] for c in schema.get_columns("tickets")}
        assert "bounced_at" in {c["name"] for c in schema.get_columns("suppressions")}
    finally:
        db.dispose()


def test_a_database_at_the_fourth_revision_gains_the_pipe_counts(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0005(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0004'"))
        assert "pipe_counts" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert "pipe_counts" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def _a_customer_who_answered_and_one_who_did_not(conn: Connection) -> None:
    for ticket, requester in ((1, "alice@example.com"), (2, "mallory@example.net")):
        conn.execute(
            text(
                "INSERT INTO tickets (id, subject, requester, status, priority, team, mailbox,"
                " created_at, updated_at, status_since, sla_breached)"
                " VALUES (:id, 's', :who, 'open', 'medium', 'support', '',"
                " '2026-01-01 10:00:00', '2026-01-01 10:00:00', '2026-01-01 10:00:00', '')"
            ),
            {"id": ticket, "who": requester},
        )
        conn.execute(
            text(
                "INSERT INTO messages (ticket_id, sender, internal, unverified, subject, text,"
                " defects, created_at)"
                " VALUES (:id, :who, false, false, 's', 'first', '', '2026-01-01 10:00:00')"
            ),
            {"id": ticket, "who": requester},
        )
        conn.execute(
            text(
                "INSERT INTO outbox (ticket_id, message_id, kind, recipient, mail_from,"
                " automatic, body, status, attempts, next_attempt_at, created_at, sent_at)"
                " VALUES (:id, :mid, 'ack', :who, 'desk@example.com', true, :body, 'sent', 1,"
                " '2026-01-01 10:00:01', '2026-01-01 10:00:01', '2026-01-01 10:00:02')"
            ),
            {"id": ticket, "mid": f"<ack{ticket}@desk>", "who": requester, "body": b"x"},
        )
    conn.execute(
        text(
            "INSERT INTO messages (ticket_id, sender, internal, unverified, subject, text,"
            " defects, created_at)"
            " VALUES (1, 'alice@example.com', false, false, 's', 'thanks', '',"
            " '2026-01-01 11:00:00')"
        )
    )


def test_a_database_at_the_fifth_revision_gains_the_contacts(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0006(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
            _a_customer_who_answered_and_one_who_did_not(conn)
        assert "contacts" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        with db.engine.begin() as conn:
            known = conn.execute(text("SELECT address FROM contacts")).scalars().all()
        # the customer who wrote after the desk's acknowledgment went out stays known; the
        # one who only ever wrote first does not become known by the upgrade
        assert known == ["alice@example.com"]
    finally:
        db.dispose()


def test_a_database_at_the_sixth_revision_dates_its_participants(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0007(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0006'"))
            _a_customer_who_answered_and_one_who_did_not(conn)
            conn.execute(
                text("INSERT INTO participants (ticket_id, address) VALUES (1, 'dave@x.test')")
            )
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        with db.engine.begin() as conn:
            rows = conn.execute(text("SELECT address, added_at, added_by FROM participants")).all()
            copies = conn.execute(text("SELECT count(*) FROM outbox WHERE copy_of IS NULL"))
            assert copies.scalar() == 2
        # a participant of before was Cc'd by the requester's first mail, when it came
        [(address, added_at, added_by)] = rows
        assert (address, added_by) == ("dave@x.test", "alice@example.com")
        assert str(added_at).startswith("2026-01-01 10:00:00")
        assert "ix_outbox_copy_of" in {i["name"] for i in inspect(db.engine).get_indexes("outbox")}
    finally:
        db.dispose()


def test_a_database_at_the_seventh_revision_gains_the_block_list(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0008(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0007'"))
        assert "blocked_senders" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert "blocked_senders" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_a_database_at_the_eighth_revision_gains_merges_links_and_held_replies(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0009(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0008'"))
        assert "ticket_links" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert "ticket_links" in inspect(db.engine).get_table_names()
        assert "merged_into" in {c["name"] for c in inspect(db.engine).get_columns("tickets")}
        assert "held" in {c["name"] for c in inspect(db.engine).get_columns("messages")}
    finally:
        db.dispose()


def test_a_database_at_the_ninth_revision_marks_bounced_participants(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0010(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0009'"))
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        columns = {c["name"] for c in inspect(db.engine).get_columns("participants")}
        assert "bounced_at" in columns
    finally:
        db.dispose()


def test_a_database_at_the_tenth_revision_gains_the_search_index(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0011(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0010'"))
            _a_customer_who_answered_and_one_who_did_not(conn)
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        with db.sessions.begin() as session:  # the tickets of before are found
            assert [m.ticket_id for m in search.find(session, "thanks")] == [1]
            assert [m.ticket_id for m in search.find(session, "first")] == [2, 1]
    finally:
        db.dispose()


def test_a_database_at_the_twelfth_revision_gains_the_digests(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        with db.engine.begin() as conn:
            _undo_0013(conn)
            conn.execute(text("UPDATE alembic_version SET version_num = '0012'"))
        assert "digests" not in inspect(db.engine).get_table_names()
        db.upgrade()
        assert db.revision() == HEAD_REVISION
        assert "digests" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()
