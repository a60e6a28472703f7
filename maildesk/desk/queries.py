"""The query grammar: ``#list``, ``#show``, ``#search`` and ``#help`` lines an agent mails the
desk, read into values; and the ``Selection`` of tickets ``#list`` and ``tickets list`` share.

Third stage for routing's ``FromAgent`` once the act layer has proven the sender: a mail on no
ticket whose first command line is a query is a query mail (``asked``), answered with one mail
(``act.queries``) and changing nothing. Pure: the body, the desk's teams and the asking agent
in, values out; nothing here reads the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from maildesk.config import MAX_TICKET_NUMBER
from maildesk.models import Status

VERBS = ("list", "show", "search", "help")
SCOPES = ("mine", "unassigned", "team", "overdue", "all")
STATUSES = ("open", "pending", "escalated", "closed", "spam")
MAX_QUERIES = 10  # query lines answered per mail; the rest are counted, not read
MAX_LINES_READ = 1000  # lines at the top of a mail looked at for queries
MAX_QUERY_CHARS = 200  # of one query line
LIST_ROWS = 50  # tickets a #list shows; it says how many more match

# ``#verb`` at the start of a line (a letter after ``#``: ``#1042`` is a ticket number)
_VERB = re.compile(r"#([A-Za-z][A-Za-z0-9_-]*)[.,;:!?]*")
# a ticket's number as ``#show`` takes it: 12, #12, [#12] or the desk's ref
_NUMBER = re.compile(r"\d{1,12}")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which tickets a listing shows, as ``#list`` and ``maildesk tickets list`` ask for them.

    ``status`` None: every status but spam. ``assignee`` an agent's address, ``unassigned``
    tickets nobody has; ``team``, ``tag`` and ``requester`` as stored; ``since``: created at
    or after; ``overdue``: not closed, with an SLA target missed (as the timers mark it)."""

    status: Status | None = None
    assignee: str | None = None
    unassigned: bool = False
    team: str | None = None
    tag: str | None = None
    requester: str | None = None
    since: datetime | None = None
    overdue: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """``#list``: the tickets of ``selection`` (at most ``LIST_ROWS`` shown)."""

    source: str
    selection: Selection
    scope: str  # what the answer calls it: "mine open", "team billing closed", ...


@dataclass(frozen=True, slots=True)
class ShowQuery:
    """``#show <ref>``: ticket ``number``'s whole timeline."""

    source: str
    number: int


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """``#search <words>``."""

    source: str
    words: str


