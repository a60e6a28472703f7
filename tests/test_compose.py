"""The mail maildesk writes, as a recipient's mail program reads it.

Each composed mail is parsed back with ``email.policy.default`` and compared with what was meant
to be said: the decoded subject and sender, the headers in their order, the text of each part.
The wire form is held to the rules a strict receiver applies: CRLF only, folded header lines,
quoted-printable lines within 76 characters, nothing a sender wrote able to add a header.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import re
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maildesk import config
from maildesk.act.outbox import Mail, Mailer
from maildesk.config import Settings
from maildesk.mail.compose import Enclosure, clean_header
from maildesk.mail.compose import compose as compose_draft
from maildesk.mail.marks import LOOP_HEADER
from maildesk.mail.rendering import Rendered, Templates

COMPOSE = settings(
    max_examples=int(os.environ.get("COMPOSE_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
MESSAGE_ID = "md.0123456789abcdef0123.0123456789ab@example.com"
CUSTOMER = "customer@customer.test"
HOSTILE = ["\r\n", "\n", "\r", "\r\nBcc: victim@example.org", "\x00", "\t", "=?", "?=", '"', "\\"]
HOSTILE += ["From ", ".", "  ", "=", "ü", "€", "😀", "\u2028", "\u00a0", "<", ">", "(", ","]

text = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE), st.just("word " * 20)),
    max_size=12,
).map("".join)
long_lines = st.lists(
    st.sampled_from(["x" * 80, "ü" * 40 + " ", "a " * 40, ".", "From the desk", "=\t", "€" * 30]),
    max_size=6,
).map("\n".join)
message_ids = st.one_of(
    st.from_regex(r"[a-z0-9.$-]{1,40}@[a-z0-9.-]{1,30}", fullmatch=True),
    st.sampled_from(["a@b\r\nBcc: victim@example.org", "x" * 600 + "@long.test", "ümlaut@x.test"]),
)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("compose")
    data = {
        "desk": {"name": "Example Support", "address": "support@example.com", "data_dir": "data"},
        "mailboxes": [
            {
                "name": "support",
                "host": "127.0.0.1",
                "port": 143,
                "security": "none",
                "username": "support@example.com",
                "password": "secret",
                "team": "support",
            }
        ],
        "smtp": {"host": "127.0.0.1", "port": 25, "security": "none"},
        "teams": [{"name": "support"}],
    }
    return config.build(data, root / "maildesk.toml")


def compose(
    desk: Settings,
    mail: Mail,
    subject: str,
    text: str,
    html: str | None = None,
    name: str | None = None,
) -> bytes:
    if name is not None:
        desk = dataclasses.replace(desk, desk=dataclasses.replace(desk.desk, name=name))
    draft = Mailer(desk, Templates()).draft(mail, Rendered(subject, text, html), MESSAGE_ID, NOW)
    return compose_draft(draft)


def read(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        assert not part.defects, (part.defects, raw)
    return msg


def lines_of(text: str) -> str:
    """What a reader sees of a body: CRLF, CR and LF are all one line end."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def assert_wire_form(raw: bytes) -> None:
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", raw), "a bare CR or LF"
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        assert len(line) <= 998
        # longer than 78 only where there is no space to fold at
        rest = line.lstrip(b" ").split(b": ", 1)[-1]
        assert len(line) <= 78 or b" " not in rest, line
    for line in body.split(b"\r\n"):
        assert len(line) <= 76, line


def expected_headers(mail: Mail, html: str | None) -> list[str]:
    names = ["From", "To", "Subject", "Date", "Message-ID"]
    names += ["In-Reply-To"] if mail.in_reply_to else []
    names += ["References"] if any(mail.references) else []
    names += ["Reply-To"] if mail.reply_to else []
    if mail.automatic:
        names += ["Auto-Submitted", "X-Auto-Response-Suppress", "Precedence"]
    names += [LOOP_HEADER, "MIME-Version", "Content-Type"]
    return names if html is not None else [*names, "Content-Transfer-Encoding"]


