"""Bytes to ``Inbound``: the one place that parses mail.

First stage of the flow: ``RawMail`` bytes come in from ``imap`` (or ``ingest`` on stdin), and a
frozen ``Inbound`` value goes out to ``routing``. Identity headers come from a strict stdlib
parse with ``email.policy.default`` of the header block; bodies and attachments from the MIME
tree mail-parser builds, walked once and iteratively (TNEF unpacked, attached messages kept
whole, delivery reports read). Structure limits are checked on the bytes before any recursive
parser sees them. ``parse`` never raises: every problem becomes a string in ``defects``; a
message that breaks a hard limit is reported through ``fatal`` so the caller quarantines it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.policy
import email.utils
import hashlib
import logging
import mimetypes
import re
import struct
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from html.parser import HTMLParser
from io import BytesIO

import html2text
import mailparser
import tnefparse
import tnefparse.codepage
import tnefparse.mapi
import tnefparse.properties


@dataclass(frozen=True, slots=True)
class Limits:
    """Structure limits applied while parsing (``[limits]`` in the config)."""

    max_message_bytes: int = 50 * 1024 * 1024
    max_attachment_bytes: int = 25 * 1024 * 1024
    max_mime_depth: int = 20
    max_parts: int = 500
    max_headers: int = 1000
    max_header_bytes: int = 256 * 1024
    max_nested_messages: int = 3
    max_text_chars: int = 200_000  # a body's text is cut here, with a line saying so


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
    # the receiving server's words: Diagnostic-Code without its type ("550 5.1.1 ... User
    # unknown"), or the line of a bounce without a report that holds the status; one line
    diagnostic: str = ""


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
    # the HTML alternative as it came, never echoed as HTML: its first ``_MAX_HTML`` characters,
    # what is converted (the raw mail keeps it whole; nothing bigger need cross to the daemon)
    html: str | None
    attachments: tuple[Attachment, ...]
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

    def header(self, name: str) -> tuple[str, ...]:
        """All values of header ``name`` (case-insensitive), top first."""
        key = name.lower()
        return tuple(value for hname, value in self.headers if hname == key)

    def first(self, name: str) -> str | None:
        values = self.header(name)
        return values[0] if values else None


log = logging.getLogger("maildesk.inbound")  # the logs name the job, not the module path

_DEFAULT_LIMITS = Limits()
_MAX_HTML = 512 * 1024  # html2text is pure Python (about 1.4 s per MB here): bound its work
_MAX_STRUCTURED = 64 * 1024  # address headers longer than this are not read at all
_STRICT_BYTES = 4096  # the strict address parser is quadratic (gh-136063): bound each header
_STRICT_BUDGET = 16 * 1024  # ... and all of a message's address headers together
_MAX_DISPLAY = 16 * 1024  # header values are cut here: decode_header is quadratic too
_MAX_IDS = 500
_MAX_DEFECTS = 100
_NAME_BYTES = 255
_SUBJECT_CHARS = 998
_POLICY = email.policy.default
_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: same answer on every machine
# mail-parser warns through logging about every part type it does not show (delivery reports...);
# those parts are ours to read, so its chatter is noise in the daemon's log.
logging.getLogger("mailparser").setLevel(logging.ERROR)
# tnefparse logs a line per property it cannot read (a hostile winmail.dat has billions): what
# matters is recorded as the message's defects instead.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL + 1)


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
    defects = _Defects()
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
        return _inbound(_Identity(), _Body(), data, limits, defects, fatal)


class _Defects:
    """Defect strings, each once, in the order found (bounded: hostile mail has thousands)."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, text: str) -> None:
        if len(self._items) < _MAX_DEFECTS:
            self._items[_clean_line(text, 300)] = None

    def items(self) -> tuple[str, ...]:
        return tuple(self._items)


def _parse(
    raw: bytes,
    limits: Limits,
    defects: _Defects,
    identified: Callable[[Inbound], None] | None = None,
) -> Inbound:
    header_block, fatal = _header_block(raw, limits, defects)
    identity = _identity(header_block, defects)
    if identified is not None:
        identified(_inbound(identity, _Body(), raw, limits, _Defects(), None))
    body = _Body()
    if fatal is None and len(raw) > limits.max_message_bytes:
        fatal = f"message is {len(raw)} bytes, over the limit of {limits.max_message_bytes}"
    if fatal is None:
        fatal = _shape_limits(raw, limits)
    if fatal is None:
        tree = _mime_tree(raw, defects)
        if tree is not None:
            fatal = _walk(tree, limits, body, defects)
    if fatal is None and body.report is None:
        try:
            body.report = _heuristic_report(identity, body)
        except Exception as exc:  # a guess that fails is no reason to lose the message
            defects.add(f"bounce detection failed ({type(exc).__name__})")
    return _inbound(identity, body, raw, limits, defects, fatal)


def _inbound(
    identity: _Identity,
    body: _Body,
    raw: bytes,
    limits: Limits,
    defects: _Defects,
    fatal: str | None,
) -> Inbound:
    try:
        text, html, reply = _texts(body, limits, defects)
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
    )


# --------------------------------------------------------------------------------------------
# Limits, checked on the bytes before any recursive parser sees them
# --------------------------------------------------------------------------------------------

_HEADER_END = re.compile(rb"\r?\n\r?\n|\r\r")


def _header_block(raw: bytes, limits: Limits, defects: _Defects) -> tuple[bytes, str | None]:
    """The top-level header block, cut down to the limits; and the fatal reason if it was."""
    end = _HEADER_END.search(raw, 0, limits.max_header_bytes + 4)
    block = raw[: end.end()] if end else raw[: limits.max_header_bytes]
    fatal = None
    if end is None and len(raw) > limits.max_header_bytes:
        fatal = f"header block over {limits.max_header_bytes} bytes"
    fields = 0
    cut = len(block)
    pos = 0
    for line in block.splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t", b"\r", b"\n"):
            fields += 1
            if fields > limits.max_headers:
                cut = pos
                fatal = fatal or f"more than {limits.max_headers} header fields"
                break
        pos += len(line)
    if cut < len(block):
        block = block[:cut] + b"\r\n"
    elif fatal is not None:
        # cut inside a long field: keep only whole lines, the partial one is lost
        last = max(block.rfind(b"\n"), 0)
        block = block[:last] + b"\r\n\r\n"
    if fatal:
        defects.add(fatal)
    return block, fatal


_MESSAGE_HINT = re.compile(rb"message/(?:rfc822|global)\b", re.IGNORECASE)


def _count_folded(raw: bytes, needles: tuple[bytes, ...], chunk: int = 1 << 20) -> list[int]:
    """How often each needle occurs in ``raw``, ignoring ASCII case. Counted in C over lowered
    slices: ten times faster than a case-blind regex, and never a lowered copy of a whole
    25 MB message."""
    counts = [0] * len(needles)
    overlap = max(len(n) for n in needles) - 1
    for start in range(0, len(raw), chunk):
        piece = raw[start : start + chunk + overlap].lower()
        for index, needle in enumerate(needles):
            # only matches that start inside this chunk; the overlap belongs to the next one
            counts[index] += piece.count(needle, 0, chunk + len(needle) - 1)
    return counts


def _shape_limits(raw: bytes, limits: Limits) -> str | None:
    """Reject trees too deep or too wide before the recursive stdlib parser sees them."""
    hinted, boundaries = _count_folded(raw, (b"message/", b"boundary"))
    depth_bound = 1 + boundaries + hinted
    nested_bound = sum(1 for _ in _MESSAGE_HINT.finditer(raw)) if hinted else 0
    parts_bound = 1 + raw.count(b"\n--") + depth_bound
    if (
        depth_bound <= limits.max_mime_depth
        and nested_bound <= limits.max_nested_messages
        and parts_bound <= limits.max_parts
    ):
        return None
    return _MimeScan(limits).run(raw)


_CT_FIELD = re.compile(rb"content-type[ \t]*:(.*)", re.IGNORECASE | re.DOTALL)
_CT_TYPE = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+)", re.IGNORECASE)
_CT_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))""", re.IGNORECASE)


class _MimeScan:
    """An iterative, line-based sketch of the MIME tree: depth, part count, nesting of messages.

    It follows the stdlib feed parser closely enough to bound what that (recursive) parser will
    build, in one pass and constant stack.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parts = 1
        self.depth = 1
        self.level = 0
        self.stack: list[tuple[bytes, int, int]] = []  # boundary, depth of children, level
        self.content_type: bytes | None = None
        self.in_headers = True
        self.in_type_field = False

    def run(self, raw: bytes) -> str | None:
        for line in raw.splitlines():
            reason = self._headers(line) if self.in_headers else self._body(line)
            if reason:
                return reason
        return None

    def _headers(self, line: bytes) -> str | None:
        if line.strip():
            if line[:1] in (b" ", b"\t"):
                if self.in_type_field and self.content_type is not None:
                    self.content_type += b" " + line.strip()
                return None
            match = _CT_FIELD.match(line)
            self.in_type_field = match is not None
            if match:
                self.content_type = match.group(1).strip()
            return None
        self.in_headers = False
        value = self.content_type or b""
        self.content_type, self.in_type_field = None, False
        ctype_match = _CT_TYPE.match(value)
        ctype = ctype_match.group(1).lower() if ctype_match else b"text/plain"
        boundary = _CT_BOUNDARY.search(value)
        if ctype.startswith(b"multipart/") and boundary:
            self.stack.append((boundary.group(1) or boundary.group(2), self.depth + 1, self.level))
        elif ctype.startswith(b"message/") and ctype != b"message/delivery-status":
            self.depth += 1
            self.parts += 1
            if ctype in (b"message/rfc822", b"message/global"):
                self.level += 1
            self.in_headers = True
            return self._check()
        return None

    def _body(self, line: bytes) -> str | None:
        if not line.startswith(b"--"):
            return None
        mark = line.rstrip(b" \t")
        for index in range(len(self.stack) - 1, -1, -1):
            boundary, depth, level = self.stack[index]
            if mark == b"--" + boundary:
                del self.stack[index + 1 :]
                self.depth, self.level = depth, level
                self.parts += 1
                self.in_headers = True
                return self._check()
            if mark == b"--" + boundary + b"--":
                del self.stack[index:]
                return None
        return None

    def _check(self) -> str | None:
        return _limit_reason(self.limits, self.depth, self.parts, self.level)


