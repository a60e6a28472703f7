"""Templates are checked before they hurt: check-config, start and reload render every template
with sample data; a broken one is named by file and line and stops the start (exit 78) or the
reload. An override of one half sends that half alone. A template that fails only for some
data gives way to the shipped one for that mail, with one alert to the admin an hour.

Every failure here is a real template an admin could write, rendered by the real code."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.act import samples
from maildesk.demo.world import Captured
from maildesk.mail.rendering import shipped_templates
from maildesk.models import Ledger
from tests.desk import (
    CUSTOMER,
    SHIPPED_MAILS,
    SUPPORT_NAME,
    DeskWorld,
    LogReader,
    customer_mail,
    html_of,
    text_of,
)
from tests.loopback import ScriptedSmtp
from tests.servers import ImapAccount

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = shipped_templates()
ADMIN = "admin@example.com"


@pytest.fixture
def world(
    imap_server: ImapAccount, smtp_server: ScriptedSmtp, tmp_path: Path
) -> Iterator[DeskWorld]:
    w = DeskWorld(imap_server, smtp_server, tmp_path)
    yield w
    w.close()


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def shipped(name: str) -> str:
    return (SHIPPED / name).read_text()


SHIPPED = Path(__file__).parent.parent / "templates"


def check_config(world: DeskWorld) -> tuple[int, list[str]]:
    done = world.cli("check-config", "--no-probe")
    return done.returncode, done.stdout.decode().splitlines()


# --------------------------------------------------------------------------- the check


def test_the_shipped_templates_pass_with_every_sample(world: DeskWorld) -> None:
    checked = samples.check(world.desk)
    assert (checked.mails, checked.overridden, checked.problems, checked.notes) == (
        SHIPPED_MAILS,
        0,
        (),
        (),
    )
    code, lines = check_config(world)
    assert code == 0
    assert f"ok   templates: {SHIPPED_MAILS} mails rendered with sample data" in lines


def test_readme_lists_the_variables_of_every_template(world: DeskWorld) -> None:
    """README's table is what the samples hold: an admin writing an override against it sees
    in the check what real mail will give."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("| template | variables |") :].split("\n\n")[0]
    rows = {}
    for line in section.splitlines()[2:]:
        names, variables = (cell.strip() for cell in line.strip("|").split("|")[:2])
        for name in re.findall(r"`([^`]+)`", names):
            rows[name.removesuffix(".txt.j2").removesuffix(".html.j2")] = set(
                re.findall(r"`([a-z_]+)`", variables)
            )
    expected = {
        ("canned/*" if name == "canned" else name): set(keys)
        for name, keys in samples.variables(world.desk).items()
    }
    assert rows == expected


BROKEN = {
    # a syntax error
    "ack.txt.j2": (
        shipped("ack.txt.j2").replace("{% if dropped %}", "{% if %}"),
        "Expected an expression, got 'end of statement block'",
    ),
    # a variable that does not exist (a typo, or another tool's template)
    "ack.html.j2": (
        shipped("ack.html.j2").replace("<p>Hello,</p>", "<p>Hello {{ customer_name }},</p>"),
        "'customer_name' is undefined",
    ),
    # what the sandbox refuses
    "canned/thanks.txt.j2": (
        "Thank you, {{ ticket.__class__ }}.\n",
        "access to attribute '__class__' of 'dict' object is unsafe.",
    ),
}


