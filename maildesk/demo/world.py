"""A throwaway mail world on loopback: an IMAP server (pymap) and an SMTP capture (aiosmtpd).

Not part of the production flow: ``maildesk demo`` starts one so the real daemon can be pointed
at real protocol servers on 127.0.0.1 (the test suite builds on the same servers, adding what
only tests vary). Each server runs its own asyncio loop in a background thread, starts in
milliseconds on a free port, and stops cleanly. Mail is put into and read out of the IMAP server
through the real protocol, via ``maildesk.mail.imap``.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import socket
import ssl
import threading
import uuid
import warnings
from argparse import Namespace
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Self, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, LoginPassword, Session
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config as _DictConfig
from pymap.backend.dict import DictBackend, Identity, Login
from pymap.backend.dict.mailbox import MailboxData
from pymap.concurrent import Event, Subsystem
from pymap.imap import IMAPServer
from pymap.selected import SelectedMailbox
from pymap.user import UserMetadata
from pysasl import SASLAuth
from pysasl.hashing import Cleartext

from maildesk.mail.imap import Mailbox, MailboxConfig

log = logging.getLogger("maildesk.mailworld")  # the logs name the job, not the module path

LOOPBACK = "127.0.0.1"

_T = TypeVar("_T")


class _LoopThread:
    """An asyncio loop running in a daemon thread; coroutines are submitted from outside."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


class _Listener:
    """A TCP listener on loopback that can be stopped (dropping its connections) and restarted
    on the same port, as a real server outage would."""

    def __init__(self, loop: _LoopThread, port: int) -> None:
        self._loop = loop
        self.port = port
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._open = False  # whether a connection made now is served (not between stop, start)

    @property
    def running(self) -> bool:
        return self._server is not None

    def track(self, transport: asyncio.BaseTransport) -> bool:
        """Serve ``transport``, unless the listener stopped since the connection was accepted
        (its handler runs after ``stop`` dropped the others): then it is dropped too, and
        False says so."""
        if not self._open:
            transport.abort()  # type: ignore[attr-defined]
            return False
        self._transports.add(transport)
        return True

    def start(self, create: Callable[[int], Coroutine[Any, Any, asyncio.Server]]) -> None:
        if self._server is not None:
            return
        self._open = True
        self._server = self._loop.call(create(self.port))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._open = False

        async def shut() -> None:
            server.close()
            for transport in list(self._transports):
                transport.abort()  # type: ignore[attr-defined]
            self._transports.clear()
            await server.wait_closed()

        self._loop.call(shut())


# --------------------------------------------------------------------------- IMAP (pymap)


_pymap_update_selected = MailboxData.update_selected


async def _update_selected_without_lost_wakeups(
    self: MailboxData, selected: SelectedMailbox, *, wait_on: Event | None = None
) -> SelectedMailbox:
    # pymap's IDLE waits for the *next* change signal, even when a change already landed
    # since the session last looked (while IDLE began, or while it re-armed after waking for
    # another session's flag update): such mail was announced only at the following change.
    # Report waiting changes at once instead.
    known = selected.mod_sequence
    if wait_on is not None and known is not None and self._mod_sequences.highest > known:
        wait_on = None
    return await _pymap_update_selected(self, selected, wait_on=wait_on)


def _mend_pymap_idle() -> None:
    """Make pymap's IDLE report changes that landed before it waited. Without it the desk hears
    of a message only at its next poll, and the demo's every step waits seconds for nothing.
    Done when the first server starts (not at import), once."""
    if MailboxData.update_selected is not _update_selected_without_lost_wakeups:
        MailboxData.update_selected = _update_selected_without_lost_wakeups  # type: ignore[method-assign]


