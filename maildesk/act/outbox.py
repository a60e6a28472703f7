"""Write outbound mail to the outbox, claim what is due, record what became of each mail.

Last stage of the flow, the database side of sending. ``Mailer.enqueue`` renders a mail's
templates (``rendering``), composes its bytes (``compose``, with our marks) and writes the row
inside the caller's transaction, so mail exists if and only if the change that caused it
committed; an override that fails for one mail gives way to the shipped template, with an alert
to the admin. Automatic mail to outside addresses that loop protection (``guard``) holds is
kept as a suppressed row, never sent. ``deliver_rows`` sends claimed rows
through ``smtp.Sender`` connections and records each outcome: sent, retried with backoff (the
same Message-ID every time) or failed with the error kept (and shown on the ticket). Customer
text only ever enters a template as data.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from maildesk.act import claims, guard
from maildesk.act.claims import CLAIM_BYTES
from maildesk.config import Settings
from maildesk.database import Database
from maildesk.mail.actions import Action, with_actions, without_tokens
from maildesk.mail.compose import Draft, Enclosure, clean_header, compose
from maildesk.mail.marks import bounce_address, own_message_id
from maildesk.mail.rendering import Rendered, TemplateError, TemplateProblem, Templates
from maildesk.mail.smtp import DeliveryOutcome, Sender, SendResult, no_smtputf8, server_name
from maildesk.models import Event, Outbox, OutboxStatus, SmtpCapabilities, Ticket, insert_row
from maildesk.store import Store

log = logging.getLogger("maildesk.outbox")  # the logs name the job, not the module path

GIVE_UP_AFTER = timedelta(days=4)
IN_FLIGHT = 2  # mails a connection may have sent but not yet recorded
TEMPLATE_ALERT = "template-alert"  # the outbox kind of an alert about a failing template


# --------------------------------------------------------------------------- enqueueing


@dataclass(frozen=True, slots=True)
class Mail:
    """One mail to send, as decided by the lifecycle rules.

    ``automatic``: made wholly from templates (an acknowledgment, a reminder, a notice). Only
    such mail to outside addresses is held by loop protection, the hourly cap and suppressed
    addresses, counted by the cap, and marked ``Auto-Submitted``. A mail carrying words an agent
    wrote or chose is a person's answer (RFC 3834 section 5): ``automatic=False``."""

    kind: str  # ack | reply | notice | receipt | alert | ...
    template: str
    to: str
    context: dict[str, Any] = field(default_factory=dict)
    ticket: Ticket | None = None
    automatic: bool = True
    auto_submitted: str = "auto-generated"
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    to_agent: bool = False
    # why the desk keeps this mail's row but does not send it (a notice over its hourly cap)
    held_back: str | None = None
    # the files it carries (read from the blob store when it is composed)
    attachments: tuple[Enclosure, ...] = ()
    # copied to these (the ticket's participants): one mail, with a Cc header, and an outbox
    # row, its own envelope, for each of them (``Outbox``)
    cc: tuple[str, ...] = ()
    # a notice's one-tap links (``actions.with_actions``), addressed to its ``reply_to``
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Queued:
    """An outbox row just written: its Message-ID, and why it is kept without being sent."""

    message_id: str
    held: str | None = None


