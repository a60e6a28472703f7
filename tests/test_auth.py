"""Reply tokens and Authentication-Results: who may act on a ticket."""

from __future__ import annotations

import base64
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

import pytest

from maildesk.desk.auth import Claim, Proof, Trust, authenticate, check_authentication_results
from maildesk.mail.marks import (
    TOKEN_LENGTH,
    TokenCheck,
    check_token,
    make_token,
    reply_address,
    token_ticket,
    tokens_in,
)

SECRET = b"k" * 32
DESK = "support@desk.example"
ALICE = "alice@example.com"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=180)
TRUSTED = ("mx.desk.example",)


def token(agent: str = ALICE, ticket: int = 1042, expires: datetime = LATER) -> str:
    return make_token(SECRET, agent, ticket, expires)


# --- tokens ------------------------------------------------------------------------------------


def test_token_fits_a_local_part_and_is_lowercase_base32() -> None:
    made = token()
    assert len(made) == TOKEN_LENGTH
    assert set(made) <= set("abcdefghijklmnopqrstuvwxyz234567")
    local = reply_address(DESK, made).partition("@")[0]
    assert len(local) <= 64 - 8  # room left for a longer desk local part


@pytest.mark.parametrize(
    ("presented", "agent", "ticket", "now", "expected"),
    [
        (lambda: token(), ALICE, 1042, NOW, TokenCheck(True, "valid")),
        (lambda: token().upper(), ALICE, 1042, NOW, TokenCheck(True, "valid")),
        (lambda: token(), "Alice@Example.COM", 1042, NOW, TokenCheck(True, "valid")),
        (lambda: token(agent="ALICE@example.com"), ALICE, 1042, NOW, TokenCheck(True, "valid")),
        (lambda: token(), ALICE, 1042, LATER, TokenCheck(False, "expired")),
        (lambda: token(), ALICE, 1042, LATER - timedelta(minutes=1), TokenCheck(True, "valid")),
        (lambda: token(), ALICE, 1043, NOW, TokenCheck(False, "other_ticket")),
        (lambda: token(), "bob@example.com", 1042, NOW, TokenCheck(False, "other_agent")),
        (lambda: "", ALICE, 1042, NOW, TokenCheck(False, "missing")),
        (lambda: token()[:-1], ALICE, 1042, NOW, TokenCheck(False, "malformed")),
        (lambda: token() + "a", ALICE, 1042, NOW, TokenCheck(False, "malformed")),
        (lambda: token()[:-1] + "1", ALICE, 1042, NOW, TokenCheck(False, "malformed")),
        (lambda: "hello", ALICE, 1042, NOW, TokenCheck(False, "malformed")),
        (lambda: token()[:-1] + ("a" if token()[-1] != "a" else "b"), ALICE, 1042, NOW,
         TokenCheck(False, "altered")),
        (lambda: make_token(b"other secret", ALICE, 1042, LATER), ALICE, 1042, NOW,
         TokenCheck(False, "other_agent")),
    ],
)  # fmt: skip
def test_check_token(
    presented: Callable[[], str], agent: str, ticket: int, now: datetime, expected: TokenCheck
) -> None:
    assert check_token(SECRET, presented(), agent, ticket, now) == expected


def test_naive_datetimes_are_utc() -> None:
    made = make_token(SECRET, ALICE, 7, datetime(2025, 6, 1))
    assert check_token(SECRET, made, ALICE, 7, datetime(2025, 5, 31, 23, 59)).ok
    assert check_token(SECRET, made, ALICE, 7, datetime(2025, 6, 1, 0, 0)).reason == "expired"


def test_any_changed_character_is_rejected() -> None:
    made = token()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for position, original in enumerate(made):
        for replacement in alphabet:
            if replacement == original:
                continue
            changed = made[:position] + replacement + made[position + 1 :]
            assert not check_token(SECRET, changed, ALICE, 1042, NOW).ok, (position, replacement)


