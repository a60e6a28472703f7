"""Tables (the engine and sessions are in ``database``, migrations in ``maildesk/migrations``).

Everything maildesk remembers is here: tickets and their thread, the event log, the outbox of
mail to send, and the ledger of every IMAP message seen (keyed by mailbox, UIDVALIDITY and UID),
which is what makes a crash between commit and move harmless. Only the daemon and the CLI open
transactions; domain functions take a ``Session``.
"""

from __future__ import annotations

import enum
import logging
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Attachment",
    "Base",
    "Blob",
    "BlobChunk",
    "DatabaseError",
    "DeskState",
    "Event",
    "Lease",
    "Ledger",
    "Message",
    "Outbox",
    "OutboxStatus",
    "Participant",
    "Session",
    "SmtpCapabilities",
    "Status",
    "Suppression",
    "Tag",
    "Ticket",
    "select",
]


log = logging.getLogger(__name__)


class DatabaseError(Exception):
    """The database could not be reached or is locked: transient, retry later."""


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend stores."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Status(enum.StrEnum):
    OPEN = "open"
    PENDING = "pending"
    ESCALATED = "escalated"
    CLOSED = "closed"
    SPAM = "spam"  # no acknowledgment, no notice, no timers; listed only when asked for
    MERGED = "merged"  # its thread moved to the ticket ``merged_into``; mail to it joins that one


# what no timer, SLA or open count looks at
SHELVED = (Status.CLOSED, Status.SPAM, Status.MERGED)


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(998))
    requester: Mapped[str] = mapped_column(String(320), index=True)
    status: Mapped[str] = mapped_column(String(16), default=Status.OPEN, index=True)
    priority: Mapped[str] = mapped_column(String(16), default="medium")
    team: Mapped[str] = mapped_column(String(64), index=True)
    assignee: Mapped[str | None] = mapped_column(String(320), nullable=True)
    mailbox: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_since: Mapped[datetime] = mapped_column(UTCDateTime)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the reminder of the current pending period was sent, or held (the requester bounced)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    sla_breached: Mapped[str] = mapped_column(String(64), default="")
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rating_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    linked_to: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    # when mail to the requester failed for good (a proven report, or the SMTP server refused
    # the address); None again once they write. No reminders and no auto-close meanwhile.
    requester_bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    merged_into: Mapped[int | None] = mapped_column(Integer, nullable=True)  # status merged

    tags: Mapped[list[Tag]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", order_by="Tag.tag"
    )
    participants: Mapped[list[Participant]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan"
    )
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", order_by="Message.id"
    )
    events: Mapped[list[Event]] = relationship(
        back_populates="ticket", cascade="all, delete-orphan", order_by="Event.id"
    )
    links: Mapped[list[Link]] = relationship(
        cascade="all, delete-orphan", order_by="Link.other_id", foreign_keys="Link.ticket_id"
    )

    @property
    def number(self) -> int:
        return self.id

    @property
    def tag_names(self) -> list[str]:
        return [t.tag for t in self.tags]


class Tag(Base):
    __tablename__ = "tags"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticket: Mapped[Ticket] = relationship(back_populates="tags")


class Link(Base):
    """Two tickets an agent linked (``#link``): one row each way, so either lists the other."""

    __tablename__ = "ticket_links"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    other_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    linked_by: Mapped[str] = mapped_column(String(320), default="")


class Participant(Base):
    """An address on a ticket's Cc besides its requester: named in To or Cc of a customer's
    mail, or added by an agent (``#cc``, ``added_by``). They may follow up by ref, and the
    mails that carry the ticket's news copy them. ``bounced_at``: a copy was refused for good."""

    __tablename__ = "participants"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    added_by: Mapped[str] = mapped_column(String(320), default="")
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ticket: Mapped[Ticket] = relationship(back_populates="participants")


class Message(Base):
    """One message in a ticket's thread: inbound mail, an agent reply, or an internal note."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True)
    sender: Mapped[str] = mapped_column(String(320))
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    unverified: Mapped[bool] = mapped_column(Boolean, default=False)
    automatic: Mapped[str | None] = mapped_column(String(64), nullable=True)
    held: Mapped[bool] = mapped_column(Boolean, default=False)  # a reply kept until #send
    subject: Mapped[str] = mapped_column(String(998), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    raw_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    defects: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attachment.id"
    )

    __table_args__ = (
        Index("ix_messages_message_id", "message_id"),
        # whether the desk has heard from an address before (the cap on first-contact acks)
        Index("ix_messages_sender", "sender"),
    )


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    dropped: Mapped[bool] = mapped_column(Boolean, default=False)

    message: Mapped[Message] = relationship(back_populates="attachments")


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(320), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(Text, default="")

    ticket: Mapped[Ticket] = relationship(back_populates="events")

    # counting one kind of event in the last hour reads that hour's rows, not every one ever
    __table_args__ = (Index("ix_events_kind_at", "kind", "at"),)


class Outbox(Base):
    """Mail to send, written in the same transaction as the change that causes it.

    One row is one envelope: one recipient, one VERP ``mail_from``, sent, retried, bounced and
    suppressed on its own. A mail with Cc is one row for its To (``message_id`` is the mail's
    Message-ID, ``body`` its bytes) and one row per Cc address: a copy's ``message_id`` is a
    Message-ID of the desk's own kind that no mail carries, the key its VERP address is made
    from (so a bounce proves which recipient it is about); ``copy_of`` names the mail's
    Message-ID, whose row's bytes it sends (its own ``body`` is empty).

    Files of the blob store a mail carries are not in its ``body``: each leaves a mark there,
    and ``files`` (JSON: [[store name, mark], ...]) says which file goes in its place when the
    mail is claimed for sending (``claims.with_files``); ``files_bytes`` is their size in the
    mail. A mail's files are in the database once, whichever mails carry them."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(
        ForeignKey("tickets.id"), nullable=True, index=True
    )
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    copy_of: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    files: Mapped[str | None] = mapped_column(Text, nullable=True)
    files_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient_created", "recipient", "created_at"),
    )


