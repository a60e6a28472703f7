"""Answer a proven agent's query mail: read what each query asks, enqueue one mail to them.

Reached from ``act.starts`` for a proven agent's mail on no ticket whose first command line is
a query (``desk.queries``). Nothing is written but the answer's outbox row: no ticket, no
message, no event, nobody else mailed. A ``#show`` answer's Reply-To carries the agent's
reply token for that ticket (and its subject the ticket's ref), so a reply to it acts on it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from maildesk.act import search, selection, showing
from maildesk.act.means import Desk
from maildesk.act.notices import agent_mail, enqueue, personal_address, token_address
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings
from maildesk.desk import commands, guide, queries
from maildesk.desk.timers import utc_text
from maildesk.models import Ticket

log = logging.getLogger("maildesk.tickets")  # the logs name the job, not the module path

KIND = "query"  # the outbox kind of an answer
TEMPLATE = "agent_query"
SEARCH_ROWS = 20  # matches a #search shows


def answer(
    session: Session, desk: Desk, agent: AgentSettings, asked: queries.Asked, now: datetime
) -> str:
    """Enqueue the one answer to ``asked``; returns what the ledger says of the mail."""
    sections: list[dict[str, Any]] = []
    shows: list[showing.Shown] = []
    # the answer's #show share one bound of text, however many it asks
    room = showing.ALL_TEXT_CHARS // max(
        sum(isinstance(q, queries.ShowQuery) for q in asked.queries), 1
    )
    for query in asked.queries:
        match query:
            case queries.ListQuery():
                sections.append(listed(session, desk, query, now))
            case queries.ShowQuery(source=source, number=number):
                show = showing.shown(session, desk, number, source, room)
                shows += [show] if show.ticket is not None else []
                sections.append(show.section)
            case queries.SearchQuery(source=source, words=words):
                sections.append(searched(session, desk, source, words))
            case queries.HelpQuery(source=source):
                sections.append({"kind": "help", "source": source})
            case queries.Refused(source=source, reason=reason):
                sections.append({"kind": "refused", "source": source, "reason": reason})
    attached, files = showing.chosen(desk, shows)
    for show, listed_files in zip(shows, files, strict=True):
        show.section["files"] = listed_files
    mail = answer_mail(desk, agent, sections, shows, now, unread=asked.unread)
    enqueue(session, desk, [replace(mail, attachments=attached)], now)
    said = ", ".join(s["source"] for s in sections)
    log.info("queries from %s answered: %s", agent.email, said, extra={"ticket": "-"})
    return f"queries from {agent.email} answered: {said}"[:2000]


def answer_mail(
    desk: Desk,
    agent: AgentSettings,
    sections: list[dict[str, Any]],
    shows: list[showing.Shown],
    now: datetime,
    *,
    unread: int = 0,
) -> Mail:
    """The answer: about the one ticket it shows (its reply token in Reply-To, its ref in the
    subject), else about none, its Reply-To the agent's personal address. The list of commands
    when the agent asked (``#help``) or a query was refused."""
    tickets = {show.ticket.id: show.ticket for show in shows if show.ticket is not None}
    address = personal_address(desk, agent)
    asks_help = any(s["kind"] in ("help", "refused") for s in sections)
    context = {
        "sections": sections,
        "address": address,
        "one": len(tickets) == 1,
        "unread": unread,
        "help": commands.HELP if asks_help or unread else "",
        "queries_help": queries.QUERY_HELP,
    }
    if len(tickets) == 1:
        [ticket] = tickets.values()
        mail = agent_mail(desk, ticket, agent, KIND, TEMPLATE, now, **context)
        return replace(mail, context={**mail.context, "notice_help": guide.NOTICE_HELP})
    for section in sections:
        shown = tickets.get(section.get("number", 0)) if section["kind"] == "show" else None
        if shown is not None:
            section["address"] = token_address(desk, shown, agent, now)
    return Mail(
        kind=KIND,
        template=TEMPLATE,
        to=agent.email,
        context={
            "agent": {"email": agent.email, "name": agent.name},
            "notice_help": "",
            **context,
        },
        to_agent=True,
        reply_to=address,
    )


def on_ticket(desk: Desk, agent: AgentSettings, parsed: commands.Parsed) -> tuple[str, ...]:
    """For the receipt of a mail on a ticket whose commands were refused: where queries go,
    when one of them is a query (on a ticket they are no commands)."""
    if not any(c.verb in queries.VERBS and c.verb != "help" for c in parsed.commands):
        return ()
    address = personal_address(desk, agent)
    return (
        "#list, #show and #search are queries, not commands for a ticket: mail them on lines "
        f"of their own to your personal desk address, {address}",
    )


def listed(session: Session, desk: Desk, query: queries.ListQuery, now: datetime) -> dict[str, Any]:
    """``#list``: a row per ticket, and how many more match than it shows."""
    found = selection.select_tickets(session, query.selection)
    rows = [row(desk, ticket, now) for ticket in found.tickets]
    return {
        "kind": "list",
        "source": query.source,
        "scope": query.scope,
        "rows": rows,
        "more": found.total - len(rows),
    }


def row(desk: Desk, ticket: Ticket, now: datetime) -> dict[str, str]:
    """A ticket as ``#list`` shows it."""
    if ticket.sla_breached:
        due = "missed: " + ticket.sla_breached.replace(",", ", ").replace("_", " ")
    elif ticket.due_at is not None:
        due = utc_text(ticket.due_at) + (" (passed)" if ticket.due_at <= now else "")
    else:
        due = "-"
    return {
        "ref": desk.ref(ticket),
        "subject": commands.defang(ticket.subject),
        "requester": ticket.requester or "-",
        "status": str(ticket.status),
        "priority": ticket.priority,
        "age": age(now - ticket.created_at),
        "due": due,
    }


def age(elapsed: timedelta) -> str:
    """``3d 4h``, ``5h 12m``, ``7m``."""
    minutes = max(int(elapsed.total_seconds() // 60), 0)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def searched(session: Session, desk: Desk, source: str, words: str) -> dict[str, Any]:
    """``#search``: the best ``SEARCH_ROWS`` matches (``act.search``), a line of context each."""
    found = search.find(session, words, limit=SEARCH_ROWS)
    rows = [
        {
            "ref": desk.settings.desk.ref(match.ticket_id),
            "subject": commands.defang(match.subject),
            "requester": match.requester or "-",
            "status": str(match.status),
            "at": utc_text(match.at),
            "context": commands.defang(match.context),
        }
        for match in found
    ]
    return {"kind": "search", "source": source, "words": words, "rows": rows}