def test_random_strings_are_never_accepted() -> None:
    rng = random.Random(20250301)
    size = TOKEN_LENGTH * 5 // 8
    # Half wholly random, half a genuine header (version, ticket, expiry, agent tag) with a
    # random MAC, so the MAC comparison itself is what must refuse them.
    header = base64.b32decode(token().upper())[:13]
    accepted = 0
    for i in range(100_000):
        raw = rng.randbytes(size) if i % 2 else header + rng.randbytes(size - len(header))
        guess = base64.b32encode(raw).decode().lower()
        accepted += check_token(SECRET, guess, ALICE, 1042, NOW).ok
    assert accepted == 0


def test_make_token_refuses_impossible_input() -> None:
    with pytest.raises(ValueError):
        make_token(SECRET, ALICE, -1, LATER)
    with pytest.raises(ValueError):
        make_token(SECRET, ALICE, 2**32, LATER)
    with pytest.raises(ValueError):
        make_token(b"", ALICE, 1, LATER)


# --- finding tokens in addresses -----------------------------------------------------------------


def test_reply_address() -> None:
    assert reply_address(DESK, "abc") == "support+abc@desk.example"


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["support+abc234@desk.example"], ("abc234",)),
        (["SUPPORT+ABC234@Desk.Example"], ("abc234",)),
        (['"Help Desk" <support+abc@desk.example>, bob@example.com'], ("abc",)),
        (["support+abc@desk.example", "support+abc@desk.example", "support+def@desk.example"],
         ("abc", "def")),
        (["support@desk.example"], ()),
        (["nosupport+abc@desk.example"], ()),
        (["support+abc@desk.example.evil.test"], ()),
        (["support+abc@other.example"], ()),
        (["x.support+abc@desk.example"], ()),
        ([], ()),
    ],
)  # fmt: skip
def test_tokens_in(addresses: list[str], expected: tuple[str, ...]) -> None:
    assert tokens_in(addresses, DESK) == expected


