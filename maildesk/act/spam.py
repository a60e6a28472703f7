"""Spam and the block list, written: the screening of each message, the blocked addresses
kept, and what a ticket marked spam missed once an agent says it is not.

``screened`` runs in the message's transaction between ``routing.route`` and ``ingest.handle``:
it reads the MTA's verdict and the block list (``[intake]`` and the ``BlockedSender`` rows)
and lets ``desk.spam`` decide the route. ``block`` and ``missed`` carry out the steps of
``#spam block`` and ``#notspam``; ``listed`` and ``unblock`` serve ``maildesk intake``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from maildesk.act import notices
from maildesk.act import people as act_people
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event
from maildesk.desk import spam
from maildesk.desk.routing import FollowUp, NewTicket, Route
from maildesk.mail.inbound import Inbound
from maildesk.models import BlockedSender, Message, Ticket, insert_row

_BLOCKED = select(BlockedSender.address).where(
    BlockedSender.address.in_(bindparam("addresses", expanding=True))
)
_FIRST_WORDS = (
    select(Message.text)
    .where(Message.ticket_id == bindparam("ticket"), Message.internal.is_(False))
    .order_by(Message.id)
    .limit(1)
)


def screened(session: Session, desk: Desk, route: Route, inbound: Inbound) -> Route:
    """``route`` once the block list and the MTA's spam verdict are applied (``desk.spam``)."""
    if not isinstance(route, NewTicket | FollowUp):
        return route
    intake = desk.settings.intake
    verdict = None
    if intake.spam_headers:
        verdict = spam.verdict(inbound.trace, frozenset(intake.trusted_spam_hosts))
    return spam.screen(route, blocked(session, desk, route, inbound), verdict)


def blocked(session: Session, desk: Desk, route: Route, inbound: Inbound) -> str | None:
    """Why the message's sender is blocked (None: they are not). The addresses the mail
    names as its sender are looked up, but never an agent's or the desk's own."""
    named = [inbound.sender, inbound.claimed_sender, inbound.requester]
    if isinstance(route, FollowUp):
        named.append(route.sender)
    outsiders = act_people.outsiders(desk)
    addresses = [a for a in dict.fromkeys(named) if a and not outsiders.excludes(a)]
    if not addresses:
        return None
    found = spam.blocked(addresses, desk.settings.intake.blocked_senders)
    if found is not None:
        return found
    # read on the connection: nothing pending in the transaction is about the block list
    stored = session.connection().execute(_BLOCKED, {"addresses": addresses}).scalar()
    return f"{stored} was blocked by an agent (#spam block)" if stored else None


def block(session: Session, address: str, by: str, ticket: Ticket, now: datetime) -> None:
    """Keep ``address`` on the block list (once)."""
    values = {"address": address, "blocked_at": now, "blocked_by": by, "ticket_id": ticket.id}
    insert_row(session, BlockedSender, values, once=True)


def missed(session: Session, desk: Desk, ticket: Ticket, now: datetime) -> list[Mail]:
    """What a ticket held as spam did not get: the customer's acknowledgment and the notice
    to its team, quoting its first message."""
    event(session, ticket, "acknowledged", "", now)
    ack = notices.customer_mail(
        desk,
        ticket,
        "ack",
        "ack",
        dropped=[],
        max_attachment_bytes=desk.settings.limits.max_attachment_bytes,
    )
    text = session.scalar(_FIRST_WORDS, {"ticket": ticket.id}) or ""
    context: dict[str, Any] = {"text": text, "sender": ticket.requester, "files": []}
    return [ack, *notices.notify_team(desk, ticket, "notice", "agent_new", now, **context)]


@dataclass(frozen=True, slots=True)
class Blocked:
    """One entry of the block list, as ``maildesk intake blocked`` shows it."""

    address: str  # an address, or a glob of ``[intake] blocked_senders``
    source: str  # "config" or "agent"
    blocked_by: str = ""
    blocked_at: datetime | None = None
    ticket_id: int | None = None


def listed(session: Session, patterns: Iterable[str]) -> list[Blocked]:
    """The config's ``patterns``, then the addresses agents blocked, oldest first."""
    found = [Blocked(p, "config") for p in patterns]
    rows = session.scalars(select(BlockedSender).order_by(BlockedSender.blocked_at))
    found += [Blocked(r.address, "agent", r.blocked_by, r.blocked_at, r.ticket_id) for r in rows]
    return found


def unblock(session: Session, address: str) -> bool:
    """Take an address agents blocked off the list; False: it was not on it."""
    row = session.get(BlockedSender, address.strip()) or session.get(
        BlockedSender, address.strip().lower()
    )
    if row is None:
        return False
    session.delete(row)
    return True
