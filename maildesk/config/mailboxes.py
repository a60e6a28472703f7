"""Where mail comes in and goes out: ``[[mailboxes]]`` (IMAP or pipe) and ``[smtp]``.

Read by ``reading``; the ports, folders, credentials and OAuth2 keys of each, checked as they
are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maildesk.config.settings import MailboxSettings, SmtpSettings, Transport
from maildesk.config.table import Table


def _port(t: Table, default: int) -> int:
    port = t.get("port", int, default)
    if not 0 < port < 65536:
        raise t.fail("port", f"must be 1-65535, got {port}")
    return port


def _oauth(t: Table, base: Path, auth: str) -> dict[str, Any]:
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


def _people(t: Table) -> dict[str, Any]:
    """What a mailbox says about who its mail is from and to: the addresses that reach it, and
    whether a new mail's Reply-To names the requester."""
    return {
        "addresses": t.addresses("addresses"),
        "reply_to_requester": t.get("reply_to_requester", bool, True),
    }


def read_mailbox(t: Table, base: Path, teams: set[str]) -> MailboxSettings:
    transport = Transport(t.choice("transport", tuple(Transport), Transport.IMAP))
    team = t.get("team", str, required=True)
    if team not in teams:
        raise t.fail("team", f"team {team!r} does not exist in [[teams]]")
    if transport is Transport.PIPE:
        return _read_pipe_mailbox(t, team)
    return _read_imap_mailbox(t, base, team)


PIPE_MAILBOX_KEYS = ("name", "team", "transport", "addresses", "reply_to_requester")


def _read_pipe_mailbox(t: Table, team: str) -> MailboxSettings:
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
        **_people(t),
    )


def _read_imap_mailbox(t: Table, base: Path, team: str) -> MailboxSettings:
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
        **_people(t),
        **_oauth(t, base, auth),
    )


def read_smtp(t: Table, base: Path) -> SmtpSettings:
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
