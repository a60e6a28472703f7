"""The desk's decisions as values: a message and a ticket's state in, a plan out.

No server and no database: routing, the agents' verbs and the customers' cases are pure, so
each rule is checked here on what a user would see of its plan (the ticket's status and
assignee afterwards, who is mailed which mail). The end-to-end tests check the same rules
through real mail servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maildesk.config import (
    AgentSettings,
    DeskSettings,
    LimitsSettings,
    Settings,
    SmtpSettings,
    TeamSettings,
)
from maildesk.desk import (
    auth,
    commands,
    customers,
    files,
    people,
    routing,
    sla,
    starts,
    timers,
    verbs,
)
from maildesk.desk.assignment import Assigned
from maildesk.desk.customers import Case, Written
from maildesk.desk.plans import (
    AddParticipants,
    Keep,
    MarkBreached,
    MarkReminded,
    Notify,
    Plan,
    Rate,
    Record,
    Reply,
    SetRequester,
    TicketState,
    Whom,
    mailed,
    preview,
)
from maildesk.desk.routing import Identity, Ignored, Role, TicketView
from maildesk.mail import marks
from maildesk.mail.inbound import Inbound, parse
from maildesk.models import Status

MAIL = Path(__file__).parent / "mail"
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
DESK = "support@example.com"
CUSTOMER = "dana@customer.test"
ALICE = AgentSettings("alice@example.com", "Alice", ("support",))
BOB = AgentSettings("bob@example.com", "Bob", ("support",))
CAROL = AgentSettings("carol@example.com", "Carol", ("billing",))
DIRECTORY = commands.Directory(
    agents=tuple((a.email, a.name, a.teams) for a in (ALICE, BOB, CAROL)),
    teams=("support", "billing"),
    canned=("thanks",),
)
IDENTITY = Identity(
    address=DESK,
    secret=b"s" * 32,
    loop_id="desk-1",
    ref_pattern=r"\[\#(?P<number>\d{1,12})\]",
    agents=frozenset(a.email for a in (ALICE, BOB, CAROL)),
)
OPEN = TicketState(
    id=1042,
    status=Status.OPEN,
    requester=CUSTOMER,
    team="support",
    assignee=None,
    tags=("printer",),
    status_since=NOW - timedelta(days=1),
)


def agent_says(
    text: str, state: TicketState = OPEN, agent: AgentSettings = ALICE, subject: str = ""
) -> Plan:
    """The plan of an agent's (verified) mail: commands on its first lines, then its text."""
    parsed = commands.parse(subject, text, IDENTITY.ref_pattern, DIRECTORY.teams)
    validation = commands.validate(parsed, DIRECTORY, agent.email)
    assert validation.ok, validation.refusals
    return verbs.plan_actions(state, validation.actions, agent, parsed.text, DIRECTORY)


# --------------------------------------------------------------------------- verbs


def test_a_plain_answer_is_mailed_to_the_customer_and_the_ticket_waits_for_them() -> None:
    plan = agent_says("The part is ordered.")
    assert preview(OPEN, plan).status is Status.PENDING
    assert mailed(plan) == ((Whom.REQUESTER, "reply"),)
    assert plan.applied == ()


def test_assign_tells_the_new_assignee_but_not_an_agent_who_takes_it_themselves() -> None:
    plan = agent_says("#assign bob")
    assert preview(OPEN, plan).assignee == BOB.email
    assert mailed(plan) == ((BOB.email, "notice"),)
    assert plan.applied == ("assigned to Bob <bob@example.com>",)
    mine = agent_says("#assign alice")
    assert preview(OPEN, mine).assignee == ALICE.email
    assert mailed(mine) == ()


def test_assign_to_the_assignee_already_changes_nothing() -> None:
    plan = agent_says("#assign bob", state=OPEN.but(assignee=BOB.email))
    assert mailed(plan) == ()
    assert preview(OPEN.but(assignee=BOB.email), plan) == OPEN.but(assignee=BOB.email)


def test_priority_tag_and_untag_change_the_ticket_and_mail_nobody() -> None:
    plan = agent_says("#priority urgent\n#tag hardware\n#untag printer")
    after = preview(OPEN, plan)
    assert (after.priority, after.tags, after.status) == ("urgent", ("hardware",), Status.OPEN)
    assert mailed(plan) == ()
    assert plan.applied == ("priority set to urgent", "tagged hardware", "untagged printer")


def test_note_is_kept_internal_and_the_customer_gets_nothing() -> None:
    plan = agent_says("#note\nCalled them, the printer is in the cellar.")
    assert Keep(ALICE.email, "Called them, the printer is in the cellar.", internal=True) in (
        plan.steps
    )
    assert mailed(plan) == ()
    assert preview(OPEN, plan).status is Status.OPEN


def test_close_mails_the_closing_mail_with_the_resolution() -> None:
    plan = agent_says("#close\nReplaced the fuser.")
    assert preview(OPEN, plan).status is Status.CLOSED
    assert mailed(plan) == ((Whom.REQUESTER, "closed"),)


