"""Who is on a ticket: its requester and its participants (Cc), and who may become one.

Pure rules read by the act layer and the command grammar: the desk's own addresses (the desk
address, each mailbox's address, and their plus-forms: reply tokens, VERP) are never people on
a ticket; the addresses in To and Cc of a customer's mail join it as participants, agents and
the desk aside; a new mail's ``Reply-To`` may name the requester (a web form writes ``From:
noreply@shop``, ``Reply-To:`` the customer). ``joined`` plans what a customer's mail adds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from maildesk.config import Settings
from maildesk.desk.plans import AddParticipants, Plan, Record, TicketState
from maildesk.mail.inbound import Inbound
from maildesk.mail.marks import is_desk_address
from maildesk.mail.parse.identity import usable_address

# Participants a ticket keeps at most: a mail to a crowd is not a conversation with it, and
# each participant is read again for every mail that names the ticket (a header block of
# 256 KB holds 18,000 addresses).
MAX_PARTICIPANTS = 50


def own_addresses(settings: Settings) -> tuple[str, ...]:
    """The desk's own addresses: its address, and every mailbox's (its ``addresses``, and its
    username when that is an address)."""
    found = [settings.desk.address.lower()]
    for box in settings.mailboxes:
        found += [*box.addresses, *([box.username.lower()] if "@" in box.username else [])]
    return tuple(dict.fromkeys(found))


def is_own(address: str, own: Iterable[str]) -> bool:
    """``address`` is one of the desk's own addresses or one of their plus-forms."""
    return any(is_desk_address(address, desk) for desk in own)


@dataclass(frozen=True, slots=True)
class Outsiders:
    """Who can never be a participant: the desk's own addresses and its agents."""

    own: tuple[str, ...]
    agents: frozenset[str]

    def excludes(self, address: str) -> bool:
        return address in self.agents or is_own(address, self.own)


def newcomers(
    listed: Iterable[str], state: TicketState, outsiders: Outsiders, room: int = MAX_PARTICIPANTS
) -> tuple[str, ...]:
    """The addresses of ``listed`` that join the ticket: not on it yet, not the requester, not
    the desk or an agent; as many as there is room for under ``room``."""
    present = {*state.participants, state.requester}
    found: list[str] = []
    for address in dict.fromkeys(listed):
        if len(state.participants) + len(found) >= room:
            break
        if address and address not in present and not outsiders.excludes(address):
            found.append(address)
    return tuple(found)


def joined(inbound: Inbound, by: str, state: TicketState, outsiders: Outsiders) -> Plan:
    """A customer's mail names people in To and Cc: those not on the ticket join it."""
    added = newcomers((*inbound.to, *inbound.cc), state, outsiders)
    if not added:
        return Plan()
    return Plan(
        (AddParticipants(added, by), Record("cc_added", by, {"added": list(added)})),
    )


def is_list_mail(inbound: Inbound) -> bool:
    """Mail a mailing list passed on: its ``Reply-To`` is the list's."""
    return bool(inbound.header("list-id") or inbound.header("list-post"))


def requester_of(inbound: Inbound, outsiders: Outsiders, use_reply_to: bool = True) -> str:
    """Whom a new ticket answers: the mail's one ``Reply-To`` address when it differs from
    ``From:`` and is neither the desk's, an agent's nor a list's (``use_reply_to``: the
    mailbox's ``reply_to_requester``), else the first usable mailbox of From, Sender,
    Reply-To. Never the desk itself ("": nobody). A Reply-To naming an agent would make the
    agent the customer: the acknowledgment and every answer would go to her, as if she had
    asked."""
    written = inbound.requester or ""
    if use_reply_to and len(inbound.reply_to) == 1 and not is_list_mail(inbound):
        answer = inbound.reply_to[0]
        if (
            answer not in (written, inbound.sender)
            and usable_address(answer) == answer
            and not outsiders.excludes(answer)
        ):
            return answer
    return "" if is_own(written, outsiders.own) else written


def address_words(args: Sequence[str]) -> tuple[str, ...]:
    """A command's words without the display name a mail client writes before an address in
    angle brackets (``Dave Miller <dave@customer.test>``, ``"Miller, Dave" <dave@...>``): the
    words that hold no ``@`` right before such an address. Any other word is kept (and refused
    if it is no address)."""
    kept: list[str] = []
    name: list[str] = []
    for word in args:
        if "@" not in word:
            name.append(word)
            continue
        if not word.strip().startswith("<"):
            kept.extend(name)
        name = []
        kept.append(word)
    return (*kept, *name)


def address_of(word: str) -> str | None:
    """A command's argument as an address the desk keeps (``<...>`` and case as the parser
    leaves them), or None when it is not one the desk could write to."""
    bare = word.strip().strip("<>").strip()
    return usable_address(bare) if "@" in bare else None


def cc_of(requester: str, participants: Collection[str], outsiders: Outsiders) -> tuple[str, ...]:
    """The Cc of a mail to the requester: the participants, but the requester, the desk and
    the agents (an address may have become an agent's since it joined)."""
    return tuple(a for a in participants if a and a != requester and not outsiders.excludes(a))
