"""Carry out one message's route, in one transaction, and record it in the ledger.

``process`` is the whole pipeline for one message, top to bottom: parse (in a worker process,
within the message's time and memory budget: ``parsing``), recognise a message already
handled, keep the raw bytes, classify, route, apply the lifecycle rule, write the ledger row,
commit. Anything unexpected rolls the transaction back and the message is quarantined with
its error recorded; a database outage is transient and propagates so the mail stays on the
server. The caller moves the message on the server only after ``process`` returns.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.act import agents, bounces, intake, spam, starts, tickets
from maildesk.act.apply import Scene
from maildesk.act.means import Desk, StoredMail
from maildesk.act.timeline import event
from maildesk.database import Database
from maildesk.desk import routing, rules
from maildesk.desk.customers import Case
from maildesk.mail.inbound import Inbound, Limits, ReportRecipient
from maildesk.mail.parsing import Budget
from maildesk.models import DatabaseError, Ledger, Outbox, OutboxStatus, RawMail, Ticket, insert_row
from maildesk.store import DamagedFile

log = logging.getLogger("maildesk.ingest")  # the logs name the job, not the module path


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: a mailbox and, for IMAP, its UIDVALIDITY and UID."""

    mailbox: str
    uidvalidity: int | None = None
    uid: int | None = None


class Became(StrEnum):
    """What became of one message (the ledger's ``outcome``, the metrics' label)."""

    NEW_TICKET = "new_ticket"
    FOLLOW_UP = "follow_up"
    IGNORED = "ignored"
    BOUNCE = "bounce"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one message; ``ignored``: why, for an ignored one, in a bounded set."""

    kind: Became
    ticket_id: int | None = None
    reason: str = ""
    message_id: str | None = None
    ignored: routing.Ignored | None = None

    @property
    def quarantined(self) -> bool:
        return self.kind is Became.QUARANTINED


def limits_of(desk: Desk) -> Limits:
    lim = desk.settings.limits
    return Limits(
        max_message_bytes=lim.max_message_bytes,
        max_attachment_bytes=lim.max_attachment_bytes,
        max_mime_depth=lim.max_mime_depth,
        max_parts=lim.max_parts,
        max_headers=lim.max_headers,
        max_text_chars=lim.max_text_chars,
    )


def budget_of(desk: Desk) -> Budget:
    """What parsing one message may cost: the structure limits, seconds and megabytes."""
    lim = desk.settings.limits
    sought = rules.filters_of(desk.settings.rules)
    return Budget(limits_of(desk), lim.parse_seconds, lim.parse_memory_mb, sought)


def process(
    db: Database,
    desk: Desk,
    source: Source,
    raw: bytes,
    *,
    replay: int | None = None,
    parsed: Inbound | None = None,
) -> Outcome:
    """Handle one message from ``source``; returns once its effect is committed. ``parsed``:
    what ``desk.parser`` made of ``raw`` already (the daemon parses the next message meanwhile)."""
    # a large message goes to disk while it is parsed; a smaller one into the transaction
    kept = desk.store.put_raw_soon(raw) if len(raw) > RAW_IN_DATABASE else None
    # in a worker process, within the budget
    inbound = parsed or desk.parser.parse(raw, budget_of(desk))
    if inbound.fatal:
        if kept is not None:
            kept.result()
        return quarantine(db, desk, source, Unhandled(raw, inbound, inbound.fatal), replay=replay)
    try:
        with db.transaction() as session:
            if replay is None:
                seen = already_handled(session, source, inbound, raw, desk.clock())
                if seen is not None:
                    return seen
            stored = keep_raw(session, desk, raw, kept)
            now = desk.clock()
            kind = routing.classify(inbound, desk.identity)
            route = routing.route(inbound, kind, tickets.Lookups(session), desk.identity)
            route = spam.screened(session, desk, route, inbound)  # the block list, verdicts
            outcome = handle(session, desk, source, route, inbound, stored, now)
            write_ledger(session, source, inbound, stored, outcome, now, replay=replay)
    except DatabaseError:
        raise
    except IntegrityError:
        # another daemon committed this very message first (its ledger row won): not poison
        with db.transaction() as session:
            seen = already_handled(session, source, inbound, raw, desk.clock())
        if seen is not None:
            return seen
        raise
    except Exception as exc:  # noqa: BLE001 - poison mail must not stop the mailbox
        reason = f"{type(exc).__name__}: {exc}"
        log.error(
            "cannot handle <%s> from %s: %s\n%s",
            inbound.message_id,
            source.mailbox,
            reason,
            traceback.format_exc(),
            extra={"message_id": inbound.message_id, "ticket": "-", "mailbox": source.mailbox},
        )
        return quarantine(db, desk, source, Unhandled(raw, inbound, reason), replay=replay)
    log_outcome(desk, source, outcome)
    return outcome


# Messages up to this size keep their raw bytes in the database ("db:<sha256>"), in their own
# transaction; larger ones in the blob store on disk, flushed before the commit.
RAW_IN_DATABASE = 1 << 20


def keep_raw(
    session: Session, desk: Desk, raw: bytes, kept: Future[tuple[str, str]] | None = None
) -> StoredMail:
    """Keep the message's verbatim bytes; where they are goes into the ledger and message rows."""
    if len(raw) > RAW_IN_DATABASE:
        path, digest = kept.result() if kept is not None else desk.store.put_raw(raw)
        return StoredMail(path, digest)
    digest = hashlib.sha256(raw).hexdigest()
    insert_row(session, RawMail, {"sha256": digest, "data": raw}, once=True)
    return StoredMail(f"db:{digest}", digest)


