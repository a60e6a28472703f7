"""Text that never raises and is safe to show: charsets, cleaning, defects, the author's words.

The lowest of the parsing concerns (``maildesk.mail.parse``): every other one decodes and cleans
through it and records what it finds wrong in a ``Defects``. ``strip_quoted_history`` takes a
reply's text down to what its author wrote; ``html.body_texts`` calls it for the reply text.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from email.header import decode_header

_MAX_DEFECTS = 100
NAME_BYTES = 255  # a display name or a filename is cut to this


class Defects:
    """Defect strings, each once, in the order found (bounded: hostile mail has thousands)."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, text: str) -> None:
        if len(self._items) < _MAX_DEFECTS:
            self._items[clean_line(text, 300)] = None

    def items(self) -> tuple[str, ...]:
        return tuple(self._items)


def decode_bytes(
    data: bytes, charset: str | None, where: str, defects: Defects | None, quiet: bool = False
) -> str:
    """Declared charset (by its codec alias), else UTF-8, else cp1252 with replacement."""
    label = (charset or "").strip().strip("\"'").lower()
    if label:
        try:
            return data.decode(codecs.lookup(label).name)
        except LookupError:
            if defects is not None:
                defects.add(f"unknown charset {label!r} in {where}")
        except (UnicodeError, ValueError, TypeError):
            if defects is not None and not quiet:
                defects.add(f"{where} is not valid {label}")
    elif data.isascii():
        return data.decode("ascii")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        if defects is not None and not quiet:
            defects.add(f"{where}: undecodable bytes, read as cp1252")
        return data.decode("cp1252", "replace")