@dataclass(frozen=True, slots=True)
class HelpQuery:
    """``#help``: the query commands and the ticket commands."""

    source: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A query line that cannot be answered, and why (the answer says so, with the help)."""

    source: str
    reason: str


Query = ListQuery | ShowQuery | SearchQuery | HelpQuery | Refused


@dataclass(frozen=True, slots=True)
class Asked:
    """The queries of one mail, in order; ``unread``: query lines past ``MAX_QUERIES``."""

    queries: tuple[Query, ...]
    unread: int = 0

    @property
    def refused(self) -> bool:
        return any(isinstance(q, Refused) for q in self.queries)


def _verb(line: str) -> str | None:
    words = line.split(maxsplit=1)
    match = _VERB.fullmatch(words[0]) if words else None
    return match.group(1).lower() if match else None


def command_lines(body: str) -> list[str]:
    """The command lines at the top of ``body`` (blank lines between them allowed), up to the
    first other line; at most ``MAX_LINES_READ`` lines are looked at."""
    lines: list[str] = []
    for number, line in enumerate(body.splitlines()):
        if number >= MAX_LINES_READ:
            break
        if not line.strip():
            continue
        if _verb(line) is None:
            break
        lines.append(line.strip())
    return lines


def is_query(body: str) -> bool:
    """Whether a mail on no ticket asks queries: its first command line is one."""
    lines = command_lines(body)
    return bool(lines) and _verb(lines[0]) in VERBS


def asking(subject: str, body: str) -> str | None:
    """The text whose command lines are a mail's queries, or None when it asks none: its
    subject followed by its body when the subject is one (on a phone, typing ``#list`` as the
    subject is the quickest way), else its body when that begins with one."""
    written = subject.strip()
    if is_query(written):
        return f"{written}\n{body}"
    return body if is_query(body) else None


def asked(body: str, agent: str, teams: Sequence[str]) -> Asked:
    """The queries of ``body``'s command lines, one per line, for ``agent``; a line that is
    not one of them (``#new``, a ticket's command, a misspelt verb) is refused."""
    lines = command_lines(body)
    read = lines[:MAX_QUERIES]
    queries = tuple(query(line, agent, teams) for line in read)
    return Asked(queries, len(lines) - len(read))


def query(line: str, agent: str, teams: Sequence[str]) -> Query:
    """One query line as a value."""
    source = _short(line)
    if len(line) > MAX_QUERY_CHARS:
        return Refused(source, f"longer than {MAX_QUERY_CHARS} characters")
    verb = _verb(line) or ""
    args = line.split()[1:]
    match verb:
        case "list":
            return list_query(source, args, agent, teams)
        case "show":
            return show_query(source, args)
        case "search":
            if not args:
                return Refused(source, "name the words to look for: #search printer jam")
            return SearchQuery(source, " ".join(args))
        case "help":
            return HelpQuery(source) if not args else Refused(source, "#help takes no arguments")
    known = ", ".join("#" + v for v in VERBS)
    if verb == "new":
        return Refused(source, f"#new starts a ticket: send it in a mail of its own ({known})")
    return Refused(source, f"not a query; the queries are {known}")


def list_query(source: str, args: Sequence[str], agent: str, teams: Sequence[str]) -> Query:
    """``#list [mine|unassigned|team <name>|overdue|all] [open|pending|escalated|closed|spam]``,
    ``mine open`` by default; the status may come first too (``#list pending team support``),
    as agents write it."""
    words = [a.rstrip(".,;:!?") for a in args]
    status = "open"
    if words and words[-1].lower() in STATUSES:
        status = words.pop().lower()
    elif words and words[0].lower() in STATUSES:
        status = words.pop(0).lower()
    scope = words[0].lower() if words else "mine"
    rest = words[1:]
    shown = f"{scope} {status}"
    chosen = Selection(status=Status(status), limit=LIST_ROWS)
    if scope not in SCOPES:
        return Refused(source, f"list what? {' | '.join(SCOPES)}, then a status: {_STATUS}")
    if scope == "team":
        if not rest:
            return Refused(source, f"name the team: #list team {teams[0] if teams else 'support'}")
        name = team_named(" ".join(rest), teams)
        if name is None:
            return Refused(source, f"no team called {' '.join(rest)} (known: {', '.join(teams)})")
        return ListQuery(source, replace(chosen, team=name), f"team {name} {status}")
    if rest:
        return Refused(source, f"{scope} takes no more words; a status comes last: {_STATUS}")
    selections = {
        "mine": replace(chosen, assignee=agent),
        "unassigned": replace(chosen, unassigned=True),
        "overdue": replace(chosen, overdue=True),
        "all": chosen,
    }
    return ListQuery(source, selections[scope], shown)


_STATUS = " | ".join(STATUSES)


def team_named(name: str, teams: Sequence[str]) -> str | None:
    """The desk's team called ``name`` (case and spacing aside), None when there is none."""
    wanted = " ".join(name.lower().split())
    return next((t for t in teams if " ".join(t.lower().split()) == wanted), None)


def show_query(source: str, args: Sequence[str]) -> Query:
    """``#show <ref>``: one ref (``12``, ``#12``, ``[#12]``), a ticket's number."""
    if len(args) != 1:
        return Refused(source, "name one ticket: #show 12")
    found = _NUMBER.search(args[0])
    if found is None or not _NUMBER.fullmatch(re.sub(r"[\[\]#]", "", args[0]).strip(".,;:!?")):
        return Refused(source, f"{args[0]} is not a ticket's ref: #show 12")
    number = int(found.group())
    if not 0 < number <= MAX_TICKET_NUMBER:
        return Refused(source, f"no ticket {args[0]}")
    return ShowQuery(source, number)


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def since_value(text: str) -> datetime:
    """``--since``: an ISO date (midnight) or date and time, in UTC unless it names its
    offset; ``ValueError`` with what it takes."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not an ISO date or date and time: {text!r} (2026-11-26, 2026-11-26T09:30, "
            "2026-11-26T09:30+01:00; UTC unless an offset is given)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


QUERY_HELP = """\
Queries: mail them to your personal desk address, one per line at the top of your message.
The desk answers you alone, with one mail, and changes nothing.

#list [mine | unassigned | team <name> | overdue | all] [open | pending | escalated | closed | spam]
    Tickets, 50 at most (mine open when you name none).  Example: #list team billing pending
#show <ref>
    A ticket's whole history, with its files; reply to the answer to act on it.
                                                      Example: #show 1042
#search <words>
    The 20 tickets that match best, a line of each.   Example: #search printer jam
#help
    This list, and the commands for a ticket.        Example: #help
"""
