"""Poison mail for growth tests: each hostile shape at a size ``n``, and ways to weigh the work.

Every builder returns a whole message as bytes, so the same shape serves the parser's tests and
the end-to-end ones. Work is weighed without wall-clock thresholds: ``growth`` compares the CPU
time of the same work at ``n`` and at ``8 n`` (see there why that cannot flake), and
``python_calls`` counts function calls, which is exact.
"""

from __future__ import annotations

import base64
import struct
import sys
import time
from collections.abc import Callable
from email.utils import make_msgid
from types import FrameType
from typing import Any

GROWTH = 8  # each shape is weighed at n and at 8 n
# At 8 times the input, linear work costs about 8 times as much and quadratic work 64 times. The
# bound sits well between: linear code would have to run 2.5 times slower per byte on the larger
# input in the best of five runs to reach it, and the quadratic code it replaces lands far above.
LINEAR_BOUND = 20


def mail(
    body: bytes | str,
    *,
    subtype: str = "plain",
    sender: str = "poison@sender.test",
    subject: str = "Poison",
) -> bytes:
    """A single-part text mail; the body travels in base64, so its lines can be of any length."""
    data = body.encode() if isinstance(body, str) else body
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = (
        f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: {make_msgid(domain='sender.test')}\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode() + encoded


# --------------------------------------------------------------------------- plain text


def spaces(n: int) -> bytes:
    """A line of ``n`` spaces between two short lines."""
    return mail("Hello,\n" + " " * n + "\nthe printer is broken.\n")


def attributions(n: int) -> bytes:
    """``n`` attribution lines, each with one quoted line under it."""
    pair = "On Mon, Jan 5, 2026 at 10:00 AM Bob <bob@example.org> wrote:\n> quoted\n"
    return mail("Hello\n" + pair * n)


def unled_attributions(n: int) -> bytes:
    """``n`` of Gmail's attributions that begin with a name (each after a blank line, wrapped
    over two lines, with a quoted line under it)."""
    pair = "\nJane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026,\n10:00:\n> quoted\n"
    return mail("Hello\n" + pair * n)


def blank_tail(n: int) -> bytes:
    """A short text, then ``n`` lines holding only a space."""
    return mail("Hello,\nthe printer is broken.\n" + " \n" * n)


def bounce_line(n: int) -> bytes:
    """A bounce without a report (read by its words): a line naming the address that failed,
    and one that begins with an address and goes on in ``n`` spaces and then a word."""
    return mail(
        "Delivery to the following recipient failed:\n\nbob@example.org: 550 5.1.1 unknown\n"
        + "carol@example.org"
        + " " * n
        + "x\n",
        sender="MAILER-DAEMON@mx.example.org",
        subject="Undelivered Mail Returned to Sender",
    )


# --------------------------------------------------------------------------- HTML


def nested_quotes(n: int) -> bytes:
    """HTML-only mail: ``n`` blockquotes, each inside the one before, each with a line."""
    return mail("<html><body>" + "<blockquote>quoted line<br>\n" * n, subtype="html")


def nested_lists(n: int) -> bytes:
    """HTML-only mail: ``n`` lists, each inside the item of the one before."""
    return mail("<html><body>" + "<ul><li>item\n" * n, subtype="html")


def line_breaks(n: int) -> bytes:
    """HTML-only mail: a paragraph holding ``n`` line breaks (whitespace to HTML)."""
    return mail("<html><body><p>Hello" + " \n" * n + "- world</p>", subtype="html")


def open_tags(n: int) -> bytes:
    """HTML-only mail ending in ``n`` tags that never close (``<a<a<a...``)."""
    return mail("<html><body><p>Hello</p>" + "<a" * n, subtype="html")


def many_links(n: int) -> bytes:
    """HTML-only mail: ``n`` links, each shown with its target; half of them inside each other
    (never closed), and as many ``javascript:`` links, which are not."""
    links = "".join(
        f'<a href="https://example.com/p/{i}">link {i}</a> <a href="https://example.com/q/{i}">'
        f'open {i} <a href="javascript:void({i})">script {i}</a> '
        for i in range(n)
    )
    return mail(f"<html><body><p>Hello {links}</p>", subtype="html")


def long_link(n: int) -> bytes:
    """HTML-only mail: one link whose target is ``n`` characters long (and its text too)."""
    target = "https://example.com/" + "a" * n
    return mail(f'<html><body><p>Hello <a href="{target}">{"b" * n}</a></p>', subtype="html")


def many_cells(n: int) -> bytes:
    """HTML-only mail: a table of one row of ``n`` cells, and ``n`` tables inside each other."""
    row = "".join(f"<td>cell {i}</td>" for i in range(n))
    nested = "<table><tr><td>" * n
    return mail(f"<html><body><p>Hello</p><table><tr>{row}</tr></table>{nested}", subtype="html")


# --------------------------------------------------------------------------- TNEF


def tnef_object(name: int, data: bytes, *, level: int = 1, kind: int = 6) -> bytes:
    """One TNEF attribute: level, name, type, length, data and checksum."""
    head = struct.pack("<BHHI", level, name, kind, len(data))
    return head + data + struct.pack("<H", sum(data) & 0xFFFF)


def tnef(*objects: bytes) -> bytes:
    return struct.pack("<IH", 0x223E9F78, 0) + b"".join(objects)


MAPI_PROPS = 0x9003


def property_count_bomb(count: int = 0xFFFFFFFF) -> bytes:
    """A 33-byte winmail.dat: MAPI properties said to number ``count``; two fit in its bytes, and
    tnefparse 1.4 goes on reading past the end ``count`` times."""
    props = struct.pack("<I", count) + struct.pack("<HHI", 3, 1, 0) + struct.pack("<HH", 2, 1)
    return tnef(tnef_object(MAPI_PROPS, props))


def multi_value_bomb(count: int = 0xFFFFFFFF) -> bytes:
    """One multi-valued 16-bit property said to hold ``count`` values (empty past the end)."""
    props = struct.pack("<IHHI", 1, 0x1002, 0x6600, count)
    return tnef(tnef_object(MAPI_PROPS, props))


def tnef_mail(winmail: bytes, *, sender: str = "poison@sender.test") -> bytes:
    """A mail with a short text and ``winmail.dat`` attached."""
    encoded = base64.encodebytes(winmail).replace(b"\n", b"\r\n").decode()
    return (
        f"From: {sender}\r\nTo: support@example.com\r\nSubject: Forms attached\r\n"
        f"Message-ID: {make_msgid(domain='sender.test')}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nPlease see the forms.\r\n"
        '--b\r\nContent-Type: application/ms-tnef; name="winmail.dat"\r\n'
        'Content-Disposition: attachment; filename="winmail.dat"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}--b--\r\n"
    ).encode()


# --------------------------------------------------------------------------- weighing work


def cpu_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    """The least CPU time of this process over ``repeats`` runs of ``work``: CPU time is not
    stretched by other processes on the machine, and the least of several runs drops pauses."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def growth(work_at: Callable[[int], Callable[[], object]], n: int) -> float:
    """How much more CPU time the work costs at ``GROWTH`` times ``n`` than at ``n``."""
    small, large = work_at(n), work_at(GROWTH * n)
    small()  # caches (compiled patterns, imports) filled before anything is weighed
    return cpu_seconds(large) / max(cpu_seconds(small), 1e-3)


def python_calls(work: Callable[[], object]) -> int:
    """How many Python functions run during ``work``: an exact count of its steps."""
    calls = 0

    def count(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls
