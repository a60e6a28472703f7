"""Talk to one IMAP mailbox: UIDs, UIDVALIDITY, batched fetch, IDLE, move after commit.

First step of the flow: ``Mailbox.fetch`` yields ``FetchedMail`` values (mailbox, UIDVALIDITY, UID,
bytes) for ``inbound.parse``; once the daemon has committed a message, ``Mailbox.move`` takes it
out of the watched folder into the processed or quarantine folder. Blocking API (the daemon runs
it in a thread). UIDs only, never sequence numbers; ``BODY.PEEK[]`` so nothing is marked seen;
never a plain EXPUNGE and never a deletion without a copy. TLS certificates are verified by
default and STARTTLS is never skipped silently. Every failure surfaces as ``MailboxError`` (or
``MailboxLoginError``) carrying one line that names the server and what failed.
"""

from __future__ import annotations

import imaplib
import io
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError

from maildesk.config import MailboxSettings

log = logging.getLogger("maildesk.imap")  # the logs name the job, not the module path

DELETED = b"\\Deleted"
IDLE_RENEW_SECONDS = 25 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
IDLE_SLICE_SECONDS = 0.25  # how often a wait checks for interrupt()
FETCH_BYTES = 8 * 2**20  # bodies fetched per command: memory stays flat however large the backlog
_BYTES_REPR = re.compile(r"""^b(['"])(.*)\1$""", re.DOTALL)
_CHANGE = re.compile(rb"\* (\d+ (EXISTS|EXPUNGE|FETCH|RECENT)\b|VANISHED\b)", re.IGNORECASE)
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FetchedMail:
    """One message as fetched: its identity on the server and its exact bytes."""

    mailbox: str  # the configured mailbox name
    uidvalidity: int
    uid: int
    raw: bytes  # b"" when too_large
    size: int  # RFC822.SIZE
    too_large: bool = False
    arrived: float | None = None  # INTERNALDATE as unix time, when the server gave one
    head: bytes = b""  # when too_large: its header block, at most ``max_header_bytes``


class MailboxError(Exception):
    """Transient: connection refused or lost, timeout, TLS failure, NO from the server.

    Retry with backoff after ``close()`` and a fresh ``connect()``. ``str()`` is one line.
    """


class MailboxLoginError(MailboxError):
    """Authentication failed: back off long and alert; retrying soon will not help."""


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    """Stand-alone mailbox settings (tests, the demo); mirrors ``[[mailboxes]]``."""

    name: str
    host: str
    port: int
    security: str  # "tls" | "starttls" | "none"
    username: str
    password: str
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    poll_seconds: float = 60.0
    auth: str = "password"  # or "xoauth2"
    oauth_token: Callable[[], str] | None = None
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust store, verified


# What a ``Mailbox`` is made from: a ``[[mailboxes]]`` section, or a stand-alone config.
MailboxAccount: TypeAlias = MailboxSettings | MailboxConfig


def default_ssl_context() -> ssl.SSLContext:
    """Certificates and host names verified against the system store, TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(exc: BaseException) -> str:
    """One human line for a library exception (no traceback, no secrets)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, ConnectionError | EOFError):
        return f"connection lost ({exc.__class__.__name__})"
    if isinstance(exc, imaplib.IMAP4.abort):
        return f"connection lost: {_text(exc)}"
    return _text(exc) or exc.__class__.__name__


def _text(exc: BaseException) -> str:
    parts = [a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a) for a in exc.args]
    # IMAPClient wraps server text as str(bytes): "b'[AUTHENTICATIONFAILED] ...'"
    text = " ".join(_BYTES_REPR.sub(r"\2", part) for part in parts)
    return " ".join(text.split())[:300]


