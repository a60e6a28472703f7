"""``#show``: a ticket's whole timeline as the query answer shows it, and its files.

Read-only, for ``act.queries``: the ticket's messages (customer and agent mail, internal notes)
and events in time order, bounded (the first message and the newest ``MAX_ENTRIES`` entries;
each text cut, and all texts together) so that a ticket of thousands of messages makes an
answer of a bounded size; the files of the messages shown, attached within
``notice_attachment_bytes`` (``desk.files.on_notice``), the rest listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maildesk.act.files import file_of
from maildesk.act.means import Desk
from maildesk.desk import commands
from maildesk.desk import files as rules
from maildesk.desk.timers import utc_text
from maildesk.mail.compose import Enclosure
from maildesk.mail.rendering import filesize
from maildesk.models import Attachment, Event, Message, Status, Ticket
from maildesk.store import Kept

MAX_ENTRIES = 100  # timeline entries (messages and events) an answer shows
TEXT_CHARS = 20_000  # of one message's text
ALL_TEXT_CHARS = 200_000  # of all the texts of one answer's timelines
DETAIL_CHARS = 300  # of an event's detail
MERGE_HOPS = 5  # merged into a ticket merged in turn: followed this far


@dataclass(frozen=True, slots=True)
class Shown:
    """One ``#show``: the ticket shown (None: there is none), what the answer says of it, and
    its files (``rules.File`` each, with the ``Enclosure`` to attach when chosen)."""

    ticket: Ticket | None
    section: dict[str, Any]
    files: tuple[tuple[rules.File, Enclosure | None], ...] = ()


def shown(
    session: Session, desk: Desk, number: int, source: str, room: int = ALL_TEXT_CHARS
) -> Shown:
    """Ticket ``number``, or the ticket it was merged into (said so), as a section; ``room``:
    the characters of text its timeline may show (an answer's shows share them)."""
    ref = desk.settings.desk.ref
    ticket = session.get(Ticket, number)
    notes: list[str] = []
    for _ in range(MERGE_HOPS):
        if ticket is None or ticket.status != Status.MERGED or ticket.merged_into is None:
            break
        notes.append(f"{ref(ticket.id)} was merged into {ref(ticket.merged_into)}")
        ticket = session.get(Ticket, ticket.merged_into)
    if ticket is None:
        reason = f"no ticket {ref(number)}"
        return Shown(None, {"kind": "refused", "source": source, "reason": reason})
    entries, omitted, files = timeline(session, desk, ticket, room)
    section = {
        "kind": "show",
        "source": source,
        "notes": notes,
        "ref": ref(ticket.id),
        "number": ticket.id,
        "subject": commands.defang(ticket.subject),
        "status": str(ticket.status),
        "priority": ticket.priority,
        "team": ticket.team,
        "assignee": ticket.assignee or "nobody",
        "requester": ticket.requester or "-",
        "tags": ", ".join(sorted(ticket.tag_names)) or "-",
        "opened": utc_text(ticket.created_at),
        "due": utc_text(ticket.due_at) if ticket.due_at else "-",
        "entries": entries,
        "omitted": omitted,
        "files": [],
        "address": "",  # where to act on it, when the answer shows more than one ticket
    }
    return Shown(ticket, section, files)


def timeline(
    session: Session, desk: Desk, ticket: Ticket, room: int
) -> tuple[list[dict[str, Any]], int, tuple[tuple[rules.File, Enclosure | None], ...]]:
    """The entries shown, oldest first, how many are not, and the files of the messages shown;
    their texts come to at most ``room`` characters."""
    wanted = {"ticket": ticket.id, "up_to": MAX_ENTRIES}
    messages = list(session.execute(_NEWEST_MESSAGES, wanted))
    first = session.execute(_FIRST_MESSAGE, wanted).first()
    if first is not None and all(m.id != first.id for m in messages):
        messages.append(first)
    events = list(session.execute(_NEWEST_EVENTS, wanted))
    counted = session.scalar(_MESSAGES, wanted) or 0
    counted += session.scalar(_EVENTS, wanted) or 0
    merged = sorted(
        [(m.created_at, 0, m.id, m) for m in messages] + [(e.at, 1, e.id, e) for e in events],
        key=lambda entry: entry[:3],
    )
    kept = merged[-MAX_ENTRIES:]
    if first is not None and all(e[1] != 0 or e[2] != first.id for e in kept):
        kept = [(first.created_at, 0, first.id, first), *kept]
    shown_ids = [entry[2] for entry in kept if entry[1] == 0]
    files = files_of(session, desk, shown_ids)
    # the text room goes to the first message, then to the newest ones
    entries: list[dict[str, Any]] = [{} for _ in kept]
    for index in [0, *range(len(kept) - 1, 0, -1)][: len(kept)]:
        _, is_event, _, row = kept[index]
        if is_event:
            entries[index] = event_entry(row)
        else:
            entries[index], room = message_entry(row, files.get(row.id, []), room)
    found = tuple(f for m in shown_ids for f in files.get(m, []))
    return entries, max(counted - len(kept), 0), found


def message_entry(
    row: Any, files: list[tuple[rules.File, Enclosure | None]], room: int
) -> tuple[dict[str, Any], int]:
    """A message as the timeline shows it; ``room``: characters of text left for the answer."""
    label = "internal note" if row.internal else "message"
    if row.unverified:
        label += ", unverified"
    if row.held:
        label += ", held"
    text = row.text or ""
    cut = min(TEXT_CHARS, room)
    more = max(row.length - min(len(text), cut), 0)
    text = text[:cut]
    room -= len(text)
    if more:
        text += f"\n[... {more:,} more characters not shown here]"
    entry = {
        "at": utc_text(row.created_at),
        "kind": "note" if row.internal else "message",
        "label": f"{label} from {row.sender or '(no address)'}",
        "text": commands.defang(text),
        "files": [f"{commands.defang(f.filename)} ({filesize(f.size)})" for f, _ in files],
    }
    return entry, room


def event_entry(row: Any) -> dict[str, Any]:
    """An event as the timeline shows it: its kind, who, and its detail on one line."""
    try:
        detail = json.loads(row.detail) if row.detail else {}
    except ValueError:
        detail = {}
    said = "; ".join(
        f"{k.replace('_', ' ')}: {_value(v)}"
        for k, v in (detail.items() if isinstance(detail, dict) else ())
        if v
    )
    if len(said) > DETAIL_CHARS:
        said = said[: DETAIL_CHARS - 3] + "..."
    return {
        "at": utc_text(row.at),
        "kind": "event",
        "label": f"{row.kind.replace('_', ' ')}" + (f" by {row.actor}" if row.actor else ""),
        "text": commands.defang(said),
        "files": [],
    }


def _value(value: Any) -> str:
    """A detail's value as words: yes for true, a list's items with commas."""
    if value is True:
        return "yes"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def files_of(
    session: Session, desk: Desk, message_ids: list[int]
) -> dict[int, list[tuple[rules.File, Enclosure | None]]]:
    """The files of the messages shown, by message: each with its ``Enclosure`` when kept."""
    found: dict[int, list[tuple[rules.File, Enclosure | None]]] = {}
    if not message_ids:
        return found
    rows = session.execute(_FILES, {"ids": message_ids})
    for row in rows:
        file = file_of(desk, row.filename, row.size, row.dropped, row.path)
        data = Kept(desk.store, row.path, row.size) if file.kept and row.path else None
        enclosure = Enclosure(row.filename, row.content_type, data) if data else None
        found.setdefault(row.message_pk, []).append((file, enclosure))
    return found


def chosen(
    desk: Desk, shows: list[Shown]
) -> tuple[tuple[Enclosure, ...], list[list[dict[str, Any]]]]:
    """The files the answer attaches (within ``notice_attachment_bytes`` for all its
    ``#show``), and each show's list of files: attached, or why not."""
    everything = [(index, f) for index, show in enumerate(shows) for f in show.files]
    choice = rules.on_notice([f for _, (f, _) in everything], desk.settings.limits)
    why = dict(choice.refused)
    attached: list[Enclosure] = []
    listed: list[list[dict[str, Any]]] = [[] for _ in shows]
    for position, (index, (file, enclosure)) in enumerate(everything):
        if position not in why and enclosure is not None:
            attached.append(enclosure)
        note = why.get(position, "")
        listed[index].append(
            {
                "filename": commands.defang(file.filename),
                "size": file.size,
                "attached": not note,
                "note": note,
            }
        )
    return tuple(attached), listed


# Built once (indexes on ticket_id and message_pk).
_TEXT = func.substr(Message.text, 1, TEXT_CHARS).label("text")
_LENGTH = func.length(Message.text).label("length")
_MESSAGE_COLUMNS = (
    Message.id,
    Message.sender,
    Message.internal,
    Message.unverified,
    Message.held,
    Message.created_at,
    _TEXT,
    _LENGTH,
)
_NEWEST_MESSAGES = (
    select(*_MESSAGE_COLUMNS)
    .where(Message.ticket_id == bindparam("ticket"))
    .order_by(Message.id.desc())
    .limit(bindparam("up_to"))
)
_FIRST_MESSAGE = (
    select(*_MESSAGE_COLUMNS)
    .where(Message.ticket_id == bindparam("ticket"))
    .order_by(Message.id)
    .limit(1)
)
_NEWEST_EVENTS = (
    select(Event.id, Event.kind, Event.actor, Event.at, Event.detail)
    .where(Event.ticket_id == bindparam("ticket"))
    .order_by(Event.id.desc())
    .limit(bindparam("up_to"))
)
_MESSAGES = select(func.count(Message.id)).where(Message.ticket_id == bindparam("ticket"))
_EVENTS = select(func.count(Event.id)).where(Event.ticket_id == bindparam("ticket"))
_FILES = (
    select(
        Attachment.message_pk,
        Attachment.filename,
        Attachment.content_type,
        Attachment.size,
        Attachment.path,
        Attachment.dropped,
    )
    .where(Attachment.message_pk.in_(bindparam("ids", expanding=True)))
    .order_by(Attachment.id)
)
