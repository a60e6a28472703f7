"""The benchmark's mail world: one Dovecot, one SMTP capture, mail corpora and maildesk runs.

Everything a part needs to set up a fair comparison: a fresh mailbox per arm on the same Dovecot,
the same corpus for every arm, a config file for a maildesk subprocess, and a way to run a
subprocess and learn its wall time and peak RSS.
"""

from __future__ import annotations

import email.policy
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
from imapclient import IMAPClient

from maildesk.demo.configs import config_text
from maildesk.demo.world import Captured, SmtpServer
from tests.servers import DovecotServer

ROOT = Path(__file__).resolve().parent.parent
AGENT = "agent@example.com"
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


@dataclass(frozen=True, slots=True)
class Account:
    """One mailbox on the benchmark's Dovecot."""

    username: str
    password: str
    host: str
    port: int

    def client(self) -> IMAPClient:
        client = IMAPClient(self.host, self.port, ssl=False, timeout=60)
        client._imap.debug = 0  # imapclient formats every response for debugging otherwise
        client.login(self.username, self.password)
        return client

    def load(self, messages: Sequence[bytes], folder: str = "INBOX") -> None:
        """APPEND every message over one connection."""
        client = self.client()
        try:
            for raw in messages:
                client.append(folder, raw)
        finally:
            client.logout()

    def count(self, folder: str) -> int:
        client = self.client()
        try:
            if not client.folder_exists(folder):
                return 0
            return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])
        finally:
            client.logout()


class World:
    """Dovecot and the SMTP capture, started once for the whole run; a temp dir for the rest."""

    def __init__(self) -> None:
        self.dovecot = DovecotServer()
        self.smtp = SmtpServer()
        self.dir = Path(tempfile.mkdtemp(prefix="maildesk-bench-"))
        self._numbers = 0
        self.dovecot_version = subprocess.run(
            [shutil.which("dovecot") or "/usr/sbin/dovecot", "--version"],
            capture_output=True,
            text=True,
        ).stdout.strip()

    def close(self) -> None:
        self.smtp.close()
        self.dovecot.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def account(self, kind: str) -> Account:
        self._numbers += 1
        username = f"{kind}{self._numbers}@example.test"
        password = secrets.token_hex(8)
        self.dovecot.add_user(username, password)
        return Account(username, password, self.dovecot.host, self.dovecot.port)

    def workdir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mails_to_domain(self, domain: str) -> list[Captured]:
        return [m for m in self.smtp.messages if any(r.endswith("@" + domain) for r in m.rcpt_tos)]

    def wait_smtp(self, predicate: Callable[[list[Captured]], bool], timeout: float) -> float:
        """Block until the capture satisfies ``predicate``; returns the monotonic time then."""
        self.smtp.wait_for(predicate, timeout)
        return time.monotonic()


# --------------------------------------------------------------------------- mail


def customer_mail(
    index: int,
    domain: str,
    *,
    attachment: int = 0,
    in_reply_to: str | None = None,
) -> bytes:
    """A customer's mail from ``c<index>@<domain>``, with an attachment of ``attachment`` bytes."""
    msg = EmailMessage()
    msg["From"] = f"Customer {index} <c{index}@{domain}>"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Order {index} has not arrived"
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<m{index}.{secrets.token_hex(6)}@{domain}>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    paragraph = (
        f"Hello, my order number {index} was due last week and has still not arrived. "
        "Could you look into it and tell me when I can expect it? Thank you.\n\n"
    )
    msg.set_content(paragraph * 6)
    if attachment:
        msg.add_attachment(
            os.urandom(attachment),
            maintype="application",
            subtype="octet-stream",
            filename=f"invoice-{index}.pdf",
        )
    return msg.as_bytes(policy=email.policy.SMTP)


def corpus(
    count: int, domain: str, *, attach_every: int = 5, attach_bytes: int = 100_000
) -> list[bytes]:
    """``count`` mails from distinct customers; one in ``attach_every`` has an attachment."""
    return [
        customer_mail(i, domain, attachment=attach_bytes if i % attach_every == 0 else 0)
        for i in range(count)
    ]


# --------------------------------------------------------------------------- maildesk


def write_config(
    directory: Path,
    account: Account,
    smtp_port: int,
    *,
    database_url: str | None = None,
    limits: dict[str, Any] | None = None,
    store: str | None = None,
) -> Path:
    """A maildesk config for one mailbox on ``account``, one team with one agent; ``limits``:
    more ``[limits]`` keys; ``store``: its ``[store] backend`` (else the default)."""
    text = config_text(
        desk={
            "name": "Example Support",
            "address": account.username,
            "data_dir": directory / "data",
            "secret": secrets.token_hex(16),
        },
        database={"url": database_url} if database_url else None,
        store={"backend": store} if store else None,
        mailboxes=[
            {
                "name": "support",
                "host": account.host,
                "port": account.port,
                "security": "none",
                "username": account.username,
                "password": account.password,
                # the corpus writes to the desk by this name (an alias, as mail to a desk is)
                "addresses": ["support@example.test"],
                "poll_seconds": 5,
                "team": "support",
            }
        ],
        smtp={"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 30},
        teams=[{"name": "support"}],
        agents=[{"email": AGENT, "name": "Agent", "teams": ["support"]}],
        log={"level": "WARNING"},
        # every customer of a run writes for the first time, within the hour: far more first
        # contacts than a desk's cap on their acknowledgments, which is not what is measured
        limits={"new_sender_acks_per_hour": 1000000, **(limits or {})},
    )
    path = directory / "maildesk.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass(frozen=True, slots=True)
class Run:
    """A finished subprocess: wall seconds, peak memory in MB, exit code, what it printed.

    ``peak_rss_mb`` is the largest high-water mark of the command and its children (``wait4``);
    ``peak_tree_mb`` the largest sampled sum of their resident memory at one moment, and
    ``peak_pss_mb`` of their proportional memory (each shared page counted once)."""

    seconds: float
    peak_rss_mb: float
    peak_tree_mb: float
    returncode: int
    output: str
    peak_pss_mb: float = 0.0


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    pss: bool = False,
) -> Run:
    """Run ``argv`` through ``benchmarks.launch``; its wall time and its own peak memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch) / "figures.json"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.launch",
                *(["--pss"] if pss else []),
                str(figures),
                *argv,
            ],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(f"{argv[0]} did not finish within {timeout} s") from None
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
        if process.returncode != 0 or not figures.exists():
            raise RuntimeError(f"the launcher failed:\n{output[-3000:]}")
        measured = json.loads(figures.read_text())
    return Run(
        measured["seconds"],
        measured["maxrss_kb"] / 1024,
        measured["tree_peak_kb"] / 1024,
        measured["returncode"],
        output,
        measured["tree_peak_pss_kb"] / 1024,
    )


def maildesk(config: Path, *args: str, env: dict[str, str] | None = None, pss: bool = False) -> Run:
    """``maildesk ARGS`` through the launcher; ``pss`` for the proportional memory too (costly:
    only where memory is what is measured)."""
    argv = [sys.executable, "-m", "maildesk", "--config", str(config), *args]
    return run(argv, env=env, pss=pss)


def upgrade(config: Path) -> None:
    done = maildesk(config, "db", "upgrade")
    if done.returncode != 0:
        raise RuntimeError(f"maildesk db upgrade failed:\n{done.output}")


# --------------------------------------------------------------------------- PostgreSQL


def postgres_database() -> str | None:
    """A fresh PostgreSQL database as an SQLAlchemy URL, or None when PostgreSQL is down."""
    name = f"maildesk_bench_{secrets.token_hex(5)}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
