"""A bad config stops the start with one line naming the key and the file, exit code 78."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from maildesk import config

GOOD = """
[desk]
name = "Support"
address = "support@example.com"
data_dir = "data"
secret = "0123456789abcdef0123"

[[mailboxes]]
name = "support"
host = "127.0.0.1"
port = 1143
security = "none"
username = "support@example.com"
password = "pw"
team = "support"

[smtp]
host = "127.0.0.1"
port = 1025
security = "none"

[[teams]]
name = "support"

[[agents]]
email = "Alice@Example.com"
name = "Alice"
teams = ["support"]
"""


def run_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILDESK_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD))
    assert settings.desk.data_dir == tmp_path / "data"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'maildesk.db'}"
    assert settings.agents[0].email == "alice@example.com"
    assert settings.mailboxes[0].processed_folder == "Processed"
    assert settings.security.token_days == 180
    assert settings.lifecycle.reopen_days == 30
    assert settings.limits.auto_replies_per_address_per_hour == 10
    assert settings.desk.ref(42) == "[#42]"


def test_no_secret_given_is_left_to_the_database(tmp_path: Path) -> None:
    """Reading the config writes no secret into the data directory: the desk's is kept in the
    database (``maildesk.shared_secret``, tested with two hosts in test_hosts.py)."""
    path = write(tmp_path, GOOD.replace('secret = "0123456789abcdef0123"\n', ""))
    desk = config.load(path).desk
    assert (desk.secret, desk.loop_id) == (b"", "")
    assert not (tmp_path / "data" / "secret").exists()


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (
            lambda t: t.replace('host = "127.0.0.1"\nport = 1143', "port = 1143"),
            "[[mailboxes]] #1 host: missing",
        ),
        (
            lambda t: t.replace("poll_seconds", "x") + '\n[limits]\nmax_parts = "many"\n',
            "[limits] max_parts: must be a int",
        ),
        (
            lambda t: t.replace('name = "Support"', 'name = "Support"\ncolour = "blue"'),
            "[desk] colour: unknown key",
        ),
        (
            lambda t: t.replace('password = "pw"', 'password_file = "missing.txt"'),
            "[[mailboxes]] #1 password_file: cannot read",
        ),
        (
            lambda t: t.replace('team = "support"', 'team = "sales"'),
            "[[mailboxes]] #1 team: team 'sales' does not exist",
        ),
        (
            lambda t: t.replace('teams = ["support"]', 'teams = ["nope"]'),
            "[[agents]] #1 teams: team 'nope' does not exist",
        ),
        (
            lambda t: t.replace('security = "none"\nusername', 'security = "ssl"\nusername'),
            "[[mailboxes]] #1 security: must be one of",
        ),
        (
            lambda t: t + '\n[lifecycle]\nremind_pending_after = "soon"\n',
            "[lifecycle] remind_pending_after",
        ),
        (
            lambda t: t + "\n[limits]\nmax_outbound_bytes = 0\n",
            "[limits] max_outbound_bytes: must be positive",
        ),
        (
            lambda t: t + '\n[limits]\nnotice_attachment_bytes = "10 MB"\n',
            "[limits] notice_attachment_bytes: must be a int",
        ),
        (lambda t: t.replace("[smtp]", "[smtpp]"), "[smtpp]: unknown table"),
        (lambda t: t + "\n[intake]\nspam_header = true\n", "[intake] spam_header: unknown key"),
        (lambda t: t + '\n[intake]\nspam_headers = "yes"\n', "[intake] spam_headers: must be"),
        (
            lambda t: t + '\n[intake]\nblocked_senders = ["not an address"]\n',
            "[intake] blocked_senders: expected an address or a glob",
        ),
        (
            lambda t: t + '\n[intake]\nblocked_senders = ["*@example.com"]\n',
            "the desk's own or an agent's address",
        ),
        (
            lambda t: t + '\n[intake]\ntrusted_spam_hosts = ["mx example"]\n',
            "[intake] trusted_spam_hosts: not a host name",
        ),
        (lambda t: t + "\n[[[", "not valid TOML"),
    ],
)
def test_bad_config_fails_in_one_line_naming_the_key(tmp_path: Path, change, names: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, change(GOOD))
    done = run_cli(path, "tickets", "list")
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert names in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in done.stderr


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    done = run_cli(tmp_path / "nowhere.toml", "run", "--once")
    assert done.returncode == 78
    assert "nowhere.toml" in done.stderr and "cannot read" in done.stderr


def test_world_readable_config_with_a_password_warns(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.chmod(0o644)
    done = run_cli(path, "tickets", "list")
    assert done.returncode == 0
    assert "readable by others" in done.stderr
    assert "pw" not in done.stderr.replace("password", "")


def test_agent_auth_none_warns_loudly(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '\n[security]\nagent_auth = "none"\n')
    done = run_cli(path, "tickets", "list")
    assert "NOT authenticated" in done.stderr


def test_example_config_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    text = example.replace('data_dir = "/var/lib/maildesk"', f'data_dir = "{tmp_path}"')
    settings = config.load(write(tmp_path, text))
    assert settings.desk.address == "support@example.com"
    for key in (
        "token_days",
        "trusted_authserv_ids",
        "reopen_days",
        "max_message_bytes",
        "admin_address",
        "poll_seconds",
    ):
        assert key in example


def _example_data(tmp_path: Path) -> dict[str, Any]:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    text = example.replace('data_dir = "/var/lib/maildesk"', f'data_dir = "{tmp_path}"')
    return tomllib.loads(text)


def _example_tables() -> list[str]:
    """Every table the example names, commented out or not: "desk", "mailboxes", "sla.high"."""
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    return re.findall(r"^(?:#\s*)?\[\[?([\w.]+)\]\]?", example, re.M)


def _example_arrays() -> set[str]:
    """The arrays of tables the example names (``[[rules]]``), commented out or not."""
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    return set(re.findall(r"^(?:#\s*)?\[\[([\w.]+)\]\]", example, re.M))


def test_every_table_of_the_example_refuses_an_unknown_key(tmp_path: Path) -> None:
    tables = _example_tables()
    assert {"desk", "mailboxes", "smtp", "sla.high", "business_hours"} <= set(tables)
    for name in dict.fromkeys(tables):
        data = _example_data(tmp_path)
        *parents, last = name.split(".")
        holder = data
        for parent in parents:
            holder = holder.setdefault(parent, {})
        table = holder.setdefault(last, [{}] if name in _example_arrays() else {})
        (table[0] if isinstance(table, list) else table)["hots"] = "smtp.example.com"
        with pytest.raises(config.ConfigError) as raised:
            config.build(data, tmp_path / "maildesk.toml")
        message = str(raised.value)
        assert "\n" not in message
        assert "hots: unknown key" in message, (name, message)
        assert name.split(".")[0] in message, (name, message)


def test_a_typo_under_smtp_stops_the_cli_with_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[smtp]\n", '[smtp]\nhots = "smtp.example.com"\n', 1))
    done = run_cli(path, "tickets", "list")
    assert done.returncode == 78
    assert done.stderr.strip().count("\n") == 0
    assert "[smtp] hots: unknown key" in done.stderr


def test_a_password_sent_unencrypted_to_another_machine_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from the config alone: nothing here connects anywhere."""
    text = GOOD.replace('host = "127.0.0.1"\nport = 1143', 'host = "imap.example.com"\nport = 143')
    text = text.replace(
        'host = "127.0.0.1"\nport = 1025\nsecurity = "none"',
        'host = "smtp.example.com"\nport = 25\nsecurity = "none"\n'
        'username = "support@example.com"\npassword_env = "SMTP_PASSWORD"',
    )
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-pw")
    warnings = config.load(write(tmp_path, text)).warnings
    assert warnings == (
        '[[mailboxes]] #1 (support) security = "none" sends the password unencrypted to '
        'imap.example.com, which is not this machine; use security = "tls" or "starttls"',
        '[smtp] security = "none" sends the password unencrypted to smtp.example.com, which '
        'is not this machine; use security = "tls" or "starttls"',
    )
    token = text.replace(
        'password_env = "SMTP_PASSWORD"', 'auth = "xoauth2"\noauth_token_command = "true"'
    )
    assert (
        "sends the OAuth2 access token unencrypted to smtp.example.com"
        in (config.load(write(tmp_path, token)).warnings[1])
    )
    encrypted = text.replace('port = 143\nsecurity = "none"', 'port = 143\nsecurity = "starttls"')
    encrypted = encrypted.replace('password_env = "SMTP_PASSWORD"', "")
    assert config.load(write(tmp_path, encrypted)).warnings == ()


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST.", "127.0.0.1", "127.3.2.1", "::1", "[::1]", "::ffff:127.0.0.1"],
)
def test_a_password_over_loopback_is_not_warned_about(tmp_path: Path, host: str) -> None:
    text = GOOD.replace('host = "127.0.0.1"\nport = 1143', f'host = "{host}"\nport = 1143')
    assert f'host = "{host}"' in text
    assert config.load(write(tmp_path, text)).warnings == ()


