"""Who may act: reply tokens and trusted Authentication-Results.

Sits between ``routing`` and ``tickets``: once a follow-up is known to come from an agent, the
lifecycle asks ``authenticate`` whether the message proves it. ``From:`` alone never does. Proof
is either a reply token (``mail.marks``: an HMAC with the desk secret, carried in the
plus-address of the ``Reply-To`` of every notification) or a verdict from a trusted
``Authentication-Results`` header (RFC 8601), read from the value as it arrived, showing DMARC
pass for the From domain or DKIM pass aligned with it.

Everything here is pure: no database, no network, no clock (``now`` is passed in). Checking
never raises.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from maildesk.mail.marks import (
    check_personal,
    check_token,
    personal_tokens_in,
    token_ticket,
    tokens_in,
)

# Preference among failed tokens when a message carries several: the most helpful explanation.
_FAILURE_RANK = {
    "expired": 0,
    "other_ticket": 1,
    "other_agent": 2,
    "altered": 3,
    "malformed": 4,
    "other_address": 5,
}


@dataclass(frozen=True, slots=True)
class Proof:
    """Whether a message proves that the agent sent it, and how.

    ``reason`` is one sentence for the notice to the agent when ``ok`` is false. ``token_reason``
    and ``ar_reason`` record both checks for the audit trail (never the token itself).
    """

    ok: bool
    method: str  # token | address | dmarc | dkim | none | "" when not ok
    reason: str
    token_reason: str = ""
    ar_reason: str = ""


# --- Authentication-Results (RFC 8601) -------------------------------------------------------
#
# A verdict is read from the header value exactly as it arrived (only unfolded). A receiving MTA
# copies what the sender chose (the envelope sender, the HELO name) into its own header, so any
# decoding or cleaning would let the sender write results: a value holding an RFC 2047 encoded
# word, a non-ASCII character, or a control or invisible character is not read at all. Property
# values (``smtp.mailfrom=...``) are single tokens, never scanned again for results.

# "=?" starts an encoded word; anything outside printable ASCII but folding whitespace is either
# non-ASCII (SMTPUTF8 addresses, U+200B...) or a control character.
_UNREADABLE = re.compile(r"=\?|[^\x20-\x7e\t\r\n]")
# The authserv-id of a value that is not read: its leading word, when that is plain and ends
# where a word ends. A value whose leading word is not plain might be anyone's.
_LEADING_ID = re.compile(r"[ \t\r\n]*([!#-'*-:<>-~]+)(?=[ \t\r\n;(]|\Z)")
_UNKNOWN_ID = "\x00unknown"  # never equal to a configured authserv-id
_SPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class _ResInfo:
    method: str  # e.g. "dmarc", "dkim" (version suffix removed)
    result: str  # e.g. "pass"
    props: tuple[tuple[str, str], ...]  # ("header.from", "example.com"), ...

    def prop(self, name: str) -> str | None:
        for key, value in self.props:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class _Results:
    authserv_id: str  # lower-case; "" when the header has none; _UNKNOWN_ID when unreadable
    resinfo: tuple[_ResInfo, ...]
    readable: bool = True  # False: the value needed decoding or cleaning; it proves nothing


def _comment_end(value: str, i: int) -> tuple[int, bool]:
    """The index after the comment opening at ``i`` (nested, with quoted-pairs), and whether
    it was closed; an unterminated comment runs to the end of the value.

    A quote inside a comment makes it unreadable: a comment holds no quoted strings (RFC 5322),
    but an MTA that repeats a quoted envelope sender in its SPF comment writes one, and then a
    ``)`` of the sender's (``"x);dmarc=pass header.from=example.com;("@evil.test``) would end
    the comment and make the rest read as the MTA's own results."""
    depth, n = 0, len(value)
    while i < n:
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return n, False
        depth += {"(": 1, ")": -1}.get(value[i], 0)
        i += 1
        if depth == 0:
            return i, True
    return n, False


