"""``maildesk ingest`` in an MTA's pipe: exit 0 once the message is handled, 75 for every
other end (a config it cannot read, a database down, a signal, a crash...), one short line.

Each command runs as its own process, as an MTA runs it. A ``[[mailboxes]]`` entry with
``transport = "pipe"`` names the mailbox piped mail is filed under; ``run`` does not watch it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk import config
from maildesk.demo import configs
from maildesk.demo.world import Captured, free_port
from maildesk.models import Ledger
from tests.desk import CUSTOMER, DeskWorld, customer_mail, wait_until
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

PIPE_MAILBOX = {"name": "help", "transport": "pipe", "team": "engineering"}

TEMPORARY = "maildesk: temporary failure: "
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables={"mailboxes": [PIPE_MAILBOX]})
    yield w
    w.close()


def ingest(
    config_path: Path,
    *args: str,
    input: bytes = b"",
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``maildesk --config PATH ingest ARGS`` as an MTA's pipe runs it."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "maildesk", "--config", str(config_path), "ingest", *args],
        input=input,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[bytes], config_path: Path) -> str:
    """The failure's whole output: one line on stderr, nothing on stdout, no path in it."""
    assert done.returncode == 75, done.stderr.decode()[-3000:]
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(TEMPORARY)
    assert "/" not in lines[0] and config_path.name not in lines[0]
    assert len(lines[0]) < 100
    return lines[0].removeprefix(TEMPORARY)


def mail(subject: str = "Printer broken", **kwargs: object) -> bytes:
    return customer_mail(subject, "It prints blank pages.", **kwargs).as_bytes()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- handled: exit 0


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_every_handled_outcome_exits_0_filed_under_the_pipe_mailbox(world: DeskWorld) -> None:
    world.rewrite_config(limits={"max_headers": 40})

    new = ingest(world.config_path, input=mail())
    follow_up = ingest(world.config_path, input=mail("Re: [#1] Printer broken"))
    ignored = ingest(
        world.config_path,
        input=mail("Out of office", headers=[("Auto-Submitted", "auto-replied")]),
    )
    crowded = mail("Crowded", headers=[(f"X-Filler-{n}", "x") for n in range(50)])
    quarantined = ingest(world.config_path, input=crowded)

    outputs = [(d.returncode, d.stdout.decode().strip(), d.stderr) for d in (new, follow_up)]
    assert outputs == [(0, "new_ticket [#1]", b""), (0, "follow_up [#1]", b"")]
    assert (ignored.returncode, ignored.stderr) == (0, b"")
    assert ignored.stdout.decode().startswith("ignored - (Auto-Submitted")
    assert (quarantined.returncode, quarantined.stderr) == (0, b"")
    assert quarantined.stdout.decode().startswith("quarantined - (")
    # no --mailbox: the first pipe mailbox, whose team gets the ticket
    [ticket] = world.tickets()
    assert (ticket["team"], len(ticket["messages"])) == ("engineering", 2)
    with world.db.transaction() as session:
        filed = session.execute(select(Ledger.mailbox, Ledger.outcome).order_by(Ledger.id)).all()
    assert [tuple(row) for row in filed] == [
        ("help", "new_ticket"),
        ("help", "follow_up"),
        ("help", "ignored"),
        ("help", "quarantined"),
    ]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_mailbox_names_the_mailbox_and_its_team(world: DeskWorld) -> None:
    done = ingest(world.config_path, "--mailbox", "support", input=mail())
    assert (done.returncode, done.stdout.decode().strip()) == (0, "new_ticket [#1]")
    assert world.tickets()[0]["team"] == "support"


