"""Mail over ``[limits] max_message_bytes``: quarantined unread, its sender and the admin told.

Beside ``ingest.process`` in the flow: the daemon (``imap.Mailbox.fetch`` gives such a message's
size and its header block, never its body) and ``maildesk ingest`` (which reads no more of
stdin than the limit) hand it here instead. Its identity comes from the header block by the
same parse as any mail's, in a parse worker within the same budget; in one transaction the
quarantine entry records its sender and subject, its sender gets one notice (``too_large``) an
hour unless the mail is automatic, and the admin one alert an hour, counting the messages held
back since the last one. Nobody hears of it twice when the same message comes again (a crash
before it was moved).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maildesk.act import guard, ingest
from maildesk.act.means import Desk, StoredMail
from maildesk.act.notices import admin_alert
from maildesk.act.outbox import Mail
from maildesk.database import Database
from maildesk.desk import routing
from maildesk.desk.timers import utc_text
from maildesk.mail import marks, parsing
from maildesk.mail.inbound import Inbound
from maildesk.mail.rendering import filesize
from maildesk.models import DatabaseError, Ledger, Outbox

log = logging.getLogger("maildesk.oversize")  # the logs name the job, not the module path

_HEADER_END = re.compile(rb"\r?\n\r?\n|\r\r")  # as ``inbound`` finds the end of a header block

NOTICE = "too_large"  # the outbox kind (and template) of the notice to the sender
ALERT = "oversize-alert"  # the outbox kind of the alert to the admin
EVERY = timedelta(hours=1)  # at most one notice per sender in this time (one alert: guard)
HELD_BACK = "held back: one alert about oversized mail an hour"
TOLD = "sender told"


def quarantine(
    db: Database,
    desk: Desk,
    source: ingest.Source,
    head: bytes,
    size: int,
    *,
    kept: StoredMail | None = None,
) -> ingest.Outcome:
    """Record the message of ``size`` bytes whose header block is ``head`` (or that and the
    start of its body) as quarantined, and tell its sender and the admin; the caller moves it
    to the quarantine folder. ``kept``: where the whole message was kept (a piped one), for a
    replay once the limit is raised."""
    end = _HEADER_END.search(head)
    # parsed in a worker like any mail: even a header block is hostile input with a budget
    inbound = desk.parser.parse(head[: end.end()] if end else head, ingest.budget_of(desk))
    limit = desk.settings.limits.max_message_bytes
    exceeds = f"message of {size} bytes exceeds [limits] max_message_bytes ({limit})"
    try:
        with db.transaction() as session:
            now = desk.clock()
            again = _recorded(session, source)
            told = again or _tell_sender(session, desk, inbound, size, now)
            reason = f"{exceeds}; {told}"
            unhandled = ingest.Unhandled(b"", inbound, reason, kept)
            ingest.record_quarantine(session, desk, source, unhandled)
            if not again:
                _alert_admin(session, desk, source, inbound, size, told, now)
    except DatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - it is quarantined all the same, untold
        log.exception("telling of oversized <%s> failed", inbound.message_id)
        why = f"{exceeds}; nobody told: {type(exc).__name__}: {exc}"
        return ingest.quarantine(db, desk, source, ingest.Unhandled(b"", inbound, why, kept))
    log.warning(
        "%s: <%s> from %s quarantined: %s",
        source.mailbox,
        inbound.message_id or "no Message-ID",
        inbound.requester or "(no address)",
        reason,
        extra={"message_id": inbound.message_id, "ticket": "-", "mailbox": source.mailbox},
    )
    return ingest.Outcome(ingest.Became.QUARANTINED, None, reason, inbound.message_id)


def _recorded(session: Session, source: ingest.Source) -> str:
    """What the ledger said of this very message when it came before (it was quarantined, and
    its sender and the admin told, but not moved): "" the first time."""
    if source.uid is None:
        return ""
    row = session.execute(
        _QUARANTINED,
        {"mailbox": source.mailbox, "uidvalidity": source.uidvalidity, "uid": source.uid},
    ).first()
    if row is None:
        return ""
    return row.reason.partition("; ")[2] or "handled before"


def _tell_sender(session: Session, desk: Desk, inbound: Inbound, size: int, now: datetime) -> str:
    """Write the notice to the sender, unless it must not go; says which (for the ledger)."""
    why_not = silence(desk, inbound)
    if why_not:
        return f"no notice: {why_not}"
    assert inbound.requester is not None
    recent = session.scalar(_LAST_NOTICE, {"address": inbound.requester})
    if recent is not None and recent > now - EVERY:
        return "no notice: the sender was told of another message within the hour"
    notice = notice_mail(desk, inbound.requester, inbound.subject, inbound.message_id, size)
    queued = desk.mailer.enqueue(session, notice, now)
    return f"no notice: {queued.held}" if queued.held else TOLD


def silence(desk: Desk, inbound: Inbound) -> str | None:
    """Why a message's sender gets no notice: there is nobody to answer, or it is automatic mail
    (a bounce, an auto-reply, a list), or it asked for no automatic answer; None: they get one."""
    if inbound.fatal == parsing.REASON:  # its header block broke the budget: who sent it, unread
        return f"its header block could not be read ({parsing.REASON})"
    requester = inbound.requester
    if not requester or marks.is_desk_address(requester, desk.settings.desk.address):
        return "no address to answer"
    if inbound.content_type == "multipart/report":  # the report itself was not downloaded
        return "automatic mail (a delivery or other report)"
    kind = routing.classify(inbound, desk.identity)
    if kind.automatic:
        return f"automatic mail ({kind.reason})"
    if kind.no_auto_reply:
        return "the sender asked for no automatic replies (X-Auto-Response-Suppress)"
    return None


def notice_mail(desk: Desk, to: str, subject: str, message_id: str | None, size: int) -> Mail:
    """The notice to the sender (``to``) of a message too large to take: automatic mail, an
    auto-reply (RFC 3834), held like any other by loop protection. ``samples`` makes its
    samples here too."""
    return Mail(
        kind=NOTICE,
        template=NOTICE,
        to=to,
        context={
            "message": {"subject": subject, "size": size},
            "max_message_bytes": desk.settings.limits.max_message_bytes,
        },
        automatic=True,
        auto_submitted="auto-replied",
        in_reply_to=message_id,
        references=(message_id,) if message_id else (),
    )


def _alert_admin(
    session: Session,
    desk: Desk,
    source: ingest.Source,
    inbound: Inbound,
    size: int,
    told: str,
    now: datetime,
) -> None:
    """One alert an hour: one within the hour after the last one sent is written held back
    (counted in the database, so the limit holds across daemons and ``maildesk ingest``), and
    the next one sent counts the messages since the last."""
    admin = desk.settings.desk.admin_address
    if not admin:
        return
    cap = guard.hourly(session, ALERT, admin, now)
    last, held, count = cap.last_sent, cap.held, cap.held + 1
    limit = filesize(desk.settings.limits.max_message_bytes)
    messages = "1 message" if count == 1 else f"{count} messages"
    since = f" since the last alert ({utc_text(last)})" if last and held else ""
    text = (
        f"{messages} larger than [limits] max_message_bytes ({limit}) arrived{since} and "
        f"{'was' if count == 1 else 'were'} quarantined without being read; the latest:\n\n"
        f"  From:    {inbound.from_raw or '(none)'}\n"
        f"  Subject: {inbound.subject or '(none)'}\n"
        f"  Size:    {filesize(size)}, mailbox {source.mailbox}\n"
        f"  Sender:  {told}\n\n"
        f"{_where(desk, source)}\n`maildesk quarantine list` shows every one. This alert is "
        "sent at most once an hour; the next one counts the messages until then."
    )
    alert = admin_alert(desk, f"{messages} too large to take, quarantined", text)
    if alert is not None:
        held_back = HELD_BACK if cap.hold else None
        desk.mailer.enqueue(session, replace(alert, kind=ALERT, held_back=held_back), now)


def _where(desk: Desk, source: ingest.Source) -> str:
    """Where the message is now, and how to take it in after all."""
    if source.uid is None:  # piped in by the MTA: kept whole on disk
        return (
            "It came through `maildesk ingest`, which kept it whole in the data directory. "
            "To take it in after all, raise max_message_bytes and run `maildesk quarantine "
            "replay` with its ID (`maildesk quarantine list`). Set your MTA's own size limit "
            "(Postfix: message_size_limit) to have larger mail refused while it is sent."
        )
    folder = desk.settings.mailbox(source.mailbox).quarantine_folder
    return (
        f"It is in the folder {folder} of that mailbox, untouched. To take it in after all, "
        "raise max_message_bytes and move it back to the watched folder."
    )


# Built once, with bound parameters (index on recipient and created_at).
_QUARANTINED = select(Ledger.reason).where(
    Ledger.mailbox == bindparam("mailbox"),
    Ledger.uidvalidity == bindparam("uidvalidity"),
    Ledger.uid == bindparam("uid"),
    Ledger.outcome == ingest.Became.QUARANTINED.value,
)
_LAST_NOTICE = select(func.max(Outbox.created_at)).where(
    Outbox.recipient == bindparam("address"), Outbox.kind == NOTICE
)
