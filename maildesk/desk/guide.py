"""The few lines about commands that end every notice to an agent.

The whole list (``commands.HELP``, with an example for each) is in a receipt when something
was refused or the agent asked with ``#help``; a notice carries only the commands used most,
so that it stays short whatever the desk learns to do.
"""

from __future__ import annotations

NOTICE_HELP = """\
To act on this ticket, reply with commands on lines of their own at the top of your message,
before your text, or after the ref in the subject. Text without #note goes to the customer.
  #assign <agent | me>    #note [text]    #close [resolution]    #escalate <team> [summary]
  #priority <low | medium | high | urgent>    #tag <word>...    #cc <address>...    #files
For every command, with examples, reply with #help on a line of its own."""
