"""The agent command grammar: what parses as a command, what is refused, and why."""

from __future__ import annotations

import pytest

from maildesk.desk import merges
from maildesk.desk.commands import (
    HELP,
    MAX_COMMANDS,
    PRIORITIES,
    VERBS,
    Action,
    Directory,
    OnTicket,
    Parsed,
    Validation,
    defang,
    describe,
    parse,
    validate,
)

REF = r"\[#\d+\]"
DIRECTORY = Directory(
    agents=(
        ("alice@example.com", "Alice Archer", ("support",)),
        ("Bob@Example.com", "Bob Baker", ("support", "billing")),
        ("bob.b@example.com", "Bobby Tables", ("billing",)),
        ("carol@example.com", "Carol Cole", ("billing",)),
        ("carl@example.com", "Carol Dean", ("support",)),
    ),
    teams=("support", "billing", "Second Line"),
    canned=("password-reset", "Thanks"),
)
ALICE = "alice@example.com"


def verbs_and_args(parsed: Parsed) -> list[tuple[str, tuple[str, ...]]]:
    return [(command.verb, command.args) for command in parsed.commands]


# --- parsing the subject -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[#1042] Printer broken #close", [("close", ())]),
        ("Re: [#1042] Printer broken #assign me #priority high",
         [("assign", ("me",)), ("priority", ("high",))]),
        ("RE: AW: [#1042] Drucker #ASSIGN Bob Baker #Tag a b",
         [("assign", ("Bob", "Baker")), ("tag", ("a", "b"))]),
        ("[EXTERNAL] RE[2]: SV: Antw: WG: Fwd: [#1042] x #note", [("note", ())]),
        ("[#1042] x #priority high RE: [External Sender]", [("priority", ("high",))]),
        ("Re:Fwd:[#1042] x #close", [("close", ())]),
        ("[#1042] x #close.", [("close", ())]),
        ("[#1042] x #assign bob@example.com,", [("assign", ("bob@example.com",))]),
        ("[#1042] x #frobnicate now", [("frobnicate", ("now",))]),
        ("Printer broken #close", []),
        ("#close [#1042] Printer", []),
        ("[#1042] Issue #1043 is a duplicate of #7", []),
        ("[#1042] C# build fails on issue#3 and a#b", []),
        ("[#1042] # close", []),
        ("", []),
        ("[#1042] x #close #close", [("close", ()), ("close", ())]),
    ],
)  # fmt: skip
def test_subject_commands(subject: str, expected: list[tuple[str, tuple[str, ...]]]) -> None:
    assert verbs_and_args(parse(subject, "", REF)) == expected


def test_source_is_the_command_as_written() -> None:
    parsed = parse("Re: [#1042] x #ASSIGN bob@example.com #close.", "", REF)
    assert [command.source for command in parsed.commands] == [
        "#ASSIGN bob@example.com",
        "#close",
    ]


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("Re: [HD-7] Printer #close", r"\[HD-\d+\]"),
        ("[External] Re: [EXT-7] Printer #close", r"\[EXT-\d+\]"),
        ("[SPAM] [Suspected Spam] Re: Ticket 7: Printer #close", r"Ticket \d+"),
    ],
)
def test_other_ref_formats(subject: str, pattern: str) -> None:
    assert verbs_and_args(parse(subject, "", pattern)) == [("close", ())]


