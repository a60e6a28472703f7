"""A throwaway mail world on loopback: an IMAP server (pymap) and an SMTP capture (aiosmtpd).

Not part of the production flow: ``maildesk demo`` and the test suite start one so the real
daemon can be pointed at real protocol servers on 127.0.0.1. Each server runs its own asyncio
loop in a background thread, starts in milliseconds on a free port, and stops cleanly. Mail is
put into and read out of the IMAP server through the real protocol, via ``maildesk.mail.imap``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.policy
import logging
import re
import socket
import ssl
import threading
import uuid
import warnings
from argparse import Namespace
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Literal, Self, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from proxyprotocol.sock import SocketInfo
from pymap.backend.dict import Config as _DictConfig
from pymap.backend.dict import DictBackend, Identity, Login
from pymap.backend.dict.mailbox import MailboxData
from pymap.concurrent import Event, Subsystem
from pymap.exceptions import InvalidAuth
from pymap.imap import IMAPServer
from pymap.selected import SelectedMailbox
from pymap.user import UserMetadata
from pysasl import SASLAuth
from pysasl.creds.external import ExternalCredentials, ExternalVerificationRequired
from pysasl.creds.server import ServerCredentials
from pysasl.hashing import Cleartext
from pysasl.mechanism.oauth import OAuth2Mechanism

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

    @property
    def running(self) -> bool:
        return self._server is not None

    def track(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)

    def start(self, create: Callable[[int], Coroutine[Any, Any, asyncio.Server]]) -> None:
        if self._server is not None:
            return
        self._server = self._loop.call(create(self.port))
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return

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


MailboxData.update_selected = _update_selected_without_lost_wakeups  # type: ignore[method-assign]


class _PymapConfig(_DictConfig):
    """pymap's in-memory backend config, with capabilities that tests can take away."""

    def __init__(
        self, args: Namespace, *, without: frozenset[bytes], xoauth2: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(args, **kwargs)
        self._without = without
        # pysasl scans the installed entry points for mechanisms on every connection (~20 ms)
        self._sasl = SASLAuth.defaults()
        if xoauth2:
            self._sasl = SASLAuth([*self._sasl.server_mechanisms, OAuth2Mechanism()])

    @property
    def login_capability(self) -> Sequence[bytes]:
        return [c for c in super().login_capability if c not in self._without]

    @property
    def tls_auth(self) -> SASLAuth:
        return self._sasl

    @property
    def greeting(self) -> bytes:
        # pymap looks up the host's FQDN on every connection, which can stall on DNS.
        return b"maildesk test IMAP server ready"


class _TokenLogin(Login):
    """pymap's login, also accepting XOAUTH2 with a bearer token the test server expects."""

    def __init__(self, config: _PymapConfig) -> None:
        super().__init__(config)
        self.bearer_tokens: dict[str, str] = {}
        self.attempts: list[tuple[str, bool]] = []  # (user, accepted), XOAUTH2 only

    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        if not isinstance(credentials, ExternalCredentials):
            return await super().authenticate(credentials)
        user = credentials.authzid
        expected = self.bearer_tokens.get(user)
        token: str | None = None
        try:
            credentials.verify(None)
        except ExternalVerificationRequired as exc:  # how pysasl hands the bearer token over
            token = exc.token
        ok = expected is not None and token == expected
        self.attempts.append((user, ok))
        if not ok:
            raise InvalidAuth()
        return Identity(user, self, None, frozenset())


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

    Plain-text LOGIN is allowed from loopback. ``idle=False`` or ``move=False`` take the IDLE or
    MOVE capability away (to exercise polling and the COPY + UID EXPUNGE fallback).
    ``tls_context`` (a server-side context holding a certificate) turns STARTTLS on.
    ``xoauth2=True`` offers AUTHENTICATE XOAUTH2, accepting the bearer token given to
    ``set_oauth_token(user, token)`` (``oauth_attempts`` lists what was tried).
    The stored mail survives ``stop()``/``start()``, like a real server's restart.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        port: int = 0,
        idle: bool = True,
        move: bool = True,
        tls_context: ssl.SSLContext | None = None,
        xoauth2: bool = False,
    ) -> None:
        self.host = LOOPBACK
        self.users: dict[str, str] = {}
        self._loop = _LoopThread("pymap")
        self._listener = _Listener(self._loop, port)
        without = frozenset(name for name, keep in ((b"IDLE", idle), (b"MOVE", move)) if not keep)
        args = Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None)
        self._config = _PymapConfig(
            args,
            without=without,
            xoauth2=xoauth2,
            host=LOOPBACK,
            port=port,
            demo_data=False,
            demo_user="",
            demo_password="",
            tls_enabled=tls_context is not None,
            ssl_context=tls_context or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
            hash_context=Cleartext(),
            cpu_subsystem=Subsystem.for_asyncio(),
            invalid_user_sleep=0.0,
            reject_dnsbl=False,
            bad_command_limit=None,
        )
        self._login = _TokenLogin(self._config)
        self._backend = DictBackend(self._login, self._config)
        for username, password in (users or {}).items():
            self.add_user(username, password)
        self.start()

    def add_user(self, username: str, password: str) -> None:
        """Create (or replace) a user with an empty INBOX."""

        async def add() -> None:
            identity = Identity(username, self._login, None, frozenset())
            await identity.set(UserMetadata(self._config, username, password=password))

        self._loop.call(add())
        self.users[username] = password

    def set_oauth_token(self, username: str, token: str) -> None:
        """The bearer token XOAUTH2 accepts for ``username`` from now on."""
        self._login.bearer_tokens[username] = token

    @property
    def oauth_attempts(self) -> list[tuple[str, bool]]:
        """XOAUTH2 logins seen: (user, accepted)."""
        return list(self._login.attempts)

    def start(self) -> None:
        """Listen (again) on the server's port."""
        imap = IMAPServer(self._backend.login, self._config)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._listener.track(writer.transport)
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

