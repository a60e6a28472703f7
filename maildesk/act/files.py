"""The files mail carries: an agent's reply's files to the customer, a message's files on the
agents' notices, a ticket's files to an agent who asks (``#files``), the receipt's lines.

Called by ``act.apply`` (a reply, a closing mail, the notices, ``MailFiles``) and
``act.agents`` (the receipt). ``desk.files`` chooses; here the choices become
``compose.Enclosure`` values on the ``outbox.Mail``: the message being handled gives its bytes
from memory, a ticket's older files are read from the blob store only when their own mail is
composed, one mail at a time (a notice never reads the ticket's older files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from maildesk.act.means import Desk
from maildesk.act.notices import agent_mail
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings
from maildesk.desk import files as rules
from maildesk.mail.compose import Enclosure
from maildesk.mail.inbound import Inbound, ParsedAttachment
from maildesk.models import Attachment, Message, Ticket
from maildesk.store import Kept, name_for

NOTICES = rules.NOTICES  # the notices to agents that carry the files of their message


def described(parts: Sequence[ParsedAttachment]) -> list[rules.File]:
    return [rules.File(p.filename, p.size, kept=not p.dropped) for p in parts]


def shown_in_html(inbound: Inbound) -> set[str]:
    """The Content-IDs of the parts the mail's HTML shows (``cid:``), whatever their
    disposition says (clients differ)."""
    html = (inbound.html or "").lower()
    return {
        part.content_id
        for part in inbound.attachments
        if part.content_id and f"cid:{part.content_id.lower()}" in html
    }


def to_customer(
    desk: Desk, inbound: Inbound | None, *, images: bool
) -> tuple[tuple[Enclosure, ...], list[dict[str, str]]]:
    """The files of an agent's mail that go on to the customer with its reply, and the inline
    images among them the reply's HTML shows (``images``: the mail's template can show them;
    without, they go as attachments)."""
    if inbound is None or not inbound.attachments:
        return (), []
    parts = inbound.attachments
    choice = rules.to_customer(described(parts), desk.settings.limits)
    shown = shown_in_html(inbound) if images else set()
    enclosures = []
    pictures = []
    for index in choice.chosen:
        part = parts[index]
        cid = part.content_id if part.content_id in shown else ""
        enclosures.append(Enclosure(part.filename, part.content_type, part.payload, cid))
        if cid:
            pictures.append({"cid": cid, "filename": part.filename})
    return tuple(enclosures), pictures


def stored(desk: Desk, message: Message) -> list[rules.File]:
    """The files of a message on the thread, as the rules read them: kept while the blob store
    still has them."""
    return [file_of(desk, a.filename, a.size, a.dropped, a.path) for a in message.attachments]


def file_of(desk: Desk, filename: str, size: int, dropped: bool, path: str | None) -> rules.File:
    """A kept file as the rules read it: ``missing`` when the store does not have it now."""
    if dropped or path is None:
        return rules.File(filename, size, kept=False)
    present = desk.store.exists(path)
    return rules.File(filename, size, kept=present, missing=not present)


def held_to_customer(desk: Desk, message: Message) -> tuple[Enclosure, ...]:
    """The files of a held reply that go to the customer when ``#send`` sends it: chosen as a
    reply's are (``rules.to_customer``), read from the blob store when the mail is composed.
    Its HTML was not kept, so an inline image goes as an attachment."""
    choice = rules.to_customer(stored(desk, message), desk.settings.limits)
    parts = message.attachments
    return tuple(
        Enclosure(
            parts[i].filename,
            parts[i].content_type,
            Kept(desk.store, parts[i].path or "", parts[i].size),
        )
        for i in choice.chosen
    )


def on_notice(
    desk: Desk, inbound: Inbound | None
) -> tuple[list[dict[str, Any]], tuple[Enclosure, ...]]:
    """The files of the message handled, as a notice to agents lists them (its template's
    ``files``), and those it carries."""
    if inbound is None or not inbound.attachments:
        return [], ()
    parts = inbound.attachments
    choice = rules.on_notice(described(parts), desk.settings.limits)
    listing = listed(described(parts), choice.chosen, choice.refused)
    enclosures = tuple(_kept_or_given(desk, parts[i]) for i in choice.chosen)
    return listing, enclosures


def _kept_or_given(desk: Desk, part: ParsedAttachment) -> Enclosure:
    """A file of the message handled: from the store when the mail is sent (its bytes in the
    database once, not in every notice too), or its bytes when the store does not have it."""
    name = name_for("blobs", part.sha256)
    kept = desk.store.exists(name)
    data = Kept(desk.store, name, part.size) if kept else part.payload
    return Enclosure(part.filename, part.content_type, data)


def listed(
    described: Sequence[rules.File],
    attached: Sequence[int],
    refused: Sequence[tuple[int, str]],
) -> list[dict[str, Any]]:
    """What a template's ``files`` holds: each file's name and size, whether it is attached,
    and why not (``note``)."""
    why = dict(refused)
    shown = sorted({*attached, *why})
    return [
        {
            "filename": described[i].filename,
            "size": described[i].size,
            "attached": i not in why,
            "note": why.get(i, ""),
        }
        for i in shown
    ]


def with_notice_files(mails: list[Mail], enclosures: tuple[Enclosure, ...]) -> list[Mail]:
    if not enclosures:
        return mails
    return [replace(mail, attachments=enclosures) for mail in mails]


# --------------------------------------------------------------------------- #files


_TICKET_FILES = (
    select(
        Attachment.filename,
        Attachment.content_type,
        Attachment.size,
        Attachment.path,
        Attachment.dropped,
    )
    .join(Message, Attachment.message_pk == Message.id)
    .where(Message.ticket_id == bindparam("ticket"))
    .order_by(Attachment.id)
)


def ticket_files(
    session: Session, desk: Desk, ticket: Ticket, agent: AgentSettings, now: datetime
) -> list[Mail]:
    """Every file of ``ticket`` mailed to ``agent``, in mails of at most
    ``notice_attachment_bytes`` of files each; a file larger than that, or not kept, is named.
    Only the names and sizes are read here: each mail reads its own files when composed."""
    rows = session.execute(_TICKET_FILES, {"ticket": ticket.id}).all()
    found = [file_of(desk, row.filename, row.size, row.dropped, row.path) for row in rows]
    batches = rules.in_batches(found, desk.settings.limits)
    parts = batches.mails or ((),)
    mails = []
    for number, batch in enumerate(parts, start=1):
        refused = batches.refused if number == 1 else ()
        mail = agent_mail(
            desk,
            ticket,
            agent,
            "files",
            "agent_files",
            now,
            part=number,
            parts=len(parts),
            files=listed(found, batch, refused),
        )
        enclosures = tuple(
            Enclosure(
                rows[i].filename, rows[i].content_type, Kept(desk.store, rows[i].path, rows[i].size)
            )
            for i in batch
        )
        mails.append(replace(mail, attachments=enclosures))
    return mails


# --------------------------------------------------------------------------- the receipt


NO_REPLY = "this mail sent the customer nothing (a note, or commands alone); the ticket keeps it"
HELD = "held with your reply; #send sends them with it"
WITH_SEND = "#send sends the held reply as it was; this mail is a note, and the ticket keeps it"
REFUSED = "your commands were refused, so nothing was sent; the ticket keeps it"
NOT_MAILED = "nobody outside was mailed; the ticket keeps it"
_TO_CUSTOMER = ("reply", "closed")


def receipt_lines(
    desk: Desk, inbound: Inbound | None, mails: Sequence[Mail], why_not: str | None = None
) -> tuple[str, ...]:
    """The receipt's lines about the files of an agent's mail: sent on to the customer with
    the reply (or the closing mail) it caused, or not, and why. ``why_not``: why no mail to the
    customer could carry them, when known."""
    if inbound is None or not inbound.attachments:
        return ()
    found = described(inbound.attachments)
    carried = any(m.kind in _TO_CUSTOMER and not m.to_agent and not m.automatic for m in mails)
    if why_not is None and carried:
        return rules.receipt_lines(found, rules.to_customer(found, desk.settings.limits), "")
    return rules.receipt_lines(found, None, why_not or NO_REPLY)


def held_receipt_lines(desk: Desk, message: Message, why_not: str | None) -> tuple[str, ...]:
    """The receipt's lines about the files of the held reply ``#send`` sent: with it to the
    customer, or not and why (``why_not``: why no mail to the customer could carry them)."""
    found = stored(desk, message)
    if why_not is not None:
        lines = rules.receipt_lines(found, None, why_not)
    else:
        lines = rules.receipt_lines(found, rules.to_customer(found, desk.settings.limits), "")
    return tuple(f"held reply: {line}" for line in lines)