def _limit_reason(limits: Limits, depth: int, parts: int, level: int) -> str | None:
    if depth > limits.max_mime_depth:
        return f"MIME nesting deeper than {limits.max_mime_depth} levels"
    if parts > limits.max_parts:
        return f"more than {limits.max_parts} MIME parts"
    if level > limits.max_nested_messages:
        return f"messages nested deeper than {limits.max_nested_messages} levels"
    return None


# --------------------------------------------------------------------------------------------
# Identity: the top-level headers, from a strict parse with email.policy.default
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Identity:
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str = ""
    sender: str | None = None
    sender_name: str = ""
    from_raw: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    delivered_to: tuple[str, ...] = ()
    reply_to: tuple[str, ...] = ()
    return_path: str | None = None
    date: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain"
    claimed_sender: str | None = None
    requester: str | None = None
    authentication_results: tuple[str, ...] = ()


# a strict parse of one address header: [(display name, bare addr-spec)] and its defects
_Parsed = tuple[list[tuple[str, str]], list[str]]
_ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"}
)
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_ADDR_IN_NAME = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+")
_MSG_ID = re.compile(r"<([^<>\s]{1,998})>")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def _identity(block: bytes, defects: _Defects) -> _Identity:
    try:
        message = BytesHeaderParser(policy=_POLICY).parsebytes(block)
        items = list(message.raw_items())
    except Exception as exc:  # the header parser is not expected to fail; keep going if it does
        defects.add(f"headers could not be parsed ({type(exc).__name__})")
        return _Identity()
    for defect in message.defects:
        defects.add(f"headers: {type(defect).__name__}")
    values: dict[str, list[str]] = {}
    headers: list[tuple[str, str]] = []
    for name, value in items:
        key = _clean_line(str(name)).lower()
        text = _header_value(key, value, defects)
        values.setdefault(key, []).append(text)
        headers.append((key, _display_value(key, text, defects)))
    return _from_values(values, tuple(headers), defects)


def _header_value(name: str, value: object, defects: _Defects) -> str:
    """The unfolded header value as text; raw 8-bit bytes re-decoded (UTF-8, else cp1252)."""
    text = value if isinstance(value, str) else str(value)
    if _has_surrogates(text):
        data = text.encode("ascii", "surrogateescape")
        text = _decode_bytes(data, "utf-8", f"{name} header", defects, quiet=True)
        defects.add(f"raw 8-bit bytes in the {name} header")
    return _FOLD.sub("", text)


def _display_value(name: str, value: str, defects: _Defects) -> str:
    """A header value as cleaned display text: encoded words decoded, one line."""
    if len(value) > _MAX_DISPLAY:  # decode_header is quadratic in the number of words
        defects.add(f"{name} header over {_MAX_DISPLAY} characters: cut")
        value = value[:_MAX_DISPLAY]
    return _clean_line(_decoded(value, defects))


def _from_values(
    values: dict[str, list[str]], headers: tuple[tuple[str, str], ...], defects: _Defects
) -> _Identity:
    strict = _StrictAddresses(defects)
    froms = values.get("from", [])
    parsed_from = strict.parse("from", froms[0]) if froms else None
    sender, sender_name, from_raw = _sender(froms, parsed_from, defects)
    claimed = sender or _claimed(froms, parsed_from)
    requester = _requester(froms[0] if froms else "", parsed_from) or _fallback_requester(
        values, strict
    )
    message_ids = [i for v in values.get("message-id", []) for i in _msg_ids(v)[:1]]
    if not message_ids:
        defects.add("no Message-ID")
    elif len(values.get("message-id", [])) > 1:
        defects.add("several Message-ID headers")
    subjects = [value for name, value in headers if name == "subject"]
    if len(subjects) > 1:
        defects.add("several Subject headers")
    subject = subjects[0] if subjects else ""
    if _BIDI.search(subject):
        defects.add("bidirectional control characters in the subject")
    dates = values.get("date", [])
    return _Identity(
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=_id_list(values.get("in-reply-to", [])),
        references=_id_list(values.get("references", [])),
        subject=subject[:_SUBJECT_CHARS],
        sender=sender,
        sender_name=sender_name,
        from_raw=from_raw,
        to=_address_list("to", values.get("to", []), strict),
        cc=_address_list("cc", values.get("cc", []), strict),
        delivered_to=_delivered_to(headers),
        reply_to=_address_list("reply-to", values.get("reply-to", []), strict),
        return_path=_return_path(values.get("return-path", [])),
        date=_clean_line(dates[0]) if dates else None,
        headers=headers,
        content_type=_content_type_of(values.get("content-type", [])),
        claimed_sender=claimed,
        requester=requester,
        # as they arrived: a verdict is read from these, never from the decoded display values
        authentication_results=tuple(values.get("authentication-results", [])),
    )


def _sender(
    values: list[str], parsed: _Parsed | None, defects: _Defects
) -> tuple[str | None, str, str]:
    """(addr-spec or None, display name, raw text) of From; None unless it is unambiguous.

    ``parsed`` is the strict parse of the first From header (None: it could not be read)."""
    if not values:
        defects.add("no From header")
        return None, "", ""
    from_raw = _display_value("from", values[0], defects)
    if len(values) > 1:
        defects.add("several From headers")
        return None, "", from_raw
    if parsed is None:
        return None, "", from_raw
    mailboxes, header_defects = parsed
    if len(mailboxes) != 1:
        defects.add(f"From holds {len(mailboxes)} mailboxes")
        return None, "", from_raw
    name, addr = mailboxes[0]
    if header_defects:
        defects.add("ambiguous From: " + "; ".join(header_defects))
        return None, name, from_raw
    if _ADDR_IN_NAME.search(name) or _BIDI.search(name):
        defects.add("ambiguous From: the display name holds an address")
        return None, name, from_raw
    return addr, name, from_raw


def _claimed(values: list[str], parsed: _Parsed | None) -> str | None:
    """The first address From names, however ambiguous (never for trust)."""
    if parsed and parsed[0]:
        return parsed[0][0][1]
    found = _lenient_addresses(values[:1])
    return found[0] if found else None


# An address the desk can write to: a local part without quotes, spaces or specials (UTF-8
# allowed, RFC 6532), "@", and a domain of letters, digits and hyphens (U-labels allowed).
_USABLE = re.compile(r"[^\s\x00-\x1f\x7f()<>\[\]:;@\\,\"]{1,64}@[^\W_](?:[\w.-]{0,253}[^\W_])?")
_ANGLE_ADDR = re.compile(r"<\s*([^<>\s]{1,320})\s*>")
# the strict parser's note that a local part is UTF-8: allowed in RFC 6532 mail, not a flaw
_UTF8_LOCAL_PART = "NonASCIILocalPartDefect"


def _requester(value: str, parsed: _Parsed | None) -> str | None:
    """The first usable mailbox of one address header, for answering (never for trust).

    A cleanly parsed header gives its first usable addr-spec: a display name holding another
    address changes nothing, the addr-spec is the one in angle brackets. A header the strict
    parser could not read cleanly gives its first usable angle-bracketed address, else the
    first usable address the lenient parser finds."""
    if parsed is not None and not set(parsed[1]) - {_UTF8_LOCAL_PART}:
        return next((addr for _, addr in parsed[0] if _usable(addr)), None)
    candidates = [_normal_address(a) for a in _ANGLE_ADDR.findall(value[:_MAX_STRUCTURED])]
    candidates += _lenient_addresses([value])
    return next((addr for addr in candidates if _usable(addr)), None)


def _fallback_requester(values: dict[str, list[str]], strict: _StrictAddresses) -> str | None:
    """Sender:, else Reply-To:, when From names nobody the desk could answer."""
    for name in ("sender", "reply-to"):
        found = values.get(name, [])
        requester = _requester(found[0], strict.parse(name, found[0])) if found else None
        if requester:
            return requester
    return None


def _usable(addr: str) -> bool:
    local, _, domain = addr.rpartition("@")
    return (
        _USABLE.fullmatch(addr) is not None
        and len(local.encode()) <= 64
        and len(domain.encode()) <= 255
        and ".." not in domain
        and not local.startswith(".")
        and not local.endswith(".")
    )


def _normal_address(addr: str) -> str:
    """A bare addr-spec as the desk keeps it: NFC, the domain in lower case, and the local part
    too when it is ASCII. A UTF-8 local part stays as written: only its owner's server knows
    which of its case forms are the same mailbox."""
    local, at, domain = _clean_line(addr).rpartition("@")
    if not at:
        return domain.lower() if domain.isascii() else domain
    return f"{local.lower() if local.isascii() else local}@{domain.lower()}"


