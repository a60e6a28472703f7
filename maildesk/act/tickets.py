"""The writers of a ticket's life outside the agents' commands: open, follow up, acknowledge.

Reached from ``ingest.handle`` once routing has decided what a message is: a new ticket is
opened (and acknowledged, within the hourly cap for first contacts), a customer's follow-up is
planned by ``desk.customers`` and carried out by ``act.apply``, automatic mail is kept. Also
here: ``Lookups``, routing's ticket lookups (``routing.Threads``) on a session.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session

from maildesk.act import assigning, guard, merging
from maildesk.act import people as act_people
from maildesk.act.apply import Scene, carry_out, keep_message, state_of
from maildesk.act.means import Desk, StoredMail
from maildesk.act.notices import (
    admin_alert,
    attachment_notes,
    customer_mail,
    enqueue,
    made,
)
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event
from maildesk.config import MAX_TICKET_NUMBER
from maildesk.desk import customers, people, sla
from maildesk.desk.customers import Case
from maildesk.desk.plans import Keep
from maildesk.desk.routing import TicketView
from maildesk.desk.rules import Ruling
from maildesk.mail.inbound import Inbound
from maildesk.models import (
    Contact,
    Event,
    Message,
    Outbox,
    OutboxStatus,
    Status,
    Ticket,
    insert_row,
)

log = logging.getLogger("maildesk.tickets")  # the logs name the job, not the module path


# --------------------------------------------------------------------------- lookups


class Lookups:
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
        if not 0 < number <= MAX_TICKET_NUMBER:  # a ref no ticket can have
            return None
        # mail to a merged ticket joins the one it went into
        ticket = merging.followed(self.session, self.session.get(Ticket, number))
        if ticket is None:
            return None
        return TicketView(
            id=ticket.id,
            requester=ticket.requester,
            participants=frozenset(p.address for p in ticket.participants),
            status=ticket.status,
        )


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Opening:
    """Where a new ticket goes: its team and mailbox; whether the customer is acknowledged (not
    when the mail asked for no automatic reply, or a rule says so); the closed ticket it follows
    up, if any; what the config's rules decided."""

    team: str
    mailbox: str
    acknowledge: bool = True
    linked_to: Ticket | None = None
    spam: str | None = None  # the MTA's verdict: status spam, nobody told (``desk.spam``)
    ruling: Ruling | None = None  # what the rules decided (``rules.judge``); None: none applied
    forward: customers.Forwarding | None = None  # an agent forwarded the mail


def blank_ticket(
    session: Session, desk: Desk, requester: str, subject: str, opening: Opening, now: datetime
) -> Ticket:
    """A ticket for ``requester`` in the opening's team and mailbox, open, with nothing on it
    yet: inserted with its SLA due time (not an update after)."""
    linked_to = opening.linked_to
    ticket = Ticket(
        subject=subject or "(no subject)",
        requester=requester,
        status=Status.OPEN,
        priority="medium",
        team=opening.team,
        mailbox=opening.mailbox,
        created_at=now,
        updated_at=now,
        status_since=now,
        sla_breached="",
        linked_to=linked_to.id if linked_to is not None else None,
        # a new ticket's collections are known to be empty: no lazy loads for them
        tags=[],
        participants=[],
        messages=[],
        events=[],
    )
    sla.refresh_due(ticket, desk.settings)
    session.add(ticket)
    session.flush()
    return ticket


def open_ticket(
    session: Session,
    desk: Desk,
    inbound: Inbound,
    stored: StoredMail,
    opening: Opening,
    now: datetime,
) -> Ticket:
    """A new ticket from a customer's mail: acknowledgment to them, notice to the team."""
    outsiders = act_people.outsiders(desk)
    # who wrote, as the mail says; the requester is whom the desk answers (Reply-To may say)
    wrote = inbound.requester or ""
    wrote = "" if people.is_own(wrote, outsiders.own) else wrote
    requester = people.requester_of(inbound, outsiders, replies_to_reply_to(desk, opening))
    ticket = blank_ticket(session, desk, requester, inbound.subject, opening, now)
    made(session, ticket)
    scene = Scene(session, desk, ticket, inbound, stored, now)
    first = customers.Written(wrote, inbound.text.strip())
    linked = desk.ref(opening.linked_to) if opening.linked_to is not None else None
    decided, spam, forward = intake(session, desk, opening), opening.spam, opening.forward
    opened = customers.opened(
        first, opening.mailbox, linked, requester, decided, spam=spam, forward=forward
    )
    joined = people.joined(inbound, wrote or requester, state_of(ticket), outsiders)
    mails = carry_out(scene, opened.before_mails(joined))  # its notice names them
    mails = merging.listing_others(session, desk, ticket, mails)
    heard_from(session, ticket, wrote, now)
    if opening.acknowledge and requester:
        mails += acknowledgment(session, desk, ticket, inbound, now)
    sla.refresh_due(ticket, desk.settings)
    enqueue(session, desk, mails, now)
    said = {"message_id": inbound.message_id, "ticket": desk.ref(ticket)}
    log.info(
        "new ticket %s from %s <%s>", desk.ref(ticket), requester, said["message_id"], extra=said
    )
    return ticket


