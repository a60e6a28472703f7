"""Mail the desk sent that did not arrive: tell the people who can act, mark the ticket.

Comes after the two places that learn of it: ``ingest`` (a delivery report proven by the VERP
address of the mail it is about) and the delivery process (the SMTP server refused the mail for
good, or the desk gave up retrying it). Both hand over the outbox row and an ``Undelivered``
value inside their own transaction, so the notice to the agents is written with what caused it.

Only the customers' mail is told about: the desk's mail to its own agents and admin is not (a
bounce notice that bounces must not cause another). A requester whose address was refused for
good is marked on the ticket (``requester_bounced``), which stops the reminder and auto-close
timers until the customer writes again; a participant whose copy was refused is marked on its
row (``participant_bounced``), and their copies of automatic mail are held.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from maildesk.act import guard
from maildesk.act.means import Desk
from maildesk.act.notices import CUSTOMER_MAILS, enqueue, notify_owner
from maildesk.act.timeline import event
from maildesk.desk import commands
from maildesk.desk.timers import utc_text
from maildesk.mail.compose import subject_of
from maildesk.mail.smtp import SendResult
from maildesk.models import Outbox, Participant, Ticket

log = logging.getLogger("maildesk.bounces")  # the logs name the job, not the module path

_STATUS = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True, slots=True)
class Undelivered:
    """What a server said about one mail it would not deliver."""

    address: str
    status: str  # the report's status ("5.1.1"), or the SMTP reply's code and status
    words: str  # the server's words: the report's Diagnostic-Code, or the SMTP reply
    via: str  # who said so, for the notice: "a delivery report", "our SMTP server"
    # the server refused the address itself for good (not the content, not after retries):
    # automatic mail to it is suppressed, and the requester marked
    address_refused: bool = True


def undelivered(
    session: Session, desk: Desk, row: Outbox, what: Undelivered, now: datetime
) -> None:
    """``row`` will not arrive: suppress the address if it was refused, mark the ticket's
    requester or the participant it went to, and tell the assignee (else the team) which
    mail, where, and why."""
    if what.address_refused:
        guard.suppress(session, what.address, what.status, now)
    ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
    if ticket is None or not to_customer(desk, row):
        return  # the desk's mail to agents or the admin: told to no one, so nothing loops
    if row.recipient.lower() == ticket.requester.lower():
        copied = None
        if what.address_refused:
            _requester_bounced(session, ticket, what, now)
    else:
        copied = next((p for p in ticket.participants if p.address == row.recipient), None)
        if copied is None:
            return  # no longer on the ticket (taken off its Cc, say): nothing to do about it
        if what.address_refused:
            _participant_bounced(session, ticket, copied, what, now)
    notices = notify_owner(
        desk,
        ticket,
        "notice",
        "agent_bounce",
        now,
        mail={
            "kind": CUSTOMER_MAILS.get(row.kind, row.kind),
            # the customer's mail showed their subject as written: not so to an agent
            "subject": commands.defang(subject_of(row.body)),
            "date": utc_text(row.sent_at or now),
        },
        address=what.address,
        status=what.status,
        words=what.words,
        via=what.via,
        requester_bounced=copied is None and ticket.requester_bounced_at is not None,
        participant_bounced=copied is not None and copied.bounced_at is not None,
    )
    enqueue(session, desk, notices, now)
    log.info(
        "%s: %s <%s> to %s did not arrive (%s): %s told",
        desk.ref(ticket),
        row.kind,
        row.message_id,
        what.address,
        what.status,
        ", ".join(n.to for n in notices) or "nobody",
        extra={"ticket": desk.ref(ticket), "message_id": row.message_id},
    )


def _requester_bounced(session: Session, ticket: Ticket, what: Undelivered, now: datetime) -> None:
    if ticket.requester_bounced_at is not None:
        return
    ticket.requester_bounced_at = now
    event(
        session,
        ticket,
        "requester_bounced",
        "",
        now,
        address=what.address,
        status=what.status,
        effect="no reminder and no auto-close until the customer writes again",
    )


def _participant_bounced(
    session: Session, ticket: Ticket, copied: Participant, what: Undelivered, now: datetime
) -> None:
    """A participant's address refused a copy for good: marked on the ticket. Their copies of
    automatic mail are held (the address is suppressed); the requester's mail goes on."""
    if copied.bounced_at is not None:
        return
    copied.bounced_at = now
    event(
        session,
        ticket,
        "participant_bounced",
        "",
        now,
        address=what.address,
        status=what.status,
        effect="no copy of automatic mail until they write again; replies are still copied",
    )


def to_customer(desk: Desk, row: Outbox) -> bool:
    """Whether ``row`` is one of a ticket's mails to its customers (its requester, or a copy
    to a participant), not to an agent."""
    return row.kind in CUSTOMER_MAILS and desk.settings.agent(row.recipient) is None


def refused(session: Session, desk: Desk, row: Outbox, result: SendResult, now: datetime) -> None:
    """The delivery process gave up on ``row``: the SMTP server refused it for good, or it
    could not be sent for days. Called by ``outbox.record_many`` in its transaction."""
    status = _STATUS.search(result.detail)
    code = f"{result.code} " if result.code else ""
    what = Undelivered(
        address=row.recipient,
        status=(code + (status.group(0) if status else "")).strip() or "failed",
        words=result.detail,
        via="our SMTP server",
        address_refused=result.address_refused,
    )
    undelivered(session, desk, row, what, now)
