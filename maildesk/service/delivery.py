"""The delivery process: the outbox loop, its own process under ``run``, and its supervision.

Beside the flow, after the commits: the outbox loop claims what is due and sends it
(``outbox.deliver_rows``), woken by each commit. ``maildesk run`` runs it in a delivery process
of its own, woken through a pipe: ingestion and SMTP then use two cores; in one process they
take turns for the interpreter lock, and the event loop waits up to a switch interval (5 ms)
for it on every SMTP reply, which halved the backlog drain. The delivery process is forked at
start-up (``fork``), dies with the daemon, is started again as ``maildesk deliver
--supervised-by PID`` if it is killed alone (``Delivery.supervise``), and reports each delivery
for the metrics, its progress for the watchdog and its database outages (``runtime.Tell``).
Both ends of that pipe are here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from maildesk import shared_secret
from maildesk.act import bounces, outbox
from maildesk.config import Settings
from maildesk.database import Database
from maildesk.mail import smtp
from maildesk.models import DatabaseError, Outbox, Session
from maildesk.service import oauth
from maildesk.service.faults import Faults, Loop
from maildesk.service.leases import holder_alive
from maildesk.service.outages import ELSEWHERE, Outages
from maildesk.service.runtime import Runtime, Tell
from maildesk.service.timings import Timings
from maildesk.service.wiring import desk_for

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

PULSE_REPORTS = 1.0  # seconds between the delivery process's reports of its progress
# How the daemon tells its delivery process to finish the mails in hand and exit. Not SIGTERM:
# systemd's default KillMode=control-group sends SIGTERM to every process of the service at
# once, and the delivery process (like the parse zygote and workers) ignores it, so that the
# daemon's own stop is the one stop. It starts with these signals blocked until it has set
# what they do, so that none can end it halfway through its start.
STOP_DELIVERY = signal.SIGUSR1
OWN_STOP = frozenset({signal.SIGTERM, signal.SIGINT, STOP_DELIVERY})
OUTBOX_BATCH = 200
OUTBOX_CONNECTIONS = 8
CLAIM_LEASE = timedelta(minutes=2)
WAKE_EVERY = 5.0  # seconds: the outbox is looked at this often even without a wake-up


class Courier:
    """The daemon's handle on its delivery process: wake it, tell it intake is over, stop it.

    Forked at start-up, before any thread exists, it has nothing to import again: a fresh
    interpreter took about a second to get going, which a short ``run --once`` waited for.
    When it has to be started again later (it died), it is spawned as ``maildesk deliver``.
    Either way it starts with ``OWN_STOP`` blocked: SIGTERM and SIGINT are the daemon's to act
    on, ``STOP_DELIVERY`` from the daemon is its stop (``Delivery.obey_the_daemon`` sets them up)."""

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
        """Pass on each line it reports (``Tell``), until it exits (run in a thread)."""
        with os.fdopen(self._report_fd, "rb") as reports:
            for line in reports:
                told(line.decode("ascii", "replace").strip())


def die_with_parent(daemon: int) -> None:
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


def tell_parent(lines: str) -> None:
    """Lines for the daemon, on the delivery process's standard output (its pipe)."""
    os.write(1, f"{lines}\n".encode("ascii", "replace"))


