"""Hostile shapes grown eightfold: the parser's work and its text grow with the mail, no faster.

Each shape once cost a mailbox minutes to hours: a long line of spaces, many attribution lines or
trailing blank lines (the quoted-history stripper's patterns and list copies), nested quotes and
lists in HTML-only mail (html2text's output), and winmail.dat counts its bytes cannot hold
(tnefparse). Work is weighed as in ``tests.poison``: CPU time at n against 8 n, or calls counted.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable

import pytest

from maildesk.mail.inbound import Inbound, Limits, parse
from tests import poison
from tests.poison import GROWTH, LINEAR_BOUND, growth, python_calls

UNCAPPED = Limits(max_text_chars=10**9)  # the whole text, to see how it grows
CUT_LINE = "; the original is kept]"


def parsing(
    build: Callable[[int], bytes], limits: Limits = UNCAPPED
) -> Callable[[int], Callable[[], Inbound]]:
    """For ``growth``: the mail of size n built once, then parsed each time the work runs."""
    return lambda n: functools.partial(parse, build(n), limits)


@pytest.mark.parametrize(
    "shape, n, reply",
    [
        (poison.spaces, 200_000, "Hello,\n\nthe printer is broken."),
        (poison.attributions, 2_000, "Hello"),
        (poison.unled_attributions, 1_000, "Hello"),
        (poison.blank_tail, 10_000, "Hello,\nthe printer is broken."),
    ],
    ids=[
        "long-line-of-spaces",
        "many-attributions",
        "many-attributions-without-a-word-to-start",
        "many-trailing-blank-lines",
    ],
)
def test_quoted_history_stripping_is_linear(
    shape: Callable[[int], bytes], n: int, reply: str
) -> None:
    assert parse(shape(n), UNCAPPED).reply_text == reply
    assert growth(parsing(shape), n) < LINEAR_BOUND


def test_a_bounce_without_a_report_is_read_in_linear_time() -> None:
    report = parse(poison.bounce_line(10)).report
    assert report is not None and [r.address for r in report.recipients] == ["bob@example.org"]
    assert growth(parsing(poison.bounce_line), 2_000) < LINEAR_BOUND


@pytest.mark.parametrize(
    "shape, n",
    [(poison.nested_quotes, 500), (poison.nested_lists, 500)],
    ids=["nested-blockquotes", "nested-lists"],
)
def test_nested_html_gives_text_proportional_to_the_mail(
    shape: Callable[[int], bytes], n: int
) -> None:
    small, large = parse(shape(n), UNCAPPED), parse(shape(GROWTH * n), UNCAPPED)
    assert small.text.count("item") + small.text.count("quoted line") == n
    # each line's prefix ("> > > ", a list's indent) stops growing 32 levels deep
    assert len(large.text) < 1.25 * GROWTH * len(small.text)
    assert growth(parsing(shape), n) < LINEAR_BOUND


@pytest.mark.parametrize(
    "shape, n",
    [(poison.line_breaks, 100_000), (poison.open_tags, 4_000)],
    ids=["many-line-breaks", "tags-that-never-close"],
)
def test_html_conversion_is_linear(shape: Callable[[int], bytes], n: int) -> None:
    assert parse(shape(n)).text.startswith("Hello")
    assert growth(parsing(shape), n) < LINEAR_BOUND


@pytest.mark.parametrize(
    "shape, n",
    [(poison.many_links, 2_000), (poison.long_link, 100_000), (poison.many_cells, 2_000)],
    ids=["many-links", "a-long-link", "many-cells-and-nested-tables"],
)
def test_links_and_tables_cost_linear_work(shape: Callable[[int], bytes], n: int) -> None:
    small, large = parse(shape(n), UNCAPPED), parse(shape(GROWTH * n), UNCAPPED)
    assert small.text.startswith("Hello")
    # what is shown grows with the mail at most, never faster
    assert len(large.text) < 1.25 * GROWTH * len(small.text)
    assert growth(parsing(shape), n) < LINEAR_BOUND


def test_link_targets_are_shown_when_fit_and_bounded() -> None:
    links = parse(poison.many_links(100), UNCAPPED).text
    assert links.count("<https://example.com/p/") == links.count("<https://example.com/q/") == 100
    assert "link 7 <https://example.com/p/7> open 7 <https://example.com/q/7>" in links
    assert "javascript" not in links and "script 7" in links
    # a target over 2,048 characters is left out; the text stays
    short, long = parse(poison.long_link(2_000)).text, parse(poison.long_link(3_000)).text
    assert short == f"Hello {'b' * 2_000} <https://example.com/{'a' * 2_000}>"
    assert long == f"Hello {'b' * 3_000}"
    cells = parse(poison.many_cells(5), UNCAPPED).text
    assert cells == "Hello\n\ncell 0 | cell 1 | cell 2 | cell 3 | cell 4"


def test_html_text_is_cut_at_max_text_chars_and_says_so() -> None:
    limits = Limits(max_text_chars=50_000)
    small, large = (
        parse(poison.nested_lists(20_000), limits),
        parse(poison.nested_lists(GROWTH * 20_000), limits),
    )
    for m in (small, large):
        body, _, marker = m.text.rpartition("\n\n")
        assert len(body) <= 50_000
        assert marker == "[... the rest of this message was cut at 50,000 characters" + CUT_LINE
        assert m.reply_text.endswith(marker)
        assert "text of the HTML body over 50000 characters: the rest was cut" in m.defects
        assert m.html is not None and len(m.html) > 100_000  # the HTML itself is kept whole
    assert large.text == small.text  # past the cap, a larger mail costs no more text


def test_plain_text_is_cut_at_max_text_chars_and_says_how_much() -> None:
    m = parse(poison.mail("0123456789" * 30_000), Limits(max_text_chars=100_000))
    assert m.text == "0123456789" * 10_000 + (
        "\n\n[... the rest of this message, 200,000 characters, was cut" + CUT_LINE
    )
    assert m.reply_text == m.text
    assert "text over 100000 characters: the rest was cut" in m.defects
    assert parse(poison.mail("short"), Limits(max_text_chars=5)).text == "short"


def test_the_default_cap_is_200000_characters() -> None:
    m = parse(poison.spaces(1_000_000))
    assert len(m.text.rpartition("\n\n")[0]) <= 200_000
    assert m.text.endswith("800,030 characters, was cut" + CUT_LINE)


# --------------------------------------------------------------------------- winmail.dat


def winmail(m: Inbound) -> tuple[str, str, int]:
    (dat,) = m.attachments
    return dat.filename, dat.content_type, dat.size


def test_a_33_byte_winmail_dat_counting_4_billion_properties_is_kept_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bomb = poison.property_count_bomb()
    assert len(bomb) == 33
    raw = poison.tnef_mail(bomb)
    with caplog.at_level(logging.DEBUG):
        m = parse(raw)
    assert m.text == "Please see the forms."
    assert winmail(m) == ("winmail.dat", "application/ms-tnef", 33)
    assert (
        "winmail.dat could not be unpacked (MAPI property count of 4294967295 in 12 bytes);"
        " kept as is" in m.defects
    )
    assert not [r for r in caplog.records if r.name.startswith("tnefparse")]


@pytest.mark.parametrize(
    "bomb", [poison.property_count_bomb, poison.multi_value_bomb], ids=["properties", "values"]
)
def test_a_larger_count_in_a_winmail_dat_costs_nothing_more(
    bomb: Callable[[int], bytes],
) -> None:
    small, large = poison.tnef_mail(bomb(0x1FFFFFFF)), poison.tnef_mail(bomb(0xFFFFFFFF))
    parse(small)
    assert python_calls(lambda: parse(large)) <= python_calls(lambda: parse(small)) + 50
    assert "could not be unpacked" in " ".join(parse(large).defects)


def many_objects(n: int) -> bytes:
    """A winmail.dat of ``n`` empty subjects: tnefparse copies the rest of the file for each."""
    return poison.tnef_mail(poison.tnef(*[poison.tnef_object(0x8004, b"")] * n))


def test_many_tiny_tnef_objects_cost_linear_work() -> None:
    assert parse(many_objects(1_000)).defects == ()  # read by tnefparse (nothing in it)
    assert growth(parsing(many_objects), 1_000) < LINEAR_BOUND
    assert "too many objects for the size of the file" in " ".join(
        parse(many_objects(GROWTH * 1_000)).defects
    )


IMESSAGE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
# an object whose checksum ends in a non-zero byte: tnefparse strips NULs off an embedded message
LAST = poison.tnef_object(0x8004, b"\xff\x01\x01")


def embedded(depth: int) -> bytes:
    """A winmail.dat whose attachment is a message, whose attachment is one, ``depth`` deep."""
    inner = poison.tnef(LAST)
    for _ in range(depth):
        data = IMESSAGE + inner
        data += b"\x00" * (-len(data) % 4)
        # one property: an object (type 0x000D), the attachment's data (0x3701), one value
        props = struct.pack("<IHHII", 1, 0x000D, 0x3701, 1, len(data)) + data
        inner = poison.tnef(
            poison.tnef_object(0x9002, b"\x01\x00", level=2),
            poison.tnef_object(0x9005, props, level=2),
            LAST,
        )
    return inner


def test_messages_embedded_in_a_winmail_dat_are_followed_four_deep() -> None:
    assert "embedded more than 4 deep" not in " ".join(parse(poison.tnef_mail(embedded(4))).defects)
    deep = parse(poison.tnef_mail(embedded(5)))
    assert winmail(deep)[0] == "winmail.dat"
    assert (
        "winmail.dat could not be unpacked (messages embedded more than 4 deep); kept as is"
        in deep.defects
    )


def test_tnefparse_logs_nothing_per_object(caplog: pytest.LogCaptureFixture) -> None:
    # every checksum wrong: tnefparse warns once per object; the defect says it once
    objects = [poison.tnef_object(0x8004, b"subject %d" % i) for i in range(200)]
    broken = [o[:-2] + b"\xff\xff" for o in objects]
    with caplog.at_level(logging.DEBUG):
        m = parse(poison.tnef_mail(poison.tnef(*broken)))
    assert "winmail.dat has checksum errors" in m.defects
    assert not [r for r in caplog.records if r.name.startswith("tnefparse")]
