"""How much due mail one claim of the delivery takes, and the files put in the mail it takes.

Used by ``outbox``. Mail with files is megabytes a row, and a notice with files goes to every
agent of a team: a claim of 200 such rows would hold gigabytes in the delivery process. A claim
stops at ``CLAIM_BYTES`` (taking one row however large); the copies of one mail to its Cc share
that mail's bytes, counted once.

A file of the blob store a mail carries (``store.Kept``: a ticket's file for ``#files``, the
customer's files on a notice, a held reply's) is not written into the outbox row: the row
keeps a mark in its place (``marked``), and the file goes in when a delivery process claims the
mail (``with_files``), on whichever host, from the store every host reads. The file is then in
the database once, not once more in every notice about it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm.attributes import set_committed_value

from maildesk.database import Database
from maildesk.mail.compose import Enclosure, Mark, base64_lines
from maildesk.models import Outbox, OutboxStatus
from maildesk.store import DamagedFile, Kept, Store

CLAIM_BYTES = 64 * 1000 * 1000  # the bytes one claim holds in memory at most

# what a row holds in memory once claimed: its bytes, and the files put in them
HELD = func.length(Outbox.body) + func.coalesce(Outbox.files_bytes, 0)


def within(session: Any, due: Sequence[Any], max_bytes: int) -> list[int]:
    """The ids of the first of ``due`` (id, Message-ID, copy_of, size) whose bytes come to
    ``max_bytes`` at most, each mail's bytes counted once however many copies it has."""
    originals = {row[2] for row in due if row[2] is not None}
    sizes = {message_id: size for _, message_id, copy_of, size in due if copy_of is None}
    missing = originals - sizes.keys()
    if missing:
        query = select(Outbox.message_id, HELD)
        sizes.update(session.execute(query.where(Outbox.message_id.in_(missing))).tuples())
    ids: list[int] = []
    counted: set[str] = set()
    held = 0
    for row_id, message_id, copy_of, _ in due:
        source = copy_of or message_id
        if source not in counted:
            counted.add(source)
            held += sizes.get(source) or 0
        if ids and held > max_bytes:
            break
        ids.append(row_id)
    return ids


def claimed(
    db: Database, now: datetime, limit: int, claim: tuple[timedelta, str], max_bytes: int
) -> list[Outbox]:
    """The due rows this process claims (``claim``: for how long, and who), their bytes
    within ``max_bytes`` in all (see ``outbox.claim_due``)."""
    holder_lease, holder = claim
    with db.transaction() as session:
        query = (
            select(Outbox.id, Outbox.message_id, Outbox.copy_of, HELD)
            .where(
                Outbox.status == OutboxStatus.PENDING,
                Outbox.next_attempt_at <= now,
                or_(Outbox.claimed_until.is_(None), Outbox.claimed_until < now),
            )
            .order_by(Outbox.next_attempt_at, Outbox.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        ids = within(session, list(session.execute(query)), max_bytes)
        if not ids:
            return []
        rows = list(
            session.scalars(
                select(Outbox).where(Outbox.id.in_(ids)).order_by(Outbox.next_attempt_at, Outbox.id)
            )
        )
        session.execute(
            update(Outbox)
            .where(Outbox.id.in_(ids))
            .values(claimed_until=now + holder_lease, claimed_by=holder)
        )
        copies_read(session, rows)
        return rows


def copies_read(session: Any, rows: Sequence[Outbox]) -> None:
    """The bytes of the copies among ``rows``, read from their mail's row (a copy keeps none:
    a mail of 20 MB to 50 participants would be a gigabyte), in memory only."""
    copies = [row for row in rows if row.copy_of is not None and not row.body]
    if not copies:
        return
    wanted = {row.copy_of for row in copies}
    query = select(Outbox.message_id, Outbox.body, Outbox.files)
    found = {r.message_id: r for r in session.execute(query.where(Outbox.message_id.in_(wanted)))}
    for row in copies:
        original = found.get(row.copy_of or "")
        set_committed_value(row, "body", original.body if original else b"")
        set_committed_value(row, "files", original.files if original else None)


def marked(files: Sequence[Enclosure]) -> tuple[tuple[Enclosure, ...], dict[str, Any]]:
    """``files`` with a mark in place of each file of the store, and the row's ``files`` and
    ``files_bytes`` that say what goes there."""
    kept = [f for f in files if isinstance(f.data, Kept)]
    if not kept:
        return tuple(files), {}
    token = secrets.token_hex(16)
    out: list[Enclosure] = []
    marks: list[tuple[str, str]] = []
    size = 0
    for file in files:
        if isinstance(file.data, Kept):
            mark = f"=_file_{token}_{len(marks)}=_"
            marks.append((file.data.name, mark))
            size += _base64_size(file.data.size)
            file = Enclosure(file.filename, file.content_type, Mark(mark.encode()), file.content_id)
        out.append(file)
    return tuple(out), {"files": json.dumps(marks), "files_bytes": size}


def with_files(rows: Sequence[Outbox], store: Store) -> list[tuple[Outbox, str]]:
    """Put in each row's bytes the files its marks stand for (in memory only); the rows whose
    files cannot be read, with why (they cannot be sent as they were meant)."""
    failed = []
    for row in rows:
        if not row.files:
            continue
        try:
            body = _filled(row.body, json.loads(row.files), store)
        except DamagedFile as exc:
            failed.append((row, f"a file it carries cannot be read: {exc}"))
            continue
        set_committed_value(row, "body", body)
    return failed


def _filled(body: bytes, marks: list[list[str]], store: Store) -> bytes:
    names = {mark.encode(): name for name, mark in marks}
    pieces = re.split(b"(" + b"|".join(map(re.escape, names)) + b")\r\n", body)
    return b"".join(
        base64_lines(store.read(names[piece])) if piece in names else piece for piece in pieces
    )


def _base64_size(size: int) -> int:
    return math.ceil(size / 3) * 4 + math.ceil(size / 57) * 2
