"""maildesk's benchmark suite: ratios measured side by side, in one run, on the same servers.

Run ``python -m benchmarks`` (or ``--quick``). It starts a throwaway Dovecot and an aiosmtpd
capture on loopback, measures each part against its reference (a bare-minimum pipeline, the IMAP
server's own IDLE floor, an empty database, Roundup's mail gateway), prints a table with every
target met or missed, and writes ``benchmarks/results/latest.json``. Not part of the test suite.
"""
