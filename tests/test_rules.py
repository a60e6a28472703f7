"""The config's rules on new tickets: matchers, actions, order, and the bound on matching.

The decisions are checked as values (``rules.judge``, ``filters.search``); the rest runs
through the real daemon against pymap and Dovecot, and asserts what people see: the tickets
``maildesk tickets show --json`` prints, the mail the customer and the agents get, the ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk import config
from maildesk.config import AgentSettings, AssignBy, RuleSettings
from maildesk.demo import configs
from maildesk.demo.world import Captured
from maildesk.desk import assignment, rules
from maildesk.desk.plans import (
    AddTags,
    Keep,
    Plan,
    Record,
    Reply,
    SetAssignee,
    SetPriority,
    TicketState,
)
from maildesk.mail.parse import filters
from maildesk.mail.parse.filters import Filter
from maildesk.models import Ledger, Status
from maildesk.service.wiring import desk_for
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    CUSTOMER,
    DeskWorld,
    agent_reply,
    customer_mail,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

# --------------------------------------------------------------------------- decisions


def test_matching_rules_apply_in_order_until_one_stops() -> None:
    listed = (
        RuleSettings("billing", subject="invoice", team="engineering", tags=("billing",)),
        RuleSettings("urgent", subject="urgent", priority="urgent", tags=("billing", "hot")),
        RuleSettings("quiet", body="x", acknowledge=False, stop=True),
        RuleSettings("never", body="x", team="support", tags=("late",)),
    )
    ruling = rules.judge(listed, {"billing", "urgent", "quiet", "never"}, (), "support")
    assert ruling.team == "engineering"
    assert ruling.acknowledge is False
    assert ruling.ignored_by is None
    assert ruling.steps == (
        Record("rule", "", {"name": "billing", "team": "engineering", "tags": ["billing"]}),
        AddTags(("billing",)),
        Record("rule", "", {"name": "urgent", "priority": "urgent", "tags": ["billing", "hot"]}),
        SetPriority("urgent"),
        AddTags(("hot",)),  # billing was added already
        Record("rule", "", {"name": "quiet", "acknowledge": False, "stop": True}),
    )


def test_an_ignore_rule_makes_no_ticket_and_nothing_after_it_applies() -> None:
    listed = (
        RuleSettings("tag", subject="x", tags=("a",)),
        RuleSettings("drop", subject="x", ignore=True),
    )
    ruling = rules.judge(listed, {"tag", "drop"}, (), "support")
    assert ruling.ignored_by == "drop"
    assert ruling.steps == ()
    # a rule that does not match is passed over
    assert rules.judge(listed, {"tag"}, (), "support").ignored_by is None


def test_a_rule_out_of_time_does_not_match_and_is_recorded() -> None:
    listed = (RuleSettings("slow", body="(a+)+$", ignore=True),)
    ruling = rules.judge(listed, (), {"slow"}, "support")
    assert ruling.ignored_by is None
    assert ruling.steps == (Record("rule_skipped", "", {"name": "slow", "reason": rules.SLOW}),)


def test_filters_need_every_pattern_given_and_ignore_case() -> None:
    found_in = filters.fields(
        "Dana Scully <dana@customer.test>",
        ("billing@example.com", "other@example.com"),
        "Invoice 42 overdue",
        "Please pay the INVOICE.",
    )
    sought = (
        Filter("from", sender=r"@customer\.test>?$"),
        Filter("name", sender="^dana scully"),
        Filter("to", recipients=r"^billing@"),
        Filter("to-none", recipients=r"^sales@"),
        Filter("both", subject="invoice", body="pay the invoice"),
        Filter("half", subject="invoice", body="refund"),
    )
    found = filters.search(sought, found_in, 5.0)
    assert found.matched == ("from", "name", "to", "both")
    assert found.slow == ()


def test_a_catastrophic_pattern_is_given_up_within_its_time() -> None:
    hostile = "a" * 5000 + "!"
    sought = (Filter("evil", body="(a+)+$"), Filter("fine", body="!"))
    started = time.monotonic()
    found = filters.search(sought, filters.fields("", (), "", hostile), 5.0)
    assert time.monotonic() - started < 2 * filters.FILTER_SECONDS + 0.5
    assert found == filters.Found(matched=("fine",), slow=("evil",))


def test_filters_look_at_the_first_part_of_a_long_body_only() -> None:
    body = "x" * filters.TEXT_CHARS + "needle"
    found = filters.search((Filter("late", body="needle"),), filters.fields("", (), "", body), 5)
    assert found.matched == ()


# --------------------------------------------------------------------------- the config


def config_error(tmp_path: Path, rule: dict[str, Any], **more: Any) -> str:
    text = configs.config_text(
        desk={"name": "D", "address": "desk@example.com", "data_dir": tmp_path / "data"},
        mailboxes=[
            {
                "name": "m",
                "host": "127.0.0.1",
                "port": 1,
                "security": "none",
                "username": "desk@example.com",
                "password": "p",
                "team": "support",
            }
        ],
        smtp={"host": "127.0.0.1", "port": 2, "security": "none"},
        teams=[{"name": "support", **more.get("team", {})}],
        agents=[{"email": ALICE, "teams": ["support"], **more.get("agent", {})}],
        rules=[rule],
    )
    path = tmp_path / "maildesk.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ({"subject": "x"}, "[[rules]] #1 name: missing (required)"),
        ({"name": "r"}, "[[rules]] #1 from: a rule needs at least one of from, to, subject, body"),
        ({"name": "r", "subject": "(unclosed"}, "[[rules]] #1 subject: not a valid regular"),
        ({"name": "r", "body": "x", "team": "nope"}, "[[rules]] #1 team: team 'nope' does not"),
        ({"name": "r", "body": "x", "priority": "asap"}, "[[rules]] #1 priority: must be one"),
        ({"name": "r", "body": "x", "assign": "eve@x.test"}, "[[rules]] #1 assign: eve@x.test"),
        ({"name": "r", "body": "x", "colour": "red"}, "[[rules]] #1 colour: unknown key"),
        ({"name": "r", "body": "x", "stop": "yes"}, "[[rules]] #1 stop: must be a bool"),
    ],
)
def test_a_bad_rule_stops_the_start_naming_its_key(
    tmp_path: Path, rule: dict[str, Any], named: str
) -> None:
    assert named in config_error(tmp_path, rule)


def test_a_bad_assignment_key_stops_the_start_naming_it(tmp_path: Path) -> None:
    rule = {"name": "r", "body": "x"}
    refused = config_error(tmp_path, rule, team={"assign": "random"})
    assert "[[teams]] #1 assign: must be one of none, round_robin, least_open" in refused
    refused = config_error(tmp_path, rule, agent={"available": "no"})
    assert "[[agents]] #1 available: must be a bool" in refused
    refused = config_error(tmp_path, rule, team={"assign": "round_robin"}, agent={"x": 1})
    assert "[[agents]] #1 x: unknown key" in refused


# --------------------------------------------------------------------------- through the daemon


RULES = [
    {"name": "lottery", "from": r"@lottery\.test>?$", "ignore": True},
    {
        "name": "billing",
        "to": r"^billing@",
        "team": "engineering",
        "tags": ["billing"],
        "acknowledge": False,
    },
    {"name": "urgent", "subject": r"\burgent\b", "priority": "urgent", "stop": True},
    {"name": "after-urgent", "subject": "site down", "tags": ["never-with-urgent"]},
    {"name": "crash", "body": r"kernel panic", "assign": BOB, "tags": ["crash"]},
]


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    addresses = ["support@example.com", "billing@example.com"]
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        tables={"rules": RULES, "mailbox": {"addresses": addresses}},
    )
    yield w
    w.close()


def ledger(world: DeskWorld) -> list[tuple[str, str]]:
    with world.db.transaction() as session:
        return [(r.outcome, r.reason) for r in session.scalars(select(Ledger).order_by(Ledger.id))]


def events(ticket: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in ticket["events"] if e["kind"] == kind]


def test_each_matcher_and_action_through_the_daemon(world: DeskWorld) -> None:
    world.deliver(customer_mail("You won!", "Claim it.", sender="win@lottery.test"))
    world.deliver(customer_mail("Invoice 7", "Wrong amount.", to="billing@example.com"))
    world.deliver(customer_mail("URGENT: site down", "Nothing loads."))
    world.deliver(customer_mail("Server", "It says kernel panic at boot."))
    world.run_once()

    # ignore: no ticket, nothing mailed to the sender, the ledger names the rule
    assert not world.mails_to("win@lottery.test")
    assert ("ignored", "rule lottery: ignore") in ledger(world)
    [billing, urgent, crash] = world.tickets()

    # to: another team, tagged, no acknowledgment; the other team is told
    assert (billing["team"], billing["tags"], billing["priority"]) == (
        "engineering",
        ["billing"],
        "medium",
    )
    assert [e["detail"]["name"] for e in events(billing, "rule")] == ["billing"]
    assert not any("Invoice 7" in str(m.message["Subject"]) for m in world.mails_to(CUSTOMER))
    assert any("Invoice 7" in str(m.message["Subject"]) for m in world.mails_to(BOB))

    # subject, priority and stop: the rule after it does not apply
    assert urgent["priority"] == "urgent"
    assert urgent["tags"] == []
    assert [e["detail"]["name"] for e in events(urgent, "rule")] == ["urgent"]

    # body and assign: the agent is told "assigned to you" with the text; the team is not
    assert crash["assignee"] == BOB and crash["tags"] == ["crash"]
    [assigned] = events(crash, "assigned")
    assert assigned["detail"]["how"] == "rule" and assigned["detail"]["rule"] == "crash"
    told = [m for m in world.mails_to(BOB) if "Server" in str(m.message["Subject"])]
    assert len(told) == 1 and "Assigned to you" in str(told[0].message["Subject"])
    assert "kernel panic at boot" in text_of(told[0]) and "rule crash" in text_of(told[0])
    for agent in (ALICE, CAROL_AGENT):
        assert not [m for m in world.mails_to(agent) if "Server" in str(m.message["Subject"])]


def test_a_catastrophic_pattern_does_not_stall_the_mailbox(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """``(a+)+$`` on a hostile body would backtrack for longer than the universe is old: the
    rule is given up within its time and counts as not matching; the mail still becomes a
    ticket, with the rule recorded as skipped, and the ordinary mail behind it is answered.
    Doubling the poison does not double the time."""
    evil = {"name": "evil", "body": "(a+)+$", "tags": ["evil"]}
    w = DeskWorld(imap_server, smtp_server, tmp_path, tables={"rules": [evil]})
    try:
        took = []
        for size in (4000, 8000):
            w.deliver(customer_mail(f"Poison {size}", "a" * size + "!"))
            w.deliver(customer_mail(f"Ordinary {size}", "My printer is broken."))
            started = time.monotonic()
            w.run_once()
            took.append(time.monotonic() - started)
        tickets = w.tickets()
        assert [t["subject"] for t in tickets] == [
            "Poison 4000",
            "Ordinary 4000",
            "Poison 8000",
            "Ordinary 8000",
        ]
        for poisoned in (tickets[0], tickets[2]):
            [skipped] = events(poisoned, "rule_skipped")
            assert skipped["detail"] == {"name": "evil", "reason": rules.SLOW}
            assert poisoned["tags"] == []
        acks = [str(m.message["Subject"]) for m in w.mails_to(CUSTOMER)]
        assert any("Ordinary 8000" in subject for subject in acks)
        assert took[1] < took[0] + 2.0, took
    finally:
        w.close()


# --------------------------------------------------------------------------- automatic assignment

ERIN = "erin@example.com"  # of the support team, on leave
FRANK = "frank@example.com"


def assigning_world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, root: Path, how: str, **tables: Any
) -> DeskWorld:
    """The harness's desk with two more support agents (Erin unavailable) and the support team
    assigning ``how``."""
    more = [
        {"email": ERIN, "name": "Erin", "teams": ["support"], "available": False},
        {"email": FRANK, "name": "Frank", "teams": ["support"]},
    ]
    w = DeskWorld(imap_server, smtp_server, root, tables={"agents": more, **tables})
    w.tables["teams"] = [{"name": "support", "assign": how}, {"name": "engineering"}]
    w.rewrite_config()
    w.desk.close()
    w.settings = w.load_settings()
    w.desk = desk_for(w.settings, clock=w.clock)
    return w


def agents_list(world: DeskWorld) -> dict[str, int]:
    done = world.cli("agents", "list", "--json")
    assert done.returncode == 0, done.stderr
    return {a["email"]: a["open_assigned"] for a in json.loads(done.stdout)}


def assigned_notices(world: DeskWorld, agent: str) -> list[str]:
    return [
        str(m.message["Subject"])
        for m in world.mails_to(agent)
        if "Assigned to you" in str(m.message["Subject"])
    ]


def test_round_robin_over_a_backlog_skips_the_unavailable_agent(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    w = assigning_world(imap_server, smtp_server, tmp_path, "round_robin")
    try:
        for number in range(1, 31):
            w.deliver(customer_mail(f"Backlog {number}", f"Question {number}."))
            if number == 10:
                w.run_once()  # the turns carry over a restart: they are read from the database
        w.run_once()
        tickets = w.tickets()
        assert len(tickets) == 30
        order = [ALICE, CAROL_AGENT, FRANK]
        assert [t["assignee"] for t in tickets] == [order[i % 3] for i in range(30)]
        first = events(tickets[0], "assigned")[0]["detail"]
        assert first == {"assignee": ALICE, "how": "round_robin", "team": "support"}
        assert agents_list(w) == {ALICE: 10, BOB: 0, CAROL_AGENT: 10, ERIN: 0, FRANK: 10}
        # each assignee is told "assigned to you", with the customer's words; nobody else is
        for agent in order:
            assert len(assigned_notices(w, agent)) == 10
        assert not w.mails_to(ERIN)
        told = next(m for m in w.mails_to(FRANK) if "Backlog 3" in str(m.message["Subject"]))
        assert "Question 3." in text_of(told) and "round-robin" in text_of(told)
        assert len(w.mails_to(ALICE)) == 10  # no team notice besides
    finally:
        w.close()


def test_least_open_fills_the_emptiest_agent_first(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    vip = {"name": "vip", "subject": "^VIP", "assign": ALICE}
    w = assigning_world(imap_server, smtp_server, tmp_path, "least_open", rules=[vip])
    try:
        for number in range(1, 5):  # a rule's agent wins over the team's assignment
            w.deliver(customer_mail(f"VIP {number}", "Call me."))
        for number in range(1, 27):
            w.deliver(customer_mail(f"Backlog {number}", f"Question {number}."))
        w.run_once()
        tickets = w.tickets()
        assert [t["assignee"] for t in tickets[:4]] == [ALICE] * 4
        # Carol and Frank have none: they take turns until they have as many as Alice
        assert {t["assignee"] for t in tickets[4:12]} == {CAROL_AGENT, FRANK}
        assert agents_list(w) == {ALICE: 10, BOB: 0, CAROL_AGENT: 10, ERIN: 0, FRANK: 10}
        assert events(tickets[5], "assigned")[0]["detail"]["how"] == "least_open"
        assert not w.mails_to(ERIN)
    finally:
        w.close()


def test_a_rule_naming_an_agent_on_leave_leaves_the_ticket_to_the_team(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    """Erin is ``available = false``: a rule that names her would leave the customer with
    someone on leave and the team untold; the team's own assignment decides instead."""
    vip = {"name": "vip", "subject": "^VIP", "assign": ERIN, "tags": ["vip"]}
    w = assigning_world(imap_server, smtp_server, tmp_path, "round_robin", rules=[vip])
    try:
        w.deliver(customer_mail("VIP 1", "Call me."))
        w.run_once()
        [ticket] = w.tickets()
        assert ticket["tags"] == ["vip"]  # the rule's other actions apply
        assert ticket["assignee"] == ALICE
        assert events(ticket, "assigned")[0]["detail"]["how"] == "round_robin"
        assert assigned_notices(w, ALICE) == ["[#1] Assigned to you: VIP 1"]
        assert not w.mails_to(ERIN)
    finally:
        w.close()


