"""The README's first line: ``maildesk demo`` walks one ticket through all five stages."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


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


def test_demo_world_delivers_sent_mail_into_imap_mailboxes(tmp_path: Path) -> None:
    """With ``--keep`` a person uses real clients: what the SMTP server accepts lands in the
    recipients' IMAP mailboxes, and mail to the desk's address reaches the desk's INBOX."""
    from maildesk.demo import tour as demo
    from maildesk.demo.world import messages

    world = demo.World(tmp_path)
    world.start()
    try:
        world.deliver(demo.mail(demo.CUSTOMER, demo.SUPPORT, "Hello desk", "Is anyone there?"))
        [ack] = [m for m in world.wait_mail(2) if demo.CUSTOMER in m.rcpt_tos]
        deadline = time.monotonic() + 10

        def delivered() -> list[bytes]:
            if demo.CUSTOMER not in world.imap.users:
                return []
            return messages(world.imap.mailbox_config(demo.CUSTOMER))

        while not delivered() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a mailbox for delivery, with a deadline
        [delivered_mail] = delivered()
        assert ack.message["Message-ID"].encode() in delivered_mail
        assert delivered_mail.startswith(f"Delivered-To: {demo.CUSTOMER}".encode())
    finally:
        world.stop()
