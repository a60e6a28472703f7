"""The means the writers work with: the desk's settings, blob store, mailer, clock and parser.

Built once by whoever runs the desk (the daemon, the command line, the demo) and handed to each
step of the act layer; the desk's pure rules see only values taken from it (``identity``,
``directory``, the settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

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


class Desk:
    """What the lifecycle rules need: settings, the blob store, the mailer and the clock; and
    the parser, whose worker processes parse each message within its budget."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        mailer: Mailer | None = None,
        clock: Callable[[], datetime] | None = None,
        parser: Parser | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings.desk.data_dir)
        self.mailer = mailer or Mailer(settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.parser = parser or Parser()  # starts no process until it is used
        self.identity = Identity(
            address=settings.desk.address,
            secret=settings.desk.secret,
            loop_id=settings.desk.loop_id,
            ref_pattern=settings.desk.ref_pattern,
            agents=frozenset(a.email for a in settings.agents),
        )
        self.directory = commands.Directory(
            agents=tuple((a.email, a.name, a.teams) for a in settings.agents),
            teams=tuple(t.name for t in settings.teams),
            canned=tuple(self.canned_names()),
        )

    def canned_names(self) -> list[str]:
        prefix = "canned/"
        return [
            n[len(prefix) : -len(".txt.j2")]
            for n in self.mailer.templates.names(prefix)
            if n.endswith(".txt.j2")
        ]

    def ref(self, ticket: Ticket) -> str:
        return self.settings.desk.ref(ticket.id)

    def close(self) -> None:
        """End the parser's worker processes."""
        self.parser.close()
