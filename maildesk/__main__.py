"""``python -m maildesk``: the same as the ``maildesk`` command."""

from maildesk.cli import main

raise SystemExit(main())
