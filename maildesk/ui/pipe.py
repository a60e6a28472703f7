"""``maildesk ingest`` as an MTA's pipe sees it: exit 0 once the message is handled, 75 else.

Postfix and Exim bounce the mail to its sender for every exit status of a pipe command but 75
(EX_TEMPFAIL, and 71 for Postfix), and put the command's output in the bounce. So whatever
goes wrong before a message is handled (a config the pipe's user cannot read, a broken
template, the database down, a signal, memory, a crash, even maildesk failing to import or its
command line failing to parse) ends in exit 75, and the mail stays in the MTA's queue to be
tried again. Once the message is handled (a ticket, a follow-up, ignored, quarantined) the exit
is 0, whatever happens after.

What the command prints is for the MTA's log, and after days of deferral for a bounce the
customer reads: exactly one short line, ``maildesk: temporary failure: <what>``, naming a
class of problem and never a path, a host or an error text. The details (every log line, a
traceback) go to syslog, facility ``mail``, where the MTA logs too.

This module imports only the standard library, so that it can report maildesk itself failing
to import; ``__main__`` sends the ``ingest`` command here and every other one to ``cli``, and
the command line itself comes in as ``run``, imported only once the pipe's promise holds.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import syslog
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn, TextIO

EX_TEMPFAIL = 75

# Signals that would end the process without an exit status an MTA reads as "try again".
STOP_SIGNALS = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGALRM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGXCPU,
    signal.SIGXFSZ,
)


class Stopped(BaseException):
    """A signal arrived before the message was handled (a BaseException, like Ctrl-C, so no
    ``except Exception`` on the way takes it for a problem with the message)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    active = False  # a run under ``main`` is under way in this process
    handled = False
    stopped: int | None = None  # the stop signal received, if any


def active() -> bool:
    """``main`` is running this process's command (``cli`` hands an ``ingest`` started any
    other way, say from an old ``maildesk`` script, to ``main``)."""
    return _State.active


def is_ingest(argv: Sequence[str]) -> bool:
    """The command line asks for ``ingest`` (read without argparse, which may fail)."""
    return "ingest" in argv


def proceed() -> None:
    """Raise ``Stopped`` if a stop signal came; called before the message is handled. The
    signal handler raises at once, but an exception raised inside an at-fork hook (logging
    has one) is swallowed by the interpreter: this is where such a signal still stops us."""
    if _State.stopped is not None:
        raise Stopped(_State.stopped)


def handled() -> None:
    """The message is handled and committed: from now on the exit is 0, whatever happens."""
    _State.handled = True


Command = Callable[[list[str]], int]


def main(argv: Sequence[str], run: Command) -> int:
    """Run ``maildesk ARGV`` (an ``ingest``) with ``run``, the command line's main, under the
    pipe's promise; the exit status."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        failure = _run(argv, run)
        failed = failure is not None and not _State.handled
        if failed:
            assert failure is not None
            _say(sys.stderr, f"maildesk: temporary failure: {describe(failure)}")
            if isinstance(failure, Stopped):
                _exit_now()
        return EX_TEMPFAIL if failed else 0
    finally:
        _State.active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(argv: Sequence[str], run: Command) -> BaseException | None:
    """The command, with what it writes kept for syslog; what stopped it, if anything."""
    _State.active, _State.handled, _State.stopped = True, False, None
    details = io.StringIO()
    stderr, sys.stderr = sys.stderr, details  # everything maildesk writes is a detail
    failure: BaseException | None = None
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop)
        code = run(list(argv))
        if _State.stopped is not None and not _State.handled:
            failure = Stopped(_State.stopped)
        elif code != 0 and not _State.handled:
            failure = RuntimeError(f"exit status {code}")
    except BaseException as exc:  # noqa: BLE001 - every exit but 75 bounces the mail
        failure = exc
        traceback.print_exc(file=details)
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # too late to stop now: the line goes out
        sys.stderr = stderr
    to_syslog(details.getvalue(), error=failure is not None)
    return failure


def _exit_now() -> NoReturn:
    """Exit 75 without waiting for other threads. A stop signal raises wherever the main thread
    is, and may land inside a thread pool starting a worker (SIGXFSZ from that worker's first
    write, on a full disk), before the pool records it as one to end at exit: the interpreter
    then waited for it for good. Nothing of the message was committed, and nothing is left to
    finish."""
    sys.stdout.flush()
    os._exit(EX_TEMPFAIL)


def _stop(signum: int, _frame: FrameType | None) -> None:
    _State.stopped = signum
    if not _State.handled:
        raise Stopped(signum)


def describe(exc: BaseException) -> str:
    """The class of problem, for the one line: nothing from the config, the mail or a server."""
    if isinstance(exc, Stopped):
        return f"stopped by {signal.Signals(exc.signum).name}"
    if isinstance(exc, KeyboardInterrupt):
        return "stopped by SIGINT"
    if isinstance(exc, SystemExit):
        return "bad command line (maildesk ingest [--mailbox NAME])"
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, ImportError):
        return "maildesk cannot be loaded (a broken installation?)"
    known = _maildesk_problem(exc)
    if known:
        return known
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0)
        return f"system error {name}" if name else "system error"
    return f"internal error ({type(exc).__name__})"


def _maildesk_problem(exc: BaseException) -> str | None:
    """maildesk's own kinds of failure (imported late: maildesk may be what failed)."""
    try:
        from maildesk.config import ConfigError, ForeignDataDir, NoSuchMailbox
        from maildesk.models import DatabaseError
    except Exception:  # noqa: BLE001 - then it is not one of them
        return None
    if isinstance(exc, NoSuchMailbox):
        return f"no mailbox named {exc.name!r} in the configuration"
    if isinstance(exc, ForeignDataDir):
        return f"run as user {exc.owner}, whose data_dir it is, not as root"
    if isinstance(exc, ConfigError):
        return "configuration problem (run maildesk check-config as this user)"
    if isinstance(exc, DatabaseError):
        return "database unavailable"
    return None


def to_syslog(details: str, *, error: bool) -> None:
    """Every line maildesk wrote, to syslog (facility mail) as ``maildesk[pid]``; nothing
    happens where there is no syslog (no ``/dev/log``)."""
    lines = [line for line in details.splitlines() if line.strip()]
    if not lines:
        return
    syslog.openlog("maildesk", syslog.LOG_PID, syslog.LOG_MAIL)
    priority = syslog.LOG_ERR if error else syslog.LOG_INFO
    for line in lines:
        syslog.syslog(priority, line)
    syslog.closelog()


def _say(stream: TextIO, line: str) -> None:
    """The one line; a closed stderr (the MTA gone) must not turn 75 into a crash."""
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        pass
