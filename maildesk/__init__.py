"""maildesk: an email-driven help desk.

Mail in an IMAP mailbox becomes tickets; agents drive each ticket through its lifecycle by
replying from any mail client. See README.md for the tour and ``maildesk --help`` for the CLI.
"""

__version__ = "0.1.0"
