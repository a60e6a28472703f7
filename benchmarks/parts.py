"""The measurements, one function per part of the suite; each returns a dict of figures.

(a) backlog drain against the bare-minimum pipeline, (b) arrival to acknowledgment against
Dovecot's IDLE floor, (c) per-message cost on an empty vs a seeded database, (d) peak RSS with
25 MB attachments, (e) outbound mails per second, (f) the drain on PostgreSQL, (g) Roundup.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import scale as scale_module
from benchmarks.world import (
    AGENT,
    ROOT,
    World,
    corpus,
    customer_mail,
    drop_postgres_database,
    maildesk,
    postgres_database,
    run,
    upgrade,
    write_config,
)

Figures = dict[str, Any]


def _sqlite_tickets(path: str, table: str = "tickets") -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def drain_maildesk(
    world: World, messages: list[bytes], domain: str, database_url: str | None
) -> Figures:
    """``maildesk run --once`` (a subprocess) on a backlog; every ticket, ack and notice checked.
    On PostgreSQL the files are kept in the database (``[store] backend = "database"``)."""
    account = world.account("drain")
    account.load(messages)
    work = world.workdir(f"maildesk-{domain}")
    store = "database" if database_url else None
    config = write_config(work, account, world.smtp.port, database_url=database_url, store=store)
    upgrade(config)
    before = len(world.smtp.messages)
    done = maildesk(config, "run", "--once")
    if done.returncode != 0:
        raise RuntimeError(f"maildesk run --once failed:\n{done.output[-3000:]}")
    if database_url is None:
        tickets = _sqlite_tickets(str(work / "data" / "maildesk.db"))
    else:
        import psycopg

        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as pg:
            row = pg.execute("SELECT count(*) FROM tickets").fetchone()
            tickets = int(row[0]) if row else 0
    figures = _drained(world, before, domain, len(messages), done.seconds, tickets)
    figures["moved"] = account.count("Processed")
    figures["complete"] = figures["complete"] and figures["moved"] == len(messages)
    figures["peak_rss_mb"] = round(done.peak_rss_mb, 1)
    figures["peak_total_mb"] = round(max(done.peak_tree_mb, done.peak_rss_mb), 1)
    if store:
        figures["store"] = store
    return figures


def _drained(
    world: World, before: int, domain: str, messages: int, seconds: float, tickets: int
) -> Figures:
    """A drain's rate, and whether every message made a ticket, an ack and an agent notice."""
    new = world.smtp.messages[before:]
    acks = sum(any(r.endswith("@" + domain) for r in m.rcpt_tos) for m in new)
    notices = sum(AGENT in m.rcpt_tos for m in new)
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "rate": round(messages / seconds, 1),
        "tickets": tickets,
        "acks": acks,
        "notices": notices,
        "complete": tickets == acks == notices == messages,
    }


