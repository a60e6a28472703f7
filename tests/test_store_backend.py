"""Files every host reads: the database store, two daemons on one PostgreSQL, store migrate.

Two desks on one PostgreSQL database, each with a data directory of its own (two hosts, as an
admin adding a second machine sets them up), through the daemon against pymap and Dovecot: a
customer's files taken in by host A are mailed to an agent by host B (``#files``), byte for
byte; an agent's held reply with a file goes to the customer by host B's delivery after host A
took her ``#send``; a file damaged in the database is never sent (its mail fails, saying why);
a large piped message quarantined on host A is replayed on host B. ``maildesk store migrate`` copies every file both ways byte for byte, a run killed with
SIGKILL midway is finished by the next, and the rows naming the files keep working.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest

from maildesk.database import Database
from maildesk.demo.world import Captured
from maildesk.store.directory import DirectoryStore
from maildesk.store.rows import DatabaseStore
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    Clock,
    DeskWorld,
    agent_reply,
    customer_mail,
    ref_number,
    text_of,
    wait_until,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

SECRET = "one secret for every host of this desk"
LIMITS = {
    "max_attachment_bytes": 4_000_000,
    "max_outbound_bytes": 4_000_000,
    "notice_attachment_bytes": 4_000_000,
}


def blob(name: str, size: int) -> bytes:
    """``size`` bytes of their own for a file called ``name``."""
    seed = hashlib.sha512(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def with_files(message: EmailMessage, *files: tuple[str, bytes]) -> EmailMessage:
    for filename, data in files:
        message.add_attachment(data, maintype="application", subtype="pdf", filename=filename)
    return message


def attachments(mail: Captured) -> dict[str, bytes]:
    """The files a delivered mail carries, by name, as the recipient's client decodes them."""
    return {str(p.get_filename()): p.get_content() for p in mail.message.iter_attachments()}


def subject(mail: Captured) -> str:
    return str(mail.message["Subject"])


def host(
    name: str, account: ImapAccount, smtp: ScriptedSmtp, root: Path, **given: Any
) -> DeskWorld:
    """One host of the desk: its own directory, the shared database and secret."""
    (root / name).mkdir()
    tables = {"desk": {"secret": SECRET}, "limits": LIMITS, **given.pop("tables", {})}
    return DeskWorld(account, smtp, root / name, tables=tables, **given)


@pytest.fixture
def hosts(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[DeskWorld, DeskWorld]]:
    clock = Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    a = host("a", imap_server, smtp_server, tmp_path, database_url=postgres_url, clock=clock)
    b = host("b", imap_server, smtp_server, tmp_path, database_url=postgres_url, clock=clock)
    yield a, b
    a.close()
    b.close()


def nothing_on_disk(world: DeskWorld) -> list[Path]:
    data = world.root / "data"
    return [p for kind in ("raw", "blobs") for p in (data / kind).rglob("*") if p.is_file()]


def test_a_tickets_files_taken_in_by_one_host_are_mailed_byte_identical_by_the_other(
    hosts: tuple[DeskWorld, DeskWorld],
) -> None:
    a, b = hosts
    scan, logs = blob("scan.pdf", 1_500_000), blob("logs.pdf", 200_000)
    a.deliver(with_files(customer_mail("Invoice wrong", "See the scan."), *_named(scan, logs)))
    assert a.run_once() == 0
    [notice] = [m for m in a.mails_to(ALICE) if "New:" in subject(m)]
    assert attachments(notice) == {"scan.pdf": scan, "logs.pdf": logs}
    assert nothing_on_disk(a) == []  # in the database, where host B reads them

    before = len(b.mails_to(ALICE))
    b.deliver(agent_reply(notice, ALICE, "#files"))
    assert b.run_once() == 0

    [files] = [m for m in b.mails_to(ALICE)[before:] if " Files" in subject(m)]
    assert attachments(files) == {"scan.pdf": scan, "logs.pdf": logs}
    assert nothing_on_disk(a) == nothing_on_disk(b) == []


def test_a_file_damaged_in_the_database_is_never_sent_and_its_mail_fails_with_why(
    hosts: tuple[DeskWorld, DeskWorld], postgres_url: str
) -> None:
    a, b = hosts
    scan = blob("scan.pdf", 2_500_000)
    a.deliver(with_files(customer_mail("Invoice wrong", "See the scan."), ("scan.pdf", scan)))
    a.run_once()
    [notice] = [m for m in a.mails_to(ALICE) if "New:" in subject(m)]
    # one byte of its second piece changed in the database, the size kept
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as db:
        db.execute(
            "UPDATE blob_chunks SET data = overlay(data placing '\\x00'::bytea from 7 for 1)"
            " WHERE name LIKE 'blobs/%%' AND seq = 1"
        )
    before = len(b.mails_to(ALICE))
    b.deliver(agent_reply(notice, ALICE, "#files"))
    assert b.run_once() == 0

    mails = b.mails_to(ALICE)[before:]
    assert [m for m in mails if " Files" in subject(m)] == []  # not with other bytes
    [failed] = [e for e in b.ticket(1)["events"] if e["kind"] == "mail_failed"]
    assert failed["detail"]["recipient"] == ALICE
    assert "a file it carries cannot be read" in failed["detail"]["error"]
    assert "SHA-256 differs" in failed["detail"]["error"]


