"""The asyncio shell: one loop per mailbox, the timers, the delivery loop, one stop for all.

At the top of the service layer, under the command line (``maildesk run``): it builds the parts
(``intake``, ``delivery``, ``outages``, the metrics server, systemd's watchdog) around one
``Runtime`` and runs them until the stop. Blocking work (IMAP, parsing, the database) runs in
worker threads; this module only schedules it. A committed message wakes the delivery loop at
once (in the delivery process under ``run``), so a customer's acknowledgment leaves within
moments of arrival.

Never alive and idle: an outage (a mailbox, SMTP, the database) is handled by ``outages`` and
goes on by itself. Any other error that escapes a loop stops the whole daemon, delivery process
included, with exit status 70 so that systemd starts it afresh; ``watchdog`` stops telling
systemd the daemon is alive while a loop makes no progress. The stop is one event (given in, or
made here): SIGTERM and SIGINT set it (a second SIGINT exits at once), so does a failed loop,
and ``--once`` once everything waiting is handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from maildesk.act import automation, digest, ingest
from maildesk.act.means import Desk
from maildesk.config import ConfigError, Settings
from maildesk.database import Database
from maildesk.models import DatabaseError
from maildesk.service.delivery import Courier, Delivery
from maildesk.service.faults import Faults, Loop
from maildesk.service.intake import Intake
from maildesk.service.outages import Dependency, Outages
from maildesk.service.runtime import EX_SOFTWARE, Runtime
from maildesk.service.timings import Timings
from maildesk.service.watchdog import Notifier, Watchdog

if TYPE_CHECKING:
    from maildesk.mail.imap import Mailbox
    from maildesk.service.metrics import MetricsServer

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

# seconds the loops get to finish after a loop failed (or after SIGTERM) before the daemon
# exits without them: a thread blocked in a read or a lock must not keep a dead daemon alive
FATAL_GRACE = 10.0
STOP_GRACE = 30.0  # within the unit's TimeoutStopSec


@dataclass(frozen=True, slots=True)
class Supervision:
    """The daemon's delivery process: started already (``courier``), and how to start it
    again (``argv``: ``maildesk deliver --supervised-by PID``)."""

    courier: Courier
    argv: tuple[str, ...]


@dataclass
class Daemon:
    """``maildesk run``: the mailbox loops, the timers and delivery (here, or supervised in the
    delivery process), the metrics server and systemd's watchdog, until the stop."""

    settings: Settings
    db: Database
    desk: Desk
    once: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    on_outcome: Callable[[str, ingest.Outcome], None] | None = None
    # the delivery process; None: the outbox loop runs in this process (tests)
    supervision: Supervision | None = None
    # systemd's notification socket and watchdog (``Type=notify``), when it started the daemon
    notifier: Notifier | None = None
    faults: Faults = Faults()  # fault injection (tests)
    timings: Timings = Timings()
    # the clock the loops' progress is measured by (tests inject one)
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.rt = rt = Runtime(
            self.settings,
            self.db,
            self.desk,
            once=self.once,
            stop=self.stop,
            timings=self.timings,
            faults=self.faults,
            monotonic=self.monotonic,
        )
        self.outages = Outages(rt)
        self.intake = Intake(rt, self.outages, self.on_outcome)
        rt.pulse("timers", "timers")
        courier, argv = (
            (self.supervision.courier, self.supervision.argv) if self.supervision else (None, ())
        )
        self.delivery = Delivery(rt, self.outages, courier, argv)
        self.metrics_server: MetricsServer | None = None
        # set when the daemon exits with loops still busy in threads (``run``'s caller must
        # then end the process without waiting for them)
        self.abandoned = False

    # what callers and tests read of a running daemon

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.rt.loop

    @property
    def health(self) -> dict[str, Dependency]:
        return self.outages.health

    @property
    def mailboxes(self) -> dict[str, Mailbox]:
        return self.intake.mailboxes

    @property
    def stuck(self) -> set[Loop]:
        return self.rt.stuck

    @property
    def unreachable(self) -> list[str]:
        return self.rt.unreachable

    def request_stop(self) -> None:
        self.rt.request_stop()

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        """Run until stopped (or, with ``once``, until everything waiting is handled).

        After a loop failed (or SIGTERM), the others get ``FATAL_GRACE`` (``STOP_GRACE``) to
        finish; those still busy then are left behind (``abandoned``) and the caller ends the
        process."""
        self.rt.install_signals()
        self.start_metrics()
        work = asyncio.create_task(self._serve())
        try:
            await self._until_done(work)
        finally:
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self.abandoned and self.delivery.courier is not None:
                self.delivery.courier.kill()
        if self.rt.exit_code:
            return self.rt.exit_code
        return 1 if self.rt.unreachable else 0

    async def _serve(self) -> None:
        rt = self.rt
        boxes = [
            rt.task(f"mailbox {box.name}", self.intake.mailbox_loop(box))
            for box in self.intake.boxes
        ]
        timers = rt.task("timers", self.timer_loop(boxes))
        what = "the delivery process's supervision" if self.delivery.argv else "the delivery loop"
        sender = rt.task(what, self.delivery.run())
        watchdog = None
        if self.notifier is not None and not self.once:
            dog = Watchdog(self.notifier, rt.pulses.values, self._status)
            watchdog = rt.task("the watchdog", dog.run(self.intake.ready, self.stop))
        if boxes:
            await asyncio.wait(boxes)
        elif not self.once:
            await self.stop.wait()  # only pipe mailboxes: deliver and run timers until stopped
        if not self.once:
            rt.request_stop()
        await timers
        self.delivery.intake_over()
        await sender
        helpers = [t for t in (watchdog, self.outages.probe) if t is not None]
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
            grace = FATAL_GRACE if self.rt.exit_code else STOP_GRACE
            await asyncio.wait((work,), timeout=grace)
        if work.done():
            work.result()
            return
        busy = sorted(t.get_name() for t in self.rt.tasks if not t.done())
        log.error(
            "%s still busy %g s after the stop; exiting without waiting any longer",
            ", ".join(busy) or "a loop",
            grace,
        )
        self.abandoned = True
        self.rt.exit_code = self.rt.exit_code or EX_SOFTWARE

    def stalled_after(self) -> float:
        """Seconds a loop may go without progress: systemd's watchdog interval, if any."""
        interval = self.notifier.interval if self.notifier is not None else None
        return interval or self.timings.stalled_after

    def _status(self) -> str:
        """One line for ``systemctl status``: what is watched, and what is failing."""
        failing = [key.replace(":", " ") for key in self.outages.failing()]
        count = len(self.intake.boxes)
        watching = f"watching {count} mailbox{'' if count == 1 else 'es'}"
        return watching + (f"; failing: {', '.join(failing)}" if failing else "")

    def start_metrics(self) -> None:
        """Count outcomes always; serve ``/metrics`` and ``/healthz`` when ``[metrics] listen``."""
        listen = self.settings.metrics.listen
        if listen is None:
            return
        from maildesk.service.metrics import Metrics, Sources  # prometheus_client when asked

        piped = [box.name for box in self.settings.mailboxes if not box.watched]
        sources = Sources(
            self.intake.boxes,
            self.outages.health,
            piped=piped,
            loops=self.rt.pulses.values,
            stalled_after=self.stalled_after(),
            database_failed=self.outages.database_failed_elsewhere,
        )
        metrics = self.rt.metrics = Metrics(self.db, sources, self.desk.clock)
        try:
            self.metrics_server = metrics.serve(
                listen,
                on_failure=lambda exc: self.rt.fail_soon("the metrics server", exc),
                tick=lambda: self.faults.check(Loop.METRICS),
            )
        except OSError as exc:
            raise ConfigError(
                f"{self.settings.path}: [metrics] listen: cannot listen on {listen}: {exc.strerror}"
            ) from None

    # ------------------------------------------------------------------ timers

    async def timer_loop(self, boxes: list[asyncio.Task[None]]) -> None:
        """Reminders, auto-close and SLA checks: right after start, then every minute.

        With ``once``: one pass after the mailboxes are drained, so a customer's reply waiting
        in the inbox resets a pending ticket's clock before the clock is read.
        """
        rt = self.rt
        if self.once:
            if boxes:
                await asyncio.wait(boxes)
            try:
                await self.timer_pass(refresh=True)
            except DatabaseError as exc:
                rt.unreachable.append(f"timers: database: {exc}")
            return
        pulse = rt.pulses["timers"]
        refresh = True
        while not self.stop.is_set():
            try:
                await self.timer_pass(refresh=refresh)
            except DatabaseError as exc:
                await self.outages.database_down(str(exc), pulse)
                continue
            await self.outages.database_works()
            refresh = False
            pulse.beat()
            rt.faults.check(Loop.TIMERS)
            await rt.stall(Loop.TIMERS)
            await rt.pause(self.timings.timer_seconds, pulse)

    async def timer_pass(self, *, refresh: bool = False) -> None:
        """One pass of ``automation.run_pass``, then the digests due (``digest.run``), under the
        ``timers`` lease (one daemon at a time). A ``DatabaseError`` is the caller's: an outage,
        not a failed pass."""
        rt = self.rt
        if not await asyncio.to_thread(rt.leases.take, "timers"):
            return
        try:
            result = await asyncio.to_thread(automation.run_pass, rt.db, rt.desk, refresh=refresh)
            digests = await asyncio.to_thread(digest.run, rt.db, rt.desk)
        except DatabaseError:
            raise
        except Exception:  # noqa: BLE001 - the daemon keeps serving mail whatever the timers do
            log.exception("timers: pass failed; trying again next pass")
            return
        finally:
            await asyncio.to_thread(rt.leases.release, "timers")
        if result.reminded or result.closed or result.breached or result.failed or digests:
            rt.wake()  # their mail (a failure's alert to the admin) is in the outbox
