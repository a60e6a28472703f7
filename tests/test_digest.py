"""The morning digest: ``[digest] at`` on each working day, every agent gets one mail of her open
tickets, her teams' unassigned ones and the SLA targets due that day or missed; none when every
list is empty; the admin the figures with the HTML report when ``[digest] admin = true``.

The clock is injected; each ``run_once`` is a daemon started afresh on the same database (a
restart), against pymap and Dovecot. Exactly one digest a day holds with two daemons on one
PostgreSQL database too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maildesk import config
from maildesk.act import digest
from maildesk.config import ConfigError
from maildesk.database import Database
from maildesk.demo.world import Captured
from maildesk.desk import digest as calendar
from maildesk.models import Outbox, Status, Ticket
from maildesk.service.wiring import desk_for
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    Clock,
    DeskWorld,
    customer_mail,
    html_of,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

ADMIN = "admin@example.com"
MONDAY_6AM = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "timezone": "UTC"}

MakeWorld = Callable[..., DeskWorld]


@pytest.fixture
def make_world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path, database_url: str | None
) -> Iterator[MakeWorld]:
    worlds: list[DeskWorld] = []

    def make(start: datetime = MONDAY_6AM, **tables: Any) -> DeskWorld:
        tables.setdefault("digest", {"at": "08:30"})
        world = DeskWorld(
            imap_server,
            smtp_server,
            tmp_path,
            tables=tables,
            clock=Clock(start),
            database_url=database_url,
        )
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()


def digests_to(world: DeskWorld, address: str) -> list[Captured]:
    return [m for m in world.mails_to(address) if "Your desk on" in str(m.message["Subject"])]


def lines_of(mail: Captured) -> str:
    """The text part as a reader sees it, line ends as "\n"."""
    return text_of(mail).replace("\r\n", "\n")


def at(world: DeskWorld, moment: datetime) -> None:
    """Start the daemon at ``moment`` (a restart: a new daemon on the same database)."""
    world.clock.now = moment
    world.run_once()


def seed(world: DeskWorld, count: int, **fields: Any) -> None:
    """``count`` open tickets as rows: the digest reads rows only, and 500 mails through IMAP
    would make this test minutes long for nothing it checks."""
    now = world.clock.now
    with world.db.transaction() as session:
        for n in range(count):
            values = {"team": "support", "priority": "medium", "status": Status.OPEN, **fields}
            session.add(
                Ticket(
                    subject=f"Seeded request {n}",
                    requester=f"customer{n}@customer.test",
                    created_at=now - timedelta(hours=n + 1),
                    updated_at=now,
                    status_since=now,
                    sla_breached="",
                    **values,
                )
            )


# --------------------------------------------------------------------------- the calendar


def test_one_digest_per_working_day_and_none_when_empty(make_world: MakeWorld) -> None:
    world = make_world(business_hours=WEEKDAYS)
    world.run_once()  # nothing yet, and too early anyway
    world.deliver(customer_mail("Printer broken", "It jams."))
    at(world, MONDAY_6AM + timedelta(hours=2, minutes=29))  # 08:29
    assert digests_to(world, ALICE) == []

    at(world, MONDAY_6AM + timedelta(hours=2, minutes=31))  # 08:31: due
    [monday] = digests_to(world, ALICE)
    assert "Your desk on Monday 30 November 2026: 0 yours, 1 unassigned" in str(
        monday.message["Subject"]
    )
    text = lines_of(monday)
    assert "Unassigned in your teams (1):\n  [#1] Printer broken" in text
    assert "Your tickets not closed: open, pending or escalated (0):\n  none" in text
    assert html_of(monday) is not None and "[#1] Printer broken" in (html_of(monday) or "")
    assert len(digests_to(world, CAROL_AGENT)) == 1
    assert digests_to(world, BOB) == []  # engineering: every list empty, nothing sent

    at(world, MONDAY_6AM + timedelta(hours=5))  # the same day, later: nothing more
    world.deliver(customer_mail("Scanner broken", "It is slow."))
    at(world, MONDAY_6AM + timedelta(hours=8))
    assert len(digests_to(world, ALICE)) == 1
    assert digests_to(world, BOB) == []  # not at 14:00 either, though there is news now

    at(world, MONDAY_6AM + timedelta(days=1, hours=3))  # Tuesday 09:00
    assert len(digests_to(world, ALICE)) == 2
    assert "Unassigned in your teams (2)" in lines_of(digests_to(world, ALICE)[-1])
    at(world, MONDAY_6AM + timedelta(days=5, hours=3))  # Saturday: no working day
    at(world, MONDAY_6AM + timedelta(days=6, hours=3))  # Sunday
    assert len(digests_to(world, ALICE)) == 2
    at(world, MONDAY_6AM + timedelta(days=7, hours=3))  # Monday again
    assert len(digests_to(world, ALICE)) == 3


def test_a_daemon_down_at_the_hour_sends_that_days_digest_late_not_yesterdays(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    world.deliver(customer_mail("Printer broken", "It jams."))
    world.run_once()  # Monday 06:00: the ticket, no digest yet
    # down through Monday's 08:30 and Tuesday's; started again on Tuesday at 09:10
    at(world, MONDAY_6AM + timedelta(days=1, hours=3, minutes=10))
    [late] = digests_to(world, ALICE)
    assert "Tuesday 01 December 2026" in str(late.message["Subject"])
    at(world, MONDAY_6AM + timedelta(days=1, hours=3, minutes=11))  # restarted again
    assert len(digests_to(world, ALICE)) == 1


def test_the_hour_is_the_desks_on_days_the_clocks_change() -> None:
    hours = config.BusinessHours(days=tuple(range(7)), timezone="Europe/Berlin")
    settings = _settings(hours, "02:30")
    spring = date(2026, 3, 29)  # 02:00 to 03:00 does not exist: due at 03:00 CEST (01:00 UTC)
    assert calendar.due_day(datetime(2026, 3, 29, 0, 59, tzinfo=UTC), settings) is None
    assert calendar.due_day(datetime(2026, 3, 29, 1, 30, tzinfo=UTC), settings) == spring
    autumn = date(2026, 10, 25)  # 02:30 happens twice: the first (00:30 UTC) counts
    assert calendar.due_day(datetime(2026, 10, 25, 0, 29, tzinfo=UTC), settings) is None
    assert calendar.due_day(datetime(2026, 10, 25, 0, 31, tzinfo=UTC), settings) == autumn
    # "08:30" in Berlin is 07:30 UTC in winter, 06:30 UTC in summer
    settings = _settings(hours, "08:30")
    assert calendar.due_day(datetime(2026, 1, 5, 7, 29, tzinfo=UTC), settings) is None
    assert calendar.due_day(datetime(2026, 7, 6, 6, 31, tzinfo=UTC), settings) == date(2026, 7, 6)
    # a holiday has none; Monday's figures cover Friday to Monday
    weekdays = config.BusinessHours(holidays=("2026-12-25",))
    assert calendar.due_day(datetime(2026, 12, 25, 9, tzinfo=UTC), _settings(weekdays)) is None
    since, until = calendar.figures_window(date(2026, 11, 30), _settings(weekdays))
    assert (since, until) == (
        datetime(2026, 11, 27, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
    )


def _settings(hours: config.BusinessHours | None, at: str = "08:30") -> config.Settings:
    """Settings with only what the calendar reads set to something real."""
    return config.Settings(
        path=Path("x"),
        desk=None,  # type: ignore[arg-type]
        database_url="",
        mailboxes=(),
        smtp=None,  # type: ignore[arg-type]
        teams=(),
        agents=(),
        business_hours=hours,
        digest=config.DigestSettings(at=at),
    )


# --------------------------------------------------------------------------- what it lists


def test_her_tickets_her_teams_unassigned_and_the_sla_targets(make_world: MakeWorld) -> None:
    world = make_world(sla={"medium": {"first_response": "1h", "resolution": "1d"}})
    world.deliver(customer_mail("Printer broken", "It jams."))
    at(world, MONDAY_6AM)  # first response due 07:00, missed by 08:30
    notice = world.mails_to(ALICE)[-1]
    to = str(notice.message["Reply-To"]).split("<")[-1].rstrip(">")
    world.deliver(
        customer_mail(f"Re: {notice.message['Subject']}", "#assign me", sender=ALICE, to=to)
    )
    world.deliver(customer_mail('Q&A <b>"50% off?"</b> #close', "Spam?"))
    at(world, MONDAY_6AM + timedelta(hours=2))  # 08:00: ticket 2, due 09:00
    at(world, MONDAY_6AM + timedelta(hours=2, minutes=31))

    [mail] = digests_to(world, ALICE)
    text = lines_of(mail)
    assert "Your tickets not closed: open, pending or escalated (1):\n  [#1] Printer broken" in text
    assert '[#2] Q&A <b>"50% off?"</b> \uff03close' in text  # defanged, never a command
    sla_part = text[text.index("SLA targets due today or missed (2):") :]
    assert "first response missed, due Mon 30 Nov 2026 07:00 UTC" in sla_part
    assert "first response due Mon 30 Nov 2026 09:00 UTC" in sla_part
    page = html_of(mail) or ""
    assert "Q&amp;A &lt;b&gt;&#34;50% off?&#34;&lt;/b&gt;" in page and "<b>" not in page
    # Bob's team (engineering) has nothing of this: no mail for him
    assert digests_to(world, BOB) == []

    # the footer's way to a ticket: #show above the quoted digest, and the answer acts on it
    assert "Reply with #show <ref> on the first line" in " ".join(text.split())
    personal = str(mail.message["Reply-To"]).split("<")[-1].rstrip(">")
    quoted = "\n".join("> " + line for line in text.splitlines())
    world.deliver(customer_mail("Re: your desk", f"#show 1\n\n{quoted}", sender=ALICE, to=personal))
    world.run_once()
    [shown] = [
        m for m in world.mails_to(ALICE) if str(m.message["Subject"]) == "[#1] Printer broken"
    ]
    assert "message from " in lines_of(shown) and "It jams." in lines_of(shown)


def test_five_hundred_tickets_make_a_bounded_mail(make_world: MakeWorld) -> None:
    world = make_world()
    seed(world, 500, assignee=ALICE)
    at(world, MONDAY_6AM + timedelta(hours=3))
    [mail] = digests_to(world, ALICE)
    text = lines_of(mail)
    assert "Your tickets not closed: open, pending or escalated (500):" in text
    assert text.count("Seeded request") == digest.SHOWN
    assert f"... and {500 - digest.SHOWN} more of yours" in text
    assert len(mail.raw) < 60_000


def test_an_agent_taken_out_of_the_config_leaves_her_tickets_to_her_team(
    make_world: MakeWorld,
) -> None:
    world = make_world()
    seed(world, 1, assignee="dora@example.com")  # an agent the config no longer names
    at(world, MONDAY_6AM + timedelta(hours=3))
    [mail] = digests_to(world, ALICE)
    assert "assigned to dora@example.com (no longer an agent)" in lines_of(mail)
    assert world.mails_to("dora@example.com") == []


def test_the_admin_gets_the_figures_with_the_report(make_world: MakeWorld) -> None:
    world = make_world(digest={"at": "08:30", "admin": True}, business_hours=WEEKDAYS)
    world.deliver(customer_mail("Printer broken", "It jams."))
    at(world, MONDAY_6AM - timedelta(hours=12))  # Sunday 18:00: a ticket the day before
    at(world, MONDAY_6AM + timedelta(hours=3))
    [figures] = [m for m in world.mails_to(ADMIN) if "figures" in str(m.message["Subject"])]
    assert "1 opened, 0 closed, 1 open" in str(figures.message["Subject"])
    assert "opened                 1 (1 open" in lines_of(figures)
    [report] = [p for p in figures.message.iter_attachments()]
    assert report.get_filename() == "maildesk-report-2026-11-30.html"
    assert report.get_content_type() == "text/html"
    assert report.get_content().lstrip().lower().startswith("<!doctype html>")
    at(world, MONDAY_6AM + timedelta(hours=4))
    assert len([m for m in world.mails_to(ADMIN) if "figures" in str(m.message["Subject"])]) == 1


# --------------------------------------------------------------------------- once, whoever sends


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_daemons_on_one_database_send_one_digest_each(make_world: MakeWorld) -> None:
    world = make_world()
    world.deliver(customer_mail("Printer broken", "It jams."))
    world.run_once()
    world.clock.now = MONDAY_6AM + timedelta(hours=3)
    # two daemons' timer passes at the same moment, each with its own connections
    start = threading.Barrier(2)
    written: list[int] = []

    def daemon() -> None:
        db = Database(world.settings.database_url)
        desk = desk_for(world.settings, clock=world.clock)
        start.wait()
        written.append(digest.run(db, desk))
        desk.close()
        db.dispose()

    threads = [threading.Thread(target=daemon) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(written) == 2  # Alice and Carol, once each, by one daemon or the other
    world.run_once()  # a third, started afterwards, finds the day done
    with world.db.transaction() as session:
        count = session.scalar(select(func.count()).where(Outbox.kind == "digest"))
    assert count == 2
    assert len(digests_to(world, ALICE)) == len(digests_to(world, CAROL_AGENT)) == 1


# --------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ({"at": "8.30"}, "[digest] at: expected a time of day \"HH:MM\" (00:00 to 23:59), got '8.30'"),
        ({"at": "25:00"}, "[digest] at: expected a time of day \"HH:MM\" (00:00 to 23:59), got '25:00'"),
        ({"at": "08:30\n"}, "[digest] at: expected a time of day"),
        ({"at": "08:30", "when": "daily"}, "[digest] when: unknown key"),
        ({"admin": True}, "[digest] at: missing (required)"),
        ({"at": 830}, "[digest] at: must be a str, got int"),
    ],
)  # fmt: skip
def test_a_bad_digest_table_stops_the_start_naming_the_key(
    make_world: MakeWorld, table: dict[str, Any], error: str
) -> None:
    world = make_world()
    world.tables["digest"] = table
    world.rewrite_config()
    with pytest.raises(ConfigError) as raised:
        config.load(world.config_path)
    assert error in str(raised.value) and "\n" not in str(raised.value).strip()
    if table == {"at": "8.30"}:
        done = world.cli("check-config", "--no-probe")
        assert done.returncode == 78 and error in done.stderr.decode() + done.stdout.decode()


def test_the_admins_figures_need_an_admin_address(make_world: MakeWorld) -> None:
    world = make_world()
    world.rewrite_config(desk={"admin_address": None}, digest={"admin": True})
    with pytest.raises(ConfigError, match=r"\[digest\] admin: needs \[desk\] admin_address"):
        config.load(world.config_path)
