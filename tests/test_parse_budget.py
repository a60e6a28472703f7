"""A budget for every message: a parse over ``[limits] parse_seconds`` or ``parse_memory_mb`` is
stopped, the message quarantined as ``parse budget exceeded``, and the mail behind it answered.

The poison here is expensive by budget, not by a bug: the budgets are set small and the messages
honestly need more. The time poison is a 20 MB CSV attachment of short lines (not base64): the
standard library's MIME parser splits it line by line in Python, about 3 s here. The memory
poison is a 30 MB base64 attachment: its decoded bytes alone do not fit in 64 MB. Each attack
runs through the real daemon (``maildesk run`` as its own process, so its memory is its own)
against Dovecot and the SMTP capture.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.desk import (
    DeskWorld,
    RunningDaemon,
    customer_mail,
    daemon_peak_mb,
    wait_until,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

REASON = "parse budget exceeded"
A_FEW_SECONDS = 5.0  # what the ordinary mail behind a poison may take beyond parse_seconds
DAEMON_MEMORY_MB = 300
POISONER = "Mallory Poison <mallory@poison.test>"


def csv_poison(megabytes: int, subject: str = "Export attached") -> bytes:
    """A reasonable-looking mail whose attachment is ``megabytes`` of three-byte CSV lines."""
    lines = b"a,b\r\n" * (megabytes * 1024 * 1024 // 5)
    return (
        (
            f"From: {POISONER}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            "Message-ID: <csv-poison@poison.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nThe export you asked for.\r\n"
            '--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="x.csv"\r\n\r\n'
        ).encode()
        + lines
        + b"--b--\r\n"
    )


def attachment_poison(
    megabytes: int, subject: str = "Scan attached", message_id: str = "scan-poison@poison.test"
) -> bytes:
    """A mail with one base64 attachment of ``megabytes`` of random bytes."""
    data = base64.encodebytes(os.urandom(megabytes * 1024 * 1024)).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {POISONER}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nThe scan.\r\n"
            "--b\r\nContent-Type: application/pdf\r\n"
            'Content-Disposition: attachment; filename="scan.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + data
        + b"--b--\r\n"
    )


def limits(**values: Any) -> dict[str, Any]:
    return {"limits": values}


def set_limit(world: DeskWorld, key: str, value: Any) -> None:
    """Change one ``[limits]`` key in the config file, as an admin would."""
    assert key in world.tables["limits"], key
    world.rewrite_config(limits={key: value})


def quarantined(world: DeskWorld) -> list[dict[str, Any]]:
    done = world.cli("quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr.decode()
    return list(json.loads(done.stdout))


def parse_workers(ancestor: int) -> list[int]:
    """The pids of the ``maildesk-parse`` processes below ``ancestor``."""
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
            for kid in kids:
                try:
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "maildesk-parse":
                        found.append(kid)
                except OSError:
                    continue
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, request: Any
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables=request.param)
    yield w
    w.close()


def poison_then_ordinary(
    world: DeskWorld, daemon: RunningDaemon, poison: bytes, seconds: float
) -> tuple[dict[str, Any], float]:
    """Put ``poison`` and then an ordinary customer mail in the inbox; wait for the ordinary
    one's acknowledgment. Returns the quarantine entry and how long the acknowledgment took."""
    world.deliver(poison)
    world.deliver(customer_mail("Printer jammed", "It jams on page 2.", sender="dana@ok.test"))
    appended = time.monotonic()
    world.wait_mails_to("dana@ok.test", 1, timeout=seconds + 60)
    waited = time.monotonic() - appended
    assert daemon.process.poll() is None, "the daemon died"
    [entry] = wait_until(lambda: quarantined(world), 10, "the poison in quarantine")
    wait_until(lambda: world.account.uids("Quarantine"), 10, "the poison moved to Quarantine")
    return entry, waited


def assert_poison_kept(world: DeskWorld, entry: dict[str, Any], subject: str) -> None:
    assert entry["error"] == REASON
    assert "mallory@poison.test" in entry["from"] and entry["subject"] == subject
    assert entry["mailbox"] == "support" and entry["uid"] is not None
    assert world.account.uids("INBOX") == []
    assert len(world.account.uids("Quarantine")) == 1
    assert len(world.account.uids("Processed")) == 2  # the first mail and the ordinary one
    assert world.mails_to("mallory@poison.test") == []  # nothing said to the sender yet
    assert {t["requester"] for t in world.tickets()} == {"first@customer.test", "dana@ok.test"}