def _named(*files: bytes) -> list[tuple[str, bytes]]:
    return list(zip(("scan.pdf", "logs.pdf"), files, strict=True))


def test_an_agents_held_file_taken_in_by_one_host_reaches_the_customer_from_the_other(
    hosts: tuple[DeskWorld, DeskWorld],
) -> None:
    a, b = hosts
    a.deliver(customer_mail("Wifi password", "What is the guest wifi password?"))
    a.run_once()
    [alice_notice] = a.mails_to(ALICE)
    [carol_notice] = a.mails_to(CAROL_AGENT)
    a.clock.advance(minutes=5)
    a.deliver(agent_reply(alice_notice, ALICE, "It is guest2026."))
    a.run_once()
    a.clock.advance(minutes=5)
    contract = blob("contract.pdf", 1_200_000)
    # Carol answers an older notice: her reply and its file are held, on host A
    a.deliver(
        with_files(
            agent_reply(carol_notice, CAROL_AGENT, "The contract is attached."),
            ("contract.pdf", contract),
        )
    )
    a.run_once()
    [held] = [m for m in a.mails_to(CAROL_AGENT) if "Held, not sent" in subject(m)]

    # her #send comes to host A through its MTA's pipe, which queues the reply; host B's
    # delivery sends it, the file read from the store where host A kept it
    send = agent_reply(held, CAROL_AGENT, "#send").as_bytes(policy=email.policy.SMTP)
    taken = a.cli("ingest", input=send)
    assert taken.returncode == 0, taken.stderr
    number = ref_number(carol_notice)
    assert [m for m in a.mails_to(CUSTOMER) if attachments(m)] == []  # nothing sent yet
    sent = b.cli("deliver", "--once")
    assert sent.returncode == 0, sent.stderr
    [answer] = [m for m in b.mails_to(CUSTOMER) if attachments(m) and ref_number(m) == number]
    assert text_of(answer).startswith("The contract is attached.")
    assert attachments(answer) == {"contract.pdf": contract}
    assert nothing_on_disk(a) == nothing_on_disk(b) == []


def test_a_large_piped_message_quarantined_on_one_host_is_replayed_on_the_other(
    hosts: tuple[DeskWorld, DeskWorld],
) -> None:
    a, b = hosts
    a.rewrite_config(limits={"max_message_bytes": 1_000_000})
    b.rewrite_config(limits={"max_message_bytes": 10_000_000})
    big = blob("big.pdf", 2_500_000)
    mail = with_files(customer_mail("Big scan", "The whole scan."), ("big.pdf", big))
    raw = mail.as_bytes(policy=email.policy.SMTP)

    taken = a.cli("ingest", input=raw)  # read and kept in pieces: larger than A's limit
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.decode().startswith("quarantined")
    listed = b.cli("quarantine", "list", "--json")
    [entry] = json.loads(listed.stdout)
    assert nothing_on_disk(a) == []

    replayed = b.cli("quarantine", "replay", str(entry["id"]))
    assert replayed.returncode == 0, replayed.stderr + replayed.stdout
    assert replayed.stdout.decode().startswith(f"{entry['id']}: new_ticket [#1]")
    [notice] = [m for m in b.wait_mails_to(ALICE, 1) if "New:" in subject(m)]
    assert attachments(notice) == {"big.pdf": big}
    # A's: too large (sent by B's delivery with the replay's); B's: the acknowledgment
    told = sorted("[#1]" in subject(m) for m in b.wait_mails_to(CUSTOMER, 2))
    assert told == [False, True]


# --------------------------------------------------------------------------- store migrate


