"""``maildesk demo``: a throwaway mail world with one ticket walked through its whole life.

Starts an IMAP server (pymap) and an SMTP capture (aiosmtpd) on loopback, a SQLite database in a
temporary directory, and the real daemon against them. Then a customer writes in (with an
attachment) and an agent, using nothing but mail, assigns, notes, escalates and closes the
ticket; the customer rates it. Every mail the desk sends and the ticket's timeline are printed.
With ``--keep`` the world stays up for a real mail client.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
import os
import re
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from maildesk import config, shared_secret
from maildesk.database import Database
from maildesk.demo.configs import config_text
from maildesk.demo.world import Captured, ImapServer, SmtpServer
from maildesk.models import Ticket
from maildesk.service.daemon import Daemon
from maildesk.service.wiring import desk_for
from maildesk.ui import views

SUPPORT = "support@example.test"
PASSWORD = "demo-password"
CUSTOMER = "carol@customer.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"


def config_tables(imap_port: int, smtp_port: int) -> dict[str, Any]:
    """The demo desk's config: one mailbox, two teams, an agent in each."""
    return {
        "desk": {
            "name": "Example Support",
            "address": SUPPORT,
            "data_dir": "data",
            "admin_address": "admin@example.test",
        },
        "mailboxes": [
            {
                "name": "support",
                "host": "127.0.0.1",
                "port": imap_port,
                "security": "none",
                "username": SUPPORT,
                "password": PASSWORD,
                "poll_seconds": 5,
                "team": "support",
            }
        ],
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none"},
        # The demo's agents prove themselves with the reply tokens of their notifications.
        "security": {"token_days": 180},
        "teams": [{"name": "support"}, {"name": "engineering"}],
        "agents": [
            {"email": ALICE, "name": "Alice Agent", "teams": ["support"]},
            {"email": BOB, "name": "Bob Builder", "teams": ["engineering"]},
        ],
    }


