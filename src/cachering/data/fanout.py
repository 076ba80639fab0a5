"""Fan-out: one call per node, all at once, in one task group.

Every place that talks to many nodes in parallel goes through :func:`each` (or its two
shapes, :func:`each_node` for per-node groups of work and :func:`gather` for per-node
answers), so cancellation, time bounds and the single-node shortcut behave the same
everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import anyio

__all__ = ["each", "each_node", "gather"]

_G = TypeVar("_G")
_T = TypeVar("_T")


async def each(
    nodes: Iterable[str],
    call: Callable[[str], Coroutine[Any, Any, object]],
    *,
    timeout: float | None = None,  # noqa: ASYNC109
) -> None:
    """``call(node)`` for every node at once. With ``timeout``, returns after that many
    seconds at the latest, cancelling the calls still running. An exception a call raises
    cancels the others and comes out of the task group."""
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(call, node)


async def each_node(
    call: Callable[[str, _G], Coroutine[Any, Any, object]], groups: Mapping[str, _G]
) -> None:
    """``call(node, group)`` for every node's group at once. A single group is awaited
    inline: a task group costs microseconds, which show in a call to one node."""
    if len(groups) == 1:
        [(node, group)] = groups.items()
        await call(node, group)
        return
    await each(groups, lambda node: call(node, groups[node]))


async def gather(
    nodes: Iterable[str],
    call: Callable[[str], Coroutine[Any, Any, _T]],
    timeout: float,  # noqa: ASYNC109
    errors: tuple[type[BaseException], ...],
) -> dict[str, _T | None]:
    """``call(node)`` for every node at once: each node's answer, None for a node whose
    call raised one of ``errors`` or was still running after ``timeout`` seconds."""
    results: dict[str, _T | None] = dict.fromkeys(nodes)

    async def one(node: str) -> None:
        try:
            results[node] = await call(node)
        except errors:
            results[node] = None

    await each(list(results), one, timeout=timeout)
    return results
