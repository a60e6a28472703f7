"""``maildesk tickets files``: a ticket's attachments, and with ``--raw`` its mail, written to a
directory byte for byte as the customer sent them, under names made safe, never over a file.

Through the daemon against pymap and Dovecot, the command run as its own process as an admin
runs it.
"""

from __future__ import annotations

import email.policy
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk.ui.files import NAME_BYTES, NAME_CHARS, safe_name
from tests.desk import ON_BOTH_DATABASES, DeskWorld, customer_mail
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\r\n\x00\x1a%%EOF\n"
OTHER_PDF = b"%PDF-1.7\n" + bytes(reversed(range(256))) * 3


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url)
    yield w
    w.close()


def with_files(subject: str, files: list[tuple[str, bytes]]) -> EmailMessage:
    mail = customer_mail(subject, "The files are attached.")
    for name, data in files:
        mail.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return mail


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@ON_BOTH_DATABASES
def test_attachments_are_written_as_sent_under_safe_names(world: DeskWorld) -> None:
    long_name = "quarterly report " * 20 + ".xlsx"
    world.deliver(
        with_files(
            "Invoice wrong",
            [
                ("report.pdf", PDF),
                ("report.pdf", OTHER_PDF),  # the same name twice
                ("../../.bashrc", b"alias ls=rm\n"),
                ("C:\\Users\\dana\\scan 1.png", b"\x89PNG\r\n\x1a\n"),
                ("invoice\u202egpj.exe", b"MZ"),
                (long_name, b"PK\x03\x04"),
            ],
        )
    )
    world.run_once()
    out = world.root / "out"
    done = world.cli("tickets", "files", "1", "-o", str(out))
    assert done.returncode == 0, done.stderr
    written = files_in(out)
    shortened = safe_name(long_name)
    assert written == {
        "report.pdf": PDF,
        "report (2).pdf": OTHER_PDF,
        "bashrc": b"alias ls=rm\n",
        "scan 1.png": b"\x89PNG\r\n\x1a\n",
        "invoicegpj.exe": b"MZ",
        shortened: b"PK\x03\x04",
    }
    assert shortened.endswith(".xlsx") and len(shortened) <= NAME_CHARS
    lines = done.stdout.decode().splitlines()
    assert f"wrote {out / 'report.pdf'} ({len(PDF)} bytes)" in lines
    assert len(lines) == 6

    # again: the same files are there; a file of other bytes under a name is left alone
    (out / "report.pdf").write_bytes(b"my own notes")
    again = world.cli("tickets", "files", "[#1]", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert (out / "report.pdf").read_bytes() == b"my own notes"
    assert (out / "report (3).pdf").read_bytes() == PDF
    told = again.stdout.decode()
    assert f"wrote {out / 'report (3).pdf'} ({len(PDF)} bytes) (report.pdf was taken)" in told
    assert told.count("unchanged ") == 5


@ON_BOTH_DATABASES
def test_raw_writes_each_message_as_it_came(world: DeskWorld) -> None:
    first = with_files("Printer", [("photo.jpg", b"\xff\xd8\xff" + os.urandom(2000))])
    big = customer_mail("Re: [#1] Printer", "The log.", reply_to=None)
    big.replace_header("Subject", "Re: [#1] Printer")
    big.add_attachment(
        os.urandom(1_200_000), maintype="application", subtype="gzip", filename="log.gz"
    )  # over 1 MiB: kept in the blob store, not the database
    sent = [m.as_bytes(policy=email.policy.SMTP) for m in (first, big)]
    for raw in sent:
        world.deliver(raw)
        world.run_once()
    assert len(world.ticket(1)["messages"]) == 2
    out = world.root / "mail"
    done = world.cli("tickets", "files", "1", "--raw", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert files_in(out) == {"1-1.eml": sent[0], "1-2.eml": sent[1]}


@ON_BOTH_DATABASES
def test_what_cannot_be_written_is_one_line(world: DeskWorld) -> None:
    world.deliver(customer_mail("No files", "Just words."))
    world.run_once()
    for ref in ("99", "[#0]", "abc", "99999999999999999999"):
        done = world.cli("tickets", "files", ref)
        assert (done.returncode, done.stderr.decode()) == (1, f"maildesk: no ticket {ref}\n")
    done = world.cli("tickets", "files", "1", "-o", str(world.root / "x"))
    assert (done.returncode, done.stdout.decode()) == (0, "ticket [#1] has no files\n")
    assert not (world.root / "x").exists()

    world.deliver(with_files("Files", [("a.txt", b"a")]))
    world.run_once()
    blocked = world.root / "a-file"
    blocked.write_text("")
    done = world.cli("tickets", "files", "2", "-o", str(blocked))
    assert (done.returncode, done.stderr.decode()) == (
        1,
        f"maildesk: {blocked} is not a directory\n",
    )


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..", "attachment"),
        (".htaccess", "htaccess"),
        ("a\x00b\r\nc.txt", "abc.txt"),
        ("what?<now>|.txt", "what__now__.txt"),
        ("trailing. . ", "trailing"),
        ("Grüße\u00a0aus Köln.pdf", "Grüße aus Köln.pdf"),
        ("\u202e\u200b", "attachment"),
        ("", "attachment"),
    ],
)
def test_names_are_made_safe(sent: str, kept: str) -> None:
    assert safe_name(sent) == kept