def test_close_of_a_closed_ticket_mails_nobody() -> None:
    closed = OPEN.but(status=Status.CLOSED, closed_at=NOW)
    plan = agent_says("#close", state=closed)
    assert mailed(plan) == ()


def test_note_and_close_keep_the_note_and_send_only_the_closing_mail() -> None:
    plan = agent_says("#note #close\nInternal: warranty case.")
    assert Keep(ALICE.email, "Internal: warranty case.", internal=True) in plan.steps
    assert preview(OPEN, plan).status is Status.CLOSED
    assert mailed(plan) == ((Whom.REQUESTER, "closed"),)


def test_escalate_hands_the_ticket_to_the_team_and_tells_team_and_customer() -> None:
    assigned = OPEN.but(assignee=ALICE.email)
    plan = agent_says("#escalate billing\nThey were charged twice.", state=assigned)
    after = preview(assigned, plan)
    assert (after.team, after.status, after.assignee) == ("billing", Status.ESCALATED, None)
    assert mailed(plan) == ((Whom.TEAM, "notice"), (Whom.REQUESTER, "escalated"))
    # the summary is the team's; kept as an internal note, never mailed to the customer
    assert Keep(ALICE.email, "They were charged twice.", internal=True) in plan.steps


def test_escalate_within_the_assignees_team_keeps_the_assignee() -> None:
    assigned = OPEN.but(assignee=ALICE.email)
    plan = agent_says("#escalate support", state=assigned)
    assert preview(assigned, plan).assignee == ALICE.email


def test_reopen_opens_a_closed_ticket_and_a_reply_then_waits_for_the_customer() -> None:
    closed = OPEN.but(status=Status.CLOSED, closed_at=NOW)
    assert preview(closed, agent_says("#reopen", state=closed)).status is Status.OPEN
    plan = agent_says("#reopen\nOne more question.", state=closed)
    assert preview(closed, plan).status is Status.PENDING
    assert mailed(plan) == ((Whom.REQUESTER, "reply"),)


def test_a_canned_reply_is_mailed_to_the_customer() -> None:
    plan = agent_says("#reply thanks")
    assert mailed(plan) == ((Whom.REQUESTER, "reply"),)
    assert plan.applied == ("canned reply thanks sent to the customer",)
    assert preview(OPEN, plan).status is Status.PENDING


def test_refused_commands_become_a_note_and_nothing_changes() -> None:
    parsed = commands.parse("", "#assign nobody\nHello", IDENTITY.ref_pattern, DIRECTORY.teams)
    validation = commands.validate(parsed, DIRECTORY, ALICE.email)
    assert not validation.ok
    plan = verbs.refused(ALICE.email, parsed.text, validation.refusals)
    assert preview(OPEN, plan) == OPEN
    assert mailed(plan) == ()
    assert Keep(ALICE.email, "Hello", internal=True) in plan.steps


def test_every_verb_has_a_planner() -> None:
    assert set(verbs.VERBS) == set(commands.VERBS)


# --------------------------------------------------------------------------- unverified agents


def test_agent_mail_without_proof_is_refused_and_only_kept_as_an_unverified_note() -> None:
    trust = auth.Trust(IDENTITY.secret, DESK, ("mx.example.com",), "token")
    proof = auth.authenticate(trust, auth.Claim(ALICE.email, 1042, (DESK,), ()), NOW)
    assert not proof.ok and "no reply token of yours" in proof.reason
    plan = verbs.unverified(ALICE.email, "#close\nDone.")
    assert plan.steps == (Keep(ALICE.email, "#close\nDone.", internal=True, unverified=True),)
    assert preview(OPEN, plan) == OPEN
    assert mailed(plan) == ()


def test_agent_mail_with_its_reply_token_is_proven() -> None:
    trust = auth.Trust(IDENTITY.secret, DESK, (), "token")
    token = marks.make_token(IDENTITY.secret, ALICE.email, 1042, NOW + timedelta(days=1))
    to = (marks.reply_address(DESK, token),)
    assert auth.authenticate(trust, auth.Claim(ALICE.email, 1042, to, ()), NOW).ok
    assert not auth.authenticate(trust, auth.Claim(ALICE.email, 7, to, ()), NOW).ok


# --------------------------------------------------------------------------- mail without a ref

PERSONAL = marks.personal_address(IDENTITY.secret, DESK, ALICE.email, 1)


def test_a_personal_address_proves_its_agent_and_no_other_with_or_without_a_ticket() -> None:
    trust = auth.Trust(IDENTITY.secret, DESK, (), "required")
    upper = PERSONAL.upper()  # an MTA that folds local parts changes nothing
    for ticket in (None, 1042):
        proof = auth.authenticate(trust, auth.Claim(ALICE.email, ticket, (upper,), ()), NOW)
        assert (proof.ok, proof.method) == (True, "address")
        bob = auth.authenticate(trust, auth.Claim(BOB.email, ticket, (PERSONAL,), ()), NOW)
        assert not bob.ok and "not yours, or no longer valid" in bob.reason
    revoked = auth.Claim(ALICE.email, None, (PERSONAL,), (), address_version=2)
    assert not auth.authenticate(trust, revoked, NOW).ok
    # a reply token needs its ticket: on no ticket it proves nothing
    token = marks.make_token(IDENTITY.secret, ALICE.email, 1042, NOW + timedelta(days=1))
    tokened = auth.Claim(ALICE.email, None, (marks.reply_address(DESK, token),), ())
    assert not auth.authenticate(trust, tokened, NOW).ok