Stage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True, slots=True)
class Captured:
    """One message accepted by the capture server."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    auth_user: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """One AUTH command seen by the capture server (the password is not kept)."""

    mechanism: str
    username: str
    success: bool
    tls: bool


_XOAUTH2 = re.compile(rb"^user=(?P<user>[^\x01]*)\x01auth=Bearer (?P<token>[^\x01]*)\x01\x01$")


class _Handler:
    """aiosmtpd hooks: record accepted mail, answer with scripted replies first."""

    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        """AUTH XOAUTH2 with its initial response; offered only with ``oauth_token``."""
        user, token = "", ""
        if len(args) == 2:
            try:
                found = _XOAUTH2.match(base64.b64decode(args[1], validate=True))
            except (binascii.Error, ValueError):
                found = None
            if found is not None:
                user = found["user"].decode("utf-8", "replace")
                token = found["token"].decode("utf-8", "replace")
        owner = self._owner
        ok = bool(token) and user == owner.username and token == owner._oauth_token
        with owner._lock:
            owner._auth_attempts.append(
                AuthAttempt("XOAUTH2", user, ok, getattr(server.session, "ssl", None) is not None)
            )
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._owner.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        scripted = self._owner._next_reply("mail")
        if scripted:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        scripted = self._owner._next_reply("rcpt")
        if scripted:
            return scripted
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        scripted = self._owner._next_reply("data")
        if scripted:
            return scripted
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
                tls=session.ssl is not None or self._owner.implicit_tls,
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer(_Served):
    """An aiosmtpd capture server on 127.0.0.1 that records every accepted message.

    ``script("rcpt", "451 4.3.0 try later", ...)`` queues replies given instead of accepting
    (one per command, in order) at MAIL, RCPT or DATA. ``stop()`` refuses connections until
    ``start()``. With ``username``/``password``, AUTH PLAIN and LOGIN are offered (without TLS
    unless ``tls_context`` is given, in which case only after STARTTLS) and required.
    ``implicit_tls`` serves SMTPS on the port with ``tls_context`` instead of STARTTLS.
    With ``username`` and ``oauth_token``, AUTH XOAUTH2 is offered too and accepts exactly that
    bearer token for that user (``set_oauth_token`` changes it). ``smtputf8=False`` stops
    announcing SMTPUTF8, as a server without RFC 6531 support does.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        oauth_token: str | None = None,
        smtputf8: bool = True,
    ) -> None:
        self.host = LOOPBACK
        self.smtputf8 = smtputf8
        self.username = username
        self._password = password
        self._oauth_token = oauth_token
        self._tls_context = tls_context
        self.implicit_tls = implicit_tls and tls_context is not None
        self._require_starttls = require_starttls
        self._lock = threading.Condition()
        self._captured: list[Captured] = []
        self._auth_attempts: list[AuthAttempt] = []
        self._replies: dict[str, list[str]] = {"mail": [], "rcpt": [], "data": []}
        self._connections = 0
        # called with each accepted message (e.g. to deliver it into IMAP mailboxes)
        self.on_message: Callable[[Captured], None] | None = None
        self._handler = _Handler(self)
        self._loop = _LoopThread("aiosmtpd")
        self._listener = _Listener(self._loop, port)
        self.start()

    # -- what tests read

    @property
    def messages(self) -> list[Captured]:
        """A snapshot of the accepted messages, in arrival order."""
        with self._lock:
            return list(self._captured)

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._connections

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
            self._auth_attempts.clear()

    # -- scripting

    def script(self, stage: Stage, *replies: str) -> None:
        """Answer the next commands of ``stage`` with ``replies`` (e.g. ``"451 4.3.0 later"``)."""
        with self._lock:
            self._replies[stage].extend(replies)

    def set_oauth_token(self, token: str) -> None:
        """The bearer token AUTH XOAUTH2 accepts from now on."""
        with self._lock:
            self._oauth_token = token

    def _next_reply(self, stage: Stage) -> str | None:
        with self._lock:
            queue = self._replies[stage]
            return queue.pop(0) if queue else None

    def _record(self, captured: Captured) -> None:
        with self._lock:
            self._captured.append(captured)
            self._lock.notify_all()
        if self.on_message is not None:  # off the SMTP loop: it may talk to other servers
            threading.Thread(target=self.on_message, args=(captured,), daemon=True).start()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = False
        user = ""
        if isinstance(data, LoginPassword):
            user = data.login.decode("utf-8", "replace")
            ok = (
                self.username is not None
                and self._password is not None
                and data.login == self.username.encode()
                and data.password == self._password.encode()
            )
        with self._lock:
            self._auth_attempts.append(AuthAttempt(mechanism, user, ok, session.ssl is not None))
        return AuthResult(success=ok, auth_data=data if ok else None)

    # -- lifecycle

    def _factory(self) -> SMTP:
        auth = self.username is not None
        kwargs: dict[str, Any] = {
            "hostname": "maildesk-test-smtp",
            "decode_data": False,
            "enable_SMTPUTF8": self.smtputf8,
            "auth_require_tls": self._tls_context is not None and not self.implicit_tls,
            "auth_required": False,  # enforced at MAIL, without aiosmtpd's warning
            "authenticator": self._authenticate if auth else None,
            "auth_exclude_mechanism": [] if self._oauth_token is not None else ["XOAUTH2"],
            "timeout": 30,
        }
        if self._tls_context is not None and not self.implicit_tls:
            kwargs["tls_context"] = self._tls_context
            kwargs["require_starttls"] = self._require_starttls
        with self._lock:
            self._connections += 1
        smtp = _TrackedSMTP(self._handler, listener=self._listener, **kwargs)
        return smtp

    def start(self) -> None:
        """Listen (again) on the server's port."""
        ssl_context = self._tls_context if self.implicit_tls else None

        async def create(port: int) -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(self._factory, LOOPBACK, port, ssl=ssl_context)

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
        self._listener.track(transport)
        super().connection_made(transport)


# --------------------------------------------------------------------------- both


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class MailWorld:
    """An IMAP server and an SMTP capture side by side, as ``maildesk demo`` needs them."""

    def __init__(
        self,
        imap_users: Mapping[str, str],
        *,
        smtp_username: str | None = None,
        smtp_password: str | None = None,
    ) -> None:
        self.imap = ImapServer(imap_users)
        try:
            self.smtp = SmtpServer(username=smtp_username, password=smtp_password)
        except BaseException:
            self.imap.close()
            raise

    def close(self) -> None:
        self.smtp.close()
        self.imap.close()

    def __enter__(self) -> MailWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
