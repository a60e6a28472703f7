"""argv to commands: the ``maildesk`` command line, human tables and ``--json``.

Opens the transactions the commands need (with ``ingest`` for mail), turns known failures into
one line and an exit code: 78 for a bad config, 75 for a transient failure an MTA should retry,
1 for an unreachable mailbox in ``run --once``, 70 when a loop of ``run`` failed on an error no
outage explains (for systemd to start it afresh). Every command starts with umask 077 and logs
the config's warnings (``check-config`` prints them as ``warn`` lines instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import select

from maildesk import config as config_module
from maildesk import private
from maildesk.config import EX_CONFIG, ConfigError, Settings
from maildesk.models import Database, DatabaseError, Ledger, Status, Ticket, add_pipe_count
from maildesk.ui.views import iso, render_stats, render_ticket, table, ticket_detail, ticket_summary

if TYPE_CHECKING:
    from maildesk.act.means import Desk
    from maildesk.service.daemon import Loop

log = logging.getLogger("maildesk")

EX_TEMPFAIL = 75


# --------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("message_id", "ticket", "mailbox"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("imapclient", "aiosmtplib", "mail-parser", "mailparser", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- presenters


# --------------------------------------------------------------------------- commands


def load_settings(args: argparse.Namespace, *, log_warnings: bool = True) -> Settings:
    settings = config_module.load(config_module.find_config(args.config))
    setup_logging(args.log_format or settings.log.format, settings.log.level)
    for warning in settings.warnings if log_warnings else ():
        log.warning("%s", warning)
    return settings


def open_db(settings: Settings, *, upgrade: bool = True) -> Database:
    db = Database(settings.database_url)
    if upgrade:
        db.upgrade()
    return db


def checked_desk(settings: Settings) -> Desk:
    """The desk, its templates rendered with sample data first: a template that fails stops
    the command with one line naming the file and line (``ConfigError``, exit 78)."""
    from maildesk.act import samples
    from maildesk.service.wiring import desk_for

    desk = desk_for(settings)
    samples.require(desk)
    return desk


def cmd_run(args: argparse.Namespace) -> int:
    from maildesk.service.daemon import Courier, Daemon
    from maildesk.service.watchdog import Notifier

    settings = load_settings(args)
    desk = checked_desk(settings)
    db = open_db(settings)
    faults = injected_faults()
    # systemd's variables, taken out of the environment before any child process inherits it
    notifier = None if args.once else Notifier.from_environment(os.environ)
    daemon_pid = os.getpid()
    # no database connection is shared across the fork: the pool reopens them when needed
    db.dispose()
    # forked now, while this process has no other thread: it starts without importing again
    courier = Courier.fork(
        lambda: _courier_main(settings, daemon_pid, once=args.once, faults=faults)
    )
    daemon = Daemon(
        settings,
        db,
        desk,
        once=args.once,
        courier_argv=courier_argv(args, settings),
        courier=courier,
        notifier=notifier,
        faults=faults,
    )
    runner = asyncio.Runner()
    try:
        code = runner.run(daemon.run())
    finally:
        daemon.desk.close()
        if not daemon.abandoned:
            runner.close()
    for line in daemon.unreachable:
        print(f"maildesk: {line}", file=sys.stderr)
    if daemon.abandoned:
        # threads still blocked (a read, a lock) that asyncio and the interpreter would wait
        # for at exit: the delivery process and the parse workers are gone already
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    db.dispose()
    return code


def injected_faults() -> frozenset[Loop]:
    """``MAILDESK_TEST_FAULTS``, for tests only: the loops (``daemon.Loop`` names, separated
    by commas) that raise an error as a bug would, to prove such an error stops the daemon."""
    from maildesk.service.daemon import Loop

    names = [n.strip() for n in os.environ.get("MAILDESK_TEST_FAULTS", "").split(",")]
    try:
        return frozenset(Loop(name) for name in names if name)
    except ValueError as exc:
        raise UsageError(f"MAILDESK_TEST_FAULTS: {exc}") from None


def _courier_main(
    settings: Settings, daemon_pid: int, *, once: bool, faults: frozenset[Loop]
) -> int:
    """The forked delivery process: its own database connections, the outbox loop."""
    from maildesk.service.daemon import Daemon
    from maildesk.service.wiring import desk_for

    db = delivery_db(settings)
    daemon = Daemon(settings, db, desk_for(settings), once=once, faults=faults)
    return asyncio.run(daemon.deliver(supervised_by=daemon_pid))


def delivery_db(settings: Settings) -> Database:
    # a lost delivery outcome only sends that mail again: no flush to disk per commit
    return Database(settings.database_url, flush_each_commit=False)


def courier_argv(args: argparse.Namespace, settings: Settings) -> tuple[str, ...]:
    """How ``run`` starts its delivery process: this maildesk, this config, this log format."""
    argv = [sys.executable, "-m", "maildesk", "--config", str(settings.path)]
    if args.log_format:
        argv += ["--log-format", args.log_format]
    argv += ["deliver", "--supervised-by", str(os.getpid())]
    if args.once:
        argv.append("--once")
    return tuple(argv)


def cmd_deliver(args: argparse.Namespace) -> int:
    from maildesk.service.daemon import Daemon
    from maildesk.service.wiring import desk_for

    settings = load_settings(args)
    db = delivery_db(settings)
    if args.supervised_by is None:
        db.upgrade()
    daemon = Daemon(settings, db, desk_for(settings), once=args.once, faults=injected_faults())
    code = asyncio.run(daemon.deliver(supervised_by=args.supervised_by))
    for line in daemon.unreachable:
        print(f"maildesk: {line}", file=sys.stderr)
    db.dispose()
    return code


def cmd_ingest(args: argparse.Namespace) -> int:
    """One message from stdin, for an MTA's pipe: returns 0 once it is handled (committed as
    a ticket, a follow-up, ignored or quarantined) and raises for anything else, which
    ``maildesk.ui.pipe`` turns into exit 75 and one line."""
    from maildesk.act import ingest
    from maildesk.ui import pipe

    settings = load_settings(args)
    mailbox = settings.ingest_mailbox(args.mailbox).name
    desk = checked_desk(settings)
    try:
        # one message: its worker is a fork of this process, which has no thread yet
        desk.parser.start(ingest.budget_of(desk), fork=True)
        limit = settings.limits.max_message_bytes
        raw = sys.stdin.buffer.read(limit + 1)
        db = open_db(settings)
        pipe.proceed()
        if len(raw) > limit:
            outcome = too_large(db, desk, mailbox, raw, sys.stdin.buffer)
        else:
            outcome = ingest.process(db, desk, ingest.Source(mailbox), raw)
        pipe.handled()
    finally:
        desk.close()
    count_piped(db, mailbox, outcome)
    ref = settings.desk.ref(outcome.ticket_id) if outcome.ticket_id else "-"
    print(f"{outcome.kind} {ref}" + (f" ({outcome.reason})" if outcome.reason else ""))
    return 0


def too_large(db: Database, desk: Any, mailbox: str, start: bytes, rest: BinaryIO) -> Any:
    """A piped message over ``max_message_bytes`` (``start`` is its first limit + 1 bytes):
    kept whole on disk, read in pieces, so ``quarantine replay`` takes it in once the limit is
    raised; quarantined from its header block, its sender and the admin told."""
    from maildesk.act import ingest, oversize

    path, digest, size = desk.store.put_raw_stream(start, rest)
    head = start[: ingest.limits_of(desk).max_header_bytes]
    del start
    kept = ingest.StoredMail(path, digest)
    return oversize.quarantine(db, desk, ingest.Source(mailbox), head, size, kept=kept)


def count_piped(db: Database, mailbox: str, outcome: Any) -> None:
    """One more message for the daemon's ``/metrics`` (``PipeCount``); the message is handled
    already, so a failure here is only logged."""
    from maildesk.service.metrics import reason_label

    try:
        with db.transaction() as session:
            add_pipe_count(session, mailbox, outcome.kind, reason_label(outcome))
    except DatabaseError as exc:
        log.warning("%s: <%s> not counted for /metrics: %s", mailbox, outcome.message_id, exc)


def cmd_tickets_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        query = select(Ticket).order_by(Ticket.id)
        if args.status:
            query = query.where(Ticket.status == args.status)
        if args.limit:
            query = query.limit(args.limit)
        tickets = [ticket_summary(t, settings.desk.ref_format) for t in session.scalars(query)]
    if args.json:
        print(json.dumps(tickets, indent=2, ensure_ascii=False))
    else:
        rows = [
            (
                t["ref"],
                t["status"],
                t["priority"],
                t["team"],
                t["assignee"],
                t["requester"],
                t["subject"],
            )
            for t in tickets
        ]
        print(
            table(rows, ("REF", "STATUS", "PRIORITY", "TEAM", "ASSIGNEE", "REQUESTER", "SUBJECT"))
        )
    return 0


def find_ticket(session: Any, settings: Settings, ref: str) -> Ticket | None:
    import re

    match = re.search(r"\d+", ref)
    return session.get(Ticket, int(match.group())) if match else None


def cmd_tickets_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        ticket = find_ticket(session, settings, args.ref)
        if ticket is None:
            print(f"maildesk: no ticket {args.ref}", file=sys.stderr)
            return 1
        data = ticket_detail(ticket, settings.desk.ref_format)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    print(render_ticket(data))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    open_db(settings, upgrade=True)
    print("database is up to date")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from maildesk.act import outbox
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
            f"ok   smtp {settings.smtp.host}:{settings.smtp.port}: {asyncio.run(outbox.probe(settings.smtp))}"
        )
    except outbox.SmtpError as exc:
        print(f"FAIL smtp: {exc}")
        failed += 1
    sys.stdout.flush()
    if args.no_probe:
        return 1 if failed or broken else 0
    if failed:
        print("warn probe not sent: it needs the database, every mailbox and the SMTP server")
        return 1
    if settings.watched != settings.mailboxes:
        db.upgrade()  # a probe that comes through a pipe is looked for in the ledger
    result = roundtrip.run(settings, db, wait=args.probe_wait)
    print(f"ok   probe {result.line}" if result.ok else f"FAIL probe: {result.line}")
    return 0 if result.ok and not broken else 1


def check_templates(settings: Settings) -> int:
    """check-config's lines for the templates; returns how many failed."""
    from maildesk.act import samples
    from maildesk.service.wiring import desk_for

    checked = samples.check(desk_for(settings))
    templates_dir = settings.desk.templates_dir
    where = f", {checked.overridden} from {templates_dir}" if templates_dir else ""
    if not checked.problems:
        print(f"ok   templates: {checked.mails} mails rendered with sample data{where}")
    for note in checked.notes:
        print(f"warn template {note}")
    for problem in checked.problems:
        print(f"FAIL template {problem}")
    return len(checked.problems)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        rows = session.scalars(
            select(Ledger).where(Ledger.outcome == "quarantined").order_by(Ledger.id)
        )
        items = [
            {
                "id": r.id,
                "mailbox": r.mailbox,
                "uid": r.uid,
                "from": r.sender,
                "subject": r.subject,
                "error": r.reason,
                "at": iso(r.at),
            }
            for r in rows
        ]
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        print(
            table(
                [(i["id"], i["mailbox"], i["uid"], i["at"], i["from"], i["error"]) for i in items],
                ("ID", "MAILBOX", "UID", "AT", "FROM", "ERROR"),
            )
        )
    return 0