def test_an_agents_mail_on_no_ticket_is_never_a_customers_new_ticket() -> None:
    assert routed(mail(ALICE.email, "Invoice")) == routing.FromAgent(ALICE.email)
    two = f"{ALICE.email}, mallory@evil.test"  # claims Alice: to be proven, and refused
    assert routed(mail(two, "Invoice")) == routing.FromAgent(ALICE.email)
    assert routed(mail(CUSTOMER, "Invoice")) == routing.NewTicket()


def started(body: str) -> starts.Start:
    parsed = commands.parse("Invoice", body, IDENTITY.ref_pattern, DIRECTORY.teams)
    return starts.decide(parsed, DIRECTORY, ALICE.email, DESK)


def test_new_starts_a_pending_conversation_assigned_to_its_agent() -> None:
    start = started("#new <Dana@Customer.test>\n#tag billing\n\nHello Dana.")
    assert isinstance(start, starts.Conversation)
    assert (start.address, start.text) == (CUSTOMER, "Hello Dana.")
    plan = starts.conversation(start, ALICE, "support", "support", DIRECTORY)
    fresh = TicketState(id=None, status=Status.OPEN, requester=CUSTOMER, team="support")
    after = preview(fresh, plan)
    assert (after.status, after.assignee, after.tags) == (Status.PENDING, ALICE.email, ("billing",))
    assert mailed(plan) == ((Whom.REQUESTER, "reply"),)
    [reply] = [step for step in plan.steps if isinstance(step, Reply)]
    assert (reply.template, reply.text) == ("started", "Hello Dana.")
    assert (
        plan.applied[0] == f"started a conversation with {CUSTOMER}: your text was mailed to them"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("#new\n\nHi.", "name the customer's address"),
        ("#new support+a-xyz@example.com\n\nHi.", "the desk's own address"),
        ("#new carol@example.com\n\nHi.", "is an agent of this desk"),
        ("#new dana@customer.test\n#note\n\nHi.", "#note: cannot come with #new"),
        ("#new dana@customer.test", "nothing to send"),
    ],
)
def test_a_malformed_new_starts_nothing(body: str, reason: str) -> None:
    start = started(body)
    assert isinstance(start, starts.Refused)
    assert any(reason in line for line in start.reasons), start.reasons


def forwarded_by_alice(note: str, sender: str | None = CUSTOMER) -> starts.Forward | starts.Refused:
    parsed = starts.note_commands(note, IDENTITY.ref_pattern, DIRECTORY.teams)
    return starts.forward(parsed, sender, DIRECTORY, ALICE.email, DESK)


def test_a_forward_opens_a_ticket_whose_agents_words_are_only_a_note() -> None:
    start = forwarded_by_alice("#tag vpn\nPlease take this.\n\n#assign me\n")
    assert isinstance(start, starts.Forward)
    assert (start.sender, start.note) == (CUSTOMER, "Please take this.")
    plan = starts.forwarded(OPEN.but(tags=()), start, ALICE, DIRECTORY)
    after = preview(OPEN.but(tags=()), plan)
    assert (after.assignee, after.tags, after.status) == (ALICE.email, ("vpn",), Status.OPEN)
    assert Keep(ALICE.email, "Please take this.", internal=True) in plan.steps
    assert all(to != Whom.REQUESTER for to, _ in mailed(plan))  # nothing to the customer
    assert plan.applied[0] == f"opened a ticket for {CUSTOMER} from the mail you forwarded"


@pytest.mark.parametrize(
    ("note", "sender", "reason"),
    [
        ("Please take this.", None, "shows its sender without an address"),
        ("Please take this.", CAROL.email, "is an agent of this desk"),
        ("Please take this.", DESK, "the desk's own address"),
        ("#close\nPlease take this.", CUSTOMER, "#close: cannot come with a forward"),
        ("#priority hgih\nPlease.", CUSTOMER, "priority must be one of"),
    ],
)
def test_a_forward_that_cannot_be_a_customers_ticket_starts_nothing(
    note: str, sender: str | None, reason: str
) -> None:
    start = forwarded_by_alice(note, sender)
    assert isinstance(start, starts.Refused)
    assert any(reason in line for line in start.reasons), start.reasons


FORWARDED_MAIL = Written(CUSTOMER, "Printer broken.")
ROUND_ROBIN = Assigned(BOB.email, "round_robin", "the team's round-robin assignment")


def forward_notice(note: str, assigned: Assigned | None = None) -> tuple[Notify, ...]:
    """The notices of the ticket Alice's forward with ``note`` above it opens."""
    start = forwarded_by_alice(note)
    assert isinstance(start, starts.Forward)
    forward = starts.forwarding(start, ALICE)
    intake = customers.Intake(assigned=assigned)
    return customers.opened(FORWARDED_MAIL, "support", None, None, intake, forward=forward).mails()


