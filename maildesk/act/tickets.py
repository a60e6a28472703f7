"""The lifecycle rules: open, reply, note, assign, escalate, close, reopen, rate.

Each rule changes a ticket inside the caller's transaction and says which mail that causes, as
``outbox.Mail`` values handed to the ``Mailer`` (written to the outbox in the same transaction).
Every step that matters to the customer emails them; nothing internal ever does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, object_session

from maildesk.act import guard
from maildesk.act.outbox import Mail, Mailer
from maildesk.config import AgentSettings, Settings
from maildesk.desk import auth, commands, sla
from maildesk.desk.routing import Identity, TicketView
from maildesk.mail import marks
from maildesk.mail.inbound import Inbound
from maildesk.mail.parsing import Parser
from maildesk.models import (
    Attachment,
    Contact,
    Event,
    Message,
    Outbox,
    OutboxStatus,
    Participant,
    Status,
    Suppression,
    Tag,
    Ticket,
    insert_row,
)
from maildesk.store import Store

log = logging.getLogger("maildesk.tickets")  # the logs name the job, not the module path

RATING = re.compile(
    r"^\s*(?:rating\s*[:=]?\s*)?([1-5])(?:\s*/\s*5)?(?![\d.,])\s*[-:.,!)]*\s*(.*)$", re.I | re.S
)


@dataclass(frozen=True, slots=True)
class StoredMail:
    """Where the raw bytes of the message being handled were kept."""

    raw_path: str | None
    sha256: str | None


class Desk:
    """What the lifecycle rules need: settings, the blob store, the mailer and the clock; and
    the parser, whose worker processes parse each message within its budget."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        mailer: Mailer | None = None,
        clock: Callable[[], datetime] | None = None,
        parser: Parser | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.desk.data_dir)
        self.mailer = mailer or Mailer(settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.parser = parser or Parser()  # starts no process until it is used
        self.identity = Identity(
            address=settings.desk.address,
            secret=settings.desk.secret,
            loop_id=settings.desk.loop_id,
            ref_pattern=settings.desk.ref_pattern,
            agents=frozenset(a.email for a in settings.agents),
        )
        self.directory = commands.Directory(
            agents=tuple((a.email, a.name, a.teams) for a in settings.agents),
            teams=tuple(t.name for t in settings.teams),
            canned=tuple(self.canned_names()),
        )

    def canned_names(self) -> list[str]:
        prefix = "canned/"
        return [
            n[len(prefix) : -len(".txt.j2")]
            for n in self.mailer.templates.names(prefix)
            if n.endswith(".txt.j2")
        ]

    def ref(self, ticket: Ticket) -> str:
        return self.settings.desk.ref(ticket.id)

    def close(self) -> None:
        """End the parser's worker processes."""
        self.parser.close()


# --------------------------------------------------------------------------- lookups


class Threads:
    """``routing.Threads`` on a session: indexed lookups by Message-ID and number."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def by_message_ids(self, message_ids: Sequence[str]) -> TicketView | None:
        ids = [m for m in message_ids if m][:50]
        if not ids:
            return None
        ticket_id = self.session.scalar(
            select(Message.ticket_id).where(Message.message_id.in_(ids)).limit(1)
        )
        if ticket_id is None:
            ticket_id = self.session.scalar(
                select(Outbox.ticket_id)
                .where(Outbox.message_id.in_(ids), Outbox.ticket_id.is_not(None))
                .limit(1)
            )
        return self.by_number(ticket_id) if ticket_id is not None else None

    def by_number(self, number: int) -> TicketView | None:
        ticket = self.session.get(Ticket, number)
        if ticket is None:
            return None
        return TicketView(
            id=ticket.id,
            requester=ticket.requester,
            participants=frozenset(p.address for p in ticket.participants),
            status=ticket.status,
        )


# --------------------------------------------------------------------------- helpers


def event(
    session: Session, ticket: Ticket, kind: str, actor: str, at: datetime, **detail: Any
) -> None:
    if ticket.id is None:
        session.flush()  # the ticket's number first
    insert_row(
        session,
        Event,
        {
            "ticket_id": ticket.id,
            "kind": kind,
            "actor": actor,
            "at": at,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else "",
        },
    )


def add_message(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound | None,
    stored: StoredMail | None,
    *,
    sender: str,
    text: str,
    at: datetime,
    internal: bool = False,
    unverified: bool = False,
    automatic: str | None = None,
    message_id: str | None = None,
) -> Message:
    """A message on the ticket's thread, with its attachments kept in the blob store."""
    message = Message(
        ticket=ticket,
        message_id=message_id
        if message_id is not None
        else (inbound.message_id if inbound else None),
        sender=sender,
        internal=internal,
        unverified=unverified,
        automatic=automatic,
        subject=inbound.subject if inbound else "",
        text=text,
        raw_path=stored.raw_path if stored else None,
        sha256=stored.sha256 if stored else None,
        defects="\n".join(inbound.defects) if inbound else "",
        created_at=at,
    )
    session.add(message)
    for part in inbound.attachments if inbound else ():
        path = None if part.dropped else desk.store.put_blob(part.payload, part.sha256)
        message.attachments.append(
            Attachment(
                filename=part.filename,
                content_type=part.content_type,
                size=part.size,
                sha256=part.sha256,
                path=path,
                inline=part.inline,
                dropped=part.dropped,
            )
        )
    ticket.updated_at = at
    return message


def utc_text(moment: datetime) -> str:
    """A moment as agents read it in receipts and notices: ``2026-11-26 09:00 UTC``."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def set_status(ticket: Ticket, status: Status, at: datetime) -> None:
    if ticket.status != status:
        ticket.status = status
        ticket.status_since = at
    if status is Status.CLOSED:
        ticket.closed_at = at
    elif ticket.closed_at is not None and status is not Status.CLOSED:
        ticket.closed_at = None


THREAD_IDS = 10  # the last Message-IDs of a thread a mail names in References


def thread_ids(ticket: Ticket) -> tuple[str, ...]:
    """Message-IDs of the customer-visible thread, oldest first (for References): the last
    ``THREAD_IDS``, read as such. Loading the ticket's messages, text and all, made every mail
    on a ticket cost the daemon its whole history, which a customer can grow at will."""
    session = object_session(ticket)
    if session is None or ticket.id is None:  # a ticket made up for a sample: all in memory
        ids = [m.message_id for m in ticket.messages if m.message_id and not m.internal]
        return tuple(ids[-THREAD_IDS:])
    found = session.scalars(_THREAD_IDS, {"ticket": ticket.id, "up_to": THREAD_IDS})
    return tuple(reversed([message_id for message_id in found if message_id]))


def last_customer_message_id(ticket: Ticket) -> str | None:
    session = object_session(ticket)
    if session is None or ticket.id is None:
        for message in reversed(ticket.messages):
            if message.sender == ticket.requester and message.message_id:
                return message.message_id
        return None
    return session.scalar(_LAST_FROM, {"ticket": ticket.id, "sender": ticket.requester})


# Built once, with bound parameters; the newest first, as many as needed (index on ticket_id).
_THREAD_IDS = (
    select(Message.message_id)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.message_id.is_not(None),
        Message.message_id != "",
        Message.internal.is_(False),
    )
    .order_by(Message.id.desc())
    .limit(bindparam("up_to"))
)
_LAST_FROM = (
    select(Message.message_id)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.sender == bindparam("sender"),
        Message.message_id.is_not(None),
        Message.message_id != "",
    )
    .order_by(Message.id.desc())
    .limit(1)
)


def ticket_context(desk: Desk, ticket: Ticket, *, to_agent: bool = False) -> dict[str, Any]:
    """What every template sees of ``ticket``. Customers see their subject as they wrote it;
    in mail to agents a ``#word`` in it is neutralised (``commands.defang``), so it cannot
    become a command when an agent replies."""
    return {
        "ticket": {
            "ref": desk.ref(ticket),
            "number": ticket.id,
            "subject": commands.defang(ticket.subject) if to_agent else ticket.subject,
            "status": ticket.status,
            "priority": ticket.priority,
            "team": ticket.team,
            "assignee": ticket.assignee,
            "requester": ticket.requester,
            "tags": sorted(t.tag for t in ticket.tags),
        }
    }


# What each mail to a customer is called in what agents read (receipts, bounce notices).
CUSTOMER_MAILS = {
    "ack": "acknowledgment",
    "reply": "reply",
    "closed": "closing mail",
    "escalated": "escalation notice",
    "reminder": "reminder",
    "auto_closed": "auto-close notice",
}


def customer_mail(
    desk: Desk, ticket: Ticket, kind: str, template: str, *, words: bool = False, **context: Any
) -> Mail:
    """A mail to the ticket's requester. ``words``: it carries what an agent wrote or chose (a
    reply, a resolution, canned text), so it is a person's mail, never held by loop protection
    or the hourly cap and without ``Auto-Submitted``. Without, it is made wholly from templates
    (acknowledgment, reminder, the notices of closing and escalation): automatic."""
    # a requester who is one of the agents could answer it with commands: not their subject
    to_agent = desk.settings.agent(ticket.requester) is not None
    return Mail(
        kind=kind,
        template=template,
        to=ticket.requester,
        ticket=ticket,
        context={**ticket_context(desk, ticket, to_agent=to_agent), **context},
        automatic=not words,
        auto_submitted="auto-replied" if kind == "ack" else "auto-generated",
        in_reply_to=last_customer_message_id(ticket),
        references=thread_ids(ticket),
    )


NOTICE_TEXT_CHARS = 20_000  # of a message's text, an agent notice quotes at most this much


def notice_text(ticket: Ticket, text: str) -> str:
    """``text`` as an agent notice quotes it: its first ``NOTICE_TEXT_CHARS`` characters, then a
    line saying how much more there is and how to read it (the ticket keeps it all)."""
    if len(text) <= NOTICE_TEXT_CHARS:
        return text
    rest = len(text) - NOTICE_TEXT_CHARS
    return (
        text[:NOTICE_TEXT_CHARS]
        + f"\n\n[... {rest:,} more characters not shown here: read the whole message with"
        + f" `maildesk tickets show {ticket.id}`]"
    )


def agent_mail(
    desk: Desk,
    ticket: Ticket,
    agent: AgentSettings,
    kind: str,
    template: str,
    now: datetime,
    **context: Any,
) -> Mail:
    """A notice to an agent; its Reply-To carries the agent's token for this ticket. A text it
    quotes (a customer's message, an escalation's summary) is cut by ``notice_text``."""
    for key in ("text", "summary"):
        if isinstance(context.get(key), str):
            context[key] = notice_text(ticket, context[key])
    expires = now + timedelta(days=desk.settings.security.token_days)
    token = marks.make_token(desk.settings.desk.secret, agent.email, ticket.id, expires)
    return Mail(
        kind=kind,
        template=template,
        to=agent.email,
        ticket=ticket,
        context={
            **ticket_context(desk, ticket, to_agent=True),
            "agent": {"email": agent.email, "name": agent.name},
            "help": commands.HELP,
            **context,
        },
        automatic=True,
        to_agent=True,
        reply_to=marks.reply_address(desk.settings.desk.address, token),
        references=thread_ids(ticket),
    )


NO_ADDRESS = (
    "this ticket has no usable customer address (its first mail had none in From:, Sender: "
    "or Reply-To:)"
)


def send(
    session: Session, desk: Desk, mails: Iterable[Mail], now: datetime
) -> list[tuple[Mail, str]]:
    """Enqueue ``mails``; returns the customers' mails held back, with why (the hourly cap,
    an address that bounced...). Mail to the customer of a ticket without a usable address is
    not written at all, and mail the SMTP server is known not to take is written as failed; the
    ticket's timeline records either, with the reason."""
    held = []
    for mail in mails:
        ticket = mail.ticket
        if mail.to_agent or ticket is None:
            desk.mailer.enqueue(session, mail, now)
        elif not mail.to:
            event(session, ticket, "not_mailed", "", now, mail=mail.kind, reason=NO_ADDRESS)
        else:
            undeliverable = desk.mailer.undeliverable(session, mail.to)
            queued = desk.mailer.enqueue(session, mail, now)
            if undeliverable:
                detail = {"mail": mail.kind, "recipient": mail.to, "error": undeliverable}
                event(session, ticket, "mail_failed", "", now, **detail)
            elif queued.held:
                held.append((mail, queued.held))
    return held


