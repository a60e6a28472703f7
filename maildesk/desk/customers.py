"""What a customer's mail on a ticket does: a reply, a rating, a reopening, or a new linked ticket.

Third stage for a follow-up from anyone but an agent: who wrote, what they wrote, the ticket's
state, the reopen window and the moment in; a ``Followed`` value out, naming the case and its
plan (``act.apply`` carries it out; for a new linked ticket the act layer opens it). One small
function per case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from maildesk.desk.assignment import Assigned
from maildesk.desk.plans import (
    Keep,
    Notify,
    Plan,
    Rate,
    Record,
    SetStatus,
    Step,
    TicketState,
    TrackSla,
    Whom,
)
from maildesk.models import Status

RATING = re.compile(
    r"^\s*(?:rating\s*[:=]?\s*)?([1-5])(?:\s*/\s*5)?(?![\d.,])\s*[-:.,!)]*\s*(.*)$", re.I | re.S
)


class Case(Enum):
    REPLY = "reply"  # on an open ticket: kept, a pending ticket opens again, its owner told
    RATING = "rating"  # the requester rates a closed ticket: "4/5 quick and kind"
    REOPEN = "reopen"  # on a ticket closed within the reopen window: it opens again
    NEW_LINKED = "new_linked"  # on a ticket closed longer ago: a new ticket, linked to it


@dataclass(frozen=True, slots=True)
class Written:
    """A customer's mail as the rules read it: who wrote it (as far as it says) and its text."""

    sender: str
    text: str


@dataclass(frozen=True, slots=True)
class Followed:
    case: Case
    plan: Plan


@dataclass(frozen=True, slots=True)
class Intake:
    """What the rules (``rules.judge``) and the assignment decided for a new ticket: their
    steps, and its assignee, who is told instead of the team."""

    steps: tuple[Step, ...] = ()
    assigned: Assigned | None = None


@dataclass(frozen=True, slots=True)
class Forwarding:
    """A customer's mail an agent forwarded to the desk: the agent (``by``, their ``name``),
    their ``note`` (their words above the forward, commands removed), and the agent their
    commands assign the ticket to (``assignee``; None: they assign it to nobody)."""

    by: str
    name: str
    note: str
    assignee: str | None = None

    def shown(self) -> dict[str, str]:
        """What the notice about the new ticket says of the forward."""
        return {"name": self.name, "email": self.by, "note": self.note}


def opened(
    mail: Written,
    mailbox: str,
    linked_to: str | None,
    requester: str | None = None,
    intake: Intake = Intake(),
    *,
    spam: str | None = None,
    forward: Forwarding | None = None,
) -> Plan:
    """A new ticket's first mail: kept, the creation recorded (with the closed ticket it follows
    up, and a warning when the mail has no address to answer), then what the rules and the
    assignment decided (``intake``), and the team told (``notice``). ``requester``: whom the
    ticket answers, when not the writer (a web form's ``Reply-To``). ``spam``: the MTA's
    verdict; the ticket is ``spam`` and nobody is told. ``forward``: an agent forwarded the
    mail."""
    detail: dict[str, str] = {"mailbox": mailbox}
    if linked_to is not None:
        detail["linked_to"] = linked_to
    if requester is not None and requester != mail.sender:
        detail["requester"] = requester
    if not (mail.sender if requester is None else requester):
        detail["warning"] = (
            "no usable address in From:, Sender: or Reply-To:; nobody outside is mailed"
        )
    context = {"text": mail.text, "sender": mail.sender}
    kept = (Keep(mail.sender, mail.text), Record("created", mail.sender, detail))
    if spam is not None:
        return Plan((*kept, SetStatus(Status.SPAM), Record("spam", "", {"verdict": spam})))
    return Plan((*kept, *intake.steps, *notice(context, intake.assigned, forward)))


def notice(
    context: dict[str, Any], assigned: Assigned | None, forward: Forwarding | None
) -> tuple[Notify, ...]:
    """Who hears of a new ticket: its assignee alone, when it has one (none when the agent who
    forwarded it assigned it to themselves: they know); else the team, but the agent who
    forwarded it. A forward's notice names the agent and carries their note."""
    but = None
    if forward is not None:
        context = {**context, "forwarded": forward.shown()}
        but = forward.by
        if forward.assignee == forward.by:
            return ()
        if forward.assignee is not None:  # their commands assign it, not the team's turn
            assigned = Assigned(forward.assignee, "forward", forward.name)
    if assigned is not None:
        told = {**context, "by": assigned.by}
        return (Notify(assigned.assignee, "notice", "agent_assigned", told),)
    return (Notify(Whom.TEAM, "notice", "agent_new", context, but=but),)


def follow_up(
    state: TicketState, mail: Written, reopen_after: timedelta, now: datetime
) -> Followed:
    """Which case a customer's mail on a ticket in ``state`` is, and its plan. ``reopen_after``:
    how long after closing a mail reopens the ticket rather than starting a new one."""
    if state.status != Status.CLOSED:
        return Followed(Case.REPLY, reply(state, mail))
    rating = RATING.match(mail.text)
    if rating and mail.sender and mail.sender == state.requester:
        return Followed(Case.RATING, rate(mail, int(rating.group(1)), rating.group(2)))
    closed_at = state.closed_at or state.status_since
    if closed_at is not None and now - closed_at > reopen_after:
        return Followed(Case.NEW_LINKED, Plan())
    return Followed(Case.REOPEN, reopen(mail))


def reply(state: TicketState, mail: Written) -> Plan:
    """Kept on the thread; a ticket waiting for the customer opens again; its owner is told."""
    steps: list[Step] = [Keep(mail.sender, mail.text)]
    if state.status == Status.PENDING:
        steps += [
            SetStatus(Status.OPEN),
            Record("customer_replied", mail.sender, {"status": "open"}),
            TrackSla(),
        ]
    context = {"text": mail.text, "sender": mail.sender}
    steps.append(Notify(Whom.OWNER, "notice", "agent_customer_replied", context))
    return Plan(tuple(steps))


def rate(mail: Written, rating: int, comment: str) -> Plan:
    """The requester's rating of a closed ticket, with what they said after it."""
    said = comment.strip() or None
    return Plan(
        (
            Keep(mail.sender, mail.text),
            Rate(rating, said),
            Record("rating", mail.sender, {"rating": rating, "comment": said}),
        )
    )


def reopen(mail: Written) -> Plan:
    """A closed ticket opens again; its owner is told."""
    context = {"text": mail.text, "sender": mail.sender}
    return Plan(
        (
            Keep(mail.sender, mail.text),
            SetStatus(Status.OPEN),
            Record("reopened", mail.sender),
            TrackSla(),
            Notify(Whom.OWNER, "notice", "agent_reopened", context),
        )
    )
