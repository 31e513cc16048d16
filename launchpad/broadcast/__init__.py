"""A versioned parameter broadcast: one copy per host, in shared memory.

`lp.BroadcastNode` (launchpad/nodes/broadcast.py) serves it; its handle
dereferences to a `BroadcastClient` (client.py). `layout` puts one version
in a sealed memfd, `wire` is the descriptor socket's messages, `service` is
what the node runs.
"""
