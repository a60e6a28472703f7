"""One-tap actions: a notice to an agent ends with ``mailto:`` links (plain lines in its text,
buttons in its HTML) that open a mail to the notice's token address with the command in it.

Each test follows a link as a phone's mail client does: the URL is read from the delivered
notice, decoded as RFC 6068 says, and the mail it opens is sent through the real daemon against
pymap and Dovecot. The token in the address proves the agent; the link proves nothing, so a
customer who has one can act with it on nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from maildesk.act import notices, samples
from maildesk.demo.world import Captured
from maildesk.mail.actions import Action, mailto
from maildesk.models import Status
from tests.desk import (
    ALICE,
    BOB,
    CAROL_AGENT,
    CUSTOMER,
    Clock,
    DeskWorld,
    customer_mail,
    html_of,
    reply_to_address,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(
        imap_server, smtp_server, tmp_path, clock=Clock(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    )
    yield w
    w.close()


def text_links(notice: Captured) -> dict[str, str]:
    """The links of a notice's text part, by label ("Take it: mailto:...")."""
    return dict(re.findall(r"^([^:\n]+): (mailto:\S+)\r?$", text_of(notice), re.MULTILINE))


def html_links(notice: Captured) -> dict[str, str]:
    """The buttons of a notice's HTML part, by label, their URLs as a browser reads them."""
    page = html_of(notice) or ""
    found = re.findall(r'<a href="(mailto:[^"]+)"[^>]*>([^<]+)</a>', page)
    return {html.unescape(label): html.unescape(url) for url, label in found}


def opened(url: str) -> tuple[str, str, str]:
    """The address, subject and body of the mail a client opens for ``url`` (RFC 6068)."""
    parts = urlsplit(url)
    assert parts.scheme == "mailto"
    fields = dict(pair.split("=", 1) for pair in parts.query.split("&"))
    return unquote(parts.path), unquote(fields["subject"]), unquote(fields["body"])


def follow(world: DeskWorld, url: str, sender: str, typed: str = "") -> None:
    """Tap the link, type ``typed`` after the prefilled line, send (a phone's signature below)."""
    to, subject, body = opened(url)
    mail = customer_mail(subject, f"{body}{typed}\r\n\r\nSent from my iPhone", sender=sender, to=to)
    world.deliver(mail)
    world.run_once()


def new_ticket(world: DeskWorld, subject: str = "Printer broken") -> dict[str, Captured]:
    world.deliver(customer_mail(subject, "It jams on every page."))
    world.run_once()
    return {agent: world.wait_mails_to(agent, 1)[-1] for agent in (ALICE, CAROL_AGENT)}


def test_a_notice_offers_the_links_its_reader_can_use_in_both_parts(world: DeskWorld) -> None:
    notice = new_ticket(world)[ALICE]
    labels = ["Take it", "Close", "Internal note", "Escalate to engineering"]
    assert list(text_links(notice)) == labels
    assert text_links(notice) == html_links(notice)
    address = reply_to_address(notice)
    for label, line in zip(
        labels, ["#assign me", "#close", "#note ", "#escalate engineering "], strict=True
    ):
        assert opened(text_links(notice)[label]) == (
            address,
            f"Re: {notice.message['Subject']}",
            line,
        )
    # the commands' footer stays, the links after it
    text = text_of(notice)
    assert text.index("reply with #help") < text.index("Take it: mailto:")
    assert "<script" not in (html_of(notice) or "") and "http" not in (html_of(notice) or "")


def test_following_each_link_does_what_it_says(world: DeskWorld) -> None:
    notice = new_ticket(world)[ALICE]
    links, buttons = text_links(notice), html_links(notice)

    follow(world, links["Take it"], ALICE)
    assert world.ticket(1)["assignee"] == ALICE
    follow(world, buttons["Internal note"], ALICE, "The toner is empty, ordered one.")
    notes = [m for m in world.ticket(1)["messages"] if m["internal"]]
    assert [n["text"] for n in notes] == ["The toner is empty, ordered one."]
    follow(world, buttons["Escalate to engineering"], ALICE, "Firmware bug?")
    assert (world.ticket(1)["team"], world.ticket(1)["status"]) == ("engineering", "escalated")
    follow(world, links["Close"], ALICE)
    assert world.ticket(1)["status"] == "closed"

    # the customer heard of the escalation and the closing, never of a signature or a link
    to_customer = world.mails_to(CUSTOMER)
    assert len(to_customer) == 3  # acknowledgment, escalated, closed
    for mail in to_customer:
        assert "mailto:" not in text_of(mail) + (html_of(mail) or "")
        assert "iPhone" not in text_of(mail)


def test_the_assignee_is_not_offered_her_own_ticket(world: DeskWorld) -> None:
    notice = new_ticket(world)[ALICE]
    follow(world, text_links(notice)["Take it"], ALICE)
    world.deliver(customer_mail("Re: [#1] Printer broken", "Still broken."))
    world.run_once()
    replied = world.wait_mails_to(ALICE, 3)[-1]
    assert "Customer replied" in str(replied.message["Subject"])
    assert list(text_links(replied)) == ["Close", "Internal note", "Escalate to engineering"]
    # her receipt answers what she did: no links in it, an HTML part all the same
    receipt = next(m for m in world.mails_to(ALICE) if "Done:" in str(m.message["Subject"]))
    assert text_links(receipt) == {} and html_links(receipt) == {}
    assert html_of(receipt) is not None


