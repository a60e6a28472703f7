"""Finding tickets by words: the read side of the full-text index.

The index is the database's (migration 0011): SQLite FTS5 tables fed by triggers, PostgreSQL
``tsvector`` columns with GIN indexes, over ticket subjects and every message's subject and
text (customer mail, agent replies, internal notes), written in the message's own transaction.
``tickets search``, ``#search`` by mail and the demo ask ``find``.

The user's words are data, never query syntax: each word becomes a phrase of its letters and
digits (``E-4711`` the phrase ``e 4711``, ``alice@example.com`` ``alice example com``), built
here and handed to the engine as a bound value; quotes, ``NEAR``, ``*``, ``:``, parentheses
and ``AND``/``OR``/``NOT`` are words like any other. At most ``MAX_TERMS`` words of the first
``MAX_INPUT_CHARS`` characters are looked for, so no input costs more than a bounded query.

A ticket matches when its subject, or one of its messages, holds all the words. The best first:
tickets whose subject holds them, then those with a message holding the words as typed (next
to each other, in order), then the rest; newest first among equals. Subjects and messages are
read from the index newest first and cut at ``CANDIDATES`` rows, and the words as typed are
looked for among those messages only, which bounds the work for common words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, func, select, text
from sqlalchemy.orm import Session

from maildesk.models import Message, Status, Ticket, UTCDateTime

__all__ = ["Match", "find", "terms"]

MAX_INPUT_CHARS = 1000  # of the words given; the rest is not looked at
MAX_TERMS = 16  # words looked for (the first, without repeats)
MAX_TOKEN_CHARS = 200  # a longer run of letters is in no index (PostgreSQL drops them)
CANDIDATES = 500  # index rows read per kind of match, newest first
SEARCHED_CHARS = 100_000  # of a message's text, indexed (migration 0011) and read for context
CONTEXT_CHARS = 160  # of the line of context shown per match
_BEFORE = 50  # characters of context shown before the first matching word

_TOKEN = re.compile(r"[^\W_]+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Match:
    """One ticket found: ``at`` is when the matching message came (the ticket's start when its
    subject matched), ``context`` one line of that message around the first matching word."""

    ticket_id: int
    subject: str
    status: Status
    requester: str
    at: datetime
    context: str
    in_subject: bool = False


def terms(words: str) -> list[tuple[str, ...]]:
    """The words looked for, each as the tokens the index holds (lowercase letters and digits),
    at most ``MAX_TERMS``, without repeats; a word of no letters or digits is no term. The
    words are composed (NFC) first, as every text the index holds is: an accent typed apart
    from its letter would otherwise split the word in two."""
    cut = unicodedata.normalize("NFC", words[:MAX_INPUT_CHARS])
    if len(words) > MAX_INPUT_CHARS and not words[MAX_INPUT_CHARS].isspace() and cut.split():
        if not cut[-1].isspace():  # no half of a word
            cut = cut[: len(cut) - len(cut.split()[-1])]
    found: list[tuple[str, ...]] = []
    for word in cut.split():
        tokens = tuple(token.lower() for token in _TOKEN.findall(word))
        if tokens and tokens not in found:
            found.append(tokens)
        if len(found) == MAX_TERMS:
            break
    return found


def find(session: Session, words: str, *, limit: int = 20) -> list[Match]:
    """The ``limit`` best tickets for ``words`` (see the module's docstring); none for no words."""
    wanted = terms(words)
    if not wanted or limit < 1 or any(len(t) > MAX_TOKEN_CHARS for w in wanted for t in w):
        return []
    engine = _SQLITE if session.get_bind().dialect.name == "sqlite" else _POSTGRESQL
    loose = engine.messages(session, wanted)
    # the words as typed: looked for only among those (a phrase of common words that seldom
    # stand together would otherwise be looked for through every message that holds them)
    phrase = [tuple(t for w in wanted for t in w)]
    exact = engine.holding(session, phrase, loose) if len(wanted) > 1 and loose else set()
    kinds = [
        (_SUBJECT, engine.subjects(session, wanted)),
        (_EXACT, [found for found in loose if found[0] in exact]),
        (_LOOSE, loose),
    ]
    return _matches(session, wanted, _best(kinds, limit))


# ---------------------------------------------------------------------------- the engines

# A candidate: (message id or None for a subject, ticket id, when), newest first.
Found = tuple[int | None, int, datetime]


class _Sqlite:
    """FTS5: a query of quoted phrases (implicit AND), read in rowid order, newest first."""

    @staticmethod
    def _query(wanted: list[tuple[str, ...]]) -> str:
        return " ".join('"' + " ".join(tokens) + '"' for tokens in wanted)

    def subjects(self, session: Session, wanted: list[tuple[str, ...]]) -> list[Found]:
        rows = session.execute(
            text(
                "SELECT id, created_at FROM tickets WHERE id IN (SELECT rowid FROM tickets_search"
                " WHERE tickets_search MATCH :q ORDER BY rowid DESC LIMIT :n)"
                " AND status != 'merged' ORDER BY id DESC"
            ).columns(id=Integer, created_at=UTCDateTime),
            {"q": self._query(wanted), "n": CANDIDATES},
        )
        return [(None, row[0], row[1]) for row in rows]

    def messages(self, session: Session, wanted: list[tuple[str, ...]]) -> list[Found]:
        rows = session.execute(
            text(
                "SELECT id, ticket_id, created_at FROM messages WHERE id IN (SELECT rowid"
                " FROM messages_search WHERE messages_search MATCH :q ORDER BY rowid DESC"
                " LIMIT :n) ORDER BY id DESC"
            ).columns(id=Integer, ticket_id=Integer, created_at=UTCDateTime),
            {"q": self._query(wanted), "n": CANDIDATES},
        )
        return [(row[0], row[1], row[2]) for row in rows]

    def holding(
        self, session: Session, phrase: list[tuple[str, ...]], among: list[Found]
    ) -> set[int]:
        """Of the messages ``among`` (the newest that hold the words), those that hold
        ``phrase``: no message newer than the oldest of them holds the words elsewhere, so
        the index is read from that one on."""
        rows = session.execute(
            text(
                "SELECT rowid FROM messages_search WHERE messages_search MATCH :q AND rowid >= :n"
            ),
            {"q": self._query(phrase), "n": min(f[0] or 0 for f in among)},
        )
        return {int(row[0]) for row in rows}


class _Postgresql:
    """tsvector: one ``phraseto_tsquery`` per word, joined with ``&&``; every word a bound
    value, never parsed as tsquery syntax."""

    @staticmethod
    def _query(wanted: list[tuple[str, ...]]) -> tuple[str, dict[str, object]]:
        names = [f"w{i}" for i in range(len(wanted))]
        sql = " && ".join(f"phraseto_tsquery('simple', :{name})" for name in names)
        return f"({sql})", {
            name: " ".join(tokens) for name, tokens in zip(names, wanted, strict=True)
        }

    def subjects(self, session: Session, wanted: list[tuple[str, ...]]) -> list[Found]:
        query, values = self._query(wanted)
        rows = session.execute(
            text(
                f"SELECT id, created_at FROM tickets WHERE search @@ {query}"
                " AND status != 'merged' ORDER BY id DESC LIMIT :n"
            ).columns(id=Integer, created_at=UTCDateTime),
            {**values, "n": CANDIDATES},
        )
        return [(None, row[0], row[1]) for row in rows]

    def messages(self, session: Session, wanted: list[tuple[str, ...]]) -> list[Found]:
        query, values = self._query(wanted)
        rows = session.execute(
            text(
                f"SELECT id, ticket_id, created_at FROM messages WHERE search @@ {query}"
                " ORDER BY id DESC LIMIT :n"
            ).columns(id=Integer, ticket_id=Integer, created_at=UTCDateTime),
            {**values, "n": CANDIDATES},
        )
        return [(row[0], row[1], row[2]) for row in rows]

    def holding(
        self, session: Session, phrase: list[tuple[str, ...]], among: list[Found]
    ) -> set[int]:
        """Of the messages ``among``, those that hold ``phrase``, looked up by their ids."""
        query, values = self._query(phrase)
        rows = session.execute(
            text(f"SELECT id FROM messages WHERE id = ANY(:ids) AND search @@ {query}"),
            {**values, "ids": [f[0] for f in among]},
        )
        return {int(row[0]) for row in rows}


_SQLITE = _Sqlite()
_POSTGRESQL = _Postgresql()


# ---------------------------------------------------------------------------- ranking


_SUBJECT, _EXACT, _LOOSE = 0, 1, 2  # the kinds of match, best first


@dataclass(frozen=True, slots=True)
class _Best:
    """A ticket's best match: its kind, when, and the message shown (None: the subject)."""

    ticket_id: int
    kind: int
    at: datetime
    message_id: int | None

    def key(self) -> tuple[int, float, int, int]:
        return self.kind, -self.at.timestamp(), -(self.message_id or 0), -self.ticket_id


def _best(kinds: list[tuple[int, list[Found]]], limit: int) -> list[_Best]:
    """One per ticket, the best kind first and the newest among equals, at most ``limit``."""
    best: dict[int, _Best] = {}
    for kind, found in kinds:
        for message_id, ticket_id, at in found:
            mine = _Best(ticket_id, kind, at, message_id)
            had = best.get(ticket_id)
            if had is None:
                best[ticket_id] = mine
            elif had.kind == _SUBJECT and had.message_id is None and message_id is not None:
                # a subject match shows the newest message that holds the words too
                best[ticket_id] = _Best(ticket_id, _SUBJECT, at, message_id)
            elif mine.key() < had.key():
                best[ticket_id] = mine
    return sorted(best.values(), key=_Best.key)[:limit]


def _matches(session: Session, wanted: list[tuple[str, ...]], chosen: list[_Best]) -> list[Match]:
    tickets = _ticket_rows(session, [b.ticket_id for b in chosen])
    texts = _texts(session, [b.message_id for b in chosen if b.message_id is not None])
    pattern = _words_pattern(wanted)
    matches = []
    for b in chosen:
        subject, status, requester = tickets[b.ticket_id]
        shown = texts.get(b.message_id or 0, (subject, ""))
        matches.append(
            Match(
                ticket_id=b.ticket_id,
                subject=subject,
                status=Status(status),
                requester=requester,
                at=b.at,
                context=_context(shown, pattern),
                in_subject=b.kind == _SUBJECT,
            )
        )
    return matches


def _ticket_rows(session: Session, ids: list[int]) -> dict[int, tuple[str, str, str]]:
    if not ids:
        return {}
    rows = session.execute(
        select(Ticket.id, Ticket.subject, Ticket.status, Ticket.requester).where(Ticket.id.in_(ids))
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def _texts(session: Session, ids: list[int]) -> dict[int, tuple[str, str]]:
    """The messages' subject and text as far as it is indexed (never a whole huge text)."""
    if not ids:
        return {}
    searched = func.substr(Message.text, 1, SEARCHED_CHARS)
    rows = session.execute(select(Message.id, Message.subject, searched).where(Message.id.in_(ids)))
    return {row[0]: (row[1], row[2] or "") for row in rows}


# ---------------------------------------------------------------------------- context


def _words_pattern(wanted: list[tuple[str, ...]]) -> re.Pattern[str]:
    tokens = sorted({t for w in wanted for t in w}, key=len, reverse=True)
    alternatives = "|".join(re.escape(t) for t in tokens)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


def _context(searched: tuple[str, str], pattern: re.Pattern[str]) -> str:
    """One line of at most ``CONTEXT_CHARS`` around the first matching word of the text, else
    of the subject ("…" where cut)."""
    subject, text_ = searched
    found = pattern.search(text_)
    if found is None and (in_subject := pattern.search(subject)) is not None:
        text_, found = subject, in_subject
    start = max(0, found.start() - _BEFORE) if found else 0
    window = text_[start : start + CONTEXT_CHARS * 4]
    line = _SPACES.sub(" ", "".join(c if c.isprintable() else " " for c in window)).strip()
    if start > 0:
        line = "…" + line
    if len(line) > CONTEXT_CHARS or start + len(window) < len(text_):
        line = line[: CONTEXT_CHARS - 1].rstrip() + "…"
    return line
