"""What a proven agent's mail on no ticket starts: a conversation (``#new``), a ticket from a
forwarded customer's mail, or nothing but a receipt that says what such mail can do.

Third stage for routing's ``FromAgent``, once the act layer has proven the sender: the parsed
commands, what the mail forwards, and the desk's directory and address in, a ``Start`` value
out; ``conversation`` and ``forwarded`` plan the new ticket's steps (``act.starts`` opens the
ticket and carries the plan out). Pure: nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from maildesk.config import AgentSettings
from maildesk.desk import commands, people, verbs
from maildesk.desk.customers import Forwarding
from maildesk.desk.plans import Notify, Plan, Record, Reply, SetAssignee, Step, TicketState
from maildesk.mail.marks import is_desk_address
from maildesk.models import Status

NEW = "new"
# what may come with ``#new``: the verbs that make sense on a conversation about to start
WITH_NEW = ("assign", "priority", "tag", "untag", "reply", "cc")
# what may come with a forward: the verbs that place the ticket; the agent's words are a note
WITH_FORWARD = ("assign", "priority", "tag", "untag", "escalate", "note", "cc")

# reply and forward prefixes at the start of a subject (``Re: Fwd: AW:``)
_PREFIXES = re.compile(r"^(?:\s*(?:re|aw|sv|antw|fwd?|wg|tr|rv|vs|odp|enc|rif)\s*:)+\s*", re.I)


@dataclass(frozen=True, slots=True)
class Conversation:
    """``#new <address>``: a ticket for ``address``, ``text`` its first mail to them, with the
    other commands' ``actions``."""

    address: str
    actions: tuple[commands.Action, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Forward:
    """A forwarded customer's mail: a ticket for its ``sender``, the agent's ``note`` (their
    words above the forward, commands removed) kept on it as an internal note, with the
    commands' ``actions``."""

    sender: str
    actions: tuple[commands.Action, ...]
    note: str


@dataclass(frozen=True, slots=True)
class Refused:
    """What the mail asked cannot be done: nothing starts, the agent is told ``reasons``."""

    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unstarted:
    """The mail asked to start nothing: the agent is told what such mail can do."""


Start = Conversation | Forward | Refused | Unstarted


class _Refusal(Exception):
    """A refusal reason (internal to ``decide``)."""


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def _address(command: commands.Command, directory: commands.Directory, desk: str) -> str:
    """The customer address of ``#new``, or why it cannot start a conversation."""
    if not command.args:
        raise _Refusal("name the customer's address: #new dana@customer.test")
    words = people.address_words(command.args)
    if len(words) > 1:
        if all(people.address_of(word) for word in words):
            raise _Refusal("#new takes one address; #cc the others on a line below it")
        raise _Refusal("#new takes one address" + commands.TEXT_HINT)
    address = people.address_of(words[0])
    if address is None:
        raise _Refusal(f"{words[0]} is not a mail address")
    _customer(address, directory, desk, "#new starts a ticket for a customer")
    return address


def _customer(address: str, directory: commands.Directory, desk: str, why: str) -> None:
    """Refuse ``address`` for a ticket's customer when it is the desk's own or an agent's."""
    if is_desk_address(address, desk):
        raise _Refusal(f"{address} is the desk's own address; name the customer's")
    if any(address == email.lower() for email, _, _ in directory.agents):
        raise _Refusal(f"{address} is an agent of this desk; {why}")


def decide(
    parsed: commands.Parsed, directory: commands.Directory, agent: str, desk_address: str
) -> Start:
    """What ``agent``'s proven mail on no ticket starts. ``#new <address>`` starts a
    conversation, all or nothing: its address must be a customer's (not the desk's, not an
    agent's), the other commands must validate and be ones that make sense on a new
    conversation, and there must be something to send."""
    news = [c for c in parsed.commands if c.verb == NEW]
    if not news:
        return Unstarted()
    refusals: list[str] = []
    if len(news) > 1:
        refusals.append(f"{_short(news[1].source)}: one #new per message")
    address = ""
    try:
        address = _address(news[0], directory, desk_address)
    except _Refusal as refusal:
        refusals.append(f"{_short(news[0].source)}: {refusal}")
    others = commands.Parsed(tuple(c for c in parsed.commands if c.verb != NEW), parsed.text)
    validation = commands.validate(others, directory, agent)
    refusals += validation.refusals
    refusals += _allowed(validation.actions, WITH_NEW, "#new")
    if not parsed.text and not any(a.verb == "reply" for a in validation.actions):
        refusals.append(
            f"{_short(news[0].source)}: nothing to send; write the first message to the "
            "customer on the lines below the commands"
        )
    if refusals:
        return Refused(tuple(refusals))
    return Conversation(address, validation.actions, parsed.text)


MISPLACED_NEW = "#new must be on the first line of your message, above your text"


def placed(parsed: commands.Parsed, start: Start) -> Start:
    """``start``, but a mail that starts nothing because its ``#new`` line comes below other
    text is refused with where ``#new`` goes (not told it asked for nothing)."""
    if not isinstance(start, Unstarted):
        return start
    for line in parsed.text.splitlines():
        words = line.split()
        if words and words[0].rstrip(".,;:!?").lower() == "#" + NEW:
            return Refused((MISPLACED_NEW,))
    return start


def _allowed(
    actions: tuple[commands.Action, ...], allowed: tuple[str, ...], what: str
) -> list[str]:
    """A refusal for each action that cannot come with ``what``."""
    listed = ", ".join(f"#{verb}" for verb in allowed)
    return [
        f"{_short(a.source)}: cannot come with {what} (with it: {listed})"
        for a in actions
        if a.verb not in allowed
    ]


def note_commands(note: str, ref_pattern: str, teams: tuple[str, ...]) -> commands.Parsed:
    """The commands of the words above a forward: the command lines at their top, as in any
    mail, and those at their end, right above the forwarded message, where a client leaves the
    cursor; the rest is the note."""
    lines = note.splitlines()
    cut = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if not lines[index].strip():
            continue
        if not commands.parse("", lines[index], ref_pattern, teams).commands:
            break
        cut = index
    head = commands.parse("", "\n".join(lines[:cut]), ref_pattern, teams)
    if cut == len(lines):
        return head
    tail = commands.parse("", "\n".join(lines[cut:]), ref_pattern, teams)
    text = "\n\n".join(part for part in (head.text, tail.text) if part)
    return commands.Parsed(head.commands + tail.commands, text)


def forward(
    parsed: commands.Parsed,
    sender: str | None,
    directory: commands.Directory,
    agent: str,
    desk_address: str,
) -> Forward | Refused:
    """A proven agent's forward of a customer's mail (``parsed``: the commands and words above
    the forward), from ``sender`` as the forward shows them. All or nothing: the sender must be
    an address and a customer's, the commands must validate and place the ticket."""
    refusals: list[str] = []
    if sender is None:
        refusals.append(
            "the forwarded message shows its sender without an address; forward it as an "
            "attachment, or start with #new <their address>"
        )
    else:
        try:
            _customer(sender, directory, desk_address, "forward a customer's mail")
        except _Refusal as refusal:
            refusals.append(f"the forwarded message's sender: {refusal}")
    validation = commands.validate(parsed, directory, agent)
    refusals += validation.refusals
    refusals += _allowed(validation.actions, WITH_FORWARD, "a forward")
    if refusals or sender is None:
        return Refused(tuple(refusals))
    return Forward(sender, validation.actions, parsed.text)


def forwarding(start: Forward, agent: AgentSettings) -> Forwarding:
    """The forward as the ticket's opening reads it: who forwarded it, their note, and the
    agent their commands assign it to (the last ``#assign``), who alone is told of it."""
    assignee = None
    for action in start.actions:
        if action.verb == "assign":
            assignee = action.value
    return Forwarding(agent.email, agent.name, start.note, assignee)


def forwarded(
    state: TicketState, start: Forward, agent: AgentSettings, directory: commands.Directory
) -> Plan:
    """What an agent's commands and words do to the ticket just opened from their forward:
    the commands apply, the words are an internal note (never mailed to the customer). The
    assignee was told by the ticket's opening notice (with the customer's text and files),
    not a second time here."""
    note = commands.Action("note", None, source="#note")
    actions = start.actions
    if not any(a.verb == "note" for a in actions):
        actions = (*actions, note)
    planned = verbs.plan_actions(state, actions, agent, start.note, directory)
    steps = tuple(
        step
        for step in planned.steps
        if not (isinstance(step, Notify) and step.template == "agent_assigned")
    )
    lines = [f"opened a ticket for {start.sender} from the mail you forwarded"]
    if start.note:
        lines.append("your words above the forward kept as an internal note")
    described = [commands.describe(a, agent.email) for a in start.actions if a.verb != "note"]
    return Plan(steps, (*lines, *described))


def subject_of(subject: str) -> str:
    """A new conversation's subject: the mail's, without reply and forward prefixes."""
    return _PREFIXES.sub("", subject).strip()


def conversation(
    start: Conversation,
    agent: AgentSettings,
    team: str,
    mailbox: str,
    directory: commands.Directory,
) -> Plan:
    """The first steps of a conversation ``agent`` starts with ``start.address``: assigned to
    them, the creation recorded, their other commands, and their text mailed as the desk's
    first mail (template ``started``, as a reply: the customer's answer threads into the
    ticket, which waits for it)."""
    state = TicketState(
        id=None, status=Status.OPEN, requester=start.address, team=team, assignee=agent.email
    )
    created = {"mailbox": mailbox, "started_by": agent.email}
    head: tuple[Step, ...] = (
        SetAssignee(agent.email),
        Record("created", agent.email, created),
    )
    planned = verbs.plan_actions(state, start.actions, agent, start.text, directory)
    steps = tuple(
        replace(step, template="started") if isinstance(step, Reply) else step
        for step in planned.steps
    )
    lines = [f"started a conversation with {start.address}: your text was mailed to them"]
    if not any(a.verb == "assign" for a in start.actions):
        lines.append(f"assigned to you ({agent.name} <{agent.email}>)")
    return Plan(head + steps, (*lines, *planned.applied))