@COMPOSE
@given(
    subject=st.one_of(text, st.just("Bestellung verzögert " * 30), st.just("=?utf-8?q?x?=")),
    name=st.one_of(st.just("Example Support"), text.filter(lambda n: clean_header(n, 200))),
    body=st.one_of(text, long_lines),
    html=st.none() | st.one_of(text, long_lines),
    in_reply_to=st.none() | message_ids,
    references=st.lists(message_ids, max_size=25),
    automatic=st.booleans(),
    to_agent=st.booleans(),
)
def test_a_recipient_reads_what_was_written(
    desk: Settings,
    subject: str,
    name: str,
    body: str,
    html: str | None,
    in_reply_to: str | None,
    references: list[str],
    automatic: bool,
    to_agent: bool,
) -> None:
    mail = Mail(
        kind="notice",
        template="agent_new",
        to=CUSTOMER,
        automatic=automatic,
        reply_to="support+reply@example.com",
        in_reply_to=in_reply_to,
        references=tuple(references),
        to_agent=to_agent,
    )
    raw = compose(desk, mail, subject, body, html, name)
    assert_wire_form(raw)
    msg = read(raw)

    # a notice to an agent without an HTML template gets an HTML part made from its text
    made = html is None and to_agent
    assert list(msg.keys()) == expected_headers(mail, "" if made else html)
    # a value cut to its limit may end in a space, which a plain header value cannot keep
    assert msg["Subject"].strip() == (clean_header(subject, 900) or clean_header(name, 200)).strip()
    for sender in (msg["From"], msg["Reply-To"]):
        [address] = sender.addresses
        assert address.display_name.strip() == clean_header(name, 200).strip()
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["Reply-To"].addresses[0].addr_spec == "support+reply@example.com"
    assert msg["To"].addresses[0].addr_spec == CUSTOMER
    assert msg["Message-ID"] == f"<{MESSAGE_ID}>"
    if in_reply_to:
        assert msg["In-Reply-To"] == f"<{clean_header(in_reply_to, 500)}>"
    refs = [f"<{clean_header(r, 500)}>" for r in references if r][-20:]
    assert (msg["References"] or "") == " ".join(refs)
    assert msg["Precedence"] == (None if not automatic else "bulk" if to_agent else "auto_reply")

    plain = msg.get_body(("plain",))
    assert plain is not None and lines_of(plain.get_content()) == lines_of(body)
    if html is None and not made:
        assert msg.get_content_type() == "text/plain"
    else:
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        rich = msg.get_body(("html",))
        assert rich is not None
        if html is not None:
            assert lines_of(rich.get_content()) == lines_of(html)
    for part in msg.walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
            assert part.get_content_charset() == "utf-8"
    assert "victim@example.org" not in str(msg.get("Bcc", ""))


@pytest.mark.parametrize(
    ("subject", "seen"),
    [
        ("[#12] Printer on fire", "[#12] Printer on fire"),
        ("Re: Bestellung – verzögert", "Re: Bestellung – verzögert"),
        ("Hi\r\nBcc: victim@example.org", "Hi Bcc: victim@example.org"),
        # text that looks like an encoded word reaches the reader as it was written
        ("=?UTF-8?Q?Hi=0ABcc:_victim@example.org?=", "=?UTF-8?Q?Hi=0ABcc:_victim@example.org?="),
        ("😀 " * 60, ("😀 " * 60).strip()),
        ("Долгая тема письма " * 12, ("Долгая тема письма " * 12).strip()),
        ("x" * 300, "x" * 300),
        ("  \r\n  ", "Example Support"),
    ],
)
def test_subjects(desk: Settings, subject: str, seen: str) -> None:
    raw = compose(desk, Mail(kind="ack", template="ack", to=CUSTOMER), subject, "Hello\n")
    assert_wire_form(raw)
    msg = read(raw)
    assert msg["Subject"] == seen
    assert not re.search(rb"(?im)^bcc:", raw.split(b"\r\n\r\n", 1)[0])


@pytest.mark.parametrize(
    "name",
    ["Kundendienst Müller & Co. (Support)", 'The "Best" Desk, Inc.', "Ünïcödé " * 12, "=?x?="],
)
def test_display_names(desk: Settings, name: str) -> None:
    raw = compose(desk, Mail(kind="ack", template="ack", to=CUSTOMER), "Hi", "Hello\n", name=name)
    assert_wire_form(raw)
    [address] = read(raw)["From"].addresses
    assert (address.display_name, address.addr_spec) == (name.strip(), "support@example.com")


