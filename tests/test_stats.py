"""``maildesk stats``, ``agents list`` and ``teams list``: the questions a support lead asks,
answered from tickets worked by mail through the real daemon, over a ``--since`` window."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from maildesk.ui import cli
from tests.desk import ALICE, CUSTOMER, Clock, DeskWorld, agent_reply, customer_mail
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

EVE = "eve@customer.test"
OLD = "old@customer.test"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path, clock=Clock(datetime.now(UTC)))
    yield w
    w.close()


def run(world: DeskWorld, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code = cli.main(["--config", str(world.config_path), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out) if "--json" in args else out


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_stats_answer_a_support_leads_questions(
    world: DeskWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    # a ticket from ten days ago, still open: backlog, but not opened this week
    world.clock.now = now - timedelta(days=10)
    world.deliver(customer_mail("Old problem", "Still waiting.", sender=OLD))
    world.run_once()

    # this week: answered after 2 h, closed after 6 h, rated 4
    world.clock.now = now - timedelta(days=2)
    world.deliver(customer_mail("Printer", "Blank pages."))
    world.run_once()
    world.clock.advance(hours=2)
    world.deliver(agent_reply(world.mails_to(ALICE)[-1], ALICE, "Which floor?"))
    world.run_once()
    world.clock.advance(hours=4)
    world.deliver(agent_reply(world.mails_to(ALICE)[-1], ALICE, "#close\nFixed."))
    world.run_once()
    closing = world.mails_to(CUSTOMER)[-1]
    world.deliver(customer_mail(f"Re: {closing.message['Subject']}", "4 thanks", reply_to=closing))
    world.run_once()

    # and one answered after 1 h, waiting on the customer
    world.clock.advance(hours=1)
    world.deliver(customer_mail("VPN", "No connection.", sender=EVE))
    world.run_once()
    world.clock.advance(hours=1)
    world.deliver(agent_reply(world.mails_to(ALICE)[-1], ALICE, "Try again now?"))
    world.run_once()

    week = run(world, capsys, "stats", "--since", "7d", "--json")
    assert week["opened"] == 2
    assert week["by_status"] == {"open": 0, "pending": 1, "escalated": 0, "closed": 1, "merged": 0}
    assert week["closed"] == 1
    assert week["backlog"] == 2  # the old one and the pending one
    assert week["median_first_response_seconds"] == 1.5 * 3600
    assert week["median_close_seconds"] == 6 * 3600
    assert week["satisfaction"] == {"average": 4.0, "count": 1}
    support = next(t for t in week["teams"] if t["team"] == "support")
    assert (support["opened"], support["backlog"]) == (2, 2)
    engineering = next(t for t in week["teams"] if t["team"] == "engineering")
    assert (engineering["opened"], engineering["backlog"]) == (0, 0)

    month = run(
        world, capsys, "stats", "--since", (now - timedelta(days=30)).date().isoformat(), "--json"
    )
    assert month["opened"] == 3 and month["by_status"]["open"] == 1

    human = run(world, capsys, "stats", "--since", "7d")
    assert "first response median  1h 30m" in human
    assert "time to close median   6h 0m" in human
    assert "satisfaction           4.0/5 from 1 rating" in human

    teams = run(world, capsys, "teams", "list", "--json")
    assert {t["name"]: t["open_tickets"] for t in teams} == {"support": 2, "engineering": 0}
    assert teams[0]["mailboxes"] == ["support"]
    assert "support" in run(world, capsys, "teams", "list")
    agents = run(world, capsys, "agents", "list", "--json")
    assert [a["email"] for a in agents] == [a.email for a in world.settings.agents]
    assert agents[0]["teams"] == ["support"]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_since_must_be_a_duration_or_a_date(
    world: DeskWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["--config", str(world.config_path), "stats", "--since", "last week"])
    assert code == 2
    assert '--since: expected a duration like "7d"' in capsys.readouterr().err
