"""Plans: what a decision of the desk changes on a ticket and which mails it sends, as values.

The desk's rules (``verbs`` for agents' commands, ``customers`` for customers' mail) read the
ticket's state as a ``TicketState`` and return a ``Plan``: steps in the order they happen. The act
layer (``act.apply``) carries a plan out inside the message's transaction; nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any

from maildesk.models import Status


@dataclass(frozen=True, slots=True)
class TicketState:
    """What the rules read of a ticket."""

    id: int | None
    status: Status
    requester: str
    team: str
    assignee: str | None = None
    priority: str = "medium"
    tags: tuple[str, ...] = ()
    closed_at: datetime | None = None
    status_since: datetime | None = None
    sla_breached: tuple[str, ...] = ()  # the SLA targets reported missed already
    participants: tuple[str, ...] = ()  # on the ticket's Cc, besides the requester

    def but(self, **changes: Any) -> TicketState:
        return replace(self, **changes)


class Whom(Enum):
    """Who a mail goes to, read when the plan is carried out (after the changes before it)."""

    REQUESTER = "requester"  # the ticket's customer
    TEAM = "team"  # every agent of the ticket's team
    OWNER = "owner"  # the assignee, else every agent of the team


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class SetAssignee:
    assignee: str | None


@dataclass(frozen=True, slots=True)
class SetPriority:
    priority: str


@dataclass(frozen=True, slots=True)
class SetTeam:
    team: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    status: Status


@dataclass(frozen=True, slots=True)
class AddTags:
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoveTags:
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AddParticipants:
    """Put ``addresses`` on the ticket's Cc; ``by``: the customer whose mail named them, or
    the agent."""

    addresses: tuple[str, ...]
    by: str


@dataclass(frozen=True, slots=True)
class RemoveParticipants:
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetRequester:
    """``address`` becomes the requester; the one before stays on the Cc (added ``by``)."""

    address: str
    by: str


@dataclass(frozen=True, slots=True)
class Rate:
    rating: int
    comment: str | None


@dataclass(frozen=True, slots=True)
class Record:
    """An event on the ticket's timeline."""

    kind: str
    actor: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Keep:
    """The message being handled, kept on the ticket's thread with ``text``."""

    sender: str
    text: str
    internal: bool = False
    unverified: bool = False
    automatic: str | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    """A mail. ``to``: a ``Whom`` or an agent's address. ``words``: it carries a person's words
    (a mail to the requester that is never held back as automatic). ``but``: an agent left out
    of a mail to the team (the one who caused it, and knows)."""

    to: Whom | str
    kind: str
    template: str
    context: Mapping[str, Any] = field(default_factory=dict)
    words: bool = False
    but: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """An agent's answer to the customer: the canned replies chosen, then ``text``; kept on the
    thread and mailed. ``pend``: the ticket waits for the customer afterwards. ``template``:
    ``started`` for the first mail of a conversation an agent starts (``#new``)."""

    actor: str
    agent_name: str
    canned: tuple[str, ...]
    text: str
    pend: bool
    template: str = "reply"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the ticket (when it is not closed yet) with a resolution: the canned replies chosen,
    then ``text``. ``keep``: the resolution is kept on the thread as the message handled."""

    actor: str
    canned: tuple[str, ...]
    text: str
    keep: bool


@dataclass(frozen=True, slots=True)
class MailFiles:
    """Mail every file of the ticket to the agent ``to`` (``#files``), in mails of a bounded
    size."""

    to: str


@dataclass(frozen=True, slots=True)
class Block:
    """Put ``address`` on the block list (``#spam block``, by the agent ``by``)."""

    address: str
    by: str


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """What a ticket held as spam missed: the customer's acknowledgment and the notice to its
    team (``#notspam``)."""


@dataclass(frozen=True, slots=True)
class Overtaken:
    """Another agent's reply the customer got after the notice an agent answered was sent:
    who (``by``), when, and what they wrote."""

    by: str
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class HoldReply:
    """``reply`` is kept on the thread as held (internal) instead of mailed, and its agent is
    mailed ``overtaken``, the reply that came first; ``#send`` or ``#drop`` decides."""

    reply: Reply
    overtaken: Overtaken


@dataclass(frozen=True, slots=True)
class SendHeld:
    """The agent's held reply goes to the customer after all (``#send``)."""

    actor: str
    agent_name: str


@dataclass(frozen=True, slots=True)
class DropHeld:
    """The agent's held reply is not sent; it stays an internal note (``#drop``)."""

    actor: str


@dataclass(frozen=True, slots=True)
class Merge:
    """The ticket's messages and people move into ticket ``into``; it becomes ``merged``."""

    into: int
    by: str


@dataclass(frozen=True, slots=True)
class Link:
    """The ticket and ticket ``other`` are linked, both ways."""

    other: int
    by: str


@dataclass(frozen=True, slots=True)
class MarkReminded:
    """This pending period's reminder is dealt with (sent, or held)."""


@dataclass(frozen=True, slots=True)
class MarkBreached:
    """The SLA targets reported missed, all of them."""

    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TrackSla:
    """Bring the ticket's next SLA due time up to date."""


Step = (
    SetAssignee
    | SetPriority
    | SetTeam
    | SetStatus
    | AddTags
    | RemoveTags
    | AddParticipants
    | RemoveParticipants
    | SetRequester
    | Rate
    | Record
    | Keep
    | Notify
    | Reply
    | Close
    | MailFiles
    | Block
    | Acknowledge
    | HoldReply
    | SendHeld
    | DropHeld
    | Merge
    | Link
    | MarkReminded
    | MarkBreached
    | TrackSla
)


@dataclass(frozen=True, slots=True)
class Plan:
    """Steps, in order, and the lines an agent's receipt reports as applied."""

    steps: tuple[Step, ...] = ()
    applied: tuple[str, ...] = ()

    def __add__(self, other: Plan) -> Plan:
        return Plan(self.steps + other.steps, self.applied + other.applied)

    def mails(self) -> tuple[Notify, ...]:
        return tuple(step for step in self.steps if isinstance(step, Notify))

    def before_mails(self, other: Plan) -> Plan:
        """This plan with ``other``'s steps carried out before its first mail, which then
        shows what they changed (the people a customer's mail named, in its notice)."""
        steps = self.steps
        at = next((i for i, step in enumerate(steps) if isinstance(step, Notify)), len(steps))
        return Plan(steps[:at] + other.steps + steps[at:], self.applied + other.applied)


def preview(state: TicketState, plan: Plan) -> TicketState:
    """The ticket as ``plan`` leaves it (what its agents and customer will see), without
    carrying it out."""
    for step in plan.steps:
        match step:
            case SetAssignee(assignee=assignee):
                state = state.but(assignee=assignee)
            case SetPriority(priority=priority):
                state = state.but(priority=priority)
            case SetTeam(team=team):
                state = state.but(team=team)
            case SetStatus(status=status):
                state = state.but(status=status)
            case AddTags(tags=tags):
                state = state.but(tags=(*state.tags, *tags))
            case RemoveTags(tags=tags):
                state = state.but(tags=tuple(t for t in state.tags if t not in tags))
            case AddParticipants() | RemoveParticipants() | SetRequester():
                state = people_after(state, step)
            case Reply(pend=True):
                state = state.but(status=Status.PENDING)
            case Close():
                state = state.but(status=Status.CLOSED)
            case Merge():
                state = state.but(status=Status.MERGED)
    return state


def people_after(
    state: TicketState, step: AddParticipants | RemoveParticipants | SetRequester
) -> TicketState:
    """The ticket's requester and Cc as ``step`` leaves them."""
    match step:
        case AddParticipants(addresses=added):
            new = [a for a in added if a not in state.participants and a != state.requester]
            return state.but(participants=(*state.participants, *new))
        case RemoveParticipants(addresses=gone):
            return state.but(participants=tuple(a for a in state.participants if a not in gone))
        case SetRequester(address=address):
            kept = [a for a in state.participants if a != address]
            if state.requester and state.requester != address:
                kept.append(state.requester)
            return state.but(requester=address, participants=tuple(kept))


def mailed(plan: Plan) -> tuple[tuple[Whom | str, str], ...]:
    """Who ``plan`` mails, and which mail: ``(Whom.REQUESTER, "reply")``, ``(address,
    "notice")``..."""
    found: list[tuple[Whom | str, str]] = []
    for step in plan.steps:
        match step:
            case Notify(to=to, kind=kind):
                found.append((to, kind))
            case Reply():
                found.append((Whom.REQUESTER, "reply"))
            case Close():
                found.append((Whom.REQUESTER, "closed"))
            case MailFiles(to=to):
                found.append((to, "files"))
            case Acknowledge():
                found += [(Whom.REQUESTER, "ack"), (Whom.TEAM, "notice")]
            case HoldReply(reply=reply):
                found.append((reply.actor, "held"))
            case SendHeld():
                found.append((Whom.REQUESTER, "reply"))
            case Merge():
                found.append((Whom.REQUESTER, "merged"))
    return tuple(found)
