"""What a proven agent's mail on no ticket starts: a conversation (``#new``), or nothing but a
receipt that says what such mail can do.

Third stage for routing's ``FromAgent``, once the act layer has proven the sender: the parsed
commands and the desk's directory and address in, a ``Start`` value out; for a conversation,
``conversation`` plans the new ticket's first steps (``act.starts`` opens the ticket and
carries the plan out). Pure: nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from maildesk.config import AgentSettings
from maildesk.desk import commands, verbs
from maildesk.desk.plans import Plan, Record, Reply, SetAssignee, Step, TicketState
from maildesk.mail.marks import is_desk_address
from maildesk.models import Status

NEW = "new"
# what may come with ``#new``: the verbs that make sense on a conversation about to start
WITH_NEW = ("assign", "priority", "tag", "untag", "reply", "cc")

# An address as an agent types it: a local part and a domain with a dot, no spaces, no
# brackets or quotes (``<dana@customer.test>`` is taken without its angle brackets).
_SPECIAL = r"\s@<>()\[\],;:\"\\"
_ADDRESS = re.compile(rf"[^{_SPECIAL}]{{1,64}}@(?:[^{_SPECIAL}.]+\.)+[^{_SPECIAL}.]{{2,}}")
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
class Refused:
    """What the mail asked cannot be done: nothing starts, the agent is told ``reasons``."""

    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unstarted:
    """The mail asked to start nothing: the agent is told what such mail can do."""


Start = Conversation | Refused | Unstarted


class _Refusal(Exception):
    """A refusal reason (internal to ``decide``)."""


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def _address(command: commands.Command, directory: commands.Directory, desk: str) -> str:
    """The customer address of ``#new``, or why it cannot start a conversation."""
    if not command.args:
        raise _Refusal("name the customer's address: #new dana@customer.test")
    if len(command.args) > 1:
        raise _Refusal("#new takes one address" + commands.TEXT_HINT)
    address = command.args[0].strip("<>").lower()
    if len(address) > 254 or not _ADDRESS.fullmatch(address):
        raise _Refusal(f"{address} is not a mail address")
    if is_desk_address(address, desk):
        raise _Refusal(f"{address} is the desk's own address; name the customer's")
    if any(address == email.lower() for email, _, _ in directory.agents):
        raise _Refusal(f"{address} is an agent of this desk; #new starts a ticket for a customer")
    return address


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
    allowed = ", ".join(f"#{verb}" for verb in WITH_NEW)
    refusals += [
        f"{_short(a.source)}: cannot start a conversation (with #new: {allowed})"
        for a in validation.actions
        if a.verb not in WITH_NEW
    ]
    if not parsed.text and not any(a.verb == "reply" for a in validation.actions):
        refusals.append(
            f"{_short(news[0].source)}: nothing to send; write the first message to the "
            "customer on the lines below the commands"
        )
    if refusals:
        return Refused(tuple(refusals))
    return Conversation(address, validation.actions, parsed.text)


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
