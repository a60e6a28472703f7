"""XOAUTH2: access tokens from a command or from a refresh token at a token endpoint on
loopback, and a mailbox and SMTP server that check the bearer token for real, through the
daemon. A revoked grant is alerted to the admin once."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from maildesk import config
from maildesk.demo.world import ImapServer, SmtpServer
from maildesk.service.oauth import OAuthError, TokenSource
from maildesk.service.timings import Timings
from maildesk.service.wiring import desk_for
from tests.desk import CUSTOMER, DeskWorld, customer_mail
from tests.servers import ImapAccount, fresh_user

CLIENT_ID = "maildesk-test-client"
CLIENT_SECRET = "s3cret-client"
ADMIN = "admin@example.com"


class TokenEndpoint:
    """An OAuth2 token endpoint on 127.0.0.1 that checks the refresh-token grant for real.

    Issues ``access-1``, ``access-2`` ... (``on_issue`` hears of each); ``revoked = True``
    answers ``400 invalid_grant`` as Google does for an expired or revoked grant.
    """

    def __init__(self, refresh_token: str, *, expires_in: int = 3600, rotate: bool = False) -> None:
        self.refresh_token = refresh_token
        self.expires_in = expires_in
        self.rotate = rotate
        self.revoked = False
        self.requests: list[dict[str, str]] = []
        self.on_issue: Callable[[str], None] = lambda token: None
        self._issued = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                code, answer = owner.answer(self.path, form)
                body = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append(form)
        if path != "/token":
            return 404, {"error": "not_found"}
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        if self.revoked or form.get("refresh_token") != self.refresh_token:
            return 400, {"error": "invalid_grant", "error_description": "Token has been revoked."}
        self._issued += 1
        token = f"access-{self._issued}"
        self.on_issue(token)
        answer: dict[str, Any] = {
            "access_token": token,
            "expires_in": self.expires_in,
            "token_type": "Bearer",
        }
        if self.rotate:
            self.refresh_token = f"refresh-{self._issued}"
            answer["refresh_token"] = self.refresh_token
        return 200, answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True, slots=True)
class Grant:
    """The ``oauth_*`` keys of a config section, as ``TokenSource`` reads them."""

    oauth_token_url: str | None = None
    oauth_client_id: str | None = CLIENT_ID
    oauth_client_secret_file: Path | None = None
    oauth_refresh_token_file: Path | None = None
    oauth_token_command: str | None = None


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint("refresh-0", expires_in=600, rotate=True)
    yield server
    server.close()


def grant_files(directory: Path, refresh_token: str) -> tuple[Path, Path]:
    secret, refresh = directory / "client-secret", directory / "refresh-token"
    secret.write_text(CLIENT_SECRET + "\n")
    refresh.write_text(refresh_token + "\n")
    return secret, refresh


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refresh_flow_caches_the_token_and_refreshes_it_before_expiry(
    endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    secret, refresh = grant_files(tmp_path, "refresh-0")
    os.umask(0o022)  # a process that did not start as maildesk (whose umask is 077)
    leftover = refresh.with_name(refresh.name + ".new")  # an earlier write cut short, left wide
    leftover.write_text("half")
    leftover.chmod(0o644)
    clock = Clock()
    source = TokenSource(
        "mailbox support",
        Grant(endpoint.url, oauth_client_secret_file=secret, oauth_refresh_token_file=refresh),
        clock=clock,
    )
    assert source() == "access-1"
    assert refresh.read_text().strip() == "refresh-1"  # rotated, written back private
    assert stat.S_IMODE(refresh.stat().st_mode) == 0o600
    assert source() == "access-1"  # cached: one request so far
    assert len(endpoint.requests) == 1
    assert endpoint.requests[0] == {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": "refresh-0",
    }
    clock.now += 600 - 61  # still more than a minute left
    assert source() == "access-1"
    clock.now += 2  # less than a minute left: refreshed before it expires
    assert source() == "access-2"
    # the provider rotated the refresh token; the new one is kept, private
    assert refresh.read_text().strip() == "refresh-2"
    assert stat.S_IMODE(refresh.stat().st_mode) == 0o600
    assert endpoint.requests[1]["refresh_token"] == "refresh-1"


def test_a_revoked_grant_fails_with_the_providers_words_and_is_reported_once(
    endpoint: TokenEndpoint, tmp_path: Path
) -> None:
    secret, refresh = grant_files(tmp_path, "refresh-0")
    reported: list[tuple[str, str]] = []
    source = TokenSource(
        "SMTP",
        Grant(endpoint.url, oauth_client_secret_file=secret, oauth_refresh_token_file=refresh),
        on_failure=lambda name, error: reported.append((name, error)),
    )
    endpoint.revoked = True
    for _ in range(3):
        with pytest.raises(OAuthError, match="HTTP 400 .invalid_grant: Token has been revoked"):
            source()
    assert len(reported) == 1 and reported[0][0] == "SMTP"
    endpoint.revoked = False
    assert source() == "access-1"
    endpoint.revoked = True
    source.invalidate()
    with pytest.raises(OAuthError):
        source()
    assert len(reported) == 2  # a new run of failures is reported again


def test_token_command_prints_the_token_and_its_failures_are_one_line(tmp_path: Path) -> None:
    script = tmp_path / "token.sh"
    script.write_text("#!/bin/sh\nprintf 'tok-from-command\\n'\n")
    script.chmod(0o700)
    assert TokenSource("SMTP", Grant(oauth_token_command=str(script)))() == "tok-from-command"
    failing = TokenSource("SMTP", Grant(oauth_token_command="echo 'no grant' >&2; exit 3"))
    with pytest.raises(OAuthError, match="exited with status 3: no grant"):
        failing()
    silent = TokenSource("SMTP", Grant(oauth_token_command="true"))
    with pytest.raises(OAuthError, match="printed no token"):
        silent()


def test_config_presets_and_missing_keys(tmp_path: Path, endpoint: TokenEndpoint) -> None:
    account_lines = """
