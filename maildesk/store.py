"""Raw mail and attachment blobs on disk, under generated names.

Whole messages come here only when they are over ``ingest.RAW_IN_DATABASE`` (1 MiB); smaller
ones are kept in the database, in the transaction of the message itself.

Files are content-addressed (named by their SHA-256), so handling a message twice after a crash
writes nothing new, and no name a sender chose ever reaches the file system. Each file is written
to a temporary name, flushed to disk and renamed, before the transaction that refers to it
commits: a committed row never points at a missing or partial file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

FILE_MODE = 0o640


class Store:
    """The blob store under ``data_dir``: ``raw/`` for large whole messages, ``blobs/`` for
    attachments."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.root = data_dir
        self.durable = durable
        self._writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")

    def put_raw(self, raw: bytes) -> tuple[str, str]:
        """Keep a whole message verbatim; return (relative path, sha256)."""
        digest = hashlib.sha256(raw).hexdigest()
        return self._put("raw", digest, ".eml", raw), digest

    def put_raw_soon(self, raw: bytes) -> Future[tuple[str, str]]:
        """``put_raw`` in the background: the caller parses and routes the message while the
        disk flushes it (an fsync costs milliseconds, more while other processes write), and
        takes the result before its transaction refers to the file."""
        return self._writers.submit(self.put_raw, raw)

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
        target.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own: two writers of the same content never share a temporary file
        temp = target.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
        return relative
