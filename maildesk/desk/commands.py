"""The agent command grammar: parse ``#verb`` commands, validate them, and the help text.

Sits between ``routing`` and ``verbs``: for an agent's follow-up, ``parse`` finds the commands
in the subject (``#verb`` words after the ticket ref) and in the command lines at the very
top of the body; ``validate`` resolves them against the desk's agents, teams and canned replies,
all or nothing. Both return values and touch nothing; ``verbs`` plans the actions, ``act.apply``
carries the plan out, and ``describe``/``HELP`` word the receipt. Customer mail is never parsed
for commands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from maildesk.desk import merges, people

VERBS = (
    "assign",
    "note",
    "escalate",
    "close",
    "priority",
    "tag",
    "untag",
    "reopen",
    "reply",
    "files",
    "cc",
    "uncc",
    "requester",
    "spam",
    "notspam",
    *merges.VERBS,
    "help",
)
PRIORITIES = ("low", "medium", "high", "urgent")

MAX_COMMANDS = 20
MAX_COMMAND_CHARS = 200
MAX_TAG_CHARS = 40

# A command word: "#" starting a whitespace-separated word, then a letter (so "#1042" is a ticket
# number, not a command); sentence punctuation right after the verb is tolerated.
_VERB_WORD = re.compile(r"#([A-Za-z][A-Za-z0-9_-]*)[.,;:!?]*")
# sentence punctuation cut from the end of a word (``str.rstrip``: a pattern anchored at the end
# of a word, tried from each of its characters, is quadratic in a word of punctuation)
_TRAILING_PUNCTUATION = ".,;:!?"
_TAG_WORD = re.compile(rf"[a-z0-9_-]{{1,{MAX_TAG_CHARS}}}")

# Reply and forward prefixes of common clients and languages (Re, AW, SV, Antw, Fwd, WG, TR, RV,
# VS, Odp, Enc, Rif, RE[2], Re(2)) and the warning tags gateways put into subjects ([EXTERNAL], ...).
_SUBJECT_NOISE = re.compile(
    r"(?<![\w#@.-])(?:"
    r"(?:re|aw|sv|antw|fwd?|wg|tr|rv|vs|odp|enc|rif)(?:\s*\[\d+\]|\s*\(\d+\)|\^\d+)?\s*:"
    r"|\[\s*(?:external|extern|ext|caution|warning|suspicious|spam)(?:\s+[a-z]+)*\s*\]"
    r")",
    re.IGNORECASE,
)
_FULLWIDTH_HASH = "\uff03"


@dataclass(frozen=True, slots=True)
class Command:
    """One command as written: lower-case verb (possibly unknown), its argument words."""

    verb: str
    args: tuple[str, ...]
    source: str  # e.g. "#assign bob@example.com"
    in_body: bool = False  # on a command line of the body (not in the subject)


@dataclass(frozen=True, slots=True)
class Parsed:
    """The commands of one message, subject first, and the text left once they are removed."""

    commands: tuple[Command, ...]
    text: str  # the body without its leading command lines, stripped


@dataclass(frozen=True, slots=True)
class Directory:
    """What commands may name: the desk's agents, teams and canned replies."""

    agents: tuple[tuple[str, str, tuple[str, ...]], ...]  # (email, name, teams)
    teams: tuple[str, ...]
    canned: tuple[str, ...] = ()
    own: tuple[str, ...] = ()  # the desk's own addresses (``people.own_addresses``)


@dataclass(frozen=True, slots=True)
class Action:
    """One validated command, resolved to the names the lifecycle stores."""

    verb: str
    value: str | None  # agent email, team, priority or canned reply name; None without argument
    words: tuple[str, ...] = ()  # tags for tag/untag
    source: str = ""
    name: str = ""  # the agent's display name for assign


@dataclass(frozen=True, slots=True)
class Validation:
    """All the actions of a message, or none of them and the reasons why."""

    actions: tuple[Action, ...]
    refusals: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.refusals