# --------------------------------------------------------------------------- claim on reply


def notice_of(world: DeskWorld, agent: str, subject: str) -> Captured:
    return next(m for m in world.mails_to(agent) if subject in str(m.message["Subject"]))


def test_claim_on_reply_a_public_answer_takes_an_unassigned_ticket(world: DeskWorld) -> None:
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.deliver(customer_mail("Scanner broken", "It scans nothing."))
    world.run_once()
    printer = notice_of(world, ALICE, "Printer")
    carols_printer, carols_scanner = (notice_of(world, CAROL_AGENT, s) for s in ("Print", "Scan"))
    # a note does not claim
    world.deliver(agent_reply(printer, ALICE, "#note\nChecking the toner."))
    world.run_once()
    assert world.ticket(1)["assignee"] is None
    # a public answer does, and the receipt says so
    before = len(world.mails_to(ALICE))
    world.deliver(agent_reply(printer, ALICE, "Hi Dana, is it plugged in?"))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["assignee"] == ALICE and ticket["status"] == "pending"
    [claim] = events(ticket, "assigned")
    assert claim["detail"] == {"assignee": ALICE, "how": "reply"}
    [receipt] = world.mails_to(ALICE)[before:]
    assert "you answered it while nobody had it" in text_of(receipt)
    # a second agent's answer on a ticket someone has does not take it
    world.deliver(agent_reply(carols_printer, CAROL_AGENT, "Also try another outlet."))
    world.run_once()
    assert world.ticket(1)["assignee"] == ALICE
    # an #assign in the same mail wins over the claim
    world.deliver(agent_reply(carols_scanner, CAROL_AGENT, f"#assign {ALICE}\nWe are on it."))
    world.run_once()
    assert world.ticket(2)["assignee"] == ALICE
    assert [e["detail"].get("how") for e in events(world.ticket(2), "assigned")] == [None]


