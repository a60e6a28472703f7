"""The query grammar as values: the lines an agent mails in, the queries out (no server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from maildesk.desk import queries
from maildesk.desk.queries import (
    HelpQuery,
    ListQuery,
    Refused,
    SearchQuery,
    Selection,
    ShowQuery,
)
from maildesk.models import Status

ALICE = "alice@example.com"
TEAMS = ("support", "Field Service")


def asked(body: str) -> tuple[queries.Query, ...]:
    return queries.asked(body, ALICE, TEAMS).queries


def test_list_defaults_to_my_open_tickets() -> None:
    [query] = asked("#list")
    assert query == ListQuery(
        "#list", Selection(status=Status.OPEN, assignee=ALICE, limit=50), "mine open"
    )


@pytest.mark.parametrize(
    ("line", "selection", "scope"),
    [
        ("#list closed", Selection(status=Status.CLOSED, assignee=ALICE), "mine closed"),
        ("#list unassigned", Selection(status=Status.OPEN, unassigned=True), "unassigned open"),
        (
            "#list overdue pending",
            Selection(status=Status.PENDING, overdue=True),
            "overdue pending",
        ),
        ("#list all spam", Selection(status=Status.SPAM), "all spam"),
        ("#list ALL Escalated", Selection(status=Status.ESCALATED), "all escalated"),
        (
            "#list team field   service closed",
            Selection(status=Status.CLOSED, team="Field Service"),
            "team Field Service closed",
        ),
        ("#list team SUPPORT", Selection(status=Status.OPEN, team="support"), "team support open"),
        # the status first, as agents also write it
        ("#list pending", Selection(status=Status.PENDING, assignee=ALICE), "mine pending"),
        ("#list open mine", Selection(status=Status.OPEN, assignee=ALICE), "mine open"),
        (
            "#list Pending team field service",
            Selection(status=Status.PENDING, team="Field Service"),
            "team Field Service pending",
        ),
    ],
)
def test_list_takes_a_scope_then_a_status(line: str, selection: Selection, scope: str) -> None:
    [query] = asked(line)
    assert isinstance(query, ListQuery)
    assert (query.selection, query.scope) == (replace(selection, limit=50), scope)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("#list team billing", "no team called billing (known: support, Field Service)"),
        ("#list team", "name the team: #list team support"),
        ("#list everything", "list what? mine | unassigned | team | overdue | all"),
        ("#list mine please", "mine takes no more words; a status comes last"),
        ("#show", "name one ticket: #show 12"),
        ("#show 12 13", "name one ticket: #show 12"),
        ("#show twelve", "twelve is not a ticket's ref: #show 12"),
        ("#show 0", "no ticket 0"),
        ("#show 2147483648", "no ticket 2147483648"),
        ("#show 99999999999999999999999", "is not a ticket's ref"),
        ("#search", "name the words to look for"),
        ("#help me", "#help takes no arguments"),
        ("#assign me", "not a query; the queries are #list, #show, #search, #help"),
        ("#new dana@customer.test", "#new starts a ticket: send it in a mail of its own"),
        ("#search " + "x" * 300, "longer than 200 characters"),
    ],
)
def test_a_line_that_is_no_query_is_refused_with_why(line: str, reason: str) -> None:
    [query] = asked("#list\n" + line)[1:]
    assert isinstance(query, Refused)
    assert reason in query.reason


@pytest.mark.parametrize("ref", ["12", "#12", "[#12]", "[#12].", "#12,"])
def test_show_takes_a_ref_as_written(ref: str) -> None:
    assert asked(f"#show {ref}") == (ShowQuery(f"#show {ref}", 12),)


def test_show_takes_the_largest_ticket_number() -> None:
    assert asked("#show 2147483647") == (ShowQuery("#show 2147483647", 2**31 - 1),)


def test_several_lines_are_several_queries_and_the_text_below_ends_them() -> None:
    body = "#list\n\n#show 4\n#search printer jam\n#help\nThanks!\n#list all"
    assert asked(body) == (
        ListQuery("#list", Selection(status=Status.OPEN, assignee=ALICE, limit=50), "mine open"),
        ShowQuery("#show 4", 4),
        SearchQuery("#search printer jam", "printer jam"),
        HelpQuery("#help"),
    )


def test_a_mail_is_a_query_when_its_first_command_line_is_one() -> None:
    assert queries.is_query("\n\n#list\nHello")
    assert queries.is_query("#help")
    assert not queries.is_query("#new dana@customer.test\n#list")
    assert not queries.is_query("Please #list my tickets")
    assert not queries.is_query("#1042 is broken")
    assert not queries.is_query("")


def test_the_subject_asks_when_the_body_does_not() -> None:
    assert queries.asking("Re: printer", "#show 12\nthanks") == "#show 12\nthanks"
    assert queries.asking(" #list all ", "Sent from my phone") == "#list all\nSent from my phone"
    assert queries.asking("#search toner", "#show 3") == "#search toner\n#show 3"
    assert queries.asking("Re: #show 3", "#search toner") == "#search toner"
    assert queries.asking("#new dana@customer.test", "Hello") is None
    assert queries.asking("Printer", "Hello") is None


def test_a_thousand_query_lines_are_ten_queries_and_a_count() -> None:
    found = queries.asked("#list\n" * 1000, ALICE, TEAMS)
    assert len(found.queries) == queries.MAX_QUERIES == 10
    assert found.unread == 990
    # lines beyond those looked at are not read at all: the work stays bounded
    many = queries.asked("#help\n" * 100_000, ALICE, TEAMS)
    assert (len(many.queries), many.unread) == (10, queries.MAX_LINES_READ - 10)


def test_since_takes_an_iso_date_or_moment_in_utc_unless_it_names_an_offset() -> None:
    assert queries.since_value("2026-11-26") == datetime(2026, 11, 26, tzinfo=UTC)
    assert queries.since_value("2026-11-26T09:30") == datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
    assert queries.since_value("2026-11-26T09:30+01:00") == datetime(
        2026, 11, 26, 8, 30, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="not an ISO date or date and time: 'yesterday'"):
        queries.since_value("yesterday")
