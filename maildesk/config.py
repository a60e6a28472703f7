"""TOML and environment to frozen, validated settings; every error names its key.

Read once at start (and again on SIGHUP). Nothing else in maildesk reads the config file or the
environment for settings. A bad config raises ``ConfigError`` with one line naming the file and
the key; the CLI turns it into exit code 78 (EX_CONFIG) without a traceback.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import Address
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from maildesk import private

EX_CONFIG = 78

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class TeamSettings:
    name: str


@dataclass(frozen=True, slots=True)
class AgentSettings:
    email: str
    name: str
    teams: tuple[str, ...]


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
    warnings: tuple[str, ...] = ()

    def agent(self, address: str | None) -> AgentSettings | None:
        if not address:
            return None
        address = address.lower()
        for agent in self.agents:
            if agent.email == address:
                return agent
        return None

    def team_agents(self, team: str) -> tuple[AgentSettings, ...]:
        return tuple(a for a in self.agents if team in a.teams)

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


# --------------------------------------------------------------------------- reading


DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta | None:
    """``"45s"``, ``"15m"``, ``"4h"``, ``"3d"``, ``"2w"`` to a timedelta; ``"off"`` to None."""
    if text.strip().lower() == "off":
        return None
    match = DURATION.match(text)
    if not match:
        raise ValueError(
            f'expected a duration like "45s", "15m", "4h", "3d" or "off", got {text!r}'
        )
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


class _Table:
    """One TOML table being read: typed getters that name the key on error."""

    def __init__(self, data: Any, where: str, file: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {where} must be a table")
        self.data = data
        self.where = where
        self.file = file
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where} {key}: {problem}")

    def get(
        self, key: str, kind: type[T], default: T | None = None, *, required: bool = False
    ) -> T:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "missing (required)")
            return default  # type: ignore[return-value]
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def duration(self, key: str, default: timedelta | None) -> timedelta | None:
        if key not in self.data:
            self.used.add(key)
            return default
        try:
            return parse_duration(self.get(key, str))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def positive_float(self, key: str, default: float) -> float:
        value = self.get(key, float, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def address(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if value is None:
            return value
        try:
            parsed = Address(addr_spec=value.strip())
        except (ValueError, IndexError, TypeError) as exc:
            raise self.fail(key, f"not a valid mail address: {value!r} ({exc})") from None
        if not parsed.domain:
            raise self.fail(key, f"not a valid mail address: {value!r}")
        return parsed.addr_spec.lower()

    def secret(self, prefix: str, base: Path, *, required: bool) -> str | None:
        """``prefix``, ``prefix_env`` or ``prefix_file``: a password from the config, env or file."""
        given = [k for k in (prefix, f"{prefix}_env", f"{prefix}_file") if k in self.data]
        self.used.update((prefix, f"{prefix}_env", f"{prefix}_file"))
        if len(given) > 1:
            raise self.fail(given[1], f"give only one of {', '.join(given)}")
        if not given:
            if required:
                raise self.fail(prefix, f"missing: set {prefix}, {prefix}_env or {prefix}_file")
            return None
        key = given[0]
        value = self.get(key, str)
        if key == prefix:
            return value
        if key.endswith("_env"):
            if value not in os.environ:
                raise self.fail(key, f"environment variable {value} is not set")
            return os.environ[value]
        path = resolve(base, value)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise self.fail(key, f"cannot read {path}: {exc.strerror}") from None

    def path(self, key: str, base: Path) -> Path | None:
        value = self.get(key, str)
        return None if value is None else resolve(base, value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


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
)


def build(data: dict[str, Any], path: Path) -> Settings:
    """Validate parsed TOML ``data`` from the file at ``path`` into ``Settings``."""
    base = path.parent
    root = _Table(data, "", path)
    root.used.update(KNOWN_TABLES)
    for key in data:
        if key not in KNOWN_TABLES:
            raise ConfigError(f"{path}: [{key}]: unknown table")
    warnings: list[str] = []

    desk = _read_desk(_Table(data.get("desk", {}), "[desk]", path), base, "desk" in data)
    db = _Table(data.get("database", {}), "[database]", path)
    database_url = db.get("url", str, f"sqlite:///{desk.data_dir / 'maildesk.db'}")
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", database_url):
        raise db.fail("url", "must be a sqlite:/// or postgresql+psycopg:// URL")
    db.finish()

    teams = _read_list(data, "teams", path, _read_team)
    if not teams:
        raise ConfigError(f"{path}: [[teams]]: at least one team is required")
    team_names = {t.name for t in teams}
    if len(team_names) != len(teams):
        raise ConfigError(f"{path}: [[teams]] name: duplicate team name")
    agents = _read_list(data, "agents", path, lambda t: _read_agent(t, team_names))
    if len({a.email for a in agents}) != len(agents):
        raise ConfigError(f"{path}: [[agents]] email: duplicate agent address")
    mailboxes = _read_list(data, "mailboxes", path, lambda t: _read_mailbox(t, base, team_names))
    if not mailboxes:
        raise ConfigError(f"{path}: [[mailboxes]]: at least one mailbox is required")
    if len({m.name for m in mailboxes}) != len(mailboxes):
        raise ConfigError(f"{path}: [[mailboxes]] name: duplicate mailbox name")
    if "smtp" not in data:
        raise ConfigError(f"{path}: [smtp]: missing (required)")
    smtp = _read_smtp(_Table(data["smtp"], "[smtp]", path), base)

    security = _read_security(_Table(data.get("security", {}), "[security]", path))
    if security.agent_auth == "none":
        warnings.append(
            '[security] agent_auth = "none": agent commands are NOT authenticated; anyone who '
            "can forge an agent's From: address can act on tickets. Use only on closed networks."
        )
    lifecycle = _read_lifecycle(_Table(data.get("lifecycle", {}), "[lifecycle]", path))
    limits = _read_limits(_Table(data.get("limits", {}), "[limits]", path))
    log_table = _Table(data.get("log", {}), "[log]", path)
    log = LogSettings(
        format=log_table.choice("format", ("text", "json"), "text"),
        level=log_table.choice("level", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    )
    log_table.finish()
    metrics_table = _Table(data.get("metrics", {}), "[metrics]", path)
    metrics = MetricsSettings(listen=metrics_table.get("listen", str))
    if metrics.listen is not None and not re.match(r"^[\w.\-\[\]:]+:\d+$", metrics.listen):
        raise metrics_table.fail("listen", f'expected "host:port", got {metrics.listen!r}')
    metrics_table.finish()
    sla = _read_sla(data.get("sla", {}), path, team_names)
    hours = None
    if "business_hours" in data:
        hours = _read_hours(_Table(data["business_hours"], "[business_hours]", path))

    warnings.extend(_file_warnings(path, data, desk, database_url))
    warnings.extend(_credential_warnings(database_url, mailboxes, smtp))
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
        warnings=tuple(warnings),
    )


def _read_list(data: dict[str, Any], key: str, path: Path, read: Callable[[_Table], T]) -> list[T]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(f"{path}: [[{key}]]: must be an array of tables ([[{key}]])")
    out = []
    for index, item in enumerate(items):
        table = _Table(item, f"[[{key}]] #{index + 1}", path)
        out.append(read(table))
        table.finish()
    return out


def _read_desk(t: _Table, base: Path, present: bool) -> DeskSettings:
    if not present:
        raise ConfigError(f"{t.file}: [desk]: missing (required)")
    name = t.get("name", str, required=True)
    address = t.address("address", required=True)
    data_dir = resolve(base, t.get("data_dir", str, required=True))
    owner = private.foreign_owner(data_dir)
    if owner is not None:  # before anything is written there (the secret, below)
        raise ForeignDataDir(t.file, data_dir, owner)
    ref_format = t.get("ref_format", str, "[#{number}]")
    if ref_format.count("{number}") != 1 or re.search(r"\{(?!number\})", ref_format):
        raise t.fail("ref_format", 'must contain "{number}" exactly once and no other braces')
    admin = t.address("admin_address") if "admin_address" in t.data else None
    templates_dir = t.path("templates_dir", base)
    if templates_dir is not None and not templates_dir.is_dir():
        raise t.fail("templates_dir", f"{templates_dir} is not a directory")
    secret = _desk_secret(t, base, data_dir)
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
        loop_id=loop_id or _derive_loop_id(secret),
    )


def _derive_loop_id(secret: bytes) -> str:
    import hashlib

    return hashlib.sha256(b"maildesk-loop:" + secret).hexdigest()[:16]


def _desk_secret(t: _Table, base: Path, data_dir: Path) -> bytes:
    given = t.secret("secret", base, required=False)
    if given is not None:
        if len(given) < 16:
            raise t.fail(
                "secret", "too short: use at least 16 characters (32 random bytes is best)"
            )
        return given.encode()
    path = data_dir / "secret"
    try:
        if not path.exists():
            private.make_dirs(data_dir)
            _keep_new_secret(path)
        kept = path.read_text().strip()
    except OSError as exc:
        raise t.fail(
            "secret", f"none given and cannot keep one in {path}: {exc.strerror}"
        ) from None
    if len(kept) < 16:  # never one maildesk wrote: it writes the whole file or none of it
        raise t.fail(
            "secret",
            f"none given and {path} holds {len(kept)} characters, too few for one: remove it to "
            "have a new one made (reply tokens and bounce addresses already sent stop working)",
        )
    return kept.encode()


def _keep_new_secret(path: Path) -> None:
    """A new random secret in ``path``, whole or not at all: written to a file of its own,
    then linked into place (a full disk, or a kill, left an empty secret that every start
    after read). Another process making one at the same moment wins; its secret is kept."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(private.open_new(temporary, os.O_EXCL), "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: moved into place, whole all the same
            if not path.exists():
                os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read_team(t: _Table) -> TeamSettings:
    name = t.get("name", str, required=True)
    if not re.match(r"^[\w.-]{1,64}$", name):
        raise t.fail("name", f"team names are single words (letters, digits, . _ -), got {name!r}")
    t.get("description", str, "")
    return TeamSettings(name=name)


