"""The ``[[rules]]`` tables: what a new ticket's mail must match, and what then happens to it.

Under ``reading``, which calls ``read_rules`` once the teams and agents are known. Every
regular expression is compiled here, case-blind as it is matched, so a pattern that does not
compile stops the start with one line naming the rule and the key; matching itself happens in
the parse worker, within the message's budget (``maildesk.mail.parse.filters``).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from maildesk.config.settings import ConfigError, RuleSettings
from maildesk.config.table import Table

PRIORITIES = ("low", "medium", "high", "urgent")
# the keys that match, as the config names them, and the field each fills
MATCHERS = {"from": "sender", "to": "recipients", "subject": "subject", "body": "body"}
MAX_PATTERN_CHARS = 1000


def read_rules(
    data: dict[str, Any], path: Path, teams: Collection[str], agents: Collection[str]
) -> tuple[RuleSettings, ...]:
    """Every ``[[rules]]`` table, in order; names are unique."""
    items = data.get("rules", [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: [[rules]]: must be an array of tables ([[rules]])")
    rules: list[RuleSettings] = []
    for index, item in enumerate(items):
        table = Table(item, f"[[rules]] #{index + 1}", path)
        rule = _read_rule(table, teams, agents)
        table.finish()
        if any(r.name == rule.name for r in rules):
            raise table.fail("name", f"duplicate rule name {rule.name!r}")
        rules.append(rule)
    return tuple(rules)


KEYS = ("name", *MATCHERS, "team", "priority", "tags", "assign", "ignore", "acknowledge", "stop")


def _read_rule(t: Table, teams: Collection[str], agents: Collection[str]) -> RuleSettings:
    unknown = sorted(set(t.data) - set(KEYS))
    if unknown:  # before anything else: a misspelt key is the likeliest mistake
        raise t.fail(unknown[0], "unknown key")
    name = t.get("name", str, required=True)
    if not name.strip() or len(name) > 64:
        raise t.fail("name", f"must be a short name (1 to 64 characters), got {name!r}")
    matchers = {field: _pattern(t, key) for key, field in MATCHERS.items()}
    if all(pattern is None for pattern in matchers.values()):
        raise t.fail("from", "a rule needs at least one of from, to, subject, body")
    team = t.get("team", str)
    if team is not None and team not in teams:
        raise t.fail("team", f"team {team!r} does not exist in [[teams]]")
    priority = t.get("priority", str)
    if priority is not None and priority not in PRIORITIES:
        raise t.fail("priority", f"must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    tags = tuple(tag.lower() for tag in t.strings("tags"))
    for tag in tags:
        if not re.fullmatch(r"[\w.-]{1,64}", tag):
            raise t.fail("tags", f"tags are single words (letters, digits, . _ -), got {tag!r}")
    assign = t.address("assign") if "assign" in t.data else None
    if assign is not None and assign not in agents:
        raise t.fail("assign", f"{assign} is not an agent in [[agents]]")
    return RuleSettings(
        name=name,
        **matchers,
        team=team,
        priority=priority,
        tags=tags,
        assign=assign,
        ignore=t.get("ignore", bool, False),
        acknowledge=t.get("acknowledge", bool, True),
        stop=t.get("stop", bool, False),
    )


def _pattern(t: Table, key: str) -> str | None:
    pattern = t.get(key, str)
    if pattern is None:
        return None
    if not pattern or len(pattern) > MAX_PATTERN_CHARS:
        raise t.fail(key, f"a regular expression of 1 to {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise t.fail(key, f"not a valid regular expression: {exc}") from None
    return pattern
