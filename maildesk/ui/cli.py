"""argv to commands: the ``maildesk`` command line, human tables and ``--json``.

Opens the transactions the commands need (with ``ingest`` for mail), turns known failures into
one line and an exit code: 78 for a bad config, 75 for a transient failure an MTA should retry,
1 for an unreachable mailbox in ``run --once``, 70 when a loop of ``run`` failed on an error no
outage explains (for systemd to start it afresh). Every command starts with umask 077 and logs
the config's warnings (``check-config`` prints them as ``warn`` lines instead).

The top of maildesk: ``build_parser`` is the table of verbs. The daemon's, delivery's and the
pipe's verbs, stats, report and demo are here; the listing verbs are in ``listing``, the
quarantine's in ``quarantine``, ``check-config`` in ``check``, and what every command does
first (settings, logging, the database) in ``start``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maildesk import private
from maildesk.config import EX_CONFIG, ConfigError
from maildesk.database import Database
from maildesk.models import DatabaseError, PipeCount, Status
from maildesk.ui.check import cmd_check_config
from maildesk.ui.files import cmd_tickets_files, cmd_tickets_search, positive
from maildesk.ui.intake import cmd_intake_blocked, cmd_intake_unblock
from maildesk.ui.listing import (
    cmd_agents_address,
    cmd_agents_list,
    cmd_canned_list,
    cmd_teams_list,
    cmd_tickets_list,
    cmd_tickets_show,
)
from maildesk.ui.quarantine import cmd_quarantine_list, cmd_quarantine_replay
from maildesk.ui.start import (
    UsageError,
    checked_desk,
    load_settings,
    open_db,
    open_desk_db,
    window,
)
from maildesk.ui.views import render_stats

if TYPE_CHECKING:
    from maildesk.service.faults import Faults
    from maildesk.service.timings import Timings

log = logging.getLogger("maildesk")

EX_TEMPFAIL = 75


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from maildesk.service import delivery
    from maildesk.service.daemon import Daemon, Supervision
    from maildesk.service.watchdog import Notifier

    settings, db = open_desk_db(load_settings(args))
    desk = checked_desk(settings)
    faults, timings = hooks = test_hooks()
    # systemd's variables, taken out of the environment before any child process inherits it
    notifier = None if args.once else Notifier.from_environment(os.environ)
    # no database connection is shared across the fork: the pool reopens them when needed
    db.dispose()
    # forked now, while this process has no other thread: it starts without importing again
    courier = delivery.fork(settings, once=args.once, hooks=hooks)
    argv = delivery.courier_argv(settings.path, args.log_format, once=args.once)
    daemon = Daemon(
        settings,
        db,
        desk,
        once=args.once,
        supervision=Supervision(courier, argv),
        notifier=notifier,
        faults=faults,
        timings=timings,
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


def test_hooks() -> tuple[Faults, Timings]:
    """The test hooks of the environment (``faults.from_environment``), read here alone."""
    from maildesk.service import faults

    try:
        return faults.from_environment(os.environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_deliver(args: argparse.Namespace) -> int:
    from maildesk.service import delivery

    settings = load_settings(args)
    code, unreachable = delivery.main(
        settings, once=args.once, supervised_by=args.supervised_by, hooks=test_hooks()
    )
    for line in unreachable:
        print(f"maildesk: {line}", file=sys.stderr)
    return code


def cmd_ingest(args: argparse.Namespace) -> int:
    """One message from stdin, for an MTA's pipe: returns 0 once it is handled (committed as
    a ticket, a follow-up, ignored or quarantined) and raises for anything else, which
    ``maildesk.ui.pipe`` turns into exit 75 and one line."""
    from maildesk.act import ingest
    from maildesk.ui import pipe

    settings = load_settings(args)
    mailbox = settings.ingest_mailbox(args.mailbox).name
    settings, db = open_desk_db(settings)  # the desk's secret, before the desk is made
    db.dispose()  # no connection shared with the parse worker forked next: reopened after
    desk = checked_desk(settings)
    try:
        # one message: its worker is a fork of this process, which has no thread yet
        desk.parser.start(ingest.budget_of(desk), fork=True)
        limit = settings.limits.max_message_bytes
        raw = sys.stdin.buffer.read(limit + 1)
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


def add_pipe_count(session: Session, mailbox: str, outcome: str, reason: str) -> None:
    """Add one to ``PipeCount`` (a row made on first use, by whichever process is first)."""
    values = {"mailbox": mailbox, "outcome": outcome, "reason": reason, "count": 1}
    table = cast(Table, PipeCount.__table__)
    upsert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = upsert(table).values(values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["mailbox", "outcome", "reason"],
            set_={"count": table.c["count"] + 1},
        )
    )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    # the desk's secret too: an older data directory's is moved in now, not at the next start
    open_desk_db(load_settings(args))
    print("database is up to date")
    return 0


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Copy every file of the other backend into ``--to``; progress on stderr, one line of
    summary on stdout. Exit 1 when a file of the source was damaged (the rest is copied)."""
    from maildesk.config import StoreBackend
    from maildesk.service.wiring import store_for
    from maildesk.store import moving

    settings = load_settings(args)
    to = StoreBackend(args.to)
    if to == StoreBackend.DATABASE and settings.database_url.startswith("sqlite"):
        raise UsageError("--to database needs PostgreSQL ([database] url); SQLite is one host")
    open_db(settings).dispose()  # the tables of the database store exist
    other = StoreBackend.DIRECTORY if to == StoreBackend.DATABASE else StoreBackend.DATABASE
    source, destination = store_for(settings, other), store_for(settings, to)

    def progress(moved: moving.Moved, total: int) -> None:
        print(
            f"store migrate: {moved.files}/{total} files, {moved.copied} copied "
            f"({moved.bytes / 1e6:.1f} MB)",
            file=sys.stderr,
            flush=True,
        )

    try:
        moved = moving.migrate(source, destination, progress)
    finally:
        source.close()
        destination.close()
    print(f"store migrate: {moved.summary(to.value)}")
    return 1 if moved.damaged else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from maildesk.demo import tour as demo

    return demo.main(keep=args.keep)


