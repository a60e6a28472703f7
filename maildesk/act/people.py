"""The writers of who is on a ticket: participants added and removed, the requester changed.

Called by ``act.apply`` for the steps ``desk.people`` and ``desk.verbs`` plan
(``AddParticipants``, ``RemoveParticipants``, ``SetRequester``), inside the message's
transaction. A participant row is one address on the ticket's Cc besides the requester, with
when and by whom it was added.
"""

from __future__ import annotations

from datetime import datetime

from maildesk.act.means import Desk
from maildesk.desk import people, plans
from maildesk.models import Participant, Ticket


def outsiders(desk: Desk) -> people.Outsiders:
    """Who can never be on a ticket's Cc: the desk's own addresses and its agents."""
    return people.Outsiders(people.own_addresses(desk.settings), desk.identity.agents)


def copied(desk: Desk, ticket: Ticket) -> tuple[str, ...]:
    """Whom a mail to the requester that carries the ticket's news copies: its participants
    (but anyone who has become an agent or one of the desk's own addresses since)."""
    listed = [p.address for p in ticket.participants]
    return people.cc_of(ticket.requester, listed, outsiders(desk))


def add(ticket: Ticket, step: plans.AddParticipants, now: datetime) -> None:
    present = {p.address for p in ticket.participants}
    for address in step.addresses:
        if address not in present and address != ticket.requester:
            ticket.participants.append(Participant(address=address, added_at=now, added_by=step.by))
            present.add(address)


def remove(ticket: Ticket, step: plans.RemoveParticipants) -> None:
    for row in [p for p in ticket.participants if p.address in step.addresses]:
        ticket.participants.remove(row)


def set_requester(ticket: Ticket, step: plans.SetRequester, now: datetime) -> None:
    """``step.address`` answers the ticket from now on; the requester before stays on its Cc,
    added by whoever made the change. A mark that the old address bounced is not the new
    one's."""
    old = ticket.requester
    if step.address == old:
        return
    remove(ticket, plans.RemoveParticipants((step.address,)))
    ticket.requester = step.address
    ticket.requester_bounced_at = None
    if old:
        add(ticket, plans.AddParticipants((old,), step.by), now)