def read_raw(session: Session, desk: Desk, raw_path: str) -> bytes:
    """The bytes ``keep_raw`` kept at ``raw_path``."""
    if raw_path.startswith("db:"):
        row = session.get(RawMail, raw_path[3:])
        if row is None:
            raise DamagedFile(f"raw mail {raw_path} is not in the database")
        return row.data
    return desk.store.read(raw_path)


def log_outcome(desk: Desk, source: Source, outcome: Outcome) -> None:
    ref = desk.settings.desk.ref(outcome.ticket_id) if outcome.ticket_id else "-"
    log.info(
        "%s: <%s> %s %s%s",
        source.mailbox,
        outcome.message_id or "no Message-ID",
        outcome.kind.replace("_", " "),
        ref,
        f" ({outcome.reason})" if outcome.reason else "",
        extra={"message_id": outcome.message_id, "ticket": ref, "mailbox": source.mailbox},
    )


def already_handled(
    session: Session, source: Source, inbound: Inbound, raw: bytes, now: datetime
) -> Outcome | None:
    """A message whose effect is already committed: by ledger key, then by Message-ID + content."""
    if source.uid is not None:
        key = session.execute(
            _BY_LEDGER_KEY,
            {"mailbox": source.mailbox, "uidvalidity": source.uidvalidity, "uid": source.uid},
        ).first()
        if key is not None:
            return Outcome(
                Became.DUPLICATE, key.ticket_id, "already handled (ledger)", inbound.message_id
            )
    digest = hashlib.sha256(raw).hexdigest()
    params = {"mailbox": source.mailbox, "sha256": digest, "message_id": inbound.message_id}
    row = session.execute(
        _BY_MESSAGE_ID_AND_CONTENT if inbound.message_id else _BY_CONTENT, params
    ).first()
    if row is None:
        return None
    session.add(
        Ledger(
            mailbox=source.mailbox,
            uidvalidity=source.uidvalidity,
            uid=source.uid,
            message_id=inbound.message_id,
            sha256=digest,
            outcome=Became.DUPLICATE.value,
            reason=f"same message as ledger entry {row.id}",
            ticket_id=row.ticket_id,
            raw_path=row.raw_path,
            sender=inbound.from_raw[:998],
            subject=inbound.subject[:998],
            at=now,
        )
    )
    return Outcome(
        Became.DUPLICATE,
        row.ticket_id,
        "already handled (same Message-ID and content)",
        inbound.message_id,
    )


# Built once: composing a statement costs more than running it on an indexed column.
_BY_LEDGER_KEY = (
    select(Ledger.id, Ledger.ticket_id)
    .where(
        Ledger.mailbox == bindparam("mailbox"),
        Ledger.uidvalidity == bindparam("uidvalidity"),
        Ledger.uid == bindparam("uid"),
    )
    .limit(1)
)
_BY_CONTENT = (
    select(Ledger.id, Ledger.ticket_id, Ledger.raw_path)
    .where(
        Ledger.mailbox == bindparam("mailbox"),
        Ledger.sha256 == bindparam("sha256"),
        Ledger.outcome != Became.QUARANTINED.value,
    )
    .limit(1)
)
_BY_MESSAGE_ID_AND_CONTENT = _BY_CONTENT.where(Ledger.message_id == bindparam("message_id"))