def assert_replay_handles_it(world: DeskWorld, entry: dict[str, Any]) -> None:
    done = world.cli("quarantine", "replay", str(entry["id"]))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().startswith(f"{entry['id']}: new_ticket"), done.stdout
    [ticket] = [t for t in world.tickets() if t["requester"] == "mallory@poison.test"]
    assert ticket["subject"] == entry["subject"]
    world.wait_mails_to("mallory@poison.test", 1)  # acknowledged
    assert quarantined(world) == []


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize("world", [limits(parse_seconds=0.5, parse_memory_mb=2048)], indirect=True)
def test_over_time_is_quarantined_and_the_next_mail_answered_within_the_budget(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    entry, waited = poison_then_ordinary(world, daemon, csv_poison(20), 0.5)

    assert waited < 0.5 + A_FEW_SECONDS, f"the ordinary mail waited {waited:.1f} s"
    assert_poison_kept(world, entry, "Export attached")
    peak = daemon_peak_mb(daemon.process.pid)
    print(f"\ntime poison: next mail acknowledged after {waited:.2f} s, daemon peak {peak:.0f} MB")
    assert peak < DAEMON_MEMORY_MB
    [why] = [x for x in daemon.lines() if x["logger"] == "maildesk.parsing"]
    assert why["message_id"] == "csv-poison@poison.test"
    assert "not parsed within 0.5 s (parse_seconds)" in why["message"]

    set_limit(world, "parse_seconds", 60)
    assert_replay_handles_it(world, entry)


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world",
    [limits(parse_seconds=30, parse_memory_mb=64, max_attachment_bytes=40000000)],
    indirect=True,
    ids=["64MB"],
)
def test_over_memory_is_quarantined_and_the_next_mail_answered_within_the_budget(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    entry, waited = poison_then_ordinary(world, daemon, attachment_poison(30), 30)

    assert waited < 30 + A_FEW_SECONDS, f"the ordinary mail waited {waited:.1f} s"
    assert_poison_kept(world, entry, "Scan attached")
    peak = daemon_peak_mb(daemon.process.pid)
    print(
        f"\nmemory poison: next mail acknowledged after {waited:.2f} s, daemon peak {peak:.0f} MB"
    )
    assert peak < DAEMON_MEMORY_MB
    [why] = [x for x in daemon.lines() if x["logger"] == "maildesk.parsing"]
    assert why["message_id"] == "scan-poison@poison.test"
    assert "needs more than 64 MB to parse (parse_memory_mb)" in why["message"]

    set_limit(world, "parse_memory_mb", 512)
    assert_replay_handles_it(world, entry)
    [ticket] = [t for t in world.tickets() if t["requester"] == "mallory@poison.test"]
    [kept] = ticket["messages"][0]["attachments"]
    assert kept["size"] == 30 * 1024 * 1024 and not kept.get("dropped")

    # the running daemon takes the raised limit at a reload: the same kind of mail now passes
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: any("reloaded" in x["message"] for x in daemon.lines()), 10, "reload")
    world.deliver(attachment_poison(30, "Second scan", "second-scan@poison.test"))
    world.wait_mails_to("mallory@poison.test", 2, timeout=60)
    assert "Second scan" in {t["subject"] for t in world.tickets()}
    assert quarantined(world) == []


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world", [limits(parse_seconds=30, parse_memory_mb=64)], indirect=True, ids=["64MB"]
)
def test_ingest_on_a_pipe_quarantines_a_poison_and_exits_0(world: DeskWorld) -> None:
    done = world.cli("ingest", input=attachment_poison(30))

    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == f"quarantined - ({REASON})"
    [entry] = quarantined(world)
    assert entry["error"] == REASON and entry["subject"] == "Scan attached"
    assert entry["uid"] is None  # it came on a pipe, not from a mailbox
    assert parse_workers(os.getpid()) == []  # the command left no worker behind


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world", [limits(parse_seconds=60, parse_memory_mb=2048)], indirect=True, ids=["60s"]
)
def test_a_worker_killed_mid_parse_loses_nothing(world: DeskWorld) -> None:
    """SIGKILL from outside (an admin, the OOM killer) to the worker parsing a slow message:
    the message is parsed again on a fresh worker and handled, and so is the mail behind it."""
    world.start()
    world.deliver(csv_poison(20, subject="Big export"))
    world.deliver(customer_mail("Printer jammed", "It jams on page 2.", sender="dana@ok.test"))

    def busy_worker() -> int | None:
        return next((w for w in parse_workers(os.getpid()) if cpu_seconds(w) > 0.3), None)

    victim = wait_until(busy_worker, 60, "a worker parsing the big message")
    os.kill(victim, signal.SIGKILL)

    world.wait_mails_to("dana@ok.test", 1, timeout=90)
    world.wait_mails_to("mallory@poison.test", 1, timeout=30)
    assert {t["requester"] for t in world.tickets()} == {"mallory@poison.test", "dana@ok.test"}
    assert quarantined(world) == []
    wait_until(lambda: len(world.account.uids("Processed")) == 2, 10, "both moved")
    assert world.account.uids("INBOX") == []
    assert victim not in parse_workers(os.getpid())


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (exited; a zombie not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("imap_server", ["dovecot"], indirect=True)
@pytest.mark.parametrize(
    "world", [limits(parse_seconds=60, parse_memory_mb=2048)], indirect=True, ids=["60s"]
)
def test_a_daemon_killed_mid_parse_leaves_no_parse_process_behind(
    world: DeskWorld, daemon: RunningDaemon
) -> None:
    """SIGKILL to the daemon while a worker is busy: the zygote sees its socket close and
    exits, and the kernel kills the worker with it. The message is handled after a restart."""
    world.deliver(csv_poison(20, subject="Big export"))
    pid = daemon.process.pid

    def busy() -> list[int]:
        workers = parse_workers(pid)
        return workers if any(cpu_seconds(w) > 0.3 for w in workers) else []

    workers = wait_until(busy, 60, "a worker parsing the big message")
    zygote = int(Path(f"/proc/{workers[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert b"maildesk.mail.zygote" in Path(f"/proc/{zygote}/cmdline").read_bytes()
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)

    for left in (*workers, zygote):
        wait_until(lambda: gone(left), 10, f"process {left} gone")  # noqa: B023
    again = RunningDaemon(world, daemon.log.with_name("again.log"))
    try:
        world.wait_mails_to("mallory@poison.test", 1, timeout=90)
    finally:
        again.stop()
    assert {t["requester"] for t in world.tickets()} == {
        "first@customer.test",
        "mallory@poison.test",
    }
