"""(j) ``#search`` by mail with 1,000,000 messages: arrival to answer, against the IDLE floor.

``maildesk run`` (a subprocess, idling on Dovecot) works on a copy of part h's big database
(SQLite: the kept file copied; PostgreSQL: a database made from the kept one as its template),
so what the run writes (its ledger rows, the answers in the outbox) never reaches the kept one.
The agent's mail goes to their personal desk address (``maildesk agents address``), which proves
it. The daemon's start (the schema check, the timers' first pass over every open ticket) and a
first query it answers are outside the timed window, which opens once the daemon has gone idle
(under 5 % of a core for a second). Then each ``#search`` mail (part h's words: a common word, a
rare one, two common words) is appended alone, after a pause that lets the daemon idle again,
and timed from the APPEND to the answer's arrival at the SMTP capture. Dovecot's IDLE floor
(APPEND on one connection to the EXISTS seen on another, part b) is measured in the same run
and reported beside it.
"""

from __future__ import annotations

import email.policy
import os
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import search as big
from benchmarks.parts import idle_floor
from benchmarks.world import (
    AGENT,
    POSTGRES_ADMIN,
    ROOT,
    Account,
    World,
    drop_postgres_database,
    maildesk,
    write_config,
)
from maildesk.demo.world import Captured

KINDS = ("common word", "rare word", "two common words")  # part h's words, by kind
START_SECONDS = 600  # the daemon's start on the big database, and its first answer
ANSWER_SECONDS = 60
PAUSE = 0.7  # between a query's answer and the next query, so each lands on an idling daemon


