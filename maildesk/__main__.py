"""``maildesk`` and ``python -m maildesk``: the command line's entry.

``ingest`` runs under the pipe's promise (``maildesk.pipe``: exit 0 once the message is handled,
75 for anything else, even maildesk failing to import), so nothing but the standard library is
imported before it starts; every other command goes straight to ``maildesk.cli``.
"""

import sys

from maildesk import pipe


def main() -> int:
    argv = sys.argv[1:]
    if pipe.is_ingest(argv):
        return pipe.main(argv)
    from maildesk.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
