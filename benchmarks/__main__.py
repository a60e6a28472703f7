"""``python -m benchmarks [--quick] [--only a,b,...]``: run the suite, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import asking, parts, scale
from benchmarks import search as search_part
from benchmarks.world import World, corpus, write_config

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Sizes:
    drain: int
    arrivals: int
    seeded: int
    scale_messages: int
    memory: tuple[int, int]
    outbound: int
    roundup: int
    searched: int  # messages in the database searched (h)
    indexed: int  # messages ingested with and without the search index (i)
    asked: int  # #search mails of each kind (j), on the database of (h)


FULL = Sizes(800, 20, 1_000_000, 600, (3, 9), 3000, 1000, 1_000_000, 600, 5)
QUICK = Sizes(150, 6, 20_000, 100, (2, 4), 600, 150, 40_000, 100, 2)
ATTACHMENT = 25_000_000


@dataclass(frozen=True, slots=True)
class Row:
    part: str
    figure: str
    target: str
    met: bool | None  # None: not measured


def rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    drain = results.get("drain")
    if drain:
        bare, lite = drain["bare"], drain["sqlite"]
        ratio = lite["rate"] / bare["rate"]
        drain["ratio"] = round(ratio, 3)
        out.append(
            Row(
                "a drain",
                f"maildesk {lite['rate']} msg/s vs bare {bare['rate']} msg/s = {ratio:.2f}"
                + ("" if lite["complete"] and bare["complete"] else " (INCOMPLETE)"),
                ">= 0.8",
                ratio >= 0.8 and lite["complete"],
            )
        )
        pg = drain.get("postgres")
        if pg and "skipped" not in pg:
            slower = lite["rate"] / pg["rate"]
            drain["postgres_slowdown"] = round(slower, 3)
            out.append(
                Row(
                    "f drain, PostgreSQL",
                    f"{pg['rate']} msg/s, files in the database, {slower:.2f}x the SQLite time"
                    + f" (runs: {', '.join(map(str, pg['rates']))})"
                    + ("" if pg["complete"] else " (INCOMPLETE)"),
                    "<= 1.5x",
                    slower <= 1.5 and pg["complete"],
                )
            )
        elif pg:
            out.append(Row("f drain, PostgreSQL", pg["skipped"], "<= 1.5x", None))
    lat = results.get("latency")
    if lat:
        gap = lat["p50_ms"] - lat["floor_p50_ms"]
        out.append(
            Row(
                "b arrival->ack",
                f"p50 {lat['p50_ms']:.0f} ms, max {lat['max_ms']:.0f} ms; "
                f"IDLE floor p50 {lat['floor_p50_ms']:.0f} ms",
                "p50 <= floor+150, max <= 500 over",
                gap <= 150 and lat["max_ms"] - lat["floor_p50_ms"] <= 500,
            )
        )
    sc = results.get("scale")
    if sc:
        out.append(
            Row(
                "c scale",
                f"{sc['seeded_ms']} ms/msg at {sc['seeded_tickets']:,} tickets vs "
                f"{sc['empty_ms']} empty = {sc['ratio']:.2f}x",
                "<= 1.2x",
                sc["ratio"] <= 1.2,
            )
        )
    mem = results.get("memory")
    if mem:
        small, large = results["sizes"]["memory"]
        a, b = mem[f"peak_pss_mb_{small}"], mem[f"peak_pss_mb_{large}"]
        ra, rb = mem[f"peak_total_mb_{small}"], mem[f"peak_total_mb_{large}"]
        out.append(
            Row(
                "d memory",
                f"peak {a:.0f} MB ({small} x 25 MB), {b:.0f} MB ({large} x 25 MB), all"
                f" processes, shared pages once (PSS); resident sizes summed: {ra:.0f}, {rb:.0f}",
                "<= 250 MB, not growing",
                a <= 250 and b <= max(250, a * 1.1),
            )
        )
    mpg = results.get("memory_postgres")
    if mpg:
        out.append(_memory_postgres(mpg, results["sizes"]["memory"][1]))
    ob = results.get("outbound")
    if ob:
        out.append(
            Row(
                "e outbound",
                f"{ob['rate']} mails/s ({ob['accepted']}/{ob['mails']} accepted)",
                ">= 300/s",
                ob["rate"] >= 300 and ob["accepted"] == ob["mails"],
            )
        )
    ru = results.get("roundup")
    if ru:
        if "skipped" in ru:
            out.append(Row("g vs Roundup", ru["skipped"], ">= 3x", None))
        elif drain:
            times = drain["sqlite"]["rate"] / ru["rate"]
            bare_times = drain["bare"]["rate"] / ru["rate"]
            ru["maildesk_over_roundup"] = round(times, 2)
            # the bound: the bare-minimum pipeline (IMAP in, SMTP out) against Roundup (mbox in,
            # no mail out) on the same machine
            ru["bare_over_roundup"] = round(bare_times, 2)
            out.append(
                Row(
                    "g vs Roundup",
                    f"Roundup {ru['version']} {ru['rate']} msg/s; maildesk {times:.1f}x"
                    f" (bare pipeline {bare_times:.1f}x)",
                    ">= 3x",
                    times >= 3,
                )
            )
    out += search_rows(results)
    return out


def search_rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    found = results.get("search")
    for engine in ("sqlite", "postgres") if found else ():
        figures = found.get(engine)
        part = f"h search, {found['messages']:,} messages, {engine}"
        if not figures:
            continue
        if "skipped" in figures:
            out.append(Row(part, figures["skipped"], "p50 <= 100 ms", None))
            continue
        built = "kept from an earlier run" if figures["cached"] else "built now"
        out.append(
            Row(
                part,
                f"p50 {figures['p50_ms']} ms, p90 {figures['p90_ms']} ms, max"
                f" {figures['max_ms']} ms ({figures['searches']} searches); database built in"
                f" {figures['build_seconds']:.0f} s ({built})",
                "p50 <= 100 ms",
                figures["p50_ms"] <= 100,
            )
        )
    cost = results.get("index_cost")
    for engine in ("sqlite", "postgres") if cost else ():
        figures = cost.get(engine)
        part = f"i ingest with the search index, {engine}"
        if not figures:
            continue
        if "skipped" in figures:
            out.append(Row(part, figures["skipped"], "<= 1.1x", None))
            continue
        out.append(
            Row(
                part,
                f"{figures['indexed_ms']} ms/msg vs {figures['unindexed_ms']} without ="
                f" {figures['ratio']:.2f}x, median of chunks {figures['chunk_ratio_median']:.2f}x"
                f" ({figures['messages']} msgs)",
                "<= 1.1x",
                figures["ratio"] <= 1.1,
            )
        )
    return out + mail_rows(results)


def mail_rows(results: dict[str, Any]) -> list[Row]:
    """(j): ``#search`` by mail, arrival to answer, against the IDLE floor of the same run."""
    out: list[Row] = []
    asked: dict[str, Any] = results.get("search_by_mail") or {}
    for engine in ("sqlite", "postgres") if asked else ():
        figures = asked[engine]
        part = f"j #search by mail, {asked['messages']:,} messages, {engine}"
        target = "p50 and max <= floor + 1 s"
        if "skipped" in figures:
            out.append(Row(part, figures["skipped"], target, None))
            continue
        out.append(
            Row(
                part,
                f"p50 {figures['p50_ms']:.0f} ms, max {figures['max_ms']:.0f} ms"
                f" ({figures['queries']} queries, each answer listing at least"
                f" {figures['matches_min']} tickets); IDLE floor p50 {asked['floor_p50_ms']:.0f} ms",
                target,
                figures["max_over_floor_ms"] <= 1000,
            )
        )
    return out


