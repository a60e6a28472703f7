"""``maildesk check-config``: the config, its warnings, the templates, the database, every
mailbox and the SMTP server, one ``ok``/``warn``/``FAIL`` line each, then a probe mail sent
round through the desk.

Under ``cli``; the probes themselves are the mail layer's, the round trip the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from maildesk import shared_secret
from maildesk.config import Settings, StoreBackend
from maildesk.database import Database
from maildesk.models import DatabaseError
from maildesk.ui.start import load_settings


def cmd_check_config(args: argparse.Namespace) -> int:
    from maildesk.mail import smtp
    from maildesk.mail.imap import MailboxError, probe
    from maildesk.service import roundtrip

    settings = load_settings(args, log_warnings=False)
    print(f"ok   config {settings.path}")
    # before any connection: a check that hangs or fails must not hide them
    for warning in settings.warnings:
        print(f"warn {warning}")
    broken = check_templates(settings)
    sys.stdout.flush()
    failed = 0
    db = Database(settings.database_url)
    try:
        db.ping()
        print(f"ok   database {settings.database_url.split('@')[-1]}")
        for line in several_hosts(settings):
            print(f"warn {line}")
        if stale := shared_secret.stale_file(settings, db):
            print(f"warn {stale}")
    except DatabaseError as exc:
        print(f"FAIL database: {exc}")
        failed += 1
    for box in settings.mailboxes:
        if not box.watched:
            print(
                f"ok   mailbox {box.name}: fed by the MTA's pipe (maildesk ingest --mailbox "
                f"{box.name}), nothing to log in to; the probe shows whether mail gets through"
            )
            continue
        try:
            print(f"ok   mailbox {box.name} ({box.host}:{box.port}): {probe(box)}")
        except MailboxError as exc:
            print(f"FAIL mailbox {box.name}: {exc}")
            failed += 1
    try:
        print(
            f"ok   smtp {settings.smtp.host}:{settings.smtp.port}: {asyncio.run(smtp.probe(settings.smtp))}"
        )
    except smtp.SmtpError as exc:
        print(f"FAIL smtp: {exc}")
        failed += 1
    sys.stdout.flush()
    if args.no_probe:
        return 1 if failed or broken else 0
    if failed:
        print("warn probe not sent: it needs the database, every mailbox and the SMTP server")
        return 1
    # the probe is marked with the desk's secret, and one through a pipe is looked for in the
    # ledger: the schema as the daemon has it
    db.upgrade()
    result = roundtrip.run(shared_secret.settled(settings, db), db, wait=args.probe_wait)
    print(f"ok   probe {result.line}" if result.ok else f"FAIL probe: {result.line}")
    return 0 if result.ok and not broken else 1


def check_templates(settings: Settings) -> int:
    """check-config's lines for the templates; returns how many failed."""
    from maildesk.act import samples
    from maildesk.service.wiring import desk_for

    # before the database is reached: the sample mails' marks need a secret, not the desk's
    checked = samples.check(desk_for(shared_secret.stand_in(settings)))
    templates_dir = settings.desk.templates_dir
    where = f", {checked.overridden} from {templates_dir}" if templates_dir else ""
    if not checked.problems:
        print(f"ok   templates: {checked.mails} mails rendered with sample data{where}")
    for note in checked.notes:
        print(f"warn template {note}")
    for problem in checked.problems:
        print(f"FAIL template {problem}")
    return len(checked.problems)


def several_hosts(settings: Settings) -> list[str]:
    """What keeps another host on this database from doing this host's work."""
    if settings.database_url.startswith("sqlite") or settings.store != StoreBackend.DIRECTORY:
        return []  # SQLite is a file of this host's; the database store is every host's
    return [
        f'[store] backend: "directory" on PostgreSQL: attachments and raw mail are kept in '
        f"{settings.desk.data_dir} on this host, and other hosts on this database cannot read "
        "them (quarantine replay, an agent's files sent on, a ticket's files fetched); set "
        '[store] backend = "database", or point every host\'s data_dir at one shared directory'
    ]