def test_claim_on_reply_can_be_switched_off(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    w = DeskWorld(
        imap_server, smtp_server, tmp_path, tables={"lifecycle": {"claim_on_reply": False}}
    )
    try:
        w.deliver(customer_mail("Printer broken", "It prints blank pages."))
        w.run_once()
        [notice] = w.mails_to(ALICE)
        w.deliver(agent_reply(notice, ALICE, "Hi Dana, is it plugged in?"))
        w.run_once()
        assert w.ticket(1)["assignee"] is None
        assert len(w.mails_to(ALICE)) == 1  # no receipt for a plain answer
    finally:
        w.close()


def test_claimed_puts_the_assignment_before_the_reply_and_into_the_receipt() -> None:

    state = TicketState(id=1, status=Status.OPEN, requester=CUSTOMER, team="support")
    answer = Plan((Reply(ALICE, "Alice", (), "Hi", pend=True),))
    claimed = assignment.claimed(answer, state, ALICE)
    assert claimed.steps == (
        SetAssignee(ALICE),
        Record("assigned", ALICE, {"assignee": ALICE, "how": "reply"}),
        *answer.steps,
    )
    assert claimed.applied == (assignment.CLAIMED,)
    # a note, a ticket someone has, or one this mail assigns: nothing more
    note = Plan((Keep(ALICE, "hm", internal=True),))
    assert assignment.claimed(note, state, ALICE) == note
    assert assignment.claimed(answer, state.but(assignee=BOB), ALICE) == answer
    given = Plan((SetAssignee(BOB), *answer.steps))
    assert assignment.claimed(given, state, ALICE) == given


def test_round_robin_and_least_open_choose_among_available_agents() -> None:

    agents = (
        AgentSettings(ALICE, "Alice", ("support",)),
        AgentSettings(ERIN, "Erin", ("support",), available=False),
        AgentSettings(FRANK, "Frank", ("support",)),
    )
    assert assignment.turn(agents, None) == ALICE
    assert assignment.turn(agents, ALICE) == FRANK  # Erin is skipped
    assert assignment.turn(agents, FRANK) == ALICE
    assert assignment.turn(agents, ERIN) == FRANK  # her turn was before she left
    assert assignment.turn(agents, "gone@example.com") == ALICE
    assert assignment.least_open(agents, {ALICE: 3, FRANK: 1}) == FRANK
    assert assignment.least_open(agents, {ALICE: 1, FRANK: 1}) == ALICE
    assert assignment.automatic(AssignBy.NONE, agents, None, {}) is None
    nobody = tuple(a for a in agents if not a.available)
    assert assignment.automatic(AssignBy.ROUND_ROBIN, nobody, None, {}) is None
