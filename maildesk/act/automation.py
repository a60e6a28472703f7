"""The timers: pending reminders, auto-close, SLA targets and breaches, business-hours clocks.

Sits beside ``ingest``: where ingest acts on a message, this acts on the passing of time. The
daemon runs ``run_pass`` right after start and then every minute (``run --once`` runs one pass
after the mailboxes are drained). ``decide`` looks at one ticket and the time and returns what
is due as values (``Remind``, ``AutoClose``, ``Breach``); ``carry_out`` applies them through the
lifecycle rules of ``tickets`` inside the caller's transaction, one transaction per ticket, so
the mail they cause is written to the outbox with the change. Each decision records itself on
the ticket (``reminded_at``, the status, ``sla_breached``), so a pass repeated after a crash or by
a second daemon finds nothing left to do.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maildesk.act.apply import Scene, carry_out, state_of
from maildesk.act.means import Desk
from maildesk.act.notices import admin_alert, customer_mail, enqueue, notify_owner
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event, set_status, utc_text
from maildesk.config import Settings
from maildesk.desk import sla, verbs
from maildesk.desk.plans import Plan
from maildesk.models import Database, DatabaseError, Event, Status, Ticket

log = logging.getLogger("maildesk.automation")  # the logs name the job, not the module path

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
    if ticket.status == Status.CLOSED:
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


# --------------------------------------------------------------------------- actions


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


def act_on(
    session: Session, desk: Desk, ticket: Ticket, decision: Decision, now: datetime
) -> list[Mail]:
    """Apply one decision to ``ticket``; returns the mail it causes (for ``notices.enqueue``)."""
    settings = desk.settings
    match decision:
        case Remind(waited=waited):
            ticket.reminded_at = now
            event(session, ticket, "reminded", "", now, waited=human(waited))
            close_after = settings.lifecycle.close_pending_after
            closes_at = ticket.status_since + close_after if close_after is not None else None
            return [
                customer_mail(
                    desk,
                    ticket,
                    "reminder",
                    "reminder",
                    waited=human(waited),
                    closes_after=human(close_after) if close_after is not None else None,
                    closes_at=when(closes_at, settings) if closes_at is not None else None,
                )
            ]
        case AutoClose(waited=waited):
            set_status(ticket, Status.CLOSED, now)
            event(session, ticket, "auto_closed", "", now, waited=human(waited))
            return [customer_mail(desk, ticket, "auto_closed", "auto_closed", waited=human(waited))]
        case Hold(since=since):
            ticket.reminded_at = now  # this pending period's reminder is dealt with: held
            event(
                session,
                ticket,
                "timers_held",
                "",
                now,
                reason=f"the requester's address {ticket.requester} bounced permanently on "
                f"{utc_text(since)}: no reminder and no auto-close until they write again",
            )
            return []
        case Breach():
            return breach(Scene(session, desk, ticket, None, None, now), decision)
    raise AssertionError(f"unhandled decision {decision!r}")


def breach(scene: Scene, decision: Breach) -> list[Mail]:
    """A missed SLA target: recorded, the owner told; with ``escalate_to``, escalated."""
    ticket, settings, now = scene.ticket, scene.desk.settings, scene.now
    target, team = decision.target, decision.escalate_to
    ticket.sla_breached = ",".join([*sla.breached(ticket), target.name])
    event(scene.session, ticket, "sla_breached", "", now, target=target.name, due=iso(target.due))
    mails = notify_owner(
        scene.desk,
        ticket,
        "notice",
        "agent_sla",
        now,
        target=target.label,
        due=when(target.due, settings),
        escalate_to=team if team != ticket.team else None,
    )
    if team is not None and team != ticket.team:
        summary = f"The {target.label} target ({when(target.due, settings)}) was missed."
        by = f"{settings.desk.name} (missed the {target.label} target)"
        _, steps = verbs.escalation(
            state_of(ticket), team, scene.desk.directory, verbs.Escalator("", by, summary, summary)
        )
        mails += carry_out(scene, Plan(steps))
    return mails


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the pass


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one timer pass did, for the log and the tests."""

    reminded: int = 0
    closed: int = 0
    breached: int = 0
    failed: int = 0
    held: int = 0


def candidates(session: Session, settings: Settings, now: datetime) -> list[int]:
    """Tickets that may have something due: past their ``due_at``, or pending long enough to
    close, or long enough for a reminder they have not had."""
    lifecycle = settings.lifecycle
    pending = Ticket.status == Status.PENDING
    not_reminded = Ticket.reminded_at.is_(None) | (Ticket.reminded_at < Ticket.status_since)
    # a bounced requester's ticket comes up once a pending period, to be held (``Hold``)
    reachable = Ticket.requester_bounced_at.is_(None) | not_reminded
    conditions = [Ticket.due_at <= now]
    if lifecycle.close_pending_after is not None:
        old_enough = Ticket.status_since <= now - lifecycle.close_pending_after
        conditions.append(pending & old_enough & reachable)
    if lifecycle.remind_pending_after is not None:
        conditions.append(
            pending & (Ticket.status_since <= now - lifecycle.remind_pending_after) & not_reminded
        )
    query = select(Ticket.id).where(Ticket.status != Status.CLOSED, or_(*conditions))
    return list(session.scalars(query.order_by(Ticket.id)))


