"""maildesk.toml written from values: one builder for the demo, the tests and the benchmarks.

Where it sits: beside the demo world. ``maildesk demo`` writes its throwaway desk's config with
it; the test harness and the benchmarks build theirs the same way, so a key is changed by
passing a value (``merged``), never by editing text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Table = Mapping[str, Any]
"""One ``[table]``: keys to values (str, int, float, bool, Path, a list of them, or a mapping,
which is a sub-table). A key whose value is None is left out."""


def config_text(**tables: Table | Sequence[Table] | None) -> str:
    """TOML text with one table per keyword, in the order given: a mapping is a table
    (``smtp={"port": 25}`` is ``[smtp]``), a list of mappings an array of tables
    (``mailboxes=[...]`` is ``[[mailboxes]]`` each), None no table at all. A mapping inside a
    table is a sub-table (``sla={"high": {...}}`` is ``[sla.high]``)."""
    out: list[str] = []
    for name, table in tables.items():
        if table is None:
            continue
        if isinstance(table, Mapping):
            _table(out, name, table, array=False)
        else:
            for each in table:
                _table(out, name, each, array=True)
    return "\n".join(out)


def merged(
    tables: Mapping[str, Table | Sequence[Table] | None],
    changes: Mapping[str, Table | Sequence[Table] | None],
) -> dict[str, Table | Sequence[Table] | None]:
    """``tables`` with ``changes``: a mapping updates its table key by key (a None value removes
    the key), a list adds to its array of tables, None removes the table; a table that was not
    there is added at the end."""
    result: dict[str, Table | Sequence[Table] | None] = dict(tables)
    for name, change in changes.items():
        old = result.get(name)
        if change is None:
            result[name] = None
        elif isinstance(change, Mapping):
            base = dict(old) if isinstance(old, Mapping) else {}
            base.update(change)
            result[name] = {key: value for key, value in base.items() if value is not None}
        else:
            result[name] = [*(old if isinstance(old, Sequence) else ()), *change]
    return result


def _table(out: list[str], name: str, table: Table, *, array: bool) -> None:
    keys = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, Mapping)]
    subtables = [(f"{name}.{k}", v) for k, v in table.items() if isinstance(v, Mapping)]
    if array or keys or not subtables:  # a table of sub-tables alone needs no header
        out.append(f"[[{name}]]" if array else f"[{name}]")
        out.extend(f"{key} = {_value(value)}" for key, value in keys)
        out.append("")
    for subname, subtable in subtables:
        _table(out, subname, subtable, array=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")
