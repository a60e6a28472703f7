"""Our own marks on mail: Message-IDs, VERP return paths, reply tokens and the loop header.

Made when a mail is composed (``outbox`` gives each one a signed Message-ID, a VERP envelope
sender made from it, the loop header and, for agents, a reply token in its Reply-To) and
recognised when mail comes back (``routing`` tells our own mail and bounces about it,
``auth`` checks a token). Each mark is an HMAC with the desk secret, so nobody without it can
make one. Pure: no database, no network, no clock (times come in as values).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

LOOP_HEADER = "X-Maildesk-Loop"  # every mail of ours carries it, with the desk's ``loop_id``

# --------------------------------------------------------------------------- Message-IDs, VERP


def _sign(secret: bytes, purpose: str, value: str, length: int) -> str:
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
    return f"md.{nonce}.{_sign(secret, 'mid', nonce, 12)}@{domain}"


OWN_ID = re.compile(r"^md\.([0-9a-f]{20})\.([0-9a-f]{12})@(.+)$")


def is_own_message_id(secret: bytes, domain: str, message_id: str | None) -> bool:
    match = OWN_ID.match(message_id or "")
    if not match or match.group(3).lower() != domain.lower():
        return False
    return hmac.compare_digest(match.group(2), _sign(secret, "mid", match.group(1), 12))


def bounce_address(secret: bytes, desk_address: str, message_id: str) -> str:
    """The VERP envelope sender of the mail whose Message-ID is ``message_id`` (one of ours):
    ``support+bounce-<nonce>-<mac>@dom``. A bounce that comes back to it names that mail."""
    match = OWN_ID.match(message_id)
    nonce = match.group(1) if match else hashlib.sha256(message_id.encode()).hexdigest()[:20]
    local, domain = desk_address.rsplit("@", 1)
    return f"{local}+bounce-{nonce}-{_sign(secret, 'verp', nonce, 10)}@{domain}"


def probe_address(desk_address: str, message_id: str) -> str:
    """Where ``check-config`` sends its probe with Message-ID ``message_id`` (one of ours):
    ``support+probe-<nonce>@dom``, the nonce being the Message-ID's. It arrives only where
    plus addressing reaches the desk's mailbox, as agents' replies and bounces must."""
    match = OWN_ID.match(message_id)
    nonce = match.group(1) if match else hashlib.sha256(message_id.encode()).hexdigest()[:20]
    local, domain = desk_address.rsplit("@", 1)
    return f"{local}+probe-{nonce}@{domain}"


def is_own_probe(
    secret: bytes, desk_address: str, message_id: str | None, recipients: Sequence[str]
) -> bool:
    """``check-config``'s probe: our own signed Message-ID, sent to (one of ``recipients``) the
    probe address made from it. Nobody without the desk's secret can make a message look like
    one."""
    domain = desk_address.rsplit("@", 1)[1]
    if message_id is None or not is_own_message_id(secret, domain, message_id):
        return False
    address = probe_address(desk_address, message_id).lower()
    return any(a.lower() == address for a in recipients)


def bounced_message_id(secret: bytes, desk_address: str, addresses: Sequence[str]) -> str | None:
    """The Message-ID of our mail a bounce was sent back about, from a valid VERP address."""
    local, domain = desk_address.lower().rsplit("@", 1)
    pattern = re.compile(
        rf"^{re.escape(local)}\+bounce-([0-9a-f]{{20}})-([0-9a-f]{{10}})@{re.escape(domain)}$"
    )
    for address in addresses:
        match = pattern.match(address.lower())
        if match and hmac.compare_digest(match.group(2), _sign(secret, "verp", match.group(1), 10)):
            nonce = match.group(1)
            return f"md.{nonce}.{_sign(secret, 'mid', nonce, 12)}@{desk_address.rsplit('@', 1)[1]}"
    return None


# --------------------------------------------------------------------------- reply tokens

TOKEN_VERSION = 1
_MAC_BYTES = 17  # 136 bits: at least 128, and it makes the token a whole number of base32 chars
_TAG_BYTES = 4
_HEADER_BYTES = 1 + 4 + 4 + _TAG_BYTES  # version, ticket, expiry minutes, agent tag
_RAW_BYTES = _HEADER_BYTES + _MAC_BYTES  # 30 bytes -> exactly 48 base32 characters
TOKEN_LENGTH = _RAW_BYTES * 8 // 5
_TOKEN_RE = re.compile(r"[a-z2-7]+")
_MAC_CONTEXT = b"maildesk reply token\x00"
_TAG_CONTEXT = b"maildesk agent tag\x00"


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The verdict on one reply token."""

    ok: bool
    reason: str  # valid | missing | malformed | altered | expired | other_agent | other_ticket


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken to be UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _normalise_agent(agent: str) -> bytes:
    return agent.strip().lower().encode("utf-8", "surrogatepass")


