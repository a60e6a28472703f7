"""What an agent's verified commands do to a ticket: one small planner per verb, then the text.

Third stage for an agent's mail, after ``commands.validate``: the actions, the ticket's state
and the settings in, a ``plans.Plan`` out (``act.apply`` carries it out). Each verb's planner
reads the state the verbs before it left; then the mail's text becomes a note, the summary of
an escalation, the resolution of a close or a reply to the customer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from maildesk.config import AgentSettings
from maildesk.desk import commands
from maildesk.desk.plans import (
    Acknowledge,
    AddParticipants,
    AddTags,
    Block,
    Close,
    DropHeld,
    Keep,
    Link,
    MailFiles,
    Merge,
    Notify,
    Plan,
    Record,
    RemoveParticipants,
    RemoveTags,
    Reply,
    SendHeld,
    SetAssignee,
    SetPriority,
    SetRequester,
    SetStatus,
    SetTeam,
    Step,
    TicketState,
    TrackSla,
    Whom,
    people_after,
)
from maildesk.models import Status


@dataclass(frozen=True, slots=True)
class Order:
    """One agent's mail of commands, as every verb's planner reads it."""

    agent: AgentSettings
    text: str  # the mail's text once the command lines are removed
    verbs: frozenset[str]
    canned: tuple[str, ...]  # the canned replies chosen (``#reply <name>``)
    directory: commands.Directory


Planned = tuple[TicketState, tuple[Step, ...]]


def agent_of(directory: commands.Directory, address: str | None) -> AgentSettings | None:
    """The agent with ``address`` (as ``Settings.agent`` finds them), or None."""
    if not address:
        return None
    address = address.lower()
    for email, name, teams in directory.agents:
        if email == address:
            return AgentSettings(email, name, teams)
    return None


Planner = Callable[[TicketState, commands.Action, Order], Planned]


def assign(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The new assignee is told, unless they assigned it to themselves."""
    if action.value == state.assignee:
        return state, ()
    actor = order.agent.email
    steps: list[Step] = [
        SetAssignee(action.value),
        Record("assigned", actor, {"assignee": action.value}),
    ]
    target = agent_of(order.directory, action.value)
    if target is not None and target.email != actor:
        steps.append(Notify(target.email, "notice", "agent_assigned", {"by": order.agent.name}))
    return state.but(assignee=action.value), tuple(steps)


def priority(state: TicketState, action: commands.Action, order: Order) -> Planned:
    if action.value == state.priority:
        return state, ()
    new = action.value or state.priority
    detail = {"old": state.priority, "new": action.value}
    return state.but(priority=new), (
        Record("priority", order.agent.email, detail),
        SetPriority(new),
    )


def tag(state: TicketState, action: commands.Action, order: Order) -> Planned:
    new = [w for w in action.words if w not in state.tags]
    if not new:
        return state, ()
    added = (AddTags(tuple(new)), Record("tagged", order.agent.email, {"added": new}))
    return state.but(tags=(*state.tags, *new)), added


def untag(state: TicketState, action: commands.Action, order: Order) -> Planned:
    gone = [t for t in state.tags if t in action.words]
    if not gone:
        return state, ()
    kept = tuple(t for t in state.tags if t not in action.words)
    removed = (RemoveTags(tuple(gone)), Record("untagged", order.agent.email, {"removed": gone}))
    return state.but(tags=kept), removed


def reopen(state: TicketState, action: commands.Action, order: Order) -> Planned:
    if state.status != Status.CLOSED:
        return state, ()
    return state.but(status=Status.OPEN), (
        SetStatus(Status.OPEN),
        Record("reopened", order.agent.email),
    )


