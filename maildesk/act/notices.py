"""The mails a ticket causes, built from templates, and writing them to the outbox.

``customer_mail`` and ``agent_mail`` make the ``outbox.Mail`` values a plan's ``Notify`` steps
and the timers ask for; ``enqueue`` writes them to the outbox in the caller's transaction (never
sent inline: the delivery process sends them after the commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, object_session

from maildesk.act import people
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event
from maildesk.config import AgentSettings
from maildesk.desk import commands, guide
from maildesk.mail import marks
from maildesk.mail.actions import Action
from maildesk.mail.inbound import Inbound
from maildesk.models import Message, Status, Ticket

THREAD_IDS = 10  # the last Message-IDs of a thread a mail names in References


# ``session.info`` key: the tickets made in this transaction, whose messages are all in memory
_MADE = "maildesk.made_tickets"


def made(session: Session, ticket: Ticket) -> None:
    """``ticket`` was made in this transaction (and flushed): its thread is read from memory.
    Asking the database instead would flush the transaction's pending rows once more for
    every mail about it, for answers the ticket's own list already holds."""
    session.info.setdefault(_MADE, set()).add(ticket.id)


def _in_memory(ticket: Ticket) -> bool:
    """Whether ``ticket.messages`` is the whole thread without loading it: a ticket made up
    for a sample, or one made in this transaction (never a stored one: reading its list would
    load its whole history, which a customer can grow at will)."""
    session = object_session(ticket)
    return session is None or ticket.id is None or ticket.id in session.info.get(_MADE, ())


def thread_ids(ticket: Ticket, unseen: Sequence[str] = ()) -> tuple[str, ...]:
    """Message-IDs of the customer-visible thread, oldest first (for References): the last
    ``THREAD_IDS``, read as such, but those of messages from ``unseen`` (the agents, for mail
    to a customer: an agent's reply is kept under the Message-ID of the mail the agent sent the
    desk, which the customer never saw and which names the agent's mail host). Loading the
    ticket's messages, text and all, made every mail on a ticket cost the daemon its whole
    history, which a customer can grow at will."""
    session = object_session(ticket)
    if session is None or _in_memory(ticket):
        ids = [
            m.message_id
            for m in ticket.messages
            if m.message_id and not m.internal and m.sender not in unseen
        ]
        return tuple(ids[-THREAD_IDS:])
    wanted = {"ticket": ticket.id, "up_to": THREAD_IDS, "unseen": list(unseen)}
    found = session.scalars(_THREAD_IDS, wanted)
    return tuple(reversed([message_id for message_id in found if message_id]))


def last_customer_message_id(ticket: Ticket) -> str | None:
    session = object_session(ticket)
    if session is None or _in_memory(ticket):
        for message in reversed(ticket.messages):
            if message.sender == ticket.requester and message.message_id:
                return message.message_id
        return None
    return session.scalar(_LAST_FROM, {"ticket": ticket.id, "sender": ticket.requester})


# Built once, with bound parameters; the newest first, as many as needed (index on ticket_id).
_THREAD_IDS = (
    select(Message.message_id)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.message_id.is_not(None),
        Message.message_id != "",
        Message.internal.is_(False),
        Message.sender.not_in(bindparam("unseen", expanding=True)),
    )
    .order_by(Message.id.desc())
    .limit(bindparam("up_to"))
)
_LAST_FROM = (
    select(Message.message_id)
    .where(
        Message.ticket_id == bindparam("ticket"),
        Message.sender == bindparam("sender"),
        Message.message_id.is_not(None),
        Message.message_id != "",
    )
    .order_by(Message.id.desc())
    .limit(1)
)


def ticket_context(desk: Desk, ticket: Ticket, *, to_agent: bool = False) -> dict[str, Any]:
    """What every template sees of ``ticket``. Customers see their subject as they wrote it;
    in mail to agents a ``#word`` in it is neutralised (``commands.defang``), so it cannot
    become a command when an agent replies."""
    return {
        "ticket": {
            "ref": desk.ref(ticket),
            "number": ticket.id,
            "subject": commands.defang(ticket.subject) if to_agent else ticket.subject,
            "status": ticket.status,
            "priority": ticket.priority,
            "team": ticket.team,
            "assignee": ticket.assignee,
            "requester": ticket.requester,
            "cc": list(people.copied(desk, ticket)),
            "tags": sorted(t.tag for t in ticket.tags),
        }
    }


# What each mail to a customer is called in what agents read (receipts, bounce notices).
CUSTOMER_MAILS = {
    "ack": "acknowledgment",
    "reply": "reply",
    "closed": "closing mail",
    "escalated": "escalation notice",
    "reminder": "reminder",
    "auto_closed": "auto-close notice",
    "merged": "merge notice",
}


