"""Telling systemd how the daemon is: READY once the mailboxes are watched, WATCHDOG=1 only
while every loop makes progress, a STATUS line, STOPPING at the end.

Beside the flow: each of the daemon's loops marks its progress on a ``Pulse`` (a cycle done, or
a wait with a deadline begun); ``Watchdog`` pings systemd at half the unit's ``WatchdogSec``
while every pulse is fresh, and stops pinging while one is not. A thread stuck for good (a read
that never returns, a lock never released) then has systemd kill and restart the daemon,
instead of leaving it alive and idle. The sd_notify protocol is one datagram to the unix
socket named in ``$NOTIFY_SOCKET`` (a name starting with ``@`` is in the abstract namespace),
so no library is needed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

log = logging.getLogger("maildesk.watchdog")  # the logs name the job, not the module path


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where systemd listens (``NOTIFY_SOCKET``) and its watchdog interval in seconds
    (``WATCHDOG_USEC``; None when the unit sets no ``WatchdogSec``)."""

    address: str
    interval: float | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier | None:
        """The notifier systemd set up for this process (None: not started by systemd with
        ``Type=notify``). The variables are taken out of ``environ``, as sd_notify does, so
        that no child process (the delivery process, a token command) takes them for its own."""
        address = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        if not address:
            return None
        interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            interval = int(usec) / 1e6
        return cls(address, interval)

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; False (and a debug line) when it cannot go."""
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall("\n".join(fields).encode("utf-8", "replace"))
        except OSError as exc:
            log.debug("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True


class Pulse:
    """The progress of one loop, marked from any thread: ``beat`` when it completed a step,
    ``rest`` when it begins a wait that ends by itself (a backoff, the wait for a lease).
    A loop in another process is watched through ``describe`` there and ``mirror`` here."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._last = clock()
        self._until = -math.inf  # resting until then

    def beat(self) -> None:
        with self._lock:
            self._last = self._clock()
            self._until = -math.inf

    def rest(self, seconds: float) -> None:
        """A wait of at most ``seconds`` begins: it counts as progress until it ends."""
        with self._lock:
            self._until = self._clock() + seconds

    def stalled(self, limit: float) -> float | None:
        """How long since the last progress, when that is over ``limit`` seconds; else None."""
        now = self._clock()
        with self._lock:
            if now <= self._until:
                return None
            since = now - max(self._last, self._until)
        return since if since > limit else None

    def describe(self) -> str:
        """``beat AGE`` (seconds since the last progress) or ``rest LEFT`` (seconds of a wait)."""
        now = self._clock()
        with self._lock:
            if now <= self._until:
                return f"rest {self._until - now:.3f}"
            return f"beat {now - max(self._last, self._until):.3f}"

    def mirror(self, described: str) -> None:
        """Take the state ``describe`` gave in another process (ignored if garbled)."""
        kind, _, number = described.partition(" ")
        try:
            seconds = float(number)
        except ValueError:
            return
        now = self._clock()
        with self._lock:
            if kind == "rest":
                self._until = now + seconds
            elif kind == "beat":
                self._last, self._until = now - seconds, -math.inf


class Watchdog:
    """READY=1 once the daemon is up, then WATCHDOG=1 at half the interval while no pulse is
    stalled, a STATUS line when the daemon's state changes, STOPPING=1 at the end."""

    def __init__(
        self,
        notifier: Notifier,
        pulses: Callable[[], Iterable[Pulse]],
        status: Callable[[], str],
    ) -> None:
        self.notifier = notifier
        self.pulses = pulses
        self.status = status
        self._said = ""
        self._stalled: tuple[str, ...] = ()

    async def run(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        await _first(ready.wait(), stop.wait())
        if stop.is_set():
            self.notifier.send("STOPPING=1")
            return
        self._said = self.status()
        self.notifier.send("READY=1", f"STATUS={self._said}")
        interval = self.notifier.interval
        if interval is not None:
            log.info("systemd watchdog: every loop must make progress within %g s", interval)
        while not stop.is_set():
            self.tick()
            try:
                await asyncio.wait_for(stop.wait(), interval / 2 if interval else 5.0)
            except TimeoutError:
                pass
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    def tick(self) -> None:
        """Ping (when every loop is making progress) and say what changed."""
        fields = []
        interval = self.notifier.interval
        if interval is not None:
            stalled = {p.name: age for p in self.pulses() if (age := p.stalled(interval))}
            if not stalled:
                fields.append("WATCHDOG=1")
            elif tuple(stalled) != self._stalled:
                log.error(
                    "no sign of life to systemd (its watchdog restarts the daemon): %s",
                    ", ".join(
                        f"{name} made no progress for {age:.0f} s" for name, age in stalled.items()
                    ),
                )
            self._stalled = tuple(stalled)
        status = self.status()
        if status != self._said:
            self._said = status
            fields.append(f"STATUS={status}")
        if fields:
            self.notifier.send(*fields)


async def _first(*waits: object) -> None:
    """Wait until the first of ``waits`` (coroutines) is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