def _strip_noise(subject: str) -> str:
    return _SUBJECT_NOISE.sub(" ", subject)


def _verb_of(word: str) -> str | None:
    match = _VERB_WORD.fullmatch(word)
    return match.group(1).lower() if match else None


def _group(words: Sequence[str]) -> list[Command]:
    """Split words into commands: each ``#verb`` word takes the words up to the next one."""
    commands: list[Command] = []
    verb: str | None = None
    written = ""
    args: list[str] = []

    def flush() -> None:
        if verb is not None:
            cleaned = [arg.rstrip(_TRAILING_PUNCTUATION) for arg in args]
            source = " ".join([written, *args])
            commands.append(Command(verb, tuple(arg for arg in cleaned if arg), source))

    for word in words:
        found = _verb_of(word)
        if found is not None:
            flush()
            verb, written, args = found, word.rstrip(_TRAILING_PUNCTUATION), []
        elif verb is not None:
            args.append(word)
    flush()
    return commands


def _subject_commands(subject: str, ref_pattern: str) -> list[Command]:
    cleaned = _strip_noise(subject or "")
    ref = re.search(ref_pattern, cleaned)
    if ref is None:
        return []
    return _group(cleaned[ref.end() :].split())


def _is_command_line(line: str) -> bool:
    words = line.split()
    return bool(words) and _verb_of(words[0]) is not None


_WORD = re.compile(r"\S+")
_PUNCTUATION = re.compile(r"[.,;:!?]+")
TEXT_AFTER = ("close", "note")  # and #escalate after its team: the rest of the line is text


class _Teams:
    """The team names a body's ``#escalate`` may be followed by, to tell a team of several
    words from the text after it."""

    def __init__(self, teams: Sequence[str]) -> None:
        self.names = {" ".join(team.lower().split()) for team in teams}
        self.longest = max((len(name.split()) for name in self.names), default=1)

    def words(self, args: Sequence[str]) -> int:
        """How many of ``args`` name the team: the longest run that is a team's name (at most
        as many words as the longest name, so a long line costs no more), else the first."""
        for count in range(min(self.longest, len(args)), 0, -1):
            if " ".join(args[:count]).lower() in self.names:
                return count
        return 1


def _line_commands(line: str, teams: _Teams) -> tuple[list[Command], int | None]:
    """The commands of one body command line, and where on it the text starts (None: the line
    is all commands). After ``#close``, ``#note`` and ``#escalate <team>`` the words up to the
    line's end are the beginning of the text; after any other verb they are its arguments."""
    words = [(match.group(), match.start()) for match in _WORD.finditer(line)]
    commands: list[Command] = []
    index = 0
    while index < len(words):
        written, _ = words[index]
        verb = _verb_of(written) or ""
        end = index + 1
        while end < len(words) and _verb_of(words[end][0]) is None:
            end += 1
        args = [word for word, _ in words[index + 1 : end]]
        cleaned = [arg.rstrip(_TRAILING_PUNCTUATION) for arg in args]
        keep = len(args)
        if verb in TEXT_AFTER:
            keep = 0
        elif verb == "escalate" and args:
            keep = teams.words(cleaned)
        source = " ".join([written.rstrip(_TRAILING_PUNCTUATION), *args[:keep]])
        named = tuple(arg for arg in cleaned[:keep] if arg)
        commands.append(Command(verb, named, source, in_body=True))
        rest = [
            start
            for word, start in words[index + 1 + keep : end]
            if not _PUNCTUATION.fullmatch(word)
        ]
        if keep < len(args) and rest:
            return commands, rest[0]
        index = end
    return commands, None


def _body_commands(body: str, teams: _Teams) -> tuple[list[Command], str]:
    lines = (body or "").splitlines()
    commands: list[Command] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        if not _is_command_line(line):
            return commands, "\n".join(lines[index:]).strip()
        found, text_at = _line_commands(line, teams)
        commands.extend(found)
        if text_at is not None:
            return commands, "\n".join([line[text_at:], *lines[index + 1 :]]).strip()
    return commands, ""


