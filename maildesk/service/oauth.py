"""Access tokens for XOAUTH2: from a command, or from a refresh token at the provider.

Beside the flow: ``imap`` and ``outbox`` call a ``TokenSource`` each time they log in to a
mailbox or the SMTP server configured with ``auth = "xoauth2"``. Two ways to get a token:

- ``oauth_token_command``: run the command (through the shell, as isync and mutt do) with a
  timeout; its first line of output is the token. Run on every login: the command keeps its
  own cache.
- the refresh-token flow: POST ``grant_type=refresh_token`` with the client id (and secret) to
  ``oauth_token_url`` (Google and Microsoft presets in ``config``); the access token is kept
  until a minute before it expires. A rotated refresh token in the answer is written back.

A failure raises ``OAuthError`` (an ``OSError``, so the mailbox and SMTP code retry it like any
other failure to reach a server) and calls ``on_failure`` once per run of failures, so the
admin hears of an expired grant once, not on every retry. Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from maildesk import private

log = logging.getLogger("maildesk.oauth")  # the logs name the job, not the module path

COMMAND_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
REFRESH_MARGIN = 60.0  # seconds before expiry a cached token is replaced
DEFAULT_LIFETIME = 3600.0  # when the provider does not say


class OAuthError(OSError):
    """No access token could be had; ``str()`` is one line without secrets."""


class OAuthSettings(Protocol):
    """The ``oauth_*`` keys of a ``[[mailboxes]]`` or ``[smtp]`` section."""

    @property
    def oauth_token_command(self) -> str | None: ...
    @property
    def oauth_client_id(self) -> str | None: ...
    @property
    def oauth_client_secret_file(self) -> Path | None: ...
    @property
    def oauth_refresh_token_file(self) -> Path | None: ...
    @property
    def oauth_token_url(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # time.monotonic() deadline


class TokenSource:
    """A callable returning a current access token; safe to call from several threads."""

    def __init__(
        self,
        name: str,
        settings: OAuthSettings,
        *,
        on_failure: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name  # "mailbox support" or "SMTP": for log lines and alerts
        self.settings = settings
        self.on_failure = on_failure
        self.clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._failing = False
        self.refreshes = 0  # successful fetches, for tests and metrics

    def __call__(self) -> str:
        with self._lock:
            now = self.clock()
            if self._token is not None and now < self._token.expires_at - REFRESH_MARGIN:
                return self._token.value
            try:
                token = self._fetch(now)
            except OAuthError as exc:
                self._failed(str(exc))
                raise
            if self._failing:
                log.info("%s: access token obtained again", self.name)
            self._failing = False
            self.refreshes += 1
            if not self.settings.oauth_token_command:
                self._token = token
            return token.value

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it)."""
        with self._lock:
            self._token = None

    def _failed(self, error: str) -> None:
        if self._failing:
            return
        self._failing = True
        log.error("%s: cannot get an OAuth2 access token: %s", self.name, error)
        if self.on_failure is not None:
            self.on_failure(self.name, error)

    def _fetch(self, now: float) -> Token:
        if self.settings.oauth_token_command:
            return Token(run_command(self.settings.oauth_token_command), now)
        return self._refresh(now)

    def _refresh(self, now: float) -> Token:
        s = self.settings
        if not (s.oauth_token_url and s.oauth_client_id and s.oauth_refresh_token_file):
            raise OAuthError("oauth_token_url, oauth_client_id and oauth_refresh_token_file needed")
        refresh_token = read_secret(s.oauth_refresh_token_file, "oauth_refresh_token_file")
        form = {
            "grant_type": "refresh_token",
            "client_id": s.oauth_client_id,
            "refresh_token": refresh_token,
        }
        if s.oauth_client_secret_file is not None:
            form["client_secret"] = read_secret(
                s.oauth_client_secret_file, "oauth_client_secret_file"
            )
        answer = post_form(s.oauth_token_url, form)
        access = answer.get("access_token")
        if not isinstance(access, str) or not access:
            raise OAuthError(f"{s.oauth_token_url}: answer has no access_token")
        lifetime = answer.get("expires_in", DEFAULT_LIFETIME)
        try:
            seconds = (
                float(lifetime) if isinstance(lifetime, int | float | str) else DEFAULT_LIFETIME
            )
        except ValueError:
            seconds = DEFAULT_LIFETIME
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != refresh_token:
            keep_refresh_token(s.oauth_refresh_token_file, rotated)
        log.info("%s: OAuth2 access token refreshed (valid %d s)", self.name, int(seconds))
        return Token(access, now + seconds)


def read_secret(path: Path, key: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise OAuthError(f"{key}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise OAuthError(f"{key}: {path} is empty")
    return value


def keep_refresh_token(path: Path, value: str) -> None:
    """Providers may rotate the refresh token; the old one stops working, so keep the new."""
    temporary = path.with_name(path.name + ".new")
    try:
        # 0600 whatever the umask, and even if an earlier attempt left a wider ``.new``
        with os.fdopen(private.open_new(temporary, os.O_TRUNC), "w") as handle:
            handle.write(value + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.warning(
            "the provider issued a new refresh token but %s cannot be written (%s); "
            "make its directory writable for maildesk",
            path,
            exc.strerror,
        )


def run_command(command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run ``oauth_token_command``; its first output line is the token."""
    try:
        done = subprocess.run(
            command, shell=True, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise OAuthError(f"oauth_token_command timed out after {timeout:g} s") from None
    except OSError as exc:
        raise OAuthError(f"oauth_token_command cannot run: {exc.strerror}") from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {said[-1][:200]}" if said else ""
        raise OAuthError(f"oauth_token_command exited with status {done.returncode}{detail}")
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines or not lines[0].strip():
        raise OAuthError("oauth_token_command printed no token")
    return lines[0].strip()


def post_form(url: str, form: dict[str, str]) -> dict[str, object]:
    """POST ``form`` to the token endpoint; the JSON answer, or ``OAuthError`` with its words."""
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:  # noqa: S310
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        raise OAuthError(f"{url}: HTTP {exc.code}{_provider_error(exc.read(10_000))}") from None
    except urllib.error.URLError as exc:
        raise OAuthError(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise OAuthError(f"{url}: {exc}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise OAuthError(f"{url}: answer is not JSON") from None
    if not isinstance(answer, dict):
        raise OAuthError(f"{url}: answer is not a JSON object")
    return answer


def _provider_error(body: bytes) -> str:
    """``invalid_grant: Token has been expired or revoked.`` from an OAuth2 error answer."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k])[:200] for k in ("error", "error_description") if data.get(k)]
    return f" ({': '.join(parts)})" if parts else ""


def token_source(
    name: str,
    settings: OAuthSettings,
    auth: str,
    on_failure: Callable[[str, str], None] | None = None,
) -> TokenSource | None:
    """A ``TokenSource`` for a section with ``auth = "xoauth2"``; None for password logins."""
    if auth != "xoauth2":
        return None
    return TokenSource(name, settings, on_failure=on_failure)
