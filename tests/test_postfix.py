"""README's Postfix recipe, run: a Postfix of its own hands mail to ``maildesk ingest``.

The three blocks of README's *Postfix* section (main.cf, the transport map, the master.cf pipe
service) are read from README.md and used as written, but for the paths, the pipe's user
(``nobody`` here, where README says ``maildesk``) and how maildesk is started (this checkout,
by an interpreter ``nobody`` can run). Around them, what a site has anyway: a domain Postfix
accepts mail for, and the customer's domain routed to a capture standing in for the customer's
MTA, so a bounce would be seen. Postfix listens on one free port of 127.0.0.1 and nowhere else;
anything else it would send goes to the ``error`` transport.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.database import Database
from maildesk.demo import configs
from maildesk.demo.world import free_port
from maildesk.models import Ledger, Ticket
from tests.desk import ALICE, CUSTOMER, agent_reply, customer_mail, reply_to_address, wait_until
from tests.loopback import ScriptedSmtp

README = Path(__file__).resolve().parent.parent / "README.md"
NOBODY = 65534
DESK = "support@example.com"

# the services a Postfix needs, none chrooted; the SMTP server is added on a port of its own
MASTER = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def readme_recipe() -> dict[str, list[str]]:
    """README's Postfix blocks by file name (``main.cf``, ``transport``, ``master.cf``): the
    fenced blocks whose first line is ``# /etc/postfix/<file>...``, without that line."""
    blocks = re.findall(r"```\n# /etc/postfix/([\w.]+)[^\n]*\n(.*?)```", README.read_text(), re.S)
    found = {name: body.splitlines() for name, body in blocks}
    assert set(found) == {"main.cf", "transport", "master.cf"}, found.keys()
    return found