def not_mailed(session: Session, desk: Desk, ticket: Ticket, mails: Sequence[Mail]) -> str | None:
    """Why the customer was not mailed by the mail an agent's message causes (None: they were,
    or nothing was for them): the ticket has no usable address, or the SMTP server is known
    not to take mail to it. Said in the agent's receipt."""
    if not ticket.requester:
        return NO_ADDRESS
    if any(not mail.to_agent for mail in mails):
        return desk.mailer.undeliverable(session, ticket.requester)
    return None


def admin_alert(desk: Desk, subject: str, text: str) -> Mail | None:
    """A mail to ``[desk] admin_address``; None when there is none."""
    admin = desk.settings.desk.admin_address
    if not admin:
        return None
    return Mail(
        kind="alert",
        template="admin_alert",
        to=admin,
        context={"subject": subject, "text": text},
        to_agent=True,
    )


def notify_team(
    desk: Desk, ticket: Ticket, kind: str, template: str, now: datetime, **ctx: Any
) -> list[Mail]:
    return [
        agent_mail(desk, ticket, agent, kind, template, now, **ctx)
        for agent in desk.settings.team_agents(ticket.team)
    ]


def notify_owner(
    desk: Desk, ticket: Ticket, kind: str, template: str, now: datetime, **ctx: Any
) -> list[Mail]:
    """The assignee, else every agent of the ticket's team."""
    assignee = desk.settings.agent(ticket.assignee)
    if assignee is not None:
        return [agent_mail(desk, ticket, assignee, kind, template, now, **ctx)]
    return notify_team(desk, ticket, kind, template, now, **ctx)