class _StrictAddresses:
    """The strict (``email.policy.default``) address parser, within a per-message budget."""

    def __init__(self, defects: _Defects) -> None:
        self.defects = defects
        self.left = _STRICT_BUDGET

    def parse(self, name: str, value: str) -> _Parsed | None:
        """[(display name, bare addr-spec)] and parse defects; None if unread."""
        if len(value) > min(_STRICT_BYTES, self.left):
            self.defects.add(f"{name} header too long for the strict address parser")
            return None
        self.left -= len(value)
        try:
            header = _POLICY.header_factory(name, value)
            found: list[tuple[str, str]] = []
            for address in header.addresses:
                addr = _normal_address(address.addr_spec)
                if "@" in addr and " " not in addr and not addr.startswith("@"):
                    found.append((_clean_line(address.display_name, _NAME_BYTES), addr))
            problems = [type(d).__name__ for d in header.defects]
        except Exception as exc:  # RecursionError on nested comments, AttributeError, ...
            self.defects.add(f"{name} header could not be parsed ({type(exc).__name__})")
            return None
        return found, problems


def _address_list(name: str, values: list[str], strict: _StrictAddresses) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in values:
        parsed = strict.parse(name, value)
        if parsed is None:
            found.update(dict.fromkeys(_lenient_addresses([value])))
            continue
        mailboxes, problems = parsed
        if problems:
            strict.defects.add(f"{name} header: " + ", ".join(sorted(set(problems))))
        found.update(dict.fromkeys(addr for _, addr in mailboxes))
    return tuple(found)


def _lenient_addresses(values: list[str]) -> list[str]:
    """Bare addresses by the lenient parser, for what is not a matter of trust."""
    found: list[str] = []
    for value in values:
        try:
            pairs = email.utils.getaddresses([value[:_MAX_STRUCTURED]])
        except Exception:  # it recurses on nested comments
            continue
        for _, addr in pairs:
            addr = _normal_address(addr)
            if "@" in addr and " " not in addr and not addr.startswith("@"):
                found.append(addr)
    return found


def _delivered_to(headers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for key, value in headers:
        if key in ("delivered-to", "x-original-to"):
            found.update(dict.fromkeys(_lenient_addresses([value])))
    return tuple(found)


def _return_path(values: list[str]) -> str | None:
    if not values:
        return None
    value = _clean_line(values[0])
    if value.replace(" ", "") in ("", "<>"):
        return ""
    found = _lenient_addresses([value])
    return found[0] if found else value.strip("<> ").lower()


def _msg_ids(value: str) -> list[str]:
    found = [_clean_id(m) for m in _MSG_ID.findall(value)]
    if not found:  # no angle brackets: the bare tokens that look like ids, else the first
        tokens = value.split()
        found = [_clean_id(t) for t in tokens if "@" in t] or [_clean_id(t) for t in tokens[:1]]
    return [i for i in found if i][:_MAX_IDS]


def _clean_id(token: str) -> str:
    return "".join(c for c in token.strip("<>") if c.isprintable() and not c.isspace())[:998]


def _id_list(values: list[str]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in values:
        for msg_id in _msg_ids(value):
            found[msg_id] = None
    return tuple(found)[:_MAX_IDS]


def _content_type_of(values: list[str]) -> str:
    match = _CT_TYPE.match(values[0].encode("utf-8", "replace")) if values else None
    return match.group(1).decode("ascii").lower() if match else "text/plain"


# --------------------------------------------------------------------------------------------
# The MIME tree: parsed by mail-parser, walked once, iteratively
# --------------------------------------------------------------------------------------------


class _Body:
    """What the walk finds; filled in place, then frozen into the ``Inbound``."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.report: Report | None = None
        self.returned: list[Message] = []  # headers of messages returned inside the message
        self.content_type = ""


def _mime_tree(raw: bytes, defects: _Defects) -> Message | None:
    """The parsed tree from mail-parser; the stdlib parser (compat32) when mail-parser fails.

    Large base64 bodies are lifted out of the bytes first and decoded straight from them later
    (see ``_lift_blobs``): the email package keeps every line of a body as its own string, which
    costs several times the attachment's size in memory."""
    skeleton, blobs = _lift_blobs(raw)
    tree: Message | None = None
    try:
        parsed = mailparser.parse_from_bytes(skeleton).message
        if isinstance(parsed, Message):
            tree = parsed
        else:
            defects.add("mail-parser returned no message")
    except Exception as exc:
        defects.add(f"mail-parser failed ({type(exc).__name__}); parsed with the standard library")
    if tree is None:
        try:
            tree = email.message_from_bytes(skeleton, policy=email.policy.compat32)
        except Exception as exc:
            defects.add(f"MIME structure could not be parsed ({type(exc).__name__})")
            return None
    if blobs:
        _attach_blobs(tree, blobs)
    return tree


_LIFT_MIN = 1 << 20  # bodies of at least 1 MiB of base64 are lifted out
_B64_LINE = re.compile(rb"^[A-Za-z0-9+/=]{1,998}\r?\n", re.M)
_BLOB = re.compile(r"^\s*MAILDESKBLOB(\d{1,6})\s*$")


def _lift_blobs(raw: bytes) -> tuple[bytes, list[memoryview]]:
    """``raw`` with each run of base64 lines of at least ``_LIFT_MIN`` bytes replaced by a one-line
    marker, and the runs themselves (views into ``raw``, not copies)."""
    if len(raw) < _LIFT_MIN:
        return raw, []
    runs: list[tuple[int, int]] = []
    start = end = -1
    for match in _B64_LINE.finditer(raw):
        if match.start() != end:
            if end - start >= _LIFT_MIN:
                runs.append((start, end))
            start = match.start()
        end = match.end()
    if end - start >= _LIFT_MIN:
        runs.append((start, end))
    if not runs:
        return raw, []
    view = memoryview(raw)
    pieces: list[bytes] = []
    blobs: list[memoryview] = []
    last = 0
    for index, (begin, finish) in enumerate(runs):
        pieces.append(raw[last:begin])
        pieces.append(b"MAILDESKBLOB%d\r\n" % index)
        blobs.append(view[begin:finish])
        last = finish
    pieces.append(raw[last:])
    return b"".join(pieces), blobs


def _attach_blobs(tree: Message, blobs: list[memoryview]) -> None:
    """Give each part whose body was lifted its bytes back: as a reference decoded on demand in a
    base64 leaf, as the original text anywhere else (a message kept whole, another encoding)."""
    stack: list[tuple[Message, bool]] = [(tree, False)]
    while stack:
        part, inside_message = stack.pop()
        payload = part.get_payload()
        if isinstance(payload, list):
            nested = inside_message or part.get_content_type() in _MESSAGE_PARTS
            stack.extend((child, nested) for child in payload if isinstance(child, Message))
            continue
        match = _BLOB.match(payload) if isinstance(payload, str) else None
        if match is None or int(match.group(1)) >= len(blobs):
            continue
        blob = blobs[int(match.group(1))]
        cte = str(part.get("content-transfer-encoding", "")).strip().lower()
        if cte == "base64" and not inside_message:
            part._maildesk_blob = blob  # type: ignore[attr-defined]
        else:
            part.set_payload(bytes(blob).decode("ascii"))


_REPORT_PARTS = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/global-disposition-notification",
        "message/feedback-report",
        "text/rfc822-headers",
        "text/global-headers",
    }
)
_MESSAGE_PARTS = frozenset({"message/rfc822", "message/global"})
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


_Item = tuple[Message, int, int, bool, bool]  # part, depth, message level, attached, counted only


def _walk(root: Message, limits: Limits, body: _Body, defects: _Defects) -> str | None:
    """One iterative pass: bodies, attachments, reports; returns the fatal reason, if any."""
    body.content_type = _safe(root.get_content_type, "text/plain")
    stack: list[_Item] = [(root, 1, 0, False, False)]
    parts = 0
    while stack:
        item = stack.pop()
        parts += 1
        reason = _limit_reason(limits, item[1], parts, item[2])
        if reason:
            return reason
        try:
            stack.extend(reversed(_visit(item, body, limits, defects)))
        except Exception as exc:  # one broken part must not lose the others
            defects.add(f"a MIME part could not be read ({type(exc).__name__})")
        _collect_defects(item[0], defects)
    return None


def _visit(item: _Item, body: _Body, limits: Limits, defects: _Defects) -> list[_Item]:
    """Handle one part; return its children to visit (inside messages: counted only)."""
    part, depth, level, attached, counted_only = item
    ctype = _safe(part.get_content_type, "application/octet-stream")
    children = part.get_payload() if part.is_multipart() else None
    if not isinstance(children, list):
        if not counted_only and ctype not in _REPORT_PARTS:
            _leaf(part, ctype, attached, body, limits, defects)
        return []
    if ctype.startswith("multipart/"):
        if ctype == "multipart/report" and body.report is None and not counted_only:
            body.report = _guarded_report(part, defects)
        attached = attached or _disposition(part) == "attachment"
        return [(c, depth + 1, level, attached, counted_only) for c in _parts(children)]
    if ctype in _REPORT_PARTS:
        return []
    if ctype in _MESSAGE_PARTS:
        level += 1
        if not counted_only:
            _keep_message(part, body, limits, defects)
    return [(c, depth + 1, level, True, True) for c in _parts(children)]


def _parts(children: Sequence[object]) -> list[Message]:
    return [c for c in children if isinstance(c, Message)]


def _leaf(
    part: Message, ctype: str, attached: bool, body: _Body, limits: Limits, defects: _Defects
) -> None:
    """A leaf part: body text when it is one, otherwise an attachment."""
    is_text = ctype in ("text/plain", "text/html")
    if is_text and not attached and _disposition(part) != "attachment" and not _filename(part):
        data = _payload(part, defects)
        text = _decode_bytes(data, part.get_content_charset(), f"{ctype} part", defects)
        (body.plain if ctype == "text/plain" else body.html).append(text)
        return
    if ctype in _TNEF_TYPES or _filename(part).lower() == "winmail.dat":
        body.attachments.extend(_tnef(part, limits, defects, len(body.attachments)))
        return
    body.attachments.append(_attachment(part, ctype, _payload(part, defects), limits))


