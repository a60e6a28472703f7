"""The demo world's pymap and SMTP capture with what only tests vary.

``PymapServer`` takes IDLE or MOVE away, offers STARTTLS and XOAUTH2; ``ScriptedSmtp`` answers
with scripted replies, offers and requires AUTH (PLAIN, LOGIN, XOAUTH2), STARTTLS, and can stop
announcing SMTPUTF8.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import threading
from argparse import Namespace
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pymap.backend.dict import Identity, Login
from pymap.exceptions import InvalidAuth
from pysasl import SASLAuth
from pysasl.creds.external import ExternalCredentials, ExternalVerificationRequired
from pysasl.creds.server import ServerCredentials
from pysasl.mechanism.oauth import OAuth2Mechanism

from maildesk.demo.world import CaptureHandler, ImapServer, PymapConfig, SmtpServer

# --------------------------------------------------------------------------- IMAP (pymap)


class _TestPymapConfig(PymapConfig):
    """pymap's config with capabilities that tests can take away, and XOAUTH2 on offer."""

    def __init__(
        self, args: Namespace, *, without: frozenset[bytes], xoauth2: bool, **kwargs: Any
    ) -> None:
        super().__init__(args, **kwargs)
        self._without = without
        if xoauth2:
            self._sasl = SASLAuth([*self._sasl.server_mechanisms, OAuth2Mechanism()])

    @property
    def login_capability(self) -> Sequence[bytes]:
        return [c for c in super().login_capability if c not in self._without]


class _TokenLogin(Login):
    """pymap's login, also accepting XOAUTH2 with a bearer token the test server expects."""

    def __init__(self, config: PymapConfig) -> None:
        super().__init__(config)
        self.bearer_tokens: dict[str, str] = {}
        self.attempts: list[tuple[str, bool]] = []  # (user, accepted), XOAUTH2 only

    async def authenticate(self, credentials: ServerCredentials) -> Identity:
        if not isinstance(credentials, ExternalCredentials):
            return await super().authenticate(credentials)
        user = credentials.authzid
        expected = self.bearer_tokens.get(user)
        token: str | None = None
        try:
            credentials.verify(None)
        except ExternalVerificationRequired as exc:  # how pysasl hands the bearer token over
            token = exc.token
        ok = expected is not None and token == expected
        self.attempts.append((user, ok))
        if not ok:
            raise InvalidAuth()
        return Identity(user, self, None, frozenset())


class PymapServer(ImapServer):
    """The demo's pymap, with what tests vary.

    ``idle=False`` or ``move=False`` take the IDLE or MOVE capability away (to exercise polling
    and the COPY + UID EXPUNGE fallback). ``tls_context`` (a server-side context holding a
    certificate) turns STARTTLS on. ``xoauth2=True`` offers AUTHENTICATE XOAUTH2, accepting the
    bearer token given to ``set_oauth_token(user, token)`` (``oauth_attempts`` lists what was
    tried).
    """

    _login: _TokenLogin

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        idle: bool = True,
        move: bool = True,
        tls_context: ssl.SSLContext | None = None,
        xoauth2: bool = False,
    ) -> None:
        self._without = frozenset(
            name for name, keep in ((b"IDLE", idle), (b"MOVE", move)) if not keep
        )
        self._tls_context = tls_context
        self._xoauth2 = xoauth2
        super().__init__(users)

    def _pymap_config(self, args: Namespace, options: dict[str, Any]) -> PymapConfig:
        if self._tls_context is not None:
            options.update(tls_enabled=True, ssl_context=self._tls_context)
        return _TestPymapConfig(args, without=self._without, xoauth2=self._xoauth2, **options)

    def _pymap_login(self, config: PymapConfig) -> Login:
        return _TokenLogin(config)

    def set_oauth_token(self, username: str, token: str) -> None:
        """The bearer token XOAUTH2 accepts for ``username`` from now on."""
        self._login.bearer_tokens[username] = token

    @property
    def oauth_attempts(self) -> list[tuple[str, bool]]:
        """XOAUTH2 logins seen: (user, accepted)."""
        return list(self._login.attempts)


# --------------------------------------------------------------------------- SMTP (aiosmtpd)

Stage = Literal["mail", "rcpt", "data"]


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """One AUTH command seen by the capture server (the password is not kept)."""

    mechanism: str
    username: str
    success: bool
    tls: bool


