"""Parsing a message's bytes, one concern per module; ``maildesk.mail.inbound.parse`` runs them.

Bottom up, each module importing only those above it in this list: ``text`` (charsets,
cleaning, defects, quoted history), ``limits`` (structure limits on the bytes, the budget),
``identity`` (the headers, from a strict parse), ``html`` (HTML as text; the body's text and
reply), ``parts`` (one MIME part's values; attachments), ``dsn`` (delivery reports), ``mime``
(the tree and its walk, TNEF unpacked within bounds), ``forward`` (a forwarded message in the
text).
"""
