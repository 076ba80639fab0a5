"""The control plane: heartbeats, the majority-vote election by epochs, the topology and
its compare-and-set scripts, and the leader's duties (commits, repair, membership).

:class:`~cachering.control.plane.ControlPlane` runs these services in the cluster's
task group.
"""