class PymapConfig(_DictConfig):
    """pymap's in-memory backend config, quick to answer on loopback."""

    def __init__(self, args: Namespace, **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        # pysasl scans the installed entry points for mechanisms on every connection (~20 ms)
        self._sasl = SASLAuth.defaults()

    @property
    def tls_auth(self) -> SASLAuth:
        return self._sasl

    @property
    def greeting(self) -> bytes:
        # pymap looks up the host's FQDN on every connection, which can stall on DNS.
        return b"maildesk test IMAP server ready"


def pymap_options(port: int) -> dict[str, Any]:
    """The keyword arguments of pymap's config for a plain-text server on loopback."""
    return {
        "host": LOOPBACK,
        "port": port,
        "demo_data": False,
        "demo_user": "",
        "demo_password": "",
        "tls_enabled": False,
        "ssl_context": ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        "hash_context": Cleartext(),
        "cpu_subsystem": Subsystem.for_asyncio(),
        "invalid_user_sleep": 0.0,
        "reject_dnsbl": False,
        "bad_command_limit": None,
    }


class _Served:
    """What both servers share: a listener on a loopback port run by a loop thread of its own.
    ``stop()`` drops every connection and refuses new ones (an outage) until ``start()``."""

    _listener: _Listener
    _loop: _LoopThread

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def running(self) -> bool:
        return self._listener.running

    def stop(self) -> None:
        self._listener.stop()

    def close(self) -> None:
        self.stop()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImapServer(_Served):
    """pymap with its in-memory backend on 127.0.0.1: users and passwords given by the caller.

    Plain-text LOGIN is allowed from loopback. The stored mail survives ``stop()``/``start()``,
    like a real server's restart. ``_pymap_config`` and ``_pymap_login`` build pymap's parts; a
    subclass may build its own kinds.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *, port: int = 0) -> None:
        _mend_pymap_idle()
        self.host = LOOPBACK
        self.users: dict[str, str] = {}
        self._loop = _LoopThread("pymap")
        self._listener = _Listener(self._loop, port)
        args = Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None)
        self._config = self._pymap_config(args, pymap_options(port))
        self._login = self._pymap_login(self._config)
        self._backend = DictBackend(self._login, self._config)
        for username, password in (users or {}).items():
            self.add_user(username, password)
        self.start()

    def _pymap_config(self, args: Namespace, options: dict[str, Any]) -> PymapConfig:
        return PymapConfig(args, **options)

    def _pymap_login(self, config: PymapConfig) -> Login:
        return Login(config)

    def add_user(self, username: str, password: str) -> None:
        """Create (or replace) a user with an empty INBOX."""

        async def add() -> None:
            identity = Identity(username, self._login, None, frozenset())
            await identity.set(UserMetadata(self._config, username, password=password))

        self._loop.call(add())
        self.users[username] = password

    def start(self) -> None:
        """Listen (again) on the server's port."""
        imap = IMAPServer(self._backend.login, self._config)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self._listener.track(writer.transport):
                return
            info = SocketInfo.get(writer, None, unique_id=uuid.uuid4().bytes)
            await imap(reader, writer, info)

        async def create(port: int) -> asyncio.Server:
            self._config.apply_context()
            return await asyncio.start_server(on_connect, host=LOOPBACK, port=port)

        self._listener.start(create)

    def mailbox_config(self, username: str, **overrides: Any) -> MailboxConfig:
        """Settings for ``maildesk.mail.imap.Mailbox`` logging in as ``username`` (plain text)."""
        return mailbox_config(self.host, self.port, username, self.users[username], **overrides)

    def append(self, username: str, raw: bytes, folder: str = "INBOX") -> int | None:
        """APPEND one message over IMAP; returns its UID."""
        return append(self.mailbox_config(username), raw, folder)

    def messages(self, username: str, folder: str = "INBOX") -> list[bytes]:
        """The messages in ``folder``, in UID order, read over IMAP."""
        return messages(self.mailbox_config(username), folder)

    def uids(self, username: str, folder: str = "INBOX") -> list[int]:
        return uids(self.mailbox_config(username), folder)


def mailbox_config(
    host: str, port: int, username: str, password: str, /, **overrides: Any
) -> MailboxConfig:
    """A plain-text ``MailboxConfig`` for a loopback server; keyword arguments override."""
    values: dict[str, Any] = {
        "name": "support",
        "host": host,
        "port": port,
        "security": "none",
        "username": username,
        "password": password,
        "folder": "INBOX",
        "processed_folder": "Processed",
        "quarantine_folder": "Quarantine",
        "poll_seconds": 1.0,
    }
    values.update(overrides)
    return MailboxConfig(**values)


@contextmanager
def _logged_in(config: MailboxConfig) -> Iterator[Mailbox]:
    """A connected ``Mailbox``, logged out afterwards."""
    box = Mailbox(config)
    try:
        box.connect()
        yield box
    finally:
        box.close()


def append(config: MailboxConfig, raw: bytes, folder: str = "INBOX") -> int | None:
    """Log in, APPEND ``raw`` to ``folder``, log out; returns the new UID when the server says."""
    with _logged_in(config) as box:
        return box.append(folder, raw)


def messages(config: MailboxConfig, folder: str = "INBOX") -> list[bytes]:
    """Log in and read every message of ``folder`` (not deleted), in UID order."""
    with _logged_in(config) as box:
        return box.folder_messages(folder)


def uids(config: MailboxConfig, folder: str = "INBOX") -> list[int]:
    """Log in and list the UIDs of ``folder`` (not deleted), ascending."""
    with _logged_in(config) as box:
        return box.folder_uids(folder)


# --------------------------------------------------------------------------- SMTP (aiosmtpd)


@dataclass(frozen=True, slots=True)
class Captured:
    """One message accepted by the capture server."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    auth_user: str | None = None


class CaptureHandler:
    """aiosmtpd hooks: accept every command unless the server's ``refusal`` says otherwise,
    and record what arrives."""

    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refused = self._owner.refusal("mail", session)
        if refused:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refused = self._owner.refusal("rcpt", session, address)
        if refused:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        refused = self._owner.refusal("data", session)
        if refused:
            return refused
        raw = envelope.original_content or b""
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        auth = session.auth_data
        self._owner._record(
            Captured(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message=parsed,
                auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer(_Served):
    """An aiosmtpd capture server on 127.0.0.1 that records every accepted message (no AUTH,
    no TLS). ``stop()`` refuses connections until ``start()``. ``on_message`` is called with
    each accepted message, off the SMTP loop (to deliver it into IMAP mailboxes, say).
    A subclass may refuse commands (``refusal``), pass aiosmtpd more options
    (``_smtp_options``: STARTTLS, AUTH) or hooks (``_new_handler``).
    """

    def __init__(self, *, port: int = 0) -> None:
        self.host = LOOPBACK
        self._lock = threading.Condition()
        self._captured: list[Captured] = []
        self.on_message: Callable[[Captured], None] | None = None
        self._handler = self._new_handler()
        self._loop = _LoopThread("aiosmtpd")
        self._listener = _Listener(self._loop, port)
        self.start()

    @property
    def messages(self) -> list[Captured]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._lock:
            return list(self._captured)

    def wait_for(
        self, predicate: Callable[[list[Captured]], bool], timeout: float = 10.0
    ) -> list[Captured]:
        """Block until ``predicate(messages)`` holds; returns the messages then.

        Raises ``TimeoutError`` (listing what did arrive) after ``timeout`` seconds.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(list(self._captured)), timeout):
                seen = [(c.rcpt_tos, c.message.get("Subject")) for c in self._captured]
                raise TimeoutError(f"SMTP capture: condition not met in {timeout}s; got {seen}")
            return list(self._captured)

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """Block until at least ``count`` messages were accepted."""
        return self.wait_for(lambda msgs: len(msgs) >= count, timeout)

    def clear(self) -> None:
        with self._lock:
            self._captured.clear()

    def refusal(self, stage: str, session: Session, address: str = "") -> str | None:
        """The reply refusing this MAIL, RCPT (to ``address``) or DATA command (``stage``), or
        None to accept."""
        return None

    def _record(self, captured: Captured) -> None:
        with self._lock:
            self._captured.append(captured)
            self._lock.notify_all()
        if self.on_message is not None:  # off the SMTP loop: it may talk to other servers
            threading.Thread(target=self.on_message, args=(captured,), daemon=True).start()

    def _new_handler(self) -> object:
        return CaptureHandler(self)

    def _smtp_options(self) -> dict[str, Any]:
        return {
            "hostname": "maildesk-test-smtp",
            "decode_data": False,
            "enable_SMTPUTF8": True,
            "auth_require_tls": False,
            "auth_required": False,
            "authenticator": None,
            "auth_exclude_mechanism": ["XOAUTH2"],
            "timeout": 30,
        }

    def _factory(self) -> SMTP:
        return _TrackedSMTP(self._handler, listener=self._listener, **self._smtp_options())

    def start(self) -> None:
        """Listen (again) on the server's port."""

        async def create(port: int) -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(self._factory, LOOPBACK, port)

        self._listener.start(create)


def _not_login_data_noise(record: logging.LogRecord) -> bool:
    # aiosmtpd 1.4 sets its own deprecated Session.login_data after every AUTH and then
    # warns about it; nothing here reads it.
    return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_not_login_data_noise)
# aiosmtpd logs every connection at INFO, also from its loop thread after a test's log capture
# has closed; only its warnings and errors matter here.
logging.getLogger("mail.log").setLevel(logging.WARNING)


class _TrackedSMTP(SMTP):
    """aiosmtpd's protocol, registering its transport so ``stop()`` can drop it."""

    def __init__(self, handler: Any, *, listener: _Listener, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without TLS, which is the point on loopback
            warnings.simplefilter("ignore")
            super().__init__(handler, **kwargs)
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener.track(transport)  # dropped at once when the listener has stopped


# --------------------------------------------------------------------------- both


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
