"""Carry out a plan: the one place a decision of the desk changes a ticket.

The desk's rules (``desk.verbs``, ``desk.customers``) return a ``Plan``; ``carry_out`` applies
its steps in order inside the message's transaction: the ticket's rows, its timeline, the
message kept on its thread, and the mails it causes (returned, for ``notices.enqueue``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from maildesk.act import files, holding, merging, notices, people, spam
from maildesk.act.means import Desk, StoredMail
from maildesk.act.outbox import Mail
from maildesk.act.timeline import event, set_status
from maildesk.desk import plans, sla
from maildesk.desk.plans import Plan, Step, TicketState, Whom
from maildesk.mail.inbound import Inbound
from maildesk.models import Attachment, Message, Status, Tag, Ticket


@dataclass(frozen=True, slots=True)
class Scene:
    """What travels together while one message is handled on one ticket: the transaction, the
    desk's means, the ticket, the message and where its bytes were kept, and the moment."""

    session: Session
    desk: Desk
    ticket: Ticket
    inbound: Inbound | None
    stored: StoredMail | None
    now: datetime

    def on(self, ticket: Ticket) -> Scene:
        """The same message on another ticket."""
        return Scene(self.session, self.desk, ticket, self.inbound, self.stored, self.now)


def state_of(ticket: Ticket) -> TicketState:
    """The ticket as the desk's rules read it."""
    return TicketState(
        id=ticket.id,
        status=Status(ticket.status),
        requester=ticket.requester,
        team=ticket.team,
        assignee=ticket.assignee,
        priority=ticket.priority,
        tags=tuple(t.tag for t in ticket.tags),
        closed_at=ticket.closed_at,
        status_since=ticket.status_since,
        sla_breached=tuple(sla.breached(ticket)),
        participants=tuple(p.address for p in ticket.participants),
    )


def keep_message(scene: Scene, step: plans.Keep, *, message_id: str | None = None) -> Message:
    """The message being handled on the ticket's thread, its attachments in the blob store."""
    inbound, stored, ticket = scene.inbound, scene.stored, scene.ticket
    message = Message(
        ticket=ticket,
        message_id=message_id
        if message_id is not None
        else (inbound.message_id if inbound else None),
        sender=step.sender,
        internal=step.internal,
        unverified=step.unverified,
        automatic=step.automatic,
        subject=inbound.subject if inbound else "",
        text=step.text,
        raw_path=stored.raw_path if stored else None,
        sha256=stored.sha256 if stored else None,
        defects="\n".join(inbound.defects) if inbound else "",
        created_at=scene.now,
    )
    scene.session.add(message)
    for part in inbound.attachments if inbound else ():
        path = None if part.dropped else scene.desk.store.put_blob(part.payload, part.sha256)
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
    ticket.updated_at = scene.now
    return message


def carry_out(scene: Scene, plan: Plan) -> list[Mail]:
    """Apply ``plan``'s steps in order; returns the mails they cause."""
    mails: list[Mail] = []
    for step in plan.steps:
        mails += _apply(scene, step)
    return mails


def _apply(scene: Scene, step: Step) -> list[Mail]:
    ticket, now = scene.ticket, scene.now
    match step:
        case plans.SetAssignee(assignee=assignee):
            ticket.assignee = assignee
        case plans.SetPriority(priority=priority):
            ticket.priority = priority
        case plans.SetTeam(team=team):
            ticket.team = team
        case plans.SetStatus(status=status):
            set_status(ticket, status, now)
        case plans.AddTags(tags=tags):
            for word in tags:
                ticket.tags.append(Tag(tag=word))
        case plans.RemoveTags(tags=tags):
            for tag in [t for t in ticket.tags if t.tag in tags]:
                ticket.tags.remove(tag)
        case plans.AddParticipants():
            people.add(ticket, step, now)
        case plans.RemoveParticipants():
            people.remove(ticket, step)
        case plans.SetRequester():
            people.set_requester(ticket, step, now)
        case plans.Rate(rating=rating, comment=comment):
            ticket.rating, ticket.rating_comment = rating, comment
        case plans.Record(kind=kind, actor=actor, detail=detail):
            event(scene.session, ticket, kind, actor, now, **detail)
        case plans.Keep():
            keep_message(scene, step)
        case plans.Notify():
            return mails_of(scene, step)
        case plans.Reply():
            return [reply(scene, step)]
        case plans.Close():
            return close(scene, step)
        case plans.MailFiles(to=to):
            agent = scene.desk.settings.agent(to)
            assert agent is not None, f"no agent {to}"
            return files.ticket_files(scene.session, scene.desk, ticket, agent, now)
        case plans.Block(address=address, by=by):
            spam.block(scene.session, address, by, ticket, now)
        case plans.Acknowledge():
            return spam.missed(scene.session, scene.desk, ticket, now)
        case plans.HoldReply() | plans.SendHeld() | plans.DropHeld():
            return held(scene, step)
        case plans.Merge():
            return merging.merge(scene.session, scene.desk, ticket, step, now)
        case plans.Link():
            merging.link(scene.session, scene.desk, ticket, step, now)
        case plans.MarkReminded():
            ticket.reminded_at = now
        case plans.MarkBreached(targets=targets):
            ticket.sla_breached = ",".join(targets)
        case plans.TrackSla():
            sla.refresh_due(ticket, scene.desk.settings)
    return []


