"""The event bus: bounded subscriptions that never block the publisher, and logging."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from cachering.events import Event, EventBus, LeaderChanged, NodeDown, NodeSuspect

pytestmark = pytest.mark.anyio


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    async with bus.subscribe() as a, bus.subscribe() as b:
        events = [NodeDown(node="n1", epoch=2, version=i) for i in range(5)]
        for e in events:
            bus.publish(e)
        got_a = [await a.__anext__() for _ in range(5)]
        got_b = [await b.__anext__() for _ in range(5)]
        assert got_a == events
        assert got_b == events
    assert bus.subscribers == 0


async def test_slow_subscriber_drops_oldest_and_counts() -> None:
    bus = EventBus()
    async with bus.subscribe(2) as slow, bus.subscribe(2, drop="newest") as keep_old:
        for i in range(5):
            bus.publish(NodeSuspect(node=f"n{i}", misses=3))  # never blocks
        assert slow.dropped == 3
        assert keep_old.dropped == 3
        assert bus.dropped == 6
        assert [(await slow.__anext__()).node for _ in range(2)] == ["n3", "n4"]  # type: ignore[attr-defined]
        assert [(await keep_old.__anext__()).node for _ in range(2)] == ["n0", "n1"]  # type: ignore[attr-defined]


async def test_closed_bus_ends_iteration() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    bus.publish(LeaderChanged(leader="m1", epoch=3, is_self=False))
    bus.close()
    got = [e async for e in sub]
    assert [e.kind for e in got] == ["LeaderChanged"]
    bus.publish(LeaderChanged(leader=None, epoch=3, is_self=False))  # nobody listening: fine
    assert bus.published == 2


def test_events_are_logged_with_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    with caplog.at_level(logging.INFO, logger="cachering.events"):
        bus.publish(NodeDown(node="n2", epoch=4, version=9))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.cachering_event == "NodeDown"  # type: ignore[attr-defined]
    assert record.cachering_node == "n2"  # type: ignore[attr-defined]
    assert record.cachering_version == 9  # type: ignore[attr-defined]
    assert "n2" in record.getMessage()


def test_events_are_frozen_and_stamped() -> None:
    before = time.monotonic()
    e = NodeDown(node="n1", epoch=1, version=2)
    after = time.monotonic()
    assert isinstance(e, Event)
    assert before <= e.at <= after  # stamped with the monotonic clock when made
    assert e.fields() == {"node": "n1", "epoch": 1, "version": 2}
    with pytest.raises(AttributeError):
        e.node = "x"  # type: ignore[misc]


def test_bad_arguments() -> None:
    bus = EventBus()
    with pytest.raises(TypeError):
        bus.publish("NodeDown")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        bus.subscribe(0)
    with pytest.raises(ValueError, match="drop"):
        bus.subscribe(drop="random")  # type: ignore[arg-type]


async def test_publish_from_many_tasks_never_blocks() -> None:
    bus = EventBus()
    async with bus.subscribe(1) as sub:

        async def publish(i: int) -> None:
            bus.publish(NodeSuspect(node=f"n{i}", misses=1))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(publish, i)
        assert sub.dropped == 49