def broken_line(name: str) -> int:
    text, _ = BROKEN[name]
    marker = {"ack.txt.j2": "{% if %}", "ack.html.j2": "customer_name"}.get(name, "__class__")
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_template_fails_check_config_and_stops_the_start(
    world: DeskWorld, tmp_path: Path, name: str
) -> None:
    text, message = BROKEN[name]
    directory = write(tmp_path / "templates", {name: text})
    world.use_templates(directory)
    expected = f"template {directory / name}:{broken_line(name)}: {message}"

    code, lines = check_config(world)
    assert code == 1
    assert f"FAIL {expected}" in lines
    assert not any(line.startswith("ok   templates") for line in lines)

    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    for command in (("run", "--once"), ("quarantine", "replay", "--all")):
        done = world.cli(*command, input=b"")
        assert done.returncode == 78, command
        assert done.stderr.decode().splitlines() == [f"maildesk: config error: {expected}"]
    # an MTA's pipe: try again later (75), in one line without the file's path
    piped = world.cli("ingest", input=customer_mail("Printer broken", "Blank pages.").as_bytes())
    assert (piped.returncode, piped.stdout) == (75, b"")
    assert piped.stderr.decode().splitlines() == [
        "maildesk: temporary failure: configuration problem (run maildesk check-config as this user)"
    ]
    assert len(world.account.uids("INBOX")) == 1 and world.smtp.messages == []


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_a_reload_with_a_broken_template_is_refused_and_the_old_one_keeps_working(
    world: DeskWorld, tmp_path: Path
) -> None:
    directory = write(
        tmp_path / "templates",
        {"ack.txt.j2": shipped("ack.txt.j2").replace("Hello,", "Howdy,")},
    )
    world.use_templates(directory)
    process = world.spawn("run")
    logs = LogReader(process.stderr)  # type: ignore[arg-type]
    try:
        logs.wait_for("connected")
        world.deliver(customer_mail("One", "First."))
        assert text_of(world.wait_mails_to(CUSTOMER, 1)[-1]).startswith("Howdy,")

        # the admin breaks the file on disk and reloads: refused, the checked one stays
        (directory / "ack.txt.j2").write_text(shipped("ack.txt.j2") + "{{ ticket.owner }}\n")
        process.send_signal(signal.SIGHUP)
        refused = logs.wait_for("reload refused")
        lines = len(shipped("ack.txt.j2").splitlines()) + 1
        assert refused["level"] == "error"
        assert refused["message"] == (
            "reload refused, keeping the running configuration: template "
            f"{directory / 'ack.txt.j2'}:{lines}: 'dict object' has no attribute 'owner'"
        )
        world.deliver(customer_mail("Two", "Second."))
        assert text_of(world.wait_mails_to(CUSTOMER, 2)[-1]).startswith("Howdy,")

        # fixed and reloaded: the new one is used
        (directory / "ack.txt.j2").write_text(shipped("ack.txt.j2").replace("Hello,", "Hi,"))
        process.send_signal(signal.SIGHUP)
        logs.wait_for("configuration reloaded")
        world.deliver(customer_mail("Three", "Third."))
        assert text_of(world.wait_mails_to(CUSTOMER, 3)[-1]).startswith("Hi,")
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0


# --------------------------------------------------------------------------- one half


def parts(mail: Captured) -> list[str]:
    return [part.get_content_type() for part in mail.message.walk() if not part.is_multipart()]


@pytest.mark.parametrize("imap_server", ["pymap"], indirect=True)
def test_an_override_of_one_half_sends_that_half_alone(world: DeskWorld, tmp_path: Path) -> None:
    text_only = write(
        tmp_path / "text",
        {
            "ack.txt.j2": shipped("ack.txt.j2").replace("Hello,", "Hello from us,"),
            "escalated.html.j2": "<p>Passed on to {{ ticket.team }}.</p>\n",
            "akc.txt.j2": "{% set subject = 'misspelt' %}\n",
        },
    )
    world.use_templates(text_only)
    code, lines = check_config(world)
    assert code == 0
    assert (
        f"ok   templates: {SHIPPED_MAILS} mails rendered with sample data, 2 from {text_only}"
        in lines
    )
    assert [line for line in lines if line.startswith("warn")] == [
        "warn template ack.txt.j2 is overridden alone: ack mail goes out as text only, without "
        "the shipped ack.html.j2 (add your own ack.html.j2 for an HTML part)",
        "warn template escalated.html.j2 is overridden alone: escalated mail goes out as HTML "
        "only, without the shipped escalated.txt.j2 (its subject, unless escalated.html.j2 sets "
        "one, is the shipped escalated.txt.j2's)",
        "warn template akc.txt.j2 in templates_dir is not the template of any mail maildesk "
        "sends (a canned reply is canned/<name>.txt.j2); it is used only where another template "
        "includes it",
    ]

    world.deliver(customer_mail("Printer broken", "It prints blank pages."))
    world.run_once()
    [ack] = world.mails_to(CUSTOMER)
    assert parts(ack) == ["text/plain"] and html_of(ack) is None
    assert text_of(ack).startswith("Hello from us,")

    # an HTML half alone: HTML only, with the shipped text's subject
    html_only = write(tmp_path / "html", {"ack.html.j2": "<p>We opened {{ ticket.ref }}.</p>\n"})
    world.use_templates(html_only)
    world.deliver(customer_mail("Tom & Jerry <3", "Cartoons."))
    world.run_once()
    ack = world.mails_to(CUSTOMER)[-1]
    assert parts(ack) == ["text/html"]
    assert ack.message["Subject"] == "[#2] Tom & Jerry <3"
    assert "<p>We opened [#2].</p>" in (html_of(ack) or "")

    # or the subject it sets, as text (not as the escaped markup an HTML template makes)
    with_subject = write(
        tmp_path / "subject",
        {
            "ack.html.j2": (
                '{% set subject = "Opened " ~ ticket.ref ~ ": " ~ ticket.subject %}\n'
                "<p>We opened {{ ticket.ref }} about {{ ticket.subject }}.</p>\n"
            )
        },
    )
    world.use_templates(with_subject)
    world.deliver(customer_mail("Tom & Jerry <3", "Cartoons again."))
    world.run_once()
    ack = world.mails_to(CUSTOMER)[-1]
    assert ack.message["Subject"] == "Opened [#3]: Tom & Jerry <3"
    assert "about Tom &amp; Jerry &lt;3.</p>" in (html_of(ack) or "")
    assert samples.check(world.desk).problems == ()


