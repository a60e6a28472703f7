"""The writers of ``#merge`` and ``#link``, the merged ticket mail follows, and the requester's
other open tickets a new ticket's notice names.

Called by ``act.apply`` for the ``Merge`` and ``Link`` steps ``desk.verbs`` plans, inside the
message's transaction; ``followed`` is how ``tickets.Lookups`` finds the ticket a merged one
went into, so mail to a merged ref (reply token, ref in the subject, In-Reply-To of its old
mail) joins the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from maildesk.act import notices
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event, set_status
from maildesk.desk import people, plans, sla
from maildesk.models import SHELVED, DatabaseError, Link, Message, Participant, Status, Tag, Ticket

MERGE_HOPS = 10  # a chain of merges followed this far (each merge refuses a merged target)
OTHERS_LISTED = 10  # of the requester's other open tickets, a notice names at most this many


def followed(session: Session, ticket: Ticket | None) -> Ticket | None:
    """The ticket mail to ``ticket`` goes to: the one it was merged into, if it was."""
    for _ in range(MERGE_HOPS):
        if ticket is None or ticket.merged_into is None:
            return ticket
        ticket = session.get(Ticket, ticket.merged_into)
    return ticket


def merged_into(session: Session, ticket: Ticket, numbers: Sequence[int]) -> tuple[int, ...]:
    """Of the tickets ``numbers`` (the first few), those merged into ``ticket``, directly or
    along a chain of merges; never an unrelated one."""
    found: list[int] = []
    for number in list(dict.fromkeys(numbers))[:MERGE_HOPS]:
        old = session.get(Ticket, number) if number != ticket.id else None
        if old is None or old.merged_into is None:
            continue
        reached = followed(session, old)
        if reached is not None and reached.id == ticket.id:
            found.append(number)
    return tuple(found)


def merge(
    session: Session, desk: Desk, ticket: Ticket, step: plans.Merge, now: datetime
) -> list[Mail]:
    """Move the ticket's messages (their files with them), people and tags into ``step.into``;
    the ticket becomes ``merged`` (it keeps its events, its history), its customer is told once
    that the target's ref is the one, and the target's SLA due time is taken again."""
    _lock_both(session, ticket.id, step.into)
    target = session.get(Ticket, step.into)
    assert target is not None, f"no ticket {step.into}"
    told = notices.customer_mail(
        desk, ticket, "merged", "merged", into={"ref": desk.ref(target), "subject": target.subject}
    )
    session.flush()
    session.execute(
        update(Message).where(Message.ticket_id == ticket.id).values(ticket_id=target.id)
    )
    session.expire(ticket, ["messages"])
    _move_people(ticket, target, step.by, now)
    have = {tag.tag for tag in target.tags}
    target.tags.extend(Tag(tag=t.tag) for t in ticket.tags if t.tag not in have)
    ticket.merged_into = target.id
    set_status(ticket, Status.MERGED, now)
    target.updated_at = now
    sla.refresh_due(target, desk.settings)
    event(session, ticket, "merged", step.by, now, into=desk.ref(target))
    event(session, target, "merged_in", step.by, now, **{"from": desk.ref(ticket)})
    return [told] if ticket.requester else []


def _lock_both(session: Session, one: int, other: int) -> None:
    """Both tickets' rows locked, in id order, and neither merged meanwhile: two daemons each
    merging one of the two into the other would otherwise leave both merged. The one that waits
    finds the other's merge committed and fails as a database error: the message is taken
    again, and its ``#merge`` refused then, with the reason."""
    rows = session.execute(
        select(Ticket.id, Ticket.merged_into)
        .where(Ticket.id.in_(sorted((one, other))))
        .order_by(Ticket.id)
        .with_for_update()
    ).all()
    if any(merged is not None for _, merged in rows):
        raise DatabaseError(f"ticket {one} or {other} was merged meanwhile")


def _move_people(ticket: Ticket, target: Ticket, by: str, now: datetime) -> None:
    """The merged ticket's requester and Cc join the target's Cc (up to its limit)."""
    present = {p.address for p in target.participants} | {target.requester}
    moving = [ticket.requester, *(p.address for p in ticket.participants)]
    for address in moving:
        if len(present) > people.MAX_PARTICIPANTS:
            break
        if address and address not in present:
            target.participants.append(Participant(address=address, added_at=now, added_by=by))
            present.add(address)
    ticket.participants.clear()


def link(session: Session, desk: Desk, ticket: Ticket, step: plans.Link, now: datetime) -> None:
    """A link both ways, once."""
    if session.get(Link, (ticket.id, step.other)) is not None:
        return
    for one, other in ((ticket.id, step.other), (step.other, ticket.id)):
        if session.get(Link, (one, other)) is None:
            session.add(Link(ticket_id=one, other_id=other, linked_at=now, linked_by=step.by))
    ref = desk.settings.desk.ref
    event(session, ticket, "linked", step.by, now, other=ref(step.other))
    other_ticket = session.get(Ticket, step.other)
    if other_ticket is not None:
        event(session, other_ticket, "linked", step.by, now, other=ref(ticket.id))


def other_open(session: Session, desk: Desk, ticket: Ticket) -> list[dict[str, Any]]:
    """The requester's other tickets not finished (closed, spam, merged), newest first: ref and
    subject of at most ``OTHERS_LISTED`` (index on requester)."""
    if not ticket.requester:
        return []
    # read on the connection, not flushing the new ticket's pending rows only to leave it out
    params = {"requester": ticket.requester, "ticket": ticket.id}
    rows = session.connection().execute(_OTHERS, params)
    return [{"ref": desk.settings.desk.ref(number), "subject": subject} for number, subject in rows]


def listing_others(session: Session, desk: Desk, ticket: Ticket, mails: list[Mail]) -> list[Mail]:
    """A new ticket's notices to agents, naming the requester's other open tickets."""
    if not any(mail.to_agent for mail in mails):
        return mails
    others = {"others": other_open(session, desk, ticket)}
    return [
        replace(mail, context={**mail.context, **others}) if mail.to_agent else mail
        for mail in mails
    ]


_OTHERS = (
    select(Ticket.id, Ticket.subject)
    .where(
        Ticket.requester == bindparam("requester"),
        Ticket.id != bindparam("ticket"),
        Ticket.status.not_in(SHELVED),
    )
    .order_by(Ticket.id.desc())
    .limit(OTHERS_LISTED)
)
