"""A forwarded message in a mail's text: who wrote it, its subject, date, text and files.

Part of ``inbound.parse``, on the text ``html`` made of the body (plain, or HTML converted), so
it runs in the parse worker within the message's budget. ``inline_forward`` finds the first
(outermost) forward in the text, as the common clients write one: Gmail ("---------- Forwarded
message ---------"), Thunderbird ("-------- Forwarded Message --------"), Apple Mail ("Begin
forwarded message:"), mutt ("----- Forwarded message from ... -----"), each in English, German,
French and Spanish, and Outlook's header block ("From: ... Sent: ... To: ... Subject: ...",
localised, after "-----Original Message-----", a rule, or nothing), also quoted with "> ". An
Outlook block alone looks the same in a reply as in a forward, so it counts only under a
forwarding subject ("FW:", "WG:", "TR:", "RV:", "I:", "Fwd:"); a reply's attribution ("On ...
wrote:") or quoted lines before any forward mean the mail is a reply, not a forward. A message
attached whole (``message/rfc822``) is the other kind of forward; ``inbound`` parses that one.

Linear in the text: each line is split from its quote marks once, looked at by a bounded number
of block reads (``_BLOCK_LINES``), and only lines of at most ``_LINE_CHARS`` characters are
looked at for labels and markers at all; no pattern here can backtrack over more than a label.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from maildesk.mail.parse.identity import usable_address
from maildesk.mail.parse.parts import ParsedAttachment
from maildesk.mail.parse.text import NAME_BYTES, clean_line, is_attribution


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The message a mail forwards, as the forwarding mail shows it.

    ``sender`` is the original From's bare addr-spec in lower case (as ``Inbound.sender``), or
    None when the forward names its author without a usable address (Outlook may give a name
    alone); it is read from text the forwarder sent, so it proves nothing about who wrote it.
    ``subject`` has the forwarding prefixes taken off; ``date`` is the date as written there.
    ``text`` is the forwarded message's text (below its header block; nested forwards stay in
    it as text), ``note`` the forwarder's own words (above the forward, and any below a quoted
    one). ``attachments``: of an inline forward, every file of the mail (the same tuple as
    ``Inbound.attachments``); of an ``attached`` one, the files of the message inside.
    """

    sender: str | None
    sender_name: str
    subject: str
    date: str | None
    text: str
    note: str
    attachments: tuple[ParsedAttachment, ...]
    attached: bool = False


_LINE_CHARS = 1000  # no marker or header line is longer; longer lines are never looked into
_BLOCK_LINES = 20  # a forward's header block has at most this many lines
_BLANKS_BEFORE_BLOCK = 3  # blank lines allowed between a marker and its header block
_DATE_CHARS = 200
_NAME_WORDS = 6  # a From without an address is a name of at most this many words


class _Field(enum.Enum):
    FROM = "from"
    DATE = "date"
    TO = "to"
    CC = "cc"
    SUBJECT = "subject"
    OTHER = "other"  # a header the block may show that says nothing needed here


def _labels(field: _Field, names: str) -> dict[str, _Field]:
    return {name: field for name in names.split("|")}


# the labels of a forward's header block as the clients write them, in lower case
_LABELS = {
    **_labels(_Field.FROM, "from|von|de|da|van|från|fra|od"),
    **_labels(
        _Field.DATE,
        "date|sent|gesendet|datum|envoyé|envoyé le|enviado|enviado el|fecha|inviato|data"
        "|verzonden|skickat|sendt",
    ),
    **_labels(_Field.TO, "to|an|à|a|para|aan|till|til|do"),
    **_labels(_Field.CC, "cc|bcc|kopie|cci|cco"),
    **_labels(
        _Field.SUBJECT,
        "subject|betreff|objet|asunto|oggetto|onderwerp|ämne|emne|temat|assunto",
    ),
    **_labels(
        _Field.OTHER,
        "reply-to|antwort an|répondre à|responder a|importance|wichtigkeit|priorité|importancia"
        "|attachments|anlagen|pièces jointes|datos adjuntos|message-id|organization",
    ),
}
_LABEL_CHARS = max(len(name) for name in _LABELS) + 4  # room for stars and spaces around it

# A line that says a forward follows (Gmail, Thunderbird, Apple Mail, mutt), and Outlook's
# separator, which stands above replies and forwards alike. Anchored, possessive runs: linear.
_FORWARD_NAMES = (
    "forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado"
    "|messaggio inoltrato|doorgestuurd bericht|videresendt meddelelse|vidarebefordrat meddelande"
)
_FORWARD_MARKER = re.compile(
    rf"-++\s*+(?:{_FORWARD_NAMES})\s*+-++$"
    r"|(?:begin forwarded message|anfang der weitergeleiteten nachricht"
    r"|début du message réexpédié|inicio del mensaje reenviado|inizio messaggio inoltrato)"
    r"\s*+:$"
    r"|-++\s*+forwarded message from\s",
    re.I,
)
_ORIGINAL_MARKER = re.compile(
    r"-++\s*+(?:original message|ursprüngliche nachricht|originalnachricht|message d'origine"
    r"|mensaje original|messaggio originale|oorspronkelijk bericht|mensagem original)\s*+-++$",
    re.I,
)
_END_MARKER = re.compile(r"-++\s*+end (?:of )?+forwarded message\s*+-*+$", re.I)
# what forwarding puts before a subject, in the common clients' languages ("Fwd:", Outlook's
# "FW:", German "WG:", French "TR:", Spanish "RV:", Italian "I:", Portuguese "ENC:", ...)
_FORWARD_PREFIX = re.compile(
    r"\s*+(?:fwd?|wg|tr|rv|i|enc|vs|vb|doorst|pd)\s*+(?:\[\d{1,4}\]\s*+)?+:\s*+", re.I
)
_RULE_CHARS = "-_=* \t"
_ADDRESS_SPLIT = re.compile(r"[\s<>\[\]()\"',;]++")


