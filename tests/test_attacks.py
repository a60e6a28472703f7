"""Attacks by mail on what the daemon does outside the parse budget, each through the real daemon.

The parse of a message runs in a worker under ``[limits] parse_seconds``; everything else (the
header block of an oversized mail, the bounce of a delivery report, the ticket's history read
for each mail, the parsed value handed back) runs in the daemon, where no budget stops it. Each
test here sends the mail an outsider could send and checks what a user sees: the mail behind it
answered in time, the ticket's timeline, the daemon's memory, nothing forged.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from maildesk.act.notices import NOTICE_TEXT_CHARS
from maildesk.demo.world import free_port
from maildesk.desk import commands
from maildesk.desk.people import MAX_PARTICIPANTS
from maildesk.desk.routing import Identity, TicketView, classify, route
from maildesk.mail import parsing
from maildesk.mail.inbound import Inbound, parse
from maildesk.models import DeskState, Message, Participant
from maildesk.service.timings import Timings
from tests.desk import (
    ALICE,
    CAROL_AGENT,
    CUSTOMER,
    DeskWorld,
    RunningDaemon,
    agent_reply,
    customer_mail,
    daemon_peak_mb,
    delivery_report,
    text_of,
    wait_until,
)
from tests.loopback import ScriptedSmtp
from tests.poison import GROWTH, LINEAR_BOUND, growth
from tests.servers import ImapAccount

REF_PATTERN = r"\[#(?P<number>\d{1,12})\]"
A_FEW_SECONDS = 5.0  # what the ordinary mail behind a poison may take beyond parse_seconds


def limits(**values: Any) -> dict[str, Any]:
    return {"limits": values}


def quarantined(world: DeskWorld) -> list[dict[str, Any]]:
    done = world.cli("quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr.decode()
    return list(json.loads(done.stdout))


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, request: Any
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables=getattr(request, "param", None))
    yield w
    w.close()


def poison_then_ordinary(world: DeskWorld, poison: bytes, seconds: float) -> float:
    """Put ``poison`` and then an ordinary customer mail in the inbox; how long the ordinary
    one's acknowledgment took (failing once it took more than ``seconds`` and a few more)."""
    world.deliver(poison)
    world.deliver(customer_mail("Printer jammed", "It jams on page 2.", sender="dana@ok.test"))
    appended = time.monotonic()
    world.wait_mails_to("dana@ok.test", 1, timeout=seconds + 3 * A_FEW_SECONDS)
    return time.monotonic() - appended


# --------------------------------------------------------------------------- oversized mail

OVERSIZE_LIMIT = 200_000


