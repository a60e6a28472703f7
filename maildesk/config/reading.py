"""The config file to ``Settings``: read once at start (and again on SIGHUP), every error
one line naming the file and the key.

The top of the config package: ``load`` reads the TOML, ``build`` reads its tables in a fixed
order (the desk, the database, teams, agents, mailboxes, SMTP, then the rest) through
``table.Table``, with ``mailboxes`` for where mail comes in and goes out and ``secret`` for the
desk's secret, and collects ``exposure``'s warnings. Nothing else in maildesk reads the config
file or the environment for settings.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from maildesk import private
from maildesk.config.exposure import credential_warnings, file_warnings
from maildesk.config.mailboxes import read_mailbox, read_smtp
from maildesk.config.rules import read_rules
from maildesk.config.secret import derive_loop_id, given_secret
from maildesk.config.settings import (
    AgentSettings,
    AssignBy,
    BusinessHours,
    ConfigError,
    DeskSettings,
    DigestSettings,
    ForeignDataDir,
    IntakeSettings,
    LifecycleSettings,
    LimitsSettings,
    LogSettings,
    MailboxSettings,
    MetricsSettings,
    SecuritySettings,
    Settings,
    SlaTarget,
    StoreBackend,
    TeamSettings,
)
from maildesk.config.table import Table, resolve

T = TypeVar("T")


def find_config(explicit: str | None) -> Path:
    """``--config PATH``, else ``$MAILDESK_CONFIG``, else ``./maildesk.toml``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("MAILDESK_CONFIG"):
        return Path(os.environ["MAILDESK_CONFIG"])
    return Path("maildesk.toml")


