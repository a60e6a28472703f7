"""The desk's secret when the config gives none: made once, kept in the database, the same for
every host on it.

Base layer, beside ``config`` and ``database``: every command that signs or checks a mark (the
daemon, ``deliver``, ``ingest``, ``quarantine replay``, ``agents address``, ``check-config``'s
probe) calls ``settled`` once the database is reached and upgraded, before the desk is built.
The first start on a database puts in the secret an older maildesk kept in ``data_dir/secret``
(reply tokens, personal addresses and bounce addresses already sent keep working), or a new one;
an insert that does nothing when a row is there, then a read, so two hosts starting at once on
one database agree on whichever came first. The file is left where it was, and no longer read
but to warn when it differs from the desk's.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from maildesk.config import ConfigError, Settings
from maildesk.config.secret import MIN_SECRET_LENGTH, derive_loop_id
from maildesk.database import HEAD_REVISION, Database
from maildesk.models import DeskState, insert_row, select

log = logging.getLogger(__name__)

KEY = "secret"  # the row of DeskState that holds it
OLD_FILE = "secret"  # where in data_dir maildesk kept it before


def settled(settings: Settings, db: Database) -> Settings:
    """``settings`` with the desk's secret (and the loop id derived from it, unless one is
    given): the config's when it gives one, else the database's, made or moved in now when it
    holds none. Raises ``DatabaseError`` while the database is down, ``ConfigError`` (one line)
    when the secret kept cannot be used."""
    desk = settings.desk
    if desk.secret:
        return settings
    secret = desk_secret(db, desk.data_dir, settings.path)
    desk = dataclasses.replace(desk, secret=secret, loop_id=desk.loop_id or derive_loop_id(secret))
    return dataclasses.replace(settings, desk=desk)


def stand_in(settings: Settings) -> Settings:
    """``settings`` with a secret of no use beyond rendering sample mail (``check-config``'s
    templates, read before the database is reached): nothing made with it is ever sent."""
    if settings.desk.secret:
        return settings
    desk = dataclasses.replace(settings.desk, secret=secrets.token_bytes(32))
    return dataclasses.replace(settings, desk=desk)


def desk_secret(db: Database, data_dir: Path, config: Path) -> bytes:
    """The secret kept in the database, put in first if it holds none: the data directory's
    older one when there is one, else a new one."""
    old_path = data_dir / OLD_FILE
    kept = _kept(db)
    old = _old_secret(old_path, config, moving=kept is None)
    if kept is None:
        candidate = old or secrets.token_urlsafe(32)
        try:
            kept = _keep_first(db, candidate)
        except DBAPIError as exc:  # a role without INSERT, a read-only server: the admin's to fix
            reason = str(exc.orig or exc).strip().splitlines() or [type(exc).__name__]
            raise ConfigError(
                f"{config}: [database] url: the database refused to keep the desk's secret "
                f"(table desk_state): {reason[0]}; grant this role INSERT on it, or set [desk] "
                "secret_file"
            ) from None
        if kept == candidate:  # not another host's, put in a moment before
            log.info(
                "the desk's secret is now kept in the database, shared by every host on it: %s",
                f"moved from {old_path} (left in place; no longer read)" if old else "made anew",
            )
    if len(kept.strip()) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"{config}: [desk] secret: none given, and the one kept in the database (table "
            f"desk_state, key {KEY!r}) holds {len(kept.strip())} characters, too few for one: "
            "set [desk] secret_file to the desk's secret, or delete that row to have a new one "
            "made (reply tokens and bounce addresses already sent stop working)"
        )
    if old is not None and old != kept.strip():
        log.warning(
            "%s holds a secret other than the desk's, which is kept in the database and used by "
            "every host: reply tokens, personal addresses and bounce addresses this host made "
            "with it no longer verify (agents answer a newer notice, or send #new to the personal "
            "address maildesk agents address prints now); remove %s to silence this",
            old_path,
            old_path,
        )
    return kept.strip().encode()


def stale_file(settings: Settings, db: Database) -> str | None:
    """check-config's warning when ``data_dir/secret`` holds a secret other than the one the
    database keeps (None when the config gives one, or the database keeps none yet: a new
    database, or one an older maildesk made, has no table for it until the daemon's start)."""
    if settings.desk.secret or db.revision() != HEAD_REVISION:
        return None
    path = settings.desk.data_dir / OLD_FILE
    kept, old = _kept(db), _old_secret(path, settings.path, moving=False)
    if kept is None or old is None or old == kept.strip():
        return None
    return (
        f"[desk] secret: {path} holds a secret other than the desk's, which the database keeps "
        "for every host: the reply tokens, personal addresses and bounce addresses this host "
        f"made with it no longer verify; remove {path} to silence this"
    )


def _old_secret(path: Path, config: Path, *, moving: bool) -> str | None:
    """What an older maildesk kept in ``data_dir/secret`` (None: no such file). ``moving``: it
    is to be kept in the database, so a file that cannot be read, or too short for a secret,
    stops the start (one line); else it is only compared."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        if not moving:
            return None
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(
            f"{config}: [desk] secret: none given and {path} cannot be read ({reason}); it holds "
            "the secret an older maildesk made, to be kept in the database"
        ) from None
    if moving and len(text) < MIN_SECRET_LENGTH:  # never one maildesk wrote: whole or nothing
        raise ConfigError(
            f"{config}: [desk] secret: none given and {path} holds {len(text)} characters, too "
            "few for one: remove it to have a new one made and kept in the database (reply "
            "tokens and bounce addresses already sent stop working)"
        )
    return text


def _kept(db: Database) -> str | None:
    with db.transaction() as session:
        value = session.scalar(select(DeskState.value).where(DeskState.key == KEY))
    return None if value is None else str(value)


def _keep_first(db: Database, candidate: str) -> str:
    """``candidate`` kept unless a row is there already (another host's, first by a moment);
    whichever is kept, read back in the same transaction. The insert comes first, so SQLite
    takes its write lock before reading anything."""
    with db.transaction() as session:
        values = {"key": KEY, "value": candidate, "set_at": datetime.now(UTC)}
        insert_row(session, DeskState, values, once=True)
        value = session.scalar(select(DeskState.value).where(DeskState.key == KEY))
    return str(value)
