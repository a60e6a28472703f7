"""Hostile input: traversal, header injection, template and HTML injection, broken mail.

Each attack goes through the real daemon and the real servers; the test looks at the data
directory on disk, the mail at the SMTP sink and the folders on the IMAP server.
"""

from __future__ import annotations

import base64
import email.policy
import os
import re
import secrets
import sysconfig
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maildesk.act.notices import NOTICE_TEXT_CHARS
from maildesk.models import Ledger
from tests import poison
from tests.desk import (
    ALICE,
    CUSTOMER,
    DeskWorld,
    agent_reply,
    customer_mail,
    html_of,
    text_of,
    wait_until,
)
from tests.loopback import ScriptedSmtp
from tests.servers import DovecotServer, ImapAccount, fresh_user

MAIL = Path(__file__).parent / "mail"
CPYTHON_MAIL = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables=LIMITS)
    yield w
    w.close()


LIMITS = {"limits": {"max_attachment_bytes": 20000}}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_attachment_names_cannot_escape_the_store(world: DeskWorld, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    escape_dir = Path(f"/tmp/maildesk-escape-{tag}")
    # filename parameters as a hostile client writes them (quoted or RFC 2231 percent-encoded)
    names = [
        f'filename="../../../../../../tmp/maildesk-escape-{tag}/evil.sh"',
        f'filename="/tmp/maildesk-escape-{tag}/absolute.sh"',
        'filename="..\\..\\windows\\system32\\evil.dll"',
        "filename*=UTF-8''nul%00byte.txt",
        "filename*=UTF-8''bell%07and%1B%5B31mescape%0D%0ABcc%3A%20x%40y.test.txt",
        "filename*=UTF-8''%E2%80%AEtxt.exe",
        f"filename*=UTF-8''..%2F..%2F{'x' * 5000}.pdf",
        'filename=".hidden"',
        'filename=".."',
        'filename="<img src=x onerror=alert(1)>.pdf"',
    ]
    boundary = "hostile-names"
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n",
        *(
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; {name}\r\n\r\npayload\r\n"
            for name in names
        ),
        # one attachment too big to keep, with a hostile name: listed, refused, named in the ack
        f"--{boundary}\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="<img src=x onerror=alert(1)>big.pdf"\r\n\r\n'
        + base64.encodebytes(os.urandom(30_000)).decode().replace("\n", "\r\n"),
        f"--{boundary}--\r\n",
    ]
    raw = (
        f"From: {CUSTOMER}\r\nTo: support@example.com\r\nSubject: Files for you\r\n"
        f"Message-ID: <files-{tag}@customer.test>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n' + "".join(parts)
    ).encode()
    before = files_under(tmp_path.parent) - files_under(tmp_path)
    world.deliver(raw)
    assert world.run_once() == 0

    assert not escape_dir.exists()
    after = files_under(tmp_path.parent) - files_under(tmp_path)
    assert after <= before  # nothing written next to the desk's own directory
    data = (world.root / "data").resolve()
    assert all(p.resolve().is_relative_to(data) for p in files_under(world.root / "data"))

    [ticket] = world.tickets()
    attachments = ticket["messages"][0]["attachments"]
    assert len(attachments) == len(names) + 1
    for a in attachments:
        shown = a["filename"]
        assert shown and len(shown) <= 256
        assert "/" not in shown and "\\" not in shown
        assert not re.search(r"[\x00-\x1f\x7f\u202e]", shown), shown
        assert not shown.startswith(".")
    [dropped] = [a for a in attachments if a.get("dropped")]
    assert dropped["size"] == 30_000

    [ack] = world.mails_to(CUSTOMER)
    assert "big.pdf" in text_of(ack)  # the sender is told which file was refused
    html = html_of(ack) or ""
    assert "big.pdf" in html and "<img" not in html


INJECTED_SUBJECT = "=?UTF-8?Q?Hi=0ABcc:_victim@example.org?="


