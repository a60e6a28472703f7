"""Sample data for every mail template, and the check that renders each template with it.

``check-config``, ``run`` (and the other commands that make mail) and a reload render every
template, shipped and overridden, before maildesk uses them: an error names the file and the
line, and stops the start (exit 78) or the reload. The samples are made by the lifecycle rules'
own functions (``notices.customer_mail``, ``notices.agent_mail``, ``notices.canned_context``,
``Mailer.context``) on a sample ticket, with the values each rule passes; where a template has
optional parts, there is a sample with them and one without, as real tickets come. A template
written against the variables README lists renders here as it would in real use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from maildesk.act import (
    agents,
    digest,
    exposure,
    notices,
    oversize,
    queries,
    showing,
    starts,
    stats,
)
from maildesk.act.means import Desk
from maildesk.act.outbox import Mail
from maildesk.config import AgentSettings, ConfigError
from maildesk.desk import auth, commands
from maildesk.mail.rendering import HTML, TEXT, TemplateError, TemplateProblem
from maildesk.models import Participant, Status, Tag, Ticket

REQUESTER = "jane.doe@example.org"
COLLEAGUE = "sam.lee@example.org"  # on the Cc of the worked sample
CUSTOMER_TEXT = """\
Hello,

the printer on the 3rd floor jams on every page since this morning. I attached a photo of the
error on its display.

Jane"""
AGENT_TEXT = """\
Hello Jane,

thank you for the photo. Please open the front cover, take out the toner cartridge and check
for a torn sheet behind it; then tell us whether it still jams."""


# the files of a message as a notice lists them: one attached, one not
SAMPLE_FILES = [
    {"filename": "error-on-display.jpg", "size": 48_213, "attached": True, "note": ""},
    {
        "filename": "printer-log.zip",
        "size": 14_200_000,
        "attached": False,
        "note": "not attached: a notice carries 10.0 MB of files in all (notice_attachment_bytes)",
    },
]


@dataclass(frozen=True, slots=True)
class Checked:
    """What the check found: the mails rendered, the problems (each stops a start or reload),
    and notes for check-config (overrides of one half only, files no mail uses)."""

    mails: int
    overridden: int
    problems: tuple[TemplateProblem, ...]
    notes: tuple[str, ...]


def check(desk: Desk) -> Checked:
    """Render every mail's templates (the overridden and the shipped ones) with the samples."""
    templates = desk.mailer.templates
    samples = contexts(desk)
    problems: list[TemplateProblem] = []
    names = templates.mails()
    for name in names:
        variants = samples.get("canned" if name.startswith("canned/") else name)
        if variants is None:
            problems.append(TemplateProblem(name, None, "maildesk has no sample data for it"))
            continue
        renders = [templates.render]
        if templates.overridden(name) and templates.shipped_has(name):
            renders.append(templates.render_shipped)  # the fallback must work too
        for render in renders:
            for context in variants:
                try:
                    render(name, context)
                except TemplateError as exc:
                    problems.append(exc.problem)
                    break
    overridden = sum(templates.overridden(n) for n in names)
    return Checked(len(names), overridden, tuple(problems), tuple(notes(desk)))


def require(desk: Desk) -> None:
    """``check``, raising ``ConfigError`` (one line) when a template fails."""
    problems = check(desk).problems
    if problems:
        more = f" (and {len(problems) - 1} more: see maildesk check-config)"
        raise ConfigError(f"template {problems[0]}" + (more if len(problems) > 1 else ""))


def notes(desk: Desk) -> list[str]:
    templates = desk.mailer.templates
    lines = []
    for name, half in templates.one_half():
        if half == TEXT:
            lines.append(
                f"{name}{TEXT} is overridden alone: {name} mail goes out as text only, without "
                f"the shipped {name}{HTML} (add your own {name}{HTML} for an HTML part)"
            )
        else:
            lines.append(
                f"{name}{HTML} is overridden alone: {name} mail goes out as HTML only, without "
                f"the shipped {name}{TEXT} (its subject, unless {name}{HTML} sets one, is "
                f"the shipped {name}{TEXT}'s)"
            )
    for stray in templates.strays():
        lines.append(
            f"{stray} in templates_dir is not the template of any mail maildesk sends "
            "(a canned reply is canned/<name>.txt.j2); it is used only where another "
            "template includes it"
        )
    return lines


