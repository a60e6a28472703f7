"""The commands that name another ticket or a held reply: ``#merge``, ``#link``, ``#send``,
``#drop``; and when an agent's reply is held because another agent answered first.

Part of the command grammar (``commands.validate`` hands these verbs here): the ticket a
``#merge`` or ``#link`` names must exist, be another one and, for a merge, not be merged
itself; ``#send`` and ``#drop`` need a reply of the agent's held on the ticket. ``hold`` turns
an agent's reply into a held one when the notice they answered is older than another agent's
reply. Values in, values out; the act layer looks the tickets up and carries the plan out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from maildesk.config import MAX_TICKET_NUMBER
from maildesk.desk.plans import HoldReply, Overtaken, Plan, Record, Reply, Step

VERBS = ("merge", "link", "send", "drop")
# how a ticket is named: its ref as the desk writes it, "#1042" or "1042" (the number at its end)
_NUMBER = re.compile(r"[^\d\s]{0,20}(\d{1,12})\]?")


class Refused(Exception):
    """Why one of these commands cannot apply (worded for the agent's receipt)."""


@dataclass(frozen=True, slots=True)
class Named:
    """What the commands may name of the desk: this ticket's number, the tickets the commands
    name that exist (number and status), whether the agent has a reply held on this one."""

    number: int | None = None
    tickets: tuple[tuple[int, str], ...] = ()
    held: bool = False


def number_of(word: str) -> int | None:
    match = _NUMBER.fullmatch(word.strip())
    return int(match.group(1)) if match else None


def named_numbers(commands: Sequence[tuple[str, tuple[str, ...]]]) -> tuple[int, ...]:
    """The ticket numbers ``#merge`` and ``#link`` commands (verb, arguments) name."""
    found: dict[int, None] = {}
    for verb, args in commands:
        if verb in ("merge", "link") and len(args) == 1:
            number = number_of(args[0])
            if number is not None and number <= MAX_TICKET_NUMBER:
                found.setdefault(number, None)
    return tuple(found)[:10]


def resolve(verb: str, args: Sequence[str], named: Named) -> str | None:
    """The command's value (the number of the ticket it names), or ``Refused``."""
    if verb in ("send", "drop"):
        if args:
            raise Refused(f"#{verb} takes no arguments")
        if not named.held:
            raise Refused("no reply of yours is held on this ticket")
        return None
    if len(args) != 1:
        raise Refused(f"name one ticket: #{verb} #1042")
    number = number_of(args[0])
    if number is None:
        raise Refused(f"{args[0]!r} is not a ticket")
    if number == named.number:
        raise Refused(
            f"a ticket cannot be {'merged into' if verb == 'merge' else 'linked to'} itself"
        )
    status = dict(named.tickets).get(number)
    if status is None:
        raise Refused(f"there is no ticket {args[0]}")
    if verb == "merge" and status == "merged":
        raise Refused(f"{args[0]} is merged into another ticket; merge into that one")
    return str(number)


def describe(verb: str, value: str) -> str | None:
    lines = {
        "merge": f"merged into ticket {value}; the customer is told once",
        "link": f"linked with ticket {value}, both ways",
        "send": "your held reply sent to the customer",
        "drop": "your held reply dropped; it stays an internal note",
    }
    return lines.get(verb)


def hold(plan: Plan, overtaken: Overtaken | None, actor: str, assignee: str | None) -> Plan:
    """The plan with the agent's reply held instead of sent, when another agent answered
    after the notice the agent answered (``overtaken``); the assignee's reply never is."""
    if overtaken is None or actor == assignee:
        return plan
    steps: list[Step] = []
    for step in plan.steps:
        if isinstance(step, Reply) and step.template == "reply":
            detail = {"answered_by": overtaken.by, "answered_at": overtaken.at.isoformat()}
            steps += [
                HoldReply(step, overtaken),
                Record("reply_held", actor, detail),
            ]
        else:
            steps.append(step)
    return Plan(tuple(steps), plan.applied)


HELP = """\
#merge <ref>
    The same request as ticket <ref>: this one's messages and people move there, the
    customer is told once, and mail to this ref joins <ref>.  Example: #merge #1041
#link <ref>
    Note that this ticket and <ref> belong together (both list each other).
                                                      Example: #link #1041
#send
    Send the reply of yours the desk held because another agent answered first.
                                                      Example: #send
#drop
    Discard that held reply; it stays an internal note. Example: #drop
"""
