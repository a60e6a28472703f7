"""What a message *is*: automatic, a bounce, our own mail, a follow-up of which ticket, or new.

Second stage of the flow: ``Inbound`` in, a ``Route`` value out. Nothing here writes; the ticket
lookups go through the read-only ``Threads`` protocol the caller supplies. Also here: the marks
that let us recognise our own mail when it comes back (signed Message-IDs and VERP addresses).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from maildesk.mail.inbound import Inbound, Report

LOOP_HEADER = "X-Maildesk-Loop"


class Kind(StrEnum):
    HUMAN = "human"
    AUTO_REPLY = "auto-reply"
    BULK = "bulk"
    BOUNCE = "bounce"
    REPORT = "report"
    OWN_LOOP = "own-loop"


class Role(StrEnum):
    REQUESTER = "requester"
    PARTICIPANT = "participant"
    AGENT = "agent"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    reason: str  # "" for plain human mail
    no_auto_reply: bool = False  # human mail that asked not to be auto-answered

    @property
    def automatic(self) -> bool:
        return self.kind is not Kind.HUMAN


@dataclass(frozen=True, slots=True)
class TicketView:
    """What routing needs to know of a ticket."""

    id: int
    requester: str
    participants: frozenset[str]
    status: str


class Ignored(StrEnum):
    """Why a message was ignored, in a bounded set (the reason text is free-form)."""

    OWN_MAIL = "own_mail"
    UNKNOWN_BOUNCE = "unknown_bounce"
    REPORT = "report"
    BULK = "bulk"
    AUTO_REPLY = "auto_reply"
    OTHER = "other"


IGNORED_KIND = {
    Kind.OWN_LOOP: Ignored.OWN_MAIL,
    Kind.REPORT: Ignored.REPORT,
    Kind.BULK: Ignored.BULK,
    Kind.AUTO_REPLY: Ignored.AUTO_REPLY,
}


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str
    why: Ignored = Ignored.OTHER


@dataclass(frozen=True, slots=True)
class Bounce:
    report: Report | None
    message_id: str | None  # of our mail, from the VERP address the report arrived at (proven)
    reason: str


@dataclass(frozen=True, slots=True)
class NewTicket:
    no_auto_reply: bool = False


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A message on a known ticket. ``role``: who its sender is to the ticket, decided here once
    (an agent by the address From claims: their proof is checked before anything applies);
    ``sender`` that address."""

    ticket: TicketView
    role: Role
    via: str  # "headers" | "ref"
    automatic: str | None = None  # the reason, when the follow-up is automatic mail
    sender: str | None = None


Route = Ignore | Bounce | NewTicket | FollowUp


class Threads(Protocol):
    """Read-only ticket lookups for threading."""

    def by_message_ids(self, message_ids: Sequence[str]) -> TicketView | None: ...

    def by_number(self, number: int) -> TicketView | None: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """The desk identity routing needs (who we are, who our agents are)."""

    address: str
    secret: bytes
    loop_id: str
    ref_pattern: str
    agents: frozenset[str]


# --------------------------------------------------------------------------- our own marks


def _mac(secret: bytes, purpose: str, value: str, length: int) -> str:
    digest = hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()
    return digest[:length]


def is_desk_address(address: str, desk_address: str) -> bool:
    """The desk's address or one of its plus-addresses (reply tokens, VERP)."""
    local, _, domain = address.lower().rpartition("@")
    desk_local, _, desk_domain = desk_address.lower().rpartition("@")
    return domain == desk_domain and (local == desk_local or local.startswith(desk_local + "+"))


def own_message_id(secret: bytes, domain: str) -> str:
    """A fresh Message-ID (no brackets) that only this desk can produce: ``md.<rand>.<mac>@dom``."""
    nonce = secrets.token_hex(10)
    return f"md.{nonce}.{_mac(secret, 'mid', nonce, 12)}@{domain}"


OWN_ID = re.compile(r"^md\.([0-9a-f]{20})\.([0-9a-f]{12})@(.+)$")


def is_own_message_id(secret: bytes, domain: str, message_id: str | None) -> bool:
    match = OWN_ID.match(message_id or "")
    if not match or match.group(3).lower() != domain.lower():
        return False
    return hmac.compare_digest(match.group(2), _mac(secret, "mid", match.group(1), 12))


def bounce_address(secret: bytes, desk_address: str, message_id: str) -> str:
    """The VERP envelope sender of the mail whose Message-ID is ``message_id`` (one of ours):
    ``support+bounce-<nonce>-<mac>@dom``. A bounce that comes back to it names that mail."""
    match = OWN_ID.match(message_id)
    nonce = match.group(1) if match else hashlib.sha256(message_id.encode()).hexdigest()[:20]
    local, domain = desk_address.rsplit("@", 1)
    return f"{local}+bounce-{nonce}-{_mac(secret, 'verp', nonce, 10)}@{domain}"