class Mailbox:
    """One logged-in connection to one mailbox (one thread at a time, ``interrupt()`` aside)."""

    def __init__(
        self,
        config: MailboxAccount,
        *,
        timeout: float = 30.0,
        max_message_bytes: int = 50 * 2**20,
        batch: int = 100,
        max_header_bytes: int = 256 * 1024,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.batch = max(1, batch)
        self._client: IMAPClient | None = None
        self._uidvalidity = 0
        self._capabilities: frozenset[str] = frozenset()
        self._wake = threading.Event()
        self._seen_uid = 0  # the highest UID ``pending`` has returned since the last SELECT
        self._idling = threading.Event()
        self._warned_no_expunge = False

    # ------------------------------------------------------------------ connection

    @property
    def where(self) -> str:
        return f"mailbox {self.config.name!r} ({self.config.host}:{self.config.port})"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate whatever the libraries raise into one-line ``MailboxError``s."""
        try:
            yield
        except MailboxError:
            raise
        except LoginError as exc:
            raise MailboxLoginError(
                f"{self.where}: login as {self.config.username!r} refused: {_text(exc)}"
            ) from None
        except (IMAPClientError, OSError, EOFError, ValueError) as exc:
            raise MailboxError(f"{self.where}: {what} failed: {_reason(exc)}") from None

    @property
    def _imap(self) -> IMAPClient:
        if self._client is None:
            raise MailboxError(f"{self.where}: not connected")
        return self._client

    def connect(self) -> None:
        """Connect, secure, log in, create the processed/quarantine folders, SELECT the folder."""
        self.close()
        config = self.config
        with self._errors("connect"):
            client = self._open()
        self._client = client
        try:
            with self._errors("login"):
                self._authenticate(client)
            with self._errors("create folders"):
                for folder in (config.processed_folder, config.quarantine_folder):
                    if folder and not client.folder_exists(folder):
                        self._create(client, folder)
                self._capabilities = frozenset(
                    c.decode("ascii", "replace").upper() for c in client.capabilities()
                )
            self._select()
        except MailboxError:
            self.close()
            raise
        log.info(
            "%s: connected, folder %r, UIDVALIDITY %d%s",
            self.where,
            config.folder,
            self._uidvalidity,
            ", IDLE" if self.has_idle else ", polling",
        )

    @staticmethod
    def _create(client: IMAPClient, folder: str) -> None:
        """CREATE, tolerating another connection (a second daemon, a mail client) having just
        created the same folder between our check and our command."""
        try:
            client.create_folder(folder)
        except IMAPClientError:
            if not client.folder_exists(folder):
                raise

    def _open(self) -> IMAPClient:
        security = self.config.security
        if security not in ("tls", "starttls", "none"):
            raise MailboxError(f"{self.where}: unknown security {security!r}")
        context: ssl.SSLContext | None = None
        if security != "none":  # loading the system trust store costs ~50 ms
            context = self.config.ssl_context or default_ssl_context()
        client = IMAPClient(
            self.config.host,
            self.config.port,
            ssl=security == "tls",
            ssl_context=context if security == "tls" else None,
            timeout=SocketTimeout(connect=min(self.timeout, 30.0), read=self.timeout),
        )
        # IMAPClient switches imaplib's debug output on, which formats every response (whole
        # bodies included) even when nothing is logged: bulk fetches run about 4x slower.
        client._imap.debug = 0
        # imaplib sends a literal and its closing CRLF separately; with Nagle's algorithm and
        # delayed ACKs every APPEND would stall for ~40 ms.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if security == "starttls":
            if not client.has_capability("STARTTLS"):
                client.shutdown()
                raise MailboxError(
                    f"{self.where}: server does not offer STARTTLS; refusing to log in without TLS"
                )
            client.starttls(context)
        return client

    def _authenticate(self, client: IMAPClient) -> None:
        config = self.config
        if config.auth == "xoauth2":
            token_source = config.oauth_token
            if token_source is None:
                raise MailboxLoginError(f"{self.where}: xoauth2 configured without a token source")
            client.oauth2_login(config.username, token_source())
        else:
            client.login(config.username, config.password)

    def _select(self) -> None:
        with self._errors(f"SELECT {self.config.folder!r}"):
            info = self._imap.select_folder(self.config.folder)
        value = info.get(b"UIDVALIDITY")
        self._uidvalidity = int(value) if value is not None else 0
        self._seen_uid = 0

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY of the watched folder as of the last SELECT."""
        return self._uidvalidity

    @property
    def capabilities(self) -> frozenset[str]:
        """The server's capabilities after login (upper case)."""
        return self._capabilities

    @property
    def has_idle(self) -> bool:
        return "IDLE" in self._capabilities

    @property
    def has_move(self) -> bool:
        return "MOVE" in self._capabilities

    def close(self) -> None:
        """LOGOUT and drop the connection; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client._idle_tag is not None:
                client.idle_done()
            client.logout()
        except Exception:  # noqa: BLE001 - closing a connection that may be dead already
            with suppress(Exception):
                client.shutdown()

    def __enter__(self) -> Mailbox:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def pending(self) -> list[int]:
        """UIDs in the watched folder not flagged ``\\Deleted``, ascending."""
        with self._errors("UID SEARCH"):
            # NOOP first: some servers (pymap) only take in new mail at a NOOP-like command.
            self._imap.noop()
            found = self._imap.search(["NOT", "DELETED"])
        uids = sorted(int(uid) for uid in found)
        if uids:
            self._seen_uid = max(self._seen_uid, uids[-1])
        return uids

    def fetch(self, uids: Sequence[int]) -> Iterator[FetchedMail]:
        """Yield the messages with these UIDs, in the order given, skipping vanished ones.

        Sizes come first (``RFC822.SIZE``); bodies are fetched with ``BODY.PEEK[]`` in batches.
        Messages over ``max_message_bytes`` are yielded with ``too_large=True``, no bytes, and
        their header block as ``head`` (``BODY.PEEK[HEADER]``, its first ``max_header_bytes``).
        """
        for start in range(0, len(uids), self.batch):
            chunk = list(uids[start : start + self.batch])
            with self._errors("FETCH RFC822.SIZE"):
                sizes = self._imap.fetch(chunk, ["RFC822.SIZE", "INTERNALDATE"])
            wanted = [uid for uid in chunk if uid in sizes]
            for group in _by_bytes(wanted, sizes, FETCH_BYTES):
                yield from self._fetch_bodies(group, sizes)

    def _fetch_bodies(self, uids: list[int], sizes: dict[int, Any]) -> Iterator[FetchedMail]:
        small = [u for u in uids if int(sizes[u][b"RFC822.SIZE"]) <= self.max_message_bytes]
        bodies: dict[int, bytes] = {}
        if small:
            with self._errors("FETCH BODY.PEEK[]"):
                fetched = self._imap.fetch(small, ["BODY.PEEK[]"])
            bodies = {
                uid: bytes(data[b"BODY[]"]) for uid, data in fetched.items() if b"BODY[]" in data
            }
            del fetched
        heads = self._fetch_heads([u for u in uids if u not in small])
        for uid in uids:
            size = int(sizes[uid][b"RFC822.SIZE"])
            arrived = _unix_time(sizes[uid].get(b"INTERNALDATE"))
            if uid in bodies:
                # handed over, not kept: the caller holds one large message at a time
                body = bodies.pop(uid)
                yield FetchedMail(
                    self.config.name, self._uidvalidity, uid, body, size, False, arrived
                )
            elif uid in heads:
                head = heads[uid]
                yield FetchedMail(
                    self.config.name, self._uidvalidity, uid, b"", size, True, arrived, head
                )

    def _fetch_heads(self, uids: list[int]) -> dict[int, bytes]:
        """The header blocks of these (too large) messages, each at most ``max_header_bytes``."""
        if not uids:
            return {}
        section = f"BODY.PEEK[HEADER]<0.{self.max_header_bytes}>"
        with self._errors("FETCH BODY.PEEK[HEADER]"):
            fetched = self._imap.fetch(uids, [section])
        heads = {}
        for uid, data in fetched.items():
            # the answer names the section with the partial's start only: BODY[HEADER]<0>
            value = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER]")), None)
            if value is not None:
                heads[uid] = bytes(value)[: self.max_header_bytes]
        return heads

    # ------------------------------------------------------------------ moving

    def move(self, uids: Sequence[int], to: Literal["processed", "quarantine"]) -> None:
        """Move these UIDs out of the watched folder (after their work is committed).

        UID MOVE where the server has it; else UID COPY, then ``\\Deleted`` and UID EXPUNGE of
        exactly these UIDs (UIDPLUS). Without UIDPLUS the originals stay flagged ``\\Deleted``
        (and are skipped by ``pending``): a plain EXPUNGE could remove other clients' mail.
        """
        if to == "processed":
            folder = self.config.processed_folder
        elif to == "quarantine":
            folder = self.config.quarantine_folder
        else:
            raise ValueError(f"move to 'processed' or 'quarantine', not {to!r}")
        for start in range(0, len(uids), self.batch):
            chunk = list(uids[start : start + self.batch])
            with self._errors(f"moving {len(chunk)} message(s) to {folder!r}"):
                if self.has_move:
                    self._imap.move(chunk, folder)
                else:
                    self._copy_and_expunge(chunk, folder)

    def _copy_and_expunge(self, chunk: list[int], folder: str) -> None:
        imap = self._imap
        imap.copy(chunk, folder)
        imap.add_flags(chunk, [DELETED], silent=True)
        if "UIDPLUS" in self._capabilities:
            imap.uid_expunge(chunk)
        elif not self._warned_no_expunge:
            self._warned_no_expunge = True
            log.warning(
                "%s: server has neither MOVE nor UIDPLUS; handled mail stays in %r flagged "
                "\\Deleted for a mail client to expunge",
                self.where,
                self.config.folder,
            )

    # ------------------------------------------------------------------ waiting

    def wait_until_idling(self, timeout: float) -> bool:
        """Block until a ``wait()`` in another thread has its IDLE command running."""
        return self._idling.wait(timeout)

    def interrupt(self) -> None:
        """End a ``wait()`` early (callable from any thread); the next wait returns at once."""
        self._wake.set()

    def wait(self, timeout: float) -> bool:
        """Wait for news: IDLE where the server has it, else ``min(timeout, poll_seconds)``.

        Returns True when something may have changed (the server reported a change, or the
        polling interval is over); False on a quiet timeout or an ``interrupt()``.
        """
        if self._wake.is_set():
            self._wake.clear()
            return False
        with self._errors("NOOP"):
            # Some servers (pymap) report a change made before IDLE began only once another
            # change comes; asking first closes that gap.
            _, responses = self._imap.noop()
        if any(_is_change(r) for r in responses):
            return True
        with self._errors("UID SEARCH"):
            # Mail that arrived during the last SEARCH may have been announced only in that
            # command's responses, which imapclient drops, and IDLE never tells of it again:
            # look once more before idling (one SEARCH per wait, not per message).
            found = self._imap.search(["NOT", "DELETED"])
        if any(int(uid) > self._seen_uid for uid in found):
            return True
        if not self.has_idle:
            interrupted = self._wake.wait(min(timeout, float(self.config.poll_seconds)))
            self._wake.clear()
            return not interrupted
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            changed = self._idle(min(remaining, IDLE_RENEW_SECONDS))
            if changed is not None:
                return changed

    def _idle(self, duration: float) -> bool | None:
        """One IDLE command; True on news, False on interrupt, None when ``duration`` ran out."""
        imap = self._imap
        with self._errors("IDLE"):
            imap.idle()
        self._idling.set()
        end = time.monotonic() + duration
        result: bool | None = None
        try:
            with self._errors("IDLE"):
                while result is None:
                    if self._wake.is_set():
                        self._wake.clear()
                        result = False
                    elif (left := end - time.monotonic()) <= 0:
                        break
                    elif _readable(imap, min(left, IDLE_SLICE_SECONDS)):
                        if _CHANGE.match(imap._imap._get_line()):
                            result = True
        finally:
            self._idling.clear()
            with self._errors("ending IDLE"):
                _, after = imap.idle_done()
        if result is None and any(_is_change(r) for r in after):
            result = True
        return result

    # ------------------------------------------------------------------ tests, demo, admin

    def append(self, folder: str, raw: bytes) -> int | None:
        """APPEND ``raw`` to ``folder``; returns its UID when the server reports it (UIDPLUS)."""
        with self._errors(f"APPEND to {folder!r}"):
            response = self._imap.append(folder, raw)
        found = _APPENDUID.search(
            response if isinstance(response, bytes) else str(response).encode()
        )
        return int(found.group(1)) if found else None

    def folder_uids(self, folder: str) -> list[int]:
        """UIDs (not ``\\Deleted``) of any folder, ascending; the watched folder stays selected."""
        with self._errors(f"listing {folder!r}"):
            self._imap.select_folder(folder, readonly=True)
            found = self._imap.search(["NOT", "DELETED"])
        self._select()
        return sorted(int(uid) for uid in found)

    def folder_messages(self, folder: str) -> list[bytes]:
        """The bytes of every message (not ``\\Deleted``) in ``folder``, in UID order."""
        with self._errors(f"reading {folder!r}"):
            self._imap.select_folder(folder, readonly=True)
            found = sorted(int(uid) for uid in self._imap.search(["NOT", "DELETED"]))
            data = self._imap.fetch(found, ["BODY.PEEK[]"]) if found else {}
        self._select()
        return [bytes(data[uid][b"BODY[]"]) for uid in found if uid in data]

    # ------------------------------------------------------------------ check-config's probe

    def find_message(self, folder: str, message_id: str) -> list[int]:
        """UIDs in ``folder`` (not ``\\Deleted``) whose Message-ID holds ``message_id``."""
        with self._errors(f"searching {folder!r}"):
            self._imap.select_folder(folder, readonly=True)
            found = self._imap.search(["HEADER", "Message-ID", message_id, "NOT", "DELETED"])
        self._select()
        return sorted(int(uid) for uid in found)

    def delete_probe(self, folder: str, uids: Sequence[int]) -> bool:
        """Remove exactly these UIDs of ``folder``: ``\\Deleted``, then UID EXPUNGE (UIDPLUS).

        Only for ``check-config``'s probe, the one message maildesk ever deletes, found by its
        own unguessable Message-ID. False where the server lacks UIDPLUS: the probe then stays
        flagged ``\\Deleted`` (skipped by ``pending``), as a plain EXPUNGE could remove others'
        mail. A UID gone meanwhile (a running daemon moved it) is no error."""
        with self._errors(f"deleting the probe from {folder!r}"):
            self._imap.select_folder(folder)
            self._imap.add_flags(list(uids), [DELETED], silent=True)
            expunged = "UIDPLUS" in self._capabilities
            if expunged:
                self._imap.uid_expunge(list(uids))
        self._select()
        return expunged


def _readable(client: IMAPClient, timeout: float) -> bool:
    """Whether a response line can be read now, waiting at most ``timeout`` seconds.

    IMAPClient's ``idle_check`` reads with a non-blocking socket and drops the start of a line
    that arrives in two pieces; here we only wait for the first byte, then read whole lines
    (blocking, with the read timeout). Data already buffered by imaplib or TLS counts.
    """
    sock = client.socket()
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    stream = getattr(client._imap, "file", None)
    if isinstance(stream, io.BufferedReader):
        sock.setblocking(False)
        try:
            if stream.peek(1):
                return True
        except (BlockingIOError, ssl.SSLWantReadError):
            pass  # nothing buffered and nothing on the wire yet
        finally:
            client._set_read_timeout()
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


def _unix_time(value: object) -> float | None:
    """INTERNALDATE as IMAPClient gives it (naive local time, or aware) to unix time."""
    if not isinstance(value, datetime):
        return None
    return value.timestamp()  # a naive value is local time, which timestamp() assumes


_CHANGES = frozenset((b"EXISTS", b"EXPUNGE", b"FETCH", b"RECENT", b"VANISHED"))


def _is_change(response: tuple[object, ...]) -> bool:
    """An untagged IDLE response that means the folder changed (not ``OK still here``)."""
    return len(response) >= 2 and response[1] in _CHANGES


def probe(config: MailboxAccount, *, timeout: float = 15.0) -> str:
    """Connect, log in, SELECT, LOGOUT: ``"ok: N messages waiting"`` or one-line MailboxError."""
    box = Mailbox(config, timeout=timeout)
    try:
        box.connect()
        waiting = len(box.pending())
    finally:
        box.close()
    return f"ok: {waiting} message{'s' if waiting != 1 else ''} waiting"


def _by_bytes(uids: list[int], sizes: dict[int, Any], limit: int) -> Iterator[list[int]]:
    """Consecutive groups of ``uids`` whose sizes add up to at most ``limit`` (one at least)."""
    group: list[int] = []
    total = 0
    for uid in uids:
        size = int(sizes[uid][b"RFC822.SIZE"])
        if group and total + size > limit:
            yield group
            group, total = [], 0
        group.append(uid)
        total += size
    if group:
        yield group
