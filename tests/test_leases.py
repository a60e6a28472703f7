"""Leases between daemons: what the log says when one changes hands.

With two daemons on one database the timers lease changes hands after every pass (each pass
gives it up), so a handover of a lease given up must not read as a failure; a lease whose
holder did not give it up (expired, or its process gone) is taken over with a line saying why.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from maildesk.database import Database
from maildesk.service.leases import Leases

OTHER_HOST = "elsewhere.example:4242:abcd"  # alive until its lease expires


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'leases.db'}")
    database.upgrade()
    return database


def takeovers(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_a_lease_given_up_changes_hands_without_a_takeover_line(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    first = Leases(db, OTHER_HOST, timedelta(seconds=30))
    second = Leases(db, f"{socket.gethostname()}:1:mine", timedelta(seconds=30))
    caplog.set_level(logging.DEBUG, logger="maildesk.daemon")
    for _ in range(3):  # the timers of two daemons, pass after pass
        assert first.take("timers")
        assert not second.take("timers")
        first.release("timers")
        assert second.take("timers")
        second.release("timers")
    assert takeovers(caplog) == []


def test_an_expired_lease_is_taken_over_saying_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    assert Leases(db, OTHER_HOST, timedelta(seconds=-1)).take("mailbox:support")
    caplog.set_level(logging.INFO, logger="maildesk.daemon")
    assert Leases(db, "here:1:mine", timedelta(seconds=30)).take("mailbox:support")
    assert takeovers(caplog) == [f"taking over mailbox:support from {OTHER_HOST} (lease expired)"]


def test_a_lease_of_a_process_gone_is_taken_over_saying_so(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process
    gone = f"{socket.gethostname()}:{child.pid}:dead"
    assert Leases(db, gone, timedelta(minutes=5)).take("timers")
    caplog.set_level(logging.INFO, logger="maildesk.daemon")
    assert Leases(db, "here:1:mine", timedelta(seconds=30)).take("timers")
    assert takeovers(caplog) == [f"taking over timers from {gone} (its process no longer runs)"]
