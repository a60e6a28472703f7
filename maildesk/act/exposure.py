"""A personal desk address shown to others: it proves its agent, so once someone outside the
desk has seen it (in the To: or Cc: of a mail she sent to it) it is no longer hers alone.

Anyone who holds it can send mail in her name (a forged From:) that the desk takes as hers. The
desk cannot take back what a recipient has seen, so it tells her at once, with whom it was
shown and how to have a new address made (``[[agents]] address_version``); at most once an
hour, counting the others, as forged mail could repeat it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from maildesk.act import guard
from maildesk.act.means import Desk
from maildesk.act.notices import enqueue, personal_address
from maildesk.act.outbox import Mail
from maildesk.act.people import outsiders
from maildesk.config import AgentSettings
from maildesk.desk import auth
from maildesk.mail.inbound import Inbound

log = logging.getLogger("maildesk.agents")

SHOWN = "address_shown"  # the outbox kind of the notice
TEMPLATE = "agent_address_shown"
HELD_BACK = "held back: one notice about a personal address shown to others an hour"
NAMED = 10  # recipients named in the notice; the rest are counted


def shown_to(desk: Desk, inbound: Inbound) -> list[str]:
    """Whom the mail shows the desk's address it went to: its To: and Cc: but the desk's own
    addresses and its agents."""
    others = outsiders(desk)
    seen = {a.lower() for a in (*inbound.to, *inbound.cc)}
    return sorted(a for a in seen if a and not others.excludes(a))


def check(
    session: Session,
    desk: Desk,
    agent: AgentSettings,
    proof: auth.Proof,
    inbound: Inbound,
    now: datetime,
) -> None:
    """When ``proof`` is ``agent``'s personal address and the mail showed it to someone outside
    the desk, tell her."""
    if not proof.ok or proof.method != "address":
        return
    seen = shown_to(desk, inbound)
    if not seen:
        return
    address = personal_address(desk, agent)
    cap = guard.hourly(session, SHOWN, agent.email, now)
    mail = Mail(
        kind=SHOWN,
        template=TEMPLATE,
        to=agent.email,
        context={
            "agent": {"email": agent.email, "name": agent.name},
            "address": address,
            "shown_to": seen[:NAMED],
            "more": max(len(seen) - NAMED, 0),
            "subject": inbound.subject or "",
            "count": cap.held + 1,
        },
        to_agent=True,
        reply_to=address,
    )
    enqueue(session, desk, [replace(mail, held_back=HELD_BACK) if cap.hold else mail], now)
    log.warning(
        "personal desk address of %s shown to %d recipient(s) outside the desk <%s>",
        agent.email,
        len(seen),
        inbound.message_id,
        extra={"message_id": inbound.message_id, "ticket": "-"},
    )
