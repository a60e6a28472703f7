"""check-config's probe: one mail through the SMTP server to the desk, found again where it
arrives: over IMAP, or in the ledger when the MTA hands it to ``maildesk ingest`` (a pipe).

Logins alone prove little: without plus addressing at the MTA every check passes while agents'
replies (``support+<token>@``) and bounces (``support+bounce-...@``) are refused. The probe is
sent as the desk sends every mail (the configured SMTP server, the VERP envelope sender) to
``support+probe-<nonce>@``, and check-config waits for it to arrive in a mailbox, then deletes
it: the only message maildesk ever deletes, found by its own unguessable Message-ID.

A daemon running meanwhile may see the probe first. It recognises it (our signed Message-ID,
sent to the probe address made from it), never makes a ticket or an acknowledgment of it, and
moves it to the processed folder like any mail it ignores; so the probe is looked for in each
mailbox's watched folder and then its processed folder, in the order a message travels.

A pipe mailbox has nothing to look in: ``maildesk ingest`` recognises the probe the same way and
records it as ignored in the ledger, where it is looked for (by its Message-ID, under a pipe
mailbox's name). Nothing is deleted then: the ledger keeps the record, as for any mail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from maildesk.config import MailboxSettings, Settings
from maildesk.database import Database
from maildesk.mail import compose, smtp
from maildesk.mail.imap import Mailbox, MailboxError
from maildesk.models import DatabaseError, Ledger

POLL_SECONDS = 0.25  # between two searches of the mailboxes
DELETE_SECONDS = 15.0  # how long removing the probe may chase a daemon moving it


@dataclass(frozen=True, slots=True)
class Result:
    """What the probe proved: ``ok`` and one line for check-config (without the prefix)."""

    ok: bool
    line: str


@dataclass(frozen=True, slots=True)
class Found:
    mailbox: str
    folder: str
    seconds: float


def run(
    settings: Settings,
    db: Database,
    *,
    wait: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Send the probe and wait up to ``wait`` seconds for it to arrive; delete it (from an
    IMAP mailbox)."""
    probe = compose.probe_mail(settings, datetime.now(UTC))
    piped = Piped(db, tuple(box.name for box in settings.mailboxes if not box.watched))
    try:
        with connected(settings.watched) as boxes:
            try:
                asyncio.run(smtp.send_probe(settings.smtp, probe))
            except smtp.SmtpRefused as exc:
                return Result(False, refused(exc, probe))
            except smtp.SmtpError as exc:
                return Result(False, f"could not send the probe: {exc}")
            sent = clock()
            found = arrival(boxes, piped, probe.message_id, sent + wait, clock)
            if found is None:
                return Result(False, not_arrived(settings, wait))
            left = ""
            if found.folder:
                left = remove(boxes, probe.message_id, clock() + DELETE_SECONDS, clock)
    except (MailboxError, DatabaseError) as exc:
        return Result(False, f"while waiting for the probe: {exc}")
    line = f"{probe.to}: sent with envelope sender {probe.mail_from}, arrived in "
    if not found.folder:
        return Result(
            True,
            line + f"pipe mailbox {found.mailbox} (maildesk ingest) after "
            f"{found.seconds - sent:.1f} s, recorded as ignored",
        )
    line += f"mailbox {found.mailbox} ({found.folder}) after {found.seconds - sent:.1f} s, "
    return Result(True, line + ("deleted" if not left else f"but {left}"))


def not_arrived(settings: Settings, wait: float) -> str:
    names = ", ".join(box.name for box in settings.mailboxes)
    where = "the IMAP side" if settings.watched else "the MTA, whose log says why"
    if settings.watched and len(settings.watched) < len(settings.mailboxes):
        where = "the IMAP side, or the MTA's log for a pipe"
    return (
        f"the probe was accepted but did not arrive in mailbox {names} within "
        f"{wait:g} s (check delivery / plus addressing at {where})"
    )


