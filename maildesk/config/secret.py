"""The desk's secret: given in the config, or made once and kept in the data directory.

Read by ``reading`` for ``[desk]``; the secret signs reply tokens and bounce addresses, and the
installation's loop id (``X-Maildesk-Loop``) is derived from it unless one is given.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from maildesk import private
from maildesk.config.table import Table


def derive_loop_id(secret: bytes) -> str:
    return hashlib.sha256(b"maildesk-loop:" + secret).hexdigest()[:16]


def desk_secret(t: Table, base: Path, data_dir: Path) -> bytes:
    given = t.secret("secret", base, required=False)
    if given is not None:
        if len(given) < 16:
            raise t.fail(
                "secret", "too short: use at least 16 characters (32 random bytes is best)"
            )
        return given.encode()
    path = data_dir / "secret"
    try:
        if not path.exists():
            private.make_dirs(data_dir)
            keep_new_secret(path)
        kept = path.read_text().strip()
    except OSError as exc:
        raise t.fail(
            "secret", f"none given and cannot keep one in {path}: {exc.strerror}"
        ) from None
    if len(kept) < 16:  # never one maildesk wrote: it writes the whole file or none of it
        raise t.fail(
            "secret",
            f"none given and {path} holds {len(kept)} characters, too few for one: remove it to "
            "have a new one made (reply tokens and bounce addresses already sent stop working)",
        )
    return kept.encode()


def keep_new_secret(path: Path) -> None:
    """A new random secret in ``path``, whole or not at all: written to a file of its own,
    then linked into place (a full disk, or a kill, left an empty secret that every start
    after read). Another process making one at the same moment wins; its secret is kept."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(private.open_new(temporary, os.O_EXCL), "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: moved into place, whole all the same
            if not path.exists():
                os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
