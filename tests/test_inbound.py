"""Bytes to ``Inbound``: what a person reading the ticket would see, for real clients' mail.

The corpus in ``tests/mail`` is hand-written the way the named clients write mail; hostile and
oversized messages are generated here, where their size would make a corpus file unwieldy.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import time
import unicodedata
from pathlib import Path

import pytest

from maildesk.mail.inbound import Inbound, Limits, Report, ReportRecipient, parse
from maildesk.mail.parse.parts import safe_filename
from maildesk.mail.parse.text import strip_quoted_history as strip

MAIL = Path(__file__).parent / "mail"

# sha256 of the files attached to corpus messages (their bytes are known)
PDF = "6350af32579ffbd7b251a6244bf9bd036d303cbc7404ae06d5e02f1b8f5b994f"
PNG = "2aed3b44e22718a344a6ab58d253c73a322fbab5a208ccf9fa0e7538ff32f643"
CSV = "547ecadd4e9836674d297d32c3142abaa14f7f4170015126fb32ef667a14a6bf"
DOCX = "55cf14b0da2830b4a0c792188f89ecb6d7331b8260a9af1b6fc5a65abf78adcc"


def load(name: str, limits: Limits | None = None) -> Inbound:
    return parse((MAIL / name).read_bytes(), limits)


def names(message: Inbound) -> list[str]:
    return [a.filename for a in message.attachments]


def assert_clean_line(value: str) -> None:
    assert not any(unicodedata.category(c) == "Cc" for c in value), repr(value)
    assert value == unicodedata.normalize("NFC", value)


def assert_display_safe(name: str) -> None:
    assert name and name.strip() == name
    assert "/" not in name and "\\" not in name and ":" not in name
    assert not name.startswith(".")
    assert len(name.encode("utf-8")) <= 255
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in name), repr(name)


# --------------------------------------------------------------------------------------------
# Ordinary mail
# --------------------------------------------------------------------------------------------


def test_plain_text_mail() -> None:
    m = load("plain-text.eml")
    assert m.message_id == "5f1c2e8a-3b7d-4e0a-9c1f-2a6d8b9e0f11@example.org"
    assert m.sender == "jane.customer@example.org"
    assert m.sender_name == "Jane Customer"
    assert m.from_raw == "Jane Customer <Jane.Customer@Example.org>"
    assert m.subject == "Printer on the 3rd floor keeps jamming"
    assert m.to == ("support@example.com",)
    assert m.delivered_to == ("support@example.com",)
    assert m.return_path == "jane.customer@example.org"
    assert m.date == "Mon, 3 Jun 2024 09:58:04 +0200"
    assert m.text.startswith("Hello,\n\nthe printer on the 3rd floor (HP LaserJet, room 3.14)")
    assert m.text.endswith("Could someone have a look today?\n\nThanks,\nJane")
    assert m.reply_text == m.text
    assert m.html is None and m.attachments == () and m.report is None
    assert m.defects == () and m.fatal is None
    assert m.size == len((MAIL / "plain-text.eml").read_bytes())


def test_headers_are_kept_in_order_top_first() -> None:
    m = load("plain-text.eml")
    assert m.headers[0] == ("return-path", "<jane.customer@example.org>")
    assert [n for n, _ in m.headers].count("received") == 1
    (results,) = m.header("Authentication-Results")
    assert results.startswith("mx.example.com; dkim=pass header.d=example.org")
    assert m.first("user-agent") == "Mozilla Thunderbird"
    raw = (
        b"Authentication-Results: mx.example.com; dmarc=pass header.from=example.org\r\n"
        b"Authentication-Results: evil.example; dmarc=pass header.from=example.com\r\n"
        b"From: a@example.org\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n"
    )
    assert [v.split(";")[0] for v in parse(raw).header("authentication-results")] == [
        "mx.example.com",
        "evil.example",
    ]


def test_authentication_results_are_kept_as_they_arrived() -> None:
    raw = (
        b"Authentication-Results: mx.example.com;\r\n"
        b"\tspf=pass smtp.mailfrom==?us-ascii?q?x=3B_dmarc=3Dpass_?=@evil.test\r\n"
        b"Authentication-Results: mx.example.com\xe2\x80\x8b; dmarc=pass header.from=example.com\r\n"
        b"From: a@example.com\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n"
    )
    m = parse(raw)
    # unfolded only: never decoded, never cleaned of the invisible character
    assert m.authentication_results == (
        "mx.example.com;\tspf=pass smtp.mailfrom==?us-ascii?q?x=3B_dmarc=3Dpass_?=@evil.test",
        "mx.example.com\u200b; dmarc=pass header.from=example.com",
    )
    # what a person reads is the decoded, cleaned display value: never a verdict
    assert m.header("authentication-results")[0].endswith("x; dmarc=pass @evil.test")


def test_multi_attachment_mail_keeps_every_file_whole() -> None:
    m = load("multi-attachment.eml")
    assert m.cc == ("bob.accounts@example.org",)
    assert m.content_type == "multipart/mixed"
    assert m.text.startswith("Hi,\n\nthe attached invoice charges us for 3 extra seats")
    assert [(a.filename, a.content_type, a.size, a.sha256) for a in m.attachments] == [
        ("invoice-2024-05.pdf", "application/pdf", 218, PDF),
        ("seats.png", "image/png", 69, PNG),
        ("accounting-export.csv", "text/csv", 110, CSV),
        (
            "contract.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            1028,
            DOCX,
        ),
    ]
    for a in m.attachments:
        assert hashlib.sha256(a.payload).hexdigest() == a.sha256 and not a.dropped
    assert m.defects == ()


def test_html_only_mail_becomes_readable_text() -> None:
    m = load("html-only.eml")
    assert m.html is not None and "<h1>Order #88213</h1>" in m.html
    assert "Dear customer," in m.text
    assert "your order could not be shipped because the address is incomplete:" in m.text
    assert "Street: Hauptstraße 5" in m.text
    # a link's target follows its text; the tracking image and the script are gone
    assert (
        "Please update the address <https://shop.example.net/orders/88213> within 7 days." in m.text
    )
    assert "Café & Co. — Customer Service" in m.text
    for absent in ("tracker.example.net", "alert(", "font-family", "<img", "<script"):
        assert absent not in m.text
    assert m.text.count("<") == m.text.count("https://") == 1


def test_html_only_mail_keeps_link_targets_and_table_cells() -> None:
    m = load("html-only-links-and-table.eml")
    assert m.text == (
        "Hello,\n\n"
        "my order arrived incomplete. Click this article "
        "<https://shop.example.net/help/missing-items> told me to write to you. My address is "
        "priya.nair@example.org, the shop is https://shop.example.net/.\n\n"
        "Item | Ordered | Delivered\n"
        "USB-C cable | 2 | 1\n"
        "Charger 65 W | 1 | 0\n\n"
        "Do not click this or that; the photo is <https://photos.example.org/p/8841>\n\n"
        "Priya Nair\nExample Org"
    )
    assert m.reply_text == m.text and m.defects == ()


def test_rfc2047_and_rfc2231_are_decoded() -> None:
    m = load("rfc2047-subject.eml")
    assert m.subject == "Grüße aus München: Rechnung für März – Bitte prüfen 🙏"
    assert m.sender_name == "Jürgen Müller"
    assert m.sender == "jurgen@example.de"
    assert m.text.startswith("Guten Tag,\n\ndie Rechnung für März ist doppelt abgebucht worden.")
    assert m.text.endswith("Grüße\nJürgen Müller")
    assert [(a.filename, a.sha256) for a in m.attachments] == [
        ("Übersicht März 2024.csv", CSV),
        ("Kontoauszug_Änderung.png", PNG),
    ]


def test_inline_image_is_an_attachment_marked_inline() -> None:
    m = load("inline-image-html.eml")
    assert m.text == "Hi, this is what I see after logging in:\n\n[image: error.png]\n\nMarta"
    (image,) = m.attachments
    assert (image.filename, image.inline, image.sha256) == ("error.png", True, PNG)
    assert m.html is not None and "cid:ii_lx2k1q0a0" in m.html


def test_forwarded_message_is_kept_whole_as_eml() -> None:
    m = load("forwarded-rfc822.eml")
    assert m.text == "I did not change my password. Is this mail from you?"
    (eml,) = m.attachments
    assert eml.filename == "Your password was changed.eml"
    assert eml.content_type == "message/rfc822"
    inner = email.message_from_bytes(eml.payload, policy=email.policy.default)
    assert inner["Message-ID"] == "<pwchange-7781@example.com>"
    assert "Your password was changed on 7 June 2024" in inner.get_content()


def test_iso_2022_jp_mail() -> None:
    m = load("iso-2022-jp.eml")
    assert m.subject == "メールが届かない"
    assert m.sender_name == "田中"
    assert m.text == "メールが届かないです。"


# --------------------------------------------------------------------------------------------
# Replies as real clients write them: reply_text is exactly what the author wrote
# --------------------------------------------------------------------------------------------

REPLIES = {
    "reply-gmail.eml": "Thanks, that fixed it. The printer works again.\n\nJane",
    "reply-gmail-wrapped-attribution.eml": "It jammed again this morning, twice.",
    "reply-agent-commands.eml": (
        "#assign me\n#priority high\n\nI'm on it, I will call Jane this afternoon."
    ),
    "reply-outlook-aw-prefix.eml": (
        "Hallo,\n\ndanke, bitte tauschen Sie auch die Walze in Fach 1 aus.\n\n"
        "Viele Grüße\nKlaus Becker"
    ),
    "reply-outlook-original-message.eml": (
        "Please close the ticket, we found the loose cable.\n\nRegards,\nTom"
    ),
    "reply-outlook-html-divrplyfwdmsg.eml": (
        "I restarted the access point as you suggested and the connection has been stable "
        "since.\n\nKind regards,\nPriya"
    ),
    "reply-apple-mail.eml": "Sounds good, Thursday at 2 pm works for me.\n\nBest,\nLukas",
    "reply-thunderbird.eml": "Hi,\n\nthe new VPN profile works, thank you!\n\nAnna",
    "reply-ios.eml": "Yes, please go ahead and cancel the order.",
    "reply-android.eml": "I will be in the office tomorrow from 9.",
    "reply-android-gmail.eml": "Got it, thanks!",
    "reply-german.eml": "Vielen Dank, ich kann mich wieder anmelden.\n\nPetra",
    "reply-german-original-message.eml": (
        "Bitte schließen Sie das Ticket, alles funktioniert.\n\n"
        "Mit freundlichen Grüßen\nPetra Schmidt"
    ),
    "reply-french.eml": "Merci, tout fonctionne maintenant.\n\nClaire",
    "reply-french-outlook.eml": (
        "Bonjour,\n\nJe confirme la réception du nouveau badge.\n\nCordialement,\nClaire Dubois"
    ),
    "reply-spanish.eml": "Perfecto, muchas gracias por la ayuda.\n\nMarta",
    "reply-spanish-outlook.eml": (
        "Hola,\n\nel error ha vuelto a aparecer esta mañana.\n\nSaludos,\nMarta"
    ),
    "reply-mutt-interleaved.eml": "It is CN-4711-X.\n\n2.3.1, updated last week.",
    "reply-html-blockquote.eml": "The new password works, thanks.\n\nOlga",
    "reply-signature-only.eml": "5 - quick and friendly, thank you!",
    # attributions wrapped over two lines, in the other languages and forms clients write
    "reply-german-gmail-phone-wrapped.eml": (
        "Ja, das Flackern ist weg, seit ich das Kabel getauscht habe.\n\nLena"
    ),
    "reply-polish-gmail-wrapped.eml": "Dziękuję, drukarka znowu działa.\n\nTomasz",
    "reply-polish-gmail-w-dniu-wrapped.eml": "Nowe hasło działa, dziękuję.",
    "reply-norwegian-gmail-wrapped.eml": "Takk, nå skriver den ut igjen.\n\nIngrid",
    "reply-thunderbird-wrapped-after-date.eml": (
        "Hello,\n\nafter the restart the drive is back, thanks.\n\nOmar"
    ),
    "reply-italian-gmail-wrapped.eml": "Grazie, il nuovo badge funziona.\n\nGiulia",
    "reply-portuguese-gmail-wrapped.eml": "Obrigado, já consigo ligar-me à VPN.\n\nJoão",
    "reply-dutch-gmail-wrapped.eml": "Dank je, de laptop start weer normaal op.\n\nSanne",
    "reply-danish-gmail-wrapped.eml": "Tak, nu virker mailen igen.\n\nMads",
}


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_reply_text_is_the_authors_own_words(name: str) -> None:
    m = load(name)
    assert m.reply_text == REPLIES[name]
    assert m.in_reply_to and m.in_reply_to == m.references[-1:]
    assert m.sender is not None and m.defects == ()


@pytest.mark.parametrize(
    "text",
    [
        # the first word of the attribution alone on its line
        "Thanks!\n\nOn\nThu, Nov 26, 2026 at 10:00 AM Jane Doe <jane@example.com> wrote:\n> old",
        "Danke!\n\nAm\n26.11.2026 um 10:00 schrieb Jane Doe:\n> alt",
        "Dzięki!\n\nW\ndniu 26.11.2026 o 10:00, Jane Doe pisze:\n> stary",
        # Gmail's forms that begin with a name or a date, wrapped where Gmail wraps them
        "Danke!\n\nJane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026,\n10:00:\n\n> alt",
        "Bedankt!\n\nJane Doe <\njane@example.com> schreef op do 26 nov. 2026 10:00:\n\n> oud",
        "Dzięki!\n\nczw., 26 lis 2026 o 10:00 Jane Doe <jane@example.com>\nnapisał(a):\n\n> stary",
        "Takk!\n\ntor. 26. nov. 2026 kl. 10:00 skrev Jane Doe\n<jane@example.com>:\n\n> gammel",
    ],
)
def test_wrapped_attributions_are_stripped(text: str) -> None:
    assert strip(text) == text.split("\n")[0]


@pytest.mark.parametrize(
    "text",
    [
        # no blank line above: the author's own line, not an attribution's start
        "My answer.\nJane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026, 10:00:\n\n> alt",
        # no quoted lines under it, no time in it, no address or date to start it
        "My answer.\n\nJane Doe <jane@example.com> schrieb am Do., 26. Nov. 2026, 10:00:\n\nmore",
        "My answer.\n\nJane Doe <jane@example.com> schrieb am Donnerstag:\n> alt",
        "My answer.\n\nThe printer on floor 3 broke at\n10:00 and Jane skrev this:\n> alt",
    ],
)
def test_lines_like_an_attribution_without_its_start_are_kept(text: str) -> None:
    kept = [line for line in text.split("\n") if not line.startswith(">")]
    assert strip(text) == "\n".join(kept).strip()


def test_full_text_keeps_the_quoted_history() -> None:
    m = load("reply-gmail.eml")
    assert "> we replaced the pickup roller in tray 2." in m.text
    assert m.html is not None and "gmail_quote" in m.html
    assert load("reply-outlook-aw-prefix.eml").subject == "AW: [#1045] Drucker im 3. Stock"


def test_reply_subjects_and_threading_headers() -> None:
    m = load("reply-french.eml")
    assert m.subject == "Re: [#1049] Badge d'accès"
    assert m.in_reply_to == ("ticket-1049.reply.e1f2@example.com",)
    assert load("reply-french-outlook.eml").subject == "RE : [#1049] Badge d'accès"
    assert load("reply-spanish.eml").subject == "Re: [#1052] Error al iniciar sesión"


@pytest.mark.parametrize(
    "text",
    [
        "On Monday the printer worked, on Tuesday it did not.",
        "Our vendor wrote:\nthe part ships tomorrow.",
        "From: the 3rd floor\nTo whom it may concern, the printer is broken.",
        "Please see below.\n\n---------- Forwarded message ---------\nFrom: Bob <b@example.org>\n"
        "Date: Mon, 3 Jun 2024 at 10:00\nSubject: Outage\nTo: <a@example.org>\n\nIt is down.",
    ],
)
def test_ordinary_prose_and_forwards_are_not_stripped(text: str) -> None:
    assert strip(text) == text


def test_unquoted_history_below_an_attribution_is_cut() -> None:
    text = (
        'Works now.\n\nOn 03/06/2024, 10:12, "Example Support" <support@example.com> wrote:\n\n'
        "Hello, please restart the router.\n"
    )
    assert strip(text) == "Works now."


# --------------------------------------------------------------------------------------------
# Automatic mail and reports
# --------------------------------------------------------------------------------------------


def test_auto_replies_carry_their_markers() -> None:
    vacation = load("autoreply-auto-submitted.eml")
    assert vacation.first("auto-submitted") == "auto-replied (vacation)"
    assert vacation.first("precedence") == "bulk"
    assert vacation.report is None
    oof = load("autoreply-exchange-oof.eml")
    assert oof.return_path == ""
    assert oof.first("x-auto-response-suppress") == "All"
    listmail = load("mailing-list.eml")
    assert listmail.first("list-id") == "Example announcements <announce.lists.example.org>"
    assert load("autoreply-no-auto-headers.eml").report is None


def test_postfix_dsn_is_parsed() -> None:
    m = load("bounce-dsn-postfix.eml")
    assert m.return_path == ""
    assert m.sender == "mailer-daemon@mx.example.com"
    assert m.delivered_to == ("bounces+o42.xy7zq2@example.com",)
    assert m.content_type == "multipart/report"
    assert m.report == Report(
        report_type="delivery-status",
        recipients=(
            ReportRecipient(
                "nobody@example.net",
                "failed",
                "5.1.1",
                "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in "
                "virtual mailbox table",
            ),
            ReportRecipient(
                "full@example.net", "failed", "5.2.2", "552 5.2.2 <full@example.net>: Mailbox full"
            ),
        ),
        original_message_id="ticket-1055.ack.4f5e@example.com",
        original_envelope_to=("nobody@example.net", "full@example.net"),
    )
    assert m.text.startswith("This is the mail system at host mx.example.com.")
    assert "we received your request" not in m.text  # the returned message is an attachment
    (returned,) = m.attachments
    assert returned.filename == "[#1055] We received your request.eml"


def test_delayed_dsn_with_returned_headers_only() -> None:
    m = load("bounce-dsn-delayed.eml")
    assert m.report == Report(
        report_type="delivery-status",
        recipients=(
            ReportRecipient(
                "slow@example.net",
                "delayed",
                "4.4.1",
                "connect to mx.example.net[203.0.113.25]:25: Connection timed out",
            ),
        ),
        original_message_id="ticket-1060.reply.8c9d@example.com",
        original_envelope_to=("slow@example.net",),
    )


def test_exchange_ndr_without_multipart_report_is_recognised() -> None:
    m = load("bounce-exchange-ndr.eml")
    assert m.report == Report(
        report_type="heuristic",
        recipients=(
            ReportRecipient(
                "kevin@example.net",
                "failed",
                "5.1.10",
                "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not "
                "found by SMTP address lookup'",
            ),
        ),
        original_message_id="ticket-1056.ack.0e1f@example.com",
        original_envelope_to=("kevin@example.net",),
    )


def test_qmail_bounce_is_recognised() -> None:
    m = load("bounce-qmail.eml")
    assert m.report == Report(
        report_type="heuristic",
        recipients=(
            ReportRecipient(
                "gone@example.net",
                "failed",
                "5.1.1",
                "Remote host said: 550 5.1.1 <gone@example.net>... User unknown",
            ),
        ),
        original_message_id="ticket-1061.ack.2a3b@example.com",
        original_envelope_to=("gone@example.net",),
    )


def test_read_receipt_is_a_disposition_notification() -> None:
    m = load("mdn-read-receipt.eml")
    assert m.report is not None
    assert m.report.report_type == "disposition-notification"
    assert m.report.original_message_id == "ticket-1043.reply.44aa@example.com"
    assert m.report.recipients == (ReportRecipient("tom@example.net", "displayed", ""),)


def test_abuse_feedback_report() -> None:
    m = load("feedback-report-arf.eml")
    assert m.report == Report(
        report_type="feedback-report",
        recipients=(ReportRecipient("lisa@isp.example.net", "abuse", ""),),
        original_message_id="ticket-1057.ack.6c7d@example.com",
        original_envelope_to=("lisa@isp.example.net",),
    )


def test_ordinary_mail_has_no_report() -> None:
    for name in ("plain-text.eml", "reply-gmail.eml", "multi-attachment.eml"):
        assert load(name).report is None


# --------------------------------------------------------------------------------------------
# Broken and hostile mail
# --------------------------------------------------------------------------------------------


def test_unknown_charset_is_read_and_recorded() -> None:
    m = load("unknown-charset.eml")
    assert m.subject == "Prüfung der Anlage"
    assert m.text == "Die Prüfung der Anlage ist für Donnerstag geplant. Grüße, Lena"
    assert "unknown charset 'x-unknown-charset' in text/plain part" in m.defects


def test_mislabelled_charset_falls_back_to_cp1252() -> None:
    m = load("mislabelled-charset.eml")
    assert m.text == "Der Preis beträgt 25 € – bitte überweisen."
    assert "text/plain part is not valid utf-8" in m.defects


def test_raw_8bit_headers_are_decoded_and_recorded() -> None:
    m = load("raw-8bit-headers.eml")
    assert m.subject == "Café menü für die Kantine"
    assert m.sender_name == "Zoë François" and m.sender == "zoe@example.org"
    assert m.first("x-old-client") == "Grüße"
    assert "raw 8-bit bytes in the subject header" in m.defects
    assert m.text == "Das Menü im Café fehlt seit Montag."


def test_broken_base64_and_quoted_printable_are_salvaged() -> None:
    m = load("broken-base64.eml")
    assert m.text.startswith("The log is attached. The error starts at 09:58 — see line")
    (log,) = m.attachments
    assert log.filename == "spooler.log"
    assert log.payload.startswith(b"2024-06-03 09:58:01 ERROR printer spooler: paper jam")
    assert "broken base64 in spooler.log" in m.defects


def test_dangerous_filenames_are_neutralised() -> None:
    m = load("traversal-filename.eml")
    found = names(m)
    assert found[:8] == [
        "evil",
        "x.sh",
        "evil.dll",
        "payload.exe",
        "invoicegpj.exe",
        "_CON.txt",
        "htaccess",
        "evil name X-Injected_ yes.txt",
    ]
    assert found[8].endswith(".pdf") and len(found[8].encode()) == 255
    assert found[9] == "attachment.png"
    for name in found:
        assert_display_safe(name)
    assert m.attachments[8].sha256 == PDF


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("C:evil.bat", "evil.bat"),
        ("\\\\?\\C:\\x\\y.txt", "y.txt"),
        ("report\x00.pdf", "report .pdf"),
        ("...", "attachment.bin"),
        ("", "attachment.bin"),
        ("nul", "_nul"),
        ("LPT1.log", "_LPT1.log"),
        ("photo\u202egnp.js", "photognp.js"),
        ("a\u200bb.txt", "ab.txt"),
        ("Cafe\u0301.txt", "Café.txt"),
        ("what?*<>|.txt", "what_____.txt"),
        ("x" * 300 + ".tar.gz", "x" * 252 + ".gz"),
        ("é" * 200, "é" * 127),
    ],
)
def test_safe_filename(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected
    assert_display_safe(safe_filename(raw))


def test_header_injection_is_cleaned_out_of_every_value() -> None:
    m = load("header-injection-subject.eml")
    assert m.subject == "Hi Bcc: victim@example.org and \u202etxt.exe nul"
    assert "bidirectional control characters in the subject" in m.defects
    assert m.sender is None  # a From display name holding CR/LF is not a mailbox we trust
    for value in (m.subject, m.sender_name, m.from_raw, *[v for _, v in m.headers]):
        assert "\r" not in value and "\n" not in value and "\x00" not in value


def test_tnef_winmail_dat_is_unpacked() -> None:
    m = load("tnef-winmail.eml")
    assert [(a.filename, a.content_type, a.sha256) for a in m.attachments] == [
        ("new-hire-form.pdf", "application/pdf", PDF),
        ("badge-photo.png", "image/png", PNG),
    ]
    assert m.text == "Please set up accounts using the attached forms."


def test_broken_tnef_is_kept_opaque_with_a_defect() -> None:
    m = load("tnef-broken.eml")
    (dat,) = m.attachments
    assert (dat.filename, dat.content_type) == ("winmail.dat", "application/ms-tnef")
    assert dat.payload == b"this is not TNEF at all, just text in a winmail.dat"
    assert any(d.startswith("winmail.dat could not be unpacked") for d in m.defects)


@pytest.mark.parametrize(
    "name", ["ambiguous-from.eml", "ambiguous-from-encoded.eml", "two-from-mailboxes.eml"]
)
def test_ambiguous_from_has_no_sender(name: str) -> None:
    m = load(name)
    assert m.sender is None
    assert m.from_raw  # still shown to people
    assert any("From" in d for d in m.defects)


def test_missing_and_duplicate_message_ids() -> None:
    missing = load("no-message-id.eml")
    assert missing.message_id is None and "no Message-ID" in missing.defects
    assert missing.text == "The nightly job failed with exit code 2."
    dup = load("duplicate-message-id.eml")
    assert dup.message_id == "first-id@example.org"
    assert "several Message-ID headers" in dup.defects
    assert dup.in_reply_to == ("ticket-1042.ack.8f3a1c@example.com",)
    assert dup.references == (
        "a@example.com",
        "b@example.com",
        "ticket-1042.ack.8f3a1c@example.com",
    )


def test_every_corpus_message_gives_clean_values() -> None:
    files = sorted(MAIL.glob("*.eml"))
    assert len(files) >= 45
    for path in files:
        m = parse(path.read_bytes())
        assert m.fatal is None, path.name
        for value in (m.subject, m.sender_name, m.from_raw, *[v for _, v in m.headers]):
            assert_clean_line(value)
        assert "\r" not in m.text and "\x00" not in m.text
        for a in m.attachments:
            assert_display_safe(a.filename)
            assert a.sha256 == hashlib.sha256(a.payload).hexdigest()
            assert a.size == len(a.payload)


# --------------------------------------------------------------------------------------------
# Limits: oversized and pathological structure is refused quickly, identity still read
# --------------------------------------------------------------------------------------------

HEAD = b"From: Eve <eve@example.org>\r\nMessage-ID: <limit@example.org>\r\nSubject: limits\r\n"


def nested_multipart(depth: int) -> bytes:
    out = [HEAD]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    out.append(b"Content-Type: text/plain\r\n\r\ndeep\r\n")
    out.extend(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"".join(out)


def nested_messages(depth: int) -> bytes:
    out = [HEAD]
    for i in range(depth):
        out.append(b"Content-Type: message/rfc822\r\n\r\nSubject: level %d\r\n" % i)
    out.append(b"\r\ninnermost\r\n")
    return b"".join(out)


def timed(raw: bytes, limits: Limits | None = None) -> tuple[Inbound, float]:
    """The parse and the CPU time it took: a bound on work, not on how busy the machine is."""
    start = time.process_time()
    m = parse(raw, limits)
    return m, time.process_time() - start


@pytest.mark.parametrize("depth", [500, 5000])
def test_deep_multipart_nesting_is_refused(depth: int) -> None:
    m, seconds = timed(nested_multipart(depth))
    assert m.fatal == "MIME nesting deeper than 20 levels"
    assert m.message_id == "limit@example.org" and m.sender == "eve@example.org"
    assert seconds < 2


def test_nesting_within_the_limit_is_parsed() -> None:
    m = parse(nested_multipart(18))
    assert m.fatal is None and m.text == "deep"


def test_deep_message_rfc822_chain_is_refused() -> None:
    m, seconds = timed(nested_messages(50))
    assert m.fatal == "messages nested deeper than 3 levels"
    assert seconds < 2
    assert parse(nested_messages(3)).fatal is None


def test_a_digest_of_many_forwarded_messages_is_not_mistaken_for_deep_nesting() -> None:
    inner = (
        b'Subject: note %d\r\nContent-Type: multipart/alternative; boundary="i%d"\r\n\r\n'
        b"--i%d\r\nContent-Type: text/plain\r\n\r\nnote %d\r\n--i%d--\r\n"
    )
    parts = b"".join(
        b"--d\r\nContent-Type: message/rfc822\r\n\r\n" + inner % (i, i, i, i, i) for i in range(30)
    )
    raw = HEAD + b'Content-Type: multipart/digest; boundary="d"\r\n\r\n' + parts + b"--d--\r\n"
    m = parse(raw)
    assert m.fatal is None
    assert [a.filename for a in m.attachments] == [f"note {i}.eml" for i in range(30)]


def test_too_many_parts_is_refused() -> None:
    parts = b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(600))
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + b"--p--\r\n"
    m, seconds = timed(raw)
    assert m.fatal == "more than 500 MIME parts"
    assert seconds < 2


def test_too_many_headers_is_refused_with_identity_kept() -> None:
    raw = HEAD + b"".join(b"X-Filler-%d: value\r\n" % i for i in range(100_000)) + b"\r\nbody\r\n"
    m, seconds = timed(raw)
    assert m.fatal is not None
    assert m.message_id == "limit@example.org" and m.sender == "eve@example.org"
    assert len(m.headers) <= 1000
    assert seconds < 5


def test_huge_header_line_is_refused() -> None:
    raw = HEAD + b"X-Big: " + b"a" * 5_000_000 + b"\r\n\r\nbody\r\n"
    m, seconds = timed(raw)
    assert m.fatal == "header block over 262144 bytes"
    assert m.message_id == "limit@example.org"
    assert seconds < 5


def test_ten_thousand_encoded_words_in_a_subject() -> None:
    words = b" ".join(b"=?utf-8?q?w=C3=B6rd%d?=" % i for i in range(10_000))
    m, seconds = timed(HEAD.replace(b"Subject: limits", b"Subject: " + words) + b"\r\nhi\r\n")
    assert m.subject.startswith("wörd0wörd1")
    assert len(m.subject) == 998
    assert seconds < 5


@pytest.mark.parametrize(
    "header",
    [
        b"To: " + b'"\\"' * 20_000 + b" <a@example.org>",  # quadratic in the strict parser
        (b"Cc: " + b'"\\"' * 1300 + b" <a@example.org>\r\n") * 60,
        b"From: " + b"(" * 3000 + b"a@example.org",  # recursion in both stdlib parsers
        b"From: " + b"a." * 30_000 + b"@example.org",
        b"To: " + b", ".join(b"user%d@example.org" % i for i in range(3000)),
    ],
)
def test_pathological_address_headers_stay_fast(header: bytes) -> None:
    m, seconds = timed(b"Message-ID: <a@example.org>\r\n" + header + b"\r\n\r\nhi\r\n")
    assert m.message_id == "a@example.org" and m.text == "hi"
    assert m.sender is None and m.defects
    assert seconds < 3


def test_a_long_recipient_list_is_still_read() -> None:
    to = b", ".join(b"User %d <user%d@example.org>" % (i, i) for i in range(300))
    m = parse(b"From: a@example.org\r\nTo: " + to + b"\r\n\r\nhi\r\n")
    assert len(m.to) == 300 and m.to[-1] == "user299@example.org"


def test_message_over_the_size_limit_is_refused() -> None:
    raw = HEAD + b"\r\n" + b"x" * 2000
    m = parse(raw, Limits(max_message_bytes=1000))
    assert m.fatal == f"message is {len(raw)} bytes, over the limit of 1000"
    assert m.sender == "eve@example.org" and m.size == len(raw)


def test_attachment_over_the_limit_is_dropped_with_its_real_size() -> None:
    m = load("multi-attachment.eml", Limits(max_attachment_bytes=500))
    dropped = [(a.filename, a.size, a.payload, a.sha256) for a in m.attachments if a.dropped]
    assert dropped == [("contract.docx", 1028, b"", DOCX)]
    assert m.fatal is None


def test_garbage_never_raises() -> None:
    for raw in (b"", b"\x00" * 100, b"\r\n\r\n", b"From:\r\n\r\n", bytes(range(256)) * 10):
        m = parse(raw)
        assert isinstance(m, Inbound)
    assert parse(b"").text == ""


# --------------------------------------------------------------------------------------------
# CPython's own email test data: every message parses
# --------------------------------------------------------------------------------------------


def cpython_messages() -> list[Path]:
    test_email = pytest.importorskip("test.test_email", reason="CPython's test suite is absent")
    return sorted((Path(test_email.__file__).parent / "data").glob("msg_*.txt"))


def test_cpython_email_test_data_parses() -> None:
    files = cpython_messages()
    assert len(files) > 40
    for path in files:
        m = parse(path.read_bytes())
        assert isinstance(m, Inbound), path.name
        for value in (m.subject, m.sender_name, *[v for _, v in m.headers]):
            assert_clean_line(value)


def test_claimed_sender_names_the_address_an_ambiguous_from_claims() -> None:
    assert load("ambiguous-from.eml").claimed_sender == "alice@example.com"
    assert load("two-from-mailboxes.eml").claimed_sender == "alice@example.com"
    assert load("plain-text.eml").claimed_sender == "jane.customer@example.org"


def test_large_base64_bodies_decode_whole_including_inside_an_attached_message() -> None:
    """Bodies of a MiB or more are decoded straight from the bytes (memory), with the same result."""
    from email.message import EmailMessage

    payload = os.urandom(3_000_000)
    inner = EmailMessage()
    inner["From"] = "x@example.org"
    inner["Subject"] = "forwarded"
    inner.set_content("see attached")
    inner.add_attachment(payload, maintype="application", subtype="octet-stream", filename="in.bin")
    outer = EmailMessage()
    outer["From"] = "dana@customer.test"
    outer["To"] = "support@example.com"
    outer["Subject"] = "big"
    outer["Message-ID"] = "<big@customer.test>"
    outer.set_content("two large files")
    outer.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename="out.bin"
    )
    outer.add_attachment(inner)
    parsed = parse(outer.as_bytes())
    by_name = {a.filename: a for a in parsed.attachments}
    assert by_name["out.bin"].payload == payload
    kept = [a for a in parsed.attachments if a.content_type == "message/rfc822"]
    assert len(kept) == 1
    reparsed = email.message_from_bytes(kept[0].payload)
    files = [p.get_payload(decode=True) for p in reparsed.walk() if p.get_filename() == "in.bin"]
    assert files == [payload]
    assert parsed.text.strip() == "two large files"


def headers_only(fields: str) -> Inbound:
    return parse(f"{fields}\r\nMessage-ID: <r@customer.test>\r\nSubject: hi\r\n\r\nhi\r\n".encode())


@pytest.mark.parametrize(
    ("fields", "requester"),
    [
        ("From: a@x.test, b@y.test", "a@x.test"),
        ('From: "bob@evil.test" <carol@customer.test>', "carol@customer.test"),
        ("From: =?utf-8?q?bob=40evil.test?= <carol@customer.test>", "carol@customer.test"),
        # unquoted, so the strict parse is broken: the addr-spec is the one in angle brackets
        ("From: bob@evil.test <carol@customer.test>", "carol@customer.test"),
        ("From: Carol Customer\r\nSender: Desk <Sec@Customer.test>", "sec@customer.test"),
        ("From: Carol\r\nReply-To: Carol <c@customer.test>, d@customer.test", "c@customer.test"),
        ("From: a@x.test\r\nSender: s@x.test\r\nReply-To: r@x.test", "a@x.test"),
        ("From: undisclosed-recipients:;\r\nReply-To: r@x.test", "r@x.test"),
        ("From: bob@\r\nSender: <s@x.test>", "s@x.test"),
        ('From: "john doe"@x.test\r\nReply-To: r@x.test', "r@x.test"),
        ("From: a@x.test\r\nFrom: b@y.test", "a@x.test"),
        ("From: José <José@Exämple.Test>", "José@exämple.test"),
        ("From: Carol", None),
        ("From: Carol <carol>\r\nReply-To: nobody", None),
        ("From: a@b..c", None),
        ("To: support@example.com", None),
    ],
)
def test_the_requester_is_the_first_usable_mailbox_of_from_then_sender_then_reply_to(
    fields: str, requester: str | None
) -> None:
    m = headers_only(fields)
    assert m.requester == requester


def test_a_requester_that_is_not_a_sender_proves_nothing() -> None:
    # who a ticket answers is not who sent it: ``sender`` stays None wherever From is ambiguous
    for fields in ("From: a@x.test, b@y.test", 'From: "bob@evil.test" <carol@customer.test>'):
        m = headers_only(fields)
        assert m.sender is None and m.requester is not None


def test_a_utf8_address_is_kept_as_written_in_nfc_with_its_domain_in_lower_case() -> None:
    decomposed = unicodedata.normalize("NFD", "JOSÉ@EXÄMPLE.test")
    raw = f"From: {decomposed}\r\nCc: Ünal <ÜNAL@Exämple.TEST>, Bob@Example.ORG\r\n".encode()
    m = headers_only(raw.decode())
    assert m.requester == "JOSÉ@exämple.test"
    assert unicodedata.is_normalized("NFC", m.requester)
    assert m.cc == ("ÜNAL@exämple.test", "bob@example.org")
