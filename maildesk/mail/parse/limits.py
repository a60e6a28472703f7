"""What one message may cost: structure limits checked on its bytes, and its parse's budget.

The first step of ``inbound.parse``: the header block is cut to ``max_headers`` and
``max_header_bytes``, and the MIME tree's depth, width and nesting of messages are bounded by a
linear scan of the bytes before any recursive parser (the standard library's, mail-parser's)
sees them; the walk (``mime``) checks the same limits on the tree it gets. ``Budget`` adds the
time and memory a parse worker may take (``maildesk.mail.parsing``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maildesk.mail.parse.filters import Filter
from maildesk.mail.parse.text import Defects


@dataclass(frozen=True, slots=True)
class Limits:
    """Structure limits applied while parsing (``[limits]`` in the config)."""

    max_message_bytes: int = 50 * 1024 * 1024
    max_attachment_bytes: int = 25 * 1024 * 1024
    max_mime_depth: int = 20
    max_parts: int = 500
    max_headers: int = 1000
    max_header_bytes: int = 256 * 1024
    max_nested_messages: int = 3
    max_text_chars: int = 200_000  # a body's text is cut here, with a line saying so


@dataclass(frozen=True, slots=True)
class Budget:
    """What one message may cost: the structure limits, seconds and megabytes of its parse;
    and the filters the worker looks for in it, within a quarter of those seconds."""

    limits: Limits = Limits()
    seconds: float = 10.0
    memory_mb: int = 512
    filters: tuple[Filter, ...] = ()


_HEADER_END = re.compile(rb"\r?\n\r?\n|\r\r")


def header_block(raw: bytes, limits: Limits, defects: Defects) -> tuple[bytes, str | None]:
    """The top-level header block, cut down to the limits; and the fatal reason if it was."""
    end = _HEADER_END.search(raw, 0, limits.max_header_bytes + 4)
    block = raw[: end.end()] if end else raw[: limits.max_header_bytes]
    fatal = None
    if end is None and len(raw) > limits.max_header_bytes:
        fatal = f"header block over {limits.max_header_bytes} bytes"
    fields = 0
    cut = len(block)
    pos = 0
    for line in block.splitlines(keepends=True):
        if line[:1] not in (b" ", b"\t", b"\r", b"\n"):
            fields += 1
            if fields > limits.max_headers:
                cut = pos
                fatal = fatal or f"more than {limits.max_headers} header fields"
                break
        pos += len(line)
    if cut < len(block):
        block = block[:cut] + b"\r\n"
    elif fatal is not None:
        # cut inside a long field: keep only whole lines, the partial one is lost
        last = max(block.rfind(b"\n"), 0)
        block = block[:last] + b"\r\n\r\n"
    if fatal:
        defects.add(fatal)
    return block, fatal


_MESSAGE_HINT = re.compile(rb"message/(?:rfc822|global)\b", re.IGNORECASE)


def _count_folded(raw: bytes, needles: tuple[bytes, ...], chunk: int = 1 << 20) -> list[int]:
    """How often each needle occurs in ``raw``, ignoring ASCII case. Counted in C over lowered
    slices: ten times faster than a case-blind regex, and never a lowered copy of a whole
    25 MB message."""
    counts = [0] * len(needles)
    overlap = max(len(n) for n in needles) - 1
    for start in range(0, len(raw), chunk):
        piece = raw[start : start + chunk + overlap].lower()
        for index, needle in enumerate(needles):
            # only matches that start inside this chunk; the overlap belongs to the next one
            counts[index] += piece.count(needle, 0, chunk + len(needle) - 1)
    return counts


def shape_limits(raw: bytes, limits: Limits) -> str | None:
    """Reject trees too deep or too wide before the recursive stdlib parser sees them."""
    hinted, boundaries = _count_folded(raw, (b"message/", b"boundary"))
    depth_bound = 1 + boundaries + hinted
    nested_bound = sum(1 for _ in _MESSAGE_HINT.finditer(raw)) if hinted else 0
    parts_bound = 1 + raw.count(b"\n--") + depth_bound
    if (
        depth_bound <= limits.max_mime_depth
        and nested_bound <= limits.max_nested_messages
        and parts_bound <= limits.max_parts
    ):
        return None
    return _MimeScan(limits).run(raw)


_CT_FIELD = re.compile(rb"content-type[ \t]*:(.*)", re.IGNORECASE | re.DOTALL)
CT_TYPE = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+)", re.IGNORECASE)
_CT_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))""", re.IGNORECASE)


class _MimeScan:
    """An iterative, line-based sketch of the MIME tree: depth, part count, nesting of messages.

    It follows the stdlib feed parser closely enough to bound what that (recursive) parser will
    build, in one pass and constant stack.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.parts = 1
        self.depth = 1
        self.level = 0
        self.stack: list[tuple[bytes, int, int]] = []  # boundary, depth of children, level
        self.content_type: bytes | None = None
        self.in_headers = True
        self.in_type_field = False

    def run(self, raw: bytes) -> str | None:
        for line in raw.splitlines():
            reason = self._headers(line) if self.in_headers else self._body(line)
            if reason:
                return reason
        return None

    def _headers(self, line: bytes) -> str | None:
        if line.strip():
            if line[:1] in (b" ", b"\t"):
                if self.in_type_field and self.content_type is not None:
                    self.content_type += b" " + line.strip()
                return None
            match = _CT_FIELD.match(line)
            self.in_type_field = match is not None
            if match:
                self.content_type = match.group(1).strip()
            return None
        self.in_headers = False
        value = self.content_type or b""
        self.content_type, self.in_type_field = None, False
        ctype_match = CT_TYPE.match(value)
        ctype = ctype_match.group(1).lower() if ctype_match else b"text/plain"
        boundary = _CT_BOUNDARY.search(value)
        if ctype.startswith(b"multipart/") and boundary:
            self.stack.append((boundary.group(1) or boundary.group(2), self.depth + 1, self.level))
        elif ctype.startswith(b"message/") and ctype != b"message/delivery-status":
            self.depth += 1
            self.parts += 1
            if ctype in (b"message/rfc822", b"message/global"):
                self.level += 1
            self.in_headers = True
            return self._check()
        return None

    def _body(self, line: bytes) -> str | None:
        if not line.startswith(b"--"):
            return None
        mark = line.rstrip(b" \t")
        for index in range(len(self.stack) - 1, -1, -1):
            boundary, depth, level = self.stack[index]
            if mark == b"--" + boundary:
                del self.stack[index + 1 :]
                self.depth, self.level = depth, level
                self.parts += 1
                self.in_headers = True
                return self._check()
            if mark == b"--" + boundary + b"--":
                del self.stack[index:]
                return None
        return None

    def _check(self) -> str | None:
        return limit_reason(self.limits, self.depth, self.parts, self.level)


def limit_reason(limits: Limits, depth: int, parts: int, level: int) -> str | None:
    if depth > limits.max_mime_depth:
        return f"MIME nesting deeper than {limits.max_mime_depth} levels"
    if parts > limits.max_parts:
        return f"more than {limits.max_parts} MIME parts"
    if level > limits.max_nested_messages:
        return f"messages nested deeper than {limits.max_nested_messages} levels"
    return None