def parse(subject: str, body: str, ref_pattern: str, teams: Sequence[str] = ()) -> Parsed:
    """Commands from the subject (after the ref matched by ``ref_pattern``) and the body's top.

    In the subject every ``#verb`` word after the ref starts a command that takes the following
    words up to the next ``#verb``; reply prefixes and gateway tags are ignored. In the body,
    the lines at the very top that begin with a ``#verb`` word are command lines (blank lines
    between them allowed); the first other line ends them and starts the text. On a command
    line, the words after ``#close``, ``#note`` or ``#escalate <team>`` (``teams`` tells a team
    of several words from them) are the beginning of the text, which goes on with the next
    lines. ``#`` followed by a digit, or not at the start of a word, or anywhere in the text,
    is never a command.
    """
    from_subject = _subject_commands(subject, ref_pattern)
    from_body, text = _body_commands(body, _Teams(teams))
    return Parsed(tuple(from_subject + from_body), text)


def defang(text: str) -> str:
    """Text that ``parse`` will never read a command from (for subjects sent to agents).

    A customer's ``#word`` in a subject would otherwise become a command when an agent replies;
    the full-width number sign looks the same to a reader.
    """
    return re.sub(r"#(?=[A-Za-z])", _FULLWIDTH_HASH, text)


# --- validation --------------------------------------------------------------------------------


class _Refused(Exception):
    """A command's refusal reason (internal to ``validate``)."""