class Ledger(Base):
    """Every IMAP message seen, keyed by mailbox + UIDVALIDITY + UID, and what became of it."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(64))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None: not IMAP
    uid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(998), nullable=True, index=True)
    sha256: Mapped[str] = mapped_column(String(64), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), nullable=True)
    raw_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    sender: Mapped[str] = mapped_column(String(998), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    moved: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (UniqueConstraint("mailbox", "uidvalidity", "uid", name="uq_ledger_key"),)


class RawMail(Base):
    """The verbatim bytes of an ordinary-sized message, by SHA-256 (``raw_path`` "db:<sha256>").

    Kept in the message's own transaction: no file to create and flush on its own, which cost
    more than the rest of the commit; large messages still go to the blob store on disk."""

    __tablename__ = "raw_mail"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Blob(Base):
    """A file of the database store (``[store] backend = "database"``), by the name rows keep
    (its SHA-256 in it): an attachment, or raw mail over 1 MiB. Its bytes are its
    ``blob_chunks``, written in the same transaction as this row: a committed row always has
    all of them."""

    __tablename__ = "blobs"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)  # raw/ab/cd/<sha256>.eml
    size: Mapped[int] = mapped_column(BigInteger)
    chunks: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BlobChunk(Base):
    """One piece of a blob's bytes (1 MiB, the last one less), in order by ``seq`` from 0.
    A file written as it streams in (its digest known only at the end) is written under a
    name of its own and takes its real name in the same transaction."""

    __tablename__ = "blob_chunks"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Suppression(Base):
    """Addresses that bounced permanently: no automatic mail to them until ``until``.

    ``reason`` is the status the server gave (``5.1.1``, or the SMTP reply's code and status),
    ``bounced_at`` when (None: a row from before it was kept). The row stays after ``until``:
    an agent writing to the address is told it bounced on that date."""

    __tablename__ = "suppressions"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Contact(Base):
    """An address that answered mail the desk sent it: its reply named that mail in
    In-Reply-To or References. Only such a sender counts as one the desk has heard from for
    ``[limits] new_sender_acks_per_hour``: anyone can write a From:, but a forger using the
    address never saw the desk's mail to it."""

    __tablename__ = "contacts"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    since: Mapped[datetime] = mapped_column(UTCDateTime)


class BlockedSender(Base):
    """An address an agent blocked (``#spam block``, on ticket ``ticket_id``): its mail opens
    nothing. ``[intake] blocked_senders`` are the config's; these, ``maildesk intake unblock``."""

    __tablename__ = "blocked_senders"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    blocked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    blocked_by: Mapped[str] = mapped_column(String(320), default="")
    ticket_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class SmtpCapabilities(Base):
    """What an SMTP server announced when the delivery process last connected to it.

    Keyed by ``host:port``, so another ``[smtp]`` server starts out unknown. Read when mail to a
    non-ASCII address is enqueued: a server known not to announce SMTPUTF8 cannot take it, and
    the agent is told at once instead of after a delivery attempt."""

    __tablename__ = "smtp_capabilities"

    server: Mapped[str] = mapped_column(String(300), primary_key=True)
    smtputf8: Mapped[bool] = mapped_column(Boolean)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PipeCount(Base):
    """Messages ``maildesk ingest`` handled, by mailbox, outcome and (for ignored mail) reason
    label: how mail that came through an MTA's pipe reaches the daemon's ``/metrics``.

    The ingest process is not the daemon, so it cannot count in the daemon's memory; it adds
    one here after each message. Counts only grow (a replay from the quarantine changes the
    ledger, not these), so the daemon serves what grew since it started as a counter."""

    __tablename__ = "pipe_counts"

    mailbox: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class DigestSent(Base):
    """One digest a day per recipient (``act.digest``): written in the transaction that
    enqueues it, so a second daemon, or a restart after it went out, finds the day done.
    ``mailed`` False: the lists were empty that morning and nothing was sent."""

    __tablename__ = "digests"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # in the desk's zone
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # agent | admin
    recipient: Mapped[str] = mapped_column(String(320), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    mailed: Mapped[bool] = mapped_column(Boolean)


class DeskState(Base):
    """Desk-wide values every daemon on the database shares, one row a key: the desk's secret
    (``secret``) when the config gives none, made once by whichever daemon starts first."""

    __tablename__ = "desk_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Lease(Base):
    """One consumer per mailbox: the holder renews its lease; a dead holder's lease expires."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fence: Mapped[int] = mapped_column(Integer, default=0)


def insert_row(
    session: Session, table: type[Base], values: dict[str, Any], *, once: bool = False
) -> None:
    """A plain INSERT in the session's transaction, for a row nothing reads back in it (an
    outbox row, an event, raw mail): the ORM's unit of work costs more than writing it. Run on
    the session's connection, so pending ORM objects are not flushed first. ``once``: skip a
    row whose primary key exists (identical content-addressed bytes from two daemons at once)."""
    dialect = session.get_bind().dialect.name
    statement = _INSERTS.get((table, once, dialect))
    if statement is None:
        if not once:
            statement = insert(cast(Table, table.__table__))
        elif dialect == "postgresql":
            statement = postgresql_insert(table).on_conflict_do_nothing()
        else:
            statement = sqlite_insert(table).on_conflict_do_nothing()
        _INSERTS[(table, once, dialect)] = statement  # building one costs more than running it
    session.connection().execute(statement, values)


_INSERTS: dict[tuple[type[Base], bool, str], Any] = {}
