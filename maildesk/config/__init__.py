"""The config: TOML and environment to frozen, validated settings; every error names its key.

The base of maildesk, under every layer. This is its public face: ``load`` (and ``build``, for
TOML already parsed) give ``Settings``, made of the dataclasses in ``settings``; a bad config
raises ``ConfigError``, one line naming the file and the key, which the CLI turns into exit
code 78 (``EX_CONFIG``). ``reading`` reads the tables, ``table`` the keys, ``mailboxes`` the
mailboxes and SMTP, ``secret`` the desk's secret, ``exposure`` what others could see.
"""

from maildesk.config.exposure import is_loopback, url_has_password
from maildesk.config.reading import build, find_config, load
from maildesk.config.settings import (
    EX_CONFIG,
    MAX_TICKET_NUMBER,
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
    NoSuchMailbox,
    RuleSettings,
    SecuritySettings,
    Settings,
    SlaTarget,
    SmtpSettings,
    StoreBackend,
    TeamSettings,
    Transport,
)
from maildesk.config.table import parse_duration, resolve

__all__ = [
    "EX_CONFIG",
    "MAX_TICKET_NUMBER",
    "AgentSettings",
    "AssignBy",
    "BusinessHours",
    "DigestSettings",
    "ConfigError",
    "DeskSettings",
    "ForeignDataDir",
    "IntakeSettings",
    "LifecycleSettings",
    "LimitsSettings",
    "LogSettings",
    "MailboxSettings",
    "MetricsSettings",
    "NoSuchMailbox",
    "RuleSettings",
    "SecuritySettings",
    "Settings",
    "SlaTarget",
    "SmtpSettings",
    "StoreBackend",
    "TeamSettings",
    "Transport",
    "build",
    "find_config",
    "is_loopback",
    "load",
    "parse_duration",
    "resolve",
    "url_has_password",
]
