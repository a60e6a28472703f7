"""Delivery reports: DSN, MDN and ARF (RFC 6522) read into a ``Report``; bounces without one.

During the MIME walk (``mime``) the first ``multipart/report`` is read by ``read_report``; after
the walk, ``inbound.parse`` asks ``heuristic_report`` whether mail from a mailer daemon without
such a part (Exchange NDRs, qmail) is a bounce, and for which recipients. ``routing`` reads the
``Report`` to tell a bounce from mail.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from maildesk.mail.parse.html import MAX_HTML, html_to_text, parseable
from maildesk.mail.parse.identity import SenderHeaders, lenient_addresses, msg_ids
from maildesk.mail.parse.parts import MESSAGE_PARTS, REPORT_PARTS, decoded_payload, lowered
from maildesk.mail.parse.text import Defects, clean_line, clean_text, decode_bytes


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


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def read_report(part: Message, defects: Defects) -> Report:
    try:
        return _report(part, defects)
    except Exception as exc:
        defects.add(f"the report could not be read ({type(exc).__name__})")
        return Report(report_type=clean_line(str(part.get_param("report-type") or "unknown")))


def _report(part: Message, defects: Defects) -> Report:
    """A ``multipart/report`` read into a ``Report``."""
    report_type = clean_line(str(part.get_param("report-type") or ""), 64).lower()
    recipients: list[ReportRecipient] = []
    original_id: str | None = None
    original_to: list[str] = []
    for child in part.get_payload():
        if not isinstance(child, Message):
            continue
        ctype = lowered(child.get_content_type, "")
        if ctype in MESSAGE_PARTS or ctype in ("text/rfc822-headers", "text/global-headers"):
            msg_id, to = _returned_identity(child, defects)
            original_id = original_id or msg_id
            original_to.extend(to)
            continue
        if ctype not in REPORT_PARTS:
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
                        action=clean_line(block.get("action", ""), 32).lower(),
                        status=status.group(0) if status else "",
                        diagnostic=_diagnostic(block.get("diagnostic-code", "")),
                    )
                )
        return "delivery-status", recipients, None
    fields = {k: v for block in blocks for k, v in block.items()}
    if "disposition-notification" in ctype:
        ids = msg_ids(fields.get("original-message-id", ""))
        address = _report_address(fields.get("final-recipient") or fields.get("original-recipient"))
        disposition = fields.get("disposition", "").rpartition(";")[2]
        if address:
            recipients.append(ReportRecipient(address, clean_line(disposition, 32).lower(), ""))
        return "disposition-notification", recipients, ids[0] if ids else None
    feedback = clean_line(fields.get("feedback-type", ""), 32).lower()
    for block in blocks:
        for key, value in block.items():
            address = _report_address(value) if key == "original-rcpt-to" else None
            if address:
                recipients.append(ReportRecipient(address, feedback, ""))
    ids = msg_ids(fields.get("original-message-id", ""))  # not standard, but sent by some
    return "feedback-report", recipients, ids[0] if ids else None


def _field_blocks(part: Message, defects: Defects) -> list[dict[str, str]]:
    """The field blocks of a report part as lower-case name -> value (first value wins)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        texts = [m.as_string() if isinstance(m, Message) else str(m) for m in payload]
        text = "\n\n".join(t.lstrip("\r\n") for t in texts)
    else:
        text = decode_bytes(decoded_payload(part, defects), "utf-8", "report part", defects)
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n[ \t]*\n", clean_text(text)):
        block: dict[str, str] = {}
        for name, value in re.findall(r"^([!-9;-~]+)[ \t]*:(.*(?:\n[ \t].*)*)", chunk, re.M):
            block.setdefault(name.lower(), clean_line(value))
        if block:
            blocks.append(block)
    return blocks


DIAGNOSTIC_CHARS = 500  # of a server's answer kept per recipient
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*;\s*")


def _diagnostic(value: str) -> str:
    """``smtp; 550 5.1.1 <x@y>: User unknown`` without its type (RFC 3464 diagnostic-type)."""
    return _DIAGNOSTIC_TYPE.sub("", clean_line(value), count=1)[:DIAGNOSTIC_CHARS]


def _report_address(value: str | None) -> str | None:
    """The address of ``rfc822; someone@example.net`` (any address type), bare lower-case."""
    if not value:
        return None
    addr = value.rpartition(";")[2].strip().strip("<>").strip().lower()
    return addr if "@" in addr and " " not in addr else None


def _returned_identity(part: Message, defects: Defects) -> tuple[str | None, list[str]]:
    """Message-ID and To: of a returned message (whole, or its headers only)."""
    payload = part.get_payload()
    inner: Message | None = None
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
    else:
        text = decode_bytes(decoded_payload(part, defects), "utf-8", "returned headers", defects)
        try:
            inner = HeaderParser(policy=email.policy.compat32).parsestr(text, headersonly=True)
        except Exception:
            inner = None
    if inner is None:
        return None, []
    ids = msg_ids(str(inner.get("message-id", "") or ""))
    to = lenient_addresses([str(v) for v in inner.get_all("to", [])])
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


def heuristic_report(
    identity: SenderHeaders, plain: list[str], html: list[str], returned: list[Message]
) -> Report | None:
    """A bounce without ``multipart/report`` (Exchange NDRs, qmail): what can be found in its
    text and HTML parts and the messages it returns (attached or as headers)."""
    from_addr = identity.claimed_sender or ""
    automatic = bool(_BOUNCE_SENDER.match(from_addr or "")) or identity.return_path == ""
    if not automatic or not _BOUNCE_SUBJECT.search(identity.subject):
        return None
    text = "\n".join(plain) or html_to_text(parseable("\n".join(html)), MAX_HTML).text
    lines = clean_text(text).split("\n")
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
    original_id, original_to = _copied_identity(copy, returned)
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
            return found.group(0), clean_line(line)[:DIAGNOSTIC_CHARS]
    return None


def _copied_identity(
    copy: list[str], returned: list[Message]
) -> tuple[str | None, tuple[str, ...]]:
    """Message-ID and To: of the returned message: attached, else copied into the text."""
    for inner in returned:
        ids = msg_ids(str(inner.get("message-id", "") or ""))
        if ids:
            returned_to = lenient_addresses([str(v) for v in inner.get_all("to", [])])
            return ids[0], tuple(dict.fromkeys(returned_to))
    msg_id = None
    to: list[str] = []
    for line in copy:
        name, _, value = line.partition(":")
        if name.strip().lower() == "message-id" and msg_id is None:
            found = msg_ids(value)
            msg_id = found[0] if found else None
        elif name.strip().lower() == "to":
            to.extend(lenient_addresses([value]))
    return msg_id, tuple(dict.fromkeys(to))
