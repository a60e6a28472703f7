"""Talk SMTP: connect with TLS or STARTTLS, log in (password or XOAUTH2), send one mail, and
say whether it was sent, is to be retried or failed.

Below the outbox: ``outbox.deliver_rows`` hands each due row's envelope and bytes to a
``Sender`` (one reusable connection) and records the ``SendResult`` it gets back: 2xx sent, 4xx
and connection trouble retry, 5xx failed (``address_refused`` when RCPT TO was refused).
Certificates are verified and STARTTLS is never skipped. Also here: check-config's SMTP checks
(a login, and the probe sent as every mail is). The only module that imports aiosmtplib.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiosmtplib

from maildesk.config import SmtpSettings
from maildesk.mail.compose import ProbeMail


class DeliveryOutcome(StrEnum):
    """What became of one attempt to send a mail (the metrics' and the log's words)."""

    SENT = "sent"
    RETRY = "retry"  # a 4xx, or the server could not be reached
    FAILED = "failed"  # a 5xx, or a mail this server can never take


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one attempt: ``sent``, ``retry`` or ``failed``, with the server's words."""

    outcome: DeliveryOutcome
    detail: str = ""
    reached: bool = True  # False: the server could not be reached at all (an outage)
    code: int = 0  # the SMTP reply code, when the server gave one
    # refused at RCPT TO with a 5xx: the address itself will not take mail (not the content)
    address_refused: bool = False


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
    connected yet); the outbox keeps that in the database, to fail mail to a non-ASCII address
    at once when the server cannot take it."""

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

    async def send(self, mail_from: str, recipient: str, body: bytes) -> SendResult:
        try:
            if self.client is None or not self.client.is_connected:
                self.client = await self._connect()
            options = []
            if not recipient.isascii():
                if not self.smtputf8:  # permanent for this mail: no retry would change it
                    return SendResult(DeliveryOutcome.FAILED, no_smtputf8(self.settings, recipient))
                options.append("SMTPUTF8")
            elif self.smtputf8 and not body.isascii():
                options.append("SMTPUTF8")  # a copy whose Cc names a non-ASCII address
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
            return SendResult(
                DeliveryOutcome.RETRY,
                f"{self.settings.host}:{self.settings.port}: {exc or type(exc).__name__}",
                reached=False,
            )
        if recipient in errors:
            code, message = errors[recipient]
            return _classify(code, message, recipient=True)
        return SendResult(DeliveryOutcome.SENT, response)

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.quit()
            except Exception:  # noqa: BLE001 - closing a broken connection
                client.close()


def _classify(code: int, message: str, *, recipient: bool = False) -> SendResult:
    """A server's reply: 5xx fails the mail, anything else retries. ``recipient``: the reply
    to RCPT TO, which is about the address (MAIL FROM and DATA are about the sender or the
    content, and a 5xx there says nothing about the address)."""
    detail = f"{code} {message}".strip()
    if 500 <= code < 600:
        return SendResult(DeliveryOutcome.FAILED, detail, code=code, address_refused=recipient)
    return SendResult(DeliveryOutcome.RETRY, detail, code=code)


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
