"""The means the writers work with: the desk's settings, blob store, mailer, clock and parser.

Built once from the config by ``service.wiring`` for whoever runs the desk (the daemon, the
command line, the demo) and handed to each step of the act layer; the desk's pure rules see
only values taken from it (``identity``, ``directory``, the settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from maildesk.act.outbox import Mailer
from maildesk.config import Settings
from maildesk.desk import commands
from maildesk.desk.routing import Identity
from maildesk.mail.parsing import Parser
from maildesk.models import Ticket
from maildesk.store import Store


@dataclass(frozen=True, slots=True)
class StoredMail:
    """Where the raw bytes of the message being handled were kept."""

    raw_path: str | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Desk:
    """What the writers work with: the settings, the blob store, the mailer and the clock; the
    parser, whose worker processes parse each message within its budget; and the values the
    desk's rules read (``identity`` for routing, ``directory`` for commands). Built from the
    config by ``service.wiring.desk_for``."""

    settings: Settings
    store: Store
    mailer: Mailer
    clock: Callable[[], datetime]
    parser: Parser
    identity: Identity
    directory: commands.Directory

    def ref(self, ticket: Ticket) -> str:
        return self.settings.desk.ref(ticket.id)

    def close(self) -> None:
        """End the parser's worker processes, and let go of the store."""
        self.parser.close()
        self.store.close()