def test_a_forwards_notice_names_its_agent_and_note_and_leaves_them_out() -> None:
    [notice] = forward_notice("#tag vpn\nCarol is on floor 2.")
    assert (notice.to, notice.template, notice.but) == (Whom.TEAM, "agent_new", ALICE.email)
    shown = {"name": "Alice", "email": ALICE.email, "note": "Carol is on floor 2."}
    assert notice.context["forwarded"] == shown
    assert notice.context["text"] == "Printer broken."


def test_a_forward_assigned_by_its_agent_tells_the_assignee_alone_once() -> None:
    # her #assign wins over the team's turn, which the act layer does not take then
    [notice] = forward_notice("Please take this.\n#assign bob", ROUND_ROBIN)
    assert (notice.to, notice.template) == (BOB.email, "agent_assigned")
    assert (notice.context["by"], notice.context["text"]) == ("Alice", "Printer broken.")
    assert notice.context["forwarded"]["note"] == "Please take this."
    start = forwarded_by_alice("Please take this.\n#assign bob")
    assert isinstance(start, starts.Forward)
    plan = starts.forwarded(OPEN.but(tags=()), start, ALICE, DIRECTORY)
    assert preview(OPEN, plan).assignee == BOB.email
    assert mailed(plan) == ()  # the opening notice told Bob; not a second time


def test_a_forward_its_agent_takes_tells_nobody() -> None:
    assert forward_notice("Mine.\n#assign me", ROUND_ROBIN) == ()


def test_a_forward_without_assign_keeps_the_teams_assignment() -> None:
    [notice] = forward_notice("Please take this.", ROUND_ROBIN)
    assert (notice.to, notice.template) == (BOB.email, "agent_assigned")
    assert notice.context["by"] == "the team's round-robin assignment"


def test_an_agents_mail_without_new_starts_nothing() -> None:
    assert started("#assign me\nLunch at noon?") == starts.Unstarted()


# --------------------------------------------------------------------------- customers


def test_a_customer_reply_on_a_pending_ticket_opens_it_and_tells_its_owner() -> None:
    pending = OPEN.but(status=Status.PENDING)
    followed = customers.follow_up(pending, Written(CUSTOMER, "Still broken."), DAYS_30, NOW)
    assert followed.case is Case.REPLY
    assert preview(pending, followed.plan).status is Status.OPEN
    assert mailed(followed.plan) == ((Whom.OWNER, "notice"),)


def test_a_customer_reply_on_an_open_ticket_only_tells_its_owner() -> None:
    followed = customers.follow_up(OPEN, Written(CUSTOMER, "And another thing."), DAYS_30, NOW)
    assert followed.case is Case.REPLY
    assert preview(OPEN, followed.plan) == OPEN
    assert mailed(followed.plan) == ((Whom.OWNER, "notice"),)


DAYS_30 = timedelta(days=30)
CLOSED = OPEN.but(status=Status.CLOSED, closed_at=NOW - timedelta(days=2))


@pytest.mark.parametrize(
    ("text", "rating", "comment"),
    [("4/5 quick and kind", 4, "quick and kind"), ("Rating: 5", 5, None), ("2", 2, None)],
)
def test_the_requester_rates_a_closed_ticket(text: str, rating: int, comment: str | None) -> None:
    followed = customers.follow_up(CLOSED, Written(CUSTOMER, text), DAYS_30, NOW)
    assert followed.case is Case.RATING
    assert Rate(rating, comment) in followed.plan.steps
    assert preview(CLOSED, followed.plan).status is Status.CLOSED
    assert mailed(followed.plan) == ()


def test_a_rating_from_anyone_but_the_requester_reopens_instead() -> None:
    followed = customers.follow_up(CLOSED, Written("someone@else.test", "5/5"), DAYS_30, NOW)
    assert followed.case is Case.REOPEN


def test_a_reply_within_the_reopen_window_reopens_the_ticket_and_tells_its_owner() -> None:
    followed = customers.follow_up(CLOSED, Written(CUSTOMER, "It jams again."), DAYS_30, NOW)
    assert followed.case is Case.REOPEN
    assert preview(CLOSED, followed.plan).status is Status.OPEN
    assert mailed(followed.plan) == ((Whom.OWNER, "notice"),)


def test_a_reply_after_the_reopen_window_starts_a_new_linked_ticket() -> None:
    long_ago = CLOSED.but(closed_at=NOW - timedelta(days=31))
    followed = customers.follow_up(long_ago, Written(CUSTOMER, "It jams again."), DAYS_30, NOW)
    assert followed.case is Case.NEW_LINKED
    assert followed.plan == Plan()  # the old ticket stays as it is


# --------------------------------------------------------------------------- routing


class Tickets:
    """``routing.Threads`` over one ticket (the protocol a session implements in the daemon)."""

    def __init__(self, ticket: TicketView, message_ids: Sequence[str] = ()) -> None:
        self.ticket = ticket
        self.message_ids = set(message_ids)

    def by_message_ids(self, message_ids: Sequence[str]) -> TicketView | None:
        return self.ticket if self.message_ids & set(message_ids) else None

    def by_number(self, number: int) -> TicketView | None:
        return self.ticket if number == self.ticket.id else None


