"""An agent's mail on a ticket: prove who sent it, then plan and apply its commands, or refuse.

Reached from ``ingest.handle`` for a follow-up whose sender routing found to be an agent. The
commands are parsed and validated (``desk.commands``), planned (``desk.verbs``) and carried out
(``act.apply``); the agent gets one receipt. Mail that does not prove its sender becomes an
unverified note, and the agent is told at most once an hour.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.act import exposure, files, guard, holding, merging, queries
from maildesk.act.apply import Scene, carry_out, state_of
from maildesk.act.means import Desk
from maildesk.act.notices import CUSTOMER_MAILS, agent_mail, enqueue, not_mailed, uncopied
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings
from maildesk.desk import assignment, auth, commands, merges, plans, verbs
from maildesk.desk.plans import Plan, Record
from maildesk.desk.timers import utc_text
from maildesk.mail import marks
from maildesk.mail.inbound import Inbound
from maildesk.models import Message, Outbox, Ticket

log = logging.getLogger("maildesk.tickets")  # the logs name the job, not the module path


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    applied: tuple[str, ...]
    refused: tuple[str, ...]
    verified: bool


def agent_message(scene: Scene, agent: AgentSettings) -> AgentOutcome:
    """An agent's mail on a ticket: authenticate, then apply its commands and reply, or refuse."""
    desk, inbound = scene.desk, scene.inbound
    assert inbound is not None
    text = inbound.reply_text.strip()
    parsed = commands.parse(
        inbound.subject, text, desk.settings.desk.ref_pattern, desk.directory.teams
    )
    merged = merged_named(scene, inbound)
    proof = prove(desk, scene.ticket.id, inbound, agent, scene.now, merged=merged)
    if not proof.ok:
        return refuse_unverified(scene, agent, proof, parsed)
    exposure.check(scene.session, desk, agent, proof, inbound, scene.now)
    on = commands.OnTicket(
        scene.ticket.requester,
        tuple(p.address for p in scene.ticket.participants),
        named(scene, agent, parsed),
        first_sender(scene, parsed),
    )
    validation = commands.validate(parsed, desk.directory, agent.email, on)
    if not validation.ok:
        carry_out(scene, verbs.refused(agent.email, parsed.text, validation.refusals))
        refused = Receipt(
            refused=validation.refusals + queries.on_ticket(desk, agent, parsed),
            kept_as_note=bool(parsed.text),
            files=files.receipt_lines(desk, inbound, (), files.REFUSED),
        )
        enqueue(
            scene.session,
            desk,
            [receipt_mail(desk, scene.ticket, agent, scene.now, refused)],
            scene.now,
        )
        return AgentOutcome((), validation.refusals, True)
    before = state_of(scene.ticket)
    plan = verbs.plan_actions(before, validation.actions, agent, parsed.text, desk.directory)
    # a reply another agent's overtook is held (and claims nothing)
    overtaken = holding.overtaken(scene.session, desk, scene.ticket, inbound, agent)
    plan = merges.hold(plan, overtaken, agent.email, before.assignee)
    if desk.settings.lifecycle.claim_on_reply:
        plan = assignment.claimed(plan, before, agent.email)
    sending = sent_held(scene, agent, plan)
    mails = carry_out(scene, plan)
    receipt = mail_out(scene, mails, plan, sending)
    receipt = replace(receipt, help=any(a.verb == "help" for a in validation.actions))
    # commands (and a claim) have a receipt; a mail with files always: which went on, which not
    if plan.applied or receipt.says_more:
        enqueue(
            scene.session,
            desk,
            [receipt_mail(desk, scene.ticket, agent, scene.now, receipt)],
            scene.now,
        )
    return AgentOutcome(plan.applied, (), True)


def named(scene: Scene, agent: AgentSettings, parsed: commands.Parsed) -> merges.Named:
    """What ``#merge``, ``#link``, ``#send`` and ``#drop`` may name: the tickets the commands
    name that exist, and whether the agent has a reply held on this ticket."""
    verbs = {c.verb for c in parsed.commands}
    if not verbs & set(merges.VERBS):
        return merges.Named(scene.ticket.id)
    numbers = merges.named_numbers([(c.verb, c.args) for c in parsed.commands])
    found = scene.session.execute(select(Ticket.id, Ticket.status).where(Ticket.id.in_(numbers)))
    held = holding.held_by(scene.session, scene.ticket, agent.email) is not None
    return merges.Named(scene.ticket.id, tuple((n, str(s)) for n, s in found), held)


def first_sender(scene: Scene, parsed: commands.Parsed) -> str:
    """Whom the ticket's first customer mail came from (what ``#spam block`` blocks): the
    sender of its first public message no agent wrote; "" when it has none."""
    if not any(c.verb == "spam" for c in parsed.commands):
        return ""
    agents = [a.email for a in scene.desk.settings.agents]
    found = scene.session.scalar(
        select(Message.sender)
        .where(
            Message.ticket_id == scene.ticket.id,
            Message.internal.is_(False),
            Message.sender.not_in(agents),
        )
        .order_by(Message.id)
        .limit(1)
    )
    return found or ""