_XOAUTH2 = re.compile(rb"^user=(?P<user>[^\x01]*)\x01auth=Bearer (?P<token>[^\x01]*)\x01\x01$")


class _AuthHandler(CaptureHandler):
    """The capture's hooks, with AUTH XOAUTH2 (offered only with ``oauth_token``)."""

    _owner: ScriptedSmtp

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:  # noqa: N802
        user, token = "", ""
        if len(args) == 2:
            try:
                found = _XOAUTH2.match(base64.b64decode(args[1], validate=True))
            except (binascii.Error, ValueError):
                found = None
            if found is not None:
                user = found["user"].decode("utf-8", "replace")
                token = found["token"].decode("utf-8", "replace")
        owner = self._owner
        ok = bool(token) and user == owner.username and token == owner._oauth_token
        tls = getattr(server.session, "ssl", None) is not None
        owner._attempted(AuthAttempt("XOAUTH2", user, ok, tls))
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))


class ScriptedSmtp(SmtpServer):
    """The demo's SMTP capture, with what tests vary.

    ``script("rcpt", "451 4.3.0 try later", ...)`` queues replies given instead of accepting
    (one per command, in order) at MAIL, RCPT or DATA. With ``username``/``password``, AUTH PLAIN
    and LOGIN are offered (without TLS unless ``tls_context`` is given, in which case only after
    STARTTLS) and required. With ``username`` and ``oauth_token``, AUTH XOAUTH2 is offered too
    and accepts exactly that bearer token for that user (``set_oauth_token`` changes it).
    ``smtputf8=False`` stops announcing SMTPUTF8, as a server without RFC 6531 support does.
    """

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        oauth_token: str | None = None,
        smtputf8: bool = True,
    ) -> None:
        self.username = username
        self.smtputf8 = smtputf8
        self._password = password
        self._oauth_token = oauth_token
        self._tls_context = tls_context
        self._auth_attempts: list[AuthAttempt] = []
        self._replies: dict[str, list[str]] = {"mail": [], "rcpt": [], "data": []}
        self._replies_to: dict[str, list[str]] = {}
        self._connections = 0
        self._counted = threading.Lock()
        super().__init__()

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        with self._lock:
            return list(self._auth_attempts)

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        with self._counted:
            return self._connections

    def clear(self) -> None:
        with self._lock:
            self._captured.clear()
            self._auth_attempts.clear()

    def script(self, stage: Stage, *replies: str, to: str | None = None) -> None:
        """Answer the next commands of ``stage`` with ``replies`` (e.g. ``"451 4.3.0 later"``);
        ``to``: only the next RCPT commands naming that address (whatever goes out first)."""
        with self._lock:
            if to is None:
                self._replies[stage].extend(replies)
            else:
                self._replies_to.setdefault(to.lower(), []).extend(replies)

    def set_oauth_token(self, token: str) -> None:
        """The bearer token AUTH XOAUTH2 accepts from now on."""
        with self._lock:
            self._oauth_token = token

    def refusal(self, stage: str, session: Session, address: str = "") -> str | None:
        if stage == "mail" and self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        with self._lock:
            named = self._replies_to.get(address.strip("<>").lower()) if stage == "rcpt" else None
            if named:
                return named.pop(0)
            queue = self._replies[stage]
            return queue.pop(0) if queue else None

    def _attempted(self, attempt: AuthAttempt) -> None:
        with self._lock:
            self._auth_attempts.append(attempt)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = False
        user = ""
        if isinstance(data, LoginPassword):
            user = data.login.decode("utf-8", "replace")
            ok = (
                self.username is not None
                and self._password is not None
                and data.login == self.username.encode()
                and data.password == self._password.encode()
            )
        self._attempted(AuthAttempt(mechanism, user, ok, session.ssl is not None))
        return AuthResult(success=ok, auth_data=data if ok else None)

    def _new_handler(self) -> object:
        return _AuthHandler(self)

    def _smtp_options(self) -> dict[str, Any]:
        options = super()._smtp_options()
        options.update(
            enable_SMTPUTF8=self.smtputf8,
            auth_require_tls=self._tls_context is not None,
            authenticator=self._authenticate if self.username is not None else None,
            auth_exclude_mechanism=[] if self._oauth_token is not None else ["XOAUTH2"],
        )
        if self._tls_context is not None:
            options["tls_context"] = self._tls_context
            options["require_starttls"] = False
        return options

    def _factory(self) -> SMTP:
        with self._counted:
            self._connections += 1
        return super()._factory()