# The customers' mails that carry the ticket's news, copied to its participants (Cc); the
# acknowledgment and the reminder are the requester's alone.
COPIED = frozenset(("reply", "closed", "escalated", "auto_closed"))


def customer_mail(
    desk: Desk, ticket: Ticket, kind: str, template: str, *, words: bool = False, **context: Any
) -> Mail:
    """A mail to the ticket's requester, with its participants in Cc when it is one of the
    ``COPIED``. ``words``: it carries what an agent wrote or chose (a reply, a resolution,
    canned text), so it is a person's mail, never held by loop protection or the hourly cap
    and without ``Auto-Submitted``. Without, it is made wholly from templates (acknowledgment,
    reminder, the notices of closing and escalation): automatic."""
    # a requester who is one of the agents could answer it with commands: not their subject
    to_agent = desk.settings.agent(ticket.requester) is not None
    cc = people.copied(desk, ticket) if kind in COPIED and ticket.requester else ()
    return Mail(
        kind=kind,
        template=template,
        to=ticket.requester,
        ticket=ticket,
        context={**ticket_context(desk, ticket, to_agent=to_agent), **context},
        automatic=not words,
        auto_submitted="auto-replied" if kind == "ack" else "auto-generated",
        in_reply_to=last_customer_message_id(ticket),
        references=thread_ids(ticket, [agent.email for agent in desk.settings.agents]),
        cc=cc,
    )


NOTICE_TEXT_CHARS = 20_000  # of a message's text, an agent notice quotes at most this much


def notice_text(ticket: Ticket, text: str) -> str:
    """``text`` as an agent notice quotes it: its first ``NOTICE_TEXT_CHARS`` characters, then a
    line saying how much more there is and how to read it (the ticket keeps it all)."""
    if len(text) <= NOTICE_TEXT_CHARS:
        return text
    rest = len(text) - NOTICE_TEXT_CHARS
    return (
        text[:NOTICE_TEXT_CHARS]
        + f"\n\n[... {rest:,} more characters not shown here: read the whole message with"
        + f" `maildesk tickets show {ticket.id}`]"
    )


def token_address(desk: Desk, ticket: Ticket, agent: AgentSettings, now: datetime) -> str:
    """The address that acts on ``ticket`` as ``agent``: their reply token for it."""
    expires = now + timedelta(days=desk.settings.security.token_days)
    token = marks.make_token(desk.settings.desk.secret, agent.email, ticket.id, expires)
    return marks.reply_address(desk.settings.desk.address, token)


def personal_address(desk: Desk, agent: AgentSettings) -> str:
    """``agent``'s personal desk address: what proves mail on no ticket as theirs."""
    settings = desk.settings.desk
    return marks.personal_address(
        settings.secret, settings.address, agent.email, agent.address_version
    )


def agent_mail(
    desk: Desk,
    ticket: Ticket,
    agent: AgentSettings,
    kind: str,
    template: str,
    now: datetime,
    **context: Any,
) -> Mail:
    """A notice to an agent; its Reply-To carries the agent's token for this ticket. A text it
    quotes (a customer's message, an escalation's summary) is cut by ``notice_text``."""
    for key in ("text", "summary"):
        if isinstance(context.get(key), str):
            context[key] = notice_text(ticket, context[key])
    return Mail(
        kind=kind,
        template=template,
        to=agent.email,
        ticket=ticket,
        context={
            **ticket_context(desk, ticket, to_agent=True),
            "agent": {"email": agent.email, "name": agent.name},
            "help": guide.NOTICE_HELP,
            **context,
        },
        automatic=True,
        to_agent=True,
        reply_to=token_address(desk, ticket, agent, now),
        references=thread_ids(ticket),
        actions=one_tap(desk, ticket, agent, template),
    )


# The notices that tell an agent about a ticket end with one-tap links; the mails that answer
# her own message (a receipt, a held reply, an unverified one) do not: she has just acted.
LINKED = frozenset(
    (
        "agent_new",
        "agent_assigned",
        "agent_customer_replied",
        "agent_reopened",
        "agent_escalated",
        "agent_sla",
        "agent_bounce",
        "agent_files",
    )
)


def one_tap(desk: Desk, ticket: Ticket, agent: AgentSettings, template: str) -> tuple[Action, ...]:
    """The links a notice made from ``template`` ends with, as the ticket stands: "Take it"
    unless it is hers already, "Close" and "Escalate to <team>" (each team but its own) while
    it is not closed, "Internal note" always; none on a merged or spam ticket (nothing to act
    on there)."""
    if template not in LINKED or ticket.status in (Status.MERGED, Status.SPAM):
        return ()
    found = []
    is_open = ticket.status != Status.CLOSED
    if is_open and (ticket.assignee or "").lower() != agent.email.lower():
        found.append(Action("Take it", "#assign me"))
    if is_open:
        found.append(Action("Close", "#close"))
    found.append(Action("Internal note", "#note "))
    if is_open:
        found += [
            Action(f"Escalate to {team.name}", f"#escalate {team.name} ")
            for team in desk.settings.teams
            if team.name != ticket.team
        ]
    return tuple(found)


