"""The MIME tree: built by mail-parser, walked once and iteratively; TNEF unpacked within bounds.

The third step of ``inbound.parse``, once ``limits`` has bounded the tree's shape on the bytes:
``mime_tree`` builds it (large base64 bodies lifted out of the bytes first, so that memory stays
near the attachment's size), and ``walk`` visits every part without recursion and fills a
``Body``: text and HTML parts, attachments (``parts``), attached and returned messages kept
whole, the first ``multipart/report`` (``dsn``). An Outlook ``winmail.dat`` is given to
tnefparse only once ``_TnefCheck`` has walked it as tnefparse will and found every count in it
within its bytes.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

import mailparser
import tnefparse
import tnefparse.codepage
import tnefparse.mapi
import tnefparse.properties

from maildesk.mail.parse.dsn import Report, read_report
from maildesk.mail.parse.limits import Limits, limit_reason
from maildesk.mail.parse.parts import (
    MESSAGE_PARTS,
    MIME_TYPES,
    REPORT_PARTS,
    ParsedAttachment,
    attachment_of,
    decoded_payload,
    disposition,
    lowered,
    make_attachment,
    raw_filename,
)
from maildesk.mail.parse.text import Defects, clean_line, decode_bytes, decoded

# mail-parser warns through logging about every part type it does not show (delivery reports...);
# those parts are ours to read, so its chatter is noise in the daemon's log.
logging.getLogger("mailparser").setLevel(logging.ERROR)
# tnefparse logs a line per property it cannot read (a hostile winmail.dat has billions): what
# matters is recorded as the message's defects instead.
logging.getLogger("tnefparse").setLevel(logging.CRITICAL + 1)

_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


class Body:
    """What the walk finds; filled in place, then frozen into the ``Inbound``."""

    def __init__(self) -> None:
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.report: Report | None = None
        self.returned: list[Message] = []  # headers of messages returned inside the message
        self.content_type = ""


def mime_tree(raw: bytes, defects: Defects) -> Message | None:
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
            nested = inside_message or part.get_content_type() in MESSAGE_PARTS
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


_Item = tuple[Message, int, int, bool, bool]  # part, depth, message level, attached, counted only


def walk(root: Message, limits: Limits, body: Body, defects: Defects) -> str | None:
    """One iterative pass: bodies, attachments, reports; returns the fatal reason, if any."""
    body.content_type = lowered(root.get_content_type, "text/plain")
    stack: list[_Item] = [(root, 1, 0, False, False)]
    parts = 0
    while stack:
        item = stack.pop()
        parts += 1
        reason = limit_reason(limits, item[1], parts, item[2])
        if reason:
            return reason
        try:
            stack.extend(reversed(_visit(item, body, limits, defects)))
        except Exception as exc:  # one broken part must not lose the others
            defects.add(f"a MIME part could not be read ({type(exc).__name__})")
        _collect_defects(item[0], defects)
    return None


def _visit(item: _Item, body: Body, limits: Limits, defects: Defects) -> list[_Item]:
    """Handle one part; return its children to visit (inside messages: counted only)."""
    part, depth, level, attached, counted_only = item
    ctype = lowered(part.get_content_type, "application/octet-stream")
    children = part.get_payload() if part.is_multipart() else None
    if not isinstance(children, list):
        if not counted_only and ctype not in REPORT_PARTS:
            _leaf(part, ctype, attached, body, limits, defects)
        return []
    if ctype.startswith("multipart/"):
        if ctype == "multipart/report" and body.report is None and not counted_only:
            body.report = read_report(part, defects)
        attached = attached or disposition(part) == "attachment"
        return [(c, depth + 1, level, attached, counted_only) for c in _parts(children)]
    if ctype in REPORT_PARTS:
        return []
    if ctype in MESSAGE_PARTS:
        level += 1
        if not counted_only:
            _keep_message(part, body, limits, defects)
    return [(c, depth + 1, level, True, True) for c in _parts(children)]


def _parts(children: Sequence[object]) -> list[Message]:
    return [c for c in children if isinstance(c, Message)]


def _leaf(
    part: Message, ctype: str, attached: bool, body: Body, limits: Limits, defects: Defects
) -> None:
    """A leaf part: body text when it is one, otherwise an attachment."""
    is_text = ctype in ("text/plain", "text/html")
    if is_text and not attached and disposition(part) != "attachment" and not raw_filename(part):
        data = decoded_payload(part, defects)
        text = decode_bytes(data, part.get_content_charset(), f"{ctype} part", defects)
        (body.plain if ctype == "text/plain" else body.html).append(text)
        return
    if ctype in _TNEF_TYPES or raw_filename(part).lower() == "winmail.dat":
        body.attachments.extend(_tnef(part, limits, defects, len(body.attachments)))
        return
    body.attachments.append(attachment_of(part, ctype, decoded_payload(part, defects), limits))


def _keep_message(part: Message, body: Body, limits: Limits, defects: Defects) -> None:
    """An attached or returned message: kept whole as an ``.eml`` attachment."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        body.attachments.append(
            attachment_of(part, "message/rfc822", decoded_payload(part, defects), limits)
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
    if not raw_filename(part):
        subject = clean_line(decoded(str(inner.get("subject", "") or "")), 200)
        stem = re.sub(r"[^\w\s.,()\[\]#&+-]", "", subject).strip() or "message"
        body.attachments.append(attachment_of(part, "message/rfc822", data, limits, stem + ".eml"))
        return
    body.attachments.append(attachment_of(part, "message/rfc822", data, limits))


def _collect_defects(part: Message, defects: Defects) -> None:
    for defect in getattr(part, "defects", ()):
        defects.add(f"MIME: {type(defect).__name__}")


def _tnef(part: Message, limits: Limits, defects: Defects, count: int) -> list[ParsedAttachment]:
    """The files inside an Outlook ``winmail.dat``; the file itself when it cannot be read."""
    data = decoded_payload(part, defects)
    opaque = [attachment_of(part, "application/ms-tnef", data, limits, "winmail.dat")]
    refusal = _TnefCheck(len(data)).refusal(data)
    if refusal:
        defects.add(f"winmail.dat could not be unpacked ({refusal}); kept as is")
        return opaque
    try:
        tnef = tnefparse.TNEF(data, do_checksum=True)
        if not all(getattr(obj, "good_checksum", True) for obj in tnef.objects):
            defects.add("winmail.dat has checksum errors")
        found: list[ParsedAttachment] = []
        for item in tnef.attachments:
            payload = item.data if isinstance(item.data, bytes) else b""
            name = item.long_filename()
            if isinstance(name, bytes):
                name = decode_bytes(name, "cp1252", "winmail.dat name", None, quiet=True)
            if count + len(found) >= limits.max_parts:
                defects.add("winmail.dat holds too many files; the rest were left inside")
                break
            ctype = MIME_TYPES.guess_type(str(name).strip("\x00"), strict=False)[0]
            found.append(
                make_attachment(str(name), ctype or "application/octet-stream", payload, limits)
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
