"""Who a new ticket is assigned to: a rule's agent, or the team's automatic assignment.

Between the rules (``rules.judge``) and the act layer that opens the ticket: the team's way of
assigning (``[[teams]] assign``), its agents in the config's order and what the database says
(the agent the team's last round-robin turn went to, how many tickets not closed each agent
has) in; the assignee and the plan's steps out. Only agents with ``available = true`` take
turns. Pure: the act layer reads the facts (``act.assigning``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from maildesk.config import AgentSettings, AssignBy
from maildesk.desk.plans import Plan, Record, Reply, SetAssignee, Step, TicketState, preview


@dataclass(frozen=True, slots=True)
class Assigned:
    """A new ticket's assignee, how they were chosen (``rule``, ``round_robin``,
    ``least_open``) and the words that tell them (``by``, in the notice)."""

    assignee: str
    how: str
    by: str

    def steps(self, team: str, rule: str | None = None) -> tuple[Step, ...]:
        detail = {"assignee": self.assignee, "how": self.how, "team": team}
        if rule is not None:
            detail["rule"] = rule
        return (SetAssignee(self.assignee), Record("assigned", "", detail))


def by_rule(agent: AgentSettings, rule: str) -> Assigned | None:
    """A rule's agent; None when they are not available (on leave): the team's way decides."""
    return Assigned(agent.email, "rule", f"rule {rule}") if agent.available else None


def turn(agents: Sequence[AgentSettings], last: str | None) -> str | None:
    """Round robin: the first available agent after ``last`` (the agent the team's previous turn
    went to) in the config's order, wrapping round; the first available one when ``last`` is
    nobody or no longer of the team."""
    emails = [agent.email for agent in agents]
    start = emails.index(last) + 1 if last in emails else 0
    for agent in [*agents[start:], *agents[:start]]:
        if agent.available:
            return agent.email
    return None


def least_open(agents: Sequence[AgentSettings], open_counts: Mapping[str, int]) -> str | None:
    """The available agent with the fewest tickets not closed (open, pending, escalated);
    the first in the config's order among equals."""
    available = [agent for agent in agents if agent.available]
    if not available:
        return None
    return min(available, key=lambda agent: open_counts.get(agent.email, 0)).email


def automatic(
    how: AssignBy,
    agents: Sequence[AgentSettings],
    last: str | None,
    open_counts: Mapping[str, int],
) -> Assigned | None:
    """The team's automatic assignment of a new ticket, if it has one and an agent is free."""
    if how is AssignBy.ROUND_ROBIN:
        chosen = turn(agents, last)
    elif how is AssignBy.LEAST_OPEN:
        chosen = least_open(agents, open_counts)
    else:
        return None
    if chosen is None:
        return None
    return Assigned(chosen, how.value, WORDS[how])


WORDS = {
    AssignBy.ROUND_ROBIN: "the team's round-robin assignment",
    AssignBy.LEAST_OPEN: "the team's assignment to the agent with the fewest open tickets",
}


CLAIMED = "assigned to you: you answered it while nobody had it ([lifecycle] claim_on_reply)"


def claimed(plan: Plan, before: TicketState, agent: str) -> Plan:
    """An agent's public reply (never a note) to a ticket nobody has, nor gets by this mail's
    own ``#assign``: the ticket becomes theirs before the reply goes out (event ``assigned``,
    how ``reply``), and their receipt says so."""
    at = next((i for i, step in enumerate(plan.steps) if isinstance(step, Reply)), None)
    if at is None or preview(before, plan).assignee is not None:
        return plan
    claim = (SetAssignee(agent), Record("assigned", agent, {"assignee": agent, "how": "reply"}))
    steps = (*plan.steps[:at], *claim, *plan.steps[at:])
    return Plan(steps, (*plan.applied, CLAIMED))