def sent_held(scene: Scene, agent: AgentSettings, plan: Plan) -> Message | None:
    """The held reply the plan's ``#send`` sends (read before it is sent, for the receipt)."""
    if not any(isinstance(step, plans.SendHeld) for step in plan.steps):
        return None
    return holding.held_by(scene.session, scene.ticket, agent.email)


def mail_out(
    scene: Scene, mails: Sequence[Mail], plan: Plan, sending: Message | None = None
) -> Receipt:
    """Enqueue the mails an agent's commands cause; the receipt says what was applied and who
    was not mailed, or was held back, or bounced before, and what became of each file of the
    agent's mail (and of the held reply ``sending``, which ``#send`` sent)."""
    session, ticket, now = scene.session, scene.ticket, scene.now
    unmailed = not_mailed(session, scene.desk, ticket, mails)
    bounced = None if unmailed else bounced_before(session, ticket, mails, now)
    left_out = {} if unmailed else uncopied(session, scene.desk, mails)
    held = enqueue(session, scene.desk, mails, now)
    why_not = files.NOT_MAILED if unmailed else None
    return Receipt(
        applied=plan.applied,
        not_mailed=unmailed,
        held=tuple(held_line(mail, why) for mail, why in held),
        bounced=bounced,
        uncopied=tuple(f"{address} was not copied: {why}" for address, why in left_out.items()),
        files=file_lines(scene, mails, plan, sending, why_not),
    )


def file_lines(
    scene: Scene,
    mails: Sequence[Mail],
    plan: Plan,
    sending: Message | None,
    why_not: str | None,
) -> tuple[str, ...]:
    """The receipt's lines about files: a held reply's go when ``#send`` sends it (the mail
    with ``#send`` is a note), and are held with it."""
    desk, inbound = scene.desk, scene.inbound
    if sending is not None:
        own = files.receipt_lines(desk, inbound, (), files.WITH_SEND)
        return (*own, *files.held_receipt_lines(desk, sending, why_not))
    if any(isinstance(step, plans.HoldReply) for step in plan.steps):
        return files.receipt_lines(desk, inbound, (), files.HELD)
    return files.receipt_lines(desk, inbound, mails, why_not)


def bounced_before(
    session: Session, ticket: Ticket, mails: Sequence[Mail], now: datetime
) -> str | None:
    """For the receipt: the agent's words went to an address whose automatic mail is
    suppressed, because it bounced permanently. They are sent all the same; the agent is told."""
    if all(mail.automatic or mail.to_agent for mail in mails):
        return None
    bounce = guard.bounced(session, ticket.requester, now)
    if bounce is None:
        return None
    on = f" on {utc_text(bounce.at)}" if bounce.at else ""
    return f"{ticket.requester} bounced permanently{on} ({bounce.status}); sent anyway"


def held_line(mail: Mail, why: str) -> str:
    """For the receipt: a mail to the customer made only from a template, held back."""
    name = CUSTOMER_MAILS.get(mail.kind, mail.kind)
    return (
        f"The {name} to {mail.to} was not mailed: {why}. Only mail made wholly from templates "
        "is held back; a mail with words you write always goes out"
    )


def merged_named(scene: Scene, inbound: Inbound) -> tuple[int, ...]:
    """The tickets the mail's reply tokens name that were merged into this one: an agent
    answering an old notice of a merged ticket proves it with that notice's token."""
    tokens = marks.tokens_in(addressed(inbound), scene.desk.settings.desk.address)
    named = (marks.token_ticket(token) for token in tokens)
    return merging.merged_into(scene.session, scene.ticket, [n for n in named if n is not None])


def addressed(inbound: Inbound) -> tuple[str, ...]:
    """Where the mail says it went: where its reply token or personal address is."""
    return (*inbound.to, *inbound.cc, *inbound.delivered_to)


def prove(
    desk: Desk,
    ticket_number: int | None,
    inbound: Inbound,
    agent: AgentSettings,
    now: datetime,
    *,
    merged: tuple[int, ...] = (),
) -> auth.Proof:
    """Whether this mail provably comes from ``agent``: a reply token for the ticket (None: a
    mail on no ticket) or for one merged into it (``merged``), the agent's personal address,
    or a trusted verdict."""
    if inbound.sender != agent.email:
        return auth.Proof(
            False,
            "",
            "The From: header is ambiguous (it shows more than one address), "
            "so it cannot prove who sent it.",
        )
    security = desk.settings.security
    trust = auth.Trust(
        desk.settings.desk.secret,
        desk.settings.desk.address,
        tuple(security.trusted_authserv_ids),
        security.agent_auth,
    )
    claim = auth.Claim(
        agent.email,
        ticket_number,
        addressed(inbound),
        inbound.authentication_results,
        agent.address_version,
        merged,
    )
    return auth.authenticate(trust, claim, now)


