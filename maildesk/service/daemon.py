"""The asyncio shell: one loop per mailbox (IDLE or polling), the outbox loop, signals, stop.

Blocking work (IMAP, parsing, the database) runs in worker threads; this module only schedules
it. Each mailbox loop fetches what is waiting, hands each message to ``ingest.process`` (one
transaction each), then moves the batch on the server after the commits. A committed message
wakes the outbox loop at once, so a customer's acknowledgment leaves within moments of arrival.

``maildesk run`` runs the outbox loop in a delivery process of its own (``maildesk deliver
--supervised``), woken through a pipe. Ingestion and SMTP then use two cores; in one process
they take turns for the interpreter lock, and the event loop waits up to a switch interval
(5 ms) for it on every SMTP reply, which halved the backlog drain. The delivery process dies
with the daemon, is started again if it is killed alone, and reports each delivery for the
metrics, its progress for the watchdog and its database outages.

Never alive and idle: an outage (a mailbox, SMTP, the database) is logged once when it starts
and once when it ends, retried with backoff and jitter, and alerted to the admin after five
consecutive failures; a loop that meets the database down waits until a probe finds it
answering again (every few seconds), then goes on by itself. Any other error that escapes a
loop stops the whole daemon, delivery process included, with exit status 70 so that systemd
starts it afresh; ``watchdog`` stops telling systemd the daemon is alive while a loop makes no
progress.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from maildesk import config
from maildesk.act import automation, bounces, ingest, outbox, oversize, samples
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.config import ConfigError, MailboxSettings, Settings
from maildesk.mail.imap import Mailbox, MailboxError, MailboxLoginError, RawMail
from maildesk.mail.inbound import Inbound
from maildesk.mail.parsing import Parsing
from maildesk.models import Database, DatabaseError, Lease, Outbox, Session
from maildesk.service import oauth
from maildesk.service.watchdog import Notifier, Pulse, Watchdog
from maildesk.service.wiring import desk_for

if TYPE_CHECKING:
    from maildesk.service.metrics import Metrics, MetricsServer

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

ALERT_AFTER = 5
MAX_BACKOFF = 300.0
BACKOFF_BASE = 1.0  # seconds; the outage tests shrink it to see five failures quickly
# a database that is down is probed at least this often: work resumes within seconds of it
# answering again
DATABASE_MAX_BACKOFF = 5.0
EX_SOFTWARE = 70  # sysexits.h: a loop failed on an error that no outage explains
# seconds the loops get to finish after a loop failed (or after SIGTERM) before the daemon
# exits without them: a thread blocked in a read or a lock must not keep a dead daemon alive
FATAL_GRACE = 10.0
STOP_GRACE = 30.0  # within the unit's TimeoutStopSec
PULSE_REPORTS = 1.0  # seconds between the delivery process's reports of its progress
# How the daemon tells its delivery process to finish the mails in hand and exit. Not SIGTERM:
# systemd's default KillMode=control-group sends SIGTERM to every process of the service at
# once, and the delivery process (like the parse zygote and workers) ignores it, so that the
# daemon's own stop is the one stop. It starts with these signals blocked until it has set
# what they do, so that none can end it halfway through its start.
STOP_DELIVERY = signal.SIGUSR1
OWN_STOP = frozenset({signal.SIGTERM, signal.SIGINT, STOP_DELIVERY})
# Without systemd's watchdog, how long a loop may go without progress before /healthz names it
# (the unit's WatchdogSec); under it, its interval.
STALLED_AFTER = 300.0
OUTBOX_BATCH = 200
OUTBOX_CONNECTIONS = 8
CLAIM_LEASE = timedelta(minutes=2)
LEASE_TTL = timedelta(seconds=float(os.environ.get("MAILDESK_LEASE_SECONDS", "30")))
MOVE_BATCH = 100
TIMER_SECONDS = 60.0  # reminders, auto-close and SLA checks


class Loop(StrEnum):
    """The daemon's loops, by the names fault injection uses."""

    MAILBOX = "mailbox"  # each mailbox's loop (IMAP, ingestion)
    PARSER = "parser"  # a mailbox loop's use of the parse workers, in its worker thread
    TIMERS = "timers"
    OUTBOX = "outbox"  # the delivery loop (in the delivery process under ``run``)
    COURIER = "courier"  # the daemon's supervision of its delivery process
    METRICS = "metrics"  # the /metrics and /healthz server's thread


class InjectedFault(RuntimeError):
    """Raised by a loop that the daemon's ``faults`` name (tests): an error no outage
    explains, as a bug would raise."""


class Report(StrEnum):
    """What the delivery process tells the daemon through its pipe, a line each, besides
    each delivery's outcome (``sent``, ``retry``, ``failed``)."""

    PULSE = "pulse"  # its delivery loop's progress: ``pulse beat AGE`` or ``pulse rest LEFT``
    DATABASE_DOWN = "database-down"  # its database outage began: ``database-down ERROR``
    DATABASE_UP = "database-up"  # and ended


HERE = "daemon"  # where a database outage is seen: in the daemon's own loops ...
ELSEWHERE = "delivery process"  # ... or in its delivery process


