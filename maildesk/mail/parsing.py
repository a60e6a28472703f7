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

Workers are forked by a zygote (``python -m maildesk.mail.parsing``), a fresh single-threaded
interpreter that imports ``inbound`` once: a fork of the multi-threaded daemon could inherit a
lock another thread held (logging, stdio) and hang. One-shot commands, which have no thread yet,
fork their first worker themselves. The daemon hands each message to a worker as soon as it is
fetched (``Parser.begin``) and commits the one before meanwhile. A worker whose peak grew by
more than ``RECYCLE_BYTES`` is replaced, since malloc keeps a process's high-water mark. Workers
die with the zygote (``PR_SET_PDEATHSIG``), which exits when the daemon's end of its socket
closes, even when the daemon is killed. Neither stops on SIGTERM or SIGINT: those reach every
process of the service at once (systemd's default ``KillMode=control-group``, Ctrl-C), and the
daemon finishes the message in hand before it closes the zygote.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from maildesk.mail import inbound
from maildesk.mail.inbound import Inbound, Limits

log = logging.getLogger("maildesk.parsing")  # the logs name the job, not the module path

REASON = "parse budget exceeded"
# A worker whose peak resident memory grew this much over its start is replaced.
RECYCLE_BYTES = 32 << 20
# The address-space limit is this fraction above the budget, and the budget is judged by the
# worker's peak: a MemoryError that a library swallows (and turns into a partial result) can
# then only happen past the budget, where the peak gives it away.
HEADROOM = 1 / 8
MAX_LOG_RECORDS = 20  # per message: hostile mail must not flood the daemon's log
# How long the zygote may take to answer a request for a worker (it forks at once; a fresh one
# imports first, about a second). One that does not answer (stopped, stuck) is replaced.
FORK_SECONDS = 20.0
_MB = 1 << 20
# The zygote and the workers ignore these: the daemon stops them (by closing their sockets,
# or with SIGKILL), after the message in hand.
IGNORED = frozenset({signal.SIGTERM, signal.SIGINT})


@dataclass(frozen=True, slots=True)
class Budget:
    """What one message may cost: ``inbound``'s structure limits, seconds and megabytes."""

    limits: Limits = Limits()
    seconds: float = 10.0
    memory_mb: int = 512


class Overrun(Enum):
    """Why a parse was given up."""

    TIME = "time"
    MEMORY = "memory"
    DIED = "worker died"


class Parser:
    """Parses messages in worker processes: one per caller parsing at the same time (the
    daemon's mailboxes run in threads of their own), started in the background and kept for
    the next message. Nothing starts before ``start`` or the first ``parse``. Thread-safe;
    ``close`` ends the workers and the zygote."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._idle: list[_Worker] = []
        self._coming: list[Future[_Worker]] = []
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
                self._idle.append(_Worker.fork_here(budget))
            else:
                self._coming.append(_start_soon(self._running_zygote(), budget))

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

    def _running_zygote(self) -> _Zygote:
        """The zygote, started again if it died (called with the lock held)."""
        if self._closed:
            raise OSError("the parser is closed")
        if self._zygote is None or not self._zygote.alive():
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = _Zygote()
        return self._zygote

    def _take(self, budget: Budget) -> _Worker:
        """An idle worker, else the one starting, else a new one."""
        fresh = False  # a new zygote was asked already
        while True:
            coming: Future[_Worker] | None = None
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

    def _give_back(self, worker: _Worker, grown: int) -> None:
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
                self._coming.append(_start_soon(self._running_zygote(), budget))


class Parsing:
    """One message in a worker (``Parser.begin``): ``result()`` once, or ``cancel()``."""

    def __init__(self, parser: Parser, raw: bytes, budget: Budget) -> None:
        self._parser = parser
        self._raw = raw
        self._budget = budget
        self._worker: _Worker | None = parser._take(budget)
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


def _close_started(future: Future[_Worker]) -> None:
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
    base = identity or _NOBODY
    return dataclasses.replace(
        base, fatal=REASON, defects=(*base.defects, f"{REASON}: {why.value}"), size=len(raw)
    )


# what is known of a message whose headers were not read either
_NOBODY = Inbound(
    message_id=None,
    in_reply_to=(),
    references=(),
    subject="",
    sender=None,
    sender_name="",
    from_raw="",
    to=(),
    cc=(),
    delivered_to=(),
    reply_to=(),
    return_path=None,
    date=None,
    headers=(),
    text="",
    reply_text="",
    html=None,
    attachments=(),
    report=None,
    defects=(),
    size=0,
)


def _mid(identity: Inbound | None) -> str:
    return (identity.message_id if identity else None) or "no Message-ID"


# ------------------------------------------------------------------------------------------
# The daemon's side of one worker
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    inbound: Inbound | None = None  # the result; None when over budget
    overrun: Overrun | None = None
    grown: int = 0  # how far the worker's peak resident memory grew since it started, bytes


def _start_soon(zygote: _Zygote, budget: Budget) -> Future[_Worker]:
    """A worker, asked for in a thread: the zygote may still be importing."""
    future: Future[_Worker] = Future()

    def run() -> None:
        try:
            future.set_result(zygote.fork(budget))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the worker
            future.set_exception(exc)

    threading.Thread(target=run, name="parse-worker-start", daemon=True).start()
    return future


class _Channel:
    """Frames (a length, then that many bytes) over a stream socket. Each frame is received
    into one allocation of its exact size (``MSG_WAITALL``): a 30 MB attachment costs 30 MB,
    not a buffer grown piece by piece."""

    _HEAD = struct.Struct("!Q")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        if len(data) < 1 << 16:
            self.sock.sendall(self._HEAD.pack(len(data)) + data)
        else:  # no copy of a large frame
            self.sock.sendall(self._HEAD.pack(len(data)))
            self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next frame (EOFError at the end of the stream)."""
        (size,) = self._HEAD.unpack(self._exactly(self._HEAD.size))
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = self.sock.recv(size, socket.MSG_WAITALL)
        if len(data) == size:
            return data
        pieces = [data]  # cut short by a signal, or the end of the stream
        missing = size - len(data)
        while missing:
            piece = self.sock.recv(missing, socket.MSG_WAITALL)
            if not piece:
                raise EOFError("the stream ended inside a frame")
            pieces.append(piece)
            missing -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self.sock.close()


class _Zygote:
    """``python -m maildesk.mail.parsing FD``: a single-threaded process that has imported
    ``inbound`` and forks a worker for each socket the daemon sends it, answering with the
    worker's pid and a pidfd. It exits when the daemon closes its end, or dies."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        # started with SIGTERM blocked (a new program inherits the starting thread's mask),
        # until it ignores it: a stop of the whole service must not end it while it imports
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, IGNORED)
        try:
            with theirs:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "maildesk.mail.parsing", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        ours.settimeout(FORK_SECONDS)
        self.control = ours
        self._lock = threading.Lock()

    def fork(self, budget: Budget) -> _Worker:
        """A new worker for messages of ``budget`` (OSError when the zygote is gone, or did not
        answer within ``FORK_SECONDS``: then it is killed, so the next asks a new one)."""
        ours, theirs = socket.socketpair()
        note = _new_note()
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
                    "the parse zygote did not answer within %g s; starting a new one", FORK_SECONDS
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
        return _Worker(int(answer), pidfd, _Channel(ours), note, budget)

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


class _Worker:
    """One worker process and the daemon's ends of its socket and of its identity note."""

    def __init__(
        self,
        pid: int,
        pidfd: int | None,
        conn: _Channel,
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
    def fork_here(cls, budget: Budget) -> _Worker:
        """A worker forked from this process (which must have no other thread)."""
        ours, theirs = socket.socketpair()
        note = _new_note()
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
            _worker_main(theirs.detach(), note, level, budget)
        theirs.close()
        return cls(pid, _pidfd(pid), _Channel(ours), note, budget, child=True)

    def send(self, raw: bytes) -> None:
        """Hand it a message; its time starts now."""
        self.deadline = time.monotonic() + self.budget.seconds
        self.sent += 1
        try:
            self.conn.send(raw)
        except OSError:
            self.deadline = 0.0  # dead: ``receive`` says so at once

    def receive(self) -> _Outcome:
        """Its answer for the message sent, waiting no longer than the message's time."""
        try:
            if not self.deadline:
                raise EOFError
            if not self._answer.poll(max(self.deadline - time.monotonic(), 0) * 1000):
                return _Outcome(overrun=Overrun.TIME)
            kind, *rest = pickle.loads(self.conn.receive())
            _relog(rest[-1])
            if kind == "over":
                return _Outcome(overrun=Overrun.MEMORY)
            result, grown = rest[0], rest[1]
            payloads = tuple(self.conn.receive() for _ in result.attachments)
            return _Outcome(inbound=_with_payloads(result, payloads), grown=grown)
        except (EOFError, OSError):
            return _Outcome(overrun=Overrun.DIED)

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
        identity = _read_note(self.note, self.sent)
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
        self.pidfd = None


# The identity note: a small shared file (memfd) the worker writes the identity headers of each
# message into, numbered, before the body walk. The daemon reads it only when a parse fails, so
# an ordinary message costs the daemon no extra wake-up.
NOTE_BYTES = 64 * 1024
_NOTE_HEAD = struct.Struct("<QI")  # message number, length of the pickle that follows


def _new_note() -> int:
    note = os.memfd_create("maildesk-parse-identity")
    os.ftruncate(note, NOTE_BYTES)
    return note


def _write_note(note: int, number: int, identity: Inbound) -> None:
    """What the quarantine shows of a message: its Message-ID, From and Subject."""
    fields = (identity.message_id, identity.from_raw, identity.subject)
    data = pickle.dumps(fields, pickle.HIGHEST_PROTOCOL)
    if _NOTE_HEAD.size + len(data) <= NOTE_BYTES:
        os.pwrite(note, _NOTE_HEAD.pack(number, len(data)) + data, 0)


def _read_note(note: int, number: int) -> Inbound | None:
    try:
        found, size = _NOTE_HEAD.unpack(os.pread(note, _NOTE_HEAD.size, 0))
        if found != number:
            return None  # killed before it read this message's headers
        message_id, from_raw, subject = pickle.loads(os.pread(note, size, _NOTE_HEAD.size))
    except Exception:  # noqa: BLE001 - a note cut short by the kill is no note
        return None
    return dataclasses.replace(_NOBODY, message_id=message_id, from_raw=from_raw, subject=subject)


def _with_payloads(result: Inbound, payloads: tuple[bytes, ...]) -> Inbound:
    if not payloads:
        return result
    attachments = tuple(
        dataclasses.replace(a, payload=p) for a, p in zip(result.attachments, payloads, strict=True)
    )
    return dataclasses.replace(result, attachments=attachments)


def _relog(records: list[tuple[str, int, str]]) -> None:
    """Log here what the worker would have logged (it has no handlers of its own)."""
    for name, level, text in records:
        logging.getLogger(name).log(level, "%s", text)


# ------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------


def _zygote_main(control_fd: int) -> None:
    """The zygote's loop: fork a worker on each socket received, answer with its pid and a
    pidfd; exit when the daemon's end closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    _ignore_stops()  # the daemon stops us by closing the socket
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(control, 1 << 16, 2)
        except ConnectionError:
            return
        if not request or len(fds) != 2:
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            level, budget = pickle.loads(request)
            _worker_main(fds[0], fds[1], level, budget)
        for fd in fds:
            os.close(fd)
        pidfd = _pidfd(pid)
        socket.send_fds(control, [b"%d" % pid], [pidfd] if pidfd is not None else [])
        if pidfd is not None:
            os.close(pidfd)


def _worker_main(channel: int, note: int, level: int, budget: Budget) -> NoReturn:
    """A freshly forked worker: serve, then exit without running the parent's exit handlers."""
    code = 0
    try:
        _serve(_Channel(socket.socket(fileno=channel)), note, level, budget)
    except BaseException:  # noqa: BLE001 - a worker never returns into its parent's code
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # exited already, or no pidfds (Linux before 5.3)
        return None


def _serve(conn: _Channel, note: int, level: int, budget: Budget) -> None:
    """The worker's loop: a message in, its identity noted, the result out, until the daemon
    closes the socket. Exits after a message over budget: its heap is not worth keeping."""
    _tether()
    _ignore_stops()  # the daemon decides what to do with the message
    shipped = _Shipped(level)
    start = _peak_resident()
    _limit_memory(_address_space() + int(budget.memory_mb * _MB * (1 + HEADROOM)))
    number = 0
    while True:
        number += 1
        try:
            raw = conn.receive()
        except EOFError:
            return
        except MemoryError:  # the message alone is over budget
            conn.send(pickle.dumps(("over", shipped.take())))
            return
        if not _one(conn, raw, _Task(number, note, budget, start), shipped):
            return


def _ignore_stops() -> None:
    """SIGTERM and SIGINT reach every process of the service at once (systemd's default
    ``KillMode=control-group``, Ctrl-C): the daemon's stop is the one stop, so they are
    ignored here (and let through, where they were blocked until now)."""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, IGNORED)


def _limit_memory(cap: int) -> None:
    # the soft limit only: the hard one stays as it was
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


@dataclass(frozen=True, slots=True)
class _Task:
    number: int  # the message's number on this worker, for the identity note
    note: int  # the note's file descriptor
    budget: Budget
    start: int  # the worker's resident memory before any message, bytes


def _one(conn: _Channel, raw: bytes, task: _Task, shipped: _Shipped) -> bool:
    """Parse one message and answer; False when the worker should exit."""
    try:
        result = inbound.parse(
            raw,
            task.budget.limits,
            identified=lambda found: _write_note(task.note, task.number, found),
        )
        del raw
        grown = _peak_resident() - task.start  # what its biggest message took
        if _ran_out(result) or grown > task.budget.memory_mb * _MB:
            del result
            conn.send(pickle.dumps(("over", shipped.take())))
            return False
        bare = result
        if result.attachments:  # their bytes follow, each a frame of its own: no pickled copy
            bare = dataclasses.replace(
                result,
                attachments=tuple(dataclasses.replace(a, payload=b"") for a in result.attachments),
            )
        answer = ("done", bare, grown, shipped.take())
        conn.send(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))
        for attachment in result.attachments:
            conn.send(attachment.payload)
        return True
    except MemoryError:
        conn.send(pickle.dumps(("over", shipped.take())))
        return False


