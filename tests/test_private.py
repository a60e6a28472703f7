"""Private files: whatever umask maildesk is started with, what it keeps (database, raw mail,
attachments, the secret) only its own user can read; its own files found wider are tightened
and said so; what the admin owns is left alone and named in a warning, by every command as it
starts and by check-config before it connects anywhere."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from maildesk.demo import configs
from tests.desk import DeskWorld, config_text, customer_mail
from tests.loopback import PymapServer, ScriptedSmtp
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
    """The database (which keeps the secret), one raw mail and both attachments are on disk."""
    assert "maildesk.db" in files and "secret" not in files
    assert len([f for f in files if f.startswith("raw/") and f.endswith(".eml")]) == 1
    assert len([f for f in files if f.startswith("blobs/")]) == 2


def test_run_once_started_under_umask_022_keeps_every_file_private(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
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
    pymap_server: PymapServer, smtp_server: ScriptedSmtp, tmp_path: Path
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


def test_an_older_installation_keeps_working_its_own_files_tightened_the_admins_named(
    pymap_server: PymapServer, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    account = ImapAccount("pymap", pymap_server, *fresh_user())
    data = tmp_path / "data"
    path = write_config(tmp_path / "maildesk.toml", config_text(account, smtp_server, data))
    deliver_attachments(account)
    data.mkdir(mode=0o700)
    (data / "secret").write_text(secrets.token_urlsafe(32) + "\n")  # an older maildesk's
    assert maildesk(path, "run", "--once").returncode == 0
    # as an older version under umask 022 left them, in a data directory the admin made 755
    for name, mode in (("maildesk.db", 0o644), ("secret", 0o644), ("raw", 0o755), (".", 0o755)):
        (data / name).chmod(mode)

    done = maildesk(path, "run", "--once")
    assert done.returncode == 0, done.stderr
    for name, was, now in (("maildesk.db", 644, 600), ("secret", 644, 600), ("raw", 755, 700)):
        assert f"{data / name} could be read by others (mode {was}); made it {now}" in done.stderr
    assert (
        f"[desk] data_dir {data} can be read by others (mode 755), and tickets, mail and the "
        f"secret are kept there; run chmod 700 {data}" in done.stderr
    )
    directories, files = modes(data)
    assert directories["."] == "755"  # the admin's: named, not changed
    assert (directories["raw"], files["maildesk.db"], files["secret"]) == ("700", "600", "600")

    data.chmod(0o700)
    done = maildesk(path, "tickets", "list")
    assert done.returncode == 0
    assert "by others" not in done.stderr
    assert_private(data)


def test_check_config_names_what_others_could_read_before_it_connects(
    pymap_server: PymapServer, smtp_server: ScriptedSmtp, postgres_url: str, tmp_path: Path
) -> None:
    account = ImapAccount("pymap", pymap_server, *fresh_user())
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # made by the admin, under umask 022
    data.chmod(0o755)
    password_file = tmp_path / "imap-password"
    password_file.write_text(account.password + "\n")
    password_file.chmod(0o644)
    # trust authentication on the test server: the password in the url is never asked for
    url = postgres_url.replace("postgres@", "postgres:hunter2-db@")
    # 0.0.0.0 is not a loopback address, so the password would go unencrypted to "another
    # machine" as far as the config says; Linux connects to 0.0.0.0 on this machine, over
    # loopback, so the check that follows reaches the test server and nothing else.
    text = config_text(
        account,
        smtp_server,
        data,
        mailbox={"password": None, "password_file": password_file, "host": "0.0.0.0"},
        database={"url": url},
    )
    path = write_config(tmp_path / "maildesk.toml", text)

    done = maildesk(path, "check-config", "--no-probe")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[0] == f"ok   config {path}"
    assert [line.split()[0] for line in lines[1:]] == ["warn"] * 4 + ["ok"] * 4
    warned = "\n".join(lines[1:5])
    assert f"[desk] data_dir {data} can be read by others (mode 755)" in warned
    assert f"run chmod 700 {data}" in warned
    assert (
        f"[[mailboxes]] #1 password_file: {password_file} can be read by others (mode 644); "
        f"run chmod 600 {password_file}" in warned
    )
    assert "[database] url holds a password" in warned and ".pgpass" in warned
    assert (
        '[[mailboxes]] #1 (support) security = "none" sends the password unencrypted to 0.0.0.0'
        in warned
    )
    assert lines[5].startswith("ok   templates") and lines[6].startswith("ok   database")
    assert lines[7].startswith("ok   mailbox support")
    for secret in ("hunter2-db", account.password):
        assert secret not in done.stdout + done.stderr
    assert "warn" not in done.stderr and "by others" not in done.stderr  # printed once, not logged


NOBODY = 65534  # the data directory's owner here: the service's user


@pytest.mark.skipif(os.geteuid() != 0, reason="runs maildesk as root")
@pytest.mark.parametrize(
    "command",
    [
        ("run", "--once"),
        ("db", "upgrade"),
        ("quarantine", "replay", "--all"),
        ("deliver", "--once"),
        ("check-config", "--no-probe"),
        ("tickets", "list"),  # SQLite writes its -wal and -shm even to read
        ("stats",),
    ],
    ids=" ".join,
)
def test_root_is_refused_a_data_dir_that_belongs_to_the_services_user(
    pymap_server: PymapServer, smtp_server: ScriptedSmtp, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """An admin runs ``maildesk`` as root on the service's config: what it wrote into the data
    directory (the database and its journal, raw mail, attachments, the secret) would be
    root's, and the service, running as its own user, would fail on it later. One line names
    the key and says how to run it as the owner; nothing is written."""
    account = ImapAccount("pymap", pymap_server, *fresh_user())
    deliver_attachments(account)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)
    path = write_config(tmp_path / "maildesk.toml", config_text(account, smtp_server, data))

    done = maildesk(path, *command)
    assert done.returncode == 78
    assert done.stdout == ""
    assert done.stderr == (
        f"maildesk: config error: {path}: [desk] data_dir: {data} belongs to user nobody; "
        "run maildesk as nobody (runuser -u nobody -- maildesk ...): files root made there "
        "would be root's, and maildesk running as nobody could not write them\n"
    )
    assert list(data.iterdir()) == []
    assert len(account.uids("INBOX")) == 2  # no mail taken


@pytest.mark.skipif(os.geteuid() != 0, reason="runs maildesk as root")
def test_root_piping_mail_into_the_services_data_dir_is_a_temporary_failure(
    smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """An MTA's pipe running as root: exit 75 (the MTA keeps the mail and tries again once the
    pipe runs as the right user) with a line that names the key and no path; nothing is
    written, not even a data directory yet to be made under one of the service's."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    data = home / "data"
    text = configs.config_text(
        desk={"name": "Help", "address": "support@example.com", "data_dir": data},
        mailboxes=[{"name": "support", "transport": "pipe", "team": "support"}],
        smtp={"host": "127.0.0.1", "port": smtp_server.port},
        teams=[{"name": "support"}],
    )
    path = write_config(tmp_path / "maildesk.toml", text)
    mail = customer_mail("Piped", "Hello.")

    done = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), "ingest"],
        input=bytes(mail),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 75
    assert done.stdout == b""
    assert done.stderr == (
        b"maildesk: temporary failure: run as user nobody, whose data_dir it is, not as root\n"
    )
    assert list(home.iterdir()) == []