# --------------------------------------------------------------------------- not handled: 75


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_config_the_pipe_cannot_read_exits_75(world: DeskWorld) -> None:
    world.config_path.chmod(0o000)
    # root reads any file: take away that power (uid 0 stays, so the interpreter under a
    # private home is still readable), as an MTA's unprivileged pipe user is without it
    no_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    prefix = no_override if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to read as root without DAC override")
    done = ingest(world.config_path, input=mail(), prefix=prefix)
    assert one_line(done, world.config_path) == (
        "configuration problem (run maildesk check-config as this user)"
    )
    world.config_path.chmod(0o600)
    assert ingest(world.config_path, input=mail()).returncode == 0  # fixed: it goes through
    assert len(world.tickets()) == 1


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_missing_or_invalid_config_or_an_unknown_mailbox_exits_75(world: DeskWorld) -> None:
    missing = ingest(world.config_path.with_name("nowhere.toml"), input=mail())
    assert one_line(missing, world.config_path).startswith("configuration problem")

    unknown = ingest(world.config_path, "--mailbox", "helpdesk", input=mail())
    assert (
        one_line(unknown, world.config_path) == "no mailbox named 'helpdesk' in the configuration"
    )

    good = world.config_path.read_text()
    support, _ = world.tables["mailboxes"]
    smtp_help = {**PIPE_MAILBOX, "transport": "smtp"}
    world.config_path.write_text(
        configs.config_text(**{**world.tables, "mailboxes": [support, smtp_help]})
    )
    invalid = ingest(world.config_path, input=mail())
    assert one_line(invalid, world.config_path).startswith("configuration problem")
    world.config_path.write_text(good + "\n[desk\n")
    assert one_line(ingest(world.config_path, input=mail()), world.config_path).startswith(
        "configuration problem"
    )
    assert world.tickets() == []


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_database_down_or_not_a_database_exits_75(world: DeskWorld, tmp_path: Path) -> None:
    nobody_listens = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/desk"
    world.rewrite_config(database={"url": nobody_listens})
    down = ingest(world.config_path, input=mail())
    assert one_line(down, world.config_path) == "database unavailable"

    # a crash: the database file is not a database at all
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite file\n" * 200)
    garbage.chmod(0o600)
    world.rewrite_config(database={"url": f"sqlite:///{garbage}"})
    crashed = ingest(world.config_path, input=mail())
    assert re.fullmatch(r"internal error \(\w+\)|database unavailable", one_line(crashed, garbage))
    world.rewrite_config(database=None)
    assert world.tickets() == []


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_bad_command_line_or_a_broken_installation_exits_75(
    world: DeskWorld, tmp_path: Path
) -> None:
    usage = ingest(world.config_path, "--mailbx", "help", input=mail())
    assert one_line(usage, world.config_path).startswith("bad command line")

    # a library maildesk needs fails to import (a broken virtualenv, say)
    shadow = tmp_path / "shadow"
    (shadow / "sqlalchemy").mkdir(parents=True)
    (shadow / "sqlalchemy" / "__init__.py").write_text("raise ImportError('broken')\n")
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    broken = ingest(world.config_path, input=mail(), env={"PYTHONPATH": path})
    assert one_line(broken, world.config_path) == (
        "maildesk cannot be loaded (a broken installation?)"
    )
    assert world.tickets() == []


