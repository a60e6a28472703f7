"""A customer's new ticket as it comes in: the config's rules decide whether there is one.

Reached from ``ingest.handle`` for a mail that starts a conversation (``open_new``): the rules
(``desk.rules``, on the names the parse worker found to match) decide whether it is a ticket at
all, its team and what else changes; ``tickets.open_ticket`` opens it (``assigning`` gives it
its assignee).
"""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.act import tickets
from maildesk.act.starts import Arrival
from maildesk.desk import rules
from maildesk.models import Ticket


@dataclass(frozen=True, slots=True)
class Opened:
    """The new ticket (None: a rule ignores the mail), and what the ledger says of it."""

    ticket: Ticket | None
    reason: str = ""


def open_new(arrival: Arrival, *, quiet: bool, spam: str | None) -> Opened:
    """The ticket a customer's mail opens: the rules decide its team, what else changes, and
    whether there is one (``ignore``). Spam (the MTA's verdict) is a spam ticket nobody is told
    of, whatever the rules say."""
    desk, inbound = arrival.desk, arrival.inbound
    if spam:
        opening = tickets.Opening(arrival.team, arrival.mailbox, False, spam=spam)
        return Opened(_open(arrival, opening), f"spam: {spam}")
    ruling = rules.judge(desk.settings.rules, inbound.matched, inbound.slow, arrival.team)
    if ruling.ignored_by is not None:
        return Opened(None, f"rule {ruling.ignored_by}: ignore")
    acknowledge = ruling.acknowledge and not quiet
    opening = tickets.Opening(ruling.team, arrival.mailbox, acknowledge, ruling=ruling)
    return Opened(_open(arrival, opening))


def _open(arrival: Arrival, opening: tickets.Opening) -> Ticket:
    return tickets.open_ticket(
        arrival.session, arrival.desk, arrival.inbound, arrival.stored, opening, arrival.now
    )