NO_ADDRESS = (
    "this ticket has no usable customer address (its first mail had none in From:, Sender: "
    "or Reply-To:)"
)


def enqueue(
    session: Session, desk: Desk, mails: Iterable[Mail], now: datetime
) -> list[tuple[Mail, str]]:
    """Enqueue ``mails``; returns the customers' mails held back, with why (the hourly cap,
    an address that bounced...). Mail to the customer of a ticket without a usable address is
    not written at all, and mail the SMTP server is known not to take is written as failed; the
    ticket's timeline records either, with the reason."""
    held = []
    for mail in mails:
        ticket = mail.ticket
        if mail.to_agent or ticket is None:
            desk.mailer.enqueue(session, mail, now)
        elif not mail.to:
            event(session, ticket, "not_mailed", "", now, mail=mail.kind, reason=NO_ADDRESS)
        else:
            mail = _copyable(session, desk, mail, now)
            undeliverable = {a: desk.mailer.undeliverable(session, a) for a in (mail.to, *mail.cc)}
            queued = desk.mailer.enqueue(session, mail, now)
            for address, why in undeliverable.items():
                if why:
                    detail = {"mail": mail.kind, "recipient": address, "error": why}
                    event(session, ticket, "mail_failed", "", now, **detail)
            if queued.held and not undeliverable[mail.to]:
                held.append((mail, queued.held))
    return held


def uncopied(session: Session, desk: Desk, mails: Iterable[Mail]) -> dict[str, str]:
    """The Cc of ``mails`` the SMTP server cannot be given, with why (``undeliverable``)."""
    found = {}
    for mail in mails:
        for address in mail.cc:
            why = desk.mailer.undeliverable(session, address, copied=True)
            if why:
                found[address] = why
    return found


def _copyable(session: Session, desk: Desk, mail: Mail, now: datetime) -> Mail:
    """``mail`` without the Cc it cannot carry; each left out is on the ticket's timeline."""
    left_out = uncopied(session, desk, (mail,))
    if not left_out or mail.ticket is None:
        return mail
    for address, why in left_out.items():
        event(
            session,
            mail.ticket,
            "not_copied",
            "",
            now,
            mail=mail.kind,
            recipient=address,
            error=why,
        )
    return replace(mail, cc=tuple(a for a in mail.cc if a not in left_out))


def not_mailed(session: Session, desk: Desk, ticket: Ticket, mails: Sequence[Mail]) -> str | None:
    """Why the customer was not mailed by the mail an agent's message causes (None: they were,
    or nothing was for them): the ticket has no usable address, or the SMTP server is known
    not to take mail to it. Said in the agent's receipt."""
    if not ticket.requester:
        return NO_ADDRESS
    if any(not mail.to_agent for mail in mails):
        return desk.mailer.undeliverable(session, ticket.requester)
    return None


def admin_alert(desk: Desk, subject: str, text: str) -> Mail | None:
    """A mail to ``[desk] admin_address``; None when there is none."""
    admin = desk.settings.desk.admin_address
    if not admin:
        return None
    return Mail(
        kind="alert",
        template="admin_alert",
        to=admin,
        context={"subject": subject, "text": text},
        to_agent=True,
    )


def notify_team(
    desk: Desk,
    ticket: Ticket,
    kind: str,
    template: str,
    now: datetime,
    *,
    but: str | None = None,
    **ctx: Any,
) -> list[Mail]:
    """Every agent of the ticket's team, but the one ``but`` names."""
    return [
        agent_mail(desk, ticket, agent, kind, template, now, **ctx)
        for agent in desk.settings.team_agents(ticket.team)
        if agent.email != but
    ]


def notify_owner(
    desk: Desk, ticket: Ticket, kind: str, template: str, now: datetime, **ctx: Any
) -> list[Mail]:
    """The assignee, else every agent of the ticket's team."""
    assignee = desk.settings.agent(ticket.assignee)
    if assignee is not None:
        return [agent_mail(desk, ticket, assignee, kind, template, now, **ctx)]
    return notify_team(desk, ticket, kind, template, now, **ctx)


def attachment_notes(inbound: Inbound) -> list[dict[str, Any]]:
    return [{"filename": a.filename, "size": a.size} for a in inbound.attachments if a.dropped]


def canned_context(desk: Desk, ticket: Ticket) -> dict[str, Any]:
    """What a canned reply's template sees."""
    return {
        **ticket_context(desk, ticket),
        "customer": {"email": ticket.requester},
        "desk": {"name": desk.settings.desk.name, "address": desk.settings.desk.address},
    }
