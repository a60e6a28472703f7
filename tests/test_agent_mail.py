"""An agent's mail without a ticket ref: the personal desk address proves it, ``#new`` starts a
conversation, and a forged one does nothing.

Mail that names no ticket carries no reply token, so each agent has a personal desk address
(``maildesk agents address``). Mail from the agent to it, or with a trusted
``Authentication-Results``, is theirs; ``#new <address>`` on its first line opens a ticket for a
customer and mails them the agent's text. Anything else in an agent's name without a ref acts
on nothing, is never a customer's ticket about the agent, stays in quarantine, and the agent is
told how to use their address. Every test runs the real daemon against pymap and Dovecot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from maildesk.demo.world import Captured
from maildesk.service.wiring import desk_for
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    CUSTOMER,
    Clock,
    DeskWorld,
    customer_mail,
    reply_to_address,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

AR = "Authentication-Results"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server,
        smtp_server,
        tmp_path,
        clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC)),
        tables={"security": {"trusted_authserv_ids": ["mx.example.com"]}},
    )
    yield w
    w.close()


def personal_address(world: DeskWorld, agent: str = ALICE) -> str:
    """What ``maildesk agents address`` prints for ``agent``."""
    done = world.cli("agents", "address", agent)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def new_mail(to: str, body: str, *, sender: str = ALICE, subject: str = "Your invoice 42") -> Any:
    return customer_mail(subject, body, sender=sender, to=to)


def quarantined(world: DeskWorld) -> list[dict[str, Any]]:
    done = world.cli("quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def only_to(world: DeskWorld, address: str) -> list[Captured]:
    """Every mail the desk sent, checked to have gone to ``address`` alone."""
    assert [list(m.rcpt_tos) for m in world.smtp.messages] == [[address]] * len(world.smtp.messages)
    return world.mails_to(address)


# --------------------------------------------------------------------------- the address


def test_each_agent_has_a_personal_address_that_a_new_version_revokes(world: DeskWorld) -> None:
    local, domain = world.address.split("@")
    alice = personal_address(world)
    assert re.fullmatch(rf"{local}\+a-[a-z2-7]{{16}}@{re.escape(domain)}", alice)
    assert personal_address(world, BOB) != alice
    assert personal_address(world, ALICE.upper()) == alice
    unknown = world.cli("agents", "address", "nobody@example.com")
    assert unknown.returncode == 1
    assert b"no agent nobody@example.com" in unknown.stderr

    agents = world.tables["agents"]
    agents[0] = {**agents[0], "address_version": 2}
    world.rewrite_config()
    assert personal_address(world) not in (alice, "")
    agents[0] = {**agents[0], "address_version": 0}
    world.rewrite_config()
    refused = world.cli("agents", "address", ALICE)
    assert refused.returncode == 78
    assert b"[[agents]] #1 address_version: must be positive, got 0" in refused.stderr


def test_mail_to_a_revoked_address_proves_nothing(world: DeskWorld) -> None:
    old = personal_address(world)
    agents = world.tables["agents"]
    agents[0] = {**agents[0], "address_version": 2}
    world.rewrite_config()
    world.settings = world.load_settings()
    world.desk = desk_for(world.settings, clock=world.clock)

    world.deliver(new_mail(old, "#new dana@customer.test\n\nHello Dana."))
    world.run_once()
    assert world.tickets() == []
    [notice] = only_to(world, ALICE)
    assert "not yours, or no longer valid" in " ".join(text_of(notice).split())
    assert personal_address(world) in text_of(notice)


# --------------------------------------------------------------------------- #new


def test_new_starts_a_conversation_the_customer_answers_into(world: DeskWorld) -> None:
    body = (
        # the addresses as a mail client writes them, a name before them
        "#new Dana Example <Dana@Customer.test>\n#tag billing\n#priority high\n"
        '#cc "Erin, Accounts" <erin@customer.test>\n\n'
        "Hello Dana,\n\nyour invoice 42 is ready; it is attached to your account.\n\nAlice"
    )
    world.deliver(new_mail(personal_address(world), body, subject="Fwd: Your invoice 42"))
    world.run_once()

    [ticket] = world.tickets()
    assert ticket["requester"] == CUSTOMER
    assert (ticket["status"], ticket["assignee"], ticket["priority"]) == ("pending", ALICE, "high")
    assert ticket["tags"] == ["billing"]
    assert ticket["subject"] == "Your invoice 42"
    [first] = world.mails_to(CUSTOMER)
    assert str(first.message["Subject"]) == "[#1] Your invoice 42"
    assert "erin@customer.test" in str(first.message["Cc"])  # #cc applies before the mail
    assert " ".join(text_of(first).split()).startswith("Hello Dana, your invoice 42 is ready")
    assert "#" not in text_of(first).split("--")[0]
    assert "Auto-Submitted" not in first.message  # a person's words
    [receipt] = world.mails_to(ALICE)
    assert str(receipt.message["Subject"]).startswith("[#1] Done")
    said = " ".join(text_of(receipt).split())
    assert "started a conversation with dana@customer.test" in said
    assert "assigned to you (Alice Smith <alice@example.com>)" in said

    world.deliver(customer_mail("Re: [#1] Your invoice 42", "Thanks, paid today.", reply_to=first))
    world.run_once()
    assert len(world.tickets()) == 1
    answered = world.ticket(1)
    assert answered["status"] == "open"
    assert answered["messages"][-1]["from"] == CUSTOMER
    assert answered["messages"][-1]["text"] == "Thanks, paid today."
    assert world.mails_to(ALICE)[-1].message["Subject"] is not None  # she is told


def test_new_takes_the_agents_file_to_the_customer(world: DeskWorld) -> None:
    pdf = b"%PDF-1.4 invoice 42\n%%EOF\n"
    mail = new_mail(personal_address(world), "#new dana@customer.test\n\nYour invoice.")
    mail.add_attachment(pdf, maintype="application", subtype="pdf", filename="invoice-42.pdf")
    world.deliver(mail)
    world.run_once()
    [first] = world.mails_to(CUSTOMER)
    [part] = list(first.message.iter_attachments())
    assert (part.get_filename(), part.get_content()) == ("invoice-42.pdf", pdf)
    [receipt] = world.mails_to(ALICE)
    assert "invoice-42.pdf" in text_of(receipt)


def test_a_trusted_verdict_proves_new_as_today(world: DeskWorld) -> None:
    mail = new_mail(world.address, "#new dana@customer.test\n\nHello Dana, a question.")
    raw = f"{AR}: mx.example.com; dmarc=pass header.from=example.com\r\n".encode()
    world.deliver(raw + mail.as_bytes())
    world.run_once()
    [ticket] = world.tickets()
    assert (ticket["requester"], ticket["status"]) == (CUSTOMER, "pending")
    [first] = world.mails_to(CUSTOMER)
    assert text_of(first).startswith("Hello Dana, a question.")


MALFORMED = {
    "no-address": ("#new\n\nHello.", "#new: name the customer's address"),
    "not-an-address": ("#new dana\n\nHello.", "#new dana: dana is not a mail address"),
    "desk-address": ("#new {desk}\n\nHello.", "is the desk's own address"),
    "personal-address": ("#new {personal}\n\nHello.", "is the desk's own address"),
    "agent": ("#new bob@example.com\n\nHello.", "bob@example.com is an agent of this desk"),
    "text-on-its-line": ("#new dana@customer.test Hello Dana", "#new takes one address; write"),
    "two": ("#new dana@customer.test, eve@customer.test\n\nHi.", "#cc the others on a line"),
    "twice": ("#new dana@customer.test\n#new eve@customer.test\n\nHi.", "one #new per message"),
    "nothing-to-send": ("#new dana@customer.test\n#tag billing", "nothing to send"),
    "close": ("#new dana@customer.test\n#close\n\nHi.", "#close: cannot come with #new"),
    "unknown": ("#new dana@customer.test\n#frobnicate\n\nHi.", "#frobnicate: unknown command"),
}


@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_new_is_refused_with_its_reason(
    world: DeskWorld, case: tuple[str, str]
) -> None:
    personal = personal_address(world)
    body, reason = case
    world.deliver(new_mail(personal, body.format(desk=world.address, personal=personal)))
    world.run_once()
    assert world.tickets() == []
    [receipt] = only_to(world, ALICE)  # nobody else is mailed
    assert str(receipt.message["Subject"]) == "Not started: Your invoice 42"
    said = " ".join(text_of(receipt).split())
    assert "started nothing, because:" in said
    assert reason in said
    assert reply_to_address(receipt) == personal
    assert quarantined(world) == []


def test_a_proven_mail_that_asks_nothing_gets_a_receipt_not_a_ticket(world: DeskWorld) -> None:
    world.deliver(new_mail(personal_address(world), "Hi team, lunch at noon?", subject="Lunch"))
    world.run_once()
    assert world.tickets() == []
    [receipt] = only_to(world, ALICE)
    assert str(receipt.message["Subject"]) == "Not started: Lunch"
    assert "#new <customer address>" in text_of(receipt)
    said = " ".join(text_of(receipt).split())  # "my tickets" in words: the queries are named
    assert "It also answers queries, and changes nothing: #list (your open tickets)" in said


# --------------------------------------------------------------------------- forged


def test_forged_agent_mail_without_her_token_does_nothing_and_she_is_told_once(
    world: DeskWorld,
) -> None:
    local, domain = world.address.split("@")
    forged_to = [
        world.address,  # the plain desk address
        personal_address(world, BOB),  # someone else's personal address
        f"{local}+a-{'a' * 16}@{domain}",  # a made-up token
    ]
    for to in forged_to:
        body = "#new victim@customer.test\n\nYour account is locked: pay at http://evil.test"
        world.deliver(new_mail(to, body, subject="Account locked #close"))
    world.run_once()

    assert world.tickets() == []  # no ticket about Alice, none for the victim
    [notice] = only_to(world, ALICE)  # told once, nobody else mailed
    said = " ".join(text_of(notice).split())
    assert "could not be verified" in said
    # what to do: send it again to her address, given on a line of its own; a replay is the
    # administrator's, and only by the trusted verdict this desk reads
    assert "If you sent it, send it again to your personal desk address:" in said
    assert f"\n    {personal_address(world)}\n" in text_of(notice).replace("\r\n", "\n")
    assert "handle it again (maildesk quarantine replay) if it carries the trusted" in said
    assert "once it can be verified" not in said
    assert reply_to_address(notice) == personal_address(world)
    assert "#close" not in str(notice.message["Subject"])  # a forger's subject commands nothing
    entries = quarantined(world)
    assert [e["error"].split(":")[0] for e in entries] == ["unverified agent mail"] * 3
    assert len(world.account.uids("Quarantine")) == 3

    # an hour later, the next one is told, with the count of those held back
    world.clock.advance(hours=1, minutes=1)
    world.deliver(new_mail(world.address, "#new victim@customer.test\n\nPay now."))
    world.run_once()
    [_, second] = only_to(world, ALICE)
    assert "3 messages without a ticket ref claiming to be from you" in " ".join(
        text_of(second).split()
    )


def test_quarantined_agent_mail_is_replayed_once_it_can_be_verified(world: DeskWorld) -> None:
    world.deliver(new_mail(world.address, "#new dana@customer.test\n\nHello Dana."))
    world.run_once()
    [entry] = quarantined(world)
    assert world.tickets() == []

    # the admin has the receiving MTA's verdicts trusted... here: agent_auth relaxed for it
    world.rewrite_config(security={"agent_auth": "none"})
    done = world.cli("quarantine", "replay", str(entry["id"]))
    assert done.returncode == 0, done.stderr
    assert b"new_ticket [#1]" in done.stdout
    [ticket] = world.tickets()
    assert (ticket["requester"], ticket["assignee"]) == (CUSTOMER, ALICE)
    assert text_of(world.wait_mails_to(CUSTOMER, 1)[0]).startswith("Hello Dana.")
    assert quarantined(world) == []


# --------------------------------------------------------------------------- forwards

MAIL = Path(__file__).parent / "mail"

# the corpus of forwarded mail (Alice forwards a customer's mail to the desk): file, the
# original sender, the forwarded subject and text, the files, Alice's own words
FORWARDS = {
    "gmail": (
        "forward-gmail-english.eml",
        "carol@example.org",
        "Printer on floor 2 is broken",
        "Hello,\n\nthe printer on floor 2 prints only blank pages since this morning.\n"
        "The error log is attached.\n\nThanks,\nCarol",
        ["printer-log.pdf"],
        "Hi team,\n\ncan someone look at this? Carol is on floor 2.",
    ),
    "outlook": (
        "forward-outlook-english.eml",
        "carol@example.org",
        "VPN drops every ten minutes",
        "Hi,\n\nmy VPN connection drops every ten minutes since the update.\n\nCarol",
        [],
        "Forwarding as discussed.\n\nAlice",
    ),
    "outlook-html": (
        "forward-outlook-html.eml",
        "carol@example.org",
        "Invoice 2026-118 is wrong",
        "Hello,\n\ninvoice 2026-118 charges us twice for the March licence. "
        "A screenshot is attached.\n\nCarol",
        ["invoice.png"],
        "Please handle this one, she is a key account.",
    ),
    "apple-mail": (
        "forward-apple-mail-english.eml",
        "carol@example.org",
        "Laptop will not charge",
        "Hi,\n\nmy laptop stopped charging yesterday. I tried two chargers.\n\nCarol",
        [],
        "See below, can you help her?\n\nSent from my iPad",
    ),
    "attached-eml": (
        "forward-attached-eml.eml",
        "carol@example.org",
        "Contract renewal questions",
        "Hello,\n\nbefore we renew: is the support plan still 24/7?",
        ["contract-2025.pdf"],
        "Renewal question from Carol, attached. #priority high\n\nAlice",
    ),
}


def addressed(name: str, to: str) -> bytes:
    """A mail of the corpus with its To: header (in the header block) made ``to``."""
    raw = (MAIL / name).read_bytes()
    head, sep, body = raw.partition(b"\r\n\r\n") if b"\r\n\r\n" in raw else raw.partition(b"\n\n")
    eol = b"\r\n" if sep == b"\r\n\r\n" else b"\n"
    lines = head.split(eol)
    index = next(i for i, line in enumerate(lines) if line.lower().startswith(b"to:"))
    lines[index] = b"To: " + to.encode()
    while index + 1 < len(lines) and lines[index + 1][:1] in (b" ", b"\t"):
        del lines[index + 1]  # a folded To: goes with it
    return eol.join(lines) + sep + body


@pytest.mark.parametrize("case", FORWARDS.values(), ids=FORWARDS.keys())
def test_a_forward_opens_a_ticket_for_the_original_sender(
    world: DeskWorld, case: tuple[str, str, str, str, list[str], str]
) -> None:
    name, sender, subject, text, files, note = case
    world.deliver(addressed(name, personal_address(world)))
    world.run_once()

    [ticket] = world.tickets()
    assert (ticket["requester"], ticket["subject"], ticket["status"]) == (sender, subject, "open")
    first, *rest = ticket["messages"]
    assert (first["from"], first["internal"]) == (sender, False)
    assert first["text"].startswith(text)
    assert [a["filename"] for a in first["attachments"]] == files
    [kept] = rest  # Alice's words: an internal note, without the files again
    assert (kept["from"], kept["internal"], kept["text"]) == (ALICE, True, note)
    assert kept["attachments"] == []

    [ack] = world.mails_to(sender)  # as if she had written to the desk
    assert str(ack.message["Subject"]).startswith("[#1]")
    assert note.split("\n")[0] not in text_of(ack)  # Alice's words are never mailed to her
    [receipt] = world.mails_to(ALICE)  # she gets her receipt alone, no notice of her forward
    assert "Done" in str(receipt.message["Subject"])
    said = " ".join(text_of(receipt).split())
    assert f"opened a ticket for {sender} from the mail you forwarded" in said
    assert quarantined(world) == []
    if name == "forward-gmail-english.eml":  # "#assign me": she took it, nobody else is told
        assert world.mails_to(CAROL_AGENT) == []
        return
    [notice] = world.mails_to(CAROL_AGENT)  # the rest of her team
    assert f"[#1] New: {subject}" == str(notice.message["Subject"])
    assert [p.get_filename() for p in notice.message.iter_attachments()] == files
    told = " ".join(text_of(notice).split())
    assert f"from {sender}, forwarded by Alice Smith <{ALICE}>." in told
    assert " ".join(f"Alice Smith wrote: {note} The forwarded message:".split()) in told
    assert " ".join(text.split()) in told


def test_commands_above_a_forward_apply_to_its_ticket(world: DeskWorld) -> None:
    # Gmail leaves "#assign me" right above the forward; the top of the words works too
    raw = addressed("forward-outlook-english.eml", personal_address(world))
    raw = raw.replace(b"Forwarding as discussed.", b"#tag vpn\n#priority high\n\nForwarding.")
    world.deliver(addressed("forward-gmail-english.eml", personal_address(world)))
    world.deliver(raw)
    world.run_once()
    gmail, outlook = world.tickets()
    assert gmail["assignee"] == ALICE
    assert (outlook["tags"], outlook["priority"], outlook["assignee"]) == (["vpn"], "high", None)
    assert outlook["messages"][1]["text"] == "Forwarding.\n\nAlice"


def assigning_round_robin(world: DeskWorld) -> None:
    """The support team (Alice, Carol White) takes turns at new tickets from now on."""
    world.tables["teams"] = [{"name": "support", "assign": "round_robin"}, {"name": "engineering"}]
    world.rewrite_config()
    world.desk.close()
    world.settings = world.load_settings()
    world.desk = desk_for(world.settings, clock=world.clock)


def test_a_forward_assigned_to_a_colleague_tells_her_alone_once(world: DeskWorld) -> None:
    assigning_round_robin(world)  # Alice's turn first: her #assign must win over it
    raw = addressed("forward-attached-eml.eml", personal_address(world)).replace(
        b"Alice\r\n", b"Alice\r\n\r\n#assign carol@example.com\r\n#priority high\r\n", 1
    )
    world.deliver(raw)
    world.run_once()

    [ticket] = world.tickets()
    assert (ticket["assignee"], ticket["priority"]) == (CAROL_AGENT, "high")
    assigned = [e for e in world.ticket(1)["events"] if e["kind"] == "assigned"]
    assert [e["actor"] for e in assigned] == [ALICE]  # no turn of the team taken
    [notice] = world.mails_to(CAROL_AGENT)  # one notice, the customer's mail in it
    assert str(notice.message["Subject"]) == "[#1] Assigned to you: Contract renewal questions"
    told = " ".join(text_of(notice).split())
    assert f"from carol@example.org, forwarded by Alice Smith <{ALICE}>, who assigned" in told
    assert "Alice Smith wrote: Renewal question from Carol, attached. #priority high" in told
    assert "before we renew: is the support plan still 24/7?" in told
    assert "#assign carol" not in told  # her commands are not her note
    assert [p.get_filename() for p in notice.message.iter_attachments()] == ["contract-2025.pdf"]
    [receipt] = world.mails_to(ALICE)
    assert "Done" in str(receipt.message["Subject"])
    assert f"assigned to Carol White <{CAROL_AGENT}>" in " ".join(text_of(receipt).split())
    assert world.mails_to(BOB) == []


def test_a_forward_its_agent_assigns_herself_tells_nobody_else(world: DeskWorld) -> None:
    assigning_round_robin(world)
    world.deliver(addressed("forward-gmail-english.eml", personal_address(world)))  # #assign me
    world.run_once()

    [ticket] = world.tickets()
    assert ticket["assignee"] == ALICE
    [receipt] = world.mails_to(ALICE)  # her receipt alone
    said = " ".join(text_of(receipt).split())
    assert f"assigned to you (Alice Smith <{ALICE}>)" in said
    assert world.mails_to(CAROL_AGENT) == world.mails_to(BOB) == []
    assert [list(m.rcpt_tos) for m in world.smtp.messages if ALICE not in m.rcpt_tos] == [
        ["carol@example.org"]  # the customer's acknowledgment
    ]


def test_an_unassigned_forward_tells_the_team_but_its_agent(world: DeskWorld) -> None:
    world.deliver(addressed("forward-outlook-english.eml", personal_address(world)))
    world.run_once()

    [ticket] = world.tickets()
    assert ticket["assignee"] is None
    [notice] = world.mails_to(CAROL_AGENT)
    assert str(notice.message["Subject"]) == "[#1] New: VPN drops every ten minutes"
    told = " ".join(text_of(notice).split())
    assert f"forwarded by Alice Smith <{ALICE}>" in told
    assert "Alice Smith wrote: Forwarding as discussed. Alice" in told
    [receipt] = world.mails_to(ALICE)  # her receipt alone
    assert str(receipt.message["Subject"]).startswith("[#1] Done")


def test_no_acknowledgment_for_a_forward_when_the_desk_says_so(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> None:
    world = DeskWorld(
        imap_server, smtp_server, tmp_path, tables={"lifecycle": {"ack_forwarded": False}}
    )
    try:
        world.deliver(addressed("forward-outlook-english.eml", personal_address(world)))
        world.run_once()
        assert [t["requester"] for t in world.tickets()] == ["carol@example.org"]
        assert world.mails_to("carol@example.org") == []
    finally:
        world.close()


REFUSED_FORWARDS = {
    "name-only": (
        b"From: Carol Customer <carol@example.org>",
        b"From: Carol Customer",
        "shows its sender without an address",
    ),
    "from-an-agent": (b"carol@example.org", b"bob@example.com", "is an agent of this desk"),
    "a-close": (
        b"Forwarding as discussed.",
        b"#close\n\nForwarding.",
        "#close: cannot come with a forward",
    ),
}


@pytest.mark.parametrize("case", REFUSED_FORWARDS.values(), ids=REFUSED_FORWARDS.keys())
def test_a_forward_that_names_no_customer_is_refused_with_its_reason(
    world: DeskWorld, case: tuple[bytes, bytes, str]
) -> None:
    old, new, reason = case
    raw = addressed("forward-outlook-english.eml", personal_address(world)).replace(old, new)
    world.deliver(raw)
    world.run_once()
    assert world.tickets() == []
    [receipt] = only_to(world, ALICE)
    assert str(receipt.message["Subject"]) == "Not started: VPN drops every ten minutes"
    assert reason in " ".join(text_of(receipt).split())


def test_a_forged_forward_opens_nothing(world: DeskWorld) -> None:
    world.deliver(addressed("forward-gmail-english.eml", world.address))
    world.run_once()
    assert world.tickets() == []
    [notice] = only_to(world, ALICE)
    assert "could not be verified" in text_of(notice)
    [entry] = quarantined(world)
    assert entry["error"].startswith("unverified agent mail")


def test_a_new_below_other_text_is_refused_with_where_it_goes(world: DeskWorld) -> None:
    body = "Hi Dana,\n\n#new dana@customer.test\n\nYour order shipped today."
    world.deliver(new_mail(personal_address(world), body))
    world.run_once()
    assert world.tickets() == []
    [receipt] = only_to(world, ALICE)
    said = " ".join(text_of(receipt).split())
    assert "#new must be on the first line of your message, above your text" in said
    assert "asked to start none" not in said


def test_a_personal_address_shown_to_a_customer_is_told_to_its_agent(world: DeskWorld) -> None:
    """She copied a customer on her mail to her personal address: the customer now holds what
    proves mail as hers. What she asked is done; she is told with whom it was shown and how to
    have a new one, once an hour; mail that showed it to the desk and agents alone says nothing."""
    address = personal_address(world)
    mail = new_mail(address, "#new dana@customer.test\n\nHello Dana.")
    mail["Cc"] = "Dana <dana@customer.test>, Bob <bob@example.com>, erin@customer.test"
    world.deliver(mail)
    world.run_once()

    assert [t["requester"] for t in world.tickets()] == [CUSTOMER]  # done as usual
    [told] = [m for m in world.mails_to(ALICE) if "was shown" in str(m.message["Subject"])]
    said = " ".join(text_of(told).split())
    assert (
        f"went to your personal desk address {address} and also to: dana@customer.test erin@customer.test They can see"
        in said
    )
    assert "bob@example.com" not in said  # an agent
    assert "raise address_version" in said
    assert not world.mails_to("erin@customer.test")  # only the agent hears of it

    # again within the hour: held back, counted in the next one
    again = new_mail(address, "#new erin@customer.test\n\nHello Erin.", subject="Two")
    again["Cc"] = "erin@customer.test"
    world.deliver(again)
    world.run_once()
    assert len([m for m in world.mails_to(ALICE) if "was shown" in str(m.message["Subject"])]) == 1

    # to the desk and an agent alone: nothing to tell
    world.clock.advance(hours=2)
    quiet = new_mail(address, "#new dana@customer.test\n\nHello again.", subject="Three")
    quiet["Cc"] = "bob@example.com"
    world.deliver(quiet)
    world.run_once()
    assert len([m for m in world.mails_to(ALICE) if "was shown" in str(m.message["Subject"])]) == 1
