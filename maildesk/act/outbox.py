"""Enqueue outbound mail, deliver it over SMTP with retry.

Last stage of the flow. ``Mailer.enqueue`` turns a template (``rendering``) and its context
into a complete message and writes it to the outbox table inside the caller's transaction, so
mail exists if and only if the change that caused it committed; an override that fails for one
mail gives way to the shipped template, with an alert to the admin. ``deliver_due`` sends due
rows with aiosmtplib: 2xx marks them sent, 4xx and connection trouble retry with backoff (same
Message-ID every time), 5xx marks them failed with the error kept. Also here: check-config's
probe, sent as every mail is. Customer text only ever enters a template as data.
"""

from __future__ import annotations

import asyncio
import binascii
import email.policy
import json
import logging
import random
import re
import secrets
import ssl
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import quoprimime
from email.parser import BytesHeaderParser
from email.utils import format_datetime, formataddr
from typing import Any

import aiosmtplib
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from maildesk.config import Settings, SmtpSettings
from maildesk.mail.marks import (
    LOOP_HEADER,
    bounce_address,
    is_desk_address,
    own_message_id,
    probe_address,
)
from maildesk.mail.rendering import Rendered, TemplateError, TemplateProblem, Templates
from maildesk.models import (
    Database,
    Event,
    Outbox,
    OutboxStatus,
    SmtpCapabilities,
    Suppression,
    Ticket,
    insert_row,
)

log = logging.getLogger("maildesk.outbox")  # the logs name the job, not the module path

GIVE_UP_AFTER = timedelta(days=4)
IN_FLIGHT = 2  # mails a connection may have sent but not yet recorded
NO_AUTO_MAIL = re.compile(
    r"^(mailer-daemon|postmaster|abuse|root|noreply|noreply.+|no-reply|no-reply.+|bounces?)@",
    re.IGNORECASE,
)
LOOP_PROTECTION = "loop protection"
TEMPLATE_ALERT = "template-alert"  # the outbox kind of an alert about a failing template
CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def clean_header(value: str, limit: int = 900) -> str:
    """A single-line, control-free header value: nothing a sender wrote can add a header."""
    value = CONTROL.sub(" ", unicodedata.normalize("NFC", value))
    value = re.sub(r"\s+", " ", value).strip()
    return value[:limit]


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


# Built once, with bound parameters: composing a statement costs more than running it.
_SUPPRESSION = select(Suppression.until, Suppression.reason, Suppression.bounced_at).where(
    Suppression.address == bindparam("address")
)
_RECENT_AUTOMATIC = select(func.count(Outbox.id)).where(
    Outbox.recipient == bindparam("address"),
    Outbox.automatic.is_(True),
    Outbox.status != OutboxStatus.SUPPRESSED,
    Outbox.created_at > bindparam("since"),
)


@dataclass(frozen=True, slots=True)
class Queued:
    """An outbox row just written: its Message-ID, and why it is kept without being sent."""

    message_id: str
    held: str | None = None


SUPPRESS_AFTER_BOUNCE = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Bounced:
    """An address that bounced permanently: when (None: not recorded) and the server's status."""

    at: datetime | None
    status: str


def bounced(session: Any, address: str, now: datetime) -> Bounced | None:
    """The permanent bounce that suppresses automatic mail to ``address`` now, if any."""
    row = session.execute(_SUPPRESSION, {"address": address.lower()}).first()
    if row is None or row.until <= now:
        return None
    return Bounced(row.bounced_at, row.reason)


