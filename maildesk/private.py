"""Private files: what maildesk writes only its own user can read; wider modes are named.

Base layer, beside ``config``, ``models`` and ``store``. The database holds every ticket, the
raw mail and outgoing mail with valid reply tokens; the data directory holds attachments, large
raw mail and the secret. So every maildesk process sets its umask to 077 as it starts, and
each place that creates a file or directory gives the mode itself (0600, 0700) rather than
trusting the umask it was started with.

Files maildesk made itself (the SQLite database and its ``-wal``/``-shm``, the blob store's
directories, the generated secret) are tightened when found wider, with a log line saying so.
What the admin made (the data directory itself, the config, password and token files) is never
changed: ``config`` warns about it with the command that fixes it.

Files are made by whoever runs the command, so root must not write into a data directory that
belongs to the service's user: the database's journal, raw mail or attachments it left there
would be root's, and the service would fail on them hours later. ``foreign_owner`` finds that
case, and ``config`` refuses it before anything is written.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
OTHERS = 0o077  # any access for group or others
OTHERS_READ = stat.S_IRGRP | stat.S_IROTH
OTHERS_ENTER = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH


def set_umask() -> None:
    """Whatever this process and its children create is private unless given a mode."""
    os.umask(UMASK)


def make_dirs(path: Path) -> None:
    """``path`` and its missing parents, each 0700 (``mkdir -p`` leaves parents to the umask)."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        make_dirs(path.parent)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            return
    os.chmod(path, DIR_MODE)  # the umask may have taken more than group and others' bits


def open_new(path: Path, flags: int) -> int:
    """Open ``path`` for writing, created 0600 if missing (``flags`` add O_EXCL, O_TRUNC...)."""
    fd = os.open(path, flags | os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def create_empty(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists: SQLite gives a database's ``-wal``,
    ``-shm`` and journal the database file's mode, so the file must be private first. A file
    that cannot be created is left for the caller's own open to report."""
    try:
        os.close(open_new(path, os.O_EXCL))
    except OSError:
        pass


def tighten(path: Path) -> str | None:
    """Take group and others' access away from one of maildesk's own files or directories.

    One line for the log saying what was done (or that it could not be), None when the path
    is missing or already private."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & OTHERS:
        return None
    private = mode & ~OTHERS
    try:
        os.chmod(path, private)
    except OSError as exc:
        return (
            f"{path} can be read by others (mode {mode:o}) and cannot be made private "
            f"({exc.strerror}); run chmod {private:o} {path}"
        )
    return f"{path} could be read by others (mode {mode:o}); made it {private:o}"


def open_to_others(path: Path) -> int | None:
    """The mode of ``path`` when others may read it (or enter it, for a directory); else None
    (and None when it is missing)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    mask = OTHERS_ENTER if path.is_dir() else OTHERS_READ
    return mode if mode & mask else None


def foreign_owner(path: Path) -> str | None:
    """The user that ``path`` belongs to (or its nearest existing parent, when ``path`` is still
    to be made), when this process runs as root and that user is not root; else None."""
    if os.geteuid() != 0:
        return None
    for place in (path, *path.parents):
        try:
            uid = place.stat().st_uid
        except FileNotFoundError:
            continue
        except OSError:
            return None  # the command's own access to it fails, and says so
        if uid == 0:
            return None
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)
    return None
