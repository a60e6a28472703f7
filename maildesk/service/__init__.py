"""The running service: the asyncio shell, the mailbox loops, the delivery process, leases,
outages, health, metrics, OAuth.

Wires the layers below from the config and keeps them going.
"""
