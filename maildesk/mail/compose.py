"""Compose a message's bytes: headers cleaned, text and/or HTML, threading headers, files.

Below the outbox: ``outbox.Mailer`` renders a mail's templates and hands the values here as a
``Draft``; ``compose`` returns the bytes the outbox row keeps and SMTP sends. Every header value
is a cleaned single-line ``str`` (nothing a sender wrote can add a header), encoded as RFC 2047
words where it is not plain ASCII. Written directly rather than through the email package's
generator: its header folding cost more than the rest of enqueueing, and the structure here is
fixed and small. Also here: check-config's probe, composed as every mail is.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
import secrets
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.parser import BytesHeaderParser
from email.utils import format_datetime, formataddr
from urllib.parse import quote

from maildesk.config import Settings
from maildesk.mail.marks import LOOP_HEADER, bounce_address, own_message_id, probe_address
from maildesk.store import Kept

CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def clean_header(value: str, limit: int = 900) -> str:
    """A single-line, control-free header value: nothing a sender wrote can add a header."""
    value = CONTROL.sub(" ", unicodedata.normalize("NFC", value))
    value = re.sub(r"\s+", " ", value).strip()
    return value[:limit]


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a file's base64 lines go in a mail composed without them: the bytes ``mark``
    stand in their place until the mail is sent (``outbox`` puts the file in). "=_" never
    occurs in quoted-printable text or in base64, so a mark is never taken for either."""

    mark: bytes


@dataclass(frozen=True, slots=True)
class Enclosure:
    """A file an outgoing mail carries: its name (display text, as kept), its type and its
    bytes, given or read from ``data`` (a file of the blob store) when the mail is composed.
    ``content_id``: an inline image that the HTML part shows by ``cid:``; it travels with the
    HTML part in ``multipart/related`` (in a mail without HTML, as any other file)."""

    filename: str
    content_type: str
    data: bytes | Kept | Mark
    content_id: str = ""

    def payload(self) -> bytes:
        if isinstance(self.data, Mark):
            raise TypeError("a marked file has no bytes until the mail is sent")
        return self.data if isinstance(self.data, bytes) else self.data.read_bytes()


@dataclass(frozen=True, slots=True)
class Draft:
    """Everything the bytes of one outgoing message are made from.

    ``sender_name`` is the display name of From and Reply-To (and the subject when the subject
    cleans to nothing). ``auto_submitted``: the Auto-Submitted value of automatic mail, which
    also gets ``X-Auto-Response-Suppress`` and ``Precedence``; None for a person's answer.
    ``loop_id`` goes in the loop header every mail of ours carries."""

    sender_name: str
    sender: str
    to: str
    subject: str
    text: str | None
    html: str | None
    message_id: str  # without angle brackets
    date: datetime
    loop_id: str
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    auto_submitted: str | None = None
    precedence: str = "auto_reply"  # "bulk" for mail to agents
    attachments: tuple[Enclosure, ...] = ()
    cc: tuple[str, ...] = ()


def compose(draft: Draft) -> bytes:
    """The message as bytes: CRLF line ends, folded headers, quoted-printable UTF-8 parts
    (``multipart/alternative`` when it has both text and HTML); with files, base64 parts in
    ``multipart/mixed`` (inline images in ``multipart/related`` with the HTML part). Raises
    ``ValueError`` for an address that cannot be put in a header safely."""
    headers = _headers(draft)
    head = "".join(
        _header(name, value)
        if value.isascii() or name not in _ADDRESSES
        else f"{name}: {value}\r\n"
        for name, value in headers
    )
    # UTF-8 only in the To or Cc of mail to a non-ASCII address, which goes out with SMTPUTF8
    head_bytes = (head + "MIME-Version: 1.0\r\n").encode("utf-8")
    text, html = draft.text, draft.html
    if draft.attachments:
        return head_bytes + _with_files(text, html, draft.attachments)
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


def _with_files(text: str | None, html: str | None, files: Sequence[Enclosure]) -> bytes:
    """The body of a mail with files: its words first, then each file. Inline images the
    HTML part shows (``cid:``) go with it (``multipart/related``); the rest are attachments,
    an image it does not show too (an operator's template without it), which many readers
    would hide beside it."""
    shown = (html or "").lower()
    related = [f for f in files if _CID.fullmatch(f.content_id) and _shows(shown, f)]
    attached = [f for f in files if not any(f is r for r in related)]
    html_part = _text_part(html, "html") if html is not None else None
    if html_part is not None and related:
        parts = [html_part, *(_file_part(f, inline=True) for f in related)]
        html_part = _multipart('related;\r\n type="text/html"', parts)
    if html_part is None:
        words = _text_part(text or "", "plain")
    elif text is None:
        words = html_part
    else:
        words = _multipart("alternative", [_text_part(text, "plain"), html_part])
    if not attached:
        return words
    return _multipart("mixed", [words, *(_file_part(f, inline=False) for f in attached)])