# --------------------------------------------------------------------------- at run time


def alerts(world: DeskWorld) -> list[Captured]:
    return world.mails_to(ADMIN)


@pytest.mark.parametrize("imap_server", ["pymap", "dovecot"], indirect=True)
def test_an_override_failing_for_some_mail_falls_back_and_alerts_the_admin_once(
    world: DeskWorld, tmp_path: Path
) -> None:
    # a realistic mistake: every requester is taken for first.last@; the sample's is
    greeting = (
        '{% set name = ticket.requester.split("@")[0].split(".") %}'
        "Dear {{ name[0] | title }} {{ name[1] | title }},\n"
    )
    override = shipped("ack.txt.j2").replace("Hello,\n", greeting)
    directory = write(tmp_path / "templates", {"ack.txt.j2": override})
    world.use_templates(directory)
    assert check_config(world)[0] == 0  # the check passes: its requester is jane.doe@

    world.deliver(customer_mail("Printer", "Jams.", sender="jane.doe@customer.test"))
    world.deliver(customer_mail("Screen", "Flickers."))  # dana@customer.test
    world.deliver(customer_mail("Mouse", "Squeaks.", sender="bob@customer.test"))
    assert world.run_once() == 0

    assert text_of(world.mails_to("jane.doe@customer.test")[0]).startswith("Dear Jane Doe,")
    for customer in (CUSTOMER, "bob@customer.test"):
        [ack] = world.mails_to(customer)
        # the shipped acknowledgment, both halves, as if there were no override
        assert text_of(ack).startswith("Hello,\r\n\r\nThank you for writing to")
        assert html_of(ack) is not None and parts(ack) == ["text/plain", "text/html"]
    [alert] = alerts(world)
    line = len(greeting.splitlines()) + 1
    assert alert.message["Subject"] == (
        f"[{SUPPORT_NAME}] template ack.txt.j2 failed; the shipped one is used instead"
    )
    assert f"{directory / 'ack.txt.j2'}:{line}: list object has no element 1" in text_of(alert)
    assert f"ack to {CUSTOMER}" in text_of(alert)
    # nothing quarantined: every message made its ticket
    assert len(world.tickets()) == 3 and world.account.uids("Quarantine") == []
    with world.db.transaction() as session:
        assert {r.outcome for r in session.scalars(select(Ledger))} == {"new_ticket"}

    # within the hour, in another process too: no second alert
    world.clock.advance(minutes=30)
    world.deliver(customer_mail("Keyboard", "Sticky.", sender="carl@customer.test"))
    world.run_once()
    more = customer_mail("Cable", "Frayed.", sender="eve@customer.test").as_bytes()
    done = world.cli("ingest", input=more)
    assert done.returncode == 0, done.stderr
    world.cli("deliver", "--once")
    world.wait_mails_to("eve@customer.test", 1)
    assert len(alerts(world)) == 1

    # an hour later: one more
    world.clock.advance(minutes=31)
    world.deliver(customer_mail("Chair", "Wobbles.", sender="finn@customer.test"))
    world.run_once()
    assert len(alerts(world)) == 2