@pytest.fixture
def desk(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> Iterator[DeskWorld]:
    """A desk on PostgreSQL that keeps its files in its directory, as one made before the
    database store was its default."""
    world = host(
        "desk",
        imap_server,
        smtp_server,
        tmp_path,
        database_url=postgres_url,
        tables={"store": {"backend": "directory"}},
    )
    yield world
    world.close()


def files_of(store: DirectoryStore | DatabaseStore) -> dict[str, bytes]:
    return {name: store.read(name) for name in store.names()}


def test_store_migrate_both_ways_keeps_every_file_and_the_tickets_files_work(
    desk: DeskWorld,
) -> None:
    scan, logs = blob("scan.pdf", 1_500_000), blob("logs.pdf", 200_000)
    desk.deliver(with_files(customer_mail("Invoice", "See the scan."), *_named(scan, logs)))
    desk.run_once()
    [notice] = [m for m in desk.mails_to(ALICE) if "New:" in subject(m)]
    directory = DirectoryStore(desk.root / "data")
    before = files_of(directory)
    # the two files, and the whole mail (over 1 MiB)
    assert sorted(n.split("/")[0] for n in before) == ["blobs", "blobs", "raw"]
    size = sum(map(len, before.values())) / 1e6

    moved = desk.cli("store", "migrate", "--to", "database")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.decode() == (
        f"store migrate: 3 files to the database: 3 copied ({size:.1f} MB), 0 there already, "
        "0 damaged in the source and not copied; the source keeps them all\n"
    )
    database = DatabaseStore(Database(desk.settings.database_url))
    try:
        assert files_of(database) == before
        # the desk on the database store alone: its rows name the same files
        shutil.rmtree(desk.root / "data" / "blobs")
        shutil.rmtree(desk.root / "data" / "raw")
        desk.rewrite_config(store={"backend": "database"})
        desk.close()
        on_database = DeskWorld(
            desk.account,
            desk.smtp,
            desk.root,
            tables={"desk": {"secret": SECRET}, "limits": LIMITS, "store": {"backend": "database"}},
            database_url=desk.settings.database_url,
            clock=desk.clock,
        )
        on_database.deliver(agent_reply(notice, ALICE, "#files"))
        on_database.run_once()
        [files] = [m for m in on_database.mails_to(ALICE) if " Files" in subject(m)]
        assert attachments(files) == {"scan.pdf": scan, "logs.pdf": logs}
        on_database.close()

        back = desk.cli("store", "migrate", "--to", "directory")
        assert back.returncode == 0, back.stderr
        assert back.stdout.decode().startswith("store migrate: 3 files to the directory: 3 copied")
        assert files_of(DirectoryStore(desk.root / "data")) == before
    finally:
        database.close()


def test_a_store_migrate_killed_midway_is_finished_by_the_next_run(
    desk: DeskWorld, tmp_path: Path
) -> None:
    directory = DirectoryStore(desk.root / "data")
    kept = [directory.put_blob(blob(f"file-{i}", 1_500_000 + i)) for i in range(24)]
    database = DatabaseStore(Database(desk.settings.database_url))
    try:
        migrating = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "store", "migrate", "--to", "database"],
            env={**os.environ, "MAILDESK_CONFIG": str(desk.config_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: database.totals()[0] >= 1, 60, "a first file copied")
        migrating.send_signal(signal.SIGKILL)
        migrating.wait()
        done_before = database.totals()[0]
        assert 1 <= done_before < len(kept)

        again = desk.cli("store", "migrate", "--to", "database")
        assert again.returncode == 0, again.stderr
        said = again.stdout.decode()
        assert f"{len(kept) - done_before} copied" in said
        assert f"{done_before} there already, 0 damaged" in said
        assert files_of(database) == files_of(directory)
        assert sorted(database.names()) == sorted(kept)
    finally:
        database.close()


def test_a_file_kept_in_one_hosts_directory_is_named_where_it_is_from_the_other(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> None:
    """Host a kept its files in its own directory; host b, on the database store, cannot read
    them, and says what copies them where it can, which then works."""
    a = host(
        "a",
        imap_server,
        smtp_server,
        tmp_path,
        database_url=postgres_url,
        tables={"store": {"backend": "directory"}},
    )
    b = host("b", imap_server, smtp_server, tmp_path, database_url=postgres_url)
    try:
        logs = blob("logs.pdf", 200_000)
        a.deliver(with_files(customer_mail("Scanner offline", "Log attached."), ("logs.pdf", logs)))
        a.run_once()
        out = tmp_path / "out"

        missing = b.cli("tickets", "files", "1", "-o", str(out))
        assert missing.returncode == 1
        said = missing.stderr.decode()
        assert "logs.pdf: not readable: " in said
        assert 'a host that keeps files in its data_dir ([store] backend = "directory")' in said
        assert "run `maildesk store migrate --to database` there" in said

        # an agent's #files through host b names it, and why, not as too large when it came
        [notice] = a.mails_to(ALICE)
        b.deliver(agent_reply(notice, ALICE, "#files"))
        b.run_once()
        [files] = [m for m in b.mails_to(ALICE) if " Files" in subject(m)]
        listed = " ".join(text_of(files).split())
        assert "logs.pdf (200 KB): the file store this host reads does not have it" in listed
        assert "larger than max_attachment_bytes" not in listed
        assert attachments(files) == {}

        assert a.cli("store", "migrate", "--to", "database").returncode == 0
        found = b.cli("tickets", "files", "1", "-o", str(out))
        assert found.returncode == 0, found.stderr
        assert (out / "logs.pdf").read_bytes() == logs
    finally:
        a.close()
        b.close()
