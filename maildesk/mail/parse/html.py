"""The body as readable text: plain parts joined or HTML converted, and the reply's own words.

The last step of ``inbound.parse`` (``body_texts``), on the text parts the MIME walk (``mime``)
found: HTML-only mail is converted by html2text, its work bounded by the size of the input
(``MAX_HTML``) and by the cap of the output (``max_text_chars``); quoted history is pruned from
the HTML (blockquotes, Gmail's and Outlook's quotes) and from the text
(``text.strip_quoted_history``). ``dsn`` converts the HTML of a bounce without a report here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

import html2text

from maildesk.mail.parse.limits import Limits
from maildesk.mail.parse.text import Defects, clean_text, strip_quoted_history

MAX_HTML = 512 * 1024  # html2text is pure Python (about 1.4 s per MB here): bound its work


def body_texts(
    plain: list[str], html_parts: list[str], limits: Limits, defects: Defects
) -> tuple[str, str | None, str]:
    """(text, the start of the raw html, reply text) of the message body's text and HTML parts.

    The text is at most ``max_text_chars`` characters; the rest of a longer one is dropped and a
    last line says so (the raw mail is kept whole). HTML-only mail is converted up to that cap.
    """
    cap = limits.max_text_chars
    html = "\n".join(html_parts) if html_parts else None
    whole = len(html) if html is not None else 0
    html = html[:MAX_HTML] if html is not None else None  # all that is read of it, below
    if any(part.strip() for part in plain):
        text = clean_text("\n\n".join(t.strip("\r\n") for t in plain))
        if len(text) <= cap:
            return text, html, strip_quoted_history(text)
        defects.add(f"text over {cap} characters: the rest was cut")
        marker = _cut_marker(f"the rest of this message, {len(text) - cap:,} characters, was cut")
        text = text[:cap]
        return text + marker, html, strip_quoted_history(text) + marker
    if html is None:
        return "", None, ""
    if whole > MAX_HTML:
        defects.add(f"HTML body over {MAX_HTML} characters: only the start was converted")
    source = parseable(html)
    converted = html_to_text(source, cap)
    pruned = _QuotePruner.prune(source)
    reply = converted if len(pruned) == len(source) else html_to_text(pruned, cap)
    if converted.cut:
        defects.add(f"text of the HTML body over {cap} characters: the rest was cut")
    return converted.shown(), html, strip_quoted_history(reply.text) + reply.marker()


def _cut_marker(what: str) -> str:
    return f"\n\n[... {what}; the original is kept]"


@dataclass(frozen=True, slots=True)
class _Converted:
    """Text converted from HTML, and the cap it was cut at (0: converted whole)."""

    text: str
    cut: int = 0

    def marker(self) -> str:
        if not self.cut:
            return ""
        return _cut_marker(f"the rest of this message was cut at {self.cut:,} characters")

    def shown(self) -> str:
        return self.text + self.marker()


_MD_ESCAPE = re.compile(r"^([^\S\n]*+)\\([-+#>])|^([^\S\n]*+\d++)\\(\.)", re.M)


def html_to_text(html: str, cap: int) -> _Converted:
    """HTML as readable plain text (link targets after their text, table cells apart; no
    images, nothing fetched), at most ``cap`` characters: the conversion stops there. The
    caller bounds the input (``parseable``)."""
    if not html:
        return _Converted("")
    source = _closed_tail(html)
    converter = _Converter(cap)
    try:
        text = converter.handle(source)
    except _TextFull:
        text = converter.text_so_far()
    except Exception:  # broken markup: fall back to the bare text between tags
        text = re.sub(r"<[^>]*>", " ", source)
    text = _MD_ESCAPE.sub(lambda m: (m.group(1) or m.group(3) or "") + (m.group(2) or "."), text)
    text = clean_text(text).replace("\xa0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    if converter.full or len(text) > cap:
        return _Converted(text[:cap].rstrip(), cap)
    return _Converted(text)


def parseable(html: str) -> str:
    """What of an HTML body is converted: its first ``MAX_HTML`` characters, tail closed."""
    return _closed_tail(html[:MAX_HTML])


def _closed_tail(html: str) -> str:
    """``html`` with every ``<`` after the last ``>`` written as ``&lt;``: no tag can end there,
    and the standard library's HTML parser (before Python 3.13.4) rescans the rest of the input
    for each such ``<`` (``<a<a<a...``: quadratic). Its own result comes back unchanged."""
    end = html.rfind(">") + 1
    return html[:end] + html[end:].replace("<", "&lt;")


class _TextFull(Exception):
    """The converted text reached its cap: html2text is stopped where it is."""


_NESTING = {"blockquote": "blockquote", "ol": "list", "ul": "list"}
_MAX_NESTING = 32  # quotes and lists nested deeper are shown at this depth
_NEWLINE_RUN = re.compile(r"\n\s*+")
_NBSP_HOLDER = "&nbsp_place_holder;"  # what html2text writes for &nbsp; until it finishes


_MAX_URL = 2048  # longer link targets are left out (browsers and servers stop near here)
_URL = re.compile(r"(?:https?://|mailto:)[^\s<>\"\x00-\x1f\x7f]++", re.I)
_CELL = " | "  # between the cells of a table row


class _Converter(html2text.HTML2Text):
    """html2text, with its work bounded by the size of the input and the cap of the output.

    Each line's prefix ("> > ", a list's indent) grows with the nesting, so nesting is capped;
    an abbreviation's text and a style sheet's ``@import`` rules are re-copied per step inside
    html2text, so ``<abbr>`` is read as plain text and ``<style>`` is skipped here; and text
    with many line breaks is given one newline per run of whitespace before html2text's
    line-anchored escaping patterns see it (its output folds such runs into one space anyway).

    Links and tables are written here, not by html2text (whose Markdown would not read as
    mail): a link's target follows its text as ``text <https://...>`` (``_Link``), and a table
    row's cells are separated by `` | ``, each row on a line of its own.
    """

    def __init__(self, cap: int) -> None:
        super().__init__(bodywidth=0)
        self.ignore_links = True
        self.ignore_images = True
        self.ignore_emphasis = True
        self.ignore_tables = True
        self.unicode_snob = True
        self.cap = cap
        self.written = 0
        self.full = False
        self.depth = {"blockquote": 0, "list": 0}
        self.link: _Link | None = None  # the link open now (links do not nest in HTML)
        self.cell_mark = 0  # ``written`` after the last cell separator or row start
        self.tag_callback = _bounded_tag  # type: ignore[assignment]  # typed as None there

    def outtextf(self, s: str) -> None:
        super().outtextf(s)
        self.written += len(s) - s.count(_NBSP_HOLDER) * (len(_NBSP_HOLDER) - 1)
        if self.written > self.cap:
            self.full = True
            raise _TextFull

    def handle_data(self, data: str, entity_char: bool = False) -> None:
        if not self.pre and "\n" in data:
            data = _NEWLINE_RUN.sub("\n", data)
        if self.link is not None:
            self.link.read(data)
        super().handle_data(data, entity_char)

    def text_so_far(self) -> str:
        return "".join(self.outtextlist).replace(_NBSP_HOLDER, "\xa0")

    def open_link(self, href: str | None) -> None:
        if self.link is not None:  # an <a> inside an open one closes it first, as browsers do
            self.close_link()
            self.space = True  # its text follows the target
        self.link = _Link(_shown_target(href))

    def close_link(self) -> None:
        link, self.link = self.link, None
        if link is None or not link.target or link.names_target():
            return
        last = self.outtextlist[-1][-1:] if self.outtextlist else ""
        self.o(f"<{link.target}>" if not last or last.isspace() else f" <{link.target}>")

    def table_tag(self, tag: str, start: bool) -> None:
        """Cells apart, rows on lines of their own (a row may lack its end tag)."""
        if not start:
            return
        if tag == "tr":
            self.soft_br()
        elif self.written > self.cell_mark:  # a cell after one with text in this row
            self.o(_CELL)
        self.cell_mark = self.written


class _Link:
    """An open link: its target to show (None: not shown) and the start of its text, kept up to
    one character more than the target (enough to tell whether the text is the target)."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.text = ""

    def read(self, data: str) -> None:
        if self.target is not None and len(self.text) <= len(self.target):
            self.text += data[: len(self.target) + 1 - len(self.text)]

    def names_target(self) -> bool:
        """Whether the link's text is its target already (then it is shown once)."""
        assert self.target is not None
        text = " ".join(self.text.split()).lower()
        target = self.target.lower()
        bare = target.removeprefix("mailto:")
        return text in (target, bare, target.rstrip("/"))


