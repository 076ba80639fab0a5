"""The data path: key and channel names, the stored value format, the write script,
routing, reads, writes, batched replication and the near cache.

It knows the ring and the transport, and nothing of the control plane: the cluster
tells it which nodes are suspect or lagging.
"""
