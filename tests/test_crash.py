"""Crash safety: a real ``maildesk run`` killed with SIGKILL loses no mail and doubles no ticket.

Each test runs the daemon as a subprocess (``python -m maildesk``, config from
``MAILDESK_CONFIG``) against a real IMAP server and the SMTP capture, kills it, restarts it, and
then looks at what a user would see: one ticket per customer mail, nothing left in INBOX, and at
the SMTP sink at most one extra copy of a mail per crash (one per SMTP connection in flight),
always with the same Message-ID.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from maildesk.act.outbox import IN_FLIGHT
from maildesk.demo.world import ImapServer, SmtpServer
from maildesk.models import Ledger
from maildesk.service.delivery import CLAIM_LEASE, OUTBOX_CONNECTIONS
from maildesk.service.leases import holder_alive
from tests.desk import ALICE, CAROL_AGENT, DeskWorld, customer_mail
from tests.servers import DovecotServer, ImapAccount, fresh_user

BACKLOG = 60
KILLS = 5
CRASH_POINTS = ("after_fetch", "after_commit", "after_move", "after_send")


@pytest.fixture
def pymap_world(
    pymap_server: ImapServer, smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[DeskWorld]:
    username, password = fresh_user()
    account = ImapAccount("pymap", pymap_server, username, password)
    w = DeskWorld(account, smtp_server, tmp_path)
    yield w
    w.close()


def env_for(world: DeskWorld, **extra: str) -> dict[str, str]:
    return {**os.environ, "MAILDESK_CONFIG": str(world.config_path), **extra}


def run_once(world: DeskWorld, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "run", "--once"],
        env=env_for(world, **extra),
        capture_output=True,
        timeout=60,
    )


def customers(n: int) -> list[str]:
    return [f"customer{i}@shop{i}.test" for i in range(n)]


def ledger_count(world: DeskWorld) -> int:
    with world.db.transaction() as session:
        return session.scalar(select(func.count(Ledger.id))) or 0


def wait_at_most(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` held within ``timeout``; the kill loop goes on either way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)  # polling a condition with a deadline, not a fixed wait
    return False


def assert_nothing_lost_or_doubled(world: DeskWorld, senders: list[str], crashes: int) -> int:
    """The user-visible invariants after crashes and a clean restart; returns the duplicates."""
    tickets = world.tickets()
    assert sorted(t["requester"] for t in tickets) == sorted(senders)  # one each, none twice
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Processed")) == len(senders)
    mails = world.smtp.messages
    by_id = Counter(m.message["Message-ID"] for m in mails)
    duplicates = sum(n - 1 for n in by_id.values())
    # a crash can only catch the mails in flight between the server's 250 and the row being
    # marked sent: IN_FLIGHT per SMTP connection, each resent once per crash, same Message-ID
    assert max(by_id.values()) <= 1 + crashes, by_id.most_common(3)
    assert duplicates <= crashes * OUTBOX_CONNECTIONS * IN_FLIGHT, by_id.most_common(3)
    # exactly one acknowledgment per customer (by Message-ID): a resend is a copy, not a new mail
    for sender in senders:
        acks = {m.message["Message-ID"] for m in world.mails_to(sender)}
        assert len(acks) == 1, (sender, acks)
    # and one notice per ticket to each agent of the team
    for agent in (ALICE, CAROL_AGENT):
        notices = {m.message["Message-ID"] for m in world.mails_to(agent)}
        assert len(notices) == len(senders)
    return duplicates


def finish_claims(world: DeskWorld) -> None:
    """Rows still waiting for a retry become due: let the retry time pass, deliver the rest.
    (Rows a killed daemon had claimed are taken back at the next start, since its process is
    gone; a live daemon's claims last ``CLAIM_LEASE``.)"""
    world.clock.now = datetime.now(UTC) + CLAIM_LEASE + timedelta(seconds=1)
    assert world.run_once() == 0


def test_each_crash_point_in_turn_then_restart_loses_and_doubles_nothing(
    dovecot_server: DovecotServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """Killed at after_fetch, after_commit, after_move and after_send in turn (one ``run --once``
    each, against Dovecot), then a clean restart."""
    username, password = fresh_user()
    world = DeskWorld(
        ImapAccount("dovecot", dovecot_server, username, password), smtp_server, tmp_path
    )
    try:
        senders = customers(4)
        for sender in senders:
            world.deliver(customer_mail("Crash points", "Hello", sender=sender))
        for point in CRASH_POINTS:
            killed = run_once(world, MAILDESK_CRASH_AT=point)
            assert killed.returncode == 137, (point, killed.stderr.decode()[-2000:])
            if point == "after_fetch":
                assert world.tickets() == []  # nothing committed yet
            else:
                assert world.tickets() != []
        again = run_once(world)
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        finish_claims(world)
        duplicates = assert_nothing_lost_or_doubled(world, senders, crashes=len(CRASH_POINTS))
        print(f"\ncrash points {CRASH_POINTS}: {len(senders)} messages, {duplicates} duplicates")
    finally:
        world.close()


def test_repeated_sigkill_during_a_backlog(pymap_world: DeskWorld) -> None:
    """60 mails, the daemon SIGKILLed 5 times at random instants while it works, then a clean
    ``run --once``. pymap only: its logins are instant, so the restarts cost only Python's
    start-up and the loop stays within seconds (the crash points above run on Dovecot too)."""
    world = pymap_world
    senders = customers(BACKLOG)
    for i, sender in enumerate(senders):
        world.deliver(customer_mail(f"Backlog {i}", f"Message {i}", sender=sender))
    rng = random.Random(os.environ.get("MAILDESK_TEST_SEED", "4"))
    kills = 0
    for _ in range(KILLS):
        before = ledger_count(world)
        if before >= BACKLOG and len(world.smtp.messages) >= 3 * BACKLOG:
            break
        daemon = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "run"],
            env=env_for(world),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # let it make some progress, then kill it at a random instant
            wait_at_most(lambda: ledger_count(world) > before, 20)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.15))  # the random kill instant (fault injection)
        finally:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
        kills += 1

    done = run_once(world)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    finish_claims(world)
    duplicates = assert_nothing_lost_or_doubled(world, senders, crashes=kills)
    print(
        f"\nkill loop: {BACKLOG} messages, {kills} SIGKILLs, "
        f"{len(world.smtp.messages)} mails sent, {duplicates} duplicates "
        f"(same Message-ID), {len(world.tickets())} tickets"
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_holder_not_yet_reaped_holds_nothing() -> None:
    """A daemon (or delivery process) killed with SIGKILL may linger as a zombie until its
    parent reaps it: its leases and outbox claims are taken over at once all the same."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = f"{socket.gethostname()}:{child.pid}:test"
    try:
        assert holder_alive(holder)
        child.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
        assert not holder_alive(holder)
    finally:
        child.kill()
        child.wait()
    assert not holder_alive(holder)
    assert holder_alive(f"elsewhere.example:{child.pid}:test")  # other hosts: wait for the TTL