TICKET = TicketView(1042, CUSTOMER, frozenset({"cc@customer.test"}), "open")
NO_TICKETS = Tickets(TicketView(1, "x@x.test", frozenset(), "open"))


def mail(sender: str, subject: str, *headers: str, body: str = "Hello") -> Inbound:
    lines = [
        f"From: {sender}",
        f"To: {DESK}",
        f"Subject: {subject}",
        "Message-ID: <m1@customer.test>",
        *headers,
        "",
        body,
    ]
    return parse("\r\n".join(lines).encode())


def routed(inbound: Inbound, threads: routing.Threads = NO_TICKETS) -> routing.Route:
    return routing.route(inbound, routing.classify(inbound, IDENTITY), threads, IDENTITY)


def test_a_first_mail_opens_a_ticket() -> None:
    assert routed(mail(CUSTOMER, "Printer broken")) == routing.NewTicket()


def test_auto_replies_bulk_and_our_own_mail_are_ignored_with_their_kind() -> None:
    vacation = parse((MAIL / "autoreply-auto-submitted.eml").read_bytes())
    cases = [
        (vacation, Ignored.AUTO_REPLY),
        (parse((MAIL / "mailing-list.eml").read_bytes()), Ignored.BULK),
        (mail(CUSTOMER, "Hi", "X-Maildesk-Loop: desk-1"), Ignored.OWN_MAIL),
        (mail(DESK, "Hi"), Ignored.OWN_MAIL),
        (mail(CUSTOMER, "Hi", "Auto-Submitted: auto-generated"), Ignored.AUTO_REPLY),
    ]
    for inbound, why in cases:
        route = routed(inbound)
        assert isinstance(route, routing.Ignore), route
        assert route.why is why


def test_an_auto_reply_on_a_ticket_is_kept_as_automatic_and_answers_nobody() -> None:
    vacation = parse((MAIL / "autoreply-auto-submitted.eml").read_bytes())
    route = routed(vacation, Tickets(TICKET, ["ticket-1058.ack.5d6e@example.com"]))
    assert isinstance(route, routing.FollowUp)
    assert route.automatic is not None and "Auto-Submitted" in route.automatic


def test_a_delivery_report_is_a_bounce_not_a_ticket() -> None:
    route = routed(parse((MAIL / "bounce-dsn-postfix.eml").read_bytes()))
    assert isinstance(route, routing.Bounce)
    assert route.message_id is None  # not at a VERP address of ours: proves nothing


def test_a_bounce_at_our_verp_address_names_our_mail() -> None:
    ours = marks.own_message_id(IDENTITY.secret, "example.com")
    verp = marks.bounce_address(IDENTITY.secret, DESK, ours)
    raw = f"Delivered-To: {verp}\r\n".encode() + (MAIL / "bounce-dsn-postfix.eml").read_bytes()
    route = routed(parse(raw))
    assert isinstance(route, routing.Bounce)
    assert route.message_id == ours


def test_routing_decides_the_senders_role_once() -> None:
    threads = Tickets(TICKET, ["ours@example.com"])
    reply = "In-Reply-To: <ours@example.com>"
    for sender, role in [
        (CUSTOMER, Role.REQUESTER),
        ("cc@customer.test", Role.PARTICIPANT),
        (ALICE.email, Role.AGENT),
        ("stranger@else.test", Role.OTHER),
    ]:
        route = routed(mail(sender, "Re: Printer", reply), threads)
        assert isinstance(route, routing.FollowUp)
        assert (route.role, route.sender) == (role, sender)


def test_a_ref_in_the_subject_threads_only_for_people_of_the_ticket() -> None:
    threads = Tickets(TICKET)
    assert isinstance(routed(mail(CUSTOMER, "Re: [#1042] Printer"), threads), routing.FollowUp)
    stranger = routed(mail("stranger@else.test", "Re: [#1042] Printer"), threads)
    assert stranger == routing.NewTicket()


def test_an_ambiguous_from_claiming_an_agent_is_routed_as_the_agent_to_be_refused() -> None:
    threads = Tickets(TICKET, ["ours@example.com"])
    two = f"{ALICE.email}, mallory@evil.test"
    route = routed(mail(two, "Re: Printer", "In-Reply-To: <ours@example.com>"), threads)
    assert isinstance(route, routing.FollowUp)
    assert (route.role, route.sender) == (Role.AGENT, ALICE.email)


# --------------------------------------------------------------------------- timers

SETTINGS = Settings(
    path=Path("maildesk.toml"),
    desk=DeskSettings("Example Support", DESK, Path("data"), IDENTITY.secret),
    database_url="sqlite://",
    mailboxes=(),
    smtp=SmtpSettings("smtp.example.com"),
    teams=(TeamSettings("support"), TeamSettings("billing")),
    agents=(ALICE, BOB, CAROL),
)
PENDING = OPEN.but(status=Status.PENDING, status_since=NOW - timedelta(days=3))


