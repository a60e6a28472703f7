"""Prometheus metrics and the health check, served over HTTP on ``[metrics] listen``.

Beside the flow: the daemon reports what happened (each committed message with its outcome and
arrival time, each delivery); mail that came through an MTA's pipe was handled by another
process (``maildesk ingest``), which counts it in the database (``PipeCount``), and what those
counts grew by is added before each scrape; everything else (tickets by status, the outbox, mailbox health)
is read when Prometheus scrapes, so the numbers never drift from the database. ``/healthz``
answers 200 while every IMAP mailbox was checked within 3 x its ``poll_seconds``, every loop of the
daemon (each mailbox's, the delivery loop, the timers) made progress within the watchdog's
interval and the database answers (and the daemon is in no database outage), 503 with each
mailbox's state, each stuck loop and the database's state otherwise: names and states only,
never a host, a port or an error text (whoever reaches the port reads them; the log has the
details). The only module that imports prometheus_client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from maildesk.database import Database
from maildesk.desk.routing import Ignored
from maildesk.models import DatabaseError, Outbox, OutboxStatus, PipeCount, Status, Ticket

log = logging.getLogger("maildesk.metrics")  # the logs name the job, not the module path

STALE_AFTER_POLLS = 3
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600, 4 * 3600)


class Ingested(Protocol):
    """What the metrics read of what became of a message (``ingest.Outcome``)."""

    @property
    def kind(self) -> str: ...
    @property
    def ignored(self) -> Ignored | None: ...


def reason_label(outcome: Ingested) -> str:
    """The ``reason`` label of an outcome: why it was ignored (``routing.Ignored``), else empty."""
    if outcome.kind != "ignored":
        return ""
    return str(outcome.ignored or Ignored.OTHER)


class Health(Protocol):
    """What the metrics read of a dependency's health (``outages.Dependency``)."""

    @property
    def failures(self) -> int: ...
    @property
    def last_ok(self) -> datetime | None: ...
    @property
    def down_since(self) -> datetime | None: ...


class Progress(Protocol):
    """A loop's progress (``watchdog.Pulse``)."""

    @property
    def name(self) -> str: ...
    def stalled(self, limit: float) -> float | None: ...


