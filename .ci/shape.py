"""The package's shape: no module over 600 lines, no function over 60, none over 7 parameters.

Migrations are excepted (generated steps), and so are argument-parser tables, which are one
long list of verbs and options by nature. Prints each problem and exits 1 if there is one.
"""

import ast
import sys
from pathlib import Path

MODULE_LINES, FUNCTION_LINES, PARAMETERS = 600, 60, 7
PARSER_TABLES = {("maildesk/ui/cli.py", "build_parser")}


def problems(root: Path) -> list[str]:
    found = []
    for path in sorted((root / "maildesk").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if "/migrations/" in name:
            continue
        source = path.read_text(encoding="utf-8")
        if (lines := len(source.splitlines())) > MODULE_LINES:
            found.append(f"{name}: {lines} lines, over {MODULE_LINES}")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            count = len([a for a in named if a.arg not in ("self", "cls")])
            count += (args.vararg is not None) + (args.kwarg is not None)
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            where = f"{name}:{node.lineno} {node.name}"
            if length > FUNCTION_LINES and (name, node.name) not in PARSER_TABLES:
                found.append(f"{where}: {length} lines, over {FUNCTION_LINES}")
            if count > PARAMETERS:
                found.append(f"{where}: {count} parameters, over {PARAMETERS}")
    return found


if __name__ == "__main__":
    found = problems(Path(__file__).resolve().parent.parent)
    print("\n".join(found) or "shape: every module, function and parameter list within bounds")
    sys.exit(1 if found else 0)
