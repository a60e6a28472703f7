"""The lifecycle rules: open, reply, note, assign, escalate, close, reopen, rate.

Each rule changes a ticket inside the caller's transaction and says which mail that causes, as
``outbox.Mail`` values handed to the ``Mailer`` (written to the outbox in the same transaction).
Every step that matters to the customer emails them; nothing internal ever does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk import auth, commands
from maildesk.config import AgentSettings, Settings
from maildesk.inbound import Inbound
from maildesk.models import (
    Attachment,
    Event,
    Message,
    Outbox,
    Participant,
    Status,
    Tag,
    Ticket,
    insert_row,
)
from maildesk.outbox import Mail, Mailer
from maildesk.parsing import Parser
from maildesk.routing import Identity, TicketView
from maildesk.store import Store

log = logging.getLogger(__name__)

RATING = re.compile(
    r"^\s*(?:rating\s*[:=]?\s*)?([1-5])(?:\s*/\s*5)?(?![\d.,])\s*[-:.,!)]*\s*(.*)$", re.I | re.S
)


@dataclass(frozen=True, slots=True)
class StoredMail:
    """Where the raw bytes of the message being handled were kept."""

    raw_path: str | None
    sha256: str | None


class Desk:
    """What the lifecycle rules need: settings, the blob store, the mailer and the clock; and
    the parser, whose worker processes parse each message within its budget."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        mailer: Mailer | None = None,
        clock: Callable[[], datetime] | None = None,
        parser: Parser | None = None,
    ) -> None:
        from datetime import UTC

        self.settings = settings
        self.store = store or Store(settings.desk.data_dir)
        self.mailer = mailer or Mailer(settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.parser = parser or Parser()  # starts no process until it is used
        self.identity = Identity(
            address=settings.desk.address,
            secret=settings.desk.secret,
            loop_id=settings.desk.loop_id,
            ref_pattern=settings.desk.ref_pattern,
            agents=frozenset(a.email for a in settings.agents),
        )
        self.directory = commands.Directory(
            agents=tuple((a.email, a.name, a.teams) for a in settings.agents),
            teams=tuple(t.name for t in settings.teams),
            canned=tuple(self.canned_names()),
        )

    def canned_names(self) -> list[str]:
        prefix = "canned/"
        return [
            n[len(prefix) : -len(".txt.j2")]
            for n in self.mailer.templates.names(prefix)
            if n.endswith(".txt.j2")
        ]

    def ref(self, ticket: Ticket) -> str:
        return self.settings.desk.ref(ticket.id)

    def close(self) -> None:
        """End the parser's worker processes."""
        self.parser.close()


# --------------------------------------------------------------------------- lookups


class Threads:
    """``routing.Threads`` on a session: indexed lookups by Message-ID and number."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def by_message_ids(self, message_ids: Sequence[str]) -> TicketView | None:
        ids = [m for m in message_ids if m][:50]
        if not ids:
            return None
        ticket_id = self.session.scalar(
            select(Message.ticket_id).where(Message.message_id.in_(ids)).limit(1)
        )
        if ticket_id is None:
            ticket_id = self.session.scalar(
                select(Outbox.ticket_id)
                .where(Outbox.message_id.in_(ids), Outbox.ticket_id.is_not(None))
                .limit(1)
            )
        return self.by_number(ticket_id) if ticket_id is not None else None

    def by_number(self, number: int) -> TicketView | None:
        ticket = self.session.get(Ticket, number)
        if ticket is None:
            return None
        return TicketView(
            id=ticket.id,
            requester=ticket.requester,
            participants=frozenset(p.address for p in ticket.participants),
            status=ticket.status,
        )


# --------------------------------------------------------------------------- helpers


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


def add_message(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound | None,
    stored: StoredMail | None,
    *,
    sender: str,
    text: str,
    at: datetime,
    internal: bool = False,
    unverified: bool = False,
    automatic: str | None = None,
    message_id: str | None = None,
) -> Message:
    """A message on the ticket's thread, with its attachments kept in the blob store."""
    message = Message(
        ticket=ticket,
        message_id=message_id
        if message_id is not None
        else (inbound.message_id if inbound else None),
        sender=sender,
        internal=internal,
        unverified=unverified,
        automatic=automatic,
        subject=inbound.subject if inbound else "",
        text=text,
        raw_path=stored.raw_path if stored else None,
        sha256=stored.sha256 if stored else None,
        defects="\n".join(inbound.defects) if inbound else "",
        created_at=at,
    )
    session.add(message)
    for part in inbound.attachments if inbound else ():
        path = None if part.dropped else desk.store.put_blob(part.payload, part.sha256)
        message.attachments.append(
            Attachment(
                filename=part.filename,
                content_type=part.content_type,
                size=part.size,
                sha256=part.sha256,
                path=path,
                inline=part.inline,
                dropped=part.dropped,
            )
        )
    ticket.updated_at = at
    return message


def set_status(ticket: Ticket, status: Status, at: datetime) -> None:
    if ticket.status != status:
        ticket.status = status
        ticket.status_since = at
    if status is Status.CLOSED:
        ticket.closed_at = at
    elif ticket.closed_at is not None and status is not Status.CLOSED:
        ticket.closed_at = None


def thread_ids(ticket: Ticket) -> tuple[str, ...]:
    """Message-IDs of the customer-visible thread, oldest first (for References)."""
    ids = [m.message_id for m in ticket.messages if m.message_id and not m.internal]
    return tuple(ids[-10:])


def last_customer_message_id(ticket: Ticket) -> str | None:
    for message in reversed(ticket.messages):
        if message.sender == ticket.requester and message.message_id:
            return message.message_id
    return None


def ticket_context(desk: Desk, ticket: Ticket) -> dict[str, Any]:
    return {
        "ticket": {
            "ref": desk.ref(ticket),
            "number": ticket.id,
            # a customer's "#word" must not become a command when an agent replies to it
            "subject": commands.defang(ticket.subject),
            "status": ticket.status,
            "priority": ticket.priority,
            "team": ticket.team,
            "assignee": ticket.assignee,
            "requester": ticket.requester,
            "tags": sorted(t.tag for t in ticket.tags),
        }
    }


def customer_mail(desk: Desk, ticket: Ticket, kind: str, template: str, **context: Any) -> Mail:
    automatic = kind != "reply"
    return Mail(
        kind=kind,
        template=template,
        to=ticket.requester,
        ticket=ticket,
        context={**ticket_context(desk, ticket), **context},
        automatic=automatic,
        auto_submitted="auto-replied" if kind == "ack" else "auto-generated",
        in_reply_to=last_customer_message_id(ticket),
        references=thread_ids(ticket),
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
    """A notice to an agent; its Reply-To carries the agent's token for this ticket."""
    expires = now + timedelta(days=desk.settings.security.token_days)
    token = auth.make_token(desk.settings.desk.secret, agent.email, ticket.id, expires)
    return Mail(
        kind=kind,
        template=template,
        to=agent.email,
        ticket=ticket,
        context={
            **ticket_context(desk, ticket),
            "agent": {"email": agent.email, "name": agent.name},
            "help": commands.HELP,
            **context,
        },
        automatic=True,
        to_agent=True,
        reply_to=auth.reply_address(desk.settings.desk.address, token),
        references=thread_ids(ticket),
    )


def send(session: Session, desk: Desk, mails: Iterable[Mail], now: datetime) -> None:
    for mail in mails:
        desk.mailer.enqueue(session, mail, now)


def notify_team(
    desk: Desk, ticket: Ticket, kind: str, template: str, now: datetime, **ctx: Any
) -> list[Mail]:
    return [
        agent_mail(desk, ticket, agent, kind, template, now, **ctx)
        for agent in desk.settings.team_agents(ticket.team)
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


# --------------------------------------------------------------------------- rules


def open_ticket(
    session: Session,
    desk: Desk,
    inbound: Inbound,
    stored: StoredMail,
    *,
    team: str,
    mailbox: str,
    now: datetime,
    acknowledge: bool = True,
    linked_to: Ticket | None = None,
) -> Ticket:
    """A new ticket from a customer's mail: acknowledgment to them, notice to the team."""
    requester = inbound.sender or ""
    ticket = Ticket(
        subject=inbound.subject or "(no subject)",
        requester=requester,
        status=Status.OPEN,
        priority="medium",
        team=team,
        mailbox=mailbox,
        created_at=now,
        updated_at=now,
        status_since=now,
        linked_to=linked_to.id if linked_to is not None else None,
        # a new ticket's collections are known to be empty: no lazy loads for them
        tags=[],
        participants=[],
        messages=[],
        events=[],
    )
    session.add(ticket)
    session.flush()
    agents = desk.identity.agents
    for address in inbound.cc:
        if address not in agents and address != desk.settings.desk.address and address != requester:
            ticket.participants.append(Participant(address=address))
    add_message(
        session, desk, ticket, inbound, stored, sender=requester, text=inbound.text.strip(), at=now
    )
    detail: dict[str, Any] = {"mailbox": mailbox}
    if linked_to is not None:
        detail["linked_to"] = desk.ref(linked_to)
    if not requester:
        detail["warning"] = "the From: address is missing or ambiguous; no acknowledgment sent"
    event(session, ticket, "created", requester, now, **detail)
    mails = notify_team(
        desk, ticket, "notice", "agent_new", now, text=inbound.text.strip(), sender=requester
    )
    if acknowledge and requester:
        mails.append(
            customer_mail(
                desk,
                ticket,
                "ack",
                "ack",
                dropped=attachment_notes(inbound),
                max_attachment_bytes=desk.settings.limits.max_attachment_bytes,
            )
        )
        event(session, ticket, "acknowledged", "", now)
    track_sla(desk, ticket)
    send(session, desk, mails, now)
    log.info(
        "new ticket %s from %s <%s>",
        desk.ref(ticket),
        requester,
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return ticket


def automatic_followup(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    reason: str,
    now: datetime,
) -> None:
    """Automatic mail that threads (an out-of-office reply...): kept, nothing else happens."""
    add_message(
        session,
        desk,
        ticket,
        inbound,
        stored,
        sender=inbound.sender or "",
        text=inbound.reply_text.strip(),
        at=now,
        automatic=reason,
    )


def customer_reply(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    *,
    mailbox: str,
    now: datetime,
) -> Ticket:
    """A reply from the requester, a participant or anyone holding the thread's Message-IDs."""
    sender = inbound.sender or ""
    text = inbound.reply_text.strip()
    if ticket.status == Status.CLOSED:
        rating = RATING.match(text)
        if rating and sender == ticket.requester:
            add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
            ticket.rating = int(rating.group(1))
            ticket.rating_comment = rating.group(2).strip() or None
            event(
                session,
                ticket,
                "rating",
                sender,
                now,
                rating=ticket.rating,
                comment=ticket.rating_comment,
            )
            return ticket
        closed_at = ticket.closed_at or ticket.status_since
        if now - closed_at > timedelta(days=desk.settings.lifecycle.reopen_days):
            return open_ticket(
                session,
                desk,
                inbound,
                stored,
                team=ticket.team,
                mailbox=mailbox,
                now=now,
                linked_to=ticket,
            )
        add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
        set_status(ticket, Status.OPEN, now)
        event(session, ticket, "reopened", sender, now)
        track_sla(desk, ticket)
        send(
            session,
            desk,
            notify_owner(desk, ticket, "notice", "agent_reopened", now, text=text, sender=sender),
            now,
        )
        return ticket
    add_message(session, desk, ticket, inbound, stored, sender=sender, text=text, at=now)
    if ticket.status == Status.PENDING:
        set_status(ticket, Status.OPEN, now)
        event(session, ticket, "customer_replied", sender, now, status="open")
        track_sla(desk, ticket)
    send(
        session,
        desk,
        notify_owner(
            desk, ticket, "notice", "agent_customer_replied", now, text=text, sender=sender
        ),
        now,
    )
    return ticket


def escalate(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    team: str,
    *,
    actor: str,
    by: str,
    summary: str,
    now: datetime,
    logged_summary: str | None = None,
) -> list[Mail]:
    """Hand the ticket to ``team``: status escalated, that team told, the customer told.

    An assignee outside the new team is unassigned. ``summary`` is for the team only (the
    customer's notice never shows it); ``logged_summary`` is what the event keeps (default:
    the summary). Used by ``#escalate`` and by a missed SLA target with ``escalate_to``.
    """
    ticket.team = team
    set_status(ticket, Status.ESCALATED, now)
    owner = desk.settings.agent(ticket.assignee)
    if ticket.assignee and (owner is None or team not in owner.teams):
        ticket.assignee = None
    logged = summary if logged_summary is None else logged_summary
    event(session, ticket, "escalated", actor, now, team=team, summary=logged)
    return [
        *notify_team(desk, ticket, "notice", "agent_escalated", now, summary=summary, by=by),
        customer_mail(desk, ticket, "escalated", "escalated"),
    ]


def track_sla(desk: Desk, ticket: Ticket) -> None:
    """Keep the ticket's next SLA due time (``due_at``) current after a rule changed it."""
    from maildesk import automation  # automation acts through these rules: import at call time

    automation.refresh_due(ticket, desk.settings)


# --------------------------------------------------------------------------- agents


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    applied: tuple[str, ...]
    refused: tuple[str, ...]
    verified: bool


def agent_message(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    now: datetime,
) -> AgentOutcome:
    """An agent's mail on a ticket: authenticate, then apply its commands and reply, or refuse."""
    text = inbound.reply_text.strip()
    parsed = commands.parse(inbound.subject, text, desk.settings.desk.ref_pattern)
    proof = prove(desk, ticket, inbound, agent, now)
    if not proof.ok:
        return refuse_unverified(session, desk, ticket, inbound, stored, agent, proof, parsed, now)
    validation = commands.validate(parsed, desk.directory, agent.email)
    if not validation.ok:
        add_message(
            session,
            desk,
            ticket,
            inbound,
            stored,
            sender=agent.email,
            text=parsed.text,
            at=now,
            internal=True,
        )
        event(
            session, ticket, "command_refused", agent.email, now, refused=list(validation.refusals)
        )
        receipt = receipt_mail(desk, ticket, agent, now, [], validation.refusals, bool(parsed.text))
        send(session, desk, [receipt], now)
        return AgentOutcome((), validation.refusals, True)
    applied, mails = apply_actions(
        session, desk, ticket, inbound, stored, agent, validation.actions, parsed.text, now
    )
    if parsed.commands:
        mails.append(receipt_mail(desk, ticket, agent, now, applied, (), False))
    send(session, desk, mails, now)
    return AgentOutcome(tuple(applied), (), True)


def prove(
    desk: Desk, ticket: Ticket, inbound: Inbound, agent: AgentSettings, now: datetime
) -> auth.Proof:
    """Whether this mail provably comes from ``agent``: a reply token or a trusted verdict."""
    if inbound.sender != agent.email:
        return auth.Proof(
            False,
            "",
            "The From: header is ambiguous (it shows more than one address), "
            "so it cannot prove who sent it.",
        )
    settings = desk.settings
    return auth.authenticate(
        secret=settings.desk.secret,
        desk_address=settings.desk.address,
        agent=agent.email,
        ticket_number=ticket.id,
        addresses=[*inbound.to, *inbound.cc, *inbound.delivered_to],
        authentication_results=inbound.header("authentication-results"),
        trusted_authserv_ids=settings.security.trusted_authserv_ids,
        agent_auth=settings.security.agent_auth,
        now=now,
    )


def refuse_unverified(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    proof: auth.Proof,
    parsed: commands.Parsed,
    now: datetime,
) -> AgentOutcome:
    """Nothing applies and nothing reaches the customer: the text becomes an unverified note
    and the agent's registered address (never the inbound From) is told why."""
    text = inbound.reply_text.strip()
    add_message(
        session,
        desk,
        ticket,
        inbound,
        stored,
        sender=agent.email,
        text=text,
        at=now,
        internal=True,
        unverified=True,
    )
    event(session, ticket, "command_refused", agent.email, now, reason=proof.reason, verified=False)
    notice = agent_mail(
        desk,
        ticket,
        agent,
        "receipt",
        "agent_unverified",
        now,
        reason=proof.reason,
        commands=[c.source for c in parsed.commands],
        text=text,
    )
    send(session, desk, [notice], now)
    log.warning(
        "unverified agent mail for %s claiming %s: %s <%s>",
        desk.ref(ticket),
        agent.email,
        proof.reason,
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return AgentOutcome((), (proof.reason,), False)


def receipt_mail(
    desk: Desk,
    ticket: Ticket,
    agent: AgentSettings,
    now: datetime,
    applied: Sequence[str],
    refused: Sequence[str],
    kept_as_note: bool,
) -> Mail:
    """The one reply to an agent's commands: what was done, what was refused, and the help."""
    return agent_mail(
        desk,
        ticket,
        agent,
        "receipt",
        "agent_receipt",
        now,
        applied=list(applied),
        refused=list(refused),
        kept_as_note=kept_as_note,
    )


def apply_actions(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound,
    stored: StoredMail,
    agent: AgentSettings,
    actions: Sequence[commands.Action],
    text: str,
    now: datetime,
) -> tuple[list[str], list[Mail]]:
    """Carry out validated actions, then the text: a note, a summary, a resolution or a reply."""
    verbs = {a.verb for a in actions}
    applied: list[str] = []
    mails: list[Mail] = []
    actor = agent.email
    canned = [a.value for a in actions if a.verb == "reply" and a.value]
    for action in actions:
        line = commands.describe(action)
        if action.verb == "assign" and action.value != ticket.assignee:
            ticket.assignee = action.value
            event(session, ticket, "assigned", actor, now, assignee=action.value)
            target = desk.settings.agent(action.value)
            if target is not None and target.email != actor:
                mails.append(
                    agent_mail(desk, ticket, target, "notice", "agent_assigned", now, by=agent.name)
                )
        elif action.verb == "priority" and action.value != ticket.priority:
            event(session, ticket, "priority", actor, now, old=ticket.priority, new=action.value)
            ticket.priority = action.value or ticket.priority
        elif action.verb == "tag":
            new = [w for w in action.words if w not in ticket.tag_names]
            for word in new:
                ticket.tags.append(Tag(tag=word))
            if new:
                event(session, ticket, "tagged", actor, now, added=new)
        elif action.verb == "untag":
            gone = [t for t in ticket.tags if t.tag in action.words]
            for tag in gone:
                ticket.tags.remove(tag)
            if gone:
                event(session, ticket, "untagged", actor, now, removed=[t.tag for t in gone])
        elif action.verb == "reopen" and ticket.status == Status.CLOSED:
            set_status(ticket, Status.OPEN, now)
            event(session, ticket, "reopened", actor, now)
        elif action.verb == "escalate":
            mails += escalate(
                session,
                desk,
                ticket,
                action.value or ticket.team,
                actor=actor,
                by=agent.name,
                summary=text,
                logged_summary=text if "note" not in verbs else "",
                now=now,
            )
        applied.append(line)

    if "note" in verbs or ("escalate" in verbs and text):
        if text:
            add_message(
                session,
                desk,
                ticket,
                inbound,
                stored,
                sender=actor,
                text=text,
                at=now,
                internal=True,
            )
            if "note" in verbs:
                event(session, ticket, "note", actor, now)
    elif "close" in verbs:
        _close(session, desk, ticket, inbound, stored, actor, text, canned, now, mails)
    elif text or canned:
        body = "\n\n".join([*(_canned(desk, ticket, name) for name in canned), text]).strip()
        add_message(session, desk, ticket, inbound, stored, sender=actor, text=body, at=now)
        mails.append(
            customer_mail(desk, ticket, "reply", "reply", text=body, agent={"name": agent.name})
        )
        if ticket.first_response_at is None:
            ticket.first_response_at = now
        if ticket.status != Status.CLOSED and "escalate" not in verbs:
            set_status(ticket, Status.PENDING, now)
        event(session, ticket, "replied", actor, now)
    if "close" in verbs and ("note" in verbs or "escalate" in verbs):
        _close(session, desk, ticket, None, None, actor, "", canned, now, mails)
    track_sla(desk, ticket)
    return applied, mails


def _close(
    session: Session,
    desk: Desk,
    ticket: Ticket,
    inbound: Inbound | None,
    stored: StoredMail | None,
    actor: str,
    text: str,
    canned: list[str],
    now: datetime,
    mails: list[Mail],
) -> None:
    if ticket.status == Status.CLOSED:
        return
    resolution = "\n\n".join([*(_canned(desk, ticket, n) for n in canned), text]).strip()
    if resolution and inbound is not None:
        add_message(session, desk, ticket, inbound, stored, sender=actor, text=resolution, at=now)
        if ticket.first_response_at is None:
            ticket.first_response_at = now
    set_status(ticket, Status.CLOSED, now)
    event(session, ticket, "closed", actor, now, resolution=resolution)
    mails.append(customer_mail(desk, ticket, "closed", "closed", resolution=resolution))


def _canned(desk: Desk, ticket: Ticket, name: str) -> str:
    context = {
        **ticket_context(desk, ticket),
        "customer": {"email": ticket.requester},
        "desk": {"name": desk.settings.desk.name, "address": desk.settings.desk.address},
    }
    _subject, body, _html = desk.mailer.templates.render(f"canned/{name}", context)
    return body.strip()
