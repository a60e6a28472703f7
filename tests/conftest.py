"""Fixtures: real servers on loopback (pymap, Dovecot, SMTP capture, PostgreSQL).

IMAP servers are started once per session; each test gets a fresh user (and so an empty
mailbox). ``imap_server`` runs a test against pymap and Dovecot alike. Dovecot tests skip when
the binary is missing, unless ``MAILDESK_REQUIRE_DOVECOT=1`` (CI), where they fail instead; the
same goes for PostgreSQL with ``MAILDESK_REQUIRE_POSTGRES=1`` and Postfix with
``MAILDESK_REQUIRE_POSTFIX=1``. ``database_url`` runs a test on SQLite, and on PostgreSQL too
where the test asks for both.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest

from tests.desk import DeskWorld, RunningDaemon, customer_mail
from tests.loopback import PymapServer, ScriptedSmtp
from tests.servers import (
    DOVECOT,
    POSTGRES_BIN,
    Certificate,
    DovecotServer,
    ImapAccount,
    PostgresServer,
    fresh_user,
    make_certificate,
)


def _required(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


def _unavailable(what: str, variable: str) -> NoReturn:
    if _required(variable):
        pytest.fail(f"{what} is not available but {variable}=1", pytrace=False)
    pytest.skip(f"{what} not available")


# --------------------------------------------------------------------------- IMAP


@pytest.fixture(scope="session")
def pymap_server() -> Iterator[PymapServer]:
    """pymap (in-memory) on 127.0.0.1, shared by the session; add users per test."""
    with PymapServer() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[DovecotServer]:
    """A throwaway Dovecot on 127.0.0.1 (plain text), shared by the session."""
    if DOVECOT is None:
        _unavailable("the dovecot binary", "MAILDESK_REQUIRE_DOVECOT")
    with DovecotServer() as server:
        yield server


@pytest.fixture(scope="session")
def certificate() -> Iterator[Certificate]:
    """A self-signed certificate for 127.0.0.1 (``client_context()`` trusts it)."""
    directory = Path(tempfile.mkdtemp(prefix="maildesk-cert-"))
    directory.chmod(0o755)
    try:
        yield make_certificate(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_tls_server(certificate: Certificate) -> Iterator[DovecotServer]:
    """Dovecot with the self-signed certificate: STARTTLS on ``port``, TLS on ``tls_port``."""
    if DOVECOT is None:
        _unavailable("the dovecot binary", "MAILDESK_REQUIRE_DOVECOT")
    with DovecotServer(certificate=certificate) as server:
        yield server


@pytest.fixture(params=["pymap", "dovecot"])
def imap_server(request: pytest.FixtureRequest) -> Iterator[ImapAccount]:
    """A fresh user on pymap, then on Dovecot: the same test runs against both.

    ``.config(**overrides)`` gives a ``MailboxConfig``; ``.append(raw)``, ``.uids(folder)``,
    ``.messages(folder)`` work over IMAP; ``.stop()``/``.start()``/``.restart()`` make an
    outage (the server comes back for the next test in any case).
    """
    kind: str = request.param
    fixture = "pymap_server" if kind == "pymap" else "dovecot_server"
    server = request.getfixturevalue(fixture)
    username, password = fresh_user()
    account = ImapAccount(kind, server, username, password)
    try:
        yield account
    finally:
        server.start()


# --------------------------------------------------------------------------- SMTP


@pytest.fixture
def smtp_server() -> Iterator[ScriptedSmtp]:
    """An SMTP capture on 127.0.0.1 (no AUTH); ``.messages``, ``.wait_for``, ``.script``."""
    with ScriptedSmtp() as server:
        yield server


# --------------------------------------------------------------------------- PostgreSQL

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, as an SQLAlchemy URL; dropped after."""
    name = f"maildesk_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError:
        _unavailable("PostgreSQL at 127.0.0.1:5432", "MAILDESK_REQUIRE_POSTGRES")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The desk's ``[database] url``: None (SQLite in the data_dir) unless the test is
    parametrised with ``"postgresql"`` (``tests.desk.ON_BOTH_DATABASES``), then a fresh
    PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


# --------------------------------------------------------------------------- Postfix

POSTFIX = shutil.which("postfix") or (
    "/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None
)


@pytest.fixture
def postfix_binary() -> str:
    """The ``postfix`` command, for a test that runs a Postfix of its own (as root: it starts
    a mail system and hands mail to a pipe user)."""
    if POSTFIX is None:
        _unavailable("the postfix binary", "MAILDESK_REQUIRE_POSTFIX")
    if os.geteuid() != 0:
        _unavailable("root (to start Postfix)", "MAILDESK_REQUIRE_POSTFIX")
    return POSTFIX


@pytest.fixture
def pipe_python() -> Iterator[tuple[str, Path]]:
    """How an MTA's pipe, as the unprivileged user ``nobody``, runs this checkout: an
    interpreter with maildesk's libraries that nobody can run (``MAILDESK_PIPE_PYTHON``, else
    this one), and a copy of the checkout nobody can read, for ``PYTHONPATH``. Unavailable
    when nobody cannot run the interpreter (one under root's home, say)."""
    python = os.environ.get("MAILDESK_PIPE_PYTHON") or sys.executable
    code = Path(tempfile.mkdtemp(prefix="maildesk-code-"))
    code.chmod(0o755)
    try:
        checkout = Path(__file__).resolve().parent.parent
        for part in ("maildesk", "templates"):
            shutil.copytree(
                checkout / part, code / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        try:
            runs = (
                subprocess.run(
                    [python, "-c", "import maildesk.ui.cli"],
                    env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
                    user=NOBODY,
                    group=NOBODY,
                    extra_groups=[],
                    capture_output=True,
                    cwd="/",
                ).returncode
                == 0
            )
        except OSError:  # not even executable for nobody
            runs = False
        if not runs:
            _unavailable(
                f"a Python that user nobody can run with maildesk's libraries ({python} "
                "cannot: set MAILDESK_PIPE_PYTHON, as .ci/run does)",
                "MAILDESK_REQUIRE_POSTFIX",
            )
        yield python, code
    finally:
        shutil.rmtree(code, ignore_errors=True)


NOBODY = 65534


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the test's own, which the test may stop and start (never the
    shared one); needs PostgreSQL's ``initdb`` and ``pg_ctl``."""
    if POSTGRES_BIN is None:
        _unavailable("PostgreSQL's initdb and pg_ctl", "MAILDESK_REQUIRE_POSTGRES")
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- the CLI in-process


@pytest.fixture(autouse=True)
def process_umask() -> Iterator[None]:
    """``cli.main`` sets the process umask to 077 (as maildesk should); tests that call it
    in-process give the test process its own back, for the servers that run as other users."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """The CLI takes over the root logger (as a program should); give it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {n: logging.getLogger(n).level for n in logging.root.manager.loggerDict}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in named.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def daemon(world: DeskWorld, tmp_path: Path) -> Iterator[RunningDaemon]:
    """``maildesk run`` on the module's ``world``, ready once it has answered a first mail:
    logged in, idling, its parse worker started."""
    d = RunningDaemon(world, tmp_path / "daemon.log")
    world.deliver(customer_mail("Hello", "Just checking in.", sender="first@customer.test"))
    world.wait_mails_to("first@customer.test", 1, timeout=30)
    yield d
    d.stop()
