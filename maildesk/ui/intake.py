"""The block list verbs: ``intake blocked`` lists it, ``intake unblock`` takes an address an
agent blocked (``#spam block``) off it.

Under ``cli``: the config's ``[intake] blocked_senders`` are listed beside the addresses
``act.spam`` keeps; those of the config are changed in the config file.
"""

from __future__ import annotations

import argparse
import json
import sys

from maildesk.act import spam
from maildesk.desk.spam import blocked
from maildesk.ui.start import load_settings, open_db
from maildesk.ui.views import iso, table


def cmd_intake_blocked(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        entries = spam.listed(session, settings.intake.blocked_senders)
    items = [
        {
            "address": e.address,
            "source": e.source,
            "blocked_by": e.blocked_by,
            "blocked_at": iso(e.blocked_at) if e.blocked_at else None,
            "ticket": settings.desk.ref(e.ticket_id) if e.ticket_id else None,
        }
        for e in entries
    ]
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
        return 0
    rows = [
        (i["address"], i["source"], i["blocked_by"], i["blocked_at"] or "", i["ticket"] or "")
        for i in items
    ]
    print(table(rows, ("ADDRESS", "SOURCE", "BLOCKED BY", "AT", "TICKET")))
    return 0


def cmd_intake_unblock(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    address = args.address.strip()
    with db.transaction() as session:
        removed = spam.unblock(session, address)
    config = blocked([address], settings.intake.blocked_senders)
    if removed:
        print(f"unblocked {address}")
        if config:
            print(f"maildesk: still blocked by the config: {config}", file=sys.stderr)
        return 0
    if config:
        print(f"maildesk: {config}: change [intake] blocked_senders in the config", file=sys.stderr)
    else:
        print(f"maildesk: {address} is not blocked", file=sys.stderr)
    return 1
