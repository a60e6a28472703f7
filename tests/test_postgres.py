"""PostgreSQL: everything SQLite does, and several daemons on one database doubling nothing.

The end-to-end flows of the ingestion and lifecycle tests run again with ``[database] url`` on a
fresh PostgreSQL database. Then real ``maildesk run`` subprocesses share one mailbox (one
consumer at a time through the lease) and one outbox (rows claimed with SKIP LOCKED): every
ticket and every mail exists exactly once, and a second daemon takes over the mailbox when the
first is killed (at once for a dead process on this host; after the lease's TTL for a holder on
another host).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

import tests.test_ingestion as ingestion
import tests.test_lifecycle as lifecycle
from maildesk.act.outbox import Mail
from maildesk.demo.world import SmtpServer
from maildesk.models import Lease, Outbox, Ticket
from maildesk.service.delivery import OUTBOX_CONNECTIONS
from tests.desk import ALICE, CAROL_AGENT, DeskWorld, customer_mail, wait_until
from tests.servers import DovecotServer, ImapAccount, fresh_user

TRUSTED = '[security]\ntrusted_authserv_ids = ["mx.example.com"]\n'


@pytest.fixture
def pg_world(
    imap_server: ImapAccount, smtp_server: SmtpServer, tmp_path: Path, postgres_url: str
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server, smtp_server, tmp_path, database_url=postgres_url, extra_config=TRUSTED
    )
    yield w
    w.close()


@pytest.mark.parametrize(
    "flow",
    [
        ingestion.test_new_mail_becomes_a_ticket_with_one_threaded_acknowledgment,
        ingestion.test_attachments_are_kept_whole,
        ingestion.test_follow_ups_join_by_header_or_by_ref_from_the_requester_but_not_from_strangers,
        ingestion.test_outbound_retries_on_4xx_with_the_same_message_id_and_fails_on_5xx,
        lifecycle.test_full_lifecycle_by_mail,
        lifecycle.test_reply_after_reopen_window_opens_a_linked_ticket,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_end_to_end_flows_on_postgres(
    flow: Callable[[DeskWorld], None], pg_world: DeskWorld
) -> None:
    assert pg_world.db.engine.dialect.name == "postgresql"
    flow(pg_world)


# --------------------------------------------------------------------------- several daemons


@pytest.fixture
def dovecot_world(
    dovecot_server: DovecotServer, smtp_server: SmtpServer, tmp_path: Path, postgres_url: str
) -> Iterator[DeskWorld]:
    username, password = fresh_user()
    account = ImapAccount("dovecot", dovecot_server, username, password)
    w = DeskWorld(account, smtp_server, tmp_path, database_url=postgres_url)
    yield w
    w.close()


class Daemons:
    """``maildesk run`` subprocesses on one config; all of them are stopped at the end."""

    def __init__(self, world: DeskWorld, **env: str) -> None:
        self.env = {**os.environ, "MAILDESK_CONFIG": str(world.config_path), **env}
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "run", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process.stderr is not None:
                process.stderr.close()


@pytest.fixture
def daemons(dovecot_world: DeskWorld) -> Iterator[Callable[..., Daemons]]:
    made: list[Daemons] = []

    def make(**env: str) -> Daemons:
        made.append(Daemons(dovecot_world, **env))
        return made[-1]

    yield make
    for group in made:
        group.close()


def lease_holder(world: DeskWorld) -> str | None:
    with world.db.transaction() as session:
        lease = session.get(Lease, "mailbox:support")
        return lease.holder if lease is not None else None


def ticket_count(world: DeskWorld) -> int:
    with world.db.transaction() as session:
        return int(session.scalar(select(func.count(Ticket.id))) or 0)


def outbox_sent(world: DeskWorld) -> int:
    with world.db.transaction() as session:
        query = select(func.count(Outbox.id)).where(Outbox.status == "sent")
        return int(session.scalar(query) or 0)


def customers(count: int, tag: str) -> list[str]:
    return [f"{tag}{i}@customer.test" for i in range(count)]


def assert_each_mail_once(world: DeskWorld, senders: list[str]) -> None:
    """One ticket and one acknowledgment per customer; one notice per ticket per agent."""
    tickets = world.tickets()
    assert sorted(t["requester"] for t in tickets) == sorted(senders)
    assert len({t["number"] for t in tickets}) == len(senders)
    mails = world.smtp.messages
    ids = Counter(str(m.message["Message-ID"]) for m in mails)
    assert [mid for mid, n in ids.items() if n > 1] == []
    acks = Counter(r for m in mails for r in m.rcpt_tos if r in senders)
    assert acks == Counter(senders)
    assert len(world.mails_to(ALICE)) == len(world.mails_to(CAROL_AGENT)) == len(senders)
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Processed")) == len(senders)


def test_two_daemons_on_one_backlog_make_every_ticket_and_mail_exactly_once(
    dovecot_world: DeskWorld, daemons: Callable[..., Daemons]
) -> None:
    world = dovecot_world
    senders = customers(20, "backlog")
    for sender in senders:
        world.deliver(customer_mail(f"Order of {sender}", "Where is it?", sender=sender))
    group = daemons()
    first, second = group.start(), group.start()
    world.smtp.wait_for(lambda msgs: len(msgs) >= 3 * len(senders), timeout=60)
    wait_until(lambda: len(world.account.uids("Processed")) == len(senders), 20, "all moved")
    assert first.poll() is None and second.poll() is None  # both ran side by side throughout
    group.close()
    assert_each_mail_once(world, senders)


def test_two_daemons_delivering_one_outbox_never_send_a_row_twice(
    dovecot_world: DeskWorld, daemons: Callable[..., Daemons]
) -> None:
    world = dovecot_world
    count = 450
    now = datetime.now(UTC)
    with world.db.transaction() as session:
        for i in range(count):
            world.desk.mailer.enqueue(
                session,
                Mail(
                    kind="alert",
                    template="admin_alert",
                    to=f"r{i}@customer.test",
                    context={"subject": f"Notice {i}", "text": "Something happened."},
                    to_agent=True,
                ),
                now,
            )
    group = daemons()
    runs = [group.start("--once"), group.start("--once")]
    for process in runs:
        assert process.wait(60) == 0
    mails = world.smtp.messages
    ids = Counter(str(m.message["Message-ID"]) for m in mails)
    assert len(ids) == count
    assert max(ids.values()) == 1
    with world.db.transaction() as session:
        statuses = Counter(session.scalars(select(Outbox.status)))
    assert statuses == {"sent": count}
    # both daemons delivered: each opens at most OUTBOX_CONNECTIONS connections
    assert world.smtp.connections > OUTBOX_CONNECTIONS


def test_a_second_daemon_takes_over_at_once_when_the_first_is_killed(
    dovecot_world: DeskWorld, daemons: Callable[..., Daemons]
) -> None:
    world = dovecot_world
    group = daemons(MAILDESK_LEASE_SECONDS="3")
    first = group.start()
    wait_until(lambda: f":{first.pid}:" in (lease_holder(world) or ""), 20, "first holds lease")
    second = group.start()
    world.deliver(customer_mail("Before the crash", "Hello", sender="early@customer.test"))
    # its acknowledgment and both notices are recorded as sent before the kill: a kill between
    # the server's 250 and the record would resend one (the documented duplicate window)
    world.smtp.wait_for(lambda msgs: len(msgs) >= 3, timeout=20)
    wait_until(lambda: outbox_sent(world) == 3, 10, "first ticket's mail recorded as sent")
    assert f":{first.pid}:" in (lease_holder(world) or "")

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    senders = customers(5, "after")
    for sender in senders:
        world.deliver(customer_mail("After the crash", "Hello", sender=sender))
    world.smtp.wait_for(lambda msgs: len(msgs) >= 3 * 6, timeout=30)
    assert f":{second.pid}:" in (lease_holder(world) or "")
    wait_until(lambda: len(world.account.uids("Processed")) == 6, 20, "all moved")
    assert_each_mail_once(world, ["early@customer.test", *senders])


def test_a_lease_held_on_another_host_is_taken_over_after_its_ttl(
    dovecot_world: DeskWorld, daemons: Callable[..., Daemons]
) -> None:
    world = dovecot_world
    expires = datetime.now(UTC) + timedelta(seconds=3)
    with world.db.transaction() as session:
        session.add(
            Lease(name="mailbox:support", holder="elsewhere:4242:cafe", expires_at=expires, fence=1)
        )
    world.deliver(customer_mail("Waiting for the lease", "Hello", sender="ttl@customer.test"))
    daemon = daemons(MAILDESK_LEASE_SECONDS="2").start()
    world.wait_mails_to("ttl@customer.test", 1, timeout=30)
    assert datetime.now(UTC) >= expires  # nothing was handled while the other host's lease held
    holder = lease_holder(world) or ""
    assert f":{daemon.pid}:" in holder
    with world.db.transaction() as session:
        lease = session.get(Lease, "mailbox:support")
        assert lease is not None and lease.fence == 2
    assert ticket_count(world) == 1