# --- Authentication-Results ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "passed", "reason_part"),
    [
        (["mx.desk.example; dmarc=pass header.from=example.com"], True, "dmarc=pass"),
        (["MX.Desk.Example 1; dmarc=pass (p=reject dis=none) header.from=Example.COM"], True,
         "dmarc=pass"),
        # a dmarc=pass that does not say for which domain proves nothing about this one
        (["mx.desk.example; dmarc=pass"], False, "no dmarc=pass"),
        (['mx.desk.example; dmarc=pass header.from="example.com"'], True, "dmarc=pass"),
        (["mx.desk.example;\r\n dkim=pass header.d=example.com header.s=sel;\r\n"
          " spf=fail smtp.mailfrom=evil.test;\r\n dmarc=fail header.from=example.com"], True,
         "dkim=pass"),
        (["mx.desk.example; dkim=pass (2048-bit key; secure) header.i=@mail.example.com"], True,
         "dkim=pass"),
        (["mx.desk.example; dkim/1=pass header.d=com"], False, "no dmarc=pass"),
        (["mx.desk.example; dkim=pass header.d=evil.test"], False, "no dmarc=pass"),
        (["mx.desk.example; dkim=pass header.d=notexample.com"], False, "no dmarc=pass"),
        (["mx.desk.example; dkim=fail header.d=example.com"], False, "no dmarc=pass"),
        (["mx.desk.example; dmarc=fail header.from=example.com"], False, "no dmarc=pass"),
        (["mx.desk.example; dmarc=pass header.from=evil.test"], False, "no dmarc=pass"),
        (["mx.desk.example (dmarc=pass header.from=example.com); none"], False, "no dmarc=pass"),
        (["mx.desk.example; spf=pass (dmarc=pass) smtp.mailfrom=example.com"], False,
         "no dmarc=pass"),
        (["mx.desk.example; dmarc=pass policy.dmarc=reject header.from=example.com"], True,
         "dmarc=pass"),
        (["evil.test; dmarc=pass header.from=example.com"], False, "no Authentication-Results"),
        (["dmarc=pass header.from=example.com"], False, "no Authentication-Results"),
        (["mx.desk.example.evil.test; dmarc=pass header.from=example.com"], False,
         "no Authentication-Results"),
        ([], False, "no Authentication-Results"),
        (["mx.desk.example; dmarc=pass header.from=example.com",
          "mx.desk.example; dmarc=pass header.from=example.com"], False, "ambiguous"),
        (["mx.desk.example; dmarc=fail header.from=example.com",
          "mx.desk.example; dmarc=pass header.from=example.com"], False, "ambiguous"),
        (["other.example; dmarc=fail header.from=example.com",
          "mx.desk.example; dmarc=pass header.from=example.com"], False, "not the topmost"),
        (["mx.desk.example; dmarc=pass header.from=example.com",
          "evil.test; dmarc=fail header.from=example.com"], True, "dmarc=pass"),
        (["mx.desk.example; dmarc=pass (unterminated header.from=evil.test"], False,
         "no dmarc=pass"),
        (["mx.desk.example; dmarc=pass header.from=example.com (fine (nested) \\) comment)"],
         True, "dmarc=pass"),
        (['mx.desk.example; dmarc="pass'], False, "no dmarc=pass"),
        (["", ";;;", "((((", '"', "=", ")", "\\"], False, "no Authentication-Results"),
        (["mx.desk.example;=;==;dmarc=;=pass"], False, "no dmarc=pass"),
        # property values are one token each: what a sender chose is never read as results
        (['mx.desk.example; spf=pass smtp.mailfrom="x; dmarc=pass header.from=example.com"'
          "@evil.test"], False, "no dmarc=pass"),
        (["mx.desk.example; spf=pass smtp.mailfrom=a=header.from=example.com@evil.test;"
          " dmarc=pass header.from=evil.test"], False, "no dmarc=pass"),
        (["mx.desk.example; dmarc = pass header.from = example.com"], True, "dmarc=pass"),
        # a ")" of the sender's ends a comment early: a quote in a comment, or a ")" that
        # closes nothing, makes the value unreadable
        (['mx.desk.example; spf=pass (domain of "x);dmarc=pass header.from=example.com;("'
          "@evil.test designates 192.0.2.7 as permitted sender) smtp.mailfrom=evil.test"],
         False, "no dmarc=pass"),
        (["mx.desk.example; spf=pass smtp.mailfrom=x);dmarc=pass header.from=example.com"],
         False, "no dmarc=pass"),
        (["mx.desk.example; dmarc=pass (p=none sp=none) header.from=example.com"], True,
         "dmarc=pass"),
    ],
)  # fmt: skip
def test_check_authentication_results(values: list[str], passed: bool, reason_part: str) -> None:
    result = check_authentication_results(values, TRUSTED, "example.com")
    assert result[0] is passed
    assert reason_part in result[1]


# What a receiving MTA writes when it repeats a sender's choice: an encoded word, raw UTF-8 or an
# invisible character in the value. Decoded and cleaned, each would read "dmarc=pass".
UNREADABLE = [
    "mx.desk.example; spf=pass smtp.mailfrom==?us-ascii?q?x=3B_dmarc=3Dpass_?=@evil.test",
    "mx.desk.example; spf=pass (mx.desk.example: domain of =?us-ascii?q?x=29=3B_dmarc=3Dpass_"
    "header.from=3Dexample.com_=28?=@evil.test designates 192.0.2.1 as permitted sender)",
    "mx.desk.example; spf=none smtp.helo==?us-ascii?q?x=3B_dmarc=3Dpass_header.from=3Dexample.com?=",
    "mx.desk.example; dmarc=pass header.from=example.com; spf=pass smtp.mailfrom=ü@evil.test",
    "mx.desk.example; dmarc=pass header.from=example.com\u200b",
    "mx.desk.example; dmarc=pass header.from=example.com\x00",
    "mx.desk.example; dmarc=pass header.from=example.com\x7f",
]


@pytest.mark.parametrize("value", UNREADABLE)
def test_a_value_that_needs_decoding_or_cleaning_proves_nothing(value: str) -> None:
    passed, reason = check_authentication_results([value], TRUSTED, "example.com")
    assert not passed
    assert "proves nothing" in reason


