"""Forwarded mail: who wrote the forwarded message, its subject, text and files, as parsed.

The corpus ``tests/mail/forward-*.eml`` is written the way Gmail, Outlook (plain and HTML),
Apple Mail, Thunderbird and mutt forward, in English, German, French and Spanish, inline and as
an attached message. A reply is never a forward, nor is a customer's prose that starts a line
with "From:". Hostile shapes are weighed by their growth, as in ``test_linear``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from maildesk.mail.inbound import Forwarded, Inbound, Limits, parse
from maildesk.mail.parse.forward import inline_forward, mailbox, original_subject
from maildesk.mail.parsing import Budget, Parser
from tests.poison import LINEAR_BOUND, growth

MAIL = Path(__file__).parent / "mail"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def load(name: str, limits: Limits | None = None) -> Inbound:
    return parse((MAIL / name).read_bytes(), limits)


def forwarded(name: str) -> Forwarded:
    found = load(name).forwarded
    assert found is not None, name
    return found


# name, (sender, name, subject, date), the forwarder's words, the forwarded text
CORPUS = [
    (
        "forward-gmail-english.eml",
        ("carol@example.org", "Carol Customer", "Printer on floor 2 is broken"),
        "Mon, Mar 2, 2026 at 9:14\u202fAM",
        "Hi team,\n\ncan someone look at this? Carol is on floor 2.\n\n#assign me",
        "Hello,\n\nthe printer on floor 2 prints only blank pages since this morning.\n"
        "The error log is attached.\n\nThanks,\nCarol",
    ),
    (
        "forward-gmail-german.eml",
        ("carla@example.de", "Carla Kundin", "Drucker im 2. Stock defekt"),
        "Mo., 2. März 2026 um 09:14 Uhr",
        "Hallo zusammen,\n\nbitte übernehmt das.",
        "Guten Tag,\n\nder Drucker im 2. Stock druckt seit heute früh nur leere Seiten.\n\n"
        "Viele Grüße\nCarla",
    ),
    (
        "forward-gmail-french.eml",
        ("claire@example.fr", "Claire Cliente", "Imprimante en panne au 2e étage"),
        "lun. 2 mars 2026 à 09:14",
        "Bonjour,\n\npouvez-vous vous en occuper ?",
        "Bonjour,\n\nl'imprimante du 2e étage n'imprime que des pages blanches depuis ce matin."
        "\n\nCordialement,\nClaire",
    ),
    (
        "forward-gmail-spanish.eml",
        ("carmen@example.es", "Carmen Cliente", "Impresora averiada en la planta 2"),
        "lun, 2 mar 2026 a las 9:14",
        "Hola,\n\n¿alguien puede revisarlo?",
        "Hola,\n\nla impresora de la planta 2 solo imprime páginas en blanco desde esta mañana."
        "\n\nSaludos,\nCarmen",
    ),
    (
        "forward-outlook-english.eml",
        ("carol@example.org", "Carol Customer", "VPN drops every ten minutes"),
        "Monday, March 2, 2026 9:14 AM",
        "Forwarding as discussed.\n\nAlice",
        "Hi,\n\nmy VPN connection drops every ten minutes since the update.\n\nCarol",
    ),
    (
        "forward-outlook-german.eml",
        ("carla@example.de", "Carla Kundin", "VPN bricht alle zehn Minuten ab"),
        "Montag, 2. März 2026 09:14",
        "Zur Info, bitte übernehmen.",
        "Hallo,\n\nmeine VPN-Verbindung bricht seit dem Update alle zehn Minuten ab.\n\nGruß\nCarla",
    ),
    (
        "forward-outlook-french.eml",
        ("claire@example.fr", "Claire Cliente", "Le VPN se coupe toutes les dix minutes"),
        "lundi 2 mars 2026 09:14",
        "Pour traitement, merci.",
        "Bonjour,\n\nma connexion VPN se coupe toutes les dix minutes depuis la mise à jour."
        "\n\nClaire",
    ),
    (
        "forward-outlook-spanish.eml",
        ("carmen@example.es", "Carmen Cliente", "La VPN se corta cada diez minutos"),
        "lunes, 2 de marzo de 2026 9:14",
        "Para vosotros, gracias.",
        "Hola,\n\nmi conexión VPN se corta cada diez minutos desde la actualización.\n\nCarmen",
    ),
    (
        "forward-outlook-html.eml",
        ("carol@example.org", "Carol Customer", "Invoice 2026-118 is wrong"),
        "Monday, March 2, 2026 09:14",
        "Please handle this one, she is a key account.",
        "Hello,\n\ninvoice 2026-118 charges us twice for the March licence. "
        "A screenshot is attached.\n\nCarol",
    ),
    (
        "forward-outlook-html-mailto.eml",
        ("carol@example.org", "Carol Customer", "Cannot log in to the portal"),
        "Monday, March 2, 2026 9:14 AM",
        "Can you look into this?",
        "Hello,\n\nsince Friday the portal says my password is wrong.\n\nCarol",
    ),
    (
        "forward-apple-mail-english.eml",
        ("carol@example.org", "Carol Customer", "Laptop will not charge"),
        "2 March 2026 at 09:14:07 CET",
        "See below, can you help her?\n\nSent from my iPad",
        "Hi,\n\nmy laptop stopped charging yesterday. I tried two chargers.\n\nCarol",
    ),
    (
        "forward-apple-mail-german.eml",
        ("carla@example.de", "Carla Kundin", "Laptop lädt nicht"),
        "2. März 2026 um 09:14:07 MEZ",
        "Siehe unten.",
        "Hallo,\n\nmein Laptop lädt seit gestern nicht mehr.\n\nCarla",
    ),
    (
        "forward-thunderbird.eml",
        ("carol@example.org", "Carol Customer", "Monitor flickers"),
        "Mon, 2 Mar 2026 09:14:00 +0100",
        "Please take this, I am out tomorrow.",
        "Hello,\n\nmy second monitor flickers when the laptop is docked.\n\nCarol",
    ),
    (
        "forward-thunderbird-html.eml",
        ("carol@example.org", "Carol Customer", "Monitor flickers"),
        "Mon, 2 Mar 2026 09:14:00 +0100",
        "Please take this, I am out tomorrow.",
        "Hello,\n\nmy second monitor flickers when the laptop is docked.\n\nCarol",
    ),
    (
        "forward-mutt-quoted.eml",
        ("carol@example.org", "Carol Customer", "Need access to the shared drive"),
        "Mon, 2 Mar 2026 09:14:00 +0100",
        "Carol's mail below; she needs it by Friday.\n\n--\nAlice Agent, Example Support",
        "Hello,\n\nI need write access to the finance share.\n\n"
        "> Earlier: can you add me to the finance group?\n\nCarol",
    ),
]


@pytest.mark.parametrize(
    "name, who, date, note, text", CORPUS, ids=[row[0].removesuffix(".eml") for row in CORPUS]
)
def test_an_inline_forward_names_the_original_sender_subject_and_text(
    name: str, who: tuple[str, str, str], date: str, note: str, text: str
) -> None:
    m = load(name)
    found = forwarded(name)
    assert (found.sender, found.sender_name, found.subject) == who
    assert found.date == date.replace("\u202f", " ")
    assert found.note == note
    assert found.text == text
    assert not found.attached
    assert found.attachments == m.attachments  # an inline forward's files are the mail's own


def test_an_inline_forward_carries_the_mails_files() -> None:
    (pdf,) = forwarded("forward-gmail-english.eml").attachments
    assert (pdf.filename, pdf.payload) == ("printer-log.pdf", PDF)
    (png,) = forwarded("forward-outlook-html.eml").attachments
    assert png.filename == "invoice.png" and png.content_type == "image/png"


def test_an_attached_message_is_the_forward_with_its_own_text_and_files() -> None:
    m = load("forward-attached-eml.eml")
    assert [a.filename for a in m.attachments] == ["Contract renewal questions.eml"]
    found = m.forwarded
    assert found is not None and found.attached
    assert (found.sender, found.sender_name) == ("carol@example.org", "Customer, Carol")
    assert found.subject == "Contract renewal questions"
    assert found.date == "Mon, 2 Mar 2026 09:14:00 +0100"
    assert found.note == "Renewal question from Carol, attached. #priority high\n\nAlice"
    assert found.text.startswith("Hello,\n\nbefore we renew: is the support plan still 24/7?")
    # a forward inside the forwarded message stays its text
    assert found.text.endswith(
        "---------- Forwarded message ---------\nFrom: Legal <legal@example.org>\n"
        "Date: Fri, Feb 27, 2026 at 4:00 PM\nSubject: Renewal\n"
        "To: Carol Customer <carol@example.org>\n\nPlease check the terms."
    )
    (pdf,) = found.attachments
    assert (pdf.filename, pdf.payload, pdf.sha256) == (
        "contract-2025.pdf",
        PDF,
        hashlib.sha256(PDF).hexdigest(),
    )


def test_a_customer_forwarding_a_suspicious_mail_as_an_attachment() -> None:
    found = forwarded("forwarded-rfc822.eml")
    assert (found.sender, found.subject) == ("security@example.com", "Your password was changed")
    assert found.note == "I did not change my password. Is this mail from you?"
    assert found.text.startswith("Your password was changed on 7 June 2024")
    assert found.attachments == ()


def test_an_attached_message_over_the_attachment_limit_is_not_read() -> None:
    m = load("forward-attached-eml.eml", Limits(max_attachment_bytes=100))
    assert m.forwarded is None
    assert "the attached message is over max_attachment_bytes: not read as a forward" in m.defects


def test_the_forward_crosses_from_the_parse_worker_with_its_files() -> None:
    parser = Parser()
    try:
        inline = parser.parse((MAIL / "forward-gmail-english.eml").read_bytes(), Budget())
        attached = parser.parse((MAIL / "forward-attached-eml.eml").read_bytes(), Budget())
    finally:
        parser.close()
    assert inline.forwarded is not None and attached.forwarded is not None
    assert [a.payload for a in inline.forwarded.attachments] == [PDF]
    assert inline.forwarded.attachments == inline.attachments
    assert [a.payload for a in attached.forwarded.attachments] == [PDF]
    assert attached.attachments[0].payload.startswith(b"Return-Path: <carol@example.org>")
    assert attached.forwarded == load("forward-attached-eml.eml").forwarded


# --------------------------------------------------------------------------- not forwards


@pytest.mark.parametrize(
    "name",
    [
        "prose-from-lines.eml",
        "plain-text.eml",
        "reply-gmail.eml",
        "reply-apple-mail.eml",
        "reply-thunderbird.eml",
        "reply-outlook-original-message.eml",
        "reply-outlook-html-divrplyfwdmsg.eml",
        "reply-german-original-message.eml",
        "reply-french-outlook.eml",
        "reply-spanish-outlook.eml",
        "bounce-qmail.eml",
    ],
)
def test_replies_and_prose_are_no_forward(name: str) -> None:
    assert load(name).forwarded is None


OUTLOOK_BLOCK = (
    "Thanks, done.\n\n-----Original Message-----\nFrom: Carol Customer <carol@example.org>\n"
    "Sent: Monday, March 2, 2026 9:14 AM\nTo: Support <support@example.com>\n"
    "Subject: VPN\n\nHi, the VPN drops.\n"
)


def test_an_outlook_block_is_a_forward_only_under_a_forwarding_subject() -> None:
    assert inline_forward(OUTLOOK_BLOCK, "RE: VPN") is None
    assert inline_forward(OUTLOOK_BLOCK, "AW: VPN") is None
    assert inline_forward(OUTLOOK_BLOCK, "VPN") is None
    for subject in ("FW: VPN", "Fwd: VPN", "WG: VPN", "TR : VPN", "RV: VPN", "I: VPN"):
        found = inline_forward(OUTLOOK_BLOCK, subject)
        assert found is not None and found.sender == "carol@example.org", subject
        assert (found.note, found.text) == ("Thanks, done.", "Hi, the VPN drops.")


def test_a_reply_quoting_a_forward_is_a_reply() -> None:
    text = (
        "Sure, I will look.\n\nOn Mon, Mar 2, 2026 at 9:30 AM Bob <bob@example.com> wrote:\n"
        "> ---------- Forwarded message ---------\n> From: Carol <carol@example.org>\n"
        "> Date: Mon, Mar 2, 2026 at 9:14 AM\n> Subject: VPN\n>\n> Hi\n"
    )
    assert inline_forward(text, "Re: Fwd: VPN") is None
    quoted_first = "Sure.\n\n> Carol wrote this\n\n" + OUTLOOK_BLOCK
    assert inline_forward(quoted_first, "FW: VPN") is None


def test_a_forward_quoted_whole_is_a_forward() -> None:
    text = (
        "For you.\n\n> ---------- Forwarded message ---------\n"
        "> From: Carol Customer <carol@example.org>\n> Date: Mon, Mar 2, 2026 at 9:14 AM\n"
        "> Subject: VPN\n> To: <support@example.com>\n>\n> Hi,\n>\n> > an older quote\n"
        "> the VPN drops.\n\nThanks\n"
    )
    found = inline_forward(text, "Fwd: VPN")
    assert found is not None
    assert (found.sender, found.subject) == ("carol@example.org", "VPN")
    assert found.text == "Hi,\n\n> an older quote\nthe VPN drops."
    assert found.note == "For you.\n\nThanks"


def test_only_the_outermost_forward_counts() -> None:
    text = (
        "---------- Forwarded message ---------\nFrom: Bob <bob@example.com>\n"
        "Date: Tue, Mar 3, 2026\nSubject: Fwd: VPN\n\nSee Carol's mail.\n\n"
        "---------- Forwarded message ---------\nFrom: Carol <carol@example.org>\n"
        "Date: Mon, Mar 2, 2026\nSubject: VPN\n\nHi\n"
    )
    found = inline_forward(text, "Fwd: Fwd: VPN")
    assert found is not None and found.sender == "bob@example.com"
    assert found.subject == "VPN" and found.note == ""
    assert found.text.startswith("See Carol's mail.\n\n---------- Forwarded message ---------")


def test_a_marker_without_a_header_block_is_text() -> None:
    assert inline_forward("---------- Forwarded message ---------\nHi there\n", "Fwd: x") is None
    assert inline_forward("Begin forwarded message:\n\nnothing here\n", "Fwd: x") is None


def test_a_sender_named_without_an_address() -> None:
    text = "FYI\n\nFrom: Carol Customer\nSent: Monday, March 2, 2026 9:14 AM\nSubject: VPN\n\nHi\n"
    found = inline_forward(text, "FW: VPN")
    assert found is not None
    assert (found.sender, found.sender_name, found.text) == (None, "Carol Customer", "Hi")


def test_the_outer_subject_stands_in_for_a_block_without_one() -> None:
    text = "---------- Forwarded message ---------\nFrom: carol@example.org\nDate: 2 Mar 2026\n\nHi"
    found = inline_forward(text, "Fwd: FW: Printer")
    assert found is not None and found.subject == "Printer" and found.sender_name == ""


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Carol Customer <Carol@Example.ORG>", ("carol@example.org", "Carol Customer")),
        ("Carol Customer [mailto:carol@example.org]", ("carol@example.org", "Carol Customer")),
        ('"Customer, Carol" <carol@example.org>', ("carol@example.org", "Customer, Carol")),
        ("*Carol Customer* <carol@example.org>", ("carol@example.org", "Carol Customer")),
        ("carol@example.org (Carol Customer)", ("carol@example.org", "Carol Customer")),
        ("<carol@example.org>", ("carol@example.org", "")),
        ("Carol <carol@example.org <mailto:carol@example.org>>", ("carol@example.org", "Carol")),
        ("Carol Customer", (None, "Carol Customer")),
        ("Carol <not an address>", (None, "Carol")),
    ],
)
def test_the_senders_address_and_name_as_clients_write_them(
    value: str, expected: tuple[str | None, str]
) -> None:
    assert mailbox(value) == expected


@pytest.mark.parametrize(
    "subject, expected",
    [
        ("Fwd: Printer", "Printer"),
        ("FW: Fwd: Printer", "Printer"),
        ("WG: Drucker", "Drucker"),
        ("TR : Imprimante", "Imprimante"),
        ("RV: Impresora", "Impresora"),
        ("I: Stampante", "Stampante"),
        ("Fwd[2]: Printer", "Printer"),
        ("Fwd: Re: Printer", "Re: Printer"),
        ("Re: Printer", "Re: Printer"),
        ("Trouble: printer", "Trouble: printer"),
        ("Fwd:", ""),
    ],
)
def test_forwarding_prefixes_come_off_the_subject(subject: str, expected: str) -> None:
    assert original_subject(subject) == expected


# --------------------------------------------------------------------------- hostile shapes

DEEP = "> " * 400  # a quote 400 levels deep
MARKER = "---------- Forwarded message ---------"
BLOCK = "From: Carol <carol@example.org>\nSent: Mon, 2 Mar 2026\nTo: a@example.com\nSubject: s\n"
HOSTILE: dict[str, tuple[Callable[[int], str], int]] = {
    "many-from-lines": (lambda n: "Hi\n" + "From: Carol <carol@example.org>\n" * n, 2_000),
    "header-like-block": (lambda n: "Hi\n" + "Date: 2 Mar 2026\nTo: a@b.c\n" * n + BLOCK, 1_000),
    "many-markers": (lambda n: "---------- Forwarded message ---------\n" * n, 2_000),
    "markers-with-blank-lines": (lambda n: "Begin forwarded message:\n\n\n" * n, 1_000),
    "long-from-line": (lambda n: "From: " + "a" * n + "\nSent: 1\nTo: x\n", 400_000),
    "long-dash-line": (lambda n: "-" * n + " Forwarded message " + "-" * n, 200_000),
    "long-quote-line": (lambda n: ">" * n + " From: x@y.z\n", 400_000),
    "long-space-line": (lambda n: "Hi" + " " * n + "\n" + BLOCK + "\nbody\n", 400_000),
    "deeply-quoted-forward": (
        lambda n: (
            "".join(DEEP + line + "\n" for line in (MARKER, *BLOCK.split("\n")))
            + (DEEP + "text\n") * n
        ),
        500,
    ),
    "forward-over-many-lines": (
        lambda n: "---------- Forwarded message ---------\n" + BLOCK + "\n" + "> > a\n" * n,
        4_000,
    ),
}


@pytest.mark.parametrize("shape", list(HOSTILE), ids=list(HOSTILE))
def test_forward_detection_is_linear_in_the_text(shape: str) -> None:
    build, n = HOSTILE[shape]
    for subject in ("Fwd: x", "RE: x"):
        inline_forward(build(n), subject)  # never raises

        def work(size: int, subject: str = subject) -> Callable[[], object]:
            return functools.partial(inline_forward, build(size), subject)

        assert growth(work, n) < LINEAR_BOUND, subject


def test_many_header_blocks_take_the_first_as_the_forward() -> None:
    found = inline_forward("Hi\n\n" + BLOCK * 1000, "FW: s")
    assert found is not None and found.note == "Hi"
    assert found.text.count("From: Carol") == 999
    assert inline_forward("Hi\n\n" + BLOCK * 1000, "RE: s") is None
