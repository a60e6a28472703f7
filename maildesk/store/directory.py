"""The directory store: files under ``data_dir`` (``raw/`` and ``blobs/``).

``[store] backend = "directory"``, the default on SQLite. Each file is written to a temporary
name, flushed to disk and renamed, before the transaction that refers to it commits. Files are
0600 and directories 0700 whatever the umask; ``raw/`` and ``blobs/`` found wider are
tightened. Only the host that wrote a file reads it, unless the hosts share the directory.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from maildesk import private
from maildesk.store import KINDS, PIECE, Checked, DamagedFile, Store, digest_of, name_for

log = logging.getLogger(__name__)


class DirectoryStore(Store):
    """The store under ``data_dir``: ``raw/`` for large whole messages, ``blobs/`` for
    attachments."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        super().__init__()
        self.root = data_dir
        self.durable = durable
        for kind in KINDS:
            # closed at the top, what lies below (written by an older version, or under
            # another umask) is out of others' reach without walking every file
            tightened = private.tighten(data_dir / kind)
            if tightened:
                log.warning("%s", tightened)

    def put_raw_stream(self, first: bytes, rest: BinaryIO) -> tuple[str, str, int]:
        pieces = _chained(first, rest)
        checked, temp = self.write_new("raw", pieces)
        digest = checked.hasher.hexdigest()
        name = name_for("raw", digest)
        private.make_dirs(self.path(name).parent)
        os.replace(temp, self.path(name))
        return name, digest, checked.count

    def write_new(self, kind: str, pieces: Iterable[bytes]) -> tuple[Checked, Path]:
        """``pieces`` in a temporary file of ``kind``'s directory, flushed; returns what was
        written (counted and hashed) and the file, for the caller to rename."""
        private.make_dirs(self.root / kind)
        temp = self.root / kind / f".stream.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        checked = Checked(f"{kind}/stream")
        fd = private.open_new(temp, os.O_EXCL)
        try:
            try:
                for piece in pieces:
                    _write_all(fd, checked.add(piece))
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return checked, temp

    def path(self, name: str) -> Path:
        """Where ``name`` is on disk (this backend alone has one)."""
        resolved = (self.root / name).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"path outside the store: {name!r}")
        return resolved

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def stream(self, name: str) -> Iterator[bytes]:
        checked = Checked(name)
        try:
            source = self.path(name).open("rb")
        except FileNotFoundError:
            raise DamagedFile(f"{name}: not in the store ({self.root})") from None
        with source:
            while piece := source.read(PIECE):
                yield checked.add(piece)
        checked.verify()

    def read(self, name: str) -> bytes:
        try:
            data = self.path(name).read_bytes()
        except FileNotFoundError:
            raise DamagedFile(f"{name}: not in the store ({self.root})") from None
        checked = Checked(name, len(data))
        checked.add(data)
        checked.verify()
        return data

    def _put(self, name: str, data: bytes) -> str:
        target = self.path(name)
        if target.exists() and target.stat().st_size == len(data):
            return name
        private.make_dirs(target.parent)
        # a name of its own: two writers of the same content never share a temporary file
        temp = target.with_name(f".{digest_of(name)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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
        return name

    def names(self) -> Iterator[str]:
        """Every file kept here (temporary files left by a crash are not)."""
        for kind in KINDS:
            for path in sorted((self.root / kind).glob("??/??/*")):
                name = path.relative_to(self.root).as_posix()
                try:
                    digest_of(name)
                except ValueError:
                    continue
                yield name


def _chained(first: bytes, rest: BinaryIO) -> Iterator[bytes]:
    piece = first
    while piece:
        yield piece
        piece = rest.read(PIECE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
