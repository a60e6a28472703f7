"""Real servers for the test fixtures: a throwaway Dovecot, self-signed certificates, a
PostgreSQL cluster of a test's own, and a TCP relay that can stall.

pymap and the SMTP capture live in ``tests.loopback`` (the demo world's servers, with what tests
vary); this module adds Dovecot (started from its own config file in a temp dir, on its own port)
with the same small interface as ``PymapServer``, so a test can run unchanged against either.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from maildesk.demo import world as mailworld
from maildesk.mail.imap import MailboxConfig

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
)
MAIL_UID = 65534  # Dovecot refuses uid 0 for mail; "nobody" owns the test homes

_user_numbers = itertools.count(1)


def fresh_user(kind: str = "user") -> tuple[str, str]:
    """A new address and password, unique within the test session."""
    return f"{kind}{next(_user_numbers)}@example.test", secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 (PEM files)."""

    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts exactly this certificate."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cert))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def make_certificate(directory: Path) -> Certificate:
    """Generate a self-signed certificate (CN and SAN 127.0.0.1) with the openssl tool."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)  # read by Dovecot's config process
    return Certificate(cert, key)


def wait_for_greeting(port: int, deadline: float, expect: bytes = b"* OK") -> None:
    """Connect until the server greets us, or raise TimeoutError at ``deadline``."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((mailworld.LOOPBACK, port), timeout=1.0) as sock:
                if sock.recv(200).startswith(expect):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.01)  # retrying a connect, not synchronising on a state change
    raise TimeoutError(f"no greeting on port {port}: {last}")