def _agent_tag(secret: bytes, agent: bytes) -> bytes:
    # Keyed, so a third party who sees a token cannot test guessed addresses against it.
    return hmac.new(secret, _TAG_CONTEXT + agent, hashlib.sha256).digest()[:_TAG_BYTES]


def _token_mac(secret: bytes, header: bytes, agent: bytes) -> bytes:
    return hmac.new(secret, _MAC_CONTEXT + header + agent, hashlib.sha256).digest()[:_MAC_BYTES]


def make_token(secret: bytes, agent: str, ticket_number: int, expires: datetime) -> str:
    """A reply token binding ``agent``, ``ticket_number`` and ``expires`` (to the minute).

    48 characters of lowercase base32: version byte, ticket number, expiry in minutes since the
    epoch, a 4-byte keyed tag of the agent address, and a 136-bit HMAC-SHA256 over all of it and
    the full agent address.
    """
    if not secret:
        raise ValueError("the desk secret is empty")
    if not 0 <= ticket_number < 2**32:
        raise ValueError(f"ticket number out of range: {ticket_number}")
    minutes = int(_utc(expires).timestamp() // 60)
    if not 0 <= minutes < 2**32:
        raise ValueError(f"expiry out of range: {expires.isoformat()}")
    who = _normalise_agent(agent)
    header = (
        bytes([TOKEN_VERSION])
        + ticket_number.to_bytes(4, "big")
        + minutes.to_bytes(4, "big")
        + _agent_tag(secret, who)
    )
    raw = header + _token_mac(secret, header, who)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def check_token(
    secret: bytes, token: str, agent: str, ticket_number: int, now: datetime
) -> TokenCheck:
    """Check a token (any letter case) for this agent and ticket at ``now``; never raises."""
    if not token:
        return TokenCheck(False, "missing")
    text = token.strip().lower()
    if len(text) != TOKEN_LENGTH or not _TOKEN_RE.fullmatch(text):
        return TokenCheck(False, "malformed")
    raw = base64.b32decode(text.upper())
    header, mac = raw[:_HEADER_BYTES], raw[_HEADER_BYTES:]
    if header[0] != TOKEN_VERSION or not secret:
        return TokenCheck(False, "malformed")
    who = _normalise_agent(agent)
    if not hmac.compare_digest(header[9:_HEADER_BYTES], _agent_tag(secret, who)):
        return TokenCheck(False, "other_agent")
    if not hmac.compare_digest(mac, _token_mac(secret, header, who)):
        return TokenCheck(False, "altered")
    if int.from_bytes(header[1:5], "big") != ticket_number:
        return TokenCheck(False, "other_ticket")
    expiry_minutes = int.from_bytes(header[5:9], "big")
    if _utc(now).timestamp() >= expiry_minutes * 60:
        return TokenCheck(False, "expired")
    return TokenCheck(True, "valid")


def token_ticket(token: str) -> int | None:
    """The ticket number a well-formed token names, unchecked (None for a malformed one): what
    to check it against when the ticket it names was merged into another (``check_token``
    proves it)."""
    text = token.strip().lower()
    if len(text) != TOKEN_LENGTH or not _TOKEN_RE.fullmatch(text):
        return None
    raw = base64.b32decode(text.upper())
    return int.from_bytes(raw[1:5], "big") if raw[0] == TOKEN_VERSION else None


def _split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.strip().rpartition("@")
    return local, domain


def without_plus_addresses(text: str, desk_address: str) -> str:
    """``text`` with every plus-address of the desk (a reply token, a personal address, a VERP
    address) written as the desk's plain address: for mail to someone who is not an agent, into
    which an agent's words may carry a notice's token address (pasted below her reply without
    quote marks, or in a notice's one-tap links)."""
    local, domain = _split_address(desk_address)
    if not local or not domain or "+" not in text:
        return text
    pattern = re.compile(
        rf"(?<![\w.+!#$%&'*/=?^`{{|}}~-]){re.escape(local)}\+[^\s@<>\"'()\[\],;:]{{1,400}}"
        rf"@{re.escape(domain)}(?![\w-]|\.\w)",
        re.IGNORECASE,
    )
    return pattern.sub(desk_address, text)


def reply_address(desk_address: str, token: str) -> str:
    """The plus-address carrying ``token``: ``support@example.com`` -> ``support+<token>@...``."""
    local, domain = _split_address(desk_address)
    return f"{local}+{token}@{domain}"


def tokens_in(addresses: Iterable[str], desk_address: str) -> tuple[str, ...]:
    """Tokens found in plus-addresses of the desk address, lower-cased, in order, once each.

    ``addresses`` may be bare addresses or whole header values (``Support <support+x@...>, ...``);
    the local part and domain compare case-insensitively, as mail systems fold them.
    """
    local, domain = _split_address(desk_address)
    if not local or not domain:
        return ()
    pattern = re.compile(
        rf"(?<![\w.+!#$%&'*/=?^`{{|}}~-]){re.escape(local)}\+([a-z0-9]{{1,200}})@{re.escape(domain)}(?![\w.-])",
        re.IGNORECASE,
    )
    found: dict[str, None] = {}
    for value in addresses:
        if not isinstance(value, str):
            continue
        for match in pattern.finditer(value):
            found.setdefault(match.group(1).lower(), None)
    return tuple(found)


# --------------------------------------------------------------------------- personal addresses

# An agent's personal desk address, ``support+a-<token>@dom``: what proves a mail that carries
# no reply token (a new conversation, a forward) is theirs. The token is a keyed MAC of the agent
# and ``[[agents]] address_version``, so bumping the version revokes the old address. 80 bits: a
# guess costs a mail, and the address stays short enough to keep in an address book. Lower-case
# base32, as some MTAs lower-case local parts.
PERSONAL_TOKEN_LENGTH = 16
_PERSONAL_CONTEXT = b"maildesk personal address\x00"
_PERSONAL_PREFIX = "a-"


def personal_token(secret: bytes, agent: str, version: int) -> str:
    """The token of ``agent``'s personal address at ``version``."""
    if not secret:
        raise ValueError("the desk secret is empty")
    message = _PERSONAL_CONTEXT + version.to_bytes(4, "big") + _normalise_agent(agent)
    digest = hmac.new(secret, message, hashlib.sha256).digest()[: PERSONAL_TOKEN_LENGTH * 5 // 8]
    return base64.b32encode(digest).decode("ascii").lower()


def personal_address(secret: bytes, desk_address: str, agent: str, version: int) -> str:
    """``support@example.com`` -> ``support+a-<token>@example.com`` for ``agent``."""
    local, domain = _split_address(desk_address)
    return f"{local}+{_PERSONAL_PREFIX}{personal_token(secret, agent, version)}@{domain}"


def personal_tokens_in(addresses: Iterable[str], desk_address: str) -> tuple[str, ...]:
    """The personal-address tokens in ``addresses`` (bare or whole header values), lower-cased,
    in order, once each; the local part and domain compare case-insensitively."""
    local, domain = _split_address(desk_address)
    if not local or not domain:
        return ()
    pattern = re.compile(
        rf"(?<![\w.+!#$%&'*/=?^`{{|}}~-]){re.escape(local)}\+{_PERSONAL_PREFIX}"
        rf"([a-z2-7]{{{PERSONAL_TOKEN_LENGTH}}})@{re.escape(domain)}(?![\w.-])",
        re.IGNORECASE,
    )
    found: dict[str, None] = {}
    for value in addresses:
        if isinstance(value, str):
            for match in pattern.finditer(value):
                found.setdefault(match.group(1).lower(), None)
    return tuple(found)


def check_personal(secret: bytes, token: str, agent: str, version: int) -> bool:
    """Whether ``token`` (any letter case) is ``agent``'s personal token at ``version``."""
    if not secret or len(token) != PERSONAL_TOKEN_LENGTH:
        return False
    return hmac.compare_digest(token.lower(), personal_token(secret, agent, version))