def _keep_message(part: Message, body: _Body, limits: Limits, defects: _Defects) -> None:
    """An attached or returned message: kept whole as an ``.eml`` attachment."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        body.attachments.append(
            _attachment(part, "message/rfc822", _payload(part, defects), limits)
        )
        return
    body.returned.append(inner)
    data = b""
    try:
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=email.policy.compat32).flatten(inner)
        data = out.getvalue()
    except Exception as exc:
        defects.add(f"attached message could not be written out ({type(exc).__name__})")
    if not _filename(part):
        subject = _clean_line(_decoded(str(inner.get("subject", "") or "")), 200)
        stem = re.sub(r"[^\w\s.,()\[\]#&+-]", "", subject).strip() or "message"
        body.attachments.append(_attachment(part, "message/rfc822", data, limits, stem + ".eml"))
        return
    body.attachments.append(_attachment(part, "message/rfc822", data, limits))


def _collect_defects(part: Message, defects: _Defects) -> None:
    for defect in getattr(part, "defects", ()):
        defects.add(f"MIME: {type(defect).__name__}")


def _safe(getter: object, default: str) -> str:
    try:
        value = getter()  # type: ignore[operator]
        return str(value).lower() if value else default
    except Exception:
        return default


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _filename(part: Message) -> str:
    """The raw (unsafe) filename, RFC 2231 and RFC 2047 decoded; "" when there is none."""
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # an RFC 2231 value get_param could not decode
        name = email.utils.collapse_rfc2231_value(name)
    return _decoded(str(name))


def _decoded(value: str, defects: _Defects | None = None) -> str:
    """Decode RFC 2047 encoded words; unknown charsets fall back (UTF-8, cp1252), never raise."""
    if "=?" not in value:
        return value
    try:
        chunks = []
        for data, charset in decode_header(value):
            if isinstance(data, str):
                chunks.append(data)
            else:
                chunks.append(_decode_bytes(data, charset, "an encoded word", defects, quiet=True))
        return "".join(chunks)
    except Exception:
        if defects is not None:
            defects.add("malformed encoded word")
        return value


def _payload(part: Message, defects: _Defects) -> bytes:
    """The decoded bytes of a leaf part; broken base64 is salvaged and recorded."""
    try:
        if str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
            return _base64(part, defects)
        data = part.get_payload(decode=True)
    except Exception as exc:
        defects.add(f"part could not be decoded ({type(exc).__name__})")
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return b""


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _base64(part: Message, defects: _Defects) -> bytes:
    blob = getattr(part, "_maildesk_blob", None)
    if blob is not None:
        try:  # a lifted body: decoded straight from the message's bytes (line breaks skipped)
            return binascii.a2b_base64(blob)
        except (binascii.Error, ValueError):
            part.set_payload(bytes(blob).decode("ascii"))
    encoded = part.get_payload(decode=False)
    if not isinstance(encoded, str):
        return b""
    data = b"".join(encoded.encode("ascii", "surrogateescape").split())
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        pass
    clean = _NOT_BASE64.sub(b"", data)  # keep every valid character, then repair the padding
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    defects.add(f"broken base64 in {_filename(part) or part.get_content_type()}")
    return base64.b64decode(clean + b"=" * (-len(clean) % 4))


# --------------------------------------------------------------------------------------------
# Attachments: display-safe names, whole payloads, TNEF unpacked
# --------------------------------------------------------------------------------------------


def _attachment(
    part: Message, ctype: str, data: bytes, limits: Limits, fallback_name: str = ""
) -> Attachment:
    raw_name = _filename(part) or fallback_name
    disposition = _disposition(part)
    inline = disposition == "inline" or (not disposition and part.get("content-id") is not None)
    return _make_attachment(raw_name, ctype, data, limits, inline)


def _make_attachment(
    raw_name: str, ctype: str, data: bytes, limits: Limits, inline: bool = False
) -> Attachment:
    size = len(data)
    dropped = size > limits.max_attachment_bytes
    return Attachment(
        filename=safe_filename(raw_name, ctype),
        content_type=_clean_line(ctype, 255).lower() or "application/octet-stream",
        payload=b"" if dropped else data,
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        inline=inline,
        dropped=dropped,
    )


def _tnef(part: Message, limits: Limits, defects: _Defects, count: int) -> list[Attachment]:
    """The files inside an Outlook ``winmail.dat``; the file itself when it cannot be read."""
    data = _payload(part, defects)
    opaque = [_attachment(part, "application/ms-tnef", data, limits, "winmail.dat")]
    refusal = _TnefCheck(len(data)).refusal(data)
    if refusal:
        defects.add(f"winmail.dat could not be unpacked ({refusal}); kept as is")
        return opaque
    try:
        tnef = tnefparse.TNEF(data, do_checksum=True)
        if not all(getattr(obj, "good_checksum", True) for obj in tnef.objects):
            defects.add("winmail.dat has checksum errors")
        found: list[Attachment] = []
        for item in tnef.attachments:
            payload = item.data if isinstance(item.data, bytes) else b""
            name = item.long_filename()
            if isinstance(name, bytes):
                name = _decode_bytes(name, "cp1252", "winmail.dat name", None, quiet=True)
            if count + len(found) >= limits.max_parts:
                defects.add("winmail.dat holds too many files; the rest were left inside")
                break
            ctype = _MIME_TYPES.guess_type(str(name).strip("\x00"), strict=False)[0]
            found.append(
                _make_attachment(str(name), ctype or "application/octet-stream", payload, limits)
            )
    except Exception as exc:
        defects.add(f"winmail.dat could not be unpacked ({type(exc).__name__}); kept as is")
        return opaque
    return found or opaque


class _TnefRefused(Exception):
    """A winmail.dat tnefparse must not be given: the reason."""


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAPI_FIXED = {  # MAPI property types of a fixed size, and that size
    tnefparse.mapi.SZMAPI_SHORT: 2,
    tnefparse.mapi.SZMAPI_BOOLEAN: 2,
    tnefparse.mapi.SZMAPI_INT: 4,
    tnefparse.mapi.SZMAPI_FLOAT: 4,
    tnefparse.mapi.SZMAPI_ERROR: 4,
    tnefparse.mapi.SZMAPI_DOUBLE: 8,
    tnefparse.mapi.SZMAPI_APPTIME: 8,
    tnefparse.mapi.SZMAPI_CURRENCY: 8,
    tnefparse.mapi.SZMAPI_INT8BYTE: 8,
    tnefparse.mapi.SZMAPI_SYSTIME: 8,
    tnefparse.mapi.SZMAPI_CLSID: 16,
}
_MAPI_BYTES = frozenset(  # types whose values are lists of byte strings
    {tnefparse.mapi.SZMAPI_OBJECT, tnefparse.mapi.SZMAPI_BINARY, tnefparse.mapi.SZMAPI_UNSPECIFIED}
)
_MAPI_STRINGS = frozenset({tnefparse.mapi.SZMAPI_STRING, tnefparse.mapi.SZMAPI_UNICODE_STRING})
_TNEF_MAX_STEPS = 100_000  # objects, properties, values and rows; Outlook writes hundreds
_TNEF_MAX_DEPTH = 4  # messages embedded in attachments, inside each other
_TNEF_COPIES = 256  # tnefparse copies the rest of the file per object: at most this many times


class _TnefCheck:
    """Walks a winmail.dat the way tnefparse 1.4 will, reading only counts, lengths and offsets,
    and refuses one that would make tnefparse loop on counts its bytes cannot hold.

    tnefparse trusts every count in the file: a MAPI property count of 0xFFFFFFFF in a 33-byte
    file loops 4.3 billion times; a multi-value count does the same for values read past the
    end (they are empty, and never raise); each object copies the rest of the file, quadratic in
    the number of objects; attachments can embed whole TNEF messages. So: every count must fit
    in the bytes left, all the counts together within ``_TNEF_MAX_STEPS``, the copies within
    ``_TNEF_COPIES`` times the file, embedding within ``_TNEF_MAX_DEPTH``. Wherever tnefparse
    goes on reading, so does the walk, from the same offset; where tnefparse stops with an
    exception, the walk stops too (or checks on, which costs nothing but a stricter answer).
    """

    def __init__(self, size: int) -> None:
        self.steps = 0
        self.copies_left = _TNEF_COPIES * size + (64 << 20)

    def refusal(self, data: bytes) -> str | None:
        """Why tnefparse must not read ``data``, or None."""
        try:
            self._stream(data, 0)
        except _TnefRefused as exc:
            return str(exc)
        except Exception:  # tnefparse raises at this point too, and reads no further
            return None
        return None

    def _count(self, count: int, room: int, size: int, what: str) -> None:
        if count * size > max(room, 0):
            raise _TnefRefused(f"{what} count of {count} in {max(room, 0)} bytes")
        self.steps += count
        if self.steps > _TNEF_MAX_STEPS:
            raise _TnefRefused(f"more than {_TNEF_MAX_STEPS} objects and properties")

    def _stream(self, data: bytes, depth: int) -> None:
        """``tnefparse.TNEF``: the objects, one after the other."""
        if depth > _TNEF_MAX_DEPTH:
            raise _TnefRefused(f"messages embedded more than {_TNEF_MAX_DEPTH} deep")
        if _U32.unpack_from(data, 0)[0] != tnefparse.TNEF.TNEF_SIGNATURE:
            return
        _U16.unpack_from(data, 4)
        codepage: str | None = None
        attachment: list[str | None] = []  # the codepage of the current attachment, if any
        offset = 6
        while offset + tnefparse.TNEF.MIN_OBJ_SIZE < len(data):
            self._count(1, len(data) - offset, 1, "object")
            self.copies_left -= len(data) - offset
            if self.copies_left < 0:
                raise _TnefRefused("too many objects for the size of the file")
            level, name, kind = data[offset], *struct.unpack_from("<HH", data, offset + 1)
            length = min(len(data) - offset, _U32.unpack_from(data, offset + 5)[0] + 11)
            body = data[offset + 9 : offset + length - 2]
            offset += length
            if name == tnefparse.TNEF.ATTATTACHRENDDATA:
                attachment = [codepage]
            if level == tnefparse.TNEF.LVL_ATTACHMENT:
                if not attachment:
                    return  # tnefparse fails on an attachment attribute before any attachment
                if name == tnefparse.TNEF.ATTATTACHMENT:
                    self._attachment(body, attachment[0], depth)
            else:
                codepage = self._message_attribute(name, kind, body, codepage)

    def _message_attribute(
        self, name: int, kind: int, body: bytes, codepage: str | None
    ) -> str | None:
        """One message-level object, as tnefparse reads it; returns the codepage after it."""
        if name == tnefparse.TNEF.ATTMAPIPROPS:
            self._mapi(body, codepage, None)
        elif name in (tnefparse.TNEF.ATTBODY, tnefparse.TNEF.ATTTNEFVERSION):
            pass
        elif name == tnefparse.TNEF.ATTOEMCODEPAGE:
            return str(tnefparse.codepage.Codepage(_U32.unpack_from(body, 0)[0]).codepage())
        elif kind in (tnefparse.TNEFObject.PTYPE_CLASS, tnefparse.TNEFObject.PTYPE_STRING):
            pass
        elif name == tnefparse.TNEF.ATTRECIPTABLE:
            rows = _U32.unpack_from(body, 0)[0]
            self._count(rows, len(body) - 4, 4, "recipient")
            offset = 4
            for _ in range(rows):
                offset = self._mapi(body, codepage, offset)[0]
        return codepage

    def _attachment(self, body: bytes, codepage: str | None, depth: int) -> None:
        """An attachment's MAPI properties, and the message its data may embed."""
        for name, kind, pieces in self._mapi(body, codepage, None)[1]:
            if name != tnefparse.properties.MAPI_ATTACH_DATA_OBJ:
                continue
            if kind not in _MAPI_BYTES:
                return  # tnefparse fails on such a data object and reads no further
            blob = b"".join(piece.rstrip(b"\x00") for piece in pieces)
            if blob.startswith(tnefparse.mapi.IMESSAGE_SIG):
                self._stream(blob[tnefparse.mapi.IMESSAGE_SIG_LEN :], depth + 1)

    def _mapi(
        self, data: bytes, codepage: str | None, start: int | None
    ) -> tuple[int, list[_MapiValue]]:
        """``tnefparse.mapi.decode_mapi``: (where it stops, [(name, type, pieces)] per value).

        Like it, the walk stops at the first property it cannot read, keeping the values before;
        the offset it stops at, where the next recipient row starts, moves as tnefparse's does:
        after each header field read and each whole value."""
        cursor = _Cursor(start or 0)
        count = _U32.unpack_from(data, cursor.at)[0]
        cursor.at += 4
        self._count(count, len(data) - cursor.at, 4, "MAPI property")
        found: list[_MapiValue] = []
        try:
            for _ in range(count):
                if cursor.at < len(data):
                    self._property(data, cursor, codepage, found)
        except _TnefRefused:
            raise
        except Exception:  # tnefparse stops the properties here, keeping those before
            pass
        return cursor.at, found

    def _property(
        self, data: bytes, cursor: _Cursor, codepage: str | None, found: list[_MapiValue]
    ) -> None:
        """One property: its header, then each of its values."""
        kind = _U16.unpack_from(data, cursor.at)[0]
        cursor.at += 2
        name = _U16.unpack_from(data, cursor.at)[0]
        cursor.at += 2
        if name >= tnefparse.mapi.GUID_EXISTS_FLAG:
            self._named(data, cursor)
        multi: int | None = None
        if kind & tnefparse.mapi.MULTI_VALUE_FLAG:
            kind ^= tnefparse.mapi.MULTI_VALUE_FLAG
            multi = _U32.unpack_from(data, cursor.at)[0]
            cursor.at += 4
        if kind not in _MAPI_FIXED and kind not in _MAPI_BYTES and kind not in _MAPI_STRINGS:
            raise ValueError("unknown MAPI type")  # tnefparse fails on its first value
        if multi is not None:
            self._count(multi, len(data) - cursor.at, _MAPI_FIXED.get(kind, 4), "multi-value")
        for _ in range(multi or 1):
            cursor.at, pieces = self._value(data, cursor.at, kind, codepage, bool(multi))
            found.append((name, kind, pieces))
        if (multi or 1) % 2 and kind in (
            tnefparse.mapi.SZMAPI_SHORT,
            tnefparse.mapi.SZMAPI_BOOLEAN,
        ):
            cursor.at += 2

    def _named(self, data: bytes, cursor: _Cursor) -> None:
        """A named property's GUID, and its number or its UTF-16 name."""
        if cursor.at + 16 > len(data):
            raise ValueError("short GUID")
        cursor.at += 16
        named = _U32.unpack_from(data, cursor.at)[0]
        cursor.at += 4
        if named == 0:
            _U32.unpack_from(data, cursor.at)
            cursor.at += 4
            return
        size = _U32.unpack_from(data, cursor.at)[0]
        cursor.at += 4
        size += -size % 4
        data[cursor.at : cursor.at + size].decode("utf-16")
        cursor.at += size

    def _value(
        self, data: bytes, at: int, kind: int, codepage: str | None, multi: bool
    ) -> tuple[int, list[bytes]]:
        """``tnefparse.mapi.parse_property``: where the next value starts, and this one's pieces."""
        if kind in _MAPI_FIXED:
            return at + _MAPI_FIXED[kind], []
        count = 1
        if not multi:
            count = _U32.unpack_from(data, at)[0]
            at += 4
            self._count(count, len(data) - at, 4, "value")
        pieces: list[bytes] = []
        for _ in range(count):
            size = _U32.unpack_from(data, at)[0]
            at += 4
            size += -size % 4
            piece = data[at : at + size]
            if kind == tnefparse.mapi.SZMAPI_UNICODE_STRING:
                piece.decode("utf-16")
            elif kind == tnefparse.mapi.SZMAPI_STRING:
                piece.decode(codepage)  # type: ignore[arg-type]  # None fails there too
            pieces.append(piece)
            at += size
        return at, pieces


