"""``maildesk`` and ``python -m maildesk``: the command line's entry.

``ingest`` runs under the pipe's promise (``maildesk.ui.pipe``: exit 0 once the message is handled,
75 for anything else, even maildesk failing to import), so nothing but the standard library is
imported before it starts; every other command goes straight to ``maildesk.ui.cli``.
"""

import sys

from maildesk.ui import pipe


def command_line(argv: list[str]) -> int:
    """The command line, imported when it runs (under the pipe's promise for ``ingest``)."""
    from maildesk.ui.cli import main as cli_main

    return cli_main(argv)


def main() -> int:
    argv = sys.argv[1:]
    if pipe.is_ingest(argv):
        return pipe.main(argv, command_line)
    return command_line(argv)


if __name__ == "__main__":
    raise SystemExit(main())
