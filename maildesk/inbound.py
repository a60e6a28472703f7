"""Bytes to ``Inbound``: the one place that parses mail.

First stage of the flow: ``RawMail`` bytes come in from ``imap`` (or ``ingest`` on stdin), and a
frozen ``Inbound`` value goes out to ``routing``. Identity headers come from a strict stdlib
parse with ``email.policy.default``; bodies and attachments from mail-parser. ``parse`` never
raises: every problem becomes a string in ``defects``; a message that breaks a hard limit is
reported through ``fatal`` so the caller quarantines it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Structure limits applied while parsing (``[limits]`` in the config)."""

    max_message_bytes: int = 50 * 1024 * 1024
    max_attachment_bytes: int = 25 * 1024 * 1024
    max_mime_depth: int = 20
    max_parts: int = 500
    max_headers: int = 1000


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment (inline images included) as display-safe values.

    ``filename`` is display text only (no path separators, controls, bidi or leading dots, at most
    255 bytes); blobs are stored under generated names by ``store``. ``dropped`` attachments were
    over ``max_attachment_bytes``: their ``payload`` is empty but ``size`` is the real size.
    """

    filename: str
    content_type: str
    payload: bytes
    size: int
    sha256: str
    inline: bool = False
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class ReportRecipient:
    """One recipient block of a delivery status notification (RFC 3464)."""

    address: str  # Final-Recipient (or Original-Recipient), bare lower-case
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # e.g. "5.1.1"


@dataclass(frozen=True, slots=True)
class Report:
    """A machine report found in the message: DSN, MDN or feedback report (RFC 6522)."""

    report_type: str  # delivery-status | disposition-notification | feedback-report | heuristic
    recipients: tuple[ReportRecipient, ...] = ()
    original_message_id: str | None = None  # Message-ID of the returned message, no brackets
    original_envelope_to: tuple[str, ...] = ()  # To: of a VERP address seen in the report


@dataclass(frozen=True, slots=True)
class Inbound:
    """Everything later stages need to know about one message, decided once.

    Addresses are bare lower-case addr-specs. Message-IDs are stored without angle brackets.
    Strings are cleaned: no CR/LF/NUL/controls in single-line values, NFC normalised.
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    sender: str | None  # From: addr-spec when it is exactly one unambiguous mailbox, else None
    sender_name: str
    from_raw: str  # the From header as text (for display and the record)
    to: tuple[str, ...]
    cc: tuple[str, ...]
    delivered_to: tuple[str, ...]  # Delivered-To and X-Original-To, in order
    reply_to: tuple[str, ...]
    return_path: str | None  # None: header absent; "": null reverse-path "<>"
    date: str | None
    headers: tuple[tuple[str, str], ...]  # (lower-case name, cleaned value), top first
    text: str  # the body as readable text (HTML-only mail converted)
    reply_text: str  # ``text`` with quoted history and signatures of replies stripped
    html: str | None  # the raw HTML alternative, never echoed as HTML
    attachments: tuple[Attachment, ...]
    report: Report | None
    defects: tuple[str, ...]
    size: int
    fatal: str | None = None  # set when the message breaks a hard limit: quarantine it
    content_type: str = "text/plain"

    def header(self, name: str) -> tuple[str, ...]:
        """All values of header ``name`` (case-insensitive), top first."""
        key = name.lower()
        return tuple(value for hname, value in self.headers if hname == key)

    def first(self, name: str) -> str | None:
        values = self.header(name)
        return values[0] if values else None


def parse(raw: bytes, limits: Limits | None = None) -> Inbound:
    """Parse ``raw`` into an ``Inbound``; never raises."""
    raise NotImplementedError