def _shows(html: str, file: Enclosure) -> bool:
    return f"cid:{file.content_id.lower()}" in html


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    """A multipart entity of ``parts`` (each its headers and body). "=_" never occurs in
    quoted-printable text or in base64, so the boundary cannot collide with a part."""
    boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    out = [b'Content-Type: multipart/%s;\r\n boundary="%s"\r\n\r\n' % (subtype.encode(), boundary)]
    for part in parts:
        out += (b"--%s\r\n" % boundary, part, b"\r\n")
    out.append(b"--%s--\r\n" % boundary)
    return b"".join(out)


_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_PLAIN_NAME = re.compile(r"[ -~]{1,200}")
_CID = re.compile(r"[!-;=?-~]{1,250}")  # printable ASCII but "<" and ">": written in <...>


def _file_part(file: Enclosure, *, inline: bool) -> bytes:
    """One file as a base64 part, its bytes exactly as given. The name is written for every
    reader: quoted where it is plain ASCII, else as an RFC 2231 parameter (and as encoded words
    in ``name``, which older readers show)."""
    ctype = file.content_type.lower() if _MIME_TYPE.fullmatch(file.content_type.lower()) else ""
    if ctype.startswith(("message/", "multipart/")):  # never base64 in MIME (RFC 2046): an
        ctype = ""  # attached mail goes as a file of bytes, its name (.eml) saying what it is
    name = clean_header(file.filename, 255).strip() or "attachment"
    if _PLAIN_NAME.fullmatch(name) and '"' not in name and "\\" not in name:
        shown, given = f'name="{name}"', f'filename="{name}"'
    else:
        shown = f'name="{_words(name, whole=True)}"'
        given = f"filename*=utf-8''{quote(name, safe='')}"
    how = "inline" if inline else "attachment"
    head = f"Content-Type: {ctype or 'application/octet-stream'};\r\n {shown}\r\n"
    head += f"Content-Disposition: {how};\r\n {given}\r\n"
    head += "Content-Transfer-Encoding: base64\r\n"
    if _CID.fullmatch(file.content_id):
        head += f"Content-ID: <{file.content_id}>\r\n"
    if isinstance(file.data, Mark):
        return head.encode("ascii") + b"\r\n" + file.data.mark + b"\r\n"
    return head.encode("ascii") + b"\r\n" + base64_lines(file.payload())


def base64_lines(data: bytes) -> bytes:
    """A file's bytes as a base64 part's body: lines of 76 characters, each ending CRLF."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _headers(draft: Draft) -> list[tuple[str, str]]:
    """The header fields before MIME-Version, in order, their values cleaned."""
    headers = [
        ("From", _address(clean_header(draft.sender_name, 200), draft.sender)),
        ("To", _address("", draft.to)),  # a non-ASCII address is written as UTF-8 (RFC 6532)
        *([("Cc", ", ".join(_address("", a) for a in draft.cc))] if draft.cc else []),
        (
            "Subject",
            _encoded(clean_header(draft.subject, 900) or clean_header(draft.sender_name, 200)),
        ),
        ("Date", format_datetime(draft.date)),
        ("Message-ID", f"<{draft.message_id}>"),
    ]
    if draft.in_reply_to:
        headers.append(("In-Reply-To", f"<{clean_header(draft.in_reply_to, 500)}>"))
    refs = [clean_header(r, 500) for r in draft.references if r]
    if refs:
        headers.append(("References", " ".join(f"<{r}>" for r in refs[-20:])))
    if draft.reply_to:
        headers.append(("Reply-To", _address(clean_header(draft.sender_name, 200), draft.reply_to)))
    if draft.auto_submitted is not None:
        headers.append(("Auto-Submitted", draft.auto_submitted))
        headers.append(("X-Auto-Response-Suppress", "All"))
        headers.append(("Precedence", draft.precedence))
    headers.append((LOOP_HEADER, draft.loop_id))
    return headers


_ADDRESSES = ("To", "Cc")  # written as they are: a non-ASCII address as UTF-8, never folded
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


def subject_of(body: bytes) -> str:
    """The subject of a mail the desk composed (``body`` as in its outbox row), decoded."""
    head = body.split(b"\r\n\r\n", 1)[0]
    message = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return clean_header(str(message.get("subject", "")))


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
    """The probe, composed at ``now`` with a fresh Message-ID."""
    desk = settings.desk
    message_id = own_message_id(desk.secret, desk.domain)
    to = probe_address(desk.address, message_id)
    text = (
        f"maildesk check-config sent this message to prove that mail to {to} reaches the\n"
        "desk's mailbox, as agents' replies and bounces must. It deletes it once found; if\n"
        "you see it, check-config stopped early, and the desk ignores it.\n"
    )
    draft = Draft(
        sender_name=desk.name,
        sender=desk.address,
        to=to,
        subject="maildesk check-config probe",
        text=text,
        html=None,
        message_id=message_id,
        date=now,
        loop_id=desk.loop_id,
        auto_submitted="auto-generated",
        precedence="bulk",
    )
    body = compose(draft)
    return ProbeMail(message_id, bounce_address(desk.secret, desk.address, message_id), to, body)