def oversized_with_slow_headers(semicolons: int) -> bytes:
    """A mail over the size limit whose header block (under 256 KB, so it is fetched) holds a
    Content-Type the standard library reads in time quadratic in its length: a quoted value
    that never ends, full of ``;`` (``email.message._parseparam`` counts the quotes before
    each one). 150,000 of them: about 80 s in one process here."""
    content_type = 'multipart/mixed; boundary="' + ";" * semicolons
    head = (
        "From: Mallory <mallory@poison.test>\r\nTo: support@example.com\r\n"
        "Subject: Photos\r\nMessage-ID: <slow-head@poison.test>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + b"x" * 78 + b"\r\n" * 2_000 + os.urandom(OVERSIZE_LIMIT).hex().encode()


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world",
    [limits(parse_seconds=1, max_message_bytes=OVERSIZE_LIMIT)],
    indirect=True,
    ids=["1s"],
)
def test_an_oversized_mails_header_block_is_read_within_the_parse_budget(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    """The daemon reads only the header block of a mail over ``max_message_bytes``, but it read
    it itself, outside the budget: one such mail held the mailbox for minutes, again after
    every restart (it is moved only once handled)."""
    waited = poison_then_ordinary(world, oversized_with_slow_headers(150_000), 1)

    assert waited < 1 + A_FEW_SECONDS, f"the ordinary mail waited {waited:.1f} s"
    assert daemon.process.poll() is None, "the daemon died"
    [entry] = wait_until(lambda: quarantined(world), 10, "the oversized mail in quarantine")
    assert entry["error"].startswith("message of ")
    assert "exceeds [limits] max_message_bytes (200000)" in entry["error"]
    assert entry["subject"] == "Photos" and "mallory@poison.test" in entry["from"]
    assert entry["error"].endswith(
        "; no notice: its header block could not be read (parse budget exceeded)"
    )
    wait_until(lambda: world.account.uids("Quarantine"), 10, "moved to Quarantine")
    assert world.account.uids("INBOX") == []


# --------------------------------------------------------------------------- delivery reports


def bounce_events(world: DeskWorld, number: int) -> list[dict[str, Any]]:
    return [e for e in world.ticket(number)["events"] if e["kind"] == "bounce"]


@pytest.mark.parametrize("copies", [1, 2_000])
def test_a_report_repeating_its_recipient_acts_once(world: DeskWorld, copies: int) -> None:
    """A customer knows the VERP address of their own acknowledgment (its Return-Path); a
    report mailed there may speak for their address. Listing that address 2,000 times made
    2,000 bounce events in one transaction of the daemon's, and a 50 MB report 800,000."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    before = len(world.smtp.messages)
    report = delivery_report(
        ack, "failed", "5.1.1", recipients=[CUSTOMER] * copies, sender=f"<{CUSTOMER}>"
    )
    world.deliver(report)
    world.run_once()

    [bounced] = bounce_events(world, 1)
    assert (bounced["detail"]["recipient"], bounced["detail"]["status"]) == (CUSTOMER, "5.1.1")
    assert len(world.ticket(1)["events"]) == 4  # created, acknowledged, bounce, requester_bounced
    told = world.smtp.messages[before:]
    assert sorted(m.rcpt_tos for m in told) == [(ALICE,), (CAROL_AGENT,)]  # the team, once


# --------------------------------------------------------------------------- a long history


def history(world: DeskWorld, number: int, messages: int, chars: int) -> None:
    """``messages`` earlier replies of ``chars`` characters each on ticket ``number``, as the
    daemon kept them (a customer may write as often and as long as they like)."""
    with world.db.transaction() as session:
        for n in range(messages):
            session.add(
                Message(
                    ticket_id=number,
                    message_id=f"reply-{n}@customer.test",
                    sender=CUSTOMER,
                    subject="Re: Printer broken",
                    text="Still broken. " * (chars // 14),
                    created_at=world.clock(),
                )
            )


def follow_up_peak(world: DeskWorld, earlier: int) -> int:
    """The daemon's peak of Python memory, bytes, to handle one more reply on a ticket with
    ``earlier`` replies of 100,000 characters before it."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    world.run_once()
    ack = world.mails_to(CUSTOMER)[-1]
    number = len(world.tickets())
    history(world, number, earlier, 100_000)
    world.deliver(customer_mail("Re: Printer broken", "Any news?", reply_to=ack))
    tracemalloc.start()
    try:
        world.run_once()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        messages = world.ticket(number)["messages"]
        assert (len(messages), messages[-1]["text"]) == (earlier + 2, "Any news?")


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_reply_costs_the_daemon_the_same_however_long_the_tickets_history(
    world: DeskWorld,
) -> None:
    """Every mail about a ticket (the notice of a reply, the agent's answer) names the thread's
    last Message-IDs; they were found by loading every message of the ticket, text and all. A
    customer who wrote 160 long replies made each next mail on it cost the daemon 16 MB more
    (64 MB in characters outside Latin-1), and more with every reply."""
    short, long = follow_up_peak(world, 20), follow_up_peak(world, 20 * GROWTH)

    print(f"\nhistory: {short / 1e6:.1f} MB, then {long / 1e6:.1f} MB")
    assert long < short + 2_000_000, f"{short / 1e6:.1f} MB, then {long / 1e6:.1f} MB"
    [notice] = [m for m in world.mails_to(ALICE) if "Any news?" in text_of(m)][-1:]
    references = str(notice.message["References"]).split()
    assert references[-2:] == [f"<reply-{20 * GROWTH - 1}@customer.test>", references[-1]]
    assert len(references) == 10  # the thread's last ten Message-IDs, as before


# --------------------------------------------------------------------------- what comes back

DAEMON_MEMORY_MB = 300


def html_alternative(megabytes: int) -> bytes:
    """A short plain-text mail with an HTML alternative of ``megabytes`` MB (one emoji in it,
    so Python keeps each of its characters in four bytes)."""
    html = ("<p>" + "Lorem ipsum dolor sit amet. " * 36 + "</p>\n") * (megabytes * 1000)
    data = base64.encodebytes(f"{html}<p>\U0001f600</p>".encode()).replace(b"\n", b"\r\n")
    return (
        (
            b"From: Mallory <mallory@poison.test>\r\nTo: support@example.com\r\n"
            b"Subject: Newsletter\r\nMessage-ID: <big-html@poison.test>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello, the printer.\r\n"
            b"--b\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        + data
        + b"--b--\r\n"
    )


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize("world", [limits(parse_seconds=60)], indirect=True, ids=["60s"])
def test_the_parsed_mail_handed_to_the_daemon_is_bounded(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    """The parse worker handed the daemon the whole HTML alternative of a mail, which nothing
    reads (its text is converted from the first 512 KB at most): 34 MB of HTML with one emoji
    came back as 136 MB of characters into the daemon's memory."""
    world.deliver(html_alternative(34))
    world.wait_mails_to("mallory@poison.test", 1, timeout=90)

    peak = daemon_peak_mb(daemon.process.pid)
    print(f"\nHTML alternative of 34 MB: daemon peak {peak:.0f} MB")
    assert peak < DAEMON_MEMORY_MB
    [ticket] = [t for t in world.tickets() if t["requester"] == "mallory@poison.test"]
    assert ticket["messages"][0]["text"] == "Hello, the printer."


# --------------------------------------------------------------------------- agents' commands


def forged_command_line(ack: Any, dots: int) -> bytes:
    """Mail in Alice's name (no token, no verdict: anyone can send it) threaded to the sender's
    own ticket, whose first line is a command with one long word of punctuation."""
    message = customer_mail(
        "Re: Printer broken",
        "#tag " + "." * dots + "x\n",
        sender=ALICE,
        reply_to=ack,
    )
    return message.as_bytes()


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize("world", [limits(parse_seconds=2)], indirect=True, ids=["2s"])
def test_a_forged_command_line_costs_the_daemon_no_more_than_its_length(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    """The commands of an agent's mail are read before the mail is known to be the agent's.
    Trailing punctuation was cut from each word by a pattern that is quadratic in a word of
    punctuation: a word of 150,000 dots held the mailbox for about a minute."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    [ack] = world.wait_mails_to(CUSTOMER, 1)
    waited = poison_then_ordinary(world, forged_command_line(ack, 150_000), 2)

    assert waited < 2 + A_FEW_SECONDS, f"the ordinary mail waited {waited:.1f} s"
    assert daemon.process.poll() is None, "the daemon died"

    def forged_note() -> list[dict[str, Any]]:
        return [m for m in world.ticket(2)["messages"] if m["from"] == ALICE]

    [kept] = wait_until(forged_note, 10, "the forged mail kept on the ticket")
    assert kept["internal"] and kept["unverified"]  # an unverified note, nothing applied
    assert world.ticket(2)["tags"] == []


# --------------------------------------------------------------------------- the daemon's patterns
# What the daemon reads of a parsed mail (routing, agents' commands) runs outside any budget:
# its work must grow with the mail, no faster. Weighed as in ``tests.poison``: CPU time at n
# against 8 n, the mail parsed once beforehand (that part is the worker's).


def daemon_work(
    build: Callable[[int], bytes], work: Callable[[Inbound], object]
) -> Callable[[int], Callable[[], object]]:
    def at(n: int) -> Callable[[], object]:
        inbound = parse(build(n))
        assert inbound.fatal is None
        return functools.partial(work, inbound)

    return at


def plain_mail(sender: str, subject: str, body: str, *headers: str) -> bytes:
    """A mail written as it is sent, long header lines and all (no folding, no encoding)."""
    head = "".join(f"{h}\r\n" for h in headers)
    return (
        f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{os.urandom(8).hex()}@sender.test>\r\n{head}\r\n{body}\r\n"
    ).encode()


def auto_submitted(n: int) -> bytes:
    """``Auto-Submitted:`` holding ``n`` comments that never close."""
    return plain_mail(CUSTOMER, "Hello", "Hi", "Auto-Submitted: " + "(" * n)


def punctuation_word(n: int) -> bytes:
    """An agent's mail whose command line holds a word of ``n`` dots."""
    return plain_mail(ALICE, "Re: [#1] Printer", "#tag " + "." * n + "x")


def test_routing_reads_auto_submitted_in_linear_time(world_identity: Identity) -> None:
    assert classify(parse(auto_submitted(10)), world_identity).automatic
    work = daemon_work(auto_submitted, lambda m: classify(m, world_identity))
    assert growth(work, 2_000) < LINEAR_BOUND


def test_agents_commands_are_read_in_linear_time() -> None:
    def commands_of(inbound: Inbound) -> commands.Parsed:
        return commands.parse(inbound.subject, inbound.reply_text, REF_PATTERN, ("support",))

    [tag] = commands_of(parse(punctuation_word(3))).commands
    assert tag.args == ("...x",)
    assert growth(daemon_work(punctuation_word, commands_of), 2_000) < LINEAR_BOUND


@pytest.fixture
def world_identity() -> Identity:
    return Identity(
        address="support@example.com",
        secret=b"s" * 32,
        loop_id="loop",
        ref_pattern=REF_PATTERN,
        agents=frozenset({ALICE}),
    )


# --------------------------------------------------------------------------- a database outage


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize(
    "world",
    [{"lifecycle": {"remind_pending_after": "1h", "close_pending_after": "3h"}}],
    indirect=True,
    ids=["1h"],
)
def test_a_database_outage_longer_than_the_busy_timeout_stops_neither_mail_nor_timers(
    world: DeskWorld,
) -> None:
    """Another process holds SQLite's write lock past its busy timeout (10 s), as a database
    that is down: the leases the mailbox and the timers renew failed outside any handler, so
    the mailbox loop ended the daemon with a traceback and the timers stopped for good while
    the daemon went on. After the outage, mail is answered and the timers run again."""
    world.timings = Timings(backoff_base=0.02, timer_seconds=0.2)
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    world.deliver(agent_reply(world.mails_to(ALICE)[-1], ALICE, "Which model is it?"))
    world.run_once()
    assert world.ticket(1)["status"] == "pending"
    sent = len(world.mails_to(CUSTOMER))
    world.start()

    holder = sqlite3.connect(world.settings.database_url.split("///", 1)[1], timeout=1)
    holder.execute("BEGIN IMMEDIATE")
    try:
        world.deliver(customer_mail("During the outage", "Hello", sender="during@x.test"))
        time.sleep(12)  # the outage itself: the lock is held past the busy timeout
    finally:
        holder.rollback()
        holder.close()

    world.wait_mails_to("during@x.test", 1, timeout=30)
    world.clock.advance(hours=1, minutes=1)  # the pending ticket's reminder is due
    [reminder] = [
        m
        for m in world.wait_mails_to(CUSTOMER, sent + 1, timeout=30)[sent:]
        if "waiting" in str(m.message["Subject"])
    ]
    assert world._thread is not None and world._thread.is_alive()


# --------------------------------------------------------------------------- a full disk


# ``maildesk ingest`` started under a file size limit (set before the interpreter starts, not in
# a ``preexec_fn``, which is unsafe in this threaded test process)
WITH_FILE_LIMIT = (
    "import os, resource, sys; size = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_FSIZE, (size, size));"
    " os.execv(sys.executable, [sys.executable, '-m', 'maildesk', 'ingest'])"
)


def ingest_with_room_for(world: DeskWorld, raw: bytes, file_bytes: int) -> int:
    """``maildesk ingest`` as an MTA runs it, on a disk where no file may grow past
    ``file_bytes`` (``RLIMIT_FSIZE``: each write past it fails, as on a full disk); its exit
    status."""
    done = subprocess.run(
        [sys.executable, "-c", WITH_FILE_LIMIT, str(file_bytes)],
        input=raw,
        env={**os.environ, "MAILDESK_CONFIG": str(world.config_path)},
        capture_output=True,
        timeout=60,
    )
    return done.returncode


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_message_the_disk_cannot_take_leaves_nothing_behind(world: DeskWorld) -> None:
    """A 3 MB message (kept on disk, not in the database) while the disk is full: each try
    left its partial copy behind, a hidden file nothing removes, so an MTA retrying every few
    minutes filled again whatever room the admin made."""
    big = customer_mail("Scans", "Attached.", sender=CUSTOMER)
    big.add_attachment(os.urandom(3_000_000), maintype="application", subtype="pdf")
    raw = big.as_bytes()
    data = Path(world.settings.desk.data_dir)

    codes = [ingest_with_room_for(world, raw, 1_000_000) for _ in range(3)]

    assert codes == [75, 75, 75]  # EX_TEMPFAIL: the MTA keeps it and tries again
    left = [p for p in data.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert left == [], [p.stat().st_size for p in left]
    assert ingest_with_room_for(world, raw, 1 << 30) == 0  # room again: taken, nothing lost
    assert [t["subject"] for t in world.tickets()] == ["Scans"]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_secret_the_disk_could_not_take_is_made_again(world: DeskWorld) -> None:
    """The first start makes the desk's secret; on a full disk it failed but left an empty
    one behind, and every start after the admin made room read the empty secret: a traceback
    each time (``the desk secret is empty``), the desk down for good."""
    with world.db.transaction() as session:  # a desk starting for the first time
        session.execute(delete(DeskState))
    mail = customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER)

    assert ingest_with_room_for(world, mail.as_bytes(), 0) == 75  # no room: the MTA keeps it

    assert ingest_with_room_for(world, mail.as_bytes(), 1 << 30) == 0  # room again
    assert [t["subject"] for t in world.tickets()] == ["Printer broken"]
    with world.db.transaction() as session:
        [kept] = session.scalars(select(DeskState.value)).all()
    assert len(kept) >= 32
    assert not (Path(world.settings.desk.data_dir) / "secret").exists()


# --------------------------------------------------------------------------- stopped processes


def descendants(ancestor: int) -> list[int]:
    found: list[int] = []
    pending = [ancestor]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            pending.extend(kids)
            found.extend(kids)
    return found


def running(pid: int, what: bytes) -> bool:
    """Whether ``pid`` runs a command line holding ``what`` (False once it is gone)."""
    try:
        return what in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def named(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def zygote_and_worker() -> tuple[int, int] | None:
    """The parse zygote below this process and its one idle worker, once there are."""
    mine = descendants(os.getpid())
    workers = [p for p in mine if named(p) == "maildesk-parse"]
    zygotes = [p for p in mine if running(p, b"maildesk.mail.zygote") and p not in workers]
    return (zygotes[0], workers[0]) if len(zygotes) == len(workers) == 1 else None


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_stopped_parse_zygote_is_replaced_and_mail_goes_on(
    world: DeskWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zygote forks every new parse worker. Stopped (SIGSTOP, or stuck), the daemon waited
    for its answer for ever, alive and idle: no mail was handled again. Now it is given
    ``FORK_SECONDS``, then killed and a new one started."""
    monkeypatch.setattr(parsing, "FORK_SECONDS", 2.0)
    world.start()
    world.deliver(customer_mail("Hello", "Just checking in.", sender="first@customer.test"))
    world.wait_mails_to("first@customer.test", 1, timeout=30)
    zygote, worker = wait_until(zygote_and_worker, 10, "the zygote and its idle worker")

    os.kill(zygote, signal.SIGSTOP)
    try:
        os.kill(worker, signal.SIGKILL)  # the next message needs a new worker
        world.deliver(customer_mail("Printer jammed", "Page 2.", sender="dana@ok.test"))
        world.wait_mails_to("dana@ok.test", 1, timeout=2 + 3 * A_FEW_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed for not answering, as it should
            os.kill(zygote, signal.SIGCONT)
    assert [t["subject"] for t in world.tickets()] == ["Hello", "Printer jammed"]
    wait_until(lambda: not running(zygote, b"maildesk.mail.zygote"), 10, "the stopped one gone")


# --------------------------------------------------------------------------- amplification


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize(
    "world", [limits(new_sender_acks_per_hour=2)], indirect=True, ids=["cap-2"]
)
def test_a_forged_sender_is_not_made_known_by_its_own_forged_mail(world: DeskWorld) -> None:
    """``new_sender_acks_per_hour`` caps acknowledgments to addresses the desk never heard
    from. The forged mail itself once made the address heard from, even when its own
    acknowledgment was held back: each forged victim's second mail was acknowledged, its
    third too, up to the per-address cap (10 an hour): 4 victims x 3 mails gave 10
    acknowledgments carrying the forger's subject, with the cap at 2. Only an address that
    answered the desk's own mail is known now."""
    spam = "Claim your prize at prize.evil.test"
    victims = [f"victim{i}@victims.test" for i in range(4)]
    for _ in range(3):
        for address in victims:
            world.deliver(customer_mail(spam, "You won!", sender=address))
    world.run_once()

    assert len(world.tickets()) == 12  # every ticket is made, the agents told
    acks = sum(len(world.mails_to(a)) for a in victims)
    assert acks <= 2, f"{acks} acknowledgments to forged senders, with the cap at 2"


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize(
    "world", [limits(auto_replies_per_address_per_hour=1)], indirect=True, ids=["1-an-hour"]
)
def test_forged_senders_over_the_loop_cap_alert_the_admin_once_an_hour(world: DeskWorld) -> None:
    """The loop guard holds automatic mail to an address past its hourly cap and alerts the
    admin: once per address. A forger writing twice in the name of each of 6 addresses gave
    the admin 6 alerts; of 1,000 addresses, 1,000."""
    victims = [f"victim{i}@victims.test" for i in range(6)]
    for _ in range(2):
        for address in victims:
            world.deliver(customer_mail("Claim your prize", "You won!", sender=address))
    world.run_once()

    assert [len(world.mails_to(a)) for a in victims] == [1] * 6  # each held at the cap
    alerts = world.mails_to("admin@example.com")
    assert len(alerts) == 1, [str(m.message["Subject"]) for m in alerts]


# --------------------------------------------------------------------------- the metrics port


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def healthz(port: int) -> int:
    """The status of ``/healthz``; 0 when the connection was closed without an answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return int(answer.status)
    except OSError:
        return 0


METRICS_PORT = free_port()


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world",
    [{"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}}],
    indirect=True,
    ids=["metrics"],
)
def test_idle_connections_to_the_metrics_port_cost_the_daemon_nothing_lasting(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    """Whoever reaches ``/metrics`` held one of the daemon's threads per connection for as long
    as they kept it open and said nothing: 80 idle connections, 80 threads more, for ever
    (and at some thousands the daemon could start no thread for its own work)."""
    before = threads_of(daemon.process.pid)
    idle = []
    try:
        for _ in range(80):
            idle.append(socket.create_connection(("127.0.0.1", METRICS_PORT)))
            idle[-1].sendall(b"GET /metr")  # a request begun, never finished
        wait_until(lambda: threads_of(daemon.process.pid) <= before + 32, 20, "threads let go")
        assert wait_until(lambda: healthz(METRICS_PORT) == 200, 20, "/healthz answers")
    finally:
        for connection in idle:
            connection.close()
    world.deliver(customer_mail("Printer jammed", "Page 2.", sender="dana@ok.test"))
    world.wait_mails_to("dana@ok.test", 1, timeout=30)


def unverified_notices(world: DeskWorld) -> list[Any]:
    return [m for m in world.mails_to(ALICE) if "could not verify you" in str(m.message["Subject"])]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_forged_mail_of_many_commands_gives_the_agent_a_short_notice(world: DeskWorld) -> None:
    """The notice about unverified mail quotes at most 20,000 characters of its text, but it
    listed every command the mail held, on one line: 25,000 command lines (175,000
    characters) went into the agent's notice whole."""
    world.deliver(customer_mail("Printer broken", "It prints blank pages.", sender=CUSTOMER))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    forged = customer_mail("Re: Printer broken", "#tag a\n" * 25_000, sender=ALICE, reply_to=ack)
    world.deliver(forged)
    world.run_once()

    [notice] = unverified_notices(world)
    text = text_of(notice)
    assert len(text) < NOTICE_TEXT_CHARS + 5_000, len(text)
    assert "Commands not carried out: #tag a, #tag a" in text
    assert "and 24,980 more" in text


# --------------------------------------------------------------------------- refs and Cc


class CountingThreads:
    """``routing.Threads`` over tickets of ``participants`` addresses each, counting the
    addresses it hands out: the work of reading them (a fake at the protocol the daemon's
    session implements, to weigh the lookups routing makes)."""

    def __init__(self, participants: int) -> None:
        self.addresses = frozenset(f"p{i}@x.test" for i in range(participants))
        self.read = 0

    def by_message_ids(self, message_ids: Sequence[str]) -> TicketView | None:
        return None

    def by_number(self, number: int) -> TicketView | None:
        self.read += len(self.addresses)
        return TicketView(number, "dana@customer.test", self.addresses, "open")


def test_a_subject_full_of_refs_costs_the_lookups_of_a_few(world_identity: Identity) -> None:
    """Each ref in a subject looked its ticket up, participants and all: ``[#1]`` 160 times
    in a subject (998 characters allow 166) on a ticket Cc'd to 18,000 addresses cost the
    daemon 38 s, for every such mail."""

    def read(refs: int) -> int:
        threads = CountingThreads(1_000)
        mail = plain_mail("stranger@x.test", "".join(f"[#{n % 3 + 1}]" for n in range(refs)), "hi")
        assert route(parse(mail), classify(parse(mail), world_identity), threads, world_identity)
        return threads.read

    assert read(20 * GROWTH) == read(20) == 3_000  # each of the three tickets named, once


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_mail_cc_to_thousands_keeps_a_few_participants(world: DeskWorld) -> None:
    """Every Cc of a new ticket's first mail became a participant (who may follow up by ref):
    a header block of 256 KB holds 18,000 addresses, each a row, each read again for every
    mail that names the ticket."""
    cc = [f"person{i}@cc.test" for i in range(3_000)]
    headers = [f"Cc: {', '.join(cc[i : i + 500])}" for i in range(0, len(cc), 500)]
    world.deliver(plain_mail(CUSTOMER, "Printer broken", "It prints blank pages.", *headers))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    ref = str(ack.message["Subject"]).split()[0]

    for sender, subject in ((cc[0], "first"), (cc[-1], "last")):
        world.deliver(customer_mail(f"Re: {ref} {subject}", "Me too.", sender=sender))
    world.run_once()

    [ticket, other] = world.tickets()
    assert [m["from"] for m in ticket["messages"]] == [CUSTOMER, cc[0]]  # the first Cc follows up
    assert other["requester"] == cc[-1]  # the 3,000th is a stranger to it: a ticket of their own
    assert len(participant_rows(world)) == MAX_PARTICIPANTS


def participant_rows(world: DeskWorld) -> list[str]:
    with world.db.transaction() as session:
        return list(session.scalars(select(Participant.address)))
