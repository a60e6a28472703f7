"""Which of the desk's filters a message matches, found in the parse worker within a bound.

The last step of a parse in a worker (``zygote``): each ``Filter`` (the patterns of one of the
config's ``[[rules]]``) is matched against the parsed message, and the names of those that
match go back with it (``Inbound.matched``); the desk decides what they mean. Python's ``re``
backtracks, so a pattern such as ``(a+)+$`` can take exponential time on a crafted text. Two
bounds hold: the text looked at is cut (the first ``TEXT_CHARS`` characters of the body and of
the subject, ``ADDRESSES`` addresses), and each filter gets ``FILTER_SECONDS`` on the worker's
alarm clock (``re`` checks for signals while it backtracks), all of them together a quarter of
the parse's seconds. A filter out of time counts as not matching and is named in
``Inbound.slow``. Should the alarm not end it, the parse's own budget does (the worker is
killed and the message quarantined), so no pattern can hold up a mailbox.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

TEXT_CHARS = 64 * 1024  # of the body and of the subject, from the start
ADDRESSES = 100  # of To, Cc and Delivered-To together
FILTER_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Filter:
    """One rule's patterns (case-blind regular expressions; None: not looked at). It matches
    a message when every pattern given finds something in its field."""

    name: str
    sender: str | None = None  # the From header as written: display name and address
    recipients: str | None = None  # any one address of To, Cc or Delivered-To
    subject: str | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Fields:
    """What filters look at, cut to the bounds."""

    sender: str
    recipients: tuple[str, ...]
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class Found:
    matched: tuple[str, ...] = ()  # the filters that match, in order
    slow: tuple[str, ...] = ()  # the filters given up for time (they do not match)


class _OutOfTime(Exception):
    pass


def fields(sender: str, recipients: Iterable[str], subject: str, body: str) -> Fields:
    return Fields(
        sender=sender[:TEXT_CHARS],
        recipients=tuple(recipients)[:ADDRESSES],
        subject=subject[:TEXT_CHARS],
        body=body[:TEXT_CHARS],
    )


def search(filters: Iterable[Filter], found_in: Fields, seconds: float) -> Found:
    """The filters that match ``found_in``: each within ``FILTER_SECONDS``, all of them within
    ``seconds``; one given up counts as not matching."""
    matched: list[str] = []
    slow: list[str] = []
    ends = time.monotonic() + seconds
    for each in filters:
        left = min(FILTER_SECONDS, ends - time.monotonic())
        verdict = _within(left, partial(_matches, each, found_in)) if left > 0 else None
        if verdict is None:
            slow.append(each.name)
        elif verdict:
            matched.append(each.name)
    return Found(tuple(matched), tuple(slow))


def _matches(each: Filter, found_in: Fields) -> bool:
    if each.sender is not None and not _find(each.sender, found_in.sender):
        return False
    if each.recipients is not None and not any(
        _find(each.recipients, address) for address in found_in.recipients
    ):
        return False
    if each.subject is not None and not _find(each.subject, found_in.subject):
        return False
    return each.body is None or _find(each.body, found_in.body)


def _find(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def _within(seconds: float, work: Callable[[], bool]) -> bool | None:
    """``work()``, or None when it takes longer than ``seconds`` (on the alarm clock, which only
    the main thread has: elsewhere it runs unbounded here, bounded by the parse's budget)."""
    if threading.current_thread() is not threading.main_thread():
        return work()
    before = signal.signal(signal.SIGALRM, _alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return work()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _OutOfTime:
        return None
    finally:
        signal.signal(signal.SIGALRM, before)


def _alarm(signum: int, frame: object) -> None:
    raise _OutOfTime