class Delivery:
    """The outbox loop, and in a daemon with a delivery process (``argv``: how to start it
    again) its supervision instead."""

    def __init__(
        self,
        rt: Runtime,
        outages: Outages,
        courier: Courier | None = None,
        argv: tuple[str, ...] = (),
    ) -> None:
        self.rt = rt
        self.outages = outages
        self.courier = courier  # the delivery process, when started
        self.argv = argv
        self.pulse = rt.pulse("outbox", "delivery")
        self.wake_outbox = asyncio.Event()
        # set once nothing more will be enqueued (``--once`` after the mailboxes and timers,
        # or the daemon gone, for a delivery process): the outbox loop ends when idle
        self.intake_done = asyncio.Event()
        rt.wake = self.wake
        if rt.smtp_token is None:
            smtp = rt.settings.smtp
            rt.smtp_token = oauth.token_source("SMTP", smtp, smtp.auth, outages.token_failed)

    def wake(self) -> None:
        """There is new mail in the outbox (callable from any thread)."""
        if self.rt.loop is not None:
            self.rt.loop.call_soon_threadsafe(self.wake_now)

    def wake_now(self) -> None:
        self.wake_outbox.set()
        if self.courier is not None:
            self.courier.wake(last=self.intake_done.is_set())

    def intake_over(self) -> None:
        """Nothing more will be enqueued: deliver what is due, then end."""
        self.intake_done.set()
        self.wake_now()

    async def run(self) -> None:
        """Deliver here, or supervise the delivery process (when there is one to start)."""
        if self.argv:
            await self.supervise()
        else:
            await self.outbox_loop()

    # ------------------------------------------------------------------ the outbox loop

    async def outbox_loop(self) -> None:
        """Deliver what is due whenever a commit wakes it (and every 5 s), until stopped or,
        once intake is done, until nothing is due."""
        senders = [
            smtp.Sender(self.rt.settings.smtp, self.rt.smtp_token)
            for _ in range(OUTBOX_CONNECTIONS)
        ]
        released = False
        woken = self.rt.when_stopped(self.wake_outbox.set)  # the stop ends the wait for mail
        try:
            while True:
                try:
                    if not released:
                        await asyncio.to_thread(self.release_dead_claims)
                        released = True
                    if await self._round(senders):
                        return
                except DatabaseError as exc:
                    if self.rt.once:
                        log.error("cannot deliver: database unavailable: %s", exc)
                        self.rt.unreachable.append(f"outbox: database: {exc}")
                        return
                    await self.outages.database_down(str(exc), self.pulse)
        finally:
            woken.cancel()
            for sender in senders:
                await sender.close()

    async def _round(self, senders: list[smtp.Sender]) -> bool:
        """Claim what is due and send it, or wait for a wake-up; True when the loop is done."""
        rt, pulse = self.rt, self.pulse
        self.wake_outbox.clear()
        # read before claiming: mail committed before the end of intake is claimed now
        finished = self.intake_done.is_set()
        now = rt.desk.clock()
        rows = await asyncio.to_thread(
            outbox.claim_due, rt.db, now, OUTBOX_BATCH, CLAIM_LEASE, rt.holder, store=rt.desk.store
        )
        await self.outages.database_works()
        pulse.beat()
        rt.faults.check(Loop.OUTBOX)
        await rt.stall(Loop.OUTBOX)
        if rows:
            if await self._send(senders, rows):
                return True
            if not rt.stop.is_set() or rt.once:
                return False
        if (rt.stop.is_set() and not rt.once) or finished:
            return True
        pulse.rest(WAKE_EVERY)
        try:
            await asyncio.wait_for(self.wake_outbox.wait(), WAKE_EVERY)
        except TimeoutError:
            pass
        pulse.beat()
        return False

    async def _send(self, senders: list[smtp.Sender], rows: list[Outbox]) -> bool:
        """Send the claimed ``rows``; True when SMTP is down and ``--once`` gives up."""
        health = self.outages.health["smtp"]
        results = await outbox.deliver_rows(
            senders,
            self.rt.db,
            rows,
            self.rt.desk.clock,
            after_send=self._sent_one,
            on_failed=self._undelivered,
        )
        self.delivered([r.outcome for r in results])
        if any(r.reached for r in results):
            await self.outages.healthy(health, "SMTP")
            return False
        await self.outages.failed(health, "SMTP", results[0].detail)
        if self.rt.once:
            return True
        await self.rt.pause(self.rt.timings.backoff(health.failures), self.pulse)
        return False

    def _sent_one(self) -> None:
        self.rt.faults.crash_point("after_send")
        self.pulse.beat()

    def _undelivered(
        self, session: Session, row: Outbox, result: smtp.SendResult, now: datetime
    ) -> None:
        """A mail of a ticket given up on: its agents are told (in the recording transaction)."""
        bounces.refused(session, self.rt.desk, row, result, now)

    def delivered(self, outcomes: list[str]) -> None:
        if self.rt.metrics is not None:
            self.rt.metrics.deliveries(outcomes)
        if self.rt.parent is not None and outcomes:
            self.rt.parent("\n".join(outcomes))

    def release_dead_claims(self) -> None:
        """Rows a killed daemon on this host had claimed go back to the queue at once, instead
        of waiting for the claim to expire."""
        holder, db = self.rt.holder, self.rt.db
        dead = [h for h in outbox.claim_holders(db) if h != holder and not holder_alive(h)]
        if dead:
            log.info("taking back outbox rows claimed by %s (no longer running)", ", ".join(dead))
            outbox.release_claims(db, dead)

    # ------------------------------------------------------------------ supervision (the daemon)

    async def supervise(self) -> None:
        """Run the delivery process; start it again (with backoff) if it is killed alone. One
        that fails on its own (a non-zero exit: it logged why) stops the daemon."""
        rt = self.rt
        failures = 0
        courier = self.courier
        while True:
            if courier is None:
                courier = Courier.spawn(self.argv)
            self.courier = courier
            code = await self._attend(courier)
            self.courier = courier = None
            if code == 0 and (rt.once or self.intake_done.is_set() or rt.stop.is_set()):
                return
            if rt.stop.is_set() and code in (-signal.SIGTERM, -STOP_DELIVERY):
                return
            status = 128 - code if code < 0 else code
            if rt.once:
                log.error("the delivery process exited with status %d", status)
                rt.exit_code = status or 1
                return
            if code > 0:
                rt.fail("the delivery process", f"exited with status {status}")
                return
            failures += 1
            log.error("the delivery process exited with status %d; starting it again", status)
            await rt.pause(rt.timings.backoff(failures), self.pulse)
            if rt.stop.is_set():
                return

    async def _attend(self, courier: Courier) -> int:
        """Read the delivery process's reports until it exits; its exit code. At the stop it
        is told to finish the mails in hand."""
        self.pulse.beat()
        reports = threading.Thread(
            target=self._read_reports, args=(courier,), name="delivery reports", daemon=True
        )
        reports.start()
        if self.intake_done.is_set():
            self.wake_now()
        stopped = self.rt.when_stopped(courier.terminate)
        try:
            code = await self._watch(courier)
        finally:
            stopped.cancel()
        await asyncio.to_thread(reports.join)
        if ELSEWHERE in self.outages.health["database"].failing:  # it cannot say so any more
            await self.outages.database_answers(ELSEWHERE)
        return code

    async def _watch(self, courier: Courier) -> int:
        """Wait for the delivery process to exit; if this loop fails instead, it is killed
        (it must not outlive its supervision)."""
        try:
            self.rt.faults.check(Loop.COURIER)
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
            self.rt.fail_soon("reading the delivery reports", exc)

    def _told(self, line: str) -> None:
        """One line from the delivery process (``Tell``, or a delivery's outcome)."""
        kind, _, rest = line.partition(" ")
        loop = self.rt.loop
        if kind == Tell.PULSE:
            self.pulse.mirror(rest)
        elif kind in (Tell.DATABASE_DOWN, Tell.DATABASE_UP) and loop is not None:
            news = (
                self.outages.database_failed(rest, ELSEWHERE)
                if kind == Tell.DATABASE_DOWN
                else self.outages.database_answers(ELSEWHERE)
            )
            asyncio.run_coroutine_threadsafe(self.rt.guarded("the database's health", news), loop)
        elif kind:
            self.delivered([kind])

    # ------------------------------------------------------------------ the delivery process

    async def serve(self, supervised_by: int | None) -> None:
        """The outbox loop alone (``maildesk deliver``). Supervised (started by ``run``, whose
        pid is given): a line on standard input means new mail, the end of input means the
        daemon is finished or gone; each delivery outcome, its progress and its database
        outages are written to standard output for the daemon (``Tell``)."""
        rt = self.rt
        helpers: list[asyncio.Task[None]] = []
        if supervised_by is not None:
            die_with_parent(supervised_by)
            self.obey_the_daemon()
            rt.parent = tell_parent
            helpers.append(asyncio.create_task(self._follow_parent()))
            helpers.append(rt.task("progress reports", self._report_progress()))
        elif rt.once:
            self.intake_done.set()
        await rt.guarded("the delivery loop", self.outbox_loop())
        rt.stop.set()
        for helper in (*helpers, self.outages.probe):
            if helper is not None:
                helper.cancel()

    def obey_the_daemon(self) -> None:
        """A delivery process stops when its daemon says so (``STOP_DELIVERY``), or when the
        daemon is gone (the end of its standard input), never on a signal of its own: Ctrl-C
        reaches the whole process group, and systemd's default ``KillMode=control-group``
        sends SIGTERM to every process of the service. Quitting then, beside the daemon's
        own stop, would cut a mail short and look like a crash to the daemon; instead the
        daemon stops it after its own work. It was started with these signals blocked."""
        loop = self.rt.loop
        assert loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        loop.add_signal_handler(STOP_DELIVERY, self._told_to_stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, OWN_STOP)

    def _told_to_stop(self) -> None:
        log.debug("the daemon stops delivery: finishing the mails in hand")
        self.rt.request_stop()

    async def _report_progress(self) -> None:
        """Tell the daemon how the delivery loop is doing, every second (for its watchdog)."""
        assert self.rt.parent is not None
        while not self.rt.stop.is_set():
            self.rt.parent(f"{Tell.PULSE} {self.pulse.describe()}")
            await self.rt.pause(PULSE_REPORTS)

    async def _follow_parent(self) -> None:
        loop = self.rt.loop
        assert loop is not None
        reader = asyncio.StreamReader()
        # fd 0 itself, not sys.stdin: the daemon's pipe was put there after the interpreter
        # set sys.stdin up (and the daemon may have been started with no stdin at all)
        wakes = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - lives as long as the loop
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), wakes)
        while await reader.read(4096):
            self.wake_outbox.set()
        self.intake_done.set()
        self.wake_outbox.set()


