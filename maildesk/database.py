"""The engine and the session factory: one ``Database`` per URL, its transactions, schema
upgrades and the cheap probes made while it is down. The tables are in ``models``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, false, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from maildesk import private
from maildesk.models import DatabaseError, Lease

__all__ = ["Database", "DatabaseError", "Session"]

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, synchronous: str = "FULL") -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed message survives power loss (WAL + NORMAL may roll it back).
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# The newest migration in maildesk/migrations/versions (a test keeps the two in step).
HEAD_REVISION = "0015"


def _private_sqlite_files(path: Path) -> None:
    """The database file made 0600 before SQLite opens it (its ``-wal``, ``-shm`` and journal
    take that mode), in a 0700 directory; files of an older start found wider are tightened."""
    private.make_dirs(path.parent)
    private.create_empty(path)
    for suffix in ("", "-wal", "-shm", "-journal"):
        tightened = private.tighten(path.with_name(path.name + suffix))
        if tightened:
            log.warning("%s", tightened)


class Database:
    """The engine and session factory for one database URL."""

    def __init__(self, url: str, *, flush_each_commit: bool = True) -> None:
        """``flush_each_commit=False`` (SQLite): commits are not flushed to disk one by one
        but with the next flushed commit of any process, or the next checkpoint. For the
        delivery process: a delivery outcome lost to a power cut only sends that mail again
        (as a crash does), and ingestion's commits, flushed each, carry its writes to disk."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # every engine has hide_parameters: an error's text names the statement, never the
        # values (the desk's secret as it is kept, customers' words), as it reaches a log
        if self.is_sqlite:
            path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
            if path and path != ":memory:":
                _private_sqlite_files(Path(path))
            self.engine: Engine = create_engine(
                url,
                connect_args={"timeout": 10, "check_same_thread": False},
                hide_parameters=True,
            )
            synchronous = "FULL" if flush_each_commit else "NORMAL"
            event.listen(
                self.engine,
                "connect",
                lambda conn, record: _sqlite_pragmas(conn, record, synchronous=synchronous),
            )
        else:
            self.engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args=_timeout(url),
                hide_parameters=True,
            )
        self._probing: Engine | None = None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time, and a waiting writer sleeps in its busy handler
        # (up to 100 ms a try): threads of one process queue here instead, in order.
        self._turn: AbstractContextManager[Any] = (
            threading.RLock() if self.is_sqlite else nullcontext()
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception."""
        try:
            with self._turn, self.sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise DatabaseError(_one_line(exc)) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise DatabaseError(_one_line(exc)) from exc
            raise

    def upgrade(self) -> None:
        """Bring the schema to the newest revision (alembic).

        A database already at the newest revision is recognised with one query, without
        loading alembic: that is a third of the daemon's start-up time."""
        if self.revision() == HEAD_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        config.attributes["engine"] = self.engine
        try:
            command.upgrade(config, "head")
        except OperationalError as exc:
            raise DatabaseError(_one_line(exc)) from exc

    def revision(self) -> str | None:
        """The schema revision recorded in the database (None: none, or several)."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        except DBAPIError:  # no such table yet: a new database
            return None
        return str(rows[0][0]) if len(rows) == 1 else None

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseError(_one_line(exc)) from exc

    def probe(self) -> None:
        """Raise ``DatabaseError`` unless the database takes a write now: the cheap check
        made while it is down, on a connection of its own (never one of the pool's).

        An UPDATE that matches no row still takes SQLite's write lock, so a lock held by
        another process is seen, after a wait of ``PROBE_WAIT`` (not the busy timeout)."""
        if self._probing is None:
            wait = {"timeout": PROBE_WAIT} if self.is_sqlite else _timeout(self.url)
            self._probing = create_engine(
                self.url, poolclass=NullPool, connect_args=wait, hide_parameters=True
            )
        try:
            with self._probing.connect() as conn:
                conn.execute(update(Lease).where(false()).values(holder=Lease.holder))
                conn.rollback()
        except (OperationalError, DBAPIError) as exc:
            raise DatabaseError(_one_line(exc)) from exc

    def dispose(self) -> None:
        self.engine.dispose()
        if self._probing is not None:
            self._probing.dispose()


# seconds: how long a probe of a database that is down waits for SQLite's write lock
PROBE_WAIT = 1.0
# seconds: how long a connection to PostgreSQL may take (a server that accepts the connection
# but never answers would otherwise hold the thread for good)
CONNECT_TIMEOUT = 10


def _timeout(url: str) -> dict[str, Any]:
    """``connect_timeout`` for the driver, unless the URL sets its own."""
    return {} if "connect_timeout=" in url else {"connect_timeout": CONNECT_TIMEOUT}


def _one_line(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