class Mailer:
    """Turns ``Mail`` values into outbox rows (inside the caller's transaction)."""

    def __init__(self, settings: Settings, templates: Templates | None = None) -> None:
        self.settings = settings
        self.templates = templates or Templates(settings.desk.templates_dir)

    def enqueue(self, session: Any, mail: Mail, now: datetime) -> Queued:
        """Render ``mail`` and write its outbox row; returns its Message-ID and whether it is
        held back.

        A plain insert, not an ORM object: nothing reads the row back in this transaction, and
        the unit of work cost more than rendering the mail."""
        what = f"{mail.kind} to {mail.to}"
        rendered = self.render(session, mail.template, self.context(mail), now, what)
        return self._write(session, mail, rendered, now)

    def compose_now(self, mail: Mail, now: datetime) -> tuple[str, bytes]:
        """``mail`` as its envelope sender and bytes, for sending at once without an outbox
        row: the daemon's alert that the database (where the outbox is) is down. An override
        that fails for it gives way to the shipped template, as in ``render``."""
        context = self.context(mail)
        try:
            rendered = self.templates.render(mail.template, context)
        except TemplateError as exc:
            if not self.templates.shipped_has(mail.template):
                raise
            log.error(
                "template %s; %s to %s made from the shipped template", exc, mail.kind, mail.to
            )
            rendered = self.templates.render_shipped(mail.template, context)
        desk = self.settings.desk
        message_id = own_message_id(desk.secret, desk.domain)
        body = compose(self.draft(mail, rendered, message_id, now))
        return bounce_address(desk.secret, desk.address, message_id), body

    def context(self, mail: Mail) -> dict[str, Any]:
        """What the templates of ``mail`` see: its context, and the desk."""
        desk = self.settings.desk
        return {"desk": {"name": desk.name, "address": desk.address}, **mail.context}

    def render(
        self, session: Any, name: str, context: dict[str, Any], now: datetime, what: str
    ) -> Rendered:
        """Mail ``name`` (``what`` says which, for the log). An override in ``templates_dir``
        that fails for this mail's data gives way to the shipped template, and the admin is
        alerted (once an hour per template): the mail goes out, and whatever caused it is
        never quarantined for it. Only a template without a shipped one to fall back on (a
        canned reply of the desk's own) raises ``TemplateError``."""
        try:
            return self.templates.render(name, context)
        except TemplateError as exc:
            if not (self.templates.overridden(name) and self.templates.shipped_has(name)):
                raise
            rendered = self.templates.render_shipped(name, context)
            log.error("template %s; %s made from the shipped template instead", exc, what)
            self._alert_template(session, exc.problem, what, now)
            return rendered

    def _write(self, session: Any, mail: Mail, rendered: Rendered, now: datetime) -> Queued:
        """The mail's row, and a row for each of its Cc: the same mail, sent, retried, bounced
        and held back on its own. A copy's row is keyed by a Message-ID of its own that no mail
        carries, which its VERP address is made from."""
        desk = self.settings.desk
        message_id = own_message_id(desk.secret, desk.domain)
        marked, files = claims.marked(mail.attachments)
        body = compose(self.draft(replace(mail, attachments=marked), rendered, message_id, now))
        mailed = {
            "ticket_id": mail.ticket.id if mail.ticket is not None else None,
            "kind": mail.kind,
            "automatic": mail.automatic,
            "body": body,
            **files,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        status, why_not = self._standing(session, mail, mail.to, now)
        self._insert(session, mailed, (message_id, None, mail.to), (status, why_not))
        for address in mail.cc:  # their bytes are the mail's row's (``copies_read``)
            copy = own_message_id(desk.secret, desk.domain)
            standing = self._standing(session, mail, address, now)
            copied = {**mailed, "body": b"", "files": None, "files_bytes": None}
            self._insert(session, copied, (copy, message_id, address), standing)
        return Queued(message_id, why_not if status == OutboxStatus.SUPPRESSED else None)

    def _standing(
        self, session: Any, mail: Mail, address: str, now: datetime
    ) -> tuple[OutboxStatus, str | None]:
        """Whether ``mail`` goes to ``address``: pending, held back (suppressed) or failed
        before it is tried, and why."""
        why_not = mail.held_back or self._suppressed(session, mail, address, now)
        undeliverable = self.undeliverable(session, address)
        if undeliverable:
            log.warning("cannot send %s to %s: %s", mail.kind, address, undeliverable)
            return OutboxStatus.FAILED, undeliverable
        if why_not:
            log.info("not sending %s to %s: %s", mail.kind, address, why_not)
            if why_not.startswith(guard.LOOP_PROTECTION) and guard.first_throttled(session, now):
                self._alert_throttled(session, address, why_not, now)
            return OutboxStatus.SUPPRESSED, why_not
        return OutboxStatus.PENDING, None

    def _insert(
        self,
        session: Any,
        mailed: dict[str, Any],
        envelope: tuple[str, str | None, str],
        standing: tuple[OutboxStatus, str | None],
    ) -> None:
        """One row: ``envelope`` is its key, the Message-ID it copies (None: the mail itself)
        and its recipient."""
        key, copy_of, recipient = envelope
        desk = self.settings.desk
        values = {
            **mailed,
            "message_id": key,
            "copy_of": copy_of,
            "recipient": recipient,
            "mail_from": bounce_address(desk.secret, desk.address, key),
            "status": standing[0],
            "last_error": standing[1],
        }
        insert_row(session, Outbox, values)

    def undeliverable(self, session: Any, address: str, *, copied: bool = False) -> str | None:
        """Why mail to ``address`` cannot go out through our SMTP server, when that is known
        before trying: a non-ASCII address (RFC 6531) and a server that did not announce
        SMTPUTF8 the last time the delivery process connected. Unknown yet: None (the delivery
        process finds out, and fails the mail then with the same reason), but for an address
        in the Cc of a mail (``copied``): every copy carries it, so the server must be known
        to take it."""
        if address.isascii():
            return None
        smtp = self.settings.smtp
        with session.no_autoflush:
            known = session.get(SmtpCapabilities, server_name(smtp))
        if known.smtputf8 if known is not None else not copied:
            return None
        return no_smtputf8(smtp, address)

    def _alert_template(
        self, session: Any, problem: TemplateProblem, what: str, now: datetime
    ) -> None:
        """Tell the admin an override failed, at most once an hour for each template file.

        Rendered from the shipped ``admin_alert`` (the override of that may be what failed).
        The outbox is the memory: every process (a daemon, ``maildesk ingest`` per message)
        sees the alerts already written."""
        admin = self.settings.desk.admin_address
        if not admin:
            return
        shown = self.templates.shown(problem.path)
        alert = Mail(
            kind=TEMPLATE_ALERT,
            template="admin_alert",
            to=admin,
            context={
                "subject": f"template {shown} failed; the shipped one is used instead",
                "text": (
                    f"The template {shown} failed for a mail ({what}):\n\n  {problem}\n\n"
                    "That mail was made from the shipped template instead, and so is every "
                    "mail this template fails for. Nothing was quarantined.\n\n"
                    "Fix the template, check it with `maildesk check-config` and reload "
                    "maildesk (systemctl reload maildesk). This alert is sent at most once "
                    "an hour for each template."
                ),
            },
            to_agent=True,
        )
        rendered = self.templates.render_shipped(alert.template, self.context(alert))
        if self._alerted_lately(session, admin, rendered.subject, now):
            return
        self._write(session, alert, rendered, now)

    def _alerted_lately(self, session: Any, admin: str, subject: str, now: datetime) -> bool:
        """Whether an alert with this subject went to ``admin`` within the hour (a few rows
        at most: one per failing template)."""
        with session.no_autoflush:
            rows = session.scalars(
                select(Outbox.body).where(
                    Outbox.kind == TEMPLATE_ALERT,
                    Outbox.recipient == admin,
                    Outbox.created_at > now - timedelta(hours=1),
                )
            ).all()
        wanted = clean_header(subject, 900)
        parser = BytesHeaderParser(policy=email.policy.default)
        return any(str(parser.parsebytes(body)["subject"]) == wanted for body in rows)

    def _suppressed(self, session: Any, mail: Mail, address: str, now: datetime) -> str | None:
        """Why automatic ``mail`` to an outside ``address`` is held (None: it goes out). Mail
        carrying an agent's words, and mail to agents, is never held here."""
        if not mail.automatic or mail.to_agent:
            return None
        # the rows of this transaction not yet written change nothing here: don't flush for it
        with session.no_autoflush:
            return guard.held(session, self.settings, address, now)

    def _alert_throttled(self, session: Any, address: str, why: str, now: datetime) -> None:
        """One alert to the admin when an address hits the cap (a loop, or a mail storm); at
        most one an hour, whichever addresses hit it."""
        admin = self.settings.desk.admin_address
        if not admin:
            return
        text = (
            f"Automatic mail to {clean_header(address, 320)} is held back: {why}.\n"
            "This usually means an autoresponder is answering our acknowledgments. "
            "Mail from that address is still recorded on its tickets; agents are not throttled.\n"
            "Other addresses held back within the hour are not alerted again: the outbox keeps "
            "their mail as suppressed (loop protection)."
        )
        alert = Mail(
            kind="alert",
            template="admin_alert",
            to=admin,
            context={"subject": f"loop protection for {clean_header(address, 320)}", "text": text},
            to_agent=True,
        )
        self.enqueue(session, alert, now)

    def draft(self, mail: Mail, rendered: Rendered, message_id: str, now: datetime) -> Draft:
        """What ``compose`` makes ``mail``'s bytes from: its rendered words, from the desk."""
        desk = self.settings.desk
        if mail.to_agent:  # with its links, and an HTML part
            rendered = with_actions(rendered, mail.actions, mail.reply_to)
        elif mail.to != desk.admin_address:  # no token address of an agent's goes outside
            rendered = without_tokens(rendered, desk.address)
        return Draft(
            sender_name=desk.name,
            sender=desk.address,
            to=mail.to,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id=message_id,
            date=now,
            loop_id=desk.loop_id,
            in_reply_to=mail.in_reply_to,
            references=mail.references,
            reply_to=mail.reply_to,
            auto_submitted=mail.auto_submitted if mail.automatic else None,
            precedence="bulk" if mail.to_agent else "auto_reply",
            attachments=mail.attachments,
            cc=mail.cc,
        )


# --------------------------------------------------------------------------- delivery


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... capped at 2 h, with ±20 % jitter so retries don't synchronise."""
    base = min(30 * 2 ** max(attempts - 1, 0), 7200)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


def claim_due(
    db: Database,
    now: datetime,
    limit: int,
    holder_lease: timedelta,
    holder: str = "",
    max_bytes: int = CLAIM_BYTES,
    *,
    store: Store,
) -> list[Outbox]:
    """Claim up to ``limit`` due rows for this process (several daemons never share a row),
    their bytes within ``max_bytes`` in all (the first row whatever its size; the copies of
    one mail share its bytes), with the files of ``store`` they carry put in. A row whose file
    cannot be read is recorded as failed, with why, and not returned."""
    rows = claims.claimed(db, now, limit, (holder_lease, holder), max_bytes)
    failed = claims.with_files(rows, store)
    if not failed:
        return rows
    for row, why in failed:
        log.error("cannot send %s <%s> to %s: %s", row.kind, row.message_id, row.recipient, why)
    record_many(db, [(row, SendResult(DeliveryOutcome.FAILED, why)) for row, why in failed], now)
    dropped = {row.id for row, _ in failed}
    return [row for row in rows if row.id not in dropped]


def claim_holders(db: Database) -> list[str]:
    """Processes that hold claims on outbox rows right now."""
    with db.transaction() as session:
        query = select(Outbox.claimed_by).where(
            Outbox.status == OutboxStatus.PENDING,
            Outbox.claimed_until.is_not(None),
            Outbox.claimed_by.is_not(None),
        )
        return sorted({h for h in session.scalars(query.distinct()) if h})


def release_claims(db: Database, holders: Sequence[str]) -> None:
    """Give the rows claimed by ``holders`` (processes that died) back to the queue."""
    with db.transaction() as session:
        session.execute(
            update(Outbox)
            .where(Outbox.claimed_by.in_(list(holders)), Outbox.status == OutboxStatus.PENDING)
            .values(claimed_until=None, claimed_by=None)
        )


# Told, inside the transaction that records it, of each mail given up on (``bounces.refused``).
OnFailed = Callable[[Any, Outbox, SendResult, datetime], None]


def record(db: Database, row: Outbox, result: SendResult, now: datetime) -> None:
    """Write the outcome of one attempt."""
    record_many(db, [(row, result)], now)


def record_many(
    db: Database,
    outcomes: Sequence[tuple[Outbox, SendResult]],
    now: datetime,
    on_failed: OnFailed | None = None,
) -> None:
    """Write the outcomes of several attempts in one transaction (one commit, one fsync)."""
    changes = [(row, result, _outcome(row, result, now)) for row, result in outcomes]
    with db.transaction() as session:
        # one bulk UPDATE by primary key (executemany per set of columns), not one per row
        session.execute(update(Outbox), [{"id": row.id, **values} for row, _, values in changes])
        for row, result, values in changes:
            if values.get("status") == OutboxStatus.FAILED and row.ticket_id is not None:
                _failed_on_ticket(session, row, result.detail, now)
                if on_failed is not None:
                    _tell_failed(on_failed, session, row, result, now)
    for row, result in outcomes:
        if result.outcome == DeliveryOutcome.SENT:
            log.debug("sent %s <%s> to %s", row.kind, row.message_id, row.recipient)
        elif result.outcome == DeliveryOutcome.FAILED or now - row.created_at > GIVE_UP_AFTER:
            log.warning(
                "gave up on %s <%s> to %s: %s",
                row.kind,
                row.message_id,
                row.recipient,
                result.detail,
            )


def _failed_on_ticket(session: Any, row: Outbox, error: str, now: datetime) -> None:
    """A mail given up on shows on its ticket's timeline, with the reason."""
    detail = {"mail": row.kind, "recipient": row.recipient, "error": error}
    insert_row(
        session,
        Event,
        {
            "ticket_id": row.ticket_id,
            "kind": "mail_failed",
            "actor": "",
            "at": now,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
        },
    )


def _tell_failed(
    on_failed: OnFailed, session: Any, row: Outbox, result: SendResult, now: datetime
) -> None:
    """``on_failed`` for one row; its failure (an operator's template that cannot render, say)
    must not undo the outcomes, or the mail would be sent again and again."""
    try:
        on_failed(session, row, result, now)
    except SQLAlchemyError:
        raise
    except Exception as exc:  # noqa: BLE001 - recording the outcome comes first
        log.error(
            "%s <%s> to %s failed (%s), and telling the agents failed too: %s: %s",
            row.kind,
            row.message_id,
            row.recipient,
            result.detail,
            type(exc).__name__,
            exc,
        )


def record_smtputf8(db: Database, senders: Sequence[Sender], now: datetime) -> None:
    """Keep what the server announced (SMTPUTF8) when it changed or was not known yet."""
    if not senders:
        return
    learnt = [s.smtputf8 for s in senders if s.smtputf8 is not None]
    if not learnt or all(s.noted_smtputf8 == learnt[-1] for s in senders):
        return
    server = server_name(senders[0].settings)
    try:
        with db.transaction() as session:
            known = session.get(SmtpCapabilities, server)
            if known is None:
                session.add(SmtpCapabilities(server=server, smtputf8=learnt[-1], checked_at=now))
            else:
                known.smtputf8, known.checked_at = learnt[-1], now
    except IntegrityError:  # another daemon wrote it at the same moment: the same fact
        pass
    for sender in senders:
        sender.noted_smtputf8 = learnt[-1]
    log.info("SMTP server %s %s SMTPUTF8", server, "announces" if learnt[-1] else "lacks")


def _outcome(row: Outbox, result: SendResult, now: datetime) -> dict[str, Any]:
    if not result.reached and now - row.created_at <= GIVE_UP_AFTER:
        # the server was not there at all: not this mail's failure. It stays due and goes out
        # as soon as the daemon's outage backoff finds the server back.
        return {"claimed_until": None, "last_error": result.detail}
    values: dict[str, Any] = {"attempts": row.attempts + 1, "claimed_until": None}
    if result.outcome == DeliveryOutcome.SENT:
        values |= {"status": OutboxStatus.SENT, "sent_at": now, "last_error": None}
    elif result.outcome == DeliveryOutcome.FAILED or now - row.created_at > GIVE_UP_AFTER:
        values |= {"status": OutboxStatus.FAILED, "last_error": result.detail}
    else:
        values |= {"next_attempt_at": now + backoff(row.attempts + 1), "last_error": result.detail}
    return values


async def deliver_rows(
    senders: Sequence[Sender],
    db: Database,
    rows: list[Outbox],
    clock: Any,
    after_send: Any = None,
    on_failed: OnFailed | None = None,
) -> list[SendResult]:
    """Send ``rows`` over the given connections in parallel; record each outcome (``on_failed``
    is told of each mail of a ticket given up on, in the same transaction).

    A crash between the server's 250 and ``record`` resends that one mail after a restart, with
    the same Message-ID: the only duplicate window."""
    queue: asyncio.Queue[Outbox] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    results: list[SendResult] = []
    unrecorded: list[tuple[Outbox, SendResult]] = []
    recording = asyncio.Lock()

    async def record_waiting() -> None:
        # Group commit: whoever holds the lock writes every outcome waiting so far in one
        # transaction; a connection never sends its next mail before its last one is recorded.
        async with recording:
            batch = unrecorded[:]
            unrecorded.clear()
            if batch:
                await asyncio.to_thread(record_many, db, batch, clock(), on_failed)

    async def worker(sender: Sender) -> None:
        # The outcome of one mail is written while the next one is sent (never more than
        # IN_FLIGHT mails of a connection unrecorded: a crash resends at most those, once).
        recording_previous: asyncio.Task[None] | None = None
        try:
            while not queue.empty():
                row = queue.get_nowait()
                result = await sender.send(row.mail_from, row.recipient, row.body)
                if after_send is not None:
                    after_send()
                unrecorded.append((row, result))
                if recording_previous is not None:
                    await recording_previous
                recording_previous = asyncio.create_task(record_waiting())
                results.append(result)
                if result.outcome == DeliveryOutcome.RETRY and sender.client is None:
                    return  # server unreachable: leave the rest for the next round
        finally:
            if recording_previous is not None:
                await recording_previous

    await asyncio.gather(*(worker(s) for s in senders))
    untried = []
    while not queue.empty():
        untried.append(queue.get_nowait().id)
    if untried:  # the server went away: let the next round (or another daemon) have them
        await asyncio.to_thread(release, db, untried)
    await asyncio.to_thread(record_smtputf8, db, senders, clock())
    return results


def release(db: Database, ids: list[int]) -> None:
    with db.transaction() as session:
        session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(claimed_until=None))