_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = /dev/stderr
info_log_path = /dev/stderr
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mail_fsync = never
mailbox_list_index = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users/%u
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={dir}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
protocol imap {{
  mail_max_userip_connections = 1000
  {capability}
}}
"""


class DovecotServer:
    """Dovecot in the foreground from a config in its own temp dir, on its own free port(s).

    Users live in a passwd-file that Dovecot rereads, so ``add_user`` works while it runs.
    With ``certificate``, STARTTLS is offered on ``port`` and implicit TLS on ``tls_port``.
    ``capabilities`` replaces the post-login capability list (to take MOVE or IDLE away).
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        certificate: Certificate | None = None,
        capabilities: str | None = None,
    ) -> None:
        if DOVECOT is None:
            raise RuntimeError("the dovecot binary is not installed")
        self.host = mailworld.LOOPBACK
        self.users: dict[str, str] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="maildesk-dovecot-"))
        self.dir.chmod(0o755)
        (self.dir / "home").mkdir()
        os.chown(self.dir / "home", MAIL_UID, MAIL_UID)
        self.port = mailworld.free_port()
        self.tls_port = mailworld.free_port() if certificate else 0
        self.certificate = certificate
        ssl_files = ""
        if certificate:
            ssl_files = f"ssl_cert = <{certificate.cert}\nssl_key = <{certificate.key}"
        (self.dir / "users").mkdir()
        (self.dir / "users").chmod(0o755)
        (self.dir / "dovecot.conf").write_text(
            _CONFIG.format(
                dir=self.dir,
                uid=MAIL_UID,
                port=self.port,
                tls_port=self.tls_port,
                ssl="yes" if certificate else "no",
                ssl_files=ssl_files,
                capability=f"imap_capability = {capabilities}" if capabilities else "",
            )
        )
        self._log = open(self.dir / "dovecot.log", "ab")  # noqa: SIM115 - closed in close()
        self._process: subprocess.Popen[bytes] | None = None
        for username, password in (users or {}).items():
            self.add_user(username, password)
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def add_user(self, username: str, password: str) -> None:
        # One passwd-file per user: Dovecot rereads a changed passwd-file at most once a
        # second, but reads a file it has not seen yet at once.
        if any(c in username + password for c in ":/\n") or username.startswith("."):
            raise ValueError(f"not usable as a Dovecot test user: {username!r}")
        self.users[username] = password
        path = self.dir / "users" / username
        path.write_text(f"{username}:{{PLAIN}}{password}\n")
        path.chmod(0o644)

    def start(self) -> None:
        if self.running:
            return
        assert DOVECOT is not None
        self._process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,  # its own process group: stop() ends its children too
        )
        deadline = time.monotonic() + 10.0
        try:
            wait_for_greeting(self.port, deadline)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"Dovecot did not start: {exc}\n{self.log_tail()}") from None

    def stop(self) -> None:
        """SIGTERM and wait: connections drop, mail stays (an outage)."""
        process, self._process = self._process, None
        if process is None:
            return
        # Dovecot's imap processes outlive a SIGTERMed master while clients stay connected;
        # a real outage drops them, so signal the whole process group.
        group = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        text = (self.dir / "dovecot.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> DovecotServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mailbox_config(self, username: str, **overrides: Any) -> MailboxConfig:
        return mailworld.mailbox_config(
            self.host, self.port, username, self.users[username], **overrides
        )

    def append(self, username: str, raw: bytes, folder: str = "INBOX") -> int | None:
        return mailworld.append(self.mailbox_config(username), raw, folder)

    def messages(self, username: str, folder: str = "INBOX") -> list[bytes]:
        return mailworld.messages(self.mailbox_config(username), folder)

    def uids(self, username: str, folder: str = "INBOX") -> list[int]:
        return mailworld.uids(self.mailbox_config(username), folder)


def deliver_into(account: ImapAccount) -> Callable[[mailworld.Captured], None]:
    """An MTA's local delivery for ``SmtpServer.on_message``: mail accepted for the account's
    address, or a plus address of it (``user+tag@``, as Postfix's ``recipient_delimiter = +``
    does), is appended to its INBOX with ``Return-Path`` and ``Delivered-To``; other mail is
    dropped. Works for pymap and Dovecot alike, over IMAP."""
    local, _, domain = account.username.lower().partition("@")

    def deliver(captured: mailworld.Captured) -> None:
        for rcpt in captured.rcpt_tos:
            rcpt_local, _, rcpt_domain = rcpt.lower().partition("@")
            if rcpt_local.split("+", 1)[0] == local and rcpt_domain == domain:
                trace = f"Return-Path: <{captured.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
                account.append(trace.encode() + captured.raw)

    return deliver


class ImapTestServer(Protocol):
    """What ``PymapServer`` and ``DovecotServer`` have in common."""

    host: str
    users: dict[str, str]

    @property
    def port(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def add_user(self, username: str, password: str) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def mailbox_config(self, username: str, **overrides: Any) -> MailboxConfig: ...
    def append(self, username: str, raw: bytes, folder: str = "INBOX") -> int | None: ...
    def messages(self, username: str, folder: str = "INBOX") -> list[bytes]: ...
    def uids(self, username: str, folder: str = "INBOX") -> list[int]: ...


class ImapAccount:
    """One fresh user on a running IMAP server (pymap or Dovecot), as tests see it."""

    def __init__(self, kind: str, server: ImapTestServer, username: str, password: str) -> None:
        self.kind = kind
        self.server = server
        self.username = username
        self.password = password
        server.add_user(username, password)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def config(self, **overrides: Any) -> MailboxConfig:
        """``MailboxConfig`` for this user (plain text on loopback); keywords override."""
        return self.server.mailbox_config(self.username, **overrides)

    def append(self, raw: bytes, folder: str = "INBOX") -> int | None:
        """APPEND over IMAP (a fresh connection); returns the UID."""
        return self.server.append(self.username, raw, folder)

    def messages(self, folder: str = "INBOX") -> list[bytes]:
        return self.server.messages(self.username, folder)

    def uids(self, folder: str = "INBOX") -> list[int]:
        return self.server.uids(self.username, folder)

    def stop(self) -> None:
        """Take the whole server down (connections drop); mail is kept."""
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def restart(self) -> None:
        self.server.stop()
        self.server.start()


# --------------------------------------------------------------------------- PostgreSQL of a test's own

POSTGRES_BIN = next(
    (
        Path(p)
        for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()
    ),
    None,
)


class PostgresServer:
    """A PostgreSQL cluster of its own, in a temp dir, on a free loopback port: a test may stop
    and start it (the machine's shared server must never be stopped). Postgres refuses to run
    as root, so as root it runs as the ``postgres`` user, which owns the temp dir."""

    def __init__(self) -> None:
        assert POSTGRES_BIN is not None
        self.dir = Path(tempfile.mkdtemp(prefix="maildesk-pg-"))
        self.port = mailworld.free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self._run(
            "initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(POSTGRES_BIN / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.dir} -c fsync=off"
        )
        data, log = str(self.dir / "data"), str(self.dir / "postgres.log")
        self._run("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown, as ``systemctl stop postgresql`` does: sessions are ended."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- a network that stalls


class Relay:
    """A TCP relay on loopback to ``port`` whose traffic a test can ``freeze``: connections
    stay open and nothing more passes either way (a network path that went black), until
    ``thaw`` lets through what waited. The daemon talks to the real server behind it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.flowing = threading.Event()
        self.flowing.set()
        self._listener = socket.create_server((mailworld.LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((mailworld.LOOPBACK, self.target))
            self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pass, args=(source, sink), daemon=True).start()

    def _pass(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self.flowing.set()
        for sock in self._sockets:
            sock.close()
