"""Sample data for every mail template, and the check that renders each template with it.

``check-config``, ``run`` (and the other commands that make mail) and a reload render every
template, shipped and overridden, before maildesk uses them: an error names the file and the
line, and stops the start (exit 78) or the reload. The samples are made by the lifecycle rules'
own functions (``tickets.customer_mail``, ``tickets.agent_mail``, ``tickets.canned_context``,
``Mailer.context``) on a sample ticket, with the values each rule passes; where a template has
optional parts, there is a sample with them and one without, as real tickets come. A template
written against the variables README lists renders here as it would in real use.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from maildesk import tickets
from maildesk.config import AgentSettings, ConfigError
from maildesk.models import Status, Tag, Ticket
from maildesk.outbox import Mail
from maildesk.rendering import HTML, TEXT, TemplateError, TemplateProblem

REQUESTER = "jane.doe@example.org"
CUSTOMER_TEXT = """\
Hello,

the printer on the 3rd floor jams on every page since this morning. I attached a photo of the
error on its display.

Jane"""
AGENT_TEXT = """\
Hello Jane,

thank you for the photo. Please open the front cover, take out the toner cartridge and check
for a torn sheet behind it; then tell us whether it still jams."""


@dataclass(frozen=True, slots=True)
class Checked:
    """What the check found: the mails rendered, the problems (each stops a start or reload),
    and notes for check-config (overrides of one half only, files no mail uses)."""

    mails: int
    overridden: int
    problems: tuple[TemplateProblem, ...]
    notes: tuple[str, ...]


def check(desk: tickets.Desk) -> Checked:
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


def require(desk: tickets.Desk) -> None:
    """``check``, raising ``ConfigError`` (one line) when a template fails."""
    problems = check(desk).problems
    if problems:
        more = f" (and {len(problems) - 1} more: see maildesk check-config)"
        raise ConfigError(f"template {problems[0]}" + (more if len(problems) > 1 else ""))


def notes(desk: tickets.Desk) -> list[str]:
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
    desk: tickets.Desk,
    status: Status = Status.OPEN,
    *,
    assignee: str | None = None,
    tags: tuple[str, ...] = (),
    team: str | None = None,
) -> Ticket:
    """A ticket as the rules hand it to a template (never added to a session)."""
    now = desk.clock()
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
        participants=[],
        messages=[],
        events=[],
    )


def contexts(desk: tickets.Desk) -> dict[str, list[dict[str, Any]]]:
    """Every mail's sample contexts, by template name (``canned`` for every canned reply)."""
    settings = desk.settings
    teams = [t.name for t in settings.teams]
    agent = (
        settings.agents[0]
        if settings.agents
        else AgentSettings("alice@example.com", "Alice", (teams[0],))
    )
    other = teams[1] if len(teams) > 1 else teams[0]
    now = desk.clock()
    new = sample_ticket(desk)
    worked = sample_ticket(desk, assignee=agent.email, tags=("hardware", "printer"))
    pending = sample_ticket(desk, Status.PENDING, assignee=agent.email, tags=("printer",))
    closed = sample_ticket(desk, Status.CLOSED, assignee=agent.email, tags=("printer",))
    escalated = sample_ticket(desk, Status.ESCALATED, tags=("printer",), team=other)

    def customer(ticket: Ticket, template: str, **extra: Any) -> dict[str, Any]:
        return desk.mailer.context(tickets.customer_mail(desk, ticket, template, template, **extra))

    def notice(ticket: Ticket, template: str, **extra: Any) -> dict[str, Any]:
        mail = tickets.agent_mail(desk, ticket, agent, "notice", template, now, **extra)
        return desk.mailer.context(mail)

    limit = settings.limits.max_attachment_bytes
    dropped = [{"filename": "error-on-display.jpg", "size": limit + 4_200_000}]
    due = "Thu 26 Nov 2026 13:00 UTC"
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
        "ack": [
            customer(new, "ack", dropped=[], max_attachment_bytes=limit),
            customer(new, "ack", dropped=dropped, max_attachment_bytes=limit),
        ],
        "reply": [customer(worked, "reply", text=AGENT_TEXT, agent={"name": agent.name})],
        "closed": [
            customer(closed, "closed", resolution="We replaced the fuser unit."),
            customer(closed, "closed", resolution=""),
        ],
        "escalated": [customer(escalated, "escalated")],
        "reminder": [
            customer(
                pending,
                "reminder",
                waited="3 days",
                closes_after="4 days",
                closes_at="Thu 03 Dec 2026 09:00 UTC",
            ),
            customer(pending, "reminder", waited="3 days", closes_after=None, closes_at=None),
        ],
        "auto_closed": [customer(closed, "auto_closed", waited="7 days")],
        "agent_new": [
            notice(new, "agent_new", text=CUSTOMER_TEXT, sender=REQUESTER),
            notice(new, "agent_new", text=CUSTOMER_TEXT, sender=""),
        ],
        "agent_customer_replied": [
            notice(worked, "agent_customer_replied", text=CUSTOMER_TEXT, sender=REQUESTER)
        ],
        "agent_reopened": [notice(worked, "agent_reopened", text=CUSTOMER_TEXT, sender=REQUESTER)],
        "agent_assigned": [notice(worked, "agent_assigned", by="Bob Jones")],
        "agent_escalated": [
            notice(escalated, "agent_escalated", summary="Needs a new fuser.", by=agent.name),
            notice(escalated, "agent_escalated", summary="", by=agent.name),
        ],
        "agent_receipt": [
            notice(
                worked,
                "agent_receipt",
                applied=[f"assigned to {agent.name} <{agent.email}>", "tagged printer"],
                refused=[],
                kept_as_note=False,
            ),
            notice(
                new,
                "agent_receipt",
                applied=[],
                refused=["#priority hgih: not a priority (low, medium, high, urgent)"],
                kept_as_note=True,
            ),
        ],
        "agent_unverified": [
            notice(
                worked,
                "agent_unverified",
                reason="The reply token has expired; reply to a newer notification.",
                commands=["#close"],
                text="Fixed, closing.",
            ),
            notice(
                worked,
                "agent_unverified",
                reason="The reply token has expired; reply to a newer notification.",
                commands=[],
                text="Fixed.",
            ),
        ],
        "agent_sla": [
            notice(worked, "agent_sla", target="first response", due=due, escalate_to=other),
            notice(worked, "agent_sla", target="resolution", due=due, escalate_to=None),
        ],
        "admin_alert": [desk.mailer.context(alert)],
        "canned": [tickets.canned_context(desk, worked)],
    }


def variables(desk: tickets.Desk) -> dict[str, list[str]]:
    """The top-level variables each mail's templates see (for README's table and its test)."""
    return {
        name: sorted({key for context in variants for key in context})
        for name, variants in contexts(desk).items()
    }
