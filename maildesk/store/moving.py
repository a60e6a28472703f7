"""``maildesk store migrate``: every file of one backend copied into the other, byte for byte.

Files are copied one at a time, each in a write of its own (a transaction, or a temporary file
renamed), and read back from the destination and checked against its name before it counts:
an interrupted run (even kill -9) leaves whole files and nothing else, and running it again
goes on where it stopped, skipping what is there already. The source keeps every file: the
names are the same in both backends, so every row naming a file works with either, before,
during and after the copy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from maildesk import private
from maildesk.store import DamagedFile, Store, digest_of
from maildesk.store.directory import DirectoryStore
from maildesk.store.rows import DatabaseStore


@dataclass(slots=True)
class Moved:
    """What a run did, file by file."""

    files: int = 0  # seen in the source
    copied: int = 0
    there: int = 0  # in the destination already, and whole
    damaged: int = 0  # in the source, but not the bytes their name says: left alone
    bytes: int = 0  # of the files copied

    def summary(self, destination: str) -> str:
        return (
            f"{self.files} files to the {destination}: {self.copied} copied "
            f"({_megabytes(self.bytes)}), {self.there} there already, {self.damaged} damaged "
            "in the source and not copied; the source keeps them all"
        )


Progress = Callable[[Moved, int], None]  # what was done so far, of how many files


def migrate(source: Store, destination: Store, progress: Progress, every: float = 1.0) -> Moved:
    """Copy every file of ``source`` missing from ``destination``; ``progress`` is told at
    most every ``every`` seconds, and once at the end."""
    names = list(source.names())
    moved = Moved()
    told = time.monotonic()
    for name in names:
        moved.files += 1
        _move_one(source, destination, name, moved)
        if time.monotonic() - told >= every:
            progress(moved, len(names))
            told = time.monotonic()
    progress(moved, len(names))
    return moved


def _move_one(source: Store, destination: Store, name: str, moved: Moved) -> None:
    if destination.exists(name) and _whole(destination, name):
        moved.there += 1
        return
    try:
        size = _copy(source, destination, name)
    except DamagedFile:
        moved.damaged += 1
        return
    if not _whole(destination, name):
        raise DamagedFile(f"{name}: the copy does not read back as written")
    moved.copied += 1
    moved.bytes += size


def _copy(source: Store, destination: Store, name: str) -> int:
    """``name`` from ``source`` into ``destination``, in pieces; its size."""
    counted = _Counting(source.stream(name))
    if isinstance(destination, DatabaseStore):
        destination.put(name, counted)
        return counted.size
    assert isinstance(destination, DirectoryStore)
    checked, temp = destination.write_new(name.split("/", 1)[0], counted)
    if checked.hasher.hexdigest() != digest_of(name):
        temp.unlink(missing_ok=True)
        raise DamagedFile(f"{name}: the bytes read are not those kept")
    target = destination.path(name)
    private.make_dirs(target.parent)
    os.replace(temp, target)
    return counted.size


def _whole(store: Store, name: str) -> bool:
    try:
        for _ in store.stream(name):
            pass
    except DamagedFile:
        return False
    return True


class _Counting:
    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            self.size += len(piece)
            yield piece


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