_MapiValue = tuple[int, int, list[bytes]]  # property name, type, and the pieces of one value


@dataclass(slots=True)
class _Cursor:
    """An offset several steps move, so that it is where the last one that worked left it."""

    at: int


_RESERVED_NAMES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in range(10)}
    | {f"lpt{i}" for i in range(10)}
)
_UNSAFE_NAME_CHARS = re.compile(r'[<>:"|?*]')
_EXTENSIONS = {
    "message/rfc822": ".eml",
    "text/plain": ".txt",
    "text/html": ".html",
    "image/jpeg": ".jpg",
    "application/octet-stream": ".bin",
}


def safe_filename(name: str | None, content_type: str = "application/octet-stream") -> str:
    """A filename fit for display: a basename without paths, controls, bidi or leading dots.

    At most 255 UTF-8 bytes with the extension kept; never empty ("attachment" plus an
    extension from the content type). It is never a path: blobs are stored by generated names.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = "".join(
        " " if unicodedata.category(c) == "Cc" else c
        for c in text
        if unicodedata.category(c) not in ("Cf", "Cs", "Co", "Cn") or c == "\u200d"
    )
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = re.sub(r"^[A-Za-z]:", "", text)
    text = _UNSAFE_NAME_CHARS.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    if text.split(".", 1)[0].strip().lower() in _RESERVED_NAMES:
        text = "_" + text
    if not text:
        text = "attachment" + _extension(content_type)
    return _fit_bytes(text, _NAME_BYTES)


def _extension(content_type: str) -> str:
    ctype = (content_type or "").lower()
    if ctype in _EXTENSIONS:
        return _EXTENSIONS[ctype]
    return _MIME_TYPES.guess_extension(ctype, strict=False) or ""


def _fit_bytes(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(text.encode("utf-8")) <= limit:
        return text
    stem, dot, ext = text.rpartition(".")
    keep = f".{ext}" if dot and stem and 0 < len(ext.encode("utf-8")) <= 16 else ""
    if not keep:
        stem = text
    room = limit - len(keep.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
    return (cut or "attachment") + keep


# --------------------------------------------------------------------------------------------
# Text: charsets that never raise, cleaning
# --------------------------------------------------------------------------------------------


def _decode_bytes(
    data: bytes, charset: str | None, where: str, defects: _Defects | None, quiet: bool = False
) -> str:
    """Declared charset (by its codec alias), else UTF-8, else cp1252 with replacement."""
    label = (charset or "").strip().strip("\"'").lower()
    if label:
        try:
            return data.decode(codecs.lookup(label).name)
        except LookupError:
            if defects is not None:
                defects.add(f"unknown charset {label!r} in {where}")
        except (UnicodeError, ValueError, TypeError):
            if defects is not None and not quiet:
                defects.add(f"{where} is not valid {label}")
    elif data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if defects is not None and not quiet:
            defects.add(f"{where}: undecodable bytes, read as cp1252")
        return data.decode("cp1252", "replace")


_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_INVISIBLE = re.compile("[\u200b\u2060\ufeff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATES.search(text) is not None


def _clean_line(text: str, limit: int | None = None) -> str:
    """One line of display text: no CR/LF/NUL/controls, NFC, spaces collapsed."""
    text = _SURROGATES.sub("\ufffd", text)
    text = _INVISIBLE.sub("", _LINE_BREAKS.sub(" ", text))
    text = unicodedata.normalize("NFC", " ".join(text.split()))
    return text[:limit] if limit is not None else text


def _clean_text(text: str) -> str:
    """Multi-line body text: LF line ends, no NUL or controls (tabs kept), NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SURROGATES.sub("\ufffd", _CONTROLS.sub("", text))
    return unicodedata.normalize("NFC", text)