# --------------------------------------------------------------------------- the samples


def sample_ticket(
    desk: Desk,
    status: Status = Status.OPEN,
    *,
    assignee: str | None = None,
    tags: tuple[str, ...] = (),
    team: str | None = None,
    cc: tuple[str, ...] = (),
) -> Ticket:
    """A ticket as the rules hand it to a template (never added to a session)."""
    now = desk.clock()
    copied = [Participant(address=a, added_at=now, added_by=REQUESTER) for a in cc]
    return Ticket(
        id=1042,
        subject="Printer on the 3rd floor jams on every page",
        requester=REQUESTER,
        status=status,
        priority="high",
        team=team or desk.settings.teams[0].name,
        assignee=assignee,
        mailbox=desk.settings.mailboxes[0].name,
        created_at=now - timedelta(hours=2),
        updated_at=now,
        status_since=now,
        tags=[Tag(tag=t) for t in tags],
        participants=copied,
        messages=[],
        events=[],
    )


class _Maker:
    """The sample tickets, and contexts made as the lifecycle rules make theirs."""

    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        settings = desk.settings
        teams = [t.name for t in settings.teams]
        self.agent = (
            settings.agents[0]
            if settings.agents
            else AgentSettings("alice@example.com", "Alice", (teams[0],))
        )
        self.other_team = teams[1] if len(teams) > 1 else teams[0]
        email = self.agent.email
        self.new = sample_ticket(desk)
        self.worked = sample_ticket(
            desk, assignee=email, tags=("hardware", "printer"), cc=(COLLEAGUE,)
        )
        self.pending = sample_ticket(desk, Status.PENDING, assignee=email, tags=("printer",))
        self.closed = sample_ticket(desk, Status.CLOSED, assignee=email, tags=("printer",))
        self.escalated = sample_ticket(
            desk, Status.ESCALATED, tags=("printer",), team=self.other_team
        )

    def customer(self, ticket: Ticket, template: str, **extra: Any) -> dict[str, Any]:
        mail = notices.customer_mail(self.desk, ticket, template, template, **extra)
        return self.desk.mailer.context(mail)

    def receipt(self, ticket: Ticket, receipt: agents.Receipt) -> dict[str, Any]:
        """A receipt's context, made by the rule that makes receipts."""
        mail = agents.receipt_mail(self.desk, ticket, self.agent, self.desk.clock(), receipt)
        return self.desk.mailer.context(mail)

    def notice(self, ticket: Ticket, template: str, **extra: Any) -> dict[str, Any]:
        now = self.desk.clock()
        mail = notices.agent_mail(self.desk, ticket, self.agent, "notice", template, now, **extra)
        return self.desk.mailer.context(mail)


def _bounce(
    make: _Maker, *, requester_bounced: bool = False, participant_bounced: bool = False
) -> dict[str, Any]:
    """What ``bounces`` tells the owner of a ticket about a mail that did not arrive."""
    return {
        "mail": {
            "kind": "reply" if participant_bounced else "acknowledgment",
            "subject": "[#1042] Printer on the 3rd floor jams on every page",
            "date": "Thu 26 Nov 2026 09:00 UTC",
        },
        "address": "dave.doe@example.org" if participant_bounced else REQUESTER,
        "status": "5.1.1",
        "words": "smtp; 550 5.1.1 <jane.doe@example.org>: Recipient address rejected",
        "via": "a delivery report",
        "requester_bounced": requester_bounced,
        "participant_bounced": participant_bounced,
    }


def desk_ref(make: _Maker, ticket: Ticket) -> str:
    return make.desk.settings.desk.ref(ticket.id)


def contexts(desk: Desk) -> dict[str, list[dict[str, Any]]]:
    """Every mail's sample contexts, by template name (``canned`` for every canned reply)."""
    make = _Maker(desk)
    settings = desk.settings
    alert = Mail(
        kind="alert",
        template="admin_alert",
        to=settings.desk.admin_address or settings.desk.address,
        context={
            "subject": f"mailbox {settings.mailboxes[0].name} is failing",
            "text": "mailbox support has failed 5 times in a row.\nLast error: timed out",
        },
        to_agent=True,
    )
    return {
        **_to_customers(make, settings.limits.max_attachment_bytes),
        **_to_agents(make),
        "admin_alert": [desk.mailer.context(alert)],
        **_digests(make),
        "canned": [notices.canned_context(desk, make.worked)],
    }