class Courier:
    """The daemon's handle on its delivery process: wake it, tell it intake is over, stop it.

    Forked at start-up, before any thread exists, it has nothing to import again: a fresh
    interpreter took about a second to get going, which a short ``run --once`` waited for.
    When it has to be started again later (it died), it is spawned as ``maildesk deliver``.
    Either way it starts with ``OWN_STOP`` blocked: SIGTERM and SIGINT are the daemon's to act
    on, ``STOP_DELIVERY`` from the daemon is its stop (``Daemon.deliver`` sets them up)."""

    def __init__(self, pid: int, wake_fd: int, report_fd: int) -> None:
        self.pid = pid
        self._wake_fd: int | None = wake_fd
        self._report_fd = report_fd
        self._lock = threading.Lock()
        self._reaping = threading.Lock()
        self._exited = False
        self._terminated = False
        self._code: int | None = None
        os.set_blocking(wake_fd, False)

    @classmethod
    def fork(cls, child: Callable[[], int]) -> Courier:
        """Fork and run ``child()`` in the new process, which exits with what it returns.
        Only while the caller has no other thread (a fork copies only the calling one)."""
        wake_r, wake_w = os.pipe()
        report_r, report_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, OWN_STOP)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid == 0:  # the delivery process
            code = 70
            try:
                os.close(wake_w)
                os.close(report_r)
                os.dup2(wake_r, 0)
                os.dup2(report_w, 1)
                os.close(wake_r)
                os.close(report_w)
                code = child()
            except BaseException:  # noqa: BLE001 - whatever happens, never return to the daemon's code
                log.exception("the delivery process failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(wake_r)
        os.close(report_w)
        return cls(pid, wake_w, report_r)

    @classmethod
    def spawn(cls, argv: Sequence[str]) -> Courier:
        """Start ``maildesk deliver --supervised-by PID`` (its stdin and stdout our pipes)."""
        wake_r, wake_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            pid = os.posix_spawn(
                argv[0],
                list(argv),
                dict(os.environ),
                file_actions=[(os.POSIX_SPAWN_DUP2, wake_r, 0), (os.POSIX_SPAWN_DUP2, report_w, 1)],
                setsigmask=OWN_STOP,
            )
        finally:
            os.close(wake_r)
            os.close(report_w)
        return cls(pid, wake_w, report_r)

    def wake(self, *, last: bool = False) -> None:
        """New mail in the outbox; ``last``: and no more will come (it exits when done)."""
        with self._lock:
            if self._wake_fd is None:
                return
            try:
                os.write(self._wake_fd, b"\n")
            except (BlockingIOError, BrokenPipeError):
                pass  # a full pipe holds wake-ups enough; a dead process is seen by wait()
            if last:
                os.close(self._wake_fd)
                self._wake_fd = None

    def terminate(self) -> None:
        """Ask it to finish the mails in hand and exit (``STOP_DELIVERY``), once."""
        if not self._terminated:
            self._terminated = True
            self._signal(STOP_DELIVERY)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with self._lock:
            if not self._exited:
                os.kill(self.pid, sig)

    def wait(self) -> int:
        """Block until it exits; its exit code (negative: the signal that killed it). Any
        number of threads may wait: one reaps it, the others are told the same code."""
        with self._reaping:
            if self._code is None:
                _, status = os.waitpid(self.pid, 0)
                self._code = os.waitstatus_to_exitcode(status)
                with self._lock:
                    self._exited = True
                    if self._wake_fd is not None:
                        os.close(self._wake_fd)
                        self._wake_fd = None
            return self._code

    def read_reports(self, told: Callable[[str], None]) -> None:
        """Pass on each line it reports (``Report``), until it exits (run in a thread)."""
        with os.fdopen(self._report_fd, "rb") as reports:
            for line in reports:
                told(line.decode("ascii", "replace").strip())


@dataclass
class Health:
    """Consecutive failures of one dependency, for one log line per outage and one alert."""

    name: str
    failures: int = 0
    alerted: bool = False
    last_ok: datetime | None = None
    last_error: str = ""
    down_since: datetime | None = None
    # who sees it failing (the database: the daemon, its delivery process); down while any does
    failing: set[str] = field(default_factory=set)

    def failed(self, error: str, now: datetime, seen_by: str = "") -> tuple[bool, bool]:
        """Record a failure; returns (first failure of the outage, time to alert)."""
        first = not self.failing
        self.failing.add(seen_by)
        self.failures += 1
        self.last_error = error
        if first:
            self.down_since = now
        alert = self.failures >= ALERT_AFTER and not self.alerted
        if alert:
            self.alerted = True
        return first, alert

    def ok(self, now: datetime, seen_by: str = "") -> tuple[bool, bool]:
        """Record a success; returns (recovered from an outage, send a recovery alert). The
        outage goes on while another still sees it failing."""
        self.failing.discard(seen_by)
        if self.failing:
            return False, False
        recovered = self.failures > 0
        recovery_alert = self.alerted
        self.failures = 0
        self.alerted = False
        self.last_ok = now
        self.down_since = None
        return recovered, recovery_alert


CRASH_AT = frozenset(filter(None, os.environ.get("MAILDESK_CRASH_AT", "").split(",")))


def crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: die like ``kill -9`` at a named point
    (``after_fetch``, ``after_commit``, ``after_move``, ``after_send``) when
    ``MAILDESK_CRASH_AT`` names it. Does nothing otherwise."""
    if name in CRASH_AT:
        os._exit(137)


def _die_with_parent(daemon: int) -> None:
    """Linux: the kernel kills this process when the daemon that started it dies, even by
    SIGKILL, so a crashed daemon never leaves a delivery process behind. Elsewhere the end of
    its standard input tells it the same, a moment later."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != daemon:  # it died while this process was starting: do as if killed
        os._exit(128 + signal.SIGKILL)


def _tell_parent(lines: str) -> None:
    """Lines for the daemon, on the delivery process's standard output (its pipe)."""
    os.write(1, f"{lines}\n".encode("ascii", "replace"))


def backoff_seconds(failures: int, cap: float = MAX_BACKOFF) -> float:
    """1 s, 2 s, 4 s ... up to ``cap`` (times ``BACKOFF_BASE``), with jitter in the upper half."""
    base = min(BACKOFF_BASE * 2.0 ** max(failures - 1, 0), cap)
    return base * random.uniform(0.5, 1.0)


def take_lease(db: Database, name: str, holder: str) -> bool:
    """Take or renew the lease ``name`` for ``holder``: one consumer per mailbox at a time.

    A lease not renewed within ``LEASE_TTL`` (its holder died) is taken over; the fence counts
    takeovers. Real time, not the injected clock: leases are about live processes.
    """
    now = datetime.now(UTC)
    try:
        with db.transaction() as session:
            query = select(Lease).where(Lease.name == name)
            if not db.is_sqlite:
                query = query.with_for_update()
            lease = session.scalar(query)
            if lease is None:
                session.add(Lease(name=name, holder=holder, expires_at=now + LEASE_TTL, fence=1))
                return True
            if lease.holder != holder and lease.expires_at > now and holder_alive(lease.holder):
                return False
            if lease.holder != holder:
                log.info("taking over %s from %s (lease expired)", name, lease.holder)
                lease.fence += 1
            lease.holder = holder
            lease.expires_at = now + LEASE_TTL
            return True
    except IntegrityError:  # another daemon created it first
        return False


def holder_alive(holder: str) -> bool:
    """False when ``holder`` was a process on this host that no longer runs (killed or crashed):
    its lease need not be waited out. Holders on other hosts count as alive until they expire."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # killed but not yet reaped by its parent (or init): a zombie holds nothing
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[:1]
    except OSError:  # no /proc here
        return True
    return state not in ([b"Z"], [b"X"])


def release_lease(db: Database, name: str, holder: str) -> None:
    """Give the lease up at a clean stop, so another daemon need not wait for it to expire."""
    try:
        with db.transaction() as session:
            lease = session.get(Lease, name)
            if lease is not None and lease.holder == holder:
                lease.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    except DatabaseError as exc:  # an outage, which the loops report: it expires by itself
        log.debug("could not release %s: %s", name, exc)


@dataclass
class Daemon:
    settings: Settings
    db: Database
    desk: Desk
    once: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    health: dict[str, Health] = field(default_factory=dict)
    on_outcome: Callable[[str, ingest.Outcome], None] | None = None
    # how to start the delivery process; empty: the outbox loop runs in this process (tests)
    courier_argv: tuple[str, ...] = ()
    courier: Courier | None = None  # the delivery process, when already started
    # systemd's notification socket and watchdog (``Type=notify``), when it started the daemon
    notifier: Notifier | None = None
    # fault injection (tests): these loops raise ``InjectedFault`` once they are running ...
    faults: frozenset[Loop] = frozenset()
    # ... and these (mailbox, timers, outbox) stop making progress, as if stuck, until stopped
    stalls: frozenset[Loop] = frozenset()
    # the clock the loops' progress is measured by (tests inject one)
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.stopping = threading.Event()
        self.wake_outbox = asyncio.Event()
        # set once nothing more will be enqueued (``--once`` after the mailboxes and timers,
        # or the daemon gone, for a delivery process): the outbox loop ends when idle
        self.intake_done = asyncio.Event()
        self.exit_code = 0
        self.stuck: set[Loop] = set()  # the loops of ``stalls`` that got there
        self._tasks: set[asyncio.Task[None]] = set()
        # set when the daemon exits with loops still busy in threads (``run``'s caller must
        # then end the process without waiting for them)
        self.abandoned = False
        # a delivery process's line to the daemon that started it (``Report``)
        self.parent: Callable[[str], None] | None = None
        self.mailboxes: dict[str, Mailbox] = {}
        self.unreachable: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        # every mailbox loop has made its first attempt: systemd may call the daemon started
        self.ready = asyncio.Event()
        self._tried: set[str] = set()
        self.pulses: dict[str, Pulse] = {}
        for box in self.settings.watched:  # a pipe mailbox is fed by ``ingest``, not watched
            self.health[f"mailbox:{box.name}"] = Health(box.name)
            self.pulses[f"mailbox:{box.name}"] = Pulse(f"mailbox {box.name}", clock=self.monotonic)
        self.health["smtp"] = Health("smtp")
        self.health["database"] = Health("database")
        self.pulses["timers"] = Pulse("timers", clock=self.monotonic)
        self.pulses["outbox"] = Pulse("delivery", clock=self.monotonic)
        self.database_up = asyncio.Event()  # cleared while this process finds it down
        self.database_up.set()
        self._database_watch: asyncio.Task[None] | None = None
        self._waiting: set[Pulse] = set()  # loops waiting for the database to answer
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.tokens: dict[str, oauth.TokenSource] = {}
        self.boxes = tuple(self._with_token(box) for box in self.settings.watched)
        self.smtp_token = oauth.token_source(
            "SMTP", self.settings.smtp, self.settings.smtp.auth, self._token_failed
        )

    def _with_token(self, box: MailboxSettings) -> MailboxSettings:
        """The mailbox's settings with its XOAUTH2 token source wired in (when it has one)."""
        source = oauth.token_source(f"mailbox {box.name}", box, box.auth, self._token_failed)
        if source is None:
            return box
        self.tokens[box.name] = source
        return dataclasses.replace(box, oauth_token=source)

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        """Run until stopped (or, with ``once``, until everything waiting is handled).

        After a loop failed (or SIGTERM), the others get ``FATAL_GRACE`` (``STOP_GRACE``) to
        finish; those still busy then are left behind (``abandoned``) and the caller ends the
        process."""
        self.loop = asyncio.get_running_loop()
        self._install_signals()
        self.start_metrics()
        work = asyncio.create_task(self._serve())
        try:
            await self._until_done(work)
        finally:
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self.abandoned and self.courier is not None:
                self.courier.kill()
        if self.exit_code:
            return self.exit_code
        return 1 if self.unreachable else 0

    async def _serve(self) -> None:
        boxes = [self._task(f"mailbox {box.name}", self.mailbox_loop(box)) for box in self.boxes]
        timers = self._task("timers", self.timer_loop(boxes))
        sender = (
            self._task("the delivery process's supervision", self.courier_loop())
            if self.courier_argv
            else self._task("the delivery loop", self.outbox_loop())
        )
        if not boxes:
            self.ready.set()
        watchdog = None
        if self.notifier is not None and not self.once:
            dog = Watchdog(self.notifier, self.pulses.values, self._status)
            watchdog = self._task("the watchdog", dog.run(self.ready, self.stop))
        if boxes:
            await asyncio.wait(boxes)
        elif not self.once:
            await self.stop.wait()  # only pipe mailboxes: deliver and run timers until stopped
        if not self.once:
            self.request_stop()
        await timers
        self.intake_done.set()
        self._wake_now()
        await sender
        helpers = [t for t in (watchdog, self._database_watch) if t is not None]
        if not self.stop.is_set():  # ``once``: nothing else ends them
            for helper in helpers:
                helper.cancel()
        if helpers:
            await asyncio.wait(helpers)

    async def _until_done(self, work: asyncio.Task[None]) -> None:
        """Wait for ``work``; once stopped, for a bounded time only."""
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait((work, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not work.done():
            grace = FATAL_GRACE if self.exit_code else STOP_GRACE
            await asyncio.wait((work,), timeout=grace)
        if work.done():
            work.result()
            return
        busy = sorted(t.get_name() for t in self._tasks if not t.done())
        log.error(
            "%s still busy %g s after the stop; exiting without waiting any longer",
            ", ".join(busy) or "a loop",
            grace,
        )
        self.abandoned = True
        self.exit_code = self.exit_code or EX_SOFTWARE

    def _task(self, what: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """``work`` as a task named ``what``; an error escaping it stops the daemon."""
        task = asyncio.create_task(self._guarded(what, work), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - not an outage: a restart may mend it, idling won't
            self.fail(what, exc)

    def fail(self, what: str, error: BaseException | str) -> None:
        """``what`` failed on an error no outage explains: log it (with its traceback), stop
        every loop and exit ``EX_SOFTWARE``, for systemd to start the daemon afresh."""
        if isinstance(error, BaseException):
            log.critical(
                "%s failed: %s: %s; stopping the daemon",
                what,
                type(error).__name__,
                error,
                exc_info=error,
            )
        else:
            log.critical("%s %s; stopping the daemon", what, error)
        self.exit_code = self.exit_code or EX_SOFTWARE
        self.request_stop()

    def _fault(self, where: Loop) -> None:
        """Fault injection (tests): fail here as a bug would, when ``faults`` names ``where``."""
        if where in self.faults:
            raise InjectedFault(f"fault injected into the {where} loop")

    async def _stall(self, where: Loop) -> None:
        """Fault injection (tests): make no more progress here, as a loop stuck in a read or a
        lock, until the daemon stops, when ``stalls`` names ``where``."""
        if where in self.stalls:
            self.stuck.add(where)
            await self.stop.wait()

    def stalled_after(self) -> float:
        """Seconds a loop may go without progress: systemd's watchdog interval, if any."""
        interval = self.notifier.interval if self.notifier is not None else None
        return interval or STALLED_AFTER

    def _attempted(self, mailbox: str) -> None:
        """A mailbox loop made its first attempt (connected, or failed, or found the mailbox
        taken): once all have, the daemon is up, if only half (its health says which half)."""
        self._tried.add(mailbox)
        if len(self._tried) >= len(self.boxes):
            self.ready.set()

    def _status(self) -> str:
        """One line for ``systemctl status``: what is watched, and what is failing."""
        failing = sorted(key.replace(":", " ") for key, h in self.health.items() if h.failures)
        watching = f"watching {len(self.boxes)} mailbox{'' if len(self.boxes) == 1 else 'es'}"
        return watching + (f"; failing: {', '.join(failing)}" if failing else "")

    async def deliver(self, *, supervised_by: int | None = None) -> int:
        """``maildesk deliver``: the outbox loop alone.

        Supervised (started by ``run``, whose pid is given): a line on standard input means new
        mail, the end of input means the daemon is finished or gone; each delivery outcome, its
        progress and its database outages are written to standard output for the daemon
        (``Report``)."""
        self.loop = asyncio.get_running_loop()
        self._install_signals()
        helpers: list[asyncio.Task[None]] = []
        if supervised_by is not None:
            _die_with_parent(supervised_by)
            self._obey_the_daemon()
            self.parent = _tell_parent
            helpers.append(asyncio.create_task(self._follow_parent()))
            helpers.append(self._task("progress reports", self._report_progress()))
        elif self.once:
            self.intake_done.set()
        await self._guarded("the delivery loop", self.outbox_loop())
        self.stop.set()
        for helper in (*helpers, self._database_watch):
            if helper is not None:
                helper.cancel()
        if self.exit_code:
            return self.exit_code
        return 1 if self.unreachable else 0

    def _obey_the_daemon(self) -> None:
        """A delivery process stops when its daemon says so (``STOP_DELIVERY``), or when the
        daemon is gone (the end of its standard input), never on a signal of its own: Ctrl-C
        reaches the whole process group, and systemd's default ``KillMode=control-group``
        sends SIGTERM to every process of the service. Quitting then, beside the daemon's
        own stop, would cut a mail short and look like a crash to the daemon; instead the
        daemon stops it after its own work. It was started with these signals blocked."""
        assert self.loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        self.loop.add_signal_handler(STOP_DELIVERY, self._told_to_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, OWN_STOP)

    def _told_to_stop(self) -> None:
        log.debug("the daemon stops delivery: finishing the mails in hand")
        self.request_stop()

    async def _report_progress(self) -> None:
        """Tell the daemon how the delivery loop is doing, every second (for its watchdog)."""
        assert self.parent is not None
        while not self.stop.is_set():
            self.parent(f"{Report.PULSE} {self.pulses['outbox'].describe()}")
            await self.pause(PULSE_REPORTS)

    async def _follow_parent(self) -> None:
        assert self.loop is not None
        reader = asyncio.StreamReader()
        # fd 0 itself, not sys.stdin: the daemon's pipe was put there after the interpreter
        # set sys.stdin up (and the daemon may have been started with no stdin at all)
        wakes = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the loop
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), wakes)
        while await reader.read(4096):
            self.wake_outbox.set()
        self.intake_done.set()
        self.wake_outbox.set()

    def wake(self) -> None:
        """There is new mail in the outbox (callable from any thread)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake_now)

    def _wake_now(self) -> None:
        self.wake_outbox.set()
        if self.courier is not None:
            self.courier.wake(last=self.intake_done.is_set())

    def start_metrics(self) -> None:
        """Count outcomes always; serve ``/metrics`` and ``/healthz`` when ``[metrics] listen``."""
        listen = self.settings.metrics.listen
        if listen is None:
            return
        from maildesk.service.metrics import Metrics  # prometheus_client only when asked for

        piped = [box.name for box in self.settings.mailboxes if not box.watched]
        self.metrics = Metrics(
            self.db,
            self.boxes,
            self.health,
            self.desk.clock,
            piped,
            database_failed=self._database_failed_elsewhere,
            loops=self.pulses.values,
            stalled_after=self.stalled_after(),
        )
        try:
            self.metrics_server = self.metrics.serve(
                listen, on_failure=self._metrics_failed, tick=lambda: self._fault(Loop.METRICS)
            )
        except OSError as exc:
            raise ConfigError(
                f"{self.settings.path}: [metrics] listen: cannot listen on {listen}: {exc.strerror}"
            ) from None

    def _database_failed_elsewhere(self, error: str) -> None:
        """The metrics server's thread found the database down: the outage begins."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(
                self._guarded("the database's health", self._database_failed(error, HERE)),
                self.loop,
            )

    def _metrics_failed(self, error: BaseException) -> None:
        """The metrics server's thread died (called in it)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.fail, "the metrics server", error)

    def _install_signals(self) -> None:
        assert self.loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        except (NotImplementedError, RuntimeError):
            pass

    def _on_hangup(self) -> None:
        assert self.loop is not None
        self.loop.create_task(asyncio.to_thread(self.reload))

    def reload(self) -> bool:
        """SIGHUP: read the config again and swap in its templates, agents and teams.

        Work in hand finishes with the old ones; the next message uses the new. A config that
        does not load, or a template that fails with sample data, is refused with one log line
        and the running one is kept (its templates as they were read when they were checked).
        Mailbox, SMTP, database and metrics settings take effect at the next restart.
        """
        try:
            settings = config.load(self.settings.path)
            desk = desk_for(
                settings, store=self.desk.store, clock=self.desk.clock, parser=self.desk.parser
            )
            # every template rendered with sample data before the first mail needs one
            samples.require(desk)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. a template that does not compile
            log.error(
                "reload refused, keeping the running configuration: %s: %s",
                type(exc).__name__,
                exc,
            )
            return False
        unchanged = [
            key
            for key, old, new in (
                ("[[mailboxes]]", self.settings.mailboxes, settings.mailboxes),
                ("[smtp]", self.settings.smtp, settings.smtp),
                ("[database]", self.settings.database_url, settings.database_url),
                ("[metrics]", self.settings.metrics, settings.metrics),
            )
            if old != new
        ]
        self.desk = desk
        self.settings = dataclasses.replace(
            settings,
            mailboxes=self.settings.mailboxes,
            smtp=self.settings.smtp,
            database_url=self.settings.database_url,
            metrics=self.settings.metrics,
        )
        log.info(
            "configuration reloaded: %d teams, %d agents, templates from %s",
            len(settings.teams),
            len(settings.agents),
            settings.desk.templates_dir or "the package",
        )
        if unchanged:
            log.warning("changes to %s take effect at the next restart", ", ".join(unchanged))
        return True

    def _on_signal(self, sig: int) -> None:
        if self.stop.is_set():
            if sig == signal.SIGTERM:  # a stop is a stop: SIGKILL is there for "at once"
                log.info("SIGTERM received again: still finishing the message in hand")
                return
            log.warning("second %s: exiting at once", signal.Signals(sig).name)
            os._exit(1)
        log.info(
            "%s received: finishing the message in hand, then stopping", signal.Signals(sig).name
        )
        self.request_stop()

    def request_stop(self) -> None:
        self.stop.set()
        self.stopping.set()
        self.wake_outbox.set()
        if self.courier is not None:
            self.courier.terminate()  # it finishes the mails in hand
        for box in list(self.mailboxes.values()):
            interrupt = getattr(box, "interrupt", None)
            if interrupt is not None:
                interrupt()

    async def pause(self, seconds: float, pulse: Pulse | None = None) -> None:
        """Wait ``seconds`` or until stopped, whichever comes first (``pulse``: the loop that
        waits, resting meanwhile)."""
        if pulse is not None:
            pulse.rest(seconds)
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass
        if pulse is not None:
            pulse.beat()

    # ------------------------------------------------------------------ mailboxes

    async def mailbox_loop(self, box: MailboxSettings) -> None:
        lease = f"mailbox:{box.name}"
        pulse = self.pulses[lease]
        try:
            while not self.stop.is_set():
                try:
                    if await self._mailbox_round(box, lease, pulse):
                        return
                except DatabaseError as exc:
                    self._attempted(box.name)
                    if self.once:
                        self.unreachable.append(f"mailbox {box.name}: database: {exc}")
                        return
                    await self._database_down(str(exc), pulse)
        finally:
            await asyncio.to_thread(release_lease, self.db, lease, self.holder)

    async def _mailbox_round(self, box: MailboxSettings, lease: str, pulse: Pulse) -> bool:
        """Take the mailbox's lease and consume it; True when the loop is done."""
        taken = await asyncio.to_thread(take_lease, self.db, lease, self.holder)
        await self._database_works()
        if not taken:
            self._attempted(box.name)
            if self.once:
                log.info("mailbox %s is being handled by another daemon; skipping", box.name)
                return True
            await self.pause(LEASE_TTL.total_seconds() / 3, pulse)
            return False
        return await self.consume(box, self.health[lease], lease, pulse) or self.once

    async def consume(self, box: MailboxSettings, health: Health, lease: str, pulse: Pulse) -> bool:
        """Connect and handle mail until stopped; False when the caller should retry later.
        A ``DatabaseError`` is the caller's to handle (the connection is closed first)."""
        mailbox = Mailbox(box, max_message_bytes=self.settings.limits.max_message_bytes)
        self.mailboxes[box.name] = mailbox
        try:
            await asyncio.to_thread(mailbox.connect)
            self._attempted(box.name)
            await self._healthy(health, f"mailbox {box.name}")
            while not self.stop.is_set():
                await asyncio.to_thread(self.drain, box, mailbox)
                await self._healthy(health, f"mailbox {box.name}")
                pulse.beat()
                if self.once or self.stop.is_set():
                    return True
                wait = min(box.poll_seconds, LEASE_TTL.total_seconds() / 3)
                pulse.rest(wait)  # IDLE ends by itself: the server's news, or the deadline
                await asyncio.to_thread(mailbox.wait, wait)
                pulse.beat()
                self._fault(Loop.MAILBOX)
                await self._stall(Loop.MAILBOX)
                if not await asyncio.to_thread(take_lease, self.db, lease, self.holder):
                    log.warning("lost the lease on mailbox %s to another daemon", box.name)
                    return False
            return True
        except MailboxError as exc:
            self._attempted(box.name)
            if isinstance(exc, MailboxLoginError) and box.name in self.tokens:
                self.tokens[box.name].invalidate()  # refused: fetch a fresh token next time
            await self._failed(health, f"mailbox {box.name}", str(exc))
            if self.once:
                self.unreachable.append(f"mailbox {box.name}: {exc}")
                return True
            await self.pause(backoff_seconds(health.failures), pulse)
            return False
        finally:
            self.mailboxes.pop(box.name, None)
            await asyncio.to_thread(mailbox.close)

    def drain(self, box: MailboxSettings, mailbox: Mailbox) -> None:
        """Handle every message waiting in the folder; move each batch after its commits."""
        while not self.stopping.is_set():
            uids = mailbox.pending()
            if uids or not self.once:
                # the first worker starts now, ready for the first message (not for a
                # ``run --once`` that finds nothing to do)
                self.desk.parser.start(ingest.budget_of(self.desk))
                self._fault(Loop.PARSER)
            if not uids:
                return
            for start in range(0, len(uids), MOVE_BATCH):
                self.drain_batch(box, mailbox, uids[start : start + MOVE_BATCH])
                if self.stopping.is_set():
                    return

    def drain_batch(self, box: MailboxSettings, mailbox: Mailbox, uids: list[int]) -> None:
        """Fetch, handle and commit each message of ``uids``, then move them in one go.

        A message's parse starts in its worker process as soon as the message is fetched, and
        runs while the message before it is committed: the daemon does not wait for it. A large
        message (over ``ingest.RAW_IN_DATABASE``) is handled alone, so that two are never held
        at once."""
        done: dict[Literal["processed", "quarantine"], list[int]] = {
            "processed": [],
            "quarantine": [],
        }
        budget = ingest.budget_of(self.desk)
        ahead: tuple[RawMail, Parsing] | None = None  # fetched, its parse under way
        try:
            for raw in mailbox.fetch(uids):
                if self.stopping.is_set():
                    break
                crash_point("after_fetch")
                before, ahead = ahead, None
                parsed = before[1].result() if before is not None else None
                if not raw.too_large and len(raw.raw) <= ingest.RAW_IN_DATABASE:
                    ahead = (raw, self.desk.parser.begin(raw.raw, budget))
                if before is not None:
                    self._ingest(box, before[0], parsed, done)
                if ahead is None:
                    self._ingest(box, raw, None, done)
                # let go of this message's bytes before the generator fetches the next one
                del raw
            if ahead is not None and not self.stopping.is_set():
                last, parsing = ahead
                ahead = None
                self._ingest(box, last, parsing.result(), done)
        finally:
            if ahead is not None:  # stopped, or the message before failed: not handled now
                ahead[1].cancel()
            for folder, moved in done.items():
                if moved:
                    mailbox.move(moved, folder)
                    crash_point("after_move")

    def _ingest(
        self,
        box: MailboxSettings,
        raw: RawMail,
        parsed: Inbound | None,
        done: dict[Literal["processed", "quarantine"], list[int]],
    ) -> None:
        """Handle one fetched message (``parsed`` when its parse is done already)."""
        arrived = raw.arrived if raw.arrived is not None else time.time()
        source = ingest.Source(box.name, raw.uidvalidity, raw.uid)
        if raw.too_large:
            outcome = oversize.quarantine(self.db, self.desk, source, raw.head, raw.size)
        else:
            outcome = ingest.process(self.db, self.desk, source, raw.raw, parsed=parsed)
        done["quarantine" if outcome.quarantined else "processed"].append(raw.uid)
        self._committed(box.name, outcome, arrived)
        crash_point("after_commit")

    def _committed(
        self, mailbox: str, outcome: ingest.Outcome, arrived: float | None = None
    ) -> None:
        self.wake()
        self.pulses[f"mailbox:{mailbox}"].beat()  # a long backlog is progress, message by message
        if self.metrics is not None:
            self.metrics.message(mailbox, outcome, arrived)
        if self.on_outcome is not None:
            self.on_outcome(mailbox, outcome)

    # ------------------------------------------------------------------ timers

    async def timer_loop(self, boxes: list[asyncio.Task[None]]) -> None:
        """Reminders, auto-close and SLA checks: right after start, then every minute.

        With ``once``: one pass after the mailboxes are drained, so a customer's reply waiting
        in the inbox resets a pending ticket's clock before the clock is read.
        """
        if self.once:
            if boxes:
                await asyncio.wait(boxes)
            try:
                await self.timer_pass(refresh=True)
            except DatabaseError as exc:
                self.unreachable.append(f"timers: database: {exc}")
            return
        pulse = self.pulses["timers"]
        refresh = True
        while not self.stop.is_set():
            try:
                await self.timer_pass(refresh=refresh)
            except DatabaseError as exc:
                await self._database_down(str(exc), pulse)
                continue
            await self._database_works()
            refresh = False
            pulse.beat()
            self._fault(Loop.TIMERS)
            await self._stall(Loop.TIMERS)
            await self.pause(TIMER_SECONDS, pulse)

    async def timer_pass(self, *, refresh: bool = False) -> None:
        """One pass of ``automation.run_pass`` under the ``timers`` lease (one daemon at a time).
        A ``DatabaseError`` is the caller's: an outage, not a failed pass."""
        if not await asyncio.to_thread(take_lease, self.db, "timers", self.holder):
            return
        try:
            result = await asyncio.to_thread(
                automation.run_pass, self.db, self.desk, refresh=refresh
            )
        except DatabaseError:
            raise
        except Exception:  # noqa: BLE001 - the daemon keeps serving mail whatever the timers do
            log.exception("timers: pass failed; trying again next pass")
            return
        finally:
            await asyncio.to_thread(release_lease, self.db, "timers", self.holder)
        if result.reminded or result.closed or result.breached or result.failed:
            self.wake()  # their mail (a failure's alert to the admin) is in the outbox

    # ------------------------------------------------------------------ outbox

    def release_dead_claims(self) -> None:
        """Rows a killed daemon on this host had claimed go back to the queue at once, instead
        of waiting for the claim to expire."""
        dead = [
            h for h in outbox.claim_holders(self.db) if h != self.holder and not holder_alive(h)
        ]
        if dead:
            log.info("taking back outbox rows claimed by %s (no longer running)", ", ".join(dead))
            outbox.release_claims(self.db, dead)

    async def courier_loop(self) -> None:
        """Run the delivery process; start it again (with backoff) if it is killed alone. One
        that fails on its own (a non-zero exit: it logged why) stops the daemon."""
        failures = 0
        courier = self.courier
        pulse = self.pulses["outbox"]  # mirrors the delivery loop's, from its reports
        while True:
            if courier is None:
                courier = Courier.spawn(self.courier_argv)
            self.courier = courier
            pulse.beat()
            reports = threading.Thread(
                target=self._read_reports, args=(courier,), name="delivery reports", daemon=True
            )
            reports.start()
            if self.intake_done.is_set() or self.stop.is_set():
                self._wake_now()
                if self.stop.is_set():
                    courier.terminate()
            code = await self._watch_courier(courier)
            await asyncio.to_thread(reports.join)
            self.courier = courier = None
            if ELSEWHERE in self.health["database"].failing:  # it cannot say so any more
                await self._database_answers(ELSEWHERE)
            if code == 0 and (self.once or self.intake_done.is_set() or self.stop.is_set()):
                return
            if self.stop.is_set() and code in (-signal.SIGTERM, -STOP_DELIVERY):
                return
            status = 128 - code if code < 0 else code
            if self.once:
                log.error("the delivery process exited with status %d", status)
                self.exit_code = status or 1
                return
            if code > 0:
                self.fail("the delivery process", f"exited with status {status}")
                return
            failures += 1
            log.error("the delivery process exited with status %d; starting it again", status)
            await self.pause(backoff_seconds(failures), pulse)
            if self.stop.is_set():
                return

    async def _watch_courier(self, courier: Courier) -> int:
        """Wait for the delivery process to exit; if this loop fails instead, it is killed
        (it must not outlive its supervision)."""
        try:
            self._fault(Loop.COURIER)
            return await asyncio.to_thread(courier.wait)
        except BaseException:
            courier.kill()
            await asyncio.shield(asyncio.to_thread(courier.wait))
            raise

    def _read_reports(self, courier: Courier) -> None:
        """The delivery process's reports, in a thread of their own."""
        try:
            courier.read_reports(self._told)
        except Exception as exc:  # noqa: BLE001 - handed to the event loop, which stops the daemon
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.fail, "reading the delivery reports", exc)

    def _told(self, line: str) -> None:
        """One line from the delivery process (``Report``, or a delivery's outcome)."""
        kind, _, rest = line.partition(" ")
        if kind == Report.PULSE:
            self.pulses["outbox"].mirror(rest)
        elif kind in (Report.DATABASE_DOWN, Report.DATABASE_UP) and self.loop is not None:
            news = (
                self._database_failed(rest, ELSEWHERE)
                if kind == Report.DATABASE_DOWN
                else self._database_answers(ELSEWHERE)
            )
            asyncio.run_coroutine_threadsafe(
                self._guarded("the database's health", news), self.loop
            )
        elif kind:
            self._delivered([kind])

    def _undelivered(
        self, session: Session, row: Outbox, result: outbox.Delivery, now: datetime
    ) -> None:
        """A mail of a ticket given up on: its agents are told (in the recording transaction)."""
        bounces.refused(session, self.desk, row, result, now)

    def _delivered(self, outcomes: list[str]) -> None:
        if self.metrics is not None:
            self.metrics.deliveries(outcomes)
        if self.parent is not None and outcomes:
            self.parent("\n".join(outcomes))

    async def outbox_loop(self) -> None:
        """Deliver what is due whenever a commit wakes it (and every 5 s), until stopped or,
        once intake is done, until nothing is due."""
        pulse = self.pulses["outbox"]
        senders = [
            outbox.Sender(self.settings.smtp, self.smtp_token) for _ in range(OUTBOX_CONNECTIONS)
        ]
        released = False
        try:
            while True:
                try:
                    if not released:
                        await asyncio.to_thread(self.release_dead_claims)
                        released = True
                    if await self._outbox_round(senders, pulse):
                        return
                except DatabaseError as exc:
                    if self.once:
                        log.error("cannot deliver: database unavailable: %s", exc)
                        self.unreachable.append(f"outbox: database: {exc}")
                        return
                    await self._database_down(str(exc), pulse)
        finally:
            for sender in senders:
                await sender.close()

    async def _outbox_round(self, senders: list[outbox.Sender], pulse: Pulse) -> bool:
        """Claim what is due and send it, or wait for a wake-up; True when the loop is done."""
        health = self.health["smtp"]
        self.wake_outbox.clear()
        # read before claiming: mail committed before the end of intake is claimed now
        finished = self.intake_done.is_set()
        now = self.desk.clock()
        rows = await asyncio.to_thread(
            outbox.claim_due, self.db, now, OUTBOX_BATCH, CLAIM_LEASE, self.holder
        )
        await self._database_works()
        pulse.beat()
        self._fault(Loop.OUTBOX)
        await self._stall(Loop.OUTBOX)
        if rows:
            results = await outbox.deliver_rows(
                senders,
                self.db,
                rows,
                self.desk.clock,
                after_send=lambda: self._sent_one(pulse),
                on_failed=self._undelivered,
            )
            self._delivered([r.outcome for r in results])
            if any(r.reached for r in results):
                await self._healthy(health, "SMTP")
            else:
                await self._failed(health, "SMTP", results[0].detail)
                if self.once:
                    return True
                await self.pause(backoff_seconds(health.failures), pulse)
            if not self.stop.is_set() or self.once:
                return False
        if (self.stop.is_set() and not self.once) or finished:
            return True
        pulse.rest(5.0)
        try:
            await asyncio.wait_for(self.wake_outbox.wait(), 5.0)
        except TimeoutError:
            pass
        pulse.beat()
        return False

    @staticmethod
    def _sent_one(pulse: Pulse) -> None:
        crash_point("after_send")
        pulse.beat()

    # ------------------------------------------------------------------ the database

    async def _database_down(self, error: str, pulse: Pulse) -> None:
        """A loop met a ``DatabaseError``: count it (the outage's first is logged), then wait
        until the database answers again (or the daemon stops). The loop's ``pulse`` goes
        with the probes: a probe that never returns stops the watchdog's pings."""
        await self._database_failed(error, HERE)
        self._waiting.add(pulse)
        pulse.beat()
        try:
            while not self.database_up.is_set() and not self.stop.is_set():
                await self._either(self.database_up, self.stop)
        finally:
            self._waiting.discard(pulse)
            pulse.beat()

    async def _database_failed(self, error: str, seen_by: str) -> None:
        """One failure of the database, seen here or in the delivery process: the first of an
        outage is logged (or, in a delivery process, told to the daemon), the fifth alerted."""
        health = self.health["database"]
        first, alert = health.failed(error, self.desk.clock(), seen_by)
        if seen_by == HERE:
            self.database_up.clear()
            if self._database_watch is None or self._database_watch.done():
                self._database_watch = self._task("the database probe", self._probe_database())
        if self.parent is not None:  # a delivery process: the daemon logs and alerts
            if first:
                self.parent(f"{Report.DATABASE_DOWN} {error}")
            return
        if first:
            log.error(
                "database unavailable: %s (mail waits; trying again every few seconds)", error
            )
        if alert and self.settings.desk.admin_address:
            log.error(
                "the database has failed %d times in a row: alerting %s",
                health.failures,
                self.settings.desk.admin_address,
            )
            # straight over SMTP (the outbox is in the database), beside the loops: a slow
            # SMTP server must not hold up the probes
            self._task(
                "the alert to the admin",
                self._tell_admin(
                    "the database is failing",
                    f"maildesk could not use its database {health.failures} times in a row. "
                    "Mail waits where it is (in the mailboxes, in the outbox) and nothing is "
                    "lost; work resumes by itself when the database answers again.\n"
                    f"Last error: {error}",
                    now=True,
                ),
            )

    async def _database_answers(self, seen_by: str) -> None:
        health = self.health["database"]
        if seen_by == HERE:
            self.database_up.set()
        recovered, recovery_alert = health.ok(self.desk.clock(), seen_by)
        if self.parent is not None:
            if recovered:
                self.parent(Report.DATABASE_UP)
            return
        if recovered:
            log.info("database is back")
        if recovery_alert:
            await self._tell_admin("the database recovered", "The database is working again.")

    async def _probe_database(self) -> None:
        """While the database is down here: probe it, at least every ``DATABASE_MAX_BACKOFF``
        seconds; each failed probe counts, the first that passes lets the loops go on."""
        health = self.health["database"]
        while not self.stop.is_set():
            seconds = backoff_seconds(health.failures, DATABASE_MAX_BACKOFF)
            for pulse in self._waiting:
                pulse.rest(seconds)
            await self.pause(seconds)
            if self.stop.is_set():
                return
            try:
                await asyncio.to_thread(self.db.probe)
            except DatabaseError as exc:
                for pulse in self._waiting:
                    pulse.beat()
                await self._database_failed(str(exc), HERE)
                continue
            # the loops go on; the outage ends when one of them gets real work done (a probe
            # can pass where work fails: a full disk), so that it is not logged twice
            self.database_up.set()
            return

    async def _database_works(self) -> None:
        """A loop got work done in the database: an outage seen here is over."""
        if HERE in self.health["database"].failing:
            await self._database_answers(HERE)

    async def _either(self, *events: asyncio.Event) -> None:
        """Wait until one of ``events`` is set."""
        waits = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    # ------------------------------------------------------------------ health and alerts

    async def _failed(self, health: Health, what: str, error: str) -> None:
        first, alert = health.failed(error, self.desk.clock())
        if first:
            log.error("%s unreachable: %s (retrying with backoff)", what, error)
        if alert and self.settings.desk.admin_address:
            log.error(
                "%s has failed %d times in a row: alerting %s",
                what,
                health.failures,
                self.settings.desk.admin_address,
            )
            await self._tell_admin(
                f"{what} is failing",
                f"{what} has failed {health.failures} times in a row.\nLast error: {error}",
            )

    async def _healthy(self, health: Health, what: str) -> None:
        recovered, recovery_alert = health.ok(self.desk.clock())
        if recovered:
            log.info("%s is back", what)
        if recovery_alert:
            await self._tell_admin(f"{what} recovered", f"{what} is working again.")

    async def _tell_admin(self, subject: str, text: str, *, now: bool = False) -> None:
        """Alert the admin: through the outbox, or (``now``, or the database down) straight
        over SMTP, once: nothing of it is kept."""
        admin = self.settings.desk.admin_address
        if not admin:
            return
        if not now:
            try:
                await asyncio.to_thread(self._alert, subject, text)
                return
            except DatabaseError:
                pass  # the outage is the loops' to report
        mail = Mail(
            kind="alert",
            template="admin_alert",
            to=admin,
            context={"subject": subject, "text": text},
            to_agent=True,
        )
        mail_from, body = self.desk.mailer.compose_now(mail, self.desk.clock())
        sender = outbox.Sender(self.settings.smtp, self.smtp_token)
        try:
            result = await sender.send(mail_from, admin, body)
        finally:
            await sender.close()
        if result.outcome != "sent":
            log.error("could not alert %s (%s): %s", admin, subject, result.detail)

    def _token_failed(self, name: str, error: str) -> None:
        """Called (from a worker thread) once when a run of token failures begins."""
        try:
            self._alert(
                f"{name}: OAuth2 token refresh failing",
                f"maildesk cannot get an OAuth2 access token for {name}, so it cannot log in.\n"
                f"Error: {error}\n\nRenew the grant (refresh token) or fix oauth_token_command.",
            )
        except DatabaseError as exc:
            log.error("could not queue the alert about %s's token: %s", name, exc)

    def _alert(self, subject: str, text: str) -> None:
        admin = self.settings.desk.admin_address
        if not admin:
            return
        with self.db.transaction() as session:
            self.desk.mailer.enqueue(
                session,
                Mail(
                    kind="alert",
                    template="admin_alert",
                    to=admin,
                    context={"subject": subject, "text": text},
                    to_agent=True,
                ),
                self.desk.clock(),
            )
        self.wake()