_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_INVISIBLE = re.compile("[\u200b\u2060\ufeff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    return _SURROGATES.search(text) is not None


def clean_line(text: str, limit: int | None = None) -> str:
    """One line of display text: no CR/LF/NUL/controls, NFC, spaces collapsed."""
    text = _SURROGATES.sub("\ufffd", text)
    text = _INVISIBLE.sub("", _LINE_BREAKS.sub(" ", text))
    text = unicodedata.normalize("NFC", " ".join(text.split()))
    return text[:limit] if limit is not None else text


def clean_text(text: str) -> str:
    """Multi-line body text: LF line ends, no NUL or controls (tabs kept), NFC."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SURROGATES.sub("\ufffd", _CONTROLS.sub("", text))
    return unicodedata.normalize("NFC", text)


def decoded(value: str, defects: Defects | None = None) -> str:
    """Decode RFC 2047 encoded words; unknown charsets fall back (UTF-8, cp1252), never raise."""
    if "=?" not in value:
        return value
    try:
        chunks = []
        for data, charset in decode_header(value):
            if isinstance(data, str):
                chunks.append(data)
            else:
                chunks.append(decode_bytes(data, charset, "an encoded word", defects, quiet=True))
        return "".join(chunks)
    except Exception:
        if defects is not None:
            defects.add("malformed encoded word")
        return value


# The stripper's patterns run on one line (or an attribution of up to three lines) at a time, and
# only on lines of at most this many characters: no attribution, header field, separator or
# signature line is longer, and a hostile mail's megabyte-long line then costs one pass, not a
# pattern's backtracking. Leading and trailing whitespace is taken by possessive quantifiers
# (``\s*+``), which never give back what they took, so each pattern is linear in its line.
_PATTERN_CHARS = 1000
# a client that wraps its attribution may leave the first word alone on its line ("On")
_ATTRIBUTION_START = re.compile(r"^\s*+(on|am|le|el|il|op|den|em|w)(?:\s|$)", re.I)
_ATTRIBUTION = re.compile(
    r"^\s*+(?:"
    r"(?:on|em|il)\s.{4,300}?\b(?:wrote|escreveu|ha scritto)\s*+:"
    r"|(?:am|op)\s.{4,300}?\b(?:schrieb|schreef)\b[^:]{0,200}+:"
    r"|den\s.{4,300}?\bskrev\b[^:]{0,200}+:"
    r"|le\s.{4,300}?\ba\s++écrit\s*+:"
    r"|el\s.{4,300}?\bescribió\s*+:"
    r"|w dniu\s.{4,300}?\b(?:pisze|napisał(?:\(a\))?+)\s*+:"
    r")\s*+$",
    re.I | re.S,
)
# Gmail's forms that begin with a name or a date, not a word of their own: German and Dutch on
# phones ("Jane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026, 10:00:"), Polish ("czw.,
# 26 lis 2026 o 10:00 Jane Doe <jane@example.com> napisał(a):") and Norwegian ("tor. 26. nov.
# 2026 kl. 10:00 skrev Jane Doe <jane@example.com>:"). Known by their end; searched, each
# alternative anchored on its word and possessive after it, so linear in the line.
_ATTRIBUTION_END = re.compile(
    r"(?:\b(?:schrieb\s++am|schreef\s++op)\s++[^:\n]{4,200}+:\d\d"
    r"|\bnapisał(?:\(a\))?+"
    r"|\bskrev\s++[^:\n]{1,200}+)\s*+:\s*+$",
    re.I,
)
_TIME = re.compile(r"\d[:.]\d\d")
# how such an attribution's first line looks: a name and an address, or a weekday and a day
_UNLED_START = re.compile(r"[<@]|^\s*+\w{2,5}\.?,?\s++\d")
_DATE_OR_ADDRESS = re.compile(r"\d|@")
_SEPARATOR = re.compile(
    r"^\s*+-{2,}+\s*+(original message|original-nachricht|ursprüngliche nachricht"
    r"|originalnachricht|message d'origine|mensaje original|messaggio originale"
    r"|oorspronkelijk bericht|ursprungligt meddelande|mensagem original)\s*+-{2,}+\s*+$",
    re.I,
)
_FORWARD = re.compile(
    r"forwarded message|begin forwarded message|weitergeleitete nachricht|message transféré"
    r"|mensaje reenviado|messaggio inoltrato",
    re.I,
)
# "*From:* x" as Outlook's HTML becomes text: stars and spaces around the name, taken whole
_FIELD = r"^\s*+\**+\s*+(?:{names})\s*+\**+\s*+:"
_HEADER_FROM = re.compile(_FIELD.format(names="from|von|de|da|van|från|fra|od") + r"\s*+\S", re.I)
_HEADER_SENT = re.compile(
    _FIELD.format(
        names="sent|date|gesendet|datum|envoyé|enviado|fecha|inviato|data|verzonden|skickat|sendt"
    ),
    re.I,
)
_HEADER_OTHER = re.compile(
    _FIELD.format(
        names="to|an|à|a|para|aan|till|til|do|cc|subject|betreff|objet|asunto|oggetto"
        "|onderwerp|ämne|emne|temat|assunto"
    ),
    re.I,
)
_MOBILE_SIGNATURE = re.compile(
    r"^\s*+(sent from my\s.{1,40}|sent from (outlook|mail|yahoo mail)\b.{0,40}"
    r"|get outlook for (ios|android)|von meinem\s.{1,40}\sgesendet|gesendet von\s.{1,40}"
    r"|envoyé de mon\s.{1,40}|enviado desde mi\s.{1,40}|inviato da\s.{1,40})$",
    re.I,
)
_RULE = re.compile(r"^\s*+(?:[-_*=]\s*+){3,}+$")


def _matches(pattern: re.Pattern[str], line: str) -> bool:
    """Whether ``line`` matches ``pattern``; a line over ``_PATTERN_CHARS`` never does."""
    return len(line) <= _PATTERN_CHARS and pattern.match(line) is not None


def is_attribution(line: str) -> bool:
    """Whether ``line`` alone is a reply's attribution ("On <date>, <name> wrote:", Gmail's
    forms that begin with a name or a date): what a reply puts above the history it quotes."""
    if len(line) > _PATTERN_CHARS:
        return False
    if _ATTRIBUTION.match(line) is not None:
        return _DATE_OR_ADDRESS.search(line) is not None
    return _TIME.search(line) is not None and _ATTRIBUTION_END.search(line) is not None


def strip_quoted_history(text: str) -> str:
    """What the author wrote: quoted history, attribution lines and signatures removed.

    Knows how Gmail, Outlook (plain and HTML-converted), Apple Mail, Thunderbird, iOS, Android
    and mutt write replies, in English, German, French and Spanish (and a few more), with the
    attribution wrapped over up to three lines. Linear in the text: each line is stripped once
    and looked at a bounded number of times.
    """
    view = _Lines(clean_text(text).split("\n"))
    kept: list[str] = []
    wrote = False  # a kept line has text: an unquoted attribution below it starts history
    index = 0
    while index < view.end:
        span = _attribution_span(view, index)
        if span:
            following = view.next_text[index + span]
            if following == view.end or view.quoted[following]:
                index += span
                continue
            if wrote:
                break
        if not view.quoted[index]:
            kept.append(view.lines[index].rstrip())
            wrote = wrote or not view.blank[index]
        index += 1
    del kept[_signature_start(kept) :]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")


class _Lines:
    """A text's lines up to where unquoted history starts, each looked at once: whether it is
    blank, whether it is quoted, and where the next line with text is (``end`` if none)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.end = _history_start(lines)
        self.blank: list[bool] = []
        self.quoted: list[bool] = []
        for index in range(self.end):
            lead = lines[index].lstrip()
            self.blank.append(not lead)
            self.quoted.append(lead[:1] == ">")
        self.next_text = [self.end] * (self.end + 1)
        for index in range(self.end - 1, -1, -1):
            self.next_text[index] = self.next_text[index + 1] if self.blank[index] else index