def intake(session: Session, desk: Desk, opening: Opening) -> customers.Intake:
    """The rules' and the assignment's decisions for a new ticket: none for spam (nobody is
    told, nobody assigned); the rules' alone when the agent who forwarded it assigns it."""
    ruling = opening.ruling or Ruling(opening.team)
    if opening.spam is not None:
        return customers.Intake()
    if opening.forward is not None and opening.forward.assignee is not None:
        return customers.Intake(ruling.steps)
    return assigning.intake(session, desk, ruling)


def replies_to_reply_to(desk: Desk, opening: Opening) -> bool:
    """The mailbox's ``reply_to_requester`` (a mailbox not in the config: the default)."""
    for box in desk.settings.mailboxes:
        if box.name == opening.mailbox:
            return box.reply_to_requester
    return True


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
        # the mail, or its copy to a participant (which names the mail's Message-ID)
        or_(
            Outbox.message_id.in_(bindparam("ids", expanding=True)),
            Outbox.copy_of.in_(bindparam("ids", expanding=True)),
        ),
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
    for its days: that mail came from an address does not make mail to it arrive. A
    participant who wrote is no longer marked either."""
    if not sender:
        return
    if sender != ticket.requester:
        _participant_heard_from(session, ticket, sender, now)
        return
    if ticket.requester_bounced_at is None:
        # a mark is only ever set with a suppression of the address: without one, none to clear
        if guard.suppression(session, sender) is None:
            return
    for marked in session.scalars(_MARKED, {"requester": sender}):
        marked.requester_bounced_at = None
        event(session, marked, "bounce_cleared", sender, now, reason="the customer wrote again")


def _participant_heard_from(session: Session, ticket: Ticket, sender: str, now: datetime) -> None:
    """A participant marked as bounced wrote: their address works again, the mark goes."""
    for row in ticket.participants:
        if row.address == sender and row.bounced_at is not None:
            row.bounced_at = None
            event(session, ticket, "bounce_cleared", sender, now, reason="the participant wrote")


def automatic_followup(scene: Scene, reason: str) -> None:
    """Automatic mail that threads (an out-of-office reply...): kept, nothing else happens."""
    inbound = scene.inbound
    assert inbound is not None
    sender = inbound.sender or inbound.requester or ""
    keep_message(scene, Keep(sender, inbound.reply_text.strip(), automatic=reason))


@dataclass(frozen=True, slots=True)
class Answered:
    """What a customer's follow-up became: its case, and the ticket it is on (a new one for
    ``Case.NEW_LINKED``)."""

    case: Case
    ticket: Ticket


def customer_reply(scene: Scene, mailbox: str) -> Answered:
    """A reply from the requester, a participant or anyone holding the thread's Message-IDs:
    planned by ``customers.follow_up``, carried out here."""
    session, desk, ticket, inbound, now = (
        scene.session,
        scene.desk,
        scene.ticket,
        scene.inbound,
        scene.now,
    )
    assert inbound is not None and scene.stored is not None
    sender = inbound.sender or inbound.requester or ""  # who wrote, as far as the mail says
    answered_us(session, inbound, now)
    heard_from(session, ticket, sender, now)
    written = customers.Written(sender, inbound.reply_text.strip())
    reopen_after = timedelta(days=desk.settings.lifecycle.reopen_days)
    followed = customers.follow_up(state_of(ticket), written, reopen_after, now)
    if followed.case is Case.NEW_LINKED:
        opening = Opening(ticket.team, mailbox, linked_to=ticket)
        linked = open_ticket(session, desk, inbound, scene.stored, opening, now)
        return Answered(followed.case, linked)
    outsiders = act_people.outsiders(desk)
    joined = people.joined(inbound, sender, state_of(ticket), outsiders)
    mails = carry_out(scene, followed.plan.before_mails(joined))
    enqueue(session, desk, mails, now)
    return Answered(followed.case, ticket)
