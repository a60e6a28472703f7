"""``maildesk report``: the numbers a support lead asks for, and one offline HTML page of charts.

The database is filled through the tables (tickets with their timestamps and events, as the
lifecycle rules leave them), then the real CLI prints JSON and writes the page. Where headless
Chromium is installed, the page is opened in it and screenshotted.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maildesk import config
from maildesk.database import Database
from maildesk.demo import configs
from maildesk.models import Event, Status, Ticket
from maildesk.ui import cli

CONFIG = configs.config_text(
    desk={
        "name": "Example Support",
        "address": "support@example.com",
        "data_dir": "data",
        "secret": "0123456789abcdef0123",
    },
    mailboxes=[
        {
            "name": "support",
            "host": "127.0.0.1",
            "port": 1143,
            "security": "none",
            "username": "support@example.com",
            "password": "pw",
            "team": "support",
        }
    ],
    smtp={"host": "127.0.0.1", "port": 1025, "security": "none"},
    teams=[{"name": "support"}, {"name": "engineering"}],
    sla={
        "medium": {"first_response": "4h", "resolution": "3d"},
        "high": {"first_response": "1h", "resolution": "1d", "escalate_to": "engineering"},
    },
)


def make_config(tmp_path: Path) -> tuple[Path, Database]:
    path = tmp_path / "maildesk.toml"
    path.write_text(CONFIG)
    path.chmod(0o600)
    db = Database(config.load(path).database_url)
    db.upgrade()
    return path, db


def add_ticket(
    db: Database,
    created: datetime,
    *,
    priority: str = "medium",
    team: str = "support",
    status: Status = Status.OPEN,
    responded: timedelta | None = None,
    closed: timedelta | None = None,
    rating: int | None = None,
    breached: str = "",
) -> None:
    """A ticket as the lifecycle rules leave it: timestamps, status and the events that count."""
    with db.transaction() as session:
        closed_at = created + closed if closed is not None else None
        ticket = Ticket(
            subject="Printer broken",
            requester="dana@customer.test",
            status=Status.CLOSED if closed_at else status,
            priority=priority,
            team=team,
            created_at=created,
            updated_at=closed_at or created,
            status_since=closed_at or created,
            first_response_at=created + responded if responded is not None else None,
            closed_at=closed_at,
            rating=rating,
            sla_breached=breached,
        )
        session.add(ticket)
        session.flush()
        session.add(Event(ticket=ticket, kind="created", at=created))
        if closed_at is not None:
            session.add(Event(ticket=ticket, kind="closed", at=closed_at))
        if rating is not None:
            assert closed_at is not None
            session.add(Event(ticket=ticket, kind="rating", at=closed_at + timedelta(hours=1)))


def report_json(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli.main(["--config", str(path), "report", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, db = make_config(tmp_path)
    now = datetime.now(UTC)
    day = now - timedelta(days=3)
    add_ticket(db, day, responded=timedelta(minutes=20), closed=timedelta(hours=5), rating=5)
    add_ticket(db, day, responded=timedelta(hours=6), closed=timedelta(days=2), rating=2,
               breached="first_response")  # fmt: skip
    add_ticket(db, day, priority="high", team="engineering", status=Status.ESCALATED,
               responded=timedelta(minutes=30), breached="resolution")  # fmt: skip
    add_ticket(db, now - timedelta(hours=1), status=Status.PENDING, responded=timedelta(minutes=5))
    add_ticket(db, now - timedelta(minutes=30), priority="low")  # no SLA for low
    add_ticket(db, now - timedelta(days=60), closed=timedelta(days=1))  # before the window
    add_ticket(db, now - timedelta(days=60), priority="low")  # old, but still in the backlog

    data = report_json(path, capsys, "--since", "14d")
    assert data["summary"]["opened"] == 5
    per_day = {d["date"]: (d["opened"], d["closed"]) for d in data["per_day"]}
    assert len(per_day) == 15
    assert per_day[day.date().isoformat()][0] == 3
    assert sum(o for o, _ in per_day.values()) == 5
    assert sum(c for _, c in per_day.values()) == 2
    assert data["backlog"] == {"open": 2, "pending": 1, "escalated": 1}
    assert data["backlog_by_team"]["escalated"] == {"engineering": 1}

    first = data["first_response"]
    assert first["count"] == 4
    assert first["median_seconds"] == pytest.approx(25 * 60)
    assert {b["label"]: b["count"] for b in first["buckets"]}["4–8 h"] == 1
    assert data["time_to_close"]["count"] == 2

    sla = {s["target"]: s for s in data["sla"]}
    assert (sla["first_response"]["met"], sla["first_response"]["missed"]) == (3, 1)
    assert sla["first_response"]["rate"] == 0.75
    # resolution: one closed in 5 h (met), one in 2 d (met, within 3 d), the high one is
    # past its day (missed), the pending one still running
    assert (sla["resolution"]["met"], sla["resolution"]["missed"]) == (2, 1)
    assert sla["resolution"]["running"] == 1

    assert data["satisfaction"]["ratings"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}
    assert data["satisfaction"]["average"] == 3.5

    narrow = report_json(path, capsys, "--since", "2h")
    assert narrow["summary"]["opened"] == 2 and narrow["satisfaction"]["count"] == 0
    db.dispose()


def seed_two_weeks(db: Database, now: datetime, count: int = 48, seed: int = 7) -> None:
    """A desk's fortnight: tickets of every status, answered and closed after varied delays."""
    rng = random.Random(seed)
    for _ in range(count):
        created = now - timedelta(days=rng.uniform(0, 14))
        priority = rng.choices(["low", "medium", "high", "urgent"], [2, 6, 3, 1])[0]
        responded = timedelta(hours=rng.lognormvariate(0.3, 1.2))
        closed = responded + timedelta(hours=rng.lognormvariate(3.2, 1.2))
        if created + responded > now or rng.random() < 0.08:
            responded, closed = None, None  # type: ignore[assignment]
        if closed is not None and (created + closed > now or rng.random() < 0.2):
            closed = None  # type: ignore[assignment]
        status = rng.choice([Status.OPEN, Status.PENDING, Status.PENDING, Status.ESCALATED])
        add_ticket(
            db,
            created,
            priority=priority,
            team="engineering" if status == Status.ESCALATED else "support",
            status=status if responded is not None else Status.OPEN,
            responded=responded,
            closed=closed,
            rating=rng.choice([None, 3, 4, 4, 5, 5, 5, 2]) if closed is not None else None,
        )


def test_the_html_page_is_self_contained_and_shows_six_charts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, db = make_config(tmp_path)
    now = datetime.now(UTC)
    seed_two_weeks(db, now)
    page = tmp_path / "report.html"
    assert cli.main(["--config", str(path), "report", "--html", str(page), "--since", "14d"]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {page}"
    text = page.read_text()

    # nothing to fetch: every src/href is a data: URI, no scripts, no stylesheets or fonts
    assert all(v.startswith("data:") for v in re.findall(r'(?:src|href)="([^"]*)"', text))
    assert "<script" not in text and "@import" not in text and "url(" not in text
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)
    assert [alt.split(":")[0] for alt, _ in images] == [
        "Tickets opened and closed per day",
        "Backlog by status",
        "Time to first response",
        "Time to close",
        "SLA compliance",
        "Satisfaction",
    ]
    for _, data in images:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000  # drawn, not blank
    assert "Example Support" in text and "first response SLA" in text

    data = report_json(path, capsys, "--since", "14d")
    assert data["summary"]["opened"] == sum(d["opened"] for d in data["per_day"]) == 48
    assert sum(data["backlog"].values()) == data["summary"]["backlog"]
    db.dispose()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return  # the structure above is the contract; a browser is a bonus where installed
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
