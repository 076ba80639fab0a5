"""One manager (a Cluster) in its own OS process, for tests that pause or kill it.

Run as ``python manager_process.py CONFIG_JSON``; ``CONFIG_JSON`` holds ``nodes`` (a list
of ``[id, host, port]``), ``namespace``, ``manager_id`` and optional ``options`` (more
ClusterConfig fields; ``secret`` as a str). Every 20 ms the process prints one JSON line
on stdout: ``{"leader", "is_leader", "epoch", "topology": [epoch, version],
"topology_leader"}``. It runs until killed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from cachering.cluster import Cluster
from cachering.config import ClusterConfig
from cachering.node import NodeSpec


def _config(raw: dict[str, Any]) -> ClusterConfig:
    options = dict(raw.get("options", {}))
    if isinstance(options.get("secret"), str):
        options["secret"] = options["secret"].encode()
    nodes = tuple(NodeSpec(i, h, p) for i, h, p in raw["nodes"])
    return ClusterConfig(
        nodes=nodes, namespace=raw["namespace"], manager_id=raw["manager_id"], **options
    )


async def _main(raw: dict[str, Any]) -> None:
    async with Cluster(_config(raw)) as cluster:
        while True:
            topo = cluster.topology
            line = {
                "leader": cluster.leader,
                "is_leader": cluster.is_leader,
                "epoch": cluster.epoch,
                "topology": [topo.epoch, topo.version],
                "topology_leader": topo.leader,
            }
            print(json.dumps(line), flush=True)
            await anyio.sleep(0.02)


if __name__ == "__main__":
    anyio.run(_main, json.loads(sys.argv[1]))
