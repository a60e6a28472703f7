"""Loop protection: which automatic mail to an outside address is held, and why.

Part of the last stage: ``outbox.Mailer`` asks ``held`` before it writes the row of an
automatic mail to a customer (mail carrying an agent's words, and mail to agents, is never
held). Held: the desk's own addresses, system addresses (never auto-mailed), addresses that
bounced permanently (the suppression list ``bounces`` keeps with ``suppress``) and any address
that already had its hourly cap of automatic mail. The outbox keeps a held mail's row as
suppressed, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update

from maildesk.config import Settings
from maildesk.mail.marks import is_desk_address
from maildesk.models import Outbox, OutboxStatus, Suppression, insert_row

NO_AUTO_MAIL = re.compile(
    r"^(mailer-daemon|postmaster|abuse|root|noreply|noreply.+|no-reply|no-reply.+|bounces?)@",
    re.IGNORECASE,
)
LOOP_PROTECTION = "loop protection"
SUPPRESS_AFTER_BOUNCE = timedelta(days=7)

# Built once, with bound parameters: composing a statement costs more than running it.
_SUPPRESSION = select(Suppression.until, Suppression.reason, Suppression.bounced_at).where(
    Suppression.address == bindparam("address")
)
_LAST_SENT = select(func.max(Outbox.created_at)).where(
    Outbox.recipient == bindparam("to"),
    Outbox.kind == bindparam("kind"),
    Outbox.status != OutboxStatus.SUPPRESSED,
)
HELD_SINCE = (
    Outbox.recipient == bindparam("to"),
    Outbox.kind == bindparam("kind"),
    Outbox.status == OutboxStatus.SUPPRESSED,
    Outbox.created_at >= bindparam("since"),
)
_HELD = select(func.count(Outbox.id)).where(*HELD_SINCE)
_RECENT_AUTOMATIC = select(func.count(Outbox.id)).where(
    Outbox.recipient == bindparam("address"),
    Outbox.automatic.is_(True),
    Outbox.status != OutboxStatus.SUPPRESSED,
    Outbox.created_at > bindparam("since"),
)


@dataclass(frozen=True, slots=True)
class Bounced:
    """An address that bounced permanently: when (None: not recorded) and the server's status."""

    at: datetime | None
    status: str


@dataclass(frozen=True, slots=True)
class Hourly:
    """Where a mail sent at most once an hour to one address stands: when the last one went
    (None: never), how many were held back since, and whether this one is held back too."""

    last_sent: datetime | None
    held: int
    hold: bool

    def bind(self, to: str, kind: str) -> dict[str, Any]:
        """The parameters of ``HELD_SINCE``, for a caller's own question about the held."""
        return {"to": to, "kind": kind, "since": self.last_sent}


HOURLY = timedelta(hours=1)


def hourly(session: Any, kind: str, to: str, now: datetime) -> Hourly:
    """For a notice that forged or repeated mail could multiply (an outbox ``kind`` to ``to``):
    one an hour is sent, one within the hour after it is written to the outbox held back, and
    the next one sent can say how many came since. Counted in the database, so the cap holds
    across daemons and ``maildesk ingest``."""
    last = session.scalar(_LAST_SENT, {"to": to, "kind": kind})
    held = session.scalar(_HELD, {"to": to, "kind": kind, "since": last}) if last else 0
    return Hourly(last, held or 0, last is not None and last > now - HOURLY)


# ``session.info`` key: the suppression rows this transaction has read, by address (None: no
# row). A new ticket asks twice (whether its sender's marks need clearing, whether its
# acknowledgment is held); suppressions are only written by ``suppress``, which forgets them.
_READ = "maildesk.suppressions"


def suppression(session: Any, address: str) -> Any:
    """The suppression row of ``address`` (``until``, ``reason``, ``bounced_at``), or None;
    read once per transaction, without flushing the transaction's pending rows."""
    address = address.lower()
    read = session.info.setdefault(_READ, {})
    if address not in read:
        with session.no_autoflush:
            read[address] = session.execute(_SUPPRESSION, {"address": address}).first()
    return read[address]


def bounced(session: Any, address: str, now: datetime) -> Bounced | None:
    """The permanent bounce that suppresses automatic mail to ``address`` now, if any."""
    row = suppression(session, address)
    if row is None or row.until <= now:
        return None
    return Bounced(row.bounced_at, row.reason)


def suppress(session: Any, address: str, status: str, now: datetime) -> None:
    """No automatic mail to ``address`` for ``SUPPRESS_AFTER_BOUNCE``: it bounced permanently
    with ``status``. An insert that two daemons may race on, then the update: never a conflict."""
    values = {
        "until": now + SUPPRESS_AFTER_BOUNCE,
        "reason": status,
        "bounced_at": now,
    }
    address = address.lower()
    session.info.get(_READ, {}).pop(address, None)
    insert_row(session, Suppression, {"address": address, **values}, once=True)
    session.execute(update(Suppression).where(Suppression.address == address).values(**values))


def held(session: Any, settings: Settings, to: str, now: datetime) -> str | None:
    """Why automatic mail to the outside address ``to`` is held now (None: it goes out): the
    desk's own address, a system address, a permanent bounce, the hourly cap."""
    address = to.lower()
    desk = settings.desk
    if is_desk_address(address, desk.address):
        return "the desk's own address"
    if NO_AUTO_MAIL.match(address):
        return "system address (never auto-mailed)"
    bounce = bounced(session, address, now)
    if bounce is not None:
        return f"address bounced permanently ({bounce.status})"
    limit = settings.limits.auto_replies_per_address_per_hour
    recent = session.scalar(
        _RECENT_AUTOMATIC, {"address": address, "since": now - timedelta(hours=1)}
    )
    if recent is not None and recent >= limit:
        return f"{LOOP_PROTECTION}: {recent} automatic mails to this address in the last hour"
    return None


def first_throttled(session: Any, now: datetime) -> bool:
    """Whether this is the first mail held back by the hourly cap in the last hour, to any
    address: a forger writing in the names of a thousand addresses makes a thousand hit
    it, and one alert says as much as a thousand."""
    earlier = session.scalar(
        select(Outbox.id)
        .where(
            Outbox.status == OutboxStatus.SUPPRESSED,
            Outbox.last_error.startswith(LOOP_PROTECTION),
            Outbox.created_at > now - timedelta(hours=1),
        )
        .limit(1)
    )
    return earlier is None
