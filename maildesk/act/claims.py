"""How much due mail one claim of the delivery takes: rows, and their bytes.

Used by ``outbox.claim_due``. Mail with files is megabytes a row, and a notice with files goes
to every agent of a team: a claim of 200 such rows would hold gigabytes in the delivery
process. A claim stops at ``CLAIM_BYTES`` (taking one row however large); the copies of one
mail to its Cc share that mail's bytes, counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from maildesk.models import Outbox

CLAIM_BYTES = 64 * 1000 * 1000  # the bytes one claim holds in memory at most


def within(session: Any, due: Sequence[Any], max_bytes: int) -> list[int]:
    """The ids of the first of ``due`` (id, Message-ID, copy_of, size) whose bytes come to
    ``max_bytes`` at most, each mail's bytes counted once however many copies it has."""
    originals = {row[2] for row in due if row[2] is not None}
    sizes = {message_id: size for _, message_id, copy_of, size in due if copy_of is None}
    missing = originals - sizes.keys()
    if missing:
        query = select(Outbox.message_id, func.length(Outbox.body))
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
