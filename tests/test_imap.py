"""maildesk.mail.imap against real IMAP servers on loopback (pymap, and Dovecot where installed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from maildesk.demo import world as mailworld
from maildesk.mail.imap import FetchedMail, Mailbox, MailboxError, MailboxLoginError, probe
from tests.loopback import PymapServer
from tests.servers import DOVECOT, Certificate, DovecotServer, ImapAccount, fresh_user


def mail(n: int, body: bytes = b"Hello, my printer is on fire.\r\n") -> bytes:
    return (
        b"From: Customer %d <customer%d@example.org>\r\n"
        b"To: support@example.test\r\n"
        b"Subject: Help number %d \xc3\xa9\r\n"
        b"Message-ID: <m%d@example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" % (n, n, n, n)
    ) + body


@pytest.fixture
def mailbox(imap_server: ImapAccount) -> Iterator[Mailbox]:
    box = Mailbox(imap_server.config())
    box.connect()
    try:
        yield box
    finally:
        box.close()


def assert_one_line(error: BaseException, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    for part in parts:
        assert part in text, text


# --------------------------------------------------------------------------- connect, read


def test_connect_creates_the_folders_and_selects_the_inbox(
    imap_server: ImapAccount, mailbox: Mailbox
) -> None:
    assert mailbox.uidvalidity > 0
    assert mailbox.pending() == []
    assert mailbox.folder_uids("Processed") == []
    assert mailbox.folder_uids("Quarantine") == []
    # a second connection finds the folders already there and the same UIDVALIDITY
    again = Mailbox(imap_server.config())
    again.connect()
    try:
        assert again.uidvalidity == mailbox.uidvalidity
    finally:
        again.close()


def test_batched_fetch_returns_exact_bytes_in_uid_order(imap_server: ImapAccount) -> None:
    raws = [mail(n) for n in range(7)]
    appended = [imap_server.append(raw) for raw in raws]
    box = Mailbox(imap_server.config(), batch=3)
    box.connect()
    try:
        uids = box.pending()
        assert len(uids) == 7 and uids == sorted(uids)
        if all(uid is not None for uid in appended):
            assert uids == appended
        fetched = list(box.fetch(uids))
    finally:
        box.close()
    assert [m.raw for m in fetched] == raws
    assert [m.uid for m in fetched] == uids
    assert {m.uidvalidity for m in fetched} == {box.uidvalidity}
    assert all(m.mailbox == "support" and m.size == len(m.raw) and not m.too_large for m in fetched)


def test_new_mail_shows_up_in_pending_on_an_open_connection(
    imap_server: ImapAccount, mailbox: Mailbox
) -> None:
    imap_server.append(mail(1))
    assert len(mailbox.pending()) == 1
    imap_server.append(mail(2))
    assert len(mailbox.pending()) == 2


def test_oversize_message_is_reported_without_downloading_it(imap_server: ImapAccount) -> None:
    small, big = mail(1), mail(2, b"x" * 5000 + b"\r\n")
    imap_server.append(small)
    imap_server.append(big)
    box = Mailbox(imap_server.config(), max_message_bytes=1000)
    box.connect()
    try:
        fetched = list(box.fetch(box.pending()))
    finally:
        box.close()
    assert [(m.raw, m.too_large) for m in fetched] == [(small, False), (b"", True)]
    assert fetched[1].size == len(big)
    # its header block alone comes instead, for telling its sender and the admin
    assert fetched[1].head == big[: big.index(b"\r\n\r\n") + 4]
    assert fetched[0].head == b""


def test_the_header_block_of_an_oversize_message_is_fetched_up_to_its_cap(
    imap_server: ImapAccount,
) -> None:
    many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 60) for i in range(200))
    big = mail(1, b"x" * 5000 + b"\r\n").replace(b"\r\n", b"\r\n" + many, 1)
    imap_server.append(big)
    box = Mailbox(imap_server.config(), max_message_bytes=1000, max_header_bytes=4096)
    box.connect()
    try:
        (fetched,) = list(box.fetch(box.pending()))
    finally:
        box.close()
    assert fetched.too_large and fetched.head == big[:4096]


def test_fetch_skips_uids_that_are_gone(imap_server: ImapAccount, mailbox: Mailbox) -> None:
    imap_server.append(mail(1))
    (uid,) = mailbox.pending()
    assert [m.uid for m in mailbox.fetch([uid, uid + 1000])] == [uid]


# --------------------------------------------------------------------------- moving


def test_move_to_processed_and_quarantine(imap_server: ImapAccount, mailbox: Mailbox) -> None:
    raws = [mail(n) for n in range(4)]
    for raw in raws:
        imap_server.append(raw)
    uids = mailbox.pending()
    mailbox.move(uids[:2], "processed")
    mailbox.move(uids[3:], "quarantine")
    assert mailbox.pending() == [uids[2]]
    assert imap_server.messages("INBOX") == [raws[2]]
    assert imap_server.messages("Processed") == raws[:2]
    assert imap_server.messages("Quarantine") == raws[3:]


def test_move_in_batches(imap_server: ImapAccount) -> None:
    raws = [mail(n) for n in range(5)]
    for raw in raws:
        imap_server.append(raw)
    box = Mailbox(imap_server.config(), batch=2)
    box.connect()
    try:
        box.move(box.pending(), "processed")
        assert box.pending() == []
    finally:
        box.close()
    assert imap_server.messages("Processed") == raws


DOVECOT_WITHOUT_MOVE = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS NAMESPACE UNSELECT CHILDREN"
)


@pytest.fixture(params=["pymap", "dovecot"])
def server_without_move(request: pytest.FixtureRequest) -> Iterator[ImapAccount]:
    if request.param == "pymap":
        with PymapServer(move=False) as pymap:
            yield ImapAccount("pymap", pymap, *fresh_user())
        return
    if DOVECOT is None:
        request.getfixturevalue("dovecot_server")  # skips, or fails under CI
    with DovecotServer(capabilities=DOVECOT_WITHOUT_MOVE) as dovecot:
        yield ImapAccount("dovecot", dovecot, *fresh_user())


def test_move_without_the_move_capability_copies_then_expunges_only_those(
    server_without_move: ImapAccount,
) -> None:
    account = server_without_move
    raws = [mail(n) for n in range(3)]
    for raw in raws:
        account.append(raw)
    box = Mailbox(account.config())
    box.connect()
    try:
        assert not box.has_move
        uids = box.pending()
        box.move(uids[:2], "processed")
        assert box.pending() == [uids[2]]
    finally:
        box.close()
    assert account.messages("Processed") == raws[:2]
    assert account.messages("INBOX") == [raws[2]]


def test_move_to_an_unknown_destination_is_refused(mailbox: Mailbox) -> None:
    with pytest.raises(ValueError):
        mailbox.move([1], "trash")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- waiting


def test_idle_wakes_within_a_second_of_new_mail(imap_server: ImapAccount, mailbox: Mailbox) -> None:
    assert mailbox.has_idle
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(mailbox.wait, 10.0)
        assert mailbox.wait_until_idling(5.0)
        imap_server.append(mail(1))
        appended = time.monotonic()
        assert waiting.result(timeout=5.0) is True
        latency = time.monotonic() - appended
    assert latency < 1.5, latency  # Dovecot coalesces notifications for 0.5 s
    assert len(mailbox.pending()) == 1


def test_mail_that_arrived_before_the_wait_is_reported_at_once(
    imap_server: ImapAccount, mailbox: Mailbox
) -> None:
    assert mailbox.pending() == []
    imap_server.append(mail(1))
    started = time.monotonic()
    assert mailbox.wait(10.0) is True
    assert time.monotonic() - started < 1.5
    assert len(mailbox.pending()) == 1


def test_quiet_idle_returns_false_at_its_timeout(mailbox: Mailbox) -> None:
    started = time.monotonic()
    assert mailbox.wait(0.3) is False
    assert 0.25 < time.monotonic() - started < 2.0
    assert mailbox.pending() == []  # the connection is still usable after IDLE


def test_interrupt_ends_a_wait_from_another_thread(mailbox: Mailbox) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(mailbox.wait, 30.0)
        started = time.monotonic()
        mailbox.interrupt()
        assert waiting.result(timeout=5.0) is False
    assert time.monotonic() - started < 1.5
    assert mailbox.pending() == []


def test_without_idle_wait_polls_every_poll_seconds() -> None:
    with PymapServer(idle=False) as server:
        username, password = fresh_user()
        server.add_user(username, password)
        box = Mailbox(server.mailbox_config(username, poll_seconds=0.2))
        box.connect()
        try:
            assert not box.has_idle
            started = time.monotonic()
            assert box.wait(30.0) is True
            assert time.monotonic() - started < 2.0
        finally:
            box.close()


# --------------------------------------------------------------------------- failures


def test_connection_refused_is_one_clear_line() -> None:
    port = mailworld.free_port()
    config = mailworld.mailbox_config("127.0.0.1", port, "a@example.test", "pw")
    box = Mailbox(config, timeout=5.0)
    with pytest.raises(MailboxError) as caught:
        box.connect()
    assert_one_line(caught.value, f"127.0.0.1:{port}", "connection refused")
    assert not isinstance(caught.value, MailboxLoginError)
    assert not box.connected


def test_wrong_password_on_pymap_is_a_login_error(pymap_server: PymapServer) -> None:
    username, password = fresh_user()
    pymap_server.add_user(username, password)
    box = Mailbox(pymap_server.mailbox_config(username, password="not-" + password))
    with pytest.raises(MailboxLoginError) as caught:
        box.connect()
    assert_one_line(caught.value, f"127.0.0.1:{pymap_server.port}", username, "refused")
    assert password not in str(caught.value)


def test_wrong_password_on_dovecot_is_a_login_error(request: pytest.FixtureRequest) -> None:
    if DOVECOT is None:
        request.getfixturevalue("dovecot_server")  # skips, or fails under CI
    # its own instance: Dovecot slows the next logins from an address after a failure
    username, password = fresh_user()
    with DovecotServer({username: password}) as server:
        box = Mailbox(server.mailbox_config(username, password="not-" + password))
        with pytest.raises(MailboxLoginError) as caught:
            box.connect()
    assert_one_line(caught.value, f"127.0.0.1:{server.port}", username, "AUTHENTICATIONFAILED")
    assert password not in str(caught.value)


def test_server_restart_is_an_error_then_reconnect_finds_the_mail(
    imap_server: ImapAccount, mailbox: Mailbox
) -> None:
    imap_server.append(mail(1))
    validity = mailbox.uidvalidity
    imap_server.restart()
    with pytest.raises(MailboxError) as caught:
        mailbox.pending()
    assert_one_line(caught.value, f"127.0.0.1:{imap_server.port}")
    mailbox.close()
    mailbox.connect()
    assert mailbox.uidvalidity == validity
    assert [m.raw for m in mailbox.fetch(mailbox.pending())] == [mail(1)]


def test_connection_lost_in_the_middle_of_a_fetch_is_an_error(imap_server: ImapAccount) -> None:
    imap_server.append(mail(1))
    imap_server.append(mail(2))
    box = Mailbox(imap_server.config(), batch=1)
    box.connect()
    try:
        fetching = box.fetch(box.pending())
        assert next(fetching).raw == mail(1)
        imap_server.stop()
        with pytest.raises(MailboxError) as caught:
            next(fetching)
        assert_one_line(caught.value, f"127.0.0.1:{imap_server.port}", "FETCH")
    finally:
        box.close()
    imap_server.start()
    assert imap_server.messages() == [mail(1), mail(2)]


def test_server_down_during_idle_is_an_error(imap_server: ImapAccount, mailbox: Mailbox) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(mailbox.wait, 10.0)
        imap_server.stop()
        with pytest.raises(MailboxError):
            waiting.result(timeout=5.0)
            mailbox.pending()  # if the wait saw the drop as news, the next command fails


def test_probe_reports_waiting_mail(imap_server: ImapAccount) -> None:
    imap_server.append(mail(1))
    imap_server.append(mail(2))
    assert probe(imap_server.config()) == "ok: 2 messages waiting"


def test_probe_of_a_missing_folder_names_it(imap_server: ImapAccount) -> None:
    with pytest.raises(MailboxError) as caught:
        probe(imap_server.config(folder="NoSuchFolder"))
    assert_one_line(caught.value, "NoSuchFolder")


def test_append_returns_the_new_uid(imap_server: ImapAccount, mailbox: Mailbox) -> None:
    uid = mailbox.append("INBOX", mail(1))
    assert uid is not None and mailbox.pending() == [uid]
    assert [m.uid for m in mailbox.fetch([uid])] == [uid]


# --------------------------------------------------------------------------- TLS


def tls_account(server: DovecotServer) -> tuple[str, str]:
    username, password = fresh_user()
    server.add_user(username, password)
    return username, password


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_self_signed_certificate_is_refused_by_default(
    dovecot_tls_server: DovecotServer, security: str
) -> None:
    username, _ = tls_account(dovecot_tls_server)
    port = dovecot_tls_server.tls_port if security == "tls" else dovecot_tls_server.port
    box = Mailbox(dovecot_tls_server.mailbox_config(username, security=security, port=port))
    with pytest.raises(MailboxError) as caught:
        box.connect()
    assert_one_line(caught.value, f"127.0.0.1:{port}", "certificate")
    assert not isinstance(caught.value, MailboxLoginError)


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_certificate_trusted_by_the_context_is_accepted(
    dovecot_tls_server: DovecotServer, certificate: Certificate, security: str
) -> None:
    username, _ = tls_account(dovecot_tls_server)
    port = dovecot_tls_server.tls_port if security == "tls" else dovecot_tls_server.port
    config = dovecot_tls_server.mailbox_config(
        username, security=security, port=port, ssl_context=certificate.client_context()
    )
    dovecot_tls_server.append(username, mail(1))
    assert probe(config) == "ok: 1 message waiting"


def test_pymap_starttls_verifies_the_certificate(certificate: Certificate) -> None:
    username, password = fresh_user()
    with PymapServer({username: password}, tls_context=certificate.server_context()) as server:
        refused = Mailbox(server.mailbox_config(username, security="starttls"))
        with pytest.raises(MailboxError) as caught:
            refused.connect()
        assert_one_line(caught.value, "certificate")
        trusted = server.mailbox_config(
            username, security="starttls", ssl_context=certificate.client_context()
        )
        assert probe(trusted) == "ok: 0 messages waiting"


def test_starttls_missing_on_the_server_is_an_error_not_a_plain_login(
    pymap_server: PymapServer,
) -> None:
    username, password = fresh_user()
    pymap_server.add_user(username, password)
    box = Mailbox(pymap_server.mailbox_config(username, security="starttls"))
    with pytest.raises(MailboxError) as caught:
        box.connect()
    assert_one_line(caught.value, "does not offer STARTTLS")
    assert not isinstance(caught.value, MailboxLoginError)


def test_raw_mail_is_a_frozen_value() -> None:
    item = FetchedMail("support", 1, 2, b"x", 1)
    with pytest.raises(AttributeError):
        item.uid = 3  # type: ignore[misc]


def test_idle_over_tls_wakes_on_new_mail(
    dovecot_tls_server: DovecotServer, certificate: Certificate
) -> None:
    username, _ = tls_account(dovecot_tls_server)
    config = dovecot_tls_server.mailbox_config(
        username,
        security="tls",
        port=dovecot_tls_server.tls_port,
        ssl_context=certificate.client_context(),
    )
    with Mailbox(config) as box, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(box.wait, 10.0)
        assert box.wait_until_idling(5.0)
        dovecot_tls_server.append(username, mail(1))
        assert waiting.result(timeout=5.0) is True
        assert [m.raw for m in box.fetch(box.pending())] == [mail(1)]
