"""Building the desk from its config: the store, mailer, clock and parser, and the values the
desk's rules read.

The composition root: the daemon, the command line, the demo and the tests call ``desk_for``
once and hand the ``act.means.Desk`` it returns to the act layer. A part given is used as it
is (the tests' clock, a reload's store and parser); the others are made from the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from maildesk.act.means import Desk
from maildesk.act.outbox import Mailer
from maildesk.config import Settings, StoreBackend
from maildesk.database import Database
from maildesk.desk import commands, people
from maildesk.desk.routing import Identity
from maildesk.mail.parsing import Parser
from maildesk.store import Store
from maildesk.store.directory import DirectoryStore
from maildesk.store.rows import DatabaseStore

CANNED = "canned/"  # where the canned replies are among the templates


def desk_for(
    settings: Settings,
    *,
    store: Store | None = None,
    mailer: Mailer | None = None,
    clock: Callable[[], datetime] | None = None,
    parser: Parser | None = None,
) -> Desk:
    """The desk of ``settings``; the parts not given are made from them. Its secret must be
    settled first (``maildesk.shared_secret``): marks made with an empty one prove nothing."""
    if not settings.desk.secret:
        raise ValueError("the desk's secret is not read from the database yet")
    mailer = mailer or Mailer(settings)
    return Desk(
        settings=settings,
        store=store or store_for(settings),
        mailer=mailer,
        clock=clock or (lambda: datetime.now(UTC)),
        parser=parser or Parser(),  # starts no process until it is used
        identity=identity_of(settings),
        directory=directory_of(settings, canned_names(mailer)),
    )


def store_for(settings: Settings, backend: StoreBackend | None = None) -> Store:
    """The store ``[store] backend`` names (or ``backend``): the database's on an engine of
    its own, since its writes run while the message's transaction holds a connection."""
    if (backend or settings.store) == StoreBackend.DATABASE:
        return DatabaseStore(Database(settings.database_url))
    return DirectoryStore(settings.desk.data_dir)


def identity_of(settings: Settings) -> Identity:
    """Who the desk is, as routing reads it."""
    return Identity(
        address=settings.desk.address,
        secret=settings.desk.secret,
        loop_id=settings.desk.loop_id,
        ref_pattern=settings.desk.ref_pattern,
        agents=frozenset(a.email for a in settings.agents),
    )


def directory_of(settings: Settings, canned: tuple[str, ...]) -> commands.Directory:
    """What agents' commands may name: the agents, the teams and the canned replies."""
    return commands.Directory(
        agents=tuple((a.email, a.name, a.teams) for a in settings.agents),
        teams=tuple(t.name for t in settings.teams),
        canned=canned,
        own=people.own_addresses(settings),
    )


def canned_names(mailer: Mailer) -> tuple[str, ...]:
    """The canned replies among the mailer's templates (``canned/<name>.txt.j2``)."""
    return tuple(
        n[len(CANNED) : -len(".txt.j2")]
        for n in mailer.templates.names(CANNED)
        if n.endswith(".txt.j2")
    )
