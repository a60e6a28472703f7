"""Poison mail: a message that breaks parsing or handling is quarantined, the batch goes on.

The handling failure is real, not mocked: a canned reply of the desk's own in ``[desk]
templates_dir`` that fails for one ticket, used by an agent's reply (a template with a shipped
counterpart falls back to it instead; see ``test_templates``). After the template is fixed,
``maildesk quarantine replay`` handles the message again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.act import samples
from maildesk.ui import cli
from tests.desk import (
    ALICE,
    CUSTOMER,
    ON_BOTH_DATABASES,
    DeskWorld,
    agent_reply,
    customer_mail,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

MAIL = Path(__file__).parent / "mail"


def deep_multipart(depth: int) -> bytes:
    """A message with ``depth`` nested multipart levels (parses, but breaks every walker)."""
    head = (
        "From: Deep Nest <deep@nest.test>\r\nTo: support@example.com\r\n"
        "Subject: Deeply nested\r\nMessage-ID: <deep-500@nest.test>\r\nMIME-Version: 1.0\r\n"
    )
    parts = [head]
    for i in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n')
    parts.append("Content-Type: text/plain\r\n\r\nbottom\r\n")
    for i in reversed(range(depth)):
        parts.append(f"--b{i}--\r\n")
    return "".join(parts).encode()


@pytest.fixture
def world(
    imap_server: ImapAccount,
    smtp_server: ScriptedSmtp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    monkeypatch.setenv("MAILDESK_CONFIG", str(w.config_path))
    yield w
    w.close()


def maildesk(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI as a user would (in-process) and return (exit status, stdout)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_poison_mail_is_quarantined_and_the_batch_goes_on_then_replayed(
    world: DeskWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_logging: None
) -> None:
    overrides = tmp_path / "templates"
    (overrides / "canned").mkdir(parents=True)
    # A canned reply of the desk's own (nothing shipped to fall back on) that fails for a
    # ticket without tags. It passes the check, whose sample ticket has tags.
    warranty = overrides / "canned" / "warranty.txt.j2"
    warranty.write_text("Your {{ ticket.tags[0] }} is still under warranty: we replace it.\n")
    world.use_templates(overrides)
    assert samples.check(world.desk).problems == ()
    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    assert world.run_once() == 0
    notice = world.mails_to(ALICE)[-1]

    world.deliver(customer_mail("First good one", "Hello", sender="first@good.test"))
    world.deliver((MAIL / "unknown-charset.eml").read_bytes())
    # pymap's own parser recurses on APPEND and gives up near 330 levels; Dovecot stores 500
    world.deliver(deep_multipart(500 if world.account.kind == "dovecot" else 300))
    world.deliver(agent_reply(notice, ALICE, "#reply warranty\n\nBest regards, Alice"))
    world.deliver(customer_mail("Last good one", "Hello", sender="last@good.test"))

    assert world.run_once() == 0

    requesters = {t["requester"] for t in world.tickets()}
    assert {"first@good.test", "last@good.test"} <= requesters
    assert len(world.mails_to("first@good.test")) == 1
    assert len(world.mails_to("last@good.test")) == 1
    assert len(world.mails_to(CUSTOMER)) == 1  # the acknowledgment, no reply
    assert len(world.ticket(1)["messages"]) == 1 and world.ticket(1)["status"] == "open"
    assert world.account.uids("INBOX") == []
    charset_ticketed = "lena@example.org" in requesters  # ticketed with a defect, or quarantined
    assert len(world.account.uids("Quarantine")) == (2 if charset_ticketed else 3)
    assert len(world.account.uids("Processed")) == (4 if charset_ticketed else 3)

    code, out = maildesk(capsys, "quarantine", "list", "--json")
    assert code == 0
    listed = json.loads(out)
    assert all(set(i) == {"id", "mailbox", "uid", "from", "subject", "error", "at"} for i in listed)
    by_subject = {i["subject"]: i for i in listed}
    boom = by_subject[f"Re: {notice.message['Subject']}"]
    assert boom["mailbox"] == "support" and boom["uid"] is not None
    assert ALICE in boom["from"]
    assert f"{warranty}:1: list object has no element 0" in boom["error"]
    deep = by_subject["Deeply nested"]
    assert "nesting" in deep["error"] or "MIME" in deep["error"]
    assert boom["at"] and deep["at"]

    code, out = maildesk(capsys, "quarantine", "list")
    assert code == 0 and "has no element 0" in out

    # the operator fixes the template and replays the message
    warranty.write_text("Your printer is still under warranty: we replace it.\n")
    code, out = maildesk(capsys, "quarantine", "replay", str(boom["id"]))
    assert code == 0, out
    assert out.startswith(f"{boom['id']}: follow_up [#1]")
    [reply] = world.wait_mails_to(CUSTOMER, 2)[1:]
    assert (
        text_of(reply)
        .replace("\r\n", "\n")
        .startswith("Your printer is still under warranty: we replace it.\n\nBest regards, Alice")
    )
    assert world.ticket(1)["status"] == "pending"
    code, out = maildesk(capsys, "quarantine", "list", "--json")
    assert [i["subject"] for i in json.loads(out)] == [
        i["subject"] for i in listed if i["id"] != boom["id"]
    ]

    # replaying all again: the too-deep message is still refused, and says so
    code, out = maildesk(capsys, "quarantine", "replay", "--all")
    assert code == 1
    assert f"{deep['id']}: quarantined" in out
    # replay never answers twice
    assert len(world.mails_to(CUSTOMER)) == 2
    # and the server still holds every message: maildesk never deletes mail
    total = len(world.account.uids("Quarantine")) + len(world.account.uids("Processed"))
    assert total == 6


@ON_BOTH_DATABASES
@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_replay_of_an_id_no_row_can_have_says_so(
    imap_server: ImapAccount,
    smtp_server: ScriptedSmtp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str | None,
) -> None:
    """An operator's typo past the largest row ID: one line, not PostgreSQL's traceback."""
    w = DeskWorld(imap_server, smtp_server, tmp_path, database_url=database_url)
    monkeypatch.setenv("MAILDESK_CONFIG", str(w.config_path))
    try:
        for wrong in ("99999999999", "0", "-3"):
            capsys.readouterr()
            assert cli.main(["quarantine", "replay", wrong]) == 1
            assert capsys.readouterr().err == f"maildesk: no quarantined message {wrong}\n"
    finally:
        w.close()