def _read_agent(t: _Table, teams: set[str]) -> AgentSettings:
    email = t.address("email", required=True)
    name = t.get("name", str, email.split("@")[0])
    agent_teams = t.strings("teams")
    for team in agent_teams:
        if team not in teams:
            raise t.fail("teams", f"team {team!r} does not exist in [[teams]]")
    return AgentSettings(email=email, name=name, teams=agent_teams)


def _port(t: _Table, default: int) -> int:
    port = t.get("port", int, default)
    if not 0 < port < 65536:
        raise t.fail("port", f"must be 1-65535, got {port}")
    return port


def _oauth(t: _Table, base: Path, auth: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        "oauth_token_command": t.get("oauth_token_command", str),
        "oauth_client_id": t.get("oauth_client_id", str),
        "oauth_client_secret_file": t.path("oauth_client_secret_file", base),
        "oauth_refresh_token_file": t.path("oauth_refresh_token_file", base),
        "oauth_token_url": t.get("oauth_token_url", str),
    }
    if "oauth_provider" in t.data:
        provider = t.choice("oauth_provider", ("google", "microsoft"), "google")
        values["oauth_token_url"] = values["oauth_token_url"] or OAUTH_PRESETS[provider]
    if auth == "xoauth2" and not values["oauth_token_command"]:
        for key in ("oauth_client_id", "oauth_refresh_token_file", "oauth_token_url"):
            if not values[key]:
                raise t.fail(
                    key, 'required with auth = "xoauth2" unless oauth_token_command is set'
                )
    return values