def refuse_unverified(
    scene: Scene, agent: AgentSettings, proof: auth.Proof, parsed: commands.Parsed
) -> AgentOutcome:
    """Nothing applies and nothing reaches the customer: the text becomes an unverified note
    and the agent's registered address (never the inbound From) is told why, at most once an
    hour (``unverified_notice``)."""
    inbound, ticket, desk = scene.inbound, scene.ticket, scene.desk
    assert inbound is not None
    text = inbound.reply_text.strip()
    carry_out(scene, verbs.unverified(agent.email, text))
    notice = unverified_notice(scene, agent, proof, parsed, text)
    detail = {"notice": "held back"} if notice.held_back else {}
    carry_out(
        scene,
        Plan(
            (
                Record(
                    "command_refused",
                    agent.email,
                    {"reason": proof.reason, "verified": False, **detail},
                ),
            )
        ),
    )
    enqueue(scene.session, desk, [notice], scene.now)
    log.warning(
        "unverified agent mail for %s claiming %s: %s <%s>",
        desk.ref(ticket),
        agent.email,
        proof.reason,
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": desk.ref(ticket)},
    )
    return AgentOutcome((), (proof.reason,), False)


UNVERIFIED_NOTICE = "unverified"  # the outbox kind of the notice about unverified mail
HELD_BACK = "held back: one notice about unverified mail an hour"


def unverified_notice(
    scene: Scene,
    agent: AgentSettings,
    proof: auth.Proof,
    parsed: commands.Parsed,
    text: str,
) -> Mail:
    """The notice to ``agent`` about an unverified mail in their name.

    Forged mail costs its sender nothing, so the agent hears of it at most once an hour: a
    notice within the hour after the last one sent is written to the outbox held back (counted
    in the database, so the cap holds across daemons), and the next one sent says how many
    came since the last notice and on which tickets."""
    session, desk, ticket, now = scene.session, scene.desk, scene.ticket, scene.now
    cap = guard.hourly(session, UNVERIFIED_NOTICE, agent.email, now)
    held_on = session.scalars(_HELD_TICKETS, cap.bind(agent.email, UNVERIFIED_NOTICE))
    numbers = {ticket.id, *held_on}
    mail = agent_mail(
        desk,
        ticket,
        agent,
        UNVERIFIED_NOTICE,
        "agent_unverified",
        now,
        reason=proof.reason,
        commands=listed_commands(parsed),
        text=text,
        count=cap.held + 1,
        tickets=[desk.settings.desk.ref(number) for number in sorted(numbers)],
    )
    return replace(mail, held_back=HELD_BACK) if cap.hold else mail


def listed_commands(parsed: commands.Parsed) -> list[str]:
    """The commands a notice names: as many as a message may carry, then how many more (a
    forged mail of thousands of command lines would make the notice as long as the mail)."""
    shown = [c.source for c in parsed.commands[: commands.MAX_COMMANDS]]
    more = len(parsed.commands) - len(shown)
    return [*shown, f"and {more:,} more"] if more else shown


# Built once: the tickets of the notices held back since the last one sent (index on
# recipient and created_at).
_HELD_TICKETS = (
    select(Outbox.ticket_id)
    .where(*guard.HELD_SINCE, Outbox.ticket_id.is_not(None))
    .distinct()
    .order_by(Outbox.ticket_id)
    .limit(20)
)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an agent's receipt reports."""

    applied: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    kept_as_note: bool = False  # the text was kept as an internal note (commands refused)
    not_mailed: str | None = None  # why nobody outside was mailed, when someone should have been
    held: tuple[str, ...] = ()  # mails to the customer held back (``held_line``)
    bounced: str | None = None  # the agent's words went to an address that bounced before
    uncopied: tuple[str, ...] = ()  # participants left out of the Cc, and why
    files: tuple[str, ...] = ()  # the files of the agent's mail: sent on, or not and why
    help: bool = False  # the agent asked for the list of commands (``#help``)

    @property
    def says_more(self) -> bool:
        """It tells of something beyond the commands applied: the agent gets it for that."""
        return bool(self.not_mailed or self.held or self.bounced or self.uncopied or self.files)


def receipt_mail(
    desk: Desk, ticket: Ticket, agent: AgentSettings, now: datetime, receipt: Receipt
) -> Mail:
    """The one reply to an agent's commands: what was done, what was refused; the list of
    commands when one was refused or the agent asked (``#help``), else where to ask for it."""
    return agent_mail(
        desk,
        ticket,
        agent,
        "receipt",
        "agent_receipt",
        now,
        applied=list(receipt.applied),
        refused=list(receipt.refused),
        kept_as_note=receipt.kept_as_note,
        not_mailed=receipt.not_mailed,
        held=list(receipt.held),
        bounced=receipt.bounced,
        uncopied=list(receipt.uncopied),
        files=list(receipt.files),
        help=commands.HELP if receipt.refused or receipt.help else "",
    )
