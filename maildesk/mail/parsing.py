"""Parse each message in a worker process, under a time and a memory budget.

Where it sits: ``ingest.process`` hands a message's raw bytes to ``Parser.parse`` and gets the
``Inbound`` that ``inbound.parse`` made of them in a worker process. The daemon, ``maildesk
ingest`` and ``quarantine replay`` never parse in their own process, so no message can take
their time or memory: a parse that is not done within ``[limits] parse_seconds`` is ended with
SIGKILL, wherever it is (a regular expression, a C decoder, a library's loop), and a parse that
needs more than ``parse_memory_mb`` is refused by the kernel's address-space limit on the
worker. Either way the message comes back as an ``Inbound`` with ``fatal`` set to
``parse budget exceeded`` (the caller quarantines it) and the identity headers the worker
reported before it read the body, so the quarantine shows who sent what.

Workers are forked by a zygote (``python -m maildesk.mail.zygote``), a fresh single-threaded
interpreter that imports ``inbound`` once: a fork of the multi-threaded daemon could inherit a
lock another thread held (logging, stdio) and hang. One-shot commands, which have no thread yet,
fork their first worker themselves. The daemon hands each message to a worker as soon as it is
fetched (``Parser.begin``) and commits the one before meanwhile. A worker whose peak grew by
more than ``RECYCLE_BYTES`` is replaced, since malloc keeps a process's high-water mark. Workers
die with the zygote (``PR_SET_PDEATHSIG``), which exits when the daemon's end of its socket
closes, even when the daemon is killed. Neither stops on SIGTERM or SIGINT: those reach every
process of the service at once (systemd's default ``KillMode=control-group``, Ctrl-C), and the
daemon finishes the message in hand before it closes the zygote. This module keeps the
workers; ``workers`` holds the daemon's side of each process, ``zygote`` the processes' own.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import Future

from maildesk.mail.inbound import Inbound
from maildesk.mail.parse.limits import Budget
from maildesk.mail.workers import Overrun, Worker, Zygote, start_soon
from maildesk.mail.zygote import NOBODY

# what callers need: the parser, a message in hand, what it may cost, and why it gave up
__all__ = ["REASON", "Budget", "Parser", "Parsing"]

log = logging.getLogger("maildesk.parsing")  # the logs name the job, not the module path

REASON = "parse budget exceeded"
# A worker whose peak resident memory grew this much over its start is replaced.
RECYCLE_BYTES = 32 << 20
# How long the zygote may take to answer a request for a worker (it forks at once; a fresh one
# imports first, about a second). One that does not answer (stopped, stuck) is replaced.
FORK_SECONDS = 20.0


class Parser:
    """Parses messages in worker processes: one per caller parsing at the same time (the
    daemon's mailboxes run in threads of their own), started in the background and kept for
    the next message. Nothing starts before ``start`` or the first ``parse``. Thread-safe;
    ``close`` ends the workers and the zygote."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: Zygote | None = None
        self._idle: list[Worker] = []
        self._coming: list[Future[Worker]] = []
        self._closed = False

    def start(self, budget: Budget, *, fork: bool = False) -> None:
        """Have a worker ready before the first message (the zygote takes a moment to import);
        nothing once one was started.

        ``fork``: make the first worker a fork of this process, at once. Only while this
        process has no other thread: a one-shot command saves starting an interpreter."""
        with self._lock:
            if self._zygote is not None or self._idle or self._coming or self._closed:
                return
            if fork:
                self._idle.append(Worker.fork_here(budget))
            else:
                self._coming.append(start_soon(self._running_zygote(), budget))

    def parse(self, raw: bytes, budget: Budget) -> Inbound:
        """``inbound.parse(raw, budget.limits)`` in a worker, within ``budget``.

        Never raises for the message's sake: over budget, the result has ``fatal`` set. A worker
        that dies without an answer (killed from outside, or crashed in C) gets the message once
        more on a fresh worker; dying twice counts as over budget. Raises OSError only when no
        worker can be started at all, which is the machine's problem, not the message's."""
        return self.begin(raw, budget).result()

    def begin(self, raw: bytes, budget: Budget) -> Parsing:
        """``parse`` in two halves: the message goes to a worker now, and ``result()`` waits for
        it, so the caller can do other work meanwhile (commit the message before)."""
        return Parsing(self, raw, budget)

    def close(self) -> None:
        """End every worker and the zygote (an idle worker exits when its socket closes)."""
        with self._lock:
            self._closed = True
            workers, self._idle = self._idle, []
            coming, self._coming = self._coming, []
            zygote, self._zygote = self._zygote, None
        for future in coming:
            future.add_done_callback(_close_started)
        if zygote is not None:
            zygote.close()  # first: idle workers die with it, none waits for another's exit
        for worker in workers:
            worker.close()

    def _running_zygote(self) -> Zygote:
        """The zygote, started again if it died (called with the lock held)."""
        if self._closed:
            raise OSError("the parser is closed")
        if self._zygote is None or not self._zygote.alive():
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = Zygote(FORK_SECONDS)
        return self._zygote

    def _take(self, budget: Budget) -> Worker:
        """An idle worker, else the one starting, else a new one."""
        fresh = False  # a new zygote was asked already
        while True:
            coming: Future[Worker] | None = None
            with self._lock:
                worker = self._idle.pop() if self._idle else None
                if worker is None and self._coming:
                    coming = self._coming.pop(0)
                zygote = self._running_zygote() if worker is None and coming is None else None
            if coming is not None:
                try:
                    worker = coming.result()
                except OSError:  # the zygote died meanwhile: one more try on a fresh one
                    continue
            elif zygote is not None:
                try:
                    worker = zygote.fork(budget)
                except OSError:
                    if zygote.alive() or fresh:  # forking itself fails: the machine's problem
                        raise
                    fresh = True  # it died, or was killed for not answering: one new one
                    continue
            assert worker is not None
            if worker.budget == budget and worker.idle():
                return worker
            # started for another budget (the config was reloaded), or died while it waited
            worker.close()

    def _give_back(self, worker: Worker, grown: int) -> None:
        if grown > RECYCLE_BYTES:  # malloc keeps what it got: a fresh worker gives it back
            worker.close()
            self._replace(worker.budget)
            return
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.close()

    def _replace(self, budget: Budget) -> None:
        """Have the next worker started in the background, unless one is there."""
        with self._lock:
            if not self._closed and not self._idle and not self._coming:
                self._coming.append(start_soon(self._running_zygote(), budget))


class Parsing:
    """One message in a worker (``Parser.begin``): ``result()`` once, or ``cancel()``."""

    def __init__(self, parser: Parser, raw: bytes, budget: Budget) -> None:
        self._parser = parser
        self._raw = raw
        self._budget = budget
        self._worker: Worker | None = parser._take(budget)
        self._worker.send(raw)

    def result(self) -> Inbound:
        """The parsed message; over budget, one whose ``fatal`` says so (see ``Parser.parse``)."""
        assert self._worker is not None, "result() once, and not after cancel()"
        for attempt in (1, 2):
            worker = self._worker
            outcome = worker.receive()
            if outcome.inbound is not None:
                self._worker = None
                self._parser._give_back(worker, outcome.grown)
                return outcome.inbound
            identity = worker.stop()
            self._worker = None
            self._parser._replace(self._budget)
            assert outcome.overrun is not None
            if outcome.overrun is not Overrun.DIED or attempt == 2:
                return _over_budget(identity, self._raw, self._budget, outcome.overrun)
            log.warning(
                "<%s>: the parse worker died; parsing the message again on a fresh one",
                _mid(identity),
                extra={"message_id": _mid(identity), "ticket": "-"},
            )
            self._worker = self._parser._take(self._budget)
            self._worker.send(self._raw)
        raise AssertionError("unreachable")

    def cancel(self) -> None:
        """Forget the message (the caller stops): its worker is stopped and replaced."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
            self._parser._replace(self._budget)


def _close_started(future: Future[Worker]) -> None:
    if future.exception() is None:
        future.result().close()


def _over_budget(identity: Inbound | None, raw: bytes, budget: Budget, why: Overrun) -> Inbound:
    mid = _mid(identity)
    detail = {
        Overrun.TIME: f"not parsed within {budget.seconds:g} s (parse_seconds)",
        Overrun.MEMORY: f"needs more than {budget.memory_mb} MB to parse (parse_memory_mb)",
        Overrun.DIED: "the parse worker died twice on it",
    }[why]
    log.warning(
        "<%s>: %s: %s; the worker was stopped",
        mid,
        REASON,
        detail,
        extra={"message_id": mid, "ticket": "-"},
    )
    base = identity or NOBODY
    return dataclasses.replace(
        base, fatal=REASON, defects=(*base.defects, f"{REASON}: {why.value}"), size=len(raw)
    )


def _mid(identity: Inbound | None) -> str:
    return (identity.message_id if identity else None) or "no Message-ID"
