"""``tickets search`` and ``tickets files``: finding a ticket by its words, and a ticket's files
(or its mail, ``--raw``) written to a directory.

Read-only verbs of the command line, under ``cli``: each reads the settings and opens one
transaction (``start``). The words go to ``act.search``; files are read through the desk's blob
store and raw mail through ``ingest.read_raw``, so they come back byte for byte as they came.
A name a sender chose is made safe before it names a file, and an existing file is never
overwritten: one with the same bytes is left as it is, else the name gets `` (2)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maildesk.config import Settings
from maildesk.models import Ticket
from maildesk.ui.listing import find_ticket
from maildesk.ui.start import load_settings, open_db, open_desk_db
from maildesk.ui.views import iso, table

NAME_CHARS = 120  # of a file's name made safe (its extension kept)
NAME_BYTES = 200  # the same in UTF-8: well within the 255 bytes file systems take
EXTENSION_CHARS = 16
_UNSAFE = set('<>:"|?*')  # not in names on Windows (and ":" on macOS)


def cmd_tickets_search(args: argparse.Namespace) -> int:
    from maildesk.act import search

    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        found = search.find(session, " ".join(args.words), limit=args.limit)
    ref = settings.desk.ref
    matches = [
        {
            "ref": ref(m.ticket_id),
            "number": m.ticket_id,
            "subject": m.subject,
            "status": m.status.value,
            "requester": m.requester,
            "at": iso(m.at),
            "context": m.context,
            "in_subject": m.in_subject,
        }
        for m in found
    ]
    if args.json:
        print(json.dumps(matches, indent=2, ensure_ascii=False))
    elif not matches:
        print("no ticket matches")
    else:
        print(_rendered(matches))
    return 0


def _rendered(matches: list[dict[str, Any]]) -> str:
    """A table of the matches, each with its line of context below it, indented."""
    rows = [
        (m["ref"], m["status"], m["at"][:16].replace("T", " "), m["requester"], m["subject"])
        for m in matches
    ]
    header, *lines = table(rows, ("REF", "STATUS", "AT", "REQUESTER", "SUBJECT")).splitlines()
    out = [header]
    for line, match in zip(lines, matches, strict=True):
        out += [line, f"    {match['context']}"]
    return "\n".join(out)


def positive(value: str) -> int:
    """``--limit``: a whole number from 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a number of tickets: {value!r}")
    return number


# ---------------------------------------------------------------------------- tickets files


@dataclass(frozen=True, slots=True)
class Wanted:
    """One file to write: the name asked for (safe already), and where its bytes are."""

    name: str
    blob: str | None  # an attachment's path in the store
    raw: str | None  # a message's raw_path


def cmd_tickets_files(args: argparse.Namespace) -> int:
    from maildesk.act import ingest
    from maildesk.service.wiring import desk_for

    settings, db = open_desk_db(load_settings(args))
    desk = desk_for(settings)
    target = Path(args.output)
    failed = 0
    try:
        with db.transaction() as session:
            ticket = find_ticket(session, settings, args.ref)
            if ticket is None:
                print(f"maildesk: no ticket {args.ref}", file=sys.stderr)
                return 1
            wanted, notes = _raw_mail(ticket) if args.raw else _attachments(ticket)
            for note in notes:
                print(note)
            if not wanted:
                print(_nothing(settings, ticket, raw=args.raw))
                return 0
            _make_directory(target)
            taken: set[str] = set()
            for item in wanted:
                try:
                    data = (
                        ingest.read_raw(session, desk, item.raw)
                        if item.raw
                        else desk.store.read(item.blob or "")
                    )
                except (OSError, ValueError) as exc:
                    print(f"maildesk: {item.name}: not readable: {exc}", file=sys.stderr)
                    failed += 1
                    continue
                print(_written(target, item.name, data, taken))
    except _Refused as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return 1
    finally:
        desk.close()
    return 1 if failed else 0


class _Refused(Exception):
    """The directory cannot take the files (one line, exit 1)."""