def _to_customers(make: _Maker, limit: int) -> dict[str, list[dict[str, Any]]]:
    dropped = [{"filename": "error-on-display.jpg", "size": limit + 4_200_000}]
    closes_at = "Thu 03 Dec 2026 09:00 UTC"
    too_large = make.desk.settings.limits.max_message_bytes * 3 // 2
    return {
        "ack": [
            make.customer(make.new, "ack", dropped=[], max_attachment_bytes=limit),
            make.customer(make.new, "ack", dropped=dropped, max_attachment_bytes=limit),
        ],
        "reply": [
            make.customer(
                make.worked, "reply", text=AGENT_TEXT, agent={"name": make.agent.name}, images=[]
            ),
            make.customer(
                make.worked,
                "reply",
                text=AGENT_TEXT,
                agent={"name": make.agent.name},
                images=[{"cid": "part1.4711@example.com", "filename": "cover-open.png"}],
            ),
        ],
        "started": [
            make.customer(
                make.pending, "started", text=AGENT_TEXT, agent={"name": make.agent.name}, images=[]
            )
        ],
        "closed": [
            make.customer(make.closed, "closed", resolution="We replaced the fuser unit."),
            make.customer(make.closed, "closed", resolution=""),
        ],
        "escalated": [make.customer(make.escalated, "escalated")],
        "reminder": [
            make.customer(
                make.pending,
                "reminder",
                waited="3 days",
                closes_after="4 days",
                closes_at=closes_at,
            ),
            make.customer(
                make.pending, "reminder", waited="3 days", closes_after=None, closes_at=None
            ),
        ],
        "auto_closed": [make.customer(make.closed, "auto_closed", waited="7 days")],
        "merged": [
            make.customer(
                make.new,
                "merged",
                into={"ref": desk_ref(make, make.worked), "subject": make.worked.subject},
            )
        ],
        oversize.NOTICE: [
            make.desk.mailer.context(
                oversize.notice_mail(make.desk, REQUESTER, subject, None, too_large)
            )
            for subject in ("Photos of the jammed printer", "")
        ],
    }


# an agent's forward of the customer's mail, as the notice of its new ticket names it
FORWARDED = {
    "name": "Bob Jones",
    "email": "bob@example.com",
    "note": "Carol called about this too; the printer is on floor 2.",
}


def _to_agents(make: _Maker) -> dict[str, list[dict[str, Any]]]:
    agent, new, worked, escalated = make.agent, make.new, make.worked, make.escalated
    due = "Thu 26 Nov 2026 13:00 UTC"
    replied = {"text": CUSTOMER_TEXT, "sender": REQUESTER, "files": SAMPLE_FILES}
    return {
        "agent_new": [
            make.notice(new, "agent_new", **replied),
            make.notice(new, "agent_new", text=CUSTOMER_TEXT, sender="", files=[]),
            make.notice(new, "agent_new", **replied, others=_others(make)),
            make.notice(new, "agent_new", **replied, forwarded=FORWARDED),
            make.notice(new, "agent_new", **replied, forwarded={**FORWARDED, "note": ""}),
        ],
        "agent_held": [
            make.notice(
                worked,
                "agent_held",
                text=AGENT_TEXT,
                summary="The fuser is ordered; it arrives on Monday.",
                other={"by": "Bob Jones", "email": "bob@example.com", "at": due},
            )
        ],
        "agent_customer_replied": [make.notice(worked, "agent_customer_replied", **replied)],
        "agent_reopened": [make.notice(worked, "agent_reopened", **replied)],
        "agent_assigned": [
            make.notice(worked, "agent_assigned", by="Bob Jones", files=[]),
            make.notice(worked, "agent_assigned", by="Bob Jones", files=SAMPLE_FILES),
            make.notice(new, "agent_assigned", by="rule printers", **replied, others=_others(make)),
            make.notice(new, "agent_assigned", by="Bob Jones", **replied, forwarded=FORWARDED),
        ],
        "agent_escalated": [
            make.notice(
                escalated,
                "agent_escalated",
                summary="Needs a new fuser.",
                by=agent.name,
                files=SAMPLE_FILES,
            ),
            make.notice(escalated, "agent_escalated", summary="", by=agent.name, files=[]),
        ],
        "agent_files": [
            make.notice(worked, "agent_files", part=1, parts=2, files=SAMPLE_FILES),
            make.notice(worked, "agent_files", part=1, parts=1, files=[]),
        ],
        "agent_receipt": _receipts(make),
        "agent_bounce": [
            make.notice(worked, "agent_bounce", **_bounce(make, requester_bounced=True)),
            make.notice(new, "agent_bounce", **_bounce(make, requester_bounced=False)),
            make.notice(worked, "agent_bounce", **_bounce(make, participant_bounced=True)),
        ],
        "agent_unverified": _unverified(make),
        **_without_ticket(make),
        "agent_query": _answers(make),
        "agent_sla": [
            make.notice(
                worked, "agent_sla", target="first response", due=due, escalate_to=make.other_team
            ),
            make.notice(worked, "agent_sla", target="resolution", due=due, escalate_to=None),
        ],
    }


