"""Mail in and out as bytes: IMAP verbs, parsing under a budget, templates to text.

The lowest layer above the base (config, models, store): it knows nothing of tickets.
"""
