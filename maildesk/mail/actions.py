"""One-tap actions: the ``mailto:`` links that end a notice to an agent, and its HTML part.

Below the outbox: a notice's ``Mail`` names its actions (``Action``: a label and the command
line it sends); ``with_actions`` adds them to the rendered notice, as plain lines to its text
and as buttons to an HTML part made from that text. Each link is addressed to the notice's
Reply-To (the agent's token address for the ticket, which is what proves the mail is hers: the
link alone proves nothing) with ``Re: <the notice's subject>`` and the command prefilled,
percent-encoded as RFC 6068 asks (UTF-8, line breaks as ``%0D%0A``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from maildesk.mail.compose import clean_header
from maildesk.mail.marks import without_plus_addresses
from maildesk.mail.rendering import Rendered, render_page

SUBJECT_CHARS = 200  # of a link's subject: a client's URL and a reader's screen stay small


@dataclass(frozen=True, slots=True)
class Action:
    """One link: what the button says and the first line of the mail it opens."""

    label: str
    line: str


def mailto(to: str, subject: str, body: str) -> str:
    """A ``mailto:`` URL (RFC 6068): every character of the address but the letters, digits,
    ``@``, ``.``, ``-``, ``_``, ``+`` and ``~`` percent-encoded as UTF-8, and every one of the
    subject and body but the unreserved; line breaks in the body as ``%0D%0A``."""
    body = body.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return (
        f"mailto:{quote(to, safe='@+')}"
        f"?subject={quote(clean_header(subject, SUBJECT_CHARS), safe='')}"
        f"&body={quote(body, safe='')}"
    )


def reply_subject(subject: str) -> str:
    """The subject a reply to a mail with ``subject`` has."""
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


def links(actions: Sequence[Action], to: str, subject: str) -> list[tuple[str, str]]:
    """Each action's label and URL, for a notice whose Reply-To is ``to``."""
    return [(a.label, mailto(to, reply_subject(subject), a.line)) for a in actions]


INTRO = "Or act in one tap (each link opens a mail to send as it is):"


def with_actions(rendered: Rendered, actions: Sequence[Action], to: str | None) -> Rendered:
    """A notice to an agent with its actions: the links as lines at the end of its text, and an
    HTML part made of that text and buttons when its templates gave none (an operator's HTML
    template is kept as written). Without a reply address there are no links."""
    urls = links(actions, to, rendered.subject) if to else []
    text = rendered.text
    if text is not None and urls:
        lines = "\n".join(f"{label}: {url}" for label, url in urls)
        text = f"{text.rstrip()}\n\n{INTRO}\n{lines}\n"
    html = rendered.html
    if html is None and rendered.text is not None:
        html = render_page(_PAGE, {"text": rendered.text.rstrip(), "links": urls})
    return Rendered(rendered.subject, text, html)


# Inline styles only (mail clients drop <style> and never fetch anything): the notice's text as
# written, its line breaks kept, then one link per action drawn as a button.
_PAGE = """\
<!doctype html>
<html><body style="font-family: sans-serif; line-height: 1.4">
<div style="white-space: pre-wrap; font-family: monospace, monospace; font-size: 13px">{{ text }}</div>
{% if links %}
<p style="margin: 16px 0 4px 0">Or act in one tap:</p>
<p style="margin: 0">
{% for label, url in links %}
<a href="{{ url }}" style="display: inline-block; margin: 4px 6px 4px 0; padding: 8px 14px; \
background-color: #1a5fb4; color: #ffffff; text-decoration: none; border-radius: 4px; \
font-family: sans-serif; font-size: 14px">{{ label }}</a>
{% endfor %}
</p>
{% endif %}
</body></html>
"""


def without_tokens(rendered: Rendered, desk_address: str) -> Rendered:
    """``rendered`` with the desk's plus-addresses written as its plain address: for mail to
    anyone but an agent, which must not carry a notice's token address or its links on."""

    def plain(text: str | None) -> str | None:
        return None if text is None else without_plus_addresses(text, desk_address)

    return Rendered(plain(rendered.subject) or "", plain(rendered.text), plain(rendered.html))