def handle(
    session: Session,
    desk: Desk,
    source: Source,
    route: routing.Route,
    inbound: Inbound,
    stored: StoredMail,
    now: datetime,
) -> Outcome:
    """Carry out ``route`` inside the caller's transaction."""
    mid = inbound.message_id
    match route:
        case routing.Ignore(reason=reason, why=why):
            return Outcome(Became.IGNORED, None, reason, mid, why)
        case routing.Bounce():
            return bounce(session, desk, route, inbound, now)
        case routing.NewTicket(no_auto_reply=quiet, spam=verdict):
            team = team_of(desk, source)
            arrival = starts.Arrival(session, desk, inbound, stored, source.mailbox, team, now)
            return new_ticket(arrival, quiet=quiet, verdict=verdict)
        case routing.FromAgent(sender=sender):
            team = team_of(desk, source)
            arrival = starts.Arrival(session, desk, inbound, stored, source.mailbox, team, now)
            return from_agent(starts.from_agent(arrival, sender), mid)
        case routing.FollowUp():
            followed = session.get(Ticket, route.ticket.id)
            assert followed is not None
            scene = Scene(session, desk, followed, inbound, stored, now)
            return follow_up(scene, route, source)
    raise AssertionError(f"unhandled route {route!r}")


def new_ticket(arrival: starts.Arrival, *, quiet: bool, verdict: str | None) -> Outcome:
    """A customer's mail that starts a conversation: a ticket, unless a rule ignores it."""
    opened = intake.open_new(arrival, quiet=quiet, spam=verdict)
    mid = arrival.inbound.message_id
    if opened.ticket is None:
        return Outcome(Became.IGNORED, None, opened.reason, mid, routing.Ignored.RULE)
    return Outcome(Became.NEW_TICKET, opened.ticket.id, opened.reason, mid)


def follow_up(scene: Scene, route: routing.FollowUp, source: Source) -> Outcome:
    """A message on a known ticket: automatic mail is kept; an agent's goes to ``agents``
    (routing decided the role); a customer's is a reply, a rating, a reopening or a new
    ticket linked to the closed one."""
    ticket, mid = scene.ticket, scene.inbound.message_id if scene.inbound else None
    if route.automatic:
        tickets.automatic_followup(scene, route.automatic)
        return Outcome(Became.FOLLOW_UP, ticket.id, route.automatic, mid)
    agent = scene.desk.settings.agent(route.sender) if route.role is routing.Role.AGENT else None
    if agent is not None:
        result = agents.agent_message(scene, agent)
        reason = "; ".join(result.refused) if result.refused else "agent"
        return Outcome(Became.FOLLOW_UP, ticket.id, reason, mid)
    answered = tickets.customer_reply(scene, source.mailbox)
    if answered.case is Case.NEW_LINKED:
        why = f"linked to closed {scene.desk.ref(ticket)}"
        return Outcome(Became.NEW_TICKET, answered.ticket.id, why, mid)
    return Outcome(Became.FOLLOW_UP, ticket.id, "", mid)


def team_of(desk: Desk, source: Source) -> str:
    """The team of the mailbox a message came to (the first team for an unknown one)."""
    if any(m.name == source.mailbox for m in desk.settings.mailboxes):
        return desk.settings.mailbox(source.mailbox).team
    return desk.settings.teams[0].name


def from_agent(started: starts.Started, mid: str | None) -> Outcome:
    """What an agent's mail on no ticket became: a ticket it started, quarantined unproven,
    or nothing started (the agent told why)."""
    if started.quarantined:
        return Outcome(Became.QUARANTINED, None, started.reason, mid)
    if started.ticket is not None:
        return Outcome(Became.NEW_TICKET, started.ticket.id, started.reason, mid)
    why = routing.Ignored.QUERY if started.answered else routing.Ignored.AGENT_MAIL
    return Outcome(Became.IGNORED, None, started.reason, mid, why)