class Watched(Protocol):
    """What the metrics read of a mailbox's settings."""

    @property
    def name(self) -> str: ...
    @property
    def poll_seconds(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """What the metrics read of the daemon: its watched mailboxes, the health of its
    dependencies (``mailbox:NAME`` and ``database`` entries), the mailboxes fed by ``maildesk
    ingest`` (``piped``) and its loops, each named in ``/healthz`` once it made no progress for
    ``stalled_after`` seconds. ``database_failed`` is told each database error met here (the
    daemon logs and handles the outage); without it they are logged once per outage here."""

    mailboxes: Sequence[Watched]
    health: Mapping[str, Health]
    piped: Sequence[str] = ()
    loops: Callable[[], Iterable[Progress]] = tuple
    stalled_after: float = 300.0
    database_failed: Callable[[str], None] | None = None


class Metrics:
    """The daemon's counters and the collectors read at scrape time."""

    def __init__(self, db: Database, sources: Sources, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.mailboxes = tuple(sources.mailboxes)
        self.piped = tuple(sources.piped)  # the names of the mailboxes fed by ``maildesk ingest``
        self.health = sources.health
        self.clock = clock
        self.database_failed = sources.database_failed
        self.loops = sources.loops
        self.stalled_after = sources.stalled_after
        self.started = clock()
        self._database_down = False
        self.registry = CollectorRegistry()
        self._counters()
        for box in self.mailboxes:  # so that rates exist before the first message
            self._labels(box.name)
            self.latency.labels(box.name)
        for name in self.piped:
            self._labels(name)
        # what ``maildesk ingest`` counted before this start: counted from here on
        self._piped_seen: dict[tuple[str, str, str], int] | None = None
        self._piped_lock = threading.Lock()  # two scrapes at once must not count twice
        self.count_piped()
        self.registry.register(_ScrapeCollector(self))

    def _counters(self) -> None:
        self.ingested = Counter(
            "maildesk_messages_ingested",
            "Messages taken from a mailbox, by what became of them.",
            ("mailbox", "outcome", "reason"),
            registry=self.registry,
        )
        self.sent = Counter(
            "maildesk_mails_sent",
            "Mails accepted by the SMTP server.",
            registry=self.registry,
        )
        self.delivery_failures = Counter(
            "maildesk_mail_delivery_failures",
            "Delivery attempts that failed, by whether they will be retried.",
            ("kind",),
            registry=self.registry,
        )
        self.latency = Histogram(
            "maildesk_ingest_latency_seconds",
            "From a message's arrival in the mailbox to its ticket being committed.",
            ("mailbox",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _labels(self, mailbox: str) -> None:
        for outcome in ("new_ticket", "follow_up", "bounce", "duplicate", "quarantined"):
            self.ingested.labels(mailbox, outcome, "")

    # ------------------------------------------------------------------ what the daemon reports

    def message(self, mailbox: str, outcome: Ingested, arrived: float | None) -> None:
        """One message committed (or quarantined) at this moment; ``arrived`` is unix time."""
        self.ingested.labels(mailbox, outcome.kind, reason_label(outcome)).inc()
        if arrived is not None and outcome.kind != "duplicate":
            self.latency.labels(mailbox).observe(max(0.0, time.time() - arrived))

    def count_piped(self) -> None:
        """Add what ``maildesk ingest`` (another process) handled since the last look to
        ``maildesk_messages_ingested_total``: it counts each message in ``PipeCount``, and
        what grew since is counted here, so the counter starts at this start as the
        in-process ones do. Read before each scrape."""
        known = {box.name for box in self.mailboxes} | set(self.piped)
        with self._piped_lock:
            try:
                with self.db.transaction() as session:
                    rows = session.execute(_PIPE_COUNTS).all()
            except DatabaseError as exc:
                log.warning("metrics: cannot read the pipe counts: %s", exc)
                return
            counts = {(box, kind, why): int(n) for box, kind, why, n in rows if box in known}
            if self._piped_seen is not None:
                for key, count in counts.items():
                    grown = count - self._piped_seen.get(key, 0)
                    if grown > 0:
                        self.ingested.labels(*key).inc(grown)
            self._piped_seen = counts

    def deliveries(self, outcomes: Iterable[str]) -> None:
        """Delivery attempts: ``sent``, ``retry`` or ``failed`` each."""
        for outcome in outcomes:
            if outcome == "sent":
                self.sent.inc()
            else:
                self.delivery_failures.labels(outcome).inc()

    # ------------------------------------------------------------------ health

    def states(self) -> tuple[bool, list[str]]:
        """Healthy or not, and one line per mailbox and for the database with its state."""
        now = self.clock()
        states = [(f"mailbox {box.name}", self._mailbox_state(box, now)) for box in self.mailboxes]
        for loop in self.loops():  # only those stuck: a loop has no state worth a line else
            age = loop.stalled(self.stalled_after)
            if age is not None:
                since = now - timedelta(seconds=age)
                states.append((f"loop {loop.name}", f"no progress since {stamp(since)}"))
        states.append(("database", self._database_state()))
        healthy = all(state == "ok" for _, state in states)
        return healthy, [f"{name}: {state}" for name, state in states]

    def _mailbox_state(self, box: Watched, now: datetime) -> str:
        """ok, down since (failing), or not checked since (stuck, or never checked)."""
        health = self.health.get(f"mailbox:{box.name}")
        last = health.last_ok if health is not None else None
        if (now - (last or self.started)).total_seconds() <= STALE_AFTER_POLLS * box.poll_seconds:
            return "ok"
        if health is not None and health.failures and health.down_since is not None:
            return f"down since {stamp(health.down_since)}"
        return f"not checked since {stamp(last or self.started)}"

    def _database_state(self) -> str:
        """down since (an outage the daemon is in), ok or down (a ping, between outages)."""
        health = self.health.get("database")
        if health is not None and health.failures and health.down_since is not None:
            return f"down since {stamp(health.down_since)}"
        return "ok" if self._database_answers() else "down"

    def _database_answers(self) -> bool:
        """Ping; the error is logged once per outage, never served."""
        try:
            self.db.ping()
        except DatabaseError as exc:
            if self.database_failed is not None:
                self.database_failed(str(exc))
            elif not self._database_down:
                log.warning("health check: the database does not answer: %s", exc)
            self._database_down = True
            return False
        if self._database_down:
            log.info("health check: the database answers again")
        self._database_down = False
        return True

    # ------------------------------------------------------------------ serving

    def serve(
        self,
        listen: str,
        *,
        on_failure: Callable[[BaseException], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> MetricsServer:
        """Serve on ``listen`` in a thread; ``on_failure`` is told if that thread dies (in
        it), ``tick`` is called on each turn of its loop (every 0.1 s)."""
        host, _, port = listen.rpartition(":")
        return MetricsServer(self, host.strip("[]") or "127.0.0.1", int(port), on_failure, tick)


_PIPE_COUNTS = select(PipeCount.mailbox, PipeCount.outcome, PipeCount.reason, PipeCount.count)


class _ScrapeCollector(Collector):
    """Gauges computed at scrape time: from the database and from the daemon's health."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        up = GaugeMetricFamily(
            "maildesk_mailbox_up",
            "1 while the mailbox connection works, 0 while it fails.",
            labels=("mailbox",),
        )
        checked = GaugeMetricFamily(
            "maildesk_mailbox_last_check_timestamp_seconds",
            "When the mailbox was last checked successfully (unix time).",
            labels=("mailbox",),
        )
        for box in m.mailboxes:
            health = m.health.get(f"mailbox:{box.name}")
            ok = health is not None and health.last_ok is not None and health.failures == 0
            up.add_metric([box.name], 1.0 if ok else 0.0)
            if health is not None and health.last_ok is not None:
                checked.add_metric([box.name], health.last_ok.timestamp())
        yield up
        yield checked
        yield from self._database()

    def _database(self) -> Iterable[Metric]:
        try:
            with self.metrics.db.transaction() as session:
                by_status = dict(
                    session.execute(
                        select(Ticket.status, func.count()).group_by(Ticket.status)
                    ).all()
                )
                outbox = dict(
                    session.execute(
                        select(Outbox.status, func.count())
                        .where(Outbox.status.in_((OutboxStatus.PENDING, OutboxStatus.FAILED)))
                        .group_by(Outbox.status)
                    ).all()
                )
        except DatabaseError as exc:
            if self.metrics.database_failed is not None:
                self.metrics.database_failed(str(exc))
            else:
                log.warning("metrics: database unavailable: %s", exc)
            return
        tickets = GaugeMetricFamily("maildesk_tickets", "Tickets by status.", labels=("status",))
        for status in Status:
            tickets.add_metric([status.value], float(by_status.get(status.value, 0)))
        yield tickets
        yield GaugeMetricFamily(
            "maildesk_outbox_pending",
            "Mails waiting to be sent (including those waiting to retry).",
            value=float(outbox.get(OutboxStatus.PENDING.value, 0)),
        )
        yield GaugeMetricFamily(
            "maildesk_outbox_failed",
            "Mails given up on (permanent failure or retried too long).",
            value=float(outbox.get(OutboxStatus.FAILED.value, 0)),
        )


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a small threaded HTTP server in a background thread."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        on_failure: Callable[[BaseException], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.metrics = metrics
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        self.server = _Server((host, port), handler)
        self.server.daemon_threads = True
        self.server.tick = tick
        self.on_failure = on_failure
        self.thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self.thread.start()
        log.info("serving /metrics and /healthz on %s:%d", host, self.port)

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.1)
        except BaseException as exc:  # noqa: BLE001 - a dead server must not pass unnoticed
            if self.on_failure is None:
                raise
            self.on_failure(exc)

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


# Connections served at once, each in a thread of the daemon's; more are closed at once (a
# scraper tries again). A connection that sends nothing for ``REQUEST_SECONDS`` is closed: an
# idle one held its thread for as long as its client liked.
MAX_CONNECTIONS = 16
REQUEST_SECONDS = 5.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # connections the kernel holds until they are taken (or closed)
    tick: Callable[[], None] | None = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def service_actions(self) -> None:  # socketserver's hook, called on each turn of its loop
        if self.tick is not None:
            self.tick()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    server_version = "maildesk"
    timeout = REQUEST_SECONDS

    def do_GET(self) -> None:  # noqa: N802 - http.server's hook name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.metrics.count_piped()
            self._answer(200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry))
        elif path == "/healthz":
            healthy, lines = self.metrics.states()
            body = "ok" if healthy else "\n".join(lines)
            self._answer(200 if healthy else 503, "text/plain; charset=utf-8", body.encode())
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        if not body.endswith(b"\n"):
            body += b"\n"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        # the request line is whatever a client sent: no escape sequence or line break of
        # theirs reaches a terminal or a log file raw
        log.debug("metrics: %s", escape_controls(format % args))


CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def escape_controls(text: str) -> str:
    """C0, DEL and C1 control characters as ``\\xNN`` (http.server reads the request line
    as Latin-1, so every byte is one character)."""
    return text.translate(CONTROLS)


def stamp(moment: datetime) -> str:
    """A moment as ISO 8601 UTC to the second: ``2026-11-26T09:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
