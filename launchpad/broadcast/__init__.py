"""A versioned parameter broadcast: one copy per host, in shared memory.

`lp.BroadcastNode` (launchpad/nodes/broadcast.py) serves it; its handle
dereferences to a `BroadcastClient` (client.py). `layout` puts one version
in a memfd, `pool` keeps a publisher's files to write them again once no
one holds them, `wire` is the descriptor socket's messages, `service` is
what the node runs.
"""