def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    from maildesk.act import ingest

    settings = load_settings(args)
    desk = checked_desk(settings)
    db = open_db(settings)
    with db.transaction() as session:
        query = select(Ledger).where(Ledger.outcome == "quarantined")
        if not args.all:
            if args.id is None:
                print("maildesk: give a quarantine ID or --all", file=sys.stderr)
                return 2
            query = query.where(Ledger.id == args.id)
        rows = [(r.id, r.mailbox, r.uidvalidity, r.uid, r.raw_path) for r in session.scalars(query)]
    if not rows and not args.all:
        print(f"maildesk: no quarantined message {args.id}", file=sys.stderr)
        return 1
    try:
        # its worker is a fork of this process, which has no thread yet: no interpreter to start
        desk.parser.start(ingest.budget_of(desk), fork=True)
        failed = _replay(settings, db, desk, rows)
        if rows:
            asyncio.run(_deliver_now(settings, db, desk))
    finally:
        desk.close()
    return 1 if failed else 0


def _replay(settings: Settings, db: Database, desk: Any, rows: list[Any]) -> int:
    """Handle each quarantined message of ``rows`` again; how many are still quarantined."""
    from maildesk.act import ingest

    failed = 0
    for ledger_id, mailbox, uidvalidity, uid, raw_path in rows:
        if raw_path is None:
            how = (
                "raise [limits] max_message_bytes and move it back to the inbox folder"
                if uid is not None
                else "it came through `maildesk ingest`: its sender must send it again"
            )
            print(f"{ledger_id}: raw message not kept (too large to take); {how}")
            failed += 1
            continue
        with db.transaction() as session:
            raw = ingest.read_raw(session, desk, raw_path)
        outcome = ingest.process(
            db, desk, ingest.Source(mailbox, uidvalidity, uid), raw, replay=ledger_id
        )
        ref = settings.desk.ref(outcome.ticket_id) if outcome.ticket_id else "-"
        print(f"{ledger_id}: {outcome.kind} {ref} {outcome.reason}".rstrip())
        failed += outcome.quarantined
    return failed