def bounce(
    session: Session, desk: Desk, route: routing.Bounce, inbound: Inbound, now: datetime
) -> Outcome:
    """A delivery report about mail we sent: events on its ticket, never a reply.

    It acts only on what it proves. Arriving at the VERP address of one of our mails proves
    which outbox row it is about, so it may mark that row failed and suppress that row's
    recipient, and nothing else. Any other address it lists, and any report that did not arrive
    at a VERP address (one at the plain desk address can name a Message-ID that anyone who ever
    got a mail from us knows), is recorded as a ``bounce_unproven`` event and acted on not at all.
    """
    report = route.report
    listed = report.recipients if report is not None else ()
    row = None
    if route.message_id is not None:
        row = session.scalar(select(Outbox).where(Outbox.message_id == route.message_id))
    if row is None:
        return unproven_report(session, inbound, listed, now)
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
    recipient = row.recipient.lower()
    proven = [r for r in listed if r.address.lower() == recipient]
    others = [r for r in listed if r.address.lower() != recipient]
    if not listed:  # nothing readable in it: arriving at the VERP address says it failed
        proven = [ReportRecipient(recipient, "failed", "5.0.0")]
    if proven:  # one mail, one recipient: a block repeated (thousands of times) says no more
        act_on_bounce(session, desk, ticket, row, _gravest(proven), now)
    reason = f"about <{row.message_id}>"
    if others:
        reason += f"; {len(others)} other address(es) recorded only: not the recipient of that mail"
        if ticket is not None:
            why = f"not the recipient of <{row.message_id}>"
            record_unproven(session, ticket, inbound, others, row.message_id, why, now)
    return Outcome(Became.BOUNCE, ticket.id if ticket else None, reason, inbound.message_id)


def _gravest(entries: Sequence[ReportRecipient]) -> ReportRecipient:
    """The first permanent failure among a report's blocks for one address, else the first."""
    return next(
        (e for e in entries if e.action == "failed" or e.status.startswith("5")), entries[0]
    )


def act_on_bounce(
    session: Session,
    desk: Desk,
    ticket: Ticket | None,
    row: Outbox,
    entry: ReportRecipient,
    now: datetime,
) -> None:
    """A proven report about ``row``'s recipient: an event; a permanent failure also fails the
    row, suppresses automatic mail to the address, and tells the ticket's agents (once per
    mail: a report repeated changes nothing more). A delay is only recorded."""
    permanent = entry.action == "failed" or entry.status.startswith("5")
    if ticket is not None:
        event(
            session,
            ticket,
            "bounce",
            entry.address,
            now,
            recipient=entry.address,
            status=entry.status,
            action=entry.action or ("failed" if permanent else "delayed"),
            diagnostic=entry.diagnostic,
            message_id=row.message_id,
        )
    if not permanent or row.status == OutboxStatus.FAILED:
        return
    row.status = OutboxStatus.FAILED
    row.last_error = f"bounced: {entry.status} ({entry.action or 'failed'}) for {entry.address}"
    what = bounces.Undelivered(
        address=entry.address,
        status=entry.status or "5.0.0",
        words=entry.diagnostic,
        via="a delivery report",
    )
    bounces.undelivered(session, desk, row, what, now)


def unproven_report(
    session: Session, inbound: Inbound, listed: Sequence[ReportRecipient], now: datetime
) -> Outcome:
    """A report that did not arrive at a VERP address: recorded on the ticket of the mail it
    names (if that is one of ours), nothing else."""
    report = inbound.report
    named = report.original_message_id if report is not None else None
    row = session.scalar(select(Outbox).where(Outbox.message_id == named)) if named else None
    if row is None:
        return Outcome(
            Became.IGNORED,
            None,
            "delivery report about mail we did not send",
            inbound.message_id,
            routing.Ignored.UNKNOWN_BOUNCE,
        )
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
    if ticket is None:
        return Outcome(
            Became.IGNORED,
            None,
            f"unproven delivery report about <{row.message_id}>: no ticket to record it on",
            inbound.message_id,
            routing.Ignored.REPORT,
        )
    why = "did not arrive at the VERP address of the mail it names"
    record_unproven(session, ticket, inbound, listed, row.message_id, why, now)
    return Outcome(
        Became.BOUNCE,
        ticket.id,
        f"unproven: names <{row.message_id}> but {why}; recorded only, nothing suppressed",
        inbound.message_id,
    )


