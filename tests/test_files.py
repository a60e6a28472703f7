"""Files both ways: an agent's files reach the customer, the customer's reach the agents.

Through the daemon against pymap and Dovecot: an agent's reply with a PDF and an inline image
arrives at the customer with the PDF byte for byte and the image beside the HTML part; files
over a limit, or on a note, stay on the ticket and the receipt says so; the customer's
screenshot arrives attached to the agents' notice, a file past the notice's budget named
with its size; ``#files`` mails an agent every file of the ticket in mails of a bounded size.
"""

from __future__ import annotations

import email.policy
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk.act import outbox
from maildesk.demo.world import Captured
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    ON_BOTH_DATABASES,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    html_of,
    ref_number,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

# a PDF as far as any mail system can tell: binary, CR and LF and NUL bytes, a line that looks
# like a MIME boundary, bytes no text encoding survives
PDF = (
    b"%PDF-1.7\r\n%\xe2\xe3\xcf\xd3\r\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
    + bytes(range(256)) * 40
    + b"\r\n--=_boundary\r\n\x00\x00\r\r\n\n.\r\n"
    + hashlib.sha256(b"invoice").digest() * 500
    + b"\n%%EOF\n"
)
PNG = b"\x89PNG\r\n\x1a\n" + hashlib.sha512(b"screenshot").digest() * 300


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        database_url=database_url,
        clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
        tables={
            "limits": {
                "max_attachment_bytes": 60_000,
                "max_outbound_bytes": 100_000,
                "notice_attachment_bytes": 50_000,
            }
        },
    )
    yield w
    w.close()


def blob(name: str, size: int) -> bytes:
    """``size`` bytes of their own for a file called ``name``."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def with_files(message: EmailMessage, *files: tuple[str, str, bytes]) -> EmailMessage:
    for filename, content_type, data in files:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message


def attachments(mail: Captured) -> dict[str, bytes]:
    """The files a delivered mail carries, by name, as the recipient's client decodes them."""
    found = {}
    for part in mail.message.iter_attachments():
        data = part.get_content()
        found[part.get_filename()] = data if isinstance(data, bytes) else data.encode()
    return found


def receipt_text(world: DeskWorld, number: int, after: int = 0) -> str:
    """The one receipt Alice got on ticket ``number`` (among her mails from ``after`` on)."""
    [receipt] = [
        m
        for m in world.mails_to(ALICE)[after:]
        if ref_number(m) == number and re.search(r"Done|Not done", str(m.message["Subject"]))
    ]
    return " ".join(text_of(receipt).split())


def new_ticket(world: DeskWorld, *files: tuple[str, str, bytes]) -> Captured:
    """A customer's new ticket (with ``files``); the notice Alice gets for it."""
    world.deliver(with_files(customer_mail("Invoice missing", "Where is my invoice?"), *files))
    world.run_once()
    [notice] = [m for m in world.mails_to(ALICE) if "New:" in str(m.message["Subject"])]
    return notice


@ON_BOTH_DATABASES
def test_an_agents_pdf_reaches_the_customer_byte_for_byte_and_the_image_stays_inline(
    world: DeskWorld,
) -> None:
    notice = new_ticket(world)
    reply = agent_reply(notice, ALICE, "Hello Dana, the invoice is attached.")
    reply.add_alternative(
        '<p>Hello Dana, the invoice is attached.</p><img src="cid:stamp.4711@example.com">',
        subtype="html",
    )
    html = reply.get_payload()[1]
    html.add_related(PNG, "image", "png", cid="<stamp.4711@example.com>", filename="stamp.png")
    reply.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice-42.pdf")
    world.deliver(reply)
    world.run_once()

    [_, answer] = world.mails_to(CUSTOMER)
    assert answer.message.get_content_type() == "multipart/mixed"
    assert text_of(answer).startswith("Hello Dana, the invoice is attached.")
    assert attachments(answer) == {"invoice-42.pdf": PDF}
    # the image travels with the HTML part, which shows it by its Content-ID
    [related] = [p for p in answer.message.walk() if p.get_content_type() == "multipart/related"]
    html_part, image = related.iter_parts()
    assert html_part.get_content_type() == "text/html"
    assert image["Content-ID"] == "<stamp.4711@example.com>"
    assert image.get_content() == PNG
    assert 'src="cid:stamp.4711@example.com"' in (html_of(answer) or "")
    assert world.ticket(1)["status"] == "pending"

    receipt = receipt_text(world, 1)
    assert "stamp.png (19 KB) sent to the customer" in receipt
    assert f"invoice-42.pdf ({len(PDF) / 1000:.0f} KB) sent to the customer" in receipt