def probe_address(desk_address: str, message_id: str) -> str:
    """Where ``check-config`` sends its probe with Message-ID ``message_id`` (one of ours):
    ``support+probe-<nonce>@dom``, the nonce being the Message-ID's. It arrives only where
    plus addressing reaches the desk's mailbox, as agents' replies and bounces must."""
    match = OWN_ID.match(message_id)
    nonce = match.group(1) if match else hashlib.sha256(message_id.encode()).hexdigest()[:20]
    local, domain = desk_address.rsplit("@", 1)
    return f"{local}+probe-{nonce}@{domain}"


def is_probe(inbound: Inbound, desk: Identity) -> bool:
    """``check-config``'s probe: our own signed Message-ID, sent to the probe address made from
    it. Nobody without the desk's secret can make a message look like one."""
    domain = desk.address.rsplit("@", 1)[1]
    message_id = inbound.message_id
    if message_id is None or not is_own_message_id(desk.secret, domain, message_id):
        return False
    address = probe_address(desk.address, message_id).lower()
    return any(a.lower() == address for a in (*inbound.to, *inbound.delivered_to))


def bounced_message_id(secret: bytes, desk_address: str, addresses: Sequence[str]) -> str | None:
    """The Message-ID of our mail a bounce was sent back about, from a valid VERP address."""
    local, domain = desk_address.lower().rsplit("@", 1)
    pattern = re.compile(
        rf"^{re.escape(local)}\+bounce-([0-9a-f]{{20}})-([0-9a-f]{{10}})@{re.escape(domain)}$"
    )
    for address in addresses:
        match = pattern.match(address.lower())
        if match and hmac.compare_digest(match.group(2), _mac(secret, "verp", match.group(1), 10)):
            nonce = match.group(1)
            return f"md.{nonce}.{_mac(secret, 'mid', nonce, 12)}@{desk_address.rsplit('@', 1)[1]}"
    return None


# --------------------------------------------------------------------------- classification

SYSTEM_SENDER = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
AUTO_HEADERS = (
    ("x-autoreply", re.compile(r"^\s*(yes|true)", re.I)),
    ("x-autorespond", None),
    ("x-autoresponse", None),
    ("x-autoreply-from", None),
    ("x-mail-autoreply", None),
    ("x-autogenerated", re.compile(r"^\s*reply", re.I)),
    ("x-amazon-mail-relay-type", re.compile(r"^\s*notification", re.I)),
    ("x-fc-machinegenerated", re.compile(r"^\s*true", re.I)),
    ("x-loop", re.compile(r"^\s*(yes|true)", re.I)),
)
BULK_PRECEDENCE = re.compile(r"^\s*(bulk|junk|list|auto_reply)\b", re.I)
AUTO_SUPPRESS = re.compile(r"\b(all|autoreply|oof)\b", re.I)


def _strip_comments(value: str) -> str:
    """``value`` without its comments (nested ones too), lower-case; an unclosed comment is
    kept as it is. One pass: ``\\([^)]*\\)`` tried at each of many ``(`` is quadratic, and
    a header value reaches 16,000 characters."""
    kept: list[str] = []
    depth = opened = 0
    for index, char in enumerate(value):
        if char == "(":
            opened = index if depth == 0 else opened
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth == 0:
            kept.append(char)
    if depth:
        kept.append(value[opened:])
    return "".join(kept).strip().lower()