@dataclass
class Site:
    """A Postfix (config directory ``conf``), the desk's config, and how to look at both."""

    root: Path
    conf: Path
    port: int
    desk_config: Path
    db: Database
    sbin: Path  # where postfix, postqueue and postmap are
    python: str  # an interpreter nobody can run, with maildesk's libraries ...
    code: Path  # ... and this checkout, for its PYTHONPATH

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``COMMAND -c CONF ARGS`` (postfix, postqueue, postmap) on this Postfix."""
        return subprocess.run(
            [str(self.sbin / command), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: one object per queued message."""
        done = self.run("postqueue", "-j")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def send(self, message: EmailMessage, *, sender: str, to: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.send_message(message, from_addr=sender, to_addrs=[to])

    def tickets(self) -> list[Ticket]:
        with self.db.transaction() as session:
            found = list(session.scalars(select(Ticket).order_by(Ticket.id)))
            for ticket in found:
                _ = ticket.messages  # loaded while the session is open
            return found

    def ledger(self) -> list[tuple[str, str, str]]:
        with self.db.transaction() as session:
            rows = session.execute(
                select(Ledger.mailbox, Ledger.outcome, Ledger.reason).order_by(Ledger.id)
            )
            return [(row.mailbox, row.outcome, row.reason) for row in rows]


def desk_config(data_dir: Path, database_url: str, smtp_port: int) -> str:
    return configs.config_text(
        desk={
            "name": "Example Support",
            "address": DESK,
            "data_dir": data_dir,
            "secret": secrets.token_hex(16),
        },
        database={"url": database_url},
        mailboxes=[{"name": "support", "transport": "pipe", "team": "support"}],
        smtp={"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 5},
        teams=[{"name": "support"}],
        agents=[{"email": ALICE, "name": "Alice Smith", "teams": ["support"]}],
    )


def main_cf(root: Path, recipe: list[str]) -> str:
    conf = root / "conf"
    site = f"""
compatibility_level = 3.6
queue_directory = {root / "queue"}
data_directory = {root / "data"}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = mx.example.com
mydomain = example.com
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
virtual_mailbox_domains = example.com
virtual_mailbox_maps = texthash:{conf / "vmailbox"}
default_transport = error:this test's Postfix sends nowhere
relay_transport = error:this test's Postfix sends nowhere
smtpd_tls_security_level = none
smtp_tls_security_level = none
maillog_file = {root / "maillog"}
maillog_file_prefixes = {root}
"""
    return site + "\n".join(line.replace("/etc/postfix/", f"{conf}/") for line in recipe) + "\n"


def master_cf(recipe: list[str], port: int, python: str, code: Path, config: Path) -> str:
    started = f"/usr/bin/env PYTHONPATH={code} {python} -m maildesk"
    pipe = [
        line.replace("user=maildesk", "user=nobody")
        .replace("/opt/maildesk/venv/bin/maildesk", started)
        .replace("/etc/maildesk/maildesk.toml", str(config))
        for line in recipe
    ]
    return f"127.0.0.1:{port} inet n - n - - smtpd\n" + MASTER + "\n".join(pipe) + "\n"


@pytest.fixture
def site(
    postfix_binary: str,
    pipe_python: tuple[str, Path],
    postgres_url: str,
    smtp_server: ScriptedSmtp,
) -> Iterator[tuple[Site, ScriptedSmtp]]:
    """Postfix with README's recipe, the desk's config for user nobody, and the customer's MTA
    (a capture): yields the site and that capture. The desk's own mail goes to ``smtp_server``."""
    python, code = pipe_python
    recipe = readme_recipe()
    root = Path(tempfile.mkdtemp(prefix="maildesk-postfix-"))
    root.chmod(0o755)  # the pipe's user must reach the desk's config and data in here
    customer_mx = ScriptedSmtp()
    db = Database(database_url := postgres_url)
    db.upgrade()
    try:
        conf = root / "conf"
        for name in ("conf", "queue", "data", "desk"):
            (root / name).mkdir(mode=0o755)
        shutil.chown(root / "data", "postfix")
        data_dir = root / "desk" / "data"
        data_dir.mkdir(mode=0o700)
        os.chown(data_dir, NOBODY, NOBODY)
        config = root / "desk" / "maildesk.toml"
        config.write_text(desk_config(data_dir, database_url, smtp_server.port))
        config.chmod(0o600)
        os.chown(config, NOBODY, NOBODY)

        port = free_port()
        (conf / "main.cf").write_text(main_cf(root, recipe["main.cf"]))
        (conf / "master.cf").write_text(master_cf(recipe["master.cf"], port, python, code, config))
        (conf / "vmailbox").write_text(f"{DESK} OK\n")
        transport = [*recipe["transport"], f"customer.test smtp:[127.0.0.1]:{customer_mx.port}"]
        (conf / "transport").write_text("\n".join(transport) + "\n")
        here = Site(root, conf, port, config, db, Path(postfix_binary).parent, python, code)
        built = here.run("postmap", f"hash:{conf / 'transport'}")  # as README says to
        assert built.returncode == 0, built.stderr
        started = here.run("postfix", "start")
        assert started.returncode == 0, started.stderr + here.log()
        try:
            wait_until(lambda: _answers(port), 30, "Postfix to answer on its port")
            yield here, customer_mx
        finally:
            here.run("postfix", "stop")
    finally:
        customer_mx.close()
        db.dispose()
        shutil.rmtree(root, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            return smtp.noop()[0] == 250
    except OSError:
        return False


def deliver_outbox(site: Site) -> None:
    """``maildesk deliver --once``: the acknowledgment and notices ``ingest`` queued. As the
    desk's user (nobody here), as the pipe runs: root is refused its data directory."""
    done = subprocess.run(
        [site.python, "-m", "maildesk", "--config", str(site.desk_config), "deliver", "--once"],
        env={"PYTHONPATH": str(site.code), "PATH": "/usr/bin:/bin"},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_readmes_postfix_recipe_turns_mail_into_tickets_and_defers_on_our_faults(
    site: tuple[Site, ScriptedSmtp], smtp_server: ScriptedSmtp
) -> None:
    here, customer_mx = site
    assert "inet_interfaces = loopback-only" in (here.conf / "main.cf").read_text()

    # a customer writes: a ticket, and once the outbox is delivered, the acknowledgment
    first = customer_mail("Printer broken", "It prints blank pages.", to=DESK)
    here.send(first, sender=CUSTOMER, to=DESK)
    wait_until(lambda: here.tickets(), 60, "the customer's mail to become a ticket")
    deliver_outbox(here)
    [ack] = [m for m in smtp_server.messages if CUSTOMER in m.rcpt_tos]
    assert "[#1]" in str(ack.message["Subject"])
    [ticket] = here.tickets()
    assert (ticket.team, ticket.requester, ticket.mailbox) == ("support", CUSTOMER, "support")
    assert here.ledger() == [("support", "new_ticket", "")]

    # an agent answers the notice: to support+<token>@, through the recipient delimiter
    [notice] = [m for m in smtp_server.messages if ALICE in m.rcpt_tos]
    token_address = reply_to_address(notice)
    assert token_address.startswith("support+")
    note = agent_reply(notice, ALICE, "#note\nChecked the toner: fine.")
    here.send(note, sender=ALICE, to=token_address)
    wait_until(
        lambda: len(here.tickets()[0].messages) == 2, 60, "the agent's note to reach the ticket"
    )
    assert here.tickets()[0].messages[1].internal

    # mail with an empty envelope sender (null_sender=): Return-Path: <>, taken as automatic
    vacation = customer_mail("I am away", "Back on Monday.", sender="bob@customer.test", to=DESK)
    here.send(vacation, sender="", to=DESK)
    wait_until(lambda: len(here.ledger()) == 3, 60, "the empty-sender mail to be handled")
    assert here.ledger()[-1] == ("support", "ignored", "empty Return-Path")

    # the config becomes unreadable to the pipe's user: Postfix defers, nothing is bounced
    os.chown(here.desk_config, 0, 0)
    second = customer_mail("Scanner too", "The scanner is dead as well.", to=DESK)
    here.send(second, sender=CUSTOMER, to=DESK)

    def deferred() -> list[dict[str, object]]:
        return [m for m in here.queue() if m.get("queue_name") == "deferred"]

    [queued] = wait_until(deferred, 60, "Postfix to defer the mail")
    [recipient] = queued["recipients"]  # type: ignore[misc]
    reason = str(recipient["delay_reason"])  # type: ignore[index]
    assert "maildesk: temporary failure: configuration problem" in reason, reason
    assert "maildesk.toml" not in reason and "/" not in reason.split("Command output:")[-1]
    assert "status=bounced" not in here.log()
    assert customer_mx.messages == []  # no bounce for the customer
    assert len(here.tickets()) == 1

    # fixed, and the queue flushed: the deferred mail becomes a ticket, the queue empties
    os.chown(here.desk_config, NOBODY, NOBODY)
    flushed = here.run("postqueue", "-f")
    assert flushed.returncode == 0, flushed.stderr
    wait_until(lambda: len(here.tickets()) == 2, 60, "the deferred mail to become a ticket")
    wait_until(lambda: here.queue() == [], 60, "Postfix's queue to empty")
    assert here.tickets()[1].subject == "Scanner too"
    assert customer_mx.messages == []
    # what the pipe said on success, in Postfix's log
    assert "status=sent (delivered via maildesk service (new_ticket [#2]))" in here.log()
