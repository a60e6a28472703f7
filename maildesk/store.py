"""Raw mail and attachment blobs on disk, under generated names.

Whole messages come here only when they are over ``ingest.RAW_IN_DATABASE`` (1 MiB); smaller
ones are kept in the database, in the transaction of the message itself.

Files are content-addressed (named by their SHA-256), so handling a message twice after a crash
writes nothing new, and no name a sender chose ever reaches the file system. Each file is written
to a temporary name, flushed to disk and renamed, before the transaction that refers to it
commits: a committed row never points at a missing or partial file. Files are 0600 and
directories 0700 whatever the umask; ``raw/`` and ``blobs/`` found wider are tightened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from maildesk import private

log = logging.getLogger(__name__)

KINDS = ("raw", "blobs")


class Store:
    """The blob store under ``data_dir``: ``raw/`` for large whole messages, ``blobs/`` for
    attachments."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.root = data_dir
        self.durable = durable
        self._writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")
        for kind in KINDS:
            # closed at the top, what lies below (written by an older version, or under
            # another umask) is out of others' reach without walking every file
            tightened = private.tighten(data_dir / kind)
            if tightened:
                log.warning("%s", tightened)

    def put_raw(self, raw: bytes) -> tuple[str, str]:
        """Keep a whole message verbatim; return (relative path, sha256)."""
        digest = hashlib.sha256(raw).hexdigest()
        return self._put("raw", digest, ".eml", raw), digest

    def put_raw_soon(self, raw: bytes) -> Future[tuple[str, str]]:
        """``put_raw`` in the background: the caller parses and routes the message while the
        disk flushes it (an fsync costs milliseconds, more while other processes write), and
        takes the result before its transaction refers to the file."""
        return self._writers.submit(self.put_raw, raw)

    def put_raw_stream(self, first: bytes, rest: BinaryIO) -> tuple[str, str, int]:
        """Keep a whole message that is ``first`` and what is left in ``rest``, read and written
        in pieces (a message too large to hold in memory); return (relative path, sha256,
        size)."""
        hasher = hashlib.sha256()
        private.make_dirs(self.root / "raw")
        temp = self.root / "raw" / f".stream.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = private.open_new(temp, os.O_EXCL)
        size = 0
        try:
            chunk = first
            while chunk:
                hasher.update(chunk)
                size += len(chunk)
                _write_all(fd, chunk)
                chunk = rest.read(1 << 20)
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        digest = hasher.hexdigest()
        relative = f"raw/{digest[:2]}/{digest[2:4]}/{digest}.eml"
        private.make_dirs((self.root / relative).parent)
        os.replace(temp, self.root / relative)
        return relative, digest, size

    def put_blob(self, payload: bytes, digest: str | None = None) -> str:
        """Keep an attachment's bytes; return the relative path."""
        digest = digest or hashlib.sha256(payload).hexdigest()
        return self._put("blobs", digest, "", payload)

    def path(self, relative: str) -> Path:
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"path outside the store: {relative!r}")
        return resolved

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def _put(self, kind: str, digest: str, suffix: str, data: bytes) -> str:
        relative = f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}{suffix}"
        target = self.root / relative
        if target.exists() and target.stat().st_size == len(data):
            return relative
        private.make_dirs(target.parent)
        # a name of its own: two writers of the same content never share a temporary file
        temp = target.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = private.open_new(temp, os.O_EXCL)
        try:
            try:
                _write_all(fd, data)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, target)
        except BaseException:
            # a full disk: the part written would outlive every retry, taking the room freed
            temp.unlink(missing_ok=True)
            raise
        return relative


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