def _others(make: _Maker) -> list[dict[str, str]]:
    """The requester's other open tickets, as a new ticket's notice names them."""
    return [
        {"ref": desk_ref(make, ticket), "subject": ticket.subject}
        for ticket in (make.worked, make.pending)
    ]


def _receipts(make: _Maker) -> list[dict[str, Any]]:
    """A receipt with commands applied, one refused, one not mailed, one held and bounced, one
    with the list of commands the agent asked for (``#help``)."""
    agent, new, worked = make.agent, make.new, make.worked
    return [
        make.receipt(
            worked,
            agents.Receipt(
                applied=(f"assigned to you ({agent.name} <{agent.email}>)", "tagged printer")
            ),
        ),
        make.receipt(worked, agents.Receipt(applied=("the commands are listed below",), help=True)),
        make.receipt(
            new,
            agents.Receipt(
                refused=("#priority hgih: not a priority (low, medium, high, urgent)",),
                kept_as_note=True,
            ),
        ),
        make.receipt(
            new,
            agents.Receipt(
                applied=("closed",),
                not_mailed="the ticket has no usable address of the customer",
            ),
        ),
        make.receipt(
            worked,
            agents.Receipt(
                applied=("closed",),
                held=("the closing mail: loop protection: 10 automatic mails in the hour",),
                bounced=f"{REQUESTER} bounced permanently on Thu 26 Nov 2026 (5.1.1); sent anyway",
                uncopied=(
                    "jörg@example.org was not copied: the address jörg@example.org is not ASCII,"
                    " and the SMTP server smtp.example.org:587 does not announce SMTPUTF8"
                    " (RFC 6531), which mail to it needs",
                ),
            ),
        ),
        make.receipt(
            worked,
            agents.Receipt(
                files=(
                    "invoice-42.pdf (48 KB) sent to the customer",
                    "backup.zip (31.0 MB) not sent to the customer: larger than"
                    " max_attachment_bytes (25.0 MB)",
                ),
            ),
        ),
    ]


def _unverified(make: _Maker) -> list[dict[str, Any]]:
    """The notice of commands not carried out: for one message, and for a run of them."""
    expired = "The reply token has expired; reply to a newer notification."
    new, worked = make.new, make.worked
    return [
        make.notice(
            worked,
            "agent_unverified",
            reason=expired,
            commands=["#close"],
            text="Fixed, closing.",
            count=1,
            tickets=[desk_ref(make, worked)],
        ),
        make.notice(
            worked,
            "agent_unverified",
            reason=expired,
            commands=[],
            text="Fixed.",
            count=12,
            tickets=[desk_ref(make, worked), desk_ref(make, new)],
        ),
    ]


def _without_ticket(make: _Maker) -> dict[str, list[dict[str, Any]]]:
    """Mail to an agent about their mail without a ticket ref: the receipt of one that started
    nothing (asked nothing, or refused), and the notice of one that could not be verified."""
    desk, agent = make.desk, make.agent
    subject = "Toner for the 3rd floor"
    refused = ["#new dana: dana is not a mail address"]

    def made(kind: str, template: str, **context: Any) -> dict[str, Any]:
        return desk.mailer.context(starts.to_agent(desk, agent, kind, template, **context))

    why = starts.unproven_reason(auth.Proof(False, "", "", token_reason="missing"))
    return {
        "agent_start": [
            made("receipt", "agent_start", refused=[], subject=subject, help=commands.HELP),
            made("receipt", "agent_start", refused=refused, subject="", help=commands.HELP),
        ],
        "agent_address_shown": [
            made(
                exposure.SHOWN,
                exposure.TEMPLATE,
                shown_to=["dana@customer.test", "erin@customer.test"],
                more=3,
                subject=subject,
                count=2,
            ),
        ],
        "agent_address": [
            made(
                starts.ADDRESS_NOTICE,
                "agent_address",
                reason=why,
                commands=["#new x@y.test"],
                count=1,
                subject=subject,
                replay=False,
            ),
            made(
                starts.ADDRESS_NOTICE,
                "agent_address",
                reason=why,
                commands=[],
                count=7,
                subject="",
                replay=True,
            ),
        ],
    }