OAUTH_PRESETS = {
    "google": "https://oauth2.googleapis.com/token",
    "microsoft": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
}


def _read_mailbox(t: _Table, base: Path, teams: set[str]) -> MailboxSettings:
    transport = Transport(t.choice("transport", tuple(Transport), Transport.IMAP))
    team = t.get("team", str, required=True)
    if team not in teams:
        raise t.fail("team", f"team {team!r} does not exist in [[teams]]")
    if transport is Transport.PIPE:
        return _read_pipe_mailbox(t, team)
    return _read_imap_mailbox(t, base, team)


PIPE_MAILBOX_KEYS = ("name", "team", "transport")


def _read_pipe_mailbox(t: _Table, team: str) -> MailboxSettings:
    """A mailbox the MTA feeds through ``maildesk ingest``: a name and a team, nothing to log
    in to. An IMAP key on it is refused rather than ignored: it would say something untrue."""
    for key in t.data:
        if key not in PIPE_MAILBOX_KEYS:
            raise t.fail(key, 'not used by a mailbox with transport = "pipe"; remove it')
    return MailboxSettings(
        name=t.get("name", str, required=True),
        host="",
        port=0,
        security="none",
        username="",
        password="",
        team=team,
        transport=Transport.PIPE,
    )


def _read_imap_mailbox(t: _Table, base: Path, team: str) -> MailboxSettings:
    security = t.choice("security", ("tls", "starttls", "none"), "tls")
    auth = t.choice("auth", ("password", "xoauth2"), "password")
    poll = t.get("poll_seconds", float, 60.0)
    if poll <= 0:
        raise t.fail("poll_seconds", "must be positive")
    password = t.secret("password", base, required=auth == "password")
    folders = {
        key: t.get(key, str, default)
        for key, default in (
            ("folder", "INBOX"),
            ("processed_folder", "Processed"),
            ("quarantine_folder", "Quarantine"),
        )
    }
    if len(set(folders.values())) != 3:
        raise t.fail(
            "processed_folder", "folder, processed_folder and quarantine_folder must differ"
        )
    return MailboxSettings(
        name=t.get("name", str, required=True),
        host=t.get("host", str, required=True),
        port=_port(t, 993 if security == "tls" else 143),
        security=security,
        username=t.get("username", str, required=True),
        password=password or "",
        poll_seconds=poll,
        team=team,
        auth=auth,
        folder=folders["folder"],
        processed_folder=folders["processed_folder"],
        quarantine_folder=folders["quarantine_folder"],
        **_oauth(t, base, auth),
    )


