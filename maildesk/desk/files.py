"""Which files go where: an agent's reply's files to the customer, a message's files on the
agents' notices, a ticket's files in mails of a bounded size.

Pure: names and sizes in, choices out (by position in the list given), each file refused with
the reason its sender reads. The act layer (``act.files``) reads the files, carries the choices
out and words the agent's receipt from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maildesk.config import LimitsSettings
from maildesk.mail.rendering import filesize

# the notices to agents that carry the files of the message that caused them
NOTICES = frozenset(
    {
        "agent_new",
        "agent_customer_replied",
        "agent_reopened",
        "agent_escalated",
        "agent_assigned",
    }
)


@dataclass(frozen=True, slots=True)
class File:
    """A file as the rules read it. ``kept``: False for a file over ``max_attachment_bytes``
    when it came, of which only the name and size were kept; or for one kept then that the
    store does not have now (``missing``: another host's directory, or removed)."""

    filename: str
    size: int
    kept: bool = True
    missing: bool = False


@dataclass(frozen=True, slots=True)
class Choice:
    """The files chosen (their positions), and those refused with why."""

    chosen: tuple[int, ...] = ()
    refused: tuple[tuple[int, str], ...] = ()


def not_kept(limits: LimitsSettings, file: File | None = None) -> str:
    if file is not None and file.missing:
        return (
            "the file store this host reads does not have it (another host's data_dir with "
            '[store] backend = "directory"? maildesk store migrate --to database there)'
        )
    return (
        f"it was not kept: larger than max_attachment_bytes "
        f"({filesize(limits.max_attachment_bytes)}) when it came"
    )


def to_customer(files: Sequence[File], limits: LimitsSettings) -> Choice:
    """The files of an agent's reply that go on to the customer: each kept file within
    ``max_attachment_bytes``, in order, while they come to ``max_outbound_bytes`` in all."""
    chosen: list[int] = []
    refused: list[tuple[int, str]] = []
    room = limits.max_outbound_bytes
    for index, file in enumerate(files):
        if not file.kept:
            refused.append((index, not_kept(limits, file)))
        elif file.size > limits.max_attachment_bytes:
            refused.append(
                (
                    index,
                    f"larger than max_attachment_bytes ({filesize(limits.max_attachment_bytes)})",
                )
            )
        elif file.size > room:
            refused.append(
                (
                    index,
                    f"the files of one reply may come to {filesize(limits.max_outbound_bytes)}"
                    " in all (max_outbound_bytes)",
                )
            )
        else:
            chosen.append(index)
            room -= file.size
    return Choice(tuple(chosen), tuple(refused))


def on_notice(files: Sequence[File], limits: LimitsSettings) -> Choice:
    """The files a notice to an agent carries: the kept ones, in order, while they come to
    ``notice_attachment_bytes`` in all; the rest are named in its text."""
    chosen: list[int] = []
    refused: list[tuple[int, str]] = []
    room = limits.notice_attachment_bytes
    for index, file in enumerate(files):
        if not file.kept:
            refused.append((index, not_kept(limits, file)))
        elif file.size > room:
            refused.append((index, too_many(limits)))
        else:
            chosen.append(index)
            room -= file.size
    return Choice(tuple(chosen), tuple(refused))


def too_many(limits: LimitsSettings) -> str:
    return (
        f"not attached: a notice carries {filesize(limits.notice_attachment_bytes)} of files"
        " in all (notice_attachment_bytes); reply #files to have them mailed to you"
    )


@dataclass(frozen=True, slots=True)
class Batches:
    """A ticket's files in mails: the positions in each mail, and the files mailed in none."""

    mails: tuple[tuple[int, ...], ...]
    refused: tuple[tuple[int, str], ...]


def in_batches(files: Sequence[File], limits: LimitsSettings) -> Batches:
    """``#files``: the kept files, in order, in mails of at most ``notice_attachment_bytes``
    of files each; a file larger than that on its own is named, not mailed."""
    limit = limits.notice_attachment_bytes
    mails: list[tuple[int, ...]] = []
    current: list[int] = []
    used = 0
    refused: list[tuple[int, str]] = []
    for index, file in enumerate(files):
        if not file.kept:
            refused.append((index, not_kept(limits, file)))
            continue
        if file.size > limit:
            refused.append(
                (
                    index,
                    f"larger than a mail of files may be ({filesize(limit)},"
                    " notice_attachment_bytes); the ticket keeps it",
                )
            )
            continue
        if current and used + file.size > limit:
            mails.append(tuple(current))
            current, used = [], 0
        current.append(index)
        used += file.size
    if current:
        mails.append(tuple(current))
    return Batches(tuple(mails), tuple(refused))


def receipt_lines(files: Sequence[File], choice: Choice | None, why_not: str) -> tuple[str, ...]:
    """The receipt's lines about the files of an agent's mail: which went on to the customer
    and which did not, with why. ``choice``: None when no mail to the customer carried any
    (``why_not`` says why)."""
    if choice is None:
        return tuple(f"{_named(file)} not sent to the customer: {why_not}" for file in files)
    why = dict(choice.refused)
    return tuple(
        f"{_named(file)} not sent to the customer: {why[index]}"
        if index in why
        else f"{_named(file)} sent to the customer"
        for index, file in enumerate(files)
    )


def _named(file: File) -> str:
    return f"{file.filename} ({filesize(file.size)})"
