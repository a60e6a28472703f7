"""Bytes to ``Inbound``: the one place that parses mail, calling the parsing concerns in order.

The first stage of the flow: ``FetchedMail`` bytes come in from ``imap`` (or ``ingest`` on stdin),
and a frozen ``Inbound`` value goes out to ``routing``; the daemon runs this in a parse worker
(``parsing``). The steps are the modules of ``maildesk.mail.parse``: ``limits`` cuts the header
block and bounds the tree's shape on the bytes, before any recursive parser sees them;
``identity`` reads the headers from a strict stdlib parse with ``email.policy.default``;
``mime`` has mail-parser build the tree and walks it once, iteratively (TNEF unpacked, attached
messages kept whole, delivery reports read by ``dsn``); ``dsn`` looks for a bounce without a
report; ``html`` makes the readable text and the reply; ``forward`` finds a forwarded message
in that text, and a message attached whole is parsed here as one (``Inbound.forwarded``).
``parse`` never raises: every problem
becomes a string in ``defects``; a message that breaks a hard limit is reported through
``fatal`` so the caller quarantines it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from maildesk.mail.parse import filters
from maildesk.mail.parse.dsn import Report, ReportRecipient, heuristic_report
from maildesk.mail.parse.forward import Forwarded, inline_forward, original_subject
from maildesk.mail.parse.html import body_texts
from maildesk.mail.parse.identity import SenderHeaders, read_identity
from maildesk.mail.parse.limits import Limits, header_block, shape_limits
from maildesk.mail.parse.mime import Body, mime_tree, walk
from maildesk.mail.parse.parts import ParsedAttachment
from maildesk.mail.parse.text import Defects

# what a caller needs of a parse: the entry, its value and the values it carries
__all__ = [
    "Forwarded",
    "Inbound",
    "ParsedAttachment",
    "Limits",
    "Report",
    "ReportRecipient",
    "parse",
    "payloads",
    "with_payloads",
    "without_payloads",
]


@dataclass(frozen=True, slots=True)
class Inbound:
    """Everything later stages need to know about one message, decided once.

    Addresses are bare addr-specs in lower case (a UTF-8 local part is kept as written, RFC
    6532). Message-IDs are stored without angle brackets.
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
    # the HTML alternative as it came, never echoed as HTML: its first ``html.MAX_HTML``
    # characters, what is converted (the raw mail keeps it whole; nothing bigger need cross to
    # the daemon)
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    report: Report | None
    defects: tuple[str, ...]
    size: int
    fatal: str | None = None  # set when the message breaks a hard limit: quarantine it
    content_type: str = "text/plain"
    # From's first addr-spec even when ambiguous: for display and for telling the registered
    # owner of that address about the message; never a proof of who sent it (that is ``sender``)
    claimed_sender: str | None = None
    # who a new ticket answers: the first usable mailbox of From, else Sender, else Reply-To
    requester: str | None = None
    # Authentication-Results values exactly as they arrived (unfolded, never decoded), top first
    authentication_results: tuple[str, ...] = ()
    # the message this one forwards, inline or attached whole (``forward.Forwarded``); None for
    # a reply, a report, or a mail that forwards nothing
    forwarded: Forwarded | None = None
    # Received: and the spam verdict headers as they arrived (unfolded, never decoded), top
    # first: the topmost ``identity.TRACE_HEADERS`` of them
    trace: tuple[tuple[str, str], ...] = ()
    # the names of the desk's filters (its rules) the message matches, and of those given up
    # for time, which do not match (``filtered``)
    matched: tuple[str, ...] = ()
    slow: tuple[str, ...] = ()

    def header(self, name: str) -> tuple[str, ...]:
        """All values of header ``name`` (case-insensitive), top first."""
        key = name.lower()
        return tuple(value for hname, value in self.headers if hname == key)

    def first(self, name: str) -> str | None:
        values = self.header(name)
        return values[0] if values else None


log = logging.getLogger("maildesk.inbound")  # the logs name the job, not the module path

_DEFAULT_LIMITS = Limits()


def parse(
    raw: bytes,
    limits: Limits | None = None,
    *,
    identified: Callable[[Inbound], None] | None = None,
) -> Inbound:
    """Parse ``raw`` into an ``Inbound``; never raises.

    Problems become strings in ``defects``; a broken hard limit sets ``fatal`` (the caller
    quarantines) while the identity headers that could be read are still filled in.
    ``identified``, when given, gets an ``Inbound`` of the identity headers alone (no body)
    before the body is read: who sent what, for the record, should the body never finish.
    """
    defects = Defects()
    try:
        data = bytes(raw)
    except Exception:  # anything that is not bytes-like is no message at all
        data = b""
        defects.add("input is not bytes")
    limits = limits or _DEFAULT_LIMITS
    try:
        return _parse(data, limits, defects, identified)
    except Exception as exc:  # the promise is: never raise; record and let the caller decide
        log.exception("unexpected error while parsing a message of %d bytes", len(data))
        defects.add(f"parser error: {type(exc).__name__}")
        fatal = f"unparseable ({type(exc).__name__})"
        return _inbound(SenderHeaders(), Body(), data, limits, defects, fatal)


