"""What the service's parts share while they run: the config in force, the one stop, the tasks.

Beside the flow: the daemon (``daemon``) builds one ``Runtime`` and hands it to its parts, the
mailbox loops (``intake``), the delivery loop and its supervision (``delivery``) and the outage
tracking (``outages``). The stop is one ``asyncio.Event``, given in or made here: whoever sets
it (a signal, a failed loop, ``--once`` at its end, a test) stops every loop, and every wait
of a loop is a wait for it with a deadline. Worker threads read it too (``is_set`` is a plain
read). SIGTERM and SIGINT set it (a second SIGINT exits at once, a second SIGTERM changes
nothing); SIGHUP's reload swaps ``settings`` and ``desk`` here, for every part at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from maildesk import config, shared_secret
from maildesk.act import samples
from maildesk.act.means import Desk
from maildesk.config import ConfigError, Settings
from maildesk.database import Database
from maildesk.models import DatabaseError
from maildesk.service.faults import Faults, Loop
from maildesk.service.leases import Leases, new_holder
from maildesk.service.timings import Timings
from maildesk.service.watchdog import Pulse
from maildesk.service.wiring import desk_for

if TYPE_CHECKING:
    from maildesk.service.metrics import Metrics
    from maildesk.service.oauth import TokenSource

log = logging.getLogger("maildesk.daemon")  # the logs name the job, not the module path

EX_SOFTWARE = 70  # sysexits.h: a loop failed on an error that no outage explains


class Tell(StrEnum):
    """What a delivery process tells the daemon through its pipe (``Runtime.parent``), a line
    each, besides each delivery's outcome (``sent``, ``retry``, ``failed``)."""

    PULSE = "pulse"  # its delivery loop's progress: ``pulse beat AGE`` or ``pulse rest LEFT``
    DATABASE_DOWN = "database-down"  # its database outage began: ``database-down ERROR``
    DATABASE_UP = "database-up"  # and ended


@dataclass
class Runtime:
    """The daemon's (or its delivery process's) state shared by its parts."""

    settings: Settings
    db: Database
    desk: Desk
    once: bool = False
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    timings: Timings = Timings()
    faults: Faults = Faults()
    # the clock the loops' progress is measured by (tests inject one)
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.holder = new_holder()
        self.leases = Leases(self.db, self.holder, self.timings.lease_ttl)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code = 0
        self.unreachable: list[str] = []  # what ``--once`` could not reach, a line each
        self.stuck: set[Loop] = set()  # the loops of ``faults.stalls`` that got there
        self.tasks: set[asyncio.Task[None]] = set()
        self.pulses: dict[str, Pulse] = {}
        self.metrics: Metrics | None = None
        self.smtp_token: TokenSource | None = None  # XOAUTH2 for SMTP, when configured
        # there is new mail in the outbox (the delivery part sets what that does)
        self.wake: Callable[[], None] = lambda: None
        # a delivery process's line to the daemon that started it (``delivery.Tell``)
        self.parent: Callable[[str], None] | None = None

    def pulse(self, key: str, name: str) -> Pulse:
        """The progress of the loop ``key``, named ``name`` where it is reported."""
        self.pulses[key] = Pulse(name, clock=self.monotonic)
        return self.pulses[key]

    def request_stop(self) -> None:
        """Stop every loop: they finish the message in hand."""
        self.stop.set()

    # ------------------------------------------------------------------ signals

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop (a second SIGINT exits at once), SIGHUP reloads."""
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        except (NotImplementedError, RuntimeError):
            pass

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
            # the desk's secret read again: the config may have come to give one, or to give none
            settings = shared_secret.settled(config.load(self.settings.path), self.db)
            desk = desk_for(
                settings, store=self.desk.store, clock=self.desk.clock, parser=self.desk.parser
            )
            # every template rendered with sample data before the first mail needs one
            samples.require(desk)
        except (ConfigError, OSError, ValueError, DatabaseError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. a template that does not compile
            log.error(
                "reload refused, keeping the running configuration: %s: %s",
                type(exc).__name__,
                exc,
            )
            return False
        old = self.settings
        unchanged = [
            key
            for key, before, after in (
                ("[[mailboxes]]", old.mailboxes, settings.mailboxes),
                ("[smtp]", old.smtp, settings.smtp),
                ("[database]", old.database_url, settings.database_url),
                ("[store]", old.store, settings.store),
                ("[metrics]", old.metrics, settings.metrics),
            )
            if before != after
        ]
        self.desk = desk
        self.settings = dataclasses.replace(
            settings,
            mailboxes=old.mailboxes,
            smtp=old.smtp,
            database_url=old.database_url,
            metrics=old.metrics,
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

    # ------------------------------------------------------------------ tasks and waits

    def task(self, what: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """``work`` as a task named ``what``; an error escaping it stops the daemon."""
        task = asyncio.create_task(self.guarded(what, work), name=what)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def guarded(self, what: str, work: Coroutine[Any, Any, None]) -> None:
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

    def fail_soon(self, what: str, error: BaseException) -> None:
        """``fail``, from another thread."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.fail, what, error)

    def when_stopped(self, react: Callable[[], None]) -> asyncio.Future[Any]:
        """Call ``react`` once the stop is set (now, if it is); cancel what this returns to
        stop listening."""
        waiter = asyncio.ensure_future(self.stop.wait())

        def stopped(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                react()

        waiter.add_done_callback(stopped)
        return waiter

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

    async def until(self, event: asyncio.Event, seconds: float | None = None) -> None:
        """Wait until ``event`` is set or the stop is (or ``seconds`` passed)."""
        waits = [asyncio.create_task(event.wait()), asyncio.create_task(self.stop.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def stall(self, where: Loop) -> None:
        """Fault injection (tests): make no more progress here, as a loop stuck in a read or a
        lock, until the daemon stops, when ``faults.stalls`` names ``where``."""
        if where in self.faults.stalls:
            self.stuck.add(where)
            await self.stop.wait()
