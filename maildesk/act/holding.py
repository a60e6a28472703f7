"""The writers of held replies: an agent's reply kept back because another agent answered the
customer after the agent's notice was sent, and ``#send`` / ``#drop`` deciding on it.

``overtaken`` finds the facts ``desk.merges.hold`` decides on: when the notice the agent
answered was sent (its Message-ID in the reply's In-Reply-To, looked up in the outbox) and the
other agent's reply since. A held reply is a message on the thread, internal and ``held``, so
``#send`` finds it after a restart and from any daemon. Called by ``act.apply`` for the
``HoldReply``, ``SendHeld`` and ``DropHeld`` steps.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maildesk.act import files, notices
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event, set_status
from maildesk.config import AgentSettings
from maildesk.desk import plans
from maildesk.desk.timers import utc_text
from maildesk.mail.inbound import Inbound
from maildesk.models import Message, Outbox, Status, Ticket


def overtaken(
    session: Session, desk: Desk, ticket: Ticket, inbound: Inbound, agent: AgentSettings
) -> plans.Overtaken | None:
    """Another agent's reply to the customer sent after the notice this mail answers, if any
    (None too when the mail answers no notice of the desk's to this agent)."""
    ids = list(inbound.in_reply_to)[:10]
    if not ids:
        return None
    seen = session.scalar(_NOTICE_SENT, {"ids": ids, "agent": agent.email})
    if seen is None:
        return None
    others = [a.email for a in desk.settings.agents if a.email != agent.email]
    if not others:
        return None
    found = session.execute(_OTHER_REPLY, {"ticket": ticket.id, "others": others, "seen": seen})
    row = found.first()
    return None if row is None else plans.Overtaken(row.sender, row.created_at, row.text)


def held_by(session: Session, ticket: Ticket, agent: str) -> Message | None:
    """The agent's reply held on ``ticket`` (the newest, if several)."""
    return session.scalar(_HELD, {"ticket": ticket.id, "sender": agent})


def hold(desk: Desk, message: Message, step: plans.HoldReply, now: datetime) -> list[Mail]:
    """``message`` (the reply, kept internal) is held; its agent gets the other reply."""
    message.held = True
    agent = desk.settings.agent(step.reply.actor)
    assert agent is not None, f"no agent {step.reply.actor}"
    other = step.overtaken
    by = desk.settings.agent(other.by)
    mail = notices.agent_mail(
        desk,
        message.ticket,
        agent,
        "held",
        "agent_held",
        now,
        text=message.text,
        other={"by": by.name if by else other.by, "email": other.by, "at": utc_text(other.at)},
        summary=other.text,
    )
    return [mail]


def send(
    session: Session, desk: Desk, ticket: Ticket, step: plans.SendHeld, now: datetime
) -> list[Mail]:
    """The held reply goes to the customer, as the reply it was, with its files (as a reply's
    go, within ``[limits]``); the thread shows it sent."""
    message = held_by(session, ticket, step.actor)
    if message is None:  # validated against this transaction's state: cannot happen
        return []
    message.held = False
    message.internal = False
    mail = notices.customer_mail(
        desk,
        ticket,
        "reply",
        "reply",
        words=True,
        text=message.text,
        agent={"name": step.agent_name},
        images=[],
    )
    mail = replace(mail, attachments=files.held_to_customer(desk, message))
    if ticket.first_response_at is None:
        ticket.first_response_at = now
    if ticket.status not in (Status.CLOSED, Status.MERGED):
        set_status(ticket, Status.PENDING, now)
    event(session, ticket, "replied", step.actor, now, held=True)
    return [mail]


def drop(session: Session, ticket: Ticket, step: plans.DropHeld, now: datetime) -> None:
    message = held_by(session, ticket, step.actor)
    if message is not None:
        message.held = False
        event(session, ticket, "reply_dropped", step.actor, now)


# Built once: the notice (index on Message-ID), the other agents' replies since it, a held reply.
_NOTICE_SENT = select(func.max(Outbox.created_at)).where(
    Outbox.message_id.in_(bindparam("ids", expanding=True)),
    Outbox.recipient == bindparam("agent"),
)
_OTHER_REPLY = (
    select(Message.sender, Message.created_at, Message.text)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.internal.is_(False),
        Message.sender.in_(bindparam("others", expanding=True)),
        Message.created_at > bindparam("seen"),
    )
    .order_by(Message.id.desc())
    .limit(1)
)
_HELD = (
    select(Message)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.sender == bindparam("sender"),
        Message.held.is_(True),
    )
    .order_by(Message.id.desc())
    .limit(1)
)