# --------------------------------------------------------------------------------------------
# Reports: DSN, MDN and ARF (RFC 6522), and bounces that are not RFC reports
# --------------------------------------------------------------------------------------------

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def _guarded_report(part: Message, defects: _Defects) -> Report:
    try:
        return _report(part, defects)
    except Exception as exc:
        defects.add(f"the report could not be read ({type(exc).__name__})")
        return Report(report_type=_clean_line(str(part.get_param("report-type") or "unknown")))


def _report(part: Message, defects: _Defects) -> Report:
    """A ``multipart/report`` read into a ``Report``."""
    report_type = _clean_line(str(part.get_param("report-type") or ""), 64).lower()
    recipients: list[ReportRecipient] = []
    original_id: str | None = None
    original_to: list[str] = []
    for child in part.get_payload():
        if not isinstance(child, Message):
            continue
        ctype = _safe(child.get_content_type, "")
        if ctype in _MESSAGE_PARTS or ctype in ("text/rfc822-headers", "text/global-headers"):
            msg_id, to = _returned_identity(child, defects)
            original_id = original_id or msg_id
            original_to.extend(to)
            continue
        if ctype not in _REPORT_PARTS:
            continue
        blocks = _field_blocks(child, defects)
        kind, found, msg_id = _report_fields(ctype, blocks)
        report_type = report_type or kind
        recipients.extend(found)
        original_id = original_id or msg_id
    return Report(
        report_type=report_type or "unknown",
        recipients=tuple(recipients),
        original_message_id=original_id,
        original_envelope_to=tuple(dict.fromkeys(original_to)),
    )


def _report_fields(
    ctype: str, blocks: list[dict[str, str]]
) -> tuple[str, list[ReportRecipient], str | None]:
    """(report type, recipients, original Message-ID) from the machine-readable part."""
    recipients: list[ReportRecipient] = []
    if "delivery-status" in ctype:
        for block in blocks:
            address = _report_address(
                block.get("final-recipient") or block.get("original-recipient")
            )
            if address:
                status = _STATUS.search(block.get("status", ""))
                recipients.append(
                    ReportRecipient(
                        address=address,
                        action=_clean_line(block.get("action", ""), 32).lower(),
                        status=status.group(0) if status else "",
                        diagnostic=_diagnostic(block.get("diagnostic-code", "")),
                    )
                )
        return "delivery-status", recipients, None
    fields = {k: v for block in blocks for k, v in block.items()}
    if "disposition-notification" in ctype:
        ids = _msg_ids(fields.get("original-message-id", ""))
        address = _report_address(fields.get("final-recipient") or fields.get("original-recipient"))
        disposition = fields.get("disposition", "").rpartition(";")[2]
        if address:
            recipients.append(ReportRecipient(address, _clean_line(disposition, 32).lower(), ""))
        return "disposition-notification", recipients, ids[0] if ids else None
    feedback = _clean_line(fields.get("feedback-type", ""), 32).lower()
    for block in blocks:
        for key, value in block.items():
            address = _report_address(value) if key == "original-rcpt-to" else None
            if address:
                recipients.append(ReportRecipient(address, feedback, ""))
    ids = _msg_ids(fields.get("original-message-id", ""))  # not standard, but sent by some
    return "feedback-report", recipients, ids[0] if ids else None


