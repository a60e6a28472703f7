"""Spam kept out: the MTA's verdict read from the headers it added, and the block list.

Before a message's route is carried out (``act.screen``): a verdict of the desk's own mail
servers makes a new ticket ``spam`` (no acknowledgment, no notice) and keeps a follow-up
quietly; a sender on the block list opens nothing. Only a verdict above the first ``Received:``
line a server outside the desk's wrote counts: a spammer writes any header below it. Values are
read as they arrived (``Inbound.trace``): an encoded word is no verdict. Pure: values in, a
``Route`` out.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from maildesk.desk.routing import FollowUp, Ignore, Ignored, NewTicket, Role, Route
from maildesk.models import Status

_YES = re.compile(r"\s*yes\b", re.IGNORECASE)
_RSPAMD_SPAM = frozenset({"reject", "add header", "rewrite subject"})
_NAMES = {
    "x-spam-flag": "X-Spam-Flag",
    "x-spam-status": "X-Spam-Status",
    "x-rspamd-action": "X-Rspamd-Action",
    "x-spam": "X-Spam",
}
# a Received: line as words and comment marks (one pass, whatever its length)
_TOKEN = re.compile(r"[()]|[^\s()]+")
_LITERAL = re.compile(r"\[(?:ipv6:)?([0-9a-f:.]{1,45})\]")
_CLAUSES = frozenset({"from", "by", "via", "with", "id", "for"})


@dataclass(frozen=True, slots=True)
class Screening:
    """What the screening reads of the desk's settings: whether verdicts count
    (``[intake] spam_headers``) and the desk's own mail servers (``trusted_spam_hosts``)."""

    spam_headers: bool = True
    trusted_hosts: frozenset[str] = frozenset()


def verdict(trace: Iterable[tuple[str, str]], trusted: frozenset[str] = frozenset()) -> str | None:
    """The spam verdict the desk's own servers gave, as ``"X-Spam-Flag: YES"``; None: none.

    ``trace``: Received: and verdict headers, top first, as they arrived. Without ``trusted``
    hosts only a verdict above the topmost Received: counts (the last hop, the desk's own
    server, added it); with them, one above the first Received: that is not from and by those
    hosts. A verdict below that line was written by someone else: it counts neither way."""
    for name, value in trace:
        if name == "received":
            if not trusted or not trusted_hop(value, trusted):
                return None
            continue
        if says_spam(name, value):
            return f"{_NAMES.get(name, name)}: {' '.join(value.split())[:80]}"
    return None


def says_spam(name: str, value: str) -> bool:
    """Whether one verdict header says spam."""
    if name == "x-rspamd-action":
        return " ".join(value.lower().replace("_", " ").split()) in _RSPAMD_SPAM
    return name in _NAMES and _YES.match(value) is not None


def trusted_hop(received: str, trusted: frozenset[str]) -> bool:
    """Whether a Received: line is a hop between the desk's own servers: its ``by`` host is one
    of ``trusted``, and so is the host it came ``from`` (the address in brackets the receiving
    server wrote when it gives one, else the names), if it names one."""
    clause = ""
    depth = 0
    came_from = False
    by: str | None = None
    names: list[str] = []
    literals: list[str] = []
    for token in _TOKEN.findall(received.partition(";")[0].lower()):
        if token in "()":
            depth = max(depth + (1 if token == "(" else -1), 0)
            continue
        if depth == 0 and token in _CLAUSES:
            clause = token
            came_from = came_from or token == "from"
            continue
        if clause == "by" and by is None and depth == 0:
            by = token
        elif clause == "from":
            literals += _LITERAL.findall(token)
            names.append(token)
    if by is None or _host(by) not in trusted:
        return False
    return not came_from or any(_host(h) in trusted for h in (literals or names))


def _host(name: str) -> str:
    return name.strip("[]").removeprefix("ipv6:").rstrip(".").lower()


def blocked(addresses: Iterable[str], patterns: Iterable[str]) -> str | None:
    """The first of ``addresses`` a pattern of ``[intake] blocked_senders`` (a glob on the
    lower-case address) matches, with the pattern, as the reason; None: none does."""
    for address in addresses:
        for pattern in patterns:
            if fnmatch.fnmatchcase(address.lower(), pattern):
                return f"{address} matches blocked_senders {pattern!r}"
    return None


def screen(route: Route, found: str | None, spam: str | None) -> Route:
    """The route once the block list (``found``: why its sender is blocked) and the verdict
    (``spam``) are applied. A blocked sender's mail is ignored; a new ticket with a verdict is
    ``spam``; a follow-up with one (or on a ``spam`` ticket) is kept quietly, like automatic
    mail. An agent's mail is neither: their proof decides."""
    if isinstance(route, FollowUp) and route.role is Role.AGENT:
        return route
    if found is not None and isinstance(route, NewTicket | FollowUp):
        return Ignore(f"blocked sender: {found}", Ignored.BLOCKED)
    if isinstance(route, NewTicket) and spam is not None:
        return dataclasses.replace(route, spam=spam)
    if isinstance(route, FollowUp) and route.automatic is None:
        if spam is not None:
            return dataclasses.replace(route, automatic=f"spam verdict ({spam})")
        if route.ticket.status == Status.SPAM:
            return dataclasses.replace(route, automatic="on a ticket marked spam")
    return route