def _history_start(lines: list[str]) -> int:
    """Index of the first line of unquoted history (a separator or a header block)."""
    for index, line in enumerate(lines):
        if _matches(_SEPARATOR, line):
            return index
        if _matches(_HEADER_FROM, line) and _header_block_at(lines, index):
            previous = next(
                (ln for ln in reversed(lines[max(0, index - 3) : index]) if ln.strip()), ""
            )
            if len(previous) > _PATTERN_CHARS or not _FORWARD.search(previous):
                return index
    return len(lines)


def _header_block_at(lines: list[str], index: int) -> bool:
    following = lines[index + 1 : index + 6]
    return any(_matches(_HEADER_SENT, ln) for ln in following) and any(
        _matches(_HEADER_OTHER, ln) for ln in following
    )


def _attribution_span(view: _Lines, index: int) -> int:
    """How many lines an attribution ("On ... wrote:") starting at ``index`` spans, or 0."""
    return _led_span(view, index) or _unled_span(view, index)


def _led_span(view: _Lines, index: int) -> int:
    """How many lines an attribution that begins with its own word ("On", "Am", "Le"...)
    spans from ``index`` (1 to 3: a client may wrap it anywhere), or 0."""
    if not _matches(_ATTRIBUTION_START, view.lines[index]):
        return 0
    parts: list[str] = []
    for span in (1, 2, 3):
        last = index + span - 1
        if last >= view.end or (span > 1 and view.blank[last]):
            return 0
        if len(view.lines[last]) > _PATTERN_CHARS:
            return 0
        parts.append(view.lines[last].strip())
        joined = " ".join(parts)
        if _ATTRIBUTION.match(joined):
            following = view.next_text[index + span]
            # a date or an address, or quoted lines right after it, mark a real attribution
            quoted_next = following < view.end and view.quoted[following]
            if _DATE_OR_ADDRESS.search(joined) or quoted_next:
                return span
    return 0


def _unled_span(view: _Lines, index: int) -> int:
    """How many lines one of Gmail's attributions without a word of its own to start with
    (``_ATTRIBUTION_END``) spans from ``index``, or 0. Nothing marks where such a line begins,
    so it is only taken right after a blank line, from a line with an address or a date at its
    start, up to the first line that ends with a colon (within three), with a time in it and
    quoted lines right after."""
    if index and not view.blank[index - 1]:
        return 0
    first = view.lines[index]
    if len(first) > _PATTERN_CHARS or not _UNLED_START.search(first):
        return 0
    parts: list[str] = []
    for last in range(index, min(index + 3, view.end)):
        line = view.lines[last]
        if view.blank[last] or view.quoted[last] or len(line) > _PATTERN_CHARS:
            return 0
        parts.append(line.strip())
        if parts[-1].endswith(":"):
            joined = " ".join(parts)
            following = view.next_text[last + 1]
            quoted_next = following < view.end and view.quoted[following]
            if quoted_next and _TIME.search(joined) and _ATTRIBUTION_END.search(joined):
                return last - index + 1
            return 0
    return 0


def _signature_start(lines: list[str]) -> int:
    """Where a trailing "-- " signature, "Sent from my phone" line and trailing rules start."""
    end = len(lines)
    for index in range(end - 1, max(end - 13, -1), -1):  # a signature is at most 12 lines
        if lines[index] in ("--", "-- "):
            end = index
            break
    end = _before_trailing_rules(lines, end)
    if end and _matches(_MOBILE_SIGNATURE, lines[end - 1]):
        end -= 1
    return _before_trailing_rules(lines, end)


def _before_trailing_rules(lines: list[str], end: int) -> int:
    """``end`` moved up past the blank lines and rules (``---``, ``___``) right above it."""
    while end and (not lines[end - 1].strip() or _matches(_RULE, lines[end - 1])):
        end -= 1
    return end
