"""The timers' rules: what the passing of time makes due on a ticket, and its plan.

Pure, like the other rules of the desk: ``decide`` looks at one ticket and the time and returns
what is due as values (``Remind``, ``AutoClose``, ``Breach``, ``Hold``); ``plan`` turns each into
a ``plans.Plan`` that ``act.automation`` carries out in the ticket's transaction. Also here: how
moments and waits read in the mails and events they cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from maildesk.config import Settings
from maildesk.desk import commands, sla, verbs
from maildesk.desk.plans import (
    MarkBreached,
    MarkReminded,
    Notify,
    Plan,
    Record,
    SetStatus,
    Step,
    TicketState,
    Whom,
)
from maildesk.models import SHELVED, Status, Ticket

# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Remind:
    """The ticket has waited on the customer long enough for one reminder."""

    waited: timedelta


@dataclass(frozen=True, slots=True)
class AutoClose:
    """The ticket has waited on the customer long enough to close by itself."""

    waited: timedelta


@dataclass(frozen=True, slots=True)
class Breach:
    """A target was missed: tell the owner, and escalate when the priority says where."""

    target: sla.Target
    escalate_to: str | None


@dataclass(frozen=True, slots=True)
class Hold:
    """A reminder or auto-close is due, but the requester's address bounced permanently (at
    ``since``): neither happens until they write again, and the ticket says so once."""

    since: datetime


Decision = Remind | AutoClose | Breach | Hold


def decide(ticket: Ticket, settings: Settings, now: datetime) -> tuple[Decision, ...]:
    """What is due on ``ticket`` at ``now``; empty when nothing is."""
    if ticket.status in SHELVED:
        return ()
    due = pending_due(ticket, settings, now) if ticket.status == Status.PENDING else []
    if any(isinstance(d, AutoClose) for d in due):
        return tuple(due)  # closing stops every clock: nothing else applies
    agreement = settings.sla.get(ticket.priority)
    done = sla.breached(ticket)
    for target in sla.targets(ticket, settings):
        if target.stopped_at is None and target.name not in done and now >= target.due:
            due.append(Breach(target, agreement.escalate_to if agreement else None))
    return tuple(due)


def pending_due(ticket: Ticket, settings: Settings, now: datetime) -> list[Decision]:
    """What waiting on the customer has made due: the reminder, or closing; held instead, once
    a pending period, when the requester's address bounced permanently."""
    lifecycle = settings.lifecycle
    waited = now - ticket.status_since
    close_after, remind_after = lifecycle.close_pending_after, lifecycle.remind_pending_after
    closing = close_after is not None and waited >= close_after
    reminding = remind_after is not None and waited >= remind_after
    # ``reminded_at`` in this pending period: the reminder was sent, or the timers were held
    dealt_with = ticket.reminded_at is not None and ticket.reminded_at >= ticket.status_since
    if ticket.requester_bounced_at is not None:
        held = (closing or reminding) and not dealt_with
        return [Hold(ticket.requester_bounced_at)] if held else []
    if closing:
        return [AutoClose(waited)]
    return [Remind(waited)] if reminding and not dealt_with else []


def describe(decision: Decision) -> str:
    match decision:
        case Remind(waited=waited):
            return f"reminded the customer after {human(waited)} pending"
        case AutoClose(waited=waited):
            return f"closed after {human(waited)} pending"
        case Breach(target=target, escalate_to=team):
            return f"missed the {target.label} target" + (f", escalating to {team}" if team else "")
        case Hold():
            return "no reminder and no auto-close: the requester's address bounced permanently"
    raise AssertionError(decision)


# --------------------------------------------------------------------------- plans


def plan(
    decision: Decision, state: TicketState, settings: Settings, directory: commands.Directory
) -> Plan:
    """What ``decision`` does to a ticket in ``state``."""
    match decision:
        case Remind():
            return remind(decision, state, settings)
        case AutoClose(waited=waited):
            return Plan(
                (
                    SetStatus(Status.CLOSED),
                    Record("auto_closed", "", {"waited": human(waited)}),
                    Notify(Whom.REQUESTER, "auto_closed", "auto_closed", {"waited": human(waited)}),
                )
            )
        case Hold(since=since):
            reason = (
                f"the requester's address {state.requester} bounced permanently on "
                f"{utc_text(since)}: no reminder and no auto-close until they write again"
            )
            # this pending period's reminder is dealt with: held
            return Plan((MarkReminded(), Record("timers_held", "", {"reason": reason})))
        case Breach():
            return breach(decision, state, settings, directory)
    raise AssertionError(f"unhandled decision {decision!r}")


def remind(decision: Remind, state: TicketState, settings: Settings) -> Plan:
    """One reminder to the customer, saying when the ticket closes by itself (if it does)."""
    waited = human(decision.waited)
    close_after = settings.lifecycle.close_pending_after
    since = state.status_since
    closes_at = since + close_after if close_after is not None and since is not None else None
    context = {
        "waited": waited,
        "closes_after": human(close_after) if close_after is not None else None,
        "closes_at": when(closes_at, settings) if closes_at is not None else None,
    }
    return Plan(
        (
            MarkReminded(),
            Record("reminded", "", {"waited": waited}),
            Notify(Whom.REQUESTER, "reminder", "reminder", context),
        )
    )


def breach(
    decision: Breach, state: TicketState, settings: Settings, directory: commands.Directory
) -> Plan:
    """A missed SLA target: recorded, the owner told; with ``escalate_to``, escalated."""
    target, team = decision.target, decision.escalate_to
    steps: list[Step] = [
        MarkBreached((*state.sla_breached, target.name)),
        Record("sla_breached", "", {"target": target.name, "due": iso(target.due)}),
        Notify(
            Whom.OWNER,
            "notice",
            "agent_sla",
            {
                "target": target.label,
                "due": when(target.due, settings),
                "escalate_to": team if team != state.team else None,
            },
        ),
    ]
    if team is not None and team != state.team:
        summary = f"The {target.label} target ({when(target.due, settings)}) was missed."
        by = f"{settings.desk.name} (missed the {target.label} target)"
        _, escalated = verbs.escalation(
            state, team, directory, verbs.Escalator("", by, summary, summary)
        )
        steps += escalated
    return Plan(tuple(steps))


# --------------------------------------------------------------------------- how moments read


def human(delta: timedelta) -> str:
    """``timedelta(days=3)`` to ``"3 days"``, ``timedelta(minutes=90)`` to ``"90 minutes"``.

    A timer fires a little after its time; the text rounds that away.
    """
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        # whole units, or nearly so ("1 hour" for 61 minutes), or at least two of them
        if seconds >= 2 * size or seconds >= size and seconds % size < size / 10:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def when(moment: datetime, settings: Settings) -> str:
    """A moment as people read it, in the business-hours zone when there is one."""
    zone = ZoneInfo(settings.business_hours.timezone) if settings.business_hours else UTC
    return moment.astimezone(zone).strftime("%a %d %b %Y %H:%M %Z")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_text(moment: datetime) -> str:
    """A moment as agents read it in receipts and notices: ``2026-11-26 09:00 UTC``."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
