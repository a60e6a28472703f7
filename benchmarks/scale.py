"""(c) Per-message ingest cost on an empty database and on one seeded with many tickets.

Seeding goes through the models' tables with bulk inserts (``executemany`` in big transactions):
each seeded ticket has its first message, a creation event, its ledger row and its sent
acknowledgment, so every lookup on the hot path (Message-ID, ledger key and digest, outbox
Message-ID and recipient) searches tables of the seeded size. The measured mail is the same mix
on both databases (new tickets, then replies threading to them), run in alternating chunks so
machine noise falls on both alike, calling ``ingest.process`` in-process.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from benchmarks.world import customer_mail
from maildesk import config as config_module
from maildesk.act import ingest
from maildesk.act.outbox import Mail
from maildesk.database import Database
from maildesk.models import Event, Ledger, Message, Outbox, Ticket
from maildesk.service.wiring import desk_for

SEED_CHUNK = 50_000


def seed(db: Database, count: int) -> float:
    """Insert ``count`` tickets (with message, event, ledger row and outbox row); seconds taken."""
    started = time.monotonic()
    base = datetime(2020, 1, 1, tzinfo=UTC)
    for start in range(0, count, SEED_CHUNK):
        numbers = range(start + 1, min(start + SEED_CHUNK, count) + 1)
        tickets: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        ledger: list[dict[str, Any]] = []
        outbox: list[dict[str, Any]] = []
        for n in numbers:
            at = base + timedelta(minutes=n)
            requester = f"s{n}@seed.example"
            mid = f"seed{n}@seed.example"
            tickets.append(
                {
                    "id": n,
                    "subject": f"Seeded ticket {n}",
                    "requester": requester,
                    "status": "closed" if n % 3 else "open",
                    "priority": "medium",
                    "team": "support",
                    "mailbox": "support",
                    "created_at": at,
                    "updated_at": at,
                    "status_since": at,
                    "sla_breached": "",
                }
            )
            messages.append(
                {
                    "id": n,
                    "ticket_id": n,
                    "message_id": mid,
                    "sender": requester,
                    "internal": False,
                    "unverified": False,
                    "subject": f"Seeded ticket {n}",
                    "text": "Hello, my order has not arrived.",
                    "defects": "",
                    "created_at": at,
                }
            )
            events.append(
                {"ticket_id": n, "kind": "created", "actor": requester, "at": at, "detail": "{}"}
            )
            ledger.append(
                {
                    "mailbox": "support",
                    "uidvalidity": 1,
                    "uid": 10_000_000 + n,
                    "message_id": mid,
                    "sha256": hashlib.sha256(mid.encode()).hexdigest(),
                    "outcome": "new_ticket",
                    "reason": "",
                    "ticket_id": n,
                    "sender": requester,
                    "subject": f"Seeded ticket {n}",
                    "at": at,
                    "moved": True,
                }
            )
            outbox.append(
                {
                    "ticket_id": n,
                    "message_id": f"ack{n}@example.test",
                    "kind": "ack",
                    "recipient": requester,
                    "mail_from": "support@example.test",
                    "automatic": True,
                    "body": b"acknowledgment",
                    "status": "sent",
                    "attempts": 1,
                    "next_attempt_at": at,
                    "created_at": at,
                    "sent_at": at,
                }
            )
        with db.transaction() as session:
            session.execute(insert(Ticket.__table__), tickets)
            session.execute(insert(Message.__table__), messages)
            session.execute(insert(Event.__table__), events)
            session.execute(insert(Ledger.__table__), ledger)
            session.execute(insert(Outbox.__table__), outbox)
    return time.monotonic() - started


def measured_mail(count: int, domain: str) -> list[bytes]:
    """``count`` mails: new tickets, then each one's requester replying to it (threaded)."""
    news = count - count // 3
    first = [customer_mail(i, domain, attachment=100_000 if i % 5 == 0 else 0) for i in range(news)]
    replies = []
    for i in range(count - news):
        original = first[i].split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        replies.append(customer_mail(i, domain, in_reply_to=original))
    return first + replies


def per_message_cost(config_path: Path, seeded: int, count: int, chunk: int = 25) -> dict[str, Any]:
    """Mean ingest cost per message (ms) on an empty database and on a seeded one."""
    settings = config_module.load(config_path)
    data = settings.desk.data_dir
    desk = desk_for(settings)
    empty = Database(f"sqlite:///{data / 'empty.db'}")
    full = Database(f"sqlite:///{data / 'seeded.db'}")
    for db in (empty, full):
        db.upgrade()
    seed_seconds = seed(full, seeded)
    mails = {
        "empty": measured_mail(count, "empty.example"),
        "seeded": measured_mail(count, "full.example"),
    }
    dbs = {"empty": empty, "seeded": full}
    spent = {"empty": 0.0, "seeded": 0.0}
    outcomes: dict[str, dict[str, int]] = {"empty": {}, "seeded": {}}
    for start in range(0, count, chunk):
        for arm in ("empty", "seeded"):
            began = time.perf_counter()
            for offset, raw in enumerate(mails[arm][start : start + chunk]):
                source = ingest.Source("support", 1, start + offset + 1)
                kind = ingest.process(dbs[arm], desk, source, raw).kind
                outcomes[arm][kind] = outcomes[arm].get(kind, 0) + 1
            spent[arm] += time.perf_counter() - began
    for db in (empty, full):
        db.dispose()
    desk.close()
    return {
        "seeded_tickets": seeded,
        "seed_seconds": round(seed_seconds, 1),
        "messages": count,
        "empty_ms": round(spent["empty"] / count * 1000, 2),
        "seeded_ms": round(spent["seeded"] / count * 1000, 2),
        "ratio": round(spent["seeded"] / spent["empty"], 3),
        "outcomes": outcomes,
    }


def fill_outbox(config_path: Path, count: int, domain: str) -> None:
    """``count`` due mails in the outbox, written by the mailer as the lifecycle rules do."""
    settings = config_module.load(config_path)
    db = Database(settings.database_url)
    desk = desk_for(settings)
    now = datetime.now(UTC)
    for start in range(0, count, 500):
        with db.transaction() as session:
            for i in range(start, min(start + 500, count)):
                desk.mailer.enqueue(
                    session,
                    Mail(
                        kind="alert",
                        template="admin_alert",
                        to=f"r{i}@{domain}",
                        context={"subject": f"Notice {i}", "text": "Something happened. " * 20},
                        to_agent=True,
                    ),
                    now,
                )
    db.dispose()
