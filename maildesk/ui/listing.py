"""The listing verbs: ``tickets list``, ``tickets show``, ``agents list``, ``agents address``,
``teams list`` and ``canned list``, as tables or ``--json``.

Read-only verbs of the command line, under ``cli``: each reads the settings and opens one
transaction (``start``), and shows tickets with the views shared with the demo.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from maildesk.act.selection import select_tickets
from maildesk.config import MAX_TICKET_NUMBER, Settings
from maildesk.desk import queries
from maildesk.desk.queries import Selection
from maildesk.mail import marks
from maildesk.models import Status, Ticket
from maildesk.ui.start import load_settings, open_db, open_desk_db
from maildesk.ui.views import render_ticket, table, ticket_detail, ticket_summary


def cmd_tickets_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        chosen = list_selection(args, settings)
    except ValueError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return 2
    db = open_db(settings)
    with db.transaction() as session:
        found = select_tickets(session, chosen)
        tickets = [ticket_summary(t, settings.desk.ref_format) for t in found.tickets]
    if args.json:
        print(json.dumps(tickets, indent=2, ensure_ascii=False))
    else:
        rows = [
            (
                t["ref"],
                t["status"],
                t["priority"],
                t["team"],
                t["assignee"],
                t["requester"],
                t["subject"],
            )
            for t in tickets
        ]
        print(
            table(rows, ("REF", "STATUS", "PRIORITY", "TEAM", "ASSIGNEE", "REQUESTER", "SUBJECT"))
        )
    return 0


def list_selection(args: argparse.Namespace, settings: Settings) -> Selection:
    """``tickets list``'s flags as the ``Selection`` ``#list`` also makes; ``ValueError``
    naming the flag for a value it cannot take."""
    since = None
    if args.since is not None:
        try:
            since = queries.since_value(args.since)
        except ValueError as exc:
            raise ValueError(f"--since: {exc}") from None
    team = None
    if args.team is not None:
        teams = [t.name for t in settings.teams]
        team = queries.team_named(args.team, teams)
        if team is None:
            raise ValueError(f"--team: no team called {args.team} (known: {', '.join(teams)})")
    assignee = (args.assignee or "").strip().lower()
    if assignee and assignee != "none" and "@" not in assignee:
        raise ValueError(f"--assignee: {args.assignee!r} is not an address (or none)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit: must be positive, got {args.limit}")
    return Selection(
        status=Status(args.status) if args.status else None,
        assignee=assignee if assignee and assignee != "none" else None,
        unassigned=assignee == "none",
        team=team,
        tag=args.tag.strip().lower() if args.tag else None,
        requester=args.requester.strip().lower() if args.requester else None,
        since=since,
        overdue=args.sla_breached,
        limit=args.limit,
    )


def find_ticket(session: Any, settings: Settings, ref: str) -> Ticket | None:
    match = re.search(r"\d+", ref)
    if match is None or not 0 < int(match.group()) <= MAX_TICKET_NUMBER:
        return None
    return session.get(Ticket, int(match.group()))


def cmd_tickets_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        ticket = find_ticket(session, settings, args.ref)
        if ticket is None:
            print(f"maildesk: no ticket {args.ref}", file=sys.stderr)
            return 1
        data = ticket_detail(ticket, settings.desk.ref_format)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    print(render_ticket(data))
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    from maildesk.act import stats

    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        assigned = stats.assigned_counts(session)
    agents: list[dict[str, Any]] = [
        {
            "email": a.email,
            "name": a.name,
            "teams": list(a.teams),
            "open_assigned": assigned.get(a.email, 0),
            "available": a.available,
        }
        for a in settings.agents
    ]
    if args.json:
        print(json.dumps(agents, indent=2, ensure_ascii=False))
    else:
        rows = [
            (
                a["email"],
                a["name"],
                a["open_assigned"],
                ", ".join(a["teams"]),
                "yes" if a["available"] else "no",
            )
            for a in agents
        ]
        print(table(rows, ("EMAIL", "NAME", "OPEN ASSIGNED", "TEAMS", "AVAILABLE")))
    return 0


def cmd_agents_address(args: argparse.Namespace) -> int:
    """The agent's personal desk address: the desk's address with their token, for mail that
    names no ticket (``#new``); made from the desk's secret, which every host shares."""
    settings = load_settings(args)
    agent = settings.agent(args.email.strip())
    if agent is None:
        print(f"maildesk: no agent {args.email} in [[agents]]", file=sys.stderr)
        return 1
    settings, _ = open_desk_db(settings)
    desk = settings.desk
    print(marks.personal_address(desk.secret, desk.address, agent.email, agent.address_version))
    return 0


def cmd_teams_list(args: argparse.Namespace) -> int:
    from maildesk.act import stats

    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        counts = stats.open_counts(session)
    teams: list[dict[str, Any]] = [
        {
            "name": t.name,
            "agents": [a.email for a in settings.team_agents(t.name)],
            "mailboxes": [m.name for m in settings.mailboxes if m.team == t.name],
            "open_tickets": counts.get(t.name, 0),
        }
        for t in settings.teams
    ]
    if args.json:
        print(json.dumps(teams, indent=2, ensure_ascii=False))
    else:
        rows = [
            (t["name"], t["open_tickets"], ", ".join(t["mailboxes"]) or "-", ", ".join(t["agents"]))
            for t in teams
        ]
        print(table(rows, ("TEAM", "OPEN", "MAILBOXES", "AGENTS")))
    return 0


def cmd_canned_list(args: argparse.Namespace) -> int:
    from maildesk.mail.rendering import Templates

    settings = load_settings(args)
    templates = Templates(settings.desk.templates_dir)
    prefix, suffix = "canned/", ".txt.j2"
    items = []
    for name in templates.names(prefix):
        if name.endswith(suffix):
            source = templates.text.loader.get_source(templates.text, name)[0]  # type: ignore[union-attr]
            lines = [line.strip() for line in source.splitlines() if line.strip()]
            items.append(
                {"name": name[len(prefix) : -len(suffix)], "first_line": lines[0] if lines else ""}
            )
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        print(table([(i["name"], i["first_line"]) for i in items], ("NAME", "FIRST LINE")))
    return 0