# --- parsing the body ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected", "text"),
    [
        ("#note\nThe customer called.", [("note", ())], "The customer called."),
        ("\n\n#assign me #priority urgent\n\n#tag vip\n\nOn it.\n",
         [("assign", ("me",)), ("priority", ("urgent",)), ("tag", ("vip",))], "On it."),
        ("#CLOSE\r\n\r\nFixed by replacing the toner.\r\n> old quote",
         [("close", ())], "Fixed by replacing the toner.\n> old quote"),
        ("Thanks, see #note below.\n#close", [], "Thanks, see #note below.\n#close"),
        ("Hello\n\n#close", [], "Hello\n\n#close"),
        ("#1 priority is the printer.", [], "#1 priority is the printer."),
        ("#1042 is related\n#close", [], "#1042 is related\n#close"),
        ("C# is hard", [], "C# is hard"),
        ("  #note   \nindented command line", [("note", ())], "indented command line"),
        ("#general is broken again", [("general", ("is", "broken", "again"))], ""),
        ("#close Thanks, replaced the cable", [("close", ())], "Thanks, replaced the cable"),
        ("#close Thanks,   replaced\nthe cable.\n\nAlice",
         [("close", ())], "Thanks,   replaced\nthe cable.\n\nAlice"),
        ("#note checked the logs\n#close", [("note", ())], "checked the logs\n#close"),
        ("#escalate engineering needs a new fuser",
         [("escalate", ("engineering",))], "needs a new fuser"),
        ("#escalate engineering: needs a new fuser",
         [("escalate", ("engineering",))], "needs a new fuser"),
        ("#escalate second line: the fuser\nis dead",
         [("escalate", ("second", "line"))], "the fuser\nis dead"),
        ("#escalate Second   Line", [("escalate", ("Second", "Line"))], ""),
        ("#escalate nowhere at all", [("escalate", ("nowhere",))], "at all"),
        ("#assign me #close Fixed it", [("assign", ("me",)), ("close", ())], "Fixed it"),
        ("#tag a\n#close Fixed #tag b\nBye", [("tag", ("a",)), ("close", ())], "Fixed #tag b\nBye"),
        ("#close #tag done", [("close", ()), ("tag", ("done",))], ""),
        ("#close. Done.", [("close", ())], "Done."),
        ("#close . !", [("close", ())], ""),
        ("#priority high Thanks", [("priority", ("high", "Thanks"))], ""),
        ("> #close\nquoted", [], "> #close\nquoted"),
        ("", [], ""),
        ("#close", [("close", ())], ""),
    ],
)  # fmt: skip
def test_body_commands(body: str, expected: list[tuple[str, tuple[str, ...]]], text: str) -> None:
    parsed = parse("Re: [#1042] Printer", body, REF, DIRECTORY.teams)
    assert verbs_and_args(parsed) == expected
    assert parsed.text == text


def test_subject_and_body_commands_combine_subject_first() -> None:
    parsed = parse("Re: [#1042] Printer #priority low", "#tag toner\nDone.", REF)
    assert verbs_and_args(parsed) == [("priority", ("low",)), ("tag", ("toner",))]
    assert parsed.text == "Done."


def test_defanged_subject_text_never_parses() -> None:
    customer_subject = "Problem in #general and #close-list"
    subject = f"Re: [#1042] {defang(customer_subject)} #close"
    assert verbs_and_args(parse(subject, "", REF)) == [("close", ())]
    assert defang("[#1042] C# #x") == "[#1042] C# \uff03x"


# --- validation ----------------------------------------------------------------------------------


def check(subject: str = "[#1042] x", body: str = "", actor: str = ALICE) -> Validation:
    return validate(parse(subject, body, REF, DIRECTORY.teams), DIRECTORY, actor)


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ("#assign me", Action("assign", ALICE, source="#assign me", name="Alice Archer")),
        ("#assign BOB@example.COM",
         Action("assign", "bob@example.com", source="#assign BOB@example.COM", name="Bob Baker")),
        ("#assign <carol@example.com>",
         Action("assign", "carol@example.com", source="#assign <carol@example.com>",
                name="Carol Cole")),
        ("#assign bob baker",
         Action("assign", "bob@example.com", source="#assign bob baker", name="Bob Baker")),
        ("#assign Bob", Action("assign", "bob@example.com", source="#assign Bob", name="Bob Baker")),
        ("#assign Carol Dean",
         Action("assign", "carl@example.com", source="#assign Carol Dean", name="Carol Dean")),
        ("#note", Action("note", None, source="#note")),
        ("#escalate Billing", Action("escalate", "billing", source="#escalate Billing")),
        ("#escalate second line",
         Action("escalate", "Second Line", source="#escalate second line")),
        ("#close", Action("close", None, source="#close")),
        ("#priority URGENT", Action("priority", "urgent", source="#priority URGENT")),
        ("#tag Printer toner_2 a-b printer",
         Action("tag", None, words=("printer", "toner_2", "a-b"),
                source="#tag Printer toner_2 a-b printer")),
        ("#untag vip", Action("untag", None, words=("vip",), source="#untag vip")),
        ("#reopen", Action("reopen", None, source="#reopen")),
        ("#reply Password-Reset",
         Action("reply", "password-reset", source="#reply Password-Reset")),
    ],
)  # fmt: skip
def test_every_verb_validates(commands: str, expected: Action) -> None:
    for result in (check(subject=f"[#1042] x {commands}"), check(body=commands + "\n\ntext")):
        assert result.ok
        assert result.actions == (expected,)


