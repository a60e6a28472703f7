"""The parse processes: a zygote that forks workers, and a worker's loop within its budget.

Started by the daemon's side (``workers``) as ``python -m maildesk.mail.zygote FD``: a fresh,
single-threaded interpreter that has imported ``inbound`` once and forks a worker for each
socket it is sent (a fork of the multi-threaded daemon could inherit a lock another thread
held, and hang). A worker reads messages in frames from its socket (``Channel``), notes each
one's identity headers where the daemon finds them should the parse never finish (the note),
parses it with ``inbound.parse`` under an address-space limit, and answers with the ``Inbound``
(attachment payloads in frames of their own) and what it logged. Neither stops on SIGTERM or
SIGINT; workers die with the zygote, which exits when the daemon's end of its socket closes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

from maildesk.mail import inbound
from maildesk.mail.inbound import Inbound
from maildesk.mail.parse.limits import Budget

# The address-space limit is this fraction above the budget, and the budget is judged by the
# worker's peak: a MemoryError that a library swallows (and turns into a partial result) can
# then only happen past the budget, where the peak gives it away.
HEADROOM = 1 / 8
MAX_LOG_RECORDS = 20  # per message: hostile mail must not flood the daemon's log
_MB = 1 << 20
# The zygote and the workers ignore these: the daemon stops them (by closing their sockets,
# or with SIGKILL), after the message in hand.
IGNORED = frozenset({signal.SIGTERM, signal.SIGINT})


# ------------------------------------------------------------------------------------------
# Shared by both sides: the frames on a worker's socket, and the identity note
# ------------------------------------------------------------------------------------------


class Channel:
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


# what is known of a message whose headers were not read either
NOBODY = Inbound(
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


# The identity note: a small shared file (memfd) the worker writes the identity headers of each
# message into, numbered, before the body walk. The daemon reads it only when a parse fails, so
# an ordinary message costs the daemon no extra wake-up.
NOTE_BYTES = 64 * 1024
_NOTE_HEAD = struct.Struct("<QI")  # message number, length of the pickle that follows


def new_note() -> int:
    note = os.memfd_create("maildesk-parse-identity")
    os.ftruncate(note, NOTE_BYTES)
    return note


def _write_note(note: int, number: int, identity: Inbound) -> None:
    """What the quarantine shows of a message: its Message-ID, From and Subject."""
    fields = (identity.message_id, identity.from_raw, identity.subject)
    data = pickle.dumps(fields, pickle.HIGHEST_PROTOCOL)
    if _NOTE_HEAD.size + len(data) <= NOTE_BYTES:
        os.pwrite(note, _NOTE_HEAD.pack(number, len(data)) + data, 0)


def read_note(note: int, number: int) -> Inbound | None:
    try:
        found, size = _NOTE_HEAD.unpack(os.pread(note, _NOTE_HEAD.size, 0))
        if found != number:
            return None  # killed before it read this message's headers
        message_id, from_raw, subject = pickle.loads(os.pread(note, size, _NOTE_HEAD.size))
    except Exception:  # noqa: BLE001 - a note cut short by the kill is no note
        return None
    return dataclasses.replace(NOBODY, message_id=message_id, from_raw=from_raw, subject=subject)


# ------------------------------------------------------------------------------------------
# The processes
# ------------------------------------------------------------------------------------------


def zygote_main(control_fd: int) -> None:
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
            worker_main(fds[0], fds[1], level, budget)
        for fd in fds:
            os.close(fd)
        pidfd = pidfd_of(pid)
        socket.send_fds(control, [b"%d" % pid], [pidfd] if pidfd is not None else [])
        if pidfd is not None:
            os.close(pidfd)


def worker_main(channel: int, note: int, level: int, budget: Budget) -> NoReturn:
    """A freshly forked worker: serve, then exit without running the parent's exit handlers."""
    code = 0
    try:
        _serve(Channel(socket.socket(fileno=channel)), note, level, budget)
    except BaseException:  # noqa: BLE001 - a worker never returns into its parent's code
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def pidfd_of(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # exited already, or no pidfds (Linux before 5.3)
        return None


def _serve(conn: Channel, note: int, level: int, budget: Budget) -> None:
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


def _one(conn: Channel, raw: bytes, task: _Task, shipped: _Shipped) -> bool:
    """Parse one message and answer; False when the worker should exit."""
    try:
        result = inbound.parse(
            raw,
            task.budget.limits,
            identified=lambda found: _write_note(task.note, task.number, found),
        )
        del raw
        budget = task.budget
        result = inbound.filtered(result, budget.filters, budget.seconds / 4)
        grown = _peak_resident() - task.start  # what its biggest message took
        if _ran_out(result) or grown > task.budget.memory_mb * _MB:
            del result
            conn.send(pickle.dumps(("over", shipped.take())))
            return False
        # the files' bytes follow, each a frame of its own: no pickled copy
        answer = ("done", inbound.without_payloads(result), grown, shipped.take())
        conn.send(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL))
        for payload in inbound.payloads(result):
            conn.send(payload)
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
    # as maildesk.mail.zygote, not __main__: the functions the workers run are this very module's
    from maildesk.mail import zygote

    zygote.zygote_main(int(sys.argv[1]))