def _shown_target(href: str | None) -> str | None:
    """A link target fit to show: http, https or mailto, no spaces or controls, at most
    ``_MAX_URL`` characters; nothing is ever fetched."""
    href = (href or "").strip()
    if len(href) > _MAX_URL or _URL.fullmatch(href) is None:
        return None
    return href


def _bounded_tag(
    converter: _Converter, tag: str, attrs: dict[str, str | None], start: bool
) -> bool:
    """html2text's tag hook: True when html2text is to ignore the tag (then the hook does the
    little of html2text's work on it that the output depends on)."""
    if tag == "a":
        if converter.quiet:
            return True
        converter.open_link(attrs.get("href")) if start else converter.close_link()
        return True
    if tag in ("tr", "td", "th"):
        if not converter.quiet:
            converter.table_tag(tag, start)
        return False  # html2text ends the row's line
    if tag in ("abbr", "style"):
        if tag == "style":  # hidden, as html2text hides it, without its style sheet parser
            converter.quiet += 1 if start else -1
        converter.lastWasList = False
        return True
    kind = _NESTING.get(tag)
    if kind is None:
        return False
    if start:
        converter.depth[kind] += 1
        deep = converter.depth[kind] > _MAX_NESTING
    else:
        deep = converter.depth[kind] > _MAX_NESTING
        converter.depth[kind] = max(0, converter.depth[kind] - 1)
    if deep:
        converter.lastWasList = kind == "list"
    return deep


class _QuotePruner(HTMLParser):
    """Drops quoted history from HTML: blockquotes, Gmail quotes, Outlook's reply header on."""

    _SKIP_CLASSES = frozenset({"gmail_quote", "gmail_quote_container", "yahoo_quoted"})
    _CUT_IDS = frozenset(
        {
            "divrplyfwdmsg",
            "x_divrplyfwdmsg",
            "appendonsend",
            "mail-editor-reference-message-container",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skip_tag = ""
        self.skip_depth = 0
        self.stopped = False

    @classmethod
    def prune(cls, html: str) -> str:
        pruner = cls()
        try:
            pruner.feed(_closed_tail(html))
            pruner.close()
        except Exception:
            return html
        return "".join(pruner.out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        values = {name: (value or "").lower() for name, value in attrs}
        if values.get("id", "") in self._CUT_IDS:
            self.stopped = True
            return
        if tag == "blockquote" or self._SKIP_CLASSES & set(values.get("class", "").split()):
            self.skip_tag, self.skip_depth = tag, 1
            return
        self.out.append(self.get_starttag_text() or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if not self.stopped and not self.skip_tag:
            self.out.append(self.get_starttag_text() or "")

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = ""
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if not self.stopped and not self.skip_tag:
            self.out.append(data)

    def handle_entityref(self, name: str) -> None:
        self.handle_data(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.handle_data(f"&#{name};")
