"""Several hosts, one desk: what one host's daemon wrote is usable from the other.

Two hosts as an admin sets them up: each its own config file and its own ``data_dir``, both
on one PostgreSQL database, one mailbox and one SMTP server. The desk's secret is kept in the
database, so a reply token, a personal address or a bounce address made on one host proves
itself on the other; an older installation's ``data_dir/secret`` is moved in at its first
start, so the tokens it sent keep working. Each host's ``maildesk`` runs as its own process;
where the system allows it (``unshare --uts``, as root) under a host name of its own, so that
leases and outbox claims see another host, as they would on a second machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text

from maildesk import config, shared_secret
from maildesk.act.outbox import IN_FLIGHT
from maildesk.database import Database
from maildesk.models import DeskState, Lease, Ticket
from maildesk.service.delivery import OUTBOX_CONNECTIONS
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    DeskWorld,
    agent_reply,
    config_text,
    customer_mail,
    text_of,
    wait_until,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount


def can_name_a_host() -> bool:
    """Whether processes can be started under a host name of their own here."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=10)
    return done.returncode == 0


OWN_HOST_NAMES = can_name_a_host()


class Host:
    """One machine of the desk: its config and data_dir (a ``DeskWorld`` of its own), and the
    ``maildesk`` processes started on it, under its own host name where that can be given."""

    def __init__(self, world: DeskWorld, name: str) -> None:
        self.world = world
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []

    def argv(self, *args: str) -> list[str]:
        command = [sys.executable, "-m", "maildesk", *args]
        if not OWN_HOST_NAMES:
            return command
        return ["unshare", "--uts", "sh", "-c", f'hostname {self.name} && exec "$@"', "-", *command]

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(*args),
            env={**os.environ, "MAILDESK_CONFIG": str(self.world.config_path)},
            capture_output=True,
            timeout=90,
        )

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        """``maildesk run`` in the background (its pid is the daemon's: unshare and sh exec)."""
        process = subprocess.Popen(
            self.argv("run"),
            env={**os.environ, "MAILDESK_CONFIG": str(self.world.config_path), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Its daemons stopped (SIGTERM: they finish the mail in hand)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        self.stop()
        self.world.close()


def new_host(
    account: ImapAccount, smtp: ScriptedSmtp, root: Path, url: str, **tables: object
) -> Host:
    root.mkdir()
    return Host(DeskWorld(account, smtp, root, database_url=url, tables=dict(tables)), root.name)


@pytest.fixture
def hosts(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Host, Host]]:
    a = new_host(imap_server, smtp_server, tmp_path / "host-a", postgres_url)
    b = new_host(imap_server, smtp_server, tmp_path / "host-b", postgres_url)
    yield a, b
    b.close()
    a.close()


def run_once(host: Host) -> None:
    done = host.cli("run", "--once")
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def personal_address(host: Host, agent: str = ALICE) -> str:
    done = host.cli("agents", "address", agent)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def kept_secrets(world: DeskWorld) -> list[str]:
    with world.db.transaction() as session:
        return list(session.scalars(select(DeskState.value).where(DeskState.key == "secret")))


# --------------------------------------------------------------------------- one secret


@pytest.mark.parametrize("imap_server", ["pymap", "dovecot"], indirect=True)
def test_a_reply_token_made_on_one_host_proves_the_agent_on_the_other(
    hosts: tuple[Host, Host],
) -> None:
    a, b = hosts
    a.world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    run_once(a)  # host A takes the mail and sends the notices, with A's reply tokens
    [notice] = a.world.wait_mails_to(ALICE, 1)

    a.world.deliver(agent_reply(notice, ALICE, "#assign me\n\nOn it."))
    run_once(b)  # host B handles Alice's reply

    [ticket] = b.world.tickets()
    assert ticket["assignee"] == ALICE
    assert [m["unverified"] for m in ticket["messages"]] == [False, False]
    receipt = a.world.wait_mails_to(ALICE, 2)[-1]
    assert "assigned to you" in text_of(receipt)
    assert "not verified" not in text_of(receipt).lower()
    for host in (a, b):  # nothing of the secret is kept on either host
        assert not (host.world.root / "data" / "secret").exists()


@pytest.mark.parametrize("imap_server", ["pymap", "dovecot"], indirect=True)
def test_a_personal_address_printed_on_one_host_works_on_the_other(
    hosts: tuple[Host, Host],
) -> None:
    a, b = hosts
    address = personal_address(b)
    assert personal_address(a) == address
    a.world.deliver(
        customer_mail(
            "Your invoice 42", "#new dana@customer.test\n\nYour invoice.", sender=ALICE, to=address
        )
    )
    run_once(a)

    [ticket] = a.world.tickets()
    assert (ticket["requester"], ticket["status"]) == (CUSTOMER, "pending")
    [first] = a.world.wait_mails_to(CUSTOMER, 1)
    assert "Your invoice." in text_of(first)


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_two_fresh_hosts_starting_at_once_agree_on_one_secret(hosts: tuple[Host, Host]) -> None:
    """Both read the database, find no secret and put in one of their own at the same moment:
    one insert does nothing, and both read back the one kept. Twenty first starts in a row, on
    a connection each as two hosts have."""
    a, b = hosts
    settings = [config.load(h.world.config_path) for h in (a, b)]
    dbs = [Database(s.database_url) for s in settings]
    try:
        for _ in range(20):
            with a.world.db.transaction() as session:
                session.execute(delete(DeskState))
            made = start_at_once(settings, dbs)
            assert made[0] == made[1] != b""
            assert kept_secrets(a.world) == [made[0].decode()]
    finally:
        for db in dbs:
            db.dispose()
    assert personal_address(a) == personal_address(b)


def start_at_once(settings: list[config.Settings], dbs: list[Database]) -> list[bytes]:
    """``shared_secret.settled`` for each host in a thread of its own, released together."""
    ready = threading.Barrier(len(settings))
    made = [b""] * len(settings)

    def start(i: int) -> None:
        ready.wait(10)
        made[i] = shared_secret.settled(settings[i], dbs[i]).desk.secret

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(settings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return made


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_two_hosts_starting_at_once_on_a_new_database_both_start(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> None:
    """The first start makes the tables as well as the secret: two at once both made them,
    and one failed with a traceback (PostgreSQL's duplicate key on a table's type)."""
    paths = []
    for name in ("host-a", "host-b"):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "maildesk.toml"
        data = tmp_path / name / "data"
        path.write_text(config_text(imap_server, smtp_server, data, database={"url": postgres_url}))
        path.chmod(0o600)
        paths.append(path)
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--config", str(path), "db", "upgrade"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for path in paths
    ]
    for start in starts:
        out, err = start.communicate(timeout=90)
        assert (start.returncode, out) == (0, b"database is up to date\n"), err.decode()[-2000:]
    addresses = {
        subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(path), "agents", "address", ALICE],
            capture_output=True,
            timeout=60,
        ).stdout
        for path in paths
    }
    assert len(addresses) == 1 and b"+a-" in addresses.pop()


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_check_config_says_when_other_hosts_cannot_read_this_hosts_files(
    hosts: tuple[Host, Host],
) -> None:
    a, _ = hosts
    shared = a.cli("check-config", "--no-probe")  # the database store, PostgreSQL's default
    assert shared.returncode == 0, shared.stdout.decode() + shared.stderr.decode()
    assert "other hosts" not in shared.stdout.decode()

    a.world.rewrite_config(store={"backend": "directory"})
    done = a.cli("check-config", "--no-probe")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("ok   database")]
    assert lines[at + 1] == (
        f'warn [store] backend: "directory" on PostgreSQL: attachments and raw mail are kept in '
        f"{a.world.root / 'data'} on this host, and other hosts on this database cannot read "
        "them (quarantine replay, an agent's files sent on, a ticket's files fetched); set "
        '[store] backend = "database", or point every host\'s data_dir at one shared directory'
    )


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_check_config_before_the_first_start_checks_a_new_database(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> None:
    """As the admin installing a host runs it, before the service ever started: the database
    has no tables yet, and the look for a stale data_dir/secret was a traceback."""
    path = tmp_path / "maildesk.toml"
    path.write_text(
        config_text(imap_server, smtp_server, tmp_path / "data", database={"url": postgres_url})
    )
    path.chmod(0o600)
    done = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), "check-config", "--no-probe"],
        capture_output=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()[-2000:]
    assert "ok   database" in done.stdout.decode()
    assert "Traceback" not in done.stderr.decode()


