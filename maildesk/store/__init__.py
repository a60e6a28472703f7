"""Attachments and large raw mail, kept by their SHA-256: the interface, and its two backends.

Base layer. Whole messages come here only when they are over ``ingest.RAW_IN_DATABASE``
(1 MiB); smaller ones are kept in the database, in the transaction of the message itself.
``[store] backend`` chooses where the rest goes: ``directory`` (``directory.DirectoryStore``,
files under ``data_dir``) or ``database`` (``rows.DatabaseStore``, the database's ``blobs`` and
``blob_chunks``, which every host on it reads). ``moving`` copies one into the other
(``maildesk store migrate``).

Every name is content-addressed (``raw/ab/cd/<sha256>.eml``, ``blobs/ab/cd/<sha256>``) and is
the same in both backends, so the rows that name a file keep working when the files move;
handling a message twice after a crash writes nothing new, and no name a sender chose is ever
used. A file is whole before the transaction that refers to it commits: a committed row never
names a missing or partial file. A file that reads back other than its name says (size or
digest) raises ``DamagedFile``: its bytes are never used.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

KINDS = ("raw", "blobs")
PIECE = 1 << 20  # bytes read, written and hashed at a time
_NAME = re.compile(r"(raw|blobs)/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})(\.eml)?")


class DamagedFile(OSError):
    """A kept file is missing, or its bytes are not those its name says."""


def name_for(kind: str, digest: str) -> str:
    """The name of the file of ``kind`` (``raw`` or ``blobs``) with SHA-256 ``digest``."""
    suffix = ".eml" if kind == "raw" else ""
    return f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}{suffix}"


def digest_of(name: str) -> str:
    """The SHA-256 a name of ours carries; ``ValueError`` for any other name."""
    match = _NAME.fullmatch(name)
    if match is None or match[2] != match[4][:2] or match[3] != match[4][2:4]:
        raise ValueError(f"not a name of the store: {name!r}")
    if (match[1] == "raw") != bool(match[5]):
        raise ValueError(f"not a name of the store: {name!r}")
    return match[4]


class Checked:
    """Hashes and counts pieces as they pass; ``verify`` raises ``DamagedFile`` unless they
    came to the bytes ``name`` names (and ``size``, when known)."""

    def __init__(self, name: str, size: int | None = None) -> None:
        self.name = name
        self.size = size
        self.hasher = hashlib.sha256()
        self.count = 0

    def add(self, piece: bytes) -> bytes:
        self.hasher.update(piece)
        self.count += len(piece)
        return piece

    def verify(self) -> None:
        if self.size is not None and self.count != self.size:
            raise DamagedFile(f"{self.name}: {self.count} bytes read, {self.size} kept")
        if self.hasher.hexdigest() != digest_of(self.name):
            raise DamagedFile(f"{self.name}: the bytes read are not those kept (SHA-256 differs)")


class Store(ABC):
    """Where attachments and large raw mail are kept. Writes return the file's name, which
    rows keep; reads take it."""

    def __init__(self) -> None:
        self._writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")

    def put_raw(self, raw: bytes) -> tuple[str, str]:
        """Keep a whole message verbatim; return (name, sha256)."""
        digest = hashlib.sha256(raw).hexdigest()
        return self._put(name_for("raw", digest), raw), digest

    def put_raw_soon(self, raw: bytes) -> Future[tuple[str, str]]:
        """``put_raw`` in the background: the caller parses and routes the message while the
        write is made durable (milliseconds, more while other processes write), and takes the
        result before its transaction refers to the file."""
        return self._writers.submit(self.put_raw, raw)

    def put_blob(self, payload: bytes, digest: str | None = None) -> str:
        """Keep an attachment's bytes; return its name."""
        digest = digest or hashlib.sha256(payload).hexdigest()
        return self._put(name_for("blobs", digest), payload)

    @abstractmethod
    def put_raw_stream(self, first: bytes, rest: BinaryIO) -> tuple[str, str, int]:
        """Keep a whole message that is ``first`` and what is left in ``rest``, read and
        written in pieces (a message too large to hold in memory); return (name, sha256,
        size)."""

    @abstractmethod
    def _put(self, name: str, data: bytes) -> str:
        """Keep ``data`` under ``name`` (its digest already in it), unless kept already."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the file ``name`` is kept (whole: a file being written is not)."""

    @abstractmethod
    def stream(self, name: str) -> Iterator[bytes]:
        """The bytes of ``name`` in pieces of at most ``PIECE``; ``DamagedFile`` (after the
        last piece at the latest) when it is missing or not what its name says: a reader that
        writes the pieces somewhere keeps them only once the iteration ended."""

    @abstractmethod
    def names(self) -> Iterator[str]:
        """Every file kept, by name (``store migrate``)."""

    def read(self, name: str) -> bytes:
        """The whole bytes of ``name``, checked against it (``DamagedFile``)."""
        return b"".join(self.stream(name))

    def close(self) -> None:
        """Let go of what the store holds (a write under way finishes on its own)."""
        self._writers.shutdown(wait=False)


@dataclass(frozen=True, slots=True)
class Kept:
    """A file of the store an outgoing mail carries, read when the mail is sent (``size``: its
    bytes, for the claim's count)."""

    store: Store
    name: str
    size: int = 0

    def read_bytes(self) -> bytes:
        return self.store.read(self.name)
