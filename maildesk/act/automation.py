"""The timers: pending reminders, auto-close, SLA targets and breaches, business-hours clocks.

Sits beside ``ingest``: where ingest acts on a message, this acts on the passing of time. The
daemon runs ``run_pass`` right after start and then every minute (``run --once`` runs one pass
after the mailboxes are drained). ``desk.timers`` decides what is due on one ticket and plans
it; ``act.apply`` carries the plans out inside the ticket's transaction, one transaction per
ticket, so the mail they cause is written to the outbox with the change. Each decision records itself on
the ticket (``reminded_at``, the status, ``sla_breached``), so a pass repeated after a crash or by
a second daemon finds nothing left to do.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from maildesk.act.apply import Scene, carry_out, state_of
from maildesk.act.means import Desk
from maildesk.act.notices import admin_alert, enqueue
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event
from maildesk.config import Settings
from maildesk.database import Database
from maildesk.desk import sla, timers
from maildesk.models import SHELVED, DatabaseError, Event, Status, Ticket

log = logging.getLogger("maildesk.automation")  # the logs name the job, not the module path

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
    query = select(Ticket.id).where(Ticket.status.not_in(SHELVED), or_(*conditions))
    return list(session.scalars(query.order_by(Ticket.id)))


KEYS = {
    timers.Remind: "reminded",
    timers.AutoClose: "closed",
    timers.Breach: "breached",
    timers.Hold: "held",
}


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


def _act_on(
    session: Session, desk: Desk, ticket_id: int, now: datetime
) -> tuple[timers.Decision, ...]:
    ticket = session.get(Ticket, ticket_id, with_for_update=True)
    if ticket is None:
        return ()
    decisions = timers.decide(ticket, desk.settings, now)
    scene = Scene(session, desk, ticket, None, None, now)
    mails: list[Mail] = []
    for decision in decisions:
        plan = timers.plan(decision, state_of(ticket), desk.settings, desk.directory)
        mails += carry_out(scene, plan)
        ref = desk.ref(ticket)
        log.info("%s: %s", ref, timers.describe(decision), extra={"ticket": ref})
    sla.refresh_due(ticket, desk.settings)
    enqueue(session, desk, mails, now)
    return decisions


def _refresh_all(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        for ticket in session.scalars(select(Ticket).where(Ticket.status.not_in(SHELVED))):
            due = sla.next_due(ticket, settings)
            if ticket.due_at != due:
                ticket.due_at = due