def _field_blocks(part: Message, defects: _Defects) -> list[dict[str, str]]:
    """The field blocks of a report part as lower-case name -> value (first value wins)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        texts = [m.as_string() if isinstance(m, Message) else str(m) for m in payload]
        text = "\n\n".join(t.lstrip("\r\n") for t in texts)
    else:
        text = _decode_bytes(_payload(part, defects), "utf-8", "report part", defects)
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n[ \t]*\n", _clean_text(text)):
        block: dict[str, str] = {}
        for name, value in re.findall(r"^([!-9;-~]+)[ \t]*:(.*(?:\n[ \t].*)*)", chunk, re.M):
            block.setdefault(name.lower(), _clean_line(value))
        if block:
            blocks.append(block)
    return blocks


DIAGNOSTIC_CHARS = 500  # of a server's answer kept per recipient
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*;\s*")


def _diagnostic(value: str) -> str:
    """``smtp; 550 5.1.1 <x@y>: User unknown`` without its type (RFC 3464 diagnostic-type)."""
    return _DIAGNOSTIC_TYPE.sub("", _clean_line(value), count=1)[:DIAGNOSTIC_CHARS]


def _report_address(value: str | None) -> str | None:
    """The address of ``rfc822; someone@example.net`` (any address type), bare lower-case."""
    if not value:
        return None
    addr = value.rpartition(";")[2].strip().strip("<>").strip().lower()
    return addr if "@" in addr and " " not in addr else None


def _returned_identity(part: Message, defects: _Defects) -> tuple[str | None, list[str]]:
    """Message-ID and To: of a returned message (whole, or its headers only)."""
    payload = part.get_payload()
    inner: Message | None = None
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
    else:
        text = _decode_bytes(_payload(part, defects), "utf-8", "returned headers", defects)
        try:
            inner = HeaderParser(policy=email.policy.compat32).parsestr(text, headersonly=True)
        except Exception:
            inner = None
    if inner is None:
        return None, []
    ids = _msg_ids(str(inner.get("message-id", "") or ""))
    to = _lenient_addresses([str(v) for v in inner.get_all("to", [])])
    return (ids[0] if ids else None), to


_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mailerdaemon)@", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|has failed|notification|problem)|"
    r"failure notice|returned mail|mail delivery failed|could not be delivered|"
    r"unzustellbar|nicht zustellbar|non remis|no se puede entregar|no entregado",
    re.I,
)
_COPY_MARKER = re.compile(
    r"copy of the message|original message headers|original message follows|"
    r"returned message|message follows|below this line|undelivered message",
    re.I,
)
# possessive runs of white space: two of them side by side, tried at every split of a long run
# that ends in something else, were quadratic (40,000 spaces: half a minute)
_BOUNCE_ADDRESS = re.compile(
    r"^\s*+<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)>?"
    r"\s*+(?:\([^)]*+\))?\s*+(:.*)?$"
)


def _heuristic_report(identity: _Identity, body: _Body) -> Report | None:
    """A bounce without ``multipart/report`` (Exchange NDRs, qmail): what can be found."""
    from_addr = identity.claimed_sender or ""
    automatic = bool(_BOUNCE_SENDER.match(from_addr or "")) or identity.return_path == ""
    if not automatic or not _BOUNCE_SUBJECT.search(identity.subject):
        return None
    text = "\n".join(body.plain) or _html_to_text(_parseable("\n".join(body.html)), _MAX_HTML).text
    lines = _clean_text(text).split("\n")
    marker = next((i for i, line in enumerate(lines) if _COPY_MARKER.search(line)), len(lines))
    human, copy = lines[:marker], lines[marker:]
    first = _status_line(human)
    recipients: dict[str, ReportRecipient] = {}
    for index, line in enumerate(human):
        match = _BOUNCE_ADDRESS.match(line)
        if not match or _BOUNCE_SENDER.match(match.group(1)):
            continue
        address = match.group(1).lower()
        status, words = _status_line(human[index : index + 5]) or first or ("", "")
        action = "delayed" if status.startswith("4") else "failed"
        recipients.setdefault(address, ReportRecipient(address, action, status, words))
    original_id, original_to = _copied_identity(copy, body)
    return Report(
        report_type="heuristic",
        recipients=tuple(recipients.values()),
        original_message_id=original_id,
        original_envelope_to=original_to,
    )


def _status_line(lines: list[str]) -> tuple[str, str] | None:
    """The first status code in ``lines`` and the line that holds it (the server's words)."""
    for line in lines:
        found = _STATUS.search(line)
        if found:
            return found.group(0), _clean_line(line)[:DIAGNOSTIC_CHARS]
    return None


def _copied_identity(copy: list[str], body: _Body) -> tuple[str | None, tuple[str, ...]]:
    """Message-ID and To: of the returned message: attached, else copied into the text."""
    for inner in body.returned:
        ids = _msg_ids(str(inner.get("message-id", "") or ""))
        if ids:
            returned_to = _lenient_addresses([str(v) for v in inner.get_all("to", [])])
            return ids[0], tuple(dict.fromkeys(returned_to))
    msg_id = None
    to: list[str] = []
    for line in copy:
        name, _, value = line.partition(":")
        if name.strip().lower() == "message-id" and msg_id is None:
            found = _msg_ids(value)
            msg_id = found[0] if found else None
        elif name.strip().lower() == "to":
            to.extend(_lenient_addresses([value]))
    return msg_id, tuple(dict.fromkeys(to))


# --------------------------------------------------------------------------------------------
# Readable text and the reply: HTML converted, quoted history stripped
# --------------------------------------------------------------------------------------------


def _texts(body: _Body, limits: Limits, defects: _Defects) -> tuple[str, str | None, str]:
    """(text, the start of the raw html, reply text) of the message body.

    The text is at most ``max_text_chars`` characters; the rest of a longer one is dropped and a
    last line says so (the raw mail is kept whole). HTML-only mail is converted up to that cap.
    """
    cap = limits.max_text_chars
    html = "\n".join(body.html) if body.html else None
    whole = len(html) if html is not None else 0
    html = html[:_MAX_HTML] if html is not None else None  # all that is read of it, below
    if any(part.strip() for part in body.plain):
        text = _clean_text("\n\n".join(t.strip("\r\n") for t in body.plain))
        if len(text) <= cap:
            return text, html, strip_quoted_history(text)
        defects.add(f"text over {cap} characters: the rest was cut")
        marker = _cut_marker(f"the rest of this message, {len(text) - cap:,} characters, was cut")
        text = text[:cap]
        return text + marker, html, strip_quoted_history(text) + marker
    if html is None:
        return "", None, ""
    if whole > _MAX_HTML:
        defects.add(f"HTML body over {_MAX_HTML} characters: only the start was converted")
    source = _parseable(html)
    converted = _html_to_text(source, cap)
    pruned = _QuotePruner.prune(source)
    reply = converted if len(pruned) == len(source) else _html_to_text(pruned, cap)
    if converted.cut:
        defects.add(f"text of the HTML body over {cap} characters: the rest was cut")
    return converted.shown(), html, strip_quoted_history(reply.text) + reply.marker()


def _cut_marker(what: str) -> str:
    return f"\n\n[... {what}; the original is kept]"


@dataclass(frozen=True, slots=True)
class _Converted:
    """Text converted from HTML, and the cap it was cut at (0: converted whole)."""

    text: str
    cut: int = 0

    def marker(self) -> str:
        if not self.cut:
            return ""
        return _cut_marker(f"the rest of this message was cut at {self.cut:,} characters")

    def shown(self) -> str:
        return self.text + self.marker()


_MD_ESCAPE = re.compile(r"^([^\S\n]*+)\\([-+#>])|^([^\S\n]*+\d++)\\(\.)", re.M)


def _html_to_text(html: str, cap: int) -> _Converted:
    """HTML as readable plain text (link targets after their text, table cells apart; no
    images, nothing fetched), at most ``cap`` characters: the conversion stops there. The
    caller bounds the input (``_parseable``)."""
    if not html:
        return _Converted("")
    source = _closed_tail(html)
    converter = _Converter(cap)
    try:
        text = converter.handle(source)
    except _TextFull:
        text = converter.text_so_far()
    except Exception:  # broken markup: fall back to the bare text between tags
        text = re.sub(r"<[^>]*>", " ", source)
    text = _MD_ESCAPE.sub(lambda m: (m.group(1) or m.group(3) or "") + (m.group(2) or "."), text)
    text = _clean_text(text).replace("\xa0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    if converter.full or len(text) > cap:
        return _Converted(text[:cap].rstrip(), cap)
    return _Converted(text)


def _parseable(html: str) -> str:
    """What of an HTML body is converted: its first ``_MAX_HTML`` characters, tail closed."""
    return _closed_tail(html[:_MAX_HTML])


def _closed_tail(html: str) -> str:
    """``html`` with every ``<`` after the last ``>`` written as ``&lt;``: no tag can end there,
    and the standard library's HTML parser (before Python 3.13.4) rescans the rest of the input
    for each such ``<`` (``<a<a<a...``: quadratic). Its own result comes back unchanged."""
    end = html.rfind(">") + 1
    return html[:end] + html[end:].replace("<", "&lt;")


class _TextFull(Exception):
    """The converted text reached its cap: html2text is stopped where it is."""


_NESTING = {"blockquote": "blockquote", "ol": "list", "ul": "list"}
_MAX_NESTING = 32  # quotes and lists nested deeper are shown at this depth
_NEWLINE_RUN = re.compile(r"\n\s*+")
_NBSP_HOLDER = "&nbsp_place_holder;"  # what html2text writes for &nbsp; until it finishes


_MAX_URL = 2048  # longer link targets are left out (browsers and servers stop near here)
_URL = re.compile(r"(?:https?://|mailto:)[^\s<>\"\x00-\x1f\x7f]++", re.I)
_CELL = " | "  # between the cells of a table row


class _Converter(html2text.HTML2Text):
    """html2text, with its work bounded by the size of the input and the cap of the output.

    Each line's prefix ("> > ", a list's indent) grows with the nesting, so nesting is capped;
    an abbreviation's text and a style sheet's ``@import`` rules are re-copied per step inside
    html2text, so ``<abbr>`` is read as plain text and ``<style>`` is skipped here; and text
    with many line breaks is given one newline per run of whitespace before html2text's
    line-anchored escaping patterns see it (its output folds such runs into one space anyway).

    Links and tables are written here, not by html2text (whose Markdown would not read as
    mail): a link's target follows its text as ``text <https://...>`` (``_Link``), and a table
    row's cells are separated by `` | ``, each row on a line of its own.
    """

    def __init__(self, cap: int) -> None:
        super().__init__(bodywidth=0)
        self.ignore_links = True
        self.ignore_images = True
        self.ignore_emphasis = True
        self.ignore_tables = True
        self.unicode_snob = True
        self.cap = cap
        self.written = 0
        self.full = False
        self.depth = {"blockquote": 0, "list": 0}
        self.link: _Link | None = None  # the link open now (links do not nest in HTML)
        self.cell_mark = 0  # ``written`` after the last cell separator or row start
        self.tag_callback = _bounded_tag  # type: ignore[assignment]  # typed as None there

    def outtextf(self, s: str) -> None:
        super().outtextf(s)
        self.written += len(s) - s.count(_NBSP_HOLDER) * (len(_NBSP_HOLDER) - 1)
        if self.written > self.cap:
            self.full = True
            raise _TextFull

    def handle_data(self, data: str, entity_char: bool = False) -> None:
        if not self.pre and "\n" in data:
            data = _NEWLINE_RUN.sub("\n", data)
        if self.link is not None:
            self.link.read(data)
        super().handle_data(data, entity_char)

    def text_so_far(self) -> str:
        return "".join(self.outtextlist).replace(_NBSP_HOLDER, "\xa0")

    def open_link(self, href: str | None) -> None:
        if self.link is not None:  # an <a> inside an open one closes it first, as browsers do
            self.close_link()
            self.space = True  # its text follows the target
        self.link = _Link(_shown_target(href))

    def close_link(self) -> None:
        link, self.link = self.link, None
        if link is None or not link.target or link.names_target():
            return
        last = self.outtextlist[-1][-1:] if self.outtextlist else ""
        self.o(f"<{link.target}>" if not last or last.isspace() else f" <{link.target}>")

    def table_tag(self, tag: str, start: bool) -> None:
        """Cells apart, rows on lines of their own (a row may lack its end tag)."""
        if not start:
            return
        if tag == "tr":
            self.soft_br()
        elif self.written > self.cell_mark:  # a cell after one with text in this row
            self.o(_CELL)
        self.cell_mark = self.written


class _Link:
    """An open link: its target to show (None: not shown) and the start of its text, kept up to
    one character more than the target (enough to tell whether the text is the target)."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.text = ""

    def read(self, data: str) -> None:
        if self.target is not None and len(self.text) <= len(self.target):
            self.text += data[: len(self.target) + 1 - len(self.text)]

    def names_target(self) -> bool:
        """Whether the link's text is its target already (then it is shown once)."""
        assert self.target is not None
        text = " ".join(self.text.split()).lower()
        target = self.target.lower()
        bare = target.removeprefix("mailto:")
        return text in (target, bare, target.rstrip("/"))


def _shown_target(href: str | None) -> str | None:
    """A link target fit to show: http, https or mailto, no spaces or controls, at most
    ``_MAX_URL`` characters; nothing is ever fetched."""
    href = (href or "").strip()
    if len(href) > _MAX_URL or _URL.fullmatch(href) is None:
        return None
    return href


def _bounded_tag(
    converter: _Converter, tag: str, attrs: dict[str, str | None], start: bool
) -> bool:
    """html2text's tag hook: True when html2text is to ignore the tag (then the hook does the
    little of html2text's work on it that the output depends on)."""
    if tag == "a":
        if converter.quiet:
            return True
        converter.open_link(attrs.get("href")) if start else converter.close_link()
        return True
    if tag in ("tr", "td", "th"):
        if not converter.quiet:
            converter.table_tag(tag, start)
        return False  # html2text ends the row's line
    if tag in ("abbr", "style"):
        if tag == "style":  # hidden, as html2text hides it, without its style sheet parser
            converter.quiet += 1 if start else -1
        converter.lastWasList = False
        return True
    kind = _NESTING.get(tag)
    if kind is None:
        return False
    if start:
        converter.depth[kind] += 1
        deep = converter.depth[kind] > _MAX_NESTING
    else:
        deep = converter.depth[kind] > _MAX_NESTING
        converter.depth[kind] = max(0, converter.depth[kind] - 1)
    if deep:
        converter.lastWasList = kind == "list"
    return deep


class _QuotePruner(HTMLParser):
    """Drops quoted history from HTML: blockquotes, Gmail quotes, Outlook's reply header on."""

    _SKIP_CLASSES = frozenset({"gmail_quote", "gmail_quote_container", "yahoo_quoted"})
    _CUT_IDS = frozenset(
        {
            "divrplyfwdmsg",
            "x_divrplyfwdmsg",
            "appendonsend",
            "mail-editor-reference-message-container",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skip_tag = ""
        self.skip_depth = 0
        self.stopped = False

    @classmethod
    def prune(cls, html: str) -> str:
        pruner = cls()
        try:
            pruner.feed(_closed_tail(html))
            pruner.close()
        except Exception:
            return html
        return "".join(pruner.out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        values = {name: (value or "").lower() for name, value in attrs}
        if values.get("id", "") in self._CUT_IDS:
            self.stopped = True
            return
        if tag == "blockquote" or self._SKIP_CLASSES & set(values.get("class", "").split()):
            self.skip_tag, self.skip_depth = tag, 1
            return
        self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.stopped and not self.skip_tag:
            self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = ""
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.stopped and not self.skip_tag:
            self.out.append(data)

    def handle_entityref(self, name: str) -> None:
        self.handle_data(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.handle_data(f"&#{name};")


# The stripper's patterns run on one line (or an attribution of up to three lines) at a time, and
# only on lines of at most this many characters: no attribution, header field, separator or
# signature line is longer, and a hostile mail's megabyte-long line then costs one pass, not a
# pattern's backtracking. Leading and trailing whitespace is taken by possessive quantifiers
# (``\s*+``), which never give back what they took, so each pattern is linear in its line.
_PATTERN_CHARS = 1000
# a client that wraps its attribution may leave the first word alone on its line ("On")
_ATTRIBUTION_START = re.compile(r"^\s*+(on|am|le|el|il|op|den|em|w)(?:\s|$)", re.I)
_ATTRIBUTION = re.compile(
    r"^\s*+(?:"
    r"(?:on|em|il)\s.{4,300}?\b(?:wrote|escreveu|ha scritto)\s*+:"
    r"|(?:am|op)\s.{4,300}?\b(?:schrieb|schreef)\b[^:]{0,200}+:"
    r"|den\s.{4,300}?\bskrev\b[^:]{0,200}+:"
    r"|le\s.{4,300}?\ba\s++écrit\s*+:"
    r"|el\s.{4,300}?\bescribió\s*+:"
    r"|w dniu\s.{4,300}?\b(?:pisze|napisał(?:\(a\))?+)\s*+:"
    r")\s*+$",
    re.I | re.S,
)
# Gmail's forms that begin with a name or a date, not a word of their own: German and Dutch on
# phones ("Jane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026, 10:00:"), Polish ("czw.,
# 26 lis 2026 o 10:00 Jane Doe <jane@example.com> napisał(a):") and Norwegian ("tor. 26. nov.
# 2026 kl. 10:00 skrev Jane Doe <jane@example.com>:"). Known by their end; searched, each
# alternative anchored on its word and possessive after it, so linear in the line.
_ATTRIBUTION_END = re.compile(
    r"(?:\b(?:schrieb\s++am|schreef\s++op)\s++[^:\n]{4,200}+:\d\d"
    r"|\bnapisał(?:\(a\))?+"
    r"|\bskrev\s++[^:\n]{1,200}+)\s*+:\s*+$",
    re.I,
)
_TIME = re.compile(r"\d[:.]\d\d")
# how such an attribution's first line looks: a name and an address, or a weekday and a day
_UNLED_START = re.compile(r"[<@]|^\s*+\w{2,5}\.?,?\s++\d")
_DATE_OR_ADDRESS = re.compile(r"\d|@")
_SEPARATOR = re.compile(
    r"^\s*+-{2,}+\s*+(original message|original-nachricht|ursprüngliche nachricht"
    r"|originalnachricht|message d'origine|mensaje original|messaggio originale"
    r"|oorspronkelijk bericht|ursprungligt meddelande|mensagem original)\s*+-{2,}+\s*+$",
    re.I,
)
_FORWARD = re.compile(
    r"forwarded message|begin forwarded message|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|messaggio inoltrato",
    re.I,
)
# "*From:* x" as Outlook's HTML becomes text: stars and spaces around the name, taken whole
_FIELD = r"^\s*+\**+\s*+(?:{names})\s*+\**+\s*+:"
_HEADER_FROM = re.compile(_FIELD.format(names="from|von|de|da|van|från|fra|od") + r"\s*+\S", re.I)
_HEADER_SENT = re.compile(
    _FIELD.format(
        names="sent|date|gesendet|datum|envoyé|enviado|fecha|inviato|data|verzonden|skickat|sendt"
    ),
    re.I,
)
_HEADER_OTHER = re.compile(
    _FIELD.format(
        names="to|an|à|a|para|aan|till|til|do|cc|subject|betreff|objet|asunto|oggetto"
        "|onderwerp|ämne|emne|temat|assunto"
    ),
    re.I,
)
_MOBILE_SIGNATURE = re.compile(
    r"^\s*+(sent from my\s.{1,40}|sent from (outlook|mail|yahoo mail)\b.{0,40}"
    r"|get outlook for (ios|android)|von meinem\s.{1,40}\sgesendet|gesendet von\s.{1,40}"
    r"|envoyé de mon\s.{1,40}|enviado desde mi\s.{1,40}|inviato da\s.{1,40})$",
    re.I,
)
_RULE = re.compile(r"^\s*+(?:[-_*=]\s*+){3,}+$")


def _matches(pattern: re.Pattern[str], line: str) -> bool:
    """Whether ``line`` matches ``pattern``; a line over ``_PATTERN_CHARS`` never does."""
    return len(line) <= _PATTERN_CHARS and pattern.match(line) is not None


def strip_quoted_history(text: str) -> str:
    """What the author wrote: quoted history, attribution lines and signatures removed.

    Knows how Gmail, Outlook (plain and HTML-converted), Apple Mail, Thunderbird, iOS, Android
    and mutt write replies, in English, German, French and Spanish (and a few more), with the
    attribution wrapped over up to three lines. Linear in the text: each line is stripped once
    and looked at a bounded number of times.
    """
    view = _Lines(_clean_text(text).split("\n"))
    kept: list[str] = []
    wrote = False  # a kept line has text: an unquoted attribution below it starts history
    index = 0
    while index < view.end:
        span = _attribution_span(view, index)
        if span:
            following = view.next_text[index + span]
            if following == view.end or view.quoted[following]:
                index += span
                continue
            if wrote:
                break
        if not view.quoted[index]:
            kept.append(view.lines[index].rstrip())
            wrote = wrote or not view.blank[index]
        index += 1
    del kept[_signature_start(kept) :]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")


class _Lines:
    """A text's lines up to where unquoted history starts, each looked at once: whether it is
    blank, whether it is quoted, and where the next line with text is (``end`` if none)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.end = _history_start(lines)
        self.blank: list[bool] = []
        self.quoted: list[bool] = []
        for index in range(self.end):
            lead = lines[index].lstrip()
            self.blank.append(not lead)
            self.quoted.append(lead[:1] == ">")
        self.next_text = [self.end] * (self.end + 1)
        for index in range(self.end - 1, -1, -1):
            self.next_text[index] = self.next_text[index + 1] if self.blank[index] else index


def _history_start(lines: list[str]) -> int:
    """Index of the first line of unquoted history (a separator or a header block)."""
    for index, line in enumerate(lines):
        if _matches(_SEPARATOR, line):
            return index
        if _matches(_HEADER_FROM, line) and _header_block_at(lines, index):
            previous = next(
                (ln for ln in reversed(lines[max(0, index - 3) : index]) if ln.strip()), ""
            )
            if len(previous) > _PATTERN_CHARS or not _FORWARD.search(previous):
                return index
    return len(lines)


def _header_block_at(lines: list[str], index: int) -> bool:
    following = lines[index + 1 : index + 6]
    return any(_matches(_HEADER_SENT, ln) for ln in following) and any(
        _matches(_HEADER_OTHER, ln) for ln in following
    )


def _attribution_span(view: _Lines, index: int) -> int:
    """How many lines an attribution ("On ... wrote:") starting at ``index`` spans, or 0."""
    return _led_span(view, index) or _unled_span(view, index)


def _led_span(view: _Lines, index: int) -> int:
    """How many lines an attribution that begins with its own word ("On", "Am", "Le"...)
    spans from ``index`` (1 to 3: a client may wrap it anywhere), or 0."""
    if not _matches(_ATTRIBUTION_START, view.lines[index]):
        return 0
    parts: list[str] = []
    for span in (1, 2, 3):
        last = index + span - 1
        if last >= view.end or (span > 1 and view.blank[last]):
            return 0
        if len(view.lines[last]) > _PATTERN_CHARS:
            return 0
        parts.append(view.lines[last].strip())
        joined = " ".join(parts)
        if _ATTRIBUTION.match(joined):
            following = view.next_text[index + span]
            # a date or an address, or quoted lines right after it, mark a real attribution
            quoted_next = following < view.end and view.quoted[following]
            if _DATE_OR_ADDRESS.search(joined) or quoted_next:
                return span
    return 0


def _unled_span(view: _Lines, index: int) -> int:
    """How many lines one of Gmail's attributions without a word of its own to start with
    (``_ATTRIBUTION_END``) spans from ``index``, or 0. Nothing marks where such a line begins,
    so it is only taken right after a blank line, from a line with an address or a date at its
    start, up to the first line that ends with a colon (within three), with a time in it and
    quoted lines right after."""
    if index and not view.blank[index - 1]:
        return 0
    first = view.lines[index]
    if len(first) > _PATTERN_CHARS or not _UNLED_START.search(first):
        return 0
    parts: list[str] = []
    for last in range(index, min(index + 3, view.end)):
        line = view.lines[last]
        if view.blank[last] or view.quoted[last] or len(line) > _PATTERN_CHARS:
            return 0
        parts.append(line.strip())
        if parts[-1].endswith(":"):
            joined = " ".join(parts)
            following = view.next_text[last + 1]
            quoted_next = following < view.end and view.quoted[following]
            if quoted_next and _TIME.search(joined) and _ATTRIBUTION_END.search(joined):
                return last - index + 1
            return 0
    return 0


def _signature_start(lines: list[str]) -> int:
    """Where a trailing "-- " signature, "Sent from my phone" line and trailing rules start."""
    end = len(lines)
    for index in range(end - 1, max(end - 13, -1), -1):  # a signature is at most 12 lines
        if lines[index] in ("--", "-- "):
            end = index
            break
    end = _before_trailing_rules(lines, end)
    if end and _matches(_MOBILE_SIGNATURE, lines[end - 1]):
        end -= 1
    return _before_trailing_rules(lines, end)


def _before_trailing_rules(lines: list[str], end: int) -> int:
    """``end`` moved up past the blank lines and rules (``---``, ``___``) right above it."""
    while end and (not lines[end - 1].strip() or _matches(_RULE, lines[end - 1])):
        end -= 1
    return end