def cmd_stats(args: argparse.Namespace) -> int:
    from maildesk.act import stats

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


def cmd_report(args: argparse.Namespace) -> int:
    from maildesk.act import report

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
    tlist.add_argument("--assignee", metavar="EMAIL|none", help="assigned to EMAIL, or to nobody")
    tlist.add_argument("--team", help="of this team")
    tlist.add_argument("--tag", help="with this tag")
    tlist.add_argument("--requester", metavar="EMAIL", help="asked by this address")
    tlist.add_argument(
        "--since", metavar="DATE", help="opened at or after: ISO date or date and time, UTC"
    )
    tlist.add_argument(
        "--sla-breached", action="store_true", help="not closed, an SLA target missed or due"
    )
    tlist.add_argument("--limit", type=int)
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_tickets_list)
    tshow = tickets.add_parser("show", help="one ticket with its messages and timeline")
    tshow.add_argument("ref", help="the ref ([#12]) or the bare number")
    tshow.add_argument("--json", action="store_true")
    tshow.set_defaults(func=cmd_tickets_show)
    tsearch = tickets.add_parser("search", help="the tickets whose subject or mail holds words")
    tsearch.add_argument("words", nargs="+", help="all of them in one subject or message")
    tsearch.add_argument("--limit", type=positive, default=20, help="at most N (default 20)")
    tsearch.add_argument("--json", action="store_true")
    tsearch.set_defaults(func=cmd_tickets_search)
    tfiles = tickets.add_parser("files", help="write a ticket's attachments (or mail) to files")
    tfiles.add_argument("ref", help="the ref ([#12]) or the bare number")
    tfiles.add_argument("-o", "--output", default=".", metavar="DIR", help="default: here")
    tfiles.add_argument("--raw", action="store_true", help="the messages as .eml, as they came")
    tfiles.set_defaults(func=cmd_tickets_files)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="sub", required=True)
    db.add_parser("upgrade", help="apply database migrations").set_defaults(func=cmd_db_upgrade)

    store = sub.add_parser("store", help="where attachments and large raw mail are kept")
    migrate = store.add_subparsers(dest="sub", required=True).add_parser(
        "migrate",
        help="copy every file of the other backend into this one (resumable; the source keeps "
        "them); then set [store] backend to it and restart",
    )
    migrate.add_argument("--to", required=True, choices=("database", "directory"))
    migrate.set_defaults(func=cmd_store_migrate)

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

    intake = sub.add_parser("intake", help="the block list").add_subparsers(
        dest="sub", required=True
    )
    blocked = intake.add_parser("blocked", help="blocked senders: the config's and #spam block's")
    blocked.add_argument("--json", action="store_true")
    blocked.set_defaults(func=cmd_intake_blocked)
    unblock = intake.add_parser("unblock", help="take an address #spam block blocked off the list")
    unblock.add_argument("address")
    unblock.set_defaults(func=cmd_intake_unblock)

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
    address = agents.add_parser(
        "address",
        help="an agent's personal desk address",
        description="Print the agent's personal desk address: [desk] address with a token of "
        "theirs as its plus part (support+a-<token>@example.com). Mail from the agent to it "
        "proves it is theirs, as a reply token does; it is how mail without a ticket ref "
        "(#new) counts. [[agents]] address_version, raised, makes a new one and revokes the "
        "old. Give it to that agent only.",
    )
    address.add_argument("email", metavar="EMAIL", help="the agent's address, as in [[agents]]")
    address.set_defaults(func=cmd_agents_address)

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