def _ran_out(result: Inbound) -> bool:
    """Whether memory ran out somewhere that recorded it and went on with less."""
    return any("MemoryError" in text for text in (result.fatal or "", *result.defects))


def _address_space() -> int:
    """This process's address space now (what RLIMIT_AS limits), bytes."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _peak_resident() -> int:
    """The most memory this process ever had resident, bytes (a forked process starts from its
    size at the fork). One system call: cheap enough for every message."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tether() -> None:
    """Linux: named ``maildesk-parse`` (ps, top) and killed by the kernel when the zygote
    exits, which it does when the daemon does."""
    zygote = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, b"maildesk-parse", 0, 0, 0)  # PR_SET_NAME
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != zygote:  # it died while this process was starting
        os._exit(0)


class _Shipped(logging.Handler):
    """Keeps what the worker logs, to be logged by the daemon with the message's answer."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[tuple[str, int, str]] = []
        root = logging.getLogger()
        root.handlers[:] = [self]
        root.setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < MAX_LOG_RECORDS:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.records.append((record.name, record.levelno, text))

    def take(self) -> list[tuple[str, int, str]]:
        records, self.records = self.records, []
        return records


if __name__ == "__main__":
    # as maildesk.mail.parsing, not __main__: what the workers unpickle must be this very module
    from maildesk.mail import parsing

    parsing._zygote_main(int(sys.argv[1]))
