"""The spam verdict reader and the block list, as values: which headers count, which do not,
and the work bounded however hostile the header block."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from maildesk.config import AgentSettings
from maildesk.desk import commands, spam, verbs
from maildesk.desk.plans import Acknowledge, Block, Keep, Reply, SetStatus, TicketState
from maildesk.desk.routing import FollowUp, Ignore, Ignored, NewTicket, Role, TicketView
from maildesk.mail.inbound import parse
from maildesk.models import Status
from tests.poison import LINEAR_BOUND, growth

MX = "Received: from mail.spammer.test (mail.spammer.test [203.0.113.9])\r\n\tby mx.desk.test (Postfix) with ESMTP id 4F1; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
INNER = "Received: from localhost (localhost [127.0.0.1])\r\n\tby mx.desk.test (Postfix) with ESMTP id 4F2; Thu, 26 Nov 2026 10:00:01 +0000\r\n"
BODY = "From: win@lottery.test\r\nTo: support@example.com\r\nSubject: You won\r\nMessage-ID: <w@lottery.test>\r\n\r\nClaim it.\r\n"


def trace_of(headers: str) -> tuple[tuple[str, str], ...]:
    return parse((headers + BODY).encode()).trace


@pytest.mark.parametrize(
    "header, reason",
    [
        ("X-Spam-Flag: YES", "X-Spam-Flag: YES"),
        ("X-Spam-Status: Yes, score=15.2 required=5.0 tests=BAYES_99", "X-Spam-Status: Yes,"),
        ("X-Rspamd-Action: reject", "X-Rspamd-Action: reject"),
        ("X-Rspamd-Action: add header", "X-Rspamd-Action: add header"),
        ("X-Rspamd-Action: rewrite subject", "X-Rspamd-Action: rewrite subject"),
        ("X-Spam: Yes", "X-Spam: Yes"),
        ("X-Spam-Status: Yes,\r\n\tscore=15.2", "X-Spam-Status: Yes,"),  # folded
    ],
)
def test_each_verdict_above_the_topmost_received_counts(header: str, reason: str) -> None:
    found = spam.verdict(trace_of(f"{header}\r\n{MX}"))
    assert found is not None and found.startswith(reason)


@pytest.mark.parametrize(
    "header",
    [
        "X-Spam-Flag: NO",
        "X-Spam-Status: No, score=0.1",
        "X-Rspamd-Action: no action",
        "X-Rspamd-Action: greylist",
        "X-Spam: No",
        "X-Spam-Flag: =?utf-8?q?YES?=",  # an encoded word is no verdict
        "X-Spam-Status: Yesterday's news",
    ],
)
def test_what_is_not_a_verdict(header: str) -> None:
    assert spam.verdict(trace_of(f"{header}\r\n{MX}")) is None


def test_a_verdict_below_a_foreign_received_does_not_count_either_way() -> None:
    assert spam.verdict(trace_of(f"{MX}X-Spam-Flag: YES\r\n")) is None
    # the spammer's own "NO" below changes nothing about the desk's "YES" above
    assert spam.verdict(trace_of(f"X-Spam-Flag: YES\r\n{MX}X-Spam-Flag: NO\r\n")) is not None


def test_trusted_hosts_let_a_verdict_below_the_desks_own_hops_count() -> None:
    headers = f"{INNER}X-Spam-Flag: YES\r\n{MX}"
    assert spam.verdict(trace_of(headers)) is None  # default: only above the topmost
    trusted = frozenset({"mx.desk.test", "127.0.0.1"})
    assert spam.verdict(trace_of(headers), trusted) == "X-Spam-Flag: YES"
    # the spammer's own verdict below the hop from outside still does not count
    assert spam.verdict(trace_of(f"{INNER}{MX}X-Spam-Flag: YES\r\n"), trusted) is None


def test_a_forged_helo_does_not_make_a_hop_trusted() -> None:
    forged = (
        "Received: from mx.desk.test (mail.spammer.test [203.0.113.9])\r\n"
        "\tby mx.desk.test (Postfix); Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    )
    trusted = frozenset({"mx.desk.test"})
    assert not spam.trusted_hop(forged.split(":", 1)[1], trusted)
    assert spam.verdict(trace_of(f"{forged}X-Spam-Flag: YES\r\n"), trusted) is None


def test_received_lines_are_read_for_their_hosts() -> None:
    trusted = frozenset({"mx.desk.test", "127.0.0.1", "filter.desk.test"})
    assert spam.trusted_hop("from localhost (localhost [127.0.0.1]) by mx.desk.test; x", trusted)
    assert spam.trusted_hop("by filter.desk.test (Postfix, from userid 0); x", trusted)
    assert spam.trusted_hop("from filter.desk.test by mx.desk.test with LMTP", trusted)
    assert not spam.trusted_hop("from localhost (by mx.desk.test) by evil.test", trusted)
    assert not spam.trusted_hop("from [198.51.100.1] by mx.desk.test", trusted)
    assert not spam.trusted_hop("with ESMTP id 42", trusted)


def test_the_block_list_is_a_glob_on_the_lower_case_address() -> None:
    patterns = ("*@lottery.test", "x@y.test")
    assert spam.blocked(["WIN@Lottery.test"], patterns) is not None
    assert spam.blocked(["x@y.test"], patterns) is not None
    assert spam.blocked(["x@y.test.example"], patterns) is None
    assert spam.blocked(["dana@customer.test"], patterns) is None


def test_screening_decides_the_route() -> None:
    ticket = TicketView(1, "dana@customer.test", frozenset(), "open")
    on_spam = TicketView(2, "dana@customer.test", frozenset(), "spam")
    customer = FollowUp(ticket, Role.REQUESTER, sender="dana@customer.test")
    agent = FollowUp(on_spam, Role.AGENT, sender="alice@example.com")
    assert spam.screen(NewTicket(), None, "X-Spam: Yes") == NewTicket(spam="X-Spam: Yes")
    assert spam.screen(NewTicket(), "why", None) == Ignore("blocked sender: why", Ignored.BLOCKED)
    assert spam.screen(customer, None, "X-Spam: Yes").automatic == "spam verdict (X-Spam: Yes)"
    assert spam.screen(FollowUp(on_spam, Role.REQUESTER), None, None).automatic is not None
    assert spam.screen(agent, "why", "X-Spam: Yes") == agent
    assert spam.screen(customer, None, None) == customer


def _many_received(n: int) -> bytes:
    line = "Received: from a.test (a.test [192.0.2.1]) by b.test (" + "(x " * 50 + ")\r\n"
    return (INNER * 3 + line * n + "X-Spam-Flag: YES\r\n" + BODY).encode()


def _long_folded(n: int) -> bytes:
    fold = "X-Spam-Status: Yes," + "\r\n\t(((( score=1" * n + "\r\n"
    return (fold + MX + BODY).encode()


@pytest.mark.parametrize("shape", [_many_received, _long_folded], ids=["many-received", "folded"])
def test_reading_the_verdict_is_linear(shape: Callable[[int], bytes]) -> None:
    trusted = frozenset({"mx.desk.test", "127.0.0.1", "b.test", "192.0.2.1"})

    def work(n: int) -> Callable[[], object]:
        data = shape(n)
        return functools.partial(lambda: spam.verdict(parse(data).trace, trusted))

    assert spam.verdict(parse(shape(10)).trace, trusted) is not None
    assert growth(work, 200) < LINEAR_BOUND


def test_the_trace_is_bounded() -> None:
    huge = ("Received: from a.test by b.test; x\r\n" * 900 + BODY).encode()
    trace = parse(huge).trace
    assert len(trace) == 100 and all(name == "received" for name, _ in trace)
    long = parse((f"X-Spam: Yes {'y' * 50_000}\r\n" + BODY).encode()).trace
    assert len(long[0][1]) <= 2000


ALICE = AgentSettings("alice@example.com", "Alice", ("support",))
DIRECTORY = commands.Directory(
    agents=(("alice@example.com", "Alice", ("support",)),),
    teams=("support",),
    own=("support@example.com",),
)


def validated(words: str, sender: str) -> commands.Validation:
    """``words`` on a ticket whose first customer mail came from ``sender`` (its requester)."""
    parsed = commands.parse(f"[#1] {words}", "", r"\[#(?P<number>\d+)\]")
    on = commands.OnTicket(sender, sender=sender)
    return commands.validate(parsed, DIRECTORY, ALICE.email, on)


@pytest.mark.parametrize(
    "words, sender, refusal",
    [
        ("#spam block", "alice@example.com", "is an agent of this desk and cannot be blocked"),
        ("#spam block", "support+x@example.com", "the desk's own address and cannot be blocked"),
        ("#spam block", "", "no customer's mail on this ticket has a sender address"),
        ("#spam now", "win@lottery.test", "#spam takes no arguments but block"),
        ("#notspam please", "win@lottery.test", "#notspam takes no arguments"),
        ("#spam #notspam", "win@lottery.test", "conflicts with #spam"),
    ],
)
def test_spam_commands_are_refused_with_the_reason(words: str, sender: str, refusal: str) -> None:
    found = validated(words, sender)
    assert not found.ok and refusal in found.refusals[0]


def test_spam_keeps_the_text_as_a_note_and_notspam_acknowledges() -> None:
    state = TicketState(1, Status.OPEN, "win@lottery.test", "support")
    actions = validated("#spam block", "win@lottery.test").actions
    plan = verbs.plan_actions(state, actions, ALICE, "Phishing.", DIRECTORY)
    assert SetStatus(Status.SPAM) in plan.steps
    assert Block("win@lottery.test", ALICE.email) in plan.steps
    assert Keep(ALICE.email, "Phishing.", internal=True) in plan.steps
    assert not any(isinstance(s, Reply) for s in plan.steps)
    assert plan.mails() == ()
    spam_state = state.but(status=Status.SPAM)
    back = verbs.plan_actions(spam_state, validated("#notspam", "").actions, ALICE, "", DIRECTORY)
    assert back.steps[:1] == (SetStatus(Status.OPEN),) and Acknowledge() in back.steps
    # on a ticket that is not spam, #notspam changes nothing
    same = verbs.plan_actions(state, validated("#notspam", "").actions, ALICE, "", DIRECTORY)
    assert not any(isinstance(s, SetStatus | Acknowledge) for s in same.steps)