@pytest.mark.parametrize(
    ("commands", "refusal"),
    [
        ("#frobnicate", "#frobnicate: unknown command; known: #assign"),
        ("#assign zed", "#assign zed: no agent called zed"),
        ("#assign zed@example.com", "#assign zed@example.com: no agent with the address"),
        ("#assign carol", "#assign carol: carol could be Carol Cole <carol@example.com>, "
                          "Carol Dean <carl@example.com>; use the address"),
        ("#assign", "#assign: missing agent"),
        ("#assign bob baker extra", "#assign bob baker extra: no agent called bob baker extra"),
        ("#escalate sales", "#escalate sales: no team called sales (known: support"),
        ("#escalate", "#escalate: missing team"),
        ("#priority critical", "#priority critical: priority must be one of low, medium"),
        ("#priority", "#priority: missing priority"),
        ("#priority high low", "#priority high low: priority must be one of"),
        ("#note please", "#note please: #note takes no arguments"),
        ("#close now", "#close now: #close takes no arguments"),
        ("#reopen it", "#reopen it: #reopen takes no arguments"),
        ("#tag", "#tag: name at least one tag"),
        ("#untag", "#untag: name at least one tag"),
        ("#tag ok b@d", "#tag ok b@d: 'b@d' is not a tag"),
        ("#tag " + "x" * 41, "is not a tag"),
        ("#reply", "#reply: missing canned reply"),
        ("#reply nope", "#reply nope: no canned reply called nope"),
        ("#priority low #priority high", "#priority high: conflicts with #priority low"),
        ("#assign me #assign bob", "#assign bob: conflicts with #assign me"),
        ("#close #reopen", "#reopen: conflicts with #close"),
        ("#tag a #untag a", "#untag a: conflicts with #tag a"),
    ],
)  # fmt: skip
def test_refusals(commands: str, refusal: str) -> None:
    result = check(subject=f"[#1042] x {commands}")
    assert not result.ok
    assert result.actions == ()
    assert len(result.refusals) == 1
    assert refusal in result.refusals[0]


def test_text_after_close_note_and_escalate_on_a_command_line_is_the_text() -> None:
    parsed = parse("[#1042] x", "#assign me #close Thanks, replaced the cable\nAlice", REF)
    result = validate(parsed, DIRECTORY, ALICE)
    assert [action.source for action in result.actions] == ["#assign me", "#close"]
    assert parsed.text == "Thanks, replaced the cable\nAlice"
    parsed = parse("[#1042] x", "#escalate Second Line fuser is dead", REF, DIRECTORY.teams)
    assert validate(parsed, DIRECTORY, ALICE).actions == (
        Action("escalate", "Second Line", source="#escalate Second Line"),
    )
    assert parsed.text == "fuser is dead"


def test_the_subject_rules_are_unchanged() -> None:
    result = check(subject="[#1042] x #close Thanks")
    assert result.refusals == ("#close Thanks: #close takes no arguments",)
    result = check(subject="[#1042] x #escalate engineering now")
    assert result.refusals[0].startswith("#escalate engineering now: no team called")


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ("#priority high Thanks", "#priority high Thanks: priority must be one of"),
        ("#reopen Customer called back", "#reopen Customer called back: #reopen takes no"),
        ("#assign me Thanks", "#assign me Thanks: no agent called me Thanks"),
        ("#reply thanks and more", "#reply thanks and more: no canned reply called"),
    ],
)
def test_text_after_other_commands_is_refused_with_a_hint(body: str, refusal: str) -> None:
    result = check(body=body + "\nMore text.")
    assert len(result.refusals) == 1
    assert result.refusals[0].startswith(refusal)
    assert result.refusals[0].endswith(
        "; write your text on a line below the commands (only #close, #note and "
        "#escalate <team> take text on their own line)"
    )


def test_no_hint_where_no_text_was_written() -> None:
    for body in ("#priority hgih", "#assign zed", "#escalate nowhere"):
        (refusal,) = check(body=body).refusals
        assert "write your text" not in refusal
    (refusal,) = check(subject="[#1042] x #priority high Thanks").refusals
    assert "write your text" not in refusal


def test_a_long_line_after_a_team_is_all_text() -> None:
    words = " ".join(["word"] * 100_000)
    parsed = parse("[#1042] x", f"#escalate Second Line {words}", REF, DIRECTORY.teams)
    assert parsed.commands[0].args == ("Second", "Line")
    assert len(parsed.text) == len(words)


