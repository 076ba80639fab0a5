"""Unexpected exceptions in services: logged with the traceback once per burst, counted."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from cachering.data._burst import BurstLog
from cachering.data.nearcache import InvalidationCodec, InvalidationSubscriber, NearCache
from cachering.local import LocalCluster
from cachering.messages import MessageCodec
from cachering.node import NodeSpec


def test_one_record_per_burst_with_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = BurstLog(logging.getLogger("cachering.test"), "thing", quiet=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="cachering.test"):
        for step in range(5):  # one burst: 1 s apart
            now[0] = float(step)
            log.exception(KeyError(step))
        assert len(caplog.records) == 1
        assert caplog.records[0].exc_info is not None
        assert "thing: unexpected KeyError" in caplog.records[0].getMessage()
        assert log.held_back == 4
        now[0] = 100.0  # quiet for longer than 10 s: a new burst
        log.exception(ValueError("again"))
    assert len(caplog.records) == 2
    assert "4 more in the previous burst" in caplog.records[1].getMessage()
    assert log.held_back == 0


class _Broken:
    """A pub/sub connection factory with a bug in it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, spec: NodeSpec) -> Any:
        self.calls += 1
        raise RuntimeError(f"bug #{self.calls}")


@pytest.mark.anyio
async def test_the_subscriber_logs_an_unexpected_error_once_and_counts_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with LocalCluster(1) as local:
        cache = NearCache(10, 1.0, clock=anyio.current_time)
        factory = _Broken()
        sub = InvalidationSubscriber(
            cache,
            local.nodes,
            list,
            channel=b"t:inval",
            codec=InvalidationCodec(MessageCodec(None, "t"), "me"),
            retry_delay=0.01,
            on_failure=lambda node: None,
            pubsub_factory=factory,
        )
        with caplog.at_level(logging.ERROR, logger="cachering.data.nearcache"):
            async with anyio.create_task_group() as tg:
                await tg.start(sub.run)
                with anyio.fail_after(10):
                    while factory.calls < 5:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    records = [r for r in caplog.records if r.name == "cachering.data.nearcache"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert "bug #1" in str(records[0].exc_info[1])
    assert cache.stats.messages_dropped >= 5
