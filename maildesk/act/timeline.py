"""The ticket's timeline and status: events as they are recorded, and status changes.

The lowest step of the act layer: every writer records what happened to a ticket through
``event`` and changes its status through ``set_status``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maildesk.models import Event, Status, Ticket, insert_row


def event(
    session: Session, ticket: Ticket, kind: str, actor: str, at: datetime, **detail: Any
) -> None:
    if ticket.id is None:
        session.flush()  # the ticket's number first
    insert_row(
        session,
        Event,
        {
            "ticket_id": ticket.id,
            "kind": kind,
            "actor": actor,
            "at": at,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else "",
        },
    )


def set_status(ticket: Ticket, status: Status, at: datetime) -> None:
    if ticket.status != status:
        ticket.status = status
        ticket.status_since = at
    if status is Status.CLOSED:
        ticket.closed_at = at
    elif ticket.closed_at is not None and status is not Status.CLOSED:
        ticket.closed_at = None