def classify(inbound: Inbound, desk: Identity) -> Classification:
    """Human, or which kind of automatic mail, decided before anything is done with it."""
    if is_probe(inbound, desk):
        # the daemon may see it before check-config does: ignored (and moved to the processed
        # folder, where check-config looks too), never a ticket or an acknowledgment
        return Classification(Kind.OWN_LOOP, "our own check-config probe")
    loop = inbound.first(LOOP_HEADER)
    if loop is not None and loop.strip() == desk.loop_id:
        return Classification(Kind.OWN_LOOP, f"our own {LOOP_HEADER} header")
    if is_own_message_id(desk.secret, desk.address.rsplit("@", 1)[1], inbound.message_id):
        return Classification(Kind.OWN_LOOP, "our own Message-ID")
    sender = inbound.sender or ""
    if is_desk_address(sender, desk.address):
        return Classification(Kind.OWN_LOOP, "sent from the desk address")

    report = inbound.report
    if report is not None and report.report_type in ("delivery-status", "heuristic"):
        return Classification(Kind.BOUNCE, f"delivery report ({report.report_type})")
    if report is not None:
        return Classification(Kind.REPORT, f"{report.report_type} report")
    if inbound.return_path == "":
        return Classification(Kind.AUTO_REPLY, "empty Return-Path")
    if SYSTEM_SENDER.match(sender) or not inbound.from_raw.strip():
        return Classification(Kind.AUTO_REPLY, f"system sender {sender or '(none)'}")
    for value in inbound.header("auto-submitted"):
        stripped = _strip_comments(value)
        if stripped not in ("", "no"):
            return Classification(Kind.AUTO_REPLY, f"Auto-Submitted: {stripped}")
    for name in ("precedence", "x-precedence"):
        for value in inbound.header(name):
            if BULK_PRECEDENCE.match(value):
                kind = Kind.AUTO_REPLY if "auto_reply" in value.lower() else Kind.BULK
                return Classification(kind, f"{name.title()}: {value.strip().lower()}")
    for name, _value in inbound.headers:
        if name.startswith("list-"):
            return Classification(Kind.BULK, f"mailing list ({name})")
    for name, pattern in AUTO_HEADERS:
        for value in inbound.header(name):
            if pattern is None or pattern.match(value):
                return Classification(Kind.AUTO_REPLY, f"{name} header")
    suppress = any(AUTO_SUPPRESS.search(v) for v in inbound.header("x-auto-response-suppress"))
    return Classification(Kind.HUMAN, "", no_auto_reply=suppress)


# --------------------------------------------------------------------------- routing


def role_of(sender: str | None, ticket: TicketView, desk: Identity) -> Role:
    if sender is None:
        return Role.OTHER
    if sender in desk.agents:
        return Role.AGENT
    if sender == ticket.requester:
        return Role.REQUESTER
    if sender in ticket.participants:
        return Role.PARTICIPANT
    return Role.OTHER


# Distinct ticket refs of a subject looked up, at most: each lookup reads the ticket and its
# participants, and a subject of 998 characters holds 166 refs.
MAX_REFS = 10


def thread(inbound: Inbound, threads: Threads, desk: Identity) -> tuple[TicketView, str] | None:
    """The ticket this message continues, and how we know; None for a new conversation.

    By header: In-Reply-To / References naming a Message-ID the ticket has. By ref: the subject
    carries the ticket's ref and the sender is its requester, a participant or an agent (a
    stranger cannot post into someone else's ticket by guessing a number).
    """
    ids = [*inbound.in_reply_to, *reversed(inbound.references)]
    if ids:
        found = threads.by_message_ids(list(dict.fromkeys(ids)))
        if found is not None:
            return found, "headers"
    refs = re.finditer(desk.ref_pattern, inbound.subject)
    numbers = list(dict.fromkeys(int(match.group("number")) for match in refs))
    for number in numbers[:MAX_REFS]:
        ticket = threads.by_number(number)
        if ticket is not None and role_of(inbound.sender, ticket, desk) is not Role.OTHER:
            return ticket, "ref"
    return None


def arrived_at(inbound: Inbound) -> tuple[str, ...]:
    """The addresses a delivery report was sent to: where a VERP address can show it is about
    one of our mails.

    ``Delivered-To`` and ``X-Original-To`` are written by the MTA that delivered it to us; ``To:``
    is where an MTA addresses a report to the envelope sender, and all a mailbox provider that
    writes no ``Delivered-To`` leaves. A sender can write any of these headers, so none of them is
    the proof: the VERP address is. Its MAC is the desk's, and only the recipient of that one mail
    (and the servers on its way) saw it, as that mail's Return-Path; so a report at it may speak
    for that recipient and no one else. ``Cc:`` and the copy of the returned message inside the
    report are not where it arrived, and are not looked at.
    """
    return (*inbound.delivered_to, *inbound.to)


def route(inbound: Inbound, kind: Classification, threads: Threads, desk: Identity) -> Route:
    """Decide what to do with one message; no side effects."""
    if kind.kind is Kind.OWN_LOOP:
        return Ignore(kind.reason, Ignored.OWN_MAIL)
    if kind.kind is Kind.BOUNCE:
        return Bounce(
            report=inbound.report,
            message_id=bounced_message_id(desk.secret, desk.address, arrived_at(inbound)),
            reason=kind.reason,
        )
    found = thread(inbound, threads, desk)
    if found is None:
        if kind.automatic:
            return Ignore(kind.reason, IGNORED_KIND.get(kind.kind, Ignored.OTHER))
        return NewTicket(no_auto_reply=kind.no_auto_reply)
    ticket, via = found
    # who the mail says it is from: an agent's claim is decided on here, and proven (or
    # refused, with the agent told) before anything applies
    sender = inbound.sender or inbound.claimed_sender
    return FollowUp(
        ticket=ticket,
        role=role_of(sender, ticket, desk),
        via=via,
        automatic=kind.reason if kind.automatic else None,
        sender=sender,
    )
