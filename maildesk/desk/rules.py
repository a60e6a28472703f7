"""The config's ``[[rules]]`` on a new ticket's mail: which apply, and what they change.

Between routing (the mail opens a new ticket) and the act layer that opens it: the names of the
rules whose patterns the mail matches come from the parse worker (``Inbound.matched``, found
within the message's budget by ``mail.parse.filters``); here they are read in the config's
order and turned into a ``Ruling``: the ticket's team, whether it is made at all, whether its
customer is acknowledged, and the steps of a plan (``act.apply`` carries them out). Pure.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from maildesk.config import RuleSettings
from maildesk.desk.plans import AddTags, Record, SetPriority, Step
from maildesk.mail.parse.filters import Filter


@dataclass(frozen=True, slots=True)
class Ruling:
    """What the rules make of a new ticket's mail. ``ignored_by``: the rule that says no ticket
    is made (nothing else then applies); ``assignee``: an agent a rule names (it wins over the
    team's automatic assignment); ``by``: the rule that named them."""

    team: str
    acknowledge: bool = True
    ignored_by: str | None = None
    assignee: str | None = None
    by: str | None = None
    steps: tuple[Step, ...] = ()


def filters_of(rules: Sequence[RuleSettings]) -> tuple[Filter, ...]:
    """The patterns of each rule, for the parse worker to look for."""
    return tuple(
        Filter(rule.name, rule.sender, rule.recipients, rule.subject, rule.body) for rule in rules
    )


def judge(
    rules: Sequence[RuleSettings],
    matched: Collection[str],
    slow: Collection[str],
    team: str,
) -> Ruling:
    """The rules that match (their names in ``matched``), in order, until one with ``stop`` or
    ``ignore``: each is recorded (event ``rule``) with what it changed; a later rule's team,
    priority or assignee wins over an earlier one's, tags add up. A rule given up for time
    (``slow``) does not match and is recorded as ``rule_skipped``."""
    ruling = Ruling(team)
    steps: list[Step] = []
    for rule in rules:
        if rule.name in slow:
            steps.append(Record("rule_skipped", "", {"name": rule.name, "reason": SLOW}))
            continue
        if rule.name not in matched:
            continue
        if rule.ignore:
            return Ruling(team, acknowledge=False, ignored_by=rule.name)
        ruling = _applied(ruling, rule)
        tagged = {tag for step in steps if isinstance(step, AddTags) for tag in step.tags}
        steps += _steps(rule, tagged)
        if rule.stop:
            break
    return Ruling(ruling.team, ruling.acknowledge, None, ruling.assignee, ruling.by, tuple(steps))


SLOW = "matching took too long on this mail; the rule counts as not matching"


def _applied(ruling: Ruling, rule: RuleSettings) -> Ruling:
    return Ruling(
        team=rule.team or ruling.team,
        acknowledge=ruling.acknowledge and rule.acknowledge,
        assignee=rule.assign or ruling.assignee,
        by=rule.name if rule.assign else ruling.by,
    )


def _steps(rule: RuleSettings, tagged: Collection[str]) -> list[Step]:
    """The rule's event and changes (tags an earlier rule added are not added twice)."""
    detail: dict[str, Any] = {"name": rule.name}
    steps: list[Step] = []
    if rule.team:
        detail["team"] = rule.team
    if rule.priority:
        detail["priority"] = rule.priority
        steps.append(SetPriority(rule.priority))
    if rule.tags:
        detail["tags"] = list(rule.tags)
        new = tuple(tag for tag in dict.fromkeys(rule.tags) if tag not in tagged)
        if new:
            steps.append(AddTags(new))
    if rule.assign:
        detail["assign"] = rule.assign
    if not rule.acknowledge:
        detail["acknowledge"] = False
    if rule.stop:
        detail["stop"] = True
    return [Record("rule", "", detail), *steps]