def original_subject(subject: str) -> str:
    """``subject`` without the prefixes forwarding put before it ("Fwd: FW: x" is "x")."""
    text = clean_line(subject, 998)
    pos = 0
    while (match := _FORWARD_PREFIX.match(text, pos)) is not None and match.end() > pos:
        pos = match.end()
    return text[pos:]


def is_forward_subject(subject: str) -> bool:
    """Whether ``subject`` begins with a forwarding prefix."""
    return _FORWARD_PREFIX.match(clean_line(subject, 998)) is not None


@dataclass(frozen=True, slots=True)
class _Block:
    """A header block: its fields (the first value of each) and the lines it spans."""

    fields: dict[_Field, str]
    start: int
    end: int
    depth: int

    def has(self, *fields: _Field) -> bool:
        return all(field in self.fields for field in fields)

    def outlook(self) -> bool:
        """Outlook's block: From, then Sent, and To or Subject."""
        return self.has(_Field.FROM, _Field.DATE) and (
            self.has(_Field.TO) or self.has(_Field.SUBJECT)
        )


class _Lines:
    """A text's lines, each split once into its quote depth and where its content starts."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.depth: list[int] = []
        self.start: list[int] = []
        for line in self.lines:
            depth, start = _quote_prefix(line, _LINE_CHARS)
            self.depth.append(depth)
            self.start.append(start)

    def __len__(self) -> int:
        return len(self.lines)

    def content(self, index: int) -> str | None:
        """The line without its quote marks, stripped; None when too long to look into."""
        line = self.lines[index]
        if len(line) - self.start[index] > _LINE_CHARS:
            return None
        return line[self.start[index] :].strip()

    def blank(self, index: int) -> bool:
        return self.lines[index].isspace() or self.start[index] == len(self.lines[index])


def _quote_prefix(line: str, limit: int, levels: int | None = None) -> tuple[int, int]:
    """(quote depth, where the content starts) of ``line``: its leading "> " marks, up to
    ``levels`` of them, looked for within its first ``limit`` characters."""
    depth = start = pos = 0
    end = min(len(line), limit)
    while pos < end and (levels is None or depth < levels):
        char = line[pos]
        if char == ">":
            depth += 1
            pos += 1
            if pos < end and line[pos] == " ":
                pos += 1
            start = pos
        elif char in " \t":
            pos += 1
        else:
            break
    if levels is None and pos == end:
        start = pos  # the line is quote marks and spaces only
    return depth, start


def _label(content: str) -> tuple[_Field, str] | None:
    """The field and value of a header line ("From: x", "*Von:* x", "Subject: | x" as a table
    row becomes), or None."""
    colon = content.find(":", 0, _LABEL_CHARS)
    if colon < 1:
        return None
    name = " ".join(content[:colon].strip(" \t*").lower().split())
    field = _LABELS.get(name)
    if field is None:
        return None
    return field, content[colon + 1 :].strip(" \t*|")


def _read_block(lines: _Lines, start: int) -> _Block | None:
    """The header block from line ``start``: consecutive header lines at one quote depth (a
    To or Cc list may go on over lines without a label); None unless it names a From."""
    depth = lines.depth[start]
    fields: dict[_Field, str] = {}
    last: _Field | None = None
    index = start
    while index < len(lines) and index - start < _BLOCK_LINES:
        content = lines.content(index)
        if content is None or not content or lines.depth[index] != depth:
            break
        found = _label(content)
        if found is None:
            if last not in (_Field.TO, _Field.CC):
                break
        else:
            if found[0] is _Field.FROM and _Field.FROM in fields:
                break  # the next block starts
            last = found[0]
            if _plausible(*found):
                fields.setdefault(found[0], found[1])
        index += 1
    if index == start or _Field.FROM not in fields:
        return None
    return _Block(fields, start, index, depth)


def _plausible(field: _Field, value: str) -> bool:
    """Whether ``value`` can be what a header block shows for ``field``: a date has a digit, a
    From an address or a short name (prose that happens to start with "From:" has neither)."""
    if field is _Field.DATE:
        return any(char.isdigit() for char in value)
    if field is _Field.FROM:
        return "@" in value or len(value.split()) <= _NAME_WORDS
    return True


def _block_after(lines: _Lines, marker: int) -> _Block | None:
    """The header block below a marker line, after at most a few blank lines."""
    index = marker + 1
    while index < len(lines) and index - marker <= _BLANKS_BEFORE_BLOCK:
        if not lines.blank(index):
            content = lines.content(index)
            if content is None or lines.depth[index] < lines.depth[marker]:
                return None
            if content:  # a line of quote marks alone is a blank line too
                return _read_block(lines, index)
        index += 1
    return None


class _Reply(Exception):
    """The mail is a reply: what it quotes is history, not a forward."""


def _forward_at(lines: _Lines, index: int, content: str, subject: str) -> tuple[int, _Block] | None:
    """(where the forward starts, its header block) when one starts at line ``index``; raises
    ``_Reply`` when the line shows the mail is a reply."""
    if _FORWARD_MARKER.match(content):
        block = _block_after(lines, index)
        others = (_Field.DATE, _Field.SUBJECT, _Field.TO)
        if block is not None and any(block.has(field) for field in others):
            return index, block
    elif (original := _ORIGINAL_MARKER.match(content) is not None) or _starts_outlook_block(
        content
    ):
        block = _block_after(lines, index) if original else _read_block(lines, index)
        if block is not None and block.outlook():
            if not is_forward_subject(subject):
                raise _Reply
            return index, block
    if is_attribution(content) or lines.depth[index] > 0:
        raise _Reply
    return None


def _starts_outlook_block(content: str) -> bool:
    found = _label(content)
    return found is not None and found[0] is _Field.FROM


def inline_forward(
    text: str, subject: str, attachments: tuple[ParsedAttachment, ...] = ()
) -> Forwarded | None:
    """The first forward written into ``text`` (a mail's body as text; ``subject`` its own
    subject), or None: no forward, or the mail is a reply. Never raises on any text."""
    lines = _Lines(text)
    try:
        for index in range(len(lines)):
            content = lines.content(index)
            if not content:
                continue
            found = _forward_at(lines, index, content, subject)
            if found is not None:
                return _forwarded(lines, found[0], found[1], subject, attachments)
    except _Reply:
        return None
    return None


def _forwarded(
    lines: _Lines,
    start: int,
    block: _Block,
    subject: str,
    attachments: tuple[ParsedAttachment, ...],
) -> Forwarded:
    sender, name = mailbox(block.fields[_Field.FROM])
    body, after = _forwarded_text(lines, block)
    note = _trimmed(lines.lines[:start])
    if after:
        note = f"{note}\n\n{after}" if note else after
    date = clean_line(block.fields.get(_Field.DATE, ""), _DATE_CHARS)
    return Forwarded(
        sender=sender,
        sender_name=name,
        subject=original_subject(block.fields.get(_Field.SUBJECT, "")) or original_subject(subject),
        date=date or None,
        text=body,
        note=note,
        attachments=attachments,
    )


def _forwarded_text(lines: _Lines, block: _Block) -> tuple[str, str]:
    """(the forwarded message's text below ``block``, its quote marks taken off; the text
    after the forward: below a quoted forward's last line, or below mutt's end marker)."""
    kept: list[str] = []
    for index in range(block.end, len(lines)):
        line = lines.lines[index]
        content = lines.content(index)
        if content and _END_MARKER.match(content):
            return _trimmed(kept), _trimmed(lines.lines[index + 1 :])
        if lines.depth[index] < block.depth and not lines.blank(index):
            return _trimmed(kept), _trimmed(lines.lines[index:])
        kept.append(line[_quote_prefix(line, len(line), block.depth)[1] :])
    return _trimmed(kept), ""


def _trimmed(lines: list[str]) -> str:
    """``lines`` as text, without trailing spaces, and without the blank lines and rules
    (``____``, ``-----``) around it."""
    kept = [line.rstrip() for line in lines]
    end = len(kept)
    while end and not kept[end - 1].strip(_RULE_CHARS):
        end -= 1
    begin = 0
    while begin < end and not kept[begin].strip():
        begin += 1
    return "\n".join(kept[begin:end])


def mailbox(value: str) -> tuple[str | None, str]:
    """(bare address or None, display name) of a From value written as text: "Name <addr>",
    Outlook's "Name [mailto:addr]", "addr (Name)", a bare address, or a name alone."""
    value = clean_line(value, _LINE_CHARS)
    marks = [at for at in (value.find("<"), value.lower().find("[mailto:")) if at >= 0]
    cut = min(marks) if marks else -1
    address = None
    for word in _ADDRESS_SPLIT.split(value[cut:] if cut >= 0 else value):
        if "@" in word:
            address = usable_address(word[7:] if word.lower().startswith("mailto:") else word)
            break
    if cut >= 0:
        name = value[:cut]
    elif address is None:
        name = value
    else:
        opening, closing = value.find("("), value.rfind(")")
        name = value[opening + 1 : closing] if 0 <= opening < closing else ""
    name = clean_line(name.strip(" \t\"'*,;"), NAME_BYTES)
    if address is not None and name.lower() == address:
        name = ""
    return address, name