# The Cc of a new ticket's first mail kept as its participants (who may follow up by ref): a
# mail to a crowd is not a conversation with it, and each participant is read again for every
# mail that names the ticket (a header block of 256 KB holds 18,000 addresses).
MAX_PARTICIPANTS = 50


def attachment_notes(inbound: Inbound) -> list[dict[str, Any]]:
    return [{"filename": a.filename, "size": a.size} for a in inbound.attachments if a.dropped]


# --------------------------------------------------------------------------- rules


def open_ticket(
    session: Session,
    desk: Desk,
    inbound: Inbound,
    stored: StoredMail,
    *,
    team: str,
    mailbox: str,
    now: datetime,
    acknowledge: bool = True,
    linked_to: Ticket | None = None,
) -> Ticket:
    """A new ticket from a customer's mail: acknowledgment to them, notice to the team."""
    requester = inbound.requester or ""
    if marks.is_desk_address(requester, desk.settings.desk.address):
        requester = ""  # the desk is never its own customer
    ticket = Ticket(
        subject=inbound.subject or "(no subject)",
        requester=requester,
        status=Status.OPEN,
        priority="medium",
        team=team,
        mailbox=mailbox,
        created_at=now,
        updated_at=now,
        status_since=now,
        linked_to=linked_to.id if linked_to is not None else None,
        # a new ticket's collections are known to be empty: no lazy loads for them
        tags=[],
        participants=[],
        messages=[],
        events=[],
    )
    session.add(ticket)
    session.flush()
    agents = desk.identity.agents
    for address in inbound.cc:
        if len(ticket.participants) >= MAX_PARTICIPANTS:
            break
        if address not in agents and address != desk.settings.desk.address and address != requester:
            ticket.participants.append(Participant(address=address))
    add_message(
        session, desk, ticket, inbound, stored, sender=requester, text=inbound.text.strip(), at=now
    )
    detail: dict[str, Any] = {"mailbox": mailbox}
    if linked_to is not None:
        detail["linked_to"] = desk.ref(linked_to)
    if not requester:
        detail["warning"] = (
            "no usable address in From:, Sender: or Reply-To:; nobody outside is mailed"
        )
    event(session, ticket, "created", requester, now, **detail)
    heard_from(session, ticket, requester, now)
    mails = notify_team(
        desk, ticket, "notice", "agent_new", now, text=inbound.text.strip(), sender=requester
    )
    if acknowledge and requester:
        mails += acknowledgment(session, desk, ticket, inbound, now)
    track_sla(desk, ticket)
    send(session, desk, mails, now)
    log.info(
        "new ticket %s from %s <%s>",
        desk.ref(ticket),
        requester,
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return ticket


HOUR = timedelta(hours=1)
# the detail of an "acknowledged" event for an address the desk had never heard from
FIRST_CONTACT = json.dumps({"first_contact": True}, ensure_ascii=False, sort_keys=True)


def acknowledgment(
    session: Session, desk: Desk, ticket: Ticket, inbound: Inbound, now: datetime
) -> list[Mail]:
    """The acknowledgment of a new ticket, unless its requester is a first contact and the
    desk has acknowledged ``[limits] new_sender_acks_per_hour`` first contacts in the last
    hour (forged senders must not turn the desk into a mailer of their subject lines)."""
    first = first_contact(session, ticket)
    if first:
        limit = desk.settings.limits.new_sender_acks_per_hour
        recent = recent_events(session, "acknowledged", now, limit, FIRST_CONTACT)
        if recent >= limit:
            skip_acknowledgment(session, desk, ticket, recent, now)
            return []
    event(session, ticket, "acknowledged", "", now, **({"first_contact": True} if first else {}))
    ack = customer_mail(
        desk,
        ticket,
        "ack",
        "ack",
        dropped=attachment_notes(inbound),
        max_attachment_bytes=desk.settings.limits.max_attachment_bytes,
    )
    return [ack]


def first_contact(session: Session, ticket: Ticket) -> bool:
    """Whether the desk had never heard from the ticket's requester: the address never
    answered mail the desk sent it (``Contact``). Mail that merely came From the address
    does not count: a forger writes any From:, and would make each victim known with a
    second forged mail."""
    params = {"address": ticket.requester}
    return session.connection().execute(_KNOWN, params).first() is None


def answered_us(session: Session, inbound: Inbound, now: datetime) -> None:
    """Remember the sender as a contact when the mail names, in In-Reply-To or References,
    mail the desk sent to that very address: only someone who received it knows its
    Message-ID."""
    sender = inbound.sender
    ids = list(dict.fromkeys([*inbound.in_reply_to, *inbound.references]))[:50]
    if not sender or not ids:
        return
    answered = session.connection().execute(_SENT_TO, {"address": sender, "ids": ids}).first()
    if answered is not None:
        insert_row(session, Contact, {"address": sender, "since": now}, once=True)


def recent_events(session: Session, kind: str, now: datetime, up_to: int, detail: str = "") -> int:
    """How many ``kind`` events (with exactly ``detail``) the last hour holds on any ticket,
    counted up to ``up_to``: the answer needed, read from that many index entries at most,
    however busy the hour was."""
    params = {"kind": kind, "since": now - HOUR, "detail": detail, "up_to": up_to}
    statement = _RECENT_WITH_DETAIL if detail else _RECENT
    return session.connection().execute(statement, params).scalar() or 0


# Built once, with bound parameters: composing a statement costs more than running it.
_KNOWN = select(Contact.address).where(Contact.address == bindparam("address"))
_SENT_TO = (
    select(Outbox.id)
    .where(
        Outbox.message_id.in_(bindparam("ids", expanding=True)),
        Outbox.recipient == bindparam("address"),
        Outbox.status == OutboxStatus.SENT,
    )
    .limit(1)
)


def _recent(*conditions: Any) -> Any:
    rows = select(Event.id).where(
        Event.kind == bindparam("kind"), Event.at > bindparam("since"), *conditions
    )
    return select(func.count()).select_from(rows.limit(bindparam("up_to")).subquery())


_RECENT = _recent()
_RECENT_WITH_DETAIL = _recent(Event.detail == bindparam("detail"))


def skip_acknowledgment(
    session: Session, desk: Desk, ticket: Ticket, recent: int, now: datetime
) -> None:
    """Record the acknowledgment held back; the first of an hour alerts the admin."""
    limit = desk.settings.limits.new_sender_acks_per_hour
    reason = (
        f"{recent} acknowledgments to first-contact senders in the last hour "
        f"([limits] new_sender_acks_per_hour = {limit})"
    )  # ``recent`` is the limit itself: counting stops there
    first_this_hour = recent_events(session, "acknowledgment_skipped", now, 1) == 0
    event(session, ticket, "acknowledgment_skipped", "", now, reason=reason)
    log.warning(
        "%s: no acknowledgment to %s: %s",
        desk.ref(ticket),
        ticket.requester,
        reason,
        extra={"ticket": desk.ref(ticket)},
    )
    if not first_this_hour:
        return
    alert = admin_alert(
        desk,
        "acknowledgments to new senders held back",
        f"{reason}.\n\nNew tickets are still made, and their agents told, but tickets from "
        "addresses never heard from before get no acknowledgment until fewer than "
        f"{limit} went out in the last hour. Each one held back is recorded on its ticket "
        f"(event acknowledgment_skipped), starting with {desk.ref(ticket)}.\n\nMany new "
        "senders at once often means forged senders: someone using the desk to mail others. "
        "This alert comes at most once an hour.",
    )
    if alert is not None:
        desk.mailer.enqueue(session, alert, now)


# Built once: the tickets of one requester still marked as bounced (index on requester).
_MARKED = select(Ticket).where(
    Ticket.requester == bindparam("requester"), Ticket.requester_bounced_at.is_not(None)
)


def heard_from(session: Session, ticket: Ticket, sender: str, now: datetime) -> None:
    """The requester wrote from their address, so it works again: no ticket of theirs stays
    marked as bounced (``requester_bounced``). Automatic mail to the address stays suppressed
    for its days: that mail came from an address does not make mail to it arrive."""
    if not sender or sender != ticket.requester:
        return
    if ticket.requester_bounced_at is None:
        # a mark is only ever set with a suppression of the address: without one, none to clear
        with session.no_autoflush:
            if session.get(Suppression, sender.lower()) is None:
                return
    for marked in session.scalars(_MARKED, {"requester": sender}):
        marked.requester_bounced_at = None
        event(session, marked, "bounce_cleared", sender, now, reason="the customer wrote again")


def automatic_followup(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    reason: str,
    now: datetime,
) -> None:
    """Automatic mail that threads (an out-of-office reply...): kept, nothing else happens."""
    add_message(
        session,
        desk,
        ticket,
        inbound,
        stored,
        sender=inbound.sender or inbound.requester or "",
        text=inbound.reply_text.strip(),
        at=now,
        automatic=reason,
    )


def customer_reply(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    *,
    mailbox: str,
    now: datetime,
) -> Ticket:
    """A reply from the requester, a participant or anyone holding the thread's Message-IDs."""
    sender = inbound.sender or inbound.requester or ""  # who wrote, as far as the mail says
    answered_us(session, inbound, now)
    text = inbound.reply_text.strip()
    heard_from(session, ticket, sender, now)
    if ticket.status == Status.CLOSED:
        rating = RATING.match(text)
        if rating and sender and sender == ticket.requester:
            add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
            ticket.rating = int(rating.group(1))
            ticket.rating_comment = rating.group(2).strip() or None
            event(
                session,
                ticket,
                "rating",
                sender,
                now,
                rating=ticket.rating,
                comment=ticket.rating_comment,
            )
            return ticket
        closed_at = ticket.closed_at or ticket.status_since
        if now - closed_at > timedelta(days=desk.settings.lifecycle.reopen_days):
            return open_ticket(
                session,
                desk,
                inbound,
                stored,
                team=ticket.team,
                mailbox=mailbox,
                now=now,
                linked_to=ticket,
            )
        add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
        set_status(ticket, Status.OPEN, now)
        event(session, ticket, "reopened", sender, now)
        track_sla(desk, ticket)
        send(
            session,
            desk,
            notify_owner(desk, ticket, "notice", "agent_reopened", now, text=text, sender=sender),
            now,
        )
        return ticket
    add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
    if ticket.status == Status.PENDING:
        set_status(ticket, Status.OPEN, now)
        event(session, ticket, "customer_replied", sender, now, status="open")
        track_sla(desk, ticket)
    send(
        session,
        desk,
        notify_owner(
            desk, ticket, "notice", "agent_customer_replied", now, text=text, sender=sender
        ),
        now,
    )
    return ticket


def escalate(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    team: str,
    *,
    actor: str,
    by: str,
    summary: str,
    now: datetime,
    logged_summary: str | None = None,
) -> list[Mail]:
    """Hand the ticket to ``team``: status escalated, that team told, the customer told.

    An assignee outside the new team is unassigned. ``summary`` is for the team only (the
    customer's notice never shows it); ``logged_summary`` is what the event keeps (default:
    the summary). Used by ``#escalate`` and by a missed SLA target with ``escalate_to``.
    """
    ticket.team = team
    set_status(ticket, Status.ESCALATED, now)
    owner = desk.settings.agent(ticket.assignee)
    if ticket.assignee and (owner is None or team not in owner.teams):
        ticket.assignee = None
    logged = summary if logged_summary is None else logged_summary
    event(session, ticket, "escalated", actor, now, team=team, summary=logged)
    return [
        *notify_team(desk, ticket, "notice", "agent_escalated", now, summary=summary, by=by),
        customer_mail(desk, ticket, "escalated", "escalated"),
    ]


def track_sla(desk: Desk, ticket: Ticket) -> None:
    """Keep the ticket's next SLA due time (``due_at``) current after a rule changed it."""
    sla.refresh_due(ticket, desk.settings)


# --------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    applied: tuple[str, ...]
    refused: tuple[str, ...]
    verified: bool


def agent_message(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    now: datetime,
) -> AgentOutcome:
    """An agent's mail on a ticket: authenticate, then apply its commands and reply, or refuse."""
    text = inbound.reply_text.strip()
    parsed = commands.parse(
        inbound.subject, text, desk.settings.desk.ref_pattern, desk.directory.teams
    )
    proof = prove(desk, ticket, inbound, agent, now)
    if not proof.ok:
        return refuse_unverified(session, desk, ticket, inbound, stored, agent, proof, parsed, now)
    validation = commands.validate(parsed, desk.directory, agent.email)
    if not validation.ok:
        add_message(
            session,
            desk,
            ticket,
            inbound,
            stored,
            sender=agent.email,
            text=parsed.text,
            at=now,
            internal=True,
        )
        event(
            session, ticket, "command_refused", agent.email, now, refused=list(validation.refusals)
        )
        refused = Receipt(refused=validation.refusals, kept_as_note=bool(parsed.text))
        send(session, desk, [receipt_mail(desk, ticket, agent, now, refused)], now)
        return AgentOutcome((), validation.refusals, True)
    applied, mails = apply_actions(
        session, desk, ticket, inbound, stored, agent, validation.actions, parsed.text, now
    )
    unmailed = not_mailed(session, desk, ticket, mails)
    bounced = None if unmailed else bounced_before(session, ticket, mails, now)
    held = send(session, desk, mails, now)
    receipt = Receipt(
        applied=tuple(applied),
        not_mailed=unmailed,
        held=tuple(held_line(mail, why) for mail, why in held),
        bounced=bounced,
    )
    if parsed.commands or unmailed or held or bounced:
        send(session, desk, [receipt_mail(desk, ticket, agent, now, receipt)], now)
    return AgentOutcome(tuple(applied), (), True)


def bounced_before(
    session: Session, ticket: Ticket, mails: Sequence[Mail], now: datetime
) -> str | None:
    """For the receipt: the agent's words went to an address whose automatic mail is
    suppressed, because it bounced permanently. They are sent all the same; the agent is told."""
    if all(mail.automatic or mail.to_agent for mail in mails):
        return None
    bounce = guard.bounced(session, ticket.requester, now)
    if bounce is None:
        return None
    on = f" on {utc_text(bounce.at)}" if bounce.at else ""
    return f"{ticket.requester} bounced permanently{on} ({bounce.status}); sent anyway"


def held_line(mail: Mail, why: str) -> str:
    """For the receipt: a mail to the customer made only from a template, held back."""
    name = CUSTOMER_MAILS.get(mail.kind, mail.kind)
    return (
        f"The {name} to {mail.to} was not mailed: {why}. Only mail made wholly from templates "
        "is held back; a mail with words you write always goes out"
    )


def prove(
    desk: Desk, ticket: Ticket, inbound: Inbound, agent: AgentSettings, now: datetime
) -> auth.Proof:
    """Whether this mail provably comes from ``agent``: a reply token or a trusted verdict."""
    if inbound.sender != agent.email:
        return auth.Proof(
            False,
            "",
            "The From: header is ambiguous (it shows more than one address), "
            "so it cannot prove who sent it.",
        )
    settings = desk.settings
    return auth.authenticate(
        secret=settings.desk.secret,
        desk_address=settings.desk.address,
        agent=agent.email,
        ticket_number=ticket.id,
        addresses=[*inbound.to, *inbound.cc, *inbound.delivered_to],
        authentication_results=inbound.authentication_results,
        trusted_authserv_ids=settings.security.trusted_authserv_ids,
        agent_auth=settings.security.agent_auth,
        now=now,
    )


def refuse_unverified(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    proof: auth.Proof,
    parsed: commands.Parsed,
    now: datetime,
) -> AgentOutcome:
    """Nothing applies and nothing reaches the customer: the text becomes an unverified note
    and the agent's registered address (never the inbound From) is told why, at most once an
    hour (``unverified_notice``)."""
    text = inbound.reply_text.strip()
    add_message(
        session,
        desk,
        ticket,
        inbound,
        stored,
        sender=agent.email,
        text=text,
        at=now,
        internal=True,
        unverified=True,
    )
    notice = unverified_notice(session, desk, ticket, agent, proof, parsed, text, now)
    detail = {"notice": "held back"} if notice.held_back else {}
    event(
        session,
        ticket,
        "command_refused",
        agent.email,
        now,
        reason=proof.reason,
        verified=False,
        **detail,
    )
    send(session, desk, [notice], now)
    log.warning(
        "unverified agent mail for %s claiming %s: %s <%s>",
        desk.ref(ticket),
        agent.email,
        proof.reason,
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return AgentOutcome((), (proof.reason,), False)


UNVERIFIED_NOTICE = "unverified"  # the outbox kind of the notice about unverified mail
UNVERIFIED_NOTICE_EVERY = timedelta(hours=1)
HELD_BACK = "held back: one notice about unverified mail an hour"


def unverified_notice(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    agent: AgentSettings,
    proof: auth.Proof,
    parsed: commands.Parsed,
    text: str,
    now: datetime,
) -> Mail:
    """The notice to ``agent`` about an unverified mail in their name.

    Forged mail costs its sender nothing, so the agent hears of it at most once an hour: a
    notice within the hour after the last one sent is written to the outbox held back (counted
    in the database, so the cap holds across daemons), and the next one sent says how many
    came since the last notice and on which tickets."""
    last_sent = session.scalar(_LAST_NOTICE_SENT, {"agent": agent.email})
    since = {"agent": agent.email, "since": last_sent}
    held = session.scalar(_HELD_NOTICES, since) or 0
    numbers = {ticket.id, *session.scalars(_HELD_TICKETS, since)}
    recent = last_sent is not None and last_sent > now - UNVERIFIED_NOTICE_EVERY
    mail = agent_mail(
        desk,
        ticket,
        agent,
        UNVERIFIED_NOTICE,
        "agent_unverified",
        now,
        reason=proof.reason,
        commands=listed_commands(parsed),
        text=text,
        count=held + 1,
        tickets=[desk.settings.desk.ref(number) for number in sorted(numbers)],
    )
    return replace(mail, held_back=HELD_BACK) if recent else mail


def listed_commands(parsed: commands.Parsed) -> list[str]:
    """The commands a notice names: as many as a message may carry, then how many more (a
    forged mail of thousands of command lines would make the notice as long as the mail)."""
    shown = [c.source for c in parsed.commands[: commands.MAX_COMMANDS]]
    more = len(parsed.commands) - len(shown)
    return [*shown, f"and {more:,} more"] if more else shown


# Built once: the outbox rows of the notice to one agent (index on recipient and created_at).
_LAST_NOTICE_SENT = select(func.max(Outbox.created_at)).where(
    Outbox.recipient == bindparam("agent"),
    Outbox.kind == UNVERIFIED_NOTICE,
    Outbox.status != OutboxStatus.SUPPRESSED,
)
_HELD_SINCE = (
    Outbox.recipient == bindparam("agent"),
    Outbox.kind == UNVERIFIED_NOTICE,
    Outbox.status == OutboxStatus.SUPPRESSED,
    Outbox.created_at >= bindparam("since"),
)
_HELD_NOTICES = select(func.count(Outbox.id)).where(*_HELD_SINCE)
_HELD_TICKETS = (
    select(Outbox.ticket_id)
    .where(*_HELD_SINCE, Outbox.ticket_id.is_not(None))
    .distinct()
    .order_by(Outbox.ticket_id)
    .limit(20)
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an agent's receipt reports."""

    applied: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    kept_as_note: bool = False  # the text was kept as an internal note (commands refused)
    not_mailed: str | None = None  # why nobody outside was mailed, when someone should have been
    held: tuple[str, ...] = ()  # mails to the customer held back (``held_line``)
    bounced: str | None = None  # the agent's words went to an address that bounced before


def receipt_mail(
    desk: Desk, ticket: Ticket, agent: AgentSettings, now: datetime, receipt: Receipt
) -> Mail:
    """The one reply to an agent's commands: what was done, what was refused, and the help."""
    return agent_mail(
        desk,
        ticket,
        agent,
        "receipt",
        "agent_receipt",
        now,
        applied=list(receipt.applied),
        refused=list(receipt.refused),
        kept_as_note=receipt.kept_as_note,
        not_mailed=receipt.not_mailed,
        held=list(receipt.held),
        bounced=receipt.bounced,
    )


def apply_actions(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    actions: Sequence[commands.Action],
    text: str,
    now: datetime,
) -> tuple[list[str], list[Mail]]:
    """Carry out validated actions, then the text: a note, a summary, a resolution or a reply."""
    verbs = {a.verb for a in actions}
    applied: list[str] = []
    mails: list[Mail] = []
    actor = agent.email
    canned = [a.value for a in actions if a.verb == "reply" and a.value]
    for action in actions:
        line = commands.describe(action)
        if action.verb == "assign" and action.value != ticket.assignee:
            ticket.assignee = action.value
            event(session, ticket, "assigned", actor, now, assignee=action.value)
            target = desk.settings.agent(action.value)
            if target is not None and target.email != actor:
                mails.append(
                    agent_mail(desk, ticket, target, "notice", "agent_assigned", now, by=agent.name)
                )
        elif action.verb == "priority" and action.value != ticket.priority:
            event(session, ticket, "priority", actor, now, old=ticket.priority, new=action.value)
            ticket.priority = action.value or ticket.priority
        elif action.verb == "tag":
            new = [w for w in action.words if w not in ticket.tag_names]
            for word in new:
                ticket.tags.append(Tag(tag=word))
            if new:
                event(session, ticket, "tagged", actor, now, added=new)
        elif action.verb == "untag":
            gone = [t for t in ticket.tags if t.tag in action.words]
            for tag in gone:
                ticket.tags.remove(tag)
            if gone:
                event(session, ticket, "untagged", actor, now, removed=[t.tag for t in gone])
        elif action.verb == "reopen" and ticket.status == Status.CLOSED:
            set_status(ticket, Status.OPEN, now)
            event(session, ticket, "reopened", actor, now)
        elif action.verb == "escalate":
            mails += escalate(
                session,
                desk,
                ticket,
                action.value or ticket.team,
                actor=actor,
                by=agent.name,
                summary=text,
                logged_summary=text if "note" not in verbs else "",
                now=now,
            )
        applied.append(line)

    if "note" in verbs or ("escalate" in verbs and text):
        if text:
            add_message(
                session,
                desk,
                ticket,
                inbound,
                stored,
                sender=actor,
                text=text,
                at=now,
                internal=True,
            )
            if "note" in verbs:
                event(session, ticket, "note", actor, now)
    elif "close" in verbs:
        _close(session, desk, ticket, inbound, stored, actor, text, canned, now, mails)
    elif text or canned:
        replies = [_canned(session, desk, ticket, name, now) for name in canned]
        body = "\n\n".join([*replies, text]).strip()
        add_message(session, desk, ticket, inbound, stored, sender=actor, text=body, at=now)
        mails.append(
            customer_mail(
                desk, ticket, "reply", "reply", words=True, text=body, agent={"name": agent.name}
            )
        )
        if ticket.first_response_at is None:
            ticket.first_response_at = now
        if ticket.status != Status.CLOSED and "escalate" not in verbs:
            set_status(ticket, Status.PENDING, now)
        event(session, ticket, "replied", actor, now)
    if "close" in verbs and ("note" in verbs or "escalate" in verbs):
        _close(session, desk, ticket, None, None, actor, "", canned, now, mails)
    track_sla(desk, ticket)
    return applied, mails


def _close(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound | None,
    stored: StoredMail | None,
    actor: str,
    text: str,
    canned: list[str],
    now: datetime,
    mails: list[Mail],
) -> None:
    if ticket.status == Status.CLOSED:
        return
    replies = [_canned(session, desk, ticket, name, now) for name in canned]
    resolution = "\n\n".join([*replies, text]).strip()
    if resolution and inbound is not None:
        add_message(session, desk, ticket, inbound, stored, sender=actor, text=resolution, at=now)
        if ticket.first_response_at is None:
            ticket.first_response_at = now
    set_status(ticket, Status.CLOSED, now)
    event(session, ticket, "closed", actor, now, resolution=resolution)
    # a written (or chosen) resolution is the agent's words; a bare "#close" is a template
    closing = customer_mail(
        desk, ticket, "closed", "closed", words=bool(resolution), resolution=resolution
    )
    mails.append(closing)


def canned_context(desk: Desk, ticket: Ticket) -> dict[str, Any]:
    """What a canned reply's template sees."""
    return {
        **ticket_context(desk, ticket),
        "customer": {"email": ticket.requester},
        "desk": {"name": desk.settings.desk.name, "address": desk.settings.desk.address},
    }


def _canned(session: Session, desk: Desk, ticket: Ticket, name: str, now: datetime) -> str:
    what = f"canned reply {name} on {desk.ref(ticket)}"
    context = canned_context(desk, ticket)
    rendered = desk.mailer.render(session, f"canned/{name}", context, now, what)
    return (rendered.text or "").strip()
