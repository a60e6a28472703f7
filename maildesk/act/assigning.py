"""A new ticket's assignee: the facts the choice needs, read from the database.

Reached from ``tickets.open_ticket``: a rule's agent wins; else the team's automatic
assignment (``[[teams]] assign``) is decided by ``desk.assignment`` from what is stored, not
from memory, so turns stay fair across restarts and across daemons on one database: the last
round-robin turn of the team is its newest ``assigned`` event of that kind, and an agent's load
is their tickets not closed. Two mails of one team committed at the same moment by two
processes can read the same turn; each turn after that reads the newer one.
"""

from __future__ import annotations

import json

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maildesk.act.means import Desk
from maildesk.config import AssignBy
from maildesk.desk import assignment
from maildesk.desk.assignment import Assigned
from maildesk.desk.customers import Intake
from maildesk.desk.rules import Ruling
from maildesk.models import Event, Status, Ticket


def intake(session: Session, desk: Desk, ruling: Ruling) -> Intake:
    """The rules' steps, then the assignee's (a rule's agent if available, else the team's
    turn)."""
    settings = desk.settings
    agent = settings.agent(ruling.assignee)
    if agent is not None and ruling.by is not None:
        chosen = assignment.by_rule(agent, ruling.by)  # None: they are on leave
        if chosen is not None:
            return Intake((*ruling.steps, *chosen.steps(ruling.team, ruling.by)), chosen)
    team = settings.team(ruling.team)
    how = team.assign if team is not None else AssignBy.NONE
    if how is AssignBy.NONE:
        return Intake(ruling.steps)
    agents = settings.team_agents(ruling.team)
    last = last_turn(session, ruling.team) if how is AssignBy.ROUND_ROBIN else None
    counts = open_counts(session, [a.email for a in agents]) if how is AssignBy.LEAST_OPEN else {}
    automatic: Assigned | None = assignment.automatic(how, agents, last, counts)
    if automatic is None:
        return Intake(ruling.steps)
    return Intake((*ruling.steps, *automatic.steps(ruling.team)), automatic)


def last_turn(session: Session, team: str) -> str | None:
    """The agent the team's newest round-robin assignment went to (the event's detail is
    JSON with sorted keys, so ``how`` and ``team`` end it)."""
    escaped = team.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    ending = f'%"how": "round\\_robin", "team": "{escaped}"}}'
    detail = session.scalar(_LAST_TURN, {"ending": ending})
    if not detail:
        return None
    assignee = json.loads(detail).get("assignee")
    return assignee if isinstance(assignee, str) else None


def open_counts(session: Session, agents: list[str]) -> dict[str, int]:
    """How many tickets each agent has that are open, pending or escalated."""
    if not agents:
        return {}
    rows = session.execute(_OPEN_COUNTS, {"agents": agents})
    return {assignee: int(count) for assignee, count in rows if assignee is not None}


NOT_CLOSED = (Status.OPEN, Status.PENDING, Status.ESCALATED)

# Built once: composing a statement costs more than running it.
_LAST_TURN = (
    select(Event.detail)
    .where(Event.kind == "assigned", Event.detail.like(bindparam("ending"), escape="\\"))
    .order_by(Event.id.desc())
    .limit(1)
)
_OPEN_COUNTS = (
    select(Ticket.assignee, func.count())
    .where(
        Ticket.assignee.in_(bindparam("agents", expanding=True)),
        Ticket.status.in_([status.value for status in NOT_CLOSED]),
    )
    .group_by(Ticket.assignee)
)
