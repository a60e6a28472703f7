"""Running as a service: the systemd unit verifies, the daemon's log lines are JSON for
journald and log shippers, and SIGHUP reloads the config without dropping work (a bad config
is refused and the running one kept). Real ``maildesk`` processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.demo.world import SmtpServer
from tests.desk import CUSTOMER, DeskWorld, LogReader, customer_mail, text_of, wait_until
from tests.servers import ImapAccount

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "maildesk.service"


def test_the_unit_is_hardened_and_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in (
        "User=maildesk",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/maildesk",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=5min",
    ):
        assert line in text.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this machine's maildesk
    command = shutil.which("maildesk") or sys.executable
    unit = tmp_path / "maildesk.service"
    unit.write_text(text.replace("/opt/maildesk/venv/bin/maildesk", command))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "maildesk.service" not in done.stderr, done.stderr


@pytest.fixture
def world(imap_server: ImapAccount, smtp_server: SmtpServer, tmp_path: Path) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def maildesk(world: DeskWorld, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "MAILDESK_CONFIG": str(world.config_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--log-format", "json", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_run_once_logs_one_json_object_per_line_naming_message_and_ticket(
    world: DeskWorld,
) -> None:
    message = customer_mail("Broken mouse", "It squeaks.")
    world.deliver(message)
    process = maildesk(world, "run", "--once")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)
    about = [x for x in lines if x.get("message_id") == message["Message-ID"].strip("<>")]
    assert about and all(x["ticket"] == "[#1]" for x in about), lines
    [outcome] = [x for x in about if x["logger"] == "maildesk.ingest"]
    assert outcome["mailbox"] == "support" and "new ticket" in outcome["message"]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_sighup_reloads_the_config_and_refuses_a_bad_one(world: DeskWorld) -> None:
    process = maildesk(world, "run")
    logs = LogReader(process.stderr)  # type: ignore[arg-type]
    try:
        logs.wait_for("connected")
        world.deliver(customer_mail("Before", "One."))
        assert "Example Support" in text_of(world.wait_mails_to(CUSTOMER, 1)[-1])

        original = world.config_path.read_text()
        world.config_path.write_text(
            original.replace('name = "Example Support"', 'name = "Acme Help"')
        )
        process.send_signal(signal.SIGHUP)
        logs.wait_for("configuration reloaded")
        world.deliver(customer_mail("After", "Two."))
        assert "Acme Help" in text_of(world.wait_mails_to(CUSTOMER, 2)[-1])

        world.config_path.write_text(original.replace("[[teams]]", "[[teams]\n", 1))
        process.send_signal(signal.SIGHUP)
        refused = logs.wait_for("reload refused")
        assert refused["level"] == "error" and "not valid TOML" in refused["message"]
        world.deliver(customer_mail("Still", "Three."))
        assert "Acme Help" in text_of(world.wait_mails_to(CUSTOMER, 3)[-1])
        assert process.poll() is None  # still running
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0
    deadline = time.monotonic() + 5
    while not any("stopping" in x["message"] for x in logs.lines):
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --------------------------------------------------------------------------- delivery process


def children(pid: int) -> list[int]:
    """The delivery processes the daemon ``pid`` started (not its parse zygote)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [p for p in found if not parse_zygote(p)]


def parse_zygote(pid: int) -> bool:
    try:
        return b"maildesk.mail.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_the_delivery_process_is_started_again_and_dies_with_the_daemon(
    world: DeskWorld,
) -> None:
    """``maildesk run`` sends from a process of its own: killed alone, it is started again and
    mail keeps going out, with every sent mail counted in the daemon's metrics; when the daemon
    is killed (SIGKILL, nothing to clean up), the delivery process goes with it."""
    from maildesk.demo.world import free_port
    from tests.test_metrics import get, sample

    port = free_port()
    with world.config_path.open("a") as config:
        config.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    before = len(world.smtp.messages)

    def all_counted(mails: int) -> bool:
        sent = sample(get(f"http://127.0.0.1:{port}/metrics")[1], "maildesk_mails_sent_total")
        return len(world.smtp.messages) - before == mails and sent == mails

    daemon = maildesk(world, "run")
    assert daemon.stderr is not None
    logs = LogReader(daemon.stderr)
    try:
        [first] = wait_until(lambda: children(daemon.pid), 20, "the delivery process")
        world.deliver(customer_mail("Printer jam", "Paper stuck."))
        # the acknowledgment and a notice to each of the team's two agents
        wait_until(lambda: all_counted(3), 20, "three mails sent and counted")

        os.kill(first, signal.SIGKILL)
        logs.wait_for("the delivery process exited with status 137; starting it again")
        [second] = wait_until(
            lambda: [c for c in children(daemon.pid) if c != first], 20, "a new delivery process"
        )
        world.deliver(customer_mail("Printer jam again", "Still stuck."))
        wait_until(lambda: all_counted(6), 20, "three more mails sent and counted")
        subjects = [str(a.message["Subject"]) for a in world.mails_to(CUSTOMER)]
        assert len(subjects) == 2 and subjects[1].endswith("Printer jam again"), subjects
    finally:
        daemon.kill()
        daemon.wait(10)
    wait_until(lambda: not running(second), 10, "the delivery process to die with the daemon")


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_deliver_once_sends_what_is_waiting(world: DeskWorld) -> None:
    """``maildesk ingest`` (an MTA pipe) only queues the acknowledgment; ``maildesk deliver
    --once`` sends it and exits."""
    message = customer_mail("Lost parcel", "Where is it?")
    queued = world.cli("ingest", input=message.as_bytes())
    assert queued.returncode == 0 and queued.stdout.decode().startswith("new_ticket [#1]")
    assert world.mails_to(CUSTOMER) == []
    sent = world.cli("deliver", "--once")
    assert sent.returncode == 0, sent.stderr.decode()
    [ack] = world.mails_to(CUSTOMER)
    assert "[#1]" in ack.message["Subject"] and "Lost parcel" in ack.message["Subject"]
    assert world.cli("deliver", "--once").returncode == 0  # nothing waiting: nothing twice
    assert len(world.mails_to(CUSTOMER)) == 1


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_ctrl_c_stops_the_daemon_and_its_delivery_process_cleanly(world: DeskWorld) -> None:
    """Ctrl-C in a terminal reaches the whole process group: both processes stop, the daemon
    exits 0, and the delivery process is not taken for crashed and started again."""
    daemon = maildesk(world, "run", start_new_session=True)
    assert daemon.stderr is not None
    logs = LogReader(daemon.stderr)
    try:
        [courier] = wait_until(lambda: children(daemon.pid), 20, "the delivery process")
        world.deliver(customer_mail("Ctrl-C", "Stop me."))
        world.wait_mails_to(CUSTOMER, 1, timeout=20)
        os.killpg(daemon.pid, signal.SIGINT)
        assert daemon.wait(20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    wait_until(lambda: not running(courier), 10, "the delivery process to stop")
    logs.finish()
    assert not [x for x in logs.lines if "delivery process exited" in x["message"]], logs.lines
    assert any("SIGINT received" in x["message"] for x in logs.lines)