def escalate(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The summary the team reads is the mail's text; a ``#note`` keeps it as a note instead
    of in the event."""
    text = order.text
    return escalation(
        state,
        action.value or state.team,
        order.directory,
        Escalator(
            order.agent.email, order.agent.name, text, text if "note" not in order.verbs else ""
        ),
    )


@dataclass(frozen=True, slots=True)
class Escalator:
    """Who escalates and what they say: ``by`` names them to the team, ``summary`` is for the
    team only (the customer's notice never shows it), ``logged`` is what the event keeps."""

    actor: str
    by: str
    summary: str
    logged: str


def escalation(
    state: TicketState, team: str, directory: commands.Directory, who: Escalator
) -> Planned:
    """Hand the ticket to ``team``: status escalated, that team told, the customer told. An
    assignee outside the new team is unassigned. Used by ``#escalate`` and by a missed SLA
    target with ``escalate_to``."""
    steps: list[Step] = [SetTeam(team), SetStatus(Status.ESCALATED)]
    owner = agent_of(directory, state.assignee)
    assignee = state.assignee
    if assignee and (owner is None or team not in owner.teams):
        steps.append(SetAssignee(None))
        assignee = None
    steps += [
        Record("escalated", who.actor, {"team": team, "summary": who.logged}),
        Notify(Whom.TEAM, "notice", "agent_escalated", {"summary": who.summary, "by": who.by}),
        Notify(Whom.REQUESTER, "escalated", "escalated"),
    ]
    return state.but(team=team, status=Status.ESCALATED, assignee=assignee), tuple(steps)


def files(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The ticket's files, mailed to the agent who asked."""
    return state, (MailFiles(order.agent.email),)


def cc(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The addresses not on the ticket yet join its Cc, added by the agent."""
    new = tuple(a for a in action.words if a not in state.participants and a != state.requester)
    if not new:
        return state, ()
    step = AddParticipants(new, order.agent.email)
    record = Record("cc_added", order.agent.email, {"added": list(new)})
    return people_after(state, step), (step, record)


def uncc(state: TicketState, action: commands.Action, order: Order) -> Planned:
    gone = tuple(a for a in action.words if a in state.participants)
    if not gone:
        return state, ()
    step = RemoveParticipants(gone)
    record = Record("cc_removed", order.agent.email, {"removed": list(gone)})
    return people_after(state, step), (step, record)


def requester(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The ticket answers another address; the one before stays on its Cc."""
    if not action.value or action.value == state.requester:
        return state, ()
    step = SetRequester(action.value, order.agent.email)
    detail = {"old": state.requester, "new": action.value}
    return people_after(state, step), (step, Record("requester_changed", order.agent.email, detail))


def spam(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The ticket is spam: nobody is mailed; ``#spam block`` blocks its requester too."""
    actor = order.agent.email
    steps: list[Step] = []
    if state.status != Status.SPAM:
        steps += [SetStatus(Status.SPAM), Record("spam", actor, {"by": "agent"})]
    for address in action.words:
        steps += [Block(address, actor), Record("blocked", actor, {"address": address})]
    return state.but(status=Status.SPAM), tuple(steps)


def notspam(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """A spam ticket opens, and gets what it missed: the acknowledgment and the team notice."""
    if state.status != Status.SPAM:
        return state, ()
    steps = (SetStatus(Status.OPEN), Record("not_spam", order.agent.email), Acknowledge())
    return state.but(status=Status.OPEN), steps


def merge(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The ticket's thread and people move into the one named; the mail's text stays a note
    on the thread it joins."""
    steps: list[Step] = []
    if order.text:
        steps.append(Keep(order.agent.email, order.text, internal=True))
    steps.append(Merge(int(action.value or 0), order.agent.email))
    return state.but(status=Status.MERGED), tuple(steps)


def link(state: TicketState, action: commands.Action, order: Order) -> Planned:
    return state, (Link(int(action.value or 0), order.agent.email),)


def send(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """The agent's held reply goes out after all."""
    return state, (SendHeld(order.agent.email, order.agent.name),)


def drop(state: TicketState, action: commands.Action, order: Order) -> Planned:
    return state, (DropHeld(order.agent.email),)


def nothing(state: TicketState, action: commands.Action, order: Order) -> Planned:
    """``#note``, ``#close`` and ``#reply``: they say what becomes of the text (``the_text``);
    ``#help``: the receipt lists the commands."""
    return state, ()


VERBS: dict[str, Planner] = {
    "assign": assign,
    "priority": priority,
    "tag": tag,
    "untag": untag,
    "reopen": reopen,
    "escalate": escalate,
    "note": nothing,
    "close": nothing,
    "reply": nothing,
    "files": files,
    "cc": cc,
    "uncc": uncc,
    "requester": requester,
    "spam": spam,
    "notspam": notspam,
    "merge": merge,
    "link": link,
    "send": send,
    "drop": drop,
    "help": nothing,
}


def the_text(state: TicketState, order: Order) -> tuple[Step, ...]:
    """The mail's text after its commands: a note (``#note``, or the summary of an escalation),
    the resolution of a close, or a reply to the customer (with any canned replies)."""
    verbs, text, actor = order.verbs, order.text, order.agent.email
    steps: list[Step] = []
    closing = "close" in verbs and state.status != Status.CLOSED
    if "merge" in verbs:  # its text was kept before the thread moved
        return (TrackSla(),)
    if verbs & {"note", "spam", "send", "drop"} or ("escalate" in verbs and text):
        if text:
            steps.append(Keep(actor, text, internal=True))
            if "note" in verbs:
                steps.append(Record("note", actor))
        if closing:  # closed after the note: nothing more is kept, the canned replies are sent
            steps.append(Close(actor, order.canned, "", keep=False))
    elif "close" in verbs:
        if closing:
            steps.append(Close(actor, order.canned, text, keep=True))
    elif text or order.canned:
        pend = state.status != Status.CLOSED and "escalate" not in verbs
        steps.append(Reply(actor, order.agent.name, order.canned, text, pend))
    return (*steps, TrackSla())


def plan_actions(
    state: TicketState,
    actions: Sequence[commands.Action],
    agent: AgentSettings,
    text: str,
    directory: commands.Directory,
) -> Plan:
    """The plan of an agent's validated actions and text, on a ticket in ``state``."""
    verbs = frozenset(a.verb for a in actions)
    canned = tuple(a.value for a in actions if a.verb == "reply" and a.value)
    order = Order(agent, text, verbs, canned, directory)
    steps: list[Step] = []
    for action in actions:
        state, planned = VERBS[action.verb](state, action, order)
        steps += planned
    steps += the_text(state, order)
    return Plan(tuple(steps), tuple(commands.describe(a, agent.email) for a in actions))


def refused(actor: str, text: str, refusals: Sequence[str]) -> Plan:
    """Commands that do not validate: none applies; the text is kept as an internal note."""
    return Plan(
        (
            Keep(actor, text, internal=True),
            Record("command_refused", actor, {"refused": list(refusals)}),
        )
    )


def unverified(actor: str, text: str) -> Plan:
    """Mail in an agent's name that does not prove it: nothing applies and nothing reaches the
    customer; the text is kept as an unverified note."""
    return Plan((Keep(actor, text, internal=True, unverified=True),))
