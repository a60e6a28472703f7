"""The settings as values: frozen dataclasses for each table, and the config's errors.

The bottom of the config package (and of maildesk): ``reading`` fills these from the TOML,
everything else in maildesk reads them. ``ConfigError`` is one line naming the file and the key;
the CLI turns it into exit code 78 (``EX_CONFIG``) without a traceback.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

EX_CONFIG = 78


class ConfigError(Exception):
    """A config problem, already phrased as one line naming the file and the key."""


class NoSuchMailbox(ConfigError):
    """A command named a mailbox that is not in ``[[mailboxes]]`` (``ingest --mailbox``)."""

    def __init__(self, path: Path, name: str) -> None:
        super().__init__(f"{path}: no mailbox named {name!r} in [[mailboxes]]")
        self.name = name


class ForeignDataDir(ConfigError):
    """Root runs a command on a data directory that belongs to another user (the service's):
    what it wrote there would be root's, and the service could not write it."""

    def __init__(self, path: Path, data_dir: Path, owner: str) -> None:
        super().__init__(
            f"{path}: [desk] data_dir: {data_dir} belongs to user {owner}; run maildesk as "
            f"{owner} (runuser -u {owner} -- maildesk ...): files root made there would be "
            f"root's, and maildesk running as {owner} could not write them"
        )
        self.owner = owner


class Transport(enum.StrEnum):
    """How a mailbox's mail reaches maildesk: fetched over IMAP by ``run``, or handed to
    ``maildesk ingest`` by the MTA's pipe."""

    IMAP = "imap"
    PIPE = "pipe"


@dataclass(frozen=True, slots=True)
class DeskSettings:
    name: str
    address: str
    data_dir: Path
    secret: bytes
    templates_dir: Path | None = None
    admin_address: str | None = None
    ref_format: str = "[#{number}]"
    loop_id: str = ""  # identifies this installation in X-Maildesk-Loop

    @property
    def local_part(self) -> str:
        return self.address.rsplit("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1]

    def ref(self, number: int) -> str:
        return self.ref_format.format(number=number)

    @property
    def ref_pattern(self) -> str:
        """A regex matching a ref in a subject, with the number in group ``number``."""
        before, _, after = self.ref_format.partition("{number}")
        return re.escape(before) + r"(?P<number>\d{1,12})" + re.escape(after)


# the highest number a ticket can have (a PostgreSQL integer): a ref beyond it names no ticket
MAX_TICKET_NUMBER = 2**31 - 1


@dataclass(frozen=True, slots=True)
class MailboxSettings:
    name: str
    host: str
    port: int
    security: str
    username: str
    password: str
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    poll_seconds: float = 60.0
    team: str = ""
    auth: str = "password"
    oauth_token_command: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret_file: Path | None = None
    oauth_refresh_token_file: Path | None = None
    oauth_token_url: str | None = None
    oauth_token: Callable[[], str] | None = None
    ssl_context: Any = None
    transport: Transport = Transport.IMAP
    # the addresses mail to it is sent to (aliases), besides ``username`` when that is one
    addresses: tuple[str, ...] = ()
    # a new mail's one Reply-To address, not From's, the desk's or a list's, is its requester
    reply_to_requester: bool = True

    @property
    def watched(self) -> bool:
        """``run`` logs in to it and watches it (an IMAP mailbox); a pipe mailbox is fed by
        ``ingest``."""
        return self.transport is Transport.IMAP


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    auth: str = "password"
    oauth_token_command: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret_file: Path | None = None
    oauth_refresh_token_file: Path | None = None
    oauth_token_url: str | None = None
    ssl_context: Any = None


class AssignBy(enum.StrEnum):
    """How a team's new tickets get an assignee (``[[teams]] assign``)."""

    NONE = "none"  # nobody: the team is told, an agent takes it
    ROUND_ROBIN = "round_robin"  # each available agent of the team in turn
    LEAST_OPEN = "least_open"  # the available agent with the fewest tickets not closed


@dataclass(frozen=True, slots=True)
class TeamSettings:
    name: str
    assign: AssignBy = AssignBy.NONE


@dataclass(frozen=True, slots=True)
class AgentSettings:
    email: str
    name: str
    teams: tuple[str, ...]
    address_version: int = 1  # of the personal desk address; a new one revokes the old
    available: bool = True  # takes new tickets by automatic assignment


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """One ``[[rules]]`` table: the regular expressions a new ticket's mail must all match
    (None: not looked at), and what then happens to the ticket."""

    name: str
    sender: str | None = None  # ``from``: the From header, name and address
    recipients: str | None = None  # ``to``: any address of To, Cc, Delivered-To
    subject: str | None = None
    body: str | None = None
    team: str | None = None
    priority: str | None = None
    tags: tuple[str, ...] = ()
    assign: str | None = None  # an agent's address
    ignore: bool = False  # no ticket at all
    acknowledge: bool = True  # False: the customer is not acknowledged
    stop: bool = False  # no later rule is looked at


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    token_days: int = 180
    trusted_authserv_ids: tuple[str, ...] = ()
    agent_auth: str = "required"


@dataclass(frozen=True, slots=True)
class LifecycleSettings:
    reopen_days: int = 30
    remind_pending_after: timedelta | None = timedelta(days=3)
    close_pending_after: timedelta | None = timedelta(days=7)
    ack_forwarded: bool = True  # a ticket an agent opens by forwarding: its customer is told
    claim_on_reply: bool = True  # an agent's public reply to an unassigned ticket takes it


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_message_bytes: int = 50 * 1000 * 1000
    max_attachment_bytes: int = 25 * 1000 * 1000
    max_mime_depth: int = 20
    max_parts: int = 500
    max_headers: int = 1000
    auto_replies_per_address_per_hour: int = 10
    parse_seconds: float = 10.0
    parse_memory_mb: int = 512
    max_text_chars: int = 200_000
    new_sender_acks_per_hour: int = 100
    # the files of an agent's reply, in all, that go on to the customer with it
    max_outbound_bytes: int = 20 * 1000 * 1000
    # the customer's files a notice to an agent carries, in all (the rest are named); and each
    # mail of ``#files`` at most
    notice_attachment_bytes: int = 10 * 1000 * 1000


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """``[intake]``: what mail opens nothing, or only a ``spam`` ticket (``desk.spam``)."""

    spam_headers: bool = True
    trusted_spam_hosts: tuple[str, ...] = ()  # lower case; empty: trust the topmost hop only
    blocked_senders: tuple[str, ...] = ()  # globs on the lower-case address


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = "text"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str | None = None


@dataclass(frozen=True, slots=True)
class SlaTarget:
    first_response: timedelta | None = None
    resolution: timedelta | None = None
    escalate_to: str | None = None


@dataclass(frozen=True, slots=True)
class BusinessHours:
    days: tuple[int, ...] = (0, 1, 2, 3, 4)  # Monday = 0
    start: str = "09:00"
    end: str = "17:00"
    timezone: str = "UTC"
    holidays: tuple[str, ...] = ()  # ISO dates


class StoreBackend(enum.StrEnum):
    """Where attachments and large raw mail are kept (``[store] backend``)."""

    DIRECTORY = "directory"  # files under data_dir: this host's, or a directory hosts share
    DATABASE = "database"  # rows of the database: every host on it reads them


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """``[digest]``: each working day at ``at`` (HH:MM, the desk's zone) every agent is mailed
    her open tickets; ``admin``: the admin the day's figures too. No table: no digest."""

    at: str
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    desk: DeskSettings
    database_url: str
    mailboxes: tuple[MailboxSettings, ...]
    smtp: SmtpSettings
    teams: tuple[TeamSettings, ...]
    agents: tuple[AgentSettings, ...]
    security: SecuritySettings = field(default_factory=SecuritySettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sla: dict[str, SlaTarget] = field(default_factory=dict)
    business_hours: BusinessHours | None = None
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    rules: tuple[RuleSettings, ...] = ()
    digest: DigestSettings | None = None
    warnings: tuple[str, ...] = ()
    store: StoreBackend = StoreBackend.DIRECTORY

    def agent(self, address: str | None) -> AgentSettings | None:
        if not address:
            return None
        address = address.lower()
        for agent in self.agents:
            if agent.email == address:
                return agent
        return None

    @property
    def zone(self) -> str:
        """The desk's time zone: that of ``[business_hours]``, else UTC."""
        return self.business_hours.timezone if self.business_hours else "UTC"

    def team_agents(self, team: str) -> tuple[AgentSettings, ...]:
        return tuple(a for a in self.agents if team in a.teams)

    def team(self, name: str) -> TeamSettings | None:
        return next((team for team in self.teams if team.name == name), None)

    def mailbox(self, name: str) -> MailboxSettings:
        for box in self.mailboxes:
            if box.name == name:
                return box
        raise NoSuchMailbox(self.path, name)

    @property
    def watched(self) -> tuple[MailboxSettings, ...]:
        """The IMAP mailboxes, which ``run`` watches and ``/healthz`` reports on."""
        return tuple(box for box in self.mailboxes if box.watched)

    def ingest_mailbox(self, name: str | None) -> MailboxSettings:
        """The mailbox ``ingest`` files a message under: ``name``, else the first pipe
        mailbox, else the first mailbox."""
        if name is not None:
            return self.mailbox(name)
        piped = [box for box in self.mailboxes if not box.watched]
        return (piped or list(self.mailboxes))[0]