def _short(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def _no_args(command: Command) -> None:
    if command.args:
        raise _Refused(f"#{command.verb} takes no arguments")


def _one_phrase(command: Command, what: str) -> str:
    if not command.args:
        raise _Refused(f"missing {what}")
    return " ".join(command.args)


def _resolve_agent(
    phrase: str, directory: Directory, actor: str
) -> tuple[str, tuple[str, str, tuple[str, ...]]]:
    by_email = {agent[0].strip().lower(): agent for agent in directory.agents}
    wanted = phrase.strip().strip("<>").lower()
    if wanted == "me":
        agent = by_email.get(actor.strip().lower())
        if agent is None:
            raise _Refused("you are not an agent of this desk")
        return agent[0].lower(), agent
    if "@" in wanted:
        agent = by_email.get(wanted)
        if agent is None:
            raise _Refused(f"no agent with the address {wanted}")
        return agent[0].lower(), agent
    spaced = " ".join(wanted.split())
    full = [agent for agent in directory.agents if " ".join(agent[1].lower().split()) == spaced]
    if not full:
        full = [
            agent
            for agent in directory.agents
            if agent[1].split() and agent[1].split()[0].lower() == spaced
        ]
    if len(full) > 1:
        names = ", ".join(sorted(f"{agent[1]} <{agent[0]}>" for agent in full))
        raise _Refused(f"{phrase} could be {names}; use the address")
    if not full:
        raise _Refused(f"no agent called {phrase}")
    return full[0][0].lower(), full[0]


def _named(phrase: str, choices: Sequence[str], what: str) -> str:
    for choice in choices:
        if choice.lower() == phrase.lower():
            return choice
    known = ", ".join(choices) or "none"
    raise _Refused(f"no {what} called {phrase} (known: {known})")


def _tags(command: Command) -> tuple[str, ...]:
    if not command.args:
        raise _Refused("name at least one tag")
    words: dict[str, None] = {}
    for arg in command.args:
        word = arg.lower()
        if not _TAG_WORD.fullmatch(word):
            raise _Refused(
                f"{arg!r} is not a tag: use a-z, 0-9, _ and - only, at most "
                f"{MAX_TAG_CHARS} characters"
            )
        words.setdefault(word, None)
    return tuple(words)


def _action(command: Command, directory: Directory, actor: str) -> Action:
    verb, source = command.verb, command.source
    if verb in ("note", "close", "reopen", "files", "notspam", "help"):
        _no_args(command)
        return Action(verb, None, source=source)
    if verb == "assign":
        email, agent = _resolve_agent(_one_phrase(command, "agent"), directory, actor)
        return Action(verb, email, source=source, name=agent[1])
    if verb == "escalate":
        team = _named(_one_phrase(command, "team"), directory.teams, "team")
        return Action(verb, team, source=source)
    if verb == "priority":
        phrase = _one_phrase(command, "priority").lower()
        if phrase not in PRIORITIES:
            raise _Refused(f"priority must be one of {', '.join(PRIORITIES)}")
        return Action(verb, phrase, source=source)
    if verb in ("tag", "untag"):
        return Action(verb, None, words=_tags(command), source=source)
    if verb == "reply":
        name = _named(_one_phrase(command, "canned reply"), directory.canned, "canned reply")
        return Action(verb, name, source=source)
    raise _Refused(f"unknown command; known: {', '.join('#' + v for v in VERBS)}")


_SINGLE_VALUED = ("assign", "escalate", "priority", "reply", "requester", "spam", "merge")
# what an agent may have meant by words after a body command that takes no text on its line
TEXT_HINT = (
    "; write your text on a line below the commands (only #close, #note and #escalate <team> "
    "take text on their own line)"
)
# how many words these verbs take before the hint (a name of two words gets it only if unknown)
_MOST_WORDS = {"priority": 1, "reply": 1, "assign": 1, "reopen": 0, "files": 0, "requester": 1}
_MOST_WORDS |= {"spam": 1, "notspam": 0, "help": 0}


def _text_hint(command: Command) -> str:
    """``TEXT_HINT`` for a refused body command with more words after it than it takes (not
    for addresses: more of them than a command takes is no text)."""
    most = _MOST_WORDS.get(command.verb)
    args = command.args
    if command.verb in PEOPLE:
        args = people.address_words(args)
        if all(people.address_of(arg) for arg in args):
            return ""
    return TEXT_HINT if command.in_body and most is not None and len(args) > most else ""


def _conflict(action: Action, earlier: Sequence[Action]) -> str | None:
    """Why ``action`` contradicts an earlier one of the same message, if it does."""
    for other in earlier:
        if action.verb in _SINGLE_VALUED and other.verb == action.verb:
            return f"conflicts with {other.source}"
        if {action.verb, other.verb} in (
            {"close", "reopen"},
            {"spam", "notspam"},
            {"send", "drop"},
        ):
            return f"conflicts with {other.source}"
        if {action.verb, other.verb} == {"tag", "untag"} and set(action.words) & set(other.words):
            return f"conflicts with {other.source}"
        if {action.verb, other.verb} == {"cc", "uncc"} and set(action.words) & set(other.words):
            return f"conflicts with {other.source}"
    return None


def _without_repeats(action: Action, earlier: Sequence[Action]) -> Action | None:
    """The action minus what earlier actions already do; None when nothing is left."""
    if action.verb in ("tag", "untag", "cc", "uncc"):
        done = {word for other in earlier if other.verb == action.verb for word in other.words}
        words = tuple(word for word in action.words if word not in done)
        if not words:
            return None
        return Action(action.verb, None, words=words, source=action.source)
    if any((action.verb, action.value) == (other.verb, other.value) for other in earlier):
        return None
    return action


# --- who is on the ticket -----------------------------------------------------------------------

PEOPLE = ("cc", "uncc", "requester")


@dataclass(frozen=True, slots=True)
class OnTicket:
    """Who is on the ticket the commands are for: its requester and its Cc."""

    requester: str = ""
    cc: tuple[str, ...] = ()
    named: merges.Named = merges.Named()  # the tickets and held reply the commands may name
    sender: str = ""  # whom the ticket's first customer mail came from (``#spam block``)


def _addresses(command: Command, directory: Directory) -> tuple[str, ...]:
    """The command's arguments as addresses (``<...>`` allowed, a name before it dropped),
    none the desk's own."""
    if not command.args:
        raise _Refused("name at least one address")
    found: dict[str, None] = {}
    for arg in people.address_words(command.args):
        address = people.address_of(arg)
        if address is None:
            raise _Refused(f"{arg!r} is not a mail address")
        if people.is_own(address, directory.own):
            raise _Refused(f"{address} is the desk's own address")
        found.setdefault(address, None)
    return tuple(found)


def _people_action(command: Command, directory: Directory, on: OnTicket) -> Action:
    """``#cc <address>...``, ``#uncc <address>...``, ``#requester <address>``."""
    verb, source = command.verb, command.source
    addresses = _addresses(command, directory)
    agents = {agent[0].strip().lower() for agent in directory.agents}
    agent = next((a for a in addresses if a in agents), None)
    if verb == "requester":
        if len(addresses) > 1:
            raise _Refused("name one address: a ticket has one requester (#cc the others)")
        if agent is not None:
            raise _Refused(f"{agent} is an agent of this desk, not a customer")
        return Action(verb, addresses[0], source=source)
    if verb == "cc":
        if agent is not None:
            raise _Refused(f"{agent} is an agent of this desk: agents get the notices instead")
        new = {a for a in addresses if a not in on.cc and a != on.requester}
        if len(on.cc) + len(new) > people.MAX_PARTICIPANTS:
            raise _Refused(f"a ticket has at most {people.MAX_PARTICIPANTS} addresses on Cc")
        return Action(verb, None, words=addresses, source=source)
    for address in addresses:
        if address == on.requester:
            raise _Refused(f"{address} is the requester; name another with #requester first")
        if address not in on.cc:
            raise _Refused(f"{address} is not on this ticket's Cc")
    return Action(verb, None, words=addresses, source=source)


def _spam_action(command: Command, directory: Directory, on: OnTicket) -> Action:
    """``#spam``, and ``#spam block``: whom its first customer mail came from (not a Reply-To
    anyone may write) is blocked too, never an agent or the desk's own address."""
    if not command.args:
        return Action("spam", None, source=command.source)
    if [a.lower() for a in command.args] != ["block"]:
        raise _Refused("#spam takes no arguments but block")
    if not (address := on.sender):
        raise _Refused("no customer's mail on this ticket has a sender address to block")
    if people.is_own(address, directory.own):
        raise _Refused(f"{address} is the desk's own address and cannot be blocked")
    if address in {agent[0].strip().lower() for agent in directory.agents}:
        raise _Refused(f"{address} is an agent of this desk and cannot be blocked")
    return Action("spam", "block", words=(address,), source=command.source)


def validate(
    parsed: Parsed, directory: Directory, actor: str, on: OnTicket | None = None
) -> Validation:
    """Resolve every command, all or nothing: one refusal and no action applies. ``on``: who
    is on the ticket the commands are for (what ``#cc``, ``#uncc`` and ``#requester`` check).

    Repeating a command is harmless (it appears once); two that contradict each other
    (``#priority low #priority high``, ``#close #reopen``) are refused.
    """
    if len(parsed.commands) > MAX_COMMANDS:
        line = f"{len(parsed.commands)} commands: at most {MAX_COMMANDS} per message"
        return Validation((), (line,))
    actions: list[Action] = []
    refusals: list[str] = []
    for command in parsed.commands:
        try:
            if len(command.source) > MAX_COMMAND_CHARS:
                raise _Refused(f"longer than {MAX_COMMAND_CHARS} characters")
            if command.verb in PEOPLE:
                resolved = _people_action(command, directory, on or OnTicket())
            elif command.verb == "spam":
                resolved = _spam_action(command, directory, on or OnTicket())
            elif command.verb in merges.VERBS:
                named = (on or OnTicket()).named
                value = merges.resolve(command.verb, command.args, named)
                resolved = Action(command.verb, value, source=command.source)
            else:
                resolved = _action(command, directory, actor)
            action = _without_repeats(resolved, actions)
            if action is None:
                continue
            conflict = _conflict(action, actions)
            if conflict:
                raise _Refused(conflict)
            actions.append(action)
        except (_Refused, merges.Refused) as refusal:
            refusals.append(f"{_short(command.source)}: {refusal}{_text_hint(command)}")
    if refusals:
        return Validation((), tuple(refusals))
    return Validation(tuple(actions), ())


def describe(action: Action, actor: str = "") -> str:
    """One line for the receipt of ``actor``'s commands: what the action did."""
    value = action.value or ""
    if action.verb == "assign":
        named = f"{action.name} <{value}>" if action.name else value
        return f"assigned to you ({named})" if value and value == actor else f"assigned to {named}"
    lines = {
        "note": "kept as an internal note; the customer gets nothing",
        "escalate": f"escalated to team {value}",
        "close": "closed",
        "priority": f"priority set to {value}",
        "tag": f"tagged {', '.join(action.words)}",
        "untag": f"untagged {', '.join(action.words)}",
        "reopen": "reopened",
        "reply": f"canned reply {value} sent to the customer",
        "files": "the ticket's files mailed to you",
        "cc": f"added to Cc: {', '.join(action.words)}",
        "uncc": f"removed from Cc: {', '.join(action.words)}",
        "requester": f"requester set to {value}; the requester before stays on Cc",
        "spam": "marked as spam; nobody else is mailed"
        + (f"; {', '.join(action.words)} blocked: their mail opens nothing" if value else ""),
        "notspam": "not spam: open, the customer acknowledged and the team told",
        "help": "the commands are listed below",
    }
    return lines.get(action.verb) or merges.describe(action.verb, value) or action.source


HELP = """\
How to give commands: reply to a notification from the desk and type them at the end of its
subject, after the ticket ref (Re: [#1042] Printer broken #assign me #priority high), or on
lines of their own at the very top of your message, before your text. On such a line, words
after #close, #note or #escalate <team> begin your text (#close Replaced the toner). Several
per message are fine. They apply all or nothing: if one is refused, none applies and your
text is kept as an internal note. Text without #note is mailed to the customer; commands
never are.

#assign <agent email | agent name | me>
    Give the ticket to an agent.                      Example: #assign bob@example.com
#note [text]
    Keep the text internal; the customer gets nothing. Example: #note Called, no answer
#escalate <team> [summary]
    Move the ticket to another team.                  Example: #escalate billing
#close [resolution]
    Close the ticket; the text is the resolution.     Example: #close Replaced the toner
#priority <low | medium | high | urgent>
    Set the priority.                                 Example: #priority urgent
#tag <word>...
    Add tags (a-z, 0-9, _ and -).                     Example: #tag printer hardware
#untag <word>...
    Remove tags.                                      Example: #untag hardware
#reopen
    Open a closed ticket again.                       Example: #reopen
#reply <name>
    Send the customer a canned reply.                 Example: #reply password-reset
#files
    Have every file of the ticket mailed to you.      Example: #files
#cc <address>...
    Copy these people on the customer's mail.         Example: #cc dave@customer.test
#uncc <address>...
    Take them off the Cc.                             Example: #uncc dave@customer.test
#requester <address>
    Answer this address from now on; the requester before stays on Cc.
                                                      Example: #requester gina@customer.test
#spam [block]
    Mark as spam: nobody is mailed, your text stays a note; with block, mail from
    whom it came opens nothing from now on.           Example: #spam block
#notspam
    Not spam after all: the customer gets the acknowledgment, the team the notice.
                                                      Example: #notspam
#help
    Have this list in your receipt.                   Example: #help
"""
HELP += merges.HELP