class World:
    """The servers, the daemon in a background thread, and helpers to play both sides."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.imap = ImapServer({SUPPORT: PASSWORD})
        self.smtp = SmtpServer()
        path = root / "maildesk.toml"
        path.write_text(config_text(**config_tables(self.imap.port, self.smtp.port)))
        path.chmod(0o600)
        self.config_path = path
        self.settings = config.load(path)
        self.db = Database(self.settings.database_url)
        self.db.upgrade()
        self.settings = shared_secret.settled(self.settings, self.db)
        self.daemon = Daemon(
            self.settings, self.db, desk_for(self.settings), on_outcome=self._handled
        )
        self.handled = 0
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.daemon.run()), daemon=True)
        self.seen = 0
        self.delivering = threading.Lock()
        self.smtp.on_message = self.deliver_locally

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        loop = self.daemon.loop
        if loop is not None:
            loop.call_soon_threadsafe(self.daemon.request_stop)
        self.thread.join(timeout=10)
        self.daemon.desk.close()
        self.db.dispose()
        self.smtp.close()
        self.imap.close()

    def _handled(self, _mailbox: str, _outcome: object) -> None:
        with self.condition:
            self.handled += 1
            self.condition.notify_all()

    def wait_handled(self, count: int) -> None:
        """Until the daemon has handled ``count`` messages in all."""
        with self.condition:
            if not self.condition.wait_for(lambda: self.handled >= count, timeout=10):
                raise TimeoutError(f"the daemon handled {self.handled} of {count} messages")

    def deliver_locally(self, captured: Captured) -> None:
        """What the SMTP server accepts lands in the recipients' IMAP mailboxes, as an MTA would
        deliver it: the desk's plus-addresses in the desk's INBOX (with ``Delivered-To``), every
        other address in a mailbox of its own (created on first use, password as the desk's)."""
        with self.delivering:  # one at a time: a mailbox is created once
            for rcpt in captured.rcpt_tos:
                local, _, domain = rcpt.lower().partition("@")
                owner = f"{local.split('+')[0]}@{domain}"
                if owner not in self.imap.users:
                    self.imap.add_user(owner, PASSWORD)
                self.imap.append(owner, f"Delivered-To: {rcpt}\r\n".encode() + captured.raw)

    def deliver(self, message: EmailMessage) -> None:
        """Put a message into the support mailbox, as the MTA would."""
        self.imap.append(SUPPORT, message.as_bytes(policy=email.policy.SMTP))

    def wait_mail(self, count: int) -> list[Captured]:
        """The next ``count`` mails the desk sends."""
        mails = self.smtp.wait_for_count(self.seen + count, timeout=10)
        new = mails[self.seen : self.seen + count]
        self.seen += count
        return new

    def ticket(self, number: int) -> dict[str, Any]:
        with self.db.transaction() as session:
            ticket = session.get(Ticket, number)
            assert ticket is not None
            return views.ticket_detail(ticket, self.settings.desk.ref_format)


def mail(
    sender: str, to: str, subject: str, body: str, *, reply_to: Captured | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    if reply_to is not None:
        parent = reply_to.message["Message-ID"]
        msg["In-Reply-To"] = parent
        msg["References"] = parent
    msg.set_content(body)
    return msg


def agent_reply(notice: Captured, sender: str, body: str, subject_extra: str = "") -> EmailMessage:
    """An agent answering a notification from their mail client: to its Reply-To, quoting it."""
    reply_to = re.sub(r".*<|>.*", "", str(notice.message["Reply-To"]))
    quoted = "\n".join("> " + line for line in _text(notice).splitlines()[:6])
    subject = f"Re: {notice.message['Subject']}{subject_extra}"
    return mail(
        sender,
        reply_to,
        subject,
        f"{body}\n\nOn Thursday, the desk wrote:\n{quoted}\n",
        reply_to=notice,
    )


def _text(captured: Captured) -> str:
    part = captured.message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


def show(mails: list[Captured]) -> None:
    for captured in mails:
        msg = captured.message
        kinds = "text+HTML" if msg.get_body(preferencelist=("html",)) is not None else "text"
        print(f"  ✉ To: {captured.rcpt_tos[0]}   Subject: {msg['Subject']}   ({kinds})")
        body = [line for line in _text(captured).strip().splitlines() if line.strip()]
        for line in body[:4]:
            print(f"      {line}")
        if len(body) > 4:
            print("      …")


def step(title: str) -> None:
    print(f"\n== {title}")


def walk(world: World) -> None:
    """The ticket's life, each step waiting for the mail the one before makes the desk send."""
    number, notice = customer_writes_in(world)
    reply = alice_answers(world, notice)
    customer_notice = customer_answers(world, reply)
    bob_notice = alice_escalates(world, customer_notice)
    bob_closes(world, bob_notice)
    step("The ticket")
    print(views.render_ticket(world.ticket(number)))


def customer_writes_in(world: World) -> tuple[int, Captured]:
    """Step 1; the ticket's number (from the acknowledgement) and Alice's notification."""
    step("1. A customer writes in, with an attachment")
    first = mail(
        CUSTOMER,
        SUPPORT,
        "Printer on floor 3 prints blank pages",
        (
            "Hello,\n\nsince this morning the printer on floor 3 only prints blank pages.\n"
            "A test page is attached.\n\nCarol"
        ),
    )
    first.add_attachment(
        b"%PDF-1.4 demo test page\n", maintype="application", subtype="pdf", filename="testpage.pdf"
    )
    world.deliver(first)
    sent = world.wait_mail(2)
    show(sent)
    ack = next(m for m in sent if m.rcpt_tos[0] == CUSTOMER)
    notice = next(m for m in sent if m.rcpt_tos[0] == ALICE)
    number = int(re.search(r"\d+", str(ack.message["Subject"])).group())  # type: ignore[union-attr]
    return number, notice


def alice_answers(world: World, notice: Captured) -> Captured:
    """Step 2; the reply the customer gets."""
    step("2. Alice takes it and answers the customer (commands at the top of her reply)")
    world.deliver(
        agent_reply(
            notice,
            ALICE,
            (
                "#assign me\n#priority high\n#tag printer\n\n"
                "Hi Carol, thanks for the test page. Could you tell me the printer's asset number?"
            ),
        )
    )
    sent = world.wait_mail(2)
    show(sent)
    return next(m for m in sent if m.rcpt_tos[0] == CUSTOMER)


def customer_answers(world: World, reply: Captured) -> Captured:
    """Step 3; Alice's notification of the customer's answer."""
    step("3. The customer answers; Alice keeps an internal note")
    world.deliver(
        mail(
            CUSTOMER,
            SUPPORT,
            f"Re: {reply.message['Subject']}",
            "It is asset 4711.\n\nOn Thursday, Alice wrote:\n> Could you tell me the asset number?",
            reply_to=reply,
        )
    )
    sent = world.wait_mail(1)
    show(sent)
    world.deliver(agent_reply(sent[0], ALICE, "#note\nFuser unit looks dead; needs engineering."))
    show(world.wait_mail(1))
    return sent[0]


def alice_escalates(world: World, notice: Captured) -> Captured:
    """Step 4; Bob's notification of the escalation."""
    step("4. Alice escalates to engineering with a summary (the customer sees no internal text)")
    world.deliver(
        agent_reply(
            notice,
            ALICE,
            "Printer 4711 fuser failure, needs a replacement part.",
            subject_extra=" #escalate engineering",
        )
    )
    sent = world.wait_mail(3)
    show(sent)
    return next(m for m in sent if m.rcpt_tos[0] == BOB)


def bob_closes(world: World, notice: Captured) -> None:
    """Step 5, until the daemon has handled the rating too."""
    step("5. Bob in engineering closes it with the resolution; the customer rates it")
    world.deliver(
        agent_reply(notice, BOB, "#close\nWe replaced the fuser unit; the printer works again.")
    )
    sent = world.wait_mail(2)
    show(sent)
    closing = next(m for m in sent if m.rcpt_tos[0] == CUSTOMER)
    world.deliver(
        mail(
            CUSTOMER,
            SUPPORT,
            f"Re: {closing.message['Subject']}",
            "5 Quick and friendly, thanks!",
            reply_to=closing,
        )
    )
    world.wait_handled(7)


def main(*, keep: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="maildesk-demo-") as tmp:
        world = World(Path(tmp))
        world.start()
        try:
            walk(world)
            print(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
            if keep:
                print(
                    "\nThe mail world keeps running (Ctrl-C to stop):\n"
                    f"  IMAP  127.0.0.1:{world.imap.port}  user {SUPPORT}  password {PASSWORD}  (no TLS)\n"
                    f"  SMTP  127.0.0.1:{world.smtp.port}  (no login; delivers into the IMAP mailboxes)\n"
                    f"  Every address has a mailbox: log in as {CUSTOMER}, {ALICE} or {BOB}\n"
                    f"  with password {PASSWORD} to read what the desk sent them, and reply\n"
                    f"  through the SMTP server: mail to {SUPPORT} reaches the desk.\n"
                    f"  config {world.config_path}\n"
                    f"  try:  MAILDESK_CONFIG={world.config_path} maildesk tickets list"
                )
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    pass
        except TimeoutError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
        finally:
            world.stop()
    os.environ.pop("MAILDESK_DEMO", None)
    return 0
