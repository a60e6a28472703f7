"""The database store: files as rows of the database, which every host on it reads.

``[store] backend = "database"``, the default on PostgreSQL. A file is a ``blobs`` row (its
name, size and number of chunks) and its ``blob_chunks`` of ``PIECE`` bytes each, all written
in one transaction of their own, committed before the message's transaction that names the
file: a committed message never names a missing or partial file, and a writer killed midway
leaves nothing. The same content from two daemons at once: the second writer's row waits on
the first's, and finding it committed writes nothing. Raw mail streamed from a pipe (its digest
known only at its end) is written under a name of its own and renamed in the same transaction.
Neither side holds more of a file than its caller already did, plus a chunk.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from maildesk.database import Database
from maildesk.models import Blob, BlobChunk
from maildesk.store import PIECE, Checked, DamagedFile, Store, digest_of, name_for

KNOWN_AT_MOST = 100_000  # names remembered as kept


class DatabaseStore(Store):
    """The store in the database of ``db`` (a ``Database`` of its own: its writes never wait
    for a connection the message's transaction holds)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        # names known to be kept (written or seen here): a file kept stays, so asking again
        # whether a file just written exists (a notice carrying it) costs no query
        self._known: set[str] = set()

    def put_raw_stream(self, first: bytes, rest: BinaryIO) -> tuple[str, str, int]:
        checked = Checked("raw/stream")
        temporary = f"partial/{secrets.token_hex(16)}"
        with self.db.transaction() as session:
            connection = session.connection()
            chunks = _write_chunks(connection, temporary, map(checked.add, _pieces(first, rest)))
            digest = checked.hasher.hexdigest()
            name = name_for("raw", digest)
            if self._claim(connection, name, checked.count, chunks):
                connection.execute(
                    update(BlobChunk).where(BlobChunk.name == temporary).values(name=name)
                )
            else:
                connection.execute(delete(BlobChunk).where(BlobChunk.name == temporary))
        return name, digest, checked.count

    def put(self, name: str, pieces: Iterable[bytes]) -> bool:
        """Keep ``pieces`` under ``name``, unless kept already (False); ``DamagedFile``, and
        nothing kept, when they are not the bytes the name says (``store migrate``)."""
        digest_of(name)
        checked = Checked(name)
        temporary = f"partial/{secrets.token_hex(16)}"
        with self.db.transaction() as session:
            connection = session.connection()
            chunks = _write_chunks(connection, temporary, map(checked.add, pieces))
            checked.verify()
            if not self._claim(connection, name, checked.count, chunks):
                connection.execute(delete(BlobChunk).where(BlobChunk.name == temporary))
                return False
            connection.execute(
                update(BlobChunk).where(BlobChunk.name == temporary).values(name=name)
            )
        return True

    def _put(self, name: str, data: bytes) -> str:
        if name in self._known:
            return name
        view = memoryview(data)
        chunks = -(-len(data) // PIECE)
        with self.db.transaction() as session:
            connection = session.connection()
            if self._claim(connection, name, len(data), chunks):
                pieces = (view[start : start + PIECE] for start in range(0, len(data), PIECE))
                _write_chunks(connection, name, pieces)
        self._remember(name)
        return name

    def _remember(self, name: str) -> None:
        if len(self._known) >= KNOWN_AT_MOST:
            self._known.clear()
        self._known.add(name)

    def _claim(self, connection: Any, name: str, size: int, chunks: int) -> bool:
        """The row of ``name``, unless another writer has it (committed: waits for a writer
        whose transaction is open, and claims it if that one rolled back)."""
        upsert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
        values = {"name": name, "size": size, "chunks": chunks, "created_at": datetime.now(UTC)}
        statement = upsert(Blob).values(values).on_conflict_do_nothing().returning(Blob.name)
        return connection.execute(statement).first() is not None

    def exists(self, name: str) -> bool:
        if name in self._known:
            return True
        with self.db.transaction() as session:
            found = session.execute(select(Blob.size).where(Blob.name == name)).first()
        if found is not None:
            self._remember(name)
        return found is not None

    def stream(self, name: str) -> Iterator[bytes]:
        with self.db.transaction() as session:
            connection = session.connection()
            checked = self._checked(connection, name)
            for seq in range(checked.chunks):
                yield checked.add(_chunk(connection, name, seq))
        checked.verify()

    def read(self, name: str) -> bytes:
        """The whole file, built in one buffer (the chunks are not held beside it)."""
        buffer = io.BytesIO()
        with self.db.transaction() as session:
            connection = session.connection()
            checked = self._checked(connection, name)
            for seq in range(checked.chunks):
                buffer.write(checked.add(_chunk(connection, name, seq)))
        checked.verify()
        return buffer.getvalue()

    def _checked(self, connection: Any, name: str) -> _Counted:
        row = connection.execute(select(Blob.size, Blob.chunks).where(Blob.name == name)).first()
        if row is None:
            raise DamagedFile(
                f"{name}: not in the store (the database); a host that keeps files in its "
                'data_dir ([store] backend = "directory") may hold it: run `maildesk store '
                "migrate --to database` there"
            )
        return _Counted(name, row.size, row.chunks)

    def names(self) -> Iterator[str]:
        """Every file kept here, in name order, read a thousand names at a time."""
        after = ""
        while True:
            with self.db.transaction() as session:
                query = select(Blob.name).where(Blob.name > after).order_by(Blob.name)
                batch = list(session.scalars(query.limit(1000)))
            yield from batch
            if len(batch) < 1000:
                return
            after = batch[-1]

    def totals(self) -> tuple[int, int]:
        """How many files the store keeps, and their bytes."""
        with self.db.transaction() as session:
            count, size = session.execute(select(func.count(), func.sum(Blob.size))).one()
        return int(count), int(size or 0)

    def close(self) -> None:
        super().close()
        self.db.dispose()


class _Counted(Checked):
    def __init__(self, name: str, size: int, chunks: int) -> None:
        super().__init__(name, size)
        self.chunks = chunks


def _chunk(connection: Any, name: str, seq: int) -> bytes:
    query = select(BlobChunk.data).where(BlobChunk.name == name, BlobChunk.seq == seq)
    data = connection.execute(query).scalar()
    if data is None:
        raise DamagedFile(f"{name}: chunk {seq} is missing")
    return bytes(data)


def _write_chunks(connection: Any, name: str, pieces: Iterable[bytes | memoryview]) -> int:
    """Write ``pieces`` as the chunks of ``name``; return how many."""
    count = 0
    statement = insert(BlobChunk)
    for piece in pieces:
        connection.execute(statement, {"name": name, "seq": count, "data": bytes(piece)})
        count += 1
    return count


def _pieces(first: bytes, rest: BinaryIO) -> Iterator[bytes]:
    """``first`` then ``rest``, in pieces of ``PIECE`` bytes."""
    view = memoryview(first)
    for start in range(0, len(first), PIECE):
        yield bytes(view[start : start + PIECE])
    del view
    while piece := rest.read(PIECE):
        yield piece
