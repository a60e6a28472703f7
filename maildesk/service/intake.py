"""The mailbox loops: one per watched mailbox, taking its mail in message by message.

Beside the flow, above ``ingest``: each loop holds the mailbox's lease, connects, and drains
the folder in a worker thread: every message fetched is handed to ``ingest.process`` (one
transaction each), its parse started in a parse worker while the message before it commits;
each batch is moved on the server after its commits. Then it waits for news (IDLE, or polling)
until the stop. An unreachable mailbox is an outage (``outages``), the database down too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Literal

from maildesk.act import ingest, oversize
from maildesk.config import MailboxSettings
from maildesk.mail.imap import FetchedMail, Mailbox, MailboxError, MailboxLoginError
from maildesk.mail.inbound import Inbound
from maildesk.mail.parsing import Parsing
from maildesk.models import DatabaseError
from maildesk.service import oauth
from maildesk.service.faults import Loop
from maildesk.service.oauth import TokenSource
from maildesk.service.outages import Dependency, Outages
from maildesk.service.runtime import Runtime
from maildesk.service.watchdog import Pulse

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

MOVE_BATCH = 100
Done = dict[Literal["processed", "quarantine"], list[int]]  # UIDs to move, by folder


class Intake:
    """The loops of the watched mailboxes (``boxes``, their tokens wired in)."""

    def __init__(
        self,
        rt: Runtime,
        outages: Outages,
        on_outcome: Callable[[str, ingest.Outcome], None] | None = None,
    ) -> None:
        self.rt = rt
        self.outages = outages
        self.on_outcome = on_outcome
        self.tokens: dict[str, TokenSource] = {}
        self.boxes = tuple(self._with_token(box) for box in rt.settings.watched)
        for box in self.boxes:
            rt.pulse(f"mailbox:{box.name}", f"mailbox {box.name}")
        self.mailboxes: dict[str, Mailbox] = {}  # connected (or connecting) now, by name
        # every mailbox loop has made its first attempt: systemd may call the daemon started
        self.ready = asyncio.Event()
        if not self.boxes:
            self.ready.set()
        self._tried: set[str] = set()

    def _with_token(self, box: MailboxSettings) -> MailboxSettings:
        """The mailbox's settings with its XOAUTH2 token source wired in (when it has one)."""
        source = oauth.token_source(f"mailbox {box.name}", box, box.auth, self.outages.token_failed)
        if source is None:
            return box
        self.tokens[box.name] = source
        return dataclasses.replace(box, oauth_token=source)

    def attempted(self, mailbox: str) -> None:
        """A mailbox loop made its first attempt (connected, or failed, or found the mailbox
        taken): once all have, the daemon is up, if only half (its health says which half)."""
        self._tried.add(mailbox)
        if len(self._tried) >= len(self.boxes):
            self.ready.set()

    async def mailbox_loop(self, box: MailboxSettings) -> None:
        lease = f"mailbox:{box.name}"
        pulse = self.rt.pulses[lease]
        try:
            while not self.rt.stop.is_set():
                try:
                    if await self._round(box, lease, pulse):
                        return
                except DatabaseError as exc:
                    self.attempted(box.name)
                    if self.rt.once:
                        self.rt.unreachable.append(f"mailbox {box.name}: database: {exc}")
                        return
                    await self.outages.database_down(str(exc), pulse)
        finally:
            await asyncio.to_thread(self.rt.leases.release, lease)

    async def _round(self, box: MailboxSettings, lease: str, pulse: Pulse) -> bool:
        """Take the mailbox's lease and consume it; True when the loop is done."""
        taken = await asyncio.to_thread(self.rt.leases.take, lease)
        await self.outages.database_works()
        if not taken:
            self.attempted(box.name)
            if self.rt.once:
                log.info("mailbox %s is being handled by another daemon; skipping", box.name)
                return True
            await self.rt.pause(self.rt.timings.lease_check, pulse)
            return False
        health = self.outages.health[lease]
        return await self.consume(box, health, lease, pulse) or self.rt.once

    async def consume(
        self, box: MailboxSettings, health: Dependency, lease: str, pulse: Pulse
    ) -> bool:
        """Connect and handle mail until stopped; False when the caller should retry later.
        A ``DatabaseError`` is the caller's to handle (the connection is closed first)."""
        rt = self.rt
        mailbox = Mailbox(box, max_message_bytes=rt.settings.limits.max_message_bytes)
        self.mailboxes[box.name] = mailbox
        stopped = rt.when_stopped(mailbox.interrupt)  # a wait in IDLE ends at the stop
        try:
            await asyncio.to_thread(mailbox.connect)
            self.attempted(box.name)
            await self.outages.healthy(health, f"mailbox {box.name}")
            return await self._serve(box, mailbox, health, lease, pulse)
        except MailboxError as exc:
            self.attempted(box.name)
            if isinstance(exc, MailboxLoginError) and box.name in self.tokens:
                self.tokens[box.name].invalidate()  # refused: fetch a fresh token next time
            await self.outages.failed(health, f"mailbox {box.name}", str(exc))
            if rt.once:
                rt.unreachable.append(f"mailbox {box.name}: {exc}")
                return True
            await rt.pause(rt.timings.backoff(health.failures), pulse)
            return False
        finally:
            stopped.cancel()
            self.mailboxes.pop(box.name, None)
            await asyncio.to_thread(mailbox.close)

    async def _serve(
        self, box: MailboxSettings, mailbox: Mailbox, health: Dependency, lease: str, pulse: Pulse
    ) -> bool:
        """Drain the folder, then wait for news, until stopped; False once the lease is lost."""
        rt = self.rt
        while not rt.stop.is_set():
            await asyncio.to_thread(self.drain, box, mailbox)
            await self.outages.healthy(health, f"mailbox {box.name}")
            pulse.beat()
            if rt.once or rt.stop.is_set():
                return True
            wait = min(box.poll_seconds, rt.timings.lease_check)
            pulse.rest(wait)  # IDLE ends by itself: the server's news, or the deadline
            await asyncio.to_thread(mailbox.wait, wait)
            pulse.beat()
            rt.faults.check(Loop.MAILBOX)
            await rt.stall(Loop.MAILBOX)
            if not await asyncio.to_thread(rt.leases.take, lease):
                log.warning("lost the lease on mailbox %s to another daemon", box.name)
                return False
        return True

    def drain(self, box: MailboxSettings, mailbox: Mailbox) -> None:
        """Handle every message waiting in the folder; move each batch after its commits."""
        rt = self.rt
        while not rt.stop.is_set():
            uids = mailbox.pending()
            if uids or not rt.once:
                # the first worker starts now, ready for the first message (not for a
                # ``run --once`` that finds nothing to do)
                rt.desk.parser.start(ingest.budget_of(rt.desk))
                rt.faults.check(Loop.PARSER)
            if not uids:
                return
            for start in range(0, len(uids), MOVE_BATCH):
                self.drain_batch(box, mailbox, uids[start : start + MOVE_BATCH])
                if rt.stop.is_set():
                    return

    def drain_batch(self, box: MailboxSettings, mailbox: Mailbox, uids: list[int]) -> None:
        """Fetch, handle and commit each message of ``uids``, then move them in one go.

        A message's parse starts in its worker process as soon as the message is fetched, and
        runs while the message before it is committed: the daemon does not wait for it. A large
        message (over ``ingest.RAW_IN_DATABASE``) is handled alone, so that two are never held
        at once."""
        rt = self.rt
        done: Done = {"processed": [], "quarantine": []}
        budget = ingest.budget_of(rt.desk)
        ahead: tuple[FetchedMail, Parsing] | None = None  # fetched, its parse under way
        try:
            for raw in mailbox.fetch(uids):
                if rt.stop.is_set():
                    break
                rt.faults.crash_point("after_fetch")
                before, ahead = ahead, None
                parsed = before[1].result() if before is not None else None
                if not raw.too_large and len(raw.raw) <= ingest.RAW_IN_DATABASE:
                    ahead = (raw, rt.desk.parser.begin(raw.raw, budget))
                if before is not None:
                    self._ingest(box, before[0], parsed, done)
                if ahead is None:
                    self._ingest(box, raw, None, done)
                # let go of this message's bytes before the generator fetches the next one
                del raw
            if ahead is not None and not rt.stop.is_set():
                last, parsing = ahead
                ahead = None
                self._ingest(box, last, parsing.result(), done)
        finally:
            if ahead is not None:  # stopped, or the message before failed: not handled now
                ahead[1].cancel()
            for folder, moved in done.items():
                if moved:
                    mailbox.move(moved, folder)
                    rt.faults.crash_point("after_move")

    def _ingest(
        self, box: MailboxSettings, raw: FetchedMail, parsed: Inbound | None, done: Done
    ) -> None:
        """Handle one fetched message (``parsed`` when its parse is done already)."""
        rt = self.rt
        arrived = raw.arrived if raw.arrived is not None else time.time()
        source = ingest.Source(box.name, raw.uidvalidity, raw.uid)
        if raw.too_large:
            outcome = oversize.quarantine(rt.db, rt.desk, source, raw.head, raw.size)
        else:
            outcome = ingest.process(rt.db, rt.desk, source, raw.raw, parsed=parsed)
        done["quarantine" if outcome.quarantined else "processed"].append(raw.uid)
        self._committed(box.name, outcome, arrived)
        rt.faults.crash_point("after_commit")

    def _committed(self, mailbox: str, outcome: ingest.Outcome, arrived: float) -> None:
        self.rt.wake()
        # a long backlog is progress, message by message
        self.rt.pulses[f"mailbox:{mailbox}"].beat()
        if self.rt.metrics is not None:
            self.rt.metrics.message(mailbox, outcome, arrived)
        if self.on_outcome is not None:
            self.on_outcome(mailbox, outcome)