def _memory_postgres(figures: dict[str, Any], count: int) -> Row:
    """(f): part (d)'s larger backlog with the files in the database, within (d)'s target."""
    if "skipped" in figures:
        return Row("f memory, PostgreSQL", figures["skipped"], "<= 250 MB", None)
    pss, total = figures[f"peak_pss_mb_{count}"], figures[f"peak_total_mb_{count}"]
    return Row(
        "f memory, PostgreSQL",
        f"peak {pss:.0f} MB ({count} x 25 MB), files in the database, PSS; resident sizes"
        f" summed: {total:.0f}",
        "<= 250 MB",
        pss <= 250 and figures[f"attachments_kept_{count}"] == count,
    )


def render(table: list[Row]) -> str:
    headers = ("part", "measured", "target", "")
    cells = [
        (r.part, r.figure, r.target, {True: "met", False: "MISSED", None: "-"}[r.met])
        for r in table
    ]
    widths = [max(len(str(c[i])) for c in [headers, *cells]) for i in range(4)]
    lines = [
        "  ".join(str(c[i]).ljust(widths[i]) for i in range(4)).rstrip() for c in [headers, *cells]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 1-2 minutes)")
    parser.add_argument(
        "--only", default="a,b,c,d,e,f,g,h,i,j", help="comma-separated parts to run (default: all)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": _sizes(sizes),
        "machine": parts.environment(),
    }
    started = time.monotonic()
    world = World()
    results["machine"]["dovecot"] = world.dovecot_version
    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("a", "drain", lambda: parts.drain(world, sizes.drain, postgres="f" in only)),
        ("b", "latency", lambda: parts.latency(world, sizes.arrivals)),
        ("c", "scale", lambda: _scale(world, sizes)),
        ("d", "memory", lambda: parts.memory(world, sizes.memory, ATTACHMENT)),
        ("f", "memory_postgres", lambda: parts.memory_postgres(world, sizes.memory[1], ATTACHMENT)),
        ("e", "outbound", lambda: parts.outbound(world, sizes.outbound)),
        ("g", "roundup", lambda: parts.roundup(world, corpus(sizes.roundup, "roundup.example"))),
        ("h", "search", lambda: search_part.search_speed(sizes.searched, postgres=True)),
        ("i", "index_cost", lambda: _index_cost(world, sizes)),
        (
            "j",
            "search_by_mail",
            lambda: asking.search_by_mail(world, sizes.searched, sizes.asked, sizes.arrivals),
        ),
    ]
    try:
        for letter, name, step in steps:
            if letter not in only and not (letter == "a" and "f" in only):
                continue
            began = time.monotonic()
            print(f"[{letter}] {name} ...", file=sys.stderr, flush=True)
            results[name] = step()
            print(
                f"[{letter}] {name}: {json.dumps(results[name])} ({time.monotonic() - began:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        world.close()
    results["seconds"] = round(time.monotonic() - started, 1)
    table = rows(results)
    results["table"] = [_row(r) for r in table]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    machine = results["machine"]
    print(
        f"maildesk benchmarks ({'quick' if args.quick else 'full'}, {results['seconds']:.0f} s) on "
        f"{machine['cores']} cores, {machine['memory_gb']} GB, Python {machine['python']}, "
        f"Dovecot {machine['dovecot']}"
    )
    print(render(table))
    print(f"JSON: {RESULTS / 'latest.json'}")
    return 0


def _sizes(sizes: Sizes) -> dict[str, Any]:
    return {name: getattr(sizes, name) for name in Sizes.__slots__}


def _row(row: Row) -> dict[str, Any]:
    return {name: getattr(row, name) for name in Row.__slots__}


def _scale(world: World, sizes: Sizes) -> dict[str, Any]:
    account = world.account("scale")
    work = world.workdir("scale")
    config = write_config(work, account, world.smtp.port)
    return scale.per_message_cost(config, sizes.seeded, sizes.scale_messages)


def _index_cost(world: World, sizes: Sizes) -> dict[str, Any]:
    account = world.account("index")
    work = world.workdir("index")
    config = write_config(work, account, world.smtp.port)
    return search_part.index_cost(config, sizes.indexed, postgres=True)


if __name__ == "__main__":
    sys.exit(main())
