"""What every command does first: the settings read, logging set up, the database opened, the
desk made with its templates checked, ``--since`` read.

Under the command line (``cli`` and the modules of its verbs): a bad config raises
``ConfigError``, a command-line value that makes no sense ``UsageError``; ``cli.main`` turns
each into one line and its exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from maildesk import config as config_module
from maildesk import shared_secret
from maildesk.act import stats
from maildesk.config import Settings
from maildesk.database import Database

if TYPE_CHECKING:
    from maildesk.act.means import Desk

log = logging.getLogger("maildesk")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("message_id", "ticket", "mailbox"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("imapclient", "aiosmtplib", "mail-parser", "mailparser", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class UsageError(Exception):
    """A command-line value that makes no sense: one line, exit code 2."""


def load_settings(args: argparse.Namespace, *, log_warnings: bool = True) -> Settings:
    settings = config_module.load(config_module.find_config(args.config))
    setup_logging(args.log_format or settings.log.format, settings.log.level)
    for warning in settings.warnings if log_warnings else ():
        log.warning("%s", warning)
    return settings


def open_db(settings: Settings, *, upgrade: bool = True) -> Database:
    db = Database(settings.database_url)
    if upgrade:
        db.upgrade()
    return db


def open_desk_db(settings: Settings) -> tuple[Settings, Database]:
    """The database opened and upgraded, and ``settings`` with the desk's secret read from it
    (made, or moved in from the data directory, on the first start): for every command that
    signs or checks a reply token, a personal or a bounce address."""
    db = open_db(settings)
    return shared_secret.settled(settings, db), db


def checked_desk(settings: Settings) -> Desk:
    """The desk, its templates rendered with sample data first: a template that fails stops
    the command with one line naming the file and line (``ConfigError``, exit 78)."""
    from maildesk.act import samples
    from maildesk.service.wiring import desk_for

    desk = desk_for(settings)
    samples.require(desk)
    return desk


def window(since: str) -> tuple[datetime, datetime]:
    """``--since`` ("7d", "2026-11-01") as (since, now)."""
    now = datetime.now(UTC)
    try:
        return stats.parse_since(since, now), now
    except ValueError as exc:
        raise UsageError(str(exc)) from None