# --------------------------------------------------------------------------- an upgrade


@pytest.mark.parametrize("imap_server", ["pymap", "dovecot"], indirect=True)
def test_an_upgrade_keeps_the_tokens_an_older_installation_sent(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, postgres_url: str
) -> None:
    """An older maildesk kept its secret in data_dir/secret and sent notices with tokens made
    from it; after the upgrade its reply tokens prove the agent on a second host, which never
    saw that file."""
    old_secret = "an-older-installations-secret-0123456789"
    data = tmp_path / "host-a" / "data"
    data.mkdir(parents=True, mode=0o700)
    (data / "secret").write_text(old_secret + "\n")
    # before the upgrade: the notice's tokens made from data_dir/secret (given here as a file,
    # which signs exactly as the generated one did)
    a = Host(
        DeskWorld(
            imap_server,
            smtp_server,
            tmp_path / "host-a",
            database_url=postgres_url,
            tables={"desk": {"secret_file": data / "secret"}},
        ),
        "host-a",
    )
    try:
        a.world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
        run_once(a)
        [notice] = a.world.wait_mails_to(ALICE, 1)
        # the older installation: no secret in its config, a database without desk_state
        a.world.rewrite_config(desk={"secret_file": None})
        with a.world.db.transaction() as session:
            session.execute(text("DROP TABLE desk_state"))
            session.execute(text("UPDATE alembic_version SET version_num = '0014'"))

        upgraded = a.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr.decode()
        assert f"moved from {data / 'secret'}" in upgraded.stderr.decode()
        assert kept_secrets(a.world) == [old_secret]
        assert (data / "secret").read_text().strip() == old_secret  # left in place

        b = new_host(imap_server, smtp_server, tmp_path / "host-b", postgres_url)
        try:
            a.world.deliver(agent_reply(notice, ALICE, "#assign me\n\nOn it."))
            run_once(b)
            [ticket] = b.world.tickets()
            assert ticket["assignee"] == ALICE
            assert [m["unverified"] for m in ticket["messages"]] == [False, False]
            assert not (b.world.root / "data" / "secret").exists()
        finally:
            b.close()
    finally:
        a.close()


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_host_whose_old_secret_is_not_the_desks_uses_the_desks_and_says_so(
    hosts: tuple[Host, Host],
) -> None:
    """Two older installations on one database each had their own data_dir/secret; the first
    to start moved its own in. The other uses the desk's (as every host must) and says, at
    every start, that the tokens it made with its own no longer verify."""
    a, b = hosts
    own = b.world.root / "data" / "secret"
    own.parent.mkdir(mode=0o700, exist_ok=True)
    own.write_text("host-b-made-this-one-on-its-own-0123456789\n")
    done = b.cli("agents", "address", ALICE)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == personal_address(a)
    assert f"{own} holds a secret other than the desk's" in done.stderr.decode()
    assert "no longer verify" in done.stderr.decode()
    assert kept_secrets(a.world) != [own.read_text().strip()]
    # check-config says it too, as one of its warn lines (it went to no log of its own)
    checked = b.cli("check-config", "--no-probe")
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert (
        f"warn [desk] secret: {own} holds a secret other than the desk's, which the database "
        "keeps for every host: the reply tokens, personal addresses and bounce addresses this "
        f"host made with it no longer verify; remove {own} to silence this"
    ) in checked.stdout.decode().splitlines()
    own.unlink()
    assert "[desk] secret" not in b.cli("check-config", "--no-probe").stdout.decode()


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_secret_kept_too_short_stops_the_start_with_one_line(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    with a.world.db.transaction() as session:
        session.execute(text("UPDATE desk_state SET value = 'short' WHERE key = 'secret'"))
    for args in (("run", "--once"), ("agents", "address", ALICE)):
        done = a.cli(*args)
        assert done.returncode == 78, done.stderr.decode()
        line = done.stderr.decode().splitlines()[-1]
        assert "[desk] secret: none given, and the one kept in the database" in line
        assert "holds 5 characters, too few" in line
    assert a.world.smtp.messages == []


# --------------------------------------------------------------------------- kill -9


@pytest.mark.parametrize("imap_server", ["pymap", "dovecot"], indirect=True)
def test_kill_9_of_either_host_mid_backlog_loses_and_doubles_nothing(
    hosts: tuple[Host, Host],
) -> None:
    """A daemon on each host, a backlog of 40 mails. The one consuming the mailbox is killed
    with SIGKILL a few tickets in, and the other host takes the mailbox over once the lease
    has expired; with 40 more mails, that one is killed in its turn. Each killed host starts
    its daemon again. Every mail is one ticket, one acknowledgment and one notice for each
    agent of the team."""
    a, b = hosts
    world = a.world
    env = {"MAILDESK_LEASE_SECONDS": "3"}
    daemons = {a: a.start(**env), b: b.start(**env)}
    senders: list[str] = []
    killed: list[tuple[str, int, int]] = []  # host, tickets made by then, of how many mails
    for batch in range(2):
        backlog = [f"backlog{batch}-{i}@customer.test" for i in range(40)]
        for sender in backlog:
            world.deliver(customer_mail(f"Order of {sender}", "Where is it?", sender=sender))
        senders += backlog
        holder = wait_until(lambda: lease_holder(world), 30, "a lease holder")
        few = len(senders) - 37
        wait_until(lambda f=few: ticket_count(world) >= f, 60, "a few tickets")
        [host] = [h for h, p in daemons.items() if p.pid == holder[1]]
        daemons[host].send_signal(signal.SIGKILL)
        daemons[host].wait(10)
        killed.append((host.name, ticket_count(world), len(senders)))
        [other] = [h for h in daemons if h is not host]
        # the other host takes the mailbox over (after the lease's TTL: the holder was elsewhere)
        wait_until(lambda o=other: held_by(world, daemons[o].pid), 30, "the other host takes over")
        daemons[host] = host.start(**env)
    assert sorted(name for name, _, _ in killed) == ["host-a", "host-b"]
    assert all(made < count for _, made, count in killed), killed  # killed mid-backlog
    wait_until(lambda: len(world.account.uids("Processed")) == len(senders), 120, "all handled")
    world.smtp.wait_for(lambda msgs: len(msgs) >= 3 * len(senders), timeout=200)
    for host in (a, b):
        host.stop()

    assert sorted(t["requester"] for t in world.tickets()) == sorted(senders)
    assert world.account.uids("INBOX") == []
    # one acknowledgment per customer and one notice per ticket to each agent of the team, by
    # Message-ID: a kill between the server's 250 and the row marked sent sends that mail again
    # (the same mail, IN_FLIGHT per connection at most), never a second one
    for sender in senders:
        assert len({m.message["Message-ID"] for m in world.mails_to(sender)}) == 1, sender
    for agent in (ALICE, CAROL_AGENT):
        assert len({m.message["Message-ID"] for m in world.mails_to(agent)}) == len(senders)
    resent = Counter(str(m.message["Message-ID"]) for m in world.smtp.messages)
    assert sum(n - 1 for n in resent.values()) <= len(killed) * OUTBOX_CONNECTIONS * IN_FLIGHT
    assert len(kept_secrets(world)) == 1


def ticket_count(world: DeskWorld) -> int:
    with world.db.transaction() as session:
        return int(session.scalar(select(func.count(Ticket.id))) or 0)


def lease_holder(world: DeskWorld) -> tuple[str, int] | None:
    """The host name and pid of the mailbox's lease holder, while its lease holds."""
    with world.db.transaction() as session:
        lease = session.get(Lease, "mailbox:support")
        if lease is None or lease.expires_at < datetime.now(UTC):
            return None
        host, pid, _ = lease.holder.split(":")
        return host, int(pid)


def held_by(world: DeskWorld, pid: int) -> bool:
    holder = lease_holder(world)
    return holder is not None and holder[1] == pid


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_secret_the_database_refuses_to_keep_is_never_printed(hosts: tuple[Host, Host]) -> None:
    """The first start moves data_dir/secret into the database; when the database refuses
    the row (a role without the right to write it, a read-only server), the error names the
    statement but never the secret, which tokens already sent were made with."""
    a, b = hosts
    old_secret = "the-secret-of-an-older-installation-0123456789"
    own = b.world.root / "data" / "secret"
    own.parent.mkdir(mode=0o700, exist_ok=True)
    own.write_text(old_secret + "\n")
    with a.world.db.transaction() as session:
        session.execute(text("DELETE FROM desk_state"))
        session.execute(
            text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'permission denied for table desk_state'; END $$"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON desk_state "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        )
    done = b.cli("agents", "address", ALICE)
    assert done.returncode == 78  # the admin's to fix: one line, no traceback
    line = done.stderr.decode().splitlines()[-1]
    assert "[database] url: the database refused to keep the desk's secret" in line
    assert "permission denied for table desk_state" in line
    assert old_secret not in done.stderr.decode() + done.stdout.decode()
    assert kept_secrets(a.world) == []
