"""Generated MIME trees and byte soup: ``parse`` never raises and its values stay clean.

Trees vary depth, width, charsets (real, unknown, mislabelled), transfer encodings (valid and
broken), encoded words and CR/LF/NUL in every place a header or name can hold them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import quopri
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildesk.mail.inbound import Inbound, Limits, parse
from maildesk.mail.parse.parts import safe_filename
from maildesk.mail.parse.text import strip_quoted_history

FUZZ = settings(
    max_examples=int(os.environ.get("INBOUND_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = Limits(max_mime_depth=6, max_parts=40, max_attachment_bytes=2048)

CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "iso-2022-jp", "x-unknown-charset", "", "base64"]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"]
HOSTILE = ["\r\n", "\n", "\r", "\x00", "\u202e", "\u200b", "../", "..\\", "C:", "\t", '"', "=?"]

text = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=8), st.sampled_from(HOSTILE)),
    max_size=8,
).map("".join)


@st.composite
def encoded_words(draw: st.DrawFn) -> str:
    """A header value mixing plain text with RFC 2047 words (some broken)."""
    chunks = []
    for _ in range(draw(st.integers(0, 4))):
        value = draw(text)
        charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "x-unknown-charset", "bogus"]))
        data = value.encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            word = base64.b64encode(data).decode()
            if draw(st.booleans()):
                word = word[:-1]  # broken padding
            chunks.append(f"=?{charset}?B?{word}?=")
        else:
            chunks.append(f"=?{charset}?Q?{quopri.encodestring(data, header=True).decode()}?=")
        chunks.append(draw(text))
    return " ".join(chunks)


def _encode_body(data: bytes, cte: str, broken: bool) -> bytes:
    if cte == "base64":
        out = base64.encodebytes(data)
        return out[:-3] + b"!*" if broken and out else out
    if cte == "quoted-printable":
        out = quopri.encodestring(data)
        return out + b"=Z" if broken else out
    return data


@st.composite
def leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(
        st.sampled_from(
            ["text/plain", "text/html", "application/pdf", "image/png", "application/ms-tnef"]
            + ["message/delivery-status", "text/rfc822-headers", "application/octet-stream"]
        )
    )
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    body = draw(st.one_of(text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()))
    headers = [f"Content-Type: {ctype}" + (f'; charset="{charset}"' if charset else "")]
    headers.append(f"Content-Transfer-Encoding: {cte}")
    if draw(st.booleans()):
        name = draw(st.one_of(text, encoded_words()))
        style = draw(st.sampled_from(["plain", "2231", "2047"]))
        if style == "2231":
            quoted = "".join(f"%{b:02X}" for b in name.encode("utf-8", "surrogatepass"))
            headers.append(f"Content-Disposition: attachment; filename*=UTF-8''{quoted}")
        else:
            headers.append(f'Content-Disposition: attachment; filename="{name}"')
    head = "\r\n".join(headers).encode("utf-8", "surrogatepass")
    return head + b"\r\n\r\n" + _encode_body(body, cte, draw(st.booleans()))


def tree(max_leaves: int = 12) -> st.SearchStrategy[bytes]:
    def extend(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        return st.builds(
            _multipart,
            st.lists(children, min_size=0, max_size=4),
            st.sampled_from(["mixed", "alternative", "related", "report"]),
            st.integers(0, 10**6),
            st.booleans(),
        ) | st.builds(_rfc822, children)

    return st.recursive(leaf(), extend, max_leaves=max_leaves)


def _multipart(children: list[bytes], subtype: str, seed: int, close: bool) -> bytes:
    boundary = b"b%d" % seed
    head = b'Content-Type: multipart/%s; boundary="%s"' % (subtype.encode(), boundary)
    if subtype == "report":
        head += b"; report-type=delivery-status"
    body = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    return head + b"\r\n\r\n" + body + (b"--" + boundary + b"--\r\n" if close else b"")


def _rfc822(child: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + child


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    lines = [
        f"From: {draw(st.one_of(text, encoded_words()))} <{draw(text)}@example.org>",
        f"Subject: {draw(encoded_words())}",
        f"Message-ID: <{draw(text)}@example.org>",
        f"To: {draw(text)}, {draw(encoded_words())} <x@example.net>",
    ]
    extra = draw(
        st.lists(st.tuples(st.sampled_from(["X-A", "Received", "Date"]), text), max_size=5)
    )
    lines += [f"{name}: {value}" for name, value in extra]
    head = "\r\n".join(draw(st.permutations(lines))).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        head = head.replace(b"\xc3", b"\xe9")  # raw 8-bit, not UTF-8
    return head + b"\r\nMIME-Version: 1.0\r\n" + draw(tree())


def assert_sound(m: Inbound) -> None:
    assert isinstance(m, Inbound)
    # internal errors are caught so parse never raises; none should happen at all
    assert not [d for d in m.defects if d.startswith(("parser error", "a MIME part could"))]
    for value in (m.subject, m.sender_name, m.from_raw, *[v for _, v in m.headers]):
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in value), repr(value)
    assert len(m.subject) <= 998
    for address in (*m.to, *m.cc, *m.delivered_to, *([m.sender] if m.sender else [])):
        # ASCII addresses are lowercased; a non-ASCII local part is kept as written (SMTPUTF8)
        local, at, domain = address.rpartition("@")
        assert at and domain == domain.lower()
        assert local == local.lower() or not local.isascii()
    assert "\r" not in m.text and "\x00" not in m.text
    for a in m.attachments:
        assert a.filename and "/" not in a.filename and "\\" not in a.filename
        assert not a.filename.startswith(".") and len(a.filename.encode()) <= 255
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in a.filename)
        assert a.dropped or hashlib.sha256(a.payload).hexdigest() == a.sha256
        assert a.dropped or a.size == len(a.payload)


@FUZZ
@given(messages())
def test_generated_mime_trees_parse_cleanly(raw: bytes) -> None:
    assert_sound(parse(raw))
    assert_sound(parse(raw, SMALL))
    assert_sound(parse(raw.replace(b"\r\n", b"\n")))


@FUZZ
@given(st.binary(max_size=4096))
def test_byte_soup_never_raises(raw: bytes) -> None:
    assert_sound(parse(raw))
    assert_sound(
        parse(b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" + raw)
    )


@FUZZ
@given(text)
def test_any_filename_becomes_display_safe(name: str) -> None:
    safe = safe_filename(name, "application/pdf")
    assert safe and "/" not in safe and "\\" not in safe and not safe.startswith(".")
    assert len(safe.encode()) <= 255
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in safe)


@FUZZ
@given(st.lists(st.one_of(text, st.sampled_from(["> quoted", "On 1 Jan 2024, X wrote:", "-- "]))))
def test_quote_stripping_only_ever_removes_lines(lines: list[str]) -> None:
    source = "\n".join(lines)
    kept = strip_quoted_history(source)
    assert len(kept) <= len(source) + 1
    assert "\r" not in kept and "\x00" not in kept
