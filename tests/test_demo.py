"""The README's first line: ``maildesk demo`` walks one ticket through all five stages."""

from __future__ import annotations

import subprocess
import sys


def test_demo_walks_a_ticket_through_its_whole_life() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maildesk", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for stage in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== The ticket"):
        assert stage in out
    # the customer's acknowledgment, the public reply, the escalation notice and the closing mail
    assert out.count("To: carol@customer.test") == 4
    assert "(text+HTML)" in out
    assert "status closed" in out and "satisfaction 5/5" in out
    for kind in ("created", "assigned", "note", "escalated", "closed", "rating"):
        assert f" {kind} " in out
    assert "Demo finished in" in out
    assert "Traceback" not in done.stderr