def test_a_reminder_goes_to_the_customer_and_says_when_the_ticket_closes() -> None:
    plan = timers.plan(timers.Remind(timedelta(days=3)), PENDING, SETTINGS, DIRECTORY)
    assert MarkReminded() in plan.steps
    assert mailed(plan) == ((Whom.REQUESTER, "reminder"),)
    [reminder] = plan.mails()
    assert reminder.context["waited"] == "3 days"
    assert reminder.context["closes_after"] == "7 days"
    assert preview(PENDING, plan).status is Status.PENDING


def test_auto_close_closes_and_tells_the_customer() -> None:
    plan = timers.plan(timers.AutoClose(timedelta(days=7)), PENDING, SETTINGS, DIRECTORY)
    assert preview(PENDING, plan).status is Status.CLOSED
    assert mailed(plan) == ((Whom.REQUESTER, "auto_closed"),)


def test_a_bounced_requester_holds_the_timers_and_nobody_is_mailed() -> None:
    plan = timers.plan(timers.Hold(NOW - timedelta(days=1)), PENDING, SETTINGS, DIRECTORY)
    assert MarkReminded() in plan.steps
    assert mailed(plan) == ()
    assert preview(PENDING, plan) == PENDING


def test_a_missed_target_tells_the_owner_and_escalates_where_the_priority_says() -> None:
    target = sla.Target("first_response", NOW - timedelta(hours=1), None)
    told = timers.plan(timers.Breach(target, None), OPEN, SETTINGS, DIRECTORY)
    assert MarkBreached(("first_response",)) in told.steps
    assert mailed(told) == ((Whom.OWNER, "notice"),)
    escalated = timers.plan(timers.Breach(target, "billing"), OPEN, SETTINGS, DIRECTORY)
    after = preview(OPEN, escalated)
    assert (after.team, after.status) == ("billing", Status.ESCALATED)
    assert mailed(escalated) == (
        (Whom.OWNER, "notice"),
        (Whom.TEAM, "notice"),
        (Whom.REQUESTER, "escalated"),
    )


def test_a_new_ticket_keeps_the_mail_and_tells_the_team() -> None:
    plan = customers.opened(Written(CUSTOMER, "Printer broken."), "support", None)
    assert Keep(CUSTOMER, "Printer broken.") in plan.steps
    assert mailed(plan) == ((Whom.TEAM, "notice"),)


def test_a_new_ticket_without_an_address_says_nobody_outside_is_mailed() -> None:
    plan = customers.opened(Written("", "Printer broken."), "support", "[#1042]")
    [created] = [s for s in plan.steps if isinstance(s, Record)]
    assert created.detail["linked_to"] == "[#1042]"
    assert "nobody outside is mailed" in created.detail["warning"]


# --------------------------------------------------------------------------- who is on a ticket

DAVE = "dave@customer.test"
ERIN = "erin@customer.test"
WITH_DAVE = OPEN.but(participants=(DAVE,))
DESK_DIRECTORY = commands.Directory(
    agents=DIRECTORY.agents, teams=DIRECTORY.teams, canned=DIRECTORY.canned, own=(DESK,)
)
OUTSIDERS = people.Outsiders((DESK,), IDENTITY.agents)


def people_say(text: str, state: TicketState = WITH_DAVE) -> commands.Validation | Plan:
    """The plan of an agent's mail of ``#cc``, ``#uncc``, ``#requester``, or its refusals."""
    parsed = commands.parse("", text, IDENTITY.ref_pattern, DIRECTORY.teams)
    on = commands.OnTicket(state.requester, state.participants)
    validation = commands.validate(parsed, DESK_DIRECTORY, ALICE.email, on)
    if not validation.ok:
        return validation
    return verbs.plan_actions(state, validation.actions, ALICE, parsed.text, DESK_DIRECTORY)


def test_cc_adds_people_to_the_ticket_and_mails_nobody() -> None:
    plan = people_say(f"#cc {ERIN} <{DAVE}> {CUSTOMER}")
    assert isinstance(plan, Plan)
    after = preview(WITH_DAVE, plan)
    assert (after.requester, after.participants) == (CUSTOMER, (DAVE, ERIN))
    assert AddParticipants((ERIN,), ALICE.email) in plan.steps
    assert Record("cc_added", ALICE.email, {"added": [ERIN]}) in plan.steps
    assert mailed(plan) == ()
    assert plan.applied == (f"added to Cc: {ERIN}, {DAVE}, {CUSTOMER}",)


def test_an_address_may_come_as_a_mail_client_writes_it_with_its_name() -> None:
    """An agent pastes addresses from her mail client: the name before ``<...>`` is dropped."""
    plan = people_say(f'#cc Erin Example <{ERIN}>, "Miller, Dave" <{DAVE}>')
    assert isinstance(plan, Plan)
    assert plan.applied == (f"added to Cc: {ERIN}, {DAVE}",)
    swapped = people_say(f"#requester Erin <{ERIN}>")
    assert isinstance(swapped, Plan)
    assert preview(WITH_DAVE, swapped).requester == ERIN