def test_an_encoded_newline_in_a_subject_adds_no_header(world: DeskWorld) -> None:
    # The hazard is real on this Python: a parsed Subject object re-used on a new message
    # (CPython 3.11.7, 3.12.1) emits a real "Bcc:" line. maildesk builds from cleaned strings.
    parsed = BytesParser(policy=email.policy.default).parsebytes(
        f"Subject: {INJECTED_SUBJECT}\r\n\r\n".encode()
    )
    probe = EmailMessage()
    probe["Subject"] = parsed["Subject"]
    vulnerable = b"\nBcc:" in probe.as_bytes().replace(b"\r\n", b"\n")

    msg = customer_mail("placeholder", "Please forward this.", headers=[])
    del msg["Subject"]
    raw = msg.as_bytes(policy=email.policy.SMTP)
    raw = raw.replace(b"From:", f"Subject: {INJECTED_SUBJECT}\r\nFrom:".encode(), 1)
    world.deliver(raw)
    world.run_once()
    [notice] = world.wait_mails_to(ALICE, 1)
    # the agent answers; the customer's subject is reused in the reply
    world.deliver(agent_reply(notice, ALICE, "Done."))
    world.run_once()
    world.wait_mails_to(CUSTOMER, 2)

    for mail in world.smtp.messages:
        assert "victim@example.org" not in mail.rcpt_tos
        head = mail.raw.split(b"\r\n\r\n", 1)[0]
        assert not re.search(rb"(?im)^bcc:", head), (vulnerable, head)
        assert "\n" not in str(mail.message["Subject"])
    [ticket] = world.tickets()
    assert "\n" not in ticket["subject"] and "Bcc" in ticket["subject"]


def test_customer_text_is_never_a_template_nor_html(world: DeskWorld) -> None:
    world.deliver(
        customer_mail(
            "{{ 7*7 }} <script>alert(1)</script>",
            "Total: {{ 7*7 }}\n{{ cycler.__init__.__globals__ }}\n<img src=x onerror=alert(1)>\n"
            "{% for x in range(3) %}loop{% endfor %}",
        )
    )
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    assert "{{ 7*7 }}" in str(ack.message["Subject"])
    notices = world.wait_mails_to(ALICE, 1)
    text = text_of(notices[0])
    assert "Total: {{ 7*7 }}" in text and "Total: 49" not in text  # (not the IMAP user49)
    assert "{{ cycler.__init__.__globals__ }}" in text and "__builtins__" not in text
    assert "{% for x in range(3) %}loop{% endfor %}" in text and "looploop" not in text
    [ticket] = world.tickets()
    assert "{{ 7*7 }}" in ticket["messages"][0]["text"]

    # the agent quotes the customer's HTML back: the HTML part escapes it
    world.deliver(agent_reply(notices[0], ALICE, "You wrote <img src=x onerror=alert(1)> ok"))
    world.run_once()
    [_, reply] = world.wait_mails_to(CUSTOMER, 2)
    for mail in world.smtp.messages:
        html = html_of(mail)
        if html is not None:
            assert "<img" not in html and "<script" not in html, html
    assert "&lt;img src=x onerror=alert(1)&gt;" in (html_of(reply) or "")


def many_headers(count: int) -> bytes:
    lines = [f"X-Filler-{i}: {i}" for i in range(count)]
    head = "\r\n".join(
        ["From: many@headers.test", "To: support@example.com", "Subject: Many headers", *lines]
    )
    return (head + "\r\n\r\nbody\r\n").encode()