def _digests(make: _Maker) -> dict[str, list[dict[str, Any]]]:
    """The morning digests: an agent's with tickets in every list (more than it shows in
    one), and with one list alone; the admin's figures."""
    desk, agent, now = make.desk, make.agent, make.desk.clock()
    day = now.date()
    Listed = digest.Listed
    full = (
        Listed([make.worked, make.pending], 2),
        Listed([make.new], 40),
        Listed([make.worked], 1),
    )
    some = (Listed([], 0), Listed([make.new], 1), Listed([], 0))
    since = now - timedelta(days=1)
    statuses = {"open": 3, "pending": 2, "closed": 7}
    team = stats.TeamStats(make.new.team, 12, statuses, 9, 5400.0, 86400.0)
    figures = stats.Stats(since, now, 12, statuses, 9, 7, 5400.0, 86400.0, 4.5, 2, (team,))
    return {
        "agent_digest": [
            desk.mailer.context(digest.agent_mail(desk, agent, (day, now), lists))
            for lists in (full, some)
        ],
        "admin_digest": [desk.mailer.context(digest.admin_mail(desk.settings, day, figures, ""))],
    }


def _answers(make: _Maker) -> list[dict[str, Any]]:
    """The answer to queries: one that shows a ticket, one of every other kind of section."""
    desk, ticket, now = make.desk, make.worked, make.desk.clock()
    ref = desk_ref(make, ticket)
    entry = {"at": "2026-11-26 09:00 UTC", "kind": "message", "label": f"message from {REQUESTER}"}
    show = {
        "kind": "show",
        "source": f"#show {ticket.id}",
        "notes": [f"{ref} was merged into {ref}"],
        "ref": ref,
        "number": ticket.id,
        "subject": ticket.subject,
        "status": "open",
        "priority": "high",
        "team": ticket.team,
        "assignee": make.agent.email,
        "requester": REQUESTER,
        "tags": "hardware, printer",
        "opened": "2026-11-26 09:00 UTC",
        "due": "2026-11-26 13:00 UTC",
        "entries": [{**entry, "text": CUSTOMER_TEXT, "files": ["error-on-display.jpg (48 KB)"]}],
        "omitted": 3,
        "files": SAMPLE_FILES,
        "address": "",
    }
    row = {
        "ref": ref,
        "subject": ticket.subject,
        "requester": REQUESTER,
        "status": "open",
        "priority": "high",
        "age": "3d 4h",
        "due": "2026-11-27 09:00 UTC",
    }
    listing = {"kind": "list", "source": "#list", "scope": "mine open", "rows": [row], "more": 2}
    found = {**row, "at": "2026-11-26 09:00 UTC", "context": "the printer on the 3rd floor jams"}
    others: list[dict[str, Any]] = [
        listing,
        {**listing, "rows": [], "more": 0},
        {"kind": "search", "source": "#search jams", "words": "jams", "rows": [found]},
        {"kind": "search", "source": "#search toner", "words": "toner", "rows": []},
        {"kind": "help", "source": "#help"},
        {"kind": "refused", "source": "#lsit", "reason": "not a query"},
        {**show, "address": "support+token@example.com", "omitted": 0, "notes": []},
    ]
    one = queries.answer_mail(desk, make.agent, [show], [showing.Shown(ticket, show)], now)
    many = queries.answer_mail(desk, make.agent, others, [], now, unread=5)
    return [desk.mailer.context(one), desk.mailer.context(many)]


def variables(desk: Desk) -> dict[str, list[str]]:
    """The top-level variables each mail's templates see (for README's table and its test)."""
    return {
        name: sorted({key for context in variants for key in context})
        for name, variants in contexts(desk).items()
    }