def _worker(pid: int) -> int | None:
    """The parse worker ``ingest`` forks (named ``maildesk-parse``), once it exists."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    for child in path.read_text().split() if path.exists() else ():
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "maildesk-parse":
                return int(child)
        except OSError:
            continue
    return None


def _sleeping(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"


def _started(world: DeskWorld, *, reading: bool = True) -> tuple[subprocess.Popen[bytes], int]:
    """An ingest given no input yet, and its parse worker. ``reading``: once it waits for its
    input (the worker is forked just before it reads); else at once."""
    process = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(world.config_path), "ingest"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    worker = wait_until(lambda: _worker(process.pid), 30, "the parse worker to be forked")
    if reading:
        wait_until(lambda: _sleeping(process.pid), 30, "ingest to wait for its input")
    return process, worker


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize(
    ("signum", "reading"),
    [(signal.SIGTERM, True), (signal.SIGHUP, True), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["TERM-reading", "HUP-reading", "INT-reading", "TERM-at-the-fork"],
)
def test_a_signal_before_the_message_is_handled_exits_75(
    world: DeskWorld, signum: signal.Signals, reading: bool
) -> None:
    """Waiting for the input, or the moment the worker is forked (a signal then arrives in
    an at-fork hook of logging's, whose exception the interpreter swallows)."""
    process, worker = _started(world, reading=reading)
    process.send_signal(signum)
    out, err = process.communicate(mail(), timeout=30)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert one_line(done, world.config_path) == f"stopped by {signum.name}"
    wait_until(lambda: not Path(f"/proc/{worker}").exists(), 10, "the worker to be gone")
    assert world.tickets() == []


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_running_out_of_memory_exits_75(world: DeskWorld) -> None:
    """An ingest whose address space is capped 64 MB above what a waiting one uses (its
    50 MB read buffer included) is sent a 255 MB message, within the desk's
    max_message_bytes: it cannot get the memory to read it. The cap is set from the start
    (``prlimit``): a read already waiting holds its buffer and would not notice one set later."""
    waiting, _ = _started(world)
    status = Path(f"/proc/{waiting.pid}/status").read_text()
    used = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    waiting.kill()
    waiting.communicate()
    world.rewrite_config(limits={"max_message_bytes": 400000000})
    argv = [sys.executable, "-m", "maildesk", "--config", str(world.config_path), "ingest"]
    process = subprocess.Popen(
        ["prlimit", f"--as={used + (64 << 20)}", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    big = mail() + b"x" * (255 << 20)

    def feed() -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(big)
            process.stdin.close()
        except BrokenPipeError:
            pass  # it gave up reading: what this test is about

    writer = threading.Thread(target=feed)
    writer.start()
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.wait(60)
    writer.join(60)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert one_line(done, world.config_path) == "out of memory"
    assert world.tickets() == []


# --------------------------------------------------------------------------- config


def test_a_pipe_mailbox_refuses_imap_keys_and_needs_a_team(tmp_path: Path) -> None:
    base = {
        "desk": {"name": "Help", "address": "help@example.test", "data_dir": tmp_path / "data"},
        "smtp": {"host": "127.0.0.1"},
        "teams": [{"name": "support"}],
    }
    help_box = {"name": "help", "transport": "pipe", "team": "support"}
    path = tmp_path / "maildesk.toml"
    path.write_text(configs.config_text(**base, mailboxes=[help_box]))
    settings = config.load(path)
    assert [(b.name, b.watched) for b in settings.mailboxes] == [("help", False)]
    assert settings.watched == () and settings.ingest_mailbox(None).name == "help"

    path.write_text(
        configs.config_text(**base, mailboxes=[{**help_box, "host": "imap.example.test"}])
    )
    with pytest.raises(config.ConfigError) as refused:
        config.load(path)
    assert str(refused.value) == (
        f'{path}: [[mailboxes]] #1 host: not used by a mailbox with transport = "pipe"; remove it'
    )
    path.write_text(configs.config_text(**base, mailboxes=[{**help_box, "team": None}]))
    with pytest.raises(config.ConfigError, match=r"\[\[mailboxes\]\] #1 team: missing"):
        config.load(path)


# --------------------------------------------------------------------------- the daemon


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_desk_with_only_a_pipe_mailbox_runs_and_sends_what_ingest_queued(
    world: DeskWorld,
) -> None:
    """``run`` watches no mailbox then: it delivers the outbox (what ``ingest`` queued) and
    runs the timers until stopped; ``/healthz`` needs only the database."""
    port = free_port()
    world.tables["mailboxes"] = [PIPE_MAILBOX]  # the support mailbox goes
    world.rewrite_config(metrics={"listen": f"127.0.0.1:{port}"})
    assert [b.name for b in config.load(world.config_path).mailboxes] == ["help"]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(world.config_path), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def health() -> str:
            return _get(f"http://127.0.0.1:{port}/healthz")[1].strip()

        assert wait_until(health, 30, "the daemon to answer /healthz") == "ok"
        assert ingest(world.config_path, input=mail()).returncode == 0
        [ack] = world.wait_mails_to(CUSTOMER, 1, timeout=30)
        assert "[#1]" in str(ack.message["Subject"])
        assert daemon.poll() is None  # still running: nothing to watch is no reason to stop
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err.decode()[-2000:]


def _get(url: str) -> tuple[int, str]:
    """Status and body (0 while nothing listens)."""
    try:
        with DIRECT.open(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:
        return 0, ""


def _scrape(url: str) -> str:
    return _get(url + "/metrics")[1]


def _ingested(text: str, **labels: str) -> float | None:
    """One series of ``maildesk_messages_ingested_total`` in Prometheus text format."""
    for line in text.splitlines():
        match = re.match(r"^maildesk_messages_ingested_total\{(.*)\} (\S+)$", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_piped_mail_is_counted_in_the_running_daemons_metrics(world: DeskWorld) -> None:
    """``ingest`` is another process: it counts each message in the database, and the daemon
    serves what was counted since it started, labelled by the pipe mailbox."""
    port = free_port()
    world.rewrite_config(metrics={"listen": f"127.0.0.1:{port}"})
    world.settings = world.load_settings()
    assert ingest(world.config_path, input=mail("Before the start")).returncode == 0
    world.start()
    url = f"http://127.0.0.1:{port}"
    text = wait_until(lambda: _scrape(url), 20, "/metrics to answer")
    assert _ingested(text, mailbox="help", outcome="new_ticket", reason="") == 0.0

    auto = mail("Away", sender="ooo@customer.test", headers=[("Auto-Submitted", "auto-replied")])
    for raw in (mail("VPN down"), mail("Mail lost", sender="eve@customer.test"), auto):
        assert ingest(world.config_path, input=raw).returncode == 0
    text = _scrape(url)
    assert _ingested(text, mailbox="help", outcome="new_ticket", reason="") == 2.0
    assert _ingested(text, mailbox="help", outcome="ignored", reason="auto_reply") == 1.0
    assert _ingested(text, mailbox="support", outcome="new_ticket", reason="") == 0.0
    # a second scrape counts nothing twice
    assert _ingested(_scrape(url), mailbox="help", outcome="new_ticket", reason="") == 2.0
    # the watched mailbox has a health; the pipe mailbox has none to have
    assert 'maildesk_mailbox_up{mailbox="support"}' in text
    assert 'maildesk_mailbox_up{mailbox="help"}' not in text


# --------------------------------------------------------------------------- check-config


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_check_config_finds_its_probe_where_the_pipe_filed_it(world: DeskWorld) -> None:
    """A pipe mailbox has no login to check; the probe proves the pipe works: the SMTP server
    here plays the MTA and hands what it accepts to ``maildesk ingest``, as the pipe does."""

    def pipe_it(captured: Captured) -> None:
        ingest(world.config_path, "--mailbox", "help", input=captured.raw)

    world.smtp.on_message = pipe_it
    done = world.cli("check-config", "--probe-wait", "30")
    out = done.stdout.decode().splitlines()
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert (
        "ok   mailbox help: fed by the MTA's pipe (maildesk ingest --mailbox help), nothing to "
        "log in to; the probe shows whether mail gets through"
    ) in out
    local, domain = (re.escape(p) for p in world.address.split("@"))
    assert re.fullmatch(
        rf"ok   probe {local}\+probe-[0-9a-f]{{20}}@{domain}: sent with envelope sender "
        rf"{local}\+bounce-\S+@{domain}, arrived in pipe mailbox help \(maildesk ingest\) "
        r"after \d+\.\d s, recorded as ignored",
        out[-1],
    ), out
    assert world.tickets() == [] and len(world.smtp.messages) == 1  # no acknowledgment of it


def test_the_examples_commented_pipe_mailbox_loads(tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    text = example.replace('data_dir = "/var/lib/maildesk"', f'data_dir = "{tmp_path}"')
    block = re.search(r"^# \[\[mailboxes\]\].*?\n(?=\n)", text, re.M | re.S)
    assert block is not None
    uncommented = re.sub(
        r"^# ?(\S+ = \S+|\[\[mailboxes\]\])\s*#.*$", r"\1", block.group(0), flags=re.M
    )
    path = tmp_path / "maildesk.toml"
    path.write_text(text.replace(block.group(0), uncommented))
    settings = config.load(path)
    [piped] = [box for box in settings.mailboxes if not box.watched]
    assert (piped.name, piped.team) == ("billing", "support")
    assert settings.ingest_mailbox(None) == piped