async def _deliver_now(settings: Settings, db: Database, desk: Any) -> None:
    from maildesk.service.daemon import Daemon

    daemon = Daemon(settings, db, desk, once=True)
    await daemon.deliver()


def cmd_demo(args: argparse.Namespace) -> int:
    from maildesk.demo import tour as demo

    return demo.main(keep=args.keep)


class UsageError(Exception):
    """A command-line value that makes no sense: one line, exit code 2."""


def window(since: str) -> tuple[datetime, datetime]:
    """``--since`` ("7d", "2026-11-01") as (since, now)."""
    from datetime import UTC

    from maildesk.ui import stats

    now = datetime.now(UTC)
    try:
        return stats.parse_since(since, now), now
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_stats(args: argparse.Namespace) -> int:
    from maildesk.ui import stats

    settings = load_settings(args)
    since, now = window(args.since)
    db = open_db(settings)
    with db.transaction() as session:
        figures = stats.compute(session, since, now, [t.name for t in settings.teams])
    if args.json:
        print(json.dumps(figures.as_json(), indent=2, ensure_ascii=False))
        return 0
    print(render_stats(figures))
    return 0


def cmd_agents_list(args: argparse.Namespace) -> int:
    from maildesk.ui import stats

    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        assigned = stats.assigned_counts(session)
    agents: list[dict[str, Any]] = [
        {
            "email": a.email,
            "name": a.name,
            "teams": list(a.teams),
            "open_assigned": assigned.get(a.email, 0),
        }
        for a in settings.agents
    ]
    if args.json:
        print(json.dumps(agents, indent=2, ensure_ascii=False))
    else:
        rows = [(a["email"], a["name"], a["open_assigned"], ", ".join(a["teams"])) for a in agents]
        print(table(rows, ("EMAIL", "NAME", "OPEN ASSIGNED", "TEAMS")))
    return 0