KEYS = {Remind: "reminded", AutoClose: "closed", Breach: "breached", Hold: "held"}


def run_pass(db: Database, desk: Desk, *, refresh: bool = False) -> PassResult:
    """One pass of the timers over every ticket with something due, a transaction each.

    ``refresh`` first recomputes ``due_at`` of every ticket not closed (at start: the SLA
    settings may have changed since the tickets were last touched). A ticket whose action
    fails is rolled back and left for the next pass, and the others carry on; its failure is
    reported once (``report_failure``). A database outage ends the pass for the caller.
    """
    now = desk.clock()
    if refresh:
        _refresh_all(db, desk.settings)
    with db.transaction() as session:
        ids = candidates(session, desk.settings, now)
    counts = {"reminded": 0, "closed": 0, "breached": 0, "failed": 0, "held": 0}
    for ticket_id in ids:
        try:
            with db.transaction() as session:
                done = _act_on(session, desk, ticket_id, now)
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - one ticket's failure must not stop the others
            counts["failed"] += 1
            report_failure(db, desk, ticket_id, exc, now)
            continue
        for decision in done:
            key = KEYS[type(decision)]
            counts[key] += 1
    return PassResult(**counts)


def report_failure(db: Database, desk: Desk, ticket_id: int, exc: Exception, now: datetime) -> None:
    """A ticket's timers failed (rolled back, tried again every pass). The first time with
    this error: one log line, a ``timer_failed`` event on the ticket and one alert to the
    admin. After that each pass only notes it at debug level, so a ticket that always fails
    fills neither the log nor the admin's inbox."""
    ref = desk.settings.desk.ref(ticket_id)
    error = failure_text(exc)
    try:
        reported = _report_once(db, desk, ticket_id, error, now)
    except DatabaseError:
        raise
    except Exception as report_exc:  # noqa: BLE001 - the other tickets' timers come first
        log.error("timers: %s failed: %s; reporting it failed too: %s", ref, error, report_exc)
        return
    if not reported:
        log.debug("timers: %s still fails: %s", ref, error, extra={"ticket": ref})
        return
    log.error(
        "timers: %s failed: %s; tried again every pass, the admin is told once",
        ref,
        error,
        extra={"ticket": ref},
    )
    log.debug("timers: %s failed", ref, exc_info=exc, extra={"ticket": ref})


def _report_once(db: Database, desk: Desk, ticket_id: int, error: str, now: datetime) -> bool:
    """The event and the admin's alert, unless this error on this ticket had them already."""
    ref = desk.settings.desk.ref(ticket_id)
    with db.transaction() as session:
        ticket = session.get(Ticket, ticket_id)
        if ticket is None or _reported(session, ticket_id, error):
            return False
        event(session, ticket, "timer_failed", "", now, error=error)
        alert = admin_alert(
            desk,
            f"timers fail on {ref}",
            f"The reminders, auto-close and SLA clocks of ticket {ref} fail:\n\n  {error}\n\n"
            "Nothing of that pass was applied to the ticket; it is tried again every pass, and "
            "the other tickets' timers carry on. This alert comes once for this ticket and "
            "this error (event timer_failed on the ticket).",
        )
        if alert is not None:
            desk.mailer.enqueue(session, alert, now)
    return True


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def failure_text(exc: Exception) -> str:
    """One line: the error and where it happened (the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    # the same failure must read the same on every pass: no object addresses in it
    message = _ADDRESS.sub("0x…", " ".join(str(exc).split()))[:400]
    return f"{type(exc).__name__}: {message}{where}"


def _reported(session: Session, ticket_id: int, error: str) -> bool:
    """Whether this error on this ticket was reported already."""
    last = session.scalar(
        select(Event.detail)
        .where(Event.ticket_id == ticket_id, Event.kind == "timer_failed")
        .order_by(Event.id.desc())
        .limit(1)
    )
    return last is not None and json.loads(last).get("error") == error


def _act_on(session: Session, desk: Desk, ticket_id: int, now: datetime) -> tuple[Decision, ...]:
    ticket = session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        return ()
    decisions = decide(ticket, desk.settings, now)
    mails: list[Mail] = []
    for decision in decisions:
        mails += act_on(session, desk, ticket, decision, now)
        log.info("%s: %s", desk.ref(ticket), describe(decision), extra={"ticket": desk.ref(ticket)})
    sla.refresh_due(ticket, desk.settings)
    enqueue(session, desk, mails, now)
    return decisions


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


def _refresh_all(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        for ticket in session.scalars(select(Ticket).where(Ticket.status != Status.CLOSED)):
            due = sla.next_due(ticket, settings)
            if ticket.due_at != due:
                ticket.due_at = due