@dataclass(frozen=True, slots=True)
class Piped:
    """Where a probe handed to ``maildesk ingest`` shows: its ledger row, under a pipe
    mailbox's name."""

    db: Database
    names: tuple[str, ...]

    def find(self, message_id: str) -> str | None:
        """The pipe mailbox that recorded the probe, or None (yet)."""
        if not self.names:
            return None
        with self.db.transaction() as session:
            return session.scalar(
                select(Ledger.mailbox)
                .where(Ledger.message_id == message_id, Ledger.mailbox.in_(self.names))
                .limit(1)
            )


def refused(exc: smtp.SmtpRefused, probe: compose.ProbeMail) -> str:
    """The missing piece, named from the stage the server refused and its reply."""
    reply = f"{exc.code} {exc.reply}".strip()
    if exc.code < 500:
        what = {"sender": "the envelope sender " + probe.mail_from, "recipient": probe.to}
        return (
            f"SMTP server deferred {what.get(exc.stage, 'the probe')} ({reply}); "
            "run check-config again later"
        )
    if exc.stage == "sender":
        return f"SMTP server refused the envelope sender {probe.mail_from}: {reply}"
    if exc.stage == "recipient":
        return (
            f"SMTP server refused {probe.to} — enable plus addressing "
            f"(recipient_delimiter = + in Postfix): {reply}"
        )
    return f"SMTP server refused the probe message: {reply}"


@contextmanager
def connected(settings: Sequence[MailboxSettings]) -> Iterator[list[Mailbox]]:
    """A logged-in connection to every mailbox, closed afterwards."""
    with ExitStack() as stack:
        boxes = []
        for box_settings in settings:
            box = Mailbox(box_settings, timeout=15.0)
            box.connect()
            stack.callback(box.close)
            boxes.append(box)
        yield boxes


def folders(box: Mailbox) -> tuple[str, ...]:
    """Where the probe can be: the watched folder, then where a daemon moves what it ignores
    (in this order, a probe moving on while we look is still seen in the second)."""
    config = box.config
    return tuple(f for f in (config.folder, config.processed_folder) if f)


def arrival(
    boxes: Sequence[Mailbox],
    piped: Piped,
    message_id: str,
    deadline: float,
    clock: Callable[[], float],
) -> Found | None:
    """Search every mailbox for the probe until it is there or ``deadline`` has passed
    (``Found.folder`` empty: it came through a pipe)."""
    while True:
        for box in boxes:
            for folder in folders(box):
                if box.find_message(folder, message_id):
                    return Found(box.config.name, folder, clock())
        pipe_mailbox = piped.find(message_id)
        if pipe_mailbox is not None:
            return Found(pipe_mailbox, "", clock())
        if clock() >= deadline:
            return None
        time.sleep(POLL_SECONDS)  # the interval of a poll with a deadline


def remove(
    boxes: Sequence[Mailbox], message_id: str, deadline: float, clock: Callable[[], float]
) -> str:
    """Delete every copy of the probe; "" when none is left, else what remains and why.

    A daemon may move the probe between our search and our delete: then the next round finds
    it in the processed folder. Rounds go on until one finds nothing."""
    kept: list[str] = []
    while True:
        seen = False
        for box in boxes:
            for folder in folders(box):
                uids = box.find_message(folder, message_id)
                if uids:
                    seen = True
                    if not box.delete_probe(folder, uids):
                        kept.append(f"{box.config.name} ({folder})")
        if not seen or kept:
            break
        if clock() >= deadline:
            return "it could not be deleted: it keeps moving (another client?)"
        time.sleep(POLL_SECONDS)  # the interval of a poll with a deadline
    if kept:
        return (
            f"left flagged \\Deleted in mailbox {', '.join(kept)}: the server has no UIDPLUS "
            "(UID EXPUNGE), and maildesk never expunges other mail"
        )
    return ""