UNPROVEN_LISTED = 20  # recipients named in one bounce_unproven event; the rest are only counted


def record_unproven(
    session: Session,
    ticket: Ticket,
    inbound: Inbound,
    listed: Sequence[ReportRecipient],
    message_id: str,
    why: str,
    now: datetime,
) -> None:
    """One ``bounce_unproven`` event for what a report says but does not prove."""
    event(
        session,
        ticket,
        "bounce_unproven",
        inbound.sender or inbound.claimed_sender or "",
        now,
        message_id=message_id,
        why=why,
        report=inbound.message_id,
        recipients=[
            {"address": r.address, "action": r.action, "status": r.status}
            for r in listed[:UNPROVEN_LISTED]
        ],
        count=len(listed),
    )


def write_ledger(
    session: Session,
    source: Source,
    inbound: Inbound,
    stored: StoredMail,
    outcome: Outcome,
    now: datetime,
    *,
    replay: int | None = None,
) -> None:
    values: dict[str, Any] = {
        "message_id": inbound.message_id,
        "sha256": stored.sha256 or "",
        "outcome": outcome.kind.value,
        "reason": outcome.reason[:2000],
        "ticket_id": outcome.ticket_id,
        "raw_path": stored.raw_path,
        "sender": inbound.from_raw[:998],
        "subject": inbound.subject[:998],
        "at": now,
    }
    if replay is not None:
        row = session.get(Ledger, replay)
        if row is not None:
            for key, value in values.items():
                setattr(row, key, value)
            return
    session.add(
        Ledger(mailbox=source.mailbox, uidvalidity=source.uidvalidity, uid=source.uid, **values)
    )


@dataclass(frozen=True, slots=True)
class Unhandled:
    """A message that could not be handled, as it is quarantined: its bytes (or where they
    were kept already, when ``raw`` is empty), what was parsed of it, and why."""

    raw: bytes
    inbound: Inbound | None
    reason: str
    stored: StoredMail | None = None


def quarantine(
    db: Database, desk: Desk, source: Source, unhandled: Unhandled, *, replay: int | None = None
) -> Outcome:
    """Record a message that could not be handled; the caller moves it to the quarantine folder."""
    inbound, reason = unhandled.inbound, unhandled.reason
    mid = inbound.message_id if inbound else None
    with db.transaction() as session:
        record_quarantine(session, desk, source, unhandled, replay=replay)
    log.warning(
        "%s: <%s> quarantined: %s",
        source.mailbox,
        mid or "no Message-ID",
        reason,
        extra={"message_id": mid, "ticket": "-", "mailbox": source.mailbox},
    )
    return Outcome(Became.QUARANTINED, None, reason, mid)


def record_quarantine(
    session: Session,
    desk: Desk,
    source: Source,
    unhandled: Unhandled,
    *,
    replay: int | None = None,
) -> None:
    """The ledger row of a quarantined message, inside the caller's transaction (a row for the
    same message, or the one replayed, is brought up to date). ``stored``: where its raw bytes
    were kept already, when ``raw`` is not given."""
    inbound, reason = unhandled.inbound, unhandled.reason
    mid = inbound.message_id if inbound else None
    stored = keep_raw(session, desk, unhandled.raw) if unhandled.raw else unhandled.stored
    stored = stored or StoredMail(None, None)
    values: dict[str, Any] = {
        "message_id": mid,
        "sha256": stored.sha256 or "",
        "outcome": Became.QUARANTINED.value,
        "reason": reason[:2000],
        "ticket_id": None,
        "raw_path": stored.raw_path,
        "sender": (inbound.from_raw if inbound else "")[:998],
        "subject": (inbound.subject if inbound else "")[:998],
        "at": desk.clock(),
    }
    existing = session.get(Ledger, replay) if replay is not None else None
    if existing is None and source.uid is not None:
        existing = session.scalar(
            select(Ledger).where(
                Ledger.mailbox == source.mailbox,
                Ledger.uidvalidity == source.uidvalidity,
                Ledger.uid == source.uid,
            )
        )
    if existing is not None:
        for key, value in values.items():
            setattr(existing, key, value)
    else:
        session.add(
            Ledger(mailbox=source.mailbox, uidvalidity=source.uidvalidity, uid=source.uid, **values)
        )
