"""The writers: one message's transaction, the lifecycle, timers, bounces and the outbox.

Only this layer changes tickets; it applies what the desk decides inside one transaction.
"""