def hostile_batch() -> list[bytes]:
    batch = [p.read_bytes() for p in sorted(MAIL.glob("*.eml"))]
    batch += [p.read_bytes() for p in sorted(CPYTHON_MAIL.glob("msg_*.txt"))]
    batch.append(many_headers(5000))
    nested = b"From: a@b.test\r\nSubject: rfc822 chain\r\n\r\nbottom\r\n"
    for depth in range(30):
        nested = (
            f"From: level{depth}@b.test\r\nTo: support@example.com\r\nSubject: level {depth}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode() + nested
    batch.append(nested)
    batch.append(b"\x00\xff\xfe garbage that is not mail at all \r\n\r\n\x80\x81")
    batch.append(b"Subject: only a subject\r\n\r\n")
    return batch


def test_a_batch_of_hostile_and_odd_mail_is_each_handled_or_quarantined(
    dovecot_server: DovecotServer, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """The team's corpus, CPython's test_email data and generated monsters, one batch through
    the real daemon against Dovecot: every message gets exactly one ledger entry and leaves
    INBOX, the daemon runs to the end."""
    if not CPYTHON_MAIL.is_dir():
        pytest.skip("CPython's test_email data is not installed")
    username, password = fresh_user()
    world = DeskWorld(
        ImapAccount("dovecot", dovecot_server, username, password), smtp_server, tmp_path
    )
    try:
        batch = hostile_batch()
        for raw in batch:
            world.deliver(raw)
        assert world.run_once() == 0
        assert world.account.uids("INBOX") == []
        processed = len(world.account.uids("Processed"))
        quarantined = len(world.account.uids("Quarantine"))
        assert processed + quarantined == len(batch)
        with world.db.transaction() as session:
            rows = session.execute(
                select(Ledger.outcome, func.count(Ledger.id)).group_by(Ledger.outcome)
            ).all()
        outcomes = dict(rows)
        assert sum(outcomes.values()) == len(batch)
        assert outcomes.get("quarantined", 0) == quarantined
        print(f"\nhostile batch of {len(batch)}: {outcomes}")
    finally:
        world.close()


# --------------------------------------------------------------------------- poison mail


def winmail_bomb(count: int) -> bytes:
    return poison.tnef_mail(poison.property_count_bomb(count))


# each shape at the size reported and at an eighth of it: 1 MB of spaces, a 224 KB mail of
# nested blockquotes, 160 KB of nested lists, a 33-byte winmail.dat counting 4.3 billion
POISONS = {
    "long-line-of-spaces": (poison.spaces, 125_000, 1_000_000),
    "nested-blockquotes": (poison.nested_quotes, 1_000, 8_000),
    "nested-lists": (poison.nested_lists, 1_500, 12_000),
    "winmail-dat-count": (winmail_bomb, 0x1FFFFFFF, 0xFFFFFFFF),
}


@pytest.mark.parametrize("shape", POISONS.values(), ids=POISONS.keys())
def test_poison_mail_becomes_a_ticket_and_the_mail_behind_it_is_answered_at_once(
    world: DeskWorld, shape: tuple[Callable[[int], bytes], int, int]
) -> None:
    build, *sizes = shape
    limits = world.settings.limits
    world.start()
    for size in sizes:
        behind = f"behind-{size}@customer.test"
        world.deliver(build(size))
        world.deliver(customer_mail("Printer on floor 3", "It prints blank pages.", sender=behind))
        # the ordinary customer waits for no more than the parse budget, and in fact far less
        world.wait_mails_to(behind, 1, timeout=limits.parse_seconds + 5)
    wait_until(lambda: not world.account.uids("INBOX"), 10, "every mail moved out of INBOX")
    world.stop()

    assert len(world.account.uids("Processed")) == 4  # nothing lost, nothing quarantined
    tickets = world.tickets()
    assert [t["requester"] for t in tickets[1::2]] == [f"behind-{s}@customer.test" for s in sizes]
    for ticket in tickets[0::2]:
        [message] = ticket["messages"]
        body, _, last = message["text"].rpartition("\n\n")
        if last.startswith("[... the rest of this message"):
            assert len(body) <= limits.max_text_chars
        assert len(message["text"]) <= limits.max_text_chars + 100
        if message["attachments"]:  # the winmail.dat is kept as it came
            assert [(a["filename"], a["size"]) for a in message["attachments"]] == [
                ("winmail.dat", 33)
            ]
        assert_notice_is_short(world, ticket)


def assert_notice_is_short(world: DeskWorld, ticket: dict[str, Any]) -> None:
    """The team's notice quotes the first 20,000 characters and says where the rest is."""
    text = ticket["messages"][0]["text"]
    [notice] = [m for m in world.mails_to(ALICE) if ticket["ref"] in str(m.message["Subject"])]
    shown = text_of(notice).replace("\r\n", "\n")
    if len(text) <= NOTICE_TEXT_CHARS:
        assert text in shown
        return
    more = len(text) - NOTICE_TEXT_CHARS
    assert text[:NOTICE_TEXT_CHARS] in shown
    assert (
        f"[... {more:,} more characters not shown here: read the whole message with"
        f" `maildesk tickets show {ticket['number']}`]" in shown
    )
    assert len(shown) < NOTICE_TEXT_CHARS + 3_000  # the text, that line, the help