@pytest.mark.parametrize(
    ("url", "holds"),
    [
        ("postgresql+psycopg://maildesk:pw@db.example.com/maildesk", True),
        ("postgresql+psycopg://maildesk@db.example.com/maildesk?password=pw", True),
        ("postgresql+psycopg://maildesk@db.example.com/maildesk?sslmode=require", False),
        ("postgresql+psycopg://maildesk@db.example.com:5432/maildesk", False),
    ],
)
def test_a_password_in_the_database_url_is_warned_about(
    tmp_path: Path, url: str, holds: bool
) -> None:
    path = write(tmp_path, GOOD + f'\n[database]\nurl = "{url}"\n')
    warnings = config.load(path).warnings
    assert [w for w in warnings if w.startswith("[database] url")] == (
        [
            "[database] url holds a password: leave it out of the url and put it in a .pgpass "
            "file of mode 600 (~/.pgpass of maildesk's user, or the file PGPASSFILE names)"
        ]
        if holds
        else []
    )
    assert all("pw" not in w.replace("password", "") for w in warnings)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('addresses = ["help at example.com"]', "addresses: not a valid mail address"),
        ('addresses = "help@example.com"', "addresses"),
        ('reply_to_requester = "yes"', "reply_to_requester"),
    ],
)
def test_a_mailboxs_addresses_and_reply_to_rule_are_checked_at_start(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = write(tmp_path, GOOD.replace('team = "support"\n', f'team = "support"\n{line}\n', 1))
    done = run_cli(path, "tickets", "list")
    assert done.returncode == 78
    [message] = done.stderr.strip().splitlines()
    assert problem in message and "[[mailboxes]]" in message


def test_a_mailboxs_addresses_are_the_desks_own(tmp_path: Path) -> None:
    extra = 'addresses = ["Help@Example.com"]\nreply_to_requester = false\n'
    path = write(tmp_path, GOOD.replace('team = "support"\n', f'team = "support"\n{extra}', 1))
    [box] = config.load(path).mailboxes
    assert (box.addresses, box.reply_to_requester) == (("help@example.com",), False)
