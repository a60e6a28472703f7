"""The daemon's hands on the parse processes: the zygote it asks for workers, and each worker.

Between ``parsing.Parser``, which keeps idle workers and decides when one is replaced, and the
processes themselves (``zygote``): ``Zygote`` starts ``python -m maildesk.mail.zygote`` and
asks it for workers, killing one that does not answer in time; ``Worker`` hands a worker a
message, waits no longer than the message's seconds for the answer, and otherwise kills it
(SIGKILL through a pidfd) and reads the identity note it left. A one-shot command forks its
first worker from its own process (``Worker.fork_here``).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum

from maildesk.mail.inbound import Inbound, payloads, with_payloads
from maildesk.mail.parse.limits import Budget
from maildesk.mail.zygote import IGNORED, Channel, new_note, pidfd_of, read_note, worker_main

log = logging.getLogger("maildesk.parsing")  # the logs name the job, not the module path


class Overrun(Enum):
    """Why a parse was given up."""

    TIME = "time"
    MEMORY = "memory"
    DIED = "worker died"


@dataclass(frozen=True, slots=True)
class WorkerAnswer:
    """What a worker made of one message: the result, or why there is none."""

    inbound: Inbound | None = None  # the result; None when over budget
    overrun: Overrun | None = None
    grown: int = 0  # how far the worker's peak resident memory grew since it started, bytes


def start_soon(zygote: Zygote, budget: Budget) -> Future[Worker]:
    """A worker, asked for in a thread: the zygote may still be importing."""
    future: Future[Worker] = Future()

    def run() -> None:
        try:
            future.set_result(zygote.fork(budget))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the worker
            future.set_exception(exc)

    threading.Thread(target=run, name="parse-worker-start", daemon=True).start()
    return future


class Zygote:
    """``python -m maildesk.mail.zygote FD``: a single-threaded process that has imported
    ``inbound`` and forks a worker for each socket the daemon sends it, answering with the
    worker's pid and a pidfd. It exits when the daemon closes its end, or dies."""

    def __init__(self, fork_seconds: float) -> None:
        ours, theirs = socket.socketpair()
        # started with SIGTERM blocked (a new program inherits the starting thread's mask),
        # until it ignores it: a stop of the whole service must not end it while it imports
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, IGNORED)
        try:
            with theirs:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "maildesk.mail.zygote", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        ours.settimeout(fork_seconds)
        self.fork_seconds = fork_seconds
        self.control = ours
        self._lock = threading.Lock()

    def fork(self, budget: Budget) -> Worker:
        """A new worker for messages of ``budget`` (OSError when the zygote is gone, or did not
        answer within its ``fork_seconds``: then it is killed, so the next asks a new one)."""
        ours, theirs = socket.socketpair()
        note = new_note()
        request = pickle.dumps((logging.getLogger().getEffectiveLevel(), budget))
        try:
            with self._lock:
                socket.send_fds(self.control, [request], [theirs.fileno(), note])
                answer, fds, _, _ = socket.recv_fds(self.control, 32, 1)
        except OSError as exc:
            ours.close()
            os.close(note)
            if isinstance(exc, TimeoutError):  # stopped or stuck: waiting longer fixes nothing
                log.error(
                    "the parse zygote did not answer within %g s; starting a new one",
                    self.fork_seconds,
                )
                self.process.kill()
                self.process.wait()
            raise
        finally:
            theirs.close()
        if not answer:
            ours.close()
            os.close(note)
            raise OSError("the parse zygote exited")
        pidfd = fds[0] if fds else None
        return Worker(int(answer), pidfd, Channel(ours), note, budget)

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Stop it at once: it holds nothing worth a wait (one still importing would make a
        short ``run --once`` wait for its imports). Its workers die with it."""
        try:
            self.control.shutdown(socket.SHUT_RDWR)  # wakes a thread waiting for a fork
        except OSError:
            pass
        self.control.close()
        self.process.kill()
        self.process.wait()


class Worker:
    """One worker process and the daemon's ends of its socket and of its identity note."""

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        conn: Channel,
        note: int,
        budget: Budget,
        *,
        child: bool = False,
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd  # kills exactly this process, even once its pid is reused
        self.conn = conn
        self.note = note
        self.budget = budget  # its memory limit was set for this budget
        self.sent = 0  # messages sent; the note of the one in hand carries this number
        self.deadline = 0.0  # when the message in hand is out of time (monotonic clock)
        self.child = child  # forked by this process, which reaps it; else by the zygote
        self._answer = select.poll()  # kept: a poll object per wait costs more than the wait
        self._answer.register(conn.fileno(), select.POLLIN)

    @classmethod
    def fork_here(cls, budget: Budget) -> Worker:
        """A worker forked from this process (which must have no other thread)."""
        ours, theirs = socket.socketpair()
        note = new_note()
        level = logging.getLogger().getEffectiveLevel()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ours.close()  # or the worker would never see the end of its input
            # nothing of the command's own input and output: an MTA reads that
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            worker_main(theirs.detach(), note, level, budget)
        theirs.close()
        return cls(pid, pidfd_of(pid), Channel(ours), note, budget, child=True)

    def send(self, raw: bytes) -> None:
        """Hand it a message; its time starts now."""
        self.deadline = time.monotonic() + self.budget.seconds
        self.sent += 1
        try:
            self.conn.send(raw)
        except OSError:
            self.deadline = 0.0  # dead: ``receive`` says so at once

    def receive(self) -> WorkerAnswer:
        """Its answer for the message sent, waiting no longer than the message's time."""
        try:
            if not self.deadline:
                raise EOFError
            if not self._answer.poll(max(self.deadline - time.monotonic(), 0) * 1000):
                return WorkerAnswer(overrun=Overrun.TIME)
            kind, *rest = pickle.loads(self.conn.receive())
            _relog(rest[-1])
            if kind == "over":
                return WorkerAnswer(overrun=Overrun.MEMORY)
            result, grown = rest[0], rest[1]
            frames = [self.conn.receive() for _ in payloads(result)]
            return WorkerAnswer(inbound=with_payloads(result, frames), grown=grown)
        except (EOFError, OSError):
            return WorkerAnswer(overrun=Overrun.DIED)

    def idle(self) -> bool:
        """Still there and waiting: an idle worker says nothing, so anything to read on its
        socket (the end of it) means it died meanwhile (killed, or its zygote gone)."""
        return not self._answer.poll(0)

    def stop(self) -> Inbound | None:
        """SIGKILL it, wait until it is gone, close it; the identity headers it noted for the
        message in hand, if it got that far."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                select.select([self.pidfd], [], [], 1.0)  # readable once it has exited
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already
        identity = read_note(self.note, self.sent)
        self.close()
        return identity

    def close(self) -> None:
        """Close its socket and wait for it to exit, which an idle worker does at once (so
        its memory is given back before the next message)."""
        self.conn.close()
        if self.child:
            os.waitpid(self.pid, 0)
        elif self.pidfd is not None:
            select.select([self.pidfd], [], [], 1.0)  # readable once it has exited
        for fd in (self.pidfd, self.note):
            if fd is not None:
                os.close(fd)


def _relog(records: list[tuple[str, int, str]]) -> None:
    """Log here what the worker would have logged (it has no handlers of its own)."""
    for name, level, text in records:
        logging.getLogger(name).log(level, "%s", text)