async def deliver(rt: Runtime, *, supervised_by: int | None = None) -> int:
    """``maildesk deliver``: the outbox loop alone, until stopped (``rt.once``: until nothing
    is due); its exit status."""
    rt.install_signals()
    await Delivery(rt, Outages(rt)).serve(supervised_by)
    if rt.exit_code:
        return rt.exit_code
    return 1 if rt.unreachable else 0


def main(
    settings: Settings, *, once: bool, supervised_by: int | None, hooks: tuple[Faults, Timings]
) -> tuple[int, list[str]]:
    """``maildesk deliver`` in this process: its exit status and what it could not reach."""
    db = delivery_db(settings)
    try:
        if supervised_by is None:
            db.upgrade()
        settings = shared_secret.settled(settings, db)
        faults, timings = hooks
        rt = Runtime(settings, db, desk_for(settings), once=once, faults=faults, timings=timings)
        code = asyncio.run(deliver(rt, supervised_by=supervised_by))
    finally:
        db.dispose()
    return code, rt.unreachable


def fork(settings: Settings, *, once: bool, hooks: tuple[Faults, Timings]) -> Courier:
    """Start the delivery process of this daemon, a fork of this process: call it while this
    process has no other thread, and holds no database connection."""
    daemon_pid = os.getpid()
    faults, timings = hooks

    def child() -> int:
        db = delivery_db(settings)
        rt = Runtime(settings, db, desk_for(settings), once=once, faults=faults, timings=timings)
        return asyncio.run(deliver(rt, supervised_by=daemon_pid))

    return Courier.fork(child)


def delivery_db(settings: Settings) -> Database:
    # a lost delivery outcome only sends that mail again: no flush to disk per commit
    return Database(settings.database_url, flush_each_commit=False)


def courier_argv(config: Path, log_format: str | None, *, once: bool) -> tuple[str, ...]:
    """How ``run`` starts its delivery process again: this maildesk, this config, this log
    format."""
    argv = [sys.executable, "-m", "maildesk", "--config", str(config)]
    if log_format:
        argv += ["--log-format", log_format]
    argv += ["deliver", "--supervised-by", str(os.getpid())]
    if once:
        argv.append("--once")
    return tuple(argv)