def test_a_long_name_keeps_its_extension_within_the_bounds() -> None:
    for name in ("x" * 5000 + ".pdf", "ü" * 5000 + ".pdf", "\U0001f600" * 500 + ".pdf"):
        safe = safe_name(name)
        assert safe.endswith(".pdf")
        assert len(safe) <= NAME_CHARS and len(safe.encode()) <= NAME_BYTES


def test_a_directory_that_takes_no_file_is_one_line_and_leaves_no_part_of_one(
    world: DeskWorld,
) -> None:
    small, large = b"%PDF small\n", PDF * 4
    world.deliver(with_files("Files", [("a.pdf", small), ("b.pdf", large)]))
    world.run_once()
    # sysfs takes no new file, even from root
    done = world.cli("tickets", "files", "1", "-o", "/sys")
    assert (done.returncode, done.stderr.decode()) == (
        1,
        "maildesk: /sys/a.pdf: Permission denied\n",
    )

    # room for the small file, not for the large one (the disk full, as far as it knows)
    def room() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(PDF), len(PDF)))

    out = world.root / "out"
    done = subprocess.run(
        [sys.executable, "-m", "maildesk", "tickets", "files", "1", "-o", str(out)],
        env={**os.environ, "MAILDESK_CONFIG": str(world.config_path)},
        capture_output=True,
        timeout=60,
        preexec_fn=room,
    )
    assert (done.returncode, done.stderr.decode()) == (
        1,
        f"maildesk: {out / 'b.pdf'}: File too large\n",
    )
    assert files_in(out) == {"a.pdf": small}
    # with room again, the next run writes what is missing
    again = world.cli("tickets", "files", "1", "-o", str(out))
    assert again.returncode == 0, again.stderr
    assert files_in(out) == {"a.pdf": small, "b.pdf": large}


def test_a_large_file_that_only_shares_a_name_is_not_read(world: DeskWorld) -> None:
    world.deliver(with_files("Backup", [("backup.tar", PDF)]))
    world.run_once()
    out = world.root / "out"
    out.mkdir()
    with open(out / "backup.tar", "wb") as large:  # 4 GB, sparse: no disk taken
        large.truncate(4 << 30)

    def small_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "maildesk", "tickets", "files", "1", "-o", str(out)],
        env={**os.environ, "MAILDESK_CONFIG": str(world.config_path)},
        capture_output=True,
        timeout=60,
        preexec_fn=small_memory,
    )
    assert (done.returncode, done.stderr.decode()) == (0, "")
    assert done.stdout.decode() == (
        f"wrote {out / 'backup (2).tar'} ({len(PDF)} bytes) (backup.tar was taken)\n"
    )
    assert (out / "backup.tar").stat().st_size == 4 << 30