def _quoted_end(value: str, i: int) -> tuple[str, int, bool]:
    """The content of the quoted string opening at ``i``, the index after it, and whether it
    was closed; an unterminated one runs to the end of the value."""
    chars: list[str] = []
    i, n = i + 1, len(value)
    while i < n and value[i] != '"':
        if value[i] == "\\" and i + 1 < n:
            i += 1
        chars.append(value[i])
        i += 1
    return "".join(chars), i + 1, i < n


def _pvalue_end(value: str, i: int) -> tuple[str, int, bool]:
    """One value after "=": a run up to white space, ";" or a comment, quoted strings in it
    kept whole (``"a b"@example.com``). It is one token whatever it holds."""
    chars: list[str] = []
    well_formed, n = True, len(value)
    while i < n and value[i] not in _SPACE and value[i] not in ";()":
        if value[i] == '"':
            content, i, closed = _quoted_end(value, i)
            chars.append(content)
            well_formed = well_formed and closed
        else:
            chars.append(value[i])
            i += 1
    return "".join(chars), i, well_formed


def _lex(value: str) -> tuple[list[tuple[str, str]], bool]:
    """Tokens of an AR value: ("word", w), ("quoted", s), ("=", "="), ("value", v), (";", ";"),
    and whether the value was well formed.

    What follows "=" is a single "value" token. Comments (nested, with quoted-pairs) are
    dropped; an unterminated comment or quoted string marks the value malformed.
    """
    tokens: list[tuple[str, str]] = []
    well_formed = True
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        closed = True
        if char in _SPACE:
            i += 1
        elif char == ")":  # a stray ")": what was meant to be a comment here is unclear
            i, closed = i + 1, False
        elif char == "(":
            i, closed = _comment_end(value, i)
        elif tokens and tokens[-1][0] == "=" and char != ";":
            text, i, closed = _pvalue_end(value, i)
            tokens.append(("value", text))
        elif char == '"':
            text, i, closed = _quoted_end(value, i)
            tokens.append(("quoted", text))
        elif char in "=;":
            tokens.append((char, char))
            i += 1
        else:
            start = i
            while i < n and value[i] not in _SPACE and value[i] not in '()";=':
                i += 1
            tokens.append(("word", value[start:i]))
        well_formed = well_formed and closed
    return tokens, well_formed