def suppress(session: Any, address: str, status: str, now: datetime) -> None:
    """No automatic mail to ``address`` for ``SUPPRESS_AFTER_BOUNCE``: it bounced permanently
    with ``status``. An insert that two daemons may race on, then the update: never a conflict."""
    values = {
        "until": now + SUPPRESS_AFTER_BOUNCE,
        "reason": status,
        "bounced_at": now,
    }
    address = address.lower()
    insert_row(session, Suppression, {"address": address, **values}, once=True)
    session.execute(update(Suppression).where(Suppression.address == address).values(**values))


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
        body = self._compose(mail, rendered.subject, rendered.text, rendered.html, message_id, now)
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
        desk = self.settings.desk
        message_id = own_message_id(desk.secret, desk.domain)
        status = OutboxStatus.PENDING
        why_not = mail.held_back or self._suppressed(session, mail, now)
        undeliverable = self.undeliverable(session, mail.to)
        if undeliverable:
            status, why_not = OutboxStatus.FAILED, undeliverable
            log.warning("cannot send %s to %s: %s", mail.kind, mail.to, undeliverable)
        elif why_not:
            status = OutboxStatus.SUPPRESSED
            log.info("not sending %s to %s: %s", mail.kind, mail.to, why_not)
            if why_not.startswith(LOOP_PROTECTION) and self._first_throttled(session, mail, now):
                self._alert_throttled(session, mail, why_not, now)
        body = self._compose(mail, rendered.subject, rendered.text, rendered.html, message_id, now)
        insert_row(
            session,
            Outbox,
            {
                "ticket_id": mail.ticket.id if mail.ticket is not None else None,
                "message_id": message_id,
                "kind": mail.kind,
                "recipient": mail.to,
                "mail_from": bounce_address(desk.secret, desk.address, message_id),
                "automatic": mail.automatic,
                "body": body,
                "status": status,
                "last_error": why_not,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
        )
        return Queued(message_id, why_not if status == OutboxStatus.SUPPRESSED else None)

    def undeliverable(self, session: Any, address: str) -> str | None:
        """Why mail to ``address`` cannot go out through our SMTP server, when that is known
        before trying: a non-ASCII address (RFC 6531) and a server that did not announce
        SMTPUTF8 the last time the delivery process connected. Unknown yet: None (the delivery
        process finds out, and fails the mail then with the same reason)."""
        if address.isascii():
            return None
        smtp = self.settings.smtp
        with session.no_autoflush:
            known = session.get(SmtpCapabilities, server_name(smtp))
        if known is None or known.smtputf8:
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

    def _suppressed(self, session: Any, mail: Mail, now: datetime) -> str | None:
        """Why automatic ``mail`` to an outside address is held (None: it goes out). Mail
        carrying an agent's words, and mail to agents, is never held here."""
        if not mail.automatic or mail.to_agent:
            return None
        # the rows of this transaction not yet written change nothing here: don't flush for it
        with session.no_autoflush:
            return self._why_not(session, mail, now)

    def _why_not(self, session: Any, mail: Mail, now: datetime) -> str | None:
        address = mail.to.lower()
        desk = self.settings.desk
        if is_desk_address(address, desk.address):
            return "the desk's own address"
        if NO_AUTO_MAIL.match(address):
            return "system address (never auto-mailed)"
        bounce = bounced(session, address, now)
        if bounce is not None:
            return f"address bounced permanently ({bounce.status})"
        limit = self.settings.limits.auto_replies_per_address_per_hour
        recent = session.scalar(
            _RECENT_AUTOMATIC, {"address": address, "since": now - timedelta(hours=1)}
        )
        if recent is not None and recent >= limit:
            return f"{LOOP_PROTECTION}: {recent} automatic mails to this address in the last hour"
        return None

    def _first_throttled(self, session: Any, mail: Mail, now: datetime) -> bool:
        """Whether this is the first mail held back by the hourly cap in the last hour, to any
        address: a forger writing in the names of a thousand addresses makes a thousand hit
        it, and one alert says as much as a thousand."""
        earlier = session.scalar(
            select(Outbox.id)
            .where(
                Outbox.status == OutboxStatus.SUPPRESSED,
                Outbox.last_error.startswith(LOOP_PROTECTION),
                Outbox.created_at > now - timedelta(hours=1),
            )
            .limit(1)
        )
        return earlier is None

    def _alert_throttled(self, session: Any, mail: Mail, why: str, now: datetime) -> None:
        """One alert to the admin when an address hits the cap (a loop, or a mail storm); at
        most one an hour, whichever addresses hit it."""
        admin = self.settings.desk.admin_address
        if not admin:
            return
        text = (
            f"Automatic mail to {clean_header(mail.to, 320)} is held back: {why}.\n"
            "This usually means an autoresponder is answering our acknowledgments. "
            "Mail from that address is still recorded on its tickets; agents are not throttled.\n"
            "Other addresses held back within the hour are not alerted again: the outbox keeps "
            "their mail as suppressed (loop protection)."
        )
        alert = Mail(
            kind="alert",
            template="admin_alert",
            to=admin,
            context={"subject": f"loop protection for {clean_header(mail.to, 320)}", "text": text},
            to_agent=True,
        )
        self.enqueue(session, alert, now)

    def _compose(
        self,
        mail: Mail,
        subject: str,
        text: str | None,
        html: str | None,
        message_id: str,
        now: datetime,
    ) -> bytes:
        """The message as bytes. Every header value is a cleaned single-line ``str`` (nothing a
        sender wrote can add a header), encoded as RFC 2047 words where it is not plain ASCII.
        Written directly rather than through the email package's generator: its header folding
        cost more than the rest of enqueueing, and the structure here is fixed and small."""
        desk = self.settings.desk
        headers = [
            ("From", _address(clean_header(desk.name, 200), desk.address)),
            ("To", _address("", mail.to)),  # a non-ASCII address is written as UTF-8 (RFC 6532)
            ("Subject", _encoded(clean_header(subject, 900) or clean_header(desk.name, 200))),
            ("Date", format_datetime(now)),
            ("Message-ID", f"<{message_id}>"),
        ]
        if mail.in_reply_to:
            headers.append(("In-Reply-To", f"<{clean_header(mail.in_reply_to, 500)}>"))
        refs = [clean_header(r, 500) for r in mail.references if r]
        if refs:
            headers.append(("References", " ".join(f"<{r}>" for r in refs[-20:])))
        if mail.reply_to:
            headers.append(("Reply-To", _address(clean_header(desk.name, 200), mail.reply_to)))
        if mail.automatic:
            headers.append(("Auto-Submitted", mail.auto_submitted))
            headers.append(("X-Auto-Response-Suppress", "All"))
            headers.append(("Precedence", "bulk" if mail.to_agent else "auto_reply"))
        headers.append((LOOP_HEADER, desk.loop_id))
        head = "".join(
            _header(name, value) if value.isascii() or name != "To" else f"To: {value}\r\n"
            for name, value in headers
        )
        # UTF-8 only in the To of mail to a non-ASCII address, which goes out with SMTPUTF8
        head_bytes = (head + "MIME-Version: 1.0\r\n").encode("utf-8")
        if html is None or text is None:  # one half alone: an override of that half only
            part = _text_part(text, "plain") if text is not None else _text_part(html or "", "html")
            return head_bytes + part
        # "=_" never occurs in quoted-printable text (every "=" there starts a hex pair or a soft
        # line break), so this boundary cannot collide with either part.
        boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
        return b"".join(
            (
                head_bytes,
                b'Content-Type: multipart/alternative;\r\n boundary="%s"\r\n\r\n' % boundary,
                b"--%s\r\n" % boundary,
                _text_part(text, "plain"),
                b"\r\n--%s\r\n" % boundary,
                _text_part(html, "html"),
                b"\r\n--%s--\r\n" % boundary,
            )
        )


_FOLD_AT = 78  # header line length to fold to where a space allows it (RFC 5322 says 78)
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII: written as it is
_UNSAFE_IN_ADDRESS = re.compile(r"[\s<>,;\"]")
_LONG_LINE = re.compile(rb"[^\n]{77}")
# RFC 2047 "Q" encoding with only the characters allowed in an encoded word inside a phrase, so
# the same words serve a Subject and a display name
_Q = {i: f"={i:02X}" for i in range(256)}
_Q.update({ord(c): c for c in string.ascii_letters + string.digits + "!*+-/"})
_Q[ord(" ")] = "_"
_TRAILING = frozenset(("=8", "=9", "=A", "=B"))  # a UTF-8 continuation byte, Q-encoded
_WORD_CHARS = 52  # encoded text per word: a word is 64 characters, fits a line after "Subject: "


def _text_part(text: str, subtype: str) -> bytes:
    """A text part, headers and body; quoted-printable so long lines are folded safely and plain
    text stays legible. CRLF, CR and LF all end a line, and end it as CRLF on the wire."""
    data = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    body = binascii.b2a_qp(data, istext=True)
    if _LONG_LINE.search(body):
        # b2a_qp lets a line reach 78 characters when it ends in whitespace it had to encode;
        # the email package's (slower) encoder keeps every line within RFC 2045's 76
        body = quoprimime.body_encode(data.decode("latin-1")).encode("ascii")
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
    head += "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    return head.encode("ascii") + body.replace(b"\n", b"\r\n")


def _header(name: str, value: str) -> str:
    """One header field with its CRLF, folded at spaces. Anything not printable ASCII by now is
    made so (controls become spaces, the rest encoded words): no CR or LF reaches the wire."""
    if not _PLAIN.fullmatch(value):
        value = CONTROL.sub(" ", value)
        if not value.isascii():
            value = _words(value)
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line + "\r\n"
    # fold before a space (unfolding gives back exactly the value), never before the first
    # word; a word longer than a line stays whole, the values above keep within RFC 5322's 998
    words = value.split(" ")
    lines = []
    current = f"{name}: {words[0]}"
    for word in words[1:]:
        if word and len(current) + 1 + len(word) > _FOLD_AT:
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def _encoded(value: str) -> str:
    """Free text for a header: as it is when plain ASCII, else encoded words. Text that only
    looks like an encoded word ("=?...?=") is encoded too, so the reader sees what was written."""
    if _PLAIN.fullmatch(value) and "=?" not in value:
        return value
    return _words(value)


def _words(value: str, whole: bool = False) -> str:
    """``value`` as RFC 2047 encoded words in UTF-8, "Q" or "B" whichever is shorter; each word
    holds whole characters and fits a line of its own. ``whole``: a single word, however long."""
    data = value.encode("utf-8")
    q = data.decode("latin-1").translate(_Q)
    size = len(q) if whole else _WORD_CHARS
    words = []
    if len(q) <= len(data) * 4 // 3 + 4:
        start = 0
        while start < len(q):
            end = start + size
            if end < len(q):
                # back off out of an "=XX" and off a UTF-8 continuation byte (=80 to =BF)
                while q[end - 1] == "=" or q[end - 2] == "=" or q[end : end + 2] in _TRAILING:
                    end -= 1
            words.append(f"=?utf-8?q?{q[start:end]}?=")
            start = end
    else:
        size = len(data) if whole else _WORD_CHARS // 4 * 3
        start = 0
        while start < len(data):
            end = start + size
            while end < len(data) and data[end] & 0xC0 == 0x80:
                end -= 1
            chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
            words.append(f"=?utf-8?b?{chunk}?=")
            start = end
    return " ".join(words)


def _address(name: str, address: str) -> str:
    if CONTROL.search(address) or "@" not in address or _UNSAFE_IN_ADDRESS.search(address):
        raise ValueError(f"refusing to put an unsafe address in a header: {address!r}")
    if not name:
        return address
    if _PLAIN.fullmatch(name) and "=?" not in name:
        return formataddr((name, address))  # quotes and escapes the name where it must
    if not address.isascii():
        raise ValueError(f"refusing to put an unsafe address in a header: {address!r}")
    # one word: decoders differ on the space between words in a name (CPython keeps it, where
    # RFC 2047 drops it), and a desk's name rarely makes that word longer than a line
    return f"{_words(name, whole=True)} <{address}>"


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one attempt: ``sent``, ``retry`` or ``failed``, with the server's words."""

    outcome: str
    detail: str = ""
    reached: bool = True  # False: the server could not be reached at all (an outage)
    code: int = 0  # the SMTP reply code, when the server gave one
    # refused at RCPT TO with a 5xx: the address itself will not take mail (not the content)
    address_refused: bool = False


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min ... capped at 2 h, with ±20 % jitter so retries don't synchronise."""
    base = min(30 * 2 ** max(attempts - 1, 0), 7200)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    return settings.ssl_context if settings.ssl_context is not None else None


def server_name(settings: SmtpSettings) -> str:
    """How the desk names its SMTP server in what it remembers about it."""
    return f"{settings.host}:{settings.port}"


def no_smtputf8(settings: SmtpSettings, address: str) -> str:
    """The reason mail to a non-ASCII ``address`` cannot go out through this server."""
    return (
        f"the address {address} is not ASCII, and the SMTP server {server_name(settings)} does "
        "not announce SMTPUTF8 (RFC 6531), which mail to it needs"
    )


class Sender:
    """One reusable SMTP connection (reconnects when the server drops it).

    ``smtputf8``: whether the server announced SMTPUTF8 at the last connection (None: not
    connected yet); ``deliver_rows`` keeps that in the database for ``Mailer.undeliverable``."""

    def __init__(self, settings: SmtpSettings, token: Any = None) -> None:
        self.settings = settings
        self.token = token
        self.client: aiosmtplib.SMTP | None = None
        self.smtputf8: bool | None = None
        self.noted_smtputf8: bool | None = None  # what ``record_smtputf8`` last wrote

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=True if s.security == "starttls" else False,
            validate_certs=True,
            tls_context=_tls_context(s),
            timeout=s.timeout,
        )
        await client.connect()
        try:
            if s.auth == "xoauth2" and self.token is not None:
                await client.auth_xoauth2(s.username or "", await asyncio.to_thread(self.token))
            elif s.username:
                await client.login(s.username, s.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            # a refused login is an outage to retry and alert on, never a reason to fail mail
            client.close()
            invalidate = getattr(self.token, "invalidate", None)
            if invalidate is not None:
                invalidate()  # an expired or revoked token: fetch a fresh one next time
            raise aiosmtplib.SMTPException(f"login refused: {exc.code} {exc.message}") from None
        if client.is_ehlo_or_helo_needed:  # what the server announces, before the first mail
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()  # a server without ESMTP announces nothing
        self.smtputf8 = client.supports_extension("smtputf8")
        return client

    async def send(self, mail_from: str, recipient: str, body: bytes) -> Delivery:
        try:
            if self.client is None or not self.client.is_connected:
                self.client = await self._connect()
            options = []
            if not recipient.isascii():
                if not self.smtputf8:  # permanent for this mail: no retry would change it
                    return Delivery("failed", no_smtputf8(self.settings, recipient))
                options.append("SMTPUTF8")
            errors, response = await self.client.sendmail(
                mail_from, [recipient], body, mail_options=options
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _classify(exc.recipients[0].code, exc.recipients[0].message, recipient=True)
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            return _classify(exc.code, exc.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return Delivery(
                "retry",
                f"{self.settings.host}:{self.settings.port}: {exc or type(exc).__name__}",
                reached=False,
            )
        if recipient in errors:
            code, message = errors[recipient]
            return _classify(code, message, recipient=True)
        return Delivery("sent", response)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.quit()
            except Exception:  # noqa: BLE001 - closing a broken connection
                client.close()


def _classify(code: int, message: str, *, recipient: bool = False) -> Delivery:
    """A server's reply: 5xx fails the mail, anything else retries. ``recipient``: the reply
    to RCPT TO, which is about the address (MAIL FROM and DATA are about the sender or the
    content, and a 5xx there says nothing about the address)."""
    detail = f"{code} {message}".strip()
    if 500 <= code < 600:
        return Delivery("failed", detail, code=code, address_refused=recipient)
    return Delivery("retry", detail, code=code)


def claim_due(
    db: Database, now: datetime, limit: int, holder_lease: timedelta, holder: str = ""
) -> list[Outbox]:
    """Claim up to ``limit`` due rows for this process (several daemons never share a row)."""
    with db.transaction() as session:
        query = (
            select(Outbox)
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
        rows = list(session.scalars(query))
        if rows:
            session.execute(
                update(Outbox)
                .where(Outbox.id.in_([r.id for r in rows]))
                .values(claimed_until=now + holder_lease, claimed_by=holder)
            )
        return rows


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
OnFailed = Callable[[Any, Outbox, Delivery, datetime], None]


def record(db: Database, row: Outbox, result: Delivery, now: datetime) -> None:
    """Write the outcome of one attempt."""
    record_many(db, [(row, result)], now)


def record_many(
    db: Database,
    outcomes: Sequence[tuple[Outbox, Delivery]],
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
        if result.outcome == "sent":
            log.debug("sent %s <%s> to %s", row.kind, row.message_id, row.recipient)
        elif result.outcome == "failed" or now - row.created_at > GIVE_UP_AFTER:
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
    on_failed: OnFailed, session: Any, row: Outbox, result: Delivery, now: datetime
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


def subject_of(body: bytes) -> str:
    """The subject of a mail the desk composed (``body`` as in its outbox row), decoded."""
    head = body.split(b"\r\n\r\n", 1)[0]
    message = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return clean_header(str(message.get("subject", "")))


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


def _outcome(row: Outbox, result: Delivery, now: datetime) -> dict[str, Any]:
    if not result.reached and now - row.created_at <= GIVE_UP_AFTER:
        # the server was not there at all: not this mail's failure. It stays due and goes out
        # as soon as the daemon's outage backoff finds the server back.
        return {"claimed_until": None, "last_error": result.detail}
    values: dict[str, Any] = {"attempts": row.attempts + 1, "claimed_until": None}
    if result.outcome == "sent":
        values |= {"status": OutboxStatus.SENT, "sent_at": now, "last_error": None}
    elif result.outcome == "failed" or now - row.created_at > GIVE_UP_AFTER:
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
) -> list[Delivery]:
    """Send ``rows`` over the given connections in parallel; record each outcome (``on_failed``
    is told of each mail of a ticket given up on, in the same transaction).

    A crash between the server's 250 and ``record`` resends that one mail after a restart, with
    the same Message-ID: the only duplicate window."""
    queue: asyncio.Queue[Outbox] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    results: list[Delivery] = []
    unrecorded: list[tuple[Outbox, Delivery]] = []
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
                if result.outcome == "retry" and sender.client is None:
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


class SmtpError(Exception):
    """The SMTP server could not be reached or refused the login: one line for the admin."""


async def probe(settings: SmtpSettings) -> str:
    """For ``check-config``: connect, STARTTLS/TLS as configured, log in, quit."""
    sender = Sender(settings)
    try:
        client = await sender._connect()
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpError(f"{settings.host}:{settings.port}: {exc or type(exc).__name__}") from None
    try:
        await client.quit()
    except aiosmtplib.SMTPException:
        client.close()
    utf8 = (
        "SMTPUTF8 announced"
        if sender.smtputf8
        else "no SMTPUTF8: mail to non-ASCII addresses cannot be sent"
    )
    return "connected" + (" and logged in" if settings.username else "") + f" ({utf8})"


# --------------------------------------------------------------------------- check-config's probe


@dataclass(frozen=True, slots=True)
class ProbeMail:
    """check-config's probe: one of our own mails, to the desk's plus address made from its
    Message-ID, with the VERP envelope sender every mail of the desk has."""

    message_id: str
    mail_from: str
    to: str
    body: bytes


def probe_mail(settings: Settings, now: datetime) -> ProbeMail:
    desk = settings.desk
    message_id = own_message_id(desk.secret, desk.domain)
    to = probe_address(desk.address, message_id)
    mail = Mail(kind="probe", template="", to=to, to_agent=True)
    text = (
        f"maildesk check-config sent this message to prove that mail to {to} reaches the\n"
        "desk's mailbox, as agents' replies and bounces must. It deletes it once found; if\n"
        "you see it, check-config stopped early, and the desk ignores it.\n"
    )
    body = Mailer(settings)._compose(
        mail, "maildesk check-config probe", text, None, message_id, now
    )
    return ProbeMail(message_id, bounce_address(desk.secret, desk.address, message_id), to, body)


class SmtpRefused(SmtpError):
    """The SMTP server answered the probe with an error at one stage: ``sender`` (MAIL FROM),
    ``recipient`` (RCPT TO) or ``data``; ``code`` and ``reply`` are its words."""

    def __init__(self, stage: str, code: int, reply: str) -> None:
        super().__init__(f"{code} {reply}".strip())
        self.stage = stage
        self.code = code
        self.reply = " ".join(reply.split())


async def send_probe(settings: SmtpSettings, probe: ProbeMail) -> None:
    """Send the probe as the outbox sends mail; ``SmtpRefused`` names the stage refused."""
    sender = Sender(settings)
    try:
        client = await sender._connect()
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpError(f"{settings.host}:{settings.port}: {exc or type(exc).__name__}") from None
    try:
        await client.sendmail(probe.mail_from, [probe.to], probe.body)
    except aiosmtplib.SMTPSenderRefused as exc:
        raise SmtpRefused("sender", exc.code, exc.message) from None
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0]
        raise SmtpRefused("recipient", refused.code, refused.message) from None
    except aiosmtplib.SMTPResponseException as exc:
        raise SmtpRefused("data", exc.code, exc.message) from None
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpError(f"{settings.host}:{settings.port}: {exc or type(exc).__name__}") from None
    finally:
        sender.client = client
        await sender.close()