@pytest.mark.parametrize(
    ("values", "reason_part"),
    [
        # an unreadable header from the trusted server still stands on top: a forged readable one
        # below it never becomes "the topmost trusted one"
        ([UNREADABLE[0], "mx.desk.example; dmarc=pass header.from=example.com"], "ambiguous"),
        # an authserv-id that is not plain might be the trusted one: it counts as such
        (["mx.desk.example\u200b; dmarc=pass header.from=example.com"], "proves nothing"),
        (["mx.desk.example\u200b; dmarc=fail",
          "mx.desk.example; dmarc=pass header.from=example.com"], "ambiguous"),
        (["=?utf-8?q?mx.desk.example?=; dmarc=pass header.from=example.com"], "proves nothing"),
    ],
)  # fmt: skip
def test_an_unreadable_header_keeps_its_place(values: list[str], reason_part: str) -> None:
    passed, reason = check_authentication_results(values, TRUSTED, "example.com")
    assert not passed
    assert reason_part in reason


def test_an_unreadable_header_of_another_server_below_the_trusted_one_is_harmless() -> None:
    values = [
        "mx.desk.example; dmarc=pass header.from=example.com",
        "relay.example.net; spf=pass smtp.mailfrom==?utf-8?q?=C3=BC?=@example.com",
    ]
    assert check_authentication_results(values, TRUSTED, "example.com")[0]


def test_garbage_authentication_results_never_raise() -> None:
    rng = random.Random(8601)
    pieces = ["mx.desk.example", ";", "=", "(", ")", '"', "\\", " ", "dmarc", "pass", "header.from"]
    for _ in range(2000):
        value = "".join(rng.choices(pieces, k=rng.randint(0, 30)))
        passed, reason = check_authentication_results([value], TRUSTED, "example.com")
        assert isinstance(passed, bool) and reason


