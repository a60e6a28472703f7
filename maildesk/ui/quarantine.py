"""The quarantine verbs: ``quarantine list`` shows the messages kept aside, ``quarantine
replay`` handles them again (after a fix or a raised limit) and sends what that causes.

Under ``cli``: the ledger rows marked quarantined are read here; handling a message again is
``act.ingest``'s, delivering what it enqueued the daemon's, once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from sqlalchemy import select

from maildesk.config import Settings
from maildesk.database import Database
from maildesk.models import Ledger
from maildesk.store import DamagedFile
from maildesk.ui.start import checked_desk, load_settings, open_db, open_desk_db
from maildesk.ui.views import iso, table


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        rows = session.scalars(
            select(Ledger).where(Ledger.outcome == "quarantined").order_by(Ledger.id)
        )
        items = [
            {
                "id": r.id,
                "mailbox": r.mailbox,
                "uid": r.uid,
                "from": r.sender,
                "subject": r.subject,
                "error": r.reason,
                "at": iso(r.at),
            }
            for r in rows
        ]
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        print(
            table(
                [(i["id"], i["mailbox"], i["uid"], i["at"], i["from"], i["error"]) for i in items],
                ("ID", "MAILBOX", "UID", "AT", "FROM", "ERROR"),
            )
        )
    return 0


# the largest row ID either database keeps (a PostgreSQL ``integer``)
LARGEST_ID = 2**31 - 1


def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    from maildesk.act import ingest

    settings, db = open_desk_db(load_settings(args))
    desk = checked_desk(settings)
    with db.transaction() as session:
        query = select(Ledger).where(Ledger.outcome == "quarantined")
        if not args.all:
            if args.id is None:
                print("maildesk: give a quarantine ID or --all", file=sys.stderr)
                return 2
            if not 0 < args.id <= LARGEST_ID:  # PostgreSQL refuses to compare with it
                print(f"maildesk: no quarantined message {args.id}", file=sys.stderr)
                return 1
            query = query.where(Ledger.id == args.id)
        rows = [(r.id, r.mailbox, r.uidvalidity, r.uid, r.raw_path) for r in session.scalars(query)]
    if not rows and not args.all:
        print(f"maildesk: no quarantined message {args.id}", file=sys.stderr)
        return 1
    try:
        # its worker is a fork of this process, which has no thread yet: no interpreter to start
        desk.parser.start(ingest.budget_of(desk), fork=True)
        failed = _replay(settings, db, desk, rows)
        if rows:
            asyncio.run(_deliver_now(settings, db, desk))
    finally:
        desk.close()
    return 1 if failed else 0


def _replay(settings: Settings, db: Database, desk: Any, rows: list[Any]) -> int:
    """Handle each quarantined message of ``rows`` again; how many are still quarantined."""
    from maildesk.act import ingest

    failed = 0
    for ledger_id, mailbox, uidvalidity, uid, raw_path in rows:
        if raw_path is None:
            how = (
                "raise [limits] max_message_bytes and move it back to the inbox folder"
                if uid is not None
                else "it came through `maildesk ingest`: its sender must send it again"
            )
            print(f"{ledger_id}: raw message not kept (too large to take); {how}")
            failed += 1
            continue
        try:
            with db.transaction() as session:
                raw = ingest.read_raw(session, desk, raw_path)
        except DamagedFile as exc:
            print(f"{ledger_id}: cannot read the message kept: {exc}")
            failed += 1
            continue
        outcome = ingest.process(
            db, desk, ingest.Source(mailbox, uidvalidity, uid), raw, replay=ledger_id
        )
        ref = settings.desk.ref(outcome.ticket_id) if outcome.ticket_id else "-"
        print(f"{ledger_id}: {outcome.kind} {ref} {outcome.reason}".rstrip())
        failed += outcome.quarantined
    return failed


async def _deliver_now(settings: Settings, db: Database, desk: Any) -> None:
    from maildesk.service import delivery
    from maildesk.service.runtime import Runtime

    await delivery.deliver(Runtime(settings, db, desk, once=True))