def drain_bare(world: World, messages: list[bytes], domain: str) -> Figures:
    """The bare-minimum pipeline of ``benchmarks.bare`` (a subprocess) on the same backlog."""
    account = world.account("bare")
    account.load(messages)
    work = world.workdir(f"bare-{domain}")
    spec = {
        "dir": str(work),
        "host": account.host,
        "port": account.port,
        "username": account.username,
        "password": account.password,
        "smtp_port": world.smtp.port,
        "address": account.username,
        "agent": AGENT,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    before = len(world.smtp.messages)
    done = run([sys.executable, "-m", "benchmarks.bare", str(work / "spec.json")])
    if done.returncode != 0:
        raise RuntimeError(f"bare pipeline failed:\n{done.output[-3000:]}")
    tickets = _sqlite_tickets(str(work / "bare.db"))
    return _drained(world, before, domain, len(messages), done.seconds, tickets)


# --------------------------------------------------------------------------- (b) latency


def idle_floor(world: World, arrivals: int) -> list[float]:
    """APPEND on one connection to the EXISTS seen by IDLE on another: the server's own floor."""
    account = world.account("floor")
    watcher = account.client()
    writer = account.client()
    watcher.select_folder("INBOX")
    times = []
    try:
        for i in range(arrivals):
            watcher.idle()
            started = time.monotonic()
            writer.append("INBOX", customer_mail(i, "floor.example"))
            while True:
                responses = watcher.idle_check(timeout=5)
                if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                    break
                if time.monotonic() - started > 10:
                    raise TimeoutError("no IDLE notification within 10 s")
            times.append(time.monotonic() - started)
            watcher.idle_done()
    finally:
        writer.logout()
        watcher.logout()
    return times


def arrival_to_ack(world: World, arrivals: int) -> list[float]:
    """``maildesk run`` idling: APPEND a customer's mail, time until its acknowledgment is accepted."""
    account = world.account("latency")
    domain = "latency.example"
    work = world.workdir("latency")
    config = write_config(work, account, world.smtp.port)
    upgrade(config)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(config), "run"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    writer = account.client()
    times = []

    def acked(index: int) -> Any:
        address = f"c{index}@{domain}"
        return lambda mails: any(address in m.rcpt_tos for m in mails)

    try:
        # a warm-up message: the daemon is connected and idling once it has been answered
        writer.append("INBOX", customer_mail(10_000, domain))
        world.wait_smtp(acked(10_000), 30)
        for i in range(arrivals):
            time.sleep(0.7)  # spacing between arrivals, so each lands on an idling daemon
            started = time.monotonic()
            writer.append("INBOX", customer_mail(i, domain))
            times.append(world.wait_smtp(acked(i), 30) - started)
    finally:
        writer.logout()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    return times


def latency(world: World, arrivals: int) -> Figures:
    floor = idle_floor(world, arrivals)
    desk = arrival_to_ack(world, arrivals)
    return {
        "arrivals": arrivals,
        "floor_p50_ms": round(statistics.median(floor) * 1000, 1),
        "floor_max_ms": round(max(floor) * 1000, 1),
        "p50_ms": round(statistics.median(desk) * 1000, 1),
        "max_ms": round(max(desk) * 1000, 1),
    }


# --------------------------------------------------------------------------- (d) memory


def memory(
    world: World, sizes: tuple[int, ...], attachment: int, database_url: str | None = None
) -> Figures:
    """Peak memory of ``maildesk run --once`` on backlogs of messages with ``attachment``-byte
    files: the largest resident size of its processes together, sampled, and of each alone.
    ``database_url``: on PostgreSQL, the files kept in the database (part f)."""
    figures: Figures = {"attachment_bytes": attachment}
    for count in sizes:
        domain = f"memory{count}.example"
        account = world.account("memory")
        account.load([customer_mail(i, domain, attachment=attachment) for i in range(count)])
        work = world.workdir(f"memory-{count}" + ("-pg" if database_url else ""))
        config = write_config(
            work,
            account,
            world.smtp.port,
            limits={"max_attachment_bytes": 30000000},
            database_url=database_url,
            store="database" if database_url else None,
        )
        upgrade(config)
        done = maildesk(config, "run", "--once", pss=True)
        if done.returncode != 0:
            raise RuntimeError(f"maildesk run --once failed:\n{done.output[-3000:]}")
        kept = _kept_attachments(work, database_url)
        figures[f"peak_rss_mb_{count}"] = round(done.peak_rss_mb, 1)
        # all its processes together: daemon, delivery, parse zygote and workers (never less
        # than the largest alone)
        figures[f"peak_total_mb_{count}"] = round(max(done.peak_tree_mb, done.peak_rss_mb), 1)
        # the same, each page counted once: a forked process shares its parent's pages (the
        # interpreter and libraries of the daemon, its delivery process, zygote and workers)
        figures[f"peak_pss_mb_{count}"] = round(done.peak_pss_mb, 1)
        figures[f"attachments_kept_{count}"] = kept
        figures[f"seconds_{count}"] = round(done.seconds, 2)
    return figures


# --------------------------------------------------------------------------- (e) outbound


def outbound(world: World, count: int) -> Figures:
    """Rows waiting in the outbox, delivered by ``maildesk run --once`` (startup subtracted)."""
    account = world.account("outbound")
    work = world.workdir("outbound")
    config = write_config(work, account, world.smtp.port)
    upgrade(config)
    empty = maildesk(config, "run", "--once")  # the same run with nothing to send
    scale_module.fill_outbox(config, count, "outbound.example")
    before = len(world.smtp.messages)
    done = maildesk(config, "run", "--once")
    if done.returncode != 0:
        raise RuntimeError(f"maildesk run --once failed:\n{done.output[-3000:]}")
    sent = len(world.smtp.messages) - before
    sending = max(done.seconds - empty.seconds, 1e-3)
    return {
        "mails": count,
        "accepted": sent,
        "seconds": round(done.seconds, 3),
        "startup_seconds": round(empty.seconds, 3),
        "rate": round(sent / sending, 1),
    }


# --------------------------------------------------------------------------- (g) Roundup


def roundup(world: World, messages: list[bytes]) -> Figures:
    """The same mail through ``roundup-mailgw`` (mbox, 1000 PBKDF2 rounds, anonymous e-mail)."""
    venv = ROOT / "benchmarks" / "results" / "roundup-venv"
    bin_dir = venv / "bin"
    if not (bin_dir / "roundup-mailgw").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
        installed = made.returncode == 0 and (
            subprocess.run(
                [str(bin_dir / "pip"), "install", "-q", "roundup"], capture_output=True, timeout=600
            ).returncode
            == 0
        )
        if not installed:
            return {"skipped": "roundup could not be installed into a venv (pip install roundup)"}
    work = world.workdir("roundup")
    tracker = work / "tracker"
    subprocess.run(
        [
            str(bin_dir / "roundup-admin"),
            "-i",
            str(tracker),
            "install",
            "classic",
            "sqlite",
            f"tracker_web=http://127.0.0.1/,mail_domain=example.test,mail_host=127.0.0.1,"
            f"mail_debug={work / 'sent.log'}",
        ],
        check=True,
        capture_output=True,
    )
    ini = tracker / "config.ini"
    ini.write_text(
        ini.read_text().replace(
            "password_pbkdf2_default_rounds = 250000", "password_pbkdf2_default_rounds = 1000"
        )
    )
    schema = tracker / "schema.py"
    schema.write_text(
        schema.read_text().replace(
            "#db.security.addPermissionToRole('Anonymous', 'Email Access')",
            "db.security.addPermissionToRole('Anonymous', 'Email Access')",
        )
    )
    subprocess.run(
        [str(bin_dir / "roundup-admin"), "-i", str(tracker), "initialise", "admin-secret"],
        check=True,
        capture_output=True,
    )
    mbox = work / "mail.mbox"
    with open(mbox, "wb") as out:
        for raw in messages:
            out.write(b"From customer@example.org Thu Nov 26 10:00:00 2026\n")
            body = raw.replace(b"\r\n", b"\n")
            body = b"\n".join(
                b">" + line if line.startswith(b"From ") else line for line in body.split(b"\n")
            )
            out.write(body.rstrip(b"\n") + b"\n\n")
    done = run([str(bin_dir / "roundup-mailgw"), str(tracker), "mailbox", str(mbox)])
    if done.returncode != 0:
        return {"skipped": f"roundup-mailgw failed: {done.output[-500:]}"}
    with sqlite3.connect(tracker / "db" / "db") as db:
        issues = int(db.execute("SELECT count(*) FROM _issue").fetchone()[0])
    return {
        "messages": len(messages),
        "issues": issues,
        "seconds": round(done.seconds, 3),
        "rate": round(len(messages) / done.seconds, 1),
        "version": subprocess.run(
            [str(bin_dir / "python"), "-c", "import roundup; print(roundup.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
    }


def drain(world: World, count: int, *, postgres: bool, rounds: int = 2) -> Figures:
    """(a) and (f): the same backlog through maildesk (SQLite; PostgreSQL with the files in the
    database) and the bare pipeline.

    Each arm runs ``rounds`` times, alternating, and each arm's faster run is kept (every run
    is listed): noise on a shared machine only ever slows a run down, and one slow run of
    either arm swung the ratio by a tenth."""
    figures: Figures = {}
    arms: dict[str, list[Figures]] = {"bare": [], "sqlite": [], "postgres": []}
    for round_ in range(rounds):
        domain = f"bare{round_}.example"
        arms["bare"].append(drain_bare(world, corpus(count, domain), domain))
        domain = f"sqlite{round_}.example"
        arms["sqlite"].append(drain_maildesk(world, corpus(count, domain), domain, None))
        if postgres:
            arms["postgres"].append(_drain_postgres(world, count, f"pg{round_}.example"))
    for name, runs in arms.items():
        if not runs:
            continue
        if any("skipped" in r for r in runs):
            figures[name] = runs[0]
            continue
        figures[name] = dict(max(runs, key=lambda r: float(r["rate"])))
        figures[name]["rates"] = [r["rate"] for r in runs]
        figures[name]["complete"] = all(r["complete"] for r in runs)
    return figures


def _drain_postgres(world: World, count: int, domain: str) -> Figures:
    url = postgres_database()
    if url is None:
        return {"skipped": "PostgreSQL at 127.0.0.1:5432 is not reachable"}
    try:
        return drain_maildesk(world, corpus(count, domain), domain, url)
    finally:
        drop_postgres_database(url)


def memory_postgres(world: World, count: int, attachment: int) -> Figures:
    """(f): part (d)'s larger backlog on PostgreSQL, the files kept in the database."""
    url = postgres_database()
    if url is None:
        return {"skipped": "PostgreSQL at 127.0.0.1:5432 is not reachable"}
    try:
        return memory(world, (count,), attachment, url)
    finally:
        drop_postgres_database(url)


def _kept_attachments(work: Path, database_url: str | None) -> int:
    query = "SELECT count(*) FROM attachments WHERE NOT dropped"
    if database_url is None:
        with sqlite3.connect(work / "data" / "maildesk.db") as db:
            return int(db.execute(query).fetchone()[0])
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as pg:
        row = pg.execute(query).fetchone()
        return int(row[0]) if row else 0


def environment() -> Figures:
    """The machine: cores, memory, Python, Dovecot."""
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    cpu = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(total_kb / 2**20, 1),
        "python": sys.version.split()[0],
    }