def held(scene: Scene, step: plans.HoldReply | plans.SendHeld | plans.DropHeld) -> list[Mail]:
    """A reply held because another agent answered first, or sent or dropped after all."""
    session, desk, ticket, now = scene.session, scene.desk, scene.ticket, scene.now
    match step:
        case plans.HoldReply(reply=reply):
            body = words_of(scene, reply.canned, reply.text)
            kept = keep_message(scene, plans.Keep(reply.actor, body, internal=True))
            return holding.hold(desk, kept, step, now)
        case plans.SendHeld():
            return holding.send(session, desk, ticket, step, now)
        case plans.DropHeld():
            holding.drop(session, ticket, step, now)
    return []


def mails_of(scene: Scene, step: plans.Notify) -> list[Mail]:
    """The mails of a ``Notify`` step; a notice to agents about a message carries its files
    (``files.on_notice``)."""
    if step.template not in files.NOTICES:
        return mails_to(scene, step, dict(step.context))
    listing, enclosures = files.on_notice(scene.desk, scene.inbound)
    mails = mails_to(scene, step, {**step.context, "files": listing})
    return files.with_notice_files(mails, enclosures)


def mails_to(scene: Scene, step: plans.Notify, context: dict[str, Any]) -> list[Mail]:
    """The mails of a ``Notify`` step, to whom it names as the ticket now is."""
    desk, ticket, now = scene.desk, scene.ticket, scene.now
    match step.to:
        case Whom.REQUESTER:
            return [
                notices.customer_mail(
                    desk, ticket, step.kind, step.template, words=step.words, **context
                )
            ]
        case Whom.TEAM:
            return notices.notify_team(
                desk, ticket, step.kind, step.template, now, but=step.but, **context
            )
        case Whom.OWNER:
            return notices.notify_owner(desk, ticket, step.kind, step.template, now, **context)
    agent = desk.settings.agent(step.to)
    assert agent is not None, f"no agent {step.to}"
    return [notices.agent_mail(desk, ticket, agent, step.kind, step.template, now, **context)]


def words_of(scene: Scene, canned: tuple[str, ...], text: str) -> str:
    """The canned replies chosen, rendered for the ticket as it now is, then ``text``."""
    replies = [render_canned(scene, name) for name in canned]
    return "\n\n".join([*replies, text]).strip()


def reply(scene: Scene, step: plans.Reply) -> Mail:
    ticket, now = scene.ticket, scene.now
    body = words_of(scene, step.canned, step.text)
    keep_message(scene, plans.Keep(step.actor, body))
    enclosures, images = files.to_customer(scene.desk, scene.inbound, images=True)
    mail = notices.customer_mail(
        scene.desk,
        ticket,
        "reply",
        step.template,
        words=True,
        text=body,
        agent={"name": step.agent_name},
        images=images,
    )
    mail = replace(mail, attachments=enclosures)
    if ticket.first_response_at is None:
        ticket.first_response_at = now
    if step.pend:
        set_status(ticket, Status.PENDING, now)
    event(scene.session, ticket, "replied", step.actor, now)
    return mail


def close(scene: Scene, step: plans.Close) -> list[Mail]:
    ticket, now = scene.ticket, scene.now
    resolution = words_of(scene, step.canned, step.text)
    if resolution and step.keep:
        keep_message(scene, plans.Keep(step.actor, resolution))
        if ticket.first_response_at is None:
            ticket.first_response_at = now
    set_status(ticket, Status.CLOSED, now)
    event(scene.session, ticket, "closed", step.actor, now, resolution=resolution)
    # a written (or chosen) resolution is the agent's words; a bare "#close" is a template
    closing = notices.customer_mail(
        scene.desk, ticket, "closed", "closed", words=bool(resolution), resolution=resolution
    )
    if resolution and step.keep:  # the resolution is this mail: its files go with it
        closing = replace(
            closing, attachments=files.to_customer(scene.desk, scene.inbound, images=False)[0]
        )
    return [closing]


def render_canned(scene: Scene, name: str) -> str:
    desk, ticket = scene.desk, scene.ticket
    what = f"canned reply {name} on {desk.ref(ticket)}"
    context = notices.canned_context(desk, ticket)
    rendered = desk.mailer.render(scene.session, f"canned/{name}", context, scene.now, what)
    return (rendered.text or "").strip()