def _read_smtp(t: _Table, base: Path) -> SmtpSettings:
    security = t.choice("security", ("tls", "starttls", "none"), "starttls")
    auth = t.choice("auth", ("password", "xoauth2"), "password")
    username = t.get("username", str)
    password = t.secret("password", base, required=False)
    if password is not None and username is None:
        raise t.fail("username", "required when a password is given")
    timeout = t.get("timeout", float, 30.0)
    settings = SmtpSettings(
        host=t.get("host", str, required=True),
        port=_port(t, {"tls": 465, "starttls": 587, "none": 25}[security]),
        security=security,
        username=username,
        password=password,
        timeout=timeout,
        auth=auth,
        **_oauth(t, base, auth),
    )
    t.finish()
    return settings


def _read_security(t: _Table) -> SecuritySettings:
    settings = SecuritySettings(
        token_days=t.positive("token_days", 180),
        trusted_authserv_ids=tuple(s.lower() for s in t.strings("trusted_authserv_ids")),
        agent_auth=t.choice("agent_auth", ("required", "none"), "required"),
    )
    t.finish()
    return settings


def _read_lifecycle(t: _Table) -> LifecycleSettings:
    settings = LifecycleSettings(
        reopen_days=t.positive("reopen_days", 30),
        remind_pending_after=t.duration("remind_pending_after", timedelta(days=3)),
        close_pending_after=t.duration("close_pending_after", timedelta(days=7)),
    )
    t.finish()
    return settings


def _read_limits(t: _Table) -> LimitsSettings:
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
        t = _Table(item, f"[sla.{priority}]", path)
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


def _read_hours(t: _Table) -> BusinessHours:
    days = []
    for day in t.strings("days", ("mon", "tue", "wed", "thu", "fri")):
        if day.lower()[:3] not in DAY_NAMES:
            raise t.fail("days", f"unknown day {day!r}; use mon, tue, wed, thu, fri, sat, sun")
        days.append(DAY_NAMES.index(day.lower()[:3]))
    if not days:
        raise t.fail("days", "name at least one working day")
    start, end = t.get("start", str, "09:00"), t.get("end", str, "17:00")
    for key, value in (("start", start), ("end", end)):
        if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", value):
            raise t.fail(key, f'expected "HH:MM", got {value!r}')
    if end <= start:
        raise t.fail("end", "must be after start")
    zone = t.get("timezone", str, "UTC")
    try:
        from zoneinfo import ZoneInfo

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


