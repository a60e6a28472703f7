"""Tickets and figures as people read them: the rows and details the CLI prints (as tables or
``--json``) and the demo shows. Values in, text or plain dicts out; nothing is written."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from maildesk.models import Ticket


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def ticket_summary(ticket: Ticket, ref_format: str) -> dict[str, Any]:
    return {
        "ref": ref_format.format(number=ticket.id),
        "number": ticket.id,
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "requester": ticket.requester,
        "assignee": ticket.assignee,
        "team": ticket.team,
        "tags": ticket.tag_names,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
        "due_at": iso(ticket.due_at),
        "sla_breached": [s for s in ticket.sla_breached.split(",") if s],
        "linked_to": ref_format.format(number=ticket.linked_to) if ticket.linked_to else None,
        "requester_bounced": ticket.requester_bounced_at is not None,
    }


def ticket_detail(ticket: Ticket, ref_format: str) -> dict[str, Any]:
    data = ticket_summary(ticket, ref_format)
    data["satisfaction"] = (
        {"rating": ticket.rating, "comment": ticket.rating_comment}
        if ticket.rating is not None
        else None
    )
    data["merged_into"] = (
        ref_format.format(number=ticket.merged_into) if ticket.merged_into else None
    )
    data["links"] = [ref_format.format(number=link.other_id) for link in ticket.links]
    data["participants"] = participants(ticket)
    data["messages"] = [
        {
            "from": m.sender,
            "internal": m.internal,
            "unverified": m.unverified,
            "automatic": m.automatic,
            "text": m.text,
            "message_id": m.message_id,
            "created_at": iso(m.created_at),
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                    **({"dropped": True} if a.dropped else {}),
                }
                for a in m.attachments
            ],
        }
        for m in ticket.messages
    ]
    data["events"] = [
        {
            "kind": e.kind,
            "actor": e.actor,
            "at": iso(e.at),
            "detail": json.loads(e.detail) if e.detail else {},
        }
        for e in ticket.events
    ]
    return data


def participants(ticket: Ticket) -> list[dict[str, Any]]:
    """Who is on the ticket: the requester first (since the ticket was made, or since an agent
    named them with ``#requester``), then its Cc in the order they were added."""
    people = []
    if ticket.requester:
        named = [e for e in ticket.events if e.kind == "requester_changed"]
        at, by = (named[-1].at, named[-1].actor) if named else (ticket.created_at, "")
        person = _person(ticket.requester, "requester", at, by or ticket.requester)
        people.append({**person, "bounced": ticket.requester_bounced_at is not None})
    for row in sorted(ticket.participants, key=lambda p: (p.added_at, p.address)):
        person = _person(row.address, "cc", row.added_at, row.added_by)
        people.append({**person, "bounced": row.bounced_at is not None})
    return people


def _person(address: str, role: str, at: datetime, by: str) -> dict[str, Any]:
    return {"address": address, "role": role, "added_at": iso(at), "added_by": by}


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    widths[-1] = 0
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def render_ticket(data: dict[str, Any]) -> str:
    out = [
        f"{data['ref']} {data['subject']}",
        f"  status {data['status']}, priority {data['priority']}, team {data['team']}, "
        f"assignee {data['assignee'] or 'nobody'}, tags {', '.join(data['tags']) or '-'}",
        f"  requester {data['requester']}, opened {data['created_at']}",
    ]
    copied = [p["address"] for p in data.get("participants", []) if p["role"] == "cc"]
    if copied:
        out.append(f"  cc {', '.join(copied)}")
    if data["satisfaction"]:
        out.append(
            f"  satisfaction {data['satisfaction']['rating']}/5 {data['satisfaction']['comment'] or ''}"
        )
    out.append("")
    for m in data["messages"]:
        label = "internal note" if m["internal"] else "message"
        if m["unverified"]:
            label += ", unverified"
        out.append(f"--- {m['created_at']} {label} from {m['from']}")
        out.extend("  " + line for line in (m["text"] or "").splitlines())
        for a in m["attachments"]:
            dropped = " (dropped: too large)" if a.get("dropped") else ""
            out.append(
                f"  [attachment] {a['filename']} {a['content_type']} {a['size']} bytes{dropped}"
            )
    out.append("")
    out.append("Timeline:")
    for e in data["events"]:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if v not in (None, "", []))
        out.append(f"  {e['at']} {e['kind']:<16} {e['actor'] or '-'} {detail}")
    return "\n".join(out)


def render_stats(figures: Any) -> str:
    from maildesk.act.stats import duration_text as d

    satisfaction = (
        f"{figures.satisfaction_average:.1f}/5 from {figures.satisfaction_count} rating"
        + ("s" if figures.satisfaction_count != 1 else "")
        if figures.satisfaction_count
        else "no ratings"
    )
    statuses = ", ".join(f"{n} {s}" for s, n in figures.by_status.items())
    out = [
        f"From {iso(figures.since)} to {iso(figures.until)}:",
        f"  opened                 {figures.opened} ({statuses})",
        f"  closed                 {figures.closed}",
        f"  backlog now            {figures.backlog} not closed",
        f"  first response median  {d(figures.median_first_response)}",
        f"  time to close median   {d(figures.median_close)}",
        f"  satisfaction           {satisfaction}",
        "",
    ]
    rows = [
        (
            t.team,
            t.opened,
            *(t.by_status.get(s, 0) for s in figures.by_status),
            t.backlog,
            d(t.median_first_response),
            d(t.median_close),
        )
        for t in figures.teams
    ]
    headers = ("TEAM", "OPENED", *(s.upper() for s in figures.by_status), "BACKLOG")
    out.append(table(rows, (*headers, "FIRST RESPONSE", "TO CLOSE")))
    return "\n".join(out)