def test_uncc_takes_people_off_the_ticket() -> None:
    plan = people_say(f"#uncc {DAVE}")
    assert isinstance(plan, Plan)
    assert preview(WITH_DAVE, plan).participants == ()
    assert Record("cc_removed", ALICE.email, {"removed": [DAVE]}) in plan.steps


def test_requester_swaps_and_the_requester_before_stays_on_cc_and_gets_the_answer_in_cc() -> None:
    plan = people_say(f"#requester {ERIN}\nHi Erin, it is fixed.")
    assert isinstance(plan, Plan)
    after = preview(WITH_DAVE, plan)
    assert (after.requester, after.participants) == (ERIN, (DAVE, CUSTOMER))
    assert Record("requester_changed", ALICE.email, {"old": CUSTOMER, "new": ERIN}) in plan.steps
    # the answer is planned after the change: it goes to the requester as the ticket then is
    assert mailed(plan) == ((Whom.REQUESTER, "reply"),)
    assert plan.steps.index(SetRequester(ERIN, ALICE.email)) < [
        isinstance(s, Reply) for s in plan.steps
    ].index(True)
    # a participant made requester leaves the Cc
    promoted = people_say(f"#requester {DAVE}")
    assert isinstance(promoted, Plan)
    assert preview(WITH_DAVE, promoted).participants == (CUSTOMER,)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("#cc", "#cc: name at least one address"),
        ("#cc Dave", "#cc Dave: 'Dave' is not a mail address"),
        ("#cc dave@", "#cc dave@: 'dave@' is not a mail address"),
        (f"#cc {DESK}", f"#cc {DESK}: {DESK} is the desk's own address"),
        ("#cc support+x1@example.com", "support+x1@example.com is the desk's own address"),
        (f"#cc {ALICE.email}", f"{ALICE.email} is an agent of this desk"),
        (f"#requester {BOB.email}", f"{BOB.email} is an agent of this desk, not a customer"),
        (f"#requester {DAVE}, {ERIN}", "a ticket has one requester (#cc the others)"),
        ("#cc Dave dave@customer.test", "'Dave' is not a mail address"),
        (f"#requester {DESK}", "is the desk's own address"),
        (f"#uncc {ERIN}", f"#uncc {ERIN}: {ERIN} is not on this ticket's Cc"),
        (f"#uncc {CUSTOMER}", f"{CUSTOMER} is the requester; name another with #requester first"),
        (f"#uncc {DAVE}\n#cc {ERIN} {DAVE}", f"conflicts with #uncc {DAVE}"),
        (f"#requester {ERIN}\n#requester {DAVE}", f"conflicts with #requester {ERIN}"),
        (f"#requester {ERIN} thanks", "write your text on a line below the commands"),
    ],
)
def test_malformed_people_commands_are_refused_with_the_reason(text: str, reason: str) -> None:
    refused = people_say(text)
    assert isinstance(refused, commands.Validation) and not refused.ok
    assert reason in " ".join(refused.refusals), refused.refusals
    if text.startswith(f"#requester {DAVE},"):  # two addresses are no text on its line
        assert "write your text" not in " ".join(refused.refusals)


def test_cc_beyond_the_most_a_ticket_keeps_is_refused() -> None:
    crowd = tuple(f"p{i}@customer.test" for i in range(people.MAX_PARTICIPANTS))
    refused = people_say(f"#cc {ERIN}", OPEN.but(participants=crowd))
    assert isinstance(refused, commands.Validation)
    assert "at most 50 addresses on Cc" in refused.refusals[0]


def test_to_and_cc_of_a_customers_mail_join_but_the_desk_agents_and_people_on_it() -> None:
    inbound = mail(
        CUSTOMER,
        "Re: [#1042] more",
        f"Cc: {DAVE}, {ERIN}, {ALICE.email}, support+tok@example.com, {CUSTOMER}",
    )
    plan = people.joined(inbound, CUSTOMER, WITH_DAVE, OUTSIDERS)
    assert plan.steps == (
        AddParticipants((ERIN,), CUSTOMER),
        Record("cc_added", CUSTOMER, {"added": [ERIN]}),
    )
    assert (
        people.joined(inbound, CUSTOMER, WITH_DAVE.but(participants=(DAVE, ERIN)), OUTSIDERS)
        == Plan()
    )
    room = tuple(f"p{i}@customer.test" for i in range(people.MAX_PARTICIPANTS))
    assert people.joined(inbound, CUSTOMER, OPEN.but(participants=room), OUTSIDERS) == Plan()


