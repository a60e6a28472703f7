"""The desk's secret as the config gives it (``[desk] secret``, ``secret_env``, ``secret_file``).

Read by ``reading`` for ``[desk]``; the secret signs reply tokens, personal addresses and bounce
addresses, and the installation's loop id (``X-Maildesk-Loop``) is derived from it unless one is
given. When the config gives none, the desk's own is kept in the database, shared by every host
on it, and filled in once the database is reached (``maildesk.shared_secret``): until then the
settings carry an empty secret.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from maildesk.config.table import Table

MIN_SECRET_LENGTH = 16


def derive_loop_id(secret: bytes) -> str:
    return hashlib.sha256(b"maildesk-loop:" + secret).hexdigest()[:16]


def given_secret(t: Table, base: Path) -> bytes:
    """The secret the config gives, or ``b""`` for the one kept in the database."""
    given = t.secret("secret", base, required=False)
    if given is None:
        return b""
    if len(given) < MIN_SECRET_LENGTH:
        raise t.fail("secret", "too short: use at least 16 characters (32 random bytes is best)")
    return given.encode()
