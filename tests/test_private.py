"""Private files: whatever umask maildesk is started with, what it keeps (database, raw mail,
attachments, the secret) only its own user can read."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

from maildesk.mailworld import ImapServer, SmtpServer
from tests.desk import DeskWorld, config_text, customer_mail
from tests.servers import ImapAccount, fresh_user

SCAN_BYTES = 900_000  # random: over 1.2 MB once base64-encoded, so the raw mail goes to disk


def modes(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Directories (``root`` itself as ".") and files under ``root``, with their octal modes."""
    directories = {".": f"{stat.S_IMODE(root.stat().st_mode):o}"}
    files = {}
    for directory, dirs, names in os.walk(root):
        for name, into in [(d, directories) for d in dirs] + [(n, files) for n in names]:
            path = Path(directory) / name
            into[str(path.relative_to(root))] = f"{stat.S_IMODE(path.lstat().st_mode):o}"
    return directories, files


def assert_private(root: Path) -> dict[str, str]:
    """Every directory 0700 and every file 0600; the files, for the caller to check they are
    the ones expected (an empty tree would pass the first part)."""
    directories, files = modes(root)
    assert {d: m for d, m in directories.items() if m != "700"} == {}
    assert {f: m for f, m in files.items() if m != "600"} == {}
    return files


def maildesk(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``maildesk ARGS`` as its own process, started with umask 022 as a login shell has it."""
    env = {k: v for k, v in os.environ.items() if k != "MAILDESK_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        umask=0o022,
    )


def deliver_attachments(account: ImapAccount) -> None:
    """A mail with a small attachment, and one whose raw bytes are over 1 MiB."""
    invoice = customer_mail("Invoice", "The invoice is attached.")
    invoice.add_attachment(
        b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    scan = customer_mail("Scan", "The scan is attached.", sender="erin@customer.test")
    scan.add_attachment(
        secrets.token_bytes(SCAN_BYTES), maintype="image", subtype="png", filename="scan.png"
    )
    for mail in (invoice, scan):
        account.append(bytes(mail))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def assert_kept(files: dict[str, str]) -> None:
    """The database, the secret, one raw mail and both attachments are on disk."""
    assert {"maildesk.db", "secret"} <= set(files)
    assert len([f for f in files if f.startswith("raw/") and f.endswith(".eml")]) == 1
    assert len([f for f in files if f.startswith("blobs/")]) == 2


def test_run_once_started_under_umask_022_keeps_every_file_private(
    imap_server: ImapAccount, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    path = write_config(tmp_path / "maildesk.toml", config_text(imap_server, smtp_server, data))
    deliver_attachments(imap_server)

    done = maildesk(path, "run", "--once")
    assert done.returncode == 0, done.stderr
    tickets = json.loads(maildesk(path, "tickets", "list", "--json").stdout)
    assert sorted(t["subject"] for t in tickets) == ["Invoice", "Scan"]
    assert_kept(assert_private(data))
    assert "read by others" not in done.stderr


def test_the_database_wal_and_shm_are_private_whatever_the_umask(
    pymap_server: ImapServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """In a process that kept umask 022 (no ``maildesk`` start): the modes are given, not left
    to the umask. Looked at while the database is open, when its -wal and -shm exist."""
    os.umask(0o022)
    account = ImapAccount("pymap", pymap_server, *fresh_user())
    deliver_attachments(account)
    world = DeskWorld(account, smtp_server, tmp_path)
    try:
        assert world.run_once() == 0
        assert len(world.tickets()) == 2
        files = assert_private(tmp_path / "data")
    finally:
        world.close()
    assert {"maildesk.db-wal", "maildesk.db-shm"} <= set(files)
    assert_kept(files)