def query_mail(index: int, to: str, words: str) -> bytes:
    """The agent's mail to their personal address, ``#search <words>`` its first line."""
    msg = EmailMessage()
    msg["From"] = f"Agent <{AGENT}>"
    msg["To"] = to
    msg["Subject"] = "search"
    msg["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<q{index}.{secrets.token_hex(6)}@example.com>"
    msg.set_content(f"#search {words}\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def asked_words(count: int, per_kind: int) -> list[str]:
    """``per_kind`` searches of each of ``KINDS``, taken in turn."""
    asked = big.searches(count, per_kind)
    return [asked[kind][i] for i in range(per_kind) for kind in KINDS]


Answered = Callable[[list[Captured]], bool]


def answered(before: int, words: str) -> Answered:
    """The agent's answer to ``#search <words>`` among the mails after the first ``before``."""
    line = f"#search {words}"

    def seen(mails: list[Captured]) -> bool:
        return any(AGENT in m.rcpt_tos and line in _text(m) for m in mails[before:])

    return seen


def matches(world: World, before: int, words: str) -> int:
    """How many tickets the answer to ``#search <words>`` lists."""
    line = f"#search {words}"
    texts = [_text(m) for m in world.smtp.messages[before:] if AGENT in m.rcpt_tos]
    found = re.search(r"^(\d+) best match", next(t for t in texts if line in t), re.MULTILINE)
    return int(found.group(1)) if found else 0


def _text(mail: Captured) -> str:
    body = mail.message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled(pid: int, deadline: float) -> float:
    """Wait until the daemon is idle (under 5 % of a core for a second: its start's timer pass,
    which reads every open ticket, runs beside the mailbox); the time then."""
    used = _cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _cpu_seconds(pid)
        if now - used < 0.05:
            return time.monotonic()
        used = now
    raise TimeoutError("maildesk run was still busy 10 minutes after its start")


def _wait(world: World, daemon: subprocess.Popen[bytes], seen: Answered, timeout: float) -> float:
    """The time the answer came, or an error as soon as the daemon has stopped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return world.wait_smtp(seen, min(5.0, max(deadline - time.monotonic(), 0.01)))
        except TimeoutError:
            if daemon.poll() is not None:
                raise RuntimeError(f"maildesk run stopped ({daemon.returncode})") from None
            if time.monotonic() >= deadline:
                raise


def timed_answers(world: World, config: Path, account: Account, words: list[str]) -> dict[str, Any]:
    """``maildesk run`` on ``config``: each ``#search`` appended alone, timed to its answer;
    the times, how many tickets each answer lists, and the seconds from the daemon's launch until
    it has answered a first query and gone idle (untimed)."""
    said = maildesk(config, "agents", "address", AGENT)
    if said.returncode != 0:
        raise RuntimeError(f"maildesk agents address failed:\n{said.output}")
    address = said.output.strip().splitlines()[-1]
    log = (config.parent / "daemon.log").open("wb")
    launched = time.monotonic()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(config), "run"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    writer = account.client()
    times, found = [], []
    try:
        # the start, outside the window: the daemon is idling once its first answer came
        first = words[0]
        before = len(world.smtp.messages)
        writer.append("INBOX", query_mail(0, address, first))
        _wait(world, daemon, answered(before, first), START_SECONDS)
        start = _settled(daemon.pid, launched + START_SECONDS) - launched
        for index, asked in enumerate(words, start=1):
            time.sleep(PAUSE)
            before = len(world.smtp.messages)
            started = time.monotonic()
            writer.append("INBOX", query_mail(index, address, asked))
            times.append(_wait(world, daemon, answered(before, asked), ANSWER_SECONDS) - started)
            found.append(matches(world, before, asked))
    except (RuntimeError, TimeoutError) as exc:
        said_then = (config.parent / "daemon.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}; maildesk run said:\n{said_then}") from exc
    finally:
        writer.logout()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    return {"times": times, "matches": found, "start_seconds": round(start, 1)}


def _figures(times: list[float], found: list[int], floor_ms: float) -> dict[str, Any]:
    return {
        "queries": len(times),
        "matches_min": min(found),
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "p50_over_floor_ms": round(statistics.median(times) * 1000 - floor_ms, 1),
        "max_over_floor_ms": round(max(times) * 1000 - floor_ms, 1),
    }


def _sqlite(world: World, count: int, words: list[str]) -> dict[str, Any]:
    url, _ = big.sqlite_database(count)
    kept = Path(url.removeprefix("sqlite:///"))
    with sqlite3.connect(kept) as db:  # the whole database in its main file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    account = world.account("asking")
    work = world.workdir("asking-sqlite")
    (work / "data").mkdir(exist_ok=True)
    began = time.monotonic()
    shutil.copyfile(kept, work / "data" / "maildesk.db")
    copied = time.monotonic() - began
    config = write_config(work, account, world.smtp.port)
    return {"copy_seconds": round(copied, 1), **timed_answers(world, config, account, words)}


def _postgres(world: World, count: int, words: list[str]) -> dict[str, Any]:
    kept = big.postgres_big_database(count)
    if kept is None:
        return {"skipped": "PostgreSQL at 127.0.0.1:5432 is not reachable"}
    template = kept[0].rsplit("/", 1)[1]
    name = f"maildesk_asking_{secrets.token_hex(5)}"
    began = time.monotonic()
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    copied = time.monotonic() - began
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        account = world.account("asking")
        work = world.workdir("asking-postgres")
        config = write_config(work, account, world.smtp.port, database_url=url)
        answers = timed_answers(world, config, account, words)
    finally:
        drop_postgres_database(url)
    return {"copy_seconds": round(copied, 1), **answers}


def search_by_mail(world: World, count: int, per_kind: int, arrivals: int) -> dict[str, Any]:
    """(j): SQLite and PostgreSQL, each against the IDLE floor measured here."""
    words = asked_words(count, per_kind)
    arms = {"sqlite": _sqlite(world, count, words), "postgres": _postgres(world, count, words)}
    floor = idle_floor(world, arrivals)
    floor_ms = statistics.median(floor) * 1000
    figures: dict[str, Any] = {
        "messages": count,
        "floor_p50_ms": round(floor_ms, 1),
        "floor_max_ms": round(max(floor) * 1000, 1),
        "kinds": list(KINDS),
    }
    for engine, arm in arms.items():
        if "skipped" in arm:
            figures[engine] = arm
            continue
        figures[engine] = {
            "copy_seconds": arm["copy_seconds"],
            "start_seconds": arm["start_seconds"],
            **_figures(arm["times"], arm["matches"], floor_ms),
        }
    return figures