def test_files_over_a_limit_stay_on_the_ticket_and_the_receipt_names_them(
    world: DeskWorld,
) -> None:
    notice = new_ticket(world)
    first, second = blob("contract.pdf", 55_000), blob("terms.pdf", 50_000)
    reply = with_files(
        agent_reply(notice, ALICE, "The papers are attached."),
        ("contract.pdf", "application/pdf", first),
        ("huge.zip", "application/zip", blob("huge.zip", 70_000)),  # over max_attachment_bytes
        ("terms.pdf", "application/pdf", second),  # 105 KB with the first: over the total
        ("note.txt", "application/octet-stream", b"small\n"),
    )
    world.deliver(reply)
    world.run_once()

    [_, answer] = world.mails_to(CUSTOMER)
    assert attachments(answer) == {"contract.pdf": first, "note.txt": b"small\n"}
    receipt = receipt_text(world, 1)
    assert "contract.pdf (55 KB) sent to the customer" in receipt
    assert (
        "huge.zip (70 KB) not sent to the customer: it was not kept: larger than"
        " max_attachment_bytes (60 KB) when it came" in receipt
    )
    assert (
        "terms.pdf (50 KB) not sent to the customer: the files of one reply may come to"
        " 100 KB in all (max_outbound_bytes)" in receipt
    )
    assert "note.txt (6 bytes) sent to the customer" in receipt
    # the ticket keeps what it could: both PDFs, and huge.zip by name and size
    [kept] = [m for m in world.ticket(1)["messages"] if m["attachments"]]
    assert [(a["filename"], a.get("dropped", False)) for a in kept["attachments"]] == [
        ("contract.pdf", False),
        ("huge.zip", True),
        ("terms.pdf", False),
        ("note.txt", False),
    ]


def test_a_file_on_a_note_stays_internal_and_the_receipt_says_so(world: DeskWorld) -> None:
    notice = new_ticket(world)
    reply = with_files(
        agent_reply(notice, ALICE, "#note Their old contract, for us."),
        ("old-contract.pdf", "application/pdf", PDF),
    )
    world.deliver(reply)
    world.run_once()

    assert len(world.mails_to(CUSTOMER)) == 1  # the acknowledgment only
    receipt = receipt_text(world, 1)
    assert (
        "old-contract.pdf (" in receipt
        and "not sent to the customer: this mail sent the customer nothing" in receipt
    )


def test_the_customers_screenshot_arrives_attached_to_the_agents_notices(
    world: DeskWorld,
) -> None:
    big = blob("logs.zip", 45_000)  # with the screenshot, over the notice's 50 KB
    notice = new_ticket(
        world, ("screenshot.png", "image/png", PNG), ("logs.zip", "application/zip", big)
    )
    assert attachments(notice) == {"screenshot.png": PNG}
    text = " ".join(text_of(notice).split())
    assert "screenshot.png (19 KB), attached" in text
    assert "logs.zip (45 KB): not attached: a notice carries 50 KB of files in all" in text

    # Alice takes it; the customer's next file reaches her, and her colleague assigned it
    world.deliver(agent_reply(notice, ALICE, "#assign me\nLooking into it."))
    world.run_once()
    [ack, _] = world.mails_to(CUSTOMER)
    more = with_files(
        customer_mail("Re: " + str(ack.message["Subject"]), "Here is the error.", reply_to=ack),
        ("error.png", "image/png", PNG[::-1]),
    )
    world.deliver(more)
    world.run_once()
    [replied] = [
        m for m in world.mails_to(ALICE) if "Customer replied" in str(m.message["Subject"])
    ]
    assert attachments(replied) == {"error.png": PNG[::-1]}
    assert "error.png (19 KB), attached" in " ".join(text_of(replied).split())


