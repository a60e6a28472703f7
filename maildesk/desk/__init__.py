"""The desk's decisions: what a message is, who sent it, which commands it carries.

Pure: values in, values out; no session, no network. Reads mail values, never writes.
"""