def lines_run(function: Callable[[], object]) -> int:
    """How many lines of maildesk/auth.py run while ``function`` does: its work, not its time."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> object:
        nonlocal count
        if frame.f_code.co_filename.endswith("auth.py"):
            count += event == "line"
            return trace
        return None

    sys.settrace(trace)
    try:
        function()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize(
    "poison",
    [
        "(" * 200 + "x" + ")" * 200,
        "a=b " * 100,
        "; dmarc=pass" * 100,
        'k="' + '\\"' * 100 + '"',
        "spf=pass smtp.mailfrom=" + "a=" * 200 + "b@evil.test",
        "mx.desk.example" * 100 + "=?",
    ],
    ids=["nested-comments", "pairs", "results", "quoted-pairs", "equals-in-a-value", "unread"],
)
def test_the_work_of_reading_a_verdict_grows_with_its_length_only(poison: str) -> None:
    def read(copies: int) -> int:
        value = "mx.desk.example; " + poison * copies
        return lines_run(lambda: check_authentication_results([value], TRUSTED, "example.com"))

    once, twice = read(4), read(8)
    assert once > 0
    assert twice <= 2.2 * once


# --- authenticate ------------------------------------------------------------------------------


def prove(
    addresses: list[str] | None = None,
    ar: list[str] | None = None,
    agent_auth: str = "token_or_dmarc",
    agent: str = ALICE,
    ticket: int = 1042,
) -> Proof:
    trust = Trust(SECRET, DESK, tuple(TRUSTED), agent_auth)
    return authenticate(trust, Claim(agent, ticket, tuple(addresses or ()), tuple(ar or ())), NOW)


DMARC_PASS = ["mx.desk.example; dmarc=pass header.from=example.com"]
FORGED_AR = ["evil.test; dmarc=pass header.from=example.com"]


@pytest.mark.parametrize(
    ("addresses", "ar", "agent_auth", "ok", "method", "says"),
    [
        ([reply_address(DESK, token())], [], "token", True, "token", ""),
        ([reply_address(DESK, token()).upper()], [], "token", True, "token", ""),
        (["other@x.test", reply_address(DESK, token(ticket=1)), reply_address(DESK, token())],
         [], "token", True, "token", ""),
        ([], DMARC_PASS, "token", True, "dmarc", ""),
        ([], ["mx.desk.example; dkim=pass header.d=example.com"], "token", True, "dkim", ""),
        ([reply_address(DESK, token(expires=NOW))], DMARC_PASS, "token", True, "dmarc", ""),
        ([], [], "none", True, "none", ""),
        ([], [], "token", False, "", "no reply token of yours"),
        ([], FORGED_AR, "token", False, "", "no reply token of yours"),
        ([DESK], [], "token", False, "", "no reply token of yours"),
        ([reply_address(DESK, token(agent="bob@example.com"))], [], "token", False, "",
         "belongs to another agent"),
        ([reply_address(DESK, make_token(b"q" * 32, ALICE, 1042, LATER))], [], "token", False, "",
         "or was made with a desk secret no longer in use"),  # her own, from another host
        ([reply_address(DESK, token(expires=NOW))], FORGED_AR, "token", False, "", "expired"),
        ([reply_address(DESK, token(ticket=1))], [], "token", False, "", "another ticket"),
        ([reply_address(DESK, "a" * TOKEN_LENGTH)], [], "token", False, "", "altered"),
        ([reply_address(DESK, "abc")], [], "token", False, "", "altered"),
        ([reply_address(DESK, token(agent="bob@example.com")),
          reply_address(DESK, token(expires=NOW))], [], "token", False, "", "expired"),
        ([], DMARC_PASS + DMARC_PASS, "token", False, "", "no reply token of yours"),
    ],
)  # fmt: skip
def test_authenticate(
    addresses: list[str], ar: list[str], agent_auth: str, ok: bool, method: str, says: str
) -> None:
    proof = prove(addresses, ar, agent_auth)
    assert (proof.ok, proof.method) == (ok, method)
    assert says in proof.reason
    if not ok:
        assert proof.reason.endswith(".")


def test_authenticate_records_both_checks_for_the_audit() -> None:
    proof = prove([reply_address(DESK, token(expires=NOW))], DMARC_PASS + DMARC_PASS)
    assert not proof.ok
    assert proof.token_reason == "expired"
    assert "ambiguous" in proof.ar_reason
    assert token(expires=NOW) not in repr(proof)


def test_a_token_of_a_ticket_merged_into_this_one_proves_the_agent_here() -> None:
    trust = Trust(SECRET, DESK, TRUSTED, "token")
    old = (reply_address(DESK, token(ticket=1041)),)
    assert authenticate(trust, Claim(ALICE, 1042, old, (), merged=(1041,)), NOW).ok
    # only a merged ticket's: a token of another ticket, or of none merged here, proves nothing
    for merged in ((), (1040,)):
        proof = authenticate(trust, Claim(ALICE, 1042, old, (), merged=merged), NOW)
        assert (proof.ok, proof.token_reason) == (False, "other_ticket")
    # and it is checked as that ticket's token: another agent's, or expired, fails as such
    bobs = (reply_address(DESK, token(agent="bob@example.com", ticket=1041)),)
    proof = authenticate(trust, Claim(ALICE, 1042, bobs, (), merged=(1041,)), NOW)
    assert proof.token_reason == "other_agent"
    expired = (reply_address(DESK, token(ticket=1041, expires=NOW)),)
    proof = authenticate(trust, Claim(ALICE, 1042, expired, (), merged=(1041,)), NOW)
    assert proof.token_reason == "expired"


def test_token_ticket_reads_the_number_a_token_names() -> None:
    assert token_ticket(token(ticket=1041)) == 1041
    assert token_ticket(token(ticket=1041).upper()) == 1041
    assert token_ticket("a" * (TOKEN_LENGTH - 1)) is None
    assert token_ticket("1" * TOKEN_LENGTH) is None


def test_dmarc_is_checked_against_the_agents_own_domain() -> None:
    proof = prove([], ["mx.desk.example; dmarc=pass header.from=evil.test"], agent=ALICE)
    assert not proof.ok
    proof = prove([], ["mx.desk.example; dmarc=pass header.from=evil.test"], agent="m@evil.test")
    assert proof.ok and proof.method == "dmarc"