def _parse(
    raw: bytes,
    limits: Limits,
    defects: Defects,
    identified: Callable[[Inbound], None] | None = None,
    *,
    forwards: bool = True,
) -> Inbound:
    block, fatal = header_block(raw, limits, defects)
    identity = read_identity(block, defects)
    if identified is not None:
        identified(_inbound(identity, Body(), raw, limits, Defects(), None))
    body = Body()
    if fatal is None and len(raw) > limits.max_message_bytes:
        fatal = f"message is {len(raw)} bytes, over the limit of {limits.max_message_bytes}"
    if fatal is None:
        fatal = shape_limits(raw, limits)
    if fatal is None:
        tree = mime_tree(raw, defects)
        if tree is not None:
            fatal = walk(tree, limits, body, defects)
        del tree  # the tree is done with: an attached message is parsed again from its bytes
    if fatal is None and body.report is None:
        try:
            body.report = heuristic_report(identity, body.plain, body.html, body.returned)
        except Exception as exc:  # a guess that fails is no reason to lose the message
            defects.add(f"bounce detection failed ({type(exc).__name__})")
    body.returned.clear()
    result = _inbound(identity, body, raw, limits, defects, fatal)
    if not forwards or fatal is not None or result.report is not None:
        return result
    forwarded = _forwarded(result, limits, defects)
    return dataclasses.replace(result, forwarded=forwarded, defects=defects.items())


def _forwarded(message: Inbound, limits: Limits, defects: Defects) -> Forwarded | None:
    """The message ``message`` forwards: written into its text, else the one message attached
    to it whole, parsed from its bytes with the same limits (a forward inside it stays text)."""
    try:
        found = inline_forward(message.text, message.subject, message.attachments)
    except Exception as exc:  # a forward not found is no reason to lose the message
        defects.add(f"forward detection failed ({type(exc).__name__})")
        return None
    if found is not None:
        return found
    attached = [a for a in message.attachments if a.content_type == "message/rfc822"]
    if len(attached) != 1:
        return None
    if attached[0].dropped:
        defects.add("the attached message is over max_attachment_bytes: not read as a forward")
        return None
    try:
        inner = _parse(attached[0].payload, limits, Defects(), forwards=False)
    except Exception as exc:
        defects.add(f"the attached message could not be read ({type(exc).__name__})")
        return None
    if inner.fatal is not None:
        defects.add(f"the attached message could not be read as a forward: {inner.fatal}")
        return None
    return Forwarded(
        sender=inner.sender or inner.claimed_sender,
        sender_name=inner.sender_name,
        subject=original_subject(inner.subject) or original_subject(message.subject),
        date=inner.date,
        text=inner.text,
        note=message.text.strip("\n"),
        attachments=inner.attachments,
        attached=True,
    )


def _inbound(
    identity: SenderHeaders,
    body: Body,
    raw: bytes,
    limits: Limits,
    defects: Defects,
    fatal: str | None,
) -> Inbound:
    try:
        text, html, reply = body_texts(body.plain, body.html, limits, defects)
    except Exception as exc:
        defects.add(f"the body could not be converted to text ({type(exc).__name__})")
        text, html, reply = "", None, ""
    return Inbound(
        message_id=identity.message_id,
        in_reply_to=identity.in_reply_to,
        references=identity.references,
        subject=identity.subject,
        sender=identity.sender,
        sender_name=identity.sender_name,
        from_raw=identity.from_raw,
        to=identity.to,
        cc=identity.cc,
        delivered_to=identity.delivered_to,
        reply_to=identity.reply_to,
        return_path=identity.return_path,
        date=identity.date,
        headers=identity.headers,
        text=text,
        reply_text=reply,
        html=html,
        attachments=tuple(body.attachments),
        report=body.report,
        defects=defects.items(),
        size=len(raw),
        fatal=fatal,
        content_type=body.content_type or identity.content_type,
        claimed_sender=identity.claimed_sender,
        requester=identity.requester,
        authentication_results=identity.authentication_results,
        trace=identity.trace,
    )


def filtered(message: Inbound, sought: tuple[filters.Filter, ...], seconds: float) -> Inbound:
    """``message`` with the filters it matches (``filters.search``), looked for within
    ``seconds``; a message over a hard limit is not looked at."""
    if not sought or message.fatal:
        return message
    recipients = (*message.to, *message.cc, *message.delivered_to)
    found_in = filters.fields(message.from_raw, recipients, message.subject, message.text)
    found = filters.search(sought, found_in, seconds)
    return dataclasses.replace(message, matched=found.matched, slow=found.slow)


# An ``Inbound`` crosses from the parse worker to the daemon as a pickle without the bytes of
# its files, which follow it one frame each (``zygote``, ``workers``): these three keep the order.


def payloads(message: Inbound) -> list[bytes]:
    """The bytes of every file ``message`` carries: its attachments, then those of a message
    it forwards attached (an inline forward's files are the message's own)."""
    found = [a.payload for a in message.attachments]
    if message.forwarded is not None and message.forwarded.attached:
        found += [a.payload for a in message.forwarded.attachments]
    return found


def without_payloads(message: Inbound) -> Inbound:
    """``message`` with every file's bytes left out (``payloads`` has them)."""
    return with_payloads(message, [b""] * len(payloads(message)))


def with_payloads(message: Inbound, data: list[bytes]) -> Inbound:
    """``message`` with the files' bytes put back, in ``payloads`` order."""
    count = len(message.attachments)
    own = tuple(
        dataclasses.replace(a, payload=p)
        for a, p in zip(message.attachments, data[:count], strict=True)
    )
    forwarded = message.forwarded
    if forwarded is not None and forwarded.attached:
        inner = tuple(
            dataclasses.replace(a, payload=p)
            for a, p in zip(forwarded.attachments, data[count:], strict=True)
        )
        forwarded = dataclasses.replace(forwarded, attachments=inner)
    elif forwarded is not None:
        forwarded = dataclasses.replace(forwarded, attachments=own)
    return dataclasses.replace(message, attachments=own, forwarded=forwarded)