def test_bodies_keep_every_line(desk: Settings) -> None:
    body = (
        "From the desk\n.\n..\ntrailing spaces   \ntrailing tab\t\n"
        + "a long line that goes on " * 10
        + "\n= sign and =3D\r\nCR only\rend"
    )
    html = "<p>" + "ü" * 200 + "</p>\n"
    raw = compose(desk, Mail(kind="ack", template="ack", to=CUSTOMER), "Hi", body, html)
    assert_wire_form(raw)
    msg = read(raw)
    plain, rich = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and rich is not None
    assert lines_of(plain.get_content()) == lines_of(body)
    assert lines_of(rich.get_content()) == html
    boundary = msg.get_boundary()
    assert boundary
    for part in msg.iter_parts():
        assert boundary not in str(part.get_payload())


def test_an_empty_text_is_an_empty_part(desk: Settings) -> None:
    raw = compose(desk, Mail(kind="ack", template="ack", to=CUSTOMER), "Hi", "")
    assert read(raw).get_content() == ""


@pytest.mark.parametrize(
    "address",
    ["a b@example.com", "a@example.com\r\nBcc: x@y", "no-at-sign", "a<b@example.com", "a@b;c@d"],
)
def test_unsafe_addresses_are_refused(desk: Settings, address: str) -> None:
    with pytest.raises(ValueError, match="unsafe address"):
        compose(desk, Mail(kind="ack", template="ack", to=address), "Hi", "Hello\n")
    reply = Mail(kind="notice", template="agent_new", to=CUSTOMER, reply_to=address)
    with pytest.raises(ValueError, match="unsafe address"):
        compose(desk, reply, "Hi", "Hello\n")


@pytest.mark.parametrize("address", ["José.Núñez@exämple.test", "ünal@example.com", "jo@bücher.de"])
def test_a_non_ascii_address_is_written_as_utf8_not_as_an_encoded_word(
    desk: Settings, address: str
) -> None:
    raw = compose(desk, Mail(kind="ack", template="ack", to=address), "Grüße", "Hallo\n")
    assert_wire_form(raw)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert f"\r\nTo: {address}\r\n".encode() in head  # RFC 6532: UTF-8 in the header itself
    assert b"=?" not in head.split(b"\r\nSubject:")[0]
    msg = read(raw)
    assert str(msg["To"]) == address  # (CPython reads the header whole, not yet its parts)
    assert msg["Subject"] == "Grüße"
    # only the address is 8-bit: every other header reads the same in a plain ASCII reader
    assert [line for line in head.split(b"\r\n") if not line.isascii()] == [
        f"To: {address}".encode()
    ]


@COMPOSE
@given(
    name=text,
    ctype=st.sampled_from(
        ["application/pdf", "image/png", "text/plain", "message/rfc822", "bad type\r\nX: y", ""]
    ),
    data=st.binary(max_size=3000),
    html=st.sampled_from([None, "<p>Attached.</p>", '<img src="cid:logo.1@example.com">']),
)
def test_a_file_arrives_byte_for_byte_under_any_name(
    desk: Settings, name: str, ctype: str, data: bytes, html: str | None
) -> None:
    files = (
        Enclosure(name, ctype, data),
        Enclosure("logo.png", "image/png", b"\x89PNG" + data[:50], "logo.1@example.com"),
    )
    mail = Mail(kind="reply", template="reply", to=CUSTOMER, attachments=files)
    raw = compose(desk, mail, "Re: invoice", "Attached.\n", html)
    msg = read(raw)
    attached = list(msg.iter_attachments())
    assert attached[0].get_payload(decode=True) == data
    # (read by the compat32 parser: policy.default drops the quotes around an RFC 2231 value
    # that begins and ends with one, which names from the intake never have)
    [compat] = [
        p
        for p in email.message_from_bytes(raw).walk()
        if p.get_filename() is not None and p["Content-ID"] is None
    ]
    assert compat.get_filename() == (clean_header(name, 255).strip() or "attachment")
    [logo] = [p for p in msg.walk() if p["Content-ID"] == "<logo.1@example.com>"]
    assert logo.get_payload(decode=True) == b"\x89PNG" + data[:50]
    # beside the HTML part that shows it, else an attachment like any other
    shown = html is not None and "cid:" in html
    assert (logo.get_content_disposition() == "inline") is shown
    if shown:
        [related] = [p for p in msg.walk() if p.get_content_type() == "multipart/related"]
        assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]
    assert msg.get_body(("plain",)).get_content().startswith("Attached.")