def _attachments(ticket: Ticket) -> tuple[list[Wanted], list[str]]:
    wanted, notes = [], []
    for message in ticket.messages:
        for part in message.attachments:
            name = safe_name(part.filename)
            if part.dropped or part.path is None:
                notes.append(f"not kept: {name} ({part.size} bytes, over the desk's limits)")
            else:
                wanted.append(Wanted(name, blob=part.path, raw=None))
    return wanted, notes


def _raw_mail(ticket: Ticket) -> tuple[list[Wanted], list[str]]:
    """The mail of the thread as it came, named by the ticket and the message's place in it
    (``12-3.eml``: the third message ``tickets show 12`` lists)."""
    wanted = [
        Wanted(f"{ticket.id}-{n}.eml", blob=None, raw=message.raw_path)
        for n, message in enumerate(ticket.messages, 1)
        if message.raw_path
    ]
    return wanted, []


def _nothing(settings: Settings, ticket: Ticket, *, raw: bool) -> str:
    what = "mail kept as it came" if raw else "files"
    line = f"ticket {settings.desk.ref(ticket.id)} has no {what}"
    if ticket.merged_into is not None:
        line += f"; it was merged into {settings.desk.ref(ticket.merged_into)}"
    return line


def _make_directory(target: Path) -> None:
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise _Refused(f"{target} is not a directory") from None
    except OSError as exc:
        raise _Refused(f"{target}: {exc.strerror or exc}") from None


def _written(target: Path, name: str, data: bytes, taken: set[str]) -> str:
    """Write ``data`` as ``name`` in ``target`` (a free name, never over a file) and say so."""
    for candidate in _names(name):
        if candidate in taken:
            continue  # a file of this run has the name
        path = target / candidate
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            if _same(path, data):
                taken.add(candidate)
                return f"unchanged {path} ({len(data)} bytes, there already)"
            continue
        except OSError as exc:  # a directory that takes no new file
            raise _Refused(f"{path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:  # the disk full, say: no part of a file is left as the file
            path.unlink(missing_ok=True)
            raise _Refused(f"{path}: {exc.strerror or exc}") from None
        taken.add(candidate)
        moved = "" if candidate == name else f" ({name} was taken)"
        return f"wrote {path} ({len(data)} bytes){moved}"
    raise _Refused(f"no free name for {name} in {target}")


def _same(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a file of ``data``'s bytes (its size first: a large file of the
    directory that only shares a name is never read)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _names(name: str) -> list[str]:
    """``name``, then ``name (2).ext`` and on, as far as anyone would go."""
    stem, dot, extension = name.rpartition(".")
    if not stem:
        stem, dot, extension = name, "", ""
    return [name, *(f"{stem} ({n}){dot}{extension}" for n in range(2, 1000))]


def safe_name(filename: str) -> str:
    """A sender's file name as a name in one directory: the last part of a path, without control
    or format characters (a right-to-left mark can dress ``exe.pdf`` up), without characters
    that are not in names elsewhere, no leading dot (hidden, ``..``), no trailing dot or space,
    at most ``NAME_CHARS`` characters and ``NAME_BYTES`` bytes, its extension kept;
    ``attachment`` when nothing is left."""
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(_kept(c) for c in name)
    name = name.strip(" .")
    stem, dot, extension = name.rpartition(".")
    if not stem or len(extension) > EXTENSION_CHARS:
        stem, dot, extension = name, "", ""
    room = NAME_CHARS - len(dot + extension)
    while stem and (len(stem) > room or len((stem + dot + extension).encode()) > NAME_BYTES):
        stem = stem[: min(room, len(stem) - 1)]
    stem = stem.rstrip(" .")
    return f"{stem}{dot}{extension}" if stem else ("attachment" + dot + extension)


def _kept(char: str) -> str:
    kind = unicodedata.category(char)
    if kind == "Zs":
        return " "
    if kind[0] in "CZ":  # control, format, private use; line and paragraph separators
        return ""
    return "_" if char in _UNSAFE else char