def cmd_teams_list(args: argparse.Namespace) -> int:
    from maildesk.ui import stats

    settings = load_settings(args)
    db = open_db(settings)
    with db.transaction() as session:
        counts = stats.open_counts(session)
    teams: list[dict[str, Any]] = [
        {
            "name": t.name,
            "agents": [a.email for a in settings.team_agents(t.name)],
            "mailboxes": [m.name for m in settings.mailboxes if m.team == t.name],
            "open_tickets": counts.get(t.name, 0),
        }
        for t in settings.teams
    ]
    if args.json:
        print(json.dumps(teams, indent=2, ensure_ascii=False))
    else:
        rows = [
            (t["name"], t["open_tickets"], ", ".join(t["mailboxes"]) or "-", ", ".join(t["agents"]))
            for t in teams
        ]
        print(table(rows, ("TEAM", "OPEN", "MAILBOXES", "AGENTS")))
    return 0


def cmd_canned_list(args: argparse.Namespace) -> int:
    from maildesk.mail.rendering import Templates

    settings = load_settings(args)
    templates = Templates(settings.desk.templates_dir)
    prefix, suffix = "canned/", ".txt.j2"
    items = []
    for name in templates.names(prefix):
        if name.endswith(suffix):
            source = templates.text.loader.get_source(templates.text, name)[0]  # type: ignore[union-attr]
            lines = [line.strip() for line in source.splitlines() if line.strip()]
            items.append(
                {"name": name[len(prefix) : -len(suffix)], "first_line": lines[0] if lines else ""}
            )
    if args.json:
        print(json.dumps(items, indent=2, ensure_ascii=False))
    else:
        print(table([(i["name"], i["first_line"]) for i in items], ("NAME", "FIRST LINE")))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from maildesk.ui import report

    settings = load_settings(args)
    since, now = window(args.since)
    db = open_db(settings)
    with db.transaction() as session:
        figures = report.build(session, settings, since, now)
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as handle:
                handle.write(report.render_html(figures))
        except OSError as exc:
            print(f"maildesk: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"report written to {args.html}")
    if args.json or not args.html:
        print(json.dumps(figures.as_json(), indent=2, ensure_ascii=False))
    return 0


# --------------------------------------------------------------------------- argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maildesk", description="An email-driven help desk.")
    parser.add_argument(
        "--config", help="config file (default: $MAILDESK_CONFIG, else ./maildesk.toml)"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="log line format (default from [log] format)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the daemon: watch the mailboxes, send the outbox")
    run.add_argument(
        "--once", action="store_true", help="handle what is waiting, deliver what is due, exit"
    )
    run.set_defaults(func=cmd_run)

    deliver = sub.add_parser(
        "deliver", help="send the mail waiting in the outbox (run does this by itself)"
    )
    deliver.add_argument("--once", action="store_true", help="send what is due now, then exit")
    # run's own delivery process: woken through stdin, reports on stdout, dies with run
    deliver.add_argument("--supervised-by", type=int, metavar="PID", help=argparse.SUPPRESS)
    deliver.set_defaults(func=cmd_deliver)

    ingest = sub.add_parser("ingest", help="handle one message from stdin (for an MTA pipe)")
    ingest.add_argument(
        "--mailbox",
        help="the mailbox it came to: its team gets new tickets (default: the first mailbox "
        'with transport = "pipe", else the first mailbox)',
    )
    ingest.set_defaults(func=cmd_ingest)

    tickets = sub.add_parser("tickets", help="list and show tickets").add_subparsers(
        dest="sub", required=True
    )
    tlist = tickets.add_parser("list", help="list tickets")
    tlist.add_argument("--status", choices=[s.value for s in Status])
    tlist.add_argument("--limit", type=int)
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_tickets_list)
    tshow = tickets.add_parser("show", help="one ticket with its messages and timeline")
    tshow.add_argument("ref", help="the ref ([#12]) or the bare number")
    tshow.add_argument("--json", action="store_true")
    tshow.set_defaults(func=cmd_tickets_show)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="sub", required=True)
    db.add_parser("upgrade", help="apply database migrations").set_defaults(func=cmd_db_upgrade)

    check = sub.add_parser(
        "check-config",
        help="validate the config, log in to every server, send a probe through the desk",
    )
    check.add_argument(
        "--no-probe",
        action="store_true",
        help="skip the probe mail to support+probe-...@ (logins only)",
    )
    check.add_argument(
        "--probe-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the probe to arrive (default: 60)",
    )
    check.set_defaults(func=cmd_check_config)

    quarantine = sub.add_parser("quarantine", help="mail that could not be handled").add_subparsers(
        dest="sub", required=True
    )
    qlist = quarantine.add_parser("list", help="list quarantined messages")
    qlist.add_argument("--json", action="store_true")
    qlist.set_defaults(func=cmd_quarantine_list)
    qreplay = quarantine.add_parser("replay", help="handle quarantined messages again")
    qreplay.add_argument("id", nargs="?", type=int)
    qreplay.add_argument("--all", action="store_true")
    qreplay.set_defaults(func=cmd_quarantine_replay)

    demo = sub.add_parser(
        "demo", help="a throwaway mail world on loopback, with one ticket walked through"
    )
    demo.add_argument("--keep", action="store_true", help="keep it running and print the logins")
    demo.set_defaults(func=cmd_demo)

    stats = sub.add_parser("stats", help="tickets, response times and satisfaction over a window")
    stats.add_argument(
        "--since", help='a duration back from now ("7d", "12h", "2w") or a date (default: 30d)'
    )
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    agents = sub.add_parser("agents", help="the agents in the config").add_subparsers(
        dest="sub", required=True
    )
    alist = agents.add_parser("list", help="agents with their teams and open assigned tickets")
    alist.add_argument("--json", action="store_true")
    alist.set_defaults(func=cmd_agents_list)

    teams = sub.add_parser("teams", help="the teams in the config").add_subparsers(
        dest="sub", required=True
    )
    team_list = teams.add_parser("list", help="teams with their agents and open tickets")
    team_list.add_argument("--json", action="store_true")
    team_list.set_defaults(func=cmd_teams_list)

    canned = sub.add_parser("canned", help="canned replies (#reply <name>)").add_subparsers(
        dest="sub", required=True
    )
    clist = canned.add_parser("list", help="the canned replies agents can send")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(func=cmd_canned_list)

    rep = sub.add_parser("report", help="charts and numbers over a window: HTML page or JSON")
    rep.add_argument("--html", metavar="PATH", help="write one self-contained HTML page here")
    rep.add_argument(
        "--since", help='a duration back from now ("14d", "2w") or a date (default: 30d)'
    )
    rep.add_argument("--json", action="store_true", help="print the numbers as JSON")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # first: nothing this process or its delivery process writes is readable by others
    private.set_umask()
    from maildesk.ui import pipe

    if not pipe.active() and pipe.is_ingest(sys.argv[1:] if argv is None else argv):
        return pipe.main(sys.argv[1:] if argv is None else argv, main)  # exit 0 or 75
    args = build_parser().parse_args(argv)
    if args.func is cmd_ingest:
        return int(args.func(args))  # maildesk.ui.pipe turns what it raises into exit 75
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"maildesk: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except UsageError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return 2
    except DatabaseError as exc:
        print(f"maildesk: database unavailable: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
