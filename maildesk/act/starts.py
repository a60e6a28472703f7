"""An agent's mail on no ticket: prove it, then start what it asks (``#new``, a forwarded
customer's mail) or tell the agent what such mail can do; unproven, keep it in quarantine and
tell the agent how to use their personal desk address.

Reached from ``ingest.handle`` for routing's ``FromAgent``. Deciding is ``desk.starts``'s; here
the ticket is opened, its plan carried out (``act.apply``) and the mails queued, in the
message's transaction. Such a mail never becomes a customer's ticket about the agent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maildesk.act import agents, exposure, guard, queries, tickets
from maildesk.act.apply import Scene, carry_out, state_of
from maildesk.act.means import Desk, StoredMail
from maildesk.act.notices import enqueue, personal_address
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings
from maildesk.desk import auth, commands, starts
from maildesk.desk import queries as desk_queries
from maildesk.mail.inbound import Inbound
from maildesk.mail.parse.forward import Forwarded
from maildesk.models import Ticket

log = logging.getLogger("maildesk.tickets")  # the logs name the job, not the module path

UNVERIFIED = "unverified agent mail"  # the quarantine reason, before why
ADDRESS_NOTICE = "address_notice"  # the outbox kind of the notice about it
HELD_BACK = "held back: one notice about unverified mail without a ticket ref an hour"


@dataclass(frozen=True, slots=True)
class Arrival:
    """An agent's mail on no ticket as it is handled: the transaction, the desk's means, the
    message and where its bytes were kept, the mailbox it came to and its team, the moment."""

    session: Session
    desk: Desk
    inbound: Inbound
    stored: StoredMail
    mailbox: str
    team: str
    now: datetime


@dataclass(frozen=True, slots=True)
class Started:
    """What became of it: the ticket it opened (None: none), why, and whether it is kept in
    quarantine (unproven)."""

    ticket: Ticket | None
    reason: str
    quarantined: bool = False
    answered: bool = False  # queries (``#list``, ``#show``...), answered; nothing changed


def from_agent(arrival: Arrival, sender: str) -> Started:
    """``sender``'s mail on no ticket (routing found From: to be theirs): proven, it starts
    what it asks or the agent is told what it can do; unproven, it acts on nothing."""
    desk, inbound = arrival.desk, arrival.inbound
    agent = desk.settings.agent(sender)
    assert agent is not None, f"no agent {sender}"
    parsed = commands.parse(
        inbound.subject,
        inbound.reply_text.strip(),
        desk.settings.desk.ref_pattern,
        desk.directory.teams,
    )
    proof = agents.prove(desk, None, inbound, agent, arrival.now)
    if not proof.ok:
        return unproven(arrival, agent, proof, parsed)
    exposure.check(arrival.session, desk, agent, proof, inbound, arrival.now)
    asking = desk_queries.asking(inbound.subject, inbound.reply_text)
    if asking is not None:
        lines = desk_queries.asked(asking, agent.email, desk.directory.teams)
        said = queries.answer(arrival.session, desk, agent, lines, arrival.now)
        return Started(None, said, answered=True)
    start = starts.decide(parsed, desk.directory, agent.email, desk.settings.desk.address)
    if isinstance(start, starts.Unstarted) and inbound.forwarded is not None:
        return forward(arrival, agent, inbound.forwarded)
    match starts.placed(parsed, start):
        case starts.Conversation() as asked:
            return conversation(arrival, agent, asked)
        case starts.Refused(reasons=reasons):
            not_started(arrival, agent, reasons)
            return Started(None, "agent mail without a ticket ref refused: " + "; ".join(reasons))
    not_started(arrival, agent, ())
    return Started(None, "agent mail without a ticket ref started nothing; the agent was told")


def conversation(arrival: Arrival, agent: AgentSettings, start: starts.Conversation) -> Started:
    """``#new``: a ticket for the customer, the agent's text mailed to them, a receipt."""
    session, desk, now = arrival.session, arrival.desk, arrival.now
    subject = starts.subject_of(arrival.inbound.subject)
    opening = tickets.Opening(arrival.team, arrival.mailbox)
    ticket = tickets.blank_ticket(session, desk, start.address, subject, opening, now)
    scene = Scene(session, desk, ticket, arrival.inbound, arrival.stored, now)
    plan = starts.conversation(start, agent, arrival.team, arrival.mailbox, desk.directory)
    mails = carry_out(scene, plan)
    receipt = agents.mail_out(scene, mails, plan)  # its files too: sent on, or not and why
    enqueue(session, desk, [agents.receipt_mail(desk, ticket, agent, now, receipt)], now)
    log.info(
        "new ticket %s with %s started by %s <%s>",
        desk.ref(ticket),
        start.address,
        agent.email,
        arrival.inbound.message_id,
        extra={"message_id": arrival.inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return Started(ticket, f"started by {agent.email}")


def forward(arrival: Arrival, agent: AgentSettings, forwarded: Forwarded) -> Started:
    """A forwarded customer's mail: a ticket for its sender, made as if they had written to the
    desk (their text and files the first message, acknowledged when ``[lifecycle]
    ack_forwarded``), then the agent's commands and words (an internal note), and a receipt."""
    session, desk, inbound, now = arrival.session, arrival.desk, arrival.inbound, arrival.now
    parsed = starts.note_commands(
        forwarded.note.strip(), desk.settings.desk.ref_pattern, desk.directory.teams
    )
    start = starts.forward(
        parsed, forwarded.sender, desk.directory, agent.email, desk.settings.desk.address
    )
    if isinstance(start, starts.Refused):
        not_started(arrival, agent, start.reasons)
        return Started(None, "forwarded mail refused: " + "; ".join(start.reasons))
    acknowledge = desk.settings.lifecycle.ack_forwarded
    told = starts.forwarding(start, agent)
    opening = tickets.Opening(arrival.team, arrival.mailbox, acknowledge=acknowledge, forward=told)
    first = as_written(inbound, forwarded)
    ticket = tickets.open_ticket(session, desk, first, arrival.stored, opening, now)
    # the agent's words: a message of its own, without the files the first one has
    own = replace(inbound, message_id=None, attachments=(), forwarded=None)
    scene = Scene(session, desk, ticket, own, arrival.stored, now)
    plan = starts.forwarded(state_of(ticket), start, agent, desk.directory)
    mails = carry_out(scene, plan)
    receipt = agents.mail_out(scene, mails, plan)
    enqueue(session, desk, [agents.receipt_mail(desk, ticket, agent, now, receipt)], now)
    return Started(ticket, f"forwarded by {agent.email}")


def as_written(inbound: Inbound, forwarded: Forwarded) -> Inbound:
    """The forwarded message as if its sender had written to the desk: their address, subject,
    text and files, and nothing of the forwarding mail's own addressing (its To and Cc are the
    agent's, not the customer's)."""
    return replace(
        inbound,
        subject=forwarded.subject,
        sender=forwarded.sender,
        sender_name=forwarded.sender_name,
        claimed_sender=forwarded.sender,
        requester=forwarded.sender,
        to=(),
        cc=(),
        reply_to=(),
        in_reply_to=(),
        references=(),
        text=forwarded.text,
        reply_text=forwarded.text,
        html=None,
        attachments=forwarded.attachments,
        forwarded=None,
    )


def shown_subject(subject: str) -> str:
    """A subject quoted in mail to an agent, who may answer it: no ``#`` in it is a command or
    a ticket's ref (a forger chooses it)."""
    return subject.replace("#", "\uff03")


def to_agent(desk: Desk, agent: AgentSettings, kind: str, template: str, **context: Any) -> Mail:
    """A mail to ``agent`` about no ticket; its Reply-To is their personal desk address."""
    address = personal_address(desk, agent)
    return Mail(
        kind=kind,
        template=template,
        to=agent.email,
        context={
            "agent": {"email": agent.email, "name": agent.name},
            "address": address,
            **context,
        },
        to_agent=True,
        reply_to=address,
    )


def not_started(arrival: Arrival, agent: AgentSettings, refused: tuple[str, ...]) -> None:
    """The receipt of a proven mail that started nothing: why, and what such mail can do."""
    subject = shown_subject(starts.subject_of(arrival.inbound.subject))
    mail = to_agent(
        arrival.desk,
        agent,
        "receipt",
        "agent_start",
        refused=list(refused),
        subject=subject,
        help=commands.HELP,
    )
    enqueue(arrival.session, arrival.desk, [mail], arrival.now)


def unproven(
    arrival: Arrival, agent: AgentSettings, proof: auth.Proof, parsed: commands.Parsed
) -> Started:
    """Nothing applies and nobody else is mailed: the message stays in quarantine, and the
    agent's registered address (never the inbound From) is told how to use their personal
    address. Forged mail costs its sender nothing, so at most once an hour: a notice within
    the hour after the last one sent is kept in the outbox held back, and the next one sent
    says how many came since."""
    session, desk, now = arrival.session, arrival.desk, arrival.now
    why = unproven_reason(proof)
    cap = guard.hourly(session, ADDRESS_NOTICE, agent.email, now)
    mail = to_agent(
        desk,
        agent,
        ADDRESS_NOTICE,
        "agent_address",
        reason=why,
        commands=agents.listed_commands(parsed),
        count=cap.held + 1,
        subject=shown_subject(arrival.inbound.subject),
        # a replay can prove the mail only by a trusted verdict it carries
        replay=bool(desk.settings.security.trusted_authserv_ids),
    )
    if cap.hold:
        mail = replace(mail, held_back=HELD_BACK)
    enqueue(session, desk, [mail], now)
    log.warning(
        "unverified agent mail without a ticket ref claiming %s: %s <%s>",
        agent.email,
        why,
        arrival.inbound.message_id,
        extra={"message_id": arrival.inbound.message_id, "ticket": "-"},
    )
    return Started(None, f"{UNVERIFIED}: {why}", quarantined=True)


def unproven_reason(proof: auth.Proof) -> str:
    """Why a mail on no ticket did not prove its sender, in one sentence for the agent."""
    if proof.token_reason in ("", "other_address"):  # an ambiguous From:, another's address
        return proof.reason
    return (
        "It was not sent to your personal desk address, and carried no trusted sender "
        "authentication."
    )
