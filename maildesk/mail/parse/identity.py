"""Who sent what: the top-level headers, read from a strict parse with ``email.policy.default``.

The second step of ``inbound.parse``, on the header block ``limits`` cut out: the Message-ID and
the ids a reply refers to, From (a sender only when it is one unambiguous mailbox), the
requester a new ticket answers, the recipients, Return-Path, and every header as cleaned display
text; Authentication-Results, Received: and the spam verdict headers as they arrived. The
strict address parser is quadratic, so each header and all of a message's address headers have
a budget; what it cannot read is read by the lenient parser, never for trust. ``dsn`` reads returned messages with the same helpers.
"""

from __future__ import annotations

import dataclasses
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser

from maildesk.mail.parse.limits import CT_TYPE
from maildesk.mail.parse.text import (
    NAME_BYTES,
    Defects,
    clean_line,
    decode_bytes,
    decoded,
    has_surrogates,
)

_MAX_STRUCTURED = 64 * 1024  # address headers longer than this are not read at all
_STRICT_BYTES = 4096  # the strict address parser is quadratic (gh-136063): bound each header
_STRICT_BUDGET = 16 * 1024  # ... and all of a message's address headers together
_MAX_DISPLAY = 16 * 1024  # header values are cut here: decode_header is quadratic too
_MAX_IDS = 500


_SUBJECT_CHARS = 998
_POLICY = email.policy.default


@dataclass(frozen=True, slots=True)
class SenderHeaders:
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
    trace: tuple[tuple[str, str], ...] = ()


# a strict parse of one address header: [(display name, bare addr-spec)] and its defects
_Parsed = tuple[list[tuple[str, str]], list[str]]
_ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc"}
)
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_ADDR_IN_NAME = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+")
_MSG_ID = re.compile(r"<([^<>\s]{1,998})>")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
# the headers a spam verdict is read from, with the Received: lines that say who added them
TRACE_HEADERS = frozenset({"received", "x-spam-flag", "x-spam-status", "x-rspamd-action", "x-spam"})
_MAX_TRACE = 100  # of these, the topmost; the desk's own servers add theirs on top
_MAX_TRACE_CHARS = 2000


def read_identity(block: bytes, defects: Defects) -> SenderHeaders:
    try:
        message = BytesHeaderParser(policy=_POLICY).parsebytes(block)
        items = list(message.raw_items())
    except Exception as exc:  # the header parser is not expected to fail; keep going if it does
        defects.add(f"headers could not be parsed ({type(exc).__name__})")
        return SenderHeaders()
    for defect in message.defects:
        defects.add(f"headers: {type(defect).__name__}")
    values: dict[str, list[str]] = {}
    headers: list[tuple[str, str]] = []
    trace: list[tuple[str, str]] = []
    for name, value in items:
        key = clean_line(str(name)).lower()
        text = _header_value(key, value, defects)
        values.setdefault(key, []).append(text)
        headers.append((key, _display_value(key, text, defects)))
        if key in TRACE_HEADERS and len(trace) < _MAX_TRACE:
            trace.append((key, text[:_MAX_TRACE_CHARS]))  # as it arrived: never decoded
    found = _from_values(values, tuple(headers), defects)
    return dataclasses.replace(found, trace=tuple(trace))


def _header_value(name: str, value: object, defects: Defects) -> str:
    """The unfolded header value as text; raw 8-bit bytes re-decoded (UTF-8, else cp1252)."""
    text = value if isinstance(value, str) else str(value)
    if has_surrogates(text):
        data = text.encode("ascii", "surrogateescape")
        text = decode_bytes(data, "utf-8", f"{name} header", defects, quiet=True)
        defects.add(f"raw 8-bit bytes in the {name} header")
    return _FOLD.sub("", text)


def _display_value(name: str, value: str, defects: Defects) -> str:
    """A header value as cleaned display text: encoded words decoded, one line."""
    if len(value) > _MAX_DISPLAY:  # decode_header is quadratic in the number of words
        defects.add(f"{name} header over {_MAX_DISPLAY} characters: cut")
        value = value[:_MAX_DISPLAY]
    return clean_line(decoded(value, defects))


def _from_values(
    values: dict[str, list[str]], headers: tuple[tuple[str, str], ...], defects: Defects
) -> SenderHeaders:
    strict = _StrictAddresses(defects)
    froms = values.get("from", [])
    parsed_from = strict.parse("from", froms[0]) if froms else None
    sender, sender_name, from_raw = _sender(froms, parsed_from, defects)
    claimed = sender or _claimed(froms, parsed_from)
    requester = _requester(froms[0] if froms else "", parsed_from) or _fallback_requester(
        values, strict
    )
    message_ids = [i for v in values.get("message-id", []) for i in msg_ids(v)[:1]]
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
    return SenderHeaders(
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
        date=clean_line(dates[0]) if dates else None,
        headers=headers,
        content_type=_content_type_of(values.get("content-type", [])),
        claimed_sender=claimed,
        requester=requester,
        # as they arrived: a verdict is read from these, never from the decoded display values
        authentication_results=tuple(values.get("authentication-results", [])),
    )


def _sender(
    values: list[str], parsed: _Parsed | None, defects: Defects
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
    found = lenient_addresses(values[:1])
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
    candidates += lenient_addresses([value])
    return next((addr for addr in candidates if _usable(addr)), None)


def _fallback_requester(values: dict[str, list[str]], strict: _StrictAddresses) -> str | None:
    """Sender:, else Reply-To:, when From names nobody the desk could answer."""
    for name in ("sender", "reply-to"):
        found = values.get(name, [])
        requester = _requester(found[0], strict.parse(name, found[0])) if found else None
        if requester:
            return requester
    return None


def usable_address(text: str) -> str | None:
    """``text`` as a bare addr-spec the desk keeps (``_normal_address``) when the desk could
    write to it, else None; for addresses read from text, never for trust."""
    addr = _normal_address(text)
    return addr if _usable(addr) else None


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
    local, at, domain = clean_line(addr).rpartition("@")
    if not at:
        return domain.lower() if domain.isascii() else domain
    return f"{local.lower() if local.isascii() else local}@{domain.lower()}"


class _StrictAddresses:
    """The strict (``email.policy.default``) address parser, within a per-message budget."""

    def __init__(self, defects: Defects) -> None:
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
                    found.append((clean_line(address.display_name, NAME_BYTES), addr))
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
            found.update(dict.fromkeys(lenient_addresses([value])))
            continue
        mailboxes, problems = parsed
        if problems:
            strict.defects.add(f"{name} header: " + ", ".join(sorted(set(problems))))
        found.update(dict.fromkeys(addr for _, addr in mailboxes))
    return tuple(found)


def lenient_addresses(values: list[str]) -> list[str]:
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
            found.update(dict.fromkeys(lenient_addresses([value])))
    return tuple(found)


def _return_path(values: list[str]) -> str | None:
    if not values:
        return None
    value = clean_line(values[0])
    if value.replace(" ", "") in ("", "<>"):
        return ""
    found = lenient_addresses([value])
    return found[0] if found else value.strip("<> ").lower()


def msg_ids(value: str) -> list[str]:
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
        for msg_id in msg_ids(value):
            found[msg_id] = None
    return tuple(found)[:_MAX_IDS]


def _content_type_of(values: list[str]) -> str:
    match = CT_TYPE.match(values[0].encode("utf-8", "replace")) if values else None
    return match.group(1).decode("ascii").lower() if match else "text/plain"