def test_a_link_in_a_customers_hands_acts_on_nothing(world: DeskWorld) -> None:
    notice = new_ticket(world)[ALICE]
    close = text_links(notice)["Close"]
    # the customer sends the link's mail from her own address, and quotes it in a reply
    follow(world, close, CUSTOMER)
    world.deliver(customer_mail("Re: [#1] Printer broken", f"My friend said to use {close}"))
    world.run_once()
    ticket = world.ticket(1)
    assert ticket["status"] != "closed"
    # another agent with the link is not the agent it was made for either
    follow(world, text_links(notice)["Take it"], BOB)
    assert world.ticket(1)["assignee"] is None


def test_a_notice_pasted_into_a_reply_gives_the_customer_no_token_address(
    world: DeskWorld,
) -> None:
    """Her client put the notice below her answer without quote marks: the customer gets the
    words, and the desk's plain address where the notice had its token address."""
    notice = new_ticket(world)[ALICE]
    token_address = reply_to_address(notice)
    pasted = text_of(notice)
    assert token_address in pasted
    world.deliver(
        customer_mail(
            f"Re: {notice.message['Subject']}",
            f"Try another tray, please.\r\n\r\n{pasted}",
            sender=ALICE,
            to=token_address,
        )
    )
    world.run_once()
    [ack, reply] = world.wait_mails_to(CUSTOMER, 2)
    shown = text_of(reply) + (html_of(reply) or "")
    assert "Try another tray, please." in shown
    assert token_address.split("@")[0] not in shown.lower()
    # every address of the desk's shown is its plain one: mail to it from the customer is hers
    domain = world.settings.desk.address.split("@")[1]
    shown_addresses = re.findall(rf"[\w.+-]+@{re.escape(domain)}", shown)
    assert shown_addresses and set(shown_addresses) == {world.settings.desk.address}


def test_a_subject_that_breaks_urls_and_html_stays_inside_its_link(world: DeskWorld) -> None:
    subject = 'Q&A "urgent" <b>50% off?</b> #close é€ 😀'
    notice = new_ticket(world, subject)[ALICE]
    links, buttons = text_links(notice), html_links(notice)
    assert links == buttons and len(links) == 4
    for url in links.values():
        assert re.fullmatch(r"mailto:[A-Za-z0-9@.+_~-]+\?subject=[A-Za-z0-9%._~-]*&body=\S*", url)
    to, opened_subject, _ = opened(links["Close"])
    assert opened_subject == f"Re: {notice.message['Subject']}"
    assert "\uff03close" in opened_subject  # the customer's #close is defanged, never a command
    assert "<b>" not in (html_of(notice) or "")
    follow(world, links["Take it"], ALICE)
    assert (world.ticket(1)["assignee"], world.ticket(1)["status"]) == (ALICE, "open")


def test_the_url_is_percent_encoded_as_rfc_6068_says() -> None:
    url = mailto("desk+t-ab@exämple.com", "Re: [#1] a&b=c?d %", "#note \nline 2 ü")
    assert url == (
        "mailto:desk+t-ab@ex%C3%A4mple.com"
        "?subject=Re%3A%20%5B%231%5D%20a%26b%3Dc%3Fd%20%25"
        "&body=%23note%20%0D%0Aline%202%20%C3%BC"
    )
    # a newline in a subject cannot start a header of the mail it opens
    assert "%0A" not in mailto("a@b", "one\ntwo", "")
    # a team name may hold any letter ([[teams]] name): it comes back as written
    team = "größe.2_x-y"
    assert opened(mailto("a@b", "s", f"#escalate {team} "))[2] == f"#escalate {team} "


def test_no_mail_to_a_customer_carries_links(world: DeskWorld) -> None:
    """Every customer template, with every sample the check renders, composed as sent."""
    desk = world.desk
    customer_templates = [
        name for name in samples.contexts(desk) if not name.startswith(("agent_", "admin"))
    ]
    assert {"ack", "reply", "closed", "escalated", "reminder", "merged"} <= set(customer_templates)
    now = world.clock()
    ticket = samples.sample_ticket(desk, Status.OPEN)
    for name in customer_templates:
        for context in samples.contexts(desk)[name]:
            template = "canned/thanks" if name == "canned" else name
            # the mail as the lifecycle makes it, with the sample's context
            mail = replace(notices.customer_mail(desk, ticket, name, template), context=context)
            rendered = desk.mailer.templates.render(template, desk.mailer.context(mail))
            draft = desk.mailer.draft(mail, rendered, "id@example.com", now)
            assert mail.actions == ()
            assert "mailto:" not in (draft.text or "") + (draft.html or ""), name
    notice = notices.agent_mail(desk, ticket, desk.settings.agents[0], "notice", "agent_new", now)
    assert Action("Close", "#close") in notice.actions