def test_one_refusal_and_nothing_applies() -> None:
    result = check(body="#assign me #priority high\n#escalate nowhere\nText")
    assert result.actions == ()
    assert result.refusals == ("#escalate nowhere: no team called nowhere "
                               "(known: support, billing, Second Line)",)  # fmt: skip


def test_every_invalid_command_gets_its_own_line() -> None:
    result = check(subject="[#1042] x #bogus #priority 9", body="#assign nobody")
    assert [line.split(":")[0] for line in result.refusals] == [
        "#bogus",
        "#priority 9",
        "#assign nobody",
    ]


def test_me_needs_the_actor_to_be_an_agent() -> None:
    result = check(subject="[#1042] x #assign me", actor="stranger@example.org")
    assert result.refusals == ("#assign me: you are not an agent of this desk",)


@pytest.mark.parametrize(
    ("subject", "body", "expected"),
    [
        ("[#1042] x #close #close", "", [("close", None, ())]),
        ("[#1042] x #close", "#close", [("close", None, ())]),
        ("[#1042] x #assign bob", "#assign Bob@example.com", [("assign", "bob@example.com", ())]),
        ("[#1042] x #tag a b", "#tag b c\n#tag a", [("tag", None, ("a", "b")), ("tag", None, ("c",))]),
        ("[#1042] x #priority high #priority HIGH", "", [("priority", "high", ())]),
    ],
)  # fmt: skip
def test_repeats_are_no_ops(
    subject: str, body: str, expected: list[tuple[str, str | None, tuple[str, ...]]]
) -> None:
    result = check(subject=subject, body=body)
    assert result.ok
    assert [(action.verb, action.value, action.words) for action in result.actions] == expected


def test_too_many_commands_are_refused() -> None:
    many = "\n".join(f"#tag t{i}" for i in range(MAX_COMMANDS + 1))
    result = check(body=many)
    assert result.actions == ()
    assert result.refusals == (f"{MAX_COMMANDS + 1} commands: at most {MAX_COMMANDS} per message",)
    assert check(body="\n".join(f"#tag t{i}" for i in range(MAX_COMMANDS))).ok


def test_overlong_command_is_refused_and_quoted_briefly() -> None:
    result = check(body="#tag " + " ".join(["word"] * 60))
    assert not result.ok
    assert "longer than 200 characters" in result.refusals[0]
    assert len(result.refusals[0]) < 120


def test_huge_body_parses_in_linear_time() -> None:
    parsed = parse("[#1042] x", "#tag a\n" * 20_000 + "text", REF)
    assert len(parsed.commands) == 20_000
    assert parsed.text == "text"
    assert not validate(parsed, DIRECTORY, ALICE).ok


# --- receipts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "line"),
    [
        ("#assign bob", "assigned to Bob Baker <bob@example.com>"),
        ("#assign me", "assigned to you (Alice Archer <alice@example.com>)"),
        ("#help", "the commands are listed below"),
        ("#note", "kept as an internal note; the customer gets nothing"),
        ("#escalate billing", "escalated to team billing"),
        ("#close", "closed"),
        ("#priority high", "priority set to high"),
        ("#tag a b", "tagged a, b"),
        ("#untag a", "untagged a"),
        ("#reopen", "reopened"),
        ("#reply thanks", "canned reply Thanks sent to the customer"),
    ],
)
def test_describe(commands: str, line: str) -> None:
    (action,) = check(subject=f"[#1042] x {commands}").actions
    assert describe(action, ALICE) == line


def test_help_covers_every_verb_with_an_example() -> None:
    for verb in VERBS:
        assert f"\n#{verb}" in HELP
        assert f"Example: #{verb}" in HELP
    for priority in PRIORITIES:
        assert priority in HELP


def test_help_examples_are_valid_commands() -> None:
    examples = [line.split("Example: ")[1] for line in HELP.splitlines() if "Example: " in line]
    # a ticket Dana wrote and Dave is on, where ticket 1041 exists and Alice has a reply held
    named = merges.Named(1042, ((1041, "open"),), held=True)
    on = OnTicket("dana@customer.test", ("dave@customer.test",), named, "dana@customer.test")
    for example in examples:
        result = validate(parse("", example, REF), DIRECTORY, ALICE, on)
        assert result.ok, (example, result.refusals)
