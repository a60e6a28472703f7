"""What others could see: config, secret and credential files open to other users, and
credentials that would travel unencrypted. Each is a warning, not an error.

Called by ``reading`` once the settings are read; the warnings travel in ``Settings.warnings``,
and ``check-config`` and the daemon's start print them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from maildesk import private
from maildesk.config.settings import DeskSettings, MailboxSettings, SmtpSettings
from maildesk.config.table import resolve

SECRET_FILE_KEYS = (
    "password_file",
    "secret_file",
    "oauth_client_secret_file",
    "oauth_refresh_token_file",
)


def file_warnings(path: Path, data: dict[str, Any], desk: DeskSettings, url: str) -> list[str]:
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


def credential_warnings(
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