def load(path: Path) -> Settings:
    """Read and validate the config file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return build(data, path.resolve())


KNOWN_TABLES = (
    "desk",
    "database",
    "mailboxes",
    "smtp",
    "teams",
    "agents",
    "security",
    "lifecycle",
    "limits",
    "log",
    "metrics",
    "sla",
    "business_hours",
    "intake",
    "rules",
    "store",
    "digest",
)


def build(data: dict[str, Any], path: Path) -> Settings:
    """Validate parsed TOML ``data`` from the file at ``path`` into ``Settings``; the tables
    are read in this order, so the first error a file has is always the same one."""
    _known_tables(data, path)
    base = path.parent
    desk = _read_desk(Table(data.get("desk", {}), "[desk]", path), base, "desk" in data)
    database_url = _read_database(Table(data.get("database", {}), "[database]", path), desk)
    store = _read_store(Table(data.get("store", {}), "[store]", path), database_url)
    teams = _read_teams(data, path)
    team_names = {t.name for t in teams}
    agents = _read_agents(data, path, team_names)
    mailboxes = _read_mailboxes(data, path, team_names)
    if "smtp" not in data:
        raise ConfigError(f"{path}: [smtp]: missing (required)")
    smtp = read_smtp(Table(data["smtp"], "[smtp]", path), base)
    security = _read_security(Table(data.get("security", {}), "[security]", path))
    lifecycle = _read_lifecycle(Table(data.get("lifecycle", {}), "[lifecycle]", path))
    limits = _read_limits(Table(data.get("limits", {}), "[limits]", path))
    log = _read_log(Table(data.get("log", {}), "[log]", path))
    metrics = _read_metrics(Table(data.get("metrics", {}), "[metrics]", path))
    sla = _read_sla(data.get("sla", {}), path, team_names)
    hours = None
    if "business_hours" in data:
        hours = _read_hours(Table(data["business_hours"], "[business_hours]", path))
    intake = _read_intake(Table(data.get("intake", {}), "[intake]", path), desk, agents)
    rules = read_rules(data, path, team_names, {a.email for a in agents})
    digest = (
        _read_digest(Table(data["digest"], "[digest]", path), desk) if "digest" in data else None
    )
    warnings = [
        *_security_warnings(security),
        *file_warnings(path, data, desk, database_url),
        *credential_warnings(database_url, mailboxes, smtp),
    ]
    return Settings(
        path=path,
        desk=desk,
        database_url=database_url,
        mailboxes=tuple(mailboxes),
        smtp=smtp,
        teams=tuple(teams),
        agents=tuple(agents),
        security=security,
        lifecycle=lifecycle,
        limits=limits,
        log=log,
        metrics=metrics,
        sla=sla,
        business_hours=hours,
        intake=intake,
        rules=rules,
        digest=digest,
        warnings=tuple(warnings),
        store=store,
    )


def _known_tables(data: dict[str, Any], path: Path) -> None:
    Table(data, "", path)  # the top level is a table
    for key in data:
        if key not in KNOWN_TABLES:
            raise ConfigError(f"{path}: [{key}]: unknown table")


def _read_database(t: Table, desk: DeskSettings) -> str:
    url = t.get("url", str, f"sqlite:///{desk.data_dir / 'maildesk.db'}")
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise t.fail("url", "must be a sqlite:/// or postgresql+psycopg:// URL")
    t.finish()
    return url


def _read_store(t: Table, database_url: str) -> StoreBackend:
    """The database on PostgreSQL (every host on it reads the files), else the directory. The
    database store takes writes on connections of its own while a message's transaction is
    open, which SQLite (one writer at a time) cannot take."""
    sqlite = database_url.startswith("sqlite")
    default = StoreBackend.DIRECTORY if sqlite else StoreBackend.DATABASE
    backend = StoreBackend(t.choice("backend", tuple(StoreBackend), default))
    if backend == StoreBackend.DATABASE and sqlite:
        raise t.fail("backend", '"database" needs PostgreSQL ([database] url); use "directory"')
    t.finish()
    return backend


def _read_teams(data: dict[str, Any], path: Path) -> list[TeamSettings]:
    teams = _read_list(data, "teams", path, _read_team)
    if not teams:
        raise ConfigError(f"{path}: [[teams]]: at least one team is required")
    if len({t.name for t in teams}) != len(teams):
        raise ConfigError(f"{path}: [[teams]] name: duplicate team name")
    return teams


def _read_agents(data: dict[str, Any], path: Path, teams: set[str]) -> list[AgentSettings]:
    agents = _read_list(data, "agents", path, lambda t: _read_agent(t, teams))
    if len({a.email for a in agents}) != len(agents):
        raise ConfigError(f"{path}: [[agents]] email: duplicate agent address")
    return agents


def _read_mailboxes(data: dict[str, Any], path: Path, teams: set[str]) -> list[MailboxSettings]:
    mailboxes = _read_list(data, "mailboxes", path, lambda t: read_mailbox(t, path.parent, teams))
    if not mailboxes:
        raise ConfigError(f"{path}: [[mailboxes]]: at least one mailbox is required")
    if len({m.name for m in mailboxes}) != len(mailboxes):
        raise ConfigError(f"{path}: [[mailboxes]] name: duplicate mailbox name")
    return mailboxes


def _security_warnings(security: SecuritySettings) -> list[str]:
    if security.agent_auth != "none":
        return []
    return [
        '[security] agent_auth = "none": agent commands are NOT authenticated; anyone who '
        "can forge an agent's From: address can act on tickets. Use only on closed networks."
    ]


_HOST = re.compile(r"^[\w.:-]{1,253}$")
_GLOB = re.compile(r"^[^\s@]{1,64}@[^\s@]{1,255}$")


def _read_intake(t: Table, desk: DeskSettings, agents: list[AgentSettings]) -> IntakeSettings:
    hosts = tuple(
        h.strip().lower().strip("[]").rstrip(".") for h in t.strings("trusted_spam_hosts")
    )
    for host in hosts:
        if not _HOST.match(host):
            raise t.fail("trusted_spam_hosts", f"not a host name or address: {host!r}")
    patterns = tuple(p.strip().lower() for p in t.strings("blocked_senders"))
    for pattern in patterns:
        if not _GLOB.match(pattern):
            raise t.fail(
                "blocked_senders",
                f'expected an address or a glob like "*@spam.test", got {pattern!r}',
            )
        for own in (desk.address, *(a.email for a in agents)):
            if fnmatch.fnmatchcase(own.lower(), pattern):
                raise t.fail(
                    "blocked_senders",
                    f"{pattern!r} would block {own}, the desk's own or an agent's address",
                )
    intake = IntakeSettings(
        spam_headers=t.get("spam_headers", bool, True),
        trusted_spam_hosts=hosts,
        blocked_senders=patterns,
    )
    t.finish()
    return intake


def _read_log(t: Table) -> LogSettings:
    log = LogSettings(
        format=t.choice("format", ("text", "json"), "text"),
        level=t.choice("level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    )
    t.finish()
    return log


def _read_metrics(t: Table) -> MetricsSettings:
    metrics = MetricsSettings(listen=t.get("listen", str))
    if metrics.listen is not None and not re.match(r"^[\w.\-\[\]:]+:\d+$", metrics.listen):
        raise t.fail("listen", f'expected "host:port", got {metrics.listen!r}')
    t.finish()
    return metrics


def _read_list(data: dict[str, Any], key: str, path: Path, read: Callable[[Table], T]) -> list[T]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: [[{key}]]: must be an array of tables ([[{key}]])")
    out = []
    for index, item in enumerate(items):
        table = Table(item, f"[[{key}]] #{index + 1}", path)
        out.append(read(table))
        table.finish()
    return out


def _read_desk(t: Table, base: Path, present: bool) -> DeskSettings:
    if not present:
        raise ConfigError(f"{t.file}: [desk]: missing (required)")
    name = t.get("name", str, required=True)
    address = t.address("address", required=True)
    data_dir = resolve(base, t.get("data_dir", str, required=True))
    owner = private.foreign_owner(data_dir)
    if owner is not None:  # before anything is written there
        raise ForeignDataDir(t.file, data_dir, owner)
    ref_format = t.get("ref_format", str, "[#{number}]")
    if ref_format.count("{number}") != 1 or re.search(r"\{(?!number\})", ref_format):
        raise t.fail("ref_format", 'must contain "{number}" exactly once and no other braces')
    admin = t.address("admin_address") if "admin_address" in t.data else None
    templates_dir = t.path("templates_dir", base)
    if templates_dir is not None and not templates_dir.is_dir():
        raise t.fail("templates_dir", f"{templates_dir} is not a directory")
    secret = given_secret(t, base)
    loop_id = t.get("loop_id", str, "")
    t.finish()
    return DeskSettings(
        name=name,
        address=address,
        data_dir=data_dir,
        secret=secret,
        templates_dir=templates_dir,
        admin_address=admin,
        ref_format=ref_format,
        # none given: derived once the desk's secret is read from the database
        loop_id=loop_id or (derive_loop_id(secret) if secret else ""),
    )


def _read_team(t: Table) -> TeamSettings:
    name = t.get("name", str, required=True)
    if not re.match(r"^[\w.-]{1,64}$", name):
        raise t.fail("name", f"team names are single words (letters, digits, . _ -), got {name!r}")
    t.get("description", str, "")
    assign = t.choice("assign", tuple(AssignBy), AssignBy.NONE.value)
    return TeamSettings(name=name, assign=AssignBy(assign))


def _read_agent(t: Table, teams: set[str]) -> AgentSettings:
    email = t.address("email", required=True)
    name = t.get("name", str, email.split("@")[0])
    agent_teams = t.strings("teams")
    for team in agent_teams:
        if team not in teams:
            raise t.fail("teams", f"team {team!r} does not exist in [[teams]]")
    version = t.positive("address_version", 1)
    return AgentSettings(
        email=email,
        name=name,
        teams=agent_teams,
        address_version=version,
        available=t.get("available", bool, True),
    )


def _read_security(t: Table) -> SecuritySettings:
    settings = SecuritySettings(
        token_days=t.positive("token_days", 180),
        trusted_authserv_ids=tuple(s.lower() for s in t.strings("trusted_authserv_ids")),
        agent_auth=t.choice("agent_auth", ("required", "none"), "required"),
    )
    t.finish()
    return settings


def _read_lifecycle(t: Table) -> LifecycleSettings:
    settings = LifecycleSettings(
        reopen_days=t.positive("reopen_days", 30),
        remind_pending_after=t.duration("remind_pending_after", timedelta(days=3)),
        close_pending_after=t.duration("close_pending_after", timedelta(days=7)),
        ack_forwarded=t.get("ack_forwarded", bool, True),
        claim_on_reply=t.get("claim_on_reply", bool, True),
    )
    t.finish()
    return settings


def _read_limits(t: Table) -> LimitsSettings:
    d = LimitsSettings()
    settings = LimitsSettings(
        max_message_bytes=t.positive("max_message_bytes", d.max_message_bytes),
        max_attachment_bytes=t.positive("max_attachment_bytes", d.max_attachment_bytes),
        max_mime_depth=t.positive("max_mime_depth", d.max_mime_depth),
        max_parts=t.positive("max_parts", d.max_parts),
        max_headers=t.positive("max_headers", d.max_headers),
        auto_replies_per_address_per_hour=t.positive(
            "auto_replies_per_address_per_hour", d.auto_replies_per_address_per_hour
        ),
        parse_seconds=t.positive_float("parse_seconds", d.parse_seconds),
        parse_memory_mb=t.positive("parse_memory_mb", d.parse_memory_mb),
        max_text_chars=t.positive("max_text_chars", d.max_text_chars),
        new_sender_acks_per_hour=t.positive("new_sender_acks_per_hour", d.new_sender_acks_per_hour),
        max_outbound_bytes=t.positive("max_outbound_bytes", d.max_outbound_bytes),
        notice_attachment_bytes=t.positive("notice_attachment_bytes", d.notice_attachment_bytes),
    )
    t.finish()
    return settings


PRIORITIES = ("low", "medium", "high", "urgent")


def _read_sla(data: Any, path: Path, teams: set[str]) -> dict[str, SlaTarget]:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [sla]: must be a table of [sla.<priority>] tables")
    out = {}
    for priority, item in data.items():
        if priority not in PRIORITIES:
            raise ConfigError(
                f"{path}: [sla.{priority}]: priority must be one of {', '.join(PRIORITIES)}"
            )
        t = Table(item, f"[sla.{priority}]", path)
        escalate_to = t.get("escalate_to", str)
        if escalate_to is not None and escalate_to not in teams:
            raise t.fail("escalate_to", f"team {escalate_to!r} does not exist in [[teams]]")
        out[priority] = SlaTarget(
            first_response=t.duration("first_response", None),
            resolution=t.duration("resolution", None),
            escalate_to=escalate_to,
        )
        t.finish()
    return out


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


_CLOCK = re.compile(r"([01]\d|2[0-3]):[0-5]\d")  # "HH:MM", 00:00 to 23:59


def _read_digest(t: Table, desk: DeskSettings) -> DigestSettings:
    unknown = sorted(set(t.data) - {"at", "admin"})
    if unknown:  # before the missing "at": a misspelt key is the likeliest mistake
        raise t.fail(unknown[0], "unknown key")
    at = t.get("at", str, required=True)
    if not _CLOCK.fullmatch(at):
        raise t.fail("at", f'expected a time of day "HH:MM" (00:00 to 23:59), got {at!r}')
    admin = t.get("admin", bool, False)
    if admin and not desk.admin_address:
        raise t.fail("admin", "needs [desk] admin_address, whom the figures are mailed to")
    t.finish()
    return DigestSettings(at=at, admin=admin)


def _read_hours(t: Table) -> BusinessHours:
    days = []
    for day in t.strings("days", ("mon", "tue", "wed", "thu", "fri")):
        if day.lower()[:3] not in DAY_NAMES:
            raise t.fail("days", f"unknown day {day!r}; use mon, tue, wed, thu, fri, sat, sun")
        days.append(DAY_NAMES.index(day.lower()[:3]))
    if not days:
        raise t.fail("days", "name at least one working day")
    start, end = t.get("start", str, "09:00"), t.get("end", str, "17:00")
    for key, value in (("start", start), ("end", end)):
        if not _CLOCK.fullmatch(value):
            raise t.fail(key, f'expected "HH:MM", got {value!r}')
    if end <= start:
        raise t.fail("end", "must be after start")
    zone = t.get("timezone", str, "UTC")
    try:
        ZoneInfo(zone)
    except Exception:  # noqa: BLE001 - any failure means the zone is unusable
        raise t.fail("timezone", f"unknown time zone {zone!r}") from None
    holidays = t.strings("holidays")
    for day in holidays:
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", day):
            raise t.fail("holidays", f'expected ISO dates like "2026-12-25", got {day!r}')
    t.finish()
    return BusinessHours(days=tuple(days), start=start, end=end, timezone=zone, holidays=holidays)


# --------------------------------------------------------------------------- what others could see
