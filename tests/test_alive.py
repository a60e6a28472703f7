"""Never alive and idle: a real ``maildesk run`` either works or exits for systemd to restart it.

A database that stops answering (SQLite locked by another process, PostgreSQL stopped) is an
outage like an IMAP server's: one log line when it starts and one when it ends, ``/healthz``
503 naming the database, one alert to the admin (sent straight over SMTP: the outbox is in the
database) and work resuming by itself within seconds of the database answering again. An error
that escapes any loop stops the daemon and everything it started, with exit status 70. Under
systemd's watchdog the daemon pings only while its loops make progress: a loop stuck on a
network that went black stops the pings.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.database import PROBE_WAIT
from maildesk.demo.world import free_port
from maildesk.models import Lease, Outbox, OutboxStatus
from maildesk.service.daemon import FATAL_GRACE
from maildesk.service.faults import Faults, Loop
from maildesk.service.metrics import stamp
from maildesk.service.runtime import EX_SOFTWARE
from maildesk.service.timings import DATABASE_MAX_BACKOFF, STALLED_AFTER
from tests.desk import DeskWorld, LogReader, customer_mail, wait_until
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount, PostgresServer, Relay

ADMIN = "admin@example.com"
LEASE_SECONDS = 6  # the daemons' lease TTL here (30 s by default): outages outlast it
SQLITE_BUSY_SECONDS = 10  # models' busy_timeout: a statement waits this long for a lock


def world_on(
    account: ImapAccount, smtp: ScriptedSmtp, root: Path, database_url: str | None = None
) -> DeskWorld:
    """A desk serving ``/healthz`` (its port as ``world.metrics_port``)."""
    port = free_port()
    world = DeskWorld(
        account,
        smtp,
        root,
        database_url=database_url,
        tables={"metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    world.metrics_port = port  # type: ignore[attr-defined]
    return world


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = world_on(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def healthz(world: DeskWorld) -> tuple[int, str]:
    url = f"http://127.0.0.1:{world.metrics_port}/healthz"  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def alerts(world: DeskWorld, subject: str) -> list[Any]:
    return [m for m in world.mails_to(ADMIN) if subject in str(m.message["Subject"])]


def said(logs: LogReader, text: str) -> list[dict[str, Any]]:
    return [x for x in logs.lines if text in x["message"]]


def stop(process: Any, logs: LogReader) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    code: int = process.wait(40)
    logs.finish()
    return code


# --------------------------------------------------------------------------- database outages


def outage_then_recovery(
    world: DeskWorld, down: Any, up: Any, *, outage_begins_within: float
) -> dict[str, float]:
    """The daemon runs and acknowledges mail; ``down()`` takes the database away; mail
    arrives; the outage is logged, /healthz names it, the admin is alerted (five failures);
    ``up()`` brings the database back, and that mail and new mail are acknowledged without
    a restart. Returns the measured times."""
    process = world.spawn("run", MAILDESK_LEASE_SECONDS=str(LEASE_SECONDS))
    assert process.stderr is not None
    logs = LogReader(process.stderr)
    times: dict[str, float] = {}
    try:
        logs.wait_for("connected")
        world.deliver(customer_mail("Before", "One.", sender="before@x.test"))
        world.wait_mails_to("before@x.test", 1, timeout=20)

        began = time.monotonic()
        down()
        try:
            world.deliver(customer_mail("During", "Two.", sender="during@x.test"))
            logs.wait_for("database unavailable", timeout=outage_begins_within)
            times["noticed"] = time.monotonic() - began
            status, body = wait_until(
                lambda: (
                    (got := healthz(world))[0] == 503 and "database: down since" in got[1] and got
                ),
                20,
                "/healthz naming the database",
            )
            wait_until(lambda: alerts(world, "database is failing"), 60, "the admin alerted")
            times["held"] = time.monotonic() - began
            assert world.mails_to("during@x.test") == []  # nothing pretends to work
            assert process.poll() is None
        finally:
            up()
        back = time.monotonic()
        world.wait_mails_to("during@x.test", 1, timeout=20)
        times["resumed"] = time.monotonic() - back
        logs.wait_for("database is back")
        wait_until(lambda: healthz(world) == (200, "ok\n"), 20, "/healthz green again")
        wait_until(lambda: alerts(world, "database recovered"), 20, "the recovery told")
        world.deliver(customer_mail("After", "Three.", sender="after@x.test"))
        world.wait_mails_to("after@x.test", 1, timeout=20)
        assert process.poll() is None  # never restarted: the same process all along
    finally:
        code = stop(process, logs)
    assert code == 0

    line = next(x for x in logs.lines if "database unavailable" in x["message"])
    assert body.splitlines()[-1].startswith("database: down since ")
    assert line["message"].split(": ", 1)[1].split(" (")[0] not in body  # the error: log only
    assert len(said(logs, "database unavailable")) == 1
    assert len(said(logs, "database is back")) == 1
    assert not [x for x in logs.lines if "exception" in x], "no traceback for an outage"
    assert len(alerts(world, "database is failing")) == 1
    assert len(alerts(world, "database recovered")) == 1
    [alert] = alerts(world, "database is failing")
    assert "5 times in a row" in alert.message.get_body().get_content()
    requesters = sorted(t["requester"] for t in world.tickets())
    assert requesters == ["after@x.test", "before@x.test", "during@x.test"]
    assert world.account.uids("INBOX") == []
    return times


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
def test_sqlite_locked_longer_than_every_timeout_is_an_outage_that_ends_by_itself(
    world: DeskWorld,
) -> None:
    """Another process holds SQLite's write lock (``BEGIN EXCLUSIVE``) while mail arrives.

    The lock is held until the admin has been alerted, which is 60 s or less: that takes five
    failures, the first of which comes only after a statement waited out SQLite's busy
    timeout (10 s), so the lock outlasts the busy timeout, the daemon's lease TTL (6 s here)
    and four probes of the database. Every timeout involved has run out at least once, which
    is what a 60 s lock shows; the test holds it no longer than that needs."""
    database = world.settings.database_url.split("///", 1)[1]
    holder = sqlite3.connect(database, timeout=1, isolation_level=None)

    def lock() -> None:
        holder.execute("BEGIN EXCLUSIVE")

    def unlock() -> None:
        holder.execute("ROLLBACK")
        holder.close()

    times = outage_then_recovery(world, lock, unlock, outage_begins_within=40)
    assert times["noticed"] >= SQLITE_BUSY_SECONDS
    assert times["held"] > SQLITE_BUSY_SECONDS + LEASE_SECONDS
    # the next probe finds the lock gone: at most the capped backoff plus one probe's wait
    assert times["resumed"] < DATABASE_MAX_BACKOFF + PROBE_WAIT + 5
    print(
        f"\nSQLite lock: noticed after {times['noticed']:.1f} s, held {times['held']:.1f} s, "
        f"waiting mail acknowledged {times['resumed']:.1f} s after the release"
    )


@pytest.mark.postgres
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_postgresql_stopped_and_started_mid_run_is_an_outage_that_ends_by_itself(
    imap_server: ImapAccount,
    smtp_server: ScriptedSmtp,
    tmp_path: Path,
    private_postgres: PostgresServer,
) -> None:
    """A fast shutdown of the server ends every session, as ``systemctl stop postgresql``
    does; it comes back on the same port later (a PostgreSQL cluster of the test's own)."""
    world = world_on(imap_server, smtp_server, tmp_path, database_url=private_postgres.url)
    try:
        times = outage_then_recovery(
            world, private_postgres.stop, private_postgres.start, outage_begins_within=20
        )
    finally:
        world.close()
    assert times["resumed"] < DATABASE_MAX_BACKOFF + 5
    print(
        f"\nPostgreSQL stop: noticed after {times['noticed']:.1f} s, down {times['held']:.1f} s, "
        f"waiting mail acknowledged {times['resumed']:.1f} s after the start"
    )


# --------------------------------------------------------------------------- a loop that fails


def processes_of(world: DeskWorld) -> list[int]:
    """Live processes started for this world's config: the daemon, its delivery process, its
    parse zygote and workers (all inherit its ``MAILDESK_CONFIG``)."""
    marker = f"MAILDESK_CONFIG={world.config_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize("loop", list(Loop), ids=str)
def test_an_error_escaping_any_loop_stops_the_daemon_and_all_it_started(
    world: DeskWorld, loop: Loop
) -> None:
    """``MAILDESK_TEST_FAULTS`` makes one loop raise once it runs, as a bug would: the error is
    logged once with its traceback, the daemon exits 70 within seconds, and no process it
    started (delivery process, parse zygote and workers) is left; its leases are given up."""
    process = world.spawn("run", MAILDESK_TEST_FAULTS=str(loop))
    assert process.stderr is not None
    logs = LogReader(process.stderr)
    try:
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    exited = datetime.now(UTC)
    logs.finish()
    assert code == EX_SOFTWARE, [x["message"] for x in logs.lines]
    traced = [x for x in logs.lines if "exception" in x]
    assert len(traced) == 1, traced
    assert f"fault injected into the {loop} loop" in traced[0]["message"]
    assert "InjectedFault" in traced[0]["exception"]
    last = [x for x in logs.lines if x["level"] == "critical"][-1]
    assert last["message"].endswith("stopping the daemon")
    stopping = datetime.fromisoformat(last["time"])
    assert (exited - stopping).total_seconds() < 5
    wait_until(lambda: not processes_of(world), 5, "every process of the daemon gone")
    with world.db.transaction() as session:
        held = [x.name for x in session.scalars(select(Lease)) if x.expires_at > exited]
    assert held == []


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_loop_stuck_in_a_read_does_not_keep_a_failed_daemon_alive(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """The timers fail while the mailbox loop waits for a server that never greets (a network
    that went black: the read gives up only after 30 s). The daemon gives the loops
    ``FATAL_GRACE`` to finish, then exits 70 without waiting for the blocked thread."""
    relay = Relay(imap_server.port)
    relay.freeze()
    world = DeskWorld(imap_server, smtp_server, tmp_path)
    world.rewrite_config(mailbox={"port": relay.port})
    began = time.monotonic()
    process = world.spawn("run", MAILDESK_TEST_FAULTS=str(Loop.TIMERS))
    assert process.stderr is not None
    logs = LogReader(process.stderr)
    try:
        code = process.wait(FATAL_GRACE + 15)
        took = time.monotonic() - began
        logs.finish()
        assert code == EX_SOFTWARE
        assert took < 25  # the read's own timeout (30 s) was not waited for
        [left] = said(logs, "still busy")
        assert left["message"].startswith("mailbox support still busy")
        wait_until(lambda: not processes_of(world), 5, "every process of the daemon gone")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        relay.close()
        world.close()
    print(f"\na failed daemon with a stuck read exited after {took:.1f} s")


def parse_zygote(pid: int) -> bool:
    try:
        return b"maildesk.mail.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize(
    ("loop", "name"),
    [(Loop.MAILBOX, "mailbox support"), (Loop.OUTBOX, "delivery"), (Loop.TIMERS, "timers")],
    ids=str,
)
def test_healthz_names_a_loop_that_makes_no_progress(
    world: DeskWorld, loop: Loop, name: str
) -> None:
    """One loop of the daemon stops making progress (stuck, as in a read that never returns:
    the test hook holds it at its fault point), on a clock the test moves by hand. Once it
    went ``STALLED_AFTER`` without progress (no systemd watchdog here), ``/healthz`` answers
    503 naming that loop and when it last got anywhere, and nothing else is named: the other
    loops go on. Names only: no host, port or error text."""
    daemon = world.start(
        faults=Faults(stalls=frozenset({loop})), monotonic=lambda: world.clock.now.timestamp()
    )
    try:
        wait_until(lambda: loop in daemon.stuck, 20, f"the {loop} loop stuck")
        assert healthz(world) == (200, "ok\n")  # not for long enough yet
        last = world.clock.now  # the injected clock stands still: the stuck loop's last progress
        world.clock.advance(seconds=STALLED_AFTER + 1)
        # a stuck mailbox loop checks its mailbox no more either
        mailbox = f"not checked since {stamp(last)}" if loop is Loop.MAILBOX else "ok"

        def named() -> tuple[int, str] | None:
            got = healthz(world)
            stuck = [line for line in got[1].splitlines() if line.startswith("loop ")]
            healthy = f"mailbox support: {mailbox}" in got[1] and "database: ok" in got[1]
            return got if got[0] == 503 and healthy and len(stuck) == 1 else None

        status, body = wait_until(named, 20, f"/healthz naming {name} alone")
        assert body == (
            f"mailbox support: {mailbox}\nloop {name}: no progress since {stamp(last)}\n"
            "database: ok\n"
        )
        assert str(world.account.port) not in body and "127.0.0.1" not in body
    finally:
        world.stop()


# --------------------------------------------------------------------------- systemd's watchdog


class NotifySocket:
    """What systemd listens on for ``Type=notify`` units: datagrams of ``KEY=value`` lines,
    here on an abstract unix socket (``@name``), kept with the time each came."""

    def __init__(self) -> None:
        self.address = f"@maildesk-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.received: list[tuple[float, list[str]]] = []

    def next(self, timeout: float) -> list[str] | None:
        """The next datagram's lines, or None when none came within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = data.decode().split("\n")
        self.received.append((time.monotonic(), fields))
        return fields

    def drain(self) -> None:
        """Read what came already, so that the next datagram's time is when it came."""
        while self.next(0.001) is not None:
            pass

    def wait_for(self, field: str, timeout: float) -> float:
        """When a datagram with ``field`` came (failing after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.next(left)
            if fields is not None and field in fields:
                return self.received[-1][0]
        raise AssertionError(f"no {field} within {timeout} s: {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_the_watchdog_is_fed_while_every_loop_makes_progress_and_not_while_one_is_stuck(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """The daemon reaches the IMAP server through a relay that can stall: connections stay
    open and nothing passes, as when a network path goes black. Its IMAP reads then wait (up
    to their 30 s timeout, longer than the watchdog interval): the mailbox loop makes no
    progress and the pings stop until traffic flows again."""
    interval = 2.0
    relay = Relay(imap_server.port)
    notify = NotifySocket()
    world = DeskWorld(imap_server, smtp_server, tmp_path)
    world.rewrite_config(mailbox={"port": relay.port})
    process = world.spawn(
        "run", NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(int(interval * 1e6))
    )
    assert process.stderr is not None
    logs = LogReader(process.stderr)
    try:
        ready = notify.wait_for("READY=1", 20)
        ready_fields = notify.received[-1][1]
        # systemd's variables are the daemon's alone: the parse zygote (a new program) was not
        # given them, nor were the delivery process's later children
        zygotes = wait_until(
            lambda: [p for p in processes_of(world) if parse_zygote(p)], 10, "the parse zygote"
        )
        assert all(
            b"NOTIFY_SOCKET=" not in Path(f"/proc/{p}/environ").read_bytes() for p in zygotes
        )
        world.deliver(customer_mail("Through the relay", "Hello.", sender="c@x.test"))
        world.wait_mails_to("c@x.test", 1, timeout=20)
        notify.drain()
        pings = [notify.wait_for("WATCHDOG=1", 10) for _ in range(4)]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(0.3 * interval < gap < interval for gap in gaps), gaps  # every interval / 2

        relay.freeze()
        frozen = time.monotonic()
        # the IDLE in hand ends within poll_seconds (2 s), then its DONE gets no answer:
        # within the watchdog interval after that, the pings stop
        while notify.next(3 * interval) is not None:
            assert time.monotonic() - frozen < 20, "the pings went on while the loop was stuck"
        silent_from = notify.received[-1][0] if notify.received else ready
        stalled = logs.wait_for("no sign of life to systemd")
        assert "mailbox support made no progress" in stalled["message"]
        assert stalled["level"] == "error"

        relay.thaw()
        resumed = notify.wait_for("WATCHDOG=1", 10)
        assert process.poll() is None
    finally:
        relay.thaw()
        code = stop(process, logs)
        notify.drain()
        stopping = [fields for _, fields in notify.received if "STOPPING=1" in fields]
        notify.close()
        relay.close()
        world.close()
    assert code == 0
    assert any(f.startswith("STATUS=watching 1 mailbox") for f in ready_fields), ready_fields
    assert stopping, notify.received
    print(
        f"\nwatchdog: pings every {sum(gaps) / len(gaps):.2f} s; none from "
        f"{silent_from - frozen:.1f} s after the network stalled until it flowed again "
        f"({resumed - frozen:.1f} s)"
    )


# --------------------------------------------------------------------------- one stop


def sent_once_or_pending(world: DeskWorld) -> dict[str, int]:
    """Every outbox row was sent exactly once and is marked sent, or was not sent at all and
    waits (pending, or held back on purpose); how many rows are in each status."""
    captured = Counter(str(m.message["Message-ID"]).strip("<>") for m in world.smtp.messages)
    with world.db.transaction() as session:
        rows = [(r.message_id, r.status) for r in session.scalars(select(Outbox))]
    wrong = [
        (mid, status, captured[mid])
        for mid, status in rows
        if captured[mid] != (1 if status == OutboxStatus.SENT else 0)
        or status == OutboxStatus.FAILED
    ]
    assert wrong == [], "sent but not marked, marked but not sent, or sent twice"
    return Counter(status for _, status in rows)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_sigterm_to_every_process_of_the_daemon_is_one_orderly_stop(world: DeskWorld) -> None:
    """systemd's default ``KillMode=control-group`` sends SIGTERM to every process of the
    service at once: the daemon, its delivery process, the parse zygote and its workers. While
    mail flows, that is the daemon's own orderly stop and nothing else: no process of it
    reported as crashed or started again, no error logged, exit 0, and each mail claimed for
    sending either sent once and marked sent, or left pending for the next start, which sends
    it once. A second SIGTERM to the daemon changes nothing."""
    senders = [f"flow{i}@x.test" for i in range(40)]
    process = world.spawn("run", group=True)
    assert process.stderr is not None
    logs = LogReader(process.stderr)
    try:
        logs.wait_for("connected")
        wait_until(
            lambda: [p for p in processes_of(world) if parse_zygote(p)], 10, "the parse zygote"
        )
        for sender in senders:
            world.deliver(customer_mail("Flowing", "Hello.", sender=sender))
        wait_until(lambda: len(world.smtp.messages) >= 10, 30, "mail flowing")
        os.killpg(process.pid, signal.SIGTERM)  # what systemctl stop does to the unit's group
        logs.wait_for("SIGTERM received")
        process.send_signal(signal.SIGTERM)  # and an impatient admin, to the daemon again
        code = process.wait(40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    logs.finish()
    complaints = [x["message"] for x in logs.lines if x["level"] not in ("debug", "info")]
    assert complaints == []
    assert code == 0
    assert len(said(logs, "SIGTERM received:")) == 1  # the daemon's, and no other process's
    wait_until(lambda: not processes_of(world), 5, "every process of the daemon gone")
    sent_once_or_pending(world)

    again = world.cli("run", "--once")
    assert again.returncode == 0, again.stderr.decode()
    statuses = sent_once_or_pending(world)
    assert set(statuses) <= {OutboxStatus.SENT, OutboxStatus.SUPPRESSED}
    assert sorted(t["requester"] for t in world.tickets()) == sorted(senders)
    for sender in senders:  # each acknowledged once, whichever start sent it
        assert len(world.mails_to(sender)) == 1, sender
