"""(h) Search with 1,000,000 messages, and (i) what the index costs ingestion.

(h) A database of ``count`` messages (four to a ticket) is built with bulk inserts through the
index the migration made (SQLite: its triggers; PostgreSQL: its generated columns, the GIN
index made again after the load, as ``db upgrade`` makes it over a full table). The text is
drawn from a vocabulary of 20,000 words with Zipf frequencies, each ticket's first message
naming its order ref (``E-<n>``) and its customer's address. The database is built once and kept
under the temporary directory (PostgreSQL: a database of its own), keyed by the size and this
generator's version, and brought to the newest schema revision before each use (``db
upgrade``); the build time is reported as measured when it was built. Then ``act.search.find`` (what ``tickets search`` asks) is timed in-process for a
mix of searches: a ref, an address, a rare, a middling and the commonest word, two common
words, three words as typed, a word no message holds.

(i) The same mail (``scale.measured_mail``) ingested with ``ingest.process`` into two new
databases, one with the index and one whose index was dropped (SQLite: its triggers;
PostgreSQL: the ``tsvector`` columns), in alternating chunks so machine noise falls on both;
the ratio of the totals and the median of the chunks' ratios (a burst of other work on a
shared machine falls on one chunk of one arm) are reported.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert, text

from benchmarks.scale import measured_mail
from benchmarks.world import POSTGRES_ADMIN, drop_postgres_database, postgres_database
from maildesk import config as config_module
from maildesk.act import ingest, search
from maildesk.database import Database
from maildesk.models import Message, Ticket
from maildesk.service.wiring import desk_for

GENERATOR = 1  # the version of the text below: a new one builds the databases again
VOCABULARY = 20_000
PER_TICKET = 4
CHUNK = 20_000
ROUNDS = 15  # searches of each kind, each with other words
COMMON = (
    "the order has not arrived please invoice printer refund account password error login "
    "delivery payment label update problem support question thanks again broken screen "
    "shipping address change cancel subscription email phone number customer help"
).split()


def _words(seed: int) -> list[str]:
    """The vocabulary: common help desk words first, then made-up ones, most frequent first."""
    rng = random.Random(seed)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ei", "au")]
    made: dict[str, None] = dict.fromkeys(COMMON)
    while len(made) < VOCABULARY:
        made["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))] = None
    return list(made)


class Corpus:
    """The deterministic text of the big database."""

    def __init__(self) -> None:
        self.words = _words(7)
        self.weights = [1 / (rank + 1) for rank in range(len(self.words))]
        cumulative, total = [], 0.0
        for weight in self.weights:
            total += weight
            cumulative.append(total)
        self.cumulative = cumulative
        self.rng = random.Random(11)

    def text(self, length: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cumulative, k=length))


def _rows(corpus: Corpus, first: int, last: int) -> tuple[list[dict[str, Any]], ...]:
    base = datetime(2021, 1, 1, tzinfo=UTC)
    tickets, messages = [], []
    for n in range(first, last + 1):
        at = base + timedelta(minutes=10 * n)
        requester = f"c{n}@customer{n % 97}.example"
        subject = corpus.text(5).capitalize()
        tickets.append(
            {
                "id": n,
                "subject": subject,
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
        for k in range(PER_TICKET):
            body = corpus.text(corpus.rng.randint(15, 60))
            if k == 0:
                body = f"Order E-{n} for {requester}: {body}"
            messages.append(
                {
                    "id": (n - 1) * PER_TICKET + k + 1,
                    "ticket_id": n,
                    "sender": requester if k % 2 == 0 else "agent@example.test",
                    "internal": k == 3,
                    "unverified": False,
                    "subject": subject if k == 0 else f"Re: {subject}",
                    "text": body,
                    "defects": "",
                    "created_at": at + timedelta(minutes=k),
                }
            )
    return tickets, messages


def _load(db: Database, count: int) -> None:
    corpus = Corpus()
    tickets_total = count // PER_TICKET
    for first in range(1, tickets_total + 1, CHUNK // PER_TICKET):
        last = min(first + CHUNK // PER_TICKET - 1, tickets_total)
        tickets, messages = _rows(corpus, first, last)
        with db.transaction() as session:
            session.execute(insert(Ticket.__table__), tickets)
            session.execute(insert(Message.__table__), messages)


# ---------------------------------------------------------------------------- the databases


def _key(count: int) -> str:
    return f"{count}_{GENERATOR}"


def _cache() -> Path:
    folder = Path(tempfile.gettempdir()) / "maildesk-search-benchmark"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _upgraded(url: str) -> None:
    db = Database(url)
    db.upgrade()
    db.dispose()


def sqlite_database(count: int) -> tuple[str, dict[str, Any]]:
    """The big SQLite database (built if not kept) and how long its build took."""
    path = _cache() / f"search_{_key(count)}.db"
    marker = path.with_suffix(".json")
    if marker.exists() and path.exists():
        _upgraded(f"sqlite:///{path}")
        return f"sqlite:///{path}", {**json.loads(marker.read_text()), "cached": True}
    for stale in _cache().glob(f"{path.name}*"):
        stale.unlink()
    url = f"sqlite:///{path}"
    db = Database(url)
    began = time.monotonic()
    db.upgrade()
    _load(db, count)  # the index as a live desk's grows: merged as it goes, never optimized
    built = {"build_seconds": round(time.monotonic() - began, 1)}
    db.dispose()
    marker.write_text(json.dumps(built))
    return url, {**built, "cached": False}


def postgres_big_database(count: int) -> tuple[str, dict[str, Any]] | None:
    """The big PostgreSQL database (built if not kept), or None when PostgreSQL is down."""
    name = f"maildesk_search_{_key(count)}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    marker = _cache() / f"{name}.json"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists and marker.exists():
                _upgraded(url)
                return url, {**json.loads(marker.read_text()), "cached": True}
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    db = Database(url)
    began = time.monotonic()
    db.upgrade()
    with db.engine.begin() as conn:  # one index build after the load, not a million updates
        conn.execute(text("DROP INDEX ix_messages_search"))
    _load(db, count)
    with db.engine.begin() as conn:
        conn.execute(text("SET maintenance_work_mem = '512MB'"))
        conn.execute(text("CREATE INDEX ix_messages_search ON messages USING gin (search)"))
        conn.execute(text("ANALYZE"))
    built = {"build_seconds": round(time.monotonic() - began, 1)}
    db.dispose()
    marker.write_text(json.dumps(built))
    return url, {**built, "cached": False}


# ---------------------------------------------------------------------------- (h) searching


def searches(count: int, rounds: int = ROUNDS) -> dict[str, list[str]]:
    """The words searched for, by kind, ``rounds`` of each."""
    rng = random.Random(3)
    words = _words(7)
    tickets = count // PER_TICKET
    picked = lambda low, high: words[rng.randrange(low, high)]  # noqa: E731
    numbers = [rng.randint(1, tickets) for _ in range(rounds)]
    return {
        "ref": [f"E-{n}" for n in numbers],
        "address": [f"c{n}@customer{n % 97}.example" for n in numbers],
        "rare word": [picked(10_000, VOCABULARY) for _ in range(rounds)],
        "middling word": [picked(200, 1000) for _ in range(rounds)],
        "common word": [words[i % 5] for i in range(rounds)],
        "two common words": [f"{words[i % 10]} {words[10 + i % 10]}" for i in range(rounds)],
        "three words as typed": [
            f"{picked(0, 50)} {picked(0, 50)} {picked(0, 50)}" for _ in range(rounds)
        ],
        "no such word": [f"zzq{i}xv" for i in range(rounds)],
    }


def timed_searches(url: str, count: int) -> dict[str, Any]:
    db = Database(url)
    asked = searches(count)
    times: dict[str, list[float]] = {kind: [] for kind in asked}
    found: dict[str, int] = {kind: 0 for kind in asked}

    def one(words: str) -> tuple[float, int]:
        began = time.perf_counter()
        with db.transaction() as session:
            matches = search.find(session, words)
        return (time.perf_counter() - began) * 1000, len(matches)

    for all_words in asked.values():  # once through, to warm the caches
        for words in all_words[:2]:
            one(words)
    for i in range(ROUNDS):  # kinds taken in turn
        for kind, all_words in asked.items():
            spent, matches = one(all_words[i])
            times[kind].append(spent)
            found[kind] += matches
    db.dispose()
    every = [t for ts in times.values() for t in ts]
    return {
        "searches": len(every),
        "p50_ms": round(statistics.median(every), 1),
        "p90_ms": round(statistics.quantiles(every, n=10)[-1], 1),
        "max_ms": round(max(every), 1),
        "by_kind_p50_ms": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "by_kind_matches": {k: round(found[k] / ROUNDS, 1) for k in times},
    }


def search_speed(count: int, *, postgres: bool) -> dict[str, Any]:
    url, built = sqlite_database(count)
    figures: dict[str, Any] = {"messages": count, "sqlite": {**built, **timed_searches(url, count)}}
    if postgres:
        big = postgres_big_database(count)
        if big is None:
            figures["postgres"] = {"skipped": "PostgreSQL at 127.0.0.1:5432 is not reachable"}
        else:
            url, built = big
            figures["postgres"] = {**built, **timed_searches(url, count)}
    return figures


# ---------------------------------------------------------------------------- (i) ingesting


def _drop_index(db: Database) -> None:
    with db.engine.begin() as conn:
        if db.is_sqlite:
            names = conn.execute(
                text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%search%'"
                )
            )
            for name in names.scalars().all():
                conn.execute(text(f"DROP TRIGGER {name}"))
        else:
            conn.execute(text("ALTER TABLE messages DROP COLUMN search"))
            conn.execute(text("ALTER TABLE tickets DROP COLUMN search"))


def index_cost(config_path: Path, count: int, *, postgres: bool, chunk: int = 25) -> dict[str, Any]:
    """Ingest cost per message with the index and without, on SQLite (and PostgreSQL)."""
    settings = config_module.load(config_path)
    data = settings.desk.data_dir
    figures: dict[str, Any] = {
        "sqlite": _side_by_side(
            config_path,
            lambda arm: f"sqlite:///{data / f'index-{arm}.db'}",
            count,
            chunk,
        )
    }
    if postgres:
        urls: list[str] = []

        def made(arm: str) -> str:
            url = postgres_database()
            if url is None:
                raise LookupError("PostgreSQL at 127.0.0.1:5432 is not reachable")
            urls.append(url)
            return url

        try:
            figures["postgres"] = _side_by_side(config_path, made, count, chunk)
        except LookupError as exc:
            figures["postgres"] = {"skipped": str(exc)}
        finally:
            for url in urls:
                drop_postgres_database(url)
    return figures


def _side_by_side(
    config_path: Path, url_of: Callable[[str], str], count: int, chunk: int
) -> dict[str, Any]:
    settings = config_module.load(config_path)
    desk = desk_for(settings)
    dbs = {arm: Database(url_of(arm)) for arm in ("indexed", "unindexed")}
    for db in dbs.values():
        db.upgrade()
    _drop_index(dbs["unindexed"])
    mails = {arm: measured_mail(count, f"{arm}.example") for arm in dbs}
    spent = {arm: 0.0 for arm in dbs}
    ratios = []  # chunk by chunk: a burst of other work on the machine falls on one chunk
    for start in range(0, count, chunk):
        took = {}
        for arm, db in dbs.items():
            began = time.perf_counter()
            for offset, raw in enumerate(mails[arm][start : start + chunk]):
                ingest.process(db, desk, ingest.Source("support", 1, start + offset + 1), raw)
            took[arm] = time.perf_counter() - began
            spent[arm] += took[arm]
        ratios.append(took["indexed"] / took["unindexed"])
    for db in dbs.values():
        db.dispose()
    desk.close()
    return {
        "messages": count,
        "indexed_ms": round(spent["indexed"] / count * 1000, 2),
        "unindexed_ms": round(spent["unindexed"] / count * 1000, 2),
        "ratio": round(spent["indexed"] / spent["unindexed"], 3),
        "chunk_ratio_median": round(statistics.median(ratios), 3),
    }
