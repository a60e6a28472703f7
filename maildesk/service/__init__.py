"""The running service: the asyncio shell, the delivery process, health, metrics, OAuth.

Wires the layers below from the config and keeps them going.
"""