def test_files_mails_an_agent_every_file_of_the_ticket_in_mails_under_the_limit(
    world: DeskWorld,
) -> None:
    one, two, three = blob("one.bin", 30_000), blob("two.bin", 15_000), blob("three.bin", 20_000)
    notice = new_ticket(
        world,
        ("one.bin", "application/octet-stream", one),
        ("two.bin", "application/octet-stream", two),
        ("too-big.bin", "application/octet-stream", blob("too-big.bin", 55_000)),
    )
    world.deliver(
        with_files(
            agent_reply(notice, ALICE, "#note The third one."),
            ("three.bin", "application/octet-stream", three),
        )
    )
    world.run_once()
    before = len(world.mails_to(ALICE))

    world.deliver(agent_reply(notice, ALICE, "#files"))
    world.run_once()

    mails = world.mails_to(ALICE)[before:]
    # (sent over parallel connections: in any order)
    parts = sorted(
        (m for m in mails if " Files" in str(m.message["Subject"])),
        key=lambda m: str(m.message["Subject"]),
    )
    assert [str(m.message["Subject"]).split(":")[0] for m in parts] == [
        "[#1] Files (1 of 2)",
        "[#1] Files (2 of 2)",
    ]
    assert attachments(parts[0]) == {"one.bin": one, "two.bin": two}
    assert attachments(parts[1]) == {"three.bin": three}
    first = " ".join(text_of(parts[0]).split())
    assert "too-big.bin (55 KB): larger than a mail of files may be (50 KB" in first
    assert "the ticket's files mailed to you" in receipt_text(world, 1, before)
    assert len(world.mails_to(CUSTOMER)) == 1  # nothing to the customer


def test_files_with_words_after_it_is_refused_with_the_reason(world: DeskWorld) -> None:
    notice = new_ticket(world, ("one.bin", "application/octet-stream", b"1"))
    before = len(world.mails_to(ALICE))
    world.deliver(agent_reply(notice, ALICE, "#files please"))
    world.run_once()

    assert [
        m for m in world.mails_to(ALICE)[before:] if " Files" in str(m.message["Subject"])
    ] == []
    receipt = receipt_text(world, 1)
    assert "#files please: #files takes no arguments" in receipt


@ON_BOTH_DATABASES
def test_the_delivery_holds_a_bounded_amount_of_mail_with_files_at_a_time(
    world: DeskWorld,
) -> None:
    """Mail with files is large and a notice goes to every agent of the team: the delivery
    claims the outbox by the size of what it claims, not only by rows (``claim_due`` called
    as the delivery calls it, since no mail shows what a process held in memory)."""
    logs = blob("logs.zip", 40_000)
    mail = with_files(
        customer_mail("Crash", "Logs attached."), ("logs.zip", "application/zip", logs)
    )
    done = world.cli("ingest", input=mail.as_bytes(policy=email.policy.SMTP))
    assert done.returncode == 0, done.stderr
    now = datetime.now(UTC) + timedelta(seconds=1)

    def claim() -> list[str]:
        rows = outbox.claim_due(
            world.db, now, 200, timedelta(minutes=5), "t", max_bytes=100_000, store=world.desk.store
        )
        return [row.recipient for row in rows]

    # the two notices carry the file (55 KB each as base64); the acknowledgment is small
    assert claim() == [ALICE]
    assert claim() == [CAROL_AGENT, CUSTOMER]
    assert claim() == []


def test_a_conversation_an_agent_starts_takes_her_files_to_the_customer(
    world: DeskWorld,
) -> None:
    done = world.cli("agents", "address", ALICE)
    assert done.returncode == 0, done.stderr
    start = with_files(
        customer_mail(
            "Your invoice 42",
            "#new dana@customer.test\n\nHello Dana, your invoice is attached.",
            sender=ALICE,
            to=done.stdout.decode().strip(),
        ),
        ("invoice-42.pdf", "application/pdf", PDF),
    )
    world.deliver(start)
    world.run_once()

    [first] = world.mails_to(CUSTOMER)
    assert attachments(first) == {"invoice-42.pdf": PDF}
    said = receipt_text(world, 1)
    assert f"invoice-42.pdf ({len(PDF) / 1000:.0f} KB) sent to the customer" in said