SECRET_FILE_KEYS = (
    "password_file",
    "secret_file",
    "oauth_client_secret_file",
    "oauth_refresh_token_file",
)


def _file_warnings(path: Path, data: dict[str, Any], desk: DeskSettings, url: str) -> list[str]:
    """Files others may read: the admin's are named with the fix and left alone; the secret
    maildesk generated itself is made private (and that said)."""
    found = []
    mode = private.open_to_others(path)
    if mode is not None and _holds_password(data, url):
        found.append(
            f"{path} holds a password or secret and is readable by others "
            f"(mode {mode:o}); chmod 600 it or use password_file / password_env"
        )
    mode = private.open_to_others(desk.data_dir)
    if mode is not None:
        found.append(
            f"[desk] data_dir {desk.data_dir} can be read by others (mode {mode:o}), and tickets, "
            f"mail and the secret are kept there; run chmod 700 {desk.data_dir}"
        )
    for where, table in _credential_tables(data):
        for key in SECRET_FILE_KEYS:
            if isinstance(table.get(key), str):
                file = resolve(path.parent, table[key])
                mode = private.open_to_others(file)
                if mode is not None:
                    found.append(
                        f"{where} {key}: {file} can be read by others (mode {mode:o}); "
                        f"run chmod 600 {file}"
                    )
    if not {"secret", "secret_env", "secret_file"} & set(data["desk"]):
        tightened = private.tighten(desk.data_dir / "secret")
        found.extend([tightened] if tightened else [])
    return found


def _credential_tables(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The tables that may name a password or a secret, with how errors name them."""
    boxes = [(f"[[mailboxes]] #{i + 1}", box) for i, box in enumerate(data.get("mailboxes", []))]
    return [("[desk]", data["desk"]), *boxes, ("[smtp]", data["smtp"])]


def _holds_password(data: dict[str, Any], url: str) -> bool:
    holds = any("password" in table for _, table in _credential_tables(data))
    return holds or "secret" in data["desk"] or url_has_password(url)


def url_has_password(url: str) -> bool:
    """A password in the URL's user part, or as a ``password=`` parameter (libpq's)."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:  # a malformed port: the database will say so itself
        password = None
    return bool(password) or "password" in parse_qs(parts.query)


def _credential_warnings(
    url: str, mailboxes: list[MailboxSettings], smtp: SmtpSettings
) -> list[str]:
    """Credentials that others could read: in the database URL, or sent unencrypted."""
    found = []
    if url_has_password(url):
        found.append(
            "[database] url holds a password: leave it out of the url and put it in a .pgpass "
            "file of mode 600 (~/.pgpass of maildesk's user, or the file PGPASSFILE names)"
        )
    for index, box in enumerate(mailboxes):
        if not box.watched:
            continue  # a pipe mailbox sends no credential anywhere
        credential = "password" if box.auth == "password" else "OAuth2 access token"
        where = f"[[mailboxes]] #{index + 1} ({box.name})"
        found.extend(_cleartext(where, box.security, box.host, credential))
    credential = "OAuth2 access token" if smtp.auth == "xoauth2" else "password"
    if smtp.auth == "xoauth2" or smtp.password is not None:
        found.extend(_cleartext("[smtp]", smtp.security, smtp.host, credential))
    return found


def _cleartext(where: str, security: str, host: str, credential: str) -> list[str]:
    if security != "none" or is_loopback(host):
        return []
    return [
        f'{where} security = "none" sends the {credential} unencrypted to {host}, which is '
        'not this machine; use security = "tls" or "starttls"'
    ]


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also IPv4-mapped). Names are not looked up: a start
    waits for no DNS, and a name could resolve elsewhere tomorrow."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