@pytest.mark.parametrize(
    ("headers", "requester"),
    [
        (("Reply-To: Gina <gina@customer.test>",), "gina@customer.test"),
        (("Reply-To: gina@customer.test, hal@customer.test",), "noreply@shop.test"),
        (("Reply-To: noreply@shop.test",), "noreply@shop.test"),
        (("Reply-To: support+x@example.com",), "noreply@shop.test"),
        (("Reply-To: Alice <Alice@Example.com>",), "noreply@shop.test"),  # an agent
        (("Reply-To: gina@customer.test", "List-Id: <shop.lists.test>"), "noreply@shop.test"),
        (("Reply-To: gina@customer.test", "List-Post: <mailto:l@x.test>"), "noreply@shop.test"),
        ((), "noreply@shop.test"),
    ],
)
def test_a_new_mails_one_reply_to_is_its_requester_unless_the_desks_an_agents_or_a_lists(
    headers: tuple[str, ...], requester: str
) -> None:
    inbound = mail("Shop <noreply@shop.test>", "Order 1234", *headers)
    assert people.requester_of(inbound, OUTSIDERS) == requester
    assert people.requester_of(inbound, OUTSIDERS, use_reply_to=False) == "noreply@shop.test"
    assert people.requester_of(mail(DESK, "loop", *headers), OUTSIDERS, False) == ""


# --------------------------------------------------------------------------- files

LIMITS = LimitsSettings(
    max_attachment_bytes=600, max_outbound_bytes=1000, notice_attachment_bytes=500
)


def test_files_asks_for_the_tickets_files_and_sends_the_customer_nothing() -> None:
    plan = agent_says("#files")
    assert mailed(plan) == ((ALICE.email, "files"),)
    assert plan.applied == ("the ticket's files mailed to you",)
    assert preview(OPEN, plan) == OPEN


def test_an_agents_files_go_to_the_customer_within_each_limit_in_order() -> None:
    found = [
        files.File("a.pdf", 500),
        files.File("dropped.zip", 9000, kept=False),
        files.File("b.pdf", 700),  # over max_attachment_bytes
        files.File("c.pdf", 500),  # 1000 with a.pdf: max_outbound_bytes
        files.File("d.txt", 100),  # over what is left of it
    ]
    choice = files.to_customer(found, LIMITS)
    assert choice.chosen == (0, 3)
    assert [index for index, _ in choice.refused] == [1, 2, 4]
    lines = files.receipt_lines(found, choice, "")
    assert lines[0] == "a.pdf (500 bytes) sent to the customer"
    assert "max_attachment_bytes (600 bytes) when it came" in lines[1]
    assert lines[2].endswith("larger than max_attachment_bytes (600 bytes)")
    assert lines[4].endswith("may come to 1 KB in all (max_outbound_bytes)")
    assert files.receipt_lines(found[:1], None, "a note")[0].endswith("customer: a note")


def test_a_notice_carries_files_up_to_its_budget_and_names_the_rest() -> None:
    found = [files.File("a.png", 300), files.File("b.zip", 300), files.File("c.txt", 200)]
    choice = files.on_notice(found, LIMITS)
    assert choice.chosen == (0, 2)
    assert [index for index, _ in choice.refused] == [1]


def test_files_are_mailed_in_batches_within_the_limit_and_a_larger_one_is_named() -> None:
    found = [
        files.File("a", 300),
        files.File("b", 200),
        files.File("huge", 501),
        files.File("c", 100),
        files.File("gone", 10, kept=False),
        files.File("d", 450),
    ]
    batches = files.in_batches(found, LIMITS)
    assert batches.mails == ((0, 1), (3,), (5,))
    assert [index for index, _ in batches.refused] == [2, 4]
    assert files.in_batches([], LIMITS).mails == ()


# --- held replies, merge and link --------------------------------------------------------------


def test_a_reply_overtaken_by_another_agents_is_held_but_never_the_assignees() -> None:
    from maildesk.desk import merges
    from maildesk.desk.plans import HoldReply, Overtaken, Plan, Record, Reply, TrackSla

    reply = Reply("carol@example.com", "Carol", (), "On the reception desk.", True)
    plan = Plan((reply, TrackSla()))
    other = Overtaken("alice@example.com", datetime(2026, 11, 26, 9, 5, tzinfo=UTC), "guest2026")
    held = merges.hold(plan, other, "carol@example.com", None)
    assert held.steps[0] == HoldReply(reply, other)
    assert isinstance(held.steps[1], Record) and held.steps[1].kind == "reply_held"
    assert merges.hold(plan, other, "carol@example.com", "carol@example.com") == plan
    assert merges.hold(plan, None, "carol@example.com", None) == plan


def test_merge_link_send_and_drop_are_refused_with_a_reason() -> None:
    from maildesk.desk import merges

    named = merges.Named(2, ((1, "open"), (3, "merged")), held=False)
    refusals = {
        ("merge", ("#2",)): "itself",
        ("merge", ("#9",)): "there is no ticket #9",
        ("merge", ("#3",)): "merged into another ticket",
        ("link", ()): "name one ticket",
        ("send", ()): "no reply of yours is held",
        ("drop", ()): "no reply of yours is held",
    }
    for (verb, args), reason in refusals.items():
        with pytest.raises(merges.Refused, match=reason):
            merges.resolve(verb, args, named)
    assert merges.resolve("merge", ("[#1]",), named) == "1"
    assert merges.resolve("link", ("3",), named) == "3"
    assert merges.named_numbers([("merge", ("#1",)), ("link", ("[#3]",)), ("tag", ("4",))]) == (
        1,
        3,
    )