def _parse_resinfo(tokens: list[tuple[str, str]]) -> _ResInfo | None:
    """``method=result`` then ``ptype.property=value`` pairs; anything else is skipped."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i + 2 < len(tokens):
        (kind, key), (eq, _), (vkind, val) = tokens[i], tokens[i + 1], tokens[i + 2]
        if kind == "word" and eq == "=" and vkind == "value":
            pairs.append((key.lower(), val))
            i += 3
        else:
            i += 1
    if not pairs:
        return None
    method, result = pairs[0]
    return _ResInfo(
        method=method.split("/", 1)[0],
        result=result.lower(),
        props=tuple((key, val.strip()) for key, val in pairs[1:]),
    )


def _unread(value: str) -> _Results:
    """A value that needs decoding or cleaning: only where it stands is kept, never a result."""
    match = _LEADING_ID.match(value)
    return _Results(match.group(1).lower() if match else _UNKNOWN_ID, (), readable=False)


def parse_authentication_results(value: str) -> _Results:
    """One AR header value, as it arrived, to its authserv-id and results; never raises."""
    value = value if isinstance(value, str) else ""
    if _UNREADABLE.search(value):
        return _unread(value)
    segments: list[list[tuple[str, str]]] = [[]]
    tokens, well_formed = _lex(value)
    for token in tokens:
        if token[0] == ";":
            segments.append([])
        else:
            segments[-1].append(token)
    head = segments[0]
    # A header without an authserv-id (it starts "spf=pass ...") can never be trusted.
    if not head or head[0][0] != "word" or (len(head) > 1 and head[1][0] == "="):
        authserv_id = ""
    else:
        authserv_id = head[0][1].lower()
    if not well_formed:  # a header we cannot read exactly proves nothing (but still counts)
        return _Results(authserv_id, ())
    parsed = (_parse_resinfo(segment) for segment in segments[1:])
    return _Results(authserv_id, tuple(info for info in parsed if info is not None))


def _domain(value: str | None) -> str:
    if not value:
        return ""
    return value.rpartition("@")[2].strip().strip(".").lower()


def _aligned(signer: str, from_domain: str) -> bool:
    """Relaxed alignment: same domain, or one is a parent of the other (never a bare TLD)."""
    if not signer or not from_domain or "." not in signer or "." not in from_domain:
        return False
    return (
        signer == from_domain
        or from_domain.endswith("." + signer)
        or signer.endswith("." + from_domain)
    )


def _verdict(results: _Results, from_domain: str) -> tuple[str, str]:
    """("dmarc" | "dkim" | "", reason) for the one trusted header.

    ``dmarc=pass`` counts only with ``header.from`` naming the From domain: a result that does
    not say which domain passed proves nothing about this one.
    """
    for info in results.resinfo:
        if info.method == "dmarc" and info.result == "pass":
            if from_domain and _domain(info.prop("header.from")) == from_domain:
                return "dmarc", f"dmarc=pass for {from_domain} from {results.authserv_id}"
    for info in results.resinfo:
        if info.method == "dkim" and info.result == "pass":
            signer = _domain(info.prop("header.d")) or _domain(info.prop("header.i"))
            if _aligned(signer, from_domain):
                return "dkim", f"dkim=pass aligned with {from_domain} from {results.authserv_id}"
    return "", f"{results.authserv_id} shows no dmarc=pass or aligned dkim=pass for {from_domain}"


def _in_trusted_place(results: _Results, trusted: Collection[str]) -> bool:
    """Whether a header counts as one from a trusted server for the topmost-and-only rule.

    A header that is not read still stands where it stands: one naming a trusted authserv-id,
    or whose authserv-id is not plain, is taken to be a trusted server's. So a forged header
    below it can never become "the topmost trusted one" by the unreadable one being skipped.
    """
    if results.authserv_id in trusted:
        return True
    return not results.readable and results.authserv_id == _UNKNOWN_ID


def _ar_check(
    values: Sequence[str], trusted_authserv_ids: Collection[str], from_domain: str
) -> tuple[str, str]:
    trusted = {item.strip().lower() for item in trusted_authserv_ids if item and item.strip()}
    domain = _domain(from_domain)
    parsed = [parse_authentication_results(value) for value in values]
    positions = [i for i, results in enumerate(parsed) if _in_trusted_place(results, trusted)]
    if not positions:
        return "", "no Authentication-Results from a trusted server"
    if len(positions) > 1:
        return "", "Authentication-Results ambiguous: more than one from a trusted server"
    if positions[0] != 0:
        return "", "the trusted Authentication-Results is not the topmost one"
    if not parsed[0].readable:
        return "", (
            "the topmost Authentication-Results holds an encoded word, a non-ASCII or an "
            "invisible character, so it proves nothing"
        )
    return _verdict(parsed[0], domain)


def check_authentication_results(
    values: Sequence[str], trusted_authserv_ids: Collection[str], from_domain: str
) -> tuple[bool, str]:
    """(passed, reason) for the Authentication-Results values as they arrived (unfolded, never
    decoded), topmost first (header order).

    Only headers whose authserv-id is trusted count, and only if there is exactly one such header
    and it is the topmost one (RFC 8601 sections 5 and 7.1): anything below it may have been
    written by the sender. A value holding an encoded word, a non-ASCII or an invisible
    character is never read, but still takes its place (see ``_in_trusted_place``). The one
    header must show ``dmarc=pass`` with ``header.from`` the From domain, or ``dkim=pass`` whose
    signing domain is aligned with it.
    """
    method, reason = _ar_check(values, trusted_authserv_ids, from_domain)
    return bool(method), reason


_NOTICES = {
    "missing": (
        "The message carried no reply token of yours and no trusted sender authentication. "
        "Reply to a notification from the desk (its Reply-To carries your token) so the "
        "command counts."
    ),
    "other_agent": (
        "The reply token is not yours: it belongs to another agent, or was made with a desk "
        "secret no longer in use (another host's, or one changed since); reply to a newer "
        "notification the desk sent to you."
    ),
    "other_ticket": (
        "The reply token belongs to another ticket; reply to a notification about this ticket."
    ),
    "expired": "The reply token has expired; reply to a newer notification.",
    "altered": (
        "The reply token was altered; reply to a notification from the desk without editing "
        "its Reply-To address."
    ),
    "malformed": (
        "The reply token was altered; reply to a notification from the desk without editing "
        "its Reply-To address."
    ),
    "other_address": (
        "The message went to a personal desk address that is not yours, or no longer valid; "
        "`maildesk agents address` shows your current one."
    ),
}


@dataclass(frozen=True, slots=True)
class Trust:
    """What the desk takes as proof: tokens made with its secret at its address, the verdicts of
    the servers it trusts (``trusted_authserv_ids``), and ``[security] agent_auth``."""

    secret: bytes
    desk_address: str
    trusted_authserv_ids: tuple[str, ...]
    agent_auth: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A message that says it comes from ``agent`` about ticket ``ticket_number`` (None: about
    no ticket, so no reply token can prove it): the To, Cc, Delivered-To and X-Original-To
    values (``addresses``), the Authentication-Results values as they arrived
    (``Inbound.authentication_results``), topmost first, and the version of the agent's
    personal address (``[[agents]] address_version``). ``merged``: tickets merged into this
    one (along ``merged_into``), whose tokens prove the agent here as well."""

    agent: str
    ticket_number: int | None
    addresses: tuple[str, ...]
    authentication_results: tuple[str, ...]
    address_version: int = 1
    merged: tuple[int, ...] = ()


