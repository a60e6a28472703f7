"""One MIME part read without raising: type, disposition, filename, decoded bytes; attachments.

Used by the MIME walk (``mime``) and the report reader (``dsn``) on the tree mail-parser built.
Payloads are decoded (broken base64 salvaged and recorded; a body ``mime`` lifted out of the
bytes is decoded straight from them), and an attachment becomes an ``ParsedAttachment`` with a
display-safe filename (``safe_filename``), its whole payload (none over
``max_attachment_bytes``), its size and its SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from email.message import Message

from maildesk.mail.parse.limits import Limits
from maildesk.mail.parse.text import NAME_BYTES, Defects, clean_line, decoded

MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: same answer on every machine
# parts a report is made of: read by ``dsn``, never shown as text or kept as attachments
REPORT_PARTS = frozenset(
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
MESSAGE_PARTS = frozenset({"message/rfc822", "message/global"})


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
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
    # the part's Content-ID without its angle brackets ("" when none): what an HTML part
    # names it by (``cid:``)
    content_id: str = ""


def lowered(getter: object, default: str) -> str:
    try:
        value = getter()  # type: ignore[operator]
        return str(value).lower() if value else default
    except Exception:
        return default


def disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def raw_filename(part: Message) -> str:
    """The raw (unsafe) filename, RFC 2231 and RFC 2047 decoded; "" when there is none."""
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # an RFC 2231 value get_param could not decode
        name = email.utils.collapse_rfc2231_value(name)
    return decoded(str(name))


def decoded_payload(part: Message, defects: Defects) -> bytes:
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


def _base64(part: Message, defects: Defects) -> bytes:
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
    defects.add(f"broken base64 in {raw_filename(part) or part.get_content_type()}")
    return base64.b64decode(clean + b"=" * (-len(clean) % 4))


def attachment_of(
    part: Message, ctype: str, data: bytes, limits: Limits, fallback_name: str = ""
) -> ParsedAttachment:
    raw_name = raw_filename(part) or fallback_name
    how = disposition(part)
    inline = how == "inline" or (not how and part.get("content-id") is not None)
    return make_attachment(raw_name, ctype, data, limits, inline, content_id_of(part))


_CONTENT_ID = re.compile(r"[!-~]{1,250}")  # printable ASCII, no spaces: a msg-id's characters


def content_id_of(part: Message) -> str:
    """The part's Content-ID without angle brackets; "" when it has none, or one not fit to be
    written into a header again."""
    try:
        value = str(part.get("content-id") or "").strip().strip("<>").strip()
    except Exception:
        return ""
    return value if _CONTENT_ID.fullmatch(value) and "<" not in value and ">" not in value else ""


def make_attachment(
    raw_name: str,
    ctype: str,
    data: bytes,
    limits: Limits,
    inline: bool = False,
    content_id: str = "",
) -> ParsedAttachment:
    size = len(data)
    dropped = size > limits.max_attachment_bytes
    return ParsedAttachment(
        filename=safe_filename(raw_name, ctype),
        content_type=clean_line(ctype, 255).lower() or "application/octet-stream",
        payload=b"" if dropped else data,
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        inline=inline,
        dropped=dropped,
        content_id=content_id,
    )


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
    return _fit_bytes(text, NAME_BYTES)


def _extension(content_type: str) -> str:
    ctype = (content_type or "").lower()
    if ctype in _EXTENSIONS:
        return _EXTENSIONS[ctype]
    return MIME_TYPES.guess_extension(ctype, strict=False) or ""


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