[desk]
name = "Support"
address = "support@example.com"
data_dir = "data"

[[teams]]
name = "support"

[smtp]
host = "127.0.0.1"

[[mailboxes]]
name = "gmail"
host = "127.0.0.1"
username = "support@example.com"
team = "support"
auth = "xoauth2"
"""
    path = tmp_path / "maildesk.toml"
    path.write_text(account_lines + 'oauth_provider = "google"\noauth_client_id = "x"\n')
    with pytest.raises(config.ConfigError, match="oauth_refresh_token_file: required"):
        config.load(path)
    path.write_text(
        account_lines
        + 'oauth_provider = "microsoft"\noauth_client_id = "x"\n'
        + 'oauth_refresh_token_file = "refresh"\n'
    )
    box = config.load(path).mailboxes[0]
    assert box.oauth_token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def oauth_world(
    tmp_path: Path,
) -> Iterator[tuple[DeskWorld, ImapServer, SmtpServer, TokenEndpoint]]:
    imap = ImapServer(xoauth2=True)
    smtp = SmtpServer(username="desk@example.test", oauth_token="smtp-token-1")
    endpoint = TokenEndpoint("refresh-0")
    account = ImapAccount("pymap", imap, *fresh_user())
    endpoint.on_issue = lambda token: imap.set_oauth_token(account.username, token)
    world = DeskWorld(account, smtp, tmp_path)
    world.timings = Timings(max_backoff=1.0)
    secret, refresh = grant_files(tmp_path, "refresh-0")
    (tmp_path / "smtp-token").write_text("smtp-token-1\n")
    text = world.config_path.read_text()
    text = text.replace(
        f'password = "{account.password}"\n',
        'auth = "xoauth2"\n'
        f'oauth_client_id = "{CLIENT_ID}"\n'
        f'oauth_client_secret_file = "{secret}"\n'
        f'oauth_refresh_token_file = "{refresh}"\n'
        f'oauth_token_url = "{endpoint.url}"\n',
    )
    text = text.replace(
        "timeout = 5\n",
        'timeout = 5\nusername = "desk@example.test"\nauth = "xoauth2"\n'
        f'oauth_token_command = "cat {tmp_path / "smtp-token"}"\n',
    )
    world.config_path.write_text(text)
    world.settings = config.load(world.config_path)
    world.desk = desk_for(world.settings, clock=world.clock)
    yield world, imap, smtp, endpoint
    world.close()
    endpoint.close()
    smtp.close()
    imap.close()


def test_an_xoauth2_mailbox_and_smtp_work_through_the_daemon_and_a_revoked_grant_alerts_once(
    oauth_world: tuple[DeskWorld, ImapServer, SmtpServer, TokenEndpoint],
) -> None:
    world, imap, smtp, endpoint = oauth_world
    assert not world.settings.mailboxes[0].password  # no password anywhere: tokens only
    daemon = world.start()
    world.deliver(customer_mail("Login broken", "Cannot sign in."))
    world.wait_mails_to(CUSTOMER, 1)
    assert world.tickets()[0]["subject"] == "Login broken"
    assert (world.account.username, True) in imap.oauth_attempts
    assert {(a.mechanism, a.success) for a in smtp.auth_attempts} == {("XOAUTH2", True)}
    assert smtp.messages[0].auth_user == "desk@example.test"

    # The grant is revoked, and with it the access token; the connection drops. The next
    # login is refused, so the cached token is dropped and a new one asked for, in vain.
    endpoint.revoked = True
    imap.set_oauth_token(world.account.username, "no-longer-valid")
    imap.stop()
    imap.start()
    smtp.wait_for(lambda msgs: any(ADMIN in m.rcpt_tos for m in msgs), timeout=20)
    health = daemon.health["mailbox:support"]
    deadline = time.monotonic() + 20
    while health.failures < 3:  # keeps retrying, and failing, without a second alert
        assert time.monotonic() < deadline, "the mailbox was not retried"
        time.sleep(0.05)
    oauth_alerts = [m for m in world.mails_to(ADMIN) if "OAuth2" in str(m.message["Subject"])]
    assert len(oauth_alerts) == 1
    alert = oauth_alerts[0]
    assert "mailbox support" in str(alert.message["Subject"])
    body = alert.message.get_body(preferencelist=("plain",))
    assert body is not None and "invalid_grant" in body.get_content()

    endpoint.revoked = False  # the admin renewed the grant
    deadline = time.monotonic() + 20
    while health.failures:
        assert time.monotonic() < deadline, "the mailbox did not recover"
        time.sleep(0.05)
    world.deliver(customer_mail("Second question", "Still there?", sender="eve@customer.test"))
    world.wait_mails_to("eve@customer.test", 1)