def _token_check(trust: Trust, claim: Claim, now: datetime) -> tuple[str, str]:
    """(method, reason) of the marks a message carries: ``token`` for a valid reply token for
    the ticket, ``address`` for the agent's own personal address, else "" and the most helpful
    failure (``missing`` when there is none)."""
    secret, desk_address, agent = trust.secret, trust.desk_address, claim.agent
    reason = "missing"
    for token in personal_tokens_in(claim.addresses, desk_address):
        if check_personal(secret, token, agent, claim.address_version):
            return "address", "valid"
        reason = "other_address"
    if claim.ticket_number is None:
        return "", reason
    for token in tokens_in(claim.addresses, desk_address):
        # a token for a ticket merged into this one is checked as that ticket's
        named = token_ticket(token)
        number = named if named in claim.merged else claim.ticket_number
        check = check_token(secret, token, agent, number, now)
        if check.ok:
            return "token", "valid"
        if _FAILURE_RANK.get(check.reason, 9) < _FAILURE_RANK.get(reason, 9):
            reason = check.reason
    return "", reason


def authenticate(trust: Trust, claim: Claim, now: datetime) -> Proof:
    """Whether this message proves it comes from ``claim.agent`` (the registered address) for
    the ticket. A valid reply token, or the agent's own personal address, wins; else a trusted
    AR verdict; else ``agent_auth == "none"`` lets it through; else the proof fails with a
    sentence for the agent.
    """
    agent, authentication_results = claim.agent, claim.authentication_results
    trusted_authserv_ids, agent_auth = trust.trusted_authserv_ids, trust.agent_auth
    method, token_reason = _token_check(trust, claim, now)
    if method:
        return Proof(True, method, "", token_reason=token_reason)
    method, ar_reason = _ar_check(authentication_results, trusted_authserv_ids, _domain(agent))
    if method:
        return Proof(True, method, "", token_reason=token_reason, ar_reason=ar_reason)
    if agent_auth.strip().lower() == "none":
        return Proof(True, "none", "", token_reason=token_reason, ar_reason=ar_reason)
    return Proof(False, "", _NOTICES[token_reason], token_reason=token_reason, ar_reason=ar_reason)
